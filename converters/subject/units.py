"""Units: UCUM <-> CDISC UNIT/VSRESU terms and real UCUM unit conversion, vectorised.

* UCUM -> CDISC term: ``mappings/codes/ucum_cdisc_units.csv`` (the CDISC Unit-UCUM table), then
  ``ucum_cdisc_units_extra.csv``; failing those, a UCUM expression that ucumvert proves *identical*
  (same dimension, factor 1: ``10*3/uL`` = ``10*9/L``) to one in the table. The term must be in the
  target codelist of the pinned CT. Anything else is unknown: reported, never guessed.
* Conversion: ucumvert (a UCUM grammar on top of pint) computes, once per unit pair, the linear
  transform ``y = a*x + b`` (offsets for Cel/[degF]); the values are converted in one numpy step.
  The pairs into the standard units of ``standard_units.csv`` that occur in practice are precomputed
  in ``mappings/codes/ucum_linear.csv`` (checked against ucumvert by the tests), so the UCUM grammar
  (about 2 s to load) is loaded only for a unit outside those tables.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from ..sdtm.ct import pinned_ct
from ..specs import load_table, transform

UCUM_SYSTEM = "http://unitsofmeasure.org"


@cache
def _registry() -> Any:
    from ucumvert import PintUcumRegistry  # loads its UCUM grammar once (about 1 s)
    return PintUcumRegistry()


@cache
def _quantity_unit(ucum: str) -> Any:
    try:
        return _registry().from_ucum(ucum)
    except Exception:  # noqa: BLE001  (any parse failure = not a UCUM expression we can use)
        return None


@cache
def _linear_table() -> dict[tuple[str, str], tuple[float, float]]:
    """Precomputed (from, to) -> (a, b); ``repr`` floats, so exactly what :func:`ucum_linear` gives."""
    return {(r["source_code"], r["target_code"]): (float(r["factor"]), float(r["offset"]))
            for r in load_table("codes/ucum_linear.csv")}


@cache
def linear(from_ucum: str, to_ucum: str) -> tuple[float, float] | None:
    """(a, b) with to = a*from + b, or None when the units are not convertible."""
    if from_ucum == to_ucum:
        return (1.0, 0.0)
    hit = _linear_table().get((from_ucum, to_ucum))
    if hit is not None:
        return hit
    return ucum_linear(from_ucum, to_ucum)


def ucum_linear(from_ucum: str, to_ucum: str) -> tuple[float, float] | None:
    """:func:`linear` computed with ucumvert (no precomputed table)."""
    if from_ucum == to_ucum:
        return (1.0, 0.0)
    src, dst = _quantity_unit(from_ucum), _quantity_unit(to_ucum)
    if src is None or dst is None:
        return None
    reg = _registry()
    try:
        u_src = src.units if hasattr(src, "units") else src
        f_src = float(src.magnitude) if hasattr(src, "magnitude") else 1.0
        u_dst = dst.units if hasattr(dst, "units") else dst
        f_dst = float(dst.magnitude) if hasattr(dst, "magnitude") else 1.0
        y0 = reg.Quantity(0.0 * f_src, u_src).to(u_dst).magnitude / f_dst
        y1 = reg.Quantity(1.0 * f_src, u_src).to(u_dst).magnitude / f_dst
    except Exception:  # noqa: BLE001  (pint DimensionalityError and friends)
        return None
    return (float(y1 - y0), float(y0))


@cache
def _ucum_table() -> dict[str, list[str]]:
    """UCUM expression -> CDISC terms. A row's C-code, where the table has one, is resolved in the
    pinned CT: the C-code is stable where a submission value was respelled since the table was
    published (C67412: ``mL/min/1.73m2`` in 2022, ``mL/min/1.73 m2`` in CT 2025-03-28)."""
    out: dict[str, list[str]] = {}
    unit_codes = {t.code: t.value for t in pinned_ct().codelist("UNIT").terms.values()}
    for name in ("codes/ucum_cdisc_units.csv", "codes/ucum_cdisc_units_extra.csv"):
        for r in load_table(name):
            target = unit_codes.get(r.get("target_ccode") or "", r["target_code"])
            out.setdefault(r["source_code"], [])
            for t in (target, r["target_code"]):
                if t not in out[r["source_code"]]:
                    out[r["source_code"]].append(t)
    return out


#: UCUM arbitrary units (ucum-essence.xml, isArbitrary="yes"): not commensurable with any other unit,
#: so no arithmetic proves two expressions with different arbitrary units identical.
_ARBITRARY = re.compile(r"\[(?:[iI]U|[^\]]*'U|CCID_50|TCID_50|EID_50|PFU|FFU|CFU|IR|BAU|AU|PNU|Lf|FEU|ELU|EU)\]")


def _arbitrary_units(ucum: str) -> list[str]:
    return sorted(m.group(0).replace("[iU]", "[IU]") for m in _ARBITRARY.finditer(ucum))


@cache
def _codelist_ucum(codelist: str) -> tuple[tuple[str, str], ...]:
    """(UCUM, CDISC term) pairs whose term is in ``codelist``."""
    terms = pinned_ct().codelist(codelist).terms
    # annotated expressions ({beats}/min) are left out: annotations carry meaning UCUM arithmetic ignores
    return tuple((u, t) for u, ts in _ucum_table().items() for t in ts if t in terms and "{" not in u)


@transform("cdisc_unit")
@cache
def cdisc_unit(ucum: str, codelist: str = "UNIT") -> str | None:
    """The CDISC term for a UCUM expression, valid in ``codelist``, or None."""
    terms = pinned_ct().codelist(codelist).terms
    for t in _ucum_table().get(ucum, ()):
        if t in terms:
            return t
    if ucum in terms and _quantity_unit(ucum) is None:
        return None
    # Proof by arithmetic only where arithmetic means something: not for annotated expressions
    # ({1.73_m2} is an annotation UCUM arithmetic ignores), not for dimensionless ones (mg/mg, 1 and
    # [IU] all reduce to 1), and only between expressions with the same arbitrary units.
    if "{" in ucum:
        return None
    q = _quantity_unit(ucum)
    if q is None or getattr(q, "dimensionless", False):
        return None
    arbitrary = _arbitrary_units(ucum)
    for u, t in _codelist_ucum(codelist):
        if _arbitrary_units(u) != arbitrary:
            continue
        lin = linear(ucum, u) if _quantity_unit(u) is not None else None
        if lin is not None and abs(lin[0] - 1.0) < 1e-12 and lin[1] == 0.0:
            return t
    return None


def map_units(ucum: pd.Series, codelist: str = "UNIT") -> pd.Series:
    """Vectorised :func:`cdisc_unit` (one lookup per distinct unit)."""
    codes, uniq = pd.factorize(ucum.to_numpy(dtype=object))   # missing -> -1
    table = np.empty(len(uniq) + 1, dtype=object)
    table[:-1] = [cdisc_unit(u, codelist) for u in uniq.tolist()]
    table[-1] = None
    return pd.Series(table[codes], index=ucum.index, dtype="object")


@transform("ucum_convert")
def convert(values: pd.Series, from_ucum: pd.Series, to_ucum: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Convert numeric ``values`` row-wise; returns (converted float Series, ok mask).
    Rows whose unit pair is not convertible get NaN and ok=False. One :func:`linear` per distinct
    (from, to) pair; the values are converted with one gathered factor/offset per row."""
    return apply_linear(values, *linear_rows(from_ucum, to_ucum))


