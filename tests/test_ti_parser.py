"""Eligibility criteria text -> TI criteria (trialbridge.sdtm.ti_parser)."""

from __future__ import annotations

import json

from conftest import SAMPLES, shared_path
from test_sdtm_tdm import SEED_CRITERIA
from trialbridge.sdtm.ti_parser import criteria_to_markdown, parse_criteria


def test_seed_acceptance_case() -> None:
    parsed = parse_criteria(SEED_CRITERIA)
    incl = [c for c in parsed.criteria if c.category == "INCLUSION"]
    excl = [c for c in parsed.criteria if c.category == "EXCLUSION"]
    assert [c.label for c in incl] == ["1", "2", "3", "4", "5-1", "5-2"]
    assert [c.subcategory for c in incl][4:] == ["lupus cytopenia sub-group", "lupus nephritis sub-group"]
    assert len(excl) == 8 and excl[-1].subcategory == "lupus nephritis sub-group"
    assert all(c.subcategory is None for c in excl[:-1] + incl[:4])
    # sub-items folded into their parent, markdown escapes undone, no bullet glyphs left
    assert "at least 4 of the 11 Revised American College" in incl[1].text
    assert "Platelet count < 100,000/mm3" in incl[4].text
    assert not any(c.text.startswith(("*", "•", "-")) for c in parsed.criteria)


def test_sample_record_if_present() -> None:
    path = SAMPLES / "NCT04835883" / "ctgov.json"
    if not path.exists():
        return
    crit = json.loads(path.read_text())["protocolSection"]["eligibilityModule"]["eligibilityCriteria"]
    parsed = parse_criteria(crit)
    assert [c.category for c in parsed.criteria] == ["INCLUSION"] * 6 + ["EXCLUSION"] * 8


def test_nested_bullets_and_lettered_items() -> None:
    text = ("Inclusion Criteria:\n\n* Adults\n* One of:\n  * condition A\n  * condition B\n"
            "    * detail of B\n\nExclusion Criteria:\n\n1. History of:\n   a) stroke\n   b) MI\n2. Pregnancy")
    parsed = parse_criteria(text)
    assert [(c.category, c.text) for c in parsed.criteria] == [
        ("INCLUSION", "Adults"), ("INCLUSION", "One of: condition A condition B detail of B"),
        ("EXCLUSION", "History of: a) stroke b) MI"), ("EXCLUSION", "Pregnancy")]


def test_standalone_subgroup_heading_and_no_headings() -> None:
    text = "Inclusion Criteria:\n\n* Adults\n\nFor the paediatric cohort only:\n\n* Age 6-11\n* Weight > 20 kg"
    parsed = parse_criteria(text)
    assert [c.subcategory for c in parsed.criteria] == [None, "paediatric cohort", "paediatric cohort"]
    plain = parse_criteria("* Adults\n* Signed consent")
    assert not plain.headings_found and [c.category for c in plain.criteria] == ["INCLUSION"] * 2
    assert parse_criteria(None).criteria == [] and parse_criteria("  ").criteria == []


def test_markdown_round_trip() -> None:
    parsed = parse_criteria(SEED_CRITERIA)
    again = parse_criteria(criteria_to_markdown(parsed.criteria))
    assert [(c.category, c.text, c.subcategory) for c in again.criteria] == [
        (c.category, c.text, c.subcategory) for c in parsed.criteria]


def test_shared_ctgov_records_nested_criteria() -> None:
    folder = shared_path("ctgov", "api_v2_json")
    nested_seen = 0
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        crit = rec.get("protocolSection", {}).get("eligibilityModule", {}).get("eligibilityCriteria")
        if not crit:
            continue
        parsed = parse_criteria(crit)
        lines = [ln for ln in crit.splitlines() if ln.strip().startswith(("*", "-", "•")) or
                 ln.strip()[:3].rstrip(".)").isdigit()]
        top = [ln for ln in lines if not ln.startswith((" ", "\t"))]
        nested = len(lines) - len(top)
        nested_seen += nested > 0
        assert parsed.criteria, path.name
        # every criterion has text, nested items were folded (fewer criteria than item lines)
        assert all(c.text for c in parsed.criteria)
        if nested:
            assert len(parsed.criteria) < len(lines), path.name
        cats = [c.category for c in parsed.criteria]
        if "Exclusion Criteria" in crit and "Inclusion Criteria" in crit:
            assert cats == sorted(cats, key=lambda c: c != "INCLUSION"), path.name
    assert nested_seen >= 1


