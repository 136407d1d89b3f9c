"""Top-level elements of converted FHIR resources that no rule reads (rule ``subject.unread``).

The declared table ``mappings/subject/read_elements.yaml`` lists, per resource type routed to an SDTM
domain, the top-level elements some rule of this converter reads (and, for Patient, the ones the
privacy rule drops). The engine counts every other element present on a converted resource by
(type, element) and reports one ``unmapped-source`` entry per pair with its count at the end of the
run; privacy drops are reported ``lossy``; a ``modifierExtension`` is a warning (it may change the
meaning of the resource). Counts only: no subject values.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any, NamedTuple

from ..report import Kind, Severity
from ..specs import load_spec
from .base import Ctx

SPEC = "subject/read_elements.yaml"
#: FHIR data type names a choice element ``name[x]`` may end with (R4 and R5 open types), so that a
#: ``deceased[x]`` entry matches deceasedBoolean/deceasedDateTime in one set lookup
CHOICE_TYPES = (
    "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id", "Instant", "Integer",
    "Integer64", "Markdown", "Oid", "PositiveInt", "String", "Time", "UnsignedInt", "Uri", "Url", "Uuid",
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "CodeableReference", "Coding",
    "ContactPoint", "Count", "Distance", "Duration", "HumanName", "Identifier", "Money", "Period", "Quantity",
    "Range", "Ratio", "RatioRange", "Reference", "SampledData", "Signature", "Timing", "ContactDetail",
    "Contributor", "DataRequirement", "Expression", "ParameterDefinition", "RelatedArtifact",
    "TriggerDefinition", "UsageContext", "Availability", "ExtendedContactDetail", "Dosage", "Meta")
MODIFIER = "modifierExtension"
#: types whose extractor counts its own unread elements (what an Observation reads depends on its
#: category and shape: domains/_findings.py)
SELF_NOTED = frozenset({"Observation"})


class Nested(NamedTuple):
    """How a rule reads one (possibly nested) element: ``first`` = only its first item; ``parts`` = the
    keys read in it (None = all); ``codings`` = the coding systems read (None = all)."""

    first: bool
    parts: frozenset[str] | None
    codings: frozenset[str] | None


class Elements(NamedTuple):
    """What the converter does with the top-level elements of one resource type."""

    read: frozenset[str]        # elements some rule reads (choice elements expanded)
    privacy: dict[str, str]     # element -> why the privacy rule drops it
    narrative: bool             # ``text`` reported as narrative (not as an ordinary unread element)
    extensions: frozenset[str]  # top-level extension URLs some rule reads
    nested: dict[str, Nested] = {}   # dotted path -> how it is read (elements read only in part)


def expand(names: Iterable[str]) -> frozenset[str]:
    """Element names with every ``name[x]`` expanded to its typed names."""
    out: set[str] = set()
    for n in names:
        if n.endswith("[x]"):
            out.update(n[:-3] + t for t in CHOICE_TYPES)
        else:
            out.add(n)
    return frozenset(out)


@cache
def element_table() -> dict[str, Elements]:
    """resource type -> :class:`Elements`, from the declared table."""
    spec = load_spec(SPEC)
    common = list(spec.get("common") or {})
    common_ext = list(spec.get("common_extensions") or {})
    out: dict[str, Elements] = {}
    for rtype, entry in (spec.get("types") or {}).items():
        privacy = dict(entry.get("privacy") or {})
        urls = frozenset(_url(u) for u in [*common_ext, *(entry.get("extensions") or {})])
        nested = {path: Nested(n.get("items") == "first",
                               frozenset(n["parts"]) if "parts" in n else None,
                               frozenset(n["codings"]) if "codings" in n else None)
                  for path, n in (entry.get("nested") or {}).items()}
        out[rtype] = Elements(expand([*common, *(entry.get("read") or {})]), privacy, "text" not in privacy, urls,
                              nested)
    return out


def _url(name: str) -> str:
    """An extension URL of the table: ``project:<name>`` is the project's StructureDefinition."""
    if name.startswith("project:"):
        from ..fhir.subject_terms import SD
        return f"{SD}/{name.split(':', 1)[1]}"
    return name


@cache
def read_elements(rtype: str) -> frozenset[str]:
    """The declared read elements of ``rtype`` (empty for a type the table does not list)."""
    e = element_table().get(rtype)
    return e.read if e is not None else frozenset()


