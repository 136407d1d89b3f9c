"""One module per SDTM subject domain: FHIR resource columns -> domain DataFrame.

Every module in this package is imported when the engine starts, and registers its
:class:`~trialbridge.subject.base.DomainPlugin` (see :mod:`trialbridge.subject.base` for the contract).
Adding a domain = adding a module here; nothing else to wire.
"""

from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
