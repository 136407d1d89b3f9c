"""Shared helpers of the event and intervention domains (AE, CM, EX, MH, PR, SV, DS).

Code-table lookups over mappings/codes/*.csv (never guessing: a code missing from a table is an
``unmapped-code`` issue), NCIt C-code lookups through the pinned CDISC CT, CodeableConcept access
with plain dict operations, and the study-drug rule (which medication is the study intervention).
Not a domain module (leading underscore: the engine does not import it as a plug-in).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import pandas as pd

from ...fhir.concepts import concept_text
from ...report import Kind
from ...sdtm.ct import NCIT, pinned_ct
from ...specs import load_table
from ..base import SRC_COLUMNS, Ctx, derive_dtc, ref_of

NCIT_SYSTEMS = frozenset({NCIT, "http://ncithesaurus-stage.nci.nih.gov", "urn:oid:2.16.840.1.113883.3.26.1.1"})
MEDDRA_SYSTEMS = frozenset({"http://terminology.hl7.org/CodeSystem/mdr", "http://meddra.org"})
SNOMED = "http://snomed.info/sct"
XV = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
Codings = tuple[tuple[str, str], ...]


# ----------------------------------------------------------------------------- FHIR access
def codings(concept: Any) -> Codings:
    """(system, code) pairs of a CodeableConcept (or of an R5 CodeableReference's concept)."""
    if isinstance(concept, dict) and "concept" in concept and "coding" not in concept:
        concept = concept.get("concept")
    if not isinstance(concept, dict):
        return ()
    return tuple((str(c.get("system") or ""), str(c.get("code")))
                 for c in concept.get("coding") or () if isinstance(c, dict) and c.get("code") is not None)


def text_of(concept: Any) -> str | None:
    """CodeableConcept.text, else the first coding's display."""
    if isinstance(concept, dict) and "concept" in concept and "coding" not in concept:
        concept = concept.get("concept")
    return concept_text(concept)


def coding_in(concept: Any, systems: Iterable[str]) -> dict[str, Any] | None:
    if isinstance(concept, dict) and "concept" in concept and "coding" not in concept:
        concept = concept.get("concept")
    systems = set(systems)
    for c in (concept or {}).get("coding") or () if isinstance(concept, dict) else ():
        if isinstance(c, dict) and c.get("system") in systems:
            return c
    return None


def first(value: Any) -> Any:
    """The first item of a FHIR list element, or the element itself (R4 0..1 vs R5 0..*)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def first_reason(res: dict[str, Any], ctx: Ctx, var: str | None) -> tuple[str | None, str | None]:
    """The indication (``var``: CMINDC, EXINDC or PRINDC) of a resource: (text, Condition reference) from
    the *first* item of R4 ``reasonCode`` and ``reasonReference`` or of R5 ``reason`` (CodeableReference:
    concept or reference), as mappings/subject/read_elements.yaml ``nested`` declares them read (items:
    first); later items are reported there (rule subject.unread-nested), never read in their place. The
    text is the concept's text, else its first coding's display; a first concept of codes only (no text,
    no display) gives no text: reported lossy once (its codes are not looked up in any terminology).
    ``var`` None: the caller reports the whole reason as not carried (EX has no --INDC)."""
    concept = first(res.get("reasonCode"))
    ref = ref_of(first(res.get("reasonReference")))
    r5 = first(res.get("reason"))
    if isinstance(r5, dict):
        if concept is None:
            concept = r5.get("concept")
        ref = ref or ref_of(r5.get("reference"))
    text = text_of(concept) if isinstance(concept, dict) else None
    if var is not None and text is None and codings(concept):
        dom = var[:2].lower()
        ctx.once(f"{dom}.indc-codes", Kind.LOSSY, f"an indication given as codes only (no text, no display): "
                 f"{var} left empty (or taken from the referenced Condition), the codes are not carried",
                 rule=f"{dom}.{var}", source="reasonCode/reason.concept coding", target=var)
    return text, ref


def ident_value(res: dict[str, Any]) -> str | None:
    """The first identifier value (--SPID), skipping the project's own naming systems (``<base>/sid/``:
    the --SEQ/USUBJID keys trialbridge writes are not sponsor-defined identifiers)."""
    from ...fhir.subject_terms import SID
    idents = res.get("identifier")
    for ident in idents if isinstance(idents, list) else [idents]:
        if isinstance(ident, dict) and ident.get("value"):
            if str(ident.get("system") or "").startswith(SID + "/"):
                continue
            return str(ident["value"])
    return None


def extension(res: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in res.get("extension") or () if isinstance(e, dict) and e.get("url") == url]


def sub_ext(ext: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in ext.get("extension") or () if isinstance(e, dict) and e.get("url") == url]


def period_or_datetime(res: dict[str, Any], stem: str) -> tuple[Any, Any]:
    """(start, end) of ``<stem>DateTime`` / ``<stem>Period`` / ``<stem>Range`` / ``<stem>Instant``."""
    dtv = res.get(f"{stem}DateTime") or res.get(f"{stem}Instant")
    if dtv:
        return dtv, None
    per = res.get(f"{stem}Period")
    if isinstance(per, dict):
        return per.get("start"), per.get("end")
    rng = res.get(f"{stem}Range")
    if isinstance(rng, dict):
        return None, None
    return None, None


def record_key(cols: pd.DataFrame) -> pd.Series:
    return cols["_src_type"].astype(str) + "/" + cols["_src_id"].astype(str)


# ----------------------------------------------------------------------------- code tables
@cache
def table_index(name: str) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["source_system"], r["source_code"]): r for r in load_table(f"codes/{name}")}


@cache
def ucum_units() -> dict[str, str]:
    """UCUM -> CDISC UNIT (C71620), the lowest-rank row of the CDISC Unit-UCUM table, plus extras."""
    best: dict[str, tuple[int, str]] = {}
    for r in load_table("codes/ucum_cdisc_units.csv"):
        if r.get("codelist") != "C71620":
            continue
        rank = int(r.get("rank") or 99)
        if r["source_code"] not in best or rank < best[r["source_code"]][0]:
            best[r["source_code"]] = (rank, r["target_code"])
    out = {k: v for k, (_, v) in best.items()}
    for r in load_table("codes/fhir_dose_unit_extra.csv"):
        out.setdefault(r["source_code"], r["target_code"])
    return out


def lookup(codes: Codings, table: str | None, codelist: str | None = None,
           column: str = "target_code") -> tuple[str | None, dict[str, str] | None]:
    """First coding found in ``table`` (exact system and code), else an NCIt coding whose C-code is a
    term of ``codelist`` in the pinned CT. Returns (value, table row)."""
    idx = table_index(table) if table else {}
    for sc in codes:
        row = idx.get(sc)
        if row is not None:
            return (row.get(column) or None), row
    if codelist:
        cl = pinned_ct().codelist(codelist)
        for system, code in codes:
            if system in NCIT_SYSTEMS:
                term = cl.by_code(code)
                if term is not None:
                    return term.value, None
    return None, None


def map_codes(cols: pd.DataFrame, src: str, ctx: Ctx, *, table: str | None, codelist: str | None,
              rule: str, target: str, column: str = "target_code", source: str | None = None) -> pd.Series:
    """Map a column of Codings tuples to target values; every non-empty miss is reported (``source``:
    the FHIR path the report names; the column name when not given)."""
    values = cols[src] if src in cols else pd.Series([()] * len(cols), index=cols.index)
    found = values.map(lambda c: lookup(c, table, codelist, column) if c else (None, None))
    out = found.map(lambda t: t[0])
    # a table row with an empty target is a known code that deliberately sets nothing
    miss = values.map(bool) & out.isna() & found.map(lambda t: t[1] is None)
    if miss.any():
        keys = record_key(cols)
        for i in cols.index[miss]:
            ctx.report.unmapped_code("|".join(f"{s}#{c}" for s, c in values.at[i]),
                                     table or f"CT {codelist}", rule=rule, source=source or src.lstrip("_"),
                                     target=target, record=keys.at[i])
    return out.astype("object")


def dtc(cols: pd.DataFrame, src: str, ctx: Ctx, *, rule: str, target: str, source: str | None = None) -> pd.Series:
    """FHIR dates -> --DTC via the engine helper; values that are not FHIR dates are reported (``source``:
    the FHIR path the report names; the column name when not given)."""
    if src not in cols:
        return pd.Series([None] * len(cols), index=cols.index, dtype="object")
    out, bad = derive_dtc(cols[src], ctx.dropped_zone(target))
    if bad.any():
        keys = record_key(cols)
        for i in cols.index[bad]:
            ctx.report.add(Kind.INVALID_VALUE, "not a FHIR date/dateTime", rule=rule, source=source or src.lstrip("_"),
                           target=target, record=keys.at[i], value=cols.at[i, src])
    return out


def ct_unit(cols: pd.DataFrame, src: str, ctx: Ctx, *, rule: str, target: str,
            amount: pd.Series | None = None, amount_var: str | None = None) -> pd.Series:
    """UCUM code (or unit text when no code) -> CDISC UNIT term; misses reported. With ``amount`` (the
    number the unit belongs to, e.g. CMDOSE), an amount given with no unit at all is reported missing
    per record: SDTMIG 3.4 CM/EX --DOSU is the unit of --DOSE, a dose without it is not interpretable."""
    units = ucum_units()
    vals = cols[src] if src in cols else pd.Series([None] * len(cols), index=cols.index)
    out = vals.map(lambda u: units.get(u) if isinstance(u, str) else None)
    miss = vals.notna() & out.isna()
    if miss.any():
        keys = record_key(cols)
        for i in cols.index[miss]:
            ctx.report.unmapped_code(vals.at[i], "ucum_cdisc_units.csv + fhir_dose_unit_extra.csv",
                                     rule=rule, source=src.lstrip("_"), target=target, record=keys.at[i])
    if amount is not None:
        no_unit = amount.notna() & vals.isna()
        if no_unit.any():
            keys = record_key(cols)
            for i in cols.index[no_unit]:
                ctx.report.add(Kind.MISSING, f"{amount_var} given with no unit (Quantity without code or unit): "
                               f"{target} empty, the dose is not interpretable without it", rule=rule,
                               source=src.lstrip("_"), target=target, record=keys.at[i])
    return out.astype("object")


def dose_quantity(q: Any) -> tuple[Any, Any]:
    """(value, unit key) of a Quantity: the UCUM code when the system is UCUM, else the unit text."""
    if not isinstance(q, dict):
        return None, None
    unit = q.get("code") if q.get("system") == "http://unitsofmeasure.org" and q.get("code") else q.get("unit")
    return q.get("value"), unit


def timing_key(timing: Any) -> Codings:
    """Timing -> codings for fhir_frequency.csv: Timing.code codings, then 'frequency/period/unit'."""
    if not isinstance(timing, dict):
        return ()
    out = list(codings(timing.get("code")))
    rep = timing.get("repeat")
    if isinstance(rep, dict) and rep.get("period") is not None and rep.get("periodUnit"):
        def num(v: Any) -> str:
            return f"{int(v)}" if float(v).is_integer() else f"{v}"
        # a range ("1 to 2 times a day": frequencyMax; "every 4-6 hours": periodMax) is no CT frequency:
        # its key ("1-2/1/d") matches no row and is reported (unmapped-code), never read as its lower bound
        freq = num(rep.get("frequency", 1)) + (f"-{num(rep['frequencyMax'])}" if rep.get("frequencyMax") is not None
                                              else "")
        per = num(rep["period"]) + (f"-{num(rep['periodMax'])}" if rep.get("periodMax") is not None else "")
        out.append(("timing-repeat", f"{freq}/{per}/{rep['periodUnit']}"))
    return tuple(out)


def drop_rows(cols: pd.DataFrame, mask: pd.Series, ctx: Ctx, message: str, *, rule: str,
              kind: Kind = Kind.LOSSY) -> pd.DataFrame:
    if mask.any():
        keys = record_key(cols)
        for i in cols.index[mask]:
            ctx.report.add(kind, message, rule=rule, record=keys.at[i])
    return cols.loc[~mask].reset_index(drop=True)


# ----------------------------------------------------------------------------- study drug rule
def study_drug_names(ctx: Ctx) -> dict[str, str]:
    """casefolded name -> the study definition's intervention name. Names are each intervention's
    name and other names, and the product code before ' (' (CT.gov 'CODE (description)' names)."""
    out: dict[str, str] = {}
    st = ctx.study
    if st is None or not st.arms_interventions:
        return out
    for iv in st.arms_interventions.interventions:
        if not iv.name:
            continue
        for n in (iv.name, *iv.other_names):
            if n:
                out.setdefault(" ".join(n.split()).casefold(), iv.name)
                head = n.split(" (", 1)[0].strip()
                if head and head != n:
                    out.setdefault(head.casefold(), iv.name)
    return out


def medication_concept(res: dict[str, Any], ctx: Ctx) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(CodeableConcept, Medication resource) of a MedicationX resource (R4 or R5)."""
    med = res.get("medication")
    if isinstance(med, dict):                       # R5 CodeableReference
        concept = med.get("concept")
        ref = (med.get("reference") or {}).get("reference") if isinstance(med.get("reference"), dict) else None
    else:
        concept = res.get("medicationCodeableConcept")
        mr = res.get("medicationReference")
        ref = mr.get("reference") if isinstance(mr, dict) else None
    medres = None
    if ref:
        medres = ctx.resource("Medication", ref)
        if medres is None and ref.startswith("#"):
            medres = next((c for c in res.get("contained") or () if isinstance(c, dict)
                           and c.get("id") == ref[1:]), None)
        if concept is None and medres is not None:
            concept = medres.get("code")
    return concept, medres


def study_drug_of(concept: Any, names: dict[str, str]) -> str | None:
    """The intervention name a medication concept matches (text, display or code), else None."""
    if not names or not isinstance(concept, dict):
        return None
    cands = [concept.get("text")]
    for c in concept.get("coding") or ():
        if isinstance(c, dict):
            cands += [c.get("display"), c.get("code")]
    for cand in cands:
        if isinstance(cand, str):
            hit = names.get(" ".join(cand.split()).casefold())
            if hit:
                return hit
    return None


def carried_frame(cols: pd.DataFrame, *extra: str) -> pd.DataFrame:
    """A domain's output frame, started with the columns every domain carries through from the
    extraction (identity, reference dates, ``extra``, provenance) where the extraction has them."""
    out = pd.DataFrame(index=cols.index)
    for v in ("STUDYID", "USUBJID", "_rfstdtc", "_rfendtc", "_rficdtc", *extra, *SRC_COLUMNS):
        if v in cols:
            out[v] = cols[v]
    return out

