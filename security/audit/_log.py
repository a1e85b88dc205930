"""The append side of the audit trail: one writer, hash-chained, signed, JSON Lines.

Durability trade-off: every ``append`` writes and flushes its line to the OS (it
survives a crash of this process) but fsyncs only on ``sync()``, ``close()`` and every
``sync_interval`` seconds from a background thread. A power loss can therefore lose up
to ``sync_interval`` seconds of entries; because the signed head
is written only after an fsync, such a loss looks like a torn tail *after* the head,
never like tampering, and verification still passes. Truncation that reaches back past
the head is detected. Call ``sync()`` where an entry must be durable before you go on
(e.g. before ACKing a message).

On reopen the chain resumes from the last complete line, after checking its hash and
signature and that the log reaches its signed head. A torn last line (no newline, from
a crash mid-write) past the head is cut off, and the cut is itself recorded as an
``audit.recovered`` entry.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit._entry import (
    FIELDS,
    GENESIS,
    Detail,
    build_line,
    check_fields,
    entry_hash,
    strict_hex,
)
from security.audit._errors import AuditError
from security.audit._head import head_path, read_head, write_head

_CHUNK = 1 << 16


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _last_line(fh: IO[bytes], size: int) -> tuple[bytes, int]:
    """The last complete line and the offset where complete data ends (torn tail after)."""
    end = size
    buf = b""
    pos = size
    while pos > 0:  # find the last newline: the end of complete data
        step = min(_CHUNK, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        cut = buf.rfind(b"\n")
        if cut >= 0:
            end = pos + cut + 1
            buf = buf[: cut + 1]
            break
    else:
        return b"", 0
    while pos > 0 and buf.rfind(b"\n", 0, len(buf) - 1) < 0:
        step = min(_CHUNK, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
    start = buf.rfind(b"\n", 0, len(buf) - 1) + 1
    return buf[start:], end


class AuditLog:
    """Append-only, hash-chained, Ed25519-signed audit log; safe to share between threads.

    One writer per file: an exclusive ``flock`` is held while open. A background thread
    owned by the log (joined by ``close``) fsyncs and moves the signed head every
    ``sync_interval`` seconds, so ``append`` never waits on the disk; ``sync_interval=0``
    turns it off (then only ``sync``/``close`` make entries durable).
    """

    def __init__(
        self, path: Path, signing_key: Ed25519PrivateKey, *, sync_interval: float = 1.0
    ) -> None:
        self._path = path
        self._key = signing_key
        self._lock = threading.Lock()  # the chain state and the file position
        self._head_lock = threading.Lock()  # fsync + head; taken before _lock, never after
        self._sync_failed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and not head_path(path).exists():
            write_head(path, signing_key, 0, GENESIS, _now())  # head first: see _head
        self._fh: IO[bytes] = open(path, "ab+")  # noqa: SIM115  (owned until close)
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise AuditError("audit log is already open by another writer") from None
        try:
            torn = self._resume()
        except BaseException:
            self._fh.close()
            raise
        if torn:
            self.append("audit", "audit.recovered", torn_bytes=torn)
            self.sync()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if sync_interval > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, args=(sync_interval,), name="audit-sync", daemon=True
            )
            self._syncer.start()

    def _resume(self) -> int:
        """Load (seq, hash) from the tail; cut a torn tail; return how many bytes were cut."""
        size = os.fstat(self._fh.fileno()).st_size
        line, end = _last_line(self._fh, size)
        self._seq, self._hash = 0, GENESIS
        if line:
            try:
                entry: Any = json.loads(line)
                ok = isinstance(entry, dict) and set(entry) == FIELDS
                sig = strict_hex(entry["sig"]) if ok else None
                ok = ok and sig is not None and entry_hash(entry) == entry["hash"]
                if ok and sig is not None:
                    self._key.public_key().verify(sig, bytes.fromhex(entry["hash"]))
            except (ValueError, TypeError, InvalidSignature):
                ok = False
            if not ok:
                raise AuditError(
                    "the last audit entry fails verification (wrong key or tampered): "
                    "run `wardgate audit verify` before appending"
                )
            self._seq, self._hash = int(entry["seq"]), str(entry["hash"])
        head = read_head(self._path, self._key.public_key())
        if isinstance(head, str):
            raise AuditError(f"{head}: run `wardgate audit verify` before appending")
        self._head_seq, head_hash = head
        if self._head_seq > self._seq or (self._head_seq == self._seq and head_hash != self._hash):
            raise AuditError(
                "audit log does not reach its signed head (truncated or replaced): "
                "run `wardgate audit verify` before appending"
            )
        if end < size:
            self._fh.truncate(end)
            os.fsync(self._fh.fileno())
        return size - end

    @property
    def path(self) -> Path:
        return self._path

    @property
    def seq(self) -> int:
        """The seq of the last entry written (0 for an empty log)."""
        return self._seq

    def append(
        self, stage: str, event: str, message_id: int | None = None, **details: Detail
    ) -> int:
        """Sign, write and flush one entry; return its seq. Never put PHI in ``details``."""
        check_fields(stage, event, details)
        with self._lock:
            if self._fh.closed:
                raise AuditError("audit log is closed")
            if self._sync_failed:
                raise AuditError("audit log could not be synced to disk: check the volume")
            seq = self._seq + 1
            line, hash_ = build_line(
                self._key, seq, _now(), stage, event, message_id, details, self._hash
            )
            self._fh.write(line)
            self._fh.flush()
            self._seq, self._hash = seq, hash_
        return seq

    def sync(self) -> None:
        """Make every entry so far durable, then move the signed head up to it."""
        with self._head_lock:
            self._sync_held()

    def _sync_held(self) -> None:
        with self._lock:
            if self._fh.closed or self._seq == self._head_seq:
                return
            seq, hash_, fd = self._seq, self._hash, self._fh.fileno()
        try:
            os.fsync(fd)  # outside _lock: appends go on meanwhile
            write_head(self._path, self._key, seq, hash_, _now())
        except OSError:
            self._sync_failed = True
            raise
        self._head_seq = seq

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except OSError:
                return  # _sync_failed makes the next append raise

    def close(self) -> None:
        """Stop the background sync, make everything durable, release the file."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._head_lock:
            try:
                self._sync_held()
            finally:
                with self._lock:
                    if not self._fh.closed:
                        self._fh.close()  # releases the flock

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
