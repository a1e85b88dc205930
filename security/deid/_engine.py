"""The FHIR R4 de-identification engine: one pass, profile-driven, fail closed.

Order matters: find the patient and derive the pseudonym first (no pseudonym, no output),
then map every entry to its new id so references can be rewritten, then walk each
resource through the allowlist its profile compiled to (``_profile``, ``_walk``). The
input is never mutated and no removed value is copied into the report or into an error.

Free text (notes, ``valueString``, conclusions, narratives, text attachments) is removed
by default (``free_text="remove"``); with ``"tag"`` or ``"surrogate"`` it is kept after
the free-text engine (``_freetext``) has replaced what it finds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from schemas import DeidentifiedRecord, DeidReportEntry
from security.deid._errors import DeidentificationError
from security.deid._freetext import FreeTextScrubber
from security.deid._keyed import check_keys, date_offset, pseudonym, resource_id
from security.deid._profile import DEFAULT_PROFILE, Profile, known_elements, load_profile
from security.deid._rules import KNOWN_RESOURCE_TYPES, Obj
from security.deid._walk import Walk

_MR = "MR"
FreeTextMode = Literal["remove", "tag", "surrogate"]


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


def _as_bundle(document: Any) -> Mapping[str, Any]:
    """The Bundle to walk: ``document`` itself, or a single resource wrapped in one."""
    rtype = document.get("resourceType") if isinstance(document, Mapping) else None
    if not isinstance(rtype, str):
        raise DeidentificationError(
            "input is not a FHIR resource or Bundle: expected an object with resourceType"
        )
    if rtype == "Bundle":
        return document  # type: ignore[no-any-return]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": document}]}


class Deidentifier:
    """De-identifies FHIR R4 resources and Bundles for one key set and profile; safe to
    share between threads.

    ``pseudonym_key`` derives the subject pseudonym and resource ids; ``dateshift_key``
    the per-patient offset in days, uniform over ``shift_range_days`` (inclusive).
    ``free_text`` says what happens to free text: ``remove`` (the default), ``tag``
    (identifiers become ``[NAME]``-style tags) or ``surrogate`` (typed stand-ins chosen
    with a key derived from ``pseudonym_key``; dates move by the patient's offset).
    ``profile`` is a built-in profile name (``safe-harbor``, ``limited-data-set``), a
    path to a YAML profile, or a loaded ``Profile``; it is compiled once, here.
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
        profile: str | Path | Profile = DEFAULT_PROFILE,
        today: Callable[[], date] | None = None,
    ) -> None:
        check_keys(pseudonym_key, dateshift_key, key_version, shift_range_days)
        self._pkey = pseudonym_key
        self._dkey = dateshift_key
        self._version = key_version
        self._range = shift_range_days
        self._today = today or (lambda: datetime.now(UTC).date())
        if free_text not in ("remove", "tag", "surrogate"):
            raise ValueError("free_text must be 'remove', 'tag' or 'surrogate'")
        self.free_text: FreeTextMode = free_text
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self._known = known_elements(self.profile)
        self._resources: Mapping[str, Obj] = self.profile.resources
        self._scrubber: FreeTextScrubber | None = None
        if free_text != "remove":
            surrogate_key = hmac.new(pseudonym_key, b"wardgate-surrogate", hashlib.sha256)
            self._resources = self.profile.scrubbed
            self._scrubber = FreeTextScrubber(free_text, surrogate_key.digest())

    def pseudonym(self, system: str, value: str) -> str:
        """The pseudonym this instance gives an identifier (see ``security.deid.pseudonym``)."""
        return pseudonym(self._pkey, self._version, system, value)

    def deidentify(self, document: Mapping[str, Any]) -> DeidResult:
        """A new de-identified Bundle; raises ``DeidentificationError`` rather than leak.

        ``document`` is a Bundle or a single resource (de-identified as a one-entry
        Bundle, so it must be, or come with, the Patient that gives the pseudonym).
        """
        bundle = _as_bundle(document)
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
        run = Walk(refs, offset, self._today(), self._scrubber, self._known)
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
            kept = run.object(body, rule, rtype) or {}
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
            if not isinstance(rtype, str) or rtype not in self._resources:
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
