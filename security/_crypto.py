"""Authenticated encryption for data at rest (journal, vault): AES-256-GCM.

A sealed blob is ``nonce (12 bytes) || ciphertext+tag``. The associated data binds a
blob to its place (a journal row id, a vault pseudonym) so rows cannot be swapped.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Decrypt a sealed blob; raises ``cryptography.exceptions.InvalidTag`` if tampered."""
    return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
