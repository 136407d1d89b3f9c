"""Subject identity and reference dates: SUBJID/USUBJID, SITEID, arms, RFSTDTC/RFENDTC, RFICDTC.

The rules are written as decisions in ``mappings/subject/dm.yaml`` (rule ids ``dm.SUBJID``,
``dm.SITEID``, ``dm.ARMCD``, ``dm.RFSTDTC``, ``dm.RFICDTC``); this module is their named code.
Privacy: a Patient's medical record number is used as SUBJID only with ``--expose-mrn``; otherwise a
keyed hash. Identifier values never go into report messages.

Project identifiers (rule ``dm.USUBJID``): FHIR written by trialbridge from SDTM names its keys in the
project's naming systems (``<base>/sid/usubjid`` on Patient, ``/subjid`` on ResearchSubject,
``/studyid`` on ResearchStudy). Those are study identifiers, not medical record numbers: a Patient
identifier in the usubjid system *is* the USUBJID, a ResearchSubject identifier in the subjid system
the SUBJID (:func:`apply_project_identifiers`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..report import Kind
from ..specs import transform
from .base import Ctx, first_coding, ref_of

ARM_CODE_MAX = 20


def _ident_values(res: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [i for i in (res or {}).get("identifier") or () if isinstance(i, dict) and i.get("value")]


def _is_mrn(ident: dict[str, Any]) -> bool:
    t = ident.get("type")
    return isinstance(t, dict) and any(isinstance(c, dict) and c.get("code") == "MR"
                                       for c in t.get("coding") or ())


def project_sid(name: str) -> str:
    """The project's naming system ``name`` (usubjid, subjid, studyid, aeseq ...)."""
    from ..fhir.subject_terms import SID
    return f"{SID}/{name}"


def project_identifier(res: dict[str, Any] | None, name: str) -> str | None:
    """The value of ``res``'s identifier in the project naming system ``name``, or None."""
    system = project_sid(name)
    for i in _ident_values(res):
        if i.get("system") == system:
            return str(i["value"])
    return None


@transform("subject_id")
def subject_id_of(patient: dict[str, Any], rs: dict[str, Any] | None, ctx: Ctx) -> str:
    """SUBJID (rule dm.SUBJID)."""
    own = project_identifier(rs, "subjid")
    if own:
        return own
    ids = _ident_values(rs)
    if ids:
        return str(ids[0]["value"])
    if ctx.expose_mrn:
        for ident in _ident_values(patient):
            if _is_mrn(ident):
                ctx.once("subjid-mrn", Kind.INFERRED, "SUBJID is the Patient's medical record number "
                         "(--expose-mrn)", rule="dm.SUBJID", target="SUBJID")
                return str(ident["value"])
    pids = _ident_values(patient)
    basis = (f"{pids[0].get('system', '')}|{pids[0]['value']}" if pids
             else f"Patient/{patient.get('id')}")
    ctx.once("subjid-hash", Kind.INFERRED, "SUBJID is a keyed hash (HMAC-SHA256) of the Patient "
             "identifier: no ResearchSubject identifier in the input", rule="dm.SUBJID", target="SUBJID")
    return ctx.hashed_id(basis)


@transform("project_identifiers")
def apply_project_identifiers(ctx: Ctx) -> None:
    """Rule dm.USUBJID, project identifiers: a Patient identifier in the project's usubjid naming
    system is the USUBJID (instead of STUDYID-SUBJID). Applied to the subject index right after it is
    built, before any domain is mapped; aliases follow. Two Patients giving the same USUBJID keep the
    composed one (reported)."""
    subj = ctx.subjects
    if not len(subj):
        return
    patients = ctx.resources.get("Patient", {})
    own = subj["_key"].map(lambda k: project_identifier(patients.get(k), "usubjid"))
    if not own.notna().any():
        return
    new = own.where(own.notna(), subj["USUBJID"])
    dup = new.duplicated(keep=False) & own.notna()
    if dup.any():
        ctx.report.add(Kind.ERROR, "Patients share a project usubjid identifier: USUBJID stays "
                       "STUDYID-SUBJID for them", rule="dm.USUBJID", target="USUBJID",
                       record=str(subj.loc[dup, "_key"].iloc[0]))
        new = new.where(~dup, subj["USUBJID"])
    rename = dict(zip(subj["USUBJID"], new, strict=True))
    subj["USUBJID"] = new
    ctx.subject_alias = {a: rename.get(u, u) for a, u in ctx.subject_alias.items()}
    ctx.once("usubjid-project", Kind.INFERRED, "USUBJID is the Patient identifier in the project's usubjid "
             "naming system (FHIR written by trialbridge from SDTM)", rule="dm.USUBJID", target="USUBJID")


