"""FHIR ResearchStudy (R4 or R5; bare, or in a collection / searchset / transaction Bundle) -> Study.

The inverse of :mod:`trialbridge.fhir.study_writer`: the same spec and code tables read backwards, so
CT.gov -> FHIR -> CT.gov gives back every protocolSection value FHIR carries. Foreign ResearchStudy
resources (HL7 examples, mCODE, FEvIR) are read as far as their elements mean the same thing; every
element or extension no rule reads is reported ``unmapped-source`` and an unknown code ``unmapped-code``.
The FHIR version is detected from the resource's shape unless given.
"""

from __future__ import annotations

import re
from typing import Any

from .. import model as m
from ..errors import InputError
from ..report import ConversionReport, Kind
from .concepts import concept_text
from .study_common import countries, ext_url, retired_same_parts, retired_url, reverse, spec, system, xver_url

CONTACTPOINT_EXT = "http://hl7.org/fhir/StructureDefinition/contactpoint-extension"
DATA_ABSENT_EXT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
R5_ONLY = frozenset({"progressStatus", "comparisonGroup", "associatedParty", "label", "recruitment",
                     "outcomeMeasure", "descriptionSummary", "classifier", "region", "whyStopped", "studyDesign",
                     "result", "name", "version", "url", "date"})
R4_ONLY = frozenset({"arm", "sponsor", "enrollment", "principalInvestigator", "category", "location",
                     "reasonStopped", "contact"})
R4_STATUS = frozenset({"active", "administratively-completed", "approved", "closed-to-accrual",
                       "closed-to-accrual-and-intervention", "completed", "disapproved", "in-review",
                       "temporarily-closed-to-accrual", "temporarily-closed-to-accrual-and-intervention",
                       "withdrawn"})
NCT_SYSTEMS = frozenset({"clinicaltrials.gov", "www.clinicaltrials.gov"})
PUBMED = re.compile(r"^https?://(?:www\.)?(?:pubmed\.ncbi\.nlm\.nih\.gov|ncbi\.nlm\.nih\.gov/pubmed)/(\d+)/?$")
IGNORED_KEYS = frozenset({"resourceType", "id", "meta", "text", "contained", "implicitRules", "language"})


def detect_version(rs: dict[str, Any]) -> str:
    keys = set(rs)
    if keys & R5_ONLY and not keys & R4_ONLY:
        return "R5"
    if keys & R4_ONLY and not keys & R5_ONLY:
        return "R4"
    if rs.get("status") in R4_STATUS:
        return "R4"
    return "R5"


def _values(ext: dict[str, Any]) -> dict[str, list[Any]]:
    """Sub-extension url -> its value[x] values, for a complex extension."""
    out: dict[str, list[Any]] = {}
    for sub in ext.get("extension") or ():
        if isinstance(sub, dict):
            val = next((v for k, v in sub.items() if k.startswith("value")), None)
            out.setdefault(sub.get("url", ""), []).append(val)
    return out


def _first(d: dict[str, list[Any]], key: str) -> Any:
    vals = d.get(key)
    return vals[0] if vals else None


_text = concept_text


def _nz(cls: type, **kw: Any) -> Any:
    """A model instance only when some field is set (empty objects would show up as values)."""
    kw = {k: v for k, v in kw.items() if v not in (None, (), "")}
    return cls(**kw) if kw else None


