"""FHIR subject resources (Bundles, NDJSON, Bulk Data folders; R4 or R5) -> SDTM domains.

Two passes over the inputs (see :mod:`.base` for the plug-in contract):

1. *Small* resource types (Patient, ResearchSubject, ResearchStudy, Encounter, Consent, Specimen,
   Organization, MedicationAdministration, and every type a non-streamed domain plugin reads) are
   collected: the engine builds the reference index, the subject index (USUBJID/SUBJID/SITEID/arms),
   the visit index, then maps the non-streamed domains (EX first, then RFSTDTC/RFENDTC, then the rest
   in ``depends`` order, DM after EX).
2. *Streamed* types (Observation) are read again chunk by chunk; each chunk is extracted to plain
   columns, mapped with vectorised pandas code, and appended to the chunked writers (LB, VS). Memory
   holds one chunk plus the indexes, never the input.

Outputs: ``<dom>.json`` (and ``.csv``/``.ndjson`` on request), ``supp<dom>.*`` when qualifiers exist,
``relrec.*`` when project-made input carries record-level RELREC links (extension ``relrec``),
and ``<dom>.provenance.csv`` (USUBJID, --SEQ -> FHIR resource type/id/versionId/file/line).
"""

from __future__ import annotations

import csv
import gc
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..fhir.concepts import concept_text
from ..report import ConversionReport, Kind
from ..safeio import atomic_path
from ..sdtm.metadata import load_domain
from ..sdtm.output import ChunkedDomainWriter, key_order, write_domain
from ..specs import transform
from . import base, sdtm_ext, unread
from .base import SRC_COLUMNS, Ctx, DomainPlugin
from .reader import ResourceStream, iter_chunks, iter_resources
from .test_codes import load_test_codes

#: hidden int columns a columnar map may leave in its frame (not written): per row, a code of its
#: USUBJID, and a code of its --DTC (-1: none); a code stands for one value within the frame
SUBJECT_CODE, DTC_CODE = "_usubjid_code", "_dtc_code"
#: resource types the engine itself keeps from pass 1 (indexes, identity, visits, reference dates)
CHUNK_ROWS = 50_000   # resources per streamed chunk (memory bound: one chunk of plain rows)
ENGINE_TYPES = frozenset({"Patient", "ResearchSubject", "ResearchStudy", "Encounter", "Consent",
                          "Organization", "Specimen", "MedicationAdministration", "Medication"})
#: Patient elements kept in memory: everything else (names, telecom, address lines, contacts,
#: photos, narrative) is dropped at read time and never reaches SDTM or the report
PATIENT_KEEP = ("resourceType", "id", "meta", "identifier", "gender", "birthDate", "_birthDate",
                "deceasedBoolean", "deceasedDateTime", "managingOrganization", "extension")
PATIENT_EXTENSIONS = frozenset({
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-sex",
    "http://hl7.org/fhir/StructureDefinition/individual-recordedSexOrGender",
})


def convert_subjects(inputs: list[Path], outdir: Path, *, options: Any,
                     report: ConversionReport) -> list[Path]:
    plugins = base.registered_domains()
    outdir.mkdir(parents=True, exist_ok=True)
    extra = dict(getattr(options, "extra", {}) or {})
    ctx = Ctx(studyid="", report=report, study=getattr(options, "study", None),
              fhir_version=getattr(options, "fhir_version", None) if extra.get("force_version") else None,
              expose_mrn=bool(extra.get("expose_mrn")),
              salt_env=extra.get("salt_env") or base.DEFAULT_SALT_ENV)
    if extra.get("test_codes"):
        ctx.test_codes = load_test_codes(Path(extra["test_codes"]))
    run = _Run(ctx, plugins, tuple(getattr(options, "sdtm_formats", ("json",))), outdir)
    # parsed FHIR JSON holds no reference cycles: the cyclic GC would only re-walk every live chunk
    # object again and again (it made orjson parsing ~10x slower here), so it is paused for the run
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        run.pass1(inputs)
        ctx.studyid = decide_studyid(getattr(options, "studyid", None), ctx)
        build_subject_index(ctx)
        run.plugins = sdtm_ext.attach(run.plugins, inputs, ctx)   # project ids and extensions
        build_visit_index(ctx)
        ctx.ta_epochs = load_ta_epochs(ctx)
        run.map_collected()
        run.pass2(inputs)
        return run.finish()
    except BaseException:
        run.abort()   # no spool file left behind; each dataset file is written whole or not at all
        raise
    finally:
        if gc_was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------- run
