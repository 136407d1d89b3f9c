"""Format detection and the hub: inputs -> readers -> canonical model -> writers -> outputs.

Study definitions pivot on :class:`~trialbridge.model.Study`; subject data pivots on SDTM-shaped
tables (see :mod:`trialbridge.subject`). A new format is a reader and a writer registered here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError
from .model import Study
from .report import ConversionReport
from .safeio import looks_like_json, looks_like_xml, parse_json, parse_xml, read_bytes

SOURCE_FORMATS = ("ctgov", "fhir", "sdtm")
TARGET_FORMATS = ("ctgov", "fhir", "sdtm")

#: FHIR resource types that make a FHIR input *subject data* rather than a study definition.
SUBJECT_RESOURCE_TYPES = frozenset({
    "Patient", "ResearchSubject", "Observation", "Encounter", "Condition", "AdverseEvent",
    "MedicationAdministration", "MedicationStatement", "MedicationRequest", "Procedure", "Consent",
})


@dataclass
class Options:
    fhir_version: str = "R5"
    sdtm_formats: tuple[str, ...] = ("json",)
    study: Study | None = None          # study definition for subject data (--study)
    studyid: str | None = None
    ct_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _call(module: str, func: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(f"trialbridge.{module}"), func)


# ------------------------------------------------------------------ detection
@dataclass(frozen=True)
class Sniffed:
    fmt: str            # ctgov | fhir | sdtm
    kind: str           # ctgov-json | ctgov-xml | ctgov-printout | fhir-study | fhir-subjects | sdtm-folder | ndjson
    data: Any = None    # parsed content where parsing was needed to detect


def sniff(path: Path) -> Sniffed:
    """Detect the format of one input path (file or folder) from its content."""
    if path.is_dir():
        names = {p.name.lower() for p in path.iterdir()}
        if any(n.endswith(".ndjson") and n.split(".")[0][:1].isupper() for n in
               [p.name for p in path.iterdir()]):
            return Sniffed("fhir", "fhir-subjects")
        if any(n.split(".")[0] in {"ts", "ta", "te", "tv", "ti", "dm"} for n in names):
            return Sniffed("sdtm", "sdtm-folder")
        raise InputError("folder holds neither SDTM datasets nor FHIR NDJSON files", file=str(path))
    if path.suffix.lower() == ".ndjson":
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
        if b'"datasetJSONVersion"' in first:
            return Sniffed("sdtm", "sdtm-dataset")  # Dataset-JSON in its NDJSON form
        return Sniffed("fhir", "fhir-subjects")
    data = read_bytes(path)
    name = str(path)
    if looks_like_json(data):
        obj = parse_json(data, file=name)
        from .ctgov.v2 import is_ctgov_v2
        if is_ctgov_v2(obj):
            return Sniffed("ctgov", "ctgov-json", obj)
        if isinstance(obj, dict) and "resourceType" in obj:
            types = _resource_types(obj)
            if types & SUBJECT_RESOURCE_TYPES:
                return Sniffed("fhir", "fhir-subjects", obj)
            return Sniffed("fhir", "fhir-study", obj)
        if isinstance(obj, dict) and "datasetJSONVersion" in obj:
            return Sniffed("sdtm", "sdtm-dataset", obj)
        if isinstance(obj, dict) and ("FullStudiesResponse" in obj or "ProtocolSection" in (obj.get("Study") or {})):
            raise InputError("ClinicalTrials.gov classic API v1 JSON (FullStudiesResponse of the retired classic API) is not "
                             "read: use the record's API v2 JSON (https://clinicaltrials.gov/api/v2/studies/<NCT id>) "
                             "or its archived <clinical_study> XML", file=name)
        raise InputError("JSON is neither a ClinicalTrials.gov API v2 record, a FHIR resource nor "
                         "Dataset-JSON", file=name)
    if looks_like_xml(data):
        root = parse_xml(data, file=name)
        tag = root.tag if isinstance(root.tag, str) else ""
        if tag == "clinical_study":
            return Sniffed("ctgov", "ctgov-xml", root)
        raise InputError(f"XML root element <{tag}> is not <clinical_study> (legacy ClinicalTrials.gov "
                         "record)", file=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not JSON, XML or UTF-8 text", file=name) from None
    from .ctgov.printout import is_printout
    if is_printout(text):
        return Sniffed("ctgov", "ctgov-printout", text)
    raise InputError("not JSON, XML, or a ClinicalTrials.gov record printout", file=name)


def _resource_types(obj: dict[str, Any]) -> set[str]:
    if obj.get("resourceType") == "Bundle":
        return {str(e["resource"].get("resourceType")) for e in obj.get("entry", []) or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)}
    return {str(obj.get("resourceType"))}


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder of study records expands to its files (an SDTM or NDJSON folder
    stays one input)."""
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise InputError("no such file or folder", file=str(p))
        if p.is_dir():
            try:
                sniff(p)
                out.append(p)
                continue
            except InputError:
                pass
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise InputError("folder is empty", file=str(p))
            out.extend(files)
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------ study readers
def read_studies(path: Path, sniffed: Sniffed, report: ConversionReport) -> list[Study]:
    name = str(path)
    report.file = name
    if sniffed.kind == "ctgov-json":
        from .ctgov.v2 import read_ctgov_v2
        return read_ctgov_v2(sniffed.data, file=name, report=report)
    if sniffed.kind == "ctgov-xml":
        return _call("ctgov.legacy_xml", "read_legacy_xml")(sniffed.data, file=name, report=report)
    if sniffed.kind == "ctgov-printout":
        return _call("ctgov.printout", "read_printout")(sniffed.data, file=name, report=report)
    if sniffed.kind == "fhir-study":
        return _call("fhir.study_reader", "read_fhir_study")(sniffed.data, file=name, report=report)
    if sniffed.kind in ("sdtm-folder", "sdtm-dataset"):
        folder = path if path.is_dir() else path.parent
        return _call("sdtm.tdm_reader", "read_tdm_folder")(folder, report=report)
    raise InputError(f"{sniffed.kind} input holds subject data, not a study definition", file=name)


