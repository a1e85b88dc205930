"""The signed head checkpoint beside the log: (last seq, last hash) as of the last sync.

A hash chain alone cannot show that entries were cut off its end; the head can. It is
replaced atomically (write, fsync, rename, fsync the directory) only after the log itself
was fsynced, so it never points past what is durable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from security.audit._entry import HEAD_FIELDS, canonical, head_message, strict_hex


def head_path(log_path: Path) -> Path:
    """Where the head of ``log_path`` lives: ``<log>.head``."""
    return log_path.with_name(log_path.name + ".head")


def write_head(log_path: Path, key: Ed25519PrivateKey, seq: int, hash_: str, ts: str) -> None:
    head: dict[str, Any] = {"seq": seq, "hash": hash_, "ts": ts}
    head["sig"] = key.sign(head_message(head)).hex()
    target = head_path(log_path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(canonical(head) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_head(log_path: Path, public_key: Ed25519PublicKey) -> tuple[int, str] | str:
    """(seq, hash) from a head whose signature holds, or the reason it cannot be trusted."""
    try:
        raw = head_path(log_path).read_bytes()
    except FileNotFoundError:
        return "signed head checkpoint is missing"
    try:
        head = json.loads(raw)
    except ValueError:
        return "signed head checkpoint is not valid JSON"
    if not isinstance(head, dict) or set(head) != HEAD_FIELDS:
        return "signed head checkpoint has the wrong fields"
    seq, hash_, sig = head["seq"], head["hash"], head["sig"]
    if type(seq) is not int or not isinstance(hash_, str) or not isinstance(sig, str):
        return "signed head checkpoint has the wrong field types"
    if canonical(head) + b"\n" != raw:
        return "signed head checkpoint is not in canonical form"
    sig_bytes = strict_hex(sig)
    try:
        if sig_bytes is None:
            raise InvalidSignature
        public_key.verify(sig_bytes, head_message(head))
    except InvalidSignature:
        return "signed head checkpoint signature is invalid (wrong key or forged)"
    return seq, hash_
