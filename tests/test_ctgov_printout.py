"""The record printout reader: both seed layouts, partial printouts, and the criteria rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED
from trialbridge.ctgov import rules
from trialbridge.ctgov.printout import detect_layout, is_printout, read_printout
from trialbridge.errors import InputError
from trialbridge.model import Study
from trialbridge.report import ConversionReport, Kind
from trialbridge.specs import load_codemap, load_spec, registered_transforms

SEEDS = SHARED / "seeds"
PAGE = "NCT04835883_record_page.txt"
LINES = "NCT04522505_record_printout.txt"


def seed_text(name: str) -> str:
    path = SEEDS / name
    if not path.exists():
        pytest.skip(f"seed printout not present: {path}")
    return path.read_text(encoding="utf-8")


def read(text: str, file: str = "p.txt") -> tuple[Study, ConversionReport]:
    report = ConversionReport()
    return read_printout(text, file=file, report=report)[0], report


def test_layouts_are_detected() -> None:
    assert detect_layout(seed_text(PAGE)) == "record_page"
    assert detect_layout(seed_text(LINES)) == "labelled_lines"
    assert not is_printout("Dear team,\nplease find the protocol attached.\n")


def test_record_page() -> None:
    study, report = read(seed_text(PAGE), file=PAGE)
    ident, status, design = study.identification, study.status, study.design
    assert ident.nct_id == "NCT04835883"
    assert status.overall_status == "RECRUITING"
    assert (status.start_date.date, status.start_date.type) == ("2019-09-26", "ACTUAL")
    assert (status.primary_completion_date.date, status.primary_completion_date.type) == (
        "2021-11-05", "ESTIMATED")
    assert status.status_verified_date == "2021-04"
    assert design.phases == ("PHASE2",) and design.study_type == "INTERVENTIONAL"
    assert (design.enrollment.count, design.enrollment.type) == (10, "ESTIMATED")
    assert design.design_info.masking.masking == "NONE"
    assert design.design_info.allocation == "NA"
    arms = study.arms_interventions
    assert arms.arm_groups[0].type == "EXPERIMENTAL"
    assert arms.interventions[0].type == "BIOLOGICAL"
    assert arms.interventions[0].arm_group_labels == (arms.arm_groups[0].label,)
    outcomes = study.outcomes
    assert (len(outcomes.primary), len(outcomes.secondary), len(outcomes.other)) == (3, 13, 2)
    assert all(o.time_frame for o in outcomes.primary + outcomes.secondary + outcomes.other)
    elig = study.eligibility
    assert (elig.sex, elig.minimum_age, elig.maximum_age, elig.healthy_volunteers) == (
        "ALL", "18 Years", "70 Years", False)
    assert elig.std_ages == ("ADULT", "OLDER_ADULT")
    loc = study.contacts_locations.locations[0]
    assert (loc.facility, loc.city, loc.status) == ("Hanyang University Medical Center", "Seoul",
                                                    "RECRUITING")
    assert len(loc.contacts) == 4
    assert study.contacts_locations.overall_officials[0].role == "PRINCIPAL_INVESTIGATOR"
    kinds = [(i.kind, i.source or i.target) for i in report.issues]
    assert kinds == [
        (Kind.INFERRED, "printout:1. Study Identification/Unique Protocol Identification Number"),
        (Kind.INVALID_VALUE, "printout:3. Sponsor/Collaborators/Collaborators"),
        (Kind.INFERRED, "protocolSection.armsInterventionsModule.interventions[0].armGroupLabels"),
    ]
    assert all(i.record == "NCT04835883" and i.file == PAGE for i in report.issues)


def test_record_page_keeps_the_structured_criteria() -> None:
    study, _ = read(seed_text(PAGE))
    crit = study.eligibility.criteria
    assert crit.startswith("Inclusion Criteria:\n\n1. Patients with HLA-haplo-matched bone marrow donor"
                           " less than 70 years old\n2. Patients meeting:\n\n   -at least 4 of the 2012")
    assert "\n\n5-1. For the lupus cytopenia sub-group only:\n\n* Patients with refractory cytopenia" in crit
    assert "\n* Lymphocyte count < 1,500/mm3 [Platelet associated]\n* Platelet count" in crit
    assert "\n\n5-2. For the lupus nephritis sub-group only:" in crit
    assert "\n\nExclusion Criteria:\n\n1. Patients unable or unwilling" in crit
    assert crit.endswith("\n8. For the lupus nephritis sub-group only: Patients with serum creatinine "
                         "> 250 μmol/L")
    # every numbered exclusion item kept, one per line
    assert [ln[:2] for ln in crit.split("Exclusion Criteria:\n\n")[1].splitlines()] == [
        f"{n}." for n in range(1, 9)]


def test_labelled_lines_printout_is_read_as_far_as_it_goes() -> None:
    study, report = read(seed_text(LINES), file=LINES)
    assert study.identification.nct_id == "NCT04522505"
    assert study.status.overall_status == "COMPLETED"
    assert study.status.last_known_status is None  # "None"
    assert study.status.why_stopped is None  # "Not Stopped"
    assert study.identification.acronym is None
    assert study.sponsor_collaborators.lead_sponsor.name == "Corestemchemon, Inc."
    assert study.oversight.has_dmc is True and study.oversight.is_us_export is False
    assert study.oversight.fdaaa801_violation is None  # the printout is cut off there
    assert study.description.brief_summary.count("\n\n") == 1
    assert study.design is None  # no design labels, and no phase guessed from "phase 1" prose
    missing = [(i.source or i.target) for i in report.issues if i.kind is Kind.MISSING]
    assert missing[0] == "printout:Study Oversight/Is an FDA AA801 Violation?"
    assert "protocolSection.eligibilityModule" in missing
    unmapped = [i.source for i in report.issues if i.kind is Kind.UNMAPPED_SOURCE]
    assert unmapped == ["printout:start/Is NOT Gene Therapy", "printout:start/Has Adverse Events"]


def test_record_page_cut_before_full_information() -> None:
    text = seed_text(PAGE)
    cut = text[:text.index("Full Information")] + "1. Study Identification\n\n2. Study Status\n"
    with pytest.raises(InputError) as exc:
        read(cut, file="cut.txt")
    assert str(exc.value) == "cut.txt: the printout gives no NCT id"


def test_record_page_cut_in_the_middle() -> None:
    text = seed_text(PAGE)
    study, report = read(text[:text.index("8. Arms, Groups, and Interventions")], file="cut.txt")
    assert study.identification.nct_id == "NCT04835883"
    assert study.design.design_info.primary_purpose == "TREATMENT"
    assert study.arms_interventions is None and study.outcomes is None


def test_unknown_label_and_value_in_record_page() -> None:
    text = seed_text(PAGE).replace("Study Phase\nPhase 2", "Study Phase\nPhase 2b")
    text = text.replace("Allocation\nN/A", "Allocation\nN/A\nSurprise Label:\nsomething")
    study, report = read(text)
    assert not study.design.phases
    # an unknown line after a label runs on into that label's value: the value no longer matches
    # the code table, so it is reported and left out rather than half-read
    assert study.design.design_info.allocation is None
    assert [(i.kind, i.source) for i in report.issues if i.kind is Kind.UNMAPPED_CODE] == [
        (Kind.UNMAPPED_CODE, "printout:7. Study Design/Study Phase"),
        (Kind.UNMAPPED_CODE, "printout:7. Study Design/Allocation")]


@pytest.mark.parametrize("value,expected", [
    ("  1. a\n  2. b\n\n    -c\n\n    • d\n\n    Exclusion Criteria:\n\n1. e\n\n2. f",
     "1. a\n2. b\n\n   -c\n\n   * d\n\nExclusion Criteria:\n\n1. e\n2. f"),
    ("Inclusion Criteria:\n\n  1. a\n    5-1. sub\n    • x\n    • y",
     "Inclusion Criteria:\n\n1. a\n\n5-1. sub\n\n* x\n* y"),
])
def test_criteria_markdown(value: str, expected: str) -> None:
    assert rules.criteria_markdown(value) == expected


def test_spec_names_only_registered_transforms_and_known_codes() -> None:
    known = set(registered_transforms())
    systems = {r["source_system"] for r in load_codemap(rules.DISPLAY_TERMS).rows}
    layouts = load_spec("ctgov_printout.yaml")["layouts"]

    def check(rule: dict) -> None:
        for name in rules._as_list(rule.get("transform")):
            assert name.partition(":")[0] in known, rule
        if "code" in rule:
            assert f"ctgov-display:{rule['code']}" in systems, rule
        assert "id" in rule, rule

    def fields(mapping: dict) -> None:
        for value in mapping.values():
            for rule in value if isinstance(value, list) else [value]:
                check(rule)

    page = layouts["record_page"]
    check(page["summary"]["age_line"])
    check(page["summary"]["criteria_rule"])
    for section in page["sections"].values():
        fields(section.get("fields", {}))
        for group in section.get("groups", []):
            fields(group["fields"])
    fields(layouts["labelled_lines"]["fields"])
    for name in page.get("derive", []):
        assert name in known


def test_printout_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trialbridge.cli import main
    src = tmp_path / "page.txt"
    src.write_text(seed_text(PAGE), encoding="utf-8")
    code = main(["convert", str(src), "--to", "ctgov", "-o", str(tmp_path / "out")])
    assert code == 0
    assert (tmp_path / "out" / "NCT04835883.json").exists()
