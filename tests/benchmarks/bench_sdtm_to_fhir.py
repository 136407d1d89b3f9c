"""Benchmark: 1M LB rows (Dataset-JSON NDJSON) -> FHIR R5 Observation NDJSON, streamed in chunks.

Run on demand:
    python -m pytest tests/benchmarks/bench_sdtm_to_fhir.py -m benchmark -s -p no:cacheprovider
Prints rows/s and the peak resident memory of the process, and fails below 100,000 rows/s or at 1 GB.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from trialbridge.fhir.subject_writer import convert_sdtm_to_fhir
from trialbridge.report import ConversionReport

ROWS = 1_000_000
TARGET_ROWS_PER_S = 100_000     # the stated target: fails the run when missed
PEAK_MB = 1024
SUBJECTS = 2_000
TESTS = [("ALB", "Albumin", "g/dL", "3.5", "5.5"), ("GLUC", "Glucose", "mg/dL", "70", "110"),
         ("K", "Potassium", "mEq/L", "3.5", "5.1"), ("HGB", "Hemoglobin", "g/dL", "12", "16"),
         ("WBC", "Leukocytes", "10^9/L", "4", "11")]
COLS = ["STUDYID", "DOMAIN", "USUBJID", "LBSEQ", "LBTESTCD", "LBTEST", "LBCAT", "LBORRES", "LBORRESU",
        "LBORNRLO", "LBORNRHI", "LBSTRESC", "LBSTRESN", "LBSTRESU", "LBNRIND", "VISITNUM", "VISIT", "LBDTC"]
TYPES = {"LBSEQ": "integer", "LBSTRESN": "float", "VISITNUM": "float"}


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    meta = {"datasetJSONCreationDateTime": "2026-01-01T00:00:00", "datasetJSONVersion": "1.1.0",
            "itemGroupOID": "IG.DM", "name": "DM", "label": "Demographics",
            "columns": [{"itemOID": f"IT.DM.{c}", "name": c, "label": c, "dataType": "string"}
                        for c in ("STUDYID", "DOMAIN", "USUBJID", "SEX")], "records": SUBJECTS}
    with open(folder / "dm.ndjson", "wb") as fh:
        fh.write(orjson.dumps(meta) + b"\n")
        for s in range(SUBJECTS):
            fh.write(orjson.dumps(["BENCH01", "DM", f"BENCH01-{s:05d}", "MF"[s % 2]]) + b"\n")
    meta = {**meta, "itemGroupOID": "IG.LB", "name": "LB", "label": "Laboratory Test Results", "records": ROWS,
            "columns": [{"itemOID": f"IT.LB.{c}", "name": c, "label": c, "dataType": TYPES.get(c, "string")}
                        for c in COLS]}
    per = ROWS // SUBJECTS
    with open(folder / "lb.ndjson", "wb") as fh:
        fh.write(orjson.dumps(meta) + b"\n")
        buf = []
        for i in range(ROWS):
            s, k = divmod(i, per)
            cd, name, unit, lo, hi = TESTS[k % len(TESTS)]
            val = f"{float(lo) + (k % 7) * 0.61:.2f}"
            visit = k // len(TESTS) % 20 + 1
            buf.append(orjson.dumps(["BENCH01", "LB", f"BENCH01-{s:05d}", k + 1, cd, name, "CHEMISTRY", val,
                                     unit, lo, hi, val, float(val), unit,
                                     "HIGH" if float(val) > float(hi) else "NORMAL", float(visit),
                                     f"WEEK {visit}", f"2020-{visit % 12 + 1:02d}-15T08:{k % 60:02d}"]))
            if len(buf) == 50_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")


@pytest.mark.benchmark
def test_bench_lb_1m_to_ndjson(tmp_path: Path) -> None:
    src = tmp_path / "sdtm"
    _write_inputs(src)
    report = ConversionReport()
    start = time.perf_counter()
    cpu0 = time.process_time()
    paths = convert_sdtm_to_fhir(src, tmp_path / "fhir", report=report, chunksize=50_000,
                                 options=SimpleNamespace(fhir_version="R5",
                                                         extra={"ndjson": True, "default_tz": "+00:00"}))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    obs = tmp_path / "fhir" / "Observation.ndjson"
    with open(obs, "rb") as fh:
        n = sum(1 for _ in fh)
    size = obs.stat().st_size / 1e6
    print(f"\nSDTM LB -> FHIR R5 NDJSON: {ROWS:,} rows in {wall:.1f} s wall / {cpu:.1f} s CPU = "
          f"{ROWS / wall:,.0f} rows/s; peak RSS {peak_mb:,.0f} MB; Observation.ndjson {size:,.0f} MB; "
          f"outputs {[p.name for p in paths]}")
    assert n == ROWS
    assert ROWS / wall >= TARGET_ROWS_PER_S, f"{ROWS / wall:,.0f} rows/s is below the {TARGET_ROWS_PER_S:,} target"
    assert peak_mb < PEAK_MB, f"peak RSS {peak_mb:,.0f} MB is not below {PEAK_MB:,} MB"
