"""Keyed derivations: pseudonyms, resource ids and the per-patient date offset.

All are HMAC-SHA256 so they are stable for one key and unlinkable without it. Each use
has its own input shape (or key) so a value from one domain never collides with another.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_VERSION = re.compile(r"^[A-Za-z0-9.]{1,16}$")
_HEX_CHARS = 40


def _check_version(key_version: str) -> None:
    if not _VERSION.match(key_version):
        raise ValueError("key_version must be 1-16 characters of [A-Za-z0-9.]")


def check_keys(
    pseudonym_key: bytes, dateshift_key: bytes, key_version: str, shift_range: tuple[int, int]
) -> None:
    """Raise ``ValueError`` now for keys, a version or a range the derivations would refuse
    later: each de-identifier checks them once, when it is built."""
    if len(pseudonym_key) < 16 or len(dateshift_key) < 16:
        raise ValueError("pseudonym and date-shift keys must be at least 16 bytes")
    date_offset(dateshift_key, "", shift_range)
    _check_version(key_version)


def pseudonym(key: bytes, key_version: str, system: str, value: str) -> str:
    """The subject pseudonym of one identifier: ``<version>-<40 hex>``, a valid FHIR id.

    HMAC-SHA256 over ``system|value`` (UTF-8). The API uses this to find a subject by a
    real identifier, so the input shape is part of the contract: don't change it
    without bumping ``key_version``.
    """
    _check_version(key_version)
    digest = hmac.new(key, f"{system}|{value}".encode(), hashlib.sha256).hexdigest()
    return f"{key_version}-{digest[:_HEX_CHARS]}"


def resource_id(key: bytes, key_version: str, original: str) -> str:
    """A stable id for a non-patient resource, derived from its original fullUrl/id."""
    _check_version(key_version)
    msg = b"wardgate-resource\x00" + original.encode()
    digest = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return f"{key_version}-{digest[:_HEX_CHARS]}"


def date_offset(key: bytes, subject: str, shift_range_days: tuple[int, int]) -> int:
    """The patient's date shift in days, uniform over ``shift_range_days`` (inclusive)."""
    low, high = shift_range_days
    if low > high:
        raise ValueError("shift_range_days must be (low, high) with low <= high")
    digest = hmac.new(key, b"wardgate-dateshift\x00" + subject.encode(), hashlib.sha256).digest()
    return low + int.from_bytes(digest[:8], "big") % (high - low + 1)
