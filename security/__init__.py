"""Security: keys, encryption at rest, de-identification, the vault, the audit trail.

Keys are versioned where rotating them must not lose data (``vault``, ``pseudonym``,
``dateshift``; ADR 5): ``load_keyring`` loads every version, ``Vault`` opens rows sealed
by any of them, and ``VaultRekeyer.rekey`` / ``.link_pseudonyms`` are what
``wardgate keys rotate`` runs.
"""

from security._crypto import seal, unseal
from security._keys import (
    KeyRing,
    KeySource,
    VersionedKey,
    key_id,
    load_keyring,
    next_version,
    scan_keys,
    version_number,
    write_key,
)
from security._rekey import VaultCounts, VaultRekeyer, inspect_vault
from security._vault import Vault, VaultBusy, VaultError

__all__ = [
    "KeyRing",
    "KeySource",
    "Vault",
    "VaultBusy",
    "VaultCounts",
    "VaultError",
    "VaultRekeyer",
    "VersionedKey",
    "inspect_vault",
    "key_id",
    "load_keyring",
    "next_version",
    "scan_keys",
    "seal",
    "unseal",
    "version_number",
    "write_key",
]
