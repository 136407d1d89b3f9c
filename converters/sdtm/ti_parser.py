"""Eligibility criteria free text (CT.gov markdown) -> structured criteria for SDTM TI, and back.

CT.gov ``eligibilityModule.eligibilityCriteria`` is free text. MAPPINGS.md 3.5 (DDF ``sdtm_mapping.xlsx``;
autoTDD ``create_ti_domain_x.R``): split on the "Inclusion Criteria" / "Exclusion Criteria" headings and
on the items; nested sub-items are merged into their parent. The rules used here:

* A heading line (``Inclusion Criteria:``, ``Key Exclusion Criteria``, any indentation, optional
  markdown emphasis) starts a section; text on the heading line after the colon is read as a line.
* Item markers: numbers (``1.``, ``1)``, ``5-1.``, ``(1)``), letters/roman numerals (``a)``, ``(ii)``)
  and bullets (``*``, ``-``, ``+``, ``•``). The first item of a section fixes the top level (its marker
  kind and indentation). A line is a new top-level criterion when it has the top-level marker kind at
  the top-level indentation or shallower, or - for numbered lists - continues the numbering
  (``4.`` then ``5-1.`` then ``5-2.``) whatever its indentation (CT.gov often indents these) - unless
  it continues a deeper numbered list of the current criterion (sub-items ``1. 2. 3.`` then ``4.``).
  Everything else (deeper items, continuation paragraphs) is folded into the current criterion;
  letter/number markers of folded items are kept (``a) ... b) ...``), bullet glyphs are dropped.
* Sub-group headings ``For the <name> sub-group|cohort|group|arm|part only:`` give IESCAT ``<name>``:
  on an item they apply to that item (its text is what follows the heading, or its folded sub-items);
  on a line of their own they apply to the items that follow, up to the next heading.
* A plain line of its own that names a group and ends with a colon (``For adolescent participants:``,
  ``Cohort 1:``) is a sub-group heading too: IESCAT for the items that follow, never a criterion.
* A generic ``Eligibility Criteria:`` heading starts the inclusion section (the criteria before an
  ``Exclusion Criteria`` heading are the inclusion criteria, as CT.gov's own data entry form puts them);
  the caller reports it (``generic_heading``), so the inclusion category is an inference, not a loss.
* A section without any markers: each paragraph is a criterion. Text before the first heading is
  reported by the caller (``preamble``); without any heading every criterion is taken as inclusion
  (``inferred``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

INCLUSION = "INCLUSION"
EXCLUSION = "EXCLUSION"

_HEADING = re.compile(
    r"^\s*[#*_]*\s*(?:key\s+|main\s+|general\s+|major\s+)?(?P<cat>inclusion|exclusion)\s+criteri(?:a|on)s?\b"
    r"[^:\n]{0,40}?[*_]*\s*:?[*_]*\s*(?P<rest>.*)$", re.I)
_GENERIC_HEADING = re.compile(r"^\s*[#*_]*\s*(?:study\s+)?eligibility\s+criteri(?:a|on)s?\s*[*_]*\s*:?[*_]*\s*$", re.I)
_GROUP_HEADING = re.compile(
    r"^(?:for\s+(?:the\s+|all\s+)?(?P<for>[^:]{2,80}?)|(?P<named>(?:sub-?)?(?:cohort|group|arm|part|stage|"
    r"population)\s+[\w-]{1,10}))\s*:$", re.I)
_ROMAN = r"(?:i{1,3}|iv|vi{0,3}|ix|x)"
_MARKER = re.compile(
    r"^(?P<indent>[ \t]*)(?:"
    r"(?P<num>\(?\d{1,3}(?:[-.]\d{1,3})*[.)](?=\s|$))"
    r"|(?P<alpha>\(?(?:" + _ROMAN + r"|[a-zA-Z])[.)](?=\s))"
    r"|(?P<bullet>[*•+·▪◦‣–](?=\s|\S)|-(?=\s|[A-Za-z(\[]))"
    r")\s*(?P<text>.*)$")
_SUBGROUP = re.compile(
    r"^\W*(?:for|in)\s+(?:the\s+|all\s+)?(?P<group>[^:]{0,80}?\b(?:(?:sub-?groups?|groups?|cohorts?|arms?|parts?|"
    r"sub-?stud(?:y|ies)|stages?|populations?|participants|patients|subjects)|(?:cohort|group|arm|part|stage)\s+[\w-]{1,10}))"
    r"\s+only\b\s*[:.,\-]?\s*(?P<rest>.*)$", re.I)
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>~|])")


@dataclass
class Criterion:
    category: str                 # INCLUSION | EXCLUSION
    text: str
    subcategory: str | None = None
    label: str | None = None      # the item marker in the source ("5-1"), for traceability
    parts: list[str] = field(default_factory=list, repr=False)


@dataclass
class ParsedCriteria:
    criteria: list[Criterion]
    preamble: str = ""            # text before the first heading (not a criterion)
    headings_found: bool = True
    generic_heading: bool = False  # an "Eligibility Criteria:" heading was read as the inclusion section


def clean(text: str) -> str:
    """Undo markdown escapes, drop leading bullet glyphs, collapse white space."""
    text = _MD_ESCAPE.sub(r"\1", text)
    text = re.sub(r"^[\s•*·▪◦‣]+", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _major(marker: str) -> tuple[int, bool] | None:
    m = re.match(r"\(?(\d+)([-.]\d+)?", marker)
    if not m:
        return None
    return int(m.group(1)), bool(m.group(2)) and not marker.rstrip(".)").endswith(m.group(1))


def _width(indent: str) -> int:
    return len(indent.replace("\t", "    "))


def parse_criteria(text: str | None) -> ParsedCriteria:
    if not text or not text.strip():
        return ParsedCriteria([], headings_found=False)
    criteria: list[Criterion] = []
    preamble: list[str] = []
    category: str | None = None
    headings = False
    top_kind: str | None = None
    top_indent = 0
    last_major = 0
    sticky_scat: str | None = None
    current: Criterion | None = None
    blank_before = True
    generic = False
    nested_last: dict[int, int] = {}   # indentation -> last number of a nested numbered list

    def start(cat: str, body: str, label: str | None, scat: str | None) -> Criterion:
        crit = Criterion(category=cat, text="", subcategory=scat, label=label)
        sub = _SUBGROUP.match(clean(body))
        if sub:
            crit.subcategory = clean(sub.group("group"))
            body = sub.group("rest")
        if clean(body):
            crit.parts.append(clean(body))
        criteria.append(crit)
        return crit

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    queue = list(lines)
    while queue:
        raw = queue.pop(0)
        if not raw.strip():
            blank_before = True
            continue
        head = _HEADING.match(raw)
        if head and (head.group("rest") == "" or head.group(0).rstrip().find(":") >= 0):
            headings = True
            category = INCLUSION if head.group("cat").lower() == "inclusion" else EXCLUSION
            top_kind, top_indent, last_major, sticky_scat, current = None, 0, 0, None, None
            if head.group("rest").strip():
                queue.insert(0, head.group("rest"))
            blank_before = True
            continue
        if category is None and not criteria and _GENERIC_HEADING.match(raw):
            category, generic = INCLUSION, True
            top_kind, top_indent, last_major, sticky_scat, current = None, 0, 0, None, None
            blank_before = True
            continue
        cat = category or INCLUSION
        if category is None and not criteria and not headings and _looks_like_preamble(raw, lines):
            preamble.append(clean(raw))
            continue
        m = _MARKER.match(raw)
        if m:
            kind = "num" if m.group("num") else "alpha" if m.group("alpha") else "bullet"
            marker = m.group("num") or m.group("alpha") or m.group("bullet")
            indent = _width(m.group("indent"))
            body = m.group("text")
            is_top = False
            if current is None or top_kind is None or kind == top_kind and indent <= top_indent:
                is_top = True
            elif kind == "num" and top_kind == "num":
                maj = _major(marker)
                # a deeper "4." right after the deeper "1. 2. 3." of the current criterion continues that
                # nested list, not the top-level numbering (NCT01298141: item 3's sub-items 1-5)
                nested = maj is not None and nested_last.get(indent) == maj[0] - 1
                if maj and not nested and (maj[0] == last_major + 1 or (maj[0] == last_major and maj[1])):
                    is_top = True
            if is_top:
                if top_kind is None:
                    top_kind, top_indent = kind, indent
                if kind == "num":
                    maj = _major(marker)
                    last_major = maj[0] if maj else last_major
                current = start(cat, body, marker.strip("().") or None, sticky_scat)
                nested_last = {}
            else:
                assert current is not None
                if kind == "num":
                    sub_maj = _major(marker)
                    if sub_maj:
                        nested_last[indent] = sub_maj[0]
                keep = marker if kind != "bullet" else ""
                piece = clean(f"{keep} {body}" if keep else body)
                if piece:
                    current.parts.append(piece)
            blank_before = False
            continue
        # a plain line
        line = clean(raw)
        sub = _SUBGROUP.match(line)
        group = _GROUP_HEADING.match(line)
        shallow = current is None or _width(raw[:len(raw) - len(raw.lstrip())]) <= top_indent
        if sub and not clean(sub.group("rest")) and shallow:
            sticky_scat = clean(sub.group("group"))
            current = None
            blank_before = True
            continue
        if group and (shallow or group.group("named")) and _items_follow(queue):
            sticky_scat = clean(group.group("for") or group.group("named"))
            current = None
            blank_before = True
            continue
        if current is None or (top_kind is None and blank_before):
            current = start(cat, line, None, sticky_scat)
        else:
            current.parts.append(line)
        blank_before = False
    for crit in criteria:
        crit.text = " ".join(p for p in crit.parts if p)
    return ParsedCriteria([c for c in criteria if c.text], preamble=" ".join(preamble),
                          headings_found=headings, generic_heading=generic)


def _items_follow(queue: list[str]) -> bool:
    """The next non-blank line is a marked item (so a 'For X:' line heads a list, not a criterion)."""
    nxt = next((ln for ln in queue if ln.strip()), "")
    return bool(_MARKER.match(nxt)) and not _HEADING.match(nxt)


def _looks_like_preamble(raw: str, lines: list[str]) -> bool:
    """Text before the first heading when the record has headings at all."""
    return any(_HEADING.match(ln) for ln in lines)


def criteria_to_markdown(criteria: list[Criterion]) -> str:
    """The reverse: structured criteria -> CT.gov-style markdown that :func:`parse_criteria` reads back."""
    out: list[str] = []
    for cat, heading in ((INCLUSION, "Inclusion Criteria:"), (EXCLUSION, "Exclusion Criteria:")):
        items = [c for c in criteria if c.category == cat]
        if not items:
            continue
        if out:
            out.append("")
        out.extend([heading, ""])
        for c in items:
            prefix = f"For the {c.subcategory} only: " if c.subcategory else ""
            out.append(f"* {prefix}{c.text}")
    return "\n".join(out)
