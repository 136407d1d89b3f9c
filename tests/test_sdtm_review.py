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
