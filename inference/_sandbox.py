"""Run one verified model in a worker process that has no network and bounded resources.

The parent side is blocking (the gateway calls it from its infer stage's thread) and
thread-safe. ``run`` is one call that waits for its reply; ``submit`` sends a batch and
returns a :class:`Pending` at once, so several calls can be in flight (to one worker, or to
several models' workers) while the caller works on: the worker then never sleeps between
calls. Replies are read in the order the calls were sent. Every call has a wall-clock
deadline (from when the worker could start on it); when the deadline passes, the worker
dies (a crash, or a kill by RLIMIT_AS / RLIMIT_CPU) or its reply breaks the protocol
(``inference._pipe`` checks every byte before it is believed), the worker is killed, a
fresh one is started and every call that was in flight on it is retried there
(``attempts`` per call, two by default; a worker found dead before the call reached it is
replaced without using one). When every attempt fails, :class:`SandboxError` says why; the
engine then bisects the batch to find the rows at fault. A model error reported by a
healthy worker (bad shape, say) is not retried: it would fail the same way. Each loss is
kept as ``last_failure`` (and counted in ``failures``) for ``/readyz``. A one-thread worker
whose caller waits is kept on the caller's CPU (see ``WorkerProcess.follow_caller``): such
a call is two process wake-ups, and across CPUs each can cost more than a small model's
whole run; with calls in flight it floats, to score beside the caller.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from inference import _worker as wire
from inference._bundle import ModelBundle
from inference._errors import SandboxError, WorkerUnavailable
from inference._pipe import (
    MAX_TEXT,
    OutputLayout,
    ProtocolViolation,
    WorkerGone,
    WorkerLost,
    WorkerProcess,
    parse_ready,
)

_RECYCLE_AT = 0.8  # of the worker's CPU budget
_TIMES = {1: "once", 2: "twice"}
_T = TypeVar("_T")
Outputs = dict[str, npt.NDArray[Any]]
_Frame = tuple[int, list[Any], dict[int, int], Callable[[int, memoryview], _T]]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits. ``cpu_seconds`` is a lifetime budget: the worker is recycled at 80%.

    ``memory_bytes`` also caps an OUTPUTS frame (the worker cannot hold larger outputs).
    """

    memory_bytes: int = 2 << 30
    cpu_seconds: int = 600
    call_timeout_s: float = 10.0
    start_timeout_s: float = 30.0
    gpu_mem_limit_bytes: int = 1 << 30
    threads: int = 1
    use_gpu: bool = True
    drop_privileges: bool = True

    def worker_args(self) -> list[str]:
        args = [
            f"--memory-bytes={self.memory_bytes}",
            f"--cpu-seconds={self.cpu_seconds}",
            f"--gpu-mem-limit={self.gpu_mem_limit_bytes}",
            f"--threads={self.threads}",
        ]
        args += [] if self.use_gpu else ["--no-gpu"]
        args += [] if self.drop_privileges else ["--keep-uid"]
        return args


