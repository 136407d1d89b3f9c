"""DM (Demographics) from Patient + ResearchSubject (+ Consent, + exposure for RFSTDTC/RFENDTC).

Rules: ``mappings/subject/dm.yaml`` (rule ids dm.*; Joint IG DM rows and the gaps decided there).
One row per Patient in the subject index; identity (SUBJID/USUBJID/SITEID), arms and reference dates
come from the engine's subject index (:mod:`trialbridge.subject.identity`). Names, addresses (except
the country), telecom and identifiers other than the chosen SUBJID never leave the reader.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from ...report import Kind
from ...specs import load_table
from ..base import Ctx, DomainPlugin, derive_dtc, register_domain

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
BIRTHSEX = US_CORE + "us-core-birthsex"
RACE = US_CORE + "us-core-race"
ETHNICITY = US_CORE + "us-core-ethnicity"
BIRTHTIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
# The "else null" operand of np.where(cond, "Y", ...): numpy's ArrayLike excludes a bare None, which
# np.where turns into exactly this 0-d object array (same object-dtype result, None where cond is False).
NO_VALUE = np.array(None, dtype=object)


@cache
def code_table(name: str) -> dict[str, str]:
    return {r["source_code"]: r["target_code"] for r in load_table("codes/fhir_sdtm_codes.csv")
            if r["table"] == name}


@cache
def country_table() -> dict[str, str]:
    out: dict[str, str] = {}
    for r in load_table("codes/iso3166_countries.csv"):
        a3 = r["target_code"]
        out[a3.upper()] = a3
        if r.get("alpha_2"):
            out[r["alpha_2"].upper()] = a3
        out[r["source_code"].casefold()] = a3
    return out


def _omb_codes(ext: dict[str, Any]) -> list[str]:
    return [e["valueCoding"].get("code") for e in ext.get("extension") or ()
            if isinstance(e, dict) and e.get("url") == "ombCategory" and isinstance(e.get("valueCoding"), dict)]


def _detailed(ext: dict[str, Any]) -> bool:
    return any(isinstance(e, dict) and e.get("url") == "detailed" for e in ext.get("extension") or ())


def extract_dm(res: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    row: dict[str, Any] = {"_subject": f"Patient/{res.get('id')}", "_gender": res.get("gender"),
                           "_birthsex": None, "_race": [], "_eth": [], "_detailed": False,
                           "BRTHDTC": res.get("birthDate"), "_dth_dt": res.get("deceasedDateTime"),
                           "_dth_bool": res.get("deceasedBoolean"),
                           "_lastupdated": (res.get("meta") or {}).get("lastUpdated"),
                           "_country": next((a.get("country") for a in res.get("address") or ()
                                             if isinstance(a, dict) and a.get("country")), None)}
    for ext in res.get("_birthDate", {}).get("extension") or () if isinstance(res.get("_birthDate"), dict) else ():
        if isinstance(ext, dict) and ext.get("url") == BIRTHTIME and ext.get("valueDateTime"):
            row["BRTHDTC"] = ext["valueDateTime"]
    for ext in res.get("extension") or ():
        url = ext.get("url")
        if url == BIRTHSEX:
            row["_birthsex"] = ext.get("valueCode")
        elif url == RACE:
            row["_race"] = _omb_codes(ext)
            row["_detailed"] |= _detailed(ext)
        elif url == ETHNICITY:
            row["_eth"] = _omb_codes(ext)
            row["_detailed"] |= _detailed(ext)
    return row


def _age_years(birth: pd.Series, ref: pd.Series) -> pd.Series:
    """Completed years between two full dates (vectorised); partial dates give no age."""
    def full(s: pd.Series) -> pd.Series:
        s = s.astype("object")
        ok = s.notna() & (s.astype(str).str.len() >= 10)
        return pd.to_datetime(s.where(ok, None).astype(str).str.slice(0, 10).where(ok, None),
                              format="%Y-%m-%d", errors="coerce")
    b, r = full(birth), full(ref)
    years = r.dt.year - b.dt.year - ((r.dt.month < b.dt.month) |
                                     ((r.dt.month == b.dt.month) & (r.dt.day < b.dt.day))).astype(int)
    return pd.array(np.where(years.isna(), pd.NA, years), dtype="Int64")  # type: ignore[call-overload]


def _armnrs(out: pd.DataFrame, cols: pd.DataFrame, ctx: Ctx) -> None:
    """ARMNRS when an arm is assigned but no actual arm is given (rule dm.ARMNRS): SDTMIG 3.4 DM, ARMNRS
    is the reason ARM/ARMCD and/or ACTARM/ACTARMCD are null, so a null ACTARMCD needs one. No study-drug
    exposure (EX, known from the study definition's interventions) -> ASSIGNED, NOT TREATED (CT C142179);
    otherwise the reason is unknown: reported missing, never guessed."""
    no_actual = out["ARMCD"].notna() & out["ACTARMCD"].isna() & out["ARMNRS"].isna()
    if not no_actual.any():
        return
    study = ctx.study
    knows_drug = bool(study and study.arms_interventions and study.arms_interventions.interventions)
    untreated = no_actual & out["RFXSTDTC"].isna() & knows_drug
    if untreated.any():
        out.loc[untreated, "ARMNRS"] = "ASSIGNED, NOT TREATED"
        ctx.once("armnrs-untreated", Kind.INFERRED, "ARMNRS = ASSIGNED, NOT TREATED: an arm assigned, no actual "
                 "arm and no study-drug exposure (EX)", rule="dm.ARMNRS", target="ARMNRS")
    unknown = no_actual & ~untreated
    if unknown.any():
        ctx.row_issues("DM", "armnrs", Kind.MISSING, "ACTARMCD null (the ResearchSubject gives no actual arm) "
                       "and the subject was treated or the study drug is unknown (no --study): ARMNRS is "
                       "required with a null ACTARMCD, the reason is not guessed", cols, unknown,
                       rule="dm.ARMNRS", target="ARMNRS")


def map_dm(cols: pd.DataFrame, ctx: Ctx) -> pd.DataFrame:
    subj = ctx.subjects.set_index("USUBJID")
    u = cols["USUBJID"]
    out = pd.DataFrame({"STUDYID": ctx.studyid, "DOMAIN": "DM", "USUBJID": u})
    for var in ("SUBJID", "SITEID", "RFSTDTC", "RFENDTC", "RFXSTDTC", "RFXENDTC", "RFICDTC",
                "ARMCD", "ARM", "ACTARMCD", "ACTARM", "ARMNRS", "ACTARMUD"):
        out[var] = u.map(subj[var]).astype("object")
    _armnrs(out, cols, ctx)
    miss = out["SITEID"].isna()
    if miss.any():
        ctx.row_issues("DM", "siteid", Kind.MISSING, "SITEID required but no site information (site-level "
                       "ResearchStudy, managing organisation or encounter service provider): left empty",
                       cols, miss, rule="dm.SITEID", target="SITEID")
    # dates
    out["BRTHDTC"], bad = derive_dtc(cols["BRTHDTC"], ctx.dropped_zone("BRTHDTC"))
    if bad.any():
        ctx.row_issues("DM", "brthdtc", Kind.INVALID_VALUE, "birthDate is not a FHIR date", cols, bad,
                       rule="dm.BRTHDTC", source="Patient.birthDate", target="BRTHDTC")
    out["DTHDTC"], _ = derive_dtc(cols["_dth_dt"], ctx.dropped_zone("DTHDTC"))
    died = out["DTHDTC"].notna() | (cols["_dth_bool"] == True)  # noqa: E712 (object column)
    out["DTHFL"] = np.where(died, "Y", NO_VALUE)
    out["DMDTC"], _ = derive_dtc(cols["_lastupdated"], ctx.dropped_zone("DMDTC"))
    if out["DMDTC"].notna().any():
        ctx.once("dmdtc", Kind.INFERRED, "DMDTC = Patient.meta.lastUpdated (Joint IG; review history "
                 "for the collection date)", rule="dm.DMDTC", target="DMDTC")
    # AGE at RFSTDTC, else RFICDTC, else -- with a study definition, whose visits the encounters are --
    # the first encounter (rule dm.AGE); an EHR record without one starts at birth: no AGE, reported
    first_enc: dict[str, str] = {}
    if ctx.study is not None:
        for key, (_, _, start) in ctx.visit_map.items():
            enc = ctx.resources.get("Encounter", {}).get(key)
            uid = ctx.subject_alias.get(ctx.refs.resolve(enc["subject"]) or "") if enc else None
            if uid and start and (uid not in first_enc or start < first_enc[uid]):
                first_enc[uid] = start
    ref = out["RFSTDTC"].fillna(out["RFICDTC"])
    from_enc = ref.isna() & u.map(first_enc).notna()
    ref = ref.fillna(u.map(first_enc))
    if from_enc.any():
        ctx.once("age-enc", Kind.INFERRED, "AGE derived at the first study visit (Encounter) date (no RFSTDTC, no "
                 "informed consent date)", rule="dm.AGE", target="AGE")
    no_ref = ref.isna() & out["BRTHDTC"].notna()
    if no_ref.any():
        ctx.row_issues("DM", "age", Kind.MISSING, "AGE not derived: no reference date (no RFSTDTC, no informed "
                       "consent date, no study visit: an EHR record's first encounter may be at birth)", cols,
                       no_ref, rule="dm.AGE", target="AGE")
    out["AGE"] = _age_years(out["BRTHDTC"], ref)
    out["AGEU"] = np.where(pd.notna(out["AGE"]), "YEARS", NO_VALUE)
    # SEX: US Core birth sex first, then Patient.gender (rule dm.SEX, Joint IG gap decided)
    sex_t = code_table("sex")
    sex = cols["_birthsex"].map(sex_t)
    sex = sex.fillna(cols["_gender"].map(sex_t))
    unmapped = sex.isna() & (cols["_birthsex"].notna() | cols["_gender"].notna())
    if unmapped.any():
        cols["_sexval"] = cols["_birthsex"].fillna(cols["_gender"])
        ctx.row_issues("DM", "sex", Kind.UNMAPPED_CODE, "sex/gender code not in table sex", cols,
                       unmapped, rule="dm.SEX", target="SEX", value_col="_sexval")
        ctx.row_issues("DM", "sex-unmapped", Kind.MISSING, "SEX required: code unmapped, left empty",
                       cols, unmapped, rule="dm.SEX", target="SEX")
    out["SEX"] = sex
    nosex = sex.isna() & ~unmapped
    if nosex.any():
        ctx.row_issues("DM", "sex-missing", Kind.MISSING, "SEX required but the Patient has no birth "
                       "sex or gender", cols, nosex, rule="dm.SEX", target="SEX")
    # RACE / ETHNIC from OMB categories (rule dm.RACE / dm.ETHNIC)
    race_t, eth_t = code_table("race"), code_table("ethnic")
    races: list[Any] = []
    supp: dict[str, list[Any]] = {}
    for i, codes in enumerate(cols["_race"]):
        terms = list(dict.fromkeys(race_t.get(c) for c in codes or () if c in race_t))
        if any(c not in race_t for c in codes or ()):
            ctx.row_issue("DM", "race", Kind.UNMAPPED_CODE, "OMB race code not in table race",
                          record=f"Patient/{cols.at[i, '_src_id']}", rule="dm.RACE", target="RACE",
                          value=[c for c in codes if c not in race_t])
        if len(terms) > 1:
            races.append("MULTIPLE")
            for n, t in enumerate(terms, start=1):
                supp.setdefault(f"RACE{n}", [None] * len(cols))[i] = t
        else:
            races.append(terms[0] if terms else None)
    out["RACE"] = races
    for q, vals in supp.items():
        out[q] = vals
    eth = []
    for i, codes in enumerate(cols["_eth"]):
        terms = [eth_t[c] for c in codes or () if c in eth_t]
        if any(c not in eth_t for c in codes or ()):
            ctx.row_issue("DM", "ethnic", Kind.UNMAPPED_CODE, "OMB ethnicity code not in table ethnic",
                          record=f"Patient/{cols.at[i, '_src_id']}", rule="dm.ETHNIC", target="ETHNIC")
        eth.append(terms[0] if terms else None)
    out["ETHNIC"] = eth
    if cols["_detailed"].any():
        ctx.once("crace", Kind.LOSSY, "detailed race/ethnicity codes (CRACE/CETHNIC) are not carried",
                 rule="dm.RACE", source="Patient.extension(us-core-race).detailed")
    # COUNTRY from the address country (ISO 3166 alpha-2, alpha-3 or name)
    ct = country_table()
    raw = cols["_country"].astype("object")
    out["COUNTRY"] = raw.map(lambda v: ct.get(str(v).upper()) or ct.get(str(v).casefold())
                             if v is not None and v == v else None)
    bad = raw.notna() & out["COUNTRY"].isna()
    if bad.any():
        ctx.row_issues("DM", "country", Kind.UNMAPPED_CODE, "address country not an ISO 3166 code "
                       "or name", cols, bad, rule="dm.COUNTRY", target="COUNTRY", value_col="_country")
    none = raw.isna()
    if none.any():
        ctx.row_issues("DM", "country-missing", Kind.MISSING, "COUNTRY required but the Patient has "
                       "no address country", cols, none, rule="dm.COUNTRY", target="COUNTRY")
    for c in SRC_KEEP:
        out[c] = cols[c].to_numpy()
    out["_rfstdtc"] = out["RFSTDTC"]
    return out


SRC_KEEP = ("_src_type", "_src_id", "_src_ver", "_src_file", "_src_line")

register_domain(DomainPlugin(
    "DM", resource_types=("Patient",), extract=extract_dm, map=map_dm, depends=("EX",), dtc="DMDTC",
    supp={f"RACE{n}": (f"Race {n}", "CRF") for n in range(1, 6)}))
