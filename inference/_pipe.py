"""The parent's end of one model worker: the process, its two pipes, and every check on what
the worker sends back.

The worker is untrusted (a signed bundle's custom ops run inside it), so nothing it sends is
believed before it is checked. Every read waits under the call's deadline (``poll``, never
a blocking read), so a worker that goes quiet, or sends half a frame, times out. A frame's
length is bounded by its kind before any of it is read, so a lying header cannot make the
parent allocate or wait for more than the cap. An OUTPUTS frame is parsed against the
layout the worker declared at READY (which the parent checked against the signed manifest):
ranks, dims and byte counts must add up to the frame's length exactly, and every output
must have one row per input row, or the frame is refused. Each refusal is a
:class:`WorkerLost`: the sandbox kills the worker, starts another and retries the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference import _worker as wire

_WORKER = Path(wire.__file__).resolve()
_PASS_ENV = ("PATH", "LANG", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
_PIPE_BYTES = 1 << 20  # a 4,096-row batch and its outputs each fit in one pipe buffer
_INBOX = 1 << 16  # what the first read of a reply asks for: every small frame, in one go
_HEAD = wire.HEADER.size
MAX_TEXT = 1 << 20  # READY, REPORT and ERROR frames
_MAX_DIM = 1 << 40
_MAX_PLANS = 4096  # checked OUTPUTS layouts remembered, one per batch size


def _sched_getcpu() -> Any:
    """libc's ``sched_getcpu`` (the CPU the calling thread runs on), or None."""
    try:
        return ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None


_GETCPU = _sched_getcpu()


def _poll_ms(deadline: float) -> int:
    """Milliseconds to ``poll`` until ``deadline``; 0 once it has passed, which still finds
    a reply that came in time but was read late (the caller was busy with other calls)."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


class WorkerLost(Exception):
    """The worker timed out, died or broke the protocol; restart and retry."""


class WorkerGone(WorkerLost):
    """The worker had exited before the call: nothing of it reached the worker."""


class ProtocolViolation(WorkerLost):
    """The worker sent something the protocol does not allow; it is not trusted further."""

    def __init__(self, what: str) -> None:
        super().__init__(f"protocol violation: {what}")


def worker_env(threads: int) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["OMP_NUM_THREADS"] = str(threads)
    env["ORT_DISABLE_TELEMETRY"] = "1"  # onnxruntime >= 1.2x keeps a telemetry cache ...
    env["HOME"] = env["XDG_CACHE_HOME"] = "/nonexistent"  # ... under $XDG_CACHE_HOME
    return env


@dataclass(frozen=True)
class _Plan:
    """Where each output lies in an OUTPUTS frame for one batch size, once checked; a later
    frame is read with it only when its header is byte for byte this one's ``head``."""

    head: bytes  # ranks and dims, as sent
    size: int  # the frame's exact length
    arrays: tuple[tuple[np.dtype[Any], tuple[int, ...], int], ...]  # dtype, shape, offset
    block: tuple[np.dtype[Any], tuple[int, int], int] | None  # all [rows], one dtype: one view


