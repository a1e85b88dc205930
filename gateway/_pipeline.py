"""The pipeline process: normalize + de-identify, infer and writeback, off the ingest path.

``wardgate run`` starts this as a child process (``wardgate stage pipeline``) so that the
CPU-heavy stages never share a GIL with the MLLP listener: ACK latency does not depend
on how busy the pipeline is, and a crashing pipeline cannot take ingest down (the
parent restarts it, and it resumes from its committed offsets). One pipeline per data
dir: it holds an exclusive lock on ``pipeline.lock`` while it runs.

It tells the parent how it is doing through two files it rewrites atomically:
``pipeline.status.json`` (pid, models, provider, sandbox enforcement, refused bundles)
and ``pipeline.metrics`` (its Prometheus samples, merged into the parent's /metrics).
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import gc
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway._config import Settings
from gateway._infer import InferStage
from gateway._journal import JournalReader
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._process import ProcessStage
from gateway._stage import Baton, StageLoop
from gateway._store import Store
from gateway._writeback import WritebackStage
from inference import InferenceEngine, SandboxLimits, ensure_reference_bundles
from security import Vault, load_keyring
from security.audit import AuditLog
from security.deid import pseudonym

log = get_logger("pipeline")
STATUS_FILE = "pipeline.status.json"
METRICS_FILE = "pipeline.metrics"
AUDIT_DIR = "audit"
_JOURNAL_POLL_S = 0.002  # the journal is written by another process: poll it when idle
_METRICS_EVERY_S = 1.0
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Ask the kernel to SIGTERM us (and so drain) if the gateway that started us dies."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Pipeline:
    """The three stages over one data dir, with the models loaded in their sandboxes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data = settings.data_dir
        self._lock = (data / "pipeline.lock").open("a")
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)  # waits for a previous pipeline
        self.keys = load_keyring(data, settings.key_files)
        self.metrics = Metrics()
        (data / AUDIT_DIR).mkdir(exist_ok=True, mode=0o700)
        self.audit = AuditLog(data / AUDIT_DIR / "pipeline.log", self.keys.audit)
        self.audit.append("pipeline", "started")
        self.journal = JournalReader(data / "journal.db", self.keys.journal)
        self.store = Store(data / "wardgate.db")
        self.vault = Vault(data / "vault.db", self.keys.vault)
        self.engine = self._load_models()
        deid = settings.deid.deidentifier(self.keys)
        inference = settings.inference
        wake_infer, wake_writeback = threading.Event(), threading.Event()
        baton = Baton()  # one stage steps at a time: no GIL ping-pong between them (ADR 6)
        self.loops = [
            StageLoop(
                ProcessStage(
                    self.journal,
                    self.store,
                    deid,
                    self.vault,
                    self.audit,
                    self.metrics,
                    settings.timezone,
                ),
                threading.Event(),
                wake_infer,
                idle_wait_s=_JOURNAL_POLL_S,
                baton=baton,
            ),
            StageLoop(
                InferStage(
                    self.store,
                    self.engine,
                    self.audit,
                    self.metrics,
                    self._config_inputs(),
                    inference.batch_max,
                    inference.model_modes,
                ),
                wake_infer,
                wake_writeback,
                baton=baton,
                linger_s=inference.batch_wait_ms / 1000,
            ),
            StageLoop(
                WritebackStage(
                    self.store, self.vault, self.audit, self.metrics, settings.writeback.mllp
                ),
                wake_writeback,
                baton=baton,
            ),
        ]

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
        return {
            "pid": os.getpid(),
            "models": self.engine.status(),
            "refused_bundles": self.engine.refused,
        }

    def _publish_metrics(self, stop: threading.Event) -> None:
        path = self.settings.data_dir / METRICS_FILE
        while not stop.wait(_METRICS_EVERY_S):
            write_atomically(path, self.metrics.render())
        write_atomically(path, self.metrics.render())

    def run(self) -> None:
        """Run until SIGTERM, then drain the stages in order and exit."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        # Everything loaded so far (models, FHIR classes, schemas) lives as long as we do:
        # keep it out of the collector's full passes, which otherwise rescan it all
        # every few batches (measured: infer 15-25% and process 5-10% of CPU, ADR 6).
        gc.collect()
        gc.freeze()
        threads = [threading.Thread(target=loop.run, name=loop.stage.name) for loop in self.loops]
        publisher = threading.Thread(target=self._publish_metrics, args=(stop,), name="metrics")
        for thread in [*threads, publisher]:
            thread.start()
        write_atomically(self.settings.data_dir / STATUS_FILE, json.dumps(self.status()).encode())
        log.info("pipeline.running", count=len(self.engine.models))
        try:
            while not stop.wait(0.5):
                pass
            log.info("pipeline.draining")
            for loop, thread in zip(self.loops, threads, strict=True):
                loop.drain.set()
                loop.wake.set()
                thread.join()
        finally:
            for loop in self.loops:
                loop.drain.set()
                loop.wake.set()
            publisher.join()
            self.close()

    def close(self) -> None:
        self.engine.close()
        self.journal.close()
        self.store.close()
        self.vault.close()
        self.audit.append("pipeline", "stopped")
        self.audit.close()
        (self.settings.data_dir / STATUS_FILE).unlink(missing_ok=True)
        self._lock.close()
        log.info("pipeline.stopped")
