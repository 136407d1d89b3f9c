"""ClinicalTrials.gov API v2 JSON: reader (one study or a list page) and writer.

Field correspondences live in ``mappings/ctgov_v2.yaml``; this module only walks them.
Every input leaf that no table row reads is reported as ``unmapped-source``.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError
from ..model import Study
from ..report import ConversionReport
from ..specs import load_spec
from ..tablemodel import TableCodec, report_unconsumed, write

NCT_ID = re.compile(r"^NCT\d{8}$")
RULE_PREFIX = "ctgov"


def codec() -> TableCodec:
    return TableCodec(load_spec("ctgov_v2.yaml")["classes"], rule_prefix=RULE_PREFIX)


def is_ctgov_v2(data: Any) -> bool:
    if isinstance(data, dict):
        if "protocolSection" in data:
            return True
        studies = data.get("studies")
        return isinstance(studies, list) and all(
            isinstance(s, dict) and "protocolSection" in s for s in studies)
    return False


def read_ctgov_v2(data: Any, *, file: str, report: ConversionReport) -> list[Study]:
    """A study record or a list page (``{"studies": [...]}``) -> Study models."""
    if isinstance(data, dict) and "studies" in data and "protocolSection" not in data:
        studies = data["studies"]
        if not isinstance(studies, list):
            raise InputError("'studies' is not a list", file=file, field="studies")
        extra = [k for k in data if k not in ("studies", "nextPageToken", "totalCount")]
        for key in extra:
            report.unmapped_source(key, rule=f"{RULE_PREFIX}.page", file=file)
        return [read_one(s, file=file, base=f"studies[{i}]", report=report)
                for i, s in enumerate(studies)]
    return [read_one(data, file=file, base="", report=report)]


def read_one(data: Any, *, file: str, base: str, report: ConversionReport) -> Study:
    if not isinstance(data, dict) or not isinstance(data.get("protocolSection"), dict):
        raise InputError("not a ClinicalTrials.gov API v2 study (no protocolSection object)",
                         file=file, record=base or None)
    ident = data["protocolSection"].get("identificationModule")
    nct = ident.get("nctId") if isinstance(ident, dict) else None
    if nct is not None and (not isinstance(nct, str) or not NCT_ID.match(nct)):
        raise InputError(f"nctId {nct!r} is not an NCT id (NCT followed by 8 digits)", file=file,
                         record=base or None, field="protocolSection.identificationModule.nctId")
    saved = report.file, report.record
    report.file, report.record = file, nct or base or None
    try:
        consumed: set[str] = set()
        study = codec().read(Study, data, base, report, consumed)
        report_unconsumed(data, base, consumed, report, rule=f"{RULE_PREFIX}.unmapped")
    finally:
        report.file, report.record = saved
    return study


def write_ctgov_v2(study: Study) -> dict[str, Any]:
    """Study model -> CT.gov API v2 study JSON (protocolSection first, as the API orders it)."""
    return write(codec(), study)
