"""SDTM trial design datasets (TS, TA, TE, TV, TI) -> canonical Study, one per STUDYID.

Finds and reads the dataset files through :mod:`.files` (Dataset-JSON, XPT with the Windows-1252
fallback the CDISC pilot files need, reported; CSV; when a domain is present in several forms, the first
of json, ndjson, xpt, csv is used). TS rows go through the reverse transforms of
``mappings/sdtm_ts.yaml``; TA gives the arms (ARM) and their interventions (treatment ELEMENTs that name
an intervention); TI gives the criteria text.

**Carry-through.** The model does not hold every TS parameter (ADDON, DOSE, OBJPRIM...), nor elements,
visits, criteria numbering or versions. After reading, the datasets are regenerated from the Study and
compared: every TS parameter (by TSPARMCD) and every TA/TE/TV/TI dataset that does not come out the same
(on TSVAL..., TSVALNF, TSVALCD; whole rows for the other domains) is kept verbatim in
``report.extra["tdm.carry"][<study key>]`` and reported ``lossy`` (it cannot reach CT.gov or FHIR).
:func:`trialbridge.sdtm.tdm_writer.write_tdm` puts those rows back, so SDTM -> SDTM gives back what it
read; TSSEQ/TSGRPID/TSVCDREF/TSVCDVER of regenerated parameters follow trialbridge's conventions.
"""

from __future__ import annotations

import math
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pandas as pd

from .. import model as m
from ..errors import InputError
from ..model import Study
from ..report import ConversionReport, Kind
from ..specs import get_transform, load_spec
from . import tdm_ts_rules  # noqa: F401  (registers the ts.* transforms)
from .files import find_datasets, read_dataset_file
from .tdm_design import criteria_from_ti
from .tdm_ts_rules import CTGOV_INTERVENTION_LABEL, ReadContext, tsval

TDM_DOMAINS = ("TS", "TA", "TE", "TV", "TI")
TS_COMPARE = ("TSVALNF", "TSVALCD")


# ------------------------------------------------------------------ file reading
def _clean_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def read_domain_file(path: Path, report: ConversionReport) -> pd.DataFrame:
    """One dataset file (read by :mod:`.files`) with cleaned values and upper-case column names."""
    df, _ = read_dataset_file(path, report)
    df = df.astype(object).map(_clean_value)
    df.columns = [str(c).upper() for c in df.columns]
    return df


def find_domain_files(folder: Path) -> dict[str, Path]:
    """The preferred file of each trial design dataset present, in :data:`TDM_DOMAINS` order."""
    if not folder.is_dir():
        return {}
    found = find_datasets(folder)
    return {dom: found[dom].path for dom in TDM_DOMAINS if dom in found}


def load_frames(folder: Path, report: ConversionReport) -> dict[str, pd.DataFrame]:
    files = find_domain_files(folder)
    if "TS" not in files and "TA" not in files and "TI" not in files:
        raise InputError("folder holds no TS, TA or TI dataset (ts.json/.ndjson/.xpt/.csv)", file=str(folder))
    report.inputs.extend(str(p) for p in files.values())
    return {dom: read_domain_file(p, report) for dom, p in files.items()}


