"""The curated CT.gov samples: valid against the official OpenAPI ``Study`` schema, and equal to
what the printout reader makes of the seed printouts for every field the printout carries."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import SAMPLES, SHARED, shared_path
from trialbridge.ctgov.printout import read_printout
from trialbridge.ctgov.v2 import read_ctgov_v2, write_ctgov_v2
from trialbridge.report import ConversionReport
from trialbridge.tablemodel import leaf_paths

CTGOV_SAMPLES = sorted(SAMPLES.glob("*/ctgov.json"))

#: seed printout of each sample
SEEDS = {
    "NCT04835883": "NCT04835883_record_page.txt",
    "NCT04522505": "NCT04522505_record_printout.txt",
}

#: Values the curated sample holds that the reader does not take from the printout, each because the
#: printout is demonstrably ambiguous or says it only in prose (samples/README.md explains each).
CURATED = {
    "NCT04835883": {
        # "Corestemchemon, Inc., Ministry of Health & Welfare, Korea": commas inside the names
        "protocolSection.sponsorCollaboratorsModule.collaborators[0].name",
        "protocolSection.sponsorCollaboratorsModule.collaborators[1].name",
    },
    "NCT04522505": {
        # no Study Type label; the printout calls itself "this observation study" (long-term follow-up)
        "protocolSection.designModule.studyType",
    },
}


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects -> JSON Schema: component refs become $defs refs."""
    if isinstance(node, dict):
        out = {}
        for key, val in node.items():
            if key == "$ref" and isinstance(val, str):
                out[key] = val.replace("#/components/schemas/", "#/$defs/")
            elif key in ("example", "x-enum-descriptions"):
                continue
            else:
                out[key] = to_json_schema(val)
        return out
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    return node


@cache
def study_validator() -> jsonschema.Draft202012Validator:
    path = shared_path("ctgov", "api_v2_spec", "openwork_ctg-oas-v2.yaml")
    schemas = yaml.safe_load(path.read_text(encoding="utf-8"))["components"]["schemas"]
    schema = {"$ref": "#/$defs/Study", "$defs": to_json_schema(copy.deepcopy(schemas))}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def errors_of(record: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in study_validator().iter_errors(record)]


def test_samples_exist() -> None:
    assert {p.parent.name for p in CTGOV_SAMPLES} >= set(SEEDS)


@pytest.mark.parametrize("sample", CTGOV_SAMPLES, ids=lambda p: p.parent.name)
def test_sample_validates_against_openapi_study_schema(sample: Path) -> None:
    assert errors_of(json.loads(sample.read_text(encoding="utf-8"))) == []


def test_api_v2_records_validate_against_openapi_study_schema() -> None:
    files = sorted(shared_path("ctgov", "api_v2_json").glob("*.json"))
    assert files
    for path in files:
        assert errors_of(json.loads(path.read_text(encoding="utf-8"))) == [], path.name


def test_schema_check_catches_a_bad_enum() -> None:
    bad = {"protocolSection": {"statusModule": {"overallStatus": "Recruiting"}}}
    assert any("overallStatus" in e for e in errors_of(bad))


@pytest.mark.parametrize("sample", CTGOV_SAMPLES, ids=lambda p: p.parent.name)
def test_sample_round_trips_through_the_model(sample: Path) -> None:
    data = json.loads(sample.read_text(encoding="utf-8"))
    report = ConversionReport()
    studies = read_ctgov_v2(data, file=str(sample), report=report)
    assert report.issues == []
    assert write_ctgov_v2(studies[0]) == data


def _leaves(node: Any) -> dict[str, Any]:
    out = {}
    for path in leaf_paths(node):
        cur: Any = node
        for part in path.replace("[", ".[").split("."):
            cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
        out[path] = cur
    return out


@pytest.mark.parametrize("nct", sorted(SEEDS))
def test_printout_reader_gives_the_sample(nct: str) -> None:
    seed = SHARED / "seeds" / SEEDS[nct]
    if not seed.exists():
        pytest.skip(f"seed printout not present: {seed}")
    report = ConversionReport()
    study = read_printout(seed.read_text(encoding="utf-8"), file=str(seed), report=report)[0]
    got = _leaves(write_ctgov_v2(study))
    want = _leaves(json.loads((SAMPLES / nct / "ctgov.json").read_text(encoding="utf-8")))
    differ = {p: (got[p], want.get(p)) for p in got if got[p] != want.get(p)}
    assert differ == {}
    assert set(want) - set(got) == CURATED[nct]
