"""The columnar map of FHIR -> SDTM findings (LB/VS ``map_columns``) gives exactly what the plain
DataFrame map (``map``) gives.

- Whole conversions of awkward Observations (results of mixed types, comparators, zeros and -0.0,
  units missing, unknown, outside the precomputed tables or needing conversion with an offset, partial
  dates, UTC offsets around DST changes, fractions, invalid dates, data-absent and cancelled results,
  specimens, visits, unresolved subjects, NCIt codings, carried SDTM dates), in small chunks: the same
  output files and report with the fast path as with the plain one, and the same frames handed to the
  writer (columns, dtypes, values, None apart from NaN).
- The per-distinct-value helpers equal their per-value definitions: result texts (``str``), standard
  texts (``.10g``, also when read from the result's repr), ISO 8601 --DTC (the regular expression
  value by value, with the offsets dropped counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.sdtm import output as O
from trialbridge.subject import base
from trialbridge.subject import pipeline as P
from trialbridge.subject.domains import _findings as F

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
VITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
#: (LOINC, usual UCUM unit): glucose, hemoglobin (standard g/L), creatinine, WBC (10*3/uL -> 10^9/L),
#: a LOINC no table maps; systolic BP, temperature (Cel/[degF]: an offset), weight, height, heart rate
LABS = [("2345-7", "mg/dL"), ("718-7", "g/dL"), ("2160-0", "mg/dL"), ("6690-2", "10*3/uL"), ("99999-9", "mg/dL")]
VITALS = [("8480-6", "mm[Hg]"), ("8310-5", "Cel"), ("29463-7", "kg"), ("8302-2", "cm"), ("8867-4", "/min")]
UNITS = ["mg/dL", "mmol/L", "g/dL", "g/L", "10*3/uL", "10*9/L", "/min", "mm[Hg]", "Cel", "[degF]", "kg",
         "[lb_av]", "cm", "[in_i]", "U/L", "g/mL", "{beats}/min", "not-a-unit", None]
VALUES: list[Any] = [5, 5.0, 0, 0.0, -0.0, 118, 118.0, 0.1 + 0.2, 1e20, 1e-7, 12345678901.5, 98.6, 36.6, -3,
                     2**70, "5.2", True, 1234567890.0]
DATES = ["2024-03-10T02:30:00-05:00", "2024-03-10T03:30:00-04:00", "2024-11-03T01:30:00-04:00",
         "2024-11-03T01:30:00-05:00", "2024-01-02", "2024-01", "2024", "2024-01-02T08:00", "2024-01-02T08:00Z",
         "2024-01-02T08:00+09:00", "2024-01-02T08:00:00.250Z", "2024-01-02T08:00:00.5", "2024-01-02T08:00:00Z",
         "2024-01-02T08:00:00+01:00", "2024-13-45T25:61:00Z", "2024/01/02", "not a date", "2024-01-02T08:00:00 ",
         "\u0662\u0660\u0662\u0664-01-02", "2024-01-02\n", "2024-01-02T08:00:00\x00", ""]


def _quantity(rnd: random.Random, unit: str | None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": rnd.choice(VALUES)}
    if unit is not None:
        if rnd.random() < 0.1:
            q.update(unit=unit, system="http://example.org/units", code="X")   # unit text only
        else:
            q.update(unit=unit, system=UCUM, code=unit)
    if rnd.random() < 0.1:
        q["comparator"] = rnd.choice(["<", ">=", "<="])
    if rnd.random() < 0.08:
        del q["value"]                    # a unit (and maybe a comparator) with no number
    return q


def _observation(rnd: random.Random, i: int) -> dict[str, Any]:
    lab = rnd.random() < 0.55
    code, unit = rnd.choice(LABS if lab else VITALS)
    if rnd.random() < 0.3:
        unit = rnd.choice(UNITS)
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"o{i}", "meta": {"versionId": "1"},
        "status": rnd.choice(["final"] * 8 + ["amended", "cancelled", "cancelled", "entered-in-error"]),
        "category": [LAB if lab else VITAL],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": rnd.choice(["Patient/p1", "Patient/p2", "Patient/p3", "http://x.org/fhir/Patient/p4",
                                             "urn:uuid:0000-p5", "Patient/nobody"])},
        "effectiveDateTime": rnd.choice(DATES)}
    if rnd.random() < 0.05:
        del obs["subject"]
    if rnd.random() < 0.4:
        obs["encounter"] = {"reference": rnd.choice(["Encounter/e1", "Encounter/e2", "Encounter/e9"])}
    shape = rnd.random()
    if shape < 0.75:
        obs["valueQuantity"] = _quantity(rnd, unit)
    elif shape < 0.82:
        obs["valueString"] = rnd.choice(["positive", "trace", "5.1"])
    elif shape < 0.87:
        obs["valueCodeableConcept"] = {"coding": [{"code": "260385009", "display": "Negative"}]}
    elif shape < 0.9:
        obs["valueInteger"] = rnd.choice([0, 7])
    else:
        obs["dataAbsentReason"] = {"coding": [{"code": rnd.choice(["asked-declined", "error"])}],
                                   **({"text": "patient declined"} if rnd.random() < 0.5 else {})}
    if rnd.random() < 0.5:
        rng: dict[str, Any] = {}
        for side in ("low", "high"):
            if rnd.random() < 0.85:
                rng[side] = {"value": rnd.choice([1, 1.0, 0, -0.0, 3.5, 10, 200, 0.1 + 0.2]),
                             **({"code": rnd.choice([unit, "mmol/L", "g/L", None])} if rnd.random() < 0.8 else {})}
        if rnd.random() < 0.2:
            rng["text"] = "see report"
        obs["referenceRange"] = [rng]
    if rnd.random() < 0.5:
        coding = {"code": rnd.choice(["N", "H", "L", "HH", "LL", "A", "XX"])}
        # the binding's own system, none, or another system (not read as an ObservationInterpretation code)
        system = rnd.choice([None, None, "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                             "http://snomed.info/sct"])
        obs["interpretation"] = [{"coding": [{**coding, **({"system": system} if system else {})}]}]
    if lab and rnd.random() < 0.15:
        obs["specimen"] = {"reference": rnd.choice(["Specimen/s1", "Specimen/s2", "Specimen/s9"])}
    if not lab and rnd.random() < 0.1:
        obs["extension"] = [{"url": F.BODY_POSITION, "valueCodeableConcept": {"coding": [
            {"system": NCIT, "code": rnd.choice(["C62166", "C62167", "C00000"])}]}}]
    if not lab and rnd.random() < 0.1:
        obs["bodySite"] = {"coding": [{"system": NCIT, "code": rnd.choice(["C12434", "C99999"])}]}
    if rnd.random() < 0.05:
        obs["code"]["coding"].append({"system": NCIT, "code": rnd.choice(["C49677", "C25298", "C00001"])})
    if rnd.random() < 0.05:
        obs["_effectiveDateTime"] = {"extension": [{"url": F.EXT_DTC, "valueString": "2024-01-02T08:00"}]}
    if not lab and rnd.random() < 0.05:
        obs.pop("valueQuantity", None)
        obs["code"] = {"coding": [{"system": LOINC, "code": "85354-9"}]}
        obs["component"] = [{"code": {"coding": [{"system": LOINC, "code": c}]},
                             "valueQuantity": _quantity(rnd, "mm[Hg]")} for c in ("8480-6", "8462-4")]
    return obs


def _bulk(folder: Path, n: int, seed: int) -> Path:
    rnd = random.Random(seed)
    folder.mkdir()
    patients = [{"resourceType": "Patient", "id": f"p{k}", "identifier": [{"system": "urn:t", "value": f"P{k}"}],
                 "gender": "female"} for k in range(1, 6)]
    encounters = [{"resourceType": "Encounter", "id": f"e{k}", "status": "finished",
                   "subject": {"reference": "Patient/p1"}, "period": {"start": f"2024-01-0{k}"}} for k in (1, 2)]
    specimens = [{"resourceType": "Specimen", "id": "s1", "type": {"coding": [{"code": "122555007"}]},
                  "collection": {"collectedDateTime": "2024-01-03T07:00:00+01:00",
                                 "fastingStatusCodeableConcept": {"coding": [{"code": "F"}]}}},
                 {"resourceType": "Specimen", "id": "s2",
                  "collection": {"fastingStatusCodeableConcept": {"coding": [{"code": "BAD"}]}}}]
    observations = [_observation(rnd, i) for i in range(n)]
    # and the rare combinations, every time: a comparator with no number on a cancelled result, a
    # unitless -0.0, a range in other units, a data-absent cancelled result, an NCIt-only test code
    for k, (cat, extra) in enumerate([
            (LAB, {"status": "cancelled", "valueQuantity": {"comparator": "<", "code": "mg/dL", "system": UCUM}}),
            (LAB, {"valueQuantity": {"value": -0.0}}), (VITAL, {"valueQuantity": {"value": -0.0}}),
            (LAB, {"valueQuantity": {"value": 90, "code": "mg/dL", "system": UCUM},
                   "referenceRange": [{"low": {"value": 3.9, "code": "mmol/L"}, "high": {"value": 6, "code": "mmol/L"}}]}),
            (LAB, {"status": "cancelled", "dataAbsentReason": {"text": "not collected"}}),
            (VITAL, {"code": {"coding": [{"system": NCIT, "code": "C49677"}]},
                     "valueQuantity": {"value": 61, "code": "/min", "system": UCUM}})]):
        obs = {"resourceType": "Observation", "id": f"x{k}", "status": "final", "category": [cat],
               "code": {"coding": [{"system": LOINC, "code": "2345-7" if cat is LAB else "8867-4"}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-02T08:00:00Z", **extra}
        observations.insert(rnd.randrange(len(observations) + 1), obs)
    files = {"Patient": patients, "Encounter": encounters, "Specimen": specimens, "Observation": observations}
    for name, rows in files.items():
        (folder / f"{name}.ndjson").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return folder


_WRITE = O.ChunkedDomainWriter.write


def _plain_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plugin without its columnar map: the plain DataFrame map."""
    reg = base.registered_domains()
    monkeypatch.setattr(base, "_REGISTRY", {k: dataclasses.replace(p, map_columns=None) for k, p in reg.items()})