# ------------------------------------------------------------------ dict -> Study
def _unwrap(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not tuple and len(args) == 1 else tp


def build(cls: Any, data: dict[str, Any]) -> Any:
    hints = get_type_hints(cls, vars(m))
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = _unwrap(hints[name])
        if get_origin(tp) is tuple:
            item = get_args(tp)[0]
            vals = value if isinstance(value, (list, tuple)) else [value]
            kwargs[name] = tuple(build(item, v) if is_dataclass(item) and isinstance(v, dict) else v
                                 for v in vals)
        elif is_dataclass(tp) and isinstance(value, dict):
            kwargs[name] = build(tp, value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# ------------------------------------------------------------------ frames -> Study
def _records(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    if df is None or not len(df):
        return []
    return [{k: _clean_value(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def study_from_frames(frames: dict[str, pd.DataFrame], *, report: ConversionReport) -> Study:
    ts = _records(frames.get("TS"))
    by_parm: dict[str, list[dict[str, Any]]] = {}
    for r in ts:
        by_parm.setdefault(str(r.get("TSPARMCD") or ""), []).append(r)
    for rows in by_parm.values():
        rows.sort(key=lambda r: int(r.get("TSSEQ") or 0))
    patch: dict[str, Any] = {}
    studyid = next((str(r["STUDYID"]) for d in frames.values() for r in _records(d)[:1] if r.get("STUDYID")),
                   None)
    for rule in load_spec("sdtm_ts.yaml")["rules"]:
        rows = by_parm.get(rule["tsparmcd"], [])
        if rows:
            ctx = ReadContext(patch=patch, report=report, rule=rule, all_rows=by_parm)
            get_transform(rule["reverse"])(ctx, rows)
    ctx = ReadContext(patch=patch, report=report, rule={}, all_rows=by_parm)
    # DDF: STUDYID <- orgStudyIdInfo.id. The writer falls back to the NCT id when the record has no org
    # study id, so a STUDYID equal to the NCT id (TS REGID) is not read as the sponsor's protocol id: that
    # invented orgStudyIdInfo.id = NCT id for NCT04522505, which has none.
    if studyid and studyid != (patch.get("identification") or {}).get("nct_id"):
        ctx.set("identification.org_study_id", {"id": studyid})
    _arms_from_ta(_records(frames.get("TA")), ctx)
    crit = criteria_from_ti(_records(frames.get("TI")), report)
    if crit:
        ctx.set("eligibility.criteria", crit)
    ident = patch.pop("identification", {})
    return build(Study, {"identification": ident, **patch})


def _arms_from_ta(rows: list[dict[str, Any]], ctx: ReadContext) -> None:
    if not rows:
        return
    ivs = ctx.get("arms_interventions.interventions") or []
    by_name = {iv["name"]: iv for iv in ivs}
    arms: dict[str, dict[str, Any]] = {}
    for r in rows:
        armcd = str(r.get("ARMCD") or "")
        arm = arms.setdefault(armcd, {"label": str(r.get("ARM") or armcd), "intervention_names": []})
        element = str(r.get("ELEMENT") or "")
        names = [n for n in element.split(" + ") if n in by_name] if element else []
        for n in names:
            typ = by_name[n].get("type")
            ref = f"{CTGOV_INTERVENTION_LABEL.get(typ or '', 'Other')}: {n}"
            if ref not in arm["intervention_names"]:
                arm["intervention_names"].append(ref)
            labels = by_name[n].setdefault("arm_group_labels", [])
            if arm["label"] not in labels:
                labels.append(arm["label"])
    ctx.set("arms_interventions.arm_groups", list(arms.values()))
    if ivs:
        ctx.set("arms_interventions.interventions", ivs)


# ------------------------------------------------------------------ carry-through
def _ts_key(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted((tsval(r), *(str(r.get(c) or "") for c in TS_COMPARE)) for r in rows)


def _rows_key(rows: list[dict[str, Any]], domain: str) -> list[tuple[str, ...]]:
    from .metadata import load_domain
    cols = [n for n in load_domain(domain).names if n not in ("STUDYID", "DOMAIN")]
    return [tuple(str(r.get(c) if r.get(c) is not None else "") for c in cols) for r in rows]


def compute_carry(original: dict[str, pd.DataFrame], study: Study, report: ConversionReport) -> dict[str, Any]:
    from .ct import load_ct
    from .tdm_writer import build_tdm
    regen = build_tdm(study, ct=load_ct(), report=ConversionReport())
    carry: dict[str, Any] = {}
    orig_ts: dict[str, list[dict[str, Any]]] = {}
    for r in _records(original.get("TS")):
        orig_ts.setdefault(str(r.get("TSPARMCD") or ""), []).append(r)
    new_ts: dict[str, list[dict[str, Any]]] = {}
    for r in _records(regen["TS"]):
        new_ts.setdefault(str(r["TSPARMCD"]), []).append(r)
    ts_carry: dict[str, list[dict[str, Any]]] = {}
    if "TS" in original:
        for parm in sorted(set(orig_ts) | set(new_ts)):
            if _ts_key(orig_ts.get(parm, [])) != _ts_key(new_ts.get(parm, [])):
                rows = [{k: v for k, v in r.items() if k not in ("STUDYID", "DOMAIN")}
                        for r in orig_ts.get(parm, [])]
                ts_carry[parm] = rows
                what = "not held by the Study model" if parm in orig_ts else "absent from the input"
                report.add(Kind.LOSSY, f"TS parameter {parm} is {what} in the form read; carried verbatim "
                           "to SDTM outputs of this run only", rule="tdm.carry", source=f"TS.{parm}",
                           target="Study")
    if ts_carry:
        carry["TS"] = ts_carry
    for dom in ("TA", "TE", "TV", "TI"):
        if dom not in original:
            continue
        rows = [{k: v for k, v in r.items() if k not in ("STUDYID", "DOMAIN")} for r in _records(original[dom])]
        if _rows_key(rows, dom) != _rows_key(_records(regen[dom]), dom):
            carry[dom] = rows
            report.add(Kind.LOSSY, f"{dom} rows cannot be rebuilt from the Study model (elements, visits, "
                       "codes or criteria versions it does not hold); carried verbatim to SDTM outputs of "
                       "this run only", rule="tdm.carry", source=dom, target="Study")
    return carry


def read_tdm_folder(folder: Path, *, report: ConversionReport) -> list[Study]:
    frames = load_frames(Path(folder), report)
    ids: list[str] = []
    for df in frames.values():
        if "STUDYID" in df.columns:
            ids.extend(str(s) for s in df["STUDYID"].unique() if str(s) not in ids)
    studies: list[Study] = []
    for sid in ids or [""]:
        sub = {d: (df[df["STUDYID"].astype(str) == sid].reset_index(drop=True) if "STUDYID" in df.columns
                   else df) for d, df in frames.items()}
        report.record = sid or None
        study = study_from_frames(sub, report=report)
        report.record = study.key
        carry = compute_carry(sub, study, report)
        if carry:
            report.extra.setdefault("tdm.carry", {})[study.key] = carry
        studies.append(study)
    report.record = None
    return studies
