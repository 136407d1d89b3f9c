"""Generate the "what maps to what" documentation from the specs in ``mappings/``.

``python -m trialbridge.docs`` rewrites the generated block of README.md (an overview table of every
spec) and ``docs/mapping-tables.md`` (every rule of every spec: id, source, target, cited source).
A test checks both are current, so the documentation cannot drift from the mappings.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

BEGIN = "<!-- BEGIN GENERATED: mapping overview (python -m trialbridge.docs) -->"
END = "<!-- END GENERATED: mapping overview -->"

# Which key of a rule holds its source / target, by preference; specs were written by different hands.
SOURCE_KEYS = ("source", "ctgov", "from", "sdtm")
TARGET_KEYS = ("target", "tsparmcd", "fhir", "to")


def _specs() -> list[tuple[str, dict[str, Any]]]:
    root = resources.files("trialbridge.mappings")
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith("__"):
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                data = yaml.safe_load(child.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    out.append((f"{prefix}{child.name}", data))

    walk(root, "")
    return out


def _cell(value: Any, limit: int = 160) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        text = "; ".join(f"{k}: {_cell(v, limit)}" for k, v in value.items())
    elif isinstance(value, list):
        text = ", ".join(_cell(v, limit) for v in value)
    else:
        text = str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pick(rule: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in rule:
            return rule[key]
    targets = {k: v for k, v in rule.items() if k.startswith(("r4", "r5", "R4", "R5"))}
    return targets or None


def _rules(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rules = spec.get("rules")
    if isinstance(rules, list):
        return [r for r in rules if isinstance(r, dict)]
    if isinstance(rules, dict):
        return [{"id": k, **v} if isinstance(v, dict) else {"id": k, "target": v} for k, v in rules.items()]
    return []


def _gaps(spec: dict[str, Any]) -> int:
    gaps = spec.get("gaps")
    return len(gaps) if isinstance(gaps, (list, dict)) else 0


def overview() -> str:
    lines = [BEGIN, "", "| spec | what it maps | rules | declared gaps |", "|---|---|---:|---:|"]
    for name, spec in _specs():
        what = spec.get("spec") or spec.get("domain") or ""
        if name == "ctgov_v2.yaml":
            n = sum(len(v) for v in spec.get("classes", {}).values())
        else:
            n = len(_rules(spec))
        if n == 0:
            continue
        lines.append(f"| [`mappings/{name}`](mappings/{name}) | {_cell(what)} — {_cell(spec.get('source'), 90)} "
                     f"| {n} | {_gaps(spec)} |")
    lines += ["", "Every rule, with its source, target and cited standard: "
              "[docs/mapping-tables.md](docs/mapping-tables.md).", "", END]
    return "\n".join(lines)


def full_tables() -> str:
    out = ["# What maps to what", "",
           "Generated from `mappings/` by `python -m trialbridge.docs`; do not edit by hand.", ""]
    for name, spec in _specs():
        rules = _rules(spec)
        if name == "ctgov_v2.yaml":
            out += [f"## mappings/{name}", "", _cell(spec.get("source"), 400), "",
                    "| model class.field | CT.gov path (relative to the class) |", "|---|---|"]
            for cls, fields in spec.get("classes", {}).items():
                for field, entry in fields.items():
                    path = entry if isinstance(entry, str) else entry.get("path")
                    enum = "" if isinstance(entry, str) else f" (enum {entry.get('enum')})"
                    out.append(f"| {cls}.{field} | `{path}`{enum} |")
            out.append("")
            continue
        if not rules:
            continue
        out += [f"## mappings/{name}", ""]
        if spec.get("source"):
            out += [_cell(spec.get("source"), 400), ""]
        out += ["| rule | source | target | cited source |", "|---|---|---|---|"]
        for rule in rules:
            out.append(f"| {_cell(rule.get('id'))} | {_cell(_pick(rule, SOURCE_KEYS))} | "
                       f"{_cell(_pick(rule, TARGET_KEYS))} | {_cell(rule.get('cite') or rule.get('source_ref'))} |")
        gaps = spec.get("gaps")
        if gaps:
            out += ["", "Declared gaps:", ""]
            items = gaps.items() if isinstance(gaps, dict) else enumerate(gaps)
            for key, gap in items:
                label = key if isinstance(key, str) else ""
                out.append(f"- {_cell(label)} {_cell(gap, 300)}".rstrip())
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_readme(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit("README.md has no generated mapping block markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + overview() + tail


def main(root: Path) -> int:
    readme = root / "README.md"
    readme.write_text(render_readme(readme.read_text(encoding="utf-8")), encoding="utf-8")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "mapping-tables.md").write_text(full_tables(), encoding="utf-8")
    print(f"wrote {readme} and {root / 'docs' / 'mapping-tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()))
