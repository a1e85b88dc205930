"""Envelope checks the MLLP listener runs before it commits a frame and ACKs it.

Only what the listener needs to decide AA versus AE/AR, and to address the ACK, is
checked here: an MSH first, usable delimiters, a message type and a control id, one
message per frame. Mapping problems are found later by
:func:`to_fhir` and end as dispositions, because by then the sender has its AA.

ACK codes follow HL7 v2 original acknowledgment mode: AR (reject) when the envelope
itself is unusable, AE (error) when the envelope is fine but the content is not.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from gateway.normalize._charset import decode_payload
from gateway.normalize._errors import AckCode, ErrorCode, Hl7EnvelopeError, Hl7ParseError
from gateway.normalize._reader import parse_message, split_segments

_MSG_CODE = re.compile(r"^[A-Z0-9]{3}$")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The routing facts of a message (MSH); no patient data."""

    field_sep: str
    encoding_chars: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    control_id: str
    processing_id: str
    version: str


def _fail(reason: str, code: ErrorCode, location: str, ack: AckCode = "AR") -> Hl7EnvelopeError:
    return Hl7EnvelopeError(reason, code, location, ack)


def _check_delimiters(header: str) -> None:
    if len(header) < 8:
        raise _fail("MSH truncated: MSH-1 and MSH-2 are required", "101", "MSH^1^1")
    fs = header[3]
    if fs.isalnum() or fs.isspace():
        raise _fail(
            "MSH-1 invalid: field separator must be one non-alphanumeric character",
            "102",
            "MSH^1^1",
        )
    end = header.find(fs, 4)
    msh2 = header[4:] if end < 0 else header[4:end]
    if len(msh2) == 5 and msh2[2] == msh2[3]:
        msh2 = msh2[:3] + msh2[4]  # doubled escape character: a known sender bug, tolerated
    if not 4 <= len(msh2) <= 5:
        raise _fail("MSH-2 invalid: 4 or 5 encoding characters are required", "102", "MSH^1^2")
    if len(set(msh2 + fs)) != len(msh2) + 1:
        raise _fail(
            "MSH-2 invalid: encoding characters must be distinct from each other and MSH-1",
            "102",
            "MSH^1^2",
        )
    if any(c.isalnum() or c.isspace() for c in msh2):
        raise _fail(
            "MSH-2 invalid: encoding characters must not be alphanumeric or whitespace",
            "102",
            "MSH^1^2",
        )


def validate_envelope(raw: bytes, accepted_types: Collection[str] | None = None) -> Envelope:
    """Check a frame's envelope and return its routing facts, or raise :class:`Hl7EnvelopeError`.

    With *accepted_types* (``{"ADT^A01", ...}``), other message types are rejected with
    table 0357 code 200; by default every type is accepted and filtering happens later.
    """
    text = decode_payload(raw)
    lines = split_segments(text)
    if not lines:
        raise _fail("message empty: an MSH segment is required", "100", "MSH^1")
    header = lines[0]
    if not header.startswith("MSH"):
        raise _fail("MSH missing: the first segment must be MSH", "100", "MSH^1")
    _check_delimiters(header)
    try:
        msg = parse_message(text)
    except Hl7ParseError as exc:  # pragma: no cover - _check_delimiters is stricter
        raise _fail(exc.reason, "102", "MSH^1^2") from None
    for n, seg in enumerate(msg, start=1):
        if n > 1 and seg.name == "MSH":
            raise _fail(
                f"segment {n} is a second MSH: send one message per frame", "100", f"MSH^{n}"
            )
    if not msg.message_code:
        raise _fail("MSH-9 missing: message type is required", "101", "MSH^1^9")
    if not _MSG_CODE.match(msg.message_code):
        raise _fail(
            "MSH-9.1 invalid: message code must be 3 letters or digits", "102", "MSH^1^9^1^1"
        )
    if not msg.trigger:
        raise _fail("MSH-9.2 missing: trigger event is required", "101", "MSH^1^9^1^2")
    if not _MSG_CODE.match(msg.trigger):
        raise _fail(
            "MSH-9.2 invalid: trigger event must be 3 letters or digits", "102", "MSH^1^9^1^2"
        )
    if not msg.control_id.strip():
        raise _fail("MSH-10 missing: message control id is required", "101", "MSH^1^10")
    if accepted_types is not None and msg.message_type not in accepted_types:
        raise _fail(
            f"message type {msg.message_type} is not supported by this receiver",
            "200",
            "MSH^1^9",
        )
    return Envelope(
        field_sep=msg.encoding.field,
        encoding_chars=msg.encoding.msh2,
        sending_application=msg.sending_application,
        sending_facility=msg.sending_facility,
        receiving_application=msg.receiving_application,
        receiving_facility=msg.receiving_facility,
        message_type=msg.message_type,
        control_id=msg.control_id,
        processing_id=msg.processing_id,
        version=msg.version,
    )
