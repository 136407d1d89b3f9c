"""Read a folder of SDTM datasets: SAS XPT v5, Dataset-JSON 1.1 (JSON and NDJSON) and CSV.

Every dataset becomes one pandas DataFrame with SDTM-shaped columns: Char variables as strings with
``None`` for missing (XPT blanks and Dataset-JSON ``""`` alike), Num variables as float64 with NaN.
A ``define.xml`` beside the datasets, when present, gives labels and the Num/Char typing of CSV
columns (minimal: ItemGroupDef/ItemRef/ItemDef names, labels and DataType).

Which files are datasets, and which form of a dataset present in several forms (``lb.json``,
``lb.ndjson``, ``lb.xpt``) is read, is decided by :mod:`.files` (json, ndjson, xpt, csv); the others are
reported as ignored. XPT is read by :func:`.files.read_dataset_file` (Windows-1252 fallback reported).
Dataset-JSON and CSV are read here in chunks by :func:`iter_dataset_chunks` (memory does not grow with
the input), with the Dataset-JSON structure checks and the define.xml typing of CSV this reader adds.
Dataset-JSON NDJSON rows are parsed straight into columns a few thousand lines at a time
(:func:`_json_columns`); a chunk with anything to report goes row by row instead.

Bad input is an :class:`~trialbridge.errors.InputError` naming the dataset file, the row and the
variable: unreadable XPT, Dataset-JSON that breaks its schema, text in a numeric column.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..errors import InputError
from ..report import ConversionReport, Kind, Severity
from ..safeio import parse_xml, read_bytes
from . import files
from .files import DatasetFile

__all__ = ["DatasetFile", "DefineInfo", "SdtmFolder", "find_datasets", "iter_dataset_chunks", "read_dataset",
           "read_define", "read_sdtm_folder"]

NUMERIC_DATATYPES = frozenset({"integer", "float", "double", "decimal"})
DATASET_JSON_TYPES = frozenset({"string", "integer", "float", "double", "decimal", "boolean",
                                "datetime", "date", "time", "URI"})
# Num variables by SDTM naming when neither the file nor define.xml types a CSV column
# (SDTMIG 3.4 section 4: --SEQ, --DY, --STRESN, ... are Num).
_NUM_SUFFIXES = ("SEQ", "DY", "STDY", "ENDY", "STRESN", "STNRLO", "STNRHI", "DOSE", "DOSTOT",
                 "TPTNUM", "REPNUM", "GRPID_N")
_NUM_NAMES = frozenset({"VISITNUM", "VISITDY", "AGE", "TAETORD", "TSSEQ"})


def schema_numeric(dataset: str) -> set[str]:
    """The Num variables of a domain schemas/sdtm knows (its own and its general observation class
    variables); empty for other datasets, which fall back to :func:`is_numeric_name`."""
    from .metadata import load_domain
    try:
        return {v.name for v in load_domain(dataset).variables if v.type == "Num"}
    except (KeyError, FileNotFoundError):
        return set()


def is_numeric_name(name: str) -> bool:
    if name in _NUM_NAMES:
        return True
    return len(name) > 2 and name[2:] in _NUM_SUFFIXES and name[2:] != "GRPID_N"


@dataclass
class DefineInfo:
    labels: dict[str, dict[str, str]] = field(default_factory=dict)     # dataset -> var -> label
    numeric: dict[str, set[str]] = field(default_factory=dict)          # dataset -> Num vars


@dataclass
class SdtmFolder:
    folder: Path
    files: dict[str, DatasetFile]
    define: DefineInfo | None
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def get(self, name: str) -> pd.DataFrame | None:
        return self.frames.get(name.upper())


# ----------------------------------------------------------------------------- discovery
def find_datasets(folder: Path, report: ConversionReport | None = None) -> dict[str, DatasetFile]:
    """One file per dataset (:func:`.files.find_datasets`); the other forms are reported."""
    found = files.find_datasets(folder)
    ignored = [p.name for ds in found.values() for p in ds.other_forms]
    if report is not None and ignored:
        order = " > ".join(f".{f}" for f in files.FORMS)
        report.add(Kind.UNMAPPED_SOURCE, f"{len(ignored)} file(s) hold a dataset also present in a preferred "
                   f"form ({order}) and were not read: " + ", ".join(ignored[:12])
                   + (" ..." if len(ignored) > 12 else ""), file=str(folder), severity=Severity.INFO)
    return found


def read_define(folder: Path) -> DefineInfo | None:
    """Labels and Num typing from a define.xml beside the datasets (Define 1.0, 2.0, 2.1)."""
    path = folder / "define.xml"
    if not path.exists():
        return None
    root = parse_xml(read_bytes(path), file=str(path))
    items: dict[str, tuple[str, str, str]] = {}    # OID -> (Name, label, DataType)
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.endswith("}ItemDef"):
            label = el.get("{http://www.cdisc.org/ns/def/v1.0}Label") or ""
            for t in el.iter():
                if isinstance(t.tag, str) and t.tag.endswith("}TranslatedText") and t.text:
                    label = t.text.strip()
                    break
            items[el.get("OID", "")] = (el.get("Name", ""), label, el.get("DataType", ""))
    info = DefineInfo()
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.endswith("}ItemGroupDef"):
            ds = (el.get("Name") or "").upper()
            labels, nums = info.labels.setdefault(ds, {}), info.numeric.setdefault(ds, set())
            for ref in el:
                if isinstance(ref.tag, str) and ref.tag.endswith("}ItemRef"):
                    name, label, dtype = items.get(ref.get("ItemOID", ""), ("", "", ""))
                    if name:
                        labels[name] = label
                        if dtype in NUMERIC_DATATYPES:
                            nums.add(name)
    return info


# ----------------------------------------------------------------------------- normalising
def _normalise(df: pd.DataFrame, numeric: set[str], *, file: str, row_offset: int = 0) -> pd.DataFrame:
    """Char -> object strings with None for blank; Num -> float64 (text there is an InputError)."""
    out: dict[str, Any] = {}
    for col in df.columns:
        s = df[col]
        if col in numeric:
            if s.dtype.kind in "fiu":
                out[col] = s.astype("float64")
                continue
            if s.dtype.kind == "b":
                raise InputError("boolean in a numeric variable", file=file, field=col)
            if s.dtype == object and _types(s.to_numpy()) <= _NUMBER_TYPES:
                # numbers (JSON) and missing only: one conversion, no per-cell work
                out[col] = pd.Series(np.array(s.to_numpy(), dtype=np.float64), index=df.index)
                continue
            text = s.astype("object")
            blank = text.isna() | (text.map(lambda v: isinstance(v, str) and not v.strip(), na_action="ignore")
                                   .fillna(False).astype(bool))
            num = pd.to_numeric(text.where(~blank), errors="coerce")
            bad = num.isna() & ~blank
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(f"text in numeric variable {col} (row {row_offset + i + 1})", file=file,
                                 record=f"row {row_offset + i + 1}", field=col)
            out[col] = num.astype("float64")
        else:
            if s.dtype.kind in "fiu":
                # a Char variable typed numeric by the source: keep the text form of integers
                s = s.map(_num_text, na_action="ignore")
            arr = s.to_numpy(dtype=object, na_value=None)
            out[col] = pd.Series(_clean_text(arr), index=df.index, dtype=object)
    return pd.DataFrame(out, index=df.index)


_NUMBER_TYPES = frozenset({int, float, type(None)})
_TEXT_TYPES = frozenset({str, type(None)})


def _types(arr: Iterable[Any]) -> set[type]:
    return set(map(type, arr))


def _clean_text(arr: np.ndarray, shared: dict[Any, Any] | None = None) -> np.ndarray:
    """Strings right-stripped, blanks and missing as None (once per distinct value). With ``shared``
    (text -> the object standing for it), equal texts of several calls become one object."""
    # the types of the distinct values are those of the column (a str equals no other type);
    # anything but text goes value by value, where 1, 1.0 and True stay apart
    try:
        codes, uniq = pd.factorize(arr)        # None, NaN -> -1
        distinct = uniq.tolist()
        text = _types(distinct) <= _TEXT_TYPES
    except TypeError:                          # unhashable: a JSON list or object in a cell
        text = False
    if text:
        cleaned = np.empty(len(distinct) + 1, dtype=object)
        texts = [v.rstrip() or None for v in distinct]
        cleaned[:] = ([shared.setdefault(t, t) for t in texts] if shared is not None else texts) + [None]
        return cleaned[codes]
    out = np.empty(len(arr), dtype=object)
    for i, v in enumerate(arr):
        if isinstance(v, str):
            v = v.rstrip()
            out[i] = v or None
        elif v is None or (isinstance(v, float) and v != v):
            out[i] = None
        else:
            out[i] = str(v)
    return out


def _num_text(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def _check_dataset_json_meta(meta: Any, file: str) -> list[dict[str, Any]]:
    """The parts of the Dataset-JSON 1.1 schema a reader depends on (exact messages are tested)."""
    if not isinstance(meta, dict):
        raise InputError("not Dataset-JSON: top level is not an object", file=file)
    for key in ("datasetJSONCreationDateTime", "datasetJSONVersion", "itemGroupOID", "records",
                "name", "label", "columns"):
        if key not in meta:
            raise InputError(f"not Dataset-JSON 1.1: required attribute '{key}' missing", file=file)
    cols = meta["columns"]
    if not isinstance(cols, list) or not cols:
        raise InputError("not Dataset-JSON 1.1: 'columns' is not a non-empty list", file=file)
    for i, c in enumerate(cols):
        if not isinstance(c, dict) or not all(k in c for k in ("itemOID", "name", "label", "dataType")):
            raise InputError(f"not Dataset-JSON 1.1: column {i + 1} lacks itemOID/name/label/dataType",
                             file=file)
        if c["dataType"] not in DATASET_JSON_TYPES:
            raise InputError(f"not Dataset-JSON 1.1: column {c['name']} has dataType "
                             f"{c['dataType']!r}", file=file, field=str(c["name"]))
    if not isinstance(meta["records"], int) or meta["records"] < 0:
        raise InputError("not Dataset-JSON 1.1: 'records' is not a non-negative integer", file=file)
    return cols


def _read_lines(fh: Any, n: int) -> list[bytes]:
    """The next ``n`` non-blank lines of ``fh`` (fewer at its end)."""
    lines = list(islice(fh, n))
    if any(map(bytes.isspace, lines)):     # (a line from a file is never empty)
        lines = [line for line in lines if line.strip()]
    while len(lines) < n:
        more = [line for line in islice(fh, n - len(lines)) if line.strip()]
        if not more:
            break
        lines += more
    return lines


PARSE_ROWS = 4096   # rows parsed and turned into columns at a time: their objects stay in cache


def _json_columns(lines: list[bytes], cols: list[dict[str, Any]], numeric: set[str]) -> pd.DataFrame | None:
    """Dataset-JSON NDJSON row lines -> the normalised DataFrame, column by column (the fast path).

    Parsed :data:`PARSE_ROWS` lines at a time, each block turned into columns at once (its values
    still in cache) and its text cleaned once per distinct value; equal texts share one object over
    the chunk. Only for rows that :func:`_json_rows` and :func:`_normalise` take without a word:
    lists of the right length, numbers (or null) in numeric columns, distinct column names.
    Anything else returns None and the chunk goes row by row, where the exact error is raised.
    Same result as ``_normalise(_json_rows(...))``, without a row-wise object frame.
    """
    names = [c["name"] for c in cols]
    if not lines or len(set(names)) != len(names):
        return None
    width = len(names)
    is_num = [name in numeric for name in names]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    shared: list[dict[Any, Any]] = [{} for _ in names]
    loads = orjson.loads
    for start in range(0, len(lines), PARSE_ROWS):
        rows = list(map(loads, lines[start:start + PARSE_ROWS]))
        if _types(rows) != {list} or set(map(len, rows)) != {width}:
            return None
        for j, values in enumerate(zip(*rows, strict=True)):
            if is_num[j]:
                if not _types(values) <= _NUMBER_TYPES:
                    return None
                parts[j].append(np.array(values, dtype=np.float64))
            else:
                parts[j].append(_clean_text(np.fromiter(values, dtype=object, count=len(values)), shared[j]))
    return pd.DataFrame({name: np.concatenate(p) if num else pd.Series(np.concatenate(p), dtype=object, copy=False)
                         for name, num, p in zip(names, is_num, parts, strict=True)}, copy=False)


def _json_rows(rows: list[Any], cols: list[dict[str, Any]], *, file: str, offset: int) -> pd.DataFrame:
    n = len(cols)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n:
            got = len(row) if isinstance(row, list) else "no list of"
            raise InputError(f"row {offset + i + 1} has {got} values for {n} columns", file=file,
                             record=f"row {offset + i + 1}")
    names = [c["name"] for c in cols]
    df = pd.DataFrame(rows, columns=names, dtype=object) if rows else pd.DataFrame(columns=names, dtype=object)
    for c in cols:
        if c["dataType"] in NUMERIC_DATATYPES:
            s = df[c["name"]]
            if _types(s.to_numpy()) <= _NUMBER_TYPES:
                continue
            bad = s.map(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))))
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(f"{c['dataType']} column {c['name']} holds a non-number in row "
                                 f"{offset + i + 1}", file=file, record=f"row {offset + i + 1}",
                                 field=c["name"])
    return df


# ----------------------------------------------------------------------------- readers
def iter_dataset_chunks(ds: DatasetFile, *, chunksize: int = 100_000, define: DefineInfo | None = None,
                        report: ConversionReport | None = None) -> Iterator[pd.DataFrame]:
    """The dataset in chunks of ``chunksize`` rows, normalised (see module docstring)."""
    file = str(ds.path)
    if ds.form == "xpt":
        yield from _iter_xpt(ds, chunksize, file, report)
        return
    if ds.form in ("json", "ndjson"):
        yield from _iter_dataset_json(ds, chunksize, file)
        return
    numeric = set(define.numeric.get(ds.name, set())) if define else set()
    try:
        reader = pd.read_csv(ds.path, dtype=str, keep_default_na=False, chunksize=chunksize,
                             encoding="utf-8")
        offset = 0
        schema_num = schema_numeric(ds.name)
        for chunk in reader:
            num = numeric or schema_num or {c for c in chunk.columns if is_numeric_name(c)}
            yield _normalise(chunk, num & set(chunk.columns), file=file, row_offset=offset)
            offset += len(chunk)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"not a readable CSV dataset ({type(exc).__name__}: {exc})", file=file) from None


def _iter_xpt(ds: DatasetFile, chunksize: int, file: str,
              report: ConversionReport | None) -> Iterator[pd.DataFrame]:
    # a transport file is decoded whole (its encoding is only known once every value decoded);
    # only the normalised copy is made chunk by chunk
    df, meta = files.read_dataset_file(ds.path, report)
    numeric = {c.name for c in meta.columns if c.sas_type == "Num"}
    for start in range(0, max(len(df), 1), chunksize):
        part = df.iloc[start:start + chunksize].reset_index(drop=True)
        yield _normalise(part, numeric, file=file, row_offset=start)


def _iter_dataset_json(ds: DatasetFile, chunksize: int, file: str) -> Iterator[pd.DataFrame]:
    try:
        fh = open(ds.path, "rb")  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=file) from None
    with fh:
        try:
            if ds.form == "ndjson":
                first = fh.readline()
                meta = orjson.loads(first)
                cols = _check_dataset_json_meta(meta, file)
                numeric = {c["name"] for c in cols if c["dataType"] in NUMERIC_DATATYPES}
                offset = 0
                while True:
                    lines = _read_lines(fh, chunksize)
                    if not lines and offset:
                        break
                    df = _json_columns(lines, cols, numeric)
                    if df is None:   # something to report: the row-by-row path names it
                        buf = list(map(orjson.loads, lines))
                        df = _normalise(_json_rows(buf, cols, file=file, offset=offset), numeric,
                                        file=file, row_offset=offset)
                    yield df
                    offset += len(lines)
                    if not lines:
                        break
            else:
                meta = orjson.loads(fh.read())
                cols = _check_dataset_json_meta(meta, file)
                numeric = {c["name"] for c in cols if c["dataType"] in NUMERIC_DATATYPES}
                rows = meta.get("rows", [])
                if not isinstance(rows, list):
                    raise InputError("not Dataset-JSON 1.1: 'rows' is not a list", file=file)
                offset = len(rows)
                for start in range(0, max(len(rows), 1), chunksize):
                    part = rows[start:start + chunksize]
                    yield _normalise(_json_rows(part, cols, file=file, offset=start), numeric,
                                     file=file, row_offset=start)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not valid Dataset-JSON ({exc})", file=file) from None
    if offset != meta["records"]:
        raise InputError(f"'records' says {meta['records']} but the file holds {offset} rows", file=file)


def read_dataset(ds: DatasetFile, *, define: DefineInfo | None = None,
                 report: ConversionReport | None = None) -> pd.DataFrame:
    chunks = list(iter_dataset_chunks(ds, chunksize=1_000_000, define=define, report=report))
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def read_sdtm_folder(folder: Path, *, report: ConversionReport | None = None,
                     datasets: set[str] | None = None) -> SdtmFolder:
    """Read every dataset of the folder (or only ``datasets``) into DataFrames."""
    files = find_datasets(folder, report)
    if not files:
        raise InputError("folder holds no SDTM datasets (.json, .ndjson, .xpt, .csv)", file=str(folder))
    define = read_define(folder)
    out = SdtmFolder(folder=folder, files=files, define=define)
    for name, ds in files.items():
        if datasets is not None and name not in datasets:
            continue
        out.frames[name] = read_dataset(ds, define=define, report=report)
    return out


