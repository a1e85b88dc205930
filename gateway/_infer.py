"""The infer stage: ``deidentified`` topic -> ``advisories`` topic, through the sandbox.

A step takes a micro-batch of records (up to ``batch_max``; the pipeline's stage loop
lingers ``batch_wait_ms`` after a wake-up for it to fill), adds each record's observations
to its subject's de-identified history, builds one feature row per (record, model) for
each model that takes one of the record's observation codes, from the subject's history
within the model's windows (``gateway._featurise``: in this thread, or shared out over
``inference.feature_workers`` processes), and scores all rows of a model in one sandbox
call; every model's call is sent before any reply is read, so the models' workers score
side by side (``InferenceEngine.score_models``). A record with no complete row is
``filtered`` with the missing inputs named. When the sandbox
cannot score a batch, the engine bisects it: only the records whose rows make workers
fail on their own are ``dead_lettered`` (with the reason), and the rest of the batch is
scored and written as usual. A record whose scores cannot make an advisory (a NaN or
out-of-range score) is ``dead_lettered`` too.

Advisories are not validated per message (ADR 6): at start-up each model's advisory
mapping is checked once against the FHIR R4B models, and a model whose advisories would
not be valid FHIR is not used (``advisory.invalid`` in the log and the audit trail; its
messages are ``filtered`` with that reason).

At start-up the stage logs, per model, what its sandbox enforces on this machine and what
it does not (``sandbox.enforced`` / ``sandbox.not_enforced``), as ``/readyz`` reports it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool

from pydantic import TypeAdapter

from gateway._featurise import Featuriser, RecordFeatures, featurise_share, shares
from gateway._featurise import start_worker as start_feature_worker
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._store import Store, TopicEntry, Tx
from gateway._workers import StagePool
from inference import InferenceEngine, build_advisories
from inference._advisory import check_advisory_mapping
from inference._engine import RowFailure
from schemas import Advisory, Disposition, InferenceRequest, Outcome
from security.audit import AuditLog

log = get_logger("infer")
CONSUMER = "infer"
TOPIC_IN = "deidentified"
TOPIC_OUT = "advisories"
_ADVISORIES = TypeAdapter(list[Advisory])


class _RowFailed(Exception):
    """A row that makes no advisory: its message is dead-lettered with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InferStage:
    name = "infer"

    def __init__(
        self,
        store: Store,
        engine: InferenceEngine,
        audit: AuditLog,
        metrics: Metrics,
        config_inputs: Mapping[str, Mapping[str, Mapping[str, float]]],
        batch_max: int = 256,
        default_modes: Mapping[str, str] | None = None,
        feature_workers: int = 0,
    ) -> None:
        """``config_inputs``: model id -> subject pseudonym -> input name -> value.

        ``default_modes``: model id -> active / shadow / off from config; an operator's
        override in the store (``PUT /admin/models/{id}/mode``) wins, read every batch.
        ``feature_workers``: processes that build feature rows (0: this thread); the pool
        is ``self.pool``, for its owner to close.
        """
        self._default_modes = dict(default_modes or {})
        self._store = store
        self._engine = engine
        self._audit = audit
        self._metrics = metrics
        self._batch_max = batch_max
        self._log_enforcement()
        unusable = self._check_advisories()
        self._featuriser = Featuriser(engine.models, config_inputs, unusable)
        self.pool = (
            StagePool(
                "infer",
                feature_workers,
                start_feature_worker,
                (store.path, engine.models, config_inputs, unusable),
            )
            if feature_workers
            else None
        )

    def _check_advisories(self) -> dict[str, str]:
        """Model id -> why its advisories would not be valid FHIR (such a model is not used)."""
        unusable: dict[str, str] = {}
        for manifest in self._engine.models:
            reason = check_advisory_mapping(manifest)
            if reason is not None:
                unusable[manifest.id] = reason
                log.error("advisory.invalid", stage=self.name, model=manifest.id, reason=reason)
                self._audit.append("infer", "advisory_invalid", model=manifest.id, reason=reason)
        return unusable

    def _log_enforcement(self) -> None:
        for model_id, status in self._engine.status().items():
            for what, how in status["enforcement"].items():
                if how.startswith("NOT"):
                    log.warning(
                        "sandbox.not_enforced",
                        stage=self.name,
                        model=model_id,
                        code=what,
                        reason=how,
                    )
                else:
                    log.info(
                        "sandbox.enforced", stage=self.name, model=model_id, code=what, reason=how
                    )

    def step(self) -> int:
        entries = self._store.read(TOPIC_IN, self._store.offset(CONSUMER), self._batch_max)
        if not entries:
            return 0
        started = time.perf_counter()
        modes = {**self._default_modes, **self._store.model_modes()}
        records = self._featurise(entries, modes)
        requests: dict[str, list[InferenceRequest]] = defaultdict(list)
        for record in records:
            for model_id, row in record.requests:
                requests[model_id].append(row)
        advisories: dict[int, list[Advisory]] = defaultdict(list)
        dead: dict[int, str] = {}
        scored = self._engine.score_models(requests)
        for model_id, reqs in requests.items():
            manifest = self._engine.manifest(model_id)
            shadow = modes.get(model_id) == "shadow"
            for req, res in zip(reqs, scored[model_id], strict=True):
                try:
                    if isinstance(res, RowFailure):
                        raise _RowFailed(f"inference failed ({res.reason})")
                    try:
                        advisory = build_advisories(manifest, req, res.outputs, shadow=shadow)
                    except ValueError as exc:  # the message names outputs, never features
                        raise _RowFailed(f"no advisory ({exc})") from None
                except _RowFailed as failed:
                    dead[req.message_id] = f"{model_id}: {failed.reason}"
                    log.warning(
                        "inference.row_failed",
                        stage=self.name,
                        model=model_id,
                        msg_id=req.message_id,
                        reason=failed.reason,
                    )
                    continue
                advisories[req.message_id].append(advisory)
            self._metrics.batch_rows.labels(model_id).observe(len(reqs))
        with self._store.transaction() as tx:
            for record in records:
                tx.add_facts(record.subject, record.facts)
                self._emit(
                    tx,
                    record,
                    advisories.get(record.message_id, []),
                    dead.get(record.message_id),
                )
            tx.commit_offset(CONSUMER, entries[-1].offset)
        for record in records:
            produced = advisories.get(record.message_id, [])
            event = (
                "dead_lettered"
                if record.message_id in dead
                else ("advised" if produced else "filtered")
            )
            self._audit.append(
                "infer", event, record.message_id, models=",".join(a.model_id for a in produced)
            )
            self._metrics.messages.labels("infer", event).inc()
        self._metrics.stage_seconds.labels("infer").observe(time.perf_counter() - started)
        return len(entries)

    def _featurise(
        self, entries: list[TopicEntry], modes: Mapping[str, str]
    ) -> list[RecordFeatures]:
        """Each entry's facts and feature rows: on the pool, if there is one (and it holds),
        each subject's entries in one share; else in this thread."""
        if self.pool is not None:
            parts = shares(entries, self.pool.workers)
            work = [([entries[i] for i in part], modes) for part in parts]
            try:
                done = self.pool.map(featurise_share, work)
            except BrokenProcessPool:
                pass  # logged and replaced by the pool; this batch is done here
            else:
                placed: dict[int, RecordFeatures] = {}
                for part, results in zip(parts, done, strict=True):
                    placed.update(zip(part, results, strict=True))
                return [placed[i] for i in range(len(entries))]
        return self._featuriser.run(entries, modes, self._store)

    @staticmethod
    def _emit(
        tx: Tx,
        record: RecordFeatures,
        advisories: list[Advisory],
        dead_reason: str | None,
    ) -> None:
        if dead_reason is not None:
            tx.dispose(
                Disposition(
                    message_id=record.message_id, outcome=Outcome.DEAD_LETTERED, reason=dead_reason
                )
            )
        elif not advisories:
            reason = "; ".join(record.reasons) or "no model applies"
            tx.dispose(
                Disposition(message_id=record.message_id, outcome=Outcome.FILTERED, reason=reason)
            )
        else:
            tx.produce(TOPIC_OUT, record.subject, advisories_payload(record.message_id, advisories))


def advisories_payload(message_id: int, advisories: list[Advisory]) -> str:
    """An ``advisories`` topic entry: ``{"message_id": ..., "advisories": [...]}``.

    The advisories are serialised by pydantic-core in one call (a fifth of the CPU of
    ``model_dump`` + ``json.dumps``); writeback parses the entry back in one call too.
    """
    items = _ADVISORIES.dump_json(advisories).decode()
    return f'{{"message_id":{message_id},"advisories":{items}}}'