def _convert(inputs: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, bytes], Any, list[Any]]:
    """Output files (creation time masked), the report, and each frame handed to the chunked writer."""
    seen: list[Any] = []

    def spy(self: Any, df: pd.DataFrame, companion: pd.DataFrame | None = None) -> None:
        seen.append((self.domain, df.copy(), None if companion is None else companion.copy()))
        _WRITE(self, df, companion)

    monkeypatch.setattr(O.ChunkedDomainWriter, "write", spy)
    report = ConversionReport()
    P.convert_subjects([inputs], out, options=Options(studyid="ST"), report=report)
    mask = re.compile(rb'"datasetJSONCreationDateTime"\s*:\s*"[^"]*"')
    files = {str(p.relative_to(out)): mask.sub(b"", p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}
    return files, report.to_json(), seen


def _same_value(a: Any, b: Any) -> bool:
    if a is None or b is None or a is pd.NA or b is pd.NA:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def _assert_frames_identical(x: pd.DataFrame, y: pd.DataFrame) -> None:
    assert list(x.columns) == list(y.columns)
    assert x.index.equals(y.index)
    for c in x.columns:
        assert str(x[c].dtype) == str(y[c].dtype), c
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(x[c].tolist(), y[c].tolist(), strict=True))
               if not _same_value(a, b)]
        assert not bad, (c, bad[:3])


