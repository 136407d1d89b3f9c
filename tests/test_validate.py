"""`trialbridge validate`: planted defects in copies of real datasets are found, rows named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from trialbridge.cli import main
from trialbridge.submission.checks import check_findings_json, check_table, iso8601_valid, parse_core_issues, validate_folder
from trialbridge.submission.datasets import read_dataset, write_dataset_json_any

from tests.conftest import shared_path


def copy_msg(tmp_path: Path, names: tuple[str, ...]) -> Path:
    src = shared_path("dataset_json", "examples", "sdtm")
    for n in names:
        shutil.copy(src / f"{n}.json", tmp_path / f"{n}.json")
    return tmp_path


def plant(folder: Path, name: str, edit) -> None:
    ds = read_dataset(folder / f"{name}.json")
    edit(ds.frame)
    write_dataset_json_any(ds, folder / f"{name}.json")


def find(result, check: str, dataset: str, variable: str | None = None) -> list[dict]:
    return [f for f in result.to_json()["findings"] if f["check"] == check and
            f.get("dataset") == dataset and (variable is None or f.get("variable") == variable)]


def test_planted_defects_found(tmp_path: Path) -> None:
    folder = copy_msg(tmp_path, ("dm", "ae", "ts", "ti"))
    plant(folder, "dm", lambda f: f.__setitem__("SEX", f["SEX"].mask(f.index == 2, "X")))
    plant(folder, "ae", lambda f: (f.__setitem__("AESEQ", f["AESEQ"].mask(f.index == 1, f["AESEQ"][0])),
                                   f.__setitem__("USUBJID", f["USUBJID"].mask(f.index == 5, "NOSUCH")),
                                   f.__setitem__("AESTDTC", f["AESTDTC"].mask(f.index == 7, "2013-02-30"))))
    plant(folder, "ts", lambda f: (f.__setitem__("TSVAL", f["TSVAL"].mask(f.index == 3, "x" * 201)),
                                   f.__setitem__("TSPARMCD", f["TSPARMCD"].mask(f.index == 4, "TOOLONGCD"))))
    plant(folder, "ti", lambda f: f.__setitem__("IECAT", f["IECAT"].mask(f.index == 0, "BOTH")))
    result = validate_folder(folder)
    check_findings_json(result.to_json())
    [ct] = find(result, "TB-CT", "DM", "SEX")
    assert ct["rows"] == [3] and ct["severity"] == "error" and "values" not in ct
    assert find(result, "TB-CT", "TI", "IECAT")[0]["rows"] == [1]
    [seq] = find(result, "TB-SEQ-DUP", "AE", "AESEQ")
    assert 1 in seq["rows"] and 2 in seq["rows"]
    assert find(result, "TB-DM-SUBJ", "AE", "USUBJID")[0]["rows"] == [6]
    assert find(result, "TB-ISO8601", "AE", "AESTDTC")[0]["rows"] == [8]
    assert find(result, "TB-XPT-LENGTH", "TS", "TSVAL")[0]["rows"] == [4]
    assert find(result, "TB-LENGTH", "TS", "TSPARMCD")[0]["rows"] == [5]
    with_values = result.to_json(report_values=True)
    assert [f for f in with_values["findings"] if f["check"] == "TB-CT" and
            f["dataset"] == "DM"][0]["values"] == ["X"]


def test_clean_copy_has_none_of_the_planted_findings(tmp_path: Path) -> None:
    result = validate_folder(copy_msg(tmp_path, ("dm", "ae", "ts", "ti")))
    checks = {f["check"] for f in result.to_json()["findings"]}
    assert not checks & {"TB-SEQ-DUP", "TB-DM-SUBJ", "TB-ISO8601", "TB-XPT-LENGTH", "TB-LENGTH"}


def test_date_order_and_iso8601() -> None:
    for ok in ("2020", "2020-01", "2020-01-02", "2020-01-02T10:11", "2020---02", "2020-01-02T10:11:12.5"):
        assert iso8601_valid(ok), ok
    for bad in ("2020-13", "2020-02-30", "20200102", "2020-01-02 10:11", "2020-01-02T25"):
        assert not iso8601_valid(bad), bad


def test_stdtc_after_endtc(tmp_path: Path) -> None:
    folder = copy_msg(tmp_path, ("dm", "ae"))
    plant(folder, "ae", lambda f: (f.__setitem__("AESTDTC", f["AESTDTC"].mask(f.index == 0, "2099-01-01")),
                                   f.__setitem__("AEENDTC", f["AEENDTC"].mask(f.index == 0, "2020-01-01"))))
    assert find(validate_folder(folder), "TB-DATE-ORDER", "AE", "AESTDTC")[0]["rows"] == [1]


def test_pilot_xpt_folder_and_define_10(tmp_path: Path) -> None:
    result = validate_folder(shared_path("sdtm", "phuse_cdiscpilot01"))
    doc = result.to_json()
    check_findings_json(doc)
    assert find(result, "TB-XPT-ASCII", "TS", "TSVAL")[0]["rows"] == [9, 14, 29]
    assert any(f["check"] == "TB-DEFINE-XSD" and "Define 1.0" in f["message"] for f in doc["findings"])


def test_msg_define_typo_reported(tmp_path: Path) -> None:
    folder = copy_msg(tmp_path, ("dm",))
    shutil.copy(shared_path("dataset_json", "examples", "sdtm", "define.xml"), folder / "define.xml")
    doc = validate_folder(folder).to_json()
    assert any(f["check"] == "TB-DEFINE-XSD" and "STDTMIG" in f["message"] for f in doc["findings"])
    assert any(f["check"] == "TB-DEFINE-DATASET" and f["dataset"] == "AE" for f in doc["findings"])


def test_cli_core_not_available(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    folder = copy_msg(tmp_path / "d", ("dm", "ts"))
    code = main(["validate", str(folder), "--core", str(tmp_path / "no-core"),
                 "-o", str(tmp_path / "f.json")])
    doc = json.loads((tmp_path / "f.json").read_text())
    check_findings_json(doc)
    assert doc["core"]["status"] == "not-available" and "no CORE engine" in doc["core"]["detail"]
    assert code == (1 if doc["counts"]["error"] else 0)
    assert "CDISC CORE: not-available" in capsys.readouterr().out


def test_core_report_merges() -> None:
    report = {"Issue_Details": [
        {"core_id": "CORE-000001", "message": "AESEQ not unique", "dataset": "ae.xpt",
         "USUBJID": "S-1", "row": 3, "variables": ["AESEQ"], "values": ["1"]},
        {"core_id": "CORE-000001", "message": "AESEQ not unique", "dataset": "ae.xpt",
         "USUBJID": "S-1", "row": 4, "variables": ["AESEQ"], "values": ["1"]}]}
    [f] = parse_core_issues(report)
    assert (f.check, f.dataset, f.variable, f.rows) == ("CORE.CORE-000001", "AE", "AESEQ", [3, 4])
    assert "values" not in f.to_json(report_values=False)


def test_every_check_id_is_documented() -> None:
    source = Path(__file__).resolve().parent.parent / "converters" / "submission" / "checks.py"
    import re
    used = set(re.findall(r'"(TB-[A-Z0-9-]+)"', source.read_text()))
    assert used <= set(check_table()), used - set(check_table())
    assert all(r["severity"] in ("error", "warning", "info") for r in check_table().values())


def test_unreadable_dataset_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "xx.json").write_text("{not json")
    pd.DataFrame({"A": [1]}).to_csv(tmp_path / "yy.csv", index=False)
    doc = validate_folder(tmp_path).to_json()
    assert [f["check"] for f in doc["findings"] if f.get("dataset") == "XX"] == ["TB-READ"]
