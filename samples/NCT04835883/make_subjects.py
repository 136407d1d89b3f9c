"""Generate samples/NCT04835883/subjects.bundle.json: a synthetic FHIR R4 (4.0.1) collection Bundle.

Ten fictitious participants of NCT04835883 (CS20AT04, allogenic bone-marrow MSC, in lupus nephritis
and lupus cytopenia; Hanyang University Medical Center, Seoul). Deterministic: a fixed seed and
derived ids, so the same script always writes the same bytes. No real person is described.

Why R4: it is what hospital FHIR servers serve today (US Core, KR Core and most EHR vendors are
R4); the converter reads R5 too, and the R5 elements R4 lacks (ResearchSubject.progress,
AdverseEvent.occurrence and mitigatingAction) are carried by the official cross-version extensions
(``http://hl7.org/fhir/5.0/StructureDefinition/extension-<Resource>.<element>``), as the Joint IG does.

Run: ``python samples/NCT04835883/make_subjects.py`` (writes beside this file).
"""

from __future__ import annotations

import json
import math
import random
from datetime import date, datetime, timedelta
from pathlib import Path

SEED = 4835883
BASE = "https://fhir.hyumc.example/r4"
TZ = "+09:00"
NCT = "NCT04835883"
SITE = "001"
ARM = "Assigned interventions"
DRUG_NAME = "CS20AT04 (allogenic bone marrow derived mesenchymal stem cell)"
XV = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"   # R5 -> R4 cross-version extensions
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MEDDRA = "http://terminology.hl7.org/CodeSystem/mdr"
V3INT = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_CUT = date(2021, 6, 30)

# planned visits: (code, label, study day relative to day 0, window jitter days)
VISITS = [("SCR", "Screening", -21, 7), ("D0", "Day 0", 0, 0), ("D3", "Day 3", 3, 0),
          ("W1", "Week 1", 7, 1), ("W4", "Week 4", 28, 3), ("W8", "Week 8", 56, 3),
          ("W12", "Week 12", 84, 3), ("W16", "Week 16", 112, 3), ("W20", "Week 20", 140, 3),
          ("W24", "Week 24", 168, 3)]
INFUSION_VISITS = ("D0", "W12")
RENAL_VISITS = ("SCR", "D0", "W4", "W8", "W12", "W16", "W20", "W24")

