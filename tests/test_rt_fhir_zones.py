"""Issue 5, FHIR -> SDTM -> FHIR: time zones, UCUM spellings and the record-level losses of the round trip.

* FHIR -> SDTM drops the UTC offset (SDTMIG 3.4 §4.4: --DTC is local clock time) and reports the offsets
  it dropped, per variable with counts, in one entry (no subject values);
* SDTM -> FHIR ``--default-tz`` takes a fixed offset or an IANA zone (DST-aware); a local time in a DST
  fold or gap is cut to its date and reported, never given a chosen offset;
* the FHIR round trip hands the single offset seen to the reverse leg, and reports the ones it cannot
  restore;
* CDISC unit -> UCUM: the submission value itself when the CDISC table lists it; the vital-signs profile
  code for heart and respiratory rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import SAMPLES
from trialbridge.fhir import subject_terms as T
from trialbridge.report import ConversionReport, Kind


# ----------------------------------------------------------------------------- zones, SDTM -> FHIR
@pytest.mark.parametrize("local, tz, expected", [
    ("2024-01-15T10:00:00", "Europe/Paris", ("+01:00", None)),           # winter (CET)
    ("2024-07-15T10:00:00", "Europe/Paris", ("+02:00", None)),           # summer (CEST)
    ("2024-03-31T02:30:00", "Europe/Paris", (None, "nonexistent")),      # DST gap: 02:00 -> 03:00
    ("2024-10-27T02:30:00", "Europe/Paris", (None, "ambiguous")),        # DST fold: 03:00 -> 02:00
    ("2020-01-25T09:37:00", "Asia/Seoul", ("+09:00", None)),
    ("2024-01-15T10:00:00", "America/New_York", ("-05:00", None)),
    ("2024-03-10T02:30:00", "America/New_York", (None, "nonexistent")),
    ("2024-01-15T10:00:00", "Asia/Kolkata", ("+05:30", None)),
])
def test_zone_offset_iana(local: str, tz: str, expected: tuple[str | None, str | None]) -> None:
    assert T.zone_offset(local, tz) == expected


def test_convert_dates_iana_zone_dst_and_partial() -> None:
    s = pd.Series(["2024-07-01T10:00:00", "2024-01-05T10:00", "2024-03-31T02:30", "2024-10-27T02:30:00",
                   "2024-07", "2024-07-01", "2024-07-01T10:00:00+05:00", None], dtype=object)
    d = T.convert_dates(s, default_tz="Europe/Paris")
    assert d.value == ["2024-07-01T10:00:00+02:00", "2024-01-05T10:00:00+01:00", "2024-03-31", "2024-10-27",
                       "2024-07", "2024-07-01", "2024-07-01T10:00:00+05:00", None]
    # the SDTM text of every value that changed is kept for the sdtm-dtc extension
    assert d.original[2:4] == ["2024-03-31T02:30", "2024-10-27T02:30:00"]
    assert d.counts == {"zone-added": 2, "seconds-added": 1, "zone-ambiguous": 1, "zone-nonexistent": 1}
    # date-only elements stay date-only whatever the zone
    only = T.convert_dates(s, default_tz="Europe/Paris", date_only=True)
    assert only.value[:2] == ["2024-07-01", "2024-01-05"]


def test_convert_dates_fixed_offset_unchanged() -> None:
    d = T.convert_dates(pd.Series(["2024-03-31T02:30:00", "2024-05"]), default_tz="+09:00")
    assert d.value == ["2024-03-31T02:30:00+09:00", "2024-05"]
    assert d.counts == {"zone-added": 1}


@pytest.mark.parametrize("tz, ok", [("Z", True), ("+09:00", True), ("-14:00", True), ("+14:30", False),
                                    ("Asia/Seoul", True), ("Europe/Paris", True), ("UTC", True),
                                    ("Mars/Olympus", False), ("+9", False), ("../etc/passwd", False),
                                    ("", False)])
def test_valid_tz(tz: str, ok: bool) -> None:
    assert T.valid_tz(tz) is ok


def test_default_tz_refused_with_message(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from trialbridge.errors import UsageError
    from trialbridge.fhir.subject_writer import convert_sdtm_to_fhir
    with pytest.raises(UsageError, match=r"--default-tz must be Z, \+hh:mm / -hh:mm or an IANA time zone "
                                         r"name \(e.g. Europe/Paris\), not 'Seoul'"):
        convert_sdtm_to_fhir(tmp_path, tmp_path / "out", options=SimpleNamespace(
            fhir_version="R4", extra={"default_tz": "Seoul"}), report=ConversionReport())


# ----------------------------------------------------------------------------- zones, FHIR -> SDTM
def test_derive_dtc_counts_dropped_offsets() -> None:
    from trialbridge.subject.base import derive_dtc
    seen: dict[str, int] = {}
    s = pd.Series(["2020-01-01T10:00:00+09:00", "2020-01-01T10:00:00+09:00", "2020-01-02T08:00:00.250Z",
                   "2020-01-03T10:00+01:00", "2020-01", "2020-01-04", None, "not a date"], dtype=object)
    out, bad = derive_dtc(s, seen)
    # partial dates stay partial; a time without seconds keeps its minutes (no offset fragment left)
    assert out.tolist() == ["2020-01-01T10:00:00", "2020-01-01T10:00:00", "2020-01-02T08:00:00",
                            "2020-01-03T10:00", "2020-01", "2020-01-04", None, None]
    assert bad.tolist() == [False] * 7 + [True]
    assert seen == {"+09:00": 2, "Z": 1, "+01:00": 1, "fraction": 1}


def test_report_dropped_zones_one_entry() -> None:
    from trialbridge.subject.base import Ctx
    from trialbridge.subject.pipeline import report_dropped_zones
    rep = ConversionReport()
    ctx = Ctx(studyid="S", report=rep)
    ctx.dropped_zone("VSDTC").update({"+09:00": 3})
    ctx.dropped_zone("LBDTC").update({"+09:00": 2, "Z": 1})
    ctx.dropped_zone("AEDTC")            # nothing dropped: not listed
    report_dropped_zones(ctx)
    (issue,) = rep.issues
    assert issue.kind is Kind.LOSSY and issue.rule == "subject.dtc-zone"
    assert issue.message.endswith("LBDTC +09:00 x2, Z x1; VSDTC +09:00 x3; 2 different offsets: one "
                                  "--default-tz cannot restore them all")
    assert rep.extra["droppedUtcOffsets"] == {"LBDTC": {"+09:00": 2, "Z": 1}, "VSDTC": {"+09:00": 3}}


@pytest.mark.parametrize("seen, user, tz, lossy", [
    ({"VSDTC": {"+09:00": 3}}, None, "+09:00", None),
    ({"VSDTC": {"+09:00": 3}, "LBDTC": {"+09:00": 1, "fraction": 1}}, None, "+09:00", None),
    ({"VSDTC": {"+09:00": 3}, "LBDTC": {"Z": 1}}, None, None,
     "UTC offsets not restored by no --default-tz (2 offsets seen, none chosen): LBDTC Z x1; VSDTC +09:00 x3"),
    ({"VSDTC": {"+09:00": 3}, "LBDTC": {"Z": 1}}, "Asia/Seoul", "Asia/Seoul",
     "UTC offsets not restored by --default-tz Asia/Seoul: LBDTC Z x1"),
    ({"VSDTC": {"+01:00": 3, "+02:00": 2, "+09:00": 1}}, "Europe/Paris", "Europe/Paris",
     "UTC offsets not restored by --default-tz Europe/Paris: VSDTC +09:00 x1"),
    ({"VSDTC": {"+09:00": 3}, "LBDTC": {"Z": 1}}, "+09:00", "+09:00",
     "UTC offsets not restored by --default-tz +09:00: LBDTC Z x1"),
    ({}, None, None, None),
])
def test_zone_for_reverse(seen: dict[str, dict[str, int]], user: str | None, tz: str | None,
                          lossy: str | None) -> None:
    from trialbridge.roundtrip import zone_for_reverse
    back = ConversionReport()
    back.extra["droppedUtcOffsets"] = seen
    assert zone_for_reverse(back, user) == tz
    msgs = [i.message for i in back.issues if i.rule == "roundtrip.default-tz"]
    assert msgs == ([] if lossy is None else [lossy + "; those times come back with another offset or as dates"])


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize("cdisc, ucum", [
    ("g/dL", "g/dL"),           # the CDISC table lists g/dl first, and g/dL: the submission value wins
    ("L", "L"),
    ("10^9/L", "10^9/L"),
    ("g/g", "g/g"),
    ("mmHg", "mm[Hg]"),         # not a UCUM expression itself: the table's expression
    ("beats/min", "{BEATS}/min"),
    ("NOT A UNIT", None),
])
def test_ucum_for(cdisc: str, ucum: str | None) -> None:
    assert T.ucum_for(cdisc) == ucum


def test_vs_ucum_is_the_vital_signs_profile_code_and_comes_back() -> None:
    """HR/PULSE/RESP units are written as '/min' (FHIR heartrate/resprate profiles fix it), and
    FHIR -> SDTM reads '/min' back to the same VSRESU term for that test (mappings/codes/vs_units.csv)."""
    from trialbridge.sdtm.ct import pinned_ct
    from trialbridge.specs import load_table
    back = {(r["VSTESTCD"], r["source_code"]): r["target_code"] for r in load_table("codes/vs_units.csv")}
    rows = load_table("fhir_subject/vs_ucum.csv")
    assert rows
    for r in rows:
        assert T.vs_ucum(r["VSTESTCD"], r["source_code"]) == r["target_code"]
        assert back[(r["VSTESTCD"], r["target_code"])] == r["source_code"]
        assert pinned_ct().term("VSRESU", r["source_code"]) is not None
    assert T.vs_ucum("HR", "beats/min") == "/min"
    assert T.vs_ucum("SYSBP", "mmHg") == "mm[Hg]"        # no test-specific row: the general table
    assert T.vs_ucum("TEMP", "C") == T.ucum_for("C")


def test_ucum_for_submission_value_is_a_listed_pair() -> None:
    """The preferred expression is always one the CDISC Unit-UCUM table pairs with the term."""
    from trialbridge.specs import load_table
    pairs = {(r["target_code"], r["source_code"]) for r in load_table("codes/ucum_cdisc_units.csv")}
    for term in {t for t, _ in pairs}:
        got = T.ucum_for(term)
        assert (term, got) in pairs, term
    assert T.ucum_for("g/dL") == "g/dL" and T.ucum_for("10^9/L") == "10^9/L"   # the submission value itself
    assert T.ucum_for("U/L") == "{Unit}/l"        # the CDISC table's first expression for the term


# ----------------------------------------------------------------------------- the sample round trip
@pytest.fixture(scope="module")
def sample_rt(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from trialbridge.roundtrip import run_fhir_roundtrip
    sample = SAMPLES / "NCT04835883"
    return run_fhir_roundtrip([sample / "subjects.bundle.json"], tmp_path_factory.mktemp("rtz"),
                              study=sample / "ctgov.json")


def test_sample_offsets_reported_and_restored(sample_rt: Any) -> None:
    table, back, fwd = sample_rt
    seen = back.extra["droppedUtcOffsets"]
    assert {z for c in seen.values() for z in c} == {"+09:00"}
    assert seen["SVSTDTC"] == {"+09:00": 93}
    (entry,) = [i for i in back.issues if i.rule == "subject.dtc-zone"]
    assert entry.value is None and entry.record is None and "--default-tz +09:00" in entry.message
    assert not [i for i in back.issues if i.rule == "roundtrip.default-tz"]
    # the reverse leg got +09:00: no time was cut to its date
    assert not [i for i in fwd.issues if i.kind is Kind.LOSSY and "time without zone" in i.message]
    assert [i for i in fwd.issues if i.message.startswith("time without zone: --default-tz +09:00 applied")]
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    for el in ("Encounter.period.start", "Encounter.period.end", "MedicationAdministration.effectivePeriod.start",
               "AdverseEvent.date", "MedicationStatement.effectivePeriod.start"):
        assert rows[el].ratio == 1.0, el


def test_sample_unaligned_records_count_as_lost(sample_rt: Any) -> None:
    table, back, _ = sample_rt
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    total, aligned, _ = table.records["Observation"]
    # without the sample's sponsor table (test_codes.csv) the 72 anti-dsDNA results (LOINC 5130-0) convert to
    # nothing: each is counted as lost, explained by its unmapped-code entry
    assert total - aligned == 72
    eff = rows["Observation.effectiveDateTime"]
    assert eff.values == total and eff.lost == 72 and eff.unexplained == 0
    assert eff.explained_by and eff.explained_by[0].startswith("unmapped-code[lb.LBTESTCD]")
    # the AE's resultingCondition is not an MH record: compared as the AE's term, not held as a Condition
    assert table.records["Condition"] == (26, 26, 0)
    assert rows["Condition.code.text"].lost == 0 and rows["AdverseEvent.term"].ratio == 1.0
    assert any(k.startswith("Condition (1 record") for k in table.excluded)


def test_sample_ae_condition_term_reported(sample_rt: Any) -> None:
    _, back, _ = sample_rt
    ae = [i for i in back.issues if i.rule == "ae.AETERM" and i.kind is Kind.LOSSY]
    assert [i.record for i in ae] == ["AdverseEvent/ae-001-004-1"]
    assert ae[0].source == "AdverseEvent.event.text"
    mh = [i for i in back.issues if i.rule == "mh.select" and i.kind is Kind.LOSSY]
    assert [i.record for i in mh] == ["Condition/cond-001-004-pna"]


def test_sample_ucum_spelling_reported(sample_rt: Any) -> None:
    table, back, _ = sample_rt
    msgs = sorted(i.message.split(" (")[0] for i in back.issues if i.rule == "lb.ORRESU" and i.kind is Kind.LOSSY)
    assert msgs == ["UCUM unit 10*3/uL recorded as the CDISC term 10^9/L",
                    "UCUM unit mL/min/{1.73_m2} recorded as the CDISC term mL/min/1.73 m2",
                    "UCUM unit mg/mg recorded as the CDISC term g/g"]
    code = next(r for r in table.rows if r.domain == "Observation" and r.variable == "valueQuantity.code")
    # each respelled code is the same unit (one CDISC unit term): equal, counted apart; nothing else changed
    assert code.changed == 0 and code.equivalent == 275 + 72 + 72 and code.unexplained == 0


def test_inference_reading_an_element_explains_no_difference_in_it() -> None:
    """The visit matcher *reads* Encounter.period.start (inferred entry): that entry must not explain a
    changed period; a lossy entry on the element does."""
    from trialbridge.roundtrip import _Explainer
    rep = ConversionReport()
    rep.add(Kind.INFERRED, "Encounters matched to the planned visits by study day", rule="subject.visit",
            source="Encounter.period.start", target="VISITNUM")
    assert _Explainer([rep, ConversionReport()], engine=0).element("Encounter", "period.start") == []
    rep.add(Kind.LOSSY, "time cut", rule="SDTM2FHIR-SV-03", source="SV.SVSTDTC", target="Encounter.period.start")
    assert _Explainer([rep, ConversionReport()], engine=0).element("Encounter", "period.start")


def test_wrong_silent_zone_is_an_unexplained_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the reverse leg given another zone without the forward leg reporting the offsets it dropped,
    every timed value would differ unexplained: the harness must see it (no silent shift passes)."""
    import trialbridge.roundtrip as rt
    import trialbridge.subject.pipeline as sp
    monkeypatch.setattr(sp, "report_dropped_zones", lambda ctx: None)
    monkeypatch.setattr(rt, "zone_for_reverse", lambda back, tz: "+01:00")
    sample = SAMPLES / "NCT04835883"
    table, _, _ = rt.run_fhir_roundtrip([sample / "subjects.bundle.json"], tmp_path, study=sample / "ctgov.json")
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    assert rows["Encounter.period.start"].unexplained == 93
    assert rows["Observation.effectiveDateTime"].unexplained == 1051    # every converted result
    assert rows["Patient.birthDate"].unexplained == 0          # date-only: no zone, unaffected


