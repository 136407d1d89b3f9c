"""DM from Patient + ResearchSubject (R4 and R5 arm elements), race/ethnicity, SUPPDM, privacy."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
from trialbridge.model import ArmGroup, ArmsInterventions, Identification, Intervention, OrgStudyId, Study
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.subject.pipeline import convert_subjects

OMB = "urn:oid:2.16.840.1.113883.6.238"
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"


def _bundle(tmp_path: Path, r5: bool) -> Path:
    pat = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1960-03-15",
           "name": [{"family": "Hidden"}], "telecom": [{"value": "555-0100"}],
           "address": [{"line": ["9 Lane"], "country": "DEU"}],
           "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"},
                         {"url": RACE, "extension": [{"url": "ombCategory", "valueCoding": {"system": OMB, "code": "2106-3"}},
                                                     {"url": "ombCategory", "valueCoding": {"system": OMB, "code": "2028-9"}}]}]}
    rs = {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study" if not r5 else "active",
          "identifier": [{"value": "1001"}], "study": {"reference": "ResearchStudy/site"}}
    if r5:
        rs.update(subject={"reference": "Patient/p1"}, assignedComparisonGroup="g1", actualComparisonGroup="g1")
    else:
        rs.update(individual={"reference": "Patient/p1"}, assignedArm="Drug A", actualArm="drug a")
    site = {"resourceType": "ResearchStudy", "id": "site", "identifier": [{"value": "SITE-07"}],
            "partOf": [{"reference": "ResearchStudy/main"}],
            "comparisonGroup": [{"linkId": "g1", "name": "Drug A"}]}
    consent = {"resourceType": "Consent", "id": "c1", "status": "active", "dateTime": "2021-02-01",
               "patient": {"reference": "Patient/p1"}}
    ma = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "Drug A"},
          "effectivePeriod": {"start": "2021-03-01T08:00:00", "end": "2021-03-01T09:00:00"}}
    f = tmp_path / "b.json"
    f.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                "entry": [{"resource": r} for r in (pat, rs, site, consent, ma)]}))
    return f


STUDY = Study(identification=Identification(nct_id="NCT00000001", org_study_id=OrgStudyId(id="PROT-1")),
              arms_interventions=ArmsInterventions(arm_groups=(ArmGroup(label="Drug A"),),
                                                 interventions=(Intervention(type="DRUG", name="Drug A"),)))


@pytest.mark.parametrize("r5", [False, True])
def test_dm_from_patient_and_research_subject(tmp_path: Path, r5: bool) -> None:
    report = ConversionReport()
    convert_subjects([_bundle(tmp_path, r5)], tmp_path / "out",
                     options=Options(study=STUDY, sdtm_formats=("json", "csv")), report=report)
    dm = pd.read_csv(tmp_path / "out" / "dm.csv", dtype=str).iloc[0]
    assert dm["STUDYID"] == "PROT-1" and dm["USUBJID"] == "PROT-1-1001" and dm["SUBJID"] == "1001"
    assert dm["SITEID"] == "SITE-07" and dm["COUNTRY"] == "DEU"
    assert dm["SEX"] == "F"                       # birth sex wins over gender (rule dm.SEX)
    assert dm["RACE"] == "MULTIPLE"
    assert (dm["ARM"], dm["ARMCD"], dm["ACTARM"]) == ("Drug A", "DRUG_A", "Drug A")  # as TA derives it
    assert dm["RFICDTC"] == "2021-02-01" and dm["RFSTDTC"] == "2021-03-01T08:00:00"
    assert dm["AGE"] == "60" and dm["AGEU"] == "YEARS"
    supp = pd.read_csv(tmp_path / "out" / "suppdm.csv", dtype=str)
    assert set(supp["QVAL"]) == {"WHITE", "ASIAN"} and set(supp["QNAM"]) == {"RACE1", "RACE2"}
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir()) + orjson.dumps(report.to_json())
    assert b"Hidden" not in blob and b"555-0100" not in blob and b"9 Lane" not in blob


def test_studyid_override(tmp_path: Path) -> None:
    convert_subjects([_bundle(tmp_path, False)], tmp_path / "out",
                     options=Options(study=STUDY, studyid="OVR", sdtm_formats=("csv",)), report=ConversionReport())
    assert pd.read_csv(tmp_path / "out" / "dm.csv")["STUDYID"].tolist() == ["OVR"]


def test_rfpendtc_is_the_disposition_date_else_the_last_record_date(tmp_path):
    """Sample: subjects with a disposition event end participation at its date (COMPLETED or the
    withdrawal); the ongoing subject at the latest date of any of its records (rule dm.RFPENDTC)."""
    from conftest import SAMPLES
    from trialbridge.cli import main
    from trialbridge.sdtm.datasetjson import read_dataset_json
    sample = SAMPLES / "NCT04835883"
    assert main(["convert", str(sample / "subjects.bundle.json"), "--to", "sdtm", "--study",
                 str(sample / "ctgov.json"), "-o", str(tmp_path)]) == 0
    dm, _ = read_dataset_json(tmp_path / "dm.json")
    ds, _ = read_dataset_json(tmp_path / "ds.json")
    sv, _ = read_dataset_json(tmp_path / "sv.json")
    disp = ds[ds["DSCAT"] == "DISPOSITION EVENT"].groupby("USUBJID")["DSSTDTC"].max()
    got = dict(zip(dm["USUBJID"], dm["RFPENDTC"], strict=True))
    assert len(disp) == 9 and all(got[u] == d for u, d in disp.items())
    (ongoing,) = set(got) - set(disp.index)
    assert got[ongoing] == max(sv.loc[sv["USUBJID"] == ongoing, "SVENDTC"])


def _patient_bundle(tmp_path: Path, pat: dict, *more: dict) -> Path:
    f = tmp_path / "p.json"
    f.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in (pat, *more)]}))
    return f


def test_rfpendtc_is_not_before_the_death_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SDTMIG 3.4 DM RFPENDTC 'Should correspond to the last known date of contact', the death date among
    its examples: without a disposition event, a subject who died after the last record ends participation
    at the death date (was: the last record date, a day before DTHDTC on the Synthea bundle)."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "A1"}],
           "gender": "male", "birthDate": "1949-04-19", "deceasedDateTime": "2008-11-12T12:17:10",
           "address": [{"country": "US"}]}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"},
           "class": {"code": "AMB"}, "period": {"start": "2008-11-11T11:00:00", "end": "2008-11-11T12:17:10"}}
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    report = ConversionReport()
    convert_subjects([_patient_bundle(tmp_path, pat, enc)], tmp_path / "out",
                     options=Options(studyid="S1", sdtm_formats=("csv",)), report=report)
    dm = pd.read_csv(tmp_path / "out" / "dm.csv", dtype=str).iloc[0]
    assert dm["DTHFL"] == "Y" and dm["DTHDTC"] == "2008-11-12T12:17:10"
    assert dm["RFPENDTC"] == "2008-11-12T12:17:10"


def test_birth_time_offset_dropped_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRTHDTC from the patient-birthTime extension keeps the local clock time; the UTC offset it drops
    is reported like every other --DTC's (rule subject.dtc-zone), not lost silently."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "A1"}],
           "gender": "male", "birthDate": "1974-12-25", "address": [{"country": "US"}],
           "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                         "valueDateTime": "1974-12-25T14:35:45-05:00"}]}}
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    report = ConversionReport()
    convert_subjects([_patient_bundle(tmp_path, pat)], tmp_path / "out",
                     options=Options(studyid="S1", sdtm_formats=("csv",)), report=report)
    dm = pd.read_csv(tmp_path / "out" / "dm.csv", dtype=str).iloc[0]
    assert dm["BRTHDTC"] == "1974-12-25T14:35:45"
    zone = [i for i in report.issues if i.rule == "subject.dtc-zone"]
    assert zone and "BRTHDTC -05:00 x1" in zone[0].message


def test_armnrs_when_no_actual_arm(tmp_path: Path) -> None:
    """SDTMIG 3.4 DM: ARMNRS is the reason ARM and/or ACTARM are null. An R4 ResearchSubject with an
    assignedArm and no actualArm, and no study-drug administration: ASSIGNED, NOT TREATED (CT C142179);
    the same subject with exposure: the reason is unknown, reported missing (not guessed)."""
    from trialbridge.sdtm.ct import pinned_ct
    assert pinned_ct().term("ARMNULRS", "ASSIGNED, NOT TREATED") is not None
    src = _bundle(tmp_path, False)
    b = orjson.loads(src.read_bytes())
    rs = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "ResearchSubject")
    del rs["actualArm"]
    treated = tmp_path / "treated.json"
    treated.write_bytes(orjson.dumps(b))
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] != "MedicationAdministration"]
    untreated = tmp_path / "untreated.json"
    untreated.write_bytes(orjson.dumps(b))
    for src, want in ((untreated, "ASSIGNED, NOT TREATED"), (treated, None)):
        report = ConversionReport()
        out = tmp_path / src.stem
        convert_subjects([src], out, options=Options(study=STUDY, sdtm_formats=("csv",)), report=report)
        dm = pd.read_csv(out / "dm.csv", dtype=str, keep_default_na=False).iloc[0]
        assert dm["ARMCD"] == "DRUG_A" and dm["ACTARMCD"] == ""
        assert (dm["ARMNRS"] or None) == want
        missing = [i for i in report.issues if i.rule == "dm.ARMNRS" and i.kind.value == "missing"]
        assert bool(missing) == (want is None)


def test_missing_siteid_reported_once_per_subject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Patient with no site information: one missing SITEID issue (it was reported twice, once by the
    identity step uncapped and once by DM), naming the Patient and its file."""
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "A1"}],
           "gender": "male", "birthDate": "1960-01-01", "address": [{"country": "US"}]}
    report = ConversionReport()
    convert_subjects([_patient_bundle(tmp_path, pat)], tmp_path / "out",
                     options=Options(studyid="S1", sdtm_formats=("csv",)), report=report)
    site = [i for i in report.issues if i.rule == "dm.SITEID" and i.kind.value == "missing"]
    assert [(i.record, i.file) for i in site] == [("Patient/p1", "p.json")]


