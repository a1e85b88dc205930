"""One pass over a dataset and its sequences: every element gets a table action or a rule.

Order for each element: private (odd group) -> group length -> overlay group -> the
patient's own ID and name (top level) -> Table E.1-1 -> the rules for what the table does
not list (``_rules``). Nothing is copied from the input unless one of those keeps it, and
every decision other than a plain keep becomes a report entry (path, action, rule,
category) with no value in it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from schemas import DeidReportEntry
from security.deid.dicom import _rules, _values
from security.deid.dicom._rules import Action
from security.deid.dicom._table import Row, lookup

ReportAction = Literal["removed", "pseudonymized", "shifted", "generalized", "scrubbed", "kept"]

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
_OVERLAY_GROUPS = range(0x6000, 0x6100, 2)


@dataclass(frozen=True)
class Settings:
    """What one ``deidentify`` call needs: options, keys already derived, the patient."""

    subject: str
    patient_name: str  # the pseudonym, or "" for an empty PatientName
    offset_days: int
    uid_key: bytes
    retain_modified_dates: bool
    retain_patient_characteristics: bool
    safe_private: frozenset[tuple[str, int, int]]


def tag_text(tag: int) -> str:
    """``(gggg,eeee)``: how the report names a private or unknown tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _listed(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _base_vr(vr: str) -> str:
    return vr.split(" or ")[0]  # ambiguous VRs ("US or SS") use their first form


def _make(tag: int, vr: str, values: list[Any]) -> DataElement:
    if not values:
        return DataElement(tag, vr, _values.empty(_base_vr(vr)))
    return DataElement(tag, vr, values[0] if len(values) == 1 else values)


class Walk:
    """The state of one pass: settings, and the report counts in first-seen order."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.counts: dict[tuple[str, ReportAction, str, str | None], int] = {}

    def note(self, path: str, action: ReportAction, rule: str, category: str | None) -> None:
        key = (path, action, rule, category)
        self.counts[key] = self.counts.get(key, 0) + 1

    def entries(self) -> list[DeidReportEntry]:
        return [
            DeidReportEntry(path=p, action=a, rule=r, category=c, count=n)
            for (p, a, r, c), n in self.counts.items()
        ]

    def dataset(
        self, src: Dataset, parent: str, *, top: bool, drop: Collection[int] = ()
    ) -> Dataset:
        """A new dataset holding what survives of ``src`` (``drop``: tags already decided)."""
        out = Dataset()
        for tag in sorted(src.keys()):
            if tag not in drop:
                self._element(src, BaseTag(tag), out, parent, top)
        return out

    def _element(self, src: Dataset, tag: BaseTag, out: Dataset, parent: str, top: bool) -> None:
        name = "" if tag.group % 2 else keyword_for_tag(tag)
        path = f"{parent}.{name or tag_text(tag)}" if parent else name or tag_text(tag)
        if tag.group % 2:
            self._private(src, tag, out, path)
            return
        if tag.element == 0:
            self.note(path, "removed", "fail-closed:group-length", None)
            return
        try:
            elem = src[tag]
        except Exception:  # a value pydicom cannot decode cannot be checked either
            self.note(path, "removed", "fail-closed:unreadable-element", None)
            return
        if tag.group in _OVERLAY_GROUPS and lookup(tag) is None:
            self.note(path, "removed", "annex-e:overlay-group", None)
        elif top and tag in (PATIENT_ID, PATIENT_NAME):
            value = self.s.subject if tag == PATIENT_ID else self.s.patient_name
            out.add(DataElement(tag, elem.VR, value))
            category = "identifier" if tag == PATIENT_ID else "name"
            if value:
                self.note(path, "pseudonymized", "pseudonym:subject", category)
            else:
                self.note(path, "removed", "annex-e:Z", category)
        elif (row := lookup(tag)) is not None:
            action, rule = self._row_action(row, elem.VR)
            fallback = _rules.RESOLVED[row.basic]
            self.apply(action, elem, out, path, rule, fallback)
        elif not name:
            self.note(path, "removed", "fail-closed:unknown-element", None)
        else:
            self._outside(elem, name, out, path)

    def _row_action(self, row: Row, vr: str) -> tuple[Action, str]:
        """The table's action for this row under the options in force, and the rule name."""
        if self.s.retain_patient_characteristics and row.patient_characteristics:
            action: Action = "K" if row.patient_characteristics == "K" else "X"
            return action, "annex-e:retain-patient-characteristics"
        if self.s.retain_modified_dates and row.modified_dates and vr in ("DA", "DT", "TM"):
            return "C", "annex-e:retain-modified-dates"
        resolved = _rules.RESOLVED[row.basic]
        if resolved == row.basic:
            return resolved, f"annex-e:{row.basic}"
        return resolved, f"annex-e:{row.basic}->{resolved}"

    def apply(
        self,
        action: Action,
        elem: DataElement,
        out: Dataset,
        path: str,
        rule: str,
        fallback: Action = "X",
    ) -> None:
        """Carry out one action; ``fallback`` is used when a date cannot be shifted."""
        tag, vr = elem.tag, elem.VR
        category = _rules.category(keyword_for_tag(tag), vr)
        if action == "X":
            self.note(path, "removed", rule, category)
        elif action == "Z":
            out.add(_make(tag, vr, []))
            self.note(path, "removed", rule, category)
        elif action == "C":
            self._clean(elem, out, path, rule, fallback)
        elif vr == "SQ":  # D, U*, K: the items are de-identified one by one
            out.add(DataElement(tag, "SQ", self._items(elem, path)))
            self.note(path, "kept" if action == "K" else "scrubbed", rule, None)
        elif action == "K":
            self._keep(elem, out, path, rule)
        elif vr == "UI":  # U, and D for a UID: a dummy UID would break references
            out.add(_make(tag, vr, [self.uid(v) for v in _listed(elem)]))
            self.note(path, "pseudonymized", rule, "uid")
        else:
            out.add(DataElement(tag, vr, _values.dummy(_base_vr(vr))))
            self.note(path, "removed", rule, category)

    def _clean(
        self, elem: DataElement, out: Dataset, path: str, rule: str, fallback: Action
    ) -> None:
        """Modified dates: DA/DT move by the patient's offset, TM stays (whole-day shift)."""
        if elem.VR == "TM":
            out.add(copy.deepcopy(elem))
            self.note(path, "kept", rule, "date")
            return
        shift: Callable[[str, int], str | None] | None = {
            "DA": _values.shift_da,
            "DT": _values.shift_dt,
        }.get(elem.VR)
        if shift is None:
            self.apply(fallback, elem, out, path, rule)
            return
        moved = [shift(str(v), self.s.offset_days) for v in _listed(elem)]
        if any(m is None for m in moved):
            self.apply(fallback, elem, out, path, "fail-closed:unparseable-date")
            return
        out.add(_make(elem.tag, elem.VR, [m for m in moved if m is not None]))
        self.note(path, "shifted", rule, "date")

    def _keep(self, elem: DataElement, out: Dataset, path: str, rule: str | None) -> None:
        """Keep ``elem``; an age over 89 is generalised and an unreadable age removed."""
        if elem.VR == "AS" and _listed(elem):
            ages = [_values.generalize_age(str(v)) for v in _listed(elem)]
            if any(a is None for a in ages):
                self.note(path, "removed", "fail-closed:unparseable-age", "age")
                return
            out.add(_make(elem.tag, "AS", [a[0] for a in ages if a is not None]))
            if any(a[1] for a in ages if a is not None):
                self.note(path, "generalized", "safe-harbor:age-over-89", "age")
            elif rule is not None:
                self.note(path, "kept", rule, "age")
            return
        out.add(copy.deepcopy(elem))
        if rule is not None:
            self.note(path, "kept", rule, _rules.category(keyword_for_tag(elem.tag), elem.VR))

    def _outside(self, elem: DataElement, name: str, out: Dataset, path: str) -> None:
        """An attribute the table does not list: kept, unless ``_rules`` says otherwise."""
        vr = elem.VR
        if vr == "SQ":
            out.add(DataElement(elem.tag, "SQ", self._items(elem, path)))
        elif vr == "UI":
            values = _listed(elem)
            if name in _rules.CLASS_UIDS or all(_values.is_well_known_uid(str(v)) for v in values):
                out.add(copy.deepcopy(elem))
            else:
                self.apply("U", elem, out, path, "fail-closed:uid-not-in-table")
        elif vr in _rules.DATE_VRS:
            action: Action = "C" if self.s.retain_modified_dates else "D"
            self.apply(action, elem, out, path, "fail-closed:date-not-in-table", "D")
        elif vr in _rules.TEXT_VRS and name not in _rules.TEXT_KEEP:
            self.apply("Z", elem, out, path, "fail-closed:text-not-allowlisted")
        else:
            self._keep(elem, out, path, None)

    def _items(self, elem: DataElement, path: str) -> Sequence:
        return Sequence([self.dataset(item, path, top=False) for item in elem.value or []])

    def uid(self, value: Any) -> str:
        """A UID as this pass remaps it; well-known UIDs and empty values are unchanged."""
        text = str(value).strip("\x00 ")
        if not text or _values.is_well_known_uid(text):
            return text
        return _values.remap_uid(self.s.uid_key, text)

    def _private(self, src: Dataset, tag: BaseTag, out: Dataset, path: str) -> None:
        if not self._safe(src, tag):
            self.note(path, "removed", "annex-e:private", None)
            return
        elem = src[tag]
        if elem.VR == "SQ":
            out.add(DataElement(tag, "SQ", self._items(elem, path)))
        else:
            out.add(copy.deepcopy(elem))
        self.note(path, "kept", "annex-e:retain-safe-private", None)

    def _safe(self, src: Dataset, tag: BaseTag) -> bool:
        """Whether a private element is on the safe-private allowlist (its creator too)."""
        if not self.s.safe_private or tag.element < 0x0010:
            return False
        group = tag.group
        if tag.element <= 0x00FF:  # a private creator: kept if any of its elements are
            creator = _creator(src, (group << 16) | tag.element)
            return any(c == creator and g == group for c, g, _ in self.s.safe_private)
        creator = _creator(src, (group << 16) | (tag.element >> 8))
        return creator is not None and (creator, group, tag.element & 0xFF) in self.s.safe_private


def _creator(src: Dataset, tag: int) -> str | None:
    if tag not in src:
        return None
    try:
        value = src[tag].value
    except Exception:
        return None
    return str(value).strip() if isinstance(value, str) else None
