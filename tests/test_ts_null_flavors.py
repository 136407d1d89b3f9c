"""TS null flavors say what the record says: no limit (NINF/PINF) only when eligibility is given
without that bound; no information (NI) when the record has no eligibility at all."""

from __future__ import annotations

import copy

import orjson
from conftest import SAMPLES
from trialbridge.cli import main
from trialbridge.sdtm.datasetjson import read_dataset_json


def _ts(tmp_path, record: dict) -> dict[str, tuple[str, str]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(record))
    assert main(["convert", str(src), "--to", "sdtm", "-o", str(tmp_path / "out")]) == 0
    ts, _ = read_dataset_json(tmp_path / "out" / "ts.json")
    return {r.TSPARMCD: (r.TSVAL, r.TSVALNF) for r in ts.itertuples() if r.TSPARMCD in ("AGEMIN", "AGEMAX")}


def test_no_eligibility_module_is_no_information(tmp_path):
    record = orjson.loads((SAMPLES / "NCT04522505" / "ctgov.json").read_bytes())
    assert "eligibilityModule" not in record["protocolSection"]
    assert _ts(tmp_path, record) == {"AGEMIN": ("", "NI"), "AGEMAX": ("", "NI")}


def test_eligibility_without_a_bound_is_no_limit(tmp_path):
    record = copy.deepcopy(orjson.loads((SAMPLES / "NCT04835883" / "ctgov.json").read_bytes()))
    assert _ts(tmp_path / "a", record) == {"AGEMIN": ("P18Y", ""), "AGEMAX": ("P70Y", "")}
    del record["protocolSection"]["eligibilityModule"]["maximumAge"]
    del record["protocolSection"]["eligibilityModule"]["minimumAge"]
    assert _ts(tmp_path / "b", record) == {"AGEMIN": ("", "NINF"), "AGEMAX": ("", "PINF")}
