"""``trialbridge validate``: conformance checks on a folder of SDTM datasets, ours or anyone's.

The checks are listed as data in ``mappings/submission/checks.csv`` (id, severity, what it checks,
the published rule it is nearest to); each ``check_*`` function here implements one or a few of
them. Findings name the check, dataset, variable and the 1-based row numbers concerned. Subject
values are kept only with ``report_values`` (``--report-values``). The JSON report is checked
against ``schemas/submission/findings.schema.json``.

CDISC CORE: with ``core=PATH`` the CDISC rules engine (``core`` executable, or a source checkout with
``core.py`` run by Python >= 3.12 from ``TRIALBRIDGE_CORE_PYTHON`` or ``python3.12``; its rules cache
is the user's, ``<PATH>/resources/cache`` or ``TRIALBRIDGE_CORE_CACHE``) runs on the same folder and
its issues are merged as ``CORE.<rule id>`` findings. When it is not available the report says so
(``core.status = "not-available"``) and the project's own checks stand alone.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..sdtm.ct import ControlledTerminology, pinned_ct
from ..sdtm.files import find_datasets
from ..sdtm.xpt import GENERAL_CLASSES, XPT_CHAR_MAX, check_xpt_frame
from ..specs import mapping_text, read_csv_rows, schema_text
from .datasets import Dataset, known_domain, read_dataset, xpt_meta
from .define import as_the_xpt_holds_them, check_define_schema, declared_keys, leaves_for_folder, read_define

MAX_ROWS_LISTED = 1000
#: TS parameters the FDA TCG expects in every study (TSPARMCD); SSTDTC has its own (error) check.
FDA_TS_PARAMETERS = ("ADDON", "AGEMAX", "AGEMIN", "LENGTH", "PLANSUB", "RANDOM", "SEXPOP",
                     "STOPRULE", "TBLIND", "TCNTRL", "TDIGRP", "TINDTP", "TITLE", "TPHASE", "TTYPE",
                     "SDTIGVER", "SPONSOR", "STYPE", "ACTSUB", "INTMODEL", "INTTYPE", "NARMS")
ISO8601_RE = re.compile(
    r"^(?P<y>\d{4}|-)(?:-(?P<m>\d{2}|-)(?:-(?P<d>\d{2}|-)(?:T(?P<H>\d{2}|-)(?::(?P<M>\d{2}|-)"
    r"(?::(?P<S>\d{2}(?:\.\d+)?))?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?$")
ISO_DURATION_RE = re.compile(r"^-?P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
                             r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$")


@cache
def check_table() -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in read_csv_rows(mapping_text("submission/checks.csv"))}


@dataclass
class Finding:
    check: str
    message: str
    dataset: str | None = None
    variable: str | None = None
    rows: list[int] = field(default_factory=list)
    values: list[Any] | None = None
    file: str | None = None
    severity: str | None = None      # from checks.csv unless given (CORE findings)

    def to_json(self, report_values: bool) -> dict[str, Any]:
        sev = self.severity or check_table()[self.check]["severity"]
        out: dict[str, Any] = {"check": self.check, "severity": sev, "message": self.message}
        for key in ("dataset", "variable", "file"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.rows:
            out["rows"] = self.rows[:MAX_ROWS_LISTED]
            out["rowCount"] = len(self.rows)
        if report_values and self.values:
            out["values"] = self.values[:MAX_ROWS_LISTED]
        return out


def _rows(mask: pd.Series) -> list[int]:
    return [int(i) + 1 for i in mask.to_numpy().nonzero()[0]]


def _text(series: pd.Series) -> pd.Series:
    return series.astype("string").fillna("").str.strip()


def _finding(check: str, message: str, ds: Dataset, variable: str | None = None,
             mask: pd.Series | None = None, values: pd.Series | None = None) -> Finding:
    if check not in check_table():
        raise KeyError(f"check {check} is not in mappings/submission/checks.csv")
    rows = _rows(mask) if mask is not None else []
    vals = [str(v) for v in values[mask.to_numpy()].tolist()] if values is not None and \
        mask is not None else None
    return Finding(check, message, dataset=ds.name, variable=variable, rows=rows, values=vals,
                   file=str(ds.path))


# ------------------------------------------------------------------ per-dataset checks
def check_variables(ds: Dataset) -> list[Finding]:
    """Required/expected variables present, required not null, types and lengths per metadata."""
    meta = known_domain(ds.name)
    if meta is None:
        return []
    out = []
    frame = ds.frame
    for var in meta.variables:
        if var.name not in frame.columns:
            if var.core == "Req":
                out.append(_finding("TB-REQ-VAR", f"Required variable {var.name} is missing", ds,
                                    var.name))
            elif var.core == "Exp":
                out.append(_finding("TB-EXP-VAR", f"Expected variable {var.name} is missing", ds,
                                    var.name))
            continue
        col = ds.column(var.name)
        numeric_data = col is not None and col.sas_type == "Num"
        if (var.type == "Num") != numeric_data:
            out.append(_finding("TB-TYPE", f"{var.name} is {'Num' if numeric_data else 'Char'} in "
                                f"the data, {var.type} in SDTM metadata", ds, var.name))
        series = frame[var.name]
        if var.core == "Req":
            empty = series.isna() if numeric_data else _text(series) == ""
            if empty.any():
                out.append(_finding("TB-REQ-NULL", f"Required variable {var.name} is null in "
                                    f"{int(empty.sum())} record(s)", ds, var.name, empty))
        if var.type == "Char" and var.length and not numeric_data:
            nbytes = _text(series).str.encode("utf-8").str.len()
            limit = min(var.length, XPT_CHAR_MAX)
            too_long = nbytes > limit
            if too_long.any() and limit < XPT_CHAR_MAX:   # over 200: TB-XPT-LENGTH says it
                out.append(_finding("TB-LENGTH", f"{int(too_long.sum())} value(s) longer than "
                                    f"{limit} (SDTM metadata length)", ds, var.name, too_long,
                                    series))
    return out


def check_xpt_limits(ds: Dataset) -> list[Finding]:
    """What stops the dataset being an FDA XPT v5 file (names, labels, 200 bytes, ASCII)."""
    ids = {"xpt-name": "TB-XPT-NAME", "xpt-label": "TB-XPT-LABEL", "xpt-length": "TB-XPT-LENGTH",
           "xpt-ascii": "TB-XPT-ASCII"}
    out = []
    dom = known_domain(ds.name)
    splits = dom is not None and dom.domain == ds.name and dom.domain_class in GENERAL_CLASSES
    for p in check_xpt_frame(ds.frame, xpt_meta(ds)):
        f = Finding(ids[p.check], p.message, dataset=ds.name, variable=p.variable,
                    rows=list(p.rows), file=str(ds.path))
        if p.check == "xpt-length" and splits and ds.form != "xpt" and p.variable:
            # (a general-observation-class domain: XPT output splits it, SDTMIG 3.4 4.5.3.2)
            f.message += (f"; XPT output (package, --sdtm-format xpt) keeps the first 200 characters in "
                          f"{p.variable} and the rest in SUPP{ds.name} {p.variable[:7]}1, 2 ... (SDTMIG 3.4 4.5.3.2)")
            f.severity = "info"
        if p.variable and p.rows:
            f.values = [str(ds.frame[p.variable].iloc[r - 1]) for r in p.rows[:MAX_ROWS_LISTED]]
        out.append(f)
    if ds.encoding != "utf-8":
        out.append(Finding("TB-XPT-ASCII", f"file is not UTF-8/ASCII; read as {ds.encoding}",
                           dataset=ds.name, file=str(ds.path)))
    return out


def check_ct(ds: Dataset, ct: ControlledTerminology) -> list[Finding]:
    """Values of CT-constrained variables are terms of the codelist (pinned version)."""
    meta = known_domain(ds.name)
    if meta is None:
        return []
    out = []
    for var in meta.variables:
        if not var.codelist or var.name not in ds.frame.columns:
            continue
        try:
            cl = ct.codelist(var.codelist)
        except KeyError:
            continue
        series = ds.frame[var.name]
        text = _text(series)
        col = ds.column(var.name)
        if col is not None and col.sas_type == "Num":
            text = series.map(lambda v: "" if pd.isna(v) else
                              str(int(v)) if float(v).is_integer() else str(v))
        bad = (text != "") & ~text.isin(list(cl.terms))
        if bad.any():
            check = "TB-CT-EXT" if cl.extensible else "TB-CT"
            kind = "extensible" if cl.extensible else "non-extensible"
            out.append(_finding(check, f"{int(bad.sum())} value(s) not in {kind} codelist "
                                f"{cl.short_name} ({cl.code}, CT {ct.version})", ds, var.name, bad,
                                series))
    return out


def _seq_name(ds: Dataset) -> str | None:
    for col in ds.frame.columns:
        if col.endswith("SEQ") and len(col) == 5 and col not in ("TSSEQ",):
            return col
    return None


def check_seq(ds: Dataset) -> list[Finding]:
    seq = _seq_name(ds)
    if seq is None or "USUBJID" not in ds.frame.columns or ds.name.startswith(("SUPP", "RELREC")):
        return []
    keys = [c for c in ("STUDYID", "USUBJID") if c in ds.frame.columns]
    frame = ds.frame[keys + [seq]].copy()
    frame[seq] = pd.to_numeric(frame[seq], errors="coerce")
    dup = frame.duplicated(keep=False) & frame[seq].notna()
    if not dup.any():
        return []
    return [_finding("TB-SEQ-DUP", f"{seq} is not unique within USUBJID ({int(dup.sum())} records)",
                     ds, seq, dup, ds.frame["USUBJID"])]


def check_keys(ds: Dataset, keys: list[str] | None = None) -> list[Finding]:
    """The declared keys identify one record: ``keys`` (define.xml's KeySequence items when the
    folder has a define.xml describing the dataset), else the file's own key sequence, else the
    schemas/sdtm natural keys the data has (what the define.xml trialbridge writes declares)."""
    where = "define.xml KeySequence" if keys is not None else \
        "the file's keySequence" if any(c.key_sequence for c in ds.columns) else \
        "SDTMIG natural keys from schemas/sdtm; the file declares none"
    keys = [k for k in (keys if keys is not None else declared_keys(ds)) if k in ds.frame.columns]
    if len(keys) < 2 or not len(ds.frame):
        return []
    frame = pd.DataFrame({k: _text(ds.frame[k]) if ds.frame[k].dtype == object or
                          pd.api.types.is_string_dtype(ds.frame[k]) else ds.frame[k] for k in keys})
    dup = frame.duplicated(keep=False)
    if not dup.any():
        return []
    first = ds.frame["USUBJID"] if "USUBJID" in ds.frame.columns else None
    return [_finding("TB-KEY-DUP", f"{int(dup.sum())} record(s) share their key values with another "
                     f"record (keys {', '.join(keys)}: {where})", ds, keys[-1], dup, first)]


def declared_define_keys(folder: Path) -> dict[str, list[str]]:
    """Dataset name -> the items folder/define.xml gives a KeySequence (none when it is unreadable:
    check_define reports that)."""
    path = folder / "define.xml"
    if not path.exists():
        return {}
    try:
        doc = read_define(path)
    except (InputError, ValueError):
        return {}
    return {name: [i.name for i in sorted((i for i in dd.items if i.key_sequence),
                                          key=lambda i: i.key_sequence or 0)]
            for name, dd in doc.datasets.items() if any(i.key_sequence for i in dd.items)}


def check_studyid(datasets: dict[str, Dataset]) -> list[Finding]:
    """One study per folder: every dataset's STUDYID is the same single value."""
    values: dict[str, set[str]] = {}
    for ds in datasets.values():
        if "STUDYID" in ds.frame.columns:
            values[ds.name] = set(_text(ds.frame["STUDYID"])) - {""}
    study = next((next(iter(v)) for n, v in sorted(values.items(), key=lambda kv: kv[0] != "DM")
                  if len(v) == 1), None)
    out = []
    for name, found in values.items():
        if study is None or found <= {study}:
            continue
        ds = datasets[name]
        text = _text(ds.frame["STUDYID"])
        bad = (text != "") & (text != study)
        out.append(_finding("TB-STUDYID", f"{int(bad.sum())} record(s) with a STUDYID other than "
                            f"the folder's ({len(found - {study})} other value(s))", ds, "STUDYID",
                            bad, ds.frame["STUDYID"]))
    return out


