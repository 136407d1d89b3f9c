"""SDTM subject datasets -> FHIR R4 or R5 (one Bundle, or Bulk-style NDJSON per resource type).

Reader -> SDTM-shaped DataFrames (:mod:`trialbridge.sdtm.reader`) -> this writer. Per domain the
spec ``mappings/fhir_subject/<domain>.yaml`` names the rules (variable -> FHIR element, with the Joint
Mapping IG row it follows) and the derived variables that are not carried (``--DY``). Every other
variable of a record is carried in the project extension ``sdtm`` (one sub-extension per variable),
SUPPQUAL rows in ``suppqual`` extensions on their parent, record-level RELREC links in ``relrec``
extensions with references; nothing is dropped without a report entry.

Speed: the columns of a chunk are converted vectorised (dates, decimals, ids, code lookups per
distinct code); for the other domains the per-row work is a dict assembly from prepared lists,
serialised once with orjson. Findings (LB, VS) are streamed chunk by chunk and never become dicts:
each part of an Observation line is serialised once per distinct combination of the SDTM values it
depends on and kept as (row codes, text per code); adjacent parts that repeat together are fused,
and the lines are spliced and written in blocks of about a megabyte. No pydantic in this path
(tests validate outputs).
"""

from __future__ import annotations

import contextlib
import gc
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..errors import InputError, UsageError
from ..report import ConversionReport, Kind, Severity
from ..safeio import atomic_path
from ..sdtm.reader import DatasetFile, DefineInfo, find_datasets, iter_dataset_chunks, read_dataset, read_define
from ..specs import load_spec
from . import subject_terms as T

SUBJECT_DOMAINS = ("DM", "SV", "DS", "AE", "CM", "EX", "MH", "PR", "VS", "LB")
STREAMED = frozenset({"LB", "VS"})
TRIAL_DESIGN = frozenset({"TS", "TA", "TE", "TV", "TI", "TD", "TM"})
KEYS = frozenset({"STUDYID", "DOMAIN", "USUBJID"})
MAX_EXAMPLES = 5



def domain_spec(domain: str) -> dict[str, Any]:
    return load_spec(f"fhir_subject/{domain.lower()}.yaml")


def mapped_variables(domain: str) -> set[str]:
    """The variables a rule consumes; a rule marked ``carried: true`` writes its element and leaves the
    variable in the sdtm extension too (its FHIR element says less than the SDTM value)."""
    return {r["source"] for r in domain_spec(domain)["rules"] if not r.get("carried")}


def derived_variables(domain: str) -> set[str]:
    return set(domain_spec(domain).get("derived", []))


def rule_id(domain: str, variable: str) -> str | None:
    for r in domain_spec(domain)["rules"]:
        if r["source"] == variable:
            return str(r["id"])
    return None


# ----------------------------------------------------------------------------- run context
@dataclass
class Ctx:
    version: str
    report: ConversionReport
    default_tz: str | None
    studyid: str = ""
    study_ref: str = ""
    site_refs: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)          # USUBJID -> Patient id
    encounters: set[str] = field(default_factory=set)
    ambiguous_visits: set[str] = field(default_factory=set)
    supp: dict[str, dict[tuple[str, str, str], list[dict[str, Any]]]] = field(default_factory=dict)
    supp_used: set[tuple[str, str, str, str]] = field(default_factory=set)
    relrec: dict[str, dict[tuple[str, str, str], list[dict[str, Any]]]] = field(default_factory=dict)
    progress: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # USUBJID -> DS items
    disposed: set[str] = field(default_factory=set)
    tallies: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def r5(self) -> bool:
        return self.version == "R5"

    def tally(self, kind: Kind, domain: str, variable: str | None, message: str, n: int = 1, *,
              target: str | None = None, record: str | None = None, value: Any = None,
              severity: Severity | None = None) -> None:
        """Aggregate one issue per (kind, domain, variable, message); flushed with its count."""
        if n <= 0:
            return
        key = (kind, domain, variable, message, target, severity)
        cur = self.tallies.get(key)
        if cur is None:
            self.tallies[key] = [n, record, value]
        else:
            cur[0] += n

    def flush(self) -> None:
        for (kind, domain, variable, message, target, severity), (n, record, value) in self.tallies.items():
            src = f"{domain}.{variable}" if variable else domain
            self.report.add(kind, f"{message} ({n} value{'s' if n != 1 else ''})", source=src,
                            target=target, record=record, value=value, severity=severity,
                            rule=rule_id(domain, variable) if variable and domain in SPECCED else None)
        self.tallies.clear()


SPECCED = frozenset(SUBJECT_DOMAINS)


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


# ----------------------------------------------------------------------------- column helpers
def _col(df: pd.DataFrame, name: str) -> list[Any]:
    if name not in df.columns:
        return [None] * len(df)
    s = df[name]
    if s.dtype.kind == "f":
        return [None if v != v else v for v in s.tolist()]
    return s.tolist()


def _dates(df: pd.DataFrame, var: str, ctx: Ctx, domain: str, keys: Any, *,
           date_only: bool = False, target: str = "") -> tuple[list[Any], list[Any]]:
    d = _dates_full(df, var, ctx, domain, keys, date_only=date_only, target=target)
    return d.value, d.original


def _dates_full(df: pd.DataFrame, var: str, ctx: Ctx, domain: str, keys: Any, *,
                date_only: bool = False, target: str = "") -> T.Dates:
    """``var`` converted (once per distinct value) and its issues tallied; ``keys[i]`` names row i."""
    if var not in df.columns:
        n = len(df)
        return T.Dates([None] * n, [None] * n, {}, np.zeros(n, dtype=np.intp), [None], [None])
    d = T.convert_dates(df[var], default_tz=ctx.default_tz, date_only=date_only)
    first = None
    if d.counts:
        has_orig = np.array([o is not None for o in d.distinct_original], dtype=bool)[d.codes]
        rows = np.flatnonzero(has_orig)
        first = keys[int(rows[0])] if len(rows) else None
    msgs = {
        "seconds-added": (Kind.INFERRED, "time without seconds: ':00' added (SDTM text kept in "
                                         "extension sdtm-dtc)"),
        "zone-added": (Kind.INFERRED, f"time without zone: --default-tz {ctx.default_tz} applied "
                                      "(SDTM text kept in extension sdtm-dtc)"),
        "zone-ambiguous": (Kind.LOSSY, f"local time repeated in {ctx.default_tz} (DST fold: two possible "
                                       "offsets): not chosen; FHIR keeps the date, the full SDTM text is "
                                       "kept in extension sdtm-dtc"),
        "zone-nonexistent": (Kind.LOSSY, f"local time that does not exist in {ctx.default_tz} (DST gap): "
                                         "FHIR keeps the date, the full SDTM text is kept in extension "
                                         "sdtm-dtc"),
        "time-cut": (Kind.LOSSY, "time without zone (or a date-only element): FHIR keeps the date; "
                                 "the full SDTM text is kept in extension sdtm-dtc (set --default-tz "
                                 "to keep the time)"),
        "cut": (Kind.LOSSY, "not a complete ISO 8601 value: FHIR keeps its valid leading part; "
                            "SDTM text kept in extension sdtm-dtc"),
        "invalid": (Kind.INVALID_VALUE, "not an ISO 8601 date: kept only in extension sdtm-dtc"),
    }
    for k, n in d.counts.items():
        kind, msg = msgs[k]
        ctx.tally(kind, domain, var, msg, n, target=target, record=first)
    return d


def _put_date(res: dict[str, Any], key: str, val: Any, orig: Any) -> None:
    if val is not None:
        res[key] = val
    if orig is not None:
        res["_" + key] = {"extension": [{"url": T.EXT_DTC, "valueString": orig}]}


def _period(start: Any, start_o: Any, end: Any, end_o: Any) -> dict[str, Any] | None:
    p: dict[str, Any] = {}
    _put_date(p, "start", start, start_o)
    _put_date(p, "end", end, end_o)
    return p or None


def _sub_ext(var: str, values: list[Any], numeric: bool) -> list[Any]:
    if numeric:
        return [None if v is None else {"url": var, "valueDecimal": T.num_json(v)} for v in values]
    return [None if v is None else {"url": var, "valueString": v} for v in values]


class Extras:
    """Per-row extensions: the carried SDTM variables, SUPPQUAL and RELREC of each record."""

    def __init__(self, df: pd.DataFrame, domain: str, ctx: Ctx, *, consumed: set[str],
                 idvars: dict[str, list[Any]], rows: bool = True) -> None:
        derived = derived_variables(domain) if domain in SPECCED else set()
        carried = [c for c in df.columns if c not in consumed and c not in KEYS and c not in derived]
        # (variable, column, numeric): for writers that serialise column by column (rows=False)
        self.carried = [(c, df[c], df[c].dtype.kind == "f") for c in carried]
        self.sdtm: list[list[dict[str, Any]]] | None = None
        if rows and carried:
            cols = [_sub_ext(c, _col(df, c), numeric) for c, _, numeric in self.carried]
            self.sdtm = [[e for e in row if e is not None] for row in zip(*cols, strict=False)]
        for c in [c for c in df.columns if c in derived]:    # column order: a stable report
            n = int(df[c].notna().sum())
            ctx.tally(Kind.LOSSY, domain, c, "derived variable not carried to FHIR (recomputed from "
                      "the reference start date by FHIR -> SDTM)", n)
        usubjid = _col(df, "USUBJID")
        self.supp: list[list[dict[str, Any]]] | None = None
        self.relrec: list[list[dict[str, Any]]] | None = None
        for attr, index in (("supp", ctx.supp.get(domain)), ("relrec", ctx.relrec.get(domain))):
            if not index:
                continue
            wanted = {k[1] for k in index}
            out: list[list[dict[str, Any]]] = []
            for i, u in enumerate(usubjid):
                found: list[dict[str, Any]] = []
                for iv in wanted:
                    val = "" if not iv else idvars.get(iv, [None] * len(usubjid))[i]
                    text = "" if val is None else (T.num_text(val) if isinstance(val, float) else str(val))
                    key: tuple[str, str, str] = (str(u or ""), str(iv), text or "")
                    hit = index.get(key)
                    if hit:
                        found.extend(hit)
                        if attr == "supp":
                            ctx.supp_used.add((domain, *key))
                out.append(found)
            setattr(self, attr, out)

    def ext(self, i: int) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        if self.sdtm is not None and self.sdtm[i]:
            out.append({"url": T.EXT_SDTM, "extension": self.sdtm[i]})
        if self.supp is not None:
            out.extend(self.supp[i])
        if self.relrec is not None:
            out.extend(self.relrec[i])
        return out or None


def _idvar_cols(df: pd.DataFrame) -> dict[str, list[Any]]:
    return {c: _col(df, c) for c in df.columns}


