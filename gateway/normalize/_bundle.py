"""Assembling the output Bundle: stable entry ids, references, and validation.

Entry ``fullUrl``s are ``urn:uuid:`` UUIDv5s derived from the sender (MSH-3/MSH-4),
the control id (MSH-10) and the entry's position, so re-processing the same message
(a replay, an at-least-once redelivery) yields the same ids. References between
entries use those fullUrls. The finished Bundle is validated with the
``fhir.resources`` R4B models (R4B is wire-compatible with R4 for every resource
emitted here); validation errors are reported by path and error type, never input.
The JSON returned is the dict that was validated, so it is plain JSON (no Decimal).
"""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from gateway.normalize._datatypes import Json
from gateway.normalize._errors import NormalizationError
from gateway.normalize._reader import Hl7Message

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://wardgate.invalid/normalize/hl7v2")


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
        uid = str(uuid.uuid5(_NAMESPACE, f"{self._seed}|{len(self._entries)}"))
        resource["id"] = uid
        full_url = f"urn:uuid:{uid}"
        self._entries.append({"fullUrl": full_url, "resource": resource})
        return full_url

    def build(self, timestamp: str | None) -> dict[str, Any]:
        """The validated Bundle (type ``collection``) as FHIR JSON."""
        bundle: Json = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid5(_NAMESPACE, f"{self._seed}|bundle")),
            "type": "collection",
            "entry": self._entries,
        }
        if timestamp:
            bundle["timestamp"] = timestamp
        try:
            Bundle.model_validate(bundle)
        except ValidationError as exc:
            raise NormalizationError(_describe(exc, self._entries)) from None
        # The model validated what we built; returning our dict (decimals made JSON
        # numbers) rather than model_dump() halves the cost per message.
        out: dict[str, Any] = _jsonable(bundle)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and "." not in str(value)
            else float(value)
        )
    return value


def _describe(exc: ValidationError, entries: list[Json]) -> str:
    """A validation failure as ``FHIR validation failed: Observation.valueQuantity.value
    (decimal_parsing)`` - the location and the error type only, no input values."""
    problems = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 3 and loc[0] == "entry" and loc[1].isdigit() and loc[2] == "resource":
            kind = entries[int(loc[1])]["resource"].get("resourceType", "resource")
            loc = [str(kind), *loc[3:]]
        problems.append(f"{'.'.join(loc)} ({err['type']})")
    return "FHIR validation failed: " + "; ".join(problems)