@dataclass(frozen=True)
class OutputLayout:
    """The model's outputs, in the order of every OUTPUTS frame: names and numpy dtypes."""

    names: tuple[str, ...]
    dtypes: tuple[np.dtype[Any], ...]
    _plans: dict[int, _Plan] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: object, declared: Sequence[str]) -> OutputLayout:
        """The READY frame's ``outputs``; the names must be the manifest's ``declared``."""
        if not isinstance(raw, list) or not 0 < len(raw) <= wire.MAX_OUTPUTS:
            raise ProtocolViolation("READY outputs must be a non-empty list")
        names, dtypes = [], []
        for item in raw:
            pair = isinstance(item, list) and len(item) == 2
            if not (pair and all(type(x) is str for x in item)):
                raise ProtocolViolation("READY outputs must be [name, dtype] pairs")
            if item[1] not in wire.DTYPES.values():
                raise ProtocolViolation(f"dtype {item[1]} is not allowed on the sandbox pipe")
            names.append(item[0])
            dtypes.append(np.dtype(item[1]))
        if len(set(names)) != len(names) or sorted(names) != sorted(declared):
            raise ProtocolViolation("READY outputs are not the manifest's outputs")
        return cls(tuple(names), tuple(dtypes))

    def decode(self, body: memoryview, rows: int) -> tuple[float, dict[str, Any]]:
        """The worker's CPU seconds and the outputs of an OUTPUTS frame (views of ``body``).

        :class:`ProtocolViolation` unless ranks, dims and byte counts describe ``body``
        exactly, with ``rows`` rows per output.
        """
        plan = self._plans.get(rows)
        start = wire.CPU.size
        if (
            plan is None
            or len(body) != plan.size
            or body[start : start + len(plan.head)] != plan.head
        ):
            plan = self._plan(body, rows)
            if len(self._plans) >= _MAX_PLANS:  # a worker must not grow this without bound
                self._plans.clear()
            self._plans[rows] = plan
        (cpu,) = wire.CPU.unpack_from(body)
        if plan.block is not None:
            dtype, shape, at = plan.block
            return cpu, dict(zip(self.names, np.ndarray(shape, dtype, body, at), strict=True))
        arrays = (np.ndarray(shape, dt, body, at) for dt, shape, at in plan.arrays)
        return cpu, dict(zip(self.names, arrays, strict=True))

    def _plan(self, body: memoryview, rows: int) -> _Plan:
        n, start = len(self.names), wire.CPU.size
        try:
            ranks = body[start : start + n].tobytes()
            dims = struct.unpack_from(f"<{sum(ranks)}Q", body, start + n)
        except struct.error:
            raise ProtocolViolation("OUTPUTS frame shorter than its header") from None
        if len(ranks) != n or min(ranks) < 1 or max(dims) > _MAX_DIM:
            raise ProtocolViolation("OUTPUTS header has an output without rows, or a huge dim")
        at = start + n + 8 * len(dims)
        head = body[start:at].tobytes()
        arrays = []
        for name, dtype, rank in zip(self.names, self.dtypes, ranks, strict=True):
            shape, dims = dims[:rank], dims[rank:]
            if shape[0] != rows:
                raise ProtocolViolation(f"output {name} does not have one row per input row")
            arrays.append((dtype, shape, at))
            at += math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if at != len(body):
            raise ProtocolViolation("OUTPUTS frame length does not match its arrays")
        block = None
        if set(ranks) == {1} and len(set(self.dtypes)) == 1:
            block = (self.dtypes[0], (n, rows), arrays[0][2])
        return _Plan(head, at, tuple(arrays), block)


def parse_ready(payload: memoryview, declared: Sequence[str]) -> dict[str, Any]:
    """The READY frame: ``provider`` (str), ``enforcement`` (str -> str), ``layout``."""
    try:
        ready = json.loads(payload.tobytes())
        provider, enforcement = ready["provider"], ready["enforcement"]
        if type(provider) is not str or not isinstance(enforcement, dict):
            raise TypeError
        layout = OutputLayout.parse(ready["outputs"], declared)
    except (ValueError, TypeError, KeyError):  # JSONDecodeError, UnicodeDecodeError: ValueError
        raise ProtocolViolation("malformed READY frame") from None
    enforced = {str(k): str(v) for k, v in enforcement.items()}
    return {"provider": provider, "enforcement": enforced, "layout": layout}


