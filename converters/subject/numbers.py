"""FHIR decimals as given: the JSON text of the result and reference-range numbers an Observation
carries, for --ORRES, --ORNRLO and --ORNRHI.

FHIR says a decimal's precision is significant (R4/R5 datatypes, ``decimal``: "0.010 is regarded as
different to 0.01"), and SDTMIG 3.4 keeps the result "as originally received" in --ORRES. JSON parsers
read a number into a binary float, which forgets how it was written: ``5.50`` and ``5.5`` are the same
float. So the numbers the findings rules read are carried as their **JSON text** (a ``str``) wherever
they were written with a fraction or an exponent; an integer literal stays a Python ``int`` (its text is
its decimal form). The maps already read a text result as its text for --ORRES/--ORNRLO/--ORNRHI and
as the number it parses to (``pd.to_numeric``, correctly rounded) for everything computed (--STRESN,
unit conversion, ranges): a JSON string in those places was always read that way.

* The typed NDJSON decoder (``domains/_obs_json.py``) gets the text straight from msgspec
  (``float_hook=str.strip``: a float literal has no blanks, so it returns the text itself; the cheapest
  call there is, about 15 ns per float over msgspec's own float).
* Every other path reads resources with orjson (its JSON semantics and errors are the reader's): for
  an Observation holding a float at one of the read positions (valueQuantity.value and the first
  reference range's low/high values, at the top level and in each component), the same bytes are
  decoded once more with msgspec (the same ``float_hook``) and only those positions are replaced by
  their text (:func:`give_texts`), or by the integer written where orjson made a float of an integer beyond
  64 bits (as the typed decoder gives it); nothing else in the resource changes (extension values keep
  their Python types). Where that second decode fails or does not match, the float stays (the maps
  write it as Python's shortest repr, as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

#: msgspec's generic decoder with floats kept as their JSON text (integers stay ``int``)
_TEXT_DECODER = msgspec.json.Decoder(float_hook=str.strip)


def text_decoder() -> Callable[[bytes], Any]:
    return _TEXT_DECODER.decode


def _sources(res: dict[str, Any]) -> list[dict[str, Any]]:
    comps = res.get("component")
    if type(comps) is list:
        return [res, *(c for c in comps if type(c) is dict)]
    return [res]


def _limits(src: dict[str, Any]) -> list[dict[str, Any]]:
    rr = src.get("referenceRange")
    if type(rr) is not list or not rr or type(rr[0]) is not dict:
        return []
    return [q for q in (rr[0].get("low"), rr[0].get("high")) if type(q) is dict]


def _has_float(res: dict[str, Any]) -> bool:
    """Does ``res`` hold a float at one of the read positions (then its text is looked up)?"""
    for src in _sources(res):
        vq = src.get("valueQuantity")
        if type(vq) is dict and type(vq.get("value")) is float:
            return True
        for lim in _limits(src):
            if type(lim.get("value")) is float:
                return True
    return False


def _put(q: dict[str, Any], alt: Any) -> None:
    """q["value"] (a float) replaced by its JSON text from ``alt`` (the same object decoded again), or
    by the integer it was written as (orjson makes a float of an integer beyond 64 bits)."""
    if type(q.get("value")) is float and type(alt) is dict:
        given = alt.get("value")
        if type(given) is str or type(given) is int:
            q["value"] = given


def give_texts(res: dict[str, Any], alt: Callable[[], Any]) -> None:
    """Replace the floats at the read positions of Observation ``res`` (parsed by orjson) by their JSON
    text, read from ``alt()`` (the same resource decoded by :func:`text_decoder`; called only when a
    read position holds a float; it may raise ``LookupError``, ``TypeError`` or a decode error: then
    nothing changes)."""
    if not _has_float(res):
        return
    try:
        other = alt()
    except (msgspec.DecodeError, ValueError, RecursionError, LookupError, TypeError):
        return
    if type(other) is not dict:
        return
    pairs = [(res, other)]
    comps, alt_comps = res.get("component"), other.get("component")
    if type(comps) is list and type(alt_comps) is list and len(comps) == len(alt_comps):
        pairs += [(c, a) for c, a in zip(comps, alt_comps, strict=True) if type(c) is dict and type(a) is dict]
    for src, a in pairs:
        vq = src.get("valueQuantity")
        if type(vq) is dict:
            _put(vq, a.get("valueQuantity"))
        rr, arr = src.get("referenceRange"), a.get("referenceRange")
        if type(rr) is list and rr and type(rr[0]) is dict and type(arr) is list and arr and type(arr[0]) is dict:
            for side in ("low", "high"):
                q = rr[0].get(side)
                if type(q) is dict:
                    _put(q, arr[0].get(side))
