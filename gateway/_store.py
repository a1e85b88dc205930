"""The embedded bus and the gateway's own stores, in one SQLite database.

Topics (``deidentified``, ``advisories``) are append-only tables read by offset. A stage
consumes a batch, then in **one transaction** produces its outputs, records dispositions
and moves its offset; so a crash replays the batch and never duplicates or loses its
effects (at-least-once delivery, exactly-once effects). Nothing stored here is
identifiable: topics and stores hold de-identified, pseudonymous data only.

Stores beside the topics:
- ``dispositions``: exactly one row per accepted message (primary key = journal id);
- ``records``: the de-identified bundle each message became (what the model saw);
- ``facts``: each subject's de-identified coded observations (the feature history);
- ``advisories``: advisory FHIR resources, created once and never updated or deleted
  (those of a model in shadow mode are recorded but never served or sent);
- ``model_modes``: per-model overrides (active / shadow / off) set at run time by an
  operator; the infer stage reads them every batch, so no restart is needed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from schemas import Disposition, ObservationFact, Outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topic (
    topic TEXT NOT NULL,
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS topic_by_name ON topic (topic, offset);
CREATE TABLE IF NOT EXISTS offsets (consumer TEXT PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dispositions (
    message_id INTEGER PRIMARY KEY,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    destinations TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    message_id INTEGER PRIMARY KEY,
    message_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    deidentified TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS facts (
    subject TEXT NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL,
    effective TEXT NOT NULL,
    value REAL,
    value_code TEXT,
    unit TEXT,
    PRIMARY KEY (subject, system, code, effective)
);
CREATE TABLE IF NOT EXISTS advisories (
    id TEXT PRIMARY KEY,
    resource_type TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    subject TEXT NOT NULL,
    code_system TEXT,
    code TEXT,
    resource TEXT NOT NULL,
    created_at TEXT NOT NULL,
    shadow INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS model_modes (
    model_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS advisories_search ON advisories (resource_type, subject, code);
CREATE INDEX IF NOT EXISTS advisories_by_message ON advisories (message_id);
"""


@dataclass(frozen=True)
class TopicEntry:
    offset: int
    key: str
    payload: str


