"""The embedded gateway: every stage in one process, wired on a SQLite bus.

Start-up order is the order of trust: keys, audit trail, journal, stores, vault,
de-identifier, signed model bundles, then the stages, then the listeners. Shutdown
(SIGTERM or ``stop``) runs the other way and drains: the MLLP listener stops accepting
and finishes pending ACKs, then each stage finishes what its upstream left before the
next one is told to drain, so nothing accepted is left half-done.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adapters import MllpServer
from gateway._api import ApiContext, create_app
from gateway._config import Settings
from gateway._infer import InferStage
from gateway._ingest import Ingest
from gateway._journal import Journal
from gateway._log import get_logger
from gateway._metrics import Metrics
from gateway._process import ProcessStage
from gateway._stage import StageLoop
from gateway._store import Store
from gateway._writeback import WritebackStage
from inference import InferenceEngine, SandboxLimits, ensure_reference_bundles
from security import Vault, load_keyring
from security.audit import AuditLog
from security.deid import Deidentifier, pseudonym

log = get_logger("runtime")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Ports:
    mllp: int = 0
    http: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Gateway:
    """One embedded gateway instance over ``settings.data_dir``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data, 0o700)
        self.keys = load_keyring(data, settings.key_files)
        self.metrics = Metrics()
        self.audit = AuditLog(data / "audit.log", self.keys.audit)
        self.audit.append("gateway", "started")
        self.journal = Journal(data / "journal.db", self.keys.journal)
        self.store = Store(data / "wardgate.db")
        self.vault = Vault(data / "vault.db", self.keys.vault)
        self.deid = Deidentifier(
            self.keys.pseudonym,
            self.keys.dateshift,
            self.keys.pseudonym_version,
            settings.deid.shift_range_days,
        )
        self.engine = self._load_models()
        self.ports = Ports()
        self._loops: list[StageLoop] = []
        self._running = False

    def _load_models(self) -> InferenceEngine:
        models_dir = self.settings.data_dir / "models"
        ensure_reference_bundles(models_dir, self.keys.publisher)
        trusted = [self.keys.publisher.public_key()] + [
            Ed25519PublicKey.from_public_bytes(base64.b64decode(k))
            for k in self.settings.inference.trusted_keys
        ]
        box = self.settings.inference.sandbox
        engine = InferenceEngine(
            models_dir,
            trusted,
            SandboxLimits(
                memory_bytes=box.memory_bytes,
                cpu_seconds=box.cpu_seconds,
                call_timeout_s=box.call_timeout_s,
            ),
        )
        for name, reason in engine.refused.items():
            self.audit.append("infer", "bundle_refused", bundle=name, reason=reason)
            log.warning("model.refused", model=name, reason=reason)
        for manifest in engine.models:
            status = engine.status()[manifest.id]
            self.audit.append(
                "infer",
                "model_loaded",
                model=manifest.id,
                version=manifest.version,
                provider=str(status["provider"]),
            )
            self.metrics.model_info.labels(
                manifest.id, manifest.version, str(status["provider"])
            ).set(1)
        return engine

    def _config_inputs(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per-patient model settings from config, keyed by pseudonym (never by identifier)."""
        scale2 = {
            pseudonym(self.keys.pseudonym, self.keys.pseudonym_version, p.system, p.value): {
                "spo2_scale2": 1.0
            }
            for p in self.settings.inference.news2_spo2_scale2_patients
        }
        return {"news2": scale2}

    def _framing_rejected(self, reason: str) -> None:
        self.audit.append("ingest", "rejected", reason=reason)
        self.metrics.messages.labels("ingest", "rejected").inc()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive = {loop.stage.name: loop.failed is None for loop in self._loops}
        ready = self._running and all(alive.values()) and bool(self.engine.models)
        return ready, {
            "stages": alive,
            "models": self.engine.status(),
            "refused_bundles": self.engine.refused,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain and close everything."""
        inference = self.settings.inference
        wake_infer, wake_writeback = threading.Event(), threading.Event()
        self._loops = [
            StageLoop(
                ProcessStage(
                    self.journal,
                    self.store,
                    self.deid,
                    self.vault,
                    self.audit,
                    self.metrics,
                    self.settings.timezone,
                ),
                self.journal.new_data,
                wake_infer,
            ),
            StageLoop(
                InferStage(
                    self.store,
                    self.engine,
                    self.audit,
                    self.metrics,
                    self._config_inputs(),
                    inference.batch_max,
                    inference.batch_wait_ms,
                ),
                wake_infer,
                wake_writeback,
            ),
            StageLoop(
                WritebackStage(
                    self.store, self.vault, self.audit, self.metrics, self.settings.writeback.mllp
                ),
                wake_writeback,
            ),
        ]
        ingest = Ingest(self.journal, self.audit, self.metrics)
        mllp = MllpServer(
            ingest.handle,
            self.settings.mllp.host,
            self.settings.mllp.port,
            self.settings.mllp.max_message_bytes,
        )
        mllp.on_framing_error = self._framing_rejected
        api = create_app(
            ApiContext(
                self.store, self.journal, self.vault, self.keys, self.metrics.render, self.readiness
            )
        )
        http = _Server(
            uvicorn.Config(
                api,
                host=self.settings.http.host,
                port=self.settings.http.port,
                access_log=False,
                log_level="warning",
                lifespan="off",
            )
        )
        try:
            async with asyncio.TaskGroup() as group:
                stage_tasks = [
                    group.create_task(asyncio.to_thread(loop.run)) for loop in self._loops
                ]
                await mllp.start()
                http_task = group.create_task(http.serve())
                while not http.started:
                    if http_task.done():
                        raise RuntimeError("HTTP listener failed to start")
                    await asyncio.sleep(0.01)
                self.ports.mllp = mllp.port
                self.ports.http = int(http.servers[0].sockets[0].getsockname()[1])
                self._running = True
                self.audit.append(
                    "gateway", "listening", mllp=self.ports.mllp, http=self.ports.http
                )
                log.info(
                    "gateway.listening",
                    port=self.ports.mllp,
                    host=self.settings.mllp.host,
                    url=f"http://{self.settings.http.host}:{self.ports.http}",
                )
                self.ports.ready.set()
                await stop.wait()
                log.info("gateway.draining")
                await mllp.close()
                for loop, task in zip(self._loops, stage_tasks, strict=True):
                    loop.drain.set()
                    loop.wake.set()
                    await task
                http.should_exit = True
        finally:
            self._running = False
            for loop in self._loops:
                loop.drain.set()
                loop.wake.set()
            self.close()

    def close(self) -> None:
        self.engine.close()
        self.journal.close()
        self.store.close()
        self.audit.append("gateway", "stopped")
        self.audit.close()
        log.info("gateway.stopped")
