"""``trialbridge package``: lay out an eCTD-style submission folder from a folder of SDTM datasets.

Layout (FDA eCTD module 5 convention for tabulation data)::

    OUT/m5/datasets/<study>/tabulations/sdtm/<name>.xpt     XPT v5, one per dataset
    OUT/m5/datasets/<study>/tabulations/sdtm/define.xml     Define-XML 2.1, def:leaf -> the .xpt
    OUT/m5/datasets/<study>/tabulations/sdtm/split/         parts of datasets over 5 GB (FDA TCG 3.3.2)
    OUT/dataset-json/<name>.json                            Dataset-JSON 1.1 copies (not part of eCTD)
    OUT/validation/findings.json                            the validator's report on the package

Datasets keep the column metadata they were read with (names, labels, types, lengths). A dataset
that XPT v5 cannot carry (non-ASCII text, a value over 200 bytes) stops the packaging with the rows
and variables named: see :mod:`trialbridge.sdtm.xpt` for the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError, UsageError
from ..safeio import write_json_atomic
from ..sdtm.ct import ControlledTerminology
from ..sdtm.xpt import FDA_MAX_XPT_BYTES, split_xpt, write_xpt_table
from .checks import ValidationResult, check_findings_json, validate_folder
from .datasets import Dataset, load_folder, write_dataset_json_any, xpt_meta
from .define import study_info, write_define


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
    for name, ds in datasets.items():
        target = sdtm_dir / f"{name.lower()}.xpt"
        meta = xpt_meta(ds)
        frame = ds.frame.reindex(columns=meta.names)
        files.append(write_xpt_table(frame, target, meta))
        files.extend(split_xpt(frame, meta, target, max_bytes=split_bytes))
        # the copy names the package's define.xml (Dataset-JSON 1.1 metaDataRef, studyOID,
        # metaDataVersionOID), not the one the source folder came with
        files.append(write_dataset_json_any(ds, out / "dataset-json" / f"{name.lower()}.json",
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