class _Reader:
    def __init__(self, rs: dict[str, Any], index: dict[str, dict[str, Any]], version: str,
                 report: ConversionReport, file: str) -> None:
        self.rs = rs
        self.index = index
        self.version = version
        self.report = report
        self.file = file
        self.used: set[str] = set()
        self.exts: dict[str, list[dict[str, Any]]] = {}
        for e in rs.get("extension") or ():
            if isinstance(e, dict):
                self.exts.setdefault(e.get("url", ""), []).append(e)
        self.used_ext: set[str] = set()
        self.key = rs.get("id") or "ResearchStudy"

    # ---------------------------------------------------------------- helpers
    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.rs.get(key)

    def ext(self, name: str) -> list[dict[str, Any]]:
        url = ext_url(name)
        self.used_ext.add(url)
        return self.exts.get(url, [])

    def xext(self, element: str) -> list[dict[str, Any]]:
        """The official cross-version extension for an R5 element, then the retired project extensions with
        the same parts (bundles written by earlier releases; ``retired_extensions`` in the spec)."""
        out: list[dict[str, Any]] = []
        for url in (xver_url(element), *retired_same_parts().get(element, ())):
            self.used_ext.add(url)
            out.extend(self.exts.get(url, []))
        return out

    def follows_r5(self) -> bool:
        """An R4 resource that carries any cross-version ResearchStudy extension uses R5 meanings."""
        prefix = str(spec()["xver_base"]) + "ResearchStudy."
        return any(url.startswith(prefix) for url in self.exts)

    def resolve(self, reference: Any) -> dict[str, Any] | None:
        if not isinstance(reference, dict):
            return None
        r = reference.get("reference")
        if not isinstance(r, str):
            return None
        if r.startswith("#"):
            for c in self.rs.get("contained") or ():
                if isinstance(c, dict) and c.get("id") == r[1:]:
                    return c
            return None
        if r in self.index:
            return self.index[r]
        tail = "/".join(r.rstrip("/").split("/")[-2:])
        return self.index.get(tail)

    def code(self, enum: str, cc: Any, source: str, version: str | None = None) -> str | None:
        if cc is None:
            return None
        version = version or self.version
        val = reverse(enum, cc, version)
        if val is None:   # foreign data using the other version's code system (R5 examples use THO phase codes)
            val = reverse(enum, cc, "R4" if version == "R5" else "R5")
        if val is None:
            self.report.add(Kind.UNMAPPED_CODE, f"no {enum} value for {_text(cc) or cc!r}", rule="fhir.study.read",
                            source=source, record=self.key, file=self.file, value=cc)
        return val

    def unmapped(self, source: str) -> None:
        self.report.unmapped_source(source, rule="fhir.study.read", record=self.key, file=self.file)

    # ---------------------------------------------------------------- parts
    def parties(self) -> list[dict[str, Any]]:
        if self.version == "R5":
            return [p for p in self.get("associatedParty") or () if isinstance(p, dict)]
        out = []
        for e in self.xext("ResearchStudy.associatedParty"):
            v = _values(e)
            out.append({"name": _first(v, "name"), "role": _first(v, "role"),
                        "classifier": v.get("classifier", []), "party": _first(v, "party")})
        return out

    def progress(self) -> list[dict[str, Any]]:
        if self.version == "R5":
            return [p for p in self.get("progressStatus") or () if isinstance(p, dict)]
        out = []
        for e in self.xext("ResearchStudy.progressStatus"):
            v = _values(e)
            out.append({"state": _first(v, "state"), "actual": _first(v, "actual"), "period": _first(v, "period")})
        return out

    def telecom(self, items: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in items or ():
            if not isinstance(t, dict):
                continue
            if t.get("system") == "phone" and "phone" not in out:
                out["phone"] = t.get("value")
                for e in t.get("extension") or ():
                    if isinstance(e, dict) and e.get("url") == CONTACTPOINT_EXT:
                        out["phone_ext"] = e.get("valueString")
            elif t.get("system") == "email" and "email" not in out:
                out["email"] = t.get("value")
        return out

    # ---------------------------------------------------------------- the study
    def read(self) -> m.Study:
        ident, org_from_parties, sc, cl_parts = self.read_identification_and_parties()
        study = m.Study(
            identification=ident,
            status=self.read_status(),
            sponsor_collaborators=sc,
            oversight=self.read_oversight(),
            description=self.read_description(),
            conditions=self.read_conditions()[0],
            design=self.read_design(),
            arms_interventions=self.read_arms(),
            outcomes=self.read_outcomes(),
            eligibility=self.read_eligibility(),
            contacts_locations=self.read_locations(cl_parts),
            references=self.read_references(),
            ipd_sharing=self.read_ipd(),
            condition_meshes=self.meshes,
        )
        self.report_unused()
        return study

    def read_identification_and_parties(self) -> tuple[m.Identification, Any, Any, dict[str, Any]]:
        nct: str | None = None
        aliases: list[str] = []
        org_id: m.OrgStudyId | None = None
        secondary: list[m.SecondaryId] = []
        for i, idf in enumerate(self.get("identifier") or ()):
            if not isinstance(idf, dict) or not idf.get("value"):
                continue
            sysname = str(idf.get("system") or "")
            host = re.sub(r"^https?://", "", sysname).rstrip("/")
            use = idf.get("use")
            src = f"ResearchStudy.identifier[{i}]"
            if host in NCT_SYSTEMS:
                if use == "old":
                    aliases.append(idf["value"])
                elif nct is None:
                    nct = idf["value"]
                else:
                    aliases.append(idf["value"])
            elif use == "usual" or (org_id is None and not sysname and use is None):
                org_id = m.OrgStudyId(id=idf["value"], type=self.code("OrgStudyIdType", idf.get("type"), src)
                                      if idf.get("type") else None)
            else:
                stype = reverse("SecondaryIdType", idf.get("type"), self.version) if idf.get("type") else None
                if idf.get("type") and stype is None:
                    self.unmapped(f"{src}.type")
                domain = (idf.get("assigner") or {}).get("display") or (sysname or None)
                secondary.append(m.SecondaryId(id=idf["value"], type=stype, domain=domain))
        official = acronym = None
        labels: list[tuple[Any, Any]] = []
        if self.version == "R5":
            labels = [(lab.get("type"), lab.get("value")) for lab in self.get("label") or () if isinstance(lab, dict)]
        else:
            for e in self.xext("ResearchStudy.label"):
                v = _values(e)
                labels.append((_first(v, "type"), _first(v, "value")))
        for typ, value in labels:
            kind = reverse("TitleType", typ, self.version)
            if kind == "OFFICIAL" and official is None:
                official = value
            elif kind == "ACRONYM" and acronym is None:
                acronym = value
            else:
                self.unmapped("ResearchStudy.label")
        # parties
        organization = None
        lead = None
        collaborators: list[m.Sponsor] = []
        responsible = None
        officials: list[m.Official] = []
        central: list[m.Contact] = []
        for i, p in enumerate(self.parties()):
            src = f"ResearchStudy.associatedParty[{i}]"
            texts = [_text(c) or "" for c in p.get("classifier") or ()]
            party_ref = p.get("party")
            party: dict[str, Any] = party_ref if isinstance(party_ref, dict) else {}
            if "Responsible Party" in texts:
                title = next((t[len("Title: "):] for t in texts if t.startswith("Title: ")), None)
                role = p.get("role")
                rtype = None if _text(role) == "Responsible Party" else self.code("ResponsiblePartyType", role, src)
                responsible = _nz(m.ResponsibleParty, type=rtype, investigator_full_name=p.get("name"),
                                  investigator_title=title, investigator_affiliation=party.get("display"))
                continue
            prole = reverse("PartyRole", p.get("role"), self.version)
            cls = None
            if prole in ("LEAD_SPONSOR", "COLLABORATOR", "ORGANIZATION"):
                cls_cc = (p.get("classifier") or [None])[0]
                cls = self.code("AgencyClass", cls_cc, f"{src}.classifier") if cls_cc else None
            if prole == "LEAD_SPONSOR":
                lead = _nz(m.Sponsor, name=p.get("name"), sponsor_class=cls)
            elif prole == "COLLABORATOR":
                collaborators.append(m.Sponsor(name=p.get("name"), sponsor_class=cls))
            elif prole == "ORGANIZATION":
                organization = _nz(m.Organization, full_name=p.get("name"), org_class=cls)
            elif prole == "CENTRAL_CONTACT":
                cc = (p.get("classifier") or [None])[0]
                prac = self.resolve(party) or {}
                tel = self.telecom(prac.get("telecom"))
                central.append(m.Contact(name=p.get("name"), role=self.code("ContactRole", cc, f"{src}.classifier")
                                         if cc else None, **tel))
            else:
                role = p.get("role")
                orole = None if _text(role) == "Overall Official" else reverse("OfficialRole", role, self.version)
                if orole is None and _text(role) != "Overall Official":
                    self.report.add(Kind.UNMAPPED_CODE, f"associatedParty role {_text(role)!r} has no CT.gov "
                                    "counterpart", rule="fhir.study.read", source=f"{src}.role", record=self.key,
                                    file=self.file)
                    continue
                officials.append(m.Official(name=p.get("name"), affiliation=party.get("display"), role=orole))
        if self.version == "R4":
            sponsor = self.resolve(self.get("sponsor"))
            if sponsor is not None:
                cls_cc = (sponsor.get("type") or [None])[0]
                lead = _nz(m.Sponsor, name=sponsor.get("name"), sponsor_class=self.code(
                    "AgencyClass", cls_cc, "Organization.type") if cls_cc else None)
            elif isinstance(self.rs.get("sponsor"), dict):
                lead = _nz(m.Sponsor, name=self.rs["sponsor"].get("display"))
            for c in self.get("contact") or ():
                if isinstance(c, dict):
                    central.append(m.Contact(name=c.get("name"), **self.telecom(c.get("telecom"))))
            pi = self.get("principalInvestigator")
            if isinstance(pi, dict) and not officials:
                target = self.resolve(pi) or {}
                name = pi.get("display") or next((n.get("text") for n in target.get("name") or ()
                                                  if isinstance(n, dict)), None)
                if name:
                    officials.append(m.Official(name=name, role="PRINCIPAL_INVESTIGATOR"))
        ident = m.Identification(nct_id=nct, nct_id_aliases=tuple(aliases), org_study_id=org_id,
                                 secondary_ids=tuple(secondary), brief_title=self.get("title"),
                                 official_title=official, acronym=acronym, organization=organization)
        sc = _nz(m.SponsorCollaborators, responsible_party=responsible, lead_sponsor=lead,
                 collaborators=tuple(collaborators))
        return ident, organization, sc, {"officials": tuple(officials), "central": tuple(central)}

    def ctgov_date(self, value: Any, source: str) -> Any:
        """CT.gov dates are partial dates (YYYY, YYYY-MM, YYYY-MM-DD: API v2 PartialDate / NormalizedDate); a FHIR
        dateTime with a time is cut to its date as written (the local date at its offset) and the cut reported."""
        if isinstance(value, str) and "T" in value:
            self.report.add(Kind.LOSSY, "CT.gov dates hold no time: the time and UTC offset are dropped, the date kept "
                            "as written", rule="fhir.study.read.date", source=source, target="statusModule date",
                            record=self.key, file=self.file)
            return value.split("T", 1)[0]
        return value

    def read_status(self) -> m.Status | None:
        overall = None
        absent = False
        dates: dict[str, m.DateStruct] = {}
        for i, p in enumerate(self.progress()):
            state = p.get("state")
            if isinstance(state, dict) and any(isinstance(e, dict) and e.get("url") == DATA_ABSENT_EXT
                                               for e in state.get("extension") or ()):
                absent = True
                continue
            actual = p.get("actual")
            dtype = None if actual is None else ("ACTUAL" if actual else "ESTIMATED")
            period_val = p.get("period")
            period: dict[str, Any] = period_val if isinstance(period_val, dict) else {}
            milestone = reverse("Milestone", state, self.version)
            src = f"ResearchStudy.progressStatus[{i}].period"
            if milestone == "STUDY":
                if period.get("start"):
                    dates["start"] = m.DateStruct(date=self.ctgov_date(period["start"], f"{src}.start"), type=dtype)
                if period.get("end"):
                    dates["completion"] = m.DateStruct(date=self.ctgov_date(period["end"], f"{src}.end"), type=dtype)
            elif milestone == "PRIMARY_COMPLETION":
                d = period.get("end") or period.get("start")
                if d:
                    dates["primary"] = m.DateStruct(date=self.ctgov_date(d, src), type=dtype)
            elif overall is None:
                overall = self.code("Status", state, f"ResearchStudy.progressStatus[{i}].state", "R5")
        status_code = self.get("status")
        if overall is None and not absent and self.version == "R4" and status_code:
            overall = reverse("Status", {"coding": [{"system": "http://hl7.org/fhir/research-study-status",
                                                     "code": status_code}]}, "R4")
            if overall is not None:
                self.report.add(Kind.INFERRED, f"R4 status {status_code} read as {overall} (coarser than CT.gov)",
                                rule="fhir.study.read", source="ResearchStudy.status", record=self.key, file=self.file)
        period = self.get("period") or {}
        if "start" not in dates and period.get("start"):
            dates["start"] = m.DateStruct(date=self.ctgov_date(period["start"], "ResearchStudy.period.start"))
        if "completion" not in dates and period.get("end"):
            dates["completion"] = m.DateStruct(date=self.ctgov_date(period["end"], "ResearchStudy.period.end"))
        why = _text(self.get("whyStopped" if self.version == "R5" else "reasonStopped"))
        return _nz(m.Status, overall_status=overall, why_stopped=why, start_date=dates.get("start"),
                   primary_completion_date=dates.get("primary"), completion_date=dates.get("completion"))

    def read_oversight(self) -> m.Oversight | None:
        kw: dict[str, Any] = {}
        from .study_writer import OVERSIGHT_FLAGS
        for e in self.ext("research-study-oversight"):
            v = _values(e)
            for attr, name in OVERSIGHT_FLAGS:
                if isinstance(_first(v, name), bool):
                    kw[attr] = _first(v, name)
        if self.version == "R5":
            for i, c in enumerate(self.get("classifier") or ()):
                code = reverse("Classifier", c, "R5")
                if code == "FDA_DRUG":
                    kw.setdefault("is_fda_regulated_drug", True)
                elif code == "FDA_DEVICE":
                    kw.setdefault("is_fda_regulated_device", True)
                else:
                    self.unmapped(f"ResearchStudy.classifier[{i}]")
        return _nz(m.Oversight, **kw)

    def read_description(self) -> m.Description | None:
        if self.version == "R5":
            return _nz(m.Description, brief_summary=self.get("descriptionSummary"),
                       detailed_description=self.get("description"))
        summary_url = xver_url("ResearchStudy.descriptionSummary")
        legacy_url = retired_url("research-study-description-detail")
        self.used_ext.update((summary_url, legacy_url))
        summary = [e.get("valueMarkdown") for e in self.exts.get(summary_url, [])]
        legacy = [e.get("valueMarkdown") for e in self.exts.get(legacy_url, [])]
        if self.follows_r5():   # R4 description = R5 description (detailed); brief summary in the extension
            return _nz(m.Description, brief_summary=summary[0] if summary else None,
                       detailed_description=self.get("description"))
        # earlier trialbridge releases and mCODE practice: R4 description holds the brief summary
        return _nz(m.Description, brief_summary=self.get("description"), detailed_description=legacy[0] if legacy else None)

    def read_conditions(self) -> tuple[m.Conditions | None, tuple[m.MeshTerm, ...]]:
        conds: list[str] = []
        meshes: list[m.MeshTerm] = []
        mesh_sys = system("mesh").rstrip("/")
        for cc in self.get("condition") or ():
            if not isinstance(cc, dict):
                continue
            for c in cc.get("coding") or ():
                if isinstance(c, dict) and str(c.get("system", "")).rstrip("/") in (mesh_sys, "http://id.nlm.nih.gov/mesh"):
                    meshes.append(m.MeshTerm(id=c.get("code"), term=c.get("display")))
            if cc.get("text"):
                conds.append(cc["text"])
            elif not any(isinstance(c, dict) and str(c.get("system", "")).rstrip("/") in
                         (mesh_sys, "http://id.nlm.nih.gov/mesh") for c in cc.get("coding") or ()):
                t = _text(cc)
                if t:
                    conds.append(t)
        keywords = [t for t in (_text(k) for k in self.get("keyword") or ()) if t]
        self.meshes = tuple(meshes)
        return _nz(m.Conditions, conditions=tuple(conds), keywords=tuple(keywords)), self.meshes

    def read_design(self) -> m.Design | None:
        values: dict[str, list[Any]] = {}
        attrs = {label: a for a in spec()["design_attributes"] for label in [a["label"], *a.get("aliases", ())]}
        key = "studyDesign" if self.version == "R5" else "category"
        purpose_in_design: list[tuple[int, str]] = []
        for i, cc in enumerate(self.get(key) or ()):
            text = _text(cc) or ""
            label, sep, val = text.partition(": ")
            if sep and label == "Primary Purpose":   # mCODE R4 bundles: category "Primary Purpose: Treatment"
                purpose_in_design.append((i, val))
                continue
            if not sep and reverse("StudyType", {"text": text}, self.version):   # mCODE: category "Observational"
                label, val = "Study Type", text
            # labels holding ": " themselves ("Expanded Access Type: Individual Patients: Yes"): the longest
            # label the text starts with (the first ": " split gave 'Expanded Access Type', read as unmapped)
            long_label = max((lb for lb in attrs if ": " in lb and text.startswith(lb + ": ")), key=len, default=None)
            if long_label:
                label, val = long_label, text[len(long_label) + 2:]
            attr = attrs.get(label) if sep or label == "Study Type" else None
            if attr is None:
                self.unmapped(f"ResearchStudy.{key}[{i}]")
                continue
            enum = attr.get("enum")
            if enum is None:
                values.setdefault(attr["path"], []).append(val)
                continue
            raw = reverse(enum, {"text": val}, self.version)
            if raw is None:
                self.report.add(Kind.UNMAPPED_CODE, f"{label}: {val!r} is not a CT.gov value",
                                rule="fhir.study.read", source=f"ResearchStudy.{key}[{i}]", record=self.key,
                                file=self.file)
                continue
            values.setdefault(attr["path"], []).append({"true": True, "false": False}.get(raw, raw)
                                                         if enum == "Boolean" else raw)

        def one(path: str) -> Any:
            v = values.get(path)
            return v[0] if v else None
        phases: tuple[str, ...] = ()
        phase = self.get("phase")
        if phase:
            phase_val = reverse("Phase", phase, self.version) or reverse("Phase", phase, "R4" if self.version == "R5" else "R5")
            if phase_val is None:
                text = _text(phase) or ""
                if text and all(p in {"NA", "EARLY_PHASE1", "PHASE1", "PHASE2", "PHASE3", "PHASE4"}
                                for p in text.split("|")):
                    phase_val = text
                else:
                    self.code("Phase", phase, "ResearchStudy.phase")
            phases = tuple(phase_val.split("|")) if phase_val else ()
        pp = self.get("primaryPurposeType")
        purpose = self.code("PrimaryPurpose", pp, "ResearchStudy.primaryPurposeType") if pp else None
        for i, val in purpose_in_design:
            raw = reverse("PrimaryPurpose", {"text": val}, self.version)
            if raw is None:
                self.report.add(Kind.UNMAPPED_CODE, f"Primary Purpose: {val!r} is not a CT.gov value",
                                rule="fhir.study.read", source=f"ResearchStudy.{key}[{i}]", record=self.key,
                                file=self.file)
            elif purpose is None:
                purpose = raw
            elif raw != purpose:
                self.report.add(Kind.LOSSY, f"Primary Purpose {val!r} disagrees with primaryPurposeType; "
                                "primaryPurposeType kept", rule="fhir.study.read",
                                source=f"ResearchStudy.{key}[{i}]", record=self.key, file=self.file)
        masking = _nz(m.Masking, masking=one("design.design_info.masking.masking"),
                      masking_description=one("design.design_info.masking.masking_description"),
                      who_masked=tuple(values.get("design.design_info.masking.who_masked[]", ())))
        design_info = _nz(m.DesignInfo, allocation=one("design.design_info.allocation"),
                          intervention_model=one("design.design_info.intervention_model"),
                          intervention_model_description=one("design.design_info.intervention_model_description"),
                          primary_purpose=purpose, observational_model=one("design.design_info.observational_model"),
                          time_perspective=one("design.design_info.time_perspective"), masking=masking)
        bio = _nz(m.BioSpec, retention=one("design.bio_spec.retention"), description=one("design.bio_spec.description"))
        eat = _nz(m.ExpandedAccessTypes, individual=one("design.expanded_access_types.individual"),
                  intermediate=one("design.expanded_access_types.intermediate"),
                  treatment=one("design.expanded_access_types.treatment"))
        numbers: dict[str, Any] = {}
        if self.version == "R5":
            rec = self.get("recruitment") or {}
            numbers = {k: rec.get(k) for k in ("targetNumber", "actualNumber")}
        else:
            for e in self.xext("ResearchStudy.recruitment"):
                v = _values(e)
                numbers = {k: _first(v, k) for k in ("targetNumber", "actualNumber")}
        enrollment = None
        if numbers.get("actualNumber") is not None:
            enrollment = m.Enrollment(count=numbers["actualNumber"], type="ACTUAL")
            if numbers.get("targetNumber") is not None and numbers["targetNumber"] != numbers["actualNumber"]:
                # CT.gov holds one enrollment: the actual count replaces the anticipated one
                self.report.add(Kind.LOSSY, "CT.gov enrollmentInfo holds one count: the actual number is kept, the "
                                "target number dropped", rule="fhir.study.read.enrollment",
                                source="ResearchStudy.recruitment.targetNumber",
                                target="designModule.enrollmentInfo", record=self.key, file=self.file)
        elif numbers.get("targetNumber") is not None:
            enrollment = m.Enrollment(count=numbers["targetNumber"], type="ESTIMATED")
        return _nz(m.Design, study_type=one("design.study_type"), expanded_access_types=eat,
                   patient_registry=one("design.patient_registry"), target_duration=one("design.target_duration"),
                   phases=phases, design_info=design_info, bio_spec=bio, enrollment=enrollment)

    def read_eligibility(self) -> m.Eligibility | None:
        if self.version == "R5":
            rec = self.get("recruitment") or {}
            target = rec.get("eligibility")
        else:
            target = (self.get("enrollment") or [None])[0]
        if target is None:
            return None
        group = self.resolve(target)
        if group is None or group.get("resourceType") != "Group":
            self.unmapped("ResearchStudy.recruitment.eligibility" if self.version == "R5"
                          else "ResearchStudy.enrollment")
            return None
        gexts: dict[str, list[dict[str, Any]]] = {}
        for e in group.get("extension") or ():
            if isinstance(e, dict):
                gexts.setdefault(e.get("url", ""), []).append(e)
        criteria = group.get("description") if self.version == "R5" else next(
            (e.get("valueMarkdown") for url in (xver_url("Group.description"), *retired_same_parts().get("Group.description", ()))
             for e in gexts.get(url, [])), None)
        kw: dict[str, Any] = {"criteria": criteria, "std_ages": []}
        for i, ch in enumerate(group.get("characteristic") or ()):
            if not isinstance(ch, dict):
                continue
            item = reverse("EligibilityItem", ch.get("code"), self.version)
            if item == "AGE" and isinstance(ch.get("valueRange"), dict):
                kw["minimum_age"] = self.age(ch["valueRange"].get("low"))
                kw["maximum_age"] = self.age(ch["valueRange"].get("high"))
            elif item == "SEX":
                kw["sex"] = self.code("Sex", ch.get("valueCodeableConcept"), f"Group.characteristic[{i}]")
            elif item == "HEALTHY_VOLUNTEERS":
                kw["healthy_volunteers"] = ch.get("valueBoolean")
            elif item == "STD_AGE":
                kw["std_ages"].append(self.code("StandardAge", ch.get("valueCodeableConcept"),
                                                f"Group.characteristic[{i}]"))
            else:
                self.unmapped(f"Group.characteristic[{i}]")
        kw["std_ages"] = tuple(a for a in kw["std_ages"] if a)
        pop = gexts.get(ext_url("eligibility-study-population"))
        kw["study_population"] = pop[0].get("valueMarkdown") if pop else None
        smp = gexts.get(ext_url("eligibility-sampling-method"))
        kw["sampling_method"] = self.code("SamplingMethod", smp[0].get("valueCodeableConcept"),
                                          "Group.extension") if smp else None
        return _nz(m.Eligibility, **kw)

    def age(self, q: Any) -> str | None:
        if not isinstance(q, dict) or q.get("value") is None:
            return None
        value = q["value"]
        num = str(int(value)) if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                                             and not isinstance(value, bool)) else str(value)
        unit = q.get("unit")
        if reverse("AgeUnit", {"text": unit}, self.version) is None:
            unit = reverse("AgeUnit", {"coding": [{"system": q.get("system"), "code": q.get("code")}]}, self.version)
            if unit is None:
                self.unmapped("Group.characteristic.valueRange (age unit)")
                return None
            unit = unit if unit.endswith("s") or num == "1" else unit + "s"
        return f"{num} {unit}"

    def read_arms(self) -> m.ArmsInterventions | None:
        r5 = self.version == "R5"
        order: list[str] = []
        res_by_url: dict[str, dict[str, Any]] = {}
        types: dict[str, Any] = {}
        refs = []
        if r5:
            for f in self.get("focus") or ():
                if isinstance(f, dict) and isinstance(f.get("reference"), dict):
                    refs.append((f["reference"], f.get("concept")))
                elif isinstance(f, dict):
                    self.unmapped("ResearchStudy.focus")
        else:
            refs = [(r, None) for r in self.get("protocol") or ()]
            self.get("focus")   # derived from the interventions: nothing more to read
        for r, concept_ in refs:
            target = self.resolve(r)
            if target is None:
                self.unmapped("ResearchStudy.focus" if r5 else "ResearchStudy.protocol")
                continue
            url = r["reference"]
            if url not in res_by_url:
                order.append(url)
                res_by_url[url] = target
                types[url] = concept_ if r5 else (target.get("topic") or [None])[0]
        arms_raw = []
        if r5:
            for g in self.get("comparisonGroup") or ():
                if isinstance(g, dict):
                    arms_raw.append((g, g.get("intendedExposure") or []))
        else:
            url_ie = ext_url("research-study-arm-intended-exposure")
            for g in self.get("arm") or ():
                if isinstance(g, dict):
                    arms_raw.append((g, [e.get("valueReference") for e in g.get("extension") or ()
                                         if isinstance(e, dict) and e.get("url") == url_ie]))
        # interventions only reached through an arm (foreign data): after the listed ones
        for _, exposures in arms_raw:
            for e in exposures:
                if isinstance(e, dict) and e.get("reference") and e["reference"] not in res_by_url:
                    target = self.resolve(e)
                    if target is not None:
                        order.append(e["reference"])
                        res_by_url[e["reference"]] = target
                        types[e["reference"]] = None
        labels: dict[str, list[str]] = {u: [] for u in order}
        arms = []
        for a, (g, exposures) in enumerate(arms_raw):
            label = g.get("name") or None
            names = []
            for e in exposures:
                if not isinstance(e, dict):
                    continue
                if e.get("display"):
                    names.append(e["display"])
                u = e.get("reference")
                if u in labels and label and label not in labels[u]:
                    labels[u].append(label)
            arms.append(m.ArmGroup(label=label, type=self.code("ArmGroupType", g.get("type"), f"arm[{a}].type")
                                   if g.get("type") else None, description=g.get("description"),
                                   intervention_names=tuple(names)))
        url_on = ext_url("intervention-other-name")
        interventions = []
        for n, u in enumerate(order):
            res = res_by_url[u]
            other = tuple(e["valueString"] for e in res.get("extension") or ()
                          if isinstance(e, dict) and e.get("url") == url_on and isinstance(e.get("valueString"), str))
            t = types.get(u)
            ctx_type = self.intervention_unread(res, n, url_on)
            if t is None:
                t = ctx_type
            interventions.append(m.Intervention(
                type=self.code("InterventionType", t, "ResearchStudy.focus.concept") if t else None,
                name=res.get("title") or res.get("name"), description=res.get("description"),
                arm_group_labels=tuple(labels[u]), other_names=other))
        return _nz(m.ArmsInterventions, arm_groups=tuple(arms), interventions=tuple(interventions))

    def intervention_unread(self, res: dict[str, Any], n: int, url_on: str) -> Any:
        """The CT.gov intervention type a FEvIR EvidenceVariable/PlanDefinition carries in useContext (code
        https://clinicaltrials.gov#interventionType, as the HL7 R5 example modelled on a CT.gov record has it);
        every other element of the intervention resource no rule reads is reported, not dropped silently."""
        rtype = res.get("resourceType") or "EvidenceVariable"
        where = f"{rtype}/{res.get('id')}" if res.get("id") else f"{rtype}[{n}]"
        found = None
        for i, uc in enumerate(res.get("useContext") or ()):
            code = uc.get("code") if isinstance(uc, dict) else None
            code = code if isinstance(code, dict) else {}
            host = re.sub(r"^https?://", "", str(code.get("system") or "")).rstrip("/")
            if host in NCT_SYSTEMS and code.get("code") == "interventionType" and found is None \
                    and isinstance(uc.get("valueCodeableConcept"), dict):
                found = uc["valueCodeableConcept"]
            else:
                self.unmapped(f"{where}.useContext[{i}]")
        read = {"resourceType", "id", "meta", "text", "status", "title", "description", "extension", "useContext",
                "topic" if rtype == "PlanDefinition" else "", "name" if not res.get("title") else ""}
        for key in res:
            if key not in read:
                self.unmapped(f"{where}.{key}")
        for e in res.get("extension") or ():
            if isinstance(e, dict) and e.get("url") != url_on:
                self.unmapped(f"{where}.extension('{e.get('url')}')")
        return found

    def read_outcomes(self) -> m.Outcomes | None:
        buckets: dict[str, list[m.Outcome]] = {"PRIMARY": [], "SECONDARY": [], "OTHER": []}
        items: list[tuple[Any, Any, Any, Any]] = []
        if self.version == "R5":
            url_tf = ext_url("outcome-time-frame")
            for o in self.get("outcomeMeasure") or ():
                if isinstance(o, dict):
                    tf = next((e.get("valueString") for e in o.get("extension") or ()
                               if isinstance(e, dict) and e.get("url") == url_tf), None)
                    items.append((o.get("name"), (o.get("type") or [None])[0], o.get("description"), tf))
        else:
            url_tf = ext_url("outcome-time-frame")
            for e in self.xext("ResearchStudy.outcomeMeasure"):
                v = _values(e)
                # the time frame: nested project extension (absolute url); "timeFrame" in the retired extension
                tf = _first(v, url_tf) if url_tf in v else _first(v, "timeFrame")
                items.append((_first(v, "name"), _first(v, "type"), _first(v, "description"), tf))
        for i, (name, typ, desc, tf) in enumerate(items):
            kind = (reverse("OutcomeType", typ, self.version) or reverse("OutcomeType", typ, "R4")) if typ else None
            if kind is None:
                self.report.add(Kind.UNMAPPED_CODE, "outcome measure without a primary/secondary/exploratory type; "
                                "read as other", rule="fhir.study.read", source=f"ResearchStudy.outcomeMeasure[{i}]",
                                record=self.key, file=self.file)
                kind = "OTHER"
            buckets[kind].append(m.Outcome(measure=name, description=desc, time_frame=tf))
        return _nz(m.Outcomes, primary=tuple(buckets["PRIMARY"]), secondary=tuple(buckets["SECONDARY"]),
                   other=tuple(buckets["OTHER"]))

    def read_locations(self, parts: dict[str, Any]) -> m.ContactsLocations | None:
        locs = []
        url_st = ext_url("site-recruitment-status")
        for s in self.get("site") or ():
            target = self.resolve(s)
            status_cc = None
            if target is not None and target.get("resourceType") == "ResearchStudy":   # FEvIR site-level study
                ps = target.get("progressStatus") or [{}]
                status_cc = ps[0].get("state") if isinstance(ps[0], dict) else None
                target = next((self.resolve(x) for x in target.get("site") or ()), None)
            if target is None or target.get("resourceType") != "Location":
                self.unmapped("ResearchStudy.site")
                continue
            for e in target.get("extension") or ():
                if isinstance(e, dict) and e.get("url") == url_st:
                    status_cc = e.get("valueCodeableConcept")
            addr = target.get("address") or {}
            pos = target.get("position") or {}
            contacts = []
            for c in target.get("contact") or ():
                if isinstance(c, dict):
                    name = c.get("name")
                    name = name[0].get("text") if isinstance(name, list) and name else (
                        name.get("text") if isinstance(name, dict) else None)
                    contacts.append(m.Contact(name=name, **self.telecom(c.get("telecom"))))
            locs.append(m.Location(
                facility=target.get("name"),
                status=self.code("Status", status_cc, "Location.extension", "R5") if status_cc else None,
                city=addr.get("city"), state=addr.get("state"), zip=addr.get("postalCode"),
                country=addr.get("country"), contacts=tuple(contacts),
                geo_point=_nz(m.GeoPoint, lat=pos.get("latitude"), lon=pos.get("longitude"))))
        self.get("region" if self.version == "R5" else "location")   # derived from the sites' countries
        if not locs:
            regions = self.rs.get("region" if self.version == "R5" else "location") or ()
            _, by_code = countries()
            for r in regions:
                code = next((c.get("code") for c in (r.get("coding") or ()) if isinstance(c, dict)), None)
                name = r.get("text") or by_code.get(code or "")
                if name:
                    locs.append(m.Location(country=name))
        return _nz(m.ContactsLocations, central_contacts=parts["central"], overall_officials=parts["officials"],
                   locations=tuple(locs))

    def read_references(self) -> m.References | None:
        refs = []
        links = []
        for i, a in enumerate(self.get("relatedArtifact") or ()):
            if not isinstance(a, dict):
                continue
            url = a.get("url") or (a.get("document") or {}).get("url")
            if a.get("type") == "citation":
                pm = PUBMED.match(url or "")
                typ = ((a.get("classifier") or [None])[0] if self.version == "R5"
                       else ({"text": a["label"]} if a.get("label") else None))
                refs.append(m.Reference(pmid=pm.group(1) if pm else None,
                                        type=self.code("ReferenceType", typ, f"ResearchStudy.relatedArtifact[{i}]")
                                        if typ else None, citation=a.get("citation") or a.get("display")))
                if url and not pm:
                    self.unmapped(f"ResearchStudy.relatedArtifact[{i}].url")
            elif a.get("type") == "documentation":
                links.append(m.SeeAlsoLink(label=a.get("display") or a.get("label"), url=url))
            else:
                self.unmapped(f"ResearchStudy.relatedArtifact[{i}]")
        return _nz(m.References, references=tuple(refs), see_also_links=tuple(links))

    def read_ipd(self) -> m.IpdSharing | None:
        for e in self.ext("research-study-ipd-sharing"):
            v = _values(e)
            return _nz(m.IpdSharing, ipd_sharing=_first(v, "ipdSharing"), description=_first(v, "description"),
                       info_types=tuple(v.get("infoType", ())), time_frame=_first(v, "timeFrame"),
                       access_criteria=_first(v, "accessCriteria"), url=_first(v, "url"))
        return None

    def report_unused(self) -> None:
        self.used.add("extension")
        for key in self.rs:
            if key not in self.used and key not in IGNORED_KEYS:
                self.unmapped(f"ResearchStudy.{key}")
        for url in self.exts:
            if url not in self.used_ext:
                self.unmapped(f"ResearchStudy.extension('{url}')")