def load_study(path: Path, report: ConversionReport) -> Study:
    """The one study definition a subject-data conversion is given with --study."""
    saved = report.file
    try:
        studies = read_studies(path, sniff(path), report)
    finally:
        # the study file names only the issues of reading it: issues of the subject data that
        # follow are not about it (they name their own file, or none when they span several)
        report.file = saved
    if len(studies) != 1:
        raise UsageError(f"--study must hold exactly one study, found {len(studies)}", file=str(path))
    return studies[0]


# ------------------------------------------------------------------ study writers
def write_studies(studies: list[Study], to: str, outdir: Path, options: Options,
                  report: ConversionReport) -> list[Path]:
    written: list[Path] = []
    for study in studies:
        report.record = study.key
        if to == "ctgov":
            from .ctgov.v2 import write_ctgov_v2
            from .safeio import write_json_atomic
            target = outdir / f"{study.key}.json"
            write_json_atomic(target, write_ctgov_v2(study))
            written.append(target)
        elif to == "fhir":
            bundle = _call("fhir.study_writer", "write_fhir_bundle")(
                study, version=options.fhir_version, report=report)
            from .safeio import write_json_atomic
            target = outdir / f"{study.key}.bundle.json"
            write_json_atomic(target, bundle)
            written.append(target)
        elif to == "sdtm":
            written.extend(_call("sdtm.tdm_writer", "write_tdm")(
                study, outdir if len(studies) == 1 else outdir / study.key,
                formats=options.sdtm_formats, report=report, ct_file=options.ct_file))
        else:
            raise UsageError(f"unknown target format {to!r}")
    report.record = None
    return written


def convert_subjects(inputs: list[Path], to: str, outdir: Path, options: Options,
                     report: ConversionReport) -> list[Path]:
    if to != "sdtm":
        raise UsageError("subject data converts --to sdtm (SDTM -> FHIR is a later release)")
    return _call("subject.pipeline", "convert_subjects")(inputs, outdir, options=options,
                                                         report=report)
