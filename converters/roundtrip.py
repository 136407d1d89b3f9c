"""Round-trip fidelity harness: SDTM -> FHIR -> SDTM, compared value by value per domain/variable.

``run_roundtrip(input, workdir)`` converts an SDTM folder to FHIR (:mod:`trialbridge.fhir.subject_writer`),
back to SDTM with the FHIR -> SDTM engine (``trialbridge.subject.pipeline.convert_subjects``), reads both
sides with :mod:`trialbridge.sdtm.reader`, aligns records on their keys (USUBJID + --SEQ; DM on USUBJID;
SV on USUBJID + VISITNUM) and counts per variable: values equal, changed, lost (present before, empty
after). A variable whose changes or losses are named by an issue of either conversion report is
"explained". No subject values are shown unless ``include_values``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pandas as pd

from .report import ConversionReport
from .sdtm.reader import read_sdtm_folder

COMPARED = ("DM", "SV", "DS", "AE", "CM", "EX", "MH", "PR", "VS", "LB")


@dataclass
class VariableFidelity:
    domain: str
    variable: str
    values: int = 0
    equal: int = 0
    changed: int = 0
    lost: int = 0
    examples: list[tuple[Any, Any]] = field(default_factory=list)
    explained_by: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.equal / self.values if self.values else 1.0


@dataclass
class FidelityTable:
    rows: list[VariableFidelity]
    missing_domains: list[str]

    def lines(self) -> list[str]:
        out = [f"{'domain':6} {'variable':9} {'values':>7} {'equal':>7} {'changed':>7} {'lost':>6} "
               f"{'equal%':>7}  explained by"]
        for r in self.rows:
            out.append(f"{r.domain:6} {r.variable:9} {r.values:7d} {r.equal:7d} {r.changed:7d} {r.lost:6d} "
                       f"{100 * r.ratio:6.2f}%  {'; '.join(r.explained_by)[:80]}")
        for d in self.missing_domains:
            out.append(f"{d:6} (domain not produced by FHIR -> SDTM)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"variables": [{k: v for k, v in r.__dict__.items() if k != "examples" or v}
                              | {"ratio": round(r.ratio, 6)} for r in self.rows],
                "missingDomains": self.missing_domains}


def _keys(domain: str, df: pd.DataFrame) -> list[str]:
    if domain == "DM":
        return ["USUBJID"]
    if domain == "SV":
        return ["USUBJID", "VISITNUM"]
    return ["USUBJID", f"{domain}SEQ"]


def _norm(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, str):
        try:
            return round(float(v), 9) if v.strip() and v.strip()[0] in "-.0123456789" else v
        except ValueError:
            return v
    return v


def compare_domain(domain: str, a: pd.DataFrame, b: pd.DataFrame, reports: list[ConversionReport], *,
                   include_values: bool = False) -> list[VariableFidelity]:
    keys = _keys(domain, a)
    if not all(k in a.columns and k in b.columns for k in keys):
        return []
    ka = a.assign(_k=a[keys].astype(str).agg("|".join, axis=1)).drop_duplicates("_k").set_index("_k")
    kb = b.assign(_k=b[keys].astype(str).agg("|".join, axis=1)).drop_duplicates("_k").set_index("_k")
    kb = kb.reindex(ka.index)
    out = []
    for var in a.columns:
        if var in keys or var in ("STUDYID", "DOMAIN"):
            continue
        va = ka[var].map(_norm)
        vb = kb[var].map(_norm) if var in kb.columns else pd.Series([None] * len(ka), index=ka.index)
        present = va.notna()
        n = int(present.sum())
        if not n:
            continue
        eq = present & vb.notna() & (va.astype(object) == vb.astype(object))
        lost = present & vb.isna()
        fid = VariableFidelity(domain, var, n, int(eq.sum()), int((present & ~eq & ~lost).sum()), int(lost.sum()))
        if include_values:
            bad = present & ~eq
            fid.examples = list(zip(va[bad].head(3).tolist(), vb[bad].head(3).tolist(), strict=False))
        if fid.changed or fid.lost:
            for rep in reports:
                for issue in rep.issues:
                    src, tgt = issue.source or "", issue.target or ""
                    if src in (f"{domain}.{var}", var) or tgt.endswith(f"{domain}.{var}") or tgt == var:
                        fid.explained_by.append(f"{issue.kind.value}: {issue.message[:60]}")
                        break
        out.append(fid)
    return out


def run_roundtrip(input: Path, workdir: Path, *, fhir_version: str = "R5", default_tz: str | None = None,
                  include_values: bool = False) -> tuple[FidelityTable, ConversionReport, ConversionReport]:
    from .fhir.subject_writer import convert_sdtm_to_fhir
    try:
        from .subject.pipeline import convert_subjects
    except ImportError as exc:   # pragma: no cover - the FHIR -> SDTM engine is another module
        raise RuntimeError(f"FHIR -> SDTM engine not available ({exc})") from None
    fwd = ConversionReport(include_values=include_values)
    extra: dict[str, Any] = {"ndjson": True}
    if default_tz:
        extra["default_tz"] = default_tz
    fhir_dir = workdir / "fhir"
    paths = convert_sdtm_to_fhir(input, fhir_dir, options=SimpleNamespace(fhir_version=fhir_version,
                                                                           extra=extra), report=fwd)
    back = ConversionReport(include_values=include_values)
    sdtm_dir = workdir / "sdtm"
    from .pipeline import Options
    convert_subjects(paths, sdtm_dir, options=Options(fhir_version=fhir_version), report=back)
    a = read_sdtm_folder(input, datasets=set(COMPARED))
    b = read_sdtm_folder(sdtm_dir, datasets=set(COMPARED))
    rows: list[VariableFidelity] = []
    missing = []
    for dom in COMPARED:
        if dom not in a.frames:
            continue
        if dom not in b.frames:
            missing.append(dom)
            continue
        rows.extend(compare_domain(dom, a.frames[dom], b.frames[dom], [fwd, back],
                                   include_values=include_values))
    table = FidelityTable(rows, missing)
    fwd.extra["roundtrip"] = table.to_json()
    return table, fwd, back


@click.command("roundtrip")
@click.argument("input", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-w", "--workdir", type=click.Path(path_type=Path), default=Path("roundtrip-out"),
              show_default=True)
@click.option("--fhir-version", default="R5", show_default=True)
@click.option("--default-tz", default=None, help="Zone for SDTM times without one (e.g. +00:00).")
@click.option("--report-values", is_flag=True, help="Show example values (may contain subject data).")
def roundtrip_command(input: Path, workdir: Path, fhir_version: str, default_tz: str | None,
                      report_values: bool) -> None:
    """SDTM folder -> FHIR -> SDTM; print the fidelity table per domain and variable."""
    from .safeio import write_json_atomic
    table, fwd, back = run_roundtrip(input, workdir, fhir_version=fhir_version.upper(), default_tz=default_tz,
                                     include_values=report_values)
    for line in table.lines():
        click.echo(line)
    write_json_atomic(workdir / "roundtrip.json", {"fidelity": table.to_json(), "forward": fwd.to_json(),
                                                   "back": back.to_json()})
    sys.exit(0)
