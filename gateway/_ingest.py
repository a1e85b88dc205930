"""Ingest: check an MLLP frame's envelope, commit it to the journal, then acknowledge.

The decision for each frame is one of: rejected (AE/AR with the reason; nothing stored),
accepted (AA after the durable commit) or duplicate (AA again; the original is processed
once). Every decision is audited; none carries a field value.
"""

from __future__ import annotations

import time

from adapters import AckContext, AckError, build_ack
from gateway._journal import Journal
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway.normalize import Envelope, Hl7EnvelopeError, validate_envelope
from schemas import Source
from security.audit import AuditLog

log = get_logger("ingest")


def _context(env: Envelope) -> AckContext:
    parts = env.message_type.split("^")
    return AckContext(
        control_id=env.control_id,
        sending_application=env.sending_application,
        sending_facility=env.sending_facility,
        receiving_application=env.receiving_application,
        receiving_facility=env.receiving_facility,
        trigger=parts[1] if len(parts) > 1 else "",
        processing_id=env.processing_id,
        version=env.version,
    )


class Ingest:
    """The MLLP handler: bytes of one frame in, bytes of its ACK out."""

    def __init__(self, journal: Journal, audit: AuditLog, metrics: Metrics) -> None:
        self._journal = journal
        self._audit = audit
        self._metrics = metrics

    async def handle(self, frame: bytes) -> bytes:
        started = time.perf_counter()
        try:
            env = validate_envelope(frame)
        except Hl7EnvelopeError as exc:
            self._metrics.messages.labels("ingest", "rejected").inc()
            self._audit.append("ingest", "rejected", reason=exc.reason, code=exc.code)
            log.info("message.rejected", stage="ingest", reason=exc.reason, code=exc.code)
            return build_ack(
                exc.ack_code, AckContext(), exc.reason, AckError(exc.code, exc.reason, exc.location)
            )
        sender = f"{env.sending_application}^{env.sending_facility}"
        try:
            appended = await self._journal.append(
                Source(kind="mllp", name=sender), env.control_id, "hl7v2", frame
            )
        except Exception as exc:
            reason = "journal commit failed: message not accepted, resend later"
            self._metrics.messages.labels("ingest", "error").inc()
            log.error("journal.failed", stage="ingest", error=type(exc).__name__)
            return build_ack("AE", _context(env), reason, AckError("207", reason))
        outcome = "duplicate" if appended.duplicate else "accepted"
        self._metrics.messages.labels("ingest", outcome).inc()
        self._audit.append("ingest", outcome, appended.id, type=env.message_type)
        ack = build_ack("AA", _context(env))
        self._metrics.ack_seconds.observe(time.perf_counter() - started)
        return ack
