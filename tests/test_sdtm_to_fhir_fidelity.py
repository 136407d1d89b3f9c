"""SDTM -> FHIR fidelity (issue #5 follow-ups): values checked against the FHIR R4 (4.0.1) and R5 (5.0.0)
definitions, valid output (official JSON schemas + fhir.resources), and SDTM -> FHIR -> SDTM closure.

- AdverseEvent.seriousness: R4 CodeSystem adverse-event-seriousness is case-sensitive (Non-serious,
  Serious and one child of Serious per criterion); R5's value set has serious | non-serious only.
- Condition.clinicalStatus from MHENDTC / MHENRTPT + MHENTPT (SDTMIG 3.4 MH), only where unambiguous;
  verificationStatus refuted for a pre-specified condition that did not occur (MHPRESP Y, MHOCCUR N).
- Dosage.route: the SNOMED CT route code (example binding route-codes) beside the NCIt coding when
  codes/fhir_route.csv pairs the term one-to-one.
- Encounter.class from SVCNTMOD (v3 ActCode VR for remote contact); R4 (class 1..1) without one: the
  data-absent-reason extension, never a chosen class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fhir_study_support import resources, sdtm_to_fhir_checked
from trialbridge.fhir import subject_terms as T
from trialbridge.report import ConversionReport

SER = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
# R4 4.0.1 CodeSystem adverse-event-seriousness: code -> display (hl7.org/fhir/R4 codesystem page)
R4_SERIOUSNESS = {
    "Non-serious": "Non-serious", "Serious": "Serious", "SeriousResultsInDeath": "Results in death",
    "SeriousIsLifeThreatening": "Is Life-threatening",
    "SeriousResultsInHospitalization": "Requires or prolongs inpatient hospitalization",
    "SeriousResultsInDisability": "Results in persistent or significant disability/incapacity",
    "SeriousIsBirthDefect": "Is a congenital anomaly/birth defect",
    "SeriousRequiresPreventImpairment": "Requires intervention to prevent permanent impairment"}
R5_SERIOUSNESS = {"serious": "Serious", "non-serious": "Non-serious"}

DM = {"STUDYID": ["S1"], "DOMAIN": ["DM"], "USUBJID": ["S1-001"], "SUBJID": ["001"], "SITEID": ["01"],
      "SEX": ["F"], "RFSTDTC": ["2020-01-01"]}
AE = {"AETERM": ["Pneumonia", "Sepsis", "Stroke", "Rash", "Fall", "Fracture"],
      "AESER": ["Y", "Y", "Y", "N", "Y", "Y"],
      "AESHOSP": ["Y", "Y", "N", "N", None, "N"], "AESDTH": ["N", "Y", "N", "N", None, "N"],
      "AESMIE": ["N", "N", "Y", "N", None, "N"], "AESINTV": ["N", "N", "N", "N", None, "Y"],
      "AESTDTC": ["2020-01-03", "2020-01-04", "2020-01-05", "2020-01-06", "2020-01-07", "2020-01-08"],
      "AEENDTC": ["2020-01-10", None, "2020-02", None, None, None]}
MH = {"MHTERM": ["Asthma", "Appendicitis", "Gout", "Eczema", "Migraine", "Acne", "Diabetes", "Psoriasis"],
      "MHDTC": ["2020-01-01"] * 8,
      "MHENDTC": [None, None, "2019-05", None, None, None, None, None],
      "MHENRTPT": ["ONGOING", "BEFORE", "ONGOING", "AFTER", "ONGOING", None, None, None],
      "MHENTPT": ["SCREENING", "2020-01-01", "2020-01-01", "2020-01-01", None, None, None, None],
      "MHENRF": [None, None, None, None, None, "BEFORE", None, None],
      "MHPRESP": [None] * 6 + ["Y", "Y"], "MHOCCUR": [None] * 6 + ["N", "U"],
      "MHSEV": ["MILD", "SEVERE", None, "GRADE 2", None, None, None, None]}
SV = {"VISITNUM": [1, 2, 3], "VISIT": ["SCREENING", "WEEK 1", "WEEK 2"],
      "SVSTDTC": ["2020-01-01", "2020-01-08", "2020-01-15"], "SVCNTMOD": ["IN PERSON", "TELEPHONE CALL", None]}
CM = {"CMTRT": ["ASPIRIN", "NICOTINE"], "CMROUTE": ["ORAL", "TRANSDERMAL"]}


def _frame(domain: str, cols: dict[str, list[Any]]) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    seq = {} if domain == "SV" else {f"{domain}SEQ": list(range(1, n + 1))}
    return pd.DataFrame({"STUDYID": ["S1"] * n, "DOMAIN": [domain] * n, "USUBJID": ["S1-001"] * n, **seq, **cols})


@pytest.fixture(scope="module")
def sdtm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fid") / "sdtm"
    folder.mkdir()
    pd.DataFrame(DM).to_csv(folder / "dm.csv", index=False)
    for dom, cols in (("AE", AE), ("MH", MH), ("SV", SV), ("CM", CM)):
        _frame(dom, cols).to_csv(folder / f"{dom.lower()}.csv", index=False)
    return folder


def _write(sdtm: Path, out: Path, version: str) -> tuple[dict[str, Any], ConversionReport, list[Path]]:
    return sdtm_to_fhir_checked(sdtm, out, version)


def _by_text(bundle: dict[str, Any], rtype: str, path: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in resources(bundle, rtype):
        node: Any = r
        for p in path:
            node = node[p]
        out[node] = r
    return out


def _sdtm_ext(res: dict[str, Any]) -> dict[str, Any]:
    return {s["url"]: s.get("valueString", s.get("valueDecimal")) for e in res.get("extension", ())
            if e["url"] == T.EXT_SDTM for s in e["extension"]}


def _messages(report: ConversionReport, source: str) -> list[str]:
    return [i.message for i in report.issues if i.source == source]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_seriousness_codes_per_version(sdtm: Path, tmp_path: Path, version: str) -> None:
    bundle, report, _ = _write(sdtm, tmp_path, version)
    aes = _by_text(bundle, "AdverseEvent", ("event" if version == "R4" else "code", "text"))
    got = {t: [(c["system"], c["code"], c["display"]) for c in r["seriousness"]["coding"]] for t, r in aes.items()}
    table = R4_SERIOUSNESS if version == "R4" else R5_SERIOUSNESS
    for codings in got.values():
        assert len(codings) == 1 and codings[0][0] == SER and table[codings[0][1]] == codings[0][2]
    if version == "R4":
        # one criterion flag with a code -> that code; the flag it says is not repeated in the extension
        assert got["Pneumonia"][0][1] == "SeriousResultsInHospitalization"
        assert "AESHOSP" not in _sdtm_ext(aes["Pneumonia"]) and _sdtm_ext(aes["Pneumonia"])["AESDTH"] == "N"
        assert got["Fracture"][0][1] == "SeriousRequiresPreventImpairment"
        # two flags, AESMIE alone (no R4 code), no flag at all: generic Serious, flags kept
        assert [got[t][0][1] for t in ("Sepsis", "Stroke", "Fall", "Rash")] == ["Serious"] * 3 + ["Non-serious"]
        assert _sdtm_ext(aes["Sepsis"])["AESHOSP"] == "Y" and _sdtm_ext(aes["Stroke"])["AESMIE"] == "Y"
        msgs = _messages(report, "AE.AESER")
        assert any(m.startswith("several serious criteria flags are Y") and m.endswith("(1 value)") for m in msgs)
        assert any(m.startswith("the one serious criterion flag Y (AESMIE") for m in msgs)
    else:
        assert {t: c[0][1] for t, c in got.items()} == {
            "Pneumonia": "serious", "Sepsis": "serious", "Stroke": "serious", "Rash": "non-serious",
            "Fall": "serious", "Fracture": "serious"}
        assert _sdtm_ext(aes["Pneumonia"])["AESHOSP"] == "Y"
        assert any(m.startswith("R5 seriousness says only serious | non-serious") and m.endswith("(4 values)")
                   for m in _messages(report, "AE.AESER"))


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_clinical_status_only_where_unambiguous(sdtm: Path, tmp_path: Path, version: str) -> None:
    bundle, report, _ = _write(sdtm, tmp_path, version)
    conds = _by_text(bundle, "Condition", ("code", "text"))
    status = {t: [(c["system"], c["code"]) for c in (r.get("clinicalStatus") or {}).get("coding", [])]
              for t, r in conds.items()}
    none = [(CLIN, "unknown")] if version == "R5" else []
    assert status == {"Asthma": [(CLIN, "active")], "Appendicitis": [(CLIN, "inactive")],
                      "Gout": [(CLIN, "inactive")], "Eczema": none, "Migraine": none, "Acne": none,
                      "Diabetes": none, "Psoriasis": none}
    # a pre-specified condition that did not occur (MHPRESP Y, MHOCCUR N) is refuted; MHOCCUR U says nothing
    ver = {t: r["verificationStatus"]["coding"] for t, r in conds.items() if "verificationStatus" in r}
    assert ver == {"Diabetes": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                 "code": "refuted"}]}
    assert any(m.startswith("MHOCCUR N without MHPRESP Y, or U") and m.endswith("(1 value)")
               for m in _messages(report, "MH.MHOCCUR"))
    # MHSEV: text + NCIt coding of the CT term (C66769) + the SNOMED CT code of the condition-severity value
    # set (preferred binding; codes/fhir_ae_severity.csv); a sponsor value keeps its text only, reported
    assert conds["Asthma"]["severity"] == {"text": "MILD", "coding": [
        {"system": NCIT, "code": "C41338", "display": "Mild Adverse Event"},
        {"system": "http://snomed.info/sct", "code": "255604002"}]}
    assert conds["Appendicitis"]["severity"]["coding"][1] == {"system": "http://snomed.info/sct", "code": "24484000"}
    assert not any("condition-severity" in m for m in _messages(report, "MH.MHSEV"))
    assert conds["Eczema"]["severity"] == {"text": "GRADE 2"} and _sdtm_ext(conds["Eczema"])["MHSEV"] == "GRADE 2"
    assert any(m.startswith("not a term of the CDISC CT codelist AESEV") for m in _messages(report, "MH.MHSEV"))
    # the SDTM variables stay in the sdtm extension: the status says less than they do
    assert _sdtm_ext(conds["Asthma"])["MHENTPT"] == "SCREENING"
    msgs = _messages(report, "MH.MHENRTPT")
    assert any(m.startswith("MHENRTPT ONGOING beside an end date") and m.endswith("(1 value)") for m in msgs)
    assert any(m.startswith("MHENRTPT/MHENRF do not say the clinical status") and m.endswith("(3 values)")
               for m in msgs)


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_route_and_encounter_class(sdtm: Path, tmp_path: Path, version: str) -> None:
    bundle, report, _ = _write(sdtm, tmp_path, version)
    ms = _by_text(bundle, "MedicationStatement", ("medication", "concept", "text") if version == "R5"
                  else ("medicationCodeableConcept", "text"))
    oral = ms["ASPIRIN"]["dosage"][0]["route"]["coding"]
    assert [(c["system"], c["code"]) for c in oral] == [(NCIT, "C38288"), (T.SNOMED, "26643006")]
    assert [c["system"] for c in ms["NICOTINE"]["dosage"][0]["route"]["coding"]] == [NCIT]
    assert any(m.startswith("no SNOMED CT route code paired one-to-one") for m in _messages(report, "CM.CMROUTE"))
    enc = {r["type"][0]["text"]: r.get("class") for r in resources(bundle, "Encounter")}
    vr = {"system": T.V3_ACT, "code": "VR", "display": "virtual"}
    dar = {"extension": [{"url": T.DATA_ABSENT, "valueCode": "unknown"}]}
    if version == "R4":
        assert enc == {"SCREENING": dar, "WEEK 1": vr, "WEEK 2": dar}
        assert any(m.startswith("R4 Encounter.class is required") and m.endswith("(2 values)")
                   for m in _messages(report, "SV.SVCNTMOD"))
    else:
        assert enc == {"SCREENING": None, "WEEK 1": [{"coding": [vr]}], "WEEK 2": None}
    assert any(m.startswith("contact mode without a v3 ActEncounterCode") for m in _messages(report, "SV.SVCNTMOD"))


def test_bound_pairs_are_one_to_one() -> None:
    """Only pairs that are one-to-one in the FHIR -> SDTM table are written: EDQM and SNOMED both
    code ORAL, yet per system the pairing is one-to-one."""
    snomed = T.bound_pairs("fhir_route.csv", T.SNOMED)
    assert snomed["ORAL"] == "26643006" and snomed["INTRAVENOUS"] == "47625008"
    assert len(set(snomed.values())) == len(snomed)
    assert "TRANSDERMAL" not in snomed


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_sdtm_fhir_sdtm_closes(sdtm: Path, tmp_path: Path, version: str) -> None:
    """What the new elements say comes back: AESHOSP from the R4 criterion code (not from the extension),
    MHENRTPT/MHENTPT exactly (the carried MHENTPT replaces the collection date FHIR -> SDTM infers),
    MHPRESP/MHOCCUR (refuted -> N, Y),
    CMROUTE, and SVCNTMOD."""
    from trialbridge.pipeline import Options
    from trialbridge.sdtm.reader import read_sdtm_folder
    from trialbridge.subject.pipeline import convert_subjects
    _, _, paths = _write(sdtm, tmp_path / "fhir", version)
    back = ConversionReport()
    convert_subjects(paths, tmp_path / "back", options=Options(fhir_version=version), report=back)
    got = read_sdtm_folder(tmp_path / "back", datasets={"AE", "MH", "CM", "SV"}).frames

    def col(dom: str, key: str, var: str) -> dict[Any, Any]:
        df = got[dom]
        return {k: (None if v != v or v == "" else v) for k, v in zip(df[key], df[var], strict=True)}
    assert col("AE", "AETERM", "AESER") == dict(zip(AE["AETERM"], AE["AESER"], strict=True))
    # R4: the end date travels in the official cross-version extension (xver-r5.r4
    # .../5.0/StructureDefinition/extension-AdverseEvent.occurrence, no [x]) that FHIR -> SDTM reads
    for flag in ("AESHOSP", "AESDTH", "AESMIE", "AESINTV", "AESTDTC", "AEENDTC"):
        assert col("AE", "AETERM", flag) == dict(zip(AE["AETERM"], AE[flag], strict=True)), flag
    for var in ("MHENRTPT", "MHENTPT", "MHENRF", "MHENDTC", "MHPRESP", "MHOCCUR", "MHSEV"):
        assert col("MH", "MHTERM", var) == dict(zip(MH["MHTERM"], MH[var], strict=True)), var
    assert col("CM", "CMTRT", "CMROUTE") == dict(zip(CM["CMTRT"], CM["CMROUTE"], strict=True))
    assert col("SV", "VISIT", "SVCNTMOD") == dict(zip(SV["VISIT"], SV["SVCNTMOD"], strict=True))


def test_seriousness_rows_map_back_through_the_fhir_to_sdtm_table() -> None:
    """Every seriousness code the writer can emit is read back by FHIR -> SDTM (codes/fhir_ae_seriousness.csv)
    as the same AESER and, for a criterion code, exactly the flag it was written from."""
    from trialbridge.specs import load_table
    back = {(r["source_system"], r["source_code"]): r for r in load_table("codes/fhir_ae_seriousness.csv")}
    flags = ("AESDTH", "AESLIFE", "AESHOSP", "AESDISAB", "AESCONG", "AESINTV")
    seen = 0
    for r in load_table("fhir_subject/sdtm_to_fhir_codes.csv"):
        if not r["source_system"].startswith("AESER"):
            continue
        row = back[(r["target_system"], r["target_code"])]
        if r["source_system"] == "AESER R4 criterion":
            assert row["target_code"] == "Y" and [f for f in flags if row[f] == "Y"] == [r["source_code"]], r
            assert R4_SERIOUSNESS[r["target_code"]] == r["target_display"], r
        else:
            assert row["target_code"] == r["source_code"] and not any(row[f] for f in flags), r
            table = R4_SERIOUSNESS if r["source_system"] == "AESER R4" else R5_SERIOUSNESS
            assert table[r["target_code"]] == r["target_display"], r
        seen += 1
    assert seen == 10


def test_ucum_for_a_unit_term_respelled_since_the_cdisc_ucum_table() -> None:
    """C67412 is mL/min/1.73m2 in the CDISC Unit-UCUM table (2022) and mL/min/1.73 m2 in CT 2025-03-28:
    found by its C-code, as FHIR -> SDTM finds it (it used to get no UCUM code at all)."""
    from trialbridge.fhir.subject_terms import ucum_for
    assert ucum_for("mL/min/1.73 m2") == ucum_for("mL/min/1.73m2") == "mL/min/(173/100).m2"
    assert ucum_for("10^9/L") == "10^9/L" and ucum_for("not a unit") is None
