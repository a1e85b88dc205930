"""Process-stage benchmark: normalize + de-identify in the stage's thread vs. on worker processes.

Run: .venv/bin/python benchmarks/process_workers.py [--messages 2000] [--rounds 2]
Prints (and benchmarks/process_workers.out keeps) the rate at which the process stage
drains a journal backlog of ORU messages with ``pipeline.process_workers`` = 0 (its own
thread), 1, 2 and 4, each on a fresh data dir holding the same messages, configurations
alternated over ``--rounds`` so that a change in the machine's speed falls on all alike;
and the CPU spent per message by the stage process and by its workers. Only this stage runs:
the figure is how far the stage scales with cores, not the gateway's end-to-end rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "benchmarks"))  # after the repo: benchmarks/inference.py is no package

from _inference_batching import process_cpu  # noqa: E402
from e2e_mllp import _journal, messages  # noqa: E402

from gateway._config import PipelineConfig, Settings  # noqa: E402
from gateway._pipeline import Pipeline  # noqa: E402

WORKERS = (0, 1, 2, 4)


def drain(n: int, workers: int, batch: list[bytes]) -> tuple[float, float, float]:
    """Seconds to drain ``batch`` through the process stage, and CPU µs per message of the
    stage process and of its workers."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        _journal(data_dir, batch, "P")
        settings = Settings(data_dir=data_dir, pipeline=PipelineConfig(process_workers=workers))
        pipeline = Pipeline(settings, ["process"])
        try:
            (loop,) = pipeline.loops
            pids = pipeline.pool.pids if pipeline.pool is not None else []
            own, theirs = time.process_time(), sum(process_cpu(p) for p in pids)
            start = time.perf_counter()
            done = 0
            while step := loop.stage.step():
                done += step
            wall = time.perf_counter() - start
            own = time.process_time() - own
            theirs = sum(process_cpu(p) for p in pids) - theirs
            assert done == n, f"drained {done} of {n}"
        finally:
            pipeline.close()
    return wall, own / n * 1e6, theirs / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.messages
    batch = messages(n, "PW")
    drain(200, 0, batch[:200])  # warm-up: imports, caches
    walls: dict[int, list[float]] = {w: [] for w in WORKERS}
    cpu: dict[int, list[tuple[float, float]]] = {w: [] for w in WORKERS}
    for _ in range(args.rounds):
        for workers in WORKERS:
            wall, own, theirs = drain(n, workers, batch)
            walls[workers].append(wall)
            cpu[workers].append((own, theirs))
    base = n / statistics.median(walls[0])
    cores = os.cpu_count()
    out = [
        f"# process stage on worker processes, {datetime.now(UTC):%Y-%m-%d}, {cores} cores",
        "",
        f"{n:,} ORU messages journaled, then drained by the process stage alone (parse, "
        "HL7 v2 -> FHIR R4, de-identify, vault, commit), batches of 256; median of "
        f"{args.rounds} rounds, configurations alternated. CPU: µs per message, from "
        "/proc (10 ms ticks).",
        "",
        "| process_workers | msgs/s | vs. 0 | CPU µs/msg: stage process | CPU µs/msg: workers "
        "| CPU µs/msg: all |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in WORKERS:
        rate = n / statistics.median(walls[workers])
        own = statistics.median(c[0] for c in cpu[workers])
        theirs = statistics.median(c[1] for c in cpu[workers])
        out.append(
            f"| {workers} | {rate:,.0f} | {rate / base:.2f}x | {own:,.0f} | {theirs:,.0f} "
            f"| {own + theirs:,.0f} |"
        )
    text = "\n".join(out) + "\n"
    print(text)
    (REPO / "benchmarks" / "process_workers.out").write_text(text)


if __name__ == "__main__":
    main()
