"""Dataset-JSON 1.1: official examples read and re-write equal; every file we write is schema-valid."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from trialbridge.sdtm.datasetjson import write_dataset_json
from trialbridge.submission.datasets import read_dataset, write_dataset_json_any

from tests.conftest import DATA, shared_path

EXAMPLES = DATA / "dataset_json" / "examples" / "sdtm"
FILES = sorted(EXAMPLES.glob("*.json")) + sorted(EXAMPLES.glob("*.ndjson"))


@pytest.fixture(scope="module")
def validators() -> tuple[jsonschema.Validator, jsonschema.Validator]:
    folder = shared_path("dataset_json", "schema")
    full = json.loads((folder / "dataset.schema.json").read_text("utf-8"))
    # the NDJSON schema is stored upstream as UTF-16LE with a BOM
    nd = json.loads((folder / "dataset-ndjson-schema.json").read_bytes().decode("utf-16"))
    return jsonschema.Draft201909Validator(full), jsonschema.Draft201909Validator(nd)


def check_file(path: Path, validators: tuple[jsonschema.Validator, jsonschema.Validator]) -> None:
    full, nd = validators
    if path.suffix == ".ndjson":
        lines = path.read_bytes().splitlines()
        # the upstream NDJSON schema has an unresolvable $ref ('#/$defs/Column' nested under
        # items): the metadata line is checked with the full schema, which does not require rows
        with pytest.raises(jsonschema.exceptions._WrappedReferencingError):
            list(nd.iter_errors(json.loads(lines[0])))
        errors = list(full.iter_errors(json.loads(lines[0])))
        assert all(isinstance(json.loads(x), list) for x in lines[1:])
    else:
        errors = list(full.iter_errors(json.loads(path.read_bytes())))
    assert not errors, [e.message for e in errors[:3]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_official_example_rewrites_equal(path: Path, tmp_path: Path, validators) -> None:
    ds = read_dataset(path)
    out = write_dataset_json_any(ds, tmp_path / path.name, ndjson=path.suffix == ".ndjson")
    check_file(out, validators)
    again = read_dataset(out)
    assert again.frame.equals(ds.frame)
    assert again.columns == ds.columns
    assert (again.name, again.label, len(again.frame)) == (ds.name, ds.label, ds.header["records"])


@pytest.mark.parametrize("ndjson", [False, True])
def test_our_writer_is_schema_valid(ndjson: bool, tmp_path: Path, validators) -> None:
    ds = read_dataset(shared_path("dataset_json", "examples", "sdtm", "ts.json"))
    frame = ds.frame[[c for c in ds.frame.columns if c in
                      ("STUDYID", "DOMAIN", "TSSEQ", "TSPARMCD", "TSPARM", "TSVAL")]]
    target = tmp_path / ("ts.ndjson" if ndjson else "ts.json")
    write_dataset_json(frame, "TS", target, study_oid="S1", ndjson=ndjson)
    check_file(target, validators)
    assert read_dataset(target).frame["TSVAL"].tolist() == frame["TSVAL"].tolist()


def test_csv_numbers_as_the_dataset_json_holds_them(tmp_path: Path) -> None:
    """CSV output writes a number as the Dataset-JSON beside it holds it (and as the streamed domains'
    CSV does): a whole value without ".0" (CMDOSE 500, VISITNUM 2), others as they are, none empty."""
    import pandas as pd
    from trialbridge.sdtm.datasetjson import build_dataset_json, write_csv

    df = pd.DataFrame({"STUDYID": ["S"] * 3, "DOMAIN": ["CM"] * 3, "USUBJID": ["S-1"] * 3, "CMSEQ": [1, 2, 3],
                       "CMTRT": ["A", "B", "C"], "CMDOSE": [500.0, 2.5, float("nan")], "VISITNUM": [2.0, 6.1, None]})
    path = write_csv(df, "CM", tmp_path / "cm.csv")
    got = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert got["CMDOSE"].tolist() == ["500", "2.5", ""]
    assert got["VISITNUM"].tolist() == ["2", "6.1", ""]
    doc = build_dataset_json(df, "CM", study_oid="S")
    names = [c["name"] for c in doc["columns"]]
    assert [r[names.index("CMDOSE")] for r in doc["rows"]] == [500, 2.5, None]
