"""Normalize + de-identify one message, in the process stage's thread or on worker processes.

``normalize`` is the CPU-heavy, side-effect-free part of the process stage: parse HL7 v2, map
to FHIR R4, de-identify, serialise. With ``pipeline.process_workers`` > 0 a batch is spread
over that many worker processes (:class:`NormalizePool`), so the stage can use more than
one core. The stage stays the journal's one consumer: it reads the batch, puts identifiers
in the vault, and commits the results in journal order, exactly as when it normalizes
itself; the offset, the order of the ``deidentified`` topic and the one disposition per
message do not depend on the pool. Workers are the gateway's own code, not a sandbox: each
loads the keys from the same data dir and config. A batch during which a worker dies is
redone in the stage's thread, and a fresh pool is started.

Reasons name segments and rules, never values; an unexpected error is reported by its
type only (its message could quote the payload).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from pydantic_core import to_json

from gateway._config import Settings
from gateway._log import get_logger
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

log = get_logger("process")

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


# --- worker processes ---------------------------------------------------------------------

_worker: tuple[Deidentifier, str] | str | None = None  # set in each worker: state, or why not


def _follow(stage_pid: int) -> None:
    """Exit when the stage process does, however it ends (SIGKILL included).

    A worker is the forkserver's child, not the stage's, and waits on a queue whose ends it
    holds itself, so nothing else would tell it; and while it lives, so does the
    forkserver.
    """
    try:
        watch = os.pidfd_open(stage_pid)
    except ProcessLookupError:
        os._exit(0)

    def wait_then_exit() -> None:
        select.select([watch], [], [])
        os._exit(0)

    threading.Thread(target=wait_then_exit, name="follow-stage", daemon=True).start()


def _start_worker(settings: Settings, stage_pid: int) -> None:
    """Each worker's initializer. It never raises: an initializer that raises breaks the
    pool with no reason given, so the reason is kept for ``_ready`` to report."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage process decides when to stop
    _follow(stage_pid)
    try:
        keys = load_keyring(settings.data_dir, settings.key_files)
        _worker = (settings.deid.deidentifier(keys), settings.timezone)
    except Exception as exc:  # about keys and config: paths and names, not message data
        _worker = f"{type(exc).__name__}: {exc}"


def _normalize_chunk(chunk: Sequence[tuple[int, bytes]]) -> list[Result]:
    assert isinstance(_worker, tuple), "worker not started"
    deid, timezone = _worker
    return [normalize(message_id, payload, deid, timezone) for message_id, payload in chunk]


def _ready() -> str | None:
    return _worker if isinstance(_worker, str) else None


class WorkersNotStarted(RuntimeError):
    """A normalize worker could not start (bad keys or config); the message says why."""


class NormalizePool:
    """``workers`` processes that each normalize a share of every batch, in order."""

    def __init__(self, workers: int, settings: Settings) -> None:
        self.workers = workers
        self._settings = settings
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: the stage process has threads, which a fork would copy mid-lock
        context = multiprocessing.get_context("forkserver")
        executor = ProcessPoolExecutor(
            self.workers,
            context,
            initializer=_start_worker,
            initargs=(self._settings, os.getpid()),
        )
        # a worker starts on a submit that finds none idle: start them all now, not
        # on the first batch (each loads the keys and the de-identifier, ~1 s)
        futures = [executor.submit(_ready) for _ in range(self.workers)]
        wait(futures)
        failed = [why for why in (f.result() for f in futures) if why is not None]
        if failed:
            executor.shutdown(cancel_futures=True)
            raise WorkersNotStarted(f"process workers could not start: {failed[0]}")
        return executor

    @property
    def pids(self) -> list[int]:
        """The workers' pids (for the status file and operators)."""
        return sorted(self._executor._processes)

    def normalize(self, messages: Sequence[tuple[int, bytes]]) -> list[Result]:
        """Each message's result, in order (:class:`BrokenProcessPool` when a worker died:
        the pool is restarted, and the caller redoes the batch itself)."""
        size = -(-len(messages) // self.workers)  # contiguous shares, one per worker
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        try:
            return [r for part in self._executor.map(_normalize_chunk, chunks) for r in part]
        except BrokenProcessPool:
            log.warning("process.worker_lost", stage="process", count=self.workers)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