def check_test_pairs(ds: Dataset) -> list[Finding]:
    """--TESTCD and --TEST (QNAM and QLABEL, --PARMCD and --PARM) are one-to-one."""
    pairs = [("QNAM", "QLABEL")] if ds.name.startswith("SUPP") else \
        [(f"{p}TESTCD", f"{p}TEST") for p in {str(c)[:-6] for c in ds.frame.columns
                                               if str(c).endswith("TESTCD")}] + \
        [(f"{p}PARMCD", f"{p}PARM") for p in {str(c)[:-6] for c in ds.frame.columns
                                               if str(c).endswith("PARMCD")}]
    out = []
    for code, name in pairs:
        if code not in ds.frame.columns or name not in ds.frame.columns:
            continue
        c, n = _text(ds.frame[code]), _text(ds.frame[name])
        both = (c != "") & (n != "")
        names_per_code = n[both].groupby(c[both]).nunique()
        codes_per_name = c[both].groupby(n[both]).nunique()
        bad = both & (c.isin(names_per_code[names_per_code > 1].index) |
                      n.isin(codes_per_name[codes_per_name > 1].index))
        if bad.any():
            out.append(_finding("TB-TEST-PAIR", f"{code} and {name} are not one-to-one in "
                                f"{int(bad.sum())} record(s)", ds, code, bad, ds.frame[code]))
    return out


