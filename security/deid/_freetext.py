"""Free-text de-identification, fully offline: patterns, dictionaries and context rules.

    FreeTextScrubber(replacement="tag" | "surrogate", key=None)
        .find(text)                       -> list[Span]   (start, end, category, rule)
        .scrub(text, date_offset_days=0)  -> Scrubbed(text, spans)

Three detectors feed one list of spans, merged where they overlap:

* patterns (``_patterns.RULES``): e-mail, URL, IP, SSN, phone, dates, ages over 89,
  labelled and shaped ids, ZIP codes, street addresses, facility and county names;
* context rules for names: titles ("Dr.", "Mrs."), relatives ("daughter", "wife"),
  verbs ("spoke with", "seen by"), labels ("Name:") and credentials (", MD");
* dictionaries (``_lexicon``): first names, surnames, cities, hospitals. A name that is
  also an English word ("Rose", "Hunter") counts only beside another name or in context.

Each span is replaced by a ``[CATEGORY]`` tag, or by a typed surrogate chosen with a
keyed HMAC (stable for one key, never derived from anything but the key and the value).
Spans carry a category and a rule, never the text they cover. The engine may over-scrub
(a tag where nothing identifying was); it is tuned so that it rarely under-scrubs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from security.deid._lexicon import Lexicon, lexicon
from security.deid._patterns import RULES, STATE, STATE_CODES

Replacement = Literal["tag", "surrogate"]
CATEGORIES = (
    "EMAIL", "URL", "SSN", "PHONE", "IP", "DATE", "ID", "AGE", "ADDRESS", "HOSPITAL", "NAME",
    "ZIP", "LOCATION",
)  # fmt: skip
_PRIORITY = {c: i for i, c in enumerate(CATEGORIES)}  # lower wins when spans overlap


@dataclass(frozen=True, slots=True)
class Span:
    """One identifier found in a text: where, what kind, by which rule. Never its value."""

    start: int
    end: int
    category: str
    rule: str


@dataclass(frozen=True, slots=True)
class Scrubbed:
    text: str
    spans: tuple[Span, ...]


@dataclass(slots=True)
class _Tok:
    start: int
    end: int
    raw: str
    low: str
    cap: bool  # capitalised (Title, an initial, or upper case in an all-caps text)


_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019]*(?:-[A-Za-z][A-Za-z'\u2019]*)*\.?")
_TITLES = re.compile(
    r"(?i:\b(?:dr|drs|doctor|mr|mrs|ms|miss|mx|prof|professor|rev|reverend|sr|sister|"
    r"nurse|fr|father|attending|surgeon)\b)\.?\s+"
)
_RELATIVES = re.compile(
    r"(?i:\b(?:wife|husband|spouse|partner|daughter|son|mother|father|mom|mum|dad|brother|"
    r"sister|sibling|grand(?:daughter|son|mother|father|child)|niece|nephew|aunt|uncle|"
    r"cousin|friend|neighbou?r|caregiver|carer|guardian|fianc[eé]e?|girlfriend|boyfriend|"
    r"roommate|step(?:daughter|son|mother|father)|(?:health\s*care\s+)?proxy|POA|"
    r"emergency\s+contact|next\s+of\s+kin|NOK)\b)(?:'s)?\s*[,:(-]?\s*"
    r"(?:(?:named|is|was|called)\s+)?"
)
_VERBS = re.compile(
    r"(?i:\b(?:seen|evaluated|examined|accompanied|visited|brought\s+in|referred|signed|"
    r"dictated|reviewed|transcribed|cosigned)\s+by|discussed\s+with|spoke\s+(?:with|to)|"
    r"talked\s+(?:with|to)|called|paged|per|cc|notified|informed|PCP|provider|patient|pt|"
    r"resident|intern|fellow|attending|pharmacist|therapist|(?:full\s+|patient\s+|pt\s+)?"
    r"name(?:\s+is)?)\b\s*[:,-]?\s*"
)
_CREDENTIAL = re.compile(
    r",?\s+(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PhD|DDS|LPN|CNA|APRN|FNP|PharmD|MBBS|"
    r"LCSW|MSW|RD|PT|OT|CRNA)\b"
)
_CITY_CUE = re.compile(
    r"(?i:\b(?:lives|lived|living|resides|resided|moved|relocated|born|grew\s+up|"
    r"visiting|travell?ed)\s+(?:in|to|from|at|near)?\s*|\b(?:in|from|near|to|at)\s+)$"
)
_STATE_AFTER = re.compile(rf",?\s+{STATE}\b")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOP = _words(
    "the a an and or at in on to of for with by from is was are were be been has had have "
    "he she they his her their him them it its this that who which what when where here "
    "there today yesterday tomorrow also not no yes would can could might should "
    "present bedside home states stated reports reported says said denies denied notes "
    "patient pt pts family all both each other same none some any per via re www http https"
)
_EPONYM_NOUN = _words(
    "disease syndrome sign score scale palsy criteria fracture maneuver manoeuvre test "
    "position catheter tube drain classification grade phenomenon reflex law stage "
    "procedure operation repair shunt node nodes lymphoma sarcoma anemia anaemia stain"
)
_NAME_GAP = re.compile(r"[ \t]+|,[ \t]*")
_SURROGATE_FIRST = ("Alex", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery")
_SURROGATE_LAST = ("Rivera", "Nguyen", "Patel", "Okafor", "Larsen", "Moreau", "Tanaka", "Silva")
_SURROGATE_CITY = ("Springfield", "Riverton", "Fairview", "Greenville", "Lakeside")


def _tokens(text: str, caseless: bool, lex: Lexicon) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _WORD.finditer(text):
        raw = m.group()
        word = raw.rstrip(".")
        end = m.start() + len(word) + (1 if raw.endswith(".") and len(word) == 1 else 0)
        low = word.lower()
        if low.endswith(("'s", "\u2019s")):
            low = low[:-2]
        if word[0].isupper():
            upper = word.isupper()
            cap = (
                (not upper)
                or len(word) == 1
                or caseless
                or lex.is_name(low)
                or (len(low) >= 5 and not lex.is_word(low))
            )
        else:
            cap = False
        out.append(_Tok(m.start(), end, word, low, cap))
    return out


class FreeTextScrubber:
    """Finds and replaces identifiers in free text; safe to share between threads."""

    def __init__(self, replacement: Replacement = "tag", key: bytes | None = None) -> None:
        if replacement not in ("tag", "surrogate"):
            raise ValueError("replacement must be 'tag' or 'surrogate'")
        if replacement == "surrogate" and (key is None or len(key) < 16):
            raise ValueError("surrogates need a key of at least 16 bytes")
        self.replacement: Replacement = replacement
        self._key = key or b""
        self._lex = lexicon()

    # -- detection -------------------------------------------------------------------

    def find(self, text: str) -> list[Span]:
        """Every identifier found in ``text``, merged, in order."""
        spans: list[Span] = []
        for row in RULES:
            for m in row.regex.finditer(text):
                start, end = m.span(row.group)
                if start < 0:
                    continue
                if row.category in ("URL", "EMAIL"):
                    while end > start and text[end - 1] in ".,;:!?)]'\"":
                        end -= 1
                if end <= start or (row.check and not row.check(text[start:end])):
                    continue
                if row.before and not row.before.search(text, max(0, start - 40), start):
                    continue
                spans.append(Span(start, end, row.category, row.rule))
        letters = [c for c in text if c.isalpha()]
        caseless = bool(letters) and sum(c.isupper() for c in letters) > 0.8 * len(letters)
        toks = _tokens(text, caseless, self._lex)
        spans += self._hospitals(toks, spans)
        known = self._lex.is_common if caseless else self._lex.is_word
        spans += self._context_names(text, toks, caseless, known)
        spans += self._dictionary_names(text, toks, caseless, known)
        spans += self._cities(text, toks)
        return _merge(text, spans)

    def _take_name(
        self, toks: list[_Tok], i: int, strict: bool, caseless: bool, known: Callable[[str], bool]
    ) -> tuple[int, int] | None:
        """Tokens from ``i`` that read as a name: (first index, end index) or None."""
        if i >= len(toks) or not toks[i].cap or toks[i].low in _STOP:
            return None
        lex, first = self._lex, toks[i]
        if strict and known(first.low) and not (lex.is_name(first.low) and not caseless):
            after = toks[i + 1].low if i + 1 < len(toks) else ""
            if not (first.low in lex.first_names and (not after or after in _STOP)):
                return None  # in capitals, "WIFE GRACE AT BEDSIDE" but not "SON WILL CALL"
            return i, i + 1
        j = i + 1
        while j < len(toks) and j - i < 4:
            tok, prev = toks[j], toks[j - 1]
            gap = tok.start - prev.end
            if gap > 2 or not tok.cap or tok.low in _STOP:
                break
            if not (lex.is_name(tok.low) or not known(tok.low) or len(tok.raw) == 1):
                break
            j += 1
        return i, j

    def _context_names(
        self, text: str, toks: list[_Tok], caseless: bool, known: Callable[[str], bool]
    ) -> list[Span]:
        out: list[Span] = []
        starts = {t.start: n for n, t in enumerate(toks)}
        for regex, rule, strict in (
            (_TITLES, "context:title", False),
            (_RELATIVES, "context:relative", True),
            (_VERBS, "context:verb", True),
        ):
            for m in regex.finditer(text):
                i = starts.get(m.end())
                got = self._take_name(toks, i, strict, caseless, known) if i is not None else None
                if got:
                    out.append(Span(toks[got[0]].start, toks[got[1] - 1].end, "NAME", rule))
        for m in _CREDENTIAL.finditer(text):
            j = next((n for n in range(len(toks) - 1, -1, -1) if toks[n].end <= m.start()), None)
            if j is None or m.start() - toks[j].end > 1 or not toks[j].cap:
                continue
            i = j
            while i > 0 and j - i < 3 and toks[i - 1].cap and toks[i].start - toks[i - 1].end <= 2:
                i -= 1
            out.append(Span(toks[i].start, toks[j].end, "NAME", "context:credential"))
        return out

    def _dictionary_names(
        self, text: str, toks: list[_Tok], caseless: bool, known: Callable[[str], bool]
    ) -> list[Span]:
        lex = self._lex
        hit = [False] * len(toks)
        rule = [""] * len(toks)
        for n, tok in enumerate(toks):
            if not tok.cap or len(tok.raw) == 1:
                continue
            parts = tok.low.split("-")
            named = all(lex.is_name(p) for p in parts)
            eponym = n + 1 < len(toks) and toks[n + 1].low in _EPONYM_NOUN
            if named and not eponym and not any(lex.is_common(p) for p in parts):
                hit[n] = True
                rule[n] = "dict:first-name" if parts[0] in lex.first_names else "dict:surname"
        for n in range(len(toks) - 1):  # "Grace Hunter", "HUNTER, GRACE": both words too
            a, b = toks[n], toks[n + 1]
            if not (a.cap and b.cap) or len(a.raw) < 3 or len(b.raw) < 3:
                continue
            if {a.low, b.low} & _STOP or a.low in lex.clinical or b.low in lex.clinical:
                continue
            if n + 2 < len(toks) and toks[n + 2].low in _EPONYM_NOUN:
                continue  # "Jackson-Pratt drain", "Rose Bengal stain"
            gap = text[a.end : b.start]
            pair = (gap == " " and a.low in lex.first_names and b.low in lex.surnames) or (
                gap == ", " and a.low in lex.surnames and b.low in lex.first_names
            )
            unknown = [
                len(t.low) >= 4
                and not known(t.low)
                and not lex.is_name(t.low)
                and t.low not in lex.proper
                for t in (a, b)
            ]
            names = [lex.is_name(t.low) and not (caseless and known(t.low)) for t in (a, b)]
            names[1] = names[1] or (gap == ", " and b.low in lex.first_names)  # "VORUF, IRIS"
            names[0] = names[0] or (gap == " " and a.low in lex.first_names)  # "JADE SELIBEZ"
            comma_ok = gap == " " or (gap == ", " and a.raw.isupper() and b.raw.isupper())
            shaped = (  # "Kisafup White", "QUORVATH, ZEB": a word in no dictionary, beside a name
                comma_ok
                and any(unknown)
                and all(u or m for u, m in zip(unknown, names, strict=True))
            )
            if caseless and pair and gap == " " and known(a.low) and known(b.low) and not hit[n]:
                pair = False  # "MAY LAST": in capitals two common words are just words
            if pair or shaped:
                for k in (n, n + 1):
                    if not hit[k]:
                        hit[k], rule[k] = True, "dict:name-pair" if pair else "shape:name-pair"
        changed = True
        while changed:  # grow names over unknown capitalised neighbours: "John Quorvath"
            changed = False
            for n, tok in enumerate(toks):
                if hit[n] or not tok.cap or tok.low in _STOP:
                    continue
                for m in (n - 1, n + 1):
                    if 0 <= m < len(toks) and hit[m]:
                        left, right = (toks[m], tok) if m < n else (tok, toks[m])
                        gap = text[left.end : right.start]
                        if not _NAME_GAP.fullmatch(gap) or "\n" in gap:
                            continue
                        name = lex.is_name(tok.low) and not (caseless and known(tok.low))
                        if len(tok.raw) == 1 or not known(tok.low) or name:
                            hit[n], rule[n], changed = True, "dict:name-neighbour", True
                            break
        return [Span(t.start, t.end, "NAME", rule[n]) for n, t in enumerate(toks) if hit[n]]

    def _phrase_at(
        self, toks: list[_Tok], n: int, table: dict[str, tuple[tuple[str, ...], ...]]
    ) -> int:
        """Tokens matched at ``n`` by the longest phrase of ``table`` (0 if none)."""
        for phrase in table.get(toks[n].low, ()):
            k = len(phrase)
            if (
                n + k <= len(toks)
                and all(toks[n + x].low == phrase[x] and toks[n + x].cap for x in range(k))
                and all(toks[n + x + 1].start - toks[n + x].end <= 2 for x in range(k - 1))
            ):
                return k
        return 0

    def _cities(self, text: str, toks: list[_Tok]) -> list[Span]:
        out: list[Span] = []
        lex = self._lex
        for n, tok in enumerate(toks):
            if not tok.cap:
                continue
            k = self._phrase_at(toks, n, lex.cities)
            if not k:
                continue
            words = [t.low for t in toks[n : n + k]]
            ambiguous = (
                all(lex.is_common(w) for w in words)
                or (k == 1 and tok.raw.upper() in STATE_CODES)
                or (n + k < len(toks) and toks[n + k].low in _EPONYM_NOUN)
            )
            end = toks[n + k - 1].end
            cued = bool(_CITY_CUE.search(text[max(0, tok.start - 30) : tok.start]))
            if not ambiguous or cued or _STATE_AFTER.match(text, end):
                out.append(Span(tok.start, end, "LOCATION", "dict:city"))
        return out

    def _hospitals(self, toks: list[_Tok], found: list[Span]) -> list[Span]:
        out: list[Span] = []
        lex = self._lex
        for n, tok in enumerate(toks):
            if not tok.cap:
                continue
            k = self._phrase_at(toks, n, lex.hospitals)
            if k and (k > 1 or not lex.is_common(tok.low)):
                out.append(Span(tok.start, toks[n + k - 1].end, "HOSPITAL", "dict:hospital"))
        # the facility pattern may start at a capitalised verb ("TRANSFERRED FROM MERCY ..."):
        for span in [s for s in found if s.rule == "pattern:facility-name"]:
            inside = [t for t in toks if span.start <= t.start < span.end]
            lead = 0
            while lead < len(inside) - 1 and (
                inside[lead].low in _STOP
                or inside[lead].low in ("transferred", "admitted", "discharged", "sent")
            ):
                lead += 1
            if lead:
                found.remove(span)
                found.append(Span(inside[lead].start, span.end, span.category, span.rule))
        return out

    # -- replacement -----------------------------------------------------------------

    def scrub(self, text: str, date_offset_days: int = 0) -> Scrubbed:
        """``text`` with every span replaced; surrogate dates move by ``date_offset_days``."""
        spans = self.find(text)
        parts: list[str] = []
        last = 0
        for span in spans:
            parts.append(text[last : span.start])
            parts.append(self._replacement(text[span.start : span.end], span, date_offset_days))
            last = span.end
        parts.append(text[last:])
        return Scrubbed("".join(parts), tuple(spans))

    def _replacement(self, value: str, span: Span, offset: int) -> str:
        if self.replacement == "tag":
            return f"[{span.category}]"
        mac = hmac.new(self._key, f"{span.category}\x00{value}".encode(), hashlib.sha256)
        n = int.from_bytes(mac.digest()[:8], "big")
        cat = span.category
        if cat == "NAME":
            out = _SURROGATE_LAST[n % len(_SURROGATE_LAST)]
            if len(value.split()) > 1:
                out = f"{_SURROGATE_FIRST[(n >> 8) % len(_SURROGATE_FIRST)]} {out}"
            return out.upper() if value.isupper() else out
        if cat == "DATE":
            return _shift_text_date(value, offset) or "[DATE]"
        return {
            "PHONE": f"555-01{n % 100:02d}",
            "EMAIL": f"person{n % 10000}@example.org",
            "SSN": f"000-00-{n % 10000:04d}",
            "ID": f"ID{n % 10**8:08d}",
            "URL": "https://example.org/",
            "IP": f"192.0.2.{n % 254 + 1}",
            "ZIP": "00000",
            "ADDRESS": f"{n % 900 + 100} Main Street",
            "LOCATION": _SURROGATE_CITY[n % len(_SURROGATE_CITY)],
            "HOSPITAL": "General Hospital",
            "AGE": "90+",
        }.get(cat, f"[{cat}]")


_ISO = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_US = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


def _shift_text_date(value: str, offset: int) -> str | None:
    """An ISO or US ``m/d/yyyy`` date moved by ``offset`` days, same style; else None."""
    iso, us = _ISO.match(value), _US.match(value)
    try:
        if iso:
            moved = date(int(iso[1]), int(iso[2]), int(iso[3])) + timedelta(days=offset)
            return moved.isoformat()
        if us:
            moved = date(int(us[3]), int(us[1]), int(us[2])) + timedelta(days=offset)
            return f"{moved.month}/{moved.day}/{moved.year}"
    except (ValueError, OverflowError):
        return None
    return None


def _merge(text: str, spans: list[Span]) -> list[Span]:
    """Overlapping spans become one (the higher-priority category names it); a name
    written in parts ("Smith, John", "J. Smith") becomes one span."""
    spans.sort(key=lambda s: (s.start, -s.end))
    out: list[Span] = []
    for span in spans:
        if out:
            prev = out[-1]
            joined_name = (
                prev.category == span.category == "NAME"
                and _NAME_GAP.fullmatch(text[prev.end : span.start]) is not None
                and "\n" not in text[prev.end : span.start]
            )
            if span.start < prev.end or joined_name:
                best = prev if _PRIORITY[prev.category] <= _PRIORITY[span.category] else span
                out[-1] = Span(prev.start, max(prev.end, span.end), best.category, best.rule)
                continue
        out.append(span)
    return out
