"""How a stage runs: a loop of ``consume -> decide -> produce`` steps on its own thread.

Each step handles one batch and returns how many inputs it consumed. The loop sleeps on
a wake-up event when idle. Draining: once ``drain`` is set (after upstream has stopped),
the loop keeps stepping until a step finds nothing, then returns, so SIGTERM finishes
in-flight work instead of dropping it.

Stages that share a process (and so a GIL) take turns through a :class:`Baton`: one step
at a time, in the order they asked. Left to the GIL, three busy stage threads hand it to
each other every few milliseconds and at every SQLite call, which measured 20-40% more
CPU per message than running the same steps one after another (ADR 6).

Stages in different processes (ADR 7) wake each other through a :class:`Doorbell`, a
named pipe with the interface of a ``threading.Event``: the producer rings it after each
commit, the consumer sleeps on it (and still looks every ``idle_wait_s``, so a lost ring
costs latency, never a message).
"""

from __future__ import annotations

import errno
import os
import select
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol

from gateway._log import get_logger

log = get_logger("stage")
IDLE_WAIT_S = 0.05


class Stage(Protocol):
    name: str

    def step(self) -> int:
        """Process one batch; return how many inputs were consumed (0 when idle)."""
        ...


class Signal(Protocol):
    """What wakes a stage: a ``threading.Event`` in-process, a :class:`Doorbell` across."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Doorbell:
    """A wake-up between processes: a FIFO that carries no data, only "look again".

    The consumer opens it read-write (so it never sees end-of-file when no producer has it
    open) and waits with ``select``; the producer opens it write-only and non-blocking, and
    a ring that cannot be written (no consumer yet, or the pipe already full of rings) is
    dropped: a consumer that is not waiting will look anyway. Either side may restart.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        with suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise OSError(errno.EEXIST, "not a FIFO: remove it", str(path))

    def set(self) -> None:
        """Ring (the producer's side); never blocks."""
        try:
            if self._write_fd is None:
                self._write_fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # full of rings already: the consumer will wake
        except OSError:  # ENXIO: no consumer has it open yet; EPIPE: it went away
            self._close_writer()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until rung or ``timeout``; True if rung (the consumer's side)."""
        if self._read_fd is None:
            self._read_fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK)
        readable, _, _ = select.select([self._read_fd], [], [], timeout)
        return bool(readable)

    def clear(self) -> None:
        """Forget the rings so far (before looking at the topic, so none is missed)."""
        if self._read_fd is None:
            return
        with suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass

    def _close_writer(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def close(self) -> None:
        self._close_writer()
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


class Baton:
    """Lets one stage step at a time, first come first served (a ticket lock).

    First come first served matters: a plain lock goes back to the thread that just let
    it go, so a stage with a backlog would starve the stages downstream of it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._queue[0] is ticket)
        try:
            yield
        finally:
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()


class StageLoop:
    """Owns one stage's thread-side loop; the runtime awaits ``run`` via ``to_thread``."""

    def __init__(
        self,
        stage: Stage,
        wake: Signal,
        notify: Signal | None = None,
        idle_wait_s: float = IDLE_WAIT_S,
        baton: Baton | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """``wake`` is set by upstream when there is input; ``notify`` wakes downstream.

        ``idle_wait_s`` bounds how long an idle stage sleeps when nobody can wake it
        (its upstream is another process). With a ``baton``, each step waits its turn.
        ``linger_s``: woken from idle, wait this long (without the baton) before stepping,
        so that a batch can gather (micro-batching); a stage with a backlog never waits.
        """
        self.stage = stage
        self.wake = wake
        self.notify = notify
        self.idle_wait_s = idle_wait_s
        self.baton = baton
        self.linger_s = linger_s
        self.drain = threading.Event()

    def _step(self) -> int:
        if self.baton is None:
            return self.stage.step()
        with self.baton.turn():
            return self.stage.step()

    def run(self) -> None:
        backoff = 0.0
        woken = False
        while True:
            if woken and self.linger_s > 0:
                time.sleep(self.linger_s)
            try:
                consumed = self._step()
                backoff = 0.0
            except Exception as exc:  # a stage never dies silently: log, back off, retry
                log.error("stage.step_failed", stage=self.stage.name, error=type(exc).__name__)
                backoff = min(max(backoff * 2, 0.05), 2.0)
                time.sleep(backoff)
                woken = False
                continue
            if consumed:
                if self.notify is not None:
                    self.notify.set()
                woken = False
                continue
            if self.drain.is_set():
                return
            woken = self.wake.wait(self.idle_wait_s)
            self.wake.clear()
