"""PR (Procedures) from Procedure (R4 performed[x], R5 occurrence[x]). Rules: mappings/subject/pr.yaml.

PRDECOD only from a SNOMED CT coding (the standard dictionary); a local code is reported-text only.
status not-done -> PRSTAT NOT DONE + PRREASND (statusReason); entered-in-error dropped (reported).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...report import Kind
from ..base import Ctx, DomainPlugin, ref_of, register_domain
from . import _codes as C


def extract_pr(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    start, end = C.period_or_datetime(res, "performed")
    if start is None and end is None:
        start, end = C.period_or_datetime(res, "occurrence")
    rng = res.get("performedRange") or res.get("occurrenceRange")
    if rng:
        ctx.once("pr.range", Kind.LOSSY, "performedRange/occurrenceRange is an age range, not a date: "
                 "PRSTDTC left empty", rule="pr.PRSTDTC", target="PRSTDTC")
    snomed = C.coding_in(res.get("code"), {C.SNOMED})
    indc, indc_ref = C.first_reason(res, ctx, "PRINDC")
    return {"_subject": ref_of(res.get("subject")), "_encounter": ref_of(res.get("encounter")),
            "PRSPID": C.ident_value(res), "PRTRT": C.text_of(res.get("code")),
            "PRDECOD": snomed.get("display") if snomed else None,
            "PRCAT": C.text_of(C.first(res.get("category"))),
            "_status": res.get("status"), "_reasnd": C.text_of(res.get("statusReason")),
            "_indc": indc, "_indc_ref": indc_ref,
            "_site": C.codings(C.first(res.get("bodySite"))), "_start": start, "_end": end}


def map_pr(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    cols = C.drop_rows(cols, cols["_status"].eq("entered-in-error"), ctx, "Procedure entered-in-error: dropped",
                       rule="pr.status")
    if not len(cols):
        return pd.DataFrame()
    out = C.carried_frame(cols, "VISITNUM", "VISIT")
    for v in ("PRSPID", "PRTRT", "PRDECOD", "PRCAT"):
        out[v] = cols[v]
    not_done = cols["_status"].eq("not-done")
    out["PRSTAT"] = not_done.map({True: "NOT DONE", False: None})
    out["PRREASND"] = cols["_reasnd"].where(not_done, None)
    conds = ctx.resources.get("Condition", {})
    ref_txt = cols["_indc_ref"].map(
        lambda r: (conds.get(ctx.refs.resolve(r) or "") or {}).get("_text") if isinstance(r, str) else None)
    out["PRINDC"] = cols["_indc"].where(cols["_indc"].notna(), ref_txt)
    out["PRLOC"] = C.map_codes(cols, "_site", ctx, table="fhir_body_site.csv", codelist="LOC",
                               rule="pr.PRLOC", target="PRLOC")
    out["PRSTDTC"] = C.dtc(cols, "_start", ctx, rule="pr.PRSTDTC", target="PRSTDTC")
    out["PRENDTC"] = C.dtc(cols, "_end", ctx, rule="pr.PRENDTC", target="PRENDTC")
    out = C.drop_rows(out, out["PRTRT"].isna(), ctx, "Procedure has no code text or display: PRTRT is required",
                      rule="pr.PRTRT", kind=Kind.ERROR)
    return out


register_domain(DomainPlugin("PR", resource_types=("Procedure",), extract=extract_pr, map=map_pr,
                             dtc="PRSTDTC"))
