"""Stage loops that share a baton step one at a time, and a busy stage cannot starve another;
stages in other processes wake each other through a doorbell."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway._stage import Baton, Doorbell, StageLoop
from tests.conftest import REPO


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


def test_a_doorbell_wakes_a_consumer_in_another_process(tmp_path: Path) -> None:
    consumer = Doorbell(tmp_path / "x.bell")
    assert not consumer.wait(0.01)  # nobody rang
    ring = "import sys; from gateway._stage import Doorbell; Doorbell(Path(sys.argv[1])).set()"
    code = f"from pathlib import Path; {ring}"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.bell")], check=True, cwd=REPO)
    assert consumer.wait(5) and time.monotonic() - started < 5
    consumer.clear()
    assert not consumer.wait(0.01)  # cleared: it sleeps again
    consumer.close()


def test_a_ring_before_the_consumer_waits_is_kept_and_one_with_no_consumer_is_dropped(
    tmp_path: Path,
) -> None:
    producer = Doorbell(tmp_path / "y.bell")
    producer.set()  # no consumer has it open: dropped, never blocks nor raises
    consumer = Doorbell(tmp_path / "y.bell")
    assert not consumer.wait(0.01)
    for _ in range(100_000):  # far more rings than a pipe holds: never blocks
        producer.set()
    assert consumer.wait(0)
    consumer.clear()
    assert not consumer.wait(0)
    producer.close()
    consumer.close()


def test_a_stage_loop_sleeps_on_a_doorbell_until_rung(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    stage = Busy("downstream", 0, log)
    loop = StageLoop(stage, Doorbell(tmp_path / "z.bell"), idle_wait_s=10)
    thread = threading.Thread(target=loop.run)
    thread.start()
    time.sleep(0.05)
    stage.todo = 1
    Doorbell(tmp_path / "z.bell").set()  # the upstream process commits, then rings
    deadline = time.monotonic() + 5
    while stage.todo and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stage.todo == 0  # woken long before its 10 s idle wait
    loop.drain.set()
    loop.wake.set()  # how the pipeline wakes it to drain
    thread.join(timeout=5)
    assert not thread.is_alive()