def _study_identifier(study: dict[str, Any] | None) -> str | None:
    ids = _ident_values(study)
    return str(ids[0]["value"]) if ids else None


@transform("site_id")
def site_of(patient: dict[str, Any], rs: dict[str, Any] | None, ctx: Ctx, pkey: str) -> str | None:
    """SITEID (rule dm.SITEID): site-level ResearchStudy, else managing organisation, else the
    service provider of the first encounter (inferred), else missing."""
    if rs is not None:
        st = ctx.resource("ResearchStudy", ref_of(rs.get("study")))
        if st is not None and st.get("partOf") and _study_identifier(st):
            return _study_identifier(st)
    org_ref = ref_of(patient.get("managingOrganization"))
    org = ctx.resource("Organization", org_ref)
    if org_ref:
        val = _study_identifier(org) or (org.get("id") if org else None)
        if val:
            ctx.once("siteid-org", Kind.INFERRED, "SITEID taken from Patient.managingOrganization "
                     "(no site-level ResearchStudy)", rule="dm.SITEID", target="SITEID")
            return str(val)
    encs = [e for e in ctx.resources.get("Encounter", {}).values()
            if ctx.refs.resolve(e.get("subject")) == pkey and e.get("serviceProvider")]
    if encs:
        first = min(encs, key=lambda e: e.get("start") or "")
        org = ctx.resource("Organization", first["serviceProvider"])
        val = _study_identifier(org) or (org.get("id") if org else None)
        if val:
            ctx.once("siteid-enc", Kind.INFERRED, "SITEID taken from the service provider of the "
                     "subject's first Encounter (no site-level ResearchStudy)", rule="dm.SITEID",
                     target="SITEID")
            return str(val)
    # reported once per subject by DM (rule dm.SITEID, capped per run like every row issue)
    return None


@transform("armcd_from_label")
def armcd_from_label(label: str, study_labels: list[str] | None = None) -> str:
    """ARMCD from an arm label, derived exactly as TA derives it (one rule for TA and DM:
    :func:`trialbridge.sdtm.tdm_design.derive_armcd`), so DM.ARMCD matches TA.ARMCD."""
    from ..sdtm.tdm_design import derive_armcd
    labels = list(study_labels or ())
    if label in labels:
        return derive_armcd(labels)[labels.index(label)]
    return derive_armcd([label])[0]


def _arm_studies(rs: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]]:
    """The ResearchStudy of the subject and the studies it is part of (a site-level study points at the
    study that defines the arms)."""
    out: list[dict[str, Any]] = []
    ref = ref_of(rs.get("study"))
    while ref and len(out) < 5:
        st = ctx.resource("ResearchStudy", ref)
        if st is None or any(st is o for o in out):
            break
        out.append(st)
        ref = ref_of((st.get("partOf") or [None])[0])
    return out


def _carried_armcd(group: dict[str, Any]) -> str | None:
    """ARMCD the project's SDTM -> FHIR writer carries in the ``sdtm`` extension of an arm/group."""
    from ..fhir.subject_terms import EXT_SDTM
    for ext in group.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == EXT_SDTM:
            for sub in ext.get("extension") or ():
                if isinstance(sub, dict) and sub.get("url") == "ARMCD" and sub.get("valueString"):
                    return str(sub["valueString"])
    return None


