"""R4 study output uses the official HL7 cross-version extensions (hl7.fhir.uv.xver-r5.r4) for R5-only
ResearchStudy elements; the reader also reads the project extensions earlier releases wrote instead.

Expected URLs are written out here on purpose (not taken from the spec): the canonical pattern is
``http://hl7.org/fhir/5.0/StructureDefinition/extension-<R5 element path>`` and each complex extension's
sub-extensions are the R5 element's children, checked against the R5 model of fhir.resources (5.0.0).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fhir_study_support import converted, record_paths, schema_validator, study
from trialbridge import model as m
from trialbridge.fhir.study_common import spec
from trialbridge.fhir.study_reader import read_fhir_study
from trialbridge.fhir.study_writer import write_fhir_bundle
from trialbridge.report import ConversionReport, Kind

XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
PROJECT = "http://trialbridge.org/fhir/StructureDefinition/"
TIME_FRAME = PROJECT + "outcome-time-frame"
# R5 element -> the project extension it replaced (earlier releases' R4 output)
EXPECTED = {
    "ResearchStudy.label": "research-study-label",
    "ResearchStudy.progressStatus": "research-study-progress-status",
    "ResearchStudy.associatedParty": "research-study-associated-party",
    "ResearchStudy.recruitment": "research-study-recruitment",
    "ResearchStudy.outcomeMeasure": "research-study-outcome-measure",
    "ResearchStudy.descriptionSummary": "research-study-description-detail",
    "Group.description": "eligibility-criteria",
}
RECORDS = record_paths()
needs_records = pytest.mark.skipif(not RECORDS, reason="../shared/data/ctgov not present")


def _value_type(annotation: Any) -> str:
    """value[x] name for a fhir.resources R5 field annotation."""
    text = str(annotation)
    for marker, vtype in (("CodeableConceptType", "valueCodeableConcept"), ("PeriodType", "valuePeriod"),
                          ("ReferenceType", "valueReference"), ("UnsignedInt(", "valueUnsignedInt"),
                          ("Markdown(", "valueMarkdown"), ("String(", "valueString"), ("bool", "valueBoolean")):
        if marker in text:
            return vtype
    raise AssertionError(f"no value[x] for {text}")


def test_declared_cross_version_extensions_are_the_official_ones() -> None:
    from fhir.resources import group, researchstudy
    models = {"ResearchStudy": researchstudy, "Group": group}
    s = spec()
    assert s["xver_base"] == XVER and s["xver_package"].startswith("hl7.fhir.uv.xver-r5.r4#")
    assert set(s["xver_extensions"]) == set(EXPECTED)
    for element, decl in s["xver_extensions"].items():
        assert re.fullmatch(r"(ResearchStudy|Group)\.[a-z][A-Za-z]*", element) and "[x]" not in element
        rtype, child = element.split(".", 1)
        assert decl["versions"] == ["R4"] and decl["context"] == rtype
        r5 = models[rtype]
        field = getattr(r5, rtype).model_fields[child]
        if "parts" in decl:   # complex: R5 backbone element; sub-extension names and types from its children
            backbone = getattr(r5, rtype + child[0].upper() + child[1:])
            for name, vtype in decl["parts"].items():
                assert name in backbone.model_fields, (element, name)
                assert vtype == _value_type(backbone.model_fields[name].annotation), (element, name)
        else:
            assert decl["value"] == _value_type(field.annotation)
        for name in decl.get("nested", ()):
            assert name in s["extensions"]   # our own, absolute url
    for name, decl in s["retired_extensions"].items():
        assert EXPECTED[decl["replaced_by"]] == name
        assert name not in s["extensions"]   # never written again


def _ext_urls(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if "url" in node and ("extension" in node or any(k.startswith("value") for k in node)):
            out.append(node["url"])
        for v in node.values():
            out += _ext_urls(v)
    elif isinstance(node, list):
        for v in node:
            out += _ext_urls(v)
    return out


@needs_records
@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_r4_output_uses_official_urls_and_r5_child_names(path: Path) -> None:
    bundle, _ = converted(path, "R4")
    rs = bundle["entry"][0]["resource"]
    retired = {PROJECT + name for name in EXPECTED.values()}
    assert not retired & set(_ext_urls(bundle))
    parts = {e: d.get("parts", {}) for e, d in spec()["xver_extensions"].items()}
    seen: set[str] = set()
    for e in rs.get("extension", []):
        if not e["url"].startswith(XVER):
            assert e["url"].startswith(PROJECT), e["url"]
            continue
        element = e["url"][len(XVER):]
        seen.add(element)
        assert element in parts
        if not parts[element]:
            assert set(e) == {"url", "valueMarkdown"}
            continue
        for sub in e["extension"]:
            (vkey,) = [k for k in sub if k.startswith("value")]
            if sub["url"] == TIME_FRAME:
                assert element == "ResearchStudy.outcomeMeasure" and vkey == "valueString"
            else:
                assert parts[element][sub["url"]] == vkey, (element, sub["url"])
    # every record has a status (or its absence) and a title; an R4 bundle always says where it stands
    assert "ResearchStudy.progressStatus" in seen
    src = study(path)
    if src.description and src.description.brief_summary:
        assert "ResearchStudy.descriptionSummary" in seen
        assert rs.get("description") == src.description.detailed_description
    if src.outcomes and src.outcomes.primary:
        assert "ResearchStudy.outcomeMeasure" in seen
    if src.eligibility and src.eligibility.criteria:
        (group,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Group"]
        assert [x["valueMarkdown"] for x in group["extension"] if x["url"] == XVER + "Group.description"] == [
            src.eligibility.criteria]


def _to_retired_shape(bundle: dict[str, Any]) -> dict[str, Any]:
    """The R4 shape earlier releases wrote: project extensions, timeFrame as a relative sub-extension,
    R4 description = brief summary with the detailed description in research-study-description-detail."""
    old = copy.deepcopy(bundle)
    rs = old["entry"][0]["resource"]
    summary = None
    exts = []
    for e in rs.get("extension", []):
        if e["url"] == XVER + "ResearchStudy.descriptionSummary":
            summary = e["valueMarkdown"]
            continue
        if e["url"].startswith(XVER):
            e["url"] = PROJECT + EXPECTED[e["url"][len(XVER):]]
            for sub in e.get("extension", []):
                if sub["url"] == TIME_FRAME:
                    sub["url"] = "timeFrame"
        exts.append(e)
    for entry in old["entry"][1:]:
        for e in entry["resource"].get("extension", []):
            if e["url"] == XVER + "Group.description":
                e["url"] = PROJECT + "eligibility-criteria"
    detail = rs.pop("description", None)
    if detail is not None:
        exts.append({"url": PROJECT + "research-study-description-detail", "valueMarkdown": detail})
    if summary is not None:
        rs["description"] = summary
    rs["extension"] = exts
    return old


@needs_records
@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_bundles_written_with_the_retired_project_extensions_still_read(path: Path) -> None:
    bundle, _ = converted(path, "R4")
    old = _to_retired_shape(bundle)
    assert XVER not in str(old)
    new_report, old_report = ConversionReport(), ConversionReport()
    (from_new,) = read_fhir_study(bundle, file="new.json", report=new_report)
    (from_old,) = read_fhir_study(old, file="old.json", report=old_report)
    assert from_old == from_new
    for report in (new_report, old_report):
        assert not [i for i in report.issues if i.kind == Kind.UNMAPPED_SOURCE and "extension(" in (i.source or "")]


def _description_study(brief: str | None, detail: str | None) -> m.Study:
    base = study(RECORDS[0])
    return replace(base, description=m.Description(brief_summary=brief, detailed_description=detail))


@needs_records
@pytest.mark.parametrize(("brief", "detail"), [("Brief.", "Detailed."), ("Brief.", None), (None, "Detailed only.")])
def test_r4_description_round_trip(brief: str | None, detail: str | None) -> None:
    src = _description_study(brief, detail)
    bundle = write_fhir_bundle(src, version="R4", report=ConversionReport())
    assert schema_validator("R4").errors(bundle) == []
    rs = bundle["entry"][0]["resource"]
    summaries = [e for e in rs["extension"] if e["url"] == XVER + "ResearchStudy.descriptionSummary"]
    assert [e["valueMarkdown"] for e in summaries] == ([brief] if brief else [])
    assert rs.get("description") == detail
    (back,) = read_fhir_study(bundle, file="x.json", report=ConversionReport())
    assert back.description == src.description


def test_foreign_r4_without_cross_version_extensions_keeps_description_as_summary() -> None:
    rs = {"resourceType": "ResearchStudy", "id": "x", "status": "active", "description": "Summary."}
    (got,) = read_fhir_study(rs, file="x.json", report=ConversionReport(), version="R4")
    assert got.description == m.Description(brief_summary="Summary.")
    rs["extension"] = [{"url": XVER + "ResearchStudy.label",
                        "extension": [{"url": "value", "valueString": "Official title"}]}]
    (got,) = read_fhir_study(rs, file="x.json", report=ConversionReport(), version="R4")
    assert got.description == m.Description(detailed_description="Summary.")   # follows R5: description is detailed
