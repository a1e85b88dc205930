"""HL7 v2 in, FHIR R4 out: the first half of the normalize + de-identify stage.

    validate_envelope(raw) -> Envelope      ingest, before the durable commit (AA/AE/AR)
    parse_message(raw)     -> Hl7Message     a fast positional reader (MSH-1/2 honoured)
    to_fhir(msg)           -> Bundle JSON    ADT^A01/A04/A08 and ORU^R01 (HANDLED_TYPES)

Errors (see ``_errors``): ``Hl7EnvelopeError`` (NAK), ``UnsupportedMessageType``
(disposition ``filtered``), ``NormalizationError`` and its ``Hl7ParseError``
(disposition ``dead_lettered``). No error message or log line carries a field value.
"""

from gateway.normalize._convert import HANDLED_TYPES, to_fhir
from gateway.normalize._delimiters import DEFAULT_ENCODING, EncodingChars
from gateway.normalize._envelope import Envelope, validate_envelope
from gateway.normalize._errors import (
    Hl7EnvelopeError,
    Hl7Error,
    Hl7ParseError,
    NormalizationError,
    UnsupportedMessageType,
)
from gateway.normalize._escape import escape, unescape
from gateway.normalize._reader import Hl7Message, Segment, parse_message

__all__ = [
    "DEFAULT_ENCODING",
    "HANDLED_TYPES",
    "EncodingChars",
    "Envelope",
    "Hl7EnvelopeError",
    "Hl7Error",
    "Hl7Message",
    "Hl7ParseError",
    "NormalizationError",
    "Segment",
    "UnsupportedMessageType",
    "escape",
    "parse_message",
    "to_fhir",
    "unescape",
    "validate_envelope",
]
