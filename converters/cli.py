"""The ``trialbridge`` command line.

Exit codes: 0 ok; 1 conversion errors (with ``--strict``: warnings too); 2 usage error or
unreadable input. Errors are one line naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from . import __version__
from .ehr.commands import pull
from .errors import TrialbridgeError, UsageError
from .pipeline import (
    SOURCE_FORMATS,
    TARGET_FORMATS,
    Options,
    convert_subjects,
    expand_inputs,
    load_study,
    read_studies,
    sniff,
    write_studies,
)
from .report import ConversionReport, Policy
from .roundtrip import roundtrip_command
from .safeio import write_json_atomic
from .submission.commands import package_command, validate_command

log = logging.getLogger("trialbridge")


def _finish(report: ConversionReport, outdir: Path, strict: bool) -> int:
    target = outdir / "report.json"
    write_json_atomic(target, report.to_json())
    for line in report.summary_lines():
        click.echo(line)
    click.echo(f"report: {target}")
    return 1 if report.has_errors(strict=strict) else 0


def describe_sdtm_folders(written: list[Path], report: ConversionReport) -> list[Path]:
    """Every folder that received SDTM datasets gets its define.xml (Define-XML 2.1)."""
    from .submission.define import write_define_for_folder
    folders = sorted({p.parent for p in written
                      if p.suffix in (".json", ".ndjson", ".xpt", ".csv") and ".provenance." not in p.name})
    out = []
    for folder in folders:
        path = write_define_for_folder(folder, report)
        report.outputs.remove(str(path))  # listed once, with the other outputs, by run_convert
        out.append(path)
    return out


def run_convert(inputs: Sequence[Path], to: str, outdir: Path, *, source: str | None = None,
                fhir_version: str = "R5", sdtm_formats: str = "json", study: Path | None = None,
                studyid: str | None = None, strict: bool = False, report_values: bool = False,
                ct_file: Path | None = None, extra: dict | None = None) -> tuple[int, ConversionReport]:
    report = ConversionReport(policy=Policy.RAISE if strict else Policy.WARN,
                              include_values=report_values)
    options = Options(fhir_version=fhir_version.upper(),
                      sdtm_formats=tuple(f.strip().lower() for f in sdtm_formats.split(",") if f.strip()),
                      studyid=studyid, ct_file=ct_file, extra=dict(extra or {}))
    if options.fhir_version not in ("R4", "R5"):
        raise UsageError(f"--fhir-version must be R4 or R5, not {fhir_version}")
    paths = expand_inputs(list(inputs))
    report.inputs = [str(p) for p in paths]
    if study is not None:
        options.study = load_study(study, report)
    subject_inputs: list[Path] = []
    written: list[Path] = []
    for path in paths:
        sniffed = sniff(path)
        if source and sniffed.fmt != source:
            raise UsageError(f"--from {source} given, but the input is {sniffed.fmt} ({sniffed.kind})",
                             file=str(path))
        if sniffed.kind in ("fhir-subjects",):
            subject_inputs.append(path)
            continue
        if sniffed.kind == "sdtm-folder" and to == "fhir":
            from .fhir.subject_writer import convert_sdtm_to_fhir, subject_domains_in
            if subject_domains_in(path):
                # subject domains: SDTM -> FHIR resources (the trial design alone goes to ResearchStudy)
                written.extend(convert_sdtm_to_fhir(path, outdir, options=options, report=report))
                continue
        studies = read_studies(path, sniffed, report)
        report.file = str(path)
        written.extend(write_studies(studies, to, outdir, options, report))
    if subject_inputs:
        written.extend(convert_subjects(subject_inputs, to, outdir, options, report))
    if to == "sdtm":
        written.extend(describe_sdtm_folders(written, report))
    report.file = report.record = None
    report.outputs = [str(p) for p in written]
    return _finish(report, outdir, strict), report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trialbridge")
def cli() -> None:
    """Move clinical trial definitions and subject data between ClinicalTrials.gov, FHIR and SDTM."""


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Choice(TARGET_FORMATS), help="Target format.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output folder (created if missing).")
@click.option("--from", "source", type=click.Choice(SOURCE_FORMATS), default=None,
              help="Source format (detected from the content when left out).")
@click.option("--fhir-version", default="R5", show_default=True, help="R4 or R5 for FHIR output.")
@click.option("--sdtm-format", "sdtm_formats", default="json", show_default=True,
              help="Comma-separated SDTM output forms: json (Dataset-JSON 1.1), ndjson, csv, xpt (SAS XPT v5). "
                   "A define.xml (Define-XML 2.1) describing them is always written.")
@click.option("--study", type=click.Path(path_type=Path), default=None,
              help="Study definition (any readable format) for subject-data conversions.")
@click.option("--studyid", default=None, help="STUDYID when no study definition is given.")
@click.option("--ct", "ct_file", type=click.Path(path_type=Path), default=None,
              help="A newer NCI SDTM Terminology file (tab-delimited) to use instead of the pinned CT.")
@click.option("--ndjson", is_flag=True,
              help="SDTM -> FHIR: one NDJSON file per resource type (Bulk Data layout) instead of a Bundle.")
@click.option("--default-tz", default=None,
              help="SDTM -> FHIR: time zone for SDTM times without one: Z, +hh:mm, or an IANA name "
                   "(Europe/Paris: offset per local time, DST-aware; a DST fold/gap time is cut and "
                   "reported). Without it such times are cut to their date, the text kept in an "
                   "extension, and the loss reported.")
@click.option("--strict", is_flag=True, help="Stop at the first warning; warnings fail the run.")
@click.option("--report-values", is_flag=True,
              help="Include source values in report.json (may contain subject data).")
@click.option("--salt-env", default="TRIALBRIDGE_SALT", show_default=True,
              help="Environment variable holding the salt for keyed-hash subject ids.")
@click.option("--expose-mrn", is_flag=True,
              help="Allow a medical record number to become USUBJID (off by default).")
@click.option("--test-codes", type=click.Path(path_type=Path), default=None,
              help="FHIR -> SDTM: your LOINC -> LBTESTCD/VSTESTCD decisions (CSV: domain,loinc,testcd"
                   "[,spec,method,category,reason]) for LOINCs the CDISC table does not map; each testcd must "
                   "be a CDISC CT term. Every use is reported.")
def convert(inputs: tuple[Path, ...], to: str, outdir: Path, source: str | None, fhir_version: str,
            sdtm_formats: str, study: Path | None, studyid: str | None, ct_file: Path | None,
            ndjson: bool, default_tz: str | None, strict: bool, report_values: bool, salt_env: str,
            expose_mrn: bool, test_codes: Path | None) -> None:
    """Convert INPUTS (files or folders) to another format."""
    code, _ = run_convert(inputs, to, outdir, source=source, fhir_version=fhir_version,
                          sdtm_formats=sdtm_formats, study=study, studyid=studyid, strict=strict,
                          report_values=report_values, ct_file=ct_file,
                          extra={"salt_env": salt_env, "expose_mrn": expose_mrn, "ndjson": ndjson,
                                 "default_tz": default_tz, "test_codes": test_codes})
    sys.exit(code)


def samples_dir() -> Path:
    """The bundled samples: the source tree's samples/ folder."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "samples", Path.cwd() / "samples"):
        if cand.is_dir():
            return cand
    raise UsageError("cannot find the samples/ folder (run from a source checkout)")


