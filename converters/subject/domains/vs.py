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
from ._findings import accept_vs, extract_observation, extract_observation_columns, map_distinct, map_findings


@cache
def loinc_vs() -> dict[str, dict[str, str]]:
    return {r["source_code"]: r for r in load_table("codes/loinc_to_vs.csv")}


@cache
def vs_unit_override() -> dict[tuple[str, str], str]:
    return {(r["VSTESTCD"], r["source_code"]): r["target_code"] for r in load_table("codes/vs_units.csv")}


def map_vs(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = loinc_vs()
    loinc = cols["_loinc"].astype("object")
    hit = map_distinct(loinc, lambda c: table.get(c) if isinstance(c, str) else None)
    bad = hit.isna()
    if bad.any():
        ctx.row_issues("VS", "testcd", Kind.UNMAPPED_CODE, "Observation.code has no LOINC in table "
                       "loinc_to_vs: row not converted", cols, bad, rule="vs.VSTESTCD",
                       source="Observation.code", target="VSTESTCD", value_col="_loinc")
        cols, hit, loinc = cols.loc[~bad], hit.loc[~bad], loinc.loc[~bad]
    if not len(cols):
        return pd.DataFrame()
    # lookups once per distinct LOINC code; the unit override once per (VSTESTCD, unit) it lists
    testcd = map_distinct(loinc, lambda c: table[c]["target_code"] if c in table else None)
    vu = cols["_vu"].astype("object")
    override = pd.Series(None, index=cols.index, dtype="object")
    for (t, u), term in vs_unit_override().items():
        override[((testcd == t) & (vu == u)).to_numpy()] = term
    out = map_findings(cols, ctx, "VS", testcd, "VSRESU", override)
    out["VSTESTCD"] = testcd
    out["VSTEST"] = map_distinct(loinc, lambda c: table[c]["VSTEST"] if c in table else None)
    out["VSPOS"] = map_distinct(loinc, lambda c: (table[c]["VSPOS"] or None) if c in table else None)
    out["VSLOC"] = map_distinct(loinc, lambda c: (table[c]["VSLOC"] or None) if c in table else None)
    return out.reset_index(drop=True)


register_domain(DomainPlugin("VS", resource_types=("Observation",), extract=extract_observation,
                             extract_columns=extract_observation_columns,
                             accept=accept_vs, map=map_vs, streamed=True,
                             dtc="VSDTC"))
