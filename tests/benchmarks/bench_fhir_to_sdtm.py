"""Benchmark: 1M FHIR Observations (labs + vitals, NDJSON) -> SDTM LB + VS.

Run:  python -m pytest tests/benchmarks/bench_fhir_to_sdtm.py -m benchmark -s -p no:cacheprovider
Prints the orjson parse-only rate on the same file, the end-to-end rate (Observations/s) and the
peak RSS of the process (resource.getrusage high-water mark). BENCH_N overrides the count.
"""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import orjson
import pytest
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport, Policy
from trialbridge.subject.pipeline import convert_subjects

N = int(os.environ.get("BENCH_N", "1000000"))
PATIENTS = 1000
LABS = [("2093-3", "mg/dL", 120, 260), ("2571-8", "mg/dL", 50, 300), ("18262-6", "mg/dL", 50, 190),
        ("2345-7", "mg/dL", 60, 200), ("718-7", "g/dL", 10, 18), ("6690-2", "10*3/uL", 3, 12),
        ("777-3", "10*3/uL", 150, 400), ("2160-0", "mg/dL", 0.5, 1.5), ("1742-6", "U/L", 5, 60)]
VITALS = [("8480-6", "mm[Hg]", 95, 170), ("8462-4", "mm[Hg]", 55, 105), ("8867-4", "/min", 50, 110),
          ("8310-5", "Cel", 36, 38.5), ("29463-7", "kg", 45, 120), ("8302-2", "cm", 150, 200),
          ("9279-1", "/min", 10, 22), ("39156-5", "kg/m2", 18, 35)]


def _generate(folder: Path, n: int) -> Path:
    rnd = random.Random(7)
    with open(folder / "Patient.ndjson", "wb") as fh:
        for p in range(PATIENTS):
            fh.write(orjson.dumps({"resourceType": "Patient", "id": f"p{p}", "gender": rnd.choice(["male", "female"]),
                                   "birthDate": f"19{rnd.randint(40, 99)}-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}",
                                   "identifier": [{"system": "urn:bench", "value": f"P{p}"}],
                                   "address": [{"country": "US"}],
                                   "managingOrganization": {"reference": "Organization/site1"}}) + b"\n")
    with open(folder / "Organization.ndjson", "wb") as fh:
        fh.write(orjson.dumps({"resourceType": "Organization", "id": "site1",
                               "identifier": [{"value": "001"}]}) + b"\n")
    path = folder / "Observation.ndjson"
    with open(path, "wb") as fh:
        buf = []
        for i in range(n):
            lab = i % 2 == 0
            code, unit, lo, hi = rnd.choice(LABS if lab else VITALS)
            obs = {"resourceType": "Observation", "id": f"o{i}", "meta": {"versionId": "1"}, "status": "final",
                   "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                             "code": "laboratory" if lab else "vital-signs"}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": code},
                   "subject": {"reference": f"Patient/p{rnd.randrange(PATIENTS)}"},
                   "effectiveDateTime": f"2024-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T08:{rnd.randint(10, 59)}:00+01:00",
                   "valueQuantity": {"value": round(rnd.uniform(lo, hi), 2), "unit": unit,
                                     "system": "http://unitsofmeasure.org", "code": unit}}
            if lab:
                ucum = "http://unitsofmeasure.org"
                obs["referenceRange"] = [{"low": {"value": lo, "unit": unit, "system": ucum, "code": unit},
                                          "high": {"value": hi, "unit": unit, "system": ucum, "code": unit}}]
                obs["interpretation"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                                      "code": rnd.choice("NNNHL")}]}]
            buf.append(orjson.dumps(obs))
            if len(buf) >= 10000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    return path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.benchmark
def test_fhir_observations_to_lb_vs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "bench-salt")
    src = tmp_path / "bulk"
    src.mkdir()
    t = time.perf_counter()
    obs_file = _generate(src, N)
    size_mb = obs_file.stat().st_size / 1e6
    print(f"\ngenerated {N} Observations ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f} s")
    base_rss = _peak_mb()
    t = time.perf_counter()
    with open(obs_file, "rb") as fh:
        for line in fh:
            orjson.loads(line)
    parse = N / (time.perf_counter() - t)
    print(f"orjson parse only: {parse:,.0f} Observations/s")
    report = ConversionReport(policy=Policy.IGNORE)
    t = time.perf_counter()
    out = convert_subjects([src], tmp_path / "sdtm", options=Options(studyid="BENCH"), report=report)
    secs = time.perf_counter() - t
    rate = N / secs
    peak = _peak_mb()
    print(f"FHIR -> SDTM LB+VS: {rate:,.0f} Observations/s ({secs:.1f} s), "
          f"{rate / parse:.2f} of parse-only; peak RSS {peak:,.0f} MB (before conversion {base_rss:,.0f} MB)")
    print(f"outputs: {sorted(p.name for p in out)}; issues: {report.counts()}")
    head = orjson.loads((tmp_path / "sdtm" / "lb.json").read_bytes())
    assert head["records"] + orjson.loads((tmp_path / "sdtm" / "vs.json").read_bytes())["records"] == N
    assert peak < 1024
    assert rate >= parse / 3