#: flags SDTMIG 3.4 defines as "Y" or null (never "N"): --BLFL, --LOBXFL, --DRVFL, --EXCLFL, DTHFL
Y_OR_NULL_FLAGS = ("BLFL", "LOBXFL", "DRVFL", "EXCLFL")


def check_y_flags(ds: Dataset) -> list[Finding]:
    """Flags whose values are "Y" or null: an "N" (or anything else) there is not the standard's."""
    out = []
    prefix = ds.name[:2]
    for col in ds.frame.columns:
        name = str(col)
        if not (name == "DTHFL" or (name.startswith(prefix) and name[2:] in Y_OR_NULL_FLAGS)):
            continue
        text = _text(ds.frame[col])
        bad = (text != "") & (text != "Y")
        if bad.any():
            out.append(_finding("TB-FLAG-Y", f"{name} is \"Y\" or null; {int(bad.sum())} other "
                                "value(s)", ds, name, bad, ds.frame[col]))
    return out


def check_te_end(ds: Dataset) -> list[Finding]:
    """TE: every element has an end rule (SDTMIG 3.4 TE: "Either TEENRL or TEDUR must be present for
    each element")."""
    if ds.name != "TE":
        return []
    frame = ds.frame
    empty = pd.Series(True, index=frame.index)
    for col in ("TEENRL", "TEDUR"):
        if col in frame.columns:
            empty &= _text(frame[col]) == ""
    if not empty.any():
        return []
    etcd = frame["ETCD"] if "ETCD" in frame.columns else None
    return [_finding("TB-TE-END", f"{int(empty.sum())} element(s) with neither TEENRL nor TEDUR", ds,
                     "TEENRL", empty, etcd)]


