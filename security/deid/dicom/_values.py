"""Value transforms for the DICOM engine: dummies, empties, UIDs, dates, ages, issuers.

Pure functions of a value (and a key or an offset); none of them logs or raises with
the value in the message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Final
from urllib.parse import quote

from pydicom.dataelem import empty_value_for_VR
from pydicom.uid import UID

from security.deid._dates import shift_date
from security.deid.dicom._rules import DICOM_ROOT

DUMMY_TEXT: Final = "ANONYMIZED"
_DUMMIES: Final[dict[str, Any]] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "UC": DUMMY_TEXT,
    "UR": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "DS": "0",
    "IS": "0",
}
_NUMERIC: Final = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
_ZERO_BYTES: Final = b"\x00" * 8  # a whole number of OB/OW/OF/OL/OD/OV units

_DA: Final = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DA_OLD: Final = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA
_DT: Final = re.compile(
    r"^(?P<y>\d{4})(?:(?P<m>\d{2})(?:(?P<d>\d{2})"
    r"(?P<time>\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)
_AS: Final = re.compile(r"^(\d{3})([DWMY])$")
_OID: Final = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_URI_SAFE: Final = "-._~!$'()*+,;=:@/"
_MAX_AGE: Final = 89


def dummy(vr: str) -> Any:
    """A non-empty stand-in valid for ``vr`` (``D``); UI and SQ are handled by the engine."""
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _NUMERIC:
        return 0
    return _ZERO_BYTES


def empty(vr: str) -> Any:
    """The zero-length value for ``vr`` (``Z``)."""
    return empty_value_for_VR(vr)


def uid_key(pseudonym_key: bytes) -> bytes:
    """The key for UID remapping, separate from the pseudonym key's other uses."""
    return hmac.new(pseudonym_key, b"wardgate-dicom-uid-key", hashlib.sha256).digest()


def remap_uid(key: bytes, uid: str) -> str:
    """``2.25.<n>``: ``n`` is a version-8 UUID made of HMAC-SHA256(key, uid), as a decimal.

    The same original UID maps to the same new UID in every process that holds the key,
    so references between instances (and inside sequences) stay consistent.
    """
    digest = hmac.new(key, uid.strip("\x00 ").encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest[:16], "big")
    n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8 (RFC 9562: custom)
    n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC variant
    return f"2.25.{n}"


def is_well_known_uid(uid: str) -> bool:
    """A UID defined by the standard (registry or the DICOM root): no instance, no patient."""
    text = uid.strip("\x00 ")
    return text.startswith(DICOM_ROOT) or UID(text).name != text


def shift_da(value: str, days: int) -> str | None:
    """A DICOM DA moved by ``days``; None if it is not a DA."""
    text = value.strip()
    match = _DA.match(text) or _DA_OLD.match(text)
    if match is None:
        return None
    shifted = shift_date(f"{match[1]}-{match[2]}-{match[3]}", days)
    return shifted.replace("-", "") if shifted is not None else None


def shift_dt(value: str, days: int) -> str | None:
    """A DICOM DT moved by ``days`` at its own precision; time and offset kept verbatim."""
    match = _DT.match(value.strip())
    if match is None:
        return None
    fhir = "-".join(part for part in (match["y"], match["m"], match["d"]) if part)
    shifted = shift_date(fhir, days)
    if shifted is None:
        return None
    return shifted.replace("-", "") + (match["time"] or "") + (match["tz"] or "")


def generalize_age(value: str) -> tuple[str, bool] | None:
    """(AS value, whether it changed): ages over 89 years become ``090Y``; None if not AS."""
    match = _AS.match(value.strip())
    if match is None:
        return None
    if match[2] == "Y" and int(match[1]) > _MAX_AGE:
        return "090Y", True
    return value.strip(), False


def issuer_system(namespace: str, universal_id: str, id_type: str) -> str | None:
    """The FHIR Identifier.system the HL7 v2 normalizer gives this assigning authority.

    Mirrors ``gateway.normalize`` (CX-4): ``urn:oid:<uid>`` for an ISO universal id,
    else ``urn:id:<namespace>`` (percent-encoded), so a DICOM PatientID and the PID-3
    of the same patient get the same pseudonym.
    """
    universal_id = universal_id.strip()
    if universal_id and _OID.match(universal_id) and id_type.strip().upper() in ("ISO", ""):
        return f"urn:oid:{universal_id}"
    name = namespace.strip() or universal_id
    return "urn:id:" + quote(name, safe=_URI_SAFE) if name else None
