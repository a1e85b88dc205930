"""The free-text engine's regular expressions: one row per rule, each naming its category.

A row finds identifiers by their shape (``pattern:*``) or by a label in front of them
(``context:*``); ``group`` says which part of the match is the identifier (a label such
as "MRN:" stays in the text). ``check`` rejects matches the regex alone cannot (too few
digits, a lower-case month). Dictionaries and name context rules live in ``_freetext``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PatternRule:
    category: str
    rule: str
    regex: re.Pattern[str]
    group: int = 0
    check: Callable[[str], bool] | None = None
    before: re.Pattern[str] | None = None  # must match the 40 characters before the span


def _digits(n: int) -> Callable[[str], bool]:
    return lambda s: sum(c.isdigit() for c in s) >= n


def _alnum_id(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    letters = sum(c.isalpha() for c in s)
    return letters >= 1 and (digits >= 5 or (len(s) >= 8 and digits >= 3 and letters >= 2))


def _either_case(*words: str) -> str:
    forms = {f for w in words for f in (w, w.upper())}
    return "(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")"


_MONTH = _either_case(
    "Jan", "January", "Feb", "February", "Mar", "March", "Apr", "April", "May", "Jun",
    "June", "Jul", "July", "Aug", "August", "Sep", "Sept", "September", "Oct", "October",
    "Nov", "November", "Dec", "December",
)  # fmt: skip
_CODES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE "
    "NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI"
)
STATE_CODES = tuple(_CODES.split(" "))
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|"
    "Georgia|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|"
    "Massachusetts|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|"
    "New Hampshire|New Jersey|New Mexico|New York|North Carolina|North Dakota|Ohio|"
    "Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|Tennessee|"
    "Texas|Utah|Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming"
)
STATE = rf"(?:{'|'.join(STATE_CODES)}|(?i:{_STATE_NAMES}))"
_SUFFIX = (
    r"(?i:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|Court|Ct|Way|"
    r"Place|Pl|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Row|"
    r"Alley|Plaza|Loop|Path|Pike|Crescent|Close|Crossing|Heights|Hts)"
)
_UNIT = r"(?:,?\s*(?i:apt|apartment|suite|ste|unit|rm|room|fl|floor|#)\.?\s*#?\s*[A-Za-z0-9-]+)?"
FACILITY = (
    r"(?i:Hospital|Medical\s+Center|Med(?:ical)?\s+Ctr|Health\s+(?:Center|System)|"
    r"Healthcare|Clinic|Infirmary|Nursing\s+(?:Home|Facility)|"
    r"Rehab(?:ilitation)?\s+(?:Center|Hospital|Facility)|Hospice|Care\s+Center|"
    r"Surgery\s+Center|Surgical\s+Center|Sanatorium|Sanitarium|Assisted\s+Living|"
    r"Senior\s+Living|Cancer\s+(?:Center|Institute)|Children'?s\s+Hospital)"
)
_LABEL = (
    r"MRN|MR\s?\#|med(?:ical)?\s+rec(?:ord)?s?|acct|account|encounter|visit|FIN|CSN|HAR|"
    r"policy|member|subscriber|claim|licen[cs]e|lic|DL|passport|serial|S/?N|device|"
    r"implant|pacemaker|VIN|plate|NPI|DEA|UPIN|badge|employee|ID|identifier|case|specimen|"
    r"accession|record|chart|insurance|medicaid|medicare|certificate|beneficiary|"
    r"health\s+plan|IMEI|UDI|MAC"
)
_DATE_CUE = (
    r"on|since|from|until|till|dated|dob|d\.o\.b\.?|born|admitted|discharged|seen|"
    r"surgery|procedure|appointment|appt|follow-?up"
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


RULES: tuple[PatternRule, ...] = (
    PatternRule(
        "EMAIL", "pattern:email", _rx(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
    ),
    PatternRule(
        "URL",
        "pattern:url",
        _rx(r"(?i:\b(?:https?|s?ftp)://[^\s<>\"'|]+|\bwww\.[^\s<>\"'|]+)"),
    ),
    PatternRule(
        "URL",
        "pattern:domain",
        _rx(
            r"\b(?:[A-Za-z0-9-]+\.)+(?i:com|org|net|edu|gov|mil|io|info|biz|us|uk|ca|de|"
            r"health|care|me)\b(?:/[^\s<>\"'|]*)?"
        ),
    ),
    PatternRule(
        "IP",
        "pattern:ipv4",
        _rx(
            r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.]\d)"
        ),
    ),
    PatternRule(
        "IP",
        "pattern:ipv6",
        _rx(
            r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])|"
            r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?(?![\w:])"
        ),
    ),
    PatternRule("ID", "pattern:mac-address", _rx(r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b")),
    PatternRule("SSN", "pattern:ssn", _rx(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")),
    PatternRule("SSN", "pattern:ssn-spaced", _rx(r"(?<![\d ])\d{3} \d{2} \d{4}(?![\d])")),
    PatternRule(
        "SSN",
        "context:ssn",
        _rx(
            r"(?i:\b(?:ssn|ss\#|social\s+security(?:\s+(?:number|no\.?|\#))?)\s*[:#]?\s*)"
            r"(\d{3}[-\s]?\d{2}[-\s]?\d{4})"
        ),
        group=1,
    ),
    PatternRule(
        "PHONE",
        "pattern:phone",
        _rx(
            r"(?<![\w+])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}"
            r"(?:\s*(?i:x|ext\.?|extension)\s*\d{1,6})?(?!\d)"
        ),
    ),
    PatternRule(
        "PHONE",
        "pattern:phone-international",
        _rx(r"(?<!\w)\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}(?!\d)"),
        check=_digits(8),
    ),
    PatternRule(
        "PHONE",
        "context:phone",
        _rx(
            r"(?i:\b(?:phone|ph|tel|telephone|cell|mobile|pager|beeper|fax|"
            r"(?:call(?:ed)?|reach(?:ed)?|contact(?:ed)?)(?:\s+back)?\s+at|number(?:\s+is)?)"
            r"\b\.?\s*[:#]?\s*)(\+?[\d(][\d\s().-]{5,18}\d)"
        ),
        group=1,
        check=_digits(7),
    ),
    PatternRule(
        "DATE",
        "pattern:date-iso",
        _rx(
            r"(?<![\d-])(?:1[89]|20)\d{2}[-/](?:0?[1-9]|1[0-2])[-/](?:0?[1-9]|[12]\d|3[01])"
            r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\d-])"
        ),
    ),
    PatternRule(
        "DATE",
        "pattern:date-numeric",
        _rx(r"(?<![\d/.-])\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})(?![\d/-]|\.\d)"),
    ),
    PatternRule(
        "DATE",
        "pattern:date-hl7",
        _rx(
            r"(?<![\d.])(?:1[89]|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
            r"(?:\d{4}(?:\d{2}(?:\.\d+)?)?)?(?:[+-]\d{4})?(?!\d)"
        ),
    ),
    PatternRule(
        "DATE",
        "pattern:date-month-day",
        _rx(rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+(?:\d{{4}}|'\d{{2}}))?(?!\d)"),
    ),
    PatternRule(
        "DATE",
        "pattern:date-day-month",
        _rx(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b\.?(?:,?\s+\d{{4}})?(?!\d)"),
    ),
    PatternRule(
        "DATE", "pattern:date-month-year", _rx(rf"\b{_MONTH}\.?,?\s+(?:\d{{4}}|'\d{{2}})\b")
    ),
    PatternRule(
        "DATE",
        "context:date-short",
        _rx(
            rf"(?i:\b(?:{_DATE_CUE})\s*:?\s+)"
            r"((?:0?[1-9]|1[0-2])[/-](?:0?[1-9]|[12]\d|3[01]))(?![/\d])"
        ),
        group=1,
    ),
    PatternRule(
        "AGE",
        "pattern:age-over-89",
        _rx(r"(?i:\b(9\d|1[0-4]\d)(?=\s*-?\s*(?:years?|yrs?|y/?o|y\.o\.|yo)(?![a-z])))"),
        group=1,
    ),
    PatternRule(
        "AGE", "context:age-over-89", _rx(r"(?i:\b(?:age|aged)\s*:?\s*(9\d|1[0-4]\d)\b)"), group=1
    ),
    PatternRule(
        "AGE",
        "context:age-decade",
        _rx(r"(?i:\bin\s+(?:his|her|their)\s+(9\d|1[0-4]\d)'?s\b)"),
        group=1,
    ),
    PatternRule(
        "ID",
        "context:labeled-id",
        _rx(
            rf"(?i:\b(?:{_LABEL})\b\.?(?:\s*(?:number|num|no\.?|\#|id))?\s*(?:is\s+|was\s+)?"
            r"[:#=]?\s*)([A-Za-z0-9][A-Za-z0-9_/.-]*\d[A-Za-z0-9_/-]*|\d)"
        ),
        group=1,
        check=lambda s: len(s) >= 4,
    ),
    PatternRule("ID", "pattern:long-number", _rx(r"(?<![\d.,])\d{7,}(?![\d]|[.,]\d)")),
    PatternRule(
        "ID",
        "pattern:alphanumeric-id",
        _rx(r"(?<![\w-])(?=[A-Za-z0-9-]*\d)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?![\w-])"),
        check=_alnum_id,
    ),
    PatternRule("ZIP", "pattern:zip+4", _rx(r"(?<![\d-])\d{5}-\d{4}(?![\d-])")),
    PatternRule(  # found by its digits, then the state is looked for before them (faster)
        "ZIP",
        "context:zip-after-state",
        _rx(r"(?<![\d-])\d{5}(?:-\d{4})?(?![\d-])"),
        before=_rx(rf"\b{STATE}\.?,?\s+$"),
    ),
    PatternRule(
        "ZIP",
        "context:zip-label",
        _rx(r"(?i:\b(?:zip|postal)(?:\s*code)?\s*[:#]?\s*)(\d{5}(?:-\d{4})?)\b"),
        group=1,
    ),
    PatternRule(
        "ADDRESS",
        "pattern:street-address",
        _rx(
            r"\b\d{1,6}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z0-9][A-Za-z0-9'-]*\s+){0,3}"
            rf"[A-Z0-9][A-Za-z0-9'-]*\s+{_SUFFIX}\b\.?{_UNIT}"
        ),
    ),
    PatternRule("ADDRESS", "pattern:po-box", _rx(r"(?i:\bP\.?\s?O\.?\s+Box\s+\d+)")),
    PatternRule(
        "ADDRESS",
        "pattern:apartment",
        _rx(r"(?i:\b(?:apt|apartment|suite)\b\.?\s*#?\s*)\d+[A-Za-z]?\b"),
    ),
    PatternRule(
        "ADDRESS",
        "context:lives-at",
        _rx(
            r"(?i:\b(?:lives|living|resides|residing|staying)\s+(?:at|on)|home\s+address"
            r"(?:\s+is)?:?|\baddress(?:\s+is)?\s*:)\s+([A-Z0-9][^.;\n]{2,80}?)(?=[.;\n]|$)"
        ),
        group=1,
    ),
    PatternRule(
        "HOSPITAL",
        "pattern:facility-name",
        _rx(
            r"\b(?:(?:St|Mt)\.?\s+|Saint\s+|Mount\s+)?(?:[A-Z][A-Za-z'\u2019.&-]*\s+"
            rf"(?:(?:of|and|&|the)\s+)?){{1,4}}{FACILITY}\b"
        ),
    ),
    PatternRule(
        "HOSPITAL",
        "pattern:facility-of",
        _rx(
            r"\b(?i:Hospital|Medical\s+Center|Clinic)\s+of\s+(?:the\s+)?(?:[A-Z][A-Za-z.'-]*\s?){1,4}"
        ),
    ),
    PatternRule(
        "LOCATION", "pattern:county", _rx(r"\b(?:[A-Z][A-Za-z]+\s+){1,2}(?i:County|Parish)\b")
    ),
)
