"""CT.gov API v2 JSON reader/writer: identity round trip, access tracking, type and enum checks."""

from __future__ import annotations

import copy

import orjson
import pytest
from conftest import shared_path
from trialbridge.ctgov.v2 import read_ctgov_v2, write_ctgov_v2
from trialbridge.errors import InputError
from trialbridge.report import ConversionReport, Kind


def _records():
    folder = shared_path("ctgov", "api_v2_json")
    return sorted(folder.glob("*.json"))


def _load(path):
    return orjson.loads(path.read_bytes())


def test_every_v2_record_reads_and_writes_back_identically():
    records = _records()
    assert len(records) >= 10
    for path in records:
        data = _load(path)
        report = ConversionReport()
        (study,) = read_ctgov_v2(data, file=str(path), report=report)
        assert report.issues == [], (path.name, [i.to_json() for i in report.issues])
        assert write_ctgov_v2(study) == data, path.name


def test_list_page_gives_one_study_per_entry():
    a, b = (_load(p) for p in _records()[:2])
    report = ConversionReport()
    studies = read_ctgov_v2({"studies": [a, b], "nextPageToken": "x"}, file="page.json", report=report)
    assert [s.key for s in studies] == [a["protocolSection"]["identificationModule"]["nctId"],
                                        b["protocolSection"]["identificationModule"]["nctId"]]
    assert report.issues == []


def test_unknown_field_is_reported_by_path_not_dropped_silently():
    data = copy.deepcopy(_load(_records()[0]))
    data["protocolSection"]["statusModule"]["brandNewField"] = "x"
    data["protocolSection"]["armsInterventionsModule"]["armGroups"][0]["newArmThing"] = 1
    report = ConversionReport()
    read_ctgov_v2(data, file="x.json", report=report)
    sources = {i.source for i in report.issues if i.kind is Kind.UNMAPPED_SOURCE}
    assert sources == {"protocolSection.statusModule.brandNewField",
                       "protocolSection.armsInterventionsModule.armGroups[].newArmThing"}


def test_wrong_type_is_an_invalid_value_with_its_path():
    data = copy.deepcopy(_load(_records()[0]))
    data["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = "ten"
    report = ConversionReport()
    (study,) = read_ctgov_v2(data, file="x.json", report=report)
    (issue,) = [i for i in report.issues if i.kind is Kind.INVALID_VALUE]
    assert issue.source == "protocolSection.designModule.enrollmentInfo.count"
    assert issue.message == "expected int, found str; value left out"
    assert study.design.enrollment.count is None


def test_value_outside_the_ctgov_enum_is_kept_and_reported():
    data = copy.deepcopy(_load(_records()[0]))
    data["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING_SOMETIMES"
    report = ConversionReport()
    (study,) = read_ctgov_v2(data, file="x.json", report=report)
    assert study.status.overall_status == "RECRUITING_SOMETIMES"
    (issue,) = report.issues
    assert issue.kind is Kind.INVALID_VALUE
    assert issue.message == "'RECRUITING_SOMETIMES' is not a value of the CT.gov enum Status"


@pytest.mark.parametrize("bad", ["NCT123", "nct04835883", 4835883, "NCT048358831"])
def test_an_id_that_is_no_nct_id_is_refused(bad):
    data = {"protocolSection": {"identificationModule": {"nctId": bad}}}
    with pytest.raises(InputError) as exc:
        read_ctgov_v2(data, file="f.json", report=ConversionReport())
    assert str(exc.value) == (f"f.json: field protocolSection.identificationModule.nctId: "
                              f"nctId {bad!r} is not an NCT id (NCT followed by 8 digits)")


def test_partial_record_reads_as_far_as_it_goes():
    data = {"protocolSection": {"identificationModule": {"nctId": "NCT00000001", "briefTitle": "T"},
                                "statusModule": {"overallStatus": "COMPLETED",
                                                 "startDateStruct": {"date": "2019-09"}}}}
    report = ConversionReport()
    (study,) = read_ctgov_v2(data, file="f.json", report=report)
    assert study.status.start_date.date == "2019-09"  # partial dates stay partial
    assert study.design is None
    assert report.issues == []


def test_classic_api_v1_json_is_refused_by_name(tmp_path) -> None:
    """The retired classic API v1 JSON is recognised and refused with what to use instead (it was refused as
    'neither a ClinicalTrials.gov API v2 record, a FHIR resource nor Dataset-JSON', which does not say why)."""
    from trialbridge.pipeline import sniff
    f = tmp_path / "v1.json"
    f.write_text('{"FullStudiesResponse": {"APIVrs": "1.01.05", "FullStudies": [{"Rank": 1, "Study": '
                 '{"ProtocolSection": {"IdentificationModule": {"NCTId": "NCT00023673"}}}}]}}', encoding="utf-8")
    with pytest.raises(InputError) as exc:
        sniff(f)
    assert "classic API v1 JSON" in str(exc.value) and "API v2" in str(exc.value)
