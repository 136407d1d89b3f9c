"""SV (Subject Visits) from Encounter (R4 period/class, R5 actualPeriod/class list).
VISITNUM/VISIT come from the engine's visit index (the same numbering every domain uses).
Rules: mappings/subject/sv.yaml.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from ..identity import project_identifier
from . import _codes as C

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: encounter classes that are not protocol visits (emergency, inpatient): SVUPDES carries their reason
UNPLANNED_CLASSES = frozenset({"EMER", "IMP", "ACUTE", "NONAC", "SS"})
SKIP_STATUS = frozenset({"planned", "entered-in-error", "unknown"})


def extract_sv(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    per = res.get("actualPeriod") or res.get("period") or {}
    cls = res.get("class")
    classes: set[str] = set()
    if isinstance(cls, dict):                  # R4 Coding
        classes = {str(cls.get("code"))} if cls.get("system") == ACT else set()
    elif isinstance(cls, list):                # R5 CodeableConcept list
        classes = {code for c in cls for s, code in C.codings(c) if s == ACT}
    reasons = [C.text_of(r) for r in res.get("reasonCode") or () if C.text_of(r)]
    reasons += [C.text_of(v) for r in res.get("reason") or () if isinstance(r, dict)
                for v in r.get("value") or () if C.text_of(v)]
    rid = res.get("id")
    own: dict[str, Any] | None = None
    visitnum = project_identifier(res, "visitnum")
    if visitnum is not None:
        # FHIR written by trialbridge from SV: identifier = VISITNUM, type text = VISIT (rule
        # subject.sdtm-ext: a carried SDTM value replaces the visit number inferred from the order)
        try:
            own = {"values": {"VISITNUM": float(visitnum), "VISIT": C.text_of(C.first(res.get("type")))}}
        except ValueError:
            own = None
    return {"_subject": ref_of(res.get("subject")), "_encounter": f"Encounter/{rid}" if rid else None,
            "_sdtm": own,
            "_status": res.get("status"), "_start": per.get("start") if isinstance(per, dict) else None,
            "_end": per.get("end") if isinstance(per, dict) else None,
            "_unplanned": bool(classes & UNPLANNED_CLASSES), "_reason": reasons[0] if reasons else None}


def map_sv(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    cols = C.drop_rows(cols, cols["_status"].isin(SKIP_STATUS), ctx,
                       "Encounter planned, unknown or entered-in-error: not a visit record", rule="sv.status")
    if not ctx.has_planned_visits:
        # SDTMIG 3.4 SV: SVPRESP "Y" for planned visits, i.e. visits specified in TV, and SVOCCUR
        # records whether a planned visit occurred: with no planned visits a cancelled Encounter is
        # neither a visit that took place nor a planned visit that was missed
        cols = C.drop_rows(cols, cols["_status"].eq("cancelled"), ctx, "Encounter cancelled and no planned "
                           "visits (TV) in a study definition: not a visit record (SVOCCUR=N is for a missed "
                           "planned visit)", rule="sv.status")
    if not len(cols):
        return pd.DataFrame()
    out = C.carried_frame(cols, "VISITNUM", "VISIT", "_sdtm")
    missed = cols["_status"].eq("cancelled")
    # unplanned: an emergency/inpatient class, or (with planned visits in the study) an encounter the
    # visit index matched to no planned visit (rule subject.visit)
    enc = ctx.refs.resolve_series(cols["_encounter"])
    indexed = enc.map(lambda k: k in ctx.unplanned_visits).astype(bool)
    unplanned = (cols["_unplanned"].astype(bool) | indexed) & ~missed
    # SDTMIG 3.4 SV: SVPRESP "Y" for planned visits (specified in TV), null for unplanned; SVOCCUR Y/N
    # for every planned visit (occurred or not), null for unplanned ones. Without TV no visit is
    # planned: encounters numbered in date order are not pre-specified visits
    planned = ~unplanned & ctx.has_planned_visits
    out["SVPRESP"] = pd.Series("Y", index=cols.index, dtype="object").where(planned, None)
    out["SVOCCUR"] = missed.map({True: "N", False: "Y"}).astype("object").where(planned, None)
    out["SVREASOC"] = cols["_reason"].where(missed, None)
    out["SVSTDTC"] = C.dtc(cols, "_start", ctx, rule="sv.SVSTDTC", target="SVSTDTC")
    out["SVENDTC"] = C.dtc(cols, "_end", ctx, rule="sv.SVENDTC", target="SVENDTC")
    described = cols["_reason"].fillna(enc.map(lambda k: ctx.unplanned_visits.get(k)))
    out["SVUPDES"] = described.where(unplanned, None)
    # the reason of a visit that is neither missed (SVREASOC) nor unplanned (SVUPDES) has no SV variable
    unused = cols["_reason"].notna() & ~missed & ~unplanned
    if unused.any():
        ctx.row_issues("SV", "reason", Kind.LOSSY, "Encounter reason of a visit that took place and is not "
                       "unplanned: SV has no variable for it (SVREASOC is the reason a visit did not occur, "
                       "SVUPDES describes an unplanned visit)", cols, unused, rule="sv.SVUPDES",
                       source="Encounter.reasonCode|reason")
    if unplanned.any():
        ctx.once("sv.unplanned", Kind.INFERRED, "emergency/inpatient Encounters (and, with planned "
                 "visits, Encounters matching none) taken as unplanned visits (SVUPDES from the encounter "
                 "reason, else its type text)", rule="sv.SVUPDES", target="SVUPDES")
    return out


register_domain(DomainPlugin("SV", resource_types=("Encounter",), extract=extract_sv, map=map_sv,
                             dtc="SVSTDTC"))
