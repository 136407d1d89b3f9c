"""Value-level review of the submission outputs: what an expert reviewer checks beyond schema validity.

Dataset-JSON 1.1 headers name the define.xml that describes them (studyOID = ODM/Study/@OID,
metaDataVersionOID = ODM/Study/MetaDataVersion/@OID, metaDataRef resolves to it).
"""

from __future__ import annotations

import json
from pathlib import Path

from lxml import etree
from trialbridge.cli import main

from tests.conftest import shared_path

ODM = "{http://www.cdisc.org/ns/odm/v1.3}"
ROOT = Path(__file__).resolve().parents[1]


def _define_oids(define: Path) -> tuple[str, str]:
    root = etree.parse(str(define)).getroot()
    study = root.find(f"{ODM}Study")
    assert study is not None
    mdv = study.find(f"{ODM}MetaDataVersion")
    assert mdv is not None
    return study.get("OID"), mdv.get("OID")


def _assert_headers_name_define(json_file: Path, define: Path) -> None:
    head = json.loads(json_file.read_bytes())
    assert (head["studyOID"], head["metaDataVersionOID"]) == _define_oids(define), json_file.name
    assert (json_file.parent / head["metaDataRef"]).resolve() == define.resolve(), json_file.name


def test_converted_dataset_json_names_its_define(tmp_path: Path) -> None:
    out = tmp_path / "sdtm"
    code = main(["convert", str(ROOT / "samples" / "NCT04835883" / "ctgov.json"), "--to", "sdtm",
                 "--sdtm-format", "json,ndjson", "-o", str(out)])
    assert code == 0
    files = sorted(out.glob("*.json"))
    assert [f.name for f in files if f.name != "report.json"] == [
        "ta.json", "te.json", "ti.json", "ts.json", "tv.json"]
    for f in files:
        if f.name != "report.json":
            _assert_headers_name_define(f, out / "define.xml")
    for f in sorted(out.glob("*.ndjson")):   # the NDJSON metadata line (chunked writer) too
        first = f.read_bytes().split(b"\n", 1)[0]
        head = json.loads(first)
        assert (head["studyOID"], head["metaDataVersionOID"]) == _define_oids(out / "define.xml")
        assert head["metaDataRef"] == "define.xml"


def test_converted_subject_dataset_json_names_its_define(tmp_path: Path) -> None:
    sample = ROOT / "samples" / "NCT04835883"
    out = tmp_path / "subj"
    main(["convert", str(sample / "subjects.bundle.json"), "--to", "sdtm", "--study",
          str(sample / "ctgov.json"), "--test-codes", str(sample / "test_codes.csv"),
          "--sdtm-format", "json", "-o", str(out)])
    for name in ("dm.json", "lb.json", "vs.json", "ae.json"):
        _assert_headers_name_define(out / name, out / "define.xml")


def test_packaged_dataset_json_names_the_package_define(tmp_path: Path) -> None:
    out = tmp_path / "submission"
    main(["package", str(shared_path("dataset_json", "examples", "sdtm")), "-o", str(out)])
    define = out / "m5" / "datasets" / "cdiscpilot01" / "tabulations" / "sdtm" / "define.xml"
    copies = sorted((out / "dataset-json").glob("*.json"))
    assert len(copies) == 28
    for f in copies:   # not the source's MDV.MSGv2.0... nor its metaDataRef "define.xml"
        _assert_headers_name_define(f, define)
