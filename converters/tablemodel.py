"""Generic, table-driven conversion between nested JSON-like dicts and the frozen model dataclasses.

A *class table* (from a YAML spec) gives, per model class, the source key of each field relative
to the class's node (dots descend). The same table reads (dict -> model, with type checks, enum
checks and access tracking) and writes (model -> dict). Used by the CT.gov v2 JSON reader/writer,
and by any reader whose input is already normalised onto CT.gov v2 shape (legacy XML, printouts).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any, Union

from .report import ConversionReport, Kind
from .specs import ctgov_enums

_MISSING = object()


def get_path(node: Any, path: str) -> Any:
    cur = node
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def set_path(node: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = node
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


@cache
def _hints(cls: Any) -> dict[str, Any]:
    from . import model as model_module  # resolve the model's forward references
    return typing.get_type_hints(cls, globalns=vars(model_module))


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


class TableCodec:
    """Reads/writes model dataclasses from/to dicts following one class table."""

    def __init__(self, table: dict[str, dict[str, Any]], *, rule_prefix: str) -> None:
        self.table = table
        self.rule_prefix = rule_prefix

    def entry(self, cls: type, name: str) -> tuple[str, str | None]:
        spec = self.table[cls.__name__][name]
        if isinstance(spec, str):
            return spec, None
        return spec["path"], spec.get("enum")

    # ---------------------------------------------------------------- reading
    def read(self, cls: type, node: Any, base: str, report: ConversionReport,
             consumed: set[str]) -> Any:
        if not isinstance(node, dict):
            report.add(Kind.INVALID_VALUE, f"expected an object, found {type(node).__name__}",
                       source=base, rule=f"{self.rule_prefix}.{cls.__name__}")
            return None
        kwargs: dict[str, Any] = {}
        hints = _hints(cls)
        for f in fields(cls):
            if f.name not in self.table.get(cls.__name__, {}):
                continue
            path, enum = self.entry(cls, f.name)
            raw = get_path(node, path)
            if raw is _MISSING or raw is None:
                continue
            src = f"{base}.{path}" if base else path
            rule = f"{self.rule_prefix}.{cls.__name__}.{f.name}"
            value = self._read_value(hints[f.name], raw, src, rule, enum, report, consumed)
            if value is not None:
                kwargs[f.name] = value
        return cls(**kwargs)

    def _read_value(self, tp: Any, raw: Any, src: str, rule: str, enum: str | None,
                    report: ConversionReport, consumed: set[str]) -> Any:
        tp = _unwrap_optional(tp)
        if tp is Any:
            consumed.add(src)
            return raw
        if typing.get_origin(tp) is tuple:
            item_tp = typing.get_args(tp)[0]
            if not isinstance(raw, list):
                report.add(Kind.INVALID_VALUE, f"expected a list, found {type(raw).__name__}",
                           source=src, rule=rule)
                consumed.add(src)
                return None
            items = []
            for i, item in enumerate(raw):
                val = self._read_value(item_tp, item, f"{src}[{i}]", rule, enum, report, consumed)
                if val is not None:
                    items.append(val)
            if not raw:
                consumed.add(src)  # an empty list is read too (and written back as absent)
            return tuple(items)
        if isinstance(tp, type) and is_dataclass(tp):
            return self.read(tp, raw, src, report, consumed)
        consumed.add(src)
        return check_scalar(tp, raw, src, rule, enum, report)


def check_scalar(tp: Any, raw: Any, src: str, rule: str, enum: str | None,
                 report: ConversionReport) -> Any:
    if tp is bool:
        if isinstance(raw, bool):
            return raw
    elif tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
    elif tp is str:
        if isinstance(raw, str):
            if enum is not None and raw not in ctgov_enums().get(enum, frozenset()):
                report.add(Kind.INVALID_VALUE, f"{raw!r} is not a value of the CT.gov enum {enum}",
                           source=src, rule=rule)
            return raw
    report.add(Kind.INVALID_VALUE,
               f"expected {tp.__name__}, found {type(raw).__name__}; value left out",
               source=src, rule=rule)
    return None


def write(codec: TableCodec, obj: Any) -> dict[str, Any]:
    """Model instance -> dict, in table order, leaving out unset values.

    An opaque (``Any``) field that is set wins over structured fields stored beneath it
    (``Study.derived_section`` carries ``condition_meshes`` already).
    """
    out: dict[str, Any] = {}
    cls: Any = type(obj)
    hints = _hints(cls)
    opaque = [codec.entry(cls, n)[0] for n in codec.table[cls.__name__]
              if hints.get(n) is Any and getattr(obj, n) is not None]
    for name in codec.table[cls.__name__]:
        val = getattr(obj, name)
        path, _ = codec.entry(cls, name)
        if val is None or val == ():
            continue
        if hints.get(name) is not Any and any(path.startswith(o + ".") for o in opaque):
            continue
        written = _write_value(codec, val)
        if written == {}:
            continue  # an object whose every field was left out (e.g. after an invalid value)
        set_path(out, path, written)
    return out


def _write_value(codec: TableCodec, val: Any) -> Any:
    if is_dataclass(val):
        return write(codec, val)
    if isinstance(val, tuple):
        return [_write_value(codec, v) for v in val]
    return val


_INDEX = re.compile(r"\[\d+\]")


def leaf_paths(node: Any, base: str = "") -> list[str]:
    """Every scalar leaf (and empty container) path of a JSON value, with list indices."""
    out: list[str] = []
    if isinstance(node, dict):
        if not node:
            out.append(base)
        for k, v in node.items():
            out.extend(leaf_paths(v, f"{base}.{k}" if base else k))
    elif isinstance(node, list):
        if not node:
            out.append(base)
        for i, v in enumerate(node):
            out.extend(leaf_paths(v, f"{base}[{i}]"))
    else:
        out.append(base)
    return out


def report_unconsumed(node: Any, base: str, consumed: set[str], report: ConversionReport,
                      rule: str) -> None:
    """Every input leaf not under a consumed path is reported once per generic path."""
    seen: set[str] = set()
    for path in leaf_paths(node, base):
        probe = path
        hit = False
        while probe:
            if probe in consumed:
                hit = True
                break
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        if not hit:
            generic = _INDEX.sub("[]", path)
            if generic not in seen:
                seen.add(generic)
                report.unmapped_source(generic, rule=rule)
