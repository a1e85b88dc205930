"""HL7 v2 data types -> FHIR R4 data types (JSON dicts), one function per type.

These work on a :class:`Segment` position rather than on strings so that each can read
the components and subcomponents it needs. They return ``None`` for an empty value so
callers can drop absent elements instead of emitting empty objects (which FHIR forbids).
Timestamp errors raise :class:`NormalizationError` naming the field, never the value.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from gateway.normalize._errors import NormalizationError
from gateway.normalize._reader import Segment

Json = dict[str, Any]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# Coding-system names of HL7 table 0396 -> canonical FHIR URIs.
_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNM3": SNOMED,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "SNOMED-CT": SNOMED,
    "UCUM": UCUM,
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
}
_HL7_TABLE = re.compile(r"^HL7(\d{4})$")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_URI_SAFE = "-._~!$'()*+,;=:@/"


def urn_id(name: str) -> str:
    """``urn:id:<name>`` with characters FHIR ``uri`` forbids (spaces, ...) percent-encoded."""
    return "urn:id:" + quote(name.strip(), safe=_URI_SAFE)


def coding_system(name: str) -> str | None:
    """Map a v2 coding-system name (CWE-3) to a FHIR system URI; None when not sent."""
    name = name.strip()
    if not name:
        return None
    known = _SYSTEMS.get(name.upper())
    if known:
        return known
    table = _HL7_TABLE.match(name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    return urn_id(name)


def assigner_system(namespace: str, universal_id: str, id_type: str) -> str | None:
    """Identifier.system from an HD (CX-4): ``urn:oid:`` for ISO OIDs, else ``urn:id:``."""
    universal_id = universal_id.strip()
    if universal_id and _OID.match(universal_id) and id_type.strip().upper() in ("ISO", ""):
        return f"urn:oid:{universal_id}"
    if namespace.strip():
        return urn_id(namespace)
    if universal_id:
        return urn_id(universal_id)
    return None


# --- coded values ------------------------------------------------------------------


def _coding(system_name: str, code: str, display: str) -> Json | None:
    if not code and not display:
        return None
    out: Json = {}
    system = coding_system(system_name)
    if system and code:
        out["system"] = system
    if code:
        out["code"] = code
    if display:
        out["display"] = display
    return out if code else None


def codeable(seg: Segment, idx: int, rep: int = 0) -> Json | None:
    """CE/CWE/CNE -> CodeableConcept: primary and alternate triplets, CWE-9 as text."""
    f = seg.field
    codings = [
        c
        for c in (
            _coding(f(idx, rep, 3), f(idx, rep, 1).strip(), f(idx, rep, 2)),
            _coding(f(idx, rep, 6), f(idx, rep, 4).strip(), f(idx, rep, 5)),
        )
        if c
    ]
    text = f(idx, rep, 9) or (f(idx, rep, 2) if not codings else "")
    if not codings and not text:
        return None
    out: Json = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out


def table_concept(code: str, system: str, display: str | None = None) -> Json:
    """A CodeableConcept with one coding from a known table."""
    coding: Json = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# --- identifiers, names, addresses, telecom ----------------------------------------


def identifier(seg: Segment, idx: int, rep: int = 0) -> Json | None:
    """CX -> Identifier: value CX-1, system from CX-4 (see :func:`assigner_system`), type CX-5."""
    value = seg.field(idx, rep, 1).strip()
    if not value:
        return None
    out: Json = {"value": value}
    system = assigner_system(
        seg.field(idx, rep, 4, 1), seg.field(idx, rep, 4, 2), seg.field(idx, rep, 4, 3)
    )
    if system:
        out["system"] = system
    id_type = seg.field(idx, rep, 5).strip()
    if id_type:
        out["type"] = table_concept(id_type, V2_0203)
    return out


_NAME_USE = {
    "L": "official",
    "C": "official",
    "D": "usual",
    "A": "usual",
    "T": "usual",
    "M": "maiden",
    "N": "nickname",
    "S": "anonymous",
    "B": "old",
    "BAD": "old",
    "NOUSE": "old",
    "TEMP": "temp",
}


def human_name(seg: Segment, idx: int, rep: int = 0) -> Json | None:
    """XPN -> HumanName (family XPN-1.1, given XPN-2 and XPN-3, prefix/suffix, use XPN-7)."""
    f = seg.field
    out: Json = {}
    family = f(idx, rep, 1, 1)
    given = [g for g in (f(idx, rep, 2), f(idx, rep, 3)) if g]
    if family:
        out["family"] = family
    if given:
        out["given"] = given
    if f(idx, rep, 5):
        out["prefix"] = [f(idx, rep, 5)]
    suffix = [s for s in (f(idx, rep, 4), f(idx, rep, 6)) if s]
    if suffix:
        out["suffix"] = suffix
    if not out:
        return None
    use = _NAME_USE.get(f(idx, rep, 7).strip().upper())
    if use:
        out["use"] = use
    return out


_ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "OLD": "old"}


def address(seg: Segment, idx: int, rep: int = 0) -> Json | None:
    """XAD -> Address (lines from XAD-1 subcomponents and XAD-2, city, state, zip, country)."""
    f = seg.field
    lines = [
        x for x in (f(idx, rep, 1, 1), f(idx, rep, 1, 2), f(idx, rep, 1, 3), f(idx, rep, 2)) if x
    ]
    out: Json = {}
    if lines:
        out["line"] = lines
    for comp, key in ((3, "city"), (4, "state"), (5, "postalCode"), (6, "country")):
        value = f(idx, rep, comp)
        if value:
            out[key] = value
    if not out:
        return None
    use = _ADDRESS_USE.get(f(idx, rep, 7).strip().upper())
    if use:
        out["use"] = use
    elif f(idx, rep, 7).strip().upper() == "M":
        out["type"] = "postal"
    return out


_TELECOM_USE = {
    "PRN": "home",
    "ORN": "home",
    "VHN": "home",
    "WPN": "work",
    "NET": None,
    "EMR": None,
    "ASN": None,
    "BPN": None,
}
_TELECOM_SYSTEM = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "TDD": "other",
    "TTY": "other",
    "MD": "other",
    "SAT": "phone",
}


def contact_point(seg: Segment, idx: int, rep: int, default_use: str) -> Json | None:
    """XTN -> ContactPoint. The number comes from XTN-1, or is built from XTN-5..8."""
    f = seg.field
    equipment = f(idx, rep, 3).strip().upper()
    email = f(idx, rep, 4).strip()
    number = f(idx, rep, 1).strip()
    if not number:
        parts = [f(idx, rep, 5), f(idx, rep, 6), f(idx, rep, 7)]
        number = " ".join(p.strip() for p in parts if p.strip())
        if number and f(idx, rep, 8).strip():
            number += " x" + f(idx, rep, 8).strip()
    system = _TELECOM_SYSTEM.get(equipment, "phone")
    if email and (equipment in ("INTERNET", "X.400") or not number):
        number, system = email, "email"
    if not number:
        return None
    out: Json = {"system": system, "value": number}
    use_code = f(idx, rep, 2).strip().upper()
    use = _TELECOM_USE.get(use_code, default_use)
    if equipment == "CP":
        use = "mobile"
    if use:
        out["use"] = use
    return out


_GENDER = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "N": "other",
    "U": "unknown",
    "MALE": "male",
    "FEMALE": "female",
    "OTHER": "other",
    "UNKNOWN": "unknown",
}


def gender(value: str) -> str | None:
    """Administrative sex (table 0001, or the spelled-out words some senders use)."""
    return _GENDER.get(value.strip().upper())


def location_display(seg: Segment, idx: int) -> str | None:
    """PL -> one display string: point of care, room, bed, facility, building, floor."""
    f = seg.field
    parts = [f(idx, 0, c, 1) for c in (1, 2, 3, 4, 7, 8)]
    text = ", ".join(p.strip() for p in parts if p.strip())
    return text or None


# --- timestamps ----------------------------------------------------------------------

_TS = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?$"
)


def resolve_tz(tz: str | tzinfo) -> tzinfo:
    """A tzinfo from an IANA name ("Europe/London", "UTC") or a tzinfo."""
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _parse(value: str, where: str) -> re.Match[str] | None:
    value = value.strip()
    if not value:
        return None
    m = _TS.match(value)
    if not m:
        raise NormalizationError(f"{where} invalid: not an HL7 timestamp (YYYYMMDDHHMMSS+ZZZZ)")
    return m


def _date_part(m: re.Match[str], where: str) -> str:
    year, month, day = m.group(1), m.group(2), m.group(3)
    try:
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise NormalizationError(f"{where} invalid: not a calendar date") from None
    return "-".join(p for p in (year, month, day) if p)


def fhir_date(value: str, where: str) -> str | None:
    """HL7 DT/DTM -> FHIR ``date`` at the precision sent (time of day dropped)."""
    m = _parse(value, where)
    return _date_part(m, where) if m else None


@functools.lru_cache(maxsize=64)
def fhir_datetime(value: str, where: str, tz: tzinfo) -> str | None:
    """HL7 DTM -> FHIR ``dateTime``.

    Memoised (a few recent values, in memory only): a message repeats its observation time
    in MSH-7, OBR-7 and every OBX-14, and this parse is a tenth of the mapping's CPU.

    Date-only precision stays a date; any time of day is written to the second (FHIR
    requires seconds and a zone once there is a time). A value without an offset is
    local time in *tz*.
    """
    m = _parse(value, where)
    if not m:
        return None
    date = _date_part(m, where)
    if not m.group(4):
        return date
    hour, minute, second = int(m.group(4)), int(m.group(5) or 0), int(m.group(6) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise NormalizationError(f"{where} invalid: time of day out of range")
    if m.group(8):
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 14 or off_m > 59:
            raise NormalizationError(f"{where} invalid: UTC offset out of range")
        sign = -1 if m.group(8) == "-" else 1
        offset = timedelta(seconds=sign * (off_h * 3600 + off_m * 60))
    else:
        naive = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), hour, minute, second)
        local_offset = naive.replace(tzinfo=tz).utcoffset()
        offset = local_offset if local_offset is not None else timedelta(0)
    total = int(offset.total_seconds())
    sign_char = "-" if total < 0 else "+"
    total = abs(total)
    frac = f".{m.group(7)}" if m.group(7) else ""
    zone = f"{sign_char}{total // 3600:02d}:{total % 3600 // 60:02d}"
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}{frac}{zone}"


def fhir_instant(value: str, where: str, tz: tzinfo) -> str | None:
    """HL7 DTM -> FHIR ``instant``; None when the value has no time of day."""
    out = fhir_datetime(value, where, tz)
    return out if out and "T" in out else None
