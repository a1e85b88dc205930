"""Run one verified model in a worker process that has no network and bounded resources.

The parent side is blocking (the gateway calls it through ``asyncio.to_thread``) and
thread-safe (one call at a time per sandbox). Every call has a wall-clock deadline; when
the deadline passes or the worker dies (a crash, or a kill by RLIMIT_AS / RLIMIT_CPU), the
worker is killed, a fresh one is started and the batch is retried on it (``attempts``, two
by default). When every attempt fails, :class:`SandboxError` says why; the engine then
bisects the batch to find the rows at fault. A model error reported by a healthy worker
(bad shape, say) is not retried: it would fail the same way. Each loss is kept as
``last_failure`` (and counted in ``failures``) for ``/readyz``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from inference import _worker as wire
from inference._bundle import ModelBundle
from inference._errors import SandboxError, WorkerUnavailable

_WORKER = Path(wire.__file__).resolve()
_PASS_ENV = ("PATH", "LANG", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
_RECYCLE_AT = 0.8  # of the worker's CPU budget
_TIMES = {1: "once", 2: "twice"}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits. ``cpu_seconds`` is a lifetime budget: the worker is recycled at 80%."""

    memory_bytes: int = 2 << 30
    cpu_seconds: int = 600
    call_timeout_s: float = 10.0
    start_timeout_s: float = 30.0
    gpu_mem_limit_bytes: int = 1 << 30
    threads: int = 1
    use_gpu: bool = True
    drop_privileges: bool = True


class _WorkerLost(Exception):
    """The worker timed out, died or broke the protocol; restart and retry."""


def _worker_env(threads: int) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["OMP_NUM_THREADS"] = str(threads)
    env["ORT_DISABLE_TELEMETRY"] = "1"  # onnxruntime >= 1.2x keeps a telemetry cache ...
    env["HOME"] = env["XDG_CACHE_HOME"] = "/nonexistent"  # ... under $XDG_CACHE_HOME
    return env


