"""SDTM domain and variable metadata: the ONE list of columns, labels, types, lengths and order.

Source files: ``schemas/sdtm/domains.csv`` (one row per domain) and ``schemas/sdtm/<domain>.csv``
(one row per variable, in dataset order) with columns

    name,label,type,data_type,length,core,codelist,role

``type`` is the SAS/SDTM type (Char | Num); ``data_type`` the Dataset-JSON 1.1 dataType
(string | integer | float | double | decimal | date | datetime | time | boolean); ``codelist`` the NCI
C-code of the CDISC CT codelist that constrains the variable (empty when none). Every writer
(Dataset-JSON, CSV, XPT, Define-XML) takes its columns from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..specs import read_csv_rows, schema_text


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    type: str            # Char | Num
    data_type: str       # Dataset-JSON dataType
    length: int | None
    core: str            # Req | Exp | Perm
    codelist: str | None
    role: str | None
    order: int


@dataclass(frozen=True)
class Domain:
    domain: str
    label: str
    domain_class: str
    structure: str
    keys: tuple[str, ...]
    variables: tuple[Variable, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    def var(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(f"{name} is not a variable of {self.domain} in schemas/sdtm")

    @property
    def required(self) -> list[str]:
        return [v.name for v in self.variables if v.core == "Req"]


@cache
def domain_rows() -> dict[str, dict[str, str]]:
    return {r["domain"]: r for r in read_csv_rows(schema_text("sdtm/domains.csv"))}


@cache
def load_domain(domain: str) -> Domain:
    """Metadata for a domain (``SUPPDM`` etc. resolve to the SUPPQUAL structure)."""
    dom = domain.upper()
    key = "SUPPQUAL" if dom.startswith("SUPP") else dom
    rows = domain_rows()
    if key not in rows:
        raise KeyError(f"no SDTM metadata for domain {domain} in schemas/sdtm/domains.csv")
    head = rows[key]
    variables = []
    for i, r in enumerate(read_csv_rows(schema_text(f"sdtm/{key.lower()}.csv")), start=1):
        variables.append(Variable(
            name=r["name"], label=r["label"], type=r["type"], data_type=r["data_type"],
            length=int(r["length"]) if r.get("length") else None, core=r["core"],
            codelist=r.get("codelist") or None, role=r.get("role") or None, order=i))
    label = head["label"]
    if key == "SUPPQUAL" and dom != "SUPPQUAL":
        parent = dom[4:]
        label = f"Supplemental Qualifiers for {parent}"
    return Domain(domain=dom, label=label, domain_class=head["class"], structure=head["structure"],
                  keys=tuple(head["keys"].split()), variables=tuple(variables))


def known_domains() -> list[str]:
    return sorted(domain_rows())
