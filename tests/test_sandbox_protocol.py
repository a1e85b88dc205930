"""The sandbox pipe protocol: nothing a worker sends is trusted.

A lying worker here is a real process speaking the protocol (a small script put in the
worker's place): it answers READY correctly, then lies in its OUTPUTS frames. Every lie is
refused before it is believed, the worker is killed and replaced, the call is retried, and
the caller gets a :class:`SandboxError` naming the violation: never a ``ValueError``, a
hang, a huge allocation or arrays read past the frame. The parser is also fed arbitrary
bytes (hypothesis).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import (
    NEWS2_OUTPUTS,
    ModelBundle,
    Sandbox,
    SandboxError,
    SandboxLimits,
    build_news2_bundle,
    load_bundle,
)
from inference import _worker as wire
from inference._pipe import OutputLayout, ProtocolViolation
from tests.test_sandbox import random_batch

# The stand-in worker: READY as a real one would say it, then, for every RUN, LIE(rows).
FAKE_WORKER = """
import json, os, struct, sys, time
HEADER, DIMS = struct.Struct("<BQ"), "<d{{n}}B{{n}}Q"
NAMES = {names!r}

def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

def frame():
    kind, length = HEADER.unpack(read_exactly(9))
    return kind, read_exactly(length)

def outputs(rows, dim0=None, data=None):
    n = len(NAMES)
    head = struct.pack(DIMS.format(n=n), 0.0, *[1] * n, *[rows if dim0 is None else dim0] * n)
    body = head + (b"\\0" * (8 * rows * n) if data is None else data)
    return HEADER.pack(4, len(body)) + body

frame()  # MODEL
ready = {{"provider": "CPUExecutionProvider", "enforcement": {{}}, "outputs": {outputs!r}}}
ready = json.dumps(ready).encode()
os.write(1, HEADER.pack(2, len(ready)) + ready)
while True:
    kind, payload = frame()
    rows = struct.unpack_from("<Q", payload)[0]
    os.write(1, {lie})
    time.sleep({pause})
"""

FakeWorker = Callable[..., Path]
NEWS2_LAYOUT = [[name, "<i8"] for name in NEWS2_OUTPUTS]
LIES = {
    "over_the_cap": ("HEADER.pack(4, 1 << 62)", "over the"),
    "wrong_kind": ("HEADER.pack(7, 2) + b'{}'", "unexpected frame kind 7"),
    "rows_not_the_batch": ("outputs(rows + 1)", "does not have one row per input row"),
    "missing_data": ("outputs(rows, data=b'')", "length does not match"),
    "extra_data": ("outputs(rows, data=b'\\0' * (8 * rows * len(NAMES) + 8))", "length"),
    "huge_dim": ("outputs(rows, dim0=1 << 63, data=b'')", "huge dim"),
    "bytes_after_the_frame": ("outputs(rows) + b'\\0'", "bytes sent after a frame"),
    "short_header": ("HEADER.pack(4, 3) + b'abc'", "shorter than its header"),
}


@pytest.fixture
def fake_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorker]:
    """Put a lying script in the worker's place; returns ``make(lie, outputs, pause)``."""

    def make(lie: str, outputs: object = NEWS2_LAYOUT, pause: float = 0.0) -> Path:
        script = tmp_path / f"fake_{len(list(tmp_path.iterdir()))}.py"
        source = FAKE_WORKER.format(
            names=list(NEWS2_OUTPUTS), outputs=outputs, lie=lie, pause=pause
        )
        script.write_text(source)
        monkeypatch.setattr("inference._pipe._WORKER", script)
        return script

    yield make


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    key = Ed25519PrivateKey.generate()
    root = build_news2_bundle(tmp_path_factory.mktemp("proto") / "news2", key)
    return load_bundle(root, [key.public_key()])


LIMITS = SandboxLimits(call_timeout_s=2, start_timeout_s=10, use_gpu=False)


@pytest.mark.parametrize("name", sorted(LIES))
def test_a_lying_reply_is_refused_and_the_worker_replaced(
    name: str, fake_worker: FakeWorker, bundle: ModelBundle
) -> None:
    lie, says = LIES[name]
    fake_worker(lie)
    with Sandbox(bundle, LIMITS) as sb:
        first = sb.pid
        with pytest.raises(SandboxError, match="worker failed twice; last: protocol violation"):
            sb.run(random_batch(3))
        assert says in (sb.last_failure or "")
        assert sb.failures == 2 and sb.restarts == 1
        assert first is not None and not Path(f"/proc/{first}").exists()  # killed, not trusted