def _arm_of(value: str | None, rs: dict[str, Any], ctx: Ctx) -> tuple[str | None, str | None]:
    """(arm name, carried ARMCD) of an assignment: R5 comparison groups are linkIds, resolved through
    the ResearchStudy in the data (or the study it is part of); R4 arms are ResearchStudy.arm.name."""
    if not value:
        return None, None
    for st in _arm_studies(rs, ctx):
        for g in st.get("comparisonGroup") or ():
            if isinstance(g, dict) and g.get("linkId") == value and g.get("name"):
                return str(g["name"]), _carried_armcd(g)
        for a in st.get("arm") or ():
            if isinstance(a, dict) and a.get("name") == value:
                return value, _carried_armcd(a)
    return value, None


@transform("assign_arms")
def assign_arms(rs: dict[str, Any] | None, ctx: Ctx, pkey: str) -> dict[str, Any]:
    """ARMCD/ARM/ACTARMCD/ACTARM/ARMNRS (rule dm.ARMCD)."""
    out: dict[str, Any] = {"ARMCD": None, "ARM": None, "ACTARMCD": None, "ACTARM": None, "ARMNRS": None,
                           "ACTARMUD": None}
    if rs is None:
        out["ARMNRS"] = "NOT ASSIGNED"
        ctx.once("armnrs", Kind.INFERRED, "ARMNRS = NOT ASSIGNED for Patients without a "
                 "ResearchSubject (no arm assignment in the input)", rule="dm.ARMNRS", target="ARMNRS")
        return out
    status = rs.get("status")
    progress_states = {c.get("code") for p in rs.get("progress") or () if isinstance(p, dict)
                       for c in ((p.get("subjectState") or {}).get("coding") or ()) if isinstance(c, dict)}
    assigned = _arm_of(rs.get("assignedArm") or rs.get("assignedComparisonGroup"), rs, ctx)
    actual = _arm_of(rs.get("actualArm") or rs.get("actualComparisonGroup"), rs, ctx)
    if status == "ineligible" or "ineligible" in progress_states:
        out["ARMNRS"] = "SCREEN FAILURE"
        return out
    if not assigned[0]:
        out["ARMNRS"] = "NOT ASSIGNED"
        return out
    for var_cd, var, (name, carried) in (("ARMCD", "ARM", assigned), ("ACTARMCD", "ACTARM", actual)):
        if not name:
            continue
        if var == "ACTARM" and not carried and _unplanned_actual(name, ctx):
            # SDTMIG 3.4 DM: a subject treated in a way that matches no planned arm has ACTARMCD/ACTARM
            # null, ARMNRS UNPLANNED TREATMENT (CT C142179) and ACTARMUD describing the actual treatment
            out["ARMNRS"], out["ACTARMUD"] = "UNPLANNED TREATMENT", name
            ctx.report.add(Kind.INFERRED, "ResearchSubject actual arm matches no arm group of the study "
                           "definition: ACTARMCD/ACTARM null, ARMNRS = UNPLANNED TREATMENT, ACTARMUD = the arm "
                           "as given", rule="dm.ARMNRS", target="ACTARMUD", record=pkey)
            continue
        label = _match_arm(name, ctx, pkey)
        out[var] = label
        if carried:      # the arm's own code, carried by the project's writer: never re-derived
            out[var_cd] = carried
            continue
        arms = ctx.study.arms_interventions.arm_groups if ctx.study and ctx.study.arms_interventions else ()
        out[var_cd] = armcd_from_label(label, [a.label or "" for a in arms])
    return out


def _unplanned_actual(name: str, ctx: Ctx) -> bool:
    """The study definition has arm groups and none is ``name`` (the match :func:`_match_arm` makes)."""
    study = ctx.study
    groups = study.arms_interventions.arm_groups if study and study.arms_interventions else ()
    want = name.strip().casefold()
    return bool(groups) and not any(g.label and g.label.strip().casefold() == want for g in groups)


