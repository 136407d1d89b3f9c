"""Write one SDTM domain in every requested form: json (Dataset-JSON 1.1), ndjson, csv, xpt.

All SDTM writers (trial design, subject data) go through :func:`write_domain`, so a new output
form is added in one place. File names are the domain in lower case (``dm.json``, ``suppdm.xpt``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    Each chunk's rows are spooled (orjson, one JSON array per chunk) to a temporary file beside the
    target, while the row count, the byte length of every Char column and which Perm columns carry a
    value are tracked. :meth:`close` writes the final files: Dataset-JSON (metadata first, then rows),
    NDJSON and CSV, with the same column rules as :func:`write_domain` (Req/Exp always, Perm when any
    chunk had a value). Rows stay in arrival order.
    """

    def __init__(self, domain: str, outdir: Path, formats: tuple[str, ...], *, study_oid: str) -> None:
        from .metadata import load_domain
        bad = [f for f in formats if f not in SDTM_FORMATS]
        if bad:
            raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
        self.domain = load_domain(domain)
        self.formats, self.outdir, self.study_oid = formats, outdir, study_oid
        self.names = self.domain.names
        self.numeric = [v.data_type in NUMERIC_TYPES for v in self.domain.variables]
        self.integer = [v.data_type == "integer" for v in self.domain.variables]
        self.lengths = [0] * len(self.names)
        self.present = [False] * len(self.names)
        self.records = 0
        outdir.mkdir(parents=True, exist_ok=True)
        self.spool_path = outdir / f".{domain.lower()}.spool"
        self.spool = open(self.spool_path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
        unknown = [c for c in df.columns if c not in self.names]
        if unknown:
            raise ValueError(f"{self.domain.domain}: columns not in schemas/sdtm metadata: {unknown}")
        cols: list[list[Any]] = []
        n = len(df)
        for i, name in enumerate(self.names):
            if name not in df:
                cols.append([None] * n if self.numeric[i] else [""] * n)
                continue
            s = df[name]
            if self.numeric[i]:
                obj = s.astype(object)
                mask = s.isna().to_numpy()
                vals = obj.tolist()
                if mask.any():
                    for j in mask.nonzero()[0]:
                        vals[j] = None
                if self.integer[i]:
                    vals = [None if v is None else int(v) for v in vals]
                else:
                    vals = [None if v is None else (int(v) if float(v).is_integer() and abs(v) < 2**53
                                                    else float(v)) for v in vals]
                if not mask.all():
                    self.present[i] = True
                cols.append(vals)
            else:
                filled = s.astype(object).where(s.notna(), "")
                uniq = pd.unique(filled.to_numpy())
                longest = max((len(str(u).encode("utf-8")) for u in uniq), default=0)
                if longest:
                    self.present[i] = True
                    self.lengths[i] = max(self.lengths[i], longest)
                vals = filled.tolist()
                if any(not isinstance(u, str) for u in uniq):
                    vals = [v if isinstance(v, str) else str(v) for v in vals]
                cols.append(vals)
        rows = list(map(list, zip(*cols, strict=True)))
        self.spool.write(orjson.dumps(rows))
        self.spool.write(b"\n")
        self.records += n

    def _selected(self) -> list[int]:
        return [i for i, v in enumerate(self.domain.variables) if v.core in ("Req", "Exp") or self.present[i]]

    def _chunks(self, sel: list[int]) -> Iterator[list[list[Any]]]:
        with open(self.spool_path, "rb") as fh:
            for line in fh:
                rows = orjson.loads(line)
                yield [[r[i] for i in sel] for r in rows]

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
                else:
                    raise UsageError(f"--sdtm-format {fmt} is not available for streamed domains yet")
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
            for rows in self._chunks(sel):
                if not rows:
                    continue
                body = orjson.dumps(rows)[1:-1]
                fh.write((b"\n" if first else b",\n") + body)
                first = False
            fh.write(b"]}\n")

    def _write_csv(self, target: Path, sel: list[int]) -> None:
        import csv
        with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow([self.names[i] for i in sel])
            for rows in self._chunks(sel):
                w.writerows(["" if v is None else v for v in r] for r in rows)
