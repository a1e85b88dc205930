"""Stage-workers benchmark: a stage's CPU-heavy part in its own thread vs. on worker processes.

Run: .venv/bin/python benchmarks/stage_workers.py [--messages 2000] [--rounds 2]
Prints (and benchmarks/stage_workers.out keeps) the rate at which each stage alone drains a
backlog of ORU messages (ADR 8): the process stage with ``pipeline.process_workers`` = 0
(its own thread), 1, 2 and 4, and the infer stage with ``inference.feature_workers`` the
same, each on a fresh copy of the same data; configurations alternated over ``--rounds``
so that a change in the machine's speed falls on all alike. Also the CPU spent per message
by the stage process and by its workers. One stage at a time: the figure is how far a
stage scales with cores, not the gateway's end-to-end rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
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

from gateway._config import InferenceConfig, PipelineConfig, Settings  # noqa: E402
from gateway._pipeline import Pipeline  # noqa: E402
from gateway._workers import StagePool  # noqa: E402

WORKERS = (0, 1, 2, 4)
Runs = dict[int, list[tuple[float, float, float]]]  # per worker count: wall s, CPU µs x2


def settings_for(stage: str, data_dir: Path, workers: int) -> Settings:
    if stage == "process":
        return Settings(data_dir=data_dir, pipeline=PipelineConfig(process_workers=workers))
    return Settings(data_dir=data_dir, inference=InferenceConfig(feature_workers=workers))


def drain(stage: str, data_dir: Path, workers: int, n: int) -> tuple[float, float, float]:
    """Seconds for ``stage`` alone to drain its backlog of ``n`` messages in ``data_dir``,
    and CPU µs per message of the stage process and of its workers."""
    pipeline = Pipeline(settings_for(stage, data_dir, workers), [stage])  # type: ignore[list-item]
    try:
        (loop,) = pipeline.loops
        pool: StagePool | None = pipeline.process_pool or pipeline.feature_pool
        pids = pool.pids if pool is not None else []
        own, theirs = time.process_time(), sum(process_cpu(p) for p in pids)
        start = time.perf_counter()
        done = 0
        while step := loop.stage.step():
            done += step
        wall = time.perf_counter() - start
        own = time.process_time() - own
        theirs = sum(process_cpu(p) for p in pids) - theirs
        assert done == n, f"{stage} drained {done} of {n}"
    finally:
        pipeline.close()
    return wall, own / n * 1e6, theirs / n * 1e6


def backlog(root: Path, batch: list[bytes]) -> tuple[Path, Path]:
    """Two data dirs: the journal only (the process stage's backlog), and the same after
    the process stage (the infer stage's)."""
    journaled = root / "journaled"
    journaled.mkdir(mode=0o700)
    _journal(journaled, batch, "S")
    normalized = root / "normalized"
    shutil.copytree(journaled, normalized)
    drain("process", normalized, 0, len(batch))
    return journaled, normalized


def measure(stage: str, source: Path, n: int, rounds: int, root: Path) -> Runs:
    runs: Runs = {w: [] for w in WORKERS}
    for r in range(rounds):
        for workers in WORKERS:
            copy = root / f"{stage}-{r}-{workers}"
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.bell", "*.lock"))
            runs[workers].append(drain(stage, copy, workers, n))
            shutil.rmtree(copy)
    return runs


def table(stage: str, setting: str, n: int, runs: Runs) -> list[str]:
    def med(workers: int, k: int) -> float:
        return statistics.median(r[k] for r in runs[workers])

    base = n / med(0, 0)
    rows = [
        f"| {setting} | msgs/s | vs. 0 | CPU µs/msg: stage process | CPU µs/msg: workers "
        "| CPU µs/msg: all |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in WORKERS:
        rate = n / med(workers, 0)
        own, theirs = med(workers, 1), med(workers, 2)
        rows.append(
            f"| {workers} | {rate:,.0f} | {rate / base:.2f}x | {own:,.0f} | {theirs:,.0f} "
            f"| {own + theirs:,.0f} |"
        )
    return [f"## {stage} stage", "", *rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.messages
    batch = messages(n, "SW")
    out = [
        f"# stage workers, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores",
        "",
        f"{n:,} ORU messages (200 patients, vital signs), drained by one stage alone, batches "
        "of 256: the process stage from the journal (parse, HL7 v2 -> FHIR R4, de-identify, "
        "vault, commit), the infer stage from the `deidentified` topic (features, sandbox "
        f"scoring, advisories, commit). Median of {args.rounds} rounds, configurations "
        "alternated, each on a fresh copy of the same backlog. CPU: µs per message from "
        "/proc (10 ms ticks).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        journaled, normalized = backlog(root, batch)
        out += table(
            "process",
            "process_workers",
            n,
            measure("process", journaled, n, args.rounds, root),
        )
        out += table(
            "infer", "feature_workers", n, measure("infer", normalized, n, args.rounds, root)
        )
    text = "\n".join(out)
    print(text)
    (REPO / "benchmarks" / "stage_workers.out").write_text(text)


if __name__ == "__main__":
    main()
