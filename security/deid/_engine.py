"""The FHIR R4 Bundle de-identification engine: one pass, allowlist-driven, fail closed.

Order matters: find the patient and derive the pseudonym first (no pseudonym, no output),
then map every entry to its new id so references can be rewritten, then walk each
resource through its allowlist. The input is never mutated and no removed value is
copied into the report or into an error.

Free text (notes, ``valueString``, conclusions, narratives, text attachments) is removed
by default (``free_text="remove"``); with ``"tag"`` or ``"surrogate"`` it is kept after
the free-text engine (``_freetext``) has replaced what it finds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from schemas import DeidentifiedRecord, DeidReportEntry
from security.deid._dates import oldest_possible_age, shift_date
from security.deid._errors import DeidentificationError
from security.deid._freetext import FreeTextScrubber
from security.deid._keyed import date_offset, pseudonym, resource_id
from security.deid._rules import (
    CATEGORY_OF_RULE,
    KNOWN_ELEMENTS,
    KNOWN_RESOURCE_TYPES,
    REMOVAL_RULES,
    RESOURCES,
    TEXT_ATTACHMENT,
    BirthDate,
    FreeText,
    Obj,
    Prim,
    Ref,
    Rule,
    with_free_text,
)

_MAX_AGE = 89
_MR = "MR"
_Action = Literal["removed", "pseudonymized", "shifted", "generalized", "scrubbed", "kept"]
FreeTextMode = Literal["remove", "tag", "surrogate"]
_TAG = re.compile(r"<[^>]*>")
_XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">{}</div>'


@dataclass(frozen=True)
class DeidResult:
    """A de-identified Bundle, its report, and what the vault needs to re-identify it.

    ``identifiers`` is PHI: hand it to the vault and nowhere else.
    """

    subject: str
    bundle: dict[str, Any]
    report: list[DeidReportEntry]
    identifiers: list[dict[str, str]]

    def to_record(self, message_id: int, message_type: str) -> DeidentifiedRecord:
        """The ``DeidentifiedRecord`` contract for the ``deidentified`` topic (no identifiers)."""
        return DeidentifiedRecord(
            message_id=message_id,
            message_type=message_type,
            subject=self.subject,
            bundle=self.bundle,
            report=self.report,
        )


def _is_mr(identifier: Mapping[str, Any]) -> bool:
    type_ = identifier.get("type")
    codings = type_.get("coding") if isinstance(type_, dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict) and c.get("code") == _MR for c in codings
    )


def _patient_identifiers(patient: Mapping[str, Any]) -> list[dict[str, str]]:
    """The patient's ``{system, value}`` pairs, MR-typed first, duplicates dropped."""
    raw = patient.get("identifier")
    found = [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
    found.sort(key=lambda i: not _is_mr(i))  # stable: MR first, else document order
    pairs: list[dict[str, str]] = []
    for ident in found:
        value, system = ident.get("value"), ident.get("system", "")
        if isinstance(value, str) and value.strip() and isinstance(system, str):
            pair = {"system": system, "value": value}
            if pair not in pairs:
                pairs.append(pair)
    return pairs


class _Pass:
    """State of one ``deidentify`` call: the reference map, the offset, the report."""

    def __init__(
        self,
        refs: Mapping[str, str],
        offset: int,
        today: date,
        scrubber: FreeTextScrubber | None,
    ) -> None:
        self.refs = refs
        self.offset = offset
        self.today = today
        self.scrubber = scrubber
        self.report: dict[tuple[str, _Action, str, str | None], int] = {}  # ordered counts

    def note(self, path: str, action: _Action, rule: str, category: str | None = None) -> None:
        key = (path, action, rule, category or CATEGORY_OF_RULE.get(rule))
        self.report[key] = self.report.get(key, 0) + 1

    def entries(self) -> list[DeidReportEntry]:
        return [
            DeidReportEntry(path=p, action=a, rule=r, category=c, count=n)
            for (p, a, r, c), n in self.report.items()
        ]

    def removed(self, path: str, key: str) -> None:
        if key in KNOWN_ELEMENTS:
            self.note(
                f"{path}.{key}", "removed", REMOVAL_RULES.get(key, "fail-closed:not-allowlisted")
            )
        else:
            self.note(f"{path}.*", "removed", "fail-closed:unknown-element")

    def apply(self, value: Any, rule: Rule, path: str) -> Any:
        """``value`` kept under ``rule``, or None when nothing of it may be kept."""
        if isinstance(value, list):
            kept = [k for k in (self.apply(v, rule, path) for v in value) if k is not None]
            return kept or None
        if isinstance(rule, Obj):
            if rule is TEXT_ATTACHMENT and not _is_plain_text(value):
                self.note(path, "removed", "fail-closed:attachment-type")
                return None
            return self._object(value, rule, path)
        if isinstance(rule, FreeText):
            return self._free_text(value, rule, path)
        if isinstance(rule, Prim):
            return self._primitive(value, rule, path)
        if isinstance(rule, Ref):
            return self._reference(value, path)
        if isinstance(rule, BirthDate):
            return self._birth_date(value, path)
        return self._date(value, path)

    def _object(self, value: Any, rule: Obj, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.note(path, "removed", "fail-closed:wrong-type")
            return None
        out: dict[str, Any] = {}
        for key, child in value.items():
            sub = rule.children.get(key) if isinstance(key, str) else None
            if sub is None:
                self.removed(path, str(key))
                continue
            kept = self.apply(child, sub, f"{path}.{key}")
            if kept is not None:
                out[key] = kept
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

    def _date(self, value: Any, path: str) -> str | None:
        shifted = shift_date(value, self.offset) if isinstance(value, str) else None
        if shifted is None:
            self.note(path, "removed", "fail-closed:unparseable-date")
            return None
        self.note(path, "shifted", "dateshift:per-patient")
        return shifted

    def _birth_date(self, value: Any, path: str) -> str | None:
        age = oldest_possible_age(value, self.today) if isinstance(value, str) else None
        if age is not None and age > _MAX_AGE:
            self.note(path, "generalized", "safe-harbor:age-over-89")
            return None
        return self._date(value, path)

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


class Deidentifier:
    """De-identifies FHIR R4 Bundles for one key set; safe to share between threads.

    ``pseudonym_key`` derives the subject pseudonym and resource ids; ``dateshift_key``
    the per-patient offset in days, uniform over ``shift_range_days`` (inclusive).
    ``free_text`` says what happens to free text: ``remove`` (the default), ``tag``
    (identifiers become ``[NAME]``-style tags) or ``surrogate`` (typed stand-ins chosen
    with a key derived from ``pseudonym_key``; dates move by the patient's offset).
    ``today`` (for the over-89 rule) is injectable for tests.
    """

    def __init__(
        self,
        pseudonym_key: bytes,
        dateshift_key: bytes,
        key_version: str = "v1",
        shift_range_days: tuple[int, int] = (-365, -1),
        *,
        free_text: FreeTextMode = "remove",
        today: Callable[[], date] | None = None,
    ) -> None:
        if len(pseudonym_key) < 16 or len(dateshift_key) < 16:
            raise ValueError("pseudonym and date-shift keys must be at least 16 bytes")
        date_offset(dateshift_key, "", shift_range_days)  # validates the range now
        pseudonym(pseudonym_key, key_version, "", "")  # validates the version now
        self._pkey = pseudonym_key
        self._dkey = dateshift_key
        self._version = key_version
        self._range = shift_range_days
        self._today = today or (lambda: datetime.now(UTC).date())
        if free_text not in ("remove", "tag", "surrogate"):
            raise ValueError("free_text must be 'remove', 'tag' or 'surrogate'")
        self.free_text: FreeTextMode = free_text
        self._resources: Mapping[str, Obj] = RESOURCES
        self._scrubber: FreeTextScrubber | None = None
        if free_text != "remove":
            surrogate_key = hmac.new(pseudonym_key, b"wardgate-surrogate", hashlib.sha256)
            self._resources = with_free_text(RESOURCES)
            self._scrubber = FreeTextScrubber(free_text, surrogate_key.digest())

    def pseudonym(self, system: str, value: str) -> str:
        """The pseudonym this instance gives an identifier (see ``security.deid.pseudonym``)."""
        return pseudonym(self._pkey, self._version, system, value)

    def deidentify(self, bundle: Mapping[str, Any]) -> DeidResult:
        """A new de-identified Bundle; raises ``DeidentificationError`` rather than leak."""
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise DeidentificationError("input is not a FHIR Bundle: expected resourceType Bundle")
        raw_entries = bundle.get("entry", [])
        if not isinstance(raw_entries, list):
            raise DeidentificationError("Bundle.entry must be a list of entries")
        entries = [
            (i, e.get("fullUrl"), e["resource"])
            for i, e in enumerate(raw_entries)
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        patients = [r for _, _, r in entries if r.get("resourceType") == "Patient"]
        if len(patients) > 1:
            raise DeidentificationError(
                "more than one Patient in the Bundle: split it per patient before de-identifying"
            )
        identifiers = _patient_identifiers(patients[0]) if patients else []
        if not identifiers:
            raise DeidentificationError("no patient identifier: cannot pseudonymize")
        subject = self.pseudonym(identifiers[0]["system"], identifiers[0]["value"])

        refs, new_ids = self._reference_map(entries, subject)
        offset = date_offset(self._dkey, subject, self._range)
        run = _Pass(refs, offset, self._today(), self._scrubber)
        for key in bundle:
            if key not in ("resourceType", "type", "entry"):
                run.removed("Bundle", str(key))
        if len(entries) != len(raw_entries):
            run.note("Bundle.entry", "removed", "fail-closed:no-resource")

        out_entries: list[dict[str, Any]] = []
        for index, _, resource in entries:
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str) or rtype not in self._resources:
                shown = rtype if isinstance(rtype, str) and rtype in KNOWN_RESOURCE_TYPES else "*"
                run.note(shown, "removed", "fail-closed:resource-type")
                continue
            rule = self._resources[rtype]
            body = {k: v for k, v in resource.items() if k not in ("resourceType", "id")}
            kept = run.apply(body, rule, rtype) or {}
            new_id = new_ids[index]
            run.note(
                f"{rtype}.id",
                "pseudonymized",
                "pseudonym:subject" if rtype == "Patient" else "pseudonym:resource",
            )
            out_entries.append(
                {
                    "fullUrl": f"{rtype}/{new_id}",
                    "resource": {"resourceType": rtype, "id": new_id, **kept},
                }
            )
        report = run.entries()
        out = {"resourceType": "Bundle", "type": "collection", "entry": out_entries}
        return DeidResult(subject=subject, bundle=out, report=report, identifiers=identifiers)

    def _reference_map(
        self, entries: list[tuple[int, Any, dict[str, Any]]], subject: str
    ) -> tuple[dict[str, str], dict[int, str]]:
        """Original reference forms of each entry -> ``Type/<new id>``; entry index -> new id."""
        refs: dict[str, str] = {}
        new_ids: dict[int, str] = {}
        for index, full_url, resource in entries:
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str) or rtype not in RESOURCES:
                continue
            old_id = resource.get("id")
            forms = [f for f in (full_url,) if isinstance(f, str) and f]
            if isinstance(old_id, str) and old_id:
                forms.append(f"{rtype}/{old_id}")
            if rtype == "Patient":
                new_id = subject
            else:
                # Entries without fullUrl or id are keyed by position within this subject.
                basis = forms[0] if forms else f"{subject}#entry{index}"
                new_id = resource_id(self._pkey, self._version, basis)
            new_ids[index] = new_id
            for form in forms:
                refs[form] = f"{rtype}/{new_id}"
                if "://" in form and f"/{rtype}/" in form:  # absolute URL -> relative form too
                    refs[form[form.rindex(f"{rtype}/") :]] = f"{rtype}/{new_id}"
        return refs, new_ids
