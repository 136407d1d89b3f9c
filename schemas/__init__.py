"""Metadata that drives outputs: report schema, SDTM metadata, Dataset-JSON schema (package data)."""
