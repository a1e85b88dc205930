"""Section 3 of benchmarks/inference.py: a micro-batcher in front of the engine.

Poisson arrivals replayed against the wall clock into a batcher (max batch, max wait), one
``InferenceEngine.score`` per batch: the batch sizes it produces, rows/s achieved, latency
from arrival to result, the longest garbage-collector pause and both processes' CPU.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path

import numpy as np

from inference import InferenceEngine
from schemas import InferenceRequest

RATES = (500, 2000, 10000, 50000, 150000)
WAITS_MS = (0.0, 1.0, 2.0, 5.0)
BATCH_MAX = (64, 256)
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) another process has used, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def quantiles_ms(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0] * 1e3, samples[0] * 1e3
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


class GcPauses:
    """The longest garbage-collector pause while active (gc.callbacks), in seconds."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._start)

    def __enter__(self) -> GcPauses:
        gc.collect()  # every configuration starts from the same heap
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def microbatch(
    engine: InferenceEngine,
    requests: list[InferenceRequest],
    rate: float,
    batch_max: int,
    wait_s: float,
    seconds: float,
    seed: int,
) -> tuple[str, float]:
    """Requests arrive at Poisson times (mean ``rate``/s); the batcher sends a batch when it
    holds ``batch_max`` requests or its oldest has waited ``wait_s`` (0: whatever is there).

    Arrivals are a pre-drawn schedule replayed against the wall clock, so the producer costs
    no CPU; latency is arrival -> ``score`` returned (results mapped, ready for advisories).
    Returns the table row and the mean batch size.
    """
    n = int(rate * seconds)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps *= seconds / gaps.sum()  # exactly n arrivals in ``seconds``: the offered rate
    latencies: list[float] = []
    sizes: list[int] = []
    head = 0  # oldest request not yet scored
    worker = engine._sandboxes["news2"].pid
    assert worker is not None
    with GcPauses() as pauses:  # collects first, so the schedule starts after that
        cpu_parent, cpu_worker = time.process_time(), process_cpu(worker)
        begin = time.perf_counter() + 0.005
        arrive = (begin + np.cumsum(gaps)).tolist()
        while head < n:
            now = time.perf_counter()
            if arrive[head] > now:  # nothing pending: sleep until the next arrival
                time.sleep(arrive[head] - now)
                continue
            full_at = arrive[min(head + batch_max, n) - 1]
            if full_at > now:  # not full yet: wait for it to fill or for the oldest's deadline
                due = min(full_at, arrive[head] + wait_s)
                if due > now:
                    time.sleep(due - now)
                    continue
            ready = head
            while ready < n and ready - head < batch_max and arrive[ready] <= now:
                ready += 1
            engine.score("news2", [requests[i % len(requests)] for i in range(head, ready)])
            done = time.perf_counter()
            latencies.extend(done - arrive[i] for i in range(head, ready))
            sizes.append(ready - head)
            head = ready
    wall = done - begin
    cpu_parent = (time.process_time() - cpu_parent) / wall
    cpu_worker = (process_cpu(worker) - cpu_worker) / wall
    p50, p99 = quantiles_ms(latencies)
    mean_batch = statistics.fmean(sizes)
    return (
        f"| {rate:,} | {batch_max} | {wait_s * 1e3:g} | {n / wall:,.0f} | {mean_batch:,.1f} "
        f"| {p50:.2f} | {p99:.2f} | {max(latencies) * 1e3:.2f} | {pauses.longest * 1e3:.1f} "
        f"| {cpu_parent:.0%} / {cpu_worker:.0%} |"
    ), mean_batch


def batching_intro(seconds: float) -> list[str]:
    return [
        "## 3. Micro-batching: batch sizes produced, latency from arrival to result",
        "",
        "Poisson arrivals at the offered rate, one row per request; a batch goes when it "
        "holds max batch rows or its oldest row has waited max wait (0: whatever has "
        "arrived); one `InferenceEngine.score` call per batch, same thread. "
        f"{seconds:g} s of arrivals per row (at least 1,000 requests); the heap is collected "
        "before each row, and the longest GC pause during it is shown. CPU: busy share of "
        "one core, batcher process / sandbox worker.",
        "",
        "| offered rows/s | max batch | max wait ms | achieved rows/s | mean batch "
        "| p50 ms | p99 ms | max ms | longest GC pause ms | CPU parent / worker |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def batching_section(
    engine: InferenceEngine, pool: list[InferenceRequest], seconds: float, seed: int
) -> tuple[list[str], dict[tuple[int, int, float], float]]:
    """The section's lines, and the mean batch per (rate, max batch, max wait)."""
    lines = batching_intro(seconds)
    engine.score("news2", pool[:256])  # warm-up
    means: dict[tuple[int, int, float], float] = {}
    for k, rate in enumerate(RATES):
        for batch_max in BATCH_MAX:
            for wait_ms in WAITS_MS:
                secs = max(seconds, 1000 / rate)
                line, mean = microbatch(
                    engine, pool, rate, batch_max, wait_ms / 1e3, secs, seed + k
                )
                lines.append(line)
                means[rate, batch_max, wait_ms] = mean
    return lines, means