class _Run:
    def __init__(self, ctx: Ctx, plugins: dict[str, DomainPlugin], formats: tuple[str, ...],
                 outdir: Path) -> None:
        self.ctx, self.plugins, self.formats, self.outdir = ctx, plugins, formats, outdir
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.written: list[Path] = []
        self.seq: dict[str, dict[str, int]] = defaultdict(dict)
        self.writers: dict[str, ChunkedDomainWriter] = {}
        self.supp_frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
        #: SUPP-- rows of XPT text over 200 characters (SDTMIG 3.4 4.5.3.2): the XPT only, the
        #: Dataset-JSON keeps the whole text
        self.xpt_supp: dict[str, list[pd.DataFrame]] = defaultdict(list)
        #: RELREC rows rebuilt from the project extension relrec (rule subject.sdtm-ext)
        self.relrec_frames: list[pd.DataFrame] = []
        #: USUBJID -> latest date of any of the subject's records (for DM.RFPENDTC, rule dm.RFPENDTC)
        self.last_dates: dict[str, str] = {}
        #: DM, written at the end once RFPENDTC can see every record (streamed LB/VS included)
        self.dm: tuple[DomainPlugin, pd.DataFrame] | None = None
        #: (the subject index it was read from, RFSTDTC/RFENDTC/RFICDTC -> {USUBJID: date}): read once
        #: for the streamed chunks (pass 2, when the index no longer changes), not per chunk
        self.ref_dates: tuple[pd.DataFrame, dict[str, dict[Any, Any]]] | None = None

    # -- helpers
    def _by_type(self, streamed: bool) -> dict[str, list[tuple[Any, list[DomainPlugin]]]]:
        """resource type -> [(extract fn, plugins sharing it)]."""
        out: dict[str, list[tuple[Any, list[DomainPlugin]]]] = defaultdict(list)
        for p in self.plugins.values():
            if p.streamed != streamed:
                continue
            for t in p.resource_types:
                for fn, group in out[t]:
                    if fn is p.extract:
                        group.append(p)
                        break
                else:
                    out[t].append((p.extract, [p]))
        return out

    def row_issue(self, *a: Any, **kw: Any) -> None:
        self.ctx.row_issue(*a, **kw)

    def _extract(self, item: Any, routes: list[tuple[Any, list[DomainPlugin]]],
                 sink: dict[str, list[dict[str, Any]]]) -> None:
        res = item.resource
        meta = res.get("meta")
        src = (res.get("resourceType"), res.get("id"),
               meta.get("versionId") if isinstance(meta, dict) else None, item.file, item.line)
        converted = False
        for fn, group in routes:
            try:
                got = fn(res, self.ctx)
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                # a resource of the wrong shape: reported with its id, the run goes on
                self.row_issue(group[0].domain, "shape", Kind.INVALID_VALUE,
                               f"resource does not have the expected FHIR shape ({type(exc).__name__})",
                               record=f"{src[0]}/{src[1]}", file=item.file,
                               rule=f"{group[0].domain.lower()}.extract")
                continue
            if not got:
                continue
            converted = True
            for row in (got if isinstance(got, list) else (got,)):
                row["_src_type"], row["_src_id"], row["_src_ver"], row["_src_file"], \
                    row["_src_line"] = src
                for p in group:
                    if p.accept is None or p.accept(row):
                        sink[p.domain].append(row)
        if converted and src[0] not in unread.SELF_NOTED:
            unread.note_resource(res, self.ctx)   # rule subject.unread (resources not converted are
            #                                      reported whole by their own rules)

    # -- pass 1
    def pass1(self, inputs: list[Path]) -> None:
        routes = self._by_type(streamed=False)
        streamed_types = {t for p in self.plugins.values() if p.streamed for t in p.resource_types}
        wanted = (set(ENGINE_TYPES) | set(routes)) - streamed_types
        errors: list[tuple[str, int | None, str]] = []
        skipped: dict[str, int] = {}
        # the same resource (type, id, meta.versionId) given again (the same bundle twice, a bundle and
        # its Bulk export): converted once, or DM would hold two records of one subject and SV, AE, MH,
        # DS each record twice (keys no longer unique); counted and reported per type
        seen: set[tuple[str, str, Any]] = set()
        again: dict[str, int] = {}
        # (the streamed types' Bulk files are read in pass 2: their skip counts would not be reported)
        for chunk in iter_chunks(inputs, types=wanted, errors=errors, skipped=skipped, uncounted=streamed_types):
            for item in chunk:
                res = item.resource
                rtype = res.get("resourceType")
                rid = res.get("id")
                if isinstance(rtype, str) and isinstance(rid, str):
                    meta = res.get("meta")
                    key = (rtype, rid, meta.get("versionId") if isinstance(meta, dict) else None)
                    if key in seen:
                        again[rtype] = again.get(rtype, 0) + 1
                        continue
                    seen.add(key)
                collect_engine(item, self.ctx)
                r = routes.get(rtype) if isinstance(rtype, str) else None
                if r:
                    self._extract(item, r, self.rows)
        for rtype, n in sorted(again.items()):
            self.ctx.report.add(Kind.LOSSY, f"{n} {rtype} resource(s) given again (same type, id and "
                                "meta.versionId as one already read): converted once", source=rtype,
                                rule="subject.duplicate")
        self._report_read_errors(errors)
        self._report_out_of_scope(skipped, streamed_types)

    def _report_out_of_scope(self, skipped: dict[str, int], streamed: set[str]) -> None:
        """Every resource type no domain reads, once with its count (nothing is dropped silently);
        the streamed types are read by pass 2."""
        for rtype in sorted(set(skipped) - streamed):
            self.ctx.report.add(Kind.UNMAPPED_SOURCE, f"{skipped[rtype]} {rtype} resource(s) not converted: no "
                                "SDTM domain of this converter reads this resource type", source=rtype,
                                rule="subject.scope")

    def _report_read_errors(self, errors: list[tuple[str, int | None, str]]) -> None:
        for name, line, msg in errors:
            self.row_issue("READ", "read", Kind.INVALID_VALUE, msg, record=f"line {line}" if line else None,
                           file=name, rule="subject.read")

    # -- after pass 1
    def map_collected(self) -> None:
        order = _plugin_order([p for p in self.plugins.values() if not p.streamed])
        rf_done = False
        for p in order:
            if p.domain != "EX" and not rf_done:
                derive_reference_dates(self.ctx)
                rf_done = True
            frame = self._map(p, self.rows.pop(p.domain, []))
            if p.domain == "EX":
                self.ctx.frames["EX"] = frame
                derive_reference_dates(self.ctx)
                rf_done = True
            frame = self._finish_frame(p, frame, self.seq[p.domain])
            self.ctx.frames[p.domain] = frame
            self._note_dates(p.domain, frame)
            if p.domain == "DM" and p.write and len(frame):
                self.dm = (p, frame)
            elif p.write and len(frame):
                self._write_whole(p, frame)
        if not rf_done:
            derive_reference_dates(self.ctx)

    def _note_dates(self, domain: str, frame: pd.DataFrame) -> None:
        """Keep each subject's latest --DTC/--STDTC/--ENDTC (ISO 8601 text compares in date order)."""
        if domain == "DM" or not len(frame) or "USUBJID" not in frame:
            return
        cols = [c for c in (f"{domain}DTC", f"{domain}STDTC", f"{domain}ENDTC") if c in frame]
        if not cols:
            return
        if cols == [f"{domain}DTC"] and DTC_CODE in frame:
            subjects = _subject_codes(frame)
            if subjects is not None and self._note_dates_codes(frame, cols[0], subjects):
                return
        # each subject's latest date with codes: the dates factorised in sorted order (one numpy
        # maximum per subject), then one comparison per subject of the chunk
        ucodes, subjects = pd.factorize(frame["USUBJID"].to_numpy(dtype=object))
        d = np.concatenate([frame[c].to_numpy(dtype=object) for c in cols])
        u = np.tile(ucodes, len(cols))
        dcodes, uniq = pd.factorize(d)
        if not all(type(x) is str for x in uniq.tolist()):   # (values that are not text)
            return self._note_dates_frame(frame, cols)
        # the distinct dates ranked in text order (Python's sort: what factorize(sort=True) does,
        # faster than its numpy object argsort)
        unsorted = uniq.tolist()
        order = sorted(range(len(unsorted)), key=unsorted.__getitem__)
        dates = [unsorted[i] for i in order]
        rank = np.full(len(order) + 1, -1, dtype=np.int64)   # code -1 (missing) -> -1
        rank[order] = np.arange(len(order))
        dcodes = rank[dcodes]
        if dates and dates[0] == "":   # sorted: "" first
            dcodes = np.where(dcodes == 0, -1, dcodes)
        ok = (dcodes >= 0) & (u >= 0)
        if not ok.any():
            return
        best = np.full(len(subjects), -1, dtype=np.int64)
        np.maximum.at(best, u[ok], dcodes[ok])
        last = self.last_dates
        subs = subjects.tolist()
        for j in np.flatnonzero(best >= 0).tolist():
            s, v = subs[j], dates[best[j]]
            if s not in last or v > last[s]:
                last[s] = v

    def _note_dates_codes(self, frame: pd.DataFrame, col: str, subjects: tuple[np.ndarray, list[Any]]) -> bool:
        """:meth:`_note_dates` of a frame whose only date column ``col`` comes with its codes (column
        DTC_CODE) and whose subjects are coded (:func:`_subject_codes`): the dates ranked once per
        code, no text factorised. False (nothing done) when a date is not text."""
        ucodes, names = subjects
        dc = frame[DTC_CODE].to_numpy()
        rows = np.flatnonzero(dc >= 0)
        if not len(rows):
            return True
        at = np.full(int(dc.max()) + 1, -1, dtype=np.int64)
        at[dc[rows]] = rows                      # a row of each code (its date is the code's)
        used = np.flatnonzero(at >= 0)
        texts = frame[col].to_numpy(dtype=object)[at[used]].tolist()
        if not set(map(type, texts)) <= {str, type(None)}:
            return False
        # the dates ranked in text order ("" and None: no date), then one numpy maximum per subject
        order = (sorted(range(len(texts)), key=texts.__getitem__) if None not in texts and "" not in texts
                 else sorted((j for j, t in enumerate(texts) if t), key=texts.__getitem__))
        rank = np.full(len(at), -1, dtype=np.int64)
        rank[used[order]] = np.arange(len(order))
        r = rank[dc[rows]]
        ok = r >= 0
        if not ok.any():
            return True
        best = np.full(len(names), -1, dtype=np.int64)
        np.maximum.at(best, ucodes[rows[ok]], r[ok])
        last = self.last_dates
        for j in np.flatnonzero(best >= 0).tolist():
            s, v = names[j], texts[order[best[j]]]
            if s not in last or v > last[s]:
                last[s] = v
        return True

    def _note_dates_frame(self, frame: pd.DataFrame, cols: list[str]) -> None:
        """:meth:`_note_dates` for date columns that hold other values than text (pandas groupby)."""
        parts = [pd.DataFrame({"u": frame["USUBJID"].to_numpy(dtype=object),
                               "d": frame[c].to_numpy(dtype=object)}) for c in cols]
        dates = pd.concat(parts, ignore_index=True)
        d = dates["d"].to_numpy(dtype=object)
        dates = dates[~pd.isna(d) & (d != "")]
        if not len(dates):
            return
        last = self.last_dates
        for u, d in dates.groupby("u", sort=False)["d"].max().items():
            if u not in last or d > last[u]:
                last[u] = d

    def _map(self, p: DomainPlugin, rows: list[dict[str, Any]] | dict[str, list[Any]]) -> pd.DataFrame:
        if isinstance(rows, dict) and p.map_columns is not None:
            return self._map_columns(p, rows)
        if isinstance(rows, dict):
            cols = pd.DataFrame(rows) if rows else pd.DataFrame()
        else:
            cols = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
            for c in base.AS_GIVEN_COLUMNS:
                if c in cols and cols[c].dtype != object:
                    # from_records made them float64 (int64, bool): rebuild them as the JSON gave them
                    cols[c] = pd.Series([r.get(c) for r in rows], dtype="object", index=cols.index)
        if not len(cols):
            return pd.DataFrame()
        cols = self._attach_subjects(p, cols)
        if not len(cols):
            return pd.DataFrame()
        dom = load_domain(p.domain)
        # the domain's own variables only: a class variable (CM VISITNUM) is kept when carried, not derived
        if "VISITNUM" in dom.spec_names and "_encounter" in cols:
            # once per distinct Encounter reference: the alias as written, else its normalised form
            # (RefIndex.resolve_series), then the visit index
            vm = self.ctx.visit_map
            alias = self.ctx.refs.alias

            def visit_of(ref: Any) -> tuple[float, str, str | None] | None:
                if ref is None:
                    return None
                key = alias.get(ref)
                if key is None:
                    key = alias.get(base.normalise_ref(ref) or "")
                return vm.get(key) if key is not None else None

            encs = base.Distinct(cols["_encounter"])
            cols["VISITNUM"] = encs.map(lambda r: v[0] if (v := visit_of(r)) is not None else None).astype("float64")
            cols["VISIT"] = encs.map(lambda r: v[1] if (v := visit_of(r)) is not None else None)
        return p.map(cols, self.ctx)

    def _map_columns(self, p: DomainPlugin, rows: dict[str, Any]) -> pd.DataFrame:
        """:meth:`_map` of a chunk given as columns to a plugin with a columnar map (``map_columns``):
        the same subject, reference-date and visit columns, kept as numpy arrays (no frame is built
        until the domain's own)."""
        cols = {name: _column_array(v) for name, v in rows.items()}
        n = len(next(iter(cols.values()))) if cols else 0
        if not n:
            return pd.DataFrame()
        got = self._attach_subject_columns(p, cols, n)
        if got is None:
            return pd.DataFrame()
        cols = got
        if "VISITNUM" in load_domain(p.domain).spec_names and "_encounter" in cols:
            vm, alias = self.ctx.visit_map, self.ctx.refs.alias
            encounters = cols["_encounter"]
            # (no Encounter named in the chunk: codes -1 throughout, without a factorisation)
            codes, uniq = ((np.full(len(encounters), -1, dtype=np.intp), [])
                           if encounters.tolist().count(None) == len(encounters)
                           else pd.factorize(encounters))
            nums = np.full(len(uniq) + 1, np.nan)
            names = np.full(len(uniq) + 1, None, dtype=object)
            for j, ref in enumerate(list(uniq)):
                # the alias as written, else its normalised form, then the visit index (as _map)
                key = alias.get(ref)
                if key is None:
                    key = alias.get(base.normalise_ref(ref) or "")
                v = vm.get(key) if key is not None else None
                if v is not None:
                    nums[j], names[j] = v[0], v[1]
            cols["VISITNUM"] = nums[codes]
            cols["VISIT"] = names[codes]
        assert p.map_columns is not None
        return p.map_columns(cols, self.ctx)

    def _attach_subject_columns(self, p: DomainPlugin, cols: dict[str, np.ndarray],
                                n: int) -> dict[str, np.ndarray] | None:
        """:meth:`_attach_subjects` on numpy columns: USUBJID and the reference dates looked up once
        per distinct subject reference; rows whose subject does not resolve reported and dropped.
        None when no row is left."""
        ctx = self.ctx
        subj = cols["_subject"] if "_subject" in cols else np.full(n, None, dtype=object)
        codes, table = ctx.usubjid_table(subj)
        known = ~pd.isna(table)
        keep = known[codes]
        if not keep.all():
            for i in np.flatnonzero(~keep).tolist():
                ref = subj[i]
                has_ref = ref is not None and ref == ref
                msg = ("subject reference does not resolve to a Patient in the input" if has_ref
                       else "resource names no subject")
                self.row_issue(p.domain, "subject", Kind.ERROR, msg,
                               record=f"{cols['_src_type'][i]}/{cols['_src_id'][i]}",
                               file=cols["_src_file"][i], rule="subject.resolve",
                               source="subject", target="USUBJID")
            if not keep.any():
                return None
            cols = {name: v[keep] for name, v in cols.items()}
            codes = codes[keep]
            n = len(codes)
        cols["USUBJID"] = table[codes]
        # one code per USUBJID (two references may name one subject), carried to the domain frame:
        # --SEQ and the latest dates count by it (_subject_codes) instead of factorising USUBJID again
        cols[SUBJECT_CODE] = pd.factorize(table)[0][codes]
        cols["STUDYID"] = base.full_object(n, ctx.studyid)
        if self.ref_dates is None or self.ref_dates[0] is not ctx.subjects:
            self.ref_dates = (ctx.subjects, self._reference_dates())
        by_subject = self.ref_dates[1]
        for name in ("RFSTDTC", "RFENDTC", "RFICDTC"):
            ref_dates = np.full(len(table), None, dtype=object)
            first = by_subject.get(name)
            if first is not None:
                ref_dates[:] = [first.get(u) if u is not None else None for u in table.tolist()]
                ref_dates[pd.isna(ref_dates)] = None   # missing as None, once per subject
            none = ref_dates.tolist().count(None) == len(ref_dates)   # (no subject has the date)
            cols[f"_{name.lower()}"] = base.full_object(n, None) if none else ref_dates[codes]
        return cols

    def _reference_dates(self) -> dict[str, dict[Any, Any]]:
        """RFSTDTC/RFENDTC/RFICDTC -> {USUBJID: date} of the subject index (the first row of a
        subject, as :meth:`_attach_subjects`); a date the index does not have is left out."""
        subjects = self.ctx.subjects
        out: dict[str, dict[Any, Any]] = {}
        for name in ("RFSTDTC", "RFENDTC", "RFICDTC"):
            if len(subjects) and name in subjects:
                first: dict[Any, Any] = {}
                for u, d in zip(subjects["USUBJID"].tolist(), subjects[name].tolist(), strict=True):
                    first.setdefault(u, d)
                out[name] = first
        return out

    def _attach_subjects(self, p: DomainPlugin, cols: pd.DataFrame) -> pd.DataFrame:
        ctx = self.ctx
        subj = cols["_subject"] if "_subject" in cols else pd.Series([None] * len(cols), index=cols.index)
        usubjid = ctx.usubjid_series(subj)
        bad = usubjid.isna()
        if bad.any():
            for i in cols.index[bad]:
                has_ref = subj.at[i] is not None and subj.at[i] == subj.at[i]
                msg = ("subject reference does not resolve to a Patient in the input" if has_ref
                       else "resource names no subject")
                self.row_issue(p.domain, "subject", Kind.ERROR, msg,
                               record=f"{cols.at[i, '_src_type']}/{cols.at[i, '_src_id']}",
                               file=cols.at[i, "_src_file"], rule="subject.resolve",
                               source="subject", target="USUBJID")
            cols = cols.loc[~bad].reset_index(drop=True)
            usubjid = usubjid.loc[~bad].reset_index(drop=True)
        cols["USUBJID"] = usubjid.astype("object")
        # object dtype (a scalar or a Series.map would give str-dtype columns, slower downstream)
        cols["STUDYID"] = np.full(len(cols), ctx.studyid, dtype=object)
        subjects = ctx.subjects.set_index("USUBJID") if len(ctx.subjects) else None
        codes, uniq = pd.factorize(cols["USUBJID"].to_numpy(dtype=object))
        for name in ("RFSTDTC", "RFENDTC", "RFICDTC"):
            if subjects is None or name not in subjects:
                cols[f"_{name.lower()}"] = None
                continue
            ref = subjects[name]
            ref = ref[~ref.index.duplicated()].astype(object)
            table = np.empty(len(uniq) + 1, dtype=object)
            table[:-1] = ref.reindex(uniq).to_numpy(dtype=object)
            table[-1] = None
            table[pd.isna(table)] = None   # missing as None, once per subject (not per row)
            cols[f"_{name.lower()}"] = pd.Series(table[codes], index=cols.index, dtype="object")
        return cols

    def _finish_frame(self, p: DomainPlugin, df: pd.DataFrame, seq_start: dict[str, int]) -> pd.DataFrame:
        """Generic derivations the map left out: DOMAIN, --DY, EPOCH, --SEQ."""
        if not len(df):
            return df
        dom = load_domain(p.domain)
        names = set(dom.spec_names)     # derived only for the domain's own variables (not class additions)
        d = p.domain
        if "DOMAIN" in names and "DOMAIN" not in df:
            df["DOMAIN"] = d
        if "STUDYID" not in df:
            df["STUDYID"] = self.ctx.studyid
        rf = df["_rfstdtc"] if "_rfstdtc" in df else pd.Series([None] * len(df), index=df.index)
        rfe = df["_rfendtc"] if "_rfendtc" in df else pd.Series([None] * len(df), index=df.index)
        ric = df["_rficdtc"] if "_rficdtc" in df else pd.Series([None] * len(df), index=df.index)
        dates: dict[str, pd.Series] = {}   # date parts, each taken once (--DY and EPOCH share them)

        def date_of(name: str, s: pd.Series) -> pd.Series:
            if name not in dates:
                dates[name] = base._date_part(s)
            return dates[name]

        # no subject of the chunk has a reference start: no --DY, no EPOCH (the dates need no parsing)
        no_ref = bool(rf.isna().all()) or bool(date_of("_rfstdtc", rf).isna().all())
        for dtc, dy in ((f"{d}DTC", f"{d}DY"), (f"{d}STDTC", f"{d}STDY"), (f"{d}ENDTC", f"{d}ENDY")):
            if dy in names and dy not in df and dtc in df:
                df[dy] = (pd.arrays.IntegerArray(np.zeros(len(df), dtype=np.int64), np.ones(len(df), dtype=bool))
                          if no_ref else base.dy_from_dates(date_of(dtc, df[dtc]), date_of("_rfstdtc", rf)))
        if "VISITDY" in names and "VISITDY" not in df and "VISITNUM" in df and self.ctx.planned_visitdy:
            # SDTMIG 3.4 SV/TV: VISITDY is the planned study day of a planned visit (TV); null for
            # unplanned visits (their VISITNUM is in no TV row)
            visitdy = df["VISITNUM"].map(self.ctx.planned_visitdy).astype("Int64")
            if visitdy.notna().any():      # no all-empty Perm column for records without visits
                df["VISITDY"] = visitdy
                self.ctx.once("visitdy", Kind.INFERRED, "VISITDY: the planned study day of the visit in the "
                              "trial design (TV); null for unplanned visits", rule="subject.visit",
                              target="VISITDY")
        if "EPOCH" in names and "EPOCH" not in df and p.dtc and p.dtc in df and no_ref:
            df["EPOCH"] = pd.Series(base.full_object(len(df), None), index=df.index, dtype="object")
        elif "EPOCH" in names and "EPOCH" not in df and p.dtc and p.dtc in df:
            df["EPOCH"] = base.epoch_from_dates(date_of(p.dtc, df[p.dtc]), date_of("_rfstdtc", rf),
                                                date_of("_rfendtc", rfe), date_of("_rficdtc", ric))
            epochs = self.ctx.ta_epochs
            if epochs is not None:
                # an EPOCH the study's TA does not have (a record the CT.gov text names no screening or
                # follow-up for) would point to no trial-design epoch: left null, reported once per value
                off = df["EPOCH"].notna() & ~df["EPOCH"].isin(epochs)
                if off.any():
                    for val in sorted(set(df.loc[off, "EPOCH"])):
                        self.ctx.once(f"epoch-not-ta-{val}", Kind.LOSSY, f"EPOCH {val} (by date) is not an "
                                      "epoch of the study definition's trial arms (TA): left null",
                                      rule="subject.epoch", source="TA.EPOCH", target="EPOCH")
                    df["EPOCH"] = df["EPOCH"].where(~off, None)
            if df["EPOCH"].notna().any():
                self.ctx.once("epoch", Kind.INFERRED,
                              "EPOCH inferred from the date relative to RFSTDTC/RFENDTC (SCREENING "
                              "from RFICDTC on, TREATMENT during, FOLLOW-UP after; null before "
                              "informed consent), "
                              + ("kept where the study definition's trial arms (TA) have that epoch"
                                 if epochs is not None else "no trial-design epochs (TA) to hold it to"),
                              rule="subject.epoch", target="EPOCH")
        seq = f"{d}SEQ"
        if seq in names and seq not in df:
            subjects = _subject_codes(df)
            df[seq] = (base.derive_seq(df["USUBJID"], seq_start) if subjects is None else
                       base.seq_of_codes(subjects[0], subjects[1], seq_start, df.index))
        return df

    def _split(self, p: DomainPlugin, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(SDTM frame, SUPP frame, provenance frame)."""
        d = p.domain
        seq = f"{d}SEQ" if f"{d}SEQ" in df else None
        prov = pd.DataFrame({"USUBJID": df["USUBJID"].to_numpy(),
                             "SEQ": df[seq].to_numpy() if seq else None,
                             **{c[1:]: (df[c].to_numpy() if c in df else None) for c in SRC_COLUMNS}})
        supp_parts = []
        for qnam, spec in p.supp.items():
            if qnam not in df:
                continue
            vals = df[qnam]
            keep = vals.notna() & (vals.astype(str) != "")
            if not keep.any():
                continue
            part = pd.DataFrame({
                "STUDYID": self.ctx.studyid, "RDOMAIN": d,
                "USUBJID": df.loc[keep, "USUBJID"].to_numpy(),
                "IDVAR": seq or "", "IDVARVAL": (df.loc[keep, seq].astype(str).to_numpy() if seq else ""),
                "QNAM": qnam, "QLABEL": spec[0], "QVAL": vals[keep].astype(str).to_numpy(),
                "QORIG": spec[1] if len(spec) > 1 else "CRF",
                "QEVAL": spec[2] if len(spec) > 2 else ""})
            supp_parts.append(part)
        supp = pd.concat(supp_parts, ignore_index=True) if supp_parts else pd.DataFrame()
        if "_relrec" in df and seq:
            self.relrec_frames.append(_relrec_rows(d, df, seq, self.ctx.studyid))
        names = set(load_domain(d).names)
        sdtm = df[[c for c in df.columns if c in names]]
        return sdtm, supp, prov

    def _write_whole(self, p: DomainPlugin, df: pd.DataFrame) -> None:
        sdtm, supp, prov = self._split(p, df)
        # rows in key order (schemas/sdtm/domains.csv); provenance in the same order, row for row
        order = key_order(sdtm, p.domain)
        sdtm = sdtm.iloc[order].reset_index(drop=True)
        prov = prov.iloc[order].reset_index(drop=True)
        self.written += write_domain(sdtm, p.domain, self.outdir, self.formats, study_oid=self.ctx.studyid,
                                     report=self.ctx.report, long_text=self.xpt_supp[p.domain])
        if len(supp):
            self.supp_frames[p.domain].append(supp)
        self.written.append(_write_provenance(prov, p.domain, self.outdir, append=False))

    # -- pass 2
    def pass2(self, inputs: list[Path]) -> None:
        routes = self._by_type(streamed=True)
        if not routes:
            return
        streamed = {p.domain: p for p in self.plugins.values() if p.streamed}
        errors: list[tuple[str, int | None, str]] = []
        columnar = _columnar_route(routes)
        if columnar is not None:
            self._pass2_columns(inputs, routes, columnar, streamed, errors)
            self._report_read_errors(errors)
            return
        sink: dict[str, list[dict[str, Any]]] = defaultdict(list)
        n = 0
        for item in iter_resources(inputs, types=set(routes), errors=errors):
            self._extract(item, routes[item.resource["resourceType"]], sink)
            n += 1
            if n >= CHUNK_ROWS:
                self._flush(sink, streamed)
                sink, n = defaultdict(list), 0
        self._flush(sink, streamed)
        self._report_read_errors(errors)

    def _pass2_columns(self, inputs: list[Path], routes: dict[str, list[tuple[Any, list[DomainPlugin]]]],
                       group: list[DomainPlugin], streamed: dict[str, DomainPlugin],
                       errors: list[tuple[str, int | None, str]]) -> None:
        """The fast path: chunks of resources extracted straight into column lists."""
        fn = group[0].extract_columns
        assert fn is not None
        first = group[0].domain

        def on_error(item: Any, exc: Exception) -> None:
            res = item.resource
            self.row_issue(first, "shape", Kind.INVALID_VALUE,
                           f"resource does not have the expected FHIR shape ({type(exc).__name__})",
                           record=f"{res.get('resourceType')}/{res.get('id')}", file=item.file,
                           rule=f"{first.lower()}.extract")

        # a typed decoder of the streamed type's NDJSON lines when its plugins share one
        factories = {p.line_decoder for p in group}
        factory = factories.pop() if len(factories) == 1 else None
        decode = factory() if factory is not None else None
        # with a decoder, the extractor reads the NDJSON lines itself (reader.ResourceStream)
        stream = ResourceStream(inputs, types=set(routes), errors=errors, decode_as=(next(iter(routes)), decode)
                                ) if decode is not None else None
        items = iter_resources(inputs, types=set(routes), errors=errors)   # (a generator: unread with a stream)
        try:
            while True:
                cols, n = fn(islice(items, CHUNK_ROWS) if stream is None else stream.chunk(CHUNK_ROWS),
                             self.ctx, on_error)
                self._flush({d: c for d, c in cols.items() if d in streamed}, streamed)
                if n < CHUNK_ROWS:
                    break
        finally:
            if stream is not None:
                stream.close()

    def _flush(self, sink: dict[str, Any], streamed: dict[str, DomainPlugin]) -> None:
        """Map, finish and write one chunk; ``sink`` holds per domain a list of rows or a dict of
        column lists."""
        for dom, rows in sink.items():
            p = streamed[dom]
            frame = self._finish_frame(p, self._map(p, rows), self.seq[dom])
            if not len(frame):
                continue
            sdtm, supp, prov = self._split(p, frame)
            w = self.writers.get(dom)
            if w is None:
                w = self.writers[dom] = ChunkedDomainWriter(
                    dom, self.outdir, self.formats, study_oid=self.ctx.studyid, report=self.ctx.report,
                    companion=self.outdir / f"{dom.lower()}.provenance.csv",
                    companion_csv=lambda frame, fh, header: _provenance_csv(frame, fh, header=header))
                w.long_text = self.xpt_supp[dom]
            # the writer puts the rows in key order at close; provenance follows them row for row
            w.write(sdtm, companion=prov)
            self._note_dates(dom, frame)
            if len(supp):
                self.supp_frames[dom].append(supp)

    def abort(self) -> None:
        """The run failed: every streamed writer's spools removed (datasets not yet closed are not written)."""
        for w in self.writers.values():
            w.abort()

    def finish(self) -> list[Path]:
        if self.dm is not None:
            dm_plugin, dm = self.dm
            dm = derive_death_flag(dm, self.ctx)
            dm = derive_rfpendtc(dm, self.last_dates, self.ctx)
            self.ctx.frames["DM"] = dm
            self._write_whole(dm_plugin, dm)
        for w in self.writers.values():
            self.written += w.close()
        for dom in sorted(set(self.supp_frames) | {d for d, v in self.xpt_supp.items() if v}):
            parts = self.supp_frames.get(dom, [])
            supp = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            split = self.xpt_supp.get(dom)
            formats = self.formats if not split else tuple(f for f in self.formats if f != "xpt")
            if len(supp) and formats:
                self.written += write_domain(supp, f"SUPP{dom}", self.outdir, formats,
                                             study_oid=self.ctx.studyid, report=self.ctx.report, sort=True)
            if split and "xpt" in self.formats:   # the XPT's SUPP-- holds the rest of the split text too
                both = pd.concat([supp, *split], ignore_index=True) if len(supp) else pd.concat(split, ignore_index=True)
                self.written += write_domain(both, f"SUPP{dom}", self.outdir, ("xpt",),
                                             study_oid=self.ctx.studyid, report=self.ctx.report, sort=True)
        if self.relrec_frames:
            relrec = pd.concat(self.relrec_frames, ignore_index=True)
            self.written += write_domain(relrec, "RELREC", self.outdir, self.formats,
                                         study_oid=self.ctx.studyid, report=self.ctx.report, sort=True)
        report_dropped_zones(self.ctx)
        unread.report_unread(self.ctx)
        for (dom, reason), n in sorted(self.ctx.issue_counts.items()):
            if n > base.MAX_ROW_ISSUES:
                self.ctx.report.add(Kind.ERROR if reason == "subject" else Kind.INVALID_VALUE,
                                    f"{n - base.MAX_ROW_ISSUES} more {dom} resources with the same problem "
                                    f"({reason}) not listed one by one", rule=f"subject.{reason}")
        out: list[Path] = []
        for p in self.written:
            if p not in out:
                out.append(p)
        return out


def report_dropped_zones(ctx: base.Ctx) -> None:
    """One lossy entry for the UTC offsets (and fractional seconds) the --DTC variables dropped: per
    variable, the offsets seen and how many values had each, so the user knows which zone to give
    back (SDTM -> FHIR ``--default-tz``). Offsets and counts only, no subject values. Kept as data in
    ``report.extra["droppedUtcOffsets"]`` (read by the round-trip harness)."""
    seen = {var: dict(sorted(c.items())) for var, c in sorted(ctx.dropped_zones.items()) if c}
    if not seen:
        return
    ctx.report.extra["droppedUtcOffsets"] = seen
    zones = sorted({z for c in seen.values() for z in c if z != "fraction"})
    parts = "; ".join(f"{var} " + ", ".join(f"{z} x{n}" for z, n in c.items()) for var, c in seen.items())
    hint = (f"give it back with SDTM -> FHIR --default-tz {zones[0]}" if len(zones) == 1 else
            f"{len(zones)} different offsets: one --default-tz cannot restore them all" if zones else
            "no offset dropped")
    what = "UTC offsets" + (" and fractional seconds" if any("fraction" in c for c in seen.values()) else "")
    ctx.report.add(Kind.LOSSY, f"{what} dropped from --DTC (the ISO 8601 --DTC forms of SDTMIG 3.4 §4.4 have no "
                   f"UTC offset; the local clock time is kept): {parts}; {hint}", rule="subject.dtc-zone",
                   source="dateTime offset", target="--DTC")


def _relrec_rows(domain: str, df: pd.DataFrame, seq: str, studyid: str) -> pd.DataFrame:
    """RELREC rows of the records whose resource carried ``relrec`` extensions (column ``_relrec``):
    the record is identified by its --SEQ as written here (SDTMIG 3.4 section 8.2: IDVAR/IDVARVAL name
    the record), so links survive the renumbering; RELID/RELTYPE as carried."""
    rows = [{"STUDYID": studyid, "RDOMAIN": domain, "USUBJID": u, "IDVAR": seq,
             "IDVARVAL": str(int(q)) if q == q else "", "RELTYPE": link.get("RELTYPE"), "RELID": link["RELID"]}
            for u, q, links in zip(df["USUBJID"], df[seq], df["_relrec"], strict=True)
            for link in links or ()]
    return pd.DataFrame(rows, columns=["STUDYID", "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "RELTYPE", "RELID"])


def _subject_codes(df: pd.DataFrame) -> tuple[np.ndarray, list[Any]] | None:
    """(per row a code of its USUBJID, the USUBJIDs in order of their first row: what
    ``pd.factorize(df["USUBJID"])`` gives) from the frame's SUBJECT_CODE column, factorising ints,
    not texts; None when the frame has no such column or a row no subject."""
    if SUBJECT_CODE not in df or not len(df):
        return None
    hint = df[SUBJECT_CODE].to_numpy()
    if hint.min() < 0:
        return None
    codes, uniq = pd.factorize(hint)
    at = np.empty(len(uniq), dtype=np.int64)
    at[codes] = np.arange(len(codes))            # a row of each subject
    return codes, df["USUBJID"].to_numpy(dtype=object)[at].tolist()


def _column_array(values: Any) -> np.ndarray:
    """One extracted column as a numpy array: object Series as they are, lists as pandas infers
    them in a frame (line numbers -> int64)."""
    if isinstance(values, pd.Series) and values.dtype == object:
        return values.to_numpy()
    if isinstance(values, list):
        if values and set(map(type, values)) == {int}:
            try:   # plain ints (line numbers): int64 as pandas infers it, without its slow inference
                return np.fromiter(values, dtype=np.int64, count=len(values))
            except OverflowError:
                pass
        return pd.Series(values).to_numpy()
    return np.asarray(values)


def _columnar_route(routes: dict[str, list[tuple[Any, list[DomainPlugin]]]]) -> list[DomainPlugin] | None:
    """The plugins of the single streamed type when they share one extractor that has a columnar
    form (``extract_columns``), else None (the row path)."""
    if len(routes) != 1:
        return None
    (groups,) = routes.values()
    if len(groups) != 1:
        return None
    group = groups[0][1]
    fns = {p.extract_columns for p in group}
    return group if len(fns) == 1 and None not in fns else None


def _plugin_order(plugins: list[DomainPlugin]) -> list[DomainPlugin]:
    """EX first (reference dates), then the rest respecting ``depends`` (stable by domain name)."""
    by = {p.domain: p for p in plugins}
    done: list[str] = []

    def visit(d: str, stack: tuple[str, ...]) -> None:
        if d in done or d not in by:
            return
        if d in stack:
            raise ValueError(f"domain dependency cycle: {' -> '.join(stack + (d,))}")
        for dep in by[d].depends:
            visit(dep, stack + (d,))
        done.append(d)

    for d in sorted(by, key=lambda x: (x != "EX", x)):
        visit(d, ())
    return [by[d] for d in done]


def _write_provenance(prov: pd.DataFrame, domain: str, outdir: Path, *, append: bool) -> Path:
    target = outdir / f"{domain.lower()}.provenance.csv"
    if append:
        with open(target, "a", newline="", encoding="utf-8") as fh:
            _provenance_csv(prov, fh, header=False)
    else:
        with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            _provenance_csv(prov, fh, header=True)
    return target


def _provenance_csv(prov: pd.DataFrame, fh: Any, *, header: bool) -> None:
    """``prov.to_csv(fh, index=False, lineterminator="\\n")``, column by column: the csv module
    writes what pandas writes for integer and text columns (missing -> empty); other dtypes
    (floats, dates) are left to pandas."""
    cols: list[list[Any]] = []
    texts: list[bool] = []   # column already all str (no per-value conversion needed)
    checked: set[int] = set()   # columns whose values are known to need no quoting
    for name in prov.columns:
        s = prov[name]
        kind = s.dtype.kind
        if kind in "iu" and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
            # str(int) for every value (digits and a sign: never quoted)
            checked.add(len(cols))
            cols.append(list(map(str, s.to_numpy().tolist())))
            texts.append(True)
            continue
        if kind == "b" and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
            cols.append(s.to_numpy().tolist())
            texts.append(False)
            continue
        if kind == "O":
            arr = s.to_numpy(dtype=object)
            if pd.api.types.infer_dtype(arr, skipna=False) == "string":
                # all text, none missing (the usual case): checked in C, no per-value work
                cols.append(arr.tolist())
                texts.append(True)
                continue
            # text with missing values: one factorisation checks the type of the distinct values
            # only, and gives the missing ones (-> "")
            codes, uniq = pd.factorize(arr)
            distinct = uniq.tolist()
            if pd.api.types.infer_dtype(uniq, skipna=False) in ("string", "empty"):
                joined = "\x00".join(distinct)
                if not any(ch in joined for ch in ',"\r\n'):
                    checked.add(len(cols))
                table = np.empty(len(distinct) + 1, dtype=object)
                table[:-1] = distinct
                table[-1] = ""
                cols.append(table[codes].tolist())
                texts.append(True)
                continue
        inferred = pd.api.types.infer_dtype(s, skipna=True) if kind in "OT" else ""
        if inferred not in ("string", "empty", "integer"):
            prov.to_csv(fh, index=False, header=header, lineterminator="\n")
            return
        arr = s.to_numpy(dtype=object)
        miss = pd.isna(arr)
        if miss.any():
            arr = arr.copy()
            arr[miss] = ""
        cols.append(arr.tolist())
        texts.append(inferred != "integer")
    if header:
        csv.writer(fh, lineterminator="\n").writerow(list(prov.columns))
    text: list[list[str]] = []
    for j, (c, is_text) in enumerate(zip(cols, texts, strict=True)):
        strs = c if is_text else [str(v) for v in c]
        if j in checked:
            text.append(strs)
            continue
        joined = "\x00".join(strs)
        if any(ch in joined for ch in ',"\r\n'):
            text = []   # a value needs quoting: the csv module decides how
            break
        text.append(strs)
    if text:
        # nothing to quote: a row is its values joined by commas (what the csv module writes then)
        if len(cols[0]):
            fh.write("\n".join(map(",".join, zip(*text, strict=True))) + "\n")
        return
    csv.writer(fh, lineterminator="\n").writerows(zip(*cols, strict=True))


# ----------------------------------------------------------------------------------------- pass-1 engine
def collect_engine(item: Any, ctx: Ctx) -> None:
    """Index every pass-1 resource; keep the small ones the engine needs (scrubbed)."""
    res = item.resource
    rtype = res.get("resourceType")
    key = ctx.refs.add(rtype, res.get("id"), item.full_url)
    if key is None or rtype not in ENGINE_TYPES:
        return
    if rtype == "Patient":
        res = {k: res[k] for k in PATIENT_KEEP if k in res}
        res["extension"] = [e for e in res.get("extension") or () if isinstance(e, dict)
                            and e.get("url") in PATIENT_EXTENSIONS]
        addr = item.resource.get("address")
        if isinstance(addr, list):
            res["_countries"] = [a.get("country") for a in addr if isinstance(a, dict) and a.get("country")]
        res["_file"] = item.file
    elif rtype == "Encounter":
        per = res.get("actualPeriod") or res.get("period") or {}
        res = {"resourceType": rtype, "id": res.get("id"),
               "subject": base.ref_of(res.get("subject") or res.get("patient")),
               "start": per.get("start") if isinstance(per, dict) else None,
               "end": per.get("end") if isinstance(per, dict) else None,
               "serviceProvider": base.ref_of(res.get("serviceProvider")),
               "status": res.get("status"), "_names": _encounter_names(res),
               "_type_text": _encounter_type_text(res), "_unscheduled": _encounter_unscheduled(res)}
    ctx.resources.setdefault(rtype, {})[key] = res


@transform("decide_studyid")
def decide_studyid(given: str | None, ctx: Ctx) -> str:
    if given:
        return given
    st = ctx.study
    if st is not None:
        ident = st.identification
        if ident and ident.org_study_id and ident.org_study_id.id:
            return ident.org_study_id.id
        if ident and ident.nct_id:
            return ident.nct_id
    studies = ctx.resources.get("ResearchStudy", {})
    parts_of = {ctx.refs.resolve(base.ref_of(_first_part_of(r))) for r in studies.values()}
    for key, r in studies.items():
        if r.get("partOf") and key not in parts_of:
            continue
        for ident in r.get("identifier") or ():
            if isinstance(ident, dict) and ident.get("value"):
                ctx.once("studyid", Kind.INFERRED, "STUDYID taken from the ResearchStudy identifier in "
                         "the data (no --studyid, no --study)", rule="subject.studyid", target="STUDYID")
                return str(ident["value"])
    raise UsageError("no STUDYID: give --studyid or --study (a study definition), or include the "
                     "ResearchStudy with an identifier in the input")


def _first_part_of(study: dict[str, Any]) -> Any:
    """ResearchStudy.partOf: the first Reference of the R5 list (an empty list as is), else the R4 one."""
    part_of = study.get("partOf")
    return part_of[0] if isinstance(part_of, list) and part_of else part_of


def _identifier_value(res: dict[str, Any] | None) -> str | None:
    for ident in (res or {}).get("identifier") or ():
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    return None


def _is_mrn(ident: dict[str, Any]) -> bool:
    t = ident.get("type")
    if not isinstance(t, dict) or not base.first_coding(t):    # (first_coding is None for a non-dict)
        return False
    return any(c.get("code") == "MR" for c in t.get("coding") or () if isinstance(c, dict))


def build_subject_index(ctx: Ctx) -> None:
    """One row per Patient: USUBJID, SUBJID, SITEID, arms (matched later by DM), consent, aliases."""
    from .identity import assign_arms, site_of, subject_id_of  # the identity rules live together
    patients = ctx.resources.get("Patient", {})
    rs_by_patient: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for key, subj in ctx.resources.get("ResearchSubject", {}).items():
        pref = base.ref_of(subj.get("subject") or subj.get("individual"))
        pkey = ctx.refs.resolve(pref)
        if pkey is None or pkey not in patients:
            ctx.report.add(Kind.MISSING, "ResearchSubject names no Patient present in the input",
                           record=key, rule="subject.index", source="ResearchSubject.individual|subject")
            continue
        rs_by_patient[pkey].append((key, subj))
    rows = []
    seen: dict[str, str] = {}
    for pkey, pat in patients.items():
        rs_list = rs_by_patient.get(pkey, [])
        rskey: str | None = None
        rs: dict[str, Any] | None = None
        if rs_list:
            rskey, rs = rs_list[0]
        if len(rs_list) > 1:
            ctx.report.add(Kind.INFERRED, "Patient has several ResearchSubjects; the first is used",
                           record=pkey, rule="subject.index")
        subjid = subject_id_of(pat, rs, ctx)
        usubjid = f"{ctx.studyid}-{subjid}"
        if usubjid in seen and rs is None and not ctx.expose_mrn:
            # two Patient resources share their first identifier: keep them apart by resource id
            subjid = ctx.hashed_id(pkey)
            usubjid = f"{ctx.studyid}-{subjid}"
            ctx.report.add(Kind.INFERRED, "Patient shares its identifier with another Patient: "
                           "SUBJID hashed from the resource id instead", record=pkey,
                           rule="dm.SUBJID", target="SUBJID")
        if usubjid in seen:
            ctx.report.add(Kind.ERROR, "two Patients give the same USUBJID; the second is dropped",
                           record=pkey, rule="subject.index", target="USUBJID")
            continue
        seen[usubjid] = pkey
        rows.append({"_key": pkey, "_rs": rskey, "USUBJID": usubjid, "SUBJID": subjid,
                     "SITEID": site_of(pat, rs, ctx, pkey), **assign_arms(rs, ctx, pkey)})
    cols = ["_key", "_rs", "USUBJID", "SUBJID", "SITEID", "ARMCD", "ARM", "ACTARMCD", "ACTARM",
            "ARMNRS", "ACTARMUD", "RFSTDTC", "RFENDTC", "RFXSTDTC", "RFXENDTC", "RFICDTC"]
    ctx.subjects = pd.DataFrame(rows, columns=cols)
    by_key = {r["_key"]: r["USUBJID"] for r in rows}
    by_key.update({r["_rs"]: r["USUBJID"] for r in rows if r["_rs"]})
    ctx.subject_alias = {alias: by_key[k] for alias, k in ctx.refs.alias.items() if k in by_key}


#: encounter classes that are not protocol visits (emergency, inpatient...): always unplanned
UNPLANNED_CLASSES = frozenset({"EMER", "IMP", "ACUTE", "NONAC", "SS"})
_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_UNSCHEDULED_TEXT = re.compile(r"\b(unscheduled|unplanned)\b", re.I)


def _norm_visit(text: Any) -> str:
    """Visit names compared upper-case with every run of other characters as one space."""
    return re.sub(r"[^A-Z0-9.]+", " ", str(text).upper()).strip()


def _encounter_types(res: dict[str, Any]) -> list[dict[str, Any]]:
    t = res.get("type")
    return [c for c in (t if isinstance(t, list) else [t]) if isinstance(c, dict)]


def _encounter_names(res: dict[str, Any]) -> list[str]:
    """What may name the planned visit: identifier values, type texts, coding displays and codes."""
    out: list[str] = []
    for ident in res.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("value"):
            out.append(_norm_visit(ident["value"]))
    for cc in _encounter_types(res):
        if cc.get("text"):
            out.append(_norm_visit(cc["text"]))
        for c in cc.get("coding") or ():
            if isinstance(c, dict):
                out += [_norm_visit(c[k]) for k in ("display", "code") if c.get(k)]
    return [n for n in out if n]


def _encounter_type_text(res: dict[str, Any]) -> str | None:
    return next((t for t in map(concept_text, _encounter_types(res)) if t), None)


def _encounter_unscheduled(res: dict[str, Any]) -> bool:
    cls = res.get("class")
    items = cls if isinstance(cls, list) else [cls]
    codes: set[str] = set()
    for c in items:
        if isinstance(c, dict) and "coding" in c:              # R5 CodeableConcept
            codes |= {str(x.get("code")) for x in c.get("coding") or ()
                      if isinstance(x, dict) and x.get("system") == _ACT}
        elif isinstance(c, dict) and c.get("system") == _ACT:  # R4 Coding
            codes.add(str(c.get("code")))
    texts = [t for cc in _encounter_types(res) for t in
             [cc.get("text")] + [x.get("display") for x in cc.get("coding") or () if isinstance(x, dict)] if t]
    return bool(codes & UNPLANNED_CLASSES) or any(_UNSCHEDULED_TEXT.search(str(t)) for t in texts)


def visit_window(visitdy: int) -> int:
    """Days either side of VISITDY within which an encounter's study day matches the planned visit:
    10% of the planned offset from day 1, at least 3 days (rule subject.visit)."""
    return max(3, round(abs(visitdy - 1) * 0.1))


def load_planned_visits(ctx: Ctx) -> list[dict[str, Any]]:
    """TV rows of the study definition, derived by the trial design conversion itself
    (:func:`trialbridge.sdtm.tdm_design.build_tv`) so SV and TV agree; its own inference notes
    belong to the TV conversion and are not repeated here."""
    if ctx.study is None:
        return []
    from ..sdtm.tdm_design import build_tv
    return build_tv(ctx.study, ConversionReport())


def load_ta_epochs(ctx: Ctx) -> frozenset[str] | None:
    """EPOCH values of the TA the trial design conversion derives from the study definition
    (:func:`trialbridge.sdtm.tdm_design.build_ta_te`; its notes belong to that conversion); None
    without a study definition or when that TA has no element (no epochs to hold EPOCH to)."""
    if ctx.study is None:
        return None
    from ..sdtm.tdm_design import build_ta_te
    ta, _ = build_ta_te(ctx.study, ConversionReport())
    return frozenset(str(r["EPOCH"]) for r in ta if r.get("EPOCH")) or None


def _study_day(dtc: str | None, ref: str | None) -> int | None:
    if not dtc or not ref or len(dtc) < 10 or len(ref) < 10:
        return None
    try:
        diff = (date.fromisoformat(dtc[:10]) - date.fromisoformat(ref[:10])).days
    except ValueError:
        return None
    return diff + 1 if diff >= 0 else diff


def build_visit_index(ctx: Ctx) -> None:
    """VISITNUM/VISIT per Encounter.

    With planned visits (TV of the study definition): an Encounter whose identifier, type text, coding
    display or code names a planned VISIT takes its VISITNUM/VISIT; else the planned visit whose VISITDY
    is nearest the encounter's study day (relative to the first study-drug administration), within
    :func:`visit_window`; each planned visit is matched once per subject. Unscheduled encounters (class
    EMER/IMP/ACUTE/NONAC/SS, or type text "unscheduled"/"unplanned") and unmatched ones are unplanned:
    VISITNUM = the subject's preceding planned VISITNUM + .1, .2... (0.1... before the first),
    VISIT = "UNSCHEDULED <VISITNUM>", so later planned visits keep their numbers (SDTMIG 3.4 SV).
    Without planned visits: the subject's encounters in date order, 1..n (the IG notes that encounters
    need not match protocol visits). Every inference is reported once."""
    encs = list(ctx.resources.get("Encounter", {}).items())
    if not encs:
        return
    df = pd.DataFrame({"key": [k for k, _ in encs],
                       "subj": ctx.usubjid_series(pd.Series([e["subject"] for _, e in encs], dtype="object")),
                       "start": [e.get("start") or "" for _, e in encs]})
    df = df[df["subj"].notna()].sort_values(["subj", "start", "key"], kind="stable")
    planned = load_planned_visits(ctx)
    ctx.has_planned_visits = bool(planned)
    if planned:
        _match_planned_visits(ctx, df, planned)
        return
    df["n"] = df.groupby("subj", sort=False).cumcount() + 1
    ctx.visit_map = {k: (float(n), f"VISIT {n}", s or None)
                     for k, n, s in zip(df["key"], df["n"], df["start"], strict=True)}
    if ctx.visit_map:
        ctx.once("visits", Kind.INFERRED, "VISITNUM/VISIT inferred from the order of each subject's "
                 "Encounters (no planned visits in the study definition)", rule="subject.visit",
                 target="VISITNUM")


def _first_exposure(ctx: Ctx) -> dict[str, str]:
    """USUBJID -> first study-drug administration start, by the EX rule (ex.study-drug: the medication
    names an intervention of the study definition): the RFSTDTC EX will give, known before EX is mapped."""
    from .domains import _codes as C
    names = C.study_drug_names(ctx)
    out: dict[str, str] = {}
    for ma in ctx.resources.get("MedicationAdministration", {}).values():
        if ma.get("status") in ("not-done", "entered-in-error"):
            continue
        concept, _ = C.medication_concept(ma, ctx)
        if C.study_drug_of(concept, names) is None:
            continue
        start = next((s for stem in ("effective", "occurence", "occurrence")
                      for s in (C.period_or_datetime(ma, stem)[0],) if s), None)
        u = ctx.subject_alias.get(ctx.refs.resolve(base.ref_of(ma.get("subject"))) or "")
        if u and isinstance(start, str) and (u not in out or start < out[u]):
            out[u] = start
    return out


def _match_planned_visits(ctx: Ctx, df: pd.DataFrame, planned: list[dict[str, Any]]) -> None:
    by_name = {_norm_visit(v["VISIT"]): v for v in planned}
    ref = _first_exposure(ctx)
    if len(ctx.subjects) and "RFSTDTC" in ctx.subjects:   # carried (project input) reference starts
        for u, d in zip(ctx.subjects["USUBJID"], ctx.subjects["RFSTDTC"], strict=True):
            if isinstance(d, str) and d and u not in ref:
                ref[u] = d
    resources = ctx.resources.get("Encounter", {})
    used: set[tuple[str, float]] = set()
    matched: dict[str, tuple[dict[str, Any], str]] = {}
    # 1. by name (first pass, so a name wins over a nearer study day)
    for key, subj in zip(df["key"], df["subj"], strict=True):
        enc = resources[key]
        if enc.get("_unscheduled"):
            continue
        hit = next((by_name[n] for n in enc.get("_names") or () if n in by_name), None)
        if hit is not None and (subj, hit["VISITNUM"]) not in used:
            used.add((subj, hit["VISITNUM"]))
            matched[key] = (hit, "name")
    # 2. by study day within the window
    for key, subj, start in zip(df["key"], df["subj"], df["start"], strict=True):
        enc = resources[key]
        if key in matched or enc.get("_unscheduled"):
            continue
        day = _study_day(start, ref.get(subj))
        if day is None:
            continue
        best = min((v for v in planned if (subj, v["VISITNUM"]) not in used
                    and v["VISITDY"] is not None    # a visit without a planned day matches by name only
                    and abs(day - int(v["VISITDY"])) <= visit_window(int(v["VISITDY"]))),
                   key=lambda v: (abs(day - int(v["VISITDY"])), v["VISITNUM"]), default=None)
        if best is not None:
            used.add((subj, best["VISITNUM"]))
            matched[key] = (best, "day")
    # 3. numbering: planned from TV, unplanned after the preceding planned visit of the subject
    vmap: dict[str, tuple[float, str, str | None]] = {}
    unplanned: dict[str, str | None] = {}
    prev_subj, prev_num, extra = None, 0.0, 0
    for key, subj, start in zip(df["key"], df["subj"], df["start"], strict=True):
        if subj != prev_subj:
            prev_subj, prev_num, extra = subj, 0.0, 0
        if key in matched:
            v = matched[key][0]
            num = float(v["VISITNUM"])
            vmap[key] = (num, str(v["VISIT"]), start or None)
            if num > prev_num and start:   # a missed visit (no date) fixes no position
                prev_num, extra = num, 0
            continue
        extra += 1
        num = round(prev_num + extra / 10 if extra < 10 else prev_num + extra / 100, 3)
        vmap[key] = (num, f"UNSCHEDULED {num:g}", start or None)
        unplanned[key] = resources[key].get("_type_text")
    ctx.visit_map, ctx.unplanned_visits = vmap, unplanned
    ctx.planned_visitdy = {float(v["VISITNUM"]): int(v["VISITDY"]) for v in planned if v["VISITDY"] is not None}
    how = {m for _, m in matched.values()}
    if "name" in how:
        ctx.once("visits.name", Kind.INFERRED, "Encounters matched to the planned visits of the trial "
                 "design (TV) by a visit name in their identifier, type text or coding",
                 rule="subject.visit", source="Encounter.identifier|type", target="VISITNUM")
    if "day" in how:
        ctx.once("visits.day", Kind.INFERRED, "Encounters matched to the planned visits of the trial "
                 "design (TV) by study day (relative to the first study-drug administration) within "
                 "max(3 days, 10% of VISITDY - 1) of VISITDY", rule="subject.visit",
                 source="Encounter.period.start", target="VISITNUM")
    if unplanned:
        ctx.once("visits.unplanned", Kind.INFERRED, "Encounters matching no planned visit, or "
                 "unscheduled/inpatient, taken as unplanned visits: VISITNUM = preceding planned "
                 "VISITNUM + .1, .2...", rule="subject.visit", source="Encounter", target="VISITNUM")


def derive_death_flag(dm: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    """DM.DTHFL (rule dm.DTHFL) also when the subject's records say the subject died: an AE with
    AEOUT FATAL or AESDTH Y, a DS record DSDECOD DEATH (SDTMIG 3.4 DM DTHFL: "Indicates the subject
    died"; a fatal AE beside a null DTHFL contradicts it). DTHDTC is not guessed from those records
    (an AE end date is not the date of death): its absence is reported per subject."""
    died: set[str] = set()
    ae = ctx.frames.get("AE")
    if ae is not None and len(ae):
        fatal = pd.Series(False, index=ae.index)
        for var, val in (("AEOUT", "FATAL"), ("AESDTH", "Y")):
            if var in ae:
                fatal |= ae[var].eq(val)
        died |= set(ae.loc[fatal, "USUBJID"])
    ds = ctx.frames.get("DS")
    if ds is not None and len(ds) and "DSDECOD" in ds:
        died |= set(ds.loc[ds["DSDECOD"].eq("DEATH"), "USUBJID"])
    if "DTHFL" not in dm or not died:
        return dm
    new = dm["USUBJID"].isin(died) & dm["DTHFL"].isna()
    if new.any():
        dm["DTHFL"] = dm["DTHFL"].astype("object")
        dm.loc[new, "DTHFL"] = "Y"
        ctx.once("dthfl.records", Kind.INFERRED, "DTHFL = Y from the subject's records (an AE with AEOUT FATAL "
                 "or AESDTH Y, or DS DSDECOD DEATH) where the Patient is not marked deceased",
                 rule="dm.DTHFL", source="AE.AEOUT|AE.AESDTH|DS.DSDECOD", target="DTHFL")
        for u in dm.loc[new & dm["DTHDTC"].isna(), "USUBJID"]:
            ctx.report.add(Kind.MISSING, "the subject died (fatal AE or DS DEATH) but the Patient gives no "
                           "deceasedDateTime: DTHDTC left empty, not taken from another record",
                           rule="dm.DTHFL", target="DTHDTC", record=str(u))
    return dm


@transform("derive_rfpendtc")
def derive_rfpendtc(dm: pd.DataFrame, last_dates: dict[str, str], ctx: Ctx) -> pd.DataFrame:
    """DM.RFPENDTC (rule dm.RFPENDTC): the latest disposition event date (DS, DSCAT DISPOSITION EVENT)
    when the subject has one, else the latest date of any of the subject's records; a value already
    carried (project input) is kept. Both are inferences, reported once each."""
    if "RFPENDTC" not in dm:
        dm["RFPENDTC"] = None
    have = dm["RFPENDTC"].map(lambda v: isinstance(v, str) and v != "")
    ds = ctx.frames.get("DS")
    disp: dict[str, str] = {}
    if ds is not None and len(ds) and {"DSCAT", "DSSTDTC"} <= set(ds.columns):
        ev = ds[(ds["DSCAT"] == "DISPOSITION EVENT") & ds["DSSTDTC"].map(lambda v: isinstance(v, str) and v != "")]
        disp = {str(u): str(d) for u, d in ev.groupby("USUBJID")["DSSTDTC"].max().items()}
    # the death date is a date of the subject's records too: the last contact cannot precede it
    # (SDTMIG 3.4 DM RFPENDTC: "Should correspond to the last known date of contact. Examples include
    # ... death date")
    last = dict(last_dates)
    if "DTHDTC" in dm:
        for u, d in zip(dm["USUBJID"], dm["DTHDTC"], strict=True):
            if isinstance(d, str) and d and (u not in last or d > last[u]):
                last[u] = d
    from_ds = ~have & dm["USUBJID"].map(lambda u: u in disp)
    from_rec = ~have & ~from_ds & dm["USUBJID"].map(lambda u: u in last)
    dm["RFPENDTC"] = dm["RFPENDTC"].astype("object")
    dm.loc[from_ds, "RFPENDTC"] = dm.loc[from_ds, "USUBJID"].map(disp)
    dm.loc[from_rec, "RFPENDTC"] = dm.loc[from_rec, "USUBJID"].map(last)
    if from_ds.any():
        ctx.once("rfpendtc.ds", Kind.INFERRED, "RFPENDTC = date of the subject's last disposition event "
                 "(DS, DSCAT DISPOSITION EVENT)", rule="dm.RFPENDTC", source="DS.DSSTDTC", target="RFPENDTC")
    if from_rec.any():
        ctx.once("rfpendtc.last", Kind.INFERRED, "RFPENDTC = latest date of the subject's records, death "
                 "date included (no disposition event)", rule="dm.RFPENDTC",
                 source="--DTC/--STDTC/--ENDTC, DTHDTC", target="RFPENDTC")
    return dm


def derive_reference_dates(ctx: Ctx) -> None:
    from .identity import reference_dates
    reference_dates(ctx)


def iter_plugins(domains: Iterable[str]) -> list[DomainPlugin]:
    reg = base.registered_domains()
    return [reg[d] for d in domains if d in reg]
