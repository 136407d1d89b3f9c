"""Subject-data engine: reader (bundle, NDJSON, Bulk folder), references, derivations, bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
from trialbridge.errors import UsageError
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.subject import base
from trialbridge.subject.pipeline import convert_subjects
from trialbridge.subject.reader import file_resource_type, iter_resources

FHIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fhir"
if not FHIR.exists():
    FHIR = Path("/work/shared/data/fhir")


def need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def test_derive_dtc_keeps_partial_and_drops_zone() -> None:
    dtc, bad = base.derive_dtc(pd.Series(["2019-09", "2020-01-02T10:11:12+02:00", "garbage", None]))
    assert list(dtc) == ["2019-09", "2020-01-02T10:11:12", None, None]
    assert list(bad) == [False, False, True, False]


def test_study_day_has_no_day_zero() -> None:
    dy = base.derive_dy(pd.Series(["2020-01-01", "2020-01-02", "2019-12-31", "2020-01"]),
                        pd.Series(["2020-01-01"] * 4))
    assert list(dy[:3]) == [1, 2, -1] and pd.isna(dy[3])


def test_seq_continues_across_chunks() -> None:
    start: dict[str, int] = {}
    assert list(base.derive_seq(pd.Series(["a", "b", "a"]), start)) == [1, 1, 2]
    assert list(base.derive_seq(pd.Series(["a", "b"]), start)) == [3, 2]


def test_reference_forms_resolve() -> None:
    idx = base.RefIndex()
    idx.add("Patient", "1", "urn:uuid:abc")
    for ref in ("Patient/1", "urn:uuid:abc", "http://x.org/fhir/Patient/1", "Patient/1/_history/2"):
        assert idx.resolve(ref) == "Patient/1"
    assert idx.resolve("Patient/2") is None


def test_reader_bundle_ndjson_folder(tmp_path: Path) -> None:
    assert file_resource_type(Path("Patient1.ndjson")) == "Patient"
    nd = tmp_path / "mixed.ndjson"
    nd.write_bytes(b'{"resourceType":"Patient","id":"p"}\n\nnot json\n{"resourceType":"Observation","id":"o"}\n')
    errors: list = []
    got = [i.resource["id"] for i in iter_resources([nd], types={"Observation"}, errors=errors)]
    assert got == ["o"] and errors and errors[0][1] == 3
    bundle = tmp_path / "b.json"
    bundle.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "1"}}, {"search": {}}]}))
    errors = []
    items = list(iter_resources([bundle], errors=errors))
    assert items[0].full_url == "urn:uuid:1" and errors


def test_reader_counts_no_skipped_file_of_an_uncounted_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 1 does not count the lines of the streamed types' Bulk files (pass 2 reads them; their count
    would not be reported): such a file is only opened, so an unreadable one still fails in pass 1."""
    from trialbridge.errors import InputError
    from trialbridge.subject import reader
    (tmp_path / "Observation.ndjson").write_bytes(b'{"resourceType":"Observation","id":"o"}\n')
    (tmp_path / "Claim.ndjson").write_bytes(b'{"resourceType":"Claim","id":"c"}\n \n{"resourceType":"Claim"}')
    counted: list[str] = []
    count = reader._count_lines
    monkeypatch.setattr(reader, "_count_lines", lambda p, n: counted.append(p.name) or count(p, n))
    skipped: dict[str, int] = {}
    assert not list(reader.iter_chunks([tmp_path], types={"Patient"}, skipped=skipped, uncounted={"Observation"}))
    assert skipped == {"Claim": 2} and counted == ["Claim.ndjson"]
    skipped = {}
    assert not list(reader.iter_chunks([tmp_path], types={"Patient"}, skipped=skipped))
    assert skipped == {"Claim": 2, "Observation": 1}
    with pytest.raises(InputError, match="cannot read file"):
        reader._readable(tmp_path / "gone.ndjson", "gone.ndjson")


@pytest.mark.parametrize("rtype", [{"a": 1}, ["Observation"], 7, None, True])
def test_reader_refuses_a_resource_type_that_is_no_string(tmp_path: Path, rtype: object) -> None:
    """Hostile input: a resourceType of another JSON type is an error naming file and line (it used to
    crash the type filter: 'unhashable type'), in NDJSON (typed and dict paths), Bundles and single files."""
    bad = orjson.dumps({"resourceType": rtype, "id": "x"})
    nd = tmp_path / "Observation.ndjson"
    nd.write_bytes(b'{"resourceType":"Observation","resourceType":' + orjson.dumps(rtype) + b',"id":"d"}\n'
                   + bad + b"\n" + b'{"resourceType":"Observation","id":"o"}\n')
    for types in ({"Observation"}, None):
        errors: list = []
        got = [i.resource["id"] for i in iter_resources([nd], types=types, errors=errors)]
        assert got == ["o"], (types, got)
        assert [e[1] for e in errors] == [1, 2] and all("resourceType" in e[2] for e in errors)
    single = tmp_path / "one.json"
    single.write_bytes(bad)
    bundle = tmp_path / "b.json"
    bundle.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": rtype}}, {"resource": {"resourceType": "Patient", "id": "1"}}]}))
    errors = []
    got = [i.resource.get("id") for i in iter_resources([single, bundle], types={"Patient"}, errors=errors)]
    assert got == ["1"] and [(e[0], e[1]) for e in errors] == [("one.json", None), ("b.json", 1)]


