"""The columnar fast paths of SDTM -> FHIR findings give exactly what the plain paths give.

- Dataset-JSON NDJSON reader: rows parsed straight into columns (``_json_columns``) equal the
  row-by-row frame (``_normalise(_json_rows(...))``); rows it does not take go the row path and keep
  their exact error messages (row numbers counted over chunks).
- Findings writer: parts fused by ``_fuse`` and spliced in blocks equal the naive per-row concatenation;
  the output does not depend on the chunk size or on the dataset form (json read row by row, ndjson
  through the fast path).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pandas as pd
import pytest
from conftest import shared_path
from trialbridge.errors import InputError
from trialbridge.fhir import subject_writer as W
from trialbridge.report import ConversionReport
from trialbridge.sdtm import reader as R
from trialbridge.sdtm.files import DatasetFile

COLS = [{"itemOID": f"IT.LB.{n}", "name": n, "label": n, "dataType": t}
        for n, t in (("USUBJID", "string"), ("LBSEQ", "integer"), ("LBORRES", "string"), ("LBSTRESN", "float"))]
META = {"datasetJSONCreationDateTime": "2026-01-01T00:00:00", "datasetJSONVersion": "1.1.0",
        "itemGroupOID": "IG.LB", "name": "LB", "label": "Laboratory Test Results", "columns": COLS}


def _rows(n: int) -> list[list[object]]:
    rng = random.Random(5)
    texts = ["5.1", "5.1 ", "", "  ", "NEGATIVE", "é<0.5", None]
    return [[f"S-{i % 7}", i + 1 if i % 5 else float(i + 1), rng.choice(texts),
             rng.choice([None, 1, 2.5, -0.0, 10**15])] for i in range(n)]


def _write(path: Path, rows: list[list[object]], blank_every: int = 0) -> DatasetFile:
    with open(path, "wb") as fh:
        fh.write(orjson.dumps({**META, "records": len(rows)}) + b"\n")
        for i, row in enumerate(rows):
            fh.write(orjson.dumps(row) + b"\n")
            if blank_every and i % blank_every == 0:
                fh.write(b"  \t\n" if i % 2 else b"\n")
    return DatasetFile("LB", path, "ndjson")


def _row_path(rows: list[list[object]]) -> pd.DataFrame:
    numeric = {c["name"] for c in COLS if c["dataType"] in R.NUMERIC_DATATYPES}
    return R._normalise(R._json_rows(rows, COLS, file="x", offset=0), numeric, file="x")


def test_fast_path_equals_row_path(tmp_path: Path) -> None:
    rows = _rows(2 * R.PARSE_ROWS + 37)
    ds = _write(tmp_path / "lb.ndjson", rows, blank_every=997)
    chunks = list(R.iter_dataset_chunks(ds, chunksize=R.PARSE_ROWS + 11))
    assert [len(c) for c in chunks] == [R.PARSE_ROWS + 11, R.PARSE_ROWS + 11, 15]   # blanks not counted
    got = pd.concat(chunks, ignore_index=True)
    expected = _row_path(rows)
    pd.testing.assert_frame_equal(got, expected)
    assert got.dtypes.astype(str).tolist() == ["object", "float64", "object", "float64"]
    assert got["LBORRES"].isna().sum() == expected["LBORRES"].isna().sum() > 0   # "", "  ", null -> None
    assert set(got["LBORRES"].dropna()) == {"5.1", "NEGATIVE", "é<0.5"}


def test_text_column_holding_numbers_reads_as_the_row_path(tmp_path: Path) -> None:
    # 1, 1.0 and True hash alike: they must not be merged into one text; a list cannot be hashed
    rows = [["S-1", 1, v, None] for v in (1, 1.0, True, "1", "1 ", None, 2.5, ["x"])]
    lines = [orjson.dumps(r) for r in rows]
    numeric = {"LBSEQ", "LBSTRESN"}
    fast = R._json_columns(lines, COLS, numeric)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, _row_path(rows))
    assert fast["LBORRES"].tolist() == ["1", "1.0", "True", "1", "1", None, "2.5", "['x']"]


@pytest.mark.parametrize("bad", [
    ["S-1", 1, "x"],                    # too few values
    {"USUBJID": "S-1"},                 # not a list
    ["S-1", "1", "x", None],            # text in an integer column
    ["S-1", True, "x", None],           # boolean in an integer column
])
def test_fast_path_declines_what_the_row_path_must_judge(bad: object) -> None:
    lines = [orjson.dumps(r) for r in (["S-1", 1, "a", None], bad)]
    assert R._json_columns(lines, COLS, {"LBSEQ", "LBSTRESN"}) is None


def test_fast_path_declines_duplicated_column_names() -> None:
    cols = [*COLS, COLS[0]]
    assert R._json_columns([orjson.dumps(["S", 1, "a", None, "S"])], cols, {"LBSEQ", "LBSTRESN"}) is None


def test_errors_keep_their_row_numbers_across_chunks(tmp_path: Path) -> None:
    rows: list[list[object]] = _rows(25)
    rows[17] = ["S-1", 18, "x"]
    ds = _write(tmp_path / "lb.ndjson", rows, blank_every=4)
    with pytest.raises(InputError, match=r"row 18 has 3 values for 4 columns"):
        list(R.iter_dataset_chunks(ds, chunksize=10))
    rows[17] = ["S-1", "18", "x", None]
    ds = _write(tmp_path / "lb.ndjson", rows)
    with pytest.raises(InputError, match=r"integer column LBSEQ holds a non-number in row 18"):
        list(R.iter_dataset_chunks(ds, chunksize=10))


# ----------------------------------------------------------------------------- writer
def test_fused_splice_equals_per_row_concatenation() -> None:
    rng = random.Random(7)
    n = 2 * W.SPLICE_ROWS + 301

    def part(k: int) -> tuple[np.ndarray, list[str]]:
        texts = [f",p{k}-{j}" if j % 3 else "" for j in range(k)]
        return np.array([rng.randrange(k) for _ in range(n)], dtype=np.intp), texts

    ids = [f"id{i}" for i in range(n)]
    columns: list[object] = ["{", ids, '"', part(3), part(4), part(n // 2), part(2), part(5), "}\n"]
    keep = [rng.random() > 0.1 for _ in range(n)]

    def text(col: object, i: int) -> str:
        if isinstance(col, str):
            return col
        if isinstance(col, list):
            return str(col[i])
        codes, texts = col  # type: ignore[misc]
        return str(texts[codes[i]])

    naive = "".join("".join(text(c, i) for c in columns) for i in range(n) if keep[i])
    blocks, m = W._splice(columns, keep)
    assert m == sum(keep)
    assert "".join(blocks) == naive
    # parts with few combinations were fused, the one with n/2 codes was not
    fused = W._fuse([c if not isinstance(c, str) else (np.zeros(n, dtype=np.intp), [c]) for c in columns], n)
    assert len(fused) == 5


def test_splice_of_no_rows() -> None:
    blocks, m = W._splice(["{", [], (np.zeros(0, dtype=np.intp), []), "}\n"], [])
    assert (list(blocks), m) == ([], 0)


def _msg_copy(tmp_path: Path, form: str) -> Path:
    """The MSG sample with LB and VS as Dataset-JSON ``form`` only (ndjson written from the json)."""
    src = shared_path("dataset_json", "examples", "sdtm")
    dst = tmp_path / f"msg-{form}"
    dst.mkdir()
    for p in src.iterdir():
        if p.stem in ("lb", "vs") and p.suffix != ".json":
            continue
        if p.stem in ("lb", "vs") and form == "ndjson":
            doc = orjson.loads(p.read_bytes())
            rows = doc.pop("rows")
            (dst / f"{p.stem}.ndjson").write_bytes(b"\n".join([orjson.dumps(doc)] + [orjson.dumps(r) for r in rows])
                                                   + b"\n")
            continue
        shutil.copy(p, dst / p.name)
    return dst


def _observations(folder: Path, out: Path, chunksize: int) -> bytes:
    W.convert_sdtm_to_fhir(folder, out, report=ConversionReport(), chunksize=chunksize,
                           options=SimpleNamespace(fhir_version="R5", extra={"ndjson": True}))
    return (out / "Observation.ndjson").read_bytes()


def test_findings_do_not_depend_on_chunks_or_form(tmp_path: Path) -> None:
    as_json = _msg_copy(tmp_path, "json")
    as_ndjson = _msg_copy(tmp_path, "ndjson")
    whole = _observations(as_json, tmp_path / "a", 100_000)
    assert whole.count(b"\n") > 100
    assert _observations(as_json, tmp_path / "b", 7) == whole
    assert _observations(as_ndjson, tmp_path / "c", 100_000) == whole
    assert _observations(as_ndjson, tmp_path / "d", 13) == whole


@pytest.mark.parametrize("values", [[], [None] * 5, [None, "a", None], [None, None, "a"], ["a", None], [None, 1.0, None]])
def test_factorize_of_absent_columns_as_of_any_other(values: list[object]) -> None:
    from trialbridge.fhir import subject_terms as T
    codes, distinct = T.factorize(values)
    ref_codes, uniq = pd.factorize(pd.Series(values, dtype=object))
    assert distinct == [*uniq.tolist(), None]
    assert codes.tolist() == np.where(ref_codes < 0, len(uniq), ref_codes).tolist()
    assert T.take(distinct, codes) == values


def test_num_texts_once_per_distinct_value_as_num_text() -> None:
    from trialbridge.fhir import subject_terms as T
    vals = [1.0, 2.0, -0.0, 0.0, float("nan"), 1.5, 2.0**53, 2.0**60, -3.0, float("inf"), 1e-7, 123456789012.0] * 2
    df = pd.DataFrame({"LBSEQ": np.array(vals, dtype=np.float64)})
    assert W._num_texts(df, "LBSEQ") == [T.num_text(v) for v in vals]


def test_distinct_first_rows_in_first_seen_order() -> None:
    rng = random.Random(3)
    for n, k in ((1, 1), (50, 3), (2000, 40)):
        cols = [[rng.choice([None, *range(k)]) for _ in range(n)],
                [rng.choice(["a", "b", None]) for _ in range(n)], [rng.random() < 0.5 for _ in range(n)]]
        for width in (1, 2, 3):
            codes, first, count = W._distinct(cols[:width])
            keys = list(zip(*cols[:width], strict=True))
            seen: dict[object, int] = {}
            for i, key in enumerate(keys):
                seen.setdefault(key, i)
            assert sorted(first) == sorted(seen.values())
            assert [keys[i] for i in first] == [keys[i] for i in sorted(first, key=lambda i: codes[i])]
            assert count.tolist() == [sum(1 for key in keys if key == keys[i]) for i in first]
            if width > 1:
                assert first == sorted(seen.values())       # the order the builders (and report) rely on


def test_errors_of_a_streamed_domain_name_the_dataset_row(tmp_path: Path) -> None:
    from test_sdtm_to_fhir import DM, LB, _write_folder
    lb = pd.concat([LB] * 4, ignore_index=True)
    lb["LBSEQ"] = list(range(1, 13))
    lb.loc[10, "LBSEQ"] = 2                       # row 11 repeats the key of row 2, in the third chunk
    folder = _write_folder(tmp_path, dm=DM, lb=lb)
    opts = SimpleNamespace(fhir_version="R5", extra={})
    with pytest.raises(InputError, match=r"duplicated key USUBJID/LBSEQ in dataset LB \(row 11\)"):
        W.convert_sdtm_to_fhir(folder, tmp_path / "out", report=ConversionReport(), chunksize=5, options=opts)
    lb["LBSEQ"] = list(range(1, 13))
    lb.loc[7, "LBTESTCD"] = ""
    shutil.rmtree(folder)
    folder = _write_folder(tmp_path, dm=DM, lb=lb)
    with pytest.raises(InputError, match=r"required variable LBTESTCD is empty in row 8"):
        W.convert_sdtm_to_fhir(folder, tmp_path / "out", report=ConversionReport(), chunksize=5, options=opts)


def test_id_log_finds_exactly_the_first_repeat_as_a_set_of_ids_would() -> None:
    """IdLog keeps ids as int64 keys (head code << 32 | integer --SEQ) in sorted runs, other ids as text:
    over many chunks it must name the same first repeated row as a plain set of the id strings."""
    import random

    from trialbridge.fhir.subject_writer import IdLog
    rnd = random.Random(11)
    heads_pool = [f"lb-ST-S{i}-" for i in range(30)]
    seq_pool: list[str | None] = [str(i) for i in range(1, 400)] + ["01", "1.5", None, "0", "4294967296"]
    for trial in range(60):
        log, seen, found = IdLog(), set(), None
        for chunk in range(8):
            n = rnd.randint(1, 300)
            heads = [rnd.choice(heads_pool) for _ in range(n)]
            # mostly fresh (head, seq) pairs; now and then an old or in-chunk repeat
            seqs = [rnd.choice(seq_pool) if rnd.random() < 0.02 * (trial % 5) else str(1000 + chunk * 1000 + i)
                    for i in range(n)]
            ids = [h + (s or "") for h, s in zip(heads, seqs, strict=True)]
            want = None
            local: set[str] = set()
            for i, rid in enumerate(ids):
                if rid in seen or rid in local:
                    want = i
                    break
                local.add(rid)
            got = log.first_repeat(heads, seqs, ids)
            assert got == want, (trial, chunk)
            if want is not None:
                found = want
                break
            seen |= local
        assert trial % 5 != 0 or found is None
    # memory: one int64 per integer-keyed id, whatever the id's length
    log = IdLog()
    ids = [f"lb-STUDY-SUBJECT-{i % 1000:04d}-{i}" for i in range(200_000)]
    assert log.first_repeat([i.rsplit("-", 1)[0] + "-" for i in ids], [i.rsplit("-", 1)[1] for i in ids], ids) is None
    assert sum(r.nbytes for r in log.runs) == 8 * 200_000 and not log.texts
