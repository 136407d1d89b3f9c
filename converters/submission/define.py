"""Define-XML 2.1: write one describing a folder of SDTM datasets, read any, check it against the XSD.

Built with lxml element by element (never string concatenation) from the datasets themselves and the
ONE metadata source: ``schemas/sdtm`` (labels, types, core, codelists, keys, class, structure), the
pinned CDISC CT (codelists with their NCI C-codes, only the terms the data uses),
``mappings/submission/derivations.yaml`` (origins, MethodDefs and CommentDefs for --SEQ, --DY, AGE
...) and, for domains ``schemas/sdtm`` does not describe, ``mappings/submission/domain_classes.csv``.

Value-level metadata: ``--ORRES`` of a findings dataset per ``--TESTCD`` and ``QVAL`` of a SUPP--
dataset per ``QNAM``, each with its def:WhereClauseDef.

**Schema at run time.** The Define-XML 2.1 XSD (with ODM 1.3.2 and its W3C imports) is taken from the
PyPI package ``odmlib``, which ships the CDISC schema set (``odmlib/schemas/define/2.1``); it is an
install requirement, so every define.xml the tool writes is validated as it is written. Set
``TRIALBRIDGE_DEFINE_XSD`` to validate against another copy (the tests also use the official release
package in ``../shared/data``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from lxml import etree

from .. import __version__
from ..errors import ConversionError, InputError
from ..report import ConversionReport, Kind, Severity
from ..safeio import parse_xml, read_bytes, write_bytes_atomic
from ..sdtm.ct import ControlledTerminology, pinned_ct
from ..sdtm.datasetjson import NUMERIC_TYPES, SDTMIG_VERSION, creation_datetime, define_oids, iso8601_column, odm_oid
from ..sdtm.metadata import Domain, domain_rows
from ..sdtm.xpt import XPT_CHAR_MAX
from ..specs import mapping_text, read_csv_rows
from .datasets import Column, Dataset, known_domain, load_folder, read_dataset

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.1"
DEF20_NS = "http://www.cdisc.org/ns/def/v2.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"
NSMAP = {None: ODM_NS, "def": DEF_NS, "xlink": XLINK_NS}
DEFINE_VERSION = "2.1.0"
STD_IG = "STD.SDTMIG.3.4"
STD_CT = "STD.CT.SDTM"
#: Dataset-JSON dataType -> Define-XML ItemDef DataType
DEFINE_DATA_TYPES = {"string": "text", "integer": "integer", "float": "float", "double": "float",
                     "decimal": "float", "date": "date", "datetime": "datetime", "time": "time",
                     "boolean": "text"}
LEAF_FORMS = ("xpt", "json", "ndjson", "csv")
MANDATORY_IDENTIFIERS = {"STUDYID", "DOMAIN", "USUBJID", "RDOMAIN", "QNAM", "QLABEL", "QVAL",
                         "IDVAR", "IDVARVAL", "RELID"}


def _o(tag: str) -> str:
    return f"{{{ODM_NS}}}{tag}"


def _d(tag: str) -> str:
    return f"{{{DEF_NS}}}{tag}"


_oid = odm_oid


# ------------------------------------------------------------------ data-driven tables
@cache
def derivations() -> dict[str, Any]:
    data = yaml.safe_load(mapping_text("submission/derivations.yaml"))
    if not isinstance(data, dict):
        raise ValueError("mappings/submission/derivations.yaml is not a mapping")
    return data


@cache
def fallback_classes() -> dict[str, dict[str, str]]:
    return {r["domain"]: r for r in read_csv_rows(mapping_text("submission/domain_classes.csv"))}


def derivation_for(variable: str, prefix: str, define_class: str | None = None) -> dict[str, Any] | None:
    for entry in derivations()["derived"]:
        if define_class is not None and define_class not in entry.get("classes", [define_class]):
            continue
        for m in entry["match"]:
            name = prefix + m[2:] if m.startswith("--") else m
            if variable == name:
                return entry
    return None


@dataclass(frozen=True)
class DatasetInfo:
    domain: str          # SDTM domain code (QSPH -> QS, SUPPDM -> SUPPDM)
    prefix: str          # variable prefix (--SEQ -> AESEQ)
    define_class: str    # def:Class Name
    structure: str
    keys: tuple[str, ...]
    metadata: Domain | None


def dataset_info(ds: Dataset) -> DatasetInfo:
    name = ds.name
    meta = known_domain(name)
    dom = name
    if "DOMAIN" in ds.frame.columns and len(ds.frame) and not name.startswith("SUPP"):
        first = str(ds.frame["DOMAIN"].iloc[0] or "")
        dom = first or name
    prefix = dom[:2] if not name.startswith(("SUPP", "RELREC")) else ""
    if meta is not None:
        cls = meta.domain_class.upper().replace("-", " ")
        return DatasetInfo(dom, prefix, cls, meta.structure, meta.keys, meta)
    keys = tuple(c.name for c in sorted((c for c in ds.columns if c.key_sequence),
                                        key=lambda c: c.key_sequence or 0))
    head = domain_rows().get("SUPPQUAL" if name.startswith("SUPP") else name)
    if head is not None:   # domain-level metadata even before the variable CSV exists
        return DatasetInfo(dom, prefix, head["class"].upper().replace("-", " "), head["structure"],
                           tuple(head["keys"].split()), None)
    row = fallback_classes().get("SUPPQUAL" if name.startswith("SUPP") else dom) or \
        fallback_classes().get(name)
    if row is None:
        return DatasetInfo(dom, prefix, "FINDINGS" if f"{prefix}TESTCD" in ds.frame.columns
                           else "EVENTS", "One record per observation", keys, None)
    return DatasetInfo(dom, prefix, row["class"], row["structure"], keys, None)


def declared_keys(ds: Dataset, info: DatasetInfo | None = None) -> list[str]:
    """The variables define.xml gives a KeySequence, in order.

    The file's own key sequence (Dataset-JSON ``keySequence``) when it has one: the dataset's
    author chose its natural keys (SDTMIG 3.4 section 3.2.1.1 lets the sponsor do so, e.g. VSPOS
    and VSREPNUM in VS), and the Dataset-JSON copies ``package`` writes keep them, so define.xml
    says the same. Else the schemas/sdtm natural keys the data has.
    """
    own = sorted((c for c in ds.columns if c.key_sequence), key=lambda c: c.key_sequence or 0)
    if own:
        return [c.name for c in own]
    names = {c.name for c in ds.columns}
    return [k for k in (info or dataset_info(ds)).keys if k in names]


@dataclass(frozen=True)
class StudyInfo:
    study_oid: str
    name: str
    description: str
    protocol: str


def study_info(datasets: dict[str, Dataset], study: str | None = None) -> StudyInfo:
    studyid = study
    for ds in datasets.values():
        if studyid is None and "STUDYID" in ds.frame.columns and len(ds.frame):
            studyid = str(ds.frame["STUDYID"].iloc[0])
    studyid = studyid or "STUDY"
    description = f"Study {studyid}"
    ts = datasets.get("TS")
    if ts is not None and {"TSPARMCD", "TSVAL"} <= set(ts.frame.columns):
        title = ts.frame.loc[ts.frame["TSPARMCD"] == "TITLE", "TSVAL"]
        if len(title) and str(title.iloc[0]).strip():
            description = str(title.iloc[0])
    return StudyInfo(study_oid=studyid, name=studyid, description=description, protocol=studyid)


# ------------------------------------------------------------------ building
def _text(parent: etree._Element, tag: str, text: str, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrs)
    tt = etree.SubElement(el, _o("TranslatedText"))
    tt.set(f"{{{XML_NS}}}lang", "en")
    tt.text = text
    return el


def _numeric_length(values: pd.Series, data_type: str) -> tuple[int, int | None]:
    """(Length, SignificantDigits) a numeric column needs (Define-XML: digits, not bytes)."""
    nums = pd.to_numeric(values, errors="coerce").dropna()
    if not len(nums):
        return 1, (0 if data_type != "integer" else None)
    if data_type == "integer":
        return max(len(str(int(v))) for v in nums), None
    texts = [repr(float(v)) for v in nums]
    decimals = max((len(t.split(".")[1]) if "." in t and "e" not in t else 0) for t in texts)
    decimals = 0 if all(t.endswith(".0") for t in texts) else decimals
    integer_digits = max(len(str(int(abs(v)))) for v in nums) + (1 if (nums < 0).any() else 0)
    return integer_digits + decimals + (1 if decimals else 0), decimals


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?")
_ISO_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d+)?")
_ISO_PARTIAL = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?)?)?")


def iso8601_data_type(values: pd.Series, default: str) -> str:
    """Define-XML 2.1 DataType of an ISO 8601 character column, from the values written.

    date / datetime / time when every value is complete in that form; partialDate /
    partialDatetime when values are right-truncated (2020-03, 2020-03-01T10:30) or mix dates and
    date-times; incompleteDatetime when a component in the middle is missing ("2020---15").
    ``default`` for a column without values; "text" when a value is not ISO 8601 at all
    (``validate`` reports it, TB-ISO8601).
    """
    present = values.dropna()
    if not all(isinstance(v, str) for v in present):   # SAS date numbers, not ISO 8601 text
        return default
    text = present.str.strip()
    uniq = [v for v in text.unique() if v]
    if not uniq:
        return default
    for kind, pattern in (("date", _ISO_DATE), ("datetime", _ISO_DATETIME), ("time", _ISO_TIME)):
        if all(pattern.fullmatch(v) for v in uniq):
            return kind
    if all(_ISO_PARTIAL.fullmatch(v) for v in uniq):
        return "partialDatetime" if any("T" in v for v in uniq) else "partialDate"
    from .checks import iso8601_valid  # "-" for a missing component (SDTMIG 3.4 section 4.4)
    if all(iso8601_valid(v) for v in uniq):
        return "incompleteDatetime"
    return "text"


_iso8601_column = iso8601_column


def _char_length(values: pd.Series) -> int:
    text = values.astype("string").fillna("")
    return max(int(text.str.encode("utf-8").str.len().max()) if len(text) else 1, 1)


@dataclass
class _Builder:
    ct: ControlledTerminology
    leaves: dict[str, str]
    value_lists: list[etree._Element] = field(default_factory=list)
    where_clauses: list[etree._Element] = field(default_factory=list)
    item_defs: list[etree._Element] = field(default_factory=list)
    codelist_values: dict[str, set[str]] = field(default_factory=dict)
    numeric_codelists: set[str] = field(default_factory=set)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)

    def item_def(self, oid: str, name: str, label: str, data_type: str, values: pd.Series, *,
                 codelist: str | None, origin: dict[str, str], comment_oid: str | None = None,
                 value_list: str | None = None, display_format: str | None = None) -> None:
        dtype = DEFINE_DATA_TYPES.get(data_type, "text")
        if dtype in ("text", "date", "datetime", "time") and _iso8601_column(name, data_type):
            dtype = iso8601_data_type(values, "datetime" if dtype == "text" else dtype)
        attrs = {"OID": oid, "Name": name, "DataType": dtype}
        if dtype == "text":
            attrs["Length"] = str(_char_length(values))
        elif dtype in ("integer", "float"):
            length, digits = _numeric_length(values, dtype)
            attrs["Length"] = str(length)
            if digits is not None:
                attrs["SignificantDigits"] = str(digits)
        attrs["SASFieldName"] = name[:8]
        if display_format:
            attrs[_d("DisplayFormat")] = display_format
        if comment_oid:
            attrs[_d("CommentOID")] = comment_oid
        el = etree.Element(_o("ItemDef"), attrs)
        _text(el, _o("Description"), label or name)
        if codelist:
            etree.SubElement(el, _o("CodeListRef"), {"CodeListOID": codelist})
        etree.SubElement(el, _d("Origin"), {k: v for k, v in
                                            (("Type", origin.get("type", "Collected")),
                                             ("Source", origin.get("source"))) if v})
        if value_list:
            etree.SubElement(el, _d("ValueListRef"), {"ValueListOID": value_list})
        self.item_defs.append(el)

    def codelist_for(self, ccode: str | None, values: pd.Series, numeric: bool) -> str | None:
        if not ccode:
            return None
        try:
            cl = self.ct.codelist(ccode)
        except KeyError:
            return None
        oid = _oid("CL", cl.short_name)
        used = {str(v) for v in values.dropna().unique() if str(v) != ""}
        if numeric:
            used = {str(int(float(v))) if float(v).is_integer() else str(v) for v in used}
            self.numeric_codelists.add(oid)
        self.codelist_values.setdefault(oid, set()).update(used)
        self.codelist_values.setdefault(f"@{oid}", {ccode})
        return oid


def _origin_for(var: str, info: DatasetInfo, b: _Builder) -> tuple[dict[str, str], str | None,
                                                                      str | None]:
    """(origin, MethodOID, CommentOID) for a variable, from derivations.yaml."""
    entry = derivation_for(var, info.prefix, info.define_class)
    if entry is None:
        default = derivations()["class_default"]
        return dict(default.get(info.define_class, default["*"])), None, None
    method_oid = comment_oid = None
    if entry.get("method"):
        method_oid = _oid("MT", entry["id"])
        b.methods[method_oid] = entry["method"]
    if entry.get("comment"):
        comment_oid = _oid("COM", entry["id"])
        b.comments[comment_oid] = entry["comment"]
    return dict(entry["origin"]), method_oid, comment_oid


def _mandatory(col: Column, info: DatasetInfo) -> str:
    if info.metadata is not None and col.name in info.metadata.names:
        return "Yes" if info.metadata.var(col.name).core == "Req" else "No"
    req = col.name in MANDATORY_IDENTIFIERS or col.name in info.keys or (
        info.prefix and col.name in (f"{info.prefix}SEQ", f"{info.prefix}TESTCD", f"{info.prefix}TEST",
                                     f"{info.prefix}TERM", f"{info.prefix}TRT"))
    return "Yes" if req else "No"


def _value_level(ds: Dataset, info: DatasetInfo, b: _Builder, parent_oid: str, result: str,
                 by: str, origin: dict[str, str]) -> str | None:
    """def:ValueListDef for ``result`` per value of ``by`` (LBORRES per LBTESTCD, QVAL per QNAM)."""
    frame = ds.frame
    if result not in frame.columns or by not in frame.columns or not len(frame):
        return None
    vl_oid = _oid("VL", ds.name, result)
    vl = etree.Element(_d("ValueListDef"), {"OID": vl_oid})
    label_col = {"QNAM": "QLABEL"}.get(by, f"{info.prefix}TEST")
    for order, (key, group) in enumerate(frame.groupby(by, sort=True, dropna=True), start=1):
        key = str(key)
        if not key:
            continue
        item_oid = _oid("IT", ds.name, result, key)
        wc_oid = _oid("WC", ds.name, by, key)
        ref = etree.SubElement(vl, _o("ItemRef"), {"ItemOID": item_oid, "OrderNumber": str(order),
                                                   "Mandatory": "No"})
        etree.SubElement(ref, _d("WhereClauseRef"), {"WhereClauseOID": wc_oid})
        wc = etree.Element(_d("WhereClauseDef"), {"OID": wc_oid})
        rc = etree.SubElement(wc, _o("RangeCheck"), {"Comparator": "EQ", "SoftHard": "Soft",
                                                     _d("ItemOID"): _oid("IT", ds.name, by)})
        etree.SubElement(rc, _o("CheckValue")).text = key
        b.where_clauses.append(wc)
        values = group[result].astype("string").replace("", pd.NA).dropna()
        nums = pd.to_numeric(values, errors="coerce")
        dtype = "string"
        if len(values) and nums.notna().all():
            dtype = "integer" if bool((nums == nums.round()).all()) and not values.str.contains(
                r"\.").any() else "float"
        label = str(group[label_col].iloc[0]) if label_col in group.columns else key
        b.item_def(item_oid, result, f"{label}", dtype if dtype == "string" else dtype,
                   values if len(values) else group[result], codelist=None, origin=origin)
    if not len(vl):
        return None
    b.value_lists.append(vl)
    return vl_oid


def _item_group(mdv: etree._Element, ds: Dataset, b: _Builder) -> etree._Element:
    info = dataset_info(ds)
    trial_design = info.define_class in ("TRIAL DESIGN", "STUDY REFERENCE")
    repeating = "No" if trial_design or info.domain == "DM" else "Yes"
    attrs = {"OID": _oid("IG", ds.name), "Domain": info.domain, "Name": ds.name,
             "Repeating": repeating, "IsReferenceData": "Yes" if trial_design else "No",
             "SASDatasetName": ds.name[:8], _d("Structure"): info.structure,
             "Purpose": "Tabulation", _d("StandardOID"): STD_IG}
    leaf = b.leaves.get(ds.name)
    if leaf:
        attrs[_d("ArchiveLocationID")] = _oid("LF", ds.name)
    ig = etree.SubElement(mdv, _o("ItemGroupDef"), attrs)
    _text(ig, _o("Description"), ds.label or ds.name)
    keys = declared_keys(ds, info)   # numbered 1.. over the keys the data has
    for order, col in enumerate(ds.columns, start=1):
        item_oid = _oid("IT", ds.name, col.name)
        origin, method_oid, comment_oid = _origin_for(col.name, info, b)
        ref = {"ItemOID": item_oid, "OrderNumber": str(order), "Mandatory": _mandatory(col, info)}
        key_seq = (keys.index(col.name) + 1) if col.name in keys else None
        if key_seq:
            ref["KeySequence"] = str(key_seq)
        if method_oid:
            ref["MethodOID"] = method_oid
        var = info.metadata.var(col.name) if info.metadata and col.name in info.metadata.names else None
        if var is not None and var.role:
            ref["Role"] = var.role
        etree.SubElement(ig, _o("ItemRef"), ref)
        values = ds.frame[col.name] if col.name in ds.frame.columns else pd.Series([], dtype=object)
        numeric = col.data_type in NUMERIC_TYPES
        codelist = b.codelist_for(var.codelist if var else None, values, numeric)
        value_list = None
        if info.define_class in ("FINDINGS", "FINDINGS ABOUT") and col.name == f"{info.prefix}ORRES":
            value_list = _value_level(ds, info, b, item_oid, col.name, f"{info.prefix}TESTCD", origin)
        elif ds.name.startswith("SUPP") and col.name == "QVAL":
            value_list = _value_level(ds, info, b, item_oid, "QVAL", "QNAM", origin)
        fmt = col.display_format if col.target_data_type or numeric else None
        b.item_def(item_oid, col.name, col.label, col.data_type, values, codelist=codelist,
                   origin=origin, comment_oid=comment_oid, value_list=value_list,
                   display_format=fmt)
    etree.SubElement(ig, _d("Class"), {"Name": info.define_class})
    if leaf:
        lf = etree.SubElement(ig, _d("leaf"), {"ID": _oid("LF", ds.name), f"{{{XLINK_NS}}}href": leaf})
        etree.SubElement(lf, _d("title")).text = leaf
    return ig


def build_define(datasets: dict[str, Dataset], *, ct: ControlledTerminology | None = None,
                 leaves: dict[str, str] | None = None, study: StudyInfo | None = None,
                 context: str = "Submission") -> etree._ElementTree:
    """The Define-XML 2.1 document for ``datasets`` (``leaves``: dataset name -> file name)."""
    ct = ct or pinned_ct()
    study = study or study_info(datasets)
    leaves = leaves if leaves is not None else {n: d.path.name for n, d in datasets.items()}
    root = etree.Element(_o("ODM"), {
        "ODMVersion": "1.3.2", "FileOID": _oid("DEF", study.study_oid, "SDTM"),
        "FileType": "Snapshot", "CreationDateTime": creation_datetime(),
        "Originator": "trialbridge", "SourceSystem": "trialbridge",
        "SourceSystemVersion": __version__, _d("Context"): context}, nsmap=NSMAP)
    study_oid, mdv_oid = define_oids(study.study_oid)   # the OIDs our Dataset-JSON files carry
    st = etree.SubElement(root, _o("Study"), {"OID": study_oid})
    gv = etree.SubElement(st, _o("GlobalVariables"))
    etree.SubElement(gv, _o("StudyName")).text = study.name
    etree.SubElement(gv, _o("StudyDescription")).text = study.description
    etree.SubElement(gv, _o("ProtocolName")).text = study.protocol
    mdv = etree.SubElement(st, _o("MetaDataVersion"), {
        "OID": mdv_oid,
        "Name": f"Study {study.name}, SDTM data definitions",
        "Description": f"SDTMIG {SDTMIG_VERSION} tabulation datasets written by trialbridge "
                       f"{__version__}", _d("DefineVersion"): DEFINE_VERSION})
    stds = etree.SubElement(mdv, _d("Standards"))
    etree.SubElement(stds, _d("Standard"), {"OID": STD_IG, "Name": "SDTMIG", "Type": "IG",
                                             "Version": SDTMIG_VERSION, "Status": "Final"})
    etree.SubElement(stds, _d("Standard"), {"OID": STD_CT, "Name": "CDISC/NCI", "Type": "CT",
                                             "PublishingSet": "SDTM", "Version": ct.version,
                                             "Status": "Final"})
    b = _Builder(ct=ct, leaves=leaves)
    groups = etree.Element("groups")
    for name in sorted(datasets, key=_dataset_order):
        _item_group(groups, datasets[name], b)
    mdv.extend(b.value_lists)
    mdv.extend(b.where_clauses)
    mdv.extend(list(groups))
    mdv.extend(b.item_defs)
    emitted = set()
    for oid in sorted(k for k in b.codelist_values if not k.startswith("@")):
        ccode = next(iter(b.codelist_values[f"@{oid}"]))
        cl = ct.codelist(ccode)
        el = etree.Element(_o("CodeList"), {
            "OID": oid, "Name": cl.name,
            "DataType": "integer" if oid in b.numeric_codelists else "text",
            _d("StandardOID"): STD_CT})
        for order, value in enumerate(sorted(b.codelist_values[oid]), start=1):
            term = cl.term(value)
            if term is None and not cl.extensible:
                continue   # not a valid value: the validator reports it, the define does not carry it
            item = etree.SubElement(el, _o("EnumeratedItem"), {"CodedValue": value,
                                                               "OrderNumber": str(order)})
            if term is None:
                item.set(_d("ExtendedValue"), "Yes")
            else:
                etree.SubElement(item, _o("Alias"), {"Context": "nci:ExtCodeID", "Name": term.code})
        if not len(el):
            continue   # no valid term used: no codelist (ODM needs one item at least)
        etree.SubElement(el, _o("Alias"), {"Context": "nci:ExtCodeID", "Name": cl.code})
        mdv.append(el)
        emitted.add(oid)
    for item_def in b.item_defs:
        for ref in item_def.findall(_o("CodeListRef")):
            if ref.get("CodeListOID") not in emitted:
                item_def.remove(ref)
    for oid, method in sorted(b.methods.items()):
        mt = etree.SubElement(mdv, _o("MethodDef"), {"OID": oid, "Name": method["name"],
                                                      "Type": method["type"]})
        _text(mt, _o("Description"), " ".join(method["description"].split()))
    for oid, text in sorted(b.comments.items()):
        _text(etree.SubElement(mdv, _d("CommentDef"), {"OID": oid}), _o("Description"), text)
    return etree.ElementTree(root)


def _dataset_order(name: str) -> tuple[int, str]:
    order = {"TRIAL DESIGN": 0, "STUDY REFERENCE": 1, "SPECIAL PURPOSE": 2, "INTERVENTIONS": 3,
             "EVENTS": 4, "FINDINGS": 5, "FINDINGS ABOUT": 6, "RELATIONSHIP": 7}
    key = "SUPPQUAL" if name.startswith("SUPP") else name
    row = domain_rows().get(key) or fallback_classes().get(key)
    cls = row["class"].upper().replace("-", " ") if row else ""
    return order.get(cls, 5), name


def serialize(tree: etree._ElementTree) -> bytes:
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# ------------------------------------------------------------------ schema validation
def define_xsd_path() -> Path:
    """The Define-XML 2.1 XSD used at run time: TRIALBRIDGE_DEFINE_XSD, else odmlib's copy."""
    override = os.environ.get("TRIALBRIDGE_DEFINE_XSD")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("odmlib")   # locate without importing odmlib itself
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the Define-XML 2.1 schema is not available: install odmlib "
                              "(pip install odmlib) or set TRIALBRIDGE_DEFINE_XSD")
    return Path(list(spec.submodule_search_locations)[0]) / "schemas/define/2.1/define2-1-0.xsd"


