"""The DICOM de-identifier: PS3.15 Annex E Basic Profile, sharing the FHIR engine's keys.

Order matters, as in the FHIR engine: find the patient and derive the pseudonym first (no
pseudonym, no output), decide about the pixels (burned-in text) before anything is copied,
then walk the dataset (``_walk``), rebuild the file meta, and mark the result as
de-identified. The input is never mutated; no value reaches the report or an error.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from schemas import DeidReportEntry
from security.deid._errors import DeidentificationError
from security.deid._keyed import check_keys, date_offset, pseudonym
from security.deid.dicom import _rules, _values
from security.deid.dicom._table import REVISION
from security.deid.dicom._walk import Settings, Walk

BurnedInPolicy = Literal["refuse", "flag", "remove_pixels"]
PatientNameMode = Literal["pseudonym", "empty"]

_MEDIA_SOP_INSTANCE: Final = 0x00020003
_FILE_META_KEEP: Final = frozenset({0x00020001, 0x00020002, 0x00020010, 0x00020012, 0x00020013})


@dataclass(frozen=True)
class DicomDeidResult:
    """A de-identified dataset, its report, and what the vault needs to re-identify it.

    ``burned_in_annotation`` says the input's pixels may show identifying text or features
    (BurnedInAnnotation or RecognizableVisualFeatures ``YES``, or BurnedInAnnotation absent
    for a modality that burns text in); with ``burned_in="flag"`` those pixels are in
    ``dataset`` and the caller must not pass them on unchecked. ``identifiers`` is PHI:
    hand it to the vault and nowhere else.
    """

    subject: str
    dataset: Dataset
    report: list[DeidReportEntry]
    burned_in_annotation: bool
    identifiers: list[dict[str, str]]


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def pixel_risk(dataset: Dataset) -> str | None:
    """The rule that makes ``dataset``'s pixel data possibly identifying, or None."""
    if not any(tag in dataset for tag in _rules.PIXEL_TAGS):
        return None
    burned = _text(dataset.get("BurnedInAnnotation")).upper()
    if burned == "YES":
        return "pixels:burned-in-annotation"
    if _text(dataset.get("RecognizableVisualFeatures")).upper() == "YES":
        return "pixels:recognizable-visual-features"
    if burned:
        return None
    modality = _text(dataset.get("Modality")).upper()
    sop_class = _text(dataset.get("SOPClassUID"))
    if modality in _rules.BURNS_IN_MODALITIES or sop_class.startswith(_rules.SECONDARY_CAPTURE):
        return "pixels:burned-in-assumed"
    return None


