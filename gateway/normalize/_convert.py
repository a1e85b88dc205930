"""``to_fhir``: one parsed HL7 v2 message -> one FHIR R4 Bundle (type ``collection``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from gateway.normalize._adt import map_adt
from gateway.normalize._bundle import BundleBuilder
from gateway.normalize._datatypes import fhir_instant, resolve_tz
from gateway.normalize._errors import UnsupportedMessageType
from gateway.normalize._oru import map_oru
from gateway.normalize._reader import Hl7Message, parse_message

_Mapper = Callable[[Hl7Message, BundleBuilder, tzinfo], None]
_MAPPERS: dict[str, _Mapper] = {
    "ADT^A01": map_adt,
    "ADT^A04": map_adt,
    "ADT^A08": map_adt,
    "ORU^R01": map_oru,
}
HANDLED_TYPES: frozenset[str] = frozenset(_MAPPERS)


def to_fhir(msg: Hl7Message | bytes | str, *, timezone: str | tzinfo = "UTC") -> dict[str, Any]:
    """Map a message to a validated FHIR R4 Bundle (JSON dict).

    *timezone* (an IANA name or tzinfo) is the zone of timestamps sent without an
    offset. Raises :class:`UnsupportedMessageType` for types not in ``HANDLED_TYPES``
    and :class:`NormalizationError` for content that cannot be mapped faithfully.
    """
    if not isinstance(msg, Hl7Message):
        msg = parse_message(msg)
    mapper = _MAPPERS.get(msg.message_type)
    if mapper is None:
        raise UnsupportedMessageType(msg.message_type)
    try:
        tz = resolve_tz(timezone)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown timezone {timezone!r}") from exc
    out = BundleBuilder(msg)
    mapper(msg, out, tz)
    stamp = fhir_instant(msg.timestamp, "MSH-7", tz) if msg.timestamp.strip() else None
    return out.build(stamp)
