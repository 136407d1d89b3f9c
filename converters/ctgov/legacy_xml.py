"""Archived ClinicalTrials.gov ``<clinical_study>`` XML (public.xsd, AllPublicXML dumps) -> Study.

The element correspondences are rules in ``mappings/ctgov_legacy_xml.yaml``; display values become
API v2 codes through ``mappings/codes/ctgov_display_terms.csv``. The reader builds CT.gov API v2 JSON
shape and hands it to the v2 table codec, so legacy records meet the model exactly as v2 records do.

Like the JSON reader, it tracks what it read: every element or attribute that no rule read is
reported ``unmapped-source`` by its XML path; declared gaps and the opaque results are ``lossy``.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from ..errors import InputError
from ..model import Study
from ..report import ConversionReport, Kind, Severity
from ..specs import get_transform, load_spec, transform
from .rules import NCT_ID, convert_value, get_in, is_set, put
from .v2 import codec

SPEC = "ctgov_legacy_xml.yaml"
RULE_PREFIX = "lx"
_INDEX = re.compile(r"\[\d+\]")
_NCT_IN_NAME = re.compile(r"NCT\d{8}")


@transform("person_name")
def read_person_name(element: Any) -> str | None:
    """public.xsd contact_struct/investigator_struct: first, middle, last name and degrees as one
    name (API v2 keeps one ``name``); archived records put the whole name in ``last_name``."""
    parts = [(element.findtext(tag) or "").strip() for tag in ("first_name", "middle_name", "last_name")]
    name = " ".join(p for p in parts if p)
    degrees = (element.findtext("degrees") or "").strip()
    if degrees:
        name = f"{name}, {degrees}" if name else degrees
    return name or None


def read_legacy_xml(root: Any, *, file: str, report: ConversionReport) -> list[Study]:
    """One ``<clinical_study>`` element -> one Study (the legacy XML holds one record per file)."""
    spec = load_spec(SPEC)
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag != spec["root"]:
        raise InputError(f"XML root element <{tag}> is not <clinical_study> (legacy ClinicalTrials.gov "
                         "record)", file=file)
    nct = (root.findtext("id_info/nct_id") or "").strip()
    if not nct:
        raise InputError("no <id_info>/<nct_id>: not a ClinicalTrials.gov record", file=file,
                         field="clinical_study/id_info/nct_id")
    if not NCT_ID.match(nct):
        raise InputError(f"nct_id {nct!r} is not an NCT id (NCT followed by 8 digits)", file=file,
                         field="clinical_study/id_info/nct_id")
    saved = report.file, report.record
    report.file, report.record = file, nct
    try:
        reader = _XmlRuleReader(root, report)
        doc: dict[str, Any] = {}
        reader.apply(spec["rules"], root, doc)
        for name in spec.get("derive", []):
            get_transform(name)(doc)
        check_file_name(file, doc, report)
        reader.report_unread()
        study = codec().read(Study, doc, "", report, set())
    finally:
        report.file, report.record = saved
    return [study]


def check_file_name(file: str, doc: dict[str, Any], report: ConversionReport) -> None:
    """A file name naming another NCT id than the record's is reported (never trusted: the content
    decides). A name that is one of the record's aliases (``nct_alias``) is only noted."""
    named = _NCT_IN_NAME.findall(PurePath(file).name)
    if not named:
        return
    nct = get_in(doc, "protocolSection.identificationModule.nctId")
    aliases = get_in(doc, "protocolSection.identificationModule.nctIdAliases")
    aliases = aliases if isinstance(aliases, list) else []
    for other in named:
        if other == nct:
            continue
        if other in aliases:
            report.add(Kind.INVALID_VALUE, f"file name names {other}, an alias (nct_alias) of {nct}; "
                       f"read as {nct}", rule=f"{RULE_PREFIX}.file_name",
                       source="clinical_study/id_info/nct_alias", severity=Severity.INFO)
        else:
            report.add(Kind.INVALID_VALUE, f"file name names {other} but the record is {nct} "
                       "(not one of its aliases); read as the content says", rule=f"{RULE_PREFIX}.file_name",
                       source="clinical_study/id_info/nct_id")


