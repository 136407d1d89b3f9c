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

import msgspec
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
from trialbridge.subject.domains import _findings as F

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


# ----------------------------------------------------------------------------- FHIR -> SDTM: typed NDJSON
_UCUM, _LOINC = "http://unitsofmeasure.org", "http://loinc.org"
_NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"


def _obs_line(i: int, **kw: object) -> bytes:
    """A benchmark-like Observation line; ``kw`` replaces (None: removes) top-level elements."""
    base: dict[str, object] = {
        "resourceType": "Observation", "id": f"o{i}", "meta": {"versionId": "1"}, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory" if i % 3 else "vital-signs"}]}],
        "code": {"coding": [{"system": _LOINC, "code": "2345-7" if i % 3 else "8867-4"}], "text": "x"},
        "subject": {"reference": f"Patient/p{i % 4}"}, "effectiveDateTime": "2024-02-10T08:36:00+01:00",
        "valueQuantity": {"value": 105.94 if i % 2 else 118, "unit": "mg/dL", "system": _UCUM, "code": "mg/dL"},
        "referenceRange": [{"low": {"value": 50, "unit": "mg/dL", "system": _UCUM, "code": "mg/dL"},
                            "high": {"value": 300.0, "unit": "mg/dL", "system": _UCUM, "code": "mg/dL"}}],
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                        "code": "N"}]}]}
    base.update(kw)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def _awkward_lines() -> list[bytes]:
    q = {"value": 1, "system": _UCUM, "code": "mg/dL"}
    lines = [_obs_line(i) for i in range(6)] + [
        _obs_line(10, encounter={"reference": "Encounter/e1", "display": "visit"}),
        # numbers: int/float kept apart, exponents, -0.0; integers beyond 64 bits (orjson: float)
        *[_obs_line(20).replace(b'"value":118', b'"value":' + t) for t in (
            b"118.0", b"1e2", b"1E5", b"-0.0", b"-0", b"2.2250738585072011e-308", b"9223372036854775807",
            b"9223372036854775808", b"-9223372036854775809", b"123456789012345678901234567890",
            b"1.00000000000000011102230246251565404236316680908203125", b"1e400", b"NaN", b"Infinity",
            b'"NaN"', b'"118"', b"true", b"null")],
        # unknown keys, at the top and nested; extensions and modifier extensions at any level
        _obs_line(30, foo=1), _obs_line(31, valueQuantity={**q, "foo": 1}),
        _obs_line(32, code={"coding": [{"system": _LOINC, "code": "2345-7", "extension": [{"url": "u"}]}]}),
        _obs_line(33, referenceRange=[{"low": q, "modifierExtension": [{"url": "m"}]}]),
        _obs_line(34, modifierExtension=[{"url": "http://example.org/m"}]),
        _obs_line(35, extension=[{"url": "http://example.org/e", "valueString": "x"}]),
        _obs_line(36, _effectiveDateTime={"extension": [{"url": "http://example.org/e"}]}),
        _obs_line(37, _status={"id": "s"}), _obs_line(38, meta={"versionId": "2", "extension": []}),
        # unread elements (counted by subject.unread), narrative, R5 elements
        _obs_line(40, issued="2024-01-01T00:00:00Z", note=[{"text": "n"}], performer=[{"reference": "P/1"}]),
        _obs_line(41, text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">é</div>"}),
        _obs_line(42, triggeredBy=[{"type": "reflex"}], valueRange={"low": q}, bodyStructure={"reference": "B/1"}),
        _obs_line(43, issued="x", _issued={"extension": []}),
        # shapes for the row extractor: components, panels, other value[x], data absent, specimen, body site
        _obs_line(50, valueQuantity=None, component=[{"code": {"coding": [{"system": _LOINC, "code": "8480-6"}]},
                                                      "valueQuantity": {"value": 120, "code": "mm[Hg]", "system": _UCUM}}]),
        _obs_line(51, valueQuantity=None, hasMember=[{"reference": "Observation/o1"}]),
        _obs_line(52, valueQuantity=None, valueString="positive"), _obs_line(53, valueQuantity=None, valueInteger=3),
        _obs_line(54, valueQuantity=None, dataAbsentReason={"text": "not asked"}, status="cancelled"),
        _obs_line(55, specimen={"reference": "Specimen/s1"}), _obs_line(56, bodySite={"text": "arm"}),
        _obs_line(57, effectiveDateTime=None, effectivePeriod={"start": "2024-02"}),
        _obs_line(58, effectiveDateTime=None, effectiveInstant="2024-02-01T00:00:00Z"),
        # categories: none, several, text only, out of scope; entered-in-error
        _obs_line(60, category=None), _obs_line(61, category=[]),
        _obs_line(62, category=[{"text": "panel"}, {"coding": [{"code": "laboratory"}]}]),
        _obs_line(63, category=[{"coding": [{"code": "survey"}]}]), _obs_line(64, category=[{"text": "t"}]),
        _obs_line(65, category=[{"coding": []}]), _obs_line(66, status="entered-in-error"),
        _obs_line(67, category=[{"coding": [{"code": "laboratory"}, {"code": "vital-signs"}]}]),
        # missing and empty elements
        _obs_line(70, subject=None, meta=None, id=None), _obs_line(71, code=None, status=None),
        _obs_line(72, valueQuantity=None), _obs_line(73, referenceRange=[]), _obs_line(74, referenceRange=[{}]),
        _obs_line(75, referenceRange=[{"text": "1-9"}]),
        _obs_line(76, referenceRange=[{"text": ""}]), _obs_line(86, interpretation=[]),
        _obs_line(77, interpretation=[{"text": "n"}]), _obs_line(78, interpretation=[{"coding": []}]),
        _obs_line(79, effectiveDateTime=""), _obs_line(80, valueQuantity={}), _obs_line(81, code={}),
        _obs_line(82, subject={}), _obs_line(83, meta={}),
        _obs_line(84, referenceRange=[{"low": {"value": 1, "unit": "mg/dL"}, "high": {"code": "", "unit": "u"}}]),
        # limits in two units (the high's own unit, _rhu: the row path), and a range in another unit than the result
        _obs_line(85, referenceRange=[{"low": {"value": 1, "code": "mg/dL"}, "high": {"value": 2, "code": "g/L"}}]),
        _obs_line(87, referenceRange=[{"low": {"value": 1, "unit": "mg/dL"}, "high": {"value": 2, "code": "mg/dL"}}]),
        _obs_line(88, referenceRange=[{"low": {"value": 3.9, "code": "mmol/L"}, "high": {"value": 6, "code": "mmol/L"}}]),
        # nested parts (rule subject.unread-nested): a part no rule reads, items after the first, codings of
        # systems no rule reads
        _obs_line(140, valueQuantity={**q, "id": "v"}), _obs_line(141, referenceRange=[{"low": {**q, "comparator": "<"}}]),
        _obs_line(142, referenceRange=[{"low": q, "type": {"text": "normal"}}]),
        _obs_line(143, referenceRange=[{"low": q}, {"high": q}]), _obs_line(144, interpretation=[{"text": "N"}]),
        _obs_line(145, interpretation=[{"coding": [{"code": "N"}, {"code": "H"}]}]),
        _obs_line(146, interpretation=[{"coding": [{"code": "N"}]}, {"coding": [{"code": "H"}]}]),
        _obs_line(147, interpretation=[{"coding": [{"code": "N", "version": "1"}]}]),
        _obs_line(148, interpretation=[{"coding": [{"code": "N", "display": "Normal", "system": 5}]}]),
        _obs_line(149, code={"coding": [{"system": _LOINC, "code": "2345-7"}, {"system": "http://snomed.info/sct",
                                                                             "code": "1"}]}),
        _obs_line(150, code={"coding": [{"code": "2345-7"}]}),
        _obs_line(151, code={"coding": [{"system": _LOINC, "code": "2345-7", "display": "Glucose", "version": "2.7"}],
                             "text": "Glucose"}),
        _obs_line(152, category=[{"coding": [{"system": "x", "code": "laboratory", "display": "Lab"}], "text": "Lab"}]),
        # interpretation codes of another system than v3-ObservationInterpretation (not read: rule lb.NRIND),
        # on LB (154, 155) and VS (156); a coding without system (157: the binding's system)
        _obs_line(154, interpretation=[{"coding": [{"system": "http://snomed.info/sct", "code": "281302008"}]}]),
        _obs_line(155, interpretation=[{"coding": [{"system": "http://example.org/interp", "code": "H"}]}]),
        _obs_line(156, interpretation=[{"coding": [{"system": "http://snomed.info/sct", "code": "281302008"}]}]),
        _obs_line(157, interpretation=[{"coding": [{"code": "H"}]}]),
        # units: other system, no system, comparator, empty code
        _obs_line(90, valueQuantity={"value": 7, "unit": "mmol/L", "system": "http://example.org/u", "code": "X"}),
        _obs_line(91, valueQuantity={"value": 3, "comparator": "<", "unit": "U/L"}),
        _obs_line(92, valueQuantity={"value": 3, "code": "", "unit": "U/L", "system": _UCUM}),
        # codes: NCIt beside LOINC, a LOINC coding without code before one with, a coding as text
        _obs_line(93, code={"coding": [{"system": _LOINC}, {"system": _NCIT, "code": "C49677"},
                                       {"system": _LOINC, "code": "8867-4", "display": "HR", "userSelected": True}]}),
        _obs_line(94, code={"coding": ["2345-7"]}),
        # wrong JSON types where a dict path reads them
        _obs_line(100, subject="Patient/p1"), _obs_line(101, status=5), _obs_line(102, meta=["1"]),
        _obs_line(103, category={"coding": [{"code": "laboratory"}]}), _obs_line(104, interpretation=["N"]),
        _obs_line(105, valueQuantity="5 mg"), _obs_line(106, meta={"versionId": 3}), _obs_line(107, id=17),
        _obs_line(108, referenceRange=[{"low": 5}]), _obs_line(109, effectiveDateTime=20240101),
        # nulls (FHIR JSON has none: the dict path reads them as given)
        _obs_line(110, encounter=None).replace(b'"subject"', b'"encounter":null,"subject"'),
        _obs_line(111).replace(b'"system":"http://unitsofmeasure.org","code":"mg/dL"}', b'"system":null,"code":"mg/dL"}', 1),
        _obs_line(112).replace(b'"valueQuantity"', b'"note":null,"valueQuantity"'),
        # duplicate keys: the last wins (a second resourceType too)
        _obs_line(120).replace(b'"status":"final"', b'"status":"final","status":"cancelled"'),
        _obs_line(121).replace(b'"id":"o121"', b'"id":"o121","resourceType":"Patient"'),
        _obs_line(122).replace(b'"id":"o122"', b'"id":"o122","resourceType":"Observation"'),
        # non-ASCII, escapes, invalid UTF-8 / lone surrogates / out-of-range numbers in read and unread elements
        _obs_line(130, valueQuantity={"value": 5, "unit": "µmol/L", "code": "umol/L", "system": _UCUM}),
        _obs_line(131).replace(b'"code":"mg/dL"}', b'"code":"\\u00b5g/dL"}', 1),
        _obs_line(132, issued="x").replace(b'"issued":"x"', b'"issued":"\xff"'),
        _obs_line(133).replace(b'"Patient/p1"', b'"Patient/\xc3\x28"'),
        _obs_line(134, issued="x").replace(b'"issued":"x"', b'"issued":"\\ud800"'),
        _obs_line(135, note="x").replace(b'"note":"x"', b'"note":[1e999]'),
        _obs_line(136, note="x").replace(b'"note":"x"', b'"note":' + b"[" * 1100 + b"]" * 1100),
        _obs_line(137).replace(b'"o137"', b'"o\\u0000\\"137"'),
        # not JSON, blank, other spellings of the type, trailing spaces and CRLF
        b'{"resourceType":"Observation","id":"bad",', b"", b"   ", b"[1, 2]",
        b'{ "resourceType" : "Observation", "id": "spaced", "status": "final"}',
        _obs_line(160) + b"  \r", b'{"resourceType":"Patient","id":"p1"}', b'{"id":"no-type"}',
    ]
    return lines


