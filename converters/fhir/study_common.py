"""Shared pieces of the FHIR ResearchStudy writer and reader: the spec, code tables, ids, paths.

Everything here is driven by ``mappings/fhir_study.yaml``, the ``mappings/codes/ctgov_to_fhir_*.csv``
tables and ``mappings/codes/iso3166_countries.csv``; no code value is written in Python. Model paths are turned
into CT.gov paths with ``mappings/ctgov_v2.yaml`` so that reports name the CT.gov field a user knows.
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
import uuid
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from .. import model
from ..specs import load_spec, load_table

SPEC_NAME = "fhir_study.yaml"
VERSIONS = ("R4", "R5")
#: uuid5 namespace for every resource id this project derives (fixed: ids must never change).
ID_NAMESPACE = uuid.UUID("6f1c4b1e-8d2a-5c3e-9b7a-74726961626c")

_INDEX = re.compile(r"\[\d+\]")


def spec() -> dict[str, Any]:
    return load_spec(SPEC_NAME)


@cache
def ext_url(name: str) -> str:
    exts = spec()["extensions"]
    if name not in exts:
        raise KeyError(f"extension {name!r} is not declared in {SPEC_NAME}")
    return str(spec()["extension_base"]) + name


@cache
def xver_url(element: str) -> str:
    """Official HL7 cross-version extension (hl7.fhir.uv.xver-r5.r4) for an R5 element, e.g.
    ``ResearchStudy.label`` -> ``http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy.label``."""
    exts = spec()["xver_extensions"]
    if element not in exts:
        raise KeyError(f"cross-version extension {element!r} is not declared in {SPEC_NAME}")
    return str(spec()["xver_base"]) + element


@cache
def xver_parts(element: str) -> dict[str, str]:
    """Sub-extension name (the R5 child element) -> its value[x] name, as declared in the spec
    (cached: callers must not mutate it)."""
    return dict(spec()["xver_extensions"][element].get("parts") or {})


@cache
def retired_url(name: str) -> str:
    """URL of a project extension earlier releases wrote and the reader still reads."""
    if name not in spec()["retired_extensions"]:
        raise KeyError(f"retired extension {name!r} is not declared in {SPEC_NAME}")
    return str(spec()["extension_base"]) + name


@cache
def retired_same_parts() -> dict[str, tuple[str, ...]]:
    """R5 element -> the retired project extension URLs read as its cross-version extension (same parts)."""
    out: dict[str, list[str]] = {}
    for name, decl in spec()["retired_extensions"].items():
        if decl.get("same_parts"):
            out.setdefault(decl["replaced_by"], []).append(retired_url(name))
    return {k: tuple(v) for k, v in out.items()}


def system(name: str) -> str:
    return str(spec()["systems"][name])


# ------------------------------------------------------------------ code tables
class Code(typing.NamedTuple):
    system: str
    code: str
    display: str
    inferred: bool
    code_display: str


@cache
def _tables() -> dict[tuple[str, str], dict[str, Code]]:
    """(enum, version) -> source_code -> Code; rows with an empty version apply to both versions."""
    out: dict[tuple[str, str], dict[str, Code]] = {}
    for name in spec()["code_tables"]:
        for row in load_table(name):
            versions = [row["version"]] if row.get("version") else list(VERSIONS)
            code = Code(row.get("target_system") or "", row.get("target_code") or "",
                        row.get("target_display") or "", (row.get("inferred") or "") == "Y",
                        row.get("code_display") or "")
            for v in versions:
                out.setdefault((row["enum"], v), {})[row["source_code"]] = code
    return out


def lookup(enum: str, value: str, version: str) -> Code | None:
    return _tables().get((enum, version), {}).get(value)


def enum_values(enum: str, version: str) -> dict[str, Code]:
    return _tables().get((enum, version), {})


def coding(hit: Code) -> dict[str, str]:
    """A Coding; display only where the table holds the code system's own display."""
    out = {"system": hit.system, "code": hit.code}
    if hit.code_display:
        out["display"] = hit.code_display
    return out


