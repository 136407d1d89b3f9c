"""Submission package: SAS XPT v5, Define-XML 2.1, conformance checks, package layout."""
