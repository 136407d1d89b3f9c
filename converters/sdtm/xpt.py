"""SAS transport (XPORT) version 5 files: the FDA's required dataset format, via pyreadstat.

Writing checks what a v5 file can carry before anything is written, and refuses rather than cut:

* dataset and variable names: 1-8 characters, letters, digits and ``_``, starting with a letter;
* dataset and variable labels: at most 40 characters, ASCII;
* character values: at most 200 bytes, ASCII only.

**Non-ASCII policy.** XPT v5 has no place to declare an encoding and the FDA Study Data Technical
Conformance Guide asks for ASCII text in transport files. A non-ASCII value is therefore *refused*
(:class:`XptError`, naming every row and variable concerned; never the value): it is not
transliterated (``’`` -> ``'`` would silently change submitted data) and not written in some
unstated 8-bit encoding. Fix the source, or write Dataset-JSON, which is UTF-8.

A *conversion* that asks for XPT (``--sdtm-format xpt``) instead calls :func:`to_ascii` first: each
non-ASCII character gets the ASCII spelling in ``mappings/codes/xpt_ascii.csv`` (``≥`` -> ``>=``,
``µ`` -> ``u``), else its NFKD decomposition without accents, else ``?``; every changed value is
reported ``lossy`` with its row and variable (never the value), and the Dataset-JSON beside it keeps
the UTF-8 original. ``--strict`` turns those reports into a failure.

**Lengths.** For a domain known to ``schemas/sdtm`` a character variable's length is the metadata
length, raised to the longest value when data is longer (``lengths="metadata"``, the default), or
the longest value (``lengths="data"``, what the FDA TCG asks of submitted data: "the allotted length
... should be set to the maximum length of the variable used"; conversions write that, so the XPT,
define.xml Length and the Dataset-JSON length agree). pyreadstat sizes a column by its
longest value, so the declared length is obtained by padding one value with trailing blanks, which
XPT strips on reading (character values are blank-padded in the format itself).

**Dates.** SDTM ``--DTC`` variables are ISO 8601 *character* values and are written as text. Only a
variable whose metadata type is ``Num`` with a date/datetime/time data type becomes a SAS date
(``DATE9.``), datetime (``DATETIME20.``) or time (``TIME8.``) number.

**Large datasets.** The FDA TCG (section 3.3.2) asks that a dataset over 5 GB be split into smaller
datasets of at most 5 GB, submitted *in addition to* the non-split dataset, in a ``split`` sub-folder.
:func:`write_xpt` does that when ``split_bytes`` is given (:data:`FDA_MAX_XPT_BYTES` for the FDA
limit): parts ``<name>1.xpt``, ``<name>2.xpt`` ... each holding whole subjects (``USUBJID`` groups).

Reading (:func:`read_xpt`) returns the DataFrame and an :class:`XptMeta`; a legacy file that is not
valid UTF-8 is read as Windows-1252 (what SAS on Windows wrote) and says so in ``meta.encoding``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyreadstat

from ..errors import ConversionError, InputError
from ..report import ConversionReport, Kind, Severity
from ..safeio import atomic_path
from .metadata import Domain, load_domain

XPT_NAME_MAX = 8
XPT_LABEL_MAX = 40
XPT_CHAR_MAX = 200
FDA_MAX_XPT_BYTES = 5 * 1024**3
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,7}$")
SAS_DATE_FORMATS = {"date": "DATE9.", "datetime": "DATETIME20.", "time": "TIME8."}
_MAX_LISTED = 20


class XptError(ConversionError):
    """A dataset cannot be written as XPT v5 without changing it."""

    code = "xpt-v5"


@dataclass(frozen=True)
class XptColumn:
    name: str
    label: str
    type: str                    # Char | Num
    length: int | None = None    # bytes for Char; 8 for Num
    format: str | None = None    # SAS display format (DATE9. ...) for numeric dates


@dataclass(frozen=True)
class XptMeta:
    name: str
    label: str
    columns: tuple[XptColumn, ...]
    encoding: str = "utf-8"
    rows: int = 0

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> XptColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class XptProblem:
    check: str            # xpt-name | xpt-label | xpt-length | xpt-ascii | xpt-declared-length
    message: str
    variable: str | None = None
    rows: tuple[int, ...] = field(default_factory=tuple)   # 1-based row numbers


# ------------------------------------------------------------------ checks
def _char_byte_lengths(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(byte length, character length) per value; missing values count as empty."""
    text = series.astype("string").fillna("")
    return text.str.encode("utf-8").str.len(), text.str.len()


