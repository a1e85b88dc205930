"""The embedded gateway: ingest and the API here, the pipeline in supervised children.

Start-up order is the order of trust: keys, audit trail, journal, stores, vault, then
the pipeline processes (one per group of ``pipeline.processes``; the one with infer loads
and verifies the signed models), then the listeners. Shutdown (SIGTERM or ``stop``) runs
the other way and drains, upstream first: the MLLP listener stops accepting and finishes
its pending ACKs, then the first group is told to drain, finishing everything the journal
holds, then the next group drains what the first one produced, and so on; only then does
the process exit. A group that dies on its own is restarted with back-off; it resumes
from its committed offsets, so nothing accepted is lost and ingest keeps acknowledging
meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from adapters import MllpServer
from gateway._api import ApiContext, create_app
from gateway._config import Settings, StageName
from gateway._groups import AUDIT_DIR, group_name, metrics_file, status_file
from gateway._ingest import Ingest
from gateway._journal import Journal
from gateway._log import get_logger
from gateway._metrics import Metrics, merge_exposition
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


@dataclass
class _Group:
    """One supervised pipeline child: its stages, its current process, whether to stop."""

    stages: tuple[StageName, ...]
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return group_name(self.stages)


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
        self._groups = [_Group(tuple(stages)) for stages in settings.pipeline.processes]
        self._stopping = False

    # -- the pipeline children ---------------------------------------------------------

    def _group_status(self, group: _Group) -> dict[str, Any] | None:
        """A running child's status file, if it is this child's and it has loaded."""
        child = group.proc
        if child is None or child.returncode is not None:
            return None
        try:
            path = status_file(self.settings.data_dir, group.stages)
            status: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return status if status.get("pid") == child.pid else None

    async def _start_group(self, group: _Group) -> asyncio.subprocess.Process:
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "stage",
            "pipeline",
            "--data-dir",
            str(self.settings.data_dir),
            "--stages",
            ",".join(group.stages),
        ]
        if self._config_file is not None:
            cmd += ["--config", str(self._config_file)]
        return await asyncio.create_subprocess_exec(*cmd)

    async def _supervise(self, group: _Group) -> None:
        """Keep the group's child running until it is told to stop; restart it if it dies."""
        restarts = 0
        while not group.stop.is_set():
            group.proc = await self._start_group(group)
            if group.stop.is_set():  # told to stop while it was starting
                group.proc.send_signal(signal.SIGTERM)
            code = await group.proc.wait()
            if group.stop.is_set():
                return
            delay = _RESTART_BACKOFF_S[min(restarts, len(_RESTART_BACKOFF_S) - 1)]
            restarts += 1
            self.audit.append(
                "gateway", "pipeline_exited", code=code, restart=restarts, group=group.name
            )
            log.error("pipeline.exited", stage=group.name, code=code, count=restarts)
            with suppress(TimeoutError):
                await asyncio.wait_for(group.stop.wait(), delay)

    async def _stop_group(self, group: _Group) -> None:
        """SIGTERM the group's child and wait while it drains (killed after the timeout)."""
        group.stop.set()
        child = group.proc
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                if group.task is not None and not group.task.done():
                    await asyncio.shield(group.task)
                elif child is not None:
                    await child.wait()
        except TimeoutError:
            log.error("pipeline.drain_timeout", stage=group.name)
            if group.proc is not None and group.proc.returncode is None:
                group.proc.kill()
                await group.proc.wait()

    async def _stop_pipeline(self) -> None:
        """Drain the groups upstream first: each finishes what the one before it left."""
        self._stopping = True
        for group in self._groups:
            await self._stop_group(group)

    # -- what the API reads --------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        statuses = {group.name: self._group_status(group) for group in self._groups}
        running = all(status is not None for status in statuses.values())
        infer = next((s for s in statuses.values() if s is not None and "models" in s), None)
        models = infer["models"] if infer else {}
        ready = self.mllp_port > 0 and running and bool(models)
        return ready, {
            "pipeline": "running" if running else "starting",
            "processes": {
                name: "running" if status else "starting" for name, status in statuses.items()
            },
            "models": models,
            "refused_bundles": infer["refused_bundles"] if infer else {},
        }

    def metrics_text(self) -> bytes:
        texts = [self.metrics.render().decode()]
        for group in self._groups:
            with suppress(OSError):
                texts.append(metrics_file(self.settings.data_dir, group.stages).read_text())
        return merge_exposition(*texts)

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
                for child in self._groups:
                    child.task = group.create_task(self._supervise(child))
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