def _index(bundle: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    resources: list[dict[str, Any]] = []
    index: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            continue
        resources.append(res)
        if entry.get("fullUrl"):
            index[entry["fullUrl"]] = res
        if res.get("id"):
            index[f"{res.get('resourceType')}/{res['id']}"] = res
    return resources, index


def read_fhir_study(data: Any, *, file: str, report: ConversionReport,
                    version: str | None = None) -> list[m.Study]:
    """A Bundle or a bare ResearchStudy (R4 or R5) -> one Study per top-level ResearchStudy."""
    if not isinstance(data, dict) or "resourceType" not in data:
        raise InputError("not a FHIR resource (no resourceType)", file=file)
    if data["resourceType"] == "Bundle":
        resources, index = _index(data)
    elif data["resourceType"] == "ResearchStudy":
        resources, index = [data], {}
    else:
        raise InputError(f"a {data['resourceType']} is neither a Bundle nor a ResearchStudy", file=file)
    studies = [r for r in resources if r.get("resourceType") == "ResearchStudy"]
    ids = {f"ResearchStudy/{r.get('id')}" for r in studies}
    urls = {u for u, r in index.items() if r in studies}
    # site-level studies (partOf another study here) are read through their parent's site
    top = [r for r in studies if not any(isinstance(p, dict) and (p.get("reference") in urls or p.get("reference") in ids)
                                         for p in r.get("partOf") or ())]
    if not top:
        raise InputError("no ResearchStudy in the input", file=file)
    out = []
    for rs in top:
        ver = (version or detect_version(rs)).upper()
        reader = _Reader(rs, index, ver, report, file)
        out.append(reader.read())
    reached = _reachable(top, index)
    for r in resources:
        if r.get("resourceType") != "ResearchStudy" and id(r) not in reached:
            report.unmapped_source(f"Bundle.entry({r.get('resourceType')}/{r.get('id')})", rule="fhir.study.read",
                                   file=file)
    return out


def _reachable(top: list[dict[str, Any]], index: dict[str, dict[str, Any]]) -> set[int]:
    seen: set[int] = set()
    stack: list[Any] = list(top)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            r = node.get("reference")
            if isinstance(r, str) and r in index and id(index[r]) not in seen:
                seen.add(id(index[r]))
                stack.append(index[r])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
    while stack:
        visit(stack.pop())
    return seen
