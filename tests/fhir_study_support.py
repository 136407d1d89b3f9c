"""Helpers shared by the FHIR study tests: the CT.gov records, conversions cached per run, validators.

The official FHIR JSON schemas are compiled once. A Bundle is checked against the schema's Bundle
definition with ``ResourceList`` opened up, and each entry's resource against its own resource definition:
the same constraints as the schema's ``oneOf`` over every resource type, without trying each one.
"""

from __future__ import annotations

import glob
import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from conftest import DATA
from jsonschema.validators import validator_for
from trialbridge.ctgov.v2 import read_ctgov_v2
from trialbridge.fhir.study_writer import write_fhir_bundle
from trialbridge.model import Study
from trialbridge.report import ConversionReport

CTGOV_DIR = DATA / "ctgov" / "api_v2_json"
SCHEMA_DIR = DATA / "fhir" / "json_schema"


def record_paths() -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(CTGOV_DIR / "*.json")))]


@cache
def source(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


@cache
def study(path: Path) -> Study:
    return read_ctgov_v2(source(path), file=str(path), report=ConversionReport())[0]


@cache
def converted(path: Path, version: str) -> tuple[dict[str, Any], ConversionReport]:
    report = ConversionReport()
    return write_fhir_bundle(study(path), version=version, report=report), report


class SchemaValidator:
    def __init__(self, path: Path) -> None:
        schema = json.loads(path.read_text(encoding="utf-8"))
        defs = dict(schema["definitions"])
        defs["ResourceList"] = {"type": "object", "required": ["resourceType"]}
        cls = validator_for(schema)
        self._cls = cls
        self._defs = defs
        self._by_type: dict[str, Any] = {}

    def _for(self, rtype: str) -> Any:
        if rtype not in self._by_type:
            if rtype not in self._defs:
                raise AssertionError(f"{rtype} is not a resource of this FHIR version")
            self._by_type[rtype] = self._cls({"definitions": self._defs, "$ref": f"#/definitions/{rtype}"})
        return self._by_type[rtype]

    def errors(self, bundle: dict[str, Any]) -> list[str]:
        out = [f"Bundle: {e.message[:300]}" for e in self._for("Bundle").iter_errors(bundle)]
        for i, entry in enumerate(bundle.get("entry", [])):
            res = entry["resource"]
            out += [f"entry[{i}] {res['resourceType']}: {e.message[:300]} at {list(e.absolute_path)}"
                    for e in self._for(res["resourceType"]).iter_errors(res)]
        return out


@cache
def schema_validator(version: str) -> SchemaValidator:
    return SchemaValidator(SCHEMA_DIR / f"fhir.{version.lower()}.schema.json")


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def research_study(bundle: dict[str, Any]) -> dict[str, Any]:
    (rs,) = resources(bundle, "ResearchStudy")
    return rs


def leaves(node: Any, base: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(n: Any, p: str) -> None:
        if isinstance(n, dict):
            for k, v in n.items():
                walk(v, f"{p}.{k}" if p else k)
        elif isinstance(n, list):
            for i, v in enumerate(n):
                walk(v, f"{p}[{i}]")
        else:
            out[p] = n
    walk(node, base)
    return out


def sdtm_to_fhir_checked(sdtm: Path, out: Path, version: str) -> tuple[dict[str, Any], ConversionReport, list[Path]]:
    """SDTM folder -> FHIR bundle, checked by the official JSON schema and the fhir.resources models
    (R4B package for R4, default package for R5): (bundle, report, written paths)."""
    from types import SimpleNamespace

    from trialbridge.fhir.subject_writer import convert_sdtm_to_fhir
    report = ConversionReport()
    paths = convert_sdtm_to_fhir(sdtm, out, options=SimpleNamespace(fhir_version=version, extra={}), report=report)
    bundle = orjson.loads(paths[0].read_bytes())
    assert schema_validator(version).errors(bundle) == []
    if version == "R5":
        from fhir.resources import get_fhir_model_class as get
    else:
        from fhir.resources.R4B import get_fhir_model_class as get
    for e in bundle["entry"]:
        get(e["resource"]["resourceType"]).model_validate(e["resource"])
    return bundle, report, paths
