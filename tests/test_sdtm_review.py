"""Checks from the SDTM review against SDTMIG 3.4: values that conform in shape but not in meaning
(EPOCH before consent, SV planned-visit flags)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.sdtm.metadata import load_domain

SAMPLE = SAMPLES / "NCT04835883"


@pytest.fixture(scope="module")
def subj_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SAMPLE / "ctgov.json").exists():
        pytest.skip("samples/NCT04835883/ctgov.json not present")
    out = tmp_path_factory.mktemp("review")
    rc = main(["convert", str(SAMPLE / "subjects.bundle.json"), "--to", "sdtm", "--study",
               str(SAMPLE / "ctgov.json"), "--sdtm-format", "csv", "-o", str(out)])
    assert rc == 0
    return out


def read(out: Path, dom: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{dom.lower()}.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("dom", ["CM", "AE", "PR", "EX", "LB", "VS", "DS", "SV"])
def test_no_epoch_before_informed_consent(subj_out: Path, dom: str) -> None:
    # SDTMIG 3.4 4.1.3.1: EPOCH is a study-design period; the first (SCREENING) starts at informed
    # consent, so a record dated before RFICDTC (prior medication started years earlier) has none
    dm = read(subj_out, "DM").set_index("USUBJID")["RFICDTC"]
    df = read(subj_out, dom)
    dtc = f"{dom}DTC" if f"{dom}DTC" in df and dom in ("LB", "VS") else f"{dom}STDTC"
    d = df[dtc].str[:10]
    full = d.str.len() == 10
    ic = df["USUBJID"].map(dm).str[:10]
    pre = full & (d < ic)
    assert not (df.loc[pre, "EPOCH"] != "").any(), df.loc[pre & (df["EPOCH"] != ""), [dtc, "EPOCH"]]
    # and a record on or after consent but before first dose is SCREENING
    scr = full & (d >= ic) & (d < df["USUBJID"].map(read(subj_out, "DM").set_index("USUBJID")["RFSTDTC"]).str[:10])
    assert (df.loc[scr, "EPOCH"] == "SCREENING").all()


def test_cm_prior_medication_has_no_epoch(subj_out: Path) -> None:
    cm = read(subj_out, "CM")
    row = cm[(cm["USUBJID"] == "NCT04835883-001-001") & (cm["CMSTDTC"] == "2018-11-11")].iloc[0]
    assert row["EPOCH"] == ""
    assert row["CMSTDY"] == "-358"          # the study day is still derived


def test_sv_planned_visits_flagged(subj_out: Path) -> None:
    # SDTMIG 3.4 SV: SVPRESP = "Y" for planned visits, null for unplanned; SVOCCUR records whether a
    # planned visit occurred (Y/N), null for unplanned visits
    sv = read(subj_out, "SV")
    unplanned = sv["SVUPDES"] != ""
    assert (sv.loc[unplanned, "SVPRESP"] == "").all() and (sv.loc[unplanned, "SVOCCUR"] == "").all()
    planned = sv[~unplanned]
    assert (planned["SVPRESP"] == "Y").all()
    assert set(planned["SVOCCUR"]) == {"Y", "N"}
    assert (planned.loc[planned["SVOCCUR"] == "Y", "SVSTDTC"] != "").all()
    missed = planned[planned["SVOCCUR"] == "N"]
    assert len(missed) == 1 and (missed["SVREASOC"] != "").all() and (missed["SVSTDTC"] == "").all()


def test_sv_presp_occur_are_expected() -> None:
    core = {v.name: v.core for v in load_domain("SV").variables}
    assert core["SVPRESP"] == "Exp" and core["SVOCCUR"] == "Exp"


def test_results_and_ranges_are_reported_as_the_json_gave_them(tmp_path, monkeypatch):
    """118 stays "118" and 118.0 keeps its stated precision, on the columnar path (plain
    Observations) and on the row path (blood pressure components)."""
    import json as _json

    from trialbridge.cli import main as cli_main
    from trialbridge.sdtm.datasetjson import read_dataset_json as _read

    def obs(oid, code, value, unit, ucum, cat, low=None, comps=None):
        res = {"resourceType": "Observation", "id": oid, "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                         "code": cat}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-02"}
        if comps is None:
            res["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}
        else:
            res["component"] = comps
        if low is not None:
            res["referenceRange"] = [{"low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org",
                                              "code": ucum}}]
        return res

    bp = [{"code": {"coding": [{"system": "http://loinc.org", "code": c}]},
           "valueQuantity": {"value": v, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
          for c, v in (("8480-6", 120), ("8462-4", 80.0))]
    lines = [{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"},
             obs("o1", "14682-9", 118, "umol/L", "umol/L", "laboratory", low=45),
             obs("o2", "14682-9", 118.0, "umol/L", "umol/L", "laboratory", low=45.0),
             obs("o3", "85354-9", None, None, None, "vital-signs", comps=bp)]
    folder = tmp_path / "bulk"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(_json.dumps(lines[0]) + "\n")
    (folder / "Observation.ndjson").write_text("\n".join(_json.dumps(x) for x in lines[1:]) + "\n")
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")   # no ResearchSubject: keyed-hash SUBJID
    assert cli_main(["convert", str(folder), "--to", "sdtm", "--studyid", "S1", "-o", str(tmp_path / "o")]) == 0
    lb, _ = _read(tmp_path / "o" / "lb.json")
    assert lb["LBORRES"].tolist() == ["118", "118.0"]
    assert lb["LBORNRLO"].tolist() == ["45", "45.0"]
    vs, _ = _read(tmp_path / "o" / "vs.json")
    assert sorted(vs["VSORRES"].tolist()) == ["120", "80.0"]