class DicomDeidentifier:
    """De-identifies pydicom datasets for one key set; safe to share between threads.

    Keys and ``key_version``/``shift_range_days`` are the FHIR ``Deidentifier``'s: the same
    patient gets the same pseudonym and the same date offset in both. PatientID's issuer
    system is derived from IssuerOfPatientID (or its ISO qualifier) as the HL7 normalizer
    derives CX-4, overridden by ``issuer_systems`` (IssuerOfPatientID -> system) and
    falling back to ``default_issuer_system``.

    Options: ``retain_modified_dates`` (PS3.15 *Retain Longitudinal Temporal Information
    with Modified Dates*: dates shift by the patient's offset instead of being emptied or
    dummied), ``retain_patient_characteristics`` (age, sex, size, weight... kept; ages over
    89 become ``090Y``), ``patient_name`` (the pseudonym or empty), ``burned_in``
    (``refuse`` raises, ``flag`` passes the pixels on and says so, ``remove_pixels`` drops
    them), ``safe_private`` ((private creator, group, element low byte) kept; empty).
    """

    def __init__(
        self,
        pseudonym_key: bytes,
        dateshift_key: bytes,
        key_version: str = "v1",
        shift_range_days: tuple[int, int] = (-365, -1),
        *,
        default_issuer_system: str | None = None,
        issuer_systems: Mapping[str, str] | None = None,
        retain_modified_dates: bool = False,
        retain_patient_characteristics: bool = False,
        patient_name: PatientNameMode = "pseudonym",
        burned_in: BurnedInPolicy = "refuse",
        safe_private: Collection[tuple[str, int, int]] = (),
    ) -> None:
        check_keys(pseudonym_key, dateshift_key, key_version, shift_range_days)
        if patient_name not in ("pseudonym", "empty"):
            raise ValueError("patient_name must be 'pseudonym' or 'empty'")
        if burned_in not in ("refuse", "flag", "remove_pixels"):
            raise ValueError("burned_in must be 'refuse', 'flag' or 'remove_pixels'")
        for creator, group, element in safe_private:
            if not creator or group % 2 == 0 or not 0 <= element <= 0xFF:
                raise ValueError("safe_private entries are (creator, odd group, 0x00-0xFF)")
        self._pkey = pseudonym_key
        self._dkey = dateshift_key
        self._version = key_version
        self._range = shift_range_days
        self._uid_key = _values.uid_key(pseudonym_key)
        self._default_system = default_issuer_system
        self._issuer_systems = dict(issuer_systems or {})
        self.retain_modified_dates = retain_modified_dates
        self.retain_patient_characteristics = retain_patient_characteristics
        self.patient_name: PatientNameMode = patient_name
        self.burned_in: BurnedInPolicy = burned_in
        self._safe_private = frozenset(safe_private)

    def remap_uid(self, uid: str) -> str:
        """The UID this instance gives ``uid`` (well-known UIDs are returned unchanged)."""
        text = uid.strip("\x00 ")
        if not text or _values.is_well_known_uid(text):
            return text
        return _values.remap_uid(self._uid_key, text)

    def issuer_system(self, dataset: Dataset) -> str | None:
        """The FHIR Identifier.system for ``dataset``'s PatientID, or None if unknown."""
        issuer = _text(dataset.get("IssuerOfPatientID"))
        if issuer in self._issuer_systems:
            return self._issuer_systems[issuer]
        universal = id_type = ""
        qualifiers = dataset.get("IssuerOfPatientIDQualifiersSequence")
        if isinstance(qualifiers, Sequence) and len(qualifiers) > 0:
            universal = _text(qualifiers[0].get("UniversalEntityID"))
            id_type = _text(qualifiers[0].get("UniversalEntityIDType"))
        return _values.issuer_system(issuer, universal, id_type) or self._default_system

    def deidentify(self, dataset: Dataset) -> DicomDeidResult:
        """A new de-identified dataset; raises ``DeidentificationError`` rather than leak."""
        if not isinstance(dataset, Dataset):
            raise DeidentificationError("input is not a pydicom Dataset")
        try:
            patient_id = _text(dataset.get("PatientID"))
        except Exception as exc:
            raise DeidentificationError("PatientID (0010,0020) cannot be decoded") from exc
        if not patient_id:
            raise DeidentificationError(
                "PatientID (0010,0020) is missing or empty: cannot pseudonymize the patient"
            )
        system = self.issuer_system(dataset)
        if system is None:
            raise DeidentificationError(
                "IssuerOfPatientID (0010,0021) is empty and no default_issuer_system is "
                "configured: set one so the pseudonym matches the patient's FHIR data"
            )
        subject = pseudonym(self._pkey, self._version, system, patient_id)
        walk = Walk(
            Settings(
                subject=subject,
                patient_name=subject if self.patient_name == "pseudonym" else "",
                offset_days=date_offset(self._dkey, subject, self._range),
                uid_key=self._uid_key,
                retain_modified_dates=self.retain_modified_dates,
                retain_patient_characteristics=self.retain_patient_characteristics,
                safe_private=self._safe_private,
            )
        )
        risk = pixel_risk(dataset)
        drop: tuple[int, ...] = ()
        if risk is not None:
            if self.burned_in == "refuse":
                raise DeidentificationError(
                    f"pixel data may show identifying text or features ({risk}): clean the "
                    "pixels first, or configure burned_in='remove_pixels' or 'flag'"
                )
            if self.burned_in == "remove_pixels":
                drop = _rules.PIXEL_TAGS + _rules.PIXEL_TABLES
                walk.note("PixelData", "removed", risk, "pixels")
            else:
                walk.note("PixelData", "kept", risk, "pixels")
        out = walk.dataset(dataset, "", top=True, drop=drop)
        self._mark(out)
        file_meta = getattr(dataset, "file_meta", None)
        if isinstance(file_meta, Dataset):
            out.file_meta = self._file_meta(file_meta, walk)
        implicit, little = dataset.original_encoding
        if implicit is not None:
            out.set_original_encoding(implicit, little, dataset.original_character_set)
        return DicomDeidResult(
            subject=subject,
            dataset=out,
            report=walk.entries(),
            burned_in_annotation=risk is not None,
            identifiers=[{"system": system, "value": patient_id}],
        )

    def _file_meta(self, src: Dataset, walk: Walk) -> FileMetaDataset:
        """Version, SOP class, transfer syntax and implementation kept; the instance UID
        remapped like SOPInstanceUID; the rest (sending/receiving AE titles, private
        information) removed."""
        meta = FileMetaDataset()
        for tag in sorted(src.keys()):
            name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if tag == _MEDIA_SOP_INSTANCE:
                meta.MediaStorageSOPInstanceUID = UID(walk.uid(src[tag].value))
                walk.note(name, "pseudonymized", "annex-e:U", "uid")
            elif tag in _FILE_META_KEEP:
                meta[tag] = copy.deepcopy(src[tag])
            else:
                rule = "fail-closed:group-length" if tag == 0x00020000 else "file-meta:not-needed"
                walk.note(name, "removed", rule, None)
        return meta

    def _mark(self, out: Dataset) -> None:
        """PatientIdentityRemoved, the method (text and CID 7050 codes), dates status."""
        codes = [_rules.BASIC_PROFILE]
        if self.retain_modified_dates:
            codes.append(_rules.MODIFIED_DATES)
        if self.retain_patient_characteristics:
            codes.append(_rules.PATIENT_CHARACTERISTICS)
        if self._safe_private:
            codes.append(_rules.SAFE_PRIVATE)
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = [f"wardgate PS3.15 E.1-1 {REVISION}"] + [
            meaning.removesuffix(" Option")[:64] for _, meaning in codes
        ]
        out.DeidentificationMethodCodeSequence = Sequence(items)
        dates = "MODIFIED" if self.retain_modified_dates else "REMOVED"
        out.LongitudinalTemporalInformationModified = dates
