"""Shared vocabulary of the SDTM -> FHIR subject writer: URLs, ids, dates, numbers, code tables.

* One project base URL (:data:`BASE`); every project extension and naming system hangs off it
  (documented in ``mappings/fhir_subject/README.md``).
* Resource ids are derived from business keys (STUDYID, USUBJID, domain, --SEQ / VISITNUM), so the
  same input gives the same output byte for byte.
* ISO 8601 ``--DTC`` values: partial dates stay partial; a time without a zone is never silently
  shifted: it gets the user's ``default_tz`` (a fixed offset, or an IANA zone whose offset is computed
  per local date-time, DST-aware; reported as inferred) or is cut to its date with the full SDTM text
  kept in the ``sdtm-dtc`` extension (reported as lossy). A local time an IANA zone repeats or skips
  (DST fold/gap) is cut and reported the same way, never given a chosen offset.
* Numbers keep their exact text (orjson ``Fragment``), so ``5.10`` stays ``5.10``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..sdtm.ct import NCIT, pinned_ct
from ..specs import load_spec, load_table

# One project base for every extension, naming system and code system the project defines; it is set
# once, in mappings/fhir_study.yaml (extension_base), and shared by the study and subject writers.
SD = load_spec("fhir_study.yaml")["extension_base"].rstrip("/")
BASE = SD.rsplit("/StructureDefinition", 1)[0]
EXT_SDTM = f"{SD}/sdtm"                  # complex: one sub-extension per SDTM variable (url = name)
EXT_SUPPQUAL = f"{SD}/suppqual"          # complex: QNAM, QLABEL, QVAL, QORIG, QEVAL
EXT_RELREC = f"{SD}/relrec"              # complex: RELID, RELTYPE, target (valueReference)
EXT_DTC = f"{SD}/sdtm-dtc"               # on a date primitive: the original SDTM --DTC text
SID = f"{BASE}/sid"                      # naming systems: {SID}/studyid, /usubjid, /subjid, /lbseq ...
CS = f"{BASE}/CodeSystem"                # CDISC submission values: {CS}/sdtm-LBTESTCD ...
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MEDDRA = "http://terminology.hl7.org/CodeSystem/mdr"
R5_PROGRESS = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchSubject.progress"
# the official cross-version extension (hl7.fhir.uv.xver-r5.r4): the element path without [x]
R5_AE_OCCURRENCE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.occurrence"
BODY_POSITION = "http://hl7.org/fhir/StructureDefinition/observation-bodyPosition"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"

_ID_BAD = re.compile(r"[^A-Za-z0-9.\-]")


@cache
def slug(text: str) -> str:
    """A FHIR-id-safe form of a business key; a short hash keeps altered keys distinct."""
    s = _ID_BAD.sub("-", text)
    if s != text or len(s) > 40:
        s = s[:30] + "." + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s


def make_id(*parts: str) -> str:
    rid = "-".join(parts)
    if len(rid) > 64:
        rid = rid[:47] + "." + hashlib.sha1(rid.encode()).hexdigest()[:16]
    return rid


def num_text(v: Any) -> str | None:
    """A Num SDTM value as text: integers without '.0'."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def num_json(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


# ----------------------------------------------------------------------------- decimals
_FHIR_DEC = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?(?:[eE][+-]?[0-9]{1,9})?"
_NUM_IN = re.compile(r"^(<=|>=|<|>)?\s*(-?)(0*)(\d*)(\.\d+)?$")


@dataclass
class Decimals:
    """Vectorised parse of SDTM result text into FHIR decimals (exact text kept)."""

    value: list[Any]          # orjson.Fragment or None
    comparator: list[Any]     # '<', '<=', '>=', '>' or None
    normalised: np.ndarray    # bool: the decimal text differs from the source (e.g. '.94')
    codes: np.ndarray | None = None                      # row -> index into distinct
    distinct: list[tuple[Any, Any, bool]] = field(default_factory=list)   # (value, comparator, normalised)


_DEC_IN = re.compile(r"^(<=|>=|<|>)?\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,9})?)$")
_DEC_OK = re.compile(_FHIR_DEC)


def _parse_decimal(text: Any) -> tuple[Any, Any, bool]:
    if not isinstance(text, str):
        return None, None, False
    m = _DEC_IN.match(text.strip())
    if not m:
        return None, None, False
    comp, num = m.group(1), m.group(2)
    canon = re.sub(r"^(-?)\.", r"\g<1>0.", num)
    canon = re.sub(r"^(-?)0+(\d)", r"\1\2", canon)
    canon = canon[:-1] if canon.endswith(".") else canon
    if not _DEC_OK.fullmatch(canon):
        return None, None, False
    return orjson.Fragment(canon.encode()), comp, canon != num