@pytest.mark.parametrize("seed,chunk", [(1, 37), (2, 500), (3, 1)])
def test_columnar_map_equals_plain_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, chunk: int) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    monkeypatch.setattr(P, "CHUNK_ROWS", chunk)
    src = _bulk(tmp_path / "in", 400 if chunk > 1 else 60, seed)
    calls: list[str] = []
    original = P._Run._map_columns

    def counted(self: Any, p: Any, rows: Any) -> pd.DataFrame:
        calls.append(p.domain)
        return original(self, p, rows)

    monkeypatch.setattr(P._Run, "_map_columns", counted)
    fast_files, fast_report, fast_frames = _convert(src, tmp_path / "fast", monkeypatch)
    assert {"LB", "VS"} <= set(calls)                 # the columnar path did the mapping
    with monkeypatch.context() as m:
        _plain_only(m)
        calls.clear()
        plain_files, plain_report, plain_frames = _convert(src, tmp_path / "plain", m)
        assert not calls
    assert fast_report == plain_report
    assert fast_files.keys() == plain_files.keys()
    for name in fast_files:
        assert fast_files[name] == plain_files[name], name
    assert len(fast_frames) == len(plain_frames)
    for (d1, f1, c1), (d2, f2, c2) in zip(fast_frames, plain_frames, strict=True):
        assert d1 == d2
        _assert_frames_identical(f1, f2)
        _assert_frames_identical(c1, c2)
    # the awkward inputs reached the branches they are for
    kinds = {(i["rule"], i["kind"]) for i in fast_report["issues"]}
    for rule in ("lb.ORRESU", "lb.LBTESTCD", "lb.DTC", "vs.DTC", "lb.NRIND", "lb.REASND", "subject.resolve"):
        assert any(r == rule for r, _ in kinds), rule
    assert fast_report["extra"]["droppedUtcOffsets"]
    if chunk > 1:
        lb = pd.concat([f for d, f, _ in fast_frames if getattr(d, "domain", d) == "LB"], ignore_index=True)
        assert lb["LBORRES"].str.startswith(("<", ">")).fillna(False).astype(bool).any()   # comparators
        assert {"-0.0", "0.0", "0", "118", "118.0"} <= set(lb["LBORRES"].dropna())   # zeros and types apart
        assert {"0", "118"} <= set(lb["LBSTRESC"].dropna())


