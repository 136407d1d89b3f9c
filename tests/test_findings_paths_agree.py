"""Observations of odd shapes give the same SDTM rows and report on every path: Bulk NDJSON with the
typed decoder, the dict fast path, the plain DataFrame map and the row extractor."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.subject import base
from trialbridge.subject import pipeline as P

UCUM = "http://unitsofmeasure.org"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
MASK = re.compile(rb'"datasetJSONCreationDateTime"\s*:\s*"[^"]*"')
MODES = ("typed", "dict", "plain-map", "row-extractor")


def _lab(i: int, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "category": [{"coding": [{"code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-02",
            "valueQuantity": {"value": 5.5, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}, **extra}


def _convert(tmp_path: Path, mode: str, obs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
             ) -> tuple[dict[str, bytes], list[Any]]:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    src = tmp_path / mode / "in"
    src.mkdir(parents=True)
    (src / "Patient.ndjson").write_bytes(orjson.dumps(PATIENT) + b"\n")
    (src / "Observation.ndjson").write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in obs))
    out = tmp_path / mode / "out"
    with monkeypatch.context() as m:
        reg = base.registered_domains()
        if mode != "typed":
            m.setattr(base, "_REGISTRY", {k: dataclasses.replace(p, line_decoder=None, **(
                {"map_columns": None} if mode == "plain-map" else {})) for k, p in reg.items()})
        if mode == "row-extractor":
            m.setattr(P, "_columnar_route", lambda routes: None)
        report = ConversionReport()
        P.convert_subjects([src], out, options=Options(studyid="ST"), report=report)
    files = {p.name: MASK.sub(b"", p.read_bytes()) for p in sorted(out.iterdir())}
    issues = sorted(json.dumps(i, sort_keys=True) for i in report.to_json()["issues"])
    return files, issues


def _all_paths_agree(tmp_path: Path, obs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
                     ) -> tuple[dict[str, bytes], list[Any]]:
    got = {mode: _convert(tmp_path, mode, obs, monkeypatch) for mode in MODES}
    for mode in MODES[1:]:
        assert got[mode][0] == got["typed"][0], mode
        assert got[mode][1] == got["typed"][1], mode
    return got["typed"]


def test_a_reference_range_limit_that_is_not_a_quantity_is_a_shape_error_on_every_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """referenceRange.low/high of another JSON type than an object: the Observation is reported (file,
    record) and not converted on every path -- the row extractor used to convert it without the limit,
    silently, while the fast paths refused it."""
    obs = [_lab(1, referenceRange=[{"low": "3 mg/dL", "high": {"value": 7, "code": "mg/dL"}}]),
           _lab(2, referenceRange=[{"low": {"value": 3, "code": "mg/dL"}, "high": [7]}]),
           _lab(3, referenceRange=[{"low": {"value": 3, "code": "mg/dL"}, "high": {"value": 7, "code": "mg/dL"}}]),
           _lab(4, referenceRange=[{"low": 0, "text": "up to 7"}])]
    files, issues = _all_paths_agree(tmp_path, obs, monkeypatch)
    rows = json.loads(files["lb.json"].replace(b"{,", b"{", 1))["rows"]
    assert len(rows) == 2
    shape = [json.loads(i) for i in issues if '"lb.extract"' in i]
    assert sorted(i["record"] for i in shape) == ["Observation/o1", "Observation/o2"]
    assert all(i["file"] == "Observation.ndjson" for i in shape)


def test_a_vital_sign_reference_range_is_reported_not_dropped_silently(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """VS has no reference range variables (SDTMIG 3.4 VS; schemas/sdtm/vs.csv): a vital-sign
    Observation's referenceRange (top level or in a component) is reported by rule subject.unread,
    once per resource, on every path (LB reads it: LBORNRLO/HI)."""
    vital = {"coding": [{"code": "vital-signs"}]}
    hr = {**_lab(1), "category": [vital], "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
          "valueQuantity": {"value": 61, "unit": "/min", "system": UCUM, "code": "/min"},
          "referenceRange": [{"low": {"value": 60, "code": "/min"}, "high": {"value": 100, "code": "/min"}}]}
    rng = [{"low": {"value": 90, "code": "mm[Hg]"}}]
    comp = [{"code": {"coding": [{"system": "http://loinc.org", "code": c}]}, "referenceRange": rng,
             "valueQuantity": {"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}
            for c, v in (("8480-6", 120), ("8462-4", 80))]
    bp = {**_lab(2), "category": [vital], "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
          "component": comp}
    del bp["valueQuantity"]
    _, issues = _all_paths_agree(tmp_path, [hr, {**hr, "id": "o3"}, bp, _lab(4, referenceRange=rng)], monkeypatch)
    unread = {i["source"]: i["message"] for i in map(json.loads, issues) if i["rule"] == "subject.unread"}
    assert unread == {"Observation.referenceRange": "Observation.referenceRange in 2 resource(s): no SDTM variable "
                                                    "reads it",
                      "Observation.component.referenceRange": "Observation.component.referenceRange in 1 "
                                                              "resource(s): no SDTM variable reads it"}


def test_a_result_unit_coded_in_another_system_than_ucum_is_reported(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """valueQuantity.code of a system other than UCUM is not read (the unit maps need UCUM): the result
    is converted from its value and unit text, and the code is reported per resource (unmapped-code),
    not lost silently -- without unit text the number would otherwise pass as a unitless result."""
    other = "http://example.org/units"
    obs = [_lab(1, valueQuantity={"value": 5, "system": other, "code": "MGDL"}),
           _lab(2, valueQuantity={"value": 6, "unit": "mg/dL", "system": other, "code": "MGDL"}),
           _lab(3), _lab(4, valueQuantity={"value": 7, "system": other})]
    files, issues = _all_paths_agree(tmp_path, obs, monkeypatch)
    got = [json.loads(i) for i in issues if '"lb.ORRESU"' in i and other in i]
    assert sorted(i["record"] for i in got) == ["Observation/o1", "Observation/o2"]
    assert all(i["kind"] == "unmapped-code" and i["source"] == "Observation.valueQuantity.code" for i in got)
    rows = json.loads(files["lb.json"].replace(b"{,", b"{", 1))["rows"]
    assert len(rows) == 4


def test_integer_results_and_numeric_version_ids_keep_their_json_type_on_the_row_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """valueInteger 3 is LBORRES "3" on every path: the row path built its chunk frame with pandas'
    inference, which made a column of integers and missing values float64 ("3.0"), depending on
    what else the chunk held; meta.versionId given as a JSON number likewise."""
    vi = _lab(1, valueInteger=3, meta={"versionId": 7})
    del vi["valueQuantity"]
    files, _ = _all_paths_agree(tmp_path, [vi, _lab(2)], monkeypatch)
    rows = json.loads(files["lb.json"].replace(b"{,", b"{", 1))["rows"]
    assert sorted(r[7] for r in rows) == ["3", "5.5"]
    assert b",7,Observation.ndjson" in files["lb.provenance.csv"]


def test_a_range_limit_unit_coded_in_another_system_than_ucum_is_not_taken_for_ucum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """referenceRange.low/high.code of a system other than UCUM is not read as a UCUM unit (as for
    valueQuantity): the limit's unit text is used where given, and the code is reported per resource."""
    other = "http://example.org/units"
    obs = [_lab(1, referenceRange=[{"low": {"value": 3, "system": other, "code": "mg/dL"},
                                    "high": {"value": 7, "unit": "mg/dL", "system": other, "code": "MGDL"}}]),
           _lab(2, referenceRange=[{"low": {"value": 3, "system": UCUM, "code": "mg/dL"}}])]
    files, issues = _all_paths_agree(tmp_path, obs, monkeypatch)
    got = [json.loads(i) for i in issues if other in i]
    assert [(i["record"], i["source"], i["kind"]) for i in got] == [
        ("Observation/o1", "Observation.referenceRange.high.code", "unmapped-code"),
        ("Observation/o1", "Observation.referenceRange.low.code", "unmapped-code")]
    rows = json.loads(files["lb.json"].replace(b"{,", b"{", 1))["rows"]
    head = json.loads(files["lb.json"].replace(b"{,", b"{", 1))["columns"]
    col = {c["name"]: k for k, c in enumerate(head)}
    # o1: the low limit has no unit it can be read in (the code is not UCUM), the high one its unit text
    assert sorted((r[col["LBORNRLO"]], r[col["LBORNRHI"]], r[col["LBSTNRLO"]], r[col["LBSTNRHI"]]) for r in rows) == [
        ("3", "", 3, None), ("3", "7", 3, 7)]
