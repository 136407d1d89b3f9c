"""AE, MH, DS, SV from FHIR: the NCT04835883 sample, official HL7 examples, Synthea, bad input;
plus the lint of the event specs (mappings/subject/{ae,mh,ds,sv}.yaml)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import SAMPLES, shared_path
from trialbridge.cli import main
from trialbridge.sdtm.ct import pinned_ct
from trialbridge.sdtm.metadata import load_domain
from trialbridge.specs import load_spec

SAMPLE = SAMPLES / "NCT04835883"
EVENT_DOMAINS = ("AE", "MH", "DS", "SV")
DS_CODELISTS = {"DISPOSITION EVENT": "NCOMPLT", "PROTOCOL MILESTONE": "PROTMLST", "OTHER EVENT": "OTHEVENT"}


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    # third-party data has no ResearchSubject: subject ids are keyed hashes
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")


def convert(inputs: list[Path], out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    rc = main(["convert", *map(str, inputs), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv", *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return rc, report


def read(out: Path, dom: str) -> pd.DataFrame:
    p = out / f"{dom.lower()}.csv"
    return pd.read_csv(p, dtype=str, keep_default_na=False) if p.exists() else pd.DataFrame()


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    if not (SAMPLE / "ctgov.json").exists():
        pytest.skip("samples/NCT04835883/ctgov.json not present yet")
    out = tmp_path_factory.mktemp("events")
    rc, report = convert([SAMPLE / "subjects.bundle.json"], out, "--study", str(SAMPLE / "ctgov.json"))
    assert rc == 0, report.get("counts")
    return out, report


def check_domain(df: pd.DataFrame, dom: str, *, allow_empty_required: tuple[str, ...] = ()) -> None:
    meta = load_domain(dom)
    assert list(df.columns) == [n for n in meta.names if n in df.columns]
    ct = pinned_ct()
    for v in meta.variables:
        if v.name in df and v.codelist and v.name != "DOMAIN":
            vals = set(df[v.name]) - {""}
            bad = {x for x in vals if not ct.is_valid(v.codelist, x)}
            assert not bad, f"{dom}.{v.name}: not in CT {v.codelist}: {bad}"
    for name in meta.required:
        if name in allow_empty_required:
            continue
        assert name in df and (df[name] != "").all(), f"{dom}.{name} (Req) empty"
    keys = [k for k in meta.keys if k in df]
    if f"{dom}SEQ" in df:
        assert not df.duplicated(["USUBJID", f"{dom}SEQ"]).any()
    else:
        assert not df.duplicated(keys).any(), f"{dom} keys {keys} not unique"


def test_sample_events(sample_out: tuple[Path, dict[str, Any]]) -> None:
    out, report = sample_out
    ae, mh, ds, sv = (read(out, d) for d in EVENT_DOMAINS)
    for dom, df in zip(EVENT_DOMAINS, (ae, mh, ds, sv), strict=True):
        assert len(df), dom
        # AEDECOD is Req but needs MedDRA coding by the sponsor: left empty and reported per record
        check_domain(df, dom, allow_empty_required=("AEDECOD",))
    uncoded = [i for i in report["issues"] if i.get("rule") == "ae.AEDECOD" and i["kind"] == "missing"]
    assert len(uncoded) == (ae["AEDECOD"] == "").sum()
    for _, row in ds.iterrows():
        assert pinned_ct().is_valid(DS_CODELISTS[row["DSCAT"]], row["DSDECOD"])
    # the protocol's story: 10 consents, 8 completed, 1 withdrawn by subject, 1 ongoing
    assert (ds["DSDECOD"] == "INFORMED CONSENT OBTAINED").sum() == 10
    assert (ds["DSDECOD"] == "COMPLETED").sum() == 8
    assert (ds["DSDECOD"] == "WITHDRAWAL BY SUBJECT").sum() == 1
    # serious pneumonia: hospitalisation, term and site from its Condition, which is not MH
    pna = ae[ae["AETERM"] == "Community-acquired pneumonia"].iloc[0]
    assert (pna["AESER"], pna["AESHOSP"], pna["AELOC"], pna["AESEV"]) == ("Y", "Y", "LUNG", "SEVERE")
    assert "pneumonia" not in " ".join(mh["MHTERM"]).lower()
    assert set(ae["AEREL"]) <= {"CERTAIN", "PROBABLE", "POSSIBLE", "UNLIKELY", "CONDITIONAL", "UNASSESSABLE"}
    assert (ae["AEDECOD"] != "").sum() == 1          # only the MedDRA-coded infusion reaction
    tb = mh[mh["MHTERM"].str.startswith("Tuberculosis")].iloc[0]
    assert (tb["MHOCCUR"], tb["MHPRESP"]) == ("N", "Y")
    missed = sv[sv["SVOCCUR"] == "N"]
    assert len(missed) == 1 and missed.iloc[0]["SVSTDTC"] == ""
    # unplanned: the admission, and the screening visits (the study's TV has no screening visit)
    upd = sv.loc[sv["SVUPDES"] != "", "SVUPDES"]
    # the trial design has a SCREENING visit (TE has a Screening element), so screening encounters
    # are planned visits; the only unplanned visit is the pneumonia admission
    assert upd.tolist() == ["Admission for community-acquired pneumonia"]
    assert (sv["VISIT"] == "SCREENING").sum() == 10 and sv.loc[sv["VISIT"] == "SCREENING", "SVPRESP"].eq("Y").all()
    # no PHI: names, MRN, addresses never reach any output or the report
    bundle = json.loads((SAMPLE / "subjects.bundle.json").read_text())
    secrets = set()
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Patient":
            secrets |= {r["identifier"][0]["value"], r["name"][0]["family"], r["telecom"][0]["value"]}
    blob = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    # whole words: a short family name ("Lim") also occurs inside ordinary words ("Limit")
    assert not [s for s in secrets if re.search(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", blob)]


def _official(version: str, names: list[str], tmp: Path) -> list[Path]:
    base = shared_path("fhir", f"hl7.fhir.{version}.examples-{'4.0.1' if version == 'r4' else '5.0.0'}")
    files = [base / n for n in names if (base / n).exists()]
    if not files:
        pytest.skip(f"no {version} examples")
    return files


def test_official_r4_examples_convert(tmp_path: Path) -> None:
    files = _official("r4", ["Patient-example.json", "AdverseEvent-example.json", "Condition-example.json",
                             "Condition-example2.json", "Encounter-example.json"], tmp_path)
    rc, report = convert(files, tmp_path / "o", "--studyid", "EX1")
    assert rc in (0, 1)
    # AdverseEvent-example names Patient/example: converted, its term from event.text
    ae = read(tmp_path / "o", "AE")
    if len(ae):
        check_domain(ae, "AE", allow_empty_required=("AEDECOD",))
        assert set(ae["AESEV"]) <= {"MILD", "MODERATE", "SEVERE", ""}
    # every record that could not be converted names its resource
    for i in report["issues"]:
        if i["kind"] == "error":
            assert i.get("record")


def test_official_r5_examples_convert(tmp_path: Path) -> None:
    base = shared_path("fhir", "hl7.fhir.r5.examples-5.0.0")
    files = sorted(p for p in base.iterdir() if re.match(r"(Condition|Encounter|ResearchSubject|Patient)-", p.name))[:40]
    rc, report = convert(files, tmp_path / "o", "--studyid", "EX5")
    assert rc in (0, 1)
    for dom in ("MH", "SV", "DS"):
        df = read(tmp_path / "o", dom)
        if len(df):
            check_domain(df, dom)


def test_synthea_events_convert(tmp_path: Path) -> None:
    base = shared_path("fhir", "synthea_r4_bundles")
    files = sorted(base.glob("*.json"))[:2]
    rc, report = convert(files, tmp_path / "o", "--studyid", "SYN")
    assert rc in (0, 1)
    for dom in EVENT_DOMAINS:
        df = read(tmp_path / "o", dom)
        if len(df):
            check_domain(df, dom, allow_empty_required=("AEDECOD",))
    assert len(read(tmp_path / "o", "SV")) > 0


def test_bad_event_resources_are_reported(tmp_path: Path) -> None:
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}]}
    rs = {"resourceType": "ResearchSubject", "id": "rs1", "status": "withdrawn", "study": {"reference": "ResearchStudy/x"},
          "individual": {"reference": "Patient/p1"}, "identifier": [{"value": "S1"}]}
    good = {"resourceType": "AdverseEvent", "id": "ae-ok", "actuality": "actual", "subject": {"reference": "Patient/p1"},
            "event": {"text": "Nausea"}, "date": "2020-01-02",
            "severity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
                                     "code": "grade-9"}]}}
    orphan = {"resourceType": "AdverseEvent", "id": "ae-orphan", "actuality": "actual",
              "subject": {"reference": "Patient/nobody"}, "event": {"text": "Rash"}}
    nosubj = {"resourceType": "Condition", "id": "c-nosubj", "code": {"text": "Asthma"}}
    wrong = {"resourceType": "AdverseEvent", "id": "ae-wrong", "actuality": "actual",
             "subject": {"reference": "Patient/p1"}, "event": "not a CodeableConcept", "suspectEntity": "x"}
    broken = {"resourceType": "AdverseEvent", "id": "ae-broken", "actuality": "actual",
              "subject": {"reference": "Patient/p1"}, "event": {"text": "Cough"},
              "resultingCondition": [{"reference": "Condition/missing"}]}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (pat, rs, good, orphan, nosubj, wrong, broken)]}
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(bundle))
    rc, report = convert([src], tmp_path / "o", "--studyid", "BAD")
    assert rc == 1
    by_record = {(i.get("record"), i.get("rule")) for i in report["issues"]}
    assert ("AdverseEvent/ae-ok", "ae.AESEV") in by_record            # unknown code, not guessed
    assert ("AdverseEvent/ae-orphan", "subject.resolve") in by_record  # subject does not resolve
    assert ("Condition/c-nosubj", "subject.resolve") in by_record      # names no subject
    assert ("AdverseEvent/ae-wrong", "ae.AETERM") in by_record         # wrong shape: no usable term
    assert ("AdverseEvent/ae-broken", "ae.AETERM") in by_record        # broken reference
    ae = read(tmp_path / "o", "AE")
    assert set(ae["AESEV"]) == {""}
    ds_missing = [i for i in report["issues"] if i.get("rule") == "ds.DSDECOD" and i["kind"] == "missing"]
    assert ds_missing and ds_missing[0]["record"] == "ResearchSubject/rs1"


@pytest.mark.parametrize("dom", ["ae", "mh", "ds", "sv", "cm", "ex", "pr"])
def test_spec_lint(dom: str) -> None:
    spec = load_spec(f"subject/{dom}.yaml")
    ids = [r["id"] for r in spec["rules"]]
    assert len(ids) == len(set(ids)), "duplicate rule ids"
    names = set(load_domain(dom.upper()).names)
    for r in spec["rules"]:
        assert r["cite"], r["id"]
        for t in r["target"].split():
            assert t.startswith("(") or t in names, f"{r['id']}: {t} not in schemas/sdtm/{dom}.csv"
        for table in re.findall(r"mappings/codes/([\w.]+\.csv)", r["via"]):
            assert (Path(__file__).parent.parent / "mappings" / "codes" / table).exists(), table
    src = (Path(__file__).parent.parent / "converters" / "subject" / "domains" / f"{dom}.py").read_text()
    used = set(re.findall(rf'rule="({dom}\.[\w.-]+)"', src))
    assert used <= set(ids), f"rule ids used in code but not in the spec: {used - set(ids)}"
    for g in spec["gaps"]:
        assert g["decision"] and g["cite"]


def test_code_tables_hold_valid_ct() -> None:
    from trialbridge.specs import load_table
    ct = pinned_ct()
    for name in ("fhir_ae_severity", "fhir_ae_outcome", "fhir_route", "fhir_dose_form", "fhir_frequency",
                 "fhir_dose_unit_extra", "fhir_disposition", "fhir_body_site"):
        for row in load_table(f"codes/{name}.csv"):
            term = ct.term(row["codelist"], row["target_code"])
            assert term is not None, (name, row)
            if row.get("target_ccode"):
                assert term.code == row["target_ccode"], (name, row)


def test_report_names_the_study_file_only_for_its_own_issues(tmp_path: Path) -> None:
    """The --study file is read first; issues of the subject data that follow (whole-run summaries
    such as the unread elements or the resource types no domain reads) must not name it as their file."""
    _rc, report = convert([SAMPLE / "subjects.bundle.json"], tmp_path / "o", "--study", str(SAMPLE / "ctgov.json"),
                          "--test-codes", str(SAMPLE / "test_codes.csv"))
    study_file = str(SAMPLE / "ctgov.json")
    subject_rules = ("subject.", "dm.", "ae.", "mh.", "ds.", "sv.", "lb.", "vs.", "cm.", "ex.", "pr.")
    wrong = [i for i in report["issues"] if i.get("file") == study_file
             and str(i.get("rule", "")).startswith(subject_rules)]
    assert not wrong, wrong[:3]
    # e.g. the Location resource of the subject bundle, reported once: not a CT.gov finding
    scope = [i for i in report["issues"] if i.get("rule") == "subject.scope" and i.get("source") == "Location"]
    assert scope and all(i.get("file") != study_file for i in scope)


def _mh_bundle(tmp_path: Path, *conditions: dict[str, Any]) -> Path:
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (pat, *conditions)]}
    src = tmp_path / "mh.json"
    src.write_text(json.dumps(bundle))
    return src


def test_mhsev_from_the_fhir_condition_severity_value_set(tmp_path: Path) -> None:
    """Condition.severity is bound (preferred) to the FHIR ValueSet condition-severity: SNOMED CT
    255604002 Mild, 6736007 Moderate, 24484000 Severe -> MHSEV MILD/MODERATE/SEVERE (CT C66769);
    a code outside it is reported with its FHIR path, not a column name."""
    sct = "http://snomed.info/sct"
    cat = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item"}]}]
    conds = [{"resourceType": "Condition", "id": f"c{i}", "category": cat, "code": {"text": term},
              "subject": {"reference": "Patient/p1"}, "recordedDate": "2020-01-01",
              "severity": {"coding": [{"system": sct, "code": code}]},
              "bodySite": [{"coding": [{"system": sct, "code": "999999999"}]}] if i == 3 else []}
             for i, (term, code) in enumerate([("Asthma", "255604002"), ("Gout", "6736007"),
                                               ("Sepsis", "24484000"), ("Rash", "1234567"), ])]
    _rc, report = convert([_mh_bundle(tmp_path, *conds)], tmp_path / "o", "--studyid", "SEV")
    mh = read(tmp_path / "o", "MH").set_index("MHTERM")
    assert mh.loc[["Asthma", "Gout", "Sepsis", "Rash"], "MHSEV"].tolist() == ["MILD", "MODERATE", "SEVERE", ""]
    sev = [i for i in report["issues"] if i.get("rule") == "mh.MHSEV"]
    assert [(i["kind"], i["record"], i["source"]) for i in sev] == [("unmapped-code", "Condition/c3",
                                                                   "Condition.severity")]
    loc = [i for i in report["issues"] if i.get("rule") == "mh.MHLOC"]
    assert [i["source"] for i in loc] == ["Condition.bodySite"]


def test_mhenrtpt_only_with_its_reference_time_point(tmp_path: Path) -> None:
    """--ENRTPT places the end of the record relative to the time point --ENTPT describes (SDTM v2.0
    Timing variables): MHENTPT is the collection date (recordedDate); a Condition without one gets no
    MHENRTPT (its clinicalStatus is reported lossy), never an ENRTPT with no ENTPT."""
    cat = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item"}]}]
    active = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    dated = {"resourceType": "Condition", "id": "c-dated", "category": cat, "clinicalStatus": active,
             "code": {"text": "Asthma"}, "subject": {"reference": "Patient/p1"}, "recordedDate": "2020-01-01"}
    undated = {"resourceType": "Condition", "id": "c-undated", "category": cat, "clinicalStatus": active,
               "code": {"text": "Gout"}, "subject": {"reference": "Patient/p1"}}
    _rc, report = convert([_mh_bundle(tmp_path, dated, undated)], tmp_path / "o", "--studyid", "ENR")
    mh = read(tmp_path / "o", "MH").set_index("MHTERM")
    assert mh.loc["Asthma", ["MHENRTPT", "MHENTPT"]].tolist() == ["ONGOING", "2020-01-01"]
    assert mh.loc["Gout", ["MHENRTPT", "MHENTPT"]].tolist() == ["", ""]
    lossy = [(i["kind"], i["record"]) for i in report["issues"] if i.get("rule") == "mh.MHENRTPT"]
    assert lossy == [("lossy", "Condition/c-undated")]


def test_condition_left_out_of_mh_says_why(tmp_path: Path) -> None:
    """A Condition that is neither MH nor AE is reported for review with the reason that applies: a
    subject with no reference start (no consent, no study drug) has no study start to be 'after'."""
    enc_dx = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                           "code": "encounter-diagnosis"}]}]
    cond = {"resourceType": "Condition", "id": "c-dx", "category": enc_dx, "code": {"text": "Otitis"},
            "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2019-05-01"}
    _rc, report = convert([_mh_bundle(tmp_path, cond)], tmp_path / "o", "--studyid", "WHY")
    msgs = [i["message"] for i in report["issues"] if i.get("rule") == "mh.select" and i.get("record") == "Condition/c-dx"]
    assert len(msgs) == 1
    assert "no reference start" in msgs[0] and "on or after" not in msgs[0]


def test_svpresp_only_for_visits_planned_in_tv(tmp_path: Path) -> None:
    """SDTMIG 3.4 SV: SVPRESP is Y for planned visits, "visits specified in the TV domain", null for
    unplanned ones; SVOCCUR records whether a planned visit occurred. Without a study definition there
    is no TV: encounters numbered in date order are not pre-specified (was SVPRESP=Y, SVOCCUR=Y), and a
    cancelled Encounter is no visit record (reported), not SVOCCUR=N of a visit that was never planned."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    amb = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    encs = [{"resourceType": "Encounter", "id": f"e{i}", "status": st, "class": amb,
             "subject": {"reference": "Patient/p1"}, **({"period": {"start": d}} if d else {})}
            for i, (st, d) in enumerate([("finished", "2020-01-01"), ("finished", "2020-02-01"), ("cancelled", None)])]
    src = tmp_path / "sv.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, *encs)]}))
    _rc, report = convert([src], tmp_path / "o", "--studyid", "SVP")
    sv = read(tmp_path / "o", "SV")
    assert sv["SVSTDTC"].tolist() == ["2020-01-01", "2020-02-01"]
    assert set(sv["SVPRESP"]) == {""} and set(sv["SVOCCUR"]) == {""}
    dropped = [i["record"] for i in report["issues"] if i.get("rule") == "sv.status"]
    assert dropped == ["Encounter/e2"]


