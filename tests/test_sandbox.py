"""The model sandbox and the engine, with real worker processes.

A worker has no network, a scrubbed environment, resource limits, and is restarted when it
dies or hangs; the engine hosts one sandbox per verified bundle and scores batches.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from inference import (
    NEWS2_COLUMNS,
    FeatureExtractor,
    InferenceEngine,
    ModelBundle,
    Sandbox,
    SandboxError,
    SandboxLimits,
    UnknownModel,
    build_advisories,
    build_news2_bundle,
    load_bundle,
)
from inference._engine import _result, _rows
from inference._errors import WorkerUnavailable
from schemas import FeatureValue, InferenceRequest, InferenceResult, ObservationFact


@pytest.fixture(scope="module")
def publisher() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, publisher: Ed25519PrivateKey) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_news2_bundle(root / "news2", publisher)
    return root


@pytest.fixture(scope="module")
def bundle(models_dir: Path, publisher: Ed25519PrivateKey) -> ModelBundle:
    return load_bundle(models_dir / "news2", [publisher.public_key()])


@pytest.fixture(scope="module")
def sandbox(bundle: ModelBundle) -> Iterator[Sandbox]:
    with Sandbox(bundle, SandboxLimits(call_timeout_s=5)) as sb:
        yield sb


def random_batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lows = np.array([4, 70, 0, 60, 30, 33, 0, 0], dtype=np.float32)
    highs = np.array([40, 100, 1, 240, 180, 41, 1, 1], dtype=np.float32)
    batch = rng.uniform(lows, highs, size=(n, len(NEWS2_COLUMNS))).astype(np.float32)
    batch[:, [2, 6, 7]] = np.round(batch[:, [2, 6, 7]])
    return batch


def test_scores_a_batch_identically_to_in_process_onnxruntime(
    sandbox: Sandbox, bundle: ModelBundle
) -> None:
    batch = random_batch(512)
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {"features": batch}), strict=True))
    got = sandbox.run(batch)
    assert got.keys() == expected.keys()
    for name in names:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])


def test_worker_cannot_open_a_socket(sandbox: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        report = sandbox.self_check(connect_to=listener.getsockname())
        assert report["connect_errno"] in (errno.ENETUNREACH, errno.ECONNREFUSED, errno.EACCES)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_environment_is_scrubbed(bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDGATE_KEY_VAULT", "c2VjcmV0")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    with Sandbox(bundle) as sb:
        keys = sb.self_check()["env_keys"]
    assert not [k for k in keys if k.startswith("WARDGATE")]
    assert "PYTHONPATH" not in keys
    assert set(keys) <= {
        "PATH",
        "LANG",
        "HOME",
        "XDG_CACHE_HOME",
        "OMP_NUM_THREADS",
        "ORT_DISABLE_TELEMETRY",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
    }


def test_worker_holds_only_its_pipes_and_runs_unprivileged(sandbox: Sandbox) -> None:
    report = sandbox.self_check()
    assert set(report["open_fds"]) == {"0", "1", "2", "3", "4"}
    assert [report["open_fds"][fd] for fd in ("0", "1", "2")] == ["/dev/null"] * 3
    if os.geteuid() == 0:
        assert report["uid"] == 65534
    assert report["rlimit_as"] == sandbox.limits.memory_bytes


def test_enforcement_reports_what_is_enforced(sandbox: Sandbox) -> None:
    enforced = sandbox.enforcement
    assert sandbox.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert enforced["network"] == "network namespace (no interfaces)"
    if sandbox.provider == "CPUExecutionProvider":
        assert enforced["memory"] == f"RLIMIT_AS {sandbox.limits.memory_bytes}"
    assert enforced["cpu"].startswith(f"RLIMIT_CPU {sandbox.limits.cpu_seconds} s")
    assert {"environment", "wall_clock", "fds", "files", "privileges"} <= enforced.keys()
    assert enforced["custom_ops"] == "none in this bundle"


def test_enforcement_says_what_is_not_enforced(sandbox: Sandbox) -> None:
    not_enforced = {k for k, v in sandbox.enforcement.items() if v.startswith("NOT")}
    assert {"unix_sockets", "filesystem_reads", "same_uid_processes"} <= not_enforced


def test_killed_worker_is_restarted_and_the_next_call_succeeds(sandbox: Sandbox) -> None:
    before, restarts = sandbox.pid, sandbox.restarts
    assert before is not None
    os.kill(before, signal.SIGKILL)
    assert sandbox.run(random_batch(4))["total"].shape == (4,)
    assert sandbox.pid != before
    assert sandbox.restarts == restarts + 1
    assert sandbox.last_failure is not None and sandbox.last_failure.endswith("(signal 9)")


def test_hung_worker_is_killed_and_the_batch_retried(bundle: ModelBundle) -> None:
    with Sandbox(bundle, SandboxLimits(call_timeout_s=0.5)) as sb:
        hung = sb.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        assert sb.run(random_batch(3))["band"].shape == (3,)
        assert sb.pid != hung and sb.restarts == 1
        assert sb.last_failure == "no reply within 0.5 s (wall clock); killed"


def test_second_failure_raises_sandbox_error_with_the_reason(bundle: ModelBundle) -> None:
    with Sandbox(bundle) as sb:
        sb.limits = replace(sb.limits, memory_bytes=64 << 20)  # replacements cannot load
        assert sb.pid is not None
        os.kill(sb.pid, signal.SIGKILL)
        with pytest.raises(WorkerUnavailable, match="worker failed twice; last: worker failed to"):
            sb.run(random_batch(2))


def test_worker_that_cannot_start_is_reported(bundle: ModelBundle) -> None:
    with pytest.raises(SandboxError, match="worker failed to start"):
        Sandbox(bundle, SandboxLimits(memory_bytes=64 << 20)).start()


def test_batch_of_the_wrong_width_is_refused_before_the_pipe(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match=r"float32 \[N, 8\]"):
        sandbox.run(np.zeros((2, 7), dtype=np.float32))


# --- the engine ------------------------------------------------------------------------

WHEN = datetime(2031, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, publisher: Ed25519PrivateKey
) -> Iterator[InferenceEngine]:
    root = tmp_path_factory.mktemp("engine")
    shutil.copytree(models_dir / "news2", root / "news2")
    shutil.copytree(models_dir / "news2", root / "tampered")
    with (root / "tampered" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with InferenceEngine(root, [publisher.public_key()]) as eng:
        yield eng


def request(message_id: int, values: Mapping[str, float]) -> InferenceRequest:
    return InferenceRequest(
        model_id="news2",
        model_version="1.0.0",
        message_id=message_id,
        subject=f"psn-{message_id}",
        features=[
            FeatureValue(name=n, value=values[n], source_system="s", source_code=n, effective=WHEN)
            for n in NEWS2_COLUMNS
        ],
    )


NORMAL: dict[str, float] = dict(
    zip(NEWS2_COLUMNS, [16.0, 97.0, 0.0, 120.0, 70.0, 37.0, 0.0, 0.0], strict=True)
)


def test_engine_loads_verified_bundles_and_records_refusals(engine: InferenceEngine) -> None:
    assert [m.id for m in engine.models] == ["news2"]
    assert engine.manifest("news2").version == "1.0.0"
    assert engine.refused == {"tampered": "file model.onnx does not match its signed hash"}
    status = engine.status()
    assert list(status) == ["news2"]
    assert status["news2"]["version"] == "1.0.0"
    assert status["news2"]["provider"] == "CPUExecutionProvider"
    assert status["news2"]["enforcement"]["network"].startswith("network namespace")


def test_engine_scores_a_batch_in_request_order(engine: InferenceEngine) -> None:
    sick = {**NORMAL, "respiratory_rate": 26, "heart_rate": 120, "systolic_bp": 95}
    results = engine.score("news2", [request(1, NORMAL), request(2, sick)])
    assert [(r.message_id, r.subject) for r in results] == [(1, "psn-1"), (2, "psn-2")]
    assert [r.outputs["total"] for r in results] == [0.0, 7.0]
    assert [r.outputs["band"] for r in results] == [0.0, 3.0]


def test_engine_refuses_unknown_models_and_non_finite_inputs(engine: InferenceEngine) -> None:
    with pytest.raises(UnknownModel):
        engine.score("qsofa", [request(1, NORMAL)])
    with pytest.raises(UnknownModel):
        engine.manifest("qsofa")
    with pytest.raises(ValueError, match="not a finite number"):
        engine.score("news2", [request(1, {**NORMAL, "spo2": float("nan")})])


def test_observations_to_advisory_through_the_engine(engine: InferenceEngine) -> None:
    """The stage's whole path: facts -> features -> sandboxed NEWS2 -> FHIR advisory."""
    loinc, snomed = "http://loinc.org", "http://snomed.info/sct"
    t = WHEN - timedelta(minutes=30)
    facts = [
        ObservationFact(system=loinc, code=c, value=v, unit=u, effective=t)
        for c, v, u in [
            ("9279-1", 25, "/min"),
            ("59408-5", 95, "%"),
            ("3151-8", 2, "L/min"),
            ("8480-6", 105, "mm[Hg]"),
            ("8867-4", 95, "/min"),
            ("8310-5", 37, "Cel"),
        ]
    ]
    facts.append(
        ObservationFact(system=snomed, code="1104441000000107", value_code="248234008", effective=t)
    )
    manifest = engine.manifest("news2")
    req = FeatureExtractor(manifest).extract(11, "psn-11", facts, WHEN, {})
    assert isinstance(req, InferenceRequest)
    (result,) = engine.score("news2", [req])
    advisory = build_advisories(manifest, req, result.outputs)
    # RR 25 -> 3, SpO2 95 -> 1, oxygen -> 2, SBP 105 -> 1, HR 95 -> 1: total 8, high
    assert (advisory.score, advisory.interpretation) == (8.0, "high")
    assert advisory.explanation == [
        "respiratory_rate=3",
        "air_or_oxygen=2",
        "heart_rate=1",
        "spo2=1",
        "systolic_bp=1",
    ]


