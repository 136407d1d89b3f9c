"""Rule subject.unread (nothing is lost silently): every top-level element of a converted FHIR resource that
no rule reads is reported once per (resource type, element) with its count; privacy drops (lossy), narrative
and modifier extensions are reported too; elements the declared table (mappings/subject/read_elements.yaml)
lists as read never are, and the table matches the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SAMPLES, shared_path
from trialbridge.pipeline import Options
from trialbridge.report import ConversionReport, Kind, Policy, Severity
from trialbridge.specs import load_spec
from trialbridge.subject import pipeline as P
from trialbridge.subject import unread as U
from trialbridge.subject.pipeline import convert_subjects

CODE = Path(U.__file__).parent
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
RULES = ("subject.unread", "subject.privacy", "subject.narrative", "subject.modifier")


def _obs(i: int, cat: str = "vital-signs", loinc: str = "8867-4", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "category": [{"coding": [{"system": OBS_CAT, "code": cat}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-01T08:00:00",
            "valueQuantity": {"value": 70, "unit": "/min", "system": UCUM, "code": "/min"}, **extra}


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01",
           "identifier": [{"system": "urn:test", "value": "P1"}], "name": [{"family": "Doe"}],
           "telecom": [{"system": "phone", "value": "555"}], "address": [{"line": ["1 Main St"], "country": "US"}],
           "contact": [{"name": {"family": "Roe"}}], "photo": [{"title": "x"}],
           "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Doe</div>"},
           "maritalStatus": {"text": "married"}, "multipleBirthBoolean": False,
           "communication": [{"language": {"text": "English"}}], "active": True}


def _run(tmp_path: Path, resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
         *, ndjson: bool = True) -> ConversionReport:
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    src = tmp_path / "in"
    src.mkdir(parents=True, exist_ok=True)
    if ndjson:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        for t, rs in by_type.items():
            (src / f"{t}.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in rs) + b"\n")
    else:
        (src / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                                   "entry": [{"resource": r} for r in resources]}))
    report = ConversionReport(policy=Policy.IGNORE)
    convert_subjects([src], tmp_path / "out", options=Options(studyid="ST1", sdtm_formats=("csv",)),
                     report=report)
    return report


def _entries(report: ConversionReport, rule: str = "subject.unread") -> dict[str, str]:
    got: dict[str, str] = {}
    for i in report.issues:
        if i.rule == rule:
            assert i.source not in got, f"{i.source} reported twice"
            got[str(i.source)] = i.message
    return got


def _count(message: str) -> int:
    m = re.search(r" in (\d+) resource\(s\)", message)
    assert m, message
    return int(m.group(1))


def test_observation_unread_elements_reported_once_with_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demonstration case: a vital-signs heart rate with note, performer, device, method converts to VS,
    and each of the four is reported once with the number of resources that carry it."""
    obs = [_obs(1, note=[{"text": "n"}], performer=[{"reference": "Practitioner/x"}], device={"display": "d"},
                method={"text": "m"}),
           _obs(2, note=[{"text": "n2"}], issued="2024-01-01T09:00:00Z"), _obs(3, issued="2024-01-01T09:00:00Z"),
           _obs(4)]
    report = _run(tmp_path, [PATIENT, *obs], monkeypatch)
    got = _entries(report)
    obs_got = {k: _count(v) for k, v in got.items() if k.startswith("Observation.")}
    assert obs_got == {"Observation.note": 2, "Observation.performer": 1, "Observation.device": 1,
                       "Observation.method": 1, "Observation.issued": 2}
    assert got["Observation.note"] == "Observation.note in 2 resource(s): no SDTM variable reads it"
    issue = next(i for i in report.issues if i.source == "Observation.note")
    assert issue.kind is Kind.UNMAPPED_SOURCE and issue.record is None and issue.value is None
    assert len((tmp_path / "out" / "vs.csv").read_text().splitlines()) == 5   # all four converted


