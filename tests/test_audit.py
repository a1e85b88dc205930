"""The audit trail: any edit, deletion, reordering or truncation is found and located."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security.audit import (
    AuditError,
    AuditLog,
    head_path,
    read_entries,
    verify_log,
)

KEY = Ed25519PrivateKey.from_private_bytes(b"a" * 32)
PUB = KEY.public_key()


def write_log(path: Path, n: int) -> None:
    with AuditLog(path, KEY) as log:
        for i in range(1, n + 1):
            assert log.append("ingest", "accepted", i, type="ORU^R01", size=100 + i) == i


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def put_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(new))


def test_intact_log_verifies(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 10)
    report = verify_log(log, PUB)
    assert report.ok and report.entries == 10 and report.first_bad is None


def test_entries_have_the_documented_shape(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 2)
    first, second = (json.loads(x) for x in lines(log))
    assert set(first) == {
        "seq",
        "ts",
        "stage",
        "event",
        "message_id",
        "details",
        "prev",
        "hash",
        "sig",
    }
    assert second["prev"] == first["hash"]
    assert first["details"] == {"size": 101, "type": "ORU^R01"}
    listing = [str(e) for e in read_entries(log)]
    assert (
        listing[0].startswith("#1 ")
        and "ingest accepted msg=1 size=101 type=ORU^R01" in (listing[0])
    )


@pytest.mark.parametrize("k", [1, 4, 8])
def test_editing_a_field_of_entry_k_names_k(tmp_path: Path, k: int) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 8)
    rows = lines(log)
    entry = json.loads(rows[k - 1])
    entry["details"]["size"] = 9999
    rows[k - 1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    put_lines(log, rows)
    report = verify_log(log, PUB)
    assert not report.ok and report.first_bad == k and "hash mismatch" in report.reason


def test_a_re_signed_edit_with_another_key_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 5)
    forger = Ed25519PrivateKey.generate()
    put_lines(log, lines(log)[:2])
    with pytest.raises(AuditError):
        AuditLog(log, forger)  # neither the tail nor the head verify under its key
    assert verify_log(log, PUB).first_bad == 3


@pytest.mark.parametrize("k", [1, 3, 5])
def test_deleting_entry_k_is_found_at_k(tmp_path: Path, k: int) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 6)
    rows = lines(log)
    del rows[k - 1]
    put_lines(log, rows)
    report = verify_log(log, PUB)
    assert not report.ok and report.first_bad == k and report.entries == k - 1


def test_swapping_two_entries_is_found(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 6)
    rows = lines(log)
    rows[2], rows[3] = rows[3], rows[2]
    put_lines(log, rows)
    report = verify_log(log, PUB)
    assert not report.ok and report.first_bad == 3 and "out of sequence" in report.reason


def test_truncating_the_tail_is_found_by_the_signed_head(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 6)
    put_lines(log, lines(log)[:4])
    report = verify_log(log, PUB)
    assert not report.ok and report.first_bad == 5 and "tail" in report.reason
    with pytest.raises(AuditError, match="does not reach its signed head"):
        AuditLog(log, KEY)  # refuses to paper over it with new entries


def test_removing_everything_or_the_head_is_found(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 3)
    head = head_path(log).read_bytes()
    log.write_bytes(b"")
    assert verify_log(log, PUB).first_bad == 1
    head_path(log).unlink()
    assert "head" in verify_log(log, PUB).reason  # head missing
    head_path(log).write_bytes(head.replace(b'"seq":3', b'"seq":2'))
    assert "head" in verify_log(log, PUB).reason


def test_wrong_public_key_fails(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 3)
    report = verify_log(log, Ed25519PrivateKey.generate().public_key())
    assert not report.ok and report.first_bad == 1 and "signature" in report.reason


def test_reopen_and_continue_keeps_verifying(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 3)
    with AuditLog(log, KEY) as again:
        assert again.seq == 3
        assert again.append("gateway", "started") == 4
    with AuditLog(log, KEY) as third:
        third.append("gateway", "stopped", reason="sigterm")
    report = verify_log(log, PUB)
    assert report.ok and report.entries == 5


def test_a_torn_last_line_after_the_head_is_cut_and_recorded(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(log, 3)
    with open(log, "ab") as fh:
        fh.write(b'{"details":{},"event":"acc')  # a crash mid-write, after the head
    assert verify_log(log, PUB).first_bad == 4
    with AuditLog(log, KEY) as again:
        assert again.seq == 4
    assert verify_log(log, PUB).ok
    assert [e.event for e in read_entries(log)][-1] == "audit.recovered"


def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with AuditLog(log, KEY), pytest.raises(AuditError, match="another writer"):
        AuditLog(log, KEY)


def test_concurrent_appends_keep_a_valid_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with AuditLog(log, KEY, sync_interval=0.01) as audit, ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(lambda i: audit.append("infer", "advised", i, n=i), range(800)))
    assert sorted(seqs) == list(range(1, 801))
    report = verify_log(log, PUB)
    assert report.ok and report.entries == 800


def test_background_sync_moves_the_head(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    audit = AuditLog(log, KEY, sync_interval=0.02)
    try:
        audit.append("gateway", "started")
        deadline = time.monotonic() + 5
        while json.loads(head_path(log).read_bytes())["seq"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        audit.close()


def test_invalid_names_and_values_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.log", KEY) as audit:
        with pytest.raises(AuditError):
            audit.append("Ingest Stage", "accepted")
        with pytest.raises(AuditError):
            audit.append("ingest", "accepted", nan=float("nan"))
        with pytest.raises(AuditError) as err:
            audit.append("ingest", "accepted", x=["MRN-PLANTED"])  # type: ignore[arg-type]
        assert "MRN-PLANTED" not in str(err.value)
        assert audit.seq == 0


_SMALL = 5


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(tmp_path: Path, data: st.DataObject) -> None:
    log = tmp_path / "byte.log"
    if not log.exists():
        write_log(log, _SMALL)
    pristine = log.read_bytes()
    try:
        pos = data.draw(st.integers(0, len(pristine) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != pristine[pos]), label="byte")
        log.write_bytes(pristine[:pos] + bytes([new]) + pristine[pos + 1 :])
        report = verify_log(log, PUB)
        assert not report.ok
        line = pristine.count(b"\n", 0, pos) + 1
        assert report.first_bad == line
    finally:
        log.write_bytes(pristine)


def test_append_rate(tmp_path: Path) -> None:
    """Fast enough for the gateway (several entries per message at 1000s of msg/s)."""
    with AuditLog(tmp_path / "audit.log", KEY) as audit:
        n = 5000
        started = time.perf_counter()
        for i in range(n):
            audit.append("process", "deidentified", i, type="ORU^R01", actions=12)
        rate = n / (time.perf_counter() - started)
    assert rate > 5000, rate
