"""De-identification of FHIR R4 resources and free text: profiles, keyed pseudonyms, date shift.

    Deidentifier(pseudonym_key, dateshift_key, key_version="v1", shift_range_days=(-365, -1),
                 free_text="remove" | "tag" | "surrogate",
                 profile="safe-harbor" | "limited-data-set" | PATH | Profile)
        .deidentify(bundle_or_resource) -> DeidResult(subject, bundle, report, identifiers)
    load_profile(name_or_path) -> Profile       validated and compiled once; cached
    BUILTIN_PROFILES, DEFAULT_PROFILE ("safe-harbor")
    FreeTextScrubber(replacement="tag" | "surrogate", key=None)
        .find(text) -> [Span(start, end, category, rule)]; .scrub(text) -> Scrubbed
    pseudonym(key, key_version, system, value) -> "v1-<40 hex>"
    DeidentificationError  raised instead of emitting anything that could leak
    ProfileError           a profile is unknown or invalid (names the bad path)

Fail closed: only what the profile allowlists survives (``security/deid/profiles/``);
free text is removed unless a scrubbing mode is chosen. Reports name paths, categories
and rules, never values.
"""

from security.deid._engine import Deidentifier, DeidResult, FreeTextMode
from security.deid._errors import DeidentificationError, ProfileError
from security.deid._freetext import CATEGORIES, FreeTextScrubber, Scrubbed, Span
from security.deid._keyed import pseudonym
from security.deid._profile import BUILTIN_PROFILES, DEFAULT_PROFILE, Profile, load_profile

__all__ = [
    "BUILTIN_PROFILES",
    "CATEGORIES",
    "DEFAULT_PROFILE",
    "DeidResult",
    "DeidentificationError",
    "Deidentifier",
    "FreeTextMode",
    "FreeTextScrubber",
    "Profile",
    "ProfileError",
    "Scrubbed",
    "Span",
    "load_profile",
    "pseudonym",
]
