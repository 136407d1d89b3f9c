"""Value rules shared by the readers of CT.gov's *display* vocabulary (legacy XML, record printouts).

Both readers normalise onto CT.gov API v2 JSON shape first and then hand the dict to the v2 table
codec (``tablemodel``), so the model is filled by one code path. A rule (a row of a YAML spec in
``mappings/``) says: take this raw string, run these named transforms, look the result up in this
code table (``mappings/codes/ctgov_display_terms.csv``), and put it at this v2 path. The transforms
registered here are the closed vocabulary the specs may name; the spec lint checks the names.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from typing import Any

from ..report import ConversionReport, Kind
from ..specs import get_transform, load_codemap, transform

DISPLAY_TERMS = "codes/ctgov_display_terms.csv"
NCT_ID = re.compile(r"^NCT\d{8}$")

_MONTHS = {m: i for i, m in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September",
     "October", "November", "December"], start=1)}
_DISPLAY_DATE = re.compile(r"^(?P<month>[A-Z][a-z]+) (?:(?P<day>\d{1,2}), )?(?P<year>\d{4})$")
_ISO_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_QUALIFIER = re.compile(r"^(?P<head>.*?)\s*\((?P<qual>[^()]*)\)$", re.S)


# ----------------------------------------------------------------------------- transforms
@transform("text")
def read_text(value: str) -> str | None:
    """Surrounding white space off, a wrapped line joined (the XML pretty-printer wraps long
    values); an empty value is absent."""
    value = re.sub(r"[ \t]*\r?\n\s*", " ", value.strip())
    return value or None


@transform("textblock")
def read_textblock(value: str) -> str | None:
    """A legacy <textblock>: the XML's indentation off, paragraphs and line breaks kept."""
    value = textwrap.dedent(value.replace("\r\n", "\n").strip("\n")).strip()
    return value or None


@transform("display_date")
def read_display_date(value: str) -> str | None:
    """``September 26, 2019`` -> ``2019-09-26``; ``September 2019`` -> ``2019-09``; ISO kept;
    ``Unknown`` (public.xsd variable_date_type) is absent."""
    value = value.strip()
    if value in ("", "Unknown"):
        return None
    if _ISO_DATE.match(value):
        return value
    m = _DISPLAY_DATE.match(value)
    if not m or m["month"] not in _MONTHS:
        raise ValueError(f"{value!r} is not a date (expected 'Month D, YYYY' or 'Month YYYY')")
    out = f"{m['year']}-{_MONTHS[m['month']]:02d}"
    if m["day"]:
        day = int(m["day"])
        if not 1 <= day <= 31:
            raise ValueError(f"{value!r} has no such day")
        out += f"-{day:02d}"
    return out


@transform("strip_qualifier")
def strip_qualifier(value: str) -> str | None:
    """``10 (Anticipated)`` -> ``10``."""
    m = _QUALIFIER.match(value.strip())
    return read_text(m["head"] if m else value)


@transform("qualifier")
def read_qualifier(value: str) -> str | None:
    """``10 (Anticipated)`` -> ``Anticipated``; no parenthesis -> absent."""
    m = _QUALIFIER.match(value.strip())
    return read_text(m["qual"]) if m else None


