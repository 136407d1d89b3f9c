"""Loading mapping specs and code tables from ``mappings/``, and the registry of named transforms.

Mappings are data: YAML specs with stable rule ids and a cited source, CSV code tables with
``source_system``/``target_system`` columns. Logic a table cannot say is a named, registered
Python transform (``@transform("name")``); specs refer to transforms by name only, and the spec lint
test checks that every name a spec uses is registered.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

MAPPINGS_PACKAGE = "trialbridge.mappings"
SCHEMAS_PACKAGE = "trialbridge.schemas"


def mapping_text(name: str) -> str:
    return resources.files(MAPPINGS_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def schema_text(name: str) -> str:
    return resources.files(SCHEMAS_PACKAGE).joinpath(name).read_text(encoding="utf-8")


@cache
def load_spec(name: str) -> dict[str, Any]:
    """A YAML spec from mappings/ (cached; callers must not mutate it)."""
    data = yaml.safe_load(mapping_text(name))
    if not isinstance(data, dict):
        raise ValueError(f"mapping spec {name} is not a mapping")
    return data


def read_csv_rows(text: str) -> list[dict[str, str]]:
    """CSV with '#' comment lines allowed before the header (used for source citations)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


@cache
def load_table(name: str) -> tuple[dict[str, str], ...]:
    return tuple(read_csv_rows(mapping_text(name)))


@dataclass(frozen=True)
class CodeMap:
    """A code table: (source_system, source_code) -> target row. Lookups never guess."""

    name: str
    rows: tuple[dict[str, str], ...]

    def lookup(self, code: str | None, source_system: str | None = None) -> dict[str, str] | None:
        if code is None:
            return None
        for row in self._index().get(code, ()):
            if source_system is None or row.get("source_system") in (source_system, "", None):
                return row
        return None

    def reverse(self, target_code: str | None, target_system: str | None = None) -> dict[str, str] | None:
        if target_code is None:
            return None
        for row in self.rows:
            if row.get("target_code") == target_code and (
                    target_system is None or row.get("target_system") == target_system):
                return row
        return None

    def _index(self) -> dict[str, tuple[dict[str, str], ...]]:
        return _index_rows(self.name)


@cache
def _index_rows(name: str) -> dict[str, tuple[dict[str, str], ...]]:
    idx: dict[str, list[dict[str, str]]] = {}
    for row in load_table(name):
        idx.setdefault(row["source_code"], []).append(row)
    return {k: tuple(v) for k, v in idx.items()}


@cache
def load_codemap(name: str) -> CodeMap:
    return CodeMap(name=name, rows=load_table(name))


@cache
def ctgov_enums() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for row in load_table("codes/ctgov_enums.csv"):
        out.setdefault(row["enum"], set()).add(row["value"])
    return {k: frozenset(v) for k, v in out.items()}


# --- transform registry --------------------------------------------------------------------
TransformFn = Callable[..., Any]
_TRANSFORMS: dict[str, TransformFn] = {}


def transform(name: str) -> Callable[[TransformFn], TransformFn]:
    """Register a named transform that specs may refer to."""

    def deco(fn: TransformFn) -> TransformFn:
        if name in _TRANSFORMS and _TRANSFORMS[name] is not fn:
            raise ValueError(f"transform {name} registered twice")
        _TRANSFORMS[name] = fn
        return fn

    return deco


def get_transform(name: str) -> TransformFn:
    try:
        return _TRANSFORMS[name]
    except KeyError:
        raise KeyError(f"no transform named {name!r} is registered") from None


def registered_transforms() -> Iterable[str]:
    return sorted(_TRANSFORMS)
