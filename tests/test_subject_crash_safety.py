"""FHIR -> SDTM subject runs that fail part-way leave no spool files behind (the streamed writers are
aborted), and hostile-but-parseable text in ids (line breaks, quotes) is written, not a crash."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.subject import pipeline as P
from trialbridge.subject.domains import lb

UCUM = "http://unitsofmeasure.org"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}


def _lab(i: int, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "category": [{"coding": [{"code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": f"2024-01-{1 + i % 28:02d}",
            "valueQuantity": {"value": 5 + i, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}, **extra}


def _folder(tmp_path: Path, obs: list[dict[str, Any]]) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes(orjson.dumps(PATIENT) + b"\n")
    (src / "Observation.ndjson").write_bytes(b"\n".join(orjson.dumps(o) for o in obs) + b"\n")
    return src


def test_a_run_failing_mid_stream_leaves_no_spool_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    monkeypatch.setattr(P, "CHUNK_ROWS", 3)
    calls = []
    original = lb.map_lb_columns

    def failing(cols: Any, ctx: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(cols, ctx)

    reg = P.base.registered_domains()
    monkeypatch.setattr(P.base, "_REGISTRY", {k: dataclasses.replace(v, map_columns=failing) if k == "LB" else v
                                              for k, v in reg.items()})
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        P.convert_subjects([_folder(tmp_path, [_lab(i) for i in range(10)])], out,
                           options=Options(studyid="ST"), report=ConversionReport())
    assert len(calls) == 3
    assert not list(out.glob(".*")), sorted(p.name for p in out.iterdir())
    assert not (out / "lb.json").exists()


def test_ids_with_line_breaks_and_quotes_are_written_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    ids = ['a"b,c\nd\u00e9', "x\r\ny", "plain"]
    out = tmp_path / "out"
    P.convert_subjects([_folder(tmp_path, [_lab(i, id=x) for i, x in enumerate(ids)])], out,
                       options=Options(studyid="ST"), report=ConversionReport())
    with open(out / "lb.provenance.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["src_id"] for r in rows) == sorted(ids)
    assert not list(out.glob(".*"))