def _rows(mask: pd.Series) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in mask.to_numpy().nonzero()[0])


def check_xpt_frame(df: pd.DataFrame, meta: XptMeta) -> list[XptProblem]:
    """Everything that stops ``df`` being written as XPT v5 under ``meta``, row numbers 1-based."""
    problems: list[XptProblem] = []
    if not NAME_RE.match(meta.name):
        problems.append(XptProblem("xpt-name", f"dataset name {meta.name!r} is not 1-8 letters, "
                                   "digits or _ starting with a letter"))
    if len(meta.label) > XPT_LABEL_MAX or not meta.label.isascii():
        problems.append(XptProblem("xpt-label", f"dataset label is {len(meta.label)} characters"
                                   f"{'' if meta.label.isascii() else ', not ASCII'} (XPT v5: "
                                   f"at most {XPT_LABEL_MAX} ASCII)"))
    for col in meta.columns:
        if not NAME_RE.match(col.name):
            problems.append(XptProblem("xpt-name", f"variable name {col.name!r} is not 1-8 letters, "
                                       "digits or _ starting with a letter", variable=col.name))
        if len(col.label) > XPT_LABEL_MAX or not col.label.isascii():
            problems.append(XptProblem("xpt-label", f"label is {len(col.label)} characters"
                                       f"{'' if col.label.isascii() else ', not ASCII'} (XPT v5: at "
                                       f"most {XPT_LABEL_MAX} ASCII)", variable=col.name))
        if col.type != "Char" or col.name not in df.columns:
            continue
        nbytes, nchars = _char_byte_lengths(df[col.name])
        too_long = nbytes > XPT_CHAR_MAX
        if too_long.any():
            problems.append(XptProblem("xpt-length", f"{int(too_long.sum())} value(s) longer than "
                                       f"{XPT_CHAR_MAX} bytes (XPT v5 limit; longest "
                                       f"{int(nbytes.max())})", variable=col.name,
                                       rows=_rows(too_long)))
        non_ascii = nbytes != nchars
        if non_ascii.any():
            problems.append(XptProblem("xpt-ascii", f"{int(non_ascii.sum())} value(s) with non-ASCII "
                                       "characters (XPT v5 carries ASCII only; not transliterated)",
                                       variable=col.name, rows=_rows(non_ascii)))
    return problems


def _raise(problems: list[XptProblem], path: Path) -> None:
    lines = []
    for p in problems:
        where = f"{p.variable}: " if p.variable else ""
        rows = ""
        if p.rows:
            shown = ", ".join(str(r) for r in p.rows[:_MAX_LISTED])
            more = f" and {len(p.rows) - _MAX_LISTED} more" if len(p.rows) > _MAX_LISTED else ""
            rows = f" (row {shown}{more})"
        lines.append(f"{where}{p.message}{rows}")
    raise XptError("cannot write XPT v5: " + "; ".join(lines), file=str(path))


