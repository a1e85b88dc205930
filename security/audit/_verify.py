"""Reading and verifying an audit log offline (``wardgate audit verify``).

Verification demands, line by line: exact canonical bytes, seq == line number, ``prev``
== the previous entry's hash (genesis for the first), the recomputed hash, and a valid
signature; then that the log reaches the signed head. The first failure is reported by
its line number, which is also the seq the entry there should have.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.audit._entry import FIELDS, GENESIS, AuditEntry, canonical, entry_hash, strict_hex
from security.audit._errors import AuditError
from security.audit._head import read_head


@dataclass(frozen=True)
class VerifyReport:
    """``ok`` and how many entries verified; else ``first_bad`` (line == seq) and why."""

    ok: bool
    entries: int
    first_bad: int | None
    reason: str


def _check_line(raw: bytes, seq: int, prev: str, key: Ed25519PublicKey) -> str | None:
    """Why line ``seq`` is bad, or None if it is the right entry in the right place."""
    if not raw.endswith(b"\n"):
        return "incomplete last line (torn write or truncation)"
    try:
        entry: Any = json.loads(raw)
    except ValueError:
        return "not valid JSON"
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        return "not an audit entry (wrong fields)"
    if canonical(entry) + b"\n" != raw:
        return "not in canonical form (edited)"
    if type(entry["seq"]) is not int or entry["seq"] != seq:
        return f"out of sequence: expected seq {seq} here (deleted, inserted or reordered)"
    if entry["prev"] != prev:
        return "chain broken: prev is not the previous entry's hash"
    if not isinstance(entry["hash"], str) or entry_hash(entry) != entry["hash"]:
        return "hash mismatch: the entry's content was changed"
    sig = strict_hex(entry["sig"]) if isinstance(entry["sig"], str) else None
    try:
        if sig is None:
            raise InvalidSignature
        key.verify(sig, bytes.fromhex(entry["hash"]))
    except InvalidSignature:
        return "signature invalid (wrong key or forged entry)"
    return None


def verify_log(path: Path, public_key: Ed25519PublicKey) -> VerifyReport:
    """Verify the whole chain and the signed head; never raises for a bad log."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return VerifyReport(False, 0, None, "audit log file is missing")
    head = read_head(path, public_key)
    head_seq, head_hash = (0, GENESIS) if isinstance(head, str) else head
    prev, count, hash_at_head = GENESIS, 0, GENESIS
    with fh:
        for seq, raw in enumerate(fh, start=1):
            reason = _check_line(raw, seq, prev, public_key)
            if reason is not None:
                return VerifyReport(False, count, seq, reason)
            prev = json.loads(raw)["hash"]
            count = seq
            if seq == head_seq:
                hash_at_head = prev
    if isinstance(head, str):
        return VerifyReport(False, count, None, head)
    if head_seq > count:
        return VerifyReport(
            False,
            count,
            count + 1,
            f"log ends at seq {count} but the signed head records seq {head_seq}: "
            "entries were removed from the tail",
        )
    if hash_at_head != head_hash:
        return VerifyReport(
            False, count, head_seq, f"entry {head_seq} does not match the signed head"
        )
    return VerifyReport(True, count, None, f"{count} entries verified; signed head at {head_seq}")


def read_entries(path: Path) -> Iterator[AuditEntry]:
    """Entries in file order for a listing (``str(entry)`` is one readable line).

    Parses only; raises ``AuditError`` naming the line of an unreadable entry.
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                data: Any = json.loads(raw)
                if not isinstance(data, dict) or set(data) != FIELDS:
                    raise ValueError
                yield AuditEntry(**data)
            except (ValueError, TypeError):
                raise AuditError(f"line {lineno} is not a readable audit entry") from None
