"""The process stage on worker processes (``pipeline.process_workers``).

The pool only spreads CPU: what the stage commits with it (topic entries, records,
dispositions, vault entries, in journal order) must be what it commits without it, message
for message, and a worker that dies must not lose a message.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway._config import PipelineConfig, Settings
from gateway._journal import Journal, JournalReader
from gateway._normalize_workers import Normalized, normalize, start_worker
from gateway._pipeline import Pipeline
from gateway._workers import StagePool, WorkersNotStarted
from schemas import Source
from security import load_keyring
from tests.conftest import REPO
from tests.hl7_samples import VITALS_HIGH, VITALS_NORMAL, adt, oru

MESSAGES = [
    oru("C1", "MRN1", VITALS_NORMAL),
    adt("C2", "MRN2"),
    oru("C3", "MRN3", VITALS_HIGH),
    b"MSH|^~\\&|LIS|H|W|W|20240301101500||ORU^R01|C4|P|2.5.1\rPID|1||\r",  # no identifier
    oru("C5", "MRN1", VITALS_HIGH, when="20240301111000"),
    adt("C6", "MRN6", event="A99"),  # a type we do not handle
    b"not HL7 at all",
    *[oru(f"D{i}", f"MRN{10 + i % 4}", VITALS_NORMAL) for i in range(25)],
]


def journal(data_dir: Path, messages: list[bytes], tag: str = "M") -> None:
    log = Journal(data_dir / "journal.db", load_keyring(data_dir).journal)
    source = Source(kind="mllp", name="LIS^TESTHOSP")

    async def append_all() -> None:
        for i, message in enumerate(messages):
            await log.append(source, f"{tag}{i}", "hl7v2", message)

    try:
        asyncio.run(append_all())
    finally:
        log.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    journal(path, MESSAGES)
    return path


@pytest.fixture
def pooled(data_dir: Path) -> Iterator[Pipeline]:
    settings = Settings(data_dir=data_dir, pipeline=PipelineConfig(process_workers=2))
    pipeline = Pipeline(settings, ["process"])
    yield pipeline
    pipeline.close()


def expected(data_dir: Path) -> list[tuple[str, str | None]]:
    """Per journaled message: ``deidentified`` and its topic entry, or the outcome and
    reason; computed in this process, one message at a time."""
    settings = Settings(data_dir=data_dir)
    deid = settings.deid.deidentifier(load_keyring(data_dir))
    reader = JournalReader(data_dir / "journal.db", load_keyring(data_dir).journal)
    try:
        inbound = reader.read_after(0, 1000)
    finally:
        reader.close()
    out: list[tuple[str, str | None]] = []
    for message in inbound:
        result = normalize(message.id, message.payload, deid, settings.timezone)
        if isinstance(result, Normalized):
            out.append(("deidentified", result.payload_json))
        else:
            out.append((result.outcome.value, result.reason))
    return out


def committed(pipeline: Pipeline) -> list[tuple[str, str | None]]:
    """The same, from what the stage committed: the process stage disposes of a message
    it filters or dead-letters; any other goes to the topic, in journal order."""
    topic = iter(pipeline.store.read("deidentified", 0, 1000))
    out: list[tuple[str, str | None]] = []
    for message_id in range(1, len(MESSAGES) + 1):
        disposition = pipeline.store.disposition(message_id)
        if disposition is None:
            out.append(("deidentified", next(topic).payload))
        else:
            out.append((disposition.outcome.value, disposition.reason))
    assert next(topic, None) is None
    return out


def drain(pipeline: Pipeline) -> None:
    (loop,) = pipeline.loops
    while loop.stage.step():
        pass


def test_the_pool_commits_exactly_what_the_stage_would_commit_itself(
    data_dir: Path, pooled: Pipeline
) -> None:
    assert pooled.process_pool is not None and pooled.process_pool.workers == 2
    drain(pooled)
    got = committed(pooled)
    assert got == expected(data_dir)
    outcomes = [outcome for outcome, _ in got]
    assert outcomes.count("deidentified") == len(MESSAGES) - 3
    assert {"filtered", "dead_lettered"} <= set(outcomes)
    subject = json.loads(got[0][1] or "")["subject"]
    assert pooled.vault is not None
    assert pooled.vault.get(subject) == [{"system": "urn:id:TESTHOSP", "value": "MRN1"}]


def test_a_pool_whose_workers_died_loses_no_message(data_dir: Path, pooled: Pipeline) -> None:
    assert pooled.process_pool is not None
    for pid in list(
        pooled.process_pool._executor._processes
    ):  # a dead pool: the next batch notices
        os.kill(pid, signal.SIGKILL)
    drain(pooled)
    assert committed(pooled) == expected(data_dir)  # redone in the stage's thread
    journal(data_dir, [oru("E1", "MRN1", VITALS_NORMAL)], tag="E")
    drain(pooled)  # and the fresh pool works
    assert pooled.store.offset("process") == len(MESSAGES) + 1


def test_a_pool_whose_workers_cannot_start_fails_start_up(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, key_files={"pseudonym": tmp_path / "nope.key"})
    with pytest.raises(
        WorkersNotStarted, match=r"process workers .*FileNotFoundError: .*nope\.key"
    ):
        StagePool("process", 1, start_worker, (settings,))


STAGE = """
import sys, time
from pathlib import Path
from gateway._config import PipelineConfig, Settings
from gateway._pipeline import Pipeline

if __name__ == "__main__":
    settings = Settings(data_dir=Path(sys.argv[1]), pipeline=PipelineConfig(process_workers=2))
    pipeline = Pipeline(settings, ["process"])
    print(*pipeline.process_pool.pids, flush=True)
    time.sleep(60)
"""


def test_workers_exit_with_a_stage_process_that_is_killed(data_dir: Path, tmp_path: Path) -> None:
    """Workers are the forkserver's children and would outlive a SIGKILLed stage (and keep
    the forkserver alive): each follows the stage's pid and exits with it."""
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    stage = subprocess.Popen(
        [sys.executable, str(script), str(data_dir)], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert stage.stdout is not None
        pids = [int(p) for p in stage.stdout.readline().split()]
        assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        stage.kill()
        stage.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "workers outlived their stage"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
