"""Security: keys, encryption at rest, de-identification, the vault, the audit trail."""

from security._crypto import seal, unseal
from security._keys import KeyRing, load_keyring

__all__ = ["KeyRing", "load_keyring", "seal", "unseal"]