# ------------------------------------------------------------------ writing
def _sas_number(value: Any, kind: str) -> float:
    """A date/datetime/time (or its ISO 8601 text) as a SAS number (days / seconds since 1960)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return math.nan
    if isinstance(value, str):
        if not value:
            return math.nan
        value = (dt.time.fromisoformat(value) if kind == "time" else
                 dt.datetime.fromisoformat(value) if kind == "datetime" else dt.date.fromisoformat(value))
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    epoch = dt.datetime(1960, 1, 1)
    if kind == "time" and isinstance(value, dt.time):
        return float(value.hour * 3600 + value.minute * 60 + value.second)
    if isinstance(value, dt.datetime):
        secs = (value.replace(tzinfo=None) - epoch).total_seconds()
        return math.floor(secs / 86400) if kind == "date" else secs
    if isinstance(value, dt.date):
        days = (value - epoch.date()).days
        return float(days) if kind == "date" else float(days * 86400)
    return float(value)


def _prepare(df: pd.DataFrame, meta: XptMeta) -> tuple[pd.DataFrame, dict[str, str]]:
    """The frame pyreadstat writes: Char as str ('' for missing, padded to length), Num as float."""
    out: dict[str, pd.Series] = {}
    formats: dict[str, str] = {}
    n = len(df)
    for col in meta.columns:
        series = df[col.name] if col.name in df.columns else pd.Series([None] * n, dtype="object")
        series = series.reset_index(drop=True)
        if col.type == "Char":
            if pd.api.types.is_datetime64_any_dtype(series):
                series = series.dt.strftime("%Y-%m-%dT%H:%M:%S")   # ISO 8601 text (--DTC)
            text = series.astype("string").fillna("").astype(object)
            if col.length and n and col.length > int(text.map(len).max()):
                text.iloc[0] = text.iloc[0].ljust(col.length)   # ASCII by now: chars == bytes
            out[col.name] = text
        else:
            fmt = col.format
            kind = next((k for k, f in SAS_DATE_FORMATS.items() if fmt and fmt.startswith(f[:-1])),
                        None)
            if kind is not None and not pd.api.types.is_numeric_dtype(series):
                values = series.map(lambda v, k=kind: _sas_number(v, k)).astype("float64")
                out[col.name] = values
            else:
                out[col.name] = pd.to_numeric(series, errors="raise").astype("float64")
            if fmt:
                formats[col.name] = fmt
    return pd.DataFrame(out), formats


def estimate_xpt_bytes(n_rows: int, widths: list[int]) -> int:
    """Size of an XPT v5 file: 80-byte header records, 140-byte namestr per variable, rows."""
    header = 80 * 10 + 140 * len(widths)   # library, member, namestr and obs header records
    header = -(-header // 80) * 80
    data = n_rows * sum(widths)
    return header + -(-data // 80) * 80


def write_xpt_table(df: pd.DataFrame, path: Path, meta: XptMeta) -> Path:
    """Write ``df`` as an XPT v5 file described by ``meta`` (any dataset: names, labels, lengths)."""
    problems = check_xpt_frame(df, meta)
    missing = [c for c in df.columns if c not in meta.names]
    if missing:
        raise XptError(f"columns without XPT metadata: {missing}", file=str(path))
    if problems:
        _raise(problems, path)
    frame, formats = _prepare(df, meta)
    with atomic_path(path) as tmp:
        pyreadstat.write_xport(frame, str(tmp), file_label=meta.label,
                               column_labels={c.name: c.label for c in meta.columns},
                               table_name=meta.name, file_format_version=5,
                               variable_format=formats or None)
    return path


def xpt_meta_for_domain(df: pd.DataFrame, domain: Domain, *,
                        lengths: Literal["metadata", "data"] = "metadata") -> XptMeta:
    """XPT metadata for an SDTM domain from ``schemas/sdtm`` (the one metadata source)."""
    from .datasetjson import select_columns
    cols = select_columns(df, domain)
    columns = []
    for name in cols:
        var = domain.var(name)
        if var.type == "Char":
            longest = 1
            if name in df.columns and len(df):
                longest = max(int(_char_byte_lengths(df[name])[0].max()), 1)
            length = longest if lengths == "data" or not var.length else max(var.length, longest)
            columns.append(XptColumn(name, var.label, "Char", min(length, XPT_CHAR_MAX)))
        else:
            columns.append(XptColumn(name, var.label, "Num", 8, SAS_DATE_FORMATS.get(var.data_type)))
    return XptMeta(name=domain.domain, label=domain.label, columns=tuple(columns), rows=len(df))


@cache
def _ascii_table() -> dict[int, str]:
    from ..specs import load_table
    return {ord(r["source_code"]): r["target_code"] for r in load_table("codes/xpt_ascii.csv")}


def _ascii_text(text: str) -> str:
    out = text.translate(_ascii_table())
    if out.isascii():
        return out
    decomposed = unicodedata.normalize("NFKD", out)
    return "".join(ch if ch.isascii() else "?" for ch in decomposed if not unicodedata.combining(ch))


def to_ascii(df: pd.DataFrame, domain: str, report: ConversionReport | None) -> pd.DataFrame:
    """Character columns spelled in ASCII for XPT v5; each changed value reported (row, variable)."""
    out = df.copy()
    for name in df.columns:
        col = df[name]
        if col.dtype.kind in "biufcmM":
            continue
        text = col.astype("string")
        mask = text.notna() & ~text.fillna("").map(str.isascii).astype(bool)
        if not mask.any():
            continue
        out.loc[mask, name] = text[mask].map(_ascii_text)
        rows = _rows(mask)
        if report is not None:
            shown = ", ".join(str(r) for r in rows[:_MAX_LISTED])
            more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
            report.add(Kind.LOSSY, f"{len(rows)} value(s) with non-ASCII characters spelled in ASCII for "
                       f"XPT v5 (mappings/codes/xpt_ascii.csv; row {shown}{more}); the Dataset-JSON keeps "
                       "the original", rule="xpt.ascii", source=f"{domain}.{name}",
                       target=f"{domain.lower()}.xpt {name}", severity=Severity.WARNING)
    return out


def write_xpt(df: pd.DataFrame, domain: str, path: Path, *,
              lengths: Literal["metadata", "data"] = "metadata",
              split_bytes: int | None = None, split_by: str = "USUBJID",
              ascii_report: ConversionReport | None = None, transliterate: bool = False) -> list[Path]:
    """Write one SDTM domain as XPT v5 (columns, labels, types from ``schemas/sdtm``).

    ``transliterate=True`` spells non-ASCII text in ASCII first (:func:`to_ascii`, reported to
    ``ascii_report``); otherwise non-ASCII text is refused.

    With ``split_bytes`` (e.g. :data:`FDA_MAX_XPT_BYTES`) a dataset estimated larger than that is
    also written as parts in ``split/`` beside ``path``, none larger, whole ``split_by`` groups each.
    """
    dom = load_domain(domain)
    if transliterate:
        df = to_ascii(df, dom.domain, ascii_report)
    meta = xpt_meta_for_domain(df, dom, lengths=lengths)
    frame = df.reindex(columns=meta.names)
    written = [write_xpt_table(frame, path, meta)]
    if split_bytes is not None:
        written.extend(split_xpt(frame, meta, path, max_bytes=split_bytes, by=split_by))
    return written


def split_xpt(df: pd.DataFrame, meta: XptMeta, path: Path, *, max_bytes: int,
              by: str = "USUBJID") -> list[Path]:
    """FDA TCG 3.3.2: parts of at most ``max_bytes`` in ``<folder>/split/<name>N.xpt``."""
    widths = [c.length or 8 for c in meta.columns]
    if estimate_xpt_bytes(len(df), widths) <= max_bytes:
        return []
    row_bytes = sum(widths)
    budget = max_bytes - estimate_xpt_bytes(0, widths) - 80
    if budget < row_bytes:
        raise XptError(f"split size {max_bytes} bytes cannot hold one row", file=str(path))
    keys = df[by].reset_index(drop=True) if by in df.columns else pd.Series(range(len(df)))
    starts = [int(i) for i in (keys != keys.shift()).to_numpy().nonzero()[0]] + [len(df)]
    # group boundaries: a part never splits a subject's records
    parts: list[tuple[int, int]] = []
    start = size = 0
    for a, b in zip(starts, starts[1:], strict=False):
        group = (b - a) * row_bytes
        if group > budget:
            raise XptError(f"the records of one {by} need {group} bytes, over the split size "
                           f"{max_bytes}", file=str(path))
        if size and size + group > budget:
            parts.append((start, a))
            start, size = a, 0
        size += group
    parts.append((start, len(df)))
    if len(meta.name) + len(str(len(parts))) > XPT_NAME_MAX:
        raise XptError(f"{len(parts)} parts: part names would exceed {XPT_NAME_MAX} characters",
                       file=str(path))
    out = []
    for n, (a, b) in enumerate(parts, start=1):
        name = f"{meta.name}{n}"
        target = path.parent / "split" / f"{name.lower()}.xpt"
        part = replace(meta, name=name, rows=b - a)
        out.append(write_xpt_table(df.iloc[a:b].reset_index(drop=True), target, part))
    return out


# ------------------------------------------------------------------ reading
def read_xpt(path: Path) -> tuple[pd.DataFrame, XptMeta]:
    """An XPT (v5 or v8) file -> (DataFrame, metadata). Numeric SAS dates come back as dates."""
    encoding = "utf-8"
    try:
        try:
            df, m = pyreadstat.read_xport(str(path))
        except UnicodeDecodeError:
            encoding = "windows-1252"
            df, m = pyreadstat.read_xport(str(path), encoding=encoding)
    except UnicodeDecodeError as exc:
        raise InputError(f"XPT text is neither UTF-8 nor Windows-1252 ({exc})", file=str(path)) from None
    except pyreadstat.ReadstatError as exc:
        raise InputError(f"not a readable SAS XPT v5 file ({exc})", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    types = m.readstat_variable_types
    columns = []
    for name, label in zip(m.column_names, m.column_labels, strict=True):
        fmt = (m.original_variable_types or {}).get(name)
        is_char = types.get(name) == "string"
        columns.append(XptColumn(name=name, label=label or "", type="Char" if is_char else "Num",
                                 length=m.variable_storage_width.get(name),
                                 format=None if is_char or not fmt else
                                 fmt if fmt.endswith(".") else f"{fmt}."))
    meta = XptMeta(name=m.table_name or path.stem.upper(), label=m.file_label or "",
                   columns=tuple(columns), encoding=encoding, rows=len(df))
    return df, meta