class Sandbox:
    """A model in its own worker process: ``start()``, ``run(batch)``, ``close()``."""

    def __init__(self, bundle: ModelBundle, limits: SandboxLimits | None = None) -> None:
        self.bundle = bundle
        self.limits = limits or SandboxLimits()
        self._worker: WorkerProcess | None = None
        self._layout: OutputLayout | None = None
        self._lock = threading.Lock()
        self._width = len(bundle.manifest.inputs)
        self.provider = "not started"
        self.enforcement: dict[str, str] = {}
        self.restarts = 0
        self.failures = 0
        self.last_failure: str | None = None
        self._started = False
        self._inflight: deque[Pending[Any]] = deque()
        self._last_reply = 0.0
        self._worker_cpu = 0.0  # CPU seconds the current worker reported in its last reply

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (raises :class:`SandboxError` when it cannot start)."""
        with self._lock:
            if self._worker is None:
                try:
                    self._worker = self._spawn()
                except WorkerLost as exc:
                    raise SandboxError(f"worker failed to start: {exc}") from None

    def close(self) -> None:
        with self._lock:
            for call in self._inflight:
                call.lose("the sandbox was closed")
                call.tries = call.attempts
            self._inflight.clear()
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

    def _spawn(self) -> WorkerProcess:
        worker = WorkerProcess(self.limits.worker_args(), self.limits.threads)
        deadline = time.monotonic() + self.limits.start_timeout_s
        try:
            if self.bundle.custom_ops is not None:
                worker.send(wire.CUSTOM_OPS, [self.bundle.custom_ops], deadline)
            worker.send(wire.MODEL, [self.bundle.model_bytes], deadline)
            kind, payload = worker.recv(deadline, {wire.READY: MAX_TEXT, wire.ERROR: MAX_TEXT})
            if kind != wire.READY:
                raise WorkerLost(payload.tobytes().decode(errors="replace"))
            ready = parse_ready(payload, self.bundle.manifest.outputs)
        except WorkerLost:
            worker.kill()
            raise
        self._started = True
        self._worker_cpu = 0.0
        self._layout = ready["layout"]
        self.provider = ready["provider"]
        self.enforcement = {
            **ready["enforcement"],
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
        return self._submit(*self._run_frame(batch), attempts, overlap=False).result()

    def submit(
        self, batch: npt.NDArray[np.float32], attempts: int = 2, overlap: bool = True
    ) -> Pending[Outputs]:
        """Send a batch and return before its outputs: ``.result()`` is :meth:`run`'s answer.

        The worker scores while the caller goes on (building the next batch, or calling
        other models' workers), and a worker with a call queued never sleeps between calls:
        the two process wake-ups that make a lone small call cost several times the model's
        own run are paid once per burst. Replies come in the order the calls were sent.
        ``overlap``: the caller will work meanwhile, so the worker may run on another CPU;
        ``False`` keeps it on the caller's (as :meth:`run` does), for a caller that waits.
        """
        return self._submit(*self._run_frame(batch), attempts, overlap)

    def _run_frame(self, batch: npt.NDArray[np.float32]) -> _Frame[Outputs]:
        """A RUN frame for ``batch``: kind, parts, reply caps and the reply's parser."""
        if (
            type(batch) is not np.ndarray
            or batch.dtype != np.float32
            or not batch.flags.c_contiguous
        ):
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self._width:
            raise ValueError(f"batch must be float32 [N, {self._width}]")
        rows = len(batch)
        parts = [wire.RUN_SHAPE.pack(rows, self._width), batch]
        caps = {wire.OUTPUTS: max(self.limits.memory_bytes, MAX_TEXT), wire.ERROR: MAX_TEXT}

        def outputs(kind: int, body: memoryview) -> Outputs:
            if kind == wire.ERROR:
                raise SandboxError(f"model error: {body.tobytes().decode(errors='replace')}")
            assert self._layout is not None  # set by the _spawn that started this worker
            self._worker_cpu, result = self._layout.decode(body, rows)
            return result

        return wire.RUN, parts, caps, outputs

    def self_check(self, connect_to: tuple[str, int] | None = None) -> dict[str, Any]:
        """Ask the worker what it sees: env keys, uid, fds, limits, and a connect attempt."""
        request = {"connect": list(connect_to)} if connect_to else {}

        def report(kind: int, body: memoryview) -> dict[str, Any]:
            text = body.tobytes().decode(errors="replace")
            if kind != wire.REPORT:
                raise SandboxError(f"self-check failed: {text}")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ProtocolViolation("malformed REPORT frame")
            return parsed

        caps = {wire.REPORT: MAX_TEXT, wire.ERROR: MAX_TEXT}
        frame = [json.dumps(request).encode()]
        return self._submit(wire.SELFCHECK, frame, caps, report, 2, overlap=False).result()

    def _submit(
        self,
        kind: int,
        parts: Sequence[Any],
        caps: dict[int, int],
        parse: Callable[[int, memoryview], _T],
        attempts: int,
        overlap: bool,
    ) -> Pending[_T]:
        """Send one frame; its reply is read, and ``parse``d, by ``Pending.result``.

        ``parse`` raises :class:`WorkerLost` (a protocol violation) for a reply not to be
        trusted: that worker is killed like one that died, and the call retried.
        """
        call = Pending(self, kind, parts, caps, parse, attempts)
        with self._lock:
            self._make_room(call.size)
            self._send(call, overlap)
        return call

    def _make_room(self, size: int) -> None:
        """Read replies until the frames in flight and the next one fit in the pipe together.

        Then a send never waits on the worker, so the two cannot both wait: the worker on a
        full reply pipe the caller does not read, the caller on a full request pipe.
        """
        while self._inflight and self._worker is not None:
            if size + sum(c.size for c in self._inflight) <= self._worker.capacity:
                return
            self._read_reply()

    def _send(self, call: Pending[Any], overlap: bool) -> None:
        """Write ``call`` to the live worker (starting one if need be); on failure ``call``
        is left ``lost``, to be retried by ``result`` while it has attempts left."""
        gone = False
        while True:
            call.tries += 1
            try:
                worker = self._live_worker()
            except WorkerLost as exc:
                call.lose(self._lost(f"worker failed to start: {exc}"), unavailable=True)
                return
            try:
                if overlap:
                    worker.let_float()
                elif self.limits.threads == 1:  # one thread: it can share the caller's CPU
                    worker.follow_caller()
                call.sent_at = time.monotonic()
                worker.send(call.kind, call.parts, call.sent_at + self.limits.call_timeout_s)
            except WorkerLost as exc:
                reason = self._drop_worker(str(exc))
                if isinstance(exc, WorkerGone) and not gone:  # died between calls:
                    call.tries, gone = call.tries - 1, True  # this call never reached it
                    continue
                call.lose(reason)
                return
            except BaseException:  # half a frame may be in the pipe: the worker is unusable
                self._drop_worker("interrupted while sending a call")
                raise
            call.lost = None
            self._inflight.append(call)
            return

    def _read_reply(self) -> None:
        """Read and parse the oldest call's reply (a lost worker loses every call in flight).

        Its deadline runs from when the worker could start on it: its send, or the previous
        reply, whichever came later.
        """
        head, worker = self._inflight[0], self._worker
        assert worker is not None  # calls are in flight only on a live worker
        deadline = max(head.sent_at, self._last_reply) + self.limits.call_timeout_s
        try:
            kind, body = worker.recv(deadline, head.caps, more=len(self._inflight) > 1)
            head.value = head.parse(kind, body)
        except WorkerLost as exc:
            self._drop_worker(str(exc))
            return
        except SandboxError as exc:  # the worker is healthy; the call would fail again
            head.error = exc
        except BaseException:  # which reply comes next is no longer known: start afresh
            self._drop_worker("interrupted while reading a reply")
            raise
        self._last_reply = time.monotonic()
        head.done = True
        self._inflight.popleft()

    def _result(self, call: Pending[_T]) -> _T:
        with self._lock:
            while not call.done:
                if call.lost is None:
                    self._read_reply()
                elif call.tries < call.attempts:
                    self._make_room(call.size)
                    self._send(call, overlap=False)
                else:
                    error = WorkerUnavailable if call.unavailable else SandboxError
                    times = _TIMES.get(call.attempts, f"{call.attempts} times")
                    raise error(f"worker failed {times}; last: {call.lost}")
            budget = _RECYCLE_AT * self.limits.cpu_seconds  # 0: no CPU limit, no recycling
            if not self._inflight and self._worker_cpu > budget > 0:
                self._recycle()
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]  # done without error: parsed

    def _drop_worker(self, reason: str) -> str:
        """Kill the worker; every call in flight on it is lost (and retried by its ``result``)."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        reason = self._lost(reason)
        for call in self._inflight:
            call.lose(reason)
        self._inflight.clear()
        return reason

    def _live_worker(self) -> WorkerProcess:
        """The current worker, or a fresh one (counted as a restart after the first)."""
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
        """Replace a worker near its CPU budget between calls, not in the middle of one
        (called with the lock held and nothing in flight)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        # if this fails, the next call starts one (and retries) and reports if it cannot
        with contextlib.suppress(WorkerLost):
            self._worker = self._spawn()


class Pending(Generic[_T]):
    """A call sent to a worker; ``result()`` waits for its reply (reading, and keeping,
    the replies to calls sent before it) and retries it while it has attempts left."""

    def __init__(
        self,
        sandbox: Sandbox,
        kind: int,
        parts: Sequence[Any],
        caps: dict[int, int],
        parse: Callable[[int, memoryview], _T],
        attempts: int,
    ) -> None:
        self._sandbox = sandbox
        self.kind, self.parts, self.caps, self.parse = kind, parts, caps, parse
        self.attempts, self.tries = attempts, 0
        self.size = wire.HEADER.size + sum(memoryview(p).nbytes for p in parts)
        self.sent_at = 0.0
        self.done = False
        self.value: _T | None = None
        self.error: SandboxError | None = None  # a healthy worker's answer: not retried
        self.lost: str | None = None  # why the last try's worker was lost: retried
        self.unavailable = False  # ... because no worker could start

    def lose(self, reason: str, unavailable: bool = False) -> None:
        self.lost, self.unavailable = reason, unavailable

    def result(self) -> _T:
        return self._sandbox._result(self)