def check_stresn(ds: Dataset) -> list[Finding]:
    """--STRESN is --STRESC in numeric format: same number when both are given, and given when
    --STRESC is a number."""
    out = []
    for col in ds.frame.columns:
        if not (str(col).endswith("STRESN") and len(str(col)) == 8):
            continue
        stresc = str(col)[:-1] + "C"
        if stresc not in ds.frame.columns:
            continue
        text = _text(ds.frame[stresc])
        as_num = pd.to_numeric(text.where(text.str.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"),
                                          None), errors="coerce")
        num = pd.to_numeric(ds.frame[col], errors="coerce")
        differs = num.notna() & (as_num.isna() | ((num - as_num).abs() >
                                                  1e-9 * as_num.abs().clip(lower=1)))
        # a number written with more digits than --STRESC shows (float noise: 129.70000000000002
        # for "129.7") differs too; not in XPT, whose IBM floats cannot hold most decimals exactly
        noisy = pd.Series(False, index=num.index) if ds.form == "xpt" else \
            num.notna() & as_num.notna() & ~differs & (num.map(
            lambda v: repr(float(v)) if pd.notna(v) else "").str.len() >
            text.str.lstrip("+").str.len() + 2)
        missing = num.isna() & as_num.notna()
        for check, mask, what in (
                ("TB-STRESN", differs | noisy, f"{col} is not the number {stresc} writes"),
                ("TB-STRESN-MISSING", missing, f"{col} is null where {stresc} is a number")):
            if mask.any():
                out.append(_finding(check, f"{what} in {int(mask.sum())} record(s)", ds, str(col),
                                    mask, ds.frame[col].astype("string").fillna("") + " / " + text))
    return out


