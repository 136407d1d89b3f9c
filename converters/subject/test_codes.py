"""LOINC -> --TESTCD tables for LB and VS, per run: the CDISC table, the project's supplement, and the
user's own decisions (``--test-codes FILE``).

A LOINC the CDISC LOINC-to-LB table (or ``loinc_to_vs.csv``) does not list is reported and its
Observation not converted: the converter never guesses a test code (rule lb.LBTESTCD). Two sources
may fill that gap, each a *declared* decision, each reported once per LOINC it is used for:

* ``mappings/codes/loinc_to_lb_extra.csv``: rows the project adds where the CDISC table is silent and
  an exact CDISC term exists (each row says why); it never overrides a CDISC row.
* the user's file (a data manager's sponsor decisions, e.g. "our anti-dsDNA assay is an IgG ELISA"):
  CSV with the columns ``domain,loinc,testcd`` and optionally ``spec,method,category,reason``. Every
  ``testcd`` must be a term of the CDISC codelist ``LBTESTCD``/``VSTESTCD`` of the CT in use (--TEST is
  that term's test name), ``spec`` a term of SPECTYPE and ``method`` of METHOD; a bad row stops the run
  (file, row and field named). A user row wins over the CDISC and project rows of the same LOINC.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..report import Kind
from ..sdtm.ct import pinned_ct
from ..specs import load_table

COLUMNS = ("domain", "loinc", "testcd", "spec", "method", "category", "reason")
REQUIRED = ("domain", "loinc", "testcd")
DOMAINS = ("LB", "VS")
MAX_BYTES = 5_000_000


def load_test_codes(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """The user's table: domain -> LOINC -> a row shaped like the CDISC table's rows
    (``target_code``, ``LBTEST``/``VSTEST``, ``LBSPEC``, ``LBMETHOD``, ``category``, ``origin``)."""
    name = path.name
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UsageError(f"test-code table larger than {MAX_BYTES // 1_000_000} MB", file=name)
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read the test-code table ({exc.strerror})", file=name) from None
    except UnicodeDecodeError:
        raise UsageError("the test-code table is not UTF-8 text", file=name) from None
    records = _records(text)
    header = [h.strip() for h in next(records, [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UsageError(f"the test-code table needs the columns {', '.join(REQUIRED)} "
                         f"(missing: {', '.join(missing)})", file=name)
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise UsageError(f"unknown column(s) {', '.join(unknown)} (allowed: {', '.join(COLUMNS)})", file=name)
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise UsageError(f"column(s) named twice: {', '.join(twice)}", file=name)
    ct = pinned_ct()
    out: dict[str, dict[str, dict[str, str]]] = {d: {} for d in DOMAINS}
    for n, values in enumerate(records, start=1):
        where = f"row {n}"
        if len(values) > len(header):
            raise UsageError(f"{len(values)} values for {len(header)} columns", file=name, record=where)
        row = {k: v.strip() for k, v in zip(header, values, strict=False)}
        for col in REQUIRED:
            if not row.get(col):
                raise UsageError("empty value", file=name, record=where, field=col)
        d = row["domain"].upper()
        if d not in DOMAINS:
            raise UsageError(f"domain {row['domain']!r} is not LB or VS", file=name, record=where, field="domain")
        loinc = row["loinc"]
        if loinc in out[d]:
            raise UsageError(f"LOINC {loinc} is listed twice for {d}", file=name, record=where, field="loinc")
        term = ct.term(f"{d}TESTCD", row["testcd"])
        if term is None:
            raise UsageError(f"{row['testcd']!r} is not a term of the CDISC codelist {d}TESTCD "
                             f"({ct.source})", file=name, record=where, field="testcd")
        test = ct.codelist(f"{d}TEST").by_code(term.code)
        spec, method = row.get("spec", ""), row.get("method", "")
        if spec and d == "LB" and not ct.is_valid("SPECTYPE", spec):
            raise UsageError(f"{spec!r} is not a term of the CDISC codelist SPECTYPE", file=name,
                             record=where, field="spec")
        if spec and d == "VS":
            raise UsageError("VS has no specimen (spec is for LB rows)", file=name, record=where, field="spec")
        if method and not ct.is_valid("METHOD", method):
            raise UsageError(f"{method!r} is not a term of the CDISC codelist METHOD", file=name,
                             record=where, field="method")
        out[d][loinc] = {"source_code": loinc, "target_code": term.value,
                         f"{d}TEST": test.value if test is not None else term.preferred,
                         "LBSPEC": spec, "LBMETHOD": method, "VSPOS": "", "VSLOC": "", "loinc_class": "",
                         "category": row.get("category", ""), "origin": f"{name} {where}",
                         "reason": row.get("reason", "")}
    return out


def _records(text: str) -> Iterator[list[str]]:
    """The CSV records of ``text``; blank lines and comment lines (``#`` first) between records are
    skipped, lines inside a quoted value are not (the csv reader pulls one line at a time, so a line
    asked for after a record was given starts the next record)."""
    start = [True]

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):   # (as the csv module reads a file: \n, \r\n, \r)
            if start[0] and (not line.strip() or line.lstrip().startswith("#")):
                continue
            start[0] = False
            yield line
    for rec in csv.reader(lines()):
        start[0] = True
        yield rec


def test_table(ctx: Any, domain: str, base: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """``base`` (the CDISC table with the project supplement) with the user's rows for ``domain`` on
    top; built once per run."""
    user = (getattr(ctx, "test_codes", None) or {}).get(domain)
    if not user:
        return base
    cache: dict[str, dict[str, dict[str, str]]] = ctx.test_tables
    if domain not in cache:
        merged = dict(base)
        for loinc, row in user.items():
            changed = _changes(domain, base[loinc], row) if loinc in base else []
            if changed:
                what = ", ".join(f"{var} {new or '(none)'} instead of {old or '(none)'}" for var, new, old in changed)
                ctx.once(f"test-codes-override:{domain}:{loinc}", Kind.INFERRED,
                         f"LOINC {loinc}: {what} of the CDISC table, from {row['origin']} (the user's row replaces "
                         "the CDISC row)",
                         rule=f"{domain.lower()}.{domain}TESTCD", source="Observation.code",
                         target=", ".join(var for var, _, _ in changed))
            merged[loinc] = row
        cache[domain] = merged
    return cache[domain]


#: per domain, what a table row gives besides --TESTCD/--TEST: (row key, variable)
SUPPLIED = {"LB": (("LBSPEC", "LBSPEC"), ("LBMETHOD", "LBMETHOD"), ("category", "LBCAT"), ("loinc_class", "LBCAT")),
            "VS": (("VSPOS", "VSPOS"), ("VSLOC", "VSLOC"))}


def _changes(domain: str, cdisc: dict[str, str], user: dict[str, str]) -> list[tuple[str, str, str]]:
    """(variable, user's value, CDISC row's value) for each variable the user's row gives otherwise
    than the CDISC row it replaces: --TESTCD and what the map takes from the row (LBSPEC, LBMETHOD,
    LBCAT as lb.map_lb derives it; VSPOS, VSLOC pre-coordinated in the LOINC)."""
    from .domains.dm import code_table
    lbcat = code_table("lbcat") if domain == "LB" else {}

    def value(row: dict[str, str], key: str) -> str:
        if key == "LBCAT":
            return row.get("category") or lbcat.get(row.get("loinc_class") or "") or ""
        return row.get(key) or ""
    keys = ["target_code", *(("LBSPEC", "LBMETHOD", "LBCAT") if domain == "LB" else ("VSPOS", "VSLOC"))]
    return [(f"{domain}TESTCD" if k == "target_code" else k, value(user, k), value(cdisc, k))
            for k in keys if value(user, k) != value(cdisc, k)]


def note_used(ctx: Any, domain: str, loincs: list[Any], ncit_only: list[Any], table: dict[str, dict[str, str]]) -> None:
    """Once per LOINC converted with a row that is not the CDISC table's: where the row came from.
    ``loincs``: LOINCs of which some row took --TESTCD from the table; ``ncit_only``: LOINCs whose rows
    all took --TESTCD from an NCIt coding (rule --.TESTCD): reported only for what the row still gave
    them (specimen, method, category; VS position, location), and never as the --TESTCD's source."""
    for c in loincs:
        row = table.get(c) if isinstance(c, str) else None
        if row is None or not row.get("origin"):
            continue
        origin = row["origin"]
        why = f" ({row['reason']})" if row.get("reason") else ""
        ctx.once(f"test-codes-used:{domain}:{c}", Kind.INFERRED,
                 f"LOINC {c} -> {domain}TESTCD {row['target_code']}: from {origin}, not the CDISC LOINC table{why}",
                 rule=f"{domain.lower()}.{domain}TESTCD", source="Observation.code", target=f"{domain}TESTCD")
    for c in ncit_only:
        row = table.get(c) if isinstance(c, str) else None
        if row is None or not row.get("origin"):
            continue
        gave = list(dict.fromkeys(var for key, var in SUPPLIED[domain] if row.get(key)))
        if not gave:
            continue
        why = f" ({row['reason']})" if row.get("reason") else ""
        ctx.once(f"test-codes-used-ncit:{domain}:{c}", Kind.INFERRED,
                 f"LOINC {c}: {domain}TESTCD from the NCIt coding; {', '.join(gave)} from {row['origin']}, not the "
                 f"CDISC LOINC table{why}", rule=f"{domain.lower()}.{domain}TESTCD", source="Observation.code",
                 target=", ".join(gave))


@cache
def cdisc_lb_rows() -> tuple[tuple[dict[str, str], ...], dict[str, tuple[tuple[str, str, str], ...]]]:
    """The CDISC LOINC-to-LB table's rows checked against the pinned CT (rule lb.LBTESTCD), and per
    LOINC what the check changed, as (kind, target, message) to report once per LOINC met.

    The document predates CT 2025-03-28 and is not always its terms: LBTESTCD MCP1 is "Monocyte
    Chemotactic Protein 1" in the CT, the document's row for LOINC 33647-9 says "Monoclonal
    Protein/Total Protein" (MONOPTPT); MNMTN, LKM1AB, RF, ... are no LBTESTCD terms at all; LBSPEC
    MULTIPLE is no SPECTYPE term. A row keeps its LBTESTCD when the CT gives that code the row's
    LBTEST (--TEST then the CT's exact text); else it takes the CT term whose test name is the row's
    LBTEST (reported, inferred); else it is set aside (its LOINC is then unmapped, reported). A LBSPEC
    or LBMETHOD that is no term of SPECTYPE/METHOD is left empty (reported, lossy)."""
    ct = pinned_ct()
    testcd, test = ct.codelist("LBTESTCD"), ct.codelist("LBTEST")
    by_name = {t.value: t for t in test.terms.values()}
    kept: list[dict[str, str]] = []
    notes: dict[str, list[tuple[str, str, str]]] = {}
    for r in load_table("codes/loinc_to_lb.csv"):
        loinc, code, name = r["source_code"], r["target_code"], " ".join(r["LBTEST"].split())
        row = dict(r)
        note = notes.setdefault(loinc, []) if r["preferred"] == "Y" else []
        term = ct.term("LBTESTCD", code)
        ct_name = test.by_code(term.code) if term is not None else None
        if ct_name is not None and ct_name.value == name:
            row["LBTEST"] = ct_name.value
        else:
            alt = by_name.get(name)
            alt_code = testcd.by_code(alt.code) if alt is not None else None
            table_says = (f"the CDISC LOINC-to-LB table gives LBTESTCD {code} ({r['LBTEST']!r}), "
                          + (f"which is {ct_name.value!r} in CT {ct.version}" if ct_name is not None
                             else f"not a term of codelist LBTESTCD in CT {ct.version}"))
            if alt is None or alt_code is None:
                note.append((Kind.UNMAPPED_CODE.value, "LBTESTCD",
                             f"LOINC {loinc}: {table_says}, and no CT test is named {name!r}: its Observations "
                             "are not converted (a decision can be given with --test-codes)"))
                continue
            row["target_code"], row["LBTEST"] = alt_code.value, alt.value
            note.append((Kind.INFERRED.value, "LBTESTCD, LBTEST",
                         f"LOINC {loinc} -> LBTESTCD {alt_code.value} ({alt.value!r}), the CT term of the table's "
                         f"test name: {table_says}"))
        for var, codelist in (("LBSPEC", "SPECTYPE"), ("LBMETHOD", "METHOD")):
            if row[var] and not ct.is_valid(codelist, row[var]):
                note.append((Kind.LOSSY.value, var,
                             f"LOINC {loinc}: the CDISC LOINC-to-LB table's {var} {row[var]} is not a term of "
                             f"codelist {codelist} in CT {ct.version}: {var} left empty"))
                row[var] = ""
        kept.append(row)
    return tuple(kept), {k: tuple(v) for k, v in notes.items() if v}


def note_cdisc_lb(ctx: Any, loincs: Any) -> None:
    """Report, once per LOINC among ``loincs`` (the LOINCs of a chunk), what :func:`cdisc_lb_rows`
    changed in its CDISC row; not for a LOINC the user's --test-codes row decides."""
    notes = cdisc_lb_rows()[1]
    user = (getattr(ctx, "test_codes", None) or {}).get("LB") or {}
    for c in pd.unique(np.asarray(loincs, dtype=object)):
        if not isinstance(c, str) or c not in notes or c in user:
            continue
        for i, (kind, target, message) in enumerate(notes[c]):
            ctx.once(f"lb-cdisc-ct:{c}:{i}", Kind(kind), message, rule="lb.LBTESTCD",
                     source="Observation.code", target=target)
