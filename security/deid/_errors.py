"""Errors raised by de-identification.

    DeidentificationError   the bundle cannot be de-identified safely; nothing is emitted

Messages say what was wrong and what to do; they never carry a value from the bundle.
"""

from __future__ import annotations


class DeidentificationError(ValueError):
    """The input cannot be de-identified without risking PHI: fail closed, emit nothing."""