def check_dm_subjects(datasets: dict[str, Dataset]) -> list[Finding]:
    subject_sets = [d for n, d in datasets.items() if n != "DM" and "USUBJID" in d.frame.columns]
    dm = datasets.get("DM")
    if dm is None or "USUBJID" not in dm.frame.columns:
        if subject_sets:
            first = subject_sets[0]
            return [Finding("TB-DM-MISSING", "datasets with USUBJID but no DM dataset",
                            dataset=first.name, file=str(first.path))]
        return []
    known = set(_text(dm.frame["USUBJID"]))
    out = []
    for ds in subject_sets:
        subj = _text(ds.frame["USUBJID"])
        bad = (subj != "") & ~subj.isin(known)
        if bad.any():
            out.append(_finding("TB-DM-SUBJ", f"{int(bad.sum())} record(s) with a USUBJID not in DM "
                                f"({subj[bad].nunique()} subject(s))", ds, "USUBJID", bad,
                                ds.frame["USUBJID"]))
    return out


def iso8601_valid(value: str) -> bool:
    """SDTM ISO 8601 date/time: partial (right-truncated, or '-' for a missing component)."""
    m = ISO8601_RE.match(value)
    if not m:
        return False
    y, mo, d = m.group("y"), m.group("m"), m.group("d")
    if mo and mo != "-" and not 1 <= int(mo) <= 12:
        return False
    if d and d != "-":
        if y == "-" or not mo or mo == "-":
            return 1 <= int(d) <= 31
        try:
            dt.date(int(y), int(mo), int(d))
        except ValueError:
            return False
    hh, mm, ss = m.group("H"), m.group("M"), m.group("S")
    if hh and hh != "-" and int(hh) > 23 or mm and mm != "-" and int(mm) > 59:
        return False
    return not (ss and float(ss) >= 60)


