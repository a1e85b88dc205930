"""The shape of one audit entry and of the signed head: canonical bytes, hash, signature.

Canonical JSON (sorted keys, no spaces, ASCII, no NaN) makes a line's bytes a function
of its content, so verification can demand the exact bytes and any edit shows up.
``hash = sha256(canonical(entry without hash, sig))``; ``sig = Ed25519(hash digest)``.
The head signs a different, prefixed message so an entry signature can never pass for a
head signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit._errors import AuditError

GENESIS = hashlib.sha256(b"wardgate-audit-genesis-v1").hexdigest()
FIELDS = frozenset({"seq", "ts", "stage", "event", "message_id", "details", "prev", "hash", "sig"})
HEAD_FIELDS = frozenset({"seq", "hash", "ts", "sig"})
_HEAD_PREFIX = b"wardgate-audit-head-v1\x00"
_NAME = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Detail = str | int | float | bool


def canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


def strict_hex(text: str) -> bytes | None:
    """Bytes of lowercase hex only: ``fromhex`` alone accepts case and space variants."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None


def head_message(head: dict[str, Any]) -> bytes:
    return _HEAD_PREFIX + canonical({k: head[k] for k in ("seq", "hash", "ts")})


def check_fields(stage: str, event: str, details: dict[str, Detail]) -> None:
    """Names are code-chosen identifiers; refuse anything else before it is signed."""
    if not _NAME.match(stage) or not _NAME.match(event):
        raise AuditError("stage and event must match [a-z][a-z0-9_.-]{0,63}")
    for key, value in details.items():
        if not _KEY.match(key):
            raise AuditError("detail names must match [a-z][a-z0-9_]{0,63}")
        if not isinstance(value, str | int | float):  # bool is an int
            raise AuditError(f"detail {key!r} must be a str, int, float or bool")
        if isinstance(value, float) and not math.isfinite(value):
            raise AuditError(f"detail {key!r} must be a finite number")


def build_line(
    key: Ed25519PrivateKey,
    seq: int,
    ts: str,
    stage: str,
    event: str,
    message_id: int | None,
    details: dict[str, Detail],
    prev: str,
) -> tuple[bytes, str]:
    """The signed entry as one line of bytes, and its hash (the next entry's ``prev``)."""
    entry: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "stage": stage,
        "event": event,
        "message_id": message_id,
        "details": details,
        "prev": prev,
    }
    digest = hashlib.sha256(canonical(entry)).digest()
    entry["hash"] = digest.hex()
    entry["sig"] = key.sign(digest).hex()
    return canonical(entry) + b"\n", entry["hash"]


@dataclass(frozen=True)
class AuditEntry:
    """One entry as read back, for listings. Reading is not verifying: use ``verify_log``."""

    seq: int
    ts: str
    stage: str
    event: str
    message_id: int | None
    details: dict[str, Detail]
    prev: str
    hash: str
    sig: str

    def __str__(self) -> str:
        msg = "-" if self.message_id is None else str(self.message_id)
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.details.items()))
        return f"#{self.seq} {self.ts} {self.stage} {self.event} msg={msg} {extra}".rstrip()
