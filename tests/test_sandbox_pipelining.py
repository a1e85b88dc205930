"""Calls in flight: ``Sandbox.submit`` sends a batch before the replies to earlier ones are read.

Replies must come back to the call that asked, in order, even when several arrive in one read;
frames too big to sit in the pipes together must not deadlock; and a worker lost with calls in
flight must lose none of them: each is retried on a fresh worker, as a lone call would be.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference import (
    ModelBundle,
    Sandbox,
    SandboxError,
    SandboxLimits,
    build_news2_bundle,
    load_bundle,
)
from inference._pipe import OutputLayout
from tests.test_sandbox import random_batch

LIMITS = SandboxLimits(call_timeout_s=5, start_timeout_s=10, use_gpu=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    key = Ed25519PrivateKey.generate()
    root = build_news2_bundle(tmp_path_factory.mktemp("pipelining") / "news2", key)
    return load_bundle(root, [key.public_key()])


@pytest.fixture(scope="module")
def bare(bundle: ModelBundle) -> ort.InferenceSession:
    return ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])


@pytest.fixture
def sandbox(bundle: ModelBundle) -> Iterator[Sandbox]:
    with Sandbox(bundle, LIMITS) as sb:
        yield sb


def expected(session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"features": batch}), strict=True))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_replies_arriving_together_go_to_their_own_calls_in_order(
    sandbox: Sandbox, bare: ort.InferenceSession
) -> None:
    batches = [random_batch(n, seed=n) for n in (1, 7, 64, 3, 256, 2)]
    calls = [sandbox.submit(b) for b in batches]
    time.sleep(0.5)  # every reply is in the pipe by now: the first read brings several
    lone = random_batch(5, seed=99)
    assert_same(sandbox.run(lone), expected(bare, lone))  # reads the six replies first
    for call, batch in reversed(list(zip(calls, batches, strict=True))):
        assert_same(call.result(), expected(bare, batch))
    assert sandbox.restarts == 0 and sandbox.failures == 0


def test_frames_too_big_to_be_in_flight_together_do_not_deadlock(
    sandbox: Sandbox, bare: ort.InferenceSession
) -> None:
    batches = [random_batch(40_000, seed=s) for s in range(3)]  # 1.3 MB in, 2.9 MB out each
    calls = [sandbox.submit(b) for b in batches]
    for call, batch in zip(calls, batches, strict=True):
        assert_same(call.result(), expected(bare, batch))
    assert sandbox.failures == 0


def test_a_worker_killed_with_calls_in_flight_loses_none_of_them(
    sandbox: Sandbox, bare: ort.InferenceSession
) -> None:
    first = sandbox.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # so that none of the calls is answered before the kill
    batches = [random_batch(5_000, seed=s) for s in range(4)]  # all fit in the pipe at once
    calls = [sandbox.submit(b) for b in batches]
    os.kill(first, signal.SIGKILL)
    for call, batch in zip(calls, batches, strict=True):
        assert_same(call.result(), expected(bare, batch))
    assert sandbox.pid != first and sandbox.restarts == 1
    assert sandbox.last_failure is not None and sandbox.last_failure.endswith("(signal 9)")


def test_a_hung_worker_with_calls_in_flight_times_out_once_and_all_are_retried(
    bundle: ModelBundle, bare: ort.InferenceSession
) -> None:
    with Sandbox(bundle, SandboxLimits(call_timeout_s=0.4, use_gpu=False)) as sb:
        hung = sb.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        batches = [random_batch(n, seed=n) for n in (2, 3, 4)]
        started = time.monotonic()
        calls = [sb.submit(b) for b in batches]
        for call, batch in zip(calls, batches, strict=True):
            assert_same(call.result(), expected(bare, batch))
        assert time.monotonic() - started < 3  # one timeout for the burst, not one per call
        assert sb.restarts == 1 and sb.failures == 1
        assert sb.last_failure == "no reply within 0.4 s (wall clock); killed"


def test_attempts_are_per_call(sandbox: Sandbox, bare: ort.InferenceSession) -> None:
    """The call that may be tried once fails with its worker; the calls behind it, lost with
    that worker, are retried on a fresh one and scored."""
    assert sandbox.pid is not None
    os.kill(sandbox.pid, signal.SIGSTOP)
    batches = [random_batch(5_000, seed=s) for s in range(3)]
    calls = [sandbox.submit(b, attempts=1 if s == 0 else 2) for s, b in enumerate(batches)]
    os.kill(sandbox.pid, signal.SIGKILL)
    with pytest.raises(SandboxError, match=r"worker failed once; last: .*\(signal 9\)"):
        calls[0].result()
    assert_same(calls[1].result(), expected(bare, batches[1]))
    assert_same(calls[2].result(), expected(bare, batches[2]))
    assert sandbox.restarts == 1


def test_closing_the_sandbox_fails_the_calls_still_in_flight(sandbox: Sandbox) -> None:
    call = sandbox.submit(random_batch(20_000))
    sandbox.close()
    with pytest.raises(SandboxError, match="the sandbox was closed"):
        call.result()


def test_a_waiting_caller_keeps_the_worker_on_its_cpu_and_overlapping_calls_let_it_float(
    sandbox: Sandbox,
) -> None:
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to place")
    sandbox.run(random_batch(1))
    assert sandbox.pid is not None
    assert len(os.sched_getaffinity(sandbox.pid)) == 1
    sandbox.submit(random_batch(1)).result()
    assert os.sched_getaffinity(sandbox.pid) == allowed
    sandbox.submit(random_batch(1), overlap=False).result()
    assert len(os.sched_getaffinity(sandbox.pid)) == 1


def test_frames_read_past_a_reply_are_kept_only_while_calls_are_in_flight(
    sandbox: Sandbox,
) -> None:
    """The leftover of one read is the next reply; with nothing in flight it is refused
    (``tests/test_sandbox_protocol.py``, bytes_after_the_frame)."""
    calls = [sandbox.submit(random_batch(1, seed=s)) for s in range(3)]
    time.sleep(0.5)
    worker = sandbox._worker
    assert worker is not None
    calls[0].result()
    assert worker._extra  # the two replies behind it came in the same read
    calls[2].result()
    assert not worker._extra


def test_an_error_while_reading_a_reply_does_not_hand_the_next_reply_to_the_wrong_call(
    sandbox: Sandbox, bare: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any unexpected exception mid-read (an interrupt, a bug) leaves the pipe's position
    unknown: the worker is dropped, and the calls behind are retried on a fresh one."""
    real = OutputLayout.decode

    def fail_once(self: OutputLayout, body: memoryview, rows: int) -> Any:
        monkeypatch.setattr(OutputLayout, "decode", real)
        raise KeyboardInterrupt

    batches = [random_batch(n, seed=n) for n in (3, 4)]
    calls = [sandbox.submit(b) for b in batches]
    monkeypatch.setattr(OutputLayout, "decode", fail_once)
    with pytest.raises(KeyboardInterrupt):
        calls[0].result()
    assert_same(calls[1].result(), expected(bare, batches[1]))
    assert sandbox.restarts == 1
    assert sandbox.last_failure == "interrupted while reading a reply"


def test_a_worker_near_its_cpu_budget_is_replaced_once_nothing_is_in_flight(
    bundle: ModelBundle, bare: ort.InferenceSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference._sandbox._RECYCLE_AT", 1e-9)  # any CPU is near the budget
    with Sandbox(bundle, LIMITS) as sb:
        first = sb.pid
        batches = [random_batch(n, seed=n) for n in (2, 3)]
        calls = [sb.submit(b) for b in batches]
        assert_same(calls[0].result(), expected(bare, batches[0]))
        assert sb.pid == first  # not while a call is in flight on it
        assert_same(calls[1].result(), expected(bare, batches[1]))
        assert sb.pid != first and first is not None and not Path(f"/proc/{first}").exists()
        assert sb.restarts == 0 and sb.failures == 0  # a recycle is not a failure


def test_a_worker_without_a_cpu_limit_is_never_recycled(
    bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference._sandbox._RECYCLE_AT", 1e-9)
    with Sandbox(bundle, replace(LIMITS, cpu_seconds=0)) as sb:
        first = sb.pid
        sb.run(random_batch(4))
        assert sb.pid == first
        assert sb.enforcement["cpu"] == "not limited"
