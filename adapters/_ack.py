"""HL7 v2 acknowledgements: AA when accepted, AE/AR with MSA-3 text and an ERR segment.

Texts are the gateway's own fixed reasons (``MSH-9 missing: message type is required``),
never field values from the message, so an ACK cannot echo patient data.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Literal

from gateway.normalize import escape

AckCode = Literal["AA", "AE", "AR"]
_counter = itertools.count(1)


@dataclass(frozen=True)
class AckContext:
    """What the ACK's MSH and MSA need from the original message's MSH (may be blank)."""

    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"


@dataclass(frozen=True)
class AckError:
    """The ERR segment: HL7 table 0357 code, its text, and the location (``MSH^1^9``)."""

    code: str
    text: str
    location: str = ""


_TABLE_0357 = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "207": "Application internal error",
}


def build_ack(
    code: AckCode, ctx: AckContext, text: str = "", error: AckError | None = None
) -> bytes:
    """An ACK message (segments joined by CR) answering the message described by ``ctx``."""
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ack_id = f"WG{now}{next(_counter):06d}"
    trigger = ctx.trigger or ""
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                ctx.receiving_application or "WARDGATE",
                ctx.receiving_facility,
                ctx.sending_application,
                ctx.sending_facility,
                now,
                "",
                f"ACK^{trigger}^ACK" if trigger else "ACK",
                ack_id,
                ctx.processing_id or "P",
                ctx.version or "2.5.1",
            ]
        ),
        "|".join(["MSA", code, ctx.control_id, escape(text)]),
    ]
    if error is not None:
        name = _TABLE_0357.get(error.code, "")
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    error.location,
                    f"{error.code}^{escape(name)}^HL70357",
                    "E",
                    "",
                    "",
                    "",
                    escape(error.text),
                ]
            )
        )
    return ("\r".join(segments) + "\r").encode()
