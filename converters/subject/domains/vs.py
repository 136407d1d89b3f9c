"""VS (Vital Signs) from Observations of category ``vital-signs`` (streamed, pass 2).

Rules: ``mappings/subject/vs.yaml``. VSTESTCD/VSTEST and pre-coordinated VSPOS/VSLOC from
``mappings/codes/loinc_to_vs.csv``; units VSRESU via the CDISC Unit-UCUM table and
``vs_units.csv``; standard units and conversion in :mod:`trialbridge.subject.units`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from ...report import Kind
from ...specs import load_table
from ..base import Ctx, DomainPlugin, register_domain
from ..test_codes import note_used, test_table
from . import _obs_json
from ._findings import (
    _Factor,
    _missing,
    _obj,
    accept_vs,
    ct_term,
    ct_values,
    extract_observation,
    extract_observation_columns,
    loincs_used,
    map_findings,
    map_findings_columns,
    resolve_test_codes,
    resolve_test_codes_columns,
    row_issues_columns,
)


@cache
def loinc_vs() -> dict[str, dict[str, str]]:
    return {r["source_code"]: r for r in load_table("codes/loinc_to_vs.csv")}


@cache
def vs_unit_override() -> dict[tuple[str, str], str]:
    return {(r["VSTESTCD"], r["source_code"]): r["target_code"] for r in load_table("codes/vs_units.csv")}


def pre_coordinated(table: dict[str, dict[str, str]], var: str) -> Any:
    """LOINC -> the VSPOS/VSLOC its table row pre-coordinates (rule vs.VSTESTCD), for both maps."""
    def one(c: object) -> str | None:
        return (table[c][var] or None) if isinstance(c, str) and c in table else None
    return one


def map_vs(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = test_table(ctx, "VS", loinc_vs())
    # lookups once per distinct code, each code column factorised once; NCIt codings of POSITION /
    # LOC terms win over the LOINC's pre-coordination (rule vs.VSTESTCD)
    tc = resolve_test_codes(cols, ctx, "VS", table, "table loinc_to_vs")
    if tc is None:
        return pd.DataFrame()
    cols, codes, testcd = tc.cols, tc.codes, tc.testcd
    note_used(ctx, "VS", *loincs_used(codes.codes, codes.values, tc.by_table), table)
    # the unit override once per (VSTESTCD, unit) it lists
    vu = cols["_vu"].astype("object")
    override = pd.Series(None, index=cols.index, dtype="object")
    for (t, u), term in vs_unit_override().items():
        override[((testcd == t) & (vu == u)).to_numpy()] = term
    out = map_findings(cols, ctx, "VS", testcd, "VSRESU", override)
    out["VSTESTCD"] = testcd
    out["VSTEST"] = tc.test
    for var, src, codelist in (("VSPOS", "_pos", "POSITION"), ("VSLOC", "_loc", "LOC")):
        pre = codes.map(pre_coordinated(table, var))
        coded = ct_values(cols[src], codelist)
        bad_c = cols[src].notna() & coded.isna()
        if bad_c.any():
            ctx.row_issues("VS", var.lower(), Kind.UNMAPPED_CODE, f"NCIt code is not a term of the CDISC CT "
                           f"codelist {codelist}", cols, bad_c, rule="vs.VSTESTCD", target=var, value_col=src)
        out[var] = coded.where(coded.notna(), pre)
    return out.reset_index(drop=True)


def map_vs_columns(cols: dict[str, Any], ctx: Ctx) -> pd.DataFrame:
    """:func:`map_vs` on the numpy columns of a chunk (the fast path; same frame, same issues)."""
    table = test_table(ctx, "VS", loinc_vs())
    tc = resolve_test_codes_columns(cols, ctx, "VS", table, "table loinc_to_vs")
    if tc is None:
        return pd.DataFrame()
    cols, codes, testcd = tc.cols, tc.codes, tc.testcd
    note_used(ctx, "VS", *loincs_used(codes.codes, codes.values, tc.by_table), table)
    out = map_findings_columns(cols, ctx, "VS", testcd, tc.tests, "VSRESU", vs_unit_override())
    out["VSTESTCD"] = _obj(testcd)
    out["VSTEST"] = _obj(tc.test)
    for var, src, codelist in (("VSPOS", "_pos", "POSITION"), ("VSLOC", "_loc", "LOC")):
        pre = codes.map(pre_coordinated(table, var))
        given = _Factor(cols[src])
        coded_t = given.table(ct_term(codelist))
        coded, coded_missing = coded_t[given.codes], _missing(coded_t)[given.codes]
        bad_c = (given.codes >= 0) & coded_missing
        if bad_c.any():
            row_issues_columns(ctx, "VS", var.lower(), Kind.UNMAPPED_CODE, f"NCIt code is not a term of the CDISC "
                               f"CT codelist {codelist}", cols, bad_c, rule="vs.VSTESTCD", target=var, value_col=src)
        out[var] = _obj(np.where(coded_missing, pre, coded))
    return pd.DataFrame(out, copy=False)


register_domain(DomainPlugin("VS", resource_types=("Observation",), extract=extract_observation,
                             extract_columns=extract_observation_columns,
                             line_decoder=_obs_json.line_decoder,
                             accept=accept_vs, map=map_vs, map_columns=map_vs_columns, streamed=True,
                             dtc="VSDTC"))
