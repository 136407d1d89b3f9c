"""SDTM domain and variable metadata: the ONE list of columns, labels, types, lengths and order.

Source files: ``schemas/sdtm/domains.csv`` (one row per domain) and ``schemas/sdtm/<domain>.csv``
(one row per variable, in dataset order) with columns

    name,label,type,data_type,length,core,codelist,role

``type`` is the SAS/SDTM type (Char | Num); ``data_type`` the Dataset-JSON 1.1 dataType
(string | integer | float | double | decimal | date | datetime | time | boolean); ``codelist`` the NCI
C-code of the CDISC CT codelist that constrains the variable (empty when none). Every writer
(Dataset-JSON, CSV, XPT, Define-XML) takes its columns from here.

A domain of a general observation class (Interventions, Events, Findings) also has the variables of
its class that its specification does not list: ``schemas/sdtm/general_classes.csv`` (SDTM model
v2.0 section 3.1.1-3.1.5: identifiers, timing variables and class qualifiers, permissible in any
domain of the class unless the standard restricts them). They are merged into the domain's
variables in model order, core ``Perm``, flagged ``general``; like every Perm variable they are
written only when the data has them.
``Domain.spec_names`` is the domain specification alone: what the FHIR -> SDTM engine derives on its
own (a class variable it meets in the data is legitimate, it is not produced unasked).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    general: bool = False     # a general observation class variable the domain specification omits


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
        raise KeyError(f"{name} is neither a variable of {self.domain} nor of its general observation class "
                       "in schemas/sdtm")

    @property
    def spec_names(self) -> list[str]:
        """The variables the domain specification lists (without the added class variables)."""
        return [v.name for v in self.variables if not v.general]

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
    if head["class"] in GENERAL_CLASSES:
        variables = merge_class_variables(variables, key, head["class"])
    label = head["label"]
    if key == "SUPPQUAL" and dom != "SUPPQUAL":
        parent = dom[4:]
        label = f"Supplemental Qualifiers for {parent}"
    return Domain(domain=dom, label=label, domain_class=head["class"], structure=head["structure"],
                  keys=tuple(head["keys"].split()), variables=tuple(variables))


GENERAL_CLASSES = ("Interventions", "Events", "Findings")


@cache
def class_variable_rows() -> tuple[dict[str, str], ...]:
    """Rows of ``schemas/sdtm/general_classes.csv`` (names with the ``--`` prefix placeholder)."""
    return tuple(read_csv_rows(schema_text("sdtm/general_classes.csv")))


def class_variables(domain: str, domain_class: str) -> list[Variable]:
    """The identifiers, the qualifiers of ``domain_class`` and the timing variables, in model order,
    with ``--`` replaced by the domain prefix; without those the standard excludes from the domain or
    its class (column ``not_in``: SDTM v2.0 restrictions, SDTMIG domain assumptions)."""
    out = []
    for r in class_variable_rows():
        excluded = r.get("not_in", "").split()
        if r["class"] not in ("Identifiers", domain_class, "Timing") or domain in excluded or domain_class in excluded:
            continue
        out.append(Variable(
            name=r["name"].replace("--", domain), label=r["label"], type=r["type"], data_type=r["data_type"],
            length=int(r["length"]) if r.get("length") else None, core="Perm",
            codelist=r.get("codelist") or None, role=r.get("role") or None, order=0, general=True))
    return out


def merge_class_variables(variables: list[Variable], domain: str, domain_class: str) -> list[Variable]:
    """``variables`` (the domain specification, in its order) with the class variables it lacks, each
    placed after the nearest class variable that precedes it in the model and is already there."""
    merged = list(variables)
    at = {v.name for v in merged}
    prev: str | None = None
    for cv in class_variables(domain, domain_class):
        if cv.name not in at:
            pos = next(i for i, v in enumerate(merged) if v.name == prev) + 1 if prev else 0
            merged.insert(pos, cv)
            at.add(cv.name)
        prev = cv.name
    return [replace(v, order=i) for i, v in enumerate(merged, start=1)]


def known_domains() -> list[str]:
    return sorted(domain_rows())
