"""Lint of mappings/fhir_study.yaml and its code tables: coverage of every model leaf per FHIR version,
transforms registered, unique rule ids, declared extensions and code systems only from the tables."""

from __future__ import annotations

import re

import pytest
import trialbridge.fhir.study_writer  # noqa: F401  (registers the transforms)
from trialbridge.fhir.study_common import _tables, ctgov_path, ext_url, model_leaf_paths, spec
from trialbridge.specs import ctgov_enums, get_transform

SPEC = spec()


def _covered(leaf: str, paths: list[str]) -> bool:
    return any(leaf == p or leaf.startswith(p + ".") or leaf.startswith(p + "[") for p in paths)


@pytest.mark.parametrize("version", ("R5", "R4"))
def test_every_model_leaf_is_a_rule_source_or_a_gap(version: str) -> None:
    sources = [p for r in SPEC["rules"] if version in r["target"] for p in r["source"]]
    gaps = [g["path"] for g in SPEC["gaps"] if version in g["versions"]]
    missing = [leaf for leaf in model_leaf_paths() if not _covered(leaf, sources + gaps)]
    assert missing == []
    both = [leaf for leaf in model_leaf_paths() if _covered(leaf, sources) and _covered(leaf, gaps)]
    assert both == [], "a leaf both mapped and declared a gap"


def test_rule_and_gap_paths_are_model_paths() -> None:
    leaves = model_leaf_paths()
    for path in [p for r in SPEC["rules"] for p in r["source"]] + [g["path"] for g in SPEC["gaps"]]:
        assert any(leaf == path or leaf.startswith(path + ".") or leaf.startswith(path + "[") for leaf in leaves), path
        assert not ctgov_path(path).startswith(path.split(".")[0] + "."), f"{path} has no CT.gov path"


def test_rule_ids_unique_transforms_registered_targets_and_cites() -> None:
    ids = [r["id"] for r in SPEC["rules"]] + [g["id"] for g in SPEC["gaps"]]
    assert len(ids) == len(set(ids))
    for r in SPEC["rules"]:
        get_transform(r["transform"])
        assert r.get("cite") and set(r["target"]) <= {"R4", "R5"} and r["target"]


def test_code_tables_cover_the_enums_they_map() -> None:
    enums = ctgov_enums()
    for enum in ("Status", "Phase", "StudyType", "DesignAllocation", "InterventionalAssignment", "ObservationalModel",
                 "DesignTimePerspective", "DesignMasking", "WhoMasked", "BioSpecRetention", "PrimaryPurpose",
                 "AgencyClass", "OfficialRole", "ResponsiblePartyType", "ContactRole", "ArmGroupType",
                 "InterventionType", "Sex", "StandardAge", "SamplingMethod", "ReferenceType", "SecondaryIdType",
                 "OrgStudyIdType"):
        for version in ("R4", "R5"):
            table = _tables()[(enum, version)]
            assert enums[enum] <= set(table) or enum == "Phase", (enum, version, enums[enum] - set(table))
            assert set(table) - enums[enum] <= {"PHASE1|PHASE2", "PHASE2|PHASE3"}, (enum, set(table) - enums[enum])


def test_codes_come_from_known_code_systems() -> None:
    allowed = {"http://hl7.org/fhir/research-study-status", "http://hl7.org/fhir/research-study-phase",
               "http://terminology.hl7.org/CodeSystem/research-study-phase", "http://hl7.org/fhir/study-design",
               "http://hl7.org/fhir/research-study-prim-purp-type",
               "http://terminology.hl7.org/CodeSystem/research-study-prim-purp-type",
               "http://hl7.org/fhir/research-study-party-role", "http://hl7.org/fhir/research-study-party-organization-type",
               "http://hl7.org/fhir/research-study-arm-type", "http://hl7.org/fhir/research-study-objective-type",
               "http://terminology.hl7.org/CodeSystem/research-study-objective-type",
               "http://hl7.org/fhir/research-study-focus-type", "http://hl7.org/fhir/administrative-gender",
               "http://unitsofmeasure.org", "http://loinc.org", "http://hl7.org/fhir/title-type",
               "http://hl7.org/fhir/research-study-classifiers"}
    for (enum, _), rows in _tables().items():
        for code in rows.values():
            assert (code.system in allowed) == bool(code.code), (enum, code)
            assert code.display, (enum, code)


def test_extensions_are_declared_under_one_base() -> None:
    base = SPEC["extension_base"]
    assert re.match(r"^https?://\S+/StructureDefinition/$", base)
    for name, decl in SPEC["extensions"].items():
        assert ext_url(name) == base + name and set(decl["versions"]) <= {"R4", "R5"}
    with pytest.raises(KeyError, match="not declared"):
        ext_url("no-such-extension")


def test_the_one_country_table_is_consistent() -> None:
    # mappings/codes/iso3166_countries.csv serves FHIR region/location, TS FCNTRY and DM COUNTRY
    from trialbridge.specs import load_table, mapping_text
    assert SPEC["country_table"] == "codes/iso3166_countries.csv"
    assert mapping_text(SPEC["country_table"]).startswith("# source:")
    rows = load_table(SPEC["country_table"])
    names = [r["source_code"] for r in rows]
    assert len(names) == len(set(names))
    codes: dict[str, tuple[str, str]] = {}
    for r in rows:
        assert re.fullmatch(r"[A-Z]{3}", r["target_code"]) and re.fullmatch(r"[A-Z]{2}", r["alpha_2"])
        assert r["kind"] in ("iso", "iso-common", "iso-official", "ctgov-spelling")
        assert codes.setdefault(r["target_code"], (r["alpha_2"], r["numeric"])) == (r["alpha_2"], r["numeric"])
    assert len(codes) == 249
    for flag in ([r["target_code"] for r in rows if r["kind"] == "iso"],
                 [r["target_code"] for r in rows if r["ctgov_preferred"] == "Y"]):
        assert sorted(flag) == sorted(codes), "one ISO short name and one CT.gov spelling per country"
