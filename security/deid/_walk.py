"""One resource walked through its compiled rules: what survives, and the report of why.

``Walk`` holds the state of one ``deidentify`` call (the reference map, the patient's
date offset, the report counts); ``apply`` returns what of a value its rule keeps, or
None. Nothing removed is ever copied into the report: entries name paths and rules.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal

from schemas import DeidReportEntry
from security.deid._dates import oldest_possible_age, shift_date
from security.deid._freetext import FreeTextScrubber
from security.deid._rules import (
    CATEGORY_OF_RULE,
    REMOVAL_RULES,
    BirthDate,
    Date,
    Extensions,
    FreeText,
    Obj,
    PostalCode,
    Prim,
    Ref,
    Rule,
)

Action = Literal["removed", "pseudonymized", "shifted", "generalized", "scrubbed", "kept"]
MAX_AGE = 89
_TAG = re.compile(r"<[^>]*>")
_XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">{}</div>'
_US_ZIP = re.compile(r"(\d{5})(?:-?\d{4})?")
# A birth date replaced by the age group "90 or older" (Safe Harbor's single category):
# the primitive's value is absent for privacy (data-absent-reason ``masked``) and the
# group is a Range with only a low bound, in years. (Canonical URLs are names, http like
# HL7's own.)
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
AGE_GROUP_URL = "http://wardgate.dev/fhir/StructureDefinition/age-group"
_AGED_90_OR_OLDER = object()


def _masked() -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}


def _age_group() -> dict[str, Any]:
    years = {"value": MAX_AGE + 1, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
    return {"url": AGE_GROUP_URL, "valueRange": {"low": years}}


class Walk:
    """State of one ``deidentify`` call: the reference map, the offset, the report."""

    def __init__(
        self,
        refs: Mapping[str, str],
        offset: int,
        today: date,
        scrubber: FreeTextScrubber | None,
        known: frozenset[str],
    ) -> None:
        self.refs = refs
        self.offset = offset
        self.today = today
        self.scrubber = scrubber
        self.known = known
        self.report: dict[tuple[str, Action, str, str | None], int] = {}  # ordered counts

    def note(self, path: str, action: Action, rule: str, category: str | None = None) -> None:
        key = (path, action, rule, category or CATEGORY_OF_RULE.get(rule))
        self.report[key] = self.report.get(key, 0) + 1

    def entries(self) -> list[DeidReportEntry]:
        return [
            DeidReportEntry(path=p, action=a, rule=r, category=c, count=n)
            for (p, a, r, c), n in self.report.items()
        ]

    def removed(self, path: str, key: str) -> None:
        if key in self.known:
            self.note(
                f"{path}.{key}", "removed", REMOVAL_RULES.get(key, "fail-closed:not-allowlisted")
            )
        else:
            self.note(f"{path}.*", "removed", "fail-closed:unknown-element")

    def apply(self, value: Any, rule: Rule, path: str) -> Any:
        """``value`` kept under ``rule``, or None when nothing of it may be kept."""
        if isinstance(rule, Extensions):
            return self._extensions(value, rule, path)
        if isinstance(value, list):
            if isinstance(rule, BirthDate):
                self.note(path, "removed", "fail-closed:wrong-type")
                return None
            kept = [k for k in (self.apply(v, rule, path) for v in value) if k is not None]
            return kept or None
        if isinstance(rule, Obj):
            return self.object(value, rule, path)
        if isinstance(rule, FreeText):
            return self._free_text(value, rule, path)
        if isinstance(rule, Prim):
            return self._primitive(value, rule, path)
        if isinstance(rule, Ref):
            return self._reference(value, path)
        if isinstance(rule, PostalCode):
            return self._postal_code(value, rule, path)
        if isinstance(rule, BirthDate):
            return self._birth_date(value, rule, path)
        return self._date(value, rule, path)

    def object(self, value: Any, rule: Obj, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.note(path, "removed", "fail-closed:wrong-type")
            return None
        if rule.text_only and not _is_plain_text(value):
            self.note(path, "removed", "fail-closed:attachment-type")
            return None
        out: dict[str, Any] = {}
        aged = False
        for key, child in value.items():
            sub = rule.children.get(key) if isinstance(key, str) else None
            if sub is None:
                self.removed(path, str(key))
                continue
            kept = self.apply(child, sub, f"{path}.{key}")
            if kept is _AGED_90_OR_OLDER:
                out[f"_{key}"] = _masked()
                aged = True
            elif kept is not None:
                out[key] = kept
        if aged:
            out["extension"] = [*out.get("extension", []), _age_group()]
        return out or None

    def _extensions(self, value: Any, rule: Extensions, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.note(path, "removed", "fail-closed:wrong-type")
            return None
        out: list[Any] = []
        for item in value:
            url = item.get("url") if isinstance(item, dict) else None
            obj = rule.by_url.get(url) if isinstance(url, str) else None
            if obj is None or not isinstance(item, dict):
                self.note(path, "removed", "fail-closed:extension")  # the URL could be a value
                continue
            kept = self.object({k: v for k, v in item.items() if k != "url"}, obj, path)
            if kept is not None:  # an extension needs a value or extensions (ext-1)
                out.append({"url": url, **kept})
        return out or None

    def _primitive(self, value: Any, rule: Prim, path: str) -> Any:
        if rule.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, rule.kind)
        if not ok:
            self.note(path, "removed", "fail-closed:wrong-type")
            return None
        if rule.values and value not in rule.values:
            self.note(path, "removed", "fail-closed:value-set")
            return None
        return value

    def _free_text(self, value: Any, rule: FreeText, path: str) -> str | None:
        """``value`` scrubbed by the free-text engine; removed if it cannot be read."""
        text = _readable(value, rule.form) if self.scrubber is not None else None
        if text is None or self.scrubber is None:
            self.note(path, "removed", "fail-closed:unreadable-text")
            return None
        scrubbed = self.scrubber.scrub(text, self.offset)
        for span in scrubbed.spans:
            self.note(path, "scrubbed", f"freetext:{span.rule}", span.category.lower())
        if not scrubbed.spans:
            self.note(path, "kept", "freetext:nothing-found", "free-text")
        out = scrubbed.text
        if rule.form == "xhtml":
            return _XHTML.format(html.escape(out, quote=False))
        if rule.form == "base64":
            return base64.b64encode(out.encode()).decode()
        return out or None

    def _date(self, value: Any, rule: Date | BirthDate, path: str) -> str | None:
        offset = self.offset if rule.shift else 0
        shifted = shift_date(value, offset) if isinstance(value, str) else None
        if shifted is None:
            self.note(path, "removed", "fail-closed:unparseable-date")
            return None
        if rule.shift:
            self.note(path, "shifted", "dateshift:per-patient")
        else:
            self.note(path, "kept", "limited-data-set:dates")
        return shifted

    def _birth_date(self, value: Any, rule: BirthDate, path: str) -> Any:
        age = oldest_possible_age(value, self.today) if isinstance(value, str) else None
        if rule.aggregate and age is not None and age > MAX_AGE:
            self.note(path, "generalized", "safe-harbor:age-over-89")
            return _AGED_90_OR_OLDER
        return self._date(value, rule, path)

    def _postal_code(self, value: Any, rule: PostalCode, path: str) -> str | None:
        match = _US_ZIP.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            self.note(path, "removed", "fail-closed:not-a-us-zip")
            return None
        zip5 = match[1]
        if rule.digits == 5:
            self.note(path, "kept" if value == zip5 else "generalized", "limited-data-set:zip5")
            return zip5
        if zip5[:3] in rule.restricted:
            self.note(path, "generalized", "safe-harbor:zip3-restricted")
            return "000"
        self.note(path, "generalized", "safe-harbor:zip3")
        return zip5[:3]

    def _reference(self, value: Any, path: str) -> dict[str, str] | None:
        if not isinstance(value, dict):
            self.note(path, "removed", "fail-closed:wrong-type")
            return None
        for key in value:
            if key != "reference":
                self.removed(path, str(key))
        target = value.get("reference")
        new = self.refs.get(target) if isinstance(target, str) else None
        if new is None:
            self.note(f"{path}.reference", "removed", "fail-closed:unresolved-reference")
            return None
        self.note(f"{path}.reference", "pseudonymized", "pseudonym:reference")
        return {"reference": new}


def _is_plain_text(value: Any) -> bool:
    content_type = value.get("contentType") if isinstance(value, dict) else None
    return isinstance(content_type, str) and content_type.split(";")[0].strip() == "text/plain"


def _readable(value: Any, form: str) -> str | None:
    """The text inside ``value`` as the free-text engine should see it, or None."""
    if not isinstance(value, str):
        return None
    if form == "xhtml":
        return html.unescape(_TAG.sub(" ", value)).strip()
    if form == "base64":
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value
