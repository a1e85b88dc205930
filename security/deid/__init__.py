"""De-identification of FHIR R4 Bundles: Safe Harbor, keyed pseudonyms, date shift.

    Deidentifier(pseudonym_key, dateshift_key, key_version="v1", shift_range_days=(-365, -1))
        .deidentify(bundle) -> DeidResult(subject, bundle, report, identifiers)
    pseudonym(key, key_version, system, value) -> "v1-<40 hex>"
    DeidentificationError  raised instead of emitting anything that could leak

Fail closed: only allowlisted elements of allowlisted resource types survive
(``security/deid/_rules.py``); the report names paths and rules, never values.
"""

from security.deid._engine import Deidentifier, DeidResult
from security.deid._errors import DeidentificationError
from security.deid._keyed import pseudonym

__all__ = ["DeidResult", "DeidentificationError", "Deidentifier", "pseudonym"]
