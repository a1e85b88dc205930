"""Stage loops that share a baton step one at a time, and a busy stage cannot starve another."""

from __future__ import annotations

import threading
import time

from gateway._stage import Baton, StageLoop


class Busy:
    """A stage with a backlog of ``todo`` steps that records who was stepping when."""

    def __init__(self, name: str, todo: int, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.todo = todo
        self.log = log

    def step(self) -> int:
        if not self.todo:
            return 0
        self.log.append((self.name, "in"))
        time.sleep(0.002)  # releases the GIL, as SQLite and the sandbox do
        self.log.append((self.name, "out"))
        self.todo -= 1
        return 1


def run_loops(stages: list[Busy], baton: Baton | None) -> None:
    loops = [StageLoop(s, threading.Event(), idle_wait_s=0.001, baton=baton) for s in stages]
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for loop in loops:
        loop.drain.set()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_stages_with_a_baton_never_step_at_the_same_time() -> None:
    log: list[tuple[str, str]] = []
    run_loops([Busy("a", 20, log), Busy("b", 20, log), Busy("c", 20, log)], Baton())
    assert len(log) == 120
    for i in range(0, len(log), 2):  # every "in" is followed by the same stage's "out"
        assert log[i][1] == "in" and log[i + 1] == (log[i][0], "out")


def test_a_stage_with_a_backlog_does_not_starve_the_others() -> None:
    log: list[tuple[str, str]] = []
    run_loops([Busy("upstream", 200, log), Busy("downstream", 5, log)], Baton())
    entered = [name for name, what in log if what == "in"]
    # first come, first served: downstream gets a turn after at most a couple of upstream's
    last_downstream = max(i for i, name in enumerate(entered) if name == "downstream")
    assert last_downstream < 20


def test_without_a_baton_stages_overlap() -> None:
    log: list[tuple[str, str]] = []
    run_loops([Busy("a", 20, log), Busy("b", 20, log)], None)
    pairs = all(log[i + 1] == (log[i][0], "out") for i in range(0, len(log), 2))
    assert not pairs  # the baton is what serialises them