def test_resources_no_domain_reads_are_reported(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing dropped silently: a resource type no domain reads is reported once, with its count, whether
    it sits in a Bundle, in a mixed NDJSON file (skipped unparsed) or in a Bulk file named after it."""
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    src = tmp_path / "in"
    src.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01",
           "identifier": [{"value": "S1"}]}
    (src / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": pat}, {"resource": {"resourceType": "Claim", "id": "c1"}},
        {"resource": {"resourceType": "Immunization", "id": "i1"}},
        {"resource": {"resourceType": "Observation", "id": "smoke", "status": "final", "subject": {"reference": "Patient/p1"},
                      "category": [{"coding": [{"code": "social-history"}]}, {"coding": [{"code": "survey"}]}],
                      "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]}}},
        {"resource": {"resourceType": "Observation", "id": "nocat", "status": "final", "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}}]}))
    (src / "mixed.ndjson").write_bytes(b'{"resourceType":"Claim","id":"c2"}\n{"resourceType":"Goal","id":"g1"}\n')
    (src / "Claim.ndjson").write_bytes(b'{"resourceType":"Claim","id":"c3"}\n\n{"resourceType":"Claim","id":"c4"}\n')
    report = ConversionReport()
    convert_subjects([src], tmp_path / "out", options=Options(studyid="ST1", sdtm_formats=("csv",)), report=report)
    got = {i.source: i.message for i in report.issues if i.rule == "subject.scope" and i.record is None}
    assert set(got) == {"Claim", "Immunization", "Goal"}
    assert got["Claim"].startswith("4 Claim resource(s) not converted")
    assert got["Goal"].startswith("1 Goal") and got["Immunization"].startswith("1 Immunization")
    assert all(i.kind.value == "unmapped-source" for i in report.issues if i.rule == "subject.scope")
    # Observations of a category no domain reads: reported per resource, by category
    cats = {i.record: i.message for i in report.issues if i.source == "Observation.category"}
    assert set(cats) == {"Observation/smoke", "Observation/nocat"}
    assert "category social-history, survey" in cats["Observation/smoke"]
    assert "no category code" in cats["Observation/nocat"]


def _bad_bundle(tmp_path: Path) -> Path:
    res = [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01",
         "name": [{"family": "Secretname"}], "identifier": [{"type": {"coding": [{"code": "MR"}]},
                                                           "value": "MRN12345"}],
         "address": [{"line": ["1 Secret Street"], "country": "NL"}]},
        {"resourceType": "Observation", "id": "no-subject", "status": "final",
         "category": [{"coding": [{"code": "vital-signs"}]}],
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": 60}},
        {"resourceType": "Observation", "id": "broken-ref", "status": "final", "subject": {"reference": "Patient/zzz"},
         "category": [{"coding": [{"code": "vital-signs"}]}],
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": 60}},
        {"resourceType": "Observation", "id": "unknown-code", "status": "final", "subject": {"reference": "Patient/p1"},
         "category": [{"coding": [{"code": "laboratory"}]}],
         "code": {"coding": [{"system": "http://loinc.org", "code": "99999-9"}]}, "valueQuantity": {"value": 1}},
        {"resourceType": "Observation", "id": "wrong-type", "status": "final", "subject": {"reference": "Patient/p1"},
         "category": "vital-signs", "code": 5},
    ]
    p = tmp_path / "bad.json"
    p.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in res]}))
    return p


def test_bad_resources_reported_with_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_TEST_SALT", "s")
    report = ConversionReport()
    convert_subjects([_bad_bundle(tmp_path)], tmp_path / "out",
                     options=Options(studyid="ST1", extra={"salt_env": "TB_TEST_SALT"}), report=report)
    records = {i.record for i in report.issues}
    assert {"Observation/no-subject", "Observation/broken-ref", "Observation/unknown-code",
            "Observation/wrong-type"} <= records
    # privacy: no MRN, name or street in any output or report
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())
    blob += orjson.dumps(report.to_json())
    for secret in (b"MRN12345", b"Secretname", b"Secret Street"):
        assert secret not in blob


def test_missing_salt_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TB_NO_SALT", raising=False)
    with pytest.raises(UsageError, match="TB_NO_SALT"):
        convert_subjects([_bad_bundle(tmp_path)], tmp_path / "out",
                         options=Options(studyid="ST1", extra={"salt_env": "TB_NO_SALT"}),
                         report=ConversionReport())


def test_expose_mrn(tmp_path: Path) -> None:
    convert_subjects([_bad_bundle(tmp_path)], tmp_path / "out",
                     options=Options(studyid="ST1", sdtm_formats=("csv",), extra={"expose_mrn": True}),
                     report=ConversionReport())
    assert pd.read_csv(tmp_path / "out" / "dm.csv")["USUBJID"].tolist() == ["ST1-MRN12345"]


def test_bulk_ndjson_folder_and_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = need(FHIR / "synthea_ndjson_1_patient_ktmtwm")
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    report = ConversionReport()
    out = convert_subjects([src], tmp_path, options=Options(studyid="ST1", sdtm_formats=("csv",)),
                           report=report)
    names = {p.name for p in out}
    assert {"dm.csv", "vs.csv", "lb.csv", "vs.provenance.csv"} <= names
    vs = pd.read_csv(tmp_path / "vs.csv")
    prov = pd.read_csv(tmp_path / "vs.provenance.csv")
    assert len(prov) == len(vs) and set(prov["src_type"]) == {"Observation"}
    assert not vs.duplicated(["USUBJID", "VSSEQ"]).any()
    assert not [i for i in report.issues if i.kind.value == "error"]