def test_one_informed_consent_the_one_rficdtc_is(tmp_path: Path) -> None:
    """Two Consents of a subject (a re-consent): DS keeps one INFORMED CONSENT OBTAINED, the one whose date
    is RFICDTC (the earliest Consent, whatever the input order; was: the first in the input, so DSSTDTC
    and RFICDTC disagreed), and the other is reported, not dropped silently."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    consents = [{"resourceType": "Consent", "id": f"c{i}", "status": "active", "dateTime": d,
                 "patient": {"reference": "Patient/p1"}} for i, d in enumerate(["2020-03-01", "2020-01-15"])]
    src = tmp_path / "ic.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, *consents)]}))
    _rc, report = convert([src], tmp_path / "o", "--studyid", "IC")
    ds = read(tmp_path / "o", "DS")
    dm = read(tmp_path / "o", "DM")
    ic = ds[ds["DSDECOD"] == "INFORMED CONSENT OBTAINED"]
    assert ic["DSSTDTC"].tolist() == ["2020-01-15"] == dm["RFICDTC"].tolist()
    lossy = [i["record"] for i in report["issues"] if i.get("rule") == "ds.DSDECOD" and i["kind"] == "lossy"]
    assert lossy == ["Consent/c0"]


def test_fatal_ae_sets_dthfl(tmp_path: Path) -> None:
    """SDTMIG 3.4 DM DTHFL 'Indicates the subject died': an AE with outcome fatal (AEOUT FATAL, AESDTH Y)
    of a Patient not marked deceased gave DTHFL null beside it. Now DTHFL = Y (inferred); DTHDTC is not
    taken from the AE (reported missing)."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    ae = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "subject": {"reference": "Patient/p1"},
          "event": {"text": "Myocardial infarction"}, "date": "2020-05-01",
          "outcome": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
                                  "code": "fatal"}]}}
    src = tmp_path / "fatal.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, ae)]}))
    _rc, report = convert([src], tmp_path / "o", "--studyid", "DTH")
    ae_out = read(tmp_path / "o", "AE")
    assert ae_out[["AEOUT", "AESDTH"]].values.tolist() == [["FATAL", "Y"]]
    # results in death: serious (ICH E2A), not AESER null beside AESDTH Y
    assert ae_out["AESER"].tolist() == ["Y"]
    dm = read(tmp_path / "o", "DM").iloc[0]
    assert dm["DTHFL"] == "Y" and dm["DTHDTC"] == ""
    kinds = {i["kind"] for i in report["issues"] if i.get("rule") == "dm.DTHFL"}
    assert kinds == {"inferred", "missing"}