@cache
def _schema(path: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(path))


def check_define_schema(doc: etree._ElementTree | etree._Element | Path,
                        xsd: Path | None = None) -> list[str]:
    """XSD errors (empty when valid) as 'line N: message'."""
    name = str(doc) if isinstance(doc, Path) else "define.xml"
    if isinstance(doc, Path):
        doc = parse_xml(read_bytes(doc), file=str(doc))
    root = doc.getroot() if isinstance(doc, etree._ElementTree) else doc
    if root.tag != _o("ODM"):
        raise InputError(f"not Define-XML 2.x: root element {root.tag} (Define 1.0 is ODM 1.2; "
                         "not checked against the data)", file=name)
    if xsd is None and DEF20_NS in root.nsmap.values():   # Define-XML 2.0: its own schema
        xsd = define_xsd_path().parent.parent / "2.0" / "define2-0-0.xsd"
    schema = _schema(str(xsd or define_xsd_path()))
    ok = schema.validate(doc)
    return [] if ok else [f"line {e.line}: {e.message}" for e in schema.error_log]


# ------------------------------------------------------------------ writing
def leaves_for_folder(folder: Path, datasets: dict[str, Dataset]) -> dict[str, str]:
    out = {}
    for name, ds in datasets.items():
        files = [ds.path, *ds.other_forms]
        files.sort(key=lambda p: LEAF_FORMS.index(p.suffix.lower().lstrip(".")))
        out[name] = files[0].relative_to(folder).as_posix() if files[0].is_relative_to(folder) \
            else files[0].name
    return out