class Tx:
    """The writes a stage makes for one consumed batch, applied atomically."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def produce(self, topic: str, key: str, payload: str) -> None:
        self._cur.execute(
            "INSERT INTO topic (topic, key, payload) VALUES (?, ?, ?)", (topic, key, payload)
        )

    def commit_offset(self, consumer: str, offset: int) -> None:
        self._cur.execute(
            "INSERT INTO offsets (consumer, offset) VALUES (?, ?)"
            " ON CONFLICT (consumer) DO UPDATE SET offset = excluded.offset",
            (consumer, offset),
        )

    def dispose(self, disposition: Disposition) -> None:
        """Record a message's one outcome. A replayed batch (at-least-once delivery after a
        crash) may dispose a message again: the first disposition stands."""
        self._cur.execute(
            "INSERT INTO dispositions (message_id, outcome, reason, destinations, at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            (
                disposition.message_id,
                disposition.outcome.value,
                disposition.reason,
                json.dumps(disposition.destinations),
                disposition.at.isoformat(),
            ),
        )

    def record(self, message_id: int, message_type: str, subject: str, bundle: str) -> None:
        self._cur.execute(
            "INSERT OR REPLACE INTO records (message_id, message_type, subject, deidentified)"
            " VALUES (?, ?, ?, ?)",
            (message_id, message_type, subject, bundle),
        )

    def add_facts(self, subject: str, facts: Sequence[ObservationFact]) -> None:
        self._cur.executemany(
            "INSERT OR REPLACE INTO facts (subject, system, code, effective, value, value_code,"
            " unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (subject, f.system, f.code, _ts(f.effective), f.value, f.value_code, f.unit)
                for f in facts
            ],
        )

    def create_advisory(
        self, message_id: int, subject: str, resource: dict[str, Any], shadow: bool = False
    ) -> bool:
        """Create an advisory resource once; re-creating the same id is a no-op (idempotent)."""
        coding = (resource.get("code") or {}).get("coding") or [{}]
        self._cur.execute(
            "INSERT OR IGNORE INTO advisories (id, resource_type, message_id, subject,"
            " code_system, code, resource, created_at, shadow)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"{resource['resourceType']}/{resource['id']}",
                resource["resourceType"],
                message_id,
                subject,
                coding[0].get("system"),
                coding[0].get("code"),
                to_json(resource).decode(),  # pydantic-core: compact JSON, 4x json.dumps
                datetime.now(UTC).isoformat(),
                int(shadow),
            ),
        )
        return self._cur.rowcount == 1

    def set_model_mode(self, model_id: str, mode: str) -> None:
        self._cur.execute(
            "INSERT INTO model_modes (model_id, mode, changed_at) VALUES (?, ?, ?)"
            " ON CONFLICT (model_id) DO UPDATE SET mode = excluded.mode,"
            " changed_at = excluded.changed_at",
            (model_id, mode, datetime.now(UTC).isoformat()),
        )


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """One SQLite database shared by the stages; a connection per thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(advisories)")}
        if "shadow" not in columns:  # a data dir from before per-model shadow mode
            conn.execute("ALTER TABLE advisories ADD COLUMN shadow INTEGER NOT NULL DEFAULT 0")

    @property
    def path(self) -> Path:
        return self._path

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All of a batch's effects, or none of them."""
        with self._write_lock:
            conn = self._conn()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def offset(self, consumer: str) -> int:
        row = (
            self._conn()
            .execute("SELECT offset FROM offsets WHERE consumer = ?", (consumer,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def read(self, topic: str, after: int, limit: int) -> list[TopicEntry]:
        rows = (
            self._conn()
            .execute(
                "SELECT offset, key, payload FROM topic WHERE topic = ? AND offset > ?"
                " ORDER BY offset LIMIT ?",
                (topic, after, limit),
            )
            .fetchall()
        )
        return [TopicEntry(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def history(self, subject: str, since: datetime) -> list[ObservationFact]:
        rows = (
            self._conn()
            .execute(
                "SELECT system, code, effective, value, value_code, unit FROM facts"
                " WHERE subject = ? AND effective >= ?",
                (subject, _ts(since)),
            )
            .fetchall()
        )
        return [
            ObservationFact(
                system=r[0],
                code=r[1],
                effective=datetime.fromisoformat(r[2]),
                value=r[3],
                value_code=r[4],
                unit=r[5],
            )
            for r in rows
        ]

    def disposition(self, message_id: int) -> Disposition | None:
        row = (
            self._conn()
            .execute(
                "SELECT outcome, reason, destinations, at FROM dispositions WHERE message_id = ?",
                (message_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Disposition(
            message_id=message_id,
            outcome=Outcome(row[0]),
            reason=row[1],
            destinations=json.loads(row[2]),
            at=datetime.fromisoformat(row[3]),
        )

    def record(self, message_id: int) -> tuple[str, str, dict[str, Any]] | None:
        row = (
            self._conn()
            .execute(
                "SELECT message_type, subject, deidentified FROM records WHERE message_id = ?",
                (message_id,),
            )
            .fetchone()
        )
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def advisories_for_message(self, message_id: int, shadow: bool = False) -> list[dict[str, Any]]:
        """The message's written advisories (or, with ``shadow``, those only recorded)."""
        rows = (
            self._conn()
            .execute(
                "SELECT resource FROM advisories WHERE message_id = ? AND shadow = ? ORDER BY id",
                (message_id, int(shadow)),
            )
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def model_modes(self) -> dict[str, str]:
        """Operators' per-model overrides (model id -> active / shadow / off)."""
        rows = self._conn().execute("SELECT model_id, mode FROM model_modes").fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def search_advisories(
        self,
        resource_type: str,
        subjects: Sequence[str] | None,
        code_system: str | None,
        code: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Non-shadow advisories, newest first; ``subjects``: any of these pseudonyms."""
        sql = "SELECT resource FROM advisories WHERE resource_type = ? AND shadow = 0"
        args: list[Any] = [resource_type]
        if subjects is not None:
            sql += " AND subject IN (" + ",".join("?" * len(subjects)) + ")"
            args.extend(subjects)
        if code is not None:
            sql += " AND code = ?"
            args.append(code)
        if code_system is not None:
            sql += " AND code_system = ?"
            args.append(code_system)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        args.append(limit)
        return [json.loads(r[0]) for r in self._conn().execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Dispositions per outcome, for readiness and the demo's summary."""
        rows = (
            self._conn()
            .execute("SELECT outcome, COUNT(*) FROM dispositions GROUP BY outcome")
            .fetchall()
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