@transform("integer")
def read_integer(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not a whole number") from None


@transform("yes_no")
def read_yes_no(value: str) -> bool | None:
    """public.xsd yes_no_enum (Yes/No); printouts also write True/False. None/N/A are absent."""
    v = value.strip()
    if v in ("Yes", "True"):
        return True
    if v in ("No", "False"):
        return False
    if v in ("", "None", "N/A"):
        return None
    raise ValueError(f"{v!r} is not Yes/No")


@transform("split_phase")
def split_phase(value: str) -> list[str]:
    """``Phase 1/Phase 2`` -> [``Phase 1``, ``Phase 2``] (public.xsd phase_enum combined phases)."""
    return [p.strip() for p in re.split(r"/(?=Phase)|, ", value.strip()) if p.strip()]


@transform("masking_level")
def masking_level(value: str) -> str | None:
    """``Double (Participant, Investigator)`` -> ``Double``; ``None (Open Label)`` -> ``None``."""
    m = _QUALIFIER.match(value.strip())
    return read_text(m["head"] if m else value)


@transform("masking_roles")
def masking_roles(value: str) -> list[str]:
    """``Double (Participant, Investigator)`` -> [``Participant``, ``Investigator``].

    The parenthesis of ``None (Open Label)`` (and the pre-2017 ``Open Label``) is a gloss, not roles.
    """
    m = _QUALIFIER.match(value.strip())
    if not m or m["head"].strip() in ("None", "Open Label"):
        return []
    return [r.strip() for r in m["qual"].split(",") if r.strip()]


@transform("age")
def read_age(value: str) -> str | None:
    """``18 Years`` as is (API v2 spelling); ``N/A`` (no limit) is absent."""
    v = value.strip()
    if v in ("", "N/A"):
        return None
    if not re.match(r"^\d+ (Year|Month|Week|Day|Hour|Minute)s?$", v):
        raise ValueError(f"{v!r} is not an age ('<number> <unit>')")
    return v


@transform("patient_registry")
def read_patient_registry(value: str) -> bool | None:
    """``Observational [Patient Registry]`` -> true (designModule.patientRegistry); else absent."""
    return True if value.strip() == "Observational [Patient Registry]" else None


@transform("null_markers")
def drop_null_markers(value: str) -> str | None:
    """Printout placeholders for an empty field (``None``, ``N/A``, ``Not Stopped``) are absent."""
    v = value.strip()
    return None if v in ("", "None", "N/A", "Not Stopped") else v


@transform("split_list")
def split_list(value: str) -> list[str]:
    """A comma-joined list as a page renders it (keywords)."""
    return [p.strip() for p in value.split(", ") if p.strip()]


@transform("split_names")
def split_names(value: str) -> list[str]:
    """A comma-joined list of names as a page renders it (collaborators, conditions, keywords);
    refused when a piece is one word (``Inc.``, ``Korea``, ``Carcinoma``): the commas may belong
    to the names themselves, and splitting would be a guess."""
    parts = split_list(value)
    if len(parts) > 1 and any(len(p.split()) == 1 for p in parts):
        raise ValueError("comma-joined names whose pieces may themselves contain commas; "
                         "cannot split without guessing")
    return parts


@transform("paragraphs")
def read_paragraphs(value: str) -> str | None:
    """A multi-line printout value: lines kept, runs of blank lines as one paragraph break."""
    value = re.sub(r"\n\s*\n\s*", "\n\n", value.strip())
    return value or None


@transform("nct_id_or_none")
def read_nct_id_or_none(value: str) -> str | None:
    """An NCT-formatted value, else absent (used where a page shows no NCT number field)."""
    v = value.strip()
    return v if NCT_ID.match(v) else None


@transform("std_ages")
def read_std_ages(value: str) -> list[str]:
    """The record page's age line ``18 Years - 70 Years (Adult, Older Adult)All Sexes...`` ->
    [``Adult``, ``Older Adult``]."""
    m = re.search(r"\(([^()]*)\)", value)
    return split_list(m[1]) if m else []


@transform("criteria_markdown")
def criteria_markdown(block: str) -> str | None:
    """The rendered eligibility list of a record page -> CT.gov markdown.

    ``  1. text`` items become ``1. text``; lines indented under an item stay under it (3 spaces);
    ``•`` bullets become ``* `` bullets; ``Inclusion/Exclusion Criteria:`` headings go to the top
    level, as do sub-group numbers such as ``5-1.`` (they are not items of the list above them).
    Text is kept as rendered (``-at least ...`` stays literal).
    """
    blocks: list[tuple[str, str]] = []
    in_item, item_indent = False, 0
    for raw in block.splitlines():
        line = raw.strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        if re.match(r"^(Inclusion|Exclusion) Criteria:?$", line, re.I):
            blocks.append(("heading", line))
            in_item = False
            continue
        m = re.match(r"^(\d+)\.\s+(.*)$", line)
        if m:
            blocks.append(("item", f"{m[1]}. {m[2]}"))
            in_item, item_indent = True, indent
            continue
        if re.match(r"^\d+-\d+\.\s", line):
            blocks.append(("para", line))
            in_item = False
            continue
        m = re.match(r"^[•*]\s*(.*)$", line)
        if m:
            blocks.append(("subbullet" if in_item else "bullet", f"* {m[1]}"))
            continue
        if in_item and indent > item_indent:
            blocks.append(("sub", line))
        else:
            blocks.append(("para", line))
            in_item = False
    out: list[str] = []
    prev = ""
    for kind, text in blocks:
        tight = kind == prev and kind in ("item", "bullet", "subbullet")
        if out and not tight:
            out.append("")
        out.append(("   " if kind in ("sub", "subbullet") else "") + text)
        prev = kind
    return "\n".join(out) or None


@transform("design_part")
def read_design_part(value: str, key: str) -> str | None:
    """One ``Key: Value`` part of the pre-2017 ``<study_design>`` string."""
    for part in _design_parts(value):
        k, _, v = part.partition(":")
        if k.strip() == key:
            return read_text(v)
    return None


def _design_parts(value: str) -> list[str]:
    # split at ", " only where a new "Key:" starts: values such as "Double Blind (Subject, Caregiver)"
    # hold commas themselves
    return [p for p in re.split(r",\s+(?=[A-Z][A-Za-z ]+:)", value.strip()) if p]


@transform("nct_id")
def read_nct_id(value: str) -> str:
    v = value.strip()
    if not NCT_ID.match(v):
        raise ValueError(f"{v!r} is not an NCT id (NCT followed by 8 digits)")
    return v


# ----------------------------------------------------------------------------- rule application
def _call(name: str, value: Any) -> Any:
    fname, _, arg = name.partition(":")
    fn = get_transform(fname)
    return fn(value, arg) if arg else fn(value)


def convert_value(raw: Any, rule: dict[str, Any], *, report: ConversionReport, source: str) -> Any:
    """Run a rule's transforms and code lookup on one raw value. ``None`` means: set nothing.

    A transform that rejects the value raises ``ValueError``: reported ``invalid-value``.
    A code missing from the table is reported ``unmapped-code`` and left out (never guessed).
    """
    rule_id = rule.get("id")
    target = rule.get("to")
    if "const" in rule:
        return rule["const"]
    value: Any = raw
    for name in _as_list(rule.get("transform", "text")):
        try:
            value = [_call(name, v) for v in value] if isinstance(value, list) else _call(name, value)
        except ValueError as exc:
            report.add(Kind.INVALID_VALUE, f"{exc}; value left out", rule=rule_id, source=source,
                       target=target, value=raw)
            return None
        if isinstance(value, list):
            value = [v for v in value if v is not None]
        if value is None or value == []:
            return None
    code = rule.get("code")
    if code:
        value = _lookup_all(value, code, report=report, rule_id=rule_id, source=source, target=target)
    return value


def _lookup_all(value: Any, code: str, **kw: Any) -> Any:
    if isinstance(value, list):
        out = [lookup_code(v, code, **kw) for v in value]
        return [v for v in out if v is not None] or None
    return lookup_code(value, code, **kw)


def lookup_code(value: str, code: str, *, report: ConversionReport, rule_id: str | None,
                source: str, target: str | None) -> Any:
    row = load_codemap(DISPLAY_TERMS).lookup(value, f"ctgov-display:{code}")
    if row is None:
        report.unmapped_code(value, f"{DISPLAY_TERMS} ({code})", rule=rule_id, source=source,
                             target=target)
        return None
    if row["target_system"] == "json:boolean":
        return row["target_code"] == "true"
    return row["target_code"]


def display_term(target_code: str, code: str) -> str | None:
    """The display spelling of a v2 code (``DRUG`` -> ``Drug``), for CT.gov's derived labels."""
    for row in load_codemap(DISPLAY_TERMS).rows:
        if row["source_system"] == f"ctgov-display:{code}" and row["target_code"] == target_code:
            return row["source_code"]
    return None


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


_MISSING = object()


def get_in(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.replace("[]", "").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def is_set(doc: dict[str, Any], path: str) -> bool:
    return get_in(doc, path) is not _MISSING


def put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted v2 path; a last segment ending in ``[]`` appends (lists extend)."""
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    last = parts[-1]
    if last.endswith("[]"):
        items = cur.setdefault(last[:-2], [])
        items.extend(value if isinstance(value, list) else [value])
    else:
        cur[last] = value


@transform("derive_intervention_names")
def derive_intervention_names(doc: dict[str, Any]) -> None:
    """armGroups[].interventionNames from interventions[].armGroupLabels, as CT.gov derives them
    (``Drug: Aspirin``): the same cross-reference seen from the arm."""
    module = get_in(doc, "protocolSection.armsInterventionsModule")
    if module is _MISSING:
        return
    arms = {a.get("label"): a for a in module.get("armGroups", []) if isinstance(a, dict)}
    for iv in module.get("interventions", []):
        label = display_term(iv.get("type", ""), "intervention_type")
        if not label or not iv.get("name"):
            continue
        for arm_label in iv.get("armGroupLabels", []):
            arm = arms.get(arm_label)
            name = f"{label}: {iv['name']}"
            if arm is not None and name not in arm.setdefault("interventionNames", []):
                arm["interventionNames"].append(name)


def iter_rules(rules: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every rule of a spec, groups' inner rules included (for the spec lint)."""
    for rule in rules:
        yield rule
        yield from iter_rules(rule.get("rules", []))