def write_define(outdir: Path, datasets: dict[str, Dataset], *, ct: ControlledTerminology | None = None,
                 study: str | None = None, leaves: dict[str, str] | None = None,
                 report: ConversionReport | None = None) -> Path:
    """Write ``outdir/define.xml`` for ``datasets``; XSD errors are report errors (or raise)."""
    tree = build_define(datasets, ct=ct, leaves=leaves,
                        study=study_info(datasets, study) if study or datasets else None)
    errors = check_define_schema(tree)
    target = outdir / "define.xml"
    if errors and report is None:
        raise ConversionError("define.xml does not validate against the Define-XML 2.1 schema: "
                              + "; ".join(errors[:5]), file=str(target))
    for err in errors:
        assert report is not None
        report.add(Kind.INVALID_VALUE, f"Define-XML 2.1 schema: {err}", rule="define-xsd",
                   file=str(target), severity=Severity.ERROR)
    write_bytes_atomic(target, serialize(tree))
    return target


def write_define_for_frames(outdir: Path, frames: dict[str, pd.DataFrame], *,
                            ct: ControlledTerminology | None = None, study: str | None = None,
                            form: str = "xpt") -> Path:
    """For writers holding DataFrames: columns and labels from ``schemas/sdtm``."""
    from ..sdtm.datasetjson import dataset_frame
    datasets = {}
    for name, df in frames.items():
        domain, cols = dataset_frame(df, name)
        columns = [Column(name=c, label=domain.var(c).label, data_type=domain.var(c).data_type,
                          key_sequence=domain.keys.index(c) + 1 if c in domain.keys else None)
                   for c in cols]
        datasets[domain.domain] = Dataset(name=domain.domain, label=domain.label,
                                          frame=df.reindex(columns=cols), columns=columns,
                                          path=outdir / f"{name.lower()}.{form}", form=form)
    return write_define(outdir, datasets, ct=ct, study=study)