def _match_arm(name: str, ctx: Ctx, pkey: str) -> str:
    study = ctx.study
    groups = study.arms_interventions.arm_groups if study and study.arms_interventions else ()
    if not groups:
        ctx.once("arm-nostudy", Kind.INFERRED, "ARM taken from the ResearchSubject arm name as given "
                 "(no study definition to match it against)", rule="dm.ARMCD", target="ARM")
        return name
    want = name.strip().casefold()
    for g in groups:
        if g.label and g.label.strip().casefold() == want:
            return g.label
    ctx.report.add(Kind.UNMAPPED_CODE, "ResearchSubject arm matches no arm group of the study "
                   "definition; kept as given", rule="dm.ARMCD", target="ARM", record=pkey, value=name)
    return name


# ------------------------------------------------------------------------------ reference dates
def _study_drug_names(ctx: Ctx) -> set[str]:
    study = ctx.study
    names: set[str] = set()
    if study and study.arms_interventions:
        for iv in study.arms_interventions.interventions:
            for n in (iv.name, *iv.other_names):
                if n:
                    names.add(n.strip().casefold())
    return names


def _med_texts(res: dict[str, Any]) -> list[str]:
    cc = res.get("medicationCodeableConcept")
    med = res.get("medication")
    if isinstance(med, dict):          # R5 CodeableReference
        cc = med.get("concept") or cc
    out = []
    if isinstance(cc, dict):
        if cc.get("text"):
            out.append(str(cc["text"]))
        out += [str(c["display"]) for c in cc.get("coding") or () if isinstance(c, dict) and c.get("display")]
    return out


def _dtc_of(holder: dict[str, Any], key: str) -> tuple[Any, bool]:
    """(text, is_sdtm) of a FHIR date element: the original --DTC the project's writer kept in the
    ``sdtm-dtc`` extension of the primitive when it had to cut it (already SDTM text), else the value."""
    from ..fhir.subject_terms import EXT_DTC
    for ext in (holder.get("_" + key) or {}).get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == EXT_DTC and ext.get("valueString"):
            return ext["valueString"], True
    return holder.get(key), False


def _period_dates(ctx: Ctx) -> None:
    """RFSTDTC/RFENDTC = ResearchSubject.period.start/end when the subject has it: it wins over the
    exposure-derived dates (rule dm.RFSTDTC). Only for FHIR written by trialbridge from SDTM, where the
    period *is* RFSTDTC/RFENDTC; elsewhere it is the participation period (RFENDTC would move to the
    end of follow-up and EPOCH with it)."""
    from .base import derive_dtc
    from .sdtm_ext import is_project_input
    if not is_project_input(ctx):
        return
    subj = ctx.subjects
    rs_res = ctx.resources.get("ResearchSubject", {})
    for var, elem in (("RFSTDTC", "start"), ("RFENDTC", "end")):
        fhir: dict[Any, Any] = {}
        sdtm: dict[Any, Any] = {}
        for i, key in zip(subj.index, subj["_rs"], strict=True):
            per = (rs_res.get(key) or {}).get("period") if key else None
            if isinstance(per, dict):
                v, is_sdtm = _dtc_of(per, elem)
                if v:
                    (sdtm if is_sdtm else fhir)[i] = v
        if not fhir and not sdtm:
            continue
        new = pd.Series(sdtm, dtype=object)
        if fhir:
            new = pd.concat([new, derive_dtc(pd.Series(fhir, dtype=object))[0].dropna()])
        cur = subj[var].astype(object) if var in subj else pd.Series([None] * len(subj), index=subj.index,
                                                                      dtype=object)
        subj[var] = cur.where(~subj.index.isin(new.index), new.reindex(subj.index))
        ctx.once(f"{var.lower()}-period", Kind.INFERRED, f"{var} = ResearchSubject.period.{elem} (wins over "
                 "the study-drug exposure)", rule="dm.RFSTDTC", target=var)


