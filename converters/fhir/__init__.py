"""Readers and writers for HL7 FHIR R4/R5 resources."""