def test_a_reply_that_stops_half_way_times_out(
    fake_worker: FakeWorker, bundle: ModelBundle
) -> None:
    fake_worker("HEADER.pack(4, 100) + b'x' * 10", pause=60)
    with (
        Sandbox(bundle, replace(LIMITS, call_timeout_s=0.3)) as sb,
        pytest.raises(SandboxError, match=r"no reply within 0\.3 s"),
    ):
        sb.run(random_batch(2))


def test_a_worker_that_declares_other_outputs_does_not_start(
    fake_worker: FakeWorker, bundle: ModelBundle
) -> None:
    fake_worker("b''", outputs=[["total", "<i8"], ["injected", "<i8"]])
    with pytest.raises(SandboxError, match="protocol violation: READY outputs are not the"):
        Sandbox(bundle, LIMITS).start()


def test_a_worker_that_declares_an_unlisted_dtype_does_not_start(
    fake_worker: FakeWorker, bundle: ModelBundle
) -> None:
    layout = [[name, "|O"] for name in NEWS2_OUTPUTS]  # Python objects: never on the pipe
    fake_worker("b''", outputs=layout)
    with pytest.raises(SandboxError, match="protocol violation"):
        Sandbox(bundle, LIMITS).start()


# --- the parser alone -----------------------------------------------------------------------

LAYOUT = OutputLayout.parse([["a", "<i8"], ["b", "<f4"]], ["a", "b"])


def outputs_frame(rows: int, b_width: int = 2) -> bytes:
    frames = wire.OutputFrames([("a", "<i8"), ("b", "<f4")])
    arrays = [np.arange(rows, dtype=np.int64), np.ones((rows, b_width), dtype=np.float32)]
    return b"".join(bytes(memoryview(p).cast("B")) for p in frames.frame(1.5, arrays, rows))


def test_a_well_formed_frame_decodes_to_views_of_exactly_its_bytes() -> None:
    body = memoryview(outputs_frame(3))[wire.HEADER.size :]
    cpu, out = LAYOUT.decode(body, 3)
    assert cpu == 1.5
    assert out["a"].tolist() == [0, 1, 2]
    assert out["b"].shape == (3, 2) and out["b"].dtype == np.float32
    assert LAYOUT.decode(body, 3)[1]["a"].tolist() == [0, 1, 2]  # the checked plan, reused


def test_a_frame_for_another_batch_size_is_refused() -> None:
    body = memoryview(outputs_frame(3))[wire.HEADER.size :]
    with pytest.raises(ProtocolViolation):
        LAYOUT.decode(body, 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 4))
def test_arbitrary_bytes_never_decode_outside_the_frame(data: bytes, rows: int) -> None:
    layout = OutputLayout.parse([["a", "<i8"], ["b", "<f4"]], ["a", "b"])
    try:
        _, out = layout.decode(memoryview(data), rows)
    except ProtocolViolation:
        return
    assert sum(a.nbytes for a in out.values()) <= len(data)
    assert all(a.shape[0] == rows for a in out.values())


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.data())
def test_a_frame_with_any_byte_changed_decodes_consistently_or_is_refused(
    rows: int, data: st.DataObject
) -> None:
    frame = bytearray(outputs_frame(rows)[wire.HEADER.size :])
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] = data.draw(st.integers(0, 255))
    layout = OutputLayout.parse([["a", "<i8"], ["b", "<f4"]], ["a", "b"])
    try:
        _, out = layout.decode(memoryview(bytes(frame)), rows)
    except ProtocolViolation:
        return
    end = wire.CPU.size + 2 + 8 * 3  # header: cpu, two ranks, dims (1 + 2)
    assert end + sum(a.nbytes for a in out.values()) == len(frame)


def test_a_dead_worker_is_replaced_before_the_call_without_using_an_attempt(
    bundle: ModelBundle,
) -> None:
    with Sandbox(bundle, LIMITS) as sb:
        pid = sb.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)  # until it is a zombie: its end of the pipes is closed
        assert sb.run(random_batch(2), attempts=1)["total"].shape == (2,)
        assert sb.restarts == 1
        assert sb.last_failure == "worker exited between calls (signal 9)"


def test_batches_larger_than_the_pipe_arrive_whole(bundle: ModelBundle) -> None:
    batch = random_batch(40_000)  # 1.3 MB in, 2.9 MB out: several reads and writes each way
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {"features": batch}), strict=True))
    with Sandbox(bundle, LIMITS) as sb:
        got = sb.run(batch)
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name])


def test_the_worker_runs_on_its_callers_cpu(bundle: ModelBundle) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to place")
    with Sandbox(bundle, LIMITS) as sb:
        sb.run(random_batch(1))
        assert sb.pid is not None
        pinned = os.sched_getaffinity(sb.pid)
    assert len(pinned) == 1 and pinned <= os.sched_getaffinity(0)
