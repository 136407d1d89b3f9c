"""Any SDTM dataset on disk (XPT, Dataset-JSON, NDJSON, CSV), ours or anyone's, as one shape.

The validator, the Define-XML writer and the packager read folders through :func:`load_folder`.
Column metadata comes from the file itself (XPT and Dataset-JSON carry names, labels, types and
lengths); a CSV carries none, so it takes them from ``schemas/sdtm`` when the domain is known there
and is otherwise all text. Which files are datasets, the form read when a dataset is present in
several forms (json, ndjson, xpt, csv) and the reading itself are :mod:`trialbridge.sdtm.files`; the
other forms are listed in ``Dataset.other_forms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..sdtm.datasetjson import NUMERIC_TYPES, creation_datetime, dataset_json_cell, define_oids, write_document
from ..sdtm.files import ColumnMeta, find_datasets, read_dataset_file
from ..sdtm.metadata import Domain, load_domain
from ..sdtm.xpt import SAS_DATE_FORMATS, XptColumn, XptMeta


@dataclass(frozen=True)
class Column:
    name: str
    label: str
    data_type: str                   # Dataset-JSON 1.1 dataType
    length: int | None = None
    key_sequence: int | None = None
    display_format: str | None = None
    target_data_type: str | None = None   # Dataset-JSON targetDataType: "integer" = SAS date number

    @property
    def sas_type(self) -> str:
        numeric = self.data_type in NUMERIC_TYPES or self.target_data_type in ("integer", "decimal")
        return "Num" if numeric else "Char"


@dataclass
class Dataset:
    name: str
    label: str
    frame: pd.DataFrame
    columns: list[Column]
    path: Path
    form: str                        # json | ndjson | xpt | csv
    encoding: str = "utf-8"
    header: dict[str, Any] = field(default_factory=dict)   # Dataset-JSON top-level attributes
    other_forms: list[Path] = field(default_factory=list)

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


def known_domain(name: str) -> Domain | None:
    try:
        return load_domain(name)
    except (KeyError, FileNotFoundError):
        return None


def _xpt_data_type(col: ColumnMeta, series: pd.Series, domain: Domain | None) -> str:
    if domain is not None and col.name in domain.names:
        var = domain.var(col.name)
        if (var.type == "Num") == (col.sas_type == "Num"):   # a type conflict stays visible
            return var.data_type
    if col.sas_type == "Char":
        return "string"
    for kind, fmt in SAS_DATE_FORMATS.items():
        if col.display_format and col.display_format.startswith(fmt[:-1]):
            return kind
    values = pd.to_numeric(series, errors="coerce").dropna()
    return "integer" if len(values) and bool((values == values.round()).all()) else "double"


def read_dataset(path: Path) -> Dataset:
    """One dataset file (read by :func:`trialbridge.sdtm.files.read_dataset_file`) with its columns'
    Dataset-JSON metadata; XPT and CSV columns are typed from ``schemas/sdtm`` when the domain is known."""
    df, meta = read_dataset_file(path)
    if meta.form in ("json", "ndjson"):
        cols = [Column(name=c.name, label=c.label, data_type=c.data_type or "string", length=c.length,
                       key_sequence=c.key_sequence, display_format=c.display_format,
                       target_data_type=c.target_data_type) for c in meta.columns]
        return Dataset(name=meta.name, label=meta.label, frame=df, columns=cols, path=path, form=meta.form,
                       header=meta.header)
    if meta.form == "xpt":
        domain = known_domain(meta.name)
        cols = [Column(name=c.name, label=c.label, data_type=_xpt_data_type(c, df[c.name], domain),
                       length=c.length if c.sas_type == "Char" else None, display_format=c.display_format,
                       target_data_type="integer" if c.sas_type == "Num" and _xpt_data_type(
                           c, df[c.name], None) in SAS_DATE_FORMATS else None)
                for c in meta.columns]
        return Dataset(name=meta.name, label=meta.label, frame=df, columns=cols, path=path,
                       form="xpt", encoding=meta.encoding)
    domain = known_domain(meta.name)   # CSV: names only
    cols = []
    for c in df.columns:
        var = domain.var(c) if domain is not None and c in domain.names else None
        dtype = var.data_type if var else "string"
        if dtype in NUMERIC_TYPES:
            df[c] = pd.to_numeric(df[c].replace("", None), errors="coerce")
        cols.append(Column(name=c, label=var.label if var else "", data_type=dtype,
                           length=None if dtype in NUMERIC_TYPES else
                           max([len(v.encode()) for v in df[c]] + [1])))
    return Dataset(name=meta.name, label=domain.label if domain else "", frame=df, columns=cols,
                   path=path, form="csv")


def load_folder(folder: Path) -> dict[str, Dataset]:
    """One :class:`Dataset` per dataset name in ``folder`` (read from its preferred form)."""
    out: dict[str, Dataset] = {}
    for name, found in find_datasets(folder).items():
        paths = [found.path, *found.other_forms]
        try:
            ds = read_dataset(paths[0])
        except InputError:
            if found.form == "json" and len(paths) > 1:
                ds = read_dataset(paths[1])   # a .json that is not Dataset-JSON: try another form
                paths = paths[1:]
            else:
                raise
        ds.other_forms = paths[1:]
        out[name] = ds
    return out


# ------------------------------------------------------------------ writing any dataset
def dataset_json_document(ds: Dataset, *, study_oid: str | None = None,
                          metadata_ref: str | None = None) -> dict[str, Any]:
    """A Dataset-JSON 1.1 document for any dataset, keeping the column metadata it was read with.

    With ``study_oid`` (the STUDYID) the document points at the define.xml trialbridge writes for
    it: studyOID and metaDataVersionOID are that define's, metaDataRef is ``metadata_ref``.
    Without it, the source's own header values are kept.
    """
    rows: list[list[Any]] = []
    kinds = [(c.data_type in NUMERIC_TYPES, c.data_type == "integer") for c in ds.columns]
    frame = ds.frame.reindex(columns=[c.name for c in ds.columns])
    for rec in frame.itertuples(index=False, name=None):
        rows.append([dataset_json_cell(v, n, i) for v, (n, i) in zip(rec, kinds, strict=True)])
    columns = []
    for c in ds.columns:
        col: dict[str, Any] = {"itemOID": f"IT.{ds.name}.{c.name}", "name": c.name, "label": c.label,
                               "dataType": c.data_type}
        if c.length is not None and c.data_type not in NUMERIC_TYPES:
            col["length"] = c.length
        if c.target_data_type:
            col["targetDataType"] = c.target_data_type
        if c.display_format:
            col["displayFormat"] = c.display_format
        if c.key_sequence is not None:
            col["keySequence"] = c.key_sequence
        columns.append(col)
    src = ds.header
    from .. import __version__
    doc: dict[str, Any] = {
        "datasetJSONCreationDateTime": creation_datetime(),
        "datasetJSONVersion": "1.1.0",
        "fileOID": src.get("fileOID", f"{study_oid or 'STUDY'}/{ds.name}"),
        "originator": src.get("originator", "trialbridge"),
        "sourceSystem": src.get("sourceSystem", {"name": "trialbridge", "version": __version__}),
    }
    if src.get("dbLastModifiedDateTime"):   # when the source database last changed: still true of a copy
        doc["dbLastModifiedDateTime"] = src["dbLastModifiedDateTime"]
    if study_oid is not None:
        doc["studyOID"], doc["metaDataVersionOID"] = define_oids(study_oid)
        if metadata_ref:
            doc["metaDataRef"] = metadata_ref
    else:
        doc["studyOID"] = src.get("studyOID", "STUDY")
        doc["metaDataVersionOID"] = src.get("metaDataVersionOID", define_oids("STUDY")[1])
        if src.get("metaDataRef"):
            doc["metaDataRef"] = src["metaDataRef"]
    doc.update({"itemGroupOID": src.get("itemGroupOID", f"IG.{ds.name}"), "records": len(rows),
                "name": ds.name, "label": ds.label, "columns": columns, "rows": rows})
    return doc


def write_dataset_json_any(ds: Dataset, path: Path, *, ndjson: bool = False,
                           study_oid: str | None = None, metadata_ref: str | None = None) -> Path:
    return write_document(dataset_json_document(ds, study_oid=study_oid, metadata_ref=metadata_ref),
                          path, ndjson=ndjson)


def xpt_meta(ds: Dataset) -> XptMeta:
    cols = []
    for c in ds.columns:
        if c.sas_type == "Char":
            cols.append(XptColumn(c.name, c.label, "Char", c.length))
        else:
            fmt = c.display_format or SAS_DATE_FORMATS.get(c.data_type)
            cols.append(XptColumn(c.name, c.label, "Num", 8, fmt))
    return XptMeta(name=ds.name, label=ds.label, columns=tuple(cols), rows=len(ds.frame))