def _extract_ndjson(path: Path | list[Path], typed: bool, chunk: int) -> tuple[object, ...]:
    """Reader + columnar extractor over one NDJSON file, with or without the typed decoder."""
    from itertools import islice

    from trialbridge.subject.base import Ctx
    from trialbridge.subject.domains import _findings as F
    from trialbridge.subject.domains import _obs_json as J
    from trialbridge.subject.reader import ResourceStream, iter_resources

    ctx = Ctx(studyid="S", report=ConversionReport())
    errors: list[tuple[str, int | None, str]] = []
    failed: list[tuple[object, ...]] = []
    # typed: the pipeline's pass 2 (the extractor reads the lines and decodes them); plain: reader items
    decode = J.line_decoder() if typed else None
    assert decode is not None or not typed
    paths = path if isinstance(path, list) else [path]
    stream = ResourceStream(paths, types={"Observation"}, errors=errors, decode_as=("Observation", decode)
                            ) if decode is not None else None
    items = iter_resources(paths, types={"Observation"}, errors=errors)
    got: dict[str, list[list[tuple[object, type]]]] = {"LB": [], "VS": []}
    while True:
        cols, n = F.extract_observation_columns(
            stream.chunk(chunk) if stream is not None else islice(items, chunk), ctx,
            lambda item, exc: failed.append((item.resource.get("id"), item.line, type(item.resource).__name__,
                                             type(exc).__name__)))
        assert n <= chunk
        for dom, c in cols.items():
            assert list(c) == list(F.COLUMNS)
            got[dom] += [[(v, type(v)) for v in row] for row in zip(*[list(c[k]) for k in F.COLUMNS], strict=True)]
        if n < chunk:
            break
    issues = [(i.kind, i.rule, i.message, i.record, i.source) for i in ctx.report.issues]
    # counts (the report sorts them; the dict path counts a set difference, in no set order)
    return got, errors, failed, issues, sorted(ctx.unread.items()), sorted((k, sorted(v.items()))
                                                                            for k, v in ctx.modifiers.items())


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN and -0.0 apart from 0.0 (repr compares both)."""
    return repr(a) == repr(b)


@pytest.mark.parametrize("chunk", [7, 100_000])
def test_typed_ndjson_path_gives_the_plain_paths_rows(tmp_path: Path, chunk: int) -> None:
    """Bulk NDJSON Observations decoded by the typed decoder (msgspec) give exactly what orjson + the dict
    path give: rows (values and Python types, order, provenance line numbers), reader errors, issues,
    unread counts and modifier extensions, on awkward lines."""
    from trialbridge.subject.domains import _obs_json as J
    lines = _awkward_lines()
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    plain, typed = _extract_ndjson(path, False, chunk), _extract_ndjson(path, True, chunk)
    assert _same(typed, plain)
    rows, errors, failed, issues, unread_counts, modifiers = plain
    assert len(rows["LB"]) > 40 and len(rows["VS"]) > 5 and errors and failed and issues
    assert {("Observation", "text", "narrative"), ("Observation", "issued", "unread")} <= dict(unread_counts).keys()
    assert modifiers
    # the typed decoder took the usual lines and refused the others (else the test proves nothing)
    decode = J.line_decoder()
    assert decode is not None

    def took(line: bytes) -> bool:
        # decoded, and (a wide line) its unread elements, kept as raw JSON, read by orjson too
        try:
            res = decode(line)
        except Exception:  # noqa: BLE001
            return False
        if type(res) is J.ObservationWide:
            raw = msgspec.structs.astuple(res)[len(J.READ):]
            return F._orjson_reads([(k, x) for k, x in zip(J.UNREAD_ELEMENTS, raw, strict=True)
                                    if x is not msgspec.UNSET])
        return True
    verdicts = [took(x) for x in lines]
    assert sum(verdicts) > 50 and verdicts.count(False) > 40
    for i, v in ((30, False), (31, False), (32, False), (33, False), (34, False), (36, False), (40, True),
                 (41, True), (50, False), (60, True), (100, False), (111, False), (121, False), (132, False),
                 (134, False), (135, False), (136, False), (140, False), (141, False), (142, False),
                 (143, True), (144, False), (145, True), (147, False), (148, False), (149, True), (151, True),
                 (154, True), (157, True)):
        # (148: a number where FHIR has a uri, in an interpretation coding's system: the decoder types every
        # rendering it does not read strictly, so that floats, kept as their JSON text, occur only where
        # results are read; the dict path reads that line)
        assert took(next(x for x in lines if f'"o{i}"'.encode() in x or f'"id":"o{i}"'.encode() in x)) is v, i


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_typed_stream_over_several_inputs_gives_the_plain_paths_rows(tmp_path: Path, chunk: int) -> None:
    """The stream pass 2 reads with the typed decoder, over Bulk files, a mixed NDJSON file, a Bundle,
    a file of a type not wanted and empty files, chunks ending anywhere (inside a file, at its end,
    on an error line): the same rows, line numbers, errors and issues as the plain reader's items."""
    lines = _awkward_lines()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "Observation.ndjson").write_bytes(b"\n".join(lines[:60]) + b"\n")
    (folder / "Observation-2.ndjson").write_bytes(b"\n".join(lines[60:]))     # no final newline
    (folder / "Observation-3.ndjson").write_bytes(b"")
    (folder / "Patient.ndjson").write_bytes(b'{"resourceType":"Patient","id":"p1"}\nnot json\n')
    (folder / "mixed.ndjson").write_bytes(b'{"resourceType":"Patient","id":"p2"}\n' + _obs_line(200) + b"\n\n"
                                          + b"not json\n" + _obs_line(201, status="entered-in-error") + b"\n")
    (folder / "zbundle.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": orjson.loads(_obs_line(i))} for i in (300, 301, 302)]}))
    paths = [folder / "mixed.ndjson", folder]
    plain, typed = _extract_ndjson(paths, False, chunk), _extract_ndjson(paths, True, chunk)
    assert _same(typed, plain)
    rows, errors, failed, issues, _, _ = plain
    files = {r[-2][0] for dom in rows.values() for r in dom}
    assert files == {"mixed.ndjson", "Observation.ndjson", "Observation-2.ndjson", "zbundle.json"}
    assert errors and failed and issues


