"""End-to-end benchmark: MLLP in -> disposition, ACK latency, and where the time goes.

Run: .venv/bin/python benchmarks/e2e_mllp.py [--messages 6000]
On a node with cores to spare (the issue's 2,000 msgs/s needs ~6-8 at today's CPU a
message): ... --processes process/infer/writeback --process-workers 3 --feature-workers 3
--rates 500,1000,2000 --out /tmp/e2e_big.out
Prints (and benchmarks/e2e_mllp.out keeps) these tables, each measured in this run:
1. HL7 v2 parse rate: wardgate's reader beside hl7apy on the same ORU messages;
2. in-process cost per message of each stage's main work (parse, FHIR, de-id), with the
   FHIR check of ADR 6 beside the fhir.resources validation it replaced;
3. the pipeline's CPU per message, stage by stage, in one process (``time.process_time``
   around each stage draining the same messages; robust to other load on the machine);
4. end-to-end throughput of a real gateway subprocess: ORU messages/s from the first
   send to the last disposition, with pipelined senders on several connections, and the
   CPU each process spent per message (``/proc``: user + system; one row per pipeline
   process, ADR 7; ``--processes process/infer,writeback`` picks the layout, and
   ``--process-workers`` / ``--feature-workers`` the stages' worker pools, ADR 8);
5. ACK latency p50/p99 at fixed offered rates (scheduled sends, not closed-loop);
6. advisory latency (receipt -> advisories written) at fixed offered rates, each started
   once the backlog of the tables before it is disposed.

Wall-clock figures (rates, latencies, busy time) move with whatever else the machine runs;
compare CPU figures across runs, and wall-clock ones only within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hl7apy.parser import parse_message as hl7apy_parse  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from adapters import MllpClient, ack_code  # noqa: E402
from gateway._config import Settings  # noqa: E402
from gateway._demo_feed import one_oru  # noqa: E402
from gateway._journal import Journal  # noqa: E402
from gateway._pipeline import Pipeline  # noqa: E402
from gateway.normalize import _bundle, parse_message, to_fhir  # noqa: E402
from schemas import Source  # noqa: E402
from security import load_keyring  # noqa: E402
from security.deid import Deidentifier  # noqa: E402
from tests.conftest import GatewayProcess  # noqa: E402
from tests.test_fhir_conformance import oracle  # noqa: E402

VITALS = {"rr": 18, "spo2": 96, "o2_flow": 0, "sbp": 122, "hr": 84, "temp": 37.1, "acvpu": "A"}
T0 = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)


def messages(n: int, tag: str, patients: int = 200) -> list[bytes]:
    return [
        one_oru(f"BENCH{i % patients:04d}", f"{tag}-{i}", VITALS, T0 + timedelta(minutes=i))
        for i in range(n)
    ]


def rate(fn: object, items: list[bytes], repeat: int = 1) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return len(items) * repeat / (time.perf_counter() - start)


def parse_table(sample: list[bytes]) -> list[str]:
    ours = rate(parse_message, sample)
    theirs = rate(lambda m: hl7apy_parse(m.decode().replace("\n", "\r"), find_groups=False), sample)
    return [
        "| parser | ORU msgs/s | ratio |",
        "|---|---:|---:|",
        f"| wardgate reader | {ours:,.0f} | {ours / theirs:.1f}x |",
        f"| hl7apy (find_groups=False) | {theirs:,.0f} | 1.0x |",
    ]


def _validated_by_models(bundle: dict[str, Any]) -> None:
    """The normalizer's check before ADR 6: each entry through its fhir.resources model,
    then a copy of the Bundle with its decimals made JSON numbers."""
    if oracle(bundle) is not None:
        raise ValueError("invalid")
    _jsonable(bundle)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def stage_table(sample: list[bytes]) -> list[str]:
    deid = Deidentifier(os.urandom(32), os.urandom(32))
    parsed = [parse_message(m) for m in sample]
    bundles = [to_fhir(p) for p in parsed]

    def to_fhir_before(i: int) -> object:
        with patched(_bundle, "check_bundle", _validated_by_models):
            return to_fhir(parsed[i])

    steps = [
        ("parse (wardgate reader)", lambda i: parse_message(sample[i])),
        ("HL7 -> FHIR R4, checked (ADR 6)", lambda i: to_fhir(parsed[i])),
        ("HL7 -> FHIR R4, fhir.resources models (before)", to_fhir_before),
        ("de-identify bundle", lambda i: deid.deidentify(bundles[i])),
    ]
    rows = ["| in-process step | µs/msg | msgs/s on one core |", "|---|---:|---:|"]
    for name, fn in steps:
        start = time.process_time()
        for i in range(len(sample)):
            fn(i)
        per = (time.process_time() - start) / len(sample)
        rows.append(f"| {name} | {per * 1e6:,.0f} | {1 / per:,.0f} |")
    return rows


@contextlib.contextmanager
def patched(module: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _journal(data_dir: Path, batch: list[bytes], tag: str) -> None:
    journal = Journal(data_dir / "journal.db", load_keyring(data_dir).journal)
    source = Source(kind="mllp", name="BENCH^HOSP")

    async def append_all() -> None:
        for k in range(0, len(batch), 256):
            chunk = batch[k : k + 256]
            await asyncio.gather(
                *(journal.append(source, f"{tag}{k + i}", "hl7v2", m) for i, m in enumerate(chunk))
            )

    try:
        asyncio.run(append_all())
    finally:
        journal.close()


def pipeline_cpu_table(n: int) -> list[str]:
    """CPU per message of each stage, draining ``n`` journaled ORUs one stage after another."""
    rows = ["| pipeline stage (in-process, one after another) | CPU µs/msg |", "|---|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        _journal(data_dir, messages(300, "WARM"), "W")
        pipeline = Pipeline(Settings(data_dir=data_dir))
        try:
            stages = [loop.stage for loop in pipeline.loops]
            for stage in stages:  # warm-up: SQLite caches, the sandboxes' first calls
                while stage.step():
                    pass
            _journal(data_dir, messages(n, "CPU"), "C")
            gc.collect()
            gc.freeze()  # as the pipeline does once it has started (ADR 6)
            total = 0.0
            for stage in stages:
                start = time.process_time()
                while stage.step():
                    pass
                spent = time.process_time() - start
                total += spent
                rows.append(f"| {stage.name} | {spent / n * 1e6:,.0f} |")
            rows.append(f"| all three | {total / n * 1e6:,.0f} |")
        finally:
            gc.unfreeze()
            pipeline.close()
    return rows


async def _send_pipelined(port: int, batch: list[bytes], window: int) -> int:
    ok = 0
    async with MllpClient("127.0.0.1", port, timeout_s=60) as client:
        inflight = 0
        for message in batch:
            client.write(message)
            inflight += 1
            if inflight >= window:
                ok += ack_code(await client.read_ack()) == "AA"
                inflight -= 1
        for _ in range(inflight):
            ok += ack_code(await client.read_ack()) == "AA"
    return ok


def disposed(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'wardgate.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM dispositions").fetchone()[0])
    finally:
        conn.close()


def settle(gw: GatewayProcess) -> None:
    """Wait until every journaled message has its disposition (no backlog)."""
    conn = sqlite3.connect(f"file:{gw.data_dir / 'journal.db'}?mode=ro", uri=True)
    try:
        (journaled,) = conn.execute("SELECT COUNT(*) FROM journal").fetchone()
    finally:
        conn.close()
    deadline = time.monotonic() + 600
    while disposed(gw.data_dir) < journaled:
        if time.monotonic() > deadline:
            raise RuntimeError("dispositions stalled")
        time.sleep(0.05)


def throughput(
    gw: GatewayProcess, n: int, tag: str, connections: int = 8, window: int = 64
) -> list[str]:
    batch = messages(n, tag)
    chunks = [batch[i::connections] for i in range(connections)]
    base = disposed(gw.data_dir)
    assert gw.proc is not None
    pids = {"gateway (ingest, API)": gw.proc.pid}
    for path in sorted(gw.data_dir.glob("pipeline*.status.json")):  # one per process (ADR 7)
        status = json.loads(path.read_text())
        pids[f"pipeline ({', '.join(status['stages'])})"] = int(status["pid"])
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()

    async def send_all() -> list[int]:
        return list(
            await asyncio.gather(*(_send_pipelined(gw.mllp_port, c, window) for c in chunks))
        )

    acked = sum(asyncio.run(send_all()))
    acked_at = time.perf_counter() - start
    deadline = time.monotonic() + 600
    while disposed(gw.data_dir) - base < acked:
        if time.monotonic() > deadline:
            raise RuntimeError("dispositions stalled")
        time.sleep(0.02)
    done_at = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    return [
        f"| {n} ORU over {connections} connections, window {window} | value |",
        "|---|---:|",
        f"| accepted (AA) | {acked} |",
        f"| ingest rate (all ACKs back) | {n / acked_at:,.0f} msgs/s |",
        f"| end-to-end rate (last disposition) | {n / done_at:,.0f} msgs/s |",
        *(
            f"| CPU of {name} process | {spent / n * 1e6:,.0f} µs/msg |"
            for name, spent in cpu.items()
        ),
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_split(gw: GatewayProcess) -> list[str]:
    """Busy seconds per message in each pipeline stage, from the gateway's own metrics."""
    time.sleep(1.5)  # the pipeline publishes its metrics once a second
    with urllib.request.urlopen(gw.url + "/metrics") as resp:
        text = resp.read().decode()
    busy: dict[str, float] = {}
    handled: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name == "wardgate_stage_seconds_sum":
                busy[stage] = busy.get(stage, 0.0) + sample.value
            elif sample.name == "wardgate_messages_total":
                handled[stage] = handled.get(stage, 0.0) + sample.value
    rows = ["| pipeline stage (child process) | busy µs/msg |", "|---|---:|"]
    for stage in ("process", "infer", "writeback"):
        if handled.get(stage):
            rows.append(f"| {stage} | {busy.get(stage, 0.0) / handled[stage] * 1e6:,.0f} |")
    return rows


