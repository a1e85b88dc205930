"""Worker processes for a stage's CPU-heavy, side-effect-free work (ADR 8).

A stage stays its topic's one consumer: it reads a batch, hands shares of it to a
:class:`StagePool`, and commits the results in order itself. The pool only spreads CPU over
cores; offsets, topic order and one disposition per message never depend on it. Workers
are the gateway's own code (not a sandbox) and start from the same config and data dir.

A pool's workers start with it (a worker that cannot start fails start-up, with its
reason), exit with their stage process however it ends, and are replaced when one dies:
the batch it was working on raises :class:`BrokenProcessPool`, for the stage to redo in
its own thread.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gateway._log import get_logger

_A = TypeVar("_A")
_R = TypeVar("_R")
_failure: str | None = None  # in a worker: why its initializer failed


class WorkersNotStarted(RuntimeError):
    """A stage's worker could not start (bad keys or config); the message says why."""


def _follow(stage_pid: int) -> None:
    """Exit when the stage process does, however it ends (SIGKILL included).

    A worker is the forkserver's child, not the stage's, and waits on a queue whose ends it
    holds itself, so nothing else would tell it; and while it lives, so does the
    forkserver.
    """
    try:
        watch = os.pidfd_open(stage_pid)
    except ProcessLookupError:
        os._exit(0)

    def wait_then_exit() -> None:
        select.select([watch], [], [])
        os._exit(0)

    threading.Thread(target=wait_then_exit, name="follow-stage", daemon=True).start()


def _boot(stage_pid: int, initializer: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Each worker's initializer. It never raises: an initializer that raises breaks the
    pool with no reason given, so the reason is kept for ``_ready`` to report."""
    global _failure
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage process decides when to stop
    _follow(stage_pid)
    try:
        initializer(*args)
    except Exception as exc:  # about keys and config: paths and names, not message data
        _failure = f"{type(exc).__name__}: {exc}"


def _ready() -> str | None:
    return _failure


class StagePool:
    """``workers`` processes, each set up by ``initializer(*initargs)``."""

    def __init__(
        self,
        stage: str,
        workers: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
    ) -> None:
        self.stage = stage
        self.workers = workers
        self._boot_args = (os.getpid(), initializer, initargs)
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # forkserver: the stage process has threads, which a fork would copy mid-lock
        context = multiprocessing.get_context("forkserver")
        executor = ProcessPoolExecutor(
            self.workers, context, initializer=_boot, initargs=self._boot_args
        )
        # a worker starts on a submit that finds none idle: start them all now, not on
        # the first batch (each loads its keys and models, about a second)
        futures = [executor.submit(_ready) for _ in range(self.workers)]
        wait(futures)
        failed = [why for why in (f.result() for f in futures) if why is not None]
        if failed:
            executor.shutdown(cancel_futures=True)
            raise WorkersNotStarted(f"{self.stage} workers could not start: {failed[0]}")
        return executor

    @property
    def pids(self) -> list[int]:
        """The workers' pids (for the status file and operators)."""
        return sorted(self._executor._processes)

    def map(self, fn: Callable[[_A], _R], shares: Sequence[_A]) -> list[_R]:
        """``fn`` of each share, in order, one share per worker at a time.

        :class:`BrokenProcessPool` when a worker died meanwhile: the pool is replaced, and
        the caller redoes the batch itself.
        """
        try:
            return list(self._executor.map(fn, shares))
        except BrokenProcessPool:
            get_logger(self.stage).warning(
                "stage.worker_lost", stage=self.stage, count=self.workers
            )
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
