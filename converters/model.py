"""The canonical ``Study`` model: the hub every study-definition format reads into and writes from.

It covers every module of the ClinicalTrials.gov API v2 ``protocolSection`` (the richest
registration format); FHIR ResearchStudy and the SDTM trial design datasets map onto it.
Values keep the CT.gov enum spellings (``RECRUITING``, ``PHASE2``) as data; code sets are
checked against ``mappings/codes/ctgov_enums.csv`` by the readers. Dates stay as given
(``2019-09`` stays partial). Lists are tuples: the model is frozen and hashable.

Where each field comes from in CT.gov JSON is not written here but in ``mappings/ctgov_v2.yaml``
(one row per class field), so the readers and writers stay generic.

``results_section``, ``annotation_section``, ``document_section`` and ``derived_section`` are
carried along as opaque JSON: they are declared (reported) by every writer that cannot carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class DateStruct:
    date: str | None = None          # ISO 8601, possibly partial (YYYY or YYYY-MM)
    type: str | None = None          # ACTUAL | ESTIMATED


@dataclass(frozen=True)
class OrgStudyId:
    id: str | None = None
    type: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class SecondaryId:
    id: str | None = None
    type: str | None = None          # NIH, FDA, VA, CDC, AHRQ, SAMHSA, OTHER_GRANT, EUDRACT_NUMBER, CTIS, REGISTRY, OTHER
    domain: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class Organization:
    full_name: str | None = None
    org_class: str | None = None     # AgencyClass


@dataclass(frozen=True)
class Identification:
    nct_id: str | None = None
    nct_id_aliases: tuple[str, ...] = ()
    org_study_id: OrgStudyId | None = None
    secondary_ids: tuple[SecondaryId, ...] = ()
    brief_title: str | None = None
    official_title: str | None = None
    acronym: str | None = None
    organization: Organization | None = None


@dataclass(frozen=True)
class ExpandedAccessInfo:
    has_expanded_access: bool | None = None
    nct_id: str | None = None
    status_for_nct_id: str | None = None


@dataclass(frozen=True)
class Status:
    status_verified_date: str | None = None
    overall_status: str | None = None
    last_known_status: str | None = None
    delayed_posting: bool | None = None
    why_stopped: str | None = None
    expanded_access_info: ExpandedAccessInfo | None = None
    start_date: DateStruct | None = None
    primary_completion_date: DateStruct | None = None
    completion_date: DateStruct | None = None
    study_first_submit_date: str | None = None
    study_first_submit_qc_date: str | None = None
    study_first_post_date: DateStruct | None = None
    results_first_submit_date: str | None = None
    results_first_submit_qc_date: str | None = None
    results_first_post_date: DateStruct | None = None
    disp_first_submit_date: str | None = None
    disp_first_submit_qc_date: str | None = None
    disp_first_post_date: DateStruct | None = None
    last_update_submit_date: str | None = None
    last_update_post_date: DateStruct | None = None


@dataclass(frozen=True)
class ResponsibleParty:
    type: str | None = None          # SPONSOR | PRINCIPAL_INVESTIGATOR | SPONSOR_INVESTIGATOR
    investigator_full_name: str | None = None
    investigator_title: str | None = None
    investigator_affiliation: str | None = None
    old_name_title: str | None = None
    old_organization: str | None = None


@dataclass(frozen=True)
class Sponsor:
    name: str | None = None
    sponsor_class: str | None = None  # AgencyClass


@dataclass(frozen=True)
class SponsorCollaborators:
    responsible_party: ResponsibleParty | None = None
    lead_sponsor: Sponsor | None = None
    collaborators: tuple[Sponsor, ...] = ()


@dataclass(frozen=True)
class Oversight:
    has_dmc: bool | None = None
    is_fda_regulated_drug: bool | None = None
    is_fda_regulated_device: bool | None = None
    is_unapproved_device: bool | None = None
    is_ppsd: bool | None = None
    is_us_export: bool | None = None
    fdaaa801_violation: bool | None = None


@dataclass(frozen=True)
class Description:
    brief_summary: str | None = None
    detailed_description: str | None = None


@dataclass(frozen=True)
class Conditions:
    conditions: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpandedAccessTypes:
    individual: bool | None = None
    intermediate: bool | None = None
    treatment: bool | None = None


@dataclass(frozen=True)
class Masking:
    masking: str | None = None       # NONE | SINGLE | DOUBLE | TRIPLE | QUADRUPLE
    masking_description: str | None = None
    who_masked: tuple[str, ...] = ()


@dataclass(frozen=True)
class DesignInfo:
    allocation: str | None = None
    intervention_model: str | None = None
    intervention_model_description: str | None = None
    primary_purpose: str | None = None
    observational_model: str | None = None
    time_perspective: str | None = None
    masking: Masking | None = None


@dataclass(frozen=True)
class BioSpec:
    retention: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Enrollment:
    count: int | None = None
    type: str | None = None          # ACTUAL | ESTIMATED


@dataclass(frozen=True)
class Design:
    study_type: str | None = None
    n_ptrs_to_this_exp_acc_nct_id: float | None = None
    expanded_access_types: ExpandedAccessTypes | None = None
    patient_registry: bool | None = None
    target_duration: str | None = None
    phases: tuple[str, ...] = ()
    design_info: DesignInfo | None = None
    bio_spec: BioSpec | None = None
    enrollment: Enrollment | None = None


@dataclass(frozen=True)
class ArmGroup:
    label: str | None = None
    type: str | None = None
    description: str | None = None
    intervention_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Intervention:
    type: str | None = None
    name: str | None = None
    description: str | None = None
    arm_group_labels: tuple[str, ...] = ()
    other_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArmsInterventions:
    arm_groups: tuple[ArmGroup, ...] = ()
    interventions: tuple[Intervention, ...] = ()


@dataclass(frozen=True)
class Outcome:
    measure: str | None = None
    description: str | None = None
    time_frame: str | None = None


@dataclass(frozen=True)
class Outcomes:
    primary: tuple[Outcome, ...] = ()
    secondary: tuple[Outcome, ...] = ()
    other: tuple[Outcome, ...] = ()


@dataclass(frozen=True)
class Eligibility:
    criteria: str | None = None
    healthy_volunteers: bool | None = None
    sex: str | None = None
    gender_based: bool | None = None
    gender_description: str | None = None
    minimum_age: str | None = None   # "18 Years"
    maximum_age: str | None = None
    std_ages: tuple[str, ...] = ()
    study_population: str | None = None
    sampling_method: str | None = None


@dataclass(frozen=True)
class Contact:
    name: str | None = None
    role: str | None = None
    phone: str | None = None
    phone_ext: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class Official:
    name: str | None = None
    affiliation: str | None = None
    role: str | None = None          # STUDY_CHAIR | STUDY_DIRECTOR | PRINCIPAL_INVESTIGATOR | SUB_INVESTIGATOR


@dataclass(frozen=True)
class GeoPoint:
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class Location:
    facility: str | None = None
    status: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    contacts: tuple[Contact, ...] = ()
    geo_point: GeoPoint | None = None


@dataclass(frozen=True)
class ContactsLocations:
    central_contacts: tuple[Contact, ...] = ()
    overall_officials: tuple[Official, ...] = ()
    locations: tuple[Location, ...] = ()


@dataclass(frozen=True)
class Retraction:
    pmid: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Reference:
    pmid: str | None = None
    type: str | None = None          # BACKGROUND | RESULT | DERIVED
    citation: str | None = None
    retractions: tuple[Retraction, ...] = ()


@dataclass(frozen=True)
class SeeAlsoLink:
    label: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class AvailIpd:
    id: str | None = None
    type: str | None = None
    url: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class References:
    references: tuple[Reference, ...] = ()
    see_also_links: tuple[SeeAlsoLink, ...] = ()
    avail_ipds: tuple[AvailIpd, ...] = ()


@dataclass(frozen=True)
class IpdSharing:
    ipd_sharing: str | None = None   # YES | NO | UNDECIDED
    description: str | None = None
    info_types: tuple[str, ...] = ()
    time_frame: str | None = None
    access_criteria: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class MeshTerm:
    id: str | None = None            # MeSH descriptor UI, e.g. D008180
    term: str | None = None


@dataclass(frozen=True)
class Study:
    identification: Identification = field(default_factory=Identification)
    status: Status | None = None
    sponsor_collaborators: SponsorCollaborators | None = None
    oversight: Oversight | None = None
    description: Description | None = None
    conditions: Conditions | None = None
    design: Design | None = None
    arms_interventions: ArmsInterventions | None = None
    outcomes: Outcomes | None = None
    eligibility: Eligibility | None = None
    contacts_locations: ContactsLocations | None = None
    references: References | None = None
    ipd_sharing: IpdSharing | None = None
    # MeSH terms CT.gov derives for the conditions (derivedSection.conditionBrowseModule.meshes);
    # kept structured because FHIR codes the conditions with them.
    condition_meshes: tuple[MeshTerm, ...] = ()
    intervention_meshes: tuple[MeshTerm, ...] = ()
    has_results: bool | None = None
    # opaque sections carried along (declared by writers that cannot carry them)
    results_section: Any = None
    annotation_section: Any = None
    document_section: Any = None
    derived_section: Any = None

    @property
    def key(self) -> str:
        """The record key used in reports and file names."""
        return self.identification.nct_id or (
            self.identification.org_study_id.id if self.identification.org_study_id
            and self.identification.org_study_id.id else "UNKNOWN")


#: The sections carried along as opaque JSON, by CT.gov name.
OPAQUE_SECTIONS = {
    "resultsSection": "results_section",
    "annotationSection": "annotation_section",
    "documentSection": "document_section",
    "derivedSection": "derived_section",
}


def iter_leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten a model instance into (path, value) pairs for the set (non-empty) scalar fields.

    Paths use model attribute names, list items as ``[i]``: ``arms_interventions.arm_groups[0].label``.
    Opaque sections are one leaf each. Used by the round-trip and lossy-report machinery.
    """
    out: list[tuple[str, Any]] = []
    if is_dataclass(obj):
        for f in fields(obj):
            val = getattr(obj, f.name)
            path = f"{prefix}.{f.name}" if prefix else f.name
            if f.name in OPAQUE_SECTIONS.values():
                if val not in (None, {}, []):
                    out.append((path, val))
                continue
            out.extend(iter_leaves(val, path))
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            out.extend(iter_leaves(item, f"{prefix}[{i}]"))
    elif obj is not None:
        out.append((prefix, obj))
    return out