def write_define_for_folder(folder: Path, report: ConversionReport | None = None, *,
                            ct: ControlledTerminology | None = None) -> Path:
    """Read every dataset in ``folder`` (XPT, Dataset-JSON, NDJSON, CSV) and write its define.xml.

    The CLI calls this after a conversion that wrote SDTM. def:leaf points at the XPT when there
    is one, else the Dataset-JSON file.
    """
    datasets = load_folder(folder)
    if not datasets:
        raise InputError("no datasets (.xpt, .json, .ndjson, .csv) to describe", file=str(folder))
    leaves = leaves_for_folder(folder, datasets)
    as_the_xpt_holds_them(folder, datasets, leaves)
    path = write_define(folder, datasets, ct=ct, leaves=leaves, report=report)
    if report is not None:
        report.outputs.append(str(path))
    return path


def as_the_xpt_holds_them(folder: Path, datasets: dict[str, Dataset], leaves: dict[str, str]) -> None:
    """A dataset whose def:leaf is its XPT but that was read from its Dataset-JSON, with text over 200
    bytes: the XPT holds it split (SDTMIG 3.4 4.5.3.2, :func:`trialbridge.sdtm.xpt.split_long_text`),
    so it and its SUPP-- are described from their XPT files (AETERM's Length is the XPT's, SUPPAE has
    AETERM1 ...), not from the whole text of the Dataset-JSON."""
    for name, ds in list(datasets.items()):
        leaf = leaves.get(name, "")
        if ds.form == "xpt" or not leaf.endswith(".xpt"):
            continue
        text = [c.name for c in ds.columns if c.sas_type == "Char" and c.name in ds.frame.columns]
        if not any((ds.frame[c].astype("string").fillna("").str.len() > XPT_CHAR_MAX).any() for c in text):
            continue
        for n in (name, f"SUPP{name}"):
            xpt = folder / f"{n.lower()}.xpt"
            if xpt.exists():
                datasets[n] = replace(read_dataset(xpt), other_forms=[p for p in (
                    datasets[n].path, *datasets[n].other_forms) if p != xpt] if n in datasets else [])
                leaves[n] = xpt.name


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class DefineItem:
    oid: str
    name: str
    label: str
    data_type: str
    length: int | None
    mandatory: bool
    order: int | None
    key_sequence: int | None
    codelist: str | None
    origin: str | None
    method: str | None
    value_list: str | None


