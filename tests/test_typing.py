"""``mypy converters`` is clean (STYLE.md: typed, mypy clean on converters/)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


def test_mypy_clean_on_converters(tmp_path) -> None:
    pytest.importorskip("mypy")
    # Run from the checkout so setup.cfg [mypy] applies; the cache goes to tmp_path (tests write
    # nowhere else), so each run is a cold check (under a minute here).
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--no-pretty",
                           "--cache-dir", str(tmp_path / "mypy-cache"), "converters"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
