"""Subject data rows are written in the order of the domain keys (schemas/sdtm/domains.csv, the
keySequence Define-XML declares); the streamed writer merges sorted chunks (external merge sort)."""

from __future__ import annotations

import csv

import orjson
import pandas as pd
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.sdtm import output
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


def test_chunked_writer_merge_in_blocks_matches_the_in_memory_sort(tmp_path, monkeypatch):
    """Many runs merged a few rows at a time (tiny merge blocks), ties across runs, missing key values,
    a Char value holding "[" or "]" (a run serialised row by row), a Perm column first filled in a
    later chunk (early runs re-serialised), every output form: same rows and order as sorting the whole
    domain in memory, provenance row for row."""
    import random

    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_ROWS", 7)
    monkeypatch.setattr(ChunkedDomainWriter, "MERGE_BLOCK_MIN", 1)
    rnd = random.Random(3)
    chunks = []
    seq = 0
    for c in range(9):
        n = rnd.randint(1, 30)
        rows = []
        for _ in range(n):
            seq += 1
            rows.append({"STUDYID": "S", "DOMAIN": "VS", "USUBJID": rnd.choice(["S-1", "S-2", "S-10", None]),
                         "VSSEQ": seq, "VSTESTCD": rnd.choice(["PULSE", "SYSBP", "DIABP"]),
                         "VSORRES": rnd.choice(["1", "a],[b", "x]"]) if c == 4 else str(seq),
                         "VISITNUM": rnd.choice([1.0, 2, 0.1, None]),
                         "VSTPTNUM": rnd.choice([1, None]) if c >= 5 else None})
        frame = pd.DataFrame(rows)
        if c < 5:
            frame = frame.drop(columns=["VSTPTNUM"])
        chunks.append(frame)
    declined = []   # chunks whose rows are serialised one by one (a Char value holds "[")
    block_rows = output._dumped_rows

    def spy(cols, n):
        got = block_rows(cols, n)
        if len(cols) > 2:   # (the rows, not the companion's two columns)
            declined.append(got is None)
        return got

    monkeypatch.setattr(output, "_dumped_rows", spy)
    w = ChunkedDomainWriter("VS", tmp_path, ("json", "ndjson", "csv", "xpt"), study_oid="S",
                            companion=tmp_path / "vs.provenance.csv")
    for frame in chunks:
        w.write(frame, companion=pd.DataFrame({"USUBJID": frame["USUBJID"], "SEQ": frame["VSSEQ"]}))
    w.close()
    whole = pd.concat(chunks, ignore_index=True)
    want = sort_by_keys(whole, "VS")["VSSEQ"].tolist()
    assert len(w.runs) == 9 and declined[4] and not declined[3] and w.runs[0].sel != w.runs[8].sel
    df, _ = read_dataset_json(tmp_path / "vs.json")
    assert df["VSSEQ"].tolist() == want
    assert "VSTPTNUM" in df.columns and _in_key_order(df, "VS")
    by_seq = whole.set_index("VSSEQ")
    assert df["VSORRES"].tolist() == [by_seq.at[s, "VSORRES"] for s in want]
    nd = (tmp_path / "vs.ndjson").read_bytes().splitlines()
    assert [orjson.loads(line)[3] for line in nd[1:]] == want
    assert pd.read_csv(tmp_path / "vs.csv")["VSSEQ"].tolist() == want
    assert pd.read_sas(tmp_path / "vs.xpt", format="xport", encoding="infer")["VSSEQ"].astype(int).tolist() == want
    with open(tmp_path / "vs.provenance.csv", newline="", encoding="utf-8") as fh:
        assert [int(p["SEQ"]) for p in csv.DictReader(fh)] == want
    assert not list(tmp_path.glob(".*.spool"))
