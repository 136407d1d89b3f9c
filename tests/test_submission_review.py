"""Value-level review of the submission outputs: what an expert reviewer checks beyond schema validity.

Dataset-JSON 1.1 headers name the define.xml that describes them (studyOID = ODM/Study/@OID,
metaDataVersionOID = ODM/Study/MetaDataVersion/@OID, metaDataRef resolves to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree
from trialbridge.cli import main

from tests.conftest import shared_path
from tests.test_validate import copy_msg, plant

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
_msg_copy = copy_msg   # (tests/test_validate.py: copy MSG sample datasets, plant a defect)
_plant = plant


def _found(result, check: str, dataset: str) -> list[dict]:
    return [f for f in result.to_json()["findings"] if f["check"] == check and f.get("dataset") == dataset]


REVIEW_CHECKS = {"TB-KEY-DUP", "TB-STUDYID", "TB-TEST-PAIR", "TB-STRESN", "TB-STRESN-MISSING", "TB-FLAG-Y"}


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
    assert "the file's keySequence" in key["message"]   # where the keys come from, said


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


# ------------------------------------------------------------------ define.xml origins and data types
@pytest.fixture(scope="module")
def subject_define(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sample = ROOT / "samples" / "NCT04835883"
    out = tmp_path_factory.mktemp("subj-define")
    main(["convert", str(sample / "subjects.bundle.json"), "--to", "sdtm", "--study", str(sample / "ctgov.json"),
          "--test-codes", str(sample / "test_codes.csv"), "--sdtm-format", "json", "-o", str(out / "subj")])
    main(["convert", str(sample / "ctgov.json"), "--to", "sdtm", "-o", str(out / "td")])
    return out


def _items(define: Path) -> dict[str, tuple[etree._Element, etree._Element | None]]:
    """ItemDef OID -> (ItemDef, the ItemRef that uses it)."""
    root = etree.parse(str(define)).getroot()
    refs = {r.get("ItemOID"): r for r in root.iter(f"{ODM}ItemRef")}
    return {i.get("OID"): (i, refs.get(i.get("OID"))) for i in root.iter(f"{ODM}ItemDef")}


DEF = "{http://www.cdisc.org/ns/def/v2.1}"


def _origin(item: etree._Element) -> str | None:
    o = item.find(f"{DEF}Origin")
    return None if o is None else o.get("Type")


def test_define_origins_of_derived_and_assigned_variables(subject_define: Path) -> None:
    """Define-XML 2.1 def:Origin: EPOCH, --STRESC/--STRESN, the DM reference dates are Derived
    (with a MethodDef), --TEST and --STRESU Assigned, VISITDY from the Protocol (TV) — as the CDISC
    SDTM-MSG define.xml has them — not "Collected by the investigator"; TA.EPOCH stays Protocol."""
    items = _items(subject_define / "subj" / "define.xml")
    expect = {"IT.LB.EPOCH": "Derived", "IT.VS.EPOCH": "Derived", "IT.AE.EPOCH": "Derived",
              "IT.LB.LBSTRESC": "Derived", "IT.LB.LBSTRESN": "Derived", "IT.VS.VSSTRESN": "Derived",
              "IT.LB.LBSTRESU": "Assigned", "IT.LB.LBTEST": "Assigned", "IT.VS.VSTEST": "Assigned",
              "IT.LB.VISITDY": "Protocol", "IT.DM.RFSTDTC": "Derived", "IT.DM.RFXSTDTC": "Derived",
              "IT.DM.RFENDTC": "Derived", "IT.DM.RFXENDTC": "Derived"}
    assert {oid: _origin(items[oid][0]) for oid in expect} == expect
    for oid, (item, ref) in items.items():   # every Derived item has its method
        if _origin(item) == "Derived":
            assert ref is not None and ref.get("MethodOID"), oid
    td = _items(subject_define / "td" / "define.xml")
    assert _origin(td["IT.TA.EPOCH"][0]) == "Protocol"


ISO_DATE = r"\d{4}-\d{2}-\d{2}"
ISO_DATETIME = ISO_DATE + r"T\d{2}:\d{2}:\d{2}(\.\d+)?"


def test_define_data_types_of_iso8601_variables(subject_define: Path) -> None:
    """Define-XML 2.1 ItemDef DataType for ISO 8601 character values: date / datetime when every
    value is complete in that form, partialDate / partialDatetime otherwise — never text (DM's
    dates were "text" with a Length while the other domains' were "datetime")."""
    import re

    from trialbridge.submission.datasets import load_folder
    datasets = load_folder(subject_define / "subj")
    seen = set()
    for oid, (item, _ref) in _items(subject_define / "subj" / "define.xml").items():
        name = item.get("Name")
        if not name.endswith("DTC") or oid.count(".") != 2:
            continue
        ds = datasets[oid.split(".")[1]]
        values = [str(v) for v in ds.frame[name] if v is not None and str(v) not in ("", "nan", "<NA>")]
        dtype = item.get("DataType")
        seen.add(dtype)
        assert dtype in ("date", "datetime", "partialDate", "partialDatetime"), (oid, dtype)
        assert item.get("Length") is None, oid
        if dtype == "date":
            assert all(re.fullmatch(ISO_DATE, v) for v in values), oid
        elif dtype == "datetime":
            assert all(re.fullmatch(ISO_DATETIME, v) for v in values), oid
        elif values:
            assert not all(re.fullmatch(ISO_DATE, v) for v in values), oid
            assert not all(re.fullmatch(ISO_DATETIME, v) for v in values), oid
    assert {"date", "datetime"} <= seen


def test_define_seq_method_says_what_the_pipeline_does(subject_define: Path) -> None:
    """--SEQ is numbered in the order records were read, not in key order (LB rows sorted by key
    carry LBSEQ 9, 19, 37 ...): the MethodDef must not say "in the order of the key variables".
    TSSEQ (a sequence within a TS parameter, no USUBJID) is not that derivation."""
    import json as _json
    root = etree.parse(str(subject_define / "subj" / "define.xml")).getroot()
    [method] = [m for m in root.iter(f"{ODM}MethodDef") if m.get("OID") == "MT.SEQ"]
    text = "".join(method.itertext())
    assert "order the source records were read" in text and "key variables, starting" not in text
    lb = _json.loads((subject_define / "subj" / "lb.json").read_bytes())
    seq = [r[3] for r in lb["rows"] if r[2] == lb["rows"][0][2]]
    assert seq != sorted(seq)      # the statement above is about real output, not a hypothesis
    td = _items(subject_define / "td" / "define.xml")
    ts_item, ts_ref = td["IT.TS.TSSEQ"]
    assert _origin(ts_item) != "Derived" and (ts_ref is None or ts_ref.get("MethodOID") != "MT.SEQ")


def test_packaged_dataset_json_keeps_the_source_header(tmp_path: Path) -> None:
    """The copy keeps what stays true of it: dbLastModifiedDateTime (was dropped), the source's
    fileOID, originator and sourceSystem; the OIDs name the package's define.xml (above)."""
    src = shared_path("dataset_json", "examples", "sdtm")
    out = tmp_path / "submission"
    main(["package", str(src), "-o", str(out)])
    for name in ("lb", "dm", "ts"):
        source = json.loads((src / f"{name}.json").read_bytes())
        copy = json.loads((out / "dataset-json" / f"{name}.json").read_bytes())
        for key in ("dbLastModifiedDateTime", "fileOID", "originator", "sourceSystem", "itemGroupOID",
                    "records", "name", "label"):
            assert copy.get(key) == source.get(key), (name, key)


def test_key_sequence_numbered_over_the_keys_written(tmp_path: Path) -> None:
    """A key variable the dataset does not have (LBSPEC here) leaves no gap: Dataset-JSON keySequence
    1..n over the keys written, the same numbers define.xml's KeySequence gives (both writers)."""
    import pandas as pd
    from trialbridge.sdtm.output import ChunkedDomainWriter, write_domain
    from trialbridge.submission.define import read_define, write_define_for_folder
    frame = pd.DataFrame({"STUDYID": ["S1", "S1"], "DOMAIN": ["LB", "LB"], "USUBJID": ["S1-1", "S1-1"],
                          "LBSEQ": [1, 2], "LBTESTCD": ["HGB", "HGB"], "LBTEST": ["Hemoglobin"] * 2,
                          "VISITNUM": [1.0, 2.0], "LBDTC": ["2020-01-01", "2020-01-08"]})
    plain, chunked = tmp_path / "plain", tmp_path / "chunked"
    plain.mkdir()
    chunked.mkdir()
    write_domain(frame, "LB", plain, ("json",), study_oid="S1")
    w = ChunkedDomainWriter("LB", chunked, ("json",), study_oid="S1")
    w.write(frame)
    w.close()
    for folder in (plain, chunked):
        cols = json.loads((folder / "lb.json").read_bytes())["columns"]
        keys = {c["name"]: c["keySequence"] for c in cols if "keySequence" in c}
        assert keys == {"STUDYID": 1, "USUBJID": 2, "LBTESTCD": 3, "VISITNUM": 4}, folder.name
        write_define_for_folder(folder)
        items = read_define(folder / "define.xml").datasets["LB"].items
        assert {i.name: i.key_sequence for i in items if i.key_sequence} == keys


def test_creation_times_say_they_are_utc(tmp_path: Path) -> None:
    """The clock read is UTC (SOURCE_DATE_EPOCH 1767225600 here): the times written carry "Z"."""
    out = tmp_path / "sdtm"
    main(["convert", str(ROOT / "samples" / "NCT04835883" / "ctgov.json"), "--to", "sdtm", "-o", str(out)])
    assert json.loads((out / "ts.json").read_bytes())["datasetJSONCreationDateTime"] == "2026-01-01T00:00:00Z"
    assert etree.parse(str(out / "define.xml")).getroot().get("CreationDateTime") == "2026-01-01T00:00:00Z"


def test_y_or_null_flags(tmp_path: Path) -> None:
    """--LOBXFL and DTHFL are "Y" or null (SDTMIG 3.4): an "N" is found, row named; "Y" is fine."""
    from trialbridge.submission.checks import validate_folder
    folder = _msg_copy(tmp_path, ("dm", "vs"))
    _plant(folder, "vs", lambda f: f.__setitem__("VSLOBXFL", f["VSLOBXFL"].mask(f.index == 4, "N")))
    _plant(folder, "dm", lambda f: f.__setitem__("DTHFL", f["DTHFL"].mask(f.index == 0, "N")))
    result = validate_folder(folder)
    [vs] = _found(result, "TB-FLAG-Y", "VS")
    [dm] = _found(result, "TB-FLAG-Y", "DM")
    assert vs["rows"] == [5] and dm["rows"] == [1] and vs["severity"] == "warning"


def test_te_elements_have_an_end_rule(tmp_path: Path) -> None:
    """SDTMIG 3.4 TE: "Either TEENRL or TEDUR must be present for each element": the MSG sample's TE
    passes; an element with neither is found, row and ETCD named."""
    from trialbridge.submission.checks import validate_folder
    folder = _msg_copy(tmp_path, ("dm", "te"))
    assert not _found(validate_folder(folder), "TB-TE-END", "TE")

    def drop_end(f):
        f.loc[1, "TEENRL"] = ""
        if "TEDUR" in f.columns:
            f.loc[1, "TEDUR"] = ""
    _plant(folder, "te", drop_end)
    [te] = _found(validate_folder(folder), "TB-TE-END", "TE")
    assert te["rows"] == [2] and te["severity"] == "error"


def _dtc_types(out: Path) -> list[tuple[str, str, str]]:
    """(dataset, --DTC variable, Dataset-JSON dataType) and the define.xml DataType beside them."""
    root = etree.parse(str(out / "define.xml")).getroot()
    define = {d.get("OID"): d.get("DataType") for d in root.iter(f"{ODM}ItemDef")}
    got = []
    for f in sorted(p for p in out.glob("*.json") if p.name != "report.json"):
        head = json.loads(f.read_bytes())
        for c in head["columns"]:
            if c["name"].endswith("DTC"):
                got.append((head["name"], c["name"], c["dataType"], define[c["itemOID"]]))
    return got


@pytest.mark.parametrize("bulk", [False, True])
def test_dataset_json_dtc_types_follow_define(tmp_path: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataset-JSON 1.1 dataType of an ISO 8601 --DTC column is the define.xml DataType of the values
    written when that is date / datetime / time (ODM types, complete values), else "string" (Dataset-JSON
    has no partialDate/partialDatetime; the CDISC 1.1 SDTM examples type CM's partial CMSTDTC "string"):
    the same rule in every domain, DM and the streamed LB/VS too (they were all "string" while AE, CM ...
    were "datetime" whatever the values)."""
    from trialbridge.sdtm.datasetjson import dtc_json_type
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    sample = ROOT / "samples" / "NCT04835883"
    out = tmp_path / "subj"
    if bulk:   # Bulk NDJSON: LB/VS through the typed stream; one partial LBDTC, VS complete date-times
        src = tmp_path / "bulk"
        src.mkdir()
        lab = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory"}]}]
        vit = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs"}]}]

        def obs(i: int, cat: list, loinc: str, eff: str) -> str:
            return json.dumps({"resourceType": "Observation", "id": f"o{i}", "status": "final", "category": cat,
                               "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": eff,
                               "valueQuantity": {"value": 5, "unit": "mg/dL",
                                                 "system": "http://unitsofmeasure.org", "code": "mg/dL"}})
        (src / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1",
                                                        "birthDate": "1970-05-01"}) + "\n")
        (src / "Observation.ndjson").write_text("\n".join(
            [obs(1, lab, "2345-7", "2024-01-02T08:00:00"), obs(2, lab, "2345-7", "2024-02"),
             obs(3, vit, "8867-4", "2024-01-02T08:00:00"), obs(4, vit, "8867-4", "2024-01-03T09:10:11")]) + "\n")
        main(["convert", str(src), "--to", "sdtm", "--studyid", "DJ", "--sdtm-format", "json", "-o", str(out)])
    else:
        main(["convert", str(sample / "subjects.bundle.json"), "--to", "sdtm", "--study",
              str(sample / "ctgov.json"), "--test-codes", str(sample / "test_codes.csv"),
              "--sdtm-format", "json", "-o", str(out)])
    got = _dtc_types(out)
    assert {d for d, *_ in got} >= ({"DM", "LB", "VS"} if bulk else {"DM", "LB", "VS", "AE", "CM"})
    for dataset, name, json_type, define_type in got:
        assert json_type == dtc_json_type(define_type), (dataset, name, json_type, define_type)
    types = {(d, n): t for d, n, t, _ in got}
    if bulk:
        assert types[("LB", "LBDTC")] == "string" and types[("VS", "VSDTC")] == "datetime"
        assert types[("DM", "BRTHDTC")] == "date"
    else:
        assert set(types.values()) - {"string"}, "every --DTC typed string"
