"""The infer stage: ``deidentified`` topic -> ``advisories`` topic, through the sandbox.

A step takes a micro-batch of records (up to ``batch_max``, waiting at most
``batch_wait_ms`` for it to fill), adds each record's observations to its subject's
de-identified history, builds one feature row per (record, model) for each model that
takes one of the record's observation codes, from the subject's history within the
model's windows, and scores all rows of a model in one sandbox
call. A record with no complete row is ``filtered`` with the missing inputs named. When
the sandbox cannot score a batch, the engine bisects it: only the records whose rows make
workers fail on their own are ``dead_lettered`` (with the reason), and the rest of the
batch is scored and written as usual.

At start-up the stage logs, per model, what its sandbox enforces on this machine and what
it does not (``sandbox.enforced`` / ``sandbox.not_enforced``), as ``/readyz`` reports it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import timedelta

from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._store import Store, TopicEntry, Tx
from inference import (
    FeatureExtractor,
    InferenceEngine,
    MissingInputs,
    build_advisories,
    observations_from_bundle,
)
from inference._engine import RowFailure
from schemas import (
    Advisory,
    DeidentifiedRecord,
    Disposition,
    InferenceRequest,
    ObservationFact,
    Outcome,
)
from security.audit import AuditLog

log = get_logger("infer")
CONSUMER = "infer"
TOPIC_IN = "deidentified"
TOPIC_OUT = "advisories"


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
        batch_wait_ms: float = 2.0,
        default_modes: Mapping[str, str] | None = None,
    ) -> None:
        """``config_inputs``: model id -> subject pseudonym -> input name -> value.

        ``default_modes``: model id -> active / shadow / off from config; an operator's
        override in the store (``PUT /admin/models/{id}/mode``) wins, read every batch.
        """
        self._default_modes = dict(default_modes or {})
        self._store = store
        self._engine = engine
        self._audit = audit
        self._metrics = metrics
        self._config_inputs = config_inputs
        self._batch_max = batch_max
        self._batch_wait = batch_wait_ms / 1000
        self._extractors = {m.id: FeatureExtractor(m) for m in engine.models}
        # A model scores a message only if the message brings one of its inputs: a lab
        # result must not re-emit yesterday's vital-sign scores, and vice versa.
        self._triggers = {
            m.id: frozenset((c.system, c.code) for i in m.inputs for c in i.codes)
            for m in engine.models
        }
        self._window = max(
            (e.max_window for e in self._extractors.values()), default=timedelta(hours=24)
        )
        self._log_enforcement()

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

    def _read(self) -> list[TopicEntry]:
        offset = self._store.offset(CONSUMER)
        entries = self._store.read(TOPIC_IN, offset, self._batch_max)
        if entries and len(entries) < self._batch_max and self._batch_wait > 0:
            time.sleep(self._batch_wait)
            entries = self._store.read(TOPIC_IN, offset, self._batch_max)
        return entries

    def step(self) -> int:
        entries = self._read()
        if not entries:
            return 0
        started = time.perf_counter()
        records = [DeidentifiedRecord.model_validate_json(e.payload) for e in entries]
        modes = {**self._default_modes, **self._store.model_modes()}
        facts_by_record, requests, reasons = self._features(records, modes)
        advisories: dict[int, list[Advisory]] = defaultdict(list)
        dead: dict[int, str] = {}
        for model_id, reqs in requests.items():
            manifest = self._engine.manifest(model_id)
            for req, res in zip(reqs, self._engine.score_isolating(model_id, reqs), strict=True):
                if isinstance(res, RowFailure):
                    dead[req.message_id] = f"{model_id}: inference failed ({res.reason})"
                    log.warning(
                        "inference.row_failed",
                        stage=self.name,
                        model=model_id,
                        msg_id=req.message_id,
                        reason=res.reason,
                    )
                else:
                    advisory = build_advisories(manifest, req, res.outputs)
                    if modes.get(model_id) == "shadow":
                        advisory = advisory.model_copy(update={"shadow": True})
                    advisories[req.message_id].append(advisory)
            self._metrics.batch_rows.labels(model_id).observe(len(reqs))
        with self._store.transaction() as tx:
            for record, facts in zip(records, facts_by_record, strict=True):
                tx.add_facts(record.subject, facts)
                self._emit(
                    tx,
                    record,
                    advisories.get(record.message_id, []),
                    dead.get(record.message_id),
                    reasons[record.message_id],
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

    def _features(
        self, records: list[DeidentifiedRecord], modes: Mapping[str, str]
    ) -> tuple[
        list[list[ObservationFact]], dict[str, list[InferenceRequest]], dict[int, list[str]]
    ]:
        """Each record's facts, the feature rows per model, and why rows were not built."""
        seen: dict[str, list[ObservationFact]] = {}
        facts_by_record: list[list[ObservationFact]] = []
        requests: dict[str, list[InferenceRequest]] = defaultdict(list)
        reasons: dict[int, list[str]] = defaultdict(list)
        for record in records:
            facts = observations_from_bundle(record.bundle)
            facts_by_record.append(facts)
            if not facts:
                reasons[record.message_id].append("no coded observations for any model")
                continue
            now = max(f.effective for f in facts)
            if record.subject not in seen:
                seen[record.subject] = self._store.history(record.subject, now - self._window)
            seen[record.subject].extend(facts)
            codes = {(f.system, f.code) for f in facts}
            triggered = [m for m, wanted in self._triggers.items() if codes & wanted]
            if not triggered:
                reasons[record.message_id].append("no model uses any of its observation codes")
            for model_id in [m for m in triggered if modes.get(m) == "off"]:
                reasons[record.message_id].append(f"{model_id}: switched off")
                triggered.remove(model_id)
            for model_id in triggered:
                extractor = self._extractors[model_id]
                config = self._config_inputs.get(model_id, {}).get(record.subject, {})
                row = extractor.extract(
                    record.message_id, record.subject, seen[record.subject], now, config
                )
                if isinstance(row, MissingInputs):
                    reasons[record.message_id].append(
                        f"{model_id}: missing inputs {', '.join(row.names)}"
                    )
                else:
                    requests[model_id].append(row)
        return facts_by_record, requests, reasons

    @staticmethod
    def _emit(
        tx: Tx,
        record: DeidentifiedRecord,
        advisories: list[Advisory],
        dead_reason: str | None,
        reasons: list[str],
    ) -> None:
        if dead_reason is not None:
            tx.dispose(
                Disposition(
                    message_id=record.message_id, outcome=Outcome.DEAD_LETTERED, reason=dead_reason
                )
            )
        elif not advisories:
            reason = "; ".join(reasons) or "no model applies"
            tx.dispose(
                Disposition(message_id=record.message_id, outcome=Outcome.FILTERED, reason=reason)
            )
        else:
            payload = json.dumps(
                {
                    "message_id": record.message_id,
                    "advisories": [a.model_dump(mode="json") for a in advisories],
                }
            )
            tx.produce(TOPIC_OUT, record.subject, payload)
