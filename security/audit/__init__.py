"""The audit trail: append-only, hash-chained, Ed25519-signed JSON Lines.

    AuditLog(path, signing_key, *, sync_interval=1.0)
        .append(stage, event, message_id=None, **details) -> seq
        .sync()  .close()  .seq  .path
    verify_log(path, public_key) -> VerifyReport(ok, entries, first_bad, reason)
    read_entries(path) -> Iterator[AuditEntry]      (a listing; not a verification)
    head_path(path) -> the signed head checkpoint beside the log (``<log>.head``)
    AuditError

Entries record decisions (stage, event, message id, small typed details), never PHI.
"""

from security.audit._entry import GENESIS, AuditEntry
from security.audit._errors import AuditError
from security.audit._head import head_path
from security.audit._log import AuditLog
from security.audit._verify import VerifyReport, read_entries, verify_log

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "VerifyReport",
    "head_path",
    "read_entries",
    "verify_log",
]
