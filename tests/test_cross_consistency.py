"""Invariants across conversions of the same trial: the pieces must fit together."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.sdtm.datasetjson import read_dataset_json


def test_dm_arms_and_studyid_match_the_trial_design_of_the_same_study(tmp_path):
    study = SAMPLES / "NCT04835883" / "ctgov.json"
    subjects = SAMPLES / "NCT04835883" / "subjects.bundle.json"
    assert main(["convert", str(study), "--to", "sdtm", "-o", str(tmp_path / "td")]) == 0
    assert main(["convert", str(subjects), "--to", "sdtm", "--study", str(study),
                 "-o", str(tmp_path / "subj")]) == 0
    ta, _ = read_dataset_json(tmp_path / "td" / "ta.json")
    ts, _ = read_dataset_json(tmp_path / "td" / "ts.json")
    dm, _ = read_dataset_json(tmp_path / "subj" / "dm.json")
    assert set(dm["ARMCD"].replace("", pd.NA).dropna()) <= set(ta["ARMCD"])
    assert set(dm["ARM"].replace("", pd.NA).dropna()) <= set(ta["ARM"])
    assert set(dm["STUDYID"]) == set(ts["STUDYID"]) == set(ta["STUDYID"])


def test_planned_sv_visits_are_the_trial_design_visits_of_the_same_study(tmp_path):
    """SV of the subject data uses TV's planned visits (VISITNUM/VISIT pairs); unplanned visits sit
    between them (decimal VISITNUM, SVPRESP null) and shift no planned number."""
    study = SAMPLES / "NCT04835883" / "ctgov.json"
    subjects = SAMPLES / "NCT04835883" / "subjects.bundle.json"
    assert main(["convert", str(study), "--to", "sdtm", "-o", str(tmp_path / "td")]) == 0
    assert main(["convert", str(subjects), "--to", "sdtm", "--study", str(study),
                 "-o", str(tmp_path / "subj")]) == 0
    tv, _ = read_dataset_json(tmp_path / "td" / "tv.json")
    sv, _ = read_dataset_json(tmp_path / "subj" / "sv.json")
    tv_pairs = {(float(n), v) for n, v in zip(tv["VISITNUM"], tv["VISIT"], strict=True)}
    planned = sv[sv["SVPRESP"] == "Y"]
    assert len(planned) > 0
    assert {(float(n), v) for n, v in zip(planned["VISITNUM"], planned["VISIT"], strict=True)} <= tv_pairs
    unplanned = sv[sv["SVPRESP"] != "Y"]
    assert len(unplanned) > 0
    assert all(float(n) not in {p[0] for p in tv_pairs} for n in unplanned["VISITNUM"])
    assert (unplanned["SVUPDES"] != "").all()
    for dom in ("lb", "vs", "ex"):
        df, _ = read_dataset_json(tmp_path / "subj" / f"{dom}.json")
        got = {(float(n), v) for n, v in zip(df["VISITNUM"], df["VISIT"], strict=True) if v}
        sv_pairs = {(float(n), v) for n, v in zip(sv["VISITNUM"], sv["VISIT"], strict=True)}
        assert got <= sv_pairs, dom



@pytest.mark.parametrize("version", ["R5", "R4"])
@pytest.mark.parametrize("nct", ["NCT04835883", "NCT04522505"])
def test_trial_design_via_fhir_equals_trial_design_from_ctgov(tmp_path, nct, version):
    """CT.gov -> SDTM and CT.gov -> FHIR -> SDTM give the same five trial design datasets: FHIR
    carries every value the trial design datasets use (what it cannot carry is registry metadata)."""
    study = SAMPLES / nct / "ctgov.json"
    assert main(["convert", str(study), "--to", "sdtm", "-o", str(tmp_path / "direct")]) == 0
    assert main(["convert", str(study), "--to", "fhir", "--fhir-version", version,
                 "-o", str(tmp_path / "fhir")]) == 0
    bundle = tmp_path / "fhir" / f"{nct}.bundle.json"
    assert main(["convert", str(bundle), "--to", "sdtm", "-o", str(tmp_path / "via")]) == 0
    for dom in ("ts", "ta", "te", "tv", "ti"):
        direct, _ = read_dataset_json(tmp_path / "direct" / f"{dom}.json")
        via, _ = read_dataset_json(tmp_path / "via" / f"{dom}.json")
        pd.testing.assert_frame_equal(direct, via, obj=f"{nct} {version} {dom}")
