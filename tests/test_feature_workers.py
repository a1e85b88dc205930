"""The infer stage's feature rows on worker processes (``inference.feature_workers``).

Workers only spread CPU: with them the stage must commit what it commits alone, including
where a record's features depend on the same batch's earlier records of that subject.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway._config import InferenceConfig, Settings
from gateway._featurise import shares
from gateway._pipeline import Pipeline
from gateway._store import TopicEntry
from tests.hl7_samples import VITALS_HIGH, VITALS_NORMAL, adt, oru
from tests.test_process_workers import journal

RECORDED = re.compile(r'"recorded":"[^"]*"')
PARTIAL = {k: v for k, v in VITALS_NORMAL.items() if k != "spo2"}  # NEWS2 misses SpO2
MESSAGES = [
    *[
        oru(f"V{i}", f"MRN{i % 5}", VITALS_HIGH if i % 3 else VITALS_NORMAL, f"2024030110{i:02d}00")
        for i in range(30)
    ],
    adt("A1", "MRN1"),
    oru("P1", "MRN7", PARTIAL),
    oru("P2", "MRN7", {"spo2": 91}, "20240301103000"),  # completes MRN7's row from history
]


def entry(offset: int, key: str) -> TopicEntry:
    return TopicEntry(offset, key, "")


def test_shares_keep_each_subject_in_one_share_in_order_and_balance_the_rest() -> None:
    keys = ["a", "b", "a", "c", "d", "a", "b", "e"]
    parts = shares([entry(i, k) for i, k in enumerate(keys)], 3)
    assert sorted(i for part in parts for i in part) == list(range(len(keys)))
    for part in parts:
        assert part == sorted(part)
        subjects = {keys[i] for i in part}
        assert all(keys[i] not in subjects for other in parts if other is not part for i in other)
    assert max(map(len, parts)) - min(map(len, parts)) <= 2
    assert shares([entry(0, "a")], 4) == [[0]]
    assert shares([], 2) == []


def committed(data_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(data_dir / "wardgate.db")
    try:
        return {
            "dispositions": conn.execute(
                "SELECT message_id, outcome, reason FROM dispositions ORDER BY message_id"
            ).fetchall(),
            "advisories": [  # when a Provenance was recorded is the one thing that differs
                (key, RECORDED.sub('"recorded":"…"', payload))
                for key, payload in conn.execute(
                    "SELECT key, payload FROM topic WHERE topic = 'advisories' ORDER BY offset"
                )
            ],
            "facts": conn.execute(
                "SELECT subject, system, code, effective, value FROM facts"
                " ORDER BY subject, effective, code"
            ).fetchall(),
        }
    finally:
        conn.close()


def run_infer(data_dir: Path, workers: int) -> dict[str, list[tuple[object, ...]]]:
    settings = Settings(data_dir=data_dir, inference=InferenceConfig(feature_workers=workers))
    pipeline = Pipeline(settings, ["infer"])
    try:
        assert (pipeline.feature_pool is not None) == bool(workers)
        (loop,) = pipeline.loops
        while loop.stage.step():
            pass
        if workers:
            assert len(pipeline.status()["feature_workers"]) == workers
    finally:
        pipeline.close()
    return committed(data_dir)


@pytest.fixture
def normalized(tmp_path: Path) -> Path:
    """A data dir whose journal went through the process stage: infer's input, waiting."""
    data_dir = tmp_path / "alone"
    data_dir.mkdir(mode=0o700)
    journal(data_dir, MESSAGES)
    pipeline = Pipeline(Settings(data_dir=data_dir), ["process"])
    try:
        (loop,) = pipeline.loops
        while loop.stage.step():
            pass
    finally:
        pipeline.close()
    return data_dir


def test_feature_workers_commit_exactly_what_the_stage_commits_alone(
    normalized: Path, tmp_path: Path
) -> None:
    pooled = tmp_path / "pooled"
    shutil.copytree(normalized, pooled, ignore=shutil.ignore_patterns("*.bell"))
    alone = run_infer(normalized, 0)
    assert run_infer(pooled, 2) == alone
    outcomes = {m: (o, r) for m, o, r in alone["dispositions"]}
    assert outcomes == {31: ("filtered", "no coded observations for any model")}  # the ADT
    models = {
        entry["message_id"]: sorted(a["model_id"] for a in entry["advisories"])
        for entry in (json.loads(str(payload)) for _, payload in alone["advisories"])
    }
    assert models[1] == ["news2", "qsofa"]
    assert models[32] == ["qsofa"]  # no SpO2 yet: no NEWS2
    assert models[33] == ["news2"]  # SpO2 alone, the rest from MRN7's record just before
