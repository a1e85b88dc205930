"""The token vault: sealed at rest, bound to its pseudonym, merged, thread-safe."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from security import Vault, VaultError

KEY = b"k" * 32
MRN = {"system": "urn:oid:1.2.3.4.mrn", "value": "MRN-PLANTED-4711"}
SSN = {"system": "urn:oid:1.2.3.4.ssn", "value": "999-PLANTED-01"}
ACCT = {"system": "urn:oid:1.2.3.4.acct", "value": "ACCT-PLANTED-77"}


def test_round_trip(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:
        vault.put("v1-aaa", [MRN, SSN])
        assert vault.get("v1-aaa") == [MRN, SSN]
    with Vault(tmp_path / "vault.db", KEY) as reopened:
        assert reopened.get("v1-aaa") == [MRN, SSN]


def test_unknown_pseudonym_is_empty(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:
        assert vault.get("v1-unknown") == []


def test_put_merges_as_an_ordered_union_primary_first(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:
        vault.put("v1-aaa", [MRN, SSN])
        vault.put("v1-aaa", [ACCT, MRN])
        vault.put("v1-aaa", [SSN])
        assert vault.get("v1-aaa") == [MRN, SSN, ACCT]
        vault.put("v1-bbb", [ACCT, ACCT])
        assert vault.get("v1-bbb") == [ACCT]


def test_identifiers_are_ciphertext_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with Vault(path, KEY) as vault:
        for n in range(50):
            vault.put(f"v1-{n}", [MRN, SSN, ACCT])
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert raw  # main file and any WAL/SHM left behind
    for ident in (MRN, SSN, ACCT):
        assert ident["value"].encode() not in raw
        assert b"PLANTED" not in raw


def test_wal_mode(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY):
        mode = sqlite3.connect(tmp_path / "vault.db").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


def test_a_row_moved_to_another_pseudonym_fails_to_open(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with Vault(path, KEY) as vault:
        vault.put("v1-alice", [MRN])
        vault.put("v1-bob", [SSN])
    db = sqlite3.connect(path)
    with db:
        alice = db.execute("SELECT sealed FROM identities WHERE pseudonym='v1-alice'").fetchone()
        db.execute("UPDATE identities SET sealed=? WHERE pseudonym='v1-bob'", alice)
    db.close()
    with Vault(path, KEY) as vault:
        assert vault.get("v1-alice") == [MRN]
        with pytest.raises(VaultError, match="failed authentication") as err:
            vault.get("v1-bob")
        with pytest.raises(VaultError):
            vault.put("v1-bob", [ACCT])  # never merges into a row it cannot trust
    assert MRN["value"] not in str(err.value) and "v1-bob" not in str(err.value)


def test_wrong_key_fails(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:
        vault.put("v1-aaa", [MRN])
    with Vault(tmp_path / "vault.db", b"w" * 32) as wrong, pytest.raises(VaultError):
        wrong.get("v1-aaa")


def test_bad_input_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:
        with pytest.raises(VaultError) as err:
            vault.put("v1-aaa", [{"system": "s", "value": ""}, {"value": 12345}])  # type: ignore[list-item]
        assert "12345" not in str(err.value)
    with pytest.raises(ValueError, match="32 bytes"):
        Vault(tmp_path / "other.db", b"short")


def test_concurrent_puts_from_threads_lose_nothing(tmp_path: Path) -> None:
    with Vault(tmp_path / "vault.db", KEY) as vault:

        def worker(t: int) -> None:
            for n in range(25):
                vault.put("v1-shared", [{"system": f"t{t}", "value": str(n)}])
                vault.put(f"v1-t{t}", [{"system": "s", "value": str(n)}])
                assert vault.get(f"v1-t{t}")[-1] == {"system": "s", "value": str(n)}

        with ThreadPoolExecutor(8) as pool:
            for done in [pool.submit(worker, t) for t in range(8)]:
                done.result()  # re-raises a worker's failure here
        assert len(vault.get("v1-shared")) == 8 * 25
        assert all(len(vault.get(f"v1-t{t}")) == 25 for t in range(8))
