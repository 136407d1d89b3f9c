"""Conversions that ask for XPT spell non-ASCII text in ASCII, report every changed value, and keep
the original in Dataset-JSON; the low-level writer still refuses non-ASCII by default."""

from __future__ import annotations

import pandas as pd
import pyreadstat
import pytest
from trialbridge.report import ConversionReport, Kind
from trialbridge.sdtm.datasetjson import read_dataset_json
from trialbridge.sdtm.output import write_domain
from trialbridge.sdtm.xpt import XptError, to_ascii, write_xpt


def _ts():
    return pd.DataFrame({"STUDYID": ["S1"] * 3, "DOMAIN": ["TS"] * 3, "TSSEQ": [1, 1, 1],
                         "TSPARMCD": ["OUTMSPRI", "OUTMSSEC", "TITLE"],
                         "TSPARM": ["Primary Outcome Measure", "Secondary Outcome Measure", "Trial Title"],
                         "TSVAL": ["UPCR ≤0.5 mg/mg, 2.0×10^6 cells, 5 µmol/L", "Café “au lait” — ok",
                                   "plain"]})


def test_to_ascii_uses_the_table_then_nfkd_and_reports_rows_not_values():
    report = ConversionReport()
    out = to_ascii(_ts(), "TS", report)
    assert out["TSVAL"].tolist() == ["UPCR <=0.5 mg/mg, 2.0x10^6 cells, 5 umol/L",
                                     'Cafe "au lait" - ok', "plain"]
    (issue,) = report.issues
    assert issue.kind is Kind.LOSSY and issue.severity.value == "warning"
    assert "row 1, 2" in issue.message and issue.source == "TS.TSVAL"
    assert "µ" not in issue.message and "Caf" not in issue.message


def test_conversion_writes_ascii_xpt_and_keeps_utf8_dataset_json(tmp_path):
    report = ConversionReport()
    write_domain(_ts(), "TS", tmp_path, ("json", "xpt"), study_oid="S1", report=report)
    df, _ = pyreadstat.read_xport(str(tmp_path / "ts.xpt"))
    assert df["TSVAL"].tolist()[1] == 'Cafe "au lait" - ok'
    js, _ = read_dataset_json(tmp_path / "ts.json")
    assert js["TSVAL"].tolist()[1] == "Café “au lait” — ok"


def test_plain_writer_still_refuses_non_ascii(tmp_path):
    with pytest.raises(XptError, match="non-ASCII"):
        write_xpt(_ts(), "TS", tmp_path / "ts.xpt")
    assert not (tmp_path / "ts.xpt").exists()


def test_streamed_domains_are_written_as_xpt_too(tmp_path):
    """LB and VS are streamed chunk by chunk; --sdtm-format xpt still writes them, equal to the
    Dataset-JSON written beside them (read back with pyreadstat)."""
    from conftest import SAMPLES
    from trialbridge.cli import main

    sample = SAMPLES / "NCT04835883"
    assert main(["convert", str(sample / "subjects.bundle.json"), "--study", str(sample / "ctgov.json"),
                 "--to", "sdtm", "--sdtm-format", "json,xpt", "-o", str(tmp_path)]) == 0
    for dom in ("lb", "vs", "dm"):
        xpt, meta = pyreadstat.read_xport(str(tmp_path / f"{dom}.xpt"))
        js, head = read_dataset_json(tmp_path / f"{dom}.json")
        assert list(xpt.columns) == list(js.columns) and len(xpt) == len(js) > 0, dom
        assert meta.file_label == head["label"]
        for col in js.columns:
            if js[col].map(lambda v: isinstance(v, str)).all():
                assert (xpt[col].fillna("") == js[col]).all(), (dom, col)
            else:
                assert (pd.to_numeric(xpt[col]).fillna(-9e9) == pd.to_numeric(js[col]).fillna(-9e9)).all(), (dom, col)