@dataclass(frozen=True)
class DefineDataset:
    oid: str
    name: str
    domain: str | None
    label: str
    structure: str | None
    define_class: str | None
    purpose: str | None
    leaf: str | None
    items: tuple[DefineItem, ...]

    def item(self, name: str) -> DefineItem | None:
        return next((i for i in self.items if i.name == name), None)


@dataclass(frozen=True)
class DefineCodeList:
    oid: str
    name: str
    data_type: str
    ncode: str | None
    values: tuple[str, ...]
    term_codes: dict[str, str]


@dataclass(frozen=True)
class DefineDocument:
    define_version: str
    study_name: str
    standards: tuple[dict[str, str], ...]
    datasets: dict[str, DefineDataset]
    codelists: dict[str, DefineCodeList]
    value_lists: dict[str, tuple[tuple[str, str], ...]]     # VL OID -> ((item OID, where OID), ...)
    methods: dict[str, str]
    comments: dict[str, str]


def _tt(el: etree._Element | None) -> str:
    if el is None:
        return ""
    t = el.find(f"{{{ODM_NS}}}TranslatedText")
    return (t.text or "") if t is not None else ""


def read_define(path: Path) -> DefineDocument:
    """Any Define-XML 2.1 or 2.0 document -> :class:`DefineDocument` (safe parser, no entities)."""
    root = parse_xml(read_bytes(path), file=str(path))
    if root.tag != _o("ODM"):
        raise InputError(f"root element is {root.tag}, not ODM", file=str(path))
    defns = DEF_NS if DEF_NS in root.nsmap.values() else DEF20_NS

    def d(tag: str) -> str:
        return f"{{{defns}}}{tag}"

    mdv = root.find(f"{{{ODM_NS}}}Study/{{{ODM_NS}}}MetaDataVersion")
    if mdv is None:
        raise InputError("no Study/MetaDataVersion", file=str(path))
    study_name = root.findtext(f"{{{ODM_NS}}}Study/{{{ODM_NS}}}GlobalVariables/{{{ODM_NS}}}StudyName")
    item_defs = {el.get("OID"): el for el in mdv.iterfind(_o("ItemDef"))}
    datasets: dict[str, DefineDataset] = {}
    for ig in mdv.iterfind(_o("ItemGroupDef")):
        items = []
        for ref in ig.iterfind(_o("ItemRef")):
            idef = item_defs.get(ref.get("ItemOID"))
            if idef is None:
                raise InputError(f"ItemRef to undefined ItemDef {ref.get('ItemOID')}", file=str(path))
            clr = idef.find(_o("CodeListRef"))
            origin = idef.find(d("Origin"))
            vlr = idef.find(d("ValueListRef"))
            items.append(DefineItem(
                oid=idef.get("OID"), name=idef.get("Name"), label=_tt(idef.find(_o("Description"))),
                data_type=idef.get("DataType"),
                length=int(idef.get("Length")) if idef.get("Length") else None,
                mandatory=ref.get("Mandatory") == "Yes",
                order=int(ref.get("OrderNumber")) if ref.get("OrderNumber") else None,
                key_sequence=int(ref.get("KeySequence")) if ref.get("KeySequence") else None,
                codelist=clr.get("CodeListOID") if clr is not None else None,
                origin=origin.get("Type") if origin is not None else None,
                method=ref.get("MethodOID"),
                value_list=vlr.get("ValueListOID") if vlr is not None else None))
        cls = ig.find(d("Class"))
        leaf = ig.find(d("leaf"))
        name = ig.get("Name")
        datasets[name.upper()] = DefineDataset(
            oid=ig.get("OID"), name=name, domain=ig.get("Domain"),
            label=_tt(ig.find(_o("Description"))), structure=ig.get(d("Structure")),
            define_class=cls.get("Name") if cls is not None else ig.get(d("Class")),
            purpose=ig.get("Purpose"),
            leaf=leaf.get(f"{{{XLINK_NS}}}href") if leaf is not None else None, items=tuple(items))
    codelists = {}
    for cl in mdv.iterfind(_o("CodeList")):
        values, codes = [], {}
        for it in [*cl.iterfind(_o("CodeListItem")), *cl.iterfind(_o("EnumeratedItem"))]:
            values.append(it.get("CodedValue"))
            alias = it.find(_o("Alias"))
            if alias is not None and alias.get("Context") == "nci:ExtCodeID":
                codes[it.get("CodedValue")] = alias.get("Name")
        alias = cl.find(_o("Alias"))
        codelists[cl.get("OID")] = DefineCodeList(
            oid=cl.get("OID"), name=cl.get("Name"), data_type=cl.get("DataType"),
            ncode=alias.get("Name") if alias is not None else None, values=tuple(values),
            term_codes=codes)
    value_lists = {}
    for vl in mdv.iterfind(d("ValueListDef")):
        refs = []
        for ref in vl.iterfind(_o("ItemRef")):
            wcr = ref.find(d("WhereClauseRef"))
            refs.append((ref.get("ItemOID"), wcr.get("WhereClauseOID") if wcr is not None else ""))
        value_lists[vl.get("OID")] = tuple(refs)
    standards = tuple(dict(s.attrib) for s in mdv.iterfind(f"{d('Standards')}/{d('Standard')}"))
    return DefineDocument(
        define_version=mdv.get(d("DefineVersion")) or "", study_name=study_name or "",
        standards=standards, datasets=datasets, codelists=codelists, value_lists=value_lists,
        methods={m.get("OID"): _tt(m.find(_o("Description"))) for m in mdv.iterfind(_o("MethodDef"))},
        comments={c.get("OID"): _tt(c.find(_o("Description"))) for c in mdv.iterfind(d("CommentDef"))})