def test_epoch_only_from_the_epochs_of_ta(tmp_path: Path) -> None:
    """SDTMIG 3.4 section 4.1.3.1: EPOCH of a subject record is an epoch of the trial design (TA). The
    study definition names no screening and no follow-up, so its TA has the TREATMENT epoch only: a visit
    between consent and first dose (by date SCREENING) and one after the last dose (FOLLOW-UP) get no
    EPOCH (each value reported once), instead of epochs the TA does not have."""
    from trialbridge.sdtm.tdm_design import build_ta_te
    study = Study(identification=STUDY.identification, arms_interventions=ArmsInterventions(
        arm_groups=(ArmGroup(label="Drug A", intervention_names=("Drug: Drug A",)),),
        interventions=(Intervention(type="DRUG", name="Drug A"),)))
    ta, _ = build_ta_te(study, ConversionReport())
    assert {r["EPOCH"] for r in ta} == {"TREATMENT"}
    src = _bundle(tmp_path, False)
    b = orjson.loads(src.read_bytes())
    amb = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    for i, d in enumerate(["2021-02-10", "2021-03-01", "2021-04-20"]):
        b["entry"].append({"resource": {"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
                                        "class": amb, "subject": {"reference": "Patient/p1"},
                                        "period": {"start": d, "end": d}}})
    src.write_bytes(orjson.dumps(b))
    report = ConversionReport()
    convert_subjects([src], tmp_path / "out", options=Options(study=study, sdtm_formats=("csv",)), report=report)
    sv = pd.read_csv(tmp_path / "out" / "sv.csv", dtype=str, keep_default_na=False)
    assert sv["EPOCH"].tolist() == ["", "TREATMENT", ""]
    lossy = sorted(i.message.split(" (")[0] for i in report.issues if i.rule == "subject.epoch" and i.kind.value == "lossy")
    assert lossy == ["EPOCH FOLLOW-UP", "EPOCH SCREENING"]


