"""How a stage runs: a loop of ``consume -> decide -> produce`` steps on its own thread.

Each step handles one batch and returns how many inputs it consumed. The loop sleeps on
a wake-up event when idle. Draining: once ``drain`` is set (after upstream has stopped),
the loop keeps stepping until a step finds nothing, then returns, so SIGTERM finishes
in-flight work instead of dropping it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from gateway._log import get_logger

log = get_logger("stage")
_IDLE_WAIT_S = 0.05


class Stage(Protocol):
    name: str

    def step(self) -> int:
        """Process one batch; return how many inputs were consumed (0 when idle)."""
        ...


class StageLoop:
    """Owns one stage's thread-side loop; the runtime awaits ``run`` via ``to_thread``."""

    def __init__(
        self,
        stage: Stage,
        wake: threading.Event,
        notify: threading.Event | None = None,
        idle_wait_s: float = _IDLE_WAIT_S,
    ) -> None:
        """``wake`` is set by upstream when there is input; ``notify`` wakes downstream.

        ``idle_wait_s`` bounds how long an idle stage sleeps when nobody can wake it
        (its upstream is another process).
        """
        self.stage = stage
        self.wake = wake
        self.notify = notify
        self.idle_wait_s = idle_wait_s
        self.drain = threading.Event()

    def run(self) -> None:
        backoff = 0.0
        while True:
            try:
                consumed = self.stage.step()
                backoff = 0.0
            except Exception as exc:  # a stage never dies silently: log, back off, retry
                log.error("stage.step_failed", stage=self.stage.name, error=type(exc).__name__)
                backoff = min(max(backoff * 2, 0.05), 2.0)
                time.sleep(backoff)
                continue
            if consumed:
                if self.notify is not None:
                    self.notify.set()
                continue
            if self.drain.is_set():
                return
            self.wake.wait(self.idle_wait_s)
            self.wake.clear()
