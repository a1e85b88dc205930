"""The pipeline's process layout: which files each group of stages owns (ADR 7).

The stages run in one or more supervised children (``pipeline.processes`` in config), each
a *group* of consecutive stages. A group is named after its stages: ``pipeline.process``,
``pipeline.infer-writeback``; the single-process layout (all three) keeps the plain
``pipeline`` of ADR 4. A group owns, under the data dir:

- ``<name>.status.json`` and ``<name>.metrics``: what the parent serves at /readyz and
  /metrics (rewritten atomically);
- ``audit/<name>.log``: its own audit chain (one chain per writing process);
- ``pipeline.<stage>.lock`` for each of its stages, held while it runs: a lock per stage,
  not per group, so that at most one consumer reads each topic even while an old layout's
  process is still draining under a new configuration.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from gateway._config import STAGES, StageName
from gateway._log import get_logger

log = get_logger("pipeline")
AUDIT_DIR = "audit"
_PR_SET_PDEATHSIG = 1


def group_name(stages: Sequence[StageName]) -> str:
    """``pipeline`` for all the stages in one process, else ``pipeline.<a>-<b>``."""
    return "pipeline" if tuple(stages) == STAGES else "pipeline." + "-".join(stages)


def parse_stages(text: str) -> tuple[StageName, ...]:
    """``process,infer`` -> the stages, checked: known names, upstream first, no gaps."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for start in range(len(STAGES)):
        if list(STAGES[start : start + len(names)]) == names:
            return STAGES[start : start + len(names)]
    raise ValueError(
        "stages must be consecutive pipeline stages, upstream first: "
        "any run of process,infer,writeback"
    )


def status_file(data_dir: Path, stages: Sequence[StageName]) -> Path:
    return data_dir / f"{group_name(stages)}.status.json"


def metrics_file(data_dir: Path, stages: Sequence[StageName]) -> Path:
    return data_dir / f"{group_name(stages)}.metrics"


def audit_file(data_dir: Path, stages: Sequence[StageName]) -> Path:
    return data_dir / AUDIT_DIR / f"{group_name(stages)}.log"


def lock_stages(data_dir: Path, stages: Sequence[StageName]) -> list[IO[str]]:
    """Hold each stage's lock, in pipeline order (so two groups can never deadlock).

    Waits for a process that holds one (a previous child still draining, or a second
    one started by hand): at most one consumer per topic, so each topic keeps its order.
    """
    held: list[IO[str]] = []
    for stage in STAGES:
        if stage not in stages:
            continue
        handle = (data_dir / f"pipeline.{stage}.lock").open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("pipeline.waiting_for_lock", stage=stage)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        held.append(handle)
    return held


def exit_with_parent() -> None:
    """Ask the kernel to SIGTERM us (and so drain) if the gateway that started us dies."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
