"""Mapping specs and code tables (package data; see README.md in this folder)."""
