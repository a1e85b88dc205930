"""The token vault: pseudonym -> the patient's real identifiers, sealed at rest.

One of the three places identifiable data may exist (see ARCHITECTURE, "The PHI
boundary"). Each row is AES-256-GCM sealed with the pseudonym as associated data, so a
row copied under another pseudonym fails to open instead of re-identifying the wrong
patient. SQLite in WAL mode; one connection guarded by a lock, because writes must be a
read-merge-write under one transaction anyway and SQLite serialises writers regardless.

Key versions (ADR 5): each row records the id (a public fingerprint) of the key that
sealed it, so a vault part-way through re-keying (``security._rekey``) opens with every
loaded version. Rows written before versions existed have no id and are tried against
every loaded key. After a pseudonym rotation a row also lists the identity's earlier
pseudonyms (``links``, sealed with the rest), so a search by the current pseudonym can
find data stored under the old ones.

Every process that opens the vault holds a shared ``flock`` on ``<vault>.lock``;
re-keying takes it exclusively, so it cannot run beside a gateway, and a gateway cannot
start while it runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from cryptography.exceptions import InvalidTag

from security._crypto import seal, unseal
from security._keys import VersionedKey

_AAD_PREFIX = b"wardgate-vault-v1\x00"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS identities "
    "(pseudonym TEXT PRIMARY KEY, sealed BLOB NOT NULL, key_id TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
# meta rows: the key the last re-keying sealed under; the pseudonym version every older
# identity has been linked to (see security._rekey)
CURRENT_KEY_ID = "vault_key_id"
LINKED_VERSION = "pseudonyms_linked_to"
_Pairs = list[tuple[str, str]]
Row = tuple[str, bytes, str | None]  # pseudonym, sealed, key id


class VaultError(Exception):
    """A vault row cannot be trusted: wrong key, tampered or swapped row, or bad input.

    The message never contains an identifier, and not the pseudonym either.

        VaultError
        └── VaultBusy   the vault is locked by another process (re-keying, or a gateway)
    """


class VaultBusy(VaultError):
    """Another process holds the vault lock in a conflicting mode; the message says who."""


def _aad(pseudonym: str) -> bytes:
    return _AAD_PREFIX + pseudonym.encode()


def _check(identifiers: list[dict[str, str]]) -> _Pairs:
    pairs: _Pairs = []
    for ident in identifiers:
        system, value = ident.get("system", ""), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not value:
            raise VaultError("each identifier needs a string 'system' and a non-empty 'value'")
        pairs.append((system, value))
    return pairs


def _encode(pairs: _Pairs, links: list[str]) -> bytes:
    """A list of pairs as before versions; an object only when there are links to keep."""
    body: object = {"ids": pairs, "links": links} if links else pairs
    return json.dumps(body, separators=(",", ":")).encode()


def _decode(plain: bytes) -> tuple[_Pairs, list[str]]:
    body = json.loads(plain)
    pairs, links = (body["ids"], body["links"]) if isinstance(body, dict) else (body, [])
    return [(s, v) for s, v in pairs], [str(p) for p in links]


class Vault:
    """Thread-safe store of sealed identifier lists, keyed by subject pseudonym.

    ``keys`` is the keyring's ``vault`` (every version), or one raw key. Opening holds
    the vault lock shared (``VaultBusy`` while ``VaultRekeyer`` holds it).
    """

    _EXCLUSIVE = False  # ``VaultRekeyer`` holds the lock exclusively

    def __init__(self, path: Path, keys: bytes | VersionedKey) -> None:
        if isinstance(keys, bytes):
            keys = VersionedKey("vault", {"v1": keys}, {})
        if any(len(k) != 32 for k in keys.secrets.values()):
            raise ValueError("vault key must be 32 bytes (AES-256)")
        self._set_keys(keys)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._flock = _take_lock(path.with_name(path.name + ".lock"), self._EXCLUSIVE)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            newest = self._meta(CURRENT_KEY_ID)
            if newest is not None and newest not in self._by_id:
                raise VaultError(
                    "the vault was re-keyed to a key this process has not loaded (keys "
                    "changed after it read them, or a key version is missing): restart it, "
                    "and see `wardgate keys status`"
                )
        except BaseException:
            self._db.close()
            self._flock.close()
            raise

    def _set_keys(self, keys: VersionedKey) -> None:
        self._keys = keys
        self._by_id = {keys.key_id(v): k for v, k in keys.secrets.items()}
        self._current_id = keys.key_id(keys.current)

    def _migrate(self) -> None:
        """Create the tables; give a vault from before key versions its ``key_id`` column."""
        self._db.execute("BEGIN IMMEDIATE")  # parent and pipeline may open it at once
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(identities)")}
            if "key_id" not in columns:
                self._db.execute("ALTER TABLE identities ADD COLUMN key_id TEXT")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _commit_meta(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_meta(name, value)
            self._db.execute("COMMIT")

    def _open(self, pseudonym: str, blob: bytes, kid: str | None) -> tuple[_Pairs, list[str]]:
        if kid is None:  # sealed before key versions: any loaded key may be the one
            candidates = list(self._by_id.values())
        elif kid in self._by_id:
            candidates = [self._by_id[kid]]
        else:
            raise VaultError(
                f"vault row was sealed by key id {kid}, which this process has not loaded: "
                "provide that key version again (see `wardgate keys status`)"
            )
        for key in candidates:
            try:
                return _decode(unseal(key, blob, _aad(pseudonym)))
            except InvalidTag:
                continue
        raise VaultError(
            "vault row failed authentication: wrong vault key, or the row was "
            "tampered with or moved; restore the vault from backup"
        )

    def _read(self, pseudonym: str) -> tuple[_Pairs, list[str]]:
        row = self._db.execute(
            "SELECT sealed, key_id FROM identities WHERE pseudonym = ?", (pseudonym,)
        ).fetchone()
        return ([], []) if row is None else self._open(pseudonym, bytes(row[0]), row[1])

    def _write(self, pseudonym: str, pairs: _Pairs, links: list[str]) -> None:
        sealed = seal(self._keys.secret, _encode(pairs, links), _aad(pseudonym))
        self._db.execute(
            "INSERT INTO identities (pseudonym, sealed, key_id) VALUES (?, ?, ?) "
            "ON CONFLICT (pseudonym) DO UPDATE SET sealed = excluded.sealed, "
            "key_id = excluded.key_id",
            (pseudonym, sealed, self._current_id),
        )

    def _merge(self, pseudonym: str, pairs: _Pairs, links: Sequence[str] = ()) -> bool:
        """Ordered union into the stored row; False if there was nothing new to write."""
        stored, stored_links = self._read(pseudonym)
        new = [p for p in dict.fromkeys(pairs) if p not in stored]
        new_links = [p for p in dict.fromkeys(links) if p not in stored_links and p != pseudonym]
        if not new and not new_links:
            return False
        self._write(pseudonym, stored + new, stored_links + new_links)
        return True

    def _transaction(self, work: Callable[[], bool]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("COMMIT" if work() else "ROLLBACK")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def put(self, pseudonym: str, identifiers: list[dict[str, str]]) -> None:
        """Add ``identifiers`` to the pseudonym's list (ordered union with what is stored).

        Order is kept, first stored first: ``Deidentifier`` puts the identifier the
        pseudonym was derived from first, so ``get(p)[0]`` is the primary identifier.
        """
        pairs = _check(identifiers)
        self._transaction(lambda: self._merge(pseudonym, pairs))

    def get(self, pseudonym: str) -> list[dict[str, str]]:
        """The identifiers stored for ``pseudonym``, primary first; empty if unknown.

        A pseudonym of any version that was ever stored keeps its own row, so data
        stored before a pseudonym rotation re-identifies with no alias lookup.
        """
        with self._lock:
            pairs, _ = self._read(pseudonym)
        return [{"system": s, "value": v} for s, v in pairs]

    def linked(self, pseudonyms: Sequence[str]) -> list[str]:
        """``pseudonyms`` and every earlier pseudonym their rows link to, in order, once.

        For a search by a real identifier: with the current pseudonym alone it finds what
        was stored under older versions, even after their keys are gone.
        """
        out = dict.fromkeys(pseudonyms)
        with self._lock:
            for pseudonym in pseudonyms:
                out.update(dict.fromkeys(self._read(pseudonym)[1]))
        return list(out)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._flock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _take_lock(path: Path, exclusive: bool) -> IO[str]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fh = os.fdopen(fd, "r+")
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        if exclusive:
            raise VaultBusy(
                "the vault is open in another process (a running gateway or pipeline): "
                "stop the gateway (SIGTERM drains it), then run this again"
            ) from None
        raise VaultBusy(
            "the vault is being re-keyed (`wardgate keys rotate` is running): start the "
            "gateway when it has finished"
        ) from None
    return fh
