"""Errors raised by the audit trail.

    AuditError   the log cannot be opened or appended to without breaking the chain:
                 another writer holds it, its tail fails verification, its signed head
                 is missing or ahead of it, or an entry's fields are invalid

A failed verification is not an exception: ``verify_log`` returns a ``VerifyReport``.
"""

from __future__ import annotations


class AuditError(Exception):
    """The audit trail refused an operation to keep the chain trustworthy."""
