"""DS (Disposition) from ResearchSubject (R4 status + the R5 progress cross-version extension;
R5 progress) and Consent (INFORMED CONSENT OBTAINED milestone). Rules: mappings/subject/ds.yaml.

A disposition record needs a reason: an NCIt-coded progress.reason is looked up in the CT by
C-code (NCOMPLT -> DISPOSITION EVENT, PROTMLST -> PROTOCOL MILESTONE, OTHEVENT -> OTHER EVENT), or
mappings/codes/fhir_disposition.csv. A subject who left (off-study, withdrawn, not-registered) with
no coded reason gets no guessed DSDECOD: it is reported missing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...fhir.subject_terms import EXT_DTC
from ...report import Kind
from ...sdtm.ct import pinned_ct
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from ..identity import project_sid
from ..sdtm_ext import carried_relrec, carried_values
from . import _codes as C

TABLE = "fhir_disposition.csv"
R4_STATUS = "http://hl7.org/fhir/research-subject-status"
R5_STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
TERMINAL = frozenset({"off-study", "withdrawn", "ineligible", "not-registered"})
PROJECT_DSDECOD = project_sid("").replace("/sid/", "/CodeSystem/sdtm-DSDECOD")
CATEGORY_OF = {"NCOMPLT": "DISPOSITION EVENT", "PROTMLST": "PROTOCOL MILESTONE", "OTHEVENT": "OTHER EVENT"}


def _reason(codes: C.Codings) -> tuple[str | None, str | None]:
    """(DSDECOD, DSCAT) for coded reasons: the project's DSDECOD code system (the CDISC submission
    value itself, written by trialbridge from DS; DSCAT then comes from the item), the table, then
    NCIt C-codes in the DS codelists."""
    for system, code in codes:
        if system == PROJECT_DSDECOD:
            return code, None
    idx = C.table_index(TABLE)
    for sc in codes:
        row = idx.get(sc) or idx.get(("state-change-reason", sc[1]) if not sc[0] else ("", ""))
        if row:
            return row["target_code"], row["DSCAT"]
    ct = pinned_ct()
    for system, code in codes:
        if system in C.NCIT_SYSTEMS:
            for short, cat in CATEGORY_OF.items():
                term = ct.codelist(short).by_code(code)
                if term is not None:
                    return term.value, cat
    return None, None


def _progress(res: dict[str, Any]) -> list[dict[str, Any]]:
    """R5 progress entries, or the R4 cross-version extension read into the same shape."""
    if isinstance(res.get("progress"), list):
        return [p for p in res["progress"] if isinstance(p, dict)]
    out = []
    for ext in C.extension(res, C.XV + "ResearchSubject.progress"):
        item: dict[str, Any] = {}
        for name in ("type", "subjectState", "milestone", "reason"):
            sub = C.sub_ext(ext, name)
            if sub:
                item[name] = sub[0].get("valueCodeableConcept")
        for name in ("startDate", "endDate"):
            sub = C.sub_ext(ext, name)
            if sub:
                item[name] = sub[0].get("valueDateTime") or sub[0].get("valueDate")
        item["extension"] = ext.get("extension")
        # the DSSTDTC text the project's R4 writer carried when a FHIR dateTime could not hold it
        carried = carried_values(ext.get("extension") or ())[0].get("DSSTDTC")
        if isinstance(carried, str) and carried:
            item["_sdtm_start"] = carried
        out.append(item)
    return out


def _start(p: dict[str, Any]) -> Any:
    """A progress item's DSSTDTC source: the original SDTM text the project's writer kept (R5: the
    sdtm-dtc extension of startDate; R4: carried DSSTDTC) when the FHIR dateTime had to cut it (a time
    without a zone), else startDate."""
    if p.get("_sdtm_start"):
        return p["_sdtm_start"]
    for ext in (p.get("_startDate") or {}).get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == EXT_DTC and ext.get("valueString"):
            return ext["valueString"]
    return p.get("startDate")


def _project_cat(item: dict[str, Any], reason: C.Codings) -> str | None:
    """DSCAT of a progress item written by trialbridge whose DSCAT was not carried: its type says
    Enrollment for a DISPOSITION EVENT (subject_writer.build_ds)."""
    if not any(s == PROJECT_DSDECOD for s, _ in reason):
        return None
    kinds = {c for _, c in C.codings(item.get("type"))}
    return "DISPOSITION EVENT" if "Enrollment" in kinds else None


def extract_ds(res: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]] | None:
    rtype = res["resourceType"]
    if rtype == "Consent":
        if res.get("status") != "active":
            return None
        codes = (("Consent", "active"),)
        return [{"_subject": ref_of(res.get("patient") or res.get("subject")), "_codes": codes,
                 "_term": None, "_date": res.get("dateTime") or res.get("date"), "_kind": "consent"}]
    rows = []
    subject = ref_of(res.get("individual") or res.get("subject"))
    state = None
    for p in _progress(res):
        st = C.codings(p.get("subjectState"))
        if st:
            state = st[0][1]
        reason = C.codings(p.get("reason"))
        if reason:
            values, supp = carried_values(p.get("extension") or ())
            relrec = carried_relrec(p.get("extension") or ())
            rows.append({"_subject": subject, "_codes": reason, "_term": C.text_of(p.get("reason")),
                         "_date": _start(p), "_kind": "progress",
                         # SDTM values carried on the item (rule subject.sdtm-ext); DSCAT among them
                         "_sdtm": {"values": values, "supp": supp, "relrec": relrec}
                         if values or supp or relrec else None,
                         "_cat": values.get("DSCAT") or _project_cat(p, reason)})
    if res.get("progress") is None:           # R4
        state = res.get("status") if state is None else state
        per = res.get("period") or {}
        rows.append({"_subject": subject, "_codes": ((R4_STATUS, str(res.get("status"))),),
                     "_term": None, "_date": per.get("end") or per.get("start"), "_kind": "status",
                     "_state": state})
    else:
        rows.append({"_subject": subject, "_codes": ((R5_STATE, str(state)),), "_term": None,
                     "_date": (res.get("period") or {}).get("end"), "_kind": "status", "_state": state})
    return rows


def map_ds(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    dec = cols["_codes"].map(_reason)
    cols = cols.assign(DSDECOD=dec.map(lambda t: t[0]), DSCAT=dec.map(lambda t: t[1]))
    if "_cat" in cols:
        cols["DSCAT"] = cols["DSCAT"].where(cols["DSCAT"].notna(), cols["_cat"])
    keys = C.record_key(cols)
    # reasons coded but not found
    for i in cols.index[cols["DSDECOD"].isna() & cols["_kind"].eq("progress")]:
        ctx.report.unmapped_code("|".join(f"{s}#{c}" for s, c in cols.at[i, "_codes"]), TABLE + " / CT DS codelists",
                                 rule="ds.DSDECOD", source="ResearchSubject.progress.reason", target="DSDECOD",
                                 record=keys.at[i])
    # a status row only matters when the subject left and no progress reason gave a disposition event
    has_event = cols.loc[cols["DSCAT"].eq("DISPOSITION EVENT") & cols["_kind"].ne("status"), "USUBJID"]
    is_status = cols["_kind"].eq("status")
    terminal = cols.get("_state", pd.Series([None] * len(cols), index=cols.index)).isin(TERMINAL)
    need = is_status & terminal & ~cols["USUBJID"].isin(set(has_event))
    for i in cols.index[need & cols["DSDECOD"].isna()]:
        ctx.report.add(Kind.MISSING, "subject left the study with no coded reason: DSDECOD not guessed",
                       rule="ds.DSDECOD", source="ResearchSubject.status", target="DSDECOD", record=keys.at[i])
    keep = (~is_status | need) & cols["DSDECOD"].notna()
    # one INFORMED CONSENT OBTAINED per subject (Consent and an R5 progress reason may both say it):
    # the one RFICDTC is (rule dm.RFICDTC: the earliest Consent date, else the progress date), so that
    # DSSTDTC of the milestone equals RFICDTC; one on another date is reported, not dropped silently
    ic = keep & cols["DSDECOD"].eq("INFORMED CONSENT OBTAINED")
    cand = cols.loc[ic].assign(_rank=cols.loc[ic, "_kind"].ne("consent"),
                               _d=cols.loc[ic, "_date"].map(lambda d: d if isinstance(d, str) else "\uffff"))
    cand = cand.sort_values(["USUBJID", "_rank", "_d"], kind="stable")
    first = cand.drop_duplicates(subset=["USUBJID"], keep="first")
    dup = ic & ~cols.index.isin(first.index)
    kept_date = dict(zip(first["USUBJID"], first["_date"], strict=True))
    for i in cols.index[dup]:
        if cols.at[i, "_date"] != kept_date.get(cols.at[i, "USUBJID"]):
            ctx.report.add(Kind.LOSSY, "a further informed consent on another date (a re-consent, or Consent and "
                           "ResearchSubject.progress disagreeing): DS keeps one INFORMED CONSENT OBTAINED per "
                           "subject, the one RFICDTC is (the earliest Consent date)", rule="ds.DSDECOD",
                           source="Consent" if cols.at[i, "_kind"] == "consent" else "ResearchSubject.progress",
                           target="DSSTDTC", record=keys.at[i])
    keep &= ~dup
    cols = cols.loc[keep]
    if not len(cols):
        return pd.DataFrame()
    out = C.carried_frame(cols, "_sdtm")
    out["DSDECOD"] = cols["DSDECOD"]
    out["DSTERM"] = cols["_term"].where(cols["_term"].notna(), cols["DSDECOD"])
    out["DSCAT"] = cols["DSCAT"]
    out["DSSTDTC"] = C.dtc(cols, "_date", ctx, rule="ds.DSSTDTC", target="DSSTDTC")
    order = out.assign(_o=out["DSCAT"].ne("PROTOCOL MILESTONE").astype(int))
    out = order.sort_values(["USUBJID", "_o", "DSSTDTC"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)


register_domain(DomainPlugin("DS", resource_types=("ResearchSubject", "Consent"), extract=extract_ds,
                             map=map_ds, dtc="DSSTDTC"))
