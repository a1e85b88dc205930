"""Where the gateway's keys come from, and which versions of each it holds.

Sources for key NAME, version N (highest precedence first):
1. environment ``WARDGATE_KEY_<NAME>`` for v1, ``WARDGATE_KEY_<NAME>_V<N>`` for N >= 2
   (base64; how Kubernetes secrets arrive as env),
2. config ``key_files: {<name>: PATH, <name>_v<N>: PATH}`` (how secrets arrive as files),
3. ``<data-dir>/keys/<name>.key`` and ``<name>.v<N>.key``, which the gateway writes itself
   (mode 0600): v1 on first start, later versions only by ``wardgate keys rotate``.

The highest version present is the current one: it seals and derives; older versions only
open and find what was made with them (ADR 5). Versioned keys are ``vault``, ``pseudonym``
and ``dateshift``; a date-shift version belongs to the pseudonym version of the same
number, so the current pseudonym version must have one. Keys are never printed or logged
(the reprs here show versions and sources only), and no key lives in code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

VERSIONED = ("vault", "pseudonym", "dateshift")
_PLAIN = ("journal",)
_SIGNING = ("audit", "publisher")
KEY_NAMES = _PLAIN + VERSIONED + _SIGNING
_ENV = re.compile(r"^WARDGATE_KEY_([A-Z]+)(?:_V(\d+))?$")
_FILE = re.compile(r"^([a-z]+)(?:\.v(\d+))?\.key$")
_CONFIG = re.compile(r"^([a-z]+)(?:_v(\d+))?$")


@dataclass(frozen=True)
class KeySource:
    """Where one key version came from; ``where`` names a variable or a path, never a value.

    ``origin == "data"`` means the gateway wrote it under ``<data-dir>/keys``, so it may
    also write the next version; a secret from the environment or a configured file is
    the operator's to provision.
    """

    origin: Literal["env", "config", "data"]
    where: str
    path: Path | None = None

    def __str__(self) -> str:
        shown = f" ({self.path})" if self.origin == "config" else ""
        return f"{self.origin} {self.where}{shown}"


@dataclass(frozen=True, repr=False)
class VersionedKey:
    """Every loaded version of one symmetric key; the highest seals, every one opens."""

    name: str
    secrets: Mapping[str, bytes]
    sources: Mapping[str, KeySource]

    @property
    def current(self) -> str:
        return max(self.secrets, key=version_number)

    @property
    def secret(self) -> bytes:
        """The current version's key."""
        return self.secrets[self.current]

    def key_id(self, version: str) -> str:
        """A public fingerprint of one version, stored beside what it sealed (ADR 5)."""
        return key_id(self.secrets[version])

    def __repr__(self) -> str:
        versions = sorted(self.secrets, key=version_number)
        return f"VersionedKey({self.name!r}, versions={versions}, current={self.current!r})"


@dataclass(frozen=True, repr=False)
class KeyRing:
    """All secrets one gateway instance holds.

    ``publisher`` signs the reference model bundles this instance builds for itself;
    only its public half is trusted by default, beside any keys named in config.
    ``pseudonym``, ``pseudonym_version`` and ``dateshift`` are the current pseudonym
    generation: what the de-identifier uses for every new message.
    """

    journal: bytes
    vault: VersionedKey
    pseudonym_keys: VersionedKey
    dateshift_keys: VersionedKey
    audit: Ed25519PrivateKey
    publisher: Ed25519PrivateKey

    @property
    def pseudonym(self) -> bytes:
        return self.pseudonym_keys.secret

    @property
    def pseudonym_version(self) -> str:
        return self.pseudonym_keys.current

    @property
    def dateshift(self) -> bytes:
        """The date-shift key paired with the current pseudonym version (see ADR 5)."""
        return self.dateshift_keys.secrets[self.pseudonym_version]

    @property
    def audit_public(self) -> Ed25519PublicKey:
        return self.audit.public_key()

    def subject_pseudonyms(self, system: str, value: str) -> list[str]:
        """The identifier's pseudonym under every loaded version, current first.

        For searching by a real identifier across a rotation: data stored before it
        carries the older pseudonyms.
        """
        from security.deid._keyed import pseudonym

        keys = self.pseudonym_keys
        order = sorted(keys.secrets, key=version_number, reverse=True)
        return [pseudonym(keys.secrets[v], v, system, value) for v in order]

    def __repr__(self) -> str:
        return f"KeyRing(vault={self.vault!r}, pseudonym={self.pseudonym_keys!r})"


def version_number(version: str) -> int:
    """``"v2"`` -> 2; versions are ``v1``, ``v2``, ... and compare as numbers."""
    if not re.fullmatch(r"v[1-9][0-9]{0,5}", version):
        raise ValueError(f"key version {version!r} is not of the form v1, v2, ...")
    return int(version[1:])


