"""Normalize + de-identify one message, in the process stage's thread or on worker processes.

``normalize`` is the CPU-heavy, side-effect-free part of the process stage: parse HL7 v2, map
to FHIR R4, de-identify, serialise. With ``pipeline.process_workers`` > 0 each batch is
shared out over that many worker processes (``gateway._workers``, ADR 8); the stage still
puts identifiers in the vault and commits in journal order itself.

Reasons name segments and rules, never values; an unexpected error is reported by its
type only (its message could quote the payload).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic_core import to_json

from gateway._config import Settings
from gateway.normalize import (
    HANDLED_TYPES,
    NormalizationError,
    UnsupportedMessageType,
    parse_message,
    to_fhir,
)
from schemas import DeidentifiedRecord, Outcome
from security import load_keyring
from security.deid import DeidentificationError, Deidentifier

Counts = tuple[tuple[str, str, str | None, int], ...]  # (rule, action, category, count)


@dataclass(frozen=True)
class Normalized:
    """A message normalized and de-identified, serialised as the stage commits it.

    ``identifiers`` is PHI: for the vault only.
    """

    subject: str
    message_type: str
    identifiers: list[dict[str, str]]
    bundle_json: str  # the ``records`` store's copy
    payload_json: str  # the ``deidentified`` topic entry (the record, bundle included)
    report: Counts  # the de-identification report, for the audit trail and metrics


@dataclass(frozen=True)
class Final:
    """The stage's last word on a message: filtered or dead-lettered, with the reason;
    ``error``: the type of an unexpected exception, for the stage to log."""

    outcome: Outcome
    reason: str
    error: str | None = None


Result = Normalized | Final


def normalize(message_id: int, payload: bytes, deid: Deidentifier, timezone: str) -> Result:
    """One journal message -> its de-identified, serialised record, or why there is none."""
    try:
        parsed = parse_message(payload)
        if parsed.message_type not in HANDLED_TYPES:
            raise UnsupportedMessageType(parsed.message_type)
        result = deid.deidentify(to_fhir(parsed, timezone=timezone))
        record = result.to_record(message_id, parsed.message_type)
        bundle_json, payload_json = _serialise(record)
        report = tuple((e.rule, e.action, e.category, e.count) for e in record.report)
        return Normalized(
            result.subject,
            parsed.message_type,
            result.identifiers,
            bundle_json,
            payload_json,
            report,
        )
    except UnsupportedMessageType as exc:
        return Final(Outcome.FILTERED, f"message type {exc.message_type} is not handled")
    except (NormalizationError, DeidentificationError) as exc:
        return Final(Outcome.DEAD_LETTERED, str(exc))
    except Exception as exc:
        error = type(exc).__name__
        return Final(Outcome.DEAD_LETTERED, f"internal error ({error})", error)


def _serialise(record: DeidentifiedRecord) -> tuple[str, str]:
    """The record's Bundle as JSON, and the whole record (the topic payload) around it.

    The Bundle is most of the record and goes to both the ``records`` store and the
    topic: serialised once (by pydantic-core, twice as fast as ``json.dumps``), then
    spliced into the rest of the record rather than serialised a second time.
    """
    bundle = to_json(record.bundle).decode()
    rest = record.model_dump_json(exclude={"bundle"})
    return bundle, f'{rest[:-1]},"bundle":{bundle}}}'


# --- on worker processes (gateway._workers) -----------------------------------------------

_state: tuple[Deidentifier, str] | None = None  # in a worker: its de-identifier, timezone


def start_worker(settings: Settings) -> None:
    """A normalize worker's set-up: the keys and de-identifier the stage itself uses."""
    global _state
    keys = load_keyring(settings.data_dir, settings.key_files)
    _state = (settings.deid.deidentifier(keys), settings.timezone)


def normalize_share(share: Sequence[tuple[int, bytes]]) -> list[Result]:
    """``normalize`` each ``(message id, payload)`` of a worker's share of a batch."""
    assert _state is not None, "worker not started"
    deid, timezone = _state
    return [normalize(message_id, payload, deid, timezone) for message_id, payload in share]
