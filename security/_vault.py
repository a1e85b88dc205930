"""The token vault: pseudonym -> the patient's real identifiers, sealed at rest.

One of the three places identifiable data may exist (see ARCHITECTURE, "The PHI
boundary"). Each row is AES-256-GCM sealed with the pseudonym as associated data, so a
row copied under another pseudonym fails to open instead of re-identifying the wrong
patient. SQLite in WAL mode; one connection guarded by a lock, because writes must be a
read-merge-write under one transaction anyway and SQLite serialises writers regardless.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidTag

from security._crypto import seal, unseal

_AAD_PREFIX = b"wardgate-vault-v1\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    pseudonym TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
) WITHOUT ROWID
"""


class VaultError(Exception):
    """A vault row cannot be trusted: wrong key, tampered or swapped row, or bad input.

    The message never contains an identifier, and not the pseudonym either.
    """


def _aad(pseudonym: str) -> bytes:
    return _AAD_PREFIX + pseudonym.encode()


def _check(identifiers: list[dict[str, str]]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for ident in identifiers:
        system, value = ident.get("system", ""), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not value:
            raise VaultError("each identifier needs a string 'system' and a non-empty 'value'")
        pairs.append((system, value))
    return pairs


class Vault:
    """Thread-safe store of sealed identifier lists, keyed by subject pseudonym."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("vault key must be 32 bytes (AES-256)")
        self._key = key
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def _open(self, pseudonym: str, blob: bytes) -> list[tuple[str, str]]:
        try:
            plain = unseal(self._key, blob, _aad(pseudonym))
        except InvalidTag:
            raise VaultError(
                "vault row failed authentication: wrong vault key, or the row was "
                "tampered with or moved; restore the vault from backup"
            ) from None
        return [(s, v) for s, v in json.loads(plain)]

    def _read(self, pseudonym: str) -> list[tuple[str, str]]:
        row = self._db.execute(
            "SELECT sealed FROM identities WHERE pseudonym = ?", (pseudonym,)
        ).fetchone()
        return [] if row is None else self._open(pseudonym, bytes(row[0]))

    def put(self, pseudonym: str, identifiers: list[dict[str, str]]) -> None:
        """Add ``identifiers`` to the pseudonym's list (ordered union with what is stored).

        Order is kept, first stored first: ``Deidentifier`` puts the identifier the
        pseudonym was derived from first, so ``get(p)[0]`` is the primary identifier.
        """
        pairs = _check(identifiers)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                merged = self._read(pseudonym)
                new = [p for p in dict.fromkeys(pairs) if p not in merged]
                if not new:
                    self._db.execute("ROLLBACK")
                    return
                merged.extend(new)
                plain = json.dumps(merged, separators=(",", ":")).encode()
                self._db.execute(
                    "INSERT INTO identities (pseudonym, sealed) VALUES (?, ?) "
                    "ON CONFLICT (pseudonym) DO UPDATE SET sealed = excluded.sealed",
                    (pseudonym, seal(self._key, plain, _aad(pseudonym))),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, pseudonym: str) -> list[dict[str, str]]:
        """The identifiers stored for ``pseudonym``, primary first; empty if unknown."""
        with self._lock:
            pairs = self._read(pseudonym)
        return [{"system": s, "value": v} for s, v in pairs]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