def next_version(version: str) -> str:
    return f"v{version_number(version) + 1}"


def key_id(secret: bytes) -> str:
    """16 hex digits of HMAC(secret, constant): names a key without revealing it."""
    return hmac.new(secret, b"wardgate-key-id", hashlib.sha256).hexdigest()[:16]


def _version(name: str, number: str | None, where: str) -> str:
    if number is None:
        return "v1"
    if name not in VERSIONED:
        raise ValueError(f"{where}: key {name!r} has no versions; only {', '.join(VERSIONED)} do")
    if int(number) < 2:
        raise ValueError(f"{where}: version 1 is the unsuffixed name; suffixes start at 2")
    return f"v{int(number)}"


def _decode(text: bytes | str, source: KeySource) -> bytes:
    try:
        raw = text.encode() if isinstance(text, str) else text
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key from {source} is not valid base64") from None


def _found(data_dir: Path, files: Mapping[str, Path]) -> dict[tuple[str, str], KeySource]:
    """Every (name, version) a source offers, by precedence: env, then config, then data."""
    found: dict[tuple[str, str], KeySource] = {}
    key_dir = data_dir / "keys"
    if key_dir.is_dir():
        for path in key_dir.iterdir():
            match = _FILE.match(path.name)
            if match and match[1] in KEY_NAMES:
                version = _version(match[1], match[2], f"keys/{path.name}")
                found[(match[1], version)] = KeySource("data", f"keys/{path.name}", path)
    for entry, path in files.items():
        match = _CONFIG.match(entry)
        if match and match[1] in KEY_NAMES:
            version = _version(match[1], match[2], f"key_files.{entry}")
            found[(match[1], version)] = KeySource("config", f"key_files.{entry}", path)
    for var, text in os.environ.items():
        match = _ENV.match(var)
        if match and text and match[1].lower() in KEY_NAMES:
            name = match[1].lower()
            found[(name, _version(name, match[2], var))] = KeySource("env", var)
    return found


def _load(source: KeySource) -> bytes:
    if source.path is None:
        secret = _decode(os.environ[source.where], source)
    else:
        secret = _decode(source.path.read_bytes(), source)
    if len(secret) != 32:
        raise ValueError(f"key from {source} must be 32 bytes (base64-encoded)")
    return secret


def scan_keys(data_dir: Path, files: Mapping[str, Path] | None = None) -> dict[str, VersionedKey]:
    """Every key version the sources offer, read but nothing generated (``keys status``)."""
    given = dict(files or {})
    by_name: dict[str, dict[str, KeySource]] = {}
    for (name, version), source in _found(data_dir, given).items():
        by_name.setdefault(name, {})[version] = source
    return {
        name: VersionedKey(
            name,
            {v: _load(s) for v, s in sources.items()},
            sources,
        )
        for name, sources in by_name.items()
    }


def write_key(data_dir: Path, name: str, version: str = "v1") -> Path:
    """Generate ``<data-dir>/keys/<name>[.v<N>].key`` (0600) unless it exists; return it.

    Written to a temporary file, fsynced, then hard-linked into place, which fails rather
    than replaces: two processes generating at once end up with one key, and a crash
    never leaves a half-written key behind.
    """
    key_dir = data_dir / "keys"
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    suffix = "" if version == "v1" else f".{version}"
    path = key_dir / f"{name}{suffix}.key"
    if path.exists():
        return path
    tmp = key_dir / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(os.urandom(32)))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: its key is the key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(key_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_keyring(data_dir: Path, files: Mapping[str, Path] | None = None) -> KeyRing:
    """Load every key version, generating a missing key's v1 under ``data_dir/keys``.

    A key with any version present is never regenerated: once ``keys/vault.key`` is
    retired after a rotation, v2 alone is the vault key.
    """
    found = scan_keys(data_dir, files)
    missing = [name for name in KEY_NAMES if name not in found]
    for name in missing:
        write_key(data_dir, name)
    if missing:
        found = scan_keys(data_dir, files)
    current = found["pseudonym"].current
    if current not in found["dateshift"].secrets:
        number = version_number(current)
        raise ValueError(
            f"pseudonym key {current} has no date-shift key of the same version: provision "
            f"WARDGATE_KEY_DATESHIFT_V{number} (or key_files.dateshift_v{number}); each "
            "pseudonym version has its own date-shift key (ADR 5)"
        )
    return KeyRing(
        journal=found["journal"].secret,
        vault=found["vault"],
        pseudonym_keys=found["pseudonym"],
        dateshift_keys=found["dateshift"],
        audit=Ed25519PrivateKey.from_private_bytes(found["audit"].secret),
        publisher=Ed25519PrivateKey.from_private_bytes(found["publisher"].secret),
    )
