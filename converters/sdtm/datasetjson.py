"""CDISC Dataset-JSON 1.1 (JSON and NDJSON forms) and CSV for SDTM datasets, driven by schemas/sdtm.

Writers take the column list, order, labels, types and key sequence from the SDTM metadata
(:mod:`trialbridge.sdtm.metadata`); a DataFrame column the metadata does not know is a programming
error, not silently dropped. Char values that are missing are written as ``""`` (as the official
CDISC examples do), numeric missing values as ``null``. Char lengths are the longest value in bytes.
Output is deterministic: ``datasetJSONCreationDateTime`` comes from ``SOURCE_DATE_EPOCH`` when set.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..safeio import atomic_path
from .metadata import Domain, load_domain

DATASET_JSON_VERSION = "1.1.0"
NUMERIC_TYPES = {"integer", "float", "double", "decimal"}
SDTMIG_VERSION = "3.4"
#: where a Dataset-JSON file written beside its datasets finds the define.xml that describes it
DEFINE_FILE = "define.xml"
#: Dataset-JSON 1.1 dataType of an ISO 8601 --DTC column: the enumeration defers to the ODM types
#: ("See ODM types for details"), whose date / datetime / time are complete values; Define-XML 2.1's
#: partialDate / partialDatetime / incompleteDatetime have no Dataset-JSON counterpart, so such a
#: column is "string" (as in the CDISC Dataset-JSON 1.1 SDTM examples: CM's partial CMSTDTC and LB's
#: LBDTC of dates and date-times without seconds are "string", AE's complete dates "date").
DTC_JSON_TYPES = {"date": "date", "datetime": "datetime", "time": "time"}


def iso8601_column(name: str, data_type: str) -> bool:
    """SDTM --DTC variables: ISO 8601 character values (SDTMIG 3.4 section 4.4)."""
    return name.endswith("DTC") and data_type not in NUMERIC_TYPES


def dtc_json_type(define_type: str) -> str:
    """The Dataset-JSON dataType of an ISO 8601 column whose define.xml DataType is ``define_type``."""
    return DTC_JSON_TYPES.get(define_type, "string")


def dtc_json_type_by_lengths(shortest: int, longest: int) -> str:
    """:func:`dtc_json_type` of a column of valid SDTM --DTC values (right-truncated ISO 8601, no
    offset) from its shortest and longest non-empty value: all 'YYYY-MM-DD' is a complete date, all of
    at least 'YYYY-MM-DDThh:mm:ss' complete date-times; anything shorter is partial. (No values: the
    default define.xml gives such a column, datetime.)"""
    if not longest:
        return "datetime"
    if shortest == longest == 10:
        return "date"
    return "datetime" if shortest >= 19 else "string"


def odm_oid(*parts: str) -> str:
    """An ODM OID from parts: joined by ".", characters outside [A-Za-z0-9_-] turned into "_"."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in parts if p)


def define_oids(studyid: str) -> tuple[str, str]:
    """(ODM/Study/@OID, MetaDataVersion/@OID) of the define.xml trialbridge writes for ``studyid``.

    Dataset-JSON 1.1 ``studyOID`` and ``metaDataVersionOID`` are "see ODM definition for
    ODM/Study/@OID" and "ODM/Study/MetaDataVersion/@OID": the Dataset-JSON files and the define.xml
    of one study must carry the same two values, so both writers take them from here.
    """
    return odm_oid("STDY", studyid), odm_oid("MDV", studyid, "SDTMIG", SDTMIG_VERSION)


def creation_datetime() -> str:
    """The UTC time, marked "Z": a time without an offset reads as the reader's local time
    (Dataset-JSON 1.1 datasetJSONCreationDateTime and ODM CreationDateTime allow the offset)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC) if epoch
              else dt.datetime.now(tz=dt.UTC))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def select_columns(df: pd.DataFrame, domain: Domain) -> list[str]:
    """Metadata order; Req/Exp variables always, Perm variables when the frame has them."""
    unknown = [c for c in df.columns if c not in domain.names]
    if unknown:
        raise ValueError(f"{domain.domain}: columns not in schemas/sdtm metadata: {unknown}")
    return [v.name for v in domain.variables if v.core in ("Req", "Exp") or v.name in df.columns]


def dataset_json_cell(value: Any, numeric: bool, integer: bool) -> Any:
    """One Dataset-JSON cell: numeric missing -> null, Char missing -> "" (as the CDISC examples)."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None if numeric else ""
    if numeric:
        f = float(value)
        if integer or (f.is_integer() and abs(f) < 2**53):
            return int(f)
        return f
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def dataset_frame(df: pd.DataFrame, domain_name: str) -> tuple[Domain, list[str]]:
    domain = load_domain(domain_name)
    return domain, select_columns(df, domain)


