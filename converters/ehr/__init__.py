"""EHR pull: FHIR REST search with paging and Bulk Data $export, SMART backend-services auth."""
