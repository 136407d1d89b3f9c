"""CM (Concomitant/Prior Medications) from MedicationStatement, MedicationRequest and
MedicationAdministration of anything that is not the study drug (rows routed by
:func:`~trialbridge.subject.domains.ex.extract_medication`). Rules: mappings/subject/cm.yaml.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, register_domain
from . import _codes as C
from .ex import MED_TYPES, extract_medication

NOT_TAKEN = frozenset({"not-taken", "not-done", "cancelled", "stopped-before-start"})


def condition_text(ref: str | None, ctx: Ctx) -> str | None:
    cond = ctx.resource("Condition", ref)
    return cond.get("_text") if cond else None


def extract_cm(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    """The shared medication extractor plus MedicationStatement.dateAsserted (rule cm.CMDTC)."""
    row = extract_medication(res, ctx)
    if row is not None:
        row["_asserted"] = res.get("dateAsserted")
    return row


def map_cm(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    cols = C.drop_rows(cols, cols["_status"].eq("entered-in-error"), ctx,
                       "medication record entered-in-error: dropped", rule="cm.status")
    # R4 MedicationStatement 'intended' ("may be taken at some time in the future") and a 'draft'
    # MedicationRequest (not yet an order) are no medication received: not a CM record (SDTMIG 3.4 CM)
    planned = ((cols["_src_type"].eq("MedicationStatement") & cols["_status"].eq("intended"))
               | (cols["_src_type"].eq("MedicationRequest") & cols["_status"].eq("draft")))
    cols = C.drop_rows(cols, planned, ctx, "medication intended/draft (planned, not taken): CM records "
                       "medications received; not converted", rule="cm.status")
    if not len(cols):
        return pd.DataFrame()
    study_ms = cols["_drug"].notna()
    if study_ms.any():
        ctx.once("cm.study-drug-statement", Kind.LOSSY, "MedicationStatement/Request of the study drug: "
                 "EX is built from MedicationAdministration only; kept in CM", rule="cm.study-drug")
    out = C.carried_frame(cols)
    out["CMSPID"] = cols["_spid"]
    out["CMTRT"] = cols["_trt"]
    no_trt = out["CMTRT"].isna()
    if no_trt.any():
        keys = C.record_key(cols)
        for i in cols.index[no_trt]:
            ctx.report.add(Kind.ERROR, "medication has no name (no text, display or Medication.code): "
                           "CMTRT is required", rule="cm.CMTRT", target="CMTRT", record=keys.at[i])
        out, cols = out.loc[~no_trt], cols.loc[~no_trt]
        if not len(out):
            return pd.DataFrame()
    ctx.once("cm.CMDECOD", Kind.LOSSY, "CMDECOD/CMCLAS are WHODrug-coded by the sponsor; no WHODrug coding "
             "in the data, left empty", rule="cm.CMDECOD", target="CMDECOD")
    negated = cols["_status"].isin(NOT_TAKEN) | cols["_do_not_perform"].astype(bool)
    out["CMPRESP"] = negated.map({True: "Y", False: None})
    out["CMOCCUR"] = negated.map({True: "N", False: None})
    indc_ref = cols["_indc_ref"].map(lambda r: condition_text(r, ctx) if isinstance(r, str) else None)
    out["CMINDC"] = cols["_indc"].where(cols["_indc"].notna(), indc_ref)
    out["CMDOSE"] = pd.to_numeric(cols["_dose"], errors="coerce")
    # SDTMIG: CMDOSTXT only for doses that are not a single number
    out["CMDOSTXT"] = cols["_dostxt"].where(out["CMDOSE"].isna(), None)
    out["CMDOSU"] = C.ct_unit(cols, "_dose_u", ctx, rule="cm.CMDOSU", target="CMDOSU",
                              amount=out["CMDOSE"], amount_var="CMDOSE")
    out["CMDOSFRM"] = C.map_codes(cols, "_form", ctx, table="fhir_dose_form.csv", codelist="FRM",
                                  rule="cm.CMDOSFRM", target="CMDOSFRM")
    freq = C.map_codes(cols, "_freq", ctx, table="fhir_frequency.csv", codelist="FREQ",
                       rule="cm.CMDOSFRQ", target="CMDOSFRQ")
    is_admin = cols["_src_type"].eq("MedicationAdministration")
    out["CMDOSFRQ"] = freq.where(~is_admin, "ONCE")
    out["CMROUTE"] = C.map_codes(cols, "_route", ctx, table="fhir_route.csv", codelist="ROUTE",
                                 rule="cm.CMROUTE", target="CMROUTE")
    out["CMSTDTC"] = C.dtc(cols, "_start", ctx, rule="cm.CMSTDTC", target="CMSTDTC")
    out["CMENDTC"] = C.dtc(cols, "_end", ctx, rule="cm.CMENDTC", target="CMENDTC")
    out["CMDTC"] = C.dtc(cols, "_asserted", ctx, rule="cm.CMDTC", target="CMDTC")
    # rule cm.CMENRTPT: an R4 MedicationStatement 'active' ("still being taken") with no end date is
    # ongoing as of its assertion (SDTMIG 3.4 section 4.4.7: --ENRTPT ONGOING against --ENTPT, here CMDTC)
    ongoing = (cols["_src_type"].eq("MedicationStatement") & cols["_status"].eq("active")
               & out["CMENDTC"].isna())
    anchored = ongoing & out["CMDTC"].notna()
    out["CMENRTPT"] = anchored.map({True: "ONGOING", False: None})
    out["CMENTPT"] = out["CMDTC"].where(anchored, None)
    if (ongoing & ~anchored).any():
        keys = C.record_key(cols)
        for i in cols.index[ongoing & ~anchored]:
            ctx.report.add(Kind.LOSSY, "MedicationStatement active (still taken) with no end date and no "
                           "dateAsserted: no reference time point for CMENRTPT ONGOING, not carried",
                           rule="cm.CMENRTPT", source="status", target="CMENRTPT", record=keys.at[i])
    many = cols["_n_dosage"].fillna(0).astype(int) > 1
    if many.any():
        keys = C.record_key(cols)
        for i in cols.index[many]:
            ctx.report.add(Kind.LOSSY, "several dosage entries: only the first is mapped", rule="cm.dosage",
                           source="dosage", target="CMDOSE", record=keys.at[i])
    return out


register_domain(DomainPlugin("CM", resource_types=MED_TYPES, extract=extract_cm, map=map_cm,
                             accept=lambda row: row.get("_route_to") == "CM", dtc="CMSTDTC",
                             depends=("MH",)))
