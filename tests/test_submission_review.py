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


# ------------------------------------------------------------------ validate: checks a reviewer expects
def _msg_copy(tmp_path: Path, names: tuple[str, ...]) -> Path:
    import shutil
    src = shared_path("dataset_json", "examples", "sdtm")
    for n in names:
        shutil.copy(src / f"{n}.json", tmp_path / f"{n}.json")
    return tmp_path


def _plant(folder: Path, name: str, edit) -> None:
    from trialbridge.submission.datasets import read_dataset, write_dataset_json_any
    ds = read_dataset(folder / f"{name}.json")
    edit(ds.frame)
    write_dataset_json_any(ds, folder / f"{name}.json")


def _found(result, check: str, dataset: str) -> list[dict]:
    return [f for f in result.to_json()["findings"] if f["check"] == check and f.get("dataset") == dataset]


REVIEW_CHECKS = {"TB-KEY-DUP", "TB-STUDYID", "TB-TEST-PAIR", "TB-STRESN", "TB-STRESN-MISSING"}


def test_review_checks_quiet_on_the_msg_sample(tmp_path: Path) -> None:
    """The CDISC MSG sample's own key sequences identify its records; its pairs and numbers agree."""
    from trialbridge.submission.checks import validate_folder
    folder = _msg_copy(tmp_path, ("dm", "ae", "lb", "vs", "ti", "suppdm"))
    checks = {f["check"] for f in validate_folder(folder).to_json()["findings"]}
    assert not checks & REVIEW_CHECKS, checks & REVIEW_CHECKS


def test_review_checks_find_planted_defects(tmp_path: Path) -> None:
    from trialbridge.submission.checks import check_findings_json, validate_folder
    folder = _msg_copy(tmp_path, ("dm", "ae", "lb", "vs"))

    def lb(f):
        stresc = f["LBSTRESC"].astype("string")
        num = stresc.str.fullmatch(r"\d+\.\d")
        i, j = num[num.fillna(False)].index[:2]
        f.loc[i, "LBSTRESN"] = float(f.loc[i, "LBSTRESC"]) + 2e-14      # 129.70000000000002 for "129.7"
        f.loc[j, "LBSTRESN"] = None                                      # number in STRESC, none in STRESN
        f.loc[3, "LBTEST"] = "Something Else"                           # LBTESTCD with two names

    _plant(folder, "lb", lb)
    _plant(folder, "ae", lambda f: f.__setitem__("STUDYID", f["STUDYID"].mask(f.index == 2, "OTHER")))
    _plant(folder, "vs", lambda f: f.__setitem__("VISITNUM", f["VISITNUM"].mask(f.index == 1, f["VISITNUM"][0])))
    result = validate_folder(folder)
    check_findings_json(result.to_json())
    [noise] = _found(result, "TB-STRESN", "LB")
    [missing] = _found(result, "TB-STRESN-MISSING", "LB")
    assert noise["rowCount"] == 1 and missing["rowCount"] == 1 and noise["severity"] == "error"
    [pair] = _found(result, "TB-TEST-PAIR", "LB")
    assert 4 in pair["rows"]
    [study] = _found(result, "TB-STUDYID", "AE")
    assert study["rows"] == [3]
    [key] = _found(result, "TB-KEY-DUP", "VS")   # rows 1 and 2 now share VS's own key values
    assert key["rows"][:2] == [1, 2] and "VSREPNUM" in key["message"]


def test_packaged_define_keeps_the_source_key_sequence(tmp_path: Path) -> None:
    """define.xml KeySequence = the keys the dataset's author declared (and the Dataset-JSON copy
    keeps), not schemas/sdtm's defaults that do not identify the MSG sample's VS records."""
    from trialbridge.submission.define import read_define
    src = shared_path("dataset_json", "examples", "sdtm")
    out = tmp_path / "submission"
    main(["package", str(src), "-o", str(out)])
    doc = read_define(out / "m5" / "datasets" / "cdiscpilot01" / "tabulations" / "sdtm" / "define.xml")
    for name in ("vs", "lb", "ti", "ae"):
        cols = json.loads((src / f"{name}.json").read_bytes())["columns"]
        own = [c["name"] for c in sorted((c for c in cols if "keySequence" in c),
                                         key=lambda c: c["keySequence"])]
        ds = doc.datasets[name.upper()]
        declared = [i.name for i in sorted((i for i in ds.items if i.key_sequence),
                                           key=lambda i: i.key_sequence or 0)]
        assert declared == own, name
        copy = json.loads((out / "dataset-json" / f"{name}.json").read_bytes())["columns"]
        assert {c["name"]: c["keySequence"] for c in copy if "keySequence" in c} == \
            {i.name: i.key_sequence for i in ds.items if i.key_sequence}
    findings = json.loads((out / "validation" / "findings.json").read_text())["findings"]
    assert not [f for f in findings if f["check"] == "TB-KEY-DUP"]


# ------------------------------------------------------------------ XPT v5 lengths
def _define_lengths(define: Path) -> dict[tuple[str, str], int]:
    from trialbridge.submission.define import read_define
    doc = read_define(define)
    return {(n, i.name): i.length for n, d in doc.datasets.items() for i in d.items
            if i.data_type == "text" and i.length}


def test_converted_xpt_char_lengths_are_the_longest_value(tmp_path: Path) -> None:
    """FDA TCG: a Char column's length is the longest value; the XPT, define.xml Length and the
    Dataset-JSON length say the same (schemas/sdtm's 200 for STUDYID, AETERM ... was written as is)."""
    import pyreadstat
    sample = ROOT / "samples" / "NCT04835883"
    for args in (["convert", str(sample / "ctgov.json")],
                 ["convert", str(sample / "subjects.bundle.json"), "--study", str(sample / "ctgov.json"),
                  "--test-codes", str(sample / "test_codes.csv")]):
        out = tmp_path / args[1].rsplit("/", 1)[-1].split(".")[0]
        main([*args, "--to", "sdtm", "--sdtm-format", "xpt,json", "-o", str(out)])
        lengths = _define_lengths(out / "define.xml")
        xpts = sorted(out.glob("*.xpt"))
        assert xpts
        for x in xpts:
            df, meta = pyreadstat.read_xport(str(x))
            cols = {c["name"]: c for c in json.loads(x.with_suffix(".json").read_bytes())["columns"]}
            for name, kind in meta.readstat_variable_types.items():
                if kind != "string":
                    continue
                longest = max([len(str(v).encode()) for v in df[name] if v is not None] + [1])
                width = meta.variable_storage_width[name]
                # define.xml gives a Length to text items (ISO 8601 date types have none)
                declared = lengths.get((meta.table_name, name), longest)
                assert width == longest == declared == cols[name]["length"], (x.name, name, width, longest)
