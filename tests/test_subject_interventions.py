"""CM, EX, PR from FHIR: the NCT04835883 sample, official HL7 examples, Synthea, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLES, shared_path
from test_subject_events import check_domain, convert, read

SAMPLE = SAMPLES / "NCT04835883"


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")


def test_sample_interventions(tmp_path: Path) -> None:
    if not (SAMPLE / "ctgov.json").exists():
        pytest.skip("samples/NCT04835883/ctgov.json not present yet")
    rc, report = convert([SAMPLE / "subjects.bundle.json"], tmp_path, "--study", str(SAMPLE / "ctgov.json"))
    assert rc == 0
    cm, ex, pr = (read(tmp_path, d) for d in ("CM", "EX", "PR"))
    for dom, df in (("CM", cm), ("EX", ex), ("PR", pr)):
        assert len(df), dom
        check_domain(df, dom)
    # study drug by the study definition's intervention name: day 0 and week 12 infusions only
    assert set(ex["EXTRT"]) == {"CS20AT04 (allogenic bone marrow derived mesenchymal stem cell)"}
    assert len(ex) == 2 * 8 + 1 + 2        # 8 completers x2, withdrawn x1 (left at week 8), ongoing x2
    assert set(ex["EXROUTE"]) == {"INTRAVENOUS"} and set(ex["EXDOSU"]) == {"10^6 Therapeutic Cells"}
    assert "CS20AT04" not in " ".join(cm["CMTRT"])
    assert {"QD", "BID", "ONCE"} <= set(cm["CMDOSFRQ"])
    pred = cm[cm["CMTRT"].str.startswith("Prednisone")]
    assert sorted(set(pred["CMDOSE"].astype(float))) == [7.5, 10, 15, 20, 25, 30][: len(set(pred["CMDOSE"]))] \
        or {7.5, 10.0, 15.0} <= set(pred["CMDOSE"].astype(float))
    nd = pr[pr["PRSTAT"] == "NOT DONE"]
    assert len(nd) == 1 and nd.iloc[0]["PRREASND"] and nd.iloc[0]["PRSTDTC"] == ""
    assert set(pr["PRLOC"]) == {"KIDNEY"}
    assert any(i.get("rule") == "ex.study-drug" for i in report["issues"])


def test_without_study_definition_nothing_is_study_drug(tmp_path: Path) -> None:
    rc, report = convert([SAMPLE / "subjects.bundle.json"], tmp_path)
    assert rc == 0
    assert read(tmp_path, "EX").empty
    assert "CS20AT04" in " ".join(read(tmp_path, "CM")["CMTRT"])
    assert any(i.get("rule") == "ex.study-drug" and i["kind"] == "missing" for i in report["issues"])


def test_official_examples_convert(tmp_path: Path) -> None:
    base = shared_path("fhir", "hl7.fhir.r4.examples-4.0.1")
    files = sorted(base.glob("Patient-*.json")) + sorted(base.glob("MedicationStatement-example*.json")) + \
        sorted(base.glob("Procedure-example*.json"))[:15]
    rc, report = convert(files, tmp_path / "r4", "--studyid", "EX1")
    assert rc in (0, 1)
    for dom in ("CM", "PR"):
        df = read(tmp_path / "r4", dom)
        if len(df):
            check_domain(df, dom)
    assert len(read(tmp_path / "r4", "PR")) or len(read(tmp_path / "r4", "CM"))
    base5 = shared_path("fhir", "hl7.fhir.r5.examples-5.0.0")
    files5 = sorted(base5.glob("Patient-*.json")) + sorted(base5.glob("MedicationStatement-example*.json")) + \
        sorted(base5.glob("Procedure-example*.json"))[:15]
    rc, _ = convert([f for f in files5 if f.exists()], tmp_path / "r5", "--studyid", "EX5")
    assert rc in (0, 1)
    for dom in ("CM", "PR"):
        df = read(tmp_path / "r5", dom)
        if len(df):
            check_domain(df, dom)


def test_synthea_interventions_convert(tmp_path: Path) -> None:
    base = shared_path("fhir", "synthea_r4_bundles")
    rc, report = convert(sorted(base.glob("*.json"))[:2], tmp_path, "--studyid", "SYN")
    assert rc in (0, 1)
    for dom in ("CM", "PR"):
        df = read(tmp_path, dom)
        assert len(df), dom
        check_domain(df, dom)


def test_bad_medication_resources_are_reported(tmp_path: Path) -> None:
    pat = {"resourceType": "Patient", "id": "p1"}
    rs = {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study", "study": {"reference": "ResearchStudy/x"},
          "individual": {"reference": "Patient/p1"}, "identifier": [{"value": "S1"}]}
    ms = {"resourceType": "MedicationStatement", "id": "ms1", "status": "active", "subject": {"reference": "Patient/p1"},
          "medicationCodeableConcept": {"text": "Aspirin"}, "effectiveDateTime": "yesterday",
          "dosage": [{"route": {"coding": [{"system": "http://snomed.info/sct", "code": "999999"}]},
                      "doseAndRate": [{"doseQuantity": {"value": 1, "system": "http://unitsofmeasure.org",
                                                        "code": "{puff}"}}]}]}
    noname = {"resourceType": "MedicationStatement", "id": "ms2", "status": "active",
              "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/gone"}}
    err = {"resourceType": "Procedure", "id": "pr1", "status": "entered-in-error", "subject": {"reference": "Patient/p1"},
           "code": {"text": "X-ray"}}
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, rs, ms, noname, err)]}))
    rc, report = convert([src], tmp_path / "o", "--studyid", "BAD")
    got = {(i.get("record"), i.get("rule"), i["kind"]) for i in report["issues"]}
    assert ("MedicationStatement/ms1", "cm.CMROUTE", "unmapped-code") in got
    assert ("MedicationStatement/ms1", "cm.CMDOSU", "unmapped-code") in got
    assert ("MedicationStatement/ms1", "cm.CMSTDTC", "invalid-value") in got
    assert ("MedicationStatement/ms2", "cm.CMTRT", "error") in got
    assert ("Procedure/pr1", "pr.status", "lossy") in got
    assert rc == 1
    cm = read(tmp_path / "o", "CM")
    assert list(cm["CMROUTE"]) == [""] and list(cm["CMDOSU"]) == [""]


def test_indication_from_the_first_reason_only(tmp_path: Path) -> None:
    """--INDC reads the first reason item (read_elements.yaml nested: items first); a later item is
    reported by subject.unread-nested, never read in the first's place; a first concept of codes only
    is reported lossy; EX has no --INDC, so a study-drug administration's reason is reported lossy."""
    if not (SAMPLE / "ctgov.json").exists():
        pytest.skip("samples/NCT04835883/ctgov.json not present yet")
    subj = {"reference": "Patient/p1"}
    pat = {"resourceType": "Patient", "id": "p1"}
    rs = {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study", "study": {"reference": "ResearchStudy/x"},
          "individual": subj, "identifier": [{"value": "S1"}]}
    cond = {"resourceType": "Condition", "id": "c1", "subject": subj, "code": {"text": "Lupus nephritis"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "problem-list-item"}]}]}
    code_only = {"coding": [{"system": "http://snomed.info/sct", "code": "25064002"}]}
    ms1 = {"resourceType": "MedicationStatement", "id": "ms1", "status": "active", "subject": subj,
           "medicationCodeableConcept": {"text": "Aspirin"}, "effectiveDateTime": "2020-01-01",
           "reasonCode": [code_only, {"text": "Headache"}]}
    ms2 = {"resourceType": "MedicationStatement", "id": "ms2", "status": "active", "subject": subj,
           "medicationCodeableConcept": {"text": "Ibuprofen"}, "effectiveDateTime": "2020-01-02",
           "reasonReference": [{"reference": "Condition/c1"}]}
    pr1 = {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": subj,
           "code": {"text": "Kidney biopsy"}, "performedDateTime": "2020-01-03",
           "reasonCode": [{"text": "Proteinuria"}, {"text": "Haematuria"}]}
    ma = {"resourceType": "MedicationAdministration", "id": "ma1", "status": "completed", "subject": subj,
          "medicationCodeableConcept": {"text": "CS20AT04"}, "effectiveDateTime": "2020-01-04",
          "reasonCode": [code_only]}
    src = tmp_path / "reasons.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, rs, cond, ms1, ms2, pr1, ma)]}))
    rc, report = convert([src], tmp_path / "o", "--study", str(SAMPLE / "ctgov.json"))
    assert rc in (0, 1), report.get("counts")
    cm = read(tmp_path / "o", "CM").set_index("CMTRT")
    assert cm.loc["Aspirin", "CMINDC"] == ""            # not "Headache": the second item is not read
    assert cm.loc["Ibuprofen", "CMINDC"] == "Lupus nephritis"
    assert list(read(tmp_path / "o", "PR")["PRINDC"]) == ["Proteinuria"]
    assert len(read(tmp_path / "o", "EX")) == 1
    issues = report["issues"]
    assert any(i.get("rule") == "cm.CMINDC" and i["kind"] == "lossy" for i in issues)
    assert any(i.get("rule") == "ex.reason" and i["kind"] == "lossy" and i["message"].startswith("1 ")
               for i in issues)
    nested = " ".join(json.dumps(i) for i in issues if i.get("rule") == "subject.unread-nested")
    assert "MedicationStatement.reasonCode[2+]" in nested and "Procedure.reasonCode[2+]" in nested


