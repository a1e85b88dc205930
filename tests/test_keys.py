"""Keys come from the environment, from files, or are generated 0600 on first start."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from security import load_keyring, write_key


def test_missing_keys_are_generated_with_owner_only_permissions(tmp_path: Path) -> None:
    ring = load_keyring(tmp_path)
    key_dir = tmp_path / "keys"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in key_dir.iterdir())
    assert files == sorted(
        f"{n}.key" for n in ("journal", "vault", "pseudonym", "dateshift", "audit", "publisher")
    )
    for path in key_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(ring.journal) == 32


def test_generated_keys_are_stable_across_restarts(tmp_path: Path) -> None:
    first, second = load_keyring(tmp_path), load_keyring(tmp_path)
    assert first.journal == second.journal and first.pseudonym == second.pseudonym


def test_environment_overrides_files_and_nothing_is_written_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = os.urandom(32)
    monkeypatch.setenv("WARDGATE_KEY_JOURNAL", base64.b64encode(secret).decode())
    ring = load_keyring(tmp_path)
    assert ring.journal == secret
    assert not (tmp_path / "keys" / "journal.key").exists()


def test_a_key_file_named_in_config_is_used(tmp_path: Path) -> None:
    secret = os.urandom(32)
    path = tmp_path / "vault-secret"
    path.write_bytes(base64.b64encode(secret))
    assert load_keyring(tmp_path / "data", {"vault": path}).vault.secret == secret


def test_a_key_of_the_wrong_length_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDGATE_KEY_VAULT", base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="32 bytes"):
        load_keyring(tmp_path)


def test_versioned_key_files_load_and_the_highest_version_is_current(tmp_path: Path) -> None:
    load_keyring(tmp_path)
    secret = os.urandom(32)
    (tmp_path / "keys" / "vault.v3.key").write_bytes(base64.b64encode(secret))
    ring = load_keyring(tmp_path)
    assert sorted(ring.vault.secrets) == ["v1", "v3"] and ring.vault.current == "v3"
    assert ring.vault.secret == secret
    assert str(ring.vault.sources["v3"]) == "data keys/vault.v3.key"


def test_config_key_files_carry_versions_and_override_the_data_dir(tmp_path: Path) -> None:
    load_keyring(tmp_path)
    secret = os.urandom(32)
    path = tmp_path / "vault-v2-secret"
    path.write_bytes(base64.b64encode(secret) + b"\n")
    (tmp_path / "keys" / "vault.v2.key").write_bytes(base64.b64encode(os.urandom(32)))
    ring = load_keyring(tmp_path, {"vault_v2": path})
    assert ring.vault.secret == secret and ring.vault.sources["v2"].origin == "config"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("WARDGATE_KEY_VAULT_V1", "suffixes start at 2"),
        ("WARDGATE_KEY_JOURNAL_V2", "has no versions"),
    ],
)
def test_a_version_suffix_that_means_nothing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    monkeypatch.setenv(variable, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(ValueError, match=message):
        load_keyring(tmp_path)


def test_a_key_that_is_not_base64_is_refused_naming_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDGATE_KEY_VAULT", "not*base64")
    with pytest.raises(ValueError, match="WARDGATE_KEY_VAULT") as err:
        load_keyring(tmp_path)
    assert "not*base64" not in str(err.value)


def test_reprs_show_versions_never_key_material(tmp_path: Path) -> None:
    ring = load_keyring(tmp_path)
    shown = repr(ring) + repr(ring.vault) + repr(ring.pseudonym_keys)
    for secret in (ring.vault.secret, ring.pseudonym, ring.dateshift, ring.journal):
        assert repr(secret) not in shown and base64.b64encode(secret).decode() not in shown
    assert "v1" in shown


def test_writing_a_key_that_exists_keeps_it_and_leaves_no_temp_file(tmp_path: Path) -> None:
    first = write_key(tmp_path, "vault", "v2")
    before = first.read_bytes()
    assert write_key(tmp_path, "vault", "v2") == first and first.read_bytes() == before
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["vault.v2.key"]  # no temp left