class _XmlRuleReader:
    """Applies the rule list to a record and remembers what it read."""

    def __init__(self, root: Any, report: ConversionReport) -> None:
        self.root = root
        self.tree = root.getroottree()
        self.report = report
        self.read_elements: set[Any] = set()
        self.read_attrs: set[tuple[Any, str]] = set()
        self.read_subtrees: set[Any] = set()
        self.lossy_reported: set[str] = set()

    def path(self, el: Any, attr: str | None = None) -> str:
        p = self.tree.getpath(el).lstrip("/")
        return f"{p}/@{attr}" if attr else p

    def apply(self, rules: list[dict[str, Any]], ctx: Any, target: dict[str, Any]) -> None:
        for rule in rules:
            xml = rule["xml"]
            elem_path, _, attr = xml.partition("@")
            elem_path = elem_path.rstrip("/")
            elements = [ctx] if elem_path in ("", ".") else ctx.findall(elem_path)
            if attr:
                elements = [e for e in elements if attr in e.attrib]
            if not elements:
                continue
            if "rules" in rule:
                self.apply_group(rule, elements, target)
            elif "check" in rule:
                self.apply_check(rule, elements, ctx)
            elif rule.get("opaque"):
                for el in elements:
                    self.read_subtrees.add(el)
                    put(target, rule["to"], xml_to_dict(el))
                self.declare_lossy(rule, elements[0])
            elif "lossy" in rule:
                self.apply_gap(rule, elements, attr or None)
            else:
                self.apply_value(rule, elements, attr or None, target)

    def apply_group(self, rule: dict[str, Any], elements: list[Any], target: dict[str, Any]) -> None:
        for el in elements:
            self.read_elements.add(el)
            item: dict[str, Any] = {}
            self.apply(rule["rules"], el, item)
            if item:
                put(target, rule["to"], item)

    def apply_value(self, rule: dict[str, Any], elements: list[Any], attr: str | None,
                    target: dict[str, Any]) -> None:
        to = rule["to"]
        for i, el in enumerate(elements):
            if attr:
                self.read_attrs.add((el, attr))
                raw: Any = el.attrib[attr]
            elif "reads" in rule:
                raw = el
                for child in el:
                    if child.tag in rule["reads"]:
                        self.read_elements.add(child)
            else:
                self.read_elements.add(el)
                raw = el.text or ""
            source = self.path(el, attr)
            value = convert_value(raw, rule, report=self.report, source=source)
            if value is None:
                continue
            if rule.get("fallback") and is_set(target, to):
                if get_in(target, to) != value:
                    self.report.add(Kind.INVALID_VALUE, f"pre-2018 element disagrees with its "
                                    f"replacement ({to}); the replacement is kept", rule=rule["id"],
                                    source=source, target=to, value=raw)
                continue
            if i > 0 and not to.endswith("[]"):
                self.report.add(Kind.INVALID_VALUE, "element repeated where one is allowed; "
                                "the first is kept", rule=rule["id"], source=source, target=to)
                continue
            put(target, to, value)

    def apply_gap(self, rule: dict[str, Any], elements: list[Any], attr: str | None) -> None:
        for el in elements:
            if attr:
                self.read_attrs.add((el, attr))
                present = True
            elif "transform" in rule:  # a gap inside a value (one part of a string)
                self.read_elements.add(el)
                present = convert_value(el.text or "", rule, report=self.report,
                                        source=self.path(el)) is not None
            else:
                self.read_subtrees.add(el)
                present = True
            if present:
                self.declare_lossy(rule, el, attr)

    def declare_lossy(self, rule: dict[str, Any], el: Any, attr: str | None = None) -> None:
        if rule["id"] in self.lossy_reported:
            return  # once per rule and record: a gap repeated in every outcome is one fact
        self.lossy_reported.add(rule["id"])
        self.report.lossy(_INDEX.sub("", self.path(el, attr)), rule["lossy"], rule=rule["id"],
                          target=rule.get("to"))

    def apply_check(self, rule: dict[str, Any], elements: list[Any], ctx: Any) -> None:
        kind, _, other = rule["check"].partition(":")
        for el in elements:
            self.read_elements.add(el)
            text = (el.text or "").strip()
            if kind == "count":
                count = len(ctx.findall(other))
                if text != str(count):
                    self.report.add(Kind.INVALID_VALUE, f"says {text!r} but the record lists {count} "
                                    f"<{other}>; the list is kept", rule=rule["id"],
                                    source=self.path(el), value=text)
            elif kind == "in":
                known = {(e.text or "").strip() for e in ctx.findall(other)}
                if text not in known:
                    self.report.lossy(self.path(el), "country listed without a location; API v2 "
                                      "has no separate country list", rule=rule["id"], value=text)

    def report_unread(self) -> None:
        """Every element or attribute no rule read, once per generic XML path."""
        seen: set[str] = set()

        def note(path: str) -> None:
            generic = _INDEX.sub("", path)
            if generic not in seen:
                seen.add(generic)
                self.report.unmapped_source(generic, rule=f"{RULE_PREFIX}.unmapped")

        def walk(el: Any) -> None:
            if el in self.read_subtrees:
                return
            for attr in el.attrib:
                if (el, attr) not in self.read_attrs:
                    note(self.path(el, attr))
            children = [c for c in el if isinstance(c.tag, str)]
            if not children and el not in self.read_elements:
                note(self.path(el))
            for child in children:
                walk(child)

        walk(self.root)


def xml_to_dict(el: Any) -> Any:
    """An element as plain JSON: text leaves, ``@attr`` keys, repeated children as lists."""
    out: dict[str, Any] = {f"@{k}": v for k, v in el.attrib.items()}
    children = [c for c in el if isinstance(c.tag, str)]
    text = (el.text or "").strip()
    if not children:
        if not out:
            return text
        if text:
            out["#text"] = text
        return out
    counts: dict[str, int] = {}
    for c in children:
        counts[c.tag] = counts.get(c.tag, 0) + 1
    for c in children:
        val = xml_to_dict(c)
        if counts[c.tag] > 1:
            out.setdefault(c.tag, []).append(val)
        else:
            out[c.tag] = val
    return out


def parse_legacy_xml_file(path: str) -> Any:
    """Convenience for scripts and tests: a file through the safe parser."""
    from pathlib import Path

    from ..safeio import parse_xml, read_bytes
    return parse_xml(read_bytes(Path(path)), file=path)


__all__ = ["read_legacy_xml", "xml_to_dict", "parse_legacy_xml_file"]