def test_actual_arm_outside_the_plan_is_unplanned_treatment(tmp_path: Path) -> None:
    """SDTMIG 3.4 DM: ACTARMCD/ACTARM hold a planned arm (TA); a subject treated outside every planned arm
    has them null, ARMNRS UNPLANNED TREATMENT (CT C142179) and ACTARMUD describing the treatment. An R4
    actualArm matching no arm group of the study gave ACTARM/ACTARMCD values that are in no TA row."""
    from trialbridge.sdtm.ct import pinned_ct
    assert pinned_ct().term("ARMNULRS", "UNPLANNED TREATMENT") is not None
    src = _bundle(tmp_path, False)
    b = orjson.loads(src.read_bytes())
    rs = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "ResearchSubject")
    rs["actualArm"] = "Drug A then rescue therapy"
    src.write_bytes(orjson.dumps(b))
    report = ConversionReport()
    convert_subjects([src], tmp_path / "out", options=Options(study=STUDY, sdtm_formats=("csv",)), report=report)
    dm = pd.read_csv(tmp_path / "out" / "dm.csv", dtype=str, keep_default_na=False).iloc[0]
    assert (dm["ARMCD"], dm["ARM"]) == ("DRUG_A", "Drug A")
    assert (dm["ACTARMCD"], dm["ACTARM"]) == ("", "")
    assert (dm["ARMNRS"], dm["ACTARMUD"]) == ("UNPLANNED TREATMENT", "Drug A then rescue therapy")


