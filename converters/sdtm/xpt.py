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

**Text over 200 characters.** A conversion (and ``package``) splits such a value of a
general-observation-class domain as SDTMIG 3.4 section 4.5.3.2 says (:func:`split_long_text`): the
first 200 characters, cut between words, stay in the variable; the rest goes to SUPP-- records
QNAM = the variable name + 1, 2 ... (``AETERM1``; an 8-character name loses its last character),
each reported (info); the Dataset-JSON keeps the whole text. Elsewhere (TS/TI have their own rules,
DM, SV, the plain writer) such a value is refused.

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


#: SUPPQUAL columns, as schemas/sdtm/suppqual.csv lists them
SUPP_COLUMNS = ("STUDYID", "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "QNAM", "QLABEL", "QVAL", "QORIG", "QEVAL")
#: QNAM digits: "a one-digit integer, beginning with 1" (SDTMIG 3.4 section 4.5.3.2)
_MAX_PARTS = 9
#: the domains SDTMIG 3.4 section 4.5.3.2 applies to (general-observation-class domains); any other
#: (DM, SV, trial design: TS/TI have their own rules) still refuses a value over 200 characters
GENERAL_CLASSES = frozenset({"Interventions", "Events", "Findings"})


def _text_parts(text: str) -> list[str]:
    """``text`` in pieces of at most 200 characters, each cut at the last space that keeps it within
    200 (the space is the word boundary between the pieces and is not kept), else at 200."""
    parts = []
    while len(text) > XPT_CHAR_MAX:
        cut = text.rfind(" ", 1, XPT_CHAR_MAX + 1)
        if cut > 0:
            parts.append(text[:cut])
            text = text[cut + 1:]
        else:
            parts.append(text[:XPT_CHAR_MAX])
            text = text[XPT_CHAR_MAX:]
    parts.append(text)
    return parts


def _qlabel(label: str, digit: str) -> str:
    """QLABEL of the n-th part: the variable's label and the digit, within 40 characters. (The SDTMIG
    example repeats the label; QNAM/QLABEL must be one-to-one: FDA business rule FDAB009, TB-TEST-PAIR.)"""
    return f"{label[:XPT_LABEL_MAX - 2].rstrip()} {digit}"


def _parent_origin(name: str, dom: Domain) -> str:
    """QORIG of a split variable's SUPP-- records: the parent variable's origin type, as define.xml
    gives it (mappings/submission/derivations.yaml, else Collected)."""
    from ..submission.define import derivation_for
    entry = derivation_for(name, dom.domain)
    return str(entry["origin"]["type"]) if entry else "Collected"


def split_long_text(df: pd.DataFrame, dom: Domain, *, report: ConversionReport | None = None,
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SDTMIG 3.4 section 4.5.3.2 (text strings over 200 characters in general-observation-class
    domains): the first 200 characters stay in the variable, each further 200 go to a SUPP-- record
    whose QNAM is the variable name with 1, 2 ... appended (the last character of an 8-character name
    replaced), QLABEL the variable's label with the same digit (:func:`_qlabel`), QORIG the
    variable's origin, IDVAR/IDVARVAL --SEQ; cut between words. Other domains: unchanged. ASCII text (after
    :func:`to_ascii`). Returns (the frame with the first parts, the SUPP-- rows); each split value is
    reported (rule xpt.long-text, info: nothing is lost)."""
    if dom.domain_class not in GENERAL_CLASSES:
        return df, pd.DataFrame(columns=list(SUPP_COLUMNS))
    seq = f"{dom.domain}SEQ" if f"{dom.domain}SEQ" in df.columns else None
    out = df
    rows: list[dict[str, Any]] = []
    for name in df.columns:
        col = df[name]
        if col.dtype.kind in "biufcmM" or name not in dom.names or dom.var(name).type != "Char":
            continue
        text = col.astype("string")
        long = text.fillna("").str.len() > XPT_CHAR_MAX
        if not long.any():
            continue
        if out is df:
            out = df.copy()
        var = dom.var(name)
        base = name if len(name) < XPT_NAME_MAX else name[:XPT_NAME_MAX - 1]
        origin = _parent_origin(name, dom)
        for i in long.to_numpy().nonzero()[0]:
            parts = _text_parts(str(text.iat[i]))
            key = (f"{df['USUBJID'].iat[i]}/{df[seq].iat[i]}" if seq and "USUBJID" in df.columns
                   else f"{dom.domain} row {i + 1}")
            if len(parts) - 1 > _MAX_PARTS:
                raise XptError(f"{name} value of {len(text.iat[i])} characters needs {len(parts) - 1} "
                               f"SUPP{dom.domain} records; QNAM takes one digit (SDTMIG 3.4 4.5.3.2: at "
                               f"most {_MAX_PARTS})", record=key, field=name)
            out.iat[i, out.columns.get_loc(name)] = parts[0]
            qnams = [f"{base}{k}" for k in range(1, len(parts))]
            for qnam, part in zip(qnams, parts[1:], strict=True):
                rows.append({"STUDYID": df["STUDYID"].iat[i] if "STUDYID" in df.columns else "",
                             "RDOMAIN": dom.domain, "USUBJID": df["USUBJID"].iat[i] if "USUBJID" in df.columns
                             else "", "IDVAR": seq or "", "IDVARVAL": str(df[seq].iat[i]) if seq else "",
                             "QNAM": qnam, "QLABEL": _qlabel(var.label, qnam[-1]), "QVAL": part,
                             "QORIG": origin, "QEVAL": ""})
            if report is not None:
                report.add(Kind.TRUNCATED, f"{name} over {XPT_CHAR_MAX} characters: the XPT holds the first "
                           f"{len(parts[0])} in {name} and the rest in SUPP{dom.domain} {', '.join(qnams)} "
                           f"(SDTMIG 3.4 4.5.3.2, cut between words); the Dataset-JSON keeps the whole text",
                           rule="xpt.long-text", source=f"{dom.domain}.{name}",
                           target=f"supp{dom.domain.lower()}.xpt QVAL", record=key, severity=Severity.INFO)
    return out, pd.DataFrame(rows, columns=list(SUPP_COLUMNS))


def write_xpt(df: pd.DataFrame, domain: str, path: Path, *,
              lengths: Literal["metadata", "data"] = "metadata",
              split_bytes: int | None = None, split_by: str = "USUBJID",
              ascii_report: ConversionReport | None = None, transliterate: bool = False,
              long_text: list[pd.DataFrame] | None = None) -> list[Path]:
    """Write one SDTM domain as XPT v5 (columns, labels, types from ``schemas/sdtm``).

    ``transliterate=True`` spells non-ASCII text in ASCII first (:func:`to_ascii`, reported to
    ``ascii_report``); otherwise non-ASCII text is refused. With ``long_text`` (a list the caller
    writes to the SUPP-- XPT) a value over 200 characters is split (:func:`split_long_text`, reported
    to ``ascii_report``) and its SUPP-- rows appended to it; otherwise it is refused.

    With ``split_bytes`` (e.g. :data:`FDA_MAX_XPT_BYTES`) a dataset estimated larger than that is
    also written as parts in ``split/`` beside ``path``, none larger, whole ``split_by`` groups each.
    """
    dom = load_domain(domain)
    if transliterate:
        df = to_ascii(df, dom.domain, ascii_report)
    if long_text is not None:
        df, supp = split_long_text(df, dom, report=ascii_report)
        if len(supp):
            long_text.append(supp)
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
