"""Build the subject-data code tables and SDTM variable metadata from the third-party sources.

Run at table-build time only (needs openpyxl for the .xlsx; the converter itself never reads the
sources)::

    python -m trialbridge.subject.build_tables /work/shared

Writes (each with ``# source:`` lines):

* ``mappings/codes/loinc_to_lb.csv``   CDISC "LOINC to LB Mapping" -> LOINC, LBTESTCD, LBTEST, LBSPEC,
  LBMETHOD, example LBORRESU, LBFAST (one row per LOINC: see ``preferred``)
* ``mappings/codes/ucum_cdisc_units.csv``  CDISC Unit-UCUM code table 2022-03-25 (UNIT, VSRESU, AGEU...)
* ``schemas/sdtm/{dm,vs,lb,suppqual}.csv`` labels and types from the CDISC Library SDTMIG 3.2 export,
  variable list and order per SDTMIG 3.4 (variables new in 3.4 carry their 3.4 label, listed below)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# SDTMIG 3.4 variable order (name, core) for the domains this engine writes; labels of variables that
# SDTMIG 3.2 lacks are given here (SDTMIG 3.4 section 5/6 specification tables).
IG34 = {
    "DM": ["STUDYID Req", "DOMAIN Req", "USUBJID Req", "SUBJID Req", "RFSTDTC Exp", "RFENDTC Exp",
           "RFXSTDTC Exp", "RFXENDTC Exp", "RFICDTC Exp", "RFPENDTC Exp", "DTHDTC Exp", "DTHFL Exp",
           "SITEID Req", "INVID Perm", "INVNAM Perm", "BRTHDTC Perm", "AGE Exp", "AGETXT Perm",
           "AGEU Exp", "SEX Req", "RACE Exp", "ETHNIC Perm", "ARMCD Exp", "ARM Exp", "ACTARMCD Exp",
           "ACTARM Exp", "ARMNRS Exp", "ACTARMUD Exp", "COUNTRY Req", "DMDTC Perm", "DMDY Perm"],
    "VS": ["STUDYID Req", "DOMAIN Req", "USUBJID Req", "VSSEQ Req", "VSGRPID Perm", "VSSPID Perm",
           "VSTESTCD Req", "VSTEST Req", "VSCAT Perm", "VSSCAT Perm", "VSPOS Perm", "VSORRES Exp",
           "VSORRESU Exp", "VSSTRESC Exp", "VSSTRESN Exp", "VSSTRESU Exp", "VSSTAT Perm",
           "VSREASND Perm", "VSLOC Perm", "VSLAT Perm", "VSLOBXFL Exp", "VSBLFL Perm", "VSDRVFL Perm",
           "VISITNUM Exp", "VISIT Perm", "VISITDY Perm", "EPOCH Perm", "VSDTC Exp", "VSDY Perm",
           "VSTPT Perm", "VSTPTNUM Perm", "VSELTM Perm", "VSTPTREF Perm", "VSRFTDTC Perm"],
    "LB": ["STUDYID Req", "DOMAIN Req", "USUBJID Req", "LBSEQ Req", "LBGRPID Perm", "LBREFID Perm",
           "LBSPID Perm", "LBTESTCD Req", "LBTEST Req", "LBCAT Exp", "LBSCAT Perm", "LBORRES Exp",
           "LBORRESU Exp", "LBORNRLO Exp", "LBORNRHI Exp", "LBSTRESC Exp", "LBSTRESN Exp",
           "LBSTRESU Exp", "LBSTNRLO Exp", "LBSTNRHI Exp", "LBSTNRC Perm", "LBNRIND Exp",
           "LBSTAT Perm", "LBREASND Perm", "LBNAM Perm", "LBLOINC Perm", "LBSPEC Perm",
           "LBSPCCND Perm", "LBMETHOD Perm", "LBLOBXFL Exp", "LBBLFL Perm", "LBFAST Perm",
           "LBDRVFL Perm", "LBTOX Perm", "LBTOXGR Perm", "VISITNUM Exp", "VISIT Perm",
           "VISITDY Perm", "EPOCH Perm", "LBDTC Exp", "LBENDTC Perm", "LBDY Perm", "LBTPT Perm",
           "LBTPTNUM Perm", "LBELTM Perm", "LBTPTREF Perm", "LBRFTDTC Perm"],
    "SUPPQUAL": ["STUDYID Req", "RDOMAIN Req", "USUBJID Req", "IDVAR Exp", "IDVARVAL Exp", "QNAM Req",
                 "QLABEL Req", "QVAL Req", "QORIG Req", "QEVAL Exp"],
}
NEW_IN_34 = {"AGETXT": "Age Text", "ARMNRS": "Reason Arm and/or Actual Arm is Null",
             "ACTARMUD": "Description of Unplanned Actual Arm", "EPOCH": "Epoch",
             "VSLOBXFL": "Last Observation Before Exposure Flag",
             "LBLOBXFL": "Last Observation Before Exposure Flag",
             "RDOMAIN": "Related Domain Abbreviation", "IDVAR": "Identifying Variable",
             "IDVARVAL": "Identifying Variable Value", "QNAM": "Qualifier Variable Name",
             "QLABEL": "Qualifier Variable Label", "QVAL": "Data Value", "QORIG": "Origin",
             "QEVAL": "Evaluator"}
CODELISTS = {  # variable -> NCI codelist C-code (CDISC CT, pinned in mappings/ct)
    "DOMAIN": "C66734", "RDOMAIN": "C66734", "SEX": "C66731", "AGEU": "C66781", "RACE": "C74457",
    "ETHNIC": "C66790", "DTHFL": "C66742", "ARMNRS": "C142179", "EPOCH": "C99079",
    "VSTESTCD": "C66741", "VSTEST": "C67153", "VSPOS": "C71148", "VSORRESU": "C66770",
    "VSSTRESU": "C66770", "VSSTAT": "C66789", "VSLOC": "C74456", "VSLAT": "C99073",
    "VSLOBXFL": "C66742", "VSBLFL": "C66742", "VSDRVFL": "C66742",
    "LBTESTCD": "C65047", "LBTEST": "C67154", "LBORRESU": "C71620", "LBSTRESU": "C71620",
    "LBNRIND": "C78736", "LBSTAT": "C66789", "LBSPEC": "C78734", "LBMETHOD": "C85492",
    "LBLOBXFL": "C66742", "LBBLFL": "C66742", "LBFAST": "C66742", "LBDRVFL": "C66742",
}
INTEGER = {"AGE", "DMDY", "VSSEQ", "LBSEQ", "VSDY", "LBDY", "VISITDY"}
FLOAT = {"VSSTRESN", "LBSTRESN", "LBSTNRLO", "LBSTNRHI", "VISITNUM", "VSTPTNUM", "LBTPTNUM"}


def _ig32(xml: Path) -> dict[tuple[str, str], dict[str, str]]:
    from lxml import etree
    out = {}
    for ds in etree.parse(str(xml)).iter("dataset"):
        name = ds.findtext("_links/self/href").split("/")[-1]
        for v in ds.findall("datasetVariable"):
            out[(name, v.findtext("name"))] = {"label": v.findtext("label"), "type": v.findtext("simpleDatatype"),
                                               "role": ""}
    return out


def build_metadata(shared: Path) -> None:
    ig32 = _ig32(shared / "data/mappings/hl7_fhir_cdisc_mapping/tools/SDTMIGv3-2.xml")
    for dom, items in IG34.items():
        rows = []
        for item in items:
            name, core = item.split()
            src = ig32.get((dom, name)) or (ig32.get(("DM", name)) if name in ("STUDYID", "USUBJID")
                                            else None)
            label = src["label"] if src else NEW_IN_34[name]
            num = name in INTEGER or name in FLOAT or (src and src["type"] == "Num")
            rows.append([name, label, "Num" if num else "Char",
                         "integer" if name in INTEGER else ("float" if num else "string"), "",
                         core, CODELISTS.get(name, ""), ""])
        target = ROOT / f"schemas/sdtm/{dom.lower()}.csv"
        with open(target, "w", newline="", encoding="utf-8") as fh:
            fh.write(f"# {dom}: variable list and order per SDTMIG v3.4; labels from the CDISC Library "
                     "SDTMIG v3.2 export\n# (shared/data/mappings/hl7_fhir_cdisc_mapping/tools/SDTMIGv3-2.xml),"
                     " 3.4 labels for variables 3.2 lacks. Built by trialbridge.subject.build_tables.\n")
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["name", "label", "type", "data_type", "length", "core", "codelist", "role"])
            w.writerows(rows)


#: LOINC System axis -> the SPECTYPE term that names exactly it, for the systems where the CDISC
#: document lists several LBSPEC rows per LOINC (PLASMA, SERUM, SERUM OR PLASMA, ...): the narrower
#: rows are the sponsor's choice once the specimen is known; the LOINC itself says only this much.
SYSTEM_SPEC = {"Ser/Plas": "SERUM OR PLASMA", "Ser/Plas/Bld": "SERUM OR PLASMA OR BLOOD"}


def preferred_rows(rows: list[dict[str, str]]) -> set[int]:
    """Index (in ``rows``) of the preferred row per LOINC: the row whose LBSPEC is the specimen the
    LOINC's System names (``SYSTEM_SPEC``: 2093-3 'Cholesterol in Serum or Plasma' -> SERUM OR
    PLASMA, not the PLASMA row the document happens to list first), else the first row."""
    first: dict[str, int] = {}
    named: dict[str, int] = {}
    for i, r in enumerate(rows):
        loinc = (r.get("LOINC Code") or "").strip()
        if not loinc or not (r.get("CDISC LBTESTCD") or "").strip():
            continue
        first.setdefault(loinc, i)
        spec = SYSTEM_SPEC.get((r.get("System") or "").strip())
        if spec is not None and (r.get("CDISC LBSPEC") or "").strip() == spec:
            named.setdefault(loinc, i)
    return {named.get(loinc, i) for loinc, i in first.items()}


def build_loinc_lb(shared: Path) -> None:
    src = shared / "spec/sources/cdisc_loinc_to_lb_mapping.csv"
    with open(src, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    preferred = preferred_rows(rows)
    out = []
    for i, r in enumerate(rows):
        loinc = (r.get("LOINC Code") or "").strip()
        testcd = (r.get("CDISC LBTESTCD") or "").strip()
        if not loinc or not testcd:
            continue

        def clean(v: str | None) -> str:
            v = (v or "").strip()
            return "" if v.startswith("(") else v   # "(***)", "(Must be null)": no value to carry
        out.append(["LOINC", loinc, "CDISC LBTESTCD", testcd, clean(r.get("CDISC LBTEST")),
                    clean(r.get("CDISC LBSPEC")), clean(r.get("CDISC LBMETHOD")),
                    clean(r.get("EXAMPLE CDISC LBORRESU")), clean(r.get("CDISC LBFAST")),
                    clean(r.get("CDISC LBPOS")), clean(r.get("CDISC LBLOC")),
                    "Y" if i in preferred else "", (r.get("LOINC Class") or "").strip()])
    target = ROOT / "mappings/codes/loinc_to_lb.csv"
    with open(target, "w", newline="", encoding="utf-8") as fh:
        fh.write("# LOINC -> CDISC LB test code, specimen, method, example unit, fasting.\n"
                 "# source: CDISC 'LOINC to LB Mapping' final document (sween/soa-bridge-match @ "
                 "476bfae5f87d1926e534ace7307f0914f9134458 : doc/resources/LOINC_to_LB_Mapping Document_FINAL.csv).\n"
                 "# LOINC is copyright Regenstrief Institute, used under the LOINC licence.\n"
                 "# Where one LOINC has several rows (they differ in LBSPEC only), 'preferred' = Y marks the one\n"
                 "# whose LBSPEC is the specimen the LOINC System names (Ser/Plas -> SERUM OR PLASMA, Ser/Plas/Bld ->\n"
                 "# SERUM OR PLASMA OR BLOOD: PLASMA or SERUM alone would be a guess), else the first in the CDISC\n"
                 "# document; the converter uses the preferred row.\n")
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["source_system", "source_code", "target_system", "target_code", "LBTEST", "LBSPEC",
                    "LBMETHOD", "example_LBORRESU", "LBFAST", "LBPOS", "LBLOC", "preferred", "loinc_class"])
        w.writerows(out)


def build_units(shared: Path) -> None:
    import openpyxl
    wb = openpyxl.load_workbook(shared / "spec/sources/ucum.xlsx", read_only=True)
    ws = wb.worksheets[0]
    it = ws.iter_rows(values_only=True)
    head = [str(h) if h is not None else "" for h in next(it)]
    ucum_cols = [i for i, h in enumerate(head) if h.startswith("UCUM Expression")]
    out = []
    for row in it:
        cl, value, ccode = row[head.index("Codelist Code")], row[head.index("CDISC Submission Value")], row[0]
        if not cl or not value:
            continue
        for rank, i in enumerate(ucum_cols, start=1):
            u = row[i]
            if u is None or str(u).strip() == "":
                continue
            out.append(["UCUM", str(u).strip(), "CDISC CT", str(value).strip(), str(ccode), str(cl), rank])
    target = ROOT / "mappings/codes/ucum_cdisc_units.csv"
    with open(target, "w", newline="", encoding="utf-8") as fh:
        fh.write("# UCUM expression <-> CDISC unit term (codelist UNIT C71620, VSRESU C66770, AGEU C66781, ...).\n"
                 "# source: CDISC SDTM CT 'Unit - UCUM code table' 2022-03-25 (sween/soa-bridge-match @ "
                 "476bfae5f87d1926e534ace7307f0914f9134458 : doc/resources/Unit-UCUM_Codetable_2022-03-25.xlsx).\n"
                 "# rank = position of the UCUM expression among the term's expressions (1 = first listed).\n")
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["source_system", "source_code", "target_system", "target_code", "target_ccode",
                    "codelist", "rank"])
        w.writerows(out)


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared"
    build_metadata(shared)
    build_loinc_lb(shared)
    build_units(shared)
    print("built schemas/sdtm/{dm,vs,lb,suppqual}.csv, mappings/codes/loinc_to_lb.csv, ucum_cdisc_units.csv")