def test_dose_without_unit_is_reported_missing(tmp_path: Path) -> None:
    """SDTMIG 3.4 CM/EX: --DOSU is the unit of --DOSE. A doseQuantity with a value and neither code nor
    unit gives --DOSE with an empty --DOSU: reported missing per record (rule cm.CMDOSU), not silently."""
    pat = {"resourceType": "Patient", "id": "p1"}
    rs = {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study", "study": {"reference": "ResearchStudy/x"},
          "individual": {"reference": "Patient/p1"}, "identifier": [{"value": "S1"}]}
    ms = {"resourceType": "MedicationStatement", "id": "ms1", "status": "completed", "subject": {"reference": "Patient/p1"},
          "medicationCodeableConcept": {"text": "Aspirin"}, "effectiveDateTime": "2020-01-01",
          "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 500}}]}]}
    ok = {"resourceType": "MedicationStatement", "id": "ms2", "status": "completed", "subject": {"reference": "Patient/p1"},
          "medicationCodeableConcept": {"text": "Ibuprofen"}, "effectiveDateTime": "2020-01-01",
          "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 200, "system": "http://unitsofmeasure.org",
                                                        "code": "mg"}}]}]}
    src = tmp_path / "dose.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, rs, ms, ok)]}))
    convert([src], tmp_path / "o", "--studyid", "DOSE")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    got = [(i.get("record"), i["kind"], i.get("target")) for i in report["issues"] if i.get("rule") == "cm.CMDOSU"]
    assert got == [("MedicationStatement/ms1", "missing", "CMDOSU")]
    cm = read(tmp_path / "o", "CM").set_index("CMTRT")
    assert cm.at["Aspirin", "CMDOSE"] == "500" and cm.at["Aspirin", "CMDOSU"] == ""
    assert cm.at["Ibuprofen", "CMDOSU"] == "mg"
