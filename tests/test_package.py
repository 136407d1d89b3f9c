"""`trialbridge package`: eCTD m5 layout, XPT v5 + define.xml valid, Dataset-JSON copies, findings."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyreadstat
from trialbridge.cli import main
from trialbridge.submission.checks import check_findings_json
from trialbridge.submission.define import check_define_schema, read_define

from tests.conftest import shared_path


def test_package_msg_sample(tmp_path: Path) -> None:
    src = shared_path("dataset_json", "examples", "sdtm")
    out = tmp_path / "submission"
    code = main(["package", str(src), "-o", str(out)])
    sdtm = out / "m5" / "datasets" / "cdiscpilot01" / "tabulations" / "sdtm"
    xpts = sorted(sdtm.glob("*.xpt"))
    assert len(xpts) == 28
    for x in xpts:
        df, meta = pyreadstat.read_xport(str(x))
        assert meta.table_name == x.stem.upper() and len(df) > 0
    xsd = shared_path("trial_submission_studio", "resources", "Define-XML_2.1", "schema",
                      "cdisc-define-2.1", "define2-1-0.xsd")
    assert check_define_schema(sdtm / "define.xml", xsd) == []
    doc = read_define(sdtm / "define.xml")
    assert all((sdtm / d.leaf).exists() for d in doc.datasets.values())
    schema = json.loads(shared_path("dataset_json", "schema", "dataset.schema.json").read_text())
    for j in sorted((out / "dataset-json").glob("*.json")):
        jsonschema.Draft201909Validator(schema).validate(json.loads(j.read_bytes()))
    findings = json.loads((out / "validation" / "findings.json").read_text())
    check_findings_json(findings)
    # the packaged files pass every structural check; what remains is the sample's own data
    structural = {"TB-XPT-NAME", "TB-XPT-LABEL", "TB-XPT-LENGTH", "TB-XPT-ASCII", "TB-DEFINE-XSD",
                  "TB-DEFINE-DATASET", "TB-DEFINE-VAR", "TB-DEFINE-LENGTH", "TB-READ"}
    assert not [f for f in findings["findings"] if f["check"] in structural]
    assert code == (1 if findings["counts"]["error"] else 0)


def test_package_refuses_non_ascii_with_rows(tmp_path: Path, capsys) -> None:
    code = main(["package", str(shared_path("sdtm", "phuse_cdiscpilot01")), "-o",
                 str(tmp_path / "sub")])
    assert code == 1
    assert "TSVAL: 3 value(s) with non-ASCII characters" in capsys.readouterr().err


def test_package_splits_text_over_200_into_supp(tmp_path: Path, monkeypatch) -> None:
    """A Dataset-JSON folder with an AETERM of 479 characters (valid: Dataset-JSON has no 200-byte
    limit): validate says the XPT will split it (TB-XPT-LENGTH info, not an error); package writes the
    XPT as SDTMIG 3.4 4.5.3.2 says (first part in AETERM, the rest in SUPPAE AETERM1/AETERM2, made as
    no SUPPAE was given), the Dataset-JSON copy keeps the whole text, and the package validates without
    TB-XPT-LENGTH. It stopped on the value before."""
    monkeypatch.setenv("TRIALBRIDGE_SALT", "test-salt")
    words = " ".join(f"word{i:03d}" for i in range(60))
    subj = {"reference": "Patient/p1"}
    ae = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual", "subject": subj,
          "event": {"text": words}, "date": "2024-01-05"}
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in ({"resourceType": "Patient", "id": "p1"}, ae)]}))
    conv = tmp_path / "conv"
    main(["convert", str(src), "--to", "sdtm", "-o", str(conv), "--sdtm-format", "json", "--studyid", "LONG"])
    main(["validate", str(conv)])
    found = json.loads((conv / "findings.json").read_text())["findings"]
    (long,) = [f for f in found if f["check"] == "TB-XPT-LENGTH"]
    assert long["severity"] == "info" and "SUPPAE" in long["message"]
    out = tmp_path / "sub"
    main(["package", str(conv), "-o", str(out)])
    sdtm = out / "m5" / "datasets" / "long" / "tabulations" / "sdtm"
    ae_x, _ = pyreadstat.read_xport(str(sdtm / "ae.xpt"))
    supp, _ = pyreadstat.read_xport(str(sdtm / "suppae.xpt"))
    assert supp["QNAM"].tolist() == ["AETERM1", "AETERM2"]
    assert " ".join([ae_x["AETERM"].iat[0], *supp["QVAL"]]) == words
    copy = json.loads((out / "dataset-json" / "ae.json").read_text())
    assert words in copy["rows"][0]
    findings = json.loads((out / "validation" / "findings.json").read_text())["findings"]
    assert not [f for f in findings if f["check"] in ("TB-XPT-LENGTH", "TB-DEFINE-LENGTH", "TB-DEFINE-DATASET",
                                                      "TB-DEFINE-VAR", "TB-DEFINE-XSD", "TB-TEST-PAIR")]
    # a conversion's json,xpt output packaged: the XPTs as they are (not split twice), the copies whole
    both = tmp_path / "both"
    main(["convert", str(src), "--to", "sdtm", "-o", str(both), "--sdtm-format", "json,xpt", "--studyid", "LONG"])
    out2 = tmp_path / "sub2"
    main(["package", str(both), "-o", str(out2)])
    sdtm2 = out2 / "m5" / "datasets" / "long" / "tabulations" / "sdtm"
    supp2, _ = pyreadstat.read_xport(str(sdtm2 / "suppae.xpt"))
    assert supp2["QNAM"].tolist() == ["AETERM1", "AETERM2"]
    assert not (out2 / "dataset-json" / "suppae.json").exists()
    assert words in json.loads((out2 / "dataset-json" / "ae.json").read_text())["rows"][0]
    findings = json.loads((out2 / "validation" / "findings.json").read_text())["findings"]
    assert not [f for f in findings if f["check"] in ("TB-XPT-LENGTH", "TB-DEFINE-LENGTH", "TB-TEST-PAIR")]
