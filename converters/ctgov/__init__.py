"""Readers and writers for ClinicalTrials.gov records (API v2 JSON, legacy XML, printouts)."""
