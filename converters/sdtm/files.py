"""SDTM dataset files in a folder: which files are datasets, which form is read, and reading one.

The one place that says how trialbridge finds and reads SDTM datasets on disk; the trial design reader
(:mod:`.tdm_reader`), the subject reader (:mod:`.reader`) and validate/package/define
(:mod:`trialbridge.submission.datasets`) all go through it and add only what is theirs on top.

**Discovery** (:func:`find_datasets`). A dataset file is named by its dataset: the stem is a SAS name
(1-8 letters, digits, ``_``, starting with a letter) and the suffix one of :data:`FORMS`. Side files
written beside datasets are not datasets: ``dm.provenance.csv`` (not a SAS name), ``report.json`` and
``findings.json`` (:data:`SIDE_FILES`), hidden files. When one dataset is present in several forms
the first of :data:`FORMS` is read and the others are listed in ``DatasetFile.other_forms``:

1. ``json`` -- Dataset-JSON: UTF-8 and typed (dataType, length, labels in the file);
2. ``ndjson`` -- the same content, streamed;
3. ``xpt`` -- SAS transport: typed Char/Num but with no declared encoding (may be Windows-1252);
4. ``csv`` -- untyped text.

**Reading** (:func:`read_dataset_file`). XPT through :func:`.xpt.read_xpt` (UTF-8, else
Windows-1252, which is reported once per file when a report is given), Dataset-JSON through
:func:`.datasetjson.read_dataset_json`, CSV as strings (blank stays ``""``). The result is the
DataFrame as the file holds it plus a :class:`DatasetMeta` with what the file says about its columns;
typing a CSV (define.xml, schemas/sdtm) or cleaning values is the caller's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..report import ConversionReport, Kind

FORMS = ("json", "ndjson", "xpt", "csv")      # preference order, see the module docstring
SAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,7}$")
SIDE_FILES = frozenset({"report.json", "findings.json"})   # SAS-named, but written by trialbridge


@dataclass(frozen=True)
class DatasetFile:
    name: str          # dataset name upper case: DM, LB, SUPPAE, RELREC
    path: Path         # the preferred form
    form: str          # json | ndjson | xpt | csv
    other_forms: tuple[Path, ...] = ()   # the same dataset in less preferred forms, in FORMS order


@dataclass(frozen=True)
class ColumnMeta:
    """What a dataset file says about one column (nothing is inferred here)."""

    name: str
    label: str = ""
    data_type: str | None = None          # Dataset-JSON dataType; None when the file does not say
    sas_type: str | None = None           # XPT Char | Num; None for other forms
    length: int | None = None
    display_format: str | None = None
    key_sequence: int | None = None
    target_data_type: str | None = None   # Dataset-JSON targetDataType


@dataclass(frozen=True)
class DatasetMeta:
    name: str                             # from the file (XPT member, Dataset-JSON name), else the stem
    label: str
    form: str
    columns: tuple[ColumnMeta, ...]       # empty for CSV (a CSV says nothing but names)
    encoding: str = "utf-8"
    header: dict[str, Any] = field(default_factory=dict)   # Dataset-JSON top-level attributes, no rows


def form_of(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def is_dataset_file(path: Path) -> bool:
    """Named like a dataset: SAS-name stem, a known form, not a side file or hidden."""
    return (not path.name.startswith(".") and form_of(path) in FORMS and bool(SAS_NAME.match(path.stem))
            and path.name.lower() not in SIDE_FILES)


def find_datasets(folder: Path) -> dict[str, DatasetFile]:
    """One :class:`DatasetFile` per dataset name in ``folder`` (sorted by name), preferred form first."""
    if not folder.is_dir():
        raise InputError("not a folder of SDTM datasets", file=str(folder))
    by_name: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_dataset_file(p):
            by_name.setdefault(p.stem.upper(), []).append(p)
    out: dict[str, DatasetFile] = {}
    for name, paths in sorted(by_name.items()):
        paths.sort(key=lambda p: FORMS.index(form_of(p)))
        out[name] = DatasetFile(name, paths[0], form_of(paths[0]), tuple(paths[1:]))
    return out


def read_dataset_file(path: Path, report: ConversionReport | None = None) -> tuple[pd.DataFrame, DatasetMeta]:
    """One dataset file -> (DataFrame as the file holds it, what the file says about it)."""
    form = form_of(path)
    if form in ("json", "ndjson"):
        from .datasetjson import read_dataset_json
        df, meta = read_dataset_json(path)
        cols = tuple(ColumnMeta(name=c["name"], label=c.get("label", ""), data_type=c.get("dataType"),
                                length=c.get("length"), display_format=c.get("displayFormat"),
                                key_sequence=c.get("keySequence"), target_data_type=c.get("targetDataType"))
                     for c in meta["columns"])
        return df, DatasetMeta(name=str(meta["name"]).upper(), label=meta.get("label", ""), form=form,
                               columns=cols, header=meta)
    if form == "xpt":
        from .xpt import read_xpt
        df, xmeta = read_xpt(path)
        if xmeta.encoding != "utf-8" and report is not None:
            report.add(Kind.INVALID_VALUE, "XPT text is not UTF-8; read as Windows-1252", source=path.name,
                       file=str(path))
        cols = tuple(ColumnMeta(name=c.name, label=c.label, sas_type=c.type, length=c.length,
                                display_format=c.format) for c in xmeta.columns)
        return df, DatasetMeta(name=xmeta.name.upper(), label=xmeta.label, form=form, columns=cols,
                               encoding=xmeta.encoding)
    if form == "csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise InputError(f"not a readable CSV file ({exc})", file=str(path)) from None
        return df, DatasetMeta(name=path.stem.upper(), label="", form=form, columns=())
    raise InputError("not a dataset file (.xpt, .json, .ndjson, .csv)", file=str(path))
