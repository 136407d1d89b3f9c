"""SDTM -> FHIR emitted values checked one by one (value-level review of the reverse direction).

- AdverseEvent code: AEPTCD is Num in SDTM (read as a float); FHIR Coding.code is a string — the
  MedDRA code's integer text ('10019211', never 10019211.0 or '10019211.0').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from fhir_study_support import resources, sdtm_to_fhir_checked
from trialbridge.report import ConversionReport

DM = {"STUDYID": ["S1"], "DOMAIN": ["DM"], "USUBJID": ["S1-001"], "SUBJID": ["001"], "SITEID": ["01"],
      "SEX": ["F"], "RFSTDTC": ["2020-01-01"]}


def _frame(domain: str, cols: dict[str, list[Any]]) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"STUDYID": ["S1"] * n, "DOMAIN": [domain] * n, "USUBJID": ["S1-001"] * n,
                         f"{domain}SEQ": list(range(1, n + 1)), **cols})


def _write(folder: Path, out: Path, version: str) -> tuple[dict[str, Any], ConversionReport]:
    bundle, report, _ = sdtm_to_fhir_checked(folder, out, version)
    return bundle, report


def _folder(tmp_path: Path, **domains: dict[str, list[Any]]) -> Path:
    folder = tmp_path / "sdtm"
    folder.mkdir()
    pd.DataFrame(DM).to_csv(folder / "dm.csv", index=False)
    for dom, cols in domains.items():
        _frame(dom, cols).to_csv(folder / f"{dom.lower()}.csv", index=False)
    return folder


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_meddra_code_is_the_integer_text(tmp_path: Path, version: str) -> None:
    folder = _folder(tmp_path, AE={"AETERM": ["HEADACHE", "NAUSEA"], "AEDECOD": ["Headache", "Nausea"],
                                   "AEPTCD": [10019211, None], "AESTDTC": ["2020-01-03", "2020-01-04"]})
    bundle, _ = _write(folder, tmp_path / "out", version)
    elem = "code" if version == "R5" else "event"
    codings = {r[elem]["text"]: r[elem]["coding"][0] for r in resources(bundle, "AdverseEvent")}
    assert codings["HEADACHE"] == {"system": "http://terminology.hl7.org/CodeSystem/mdr", "code": "10019211",
                                   "display": "Headache"}
    assert "code" not in codings["NAUSEA"]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_race_and_ethnicity_unknown_or_not_reported_as_us_core_null_flavors(tmp_path: Path, version: str) -> None:
    """US Core ombCategory value sets (omb-race-category, omb-ethnicity-category) include v3-NullFlavor
    UNK and ASKU: RACE/ETHNIC UNKNOWN and NOT REPORTED (CT C74457/C66790) get them, as FHIR -> SDTM
    reads them back (codes/fhir_sdtm_codes.csv); they were text only, reported unmapped."""
    folder = tmp_path / "sdtm"
    folder.mkdir()
    dm = {k: v * 2 for k, v in DM.items()}
    dm.update(USUBJID=["S1-001", "S1-002"], SUBJID=["001", "002"], RACE=["UNKNOWN", "NOT REPORTED"],
              ETHNIC=["NOT REPORTED", "UNKNOWN"])
    pd.DataFrame(dm).to_csv(folder / "dm.csv", index=False)
    bundle, report = _write(folder, tmp_path / "out", version)
    nf = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
    unk = {"system": nf, "code": "UNK", "display": "unknown"}
    asku = {"system": nf, "code": "ASKU", "display": "asked but unknown"}
    got = {}
    for p in resources(bundle, "Patient"):
        ext = {e["url"].rsplit("-", 1)[1]: e["extension"] for e in p["extension"] if "us-core" in e["url"]}
        got[p["identifier"][0]["value"]] = {k: [s.get("valueCoding") or s["valueString"] for s in v]
                                            for k, v in ext.items()}
    assert got == {"S1-001": {"race": [unk, "UNKNOWN"], "ethnicity": [asku, "NOT REPORTED"]},
                   "S1-002": {"race": [asku, "NOT REPORTED"], "ethnicity": [unk, "UNKNOWN"]}}
    assert not [i for i in report.issues if i.source in ("DM.RACE", "DM.ETHNIC")]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_procedure_not_done_and_its_body_site(tmp_path: Path, version: str) -> None:
    """PRSTAT NOT DONE is Procedure.status not-done with PRREASND as statusReason (it was 'completed');
    PRLOC a CT LOC term gets its NCIt coding and the SNOMED CT code of codes/fhir_body_site.csv (it was
    text only, which FHIR -> SDTM cannot read back); a sponsor site keeps its text, in the sdtm extension."""
    folder = _folder(tmp_path, PR={"PRTRT": ["Renal biopsy", "Renal biopsy", "Skin biopsy"],
                                   "PRSTAT": [None, "NOT DONE", None],
                                   "PRREASND": [None, "Biopsy within the previous year available", None],
                                   "PRLOC": ["KIDNEY", "KIDNEY", "LEFT FOREARM SKIN"],
                                   "PRSTDTC": ["2020-01-02", None, "2020-01-03"]})
    bundle, report = _write(folder, tmp_path / "out", version)
    procs = {r["identifier"][0]["value"]: r for r in resources(bundle, "Procedure")}
    assert [procs[s]["status"] for s in ("1", "2", "3")] == ["completed", "not-done", "completed"]
    assert procs["2"]["statusReason"] == {"text": "Biopsy within the previous year available"}
    assert "statusReason" not in procs["1"]
    assert procs["1"]["bodySite"] == [{"text": "KIDNEY", "coding": [
        {"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C12415", "display": "Kidney"},
        {"system": "http://snomed.info/sct", "code": "64033007"}]}]
    assert procs["3"]["bodySite"] == [{"text": "LEFT FOREARM SKIN"}]
    sdtm = {e["url"]: e.get("valueString") for x in procs["3"]["extension"] for e in x.get("extension", [])}
    assert sdtm["PRLOC"] == "LEFT FOREARM SKIN"
    assert any(i.source == "PR.PRLOC" and "not a term of the CDISC CT codelist LOC" in i.message
               for i in report.issues)


def test_sample_roundtrip_has_no_unexplained_difference(tmp_path: Path) -> None:
    """SDTM -> FHIR -> SDTM on the project sample: every difference is explained by a report entry. The
    sample showed SVOCCUR (92 visits: SVOCCUR Y came back empty beside SVPRESP Y) and PRLOC (6 records:
    a text-only bodySite) lost with no entry."""
    from conftest import SAMPLES
    from trialbridge.roundtrip import run_roundtrip
    table, _, _ = run_roundtrip(SAMPLES / "NCT04835883" / "sdtm-subjects", tmp_path / "rt", fhir_version="R5")
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    assert [k for k, r in rows.items() if r.unexplained] == []
    # the one missed visit (SVOCCUR N) is the cancelled Encounter FHIR -> SDTM drops without TV (reported)
    assert (rows["SV.SVOCCUR"].equal, rows["SV.SVOCCUR"].lost) == (92, 1)
    # LBSPEC carried in the sdtm extension wins over the LOINC-row inference (SERUM came back SERUM OR PLASMA
    # for 288 records, "explained" by an unrelated LOINC 62238-1 entry)
    assert rows["LB.LBSPEC"].ratio == 1.0
    assert rows["PR.PRLOC"].ratio == 1.0 and rows["PR.PRSTAT"].ratio == 1.0 and rows["PR.PRREASND"].ratio == 1.0


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_medication_not_taken_is_no_statement_of_a_medication_taken(tmp_path: Path, version: str) -> None:
    """CMOCCUR N / CMSTAT NOT DONE (SDTMIG 3.4): R4 MedicationStatement.status not-taken, R5 adherence
    not-taking (CodeSystem medication-statement-adherence); both were written as taken (unknown/recorded)."""
    folder = _folder(tmp_path, CM={"CMTRT": ["ASPIRIN", "IBUPROFEN", "PARACETAMOL"],
                                   "CMPRESP": ["Y", "Y", None], "CMOCCUR": ["N", "Y", None],
                                   "CMSTAT": [None, None, "NOT DONE"]})
    bundle, _ = _write(folder, tmp_path / "out", version)
    meds = {r["medication"]["concept"]["text"] if version == "R5" else r["medicationCodeableConcept"]["text"]: r
            for r in resources(bundle, "MedicationStatement")}
    if version == "R4":
        assert {k: r["status"] for k, r in meds.items()} == {"ASPIRIN": "not-taken", "IBUPROFEN": "unknown",
                                                             "PARACETAMOL": "not-taken"}
    else:
        assert {r["status"] for r in meds.values()} == {"recorded"}
        adh = {k: r.get("adherence") for k, r in meds.items()}
        code = {"code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/medication-statement-adherence",
                                     "code": "not-taking", "display": "Not Taking"}]}}
        assert adh == {"ASPIRIN": code, "IBUPROFEN": None, "PARACETAMOL": code}
    sdtm = {e["url"]: e["valueString"] for x in meds["ASPIRIN"]["extension"] for e in x.get("extension", [])}
    assert sdtm["CMOCCUR"] == "N"


def test_r5_adverse_event_status_of_an_ongoing_event(tmp_path: Path) -> None:
    """R5 AdverseEvent.status is the state of the event: an AE with no end that is ongoing (AEENRTPT
    ONGOING, AEOUT NOT RECOVERED/NOT RESOLVED or RECOVERING/RESOLVING) is in-progress; it was 'completed'."""
    folder = _folder(tmp_path, AE={"AETERM": ["RASH", "COUGH", "HEADACHE", "FEVER"],
                                   "AEOUT": ["NOT RECOVERED/NOT RESOLVED", None, "RECOVERED/RESOLVED",
                                             "RECOVERING/RESOLVING"],
                                   "AEENRTPT": [None, "ONGOING", None, None], "AEENTPT": [None, "2020-02-01", None, None],
                                   "AESTDTC": ["2020-01-03"] * 4, "AEENDTC": [None, None, "2020-01-05", "2020-01-09"]})
    bundle, _ = _write(folder, tmp_path / "out", "R5")
    status = {r["code"]["text"]: r["status"] for r in resources(bundle, "AdverseEvent")}
    assert status == {"RASH": "in-progress", "COUGH": "in-progress", "HEADACHE": "completed", "FEVER": "completed"}


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_vs_reference_range_has_the_ucum_code_of_the_result(tmp_path: Path, version: str) -> None:
    """The reference range limits are in the result's unit and carry its UCUM code: for heart rate the
    '/min' the vital-signs profile fixes (valueQuantity had '/min', the range '{beats}/min')."""
    folder = _folder(tmp_path, VS={"VSTESTCD": ["HR", "SYSBP"], "VSTEST": ["Heart Rate", "Systolic Blood Pressure"],
                                   "VSORRES": ["72", "120"], "VSORRESU": ["beats/min", "mmHg"],
                                   "VSORNRLO": ["60", "90"], "VSORNRHI": ["100", "140"],
                                   "VSDTC": ["2020-01-02", "2020-01-02"]})
    bundle, _ = _write(folder, tmp_path / "out", version)
    for obs in resources(bundle, "Observation"):
        (rr,) = obs["referenceRange"]
        assert rr["low"]["code"] == rr["high"]["code"] == obs["valueQuantity"]["code"], obs["code"]
    hr = next(o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == "HR")
    assert hr["referenceRange"][0]["low"] == {"value": 60, "unit": "beats/min", "system": "http://unitsofmeasure.org",
                                              "code": "/min"}


def test_dose_unit_without_ucum_code_comes_back(tmp_path: Path) -> None:
    """A CMDOSU/EXDOSU with no UCUM code (the CDISC pilot's IN and % (v/v)) is Quantity.unit text only,
    which FHIR -> SDTM does not read back: it is also kept in the sdtm extension (63 pilot CMDOSU were
    lost on the round trip)."""
    from trialbridge.roundtrip import run_roundtrip
    folder = _folder(tmp_path, CM={"CMTRT": ["CREAM", "ASPIRIN"], "CMDOSE": [1, 100], "CMDOSU": ["IN", "mg"]},
                     EX={"EXTRT": ["DRUG"], "EXDOSE": [2], "EXDOSU": ["% (v/v)"], "EXSTDTC": ["2020-01-02"]})
    bundle, report = _write(folder, tmp_path / "out", "R5")
    cm = {r["medication"]["concept"]["text"]: r for r in resources(bundle, "MedicationStatement")}
    assert cm["CREAM"]["dosage"][0]["doseAndRate"][0]["doseQuantity"] == {"value": 1, "unit": "IN"}
    sdtm = {e["url"]: e["valueString"] for x in cm["CREAM"].get("extension", []) for e in x.get("extension", [])}
    assert sdtm == {"CMDOSU": "IN"} and "extension" not in cm["ASPIRIN"]
    table, _, _ = run_roundtrip(folder, tmp_path / "rt", fhir_version="R5")
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    assert rows["CM.CMDOSU"].ratio == 1.0 and rows["EX.EXDOSU"].ratio == 1.0


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_disposition_reason_has_the_ncit_coding_of_its_codelist(tmp_path: Path, version: str) -> None:
    """DSDECOD, a CT term of the codelist DSCAT names (NCOMPLT / PROTMLST), also gets its NCIt coding;
    a sponsor term keeps the project coding only."""
    folder = _folder(tmp_path, DS={"DSTERM": ["Completed", "Informed consent obtained", "Final lab visit"],
                                   "DSDECOD": ["COMPLETED", "INFORMED CONSENT OBTAINED", "FINAL LAB VISIT"],
                                   "DSCAT": ["DISPOSITION EVENT", "PROTOCOL MILESTONE", "OTHER EVENT"],
                                   "DSSTDTC": ["2020-03-01", "2019-12-01", "2020-03-01"]})
    bundle, _ = _write(folder, tmp_path / "out", version)
    (rs,) = resources(bundle, "ResearchSubject")
    if version == "R5":
        reasons = [p["reason"] for p in rs["progress"]]
    else:
        reasons = [s["valueCodeableConcept"] for e in rs["extension"] for s in e["extension"] if s["url"] == "reason"]
    ncit = {r["text"]: [c for c in r["coding"] if c["system"] == "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"]
            for r in reasons}
    assert ncit["Completed"] == [{"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C25250",
                                  "display": "Complete"}]
    assert ncit["Informed consent obtained"][0]["code"] == "C16735"
    assert ncit["Final lab visit"] == []


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_disposition_time_without_a_zone_comes_back(tmp_path: Path, version: str) -> None:
    """A DSSTDTC with a time and no zone (FHIR dateTime cannot hold it: startDate is cut to the date) is
    kept as the original SDTM text — R5: the sdtm-dtc extension of startDate; R4: carried DSSTDTC in the
    item's sdtm extension, since an extension's value[x] takes no primitive extension in fhir.resources
    R4B (whose models check the R4 bundle in ``_write``) — and FHIR -> SDTM gives the time back."""
    from trialbridge.pipeline import Options
    from trialbridge.subject.pipeline import convert_subjects
    folder = _folder(tmp_path, DS={"DSTERM": ["Informed consent obtained"], "DSDECOD": ["INFORMED CONSENT OBTAINED"],
                                   "DSCAT": ["PROTOCOL MILESTONE"], "DSSTDTC": ["2019-10-11T09:07:00"]})
    bundle, _ = _write(folder, tmp_path / "out", version)
    src = tmp_path / "b.json"
    src.write_bytes(orjson.dumps(bundle))
    convert_subjects([src], tmp_path / "back", options=Options(studyid="S1", sdtm_formats=("csv",)),
                     report=ConversionReport())
    ds = pd.read_csv(tmp_path / "back" / "ds.csv", dtype=str)
    assert ds.loc[ds["DSDECOD"] == "INFORMED CONSENT OBTAINED", "DSSTDTC"].tolist() == ["2019-10-11T09:07:00"]


def test_sample_r4_bundle_is_valid_for_the_r4b_models(tmp_path: Path) -> None:
    """The project's own sample SDTM converted to R4 passes fhir.resources R4B (the DS progress dates)."""
    root = Path(__file__).resolve().parents[1]
    _write(root / "samples" / "NCT04835883" / "sdtm-subjects", tmp_path / "r4", "R4")
