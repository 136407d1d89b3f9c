"""Local files of a pull: the resumable download, the NDJSON writer, the state file, progress.

Downloads stream to a hidden ``.NAME.part`` file in chunks and are renamed into place only when
complete, so the conversion never sees half a file. A dropped connection resumes with an HTTP Range
request when the server honours it and restarts the file otherwise. The state file
(``.trialbridge-pull.json``, written atomically after every change) records the request, the status
URL, the manifest and each finished file's size, line count and SHA-256, so a re-run skips what is
complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import click
import httpx
import orjson

from ..safeio import write_json_atomic
from .client import RETRY_STATUS, TRANSIENT, FhirClient, auth_refused, describe, parse_retry_after
from .errors import PullError

STATE_NAME = ".trialbridge-pull.json"
CHUNK = 256 * 1024
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


# ------------------------------------------------------------------ progress
class Progress:
    """Progress on stderr: a byte bar per file on a terminal, one line per step otherwise."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream
        self._bar: Any = None

    def note(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)

    def start_file(self, name: str, total: int | None) -> None:
        out = self.stream or sys.stderr
        if not self.quiet and out.isatty():
            self._bar = click.progressbar(length=total or 0, label=name, file=out)
            self._bar.__enter__()

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def end_file(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


# ------------------------------------------------------------------ state file
class PullState:
    """The state file in the output folder; every ``save`` is an atomic replace."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / STATE_NAME
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                loaded = orjson.loads(self.path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                loaded = {}     # unreadable state: start again, never fail on it
            self.data = loaded if isinstance(loaded, dict) and loaded.get("version") == 1 else {}

    def save(self) -> None:
        self.data["version"] = 1
        write_json_atomic(self.path, self.data)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("files", {})

    def is_complete(self, name: str, target: Path) -> bool:
        entry = self.files.get(name)
        return bool(entry and entry.get("complete") and target.is_file()
                    and target.stat().st_size == entry.get("bytes"))


# ------------------------------------------------------------------ download
@dataclass(frozen=True)
class FileSummary:
    path: Path
    bytes: int
    count: int
    sha256: str
    resumed: bool


def part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.part")


def _measure(path: Path) -> tuple[int, int, str]:
    """Size, number of NDJSON lines and SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    lines = size = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return size, lines, digest.hexdigest()


def _range_start(resp: httpx.Response) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def download_file(client: FhirClient, url: str, target: Path, *, with_token: bool,
                  progress: Progress) -> FileSummary:
    """Stream ``url`` to ``target`` (resuming a ``.part`` file left by an earlier attempt)."""
    part = part_path(target)
    auth = client.auth if with_token else None
    where = f"GET {client.safe_url(url)}"
    attempt = 0
    resumed = False
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept": "application/fhir+ndjson"}
        if have:
            headers["Range"] = f"bytes={have}-"
        retry_after: float | None = None
        why = ""
        try:
            with client.http.stream("GET", url, headers=headers, auth=auth) as resp:
                status = resp.status_code
                if status == 416 and have:
                    part.unlink()        # our partial file is longer than the server's: start over
                    why = f"{where}: HTTP 416 for the resumed range"
                elif status in RETRY_STATUS:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    why = f"{where}: HTTP {status}"
                elif status == 401 and auth is not None:
                    raise auth_refused(where, resp, auth)
                elif status in (404, 410):
                    raise PullError(f"{where}: HTTP {status}: the file is no longer on the server "
                                    "(the export expired?); re-run with --restart")
                elif status not in (200, 206):
                    resp.read()
                    raise PullError(f"{where}: HTTP {status}")
                else:
                    mode = "wb"
                    if status == 206 and have and _range_start(resp) == have:
                        mode, resumed = "ab", True
                    elif have:
                        progress.note(f"  {target.name}: the server does not resume downloads; "
                                      "fetching the whole file again")
                    length = resp.headers.get("Content-Length")
                    progress.start_file(target.name, int(length) if length else None)
                    try:
                        with part.open(mode) as fh:
                            for chunk in resp.iter_bytes():   # as it arrives: a drop keeps it all
                                fh.write(chunk)
                                progress.advance(len(chunk))
                    finally:
                        progress.end_file()
                    break
        except TRANSIENT as exc:
            why = f"{where}: {describe(exc)}"
        except httpx.TransportError as exc:
            raise PullError(f"{where}: {describe(exc)}") from None
        attempt += 1
        if attempt > client.policy.retries:
            kept = part.stat().st_size if part.exists() else 0
            raise PullError(f"{why} (gave up after {attempt} attempts; {kept:,} bytes kept: "
                            "run the same command again to resume)")
        client.pause(attempt, retry_after, why)
    size, count, sha = _measure(part)
    os.replace(part, target)
    return FileSummary(target, size, count, sha, resumed)


# ------------------------------------------------------------------ NDJSON writer (search)
class NdjsonSink:
    """Resources written one line at a time to ``{resourceType}.ndjson``, each type in its own
    hidden part file until :meth:`commit`; a resource seen twice (``_include``, overlapping
    follow-up searches) is written once."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self._files: dict[str, IO[bytes]] = {}
        self._seen: set[str] = set()
        self.counts: dict[str, int] = {}

    def write(self, resource: dict[str, Any]) -> bool:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not RESOURCE_TYPE.match(rtype):
            raise PullError(f"the server sent a resource with resourceType {str(rtype)[:40]!r}")
        rid = resource.get("id")
        if rid is not None:
            key = f"{rtype}/{rid}"
            if key in self._seen:
                return False
            self._seen.add(key)
        fh = self._files.get(rtype)
        if fh is None:
            self.outdir.mkdir(parents=True, exist_ok=True)
            fh = self._files[rtype] = part_path(self.outdir / f"{rtype}.ndjson").open("wb")
        fh.write(orjson.dumps(resource) + b"\n")
        self.counts[rtype] = self.counts.get(rtype, 0) + 1
        return True

    def commit(self) -> list[Path]:
        written = []
        for rtype, fh in sorted(self._files.items()):
            fh.close()
            target = self.outdir / f"{rtype}.ndjson"
            os.replace(part_path(target), target)
            written.append(target)
        self._files.clear()
        return written

    def discard(self) -> None:
        for rtype, fh in self._files.items():
            fh.close()
            part_path(self.outdir / f"{rtype}.ndjson").unlink(missing_ok=True)
        self._files.clear()
