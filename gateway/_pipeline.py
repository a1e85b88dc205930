"""A pipeline process: some or all of normalize + de-identify, infer and writeback.

``wardgate run`` starts the stages as supervised children (``wardgate stage pipeline
--stages ...``), one per group of ``pipeline.processes`` (ADR 7), so that the CPU-heavy
stages never share a GIL with the MLLP listener (ADR 4) nor, by default, with each other:
normalize + de-identify in one process, infer + writeback in another. A crashing group
cannot take ingest down (the parent restarts it, and it resumes from its committed
offsets). Each group holds the lock of each of its stages (``pipeline.<stage>.lock``).

Within a process, consecutive stages wake each other (``threading.Event``) and take turns
(a :class:`Baton`, ADR 6). Across processes, the last stage of a group rings the next
group's doorbell (a FIFO, ``pipeline.<stage>.bell``) after each commit; the process stage
polls ingest's journal every 2 ms when idle, as before.

With ``pipeline.process_workers`` and ``inference.feature_workers``, the process stage
shares each batch's normalize + de-identify, and the infer stage its feature rows, out
over that many worker processes of their own (``gateway._workers``, ADR 8); each stage is
still its topic's one consumer and commits in order.

It tells the parent how it is doing through two files it rewrites atomically (named in
``gateway._groups``): its status (pid, stages; with infer: models, provider, sandbox
enforcement, refused bundles; with workers: their pids) and its Prometheus
samples, merged into the parent's /metrics.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway._config import STAGES, Settings, StageName
from gateway._groups import (
    AUDIT_DIR,
    audit_file,
    group_name,
    lock_stages,
    metrics_file,
    status_file,
    write_atomically,
)
from gateway._infer import InferStage
from gateway._journal import JournalReader
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._normalize_workers import start_worker as start_normalize_worker
from gateway._process import ProcessStage
from gateway._stage import IDLE_WAIT_S, Baton, Doorbell, Signal, Stage, StageLoop
from gateway._store import Store
from gateway._workers import StagePool
from gateway._writeback import WritebackStage
from inference import InferenceEngine, SandboxLimits, ensure_reference_bundles
from security import Vault, load_keyring
from security.audit import AuditLog
from security.deid import pseudonym

log = get_logger("pipeline")
_SIGNAL_POLL_S = 0.1  # how soon the main thread sees SIGTERM/SIGINT
_JOURNAL_POLL_S = 0.002  # ingest writes the journal and rings no bell: poll it when idle
_METRICS_EVERY_S = 1.0


class Pipeline:
    """The three stages over one data dir, with the models loaded in their sandboxes."""

    def __init__(self, settings: Settings, stages: Sequence[StageName] = STAGES) -> None:
        self.settings = settings
        self.stages = tuple(stages)
        self.name = group_name(self.stages)
        data = settings.data_dir
        self._locks = lock_stages(data, self.stages)  # waits for a previous consumer
        self.keys = load_keyring(data, settings.key_files)
        self.metrics = Metrics()
        (data / AUDIT_DIR).mkdir(exist_ok=True, mode=0o700)
        self.audit = AuditLog(audit_file(data, self.stages), self.keys.audit)
        self.audit.append("pipeline", "started", stages=",".join(self.stages))
        self.store = Store(data / "wardgate.db")
        self.journal = (
            JournalReader(data / "journal.db", self.keys.journal)
            if "process" in self.stages
            else None
        )
        self.vault = (
            Vault(data / "vault.db", self.keys.vault)
            if {"process", "writeback"} & set(self.stages)
            else None
        )
        self.engine = self._load_models() if "infer" in self.stages else None
        workers = settings.pipeline.process_workers
        self.process_pool = (
            StagePool("process", workers, start_normalize_worker, (settings,))
            if workers and "process" in self.stages
            else None
        )
        self._bells: list[Doorbell] = []
        self.loops = self._wire()
        self.feature_pool = next(
            (loop.stage.pool for loop in self.loops if isinstance(loop.stage, InferStage)), None
        )

    def _wire(self) -> list[StageLoop]:
        """One loop per stage, each woken by the stage upstream of it.

        Within the process: an event. Across processes: the downstream stage's doorbell
        (``pipeline.<stage>.bell``), except for the journal, which ingest does not ring:
        the process stage polls it every 2 ms when idle.
        """
        wakes: list[Signal] = [threading.Event() for _ in self.stages]
        first, last = self.stages[0], self.stages[-1]
        if first != STAGES[0]:
            wakes[0] = self._bell(first)
        downstream = STAGES.index(last) + 1
        notify_out = self._bell(STAGES[downstream]) if downstream < len(STAGES) else None
        baton = Baton() if len(self.stages) > 1 else None  # no GIL ping-pong (ADR 6)
        return [
            StageLoop(
                self._stage(stage),
                wakes[i],
                wakes[i + 1] if i + 1 < len(wakes) else notify_out,
                idle_wait_s=_JOURNAL_POLL_S if stage == STAGES[0] else IDLE_WAIT_S,
                baton=baton,
                linger_s=self.settings.inference.batch_wait_ms / 1000 if stage == "infer" else 0,
            )
            for i, stage in enumerate(self.stages)
        ]

    def _bell(self, stage: StageName) -> Doorbell:
        bell = Doorbell(self.settings.data_dir / f"pipeline.{stage}.bell")
        self._bells.append(bell)
        return bell

    def _stage(self, stage: StageName) -> Stage:
        settings = self.settings
        if stage == "process":
            assert self.journal is not None and self.vault is not None
            return ProcessStage(
                self.journal,
                self.store,
                settings.deid.deidentifier(self.keys),
                self.vault,
                self.audit,
                self.metrics,
                settings.timezone,
                settings.pipeline.batch_max,
                self.process_pool,
            )
        if stage == "infer":
            assert self.engine is not None
            return InferStage(
                self.store,
                self.engine,
                self.audit,
                self.metrics,
                self._config_inputs(),
                settings.inference.batch_max,
                settings.inference.model_modes,
                settings.inference.feature_workers,
            )
        assert self.vault is not None
        return WritebackStage(
            self.store,
            self.vault,
            self.audit,
            self.metrics,
            settings.writeback.mllp,
            settings.pipeline.batch_max,
        )

    def _load_models(self) -> InferenceEngine:
        models_dir = self.settings.data_dir / "models"
        ensure_reference_bundles(models_dir, self.keys.publisher)
        trusted = [self.keys.publisher.public_key()] + [
            Ed25519PublicKey.from_public_bytes(base64.b64decode(k))
            for k in self.settings.inference.trusted_keys
        ]
        box = self.settings.inference.sandbox
        limits = SandboxLimits(
            memory_bytes=box.memory_bytes,
            cpu_seconds=box.cpu_seconds,
            call_timeout_s=box.call_timeout_s,
        )
        engine = InferenceEngine(models_dir, trusted, limits)
        for name, reason in engine.refused.items():
            self.audit.append("infer", "bundle_refused", bundle=name, reason=reason)
            log.warning("model.refused", model=name, reason=reason)
        status = engine.status()
        for manifest in engine.models:
            provider = str(status[manifest.id]["provider"])
            self.audit.append(
                "infer",
                "model_loaded",
                model=manifest.id,
                version=manifest.version,
                provider=provider,
            )
            self.metrics.model_info.labels(manifest.id, manifest.version, provider).set(1)
        return engine

    def _config_inputs(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per-patient model settings from config, keyed by pseudonym (never by identifier)."""
        keys = self.keys
        scale2 = {
            pseudonym(keys.pseudonym, keys.pseudonym_version, p.system, p.value): {
                "spo2_scale2": 1.0
            }
            for p in self.settings.inference.news2_spo2_scale2_patients
        }
        return {"news2": scale2}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"pid": os.getpid(), "stages": list(self.stages)}
        for name, pool in (("process", self.process_pool), ("feature", self.feature_pool)):
            if pool is not None:
                status[f"{name}_workers"] = pool.pids
        if self.engine is not None:
            status["models"] = self.engine.status()
            status["refused_bundles"] = self.engine.refused
        return status

    def _publish_metrics(self, stop: threading.Event) -> None:
        path = metrics_file(self.settings.data_dir, self.stages)
        while not stop.wait(_METRICS_EVERY_S):
            write_atomically(path, self.metrics.render())
        write_atomically(path, self.metrics.render())

    def run(self) -> None:
        """Run until SIGTERM, then drain the stages in order and exit."""
        # The handler only appends: it runs in the main thread between bytecodes, possibly
        # while that thread holds an Event's lock, so an Event.set() there can deadlock.
        signalled: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, _: signalled.append(signum))
        signal.signal(signal.SIGINT, lambda signum, _: signalled.append(signum))
        stop = threading.Event()
        # Everything loaded so far (models, FHIR classes, schemas) lives as long as we do:
        # keep it out of the collector's full passes, which otherwise rescan it all
        # every few batches (measured: infer 15-25% and process 5-10% of CPU, ADR 6).
        gc.collect()
        gc.freeze()
        threads = [threading.Thread(target=loop.run, name=loop.stage.name) for loop in self.loops]
        publisher = threading.Thread(target=self._publish_metrics, args=(stop,), name="metrics")
        for thread in [*threads, publisher]:
            thread.start()
        status = json.dumps(self.status()).encode()
        write_atomically(status_file(self.settings.data_dir, self.stages), status)
        log.info("pipeline.running", stage=self.name)
        try:
            while not signalled:
                time.sleep(_SIGNAL_POLL_S)
            stop.set()
            log.info("pipeline.draining", stage=self.name)
            self.audit.append("pipeline", "draining")
            for loop, thread in zip(self.loops, threads, strict=True):
                loop.drain.set()
                loop.wake.set()
                thread.join()
        finally:
            stop.set()
            for loop in self.loops:
                loop.drain.set()
                loop.wake.set()
            publisher.join()
            self.close()

    def close(self) -> None:
        resources = (self.engine, self.process_pool, self.feature_pool, self.journal, self.vault)
        for resource in resources:
            if resource is not None:
                resource.close()
        self.store.close()
        for bell in self._bells:
            bell.close()
        self.audit.append("pipeline", "stopped")
        self.audit.close()
        status_file(self.settings.data_dir, self.stages).unlink(missing_ok=True)
        for lock in self._locks:
            lock.close()
        log.info("pipeline.stopped", stage=self.name)
