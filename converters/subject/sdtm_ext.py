"""The project's own extensions read back: SDTM variables carried in ``sdtm``, SUPPQUAL in ``suppqual``.

FHIR written by trialbridge from SDTM (:mod:`trialbridge.fhir.subject_writer`) carries every SDTM
variable that has no FHIR element in the complex extension ``<base>/StructureDefinition/sdtm`` (one
sub-extension per variable, url = the variable name) and SUPPQUAL rows in ``.../suppqual`` (QNAM,
QLABEL, QVAL, QORIG, QEVAL). This module gives those values back to SDTM, for every domain, with one
generic rule (rule id ``subject.sdtm-ext``, mappings/subject/README.md):

* a carried value fills the variable of that name when the domain has it (schemas/sdtm: its own
  variables and those of its general observation class, ``general_classes.csv``) and the mapping
  produced nothing for that row;
* it also replaces a value the engine only *inferred* for want of data (VISITNUM/VISIT from the order
  of the subject's Encounters, EPOCH from the reference dates, EXDOSFRQ = ONCE per administration, --STRESC/N/U and --STNRLO/HI
  converted from the original result): the carried value is the SDTM value
  itself. Each fill is reported once per (domain, variable) with its count;
* ``--SEQ`` is filled only when every row of the frame carries it (DS, whose records are
  ResearchSubject.progress items with no identifier); otherwise the engine numbers it;
* ``suppqual`` extensions become SUPP-- rows of the record (IDVAR = --SEQ as the engine writes it;
  DM: blank); a QNAM that is a variable of the parent domain is not written (reported);
* ``relrec`` extensions (a record-level RELREC row: RELID, RELTYPE, the other records as references)
  become RELREC rows of the record (column ``_relrec``; IDVAR = --SEQ as the engine writes it, the
  records of one RELID keep being linked by it; :meth:`..pipeline` writes ``relrec.*``).

The source resource of each mapped row is found through the engine's provenance columns
(``_src_file``, ``_src_line``: NDJSON line or Bundle entry index) and re-read from the input (NDJSON
is read forward once; a Bundle is parsed once), so the streamed LB/VS path holds one chunk, never the
input. Row-level carried values an extractor found below the resource (a DS progress item) travel in
the column ``_sdtm`` (a dict variable -> value) and win over the resource's own extension.

All of this is switched on only for input the project wrote (a Patient with an identifier in the
project's usubjid naming system, or a ResearchStudy in its studyid system): other FHIR costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..fhir.subject_terms import BASE, EXT_RELREC, EXT_SDTM, EXT_SUPPQUAL, SID
from ..report import Kind
from ..sdtm.metadata import load_domain
from .base import Ctx, DomainPlugin
from .reader import list_input_files

RULE = "subject.sdtm-ext"
KEYS = frozenset({"STUDYID", "DOMAIN", "USUBJID"})
#: variables the engine infers when the data does not say them: a carried value replaces them
#: (EXDOSFRQ: ONCE per MedicationAdministration, which has no frequency element; the standardised
#: findings results and ranges: derived by UCUM conversion, while the sponsor's own are carried)
#: (RFXSTDTC/RFXENDTC: first/last exposure; ARMNRS: from the arm assignment; AELLT/AELLTCD: the
#: MedDRA PT coding taken as LLT; AEENTPT: END OF STUDY for an ongoing outcome; MHENTPT: the
#: collection date MHDTC as the time point of a clinicalStatus; LBSPEC: from the LOINC System of the
#: CDISC LOINC-to-LB row when no Specimen is named — the sample's SERUM came back SERUM OR PLASMA)
INFERRED = frozenset({"VISITNUM", "VISIT", "EPOCH", "EXDOSFRQ", "RFXSTDTC", "RFXENDTC", "ARMNRS",
                      "AELLT", "AELLTCD", "AEENTPT", "MHENTPT", "LBSPEC",
                      *(f"{d}{v}" for d in ("LB", "VS") for v in ("STRESC", "STRESN", "STRESU", "STNRLO",
                                                                 "STNRHI"))})
_MARK = BASE.encode()


def is_project_input(ctx: Ctx) -> bool:
    """True when pass 1 saw a Patient/ResearchStudy identifier in the project's naming systems."""
    systems = {f"{SID}/usubjid", f"{SID}/studyid"}
    for rtype in ("ResearchStudy", "Patient"):
        for res in ctx.resources.get(rtype, {}).values():
            for ident in res.get("identifier") or ():
                if isinstance(ident, dict) and ident.get("system") in systems:
                    return True
    return False


