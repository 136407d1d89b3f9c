"""The streamed SDTM writer's fast paths (text columns checked in C, rows split at "],[", the
companion CSV built from one orjson call) write exactly what the plain paths write: byte for byte,
on awkward inputs, in every output form."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from trialbridge.sdtm import output
from trialbridge.sdtm.output import ChunkedDomainWriter, key_order, sort_by_keys

FORMATS = ("json", "ndjson", "csv", "xpt")
CREATED = re.compile(rb'"datasetJSONCreationDateTime"\s*:\s*"[^"]*"|\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d')


def _plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fast path off: text through the factorisation, rows serialised one by one, the
    companion through ``DataFrame.to_csv``."""
    monkeypatch.setattr(output, "_text_values", lambda s: None)
    monkeypatch.setattr(output, "_dumped_rows", lambda cols, n: None)
    monkeypatch.setattr(output, "_csv_lines", lambda frame, order: None)


def _write(folder: Path, chunks: list[tuple[pd.DataFrame, pd.DataFrame]], formats=FORMATS) -> dict[str, bytes]:
    folder.mkdir()
    w = ChunkedDomainWriter("LB", folder, formats, study_oid="S", companion=folder / "lb.provenance.csv")
    for frame, comp in chunks:
        w.write(frame, companion=comp)
    w.close()
    assert not list(folder.glob(".*"))
    return {p.name: CREATED.sub(b"", p.read_bytes()) for p in sorted(folder.iterdir())}


def _same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks, formats=FORMATS) -> dict[str, bytes]:
    fast = _write(tmp_path / "fast", chunks, formats)
    with monkeypatch.context() as m:
        _plain(m)
        plain = _write(tmp_path / "plain", chunks, formats)
    assert fast.keys() == plain.keys()
    for name in fast:
        assert fast[name] == plain[name], name
    return fast


