"""Write one SDTM domain in every requested form: json (Dataset-JSON 1.1), ndjson, csv, xpt.

All SDTM writers (trial design, subject data) go through :func:`write_domain`, so a new output
form is added in one place. File names are the domain in lower case (``dm.json``, ``suppdm.xpt``).

Subject data rows are written in the order of the domain's keys (``schemas/sdtm/domains.csv``, the keySequence
Define-XML declares): numeric keys numerically, text keys by code point, missing values first, ties
in arrival order (:func:`sort_by_keys`). The streamed writer sorts each chunk and merges the sorted
chunks at close (an external merge sort: one row per run in memory, see :class:`ChunkedDomainWriter`).
"""

from __future__ import annotations

import heapq
import importlib
import io
from array import array
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd

from .. import __version__
from ..errors import UsageError
from ..report import ConversionReport
from ..safeio import atomic_path
from .datasetjson import DATASET_JSON_VERSION, NUMERIC_TYPES, creation_datetime, write_csv, write_dataset_json

SDTM_FORMATS = ("json", "ndjson", "csv", "xpt")


def sort_by_keys(df: pd.DataFrame, domain: str) -> pd.DataFrame:
    """``df`` in the order of the domain's key variables (those it has); stable. Same order as
    :func:`row_key` gives the streamed writer."""
    return df.iloc[key_order(df, domain)].reset_index(drop=True)


def key_order(df: pd.DataFrame, domain: str) -> np.ndarray:
    """Row positions of ``df`` in key order (see :func:`sort_by_keys`)."""
    from .metadata import load_domain
    identity = np.arange(len(df))
    try:
        meta = load_domain(domain)
    except (KeyError, ValueError, FileNotFoundError):
        return identity
    keys = [k for k in meta.keys if k in df.columns]
    if len(df) < 2 or not keys:
        return identity
    numeric = {v.name for v in meta.variables if v.data_type in NUMERIC_TYPES}
    frame = pd.DataFrame(index=identity)
    for k in keys:
        s = df[k].reset_index(drop=True)
        if k in numeric:
            frame[k] = pd.to_numeric(s, errors="coerce")
        else:
            vals = s.to_numpy(dtype=object)
            frame[k] = ["" if v is None or (isinstance(v, float) and v != v) or v is pd.NA else str(v)
                        for v in vals]
    return frame.sort_values(keys, na_position="first", kind="stable").index.to_numpy()


def row_key(positions: list[tuple[int, bool]]) -> Callable[[Any], tuple[Any, ...]]:
    """Sort key of a spooled row (a list): per key variable its position in the row (-1: not
    carried) and whether it is numeric; missing numbers sort first, missing text is ""."""
    def key(row: Any) -> tuple[Any, ...]:
        out: list[Any] = []
        for j, num in positions:
            v = row[j] if j >= 0 else None
            if num:
                out.append((0, 0.0) if v is None else (1, float(v)))
            else:
                out.append("" if v is None else str(v))
        return tuple(out)
    return key


def write_domain(df: pd.DataFrame, domain: str, outdir: Path, formats: tuple[str, ...], *,
                 study_oid: str, report: ConversionReport | None = None, sort: bool = False) -> list[Path]:
    """``sort``: rows in key order (subject data). Trial design datasets keep their derived order:
    their row order carries meaning the keys do not (arm order, criteria order as the sponsor gave
    them; the CDISC pilot's TI is not in IETESTCD order)."""
    bad = [f for f in formats if f not in SDTM_FORMATS]
    if bad:
        raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
    if sort:
        df = sort_by_keys(df, domain)
    stem = domain.lower()
    written: list[Path] = []
    for fmt in formats:
        target = outdir / f"{stem}.{fmt}"
        if fmt == "json":
            write_dataset_json(df, domain, target, study_oid=study_oid)
        elif fmt == "ndjson":
            write_dataset_json(df, domain, target, study_oid=study_oid, ndjson=True)
        elif fmt == "csv":
            write_csv(df, domain, target)
        elif fmt == "xpt":
            # XPT v5 is ASCII only: text is spelled in ASCII and every changed value reported
            importlib.import_module("trialbridge.sdtm.xpt").write_xpt(
                df, domain, target, transliterate=True, ascii_report=report)
        written.append(target)
    return written