def check_dates(ds: Dataset) -> list[Finding]:
    out = []
    for col in ds.frame.columns:
        if not (col.endswith("DTC") or col.endswith("DUR")):
            continue
        text = _text(ds.frame[col])
        uniq = [v for v in text.unique() if v]
        if col.endswith("DUR"):
            bad_values = {v for v in uniq if not ISO_DURATION_RE.match(v)}
        else:
            bad_values = {v for v in uniq if not iso8601_valid(v)}
        if bad_values:
            bad = text.isin(bad_values)
            out.append(_finding("TB-ISO8601", f"{int(bad.sum())} value(s) not ISO 8601", ds, col,
                                bad, ds.frame[col]))
    for col in ds.frame.columns:
        if not col.endswith("STDTC") or len(col) != 7:
            continue
        end = col[:2] + "ENDTC"
        if end not in ds.frame.columns:
            continue
        st, en = _text(ds.frame[col]), _text(ds.frame[end])
        full = st.str.match(r"^\d{4}-\d{2}-\d{2}") & en.str.match(r"^\d{4}-\d{2}-\d{2}")
        st_day, en_day = st.str[:10], en.str[:10]
        both_times = st.str.match(r"^.{10}T\d{2}:\d{2}") & en.str.match(r"^.{10}T\d{2}:\d{2}")
        later = full & ((st_day > en_day) | ((st_day == en_day) & both_times &
                                             (st.str[:16] > en.str[:16])))
        if later.any():
            out.append(_finding("TB-DATE-ORDER", f"{col} after {end} in {int(later.sum())} "
                                "record(s)", ds, col, later, st))
    return out


def check_ts(datasets: dict[str, Dataset]) -> list[Finding]:
    if not datasets:
        return []
    ts = datasets.get("TS")
    if ts is None:
        first = next(iter(datasets.values()))
        return [Finding("TB-TS-MISSING", "no TS dataset in the folder", file=str(first.path.parent))]
    if "TSPARMCD" not in ts.frame.columns:
        return [_finding("TB-REQ-VAR", "Required variable TSPARMCD is missing", ts, "TSPARMCD")]
    present = set(_text(ts.frame["TSPARMCD"]))
    out = []
    if "SSTDTC" not in present:
        out.append(_finding("TB-TS-SSTDTC", "TS has no SSTDTC (study start date) parameter", ts,
                            "TSPARMCD"))
    missing = [p for p in FDA_TS_PARAMETERS if p not in present]
    if missing:
        out.append(_finding("TB-TS-PARAM", f"TS parameters missing: {', '.join(missing)}", ts,
                            "TSPARMCD"))
    return out


def check_define(folder: Path, datasets: dict[str, Dataset]) -> list[Finding]:
    path = folder / "define.xml"
    if not path.exists():
        return []
    out = []
    try:
        errors = check_define_schema(path)
    except InputError as exc:
        return [Finding("TB-DEFINE-XSD", exc.detail, file=str(path))]
    for err in errors[:50]:
        out.append(Finding("TB-DEFINE-XSD", err, file=str(path)))
    try:
        doc = read_define(path)
    except InputError as exc:
        return [*out, Finding("TB-DEFINE-XSD", exc.detail, file=str(path))]
    for name, ds in datasets.items():
        dd = doc.datasets.get(name)
        if dd is None:
            out.append(_finding("TB-DEFINE-DATASET", f"dataset {name} is not in define.xml", ds))
            continue
        for col in ds.columns:
            item = dd.item(col.name)
            if item is None:
                out.append(_finding("TB-DEFINE-VAR", f"{col.name} is not in define.xml", ds,
                                    col.name))
                continue
            series = ds.frame[col.name]
            if item.length and item.data_type == "text" and col.sas_type == "Char":
                too_long = _text(series).str.encode("utf-8").str.len() > item.length
                if too_long.any():
                    out.append(_finding("TB-DEFINE-LENGTH", f"{int(too_long.sum())} value(s) "
                                        f"longer than define.xml Length {item.length}", ds,
                                        col.name, too_long, series))
            cl = doc.codelists.get(item.codelist or "")
            if cl is not None and cl.values:
                text = _text(series) if col.sas_type == "Char" else series.map(
                    lambda v: "" if pd.isna(v) else str(int(v)) if float(v).is_integer() else str(v))
                bad = (text != "") & ~text.isin(list(cl.values))
                if bad.any():
                    out.append(_finding("TB-DEFINE-CT", f"{int(bad.sum())} value(s) not in "
                                        f"define.xml codelist {cl.oid}", ds, col.name, bad, series))
        data_names = {c.name for c in ds.columns}
        for item in dd.items:
            if item.name not in data_names:
                out.append(_finding("TB-DEFINE-VAR", f"{item.name} is in define.xml but not in "
                                    "the data", ds, item.name))
    for name in doc.datasets:
        if name not in datasets:
            out.append(Finding("TB-DEFINE-DATASET", f"define.xml describes {name}, which is not "
                               "in the folder", dataset=name, file=str(path)))
    return out


