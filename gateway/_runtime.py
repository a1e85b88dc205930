"""The embedded gateway: ingest and the API here, the pipeline in a supervised child.

Start-up order is the order of trust: keys, audit trail, journal, stores, vault, then
the pipeline process (which loads and verifies the signed models), then the listeners.
Shutdown (SIGTERM or ``stop``) runs the other way and drains: the MLLP listener stops
accepting and finishes its pending ACKs, then the pipeline is told to drain, finishing
everything the journal holds, and only then does the process exit. If the pipeline
dies on its own it is restarted; it resumes from its committed offsets, so nothing
accepted is lost and ingest keeps acknowledging meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from adapters import MllpServer
from gateway._api import ApiContext, create_app
from gateway._config import Settings
from gateway._ingest import Ingest
from gateway._journal import Journal
from gateway._log import get_logger
from gateway._metrics import Metrics, merge_exposition
from gateway._pipeline import AUDIT_DIR, METRICS_FILE, STATUS_FILE
from gateway._store import Store
from security import Vault, load_keyring
from security.audit import AuditLog

log = get_logger("runtime")
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_DRAIN_TIMEOUT_S = 120.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """One embedded gateway instance over ``settings.data_dir``."""

    def __init__(self, settings: Settings, config_file: Path | None = None) -> None:
        self.settings = settings
        self._config_file = config_file
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data, 0o700)
        self.keys = load_keyring(data, settings.key_files)
        self.metrics = Metrics()
        (data / AUDIT_DIR).mkdir(exist_ok=True, mode=0o700)
        self.audit = AuditLog(data / AUDIT_DIR / "gateway.log", self.keys.audit)
        self.audit.append("gateway", "started")
        self.journal = Journal(data / "journal.db", self.keys.journal)
        self.store = Store(data / "wardgate.db")
        self.vault = Vault(data / "vault.db", self.keys.vault)
        self.mllp_port = 0
        self.http_port = 0
        self.ready = asyncio.Event()
        self._pipeline: asyncio.subprocess.Process | None = None
        self._stopping = False

    # -- the pipeline child -------------------------------------------------------------

    def _pipeline_status(self) -> dict[str, Any] | None:
        """The running child's status file, if it is this child's and it has loaded."""
        child = self._pipeline
        if child is None or child.returncode is not None:
            return None
        try:
            status: dict[str, Any] = json.loads((self.settings.data_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return status if status.get("pid") == child.pid else None

    async def _start_pipeline(self) -> asyncio.subprocess.Process:
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "stage",
            "pipeline",
            "--data-dir",
            str(self.settings.data_dir),
        ]
        if self._config_file is not None:
            cmd += ["--config", str(self._config_file)]
        return await asyncio.create_subprocess_exec(*cmd)

    async def _supervise(self) -> None:
        """Keep one pipeline child running until shutdown; restart it if it dies."""
        restarts = 0
        while True:
            self._pipeline = await self._start_pipeline()
            code = await self._pipeline.wait()
            if self._stopping:
                return
            delay = _RESTART_BACKOFF_S[min(restarts, len(_RESTART_BACKOFF_S) - 1)]
            restarts += 1
            self.audit.append("gateway", "pipeline_exited", code=code, restart=restarts)
            log.error("pipeline.exited", code=code, count=restarts)
            await asyncio.sleep(delay)

    async def _stop_pipeline(self) -> None:
        self._stopping = True
        child = self._pipeline
        if child is None or child.returncode is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), _DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.error("pipeline.drain_timeout")
            child.kill()
            await child.wait()

    # -- what the API reads --------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        status = self._pipeline_status()
        models = status["models"] if status else {}
        ready = self.mllp_port > 0 and status is not None and bool(models)
        return ready, {
            "pipeline": "running" if status else "starting",
            "models": models,
            "refused_bundles": status["refused_bundles"] if status else {},
        }

    def metrics_text(self) -> bytes:
        try:
            child = (self.settings.data_dir / METRICS_FILE).read_text()
        except OSError:
            child = ""
        return merge_exposition(self.metrics.render().decode(), child)

    def _framing_rejected(self, reason: str) -> None:
        self.audit.append("ingest", "rejected", reason=reason)
        self.metrics.messages.labels("ingest", "rejected").inc()

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain and close everything."""
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
                self.store,
                self.journal,
                self.vault,
                self.keys,
                self.metrics_text,
                self.readiness,
                deid=self.settings.deid,
                timezone=self.settings.timezone,
                audit=self.audit,
                model_modes=self.settings.inference.model_modes,
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
                supervisor = group.create_task(self._supervise())
                await mllp.start()
                http_task = group.create_task(http.serve())
                while not http.started:
                    if http_task.done():
                        raise RuntimeError("HTTP listener failed to start")
                    await asyncio.sleep(0.01)
                self.mllp_port = mllp.port
                self.http_port = int(http.servers[0].sockets[0].getsockname()[1])
                self.audit.append("gateway", "listening", mllp=self.mllp_port, http=self.http_port)
                log.info(
                    "gateway.listening",
                    port=self.mllp_port,
                    host=self.settings.mllp.host,
                    url=f"http://{self.settings.http.host}:{self.http_port}",
                )
                self.ready.set()
                await stop.wait()
                log.info("gateway.draining")
                await mllp.close()
                await self._stop_pipeline()
                await supervisor
                http.should_exit = True
        finally:
            if not self._stopping:
                await self._stop_pipeline()
            self.close()

    def close(self) -> None:
        self.journal.close()
        self.store.close()
        self.vault.close()
        self.audit.append("gateway", "stopped")
        self.audit.close()
        log.info("gateway.stopped")
