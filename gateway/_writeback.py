"""The writeback stage: ``advisories`` topic -> the advisory store and destinations.

Advisories are only ever *created*: the store has no update or delete path, and ids
are deterministic, so a replayed batch creates nothing twice. The real patient
identifier is re-attached only here (for an MLLP destination) or at the API (for FHIR
reads); the store itself stays pseudonymous. External destinations are off by default;
an enabled one in shadow mode is computed and recorded but not sent (``shadowed``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel

from adapters import ack_code, advisory_oru, send_blocking
from gateway._config import MllpDestinationConfig
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._store import Store
from schemas import Advisory, Disposition, Outcome
from security import Vault
from security.audit import AuditLog

log = get_logger("writeback")
CONSUMER = "writeback"
TOPIC_IN = "advisories"
STORE_DESTINATION = "advisory-store"
_ATTEMPTS = 3


class _Envelope(BaseModel):
    """An ``advisories`` topic entry: one message's advisories (written by the infer stage)."""

    message_id: int
    advisories: list[Advisory]


class WritebackStage:
    name = "writeback"

    def __init__(
        self,
        store: Store,
        vault: Vault,
        audit: AuditLog,
        metrics: Metrics,
        destinations: Sequence[MllpDestinationConfig],
        batch: int = 256,
    ) -> None:
        self._store = store
        self._vault = vault
        self._audit = audit
        self._metrics = metrics
        self._destinations = [d for d in destinations if d.enabled]
        self._batch = batch

    def step(self) -> int:
        entries = self._store.read(TOPIC_IN, self._store.offset(CONSUMER), self._batch)
        if not entries:
            return 0
        started = time.perf_counter()
        batch = []
        for entry in entries:
            body = _Envelope.model_validate_json(entry.payload)
            batch.append((body.advisories, self._deliver(body.message_id, body.advisories)))
        with self._store.transaction() as tx:
            for advisories, disposition in batch:
                for advisory in advisories:
                    for resource in advisory.resources:
                        tx.create_advisory(
                            disposition.message_id, advisory.subject, resource, advisory.shadow
                        )
                tx.dispose(disposition)
            tx.commit_offset(CONSUMER, entries[-1].offset)
        for _, disposition in batch:
            self._audit.append(
                "writeback",
                disposition.outcome.value,
                disposition.message_id,
                destinations=",".join(disposition.destinations),
            )
            self._metrics.messages.labels("writeback", disposition.outcome.value).inc()
        self._metrics.stage_seconds.labels("writeback").observe(time.perf_counter() - started)
        return len(entries)

    def _deliver(self, message_id: int, advisories: list[Advisory]) -> Disposition:
        """Send to each enabled destination (or shadow it) and decide the one outcome.

        Advisories of models in shadow mode are recorded but never written or sent; a
        message with only those is ``shadowed``.
        """
        live = [a for a in advisories if not a.shadow]
        shadow_models = sorted({a.model_id for a in advisories if a.shadow})
        if not live:
            return Disposition(
                message_id=message_id,
                outcome=Outcome.SHADOWED,
                reason=f"model {', '.join(shadow_models)} in shadow mode: computed and recorded,"
                " not written",
            )
        sent, shadowed, failed = [STORE_DESTINATION], [], []
        for dest in self._destinations:
            if dest.shadow:
                shadowed.append(dest.name)
            elif self._send(dest, message_id, live):
                sent.append(dest.name)
            else:
                failed.append(dest.name)
        if failed:
            outcome = Outcome.DEAD_LETTERED
            reason = f"destination {', '.join(failed)}: no AA after {_ATTEMPTS} attempts"
        elif shadowed:
            outcome = Outcome.SHADOWED
            reason = f"shadow mode: computed and recorded, not sent to {', '.join(shadowed)}"
        else:
            outcome = Outcome.WRITTEN_BACK
            reason = f"{len(live)} advisory(ies) created"
        return Disposition(message_id=message_id, outcome=outcome, reason=reason, destinations=sent)

    def _send(
        self, dest: MllpDestinationConfig, message_id: int, advisories: list[Advisory]
    ) -> bool:
        for advisory in advisories:
            identifiers = self._vault.get(advisory.subject)
            message = advisory_oru(
                f"WG{message_id}-{advisory.model_id}", identifiers, advisory.resources
            )
            for attempt in range(_ATTEMPTS):
                try:
                    if (
                        ack_code(send_blocking(dest.host, dest.port, message, dest.timeout_s))
                        == "AA"
                    ):
                        break
                except OSError as exc:
                    log.warning(
                        "destination.error", destination=dest.name, error=type(exc).__name__
                    )
                time.sleep(0.2 * 2**attempt)
            else:
                return False
        return True
