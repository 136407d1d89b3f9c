r"""CDISC controlled terminology (NCI EVS SDTM Terminology), pinned, with a user override.

The project ships the codelists it uses, cut from the NCI file by this module:
``mappings/ct/codelists.txt`` lists the codelist C-codes (one per line, ``#`` comments say who uses
them); ``mappings/ct/sdtm_ct_subset.tsv`` holds their rows in the NCI layout (definitions left blank) (Code, Codelist Code,
Codelist Extensible (Yes/No), Codelist Name, CDISC Submission Value, CDISC Synonym(s), CDISC
Definition, NCI Preferred Term). The pinned version is :data:`PINNED_CT_VERSION`.

Regenerate after adding a codelist::

    python -m trialbridge.sdtm.ct extract \
        "../shared/data/controlled_terminology/nci_sdtm_ct_via_patterninstitute/SDTM Terminology.txt"

A user may point the tool at a newer full NCI file (``--ct FILE``); its version is taken from a
``YYYY-MM-DD`` in the file name, else reported as unknown.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

PINNED_CT_VERSION = "2025-03-28"
#: FHIR code system of the NCI Thesaurus (HL7 THO), which holds the C-code of every CDISC CT term
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
CT_PACKAGE = "SDTM CT"
NCI_COLUMNS = ["Code", "Codelist Code", "Codelist Extensible (Yes/No)", "Codelist Name",
               "CDISC Submission Value", "CDISC Synonym(s)", "CDISC Definition", "NCI Preferred Term"]


@dataclass(frozen=True)
class Term:
    code: str                 # NCI C-code of the term
    value: str                # CDISC Submission Value (exact spelling)
    synonyms: tuple[str, ...]
    preferred: str            # NCI Preferred Term
    definition: str = ""


@dataclass
class Codelist:
    code: str
    name: str
    short_name: str           # the codelist's own submission value, e.g. SEX, NY, TSPARMCD
    extensible: bool
    terms: dict[str, Term] = field(default_factory=dict)

    def term(self, value: str | None) -> Term | None:
        return self.terms.get(value) if value is not None else None

    def by_code(self, ccode: str) -> Term | None:
        """The term with NCI code ``ccode`` (the first in codelist order). An index by code is made on
        first use and made again when terms were added since (terms are only added, while loading)."""
        index = self.__dict__.get("_by_code")
        if index is None or index[0] != len(self.terms):
            by: dict[str, Term] = {}
            for t in self.terms.values():
                by.setdefault(t.code, t)
            index = (len(self.terms), by)
            self.__dict__["_by_code"] = index
        return index[1].get(ccode)


@dataclass
class ControlledTerminology:
    version: str
    codelists: dict[str, Codelist]
    source: str

    def codelist(self, key: str) -> Codelist:
        """By C-code (C66731) or short name (SEX)."""
        if key in self.codelists:
            return self.codelists[key]
        for cl in self.codelists.values():
            if cl.short_name == key:
                return cl
        raise KeyError(f"codelist {key} is not in the CT in use ({self.source}); "
                       "add it to mappings/ct/codelists.txt and re-extract")

    def term(self, codelist: str, value: str | None) -> Term | None:
        return self.codelist(codelist).term(value)

    def is_valid(self, codelist: str, value: str | None) -> bool:
        return self.term(codelist, value) is not None


def parse_nci(text: str, *, keep: set[str] | None = None) -> dict[str, Codelist]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    lists: dict[str, Codelist] = {}
    terms: list[dict[str, str]] = []
    for row in reader:
        cl_code = row["Codelist Code"]
        if not cl_code:
            if keep is None or row["Code"] in keep:
                lists[row["Code"]] = Codelist(code=row["Code"], name=row["Codelist Name"],
                                              short_name=row["CDISC Submission Value"],
                                              extensible=row["Codelist Extensible (Yes/No)"] == "Yes")
        elif keep is None or cl_code in keep:
            terms.append(row)
    for row in terms:
        cl = lists.get(row["Codelist Code"])
        if cl is None:
            continue
        syn = tuple(s.strip() for s in (row["CDISC Synonym(s)"] or "").split(";") if s.strip())
        cl.terms[row["CDISC Submission Value"]] = Term(
            code=row["Code"], value=row["CDISC Submission Value"], synonyms=syn,
            preferred=row["NCI Preferred Term"], definition=row["CDISC Definition"])
    return lists


def wanted_codelists() -> list[str]:
    text = resources.files("trialbridge.mappings").joinpath("ct/codelists.txt").read_text("utf-8")
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


@cache
def pinned_ct() -> ControlledTerminology:
    text = resources.files("trialbridge.mappings").joinpath("ct/sdtm_ct_subset.tsv").read_text("utf-8")
    return ControlledTerminology(version=PINNED_CT_VERSION, codelists=parse_nci(text),
                                 source=f"pinned NCI SDTM CT {PINNED_CT_VERSION}")


def load_ct(path: Path | None = None) -> ControlledTerminology:
    """The pinned subset, or a full NCI SDTM Terminology file the user points at."""
    if path is None:
        return pinned_ct()
    from ..errors import InputError
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read CT file ({exc})", file=str(path)) from None
    if not text.startswith("Code\tCodelist Code"):
        raise InputError("not an NCI SDTM Terminology tab-delimited file (header 'Code\\tCodelist "
                         "Code...' expected)", file=str(path))
    m = re.search(r"(\d{4}-\d{2}-\d{2})", path.name)
    return ControlledTerminology(version=m.group(1) if m else "unknown", codelists=parse_nci(text),
                                 source=str(path))


def extract(source: Path, target: Path) -> int:
    """Cut the wanted codelists out of a full NCI file into the pinned subset file."""
    keep = set(wanted_codelists())
    text = source.read_text(encoding="utf-8")
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    lines = text.splitlines()
    writer.writerow(NCI_COLUMNS)
    n = 0
    for row in csv.reader(lines[1:], delimiter="\t"):
        if (not row[1] and row[0] in keep) or row[1] in keep:
            row[6] = ""  # definitions are long and unused: left out to keep the package small
            writer.writerow(row)
            n += 1
    found = {r[0] for r in csv.reader(lines[1:], delimiter="\t") if not r[1] and r[0] in keep}
    missing = keep - found
    if missing:
        raise SystemExit(f"codelists not in {source}: {sorted(missing)}")
    target.write_text(out.getvalue(), encoding="utf-8")
    return n


if __name__ == "__main__":  # python -m trialbridge.sdtm.ct extract NCI_FILE
    if len(sys.argv) != 3 or sys.argv[1] != "extract":
        raise SystemExit("usage: python -m trialbridge.sdtm.ct extract NCI_SDTM_TERMINOLOGY_FILE")
    here = Path(__file__).resolve().parent.parent.parent / "mappings" / "ct" / "sdtm_ct_subset.tsv"
    count = extract(Path(sys.argv[2]), here)
    print(f"wrote {count} rows to {here}")
