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


def test_cdisc_loinc_rows_are_ct_terms(tmp_path: Path) -> None:
    """The CDISC LOINC-to-LB document predates CT 2025-03-28: its row for LOINC 33647-9 says LBTESTCD
    MCP1 with LBTEST 'Monoclonal Protein/Total Protein', but MCP1 is 'Monocyte Chemotactic Protein 1'
    in the CT (the test is MONOPTPT); RF is no LBTESTCD term at all; LBSPEC MULTIPLE no SPECTYPE term;
    15083-9's LBTEST has a double space. Output carries CT terms only, and every change is reported."""
    frames, report = _convert(tmp_path, [_lab(1, "33647-9", 5, "%"), _lab(2, "11572-5", 20, "[IU]/mL"),
                                         _lab(3, "12195-4", 90, "mL/min/{1.73_m2}"), _lab(4, "15083-9", 2, "umol/d")])
    lb = frames["lb"]
    got = {r.LBLOINC: (r.LBTESTCD, r.LBTEST, r.LBSPEC) for r in lb.itertuples()}
    assert got == {"33647-9": ("MONOPTPT", "Monoclonal Protein/Total Protein", "SERUM OR PLASMA"),
                   "12195-4": ("CRTCLRBS", "Creatinine Clearance Adjusted for BSA", ""),
                   "15083-9": ("NORMEEXR", "Normetanephrine Excretion Rate", "URINE")}
    msgs = {(i["kind"], i["message"].split(":")[0]) for i in report["issues"] if i.get("rule") == "lb.LBTESTCD"}
    assert ("inferred", "LOINC 33647-9 -> LBTESTCD MONOPTPT ('Monoclonal Protein/Total Protein'), the CT term of "
            "the table's test name") in msgs
    assert ("unmapped-code", "LOINC 11572-5") in msgs
    assert ("lossy", "LOINC 12195-4") in msgs


def test_cdisc_loinc_table_against_ct() -> None:
    """Every row FHIR -> SDTM and SDTM -> FHIR read from the CDISC table is a CT term pair; SDTM -> FHIR
    never writes LOINC 33647-9 (monoclonal protein) for LBTESTCD MCP1 (monocyte chemotactic protein 1)."""
    from trialbridge.fhir.subject_terms import lb_loinc
    from trialbridge.sdtm.ct import pinned_ct
    from trialbridge.subject.test_codes import cdisc_lb_rows
    ct = pinned_ct()
    for r in cdisc_lb_rows()[0]:
        term = ct.term("LBTESTCD", r["target_code"])
        assert term is not None, r
        assert ct.codelist("LBTEST").by_code(term.code).value == r["LBTEST"], r
        assert not r["LBSPEC"] or ct.is_valid("SPECTYPE", r["LBSPEC"]), r
        assert not r["LBMETHOD"] or ct.is_valid("METHOD", r["LBMETHOD"]), r
    assert lb_loinc("MCP1", "SERUM OR PLASMA", "ELECTROPHORESIS") == (None, 0)
    assert lb_loinc("MONOPTPT", "SERUM OR PLASMA", "ELECTROPHORESIS") == ("33647-9", 1)


def _statement(i: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": f"m{i}", "status": status,
            "medicationCodeableConcept": {"text": f"Drug {i}"}, "subject": {"reference": "Patient/p1"}, **extra}


def test_cm_active_statement_is_ongoing(tmp_path: Path) -> None:
    """An R4 MedicationStatement 'active' (still being taken) with no end date: CMENRTPT ONGOING against
    CMENTPT = CMDTC, the date it was stated (SDTMIG 3.4 section 4.4.7); it was dropped silently. A
    completed one, or an active one with an end date, is not ongoing; an active one with no
    dateAsserted has no reference point and is reported."""
    frames, report = _convert(tmp_path, [
        _statement(1, "active", dateAsserted="2024-02-01", effectivePeriod={"start": "2020-05"}),
        _statement(2, "completed", dateAsserted="2024-02-01", effectivePeriod={"start": "2020-05"}),
        _statement(3, "active", dateAsserted="2024-02-01",
                   effectivePeriod={"start": "2020-05", "end": "2024-01-15"}),
        _statement(4, "active", effectivePeriod={"start": "2020-05"})])
    cm = frames["cm"].set_index("CMTRT")
    assert cm.loc["Drug 1", ["CMENRTPT", "CMENTPT"]].tolist() == ["ONGOING", "2024-02-01"]
    for d in ("Drug 2", "Drug 3", "Drug 4"):
        assert cm.loc[d, ["CMENRTPT", "CMENTPT"]].tolist() == ["", ""], d
    lost = [i["record"] for i in report["issues"] if i.get("rule") == "cm.CMENRTPT"]
    assert lost == ["MedicationStatement/m4"]


