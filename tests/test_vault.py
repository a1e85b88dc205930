"""The token vault: sealed at rest, bound to its pseudonym, merged, thread-safe."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from security import Vault, VaultError, VaultRekeyer, VersionedKey, seal

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


def _legacy_vault(path: Path) -> None:
    """A vault as written before key versions: no key_id column, rows a JSON list."""
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "CREATE TABLE identities (pseudonym TEXT PRIMARY KEY, sealed BLOB NOT NULL) "
            "WITHOUT ROWID"
        )
        plain = json.dumps([[MRN["system"], MRN["value"]]]).encode()
        sealed = seal(KEY, plain, b"wardgate-vault-v1\x00v1-old")
        db.execute("INSERT INTO identities VALUES (?, ?)", ("v1-old", sealed))
    db.close()


def test_a_vault_from_before_key_versions_opens_and_rekeying_labels_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vault.db"
    _legacy_vault(path)
    with Vault(path, KEY) as vault:
        assert vault.get("v1-old") == [MRN]
        vault.put("v1-old", [SSN])
        assert vault.get("v1-old") == [MRN, SSN]
    new = b"n" * 32
    keys = VersionedKey("vault", {"v1": KEY, "v2": new}, {})
    with VaultRekeyer(path, keys) as vault:
        assert vault.rekey(keys) == 1
    with Vault(path, new) as vault:
        assert vault.get("v1-old") == [MRN, SSN]


def test_a_row_sealed_by_a_key_not_loaded_says_so_without_the_pseudonym(tmp_path: Path) -> None:
    keys = VersionedKey("vault", {"v1": KEY, "v2": b"n" * 32}, {})
    with Vault(tmp_path / "vault.db", keys) as vault:
        vault.put("v1-aaa", [MRN])  # sealed by v2, the current version
    with Vault(tmp_path / "vault.db", KEY) as only_v1, pytest.raises(VaultError) as err:
        only_v1.get("v1-aaa")
    assert "has not loaded" in str(err.value) and "v1-aaa" not in str(err.value)


def test_linked_lists_each_pseudonym_then_the_older_ones_its_row_names(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with Vault(path, KEY) as vault:
        vault.put("v1-aaa", [MRN])
        vault.put("v1-bbb", [SSN])
    with VaultRekeyer(path, KEY) as vault:
        linked = vault.link_pseudonyms("v2", lambda system, value: f"v2-{value}", batch=1)
        assert linked == 2 and vault.linked_version() == "v2"
    with Vault(path, KEY) as vault:
        assert vault.get(f"v2-{MRN['value']}") == [MRN]
        assert vault.linked([f"v2-{MRN['value']}", "v1-zzz"]) == [
            f"v2-{MRN['value']}",
            "v1-zzz",
            "v1-aaa",
        ]
