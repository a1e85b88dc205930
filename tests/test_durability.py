"""ACK means durable: nothing acknowledged is lost across a crash or a drain."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from typing import Any

from adapters import MllpClient, ack_code
from tests.hl7_samples import VITALS_NORMAL, oru


def _blast(port: int, n: int, prefix: str) -> list[str]:
    """Send n messages pipelined on 4 connections; return the control ids that got AA."""

    async def one(conn: int) -> list[str]:
        ids = [f"{prefix}-{conn}-{i}" for i in range(n // 4)]
        async with MllpClient("127.0.0.1", port) as client:
            for i, cid in enumerate(ids):
                client.write(oru(cid, f"MRN{conn}{i % 7}", VITALS_NORMAL))
            return [cid for cid in ids if ack_code(await client.read_ack()) == "AA"]

    async def main() -> list[str]:
        results = await asyncio.gather(*(one(c) for c in range(4)))
        return [cid for ids in results for cid in ids]

    return asyncio.run(main())


def test_ack_is_sent_only_after_the_journal_commit_so_a_crash_loses_nothing(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory("crash").start()
    acked = _blast(gw.mllp_port, 200, "K")
    assert len(acked) == 200
    gw.stop(signal.SIGKILL)  # no drain: whatever was acknowledged must already be on disk
    conn = sqlite3.connect(gw.data_dir / "journal.db")
    (journaled,) = conn.execute("SELECT COUNT(*) FROM journal").fetchone()
    conn.close()
    assert journaled == 200
    gw.start()  # same data dir: the pipeline resumes from its committed offsets
    records = gw.wait_disposed(acked)
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    gw.stop()


def test_sigterm_drains_in_flight_work_then_exits_cleanly(gateway_factory: Any) -> None:
    gw = gateway_factory("drain").start()
    acked = _blast(gw.mllp_port, 120, "D")
    assert gw.stop(signal.SIGTERM) == 0
    conn = sqlite3.connect(gw.data_dir / "wardgate.db")
    disposed = {row[0] for row in conn.execute("SELECT message_id FROM dispositions")}
    (journaled,) = conn.execute("SELECT COUNT(*) FROM dispositions").fetchone()
    conn.close()
    assert len(disposed) == len(acked) == journaled == 120


def test_a_crashed_pipeline_is_restarted_and_ingest_keeps_acknowledging(
    gateway_factory: Any,
) -> None:
    import json
    import os

    gw = gateway_factory("restart").start()
    files = sorted(gw.data_dir.glob("pipeline*.status.json"))  # one per process (ADR 7)
    pids = {f.name: json.loads(f.read_text())["pid"] for f in files}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    acked = _blast(gw.mllp_port, 40, "R")  # the pipeline is down or restarting meanwhile
    assert len(acked) == 40
    records = gw.wait_disposed(acked)
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    for name, pid in pids.items():
        assert json.loads((gw.data_dir / name).read_text())["pid"] != pid
    assert gw.stop() == 0
    trail = (gw.data_dir / "audit" / "gateway.log").read_text()
    assert trail.count('"pipeline_exited"') == len(pids) == 2
