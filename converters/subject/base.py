"""The subject-data engine: run context, subject index, domain registry and shared derivations.

FHIR subject resources -> SDTM domains, column by column. The engine (:mod:`.pipeline`) reads the
inputs in two passes, resolves every row to its subject, and hands each domain module *plain columns*;
the module returns an SDTM-shaped DataFrame; the engine derives the variables every domain derives the
same way, and writes the domain, its SUPP-- dataset and its provenance file.

How a domain module plugs in
============================
Put a module in ``converters/subject/domains/`` (every module there is imported by the engine) and
register one :class:`DomainPlugin` per domain::

    from ..base import Ctx, DomainPlugin, register_domain

    def extract_ae(res: dict, ctx: Ctx) -> dict | list[dict] | None:
        # plain dict access only (no pydantic): one row of plain values per SDTM record, or None
        return {"_subject": ref_of(res.get("subject")), "_encounter": ref_of(res.get("encounter")),
                "AETERM": ..., "AESTDTC": res.get("onsetDateTime")}

    def map_ae(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
        # vectorised code maps, dates, units; return SDTM variables (+ SUPP qualifiers + _src_* columns)
        ...

    register_domain(DomainPlugin("AE", resource_types=("AdverseEvent",), extract=extract_ae,
                                 map=map_ae, dtc="AESTDTC", supp={"AETRTEM": ("Treatment Emergent Flag", "DERIVED")}))

Row contract (what ``extract`` returns; keys starting with ``_`` are engine columns, never written):

* ``_subject``  reference to the subject as written (``Patient/1``, ``urn:uuid:..``, absolute URL,
  ``ResearchSubject/9``). Required: a row whose subject does not resolve is reported (with its resource
  id) and dropped.
* ``_encounter`` optional Encounter reference -> VISITNUM/VISIT (see :meth:`Ctx.visits`).
* Any other key: an SDTM variable name, or a working column the map step consumes (prefix ``_``).
* The engine adds ``_src_type``, ``_src_id``, ``_src_ver``, ``_src_file``, ``_src_line`` from the
  resource itself (provenance) -- extractors need not.

``cols`` handed to ``map`` already holds ``STUDYID``, ``USUBJID`` and ``_rfstdtc`` (the subject's
RFSTDTC) and, where the domain has them, ``VISITNUM``/``VISIT``. After ``map`` the engine fills, *only
when the map left them out*: ``DOMAIN``; ``--DY``/``--STDY``/``--ENDY`` from ``--DTC``/``--STDTC``/
``--ENDTC`` vs RFSTDTC (no day 0); ``EPOCH``; ``--SEQ`` (per subject, 1..n in input order, continued
across chunks). Columns named in ``plugin.supp`` go to ``SUPP<dom>`` (IDVAR = --SEQ; for DM IDVAR is
blank). ``_src_*`` columns go to ``<dom>.provenance.csv`` (one row per SDTM row: USUBJID, --SEQ,
resource type, id, versionId, file, line). Every other column must be a variable in schemas/sdtm.

``streamed=True`` plugins (LB, VS from Observation) run in pass 2, chunk by chunk, and are written
with the chunked writer; the others run after pass 1 on the whole (small) resource set, in
``depends`` order, and their frames are kept in ``ctx.frames`` for later plugins (DM reads
``ctx.frames["EX"]`` for RFSTDTC/RFENDTC). Several plugins may share one ``extract`` function (LB and
VS share the Observation extractor): it is called once per resource and ``accept(row)`` routes the row.
A streamed plugin may also give ``extract_columns``, the same extraction straight into column lists
(no dict per row); pass 2 uses it when every plugin reading the streamed type has one.

Decisions (written in mappings/subject/README.md as well):

* STUDYID: ``--studyid`` if given; else the study definition's sponsor protocol id
  (``orgStudyIdInfo.id``, the DDF/USDM sponsor study identifier), else its NCT id; else the
  identifier of a ResearchStudy in the data (the overall study: the one no other is ``partOf``).
* USUBJID = ``STUDYID-SUBJID``. SUBJID: ResearchSubject.identifier (first with a value); else, with
  ``--expose-mrn``, the Patient's MR identifier; else a keyed hash (HMAC-SHA256, salt from the
  environment variable ``--salt-env`` names, first 16 hex digits, upper case) of the Patient's first
  identifier ``system|value`` (else its resource id). No salt and a hash needed -> UsageError.
* SITEID: identifier of the site-level ResearchStudy (one that is ``partOf`` another) the
  ResearchSubject points to; else the identifier of Patient.managingOrganization; else of the
  serviceProvider of the subject's first Encounter (reported ``inferred``); else reported ``missing``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..model import Study
from ..report import ConversionReport, Kind

ENGINE_PREFIX = "_"
SRC_COLUMNS = ("_src_type", "_src_id", "_src_ver", "_src_file", "_src_line")
#: Extracted columns holding numbers as the FHIR JSON gave them (results, valueInteger/valueBoolean
#: results, reference-range limits, a version id given as a number): kept as Python objects, never
#: coerced to float64, so --ORRES/--ORNRLO/--ORNRHI read as collected (118 stays "118"; a decimal
#: 118.0 keeps its stated precision), as on the columnar path.
AS_GIVEN_COLUMNS = ("_v", "_vtext", "_rlo", "_rhi", "_src_ver")
DEFAULT_SALT_ENV = "TRIALBRIDGE_SALT"
MAX_ROW_ISSUES = 200   # per (domain, reason); the rest are counted in one summary issue

# ------------------------------------------------------------------------------------- registry
ExtractFn = Callable[[dict[str, Any], "Ctx"], "dict[str, Any] | list[dict[str, Any]] | None"]
MapFn = Callable[[pd.DataFrame, "Ctx"], pd.DataFrame]


@dataclass(frozen=True)
class DomainPlugin:
    """One SDTM domain built from FHIR resources (see the module docstring)."""

    domain: str
    resource_types: tuple[str, ...]
    extract: ExtractFn
    map: MapFn
    accept: Callable[[dict[str, Any]], bool] | None = None   # route shared-extractor rows
    streamed: bool = False
    depends: tuple[str, ...] = ()
    dtc: str | None = None                  # the --DTC variable --DY/EPOCH derive from
    supp: dict[str, tuple[str, ...]] = field(default_factory=dict)  # QNAM -> (QLABEL, QORIG[, QEVAL])
    write: bool = True                      # False: frame kept in ctx.frames only
    #: optional columnar form of ``extract`` for streamed plugins (the fast path of pass 2):
    #: ``(items, ctx, on_error) -> ({domain: {column: values}}, items consumed)``; it must give the
    #: same rows (provenance ``_src_*`` columns included) and issues as ``extract`` + ``accept``
    extract_columns: Callable[..., tuple[dict[str, dict[str, list[Any]]], int]] | None = None
    #: optional typed NDJSON decoding for ``extract_columns``: a factory (called once per run) of a
    #: decoder of one line of the streamed type that raises on any line it cannot represent exactly
    #: (``domains/_obs_json.py``); None = every line parsed with orjson. With a decoder,
    #: ``extract_columns`` is given a ``reader.Chunk`` instead of items (it reads the NDJSON lines
    #: itself: ``reader.ResourceStream``)
    line_decoder: Callable[[], Callable[[bytes], Any] | None] | None = None
    #: optional columnar form of ``map`` (the fast path of pass 2, used for chunks ``extract_columns``
    #: gave): ``(columns, ctx) -> frame`` with ``columns`` the chunk as numpy arrays (object dtype but
    #: for the numeric engine columns VISITNUM, _src_line), holding what ``map`` would see; it must
    #: give the same frame (columns, dtypes, values) and issues as ``map``
    map_columns: Callable[[dict[str, Any], Ctx], pd.DataFrame] | None = None


_REGISTRY: dict[str, DomainPlugin] = {}


def register_domain(plugin: DomainPlugin) -> DomainPlugin:
    if plugin.domain in _REGISTRY and _REGISTRY[plugin.domain] is not plugin:
        existing = _REGISTRY[plugin.domain]
        if existing.map is not plugin.map:
            raise ValueError(f"domain {plugin.domain} registered twice")
    _REGISTRY[plugin.domain] = plugin
    return plugin


def registered_domains() -> dict[str, DomainPlugin]:
    from . import domains  # noqa: F401  (importing the package imports every domain module)
    return dict(_REGISTRY)


# ------------------------------------------------------------------------------------- references
_REF_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def ref_of(value: Any) -> str | None:
    """The reference string of a FHIR Reference (R4/R5), or None."""
    if isinstance(value, dict):
        ref = value.get("reference")
        return ref if isinstance(ref, str) and ref else None
    return None


def normalise_ref(ref: str | None) -> str | None:
    """``Type/id`` for relative, absolute and versioned references; urn:uuid/urn:oid kept as is;
    ``#id`` (contained) kept as is."""
    if not ref:
        return None
    if ref.startswith(("urn:", "#")):
        return ref
    m = _REF_TAIL.search(ref)
    return f"{m.group(1)}/{m.group(2)}" if m else ref


