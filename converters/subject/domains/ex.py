"""EX (Exposure) from MedicationAdministration of the study intervention; the shared medication
extractor that routes every MedicationAdministration/Statement/Request to EX or CM.

Which medication is the study drug comes from the study definition (``--study``): a medication
whose text, a coding display or a coding code equals (case-folded, whitespace-normalised) an
intervention name, one of its other names, or the product code before `` (`` in the name
(rule ex.study-drug, mappings/subject/ex.yaml). Without a study definition nothing is study drug:
every administration goes to CM and EX is not derived (reported).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from ..identity import project_identifier
from . import _codes as C

MED_TYPES = ("MedicationAdministration", "MedicationStatement", "MedicationRequest")
DROP_STATUS = frozenset({"entered-in-error"})


def extract_medication(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    """One row per MedicationAdministration / MedicationStatement / MedicationRequest (R4 or R5)."""
    rtype = res["resourceType"]
    concept, medres = C.medication_concept(res, ctx)
    names = C.study_drug_names(ctx)
    # rule ex.project-ex: a MedicationAdministration with an identifier in the project's exseq naming
    # system was written by trialbridge from an EX record: it is EX, EXTRT its medication text
    project_ex = rtype == "MedicationAdministration" and project_identifier(res, "exseq") is not None
    if ctx.study is None and not project_ex:
        ctx.once("ex.no-study", Kind.MISSING, "no study definition (--study): the study drug is unknown, "
                 "every medication goes to CM and EX is not derived", rule="ex.study-drug", target="EX")
    drug = C.study_drug_of(concept, names)
    if project_ex and drug is None:
        drug = C.text_of(concept)
    if rtype == "MedicationAdministration":
        start, end = C.period_or_datetime(res, "effective")
        if start is None:
            start, end = C.period_or_datetime(res, "occurence")     # R5 spelling
        if start is None:
            start, end = C.period_or_datetime(res, "occurrence")
        # a Period with a start and no end is an administration not (known to be) finished: no EXENDTC
        open_period = end is None and any(isinstance(res.get(f"{k}Period"), dict)
                                          for k in ("effective", "occurence", "occurrence"))
        dosage = res.get("dosage")
        if not isinstance(dosage, dict):
            dosage = {}
        dose_v, dose_u = C.dose_quantity(dosage.get("dose"))
        route, timing, dtext = dosage.get("route"), None, dosage.get("text")
        n_dosage = 1 if dosage else 0
        enc = ref_of(res.get("context") or res.get("encounter"))
    else:
        dosages = res.get("dosage") if rtype == "MedicationStatement" else res.get("dosageInstruction")
        dosages = [d for d in dosages or () if isinstance(d, dict)]
        n_dosage = len(dosages)
        d0 = dosages[0] if dosages else {}
        dr = C.first(d0.get("doseAndRate")) or {}
        dose_v, dose_u = C.dose_quantity(dr.get("doseQuantity") if isinstance(dr, dict) else None)
        route, timing, dtext = d0.get("route"), d0.get("timing"), d0.get("text")
        if rtype == "MedicationStatement":
            start, end = C.period_or_datetime(res, "effective")
        else:
            rep = (timing or {}).get("repeat") if isinstance(timing, dict) else None
            bounds = rep.get("boundsPeriod") if isinstance(rep, dict) else None
            start, end = (bounds.get("start"), bounds.get("end")) if isinstance(bounds, dict) else (None, None)
        enc = ref_of(res.get("context") or res.get("encounter"))
        open_period = False
    to_ex = bool(drug and rtype == "MedicationAdministration")
    indc, indc_ref = C.first_reason(res, ctx, None if to_ex else "CMINDC")
    status = res.get("status")
    return {
        "_subject": ref_of(res.get("subject")), "_encounter": enc,
        "_route_to": "EX" if to_ex else "CM",
        "_drug": drug, "_status": status,
        "_do_not_perform": bool(res.get("doNotPerform")),
        "_trt": C.text_of(concept), "_spid": C.ident_value(res),
        "_dose": dose_v, "_dose_u": dose_u, "_dostxt": dtext, "_n_dosage": n_dosage,
        "_route": C.codings(route), "_freq": C.timing_key(timing),
        "_form": C.codings((medres or {}).get("form") if isinstance(medres, dict) else None),
        "_lot": (((medres or {}).get("batch") or {}).get("lotNumber")
                 if isinstance((medres or {}).get("batch"), dict) else None),
        "_start": start, "_end": end, "_open": open_period,
        "_indc": indc, "_indc_ref": indc_ref,
        "_reason": bool(res.get("reasonCode") or res.get("reasonReference") or res.get("reason")),
    }


def map_ex(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    cols = C.drop_rows(cols, cols["_status"].isin(DROP_STATUS), ctx,
                       "MedicationAdministration entered-in-error: not an exposure", rule="ex.status",
                       kind=Kind.LOSSY)
    cols = C.drop_rows(cols, cols["_status"].eq("not-done"), ctx,
                       "study drug administration not done: EX holds administered doses only",
                       rule="ex.status", kind=Kind.LOSSY)
    if not len(cols):
        return pd.DataFrame()
    out = C.carried_frame(cols, "VISITNUM", "VISIT")
    out["EXSPID"] = cols["_spid"]
    out["EXTRT"] = cols["_drug"]
    ctx.once("ex.study-drug", Kind.INFERRED, "MedicationAdministration classified as study drug by name/code "
             "match to the study definition's interventions; EXTRT = the intervention name",
             rule="ex.study-drug", target="EXTRT")
    out["EXDOSE"] = pd.to_numeric(cols["_dose"], errors="coerce")
    out["EXDOSU"] = C.ct_unit(cols, "_dose_u", ctx, rule="ex.EXDOSU", target="EXDOSU",
                              amount=out["EXDOSE"], amount_var="EXDOSE")
    out["EXDOSFRM"] = C.map_codes(cols, "_form", ctx, table="fhir_dose_form.csv", codelist="FRM",
                                  rule="ex.EXDOSFRM", target="EXDOSFRM")
    # one MedicationAdministration = one administration event
    out["EXDOSFRQ"] = "ONCE"
    out["EXROUTE"] = C.map_codes(cols, "_route", ctx, table="fhir_route.csv", codelist="ROUTE",
                                 rule="ex.EXROUTE", target="EXROUTE")
    out["EXLOT"] = cols["_lot"]
    has_reason = cols["_reason"].astype(bool)
    if has_reason.any():
        ctx.report.add(Kind.LOSSY, f"{int(has_reason.sum())} study-drug administrations give a reason "
                       "(reasonCode/reasonReference, R5 reason): EX has no indication variable (SDTMIG 3.4 "
                       "EX; --INDC is used in CM), not carried", rule="ex.reason",
                       source="MedicationAdministration.reason", target="EX")
    out["EXSTDTC"] = C.dtc(cols, "_start", ctx, rule="ex.EXSTDTC", target="EXSTDTC")
    end = C.dtc(cols, "_end", ctx, rule="ex.EXENDTC", target="EXENDTC")
    # a single administration at a point in time ends when it starts (SDTMIG 3.4 EX); a Period left
    # open (an infusion in progress) has no known end: EXENDTC stays empty, never the start copied
    point = ~cols["_open"].fillna(False).astype(bool)
    out["EXENDTC"] = end.where(end.notna() | ~point, out["EXSTDTC"])
    # EX is mapped before the engine derives RFSTDTC/RFENDTC from it; the same rule (first/last
    # study-drug exposure, identity.reference_dates) gives EX its own --DY and EPOCH
    g = out.groupby("USUBJID", sort=False)
    out["_rfstdtc"] = g["EXSTDTC"].transform("min")
    out["_rfendtc"] = g["EXENDTC"].transform("max")
    return out


register_domain(DomainPlugin("EX", resource_types=MED_TYPES, extract=extract_medication, map=map_ex,
                             accept=lambda row: row.get("_route_to") == "EX", dtc="EXSTDTC"))
