"""The CLI contract (exit codes, one-line errors, atomic output) and the report's JSON schema."""

from __future__ import annotations

import json

import jsonschema
import orjson
import pytest
from conftest import shared_path
from trialbridge.cli import main
from trialbridge.errors import StrictModeError
from trialbridge.report import ConversionReport, Kind, Policy
from trialbridge.safeio import atomic_path
from trialbridge.specs import schema_text


def _schema():
    return json.loads(schema_text("report.schema.json"))


def _record():
    return sorted(shared_path("ctgov", "api_v2_json").glob("*.json"))[0]


def test_ctgov_to_ctgov_writes_record_and_a_schema_valid_report(tmp_path, capsys):
    rec = _record()
    assert main(["convert", str(rec), "--to", "ctgov", "-o", str(tmp_path)]) == 0
    data = orjson.loads(rec.read_bytes())
    nct = data["protocolSection"]["identificationModule"]["nctId"]
    assert orjson.loads((tmp_path / f"{nct}.json").read_bytes()) == data
    report = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(report, _schema())
    assert report["outputs"] == [str(tmp_path / f"{nct}.json")]
    out = capsys.readouterr().out
    assert "report: " in out and "0 error(s)" in out


def test_report_with_every_kind_validates_and_hides_values_unless_asked():
    for include in (False, True):
        rep = ConversionReport(include_values=include)
        for kind in Kind:
            rep.add(kind, "m", rule="r", source="s", target="t", record="k", file="f", value="secret")
        doc = rep.to_json()
        jsonschema.validate(doc, _schema())
        assert ("secret" in json.dumps(doc)) is include


def test_strict_policy_raises_on_the_first_warning():
    rep = ConversionReport(policy=Policy.RAISE)
    rep.add(Kind.LOSSY, "info only")  # info does not stop a strict run
    with pytest.raises(StrictModeError):
        rep.add(Kind.UNMAPPED_SOURCE, "no rule reads x", source="x")


def test_strict_run_exits_1_on_a_warning(tmp_path, capsys):
    data = orjson.loads(_record().read_bytes())
    data["protocolSection"]["statusModule"]["someNewField"] = True
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(data))
    out = tmp_path / "out"
    assert main(["convert", str(src), "--to", "ctgov", "-o", str(out)]) == 0
    assert main(["convert", str(src), "--to", "ctgov", "-o", str(out / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "no rule reads protocolSection.statusModule.someNewField" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    rec = _record()
    assert main(["convert", str(rec), "--to", "fhir", "--fhir-version", "R3", "-o", str(tmp_path)]) == 2
    assert "--fhir-version must be R4 or R5, not R3" in capsys.readouterr().err
    assert main(["convert", str(rec), "--to", "nowhere", "-o", str(tmp_path)]) == 2
    assert main(["convert", str(tmp_path / "missing.json"), "--to", "fhir", "-o", str(tmp_path)]) == 2
    assert "missing.json: no such file or folder" in capsys.readouterr().err
    assert main(["convert", str(rec), "--from", "fhir", "--to", "ctgov", "-o", str(tmp_path)]) == 2


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_ndjson_is_told_apart_by_content(tmp_path):
    from trialbridge.pipeline import sniff
    fhir = tmp_path / "Patient.ndjson"
    fhir.write_text('{"resourceType": "Patient", "id": "p1"}\n')
    dsj = tmp_path / "ts.ndjson"
    dsj.write_text('{"datasetJSONVersion": "1.1.0", "name": "TS"}\n["S1", "TS"]\n')
    assert sniff(fhir).kind == "fhir-subjects"
    assert sniff(dsj).kind == "sdtm-dataset"