def contained(res: dict[str, Any], ref: str | None) -> dict[str, Any] | None:
    """The contained resource ``#id`` points to inside ``res``."""
    if not ref or not ref.startswith("#"):
        return None
    for c in res.get("contained") or ():
        if isinstance(c, dict) and c.get("id") == ref[1:]:
            return c
    return None


@dataclass
class RefIndex:
    """Aliases (fullUrl, ``Type/id``, absolute URL) -> canonical ``Type/id`` of resources seen."""

    alias: dict[str, str] = field(default_factory=dict)

    def add(self, rtype: str, rid: str | None, full_url: str | None) -> str | None:
        key = f"{rtype}/{rid}" if rid else (full_url if full_url else None)
        if key is None:
            return None
        self.alias[key] = key
        if full_url:
            self.alias[full_url] = key
            n = normalise_ref(full_url)
            if n:
                self.alias.setdefault(n, key)
        return key

    def resolve(self, ref: str | None) -> str | None:
        if not ref:
            return None
        hit = self.alias.get(ref)
        if hit is None:
            n = normalise_ref(ref)
            hit = self.alias.get(n) if n else None
        return hit

    def resolve_series(self, refs: pd.Series) -> pd.Series:
        """Vectorised: exact alias hits first, then normalised forms for the rest."""
        out = refs.map(self.alias)
        miss = out.isna() & refs.notna()
        if miss.any():
            out[miss] = refs[miss].map(lambda r: self.alias.get(normalise_ref(r) or ""))
        return out


