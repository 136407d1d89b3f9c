"""Subject data: FHIR resources <-> SDTM domains, column by column."""
