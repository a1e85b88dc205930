"""The raw journal: every accepted message, encrypted, committed to disk before its ACK.

Appends are group-committed: one writer thread takes whatever appends are waiting,
inserts them in one SQLite transaction (WAL, ``synchronous=FULL``, so the commit is an
fsync of the WAL) and only then resolves each caller's future. Many concurrent MLLP
connections therefore share one fsync, and no ACK is sent for a message that is not yet
on disk. ``UNIQUE(sender, control_id)`` makes a repeated MSH-10 from the same sender a
duplicate: it is acknowledged again and processed once.

The journal doubles as the ``raw`` topic: the normalize stage consumes it by row id.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas import InboundMessage, Source
from security import seal, unseal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    source_kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sealed BLOB NOT NULL,
    UNIQUE (sender, control_id)
);
"""
_MAX_GROUP = 512


@dataclass(frozen=True)
class Appended:
    """Where an append landed: its journal id, and whether it was already there."""

    id: int
    duplicate: bool


@dataclass
class _Pending:
    source: Source
    control_id: str
    content_type: str
    payload: bytes
    future: asyncio.Future[Appended]
    loop: asyncio.AbstractEventLoop


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the durability settings every journal user needs."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    return conn


def _aad(sender: str, control_id: str) -> bytes:
    return f"journal|{sender}|{control_id}".encode()


class JournalReader:
    """Reads (and decrypts) the journal; any process holding the key may open one."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._key = key
        self._reader = connect(path)
        self._read_lock = threading.Lock()

    def read_after(self, offset: int, limit: int) -> list[InboundMessage]:
        """Decrypt up to ``limit`` messages with journal id greater than ``offset``."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, source_kind, sender, control_id, received_at, content_type, sha256,"
                " sealed FROM journal WHERE id > ? ORDER BY id LIMIT ?",
                (offset, limit),
            ).fetchall()
        return [
            InboundMessage(
                id=row[0],
                source=Source(kind=row[1], name=row[2]),
                control_id=row[3],
                received_at=datetime.fromisoformat(row[4]),
                content_type=row[5],
                sha256=row[6],
                payload=unseal(self._key, row[7], _aad(row[2], row[3])),
            )
            for row in rows
        ]

    def lookup(self, control_id: str) -> list[tuple[int, str]]:
        """Journal ids and senders of messages with this MSH-10 (there may be several senders)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, sender FROM journal WHERE control_id = ? ORDER BY id", (control_id,)
            ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def close(self) -> None:
        self._reader.close()


class Journal(JournalReader):
    """Encrypted, durable, append-only store of raw inbound messages (the one writer)."""

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__(path, key)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._writer = connect(path)
        self._thread = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._thread.start()

    async def append(
        self, source: Source, control_id: str, content_type: str, payload: bytes
    ) -> Appended:
        """Commit a raw message durably; returns once it is fsynced (or known already)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Appended] = loop.create_future()
        self._queue.put(_Pending(source, control_id, content_type, payload, future, loop))
        return await future

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            self._commit(group)

    def _commit(self, group: list[_Pending]) -> None:
        results: list[Appended | BaseException] = []
        try:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            now = datetime.now(UTC).isoformat()
            for p in group:
                cur.execute(
                    "INSERT OR IGNORE INTO journal (source_kind, sender, control_id, received_at,"
                    " content_type, sha256, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        p.source.kind,
                        p.source.name,
                        p.control_id,
                        now,
                        p.content_type,
                        hashlib.sha256(p.payload).hexdigest(),
                        seal(self._key, p.payload, _aad(p.source.name, p.control_id)),
                    ),
                )
                if cur.rowcount == 1:
                    results.append(Appended(int(cur.lastrowid or 0), duplicate=False))
                else:
                    row = cur.execute(
                        "SELECT id FROM journal WHERE sender = ? AND control_id = ?",
                        (p.source.name, p.control_id),
                    ).fetchone()
                    results.append(Appended(int(row[0]), duplicate=True))
            cur.execute("COMMIT")
        except BaseException as exc:  # the callers must hear of it: no ACK without a commit
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            results = [exc] * len(group)
        for p, result in zip(group, results, strict=True):
            p.loop.call_soon_threadsafe(_resolve, p.future, result)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        super().close()


def _resolve(future: asyncio.Future[Appended], result: Appended | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