def attach(plugins: dict[str, DomainPlugin], inputs: list[Path], ctx: Ctx) -> dict[str, DomainPlugin]:
    """The engine's hook (called once, after the subject index is built): project identifiers
    (:func:`..identity.apply_project_identifiers`) and, for project-made input, every domain's map
    followed by :func:`fill`."""
    from .identity import apply_project_identifiers
    apply_project_identifiers(ctx)
    if not is_project_input(ctx):
        return plugins
    sources = Sources(inputs)
    out: dict[str, DomainPlugin] = {}
    for dom, p in plugins.items():
        supp = dict(p.supp)      # this run's copy: QNAMs found in suppqual extensions are added to it

        def mapped(cols: pd.DataFrame, c: Ctx, p: DomainPlugin = p, supp: dict[str, Any] = supp) -> pd.DataFrame:
            return fill(p.domain, p.map(cols, c), c, sources, supp)

        def mapped_columns(cols: dict[str, Any], c: Ctx, p: DomainPlugin = p,
                           supp: dict[str, Any] = supp) -> pd.DataFrame:
            assert p.map_columns is not None
            return fill(p.domain, p.map_columns(cols, c), c, sources, supp)

        # the columnar map (fast path) is followed by the same fill
        out[dom] = replace(p, map=mapped, map_columns=mapped_columns if p.map_columns is not None else None,
                           supp=supp)
    return out


# ----------------------------------------------------------------------------- reading sources
class Sources:
    """Project extensions of input resources by (file name, NDJSON line / Bundle entry index)."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self.paths: dict[str, Path] = {}
        for p in list_input_files(inputs):
            self.paths.setdefault(p.name, p)
        self.cursor: dict[str, tuple[Any, int]] = {}
        self.bundles: dict[str, dict[Any, list[dict[str, Any]]]] = {}

    def get(self, keys: list[tuple[Any, Any]]) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
        out: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        by_file: dict[str, list[Any]] = {}
        for f, n in keys:
            if isinstance(f, str):
                by_file.setdefault(f, []).append(n)
        for f, lines in by_file.items():
            path = self.paths.get(f)
            if path is None:
                continue
            if path.suffix.lower() == ".ndjson":
                want = sorted({int(n) for n in lines if n is not None and n == n})
                for n, ext in self._ndjson(f, path, want):
                    out[(f, n)] = ext
            else:
                idx = self.bundles.get(f)
                if idx is None:
                    idx = self.bundles[f] = _bundle_index(path)
                for n in lines:
                    key = None if n is None or n != n else int(n)
                    if key in idx:
                        out[(f, n)] = idx[key]
        return out

    def _ndjson(self, name: str, path: Path, want: list[int]) -> Iterable[tuple[int, list[dict[str, Any]]]]:
        if not want:
            return
        fh, at = self.cursor.get(name, (None, 0))
        if fh is None or want[0] <= at:        # rows asked again or out of order: read from the start
            if fh is not None:
                fh.close()
            fh, at = open(path, "rb"), 0    # noqa: SIM115  (kept open between chunks, closed at the end)
        i = 0
        for line in fh:
            at += 1
            if at == want[i]:
                if _MARK in line:
                    ext = _project_ext(orjson.loads(line))
                    if ext:
                        yield at, ext
                i += 1
                if i == len(want):
                    break
        else:                                   # end of file: nothing more to read from it
            fh.close()
            self.cursor.pop(name, None)
            return
        self.cursor[name] = (fh, at)

    def close(self) -> None:
        for fh, _ in self.cursor.values():
            fh.close()
        self.cursor.clear()

    def __del__(self) -> None:
        self.close()


def _project_ext(res: Any) -> list[dict[str, Any]]:
    if not isinstance(res, dict):
        return []
    return [e for e in res.get("extension") or () if isinstance(e, dict)
            and e.get("url") in (EXT_SDTM, EXT_SUPPQUAL, EXT_RELREC)]


def _bundle_index(path: Path) -> dict[Any, list[dict[str, Any]]]:
    raw = path.read_bytes()
    if _MARK not in raw:
        return {}
    obj = orjson.loads(raw)
    if isinstance(obj, dict) and obj.get("resourceType") != "Bundle":
        ext = _project_ext(obj)
        return {None: ext} if ext else {}
    out: dict[Any, list[dict[str, Any]]] = {}
    for i, entry in enumerate((obj or {}).get("entry") or (), start=1):
        ext = _project_ext(entry.get("resource") if isinstance(entry, dict) else None)
        if ext:
            out[i] = ext
    return out


def carried_values(extensions: Iterable[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(variable -> value of the ``sdtm`` extensions, SUPPQUAL rows of the ``suppqual`` ones)."""
    values: dict[str, Any] = {}
    supp: list[dict[str, Any]] = []
    for ext in extensions or ():
        if not isinstance(ext, dict):
            continue
        if ext.get("url") == EXT_SDTM:
            for sub in ext.get("extension") or ():
                if isinstance(sub, dict) and sub.get("url"):
                    v = next((sub[k] for k in sub if k.startswith("value")), None)
                    if v is not None:
                        values[str(sub["url"])] = v
        elif ext.get("url") == EXT_SUPPQUAL:
            supp.append({str(s.get("url")): next((s[k] for k in s if k.startswith("value")), None)
                         for s in ext.get("extension") or () if isinstance(s, dict)})
    return values, supp