# ------------------------------------------------------------------ CDISC CORE
@dataclass
class CoreResult:
    status: str              # not-requested | not-available | ran | failed
    detail: str = ""
    findings: list[Finding] = field(default_factory=list)


def core_command(core: Path) -> list[str]:
    """How to start CORE at ``core``; raises FileNotFoundError saying why it cannot."""
    if core.is_file() and os.access(core, os.X_OK):
        return [str(core)]
    if core.is_dir() and (core / "core.py").is_file():
        python = os.environ.get("TRIALBRIDGE_CORE_PYTHON") or shutil.which("python3.12") or ""
        if not python:
            raise FileNotFoundError("CORE needs Python >= 3.12: none found (set "
                                    "TRIALBRIDGE_CORE_PYTHON)")
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.stdout.strip() != "True":
            raise FileNotFoundError(f"{python} is not Python >= 3.12 (CORE needs it)")
        return [python, str(core / "core.py")]
    if core.is_dir() and (core / "core").is_file():
        return core_command(core / "core")
    raise FileNotFoundError(f"no CORE engine at {core} (expected the core executable or a "
                            "cdisc-rules-engine checkout with core.py)")


def run_core(core: Path, folder: Path, *, timeout: int = 3600) -> CoreResult:
    try:
        cmd = core_command(core)
    except (FileNotFoundError, OSError, subprocess.SubprocessError) as exc:
        return CoreResult("not-available", str(exc))
    base = core if core.is_dir() else core.parent
    cache_dir = Path(os.environ.get("TRIALBRIDGE_CORE_CACHE", base / "resources" / "cache"))
    if not cache_dir.is_dir():
        return CoreResult("not-available", f"no CORE rules cache at {cache_dir} (set "
                          "TRIALBRIDGE_CORE_CACHE)")
    with tempfile.TemporaryDirectory(prefix="trialbridge-core-") as tmp:
        out = Path(tmp) / "core-report"
        args = [*cmd, "validate", "-s", "sdtmig", "-v", "3-4", "-d", str(folder), "-o", str(out),
                "-of", "JSON", "-ca", str(cache_dir)]
        if (folder / "define.xml").exists():
            args += ["-dxp", str(folder / "define.xml")]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                  cwd=str(base), check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return CoreResult("failed", f"CORE did not run: {exc}")
        report = out.with_suffix(".json")
        if proc.returncode != 0 or not report.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [""]
            return CoreResult("failed", f"CORE exited {proc.returncode}: {tail[0][:300]}")
        data = orjson.loads(report.read_bytes())
    return CoreResult("ran", f"CORE {' '.join(cmd)}", parse_core_issues(data))


