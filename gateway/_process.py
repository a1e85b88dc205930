"""The normalize + de-identify stage: raw journal -> ``deidentified`` topic.

Per message: parse HL7 v2, map to FHIR R4, de-identify (``gateway._normalize_workers``:
in this thread, or spread over ``pipeline.process_workers`` processes), put the subject's
identifiers in the vault, and produce a ``DeidentifiedRecord``. Types we don't handle are
``filtered``; content we can't map is ``dead_lettered``; both with the reason. Reasons
name segments and rules, never values, and an unexpected error is reported by its type
only (its message could quote the payload).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures.process import BrokenProcessPool

from gateway._journal import JournalReader
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._normalize_workers import Final, Normalized, Result, normalize, normalize_share
from gateway._store import Store, Tx
from gateway._workers import StagePool
from schemas import Disposition, InboundMessage, Outcome
from security import Vault
from security.audit import AuditLog
from security.deid import Deidentifier

log = get_logger("process")
CONSUMER = "process"
TOPIC_OUT = "deidentified"


class ProcessStage:
    name = "process"

    def __init__(
        self,
        journal: JournalReader,
        store: Store,
        deid: Deidentifier,
        vault: Vault,
        audit: AuditLog,
        metrics: Metrics,
        timezone: str = "UTC",
        batch: int = 256,
        pool: StagePool | None = None,
    ) -> None:
        self._journal = journal
        self._store = store
        self._deid = deid
        self._vault = vault
        self._audit = audit
        self._metrics = metrics
        self._tz = timezone
        self._batch = batch
        self._pool = pool

    def step(self) -> int:
        offset = self._store.offset(CONSUMER)
        inbound = self._journal.read_after(offset, self._batch)
        if not inbound:
            return 0
        started = time.perf_counter()
        results = [self._stored(m, r) for m, r in zip(inbound, self._run(inbound), strict=True)]
        with self._store.transaction() as tx:
            for message, result in zip(inbound, results, strict=True):
                self._emit(tx, message, result)
            tx.commit_offset(CONSUMER, inbound[-1].id)
        actions: Counter[tuple[str, str]] = Counter()
        identifiers: Counter[tuple[str, str]] = Counter()
        for message, result in zip(inbound, results, strict=True):
            if isinstance(result, Final):
                self._audit.append(
                    "process", result.outcome.value, message.id, reason=result.reason
                )
                self._metrics.messages.labels("process", result.outcome.value).inc()
            else:
                self._audit.append(
                    "process",
                    "deidentified",
                    message.id,
                    type=result.message_type,
                    actions=len(result.report),
                )
                self._metrics.messages.labels("process", "deidentified").inc()
                for rule, action, category, count in result.report:
                    actions[rule, action] += count
                    if category:
                        identifiers[category, action] += count
        for labels, count in actions.items():  # once per batch: ~30 report entries a message
            self._metrics.deid_actions.labels(*labels).inc(count)
        for labels, count in identifiers.items():
            self._metrics.deid_identifiers.labels(*labels).inc(count)
        self._metrics.stage_seconds.labels("process").observe(time.perf_counter() - started)
        return len(inbound)

    def _run(self, inbound: list[InboundMessage]) -> list[Result]:
        """Normalize the batch on the pool, if there is one (and it holds), else here."""
        if self._pool is not None:
            size = -(-len(inbound) // self._pool.workers)  # contiguous shares, one a worker
            shares = [
                [(m.id, m.payload) for m in inbound[i : i + size]]
                for i in range(0, len(inbound), size)
            ]
            try:
                return [r for share in self._pool.map(normalize_share, shares) for r in share]
            except BrokenProcessPool:
                pass  # logged and replaced by the pool; this batch is redone here
        return [normalize(m.id, m.payload, self._deid, self._tz) for m in inbound]

    def _stored(self, message: InboundMessage, result: Result) -> Result:
        """``result``, once its identifiers are in the vault (dead-lettered if they cannot be)."""
        try:
            if isinstance(result, Normalized):
                self._vault.put(result.subject, result.identifiers)
        except Exception as exc:
            error = type(exc).__name__
            result = Final(Outcome.DEAD_LETTERED, f"internal error ({error})", error)
        if isinstance(result, Final) and result.error is not None:
            log.error(
                "process.internal_error", stage="process", msg_id=message.id, error=result.error
            )
        return result

    @staticmethod
    def _emit(tx: Tx, message: InboundMessage, result: Result) -> None:
        if isinstance(result, Final):
            tx.dispose(
                Disposition(message_id=message.id, outcome=result.outcome, reason=result.reason)
            )
            return
        tx.record(message.id, result.message_type, result.subject, result.bundle_json)
        tx.produce(TOPIC_OUT, result.subject, result.payload_json)
