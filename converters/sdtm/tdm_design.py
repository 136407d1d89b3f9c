"""Study -> TA, TE, TV, TI rows (and TA/TI back), per MAPPINGS.md 3.5.

CT.gov has no epochs, elements or visits: TA/TE/TV are inferred from what the record says, and every
inference is reported (``inferred``):

* **ARMCD** from the arm label: upper-case letters and digits, other runs of characters as ``_``, cut to
  20 characters at a ``_`` where possible; a clash gets ``_2``, ``_3``... (deterministic, record order).
* **Elements**: ``SCRN`` Screening when the record mentions screening (criteria, descriptions); one
  treatment element per distinct set of interventions of an arm (``TRT01``...; ELEMENT = the intervention
  names joined by `` + ``); ``FU`` Follow-up when the record mentions follow-up or post-treatment
  monitoring. Epochs are CDISC CT EPOCH terms (SCREENING, TREATMENT, FOLLOW-UP).
* **TV**: time points (``3 days``, ``Week 24``, ``every 4 weeks until Week 24``) from the outcome time
  frames and from the schedule sentences of the descriptions (sentences that speak of visits,
  assessments, follow-up or monitoring). VISITDY = 1 + offset in days (week 7, month 30, year 365 days;
  rounded half up), so "3 days" and, in a protocol that counts from a Day 0, "Day 3" are VISITDY 4; in a
  record that names no Day 0, "Day N" is the protocol's own day number, VISITDY N (Day 1 = the first day,
  no day 0). BASELINE (day 1) when an outcome is measured from baseline.
* **TI**: :mod:`trialbridge.sdtm.ti_parser`; IETEST over 200 characters is cut at a word boundary, the
  cut is reported (``truncated``) and the full text kept in ``report.extra["tdm.ti_full_text"]``
  (TIRL is for a machine-readable rule, not for overflow text).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..model import Study
from ..report import ConversionReport, Kind
from .tdm_ts_rules import intervention_arms
from .ti_parser import Criterion, criteria_to_markdown, parse_criteria

MAX_TEXT = 200
UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
_SCREENING = re.compile(r"\bscreen(?:ing|ed)?\b", re.I)
_FOLLOWUP = re.compile(r"\bfollow[- ]?up\b|\bpost[- ](?:infusion|treatment|dose)\b.*\bmonitor", re.I)
_SCHEDULE = re.compile(r"\b(visit|return|assess|follow[- ]?up|monitor)", re.I)
_NUM_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(day|week|month|year)s?\b", re.I)
_UNIT_NUM = re.compile(r"\b(day|week|month|year)\s*(\d+(?:\.\d+)?)\b", re.I)
_DAY0 = re.compile(r"\bday\s*0\b|\b0\s*days?\b", re.I)
_EVERY = re.compile(r"every\s+(\d+)\s+(day|week|month|year)s?\b[^.]*?\buntil\s+(day|week|month|year)\s+(\d+)",
                    re.I)


def derive_armcd(labels: list[str]) -> list[str]:
    out: list[str] = []
    for i, label in enumerate(labels):
        base = re.sub(r"[^A-Z0-9]+", "_", (label or "").upper()).strip("_") or f"ARM{i + 1}"
        if len(base) > 20:
            cut = base[:20]
            base = cut.rsplit("_", 1)[0] if "_" in cut[8:] else cut
            base = base.strip("_")
        code, n = base, 2
        while code in out:
            suffix = f"_{n}"
            code = base[:20 - len(suffix)] + suffix
            n += 1
        out.append(code)
    return out


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut


def _record_text(study: Study) -> str:
    d = study.description
    parts = [study.eligibility.criteria if study.eligibility else None,
             d.brief_summary if d else None, d.detailed_description if d else None]
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ TA / TE
def build_ta_te(study: Study, report: ConversionReport) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ai = study.arms_interventions
    arms = list(ai.arm_groups) if ai else []
    if not arms:
        return [], []
    text = _record_text(study)
    screening = bool(_SCREENING.search(text))
    followup = bool(_FOLLOWUP.search(text))
    links = intervention_arms(study)
    interventions = list(ai.interventions) if ai else []
    codes = derive_armcd([a.label or "" for a in arms])
    report.add(Kind.INFERRED, "ARMCD derived from the arm labels (upper-case, _ for other characters, "
               "<= 20 characters)", rule="ta.ARMCD", source="protocolSection.armsInterventionsModule"
               ".armGroups[].label", target="TA.ARMCD")
    elements: dict[str, dict[str, Any]] = {}
    if screening:
        elements["SCRN"] = {"ETCD": "SCRN", "ELEMENT": "Screening", "TESTRL": "Informed consent",
                            "TEENRL": "Completion of screening assessments", "EPOCH": "SCREENING"}
        report.add(Kind.INFERRED, "screening element from the record's mention of screening",
                   rule="te.SCRN", source="protocolSection.eligibilityModule.eligibilityCriteria",
                   target="TE.ETCD")
    if followup:
        report.add(Kind.INFERRED, "follow-up element from the record's mention of follow-up/monitoring",
                   rule="te.FU", source="protocolSection.descriptionModule", target="TE.ETCD")
    trt_by_set: dict[tuple[str, ...], str] = {}
    ta: list[dict[str, Any]] = []
    randomized = bool(study.design and study.design.design_info
                      and study.design.design_info.allocation == "RANDOMIZED") and len(arms) > 1
    for arm, armcd in zip(arms, codes, strict=True):
        names = tuple(interventions[i].name or "" for i, a in links.items() if any(x is arm for x in a))
        seq: list[dict[str, Any]] = []
        if screening:
            seq.append(elements["SCRN"] | {"TABRANCH": f"Randomized to {arm.label}" if randomized else ""})
        if names:
            if names not in trt_by_set:
                etcd = f"TRT{len(trt_by_set) + 1:02d}"
                trt_by_set[names] = etcd
                label = " + ".join(names)
                elements[etcd] = {"ETCD": etcd, "ELEMENT": cut_text(label),
                                  "TESTRL": cut_text(f"First dose of {label}"),
                                  # SDTMIG 3.4 TE: "Either TEENRL or TEDUR must be present for each
                                  # element"; CT.gov gives no treatment duration: the end rule by name
                                  # (the follow-up element starts at it)
                                  "TEENRL": "End of treatment",
                                  "EPOCH": "TREATMENT"}
                report.add(Kind.INFERRED, f"treatment element {etcd} from the interventions of arm "
                           f"{armcd}", rule="te.TRT", source="protocolSection.armsInterventionsModule"
                           ".interventions[].name", target="TE.ETCD")
            seq.append(elements[trt_by_set[names]])
        if followup:
            elements.setdefault("FU", {"ETCD": "FU", "ELEMENT": "Follow-up", "TESTRL": "End of treatment",
                                       "TEENRL": "End of follow-up", "EPOCH": "FOLLOW-UP"})
            seq.append(elements["FU"])
        for order, el in enumerate(seq, start=1):
            ta.append({"ARMCD": armcd, "ARM": cut_text(arm.label or ""), "TAETORD": order, "ETCD": el["ETCD"],
                       "ELEMENT": el["ELEMENT"], "TABRANCH": el.get("TABRANCH", ""), "TATRANS": "",
                       "EPOCH": el["EPOCH"]})
        if not seq:
            report.add(Kind.MISSING, f"arm {armcd} has no interventions and the record names no screening "
                       "or follow-up: no TA element", rule="ta.element", target="TA.ETCD")
    te = [{k: v for k, v in el.items() if k != "EPOCH"} for el in elements.values()]
    return ta, te


# ------------------------------------------------------------------ TV
def _timepoints(text: str, day0: bool = False) -> list[tuple[float, str, float]]:
    """(days after the start, unit, number) for every time point named in ``text``; ``day0``: the protocol
    counts its days from a Day 0."""
    points: list[tuple[float, str, float]] = []
    for m in _EVERY.finditer(text):
        step, unit, end = int(m.group(1)), m.group(2).lower(), float(m.group(4))
        k = step
        while k <= end:
            points.append((k * UNIT_DAYS[unit], unit, float(k)))
            k += step
    for m in _NUM_UNIT.finditer(text):
        n = float(m.group(1))
        unit = m.group(2).lower()
        points.append((n * UNIT_DAYS[unit], unit, n))
    for m in _UNIT_NUM.finditer(text):
        n = float(m.group(2))
        unit = m.group(1).lower()
        if unit == "day" and not day0:
            # no Day 0 in the record: "Day N" is the protocol's day number, Day 1 the first day (SDTMIG
            # 3.4 study day: no day 0), N - 1 days after the start. "Week N" stays N weeks after it.
            if n >= 1:
                points.append((n - 1, unit, n))
            continue
        points.append((n * UNIT_DAYS[unit], unit, n))
    return points


def build_tv(study: Study, report: ConversionReport) -> list[dict[str, Any]]:
    sources: list[tuple[str, str]] = []
    if study.outcomes:
        for kind, items in (("primaryOutcomes", study.outcomes.primary),
                            ("secondaryOutcomes", study.outcomes.secondary),
                            ("otherOutcomes", study.outcomes.other)):
            for i, o in enumerate(items):
                if o.time_frame:
                    sources.append((f"protocolSection.outcomesModule.{kind}[{i}].timeFrame", o.time_frame))
    if study.description:
        for name, text in (("briefSummary", study.description.brief_summary),
                           ("detailedDescription", study.description.detailed_description)):
            for sentence in re.split(r"(?<=[.!?])\s+", text or ""):
                if _SCHEDULE.search(sentence):
                    sources.append((f"protocolSection.descriptionModule.{name}", sentence))
    ai = study.arms_interventions
    day0 = bool(_DAY0.search(" ".join([_record_text(study)] + [t for _, t in sources] + (
        [a.description or "" for a in ai.arm_groups] + [i.description or "" for i in ai.interventions]
        if ai else []))))
    points: dict[int, tuple[str, float]] = {}
    for _, text in sources:
        for days, unit, n in _timepoints(text, day0):
            day = math.floor(days + 0.5)   # half up (0.5 and 1.5 years alike), not Python's half-to-even
            if n <= 0 or day < 0 or day in points:
                continue
            points[day] = (unit, n)
    if not points:
        return []
    baseline = any(re.search(r"\bbaseline\b", (o.measure or "") + " " + (o.description or ""), re.I)
                   for o in (study.outcomes.primary + study.outcomes.secondary + study.outcomes.other
                             if study.outcomes else ()))
    rows: list[dict[str, Any]] = []
    # the same evidence that gives TE/TA a Screening element gives TV its screening visit (before
    # day 1, so no VISITDY: its timing is the element's start rule)
    screening = bool(study.arms_interventions and study.arms_interventions.arm_groups
                     and _SCREENING.search(_record_text(study)))
    if screening:
        rows.append({"VISIT": "SCREENING", "VISITDY": None, "TVSTRL": "Informed consent (start of the "
                     "Screening element)"})
    if baseline:
        rows.append({"VISIT": "BASELINE", "VISITDY": 1, "TVSTRL": "Start of treatment"})
        points.pop(0, None)   # Day 1 is the baseline visit
    names: set[str] = {r["VISIT"] for r in rows}
    for day in sorted(points):
        unit, n = points[day]
        num = f"{n:g}"
        name = f"{unit.upper()} {num}"
        if name in names:   # "Day 3" (VISITDY 3) and "3 days" (VISITDY 4): VISIT stays 1:1 with VISITNUM
            name = f"DAY {day + 1}"
        names.add(name)
        rule = ("Start of treatment" if day == 0 else
                f"{day} day{'' if day == 1 else 's'} after start of treatment" if unit == "day" and n != day else
                f"{num} {unit}{'' if n == 1 else 's'} after start of treatment")
        rows.append({"VISIT": name, "VISITDY": day + 1, "TVSTRL": rule})
    for i, r in enumerate(rows, start=1):
        r["VISITNUM"] = i
        r.setdefault("ARMCD", "")
        r.setdefault("TVENRL", "")
    report.add(Kind.INFERRED, f"{len(rows)} planned visits from the outcome time frames and schedule "
               f"wording (VISITDY = 1 + offset; week 7, month 30, year 365 days; 'Day N' = VISITDY N unless the "
               f"record counts from a Day 0)", rule="tv.VISIT",
               source="; ".join(sorted({s.split('[')[0] for s, _ in sources})), target="TV.VISITNUM")
    return rows


# ------------------------------------------------------------------ TI
def build_ti(study: Study, report: ConversionReport, key: str) -> list[dict[str, Any]]:
    text = study.eligibility.criteria if study.eligibility else None
    parsed = parse_criteria(text)
    src = "protocolSection.eligibilityModule.eligibilityCriteria"
    if parsed.preamble:
        report.add(Kind.LOSSY, "text before the first criteria heading is not a criterion",
                   rule="ti.parse", source=src, target="TI")
    if parsed.generic_heading:
        report.add(Kind.INFERRED, "criteria under the 'Eligibility Criteria' heading taken as inclusion"
                   + (" (an 'Exclusion Criteria' heading follows)" if parsed.headings_found else ""),
                   rule="ti.parse", source=src, target="TI.IECAT")
    if parsed.criteria and not parsed.headings_found and not parsed.generic_heading:
        report.add(Kind.INFERRED, "no Inclusion/Exclusion headings: criteria taken as inclusion",
                   rule="ti.parse", source=src, target="TI.IECAT")
    rows: list[dict[str, Any]] = []
    counters = {"INCLUSION": 0, "EXCLUSION": 0}
    full: dict[str, str] = {}
    for c in parsed.criteria:
        counters[c.category] += 1
        code = f"{'INCL' if c.category == 'INCLUSION' else 'EXCL'}{counters[c.category]:02d}"
        test = cut_text(c.text)
        if test != c.text:
            full[code] = c.text
            report.add(Kind.TRUNCATED, f"IETEST cut from {len(c.text)} to {len(test)} characters; full text in "
                       "report extra 'tdm.ti_full_text'", rule="ti.IETEST", source=src, target="TI.IETEST",
                       record=f"{key}/{code}")
        rows.append({"IETESTCD": code, "IETEST": test, "IECAT": c.category,
                     "IESCAT": c.subcategory or ""})
    if full:
        report.extra.setdefault("tdm.ti_full_text", {})[key] = full
    return rows


def criteria_from_ti(rows: list[dict[str, Any]], report: ConversionReport) -> str | None:
    if not rows:
        return None
    versions = [r.get("TIVERS") or "" for r in rows]
    if len(set(versions)) > 1:
        last = versions[-1]
        report.add(Kind.LOSSY, f"TI holds {len(set(versions))} protocol versions; the model keeps the last "
                   f"({last})", rule="ti.TIVERS", source="TI.TIVERS",
                   target="protocolSection.eligibilityModule.eligibilityCriteria")
        rows = [r for r in rows if (r.get("TIVERS") or "") == last]
    crits = [Criterion(category=str(r.get("IECAT") or "INCLUSION").upper(), text=str(r.get("IETEST") or ""),
                       subcategory=(r.get("IESCAT") or None)) for r in rows]
    return criteria_to_markdown(crits)
