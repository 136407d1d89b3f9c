"""Canonical Study -> FHIR Bundle (type collection) holding a ResearchStudy and every resource it references.

R5 and R4 come from one composed spec, ``mappings/fhir_study.yaml``: each rule names a registered transform
(below, ``@transform("fhir_study.*")``) and the code tables it uses; the transforms run in rule order and
build plain dicts (no pydantic in the hot path; outputs are validated in the tests). Resource ids are uuid5 of
type + study key + local key, so the same input gives the same bundle byte for byte. Whatever the target
version cannot carry is reported ``lossy`` by CT.gov path (declared ``gaps`` and value-level losses).

``python -m trialbridge.fhir.study_writer --table`` prints the "what maps to what" table from the spec.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

from ..model import Study
from ..report import ConversionReport, Kind
from ..specs import get_transform, transform
from .study_common import (
    coding,
    concept,
    countries,
    ctgov_path,
    ext_url,
    full_url,
    leaves_under_each,
    lookup,
    rid,
    spec,
    system,
    xver_parts,
    xver_url,
)

CONTACTPOINT_EXT = "http://hl7.org/fhir/StructureDefinition/contactpoint-extension"
DATA_ABSENT_EXT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+([A-Za-z]+)\s*$")
_NO_VALUE: tuple[object, ...] = (None, "", [], {})


def put(d: dict[str, Any], key: str, value: Any) -> None:
    """Set only real values: no empty strings, lists or objects ever reach the output."""
    if value not in _NO_VALUE:
        d[key] = value


def ref(url: str, rtype: str, display: str | None = None) -> dict[str, Any]:
    out = {"reference": url, "type": rtype}
    put(out, "display", display)
    return out


def complex_ext(url: str, parts: Sequence[tuple[str, str, Any]]) -> dict[str, Any] | None:
    """A complex extension from (sub-url, value[x] name, value) triples; None values are left out."""
    subs = [{"url": name, vtype: value} for name, vtype, value in parts if value not in _NO_VALUE]
    return {"url": url, "extension": subs} if subs else None


def simple_ext(url: str, vtype: str, value: Any) -> dict[str, Any] | None:
    return None if value in _NO_VALUE else {"url": url, vtype: value}


def xver_ext(element: str, values: Sequence[tuple[str, Any]],
             nested: Sequence[tuple[str, str, Any]] = ()) -> dict[str, Any] | None:
    """The official cross-version extension (R4) for an R5 backbone element: one sub-extension per R5 child
    (relative url = child name, value[x] from the spec's ``parts``), then project extensions (absolute url)
    for what the R5 element has no child for."""
    parts = xver_parts(element)
    return complex_ext(xver_url(element), [(name, parts[name], value) for name, value in values] + list(nested))


@dataclass
class Ctx:
    """One conversion: the study, the target version, the report, the ResearchStudy being built."""

    study: Study
    version: str
    report: ConversionReport
    key: str = ""
    rs: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    rs_ext: list[dict[str, Any]] = field(default_factory=list)

    @property
    def r5(self) -> bool:
        return self.version == "R5"

    def add(self, resource: dict[str, Any], local: str) -> str:
        res_id = rid(resource["resourceType"], self.key, local)
        resource["id"] = res_id
        self.resources.append(resource)
        return full_url(res_id)

    def ext(self, extension: dict[str, Any] | None) -> None:
        if extension:
            self.rs_ext.append(extension)

    def concept(self, enum: str, value: Any, path: str, rule: str, *, text: str | None = None,
                version: str | None = None) -> dict[str, Any] | None:
        """A CodeableConcept for a CT.gov value; an unknown value is reported and kept as text."""
        if value is None:
            return None
        raw = str(value).lower() if isinstance(value, bool) else str(value)
        cc = concept(enum, raw, version or self.version, text=text)
        if cc is None:
            self.report.unmapped_code(raw, f"{enum} ({self.version})", rule=rule,
                                      source=ctgov_path(path), record=self.key)
            return {"text": raw}
        if version == "R5":
            self.mark_r5(cc)
        return cc

    def mark_r5(self, cc: dict[str, Any] | None) -> dict[str, Any] | None:
        """In R4 output, an R5 concept carried by an extension: the code system URL is the same in
        both versions but these codes exist only in 5.0.0, so each coding names its version."""
        if cc is not None and self.version == "R4":
            for c in cc.get("coding", ()):
                c["version"] = "5.0.0"
        return cc

    def lossy(self, path: str, message: str, rule: str, target: str | None = None) -> None:
        self.report.lossy(ctgov_path(path), message, rule=rule, target=target, record=self.key)

    def lossy_under(self, obj: Any, path: str, message: str, rule: str) -> None:
        from ..model import iter_leaves
        for leaf, _ in iter_leaves(obj, path):
            self.lossy(leaf, message, rule)


# ================================================================== transforms
@transform("fhir_study.identifiers")
def map_identifiers(ctx: Ctx) -> None:
    ident = ctx.study.identification
    nct = system("nct")
    out: list[dict[str, Any]] = []
    if ident.nct_id:
        out.append({"use": "official", "system": nct, "value": ident.nct_id})
    for alias in ident.nct_id_aliases:
        out.append({"use": "old", "system": nct, "value": alias})
    org = ident.org_study_id
    if org is not None:
        if org.id:
            item: dict[str, Any] = {"use": "usual"}
            put(item, "type", ctx.concept("OrgStudyIdType", org.type, "identification.org_study_id.type",
                                          "fhir.study.identifier.org"))
            item["value"] = org.id
            sc = ctx.study.sponsor_collaborators
            lead = sc.lead_sponsor.name if sc and sc.lead_sponsor else None
            if lead:
                item["assigner"] = {"display": lead}
            out.append(item)
        elif org.type:
            ctx.lossy("identification.org_study_id.type", "identifier type without an identifier value",
                      "fhir.study.identifier.org")
    for i, sec in enumerate(ident.secondary_ids):
        base = f"identification.secondary_ids[{i}]"
        if not sec.id:
            for name in ("type", "domain"):
                if getattr(sec, name):
                    ctx.lossy(f"{base}.{name}", "secondary id without a value", "fhir.study.identifier.secondary")
            continue
        item = {"use": "secondary"}
        put(item, "type", ctx.concept("SecondaryIdType", sec.type, f"{base}.type",
                                      "fhir.study.identifier.secondary"))
        item["value"] = sec.id
        if sec.domain:
            item["assigner"] = {"display": sec.domain}
        out.append(item)
    put(ctx.rs, "identifier", out)


@transform("fhir_study.titles")
def map_titles(ctx: Ctx) -> None:
    ident = ctx.study.identification
    put(ctx.rs, "title", ident.brief_title)
    labels = []
    for kind, value, path in (("OFFICIAL", ident.official_title, "identification.official_title"),
                              ("ACRONYM", ident.acronym, "identification.acronym")):
        if value:
            labels.append({"type": ctx.concept("TitleType", kind, path, "fhir.study.label"), "value": value})
    if ctx.r5:
        put(ctx.rs, "label", labels)
    else:
        for lab in labels:
            ctx.ext(xver_ext("ResearchStudy.label", [("type", lab["type"]), ("value", lab["value"])]))


def _milestone(ctx: Ctx, kind: str, ds: Any, path: str, edge: str) -> dict[str, Any] | None:
    if ds is None:
        return None
    if not ds.date:
        if ds.type:
            ctx.lossy(f"{path}.type", "date type without a date", "fhir.study.milestones")
        return None
    entry: dict[str, Any] = {"state": ctx.mark_r5(concept("Milestone", kind, ctx.version))}
    if ds.type == "ACTUAL":
        entry["actual"] = True
    elif ds.type == "ESTIMATED":
        entry["actual"] = False
    elif ds.type is not None:
        ctx.report.unmapped_code(ds.type, "DateType", rule="fhir.study.milestones",
                                 source=ctgov_path(f"{path}.type"), record=ctx.key)
    entry["period"] = {edge: ds.date}
    return entry


@transform("fhir_study.status")
def map_status(ctx: Ctx) -> None:
    st = ctx.study.status
    overall = st.overall_status if st else None
    progress: list[dict[str, Any]] = []
    if overall:
        # the exact CT.gov state, always in R5 research-study-status terms (R4 carries it in an extension)
        progress.append({"state": ctx.concept("Status", overall, "status.overall_status", "fhir.study.status",
                                              version="R5"), "actual": True})
    if ctx.r5:
        ctx.rs["status"] = "active"   # publication status of this record, not the trial status
    else:
        code = lookup("Status", overall, "R4") if overall else None
        if code is None:
            fallback = lookup("Status", "UNKNOWN", "R4")
            assert fallback is not None
            code = fallback
            ctx.report.add(Kind.MISSING if not overall else Kind.UNMAPPED_CODE,
                           f"ResearchStudy.status is required in R4; overall status {overall or 'absent'} has no "
                           f"R4 code, wrote {code.code} (documented choice for UNKNOWN)",
                           rule="fhir.study.status", source=ctgov_path("status.overall_status"),
                           target="ResearchStudy.status", record=ctx.key)
            if not overall:   # say that the CT.gov status is absent, so no reader takes the fallback as data
                progress.append({"state": {"extension": [{"url": DATA_ABSENT_EXT, "valueCode": "unknown"}]},
                                 "actual": True})
        elif code.inferred:
            ctx.report.add(Kind.INFERRED, f"overall status {overall} has no R4 code; wrote {code.code} "
                           "(documented choice); the exact status is in the progress-status extension",
                           rule="fhir.study.status", source=ctgov_path("status.overall_status"),
                           target="ResearchStudy.status", record=ctx.key)
        ctx.rs["status"] = code.code
    if st is not None:
        for kind, ds, path, edge in (("STUDY", st.start_date, "status.start_date", "start"),
                                     ("PRIMARY_COMPLETION", st.primary_completion_date,
                                      "status.primary_completion_date", "end"),
                                     ("STUDY", st.completion_date, "status.completion_date", "end")):
            entry = _milestone(ctx, kind, ds, path, edge)
            if entry:
                progress.append(entry)
        period: dict[str, Any] = {}
        put(period, "start", st.start_date.date if st.start_date else None)
        put(period, "end", st.completion_date.date if st.completion_date else None)
        put(ctx.rs, "period", period)
    if ctx.r5:
        put(ctx.rs, "progressStatus", progress)
    else:
        for entry in progress:
            ctx.ext(xver_ext("ResearchStudy.progressStatus", [
                ("state", entry.get("state")), ("actual", entry.get("actual")), ("period", entry.get("period"))]))


@transform("fhir_study.why_stopped")
def map_why_stopped(ctx: Ctx) -> None:
    if ctx.study.status and ctx.study.status.why_stopped:
        ctx.rs["whyStopped" if ctx.r5 else "reasonStopped"] = {"text": ctx.study.status.why_stopped}


@transform("fhir_study.phase")
def map_phase(ctx: Ctx) -> None:
    phases = ctx.study.design.phases if ctx.study.design else ()
    if phases:
        put(ctx.rs, "phase", ctx.concept("Phase", "|".join(phases), "design.phases", "fhir.study.phase"))


@transform("fhir_study.primary_purpose")
def map_primary_purpose(ctx: Ctx) -> None:
    di = ctx.study.design.design_info if ctx.study.design else None
    if di and di.primary_purpose:
        put(ctx.rs, "primaryPurposeType", ctx.concept("PrimaryPurpose", di.primary_purpose,
                                                      "design.design_info.primary_purpose",
                                                      "fhir.study.primary_purpose"))


@transform("fhir_study.design")
def map_design(ctx: Ctx) -> None:
    from .study_common import iter_path
    out: list[dict[str, Any]] = []
    for attr in spec()["design_attributes"]:
        for path, val in iter_path(ctx.study, attr["path"]):
            if val is None:
                continue
            label = attr["label"]
            enum = attr.get("enum")
            if enum is None:
                out.append({"text": f"{label}: {val}"})
                continue
            raw = str(val).lower() if isinstance(val, bool) else str(val)
            hit = lookup(enum, raw, ctx.version)
            if hit is None:
                ctx.report.unmapped_code(raw, enum, rule="fhir.study.design", source=ctgov_path(path),
                                         record=ctx.key)
                out.append({"text": f"{label}: {raw}"})
                continue
            cc: dict[str, Any] = {}
            if hit.code:
                cc["coding"] = [coding(hit)]
            cc["text"] = f"{label}: {hit.display}"
            out.append(cc)
    put(ctx.rs, "studyDesign" if ctx.r5 else "category", out)


@transform("fhir_study.conditions")
def map_conditions(ctx: Ctx) -> None:
    cond = ctx.study.conditions
    meshes = ctx.study.condition_meshes
    mesh_sys = system("mesh")
    used: set[int] = set()
    out: list[dict[str, Any]] = []
    for text in (cond.conditions if cond else ()):
        cc: dict[str, Any] = {}
        folded = text.casefold()
        for i, m in enumerate(meshes):
            if i not in used and m.id and m.term and m.term.casefold() == folded:
                cc["coding"] = [{"system": mesh_sys, "code": m.id, "display": m.term}]
                used.add(i)
                break
        cc["text"] = text
        out.append(cc)
    # MeSH terms CT.gov derived that equal no registered condition: coded-only conditions (no text),
    # so they are never passed off as registered condition text.
    for i, m in enumerate(meshes):
        if i in used:
            continue
        if not m.id:
            ctx.lossy_under(m, f"condition_meshes[{i}]", "MeSH term without a descriptor id", "fhir.study.condition")
            continue
        coding = {"system": mesh_sys, "code": m.id}
        put(coding, "display", m.term)
        out.append({"coding": [coding]})
    put(ctx.rs, "condition", out)
    put(ctx.rs, "keyword", [{"text": k} for k in (cond.keywords if cond else ())])


@transform("fhir_study.descriptions")
def map_descriptions(ctx: Ctx) -> None:
    d = ctx.study.description
    if d is None:
        return
    # R4 and R5 description are the same element (the detailed description); R4 has no descriptionSummary,
    # so the brief summary travels in its cross-version extension.
    if ctx.r5:
        put(ctx.rs, "descriptionSummary", d.brief_summary)
    else:
        ctx.ext(simple_ext(xver_url("ResearchStudy.descriptionSummary"), "valueMarkdown", d.brief_summary))
    put(ctx.rs, "description", d.detailed_description)


def _telecom(ctx: Ctx, c: Any, path: str, rule: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if c.phone:
        phone: dict[str, Any] = {}
        if c.phone_ext:
            phone["extension"] = [{"url": CONTACTPOINT_EXT, "valueString": c.phone_ext}]
        phone.update({"system": "phone", "value": c.phone})
        out.append(phone)
    elif c.phone_ext:
        ctx.lossy(f"{path}.phone_ext", "phone extension without a phone number", rule)
    if c.email:
        out.append({"system": "email", "value": c.email})
    return out


def _party(name: str | None, role: dict[str, Any] | None, classifiers: list[Any],
           party: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    put(out, "name", name)
    out["role"] = role
    put(out, "classifier", [c for c in classifiers if c])
    put(out, "party", party)
    return out


@transform("fhir_study.parties")
def map_parties(ctx: Ctx) -> None:
    s = ctx.study
    parties: list[dict[str, Any]] = []   # R5 associatedParty; R4: extension (except lead sponsor)
    org = s.identification.organization
    if org and (org.full_name or org.org_class):
        parties.append(_party(org.full_name, ctx.concept("PartyRole", "ORGANIZATION", "identification.organization",
                                                         "fhir.study.organization"),
                              [ctx.concept("AgencyClass", org.org_class, "identification.organization.org_class",
                                           "fhir.study.organization")], None))
    sc = s.sponsor_collaborators
    lead = sc.lead_sponsor if sc else None
    if lead and (lead.name or lead.sponsor_class):
        cls_cc = ctx.concept("AgencyClass", lead.sponsor_class, "sponsor_collaborators.lead_sponsor.sponsor_class",
                             "fhir.study.lead_sponsor")
        if ctx.r5:
            parties.append(_party(lead.name, ctx.concept("PartyRole", "LEAD_SPONSOR", "sponsor_collaborators.lead_sponsor",
                                                         "fhir.study.lead_sponsor"), [cls_cc], None))
        else:
            orgres: dict[str, Any] = {"resourceType": "Organization"}
            put(orgres, "type", [cls_cc] if cls_cc else None)
            put(orgres, "name", lead.name)
            ctx.rs["sponsor"] = ref(ctx.add(orgres, "lead-sponsor"), "Organization", lead.name)
    for i, col in enumerate(sc.collaborators if sc else ()):
        base = f"sponsor_collaborators.collaborators[{i}]"
        parties.append(_party(col.name, ctx.concept("PartyRole", "COLLABORATOR", base, "fhir.study.collaborators"),
                              [ctx.concept("AgencyClass", col.sponsor_class, f"{base}.sponsor_class",
                                           "fhir.study.collaborators")], None))
    rp = sc.responsible_party if sc else None
    if rp and (rp.type or rp.investigator_full_name or rp.investigator_title or rp.investigator_affiliation):
        role = (ctx.concept("ResponsiblePartyType", rp.type, "sponsor_collaborators.responsible_party.type",
                            "fhir.study.responsible_party") if rp.type else {"text": "Responsible Party"})
        classifiers: list[Any] = [{"text": "Responsible Party"}]
        if rp.investigator_title:
            classifiers.append({"text": f"Title: {rp.investigator_title}"})
        parties.append(_party(rp.investigator_full_name, role, classifiers,
                              {"type": "Organization", "display": rp.investigator_affiliation}
                              if rp.investigator_affiliation else None))
    cl = s.contacts_locations
    first_pi: str | None = None
    for i, off in enumerate(cl.overall_officials if cl else ()):
        base = f"contacts_locations.overall_officials[{i}]"
        role = (ctx.concept("OfficialRole", off.role, f"{base}.role", "fhir.study.officials")
                if off.role else {"text": "Overall Official"})
        if off.role == "PRINCIPAL_INVESTIGATOR" and first_pi is None:
            first_pi = off.name
        parties.append(_party(off.name, role, [], {"type": "Organization", "display": off.affiliation}
                              if off.affiliation else None))
    contacts_r4: list[dict[str, Any]] = []
    for i, c in enumerate(cl.central_contacts if cl else ()):
        base = f"contacts_locations.central_contacts[{i}]"
        telecom = _telecom(ctx, c, base, "fhir.study.central_contacts")
        if ctx.r5:
            party = None
            if c.name or telecom:
                prac: dict[str, Any] = {"resourceType": "Practitioner"}
                put(prac, "name", [{"text": c.name}] if c.name else None)
                put(prac, "telecom", telecom)
                party = ref(ctx.add(prac, f"central-contact|{i}|{c.name}"), "Practitioner", c.name)
            parties.append(_party(c.name, ctx.concept("PartyRole", "CENTRAL_CONTACT", base,
                                                      "fhir.study.central_contacts"),
                                  [ctx.concept("ContactRole", c.role, f"{base}.role", "fhir.study.central_contacts")],
                                  party))
        else:
            detail: dict[str, Any] = {}
            put(detail, "name", c.name)
            put(detail, "telecom", telecom)
            if detail:
                contacts_r4.append(detail)
    if ctx.r5:
        put(ctx.rs, "associatedParty", parties)
    else:
        if first_pi:
            ctx.rs["principalInvestigator"] = {"type": "Practitioner", "display": first_pi}
        put(ctx.rs, "contact", contacts_r4)
        for p in parties:
            parts: list[tuple[str, Any]] = [("name", p.get("name")), ("role", p.get("role"))]
            parts += [("classifier", c) for c in p.get("classifier", ())]
            parts.append(("party", p.get("party")))
            ctx.ext(xver_ext("ResearchStudy.associatedParty", parts))


@transform("fhir_study.recruitment")
def map_recruitment(ctx: Ctx) -> None:
    enr = ctx.study.design.enrollment if ctx.study.design else None
    if enr is None:
        return
    numbers: dict[str, Any] = {}
    if enr.count is None:
        if enr.type:
            ctx.lossy("design.enrollment.type", "enrollment type without a count", "fhir.study.enrollment")
        return
    if enr.count < 0:
        ctx.lossy("design.enrollment.count", "negative enrollment count cannot be an unsignedInt",
                  "fhir.study.enrollment")
        return
    if enr.type == "ACTUAL":
        numbers["actualNumber"] = enr.count
    else:
        if enr.type is None:
            ctx.report.add(Kind.INFERRED, "enrollment count without a type written as targetNumber",
                           rule="fhir.study.enrollment", source=ctgov_path("design.enrollment.type"),
                           target="recruitment.targetNumber", record=ctx.key)
        elif enr.type != "ESTIMATED":
            ctx.report.unmapped_code(enr.type, "EnrollmentType", rule="fhir.study.enrollment",
                                     source=ctgov_path("design.enrollment.type"), record=ctx.key)
        numbers["targetNumber"] = enr.count
    if ctx.r5:
        ctx.rs.setdefault("recruitment", {}).update(numbers)
    else:
        ctx.ext(xver_ext("ResearchStudy.recruitment", list(numbers.items())))


def _age(ctx: Ctx, text: str | None, path: str) -> dict[str, Any] | None:
    if not text:
        return None
    m = AGE.match(text)
    unit = lookup("AgeUnit", m.group(2), ctx.version) if m else None
    if m is None or unit is None:
        ctx.lossy(path, "age is not '<number> <unit>' with a known unit", "fhir.study.eligibility")
        return None
    num = m.group(1)
    value: float | int = float(num) if "." in num else int(num)
    return {"value": value, "unit": unit.display, "system": unit.system, "code": unit.code}


@transform("fhir_study.eligibility")
def map_eligibility(ctx: Ctx) -> None:
    el = ctx.study.eligibility
    if el is None:
        return
    rule = "fhir.study.eligibility"
    chars: list[dict[str, Any]] = []
    low = _age(ctx, el.minimum_age, "eligibility.minimum_age")
    high = _age(ctx, el.maximum_age, "eligibility.maximum_age")
    if low or high:
        rng: dict[str, Any] = {}
        put(rng, "low", low)
        put(rng, "high", high)
        chars.append({"code": ctx.concept("EligibilityItem", "AGE", "eligibility", rule), "valueRange": rng,
                      "exclude": False})
    if el.sex:
        chars.append({"code": ctx.concept("EligibilityItem", "SEX", "eligibility", rule),
                      "valueCodeableConcept": ctx.concept("Sex", el.sex, "eligibility.sex", rule), "exclude": False})
    if el.healthy_volunteers is not None:
        chars.append({"code": ctx.concept("EligibilityItem", "HEALTHY_VOLUNTEERS", "eligibility", rule),
                      "valueBoolean": el.healthy_volunteers, "exclude": False})
    for i, age in enumerate(el.std_ages):
        chars.append({"code": ctx.concept("EligibilityItem", "STD_AGE", "eligibility", rule),
                      "valueCodeableConcept": ctx.concept("StandardAge", age, f"eligibility.std_ages[{i}]", rule),
                      "exclude": False})
    exts: list[Any] = []
    if not ctx.r5:
        exts.append(simple_ext(xver_url("Group.description"), "valueMarkdown", el.criteria))
    exts.append(simple_ext(ext_url("eligibility-study-population"), "valueMarkdown", el.study_population))
    if el.sampling_method:
        exts.append(simple_ext(ext_url("eligibility-sampling-method"), "valueCodeableConcept",
                               ctx.concept("SamplingMethod", el.sampling_method, "eligibility.sampling_method", rule)))
    exts = [e for e in exts if e]
    if not (chars or exts or (ctx.r5 and el.criteria)):
        return
    group: dict[str, Any] = {"resourceType": "Group"}
    put(group, "extension", exts)
    group["type"] = "person"
    if ctx.r5:
        group["membership"] = "definitional"
        put(group, "description", el.criteria)
    else:
        group["actual"] = False
    put(group, "characteristic", chars)
    url = ctx.add(group, "eligibility")
    if ctx.r5:
        ctx.rs.setdefault("recruitment", {})["eligibility"] = ref(url, "Group")
    else:
        ctx.rs["enrollment"] = [ref(url, "Group")]


@transform("fhir_study.arms_interventions")
def map_arms_interventions(ctx: Ctx) -> None:
    ai = ctx.study.arms_interventions
    if ai is None:
        return
    rtype = "EvidenceVariable" if ctx.r5 else "PlanDefinition"
    urls: list[str | None] = []
    by_label: dict[str, list[int]] = {}
    focus: list[dict[str, Any]] = []
    protocol: list[dict[str, Any]] = []
    for i, iv in enumerate(ai.interventions):
        base = f"arms_interventions.interventions[{i}]"
        type_cc = ctx.concept("InterventionType", iv.type, f"{base}.type", "fhir.study.interventions")
        res: dict[str, Any] = {"resourceType": rtype}
        put(res, "extension", [{"url": ext_url("intervention-other-name"), "valueString": n} for n in iv.other_names])
        put(res, "title", iv.name)
        res["status"] = "active"
        put(res, "description", iv.description)
        if not ctx.r5:
            put(res, "topic", [type_cc] if type_cc else None)
        url = ctx.add(res, f"intervention|{i}|{iv.type}|{iv.name}")
        urls.append(url)
        if iv.type and iv.name:
            display = lookup("InterventionType", iv.type, ctx.version)
            by_label.setdefault(f"{display.display if display else iv.type}: {iv.name}", []).append(i)
        if iv.name:
            by_label.setdefault(iv.name, []).append(i)
        if ctx.r5:
            item: dict[str, Any] = {}
            put(item, "concept", type_cc)
            item["reference"] = ref(url, rtype, iv.name)
            focus.append(item)
        else:
            protocol.append(ref(url, rtype, iv.name))
            if iv.name:
                focus.append({"text": iv.name})
    linked: list[list[int]] = []
    groups: list[dict[str, Any]] = []
    for a, arm in enumerate(ai.arm_groups):
        base = f"arms_interventions.arm_groups[{a}]"
        exposures: list[dict[str, Any]] = []
        hits: list[int] = []
        for name in arm.intervention_names:
            cands = by_label.get(name) or (by_label.get(name.split(": ", 1)[1]) if ": " in name else None) or []
            # interventions sharing a name (NCT02260193: three 'AKB-6548', one per dose arm): the one that
            # lists this arm, not always the first (arm 2 was linked to the dose-1 intervention)
            idx = next((i for i in cands if arm.label and arm.label in ai.interventions[i].arm_group_labels),
                       cands[0] if cands else None)
            if idx is not None:
                hits.append(idx)
                exposures.append({"reference": urls[idx], "type": rtype, "display": name})
            else:
                exposures.append({"display": name})
        for i, iv in enumerate(ai.interventions):
            if arm.label and arm.label in iv.arm_group_labels and i not in hits:
                hits.append(i)
                exposures.append({"reference": urls[i], "type": rtype})
        linked.append(hits)
        group: dict[str, Any] = {}
        if not ctx.r5:
            put(group, "extension", [{"url": ext_url("research-study-arm-intended-exposure"), "valueReference": e}
                                     for e in exposures])
        group["name"] = arm.label or ""
        if not arm.label:
            ctx.report.add(Kind.MISSING, "arm without a label: FHIR requires a name", rule="fhir.study.arms",
                           source=ctgov_path(f"{base}.label"), record=ctx.key)
        put(group, "type", ctx.concept("ArmGroupType", arm.type, f"{base}.type", "fhir.study.arms"))
        put(group, "description", arm.description)
        if ctx.r5:
            put(group, "intendedExposure", exposures)
        groups.append(group)
    # armGroupLabels come back from the arm links; say so where they cannot
    for i, iv in enumerate(ai.interventions):
        expected: list[str] = []
        for a, arm in enumerate(ai.arm_groups):
            if i in linked[a] and arm.label and arm.label not in expected:
                expected.append(arm.label)
        if tuple(expected) != iv.arm_group_labels:
            for j, _ in enumerate(iv.arm_group_labels):
                ctx.lossy(f"arms_interventions.interventions[{i}].arm_group_labels[{j}]",
                          "armGroupLabels are carried as arm -> intervention links; these do not match the arms",
                          "fhir.study.interventions")
            if not iv.arm_group_labels and expected:
                ctx.lossy(f"arms_interventions.interventions[{i}].arm_group_labels",
                          "arm links imply armGroupLabels the record does not list", "fhir.study.interventions")
    if ctx.r5:
        put(ctx.rs, "focus", focus)
        put(ctx.rs, "comparisonGroup", groups)
    else:
        put(ctx.rs, "focus", focus)
        put(ctx.rs, "protocol", protocol)
        put(ctx.rs, "arm", groups)


@transform("fhir_study.outcomes")
def map_outcomes(ctx: Ctx) -> None:
    oc = ctx.study.outcomes
    if oc is None:
        return
    out: list[dict[str, Any]] = []
    for kind, enum_value, items in (("primary", "PRIMARY", oc.primary), ("secondary", "SECONDARY", oc.secondary),
                                    ("other", "OTHER", oc.other)):
        for i, o in enumerate(items):
            type_cc = ctx.concept("OutcomeType", enum_value, f"outcomes.{kind}[{i}]", "fhir.study.outcomes")
            if ctx.r5:
                om: dict[str, Any] = {}
                put(om, "extension", [simple_ext(ext_url("outcome-time-frame"), "valueString", o.time_frame)]
                    if o.time_frame else None)
                put(om, "name", o.measure)
                om["type"] = [type_cc]
                put(om, "description", o.description)
                out.append(om)
            else:
                # R5 outcomeMeasure has no time frame: the project extension, nested as on R5 outcomeMeasure
                ctx.ext(xver_ext("ResearchStudy.outcomeMeasure",
                                 [("name", o.measure), ("type", type_cc), ("description", o.description)],
                                 [(ext_url("outcome-time-frame"), "valueString", o.time_frame)]))
    if ctx.r5:
        put(ctx.rs, "outcomeMeasure", out)


@transform("fhir_study.sites")
def map_sites(ctx: Ctx) -> None:
    cl = ctx.study.contacts_locations
    if cl is None:
        return
    r5 = ctx.r5
    sites: list[dict[str, Any]] = []
    seen: dict[str, None] = {}   # distinct countries in first-seen order
    status_url = ext_url("site-recruitment-status")
    status_cc: dict[str, Any] = {}
    # hot loop (one Location per site, 100+ in large trials): paths are only formatted when needed
    for i, loc in enumerate(cl.locations):
        res: dict[str, Any] = {"resourceType": "Location"}
        if loc.status:
            if loc.status not in status_cc:
                status_cc[loc.status] = ctx.concept("Status", loc.status, f"contacts_locations.locations[{i}].status",
                                                    "fhir.study.sites", version="R5")
            res["extension"] = [{"url": status_url, "valueCodeableConcept": status_cc[loc.status]}]
        put(res, "name", loc.facility)
        address = {k: v for k, v in (("city", loc.city), ("state", loc.state), ("postalCode", loc.zip),
                                     ("country", loc.country)) if v}
        if address:
            res["address"] = address
        gp = loc.geo_point
        if gp is not None:
            if gp.lat is not None and gp.lon is not None:
                res["position"] = {"longitude": gp.lon, "latitude": gp.lat}
            else:
                ctx.lossy_under(gp, f"contacts_locations.locations[{i}].geo_point",
                                "position needs both latitude and longitude", "fhir.study.sites")
        if r5 and loc.contacts:
            contacts = []
            for j, c in enumerate(loc.contacts):
                detail: dict[str, Any] = {}
                put(detail, "name", [{"text": c.name}] if c.name else None)
                put(detail, "telecom", _telecom(ctx, c, f"contacts_locations.locations[{i}].contacts[{j}]",
                                                "fhir.study.site_contacts"))
                if detail:
                    contacts.append(detail)
            put(res, "contact", contacts)
        if len(res) == 1:
            continue
        sites.append(ref(ctx.add(res, f"site|{i}|{loc.facility}|{loc.city}"), "Location", loc.facility))
        if loc.country and loc.country not in seen:
            seen[loc.country] = None
    put(ctx.rs, "site", sites)
    by_name, _ = countries()
    regions: list[dict[str, Any]] = []
    for name in seen:
        row = by_name.get(name)
        if row is None:
            ctx.report.unmapped_code(name, "iso3166_countries.csv", rule="fhir.study.sites",
                                     source=ctgov_path("contacts_locations.locations[].country"), record=ctx.key)
            regions.append({"text": name})
        else:
            regions.append({"coding": [dict(row)], "text": name})
    put(ctx.rs, "region" if ctx.r5 else "location", regions)


OVERSIGHT_FLAGS = (("has_dmc", "hasDmc"), ("is_fda_regulated_drug", "isFdaRegulatedDrug"),
                   ("is_fda_regulated_device", "isFdaRegulatedDevice"), ("is_unapproved_device", "isUnapprovedDevice"),
                   ("is_ppsd", "isPpsd"), ("is_us_export", "isUsExport"), ("fdaaa801_violation", "fdaaa801Violation"))


@transform("fhir_study.oversight")
def map_oversight(ctx: Ctx) -> None:
    ov = ctx.study.oversight
    if ov is None:
        return
    ctx.ext(complex_ext(ext_url("research-study-oversight"),
                        [(name, "valueBoolean", getattr(ov, attr)) for attr, name in OVERSIGHT_FLAGS]))
    if ctx.r5:
        classifiers = []
        if ov.is_fda_regulated_drug:
            classifiers.append(ctx.concept("Classifier", "FDA_DRUG", "oversight.is_fda_regulated_drug",
                                           "fhir.study.oversight"))
        if ov.is_fda_regulated_device:
            classifiers.append(ctx.concept("Classifier", "FDA_DEVICE", "oversight.is_fda_regulated_device",
                                           "fhir.study.oversight"))
        put(ctx.rs, "classifier", classifiers)


@transform("fhir_study.references")
def map_references(ctx: Ctx) -> None:
    refs = ctx.study.references
    if refs is None:
        return
    out: list[dict[str, Any]] = []
    for i, r in enumerate(refs.references):
        if not (r.pmid or r.citation or r.type):
            continue
        art: dict[str, Any] = {"type": "citation"}
        type_cc = ctx.concept("ReferenceType", r.type, f"references.references[{i}].type", "fhir.study.references")
        pubmed = f"{system('pubmed')}{r.pmid}/" if r.pmid else None
        if ctx.r5:
            put(art, "classifier", [type_cc] if type_cc else None)
            put(art, "citation", r.citation)
            put(art, "document", {"url": pubmed} if pubmed else None)
        else:
            put(art, "label", type_cc["text"] if type_cc else None)
            put(art, "citation", r.citation)
            put(art, "url", pubmed)
        out.append(art)
    for link in refs.see_also_links:
        if not (link.url or link.label):
            continue
        art = {"type": "documentation"}
        put(art, "display", link.label)
        if ctx.r5:
            put(art, "document", {"url": link.url} if link.url else None)
        else:
            put(art, "url", link.url)
        out.append(art)
    put(ctx.rs, "relatedArtifact", out)


@transform("fhir_study.ipd_sharing")
def map_ipd_sharing(ctx: Ctx) -> None:
    ipd = ctx.study.ipd_sharing
    if ipd is None:
        return
    parts: list[tuple[str, str, Any]] = [("ipdSharing", "valueString", ipd.ipd_sharing),
                                         ("description", "valueString", ipd.description)]
    parts += [("infoType", "valueString", t) for t in ipd.info_types]
    parts += [("timeFrame", "valueString", ipd.time_frame), ("accessCriteria", "valueString", ipd.access_criteria),
              ("url", "valueString", ipd.url)]
    ctx.ext(complex_ext(ext_url("research-study-ipd-sharing"), parts))


# ================================================================== driver
def _rules(version: str) -> list[dict[str, Any]]:
    return [r for r in spec()["rules"] if version in r["target"]]


def _gaps(version: str) -> list[dict[str, Any]]:
    return [g for g in spec()["gaps"] if version in g["versions"]]


class _Plan(NamedTuple):
    transforms: tuple[Callable[[Ctx], None], ...]   # each once, in the order of its first rule
    gap_paths: tuple[str, ...]
    gap_issues: tuple[tuple[str, str], ...]          # (lossy message, gap id), parallel to gap_paths


@cache
def _plan(version: str) -> _Plan:
    """What the spec says to do for one FHIR version, worked out once (the spec is cached and never mutated)."""
    names = dict.fromkeys(rule["transform"] for rule in _rules(version))
    gaps = _gaps(version)
    return _Plan(tuple(get_transform(name) for name in names), tuple(g["path"] for g in gaps),
                 tuple((f"FHIR {version} cannot carry this value: {g['reason']}", g["id"]) for g in gaps))


def write_fhir_bundle(study: Study, *, version: str = "R5", report: ConversionReport) -> dict[str, Any]:
    """Study -> FHIR Bundle (collection) with the ResearchStudy first, then every resource it references."""
    version = version.upper()
    if version not in ("R4", "R5"):
        raise ValueError(f"FHIR version must be R4 or R5, not {version!r}")
    key = study.key
    ctx = Ctx(study=study, version=version, report=report, key=key)
    ctx.rs = {"resourceType": "ResearchStudy", "id": rid("ResearchStudy", key)}
    plan = _plan(version)
    for run in plan.transforms:
        run(ctx)
    for (message, gap_id), leaves in zip(plan.gap_issues, leaves_under_each(study, plan.gap_paths), strict=True):
        for path, _ in leaves:
            ctx.lossy(path, message, gap_id)
    rs: dict[str, Any] = {"resourceType": "ResearchStudy", "id": ctx.rs["id"]}
    if ctx.rs_ext:
        rs["extension"] = ctx.rs_ext
    rs.update((k, v) for k, v in ctx.rs.items() if k not in rs)
    entries = [{"fullUrl": full_url(rs["id"]), "resource": rs}]
    entries += [{"fullUrl": full_url(r["id"]), "resource": r} for r in ctx.resources]
    return {"resourceType": "Bundle", "id": rid("Bundle", key, version), "type": "collection", "entry": entries}


# ================================================================== the "what maps to what" table
def mapping_table() -> str:
    """A markdown table of the spec's rules: CT.gov source, R5 target, R4 target."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    lines = ["| Rule | CT.gov source | FHIR R5 | FHIR R4 |", "|---|---|---|---|"]
    for r in spec()["rules"]:
        src = sorted({ctgov_path(p).replace("protocolSection.", "") for p in r["source"]})
        r5 = r["target"].get("R5", "–")
        r4 = r["target"].get("R4", "–")
        r4 = r5 if r4 == "same" else r4
        lines.append(f"| {r['id']} | {cell(', '.join(src))} | {cell(r5)} | {cell(r4)} |")
    lines.append("")
    lines.append("Declared gaps (reported `lossy` when present): " + ", ".join(
        sorted({ctgov_path(g['path']).replace('protocolSection.', '') + ('' if g['versions'] == ['R4', 'R5'] else
                f" ({'/'.join(g['versions'])})") for g in spec()["gaps"]})))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--table"]:
        print(mapping_table())
        return 0
    print("usage: python -m trialbridge.fhir.study_writer --table", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
