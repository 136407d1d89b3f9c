"""Write one SDTM domain in every requested form: json (Dataset-JSON 1.1), ndjson, csv, xpt.

All SDTM writers (trial design, subject data) go through :func:`write_domain`, so a new output
form is added in one place. File names are the domain in lower case (``dm.json``, ``suppdm.xpt``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .. import __version__
from ..errors import UsageError
from ..report import ConversionReport
from ..safeio import atomic_path
from .datasetjson import DATASET_JSON_VERSION, NUMERIC_TYPES, creation_datetime, write_csv, write_dataset_json

SDTM_FORMATS = ("json", "ndjson", "csv", "xpt")


def write_domain(df: pd.DataFrame, domain: str, outdir: Path, formats: tuple[str, ...], *,
                 study_oid: str, report: ConversionReport | None = None) -> list[Path]:
    bad = [f for f in formats if f not in SDTM_FORMATS]
    if bad:
        raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
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
    :func:`write_domain`. Rows stay in arrival order.
    """

    def __init__(self, domain: str, outdir: Path, formats: tuple[str, ...], *, study_oid: str,
                 report: ConversionReport | None = None) -> None:
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
        #: per spooled chunk: (byte offset, byte length, selected column indexes)
        self.parts: list[tuple[int, int, tuple[int, ...]]] = []
        self.spooled = 0
        outdir.mkdir(parents=True, exist_ok=True)
        self.spool_path = outdir / f".{domain.lower()}.spool"
        self.spool = open(self.spool_path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
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
        body = orjson.dumps(list(zip(*picked, strict=True)))[1:-1]
        self.spool.write(body)
        self.parts.append((self.spooled, len(body), sel))
        self.spooled += len(body)
        self.records += n

    def _selected(self) -> list[int]:
        return [i for i in range(len(self.names)) if self.always[i] or self.present[i]]

    def _bodies(self, sel: list[int]) -> Iterator[bytes]:
        """Each chunk's rows in the final selection, as the inside of a JSON array."""
        want = tuple(sel)
        with open(self.spool_path, "rb") as fh:
            for offset, length, chunk_sel in self.parts:
                fh.seek(offset)
                body = fh.read(length)
                if chunk_sel != want:
                    body = orjson.dumps(self._reselect(orjson.loads(b"[" + body + b"]"), chunk_sel, sel))[1:-1]
                yield body

    def _reselect(self, rows: list[list[Any]], chunk_sel: tuple[int, ...], sel: list[int]) -> list[list[Any]]:
        pos = {c: j for j, c in enumerate(chunk_sel)}
        # a column the chunk did not carry had no value in it (else it would have been selected)
        picks = [(pos[i], None) if i in pos else (-1, None if self.numeric[i] else "") for i in sel]
        return [[r[j] if j >= 0 else empty for j, empty in picks] for r in rows]

    def _chunks(self, sel: list[int]) -> Iterator[list[list[Any]]]:
        for body in self._bodies(sel):
            yield orjson.loads(b"[" + body + b"]")

    def close(self) -> list[Path]:
        self.spool.close()
        sel = self._selected()
        written: list[Path] = []
        try:
            for fmt in self.formats:
                target = self.outdir / f"{self.domain.domain.lower()}.{fmt}"
                if fmt in ("json", "ndjson"):
                    self._write_json(target, sel, ndjson=fmt == "ndjson")
                elif fmt == "csv":
                    self._write_csv(target, sel)
                else:  # xpt: a v5 file is written whole, so the domain is held in memory once, here
                    self._write_xpt(target, sel)
                written.append(target)
        finally:
            self.spool_path.unlink(missing_ok=True)
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
