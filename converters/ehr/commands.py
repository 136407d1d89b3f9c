"""``trialbridge pull``: read subject data from an EHR's FHIR server into an NDJSON folder.

Bulk Data ``$export`` (system, Patient or Group level) by default; FHIR REST search with paging
(``--search``) or one study's subjects by follow-up searches (``--research-study``) for servers
without bulk export. ``--to sdtm`` converts the folder afterwards with the subject-data path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from ..errors import UsageError
from ..report import ConversionReport, Policy
from ..safeio import write_json_atomic
from .auth import build_auth, load_auth_settings
from .bulk import PollLimits, check_since, kickoff_url, run_export
from .client import FhirClient, RetryPolicy
from .files import RESOURCE_TYPE, Progress
from .search import run_search, run_study_search

REPORT_NAME = ".trialbridge-pull-report.json"   # hidden: the converter reads every *.json here
SUBJECT_PIPELINE = "trialbridge.subject.pipeline"


def _types(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if not RESOURCE_TYPE.match(name):
                raise UsageError(f"--type {name!r} is not a FHIR resource type name")
            if name not in out:
                out.append(name)
    return out


@click.command()
@click.option("--server", required=True, help="FHIR base URL of the EHR (http or https).")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Folder for the NDJSON files (created if missing; a re-run resumes here).")
@click.option("--group", default=None, help="Bulk export of this Group's patients (Group/ID/$export).")
@click.option("--patients", "all_patients", is_flag=True,
              help="Bulk export of all patients (Patient/$export); default is system level.")
@click.option("--type", "types", multiple=True,
              help="Resource types (comma-separated or repeated): _type for an export, the data "
                   "types to fetch for --research-study.")
@click.option("--since", default=None, help="Export only resources changed after this instant "
              "(_since), e.g. 2024-01-01T00:00:00Z.")
@click.option("--search", "searches", multiple=True,
              help="A FHIR search such as 'Observation?subject=Patient/123' instead of a bulk "
                   "export; every page is followed. May be repeated.")
@click.option("--research-study", default=None,
              help="Search one ResearchStudy's subjects, their patients and their data.")
@click.option("--auth-config", type=click.Path(path_type=Path), default=None,
              help="JSON/YAML file with the credentials (else TRIALBRIDGE_* environment variables).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per HTTP request.")
@click.option("--retries", default=5, show_default=True, help="Retries per request on 429/5xx "
              "and dropped connections.")
@click.option("--backoff", default=1.0, show_default=True,
              help="First retry wait in seconds (doubles, with jitter).")
@click.option("--max-wait", default=3600.0, show_default=True,
              help="Seconds to wait for an export before cancelling it.")
@click.option("--poll-interval", default=2.0, show_default=True,
              help="First wait between status polls when the server sends no Retry-After.")
@click.option("--max-poll-interval", default=120.0, show_default=True,
              help="Longest wait between polls or retries, Retry-After included.")
@click.option("--max-pages", default=10000, show_default=True, help="Page limit per search.")
@click.option("--restart", is_flag=True, help="Start a new export instead of resuming.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.option("--to", "to", type=click.Choice(["sdtm"]), default=None,
              help="Convert the pulled folder afterwards.")
@click.option("--sdtm-output", type=click.Path(path_type=Path), default=None,
              help="Folder for the conversion (default: OUTPUT/sdtm).")
@click.option("--study", type=click.Path(path_type=Path), default=None,
              help="Study definition for the conversion (as in `convert --study`).")
@click.option("--studyid", default=None, help="STUDYID for the conversion.")
@click.option("--test-codes", type=click.Path(path_type=Path), default=None,
              help="Your LOINC -> LBTESTCD/VSTESTCD decisions for the conversion (as for convert).")
@click.option("--strict", is_flag=True, help="Warnings fail the run.")
@click.option("--report-values", is_flag=True,
              help="Keep server diagnostics and source values in the reports (may hold PHI).")
def pull(server: str, outdir: Path, group: str | None, all_patients: bool, types: tuple[str, ...],
         since: str | None, searches: tuple[str, ...], research_study: str | None,
         auth_config: Path | None, timeout: float, retries: int, backoff: float, max_wait: float,
         poll_interval: float, max_poll_interval: float, max_pages: int, restart: bool,
         quiet: bool, to: str | None, sdtm_output: Path | None, study: Path | None,
         studyid: str | None, test_codes: Path | None, strict: bool, report_values: bool) -> None:
    """Pull subject data from a FHIR server (Bulk Data $export or search) into OUTPUT."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {server!r} is not an http(s) URL")
    if searches and research_study:
        raise UsageError("give --search or --research-study, not both")
    searching = bool(searches or research_study)
    if searching and (group or all_patients or since):
        raise UsageError("--group, --patients and --since belong to a bulk export, not a search")
    if group and all_patients:
        raise UsageError("give --group or --patients, not both")
    if group is not None and not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", group):
        raise UsageError(f"--group {group!r} is not a FHIR id")
    if research_study is not None and not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", research_study):
        raise UsageError(f"--research-study {research_study!r} is not a FHIR id")
    if since is not None:
        check_since(since)
    if min(timeout, max_wait, poll_interval, max_poll_interval) <= 0 or retries < 0 or backoff < 0:
        raise UsageError("timeouts, waits and intervals must be positive, --retries 0 or more")
    if to == "sdtm" and importlib.util.find_spec(SUBJECT_PIPELINE) is None:
        raise UsageError("--to sdtm needs the subject-data converter (trialbridge.subject.pipeline), "
                         "which this installation does not have yet; pull without --to and convert "
                         "the folder later with `trialbridge convert`")
    type_list = _types(types)
    settings = load_auth_settings(auth_config, os.environ)
    report = ConversionReport(policy=Policy.RAISE if strict else Policy.WARN,
                              include_values=report_values)
    progress = Progress(quiet=quiet)
    policy = RetryPolicy(retries=retries, backoff=backoff, backoff_cap=max_poll_interval,
                         retry_after_cap=max_poll_interval, timeout=timeout)
    with FhirClient(server, policy=policy) as client:
        client.auth = build_auth(settings, client)
        if research_study:
            result = run_study_search(client, research_study, outdir, types=type_list,
                                      max_pages=max_pages, progress=progress, report=report)
            files, counts, skipped = result.files, result.counts, 0
            report.inputs = [client.safe_url(client.url(f"ResearchStudy/{research_study}"))]
        elif searches:
            result = run_search(client, list(searches), outdir, max_pages=max_pages,
                                progress=progress, report=report)
            files, counts, skipped = result.files, result.counts, 0
            report.inputs = [client.safe_url(client.url(q)) for q in searches]
        else:
            url = kickoff_url(client, group=group, patients=all_patients, types=type_list,
                              since=since)
            export = run_export(client, outdir, url, report=report, progress=progress,
                                restart=restart,
                                limits=PollLimits(interval=poll_interval, cap=max_poll_interval,
                                                  max_wait=max_wait))
            files, counts, skipped = export.files, export.counts, export.skipped
            files = files + export.error_files
            report.inputs = [client.safe_url(url)]
    report.outputs = [str(p) for p in files]
    write_json_atomic(outdir / REPORT_NAME, report.to_json())
    total = sum(counts.values())
    kinds = ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) or "nothing"
    click.echo(f"pulled {total} resource(s) into {outdir}: {kinds}"
               + (f" ({skipped} file(s) already complete)" if skipped else ""))
    if report.issues:
        for line in report.summary_lines():
            click.echo(line)
    click.echo(f"pull report: {outdir / REPORT_NAME}")
    code = 1 if report.has_errors(strict=strict) else 0
    if to == "sdtm":
        from ..cli import run_convert  # the CLI module imports this one: import when needed
        target = sdtm_output or outdir / "sdtm"
        click.echo(f"converting {outdir} to SDTM in {target}")
        convert_code, _ = run_convert([outdir], "sdtm", target, study=study, studyid=studyid,
                                      strict=strict, report_values=report_values,
                                      extra={"test_codes": test_codes} if test_codes else None)
        code = max(code, convert_code)
    sys.exit(code)
