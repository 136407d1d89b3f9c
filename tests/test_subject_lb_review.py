"""Value-level review of FHIR -> SDTM LB/VS/CM/EX/PR outputs: each test pins one value an expert
reviewer checks against SDTMIG 3.4 / CDISC CT / the CDISC LOINC-to-LB table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from trialbridge.cli import main
from trialbridge.specs import load_table
from trialbridge.subject.build_tables import preferred_rows

UCUM, LOINC = "http://unitsofmeasure.org", "http://loinc.org"
LAB = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")


def _lab(i: int, loinc: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final", "category": LAB,
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": f"2024-01-{i:02d}T08:00:00", **extra,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _convert(tmp_path: Path, resources: list[dict[str, Any]]) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in [{"resourceType": "Patient", "id": "p1", "gender": "female"},
                                                  *resources]]}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(bundle))
    out = tmp_path / "out"
    rc = main(["convert", str(src), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv", "--studyid", "REV"])
    report = json.loads((out / "report.json").read_text())
    assert rc in (0, 1), report.get("counts")
    frames = {f.stem: pd.read_csv(f, dtype=str, keep_default_na=False) for f in out.glob("*.csv")
              if not f.name.endswith(".provenance.csv")}
    return frames, report


def test_lbspec_is_the_specimen_the_loinc_names(tmp_path: Path) -> None:
    """LOINC 2093-3 is 'Cholesterol [Mass/volume] in Serum or Plasma' (System Ser/Plas): the CDISC
    LOINC-to-LB document lists a PLASMA, a SERUM and a SERUM OR PLASMA row for it (PLASMA first); only
    SERUM OR PLASMA says what the code says. 48642-3 (MDRD eGFR, Ser/Plas/Bld): SERUM OR PLASMA OR
    BLOOD, not the BLOOD row listed first. A Bld LOINC keeps BLOOD."""
    frames, _ = _convert(tmp_path, [_lab(1, "2093-3", 180, "mg/dL"), _lab(2, "4485-9", 57, "mg/dL"),
                                    _lab(3, "48642-3", 70, "mL/min/{1.73_m2}"), _lab(4, "718-7", 13.1, "g/dL")])
    spec = dict(zip(frames["lb"]["LBLOINC"], frames["lb"]["LBSPEC"], strict=True))
    assert spec == {"2093-3": "SERUM OR PLASMA", "4485-9": "SERUM OR PLASMA",
                    "48642-3": "SERUM OR PLASMA OR BLOOD", "718-7": "BLOOD"}


def test_preferred_row_by_loinc_system() -> None:
    rows = [{"LOINC Code": "1", "CDISC LBTESTCD": "X", "System": "Ser/Plas", "CDISC LBSPEC": s}
            for s in ("PLASMA", "SERUM", "SERUM OR PLASMA")]
    rows += [{"LOINC Code": "2", "CDISC LBTESTCD": "Y", "System": "Bld/Tiss", "CDISC LBSPEC": s}
             for s in ("BLOOD", "TISSUE")]
    assert preferred_rows(rows) == {2, 3}
    # the shipped table: one preferred row per LOINC, and no Ser/Plas LOINC left on PLASMA or SERUM
    table = load_table("codes/loinc_to_lb.csv")
    by: dict[str, list[dict[str, str]]] = {}
    for r in table:
        by.setdefault(r["source_code"], []).append(r)
    for loinc, rs in by.items():
        pref = [r for r in rs if r["preferred"] == "Y"]
        assert len(pref) == 1, loinc
        specs = {r["LBSPEC"] for r in rs}
        if {"PLASMA", "SERUM", "SERUM OR PLASMA"} <= specs and "BLOOD" not in specs:
            assert pref[0]["LBSPEC"] == "SERUM OR PLASMA", loinc