def test_generic_eligibility_heading_and_group_headings() -> None:
    """NCT03630471 puts its inclusion criteria under 'Eligibility criteria:' and groups them under
    'For adolescent participants:' / 'For parent participants:' lines. Before, the 9 inclusion criteria
    were dropped as a 'preamble' (reported as text before the first heading) and each group line became an
    EXCLUSION criterion of its own; NCT01298141's 'Cohort 1:' became INCL01."""
    text = ("Eligibility criteria:\n\nFor adolescent participants:\n\n* Grades 9-12\n* Elevated symptoms\n\n"
            "For parent participants:\n\n* A primary caregiver\n\nExclusion criteria:\n\n"
            "For adolescent participants:\n\n* Urgent medical need\n\nFor parent participants:\n\n* Intoxicated\n")
    parsed = parse_criteria(text)
    assert parsed.preamble == "" and parsed.generic_heading and parsed.headings_found
    assert [(c.category, c.subcategory, c.text) for c in parsed.criteria] == [
        ("INCLUSION", "adolescent participants", "Grades 9-12"),
        ("INCLUSION", "adolescent participants", "Elevated symptoms"),
        ("INCLUSION", "parent participants", "A primary caregiver"),
        ("EXCLUSION", "adolescent participants", "Urgent medical need"),
        ("EXCLUSION", "parent participants", "Intoxicated")]
    # what the writer makes of it reads back the same (SDTM -> CT.gov -> SDTM)
    again = parse_criteria(criteria_to_markdown(parsed.criteria)).criteria
    assert [(c.category, c.subcategory, c.text) for c in again] == [
        (c.category, c.subcategory, c.text) for c in parsed.criteria]
    cohorts = parse_criteria("Inclusion Criteria:\n\n  Cohort 1:\n\n    1. Fabry disease\n\n      Cohort 2:\n\n"
                             "    2. Took part in REP001a\n\nExclusion Criteria:\n\n  1. Anaphylaxis\n")
    assert [(c.category, c.subcategory, c.text) for c in cohorts.criteria] == [
        ("INCLUSION", "Cohort 1", "Fabry disease"), ("INCLUSION", "Cohort 2", "Took part in REP001a"),
        ("EXCLUSION", None, "Anaphylaxis")]
    assert parse_criteria(criteria_to_markdown(cohorts.criteria)).criteria[1].subcategory == "Cohort 2"
    # a line ending in a colon that leads into its own sub-items is still a criterion
    lead = parse_criteria("Inclusion Criteria:\n\n* Patients meeting:\n  * A\n  * B\n* Adults\n")
    assert [c.text for c in lead.criteria] == ["Patients meeting: A B", "Adults"]


def test_nested_numbered_list_is_not_read_as_top_level_numbering() -> None:
    """NCT01298141: item 3 has sub-items 1-5 indented under it; '4.' and '5.' continue that nested list,
    they are not criteria 4 and 5 (they were, and the real item 4 came after them)."""
    text = ("Inclusion Criteria:\n\n  1. Fabry disease.\n\n  2. Compliant.\n\n  3. Meets one of:\n\n"
            "       1. Low GFR\n\n       2. Cardiac involvement\n\n       3. Stroke\n\n       4. Diarrhoea\n\n"
            "       5. Neuropathic pain\n\n  4. Took part in REP001a.\n")
    parsed = parse_criteria(text)
    assert [(c.label, c.text) for c in parsed.criteria] == [
        ("1", "Fabry disease."), ("2", "Compliant."),
        ("3", "Meets one of: 1. Low GFR 2. Cardiac involvement 3. Stroke 4. Diarrhoea 5. Neuropathic pain"),
        ("4", "Took part in REP001a.")]
    # CT.gov's deeper-indented continuation of the top numbering (4. then 5-1.) stays top level
    seed = parse_criteria("Inclusion Criteria:\n\n1. A\n2. B\n   3. C\n   4-1. D\n")
    assert [c.label for c in seed.criteria] == ["1", "2", "3", "4-1"]
