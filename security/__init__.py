"""Security: keys, encryption at rest, de-identification, the vault, the audit trail."""

from security._crypto import seal, unseal
from security._keys import KeyRing, load_keyring
from security._vault import Vault, VaultError

__all__ = ["KeyRing", "Vault", "VaultError", "load_keyring", "seal", "unseal"]
