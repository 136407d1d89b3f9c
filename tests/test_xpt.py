"""XPT v5 writer/reader: every XPT in ../shared/data round-trips (data, names, labels, lengths)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyreadstat
import pytest
from trialbridge.errors import InputError
from trialbridge.sdtm.xpt import XptColumn, XptError, XptMeta, read_xpt, split_xpt, write_xpt, write_xpt_table

from tests.conftest import DATA, shared_path

XPTS = sorted((DATA / "sdtm" / "phuse_cdiscpilot01").glob("*.xpt")) + sorted(
    (DATA / "dataset_json" / "examples" / "sdtm").glob("*.xpt"))


@pytest.mark.parametrize("path", XPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_round_trip_every_shared_xpt(path: Path, tmp_path: Path) -> None:
    df, meta = read_xpt(path)
    out = tmp_path / path.name
    if meta.encoding != "utf-8":
        # the pilot's ts.xpt holds Windows-1252 apostrophes: refused by policy, rows named
        with pytest.raises(XptError, match=r"TSVAL: 3 value\(s\) with non-ASCII .* \(row 9, 14, 29\)"):
            write_xpt_table(df, out, meta)
        ascii_rows = df[df["TSVAL"].map(str.isascii)].reset_index(drop=True)
        write_xpt_table(ascii_rows, out, meta)
        df = ascii_rows
    else:
        write_xpt_table(df, out, meta)
    back, m2 = pyreadstat.read_xport(str(out))       # independent reader
    pd.testing.assert_frame_equal(back, df)
    assert m2.column_names == meta.names
    assert m2.column_labels == [c.label for c in meta.columns]
    assert m2.table_name == meta.name
    assert (m2.file_label or "") == meta.label
    assert m2.variable_storage_width == {c.name: c.length for c in meta.columns}


def test_domain_writer_uses_metadata(tmp_path: Path) -> None:
    df = pd.DataFrame({"STUDYID": ["S1", "S1"], "DOMAIN": ["TS", "TS"], "TSSEQ": [1, 2],
                       "TSPARMCD": ["TITLE", "SSTDTC"], "TSPARM": ["Trial Title", "Study Start Date"],
                       "TSVAL": ["A study", "2020-01-02"]})
    [path] = write_xpt(df, "TS", tmp_path / "ts.xpt")
    back, meta = pyreadstat.read_xport(str(path))
    assert meta.table_name == "TS" and meta.file_label == "Trial Summary"
    assert meta.column_names[:4] == ["STUDYID", "DOMAIN", "TSSEQ", "TSGRPID"] or \
        meta.column_names[:3] == ["STUDYID", "DOMAIN", "TSSEQ"]
    assert meta.variable_storage_width["TSPARMCD"] == 8          # metadata length
    assert back["TSVAL"].tolist() == ["A study", "2020-01-02"]   # --DTC stays ISO 8601 text
    [path2] = write_xpt(df, "TS", tmp_path / "ts2.xpt", lengths="data")
    assert pyreadstat.read_xport(str(path2))[1].variable_storage_width["TSPARMCD"] == 6


@pytest.mark.parametrize("frame, meta, message", [
    (pd.DataFrame({"A": ["x" * 201]}), XptMeta("T", "t", (XptColumn("A", "a", "Char"),)),
     "A: 1 value(s) longer than 200 bytes (XPT v5 limit; longest 201) (row 1)"),
    (pd.DataFrame({"A": ["ok", "café"]}), XptMeta("T", "t", (XptColumn("A", "a", "Char"),)),
     "A: 1 value(s) with non-ASCII characters (XPT v5 carries ASCII only; not transliterated) (row 2)"),
    (pd.DataFrame({"LONGNAME9": ["x"]}), XptMeta("T", "t", (XptColumn("LONGNAME9", "a", "Char"),)),
     "variable name 'LONGNAME9' is not 1-8 letters"),
    (pd.DataFrame({"A": ["x"]}), XptMeta("T", "t", (XptColumn("A", "L" * 41, "Char"),)),
     "A: label is 41 characters (XPT v5: at most 40 ASCII)"),
])
def test_refuses_what_v5_cannot_carry(frame: pd.DataFrame, meta: XptMeta, message: str,
                                      tmp_path: Path) -> None:
    with pytest.raises(XptError) as exc:
        write_xpt_table(frame, tmp_path / "t.xpt", meta)
    assert message in str(exc.value)
    assert not (tmp_path / "t.xpt").exists()


def test_numeric_dates_only_for_numeric_date_variables(tmp_path: Path) -> None:
    meta = XptMeta("T", "t", (XptColumn("ADT", "Analysis Date", "Num", 8, "DATE9."),
                              XptColumn("ADTC", "Date text", "Char", 10)))
    df = pd.DataFrame({"ADT": ["2020-01-02", None], "ADTC": ["2020-01-02", ""]})
    write_xpt_table(df, tmp_path / "t.xpt", meta)
    raw, m = pyreadstat.read_xport(str(tmp_path / "t.xpt"), disable_datetime_conversion=True)
    assert raw["ADT"].iloc[0] == (dt.date(2020, 1, 2) - dt.date(1960, 1, 1)).days
    assert m.original_variable_types["ADT"] == "DATE9"
    assert raw["ADTC"].iloc[0] == "2020-01-02"


def test_split_keeps_subjects_whole(tmp_path: Path) -> None:
    path = shared_path("dataset_json", "examples", "sdtm", "vs.xpt")
    df, meta = read_xpt(path)
    parts = split_xpt(df, meta, tmp_path / "vs.xpt", max_bytes=200_000)
    assert len(parts) > 1 and all(p.parent.name == "split" for p in parts)
    frames = [pyreadstat.read_xport(str(p))[0] for p in parts]
    assert all(p.stat().st_size <= 200_000 for p in parts)
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), df)
    subjects = [set(f["USUBJID"]) for f in frames]
    assert all(not (a & b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    assert pyreadstat.read_xport(str(parts[0]), metadataonly=True)[1].table_name == "VS1"


def test_unreadable_file_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.xpt"
    bad.write_bytes(b"not a transport file" * 10)
    with pytest.raises(InputError):
        read_xpt(bad)
