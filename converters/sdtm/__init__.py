"""CDISC SDTM datasets: metadata, controlled terminology, Dataset-JSON/CSV I/O, trial design."""
