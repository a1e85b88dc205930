"""Every error the normalize package raises, and what the pipeline does with each.

    Exception
     └── Hl7Error                   base of everything raised here
          ├── Hl7EnvelopeError      ingest, before the durable commit: NAK with AE/AR,
          │                         an HL7 table 0357 code and an ERL-style location
          ├── UnsupportedMessageType  a well-formed message of a type we do not map:
          │                         the pipeline's disposition is ``filtered``
          └── NormalizationError    content we cannot map faithfully (no PID, OBX
               │                    before OBR, ...): disposition ``dead_lettered``
               └── Hl7ParseError    the text is not HL7 v2 at all (no MSH, bad
                                    encoding characters)

Messages name the segment, field and rule that failed, never a field value: the
values are PHI and error strings end up in dispositions, ACKs and logs.
"""

from __future__ import annotations

from typing import Literal

AckCode = Literal["AE", "AR"]
ErrorCode = Literal["100", "101", "102", "200", "207"]


class Hl7Error(Exception):
    """Base class of all normalize errors."""


class NormalizationError(Hl7Error):
    """The message cannot be mapped to FHIR faithfully; ``reason`` says where and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Hl7ParseError(NormalizationError):
    """The text cannot be read as HL7 v2 (no MSH segment, unusable encoding characters)."""


class UnsupportedMessageType(Hl7Error):
    """A well-formed message whose type (``"ORM^O01"``) this package does not map."""

    def __init__(self, message_type: str) -> None:
        super().__init__(f"message type {message_type or '(empty)'} is not handled")
        self.message_type = message_type


class Hl7EnvelopeError(Hl7Error):
    """The envelope (MSH) is unacceptable; the listener NAKs without storing the message.

    ``code`` is an HL7 table 0357 message error condition code, ``location`` an ERR-2
    style location (``"MSH^1^9"``), ``ack_code`` the MSA-1 to answer with.
    """

    def __init__(self, reason: str, code: ErrorCode, location: str, ack_code: AckCode) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.location = location
        self.ack_code = ack_code