def _awkward_chunks(seed: int, nchunks: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    rnd = random.Random(seed)
    texts = ["1", "12.5", "a],[b", "x]", "[y", "é", "Ω mg/dL", "", None, float("nan"), pd.NA, 'say "hi"',
             "back\\slash", "tab\there", "a,b", "日本"]
    chunks = []
    seq = 0
    for c in range(nchunks):
        n = rnd.randint(1, 40)
        rows = []
        for _ in range(n):
            seq += 1
            rows.append({
                "STUDYID": "S", "DOMAIN": "LB",
                "USUBJID": rnd.choice(["S-1", "S-2", "S-10", "S-é", None]),
                "LBSEQ": seq,
                "LBTESTCD": rnd.choice(["ALT", "AST", "GLUC"]),
                "LBTEST": rnd.choice(["Alanine", "Aspartate", "Glucose"]),
                # plain ASCII in most chunks, awkward text in some
                "LBORRES": rnd.choice(texts) if c % 3 == 1 else str(rnd.randint(1, 99)),
                "LBORRESU": rnd.choice(["mg/dL", None]) if c % 2 else "mg/dL",
                "LBSTRESN": rnd.choice([1.0, 2.5, float("nan"), 3]),
                "VISITNUM": rnd.choice([1.0, 2, None]),
                # a Perm column empty in the first chunks, filled late
                "LBMETHOD": rnd.choice(["AUTOMATED", None]) if c >= nchunks - 2 else None,
                # mixed types in a Char column (goes through the distinct values)
                "LBSTRESC": rnd.choice(["1", 2, 3.5, None]) if c == 2 else rnd.choice(["1", "2"]),
            })
        frame = pd.DataFrame(rows)
        if c % 4 == 0:
            frame["LBORRESU"] = frame["LBORRESU"].astype("str")   # pandas text dtype, NaN for missing
        if c == 0:
            frame = frame.drop(columns=["LBMETHOD"])
        comp = pd.DataFrame({"USUBJID": frame["USUBJID"], "SEQ": frame["LBSEQ"], "src_type": "Observation",
                             "src_id": [f"o{s}" for s in frame["LBSEQ"]], "src_file": "Observation.ndjson",
                             "src_line": frame["LBSEQ"] + 1})
        if c == 3:   # values the CSV must quote
            comp["src_id"] = [rnd.choice(["a,b", 'q"q', "plain", "é"]) for _ in range(n)]
        if c == 5:   # a float column: left to pandas
            comp["src_line"] = comp["src_line"].astype(float)
        chunks.append((frame, comp))
    return chunks


@pytest.mark.parametrize(("seed", "step"), [(1, 4096), (2, 4096), (3, 4096), (1, 3), (2, 1)])
def test_fast_paths_write_what_the_plain_paths_write(tmp_path, monkeypatch, seed, step):
    monkeypatch.setattr(output, "ROWS_PER_CALL", step)   # rows serialised and written a few at a time
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", 16)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    chunks = _awkward_chunks(seed, 9)
    got = _same(tmp_path, monkeypatch, chunks)
    # and what sorting the whole domain in memory gives, provenance row for row (each row as pandas
    # writes its chunk)
    whole = pd.concat([f for f, _ in chunks], ignore_index=True)
    lines = [line for _, c in chunks for line in c.to_csv(index=False, lineterminator="\n").splitlines()[1:]]
    header = chunks[0][1].to_csv(index=False, lineterminator="\n").splitlines()[0]
    want = "\n".join([header] + [lines[k] for k in key_order(whole, "LB")]) + "\n"
    assert got["lb.provenance.csv"] == want.encode("utf-8")


def test_fast_paths_on_many_runs_and_one_row_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", 5)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    chunks = _awkward_chunks(7, 40)
    chunks += [(f.iloc[[0]], c.iloc[[0]]) for f, c in chunks[:5]]
    _same(tmp_path, monkeypatch, chunks, ("json", "ndjson"))


def test_empty_chunks_and_all_missing_columns(tmp_path, monkeypatch):
    frame = pd.DataFrame({"STUDYID": "S", "DOMAIN": "LB", "USUBJID": ["S-2", "S-1"], "LBSEQ": [1, 2],
                          "LBTESTCD": ["ALT", "ALT"], "LBORRES": [None, np.nan],
                          "LBSTRESN": [np.nan, np.nan], "LBMETHOD": pd.Series([None, None], dtype="str")})
    comp = pd.DataFrame({"USUBJID": frame["USUBJID"], "SEQ": [None, None], "src_id": ["a", "b"]})
    chunks = [(frame.iloc[:0], comp.iloc[:0]), (frame, comp), (frame.iloc[:0], comp.iloc[:0])]
    got = _same(tmp_path, monkeypatch, chunks)
    assert b'"LBMETHOD"' not in got["lb.json"]   # a Perm column with no value is not written
    assert got["lb.provenance.csv"] == b"USUBJID,SEQ,src_id\nS-1,,b\nS-2,,a\n"


@pytest.mark.parametrize("step", [4096, 2])
def test_csv_lines_equal_pandas_or_decline(monkeypatch, step):
    """The companion fast path equals ``to_csv`` where it answers, and declines what needs quoting
    (in any of its blocks of rows)."""
    monkeypatch.setattr(output, "ROWS_PER_CALL", step)
    order = np.array([2, 0, 1])
    frame = pd.DataFrame({"A": ["x", None, "é"], "B": [3, -1, 10**12], "C": pd.Series(["p", "q", None], dtype="str")})
    text, lens = output._csv_lines(frame, order)
    want = frame.iloc[order].to_csv(index=False, lineterminator="\n").encode("utf-8")
    assert want.partition(b"\n")[2] == text
    assert lens.tolist() == [len(line) + 1 for line in text[:-1].split(b"\n")]
    for good in (["a]", "[c", "d"], ["a][b", "", "]]"], ["a b ", " ", "d;e"]):   # brackets: no quoting
        got = output._csv_lines(frame.assign(A=good), order)
        assert got is not None and got[0] == frame.assign(A=good).iloc[order].to_csv(
            index=False, header=False, lineterminator="\n").encode("utf-8"), good
    for bad in (["a,b", "c", "d"], ['a"', "c", "d"], ["a\nb", "c", "d"], ["a\\b", "c", "d"], [1.5, "c", "d"],
                [True, False, True], ["a\rb", "c", "d"], ["x", "c,", "d"]):
        assert output._csv_lines(frame.assign(A=bad), order) is None, bad
    assert output._csv_lines(frame.assign(B=[1.0, 2.0, 3.0]), order) is None
    assert output._csv_lines(frame.assign(A=pd.Series(["\udcff", "c", "d"], dtype=object)), order) is None   # not UTF-8
    assert output._csv_lines(frame[["A"]], order) is None   # one column: an empty value is quoted


@pytest.mark.parametrize("step", [4096, 2, 1])
def test_records_equal_one_row_at_a_time(monkeypatch, step):
    """A record is the row's JSON text without its opening bracket, with a comma; rows with "[" in
    a value are declined by the block path and serialised one by one."""
    monkeypatch.setattr(output, "ROWS_PER_CALL", step)
    rows = [["a],b", 1, None], ["x]", 2.5, "]],"], ["é", -1, ""], ["\n\"", 0, "q"]]
    want = [orjson.dumps(r)[1:] + b"," for r in rows]
    assert output._dumped_rows([list(c) for c in zip(*rows, strict=True)], len(rows)) == want
    assert output._records(rows) == want
    assert output._loads_lines([b"[" + r + b"\n" for r in want]) == rows
    bad = [*rows, ["[y", 3, None], ["a],[b", 4, "]"]]
    assert output._dumped_rows([list(c) for c in zip(*bad, strict=True)], len(bad)) is None
    assert output._records(bad) == [orjson.dumps(r)[1:] + b"," for r in bad]
    assert output._loads_lines([]) == []


def test_text_values_equal_the_distinct_value_path():
    s = pd.Series(["b", None, "é", "a],[b", np.nan, ""], dtype=object)
    vals, longest = output._text_values(s)
    assert vals == ["b", "", "é", "a],[b", "", ""] and longest == 5
    assert output._text_values(pd.Series([None, np.nan], dtype=object)) == ([], 0)
    assert output._text_values(pd.Series(["1", 2], dtype=object)) is None
    assert output._text_values(pd.Series(["Ω", "ab"], dtype="str")) == (["Ω", "ab"], 2)


def test_longest_text_without_the_pandas_helper(monkeypatch):
    s = pd.Series(["abc", None, "a", "abcdef", ""], dtype=object)
    fast = output._text_values(s)
    monkeypatch.setattr(output, "_max_len_string_array", None)
    assert output._text_values(s) == fast == (["abc", "", "a", "abcdef", ""], 6)


@pytest.mark.parametrize("high", [3, 2**16 - 1, 2**16, 2**40])
def test_stable_order_equals_numpy_stable_argsort(high):
    keys = np.random.default_rng(5).integers(0, high, size=5000, dtype=np.int64)
    assert (output._stable_order(keys) == np.argsort(keys, kind="stable")).all()
    big = np.array([2**70, 1, 2**70, 0], dtype=object)   # past int64: exact Python integers
    assert output._stable_order(big).tolist() == [3, 1, 0, 2]


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 9])
def test_write_joined_equals_one_join(monkeypatch, count):
    import io

    pieces = [f"r{k}".encode() for k in range(count)]
    fh = io.BytesIO()
    monkeypatch.setattr(output, "ROWS_PER_CALL", 2 if count != 9 else 3)
    output._write_joined(fh, b"],\n[", pieces)
    assert fh.getvalue() == b"],\n[".join(pieces)