def test_typed_ndjson_path_on_mutated_observations(tmp_path: Path) -> None:
    """Random mutations of the usual line (elements dropped, retyped, nulled, nested extras, unread
    elements added): typed and plain paths agree, and both paths are exercised."""
    rng = random.Random(17)
    values: list[object] = [None, "", "x", 0, 1, 1.5, -0.0, True, [], {}, [{}], {"x": 1}, [1], "laboratory",
                            {"coding": [{"code": "laboratory"}]}, {"reference": "Patient/p9"}, 2**63]
    lines = []
    for i in range(1500):
        res = orjson.loads(_obs_line(i))
        for _ in range(rng.randint(0, 3)):
            k = rng.choice(sorted(set(res) - {"resourceType"}))   # (a non-text type is the reader's concern)
            what = rng.random()
            if what < 0.25:
                res.pop(k)
            elif what < 0.5:
                res[k] = rng.choice(values)
            elif what < 0.7 and isinstance(res[k], dict):
                res[k][rng.choice(["value", "code", "system", "unit", "reference", "coding", "extra", "id"])] = \
                    rng.choice(values)
            elif what < 0.85 and isinstance(res[k], list) and res[k] and isinstance(res[k][0], dict):
                res[k][0][rng.choice(["coding", "low", "high", "text", "extension", "x"])] = rng.choice(values)
            else:
                res[rng.choice(["issued", "note", "text", "focus", "modifierExtension", "valueString"])] = \
                    rng.choice(values)
        lines.append(orjson.dumps(res))
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    plain, typed = _extract_ndjson(path, False, 500), _extract_ndjson(path, True, 500)
    assert _same(typed, plain)
    rows, _, failed, _, unread_counts, _ = plain
    assert len(rows["LB"]) + len(rows["VS"]) > 700 and failed and unread_counts
    from trialbridge.subject.domains import _obs_json as J
    kinds = []
    for line in lines:
        decode = J.line_decoder()    # a fresh one: it tries first the form the previous line needed
        assert decode is not None
        try:
            kinds.append(type(decode(line)).__name__)
        except Exception:  # noqa: BLE001
            kinds.append("refused")
    assert min(kinds.count(k) for k in ("Observation", "ObservationWide", "refused")) > 100