def test_model_whose_worker_cannot_start_is_refused_not_fatal(
    models_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    limits = SandboxLimits(memory_bytes=64 << 20)
    with InferenceEngine(models_dir, [publisher.public_key()], limits) as eng:
        assert eng.models == []
        assert eng.refused["news2"].startswith("worker failed to start")


def test_outputs_become_one_float_dict_per_row_with_name_j_for_wide_outputs() -> None:
    outputs: dict[str, np.ndarray[Any, Any]] = {
        "score": np.array([1, 2], dtype=np.int64),
        "probs": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        "flag": np.array([[True], [False]]),
    }
    assert _rows(outputs, 2) == [
        {"score": 1.0, "probs[0]": 0.25, "probs[1]": 0.75, "flag": 1.0},
        {"score": 2.0, "probs[0]": 0.5, "probs[1]": 0.5, "flag": 0.0},
    ]


def test_results_built_without_validation_equal_validated_ones() -> None:
    req = request(5, NORMAL)
    fast = _result(req, {"total": 3.0})
    slow = InferenceResult(
        model_id="news2",
        model_version="1.0.0",
        message_id=5,
        subject="psn-5",
        outputs={"total": 3.0},
    )
    assert fast == slow and fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"message_id": 6}).message_id == 6
    with pytest.raises(ValidationError):
        fast.subject = "other"  # still frozen