def test_companion_values_with_line_breaks_are_quoted_as_pandas_writes_them(tmp_path, monkeypatch):
    """A companion value holding a line break (an id read from the input, e.g. ``a"b\\nc``) is
    written as ``DataFrame.to_csv`` quotes it, in key order, as the whole-domain writer does: not a
    crash of the run."""
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", 2)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    ids = ["x\ny", 'q"\r\nr', "plain", "é\n", "last"]
    chunks = []
    for k in range(3):
        subj = [f"S-{(7 * j + k) % 5}" for j in range(len(ids))]
        frame = pd.DataFrame({"STUDYID": "S", "DOMAIN": "LB", "USUBJID": subj, "LBSEQ": range(len(ids)),
                              "LBTESTCD": "ALT", "LBORRES": ["1"] * len(ids)})
        comp = pd.DataFrame({"USUBJID": subj, "src_id": [f"{i}{k}" for i in ids], "line": range(len(ids))})
        chunks.append((frame, comp))
    got = _same(tmp_path, monkeypatch, chunks, ("json",))
    whole = pd.concat([c for _, c in chunks], ignore_index=True)
    frames = pd.concat([f for f, _ in chunks], ignore_index=True)
    expected = whole.iloc[key_order(frames, "LB")].to_csv(index=False, lineterminator="\n").encode()
    assert got["lb.provenance.csv"] == expected
    assert pd.read_csv(tmp_path / "fast" / "lb.provenance.csv", keep_default_na=False)["src_id"].tolist() == \
        whole.iloc[key_order(frames, "LB")]["src_id"].tolist()