@cli.command()
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), default=Path("demo-out"),
              show_default=True, help="Output folder.")
def demo(outdir: Path) -> None:
    """Convert every bundled sample end to end and print what was written."""
    worst = 0
    for folder in sorted(p for p in samples_dir().iterdir() if p.is_dir()):
        record = folder / "ctgov.json"
        if not record.exists():
            continue
        base = outdir / folder.name
        steps: list[tuple[str, list[Path], str, Path, dict[str, Any]]] = [
            ("CT.gov -> FHIR R5", [record], "fhir", base / "fhir-r5", {"fhir_version": "R5"}),
            ("CT.gov -> FHIR R4", [record], "fhir", base / "fhir-r4", {"fhir_version": "R4"}),
            ("FHIR R5 -> CT.gov", [base / "fhir-r5" / f"{folder.name}.bundle.json"], "ctgov",
             base / "ctgov-from-fhir", {}),
            ("CT.gov -> SDTM trial design", [record], "sdtm", base / "sdtm",
             {"sdtm_formats": "json,csv"}),
        ]
        steps.append(("SDTM trial design -> CT.gov", [base / "sdtm"], "ctgov", base / "ctgov-from-sdtm", {}))
        subjects = folder / "subjects.bundle.json"
        if subjects.exists():
            # the sponsor's LOINC -> LBTESTCD decisions for this study, when the sample has them
            codes = folder / "test_codes.csv"
            steps.append(("FHIR subjects -> SDTM", [subjects], "sdtm", base / "sdtm-subjects",
                          {"study": record, "sdtm_formats": "json,csv,xpt",
                           "extra": {"test_codes": codes} if codes.exists() else {}}))
            steps.append(("SDTM subjects -> FHIR R5", [base / "sdtm-subjects"], "fhir",
                          base / "fhir-from-sdtm", {}))
        for title, ins, to, out, kw in steps:
            click.echo(f"== {folder.name}: {title} -> {out}")
            try:
                code, report = run_convert(ins, to, out, **kw)
            except TrialbridgeError as exc:
                click.echo(f"trialbridge: {exc.one_line()}", err=True)
                code = exc.exit_code
            else:
                for p in report.outputs:
                    click.echo(f"   wrote {p}")
            worst = max(worst, code)
    sys.exit(worst)


cli.add_command(pull)

cli.add_command(roundtrip_command)
cli.add_command(validate_command)
cli.add_command(package_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Testable entry point: returns the exit code instead of exiting."""
    logging.basicConfig(level=logging.WARNING, format="trialbridge: %(message)s")
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="trialbridge",
                 standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except TrialbridgeError as exc:
        click.echo(f"trialbridge: {exc.one_line()}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        return 2
    except Exception as exc:  # a defect of ours: one line, no traceback unless asked for
        if os.environ.get("TRIALBRIDGE_DEBUG"):
            raise
        click.echo(f"trialbridge: internal error ({type(exc).__name__}: {exc}); "
                   "set TRIALBRIDGE_DEBUG=1 for the traceback", err=True)
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