class ChunkedDomainWriter:
    """Write one domain from a stream of DataFrame chunks with memory bounded by one chunk.

    Each chunk is serialised once, column by column (vectorised value conversion, then one
    ``orjson.dumps`` of the chunk's rows), into a spool file beside the target, while the row count,
    the byte length of every Char column and which Perm columns carry a value are tracked. A chunk is
    spooled with the columns selected *so far* (Req/Exp always, Perm once any chunk had a value);
    :meth:`close` writes the final files: Dataset-JSON (metadata first, then rows) copies every chunk
    spooled with the final selection byte for byte and re-serialises only the (early) chunks that
    lack a Perm column first filled later; NDJSON and CSV re-read the spool. XPT v5 has no way to
    append, so for ``xpt`` the domain is assembled in memory once, at close. Same column rules as
    :func:`write_domain`.

    Key order with bounded memory (an external merge sort): each chunk is sorted by the domain keys
    before it is spooled, one row per line, so every chunk is a sorted run; :meth:`close` merges the
    runs (``heapq.merge``, stable: ties keep arrival order), reading each run line by line, so memory
    holds one row per run, not the domain. A single run is copied as it is.
    """

    def __init__(self, domain: str, outdir: Path, formats: tuple[str, ...], *, study_oid: str,
                 report: ConversionReport | None = None, companion: Path | None = None,
                 companion_csv: Callable[[pd.DataFrame, IO[str], bool], None] | None = None) -> None:
        """``companion``: a CSV written at close from the frames given to :meth:`write` as
        ``companion=`` (one row per domain row, e.g. provenance), in the same (key) order as the
        domain; ``companion_csv(frame, fh, header)`` writes a frame (default ``DataFrame.to_csv``)."""
        from .metadata import load_domain
        bad = [f for f in formats if f not in SDTM_FORMATS]
        if bad:
            raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
        self.domain = load_domain(domain)
        self.formats, self.outdir, self.study_oid, self.report = formats, outdir, study_oid, report
        self.names = self.domain.names
        self.numeric = [v.data_type in NUMERIC_TYPES for v in self.domain.variables]
        self.integer = [v.data_type == "integer" for v in self.domain.variables]
        self.always = [v.core in ("Req", "Exp") for v in self.domain.variables]
        self.lengths = [0] * len(self.names)
        self.present = [False] * len(self.names)
        self.records = 0
        #: per spooled chunk (a sorted run, one JSON row per line): (byte offset, byte length,
        #: selected column indexes)
        self.parts: list[tuple[int, int, tuple[int, ...]]] = []
        self.spooled = 0
        self.order: array | None = None
        outdir.mkdir(parents=True, exist_ok=True)
        self.spool_path = outdir / f".{domain.lower()}.spool"
        self.spool = open(self.spool_path, "wb")  # noqa: SIM115 (closed in close())
        self.companion = companion
        self.companion_csv = companion_csv or (
            lambda df, fh, header: df.to_csv(fh, index=False, header=header, lineterminator="\n"))
        self.companion_header = b""
        #: per chunk: (byte offset, byte length) of its companion CSV lines, same row order as the run
        self.companion_parts: list[tuple[int, int]] = []
        self.companion_spooled = 0
        self.companion_spool_path = outdir / f".{domain.lower()}.companion.spool"
        self.companion_spool = open(self.companion_spool_path, "wb") if companion else None  # noqa: SIM115

    def write(self, df: pd.DataFrame, companion: pd.DataFrame | None = None) -> None:
        if not len(df):
            return
        if (companion is None) != (self.companion is None) or (companion is not None and len(companion) != len(df)):
            raise ValueError(f"{self.domain.domain}: companion rows must be given with every chunk, one per row")
        unknown = [c for c in df.columns if c not in self.names]
        if unknown:
            raise ValueError(f"{self.domain.domain}: columns not in schemas/sdtm metadata: {unknown}")
        n = len(df)
        cols: list[list[Any] | None] = []
        for i, name in enumerate(self.names):
            if name not in df:
                cols.append(None)
                continue
            s = df[name]
            if self.numeric[i]:
                vals, filled = _numeric_values(s, self.integer[i])
                if filled:
                    self.present[i] = True
                cols.append(vals)
            else:
                filled = s.to_numpy(dtype=object)   # object arrays: no copy
                miss = pd.isna(filled)
                if miss.any():
                    filled = filled.copy()
                    filled[miss] = ""
                uniq = pd.unique(filled)
                longest = _longest_utf8(uniq)
                if longest:
                    self.present[i] = True
                    self.lengths[i] = max(self.lengths[i], longest)
                vals = filled.tolist()
                if any(not isinstance(u, str) for u in uniq):
                    vals = [v if isinstance(v, str) else str(v) for v in vals]
                cols.append(vals)
        sel = tuple(self._selected())
        picked = [cols[i] if cols[i] is not None else ([None] * n if self.numeric[i] else [""] * n)
                  for i in sel]
        rows = list(zip(*picked, strict=True))
        keyf = self._key(sel)
        if companion is None:
            rows.sort(key=keyf)
        else:
            order = sorted(range(n), key=lambda j: keyf(rows[j]))
            rows = [rows[j] for j in order]
            self._spool_companion(companion.iloc[order], n)
        body = b"\n".join(map(orjson.dumps, rows)) + b"\n"
        self.spool.write(body)
        self.parts.append((self.spooled, len(body), sel))
        self.spooled += len(body)
        self.records += n

    def _spool_companion(self, frame: pd.DataFrame, n: int) -> None:
        assert self.companion_spool is not None
        buf = io.StringIO()
        self.companion_csv(frame, buf, True)
        head, _, lines = buf.getvalue().partition("\n")
        if lines.count("\n") != n:
            raise ValueError(f"{self.domain.domain}: companion values must not hold line breaks")
        self.companion_header = head.encode("utf-8") + b"\n"
        data = lines.encode("utf-8")
        self.companion_spool.write(data)
        self.companion_parts.append((self.companion_spooled, len(data)))
        self.companion_spooled += len(data)

    def _key(self, sel: tuple[int, ...]) -> Callable[[Any], tuple[Any, ...]]:
        pos = {c: j for j, c in enumerate(sel)}
        return row_key([(pos.get(self.names.index(k), -1), self.numeric[self.names.index(k)])
                        for k in self.domain.keys if k in self.names])

    def _selected(self) -> list[int]:
        return [i for i in range(len(self.names)) if self.always[i] or self.present[i]]

    @staticmethod
    def _run_lines(path: Path, offset: int, length: int) -> Iterator[bytes]:
        """The lines of one spooled run, read one at a time."""
        with open(path, "rb") as fh:
            fh.seek(offset)
            left = length
            while left > 0:
                line = fh.readline()
                if not line:
                    break
                left -= len(line)
                yield line

    def _merge_order(self) -> array | None:
        """Which run each row of the key order comes from (None: one run, already in order). One
        pass over the spool; memory: one row per run plus this array (1-4 bytes per row)."""
        if len(self.parts) < 2:
            return None

        def keyed(r: int) -> Iterator[tuple[tuple[Any, ...], int]]:
            offset, length, chunk_sel = self.parts[r]
            key = self._key(chunk_sel)
            for line in self._run_lines(self.spool_path, offset, length):
                yield key(orjson.loads(line)), r

        order = array("B" if len(self.parts) < 256 else "H" if len(self.parts) < 65536 else "I")
        order.extend(r for _, r in heapq.merge(*(keyed(r) for r in range(len(self.parts)))))
        return order

    def _lines(self, path: Path, parts: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
        """(run, raw line) of a spool in key order (the replay of :meth:`_merge_order`)."""
        if self.order is None:
            for r, (offset, length) in enumerate(parts):
                for line in self._run_lines(path, offset, length):
                    yield r, line
            return
        runs = [self._run_lines(path, o, n) for o, n in parts]
        for r in self.order:
            yield r, next(runs[r])

    def _rows(self, sel: list[int]) -> Iterator[list[Any]]:
        """Every row in the final selection, in key order."""
        want = tuple(sel)
        for r, line in self._lines(self.spool_path, [(o, n) for o, n, _ in self.parts]):
            row = orjson.loads(line)
            chunk_sel = self.parts[r][2]
            yield row if chunk_sel == want else self._reselect([row], chunk_sel, sel)[0]

    def _bodies(self, sel: list[int], size: int = 50_000) -> Iterator[bytes]:
        """The rows in key order as pieces of the inside of a JSON array (no separator at the ends);
        rows spooled with the final selection are copied as they are."""
        want = tuple(sel)
        batch: list[bytes] = []
        for r, line in self._lines(self.spool_path, [(o, n) for o, n, _ in self.parts]):
            chunk_sel = self.parts[r][2]
            if chunk_sel == want:
                batch.append(line.rstrip(b"\n"))
            else:
                batch.append(orjson.dumps(self._reselect([orjson.loads(line)], chunk_sel, sel)[0]))
            if len(batch) >= size:
                yield b",\n".join(batch)
                batch = []
        if batch:
            yield b",\n".join(batch)

    def _chunks(self, sel: list[int], size: int = 50_000) -> Iterator[list[list[Any]]]:
        it = self._rows(sel)
        while True:
            batch = list(islice(it, size))
            if not batch:
                return
            yield batch

    def _reselect(self, rows: list[list[Any]], chunk_sel: tuple[int, ...], sel: list[int]) -> list[list[Any]]:
        pos = {c: j for j, c in enumerate(chunk_sel)}
        # a column the chunk did not carry had no value in it (else it would have been selected)
        picks = [(pos[i], None) if i in pos else (-1, None if self.numeric[i] else "") for i in sel]
        return [[r[j] if j >= 0 else empty for j, empty in picks] for r in rows]

    def close(self) -> list[Path]:
        self.spool.close()
        if self.companion_spool is not None:
            self.companion_spool.close()
        sel = self._selected()
        written: list[Path] = []
        try:
            self.order = self._merge_order()
            for fmt in self.formats:
                target = self.outdir / f"{self.domain.domain.lower()}.{fmt}"
                if fmt in ("json", "ndjson"):
                    self._write_json(target, sel, ndjson=fmt == "ndjson")
                elif fmt == "csv":
                    self._write_csv(target, sel)
                else:  # xpt: a v5 file is written whole, so the domain is held in memory once, here
                    self._write_xpt(target, sel)
                written.append(target)
            if self.companion is not None and self.parts:
                self._write_companion(self.companion)
                written.append(self.companion)
        finally:
            self.spool_path.unlink(missing_ok=True)
            self.companion_spool_path.unlink(missing_ok=True)
        return written

    def header(self, sel: list[int]) -> dict[str, Any]:
        columns = []
        d = self.domain
        for i in sel:
            var = d.variables[i]
            col: dict[str, Any] = {"itemOID": f"IT.{d.domain}.{var.name}", "name": var.name,
                                   "label": var.label, "dataType": var.data_type}
            if not self.numeric[i]:
                col["length"] = max(self.lengths[i], 1)
            if var.name in d.keys:
                col["keySequence"] = d.keys.index(var.name) + 1
            columns.append(col)
        return {"datasetJSONCreationDateTime": creation_datetime(),
                "datasetJSONVersion": DATASET_JSON_VERSION, "fileOID": f"{self.study_oid}/{d.domain}",
                "originator": "trialbridge", "sourceSystem": {"name": "trialbridge", "version": __version__},
                "studyOID": self.study_oid, "metaDataVersionOID": "MDV.TRIALBRIDGE.SDTMIG.3.4",
                "itemGroupOID": f"IG.{d.domain}", "records": self.records, "name": d.domain,
                "label": d.label, "columns": columns}

    def _write_json(self, target: Path, sel: list[int], *, ndjson: bool) -> None:
        head = self.header(sel)
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            if ndjson:
                fh.write(orjson.dumps(head) + b"\n")
                for rows in self._chunks(sel):
                    fh.write(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
                return
            fh.write(orjson.dumps(head)[:-1] + b',"rows":[')
            first = True
            for body in self._bodies(sel):
                if not body:
                    continue
                fh.write((b"\n" if first else b",\n") + body)
                first = False
            fh.write(b"]}\n")

    def _write_xpt(self, target: Path, sel: list[int]) -> None:
        rows = [r for chunk in self._chunks(sel) for r in chunk]
        frame = pd.DataFrame(rows, columns=[self.names[i] for i in sel])
        importlib.import_module("trialbridge.sdtm.xpt").write_xpt(
            frame, self.domain.domain, target, transliterate=True, ascii_report=self.report)

    def _write_companion(self, target: Path) -> None:
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fh.write(self.companion_header)
            batch: list[bytes] = []
            for _, line in self._lines(self.companion_spool_path, self.companion_parts):
                batch.append(line)
                if len(batch) >= 50_000:
                    fh.write(b"".join(batch))
                    batch = []
            fh.write(b"".join(batch))

    def _write_csv(self, target: Path, sel: list[int]) -> None:
        import csv
        with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow([self.names[i] for i in sel])
            for rows in self._chunks(sel):
                w.writerows(["" if v is None else v for v in r] for r in rows)


def _longest_utf8(values: Any) -> int:
    """The longest ``str(value)`` in UTF-8 bytes (ASCII text: its length, counted in C)."""
    if len(values) and all(type(v) is str for v in values):
        if "".join(values).isascii():
            return max(map(len, values))
    return max((len(str(u).encode("utf-8")) for u in values), default=0)


def _numeric_values(s: pd.Series, integer: bool) -> tuple[list[Any], bool]:
    """A numeric column as JSON-ready Python values (missing -> None; integer-valued floats -> int,
    as :func:`trialbridge.sdtm.datasetjson._cell` writes them) and whether any value is present.
    Vectorised for numeric dtypes; any other dtype goes value by value."""
    mask = s.isna().to_numpy()
    if mask.all():
        return [None] * len(mask), False
    if s.dtype.kind in "iuf":
        if s.dtype.kind in "iu" and not mask.any():
            return s.to_numpy().tolist(), True
        arr = s.to_numpy(dtype="float64", na_value=np.nan)
        ok = ~mask
        if integer:
            out = np.full(len(arr), None, dtype=object)
            out[ok] = arr[ok].astype(np.int64).astype(object)
            return out.tolist(), True
        out = arr.astype(object)
        whole = ok & (np.abs(np.where(ok, arr, 0.0)) < 2**53)
        with np.errstate(invalid="ignore"):
            whole &= np.where(ok, arr, 0.5) == np.trunc(np.where(ok, arr, 0.5))
        out[whole] = arr[whole].astype(np.int64).astype(object)
        out[mask] = None
        return out.tolist(), True
    vals = s.astype(object).tolist()
    if mask.any():
        for j in mask.nonzero()[0]:
            vals[j] = None
    if integer:
        vals = [None if v is None else int(v) for v in vals]
    else:
        vals = [None if v is None else (int(v) if float(v).is_integer() and abs(v) < 2**53
                                        else float(v)) for v in vals]
    return vals, not mask.all()
