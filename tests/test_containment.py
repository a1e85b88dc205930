"""A malicious model bundle is contained, whichever way it misbehaves.

Each bundle is a signed copy of NEWS2 that ships a ``custom_ops.so`` compiled here from
``tests/evil_ops.c``: onnxruntime loads it inside the worker (after the sandbox is in place),
and from then on it sees every request before the model does and misbehaves during calls,
on a sentinel value (a poison row) or on the n-th call. Each test shows the containment,
that the engine reports the reason, and that everything else keeps being scored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from adapters import MllpClient
from inference import (
    NEWS2_COLUMNS,
    InferenceEngine,
    SandboxLimits,
    build_news2_bundle,
    load_bundle,
    sign_bundle,
)
from inference._engine import RowFailure
from schemas import FeatureValue, InferenceRequest, InferenceResult
from tests.conftest import http_json
from tests.hl7_samples import oru
from tests.test_sandbox import NORMAL, WHEN

EVIL_C = Path(__file__).with_name("evil_ops.c")
SENTINEL = 61.0  # a respiratory rate no other row in these tests uses
LIMITS = SandboxLimits(
    memory_bytes=384 << 20, call_timeout_s=0.5, start_timeout_s=10, use_gpu=False
)

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def publisher() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def news2(tmp_path_factory: pytest.TempPathFactory, publisher: Ed25519PrivateKey) -> Path:
    return build_news2_bundle(tmp_path_factory.mktemp("clean") / "news2", publisher)


def evil_bundle(
    target: Path, news2: Path, key: Ed25519PrivateKey, *defines: str, model_id: str = "news2"
) -> Path:
    """A signed copy of NEWS2 (as ``model_id``) shipping evil_ops.c built with ``defines``
    (no library without them)."""
    shutil.copytree(news2, target)
    (target / "signature.json").unlink()
    if defines:
        cmd = ["gcc", "-shared", "-fPIC", "-O1", "-pthread", *(f"-D{d}" for d in defines)]
        subprocess.run([*cmd, "-o", str(target / "custom_ops.so"), str(EVIL_C)], check=True)
    if model_id != "news2":
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["id"] = model_id
        (target / "manifest.json").write_text(json.dumps(manifest))
    sign_bundle(target, key)
    return target


@pytest.fixture
def engine_with(tmp_path: Path, news2: Path, publisher: Ed25519PrivateKey) -> Iterator[Any]:
    """Start an engine over one evil bundle ("news2") and a clean copy ("clean")."""
    engines: list[InferenceEngine] = []

    def make(*defines: str, limits: SandboxLimits = LIMITS) -> InferenceEngine:
        root = tmp_path / "models"
        evil_bundle(root / "news2", news2, publisher, *defines)
        evil_bundle(root / "clean", news2, publisher, model_id="clean")
        engines.append(InferenceEngine(root, [publisher.public_key()], limits))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def request(message_id: int, model_id: str = "news2", **changes: float) -> InferenceRequest:
    values = {**NORMAL, **changes}
    return InferenceRequest(
        model_id=model_id,
        model_version="1.0.0",
        message_id=message_id,
        subject=f"psn-{message_id}",
        features=[
            FeatureValue(name=n, value=values[n], source_system="s", source_code=n, effective=WHEN)
            for n in NEWS2_COLUMNS
        ],
    )


SICK = {"respiratory_rate": 26.0, "heart_rate": 120.0, "systolic_bp": 95.0}


def totals(results: list[InferenceResult | RowFailure]) -> list[float | str]:
    return [r.reason if isinstance(r, RowFailure) else r.outputs["total"] for r in results]


def test_custom_op_library_is_loaded_inside_the_sandbox_and_scores_normally(
    engine_with: Any, news2: Path, publisher: Ed25519PrivateKey
) -> None:
    engine = engine_with("NTH=0")  # hooks the pipe, never misbehaves
    status = engine.status()["news2"]
    assert "sealed in-memory copy" in status["enforcement"]["custom_ops"]
    assert engine.status()["clean"]["enforcement"]["custom_ops"] == "none in this bundle"
    bundle = load_bundle(news2, [publisher.public_key()])
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    rows = [request(1), request(2, **SICK)]
    batch = np.array([[NORMAL[c] for c in NEWS2_COLUMNS]], dtype=np.float32)
    (expected,) = session.run(["total"], {"features": batch})
    assert [r.outputs["total"] for r in engine.score("news2", rows)] == [expected[0], 7.0]


def test_socket_to_a_loopback_listener_never_connects_and_scoring_goes_on(
    engine_with: Any,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        engine = engine_with("MODE_SOCKET", f"PORT={port}")  # at load and on every call
        for i in range(5):
            assert totals(engine.score_isolating("news2", [request(i), request(9, **SICK)])) == [
                0.0,
                7.0,
            ]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    status = engine.status()["news2"]
    assert status["enforcement"]["network"] == "network namespace (no interfaces)"
    assert status["worker_failures"] == 0 and status["restarts"] == 0


def test_unbounded_allocation_is_stopped_by_rlimit_as_and_only_its_row_fails(
    engine_with: Any,
) -> None:
    # a wall clock far away, so that only the memory limit can be what stops it
    engine = engine_with(
        "MODE_ALLOC", f"SENTINEL={SENTINEL}f", limits=replace(LIMITS, call_timeout_s=10)
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    results = engine.score_isolating(
        "news2", [request(1), request(2, respiratory_rate=SENTINEL), request(3, **SICK)]
    )
    elapsed = time.monotonic() - started
    assert totals(results) == [0.0, "worker failed twice; last: worker exited (signal 6)", 7.0]
    status = engine.status()["news2"]
    assert status["enforcement"]["memory"] == f"RLIMIT_AS {LIMITS.memory_bytes}"
    assert status["last_failure"] == "worker exited (signal 6)"
    # the gateway side did not grow: the allocations were the worker's, and bounded
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 << 10
    assert elapsed < 20
    assert totals(engine.score_isolating("clean", [request(4, "clean", **SICK)])) == [7.0]


def test_endless_spin_is_killed_at_the_wall_clock_limit(engine_with: Any) -> None:
    engine = engine_with("MODE_SPIN", f"SENTINEL={SENTINEL}f")
    spinning = engine._sandboxes["news2"].pid
    started = time.monotonic()
    results = engine.score_isolating(
        "news2", [request(1, **SICK), request(2, respiratory_rate=SENTINEL)]
    )
    elapsed = time.monotonic() - started
    killed = "no reply within 0.5 s (wall clock); killed"
    assert totals(results) == [7.0, f"worker failed twice; last: {killed}"]
    assert engine.status()["news2"]["last_failure"] == killed
    assert not Path(f"/proc/{spinning}").exists()  # the spinning worker is gone
    # four timed-out calls (the pair twice, the sentinel alone twice) plus restarts
    assert 4 * LIMITS.call_timeout_s <= elapsed < 15
    assert totals(engine.score_isolating("news2", [request(3)])) == [0.0]


def test_endless_spin_is_stopped_by_the_cpu_time_limit_before_the_wall_clock(
    engine_with: Any,
) -> None:
    """RLIMIT_CPU, not the (long) wall-clock limit, ends a worker that burns CPU."""
    limits = SandboxLimits(
        memory_bytes=384 << 20,
        cpu_seconds=2,
        call_timeout_s=30,
        start_timeout_s=10,
        use_gpu=False,
    )
    engine = engine_with("MODE_SPIN", f"SENTINEL={SENTINEL}f", limits=limits)
    started = time.monotonic()
    [result] = engine.score_isolating("news2", [request(1, respiratory_rate=SENTINEL)])
    elapsed = time.monotonic() - started
    assert isinstance(result, RowFailure)
    assert f"signal {signal.SIGXCPU.value}" in result.reason
    assert elapsed < limits.call_timeout_s  # no call waited for the wall clock
    assert totals(engine.score_isolating("news2", [request(2)])) == [0.0]


def test_segfault_is_detected_the_worker_restarted_and_the_batch_retried(
    engine_with: Any,
) -> None:
    engine = engine_with("MODE_SEGV", "NTH=2")  # every worker dies on its second call
    scored = [
        totals(engine.score_isolating("news2", [request(i), request(9, **SICK)])) for i in range(4)
    ]
    assert scored == [[0.0, 7.0]] * 4  # nothing lost: each crash was retried on a fresh worker
    status = engine.status()["news2"]
    assert status["restarts"] >= 1 and status["worker_failures"] >= 1
    assert status["last_failure"] == "worker exited (signal 11)"


def test_only_the_poison_row_of_a_batch_fails_and_the_rest_are_scored(
    engine_with: Any,
) -> None:
    engine = engine_with("MODE_SEGV", f"SENTINEL={SENTINEL}f")
    rows = [request(i, **(SICK if i % 3 else {})) for i in range(16)]
    rows[5] = request(5, respiratory_rate=SENTINEL)
    rows[12] = request(12, respiratory_rate=SENTINEL)
    results = engine.score_isolating("news2", rows)
    crashed = "worker failed twice; last: worker exited (signal 11)"
    expected: list[float | str] = [7.0 if i % 3 else 0.0 for i in range(16)]
    expected[5] = expected[12] = crashed
    assert totals(results) == expected
    assert [r.message_id for r in results if isinstance(r, InferenceResult)] == [
        i for i in range(16) if i not in (5, 12)
    ]


def test_models_scored_side_by_side_fail_only_the_poison_rows_of_the_poisoned_model(
    engine_with: Any,
) -> None:
    """``score_models`` sends both models' batches before reading either reply: the evil
    worker's crashes are isolated to its poison row while the clean model scores every row,
    the sentinel included."""
    engine = engine_with("MODE_SEGV", f"SENTINEL={SENTINEL}f")
    rows = {
        m: [request(i, m, **(SICK if i % 2 else {})) for i in range(8)] for m in ("news2", "clean")
    }
    for m in rows:
        rows[m][3] = request(3, m, respiratory_rate=SENTINEL)
    scored = engine.score_models(rows)
    clean: list[float | str] = [7.0 if i % 2 else 0.0 for i in range(8)]
    clean[3] = 3.0  # a respiratory rate of 61 scores 3
    evil = list(clean)
    evil[3] = "worker failed twice; last: worker exited (signal 11)"
    assert totals(scored["clean"]) == clean
    assert totals(scored["news2"]) == evil
    assert engine.status()["clean"]["last_failure"] is None
    assert engine.score_models({"clean": [], "news2": []}) == {"clean": [], "news2": []}


def test_a_poison_message_is_dead_lettered_and_the_stream_flows(
    gateway_factory: Any, news2: Path, tmp_path: Path
) -> None:
    """Through a running gateway: the message whose row crashes the worker is dead-lettered
    with the reason; the messages around it are advised."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    gw = gateway_factory(
        "poison", {"inference": {"trusted_keys": [base64.b64encode(public).decode()]}}
    )
    evil_bundle(gw.data_dir / "models" / "news2", news2, key, "MODE_SEGV", f"SENTINEL={SENTINEL}f")
    gw.start()
    _, ready = http_json(f"{gw.url}/readyz")
    assert ready["refused_bundles"] == {}
    assert ready["models"]["news2"]["enforcement"]["custom_ops"].startswith("custom_ops.so")
    vitals: Mapping[str, float | str] = {
        "rr": 18,
        "spo2": 97,
        "o2": 0,
        "sbp": 125,
        "hr": 72,
        "temp": 37.0,
        "acvpu": "248234008",
    }
    ids = [f"P-{i}" for i in range(5)]

    async def send() -> None:
        async with MllpClient("127.0.0.1", gw.mllp_port) as client:
            for i, cid in enumerate(ids):
                rr = SENTINEL if i == 2 else vitals["rr"]
                await client.send(oru(cid, f"MRN{i}", {**vitals, "rr": rr}))

    asyncio.run(send())
    records = gw.wait_disposed(ids)
    outcomes = {cid: records[cid]["disposition"]["outcome"] for cid in ids}
    assert outcomes == {**{cid: "written_back" for cid in ids}, "P-2": "dead_lettered"}
    reason = records["P-2"]["disposition"]["reason"]
    assert reason.startswith("news2: inference failed (worker failed twice")
    assert "signal 11" in reason
    assert gw.stop() == 0
    logs = gw.logs()  # what is enforced, and what is not, was stated at start-up
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    said = {(e["event"], e.get("model"), e.get("code")) for e in events}
    assert ("sandbox.enforced", "news2", "network") in said
    assert ("sandbox.enforced", "news2", "custom_ops") in said
    assert ("sandbox.not_enforced", "news2", "unix_sockets") in said
    assert ("inference.row_failed", "news2", None) in said