def _specimen(sid: str, system: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Specimen", "id": sid, "type": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p1"}}


V2_0487 = "http://terminology.hl7.org/CodeSystem/v2-0487"


@pytest.mark.parametrize("bulk", [False, True])
def test_lbspec_from_the_specimen(tmp_path: Path, bulk: bool) -> None:
    """Joint IG: LBSPEC <- Specimen.type. The Specimen the Observation names decides (v2-0487 SER ->
    SERUM, SNOMED 119361006 Plasma specimen -> PLASMA) over the LOINC row (Ser/Plas -> SERUM OR PLASMA);
    it was read and dropped silently. A type not in the table keeps the LOINC's and is reported."""
    resources = [_specimen("s1", V2_0487, "SER"), _specimen("s2", "http://snomed.info/sct", "119361006"),
                 _specimen("s3", V2_0487, "XXX"),
                 _lab(1, "4485-9", 57, "mg/dL", specimen={"reference": "Specimen/s1"}),
                 _lab(2, "4485-9", 58, "mg/dL", specimen={"reference": "Specimen/s2"}),
                 _lab(3, "4485-9", 59, "mg/dL", specimen={"reference": "Specimen/s3"}),
                 _lab(4, "4485-9", 60, "mg/dL")]
    if bulk:
        folder = _write_bulk(tmp_path / "bulk", resources)
        out = tmp_path / "out"
        main(["convert", str(folder), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv", "--studyid", "REV"])
        lb = pd.read_csv(out / "lb.csv", dtype=str, keep_default_na=False)
        report = json.loads((out / "report.json").read_text())
    else:
        frames, report = _convert(tmp_path, resources)
        lb = frames["lb"]
    assert lb.sort_values("LBORRES")["LBSPEC"].tolist() == ["SERUM", "PLASMA", "SERUM OR PLASMA", "SERUM OR PLASMA"]
    bad = [i["record"] for i in report["issues"] if i.get("rule") == "lb.LBSPEC"]
    assert bad == ["Observation/o3"]


def _write_bulk(folder: Path, resources: list[dict[str, Any]]) -> Path:
    folder.mkdir()
    by_type: dict[str, list[str]] = {}
    for r in [{"resourceType": "Patient", "id": "p1", "gender": "female"}, *resources]:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    for t, lines in by_type.items():
        (folder / f"{t}.ndjson").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("bulk", [False, True])
def test_comparator_result_is_standardised(tmp_path: Path, bulk: bool) -> None:
    """"<5.1" g/dL hemoglobin: LBSTRESC is in the standard unit (g/L) like every other result, so
    "<51" with LBSTRESU g/L, no LBSTRESN (SDTMIG 3.4 LB: LBSTRESC holds "<" results, LBSTRESN only
    numbers); it was "<5.1" (the g/dL text) with no LBSTRESU, and LBSTNRLO was left empty. A
    comparator on a test with no standard unit keeps its unit ("<5" mg/dL glucose)."""
    rng = {"low": {"value": 12, "unit": "g/dL", "system": UCUM, "code": "g/dL"}}
    hgb = _lab(1, "718-7", 5.1, "g/dL", referenceRange=[rng])
    hgb["valueQuantity"]["comparator"] = "<"
    gluc = _lab(2, "2345-7", 5, "mg/dL")
    gluc["valueQuantity"]["comparator"] = "<"
    plain = _lab(3, "718-7", 13.1, "g/dL", referenceRange=[rng])
    resources = [hgb, gluc, plain]
    if bulk:
        out = tmp_path / "out"
        main(["convert", str(_write_bulk(tmp_path / "bulk", resources)), "--to", "sdtm", "-o", str(out),
              "--sdtm-format", "csv", "--studyid", "REV"])
        lb = pd.read_csv(out / "lb.csv", dtype=str, keep_default_na=False)
    else:
        lb = _convert(tmp_path, resources)[0]["lb"]
    got = [tuple(r) for r in lb[["LBORRES", "LBORRESU", "LBSTRESC", "LBSTRESN", "LBSTRESU", "LBSTNRLO"]].values]
    assert sorted(got) == sorted([("<5.1", "g/dL", "<51", "", "g/L", "120"), ("<5", "mg/dL", "<5", "", "mg/dL", ""),
                                  ("13.1", "g/dL", "131", "131", "g/L", "120")])


def test_lobxfl_not_derived_is_reported(tmp_path: Path) -> None:
    """LBLOBXFL/VSLOBXFL are Expected (SDTMIG 3.4) and written as columns, but not derived: the empty
    column is said so once per domain (it was silent)."""
    vital = {**_lab(2, "8867-4", 60, "/min"), "category": [{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]}
    frames, report = _convert(tmp_path, [_lab(1, "718-7", 13.1, "g/dL"), vital])
    assert "LBLOBXFL" in frames["lb"] and "VSLOBXFL" in frames["vs"]
    said = sorted((i["kind"], i["target"]) for i in report["issues"] if i.get("rule") in ("lb.LOBXFL", "vs.LOBXFL"))
    assert said == [("lossy", "LBLOBXFL"), ("lossy", "VSLOBXFL")]   # a declared gap (info: --strict passes)


def test_cm_frequency_range_is_not_its_lower_bound(tmp_path: Path) -> None:
    """timing.repeat {frequency 1, frequencyMax 2, period 1 d} is "1 to 2 times a day": no CDISC FREQ term;
    it was written CMDOSFRQ QD (the lower bound) silently. Now unmapped-code, CMDOSFRQ empty; a plain
    1/1 d stays QD; a timing part no rule reads (when: HS) is reported, not dropped silently."""
    def dosed(i: int, repeat: dict[str, Any]) -> dict[str, Any]:
        return _statement(i, "completed", dateAsserted="2024-02-01", effectivePeriod={"start": "2020-05"},
                          dosage=[{"timing": {"repeat": repeat}}])
    frames, report = _convert(tmp_path, [
        dosed(1, {"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "d"}),
        dosed(2, {"frequency": 1, "period": 1, "periodUnit": "d"}),
        dosed(3, {"frequency": 1, "period": 4, "periodMax": 6, "periodUnit": "h"}),
        dosed(4, {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]})])
    freq = dict(zip(frames["cm"]["CMTRT"], frames["cm"]["CMDOSFRQ"], strict=True))
    assert freq == {"Drug 1": "", "Drug 2": "QD", "Drug 3": "", "Drug 4": "QD"}
    unmapped = sorted(i["record"] for i in report["issues"] if i.get("rule") == "cm.CMDOSFRQ")
    assert unmapped == ["MedicationStatement/m1", "MedicationStatement/m3"]
    assert any(i.get("rule") == "subject.unread-nested" and "MedicationStatement.dosage.timing.repeat.when" in i["message"]
               for i in report["issues"])


def test_cm_planned_medication_is_not_a_record(tmp_path: Path) -> None:
    """An R4 MedicationStatement 'intended' ("may be taken at some time in the future") and a draft
    MedicationRequest are no medication received (SDTMIG 3.4 CM): not converted, reported per record;
    they were written as CM records like any taken medication."""
    request = {"resourceType": "MedicationRequest", "id": "r1", "status": "draft", "intent": "order",
               "medicationCodeableConcept": {"text": "Drug 9"}, "subject": {"reference": "Patient/p1"}}
    frames, report = _convert(tmp_path, [_statement(1, "intended", dateAsserted="2024-02-01"),
                                         _statement(2, "completed", dateAsserted="2024-02-01"), request])
    assert frames["cm"]["CMTRT"].tolist() == ["Drug 2"]
    dropped = sorted(i["record"] for i in report["issues"] if i.get("rule") == "cm.status")
    assert dropped == ["MedicationRequest/r1", "MedicationStatement/m1"]


def test_exendtc_of_an_open_period_is_not_the_start(tmp_path: Path) -> None:
    """EXENDTC = EXSTDTC for an administration at a point in time (effectiveDateTime; SDTMIG 3.4 EX),
    the period's end when given; an effectivePeriod with a start and no end (an infusion in progress)
    has no known end — it was given EXSTDTC as its end, an invented value."""
    study = Path(__file__).resolve().parents[1] / "samples" / "NCT04835883" / "ctgov.json"

    def admin(i: int, **eff: Any) -> dict[str, Any]:
        return {"resourceType": "MedicationAdministration", "id": f"a{i}", "status": "completed",
                "medicationCodeableConcept": {"text": "CS20AT04"}, "subject": {"reference": "Patient/p1"}, **eff}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
        {"resourceType": "Patient", "id": "p1", "gender": "female"},
        admin(1, effectiveDateTime="2024-01-01T10:00:00"),
        admin(2, effectivePeriod={"start": "2024-02-01T10:00:00", "end": "2024-02-01T11:00:00"}),
        admin(3, effectivePeriod={"start": "2024-03-01T10:00:00"})]]}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(bundle))
    out = tmp_path / "out"
    main(["convert", str(src), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv", "--study", str(study)])
    ex = pd.read_csv(out / "ex.csv", dtype=str, keep_default_na=False)
    assert [tuple(r) for r in ex[["EXSTDTC", "EXENDTC"]].values] == [
        ("2024-01-01T10:00:00", "2024-01-01T10:00:00"), ("2024-02-01T10:00:00", "2024-02-01T11:00:00"),
        ("2024-03-01T10:00:00", "")]


@pytest.mark.parametrize("bulk", [False, True])
def test_nrind_only_from_observation_interpretation_codes(tmp_path: Path, bulk: bool) -> None:
    """LBNRIND reads interpretation codes of v3-ObservationInterpretation (or a coding without system,
    the binding's): a SNOMED CT code (281302008 'Above reference range') is not looked up in the nrind
    table as if it were one; it is reported unmapped-code with its system, LBNRIND left empty. On the
    bundle path and on the streamed Bulk path alike."""
    v3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    resources = [_lab(1, "2345-7", 250, "mg/dL", interpretation=[{"coding": [{"system": v3, "code": "H"}]}]),
                 _lab(2, "2345-7", 251, "mg/dL", interpretation=[{"coding": [{"code": "H"}]}]),
                 _lab(3, "2345-7", 252, "mg/dL", interpretation=[{"coding": [
                     {"system": "http://snomed.info/sct", "code": "281302008"}]}]),
                 _lab(4, "2345-7", 253, "mg/dL", interpretation=[{"coding": [
                     {"system": "http://example.org/flags", "code": "H"}]}])]
    out = tmp_path / "out"
    src = _write_bulk(tmp_path / "bulk", resources) if bulk else None
    if src is None:
        _convert(tmp_path, resources)
    else:
        main(["convert", str(src), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv", "--studyid", "REV"])
    lb = pd.read_csv(out / "lb.csv", dtype=str, keep_default_na=False)
    report = json.loads((out / "report.json").read_text())
    assert dict(zip(lb["LBORRES"], lb["LBNRIND"], strict=True)) == {"250": "HIGH", "251": "HIGH", "252": "", "253": ""}
    got = sorted((i["record"], i["kind"]) for i in report["issues"] if i.get("rule") == "lb.NRIND")
    assert got == [("Observation/o3", "unmapped-code"), ("Observation/o4", "unmapped-code")]
    msgs = [i["message"] for i in report["issues"] if i.get("rule") == "lb.NRIND"]
    assert any("http://snomed.info/sct" in m for m in msgs) and any("http://example.org/flags" in m for m in msgs)
