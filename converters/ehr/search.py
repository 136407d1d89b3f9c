"""FHIR REST search: follow ``Bundle.link[next]`` to the end, one NDJSON file per resource type.

For servers without Bulk Data, or one study's research subjects and what they reference:
:func:`run_study_search` reads ``ResearchSubject?study=ResearchStudy/{id}``, then the patients they
point at and each subject-data resource type for those patients, in follow-up searches (portable
across servers, unlike ``_include``/``_revinclude``, which a ``--search`` query may still use).
Pages are processed one at a time and written straight to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report import ConversionReport, Kind
from .client import FhirClient
from .errors import PullError, ServerRefused
from .files import NdjsonSink, Progress

log = logging.getLogger("trialbridge.ehr")

#: Subject-data resource types pulled for a study, with the search parameter naming the patient.
STUDY_TYPES: dict[str, str] = {
    "Observation": "subject", "Condition": "subject", "Encounter": "subject",
    "AdverseEvent": "subject", "MedicationAdministration": "subject",
    "MedicationStatement": "subject", "MedicationRequest": "subject", "Procedure": "subject",
    "Consent": "patient",
}
#: Patients per follow-up search (keeps URLs short).
CHUNK = 20


@dataclass
class SearchResult:
    files: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    pages: int = 0


def search_pages(client: FhirClient, query: str, *, max_pages: int) -> Iterator[dict[str, Any]]:
    """Each page (a searchset Bundle) of ``query``, following ``link[next]``; bounded."""
    url: str | None = client.url(query)
    seen: set[str] = set()
    pages = 0
    while url:
        if not client.same_origin(url):
            raise PullError(f"the next-page link leads to another server ({client.safe_url(url)}); "
                            "refusing to send it the credentials")
        if url in seen:
            raise PullError(f"paging loops: {client.safe_url(url)} came back as a next link")
        if pages >= max_pages:
            raise PullError(f"more than --max-pages {max_pages} pages for one search; "
                            "raise the limit or narrow the search")
        seen.add(url)
        bundle = client.get_json(url)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise PullError(f"GET {client.safe_url(url)}: the answer is not a Bundle")
        pages += 1
        yield bundle
        nxt = next((link.get("url") for link in bundle.get("link") or []
                    if isinstance(link, dict) and link.get("relation") == "next"), None)
        url = client.resolve(nxt, url) if isinstance(nxt, str) and nxt else None


def _consume(client: FhirClient, query: str, sink: NdjsonSink, report: ConversionReport,
             result: SearchResult, *, max_pages: int) -> list[dict[str, Any]]:
    """Write every resource of every page to ``sink``; return the matches' small references
    needed for follow-up searches (ResearchSubject patient references only)."""
    refs: list[dict[str, Any]] = []
    for bundle in search_pages(client, query, max_pages=max_pages):
        result.pages += 1
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            mode = (entry.get("search") or {}).get("mode")
            if mode == "outcome" or (resource.get("resourceType") == "OperationOutcome"
                                     and mode != "match"):
                for issue in resource.get("issue") or []:
                    report.add(Kind.MISSING, "the server attached a warning to a search "
                               f"({issue.get('severity')}: {issue.get('code')})",
                               rule="search-outcome", source="Bundle.entry.search.mode=outcome",
                               value=issue.get("diagnostics"))
                continue
            sink.write(resource)
            if resource.get("resourceType") == "ResearchSubject":
                # R4 names the patient ResearchSubject.individual, R5 ResearchSubject.subject
                ref = resource.get("individual") or resource.get("subject")
                if isinstance(ref, dict):
                    refs.append(ref)
    return refs


def run_search(client: FhirClient, queries: Sequence[str], outdir: Path, *, max_pages: int,
               progress: Progress, report: ConversionReport) -> SearchResult:
    result = SearchResult()
    sink = NdjsonSink(outdir)
    try:
        for query in queries:
            progress.note(f"searching {query.split('?', 1)[0]}")
            _consume(client, query, sink, report, result, max_pages=max_pages)
        result.files = sink.commit()
    finally:
        sink.discard()
    result.counts = dict(sorted(sink.counts.items()))
    return result


def run_study_search(client: FhirClient, study: str, outdir: Path, *, types: Sequence[str],
                     max_pages: int, progress: Progress, report: ConversionReport) -> SearchResult:
    """The study, its research subjects, their patients and their subject data."""
    result = SearchResult()
    sink = NdjsonSink(outdir)
    wanted = {t: STUDY_TYPES.get(t, "subject") for t in (types or STUDY_TYPES)}
    try:
        progress.note(f"searching ResearchStudy/{study} and its research subjects")
        _consume(client, f"ResearchStudy?_id={study}", sink, report, result, max_pages=max_pages)
        refs = _consume(client, f"ResearchSubject?study=ResearchStudy/{study}", sink, report,
                        result, max_pages=max_pages)
        patients = sorted({r["reference"] for r in refs
                           if isinstance(r.get("reference"), str)
                           and r["reference"].startswith("Patient/")})
        if not patients:
            report.add(Kind.MISSING, f"ResearchStudy/{study} has no research subjects that "
                       "reference a Patient on this server", rule="study-search")
        for i in range(0, len(patients), CHUNK):
            chunk = patients[i:i + CHUNK]
            ids = ",".join(p.split("/", 1)[1] for p in chunk)
            if "Patient" in wanted or not types:
                _consume(client, f"Patient?_id={ids}", sink, report, result, max_pages=max_pages)
            for rtype, param in wanted.items():
                if rtype in ("Patient", "ResearchSubject", "ResearchStudy"):
                    continue
                try:
                    _consume(client, f"{rtype}?{param}={','.join(chunk)}", sink, report, result,
                             max_pages=max_pages)
                except ServerRefused as exc:
                    if exc.status not in (400, 404, 422):
                        raise
                    # a server without this resource type or search parameter: say so, go on
                    report.add(Kind.MISSING, f"the server refused the {rtype} search "
                               f"(HTTP {exc.status})", rule="study-search", target=rtype)
        progress.note(f"{len(patients)} patient(s) in ResearchStudy/{study}")
        result.files = sink.commit()
    finally:
        sink.discard()
    result.counts = dict(sorted(sink.counts.items()))
    return result
