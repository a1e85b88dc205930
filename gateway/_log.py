"""Structured event logging that cannot carry PHI by accident.

``log.info("message.accepted", stage="ingest", msg_id=7)`` writes one JSON line with an
event name and keys. A key that is not on ``ALLOWED_KEYS`` is dropped before anything is
written (its name is counted, never its value), and string values are truncated, so a
payload or a patient field handed to a logger by mistake never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time

ALLOWED_KEYS = frozenset(
    {
        "stage",
        "msg_id",
        "type",
        "outcome",
        "reason",
        "peer",
        "host",
        "port",
        "count",
        "model",
        "version",
        "provider",
        "seconds",
        "rate",
        "data_dir",
        "offset",
        "batch",
        "destination",
        "error",
        "code",
        "url",
        "refused",
    }
)
_MAX_STR = 200
Scalar = str | int | float | bool | None


class EventLogger:
    """A thin logger whose only input is an event name and allowlisted scalar keys."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def debug(self, event: str, **keys: Scalar) -> None:
        self._emit(logging.DEBUG, event, keys)

    def info(self, event: str, **keys: Scalar) -> None:
        self._emit(logging.INFO, event, keys)

    def warning(self, event: str, **keys: Scalar) -> None:
        self._emit(logging.WARNING, event, keys)

    def error(self, event: str, **keys: Scalar) -> None:
        self._emit(logging.ERROR, event, keys)

    def _emit(self, level: int, event: str, keys: dict[str, Scalar]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        self._logger.log(level, "%s", render(event, keys))


def render(event: str, keys: dict[str, Scalar]) -> str:
    """The JSON line for one event, after the allowlist and truncation."""
    out: dict[str, Scalar] = {"event": event}
    dropped = 0
    for key, value in keys.items():
        if key not in ALLOWED_KEYS or not isinstance(value, str | int | float | bool | None):
            dropped += 1
            continue
        out[key] = value[:_MAX_STR] if isinstance(value, str) else value
    if dropped:
        out["dropped_keys"] = dropped
    return json.dumps(out, separators=(",", ":"))


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f'{{"ts":"{ts}Z","level":"{record.levelname.lower()}",' + record.getMessage()[1:]


def configure(level: str = "INFO") -> None:
    """Route wardgate's events to stderr as JSON lines; silence libraries' free-text logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLineFormatter())
    root = logging.getLogger("wardgate")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "kafka", "hl7apy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(component: str) -> EventLogger:
    return EventLogger(f"wardgate.{component}")
