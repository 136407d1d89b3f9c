"""Click commands ``trialbridge validate`` and ``trialbridge package`` (registered in cli.py).

Exit codes: 0 no error findings; 1 error findings (with ``--strict``: warnings too);
2 usage error or unreadable input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:   # the checks pull in pandas and lxml: imported when a command runs
    from .checks import ValidationResult


def _summary(result: ValidationResult) -> None:
    from .checks import check_table
    counts = result.counts()
    click.echo(f"{len(result.datasets)} dataset(s) in {result.folder}; findings: "
               f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info; "
               f"CDISC CORE: {result.core.status}")
    for f in result.findings[:25]:
        sev = f.severity or check_table()[f.check]["severity"]
        where = ".".join(p for p in (f.dataset, f.variable) if p)
        rows = f" rows {', '.join(map(str, f.rows[:5]))}{' ...' if len(f.rows) > 5 else ''}" \
            if f.rows else ""
        click.echo(f"  {sev.upper():7} {f.check:18} {where}: {f.message}{rows}")
    if len(result.findings) > 25:
        click.echo(f"  ... {len(result.findings) - 25} more in the report")


def _exit_code(result: ValidationResult, strict: bool) -> int:
    counts = result.counts()
    return 1 if counts["error"] or (strict and counts["warning"]) else 0


@click.command("validate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--core", "core", type=click.Path(path_type=Path), default=None,
              help="CDISC CORE engine (core executable or cdisc-rules-engine checkout) to run too.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None,
              help="Findings report file [default: FOLDER/findings.json].")
@click.option("--ct", "ct_file", type=click.Path(path_type=Path), default=None,
              help="A newer NCI SDTM Terminology file instead of the pinned CT.")
@click.option("--report-values", is_flag=True,
              help="Include the offending values in the report (may contain subject data).")
@click.option("--strict", is_flag=True, help="Warnings fail the run too.")
def validate_command(folder: Path, core: Path | None, output: Path | None, ct_file: Path | None,
                     report_values: bool, strict: bool) -> None:
    """Check a folder of SDTM datasets (XPT, Dataset-JSON, CSV) and its define.xml."""
    from ..safeio import write_json_atomic
    from ..sdtm.ct import load_ct
    from .checks import check_findings_json, validate_folder
    result = validate_folder(folder, ct=load_ct(ct_file), core=core)
    doc = result.to_json(report_values)
    check_findings_json(doc)
    target = output or folder / "findings.json"
    write_json_atomic(target, doc)
    _summary(result)
    click.echo(f"report: {target}")
    sys.exit(_exit_code(result, strict))


@click.command("package")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Submission folder to lay out.")
@click.option("--core", "core", type=click.Path(path_type=Path), default=None,
              help="CDISC CORE engine to run on the packaged datasets too.")
@click.option("--ct", "ct_file", type=click.Path(path_type=Path), default=None,
              help="A newer NCI SDTM Terminology file instead of the pinned CT.")
@click.option("--report-values", is_flag=True,
              help="Include the offending values in the findings (may contain subject data).")
@click.option("--strict", is_flag=True, help="Warnings fail the run too.")
def package_command(folder: Path, output: Path, core: Path | None, ct_file: Path | None,
                    report_values: bool, strict: bool) -> None:
    """Lay out a submission folder: XPT v5, define.xml, Dataset-JSON copies, findings."""
    from ..sdtm.ct import load_ct
    from .package import package_folder
    result = package_folder(folder, output, ct=load_ct(ct_file), core=core,
                            report_values=report_values)
    for p in result.files:
        click.echo(f"wrote {p}")
    _summary(result.validation)
    sys.exit(_exit_code(result.validation, strict))