@pytest.mark.parametrize("values", [
    [1, 2.5, 0, -0.0, 0.0, 1.0, None, 1, 2.5], [0.0, -0.0, float("nan"), 5e-324, 1e300, float("inf")],
    [True, 1, 1.0, "1", None], [2**70, 1, 1.0], ["a", None, float("nan"), "a"], [None, None], [],
    [118, 118.0, -118, -118.0, 0, 0.0, -0.0]])
def test_text_values_are_the_per_value_texts(values: list[Any]) -> None:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    got = F.text_values(arr).tolist()
    want = [v if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]
    assert [(type(a), a) if a == a else "nan" for a in got] == [(type(b), b) if b == b else "nan" for b in want]
    texts, nums, present, _ = F._texts_and_numbers(arr)
    assert nums is not None
    ref = pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    assert [struct.pack("<d", a) for a in nums.tolist()] == [struct.pack("<d", b) for b in ref.tolist()]
    assert present.tolist() == (~pd.isna(arr)).tolist()


def test_numbers_of_mixed_columns_are_pd_to_numeric() -> None:
    """The floats of a column of integers and floats are what pd.to_numeric gives (which makes int64
    of an int-first column of integral values: -0.0 becomes 0), bit for bit."""
    rnd = random.Random(5)
    pool = [0, 1, -1, 50, 300, 2**53 + 1, 2**62, -(2**63), 2**63 - 1, 2**64 + 5, 0.0, -0.0, 1.0, 50.0, 3.5, -2.25,
            1e300, float("inf"), float("-inf"), 2.0**62, 2.0**63, 1e18, 0.1 + 0.2, None, 123456789012345678]
    seen = 0
    for _ in range(5000):
        vals = [rnd.choice(pool) for _ in range(rnd.randint(1, 6))]
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        if pd.api.types.infer_dtype(arr, skipna=True) != "mixed-integer-float":
            continue
        seen += 1
        got = F._texts_and_numbers(arr)
        nums = got.floats
        assert nums is not None
        ref = pd.Series(pd.to_numeric(arr, errors="coerce")).to_numpy(dtype="float64", na_value=np.nan)
        assert [struct.pack("<d", a) for a in nums.tolist()] == [struct.pack("<d", b) for b in ref.tolist()], vals
        # and the texts: str() of each value as given (1 and 1.0, 0.0 and -0.0 apart)
        assert got.texts.tolist() == [None if v is None else str(v) for v in vals], vals
    assert seen > 1000


