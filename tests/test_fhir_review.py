"""FHIR review findings: values checked against the FHIR R5 (5.0.0) and R4 (4.0.1) specifications.

Each test would have caught a defect found in review:
- a Coding.display must be the code system's own display (R5 CodeSystems research-study-status and
  research-study-party-role, hl7.fhir.r5.core 5.0.0);
- an abated Condition must carry clinicalStatus inactive/resolved/remission (R4 con-4, R5 con-3, both rules).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pandas as pd
import pytest
from conftest import SAMPLES
from fhir_study_support import converted, record_paths, resources, schema_validator
from trialbridge.fhir.subject_writer import convert_sdtm_to_fhir
from trialbridge.report import ConversionReport

# Displays as published in hl7.fhir.r5.core 5.0.0 (CodeSystems research-study-status, research-study-party-role).
R5_DISPLAYS: dict[str, dict[str, str]] = {
    "http://hl7.org/fhir/research-study-status": {
        "active": "Active", "active-but-not-recruiting": "Active, not recruiting",
        "administratively-completed": "Administratively Completed", "approved": "Approved",
        "closed-to-accrual": "Closed to Accrual",
        "closed-to-accrual-and-intervention": "Closed to Accrual and Intervention", "completed": "Completed",
        "disapproved": "Disapproved", "enrolling-by-invitation": "Enrolling by invitation",
        "in-review": "In Review", "not-yet-recruiting": "Not yet recruiting", "overall-study": "Overall study",
        "recruiting": "Recruiting", "temporarily-closed-to-accrual": "Temporarily Closed to Accrual",
        "temporarily-closed-to-accrual-and-intervention": "Temporarily Closed to Accrual and Intervention",
        "terminated": "Terminated", "withdrawn": "Withdrawn"},
    "http://hl7.org/fhir/research-study-party-role": {
        code: code for code in ("sponsor", "lead-sponsor", "sponsor-investigator", "primary-investigator",
                                "collaborator", "funding-source", "general-contact", "recruitment-contact",
                                "sub-investigator", "study-director", "study-chair")}
    | {"irb": "Institutional Review Board"},
}

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "NCT04835883" / "ctgov.json"


def _codings(node: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            out.append(node)
        for v in node.values():
            out += _codings(v)
    elif isinstance(node, list):
        for v in node:
            out += _codings(v)
    return out


def _study_paths() -> list[Path]:
    return [SAMPLE, *record_paths()]


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_research_study_displays_are_the_code_systems_own(version: str) -> None:
    """R5 5.0.0 research-study-status: overall-study is 'Overall study'; research-study-party-role: the
    display of lead-sponsor is 'lead-sponsor' (not 'Lead Sponsor'). Checked over the sample and every record."""
    seen: set[tuple[str, str]] = set()
    for path in _study_paths():
        bundle, _ = converted(path, version)
        for c in _codings(bundle):
            table = R5_DISPLAYS.get(c["system"])
            if table is None or "display" not in c:
                continue
            assert c["code"] in table, (path.name, c)
            assert c["display"] == table[c["code"]], (path.name, c)
            seen.add((c["system"], c["code"]))
    assert ("http://hl7.org/fhir/research-study-status", "overall-study") in seen
    if version == "R5":       # R4 has ResearchStudy.sponsor for the lead sponsor
        assert ("http://hl7.org/fhir/research-study-party-role", "lead-sponsor") in seen


def _mh_folder(tmp_path: Path) -> Path:
    src = tmp_path / "sdtm"
    src.mkdir()
    pd.DataFrame({"STUDYID": ["S1"], "DOMAIN": ["DM"], "USUBJID": ["S1-001"], "SUBJID": ["001"],
                  "SITEID": ["01"], "SEX": ["F"], "ARMCD": ["A"], "ARM": ["Arm A"]}).to_csv(src / "dm.csv", index=False)
    pd.DataFrame({"STUDYID": ["S1"] * 3, "DOMAIN": ["MH"] * 3, "USUBJID": ["S1-001"] * 3, "MHSEQ": [1, 2, 3],
                  "MHTERM": ["Herpes zoster", "Hypertension", "Appendicitis"],
                  "MHSTDTC": ["2018-08", "2015", "2001"], "MHENDTC": ["2018-11", None, "2001"]}
                 ).to_csv(src / "mh.csv", index=False)
    return src


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_abated_condition_is_inactive(tmp_path: Path, version: str) -> None:
    """R5 con-3 / R4 con-4 (rules): abatement present => clinicalStatus inactive, resolved or remission.
    The writer used to emit 'unknown' (R5) or nothing (R4) on conditions that have an MHENDTC."""
    out = tmp_path / "out"
    paths = convert_sdtm_to_fhir(_mh_folder(tmp_path), out, options=SimpleNamespace(fhir_version=version, extra={}),
                                 report=ConversionReport())
    bundle = orjson.loads(paths[0].read_bytes())
    conds = {c["code"]["text"]: c for c in resources(bundle, "Condition")}
    assert set(conds) == {"Herpes zoster", "Hypertension", "Appendicitis"}
    for cond in conds.values():
        status = [(c["system"], c["code"]) for c in (cond.get("clinicalStatus") or {}).get("coding", [])]
        if any(k.startswith("abatement") for k in cond):
            assert status == [("http://terminology.hl7.org/CodeSystem/condition-clinical", "inactive")], cond
        elif version == "R5":     # R5 clinicalStatus is 1..1
            assert status == [("http://terminology.hl7.org/CodeSystem/condition-clinical", "unknown")], cond
        else:
            assert status == [], cond
    assert "abatementDateTime" not in conds["Hypertension"]
    assert schema_validator(version).errors(bundle) == []
    if version == "R5":
        from fhir.resources.condition import Condition
    else:
        from fhir.resources.R4B.condition import Condition  # type: ignore[no-redef]
    for cond in conds.values():
        Condition.model_validate(cond)


def test_r4_output_names_the_version_of_r5_only_status_codes():
    """R4's research-study-status has no 'recruiting' or 'overall-study': an R4 extension that carries
    them (progress status, site recruitment status) marks each such coding as version 5.0.0."""
    import json as _json

    from trialbridge.ctgov.v2 import read_ctgov_v2
    from trialbridge.fhir.study_writer import write_fhir_bundle
    from trialbridge.report import ConversionReport

    r4_codes = {"active", "administratively-completed", "approved", "closed-to-accrual",
                "closed-to-accrual-and-intervention", "completed", "disapproved", "in-review",
                "temporarily-closed-to-accrual", "temporarily-closed-to-accrual-and-intervention", "withdrawn"}
    record = _json.loads((SAMPLES / "NCT04835883" / "ctgov.json").read_text())
    (study,) = read_ctgov_v2(record, file="x", report=ConversionReport())
    bundle = write_fhir_bundle(study, version="R4", report=ConversionReport())
    seen = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("system") == "http://hl7.org/fhir/research-study-status":
                seen.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(bundle)
    assert seen
    for coding in seen:
        assert coding["code"] in r4_codes or coding.get("version") == "5.0.0", coding