def test_conversion_splits_text_over_200_into_supp_for_xpt(tmp_path, monkeypatch):
    """SDTMIG 3.4 4.5.3.2: a value over 200 characters keeps its first 200 (cut between words) in the
    variable of the XPT and the rest in SUPP-- records QNAM = name + 1, 2 ... (QLABEL the variable's,
    IDVAR --SEQ); the Dataset-JSON keeps the whole text and no such SUPP-- rows; each split reported
    (info). The conversion stopped on such a value before. Bundle (AE) and streamed (LB) domains."""
    import json

    from trialbridge.cli import main
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    words = " ".join(f"word{i:03d}" for i in range(60))   # 479 characters
    subj = {"reference": "Patient/p1"}
    ae = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "subject": subj,
          "event": {"text": words}, "date": "2024-01-05"}
    lb = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": subj,
          "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory"}]}],
          "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
          "effectiveDateTime": "2024-01-05", "valueString": words}
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in ({"resourceType": "Patient", "id": "p1"}, ae, lb)]}))
    out = tmp_path / "out"
    rc = main(["convert", str(src), "--to", "sdtm", "-o", str(out), "--sdtm-format", "json,xpt",
               "--studyid", "LONG"])
    report = json.loads((out / "report.json").read_text())
    assert rc == 0, report["counts"]
    for dom, var in (("ae", "AETERM"), ("lb", "LBORRES")):
        xpt, _ = pyreadstat.read_xport(str(out / f"{dom}.xpt"))
        first = xpt[var].iat[0]
        assert len(first) <= 200 and words.startswith(first + " ")
        assert read_dataset_json(out / f"{dom}.json")[0][var].iat[0] == words   # whole text kept
        supp, _ = pyreadstat.read_xport(str(out / f"supp{dom}.xpt"))
        rows = supp[supp["QNAM"].str.startswith(var)].sort_values("QNAM")
        assert rows["QNAM"].tolist() == [f"{var}1", f"{var}2"]
        assert " ".join([first, *rows["QVAL"]]) == words and (rows["QVAL"].str.len() <= 200).all()
        label = xpt_label(out / f"{dom}.xpt", var)   # one QLABEL per QNAM (FDAB009)
        assert rows["QLABEL"].tolist() == [f"{label} 1", f"{label} 2"]
        assert set(rows["IDVAR"]) == {f"{dom.upper()}SEQ"} and set(rows["IDVARVAL"]) == {"1"}
        assert set(rows["RDOMAIN"]) == {dom.upper()} and set(rows["QORIG"]) == {"Collected"}
        if (out / f"supp{dom}.json").exists():
            assert var not in "".join(read_dataset_json(out / f"supp{dom}.json")[0]["QNAM"].astype(str))
    issues = [i for i in report["issues"] if i.get("rule") == "xpt.long-text"]
    assert sorted(i["source"] for i in issues) == ["AE.AETERM", "LB.LBORRES", "LB.LBSTRESC"]
    assert {i["severity"] for i in issues} == {"info"}
    # define.xml describes the XPT its def:leaf names (AETERM as long as the XPT's, SUPPAE's AETERM1/2),
    # and validate checks the folder as define.xml describes it
    from trialbridge.submission.define import read_define
    doc = read_define(out / "define.xml")
    assert doc.datasets["AE"].leaf == "ae.xpt" and "SUPPAE" in doc.datasets
    lengths = {i.name: i.length for d in ("AE",) for i in doc.datasets[d].items}
    assert lengths["AETERM"] <= 200
    main(["validate", str(out)])
    found = json.loads((out / "findings.json").read_text())["findings"]
    assert not [f for f in found if f["check"] in ("TB-XPT-LENGTH", "TB-DEFINE-LENGTH", "TB-TEST-PAIR")]


def xpt_label(path, var):
    _, meta = pyreadstat.read_xport(str(path), metadataonly=True)
    return dict(zip(meta.column_names, meta.column_labels, strict=True))[var]
