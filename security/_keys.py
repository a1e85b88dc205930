"""Where the gateway's keys come from: environment, key files, or first-start generation.

Order of precedence for each key NAME:
1. environment ``WARDGATE_KEY_<NAME>`` (base64; how Kubernetes secrets arrive as env),
2. a file named in config (``keys.<name>_file``; how Kubernetes secrets arrive as files),
3. ``<data-dir>/keys/<name>.key``, generated on first start with mode 0600.
Keys are never printed or logged, and no key lives in code.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

_SYMMETRIC = ("journal", "vault", "pseudonym", "dateshift")
_SIGNING = ("audit", "publisher")


@dataclass(frozen=True)
class KeyRing:
    """All secrets one gateway instance holds.

    ``publisher`` signs the reference model bundles this instance builds for itself;
    only its public half is trusted by default, beside any keys named in config.
    """

    journal: bytes
    vault: bytes
    pseudonym: bytes
    dateshift: bytes
    audit: Ed25519PrivateKey
    publisher: Ed25519PrivateKey
    pseudonym_version: str = "v1"

    @property
    def audit_public(self) -> Ed25519PublicKey:
        return self.audit.public_key()


def _read_secret(name: str, files: Mapping[str, Path], key_dir: Path) -> bytes:
    env = os.environ.get(f"WARDGATE_KEY_{name.upper()}")
    if env:
        return base64.b64decode(env)
    if name in files:
        return base64.b64decode(files[name].read_bytes().strip())
    path = key_dir / f"{name}.key"
    if path.exists():
        return base64.b64decode(path.read_bytes().strip())
    secret = os.urandom(32)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(secret))
        fh.flush()
        os.fsync(fh.fileno())
    return secret


def load_keyring(data_dir: Path, files: Mapping[str, Path] | None = None) -> KeyRing:
    """Load every key, generating the missing ones under ``data_dir/keys`` (0600)."""
    key_dir = data_dir / "keys"
    given = dict(files or {})
    raw = {name: _read_secret(name, given, key_dir) for name in _SYMMETRIC + _SIGNING}
    for name, secret in raw.items():
        if len(secret) != 32:
            raise ValueError(f"key {name!r} must be 32 bytes (base64-encoded)")
    return KeyRing(
        journal=raw["journal"],
        vault=raw["vault"],
        pseudonym=raw["pseudonym"],
        dateshift=raw["dateshift"],
        audit=Ed25519PrivateKey.from_private_bytes(raw["audit"]),
        publisher=Ed25519PrivateKey.from_private_bytes(raw["publisher"]),
    )
