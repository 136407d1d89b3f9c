"""General observation class variables (schemas/sdtm/general_classes.csv) as variables of a domain.

SDTM model v2.0 section 3.1 and the SDTMIG 3.4 domain assumptions: identifiers, timing variables and
the qualifiers of a domain's class are permissible in any domain of that class (unless restricted).
A class variable the domain specification omits (CM VISITNUM, MH MHLLT, DS DSLNKID, EX SPDEVID,
VS VSREPNUM, MH MHSTDY) is a legitimate variable of the domain when the data has it: written in
model order, read, typed, checked and described in define.xml; a non-standard variable is still
refused (SUPPQUAL). The FHIR -> SDTM engine derives only the domain's own variables
(``Domain.spec_names``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyreadstat
import pytest
from conftest import shared_path
from trialbridge.sdtm.ct import pinned_ct
from trialbridge.sdtm.metadata import class_variable_rows, known_domains, load_domain
from trialbridge.specs import read_csv_rows, schema_text

GENERAL = ("Interventions", "Events", "Findings")


def test_class_table_lint() -> None:
    rows = class_variable_rows()
    ct = pinned_ct()
    seen: set[tuple[str, str]] = set()
    for r in rows:
        assert r["class"] in ("Identifiers", "Timing", *GENERAL), r
        assert (r["name"], r["class"]) not in seen, r
        seen.add((r["name"], r["class"]))
        assert len(r["name"].replace("--", "XX")) <= 8 and r["name"].replace("--", "").isupper(), r
        assert 0 < len(r["label"]) <= 40, r
        assert r["core"] == "Perm", r          # a class variable is permissible, never required by the model
        assert (r["type"] == "Num") == (r["data_type"] in ("integer", "float", "double", "decimal")), r
        if r["codelist"]:
            assert ct.codelist(r["codelist"]).terms, r     # only codelists of the pinned CT
        assert set(r["not_in"].split()) <= set(known_domains()) | set(GENERAL), r
    names = {n for n, _ in seen}
    # the variables the issue names as permissible in any domain of their class
    assert {"--LNKID", "--LNKGRP", "SPDEVID", "--REFID", "--SPID", "VISITNUM", "VISIT", "VISITDY", "TAETORD",
            "EPOCH", "--DTC", "--DY", "--STDY", "--REPNUM", "--LLT", "--LLTCD", "--PTCD", "--HLT", "--HLTCD",
            "--HLGT", "--HLGTCD", "--BDSYCD", "--SOC", "--SOCCD"} <= names


def test_domain_gains_class_variables_in_model_order() -> None:
    cm = load_domain("CM")
    spec = [r["name"] for r in read_csv_rows(schema_text("sdtm/cm.csv"))]
    assert cm.spec_names == spec
    n = cm.names
    # pilot cm.xpt order: ... CMROUTE, VISITNUM, VISIT, VISITDY, CMDTC ...
    assert n.index("CMROUTE") < n.index("VISITNUM") < n.index("VISIT") < n.index("VISITDY") < n.index("EPOCH")
    assert cm.var("VISITNUM").general and cm.var("VISITNUM").core == "Perm"
    assert cm.var("VISITNUM").role == "Timing" and cm.var("VISITNUM").type == "Num"
    assert not cm.var("CMTRT").general
    mh = load_domain("MH")
    n = mh.names
    # pilot mh.xpt order: MHTERM MHLLT MHDECOD MHHLT MHHLGT MHCAT
    assert n.index("MHTERM") < n.index("MHLLT") < n.index("MHDECOD") < n.index("MHHLT") < n.index("MHHLGT") \
        < n.index("MHCAT")
    assert mh.var("MHSTDY").label == "Study Day of Start of Observation"
    assert mh.var("MHLLTCD").type == "Num"
    ex = load_domain("EX")
    assert ex.names[:5] == ["STUDYID", "DOMAIN", "USUBJID", "SPDEVID", "EXSEQ"]   # MSG ex.json order
    assert "VSREPNUM" in load_domain("VS").names and "DSLNKID" in load_domain("DS").names
    # Events qualifiers are not Interventions or Findings variables; special-purpose domains gain nothing
    assert "CMLLT" not in cm.names and "VSHLT" not in load_domain("VS").names
    # SDTMIG 3.4 AE assumption 10: --OCCUR, --STAT, --REASND are not permitted in AE (they are in MH)
    assert not {"AEOCCUR", "AESTAT", "AEREASND"} & set(load_domain("AE").names)
    assert {"MHOCCUR", "MHSTAT", "MHREASND"} <= set(load_domain("MH").names)
    # SDTM v2.0 3.1.5: --STDTC and --STDY are not in Findings class domains
    assert "VSSTDTC" not in load_domain("VS").names and "LBSTDY" not in load_domain("LB").names
    assert "MHSTDY" in load_domain("MH").names
    for dom in ("DM", "SV", "TS", "TA", "TE", "TV", "TI", "SUPPAE"):
        meta = load_domain(dom)
        assert meta.names == meta.spec_names, dom
    for dom in known_domains():
        try:
            meta = load_domain(dom)
        except FileNotFoundError:
            continue
        assert len(meta.names) == len(set(meta.names)), dom
        assert all(len(v) <= 8 for v in meta.names), dom


def _labels(folder: Path) -> dict[tuple[str, str], str]:
    out = {}
    for f in sorted(folder.glob("*.xpt")):
        _, meta = pyreadstat.read_xport(f, metadataonly=True)
        out.update({(f.stem.upper(), c): lab for c, lab in zip(meta.column_names, meta.column_labels, strict=True)})
    for f in sorted(folder.glob("*.json")):
        if f.stem in ("define",):
            continue
        doc = json.loads(f.read_text("utf-8"))
        out.update({(f.stem.upper(), c["name"]): c["label"] for c in doc.get("columns", ())})
    return out


def test_class_labels_match_real_datasets() -> None:
    """Every class variable a real dataset uses outside its domain specification has the model's label
    (CDISC pilot XPT, SDTMIG 3.1.2; SDTM-MSG v2.0 XPT and Dataset-JSON, SDTMIG 3.3)."""
    labels = {**_labels(shared_path("sdtm", "phuse_cdiscpilot01")),
              **_labels(shared_path("dataset_json", "examples", "sdtm"))}
    compared = set()
    for (ds, col), label in labels.items():
        if ds not in known_domains() or ds.startswith("SUPP"):
            continue
        try:
            meta = load_domain(ds)
        except FileNotFoundError:
            continue
        if col in meta.names and meta.var(col).general:
            assert meta.var(col).label == label, (ds, col, label)
            compared.add(f"{ds}.{col}")
    assert {"CM.VISITNUM", "CM.VISIT", "CM.VISITDY", "MH.MHLLT", "MH.MHHLT", "MH.MHHLGT", "AE.AELNKID",
            "DS.DSLNKID", "EX.SPDEVID", "VS.VSREPNUM", "MH.MHSTDY"} <= compared


def test_writers_take_a_class_variable_and_refuse_a_nonstandard_one(tmp_path: Path) -> None:
    from trialbridge.sdtm.output import write_domain
    from trialbridge.submission.define import write_define_for_frames
    df = pd.DataFrame({"STUDYID": ["S1"], "DOMAIN": ["CM"], "USUBJID": ["S1-001"], "CMSEQ": [1],
                       "CMTRT": ["ASPIRIN"], "VISITNUM": [2.0], "VISIT": ["WEEK 2"], "CMLNKID": ["L1"]})
    write_domain(df, "CM", tmp_path, ("json", "xpt"), study_oid="S1")
    doc = json.loads((tmp_path / "cm.json").read_text("utf-8"))
    cols = {c["name"]: c for c in doc["columns"]}
    names = list(cols)
    assert names.index("CMLNKID") < names.index("CMTRT") < names.index("VISITNUM") < names.index("VISIT")
    assert cols["VISITNUM"]["label"] == "Visit Number" and cols["VISITNUM"]["dataType"] in ("float", "double")
    frame, meta = pyreadstat.read_xport(tmp_path / "cm.xpt")
    assert dict(zip(meta.column_names, meta.column_labels, strict=True))["CMLNKID"] == "Link ID"
    assert frame["VISITNUM"].tolist() == [2.0]
    define = write_define_for_frames(tmp_path, {"CM": df}).read_text("utf-8")
    assert 'ItemOID="IT.CM.VISITNUM"' in define and 'Role="Timing"' in define
    with pytest.raises(ValueError, match="not in schemas/sdtm metadata"):
        write_domain(df.assign(CMXYZ=["?"]), "CM", tmp_path, ("json",), study_oid="S1")


def test_conformance_checks_type_of_a_class_variable(tmp_path: Path) -> None:
    from trialbridge.submission.checks import check_variables
    from trialbridge.submission.datasets import read_dataset
    df = pd.DataFrame({"STUDYID": ["S1"], "DOMAIN": ["VS"], "USUBJID": ["S1-001"], "VSSEQ": [1.0],
                       "VSTESTCD": ["SYSBP"], "VSTEST": ["Systolic Blood Pressure"], "VSREPNUM": ["one"]})
    path = tmp_path / "vs.xpt"
    pyreadstat.write_xport(df, str(path), table_name="VS", file_format_version=5)
    found = {(f.check, f.variable) for f in check_variables(read_dataset(path))}
    assert ("TB-TYPE", "VSREPNUM") in found      # Num in the model, Char in the data


def test_csv_reader_types_class_variables_from_the_schema(tmp_path: Path) -> None:
    """A CSV dataset (no define.xml) is typed from schemas/sdtm, class variables included: the MedDRA
    codes of AE are Num (SDTM v2.0 3.1.2), and text in one is refused like in any Num variable."""
    from trialbridge.errors import InputError
    from trialbridge.sdtm.reader import DatasetFile, read_dataset
    path = tmp_path / "ae.csv"
    pd.DataFrame({"STUDYID": ["S1"], "DOMAIN": ["AE"], "USUBJID": ["S1-001"], "AESEQ": ["1"],
                  "AETERM": ["HEADACHE"], "AELLTCD": ["10019211"], "AELNKID": ["7"]}).to_csv(path, index=False)
    df = read_dataset(DatasetFile("AE", path, "csv"))
    assert df["AELLTCD"].tolist() == [10019211] and df["AELLTCD"].dtype.kind in "if"
    assert df["AELNKID"].tolist() == ["7"]          # Char in the model: the text stays text
    pd.DataFrame({"STUDYID": ["S1"], "DOMAIN": ["AE"], "USUBJID": ["S1-001"], "AESEQ": ["1"],
                  "AETERM": ["HEADACHE"], "AEPTCD": ["headache"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="text in numeric variable AEPTCD"):
        read_dataset(DatasetFile("AE", path, "csv"))