def test_age_without_a_reference_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rule dm.AGE: with no RFSTDTC and no consent date, AGE at the first Encounter only when a study
    definition makes the encounters its visits; an EHR record alone (whose first encounter may be the
    birth: AGE 0 for a 59-year-old) gives no AGE, reported missing with the record."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "A1"}],
           "gender": "male", "birthDate": "1949-04-19", "address": [{"country": "US"}]}
    birth = {"resourceType": "Encounter", "id": "e0", "status": "finished", "subject": {"reference": "Patient/p1"},
             "class": {"code": "AMB"}, "period": {"start": "1949-04-19T08:00:00"}}
    later = dict(birth, id="e1", period={"start": "2008-11-11T11:00:00"})
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    report = ConversionReport()
    convert_subjects([_patient_bundle(tmp_path, pat, birth, later)], tmp_path / "ehr",
                     options=Options(studyid="S1", sdtm_formats=("csv",)), report=report)
    dm = pd.read_csv(tmp_path / "ehr" / "dm.csv", dtype=str, keep_default_na=False).iloc[0]
    assert (dm["AGE"], dm["AGEU"]) == ("", "")
    [age] = [i for i in report.issues if i.rule == "dm.AGE"]
    assert age.kind.value == "missing" and age.record == "Patient/p1"
    report = ConversionReport()
    screening = dict(later, id="e2", period={"start": "2008-11-01T09:00:00"})
    convert_subjects([_patient_bundle(tmp_path, pat, screening, later)], tmp_path / "study",
                     options=Options(study=STUDY, sdtm_formats=("csv",)), report=report)
    dm = pd.read_csv(tmp_path / "study" / "dm.csv", dtype=str, keep_default_na=False).iloc[0]
    assert (dm["AGE"], dm["AGEU"]) == ("59", "YEARS")
    assert [i.kind.value for i in report.issues if i.rule == "dm.AGE"] == ["inferred"]