def test_observation_shapes_off_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an Observation reads depends on its category and shape: value types _findings._value does not
    convert, a top-level valueInteger beside components, a specimen on vital signs, a body site on a lab."""
    comp = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}]
    obs = [
        {k: v for k, v in _obs(1).items() if k != "valueQuantity"} | {"valueInteger": 70},   # read: VSORRES 70
        {k: v for k, v in _obs(2).items() if k != "valueQuantity"} | {"valueRatio": {"numerator": {"value": 1}}},
        _obs(3, loinc="85354-9", component=comp) | {"valueInteger": 3},
        _obs(4, specimen={"reference": "Specimen/s1"}),
        _obs(5, cat="laboratory", loinc="2093-3", bodySite={"text": "arm"}),
        _obs(6, loinc="85354-9", component=comp, effectiveTiming={"code": {"text": "x"}}),
    ]
    report = _run(tmp_path, [PATIENT, *obs], monkeypatch)
    got = {k: _count(v) for k, v in _entries(report).items() if k.startswith("Observation.")}
    assert got == {"Observation.valueRatio": 1, "Observation.valueInteger": 1, "Observation.specimen": 1,
                   "Observation.bodySite": 1, "Observation.effectiveTiming": 1}


def test_extension_urls_no_rule_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-level extensions are checked by URL: the ones a rule reads are not reported, every other URL is,
    once per type with its count (the URL is no subject value; the extension's value never appears)."""
    race = {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "text", "valueString": "White"}]}
    maiden = {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Smith"}
    pos = {"url": "http://hl7.org/fhir/StructureDefinition/observation-bodyPosition",
           "valueCodeableConcept": {"text": "sitting"}}
    other = {"url": "http://example.org/ext/device-model", "valueString": "X1"}
    report = _run(tmp_path, [PATIENT | {"extension": [race, maiden]}, _obs(1, extension=[pos, other]),
                             _obs(2, extension=[other, other]), _obs(3, extension=[pos])], monkeypatch)
    got = {k: _count(v) for k, v in _entries(report).items() if "extension" in k}
    assert got == {"Patient.extension('http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName')": 1,
                   "Observation.extension('http://example.org/ext/device-model')": 2}
    text = orjson.dumps(report.to_json()).decode()
    assert "Smith" not in text and "X1" not in text


def test_fast_path_and_row_path_report_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    obs = [_obs(i, **({"issued": "2024-01-01T09:00:00Z"} if i % 2 else {}),
                **({"note": [{"text": "n"}]} if i % 3 == 0 else {}),
                **({"extension": [{"url": "urn:x", "valueString": "y"}]} if i % 5 == 0 else {}))
           for i in range(40)]
    fast = _entries(_run(tmp_path / "a", [PATIENT, *obs], monkeypatch))
    monkeypatch.setattr(P, "_columnar_route", lambda routes: None)   # the row extractor for every resource
    rows = _entries(_run(tmp_path / "b", [PATIENT, *obs], monkeypatch))
    assert fast == rows
    assert _count(fast["Observation.issued"]) == 20 and _count(fast["Observation.note"]) == 14


def test_patient_privacy_drops_and_unread_elements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _run(tmp_path, [PATIENT, _obs(1)], monkeypatch, ndjson=False)
    privacy = _entries(report, "subject.privacy")
    assert set(privacy) == {"Patient.name", "Patient.telecom", "Patient.address", "Patient.contact",
                            "Patient.photo", "Patient.text"}
    assert all(_count(m) == 1 and "privacy rule" in m for m in privacy.values())
    assert all(i.kind is Kind.LOSSY for i in report.issues if i.rule == "subject.privacy")
    assert "DM.COUNTRY" in privacy["Patient.address"]
    unread = {k for k in _entries(report) if k.startswith("Patient.")}
    assert unread == {"Patient.maritalStatus", "Patient.multipleBirthBoolean", "Patient.communication",
                      "Patient.active"}
    assert "Doe" not in orjson.dumps(report.to_json()).decode()   # no subject values


def test_encounter_unread_and_narrative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = [{"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"text": "Visit"}], "subject": {"reference": "Patient/p1"},
            "period": {"start": f"2024-01-0{i}", "end": f"2024-01-0{i}"},
            "location": [{"location": {"display": "Room"}}], "participant": [{"individual": {"display": "Dr"}}],
            **({"hospitalization": {"admitSource": {"text": "x"}}} if i == 1 else {}),
            "text": {"status": "generated", "div": "<div/>"}} for i in (1, 2, 3)]
    report = _run(tmp_path, [PATIENT, *enc], monkeypatch)
    got = {k: _count(v) for k, v in _entries(report).items() if k.startswith("Encounter.")}
    assert got == {"Encounter.location": 3, "Encounter.participant": 3, "Encounter.hospitalization": 1}
    narrative = _entries(report, "subject.narrative")
    assert _count(narrative["Encounter.text"]) == 3
    assert next(i for i in report.issues if i.rule == "subject.narrative").severity is Severity.INFO


@pytest.mark.parametrize("path", ["fast", "row", "component"])
def test_modifier_extensions_are_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    mod = [{"url": "http://example.org/not-given", "valueBoolean": True}]
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"},
           "period": {"start": "2024-01-01"}, "location": [{"modifierExtension": mod, "location": {"display": "R"}}],
           **({"modifierExtension": mod} if path == "row" else {})}
    extra: dict[str, Any] = {"modifierExtension": mod}
    if path == "component":   # a shape only the row extractor takes
        extra["component"] = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                               "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]
    if path == "row":   # the row extractor for every resource
        monkeypatch.setattr(P, "_columnar_route", lambda routes: None)
    report = _run(tmp_path, [PATIENT, enc, _obs(1, **extra), _obs(2, **extra)], monkeypatch)
    assert "Encounter.modifierExtension" not in _entries(report)   # top level or nested: a modifier, not twice
    mods = [i for i in report.issues if i.rule == "subject.modifier"]
    assert [(i.source, i.severity) for i in mods] == [("Encounter.modifierExtension", Severity.WARNING),
                                                      ("Observation.modifierExtension", Severity.WARNING)]
    assert mods[1].message.startswith("2 modifierExtension(s) on Observation resources (http://example.org/not-given)")
    assert "Observation.modifierExtension" not in _entries(report)   # reported as a modifier, not twice


