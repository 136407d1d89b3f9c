"""VS/LB (and DM) outputs from real FHIR data: CT validity, required variables, keys, schema, R4/R5."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pandas as pd
import pytest
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport
from trialbridge.sdtm.ct import pinned_ct
from trialbridge.sdtm.metadata import load_domain
from trialbridge.subject.pipeline import convert_subjects

SHARED = Path("/work/shared/data")
FHIR = SHARED / "fhir"
SCHEMA = SHARED / "dataset_json" / "schema" / "dataset.schema.json"
EXTENSIONS = {("RACE", "MULTIPLE")}   # SDTMIG 3.4 DM assumption (RACE extensible): declared in dm.yaml


def need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def check_outputs(outdir: Path, report: ConversionReport) -> dict[str, pd.DataFrame]:
    ct = pinned_ct()
    missing_targets = {(i.target, i.record) for i in report.issues if i.kind.value == "missing"}
    frames = {}
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())) if SCHEMA.exists() else None
    for f in sorted(outdir.glob("*.json")):
        doc = orjson.loads(f.read_bytes())
        if validator is not None:
            errors = list(validator.iter_errors(doc))
            assert not errors, f"{f.name}: {errors[0].message}"
        names = [c["name"] for c in doc["columns"]]
        df = pd.DataFrame(doc["rows"], columns=names)
        dom = load_domain(doc["name"])
        for var in dom.variables:
            if var.name not in df:
                continue
            if var.codelist:
                cl = ct.codelist(var.codelist)
                bad = {v for v in df[var.name] if v not in ("", None) and v not in cl.terms
                       and (var.name, v) not in EXTENSIONS}
                assert not bad, f"{doc['name']}.{var.name}: not CT terms {bad}"
            if var.core == "Req":
                empty = df[var.name].isin(["", None]) | df[var.name].isna()
                if empty.any():
                    assert any(t == var.name for t, _ in missing_targets), \
                        f"{doc['name']}.{var.name} empty and not reported missing"
        key = ["USUBJID", f"{doc['name']}SEQ"] if f"{doc['name']}SEQ" in df else (
            ["USUBJID"] if doc["name"] == "DM" else None)
        if key:
            assert not df.duplicated(key).any(), f"{doc['name']}: duplicate keys"
        frames[doc["name"]] = df
    return frames


def run(tmp_path: Path, inputs: list[Path], broken_refs_ok: bool = False,
        **kw) -> tuple[dict[str, pd.DataFrame], ConversionReport]:
    report = ConversionReport()
    convert_subjects(inputs, tmp_path, options=Options(studyid="ST1", **kw), report=report)
    errors = [i for i in report.issues if i.kind.value == "error"]
    if broken_refs_ok:   # inputs whose references are broken in the source data itself
        assert all(i.rule == "subject.resolve" and i.record for i in errors)
        errors = []
    assert not errors, report.summary_lines()
    return check_outputs(tmp_path, report), report


@pytest.fixture(autouse=True)
def salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")


def test_synthea_bundles(tmp_path: Path) -> None:
    files = sorted(need(FHIR / "synthea_r4_bundles").glob("*.json"))
    frames, report = run(tmp_path, files[:2])
    vs = frames["VS"]
    assert {"SYSBP", "DIABP", "HEIGHT", "WEIGHT"} <= set(vs["VSTESTCD"])
    bp = vs[vs["VSTESTCD"].isin(["SYSBP", "DIABP"])]
    assert (bp["VSORRESU"] == "mmHg").all() and bp["VSGRPID"].ne("").all()   # BP from components
    assert "LB" in frames and frames["LB"]["LBLOINC"].ne("").all()


def test_mcode_bundles(tmp_path: Path) -> None:
    folder = need(FHIR / "mcode_clinical_trial_matching_service")
    for i, f in enumerate(sorted(folder.glob("patient*.json")) + sorted(folder.glob("eom*.json"))):
        # patient_data.json's Observations name a subject id that is not in the bundle: each is
        # reported (error, with the Observation id) and the rest converts
        run(tmp_path / str(i), [f], broken_refs_ok=True)


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_official_examples(tmp_path: Path, release: str) -> None:
    folder = need(FHIR / f"hl7.fhir.{release}.examples-{'4.0.1' if release == 'r4' else '5.0.0'}")
    files = [p for p in sorted(folder.glob("*.json")) if p.name.split("-")[0] in
             ("Patient", "Observation")]
    frames, report = run(tmp_path, files)
    vs = frames["VS"]
    assert "TEMP" in set(vs["VSTESTCD"])
    # blood pressure as one Observation with two components
    assert {"SYSBP", "DIABP"} <= set(vs["VSTESTCD"])


def test_cancelled_and_absent_are_not_done(tmp_path: Path) -> None:
    folder = need(FHIR / "hl7.fhir.r4.examples-4.0.1")
    files = [folder / "Patient-example.json", folder / "Observation-blood-pressure-cancel.json",
             folder / "Observation-blood-pressure-dar.json"]
    frames, _ = run(tmp_path, files)
    vs = frames["VS"]
    assert (vs["VSSTAT"] == "NOT DONE").any()
    assert (vs.loc[vs["VSSTAT"] == "NOT DONE", "VSORRES"] == "").all()


def test_unit_conversion_and_ranges(tmp_path: Path) -> None:
    pat = {"resourceType": "Patient", "id": "p", "gender": "male", "address": [{"country": "US"}]}
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": "Patient/p"},
            "category": [{"coding": [{"code": "vital-signs"}]}], "effectiveDateTime": "2024-01-01",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "valueQuantity": {"value": 98.6, "system": "http://unitsofmeasure.org", "code": "[degF]"}}
    hgb = {"resourceType": "Observation", "id": "h", "status": "final", "subject": {"reference": "Patient/p"},
           "category": [{"coding": [{"code": "laboratory"}]}], "effectiveDateTime": "2024-01-01",
           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
           "interpretation": [{"coding": [{"code": "L"}]}],
           "referenceRange": [{"low": {"value": 13, "code": "g/dL"}, "high": {"value": 17, "code": "g/dL"}}],
           "valueQuantity": {"value": 12.5, "system": "http://unitsofmeasure.org", "code": "g/dL"}}
    odd = dict(hgb, id="odd", valueQuantity={"value": 1, "system": "http://unitsofmeasure.org", "code": "furlong"})
    f = tmp_path / "in.json"
    f.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in (pat, temp, hgb, odd)]}))
    frames, report = run(tmp_path / "o", [f])
    vs, lb = frames["VS"], frames["LB"]
    assert vs.loc[0, "VSSTRESU"] == "C" and abs(vs.loc[0, "VSSTRESN"] - 37.0) < 1e-9
    row = lb[lb["LBORRES"] == "12.5"].iloc[0]
    assert (row["LBSTRESN"], row["LBSTRESU"], row["LBSTNRLO"], row["LBNRIND"]) == (125, "g/L", 130, "LOW")
    assert any(i.record == "Observation/odd" and i.kind.value == "unmapped-code" for i in report.issues)


def test_standard_numbers_are_the_standard_texts(tmp_path: Path) -> None:
    """--STRESN is --STRESC in numeric form (SDTMIG 3.4 LB/VS --STRESN notes: "copied in numeric
    format from --STRESC"): a unit conversion leaves no float noise (12.97 g/dL x 10 is 129.7 g/L, not
    129.70000000000002; 100.4 [degF] is 38 C, not 38.00000000000001), nor in the converted range
    limits (0.57 g/dL -> 5.7 g/L, not 5.699999999999999)."""
    pat = {"resourceType": "Patient", "id": "p", "gender": "male", "address": [{"country": "US"}]}
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": "Patient/p"},
            "category": [{"coding": [{"code": "vital-signs"}]}], "effectiveDateTime": "2024-01-01",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "valueQuantity": {"value": 100.4, "system": "http://unitsofmeasure.org", "code": "[degF]"}}
    hgb = {"resourceType": "Observation", "id": "h", "status": "final", "subject": {"reference": "Patient/p"},
           "category": [{"coding": [{"code": "laboratory"}]}], "effectiveDateTime": "2024-01-01",
           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
           "referenceRange": [{"low": {"value": 0.57, "code": "g/dL"}, "high": {"value": 1.005, "code": "kg/L"}}],
           "valueQuantity": {"value": 12.97, "system": "http://unitsofmeasure.org", "code": "g/dL"}}
    f = tmp_path / "in.json"
    f.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in (pat, temp, hgb)]}))
    frames, report = run(tmp_path / "o", [f])
    vs, lb = frames["VS"], frames["LB"]
    assert (vs.loc[0, "VSSTRESC"], vs.loc[0, "VSSTRESN"]) == ("38", 38.0)
    row = lb.iloc[0]
    assert (row["LBSTRESC"], row["LBSTRESN"], row["LBSTRESU"]) == ("129.7", 129.7, "g/L")
    # each limit converted from its own unit (the high is in kg/L, the low and the result in g/dL)
    assert (row["LBSTNRLO"], row["LBSTNRHI"]) == (5.7, 1005.0)
    # --ORNRLO/--ORNRHI are in --ORRESU: the kg/L limit converted into g/dL, reported with its record
    assert (row["LBORRESU"], row["LBORNRLO"], row["LBORNRHI"]) == ("g/dL", "0.57", "100.5")
    lossy = [i for i in report.issues if i.rule == "lb.ranges"]
    assert [(i.kind.value, i.record, i.target) for i in lossy] == [("lossy", "Observation/h", "LBORNRHI")]
    out = json.loads((tmp_path / "o" / "lb.json").read_text())
    names = [c["name"] for c in out["columns"]]
    assert [r[names.index("LBSTRESN")] for r in out["rows"]] == [129.7]


def test_range_limit_in_a_unit_that_does_not_convert_is_left_empty(tmp_path: Path) -> None:
    """A limit whose unit does not convert into the result's is not written under --ORRESU as if it
    were in it: --ORNRHI left empty, reported (unmapped-code) with the record."""
    pat = {"resourceType": "Patient", "id": "p", "gender": "male", "address": [{"country": "US"}]}
    glu = {"resourceType": "Observation", "id": "g", "status": "final", "subject": {"reference": "Patient/p"},
           "category": [{"coding": [{"code": "laboratory"}]}], "effectiveDateTime": "2024-01-01",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
           "referenceRange": [{"low": {"value": 70, "code": "mg/dL"}, "high": {"value": 7, "code": "mmol/L"}}],
           "valueQuantity": {"value": 90, "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    f = tmp_path / "in.json"
    f.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in (pat, glu)]}))
    frames, report = run(tmp_path / "o", [f])
    row = frames["LB"].iloc[0]
    assert (row["LBORNRLO"], row["LBORNRHI"]) == ("70", "")
    got = [(i.kind.value, i.record, i.target) for i in report.issues if i.rule == "lb.ranges"]
    assert got == [("unmapped-code", "Observation/g", "LBORNRHI")]


def test_precomputed_ucum_conversions_match_ucumvert() -> None:
    """mappings/codes/ucum_linear.csv is a cache of ucumvert's arithmetic: every row must be exactly
    what ucumvert computes (so skipping the UCUM grammar load changes no value)."""
    from trialbridge.specs import load_table
    from trialbridge.subject import units

    rows = load_table("codes/ucum_linear.csv")
    assert rows
    for r in rows:
        got = units.ucum_linear(r["source_code"], r["target_code"])
        assert got == (float(r["factor"]), float(r["offset"])), (r["source_code"], r["target_code"], got)


def test_columnar_extractor_gives_the_row_extractors_rows() -> None:
    """extract_observation_columns reads the usual Observation inline and every other shape with the
    row extractor: for a mix of shapes the columns are exactly the rows extract_observation gives
    (values and their types, order, provenance), issues included."""
    from trialbridge.subject.base import Ctx
    from trialbridge.subject.domains import _findings as F
    from trialbridge.subject.reader import Item

    ucum, loinc = "http://unitsofmeasure.org", "http://loinc.org"
    lab = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "laboratory"}]}
    vital = {"coding": [{"code": "vital-signs"}]}

    def obs(i: int, **kw: object) -> dict:
        base = {"resourceType": "Observation", "id": f"o{i}", "meta": {"versionId": str(i)}, "status": "final",
                "category": [lab], "code": {"coding": [{"system": loinc, "code": "2345-7"}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-02T08:00:00Z",
                "valueQuantity": {"value": 5 if i % 2 else 5.0, "unit": "mg/dL", "system": ucum, "code": "mg/dL"},
                "referenceRange": [{"low": {"value": 1, "code": "mg/dL"}, "high": {"unit": "mg/dL", "value": 9.5},
                                    "text": "1-9.5"}],
                "interpretation": [{"coding": [{"code": "H"}]}]}
        base.update(kw)
        return {k: v for k, v in base.items() if v is not None}

    resources = [
        obs(1), obs(2, encounter={"reference": "Encounter/e1"}, referenceRange=None, interpretation=None),
        obs(3, category=[vital], code={"coding": [{"system": loinc, "code": "8867-4"},
                                                  {"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
                                                   "code": "C49677"}]}),
        obs(4, valueQuantity={"value": 3, "comparator": "<", "unit": "U/L"}, effectiveDateTime=""),
        obs(5, valueQuantity=None, valueString="positive"),
        obs(6, valueQuantity=None, dataAbsentReason={"text": "not asked"}, status="cancelled"),
        obs(7, status="entered-in-error"),
        obs(8, category=[{"text": "sponsor panel"}, lab]),
        obs(9, category=[{"coding": [{"code": "survey"}]}]),
        obs(10, category=[vital], valueQuantity=None, code={"coding": [{"system": loinc, "code": "85354-9"}]},
            component=[{"code": {"coding": [{"system": loinc, "code": "8480-6"}]},
                        "valueQuantity": {"value": 120, "code": "mm[Hg]", "system": ucum}},
                       {"code": {"coding": [{"system": loinc, "code": "8462-4"}]},
                        "valueQuantity": {"value": 80, "code": "mm[Hg]", "system": ucum}}]),
        obs(11, category=[vital], extension=[{"url": F.BODY_POSITION, "valueCodeableConcept": {"coding": [
            {"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C62166"}]}}],
            bodySite={"coding": [{"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C12434"}]}),
        obs(12, effectiveDateTime=None, effectivePeriod={"start": "2024-02"}),
        obs(13, subject="Patient/p1"), obs(17, code={"coding": ["2345-7"]}),
        obs(14, valueQuantity={"value": 7, "unit": "mmol/L", "system": "http://example.org/units", "code": "X"}),
        obs(15, hasMember=[{"reference": "Observation/o1"}], valueQuantity=None),
        obs(16, category=[lab, vital]),
    ]
    items = [Item(r, "Observation.ndjson", None, n) for n, r in enumerate(resources, start=1)]

    def ctx() -> Ctx:
        return Ctx(studyid="S", report=ConversionReport())

    errors: list[tuple[str, str]] = []
    c1 = ctx()
    got, consumed = F.extract_observation_columns(items, c1, lambda item, exc: errors.append(
        (item.resource["id"], type(exc).__name__)))
    assert consumed == len(items)
    c2 = ctx()
    want: dict[str, list[tuple]] = {"LB": [], "VS": []}
    want_errors: list[tuple[str, str]] = []
    for item in items:
        res = item.resource
        try:
            rows = F.extract_observation(res, c2)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            want_errors.append((res["id"], type(exc).__name__))
            continue
        for r in (rows if isinstance(rows, list) else [rows] if rows else []):
            src = (res["resourceType"], res["id"], res["meta"]["versionId"], item.file, item.line)
            want[r["_cat"]].append(tuple(r[k] for k in F.FIELDS) + src)
    assert errors == want_errors == [("o17", "AttributeError")]
    assert set(got) == {d for d, rows in want.items() if rows}
    for dom, cols in got.items():
        assert list(cols) == list(F.COLUMNS)
        rows = list(zip(*[list(cols[c]) for c in F.COLUMNS], strict=True))
        assert [[(v, type(v)) for v in r] for r in rows] == [[(v, type(v)) for v in r] for r in want[dom]], dom
    assert [i.message for i in c1.report.issues] == [i.message for i in c2.report.issues]
    assert len(want["LB"]) >= 8 and len(want["VS"]) >= 4


@pytest.mark.parametrize("values", [
    [1, 2, None, 2], [1.5, 2.0, None, float("nan"), 1.5], [0.0, -0.0, 1.0], [-0.0, 3.0, -0.0], [1, 1.0, True],
    ["a", None, "a"], [10**30, 5, 10**30], [], [None], [float("inf"), 1e300, 5e-324, -2.5, 1e300],
    [118, 118.0, 118], [12345678901.5, 0.1 + 0.2, 0.1 + 0.2]])
def test_result_texts_once_per_distinct_value_are_the_per_value_texts(values: list) -> None:
    """--ORRES/--ORNRLO/--ORNRHI (str of the value as given) and --STRESC (10 significant digits) are
    made once per distinct value: the same texts as value by value (118 and 118.0 stay apart, so do
    0.0 and -0.0), missing values kept."""
    import numpy as np
    from trialbridge.subject.domains._findings import _text, fmt_values

    def norm(xs: list) -> list:
        return [("nan",) if isinstance(v, float) and v != v else (type(v), v) for v in xs]

    s = pd.Series(values, dtype=object)
    arr = s.to_numpy(dtype=object)
    want = [v if v is None or (isinstance(v, float) and v != v) else str(v) for v in arr]
    assert norm(list(_text(s))) == norm(want)
    f = pd.to_numeric(s, errors="coerce").astype(float)
    fa = f.to_numpy()
    want_fmt = [None if np.isnan(v) else f"{v:.10g}" for v in fa.tolist()]
    assert norm([None if v is None or v != v else v for v in fmt_values(fa)]) == norm(want_fmt)
    texts, nums = fmt_values(fa, numbers=True)
    assert norm(list(texts)) == norm(want_fmt)
    assert norm(nums.tolist()) == norm([float("nan") if t is None else float(t) for t in want_fmt])
