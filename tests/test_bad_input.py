"""Bad input through the CLI: one line on stderr naming the file and the problem, exit code 2,
no traceback, nothing left in the output folder. The messages are part of the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trialbridge import safeio
from trialbridge.cli import main

XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE clinical_study [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
       b"<clinical_study><id_info><nct_id>&xxe;</nct_id></id_info></clinical_study>\n")
LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 10))
          + b"]>\n<lolz>&lol9;</lolz>\n")


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: bytes | None,
        *extra: str) -> tuple[int, str, Path]:
    src = tmp_path / name
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out"
    code = main(["convert", str(src), "--to", "ctgov", "-o", str(out), *extra])
    return code, capsys.readouterr().err, out


def assert_refused(code: int, err: str, out: Path, expected: str) -> None:
    assert code == 2
    assert err == f"trialbridge: {expected}\n"
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_not_json_or_xml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "notes.txt", b"just some words\n")
    assert_refused(code, err, out,
                   f"{tmp_path / 'notes.txt'}: not JSON, XML, or a ClinicalTrials.gov record printout")


def test_broken_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "broken.json", b'{"protocolSection": ')
    assert code == 2
    assert err.startswith(f"trialbridge: {tmp_path / 'broken.json'}: not valid JSON (")
    assert err.count("\n") == 1
    assert not out.exists()


def test_wrong_root_element(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "feed.xml",
                         b'<?xml version="1.0"?><rss version="2.0"><channel/></rss>')
    assert_refused(code, err, out, f"{tmp_path / 'feed.xml'}: XML root element <rss> is not "
                   "<clinical_study> (legacy ClinicalTrials.gov record)")


def test_json_nct_id_that_is_no_nct_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record = {"protocolSection": {"identificationModule": {"nctId": "NCT123"}}}
    code, err, out = run(capsys, tmp_path, "study.json", json.dumps(record).encode())
    assert_refused(code, err, out, f"{tmp_path / 'study.json'}: field "
                   "protocolSection.identificationModule.nctId: nctId 'NCT123' is not an NCT id "
                   "(NCT followed by 8 digits)")


def test_xml_nct_id_that_is_no_nct_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xml = b"<clinical_study><id_info><nct_id>12345</nct_id></id_info></clinical_study>"
    code, err, out = run(capsys, tmp_path, "study.xml", xml)
    assert_refused(code, err, out, f"{tmp_path / 'study.xml'}: field clinical_study/id_info/nct_id: "
                   "nct_id '12345' is not an NCT id (NCT followed by 8 digits)")


def test_xml_without_nct_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "study.xml", b"<clinical_study><brief_title>x</brief_title>"
                         b"</clinical_study>")
    assert_refused(code, err, out, f"{tmp_path / 'study.xml'}: field clinical_study/id_info/nct_id: "
                   "no <id_info>/<nct_id>: not a ClinicalTrials.gov record")


def test_wrong_type_is_a_report_entry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record = {"protocolSection": {"identificationModule": {"nctId": "NCT01234567"},
                                  "designModule": {"enrollmentInfo": {"count": "12"}}}}
    code, err, out = run(capsys, tmp_path, "study.json", json.dumps(record).encode())
    assert code == 0 and err == ""
    report = json.loads((out / "report.json").read_text())
    assert report["issues"] == [{
        "kind": "invalid-value", "severity": "warning",
        "message": "expected int, found str; value left out", "rule": "ctgov.Enrollment.count",
        "source": "protocolSection.designModule.enrollmentInfo.count", "record": "NCT01234567",
        "file": str(tmp_path / "study.json")}]
    written = json.loads((out / "NCT01234567.json").read_text())
    design = written["protocolSection"].get("designModule", {})
    assert "count" not in design.get("enrollmentInfo", {})


def test_xml_wrong_type_is_a_report_entry(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xml = (b"<clinical_study><id_info><nct_id>NCT01234567</nct_id></id_info>"
           b'<enrollment type="Actual">about forty</enrollment></clinical_study>')
    code, err, out = run(capsys, tmp_path, "study.xml", xml)
    assert code == 0 and err == ""
    issues = json.loads((out / "report.json").read_text())["issues"]
    assert {"kind": "invalid-value", "severity": "warning",
            "message": "'about forty' is not a whole number; value left out",
            "rule": "lx.design.enrollment.count", "source": "clinical_study/enrollment",
            "target": "protocolSection.designModule.enrollmentInfo.count", "record": "NCT01234567",
            "file": str(tmp_path / "study.xml")} in issues


def test_empty_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "empty.json", b"")
    assert_refused(code, err, out, f"{tmp_path / 'empty.json'}: file is empty")


def test_blank_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "blank.xml", b"  \n\n ")
    assert_refused(code, err, out, f"{tmp_path / 'blank.xml'}: file is empty")


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "absent.json", None)
    assert_refused(code, err, out, f"{tmp_path / 'absent.json'}: no such file or folder")


def test_100_mb_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as fh:  # sparse: no 100 MB written to disk
        fh.truncate(100 * 1024 * 1024)
    code, err, out = run(capsys, tmp_path, "big.json", None)
    assert_refused(code, err, out, f"{big}: file is 104,857,600 bytes, over the "
                   f"{safeio.MAX_INPUT_BYTES:,}-byte limit for this input "
                   "(set TRIALBRIDGE_MAX_INPUT_BYTES to raise it)")


def test_external_entity(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "xxe.xml", XXE)
    assert_refused(code, err, out, f"{tmp_path / 'xxe.xml'}: XML declares entities (<!ENTITY>); "
                   "refused for safety")
    assert "root:" not in err  # nothing of /etc/passwd


def test_entity_expansion(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "laughs.xml", LAUGHS)
    assert_refused(code, err, out, f"{tmp_path / 'laughs.xml'}: XML declares entities (<!ENTITY>); "
                   "refused for safety")


def test_truncated_xml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err, out = run(capsys, tmp_path, "cut.xml", b"<clinical_study><id_info><nct_id>NCT0")
    assert code == 2
    assert err.startswith(f"trialbridge: {tmp_path / 'cut.xml'}: not well-formed XML (")
    assert err.count("\n") == 1
    assert not out.exists()


def test_a_bad_file_among_good_leaves_no_output(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"protocolSection": {"identificationModule": {"nctId": "NCT01234567"}}}))
    bad = tmp_path / "b.xml"
    bad.write_bytes(XXE)
    out = tmp_path / "out"
    code = main(["convert", str(bad), str(good), "--to", "ctgov", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"trialbridge: {bad}: XML declares entities (<!ENTITY>); refused for safety\n"
    assert not out.exists()
