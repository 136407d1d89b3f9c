"""Round-trip fidelity harness: SDTM -> FHIR -> SDTM, compared value by value per domain/variable.

``run_roundtrip(input, workdir)`` converts an SDTM folder to FHIR (:mod:`trialbridge.fhir.subject_writer`),
back to SDTM with the FHIR -> SDTM engine (``trialbridge.subject.pipeline.convert_subjects``), reads both
sides with :mod:`trialbridge.sdtm.reader` and aligns the records *through the FHIR resource* that carried
them, so the comparison never depends on how --SEQ is numbered:

* source row -> the id the writer gives its resource (ids are derived from STUDYID/USUBJID/domain/--SEQ,
  DM -> Patient, SV -> Encounter by VISITNUM; :func:`writer_id`);
* result row -> the resource it came from, in ``<dom>.provenance.csv`` (same row order as the dataset);
* DS records are ResearchSubject.progress items: aligned on (ResearchSubject, DSSEQ carried in the
  item's ``sdtm`` extension).

SUPP-- rows of the compared domains are compared per QNAM (equal when the parent record, found
through its resource, has the QNAM again with the same QVAL); record-level RELREC rows per RELID
(equal when the record is again in a RELREC row of that RELID); dataset-level RELREC rows are listed
``declared lossy`` (FHIR links resources, not datasets).

Per mapped variable: values present in the source, equal, changed, lost (empty or no record after),
and which report entries explain the differences. A difference is *explained* when an issue of either
report names the variable (``DOM.VAR`` source/target, the variable as target, or rule ``dom.VAR``), or
names the record (``ResourceType/id`` of the resource, ``USUBJID/--SEQ`` of the source row). Fills by
the project extension (rule ``subject.sdtm-ext``) explain nothing. Values shown only with
``include_values``.

*Mapped variables*: every variable of a compared domain the SDTM -> FHIR spec maps to an element or
carries in the ``sdtm`` extension, i.e. all but: STUDYID and DOMAIN (constant keys), --SEQ (renumbered by
the engine by design; alignment goes through the resource, see above). The study days the writer does
not carry (``derived:`` in mappings/fhir_subject/<dom>.yaml: the --DY/--STDY/--ENDY of the domain's own
specification) are recomputed by FHIR -> SDTM from DM.RFSTDTC (SDTMIG 3.4 section 4.4.4) and held to
the bar like the rest (marked ``recomputed``); VISITDY and class study days the domain specification
lacks (MH MHSTDY) are carried in the ``sdtm`` extension.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pandas as pd

from .report import ConversionReport, Kind
from .sdtm.reader import read_sdtm_folder

COMPARED = ("DM", "SV", "DS", "AE", "CM", "EX", "MH", "PR", "VS", "LB")
NOT_COMPARED = {"STUDYID": "constant key", "DOMAIN": "constant key"}
#: rules whose *inferred* entries record a fill, not a difference
NOT_AN_EXPLANATION = frozenset({"subject.sdtm-ext"})


def _rule_targets() -> dict[str, set[str]]:
    """Rule id -> the variables it writes (FHIR -> SDTM specs mappings/subject/*.yaml) or reads
    (SDTM -> FHIR specs mappings/fhir_subject/*.yaml), so a report entry naming a rule explains them."""
    from .specs import load_spec
    out: dict[str, set[str]] = defaultdict(set)
    for folder, key in (("subject", "target"), ("fhir_subject", "source")):
        root = Path(__file__).resolve().parent.parent / "mappings" / folder
        for f in sorted(root.glob("*.yaml")):
            try:
                spec = load_spec(f"{folder}/{f.name}")
            except Exception:       # noqa: BLE001  (a spec that does not load is the spec lint's business)
                continue
            for r in spec.get("rules") or ():
                if not isinstance(r, dict) or "id" not in r:
                    continue
                t = r.get(key)
                for v in (t if isinstance(t, list) else [t]):
                    if isinstance(v, str):
                        out[str(r["id"])].add(v)
    return out


@dataclass
class VariableFidelity:
    domain: str
    variable: str
    values: int = 0
    equal: int = 0
    changed: int = 0
    lost: int = 0
    unexplained: int = 0
    #: of ``equal``: values written differently that denote the same thing (UCUM spellings of one unit)
    equivalent: int = 0
    #: of ``lost``: values of source records the forward leg did not convert at all (a code with no
    #: CDISC term, a record no domain selects), each record named by its own report entry
    unconverted: int = 0
    mapped: bool = True                     # False: declared lossy / excluded, not held to the bar
    recomputed: bool = False                # a derived study day: not carried, recomputed by FHIR -> SDTM
    examples: list[tuple[Any, Any]] = field(default_factory=list)
    explained_by: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.equal / self.values if self.values else 1.0

    @property
    def ratio_converted(self) -> float:
        """``ratio`` over the values of the records the forward leg converted."""
        n = self.values - self.unconverted
        return self.equal / n if n else 1.0


@dataclass
class FidelityTable:
    rows: list[VariableFidelity]
    missing_domains: list[str]
    records: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # dom -> (source, aligned, extra)
    excluded: dict[str, str] = field(default_factory=dict)                  # DOM.VAR -> why

    def domain_summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if not r.mapped:
                continue
            d = out.setdefault(r.domain, {"variables": 0, "values": 0, "equal": 0, "min": 1.0, "minVar": ""})
            d["variables"] += 1
            d["values"] += r.values
            d["equal"] += r.equal
            if r.ratio < d["min"]:
                d["min"], d["minVar"] = r.ratio, r.variable
        return out

    def lines(self) -> list[str]:
        out = [f"{'domain':6} {'variable':9} {'values':>7} {'equal':>7} {'changed':>7} {'lost':>6} "
               f"{'equal%':>7} {'unexpl':>6}  explained by"]
        if any(r.unconverted for r in self.rows):
            out.insert(0, "(conv% = equal% over the records the forward leg converted; each record it did not "
                          "convert is named by its own report entry)")
        if any(r.equivalent for r in self.rows):
            out.insert(0, "(equal includes values written differently with the same meaning: "
                          "'N same unit' = UCUM spellings of one CDISC unit)")
        for r in self.rows:
            note = "; ".join(r.explained_by) if r.explained_by else ""
            if r.equivalent:
                note = f"{r.equivalent} same unit, other UCUM spelling" + ("; " + note if note else "")
            if r.unconverted:
                note = (f"conv% {100 * r.ratio_converted:.2f} ({r.unconverted} from records not converted)"
                        + ("; " + note if note else ""))
            tag = ("" if r.mapped else "  [declared lossy: not held to the bar]") + \
                ("  [recomputed from RFSTDTC]" if r.recomputed else "")
            out.append(f"{r.domain:6} {r.variable:9} {r.values:7d} {r.equal:7d} {r.changed:7d} {r.lost:6d} "
                       f"{100 * r.ratio:6.2f}% {r.unexplained:6d}  {note[:100]}{tag}")
        out.append("")
        out.append(f"{'domain':6} {'records':>8} {'aligned':>8} {'extra':>6} {'vars':>5} {'values':>8} "
                   f"{'equal%':>7}  lowest variable")
        for dom, d in self.domain_summary().items():
            src, aligned, extra = self.records.get(dom, (0, 0, 0))
            pct = 100 * d["equal"] / d["values"] if d["values"] else 100.0
            out.append(f"{dom:6} {src:8d} {aligned:8d} {extra:6d} {d['variables']:5d} {d['values']:8d} "
                       f"{pct:6.2f}%  {d['minVar']} {100 * d['min']:.2f}%")
        for dom in self.missing_domains:
            out.append(f"{dom:6} (domain not produced by FHIR -> SDTM)")
        held = {k: v for k, v in self.excluded.items() if k not in NOT_COMPARED and not k.endswith("SEQ")}
        if held:
            out.append("")
            out.append("not held to the bar (declared; each reported by the rule named):")
            out += [f"  {k}: {v}" for k, v in held.items()]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"variables": [{k: v for k, v in r.__dict__.items() if k != "examples" or v}
                              | {"ratio": round(r.ratio, 6), "ratioConverted": round(r.ratio_converted, 6)}
                              for r in self.rows],
                "domains": self.domain_summary(),
                "records": {d: {"source": s, "aligned": a, "extra": e} for d, (s, a, e) in self.records.items()},
                "excluded": self.excluded,
                "missingDomains": self.missing_domains}


# ----------------------------------------------------------------------------- alignment
def writer_id(domain: str, df: pd.DataFrame, studyid: str) -> list[str | None]:
    """The id :mod:`trialbridge.fhir.subject_writer` gives the resource of each source row."""
    from .fhir import subject_terms as T
    from .fhir.subject_writer import _PREFIX

    st = [s if isinstance(s, str) and s else studyid for s in df.get("STUDYID", pd.Series([None] * len(df)))]
    us = df["USUBJID"].tolist()
    if domain == "DM":
        return [T.make_id("pat", T.slug(a), T.slug(u)) for a, u in zip(st, us, strict=True)]
    if domain == "SV":
        vis = [T.num_text(v) or "" for v in df["VISITNUM"].tolist()]
        pairs = pd.Series([f"{u}\x00{v}" for u, v in zip(us, vis, strict=True)])
        rep = pairs.duplicated(keep=False).tolist()
        starts = df["SVSTDTC"].tolist() if "SVSTDTC" in df else [None] * len(df)
        return [T.make_id("enc", T.slug(a), T.slug(u), v, *((T.slug(s or "none"),) if r else ()))
                for a, u, v, r, s in zip(st, us, vis, rep, starts, strict=True)]
    if domain == "DS":
        return [f"{T.make_id('rsub', T.slug(a), T.slug(u))}|{T.num_text(q)}"
                for a, u, q in zip(st, us, df["DSSEQ"].tolist(), strict=True)]
    prefix = _PREFIX[domain][1]
    out: list[str | None] = []
    for a, u, q in zip(st, us, df[f"{domain}SEQ"].tolist(), strict=True):
        rid = "-".join((prefix, T.slug(a), T.slug(u), T.num_text(q) or ""))
        out.append(T.make_id(rid) if len(rid) > 64 else rid)
    return out


def result_id(domain: str, df: pd.DataFrame, sdtm_dir: Path) -> list[str | None]:
    """The FHIR resource each result row came from (``<dom>.provenance.csv``, same row order)."""
    from .fhir import subject_terms as T
    path = sdtm_dir / f"{domain.lower()}.provenance.csv"
    if not path.exists():
        return [None] * len(df)
    prov = pd.read_csv(path, dtype=str, keep_default_na=False)
    if len(prov) != len(df) or (prov["USUBJID"].to_numpy() != df["USUBJID"].astype(str).to_numpy()).any():
        raise RuntimeError(f"{path.name} does not follow the rows of the {domain} dataset")
    ids = prov["src_id"].tolist()
    if domain == "DS":
        return [f"{i}|{T.num_text(q)}" for i, q in zip(ids, df["DSSEQ"].tolist(), strict=True)]
    return ids


def _norm(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return None
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, str):
        t = v.strip()
        if not t:
            return None
        try:
            return round(float(t), 9) if t[0] in "-.0123456789" else v
        except ValueError:
            return v
    return v


class _Explainer:
    """Which report entries explain a difference in a variable, or a whole record."""

    def __init__(self, reports: list[ConversionReport], *, engine: int = -1) -> None:
        """``engine``: index in ``reports`` of the FHIR -> SDTM report, the one that names each record
        it drops."""
        self.by_var: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.by_dom_var: dict[str, list[str]] = defaultdict(list)   # target 'VAR' with no domain
        self.records: dict[str, str] = {}
        self.summaries: dict[str, str] = {}      # domain -> 'N more <dom> resources ...' entry
        self.fhir: dict[str, list[str]] = defaultdict(list)   # 'Type.element' -> entries
        targets = _rule_targets()
        engine = engine % len(reports)
        self.zone: str | None = None             # the entry on UTC offsets dropped / not restored
        for n, rep in enumerate(reports):
            for issue in rep.issues:
                if issue.rule in NOT_AN_EXPLANATION and issue.kind == Kind.INFERRED:
                    continue
                label = f"{issue.kind.value}[{issue.rule or issue.source or '-'}]: {issue.message[:70]}"
                # record-level: only the FHIR -> SDTM engine names each record it drops (ResourceType/id)
                if issue.rule in ("subject.dtc-zone", "roundtrip.default-tz"):
                    self.zone = self.zone or label
                if issue.record and n == engine and issue.kind != Kind.INFERRED:
                    self.records.setdefault(issue.record, label)
                if " more " in issue.message and " resources with the same problem" in issue.message:
                    self.summaries.setdefault(issue.message.split(" more ")[1].split(" ")[0], label)
                for v in targets.get(issue.rule or "", ()):
                    dom = (issue.rule or "").split("-")[1] if (issue.rule or "").startswith("SDTM2FHIR-") \
                        else (issue.rule or "").split(".")[0].upper()
                    self.by_var[(dom, v)].append(label)
                src_dom = (issue.source or "").split(".", 1)[0]
                for ref in (issue.source, issue.target):
                    if issue.kind == Kind.INFERRED and ref and not ref.split(".", 1)[0].isupper():
                        # an inference that reads a FHIR element (visit matching by period.start) does not
                        # change it: it explains no difference in it
                        continue
                    if ref and ref.startswith("Quantity.") and src_dom in _RTYPE:
                        # a datatype path: it explains the element only in the resource of its domain
                        self.fhir[f"{_RTYPE[src_dom]}.*{ref}"].append(label)
                    elif ref and ref[:1].isupper() and not ref.split(".", 1)[0].isupper():
                        self.fhir[ref].append(label)
                    if ref and "." in ref and ref.split(".", 1)[0].isupper():
                        dom, var = ref.split(".", 1)
                        self.by_var[(dom, var)].append(label)
                    elif ref and ref.isupper():
                        self.by_dom_var[ref].append(label)
                if issue.rule and "." in issue.rule:
                    dom, var = issue.rule.split(".", 1)
                    if var.isupper():
                        self.by_var[(dom.upper(), var)].append(label)

    def variable(self, domain: str, var: str) -> list[str]:
        return list(dict.fromkeys(self.by_var.get((domain, var), []) + self.by_dom_var.get(var, [])))

    def element(self, rtype: str, path: str) -> list[str]:
        """Entries whose FHIR source/target names the element (any R4/R5 spelling of ``path``):
        ``Observation.effectiveDateTime``, ``Quantity.code`` for any ``*Quantity.code``..."""
        out = []
        for alt in path.split("|"):
            head, leaf = alt.split(".")[0], alt.split(".")[-1]
            for ref, labels in self.fhir.items():
                t, _, rest = ref.partition(".")
                if t == rtype and rest.startswith("*Quantity."):
                    if "Quantity" in alt and rest.split(".")[-1] == leaf:
                        out += labels
                elif (t == rtype and rest.split(".")[0].startswith(head.rstrip("[x]"))) or \
                        (t == "Quantity" and "Quantity" in alt and rest == leaf):
                    out += labels
        return list(dict.fromkeys(out))[:2]

    def record(self, domain: str, key: str) -> str | None:
        return self.records.get(key) or self.summaries.get(domain)


def compare_domain(domain: str, a: pd.DataFrame, b: pd.DataFrame | None, explain: _Explainer, *,
                   a_ids: list[str | None], b_ids: list[str | None], rtype: str,
                   include_values: bool = False) -> tuple[list[VariableFidelity], tuple[int, int, int]]:
    from .fhir.subject_writer import derived_variables
    derived = derived_variables(domain)
    ka = a.assign(_k=a_ids).drop_duplicates("_k").set_index("_k")
    if b is None:
        b = pd.DataFrame(columns=a.columns)
        b_ids = []
    kb_all = b.assign(_k=b_ids)
    extra = int(kb_all["_k"].duplicated().sum()) + int((~kb_all["_k"].isin(ka.index)).sum())
    kb = kb_all.drop_duplicates("_k").set_index("_k").reindex(ka.index)
    aligned = int(ka.index.isin(kb_all["_k"]).sum())
    row_present = pd.Series(ka.index.isin(kb_all["_k"]), index=ka.index)
    # record-level explanations of source rows with no result row
    rec_expl = pd.Series([None if ok else explain.record(domain, f"{rtype}/{str(i).split('|')[0]}")
                          for i, ok in zip(ka.index, row_present, strict=True)], index=ka.index, dtype=object)
    out = []
    for var in a.columns:
        if var in NOT_COMPARED or var == f"{domain}SEQ":
            continue
        va = ka[var].map(_norm)
        vb = kb[var].map(_norm) if var in kb.columns else pd.Series([None] * len(ka), index=ka.index)
        present = va.notna()
        n = int(present.sum())
        if not n:
            continue
        eq = present & vb.notna() & (va.astype(object) == vb.astype(object))
        lost = present & vb.isna()
        fid = VariableFidelity(domain, var, n, int(eq.sum()), int((present & ~eq & ~lost).sum()),
                               int(lost.sum()), recomputed=var in derived)
        bad = present & ~eq
        if include_values:
            fid.examples = list(zip(va[bad].head(3).tolist(), vb[bad].head(3).tolist(), strict=False))
        if bad.any():
            # a value of a record that did not come back: the entry dropping the record explains it;
            # a value that changed or went missing in a record that came back: an entry on the variable
            gone = bad & ~row_present
            by_row = rec_expl[gone]
            var_expl = explain.variable(domain, var)
            here = int((bad & row_present).sum())
            fid.unexplained = int(by_row.isna().sum()) + (0 if var_expl else here)
            fid.explained_by = (var_expl if here else []) + sorted(set(by_row.dropna()))[:1]
        out.append(fid)
    return out, (len(ka), aligned, extra)


_RTYPE = {"DM": "Patient", "SV": "Encounter", "DS": "ResearchSubject", "AE": "AdverseEvent",
          "CM": "MedicationStatement", "EX": "MedicationAdministration", "MH": "Condition",
          "PR": "Procedure", "VS": "Observation", "LB": "Observation"}


def compare_folders(input: Path, sdtm_dir: Path, reports: list[ConversionReport], *,
                    include_values: bool = False) -> FidelityTable:
    a = read_sdtm_folder(input, datasets=set(COMPARED))
    b = read_sdtm_folder(sdtm_dir, datasets=set(COMPARED))
    studyid = next((s for s in a.frames["DM"]["STUDYID"].tolist() if s), "") if "DM" in a.frames else ""
    explain = _Explainer(reports)
    rows: list[VariableFidelity] = []
    missing, records = [], {}
    excluded = dict(NOT_COMPARED)
    for dom in COMPARED:
        if dom not in a.frames:
            continue
        fa = a.frames[dom]
        fb = b.frames.get(dom)
        if fb is None:
            missing.append(dom)
        excluded[f"{dom}SEQ"] = "renumbered by FHIR -> SDTM by design; records align through the resource"
        b_ids = result_id(dom, fb, sdtm_dir) if fb is not None else []
        got, rec = compare_domain(dom, fa, fb, explain, a_ids=writer_id(dom, fa, studyid), b_ids=b_ids,
                                  rtype=_RTYPE[dom], include_values=include_values)
        rows.extend(got)
        records[dom] = rec
    supp_names = {f"SUPP{d}" for d in COMPARED}
    sa = read_sdtm_folder(input, datasets=supp_names | {"RELREC"}).frames
    sb = read_sdtm_folder(sdtm_dir, datasets=supp_names | {"RELREC"}).frames
    rec_a = _record_ids(a.frames, lambda dom, df: writer_id(dom, df, studyid))
    rec_b = _record_ids(b.frames, lambda dom, df: result_id(dom, df, sdtm_dir))
    for r in compare_supp(sa, sb, rec_a, rec_b, explain):
        rows.append(r)
        src, found, _ = records.get(r.domain, (0, 0, 0))
        records[r.domain] = (src + r.values, found + r.equal + r.changed, 0)   # SUPP rows found again
    rel, rel_b = sa.get("RELREC"), sb.get("RELREC")
    for r in compare_relrec(rel, rel_b, a.frames, b.frames, sdtm_dir, studyid, explain):
        rows.append(r)
        if r.mapped:     # record-level links: (source rows, rows found again, extra)
            records["RELREC"] = (r.values, r.equal, 0)
    return FidelityTable(rows, missing, records, excluded)


def _record_ids(frames: dict[str, pd.DataFrame], ids: Any) -> dict[tuple[str, str, str, Any], Any]:
    """(domain, USUBJID, IDVAR, IDVARVAL) -> the resource id of the record; DM: IDVAR blank."""
    out: dict[tuple[str, str, str, Any], Any] = {}
    for dom, df in frames.items():
        if dom not in _RTYPE or not len(df):
            continue
        rids = ids(dom, df)
        if dom == "DM":
            out.update({(dom, str(u), "", None): r for u, r in zip(df["USUBJID"], rids, strict=True)})
            continue
        for var in (f"{dom}SEQ", f"{dom}SPID", f"{dom}GRPID", f"{dom}LNKID"):
            if var in df:
                out.update({(dom, str(u), var, _norm(v)): r
                            for u, v, r in zip(df["USUBJID"], df[var], rids, strict=True)})
    return out


def compare_supp(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], a_ids: dict[Any, Any],
                 b_ids: dict[Any, Any], explain: _Explainer) -> list[VariableFidelity]:
    """SUPP-- of the compared domains, per QNAM: a row is equal when the parent record (through its
    resource) has again that QNAM with the same QVAL."""
    rows = []
    for name in sorted(n for n in a if n.startswith("SUPP") and n[4:] in COMPARED):
        def keyed(df: pd.DataFrame | None, ids: dict[Any, Any]) -> dict[tuple[Any, str], Any]:
            if df is None or not len(df):
                return {}
            return {(ids.get((str(d), str(u), str(iv or ""), _norm(ivv) if iv else None)), str(q)): _norm(v)
                    for d, u, iv, ivv, q, v in zip(df["RDOMAIN"], df["USUBJID"], df["IDVAR"], df["IDVARVAL"],
                                                    df["QNAM"], df["QVAL"], strict=True)}
        src, got = keyed(a[name], a_ids), keyed(b.get(name), b_ids)
        for qnam in sorted({q for _, q in src}):
            keys = [k for k in src if k[1] == qnam]
            fid = VariableFidelity(name, qnam, len(keys))
            for k in keys:
                if k[0] is not None and k in got and got[k] == src[k]:
                    fid.equal += 1
                elif k[0] is not None and k in got:
                    fid.changed += 1
                else:
                    fid.lost += 1
            if fid.changed or fid.lost:
                fid.explained_by = explain.variable(name, qnam) or explain.variable(name[4:], "SUPP")
                fid.unexplained = 0 if fid.explained_by else fid.changed + fid.lost
            rows.append(fid)
    return rows


def compare_relrec(a: pd.DataFrame | None, b: pd.DataFrame | None, a_frames: dict[str, pd.DataFrame],
                   b_frames: dict[str, pd.DataFrame], sdtm_dir: Path, studyid: str,
                   explain: _Explainer) -> list[VariableFidelity]:
    """RELREC: a record-level row is equal when the record it names (through its resource, as for the
    domains) is again in a RELREC row of the same RELID. Dataset-level rows (no USUBJID) are listed
    ``declared lossy``: FHIR links resources, not datasets (the writer reports them)."""
    if a is None or not len(a):
        return []

    def keyed(rel: pd.DataFrame | None, frames: dict[str, pd.DataFrame], ids: Any) -> set[tuple[Any, str]]:
        out: set[tuple[Any, str]] = set()
        if rel is None or not len(rel):
            return out
        by_rec: dict[tuple[str, str, str], Any] = {}
        for dom, df in frames.items():
            seq = f"{dom}SEQ"
            if seq in df and dom in _RTYPE and dom != "DM" and len(df):
                for u, q, rid in zip(df["USUBJID"], df[seq], ids(dom, df), strict=True):
                    by_rec[(dom, str(u), str(_norm(q)))] = rid
        for d, u, iv, ivv, rel_id in zip(rel["RDOMAIN"], rel["USUBJID"], rel["IDVAR"], rel["IDVARVAL"],
                                          rel["RELID"], strict=True):
            rid = by_rec.get((d, str(u), str(_norm(ivv)))) if u and iv == f"{d}SEQ" else None
            if rid is not None:
                out.add((rid, f"{u}\x00{rel_id}"))
        return out

    record_level = a["USUBJID"].map(lambda u: isinstance(u, str) and u != "")
    src = keyed(a, a_frames, lambda dom, df: writer_id(dom, df, studyid))
    got = keyed(b, b_frames, lambda dom, df: result_id(dom, df, sdtm_dir))
    n = int(record_level.sum())
    fid = VariableFidelity("RELREC", "RELID", n, len(src & got), 0, n - len(src & got))
    if fid.lost:
        fid.explained_by = explain.variable("RELREC", "RELID")
        fid.unexplained = 0 if fid.explained_by else fid.lost
    rows = [fid] if n else []
    if n < len(a):
        ds_level = VariableFidelity("RELREC", "RELID(ds)", len(a) - n, 0, 0, len(a) - n, mapped=False)
        ds_level.explained_by = explain.variable("RELREC", "RELTYPE")
        ds_level.unexplained = 0 if ds_level.explained_by else ds_level.values
        rows.append(ds_level)
    return rows


def run_roundtrip(input: Path, workdir: Path, *, fhir_version: str = "R5", default_tz: str | None = None,
                  include_values: bool = False) -> tuple[FidelityTable, ConversionReport, ConversionReport]:
    from .fhir.subject_writer import convert_sdtm_to_fhir
    from .pipeline import Options
    from .subject.pipeline import convert_subjects
    fwd = ConversionReport(include_values=include_values)
    extra: dict[str, Any] = {"ndjson": True}
    if default_tz:
        extra["default_tz"] = default_tz
    fhir_dir = workdir / "fhir"
    paths = convert_sdtm_to_fhir(input, fhir_dir, options=SimpleNamespace(fhir_version=fhir_version,
                                                                           extra=extra), report=fwd)
    back = ConversionReport(include_values=include_values)
    sdtm_dir = workdir / "sdtm"
    convert_subjects(paths, sdtm_dir, options=Options(fhir_version=fhir_version), report=back)
    table = compare_folders(input, sdtm_dir, [fwd, back], include_values=include_values)
    fwd.extra["roundtrip"] = table.to_json()
    return table, fwd, back


@click.command("roundtrip")
@click.argument("input", type=click.Path(exists=True, path_type=Path))
@click.option("-w", "--workdir", type=click.Path(path_type=Path), default=Path("roundtrip-out"),
              show_default=True)
@click.option("--fhir-version", default=None, help="R5 for SDTM input; FHIR input: R4 (default) or R5.")
@click.option("--default-tz", default=None,
              help="Zone for SDTM times without one: Z, +hh:mm or an IANA name (e.g. Asia/Seoul). FHIR input: "
                   "default = the single UTC offset FHIR -> SDTM dropped.")
@click.option("--study", type=click.Path(exists=True, path_type=Path), default=None,
              help="FHIR input: the study definition (as for convert --to sdtm).")
@click.option("--test-codes", type=click.Path(exists=True, path_type=Path), default=None,
              help="FHIR input: your LOINC -> --TESTCD decisions (as for convert --to sdtm).")
@click.option("--report-values", is_flag=True, help="Show example values (may contain subject data).")
def roundtrip_command(input: Path, workdir: Path, fhir_version: str | None, default_tz: str | None,
                      study: Path | None, test_codes: Path | None, report_values: bool) -> None:
    """INPUT -> other format -> INPUT; print the fidelity table per domain/resource and variable/element.

    INPUT: a folder of SDTM datasets (SDTM -> FHIR -> SDTM), or FHIR files / a folder of them
    (FHIR -> SDTM -> FHIR)."""
    from .safeio import write_json_atomic
    is_sdtm = input.is_dir() and any(f.stem.lower() == "dm" for f in input.iterdir())
    if is_sdtm:
        table, fwd, back = run_roundtrip(input, workdir, fhir_version=(fhir_version or "R5").upper(),
                                         default_tz=default_tz, include_values=report_values)
    else:
        table, fwd, back = run_fhir_roundtrip([input], workdir, study=study, test_codes=test_codes,
                                              fhir_version=(fhir_version or "R4").upper(), default_tz=default_tz)
    for line in table.lines():
        click.echo(line)
    write_json_atomic(workdir / "roundtrip.json", {"fidelity": table.to_json(), "forward": fwd.to_json(),
                                                   "back": back.to_json()})
    sys.exit(0)


# ----------------------------------------------------------------------------- FHIR -> SDTM -> FHIR
def _get(res: dict[str, Any], path: str) -> Any:
    """A dotted path; a list step takes its first item; ``a|b`` tries alternatives (R4/R5 names);
    ``key=system`` picks the coding of that system."""
    for alt in path.split("|"):
        node: Any = res
        for step in alt.split("."):
            if isinstance(node, list):
                node = node[0] if node else None
            if "=" in step:          # coding[system=...]: the coding of that system
                key, system = step.split("=", 1)
                node = next((c for c in (node or {}).get(key) or () if isinstance(c, dict)
                             and c.get("system") == system), None)
                continue
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, list):
            node = node[0] if node else None
        if node is not None:
            return node
    return None


def _dt(v: Any) -> Any:
    """FHIR date/dateTime as compared: fractional seconds dropped (SDTM --DTC keeps whole seconds,
    reported by rule subject.dtc-zone); the UTC offset is kept, so a time that comes back with
    another offset, or without one, is a difference."""
    return _FRACTION.sub("", v) if isinstance(v, str) else v


_FRACTION = re.compile(r"(?<=T\d{2}:\d{2}:\d{2})\.\d+")


#: FHIR -> SDTM -> FHIR: per resource type, the element paths the FHIR -> SDTM specs map and the
#: SDTM -> FHIR writer writes back (R4 spellings first, R5 second; a MedicationAdministration that is
#: not study drug becomes CM and comes back as a MedicationStatement, hence its dosage paths), each
#: with its normaliser
def same_unit(a: Any, b: Any) -> bool:
    """Two UCUM codes of one unit: both stand for the same CDISC UNIT (or VSRESU) term in the CDISC
    Unit-UCUM table and the project's supplement (``10*3/uL`` and ``10*9/L`` are CDISC 10^9/L;
    ``mL/min/{1.73_m2}`` and ``mL/min/(173/100).m2`` are mL/min/1.73 m2), or UCUM arithmetic proves them
    identical (factor 1). A Quantity's unit is a concept, not a spelling: FHIR compares quantities in
    canonical UCUM units (FHIR R5 search, Quantity parameters). Counted as equal and shown apart."""
    from .subject.units import cdisc_unit
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    for codelist in ("UNIT", "VSRESU"):
        ta, tb = cdisc_unit(a, codelist), cdisc_unit(b, codelist)
        if ta is not None and ta == tb:
            return True
    return False


FHIR_ELEMENTS: dict[str, list[tuple[str, Any]]] = {
    "Patient": [("gender", None), ("birthDate", None)],
    "Encounter": [("status", None), ("period.start|actualPeriod.start", _dt), ("period.end|actualPeriod.end", _dt)],
    "Observation": [("status", None), ("valueQuantity.value", None),
                    ("valueQuantity.code", None), ("effectiveDateTime", _dt),
                    ("referenceRange.low.value", None), ("referenceRange.high.value", None),
                    ("dataAbsentReason.coding.code", None)],
    "AdverseEvent": [("term", None), ("date|occurrenceDateTime|occurrencePeriod.start", _dt),
                     ("recordedDate", _dt), ("severity.coding.code", None), ("outcome.coding.code", None),
                     ("seriousness.coding.code", None)],
    "Condition": [("code.text", None), ("onsetDateTime", _dt), ("abatementDateTime", _dt), ("recordedDate", _dt)],
    "MedicationStatement": [("medicationCodeableConcept.text|medication.concept.text", None),
                            ("effectivePeriod.start|effectiveDateTime", _dt), ("effectivePeriod.end", _dt),
                            ("dosage.doseAndRate.doseQuantity.value", None),
                            ("dosage.doseAndRate.doseQuantity.code", None)],
    "MedicationAdministration": [("effectivePeriod.start|effectiveDateTime|occurencePeriod.start", _dt),
                                 ("effectivePeriod.end|occurencePeriod.end", _dt),
                                 ("dosage.dose.value|dosage.doseAndRate.doseQuantity.value", None),
                                 ("dosage.dose.code|dosage.doseAndRate.doseQuantity.code", None)],
}


#: element paths whose values compare by meaning as well as by text (see :func:`same_unit`)
EQUIVALENT_WHEN: dict[str, Any] = {
    "valueQuantity.code": same_unit,
    "dosage.doseAndRate.doseQuantity.code": same_unit,
    "dosage.dose.code|dosage.doseAndRate.doseQuantity.code": same_unit,
}


def _ae_effect_refs(res: dict[str, Any]) -> list[str]:
    """References of an AdverseEvent's resultingCondition (R4) / resultingEffect (R5)."""
    return [str(r["reference"]) for r in (res.get("resultingCondition") or res.get("resultingEffect") or ())
            if isinstance(r, dict) and isinstance(r.get("reference"), str)]


def _ae_term(res: dict[str, Any], resources: dict[tuple[Any, Any], dict[str, Any]]) -> Any:
    """The value rule ae.AETERM maps (Joint IG AETERM row): the text (or first display) of the
    resultingCondition/resultingEffect Condition, else of the event (R4) / code (R5)."""
    from .fhir.concepts import concept_text
    for ref in _ae_effect_refs(res):
        cond = resources.get(("Condition", ref.rsplit("/", 1)[-1]))
        if cond is not None:
            return concept_text(cond.get("code"))
    return concept_text(res.get("event") or res.get("code"))


#: elements compared through what the rule maps rather than one path: (type, name) -> getter(res, resources)
GETTERS: dict[tuple[str, str], Any] = {("AdverseEvent", "term"): _ae_term}
#: elements no rule carries into SDTM, compared and shown but not held to the bar (declared lossy, each
#: with the rule whose report entry says so), like RELREC's dataset-level rows in the SDTM direction
DECLARED_LOSSY: dict[tuple[str, str], str] = {
    ("Observation", "dataAbsentReason.coding.code"): "lb.REASND: SDTM keeps --STAT NOT DONE and the reason "
                                                     "text in --REASND, not the code",
}


def _zone_offsets(tz: str) -> set[str]:
    """The offsets a zone can give: a fixed offset itself (``Z`` also as ``+00:00``); an IANA zone's
    standard and daylight offsets of 1970-2040 (per value the writer computes the one of its date)."""
    from .fhir.subject_terms import is_fixed_offset, zone_offset
    if is_fixed_offset(tz):
        return {tz, "+00:00", "-00:00"} if tz in ("Z", "+00:00") else {tz}
    return {o for y in range(1970, 2041) for md in ("01-15", "07-15")
            if (o := zone_offset(f"{y}-{md}T12:00:00", tz)[0])}


def zone_for_reverse(back: ConversionReport, default_tz: str | None) -> str | None:
    """The zone the SDTM -> FHIR leg gives SDTM times: the user's ``default_tz``, else the single UTC
    offset the FHIR -> SDTM leg dropped (its ``droppedUtcOffsets``). With several offsets and no
    ``default_tz`` none is guessed; either way the offsets that zone cannot restore are reported
    lossy in ``back`` (rule roundtrip.default-tz), per variable with counts."""
    seen: dict[str, dict[str, int]] = back.extra.get("droppedUtcOffsets") or {}
    zones = sorted({z for c in seen.values() for z in c if z != "fraction"})
    tz = default_tz or (zones[0] if len(zones) == 1 else None)
    gives = _zone_offsets(tz) if tz else set()
    lost = {var: {z: n for z, n in sorted(c.items()) if z != "fraction" and z not in gives}
            for var, c in sorted(seen.items())}
    lost = {var: c for var, c in lost.items() if c}
    if lost:
        parts = "; ".join(f"{var} " + ", ".join(f"{z} x{n}" for z, n in c.items()) for var, c in lost.items())
        how = f"--default-tz {tz}" if tz else f"no --default-tz ({len(zones)} offsets seen, none chosen)"
        back.add(Kind.LOSSY, f"UTC offsets not restored by {how}: {parts}; those times come back "
                 "with another offset or as dates", rule="roundtrip.default-tz", source="dateTime offset")
    return tz


def _tally(fid: VariableFidelity, va: Any, vb: Any, same: Any = None) -> bool:
    """Count one compared value as equal, lost (nothing came back) or changed; True when equal.
    ``same(va, vb)``: an element-specific equivalence (counted in ``equal`` and in ``equivalent``)."""
    fid.values += 1
    if vb is not None and (_norm(va) == _norm(vb) or str(va) == str(vb)):
        fid.equal += 1
        return True
    if vb is not None and same is not None and same(va, vb):
        fid.equal += 1
        fid.equivalent += 1
        return True
    if vb is None:
        fid.lost += 1
    else:
        fid.changed += 1
    return False


def run_fhir_roundtrip(inputs: list[Path], workdir: Path, *, study: Path | None = None,
                       fhir_version: str = "R4", default_tz: str | None = None,
                       test_codes: Path | None = None,
                       ) -> tuple[FidelityTable, ConversionReport, ConversionReport]:
    """FHIR -> SDTM (engine) -> FHIR (writer); the elements of :data:`FHIR_ELEMENTS` compared per
    resource, aligned through ``<dom>.provenance.csv`` (source resource) and :func:`writer_id`
    (the resource written back for that SDTM row). A source resource no SDTM row came from is
    counted as lost for each of its elements (explained when the engine's report names it). The
    SDTM -> FHIR leg gets ``default_tz``, else the single offset FHIR -> SDTM dropped
    (:func:`zone_for_reverse`). Returns (table, the FHIR -> SDTM report, the SDTM -> FHIR report):
    the legs in the order they run, as :func:`run_roundtrip` returns them."""
    import orjson

    from .errors import UsageError
    from .fhir.subject_terms import TZ_USAGE, valid_tz
    from .fhir.subject_writer import convert_sdtm_to_fhir
    from .pipeline import Options, load_study
    from .subject.pipeline import convert_subjects
    from .subject.reader import iter_resources
    if default_tz is not None and not valid_tz(default_tz):
        raise UsageError(TZ_USAGE.format(tz=default_tz))
    to_sdtm = ConversionReport()
    sdtm_dir = workdir / "sdtm"
    st = load_study(study, to_sdtm) if study else None
    convert_subjects(inputs, sdtm_dir, options=Options(fhir_version=fhir_version, study=st,
                                                       extra={"test_codes": test_codes} if test_codes else {}),
                     report=to_sdtm)
    tz = zone_for_reverse(to_sdtm, default_tz)
    to_fhir = ConversionReport()
    extra: dict[str, Any] = {"ndjson": True}
    if tz:
        extra["default_tz"] = tz
    paths = convert_sdtm_to_fhir(sdtm_dir, workdir / "fhir", options=SimpleNamespace(
        fhir_version=fhir_version, extra=extra), report=to_fhir)
    original = {(it.resource["resourceType"], it.resource.get("id")): it.resource
                for it in iter_resources(inputs, types=set(FHIR_ELEMENTS))}
    written: dict[tuple[str, str], dict[str, Any]] = {}
    for p in paths:
        for line in p.read_bytes().splitlines():
            if line:
                r = orjson.loads(line)
                written[(r["resourceType"], r["id"])] = r
    sdtm = read_sdtm_folder(sdtm_dir, datasets=set(COMPARED))
    studyid = next((s for s in sdtm.frames["DM"]["STUDYID"].tolist() if s), "")
    came_back: dict[tuple[Any, Any], dict[str, Any] | None] = {}
    every: dict[tuple[Any, Any], list[dict[str, Any]]] = {}     # all resources written from one source
    for dom, df in sdtm.frames.items():
        prov_path = sdtm_dir / f"{dom.lower()}.provenance.csv"
        if dom == "DS" or not prov_path.exists():
            continue
        prov = pd.read_csv(prov_path, dtype=str, keep_default_na=False)
        new_ids = writer_id(dom, df, studyid)
        new_type = _RTYPE[dom]
        for t, i, nid in zip(prov["src_type"], prov["src_id"], new_ids, strict=True):
            if (t, i) in original:
                got = written.get((new_type, nid or ""))
                came_back.setdefault((t, i), got)
                if got is not None:
                    every.setdefault((t, i), []).append(got)
    explain = _Explainer([to_sdtm, to_fhir], engine=0)
    summary = {_RTYPE[d]: lbl for d, lbl in explain.summaries.items() if d in _RTYPE}
    rows: list[VariableFidelity] = []
    records: dict[str, tuple[int, int, int]] = {}
    excluded: dict[str, str] = {}
    # a Condition an AdverseEvent names as its result is that AE's term (rule ae.AETERM, Joint IG), not an
    # MH record (rule mh.select, reported per record): compared as the AdverseEvent's term, not here
    ae_conditions = {("Condition", ref.rsplit("/", 1)[-1]) for k, r in original.items() if k[0] == "AdverseEvent"
                     for ref in _ae_effect_refs(r)} & set(original)
    if ae_conditions:
        excluded[f"Condition ({len(ae_conditions)} record(s))"] = (
            "the resultingCondition/resultingEffect of an AdverseEvent: its text is the AE's AETERM (compared as "
            "AdverseEvent term), not an MH record (mh.select, reported per record)")
    for rtype, elements in FHIR_ELEMENTS.items():
        keys = [k for k in original if k[0] == rtype and k not in ae_conditions]
        aligned = [k for k in keys if k in came_back]
        records[rtype] = (len(keys), len(aligned), 0)
        for path, norm in elements:
            fid = VariableFidelity(rtype, path.split("|")[0])
            getter = GETTERS.get((rtype, path))
            if (rtype, path) in DECLARED_LOSSY:
                fid.mapped = False
                excluded[f"{rtype}.{path}"] = DECLARED_LOSSY[(rtype, path)]
            gone_expl: set[str] = set()
            zone_only = other = 0
            for k in keys:
                a, b = original[k], came_back.get(k)
                va = getter(a, original) if getter else _get(a, path)
                if va is None:
                    continue
                vb = (getter(b, original) if getter else _get(b, path)) if b is not None else None
                if norm:
                    va, vb = norm(va), norm(vb)
                if _tally(fid, va, vb, EQUIVALENT_WHEN.get(path)):
                    continue
                if k not in came_back:        # the record did not come back: the entry dropping it
                    why = explain.records.get(f"{rtype}/{k[1]}") or summary.get(rtype)
                    if why:
                        gone_expl.add(why)
                        fid.unconverted += 1
                    else:
                        fid.unexplained += 1
                elif norm is _dt and isinstance(va, str) and isinstance(vb, str) and len(va) > 19 \
                        and va[:19] == vb[:19]:
                    zone_only += 1            # same local time, another (or no) offset
                else:
                    other += 1
            here = explain.element(rtype, path) if other else []
            fid.unexplained += (0 if here else other) + (0 if explain.zone else zone_only)
            fid.explained_by = here + ([explain.zone] if zone_only and explain.zone else []) + sorted(gone_expl)[:1]
            if fid.values:
                rows.append(fid)
        if rtype == "AdverseEvent":
            fid = _ae_own_text(keys, original, came_back, explain)
            if fid.values:
                rows.append(fid)
                excluded["AdverseEvent.event.text"] = ("an AE's own event text beside its resultingCondition: "
                                                       "AETERM is the Condition's (ae.AETERM, reported lossy)")
        if rtype == "Observation":
            fid = _component_fidelity(keys, original, every, explain, summary)
            if fid.values:
                rows.append(fid)
    return FidelityTable(rows, [], records, excluded), to_sdtm, to_fhir


def _ae_own_text(keys: list[tuple[Any, Any]], original: dict[tuple[Any, Any], dict[str, Any]],
                 came_back: dict[tuple[Any, Any], dict[str, Any] | None], explain: _Explainer) -> VariableFidelity:
    """The event (R4) / code (R5) text of an AdverseEvent that also names a resultingCondition: no rule
    maps it (AETERM is the Condition's text), so it is shown, not held to the bar (declared lossy)."""
    from .fhir.concepts import concept_text
    fid = VariableFidelity("AdverseEvent", "event.text", mapped=False)
    for k in keys:
        a, b = original[k], came_back.get(k)
        if not _ae_effect_refs(a):
            continue
        va = concept_text(a.get("event") or a.get("code"))
        if va is None:
            continue
        _tally(fid, va, concept_text((b or {}).get("event") or (b or {}).get("code")) if b is not None else None)
    if fid.values > fid.equal:
        fid.explained_by = explain.element("AdverseEvent", "event.text|code.text")
        fid.unexplained = 0 if fid.explained_by else fid.values - fid.equal
    return fid


def _loinc_of(res: dict[str, Any]) -> str | None:
    return next((c.get("code") for c in (res.get("code") or {}).get("coding") or ()
                 if isinstance(c, dict) and c.get("system") == "http://loinc.org"), None)


def _component_fidelity(keys: list[tuple[Any, Any]], original: dict[tuple[Any, Any], dict[str, Any]],
                        every: dict[tuple[Any, Any], list[dict[str, Any]]], explain: _Explainer,
                        summary: dict[str, str]) -> VariableFidelity:
    """Observation.component values (blood pressure panels): each component becomes its own SDTM record
    (SYSBP, DIABP) and its own Observation; compared with the written Observation of the same LOINC."""
    fid = VariableFidelity("Observation", "component.valueQuantity.value")
    gone: set[str] = set()
    other = 0
    for k in keys:
        comps = [c for c in original[k].get("component") or () if isinstance(c, dict)
                 and (c.get("valueQuantity") or {}).get("value") is not None]
        if not comps:
            continue
        back_by_loinc = {_loinc_of(r): _get(r, "valueQuantity.value") for r in every.get(k, ())}
        for c in comps:
            if _tally(fid, c["valueQuantity"]["value"], back_by_loinc.get(_loinc_of(c))):
                continue
            why = explain.records.get(f"Observation/{k[1]}") or summary.get("Observation") \
                if k not in every else None
            if why:
                gone.add(why)
            else:
                other += 1
    here = explain.element("Observation", "component") if other else []
    fid.unexplained = 0 if here else other
    fid.explained_by = here + sorted(gone)[:1]
    return fid
