"""Throughput of CT.gov study -> FHIR R5 bundle (on demand):

    python -m pytest tests/benchmarks/bench_ctgov_to_fhir.py -m benchmark -s -p no:cacheprovider

Reads every CT.gov API v2 record in ../shared/data/ctgov once, then converts the parsed studies to R5
bundles (and serialises them with orjson) repeatedly; prints studies/s and peak memory.
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest
from trialbridge.ctgov.v2 import read_ctgov_v2
from trialbridge.fhir.study_writer import write_fhir_bundle
from trialbridge.report import ConversionReport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import DATA  # noqa: E402

ROUNDS = 200


@pytest.mark.benchmark
def test_bench_ctgov_to_fhir_r5() -> None:
    files = sorted((DATA / "ctgov" / "api_v2_json").glob("*.json"))
    if not files:
        pytest.skip("third-party CT.gov records not present")
    studies = [read_ctgov_v2(orjson.loads(f.read_bytes()), file=str(f), report=ConversionReport())[0] for f in files]
    write_fhir_bundle(studies[0], version="R5", report=ConversionReport())   # warm caches (spec, tables)
    t0 = time.perf_counter()
    nbytes = 0
    for _ in range(ROUNDS):
        for s in studies:
            nbytes += len(orjson.dumps(write_fhir_bundle(s, version="R5", report=ConversionReport())))
    elapsed = time.perf_counter() - t0
    n = ROUNDS * len(studies)
    tracemalloc.start()
    for s in studies:
        write_fhir_bundle(s, version="R5", report=ConversionReport())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nCT.gov -> FHIR R5: {n} studies in {elapsed:.2f} s = {n / elapsed:,.0f} studies/s "
          f"({nbytes / elapsed / 1e6:.1f} MB/s of bundle JSON); peak traced memory per pass "
          f"{peak / 1e6:.1f} MB; max RSS {rss:.0f} MB")
    assert n / elapsed > 0
