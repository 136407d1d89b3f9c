"""FHIR decimals as given: --ORRES, --ORNRLO and --ORNRHI keep the JSON text of a result's number
(``5.50`` stays "5.50", ``0.010`` stays "0.010"), on the typed Bulk NDJSON path, the dict path and in
bundles alike; the numbers (--STRESN, conversions) are the values they read as (converters/subject/numbers.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from trialbridge.cli import main

UCUM, LOINC = "http://unitsofmeasure.org", "http://loinc.org"
LAB = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]
VITAL = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]
#: result literal as written in the JSON -> LBORRES
RESULTS = {"1": "5.50", "2": "0.010", "3": "1.0", "4": "118", "5": "1.5e2", "6": "-0.0", "7": "12.30", "8": "7.25"}


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")


def _lab(i: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final", "category": LAB,
            "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": f"2024-01-0{i}T08:00:00", **extra,
            "valueQuantity": {"value": f"@v{i}@", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
            "referenceRange": [{"low": {"value": "@lo@", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
                                "high": {"value": "@hi@", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}}]}


def _resources() -> list[dict[str, Any]]:
    labs = [_lab(i) for i in RESULTS]
    labs[6] = _lab("7", issued="2024-01-07T09:00:00Z", note=[{"text": "n"}])     # unread elements: the wide form
    labs[7] = _lab("8", specimen={"reference": "Specimen/s1"})                   # the row extractor
    bp = {"resourceType": "Observation", "id": "bp", "status": "final", "category": VITAL,
          "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "subject": {"reference": "Patient/p1"},
          "effectiveDateTime": "2024-01-09T08:00:00",
          "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                         "valueQuantity": {"value": "@sys@", "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                         "valueQuantity": {"value": "@dia@", "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]}
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "category": VITAL,
            "code": {"coding": [{"system": LOINC, "code": "8310-5"}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-09T08:05:00",
            "valueQuantity": {"value": "@temp@", "unit": "degF", "system": UCUM, "code": "[degF]"}}
    return [{"resourceType": "Patient", "id": "p1", "gender": "female"}, *labs, bp, temp]


def _literal(text: bytes) -> bytes:
    """The placeholders replaced by number literals as a FHIR server may write them."""
    for i, lit in RESULTS.items():
        text = text.replace(f'"@v{i}@"'.encode(), lit.encode())
    for k, lit in (("lo", "3.0"), ("hi", "10.00"), ("sys", "120.0"), ("dia", "80.50"), ("temp", "98.60")):
        text = text.replace(f'"@{k}@"'.encode(), lit.encode())
    return text


def _convert(inputs: list[Path], out: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    rc = main(["convert", *map(str, inputs), "--to", "sdtm", "-o", str(out), "--sdtm-format", "csv",
               "--studyid", "DEC"])
    report = json.loads((out / "report.json").read_text())
    assert rc in (0, 1), report.get("counts")
    frames = {d: pd.read_csv(out / f"{d}.csv", dtype=str, keep_default_na=False) for d in ("lb", "vs")}
    return frames, report


def _bulk(folder: Path, lines: list[bytes]) -> Path:
    folder.mkdir()
    res = _resources()
    (folder / "Patient.ndjson").write_bytes(orjson.dumps(res[0]) + b"\n")
    (folder / "Observation.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def test_decimals_keep_their_digits_on_every_path(tmp_path: Path) -> None:
    res = _resources()
    lines = [_literal(orjson.dumps(r)) for r in res[1:]]
    bulk, _ = _convert([_bulk(tmp_path / "bulk", lines)], tmp_path / "o1")
    bundle = tmp_path / "b.json"
    bundle.write_bytes(_literal(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                              "entry": [{"resource": r} for r in res]})))
    from_bundle, _ = _convert([bundle], tmp_path / "o2")
    for dom in ("lb", "vs"):   # the typed Bulk path, the dict path and the bundle path agree
        pd.testing.assert_frame_equal(bulk[dom], from_bundle[dom])
    lb = bulk["lb"].set_index("LBDTC")
    got = {dtc[9]: lb.loc[dtc] for dtc in lb.index}
    for i, lit in RESULTS.items():
        row = got[i]
        assert row["LBORRES"] == lit, (i, row["LBORRES"])
        assert float(row["LBSTRESN"]) == float(lit)          # the number it reads as
        assert (row["LBORNRLO"], row["LBORNRHI"]) == ("3.0", "10.00")
        assert float(row["LBSTNRHI"]) == 10.0
    vs = bulk["vs"].set_index("VSTESTCD")
    assert (vs.loc["SYSBP", "VSORRES"], vs.loc["DIABP", "VSORRES"]) == ("120.0", "80.50")
    assert vs.loc["TEMP", "VSORRES"] == "98.60" and vs.loc["TEMP", "VSORRESU"] == "F"
    assert abs(float(vs.loc["TEMP", "VSSTRESN"]) - 37.0) < 1e-9            # converted from 98.60 F


def test_a_number_orjson_refuses_is_a_reader_error_on_the_typed_path_too(tmp_path: Path) -> None:
    """1e400 overflows a double: orjson refuses the line (an error naming file and line), and so does the
    typed path, which takes a float literal as its text (an exponent sends the line to the reader)."""
    res = _resources()
    bad = _literal(orjson.dumps(res[1])).replace(b'"value":5.50', b'"value":1e400')
    assert b"1e400" in bad
    lines = [bad, *(_literal(orjson.dumps(r)) for r in res[2:])]
    frames, report = _convert([_bulk(tmp_path / "bulk", lines)], tmp_path / "o")
    assert "2024-01-01T08:00:00" not in set(frames["lb"]["LBDTC"])
    assert len(frames["lb"]) == len(RESULTS) - 1
    errs = [i for i in report["issues"] if i.get("rule") == "subject.read"]
    assert [(i["file"], i["record"]) for i in errs] == [("Observation.ndjson", "line 1")]
    assert "not valid JSON" in errs[0]["message"]


def test_number_texts_read_as_pd_to_numeric_reads_them() -> None:
    """The columnar map parses a column of number texts (and integers) value by value where that gives
    what pd.to_numeric gives (the plain map's reading), else with pd.to_numeric: equal bit for bit."""
    import random

    import numpy as np
    from trialbridge.subject.domains import _findings as F

    awkward: list[Any] = ["5.50", "0.010", "-0.0", "1e5", "1E+05", ".5", "5.", "+3", "abc", " 5", "1_0", "inf",
                          "nan", "9007199254740993.0", "-0", "1e400", "0x10", "--1", "1.2.3", "1e", "12345678901234567890"]
    rnd = random.Random(5)
    plain = [f"{rnd.uniform(-1e4, 1e4):.{rnd.randint(0, 6)}f}" for _ in range(300)]
    ints = [rnd.randint(-10**6, 10**6) for _ in range(50)] + [2**60]
    few = [rnd.choice(["3.0", "10.00", "0.5", 50, 300, "1.50"]) for _ in range(400)]    # range limits
    cases = [plain, plain + ints, few, few + [True], few + [1.5], *([x, *plain] for x in awkward),
             *([x, *plain, *ints] for x in awkward), *([x, *few] for x in awkward)]
    for vals in cases:
        arr = np.empty(len(vals) + 1, dtype=object)
        arr[:-1] = vals
        arr[-1] = None
        got = F._texts_and_numbers(arr)
        want = pd.Series(pd.to_numeric(arr, errors="coerce")).to_numpy(dtype="float64", na_value=np.nan)
        assert got.floats is not None
        assert got.floats.view(np.int64).tolist() == want.view(np.int64).tolist() or \
            np.array_equal(got.floats, want, equal_nan=True) and (np.signbit(got.floats) == np.signbit(want)).all(), vals[:1]
        assert got.texts[:-1].tolist() == [str(v) for v in vals]