def carried_relrec(extensions: Iterable[Any]) -> list[dict[str, Any]]:
    """The record-level RELREC rows of the ``relrec`` extensions: RELID and RELTYPE (the targets are
    the other records of the RELID, which carry the same RELID)."""
    out = []
    for ext in extensions or ():
        if isinstance(ext, dict) and ext.get("url") == EXT_RELREC:
            subs = {s.get("url"): s.get("valueString") for s in ext.get("extension") or ()
                    if isinstance(s, dict) and "valueString" in s}
            if subs.get("RELID"):
                out.append({"RELID": subs["RELID"], "RELTYPE": subs.get("RELTYPE")})
    return out


# ----------------------------------------------------------------------------- the rule
def fill(domain: str, out: pd.DataFrame, ctx: Ctx, sources: Sources, supp_spec: dict[str, Any]) -> pd.DataFrame:
    """Rule subject.sdtm-ext on one mapped frame (see the module docstring)."""
    if not len(out) or "_src_file" not in out:
        return out
    keys = list(zip(out["_src_file"].tolist(), out["_src_line"].tolist(), strict=True))
    found = sources.get(keys)
    row_level = out["_sdtm"].tolist() if "_sdtm" in out else [None] * len(out)
    values: list[dict[str, Any]] = []
    supps: list[list[dict[str, Any]]] = []
    links: list[list[dict[str, Any]]] = []
    for k, own in zip(keys, row_level, strict=True):
        v, s = carried_values(found.get(k, ()))
        r = carried_relrec(found.get(k, ()))
        if isinstance(own, dict):
            v = {**v, **own.get("values", {})}
            s = s + list(own.get("supp", []))
            r = r + list(own.get("relrec", []))
        values.append(v)
        supps.append(s)
        links.append(r)
    if "_sdtm" in out:
        out = out.drop(columns="_sdtm")
    if any(links):
        out["_relrec"] = pd.Series([r or None for r in links], index=out.index, dtype=object)
        _report(ctx, domain, "RELREC.RELID", sum(bool(r) for r in links),
                "RELREC row taken from the project extension relrec (IDVAR = the record's --SEQ)")
    if not any(values) and not any(supps):
        return out
    meta = load_domain(domain)
    names = set(meta.names)
    numeric = {v.name for v in meta.variables if v.type == "Num"}
    seq = f"{domain}SEQ"
    carried = {var for v in values for var in v}
    for var in sorted(carried - names - KEYS):
        n = sum(var in v for v in values)
        ctx.once(f"sdtm-ext-unknown:{domain}.{var}", Kind.LOSSY, f"variable carried in the project extension "
                 f"sdtm is neither a {domain} variable nor a variable of its general observation class in "
                 f"schemas/sdtm: not written ({n} values in the first chunk)", rule=RULE, source=EXT_SDTM,
                 target=f"{domain}.{var}")
    wanted = sorted({var for var in carried if var in names and var not in KEYS})
    for var in wanted:
        col = pd.Series([v.get(var) for v in values], index=out.index, dtype=object)
        has = col.notna()
        if var == seq:
            if not has.all():
                continue
            out[var] = pd.to_numeric(col).astype("int64")
            _report(ctx, domain, var, len(out), "taken from the project extension sdtm (every record carries it)")
            continue
        if var in numeric:
            col = pd.to_numeric(col, errors="coerce")
        cur = out[var] if var in out else pd.Series([None] * len(out), index=out.index, dtype=object)
        empty = cur.isna() | (cur.astype(str) == "")
        take = has & (empty | (var in INFERRED))
        if var in INFERRED:
            take &= ~(cur.astype(object) == col.astype(object))
        n = int(take.sum())
        if not n:
            continue
        if var not in out:
            out[var] = col.where(take, None) if var not in numeric else col.where(take)
        else:
            merged = cur.astype(object).where(~take, col.astype(object))
            out[var] = pd.to_numeric(merged, errors="coerce") if var in numeric else merged
        how = ("replaces the engine's inference" if var in INFERRED and (~empty & take).any()
               else "fills a variable the mapping left empty")
        _report(ctx, domain, var, n, f"value carried in the project extension sdtm {how}")
    if any(supps):
        _supp_columns(domain, out, supps, names, supp_spec, ctx)
    return out