def _coded(table: str, system: str, values: list[Any], ctx: Ctx, domain: str, var: str,
           target: str) -> list[dict[str, str] | None]:
    """Code lookups once per distinct value; a code missing from the table is reported."""
    cache: dict[Any, dict[str, str] | None] = {}
    out: list[dict[str, str] | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        if v not in cache:
            cache[v] = T.code_row(table, system, v)
            if cache[v] is None:
                ctx.tally(Kind.UNMAPPED_CODE, domain, var, f"code not in table fhir_subject/{table} "
                          f"({system}); the SDTM text is kept", target=target, value=v)
        out.append(cache[v])
    return out


def _multiple_races(users: list[Any], races: list[Any],
                    ctx: Ctx) -> tuple[dict[int, list[dict[str, str]]], dict[int, set[str]]]:
    """Row -> OMB codings of a subject with RACE = MULTIPLE (SDTMIG 3.4 DM assumption: the races
    reported go to SUPPDM RACE1, RACE2...): one US Core ombCategory per SUPPDM race, as US Core records
    several races; FHIR -> SDTM reads several categories back as MULTIPLE + RACEn. Without SUPPDM races,
    or with a race outside the table, the row is left to the table lookup (unmapped, text kept).
    Also row -> the QNAMs the codings say in full (QLABEL "Race n", QORIG CRF, no QEVAL: what FHIR ->
    SDTM writes back), which need no suppqual extension (SUPPQUAL travels as an extension only where
    FHIR has no element)."""
    index = ctx.supp.get("DM") or {}
    out: dict[int, list[dict[str, str]]] = {}
    said: dict[int, set[str]] = {}
    for i, (u, r) in enumerate(zip(users, races, strict=True)):
        if r != "MULTIPLE":
            continue
        vals = [q for e in index.get((str(u or ""), "", ""), ())
                for q in [{s["url"]: s["valueString"] for s in e["extension"]}]
                if re.fullmatch(r"RACE\d+", q.get("QNAM", "")) and q.get("QVAL")]
        rows = [T.code_row("sdtm_to_fhir_codes.csv", "CDISC RACE", q["QVAL"]) for q in
                sorted(vals, key=lambda q: int(q["QNAM"][4:]))]
        found = [r for r in rows if r is not None]
        if rows and len(found) == len(rows):
            out[i] = found
            ordered = [q["QNAM"] for q in sorted(vals, key=lambda q: int(q["QNAM"][4:]))]
            distinct = len({q["QVAL"] for q in vals}) == len(vals)   # FHIR -> SDTM numbers distinct races
            said[i] = {q["QNAM"] for q in vals if distinct and q.get("QLABEL") == f"Race {q['QNAM'][4:]}"
                       and q.get("QORIG") == "CRF" and not q.get("QEVAL")
                       and ordered.index(q["QNAM"]) == int(q["QNAM"][4:]) - 1}
    if out:
        ctx.tally(Kind.INFERRED, "DM", "RACE", "RACE MULTIPLE written as one US Core ombCategory per SUPPDM "
                  "RACEn (SDTMIG 3.4 DM assumption); those SUPPDM rows are not repeated as suppqual "
                  "extensions", len(out), target="Patient.extension(us-core-race)")
    return out, said


def _ct_concept(value: Any, codelist: str, ctx: Ctx, domain: str, var: str, target: str,
                bound: tuple[str, str, str] | None = None) -> dict[str, Any] | None:
    """A CDISC CT value as a CodeableConcept: the NCIt coding of the term (C-code from the pinned CT)
    and the submission value as text. A value that is not a term of ``codelist`` keeps its text only
    and is reported. ``bound`` = (code table of mappings/codes, system, its name): the system the FHIR
    element is bound to; its code goes beside the NCIt coding when the table pairs the term with
    exactly one code of it (:func:`T.bound_pairs`), else the NCIt coding alone is reported (info)."""
    if value is None or value == "":
        return None
    cc: dict[str, Any] = {"text": value}
    coding = T.ncit_coding(codelist, value)
    if coding:
        cc["coding"] = [coding]
        if bound:
            table, system, name = bound
            code = T.bound_pairs(table, system).get(value)
            if code:
                cc["coding"] = [coding, {"system": system, "code": code}]
            else:
                ctx.tally(Kind.UNMAPPED_CODE, domain, var, f"no {name} code paired one-to-one with the term "
                          f"in codes/{table}: NCIt coding only", target=target, value=value,
                          severity=Severity.INFO)
    else:
        ctx.tally(Kind.UNMAPPED_CODE, domain, var, f"not a term of the CDISC CT codelist {codelist}: text only, "
                  "no NCIt coding", target=target, value=value)
    return cc


def _ct_concept_kept(value: Any, codelist: str, ctx: Ctx, domain: str, var: str, target: str,
                     ext: list[dict[str, Any]] | None, bound: tuple[str, str, str] | None = None,
                     ) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """:func:`_ct_concept`, and a sponsor term outside the codelist (text only) also kept as the SDTM value
    itself in the ``sdtm`` extension ``ext``, so FHIR -> SDTM gives it back exactly."""
    cc = _ct_concept(value, codelist, ctx, domain, var, target, bound=bound)
    if cc and "coding" not in cc:
        ext = _merge_sdtm(ext or [], [{"url": var, "valueString": value}])
    return cc, ext


def _coding(row: dict[str, str] | None) -> dict[str, str]:
    assert row is not None, "callers test the row first"
    return {"system": row["target_system"], "code": row["target_code"], "display": row["target_display"]}


def _require(df: pd.DataFrame, domain: str, path: Path | str, offset: int = 0) -> None:
    """Required variables present and filled; ``offset``: rows of the dataset before ``df`` (a chunk)."""
    for var in domain_spec(domain).get("required", []):
        if var not in df.columns:
            raise InputError(f"required variable {var} is missing from dataset {domain}", file=str(path),
                             field=var)
        miss = df[var].isna()
        if miss.any():
            i = offset + int(miss.to_numpy().nonzero()[0][0])
            raise InputError(f"required variable {var} is empty in row {i + 1}", file=str(path),
                             record=f"row {i + 1}", field=var)


def _num_texts(df: pd.DataFrame, var: str) -> list[str | None]:
    """``T.num_text`` of a column, once per distinct value of a float column."""
    if var not in df.columns:
        return [None] * len(df)
    s = df[var]
    if s.dtype.kind != "f":
        return [T.num_text(v) for v in _col(df, var)]
    codes, uniq = pd.factorize(s.to_numpy(dtype=np.float64))      # NaN -> -1: the last text, None
    return T.take([T.num_text(v) for v in uniq.tolist()] + [None], codes)


class IdLog:
    """The ids already written, exactly, in about 8 bytes each (a streamed LB/VS dataset of any size
    checks every id against all earlier ones). An id ``head + seq`` with an integer --SEQ text is kept
    as one int64, ``code(head) << 32 | seq``, in sorted numpy runs of geometric sizes (few runs,
    amortised merging); any other id (no or non-integer --SEQ) as its text."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.runs: list[np.ndarray] = []
        self.texts: set[str] = set()

    def first_repeat(self, heads: list[str], seqs: list[str | None], ids: list[str]) -> int | None:
        """The index of the first row whose id an earlier row (before or in this chunk) already has;
        None when there is none, and then the rows' ids are added."""
        hc, hu = pd.factorize(pd.Series(heads, dtype=object), use_na_sentinel=False)
        gcode = np.fromiter((self.codes.setdefault(h, len(self.codes)) for h in hu.tolist()),
                            dtype=np.int64, count=len(hu))
        sc, su = pd.factorize(pd.Series(seqs, dtype=object), use_na_sentinel=False)
        sint = np.fromiter((int(v) if isinstance(v, str) and v.isdigit() and len(v) <= 9
                            and (v == "0" or v[0] != "0") else -1 for v in su.tolist()),
                           dtype=np.int64, count=len(su))
        seq = sint[sc]
        numeric = seq >= 0
        keys = (gcode[hc] << 32) | np.where(numeric, seq, 0)
        first: int | None = None
        idx = np.flatnonzero(numeric)
        k = keys[idx]
        order = np.argsort(k, kind="stable")
        sk = k[order]
        rep = np.flatnonzero(sk[1:] == sk[:-1])
        if rep.size:
            first = int(idx[order[rep + 1]].min())
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, k), len(run) - 1)
            hit = np.flatnonzero(run[pos] == k)
            if hit.size:
                i = int(idx[hit[0]])
                first = i if first is None else min(first, i)
        texts = [ids[i] for i in np.flatnonzero(~numeric).tolist()]
        if texts:
            seen: set[str] = set()
            for i in np.flatnonzero(~numeric).tolist():
                if ids[i] in self.texts or ids[i] in seen:
                    first = i if first is None else min(first, i)
                    break
                seen.add(ids[i])
        if first is not None:
            return first
        self.texts.update(texts)
        new = sk
        while self.runs and len(self.runs[-1]) <= 2 * len(new):
            new = np.sort(np.concatenate((self.runs.pop(), new)), kind="stable")
        if len(new):
            self.runs.append(new)
        return None


