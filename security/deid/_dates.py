"""FHIR date/dateTime/instant shifting that keeps precision and the literal time zone.

Only the calendar part moves: the time of day and the offset are copied verbatim, so
intervals between one patient's events survive exactly. A reduced-precision value
(``2020`` or ``2020-03``) is shifted from the middle of its span, then truncated back.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

_FHIR_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?P<time>T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _parts(value: str) -> tuple[date, int, str] | None:
    """(a representative calendar day, precision 1..3, the verbatim time suffix)."""
    match = _FHIR_DATE.match(value)
    if match is None:
        return None
    year = int(match["y"])
    try:
        if match["m"] is None:
            return date(year, 7, 2), 1, ""
        if match["d"] is None:
            return date(year, int(match["m"]), 15), 2, ""
        return date(year, int(match["m"]), int(match["d"])), 3, match["time"] or ""
    except ValueError:
        return None


def shift_date(value: str, days: int) -> str | None:
    """``value`` moved by ``days``; None if it is not a FHIR date/dateTime/instant."""
    parts = _parts(value)
    if parts is None:
        return None
    day, precision, time = parts
    try:
        moved = day + timedelta(days=days)
    except OverflowError:
        return None
    text = moved.isoformat()
    return (text[:4], text[:7], text + time)[precision - 1]


def oldest_possible_age(birth: str, today: date) -> int | None:
    """Age in whole years today if born at the earliest instant ``birth`` allows."""
    match = _FHIR_DATE.match(birth)
    if match is None:
        return None
    try:
        born = date(int(match["y"]), int(match["m"] or 1), int(match["d"] or 1))
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
