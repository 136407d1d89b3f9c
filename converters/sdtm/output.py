"""Write one SDTM domain in every requested form: json (Dataset-JSON 1.1), ndjson, csv, xpt.

All SDTM writers (trial design, subject data) go through :func:`write_domain`, so a new output
form is added in one place. File names are the domain in lower case (``dm.json``, ``suppdm.xpt``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd

from ..errors import UsageError
from .datasetjson import write_csv, write_dataset_json

SDTM_FORMATS = ("json", "ndjson", "csv", "xpt")


def write_domain(df: pd.DataFrame, domain: str, outdir: Path, formats: tuple[str, ...], *,
                 study_oid: str) -> list[Path]:
    bad = [f for f in formats if f not in SDTM_FORMATS]
    if bad:
        raise UsageError(f"unknown --sdtm-format {', '.join(bad)} (choose from {', '.join(SDTM_FORMATS)})")
    stem = domain.lower()
    written: list[Path] = []
    for fmt in formats:
        target = outdir / f"{stem}.{fmt}"
        if fmt == "json":
            write_dataset_json(df, domain, target, study_oid=study_oid)
        elif fmt == "ndjson":
            write_dataset_json(df, domain, target, study_oid=study_oid, ndjson=True)
        elif fmt == "csv":
            write_csv(df, domain, target)
        elif fmt == "xpt":
            # the XPT v5 writer arrives with the submission-package work (trialbridge.sdtm.xpt)
            importlib.import_module("trialbridge.sdtm.xpt").write_xpt(df, domain, target)
        written.append(target)
    return written
