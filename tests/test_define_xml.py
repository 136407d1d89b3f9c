"""Define-XML 2.1: what we write is valid against the official XSD; the reader reads real defines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lxml import etree
from trialbridge.errors import InputError
from trialbridge.report import ConversionReport
from trialbridge.sdtm.ct import pinned_ct
from trialbridge.submission.datasets import load_folder
from trialbridge.submission.define import (
    build_define,
    check_define_schema,
    leaves_for_folder,
    read_define,
    serialize,
    write_define_for_folder,
)

from tests.conftest import shared_path

D21 = ("trial_submission_studio", "resources", "Define-XML_2.1")


@pytest.fixture(scope="module")
def official_xsd() -> Path:
    return shared_path(*D21, "schema", "cdisc-define-2.1", "define2-1-0.xsd")


@pytest.fixture(scope="module")
def msg_define(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = shared_path("dataset_json", "examples", "sdtm")
    datasets = load_folder(folder)
    tree = build_define(datasets, leaves=leaves_for_folder(folder, datasets))
    out = tmp_path_factory.mktemp("define") / "define.xml"
    out.write_bytes(serialize(tree))
    return out


def test_our_define_validates_against_official_and_runtime_xsd(msg_define: Path,
                                                               official_xsd: Path) -> None:
    assert check_define_schema(msg_define, official_xsd) == []
    assert check_define_schema(msg_define) == []     # odmlib's copy, used at run time


def test_our_define_content(msg_define: Path) -> None:
    doc = read_define(msg_define)
    assert doc.define_version == "2.1.0"
    assert {s["Name"]: s["Version"] for s in doc.standards} == {"SDTMIG": "3.4",
                                                                "CDISC/NCI": pinned_ct().version}
    assert len(doc.datasets) == 28
    lb = doc.datasets["LB"]
    assert lb.define_class == "FINDINGS" and lb.purpose == "Tabulation" and lb.leaf == "lb.xpt"
    assert lb.item("LBORRES").value_list == "VL.LB.LBORRES"
    assert len(doc.value_lists["VL.LB.LBORRES"]) > 10
    assert doc.datasets["SUPPDM"].item("QVAL").value_list == "VL.SUPPDM.QVAL"
    assert doc.datasets["TS"].define_class == "TRIAL DESIGN"
    ct = pinned_ct()
    for cl in doc.codelists.values():                 # C-codes from the pinned CT
        assert ct.codelist(cl.ncode).code == cl.ncode
        for value, code in cl.term_codes.items():
            assert ct.codelist(cl.ncode).term(value).code == code
    seq = doc.datasets["AE"].item("AESEQ")
    assert seq.origin == "Derived" and seq.method == "MT.SEQ" and "MT.SEQ" in doc.methods
    assert "COM.SEQ" in doc.comments
    assert doc.datasets["DM"].item("AGE").method == "MT.AGE"


def test_official_examples_read_back(official_xsd: Path) -> None:
    official = shared_path(*D21, "examples", "DefineXML-2-1-SDTM", "defineV21-SDTM.xml")
    assert check_define_schema(official, official_xsd) == []
    doc = read_define(official)
    assert {"DM", "LB", "TS"} <= set(doc.datasets)
    assert doc.datasets["DM"].leaf == "dm.xpt"
    corrected = shared_path("sas_cst", "standards", "cstdefinexml21", "source", "sample",
                            "sourcexml", "define_msg_sdtm.xml")
    assert check_define_schema(corrected) == []
    assert len(read_define(corrected).datasets) == 31


def test_upstream_typo_is_caught() -> None:
    msg = shared_path("dataset_json", "examples", "sdtm", "define.xml")
    errors = check_define_schema(msg)
    assert len(errors) == 1 and "'STDTMIG' is not an element of the set" in errors[0]
    assert read_define(msg).datasets["DM"].leaf == "dm.xpt"   # still readable


def test_write_define_for_folder(tmp_path: Path) -> None:
    src = shared_path("dataset_json", "examples", "sdtm")
    for name in ("dm.json", "ts.json", "ae.json", "ae.xpt"):
        shutil.copy(src / name, tmp_path / name)
    report = ConversionReport()
    path = write_define_for_folder(tmp_path, report)
    assert path == tmp_path / "define.xml" and str(path) in report.outputs
    assert not report.issues
    doc = read_define(path)
    assert doc.datasets["AE"].leaf == "ae.xpt" and doc.datasets["DM"].leaf == "dm.json"
    assert path.read_bytes() == serialize(build_define(
        load_folder(tmp_path), leaves={"AE": "ae.xpt", "DM": "dm.json", "TS": "ts.json"}))


def test_reader_refuses_entities(tmp_path: Path) -> None:
    evil = tmp_path / "define.xml"
    evil.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                    '<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3">&e;</ODM>')
    with pytest.raises(InputError, match="declares entities"):
        read_define(evil)
    assert etree  # lxml is the only XML library in play
