"""De-identification of FHIR R4 Bundles and free text: Safe Harbor, keyed pseudonyms, date shift.

    Deidentifier(pseudonym_key, dateshift_key, key_version="v1", shift_range_days=(-365, -1),
                 free_text="remove" | "tag" | "surrogate")
        .deidentify(bundle) -> DeidResult(subject, bundle, report, identifiers)
    FreeTextScrubber(replacement="tag" | "surrogate", key=None)
        .find(text) -> [Span(start, end, category, rule)]; .scrub(text) -> Scrubbed
    pseudonym(key, key_version, system, value) -> "v1-<40 hex>"
    DeidentificationError  raised instead of emitting anything that could leak

Fail closed: only allowlisted elements of allowlisted resource types survive
(``security/deid/_rules.py``); free text is removed unless a scrubbing mode is chosen.
Reports name paths, categories and rules, never values.
"""

from security.deid._engine import Deidentifier, DeidResult, FreeTextMode
from security.deid._errors import DeidentificationError
from security.deid._freetext import CATEGORIES, FreeTextScrubber, Scrubbed, Span
from security.deid._keyed import pseudonym

__all__ = [
    "CATEGORIES",
    "DeidResult",
    "DeidentificationError",
    "Deidentifier",
    "FreeTextMode",
    "FreeTextScrubber",
    "Scrubbed",
    "Span",
    "pseudonym",
]
