"""Protocol adapters: how messages enter and how advisories leave.

- ``MllpServer`` / ``MllpClient``: HL7 v2 over MLLP (framing, concurrency, ordered ACKs).
- ``advisory_oru``: advisories as ORU^R01 with result status P, for MLLP egress.
- ``build_ack``: HL7 ACKs, AA / AE / AR with an ERR segment naming the reason.
"""

from adapters._ack import AckCode, AckContext, AckError, build_ack
from adapters._mllp import MllpClient, MllpServer, ack_code, frame, send_blocking
from adapters._oru_out import advisory_oru

__all__ = [
    "AckCode",
    "AckContext",
    "AckError",
    "MllpClient",
    "MllpServer",
    "ack_code",
    "advisory_oru",
    "build_ack",
    "frame",
    "send_blocking",
]
