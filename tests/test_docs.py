"""The mapping documentation is generated from mappings/ and must be current."""

from __future__ import annotations

from conftest import ROOT
from trialbridge import docs


def test_readme_mapping_overview_is_current():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert docs.render_readme(text) == text, "run: python -m trialbridge.docs"


def test_full_mapping_tables_are_current():
    current = (ROOT / "docs" / "mapping-tables.md").read_text(encoding="utf-8")
    assert docs.full_tables() == current, "run: python -m trialbridge.docs"


def test_every_rule_id_is_unique_across_all_specs():
    seen: dict[str, str] = {}
    for name, spec in docs._specs():
        for rule in docs._rules(spec):
            rid = rule.get("id")
            assert rid, (name, rule)
            assert rid not in seen, f"rule id {rid} in {name} and {seen.get(rid)}"
            seen[rid] = name
