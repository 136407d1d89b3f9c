"""MH (Medical History) from Condition. Rules: mappings/subject/mh.yaml.

A Condition is medical history when no AdverseEvent points to it (R4 resultingCondition, R5
resultingEffect) and it is either on the problem list (category problem-list-item / health-concern)
or began before the subject's reference start (RFICDTC, else RFSTDTC). A Condition with neither a
category nor an onset is taken as history (reported). An on-study encounter diagnosis with no
AdverseEvent is not MH and not AE: it is reported for review, never guessed into AE.

The extractor also keeps a small index of every Condition (text, codings, body site) in
``ctx.resources["Condition"]`` for AE (resultingCondition), CM (reasonReference) and PR (reasons).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from ..identity import project_identifier
from . import _codes as C

HISTORY_CATEGORIES = frozenset({"problem-list-item", "health-concern"})
CAT_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
STATUS_TABLE = "fhir_condition_status.csv"


def extract_condition(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    key = ctx.refs.resolve(f"Condition/{res.get('id')}") or f"Condition/{res.get('id')}"
    text = C.text_of(res.get("code"))
    ctx.resources.setdefault("Condition", {})[key] = {
        "_text": text, "_codings": C.codings(res.get("code")),
        "_meddra": C.coding_in(res.get("code"), C.MEDDRA_SYSTEMS),
        "_site": C.codings(C.first(res.get("bodySite")))}
    start, _ = C.period_or_datetime(res, "onset")
    end, _ = C.period_or_datetime(res, "abatement")
    if end is None and isinstance(res.get("abatementPeriod"), dict):
        end = res["abatementPeriod"].get("end")
    cats = {code for cat in res.get("category") or () for s, code in C.codings(cat) if s == CAT_SYSTEM}
    meddra = C.coding_in(res.get("code"), C.MEDDRA_SYSTEMS)
    # a sponsor category is a category given as text only (the FHIR condition-category codes select MH)
    sponsor_cat = next((cat.get("text") for cat in res.get("category") or ()
                        if isinstance(cat, dict) and cat.get("text") and not cat.get("coding")), None)
    sev_raw = res.get("severity")
    sev: dict[str, Any] = sev_raw if isinstance(sev_raw, dict) else {}
    return {"MHCAT": sponsor_cat, "_sev": C.codings(sev), "_sev_text": sev.get("text"),
            "_subject": ref_of(res.get("subject")), "_encounter": ref_of(res.get("encounter")),
            "_key": key, "_history_cat": bool(cats & HISTORY_CATEGORIES), "_has_cat": bool(cats),
            # rule mh.select: written by trialbridge from an MH record (identifier in the project's
            # mhseq naming system): medical history by construction
            "_project_mh": project_identifier(res, "mhseq") is not None,
            "MHTERM": text, "MHSPID": C.ident_value(res),
            "MHDECOD": meddra.get("display") if meddra else None,
            "_start": start, "_end": end, "_recorded": res.get("recordedDate"),
            "_ver": C.codings(res.get("verificationStatus")), "_clin": C.codings(res.get("clinicalStatus")),
            "_site": C.codings(C.first(res.get("bodySite")))}


def _ae_condition_keys(ctx: Ctx) -> set[str]:
    ae = ctx.frames.get("AE")
    if ae is None or not len(ae) or "_cond_key" not in ae:
        return set()
    return {k for k in ae["_cond_key"] if isinstance(k, str)}


def map_mh(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    ae_keys = _ae_condition_keys(ctx)
    as_ae = cols["_key"].isin(ae_keys)
    if as_ae.any():
        ctx.row_issues("MH", "as-ae", Kind.LOSSY, "Condition an AdverseEvent points to (resultingCondition/"
                       "resultingEffect): its text is that AE's AETERM (Joint IG), not an MH record; it comes "
                       "back only as the AdverseEvent's event text", cols, as_ae, rule="mh.select",
                       source="Condition", target="AETERM")
    cols = cols.loc[~as_ae].reset_index(drop=True)   # those are AE terms
    if not len(cols):
        return pd.DataFrame()
    occur = C.map_codes(cols, "_ver", ctx, table=STATUS_TABLE, codelist=None, rule="mh.MHOCCUR",
                        target="MHOCCUR", source="Condition.verificationStatus")
    drop = occur.eq("DROP")
    cols = C.drop_rows(cols, drop, ctx, "Condition entered-in-error: dropped", rule="mh.MHOCCUR")
    occur = occur.loc[~drop].reset_index(drop=True)
    if not len(cols):
        return pd.DataFrame()
    start = C.dtc(cols, "_start", ctx, rule="mh.MHSTDTC", target="MHSTDTC", source="Condition.onset[x]")
    subj = ctx.subjects.set_index("USUBJID") if len(ctx.subjects) else None
    ref_start = (cols["USUBJID"].map(subj["RFICDTC"]) if subj is not None and "RFICDTC" in subj else
                 pd.Series([None] * len(cols), index=cols.index))
    ref_start = ref_start.where(ref_start.notna(), cols.get("_rfstdtc"))
    # ISO strings compare in time order on their common prefix; a partial onset compares on its precision
    before = pd.Series([isinstance(s, str) and isinstance(r, str) and s[:len(r)] < r[:len(s)]
                        for s, r in zip(start, ref_start, strict=True)], index=cols.index)
    no_info = ~cols["_has_cat"] & start.isna()
    is_mh = cols["_history_cat"] | before | no_info | cols["_project_mh"].astype(bool)
    if no_info.any():
        ctx.once("mh.no-info", Kind.INFERRED, "Condition with neither category nor onset taken as medical "
                 "history", rule="mh.select", target="MHTERM")
    not_mh = ~is_mh
    if not_mh.any():
        keys = C.record_key(cols)
        for i in cols.index[not_mh]:
            # say which test failed: a subject with no reference start has no "study start" to be after
            why = ("the subject has no reference start (no informed consent date, no study-drug exposure) "
                   "to tell medical history from an on-study event" if not isinstance(ref_start.at[i], str)
                   else "no onset date to compare with the subject's reference start" if not isinstance(start.at[i], str)
                   else "onset on or after the subject's reference start")
            ctx.report.add(Kind.UNMAPPED_SOURCE, f"Condition not on the problem list and not referenced by an "
                           f"AdverseEvent, {why}: neither MH nor AE (review)",
                           rule="mh.select", source="Condition", record=keys.at[i])
        cols, start, occur = cols.loc[is_mh], start.loc[is_mh], occur.loc[is_mh]
    if not len(cols):
        return pd.DataFrame()
    out = C.carried_frame(cols, "VISITNUM", "VISIT")
    out["MHSPID"] = cols["MHSPID"]
    out["MHTERM"] = cols["MHTERM"]
    out["MHDECOD"] = cols["MHDECOD"]
    out["MHCAT"] = cols["MHCAT"]
    out["MHSEV"] = _severity(cols, ctx)
    out["MHPRESP"] = occur.map(lambda v: "Y" if v == "N" else None)
    out["MHOCCUR"] = occur.where(occur.eq("N"), None)
    out["MHLOC"] = C.map_codes(cols, "_site", ctx, table="fhir_body_site.csv", codelist="LOC",
                               rule="mh.MHLOC", target="MHLOC", source="Condition.bodySite")
    out["MHDTC"] = C.dtc(cols, "_recorded", ctx, rule="mh.MHDTC", target="MHDTC", source="Condition.recordedDate")
    out["MHSTDTC"] = start
    out["MHENDTC"] = C.dtc(cols, "_end", ctx, rule="mh.MHENDTC", target="MHENDTC", source="Condition.abatement[x]")
    enrtpt = C.map_codes(cols, "_clin", ctx, table=STATUS_TABLE, codelist=None, rule="mh.MHENRTPT",
                         target="MHENRTPT", source="Condition.clinicalStatus")
    # an end date says more than 'BEFORE'; no ENRTPT for a refuted (never occurred) condition
    enrtpt = enrtpt.where(~(enrtpt.eq("BEFORE") & out["MHENDTC"].notna()), None)
    enrtpt = enrtpt.where(out["MHOCCUR"].isna(), None)
    # --ENRTPT places the end relative to the reference time point --ENTPT (SDTM v2.0 Timing variables):
    # without the Condition's recordedDate (MHDTC) there is no time point the clinicalStatus holds at
    unanchored = enrtpt.notna() & out["MHDTC"].isna()
    if unanchored.any():
        keys = C.record_key(cols)
        for i in cols.index[unanchored]:
            ctx.report.add(Kind.LOSSY, "Condition.clinicalStatus not carried: MHENRTPT needs its reference "
                           "time point MHENTPT (the collection date) and the Condition has no recordedDate",
                           rule="mh.MHENRTPT", source="Condition.clinicalStatus", target="MHENRTPT",
                           record=keys.at[i])
        enrtpt = enrtpt.where(~unanchored, None)
    out["MHENRTPT"] = enrtpt
    out["MHENTPT"] = out["MHDTC"].where(enrtpt.notna(), None)
    missing = out["MHTERM"].isna()
    if missing.any():
        out = C.drop_rows(out, missing, ctx, "Condition has no code text or display: MHTERM is required",
                          rule="mh.MHTERM", kind=Kind.ERROR)
    return out


def _severity(cols: pd.DataFrame, ctx: Ctx) -> pd.Series:
    """MHSEV (rule mh.MHSEV): Condition.severity codings through the AE severity table (CT C66769);
    a severity given as text only is taken when it is a term of that codelist, else reported."""
    from ...sdtm.ct import pinned_ct
    coded = C.map_codes(cols, "_sev", ctx, table="fhir_ae_severity.csv", codelist="AESEV", rule="mh.MHSEV",
                        target="MHSEV", source="Condition.severity")
    cl = pinned_ct().codelist("AESEV")
    text = cols["_sev_text"].where(coded.isna() & cols["_sev"].map(lambda c: not c), None)
    def _term(t: Any) -> str | None:
        found = cl.term(t) if isinstance(t, str) else None
        return found.value if found is not None else None

    term = text.map(_term)
    bad = text.notna() & term.isna()
    if bad.any():
        keys = C.record_key(cols)
        for i in cols.index[bad]:
            ctx.report.unmapped_code(str(text.at[i]), "CT AESEV", rule="mh.MHSEV", source="Condition.severity.text",
                                     target="MHSEV", record=keys.at[i])
    return coded.where(coded.notna(), term).astype("object")


register_domain(DomainPlugin("MH", resource_types=("Condition",), extract=extract_condition, map=map_mh,
                             dtc="MHDTC", depends=("AE",)))
