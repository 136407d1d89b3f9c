"""VS (Vital Signs) from Observations of category ``vital-signs`` (streamed, pass 2).

Rules: ``mappings/subject/vs.yaml``. VSTESTCD/VSTEST and pre-coordinated VSPOS/VSLOC from
``mappings/codes/loinc_to_vs.csv``; units VSRESU via the CDISC Unit-UCUM table and
``vs_units.csv``; standard units and conversion in :mod:`trialbridge.subject.units`.
"""

from __future__ import annotations

from functools import cache

import pandas as pd

from ...report import Kind
from ...specs import load_table
from ..base import Ctx, DomainPlugin, register_domain
from ..test_codes import note_used, test_table
from . import _obs_json
from ._findings import accept_vs, ct_values, extract_observation, extract_observation_columns, map_findings, resolve_test_codes


@cache
def loinc_vs() -> dict[str, dict[str, str]]:
    return {r["source_code"]: r for r in load_table("codes/loinc_to_vs.csv")}


@cache
def vs_unit_override() -> dict[tuple[str, str], str]:
    return {(r["VSTESTCD"], r["source_code"]): r["target_code"] for r in load_table("codes/vs_units.csv")}


def map_vs(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = test_table(ctx, "VS", loinc_vs())
    # lookups once per distinct code, each code column factorised once; NCIt codings of POSITION /
    # LOC terms win over the LOINC's pre-coordination (rule vs.VSTESTCD)
    tc = resolve_test_codes(cols, ctx, "VS", table, "table loinc_to_vs")
    if tc is None:
        return pd.DataFrame()
    cols, codes, testcd = tc.cols, tc.codes, tc.testcd
    note_used(ctx, "VS", codes.values, table)
    # the unit override once per (VSTESTCD, unit) it lists
    vu = cols["_vu"].astype("object")
    override = pd.Series(None, index=cols.index, dtype="object")
    for (t, u), term in vs_unit_override().items():
        override[((testcd == t) & (vu == u)).to_numpy()] = term
    out = map_findings(cols, ctx, "VS", testcd, "VSRESU", override)
    out["VSTESTCD"] = testcd
    out["VSTEST"] = tc.test
    for var, src, codelist in (("VSPOS", "_pos", "POSITION"), ("VSLOC", "_loc", "LOC")):
        def pre_coordinated(c: object, var: str = var) -> str | None:
            return (table[c][var] or None) if isinstance(c, str) and c in table else None
        pre = codes.map(pre_coordinated)
        coded = ct_values(cols[src], codelist)
        bad_c = cols[src].notna() & coded.isna()
        if bad_c.any():
            ctx.row_issues("VS", var.lower(), Kind.UNMAPPED_CODE, f"NCIt code is not a term of the CDISC CT "
                           f"codelist {codelist}", cols, bad_c, rule="vs.VSTESTCD", target=var, value_col=src)
        out[var] = coded.where(coded.notna(), pre)
    return out.reset_index(drop=True)


register_domain(DomainPlugin("VS", resource_types=("Observation",), extract=extract_observation,
                             extract_columns=extract_observation_columns,
                             line_decoder=_obs_json.line_decoder,
                             accept=accept_vs, map=map_vs, streamed=True,
                             dtc="VSDTC"))
