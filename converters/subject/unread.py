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


class Elements(NamedTuple):
    """What the converter does with the top-level elements of one resource type."""

    read: frozenset[str]        # elements some rule reads (choice elements expanded)
    privacy: dict[str, str]     # element -> why the privacy rule drops it
    narrative: bool             # ``text`` reported as narrative (not as an ordinary unread element)
    extensions: frozenset[str]  # top-level extension URLs some rule reads


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
        out[rtype] = Elements(expand([*common, *(entry.get("read") or {})]), privacy, "text" not in privacy, urls)
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
    urls = nested_modifiers(res)
    if urls:
        seen = ctx.modifiers.setdefault(rtype, {})
        for u in urls:
            seen[u] = seen.get(u, 0) + 1


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
