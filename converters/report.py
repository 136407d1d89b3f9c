"""The conversion report: every unmapped field, unknown code, lossy step and invalid value.

One report per run. Each issue names the rule id, the source path, the target, and the record key
(NCT id, USUBJID/--SEQ or FHIR resource id). Subject values are only kept when the user asks
(``include_values``); otherwise the ``value`` of an issue is dropped before it is stored.
The JSON form is checked against ``schemas/report.schema.json``.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import StrictModeError


class Kind(enum.StrEnum):
    UNMAPPED_SOURCE = "unmapped-source"   # an input field that no rule read
    UNMAPPED_CODE = "unmapped-code"       # a code missing from a code table: reported, never guessed
    LOSSY = "lossy"                       # the target cannot carry the value (declared gap)
    INVALID_VALUE = "invalid-value"       # the value breaks the source format's own rules
    INFERRED = "inferred"                 # the value was derived by a documented heuristic
    TRUNCATED = "truncated"               # a value was cut to fit the target (full text kept where said)
    MISSING = "missing"                   # something the target requires is absent from the source
    ERROR = "error"                       # the record could not be converted


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Policy(enum.StrEnum):
    """One strictness policy for the whole run (pydicom's validation modes)."""

    IGNORE = "ignore"   # keep issues in the report, never fail
    WARN = "warn"       # default: errors fail the run (exit 1), warnings are reported
    RAISE = "raise"     # --strict: a warning or error stops the conversion at once


DEFAULT_SEVERITY = {
    Kind.UNMAPPED_SOURCE: Severity.WARNING,
    Kind.UNMAPPED_CODE: Severity.WARNING,
    Kind.LOSSY: Severity.INFO,
    Kind.INVALID_VALUE: Severity.WARNING,
    Kind.INFERRED: Severity.INFO,
    Kind.TRUNCATED: Severity.INFO,
    Kind.MISSING: Severity.WARNING,
    Kind.ERROR: Severity.ERROR,
}


@dataclass(frozen=True)
class Issue:
    kind: Kind
    severity: Severity
    message: str
    rule: str | None = None
    source: str | None = None       # source path (CT.gov path, FHIR path, dataset.variable)
    target: str | None = None       # target path or variable
    record: str | None = None       # NCT id, USUBJID/--SEQ, ResourceType/id
    file: str | None = None
    value: Any = None               # only kept with include_values

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "severity": self.severity.value,
                               "message": self.message}
        for key in ("rule", "source", "target", "record", "file"):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass
class ConversionReport:
    policy: Policy = Policy.WARN
    include_values: bool = False
    issues: list[Issue] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    # per-conversion extras a writer wants kept (full criterion text, fidelity tables)
    extra: dict[str, Any] = field(default_factory=dict)
    # context defaults so callers deep in a converter need not thread file/record through
    file: str | None = None
    record: str | None = None

    def add(self, kind: Kind, message: str, *, rule: str | None = None, source: str | None = None,
            target: str | None = None, record: str | None = None, file: str | None = None,
            value: Any = None, severity: Severity | None = None) -> Issue:
        issue = Issue(kind=kind, severity=severity or DEFAULT_SEVERITY[kind], message=message,
                      rule=rule, source=source, target=target,
                      record=record if record is not None else self.record,
                      file=file if file is not None else self.file,
                      value=value if self.include_values else None)
        self.issues.append(issue)
        if self.policy is Policy.RAISE and issue.severity is not Severity.INFO:
            raise StrictModeError(message, file=issue.file, record=issue.record,
                                  field=issue.source or issue.target)
        return issue

    # convenience wrappers: the common cases read as sentences at the call site
    def unmapped_source(self, source: str, **kw: Any) -> Issue:
        return self.add(Kind.UNMAPPED_SOURCE, f"no rule reads {source}", source=source, **kw)

    def unmapped_code(self, code: Any, table: str, **kw: Any) -> Issue:
        kw.setdefault("value", code)
        # the code itself is terminology, not subject data, but callers in subject paths
        # pass it through ``value`` so it is only shown with --report-values
        return self.add(Kind.UNMAPPED_CODE, f"code not in table {table}", **kw)

    def lossy(self, source: str, message: str, **kw: Any) -> Issue:
        return self.add(Kind.LOSSY, message, source=source, **kw)

    def extend(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.issues.append(issue)

    # --- summaries -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(i.kind.value for i in self.issues).items()))

    def has_errors(self, *, strict: bool = False) -> bool:
        worst = {Severity.ERROR} if not strict else {Severity.ERROR, Severity.WARNING}
        return any(i.severity in worst for i in self.issues)

    def to_json(self) -> dict[str, Any]:
        return {
            "reportVersion": "1.0",
            "policy": self.policy.value,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "counts": self.counts(),
            "issues": [i.to_json() for i in self.issues],
            **({"extra": self.extra} if self.extra else {}),
        }

    def summary_lines(self) -> list[str]:
        sev = Counter(i.severity.value for i in self.issues)
        lines = [f"{len(self.inputs)} input(s), {len(self.outputs)} output file(s); "
                 f"issues: {sev.get('error', 0)} error(s), {sev.get('warning', 0)} warning(s), "
                 f"{sev.get('info', 0)} info"]
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
        for issue in [i for i in self.issues if i.severity is Severity.ERROR][:10]:
            where = issue.file or ""
            lines.append(f"  ERROR {where} {issue.record or ''} {issue.source or ''}: {issue.message}")
        return lines
