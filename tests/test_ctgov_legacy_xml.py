"""The archived <clinical_study> XML reader: real records, the AACT altered copies, and the rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA, shared_path
from lxml import etree
from trialbridge.ctgov import rules
from trialbridge.ctgov.legacy_xml import read_legacy_xml
from trialbridge.errors import InputError
from trialbridge.model import Study
from trialbridge.pipeline import sniff
from trialbridge.report import ConversionReport, Kind, Severity
from trialbridge.safeio import parse_xml, read_bytes
from trialbridge.specs import load_codemap, load_spec, registered_transforms

LEGACY = DATA / "ctgov" / "legacy_xml"
RECORDS = sorted(LEGACY.glob("*.xml")) if LEGACY.is_dir() else []
VARIANTS = LEGACY / "aact_test_variants"


def read_file(path: Path) -> tuple[Study, ConversionReport]:
    report = ConversionReport()
    studies = read_legacy_xml(parse_xml(read_bytes(path), file=str(path)), file=str(path), report=report)
    assert len(studies) == 1
    return studies[0], report


def read_text(xml: str, file: str = "t.xml") -> tuple[Study, ConversionReport]:
    report = ConversionReport()
    return read_legacy_xml(etree.fromstring(xml.encode()), file=file, report=report)[0], report


def minimal(body: str) -> str:
    return f"<clinical_study><id_info><nct_id>NCT01234567</nct_id></id_info>{body}</clinical_study>"


def test_corpus_is_present() -> None:
    shared_path("ctgov", "legacy_xml")
    assert len(RECORDS) == 44


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_archived_record_reads(path: Path) -> None:
    study, report = read_file(path)
    root = etree.parse(str(path)).getroot()
    assert not [i for i in report.issues if i.severity is Severity.ERROR]
    # every element is read or declared: nothing unmapped in real records
    assert [i.source for i in report.issues if i.kind is Kind.UNMAPPED_SOURCE] == []
    assert [i for i in report.issues if i.kind is Kind.UNMAPPED_CODE] == []
    assert study.identification.nct_id == root.findtext("id_info/nct_id")
    assert study.status and study.status.overall_status
    assert study.sponsor_collaborators and study.sponsor_collaborators.lead_sponsor
    assert study.sponsor_collaborators.lead_sponsor.name == root.findtext("sponsors/lead_sponsor/agency")
    phase = root.findtext("phase")
    if phase:
        assert study.design and study.design.phases
    arms = root.findall("arm_group")
    assert len(study.arms_interventions.arm_groups if study.arms_interventions else ()) == len(arms)
    n_iv = len(root.findall("intervention"))
    assert len(study.arms_interventions.interventions if study.arms_interventions else ()) == n_iv
    for tag, attr in (("primary_outcome", "primary"), ("secondary_outcome", "secondary"),
                      ("other_outcome", "other")):
        assert len(getattr(study.outcomes, attr) if study.outcomes else ()) == len(root.findall(tag))
    if root.find("eligibility/criteria/textblock") is not None:
        assert study.eligibility and study.eligibility.criteria
    if root.find("clinical_results") is not None:
        assert study.has_results is True
        assert isinstance(study.results_section["clinical_results"], dict)
        assert any(i.kind is Kind.LOSSY and i.source == "clinical_study/clinical_results"
                   for i in report.issues)
    meshes = root.findall("condition_browse/mesh_term")
    assert [m.term for m in study.condition_meshes] == [m.text for m in meshes]
    assert all(m.id is None for m in study.condition_meshes)


def test_values_of_one_record() -> None:
    study, _ = read_file(shared_path("ctgov", "legacy_xml", "aact_NCT02654730.xml"))
    assert study.design.phases == ("PHASE2", "PHASE3")
    assert study.status.overall_status == "TERMINATED"
    assert study.status.primary_completion_date.type == "ACTUAL"
    assert study.status.completion_date.type == "ESTIMATED"  # Anticipated
    assert study.status.study_first_submit_date == "2016-01-05"
    assert study.design.design_info.intervention_model == "PARALLEL"
    assert study.design.design_info.masking.masking == "NONE"
    assert study.design.enrollment.count == 61 and study.design.enrollment.type == "ACTUAL"


def test_masking_roles_and_site_contacts() -> None:
    study, _ = read_text(minimal(
        "<study_design_info><masking>Double (Participant, Investigator)</masking></study_design_info>"
        "<phase>N/A</phase><eligibility><gender>All</gender><minimum_age>18 Years</minimum_age>"
        "<maximum_age>N/A</maximum_age><healthy_volunteers>Accepts Healthy Volunteers</healthy_volunteers>"
        "</eligibility><location><facility><name>H</name><address><city>C</city><country>X</country>"
        "</address></facility><status>Recruiting</status><investigator><last_name>Dr A</last_name>"
        "<role>Sub-Investigator</role></investigator></location>"))
    masking = study.design.design_info.masking
    assert masking.masking == "DOUBLE" and masking.who_masked == ("PARTICIPANT", "INVESTIGATOR")
    assert study.design.phases == ("NA",)
    assert study.eligibility.sex == "ALL" and study.eligibility.minimum_age == "18 Years"
    assert study.eligibility.maximum_age is None and study.eligibility.healthy_volunteers is True
    loc = study.contacts_locations.locations[0]
    assert loc.status == "RECRUITING"
    assert loc.contacts[0].name == "Dr A" and loc.contacts[0].role == "SUB_INVESTIGATOR"


@pytest.mark.parametrize("value,expected", [("September 26, 2019", "2019-09-26"),
                                            ("September 2019", "2019-09"), ("Unknown", None)])
def test_display_dates(value: str, expected: str | None) -> None:
    assert rules.read_display_date(value) == expected


def test_unknown_code_is_reported_not_guessed() -> None:
    study, report = read_text(minimal("<overall_status>Recruiting soon</overall_status>"
                                      "<phase>Phase 5</phase>"))
    assert study.status is None or study.status.overall_status is None
    assert not (study.design and study.design.phases)
    codes = [(i.source, i.rule) for i in report.issues if i.kind is Kind.UNMAPPED_CODE]
    assert codes == [("clinical_study/overall_status", "lx.status.overall"),
                     ("clinical_study/phase", "lx.design.phase")]


def test_unread_element_is_reported_by_path() -> None:
    _, report = read_text(minimal("<location><facility><name>H</name><wing>B</wing></facility></location>"
                                  "<location><facility><name>I</name><wing>C</wing></facility></location>"
                                  "<brand_new x='1'>v</brand_new>"))
    unmapped = [i.source for i in report.issues if i.kind is Kind.UNMAPPED_SOURCE]
    assert unmapped == ["clinical_study/location/facility/wing", "clinical_study/brand_new/@x",
                        "clinical_study/brand_new"]


def test_bad_date_is_invalid_value() -> None:
    study, report = read_text(minimal("<start_date>Spring 2019</start_date>"))
    assert study.status is None or study.status.start_date is None
    assert [(i.kind, i.source) for i in report.issues] == [(Kind.INVALID_VALUE, "clinical_study/start_date")]


def test_not_clinical_study_root_is_refused() -> None:
    with pytest.raises(InputError) as exc:
        read_text("<rss><channel/></rss>", file="feed.xml")
    assert str(exc.value) == ("feed.xml: XML root element <rss> is not <clinical_study> "
                              "(legacy ClinicalTrials.gov record)")


# ------------------------------------------------------------------ the AACT altered copies
@pytest.mark.parametrize("name", ["aact_covid_search.xml", "aact_empty_search.xml"])
def test_search_result_rss_is_refused(name: str) -> None:
    path = shared_path("ctgov", "legacy_xml", "aact_test_variants", name)
    with pytest.raises(InputError) as exc:
        sniff(path)
    assert str(exc.value) == (f"{path}: XML root element <rss> is not <clinical_study> "
                              "(legacy ClinicalTrials.gov record)")
    with pytest.raises(InputError):
        read_file(path)


@pytest.mark.parametrize("name", ["aact_NCT00980226.xml", "aact_NCT00980226-id-mismatch.xml"])
def test_file_named_for_an_alias_reads_as_the_record(name: str) -> None:
    # the content is NCT00081588, whose nct_alias is NCT00980226: the name is an alias, not a lie
    study, report = read_file(shared_path("ctgov", "legacy_xml", "aact_test_variants", name))
    assert study.identification.nct_id == "NCT00081588"
    assert study.identification.nct_id_aliases == ("NCT00980226",)
    notes = [i for i in report.issues if i.rule == "lx.file_name"]
    assert [(n.severity, n.message) for n in notes] == [
        (Severity.INFO, "file name names NCT00980226, an alias (nct_alias) of NCT00081588; "
                        "read as NCT00081588")]


def test_file_named_for_another_study_is_reported() -> None:
    _, report = read_text(minimal(""), file="dump/NCT99999999.xml")
    notes = [(i.severity, i.message) for i in report.issues if i.rule == "lx.file_name"]
    assert notes == [(Severity.WARNING, "file name names NCT99999999 but the record is NCT01234567 "
                      "(not one of its aliases); read as the content says")]


def test_pre_2017_layout_is_read_with_its_gaps_declared() -> None:
    path = shared_path("ctgov", "legacy_xml", "aact_test_variants", "aact_NCT02028676_modified.xml")
    study, report = read_file(path)
    info = study.design.design_info
    assert (info.allocation, info.intervention_model, info.primary_purpose, info.masking.masking) == (
        "RANDOMIZED", "FACTORIAL", "TREATMENT", "NONE")
    lossy = {i.rule for i in report.issues if i.kind is Kind.LOSSY}
    assert {"lx.design.old.endpoint", "lx.gap.authority", "lx.outcome.safety_issue"} <= lossy
    assert not [i for i in report.issues if i.kind in (Kind.UNMAPPED_SOURCE, Kind.UNMAPPED_CODE)]


@pytest.mark.parametrize("name", ["aact_NCT00513591_mod.xml", "aact_NCT00513591_redownloaded.xml",
                                  "aact_example_study.xml", "aact_raw_study_changed.xml"])
def test_old_downloads_are_read(name: str) -> None:
    study, report = read_file(shared_path("ctgov", "legacy_xml", "aact_test_variants", name))
    assert not [i for i in report.issues if i.severity is Severity.ERROR]
    assert not [i for i in report.issues if i.kind in (Kind.UNMAPPED_SOURCE, Kind.UNMAPPED_CODE)]
    assert study.status.study_first_submit_date  # from firstreceived_date
    if name.startswith("aact_example") or name.startswith("aact_raw"):
        assert study.eligibility.sex == "ALL"  # "Both", replaced by "All" in 2017


def test_altered_yes_no_value_is_reported() -> None:
    path = shared_path("ctgov", "legacy_xml", "aact_test_variants", "aact_NCT00513591_mod.xml")
    study, report = read_file(path)
    assert study.eligibility.gender_based is None
    bad = [(i.source, i.message) for i in report.issues if i.kind is Kind.INVALID_VALUE]
    assert bad == [("clinical_study/eligibility/gender_based", "'false' is not Yes/No; value left out")]


# ------------------------------------------------------------------ spec lint
def _all_rules(spec: dict) -> list[dict]:
    return list(rules.iter_rules(spec["rules"]))


def test_spec_names_only_registered_transforms_and_known_codes() -> None:
    spec = load_spec("ctgov_legacy_xml.yaml")
    known = set(registered_transforms())
    systems = {r["source_system"] for r in load_codemap(rules.DISPLAY_TERMS).rows}
    for rule in _all_rules(spec):
        assert "id" in rule and "xml" in rule, rule
        for name in rules._as_list(rule.get("transform")):
            assert name.partition(":")[0] in known, rule["id"]
        if "code" in rule:
            assert f"ctgov-display:{rule['code']}" in systems, rule["id"]
    for name in spec.get("derive", []):
        assert name in known


def test_code_table_covers_the_xsd_enumerations() -> None:
    xsd = etree.parse(str(shared_path("ctgov", "public.xsd")))
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    codemap = load_codemap(rules.DISPLAY_TERMS)
    for simple_type, code in [("recruitment_status_enum", "overall_status"),
                              ("expanded_access_status_enum", "overall_status"),
                              ("recruitment_status_enum", "recruitment_status"),
                              ("phase_enum", "phase"), ("intervention_type_enum", "intervention_type"),
                              ("gender_enum", "gender"), ("agency_class_enum", "agency_class"),
                              ("role_enum", "official_role"), ("sampling_method_enum", "sampling_method"),
                              ("responsible_party_type_enum", "responsible_party_type"),
                              ("biospec_retention_enum", "biospec_retention"), ("actual_enum", "date_type")]:
        values = xsd.xpath(f"//xs:simpleType[@name='{simple_type}']//xs:enumeration/@value", namespaces=ns)
        assert values
        for value in values:
            # combined phases ("Phase 1/Phase 2") are split by the rule's transform first
            for part in rules.split_phase(value) if code == "phase" else [value]:
                assert codemap.lookup(part, f"ctgov-display:{code}"), (simple_type, part)