def build_dataset_json(df: pd.DataFrame, domain_name: str, *, study_oid: str) -> dict[str, Any]:
    """``study_oid``: the STUDYID; the OIDs written are those of the define.xml beside the file."""
    domain, cols = dataset_frame(df, domain_name)
    meta_by_name = {v.name: v for v in domain.variables}
    rows: list[list[Any]] = []
    numeric = [meta_by_name[c].data_type in NUMERIC_TYPES for c in cols]
    integer = [meta_by_name[c].data_type == "integer" for c in cols]
    frame = df.reindex(columns=cols)
    for rec in frame.itertuples(index=False, name=None):
        rows.append([dataset_json_cell(v, n, i) for v, n, i in zip(rec, numeric, integer, strict=True)])
    columns = []
    keys = [k for k in domain.keys if k in cols]   # numbered over the keys written, as define.xml does
    for idx, c in enumerate(cols):
        var = meta_by_name[c]
        col: dict[str, Any] = {"itemOID": f"IT.{domain.domain}.{c}", "name": c, "label": var.label,
                               "dataType": var.data_type}
        if iso8601_column(c, var.data_type):   # the type define.xml gives the values written
            from ..submission.define import iso8601_data_type
            col["dataType"] = dtc_json_type(iso8601_data_type(frame[c], "datetime"))
        if not numeric[idx]:
            longest = max((len(r[idx].encode("utf-8")) for r in rows), default=0)
            col["length"] = max(longest, 1)
        if c in keys:
            col["keySequence"] = keys.index(c) + 1
        columns.append(col)
    return {
        "datasetJSONCreationDateTime": creation_datetime(),
        "datasetJSONVersion": DATASET_JSON_VERSION,
        "fileOID": f"{study_oid}/{domain.domain}",
        "originator": "trialbridge",
        "sourceSystem": {"name": "trialbridge", "version": __version__},
        "studyOID": define_oids(study_oid)[0],
        "metaDataVersionOID": define_oids(study_oid)[1],
        "metaDataRef": DEFINE_FILE,
        "itemGroupOID": f"IG.{domain.domain}",
        "records": len(rows),
        "name": domain.domain,
        "label": domain.label,
        "columns": columns,
        "rows": rows,
    }


def write_dataset_json(df: pd.DataFrame, domain_name: str, path: Path, *, study_oid: str,
                       ndjson: bool = False) -> Path:
    return write_document(build_dataset_json(df, domain_name, study_oid=study_oid), path, ndjson=ndjson)


def write_document(doc: dict[str, Any], path: Path, *, ndjson: bool = False) -> Path:
    """Serialise a Dataset-JSON document: JSON (indented), or NDJSON (metadata line, then a line per row)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if ndjson:
            meta = {k: v for k, v in doc.items() if k != "rows"}
            fh.write(orjson.dumps(meta) + b"\n")
            fh.writelines(orjson.dumps(row) + b"\n" for row in doc.get("rows", ()))
        else:
            fh.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def write_csv(df: pd.DataFrame, domain_name: str, path: Path) -> Path:
    domain, cols = dataset_frame(df, domain_name)
    frame = df.reindex(columns=cols)
    # numbers as the Dataset-JSON file beside it holds them (dataset_json_cell): an integer variable
    # with empty cells is a float column in pandas, and written as such reads "4.0" (TV VISITDY), a whole
    # VISITNUM or CMDOSE "2.0"/"500.0", where Dataset-JSON and the streamed domains' CSV write 4, 2, 500
    for var in domain.variables:
        if var.name in frame.columns and var.data_type in NUMERIC_TYPES:
            integer = var.data_type == "integer"
            frame[var.name] = pd.Series([dataset_json_cell(v, True, integer) for v in frame[var.name].tolist()],
                                        index=frame.index, dtype=object)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return path


def read_dataset_json(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Dataset-JSON 1.1 (``.json`` or ``.ndjson``) -> (DataFrame, metadata without rows)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    try:
        if path.suffix.lower() == ".ndjson":
            lines = [ln for ln in raw.splitlines() if ln.strip()]
            meta = orjson.loads(lines[0])
            rows = [orjson.loads(ln) for ln in lines[1:]]
        else:
            meta = orjson.loads(raw)
            rows = meta.pop("rows", [])
    except (orjson.JSONDecodeError, IndexError) as exc:
        raise InputError(f"not valid Dataset-JSON ({exc})", file=str(path)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("columns"), list):
        raise InputError("not Dataset-JSON: no 'columns' list", file=str(path))
    for key in ("datasetJSONVersion", "itemGroupOID", "name", "label", "records"):
        if key not in meta:
            raise InputError(f"not Dataset-JSON 1.1: required attribute '{key}' missing", file=str(path))
    names = [c.get("name") for c in meta["columns"]]
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(names):
            raise InputError(f"row {i + 1} has {len(row) if isinstance(row, list) else 'no'} values "
                             f"for {len(names)} columns", file=str(path), record=f"row {i + 1}")
    df = pd.DataFrame(rows, columns=names)
    return df, meta
