"""Shared Observation extraction and vectorised findings mapping for VS and LB.

One extractor reads an Observation into plain columns in one pass (plain dict access, no models; on
the Bulk NDJSON fast path, the usual Observation line arrives decoded by a typed msgspec decoder into
plain structs, ``_obs_json.py``, and is read from their attributes the same way); blood pressure
given as one Observation with components becomes one row per component (VSGRPID = the Observation
id), as two Observations it is two rows. The map steps (``map_findings``) do code
maps, unit mapping/conversion, reference ranges, interpretation and status with pandas.
Rules: ``mappings/subject/vs.yaml`` and ``lb.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from itertools import repeat
from typing import Any, Literal, NamedTuple, overload

import msgspec
import numpy as np
import orjson
import pandas as pd
from msgspec import UNSET

from ...fhir.subject_terms import EXT_DTC
from ...report import Kind
from ...sdtm.ct import pinned_ct
from ...specs import load_table
from .. import units, unread
from ..base import SRC_COLUMNS, Ctx, Distinct, derive_dtc, derive_dtc_codes, full_object
from ..reader import Chunk, NdjsonLines
from . import _obs_json
from ._codes import NCIT_SYSTEMS
from .dm import NO_VALUE, code_table

LOINC = "http://loinc.org"
# Observation.interpretation is bound (extensible) to the ObservationInterpretation value set, whose codes
# are of this system: the nrind table (lb.NRIND) reads only its codes, or a coding that names no system
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_NO_CODING: tuple[dict[str, Any], ...] = ({},)
BODY_POSITION = "http://hl7.org/fhir/StructureDefinition/observation-bodyPosition"
CATEGORIES = {"vital-signs": "VS", "laboratory": "LB"}
FIELDS = ("_subject", "_encounter", "_cat", "_loinc", "_status", "_eff", "_v", "_vu", "_vcmp",
          "_vtext", "_dar", "_interp", "_rlo", "_rhi", "_ru", "_rtext", "_spec_type", "_fast",
          "_grp", "_spec_dtc", "_ncit", "_pos", "_loc", "_cat_text", "_dtc_sdtm", "_rhu")


def _q(d: Any) -> tuple[Any, Any]:
    """(value, unit) of a reference range limit: its UCUM code, else its unit text (a code of another
    system is not taken for UCUM: :func:`_foreign_unit` reports it); a limit of another JSON type than
    an object is a shape error (as on the fast paths), not a silently absent limit."""
    if d:   # (not an object: AttributeError, the shape error of the fast paths' d.keys())
        code = d.get("code") if d.get("system", units.UCUM_SYSTEM) == units.UCUM_SYSTEM else None
        return d.get("value"), code or d.get("unit")
    return None, None


def _range_units(lu: Any, hu: Any) -> tuple[Any, Any]:
    """(``_ru``, ``_rhu``) of a reference range whose limits have the units ``lu`` and ``hu``: the
    range's unit, and the high limit's own unit where it is not the low's (else None; the map
    converts each limit from its own unit)."""
    if lu and hu and lu != hu:
        return lu, hu
    return lu or hu, None


def _two_units(r0: Any) -> bool:
    """A reference range whose low and high are given in different units (the row extractor reads it)."""
    lo, hi = r0.get("low"), r0.get("high")
    if not (isinstance(lo, dict) and isinstance(hi, dict)):
        return False
    lu, hu = lo.get("code") or lo.get("unit"), hi.get("code") or hi.get("unit")
    return bool(lu and hu and lu != hu)


def _foreign_code(q: Any) -> bool:
    """A Quantity whose ``code`` is of a system other than UCUM (that code is not read)."""
    return isinstance(q, dict) and q.get("code") is not None and q.get("system", units.UCUM_SYSTEM) != units.UCUM_SYSTEM


def _value(src: dict[str, Any], row: dict[str, Any]) -> None:
    vq = src.get("valueQuantity")
    if vq is not None:
        row["_v"] = vq.get("value")
        row["_vu"] = vq.get("code") if vq.get("system", units.UCUM_SYSTEM) == units.UCUM_SYSTEM else None
        if row["_vu"] is None and vq.get("unit"):
            row["_vu"] = vq.get("unit")
        row["_vcmp"] = vq.get("comparator")
        return
    cc = src.get("valueCodeableConcept")
    if cc is not None:
        c = (cc.get("coding") or [{}])[0]
        row["_vtext"] = cc.get("text") or c.get("display") or c.get("code")
        return
    for k in ("valueString", "valueInteger", "valueBoolean"):
        if k in src:
            row["_vtext"] = src[k]
            return
    dar = src.get("dataAbsentReason")
    if isinstance(dar, dict):
        c = (dar.get("coding") or [{}])[0]
        row["_dar"] = dar.get("text") or c.get("display") or c.get("code")


def _foreign_unit(res: dict[str, Any], cat: str, ctx: Ctx) -> None:
    """Once per Observation and element whose Quantity (valueQuantity, the first reference range's
    low/high; top level or in a component) has a ``code`` of a system other than UCUM: that code is not
    read (the unit maps need UCUM; rule --.ORRESU) and is reported, so that a value without unit text
    is not taken for a unitless one silently."""
    seen: dict[str, Any] = {}
    for src in (res, *(c for c in res.get("component") or () if isinstance(c, dict))):
        rr = src.get("referenceRange")
        r0: dict[str, Any] = rr[0] if isinstance(rr, list) and rr and isinstance(rr[0], dict) else {}
        for path, q in (("valueQuantity", src.get("valueQuantity")), ("referenceRange.low", r0.get("low")),
                        ("referenceRange.high", r0.get("high"))):
            if isinstance(q, dict) and _foreign_code(q) and path not in seen:
                seen[path] = q.get("system")
    for path, system in sorted(seen.items()):
        ctx.row_issue(cat, "unit-system", Kind.UNMAPPED_CODE, f"{path}.code of the unit system {system} (not UCUM) "
                      f"is not read: the unit text is used where given, else the value has no unit",
                      record=f"Observation/{res.get('id')}", rule=f"{cat.lower()}.ORRESU",
                      source=f"Observation.{path}.code", target=f"{cat}ORRESU")


def _interp_code(interp: Any, cat: str, ctx: Ctx, res: dict[str, Any], path: str) -> str | None:
    """The code of the first coding of the first interpretation (rule lb.NRIND) when its system is
    v3-ObservationInterpretation or not given; a code of another system (SNOMED CT 281302008 'Above
    reference range', ...) is no ObservationInterpretation code: reported unmapped-code with its system
    and not read (a look-up in the nrind table could give a wrong LBNRIND)."""
    if not interp or not isinstance(interp[0], dict):
        return None
    c = (interp[0].get("coding") or [{}])[0]
    system = c.get("system")
    if system is None or system == V3_INTERP or cat != "LB":
        return c.get("code")   # (VS: interpretation is not carried at all, rule vs.interpretation)
    ctx.row_issue(cat, "interp-system", Kind.UNMAPPED_CODE, f"{path}.coding code of the system {system} (not "
                  f"{V3_INTERP}) is not read: LBNRIND not derived from it", record=f"Observation/{res.get('id')}",
                  rule="lb.NRIND", source=f"Observation.{path}.coding", target="LBNRIND")
    return None


def _loinc(code: Any) -> str | None:
    if isinstance(code, dict):
        for c in code.get("coding") or ():
            if c.get("system") == LOINC:
                return c.get("code")
    return None


def _ncit(concept: Any) -> str | None:
    """The NCIt C-code of a CodeableConcept (the CDISC CT term it names; resolved in the map step)."""
    if isinstance(concept, dict):
        for c in concept.get("coding") or ():
            if isinstance(c, dict) and c.get("system") in NCIT_SYSTEMS:
                return c.get("code")
    return None


def _cat_text(cats: Any) -> str | None:
    """The text of a category with no coding: the sponsor's own category (--CAT)."""
    for cc in cats or ():
        if isinstance(cc, dict) and cc.get("text") and not cc.get("coding"):
            return str(cc["text"])
    return None


def _report_ucum_spelling(d: str, vu: pd.Series, orresu: pd.Series, testcd: pd.Series | None,
                          ctx: Ctx) -> None:
    """Once per UCUM code that SDTM cannot give back as written: the CDISC term stands for several UCUM
    spellings of the same unit (``10*3/uL``, ``10^9/L`` -> 10^9/L; ``mg/mg`` -> g/g) and SDTM has no
    variable for the spelling, so SDTM -> FHIR writes the term's own UCUM expression (lossy)."""
    # the distinct (unit, term[, VSTESTCD]) of the rows with both, in order of first occurrence
    cu, units_ = pd.factorize(vu.to_numpy(dtype=object))
    cc, terms = pd.factorize(orresu.to_numpy(dtype=object))
    if d == "VS" and testcd is not None:
        ct, tests = pd.factorize(testcd.to_numpy(dtype=object))
    else:
        ct, tests = np.full(len(cu), -1, dtype=np.int64), np.empty(0, dtype=object)
    rows = np.flatnonzero((cu >= 0) & (cc >= 0))
    key = (cu[rows].astype(np.int64) * len(terms) + cc[rows]) * (len(tests) + 1) + (ct[rows] + 1)
    first = rows[np.sort(np.unique(key, return_index=True)[1])]
    _note_ucum_spellings(d, ((units_[cu[r]], terms[cc[r]], tests[ct[r]] if ct[r] >= 0 else None)
                             for r in first.tolist()), ctx)


def _note_ucum_spellings(d: str, seen: Iterable[tuple[Any, Any, Any]], ctx: Ctx) -> None:
    """One lossy entry per (UCUM unit, CDISC term[, VSTESTCD]) whose term SDTM -> FHIR writes back in
    another UCUM spelling."""
    from ...fhir.subject_terms import ucum_for, vs_ucum
    for u, c, t in seen:
        back = vs_ucum(t, c) if d == "VS" else ucum_for(c)
        if back != u:
            ctx.once(f"ucum-spelling:{d}:{u}:{c}", Kind.LOSSY, f"UCUM unit {u} recorded as the CDISC term {c} "
                     "(the same unit; SDTM keeps no UCUM spelling): SDTM -> FHIR writes it as "
                     f"{back or 'unit text only'}", rule=f"{d.lower()}.ORRESU",
                     source="Observation.valueQuantity.code", target=f"{d}ORRESU")


def _dtc_sdtm(res: dict[str, Any]) -> str | None:
    """The SDTM --DTC text the project's ``sdtm-dtc`` extension keeps on effectiveDateTime when FHIR
    could not hold it (a time without zone): the --DTC itself (rule --.DTC)."""
    prim = res.get("_effectiveDateTime")
    if isinstance(prim, dict):
        for e in prim.get("extension") or ():
            if isinstance(e, dict) and e.get("url") == EXT_DTC:
                return e.get("valueString")
    return None


def _position(res: dict[str, Any]) -> str | None:
    for e in res.get("extension") or ():
        if isinstance(e, dict) and e.get("url") == BODY_POSITION:
            return _ncit(e.get("valueCodeableConcept"))
    return None


def _report_out_of_scope(res: dict[str, Any], ctx: Ctx) -> None:
    """An Observation of no category this converter reads (survey, social-history, imaging, exam, ...,
    or none): reported per resource (nothing dropped silently), grouped by its category codes."""
    codes = sorted({str(c.get("code")) for cc in res.get("category") or () if isinstance(cc, dict)
                    for c in cc.get("coding") or () if isinstance(c, dict) and c.get("code")})
    what = ", ".join(codes) if codes else "no category code"
    ctx.row_issue("OBS", f"category:{what}", Kind.UNMAPPED_SOURCE,
                  f"Observation of category {what}: not converted (VS reads category vital-signs, LB "
                  "laboratory; no other SDTM findings domain is in this converter's scope)",
                  record=f"Observation/{res.get('id')}", source="Observation.category", rule="subject.scope")


def extract_observation(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Observation -> one row (or one per component). Hot path: keep it plain."""
    cat = None
    for cc in res.get("category") or ():
        for c in cc.get("coding") or ():
            cat = CATEGORIES.get(c.get("code"))
            if cat:
                break
        if cat:
            break
    if cat is None:
        _report_out_of_scope(res, ctx)
        return None
    if res.get("status") == "entered-in-error":
        ctx.row_issue(cat, "entered-in-error", Kind.LOSSY, "Observation entered-in-error: not converted",
                      record=f"Observation/{res.get('id')}", rule=f"{cat.lower()}.STAT")
        return None
    subj = res.get("subject")
    enc = res.get("encounter")
    eff = res.get("effectiveDateTime") or res.get("effectiveInstant")
    if eff is None:
        per = res.get("effectivePeriod")
        eff = per.get("start") if isinstance(per, dict) else None
    row: dict[str, Any] = {
        "_subject": subj.get("reference") if isinstance(subj, dict) else None,
        "_encounter": enc.get("reference") if isinstance(enc, dict) else None,
        "_cat": cat, "_loinc": _loinc(res.get("code")), "_status": res.get("status"), "_eff": eff,
        "_v": None, "_vu": None, "_vcmp": None, "_vtext": None, "_dar": None, "_interp": None,
        "_rlo": None, "_rhi": None, "_ru": None, "_rtext": None, "_spec_type": None, "_fast": None,
        "_grp": None, "_spec_dtc": None, "_ncit": _ncit(res.get("code")), "_pos": _position(res),
        "_loc": _ncit(res.get("bodySite")), "_cat_text": _cat_text(res.get("category")),
        "_dtc_sdtm": _dtc_sdtm(res) if "_effectiveDateTime" in res else None, "_rhu": None}
    row["_interp"] = _interp_code(res.get("interpretation"), cat, ctx, res, "interpretation")
    rr = res.get("referenceRange")
    if rr:
        r0 = rr[0]
        row["_rlo"], lu = _q(r0.get("low"))
        row["_rhi"], hu = _q(r0.get("high"))
        row["_ru"], row["_rhu"] = _range_units(lu, hu)
        row["_rtext"] = r0.get("text")
    sp = res.get("specimen")
    if cat == "LB" and isinstance(sp, dict):
        spec = ctx.resource("Specimen", sp.get("reference"))
        if spec is not None:
            st = spec.get("type")
            row["_spec_type"] = (st.get("coding") or [{}])[0].get("code") if isinstance(st, dict) else None
            col = spec.get("collection") or {}
            fs = col.get("fastingStatusCodeableConcept")
            row["_fast"] = (fs.get("coding") or [{}])[0].get("code") if isinstance(fs, dict) else None
            row["_spec_dtc"] = col.get("collectedDateTime") or (col.get("collectedPeriod") or {}).get("start")
    _foreign_unit(res, cat, ctx)
    comps = res.get("component")
    if comps:
        out = []
        has_top = any(k in res for k in TOP_WITH_COMPONENTS)
        if has_top:
            _value(res, row)
            out.append(row)
        # top-level value[x] beside components: only these three are read (the others are reported)
        _note_unread(res, cat, ctx, tuple(k for k in res if k.startswith("value") and k not in TOP_WITH_COMPONENTS))
        if cat == "VS" and any(isinstance(c, dict) and c.get("referenceRange") for c in comps):
            # VS has no reference range variables: a component's range is read by no rule (once per resource)
            key = ("Observation", "component.referenceRange", "unread")
            ctx.unread[key] = ctx.unread.get(key, 0) + 1
        for comp in comps:
            r = dict(row)
            r["_loinc"] = _loinc(comp.get("code"))
            r["_ncit"] = _ncit(comp.get("code"))
            r["_v"] = r["_vu"] = r["_vcmp"] = r["_vtext"] = r["_dar"] = None
            _value(comp, r)
            if r["_dar"] is None and row["_dar"] is None and r["_v"] is None and r["_vtext"] is None:
                dar = res.get("dataAbsentReason")
                if isinstance(dar, dict):
                    _value({"dataAbsentReason": dar}, r)
            ci = comp.get("interpretation")
            if ci:
                r["_interp"] = _interp_code(ci, cat, ctx, res, "component.interpretation")
            crr = comp.get("referenceRange")
            if crr:
                r["_rlo"], lu = _q(crr[0].get("low"))
                r["_rhi"], hu = _q(crr[0].get("high"))
                r["_ru"], r["_rhu"] = _range_units(lu, hu)
                r["_rtext"] = crr[0].get("text")
            r["_grp"] = res.get("id")
            out.append(r)
        return out
    if "hasMember" in res and not any(k.startswith("value") for k in res):
        ctx.once(f"panel-{cat}", Kind.LOSSY, "panel Observations (hasMember, no value) are groupings, "
                 "not results: not converted (their members are)", rule=f"{cat.lower()}.panel")
        return None
    _value(res, row)
    _note_unread(res, cat, ctx, ())
    return row


#: the top-level value[x] an Observation with components converts (besides its component rows)
TOP_WITH_COMPONENTS = ("valueQuantity", "valueCodeableConcept", "valueString")
#: elements the table lists as read for Observation that one category does not read (VS has no
#: reference range variables, SDTMIG 3.4 VS: a vital sign's referenceRange takes the row extractor,
#: which reports it)
NOT_READ_BY = {"VS": ("specimen", "referenceRange"), "LB": ("bodySite",)}


def _note_unread(res: dict[str, Any], cat: str, ctx: Ctx, also: tuple[str, ...]) -> None:
    """Rule subject.unread for a converted Observation off the fast path."""
    unread.note_resource(res, ctx, also_unread=NOT_READ_BY[cat] + also)


#: the columns :func:`extract_observation_columns` returns (FIELDS, then provenance)
COLUMNS = FIELDS + SRC_COLUMNS
NUMERIC_COLUMNS = frozenset({"_src_line"})
#: the columns of the usual Observation, one tuple slot each; every other column is almost always
#: empty and is kept sparse (row -> value) while a chunk is extracted
DENSE = ("_subject", "_encounter", "_loinc", "_status", "_eff", "_v", "_vu", "_vcmp", "_interp",
         "_rlo", "_rhi", "_ru") + SRC_COLUMNS
SPARSE = tuple(c for c in FIELDS if c not in DENSE and c != "_cat")
#: elements that take the full row extractor (:func:`extract_observation`): components, panels,
#: extensions, body site, specimen, other effective[x]/value[x] forms, data absent reason
RARE_ELEMENTS = frozenset({"component", "hasMember", "extension", "bodySite", "_effectiveDateTime",
                           "specimen", "effectiveInstant", "effectivePeriod", "valueCodeableConcept",
                           "valueString", "valueInteger", "valueBoolean", "dataAbsentReason"})


def extract_observation_columns(items: Iterable[Any] | Chunk, ctx: Ctx, on_error: Callable[[Any, Exception], None]
                                ) -> tuple[dict[str, dict[str, Any]], int]:
    """Columnar :func:`extract_observation` for a chunk of resources: one tight pass, one tuple per
    row, transposed into per-domain columns ({"LB": {column: values}, "VS": ...}, columns
    :data:`COLUMNS`). The usual Observation (one category coding, a LOINC code, valueQuantity, a
    reference range, an interpretation) is read inline; any other shape takes the row extractor
    (same values, same issues). Same rows in the same order as the row extractor. ``items``: reader
    items (dicts), or a :class:`reader.Chunk` (pass 2 with the ``_obs_json`` decoder): then the lines
    of an NDJSON file are read here, the typed lines decoded and read the same way from attributes
    (a shape the inline path does not take is parsed again with orjson and goes the dict path), every
    other line read by the reader (``NdjsonLines.other``). Returns (columns by domain, resources
    consumed)."""
    by_cat: dict[str, list[tuple[Any, ...]]] = {"LB": [], "VS": []}
    add = {k: v.append for k, v in by_cat.items()}
    sparse: dict[str, dict[str, dict[int, Any]]] = {"LB": {}, "VS": {}}
    order: dict[str, None] = {}   # domains in order of their first row (the order they are written)
    if type(items) is Chunk:
        n = _extract_chunk(items, ctx, on_error, by_cat, add, sparse, order)
    else:
        n = 0
        for item in items:
            n += 1
            _dict_row(item, ctx, on_error, by_cat, add, sparse, order)
    return _transpose(by_cat, sparse, order), n


def _extract_chunk(chunk: Chunk, ctx: Ctx, on_error: Callable[[Any, Exception], None],
                   by_cat: dict[str, list[tuple[Any, ...]]], add: dict[str, Callable[[tuple[Any, ...]], None]],
                   sparse: dict[str, dict[str, dict[int, Any]]], order: dict[str, None]) -> int:
    """The resources of a :class:`reader.Chunk`, read part by part (see :class:`reader.ResourceStream`)."""
    stream, size = chunk
    decode = stream.decode
    assert isinstance(decode, _obs_json.LineDecoder)    # (its steps are run inline below)
    narrow, wide_decode, retry = decode.narrow, decode.wide, _obs_json.RETRY_NARROW
    # the chunk's repeated strings (codes, units, status, version, subject) kept once: the rows hold
    # fewer objects (the strings are equal, only fewer)
    memo: dict[Any, Any] = {}
    seen = memo.get
    keep = memo.setdefault
    cat_of = CATEGORIES.get
    loinc_system = LOINC
    ncit_systems = NCIT_SYSTEMS
    interp_systems = (UNSET, V3_INTERP)
    wide = _obs_json.ObservationWide
    unread_at = len(_obs_json.READ)
    unread_names = _obs_json.UNREAD_ELEMENTS
    astuple = msgspec.structs.astuple
    n = 0
    while n < size:
        part = stream.part()
        if part is None:
            break
        if not isinstance(part, NdjsonLines):
            for item in part:
                n += 1
                _dict_row(item, ctx, on_error, by_cat, add, sparse, order)
                if n >= size:
                    break
            else:
                stream.next_part()
            continue
        fh, name, prefix, other = part.fh, part.name, part.prefix, part.other
        ln = part.n
        wide_first, since = decode.wide_first, decode.since
        try:
            for line in fh:
                ln += 1
                if line.startswith(prefix):
                    # LineDecoder.__call__ inline (any refusal: the line is read as any other below)
                    res: _obs_json.Observation | None
                    if wide_first and (since := since + 1) < retry:
                        try:
                            res = wide_decode(line)
                        except Exception:  # noqa: BLE001
                            res = None
                    else:
                        since = 0
                        try:
                            res = narrow(line)
                            wide_first = False
                        except Exception:  # noqa: BLE001
                            try:
                                res = wide_decode(line)
                                wide_first = True
                            except Exception:  # noqa: BLE001
                                res = None
                    if res is not None:
                        n += 1
                        # the same reading as the dict path (_dict_row), on attributes (absent = None:
                        # the decoder admits no null)
                        cats = res.category
                        status = res.status
                        if cats is not None and len(cats) == 1 and (cs := cats[0].coding) \
                                and (cat := cat_of(cs[0].code)) is not None and status != "entered-in-error":
                            usual = True
                            loinc = ncit = None
                            code = res.code
                            if code is not None and (cc := code.coding):
                                c = cc[0]
                                if len(cc) == 1 and c.system == loinc_system:
                                    loinc = c.code
                                else:
                                    for c in cc:
                                        system = c.system
                                        if system == loinc_system:
                                            if loinc is None:
                                                loinc = c.code
                                            else:
                                                usual = False   # a second LOINC coding: reported on the row path
                                        elif system in ncit_systems:
                                            if ncit is None:
                                                ncit = c.code
                                            else:
                                                usual = False
                                        else:
                                            usual = False
                            # (the Structs admit only the nested parts rule subject.unread-nested lists as
                            # read; several reference ranges, interpretations or interpretation codings:
                            # the row path, which reports them)
                            interp = res.interpretation
                            icode = None
                            if interp:
                                if len(interp) > 1:
                                    usual = False
                                elif ic := interp[0].coding:
                                    if len(ic) > 1 or ic[0].system not in interp_systems:
                                        usual = False   # (another code system: reported on the row path)
                                    icode = ic[0].code
                            rr = res.referenceRange
                            rlo = rhi = ru = rtext = None
                            if rr:
                                if cat == "VS" or len(rr) > 1:
                                    usual = False
                                else:
                                    r0 = rr[0]
                                    lo, hi = r0.low, r0.high
                                    lu = hu = None
                                    # (a limit's unit system is UCUM or absent: _obs_json.UcumSystem)
                                    # (a limit's value: as the result's, below)
                                    if lo is not None:
                                        rlo, lu = lo.value, lo.code or lo.unit
                                        if type(rlo) is str:
                                            if "e" in rlo or "E" in rlo or len(rlo) > 308:
                                                usual = False
                                        elif rlo is not None and type(rlo) is not int:
                                            usual = False
                                    if hi is not None:
                                        rhi, hu = hi.value, hi.code or hi.unit
                                        if type(rhi) is str:
                                            if "e" in rhi or "E" in rhi or len(rhi) > 308:
                                                usual = False
                                        elif rhi is not None and type(rhi) is not int:
                                            usual = False
                                    if lu and hu and lu != hu:
                                        usual = False   # limits in two units: the row path (_rhu)
                                    ru = lu or hu
                                    rtext = r0.text
                            vq = res.valueQuantity
                            v = vu = vcmp = None
                            if vq is not None:    # (its unit system is UCUM or absent: _obs_json.UcumSystem)
                                v, vu, vcmp = vq.value, vq.code, vq.comparator
                                if vu is None and vq.unit:
                                    vu = vq.unit
                                # an int, or a float's JSON text (a str: float_hook; a JSON string too,
                                # which the dict path reads alike) without an exponent and not longer
                                # than a double's range (either may overflow, which orjson refuses);
                                # anything else (a boolean, an object, ...): the dict path
                                if type(v) is str:
                                    if "e" in v or "E" in v or len(v) > 308:
                                        usual = False
                                elif v is not None and type(v) is not int:
                                    usual = False
                            if usual and type(res) is wide:
                                present = [(k, x) for k, x in zip(unread_names, astuple(res)[unread_at:], strict=True)
                                           if x is not UNSET]
                                if present:
                                    if _orjson_reads(present):
                                        unread.note_keys("Observation", [k for k, _ in present], ctx)
                                    else:
                                        usual = False   # (orjson refuses the line: the reader reports it)
                            if usual:
                                rows = by_cat[cat]
                                if ncit is not None or rtext is not None:
                                    _put_sparse(sparse[cat], len(rows), ncit, rtext)
                                if cat not in order:
                                    order[cat] = None
                                ref = ver = None
                                if (subj := res.subject) is not None:
                                    ref = subj.reference
                                    ref = seen(ref) or keep(ref, ref)
                                if (meta := res.meta) is not None:
                                    ver = meta.versionId
                                    ver = seen(ver) or keep(ver, ver)
                                enc = res.encounter
                                rows.append((ref, enc.reference if enc is not None else None,
                                             seen(loinc) or keep(loinc, loinc), seen(status) or keep(status, status),
                                             res.effectiveDateTime or None, v, seen(vu) or keep(vu, vu), vcmp,
                                             seen(icode) or keep(icode, icode), rlo, rhi, seen(ru) or keep(ru, ru),
                                             "Observation", res.id, ver, name, ln))
                                if n >= size:
                                    break
                                continue
                        # a shape the inline path does not take: the line as the reader reads it (orjson:
                        # the dict path; orjson may refuse a line the decoder took, a number out of range)
                        n -= 1
                got = other(line, ln)
                if got is not None:
                    n += 1
                    _dict_row(got, ctx, on_error, by_cat, add, sparse, order)
                    if n >= size:
                        break
            else:
                stream.next_part()
        finally:
            part.n = ln
            decode.wide_first, decode.since = wide_first, since
    return n


def _orjson_reads(present: list[tuple[str, Any]]) -> bool:
    """Does orjson read the unread elements the typed decoder kept as raw JSON (each at the depth it
    has in the line: inside one array)? msgspec only checked their syntax; orjson also refuses invalid
    UTF-8, lone surrogates, numbers out of range and nesting beyond its limit, and then refuses the line."""
    try:
        for _, raw in present:
            orjson.loads(b"[" + bytes(raw) + b"]")
    except orjson.JSONDecodeError:
        return False
    return True


def _dict_row(item: Any, ctx: Ctx, on_error: Callable[[Any, Exception], None],
              by_cat: dict[str, list[tuple[Any, ...]]], add: dict[str, Callable[[tuple[Any, ...]], None]],
              sparse: dict[str, dict[str, dict[int, Any]]], order: dict[str, None]) -> None:
    """One reader item (a dict) of :func:`extract_observation_columns`: the usual shape inline, any
    other the row extractor."""
    res = item[0]
    ucum = units.UCUM_SYSTEM
    try:
        get = res.get
        cats = get("category")
        cat = None
        if RARE_ELEMENTS.isdisjoint(res) and type(cats) is list and len(cats) == 1:
            try:
                cat = CATEGORIES.get(cats[0]["coding"][0]["code"])
            except (KeyError, IndexError, TypeError):
                cat = None
        status = get("status")
        if cat is None or status == "entered-in-error":
            _extract_row(item, ctx, add, sparse, by_cat, order)
            return
        # the usual shape: what extract_observation reads, without the branches that cannot apply;
        # anything rule subject.unread-nested would report (a coding of another system, a second
        # reference range or interpretation, a part no rule reads) takes the row extractor
        code = get("code")
        loinc = ncit = None
        usual = True
        if isinstance(code, dict):
            for c in code.get("coding") or ():
                system = c.get("system")
                if system == LOINC:
                    if loinc is None:
                        loinc = c.get("code")
                    else:
                        usual = False   # a second LOINC coding: reported on the row path
                elif system in NCIT_SYSTEMS:
                    if ncit is None:
                        ncit = c.get("code")
                    else:
                        usual = False
                else:
                    usual = False
        interp = get("interpretation")
        rr = get("referenceRange")
        vq = get("valueQuantity")
        if interp and (len(interp) > 1 or not interp[0].keys() <= INTERP_PARTS
                       or len(interp[0].get("coding") or ()) > 1
                       or not (interp[0].get("coding") or ({},))[0].keys() <= CODING_PARTS
                       or (interp[0].get("coding") or _NO_CODING)[0].get("system", V3_INTERP) != V3_INTERP):
            usual = False
        if rr and (len(rr) > 1 or cat == "VS" or not rr[0].keys() <= RANGE_PARTS
                   or not (rr[0].get("low") or {}).keys() <= LIMIT_PARTS
                   or not (rr[0].get("high") or {}).keys() <= LIMIT_PARTS
                   or _foreign_code(rr[0].get("low")) or _foreign_code(rr[0].get("high"))
                   or _two_units(rr[0])):
            usual = False
        if vq is not None and (not vq.keys() <= QUANTITY_PARTS
                               or vq.get("code") is not None and vq.get("system", ucum) != ucum):
            usual = False
        if not usual:
            _extract_row(item, ctx, add, sparse, by_cat, order)
            return
        # rule subject.unread: one C-level subset test per resource; the difference only when it fails
        read_all = unread.read_elements("Observation")
        if not read_all.issuperset(res):
            _note_unread_fast(res, read_all, ctx)
        meta = get("meta")
        subj = get("subject")
        enc = get("encounter")
        rlo = rhi = ru = rtext = None
        if rr:
            r0 = rr[0]
            lo = r0.get("low")
            if isinstance(lo, dict):
                rlo, lu = lo.get("value"), lo.get("code") or lo.get("unit")
            else:
                lu = None
            hi = r0.get("high")
            if isinstance(hi, dict):
                rhi, hu = hi.get("value"), hi.get("code") or hi.get("unit")
            else:
                hu = None
            ru = lu or hu
            rtext = r0.get("text")
        v = vu = vcmp = None
        if vq is not None:
            vget = vq.get
            v = vget("value")
            vu = vget("code") if vget("system", ucum) == ucum else None
            if vu is None and vget("unit"):
                vu = vget("unit")
            vcmp = vget("comparator")
        rows = by_cat[cat]
        if ncit is not None or rtext is not None:
            _put_sparse(sparse[cat], len(rows), ncit, rtext)
        if cat not in order:
            order[cat] = None
        rows.append((subj.get("reference") if isinstance(subj, dict) else None,
                     enc.get("reference") if isinstance(enc, dict) else None,
                     loinc, status, get("effectiveDateTime") or None, v, vu, vcmp,
                     (interp[0].get("coding") or [{}])[0].get("code") if interp else None,
                     rlo, rhi, ru, get("resourceType"), get("id"),
                     meta.get("versionId") if isinstance(meta, dict) else None, item[1], item[3]))
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        on_error(item, exc)


def _transpose(by_cat: dict[str, list[tuple[Any, ...]]], sparse: dict[str, dict[str, dict[int, Any]]],
               order: dict[str, None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cat in order:
        rows = by_cat[cat]
        m = len(rows)
        # line numbers as lists; everything else as object Series: no string-dtype inference (it costs
        # more than the mapping that follows), and result numbers keep the JSON's int/float, so 118
        # is reported as "118" and 118.0 as "118.0" (base.AS_GIVEN_COLUMNS)
        cols: dict[str, Any] = {name: (list(col) if name in NUMERIC_COLUMNS else pd.Series(col, dtype="object"))
                                for name, col in zip(DENSE, zip(*rows, strict=True), strict=True)}
        cols["_cat"] = pd.Series(np.full(m, cat, dtype=object), dtype="object")
        for name in SPARSE:
            col = np.full(m, None, dtype=object)
            got = sparse[cat].get(name)
            if got:
                col[np.fromiter(got.keys(), dtype=np.int64, count=len(got))] = list(got.values())
            cols[name] = pd.Series(col, dtype="object")
        out[cat] = {name: cols[name] for name in COLUMNS}
    return out


def _put_sparse(sp: dict[str, dict[int, Any]], at: int, ncit: Any, rtext: Any) -> None:
    """The rarely filled columns of row ``at`` (an NCIt test coding, a reference range text)."""
    if ncit is not None:
        sp.setdefault("_ncit", {})[at] = ncit
    if rtext is not None:
        sp.setdefault("_rtext", {})[at] = rtext


def _nested_parts(path: str) -> frozenset[str]:
    how = unread.element_table()["Observation"].nested[path]
    assert how.parts is not None, path
    return how.parts


#: the parts the fast path may meet (mappings/subject/read_elements.yaml, Observation nested): any other
#: part sends the Observation to the row extractor, where rule subject.unread-nested reports it
QUANTITY_PARTS = _nested_parts("valueQuantity")
RANGE_PARTS = _nested_parts("referenceRange")
LIMIT_PARTS = _nested_parts("referenceRange.low") & _nested_parts("referenceRange.high")
INTERP_PARTS = _nested_parts("interpretation")
CODING_PARTS = _nested_parts("interpretation.coding")


def _note_unread_fast(res: dict[str, Any], read_all: frozenset[str], ctx: Ctx) -> None:
    """Rule subject.unread for a fast-path Observation that has elements no rule reads (its nested
    elements are not walked for modifier extensions: the fast path reads none of them deeply)."""
    unread.note_keys("Observation", res.keys() - read_all, ctx)
    if unread.MODIFIER in res:
        unread.note_modifier("Observation", res[unread.MODIFIER], ctx)


def _extract_row(item: Any, ctx: Ctx, add: dict[str, Callable[[tuple[Any, ...]], None]],
                 sparse: dict[str, dict[str, dict[int, Any]]], by_cat: dict[str, list[tuple[Any, ...]]],
                 order: dict[str, None]) -> None:
    """Any Observation but the usual shape: :func:`extract_observation`, rows split into the dense
    tuple and the sparse columns."""
    res = item[0]
    meta = res.get("meta")
    src = (res.get("resourceType"), res.get("id"),
           meta.get("versionId") if isinstance(meta, dict) else None, item[1], item[3])
    got = extract_observation(res, ctx)
    if not got:
        return
    for r in (got if isinstance(got, list) else (got,)):
        cat = r["_cat"]
        at = len(by_cat[cat])
        sp = sparse[cat]
        for name in SPARSE:
            if r[name] is not None:
                sp.setdefault(name, {})[at] = r[name]
        add[cat](tuple([r[k] for k in DENSE[:-len(SRC_COLUMNS)]]) + src)
        order.setdefault(cat)


def accept_vs(row: dict[str, Any]) -> bool:
    return row["_cat"] == "VS"


def accept_lb(row: dict[str, Any]) -> bool:
    return row["_cat"] == "LB"


@cache
def standard_units(domain: str) -> dict[str, tuple[str, str]]:
    return {r["testcd"]: (r["ucum"], r["cdisc_unit"]) for r in load_table("codes/standard_units.csv")
            if r["domain"] == domain}


def map_distinct(keys: pd.Series, fn: Callable[[Any], Any]) -> pd.Series:
    """``keys.map(fn)`` with ``fn`` called once per distinct key (``fn(None)`` for missing keys):
    code tables are looked up per code, not per row. Object dtype."""
    return Distinct(keys).map(fn)


def ct_term(codelist: str) -> Callable[[Any], str | None]:
    """NCIt C-code -> the CDISC submission value of that term in ``codelist`` (pinned CT), None when
    the code is not a term of it."""
    cl = pinned_ct().codelist(codelist)

    def one(c: Any) -> str | None:
        term = cl.by_code(c) if isinstance(c, str) else None
        return term.value if term is not None else None
    return one


class ResolvedTests(NamedTuple):
    """The rows of a findings chunk that have a test code, and that code (see :func:`resolve_test_codes`)."""

    cols: pd.DataFrame
    codes: Distinct           # the LOINC column, factorised (table lookups once per code)
    ncits: Distinct           # the NCIt column, factorised
    testcd: pd.Series         # --TESTCD
    test: pd.Series           # --TEST
    by_table: np.ndarray      # per row: --TESTCD from the LOINC row of the table (not an NCIt coding)


def resolve_test_codes(cols: pd.DataFrame, ctx: Ctx, domain: str, table: dict[str, dict[str, str]],
               table_name: str) -> ResolvedTests | None:
    """--TESTCD/--TEST of each row: an NCIt coding of a --TESTCD term is the CDISC value itself and wins
    over the LOINC row of ``table`` (and converts rows whose test has no LOINC); a row with neither is
    reported (unmapped-code, per resource) and not converted. None when no row is left."""
    loinc = cols["_loinc"].astype("object")
    codes = Distinct(loinc)
    ncits = Distinct(cols["_ncit"].astype("object"))
    hit = codes.map(lambda c: table.get(c) if isinstance(c, str) else None)
    testcd_term, test_term = ct_term(f"{domain}TESTCD"), ct_term(f"{domain}TEST")
    by_ncit = ncits.map(testcd_term)
    bad = hit.isna() & by_ncit.isna()
    if bad.any():
        ctx.row_issues(domain, "testcd", Kind.UNMAPPED_CODE, f"Observation.code has neither a LOINC in "
                       f"{table_name} nor an NCIt coding of a term of codelist {domain}TESTCD: row not converted", cols, bad,
                       rule=f"{domain.lower()}.{domain}TESTCD", source="Observation.code", target=f"{domain}TESTCD",
                       value_col="_loinc")
        cols, by_ncit = cols.loc[~bad], by_ncit.loc[~bad]
        codes, ncits = codes.subset(~bad), ncits.subset(~bad)
    if not len(cols):
        return None
    testcd = codes.map(lambda c: table[c]["target_code"] if c in table else None)
    testcd = by_ncit.where(by_ncit.notna(), testcd)
    by_table = codes.map(lambda c: table[c][f"{domain}TEST"] if c in table else None)
    # --TEST of the NCIt coding where that coding gave --TESTCD
    test_ncit = ncits.map(lambda c: test_term(c) if testcd_term(c) is not None else None)
    return ResolvedTests(cols, codes, ncits, testcd, test_ncit.where(test_ncit.notna(), by_table),
                         by_ncit.isna().to_numpy(dtype=bool))


def loincs_used(codes: np.ndarray, values: list[Any], by_table: np.ndarray) -> tuple[list[Any], list[Any]]:
    """The distinct LOINCs of a chunk's converted rows (``codes`` into ``values``, -1 = none), in order
    of first occurrence: (those of which some row took --TESTCD from the table's LOINC row, those
    whose rows all took it from an NCIt coding) -- for :func:`test_codes.note_used`."""
    width = len(values) + 1   # (codes -1..len-1, counted from 0)
    table_rows = set((np.flatnonzero(np.bincount(codes[by_table] + 1, minlength=width)) - 1).tolist())
    ncit_rows = set((np.flatnonzero(np.bincount(codes[~by_table] + 1, minlength=width)) - 1).tolist()) - table_rows
    return ([values[j] for j in sorted(table_rows) if j >= 0], [values[j] for j in sorted(ncit_rows) if j >= 0])


def ct_values(ccodes: pd.Series, codelist: str) -> pd.Series:
    """NCIt C-codes -> :func:`ct_term` of ``codelist``, once per distinct code."""
    return map_distinct(ccodes.astype("object"), ct_term(codelist))


def _text(x: pd.Series) -> pd.Series:
    """``x.where(x.isna(), x.astype(str))`` in object dtype (``str()`` of each present value; missing
    values kept as they are), without a str-dtype intermediate (see :func:`text_values`)."""
    return pd.Series(text_values(x.to_numpy(dtype=object)), index=x.index, dtype="object")


def text_values(arr: np.ndarray) -> np.ndarray:
    """``str()`` of each present value of an object array (missing values kept as they are), once per
    distinct value: strings and integers factorised as they are; floats by their bits (0.0 and -0.0
    stay apart; the JSON gives Python floats, whose ``str`` is fixed by the value); integers and
    floats mixed (1 and 1.0 hash alike) each on their own; anything else value by value."""
    return _texts_and_numbers(arr, numbers=False).texts


#: (distinct float bits, their ``str``, per row of the column the code of its bits or -1)
Reprs = tuple[np.ndarray, list[str], np.ndarray]


class _Numbers(NamedTuple):
    texts: np.ndarray                   # text_values
    floats: np.ndarray | None           # pd.to_numeric(errors="coerce") as float64 (when asked)
    present: np.ndarray                 # notna
    reprs: Reprs | None                 # the float texts made: (distinct bits, str, row codes)


def _texts_and_numbers(arr: np.ndarray, numbers: bool = True) -> _Numbers:
    """:func:`text_values` and, when ``numbers``, the values as float64; for a column of JSON
    numbers the floats come from the same pass. (A float given as its JSON text, see
    converters/subject/numbers.py, is a ``str``: its text as it is, its number parsed.)"""
    out = arr.copy()
    kind = pd.api.types.infer_dtype(arr, skipna=True)
    if kind == "empty":
        return _Numbers(out, np.full(len(arr), np.nan) if numbers else None, np.zeros(len(arr), dtype=bool), None)
    ok = ~pd.isna(arr)
    nums: np.ndarray | None = None
    reprs = None
    if kind in ("string", "mixed-integer"):
        # texts, integers and floats given as their JSON text (converters/subject/numbers.py): str() of
        # a str is the str itself; the numbers parsed value by value where that is what pd.to_numeric
        # gives (_parsed), with the float texts floats get
        vals = arr[ok].tolist()
        codes = None
        numeric_kinds = kind == "string" or set(map(type, vals)) <= {int, str}
        if numeric_kinds and len(set(vals[:256])) < 64:
            # few distinct values (reference range limits): each once (an int and a str are never one
            # key; True and 1, 1 and 1.0 would be: such a column goes value by value)
            codes, uniq = pd.factorize(arr[ok])
            vals = uniq.tolist()
        strs = vals if kind == "string" else list(map(str, vals))
        if codes is not None:
            table = np.empty(len(strs), dtype=object)
            table[:] = strs
            out[ok] = table[codes]
        else:
            # the texts made anew side by side (one join and split): the strings the decoder made lie
            # scattered among each line's objects, and every later reading (the writer's) would miss
            # the cache on them
            joined = "\n".join(strs)
            if joined.count("\n") == len(strs) - 1:
                out[ok] = joined.split("\n")
            elif kind != "string":
                out[ok] = strs
        if numbers:
            got = _parsed(vals, strs) if numeric_kinds else None
            if got is not None:
                if codes is not None:
                    got = got[codes]
                nums = np.full(len(arr), np.nan)
                nums[ok] = got
                reprs = _str_floats(got, ok, np.empty(len(arr), dtype=object))
    elif kind in ("integer", "floating", "mixed-integer-float"):
        try:
            vals = arr[ok].astype(np.float64)
        except (OverflowError, TypeError, ValueError):   # an integer beyond the float range
            vals = None
        # integers and floats mixed: pd.to_numeric may make int64 of an int-first column of
        # integral values, which turns -0.0 into 0; with no -0.0 (and no integer beyond int64)
        # its floats are these
        if vals is not None and numbers and (kind != "mixed-integer-float" or not (
                (np.signbit(vals) & (vals == 0)).any() or (np.abs(vals) >= 2.0**63).any())):
            nums = np.full(len(arr), np.nan)
            nums[ok] = vals
        if kind == "integer":
            _str_distinct(arr, ok, out)
        elif kind == "floating" and vals is not None:
            reprs = _str_floats(vals, ok, out)
        elif vals is not None and not (np.abs(vals) >= 2.0**53).any():
            # integers and floats: one factorisation of (float bits, is a float): 1 and 1.0 apart,
            # 0.0 and -0.0 apart; every integer is a float exactly (|v| < 2**53), so none merge
            isf = np.fromiter(map(isinstance, arr[ok].tolist(), repeat(float)), dtype=bool, count=len(vals))
            codes, uniq = pd.factorize(pd.factorize(vals.view(np.int64))[0] * 2 + isf)
            at = np.empty(len(uniq), dtype=np.intp)
            at[codes] = np.arange(len(codes))     # a row of each (value, type)
            table = np.empty(len(uniq), dtype=object)
            table[:] = [str(v) for v in arr[ok][at].tolist()]
            out[ok] = table[codes]
        else:
            isf = np.fromiter(map(isinstance, arr.tolist(), repeat(float)), dtype=bool, count=len(arr))
            reprs = _str_floats(arr[ok & isf].astype(np.float64), ok & isf, out)
            _str_distinct(arr, ok & ~isf, out)
    else:
        out[ok] = [str(v) for v in arr[ok]]
    if numbers and nums is None:
        nums = _floats(arr)
    return _Numbers(out, nums, ok, reprs)


#: the characters of a JSON number
_NUMBER_CHARS = b"0123456789.-+eE"


def _parsed(vals: list[Any], strs: list[str]) -> np.ndarray | None:
    """``pd.to_numeric`` of ``vals`` (ints and strings only; ``strs`` their ``str``), parsed value by value
    with ``float()``, which is much faster on strings: only when that gives what pd.to_numeric gives
    (ints and strings of number characters only, no error, nothing infinite, no -0, nothing beyond
    2**53, where the two may differ), else None (the caller parses with pd.to_numeric)."""
    if "".join(strs).encode("ascii", "replace").translate(None, _NUMBER_CHARS):
        return None
    try:
        got = np.fromiter(map(float, vals), np.float64, count=len(vals))
    except (ValueError, OverflowError):
        return None
    if not (np.abs(got) < 2.0**53).all() or (np.signbit(got) & (got == 0)).any():
        return None
    return got


def _str_distinct(arr: np.ndarray, sel: np.ndarray, out: np.ndarray) -> None:
    """out[sel] = str() of arr[sel], once per distinct value (values that hash alike are alike)."""
    if not sel.any():
        return
    codes, uniq = pd.factorize(arr[sel])
    table = np.empty(len(uniq), dtype=object)
    table[:] = [str(v) for v in uniq.tolist()]
    out[sel] = table[codes]


def _str_floats(vals: np.ndarray, sel: np.ndarray, out: np.ndarray) -> Reprs | None:
    """out[sel] = str() of the floats ``vals`` (the values at ``sel``), once per distinct bit pattern;
    returns (distinct bits, their str, per row of ``out`` the code of its bits, -1 off ``sel``)."""
    if not len(vals):
        return None
    codes, uniq = pd.factorize(vals.view(np.int64))
    strs = float_reprs(uniq.view(np.float64))
    table = np.empty(len(uniq), dtype=object)
    table[:] = strs
    out[sel] = table[codes]
    rows = np.full(len(out), -1, dtype=np.intp)
    rows[sel] = codes
    return uniq, strs, rows


def _float_reprs_by_orjson(vals: np.ndarray) -> list[str]:
    return orjson.dumps(vals.tolist())[1:-1].decode().split(",") if len(vals) else []


#: probes of :func:`float_reprs`: orjson writes a float in fixed-point as Python's repr does (the
#: same shortest round-trip digits, "-0.0", "100.0"); checked once, else every text is a repr
_REPR_PROBES = np.array([0.0, -0.0, 1e-4, 0.1 + 0.2, 100.0, -3.0, 2 / 3, 4.35, 123.456, 1e15, 9999999999999998.0,
                         9007199254740994.0, 1234567890123456.8, 0.00010000000000000002, 99999999999999.98])
_REPRS_BY_ORJSON = _float_reprs_by_orjson(_REPR_PROBES) == list(map(repr, _REPR_PROBES.tolist()))
_PLAIN_NUMBERS = re.compile(r"[0-9.,-]*")


def float_reprs(vals: np.ndarray) -> list[str]:
    """``repr`` of each float64 (``str`` of a float): written by orjson, all at once, where Python
    writes fixed-point (zero, and 1e-4 <= |v| < 1e16: the same shortest round-trip digits, checked on
    probes at import); ``repr`` itself for the others (exponents, inf, nan) and for any text orjson
    writes otherwise than in plain digits."""
    floats = vals.tolist()
    if not _REPRS_BY_ORJSON or not floats:
        return list(map(repr, floats))
    body = orjson.dumps(floats)[1:-1].decode()
    texts = body.split(",")
    if _PLAIN_NUMBERS.fullmatch(body) is None:   # an exponent or a null somewhere: those by repr
        for j in [j for j, t in enumerate(texts) if _PLAIN_NUMBERS.fullmatch(t) is None]:
            texts[j] = repr(floats[j])
    mag = np.abs(vals)
    for j in np.flatnonzero(~(((mag >= 1e-4) & (mag < 1e16)) | (mag == 0))).tolist():
        texts[j] = repr(floats[j])   # Python writes an exponent (or inf, nan)
    return texts


def _texts_of_reprs(strs: list[str], vals: list[float]) -> tuple[list[str], list[int]]:
    """``f"{v:.10g}"`` of each float ``vals[j]`` read from ``strs[j]`` = ``repr(vals[j])`` when that is
    short: a repr of at most 11 characters and no exponent has at most 10 significant digits and an
    exponent in [-4, 10), where .10g writes the same digits, fixed-point, without a trailing ".0" (the
    shortest repr is within half an ulp of the value, far inside the rounding to 10 digits). Inline:
    a call per value costs more than the rule. "e" stands for "no repr made": formatted. Returns the
    texts and the positions of those formatted: only there may the text's number differ from the value
    (rounded to 10 significant digits); a text made from the repr reads back as the value itself."""
    if strs and max(map(len, strs)) <= 11:
        body = "\x00".join(strs)
        if "e" not in body:   # all short, no exponent: the trailing ".0"s cut in one pass
            return (body + "\x00").replace(".0\x00", "\x00").split("\x00")[:-1], []
    texts = [(r[:-2] if r[-2:] == ".0" else r) if len(r) <= 11 and "e" not in r else "" for r in strs]
    formatted = [j for j, t in enumerate(texts) if not t]
    for j in formatted:
        texts[j] = f"{vals[j]:.10g}"
    return texts, formatted


def _numbers_of_texts(vals: list[float], texts: list[str], formatted: list[int] | None) -> np.ndarray:
    """The number each text says (the float of ``texts[j]``): ``vals[j]`` itself except at the positions
    ``formatted`` (None: all), where the text rounded the value to 10 significant digits."""
    if formatted is None:
        return np.array([float(t) for t in texts], dtype=np.float64)
    out = np.array(vals, dtype=np.float64)
    for j in formatted:
        out[j] = float(texts[j])
    return out


@overload
def fmt_values(arr: np.ndarray, reprs: Reprs | tuple[np.ndarray, list[str]] | None = ...,
               numbers: Literal[False] = ...) -> np.ndarray: ...


@overload
def fmt_values(arr: np.ndarray, reprs: Reprs | tuple[np.ndarray, list[str]] | None = ...,
               *, numbers: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...


def fmt_values(arr: np.ndarray, reprs: Reprs | tuple[np.ndarray, list[str]] | None = None,
               numbers: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Float array -> ``f"{v:.10g}"`` texts (None where NaN), once per distinct bit pattern (0.0 and
    -0.0 stay apart: "0" and "-0"). ``reprs``: (distinct bits, their ``str``[, per row of ``arr`` a
    code into them or -1]) already made for these values (a result in its own standard unit is the
    value itself): read instead of formatting; the rows whose value is still the coded one (same
    bits) take their text by that code, no factorisation. ``numbers``: also return the number each
    text says (NaN where None): --STRESN is --STRESC in numeric form (SDTMIG 3.4, LB and VS
    specifications, --STRESN notes: "copied in numeric format from --STRESC"), so a converted result
    keeps no float noise (12.97 g/dL x 10 is 129.7 g/L, not 129.70000000000002)."""
    out = np.full(len(arr), None, dtype=object)
    nums = np.full(len(arr), np.nan) if numbers else None
    ok = ~np.isnan(arr)
    if not ok.any():
        return (out, nums) if nums is not None else out
    if reprs is not None and len(reprs) == 3 and len(reprs[2]) == len(arr):
        coded = reprs[2]
        same = ok & (coded >= 0)
        at = np.flatnonzero(same)
        if len(at):
            bits = np.ascontiguousarray(arr).view(np.int64)
            hit = reprs[0][coded[at]] == bits[at]
            at = at[hit]
            if len(at):
                known_vals = reprs[0].view(np.float64).tolist()
                known_texts, known_formatted = _texts_of_reprs(reprs[1], known_vals)
                table = np.empty(len(reprs[1]), dtype=object)
                table[:] = known_texts
                out[at] = table[coded[at]]
                if nums is not None:
                    nums[at] = _numbers_of_texts(known_vals, known_texts, known_formatted)[coded[at]]
                ok[at] = False
                if not ok.any():
                    return (out, nums) if nums is not None else out
    codes, uniq = pd.factorize(np.ascontiguousarray(arr[ok]).view(np.int64))
    vals = uniq.view(np.float64).tolist()
    table = np.empty(len(uniq), dtype=object)
    formatted: list[int] | None
    if reprs is not None:
        known = reprs[1] + ["e"]
        at_known = pd.Index(reprs[0]).get_indexer(uniq).tolist()   # -1 -> "e"
        texts, formatted = _texts_of_reprs(list(map(known.__getitem__, at_known)), vals)
    else:
        texts, formatted = [f"{v:.10g}" for v in vals], None
    table[:] = texts
    out[ok] = table[codes]
    if nums is not None:
        nums[ok] = _numbers_of_texts(vals, texts, formatted)[codes]
        return out, nums
    return out


def rounded_values(arr: np.ndarray) -> np.ndarray:
    """``arr`` with each value rounded as a standard result is (10 significant digits, the number
    :func:`fmt_values` writes): --STNRLO/--STNRHI in the precision of --STRESN, with no float noise
    of a unit conversion."""
    return fmt_values(arr, numbers=True)[1]


def _note_lobxfl(ctx: Ctx, d: str) -> None:
    """--LOBXFL is a declared gap (both map paths): reported once per domain."""
    ctx.once(f"lobxfl:{d}", Kind.LOSSY, f"{d}LOBXFL (Expected, SDTMIG 3.4: the last non-missing result before "
             "RFXSTDTC per subject and test) is not derived: results are streamed chunk by chunk and the flag "
             "needs all of a subject's results; left empty for the sponsor's derivation",
             rule=f"{d.lower()}.LOBXFL", target=f"{d}LOBXFL")


def limits_in_result_unit(texts: np.ndarray, nums: np.ndarray, own: np.ndarray, vu: np.ndarray, target: str,
                          report: Callable[..., None]) -> np.ndarray:
    """--ORNRLO/--ORNRHI hold the reference range in the result's original unit (SDTMIG 3.4 LB: the
    lower/upper limit "in Orig Unit", the unit of --ORRESU): a limit given in another unit (``own``,
    None: none given, the result's assumed) is converted into the result's unit (UCUM, ucumvert), its
    text the 10-significant-digit form of --STRESC, and reported lossy (the limit is no longer the
    text given); one that does not convert is left empty and reported. ``texts``/``nums``: the limit
    as given, text and number; ``vu``: the result's unit per row; ``report(reason, kind, message,
    mask, **kw)`` reports rows with their record. Returns the texts to write."""
    off = ~_missing(texts) & ~_missing(own) & ~_missing(vu)
    if off.any():
        off &= np.asarray(own != vu, dtype=bool)
    if not off.any():
        return texts
    rows = np.flatnonzero(off)
    a, b, ok = units.linear_rows(pd.Series(own[rows], dtype=object), pd.Series(vu[rows], dtype=object))
    conv = nums[rows] * a + b
    ok &= ~np.isnan(conv)
    out = np.array(texts, dtype=object)
    out[rows] = fmt_values(np.where(ok, conv, np.nan))
    d = target[:2]
    done = np.zeros(len(texts), dtype=bool)
    done[rows[ok]] = True
    if done.any():
        report("range-unit", Kind.LOSSY, f"reference range limit given in another unit than the result's: "
               f"{target} holds it converted into the result's unit ({d}ORRESU, SDTMIG 3.4), not the text given",
               done, rule="lb.ranges", source="referenceRange.low|high", target=target)
    failed = off & ~done
    if failed.any():
        report("range-unit", Kind.UNMAPPED_CODE, f"reference range limit in a unit that does not convert into "
               f"the result's unit: {target} left empty", failed, rule="lb.ranges",
               source="referenceRange.low|high", target=target)
    return out


def map_findings(cols: pd.DataFrame, ctx: Ctx, d: str, testcd: pd.Series, unit_codelist: str,
                 unit_override: pd.Series | None = None) -> pd.DataFrame:
    """The shared part of VS and LB: results, units, standardisation, ranges, NRIND, status, dates.
    ``testcd`` is already mapped (rows without one are dropped by the caller)."""
    out = pd.DataFrame(index=cols.index)
    # object dtype end to end: a scalar would make a str-dtype column (slower in every later step)
    out["STUDYID"] = np.full(len(cols), ctx.studyid, dtype=object)
    out["DOMAIN"] = np.full(len(cols), d, dtype=object)
    out["USUBJID"] = cols["USUBJID"]
    # rule --.LOBXFL (gap): an Expected variable left empty is said so, once per domain
    _note_lobxfl(ctx, d)
    # --ORRES: numeric as given (comparator kept in front), else coded/text value
    v = cols["_v"].astype("object")
    num = pd.to_numeric(v, errors="coerce")     # (a float as its JSON text where given: numbers.py)
    vstr = _text(v)
    cmp_ = cols["_vcmp"].astype("object")
    has_cmp = cmp_.notna()
    orres = vstr.where(~has_cmp, cmp_.fillna("") + vstr.fillna("")) if has_cmp.any() else vstr
    vtext = cols["_vtext"].astype("object")
    if vtext.notna().any():
        orres = orres.fillna(vtext.map(lambda t: None if t is None or t != t else str(t)))
    out[f"{d}ORRES"] = orres
    # --ORRESU: UCUM -> CDISC term valid in the codelist (test-specific override first)
    vu = cols["_vu"].astype("object")
    if unit_override is not None:
        # the codelist lookup only where no test-specific unit applies (it may need the UCUM grammar)
        orresu = unit_override.where(unit_override.notna(),
                                     units.map_units(vu.where(unit_override.isna()), unit_codelist))
    else:
        orresu = units.map_units(vu, unit_codelist)
    bad_u = vu.notna() & orresu.isna()
    if bad_u.any():
        ctx.row_issues(d, "unit", Kind.UNMAPPED_CODE, f"unit not in the CDISC {unit_codelist} "
                       "codelist (UCUM table)", cols, bad_u, rule=f"{d.lower()}.ORRESU",
                       source="valueQuantity.code", target=f"{d}ORRESU", value_col="_vu")
    out[f"{d}ORRESU"] = orresu
    _report_ucum_spelling(d, vu, orresu, testcd, ctx)
    # --STRESN/--STRESC/--STRESU: convert to the test's standard unit where one is set
    std = standard_units(d)
    tests = Distinct(testcd)
    std_ucum = tests.map(lambda t: std[t][0] if t in std else None)
    std_cdisc = tests.map(lambda t: std[t][1] if t in std else None)
    numeric = num.notna() & ~has_cmp
    # a result with a comparator is standardised as a number is: its number converted, the comparator
    # kept in front ("<5.1" g/dL -> --STRESC "<51", --STRESU g/L), no --STRESN (SDTMIG 3.4 LB)
    convertible = num.notna()
    to_ucum = std_ucum.where(std_ucum.notna(), vu)
    conv, ok = units.convert(num.where(convertible), vu.where(convertible), to_ucum.where(convertible))
    failed = convertible & vu.notna() & ~ok
    if failed.any():
        ctx.row_issues(d, "convert", Kind.UNMAPPED_CODE, "result unit cannot be converted to the "
                       "standard unit (UCUM)", cols, failed, rule=f"{d.lower()}.STRESN",
                       target=f"{d}STRESN", value_col="_vu")
    unitless = convertible & vu.isna()
    conv = conv.where(~unitless, num)
    stresu = std_cdisc.where(std_ucum.notna(), orresu)
    keep = (ok & stresu.notna()) | unitless
    stresc_texts, stresn = fmt_values(conv.where(keep & numeric).to_numpy(dtype="float64", na_value=np.nan),
                                      numbers=True)
    cmp_keep = (keep & has_cmp).to_numpy(dtype=bool)
    if cmp_keep.any():
        rows = np.flatnonzero(cmp_keep)
        texts = fmt_values(conv.to_numpy(dtype="float64", na_value=np.nan)[rows])
        stresc_texts[rows] = [c + t for c, t in zip(cmp_.to_numpy(dtype=object)[rows].tolist(), texts.tolist(),
                                                    strict=True)]
    out[f"{d}STRESN"] = pd.Series(stresn, index=cols.index)   # (the number --STRESC says)
    stresc = pd.Series(stresc_texts, index=cols.index)
    out[f"{d}STRESC"] = stresc.where(stresc.notna(), orres.where(~numeric | has_cmp))
    out[f"{d}STRESU"] = stresu.where(keep & ~unitless)
    # reference ranges (LB): original as given, standard converted like the result
    if d == "LB":
        rlo, rhi = cols["_rlo"].astype("object"), cols["_rhi"].astype("object")
        ru = cols["_ru"].astype("object").fillna(vu)
        hu = cols["_rhu"].astype("object").fillna(ru)   # the high limit's own unit (rare)
        lo, lok = units.apply_linear(rlo, *units.linear_rows(ru, to_ucum))
        hi, hok = units.apply_linear(rhi, *units.linear_rows(hu, to_ucum))

        def report(reason: str, kind: Kind, message: str, mask: np.ndarray, **kw: Any) -> None:
            ctx.row_issues(d, reason, kind, message, cols, pd.Series(mask, index=cols.index), **kw)
        for name, lim, own in (("LBORNRLO", rlo, ru), ("LBORNRHI", rhi, hu)):
            out[name] = pd.Series(limits_in_result_unit(
                _text(lim).to_numpy(dtype=object), pd.to_numeric(lim, errors="coerce").to_numpy(dtype="float64"),
                own.to_numpy(dtype=object), vu.to_numpy(dtype=object), name, report), index=cols.index, dtype=object)
        # the standard limits rounded as a standard result is (fmt_values): no float noise
        out["LBSTNRLO"] = pd.Series(rounded_values(lo.where(lok & keep).to_numpy(dtype="float64", na_value=np.nan)),
                                    index=cols.index)
        out["LBSTNRHI"] = pd.Series(rounded_values(hi.where(hok & keep).to_numpy(dtype="float64", na_value=np.nan)),
                                    index=cols.index)
        out["LBSTNRC"] = cols["_rtext"].astype("object").where(rlo.isna() & rhi.isna())
        interp = cols["_interp"].astype("object")
        nrind = code_table("nrind")
        nr = map_distinct(interp, lambda c: None if c is None else nrind.get(c))
        bad_i = interp.notna() & nr.isna()
        if bad_i.any():
            ctx.row_issues(d, "nrind", Kind.UNMAPPED_CODE, "interpretation code not in table nrind",
                           cols, bad_i, rule="lb.NRIND", target="LBNRIND", value_col="_interp")
        if interp.isin(["HH", "LL", "AA"]).any():
            ctx.once("nrind-crit", Kind.LOSSY, "critical interpretations (HH/LL/AA) become HIGH/LOW/"
                     "ABNORMAL: NRIND has no critical terms", rule="lb.NRIND", target="LBNRIND")
        out["LBNRIND"] = nr
    elif cols["_interp"].notna().any():
        ctx.once("vs-interp", Kind.LOSSY, "Observation.interpretation on vital signs is not carried "
                 "(VSCLSIG needs an investigator's judgement, Joint IG)", rule="vs.interpretation")
    # --STAT / --REASND: cancelled or data absent -> NOT DONE
    nd = (cols["_status"] == "cancelled") | cols["_dar"].notna()
    nd &= out[f"{d}ORRES"].isna()
    out[f"{d}STAT"] = np.where(nd, "NOT DONE", NO_VALUE)
    out[f"{d}REASND"] = cols["_dar"].where(nd)
    # SDTM keeps that the test was not done and the reason text: not the FHIR status of a result that
    # was done but is absent (final + dataAbsentReason 'error'), nor the dataAbsentReason code
    if nd.any():
        ctx.row_issues(d, "dar", Kind.LOSSY, f"data-absent result: {d}STAT NOT DONE and {d}REASND = the reason "
                       "text; the dataAbsentReason code is not kept", cols, nd & cols["_dar"].notna(),
                       rule=f"{d.lower()}.REASND", source="Observation.dataAbsentReason", target=f"{d}REASND")
        ctx.row_issues(d, "nd-status", Kind.LOSSY, f"Observation.status other than cancelled with no result: "
                       f"{d}STAT NOT DONE; the status is not kept (SDTM -> FHIR writes cancelled)", cols,
                       nd & (cols["_status"] != "cancelled"), rule=f"{d.lower()}.STAT",
                       source="Observation.status", target=f"{d}STAT")
    # --DTC (LB: specimen collection first, per the Joint IG)
    eff = cols["_spec_dtc"].fillna(cols["_eff"]) if d == "LB" else cols["_eff"]
    # the SDTM text kept in the project's sdtm-dtc extension is the --DTC itself (LB: when no specimen
    # collection time says otherwise)
    kept = cols["_dtc_sdtm"].astype("object")
    if d == "LB":
        kept = kept.where(cols["_spec_dtc"].isna())
    dtc, bad = derive_dtc(eff.where(kept.isna()), ctx.dropped_zone(f"{d}DTC"))
    if bad.any():
        ctx.row_issues(d, "dtc", Kind.INVALID_VALUE, "effective[x] is not a FHIR dateTime", cols, bad,
                       rule=f"{d.lower()}.DTC", target=f"{d}DTC")
    out[f"{d}DTC"] = kept.where(kept.notna(), dtc)
    for c in ("VISITNUM", "VISIT", "_rfstdtc", "_rfendtc", "_rficdtc", "_src_type", "_src_id", "_src_ver",
              "_src_file", "_src_line"):
        if c in cols:
            out[c] = cols[c]
    out[f"{d}GRPID"] = cols["_grp"]
    return out


# ------------------------------------------------------------------------ columnar map (fast path)
# The same mapping as resolve_test_codes/map_findings (the plain path, on a frame), on the columns of
# a chunk as numpy arrays: every column factorised once and every lookup, text, unit and date made
# once per distinct value (or distinct pair), gathered back with numpy; rare inputs (comparators,
# coded/text results, carried SDTM dates, specimen times) take the plain pandas steps on those
# columns. tests/test_findings_map_fast.py checks that both paths give the same frames and issues.

def _missing(arr: np.ndarray) -> np.ndarray:
    return np.asarray(pd.isna(arr), dtype=bool)


def _obj(arr: np.ndarray) -> pd.Series:
    """An object column of the output frame (no dtype inference, as the plain path's Series)."""
    return pd.Series(arr, dtype="object", copy=False)


def _where(cond: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """``Series.where(cond)`` of an object column: NaN where ``cond`` is false."""
    out = np.full(len(arr), np.nan, dtype=object)
    out[cond] = arr[cond]
    return out


class _Factor:
    """A column factorised once (missing -> code -1): per-distinct lookups gathered to the rows."""

    values: list[Any]

    def __init__(self, arr: np.ndarray) -> None:
        if len(arr) and arr[0] is None and arr.tolist().count(None) == len(arr):   # (the rare columns)
            self.codes, self.values = np.full(len(arr), -1, dtype=np.intp), []
            return
        self.codes, uniq = pd.factorize(arr)
        self.values = uniq.tolist()

    def table(self, fn: Callable[[Any], Any]) -> np.ndarray:
        """fn of each distinct value, then fn(None) for missing (index -1)."""
        table = np.empty(len(self.values) + 1, dtype=object)
        for j, u in enumerate(self.values):
            table[j] = fn(u)
        table[-1] = fn(None)
        return table

    def map(self, fn: Callable[[Any], Any]) -> np.ndarray:
        return self.table(fn)[self.codes]

    @staticmethod
    def gathered(codes: np.ndarray, table: np.ndarray) -> _Factor:
        """The factor of ``table[codes]`` (a value per distinct key; ``codes`` >= 0), without
        factorising the rows: the table is factorised instead."""
        tcodes, uniq = pd.factorize(table)
        out = _Factor.__new__(_Factor)
        out.codes, out.values = tcodes[codes], uniq.tolist()
        return out

    def subset(self, keep: np.ndarray) -> _Factor:
        out = _Factor.__new__(_Factor)
        out.codes, out.values = self.codes[keep], self.values
        return out


def row_issues_columns(ctx: Ctx, domain: str, reason: str, kind: Kind, message: str, cols: dict[str, Any],
                       mask: np.ndarray, **kw: Any) -> None:
    """:meth:`Ctx.row_issues` for a chunk given as numpy columns."""
    rows = np.flatnonzero(mask)
    names = ["_src_type", "_src_id", "_src_file"] + ([kw["value_col"]] if kw.get("value_col") else [])
    frame = pd.DataFrame({c: pd.Series(cols[c][rows], dtype="object") for c in dict.fromkeys(names)})
    ctx.row_issues(domain, reason, kind, message, frame, np.ones(len(rows), dtype=bool), **kw)


class ResolvedColumns(NamedTuple):
    """:class:`ResolvedTests` of the columnar path."""

    cols: dict[str, Any]
    codes: _Factor            # the LOINC column, factorised
    testcd: np.ndarray
    test: np.ndarray
    tests: _Factor            # --TESTCD, factorised
    by_table: np.ndarray      # per row: --TESTCD from the LOINC row of the table (not an NCIt coding)


def resolve_test_codes_columns(cols: dict[str, Any], ctx: Ctx, domain: str, table: dict[str, dict[str, str]],
                               table_name: str) -> ResolvedColumns | None:
    """:func:`resolve_test_codes` on numpy columns."""
    codes, ncits = _Factor(cols["_loinc"]), _Factor(cols["_ncit"])
    testcd_term, test_term = ct_term(f"{domain}TESTCD"), ct_term(f"{domain}TEST")
    hit = codes.table(lambda c: c if isinstance(c, str) and c in table else None)
    by_ncit = ncits.table(testcd_term)
    bad = _missing(hit)[codes.codes] & _missing(by_ncit)[ncits.codes]
    if bad.any():
        row_issues_columns(ctx, domain, "testcd", Kind.UNMAPPED_CODE, f"Observation.code has neither a LOINC in "
                           f"{table_name} nor an NCIt coding of a term of codelist {domain}TESTCD: row not converted",
                           cols, bad, rule=f"{domain.lower()}.{domain}TESTCD", source="Observation.code",
                           target=f"{domain}TESTCD", value_col="_loinc")
        keep = ~bad
        if not keep.any():
            return None
        cols = {name: v[keep] for name, v in cols.items()}
        codes, ncits = codes.subset(keep), ncits.subset(keep)
    # --TESTCD/--TEST per distinct (LOINC, NCIt) pair: the NCIt coding's term wins
    tc_table = codes.table(lambda c: table[c]["target_code"] if c in table else None)
    test_table = codes.table(lambda c: table[c][f"{domain}TEST"] if c in table else None)
    test_ncit = ncits.table(lambda c: test_term(c) if testcd_term(c) is not None else None)
    pair_codes, pairs = pd.factorize((codes.codes.astype(np.int64) + 1) * (len(ncits.values) + 1) + ncits.codes + 1)
    li = pairs // (len(ncits.values) + 1) - 1
    ni = pairs % (len(ncits.values) + 1) - 1
    by_n, t_n = by_ncit[ni], test_ncit[ni]
    testcd_p = np.where(_missing(by_n), tc_table[li], by_n)
    test_p = np.where(_missing(t_n), test_table[li], t_n)
    testcd, test = testcd_p[pair_codes], test_p[pair_codes]
    return ResolvedColumns(cols, codes, testcd, test, _Factor.gathered(pair_codes, testcd_p),
                           _missing(by_n)[pair_codes])


def _report_ucum_spelling_columns(d: str, key: np.ndarray, both: np.ndarray, vu: np.ndarray, orresu: np.ndarray,
                                  testcd: np.ndarray, ctx: Ctx) -> None:
    """:func:`_report_ucum_spelling` with the rows keyed by a code that fixes (unit, term[, VSTESTCD]);
    ``both``: the rows with a unit and a term."""
    rows = np.flatnonzero(both)
    if not len(rows):
        return
    # the first row of each key, in row order: a key's codes are numbered in order of first
    # occurrence, so its first row is where the running maximum of the codes grows
    codes = pd.factorize(key[rows])[0]
    top = np.maximum.accumulate(codes)
    first = rows[np.flatnonzero(np.concatenate(([True], top[1:] > top[:-1])))]
    _note_ucum_spellings(d, ((vu[r], orresu[r], testcd[r] if d == "VS" and not pd.isna(testcd[r]) else None)
                             for r in first.tolist()), ctx)


def _linear_of_pairs(pairs: np.ndarray, sel: np.ndarray, unit_of: Callable[[int], tuple[Any, Any]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (a, b, ok) of :func:`units.linear` for the unit pair its key in ``pairs`` names
    (``unit_of(key) -> (from, to)``), for the rows in ``sel``: one lookup per distinct pair."""
    n = len(pairs)
    a_rows, b_rows, ok = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    rows = np.flatnonzero(sel)
    if not len(rows):
        return a_rows, b_rows, ok
    codes, keys = pd.factorize(pairs[rows])
    a, b, good = np.full(len(keys), np.nan), np.full(len(keys), np.nan), np.zeros(len(keys), dtype=bool)
    for j, k in enumerate(keys.tolist()):
        f, t = unit_of(k)
        if f is None or t is None:
            continue
        lin = units.linear(f, t)
        if lin is not None:
            a[j], b[j], good[j] = lin[0], lin[1], True
    conv = good[codes]
    rows, codes = rows[conv], codes[conv]
    a_rows[rows], b_rows[rows], ok[rows] = a[codes], b[codes], True
    return a_rows, b_rows, ok


def _floats(arr: np.ndarray) -> np.ndarray:
    """``pd.to_numeric(x, errors="coerce")`` as float64 (NaN for missing and non-numbers)."""
    if not len(arr) or _all_missing(arr):
        return np.full(len(arr), np.nan)
    return pd.Series(pd.to_numeric(arr, errors="coerce")).to_numpy(dtype="float64", na_value=np.nan)


def _all_missing(arr: np.ndarray) -> bool:
    """No value in the column (the usual state of the rare columns: a None count decides it)."""
    if not len(arr):
        return True
    if arr[0] is None and arr.tolist().count(None) == len(arr):
        return True
    return bool(_missing(arr).all())


def _present(arr: np.ndarray) -> np.ndarray:
    """``notna`` of a column, cheap when it is all None."""
    return np.zeros(len(arr), dtype=bool) if _all_missing(arr) else ~_missing(arr)


def map_findings_columns(cols: dict[str, Any], ctx: Ctx, d: str, testcd: np.ndarray, tests: _Factor,
                         unit_codelist: str, unit_override: dict[tuple[str, str], str] | None = None
                         ) -> dict[str, Any]:
    """:func:`map_findings` on numpy columns; returns the output columns in order (object columns as
    object Series, the others as arrays, as the plain path's frame holds them). ``unit_override``:
    (--TESTCD, UCUM unit) -> --ORRESU term, applied before the codelist lookup. Missing values are
    known from the factorisations and per-distinct tables (no per-row ``isna`` of text columns)."""
    n = len(testcd)
    out: dict[str, Any] = {}
    out["STUDYID"] = full_object(n, ctx.studyid)
    out["DOMAIN"] = full_object(n, d)
    out["USUBJID"] = _obj(cols["USUBJID"])
    # rule --.LOBXFL (gap): an Expected variable left empty is said so, once per domain
    _note_lobxfl(ctx, d)
    # --ORRES: numeric as given (comparator kept in front), else coded/text value
    v = cols["_v"]
    orres, numf, v_present, reprs = _texts_and_numbers(v)
    assert numf is not None
    cmp_ = cols["_vcmp"]
    has_cmp = _present(cmp_)
    if has_cmp.any():
        rows = np.flatnonzero(has_cmp)
        orres[rows] = [c + ("" if pd.isna(s) else s) for c, s in zip(cmp_[rows].tolist(), orres[rows].tolist(),
                                                                      strict=True)]
    orres_missing = ~v_present & ~has_cmp
    vtext = cols["_vtext"]
    if not _all_missing(vtext):
        texts = pd.Series(vtext, dtype="object").map(lambda t: None if t is None or t != t else str(t))
        orres = pd.Series(orres, dtype="object").fillna(texts).to_numpy()
        orres_missing = _missing(orres)
    out[f"{d}ORRES"] = _obj(orres)
    # --ORRESU: UCUM -> CDISC term valid in the codelist (test-specific override first)
    vu = cols["_vu"]
    units_ = _Factor(vu)
    width = len(units_.values) + 1
    # (--TESTCD, unit) pairs: the override, the standard unit and the conversion depend on both
    pair = (tests.codes.astype(np.int64) + 1) * width + (units_.codes + 1)
    if unit_override is not None:
        def override_of(k: int) -> Any:
            t = tests.values[k // width - 1] if k // width else None
            u = units_.values[k % width - 1] if k % width else None
            return unit_override.get((t, u)) if t is not None and u is not None else None
        pcodes, pkeys = pd.factorize(pair)
        ov = np.empty(len(pkeys), dtype=object)
        ov[:] = [override_of(k) for k in pkeys.tolist()]
        orresu = ov[pcodes]
        need = _missing(ov)[pcodes]
    else:
        orresu = np.full(n, None, dtype=object)
        need = np.ones(n, dtype=bool)
    used = np.unique(units_.codes[need])
    terms = np.full(width, None, dtype=object)
    for j in used[used >= 0].tolist():
        terms[j] = units.cdisc_unit(units_.values[j], unit_codelist)
    orresu[need] = terms[units_.codes[need]]
    orresu_missing = np.where(need, _missing(terms)[units_.codes], False)
    has_vu = units_.codes >= 0
    bad_u = has_vu & orresu_missing
    if bad_u.any():
        row_issues_columns(ctx, d, "unit", Kind.UNMAPPED_CODE, f"unit not in the CDISC {unit_codelist} "
                           "codelist (UCUM table)", cols, bad_u, rule=f"{d.lower()}.ORRESU",
                           source="valueQuantity.code", target=f"{d}ORRESU", value_col="_vu")
    out[f"{d}ORRESU"] = _obj(orresu)
    _report_ucum_spelling_columns(d, pair if unit_override is not None else units_.codes,
                                  has_vu & ~orresu_missing, vu, orresu, testcd, ctx)
    # --STRESN/--STRESC/--STRESU: convert to the test's standard unit where one is set
    std = standard_units(d)
    std_ucum_t = tests.table(lambda t: std[t][0] if t in std else None)
    std_cdisc_t = tests.table(lambda t: std[t][1] if t in std else None)
    has_std = ~_missing(std_ucum_t)[tests.codes]
    numeric = ~np.isnan(numf) & ~has_cmp
    convertible = ~np.isnan(numf)   # (a comparator's number too: map_findings)

    def result_units(k: int) -> tuple[Any, Any]:
        u = units_.values[k % width - 1] if k % width else None
        t = k // width - 1
        to = std_ucum_t[t] if t >= 0 and std_ucum_t[t] is not None else u
        return u, to
    a, b, ok = _linear_of_pairs(pair, convertible, result_units)
    conv = np.full(n, np.nan)
    conv[ok] = numf[ok] * a[ok] + b[ok]
    failed = convertible & has_vu & ~ok
    if failed.any():
        row_issues_columns(ctx, d, "convert", Kind.UNMAPPED_CODE, "result unit cannot be converted to the "
                           "standard unit (UCUM)", cols, failed, rule=f"{d.lower()}.STRESN",
                           target=f"{d}STRESN", value_col="_vu")
    unitless = convertible & ~has_vu
    conv[unitless] = numf[unitless]
    stresu = np.where(has_std, std_cdisc_t[tests.codes], orresu)
    stresu_missing = np.where(has_std, _missing(std_cdisc_t)[tests.codes], orresu_missing)
    keep = (ok & ~stresu_missing) | unitless
    stresc_texts, stresn = fmt_values(np.where(keep & numeric, conv, np.nan), reprs, numbers=True)
    cmp_keep = keep & has_cmp
    if cmp_keep.any():
        rows = np.flatnonzero(cmp_keep)
        stresc_texts[rows] = [c + t for c, t in zip(cmp_[rows].tolist(), fmt_values(conv[rows]).tolist(), strict=True)]
    out[f"{d}STRESN"] = stresn   # (the number --STRESC says: no float noise of a conversion)
    stresc = pd.Series(stresc_texts)
    if not keep.all():
        stresc = stresc.where(stresc.notna(), _obj(_where(~numeric | has_cmp, orres)))
    out[f"{d}STRESC"] = stresc
    out[f"{d}STRESU"] = _obj(_where(keep & ~unitless, stresu))
    # reference ranges (LB): original as given, standard converted like the result
    if d == "LB":
        rlo, rhi = cols["_rlo"], cols["_rhi"]
        lo_text, lo_num, lo_present, _ = _texts_and_numbers(rlo)
        hi_text, hi_num, hi_present, _ = _texts_and_numbers(rhi)
        ru = cols["_ru"]
        # the range unit is the result's unit in the usual Observation: its factorisation serves
        filled = vu   # the range unit, the result's where none is given
        if bool(np.asarray(ru == vu, dtype=bool).all()):
            lo_units = units_
        else:
            ru_missing = _missing(ru)
            filled = np.where(ru_missing, vu, ru) if ru_missing.any() else ru
            lo_units = units_ if bool(np.asarray(filled == vu, dtype=bool).all()) else _Factor(filled)
        # the high limit's own unit where it is not the low's (_rhu: rare)
        rhu = cols["_rhu"]
        hi_units = lo_units if _all_missing(rhu) else _Factor(np.where(_missing(rhu), filled, rhu))
        limits: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def standard_limits(ranges: _Factor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(a, b, ok) per row from the limit unit to the standard unit of the result's (test, unit)."""
            if id(ranges) not in limits:
                rwidth = len(ranges.values) + 1
                rpair = pair * rwidth + (ranges.codes + 1)

                def range_units(k: int) -> tuple[Any, Any]:
                    r = ranges.values[k % rwidth - 1] if k % rwidth else None
                    return r, result_units(k // rwidth)[1]
                limits[id(ranges)] = _linear_of_pairs(rpair, np.ones(n, dtype=bool), range_units)
            return limits[id(ranges)]

        standard = []
        for orig, std_name, text, vals, lim_units in (("LBORNRLO", "LBSTNRLO", lo_text, lo_num, lo_units),
                                                      ("LBORNRHI", "LBSTNRHI", hi_text, hi_num, hi_units)):
            assert vals is not None
            if lim_units is not units_:
                own = np.empty(len(lim_units.values) + 1, dtype=object)
                own[:-1] = lim_units.values
                own[-1] = None
                text = limits_in_result_unit(text, vals, own[lim_units.codes], vu, orig, (
                    lambda reason, kind, message, mask, **kw: row_issues_columns(
                        ctx, d, reason, kind, message, cols, mask, **kw)))
            out[orig] = _obj(text)
            ra, rb, rok = standard_limits(lim_units)
            conv_lim = np.full(n, np.nan)
            conv_lim[rok] = vals[rok] * ra[rok] + rb[rok]
            # the standard limits rounded as a standard result is (fmt_values): no float noise
            standard.append((std_name, rounded_values(np.where(rok & keep, conv_lim, np.nan))))
        for std_name, limit in standard:
            out[std_name] = limit
        out["LBSTNRC"] = _obj(_where(~lo_present & ~hi_present, cols["_rtext"]))
        interp = _Factor(cols["_interp"])
        nrind = code_table("nrind")
        nr_t = interp.table(lambda c: None if c is None else nrind.get(c))
        bad_i = (interp.codes >= 0) & _missing(nr_t)[interp.codes]
        if bad_i.any():
            row_issues_columns(ctx, d, "nrind", Kind.UNMAPPED_CODE, "interpretation code not in table nrind",
                               cols, bad_i, rule="lb.NRIND", target="LBNRIND", value_col="_interp")
        if pd.Series(interp.values, dtype="object").isin(["HH", "LL", "AA"]).any():
            ctx.once("nrind-crit", Kind.LOSSY, "critical interpretations (HH/LL/AA) become HIGH/LOW/"
                     "ABNORMAL: NRIND has no critical terms", rule="lb.NRIND", target="LBNRIND")
        out["LBNRIND"] = _obj(nr_t[interp.codes])
    elif not _all_missing(cols["_interp"]):
        ctx.once("vs-interp", Kind.LOSSY, "Observation.interpretation on vital signs is not carried "
                 "(VSCLSIG needs an investigator's judgement, Joint IG)", rule="vs.interpretation")
    # --STAT / --REASND: cancelled or data absent -> NOT DONE
    status, dar = cols["_status"], cols["_dar"]
    has_dar = _present(dar)
    cancelled = np.asarray(status == "cancelled", dtype=bool) if len(status) else np.zeros(0, dtype=bool)
    nd = (cancelled | has_dar) & orres_missing
    out[f"{d}STAT"] = np.where(nd, "NOT DONE", NO_VALUE)
    out[f"{d}REASND"] = _obj(_where(nd, dar))
    if nd.any():
        row_issues_columns(ctx, d, "dar", Kind.LOSSY, f"data-absent result: {d}STAT NOT DONE and {d}REASND = the "
                           "reason text; the dataAbsentReason code is not kept", cols, nd & has_dar,
                           rule=f"{d.lower()}.REASND", source="Observation.dataAbsentReason", target=f"{d}REASND")
        row_issues_columns(ctx, d, "nd-status", Kind.LOSSY, f"Observation.status other than cancelled with no "
                           f"result: {d}STAT NOT DONE; the status is not kept (SDTM -> FHIR writes cancelled)",
                           cols, nd & ~cancelled, rule=f"{d.lower()}.STAT", source="Observation.status",
                           target=f"{d}STAT")
    # --DTC (LB: specimen collection first, per the Joint IG); the SDTM text kept in the project's
    # sdtm-dtc extension is the --DTC itself (LB: when no specimen collection time says otherwise)
    dropped = ctx.dropped_zone(f"{d}DTC")
    spec_dtc = cols["_spec_dtc"] if d == "LB" else None
    if (spec_dtc is None or _all_missing(spec_dtc)) and _all_missing(cols["_dtc_sdtm"]):
        dtc_codes, dtc_table, bad_table = derive_dtc_codes(cols["_eff"], dropped)
        kept_dtc, bad = dtc_table[dtc_codes], bad_table[dtc_codes]
        out_dtc_codes = dtc_codes   # (for the latest dates per subject: pipeline.DTC_CODE)
    else:   # the plain path's steps
        out_dtc_codes = None
        eff_s = pd.Series(cols["_eff"], dtype="object")
        kept = pd.Series(cols["_dtc_sdtm"], dtype="object")
        if spec_dtc is not None:
            spec = pd.Series(spec_dtc, dtype="object")
            eff_s = spec.fillna(eff_s)
            kept = kept.where(spec.isna())
        dtc_s, bad_s = derive_dtc(eff_s.where(kept.isna()), dropped)
        bad = bad_s.to_numpy(dtype=bool)
        kept_dtc = kept.where(kept.notna(), dtc_s).to_numpy()
    if bad.any():
        row_issues_columns(ctx, d, "dtc", Kind.INVALID_VALUE, "effective[x] is not a FHIR dateTime", cols, bad,
                           rule=f"{d.lower()}.DTC", target=f"{d}DTC")
    out[f"{d}DTC"] = _obj(kept_dtc)
    for c in ("VISITNUM", "VISIT", "_rfstdtc", "_rfendtc", "_rficdtc", "_src_type", "_src_id", "_src_ver",
              "_src_file", "_src_line", "_usubjid_code"):
        if c in cols:
            out[c] = _obj(cols[c]) if cols[c].dtype == object else cols[c]
    out[f"{d}GRPID"] = _obj(cols["_grp"])
    if out_dtc_codes is not None:
        out["_dtc_code"] = out_dtc_codes
    return out