def test_a_failed_run_leaves_no_spool_files(tmp_path):
    """The writer's spools are removed when the run fails before or during close (:meth:`abort`)."""
    frame = pd.DataFrame({"STUDYID": "S", "DOMAIN": "LB", "USUBJID": ["S-1"], "LBSEQ": [1], "LBTESTCD": ["ALT"]})
    w = ChunkedDomainWriter("LB", tmp_path, ("json",), study_oid="S", companion=tmp_path / "lb.provenance.csv")
    w.write(frame, companion=frame[["USUBJID"]])
    assert list(tmp_path.glob(".*.spool"))
    w.abort()
    w.abort()   # (idempotent: also after close)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_constant_text_columns():
    """A column with nothing but missing values is told apart from one with a single value among
    them (not at the positions looked at first); a constant column from one holding pd.NA."""
    assert output._text_values(pd.Series([None, np.nan, pd.NA] * 30, dtype=object)) == ([], 0)
    sparse = [None] * 100
    sparse[5] = "late"
    assert output._text_values(pd.Series(sparse, dtype=object)) == ([""] * 5 + ["late"] + [""] * 94, 4)
    same = pd.Series(["".join(["B", "ENCH"]) for _ in range(50)], dtype=object)   # equal, distinct objects
    assert output._constant(same.to_numpy()) == "BENCH"
    assert output._constant(np.array(["x"] * 20 + [pd.NA], dtype=object)) is None
    assert output._constant(np.array(["x"] * 20 + ["y"], dtype=object)) is None


@pytest.mark.parametrize("values", [[50.0, 300.0, -0.0, 12.0], [0.5, 105.94, float("inf"), 2.0**53 + 2],
                                    [1.0, 2.5, float("nan"), 3.0], [float("nan"), 7.0], [0.25, float("nan")],
                                    [2.0**53, 1.5, 4.0]])
def test_numeric_values_equal_the_value_by_value_path(values):
    """Floats written as ints where whole (all whole, none whole, mixed, with missing values)."""
    s = pd.Series(values, dtype="float64")
    fast, present = output._numeric_values(s, False)
    plain, plain_present = output._numeric_values(s.astype(object), False)
    assert [(type(v), v) for v in fast] == [(type(v), v) for v in plain] and present == plain_present


def test_a_domain_without_rows(tmp_path):
    w = ChunkedDomainWriter("LB", tmp_path, FORMATS, study_oid="S", companion=tmp_path / "lb.provenance.csv")
    w.close()
    assert (tmp_path / "lb.json").read_bytes().endswith(b'"rows":[]}\n')
    assert orjson.loads((tmp_path / "lb.json").read_bytes())["rows"] == []
    assert (tmp_path / "lb.ndjson").read_bytes().count(b"\n") == 1


@pytest.mark.parametrize("merge_rows", [5, 64, 100_000])
def test_merge_by_stretches_equals_row_by_row(tmp_path, monkeypatch, merge_rows):
    """The merge copies stretches of rows that come from one run one after another as one slice;
    row by row (the way used when runs are re-serialised) it writes the same bytes, in every form."""
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", merge_rows)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    chunks = [(f.drop(columns=["LBMETHOD"], errors="ignore"), c) for f, c in _awkward_chunks(11, 12)]
    chunks += [(f.iloc[[0]], c.iloc[[0]]) for f, c in chunks[:3]]   # one-row runs
    merged = ChunkedDomainWriter._merged
    pieces = []

    def counted(self, per_row):
        for lines, comp, runs in merged(self, per_row):
            pieces.append(len(lines))
            yield lines, comp, runs

    monkeypatch.setattr(ChunkedDomainWriter, "_merged", counted)
    stretches = _write(tmp_path / "stretches", chunks)
    if merge_rows > 5:   # (blocks of more than one row per run: some pieces hold several rows)
        assert sum(pieces) < sum(len(f) for f, _ in chunks)
    monkeypatch.setattr(ChunkedDomainWriter, "_merged", lambda self, per_row: merged(self, True))
    rows = _write(tmp_path / "rows", chunks)
    assert stretches == rows
    assert stretches["lb.json"].count(b"\n[") == sum(len(f) for f, _ in chunks)


def test_without_a_companion(tmp_path, monkeypatch):
    """A writer without a companion merges its runs (stretches and row by row) the same way."""
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", 9)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    chunks = [f for f, _ in _awkward_chunks(5, 8)]
    got = {}
    for name in ("fast", "plain"):
        folder = tmp_path / name
        folder.mkdir()
        with monkeypatch.context() as m:
            if name == "plain":
                _plain(m)
            w = ChunkedDomainWriter("LB", folder, FORMATS, study_oid="S")
            for frame in chunks:
                w.write(frame)
            w.close()
        got[name] = {p.name: CREATED.sub(b"", p.read_bytes()) for p in sorted(folder.iterdir())}
    assert got["fast"] == got["plain"] and sorted(got["fast"]) == ["lb.csv", "lb.json", "lb.ndjson", "lb.xpt"]
    whole = pd.concat(chunks, ignore_index=True)
    rows = orjson.loads((tmp_path / "fast" / "lb.json").read_bytes())["rows"]
    assert [r[3] for r in rows] == sort_by_keys(whole, "LB")["LBSEQ"].tolist()
