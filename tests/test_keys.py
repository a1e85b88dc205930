"""Keys come from the environment, from files, or are generated 0600 on first start."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from security import load_keyring


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
    assert load_keyring(tmp_path / "data", {"vault": path}).vault == secret


def test_a_key_of_the_wrong_length_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDGATE_KEY_VAULT", base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="32 bytes"):
        load_keyring(tmp_path)