def note_resource(res: dict[str, Any], ctx: Ctx, *, also_unread: Iterable[str] = ()) -> None:
    """Count the top-level elements of one converted resource that no rule reads (``also_unread``:
    elements the table lists as read that this resource's shape leaves unread). Pass-1 resources and
    Observations off the fast path; their nested modifierExtensions are looked for too."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        return
    table = element_table().get(rtype)
    if table is None:
        return
    counts = ctx.unread
    for k in res:
        if k == MODIFIER:
            continue   # reported with its URLs as a modifier (rule subject.modifier), as note_keys does
        if k in table.privacy:
            key = (rtype, k, "privacy")
        elif k not in table.read:
            key = (rtype, k, "narrative" if k == "text" and table.narrative else "unread")
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    exts = res.get("extension")
    if "extension" in table.read and isinstance(exts, list):
        for url in {str(e.get("url")) for e in exts if isinstance(e, dict)} - table.extensions:
            key = (rtype, f"extension('{url}')", "unread")
            counts[key] = counts.get(key, 0) + 1
    for k in also_unread:
        if k in res and k in table.read and k not in table.privacy:   # (else counted above)
            key = (rtype, k, "unread")
            counts[key] = counts.get(key, 0) + 1
    if table.nested:
        note_nested(res, rtype, table.nested, counts)
    urls = nested_modifiers(res)
    if urls:
        seen = ctx.modifiers.setdefault(rtype, {})
        for u in urls:
            seen[u] = seen.get(u, 0) + 1


def note_nested(res: dict[str, Any], rtype: str, nested: dict[str, Nested],
                counts: dict[tuple[str, str, str], int]) -> None:
    """Rule subject.unread-nested for one resource: parts of partly-read elements no rule reads, items
    after the first of first-only elements, codings of systems no rule reads. One count per resource
    and path (a path seen twice in one resource counts once)."""
    seen: set[tuple[str, str]] = set()
    for path, how in nested.items():
        nodes = _values(res, path, nested)
        if how.first:
            whole = _values(res, path, nested, last_whole=True)
            if any(isinstance(v, list) and len(v) > 1 for v in whole):
                seen.add((f"{path}[2+]", "nested"))
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if how.parts is not None:
                for k in node:
                    if k not in how.parts and k != MODIFIER:
                        seen.add((f"{path}.{k}", "nested"))
            if how.codings is not None:
                read_systems: set[Any] = set()
                for c in node.get("coding") or ():
                    if not isinstance(c, dict):
                        continue
                    system = c.get("system")
                    if system not in how.codings:
                        seen.add((f"{path}.coding({system or 'no system'})", "coding"))
                    elif system in read_systems:      # the rules read the first coding of a system
                        seen.add((f"{path}.coding({system})[2+]", "nested"))
                    else:
                        read_systems.add(system)
    for elem, kind in seen:
        key = (rtype, elem, kind)
        counts[key] = counts.get(key, 0) + 1


def _values(res: dict[str, Any], path: str, nested: dict[str, Nested], *, last_whole: bool = False) -> list[Any]:
    """The values at a dotted ``path`` (lists of items flattened, first-only prefixes cut to their
    first item; with ``last_whole`` the last step's value is returned as it stands)."""
    cur: list[Any] = [res]
    parts = path.split(".")
    for i, key in enumerate(parts):
        prefix = ".".join(parts[:i + 1])
        how = nested.get(prefix)
        nxt: list[Any] = []
        for node in cur:
            v = node.get(key) if isinstance(node, dict) else None
            if v is None:
                continue
            if i == len(parts) - 1 and last_whole:
                nxt.append(v)
            elif isinstance(v, list):
                nxt.extend(v[:1] if how is not None and how.first else v)
            else:
                nxt.append(v)
        cur = nxt
    return cur


def note_keys(rtype: str, keys: Iterable[str], ctx: Ctx) -> None:
    """Count unread top-level element names of one resource (the Observation fast path: called only
    when the resource has an element the table does not list as read)."""
    counts = ctx.unread
    for k in keys:
        if k == MODIFIER:
            continue   # counted with its URLs by the caller
        key = (rtype, k, "narrative" if k == "text" else "unread")
        counts[key] = counts.get(key, 0) + 1


def note_modifier(rtype: str, value: Any, ctx: Ctx) -> None:
    seen = ctx.modifiers.setdefault(rtype, {})
    for u in _urls(value):
        seen[u] = seen.get(u, 0) + 1


def _urls(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    urls = sorted({str(e.get("url")) for e in items if isinstance(e, dict)})
    return urls or ["(no url)"]


def nested_modifiers(node: Any) -> list[str]:
    """URLs of every modifierExtension anywhere in ``node`` (one entry per occurrence)."""
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                if k == MODIFIER:
                    out += _urls(v)
                if isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(n, list):
            stack.extend(x for x in n if isinstance(x, (dict, list)))
    return out


def report_unread(ctx: Ctx) -> None:
    """One report entry per (type, element) counted during the run, then one warning per type that
    carried modifier extensions. Sorted, so the report is deterministic."""
    table = element_table()
    for (rtype, elem, how), n in sorted(ctx.unread.items()):
        src = f"{rtype}.{elem}"
        if how == "privacy":
            ctx.report.add(Kind.LOSSY, f"{src} in {n} resource(s): {table[rtype].privacy[elem]} (privacy rule, "
                           "pipeline.PATIENT_KEEP)", rule="subject.privacy", source=src)
        elif how == "coding":
            ctx.report.add(Kind.UNMAPPED_SOURCE, f"{src} in {n} resource(s): a coding of a system no rule reads "
                           "(the concept is carried by another coding or the text; this code is not)",
                           rule="subject.unread-nested", source=src, severity=Severity.INFO)
        elif how == "nested":
            what = ("items after the first: only the first is read" if elem.endswith("[2+]")
                    else "no SDTM variable reads it")
            ctx.report.add(Kind.UNMAPPED_SOURCE, f"{src} in {n} resource(s): {what}", rule="subject.unread-nested",
                           source=src)
        elif how == "narrative":
            ctx.report.add(Kind.UNMAPPED_SOURCE, f"{src} (narrative) in {n} resource(s): a human-readable "
                           "rendering of the structured elements, not converted", rule="subject.narrative",
                           source=src, severity=Severity.INFO)
        else:
            ctx.report.add(Kind.UNMAPPED_SOURCE, f"{src} in {n} resource(s): no SDTM variable reads it",
                           rule="subject.unread", source=src)
    for rtype, urls in sorted(ctx.modifiers.items()):
        n = sum(urls.values())
        ctx.report.add(Kind.UNMAPPED_SOURCE, f"{n} modifierExtension(s) on {rtype} resources ("
                       + ", ".join(sorted(urls)) + "): not understood by this converter; a modifier extension "
                       "may change the meaning of the resource, so its SDTM records may misrepresent it",
                       rule="subject.modifier", source=f"{rtype}.modifierExtension", severity=Severity.WARNING)