def test_seq_sorted_by_16_bit_codes_or_wider() -> None:
    """--SEQ per subject in row order, with few subjects (16-bit codes) and with many."""
    rnd = random.Random(2)
    for subjects in (3, 40_000):
        usubjid = pd.Series([f"S{rnd.randrange(subjects)}" for _ in range(60_000)], dtype=object)
        start = {"S1": 5}
        got = base.derive_seq(usubjid, start)
        want = usubjid.groupby(usubjid, sort=False).cumcount() + 1 + usubjid.map({"S1": 5}).fillna(0).astype("int64")
        assert got.tolist() == want.tolist()
        assert start["S1"] == 5 + int((usubjid == "S1").sum())


def test_standard_texts_read_from_reprs_are_the_10g_texts() -> None:
    """STRESC read from the result's repr (:func:`fmt_values` with ``reprs``) equals ``f"{v:.10g}"``: random doubles of every
    magnitude, short decimals, integers, the fixed/exponent borders and both zeros."""
    rnd = random.Random(11)
    vals = [struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    vals += [round(rnd.uniform(-1e4, 1e4), rnd.randint(0, 6)) for _ in range(3000)]
    vals += [float(rnd.randint(-10**12, 10**12)) for _ in range(500)]
    vals += [0.0, -0.0, 1e-4, 9.999999999e-5, 1e10, 9999999999.0, 999999999.95, 1234567890.0, 123456789.0,
             0.0001234567891, 1e16, 1e15, float("inf"), float("-inf"), 0.1 + 0.2, 5e-324]
    arr = np.array([v for v in vals if v == v], dtype=np.float64)
    out = np.empty(len(arr), dtype=object)
    reprs = F._str_floats(arr, np.ones(len(arr), dtype=bool), out)
    assert out.tolist() == [str(v) for v in arr.tolist()]
    want = [f"{v:.10g}" for v in arr.tolist()]
    assert F.fmt_values(arr, reprs).tolist() == want
    assert F.fmt_values(arr).tolist() == want
    half = arr * 0.5     # values no repr was made for: formatted
    assert F.fmt_values(half, reprs).tolist() == [f"{v:.10g}" for v in half.tolist()]


_DTC_OK = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def _dtc_per_value(values: list[Any]) -> tuple[list[Any], list[bool], dict[str, int]]:
    """--DTC value by value: the regular expression, cut after hh:mm:ss (or hh:mm), cuts counted."""
    dtc, bad, dropped = [], [], {}
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            dtc.append(None)
            bad.append(False)
            continue
        txt = str(v)
        if _DTC_OK.match(txt) is None:
            dtc.append(None)
            bad.append(True)
            continue
        end = 19 if len(txt) > 16 and txt[16] == ":" else min(len(txt), 16)
        dtc.append(txt[:end])
        bad.append(False)
        cut = txt[end:]
        zone = cut.lstrip(".0123456789")
        if zone:
            dropped[zone] = dropped.get(zone, 0) + 1
        if cut.startswith("."):
            dropped["fraction"] = dropped.get("fraction", 0) + 1
    return dtc, bad, dropped


@pytest.mark.parametrize("extra", [[], [5, 2024, 1.5, True]])
def test_dtc_once_per_distinct_value_is_the_per_value_dtc(extra: list[Any]) -> None:
    rnd = random.Random(3)
    shapes = DATES + ["2024-01-02T08:00-05:00", "2024-01-02T08:00:00.123456+05:30", "2024-01-02T08:00:00-00:00",
                      "2024-1-02", "20240102", "2024-01-02T8:00:00Z", "2024-01-02t08:00:00Z", "2024-01-02T08:00:00+0100",
                      "2024-01-02T08:00:00.Z", "x024-01-02T08:00:00+01:00", "2024-01-02T08:00:00+01:0x"]
    values: list[Any] = [rnd.choice(shapes + [None]) for _ in range(2000)] + extra
    values += [f"2024-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T0{rnd.randint(0, 9)}:{rnd.randint(10, 59)}:00"
               f"{rnd.choice(['Z', '+01:00', '-05:00', '', '.5Z'])}" for _ in range(2000)]
    dropped: dict[str, int] = {}
    dtc, bad = base.derive_dtc(pd.Series(values, dtype=object), dropped)
    want_dtc, want_bad, want_dropped = _dtc_per_value(values)
    assert dtc.tolist() == want_dtc
    assert bad.tolist() == want_bad
    assert dropped == want_dropped
    assert any(want_bad) and {"Z", "+01:00", "-05:00", "fraction"} <= set(dropped)


def test_latest_dates_by_ranks_are_the_groupby_maxima() -> None:
    """_note_dates (distinct dates ranked in text order, a numpy maximum per subject) keeps what the
    pandas groupby path keeps, over chunks, with empty texts, missing values and partial dates."""
    rnd = random.Random(9)
    pool = ["", None, float("nan"), "2024", "2024-01", "2024-01-02", "2024-01-02T08:00", "2024-01-02T08:00:00",
            "2023-12-31T23:59:59", "2024-01-10", "2024-1-9"]
    fast = P._Run.__new__(P._Run)
    plain = P._Run.__new__(P._Run)
    fast.last_dates, plain.last_dates = {}, {}
    for _ in range(30):
        n = rnd.randint(0, 40)
        subjects = [rnd.choice(["A", "B", "C", "E", None]) for _ in range(n)]
        dates = [rnd.choice(pool) if u != "E" else "" for u in subjects]   # E: empty texts only
        frame = pd.DataFrame({"USUBJID": pd.Series(subjects, dtype=object), "LBDTC": pd.Series(dates, dtype=object)})
        fast._note_dates("LB", frame)
        if len(frame):
            plain._note_dates_frame(frame, ["LBDTC"])
    assert fast.last_dates == plain.last_dates and fast.last_dates and "E" not in fast.last_dates


def test_latest_dates_and_seq_by_codes_are_those_by_texts() -> None:
    """With the columnar map's hidden codes (a code per USUBJID, a code per --DTC, codes not dense,
    two codes of one date text, codes of no date), the latest dates per subject and --SEQ are what the
    texts give."""
    rnd = random.Random(11)
    pool = [None, "", "2024", "2024-01", "2024-01-02", "2024-01-02T08:00", "2024-01-02T08:00:00",
            "2023-12-31T23:59:59", "2024-01-10"]
    fast = P._Run.__new__(P._Run)
    plain = P._Run.__new__(P._Run)
    fast.last_dates, plain.last_dates = {}, {}
    seq_fast: dict[str, int] = {}
    seq_plain: dict[str, int] = {}
    for _ in range(40):
        n = rnd.randint(1, 50)
        ucodes = [rnd.choice([0, 3, 7, 9]) for _ in range(n)]
        names = {0: "A", 3: "B", 7: "C", 9: "E"}
        # a date code stands for one text; several codes may share a text (offsets dropped)
        code_text = {k: rnd.choice(pool) for k in range(12)}
        dcodes = [rnd.choice([-1, *range(12)]) if names[u] != "E" else -1 for u in ucodes]
        frame = pd.DataFrame({"USUBJID": pd.Series([names[u] for u in ucodes], dtype=object),
                              "LBDTC": pd.Series([code_text[c] if c >= 0 else None for c in dcodes], dtype=object),
                              P.SUBJECT_CODE: np.array(ucodes, dtype=np.int64),
                              P.DTC_CODE: np.array(dcodes, dtype=np.int64)})
        codes = P._subject_codes(frame)
        assert codes is not None
        assert fast._note_dates_codes(frame, "LBDTC", codes)
        plain._note_dates_frame(frame, ["LBDTC"])
        assert base.seq_of_codes(codes[0], codes[1], seq_fast, frame.index).tolist() == \
            base.derive_seq(frame["USUBJID"], seq_plain).tolist()
    assert fast.last_dates == plain.last_dates and fast.last_dates and "E" not in fast.last_dates
    assert seq_fast == seq_plain


def test_float_reprs_are_python_reprs() -> None:
    """float_reprs (orjson's texts where Python writes fixed-point, repr elsewhere) is ``repr`` of each
    value: random doubles of every magnitude, short decimals of every length in the fixed-point range,
    integral values, the 1e-4 and 1e16 borders, both zeros, inf, nan, subnormals; also in chunks with
    no value outside the fixed-point range (no repr made at all)."""
    rnd = random.Random(13)
    vals = [struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    vals += [float(f"{rnd.random() * 10 ** rnd.randint(-4, 15):.{rnd.randint(1, 17)}g}") * rnd.choice([1, -1])
             for _ in range(40_000)]
    vals += [float(rnd.randint(-10**16, 10**16)) for _ in range(5_000)]
    vals += [0.0, -0.0, 1e-4, -1e-4, 9.999999999999999e-05, 1.0000000000000002e-4, 1e16, 9999999999999998.0,
             1e15, 0.1 + 0.2, 5e-324, 2.2250738585072014e-308, float("inf"), float("-inf"), float("nan"), 100.0]
    arr = np.array(vals, dtype=np.float64)
    assert F._REPRS_BY_ORJSON                  # the fast texts are in use here
    assert F.float_reprs(arr) == [repr(v) for v in arr.tolist()]
    fixed = np.array([v for v in vals if v == 0 or 1e-4 <= abs(v) < 1e16])
    assert F.float_reprs(fixed) == [repr(v) for v in fixed.tolist()]
    assert F.float_reprs(np.array([], dtype=np.float64)) == []


def test_standard_texts_of_short_reprs_and_of_coded_rows() -> None:
    """STRESC from the result's reprs when every repr is short (the trailing ".0"s cut in one pass) and
    by the rows' codes (the rows whose standard value is the result itself; converted, missing and
    uncoded rows formatted): ``f"{v:.10g}"`` throughout."""
    rnd = random.Random(17)
    vals = [round(rnd.uniform(-500, 500), rnd.randint(0, 4)) for _ in range(4000)] + [0.0, -0.0, 1.0, 10.0, 12345.0]
    arr = np.array(vals, dtype=np.float64)
    out = np.empty(len(arr), dtype=object)
    reprs = F._str_floats(arr, np.ones(len(arr), dtype=bool), out)
    assert reprs is not None and max(map(len, reprs[1])) <= 11
    want = [f"{v:.10g}" for v in arr.tolist()]
    assert F.fmt_values(arr, reprs).tolist() == want
    assert F.fmt_values(arr, reprs[:2]).tolist() == want     # (no row codes: looked up by bits)
    # rows converted (other bits), missing, or with no code: formatted
    mixed = arr.copy()
    mixed[::3] *= 0.0555
    mixed[1::7] = np.nan
    codes = reprs[2].copy()
    codes[2::11] = -1
    got = F.fmt_values(mixed, (reprs[0], reprs[1], codes)).tolist()
    assert got == [None if v != v else f"{v:.10g}" for v in mixed.tolist()]


def test_first_rows_and_loincs_used_by_counts_are_those_by_sorting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first row of each unit key (UCUM spellings reported) and the LOINCs used (test_codes.note_used),
    taken by running maxima and counts, are what np.unique gives."""
    rnd = random.Random(19)
    seen: list[tuple[Any, Any, Any]] = []
    monkeypatch.setattr(F, "_note_ucum_spellings", lambda d, rows, ctx: seen.extend(rows))
    for _ in range(300):
        n = rnd.randint(1, 60)
        key = np.array([rnd.choice([3, 17, 4, 99, 0, 5]) for _ in range(n)], dtype=np.int64)
        both = np.array([rnd.random() < 0.7 for _ in range(n)])
        seen.clear()
        F._report_ucum_spelling_columns("LB", key, both, np.arange(n), np.arange(n), np.arange(n), None)  # type: ignore[arg-type]
        rows = np.flatnonzero(both)
        want = rows[np.sort(np.unique(key[rows], return_index=True)[1])] if len(rows) else rows
        assert [r for r, _, _ in seen] == want.tolist()
        values = ["a", "b", "c", "d"]
        codes = np.array([rnd.choice([-1, 0, 1, 2, 3]) for _ in range(n)], dtype=np.intp)
        by_table = np.array([rnd.random() < 0.6 for _ in range(n)])
        table_rows = set(np.unique(codes[by_table]).tolist())
        ncit_rows = set(np.unique(codes[~by_table]).tolist()) - table_rows
        assert F.loincs_used(codes, values, by_table) == (
            [values[j] for j in sorted(table_rows) if j >= 0], [values[j] for j in sorted(ncit_rows) if j >= 0])