class _Worker:
    """One worker process and its two pipes, with deadline-bounded frame I/O."""

    def __init__(self, limits: SandboxLimits) -> None:
        cmd = [
            sys.executable,
            "-I",
            str(_WORKER),
            f"--memory-bytes={limits.memory_bytes}",
            f"--cpu-seconds={limits.cpu_seconds}",
            f"--gpu-mem-limit={limits.gpu_mem_limit_bytes}",
            f"--threads={limits.threads}",
        ]
        cmd += [] if limits.use_gpu else ["--no-gpu"]
        cmd += [] if limits.drop_privileges else ["--keep-uid"]
        self.env = _worker_env(limits.threads)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd="/",
            close_fds=True,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._w = self.proc.stdin.fileno()
        self._r = self.proc.stdout.fileno()
        os.set_blocking(self._w, False)
        os.set_blocking(self._r, False)
        self.cpu_used = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, kind: int, payload: bytes, deadline: float) -> None:
        data = memoryview(wire.HEADER.pack(kind, len(payload)) + payload)
        while data:
            self._wait(self._w, write=True, deadline=deadline)
            try:
                n = os.write(self._w, data)
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                raise _WorkerLost(self._death("worker pipe closed")) from None
            data = data[n:]

    def recv(self, deadline: float) -> tuple[int, bytes]:
        kind, length = wire.HEADER.unpack(self._read(wire.HEADER.size, deadline))
        return kind, self._read(length, deadline)

    def _read(self, n: int, deadline: float) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            self._wait(self._r, write=False, deadline=deadline)
            try:
                chunk = os.readv(self._r, [view[got:]])
            except BlockingIOError:
                continue
            if chunk == 0:
                raise _WorkerLost(self._death("worker exited"))
            got += chunk
        return bytes(buf)

    def _wait(self, fd: int, write: bool, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _WorkerLost("timed out")
        rlist, wlist = ([], [fd]) if write else ([fd], [])
        ready = select.select(rlist, wlist, [], remaining)
        if not ready[0] and not ready[1]:
            raise _WorkerLost("timed out")

    def _death(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return what
        return f"{what} (signal {-code})" if code < 0 else f"{what} (exit status {code})"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def stop(self) -> None:
        try:
            self.send(wire.EXIT, b"", time.monotonic() + 1)
            self.proc.wait(timeout=2)
        except (_WorkerLost, subprocess.TimeoutExpired):
            pass
        self.kill()


class Sandbox:
    """A model in its own worker process: ``start()``, ``run(batch)``, ``close()``."""

    def __init__(self, bundle: ModelBundle, limits: SandboxLimits | None = None) -> None:
        self.bundle = bundle
        self.limits = limits or SandboxLimits()
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._width = len(bundle.manifest.inputs)
        self.provider = "not started"
        self.enforcement: dict[str, str] = {}
        self.restarts = 0
        self.failures = 0
        self.last_failure: str | None = None
        self._started = False

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (raises :class:`SandboxError` when it cannot start)."""
        with self._lock:
            if self._worker is None:
                try:
                    self._worker = self._spawn()
                except _WorkerLost as exc:
                    raise SandboxError(f"worker failed to start: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The current worker's pid (for operators and tests)."""
        return self._worker.pid if self._worker is not None else None

    def _spawn(self) -> _Worker:
        worker = _Worker(self.limits)
        deadline = time.monotonic() + self.limits.start_timeout_s
        try:
            if self.bundle.custom_ops is not None:
                worker.send(wire.CUSTOM_OPS, self.bundle.custom_ops, deadline)
            worker.send(wire.MODEL, self.bundle.model_bytes, deadline)
            kind, payload = worker.recv(deadline)
        except _WorkerLost:
            worker.kill()
            raise
        if kind != wire.READY:
            worker.kill()
            raise _WorkerLost(payload.decode(errors="replace"))
        ready = json.loads(payload)
        self._started = True
        self.provider = str(ready["provider"])
        self.enforcement = {
            **{str(k): str(v) for k, v in ready["enforcement"].items()},
            "environment": "scrubbed: only " + ", ".join(sorted(worker.env)) + "; python -I",
            "wall_clock": (
                f"{self.limits.call_timeout_s:g} s per call, "
                f"{self.limits.start_timeout_s:g} s to start; on timeout or death the worker "
                "is killed, restarted and the batch retried on the fresh worker"
            ),
        }
        return worker

    # calls -------------------------------------------------------------------------------

    def run(self, batch: npt.NDArray[np.float32], attempts: int = 2) -> dict[str, npt.NDArray[Any]]:
        """Score a float32 ``[N, k]`` batch; returns the model's outputs by name.

        ``attempts``: how many workers the batch may be tried on before
        :class:`SandboxError` (:class:`WorkerUnavailable` when no worker could start).
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self._width:
            raise ValueError(f"batch must be float32 [N, {self._width}]")
        payload = wire.encode_arrays({self.bundle.manifest.onnx_input: batch})
        kind, reply = self._call(wire.RUN, payload, attempts)
        if kind == wire.ERROR:
            raise SandboxError(f"model error: {reply.decode(errors='replace')}")
        cpu, outputs = wire.decode_outputs(reply)
        if cpu > _RECYCLE_AT * self.limits.cpu_seconds > 0:
            self._recycle()
        return outputs

    def self_check(self, connect_to: tuple[str, int] | None = None) -> dict[str, Any]:
        """Ask the worker what it sees: env keys, uid, fds, limits, and a connect attempt."""
        request = {"connect": list(connect_to)} if connect_to else {}
        kind, reply = self._call(wire.SELFCHECK, json.dumps(request).encode())
        if kind != wire.REPORT:
            raise SandboxError(f"self-check failed: {reply.decode(errors='replace')}")
        report: dict[str, Any] = json.loads(reply)
        return report

    def _call(self, kind: int, payload: bytes, attempts: int = 2) -> tuple[int, bytes]:
        with self._lock:
            reason, unavailable = "", False
            for _ in range(attempts):
                try:
                    worker = self._live_worker()
                except _WorkerLost as exc:
                    reason, unavailable = self._lost(f"worker failed to start: {exc}"), True
                    continue
                unavailable = False
                try:
                    deadline = time.monotonic() + self.limits.call_timeout_s
                    worker.send(kind, payload, deadline)
                    return worker.recv(deadline)
                except _WorkerLost as exc:
                    worker.kill()
                    self._worker = None
                    reason = self._lost(str(exc))
            error = WorkerUnavailable if unavailable else SandboxError
            times = _TIMES.get(attempts, f"{attempts} times")
            raise error(f"worker failed {times}; last: {reason}")

    def _live_worker(self) -> _Worker:
        """The current worker, or a fresh one when there is none or it died between calls."""
        if self._worker is not None and self._worker.proc.poll() is not None:
            self._lost(self._worker._death("worker exited between calls"))
            self._worker.kill()
            self._worker = None
        if self._worker is None:
            restart = self._started
            self._worker = self._spawn()
            self.restarts += int(restart)
        return self._worker

    def _lost(self, reason: str) -> str:
        if reason == "timed out":
            reason = f"no reply within {self.limits.call_timeout_s:g} s (wall clock); killed"
        self.failures += 1
        self.last_failure = reason
        return reason

    def _recycle(self) -> None:
        """Replace a worker near its CPU budget between calls, not in the middle of one."""
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
            # if this fails, the next call starts one (and retries) and reports if it cannot
            with contextlib.suppress(_WorkerLost):
                self._worker = self._spawn()
