"""LB (Laboratory Test Results) from Observations of category ``laboratory`` (streamed, pass 2).

Rules: ``mappings/subject/lb.yaml``. LBTESTCD/LBTEST/LBSPEC/LBMETHOD/LBLOINC via the CDISC
LOINC-to-LB table (``mappings/codes/loinc_to_lb.csv``, preferred row per LOINC); LBCAT from the
LOINC class; LBFAST from Specimen.collection.fastingStatus; LBDTC from the Specimen collection time
when the Observation names its Specimen.
"""

from __future__ import annotations

from functools import cache

import pandas as pd

from ...report import Kind
from ...specs import load_table
from ..base import Ctx, Distinct, DomainPlugin, register_domain
from ._findings import accept_lb, ct_term, extract_observation, extract_observation_columns, map_distinct, map_findings
from .dm import code_table


@cache
def loinc_lb() -> dict[str, dict[str, str]]:
    return {r["source_code"]: r for r in load_table("codes/loinc_to_lb.csv") if r["preferred"] == "Y"}


def map_lb(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = loinc_lb()
    loinc = cols["_loinc"].astype("object")
    # every lookup below is once per distinct code (the table row is the same for all its rows),
    # each code column factorised once
    codes = Distinct(loinc)
    ncits = Distinct(cols["_ncit"].astype("object"))
    hit = codes.map(lambda c: table.get(c) if isinstance(c, str) else None)
    # an NCIt coding of an LBTESTCD term is the CDISC value itself (rule lb.LBTESTCD): it wins over
    # the LOINC table, and converts rows whose test has no LOINC
    testcd_term, test_term = ct_term("LBTESTCD"), ct_term("LBTEST")
    by_ncit = ncits.map(testcd_term)
    bad = hit.isna() & by_ncit.isna()
    if bad.any():
        ctx.row_issues("LB", "testcd", Kind.UNMAPPED_CODE, "Observation.code has neither a LOINC in the "
                       "CDISC LOINC-to-LB table nor an NCIt coding of an LBTESTCD term: row not converted",
                       cols, bad, rule="lb.LBTESTCD", source="Observation.code", target="LBTESTCD",
                       value_col="_loinc")
        cols, loinc, by_ncit = cols.loc[~bad], loinc.loc[~bad], by_ncit.loc[~bad]
        codes, ncits = codes.subset(~bad), ncits.subset(~bad)
    if not len(cols):
        return pd.DataFrame()
    testcd = codes.map(lambda c: table[c]["target_code"] if c in table else None)
    testcd = by_ncit.where(by_ncit.notna(), testcd)
    out = map_findings(cols, ctx, "LB", testcd, "UNIT")
    out["LBTESTCD"] = testcd
    lbtest = codes.map(lambda c: table[c]["LBTEST"] if c in table else None)
    # LBTEST of the NCIt coding where that coding gave LBTESTCD
    test_ncit = ncits.map(lambda c: test_term(c) if testcd_term(c) is not None else None)
    out["LBTEST"] = test_ncit.where(test_ncit.notna(), lbtest)
    out["LBLOINC"] = loinc
    out["LBSPEC"] = codes.map(lambda c: (table[c]["LBSPEC"] or None) if c in table else None)
    out["LBMETHOD"] = codes.map(lambda c: (table[c]["LBMETHOD"] or None) if c in table else None)
    lbcat = code_table("lbcat")
    # the sponsor's category (a category given as text only) first, else from the LOINC class
    by_class = codes.map(lambda c: lbcat.get(table[c]["loinc_class"]) if c in table else None)
    cat_text = cols["_cat_text"].astype("object")
    out["LBCAT"] = cat_text.where(cat_text.notna(), by_class)
    fast = cols["_fast"].astype("object")
    fast_codes = code_table("fast")
    out["LBFAST"] = map_distinct(fast, lambda c: None if c is None else fast_codes.get(c))
    badf = fast.notna() & out["LBFAST"].isna()
    if badf.any():
        ctx.row_issues("LB", "fast", Kind.UNMAPPED_CODE, "fasting status code not in table fast", cols,
                       badf, rule="lb.LBFAST", target="LBFAST", value_col="_fast")
    return out.reset_index(drop=True)


register_domain(DomainPlugin("LB", resource_types=("Observation",), extract=extract_observation,
                             extract_columns=extract_observation_columns,
                             accept=accept_lb, map=map_lb, streamed=True,
                             dtc="LBDTC"))
