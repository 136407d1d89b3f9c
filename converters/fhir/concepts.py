"""Small readers of FHIR datatypes shared by the study and subject paths."""

from __future__ import annotations

from typing import Any


def concept_text(cc: Any) -> str | None:
    """A CodeableConcept's text, else the display of its first coding that has one."""
    if not isinstance(cc, dict):
        return None
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding") or ():
        if isinstance(c, dict) and c.get("display"):
            return str(c["display"])
    return None
