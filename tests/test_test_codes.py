"""LOINC -> --TESTCD beyond the CDISC table: the project's supplement (eGFR CKD-EPI) and the user's own
decisions (--test-codes), each checked against CDISC CT, each use reported; a LOINC nobody maps stays
unconverted and reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.errors import UsageError
from trialbridge.specs import load_table
from trialbridge.subject.domains.lb import loinc_lb
from trialbridge.subject.test_codes import load_test_codes

SAMPLE = SAMPLES / "NCT04835883"
HEADER = "domain,loinc,testcd,spec,method,category,reason\n"


def _table(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    p = tmp_path / "codes.csv"
    p.write_text(header + body, encoding="utf-8")
    return p


def _convert(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "sdtm"
    rc = main(["convert", str(SAMPLE / "subjects.bundle.json"), "--to", "sdtm", "--study",
               str(SAMPLE / "ctgov.json"), "-o", str(out), "--sdtm-format", "csv", *extra])
    return rc, out


def _lb(out: Path) -> list[dict[str, str]]:
    with open(out / "lb.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_supplement_rows_are_exact_ct_terms_and_never_override_cdisc() -> None:
    from trialbridge.sdtm.ct import pinned_ct
    ct = pinned_ct()
    cdisc = {r["source_code"] for r in load_table("codes/loinc_to_lb.csv")}
    extra = load_table("codes/loinc_to_lb_extra.csv")
    assert extra, "supplement is empty"
    for r in extra:
        assert r["source_code"] not in cdisc
        term = ct.term("LBTESTCD", r["target_code"])
        assert term is not None, r
        assert ct.codelist("LBTEST").by_code(term.code).value == r["LBTEST"]
        assert ct.is_valid("SPECTYPE", r["LBSPEC"]) and ct.is_valid("METHOD", r["LBMETHOD"])
        assert r["origin"] and r["reason"]
    assert loinc_lb()["62238-1"]["target_code"] == "GFRBSCRT"


def test_user_table_loads_and_takes_the_ct_test_name(tmp_path: Path) -> None:
    got = load_test_codes(_table(tmp_path, "LB,5130-0,DDNAIGAB,SERUM,,SEROLOGY,IgG ELISA\nvs,8310-5,TEMP,,,,\n"))
    row = got["LB"]["5130-0"]
    assert (row["target_code"], row["LBTEST"], row["LBSPEC"], row["category"]) == (
        "DDNAIGAB", "Anti-Double Stranded DNA IgG", "SERUM", "SEROLOGY")
    assert row["origin"] == "codes.csv row 1"
    assert got["VS"]["8310-5"]["VSTEST"] == "Temperature"


@pytest.mark.parametrize(("body", "header", "where", "words"), [
    ("LB,5130-0,DSDNA,SERUM,,,\n", HEADER, ("row 1", "testcd"), "not a term of the CDISC codelist LBTESTCD"),
    ("LB,5130-0,DDNAIGAB,SERA,,,\n", HEADER, ("row 1", "spec"), "SPECTYPE"),
    ("LB,5130-0,DDNAIGAB,,ELISAX,,\n", HEADER, ("row 1", "method"), "METHOD"),
    ("XX,5130-0,DDNAIGAB,,,,\n", HEADER, ("row 1", "domain"), "not LB or VS"),
    ("LB,5130-0,DDNAIGAB,,,,\nLB,5130-0,DDNAIGAB,,,,\n", HEADER, ("row 2", "loinc"), "twice"),
    ("LB,,DDNAIGAB,,,,\n", HEADER, ("row 1", "loinc"), "empty value"),
    ("VS,8310-5,TEMP,SERUM,,,\n", HEADER, ("row 1", "spec"), "VS has no specimen"),
    ("LB,5130-0\n", "domain,loinc\n", (), "needs the columns"),
    ("LB,5130-0,DDNAIGAB,x\n", "domain,loinc,testcd,colour\n", (), "unknown column"),
    # a column named twice: csv.DictReader would keep the last one silently
    ("LB,5130-0,DDNAIGAB,GLUC\n", "domain,loinc,testcd,testcd\n", (), "column(s) named twice: testcd"),
    # more values than columns: csv.DictReader would put them under no name (dropped silently)
    ("LB,5130-0,DDNAIGAB,,,,why,extra\n", HEADER, ("row 1",), "8 values for 7 columns"),
])
def test_bad_user_table_is_refused_naming_row_and_field(tmp_path: Path, body: str, header: str,
                                                        where: tuple[str, ...], words: str) -> None:
    with pytest.raises(UsageError) as exc:
        load_test_codes(_table(tmp_path, body, header))
    msg = exc.value.one_line()
    assert msg.startswith("codes.csv"), msg
    assert words in msg and all(w in msg for w in where), msg


def test_comment_and_blank_lines_but_not_inside_a_quoted_value(tmp_path: Path) -> None:
    """Comment (#) and blank lines are skipped between rows only: a quoted value that runs over
    several lines keeps its lines, and the row after it is read (not swallowed into the value)."""
    body = ('# sponsor decisions\n\nLB,5130-0,DDNAIGAB,,,,"IgG ELISA\n# kit lot 7\n\nsee protocol"\n'
            "# next\nLB,2345-7,GLUC,,,,\n")
    got = load_test_codes(_table(tmp_path, body, "\ufeff# table\n" + HEADER))
    assert got["LB"]["5130-0"]["reason"] == "IgG ELISA\n# kit lot 7\n\nsee protocol"
    assert got["LB"]["2345-7"]["target_code"] == "GLUC"
    assert (got["LB"]["5130-0"]["origin"], got["LB"]["2345-7"]["origin"]) == ("codes.csv row 1", "codes.csv row 2")


def test_without_a_decision_anti_dsdna_is_reported_not_guessed(tmp_path: Path) -> None:
    rc, out = _convert(tmp_path)
    assert rc in (0, 1)
    rows = _lb(out)
    assert not [r for r in rows if r["LBLOINC"] == "5130-0"]
    issues = json.loads((out / "report.json").read_text())["issues"]
    assert any(i["kind"] == "unmapped-code" and i["rule"] == "lb.LBTESTCD" and "Observation/" in (i.get("record") or "")
               for i in issues)
    # the supplement converts eGFR (CKD-EPI), and says so once; LBSPEC is the sample's Specimen.type
    # (v2-0487 SER, rule lb.LBSPEC) over the supplement row's SERUM OR PLASMA OR BLOOD
    egfr = [r for r in rows if r["LBLOINC"] == "62238-1"]
    assert len(egfr) == 72
    assert {(r["LBTESTCD"], r["LBSPEC"], r["LBMETHOD"], r["LBCAT"], r["LBORRESU"]) for r in egfr} == {
        ("GFRBSCRT", "SERUM", "CALCULATION", "CHEMISTRY", "mL/min/1.73 m2")}
    used = [i for i in issues if i["rule"] == "lb.LBTESTCD" and i["kind"] == "inferred"]
    assert [("62238-1" in i["message"], "loinc_to_lb_extra.csv" in i["message"]) for i in used] == [(True, True)]


def test_the_sponsor_table_converts_anti_dsdna_and_is_reported(tmp_path: Path) -> None:
    rc, out = _convert(tmp_path, "--test-codes", str(SAMPLE / "test_codes.csv"))
    assert rc in (0, 1)
    rows = [r for r in _lb(out) if r["LBLOINC"] == "5130-0"]
    assert len(rows) == 72
    assert {(r["LBTESTCD"], r["LBTEST"], r["LBSPEC"], r["LBCAT"]) for r in rows} == {
        ("DDNAIGAB", "Anti-Double Stranded DNA IgG", "SERUM", "SEROLOGY")}
    issues = json.loads((out / "report.json").read_text())["issues"]
    assert not any(i["kind"] == "unmapped-code" and i["rule"] == "lb.LBTESTCD" for i in issues)
    used = [i["message"] for i in issues if i["rule"] == "lb.LBTESTCD" and i["kind"] == "inferred"]
    assert any("5130-0" in m and "test_codes.csv row 1" in m for m in used), used


def test_a_user_row_over_a_cdisc_row_wins_and_is_reported(tmp_path: Path) -> None:
    # 14682-9 (creatinine, umol/L) is CREAT in the CDISC table; a user decision replaces it, visibly
    codes = _table(tmp_path, "LB,14682-9,CREATCLR,,,,deliberately different\n")
    rc, out = _convert(tmp_path, "--test-codes", str(codes))
    assert rc in (0, 1)
    assert {r["LBTESTCD"] for r in _lb(out) if r["LBLOINC"] == "14682-9"} == {"CREATCLR"}
    issues = json.loads((out / "report.json").read_text())["issues"]
    assert any("14682-9" in i["message"] and "instead of CREAT" in i["message"] for i in issues)


def test_cli_bad_table_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codes = _table(tmp_path, "LB,5130-0,NOTATERM,,,,\n")
    rc, out = _convert(tmp_path, "--test-codes", str(codes))
    assert rc == 2
    err = capsys.readouterr().err
    assert "codes.csv: record row 1: field testcd" in err
    assert not (out / "lb.csv").exists()


def test_bulk_ndjson_path_gives_the_bundle_path_result_with_test_codes(tmp_path: Path) -> None:
    """The sample as a Bulk Data folder (NDJSON: the typed decoder and the columnar map) converts to the
    same LB and VS as the Bundle, the sponsor's test codes included (each path reads the per-run table)."""
    bundle = json.loads((SAMPLE / "subjects.bundle.json").read_text(encoding="utf-8"))
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    by_type: dict[str, list[bytes]] = {}
    for e in bundle["entry"]:
        r = e["resource"]
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r, separators=(",", ":")).encode())
    for t, lines in by_type.items():
        (bulk / f"{t}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    outs = []
    for name, src in (("a", SAMPLE / "subjects.bundle.json"), ("b", bulk)):
        out = tmp_path / name
        rc = main(["convert", str(src), "--to", "sdtm", "--study", str(SAMPLE / "ctgov.json"), "-o", str(out),
                   "--sdtm-format", "csv", "--test-codes", str(SAMPLE / "test_codes.csv")])
        assert rc in (0, 1)
        outs.append(out)
    for dom in ("lb.csv", "vs.csv", "dm.csv"):
        assert (outs[0] / dom).read_text() == (outs[1] / dom).read_text(), dom
    assert "DDNAIGAB" in (outs[1] / "lb.csv").read_text()


def _ncit_run(tmp_path: Path, name: str, obs: list[dict], plain: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import dataclasses

    from trialbridge.pipeline import Options
    from trialbridge.report import ConversionReport
    from trialbridge.subject import base
    from trialbridge.subject import pipeline as P
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    src = tmp_path / name / "in"
    src.mkdir(parents=True)
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    (src / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (src / "Observation.ndjson").write_text("".join(json.dumps(o) + "\n" for o in obs))
    codes = _table(tmp_path, "LB,5130-0,DDNAIGAB,SERUM,,SEROLOGY,IgG ELISA\n")
    with monkeypatch.context() as m:
        if plain:   # the plain paths: dict reader, row extractor, DataFrame map
            m.setattr(base, "_REGISTRY", {k: dataclasses.replace(p, map_columns=None, line_decoder=None)
                                          for k, p in base.registered_domains().items()})
            m.setattr(P, "_columnar_route", lambda routes: None)
        report = ConversionReport()
        P.convert_subjects([src], tmp_path / name / "out", options=Options(studyid="ST", extra={"test_codes": codes}),
                           report=report)
    return [i.message for i in report.issues if i.rule == "lb.LBTESTCD"]


@pytest.mark.parametrize("plain", [False, True])
def test_a_loinc_whose_testcd_came_from_the_ncit_coding_is_not_reported_as_mapped_by_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plain: bool) -> None:
    """An NCIt coding of a --TESTCD term decides --TESTCD over the LOINC row (rule lb.LBTESTCD): the report
    must not say the user's table mapped that LOINC to its --TESTCD; it says what the row did give."""
    def obs(i: int, ncit: bool) -> dict:
        coding = [{"system": "http://loinc.org", "code": "5130-0"}]
        if ncit:
            coding.append({"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C105585"})
        return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                "category": [{"coding": [{"code": "laboratory"}]}], "code": {"coding": coding},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-02",
                "valueQuantity": {"value": 3, "unit": "IU/mL"}}
    only_ncit = _ncit_run(tmp_path, "a", [obs(1, True), obs(2, True)], plain, monkeypatch)
    assert not any("-> LBTESTCD DDNAIGAB" in m for m in only_ncit), only_ncit
    assert only_ncit == ["LOINC 5130-0: LBTESTCD from the NCIt coding; LBSPEC, LBCAT from codes.csv row 1, not the "
                         "CDISC LOINC table (IgG ELISA)"]
    both = _ncit_run(tmp_path, "b", [obs(1, True), obs(2, False)], plain, monkeypatch)
    assert both == ["LOINC 5130-0 -> LBTESTCD DDNAIGAB: from codes.csv row 1, not the CDISC LOINC table (IgG ELISA)"]


def test_a_user_row_over_a_cdisc_row_reports_every_variable_it_changes(tmp_path: Path) -> None:
    """A user row replaces the whole CDISC row of its LOINC: besides --TESTCD, the position/location
    pre-coordinated in a LOINC (VS) and the specimen/method/category (LB) it no longer gives are
    reported, also when --TESTCD stays the same (else SUPINE of 8306-3 would vanish silently)."""
    from trialbridge.report import ConversionReport
    from trialbridge.subject.base import Ctx
    from trialbridge.subject.domains.vs import loinc_vs
    from trialbridge.subject.test_codes import test_table
    ctx = Ctx(studyid="S", report=ConversionReport())
    ctx.test_codes = load_test_codes(_table(tmp_path, "VS,8306-3,HEIGHT,,,,\nLB,14682-9,CREAT,,,,same test\n"
                                                      "VS,8310-5,TEMP,,,,\n"))
    test_table(ctx, "VS", loinc_vs())
    test_table(ctx, "LB", loinc_lb())
    got = sorted(i.message for i in ctx.report.issues)
    cdisc = loinc_lb()["14682-9"]
    assert cdisc["target_code"] == "CREAT" and cdisc["LBSPEC"]
    assert len(got) == 2, got
    assert got[0].startswith("LOINC 14682-9: ") and f"LBSPEC (none) instead of {cdisc['LBSPEC']}" in got[0]
    assert "LBTESTCD" not in got[0] and "codes.csv row 2" in got[0]
    assert got[1] == ("LOINC 8306-3: VSPOS (none) instead of SUPINE of the CDISC table, from codes.csv row 1 "
                      "(the user's row replaces the CDISC row)")
