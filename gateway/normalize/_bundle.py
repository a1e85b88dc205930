"""Assembling the output Bundle: stable entry ids, references, and validation.

Entry ``fullUrl``s are ``urn:uuid:`` UUIDv5s derived from the sender (MSH-3/MSH-4),
the control id (MSH-10) and the entry's position, so re-processing the same message
(a replay, an at-least-once redelivery) yields the same ids. References between
entries use those fullUrls. The finished Bundle is checked against the R4B element
rules by ``_conform`` (ADR 6: the ``fhir.resources`` models' tables, without building
the models; R4B is wire-compatible with R4 for every resource emitted here); failures
are reported by path and rule, never input. The JSON returned is the dict that was
checked, its decimals made JSON numbers.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from gateway.normalize._conform import check_bundle
from gateway.normalize._datatypes import Json
from gateway.normalize._reader import Hl7Message

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://wardgate.invalid/normalize/hl7v2")
_PREFIX = _NAMESPACE.bytes


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NAMESPACE, name))`` without building UUID objects (3x faster)."""
    raw = bytearray(hashlib.sha1(_PREFIX + name.encode(), usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _seed(msg: Hl7Message) -> str:
    control_id = msg.control_id.strip()
    if control_id:
        return f"{msg.sending_application}^{msg.sending_facility}|{control_id}"
    text = "\r".join("\x1f".join(s.fields) for s in msg)  # no MSH-10: use the content
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class BundleBuilder:
    """Collects resources in order; :meth:`add` returns the new entry's fullUrl."""

    def __init__(self, msg: Hl7Message) -> None:
        self._seed = _seed(msg)
        self._entries: list[Json] = []

    def add(self, resource: Json) -> str:
        uid = _uuid5(f"{self._seed}|{len(self._entries)}")
        resource["id"] = uid
        full_url = f"urn:uuid:{uid}"
        self._entries.append({"fullUrl": full_url, "resource": resource})
        return full_url

    def build(self, timestamp: str | None) -> dict[str, Any]:
        """The validated Bundle (type ``collection``) as FHIR JSON."""
        bundle: Json = {
            "resourceType": "Bundle",
            "id": _uuid5(f"{self._seed}|bundle"),
            "type": "collection",
            "entry": self._entries,
        }
        if timestamp:
            bundle["timestamp"] = timestamp
        check_bundle(bundle)  # raises NormalizationError; Decimals become JSON numbers
        return bundle