# (key, LOINC, display, UCUM, unit text, specimen, ref low, ref high)
LABS = [
    ("upcr", "2890-2", "Protein/Creatinine [Mass Ratio] in Urine", "mg/mg", "mg/mg", "UR", None, 0.2),
    ("egfr", "62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
     "Plasma or Blood by Creatinine-based formula (CKD-EPI)", "mL/min/{1.73_m2}", "mL/min/1.73m2",
     "SER", 60, None),
    ("creat", "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L", "umol/L", "SER", 45, 90),
    ("hgb", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", "BLD", 12.0, 16.0),
    ("neut", "751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*3/uL", "10^3/uL", "BLD",
     1.8, 7.5),
    ("lymph", "731-0", "Lymphocytes [#/volume] in Blood by Automated count", "10*3/uL", "10^3/uL", "BLD",
     1.0, 4.8),
    ("plt", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "10^3/uL", "BLD",
     150, 400),
    ("dsdna", "5130-0", "DNA double strand Ab [Units/volume] in Serum", "[IU]/mL", "IU/mL", "SER", None, 10),
    ("c3", "4485-9", "Complement C3 [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", "SER", 90, 180),
    ("c4", "4498-2", "Complement C4 [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", "SER", 10, 40),
]
RENAL_LABS = ("upcr", "egfr", "creat", "dsdna", "c3", "c4")
SERIOUS_DISPLAY = {"Non-serious": "Non-serious", "Serious": "Serious",
                   "SeriousResultsInHospitalization": "Requires inpatient hospitalization or causes "
                                                      "prolongation of existing hospitalization"}
OUTCOME_DISPLAY = {"resolved": "Resolved", "recovering": "Recovering", "ongoing": "Ongoing",
                   "resolvedWithSequelae": "Resolved with Sequelae", "fatal": "Fatal", "unknown": "Unknown"}
SPECIMEN_TYPES = {"UR": "Urine", "SER": "Serum", "BLD": "Whole blood"}

# participants: (number, sub-group, sex, age at screening, day-0 date, fate)
SUBJECTS = [
    ("001-001", "LN", "female", 34, date(2019, 11, 4), "completed"),
    ("001-002", "LN", "female", 27, date(2020, 1, 13), "completed"),
    ("001-003", "LC", "female", 45, date(2020, 3, 2), "completed"),
    ("001-004", "LC", "female", 52, date(2020, 5, 18), "completed"),
    ("001-005", "LN", "male", 31, date(2020, 7, 6), "completed"),
    ("001-006", "LN", "female", 39, date(2020, 8, 24), "completed"),
    ("001-007", "LN", "female", 23, date(2020, 10, 12), "withdrawn"),
    ("001-008", "LC", "female", 61, date(2020, 11, 23), "completed"),
    ("001-009", "LC", "male", 48, date(2021, 1, 4), "completed"),
    ("001-010", "LN", "female", 29, date(2021, 4, 5), "ongoing"),
]
FAMILY = ["Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim"]
GIVEN_F = ["Ji-woo", "Seo-yeon", "Min-ji", "Ha-eun", "Soo-bin", "Ye-jin", "Da-eun", "Eun-ji"]
GIVEN_M = ["Min-jun", "Seo-jun", "Do-yun", "Ji-ho"]
DISTRICTS = ["Seongdong-gu", "Gwangjin-gu", "Jung-gu", "Dongdaemun-gu", "Songpa-gu"]


def ref(kind: str, rid: str) -> dict:
    return {"reference": f"{kind}/{rid}"}


def cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def dt(d: date, hh: int, mm: int) -> str:
    return datetime(d.year, d.month, d.day, hh, mm).isoformat() + TZ


def qty(value: float, unit: str, code: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


class Gen:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.entries: list[dict] = []

    def add(self, res: dict) -> dict:
        self.entries.append({"fullUrl": f"{BASE}/{res['resourceType']}/{res['id']}", "resource": res})
        return res

    # ------------------------------------------------------------------ study level
    def study(self) -> None:
        self.add({"resourceType": "Organization", "id": "org-hyush",
                  "identifier": [{"system": "https://fhir.hyumc.example/sid/org", "value": "HYUSH"}],
                  "name": "Hanyang University Seoul Hospital"})
        self.add({"resourceType": "Practitioner", "id": "prac-pi-001",
                  "identifier": [{"system": "https://fhir.hyumc.example/sid/investigator", "value": "INV-001"}],
                  "name": [{"family": "Investigator", "given": ["Principal"]}]})
        self.add({"resourceType": "Location", "id": "loc-hyumc", "status": "active",
                  "name": "Hanyang University Medical Center",
                  "address": {"city": "Seoul", "country": "KR"}})
        self.add({"resourceType": "ResearchStudy", "id": "rs-nct04835883",
                  "identifier": [{"system": "https://clinicaltrials.gov", "value": NCT}],
                  "title": "Exploring the Efficacy and Safety of CS20AT04 (Allogenic Bone Marrow-Derived "
                           "Stem Cell) in Systemic Lupus Erythematosus Patients",
                  "status": "active",
                  "phase": cc("http://terminology.hl7.org/CodeSystem/research-study-phase", "phase-2",
                              "Phase 2"),
                  "condition": [cc(SCT, "55464009", "Systemic lupus erythematosus",
                                   "Systemic Lupus Erythematosus")],
                  "location": [cc("urn:iso:std:iso:3166", "KR", "Korea, Republic of")],
                  "period": {"start": "2019-09-26"},
                  "sponsor": ref("Organization", "org-hyush"),
                  "arm": [{"name": ARM,
                           "type": cc("http://terminology.hl7.org/CodeSystem/research-study-arm-type",
                                      "experimental", "Experimental"),
                           "description": "Two infusions of CS20AT04 (2.0x10^6 cells/kg), on day 0 and "
                                          "at week 12 post-enrollment, with a 24-week corticosteroid "
                                          "taper."}]})
        # site-level study partOf the overall study (Joint Mapping IG pattern: SITEID / STUDYID)
        self.add({"resourceType": "ResearchStudy", "id": "rs-nct04835883-site-001",
                  "identifier": [{"system": "https://fhir.hyumc.example/sid/study-site", "value": SITE}],
                  "title": "NCT04835883 at Hanyang University Medical Center",
                  "partOf": [ref("ResearchStudy", "rs-nct04835883")],
                  "status": "active",
                  "principalInvestigator": ref("Practitioner", "prac-pi-001"),
                  "site": [ref("Location", "loc-hyumc")]})
        self.add({"resourceType": "Medication", "id": "med-cs20at04",
                  "code": {"coding": [{"system": "https://fhir.hyumc.example/CodeSystem/investigational-product",
                                       "code": "CS20AT04", "display": DRUG_NAME}],
                           "text": DRUG_NAME},
                  "status": "active",
                  "form": {"coding": [{"system": NCIT, "code": "C42995",
                                       "display": "Injectable Suspension Dosage Form"}],
                           "text": "Cell suspension for intravenous infusion"}})

    # ------------------------------------------------------------------ one participant
    def subject(self, idx: int, spec: tuple) -> None:
        num, group, sex, age, day0, fate = spec
        rng = self.rng
        sid = num
        pid = f"pat-{sid}"
        family = FAMILY[idx]
        given = (GIVEN_F if sex == "female" else GIVEN_M)[idx % (8 if sex == "female" else 4)]
        scr = day0 + timedelta(days=VISITS[0][2] + rng.randint(-VISITS[0][3], 0))
        birth = date(scr.year - age, rng.randint(1, 12), rng.randint(1, 28))
        if (scr.month, scr.day) < (birth.month, birth.day):
            birth = birth.replace(year=birth.year - 1)
        self.add({
            "resourceType": "Patient", "id": pid,
            "meta": {"lastUpdated": dt(DATA_CUT, 18, 0)},
            "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                           "code": "2028-9", "display": "Asian"}},
                    {"url": "detailed", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                        "code": "2040-4", "display": "Korean"}},
                    {"url": "text", "valueString": "Korean"}]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                           "code": "2186-5",
                                                           "display": "Not Hispanic or Latino"}},
                    {"url": "text", "valueString": "Not Hispanic or Latino"}]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                 "valueCode": "F" if sex == "female" else "M"},
            ],
            "identifier": [{"use": "usual",
                            "type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                                       "Medical record number"),
                            "system": "https://fhir.hyumc.example/sid/mrn",
                            "value": f"{rng.randint(10000000, 99999999)}"}],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": f"+82-10-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
                         "use": "mobile"}],
            "gender": sex,
            "birthDate": birth.isoformat(),
            "address": [{"use": "home", "line": [f"{rng.randint(1, 300)} Wangsimni-ro"],
                         "district": DISTRICTS[idx % len(DISTRICTS)], "city": "Seoul",
                         "postalCode": f"0{rng.randint(2000, 8999)}", "country": "KR"}],
            "managingOrganization": ref("Organization", "org-hyush"),
        })
        consent_id = f"cons-{sid}"
        consent_dt = dt(scr, 9, rng.randint(0, 29))
        self.add({
            "resourceType": "Consent", "id": consent_id, "status": "active",
            "scope": cc("http://terminology.hl7.org/CodeSystem/consentscope", "research", "Research"),
            "category": [cc(LOINC, "57016-8", "Privacy policy acknowledgement Document"),
                         cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "RESEARCH",
                            "research information use")],
            "patient": ref("Patient", pid), "dateTime": consent_dt,
            "organization": [ref("Organization", "org-hyush")],
            "policy": [{"uri": "https://clinicaltrials.gov/study/NCT04835883"}],
            "provision": {"type": "permit", "period": {"start": scr.isoformat()}},
        })

        # which planned visits happened
        last = {"completed": "W24", "withdrawn": "W8", "ongoing": "W12"}[fate]
        visits = VISITS[: [v[0] for v in VISITS].index(last) + 1]
        missed = {("001-002", "W20")}
        enc_dates: dict[str, date] = {}
        for code, label, day, jit in visits:
            vdate = scr if code == "SCR" else day0 + timedelta(days=day + (rng.randint(-jit, jit) if jit else 0))
            enc_dates[code] = vdate
            eid = f"enc-{sid}-{code.lower()}"
            enc = {
                "resourceType": "Encounter", "id": eid,
                "identifier": [{"system": "https://fhir.hyumc.example/sid/ctms-visit", "value": f"{sid}-{code}"}],
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                          "display": "ambulatory"},
                "type": [{"coding": [{"system": "https://fhir.hyumc.example/CodeSystem/nct04835883-visit",
                                      "code": code, "display": label}], "text": label}],
                "subject": ref("Patient", pid),
                "period": {"start": dt(vdate, 8, 30 + rng.randint(0, 29)),
                           "end": dt(vdate, 16 if code in INFUSION_VISITS else 11, rng.randint(0, 59))},
                "serviceProvider": ref("Organization", "org-hyush"),
                "location": [{"location": ref("Location", "loc-hyumc")}],
            }
            if (sid, code) in missed:
                enc["status"] = "cancelled"
                del enc["period"]
                enc["reasonCode"] = [{"text": "Visit missed: participant unable to attend"}]
                enc_dates.pop(code)
            self.add(enc)

        start = day0
        end = enc_dates.get(last) if fate != "ongoing" else None
        rs = {
            "resourceType": "ResearchSubject", "id": f"rsub-{sid}",
            "identifier": [{"system": "https://fhir.hyumc.example/sid/nct04835883-subject", "value": sid}],
            "status": {"completed": "off-study", "withdrawn": "withdrawn", "ongoing": "on-study-intervention"}[fate],
            "period": {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})},
            "study": ref("ResearchStudy", "rs-nct04835883-site-001"),
            "individual": ref("Patient", pid),
            "assignedArm": ARM, "actualArm": ARM,
            "consent": ref("Consent", consent_id),
        }
        if fate == "completed":
            rs["extension"] = [{"url": XV + "ResearchSubject.progress", "extension": [
                {"url": "type", "valueCodeableConcept": cc(
                    "http://terminology.hl7.org/CodeSystem/research-subject-state-type", "Enrollment")},
                {"url": "subjectState", "valueCodeableConcept": cc(
                    "http://terminology.hl7.org/CodeSystem/research-subject-state", "off-study")},
                {"url": "reason", "valueCodeableConcept": cc(NCIT, "C25250", "Completed", "Completed")},
                {"url": "startDate", "valueDateTime": end.isoformat()}]}]
        elif fate == "withdrawn":
            rs["extension"] = [{"url": XV + "ResearchSubject.progress", "extension": [
                {"url": "type", "valueCodeableConcept": cc(
                    "http://terminology.hl7.org/CodeSystem/research-subject-state-type", "Enrollment")},
                {"url": "subjectState", "valueCodeableConcept": cc(
                    "http://terminology.hl7.org/CodeSystem/research-subject-state", "withdrawn")},
                {"url": "reason", "valueCodeableConcept": cc(NCIT, "C49634", "Withdrawal by Subject",
                                                             "Participant withdrew consent to further visits")},
                {"url": "startDate", "valueDateTime": (end + timedelta(days=9)).isoformat()}]}]
        self.add(rs)

        self.conditions(sid, pid, group, scr, birth)
        self.labs_and_vitals(sid, pid, group, sex, age, enc_dates, day0)
        self.medications(sid, pid, group, enc_dates, day0, scr, end)
        if group == "LN":
            self.add({
                "resourceType": "Procedure", "id": f"proc-{sid}-renal-biopsy",
                "status": "not-done" if sid == "001-006" else "completed",
                **({"statusReason": {"text": "Biopsy within the previous year available"}}
                   if sid == "001-006" else {"performedDateTime": dt(scr + timedelta(days=1), 10, 15)}),
                "category": cc(SCT, "103693007", "Diagnostic procedure"),
                "code": {"coding": [{"system": "https://fhir.hyumc.example/CodeSystem/procedure",
                                     "code": "NEPH-BX-01", "display": "Percutaneous renal biopsy"}],
                         "text": "Percutaneous renal biopsy"},
                "subject": ref("Patient", pid), "encounter": ref("Encounter", f"enc-{sid}-scr"),
                "bodySite": [cc(SCT, "64033007", "Kidney structure")],
                "reasonReference": [ref("Condition", f"cond-{sid}-ln")],
            })

    def conditions(self, sid: str, pid: str, group: str, scr: date, birth: date) -> None:
        rng = self.rng
        cat_pl = cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                    "Problem List Item")
        active = cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")
        confirmed = cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed")
        sle_year = max(birth.year + 16, scr.year - rng.randint(3, 12))

        def cond(key: str, code: str, display: str, text: str, onset: str, **kw: object) -> None:
            res = {"resourceType": "Condition", "id": f"cond-{sid}-{key}",
                   "clinicalStatus": kw.pop("clinical", active),
                   "verificationStatus": kw.pop("verification", confirmed),
                   "category": [kw.pop("category", cat_pl)],
                   "code": cc(SCT, code, display, text), "subject": ref("Patient", pid),
                   "onsetDateTime": onset, "recordedDate": scr.isoformat()}
            res.update(kw)
            self.add(res)

        cond("sle", "55464009", "Systemic lupus erythematosus", "Systemic lupus erythematosus",
             f"{sle_year}-{rng.randint(1, 12):02d}")
        if group == "LN":
            cond("ln", "68815009", "Systemic lupus erythematosus glomerulonephritis syndrome",
                 "Lupus nephritis, ISN/RPS class IV", f"{min(scr.year - 1, sle_year + 2)}-{rng.randint(1, 12):02d}-"
                 f"{rng.randint(1, 28):02d}", bodySite=[cc(SCT, "64033007", "Kidney structure")])
        elif sid in ("001-003", "001-008"):
            cond("lc", "302215000", "Thrombocytopenic disorder", "Lupus thrombocytopenia",
                 f"{scr.year - 1}-{rng.randint(1, 12):02d}")
        else:
            cond("lc", "84828003", "Leukopenia", "Lupus leukopenia", f"{scr.year - 1}-{rng.randint(1, 12):02d}")
        if sid in ("001-004", "001-008", "001-009"):
            cond("htn", "38341003", "Hypertensive disorder, systemic arterial", "Hypertension",
                 str(scr.year - rng.randint(2, 8)))
        if sid in ("001-003", "001-005"):
            cond("hz", "4740000", "Herpes zoster", "Herpes zoster", f"{scr.year - 2}-0{rng.randint(1, 9)}",
                 clinical=cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved", "Resolved"),
                 abatementDateTime=f"{scr.year - 2}-{rng.randint(10, 12)}")
        if sid == "001-005":
            # screened and ruled out: an explicit negative finding
            cond("tb", "56717001", "Tuberculosis", "Tuberculosis (latent, screened)", scr.isoformat(),
                 clinical=cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "inactive", "Inactive"),
                 verification=cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted",
                                 "Refuted"))

    def labs_and_vitals(self, sid: str, pid: str, group: str, sex: str, age: int,
                        enc_dates: dict[str, date], day0: date) -> None:
        rng = self.rng
        ln = group == "LN"
        # baselines by sub-group (clinically plausible for active LN / refractory lupus cytopenia)
        base = {"upcr": rng.uniform(1.4, 4.2) if ln else rng.uniform(0.08, 0.25),
                "creat": rng.uniform(110, 175) if ln else rng.uniform(52, 78),
                "hgb": rng.uniform(10.2, 12.4) if ln else rng.uniform(7.6, 9.8),
                "neut": rng.uniform(2.2, 5.0) if ln else rng.uniform(0.55, 0.95),
                "lymph": rng.uniform(0.8, 1.4) if ln else rng.uniform(0.5, 1.1),
                "plt": rng.uniform(160, 290) if ln else rng.uniform(38, 88),
                "dsdna": rng.uniform(90, 380) if ln else rng.uniform(45, 190),
                "c3": rng.uniform(48, 78) if ln else rng.uniform(62, 88),
                "c4": rng.uniform(5, 11) if ln else rng.uniform(7, 14)}
        weight = rng.uniform(47, 62) if sex == "female" else rng.uniform(62, 78)
        height = rng.uniform(152, 168) if sex == "female" else rng.uniform(166, 180)
        sbp0 = rng.uniform(128, 148) if ln else rng.uniform(112, 130)
        self.weights = getattr(self, "weights", {})
        for code, _label, day, _ in VISITS:
            if code not in enc_dates:
                continue
            vdate = enc_dates[code]
            eid = f"enc-{sid}-{code.lower()}"
            frac = min(max(day, 0), 168) / 168.0   # treatment effect builds over 24 weeks
            t_coll = dt(vdate, 8, 40 + rng.randint(0, 15))
            specimens = {}
            for stype, sname in SPECIMEN_TYPES.items():
                if stype == "UR" and code not in RENAL_VISITS:
                    continue
                spid = f"spec-{sid}-{code.lower()}-{stype.lower()}"
                specimens[stype] = spid
                self.add({"resourceType": "Specimen", "id": spid,
                          "accessionIdentifier": {"system": "https://fhir.hyumc.example/sid/accession",
                                                  "value": f"A{vdate:%y%m%d}{sid.replace('-', '')}{stype}"},
                          "status": "available",
                          "type": cc("http://terminology.hl7.org/CodeSystem/v2-0487", stype, sname),
                          "subject": ref("Patient", pid),
                          "collection": {"collectedDateTime": t_coll}})
            vals = {}
            improve = 0.55 * frac if ln else 0.35 * frac
            vals["upcr"] = round(base["upcr"] * (1 - improve * 1.2) * rng.uniform(0.9, 1.1), 2)
            vals["creat"] = round(base["creat"] * (1 - improve * 0.45) * rng.uniform(0.95, 1.05))
            vals["hgb"] = round(base["hgb"] + (2.4 if not ln else 0.8) * frac + rng.uniform(-0.3, 0.3), 1)
            vals["neut"] = round(base["neut"] * (1 + (1.3 if not ln else 0.1) * frac) * rng.uniform(0.9, 1.1), 2)
            vals["lymph"] = round(base["lymph"] * (1 + 0.4 * frac) * rng.uniform(0.9, 1.1), 2)
            vals["plt"] = round(base["plt"] * (1 + (1.1 if not ln else 0.05) * frac) * rng.uniform(0.92, 1.08))
            vals["dsdna"] = round(base["dsdna"] * (1 - 0.5 * frac) * rng.uniform(0.9, 1.1))
            vals["c3"] = round(base["c3"] * (1 + 0.35 * frac) * rng.uniform(0.95, 1.05))
            vals["c4"] = round(base["c4"] * (1 + 0.5 * frac) * rng.uniform(0.95, 1.05), 1)
            scr_mgdl = vals["creat"] / 88.4   # CKD-EPI 2009
            k, a = (0.7, -0.329) if sex == "female" else (0.9, -0.411)
            egfr = (141 * min(scr_mgdl / k, 1) ** a * max(scr_mgdl / k, 1) ** -1.209 * 0.993 ** age
                    * (1.018 if sex == "female" else 1))
            vals["egfr"] = round(egfr)
            for key, loinc, disp, ucum, unit, stype, lo, hi in LABS:
                if key in RENAL_LABS and code not in RENAL_VISITS:
                    continue
                oid = f"obs-{sid}-{code.lower()}-{key}"
                obs: dict = {"resourceType": "Observation", "id": oid, "status": "final",
                             "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category",
                                             "laboratory", "Laboratory")],
                             "code": cc(LOINC, loinc, disp), "subject": ref("Patient", pid),
                             "encounter": ref("Encounter", eid), "effectiveDateTime": t_coll,
                             "issued": dt(vdate, 14, rng.randint(0, 59)),
                             "specimen": ref("Specimen", specimens[stype])}
                if (sid, code, key) == ("001-003", "W16", "c4"):
                    obs["status"] = "cancelled"       # test not performed
                    obs["dataAbsentReason"] = cc("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                 "not-performed", "Not Performed",
                                                 "Reagent lot recalled; test not run")
                elif (sid, code, key) == ("001-005", "W4", "plt"):
                    obs["dataAbsentReason"] = cc("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                 "error", "Error", "Specimen clotted")
                else:
                    v = vals[key]
                    obs["valueQuantity"] = qty(v, unit, ucum)
                    rr: dict = {}
                    if lo is not None:
                        rr["low"] = qty(lo, unit, ucum)
                    if hi is not None:
                        rr["high"] = qty(hi, unit, ucum)
                    obs["referenceRange"] = [rr]
                    flag = "H" if hi is not None and v > hi else "L" if lo is not None and v < lo else "N"
                    obs["interpretation"] = [cc(V3INT, flag, {"H": "High", "L": "Low", "N": "Normal"}[flag])]
                self.add(obs)
            # vital signs
            vcat = [cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")]
            t_vs = dt(vdate, 8, 35 + rng.randint(0, 4))

            head = {"pid": pid, "eid": eid, "prefix": f"obs-{sid}-{code.lower()}", "t": t_vs, "cat": vcat}
            vs = self.vital_sign

            sbp = round(sbp0 - 8 * frac * (1 if ln else 0.3) + rng.uniform(-6, 6))
            dbp = round(sbp * rng.uniform(0.6, 0.68))
            vs(head, "bp", "85354-9", "Blood pressure panel with all children optional", component=[
                {"code": cc(LOINC, "8480-6", "Systolic blood pressure"), "valueQuantity": qty(sbp, "mmHg", "mm[Hg]")},
                {"code": cc(LOINC, "8462-4", "Diastolic blood pressure"),
                 "valueQuantity": qty(dbp, "mmHg", "mm[Hg]")}])
            vs(head, "hr", "8867-4", "Heart rate", valueQuantity=qty(rng.randint(62, 92), "beats/minute", "/min"))
            vs(head, "temp", "8310-5", "Body temperature",
               valueQuantity=qty(round(rng.uniform(36.2, 37.2), 1), "C", "Cel"))
            if code in ("SCR", "D0", "W12", "W24"):
                w = round(weight + rng.uniform(-0.8, 0.8), 1)
                self.weights[(sid, code)] = w
                vs(head, "wt", "29463-7", "Body weight", valueQuantity=qty(w, "kg", "kg"))
            if code == "SCR":
                vs(head, "ht", "8302-2", "Body height", valueQuantity=qty(round(height, 1), "cm", "cm"))

    def vital_sign(self, head: dict, key: str, loinc: str, disp: str, **kw: object) -> None:
        self.add({"resourceType": "Observation", "id": f"{head['prefix']}-{key}",
                  "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
                  "status": "final", "category": head["cat"], "code": cc(LOINC, loinc, disp),
                  "subject": ref("Patient", head["pid"]), "encounter": ref("Encounter", head["eid"]),
                  "effectiveDateTime": head["t"], **kw})

    def medications(self, sid: str, pid: str, group: str, enc_dates: dict[str, date], day0: date,
                    scr: date, end: date | None) -> None:
        rng = self.rng
        oral = cc(SCT, "26643006", "Oral route")
        sle = cc(SCT, "55464009", "Systemic lupus erythematosus")
        # study drug: one infusion at day 0 and week 12, 2.0x10^6 cells/kg of body weight
        for code in INFUSION_VISITS:
            if code not in enc_dates:
                continue
            vdate = enc_dates[code]
            wt = self.weights[(sid, code)]
            t0 = datetime(vdate.year, vdate.month, vdate.day, 10, rng.randint(0, 30))
            # premedication (non-study drug given at the visit): goes to CM
            self.add({"resourceType": "MedicationAdministration", "id": f"madm-{sid}-{code.lower()}-apap",
                      "status": "completed",
                      "medicationCodeableConcept": cc(RXNORM, "161", "acetaminophen", "Acetaminophen 500 mg tablet"),
                      "subject": ref("Patient", pid), "context": ref("Encounter", f"enc-{sid}-{code.lower()}"),
                      "effectiveDateTime": (t0 - timedelta(minutes=30)).isoformat() + TZ,
                      "reasonCode": [{"text": "Premedication before cell infusion"}],
                      "dosage": {"text": "500 mg orally once", "route": oral, "dose": qty(500, "mg", "mg")}})
            self.add({"resourceType": "MedicationAdministration", "id": f"madm-{sid}-{code.lower()}-cs20at04",
                      "identifier": [{"system": "https://fhir.hyumc.example/sid/ip-dispensing",
                                      "value": f"IP-{sid}-{code}"}],
                      "status": "completed",
                      "medicationReference": ref("Medication", "med-cs20at04"),
                      "subject": ref("Patient", pid), "context": ref("Encounter", f"enc-{sid}-{code.lower()}"),
                      "effectivePeriod": {"start": t0.isoformat() + TZ,
                                          "end": (t0 + timedelta(minutes=60 + rng.randint(0, 20))).isoformat() + TZ},
                      "dosage": {"text": "2.0x10^6 cells/kg intravenous infusion",
                                 "route": cc(SCT, "47625008", "Intravenous route"),
                                 "dose": qty(round(2.0 * wt, 1), "10^6 cells", "10*6{cells}")}})
        # prednisone taper: one MedicationStatement per constant-dose interval
        start_dose = rng.choice([20, 25, 30])
        steps = [(start_dose, scr - timedelta(days=rng.randint(200, 500)), day0 + timedelta(days=27)),
                 (15, day0 + timedelta(days=28), day0 + timedelta(days=55)),
                 (10, day0 + timedelta(days=56), day0 + timedelta(days=83)),
                 (7.5, day0 + timedelta(days=84), end)]
        last_seen = max(enc_dates.values())
        for i, (dose, s, e) in enumerate(steps):
            if s > last_seen:
                break
            ongoing = e is None or e > last_seen
            period: dict = {"start": s.isoformat()}
            if not ongoing:
                period["end"] = e.isoformat()
            self.add({"resourceType": "MedicationStatement", "id": f"mstat-{sid}-pred-{i + 1}",
                      "status": "active" if ongoing else "completed",
                      "medicationCodeableConcept": cc(RXNORM, "8640", "prednisone", "Prednisone 5 mg tablet"),
                      "subject": ref("Patient", pid), "effectivePeriod": period,
                      "dateAsserted": enc_dates.get("SCR", scr).isoformat(),
                      "reasonCode": [sle],
                      "dosage": [{"text": f"{dose:g} mg once daily", "route": oral,
                                  "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                                  "doseAndRate": [{"doseQuantity": qty(dose, "mg", "mg")}]}]})
        if sid not in ("001-004", "001-009"):
            self.add({"resourceType": "MedicationStatement", "id": f"mstat-{sid}-hcq",
                      "status": "active",
                      "medicationCodeableConcept": cc(RXNORM, "5521", "hydroxychloroquine",
                                                      "Hydroxychloroquine sulfate 200 mg tablet"),
                      "subject": ref("Patient", pid),
                      "effectivePeriod": {"start": f"{scr.year - rng.randint(2, 6)}-{rng.randint(1, 12):02d}"},
                      "dateAsserted": scr.isoformat(), "reasonCode": [sle],
                      "dosage": [{"text": "200 mg twice daily", "route": oral,
                                  "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                                  "doseAndRate": [{"doseQuantity": qty(200, "mg", "mg")}]}]})
        if group == "LN":
            # prior standard-of-care immunosuppressant, stopped before screening (non-responder)
            stop = scr - timedelta(days=rng.randint(40, 90))
            self.add({"resourceType": "MedicationStatement", "id": f"mstat-{sid}-mmf",
                      "status": "completed",
                      "medicationCodeableConcept": cc(RXNORM, "68149", "mycophenolate mofetil",
                                                      "Mycophenolate mofetil 500 mg tablet"),
                      "subject": ref("Patient", pid),
                      "effectivePeriod": {"start": (stop - timedelta(days=rng.randint(200, 400))).isoformat(),
                                          "end": stop.isoformat()},
                      "dateAsserted": scr.isoformat(),
                      "reasonReference": [ref("Condition", f"cond-{sid}-ln")],
                      "dosage": [{"text": "1000 mg twice daily", "route": oral,
                                  "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                                  "doseAndRate": [{"doseQuantity": qty(1000, "mg", "mg")}]}]})

    # ------------------------------------------------------------------ adverse events
    def adverse_events(self) -> None:
        sev = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
        ser = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
        out = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
        caus = "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess"
        enc = {e["resource"]["id"]: e["resource"] for e in self.entries
               if e["resource"]["resourceType"] == "Encounter"}

        def vdate(sid: str, code: str) -> date:
            return date.fromisoformat(enc[f"enc-{sid}-{code.lower()}"]["period"]["start"][:10])

        def ae(aid: str, sid: str, event: dict, start: str, end: str | None, severity: str,
               seriousness: str, outcome: str, assessment: str, acn: tuple[str, str] | None,
               suspect: str | None, **kw: object) -> None:
            res: dict = {"resourceType": "AdverseEvent", "id": aid,
                         "identifier": {"system": "https://fhir.hyumc.example/sid/ae", "value": aid.upper()},
                         "actuality": "actual", "event": event, "subject": ref("Patient", f"pat-{sid}"),
                         "date": start, "recordedDate": start[:10],
                         "seriousness": cc(ser, seriousness, SERIOUS_DISPLAY[seriousness]),
                         "severity": cc(sev, severity, severity.capitalize()),
                         "outcome": cc(out, outcome, OUTCOME_DISPLAY[outcome]),
                         "study": [ref("ResearchStudy", "rs-nct04835883-site-001")]}
            ext = [{"url": XV + "AdverseEvent.occurrence",
                    "valuePeriod": {"start": start, **({"end": end} if end else {})}}]
            if acn:
                ext.append({"url": XV + "AdverseEvent.mitigatingAction",
                            "extension": [{"url": "item", "valueCodeableConcept": cc(NCIT, acn[0], acn[1])}]})
            res["extension"] = ext
            if suspect:
                res["suspectEntity"] = [{"instance": ref("MedicationAdministration", suspect),
                                         "causality": [{"assessment": cc(caus, assessment, assessment.replace("-", " or ")),
                                                        "author": ref("Practitioner", "prac-pi-001")}]}]
            res.update(kw)
            self.add(res)

        d = vdate("001-001", "D0")
        ae("ae-001-001-1", "001-001",
           {"coding": [{"system": MEDDRA, "code": "10051792", "display": "Infusion related reaction"}],
            "text": "Infusion related reaction (chills, flushing)"},
           dt(d, 10, 40), dt(d, 13, 0), "mild", "Non-serious", "resolved", "Probably-Likely",
           ("C150826", "Dose Rate Reduced"), "madm-001-001-d0-cs20at04")
        d = vdate("001-002", "W4") + timedelta(days=9)
        ae("ae-001-002-1", "001-002", cc(SCT, "54150009", "Upper respiratory infection",
                                         "Upper respiratory tract infection"),
           d.isoformat(), (d + timedelta(days=8)).isoformat(), "moderate", "Non-serious", "resolved",
           "Unlikely", ("C49504", "Dose Not Changed"), "madm-001-002-d0-cs20at04")
        # serious: hospitalised pneumonia, with an encounter-diagnosis Condition and an unplanned stay
        d = vdate("001-004", "W12") + timedelta(days=17)
        self.add({"resourceType": "Encounter", "id": "enc-001-004-unsch-1",
                  "identifier": [{"system": "https://fhir.hyumc.example/sid/ctms-visit", "value": "001-004-UNS1"}],
                  "status": "finished",
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                            "display": "inpatient encounter"},
                  "type": [{"text": "Unscheduled hospital admission"}],
                  "subject": ref("Patient", "pat-001-004"),
                  "period": {"start": dt(d, 15, 20), "end": dt(d + timedelta(days=6), 11, 0)},
                  "reasonCode": [{"text": "Admission for community-acquired pneumonia"}],
                  "hospitalization": {"admitSource": cc("http://terminology.hl7.org/CodeSystem/admit-source",
                                                        "emd", "From accident/emergency department")},
                  "serviceProvider": ref("Organization", "org-hyush")})
        self.add({"resourceType": "Condition", "id": "cond-001-004-pna",
                  "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved",
                                       "Resolved"),
                  "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           "confirmed", "Confirmed"),
                  "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category",
                                  "encounter-diagnosis", "Encounter Diagnosis")],
                  "severity": cc(SCT, "24484000", "Severe"),
                  "code": cc(SCT, "233604007", "Pneumonia", "Community-acquired pneumonia"),
                  "bodySite": [cc(SCT, "39607008", "Lung structure")],
                  "subject": ref("Patient", "pat-001-004"), "encounter": ref("Encounter", "enc-001-004-unsch-1"),
                  "onsetDateTime": d.isoformat(), "abatementDateTime": (d + timedelta(days=12)).isoformat(),
                  "recordedDate": d.isoformat()})
        ae("ae-001-004-1", "001-004", cc(SCT, "233604007", "Pneumonia", "Pneumonia"),
           d.isoformat(), (d + timedelta(days=12)).isoformat(), "severe", "SeriousResultsInHospitalization",
           "resolved", "Possible", ("C49504", "Dose Not Changed"), "madm-001-004-w12-cs20at04",
           resultingCondition=[ref("Condition", "cond-001-004-pna")],
           encounter=ref("Encounter", "enc-001-004-unsch-1"))
        d = vdate("001-007", "W1") + timedelta(days=4)
        ae("ae-001-007-1", "001-007", cc(SCT, "25064002", "Headache", "Headache"),
           d.isoformat(), None, "mild", "Non-serious", "ongoing", "Unlikely", None,
           "madm-001-007-d0-cs20at04")
        d = vdate("001-009", "W16") + timedelta(days=5)
        ae("ae-001-009-1", "001-009", cc(SCT, "4740000", "Herpes zoster", "Herpes zoster (thoracic dermatome)"),
           d.isoformat(), (d + timedelta(days=30)).isoformat(), "moderate", "Non-serious",
           "resolvedWithSequelae", "Unlikely", ("C49504", "Dose Not Changed"), "madm-001-009-w12-cs20at04")

    def bundle(self) -> dict:
        self.study()
        for i, spec in enumerate(SUBJECTS):
            self.subject(i, spec)
        self.adverse_events()
        return {"resourceType": "Bundle", "id": "nct04835883-subjects",
                "meta": {"lastUpdated": dt(DATA_CUT, 18, 0)},
                "identifier": {"system": "https://fhir.hyumc.example/sid/bundle", "value": "NCT04835883-2021-06-30"},
                "type": "collection", "timestamp": dt(DATA_CUT, 18, 0), "entry": self.entries}


def _round_floats(obj: object) -> object:
    # JSON numbers as written by a person: no 0.30000000000000004
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if not math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v) for v in obj]
    return obj


def main() -> None:
    out = Path(__file__).with_name("subjects.bundle.json")
    data = _round_floats(Gen().bundle())
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(data['entry'])} resources)")


if __name__ == "__main__":
    main()
