"""One module per SDTM subject domain: FHIR resource columns -> domain DataFrame."""
