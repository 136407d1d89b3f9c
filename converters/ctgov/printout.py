"""ClinicalTrials.gov record printouts (text saved from a record page or a record viewer) -> Study.

Two layouts are recognised (``mappings/ctgov_printout.yaml`` holds their labels and targets):
``record_page`` (a summary card, then numbered sections of label/value lines) and
``labelled_lines`` (``Label: value`` lines). The reader builds CT.gov API v2 JSON shape and hands it
to the v2 table codec. A partial printout is read as far as it goes; lines no rule reads are
reported ``unmapped-source`` with their section, and a cut-off end is reported ``missing``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..model import Study
from ..report import ConversionReport, Kind
from ..specs import get_transform, load_spec, transform
from .rules import convert_value, get_in, is_set, put
from .v2 import codec

SPEC = "ctgov_printout.yaml"
RULE_PREFIX = "pr"

#: v2 modules a complete printout carries; reported missing when a cut-off printout lacks them.
EXPECTED_MODULES = ("conditionsModule", "designModule", "armsInterventionsModule", "outcomesModule",
                    "eligibilityModule", "contactsLocationsModule")


@transform("infer_single_arm_links")
def infer_single_arm_links(doc: dict[str, Any], report: ConversionReport) -> None:
    """A page that lists one arm and interventions without arm labels: every intervention belongs
    to that arm (CT.gov requires each intervention to be given in an arm). Reported as inferred."""
    module = get_in(doc, "protocolSection.armsInterventionsModule")
    if not isinstance(module, dict):
        return
    arms = module.get("armGroups", [])
    if len(arms) != 1 or not arms[0].get("label"):
        return
    for i, iv in enumerate(module.get("interventions", [])):
        if not iv.get("armGroupLabels"):
            iv["armGroupLabels"] = [arms[0]["label"]]
            report.add(Kind.INFERRED, "the page lists one arm and does not link interventions to "
                       "arms; the intervention is linked to that arm", rule=f"{RULE_PREFIX}.single_arm",
                       target=f"protocolSection.armsInterventionsModule.interventions[{i}].armGroupLabels")


def detect_layout(text: str) -> str | None:
    layouts = load_spec(SPEC)["layouts"]
    lines = {ln.strip() for ln in text.splitlines()}
    if all(marker in lines for marker in layouts["record_page"]["detect"]):
        return "record_page"
    pattern = re.compile(layouts["labelled_lines"]["detect_regex"], re.M)
    if pattern.search(text):
        return "labelled_lines"
    return None


def is_printout(text: str) -> bool:
    """True when the text is one of the known record printout layouts."""
    return detect_layout(text) is not None


def read_printout(text: str, *, file: str, report: ConversionReport) -> list[Study]:
    layout = detect_layout(text)
    if layout is None:
        raise InputError("text is not a known ClinicalTrials.gov record printout layout", file=file)
    spec = load_spec(SPEC)["layouts"][layout]
    saved = report.file, report.record
    report.file = file
    try:
        doc: dict[str, Any] = {}
        reader = _PageReader if layout == "record_page" else _LinesReader
        reader(spec, report, layout).read(text, doc)
        for name in spec.get("derive", []):
            get_transform(name)(doc, report)
        get_transform("derive_intervention_names")(doc)
        nct = get_in(doc, "protocolSection.identificationModule.nctId")
        if not isinstance(nct, str):
            raise InputError("the printout gives no NCT id", file=file)
        report.record = nct
        # issues raised before the id was known belong to the record
        report.issues[:] = [replace(i, record=nct) if i.file == file and i.record is None else i
                            for i in report.issues]
        study = codec().read(Study, doc, "", report, set())
    finally:
        report.file, report.record = saved
    return [study]


class _Reader:
    def __init__(self, spec: dict[str, Any], report: ConversionReport, layout: str) -> None:
        self.spec = spec
        self.report = report
        self.layout = layout

    def apply(self, rules: Any, raw: str, target: dict[str, Any], source: str) -> None:
        for rule in rules if isinstance(rules, list) else [rules]:
            if "skip" in rule:
                continue
            value = convert_value(raw, rule, report=self.report, source=source)
            if value is None:
                continue
            to = rule["to"]
            if "item" in rule:
                value = [{rule["item"]: v} for v in (value if isinstance(value, list) else [value])]
            if rule.get("fallback") and is_set(target, to):
                continue
            if not to.endswith("[]") and is_set(target, to) and get_in(target, to) != value:
                self.report.add(Kind.INVALID_VALUE, "label repeated with another value; the first "
                                "is kept", rule=rule.get("id"), source=source, target=to)
                continue
            if rule.get("inferred"):
                self.report.add(Kind.INFERRED, rule["inferred"], rule=rule.get("id"), source=source,
                                target=to)
            put(target, to, value)

    def unread(self, where: str) -> None:
        self.report.unmapped_source(where, rule=f"{RULE_PREFIX}.{self.layout}.unmapped")


class _PageReader(_Reader):
    """The record page: summary card, then label line / value line(s) in numbered sections."""

    def read(self, text: str, doc: dict[str, Any]) -> None:
        lines = text.splitlines()
        summary = self.spec["summary"]
        try:
            end = next(i for i, ln in enumerate(lines) if ln.strip() == summary["end"])
        except StopIteration:
            end = 0
            self.report.add(Kind.MISSING, f"no '{summary['end']}' part: the page is cut short",
                            source=f"printout:{summary['end']}")
        self.read_summary(lines[:end], doc)
        self.read_sections(lines[end:], doc)

    def read_summary(self, lines: list[str], doc: dict[str, Any]) -> None:
        crit = self.spec["summary"]["criteria"]
        stripped = [ln.strip() for ln in lines]
        if crit["start"] not in stripped:
            return
        start = stripped.index(crit["start"]) + 1
        end = stripped.index(crit["end"]) if crit["end"] in stripped[start:] else len(lines)
        block = [ln for ln in lines[start:end]]
        first = next((i for i, ln in enumerate(block) if ln.strip()), None)
        if first is None:
            return
        source = f"printout:summary/{crit['start']}"
        self.apply(self.spec["summary"]["age_line"], block[first], doc, source)
        self.apply(self.spec["summary"]["criteria_rule"], "\n".join(block[first + 1:]), doc, source)

    def read_sections(self, lines: list[str], doc: dict[str, Any]) -> None:
        sections: dict[str, Any] = self.spec["sections"]
        chrome = set(self.spec["chrome"])
        groups = {g["id"]: g for s in sections.values() for g in s.get("groups", [])}
        current: dict[str, dict[str, Any] | None] = {gid: None for gid in groups}
        section: str | None = None
        label: str | None = None
        values: list[str] = []

        def labels(sec: str | None) -> dict[str, tuple[Any, dict[str, Any] | None]]:
            if sec is None:
                return {}
            out: dict[str, tuple[Any, dict[str, Any] | None]] = {
                k: (v, None) for k, v in sections[sec].get("fields", {}).items()}
            for g in sections[sec].get("groups", []):
                out.update({k: (v, g) for k, v in g["fields"].items()})
            return out

        def flush() -> None:
            nonlocal label, values
            if label is None:
                return
            rules, group = labels(section)[label]
            source = f"printout:{section}/{label}"
            raw = "\n".join(values)
            if group is None:
                self.apply(rules, raw, doc, source)
            else:
                item = current[group["id"]]
                first_rule = rules[0] if isinstance(rules, list) else rules
                if item is None or label == group["start"] and first_rule.get("to") in _flat(item):
                    item = dict(group.get("const", {}))
                    current[group["id"]] = item
                    parent = current.get(group["parent"]) if "parent" in group else None
                    if "parent" in group and parent is None:
                        self.report.add(Kind.INVALID_VALUE, "contact without a facility; left out",
                                        rule=group["id"], source=source)
                    else:
                        put(parent if parent is not None else doc, group["to"], item)
                self.apply(rules, raw, item, source)
            label, values = None, []

        footer = self.spec.get("footer")
        for line in lines:
            text = line.strip()
            if footer and text == footer:
                break
            if not text or text in chrome:
                continue
            if text in sections:
                flush()
                section = text
                for g in sections[section].get("groups", []):
                    current[g["id"]] = None
                continue
            if text in labels(section):
                flush()
                label = text
                continue
            if label is not None:
                values.append(text)
            else:
                self.unread(f"printout:{section or 'start'}/{text[:60]}")
        flush()


class _LinesReader(_Reader):
    """``Label: value`` lines under plain headers; declared multi-line fields run on."""

    def read(self, text: str, doc: dict[str, Any]) -> None:
        fields: dict[str, Any] = self.spec["fields"]
        by_length = sorted(fields, key=len, reverse=True)
        skip = [re.compile(p) for p in self.spec.get("skip_regex", [])]
        headers = set(self.spec.get("headers", []))
        header = "start"
        label: str | None = None
        values: list[str] = []

        def flush() -> None:
            nonlocal label, values
            if label is not None:
                self.apply(fields[label], "\n".join(values), doc, f"printout:{header}/{label}")
            label, values = None, []

        lines = text.splitlines()
        for line in lines:
            text_line = line.rstrip()
            found = next((lab for lab in by_length if text_line.startswith(lab + ":")), None)
            if found is not None:
                flush()
                label, values = found, [text_line[len(found) + 1:].strip()]
                continue
            stripped = text_line.strip()
            if label is not None and _multiline(fields[label]) and stripped not in headers:
                values.append(stripped)
                continue
            if not stripped:
                continue
            if stripped in headers:
                flush()
                header = stripped
                continue
            if any(p.match(stripped) for p in skip):
                continue
            flush()
            unknown = re.match(r"^([^:]{1,80}):", stripped)
            self.unread(f"printout:{header}/{unknown[1] if unknown else stripped[:60]}")
        last = label
        flush()
        if last is not None and lines and lines[-1].rstrip().endswith(":") and not text.endswith("\n"):
            self.report.add(Kind.MISSING, f"the printout ends at '{last}' with no value: it is cut "
                            "short, and what follows is absent", source=f"printout:{header}/{last}",
                            rule=f"{RULE_PREFIX}.{self.layout}.truncated")
            for module in EXPECTED_MODULES:
                if not is_set(doc, f"protocolSection.{module}"):
                    self.report.add(Kind.MISSING, f"no {module} in the cut-short printout",
                                    target=f"protocolSection.{module}",
                                    rule=f"{RULE_PREFIX}.{self.layout}.truncated")


def _multiline(rules: Any) -> bool:
    return any(r.get("multiline") for r in (rules if isinstance(rules, list) else [rules]))


def _flat(item: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in item.items():
        key = f"{prefix}{k}"
        out.add(key)
        if isinstance(v, dict):
            out |= _flat(v, key + ".")
    return out