def _supp_columns(domain: str, out: pd.DataFrame, supps: list[list[dict[str, Any]]], names: set[str],
                  spec: dict[str, Any], ctx: Ctx) -> None:
    """SUPPQUAL rows -> QNAM columns the engine writes to SUPP-- (``spec`` gains their label/origin)."""
    cols: dict[str, list[Any]] = {}
    for i, rows in enumerate(supps):
        for r in rows:
            q = r.get("QNAM")
            if not q or r.get("QVAL") is None:
                continue
            if q in names:
                ctx.once(f"supp-clash-{domain}-{q}", Kind.LOSSY, f"SUPP{domain} QNAM {q} is a {domain} "
                         "variable name: not written", rule=RULE, target=f"SUPP{domain}.QNAM")
                continue
            cols.setdefault(q, [None] * len(supps))[i] = str(r["QVAL"])
            if q not in spec:
                spec[q] = (str(r.get("QLABEL") or q), str(r.get("QORIG") or ""), str(r.get("QEVAL") or ""))
    for q, vals in cols.items():
        out[q] = np.array(vals, dtype=object)
        _report(ctx, domain, f"SUPP{domain}.{q}", sum(v is not None for v in vals),
                "SUPPQUAL row taken from the project extension suppqual")


def _report(ctx: Ctx, domain: str, var: str, n: int, message: str) -> None:
    """Once per (domain, variable): the report names the rule, the extension and the target."""
    target = var if "." in var else f"{domain}.{var}"
    source = EXT_SDTM if "." not in var else EXT_RELREC if var.startswith("RELREC.") else EXT_SUPPQUAL
    ctx.once(f"sdtm-ext:{domain}:{target}", Kind.INFERRED, message, rule=RULE, source=source, target=target)