def test_adverse_event_elements_declared_read_are_read(tmp_path: Path) -> None:
    """AdverseEvent.encounter was declared read ('VISITNUM/VISIT') but AE has no visit variables (SDTMIG
    3.4 AE): it was dropped silently; now reported unread. The R4 cross-version occurrence extension may
    carry a dateTime (R5 occurrence[x]): it gives AESTDTC like a Period's start (was ignored)."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"},
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "period": {"start": "2020-05-01"}}
    ae = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "subject": {"reference": "Patient/p1"},
          "event": {"text": "Nausea"}, "encounter": {"reference": "Encounter/e1"},
          "extension": [{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.occurrence",
                         "valueDateTime": "2020-05-02"}]}
    src = tmp_path / "ae.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, enc, ae)]}))
    _rc, report = convert([src], tmp_path / "o", "--studyid", "AEV")
    assert read(tmp_path / "o", "AE")["AESTDTC"].tolist() == ["2020-05-02"]
    assert any(i.get("rule") == "subject.unread" and i.get("source") == "AdverseEvent.encounter"
               for i in report["issues"])


def test_reason_of_a_planned_visit_is_reported(tmp_path: Path) -> None:
    """Encounter.reasonCode is read for SVREASOC (missed visit) and SVUPDES (unplanned visit); the reason
    of a planned visit that took place has no SV variable: reported lossy, not dropped silently."""
    _rc, report = convert([SAMPLE / "subjects.bundle.json"], tmp_path / "o0", "--study", str(SAMPLE / "ctgov.json"))
    assert not [i for i in report["issues"] if i.get("source") == "Encounter.reasonCode|reason"]
    bundle = json.loads((SAMPLE / "subjects.bundle.json").read_text())
    enc = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
               and e["resource"].get("status") == "finished" and not e["resource"].get("reasonCode")
               and e["resource"].get("class", {}).get("code") == "AMB")
    enc["reasonCode"] = [{"text": "Routine study visit"}]
    src = tmp_path / "b.json"
    src.write_text(json.dumps(bundle))
    _rc, report = convert([src], tmp_path / "o", "--study", str(SAMPLE / "ctgov.json"))
    lossy = [i["record"] for i in report["issues"] if i.get("source") == "Encounter.reasonCode|reason"]
    assert lossy == [f"Encounter/{enc['id']}"]


def test_same_resources_given_twice_are_converted_once(tmp_path: Path) -> None:
    """The same bundle given twice (or a bundle beside its Bulk export): each resource (type, id,
    meta.versionId) is converted once and the repeats are reported per type. It gave two DM records per
    subject (DM key STUDYID/USUBJID not unique) and every SV/AE/MH/DS record twice, unreported."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for f in (a, b):
        f.write_bytes((SAMPLE / "subjects.bundle.json").read_bytes())
    _rc, report = convert([a, b], tmp_path / "o", "--study", str(SAMPLE / "ctgov.json"))
    dm, sv, ae = (read(tmp_path / "o", d) for d in ("DM", "SV", "AE"))
    assert len(dm) == 10 and dm["USUBJID"].is_unique
    assert not sv.duplicated(["USUBJID", "VISITNUM"]).any()
    assert len(ae) == 5
    again = {i["source"]: i["message"] for i in report["issues"] if i.get("rule") == "subject.duplicate"}
    assert again["Patient"].startswith("10 Patient resource(s) given again")
    assert "AdverseEvent" in again and "Encounter" in again


def test_fatal_ae_coded_non_serious_is_reported(tmp_path: Path) -> None:
    """A fatal AE coded Non-serious contradicts itself (results in death is a seriousness criterion):
    AESER stays as given (N) and the record is reported for review, not silently inconsistent."""
    pat = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "S1"}],
           "gender": "female", "birthDate": "1970-01-01"}
    ae = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "subject": {"reference": "Patient/p1"},
          "event": {"text": "Stroke"}, "date": "2020-05-01",
          "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                      "code": "Non-serious"}]},
          "outcome": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
                                  "code": "fatal"}]}}
    src = tmp_path / "contra.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": r} for r in (pat, ae)]}))
    _rc, report = convert([src], tmp_path / "o", "--studyid", "CON")
    assert read(tmp_path / "o", "AE")[["AESER", "AESDTH"]].values.tolist() == [["N", "Y"]]
    bad = [(i["kind"], i["record"]) for i in report["issues"] if i.get("rule") == "ae.AESER"]
    assert bad == [("invalid-value", "AdverseEvent/ae1")]
