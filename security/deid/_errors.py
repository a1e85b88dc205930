"""Errors raised by de-identification.

    ValueError
    ├── DeidentificationError   the bundle cannot be de-identified safely; nothing is emitted
    └── ProfileError            a de-identification profile is unknown or invalid

Messages say what was wrong and what to do; they never carry a value from the bundle.
A ``ProfileError`` names the profile and the path of the bad element within it.
"""

from __future__ import annotations


class DeidentificationError(ValueError):
    """The input cannot be de-identified without risking PHI: fail closed, emit nothing."""


class ProfileError(ValueError):
    """A profile cannot be loaded: unknown name, unreadable file, or an invalid rule."""