def linear_rows(from_ucum: pd.Series, to_ucum: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row the (a, b) of :func:`linear` for its unit pair and whether the pair converts: one
    :func:`linear` per distinct pair (several value columns in the same units share it)."""
    n = len(from_ucum)
    a_rows = np.full(n, np.nan)
    b_rows = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    cf, uf = pd.factorize(from_ucum.to_numpy(dtype=object))   # missing -> -1
    ct, ut = pd.factorize(to_ucum.to_numpy(dtype=object))
    valid = (cf >= 0) & (ct >= 0)
    if valid.any():
        width = len(ut)
        keys, inv = np.unique(cf[valid].astype(np.int64) * width + ct[valid], return_inverse=True)
        a = np.full(len(keys), np.nan)
        b = np.full(len(keys), np.nan)
        good = np.zeros(len(keys), dtype=bool)
        for j, k in enumerate(keys.tolist()):
            lin = linear(uf[k // width], ut[k % width])
            if lin is not None:
                a[j], b[j], good[j] = lin[0], lin[1], True
        rows = np.flatnonzero(valid)
        conv = good[inv]
        rows, inv = rows[conv], inv[conv]
        a_rows[rows], b_rows[rows], ok[rows] = a[inv], b[inv], True
    return a_rows, b_rows, ok


def apply_linear(values: pd.Series, a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """``values * a + b`` where ``ok`` (see :func:`linear_rows`), NaN elsewhere."""
    vals = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    out = np.full(len(vals), np.nan)
    out[ok] = vals[ok] * a[ok] + b[ok]
    return pd.Series(out, index=values.index), pd.Series(ok.copy(), index=values.index)
