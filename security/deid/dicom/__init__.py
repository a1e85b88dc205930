"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

    DicomDeidentifier(pseudonym_key, dateshift_key, key_version="v1",
                      shift_range_days=(-365, -1), *, default_issuer_system=None,
                      issuer_systems=None, retain_modified_dates=False,
                      retain_patient_characteristics=False, patient_name="pseudonym",
                      burned_in="refuse" | "flag" | "remove_pixels", safe_private=())
        .deidentify(dataset) -> DicomDeidResult(subject, dataset, report,
                                                burned_in_annotation, identifiers)
        .remap_uid(uid) -> "2.25.<decimal>"
    pixel_risk(dataset) -> rule name | None    may the pixels show identifying text?
    TABLE_ROWS                                 Table E.1-1 as data (``Row``)

Shares the FHIR engine's keys: the same patient gets the same pseudonym and date offset.
Errors are ``security.deid.DeidentificationError``; reports and errors never carry a
value. Choices the standard leaves open are in ``README.md`` beside this file.
"""

from security.deid.dicom._engine import (
    BurnedInPolicy,
    DicomDeidentifier,
    DicomDeidResult,
    PatientNameMode,
    pixel_risk,
)
from security.deid.dicom._table import REVISION as TABLE_REVISION
from security.deid.dicom._table import ROWS as TABLE_ROWS
from security.deid.dicom._table import Row

__all__ = [
    "TABLE_REVISION",
    "TABLE_ROWS",
    "BurnedInPolicy",
    "DicomDeidResult",
    "DicomDeidentifier",
    "PatientNameMode",
    "Row",
    "pixel_risk",
]