def test_resources_not_converted_are_not_reported_element_by_element(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An out-of-scope or entered-in-error Observation is reported whole by its own rule (subject.scope,
    vs.STAT): its elements are not listed again."""
    obs = [_obs(1, cat="survey", note=[{"text": "n"}]), _obs(2, note=[{"text": "n"}]) | {"status": "entered-in-error"}]
    report = _run(tmp_path, [PATIENT, *obs], monkeypatch)
    assert not [k for k in _entries(report) if k.startswith("Observation.")]


# ---------------------------------------------------------------------------------- the table and the code
def _code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(CODE.rglob("*.py")))


def test_every_declared_read_element_is_read_by_the_code() -> None:
    """The table is built from the code: each element it lists as read is named in converters/subject, as a
    quoted name, or as the stem a generic choice helper completes (_codes.period_or_datetime)."""
    code = _code_text()
    stems = set(re.findall(r"period_or_datetime\([^,]+,\s*\"(\w+)\"\)", code))
    spec = load_spec(U.SPEC)
    missing = []
    for rtype, entry in spec["types"].items():
        for elem in [*spec["common"], *(entry.get("read") or {})]:
            name = elem[:-3] if elem.endswith("[x]") else elem
            quoted = f'"{name}' if elem.endswith("[x]") else f'"{name}"'
            helper = any(name == s + t for s in stems for t in ("DateTime", "Period", "Instant", "Range"))
            if quoted not in code and f"'{name}'" not in code and not helper:
                missing.append(f"{rtype}.{elem}")
    assert missing == []


def test_every_declared_extension_url_is_read_by_the_code() -> None:
    """Each extension URL the table lists is named in converters/subject: as a literal, or as the HL7
    cross-version stem (_codes.XV) plus the element it carries, or as the project's own extension."""
    from trialbridge.fhir import subject_terms as T
    from trialbridge.subject.domains import _codes as C
    code = _code_text()
    project = {T.EXT_SDTM: "EXT_SDTM", T.EXT_SUPPQUAL: "EXT_SUPPQUAL", T.EXT_RELREC: "EXT_RELREC"}
    missing = []
    for rtype, e in U.element_table().items():
        for url in e.extensions:
            if url in project:
                ok = project[url] in code
            elif url.startswith(C.XV):
                ok = f'C.XV + "{url[len(C.XV):]}"' in code
            else:
                ok = f'"{url}"' in code
            if not ok:
                missing.append(f"{rtype}: {url}")
    assert missing == []


def test_table_covers_every_converted_type() -> None:
    from trialbridge.subject import base
    routed = {t for p in base.registered_domains().values() for t in p.resource_types}
    assert routed == set(U.element_table()), "every type routed to a domain needs a row in read_elements.yaml"
    assert U.expand(["deceased[x]"]) >= {"deceasedBoolean", "deceasedDateTime"}
    assert "issued" not in U.read_elements("Observation")
    assert U.read_elements("Patient").isdisjoint({"name", "telecom", "contact", "photo"})


def _spec_sources() -> set[tuple[str, str]]:
    """(resource type, element) pairs the domain specs name in their rules' `source`: ``Type.element``
    as written, and an unqualified ``element`` for every type the domain reads."""
    from trialbridge.subject import base
    out: set[tuple[str, str]] = set()
    for dom, plugin in base.registered_domains().items():
        spec = load_spec(f"subject/{dom.lower()}.yaml")
        text = " ".join(str(r.get("source", "")) for r in spec.get("rules") or () if isinstance(r, dict))
        out |= set(re.findall(r"\b([A-Z][A-Za-z]+)\.([a-z_][A-Za-z]+)", text))
        bare = set(re.findall(r"(?<![.\w(])([a-z_][A-Za-z]+)(?=[.\s|,;]|$)", text))
        out |= {(t, e) for t in plugin.resource_types for e in bare}
    return out


def test_sample_reports_no_read_element(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample bundle: subject.unread names elements only the code does not read (never one the table
    lists as read, never one a domain spec names as a rule source), each once."""
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    report = ConversionReport(policy=Policy.IGNORE)
    convert_subjects([SAMPLES / "NCT04835883" / "subjects.bundle.json"], tmp_path,
                     options=Options(studyid="NCT04835883", sdtm_formats=("csv",)), report=report)
    got = _entries(report)
    assert got, "the sample carries elements no rule reads (e.g. Observation.issued)"
    sources = _spec_sources()
    assert ("Observation", "valueQuantity") in sources or ("VS", "valueQuantity") in sources or \
        any(e == "valueQuantity" for _, e in sources)
    for src in got:
        rtype, elem = src.split(".", 1)
        assert elem not in U.read_elements(rtype), src
        assert (rtype, elem) not in sources, f"{src} is named as a source by a domain spec"
    assert "Observation.issued" in got and "Observation.valueQuantity" not in got


def test_synthea_unread_elements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthea Bulk NDJSON (real third-party data): the elements the inventory found unread are reported,
    with counts that match the input; none the table lists as read."""
    src = shared_path("fhir", "synthea_ndjson_1_patient_ktmtwm")
    if not src.exists():
        pytest.skip(f"{src} not present")
    monkeypatch.setenv("TRIALBRIDGE_SALT", "s")
    report = ConversionReport(policy=Policy.IGNORE)
    convert_subjects([src], tmp_path, options=Options(studyid="SYN", sdtm_formats=("csv",)), report=report)
    got = _entries(report)
    for key in got:
        rtype, elem = key.split(".", 1)
        assert elem not in U.read_elements(rtype), key
    issued = 0
    for f in src.glob("Observation*.ndjson"):
        for line in f.read_bytes().splitlines():
            if line.strip():
                o = orjson.loads(line)
                cats = {c.get("code") for cc in o.get("category") or () for c in cc.get("coding") or ()}
                if "issued" in o and cats & {"vital-signs", "laboratory"} and o.get("status") != "entered-in-error" \
                        and ("value" in "".join(o) or "component" in o):
                    issued += 1
    if issued:
        assert _count(got["Observation.issued"]) == issued
    assert any(k.startswith("Encounter.") for k in got)


# ------------------------------------------------------------------------- nested (subject.unread-nested)
def _lab(i: int, **extra: Any) -> dict[str, Any]:
    rng = {"low": {"value": 12, "unit": "g/dL", "system": UCUM, "code": "g/dL"},
           "high": {"value": 16, "unit": "g/dL", "system": UCUM, "code": "g/dL"}}
    base = _obs(i, cat="laboratory", loinc="718-7",
                valueQuantity={"value": 13.1, "unit": "g/dL", "system": UCUM, "code": "g/dL"},
                referenceRange=[rng],
                interpretation=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                             "code": "N"}]}])
    base.update(extra)
    return base