def parse_decimals(s: pd.Series) -> Decimals:
    """One regex match per distinct text (results repeat a lot in findings data)."""
    codes, texts = factorize(s)
    distinct = [_parse_decimal(t) for t in texts]
    vals = take([r[0] for r in distinct], codes)
    comps = take([r[1] for r in distinct], codes)
    norm = np.array([r[2] for r in distinct], dtype=bool)[codes]
    return Decimals(vals, comps, norm, codes, distinct)


# ----------------------------------------------------------------------------- dates
_DTC = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                  r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


@dataclass
class Dates:
    value: list[Any]          # FHIR dateTime/date text or None
    original: list[Any]       # the SDTM text when it differs from value (kept in EXT_DTC), else None
    counts: dict[str, int]    # issue kind -> number of values: seconds-added, zone-added, time-cut, cut, invalid
    codes: np.ndarray | None = None    # row -> index into distinct_value / distinct_original
    distinct_value: list[Any] = field(default_factory=list)
    distinct_original: list[Any] = field(default_factory=list)


def factorize(values: Any) -> tuple[np.ndarray, list[Any]]:
    """Row codes into the distinct values (first-seen order); missing (None/NaN) gets the last code.

    ``distinct[-1]`` is the missing value (None), so ``take(distinct, codes)`` expands them back.
    """
    if not isinstance(values, (pd.Series, np.ndarray)):
        n = len(values)
        if not n or (values[0] is None and values[n // 2] is None and values.count(None) == n):
            return np.zeros(n, dtype=np.intp), [None]      # an absent or empty variable: no hashing
        values = np.fromiter(values, dtype=object, count=n)
    codes, uniq = pd.factorize(values)
    distinct = list(uniq.tolist() if hasattr(uniq, "tolist") else uniq)
    k = len(distinct)
    if (codes < 0).any():
        codes = np.where(codes < 0, k, codes)
    distinct.append(None)
    return codes, distinct


def take(distinct: list[Any], codes: np.ndarray) -> list[Any]:
    """``[distinct[c] for c in codes]``, vectorised."""
    arr = np.empty(len(distinct), dtype=object)
    arr[:] = distinct
    return list(arr[codes].tolist())


def convert_dates(s: pd.Series, *, default_tz: str | None, date_only: bool = False) -> Dates:
    """SDTM ISO 8601 text -> FHIR dateTime (or date), vectorised over the distinct values.

    See the module docstring for the policy; counts are per row.
    """
    codes, distinct = factorize(s)
    freq = np.bincount(codes, minlength=len(distinct))
    vals, orig, masks = _convert_distinct_dates(pd.Series(distinct, dtype=object), default_tz=default_tz,
                                                date_only=date_only)
    counts = {k: int(freq[m].sum()) for k, m in masks.items()}
    return Dates(take(vals, codes), take(orig, codes), {k: v for k, v in counts.items() if v},
                 codes, vals, orig)


def _convert_distinct_dates(s: pd.Series, *, default_tz: str | None, date_only: bool,
                            ) -> tuple[list[Any], list[Any], dict[str, np.ndarray]]:
    text = s.where(s.notna(), "").astype(str).str.strip()
    m = text.str.extract(_DTC.pattern)
    y, mo, d, hh, mi, ss, frac, tz = (m[i] for i in range(8))
    matched = y.notna()
    date = y.fillna("") + ("-" + mo).fillna("") + ("-" + d).fillna("")
    has_time = matched & hh.notna()
    secs = ss.fillna("00") + frac.fillna("")
    out = date.copy()
    masks: dict[str, Any] = {}
    if date_only:
        masks["time-cut"] = has_time
    else:
        full = has_time & d.notna()
        zone = tz.copy()
        no_zone = full & tz.isna()
        if default_tz and is_fixed_offset(default_tz):
            zone = zone.where(~no_zone, default_tz)
            masks["zone-added"] = no_zone
            timed = full
        elif default_tz:
            # an IANA zone: the offset of each local date-time (DST-aware); a local time the zone
            # repeats (fold) or skips (gap) has no single offset: cut to its date and reported
            local = date + "T" + hh.fillna("00") + ":" + mi.fillna("00") + ":" + ss.fillna("00")
            looked = [zone_offset(t, default_tz) if n else (None, None)
                      for t, n in zip(local.tolist(), no_zone.tolist(), strict=True)]
            offs = pd.Series([o for o, _ in looked], index=zone.index, dtype=object)
            why = pd.Series([w for _, w in looked], index=zone.index, dtype=object)
            zone = zone.where(~no_zone, offs)
            masks["zone-added"] = no_zone & offs.notna()
            masks["zone-ambiguous"] = no_zone & why.eq("ambiguous")
            masks["zone-nonexistent"] = no_zone & why.eq("nonexistent")
            timed = full & zone.notna()
        else:
            masks["time-cut"] = no_zone
            timed = full & tz.notna()
        masks["seconds-added"] = timed & ss.isna()
        out = out.where(~timed, date + "T" + hh.fillna("") + ":" + mi.fillna("") + ":" + secs + zone.fillna(""))
    # not ISO 8601 as SDTM allows it in full (e.g. '2014---15', '2014-01-02T10'): keep the longest
    # valid leading part
    present = text != ""
    bad = present & ~matched
    if bad.any():
        lead = text.where(bad, "").str.extract(r"^(\d{4}(?:-\d{2}(?:-\d{2})?)?)")[0]
        lead = lead.str.replace(r"-$", "", regex=True)
        out = out.where(~bad, lead.fillna(""))
        masks["cut"] = bad & lead.notna()
        masks["invalid"] = bad & lead.isna()
    keep_v = (present & (out.fillna("") != "")).tolist()
    keep_o = (present & (out.fillna("") != text)).tolist()
    vals = [v if k else None for v, k in zip(out.fillna("").tolist(), keep_v, strict=False)]
    orig = [t if k else None for t, k in zip(text.tolist(), keep_o, strict=False)]
    return vals, orig, {k: np.asarray(v, dtype=bool) for k, v in masks.items()}


_FIXED_TZ = re.compile(r"Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00")


def is_fixed_offset(tz: str) -> bool:
    """``Z`` or ``+hh:mm`` / ``-hh:mm`` (the FHIR dateTime zone forms, -14:00..+14:00)."""
    return _FIXED_TZ.fullmatch(tz) is not None


TZ_USAGE = "--default-tz must be Z, +hh:mm / -hh:mm or an IANA time zone name (e.g. Europe/Paris), not {tz!r}"


def valid_tz(tz: str) -> bool:
    """A fixed offset (:func:`is_fixed_offset`) or an IANA zone name the zone database knows."""
    if is_fixed_offset(tz):
        return True
    from zoneinfo import ZoneInfo
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError, OSError):     # ZoneInfoNotFoundError is a KeyError
        return False
    return "/" in tz or tz == "UTC"


@cache
def zone_offset(local: str, tz: str) -> tuple[str | None, str | None]:
    """The UTC offset (``+hh:mm``) of the local date-time ``YYYY-MM-DDThh:mm:ss`` in the IANA zone
    ``tz``, DST-aware; ``(None, 'ambiguous')`` for a local time the zone repeats (DST fold) and
    ``(None, 'nonexistent')`` for one it skips (DST gap): neither is chosen silently."""
    import datetime as dt
    from zoneinfo import ZoneInfo
    z = ZoneInfo(tz)
    try:
        naive = dt.datetime.fromisoformat(local)
    except ValueError:
        return None, "invalid"
    first, second = naive.replace(tzinfo=z, fold=0), naive.replace(tzinfo=z, fold=1)
    off = first.utcoffset()
    if off != second.utcoffset():
        back = first.astimezone(dt.UTC).astimezone(z).replace(tzinfo=None)
        return None, ("nonexistent" if back != naive else "ambiguous")
    minutes = int((off or dt.timedelta()).total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}", None


# ----------------------------------------------------------------------------- code tables
@cache
def code_table(name: str) -> dict[tuple[str, str], dict[str, str]]:
    """(source_system, source_code) -> row of a mappings/fhir_subject code table."""
    return {(r["source_system"], r["source_code"]): r for r in load_table(f"fhir_subject/{name}")}


def code_row(table: str, system: str, code: Any) -> dict[str, str] | None:
    if code is None:
        return None
    return code_table(table).get((system, str(code)))


@cache
def _unit_ucum() -> dict[str, list[str]]:
    """CDISC unit term -> its UCUM expressions in the order the CDISC Unit-UCUM table lists them: the
    one table FHIR -> SDTM reads forwards (``codes/ucum_cdisc_units.csv``, ``rank`` 1 = first listed),
    read backwards; the first codelist that has the term gives its list."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    first: dict[str, str] = {}
    # a term respelled since the table was published is found under its current submission value too
    # (by its C-code in the pinned CT, as FHIR -> SDTM resolves it: C67412 mL/min/1.73m2 -> mL/min/1.73 m2)
    current = {t.code: t.value for t in pinned_ct().codelist("UNIT").terms.values()}
    for r in load_table("codes/ucum_cdisc_units.csv"):
        codelist = r["codelist"]
        for term in dict.fromkeys((r["target_code"], current.get(r.get("target_ccode") or "", r["target_code"]))):
            if first.setdefault(term, codelist) == codelist:
                ranked.setdefault(term, []).append((int(r["rank"]), r["source_code"]))
    return {t: [u for _, u in sorted(v)] for t, v in ranked.items()}


@cache
def ucum_for(unit: str) -> str | None:
    """The UCUM code for a CDISC unit: the submission value itself when the CDISC Unit-UCUM table lists
    it among the term's UCUM expressions (``g/dL`` stays ``g/dL``, ``L`` stays ``L``), else the table's
    first expression for the term. A dose unit the CDISC table lacks (cell-therapy doses) takes the first
    UCUM code that FHIR -> SDTM maps to it (``codes/fhir_dose_unit_extra.csv``, the same decision read
    backwards)."""
    listed = _unit_ucum().get(unit)
    if not listed:
        return _dose_unit_ucum().get(unit)
    return unit if unit in listed[1:] else listed[0]


@cache
def _dose_unit_ucum() -> dict[str, str]:
    out: dict[str, str] = {}
    for r in load_table("codes/fhir_dose_unit_extra.csv"):
        if r["source_system"] == UCUM:
            out.setdefault(r["target_code"], r["source_code"])
    return out


@cache
def vs_ucum(testcd: str | None, unit: str) -> str | None:
    """The UCUM code of a VS result unit: the one the FHIR vital-signs profile fixes for the test
    (``fhir_subject/vs_ucum.csv``: heart rate ``/min``), else :func:`ucum_for`."""
    for r in load_table("fhir_subject/vs_ucum.csv"):
        if r["VSTESTCD"] == testcd and r["source_code"] == unit:
            return r["target_code"]
    return ucum_for(unit)


@cache
def lb_loinc_index() -> dict[str, list[dict[str, str]]]:
    idx: dict[str, list[dict[str, str]]] = {}
    seen: set[tuple[str, ...]] = set()
    from ..subject.test_codes import cdisc_lb_rows
    for r in cdisc_lb_rows()[0]:   # the CDISC LOINC-to-LB table FHIR -> SDTM reads (checked against the CT)
        key = (r["source_code"], r["target_code"], r["LBSPEC"], r["LBMETHOD"])
        if key not in seen:
            seen.add(key)
            idx.setdefault(r["target_code"], []).append(r)
    return idx


def lb_loinc(testcd: str, spec: str | None, method: str | None) -> tuple[str | None, int]:
    """The one LOINC code for LBTESTCD (+LBSPEC, LBMETHOD), and the number of candidates.

    More than one candidate is ambiguous: the caller reports it and writes no LOINC coding.
    """
    rows = lb_loinc_index().get(testcd, [])
    if spec:
        rows = [r for r in rows if r["LBSPEC"] == spec]
    if method:
        rows = [r for r in rows if r["LBMETHOD"] == method]
    codes = sorted({r["source_code"] for r in rows})
    return (codes[0] if len(codes) == 1 else None), len(codes)


def cdisc_coding(variable: str, code: str, display: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": f"{CS}/sdtm-{variable}", "code": code}
    if display:
        c["display"] = display
    return c


@cache
def ncit_coding(codelist: str, value: str) -> dict[str, str] | None:
    """The NCIt coding (C-code, NCI preferred term) of a CDISC CT term of ``codelist`` in the pinned CT,
    or None when the value is not a term of it (sponsor extension or misspelling: the caller reports)."""
    term = pinned_ct().term(codelist, value)
    if term is None:
        return None
    return {"system": NCIT, "code": term.code, "display": term.preferred}


# ----------------------------------------------------------------------------- bound code systems
SNOMED = "http://snomed.info/sct"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


@cache
def bound_pairs(table: str, system: str) -> dict[str, str]:
    """CDISC term -> the one code of ``system`` that ``mappings/codes/<table>`` (read by FHIR -> SDTM)
    pairs with it, for one-to-one pairs only: the term has exactly one code of the system and that code
    exactly one term. Anything else is absent (the caller reports it): never a chosen code."""
    terms: dict[str, set[str]] = {}
    codes: dict[str, set[str]] = {}
    for r in load_table(f"codes/{table}"):
        if r["source_system"] == system and r["target_code"]:
            terms.setdefault(r["target_code"], set()).add(r["source_code"])
            codes.setdefault(r["source_code"], set()).add(r["target_code"])
    return {t: next(iter(cs)) for t, cs in terms.items() if len(cs) == 1 and len(codes[next(iter(cs))]) == 1}
