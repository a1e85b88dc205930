"""The free-text engine's dictionaries, loaded once from ``security/deid/data`` (offline).

    lexicon() -> Lexicon     first names, surnames, common words, cities, hospitals, streets

Where each list comes from is written at the top of its file and in
``security/deid/data/README.md``. Everything is lower-cased; multi-word entries (cities,
hospitals) are kept as tuples of tokens for a longest-match walk.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

_DOMINANT = 1500  # the most frequent first names cover about 90% of people
_TOKEN = re.compile(r"[a-z0-9]+(?:['\u2019.-][a-z0-9]+)*")


def tokens(text: str) -> tuple[str, ...]:
    """Lower-case word tokens, the unit every dictionary is keyed by."""
    return tuple(_TOKEN.findall(text.lower()))


def _lines(name: str) -> Iterable[str]:
    raw = resources.files("security.deid").joinpath("data", name).read_bytes()
    text = gzip.decompress(raw).decode() if name.endswith(".gz") else raw.decode()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def _phrases(name: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """First token -> every phrase starting with it, longest first."""
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for line in _lines(name):
        toks = tokens(line)
        if toks:
            by_first.setdefault(toks[0], []).append(toks)
    return {k: tuple(sorted(set(v), key=len, reverse=True)) for k, v in by_first.items()}


@dataclass(frozen=True)
class Lexicon:
    first_names: frozenset[str]
    surnames: frozenset[str]
    dominant: frozenset[str]  # frequent first names that are names before they are words
    common: frozenset[str]
    proper: frozenset[str]  # capitalised dictionary words that are not people's names
    clinical: frozenset[str]
    streets: frozenset[str]
    cities: dict[str, tuple[tuple[str, ...], ...]]
    hospitals: dict[str, tuple[tuple[str, ...], ...]]

    def is_common(self, word: str) -> bool:
        """An English word (or a regular inflection of one), a clinical term, or very short."""
        if "-" in word:
            return all(self.is_common(p) for p in word.split("-") if p)
        if len(word) <= 2 or word in self.clinical:
            return True
        if word in self.dominant:
            return False
        if word in self.common:
            return True
        for suffix, repl in (
            ("s", ""), ("es", ""), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"),
            ("ly", ""), ("ies", "y"), ("ied", "y"),
        ):  # fmt: skip
            if word.endswith(suffix) and word[: -len(suffix)] + repl in self.common:
                return True
        return False

    def is_word(self, word: str) -> bool:
        """An English word exactly as listed (no inflections), a clinical term, or very short."""
        if "-" in word:
            return all(self.is_word(p) for p in word.split("-") if p)
        return (
            len(word) <= 2
            or word in self.clinical
            or (word not in self.dominant and word in self.common)
        )

    def is_name(self, word: str) -> bool:
        return word in self.first_names or word in self.surnames


@cache
def lexicon() -> Lexicon:
    """The dictionaries (about 0.3 s to load the first time, then shared by every scrubber)."""
    clinical = frozenset(w for line in _lines("clinical_terms.txt") for w in line.split())
    worded = frozenset(w for line in _lines("common_first_names.txt") for w in line.split())
    first = [w.lower() for w in _lines("first_names.txt")]  # most frequent first
    return Lexicon(
        first_names=frozenset(first),
        dominant=frozenset(w for w in first[:_DOMINANT] if w not in worded),
        surnames=frozenset(w.lower() for w in _lines("surnames.txt")),
        common=frozenset(_lines("common_words.txt.gz")),
        proper=frozenset(_lines("proper_words.txt.gz")),
        clinical=clinical,
        streets=frozenset(w.lower() for w in _lines("streets.txt")),
        cities=_phrases("cities.txt"),
        hospitals=_phrases("hospitals.txt"),
    )