NESTED_CASES = [
    _lab(1),                                                                   # the usual shape: nothing
    _lab(2, referenceRange=[_lab(0)["referenceRange"][0], {"text": "age 65+: 11-15", "appliesTo": [{"text": "65+"}]}]),
    _lab(3, referenceRange=[{**_lab(0)["referenceRange"][0], "type": {"text": "normal"}}]),
    _lab(4, valueQuantity={"value": 13.1, "unit": "g/dL", "system": UCUM, "code": "g/dL",
                           "extension": [{"url": "urn:x", "valueString": "y"}]}),
    _lab(5, interpretation=[{"coding": [{"system": "urn:v3", "code": "N"}], "text": "normal"}]),
    _lab(6, interpretation=[{"coding": [{"system": "urn:v3", "code": "N"}]}, {"coding": [{"code": "POS"}]}]),
    _lab(7, code={"coding": [{"system": "http://loinc.org", "code": "718-7"},
                             {"system": "http://hospital.example/lab", "code": "HGB"}]}),
    _lab(8, referenceRange=[{"low": {"value": 12, "unit": "g/dL", "id": "lo"}, "high": {"value": 16}}]),
    _lab(9, code={"coding": [{"system": "http://loinc.org", "code": "718-7"},
                             {"system": "http://hospital.example/lab", "code": "HGB"}]}),
]


