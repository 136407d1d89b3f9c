"""Invariants across conversions of the same trial: the pieces must fit together."""

from __future__ import annotations

import pandas as pd

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