# ------------------------------------------------------------------------------------- context
@dataclass
class Ctx:
    """Everything one run knows; passed to every extract and map function."""

    studyid: str
    report: ConversionReport
    study: Study | None = None
    fhir_version: str | None = None        # "R4" | "R5" | None = detect per resource
    expose_mrn: bool = False
    salt_env: str = DEFAULT_SALT_ENV
    refs: RefIndex = field(default_factory=RefIndex)
    #: one row per subject: index = canonical Patient key (``Patient/id``); columns USUBJID, SUBJID,
    #: SITEID, RFSTDTC, RFENDTC, RFICDTC, ARM/ARMCD/ACTARM/ACTARMCD, ARMNRS, _rs (ResearchSubject key)
    subjects: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: subject alias (any reference form of the Patient or its ResearchSubject) -> USUBJID
    subject_alias: dict[str, str] = field(default_factory=dict)
    #: Encounter key -> (VISITNUM, VISIT, start)
    visit_map: dict[str, tuple[float, str, str | None]] = field(default_factory=dict)
    #: Encounter keys of unplanned visits (no planned visit matched, or an unscheduled/inpatient
    #: encounter) when the study has planned visits -> description for SVUPDES (type text)
    unplanned_visits: dict[str, str | None] = field(default_factory=dict)
    #: planned VISITNUM -> VISITDY of the trial design (TV), for the domains' VISITDY
    planned_visitdy: dict[float, int] = field(default_factory=dict)
    #: the study definition has planned visits (TV): only then is an SV visit "pre-specified" (SVPRESP)
    has_planned_visits: bool = False
    #: the EPOCH values of the study definition's trial arms (TA), None without a study definition:
    #: a subject record's EPOCH must be one of them (SDTMIG 3.4 section 4.1.3.1)
    ta_epochs: frozenset[str] | None = None
    #: small resources kept by type (scrubbed of names/telecom/address lines), key -> resource
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    issue_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: --DTC variable -> {UTC offset dropped ('+09:00', 'Z') or 'fraction': number of values}
    dropped_zones: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (resource type, top-level element, unread | privacy | narrative) -> resources (rule subject.unread)
    unread: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: resource type -> {modifierExtension url: occurrences} (rule subject.modifier)
    modifiers: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the user's LOINC -> --TESTCD decisions (--test-codes; :mod:`.test_codes`): domain -> LOINC -> row
    test_codes: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    test_tables: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    _once: set[str] = field(default_factory=set)

    def dropped_zone(self, target: str) -> dict[str, int]:
        """The counter :func:`derive_dtc` fills for the --DTC variable ``target``."""
        return self.dropped_zones.setdefault(target, {})

    def row_issue(self, domain: str, reason: str, kind: Kind, message: str, record: str | None,
                  **kw: Any) -> None:
        """A per-resource issue (record = ResourceType/id); after MAX_ROW_ISSUES of one
        (domain, reason) the rest are counted and summarised at the end of the run."""
        n = self.issue_counts[(domain, reason)] = self.issue_counts.get((domain, reason), 0) + 1
        if n <= MAX_ROW_ISSUES:
            self.report.add(kind, message, record=record, **kw)

    def row_issues(self, domain: str, reason: str, kind: Kind, message: str, frame: pd.DataFrame,
                   mask: Any, **kw: Any) -> None:
        """:meth:`row_issue` for every row of ``frame`` where ``mask`` is true (vectorised callers);
        ``value`` may be a column name whose row value is attached (kept only with --report-values)."""
        value_col = kw.pop("value_col", None)
        idx = frame.index[np.asarray(mask, dtype=bool)]
        room = max(0, MAX_ROW_ISSUES - self.issue_counts.get((domain, reason), 0))
        for i in idx[:room]:
            self.row_issue(domain, reason, kind, message,
                           record=f"{frame.at[i, '_src_type']}/{frame.at[i, '_src_id']}",
                           file=frame.at[i, "_src_file"],
                           value=frame.at[i, value_col] if value_col else None, **kw)
        rest = len(idx) - min(len(idx), room)
        if rest > 0:
            self.issue_counts[(domain, reason)] = self.issue_counts.get((domain, reason), 0) + rest

    # -- reporting helpers: never put subject values in messages
    def once(self, key: str, kind: Kind, message: str, **kw: Any) -> None:
        """Report a run-level fact (an inference, a lossy step) once, not per row."""
        if key not in self._once:
            self._once.add(key)
            self.report.add(kind, message, **kw)

    def resource(self, rtype: str, ref: str | None) -> dict[str, Any] | None:
        key = self.refs.resolve(ref)
        return self.resources.get(rtype, {}).get(key) if key else None

    # -- subject identity
    def salt(self) -> bytes:
        value = os.environ.get(self.salt_env)
        if not value:
            raise UsageError(f"a keyed-hash subject id is needed but the environment variable "
                             f"{self.salt_env} (--salt-env) holds no salt; set it, or give "
                             "ResearchSubject identifiers")
        return value.encode("utf-8")

    def hashed_id(self, text: str) -> str:
        return hmac.new(self.salt(), text.encode("utf-8"), hashlib.sha256).hexdigest()[:16].upper()

    def usubjid_series(self, subject_refs: pd.Series) -> pd.Series:
        """USUBJID per row (object dtype, missing = None): one alias lookup per distinct reference,
        then the normalised form for references that are not aliases as written."""
        codes, table = self.usubjid_table(subject_refs.to_numpy(dtype=object))
        return pd.Series(table[codes], index=subject_refs.index, dtype="object")

    def usubjid_table(self, subject_refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`usubjid_series` as (codes of the distinct references, USUBJID per code, None last
        for code -1): callers that need more per subject look it up per code, not per row."""
        codes, uniq = pd.factorize(subject_refs)
        alias = self.subject_alias
        table = np.empty(len(uniq) + 1, dtype=object)
        for j, r in enumerate(uniq.tolist()):
            hit = alias.get(r)
            if hit is None and r is not None:
                hit = alias.get(normalise_ref(r) or "")
            table[j] = hit
        table[-1] = None
        return codes, table


# ------------------------------------------------------------------------------------- derivations
def full_object(n: int, value: Any) -> np.ndarray:
    """``np.full(n, value, dtype=object)`` without numpy's per-element cast (ten times faster)."""
    out = np.empty(n, dtype=object)
    out.fill(value)
    return out


class Distinct:
    """A column factorised once: lookups once per distinct value (``fn(None)`` for missing values),
    gathered back to the rows as object Series. Several lookups on one column share the
    factorisation (a LOINC code gives LBTESTCD, LBTEST, LBSPEC, LBMETHOD, LBCAT)."""

    def __init__(self, keys: pd.Series | None = None) -> None:
        if keys is not None:
            self.index = keys.index
            self.codes, uniq = pd.factorize(keys.to_numpy(dtype=object))
            self.values: list[Any] = uniq.tolist()

    def map(self, fn: Callable[[Any], Any]) -> pd.Series:
        table = np.empty(len(self.values) + 1, dtype=object)
        table[:-1] = [fn(u) for u in self.values]
        table[-1] = fn(None)
        return pd.Series(table[self.codes], index=self.index, dtype="object")

    def subset(self, keep: pd.Series) -> Distinct:
        """The rows where ``keep`` is true (same distinct values)."""
        mask = keep.to_numpy(dtype=bool)
        out = Distinct()
        out.index, out.codes, out.values = self.index[mask], self.codes[mask], self.values
        return out


_DTC_OK = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def _distinct(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values); missing values get code -1. Strings are factorised; anything else
    (where 1 == 1.0 == True would merge) is kept value by value."""
    return _distinct_array(values.to_numpy(dtype=object))


def _distinct_array(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_distinct` of an object array."""
    if pd.api.types.infer_dtype(arr, skipna=True) in ("string", "empty"):
        return pd.factorize(arr)
    miss = pd.isna(arr)
    codes = np.arange(len(arr))
    codes[miss] = -1
    return codes, arr


#: the usual FHIR dateTime shapes, by length: template (d = an ASCII digit, s = + or -) and where
#: --DTC ends (the rest is the UTC offset); any other length or character takes the regular expression
_DTC_SHAPES = {4: ("dddd", 4), 7: ("dddd-dd", 7), 10: ("dddd-dd-dd", 10), 16: ("dddd-dd-ddTdd:dd", 16),
               17: ("dddd-dd-ddTdd:ddZ", 16), 22: ("dddd-dd-ddTdd:ddsdd:dd", 16),
               19: ("dddd-dd-ddTdd:dd:dd", 19), 20: ("dddd-dd-ddTdd:dd:ddZ", 19),
               25: ("dddd-dd-ddTdd:dd:ddsdd:dd", 19)}


def _dtc_of_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per text: the --DTC (None when invalid) and an invalid flag; then the positions of the valid
    texts that had an offset or fraction cut off, and what was cut. The usual shapes are checked
    character by character in numpy (one pass per length); the others with :data:`_DTC_OK` one by
    one: the same answers."""
    k = len(texts)
    dtc = np.full(k, None, dtype=object)
    bad = np.zeros(k, dtype=bool)
    cut_at: list[np.ndarray] = []
    cuts: list[str] = []
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=k)
    slow = np.ones(k, dtype=bool)
    for length, (shape, end) in _DTC_SHAPES.items():
        idx = np.flatnonzero(lens == length)
        if not len(idx):
            continue
        arr = np.array([texts[i] for i in idx.tolist()], dtype=f"<U{length}")
        mat = arr.view(np.uint32).reshape(len(idx), length)
        ok = np.ones(len(idx), dtype=bool)
        for pos, ch in enumerate(shape):
            col = mat[:, pos]
            if ch == "d":
                ok &= (col >= 48) & (col <= 57)
            elif ch == "s":
                ok &= (col == 43) | (col == 45)
            else:
                ok &= col == ord(ch)
        if not ok.any():
            continue
        good = idx[ok]
        slow[good] = False
        if end < length:
            dtc[good] = arr[ok].astype(f"<U{end}").tolist()
            cut_at.append(good)
            cuts += np.ascontiguousarray(mat[ok][:, end:]).view(f"<U{length - end}").ravel().tolist()
        else:
            dtc[good] = arr[ok].tolist()
    ok_match = _DTC_OK.match
    rest: list[int] = []
    for i in np.flatnonzero(slow).tolist():
        txt = texts[i]
        if ok_match(txt) is None:
            bad[i] = True
            continue
        # a valid value: hh:mm ends at 16, hh:mm:ss at 19; anything after is fraction and/or offset
        end = 19 if len(txt) > 16 and txt[16] == ":" else min(len(txt), 16)
        dtc[i] = txt[:end]
        if len(txt) > end:
            rest.append(i)
            cuts.append(txt[end:])
    cut_at.append(np.array(rest, dtype=np.int64))
    return dtc, bad, np.concatenate(cut_at), cuts


def derive_dtc(values: pd.Series, dropped: dict[str, int] | None = None) -> tuple[pd.Series, pd.Series]:
    """FHIR date/dateTime/instant -> ISO 8601 --DTC (vectorised). Partial dates stay partial; the time
    zone offset and fractional seconds are dropped: SDTM --DTC carries the local clock time, the
    ISO 8601 extended format of SDTMIG 3.4 §4.4 (YYYY-MM-DDThh:mm:ss) has no UTC offset.
    ``dropped`` (when given) counts, per row, each offset dropped (``+09:00``, ``Z``) and
    ``fraction`` for fractional seconds, so the caller can report them (:meth:`Ctx.dropped_zone`).
    Returns (dtc, invalid_mask): values that are not FHIR dates become missing and are flagged.
    Each distinct value is checked once; the results are gathered back to the rows."""
    dtc, bad = derive_dtc_array(values.to_numpy(dtype=object), dropped)
    return pd.Series(dtc, index=values.index, dtype="object"), pd.Series(bad, index=values.index)


def derive_dtc_array(arr: np.ndarray, dropped: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`derive_dtc` of an object array: (dtc object array, invalid bool array)."""
    codes, table, bad_table = derive_dtc_codes(arr, dropped)
    return table[codes], bad_table[codes]


def derive_dtc_codes(arr: np.ndarray, dropped: dict[str, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`derive_dtc_array` before the gather: (codes of the rows, --DTC per code, invalid per
    code), code -1 (missing) last in both tables. The --DTC of a row is a function of its code."""
    codes, uniq = _distinct_array(arr)
    texts = [u if type(u) is str else str(u) for u in (uniq.tolist() if isinstance(uniq, np.ndarray) else uniq)]
    dtc, bad, cut_at, cuts = _dtc_of_texts(texts)
    if dropped is not None and cuts:
        # what was cut ('.250Z', '+09:00'), counted over the rows of each distinct value
        freq = np.bincount(codes[codes >= 0], minlength=len(texts))
        cut_codes, cut_texts = pd.factorize(np.array(cuts, dtype=object))
        per_cut = np.bincount(cut_codes, weights=freq[cut_at], minlength=len(cut_texts))
        for cut, n in zip(cut_texts.tolist(), per_cut.astype(np.int64).tolist(), strict=True):
            zone = cut.lstrip(".0123456789")
            if n and zone:
                dropped[zone] = dropped.get(zone, 0) + n
            if n and cut.startswith("."):
                dropped["fraction"] = dropped.get("fraction", 0) + n
    table = np.empty(len(dtc) + 1, dtype=object)
    table[:-1] = dtc
    table[-1] = None       # code -1: missing stays missing, and is not invalid
    bad_table = np.append(bad, False)
    return codes, table, bad_table


def _date_part(dtc: pd.Series) -> pd.Series:
    """Full dates only (YYYY-MM-DD); partial dates give NaT (no --DY from a partial date).
    Parsed once per distinct value."""
    codes, uniq = _distinct(dtc)
    s = pd.Series(uniq, dtype="object")
    d = s.where(s.notna() & (s.astype(str).str.len() >= 10), None)
    parsed = pd.to_datetime(d.astype(str).str.slice(0, 10).where(d.notna(), None),
                            format="%Y-%m-%d", errors="coerce").to_numpy()
    if parsed.dtype.kind != "M":
        parsed = parsed.astype("datetime64[ns]")
    table = np.concatenate([parsed, np.array(["NaT"], dtype=parsed.dtype)])
    return pd.Series(table[codes], index=dtc.index)


def derive_dy(dtc: pd.Series, rfstdtc: pd.Series) -> pd.Series:
    """SDTMIG study day: date - RFSTDTC (+1 on or after RFSTDTC; there is no day 0). Int64."""
    return dy_from_dates(_date_part(dtc), _date_part(rfstdtc))


def dy_from_dates(d: pd.Series, r: pd.Series) -> pd.Series:
    """:func:`derive_dy` from date parts already taken (:func:`_date_part`)."""
    diff = (d - r).dt.days
    dy = diff + (diff >= 0).astype("float64")
    return pd.array(np.where(dy.isna(), pd.NA, dy), dtype="Int64")  # type: ignore[call-overload]


def derive_epoch(dtc: pd.Series, rfstdtc: pd.Series, rfendtc: pd.Series,
                 rficdtc: pd.Series | None = None) -> pd.Series:
    """EPOCH from the date relative to the reference period (CT EPOCH terms SCREENING, TREATMENT,
    FOLLOW-UP). An inference (no trial-design TE/TA epochs available): callers report it.
    Dates before informed consent (RFICDTC) get no EPOCH: epochs are study-design periods and the
    first one starts at consent (SDTMIG 3.4 section 4.1.3.1), so prior medications and history
    started before the study are not SCREENING."""
    ic = _date_part(rficdtc) if rficdtc is not None else None
    return epoch_from_dates(_date_part(dtc), _date_part(rfstdtc), _date_part(rfendtc), ic)


def epoch_from_dates(d: pd.Series, r: pd.Series, e: pd.Series, ic: pd.Series | None = None) -> pd.Series:
    """:func:`derive_epoch` from date parts already taken (:func:`_date_part`)."""
    out = np.full(len(d), None, dtype=object)
    dv, rv, ev = d.to_numpy(), r.to_numpy(), e.to_numpy()
    known = ~pd.isna(dv) & ~pd.isna(rv)
    before = known & (dv < rv)
    if ic is not None:
        iv = ic.to_numpy()
        before &= pd.isna(iv) | ~(dv < iv)   # NaT compares False: unknown consent keeps SCREENING
    out[before] = "SCREENING"
    on = known & (dv >= rv)
    out[on] = "TREATMENT"
    after = on & ~pd.isna(ev) & (dv > ev)
    out[after] = "FOLLOW-UP"
    return pd.Series(out, index=d.index, dtype="object")


def derive_seq(usubjid: pd.Series, start: dict[str, int] | None = None) -> pd.Series:
    """--SEQ: 1..n per subject in row order, continuing from ``start`` (updated in place)."""
    codes, subjects = pd.factorize(usubjid.to_numpy(dtype=object))
    if len(codes) and (codes >= 0).all():
        return seq_of_codes(codes, subjects.tolist(), start, usubjid.index)
    seq = usubjid.groupby(usubjid, sort=False).cumcount() + 1
    if start:
        seq = seq + usubjid.map(start).fillna(0).astype("int64")
    if start is not None:
        last = seq.groupby(usubjid, sort=False).max()
        start.update({k: int(v) for k, v in last.items()})
    return seq.astype("int64")


def seq_of_codes(codes: np.ndarray, names: list[Any], start: dict[str, int] | None, index: Any) -> pd.Series:
    """:func:`derive_seq` of rows given as subject codes (all >= 0) into ``names`` (the subjects in
    order of their first row, as ``pd.factorize`` gives them)."""
    # numpy: the rank of each row within its subject (stable sort by subject), plus the start
    # (16-bit codes when they fit: numpy sorts those stably by radix, five times faster)
    order = np.argsort(codes.astype(np.int16) if len(names) <= np.iinfo(np.int16).max else codes,
                       kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    first = np.cumsum(counts) - counts
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(first, counts)
    begin = np.array([int(start.get(u, 0)) if start else 0 for u in names], dtype=np.int64)
    if start is not None:
        start.update({u: int(b + c) for u, b, c in zip(names, begin.tolist(), counts.tolist(), strict=True)})
    return pd.Series(rank + 1 + begin[codes], index=index, dtype="int64")


def first_coding(concept: Any, system: str | None = None) -> dict[str, Any] | None:
    """The first Coding of a CodeableConcept (of ``system`` when given)."""
    if not isinstance(concept, dict):
        return None
    for c in concept.get("coding") or ():
        if isinstance(c, dict) and (system is None or c.get("system") == system):
            return c
    return None


def detect_version(res: dict[str, Any]) -> str:
    """R4 or R5 from element names that differ (ResearchSubject, Encounter, MedicationX)."""
    rtype = res.get("resourceType")
    if rtype == "ResearchSubject":
        return "R5" if ("subject" in res or "assignedComparisonGroup" in res) else "R4"
    if rtype == "Encounter":
        cls = res.get("class")
        return "R5" if isinstance(cls, list) or "actualPeriod" in res else "R4"
    if rtype in ("MedicationAdministration", "MedicationStatement", "MedicationRequest"):
        med = res.get("medication")
        return "R5" if isinstance(med, dict) else "R4"
    return "R4"
