"""Pytest fixtures for the EHR pull tests: the Node test FHIR server in this folder.

``ehr_server_process`` (session): finds node and npm (skips only when they are absent), runs
``npm ci`` here when node_modules is missing or does not match package-lock.json (under a file lock:
several pytest runs may share this checkout), starts ``server.mjs --port 0`` on 127.0.0.1, reads the
port it prints, waits for ``/fhir/metadata`` with a bounded timeout and stops the server at the end.
``ehr`` (per test): the same server with faults, jobs, tokens and settings reset.
Import both into a test module: ``from ehr_server.fixtures import ehr, ehr_server_process``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLE_SUBJECTS = ROOT / "samples" / "NCT04835883" / "subjects.bundle.json"
NODE_MIN = (20, 19)            # engines of @medplum/* 4.5.2: ^20.19.0 || >=22.12.0
START_TIMEOUT = 60.0
NPM_TIMEOUT = 900


class EhrServer:
    """Handle on the running test server: its FHIR base URL and the /__control endpoints."""

    def __init__(self, proc: subprocess.Popen[bytes], origin: str) -> None:
        self.proc = proc
        self.origin = origin
        self.base = f"{origin}/fhir"
        self.token_url = f"{origin}/auth/token"
        self._http = httpx.Client(timeout=10)

    def _post(self, payload: dict[str, Any]) -> None:
        self._http.post(f"{self.origin}/__control", json=payload).raise_for_status()

    def reset(self) -> None:
        self._post({"action": "reset"})

    def config(self, **settings: Any) -> None:
        self._post({"action": "config", "config": settings})

    def fault(self, kind: str, **spec: Any) -> None:
        """``status`` (with ``status``, ``retryAfter``), ``drop``, ``drop_mid_body``, ``expire_token``;
        ``match`` (substring of the path) and ``count`` choose which requests it hits."""
        self._post({"action": "fault", "fault": {"kind": kind, **spec}})

    def register_client(self, client_id: str, jwks: dict[str, Any]) -> None:
        self._post({"action": "register_client", "client_id": client_id, "jwks": jwks})

    def state(self) -> dict[str, Any]:
        resp = self._http.get(f"{self.origin}/__control")
        resp.raise_for_status()
        return resp.json()

    def requests(self, contains: str = "", method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.state()["requests"]
                if contains in r["path"] and (method is None or r["method"] == method)]

    def close(self) -> None:
        self._http.close()


def _node_version(node: str) -> tuple[int, int]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    major, minor = out.strip().lstrip("v").split(".")[:2]
    return int(major), int(minor)


def _suitable_node(node: str, npm: str) -> str:
    """This machine's node when recent enough, else Node 22 from the npm registry (the
    ``node-<os>-<cpu>`` package behind the ``node`` package: the binary, no install script)
    installed into tests/ehr_server/.node."""
    if _node_version(node) >= NODE_MIN:
        return node
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    package = f"node-{sys.platform}-{cpu}@22"
    prefix = HERE / ".node"
    local = prefix / "node_modules" / ".bin" / "node"
    with _install_lock():
        if not local.exists():
            _run_npm([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix),
                      package], f"installing {package} from the npm registry")
    if _node_version(str(local)) < NODE_MIN:
        pytest.fail(f"{local} is older than Node {NODE_MIN[0]}.{NODE_MIN[1]}")
    return str(local)


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """An exclusive lock per checkout, kept outside the source tree."""
    key = hashlib.sha256(str(HERE).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"trialbridge-ehr-npm-{key}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_npm(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: npm took longer than {NPM_TIMEOUT} s")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _modules_match_lock() -> bool:
    lock = json.loads((HERE / "package-lock.json").read_text(encoding="utf-8"))
    for key, meta in lock.get("packages", {}).items():
        if not key.startswith("node_modules/") or meta.get("optional") or meta.get("peer"):
            continue
        manifest = HERE / key / "package.json"
        if not manifest.exists():
            return False
        if json.loads(manifest.read_text(encoding="utf-8")).get("version") != meta.get("version"):
            return False
    return True


def _ensure_modules(npm: str) -> None:
    with _install_lock():
        if not _modules_match_lock():
            _run_npm([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                     "npm ci in tests/ehr_server")


def _read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    lines: queue.Queue[bytes] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    threading.Thread(target=lambda: lines.put(out.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def start_server(extra_args: list[str] | None = None) -> EhrServer:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm not found: the EHR pull tests need Node.js and npm")
    node = _suitable_node(node, npm)
    _ensure_modules(npm)
    args = [node, str(HERE / "server.mjs"), "--port", "0", "--seed", str(HERE / "seed.bundle.json")]
    if SAMPLE_SUBJECTS.exists():
        args += ["--seed", str(SAMPLE_SUBJECTS)]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's whole life
    proc = subprocess.Popen(args + (extra_args or []), cwd=HERE, stdout=subprocess.PIPE,
                            stderr=stderr, env={**os.environ, "NODE_ENV": "test"})

    def fail(why: str) -> None:
        proc.kill()
        proc.wait(10)
        stderr.seek(0)
        pytest.fail(f"test FHIR server {why}:\n{stderr.read().decode('utf-8', 'replace')[-3000:]}")

    first = _read_first_line(proc, START_TIMEOUT)
    try:
        info = json.loads(first or b"")
    except json.JSONDecodeError:
        info = {}
    if info.get("event") != "listening":
        fail(f"did not report its port within {START_TIMEOUT:.0f} s")
    origin = f"http://127.0.0.1:{int(info['port'])}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{origin}/fhir/metadata", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            fail("did not become ready")
        time.sleep(0.1)
    return EhrServer(proc, origin)


def stop_server(server: EhrServer) -> None:
    server.close()
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


@pytest.fixture(scope="session")
def ehr_server_process() -> Iterator[EhrServer]:
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def ehr(ehr_server_process: EhrServer) -> EhrServer:
    """The test server, reset; status polls answer Retry-After: 0 unless a test says otherwise."""
    ehr_server_process.reset()
    ehr_server_process.config(retryAfter=0)
    return ehr_server_process
