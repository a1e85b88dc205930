"""The pipeline as several supervised processes (ADR 7): each group of stages is restarted
on its own, drains after the one upstream of it, and never runs twice at once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway._config import PipelineConfig, Settings
from gateway._groups import parse_stages
from gateway._metrics import Metrics, merge_exposition
from tests.conftest import REPO
from tests.test_durability import _blast
from tests.test_process_workers import alive

GROUPS = ("pipeline.process", "pipeline.infer-writeback")


def _status(data_dir: Path, group: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((data_dir / f"{group}.status.json").read_text())
    return result


def _audit(data_dir: Path, log: str) -> list[dict[str, Any]]:
    lines = (data_dir / "audit" / f"{log}.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _exactly_once(data_dir: Path, acked: list[str]) -> None:
    """Each acknowledged message has one disposition, and its advisories were made once."""
    conn = sqlite3.connect(data_dir / "wardgate.db")
    try:
        (dispositions,) = conn.execute("SELECT COUNT(*) FROM dispositions").fetchone()
        per_message = conn.execute("SELECT COUNT(*) FROM advisories GROUP BY message_id").fetchall()
        (facts,) = conn.execute("SELECT COUNT(DISTINCT subject) FROM facts").fetchone()
    finally:
        conn.close()
    assert dispositions == len(acked)
    assert len(per_message) == len(acked)
    assert len({n for (n,) in per_message}) == 1  # the same advisories for every message
    assert facts > 0


def test_the_default_layout_is_normalize_apart_from_infer_and_writeback() -> None:
    assert Settings().pipeline.processes == [["process"], ["infer", "writeback"]]


@pytest.mark.parametrize(
    "layout",
    [[["infer"], ["process", "writeback"]], [["process"], ["infer"]], [["process"], []]],
)
def test_a_layout_must_hold_every_stage_once_upstream_first(layout: Any) -> None:
    with pytest.raises(ValueError, match="each of process, infer, writeback once"):
        PipelineConfig(processes=layout)


def test_stages_of_one_process_must_be_consecutive() -> None:
    assert parse_stages("infer,writeback") == ("infer", "writeback")
    with pytest.raises(ValueError, match="consecutive"):
        parse_stages("process,writeback")


def test_metrics_of_several_processes_add_up() -> None:
    one, two = Metrics(), Metrics()
    one.messages.labels("infer", "advised").inc(2)
    two.messages.labels("infer", "advised").inc(3)
    two.ack_seconds.observe(0.003)
    text = merge_exposition(one.render().decode(), two.render().decode()).decode()
    assert 'wardgate_messages_total{outcome="advised",stage="infer"} 5.0' in text
    assert text.count("wardgate_ack_seconds_count ") == 1  # each process has one: summed
    assert "wardgate_ack_seconds_count 1.0" in text


@pytest.mark.parametrize("group", GROUPS)
def test_a_group_killed_mid_stream_is_restarted_and_nothing_is_lost_or_doubled(
    gateway_factory: Any, group: str
) -> None:
    gw = gateway_factory(group).start()
    other = next(g for g in GROUPS if g != group)
    before, untouched = _status(gw.data_dir, group), _status(gw.data_dir, other)
    acked: list[str] = []
    sender = threading.Thread(target=lambda: acked.extend(_blast(gw.mllp_port, 400, "M")))
    sender.start()
    time.sleep(0.3)  # mid-stream: some batches committed, some in flight
    os.kill(before["pid"], signal.SIGKILL)
    sender.join()
    assert len(acked) == 400
    records = gw.wait_disposed(acked)
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    assert _status(gw.data_dir, group)["pid"] != before["pid"]
    assert _status(gw.data_dir, other)["pid"] == untouched["pid"]  # restarted on its own
    assert gw.stop() == 0
    _exactly_once(gw.data_dir, acked)
    exits = [e for e in _audit(gw.data_dir, "gateway") if e["event"] == "pipeline_exited"]
    assert [e["details"]["group"] for e in exits] == [group]


def test_sigterm_drains_each_group_after_the_one_upstream_of_it(gateway_factory: Any) -> None:
    gw = gateway_factory("order").start()
    acked = _blast(gw.mllp_port, 400, "O")
    assert gw.stop(signal.SIGTERM) == 0
    _exactly_once(gw.data_dir, acked)
    process = {e["event"]: e["ts"] for e in _audit(gw.data_dir, "pipeline.process")}
    infer = {e["event"]: e["ts"] for e in _audit(gw.data_dir, "pipeline.infer-writeback")}
    # downstream is told to drain only once upstream has finished: it has all there is
    assert process["stopped"] <= infer["draining"]
    for group in GROUPS:
        assert not (gw.data_dir / f"{group}.status.json").exists()


@pytest.mark.parametrize("stages", ["process", "infer,writeback", "process,infer,writeback"])
def test_a_second_process_for_a_running_stage_waits_for_its_lock(
    gateway_factory: Any, stages: str
) -> None:
    gw = gateway_factory("twice").start()
    statuses = {g: _status(gw.data_dir, g)["pid"] for g in GROUPS}
    log = gw.data_dir.parent / "second.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    cmd = [sys.executable, "-m", "gateway", "stage", "pipeline", "--stages", stages]
    with log.open("wb") as out:
        second = subprocess.Popen(
            [*cmd, "--data-dir", str(gw.data_dir)], stdout=out, stderr=out, cwd=REPO, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "pipeline.waiting_for_lock" not in log.read_text():
            assert second.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        acked = _blast(gw.mllp_port, 40, "L")
        gw.wait_disposed(acked)
        assert second.poll() is None  # still waiting: it consumed nothing
        assert {g: _status(gw.data_dir, g)["pid"] for g in GROUPS} == statuses
        assert "pipeline.running" not in log.read_text()
    finally:
        second.kill()
        second.wait()
    assert gw.stop() == 0


def test_the_single_process_layout_still_runs(gateway_factory: Any) -> None:
    config = {"pipeline": {"processes": [["process", "infer", "writeback"]]}}
    gw = gateway_factory("single", config).start()
    child = _status(gw.data_dir, "pipeline")
    assert child["stages"] == ["process", "infer", "writeback"]
    assert gw.proc is not None  # ingest keeps the CPU first: the child runs 10 nicer
    nice = os.getpriority(os.PRIO_PROCESS, child["pid"])
    assert nice == min(os.getpriority(os.PRIO_PROCESS, gw.proc.pid) + 10, 19)
    acked = _blast(gw.mllp_port, 40, "S")
    records = gw.wait_disposed(acked)
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    assert gw.stop() == 0
    assert {e["event"] for e in _audit(gw.data_dir, "pipeline")} >= {"started", "stopped"}


def test_stages_on_worker_processes_lose_and_double_nothing(gateway_factory: Any) -> None:
    config = {"pipeline": {"process_workers": 2}, "inference": {"feature_workers": 2}}
    gw = gateway_factory("workers", config).start()
    workers = _status(gw.data_dir, "pipeline.process")["process_workers"]
    workers += _status(gw.data_dir, "pipeline.infer-writeback")["feature_workers"]
    assert len(set(workers)) == 4
    acked = _blast(gw.mllp_port, 200, "W")
    records = gw.wait_disposed(acked)
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    assert gw.stop() == 0
    _exactly_once(gw.data_dir, acked)
    assert not any(alive(pid) for pid in workers)  # they went with their stages
