"""FHIR Bulk Data Access (IG v2.0.0) ``$export``: kick-off, status polling, manifest, downloads.

Kick-off is a GET with ``Accept: application/fhir+json`` and ``Prefer: respond-async``; the server
answers 202 with ``Content-Location``, the status URL. Polling honours ``Retry-After`` (capped) and
shows ``X-Progress``; a total time limit bounds it, and giving up (or Ctrl-C) sends DELETE to the
status URL to cancel the export. The completion manifest's output files are streamed to disk
(:func:`~trialbridge.ehr.files.download_file`), with the access token only when the manifest says
``requiresAccessToken: true``; error files (OperationOutcome NDJSON) are downloaded too and their
issues reported. A re-run of the same request resumes: it polls the recorded status URL or goes
straight to the files, skipping those already complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from ..errors import UsageError
from ..report import ConversionReport, Kind, Severity
from .client import FhirClient, outcome_text, parse_retry_after
from .errors import ExportTimeout, PullError
from .files import RESOURCE_TYPE, Progress, PullState, download_file, part_path

log = logging.getLogger("trialbridge.ehr")

MIN_POLL = 0.1     # never poll faster than this, whatever Retry-After says
ERRORS_DIR = "errors"


@dataclass(frozen=True)
class PollLimits:
    interval: float = 2.0       # first wait when the server sends no Retry-After; grows 1.5x
    cap: float = 120.0          # longest wait between polls, Retry-After included
    max_wait: float = 3600.0    # total time to wait for the export before cancelling it


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)
    error_files: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)


def check_since(since: str) -> str:
    """``--since`` must be a FHIR instant: date, time and time zone."""
    try:
        parsed = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in since:
        raise UsageError(f"--since {since!r} is not a FHIR instant with a time zone "
                         "(e.g. 2024-01-01T00:00:00Z)")
    return since


def kickoff_url(client: FhirClient, *, group: str | None, patients: bool, types: Sequence[str],
                since: str | None) -> str:
    if group is not None:
        path = f"Group/{group}/$export"
    elif patients:
        path = "Patient/$export"
    else:
        path = "$export"
    params = {}
    if types:
        params["_type"] = ",".join(types)
    if since:
        params["_since"] = since
    query = urlencode(params, safe=",:")
    return client.url(path) + (f"?{query}" if query else "")


def cancel(client: FhirClient, status_url: str, progress: Progress) -> None:
    """DELETE the status URL (best effort: failing to cancel must not hide the first error)."""
    try:
        resp = client.http.request("DELETE", status_url, auth=client.auth)
        progress.note(f"cancelled the export on the server (DELETE: HTTP {resp.status_code})")
    except Exception as exc:  # noqa: BLE001
        log.warning("could not cancel the export (%s)", type(exc).__name__)


def poll(client: FhirClient, status_url: str, limits: PollLimits, progress: Progress, *,
         clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll ``status_url`` until the manifest arrives; cancel the export when giving up."""
    started = clock()
    interval = limits.interval
    last_progress = None
    where = client.safe_url(status_url)
    try:
        while True:
            resp = client.request("GET", status_url, headers={"Accept": "application/json"})
            if resp.status_code == 200:
                try:
                    manifest = orjson.loads(resp.content)
                except orjson.JSONDecodeError:
                    raise PullError(f"{where}: the completion manifest is not JSON") from None
                return check_manifest(manifest, where)
            if resp.status_code in (404, 410):
                raise PullError(f"{where}: HTTP {resp.status_code}: the server no longer knows this "
                                "export; re-run with --restart")
            if resp.status_code != 202:
                raise PullError(f"the export failed on the server: HTTP {resp.status_code} "
                                f"{outcome_text(resp)}".rstrip())
            text = resp.headers.get("X-Progress")
            if text and text != last_progress:
                progress.note(f"export in progress: {text[:100]}")
                last_progress = text
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            wait = interval if retry_after is None else retry_after
            interval = min(interval * 1.5, limits.cap)
            wait = max(MIN_POLL, min(wait, limits.cap))
            if clock() - started + wait > limits.max_wait:
                cancel(client, status_url, progress)
                raise ExportTimeout(
                    f"the export did not finish within --max-wait {limits.max_wait:g} s "
                    f"(last progress: {last_progress or 'none reported'}); it was cancelled on the "
                    "server. Raise --max-wait to wait longer")
            client.sleep(wait)
    except KeyboardInterrupt:
        cancel(client, status_url, progress)
        raise


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise PullError(f"{where}: the completion manifest is not a JSON object")
    missing = [k for k in ("transactionTime", "request", "requiresAccessToken", "output")
               if k not in manifest]
    if missing:
        raise PullError(f"{where}: the completion manifest lacks {', '.join(missing)}")
    for key in ("output", "error"):
        items = manifest.get(key, [])
        if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get("url"), str)
                and RESOURCE_TYPE.match(str(i.get("type", ""))) for i in items):
            raise PullError(f"{where}: manifest {key}[] entries need a resource type and a url")
    return manifest