class WorkerProcess:
    """One worker process and its two pipes, with deadline-bounded, size-bounded frame I/O."""

    def __init__(self, args: list[str], threads: int) -> None:
        self.env = worker_env(threads)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(_WORKER), *args],
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
        for fd in (self._w, self._r):
            os.set_blocking(fd, False)
            # above /proc/sys/fs/pipe-max-size this fails: larger frames then take more reads
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._can_read, self._can_write = select.poll(), select.poll()
        self._can_read.register(self._r, select.POLLIN)
        self._can_write.register(self._w, select.POLLOUT)
        self._cpu = -1  # the CPU the worker is pinned to (-1: none)
        self._extra = b""  # bytes read past a reply: the start of the next one
        try:
            self.capacity = min(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (self._w, self._r))
        except OSError:
            self.capacity = 1 << 16  # Linux's default

    @property
    def pid(self) -> int:
        return self.proc.pid

    def follow_caller(self) -> None:
        """Keep the worker on the CPU of the thread that calls it.

        A call is synchronous (the caller sleeps while the worker runs), so sharing a CPU
        costs nothing, while a wake-up across CPUs does: on a VM whose idle CPUs halt, it
        can cost more than the model. The kernel often, but not always, puts the two
        together by itself; this makes it so. Re-pinned when the caller has moved; a
        refusal (a cpuset, no permission) leaves the kernel to place it.
        """
        cpu = _GETCPU() if _GETCPU is not None else -1
        if cpu != self._cpu and cpu >= 0:
            self._cpu = cpu
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.pid, {cpu})

    def let_float(self) -> None:
        """Let the kernel place the worker anywhere the caller may run: for calls that
        overlap the caller's own work, which a shared CPU would serialise."""
        if self._cpu != -1:
            self._cpu = -1
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.pid, os.sched_getaffinity(0))

    def send(self, kind: int, parts: Sequence[Any], deadline: float) -> None:
        """One frame: ``kind``, then the concatenation of the buffers in ``parts``.

        :class:`WorkerGone` when the worker had exited before any of it was written.
        """
        length = sum(len(p) if type(p) is bytes else memoryview(p).nbytes for p in parts)
        views: list[Any] = [wire.HEADER.pack(kind, length), *parts]
        left = wire.HEADER.size + length
        while True:
            try:
                written = os.writev(self._w, views)
            except BlockingIOError:  # the pipe is full: wait until the worker reads
                self._wait(self._can_write, deadline)
                continue
            except OSError:  # BrokenPipeError: the worker is gone
                if left == wire.HEADER.size + length:
                    raise WorkerGone(self.death("worker exited between calls")) from None
                raise WorkerLost(self.death("worker pipe closed")) from None
            left -= written
            if not left:
                return
            views = wire.unwritten(views, written)

    def recv(
        self, deadline: float, caps: dict[int, int], more: bool = False
    ) -> tuple[int, memoryview]:
        """The next frame; its kind must be in ``caps`` and its length at most the cap.

        One read usually brings the whole frame. Bytes beyond it are the next reply's when
        ``more`` (another call is in flight), kept for the next ``recv``; otherwise they
        are a protocol violation, as a frame is only ever an answer.
        """
        data: bytes | None = self._extra
        self._extra = b""
        if not data:
            if not self._can_read.poll(_poll_ms(deadline)):  # rarely there before a poll
                raise WorkerLost("timed out")
            try:
                data = os.read(self._r, _INBOX)
            except BlockingIOError:
                data = None
            if data == b"":
                raise WorkerLost(self.death("worker exited"))
        if data is not None and len(data) >= _HEAD:  # the usual case: a whole frame at once
            kind, length = wire.HEADER.unpack_from(data)
            end = _HEAD + length
            if len(data) >= end and length <= caps.get(kind, -1):
                if len(data) > end:
                    if not more:
                        raise ProtocolViolation("bytes sent after a frame")
                    self._extra = data[end:]
                return kind, memoryview(data)[_HEAD:end]  # every check done, and no copy
        return self._recv_rest(data or b"", deadline, caps)

    def _recv_rest(
        self, data: bytes, deadline: float, caps: dict[int, int]
    ) -> tuple[int, memoryview]:
        """:meth:`recv` for a frame that did not come whole in the first read, or is refused."""
        head = bytearray(data[:_HEAD])
        while len(head) < _HEAD:
            chunk = memoryview(bytearray(_HEAD - len(head)))
            head += chunk[: self._read_some(chunk, deadline)]
        kind, length = wire.HEADER.unpack_from(head)
        if kind not in caps:
            raise ProtocolViolation(f"unexpected frame kind {kind}")
        if length > caps[kind]:
            raise ProtocolViolation(f"a frame of {length} bytes is over the {caps[kind]}-byte cap")
        have = max(len(data) - _HEAD, 0)
        if have > length:
            raise ProtocolViolation("bytes sent after a frame")
        body = np.empty(length, dtype=np.uint8).data  # no zero fill: every byte is read
        body[:have] = data[_HEAD:]
        while have < length:
            have += self._read_some(body[have:], deadline)
        return kind, body

    def _read_some(self, view: memoryview, deadline: float) -> int:
        """Read at least one byte into ``view`` (bounded by its length) before the deadline."""
        while True:
            try:
                got = os.readv(self._r, [view])
            except BlockingIOError:
                self._wait(self._can_read, deadline)
                continue
            if got == 0:
                raise WorkerLost(self.death("worker exited"))
            return got

    @staticmethod
    def _wait(poller: select.poll, deadline: float) -> None:
        if not poller.poll(_poll_ms(deadline)):
            raise WorkerLost("timed out")

    def death(self, what: str) -> str:
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
            self.send(wire.EXIT, [], time.monotonic() + 1)
            self.proc.wait(timeout=2)
        except (WorkerLost, subprocess.TimeoutExpired):
            pass
        self.kill()