def test_features_may_come_in_any_order_and_the_first_fault_is_the_one_reported(
    engine: InferenceEngine,
) -> None:
    shuffled = request(1, NORMAL)
    shuffled = shuffled.model_copy(update={"features": shuffled.features[::-1]})
    [result] = engine.score("news2", [shuffled])
    assert result.outputs["total"] == 0.0
    nan_first = request(2, {**NORMAL, "heart_rate": float("nan")})
    other_model = request(3, NORMAL).model_copy(update={"model_id": "qsofa"})
    with pytest.raises(ValueError, match="request 0: input heart_rate is not a finite number"):
        engine.score("news2", [nan_first, other_model])
    with pytest.raises(ValueError, match="request 1 is for another model"):
        engine.score("news2", [request(4, NORMAL), other_model, nan_first])
    missing = request(5, NORMAL).model_copy(update={"features": request(5, NORMAL).features[1:]})
    with pytest.raises(ValueError, match="request 0 does not fill exactly the model's inputs"):
        engine.score("news2", [missing])


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        (True, None, True),
        (True, "0", True),
        (True, "", False),
        (True, "-1", False),
        (False, None, False),
        (False, "0", False),
    ],
)
def test_a_gpu_counts_only_when_its_device_is_there_and_not_hidden(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device: bool,
    visible: str | None,
    expected: bool,
) -> None:
    """onnxruntime-gpu lists CUDA on a CPU-only node too; a worker that believed it would
    skip RLIMIT_AS (CUDA's address space does not fit one) and run unbounded on the CPU."""
    from inference._worker import gpu_visible

    dev = tmp_path / "nvidiactl"
    if device:
        dev.touch()
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_visible(str(dev)) is expected
