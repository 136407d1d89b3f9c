"""LB (Laboratory Test Results) from Observations of category ``laboratory`` (streamed, pass 2).

Rules: ``mappings/subject/lb.yaml``. LBTESTCD/LBTEST/LBSPEC/LBMETHOD/LBLOINC via the CDISC
LOINC-to-LB table (``mappings/codes/loinc_to_lb.csv``, preferred row per LOINC); LBCAT from the
LOINC class; LBFAST from Specimen.collection.fastingStatus; LBDTC from the Specimen collection time
when the Observation names its Specimen.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from ...report import Kind
from ...specs import load_table
from ..base import Ctx, DomainPlugin, register_domain
from ..test_codes import cdisc_lb_rows, note_cdisc_lb, note_used, test_table
from . import _obs_json
from ._findings import (
    _all_missing,
    _Factor,
    _missing,
    _obj,
    accept_lb,
    extract_observation,
    extract_observation_columns,
    loincs_used,
    map_distinct,
    map_findings,
    map_findings_columns,
    resolve_test_codes,
    resolve_test_codes_columns,
    row_issues_columns,
)
from .dm import code_table


@cache
def loinc_lb() -> dict[str, dict[str, str]]:
    """The CDISC table's preferred row per LOINC (checked against the CT: :func:`cdisc_lb_rows`), then
    the project's supplement (LOINCs the CDISC document does not list; a supplement row never
    replaces a CDISC row)."""
    rows = {r["source_code"]: r for r in cdisc_lb_rows()[0] if r["preferred"] == "Y"}
    for r in load_table("codes/loinc_to_lb_extra.csv"):
        if r["source_code"] in rows:
            raise ValueError(f"loinc_to_lb_extra.csv: LOINC {r['source_code']} is in the CDISC table")
        rows[r["source_code"]] = r
    return rows


def row_lookups(table: dict[str, dict[str, str]]) -> dict[str, Any]:
    """LOINC -> the value its table row gives, per variable (rules lb.LBTESTCD, lb.LBCAT), for both
    maps: LBSPEC, LBMETHOD, and the category of the row (a user row's own, else from the LOINC class;
    the caller puts a category given as text only first)."""
    lbcat = code_table("lbcat")
    return {
        "LBSPEC": lambda c: (table[c]["LBSPEC"] or None) if c in table else None,
        "LBMETHOD": lambda c: (table[c]["LBMETHOD"] or None) if c in table else None,
        "LBCAT": lambda c: (table[c].get("category") or lbcat.get(table[c]["loinc_class"])) if c in table else None,
    }


def map_lb(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    table = test_table(ctx, "LB", loinc_lb())
    note_cdisc_lb(ctx, cols["_loinc"].to_numpy(dtype=object))
    # every lookup below is once per distinct code (the table row is the same for all its rows),
    # each code column factorised once
    tc = resolve_test_codes(cols, ctx, "LB", table, "the CDISC LOINC-to-LB table")
    if tc is None:
        return pd.DataFrame()
    cols, codes = tc.cols, tc.codes
    note_used(ctx, "LB", *loincs_used(codes.codes, codes.values, tc.by_table), table)
    out = map_findings(cols, ctx, "LB", tc.testcd, "UNIT")
    out["LBTESTCD"] = tc.testcd
    out["LBTEST"] = tc.test
    out["LBLOINC"] = cols["_loinc"].astype("object")
    by_row = row_lookups(table)
    out["LBSPEC"] = codes.map(by_row["LBSPEC"])
    out["LBMETHOD"] = codes.map(by_row["LBMETHOD"])
    # the sponsor's category (a category given as text only) first, else the row's
    by_class = codes.map(by_row["LBCAT"])
    cat_text = cols["_cat_text"].astype("object")
    out["LBCAT"] = cat_text.where(cat_text.notna(), by_class)
    if "_spec_type" in cols and cols["_spec_type"].notna().any():
        # rule lb.LBSPEC: the Specimen the Observation names says which specimen (Joint IG LBSPEC <- Specimen.type)
        st = cols["_spec_type"].astype("object")
        spec_codes = code_table("spectype")
        from_spec = map_distinct(st, lambda c: None if c is None else spec_codes.get(c))
        out["LBSPEC"] = from_spec.where(from_spec.notna(), out["LBSPEC"])
        bads = st.notna() & from_spec.isna()
        if bads.any():
            ctx.row_issues("LB", "spectype", Kind.UNMAPPED_CODE, "Specimen.type code not in table spectype: "
                           "LBSPEC from the LOINC", cols, bads, rule="lb.LBSPEC", target="LBSPEC",
                           value_col="_spec_type")
    fast = cols["_fast"].astype("object")
    fast_codes = code_table("fast")
    out["LBFAST"] = map_distinct(fast, lambda c: None if c is None else fast_codes.get(c))
    badf = fast.notna() & out["LBFAST"].isna()
    if badf.any():
        ctx.row_issues("LB", "fast", Kind.UNMAPPED_CODE, "fasting status code not in table fast", cols,
                       badf, rule="lb.LBFAST", target="LBFAST", value_col="_fast")
    return out.reset_index(drop=True)


def map_lb_columns(cols: dict[str, Any], ctx: Ctx) -> pd.DataFrame:
    """:func:`map_lb` on the numpy columns of a chunk (the fast path; same frame, same issues)."""
    table = test_table(ctx, "LB", loinc_lb())
    note_cdisc_lb(ctx, cols["_loinc"])
    tc = resolve_test_codes_columns(cols, ctx, "LB", table, "the CDISC LOINC-to-LB table")
    if tc is None:
        return pd.DataFrame()
    cols, codes = tc.cols, tc.codes
    note_used(ctx, "LB", *loincs_used(codes.codes, codes.values, tc.by_table), table)
    out = map_findings_columns(cols, ctx, "LB", tc.testcd, tc.tests, "UNIT")
    out["LBTESTCD"] = _obj(tc.testcd)
    out["LBTEST"] = _obj(tc.test)
    out["LBLOINC"] = _obj(cols["_loinc"])
    by_row = row_lookups(table)
    out["LBSPEC"] = _obj(codes.map(by_row["LBSPEC"]))
    out["LBMETHOD"] = _obj(codes.map(by_row["LBMETHOD"]))
    by_class = codes.map(by_row["LBCAT"])
    cat_text = cols["_cat_text"]
    out["LBCAT"] = _obj(by_class if _all_missing(cat_text) else np.where(_missing(cat_text), by_class, cat_text))
    spec_type = cols.get("_spec_type")
    if spec_type is not None and not _all_missing(spec_type):
        # rule lb.LBSPEC (as map_lb)
        st = _Factor(spec_type)
        spec_codes = code_table("spectype")
        st_t = st.table(lambda c: None if c is None else spec_codes.get(c))
        from_spec = st_t[st.codes]
        out["LBSPEC"] = _obj(np.where(_missing(from_spec), out["LBSPEC"], from_spec))
        bads = (st.codes >= 0) & _missing(st_t)[st.codes]
        if bads.any():
            row_issues_columns(ctx, "LB", "spectype", Kind.UNMAPPED_CODE, "Specimen.type code not in table "
                               "spectype: LBSPEC from the LOINC", cols, bads, rule="lb.LBSPEC", target="LBSPEC",
                               value_col="_spec_type")
    fast = _Factor(cols["_fast"])
    fast_codes = code_table("fast")
    lbfast = fast.table(lambda c: None if c is None else fast_codes.get(c))
    out["LBFAST"] = _obj(lbfast[fast.codes])
    badf = (fast.codes >= 0) & _missing(lbfast)[fast.codes]
    if badf.any():
        row_issues_columns(ctx, "LB", "fast", Kind.UNMAPPED_CODE, "fasting status code not in table fast", cols,
                           badf, rule="lb.LBFAST", target="LBFAST", value_col="_fast")
    return pd.DataFrame(out, copy=False)


register_domain(DomainPlugin("LB", resource_types=("Observation",), extract=extract_observation,
                             extract_columns=extract_observation_columns,
                             line_decoder=_obs_json.line_decoder,
                             accept=accept_lb, map=map_lb, map_columns=map_lb_columns, streamed=True,
                             dtc="LBDTC"))
