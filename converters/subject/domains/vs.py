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
from ..base import Ctx, Distinct, DomainPlugin, register_domain
from ._findings import accept_vs, ct_term, ct_values, extract_observation, extract_observation_columns, map_findings


@cache
def loinc_vs() -> dict[str, dict[str, str]]:
    return {r["source_code"]: r for r in load_table("codes/loinc_to_vs.csv")}


@cache
def vs_unit_override() -> dict[tuple[str, str], str]:
    return {(r["VSTESTCD"], r["source_code"]): r["target_code"] for r in load_table("codes/vs_units.csv")}


def map_vs(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = loinc_vs()
    loinc = cols["_loinc"].astype("object")
    # lookups once per distinct code, each code column factorised once
    codes = Distinct(loinc)
    ncits = Distinct(cols["_ncit"].astype("object"))
    hit = codes.map(lambda c: table.get(c) if isinstance(c, str) else None)
    # an NCIt coding of a VSTESTCD term is the CDISC value itself (rule vs.VSTESTCD): it wins over
    # the LOINC table; so do NCIt codings of POSITION / LOC terms over the LOINC's pre-coordination
    testcd_term, test_term = ct_term("VSTESTCD"), ct_term("VSTEST")
    by_ncit = ncits.map(testcd_term)
    bad = hit.isna() & by_ncit.isna()
    if bad.any():
        ctx.row_issues("VS", "testcd", Kind.UNMAPPED_CODE, "Observation.code has neither a LOINC in table "
                       "loinc_to_vs nor an NCIt coding of a VSTESTCD term: row not converted", cols, bad,
                       rule="vs.VSTESTCD", source="Observation.code", target="VSTESTCD", value_col="_loinc")
        cols, loinc, by_ncit = cols.loc[~bad], loinc.loc[~bad], by_ncit.loc[~bad]
        codes, ncits = codes.subset(~bad), ncits.subset(~bad)
    if not len(cols):
        return pd.DataFrame()
    # the unit override once per (VSTESTCD, unit) it lists
    testcd = codes.map(lambda c: table[c]["target_code"] if c in table else None)
    testcd = by_ncit.where(by_ncit.notna(), testcd)
    vu = cols["_vu"].astype("object")
    override = pd.Series(None, index=cols.index, dtype="object")
    for (t, u), term in vs_unit_override().items():
        override[((testcd == t) & (vu == u)).to_numpy()] = term
    out = map_findings(cols, ctx, "VS", testcd, "VSRESU", override)
    out["VSTESTCD"] = testcd
    vstest = codes.map(lambda c: table[c]["VSTEST"] if c in table else None)
    # VSTEST of the NCIt coding where that coding gave VSTESTCD
    test_ncit = ncits.map(lambda c: test_term(c) if testcd_term(c) is not None else None)
    out["VSTEST"] = test_ncit.where(test_ncit.notna(), vstest)
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
                             accept=accept_vs, map=map_vs, streamed=True,
                             dtc="VSDTC"))
