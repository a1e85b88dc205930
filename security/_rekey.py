"""Re-keying the vault: re-seal its rows under a new key, link identities to new pseudonyms.

What ``wardgate keys rotate`` runs (ADR 5). ``VaultRekeyer`` is a ``Vault`` opened with
the lock held exclusively, so it cannot run beside a gateway (which holds it shared).
Both passes walk the rows in primary-key order in batches of one transaction each: a
crash loses at most the batch in flight, leaves a vault every loaded key version still
opens, and the next run picks up what is left. ``inspect_vault`` counts rows for
``keys status`` without keys or the lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from security._keys import VersionedKey
from security._vault import CURRENT_KEY_ID, LINKED_VERSION, Row, Vault


@dataclass
class VaultCounts:
    """What ``keys status`` shows: rows per sealing key id and per pseudonym version."""

    by_key_id: dict[str | None, int] = field(default_factory=dict)
    by_pseudonym_version: dict[str, int] = field(default_factory=dict)
    linked_to: str | None = None


def _each(work: Callable[[str, bytes, str | None], None], rows: list[Row]) -> bool:
    for row in rows:
        work(*row)
    return True


def _version_of(pseudonym: str) -> str:
    return pseudonym.split("-", 1)[0]


class VaultRekeyer(Vault):
    """The vault opened for re-keying; ``VaultBusy`` while any other process has it open."""

    _EXCLUSIVE = True

    def _each_batch(
        self,
        todo: Callable[[str, str | None], bool],
        work: Callable[[str, bytes, str | None], None],
        batch: int,
        after_batch: Callable[[int], None] | None,
    ) -> int:
        """Run ``work`` on every row ``todo`` selects, ``batch`` rows per transaction.

        Rows are walked in primary-key order, so a pass is linear however large the
        vault. Each batch commits on its own: a crash loses at most the batch in flight,
        which the next pass does again. ``after_batch`` (rows done so far) runs after
        each commit; tests use it to crash between batches.
        """
        done, last = 0, ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT pseudonym, sealed, key_id FROM identities WHERE pseudonym > ? "
                    "ORDER BY pseudonym LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return done
            last = str(rows[-1][0])
            chosen = [(str(p), bytes(b), k) for p, b, k in rows if todo(str(p), k)]
            if chosen:
                self._transaction(partial(_each, work, chosen))
                done += len(chosen)
                if after_batch is not None:
                    after_batch(done)

    def stale_rows(self) -> int:
        """Rows a re-keying began but has not re-sealed under the current key yet.

        Rows from before key versions (no key id) count only once a re-keying has begun:
        until then they are simply the only key's rows.
        """
        with self._lock:
            begun = self._meta(CURRENT_KEY_ID) is not None
            row = self._db.execute(
                "SELECT COUNT(*) FROM identities WHERE key_id != ? OR (key_id IS NULL AND ?)",
                (self._current_id, begun),
            ).fetchone()
        return int(row[0])

    def rekey(
        self,
        keys: VersionedKey,
        *,
        batch: int = 500,
        after_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Re-seal every row not sealed by ``keys.current`` under it; return how many.

        ``keys`` must still hold every version a row was sealed with: nothing is dropped
        here, and a row that fails to open stops the pass (restore it from backup) rather
        than being skipped. The new key's id is recorded first, so a process still
        holding the old keys refuses to open the vault instead of mixing them.
        """
        self._set_keys(keys)
        self._commit_meta(CURRENT_KEY_ID, self._current_id)
        current = self._current_id

        def reseal(pseudonym: str, blob: bytes, kid: str | None) -> None:
            pairs, links = self._open(pseudonym, blob, kid)
            self._write(pseudonym, pairs, links)

        return self._each_batch(lambda _, kid: kid != current, reseal, batch, after_batch)

    def linked_version(self) -> str:
        """The pseudonym version every older identity has been linked to (v1 if none)."""
        with self._lock:
            return self._meta(LINKED_VERSION) or "v1"

    def link_pseudonyms(
        self,
        version: str,
        derive: Callable[[str, str], str],
        *,
        batch: int = 500,
        after_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Give every identity stored under another version its ``version`` pseudonym.

        ``derive(system, value)`` is the new pseudonym of a primary identifier. Its row
        gets the identifiers and, sealed with them, links to the old pseudonym and that
        row's own links. Old rows stay as they are, so data stored under them still
        re-identifies. Idempotent (ordered unions), so a rerun after a crash finishes.
        Returns how many old rows were linked.
        """

        def link(pseudonym: str, blob: bytes, kid: str | None) -> None:
            pairs, links = self._open(pseudonym, blob, kid)
            target = derive(*pairs[0])
            if _version_of(target) != version:
                raise ValueError(f"derive made a pseudonym of another version than {version}")
            self._merge(target, pairs, [pseudonym, *links])

        def older(pseudonym: str, kid: str | None) -> bool:
            return _version_of(pseudonym) != version

        done = self._each_batch(older, link, batch, after_batch)
        self._commit_meta(LINKED_VERSION, version)
        return done


def inspect_vault(path: Path) -> VaultCounts:
    """Row counts for ``keys status``, read-only and without keys or the lock."""
    counts = VaultCounts()
    if not path.exists():
        return counts
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}
        if "identities" not in tables:
            return counts
        columns = {r[1] for r in db.execute("PRAGMA table_info(identities)")}
        kid = "key_id" if "key_id" in columns else "NULL"
        for key, n in db.execute(f"SELECT {kid}, COUNT(*) FROM identities GROUP BY 1"):  # noqa: S608
            counts.by_key_id[key] = int(n)
        for pseudonym, n in db.execute(
            "SELECT substr(pseudonym, 1, instr(pseudonym, '-') - 1), COUNT(*) "
            "FROM identities GROUP BY 1"
        ):
            counts.by_pseudonym_version[str(pseudonym)] = int(n)
        if "meta" in tables:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            counts.linked_to = meta.get(LINKED_VERSION)
    finally:
        db.close()
    return counts