def test_typed_observation_declares_every_element_once() -> None:
    """The typed Observation reads only elements read_elements.yaml lists as read; its wide form adds
    exactly the other R4/R5 Observation elements, except those that take the row extractor and
    modifierExtension (a line with one of those is refused by the decoder)."""
    from fhir.resources.observation import Observation as R5
    from fhir.resources.R4B.observation import Observation as R4
    from trialbridge.subject import unread
    from trialbridge.subject.domains import _findings as F
    from trialbridge.subject.domains import _obs_json as J
    read = unread.read_elements("Observation")
    assert set(J.READ) <= read
    assert not set(J.UNREAD_ELEMENTS) & read
    assert not set(J.READ) & F.RARE_ELEMENTS
    every = set(R5.elements_sequence()) | set(R4.elements_sequence())
    assert every - {"modifierExtension"} - F.RARE_ELEMENTS == (set(J.READ) | set(J.UNREAD_ELEMENTS)) - {"resourceType"}
    assert J.ObservationWide.__struct_fields__ == J.READ + J.UNREAD_ELEMENTS
    # nested: exactly the parts rule subject.unread-nested lists as read
    assert set(J.Quantity.__struct_fields__) == F.QUANTITY_PARTS
    assert set(J.Limit.__struct_fields__) == F.LIMIT_PARTS
    assert set(J.ReferenceRange.__struct_fields__) == F.RANGE_PARTS
    assert set(J.Interpretation.__struct_fields__) == F.INTERP_PARTS
    assert set(J.InterpretationCoding.__struct_fields__) == F.CODING_PARTS
    assert J.ObservationWide.__struct_config__.forbid_unknown_fields
    # the one unit system the typed quantity and limits admit
    import typing

    from trialbridge.subject import units
    assert typing.get_args(J.UcumSystem) == (units.UCUM_SYSTEM,)


