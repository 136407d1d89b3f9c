"""Shared test fixtures: where the third-party data lives, and the bundled samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHARED = Path(os.environ.get("TRIALBRIDGE_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; the calling test is skipped when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"third-party data not present: {path}")
    return path


@pytest.fixture(autouse=True)
def _deterministic_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dataset-JSON creation times (and anything else time-stamped) come from SOURCE_DATE_EPOCH.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01T00:00:00Z
