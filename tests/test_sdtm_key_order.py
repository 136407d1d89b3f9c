"""Subject data rows are written in the order of the domain keys (schemas/sdtm/domains.csv, the
keySequence Define-XML declares); the streamed writer merges sorted chunks (external merge sort)."""

from __future__ import annotations

import csv

import pandas as pd
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.sdtm.datasetjson import read_dataset_json
from trialbridge.sdtm.metadata import load_domain
from trialbridge.sdtm.output import ChunkedDomainWriter, sort_by_keys


def _in_key_order(df: pd.DataFrame, domain: str) -> bool:
    return sort_by_keys(df, domain).equals(df.reset_index(drop=True))


def test_sample_subject_domains_are_in_key_order(tmp_path):
    sample = SAMPLES / "NCT04835883"
    assert main(["convert", str(sample / "subjects.bundle.json"), "--to", "sdtm", "--study",
                 str(sample / "ctgov.json"), "-o", str(tmp_path)]) == 0
    seen = 0
    for path in sorted(tmp_path.glob("*.json")):
        if path.name == "report.json":
            continue
        df, _ = read_dataset_json(path)
        dom = path.stem.upper()
        keys = [k for k in load_domain(dom).keys if k in df.columns]
        assert len(keys) >= 2, dom
        assert _in_key_order(df, dom), dom
        seen += 1
    assert seen >= 10


def test_chunked_writer_merges_sorted_chunks_with_their_companion_rows(tmp_path):
    chunks = [
        pd.DataFrame({"STUDYID": "S", "DOMAIN": "VS", "USUBJID": ["S-2", "S-1", "S-2"], "VSSEQ": [1, 1, 2],
                      "VSTESTCD": ["PULSE", "SYSBP", "DIABP"], "VISITNUM": [2.0, 1.0, None]}),
        pd.DataFrame({"STUDYID": "S", "DOMAIN": "VS", "USUBJID": ["S-1", "S-3", "S-1"], "VSSEQ": [2, 1, 3],
                      "VSTESTCD": ["DIABP", "PULSE", "SYSBP"], "VISITNUM": [1.0, 1.0, 0.1]}),
        pd.DataFrame({"STUDYID": "S", "DOMAIN": "VS", "USUBJID": ["S-2"], "VSSEQ": [3],
                      "VSTESTCD": ["PULSE"], "VISITNUM": [1.5]}),
    ]
    w = ChunkedDomainWriter("VS", tmp_path, ("json", "csv"), study_oid="S",
                            companion=tmp_path / "vs.provenance.csv")
    for c in chunks:
        w.write(c, companion=pd.DataFrame({"USUBJID": c["USUBJID"], "SEQ": c["VSSEQ"]}))
    w.close()
    df, _ = read_dataset_json(tmp_path / "vs.json")
    assert list(zip(df["USUBJID"], df["VSTESTCD"], df["VISITNUM"], strict=True))[:3] == [
        ("S-1", "DIABP", 1), ("S-1", "SYSBP", 0.1), ("S-1", "SYSBP", 1)]
    assert (df.at[3, "USUBJID"], df.at[3, "VSTESTCD"], pd.isna(df.at[3, "VISITNUM"])) == ("S-2", "DIABP", True)
    assert _in_key_order(df, "VS")
    with open(tmp_path / "vs.provenance.csv", newline="", encoding="utf-8") as fh:
        prov = list(csv.DictReader(fh))
    assert [(p["USUBJID"], int(p["SEQ"])) for p in prov] == list(zip(df["USUBJID"], df["VSSEQ"], strict=True))
    as_csv = pd.read_csv(tmp_path / "vs.csv", dtype=str, keep_default_na=False)
    assert as_csv["VSSEQ"].tolist() == [str(v) for v in df["VSSEQ"]]
    assert not list(tmp_path.glob(".*.spool"))