def test_cli_roundtrip_fhir_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trialbridge.cli import main
    sample = SAMPLES / "NCT04835883"
    args = ["roundtrip", str(sample / "subjects.bundle.json"), "--study", str(sample / "ctgov.json")]
    assert main([*args, "-w", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Encounter period.start      93      93       0      0 100.00%      0" in out
    assert (tmp_path / "a" / "roundtrip.json").exists()
    assert main([*args, "-w", str(tmp_path / "b"), "--default-tz", "Mars/Base"]) == 2
    assert capsys.readouterr().err.strip() == ("trialbridge: --default-tz must be Z, +hh:mm / -hh:mm or an IANA "
                                               "time zone name (e.g. Europe/Paris), not 'Mars/Base'")
    assert not (tmp_path / "b" / "sdtm").exists()


def test_sample_data_absent_and_bp_components(sample_rt: Any) -> None:
    """A 'final' result with dataAbsentReason 'error' keeps only NOT DONE + the reason text in SDTM: the
    status and the code are reported lost, per record; BP panel components come back as SYSBP/DIABP
    Observations with the same values."""
    table, back, _ = sample_rt
    stat = [i.record for i in back.issues if i.rule == "lb.STAT" and i.kind is Kind.LOSSY]
    assert stat == ["Observation/obs-001-005-w4-plt"]
    dar = sorted(i.record for i in back.issues if i.rule == "lb.REASND" and i.kind is Kind.LOSSY)
    assert dar == ["Observation/obs-001-003-w16-c4", "Observation/obs-001-005-w4-plt"]
    rows = {f"{r.domain}.{r.variable}": r for r in table.rows}
    comp = rows["Observation.component.valueQuantity.value"]
    assert (comp.values, comp.equal) == (184, 184)
    assert rows["Observation.status"].changed == 1 and rows["Observation.status"].unexplained == 0


def test_sample_missed_visit_comes_back_cancelled(sample_rt: Any) -> None:
    """A cancelled Encounter becomes SVOCCUR N (SDTMIG 3.4); SDTM -> FHIR writes it cancelled again, not
    finished (rule SDTM2FHIR-SV-05)."""
    table, _, _ = sample_rt
    status = next(r for r in table.rows if r.domain == "Encounter" and r.variable == "status")
    assert (status.values, status.equal) == (94, 94)


def test_cell_therapy_dose_unit_comes_back() -> None:
    """'10^6 Therapeutic Cells' (C187973) has no row in the CDISC Unit-UCUM table: SDTM -> FHIR takes the
    UCUM code FHIR -> SDTM maps to it (codes/fhir_dose_unit_extra.csv), the first listed."""
    assert T.ucum_for("10^6 Therapeutic Cells") == "10*6{cells}"