def _seq_ids(df: pd.DataFrame, domain: str, prefix: str, ctx: Ctx, path: Path | str,
             seen: IdLog | None = None, offset: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic ids from STUDYID/USUBJID/--SEQ; a duplicated key is an InputError (its row
    counted over the dataset: ``offset`` rows come before ``df``)."""
    seqvar = f"{domain}SEQ"
    seqs = _num_texts(df, seqvar)
    studies = _col(df, "STUDYID")
    subjects = _col(df, "USUBJID")
    # T.make_id(prefix, slug(study), slug(subject), seq): the part before the seq once per subject
    heads = _per_distinct([studies, subjects], lambda st, u: "-".join(
        (prefix, T.slug(st or ctx.studyid), T.slug(u), "")), len(df))
    ids = list(map(operator.add, heads, [s or "" for s in seqs]))
    for i in np.flatnonzero(np.fromiter(map(len, ids), dtype=np.intp, count=len(ids)) > 64).tolist():
        ids[i] = T.make_id(ids[i])
    rep = (IdLog() if seen is None else seen).first_repeat(heads, seqs, ids)
    if rep is not None:
        raise InputError(f"duplicated key USUBJID/{seqvar} in dataset {domain} (row {offset + rep + 1})",
                         file=str(path), record=f"{subjects[rep]}/{seqs[rep]}", field=seqvar)
    return ids, seqs  # type: ignore[return-value]


# ----------------------------------------------------------------------------- resources
def build_studies(dm: pd.DataFrame, ts: pd.DataFrame | None, ctx: Ctx) -> list[dict[str, Any]]:
    studyids = sorted({s for s in _col(dm, "STUDYID") if s})
    if len(studyids) != 1:
        raise InputError(f"DM holds {len(studyids)} STUDYID values; one study per folder",
                         field="STUDYID")
    ctx.studyid = studyids[0]
    sid = T.make_id("study", T.slug(ctx.studyid))
    ctx.study_ref = f"ResearchStudy/{sid}"
    status = "unknown" if ctx.r5 else "active"
    if not ctx.r5:
        ctx.tally(Kind.INFERRED, "DM", "STUDYID", "FHIR R4 ResearchStudy.status is required and SDTM "
                  "has no study status: 'active' written", target="ResearchStudy.status")
    study: dict[str, Any] = {"resourceType": "ResearchStudy", "id": sid,
                             "identifier": [{"system": f"{T.SID}/studyid", "value": ctx.studyid}],
                             "status": status}
    if ts is not None and "TSPARMCD" in ts.columns:
        titles = [v for p, v in zip(_col(ts, "TSPARMCD"), _col(ts, "TSVAL"), strict=False) if p == "TITLE" and v]
        if titles:
            study["title"] = titles[0]
    groups = _arm_groups(dm, ctx)
    if groups:
        study["comparisonGroup" if ctx.r5 else "arm"] = groups
    out = [study]
    for site in sorted({s for s in _col(dm, "SITEID") if s}):
        rid = T.make_id("study", T.slug(ctx.studyid), "site", T.slug(site))
        ctx.site_refs[site] = f"ResearchStudy/{rid}"
        out.append({"resourceType": "ResearchStudy", "id": rid,
                    "identifier": [{"system": f"{T.SID}/siteid", "value": site}],
                    "status": status, "partOf": [{"reference": ctx.study_ref}]})
    return out


def arm_link_id(armcd: str) -> str:
    """R5 comparisonGroup.linkId (a FHIR id) of an ARMCD: the ARMCD itself when id-safe."""
    return T.slug(armcd)


def _arm_groups(dm: pd.DataFrame, ctx: Ctx) -> list[dict[str, Any]]:
    """The study's arms from DM (ARMCD/ARM and ACTARMCD/ACTARM pairs, first-seen order): R5
    ResearchStudy.comparisonGroup (linkId from ARMCD, name = ARM), R4 ResearchStudy.arm (name = ARM);
    ARMCD itself in the ``sdtm`` extension of the group (rules SDTM2FHIR-DM-13..16)."""
    pairs: dict[str, str] = {}
    for cd_var, name_var in (("ARMCD", "ARM"), ("ACTARMCD", "ACTARM")):
        for cd, name in zip(_col(dm, cd_var), _col(dm, name_var), strict=True):
            if cd and cd not in pairs:
                pairs[cd] = name or cd
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for cd, name in pairs.items():
        if names.setdefault(name, cd) != cd and not ctx.r5:
            ctx.tally(Kind.LOSSY, "DM", "ARM", "two ARMCD values share one ARM: R4 ResearchSubject.assignedArm "
                      "(an arm name) cannot tell them apart", target="ResearchStudy.arm.name")
        group: dict[str, Any] = {"extension": [{"url": T.EXT_SDTM, "extension": [
            {"url": "ARMCD", "valueString": cd}]}]}
        if ctx.r5:
            group["linkId"] = arm_link_id(cd)
        group["name"] = name
        out.append(group)
    return out


#: DSCAT -> the CDISC CT codelist of DSDECOD (SDTMIG 3.4 DS assumptions; CT C66727, C114118, C150811)
_DS_CODELIST = {"DISPOSITION EVENT": "NCOMPLT", "PROTOCOL MILESTONE": "PROTMLST", "OTHER EVENT": "OTHEVENT"}


def build_ds(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> None:
    """DS records -> ResearchSubject.progress (R5) or its R5 cross-version extension (R4)."""
    _require(df, "DS", path)
    keys = [f"{u}/{T.num_text(s)}" for u, s in zip(_col(df, "USUBJID"), _col(df, "DSSEQ"), strict=False)]
    start, start_o = _dates(df, "DSSTDTC", ctx, "DS", keys, target="ResearchSubject.progress.startDate")
    ex = Extras(df, "DS", ctx, consumed=mapped_variables("DS"), idvars=_idvar_cols(df))
    for i, (u, cat, decod, term) in enumerate(zip(_col(df, "USUBJID"), _col(df, "DSCAT"),
                                                  _col(df, "DSDECOD"), _col(df, "DSTERM"), strict=False)):
        kind = "Enrollment" if cat == "DISPOSITION EVENT" else "Milestone"
        if cat == "DISPOSITION EVENT":
            ctx.disposed.add(u)
        reason: dict[str, Any] = {}
        if decod:
            reason["coding"] = [T.cdisc_coding("DSDECOD", decod)]
            # the NCIt coding of the CT term in the codelist DSCAT names (SDTMIG 3.4 DS: NCOMPLT for a
            # disposition event, PROTMLST for a protocol milestone, OTHEVENT for another event)
            ncit = T.ncit_coding(_DS_CODELIST[cat], decod) if cat in _DS_CODELIST else None
            if ncit:
                reason["coding"].append(ncit)
        if term:
            reason["text"] = term
        item: dict[str, Any] = {"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/research-subject-state-type", "code": kind}]}}
        if reason:
            item["reason"] = reason
        _put_date(item, "startDate", start[i], start_o[i])
        extra = ex.ext(i)
        if extra:
            item["extension"] = extra
        ctx.progress.setdefault(u, []).append(item)


def _progress_r4(item: dict[str, Any]) -> dict[str, Any]:
    subs: list[dict[str, Any]] = [{"url": "type", "valueCodeableConcept": item["type"]}]
    if "reason" in item:
        subs.append({"url": "reason", "valueCodeableConcept": item["reason"]})
    if "startDate" in item:
        subs.append({"url": "startDate", "valueDateTime": item["startDate"]})
    extra = [dict(e) for e in item.get("extension", [])]
    orig = item.get("_startDate", {}).get("extension", [{}])[0].get("valueString")
    if orig is not None:
        # the DSSTDTC text a FHIR dateTime cannot hold (a time without a zone): in R5 the sdtm-dtc
        # extension of the startDate primitive; an R4 extension's value[x] takes no primitive extension
        # in the models that check our output (fhir.resources R4B), so it rides in the item's sdtm
        # extension as DSSTDTC (read back by FHIR -> SDTM DS)
        carried = next((e for e in extra if e.get("url") == T.EXT_SDTM), None)
        if carried is None:
            carried = {"url": T.EXT_SDTM, "extension": []}
            extra.insert(0, carried)
        carried["extension"] = [*carried.get("extension", []), {"url": "DSSTDTC", "valueString": orig}]
    subs.extend(extra)
    return {"url": T.R5_PROGRESS, "extension": subs}


def build_dm(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    _require(df, "DM", path)
    users = _col(df, "USUBJID")
    dup = pd.Series(users).duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise InputError(f"duplicated key USUBJID in dataset DM (row {i + 1})", file=str(path),
                         record=str(users[i]), field="USUBJID")
    keys = [str(u) for u in users]
    consumed = mapped_variables("DM")
    birth, birth_o = _dates(df, "BRTHDTC", ctx, "DM", keys, date_only=True, target="Patient.birthDate")
    death, death_o = _dates(df, "DTHDTC", ctx, "DM", keys, target="Patient.deceasedDateTime")
    rfst, rfst_o = _dates(df, "RFSTDTC", ctx, "DM", keys, target="ResearchSubject.period.start")
    rfen, rfen_o = _dates(df, "RFENDTC", ctx, "DM", keys, target="ResearchSubject.period.end")
    sex = _coded("sdtm_to_fhir_codes.csv", "CDISC SEX", _col(df, "SEX"), ctx, "DM", "SEX", "Patient.gender")
    race_raw = _col(df, "RACE")
    multiple, race_supp = _multiple_races(users, race_raw, ctx)
    race = _coded("sdtm_to_fhir_codes.csv", "CDISC RACE", [None if i in multiple else v for i, v in
                                                            enumerate(race_raw)], ctx, "DM", "RACE",
                  "Patient.extension(us-core-race)")
    eth = _coded("sdtm_to_fhir_codes.csv", "CDISC ETHNIC", _col(df, "ETHNIC"), ctx, "DM", "ETHNIC",
                 "Patient.extension(us-core-ethnicity)")
    # SEX codes outside the table stay in the sdtm extension (never guessed)
    sex_raw = _col(df, "SEX")
    arm, actarm = _col(df, "ARMCD"), _col(df, "ACTARMCD")
    arm_name, actarm_name = _col(df, "ARM"), _col(df, "ACTARM")
    ex = Extras(df, "DM", ctx, consumed=consumed, idvars={"": users})
    cols = [_col(df, c) for c in ("STUDYID", "SUBJID", "SITEID", "COUNTRY", "DTHFL", "RACE", "ETHNIC")]
    for i, u in enumerate(users):
        st, subjid, site, country, dthfl, race_t, eth_t = (c[i] for c in cols)
        pid = T.make_id("pat", T.slug(st or ctx.studyid), T.slug(u))
        ctx.patients[u] = pid
        pat: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        pext: list[dict[str, Any]] = []
        if race_t:
            subs: list[dict[str, Any]] = []
            if race[i]:
                subs.append({"url": "ombCategory", "valueCoding": _coding(race[i])})  # type: ignore[arg-type]
            subs.extend({"url": "ombCategory", "valueCoding": _coding(r)} for r in multiple.get(i, ()))
            subs.append({"url": "text", "valueString": race_t})
            pext.append({"url": T.US_CORE_RACE, "extension": subs})
        if eth_t:
            subs = []
            if eth[i]:
                subs.append({"url": "ombCategory", "valueCoding": _coding(eth[i])})  # type: ignore[arg-type]
            subs.append({"url": "text", "valueString": eth_t})
            pext.append({"url": T.US_CORE_ETHNICITY, "extension": subs})
        carried = [e for e in ex.ext(i) or () if not (
            i in race_supp and e["url"] == T.EXT_SUPPQUAL
            and any(s["url"] == "QNAM" and s["valueString"] in race_supp[i] for s in e["extension"]))]
        extra_vars: list[dict[str, Any]] = []
        if sex_raw[i] is not None and sex[i] is None:
            extra_vars.append({"url": "SEX", "valueString": sex_raw[i]})
        if extra_vars:
            if carried and carried[0]["url"] == T.EXT_SDTM:
                carried[0]["extension"].extend(extra_vars)
            else:
                carried.insert(0, {"url": T.EXT_SDTM, "extension": extra_vars})
        pext.extend(carried)
        if pext:
            pat["extension"] = pext
        pat["identifier"] = [{"system": f"{T.SID}/usubjid", "value": u}]
        if sex[i]:
            pat["gender"] = sex[i]["target_code"]  # type: ignore[index]
        _put_date(pat, "birthDate", birth[i], birth_o[i])
        if death[i] is not None or death_o[i] is not None:
            _put_date(pat, "deceasedDateTime", death[i], death_o[i])
        elif dthfl == "Y":
            pat["deceasedBoolean"] = True
        if country:
            pat["address"] = [{"country": country}]
        yield "Patient", pat

        rs: dict[str, Any] = {"resourceType": "ResearchSubject",
                              "id": T.make_id("rsub", T.slug(st or ctx.studyid), T.slug(u))}
        items = ctx.progress.get(u, [])
        if items and not ctx.r5:
            rs["extension"] = [_progress_r4(it) for it in items]
        if subjid:
            rs["identifier"] = [{"system": f"{T.SID}/subjid", "value": subjid}]
        if ctx.r5:
            rs["status"] = "active"
        else:
            rs["status"] = "off-study" if u in ctx.disposed else "on-study"
        if items and ctx.r5:
            rs["progress"] = items
        per = _period(rfst[i], rfst_o[i], rfen[i], rfen_o[i])
        if per:
            rs["period"] = per
        rs["study"] = {"reference": ctx.site_refs.get(site, ctx.study_ref)}
        rs["subject" if ctx.r5 else "individual"] = _ref("Patient", pid)
        # the study's arms are written on the ResearchStudy (_arm_groups): R5 points at their linkId,
        # R4 names them
        if ctx.r5:
            if arm[i]:
                rs["assignedComparisonGroup"] = arm_link_id(arm[i])
            if actarm[i]:
                rs["actualComparisonGroup"] = arm_link_id(actarm[i])
        else:
            if arm[i]:
                rs["assignedArm"] = arm_name[i] or arm[i]
            if actarm[i]:
                rs["actualArm"] = actarm_name[i] or actarm[i]
        yield "ResearchSubject", rs
    if not ctx.r5 and ctx.disposed:
        ctx.tally(Kind.INFERRED, "DS", "DSCAT", "R4 ResearchSubject.status derived: 'off-study' when the "
                  "subject has a DISPOSITION EVENT, else 'on-study'", len(ctx.disposed),
                  target="ResearchSubject.status")


def _subject_refs(df: pd.DataFrame, domain: str, ctx: Ctx) -> tuple[list[Any], list[bool]]:
    users = _col(df, "USUBJID")
    refs = []
    keep = []
    missing = 0
    cache: dict[Any, Any] = {}
    for u in users:
        if u not in cache:
            pid = ctx.patients.get(u)
            cache[u] = _ref("Patient", pid) if pid else None
        r = cache[u]
        refs.append(r)
        keep.append(r is not None)
        missing += r is None
    if missing:
        ctx.tally(Kind.MISSING, domain, "USUBJID", "record of a subject not in DM: not written (its "
                  "subject reference would not resolve)", missing, severity=Severity.WARNING)
    return refs, keep


def _encounter_refs(df: pd.DataFrame, ctx: Ctx) -> list[Any]:
    if "VISITNUM" not in df.columns or not ctx.encounters:
        return [None] * len(df)
    out: list[Any] = []
    for st, u, v in zip(_col(df, "STUDYID"), _col(df, "USUBJID"), _col(df, "VISITNUM"), strict=False):
        if v is None:
            out.append(None)
            continue
        rid = T.make_id("enc", T.slug(st or ctx.studyid), T.slug(u), T.num_text(v) or "")
        out.append(_ref("Encounter", rid) if rid in ctx.encounters else None)
    return out


def _subject_part(df: pd.DataFrame, domain: str, ctx: Ctx) -> tuple[tuple[np.ndarray, list[str]], list[bool]]:
    """``,"subject":{...}`` per row (once per distinct USUBJID) and whether the row has a Patient;
    the text form of :func:`_subject_refs`, with the same report entry."""
    codes, distinct = T.factorize(_col(df, "USUBJID"))
    pids = [ctx.patients.get(u) for u in distinct]
    has = np.array([bool(pid) for pid in pids], dtype=bool)[codes]
    missing = len(has) - int(has.sum())
    if missing:
        ctx.tally(Kind.MISSING, domain, "USUBJID", "record of a subject not in DM: not written (its "
                  "subject reference would not resolve)", missing, severity=Severity.WARNING)
    texts = [',"subject":' + _js(_ref("Patient", pid)) if pid else "" for pid in pids]
    return (codes, texts), has.tolist()


def _encounter_part(df: pd.DataFrame, ctx: Ctx) -> str | tuple[np.ndarray, list[str]]:
    """``,"encounter":{...}`` per row (once per distinct STUDYID/USUBJID/VISITNUM), or "" for all rows:
    the text form of :func:`_encounter_refs`."""
    if "VISITNUM" not in df.columns or not ctx.encounters:
        return ""

    def one(st: Any, u: Any, v: Any) -> str:
        if v is None:
            return ""
        rid = T.make_id("enc", T.slug(st or ctx.studyid), T.slug(u), T.num_text(v) or "")
        return ',"encounter":' + _js(_ref("Encounter", rid)) if rid in ctx.encounters else ""

    return _part([_col(df, "STUDYID"), _col(df, "USUBJID"), _col(df, "VISITNUM")], one, len(df))


def build_sv(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    _require(df, "SV", path)
    users, visits = _col(df, "USUBJID"), [T.num_text(v) for v in _col(df, "VISITNUM")]
    keys = [f"{u}/VISITNUM {v}" for u, v in zip(users, visits, strict=False)]
    st, st_o = _dates(df, "SVSTDTC", ctx, "SV", keys, target="Encounter.period.start")
    en, en_o = _dates(df, "SVENDTC", ctx, "SV", keys, target="Encounter.period.end")
    subj, keep = _subject_refs(df, "SV", ctx)
    ex = Extras(df, "SV", ctx, consumed=mapped_variables("SV"), idvars=_idvar_cols(df))
    names = _col(df, "VISIT")
    occur = _col(df, "SVOCCUR")
    classes = _encounter_class(_col(df, "SVCNTMOD"), ctx)
    studies = _col(df, "STUDYID")
    # SDTMIG key is USUBJID/VISITNUM/SVSTDTC: a repeated VISITNUM gets its start date in the id, and
    # records of other domains with that VISITNUM get no encounter reference (it would be ambiguous)
    starts = _col(df, "SVSTDTC")
    pairs = pd.Series([f"{u}\x00{v}" for u, v in zip(users, visits, strict=False)])
    repeated = pairs.duplicated(keep=False).tolist()
    if any(repeated):
        ctx.tally(Kind.INFERRED, "SV", "VISITNUM", "VISITNUM repeated for a subject: Encounter id takes "
                  "SVSTDTC too, and other domains' records of that visit get no encounter reference",
                  sum(repeated), target="Encounter.id")
    for i, u in enumerate(users):
        if not keep[i]:
            continue
        base_id = T.make_id("enc", T.slug(studies[i] or ctx.studyid), T.slug(u), visits[i] or "")
        rid = base_id if not repeated[i] else T.make_id("enc", T.slug(studies[i] or ctx.studyid), T.slug(u),
                                                        visits[i] or "", T.slug(starts[i] or "none"))
        if rid in ctx.encounters or rid in ctx.ambiguous_visits:
            raise InputError(f"duplicated key USUBJID/VISITNUM/SVSTDTC in dataset SV (row {i + 1})",
                             file=str(path), record=keys[i], field="VISITNUM")
        ctx.encounters.add(rid)
        if repeated[i]:
            ctx.ambiguous_visits.add(base_id)
        enc: dict[str, Any] = {"resourceType": "Encounter", "id": rid}
        extra = ex.ext(i)
        if extra:
            enc["extension"] = extra
        enc["identifier"] = [{"system": f"{T.SID}/visitnum", "value": visits[i]}]
        # a planned visit that did not occur (SVOCCUR N) is a cancelled encounter, never a finished one
        enc["status"] = "cancelled" if occur[i] == "N" else "completed" if ctx.r5 else "finished"
        if classes[i]:
            enc["class"] = [{"coding": [classes[i]]}] if ctx.r5 else classes[i]
        elif not ctx.r5:     # R4 class is 1..1 (R5 0..*: left out)
            enc["class"] = {"extension": [{"url": T.DATA_ABSENT, "valueCode": "unknown"}]}
        if names[i]:
            enc["type"] = [{"text": names[i]}]
        enc["subject"] = subj[i]
        per = _period(st[i], st_o[i], en[i], en_o[i])
        if per:
            enc["actualPeriod" if ctx.r5 else "period"] = per
        yield "Encounter", enc


def _encounter_class(modes: list[Any], ctx: Ctx) -> list[dict[str, str] | None]:
    """Encounter.class (v3 ActCode) from SVCNTMOD (rule SDTM2FHIR-SV-06, sdtm_to_fhir_codes.csv: the
    remote contact modes -> VR 'virtual'); a mode without a row (IN PERSON says neither ambulatory,
    home health nor inpatient) gives no class, reported (info). Without a class R4 (class 1..1) gets
    the data-absent-reason extension 'unknown' on the Coding (reported); R5 (0..*) leaves it out."""
    rows = [T.code_row("sdtm_to_fhir_codes.csv", "CDISC CNTMODE", m) if m else None for m in modes]
    unmapped = [m for m, r in zip(modes, rows, strict=True) if m and r is None]
    ctx.tally(Kind.UNMAPPED_CODE, "SV", "SVCNTMOD", "contact mode without a v3 ActEncounterCode in "
              "sdtm_to_fhir_codes.csv: no Encounter.class from it; kept in the sdtm extension", len(unmapped),
              target="Encounter.class", value=unmapped[0] if unmapped else None, severity=Severity.INFO)
    if not ctx.r5:
        ctx.tally(Kind.MISSING, "SV", "SVCNTMOD", "R4 Encounter.class is required and SV does not say it: "
                  "data-absent-reason 'unknown'", sum(r is None for r in rows), target="Encounter.class",
                  severity=Severity.INFO)
    return [_coding(r) if r else None for r in rows]


def _common(df: pd.DataFrame, domain: str, prefix: str, ctx: Ctx, path: Path | str,
            ) -> tuple[list[str], list[str], list[Any], list[bool], list[Any], Extras, list[str]]:
    _require(df, domain, path)
    ids, seqs = _seq_ids(df, domain, prefix, ctx, path)
    subj, keep = _subject_refs(df, domain, ctx)
    enc = _encounter_refs(df, ctx)
    ex = Extras(df, domain, ctx, consumed=mapped_variables(domain), idvars=_idvar_cols(df))
    keys = [f"{u}/{s}" for u, s in zip(_col(df, "USUBJID"), seqs, strict=False)]
    return ids, seqs, subj, keep, enc, ex, keys


def _start(res: dict[str, Any], rtype: str, rid: str, ext: Any, seq_system: str, seq: str | None) -> None:
    res["resourceType"] = rtype
    res["id"] = rid
    if ext:
        res["extension"] = ext
    if seq is not None:
        res["identifier"] = [{"system": seq_system, "value": seq}]


def build_ae(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids, seqs, subj, keep, enc, ex, keys = _common(df, "AE", "ae", ctx, path)
    st, st_o = _dates(df, "AESTDTC", ctx, "AE", keys, target="AdverseEvent.occurrence")
    en, en_o = _dates(df, "AEENDTC", ctx, "AE", keys, target="AdverseEvent.occurrence")
    rec, rec_o = _dates(df, "AEDTC", ctx, "AE", keys, target="AdverseEvent.recordedDate")
    table = "sdtm_to_fhir_codes.csv"
    ser = _coded(table, "AESER R5" if ctx.r5 else "AESER R4", _col(df, "AESER"), ctx, "AE", "AESER",
                 "AdverseEvent.seriousness")
    ser, said = _seriousness(df, ser, ctx)
    out = _coded(table, "AEOUT", _col(df, "AEOUT"), ctx, "AE", "AEOUT", "AdverseEvent.outcome")
    sev = (_coded(table, "AESEV", _col(df, "AESEV"), ctx, "AE", "AESEV", "AdverseEvent.severity")
           if not ctx.r5 else [None] * len(df))
    raw = {c: _col(df, c) for c in ("AETERM", "AEDECOD", "AESER", "AEOUT", "AESEV", "AEENRTPT")}
    # AEPTCD is Num in SDTM (a float column when read): Coding.code is a string, the integer's text
    raw["AEPTCD"] = _num_texts(df, "AEPTCD")
    sysr = f"{T.SID}/aeseq"
    for i in range(len(df)):
        if not keep[i]:
            continue
        res: dict[str, Any] = {}
        extra = ex.ext(i) or []
        flag = said[i]
        if flag:
            extra = _drop_sdtm(extra, flag)
        # codes missing from a table stay in the sdtm extension (never guessed, never dropped)
        lost = [{"url": c, "valueString": raw[c][i]} for c, m in (("AESER", ser), ("AEOUT", out),
                                                                   ("AESEV", sev))
                if raw[c][i] is not None and m[i] is None]   # R5 has no AdverseEvent.severity
        if lost:
            extra = _merge_sdtm(extra, lost)
        if not ctx.r5 and (en[i] is not None or en_o[i] is not None):
            extra.append({"url": T.R5_AE_OCCURRENCE, "valuePeriod": _period(st[i], st_o[i], en[i], en_o[i])})
        _start(res, "AdverseEvent", ids[i], extra or None, sysr, seqs[i])
        if not ctx.r5 and "identifier" in res:     # R4 AdverseEvent.identifier is 0..1
            res["identifier"] = res["identifier"][0]
        code: dict[str, Any] = {}
        if raw["AEDECOD"][i] or raw["AEPTCD"][i]:
            c: dict[str, Any] = {"system": T.MEDDRA}
            if raw["AEPTCD"][i]:
                c["code"] = raw["AEPTCD"][i]
            if raw["AEDECOD"][i]:
                c["display"] = raw["AEDECOD"][i]
            code["coding"] = [c]
        if raw["AETERM"][i]:
            code["text"] = raw["AETERM"][i]
        if ctx.r5:
            # R5 AdverseEvent.status (event-status) is the state of the event: an AE with no end that is
            # ongoing (AEENRTPT ONGOING; AEOUT NOT RECOVERED/NOT RESOLVED or RECOVERING/RESOLVING) is
            # in-progress, not completed
            ongoing = en[i] is None and en_o[i] is None and (
                raw["AEENRTPT"][i] == "ONGOING" or raw["AEOUT"][i] in _AE_ONGOING_OUTCOMES)
            res["status"] = "in-progress" if ongoing else "completed"
        res["actuality"] = "actual"
        if code:
            res["code" if ctx.r5 else "event"] = code
        res["subject"] = subj[i]
        if enc[i]:
            res["encounter"] = enc[i]
        if ctx.r5:
            if en[i] is not None or en_o[i] is not None:
                res["occurrencePeriod"] = _period(st[i], st_o[i], en[i], en_o[i])
            else:
                _put_date(res, "occurrenceDateTime", st[i], st_o[i])
        else:
            _put_date(res, "date", st[i], st_o[i])
        _put_date(res, "recordedDate", rec[i], rec_o[i])
        if ser[i]:
            res["seriousness"] = {"coding": [_coding(ser[i])]}
        if sev[i]:
            res["severity"] = {"coding": [_coding(sev[i])]}
        if out[i]:
            oc = {"coding": [_coding(out[i])]}
            res["outcome"] = [oc] if ctx.r5 else oc
        res["study"] = [{"reference": ctx.study_ref}]
        yield "AdverseEvent", res


#: AEOUT terms (CT C66768) of an AE not (yet) resolved
_AE_ONGOING_OUTCOMES = frozenset({"NOT RECOVERED/NOT RESOLVED", "RECOVERING/RESOLVING"})

#: the serious-event criteria flags of SDTMIG 3.4 AE (codelist NY C66742)
SERIOUS_FLAGS = ("AESCAN", "AESCONG", "AESDISAB", "AESDTH", "AESHOSP", "AESLIFE", "AESOD", "AESMIE", "AESINTV")


def _seriousness(df: pd.DataFrame, ser: list[dict[str, str] | None], ctx: Ctx,
                 ) -> tuple[list[dict[str, str] | None], list[str | None]]:
    """AdverseEvent.seriousness per FHIR version (sdtm_to_fhir_codes.csv). R4's code system has a child
    of Serious per criterion: AESER = Y with exactly one criterion flag Y that has one gets that code,
    and the flag it says is not repeated in the sdtm extension (returned per row). Several flags, a flag
    without an R4 code (AESMIE, AESCAN, AESOD) or R5 (serious | non-serious, and AdverseEvent has no
    criteria element): the generic code, the flags stay in the sdtm extension (reported, info)."""
    said: list[str | None] = [None] * len(df)
    flags = [(c, _col(df, c)) for c in SERIOUS_FLAGS if c in df.columns]
    if not flags:
        return ser, said
    out = list(ser)
    counts = {"r5": 0, "several": 0, "no-code": 0}
    for i, s in enumerate(_col(df, "AESER")):
        ys = [c for c, vals in flags if vals[i] == "Y"] if s == "Y" else []
        if not ys:
            continue
        if ctx.r5:
            counts["r5"] += 1
        elif len(ys) > 1:
            counts["several"] += 1
        elif (row := T.code_row("sdtm_to_fhir_codes.csv", "AESER R4 criterion", ys[0])) is None:
            counts["no-code"] += 1
        else:
            out[i], said[i] = row, ys[0]
    why = {"r5": "R5 seriousness says only serious | non-serious and AdverseEvent has no criteria element",
           "several": "several serious criteria flags are Y: one R4 seriousness code cannot say them all",
           "no-code": "the one serious criterion flag Y (AESMIE, AESCAN or AESOD) has no R4 seriousness code"}
    for k, n in counts.items():
        ctx.tally(Kind.LOSSY, "AE", "AESER", f"{why[k]}: generic serious code, the criteria flags stay in the "
                  "sdtm extension", n, target="AdverseEvent.seriousness", severity=Severity.INFO)
    return out, said


def _drop_sdtm(extra: list[dict[str, Any]], var: str) -> list[dict[str, Any]]:
    """``extra`` without the sdtm sub-extension of ``var`` (said by a FHIR element instead)."""
    out: list[dict[str, Any]] = []
    for e in extra:
        if e["url"] == T.EXT_SDTM:
            subs = [s for s in e["extension"] if s["url"] != var]
            if subs:
                out.append({**e, "extension": subs})
        else:
            out.append(e)
    return out


def _merge_sdtm(extra: list[dict[str, Any]], subs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if extra and extra[0]["url"] == T.EXT_SDTM:
        extra[0]["extension"].extend(subs)
        return extra
    return [{"url": T.EXT_SDTM, "extension": subs}, *extra]


def _quantity(values: list[Any], units: list[Any], ctx: Ctx, domain: str, var: str) -> list[Any]:
    out: list[dict[str, Any] | None] = []
    for v, u in zip(values, units, strict=False):
        if v is None and u is None:
            out.append(None)
            continue
        q = _ucum_quantity(v, u)
        if u is not None and "code" not in q:
            ctx.tally(Kind.UNMAPPED_CODE, domain, var, "unit not in the CDISC Unit-UCUM table "
                      "(codes/ucum_cdisc_units.csv): Quantity.unit only, no UCUM code (the unit also kept in the "
                      "sdtm extension)", target="Quantity.code", value=u)
        out.append(q)
    return out


def _keep_uncoded_unit(ext: list[dict[str, Any]] | None, q: dict[str, Any] | None,
                       var: str) -> list[dict[str, Any]] | None:
    """A dose unit with no UCUM code (Quantity.unit text only, which FHIR -> SDTM does not read as a
    CDISC unit) kept as the SDTM value in the sdtm extension: CMDOSU IN and % (v/v) of the CDISC pilot
    were lost on the round trip."""
    if q and "unit" in q and "code" not in q:
        return _merge_sdtm(ext or [], [{"url": var, "valueString": q["unit"]}])
    return ext


def _dose(df: pd.DataFrame, var: str, unit: str, ctx: Ctx, domain: str) -> list[Any]:
    texts = [None if v is None else T.num_text(v) for v in _col(df, var)]
    vals = [None if t is None else orjson.Fragment(t.encode()) for t in texts]
    return _quantity(vals, _col(df, unit), ctx, domain, unit)


# Dosage.route (R4 and R5): example binding SNOMED CT route codes (ValueSet route-codes)
_ROUTE_BOUND = ("fhir_route.csv", T.SNOMED, "SNOMED CT route")
#: Procedure.bodySite: FHIR R4/R5 ValueSet body-site (example), SNOMED CT body structures
_BODY_SITE_BOUND = ("fhir_body_site.csv", T.SNOMED, "SNOMED CT body structure")
#: Condition.severity: FHIR R4/R5 ValueSet condition-severity (preferred), SNOMED CT 255604002 | 6736007 | 24484000
_SEVERITY_BOUND = ("fhir_ae_severity.csv", T.SNOMED, "SNOMED CT condition-severity")


def _medication_subject(res: dict[str, Any], ctx: Ctx, treatment: Any, subject: Any, encounter: Any) -> None:
    """Medication (R5 CodeableReference.concept, R4 medicationCodeableConcept), subject and encounter
    (R4 MedicationStatement/MedicationAdministration call it context) for CM and EX."""
    med = {"text": treatment}
    if ctx.r5:
        res["medication"] = {"concept": med}
    else:
        res["medicationCodeableConcept"] = med
    res["subject"] = subject
    if encounter:
        res["encounter" if ctx.r5 else "context"] = encounter


def build_cm(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids, seqs, subj, keep, enc, ex, keys = _common(df, "CM", "cm", ctx, path)
    st, st_o = _dates(df, "CMSTDTC", ctx, "CM", keys, target="MedicationStatement.effectivePeriod")
    en, en_o = _dates(df, "CMENDTC", ctx, "CM", keys, target="MedicationStatement.effectivePeriod")
    da, da_o = _dates(df, "CMDTC", ctx, "CM", keys, target="MedicationStatement.dateAsserted")
    dose = _dose(df, "CMDOSE", "CMDOSU", ctx, "CM")
    raw = {c: _col(df, c) for c in ("CMTRT", "CMINDC", "CMROUTE", "CMDOSFRQ", "CMDOSTXT", "CMCAT", "CMOCCUR",
                                     "CMSTAT")}
    for i in range(len(df)):
        if not keep[i]:
            continue
        res: dict[str, Any] = {}
        freq, ext = _ct_concept_kept(raw["CMDOSFRQ"][i], "FREQ", ctx, "CM", "CMDOSFRQ",
                                     "MedicationStatement.dosage.timing.code", ex.ext(i))
        ext = _keep_uncoded_unit(ext, dose[i], "CMDOSU")
        _start(res, "MedicationStatement", ids[i], ext, f"{T.SID}/cmseq", seqs[i])
        # a medication not taken (CMOCCUR N, or CMSTAT NOT DONE: SDTMIG 3.4 --OCCUR/--STAT) is no statement of a
        # medication taken: R4 status not-taken, R5 adherence not-taking (R5 status says only recorded)
        not_taken = raw["CMOCCUR"][i] == "N" or raw["CMSTAT"][i] == "NOT DONE"
        res["status"] = "recorded" if ctx.r5 else "not-taken" if not_taken else "unknown"
        if raw["CMCAT"][i]:
            res["category"] = [{"text": raw["CMCAT"][i]}] if ctx.r5 else {"text": raw["CMCAT"][i]}
        _medication_subject(res, ctx, raw["CMTRT"][i] or "(no CMTRT)", subj[i], enc[i])
        per = _period(st[i], st_o[i], en[i], en_o[i])
        if per:
            res["effectivePeriod"] = per
        _put_date(res, "dateAsserted", da[i], da_o[i])
        if raw["CMINDC"][i]:
            res["reason" if ctx.r5 else "reasonCode"] = (
                [{"concept": {"text": raw["CMINDC"][i]}}] if ctx.r5 else [{"text": raw["CMINDC"][i]}])
        dos: dict[str, Any] = {}
        if raw["CMDOSTXT"][i]:
            dos["text"] = raw["CMDOSTXT"][i]
        if freq:
            dos["timing"] = {"code": freq}
        if raw["CMROUTE"][i]:
            dos["route"] = _ct_concept(raw["CMROUTE"][i], "ROUTE", ctx, "CM", "CMROUTE",
                                       "MedicationStatement.dosage.route", bound=_ROUTE_BOUND)
        if dose[i]:
            dos["doseAndRate"] = [{"doseQuantity": dose[i]}]
        if dos:
            res["dosage"] = [dos]
        if not_taken and ctx.r5:
            res["adherence"] = {"code": {"coding": [{
                "system": "http://hl7.org/fhir/CodeSystem/medication-statement-adherence", "code": "not-taking",
                "display": "Not Taking"}]}}
        yield "MedicationStatement", res
    if any(v is None for v in raw["CMTRT"]):
        ctx.tally(Kind.MISSING, "CM", "CMTRT", "CMTRT empty: medication text '(no CMTRT)' written",
                  sum(v is None for v in raw["CMTRT"]), target="MedicationStatement.medication")


def build_ex(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids, seqs, subj, keep, enc, ex, keys = _common(df, "EX", "ex", ctx, path)
    st, st_o = _dates(df, "EXSTDTC", ctx, "EX", keys, target="MedicationAdministration.effective")
    en, en_o = _dates(df, "EXENDTC", ctx, "EX", keys, target="MedicationAdministration.effective")
    dose = _dose(df, "EXDOSE", "EXDOSU", ctx, "EX")
    raw = {c: _col(df, c) for c in ("EXTRT", "EXROUTE", "EXOCCUR")}
    eff = "occurence" if ctx.r5 else "effective"     # R5 spells it 'occurence'
    for i in range(len(df)):
        if not keep[i]:
            continue
        res: dict[str, Any] = {}
        _start(res, "MedicationAdministration", ids[i], _keep_uncoded_unit(ex.ext(i), dose[i], "EXDOSU"),
               f"{T.SID}/exseq", seqs[i])
        res["status"] = "not-done" if raw["EXOCCUR"][i] == "N" else "completed"
        _medication_subject(res, ctx, raw["EXTRT"][i], subj[i], enc[i])
        per = _period(st[i], st_o[i], en[i], en_o[i])
        if per:
            res[f"{eff}Period"] = per
        else:
            res[f"_{eff}DateTime"] = {"extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
        dos: dict[str, Any] = {}
        if raw["EXROUTE"][i]:
            dos["route"] = _ct_concept(raw["EXROUTE"][i], "ROUTE", ctx, "EX", "EXROUTE",
                                       "MedicationAdministration.dosage.route", bound=_ROUTE_BOUND)
        if dose[i]:
            dos["dose"] = dose[i]
        if dos:
            res["dosage"] = dos
        yield "MedicationAdministration", res


def build_mh(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids, seqs, subj, keep, enc, ex, keys = _common(df, "MH", "mh", ctx, path)
    st, st_o = _dates(df, "MHSTDTC", ctx, "MH", keys, target="Condition.onsetDateTime")
    en, en_o = _dates(df, "MHENDTC", ctx, "MH", keys, target="Condition.abatementDateTime")
    rec, rec_o = _dates(df, "MHDTC", ctx, "MH", keys, target="Condition.recordedDate")
    raw = {c: _col(df, c) for c in ("MHTERM", "MHDECOD", "MHCAT", "MHSEV", "MHENRTPT", "MHENTPT", "MHENRF",
                                     "MHPRESP", "MHOCCUR")}
    refuted = _refuted(raw, ctx)
    status = _clinical_status(raw, en, en_o, refuted, ctx)
    # Condition.severity: preferred binding SNOMED CT (ValueSet condition-severity); the SNOMED CT code
    # codes/fhir_ae_severity.csv pairs one-to-one with the CDISC term goes beside its NCIt coding
    for i in range(len(df)):
        if not keep[i]:
            continue
        res: dict[str, Any] = {}
        sev, ext = _ct_concept_kept(raw["MHSEV"][i], "AESEV", ctx, "MH", "MHSEV", "Condition.severity", ex.ext(i),
                                    bound=_SEVERITY_BOUND)
        _start(res, "Condition", ids[i], ext, f"{T.SID}/mhseq", seqs[i])
        # R5 clinicalStatus is 1..1: 'unknown' when the record does not say it
        if status[i] or ctx.r5:
            res["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": status[i] or "unknown"}]}
        if refuted[i]:
            res["verificationStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "refuted"}]}
        if raw["MHCAT"][i]:
            res["category"] = [{"text": raw["MHCAT"][i]}]
        if sev:
            res["severity"] = sev
        code: dict[str, Any] = {}
        if raw["MHDECOD"][i]:
            code["coding"] = [{"system": T.MEDDRA, "display": raw["MHDECOD"][i]}]
        if raw["MHTERM"][i]:
            code["text"] = raw["MHTERM"][i]
        if code:
            res["code"] = code
        res["subject"] = subj[i]
        if enc[i]:
            res["encounter"] = enc[i]
        _put_date(res, "onsetDateTime", st[i], st_o[i])
        _put_date(res, "abatementDateTime", en[i], en_o[i])
        _put_date(res, "recordedDate", rec[i], rec_o[i])
        yield "Condition", res


def _refuted(raw: dict[str, list[Any]], ctx: Ctx) -> list[bool]:
    """Condition.verificationStatus refuted for a pre-specified condition that did not occur: MHPRESP = Y
    and MHOCCUR = N (rule SDTM2FHIR-MH-10; SDTMIG 3.4 MH: MHOCCUR only for pre-specified terms; Joint IG
    MH MHOCCUR <- verificationStatus, read back by codes/fhir_condition_status.csv as MHOCCUR N with
    MHPRESP Y). MHOCCUR N without MHPRESP Y, or U: no verificationStatus (reported); both variables stay
    in the sdtm extension."""
    out = [p == "Y" and o == "N" for p, o in zip(raw["MHPRESP"], raw["MHOCCUR"], strict=True)]
    odd = sum(bool(o) and not r and o != "Y" for o, r in zip(raw["MHOCCUR"], out, strict=True))
    ctx.tally(Kind.LOSSY, "MH", "MHOCCUR", "MHOCCUR N without MHPRESP Y, or U: no verificationStatus; kept in "
              "the sdtm extension", odd, target="Condition.verificationStatus", severity=Severity.INFO)
    return out


def _clinical_status(raw: dict[str, list[Any]], en: list[Any], en_o: list[Any], refuted: list[bool],
                     ctx: Ctx) -> list[str | None]:
    """Condition.clinicalStatus (condition-clinical) where MH says it unambiguously (rule SDTM2FHIR-MH-09):
    an end date (MHENDTC) -> inactive: an abated Condition must say inactive/resolved/remission (R4
    con-4, R5 con-3) and 'inactive' is the parent of the other two, so it claims no more than the end
    date does; else MHENRTPT (SDTMIG 3.4 MH / 4.4.7, relative to the time point MHENTPT) ONGOING ->
    active, BEFORE -> inactive (ended before it). COINCIDENT, AFTER, U, MHENRF alone (relative to the
    study reference period, not to the record), no MHENTPT or a refuted condition: no status (reported,
    info); the
    variables stay in the sdtm extension either way. FHIR -> SDTM reads active back as ONGOING and
    inactive without an end date as BEFORE (codes/fhir_condition_status.csv)."""
    out: list[str | None] = []
    clash = unsaid = 0
    for i, (rtpt, tpt, rf) in enumerate(zip(raw["MHENRTPT"], raw["MHENTPT"], raw["MHENRF"], strict=True)):
        if en[i] is not None or en_o[i] is not None:
            out.append("inactive")
            clash += rtpt == "ONGOING"
        elif tpt and rtpt in ("ONGOING", "BEFORE") and not refuted[i]:
            out.append("active" if rtpt == "ONGOING" else "inactive")
        else:
            out.append(None)
            unsaid += bool(rtpt or rf)
    ctx.tally(Kind.LOSSY, "MH", "MHENRTPT", "MHENRTPT ONGOING beside an end date MHENDTC: clinicalStatus "
              "inactive (an abated Condition cannot be active)", clash, target="Condition.clinicalStatus",
              severity=Severity.WARNING)
    ctx.tally(Kind.LOSSY, "MH", "MHENRTPT", "MHENRTPT/MHENRF do not say the clinical status unambiguously "
              "(COINCIDENT, AFTER, U, MHENRF alone, no MHENTPT, or MHOCCUR N): no clinicalStatus from them (R5: unknown); "
              "kept in the sdtm extension", unsaid, target="Condition.clinicalStatus", severity=Severity.INFO)
    return out


def build_pr(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids, seqs, subj, keep, enc, ex, keys = _common(df, "PR", "pr", ctx, path)
    st, st_o = _dates(df, "PRSTDTC", ctx, "PR", keys, target="Procedure.performed")
    en, en_o = _dates(df, "PRENDTC", ctx, "PR", keys, target="Procedure.performed")
    raw = {c: _col(df, c) for c in ("PRTRT", "PROCCUR", "PRSTAT", "PRREASND", "PRINDC", "PRLOC")}
    occ = "occurrence" if ctx.r5 else "performed"
    for i in range(len(df)):
        if not keep[i]:
            continue
        res: dict[str, Any] = {}
        # PRLOC: a CT LOC term gets its NCIt coding (+ the SNOMED CT body structure codes/fhir_body_site.csv
        # pairs with it); a sponsor term keeps its text and stays in the sdtm extension
        site, ext = _ct_concept_kept(raw["PRLOC"][i], "LOC", ctx, "PR", "PRLOC", "Procedure.bodySite", ex.ext(i),
                                     bound=_BODY_SITE_BOUND)
        _start(res, "Procedure", ids[i], ext, f"{T.SID}/prseq", seqs[i])
        # a procedure not done (PRSTAT NOT DONE, SDTMIG 3.4 --STAT) or that did not occur (PROCCUR N) is
        # FHIR Procedure.status not-done, with PRREASND as statusReason — never 'completed'
        not_done = raw["PROCCUR"][i] == "N" or raw["PRSTAT"][i] == "NOT DONE"
        res["status"] = "not-done" if not_done else "completed"
        if raw["PRREASND"][i]:
            res["statusReason"] = {"text": raw["PRREASND"][i]}
        if raw["PRTRT"][i]:
            res["code"] = {"text": raw["PRTRT"][i]}
        res["subject"] = subj[i]
        if enc[i]:
            res["encounter"] = enc[i]
        per = _period(st[i], st_o[i], en[i], en_o[i])
        if per:
            res[f"{occ}Period"] = per
        if raw["PRINDC"][i]:
            res["reason" if ctx.r5 else "reasonCode"] = (
                [{"concept": {"text": raw["PRINDC"][i]}}] if ctx.r5 else [{"text": raw["PRINDC"][i]}])
        if site:
            res["bodySite"] = [site]
        yield "Procedure", res


_CATEGORY = {
    "VS": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "vital-signs", "display": "Vital Signs"}]},
    "LB": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "laboratory", "display": "Laboratory"}]},
}


def _js(value: Any) -> str:
    return orjson.dumps(value).decode()


def _distinct(cols: list[Any]) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Rows grouped by the distinct combination of ``cols`` (lists or arrays of equal length).

    Returns the row codes (first-seen order), the first row of each combination and its row count.
    """
    codes, distinct = T.factorize(cols[0])
    if len(cols) == 1:      # (missing has the last code, wherever it first occurs)
        _, first = np.unique(codes, return_index=True)
        return codes, first.tolist(), np.bincount(codes)
    for col in cols[1:]:
        c, d = T.factorize(col)
        codes, _ = pd.factorize(codes.astype(np.int64, copy=False) * len(d) + c)
    # pd.factorize numbers in first-seen order: a code's first row is where the running maximum grows
    new = np.empty(len(codes), dtype=bool)
    new[:1] = True
    new[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    return codes, np.flatnonzero(new).tolist(), np.bincount(codes)


def _per_distinct(cols: list[Any], build: Callable[..., str], n: int) -> list[str]:
    """``build(*values)`` once per distinct combination of the columns, expanded to the rows."""
    if n == 0:
        return []
    if len(cols) == 1:
        codes, distinct = T.factorize(cols[0])
        return T.take([build(v) for v in distinct], codes)
    codes, first, _ = _distinct(cols)
    return T.take([build(*(c[i] for c in cols)) for i in first], codes)


def _part(cols: list[Any], build: Callable[..., str], n: int) -> tuple[np.ndarray, list[str]]:
    """``build(*values)`` once per distinct combination of the columns: (row codes, text per code)."""
    if n == 0:
        return np.zeros(0, dtype=np.intp), []
    if len(cols) == 1:
        codes, distinct = T.factorize(cols[0])
        return codes, [build(v) for v in distinct]
    codes, first, _ = _distinct(cols)
    return codes, [build(*(c[i] for c in cols)) for i in first]


def _combine(parts: list[tuple[np.ndarray, list[str]]], build: Callable[..., str],
             n: int) -> tuple[np.ndarray, list[str]]:
    """``build(*texts)`` once per distinct combination of the parts' texts: (row codes, text per code)."""
    if n == 0:
        return np.zeros(0, dtype=np.intp), []
    codes, first, _ = _distinct([c for c, _ in parts])
    at = np.asarray(first, dtype=np.intp)
    return codes, [build(*texts) for texts in zip(*(T.take(t, c[at]) for c, t in parts), strict=True)]


def _rows(part: tuple[np.ndarray, list[str]]) -> list[str]:
    """The text of each row of a (row codes, text per code) part."""
    codes, texts = part
    return T.take(texts, codes)


SPLICE_ROWS = 1024     # rows per text block (~1.5 MB of LB): still in cache when encoded and written


def _splice(columns: list[Any], keep: list[bool]) -> tuple[Iterator[str], int]:
    """The kept rows as text blocks of :data:`SPLICE_ROWS` lines: per row the columns in order.

    A column is a str (the same on every row), a list (one text per row) or a part (row codes, text
    per code). Adjacent parts whose combinations repeat are fused first (:func:`_fuse`): fewer,
    longer pieces per line. Blocks, not one text: a chunk's NDJSON is tens of MB, and writing it in
    cache-sized blocks costs a fraction of one giant string plus its encoded copy."""
    n = len(keep)
    mask = None if all(keep) else np.asarray(keep, dtype=bool)
    cols: list[Any] = []
    for col in columns:
        if isinstance(col, list):
            cols.append(col if mask is None else list(compress(col, keep)))
            continue
        codes, texts = (np.zeros(n, dtype=np.intp), [col]) if isinstance(col, str) else col
        cols.append((codes if mask is None else codes[mask], texts))
    m = n if mask is None else int(mask.sum())
    rows = [col if isinstance(col, list) else _rows(col) for col in _fuse(cols, m)]

    def blocks() -> Iterator[str]:
        k = len(rows)
        for start in range(0, m, SPLICE_ROWS):
            size = min(SPLICE_ROWS, m - start)
            flat: list[Any] = [None] * (size * k)
            for j, col in enumerate(rows):
                flat[j::k] = col[start:start + size]
            yield "".join(flat)

    return blocks(), m


def _fuse(cols: list[Any], n: int) -> list[Any]:
    """Adjacent parts (row codes, text per code) joined into one part while their distinct
    combinations stay few (at most n/16): the joined texts are built once per combination, and a
    line is spliced from fewer pieces. Lists (one text per row) stay as they are."""
    limit = max(n // 16, 1)
    out: list[Any] = []
    run: list[tuple[np.ndarray, list[str]]] = []
    codes = np.zeros(n, dtype=np.intp)
    k = 1

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            _, first = np.unique(codes, return_index=True)
            out.append((codes, ["".join(t) for t in zip(*(T.take(texts, c[first]) for c, texts in run),
                                                          strict=True)]))
        run.clear()

    for col in cols:
        if isinstance(col, list):
            flush()
            out.append(col)
            continue
        c, texts = col
        width = len(texts)
        if run and k * width <= 64 * limit:
            # dense: combinations numbered in sorted order (any order will do)
            combined = codes * width + c
            present = np.zeros(k * width, dtype=bool)
            present[combined] = True
            count = int(present.sum())
            if count <= limit:
                codes = (np.cumsum(present) - 1)[combined]
                k = count
                run.append(col)
                continue
        flush()
        run.append(col)
        codes, k = c, width
    flush()
    return out


class _LazyKeys:
    """``USUBJID/--SEQ`` of a row, made only for the rows a report entry names."""

    def __init__(self, usubjid: list[Any], seqs: list[Any]) -> None:
        self.usubjid, self.seqs = usubjid, seqs

    def __getitem__(self, i: int) -> str:
        return f"{self.usubjid[i]}/{self.seqs[i]}"


def _quantity_text(value: Any, comparator: Any, unit: Any, testcd: str | None = None) -> str:
    q: dict[str, Any] = {"value": value}
    if comparator:
        q["comparator"] = comparator
    if unit is not None:
        q["unit"] = unit
        code = T.vs_ucum(testcd, unit) if testcd else T.ucum_for(unit)
        if code:
            q["system"] = T.UCUM
            q["code"] = code
    return _js(q)


def build_findings(df: pd.DataFrame, domain: str, ctx: Ctx, path: Path | str,
                   seen: IdLog, offset: int = 0) -> tuple[Iterator[str], int]:
    """VS and LB -> Observation NDJSON text blocks and their number of lines (one chunk; ``seen``
    carries ids across chunks for duplicates, ``offset`` is the number of rows before the chunk).

    Column by column: each part of the resource is serialised once per distinct combination of the
    SDTM values it depends on, and the parts are spliced into one line per record.
    """
    p = domain
    n = len(df)
    _require(df, domain, path, offset)
    ids, seqs = _seq_ids(df, domain, p.lower(), ctx, path, seen, offset)
    subject, keep = _subject_part(df, domain, ctx)
    encounter = _encounter_part(df, ctx)
    consumed = mapped_variables(domain)
    linked = bool(ctx.supp.get(domain) or ctx.relrec.get(domain))
    ex = Extras(df, domain, ctx, consumed=consumed, idvars=_idvar_cols(df) if linked else {}, rows=False)
    usubjid = _col(df, "USUBJID")
    keys = _LazyKeys(usubjid, seqs)
    dates = _dates_full(df, f"{p}DTC", ctx, domain, keys, target="Observation.effectiveDateTime")
    empty = pd.Series([None] * n, dtype=object)
    res_col = df[f"{p}ORRES"] if f"{p}ORRES" in df.columns else empty
    texts = _col(df, f"{p}ORRES")
    dec = T.parse_decimals(res_col)
    dec_codes = dec.codes
    assert dec_codes is not None, "parse_decimals always sets the row codes"
    if dec.normalised.any():
        ctx.tally(Kind.INFERRED, domain, f"{p}ORRES", "numeric text rewritten as a FHIR decimal (e.g. a "
                  "leading zero added)", int(dec.normalised.sum()), target="Observation.valueQuantity.value")
    units = _col(df, f"{p}ORRESU")
    # value[x] and the unit tally: per distinct (result text, unit; VS: and test, for the UCUM code the
    # vital-signs profile fixes)
    vs_test = _col(df, "VSTESTCD") if domain == "VS" else None
    vcodes, vfirst, vcount = _distinct([dec_codes, units] + ([vs_test] if vs_test is not None else []))
    value_parts, lost_unit = [], []
    for i, cnt in zip(vfirst, vcount.tolist(), strict=False):
        val, comp, _ = dec.distinct[dec_codes[i]]
        unit = units[i]
        if val is not None:
            if unit is not None and not T.ucum_for(unit):
                ctx.tally(Kind.UNMAPPED_CODE, domain, f"{p}ORRESU", "unit not in the CDISC Unit-UCUM table "
                          "(codes/ucum_cdisc_units.csv): Quantity.unit only, no UCUM code", cnt,
                          target="Quantity.code", value=unit)
            value_parts.append(',"valueQuantity":' + _quantity_text(val, comp, unit,
                                                                    vs_test[i] if vs_test is not None else None))
            lost_unit.append("")
        elif texts[i] is not None:
            value_parts.append(',"valueCodeableConcept":' + _js({"text": texts[i]}))
            lost_unit.append("" if unit is None else "," + _js({"url": f"{p}ORRESU", "valueString": unit}))
        else:
            value_parts.append("")
            lost_unit.append("")
    value_col = (vcodes, value_parts)
    lo_col = df[f"{p}ORNRLO"] if f"{p}ORNRLO" in df.columns else empty
    hi_col = df[f"{p}ORNRHI"] if f"{p}ORNRHI" in df.columns else empty
    lo, hi = T.parse_decimals(lo_col), T.parse_decimals(hi_col)
    lo_raw, hi_raw = _col(df, f"{p}ORNRLO"), _col(df, f"{p}ORNRHI")
    stnrc = _col(df, f"{p}STNRC")
    nrind_raw = _col(df, f"{p}NRIND")
    # one look-up (and report entry) per distinct code, in the order of first use
    _coded("sdtm_to_fhir_codes.csv", "CDISC NRIND", list(dict.fromkeys(nrind_raw)), ctx, domain,
           f"{p}NRIND", "Observation.interpretation")
    stat, reasnd = _col(df, f"{p}STAT"), _col(df, f"{p}REASND")
    cat = _col(df, f"{p}CAT")
    loc, method, pos = _col(df, f"{p}LOC"), _col(df, f"{p}METHOD"), _col(df, f"{p}POS")
    tcodes, concepts = _test_codes(df, domain, ctx)

    # ---- extension: sdtm (carried variables + parts FHIR cannot hold), SUPPQUAL, RELREC, body position;
    # each piece once per distinct value, the extension once per distinct combination of its pieces
    pieces: list[tuple[np.ndarray, list[str]]] = []
    for var, values, numeric in ex.carried:
        if numeric:
            pieces.append(_part([values], lambda v, var=var: "" if v is None else "," + _js(
                {"url": var, "valueDecimal": T.num_json(v)}), n))
        else:
            pieces.append(_part([values], lambda v, var=var: "" if v is None else "," + _js(
                {"url": var, "valueString": v}), n))
    pieces.append((vcodes, lost_unit))

    def lost_range(var: str, raw: list[Any], dec_: T.Decimals) -> tuple[np.ndarray, list[str]]:
        def one(r: Any, c: int) -> str:
            if r is not None and dec_.distinct[c][0] is None:
                return "," + _js({"url": var, "valueString": r})
            return ""
        return _part([raw, dec_.codes], one, n)

    pieces.append(lost_range(f"{p}ORNRLO", lo_raw, lo))
    pieces.append(lost_range(f"{p}ORNRHI", hi_raw, hi))
    head = '{"url":' + _js(T.EXT_SDTM) + ',"extension":['

    def sdtm_ext(*texts: str) -> str:
        s = "".join(texts)
        return head + s[1:] + "]}" if s else ""

    pos_piece = _part([pos], lambda v: "," + _js({"url": T.BODY_POSITION, "valueCodeableConcept":
                                                 _ct_concept(v, "POSITION", ctx, domain, f"{p}POS",
                                                             "extension(observation-bodyPosition)")})
                      if v else "", n)

    def whole(e: str, q: str) -> str:
        e = e + q if e else q[1:]
        return ',"extension":[' + e + "]" if e else ""

    if ex.supp is None and ex.relrec is None:
        ext: Any = _combine([*pieces, pos_piece], lambda *t: whole(sdtm_ext(*t[:-1]), t[-1]), n)
    else:
        ext = _rows(_combine(pieces, sdtm_ext, n))
        for i in range(n):
            items = (ex.supp[i] if ex.supp is not None else []) + (ex.relrec[i] if ex.relrec is not None else [])
            if items:
                more = ",".join(_js(it) for it in items)
                ext[i] = ext[i] + "," + more if ext[i] else more
        ext = [whole(e, q) for e, q in zip(ext, _rows(pos_piece), strict=True)]

    # ---- the other parts, each once per distinct value
    seq_sys = _js(f"{T.SID}/{p.lower()}seq")
    ident = _part([seqs], lambda s: ',"identifier":[{"system":' + seq_sys + ',"value":"' + s + '"}]'
                          if s is not None else "", n)
    base_cat = _js(_CATEGORY[domain])
    status = _part([stat], lambda s: ',"status":"cancelled"' if s == "NOT DONE" else ',"status":"final"', n)
    category = _part([cat], lambda c: ',"category":[' + base_cat + ("," + _js({"text": c}) if c else "")
                             + "]", n)
    code_col = (tcodes, [',"code":' + _js(cc) for cc in concepts])
    eff_parts = []
    for v, o in zip(dates.distinct_value, dates.distinct_original, strict=False):
        t = "" if v is None else ',"effectiveDateTime":' + _js(v)
        if o is not None:
            t += ',"_effectiveDateTime":' + _js({"extension": [{"url": T.EXT_DTC, "valueString": o}]})
        eff_parts.append(t)
    assert dates.codes is not None, "the date parse always sets the row codes"
    effective = (dates.codes, eff_parts)

    def absent(s: Any, r: Any) -> str:
        if s == "NOT DONE" or r:
            dar: dict[str, Any] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed"}]}
            if r:
                dar["text"] = r
            return ',"dataAbsentReason":' + _js(dar)
        return ""

    dar_col = _part([stat, reasnd], absent, n)

    def interpretation(r: Any) -> str:
        if r is None:
            return ""
        row = T.code_row("sdtm_to_fhir_codes.csv", "CDISC NRIND", r)
        return ',"interpretation":' + _js([{"coding": [_coding(row)]} if row else {"text": r}])

    interp = _part([nrind_raw], interpretation, n)
    body = _part([loc], lambda v: ',"bodySite":' + _js(_ct_concept(v, "LOC", ctx, domain, f"{p}LOC",
                                                                         "Observation.bodySite")) if v else "", n)
    meth = _part([method], lambda v: ',"method":' + _js({"text": v}) if v else "", n)

    def ref_range(lc: int, hc: int, unit: Any, text: Any, testcd: Any = None) -> str:
        rr: dict[str, Any] = {}
        lv, hv = lo.distinct[lc][0], hi.distinct[hc][0]
        # the limits in the result's unit, with the UCUM code valueQuantity has (VS: the code the
        # vital-signs profile fixes for the test, /min for heart rate — was {beats}/min beside it)
        if lv is not None:
            rr["low"] = _ucum_quantity(lv, unit, testcd)
        if hv is not None:
            rr["high"] = _ucum_quantity(hv, unit, testcd)
        if text:
            rr["text"] = text
        return ',"referenceRange":' + _js([rr]) if rr else ""

    rrange = _part([lo.codes, hi.codes, units, stnrc] + ([vs_test] if vs_test is not None else []), ref_range, n)
    # ids are FHIR-id characters: nothing to escape
    return _splice(['{"resourceType":"Observation","id":"', ids, '"', ext, ident, status, category, code_col,
                    subject, encounter, effective, value_col, dar_col, interp, body, meth, rrange, "}\n"], keep)


def _ucum_quantity(value: Any, unit: Any, testcd: Any = None) -> dict[str, Any]:
    """A Quantity: the value, the CDISC unit as ``unit`` and its UCUM code when the CDISC Unit-UCUM
    table gives one (:func:`T.ucum_for`; a VS ``testcd``: :func:`T.vs_ucum`); the caller reports a unit
    without a code."""
    q: dict[str, Any] = {}
    if value is not None:
        q["value"] = value
    if unit is not None:
        q["unit"] = unit
        code = T.vs_ucum(testcd, unit) if testcd else T.ucum_for(unit)
        if code:
            q["system"] = T.UCUM
            q["code"] = code
    return q


def _test_codes(df: pd.DataFrame, domain: str, ctx: Ctx) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Observation.code per distinct (TESTCD, TEST, LOINC, SPEC, METHOD), in the order of first use:
    (row codes, concept per code)."""
    p = domain
    cols = [_col(df, c) for c in (f"{p}TESTCD", f"{p}TEST", f"{p}LOINC", f"{p}SPEC", f"{p}METHOD")]
    if not len(df):
        return np.zeros(0, dtype=np.intp), []
    codes, first, _ = _distinct(cols)
    out = []
    for i in first:
        testcd, test, loinc, spec, meth = (c[i] for c in cols)
        coding = [T.cdisc_coding(f"{p}TESTCD", testcd, test)]
        ncit = T.ncit_coding(f"{p}TESTCD", testcd)
        if ncit:
            coding.append(ncit)
        else:
            ctx.tally(Kind.UNMAPPED_CODE, domain, f"{p}TESTCD", f"{p}TESTCD is not a term of the CDISC CT "
                      f"codelist {p}TESTCD: no NCIt coding written", target="Observation.code", value=testcd)
        if loinc:
            coding.append({"system": T.LOINC, "code": loinc})
        elif domain == "LB":
            code, n = T.lb_loinc(testcd, spec, meth)
            if code:
                coding.append({"system": T.LOINC, "code": code})
                ctx.tally(Kind.INFERRED, "LB", "LBTESTCD", "LOINC code taken from the CDISC LOINC-to-LB "
                          "table (one candidate for LBTESTCD/LBSPEC/LBMETHOD)", target="Observation.code")
            elif (testcd, spec, meth) not in ctx.counts:
                ctx.counts[(testcd, spec, meth)] = 1  # type: ignore[index]
                msg = (f"LBTESTCD is ambiguous in the CDISC LOINC-to-LB table ({n} LOINC candidates"
                       f"{'' if spec else ', no LBSPEC'}): no LOINC coding written" if n > 1 else
                       "LBTESTCD has no LOINC code in the CDISC LOINC-to-LB table: no LOINC coding written")
                ctx.report.add(Kind.UNMAPPED_CODE, msg, source="LB.LBTESTCD", target="Observation.code",
                               rule=rule_id("LB", "LBTESTCD"), value=testcd)
        else:
            row = T.code_row("sdtm_to_fhir_codes.csv", "VSTESTCD", testcd)
            if row:
                coding.append(_coding(row))
            elif (testcd, "VS") not in ctx.counts:
                ctx.counts[(testcd, "VS")] = 1  # type: ignore[index]
                ctx.report.add(Kind.UNMAPPED_CODE, "VSTESTCD has no LOINC code in fhir_subject/"
                               "sdtm_to_fhir_codes.csv: no LOINC coding written", source="VS.VSTESTCD",
                               target="Observation.code", rule=rule_id("VS", "VSTESTCD"), value=testcd)
        out.append({"coding": coding})
    return codes, out


# ----------------------------------------------------------------------------- SUPPQUAL / RELREC
def index_supp(name: str, df: pd.DataFrame, ctx: Ctx, path: Path | str) -> None:
    for var in ("RDOMAIN", "USUBJID", "QNAM", "QVAL"):
        if var not in df.columns:
            raise InputError(f"required variable {var} is missing from dataset {name}", file=str(path),
                             field=var)
    idx = ctx.supp.setdefault(name[4:], {})
    cols = [_col(df, c) for c in ("USUBJID", "IDVAR", "IDVARVAL", "QNAM", "QLABEL", "QVAL", "QORIG", "QEVAL")]
    for u, iv, ivv, *q in zip(*cols, strict=False):
        subs = [{"url": n, "valueString": v} for n, v in zip(("QNAM", "QLABEL", "QVAL", "QORIG", "QEVAL"), q, strict=False)
                if v is not None]
        idx.setdefault((u or "", iv or "", _idvarval(ivv)), []).append({"url": T.EXT_SUPPQUAL, "extension": subs})


def _idvarval(v: Any) -> str:
    """IDVARVAL as the parent's key text: padded numbers ('   2', '2.0') read as the --SEQ they name."""
    if v is None:
        return ""
    t = str(v).strip()
    try:
        return T.num_text(float(t)) or t
    except ValueError:
        return t


_PREFIX = {"AE": ("AdverseEvent", "ae"), "CM": ("MedicationStatement", "cm"),
           "EX": ("MedicationAdministration", "ex"), "MH": ("Condition", "mh"), "PR": ("Procedure", "pr"),
           "LB": ("Observation", "lb"), "VS": ("Observation", "vs")}


def index_relrec(df: pd.DataFrame, ctx: Ctx, path: Path | str) -> None:
    groups: dict[tuple[str, str], list[tuple[str, str, str, str | None]]] = defaultdict(list)
    dataset_level = 0
    for rd, u, iv, ivv, rt, rel in zip(*(_col(df, c) for c in (
            "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "RELTYPE", "RELID")), strict=False):
        if not u:
            dataset_level += 1
            continue
        groups[(u, rel or "")].append((rd or "", iv or "", _idvarval(ivv), rt))
    if dataset_level:
        ctx.tally(Kind.LOSSY, "RELREC", "RELTYPE", "dataset-level RELREC relationship (no USUBJID): FHIR "
                  "links resources, not datasets; not carried", dataset_level)
    for (u, rel), members in groups.items():
        refs = {}
        for rd, iv, ivv, _ in members:
            if rd in _PREFIX and iv == f"{rd}SEQ":
                rtype, pre = _PREFIX[rd]
                refs[(rd, iv, ivv)] = f"{rtype}/{T.make_id(pre, T.slug(ctx.studyid), T.slug(u), ivv)}"
            elif rd == "DS":
                refs[(rd, iv, ivv)] = f"ResearchSubject/{T.make_id('rsub', T.slug(ctx.studyid), T.slug(u))}"
        for rd, iv, ivv, rt in members:
            subs: list[dict[str, Any]] = [{"url": "RELID", "valueString": rel}]
            if rt:
                subs.append({"url": "RELTYPE", "valueString": rt})
            for other, ref in refs.items():
                if other != (rd, iv, ivv):
                    subs.append({"url": "target", "valueReference": {"reference": ref}})
            ctx.relrec.setdefault(rd, {}).setdefault((u, iv, ivv), []).append(
                {"url": T.EXT_RELREC, "extension": subs})


# ----------------------------------------------------------------------------- output sinks
class Sink:
    """A Bundle (collection) or one NDJSON file per resource type, all written atomically."""

    def __init__(self, outdir: Path, *, ndjson: bool, bundle_name: str, stack: contextlib.ExitStack,
                 indent: bool = True) -> None:
        self.outdir, self.ndjson, self.stack = outdir, ndjson, stack
        self.bundle_name = bundle_name
        self.entries: list[dict[str, Any]] = []
        self.files: dict[str, Any] = {}
        self.targets: list[Path] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.indent = indent

    def add_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        if not self.ndjson:
            for rtype, res in items:
                self.counts[rtype] += 1
                self.entries.append({"fullUrl": f"{T.BASE}/{rtype}/{res['id']}", "resource": res})
            return
        by_type: dict[str, list[bytes]] = defaultdict(list)
        dumps = orjson.dumps
        for rtype, res in items:
            by_type[rtype].append(dumps(res))
        for rtype, lines in by_type.items():
            self.counts[rtype] += len(lines)
            self._file(rtype).write(b"\n".join(lines) + b"\n")

    def add_text(self, rtype: str, blocks: Iterable[str], count: int) -> None:
        """``count`` resources already serialised, one per line (each line ending in a newline), in
        text blocks of whole lines."""
        if not count:
            return
        if self.ndjson:
            self.counts[rtype] += count
            fh = self._file(rtype)
            for block in blocks:
                fh.write(block.encode())
            return
        text = "".join(blocks)
        # a Bundle re-indents: parse back, numbers kept as their exact text
        import json

        def number(t: str) -> orjson.Fragment:
            return orjson.Fragment(t.encode())

        self.add_many((rtype, json.loads(line, parse_float=number)) for line in text.split("\n") if line)

    def _file(self, rtype: str) -> Any:
        fh = self.files.get(rtype)
        if fh is None:
            target = self.outdir / f"{rtype}.ndjson"
            tmp = self.stack.enter_context(atomic_path(target))
            fh = self.stack.enter_context(open(tmp, "wb"))  # noqa: SIM115  (closed by the ExitStack)
            self.files[rtype] = fh
            self.targets.append(target)
        return fh

    def finish(self, bundle_id: str) -> list[Path]:
        if self.ndjson:
            return sorted(self.targets)
        target = self.outdir / f"{self.bundle_name}.bundle.json"
        tmp = self.stack.enter_context(atomic_path(target))
        bundle = {"resourceType": "Bundle", "id": bundle_id, "type": "collection", "entry": self.entries}
        opt = orjson.OPT_INDENT_2 if self.indent else 0
        tmp.write_bytes(orjson.dumps(bundle, option=opt) + b"\n")
        return [target]


# ----------------------------------------------------------------------------- entry point
def subject_domains_in(folder: Path) -> list[str]:
    """The subject domains (DM, AE, LB, ...) a folder holds: the integrator's dispatch test."""
    names = {p.stem.upper() for p in folder.iterdir() if p.is_file()}
    return [d for d in SUBJECT_DOMAINS if d in names]


BUILDERS: dict[str, Callable[..., Iterator[tuple[str, dict[str, Any]]]]] = {
    "SV": build_sv, "AE": build_ae, "CM": build_cm, "EX": build_ex, "MH": build_mh, "PR": build_pr}


def convert_sdtm_to_fhir(folder: Path, outdir: Path, *, options: Any, report: ConversionReport,
                         chunksize: int = 100_000) -> list[Path]:
    """Read the SDTM datasets of ``folder`` and write FHIR (``options.fhir_version`` R4 or R5).

    ``options.extra``: ``ndjson`` (one file per resource type), ``default_tz`` (e.g. ``+00:00``: the
    zone given to SDTM times that have none; without it such times are cut to their date and the
    text kept in an extension), ``compact`` (bundle without indentation).
    """
    version = (getattr(options, "fhir_version", None) or "R5").upper()
    if version not in ("R4", "R5"):
        raise UsageError(f"--fhir-version must be R4 or R5, not {version}")
    extra = dict(getattr(options, "extra", {}) or {})
    tz = extra.get("default_tz")
    if tz is not None and not T.valid_tz(tz):
        raise UsageError(T.TZ_USAGE.format(tz=tz))
    ctx = Ctx(version=version, report=report, default_tz=tz)
    # millions of small dicts, none cyclic: the cyclic GC would rescan them over and over
    gc_was = gc.isenabled()
    gc.disable()
    try:
        return _convert(folder, outdir, ctx, extra, chunksize)
    finally:
        if gc_was:
            gc.enable()


def _convert(folder: Path, outdir: Path, ctx: Ctx, extra: dict[str, Any], chunksize: int) -> list[Path]:
    report, version = ctx.report, ctx.version
    files = find_datasets(folder, report)
    define = read_define(folder)
    if "DM" not in files:
        raise InputError("no DM dataset: subject data needs dm.xpt / dm.json / dm.ndjson / dm.csv",
                         file=str(folder))
    frames = {n: _read(files[n], define, report) for n in files
              if n not in STREAMED and n not in TRIAL_DESIGN or n == "TS"}
    for name, ds in files.items():
        if name in TRIAL_DESIGN or name in SUBJECT_DOMAINS or name == "RELREC" or name.startswith("SUPP"):
            continue
        report.add(Kind.UNMAPPED_SOURCE, f"dataset {name} has no SDTM -> FHIR mapping yet: not converted "
                   f"({len(frames.get(name, []))} records)", source=name, file=str(ds.path))
    dm = frames["DM"]
    studies = build_studies(dm, frames.get("TS"), ctx)
    for name, df in frames.items():
        if name.startswith("SUPP"):
            index_supp(name, df, ctx, files[name].path)
    if "RELREC" in frames:
        index_relrec(frames["RELREC"], ctx, files["RELREC"].path)
    if "DS" in frames:
        build_ds(frames["DS"], ctx, files["DS"].path)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        sink = Sink(outdir, ndjson=bool(extra.get("ndjson")), bundle_name=T.slug(ctx.studyid),
                    stack=stack, indent=not extra.get("compact"))
        sink.add_many(("ResearchStudy", s) for s in studies)
        sink.add_many(build_dm(dm, ctx, files["DM"].path))
        for name in ("SV", "AE", "CM", "EX", "MH", "PR"):
            if name in frames:
                sink.add_many(BUILDERS[name](frames[name], ctx, files[name].path))
        for name in ("VS", "LB"):
            if name in files:
                seen = IdLog()
                offset = 0
                for chunk in iter_dataset_chunks(files[name], chunksize=chunksize, define=define,
                                                 report=report):
                    sink.add_text("Observation", *build_findings(chunk, name, ctx, files[name].path, seen,
                                                                 offset))
                    offset += len(chunk)
        _report_unattached(ctx, frames)
        written = sink.finish(T.make_id("bundle", T.slug(ctx.studyid)))
        report.extra.setdefault("sdtm_to_fhir", {})["resources"] = dict(sorted(sink.counts.items()))
        report.extra["sdtm_to_fhir"]["fhirVersion"] = version
    ctx.flush()
    return written


def _read(ds: DatasetFile, define: DefineInfo | None, report: ConversionReport) -> pd.DataFrame:
    return read_dataset(ds, define=define, report=report)


def _report_unattached(ctx: Ctx, frames: dict[str, pd.DataFrame]) -> None:
    for dom, idx in ctx.supp.items():
        unused = [k for k in idx if (dom, *k) not in ctx.supp_used]
        n = sum(len(idx[k]) for k in unused)
        if n:
            where = "its parent domain is not converted" if dom not in SUBJECT_DOMAINS else "no parent record"
            ctx.tally(Kind.LOSSY if dom not in SUBJECT_DOMAINS else Kind.MISSING, f"SUPP{dom}", "IDVARVAL",
                      f"SUPPQUAL rows not attached ({where})", n, record=f"{unused[0][0]}/{unused[0][2]}")