def concept(enum: str, value: str, version: str, *, text: str | None = None) -> dict[str, Any] | None:
    """CodeableConcept for a CT.gov enum value: coding where the table has a code, text always.
    None when the value is not in the table (the caller reports ``unmapped-code``)."""
    hit = lookup(enum, value, version)
    if hit is None:
        return None
    out: dict[str, Any] = {}
    if hit.code:
        out["coding"] = [coding(hit)]
    out["text"] = text if text is not None else hit.display
    return out


@cache
def _reverse(enum: str, version: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    by_code: dict[tuple[str, str], str] = {}
    by_text: dict[str, str] = {}
    for src, c in enum_values(enum, version).items():
        if c.code:
            by_code.setdefault((c.system, c.code), src)
        by_text.setdefault(c.display.casefold(), src)
        by_text.setdefault(src.casefold(), src)
    return by_code, by_text


def reverse(enum: str, cc: Any, version: str) -> str | None:
    """CT.gov enum value for a CodeableConcept: its text first (exact CT.gov display), then its codings."""
    if not isinstance(cc, dict):
        return None
    by_code, by_text = _reverse(enum, version)
    text = cc.get("text")
    if isinstance(text, str) and text.casefold() in by_text:
        return by_text[text.casefold()]
    for coding in cc.get("coding") or ():
        if isinstance(coding, dict):
            # Keys of the table are (system, code) strings: anything else cannot match.
            csys, ccode = coding.get("system"), coding.get("code")
            if isinstance(csys, str) and isinstance(ccode, str):
                hit = by_code.get((csys, ccode))
                if hit is not None:
                    return hit
    return None


@cache
def countries() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(name as spelled -> Coding (ISO 3166-1 alpha-2, ISO short name as display), alpha-2 -> ISO short name).

    The spec's ``country_table`` is the project's one country table (alpha-3 in ``target_code``)."""
    rows = load_table(spec()["country_table"])
    by_code = {row["alpha_2"]: row["source_code"] for row in rows if row["kind"] == "iso"}
    iso3166 = system("iso3166")
    by_name: dict[str, dict[str, str]] = {}
    for row in rows:
        by_name.setdefault(row["source_code"], {"system": iso3166, "code": row["alpha_2"],
                                                "display": by_code[row["alpha_2"]]})
    return by_name, by_code


# ------------------------------------------------------------------ ids
_NS = ID_NAMESPACE.bytes


def rid(resource_type: str, key: str, local: str = "") -> str:
    """Deterministic resource id: uuid5 of type + study key + local key (business identifiers).
    Same value as ``uuid.uuid5(ID_NAMESPACE, name)``, computed without the UUID object (hot path)."""
    h = bytearray(hashlib.sha1(_NS + f"{resource_type}|{key}|{local}".encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def full_url(res_id: str) -> str:
    return f"urn:uuid:{res_id}"


# ------------------------------------------------------------------ model paths <-> CT.gov paths
def generic(path: str) -> str:
    return _INDEX.sub("[]", path)


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=vars(model))


def model_leaf_paths(cls: type = model.Study, prefix: str = "") -> list[str]:
    """Every generic leaf path of the model (lists as ``[]``); opaque sections are leaves."""
    out: list[str] = []
    for f in fields(cls):
        tp = _unwrap(_hints(cls)[f.name])
        path = f"{prefix}.{f.name}" if prefix else f.name
        if typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            if is_dataclass(item):
                out.extend(model_leaf_paths(item, path + "[]"))  # type: ignore[arg-type]
            else:
                out.append(path + "[]")
        elif is_dataclass(tp):
            out.extend(model_leaf_paths(tp, path))  # type: ignore[arg-type]
        else:
            out.append(path)
    return out


@cache
def _ctgov_generic(gpath: str) -> str:
    table = load_spec("ctgov_v2.yaml")["classes"]
    cls: Any = model.Study
    parts_out: list[str] = []
    for seg in gpath.split("."):
        is_list = seg.endswith("[]")
        name = seg[:-2] if is_list else seg
        if cls is None or name not in table.get(cls.__name__, {}):
            parts_out.append(seg)
            cls = None
            continue
        entry = table[cls.__name__][name]
        key = entry if isinstance(entry, str) else entry["path"]
        parts_out.append(key + ("[]" if is_list else ""))
        tp = _unwrap(_hints(cls)[name])
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        cls = tp if is_dataclass(tp) else None
    return ".".join(parts_out)


@cache
def ctgov_path(path: str) -> str:
    """Model path (``arms_interventions.arm_groups[2].label``) -> CT.gov path
    (``protocolSection.armsInterventionsModule.armGroups[2].label``), list indices kept."""
    indices = _INDEX.findall(path)
    out = _ctgov_generic(generic(path))
    for idx in indices:
        out = out.replace("[]", idx, 1)
    return out


@cache
def _segments(gpath: str) -> tuple[tuple[str, bool], ...]:
    return tuple((seg[:-2], True) if seg.endswith("[]") else (seg, False) for seg in gpath.split(".") if seg)


def iter_path(obj: Any, gpath: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Concrete (path, value) pairs of a study under a generic path; values may be dataclasses."""
    items: list[tuple[str, Any]] = [(prefix, obj)]
    for name, is_list in _segments(gpath):
        nxt: list[tuple[str, Any]] = []
        for path, node in items:
            val = getattr(node, name, None)
            if val is None:
                continue
            base = f"{path}.{name}" if path else name
            if is_list:
                nxt.extend((f"{base}[{i}]", item) for i, item in enumerate(val) if item is not None)
            else:
                nxt.append((base, val))
        if not nxt:
            return iter(())
        items = nxt
    return iter(items)


def leaves_under(obj: Any, gpath: str) -> Iterator[tuple[str, Any]]:
    """Set scalar leaves under a generic path (descending into dataclasses and tuples)."""
    for path, val in iter_path(obj, gpath):
        if is_dataclass(val) or isinstance(val, tuple):
            yield from model.iter_leaves(val, path)
        elif val not in (None, {}, []):
            yield path, val


class _PathNode:
    """One segment of a prefix tree of generic paths: the paths ending here, the segments below."""

    __slots__ = ("ends", "children")

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.children: dict[tuple[str, bool], _PathNode] = {}


@cache
def _path_tree(gpaths: tuple[str, ...]) -> _PathNode:
    root = _PathNode()
    for n, gpath in enumerate(gpaths):
        node = root
        for seg in _segments(gpath):
            node = node.children.setdefault(seg, _PathNode())
        node.ends.append(n)
    return root


def leaves_under_each(obj: Any, gpaths: tuple[str, ...]) -> list[list[tuple[str, Any]]]:
    """``[list(leaves_under(obj, p)) for p in gpaths]`` in one walk of the study: shared prefixes
    (``status.``, ``contacts_locations.locations[]``) are visited once (hot path: the writers' gap scan)."""
    out: list[list[tuple[str, Any]]] = [[] for _ in gpaths]

    def visit(node: _PathNode, val: Any, path: str) -> None:
        for n in node.ends:
            if is_dataclass(val) or isinstance(val, tuple):
                out[n].extend(model.iter_leaves(val, path))
            elif val not in (None, {}, []):
                out[n].append((path, val))
        for (name, is_list), child in node.children.items():
            sub = getattr(val, name, None)
            if sub is None:
                continue
            base = f"{path}.{name}" if path else name
            if is_list:
                if not child.ends and len(child.children) == 1:
                    # e.g. locations[] on the way to locations[].contacts[].role: skip the items with nothing below
                    ((below, _),) = child.children
                    for i, item in enumerate(sub):
                        if getattr(item, below, None) not in (None, (), [], {}):
                            visit(child, item, f"{base}[{i}]")
                    continue
                for i, item in enumerate(sub):
                    if item is not None:
                        visit(child, item, f"{base}[{i}]")
            else:
                visit(child, sub, base)

    visit(_path_tree(gpaths), obj, "")
    return out
