"""Typed decoding of the usual Bulk NDJSON Observation line (msgspec), for the columnar extractor.

Why not orjson and a dict here: in pass 2 (LB/VS from a Bulk Data Observation file) parsing each line
into dicts and reading them back cost more than everything else in the reader and the extractor. A
``msgspec`` decoder for a fixed set of ``Struct`` types parses one line straight into objects holding
only the elements the extractor reads, with their JSON types checked while parsing (about 1.1 us per
benchmark line against 1.6 us for ``orjson.loads``), and reading attributes is cheaper than ``dict.get``.
These are plain decoder structs, not FHIR models (no pydantic, no fhir.resources objects).

The decoder only **accepts** a line it can represent exactly; everything else goes the orjson + dict
path as before (same rows, same report entries), so nothing is lost silently:

* Every Struct forbids unknown fields. The Observation struct declares each top-level element the
  extractor's inline path reads (:data:`READ`), typed; :class:`ObservationWide` adds every other R4 and
  R5 Observation element (:data:`UNREAD_ELEMENTS`), kept as raw JSON (below) and counted by rule
  ``subject.unread`` exactly as the dict path counts them. The elements that take the row extractor
  (``_findings.RARE_ELEMENTS``: components, extensions, specimen, other value[x]/effective[x] forms, ...),
  ``modifierExtension``, primitive extensions (``_effectiveDateTime``), a nested ``extension`` or
  ``modifierExtension`` and any key FHIR does not define are not declared: such a line fails to decode.
* Below the top level, valueQuantity, referenceRange (and its low/high) and interpretation (and its
  coding) declare exactly the parts rule ``subject.unread-nested`` lists as read
  (``read_elements.yaml`` ``nested``): a line with any other part there fails to decode, and the
  extractor sends codings of other systems in ``code`` and several ranges, interpretations or
  interpretation codings to the row path, which reports them (as the dict fast path does).
* The unit system of valueQuantity and of the range limits is UCUM or absent (:data:`UcumSystem`):
  the extractor reads a unit code of another system on the row path only (which reports it).
* Read elements are typed strictly: strings ``str``, no ``null`` (FHIR JSON has none); a value of
  another JSON type fails the decode. The renderings no rule reads (``display``, ``version``, ``text``,
  ``meta.lastUpdated``, a reference's ``identifier``, ...) are typed as FHIR types them too, so a line
  with, say, a number there goes the dict path. The result and range-limit numbers (``value``, the only
  ``Any`` fields) are decoded with ``float_hook=str.strip``: an integer literal is an ``int``, a float
  literal its JSON text (a ``str``: FHIR decimals as given, converters/subject/numbers.py); the extractor
  takes an ``int`` and a text without an exponent (an exponent may overflow a double, which orjson
  refuses), and sends anything else to the dict path. (An integer beyond 64 bits, which orjson makes a
  float, the dict path gives back as the integer written: ``numbers.give_texts``.)
* Unread elements (:class:`ObservationWide`) are kept as raw JSON (``msgspec.Raw``: msgspec checks
  their syntax only) and, when present, read by orjson in the extractor (each at its depth in the
  line), so a line orjson rejects (invalid UTF-8, a number out of range, a lone surrogate, nesting too
  deep) is rejected here too. Duplicate keys: the last one wins, as in orjson (a second
  ``resourceType`` must still say Observation).
* Any decode failure (``msgspec.DecodeError``/``ValidationError``, ``UnicodeDecodeError``,
  ``RecursionError``) gives the line to the reader's own reading (``reader.NdjsonLines.other``: orjson),
  which reports what it reports today (line number, file). A decoded Observation of a shape the
  inline path does not take (no or several categories, not VS/LB, entered-in-error, the nested cases
  above) is parsed again with orjson and goes the dict path (then the row extractor).
* A recursion limit above orjson's nesting limit (1024) would let msgspec accept deeper JSON than
  orjson: then no typed decoder is used at all.

Bundles (one JSON document) and pass 1 keep the dict path. ``tests/test_findings_fast_path.py``
proves the typed path equal to the plain path (rows with their Python types, order, line numbers,
reader errors, report issues, unread counts) on awkward and randomly mutated lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

#: orjson's nesting limit: with a higher recursion limit msgspec would accept deeper JSON than orjson
ORJSON_MAX_DEPTH = 1024
#: the default of a read element: None when absent, while its type admits no None, so a JSON ``null``
#: fails the decode (``"system": null`` is not an absent system for the dict path)
ABSENT: Any = None


class _S(Struct, forbid_unknown_fields=True, gc=False):
    """Base: unknown keys fail the decode (a nested ``extension``/``modifierExtension`` included)."""


class Coding(_S):
    system: str = ABSENT
    code: str = ABSENT
    display: str | UnsetType = UNSET
    version: str | UnsetType = UNSET
    userSelected: bool | UnsetType = UNSET
    id: str | UnsetType = UNSET


class CodeableConcept(_S):
    coding: list[Coding] = ABSENT
    text: str | UnsetType = UNSET
    id: str | UnsetType = UNSET


class Period(_S):
    start: str | UnsetType = UNSET
    end: str | UnsetType = UNSET
    id: str | UnsetType = UNSET


class Identifier(_S):
    use: str | UnsetType = UNSET
    type: CodeableConcept | UnsetType = UNSET
    system: str | UnsetType = UNSET
    value: str | UnsetType = UNSET
    period: Period | UnsetType = UNSET
    assigner: Reference | UnsetType = UNSET
    id: str | UnsetType = UNSET


class Reference(_S):
    reference: str = ABSENT
    type: str | UnsetType = UNSET
    identifier: Identifier | UnsetType = UNSET
    display: str | UnsetType = UNSET
    id: str | UnsetType = UNSET


#: a unit system the inline path takes (``units.UCUM_SYSTEM``): a valueQuantity or range limit of
#: another system is refused (the dict path sends it to the row extractor, which reports its unit code)
#: -- and the system decoded is the literal's own string, not a new one per line
UcumSystem = Literal["http://unitsofmeasure.org"]


class Quantity(_S):
    """valueQuantity: exactly the parts rule subject.unread-nested lists as read (read_elements.yaml
    ``nested``; any other part, ``id`` included, is reported by the row path: the decode fails)."""

    value: Any = ABSENT    # int, or a float literal's JSON text (str: float_hook)
    comparator: str = ABSENT
    unit: str = ABSENT
    system: UcumSystem = ABSENT
    code: str = ABSENT


class Limit(_S):
    """referenceRange.low/high (nested parts read: value, unit, system, code)."""

    value: Any = ABSENT    # int, or a float literal's JSON text (str: float_hook)
    unit: str = ABSENT
    system: UcumSystem = ABSENT
    code: str = ABSENT


class ReferenceRange(_S):
    """referenceRange items (nested parts read: low, high, text; only the first item is read: the
    extractor sends an Observation with several to the row path)."""

    low: Limit = ABSENT
    high: Limit = ABSENT
    text: str = ABSENT


class InterpretationCoding(_S):
    system: str | UnsetType = UNSET
    code: str = ABSENT
    display: str | UnsetType = UNSET


class Interpretation(_S):
    """interpretation items (nested: only the first item and its first coding are read)."""

    coding: list[InterpretationCoding] = ABSENT


class ResourceMeta(_S):
    versionId: str = ABSENT
    lastUpdated: str | UnsetType = UNSET
    source: str | UnsetType = UNSET
    profile: list[str] | UnsetType = UNSET
    security: list[Coding] | UnsetType = UNSET
    tag: list[Coding] | UnsetType = UNSET
    id: str | UnsetType = UNSET


class Observation(_S):
    """The top-level elements the inline extractor reads (``None`` = absent: ``null`` fails the decode)."""

    resourceType: Literal["Observation"]
    id: str = ABSENT
    meta: ResourceMeta = ABSENT
    status: str = ABSENT
    category: list[CodeableConcept] = ABSENT
    code: CodeableConcept = ABSENT
    subject: Reference = ABSENT
    encounter: Reference = ABSENT
    effectiveDateTime: str = ABSENT
    valueQuantity: Quantity = ABSENT
    interpretation: list[Interpretation] = ABSENT
    referenceRange: list[ReferenceRange] = ABSENT


class ObservationWide(Observation):
    """An Observation that also has elements no rule reads: every other R4 (4.0.1) and R5 (5.0.0)
    Observation element but those that take the row extractor and ``modifierExtension``; kept as raw
    JSON (read by orjson in the extractor when present) and counted by rule subject.unread when present (the test checks this list
    against fhir.resources' Observation models and mappings/subject/read_elements.yaml)."""

    implicitRules: Raw | UnsetType = UNSET
    language: Raw | UnsetType = UNSET
    text: Raw | UnsetType = UNSET
    contained: Raw | UnsetType = UNSET
    identifier: Raw | UnsetType = UNSET
    instantiatesCanonical: Raw | UnsetType = UNSET   # R5
    instantiatesReference: Raw | UnsetType = UNSET   # R5
    basedOn: Raw | UnsetType = UNSET
    triggeredBy: Raw | UnsetType = UNSET   # R5
    partOf: Raw | UnsetType = UNSET
    focus: Raw | UnsetType = UNSET
    effectiveTiming: Raw | UnsetType = UNSET
    issued: Raw | UnsetType = UNSET
    performer: Raw | UnsetType = UNSET
    valueRange: Raw | UnsetType = UNSET
    valueRatio: Raw | UnsetType = UNSET
    valueSampledData: Raw | UnsetType = UNSET
    valueTime: Raw | UnsetType = UNSET
    valueDateTime: Raw | UnsetType = UNSET
    valuePeriod: Raw | UnsetType = UNSET
    valueAttachment: Raw | UnsetType = UNSET   # R5
    valueReference: Raw | UnsetType = UNSET   # R5
    note: Raw | UnsetType = UNSET
    bodyStructure: Raw | UnsetType = UNSET   # R5
    method: Raw | UnsetType = UNSET
    device: Raw | UnsetType = UNSET
    derivedFrom: Raw | UnsetType = UNSET


#: the elements :class:`Observation` declares (all read), then those :class:`ObservationWide` adds
READ = Observation.__struct_fields__
UNREAD_ELEMENTS = ObservationWide.__struct_fields__[len(READ):]


def line_decoder() -> LineDecoder | None:
    """The decoder of one run's NDJSON lines (:class:`LineDecoder`); None when the interpreter's
    recursion limit lets msgspec nest deeper than orjson (then every line takes the orjson path)."""
    if sys.getrecursionlimit() > ORJSON_MAX_DEPTH:
        return None
    return LineDecoder()


class LineDecoder:
    """A decoder of one NDJSON line -> :class:`Observation` (or :class:`ObservationWide` when the line
    has unread elements); it raises when the line is not of a shape it represents exactly. One per run:
    after a line that needed the wide form it tries that form first (a file's lines tend to look
    alike), and every :data:`RETRY_NARROW`-th line the narrow form again (the wide form's unread
    check costs the extractor time). Which form decodes a line changes nothing but time: a line the
    narrow form takes, the wide form takes too, with no unread element. The columnar extractor runs
    the same steps inline on ``narrow``, ``wide``, ``wide_first`` and ``since``."""

    __slots__ = ("narrow", "wide", "wide_first", "since")

    def __init__(self) -> None:
        # (float_hook: a float literal in the value positions, the only ``Any`` fields, decoded as its
        # JSON text; see converters/subject/numbers.py)
        self.narrow: Callable[[bytes], Observation] = msgspec.json.Decoder(Observation, float_hook=str.strip).decode
        self.wide: Callable[[bytes], ObservationWide] = msgspec.json.Decoder(ObservationWide,
                                                                             float_hook=str.strip).decode
        self.wide_first = False
        self.since = 0    # lines decoded wide first since the narrow form was last tried

    def __call__(self, line: bytes) -> Observation:
        if self.wide_first:
            self.since += 1
            if self.since < RETRY_NARROW:
                return self.wide(line)    # (a line neither form takes: refused by both, as below)
            self.since = 0
        try:
            obj = self.narrow(line)
        except REFUSED:
            obj = self.wide(line)
            self.wide_first = True
            return obj
        self.wide_first = False
        return obj


#: what the decoders raise on a line they do not take
REFUSED = (msgspec.DecodeError, ValueError, RecursionError)
#: in wide-first mode, the narrow form is tried again every this many lines
RETRY_NARROW = 256