def parse_core_issues(data: dict[str, Any]) -> list[Finding]:
    """CORE's JSON report ``Issue_Details`` -> findings, one per rule/dataset/variables."""
    groups: dict[tuple[str, str, str, str], Finding] = {}
    for issue in data.get("Issue_Details", []) or []:
        rule = str(issue.get("core_id") or issue.get("rule_id") or "unknown")
        dataset = str(issue.get("dataset") or "").split(".")[0].upper()
        variables = issue.get("variables") or []
        variable = ", ".join(str(v) for v in variables) if isinstance(variables, list) else str(variables)
        message = str(issue.get("message") or "")
        key = (rule, dataset, variable, message)
        f = groups.get(key)
        if f is None:
            f = groups[key] = Finding(f"CORE.{rule}", message, dataset=dataset or None,
                                      variable=variable or None, values=[], severity="error")
        row = issue.get("row")
        if isinstance(row, int) and row >= 1:
            f.rows.append(row)
        if issue.get("values") is not None and f.values is not None:
            f.values.append(issue.get("values"))
    return list(groups.values())


# ------------------------------------------------------------------ the run
@dataclass
class ValidationResult:
    folder: Path
    datasets: dict[str, Dataset]
    findings: list[Finding]
    core: CoreResult
    ct_version: str

    def counts(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity or check_table()[f.check]["severity"]] += 1
        return out

    def to_json(self, report_values: bool = False) -> dict[str, Any]:
        return {
            "findingsVersion": "1.0", "tool": f"trialbridge {__version__}",
            "folder": str(self.folder), "ctVersion": self.ct_version, "sdtmigVersion": "3.4",
            "datasets": [{"name": d.name, "file": d.path.name, "form": d.form,
                          "records": len(d.frame)} for d in self.datasets.values()],
            "core": {"status": self.core.status, **({"detail": self.core.detail}
                                                    if self.core.detail else {})},
            "counts": self.counts(),
            "findings": [f.to_json(report_values) for f in self.findings],
        }


def load_for_validation(folder: Path) -> tuple[dict[str, Dataset], list[Finding]]:
    """Every dataset in the folder; when one is in several forms, each form is read once, the
    preferred form checked; an unreadable file is a finding, not a crash."""
    datasets: dict[str, Dataset] = {}
    findings: list[Finding] = []
    for name, found in find_datasets(folder).items():
        paths = [found.path, *found.other_forms]
        for i, path in enumerate(paths):
            try:
                datasets[name] = read_dataset(path)
            except InputError as exc:
                findings.append(Finding("TB-READ", exc.detail, dataset=name, file=str(path)))
                continue
            datasets[name].other_forms = paths[i + 1:]
            break
    return datasets, findings


def validate_folder(folder: Path, *, ct: ControlledTerminology | None = None,
                    core: Path | None = None) -> ValidationResult:
    ct = ct or pinned_ct()
    datasets, findings = load_for_validation(folder)
    # (as define.xml describes them: a dataset whose Dataset-JSON holds text the XPT beside it splits
    # is checked as the XPT holds it, with its SUPP--)
    as_the_xpt_holds_them(folder, datasets, leaves_for_folder(folder, datasets))
    define_keys = declared_define_keys(folder)
    for name, ds in datasets.items():
        findings += check_variables(ds)
        findings += check_xpt_limits(ds)
        findings += check_ct(ds, ct)
        findings += check_seq(ds)
        findings += check_keys(ds, define_keys.get(name))
        findings += check_test_pairs(ds)
        findings += check_stresn(ds)
        findings += check_y_flags(ds)
        findings += check_te_end(ds)
        findings += check_dates(ds)
    findings += check_studyid(datasets)
    findings += check_dm_subjects(datasets)
    findings += check_ts(datasets)
    findings += check_define(folder, datasets)
    core_result = CoreResult("not-requested")
    if core is not None:
        core_result = run_core(core, folder)
        findings += core_result.findings
        findings.append(Finding("TB-CORE", f"CDISC CORE {core_result.status}"
                                f"{': ' + core_result.detail if core_result.detail else ''}",
                                severity="warning" if core_result.status in
                                ("not-available", "failed") else "info"))
    return ValidationResult(folder, datasets, findings, core_result, ct.version)


@cache
def findings_schema() -> dict[str, Any]:
    return orjson.loads(schema_text("submission/findings.schema.json"))


def check_findings_json(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, findings_schema())