def test_nested_parts_items_and_codings_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below a partly-read element: a second reference range (age-specific ranges are real data), a part no
    rule reads (type, an extension on the quantity, a text-only interpretation), a local lab code beside
    the LOINC: each reported once per path with its count; nothing for the usual shape."""
    report = _run(tmp_path, [PATIENT, *NESTED_CASES], monkeypatch)
    got = {k: _count(v) for k, v in _entries(report, "subject.unread-nested").items()}
    assert got == {"Observation.referenceRange[2+]": 1, "Observation.referenceRange.type": 1,
                   "Observation.valueQuantity.extension": 1, "Observation.interpretation.text": 1,
                   "Observation.interpretation[2+]": 1, "Observation.referenceRange.low.id": 1,
                   "Observation.code.coding(http://hospital.example/lab)": 2}
    sev = {i.source: i.severity for i in report.issues if i.rule == "subject.unread-nested"}
    # the concept is kept by the LOINC; a value is not
    assert sev["Observation.code.coding(http://hospital.example/lab)"] is Severity.INFO
    assert sev["Observation.referenceRange[2+]"] is Severity.WARNING
    assert len((tmp_path / "out" / "lb.csv").read_text().splitlines()) == 1 + len(NESTED_CASES)


def test_nested_fast_path_and_row_path_report_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _entries(_run(tmp_path / "a", [PATIENT, *NESTED_CASES], monkeypatch), "subject.unread-nested")
    monkeypatch.setattr(P, "_columnar_route", lambda routes: None)
    rows = _entries(_run(tmp_path / "b", [PATIENT, *NESTED_CASES], monkeypatch), "subject.unread-nested")
    assert fast == rows and fast


def test_nested_medication_and_procedure_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    med = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
           "subject": {"reference": "Patient/p1"},
           "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                     "code": "197361"}], "text": "amlodipine 5 MG"},
           "dosageInstruction": [{"text": "5 mg daily", "asNeededBoolean": True, "site": {"text": "oral"},
                                  "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}},
                                                  {"doseQuantity": {"value": 10, "unit": "mg"}}]}],
           "reasonReference": [{"reference": "Condition/c1"}, {"reference": "Condition/c2"}]}
    proc = {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}], "text": "Appendectomy"},
            "bodySite": [{"text": "appendix"}, {"text": "abdomen"}], "performedDateTime": "2020-01-01"}
    report = _run(tmp_path, [PATIENT, med, proc], monkeypatch)
    got = {k: _count(v) for k, v in _entries(report, "subject.unread-nested").items()}
    assert got == {"MedicationRequest.dosageInstruction.asNeededBoolean": 1,
                   "MedicationRequest.dosageInstruction.site": 1,
                   "MedicationRequest.dosageInstruction.doseAndRate[2+]": 1,
                   "MedicationRequest.reasonReference[2+]": 1,
                   "MedicationRequest.medicationCodeableConcept.coding(http://www.nlm.nih.gov/research/umls/rxnorm)": 1,
                   "Procedure.bodySite[2+]": 1}


def test_nested_table_names_parts_of_read_elements_only() -> None:
    """Every nested path starts at an element the type reads, and each dotted step below a declared one."""
    for rtype, e in U.element_table().items():
        for path in e.nested:
            top = path.split(".")[0]
            assert top in e.read, (rtype, path)
            parent = path.rsplit(".", 1)[0]
            if "." in path and parent in e.nested and e.nested[parent].parts is not None:
                assert path.rsplit(".", 1)[1] in e.nested[parent].parts, (rtype, path)


def test_a_second_coding_of_a_read_system_is_reported_on_every_path(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two LOINC codings in Observation.code: the first gives --TESTCD, the second is reported (not lost
    silently), on the fast paths as on the row path; two MedDRA codings of a Condition likewise."""
    obs = [_lab(1, code={"coding": [{"system": "http://loinc.org", "code": "718-7"},
                                    {"system": "http://loinc.org", "code": "30313-1"}]}), _lab(2)]
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/mdr", "code": "10019211"},
                                {"system": "http://terminology.hl7.org/CodeSystem/mdr", "code": "10019233"}],
                     "text": "Headache"}}
    fast = _entries(_run(tmp_path / "a", [PATIENT, cond, *obs], monkeypatch), "subject.unread-nested")
    monkeypatch.setattr(P, "_columnar_route", lambda routes: None)
    rows = _entries(_run(tmp_path / "b", [PATIENT, cond, *obs], monkeypatch), "subject.unread-nested")
    assert fast == rows
    assert {k: _count(v) for k, v in fast.items()} == {
        "Observation.code.coding(http://loinc.org)[2+]": 1,
        "Condition.code.coding(http://terminology.hl7.org/CodeSystem/mdr)[2+]": 1}
