"""One place finds and reads SDTM dataset files (trialbridge.sdtm.files); every reader agrees with it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from trialbridge.cli import main
from trialbridge.errors import InputError
from trialbridge.report import ConversionReport
from trialbridge.sdtm import files
from trialbridge.sdtm.datasetjson import write_csv, write_dataset_json
from trialbridge.sdtm.reader import find_datasets as reader_find_datasets
from trialbridge.sdtm.tdm_reader import find_domain_files, read_domain_file
from trialbridge.sdtm.xpt import write_xpt
from trialbridge.submission.checks import load_for_validation
from trialbridge.submission.datasets import load_folder

from tests.conftest import DATA

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "NCT04835883"
TS = pd.DataFrame({"STUDYID": ["S1", "S1"], "DOMAIN": ["TS", "TS"], "TSSEQ": [1, 1],
                   "TSPARMCD": ["TITLE", "SEXPOP"], "TSPARM": ["Trial Title", "Sex of Participants"],
                   "TSVAL": ["A study", "BOTH"]})


def _touch(folder: Path, *names: str) -> None:
    for n in names:
        (folder / n).write_text("", encoding="utf-8")


def test_only_dataset_named_files_are_datasets(tmp_path: Path) -> None:
    _touch(tmp_path, "dm.csv", "dm.provenance.csv", "report.json", "findings.json", ".ae.json",
           "define.xml", "roundtrip.json", "NCT04835883.json", "1ab.csv", "lb.txt", "SUPPAE.XPT")
    (tmp_path / "vs.json").mkdir()
    found = files.find_datasets(tmp_path)
    assert list(found) == ["DM", "SUPPAE"]
    assert found["SUPPAE"].form == "xpt"
    assert not files.is_dataset_file(Path("report.json"))
    assert files.is_dataset_file(Path("relrec.ndjson"))


def test_one_preference_order_and_other_forms_listed(tmp_path: Path) -> None:
    _touch(tmp_path, "dm.csv", "dm.xpt", "dm.ndjson", "dm.json", "lb.csv", "lb.xpt", "vs.ndjson", "vs.xpt")
    found = files.find_datasets(tmp_path)
    assert files.FORMS == ("json", "ndjson", "xpt", "csv")
    assert {n: (d.path.name, [p.name for p in d.other_forms]) for n, d in found.items()} == {
        "DM": ("dm.json", ["dm.ndjson", "dm.xpt", "dm.csv"]),
        "LB": ("lb.xpt", ["lb.csv"]),
        "VS": ("vs.ndjson", ["vs.xpt"]),
    }
    # the subject reader takes the same files and reports the others as not read
    report = ConversionReport()
    assert reader_find_datasets(tmp_path, report) == found
    [issue] = report.issues
    assert "dm.ndjson, dm.xpt, dm.csv, lb.csv, vs.xpt" in issue.message
    with pytest.raises(InputError, match="not a folder of SDTM datasets"):
        files.find_datasets(tmp_path / "missing")


def test_every_reader_reads_the_same_form(tmp_path: Path) -> None:
    write_dataset_json(TS, "TS", tmp_path / "ts.ndjson", study_oid="S1", ndjson=True)
    write_xpt(TS, "TS", tmp_path / "ts.xpt")
    write_csv(TS, "TS", tmp_path / "ts.csv")
    (tmp_path / "report.json").write_text('{"issues": []}', encoding="utf-8")   # a side file, not a dataset
    assert find_domain_files(tmp_path) == {"TS": tmp_path / "ts.ndjson"}
    [ds] = load_folder(tmp_path).values()
    assert (ds.form, [p.name for p in ds.other_forms]) == ("ndjson", ["ts.xpt", "ts.csv"])
    datasets, findings = load_for_validation(tmp_path)
    assert not findings and datasets["TS"].form == "ndjson"
    assert datasets["TS"].frame["TSVAL"].tolist() == ["A study", "BOTH"]


def test_csv_is_read_as_strings(tmp_path: Path) -> None:
    write_csv(TS, "TS", tmp_path / "ts.csv")
    df, meta = files.read_dataset_file(tmp_path / "ts.csv")
    assert (meta.name, meta.form, meta.columns) == ("TS", "csv", ())
    assert df["TSSEQ"].tolist() == ["1", "1"]


def test_windows_1252_xpt_reported_once() -> None:
    path = DATA / "sdtm" / "phuse_cdiscpilot01" / "ts.xpt"
    if not path.exists():
        pytest.skip("CDISC pilot data absent")
    report = ConversionReport()
    df, meta = files.read_dataset_file(path, report)
    assert meta.encoding == "windows-1252" and meta.name == "TS"
    assert [c.sas_type for c in meta.columns if c.name == "TSSEQ"] == ["Num"]
    assert [i.message for i in report.issues] == ["XPT text is not UTF-8; read as Windows-1252"]
    report = ConversionReport()
    read_domain_file(path, report)
    assert len(report.issues) == 1


def test_sdtm_subjects_folder_converts_to_fhir(tmp_path: Path) -> None:
    """Regression: report.json beside the datasets was read as Dataset-JSON ("not Dataset-JSON 1.1")."""
    sdtm = tmp_path / "sdtm-subjects"
    assert main(["convert", str(SAMPLE / "subjects.bundle.json"), "--to", "sdtm",
                 "--study", str(SAMPLE / "ctgov.json"), "--output", str(sdtm)]) == 0
    assert (sdtm / "report.json").exists() and (sdtm / "dm.provenance.csv").exists()
    assert main(["convert", str(sdtm), "--to", "fhir", "--output", str(tmp_path / "fhir")]) == 0
    assert list((tmp_path / "fhir").glob("*.bundle.json"))