def _local_names(items: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for item in items:
        seen[item["type"]] = seen.get(item["type"], 0) + 1
        names.append(f"{item['type']}.{seen[item['type']]:03d}.ndjson")
    return names


def run_export(client: FhirClient, outdir: Path, request_url: str, *, limits: PollLimits,
               progress: Progress, report: ConversionReport, restart: bool = False) -> ExportResult:
    outdir.mkdir(parents=True, exist_ok=True)
    state = PullState(outdir)
    if state.data.get("request") != request_url or restart:
        old_status = state.data.get("statusUrl")
        if old_status and not state.data.get("manifest") and state.data.get("request"):
            cancel(client, old_status, progress)      # an unfinished export we replace
        _forget(outdir, state)
        state.data = {"mode": "export", "request": request_url}
    elif state.data.get("manifest"):
        progress.note("resuming the downloads of the earlier run of this export")

    manifest = state.data.get("manifest")
    if manifest is None:
        status_url = state.data.get("statusUrl")
        if status_url:
            progress.note("resuming the earlier run of this export: polling its status")
        else:
            status_url = _kickoff(client, request_url, progress)
            state.data["statusUrl"] = status_url
            state.save()
        try:
            manifest = poll(client, status_url, limits, progress)
        except ExportTimeout:
            state.data.pop("statusUrl", None)
            state.save()
            raise
        state.data["manifest"] = manifest
        state.save()
    return _download_all(client, outdir, state, manifest, progress, report)


def _kickoff(client: FhirClient, request_url: str, progress: Progress) -> str:
    headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    resp = client.request("GET", request_url, headers=headers)
    if resp.status_code != 202:
        raise PullError(f"$export kick-off refused: HTTP {resp.status_code} "
                        f"{outcome_text(resp)}".rstrip())
    location = resp.headers.get("Content-Location")
    if not location:
        raise PullError("$export kick-off: HTTP 202 without a Content-Location header")
    progress.note(f"export started: {client.safe_url(request_url)}")
    return client.resolve(location, str(resp.url))


def _forget(outdir: Path, state: PullState) -> None:
    """Remove the files of an earlier, different export so the folder holds one export only."""
    for name in state.files:
        for path in (outdir / name, part_path(outdir / name)):
            path.unlink(missing_ok=True)


def _download_all(client: FhirClient, outdir: Path, state: PullState, manifest: dict[str, Any],
                  progress: Progress, report: ConversionReport) -> ExportResult:
    result = ExportResult(manifest=manifest)
    with_token = manifest.get("requiresAccessToken") is True
    outputs = list(manifest.get("output", []))
    errors = list(manifest.get("error", []))
    jobs = ([(item, name, outdir / name, False) for item, name in zip(outputs, _local_names(outputs), strict=True)]
            + [(item, f"{ERRORS_DIR}/{name}", outdir / ERRORS_DIR / name, True)
               for item, name in zip(errors, _local_names(errors), strict=True)])
    for n, (item, name, target, is_error) in enumerate(jobs, 1):
        if state.is_complete(name, target):
            result.skipped += 1
            entry = state.files[name]
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            summary = download_file(client, item["url"], target, with_token=with_token,
                                    progress=progress)
            entry = {"url": item["url"], "type": item["type"], "bytes": summary.bytes,
                     "count": summary.count, "sha256": summary.sha256, "complete": True}
            state.files[name] = entry
            state.save()
            how = " (resumed)" if summary.resumed else ""
            progress.note(f"[{n}/{len(jobs)}] {name}: {summary.count} resource(s), "
                          f"{summary.bytes:,} bytes{how}")
        expected = item.get("count")
        if not is_error and isinstance(expected, int) and expected != entry["count"]:
            report.add(Kind.MISSING, f"the manifest announces {expected} resource(s), the file has "
                       f"{entry['count']}", rule="bulk-manifest-count", file=str(target),
                       source="manifest.output.count")
        if is_error:
            result.error_files.append(target)
            _report_error_file(target, report)
        else:
            result.files.append(target)
            result.counts[item["type"]] = result.counts.get(item["type"], 0) + entry["count"]
    if state.data.get("statusUrl") and not state.data.get("deleted"):
        # everything is on disk: tell the server it may drop the files (IG: the client MAY)
        cancel(client, state.data["statusUrl"], Progress(quiet=True))
        state.data["deleted"] = True
        state.save()
    return result


def _report_error_file(path: Path, report: ConversionReport) -> None:
    """One report issue per OperationOutcome issue; diagnostics only with --report-values."""
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                oo = orjson.loads(line)
            except orjson.JSONDecodeError:
                report.add(Kind.INVALID_VALUE, f"line {line_no} of a server error file is not JSON",
                           rule="bulk-error-file", file=str(path))
                continue
            for issue in (oo.get("issue") or [{}]) if isinstance(oo, dict) else [{}]:
                report.add(Kind.MISSING, "the server could not export a resource "
                           f"({issue.get('severity', 'error')}: {issue.get('code', 'unknown')})",
                           rule="bulk-error-file", file=str(path), source="OperationOutcome.issue",
                           severity=Severity.WARNING, value=issue.get("diagnostics"))
