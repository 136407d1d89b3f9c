"""``trialbridge package``: lay out an eCTD-style submission folder from a folder of SDTM datasets.

Layout (FDA eCTD module 5 convention for tabulation data)::

    OUT/m5/datasets/<study>/tabulations/sdtm/<name>.xpt     XPT v5, one per dataset
    OUT/m5/datasets/<study>/tabulations/sdtm/define.xml     Define-XML 2.1, def:leaf -> the .xpt
    OUT/m5/datasets/<study>/tabulations/sdtm/split/         parts of datasets over 5 GB (FDA TCG 3.3.2)
    OUT/dataset-json/<name>.json                            Dataset-JSON 1.1 copies (not part of eCTD)
    OUT/validation/findings.json                            the validator's report on the package

Datasets keep the column metadata they were read with (names, labels, types, lengths). Text over
200 characters in a general-observation-class domain is split as SDTMIG 3.4 section 4.5.3.2 says
(the first 200 in the variable, the rest in SUPP-- records QNAM = name + 1, 2 ...; see
:func:`trialbridge.sdtm.xpt.split_long_text`) in the XPT; the Dataset-JSON copies keep the whole
text. Anything else XPT v5 cannot carry (non-ASCII text, a value over 200 bytes elsewhere) stops
the packaging with the rows and variables named: see :mod:`trialbridge.sdtm.xpt` for the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..errors import InputError, UsageError
from ..safeio import write_json_atomic
from ..sdtm.ct import ControlledTerminology
from ..sdtm.xpt import FDA_MAX_XPT_BYTES, split_long_text, split_xpt, write_xpt_table
from .checks import ValidationResult, check_findings_json, validate_folder
from .datasets import Column, Dataset, known_domain, load_folder, write_dataset_json_any, xpt_meta
from .define import as_the_xpt_holds_them, leaves_for_folder, study_info, write_define


@dataclass(frozen=True)
class PackageResult:
    root: Path
    sdtm_dir: Path
    define: Path
    files: list[Path]
    validation: ValidationResult


def package_folder(source: Path, out: Path, *, ct: ControlledTerminology | None = None,
                   core: Path | None = None, report_values: bool = False,
                   split_bytes: int = FDA_MAX_XPT_BYTES) -> PackageResult:
    datasets = load_folder(source)
    if not datasets:
        raise InputError("no datasets (.xpt, .json, .ndjson, .csv) to package", file=str(source))
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise UsageError("the submission folder must not be inside the source folder", file=str(out))
    study = study_info(datasets).study_oid
    sdtm_dir = out / "m5" / "datasets" / study.lower() / "tabulations" / "sdtm"
    define_ref = (Path("..") / sdtm_dir.relative_to(out) / "define.xml").as_posix()
    files: list[Path] = []
    packaged: dict[str, Dataset] = {}
    # the XPT: a dataset the source already holds as XPT beside its Dataset-JSON (a conversion's
    # json,xpt output) as that XPT holds it, then text over 200 characters split
    xpt_sets = dict(datasets)
    as_the_xpt_holds_them(source, xpt_sets, leaves_for_folder(source, xpt_sets))
    for name, ds in split_long_text_datasets(xpt_sets).items():
        target = sdtm_dir / f"{name.lower()}.xpt"
        meta = xpt_meta(ds)
        frame = ds.frame.reindex(columns=meta.names)
        files.append(write_xpt_table(frame, target, meta))
        files.extend(split_xpt(frame, meta, target, max_bytes=split_bytes))
        # the copy names the package's define.xml (Dataset-JSON 1.1 metaDataRef, studyOID,
        # metaDataVersionOID), not the one the source folder came with; it keeps the whole text
        xpt_only_supp = (name.startswith("SUPP") and datasets.get(name, ds).form == "xpt"
                         and datasets.get(name[4:], ds).form != "xpt")   # (the rest of split text)
        if name in datasets and not xpt_only_supp:
            files.append(write_dataset_json_any(datasets[name], out / "dataset-json" / f"{name.lower()}.json",
                                                study_oid=study, metadata_ref=define_ref))
        packaged[name] = replace(ds, path=target, form="xpt", other_forms=[])
    define = write_define(sdtm_dir, packaged, ct=ct, study=study,
                          leaves={n: f"{n.lower()}.xpt" for n in packaged})
    files.append(define)
    result = validate_folder(sdtm_dir, ct=ct, core=core)
    doc = result.to_json(report_values)
    check_findings_json(doc)
    findings = out / "validation" / "findings.json"
    write_json_atomic(findings, doc)
    files.append(findings)
    return PackageResult(out, sdtm_dir, define, files, result)


def split_long_text_datasets(datasets: dict[str, Dataset]) -> dict[str, Dataset]:
    """The datasets as the XPT holds them: text over 200 characters of a general-observation-class
    domain split into SUPP-- records (:func:`trialbridge.sdtm.xpt.split_long_text`), added to the
    domain's SUPP-- dataset (made when the folder has none)."""
    out = dict(datasets)
    extra: dict[str, pd.DataFrame] = {}
    for name, ds in datasets.items():
        dom = known_domain(name)
        if dom is None or name.startswith("SUPP") or dom.domain != name:
            continue
        frame, supp = split_long_text(ds.frame, dom)
        if not len(supp):
            continue
        changed = {c for c in frame.columns if frame[c].dtype == object and not frame[c].equals(ds.frame[c])}
        out[name] = replace(ds, frame=frame, columns=[_fitted(c, frame) if c.name in changed else c
                                                      for c in ds.columns])
        extra[f"SUPP{name}"] = supp
    for sname, rows in extra.items():
        have = out.get(sname)
        if have is None:
            meta = known_domain(sname)
            assert meta is not None   # (SUPP-- resolves to the SUPPQUAL structure)
            cols = [Column(v.name, v.label, "string") for v in meta.variables]
            frame = rows.reindex(columns=[c.name for c in cols]).fillna("")
            out[sname] = Dataset(sname, meta.label, frame, [_fitted(c, frame) for c in cols],
                                 path=datasets[sname[4:]].path.with_name(f"{sname.lower()}.xpt"), form="xpt")
        else:
            frame = pd.concat([have.frame, rows.reindex(columns=have.frame.columns).fillna("")],
                              ignore_index=True)
            out[sname] = replace(have, frame=frame, columns=[_fitted(c, frame, keep=True) for c in have.columns])
    return out


def _fitted(col: Column, frame: pd.DataFrame, *, keep: bool = False) -> Column:
    """A Char column's length: the longest value (``keep``: not shorter than declared)."""
    if col.sas_type != "Char" or col.name not in frame.columns:
        return col
    longest = max(int(frame[col.name].astype("string").fillna("").str.encode("utf-8").str.len().max()
                      if len(frame) else 1), 1)
    if keep and col.length:
        longest = max(longest, col.length)
    return replace(col, length=longest)
