"""Study -> SDTM trial design datasets TS, TA, TE, TV, TI (Dataset-JSON 1.1 / NDJSON / CSV / XPT).

TS rows come from the rules of ``mappings/sdtm_ts.yaml`` (transforms in :mod:`.tdm_ts_rules`);
TA/TE/TV/TI from :mod:`.tdm_design`. Columns, order and labels come from ``schemas/sdtm``; files are
written by :func:`trialbridge.sdtm.output.write_domain`.

* TSSEQ numbers the rows of each parameter 1..n; TSGRPID ties TRT/COMPTRT to their INTTYPE (``INTn``).
* TSVAL over 200 characters continues in TSVAL1, TSVAL2... (SDTMIG TS assumption), cut before a space
  so that concatenating TSVAL, TSVAL1, ... gives the value back; more than TSVAL9 is cut and reported.
* Coded values carry TSVALCD (C-code), TSVCDREF (``CDISC CT``, ``ISO 8601``, ``ISO 3166-1 alpha-3``) and TSVCDVER
  (the CT version in use: the pinned one, or the one of ``--ct FILE``).
* Round trip from SDTM: rows the model cannot hold, found by :mod:`.tdm_reader` when it read the input,
  are in ``report.extra["tdm.carry"][<study key>]`` and replace the regenerated ones here, so
  SDTM -> SDTM keeps them (declared in the report by the reader).
* What the datasets cannot carry is computed, not listed by hand: the written frames are read back into
  a Study and every model value that does not come back is reported ``lossy`` by CT.gov path (once per
  path pattern), with the reason from ``gaps`` in the spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..model import Study, iter_leaves
from ..report import ConversionReport, Kind
from ..specs import get_transform, load_spec
from . import tdm_ts_rules  # noqa: F401  (registers the ts.* transforms)
from .ct import ControlledTerminology, load_ct
from .output import write_domain
from .tdm_design import build_ta_te, build_ti, build_tv
from .tdm_ts_rules import TsRow, WriteContext

TDM_DOMAINS = ("TS", "TA", "TE", "TV", "TI")
MAX_TSVAL_PARTS = 10   # TSVAL + TSVAL1..TSVAL9 (schemas/sdtm/ts.csv)


def ts_rules() -> list[dict[str, Any]]:
    return list(load_spec("sdtm_ts.yaml")["rules"])


def studyid_of(study: Study) -> str:
    org = study.identification.org_study_id
    return (org.id if org and org.id else None) or study.identification.nct_id or study.key


def split_tsval(value: str) -> list[str]:
    parts: list[str] = []
    rest = value
    while len(rest) > 200:
        cut = rest[:200]
        pos = cut.rfind(" ")
        pos = pos if pos > 100 else 200
        parts.append(rest[:pos])
        rest = rest[pos:]
    parts.append(rest)
    return parts


def build_ts(study: Study, ct: ControlledTerminology, report: ConversionReport) -> list[dict[str, Any]]:
    key = study.key
    stype = study.design.study_type if study.design else None
    rows: list[TsRow] = []
    for rule in ts_rules():
        only = rule.get("only_study_type")
        if only and stype != only:
            continue
        ctx = WriteContext(study=study, ct=ct, report=report, key=key, rule=rule)
        rows.extend(get_transform(rule["transform"])(ctx))
    parm_ct = ct.codelist("C66738")
    name_ct = ct.codelist("C67152")
    seq: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        term = parm_ct.term(r.parmcd)
        name = name_ct.by_code(term.code) if term else None
        if name is None:
            report.add(Kind.UNMAPPED_CODE, f"TSPARMCD {r.parmcd} not in codelist C66738/C67152 of "
                       f"{ct.source}", rule=f"ts.{r.parmcd}", target="TS.TSPARMCD")
            continue
        seq[r.parmcd] = seq.get(r.parmcd, 0) + 1
        rec: dict[str, Any] = {"TSSEQ": seq[r.parmcd], "TSGRPID": r.grpid, "TSPARMCD": r.parmcd,
                               "TSPARM": name.value, "TSVALNF": r.nf, "TSVALCD": r.code,
                               "TSVCDREF": r.ref, "TSVCDVER": r.ver}
        parts = split_tsval(r.value)
        if len(parts) > MAX_TSVAL_PARTS:
            report.add(Kind.TRUNCATED, f"TS {r.parmcd} value of {len(r.value)} characters cut to "
                       f"{MAX_TSVAL_PARTS} x 200", rule=f"ts.{r.parmcd}", target="TS.TSVAL",
                       record=f"{key}/{r.parmcd}/{seq[r.parmcd]}")
            parts = parts[:MAX_TSVAL_PARTS]
        for i, part in enumerate(parts):
            rec["TSVAL" if i == 0 else f"TSVAL{i}"] = part
        out.append(rec)
    return out


def frame(rows: list[dict[str, Any]], domain: str, studyid: str) -> pd.DataFrame:
    from .metadata import load_domain
    names = load_domain(domain).names
    used = {k for r in rows for k in r}
    cols = [n for n in names if n in used or n in ("STUDYID", "DOMAIN")]
    df = pd.DataFrame([{**r, "STUDYID": studyid, "DOMAIN": domain} for r in rows], columns=cols)
    for c in cols:
        if c.startswith("TSVAL") and c[5:].isdigit():
            df[c] = df[c].fillna("")
    return df


def build_tdm(study: Study, *, ct: ControlledTerminology, report: ConversionReport) -> dict[str, pd.DataFrame]:
    """The five trial design datasets of one study as DataFrames (no carry applied)."""
    studyid = studyid_of(study)
    ta, te = build_ta_te(study, report)
    return {
        "TS": frame(build_ts(study, ct, report), "TS", studyid),
        "TA": frame(ta, "TA", studyid),
        "TE": frame(te, "TE", studyid),
        "TV": frame(build_tv(study, report), "TV", studyid),
        "TI": frame(build_ti(study, report, study.key), "TI", studyid),
    }


def _typed(df: pd.DataFrame, domain: str) -> pd.DataFrame:
    """Carried rows hold "" for missing numbers (as read); numeric columns get None back."""
    from .metadata import load_domain
    for var in load_domain(domain).variables:
        if var.type == "Num" and var.name in df.columns:
            df[var.name] = [None if v in ("", None) else v for v in df[var.name]]
    return df


def apply_carry(frames: dict[str, pd.DataFrame], carry: dict[str, Any], studyid: str) -> dict[str, pd.DataFrame]:
    out = dict(frames)
    ts_carry: dict[str, list[dict[str, Any]]] = carry.get("TS", {})
    if ts_carry:
        ts = frames["TS"]
        keep = ts[~ts["TSPARMCD"].isin(list(ts_carry))]
        extra = pd.DataFrame([r for rows in ts_carry.values() for r in rows])
        merged = pd.concat([keep, extra], ignore_index=True) if len(extra) else keep
        merged["STUDYID"], merged["DOMAIN"] = studyid, "TS"
        merged = merged.fillna("")
        merged = merged.sort_values(["TSPARMCD", "TSSEQ"], kind="stable").reset_index(drop=True)
        out["TS"] = _typed(merged, "TS")
    for dom in ("TA", "TE", "TV", "TI"):
        if dom in carry:
            df = pd.DataFrame(carry[dom])
            if len(df):
                df["STUDYID"], df["DOMAIN"] = studyid, dom
            out[dom] = _typed(df, dom)
    return out


def ctgov_pattern(model_path: str) -> str:
    """Model leaf path -> CT.gov path pattern (list indexes as ``[]``), via mappings/ctgov_v2.yaml."""
    classes = load_spec("ctgov_v2.yaml")["classes"]
    from dataclasses import is_dataclass
    from typing import get_args, get_type_hints

    from .. import model as m
    cls: Any = m.Study
    out: list[str] = []
    for part in model_path.split("."):
        name, idx = (part.split("[", 1) + [""])[:2]
        spec = classes.get(cls.__name__, {}) if cls is not None else {}
        entry = spec.get(name, name)
        seg = entry["path"] if isinstance(entry, dict) else entry
        out.append(seg + ("[]" if idx else ""))
        nxt = None
        if cls is not None and is_dataclass(cls):
            hints = get_type_hints(cls, vars(m))
            hint = hints.get(name)
            for cand in (hint, *get_args(hint)):
                for sub in (cand, *get_args(cand)):
                    if isinstance(sub, type) and is_dataclass(sub):
                        nxt = sub
        cls = nxt
    return ".".join(out)


def report_losses(study: Study, back: Study, report: ConversionReport) -> None:
    gaps: dict[str, str] = load_spec("sdtm_ts.yaml")["gaps"]
    before = dict(iter_leaves(study))
    after = dict(iter_leaves(back))
    seen: dict[str, int] = {}
    for path, value in before.items():
        if after.get(path) == value:
            continue
        pattern = ctgov_pattern(path)
        seen[pattern] = seen.get(pattern, 0) + 1
    for pattern, n in sorted(seen.items()):
        reason = next((gaps[g] for g in sorted(gaps, key=len, reverse=True) if pattern.startswith(g)),
                      "not carried by the trial design datasets")
        report.add(Kind.LOSSY, f"{reason} ({n} value{'s' if n > 1 else ''})", rule="tdm.fidelity",
                   source=pattern, target="SDTM TS/TA/TE/TV/TI")


def write_tdm(study: Study, outdir: Path, *, formats: tuple[str, ...] = ("json",),
              report: ConversionReport, ct_file: Path | None = None) -> list[Path]:
    ct = load_ct(ct_file)
    report.record = study.key
    frames = build_tdm(study, ct=ct, report=report)
    carry = report.extra.get("tdm.carry", {}).get(study.key)
    studyid = studyid_of(study)
    if carry:
        frames = apply_carry(frames, carry, studyid)
    from .tdm_reader import study_from_frames
    scratch = ConversionReport()
    back = study_from_frames({k: v for k, v in frames.items()}, report=scratch)
    report_losses(study, back, report)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for dom in TDM_DOMAINS:
        written.extend(write_domain(frames[dom], dom, outdir, formats, study_oid=studyid, report=report))
    report.outputs.extend(str(p) for p in written)
    return written
