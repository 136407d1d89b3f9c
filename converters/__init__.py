"""trialbridge: ClinicalTrials.gov <-> HL7 FHIR (R4/R5) <-> CDISC SDTM.

Installed as the ``trialbridge`` package from the ``converters/`` source folder
(see setup.cfg ``package_dir``).
"""

__version__ = "0.1.0"