@transform("reference_dates")
def reference_dates(ctx: Ctx) -> None:
    """RFXSTDTC/RFXENDTC (= RFSTDTC/RFENDTC) from study-drug exposure; RFICDTC from Consent."""
    subj = ctx.subjects
    if not len(subj):
        return
    ex = ctx.frames.get("EX")
    first: pd.Series | None = None
    last: pd.Series | None = None
    if ex is not None and len(ex) and "EXSTDTC" in ex:
        st = ex[["USUBJID", "EXSTDTC"]].dropna()
        first = st.groupby("USUBJID")["EXSTDTC"].min()
        end = ex["EXENDTC"].fillna(ex["EXSTDTC"]) if "EXENDTC" in ex else ex["EXSTDTC"]
        last = pd.DataFrame({"USUBJID": ex["USUBJID"], "d": end}).dropna().groupby("USUBJID")["d"].max()
        rule_msg = "RFSTDTC/RFENDTC = first/last study-drug exposure (EX)"
    else:
        drugs = _study_drug_names(ctx)
        rows = []
        for ma in ctx.resources.get("MedicationAdministration", {}).values():
            if ma.get("status") in ("not-done", "entered-in-error"):
                continue
            if not any(t.strip().casefold() in drugs for t in _med_texts(ma)):
                continue
            per = ma.get("effectivePeriod") or ma.get("occurencePeriod") or ma.get("occurrencePeriod") or {}
            start = ma.get("effectiveDateTime") or ma.get("occurenceDateTime") or \
                ma.get("occurrenceDateTime") or per.get("start")
            rows.append({"ref": ref_of(ma.get("subject")), "s": start, "e": per.get("end") or start})
        if rows:
            df = pd.DataFrame(rows)
            df["USUBJID"] = ctx.usubjid_series(df["ref"])
            df = df.dropna(subset=["USUBJID"])
            first = df.dropna(subset=["s"]).groupby("USUBJID")["s"].min()
            last = df.dropna(subset=["e"]).groupby("USUBJID")["e"].max()
        rule_msg = ("RFSTDTC/RFENDTC = first/last MedicationAdministration of a study intervention "
                    "(matched by name to the study definition)")
    from .base import derive_dtc
    if first is not None and len(first):
        subj["RFXSTDTC"] = derive_dtc(subj["USUBJID"].map(first))[0]
        subj["RFXENDTC"] = derive_dtc(subj["USUBJID"].map(last))[0] if last is not None else None
        subj["RFSTDTC"] = subj["RFXSTDTC"]
        subj["RFENDTC"] = subj["RFXENDTC"]
        ctx.once("rfstdtc", Kind.INFERRED, rule_msg, rule="dm.RFSTDTC", target="RFSTDTC")
    _period_dates(ctx)
    # RFICDTC: Consent.dateTime (R4) / Consent.date (R5), earliest per subject; else the R5
    # ResearchSubject.progress entry whose reason is informedConsentSigned
    consent: dict[str, str] = {}
    for c in ctx.resources.get("Consent", {}).values():
        if c.get("status") not in (None, "active"):
            continue
        ref = ref_of(c.get("patient") or c.get("subject"))
        u = ctx.subject_alias.get(ctx.refs.resolve(ref) or "") if ref else None
        d = c.get("dateTime") or c.get("date")
        if u and d and (u not in consent or d < consent[u]):
            consent[u] = d
    rs_res = ctx.resources.get("ResearchSubject", {})
    for _, row in subj.iterrows():
        if row["USUBJID"] in consent or not row["_rs"]:
            continue
        for p in (rs_res.get(row["_rs"]) or {}).get("progress") or ():
            reason = first_coding((p or {}).get("reason"))
            if reason and reason.get("code") == "informedConsentSigned" and p.get("startDate"):
                consent[row["USUBJID"]] = p["startDate"]
    if consent:
        subj["RFICDTC"] = derive_dtc(subj["USUBJID"].map(consent), ctx.dropped_zone("RFICDTC"))[0]
