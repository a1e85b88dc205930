"""The errors the inference stage raises, in one place.

    InferenceError                 base of everything below
    ├── BundleRejected             a model bundle failed verification; ``.reason`` says why
    ├── SandboxError               a sandboxed worker could not score a batch (twice); dead-letter
    │   └── WorkerUnavailable      no worker could even be started: the batch is not at fault
    └── UnknownModel               a caller asked for a model id that is not loaded

Messages name the check that failed, never a feature value or a patient time.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error raised by :mod:`inference`."""


class BundleRejected(InferenceError):
    """A bundle was refused; ``reason`` is a short, stable sentence fit for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SandboxError(InferenceError):
    """The sandbox could not produce outputs for a batch; ``reason`` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownModel(InferenceError, KeyError):
    """No model with this id is loaded (it may have been refused: see ``engine.refused``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class WorkerUnavailable(SandboxError):
    """No worker could be started for the call, so the batch itself is not to blame."""
