"""Named transforms of ``mappings/sdtm_ts.yaml``: Study -> TS rows and TS rows -> Study fields.

Every rule of the spec names a writer transform (``ts.*``) and a reverse one (``ts.*.reverse``); both
are registered here with :func:`trialbridge.specs.transform`. Writers return :class:`TsRow` objects;
reverses write into a nested ``dict`` patch that :mod:`trialbridge.sdtm.tdm_reader` turns into a Study.
Coded values are exact CDISC submission values taken from the CT in use (never upper-cased or guessed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..model import Study
from ..report import ConversionReport, Kind
from ..specs import load_table, transform
from .ct import ControlledTerminology

ISO8601 = "ISO 8601"
ISO3166 = "ISO 3166-1 alpha-3"   # the code form FCNTRY holds (CDISC MSG v2 sample ts.json; FDA TCG)
CDISC_CT = "CDISC CT"

#: Title wording that marks an extension / long-term follow-up study (EXTTIND=Y, reported as inferred).
EXTENSION_WORDING = re.compile(
    r"\b(long[- ]term (?:safety )?follow[- ]?up|extension (?:study|trial|phase)|open[- ]label extension|"
    r"roll[- ]?over (?:study|trial)|follow[- ]?up (?:study|trial) (?:of|for) (?:subjects|patients|participants)|"
    r"(?:subjects|patients|participants) who (?:participated|completed|were enrolled) in)\b", re.I)

AGE_UNITS = {"Year": "Y", "Month": "M", "Week": "W", "Day": "D", "Hour": "H", "Minute": "M"}
ISO_UNITS = {"Y": "Year", "M": "Month", "W": "Week", "D": "Day"}
CTGOV_INTERVENTION_LABEL = {
    "DRUG": "Drug", "DEVICE": "Device", "BIOLOGICAL": "Biological", "PROCEDURE": "Procedure",
    "RADIATION": "Radiation", "BEHAVIORAL": "Behavioral", "GENETIC": "Genetic",
    "DIETARY_SUPPLEMENT": "Dietary Supplement", "COMBINATION_PRODUCT": "Combination Product",
    "DIAGNOSTIC_TEST": "Diagnostic Test", "OTHER": "Other"}
COMPARATOR_ARMS = {"ACTIVE_COMPARATOR": "ACTIVE", "PLACEBO_COMPARATOR": "PLACEBO", "SHAM_COMPARATOR": "SHAM"}


@dataclass
class TsRow:
    parmcd: str
    value: str = ""
    nf: str = ""
    code: str = ""
    ref: str = ""
    ver: str = ""
    grpid: str = ""


@dataclass
class WriteContext:
    study: Study
    ct: ControlledTerminology
    report: ConversionReport
    key: str
    rule: dict[str, Any] = field(default_factory=dict)

    @property
    def parmcd(self) -> str:
        return str(self.rule["tsparmcd"])

    def text(self, value: Any, grpid: str = "") -> TsRow:
        return TsRow(self.parmcd, value=str(value), grpid=grpid)

    def null(self, nf: str | None = None) -> TsRow:
        return TsRow(self.parmcd, nf=nf or self.rule.get("when_absent") or "NI")

    def term(self, codelist: str, value: str, *, source_value: Any = None, grpid: str = "") -> TsRow:
        """A CDISC CT coded row, checked against the CT in use (unknown: unmapped-code, TSVALNF=OTH)."""
        try:
            t = self.ct.term(codelist, value)
        except KeyError:
            t = None
        if t is None:
            self.report.add(Kind.UNMAPPED_CODE, f"{value!r} is not a term of codelist {codelist} in "
                            f"{self.ct.source}", rule=self.rule.get("id"), source=self.rule.get("ctgov"),
                            target=f"TS.{self.parmcd}", value=source_value)
            return TsRow(self.parmcd, nf="OTH", grpid=grpid)
        return TsRow(self.parmcd, value=t.value, code=t.code, ref=CDISC_CT, ver=self.ct.version, grpid=grpid)

    def yn(self, flag: bool, grpid: str = "") -> TsRow:
        return self.term("C66742", "Y" if flag else "N", grpid=grpid)

    def lookup(self, source_code: str | None) -> dict[str, str] | None:
        table = self.rule.get("code_table")
        codelist = self.rule.get("codelist")
        if not table or source_code is None:
            return None
        for row in load_table(table):
            if row["source_code"] == source_code and (not codelist or row["target_codelist"] == codelist):
                return row
        return None

    def coded(self, source_code: str | None) -> TsRow | None:
        if source_code is None:
            return None
        row = self.lookup(source_code)
        if row is None:
            self.report.add(Kind.UNMAPPED_CODE, f"code not in table {self.rule.get('code_table')} "
                            f"(codelist {self.rule.get('codelist')})", rule=self.rule.get("id"),
                            source=self.rule.get("ctgov"), target=f"TS.{self.parmcd}", value=source_code)
            return TsRow(self.parmcd, nf="OTH")
        out = self.term(row["target_codelist"], row["target_value"], source_value=source_code)
        if out.code and out.code != row["target_code"]:
            self.report.add(Kind.INVALID_VALUE, f"code table gives {row['target_code']} for "
                            f"{row['target_value']!r}, the CT in use {out.code}; the CT wins",
                            rule=self.rule.get("id"), target=f"TS.{self.parmcd}")
        if row.get("note", "").startswith("lossy"):
            self.report.add(Kind.LOSSY, f"{source_code} written as {row['target_value']} "
                            f"({row['note']}; no closer CDISC term)", rule=self.rule.get("id"),
                            source=self.rule.get("ctgov"), target=f"TS.{self.parmcd}")
        return out


@dataclass
class ReadContext:
    patch: dict[str, Any]
    report: ConversionReport
    rule: dict[str, Any]
    all_rows: dict[str, list[dict[str, Any]]]

    def set(self, path: str, value: Any) -> None:
        node = self.patch
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    def get(self, path: str) -> Any:
        node: Any = self.patch
        for p in path.split("."):
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    def reverse_lookup(self, value: str, codelist: str | None = None) -> str | None:
        table = self.rule.get("code_table")
        codelist = codelist or self.rule.get("codelist")
        if not table:
            return None
        hits = [r for r in load_table(table) if r["target_value"] == value
                and (not codelist or r["target_codelist"] == codelist)]
        hits.sort(key=lambda r: r.get("reverse") != "Y")
        return hits[0]["source_code"] if hits else None


def get_path(obj: Any, path: str | None) -> Any:
    if not path:
        return None
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def tsval(row: dict[str, Any]) -> str:
    """TSVAL with its continuation variables TSVAL1..TSVALn joined back (SDTMIG TS assumption)."""
    parts = [str(row.get("TSVAL") or "")]
    i = 1
    while f"TSVAL{i}" in row:
        parts.append(str(row.get(f"TSVAL{i}") or ""))
        i += 1
    return "".join(parts)


def study_type_of(study: Study) -> str | None:
    return study.design.study_type if study.design else None


# ------------------------------------------------------------------ generic transforms
@transform("ts.text")
def ts_text(ctx: WriteContext) -> list[TsRow]:
    value = get_path(ctx.study, ctx.rule.get("source"))
    values = [v for v in value if v] if isinstance(value, tuple) else ([value] if value else [])
    if not values:
        return [ctx.null()] if ctx.rule.get("when_absent") else []
    return [ctx.text(v) for v in values]


@transform("ts.text.reverse")
def ts_text_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    vals = [tsval(r) for r in rows if tsval(r)]
    if not vals:
        return
    path = ctx.rule["source"]
    if path in ("conditions.keywords",):
        ctx.set(path, tuple(vals))
    else:
        ctx.set(path, vals[0])


@transform("ts.coded")
def ts_coded(ctx: WriteContext) -> list[TsRow]:
    value = get_path(ctx.study, ctx.rule.get("source"))
    if value is None:
        return [ctx.null()] if ctx.rule.get("when_absent") else []
    if ctx.rule["tsparmcd"] == "TTYPE" and ctx.lookup(value) is None:
        return [ctx.null()]   # TTYPE holds only some purposes (DDF); the rest are TINDTP only
    row = ctx.coded(value)
    return [row] if row else []


@transform("ts.coded.reverse")
def ts_coded_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        val = tsval(r)
        if not val:
            continue
        src = ctx.reverse_lookup(val)
        if src is None:
            ctx.report.add(Kind.UNMAPPED_CODE, f"TS {ctx.rule['tsparmcd']} value has no CT.gov code in "
                           f"{ctx.rule.get('code_table')}", rule=ctx.rule["id"],
                           source=f"TS.{ctx.rule['tsparmcd']}", target=ctx.rule.get("ctgov"), value=val)
            continue
        ctx.set(ctx.rule["source"], src)
        return


@transform("ts.consumed")
def ts_consumed(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    """Derived parameters: nothing to read back (the writer derives them again; the reader's fidelity
    check carries them through when they do not come out the same)."""


@transform("ts.consumed_by_intervention_rule")
def ts_consumed_by_intervention_rule(ctx: WriteContext) -> list[TsRow]:
    return []   # TRT/COMPTRT rows are written by ts.interventions together with INTTYPE


@transform("ts.no_source")
def ts_no_source(ctx: WriteContext) -> list[TsRow]:
    return [ctx.null()]


@transform("ts.yn")
def ts_yn(ctx: WriteContext) -> list[TsRow]:
    value = get_path(ctx.study, ctx.rule.get("source"))
    if value is None:
        return [ctx.null()] if ctx.rule.get("when_absent") else []
    return [ctx.yn(bool(value))]


@transform("ts.yn.reverse")
def ts_yn_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if tsval(r) in ("Y", "N"):
            ctx.set(ctx.rule["source"], tsval(r) == "Y")
            return


@transform("ts.count")
def ts_count(ctx: WriteContext) -> list[TsRow]:
    arms = get_path(ctx.study, ctx.rule.get("source")) or ()
    if not arms:   # a record without arm groups (old CT.gov records) does not say how many there are
        return [ctx.null()] if ctx.rule.get("when_absent") else []
    return [ctx.text(len(arms))]


@transform("ts.count.reverse")
def ts_count_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    """The arms themselves come from TA; the count is checked there."""


# ------------------------------------------------------------------ specific transforms
@transform("ts.study_type")
def ts_study_type(ctx: WriteContext) -> list[TsRow]:
    design = ctx.study.design
    if design is None or design.study_type is None:
        return [ctx.null()]
    code = design.study_type
    if code == "OBSERVATIONAL" and design.patient_registry:
        code = "OBSERVATIONAL|REGISTRY"
    row = ctx.coded(code)
    return [row] if row else []


@transform("ts.study_type.reverse")
def ts_study_type_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        src = ctx.reverse_lookup(tsval(r)) if tsval(r) else None
        if src:
            typ, _, reg = src.partition("|")
            ctx.set("design.study_type", typ)
            if reg:
                ctx.set("design.patient_registry", True)
            return


@transform("ts.phase")
def ts_phase(ctx: WriteContext) -> list[TsRow]:
    phases = ctx.study.design.phases if ctx.study.design else ()
    if not phases:
        if study_type_of(ctx.study) in ("OBSERVATIONAL", "EXPANDED_ACCESS"):
            ctx.report.add(Kind.INFERRED, "no phase for a non-interventional study: TPHASE NOT APPLICABLE",
                           rule=ctx.rule["id"], source=ctx.rule["ctgov"], target="TS.TPHASE")
            return [ctx.term("C66737", "NOT APPLICABLE")]
        return [ctx.null()]
    row = ctx.coded("|".join(phases))
    return [row] if row else []


@transform("ts.phase.reverse")
def ts_phase_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        src = ctx.reverse_lookup(tsval(r)) if tsval(r) else None
        if src is None and tsval(r):
            ctx.report.add(Kind.UNMAPPED_CODE, "TPHASE value has no CT.gov phase", rule=ctx.rule["id"],
                           source="TS.TPHASE", target=ctx.rule["ctgov"], value=tsval(r))
        if src:
            if src == "NA" and ctx.get("design.study_type") in ("OBSERVATIONAL", "EXPANDED_ACCESS"):
                return    # NOT APPLICABLE was inferred for a study CT.gov gives no phase
            ctx.set("design.phases", tuple(src.split("|")))
            return


@transform("ts.random")
def ts_random(ctx: WriteContext) -> list[TsRow]:
    di = ctx.study.design.design_info if ctx.study.design else None
    alloc = di.allocation if di else None
    if alloc is None:
        return [ctx.null()]
    return [ctx.yn(alloc == "RANDOMIZED")]


@transform("ts.random.reverse")
def ts_random_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        v = tsval(r)
        if v == "Y":
            ctx.set("design.design_info.allocation", "RANDOMIZED")
        elif v == "N":
            narms = next((tsval(x) for x in ctx.all_rows.get("NARMS", []) if tsval(x)), None)
            # CT.gov says NA for single-arm studies (DDF: <= 1 arm -> N/A)
            ctx.set("design.design_info.allocation",
                    "NA" if narms is not None and narms.isdigit() and int(narms) <= 1 else "NON_RANDOMIZED")
        else:
            continue
        return


@transform("ts.enrollment")
def ts_enrollment(ctx: WriteContext) -> list[TsRow]:
    enr = ctx.study.design.enrollment if ctx.study.design else None
    planned = ctx.rule["enrollment_type"] == "ESTIMATED"
    if enr is None or enr.count is None:
        return [ctx.null()] if planned else []
    if (enr.type or "ESTIMATED") != ctx.rule["enrollment_type"]:
        # an ACTUAL count replaces the anticipated one in CT.gov: the planned number is not in the record,
        # and PLANSUB (FDA-expected) says so with a null flavor instead of being left out
        return [ctx.null()] if planned else []
    if enr.type is None:
        ctx.report.add(Kind.INFERRED, "enrollment type missing: count taken as planned (PLANSUB)",
                       rule=ctx.rule["id"], source=ctx.rule["ctgov"], target="TS.PLANSUB")
    return [ctx.text(enr.count)]


@transform("ts.enrollment.reverse")
def ts_enrollment_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        v = tsval(r)
        if v.isdigit():
            ctx.set("design.enrollment", {"count": int(v), "type": ctx.rule["enrollment_type"]})
            return


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+(Year|Month|Week|Day|Hour|Minute)s?\s*$", re.I)


@transform("ts.age")
def ts_age(ctx: WriteContext) -> list[TsRow]:
    value = get_path(ctx.study, ctx.rule["source"])
    if ctx.study.eligibility is None:
        return [ctx.null("NI")]  # no eligibility at all: nothing says there is no limit
    if not value or str(value).strip().upper() in ("N/A", "NA", "NONE"):
        return [ctx.null()]      # eligibility given without this bound: no limit (NINF / PINF)
    m = _AGE.match(str(value))
    if not m:
        ctx.report.add(Kind.INVALID_VALUE, "age is not '<number> <unit>'", rule=ctx.rule["id"],
                       source=ctx.rule["ctgov"], target=f"TS.{ctx.parmcd}", value=value)
        return [ctx.null("NI")]
    unit = m.group(2).capitalize()
    letter = AGE_UNITS[unit]
    dur = f"PT{m.group(1)}{letter}" if unit in ("Hour", "Minute") else f"P{m.group(1)}{letter}"
    return [TsRow(ctx.parmcd, value=dur, ref=ISO8601)]


@transform("ts.age.reverse")
def ts_age_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        m = re.match(r"^P(T?)(\d+(?:\.\d+)?)([YMWDH])$", tsval(r))
        if not m:
            if tsval(r):
                ctx.report.add(Kind.UNMAPPED_CODE, "age is not an ISO 8601 duration PnY/PnM/PnW/PnD",
                               rule=ctx.rule["id"], source=f"TS.{ctx.rule['tsparmcd']}",
                               target=ctx.rule["ctgov"], value=tsval(r))
            continue
        unit = {"H": "Hour", "M": "Minute"}[m.group(3)] if m.group(1) else ISO_UNITS[m.group(3)]
        n = m.group(2)
        ctx.set(ctx.rule["source"], f"{n} {unit}{'' if n == '1' else 's'}")
        return


@transform("ts.indic")
def ts_indic(ctx: WriteContext) -> list[TsRow]:
    conds = ctx.study.conditions.conditions if ctx.study.conditions else ()
    if not conds:
        return [ctx.null()]
    mesh = {(m.term or "").casefold(): m for m in ctx.study.condition_meshes}
    out = []
    for c in conds:
        hit = mesh.get(c.casefold())
        if hit and hit.id:
            out.append(TsRow("INDIC", value=c, code=hit.id, ref="MeSH"))
        else:
            out.append(ctx.text(c))
    return out


@transform("ts.indic.reverse")
def ts_indic_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    vals = [tsval(r) for r in rows if tsval(r)]
    if vals:
        ctx.set("conditions.conditions", tuple(vals))
    meshes = [{"id": r.get("TSVALCD"), "term": tsval(r)} for r in rows
              if r.get("TSVCDREF") == "MeSH" and r.get("TSVALCD")]
    if meshes:
        ctx.set("condition_meshes", meshes)


def _country_rows() -> tuple[dict[str, str], ...]:
    return load_table("codes/iso3166_countries.csv")


@transform("ts.fcntry")
def ts_fcntry(ctx: WriteContext) -> list[TsRow]:
    locs = ctx.study.contacts_locations.locations if ctx.study.contacts_locations else ()
    seen: list[str] = []
    for loc in locs:
        if loc.country and loc.country not in seen:
            seen.append(loc.country)
    if not seen:
        return [ctx.null()]
    index = {r["source_code"].casefold(): r for r in _country_rows()}
    out = []
    for name in seen:
        row = index.get(name.casefold())
        if row is None:
            ctx.report.add(Kind.UNMAPPED_CODE, "country name not in codes/iso3166_countries.csv",
                           rule=ctx.rule["id"], source=ctx.rule["ctgov"], target="TS.FCNTRY", value=name)
            out.append(TsRow("FCNTRY", nf="OTH"))
            continue
        out.append(TsRow("FCNTRY", value=row["target_code"], code=row["target_code"], ref=ISO3166))
    return out


@transform("ts.fcntry.reverse")
def ts_fcntry_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    names = []
    for r in rows:
        code = tsval(r)
        if not code:
            continue
        hits = [x for x in _country_rows() if x["target_code"] == code]
        hits.sort(key=lambda x: x.get("ctgov_preferred") != "Y")
        if not hits:
            ctx.report.add(Kind.UNMAPPED_CODE, "FCNTRY is not an ISO 3166-1 alpha-3 code",
                           rule=ctx.rule["id"], source="TS.FCNTRY", value=code)
            continue
        names.append(hits[0]["source_code"])
    if names:
        ctx.set("contacts_locations.locations", [{"country": n} for n in names])


@transform("ts.regid")
def ts_regid(ctx: WriteContext) -> list[TsRow]:
    from ..specs import load_spec
    registries = load_spec("sdtm_ts.yaml")["registries"]
    ident = ctx.study.identification
    out = []
    if ident.nct_id:
        out.append(TsRow("REGID", value=ident.nct_id, code=ident.nct_id, ref=registries["NCT"]))
    for sec in ident.secondary_ids:
        if not sec.id:
            continue
        if sec.type in registries:
            out.append(TsRow("REGID", value=sec.id, code=sec.id, ref=registries[sec.type]))
        elif sec.type == "REGISTRY" and sec.domain:
            out.append(TsRow("REGID", value=sec.id, code=sec.id, ref=sec.domain))
    return out or [ctx.null()]


@transform("ts.regid.reverse")
def ts_regid_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    from ..specs import load_spec
    by_name = {v.casefold(): k for k, v in load_spec("sdtm_ts.yaml")["registries"].items()}
    secondary = []
    for r in rows:
        val, ref = tsval(r), r.get("TSVCDREF") or ""
        if not val:
            continue
        kind = by_name.get(ref.casefold())   # registry names, e.g. the MSG sample's 'clinicaltrials.gov'
        if kind == "NCT" or (not ref and re.fullmatch(r"NCT\d{8}", val)):
            if ctx.get("identification.nct_id") is None:
                ctx.set("identification.nct_id", val)
                continue
        if kind in ("EUDRACT_NUMBER", "CTIS"):
            secondary.append({"id": val, "type": kind})
        else:
            secondary.append({"id": val, "type": "REGISTRY", "domain": ref or None})
    if secondary:
        ctx.set("identification.secondary_ids", secondary)


def intervention_arms(study: Study) -> dict[int, list[Any]]:
    """Intervention index -> the arm groups it belongs to (either link direction of CT.gov)."""
    ai = study.arms_interventions
    if ai is None:
        return {}
    out: dict[int, list[Any]] = {}
    for i, iv in enumerate(ai.interventions):
        arms = []
        for arm in ai.arm_groups:
            names = {n.split(": ", 1)[-1] for n in arm.intervention_names} | set(arm.intervention_names)
            if iv.name in names or (arm.label and arm.label in iv.arm_group_labels):
                arms.append(arm)
        out[i] = arms
    return out


@transform("ts.interventions")
def ts_interventions(ctx: WriteContext) -> list[TsRow]:
    ai = ctx.study.arms_interventions
    if ai is None or not ai.interventions:
        return []
    links = intervention_arms(ctx.study)
    out: list[TsRow] = []
    for i, iv in enumerate(ai.interventions):
        grp = f"INT{i + 1}"
        arm_types = {a.type for a in links.get(i, [])}
        comparator = bool(arm_types) and arm_types <= set(COMPARATOR_ARMS)
        parm = "COMPTRT" if comparator else "TRT"
        ctx.report.add(Kind.INFERRED, f"intervention {i + 1} written as {parm} from the types of its arms "
                       f"({', '.join(sorted(t for t in arm_types if t)) or 'no arm'})",
                       rule=f"ts.{parm}", source=f"protocolSection.armsInterventionsModule.interventions[{i}]",
                       target=f"TS.{parm}")
        if iv.name:
            out.append(TsRow(parm, value=iv.name, grpid=grp))
        if iv.type:
            row = ctx.coded(iv.type)
            if row:
                row.grpid = grp
                out.append(row)
    return out


@transform("ts.interventions.reverse")
def ts_interventions_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    names = {r.get("TSGRPID") or f"#{i}": tsval(r) for i, r in enumerate(
        ctx.all_rows.get("TRT", []) + ctx.all_rows.get("COMPTRT", []))}
    types: dict[str, str] = {}
    for r in rows:
        src = ctx.reverse_lookup(tsval(r)) if tsval(r) else None
        if src and r.get("TSGRPID"):
            types[r["TSGRPID"]] = src
    ivs = [{"name": name, "type": types.get(grp)} for grp, name in names.items() if name]
    if ivs:
        ctx.set("arms_interventions.interventions", ivs)


@transform("ts.tcntrl")
def ts_tcntrl(ctx: WriteContext) -> list[TsRow]:
    arms = ctx.study.arms_interventions.arm_groups if ctx.study.arms_interventions else ()
    if not arms or any(a.type is None for a in arms):
        # arm types unknown (no arm groups, or an arm without a type): the control type is not in the record
        return [ctx.null()] if ctx.rule.get("when_absent") else []
    kinds = sorted({COMPARATOR_ARMS[a.type] for a in arms if a.type in COMPARATOR_ARMS})
    ctx.report.add(Kind.INFERRED, "control type from the comparator arm types "
                   f"({', '.join(kinds) or 'none: NONE'})", rule=ctx.rule["id"], source=ctx.rule["ctgov"],
                   target="TS.TCNTRL")
    return [ctx.term("C66785", k) for k in kinds] or [ctx.term("C66785", "NONE")]


@transform("ts.outcomes")
def ts_outcomes(ctx: WriteContext) -> list[TsRow]:
    outcomes = get_path(ctx.study, ctx.rule["source"]) or ()
    return [ctx.text(o.measure) for o in outcomes if o.measure]


@transform("ts.outcomes.reverse")
def ts_outcomes_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    vals = [{"measure": tsval(r)} for r in rows if tsval(r)]
    if vals:
        ctx.set(ctx.rule["source"], vals)


@transform("ts.actual_date")
def ts_actual_date(ctx: WriteContext) -> list[TsRow]:
    # SSTDTC and SENDTC are FDA-expected (the FDA Technical Rejection Criteria read the study start date
    # from TS SSTDTC): without an actual date the row is written with TSVALNF (NI), never left out
    ds = get_path(ctx.study, ctx.rule["source"])
    if ds is None or not ds.date:
        return [ctx.null()]
    if ds.type != "ACTUAL":
        ctx.report.add(Kind.LOSSY, f"{ds.type or 'untyped'} date not written: TS {ctx.parmcd} is the actual "
                       f"date (TSVALNF={ctx.rule.get('when_absent') or 'NI'})", rule=ctx.rule["id"],
                       source=ctx.rule["ctgov"].split(" ")[0], target=f"TS.{ctx.parmcd}")
        return [ctx.null()]
    return [TsRow(ctx.parmcd, value=ds.date, ref=ISO8601)]


@transform("ts.actual_date.reverse")
def ts_actual_date_reverse(ctx: ReadContext, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if tsval(r):
            ctx.set(ctx.rule["source"], {"date": tsval(r), "type": "ACTUAL"})
            return


@transform("ts.exttind")
def ts_exttind(ctx: WriteContext) -> list[TsRow]:
    ident = ctx.study.identification
    for path, title in (("officialTitle", ident.official_title), ("briefTitle", ident.brief_title)):
        m = EXTENSION_WORDING.search(title or "")
        if m:
            ctx.report.add(Kind.INFERRED, f"EXTTIND=Y from the wording {m.group(0)!r} of the {path}",
                           rule=ctx.rule["id"], source=f"protocolSection.identificationModule.{path}",
                           target="TS.EXTTIND")
            return [ctx.yn(True)]
    return [ctx.null("NI")]
