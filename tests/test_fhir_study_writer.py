"""CT.gov -> FHIR ResearchStudy bundles (R4 and R5): validity, facts checked against the source JSON,
determinism, invariants, reports, and golden files discovered from samples/*/."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import DATA, SAMPLES, shared_path
from fhir_study_support import converted, record_paths, research_study, resources, schema_validator, source
from trialbridge.ctgov.v2 import read_ctgov_v2
from trialbridge.fhir.study_common import ctgov_path
from trialbridge.fhir.study_writer import main as writer_main
from trialbridge.fhir.study_writer import write_fhir_bundle
from trialbridge.model import Design, Study
from trialbridge.report import ConversionReport, Kind

RECORDS = record_paths()
VERSIONS = ("R5", "R4")
needs_records = pytest.mark.skipif(not RECORDS, reason="third-party CT.gov records not present")
R5_STATUS = {"RECRUITING": "recruiting", "NOT_YET_RECRUITING": "not-yet-recruiting", "COMPLETED": "completed",
             "ACTIVE_NOT_RECRUITING": "active-but-not-recruiting", "WITHDRAWN": "withdrawn", "TERMINATED": "terminated"}
R4_STATUS = {"RECRUITING": "active", "NOT_YET_RECRUITING": "approved", "COMPLETED": "completed",
             "ACTIVE_NOT_RECRUITING": "closed-to-accrual", "WITHDRAWN": "withdrawn",
             "TERMINATED": "administratively-completed", "UNKNOWN": "closed-to-accrual"}
PHASES = {("NA",): "n-a", ("PHASE1",): "phase-1", ("PHASE2",): "phase-2", ("PHASE3",): "phase-3",
          ("PHASE4",): "phase-4", ("PHASE1", "PHASE2"): "phase-1-phase-2", ("PHASE2", "PHASE3"): "phase-2-phase-3",
          ("EARLY_PHASE1",): "early-phase-1"}


def _id(p: Path) -> str:
    return p.stem


def _ext(node: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    return [e for e in node.get("extension", []) if e["url"].endswith("/" + suffix)]


XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"   # hl7.fhir.uv.xver-r5.r4, written out on purpose
TIME_FRAME = "http://trialbridge.org/fhir/StructureDefinition/outcome-time-frame"


def _xver(node: dict[str, Any], element: str) -> list[dict[str, Any]]:
    return [e for e in node.get("extension", []) if e["url"] == XVER + element]


def _sub(ext: dict[str, Any], name: str) -> list[Any]:
    return [next(v for k, v in s.items() if k.startswith("value")) for s in ext["extension"] if s["url"] == name]


# ------------------------------------------------------------------ validity
@needs_records
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", RECORDS, ids=_id)
def test_bundle_validates(path: Path, version: str) -> None:
    bundle, _ = converted(path, version)
    if version == "R5":
        from fhir.resources.bundle import Bundle
    else:
        from fhir.resources.R4B.bundle import Bundle  # R4B ResearchStudy equals R4's
    Bundle.model_validate(bundle)
    shared_path("fhir", "json_schema")
    assert schema_validator(version).errors(bundle) == []


# ------------------------------------------------------------------ facts against the source JSON
@needs_records
@pytest.mark.parametrize("path", RECORDS, ids=_id)
def test_facts_match_source(path: Path) -> None:
    ps = source(path)["protocolSection"]
    derived = source(path).get("derivedSection", {})
    b5, _ = converted(path, "R5")
    b4, _ = converted(path, "R4")
    rs5, rs4 = research_study(b5), research_study(b4)
    overall = ps.get("statusModule", {}).get("overallStatus")
    # overall status (never lastKnownStatus)
    assert rs5["status"] == "active"
    if overall:
        state = rs5["progressStatus"][0]["state"]
        if overall in R5_STATUS:
            assert state["coding"][0]["code"] == R5_STATUS[overall]
        else:
            assert "coding" not in state and state["text"]
        assert rs4["status"] == R4_STATUS[overall]
    else:
        assert "progressStatus" not in rs5 or "coding" not in rs5["progressStatus"][0]["state"]
    # every phase (combined phases -> one combined code)
    phases = tuple(ps.get("designModule", {}).get("phases", ()))
    if phases:
        assert rs5["phase"]["coding"][0]["code"] == PHASES[phases]
        assert rs4["phase"]["coding"][0]["code"] == PHASES[phases]
        assert rs4["phase"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/research-study-phase"
    # lead sponsor
    lead = ps.get("sponsorCollaboratorsModule", {}).get("leadSponsor")
    if lead:
        (party,) = [p for p in rs5["associatedParty"] if p["role"]["coding"][0]["code"] == "lead-sponsor"]
        assert party["name"] == lead["name"] and party["classifier"][0]["text"] == lead["class"]
        (org,) = resources(b4, "Organization")
        assert rs4["sponsor"]["reference"].endswith(org["id"]) and org["name"] == lead["name"]
    # outcomes, in order, with their time frames
    om = ps.get("outcomesModule", {})
    expected = [(o["measure"], kind, o.get("timeFrame")) for key, kind in
                (("primaryOutcomes", "primary"), ("secondaryOutcomes", "secondary"), ("otherOutcomes", "exploratory"))
                for o in om.get(key, [])]
    got5 = [(o["name"], o["type"][0]["coding"][0]["code"],
             (_ext(o, "outcome-time-frame") or [{}])[0].get("valueString")) for o in rs5.get("outcomeMeasure", [])]
    assert got5 == expected
    got4 = [(_sub(e, "name")[0], _sub(e, "type")[0]["coding"][0]["code"], (_sub(e, TIME_FRAME) or [None])[0])
            for e in _xver(rs4, "ResearchStudy.outcomeMeasure")]
    assert got4 == expected
    # structured eligibility
    el = ps.get("eligibilityModule")
    if el:
        (g5,) = resources(b5, "Group")
        assert rs5["recruitment"]["eligibility"]["reference"] == f"urn:uuid:{g5['id']}"
        assert g5["membership"] == "definitional" and g5.get("description") == el.get("eligibilityCriteria")
        chars = {c["code"].get("coding", [{}])[0].get("code") or c["code"]["text"]: c for c in g5["characteristic"]}
        if el.get("minimumAge"):
            low = chars["30525-0"]["valueRange"]["low"]
            assert f"{low['value']} {low['unit']}" == el["minimumAge"] and low["system"] == "http://unitsofmeasure.org"
        if el.get("maximumAge"):
            high = chars["30525-0"]["valueRange"]["high"]
            assert f"{high['value']} {high['unit']}" == el["maximumAge"]
        if el.get("sex") in ("FEMALE", "MALE"):
            assert chars["46098-0"]["valueCodeableConcept"]["coding"][0]["code"] == el["sex"].lower()
        if "healthyVolunteers" in el:
            assert chars["Accepts healthy volunteers"]["valueBoolean"] is el["healthyVolunteers"]
        (g4,) = resources(b4, "Group")
        assert rs4["enrollment"][0]["reference"] == f"urn:uuid:{g4['id']}"
    # MeSH-coded conditions: registered text kept; every MeSH term coded once; codes only on matching text
    conditions = ps.get("conditionsModule", {}).get("conditions", [])
    meshes = derived.get("conditionBrowseModule", {}).get("meshes", [])
    for rs in (rs5, rs4):
        texts = [c["text"] for c in rs.get("condition", []) if "text" in c]
        assert texts == conditions
        coded = [(cd["code"], cd["display"]) for c in rs.get("condition", []) for cd in c.get("coding", [])]
        assert sorted(coded) == sorted((m["id"], m["term"]) for m in meshes)
        for c in rs.get("condition", []):
            for cd in c.get("coding", []):
                assert cd["system"] == "https://www.nlm.nih.gov/mesh"
                if "text" in c:
                    assert cd["display"].casefold() == c["text"].casefold()


@needs_records
def test_mesh_coded_conditions_present_in_most_records() -> None:
    with_mesh = [p for p in RECORDS if any("coding" in c for c in research_study(converted(p, "R5")[0])
                                           .get("condition", []))]
    assert len(with_mesh) >= len(RECORDS) - 1


# ------------------------------------------------------------------ invariants
def _check_invariants(bundle: dict[str, Any]) -> None:
    assert bundle["type"] == "collection"
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(ids) == len(set(ids))
    for e in bundle["entry"]:
        assert e["fullUrl"] == f"urn:uuid:{e['resource']['id']}"
        assert len(e["resource"]) > 2, f"empty {e['resource']['resourceType']}"
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert node, "empty object"
            if isinstance(node.get("reference"), str):
                refs.append(node["reference"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            assert node, "empty list"
            for v in node:
                walk(v)
        else:
            assert node != "", "empty string"
    walk(bundle)
    assert set(refs) <= set(urls), set(refs) - set(urls)
    # every resource besides the study is referenced
    assert set(urls[1:]) <= set(refs)


@needs_records
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", RECORDS, ids=_id)
def test_invariants_and_determinism(path: Path, version: str) -> None:
    bundle, report = converted(path, version)
    _check_invariants(bundle)
    again = write_fhir_bundle(read_ctgov_v2(source(path), file=str(path), report=ConversionReport())[0],
                              version=version, report=ConversionReport())
    assert orjson.dumps(again) == orjson.dumps(bundle)
    assert not [i for i in report.issues if i.kind is Kind.ERROR]


@needs_records
def test_lossy_entries_name_ctgov_paths() -> None:
    _, report = converted(RECORDS[0], "R5")
    lossy = [i for i in report.issues if i.kind is Kind.LOSSY]
    assert lossy and all(i.source.startswith(("protocolSection.", "derivedSection", "resultsSection", "hasResults",
                                              "documentSection", "annotationSection")) for i in lossy)
    assert "protocolSection.statusModule.statusVerifiedDate" in {i.source for i in lossy}


# ------------------------------------------------------------------ targeted cases
def _study(**kw: Any) -> Study:
    base = read_ctgov_v2({"protocolSection": {"identificationModule": {"nctId": "NCT00000001", "briefTitle": "T"}}},
                         file="t", report=ConversionReport())[0]
    return dataclasses.replace(base, **kw)


def test_combined_phase_keeps_both_phases() -> None:
    s = _study(design=Design(phases=("PHASE2", "PHASE3")))
    for v, system in (("R5", "http://hl7.org/fhir/research-study-phase"),
                      ("R4", "http://terminology.hl7.org/CodeSystem/research-study-phase")):
        phase = research_study(write_fhir_bundle(s, version=v, report=ConversionReport()))["phase"]
        assert phase["coding"] == [{"system": system, "code": "phase-2-phase-3", "display": "Phase 2/Phase 3"}]


def test_unmappable_phase_combination_is_reported_not_guessed() -> None:
    report = ConversionReport()
    s = _study(design=Design(phases=("PHASE1", "PHASE3")))
    phase = research_study(write_fhir_bundle(s, version="R5", report=report))["phase"]
    assert phase == {"text": "PHASE1|PHASE3"}
    assert [i.source for i in report.issues if i.kind is Kind.UNMAPPED_CODE] == [
        "protocolSection.designModule.phases"]


def test_r4_status_without_code_is_a_documented_choice_and_reported() -> None:
    from trialbridge.model import Status
    for value, kind in (("UNKNOWN", Kind.INFERRED), ("WITHHELD", Kind.INFERRED), (None, Kind.MISSING)):
        report = ConversionReport()
        bundle = write_fhir_bundle(_study(status=Status(overall_status=value)), version="R4", report=report)
        assert research_study(bundle)["status"] == "closed-to-accrual"
        assert [i.kind for i in report.issues if i.rule == "fhir.study.status"] == [kind]


def test_unknown_country_is_reported_not_guessed() -> None:
    from trialbridge.model import ContactsLocations, Location
    report = ConversionReport()
    s = _study(contacts_locations=ContactsLocations(locations=(Location(city="X", country="Atlantis"),
                                                               Location(city="Y", country="Czechia"))))
    rs = research_study(write_fhir_bundle(s, version="R5", report=report))
    assert rs["region"] == [{"text": "Atlantis"}, {"coding": [{"system": "urn:iso:std:iso:3166", "code": "CZ",
                                                               "display": "Czechia"}], "text": "Czechia"}]
    assert [i.kind for i in report.issues] == [Kind.UNMAPPED_CODE]


def test_partial_dates_stay_partial_with_actual_flag() -> None:
    from trialbridge.model import DateStruct, Status
    s = _study(status=Status(overall_status="RECRUITING", start_date=DateStruct("2019-09", "ACTUAL"),
                             completion_date=DateStruct("2026", "ESTIMATED")))
    rs = research_study(write_fhir_bundle(s, version="R5", report=ConversionReport()))
    assert rs["period"] == {"start": "2019-09", "end": "2026"}
    assert [(p.get("actual"), p.get("period")) for p in rs["progressStatus"]] == [
        (True, None), (True, {"start": "2019-09"}), (False, {"end": "2026"})]


def test_bad_version_is_refused() -> None:
    with pytest.raises(ValueError, match="FHIR version must be R4 or R5, not 'R3'"):
        write_fhir_bundle(_study(), version="R3", report=ConversionReport())


def test_mapping_table_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert writer_main(["--table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| Rule | CT.gov source | FHIR R5 | FHIR R4 |")
    assert "statusModule.overallStatus" in out and "fhir.study.phase" in out
    assert ctgov_path("arms_interventions.arm_groups[2].label") == "protocolSection.armsInterventionsModule.armGroups[2].label"


# ------------------------------------------------------------------ legacy XML (reader owned by another engineer)
LEGACY = sorted((DATA / "ctgov" / "legacy_xml").glob("*.xml"))


@pytest.mark.skipif(importlib.util.find_spec("trialbridge.ctgov.legacy_xml") is None,
                    reason="legacy XML reader (trialbridge.ctgov.legacy_xml) not present yet")
@pytest.mark.skipif(not LEGACY, reason="third-party legacy XML records not present")
@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.stem)
def test_legacy_xml_records_convert(path: Path) -> None:
    from fhir.resources.bundle import Bundle
    from fhir.resources.R4B.bundle import Bundle as BundleR4
    from trialbridge.ctgov.legacy_xml import read_legacy_xml
    from trialbridge.safeio import parse_xml, read_bytes
    (s,) = read_legacy_xml(parse_xml(read_bytes(path), file=str(path)), file=str(path), report=ConversionReport())
    for version, cls in (("R5", Bundle), ("R4", BundleR4)):
        bundle = write_fhir_bundle(s, version=version, report=ConversionReport())
        cls.model_validate(bundle)
        _check_invariants(bundle)
        if s.design and s.design.phases:
            assert research_study(bundle)["phase"]["coding"][0]["code"] == PHASES[s.design.phases]


# ------------------------------------------------------------------ golden files from samples/*/
SAMPLE_DIRS = sorted(p.parent for p in SAMPLES.glob("*/ctgov.json"))
UPDATE = os.environ.get("TRIALBRIDGE_UPDATE_GOLDEN") == "1"


def _golden(path: Path, data: Any) -> None:
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"golden file {path} missing: run with TRIALBRIDGE_UPDATE_GOLDEN=1 to create it")
        path.write_bytes(text)
    assert path.read_bytes() == text, f"{path} differs (TRIALBRIDGE_UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.skipif(not SAMPLE_DIRS, reason="no samples/*/ctgov.json yet")
@pytest.mark.parametrize("folder", SAMPLE_DIRS, ids=lambda p: p.name)
def test_golden_samples(folder: Path) -> None:
    data = orjson.loads((folder / "ctgov.json").read_bytes())
    (s,) = read_ctgov_v2(data, file="ctgov.json", report=ConversionReport())
    for version in VERSIONS:
        report = ConversionReport()
        bundle = write_fhir_bundle(s, version=version, report=report)
        _check_invariants(bundle)
        if version == "R5":
            from fhir.resources.bundle import Bundle
        else:
            from fhir.resources.R4B.bundle import Bundle
        Bundle.model_validate(bundle)
        if (DATA / "fhir" / "json_schema").exists():
            assert schema_validator(version).errors(bundle) == []
        _golden(folder / f"fhir-{version.lower()}.bundle.json", bundle)
        if version == "R5":
            _golden(folder / "fhir-r5.report.json", report.to_json())


def test_gap_scan_in_one_walk_equals_one_walk_per_gap() -> None:
    # the writer's gap scan (leaves_under_each) must find exactly what leaves_under finds, path by path
    from fhir_study_support import study
    from trialbridge.fhir.study_common import leaves_under, leaves_under_each, spec
    from trialbridge.model import Contact, ContactsLocations, Location
    odd = _study(contacts_locations=ContactsLocations(locations=(
        Location(city="A"), Location(city="B", contacts=(Contact(name="x", role=""),)),
        Location(contacts=(Contact(role="PRINCIPAL_INVESTIGATOR"), Contact(name="y"))))))
    studies = [odd] + [study(p) for p in record_paths()]
    for version in ("R4", "R5"):
        paths = tuple(g["path"] for g in spec()["gaps"] if version in g["versions"])
        for s in studies:
            assert leaves_under_each(s, paths) == [list(leaves_under(s, p)) for p in paths]


def test_r4_site_contact_losses_reported_once_and_in_r4_terms() -> None:
    """R4 Location has no contact element at all: a site contact's role is lost with the contact
    (gap.site_contacts.r4), not a second time as an R5 ExtendedContactDetail.purpose gap R4 does not have."""
    _, report = converted(SAMPLES / "NCT04835883" / "ctgov.json", "R4")
    lossy = [i for i in report.issues if i.kind is Kind.LOSSY]
    sources = [i.source for i in lossy]
    assert "protocolSection.contactsLocationsModule.locations[0].contacts[0].role" in sources
    assert len(sources) == len(set(sources)), sorted(s for s in sources if sources.count(s) > 1)
    assert not [i.message for i in lossy if "ExtendedContactDetail" in i.message]


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_interventions_sharing_a_name_link_to_the_arm_that_lists_them(version: str) -> None:
    """NCT02260193 (archived XML) has three interventions named 'AKB-6548', one per dose arm; every arm names
    'Drug: AKB-6548'. Each arm must link to the intervention listing it — all three were linked to the first
    (dose 1) one, a wrong arm/intervention association, read back as dose 2 and 3 labels on intervention 0."""
    from trialbridge.fhir.study_reader import read_fhir_study
    arms = [{"label": f"Dose {k}", "type": "EXPERIMENTAL", "interventionNames": ["Drug: AKB-6548"]} for k in (1, 2, 3)]
    ivs = [{"type": "DRUG", "name": "AKB-6548", "description": f"starting dose {k}", "armGroupLabels": [f"Dose {k}"]}
           for k in (1, 2, 3)]
    record = {"protocolSection": {"identificationModule": {"nctId": "NCT02260193", "briefTitle": "t"},
                                  "armsInterventionsModule": {"armGroups": arms, "interventions": ivs}}}
    s = read_ctgov_v2(record, file="r", report=ConversionReport())[0]
    report = ConversionReport()
    bundle = write_fhir_bundle(s, version=version, report=report)
    rs = research_study(bundle)
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    if version == "R5":
        links = [[x["reference"] for x in g["intendedExposure"]] for g in rs["comparisonGroup"]]
    else:
        links = [[x["valueReference"]["reference"] for x in g["extension"]] for g in rs["arm"]]
    assert [[by_url[u]["description"] for u in arm] for arm in links] == [
        ["starting dose 1"], ["starting dose 2"], ["starting dose 3"]]
    assert not [i for i in report.issues if i.source.startswith("protocolSection.armsInterventionsModule")]
    (back,) = read_fhir_study(bundle, file="b", report=ConversionReport())
    assert [iv.arm_group_labels for iv in back.arms_interventions.interventions] == [("Dose 1",), ("Dose 2",),
                                                                                     ("Dose 3",)]
