"""UCUM -> CDISC unit terms: table rows first (resolved by C-code in the pinned CT), then proof by
UCUM arithmetic only where arithmetic means something. Found by a review: mg/mg and 1 were once
'proved' equal to IU (all dimensionless), and mL/min/{1.73_m2} equal to mL/min (annotation ignored)."""

from __future__ import annotations

import pytest
from trialbridge.subject.units import cdisc_unit


@pytest.mark.parametrize(("ucum", "term"), [
    ("10*3/uL", "10^9/L"),              # proved identical by arithmetic
    ("[IU]/mL", "IU/mL"),               # same arbitrary unit on both sides
    ("mm[Hg]", "mmHg"),
    ("Cel", "C"),
    ("mL/min/(173/100).m2", "mL/min/1.73 m2"),   # table row resolved by its C-code (C67412)
    ("mL/min/{1.73_m2}", "mL/min/1.73 m2"),      # documented extra row, not arithmetic
    ("mg/mg", "g/g"),                            # documented extra row
])
def test_known_units_map_to_exact_cdisc_terms(ucum, term):
    assert cdisc_unit(ucum) == term


@pytest.mark.parametrize("ucum", ["1", "mg/{creat}", "[arb'U]/mL", "mL/min/{BSA}", "[IU]/{cells}"])
def test_no_term_is_inferred_for_dimensionless_annotated_or_other_arbitrary_units(ucum):
    assert cdisc_unit(ucum) is None