def paced(gw: GatewayProcess, batch: list[bytes], offered: int, connections: int) -> list[float]:
    """Send ``batch`` at ``offered`` msgs/s over ``connections``; each message's ACK time."""
    latencies: list[float] = []

    async def sender(k: int) -> None:
        mine = batch[k::connections]
        interval = connections / offered
        async with MllpClient("127.0.0.1", gw.mllp_port, timeout_s=60) as client:
            begin = time.perf_counter() + k * interval / connections
            for i, message in enumerate(mine):
                delay = begin + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                await client.send(message)
                latencies.append(time.perf_counter() - sent)

    async def run() -> None:
        await asyncio.gather(*(sender(k) for k in range(connections)))

    asyncio.run(run())
    return latencies


def ack_latency(gw: GatewayProcess, offered: int, seconds: float, connections: int = 4) -> str:
    batch = messages(int(offered * seconds), f"LAT{offered}")
    q = statistics.quantiles(paced(gw, batch, offered, connections), n=100)
    return f"| {offered} msgs/s | {len(batch)} | {q[49] * 1000:.2f} | {q[98] * 1000:.2f} |"


def advisory_latency(gw: GatewayProcess, offered: int, seconds: float) -> str:
    """Receipt of each observation -> its advisories written (its disposition), at a
    fixed offered rate: both timestamps are the gateway's own (journal, dispositions)."""
    tag = f"ADV{offered}-"
    batch = messages(int(offered * seconds), tag)
    settle(gw)  # the backlog of an earlier table would count as this one's messages
    base = disposed(gw.data_dir)
    paced(gw, batch, offered, connections=4)
    deadline = time.monotonic() + 600
    while disposed(gw.data_dir) - base < len(batch):
        if time.monotonic() > deadline:
            raise RuntimeError("dispositions stalled")
        time.sleep(0.05)
    conn = sqlite3.connect(f"file:{gw.data_dir / 'wardgate.db'}?mode=ro", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS j", (f"file:{gw.data_dir / 'journal.db'}?mode=ro",))
        rows = conn.execute(
            "SELECT j.journal.received_at, d.at FROM j.journal "
            "JOIN dispositions d ON d.message_id = j.journal.id "
            "WHERE j.journal.control_id LIKE ? AND d.outcome = 'written_back'",
            (tag + "%",),
        ).fetchall()
    finally:
        conn.close()
    waits = [
        (datetime.fromisoformat(done) - datetime.fromisoformat(got)).total_seconds()
        for got, done in rows
    ]
    if len(waits) < 2:  # say what became of them rather than lose the whole run's output
        conn = sqlite3.connect(f"file:{gw.data_dir / 'wardgate.db'}?mode=ro", uri=True)
        counts = conn.execute(
            "SELECT outcome, COUNT(*) FROM dispositions WHERE message_id > ? GROUP BY 1", (base,)
        ).fetchall()
        conn.close()
        return f"| {offered} msgs/s | {len(batch)} | {len(waits)} (outcomes: {counts}) | | | |"
    q = statistics.quantiles(waits, n=100)
    return (
        f"| {offered} msgs/s | {len(batch)} | {len(waits)} | {q[49] * 1000:.1f} | "
        f"{q[98] * 1000:.1f} | {max(waits) * 1000:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument(
        "--processes",
        default=None,
        help="pipeline.processes as groups split by '/': process/infer,writeback "
        "(default: the configured default)",
    )
    parser.add_argument("--process-workers", type=int, default=0, help="ADR 8")
    parser.add_argument("--feature-workers", type=int, default=0, help="ADR 8")
    parser.add_argument(
        "--rates",
        default="50,100,200,300",
        help="offered msgs/s for the advisory latency table (a bigger node: 500,1000,2000)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "e2e_mllp.out")
    args = parser.parse_args()
    config: dict[str, Any] = {
        "pipeline": {"process_workers": args.process_workers},
        "inference": {"feature_workers": args.feature_workers},
    }
    if args.processes:
        config["pipeline"]["processes"] = [g.split(",") for g in args.processes.split("/")]
    sample = messages(1000, "P")
    out = [f"# e2e_mllp benchmark, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores", ""]
    layout = args.processes or "/".join(",".join(g) for g in Settings().pipeline.processes)
    out += [
        f"pipeline processes: {layout}; process_workers {args.process_workers}, "
        f"feature_workers {args.feature_workers}",
        "",
    ]
    out += ["## HL7 v2 parse rate (same 1,000 ORU^R01, 7 OBX each)", "", *parse_table(sample), ""]
    out += ["## Where a message's CPU goes (in-process, one core)", "", *stage_table(sample), ""]
    out += ["## The pipeline's CPU per message (in-process, one core)", ""]
    out += [*pipeline_cpu_table(min(args.messages, 2000)), ""]
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp) / "data", config).start()
        try:
            throughput(gw, 500, "WARM")  # warm-up: sandbox, SQLite caches
            out += ["## End to end through a real gateway (MLLP -> disposition)", ""]
            out += [*throughput(gw, args.messages, "TP"), ""]
            out += ["## Where the pipeline's wall time goes (all messages so far)", ""]
            out += [*stage_split(gw), ""]
            out += [
                "## ACK latency at a fixed offered rate (4 connections)",
                "",
                "| offered | messages | p50 ms | p99 ms |",
                "|---|---:|---:|---:|",
            ]
            for offered in (200, 500, 1000):
                out.append(ack_latency(gw, offered, seconds=5))
            out += [
                "",
                "## Advisory latency: observation received -> advisories written",
                "",
                "| offered | messages | written back | p50 ms | p99 ms | max ms |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for offered in (int(r) for r in args.rates.split(",")):
                out.append(advisory_latency(gw, offered, seconds=8))
        finally:
            gw.stop()
    text = "\n".join(out) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