def test_typed_decoder_stands_aside_under_a_raised_recursion_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec nests as deep as the recursion limit allows, orjson 1024 levels: above that limit every
    line takes the orjson path."""
    import sys

    from trialbridge.subject.domains import _obs_json as J
    monkeypatch.setattr(sys, "getrecursionlimit", lambda: 5000)
    assert J.line_decoder() is None


def test_typed_decoder_tries_first_the_form_the_last_line_needed() -> None:
    from trialbridge.subject.domains import _obs_json as J
    decode = J.line_decoder()
    assert decode is not None
    usual, wide = _obs_line(1), _obs_line(2, issued="2024-01-01T00:00:00Z")
    assert type(decode(usual)) is J.Observation
    assert type(decode(wide)) is J.ObservationWide
    kinds = [type(decode(usual)) for _ in range(J.RETRY_NARROW)]
    assert kinds == [J.ObservationWide] * (J.RETRY_NARROW - 1) + [J.Observation]
    assert type(decode(usual)) is J.Observation
    with pytest.raises(Exception):   # noqa: B017 (whatever msgspec raises: the reader falls back)
        decode(_obs_line(3, component=[]))


def test_typed_ndjson_path_on_real_observations(tmp_path: Path) -> None:
    """Synthea's Bulk NDJSON Observations and the official R4/R5 example Observations as NDJSON lines:
    typed and plain paths agree (most Synthea lines are decoded typed, with unread elements)."""
    from trialbridge.subject.domains import _obs_json as J
    lines = shared_path("fhir", "synthea_ndjson_1_patient_ktmtwm", "Observation.ndjson").read_bytes().splitlines()
    for release in ("hl7.fhir.r4.examples-4.0.1", "hl7.fhir.r5.examples-5.0.0"):
        for f in sorted(shared_path("fhir", release).glob("Observation-*.json")):
            lines.append(orjson.dumps(orjson.loads(f.read_bytes())))
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    plain, typed = _extract_ndjson(path, False, 50), _extract_ndjson(path, True, 50)
    assert _same(typed, plain)
    rows = plain[0]
    assert len(rows["LB"]) > 30 and len(rows["VS"]) > 100
    decode = J.line_decoder()
    assert decode is not None
    kinds = []
    for line in lines:
        try:
            kinds.append(type(decode(line)))
        except Exception:  # noqa: BLE001
            kinds.append(None)
    assert kinds.count(J.ObservationWide) > 100 and kinds.count(None) > 20
