"""AE (Adverse Events) from AdverseEvent (R4 and R5 shapes) and the Condition it points to.

R4: event, date, seriousness, severity, outcome, suspectEntity.causality (assessment /
productRelatedness), resultingCondition; R5 elements R4 lacks come from the official cross-version
extensions (AdverseEvent.occurrence, AdverseEvent.mitigatingAction). R5: code, occurrence[x],
seriousness, outcome (0..*), resultingEffect, suspectEntity.causality.entityRelatedness,
mitigatingAction. A Condition referenced as resultingCondition/resultingEffect supplies AETERM and
AELOC (Joint IG AETERM row) and is then not medical history. Rules: mappings/subject/ae.yaml.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from . import _codes as C

SEVERITY = "fhir_ae_severity.csv"
OUTCOME = "fhir_ae_outcome.csv"
SERIOUS = "fhir_ae_seriousness.csv"
CAUSALITY = "fhir_ae_causality.csv"
CRITERIA = ("AESDTH", "AESLIFE", "AESHOSP", "AESDISAB", "AESCONG", "AESINTV")


def _suspects(res: dict[str, Any]) -> tuple[tuple[str | None, Any, tuple[tuple[str, str], ...]], ...]:
    """(instance reference, instance concept, causality codings) per suspect entity (plain values)."""
    out = []
    for s in res.get("suspectEntity") or ():
        if not isinstance(s, dict):
            continue
        inst = s.get("instance") or s.get("instanceReference") or s.get("instanceCodeableConcept")
        ref = ref_of(inst) or (ref_of(inst.get("reference")) if isinstance(inst, dict) else None)
        concept = None if ref else (inst.get("concept") or inst if isinstance(inst, dict) else None)
        caus = s.get("causality")
        codes: list[tuple[str, str]] = []
        for c in (caus if isinstance(caus, list) else [caus] if isinstance(caus, dict) else []):
            codes += C.codings(c.get("assessment")) + C.codings(c.get("entityRelatedness"))
            if isinstance(c.get("productRelatedness"), str):
                codes.append(("productRelatedness", c["productRelatedness"]))
        out.append((ref, concept, tuple(codes)))
    return tuple(out)


def _relatedness(suspects: Any, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """Causality codings of the first suspect that is the study drug (resolved after pass 1)."""
    names = C.study_drug_names(ctx)
    other = False
    for ref, concept, codes in suspects or ():
        if ref:
            target = ctx.resource("MedicationAdministration", ref) or ctx.resource("Medication", ref)
            if target is not None:
                concept = target.get("code") if target.get("resourceType") == "Medication" else \
                    C.medication_concept(target, ctx)[0]
        if C.study_drug_of(concept, names):
            if codes:
                return codes
        elif codes:
            other = True
    if other:
        ctx.once("ae.rel-nonstudy", Kind.LOSSY, "causality to a suspect that is not the study drug is not AEREL "
                 "(AERELNST is free text): not mapped", rule="ae.AEREL", target="AERELNST")
    return ()


def extract_ae(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    if res.get("actuality") == "potential":
        ctx.report.add(Kind.LOSSY, "potential adverse event (near miss): not an SDTM AE", rule="ae.actuality",
                       record=f"AdverseEvent/{res.get('id')}")
        return None
    r5 = "code" in res or "resultingEffect" in res or any(k.startswith("occurrence") for k in res)
    concept = res.get("code") if r5 else res.get("event")
    if r5:
        start, end = C.period_or_datetime(res, "occurrence")
        cond_refs = [ref_of(e) for e in res.get("resultingEffect") or () if ref_of(e)]
        outcome = tuple(c for o in res.get("outcome") or () for c in C.codings(o))
        actions = [a.get("itemCodeableReference") or {} for a in res.get("mitigatingAction") or ()
                   if isinstance(a, dict)]
    else:
        start, end = res.get("date"), None
        for ext in C.extension(res, C.XV + "AdverseEvent.occurrence"):
            # R5 occurrence[x] is dateTime | Period | Timing: the cross-version extension carries either
            per = ext.get("valuePeriod") or {"start": ext.get("valueDateTime")}
            start = per.get("start") or start
            end = per.get("end")
        cond_refs = [ref_of(e) for e in res.get("resultingCondition") or () if ref_of(e)]
        outcome = C.codings(res.get("outcome"))
        actions = [i.get("valueCodeableConcept") for ext in C.extension(res, C.XV + "AdverseEvent.mitigatingAction")
                   for i in C.sub_ext(ext, "item")]
    if res.get("category"):
        ctx.once("ae.category", Kind.LOSSY, "AdverseEvent.category (FHIR event categories) is not AECAT "
                 "(sponsor categories): not mapped", rule="ae.AECAT", source="AdverseEvent.category")
    meddra = C.coding_in(concept, C.MEDDRA_SYSTEMS)
    # AdverseEvent.encounter is not read: AE has no visit variables (SDTMIG 3.4 AE), so it is reported unread
    return {"_subject": ref_of(res.get("subject")), "_r5": r5,
            "AESPID": C.ident_value(res), "_term": C.text_of(concept),
            "_meddra_code": meddra.get("code") if meddra else None,
            "_meddra_display": meddra.get("display") if meddra else None,
            "_cond_ref": cond_refs[0] if cond_refs else None, "_recorded": res.get("recordedDate"),
            "_start": start, "_end": end,
            "_sev": C.codings(res.get("severity")), "_ser": C.codings(res.get("seriousness")),
            "_out": outcome, "_suspects": _suspects(res),
            "_acn": tuple(c for a in actions for c in C.codings(a))}


def map_ae(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    out = C.carried_frame(cols)
    conds = ctx.resources.get("Condition", {})
    cond_key = cols["_cond_ref"].map(lambda r: ctx.refs.resolve(r) if isinstance(r, str) else None)
    broken = cols["_cond_ref"].notna() & cond_key.map(lambda k: k not in conds)
    if broken.any():
        keys = C.record_key(cols)
        for i in cols.index[broken]:
            ctx.report.add(Kind.INVALID_VALUE, "resultingCondition does not resolve to a Condition in the input",
                           rule="ae.AETERM", source="resultingCondition", record=keys.at[i])
    out["_cond_key"] = cond_key.where(~broken, None)
    cond = out["_cond_key"].map(lambda k: conds.get(k) if isinstance(k, str) else None)
    # Joint IG: AETERM <- resultingCondition.resolve().code; else the event/code text
    cond_text = cond.map(lambda c: c.get("_text") if c else None)
    out["AESPID"] = cols["AESPID"]
    out["AETERM"] = cond_text.where(cond_text.notna(), cols["_term"])
    differs = cond_text.notna() & cols["_term"].notna() & (cond_text != cols["_term"])
    if differs.any():
        keys = C.record_key(cols)
        for i in cols.index[differs]:
            ctx.report.add(Kind.LOSSY, "the event text differs from the text of the resultingCondition, "
                           "which AETERM takes (Joint IG: AETERM <- resultingCondition.code): the event "
                           "text is not kept", rule="ae.AETERM",
                           source="AdverseEvent.code.text" if cols.at[i, "_r5"] else "AdverseEvent.event.text",
                           target="AETERM", record=keys.at[i])
    cond_meddra = cond.map(lambda c: c.get("_meddra") if c else None)
    md_code = cols["_meddra_code"].where(cols["_meddra_code"].notna(),
                                         cond_meddra.map(lambda m: m.get("code") if m else None))
    md_disp = cols["_meddra_display"].where(cols["_meddra_display"].notna(),
                                            cond_meddra.map(lambda m: m.get("display") if m else None))
    out["AEDECOD"] = md_disp
    out["AEPTCD"] = pd.to_numeric(md_code, errors="coerce").astype("Int64")
    out["AELLT"] = md_disp
    out["AELLTCD"] = out["AEPTCD"]
    if md_code.notna().any():
        ctx.once("ae.meddra", Kind.INFERRED, "MedDRA coding taken as both LLT and PT (no MedDRA dictionary "
                 "shipped to resolve the hierarchy)", rule="ae.AEDECOD", target="AEDECOD")
    keys = C.record_key(cols)
    for i in cols.index[md_disp.isna()]:
        ctx.report.add(Kind.MISSING, "no MedDRA coding: AEDECOD left for sponsor coding", rule="ae.AEDECOD",
                       target="AEDECOD", record=keys.at[i])
    cols = cols.assign(_site=cond.map(lambda c: c.get("_site") if c else ()))
    out["AELOC"] = C.map_codes(cols, "_site", ctx, table="fhir_body_site.csv", codelist="LOC",
                               rule="ae.AELOC", target="AELOC", source="Condition.bodySite")
    out["AESEV"] = C.map_codes(cols, "_sev", ctx, table=SEVERITY, codelist="AESEV", rule="ae.AESEV",
                               target="AESEV", source="AdverseEvent.severity")
    out["AESER"] = _serious(cols, ctx, out)
    out["AEACN"] = C.map_codes(cols, "_acn", ctx, table=None, codelist="ACN", rule="ae.AEACN", target="AEACN",
                               source="AdverseEvent.mitigatingAction")
    cols = cols.assign(_rel=cols["_suspects"].map(lambda s: _relatedness(s, ctx)))
    out["AEREL"] = C.map_codes(cols, "_rel", ctx, table=CAUSALITY, codelist=None, rule="ae.AEREL",
                               target="AEREL", source="AdverseEvent.suspectEntity.causality")
    out["AEOUT"] = C.map_codes(cols, "_out", ctx, table=OUTCOME, codelist="OUT", rule="ae.AEOUT", target="AEOUT",
                               source="AdverseEvent.outcome")
    fatal = out["AEOUT"].eq("FATAL")
    out["AESDTH"] = out["AESDTH"].where(~fatal, "Y")
    # an event that results in death is serious (ICH E2A; SDTMIG 3.4 AE: AESDTH is a seriousness
    # criterion of AESER): no seriousness given -> AESER Y (inferred); coded non-serious -> a contradiction
    # in the source, kept as given and reported
    died = out["AESDTH"].eq("Y")
    if (died & out["AESER"].isna()).any():
        out["AESER"] = out["AESER"].where(~(died & out["AESER"].isna()), "Y")
        ctx.once("ae.aeser-fatal", Kind.INFERRED, "AESER = Y for a fatal AE with no seriousness given (results in "
                 "death: a seriousness criterion, AESDTH)", rule="ae.AESER", source="AdverseEvent.outcome",
                 target="AESER")
    contra = died & out["AESER"].eq("N")
    if contra.any():
        keys = C.record_key(cols)
        for i in cols.index[contra]:
            ctx.report.add(Kind.INVALID_VALUE, "AdverseEvent coded non-serious with a fatal outcome (AESDTH = Y): "
                           "AESER kept as given (N), review", rule="ae.AESER", source="AdverseEvent.seriousness",
                           target="AESER", record=keys.at[i])
    ongoing = cols["_out"].map(lambda cs: any(code == "ongoing" for _, code in cs))
    out["AESTDTC"] = C.dtc(cols, "_start", ctx, rule="ae.AESTDTC", target="AESTDTC")
    out["AEENDTC"] = C.dtc(cols, "_end", ctx, rule="ae.AEENDTC", target="AEENDTC")
    out["AEDTC"] = C.dtc(cols, "_recorded", ctx, rule="ae.AEDTC", target="AEDTC")
    out["AEENRTPT"] = ongoing.map({True: "ONGOING", False: None})
    out["AEENTPT"] = ongoing.map({True: "END OF STUDY", False: None})
    no_term = out["AETERM"].isna()
    out = C.drop_rows(out, no_term, ctx, "AdverseEvent has no event/code text or display: AETERM is required",
                      rule="ae.AETERM", kind=Kind.ERROR)
    return out


def _serious(cols: pd.DataFrame, ctx: Ctx, out: pd.DataFrame) -> pd.Series:
    """AESER and the serious-criteria flags (Y only when a code asserts them; never an inferred N)."""
    idx = C.table_index(SERIOUS)
    aeser: list[str | None] = []
    flags: dict[str, list[str | None]] = {c: [] for c in CRITERIA}
    keys = C.record_key(cols)
    for i, codes in zip(cols.index, cols["_ser"], strict=True):
        rows = [idx[c] for c in codes if c in idx]
        if codes and not rows:
            ctx.report.unmapped_code("|".join(f"{s}#{c}" for s, c in codes), SERIOUS, rule="ae.AESER",
                                     source="AdverseEvent.seriousness", target="AESER", record=keys.at[i])
        ser = "Y" if any(r["target_code"] == "Y" for r in rows) else ("N" if rows else None)
        aeser.append(ser)
        for c in CRITERIA:
            flags[c].append("Y" if any(r.get(c) == "Y" for r in rows) else None)
    for c in CRITERIA:
        out[c] = pd.Series(flags[c], index=cols.index, dtype="object")
    return pd.Series(aeser, index=cols.index, dtype="object")


register_domain(DomainPlugin("AE", resource_types=("AdverseEvent",), extract=extract_ae, map=map_ae,
                             dtc="AESTDTC"))
