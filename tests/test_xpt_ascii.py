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
