"""The choices the table leaves to an implementation, each in one place.

- **Compound actions** (``X/Z``, ``X/D``, ``X/Z/D``, ``Z/D``, ``X/Z/U*``) let the standard
  say "remove, unless the IOD needs the attribute". We do not track the Type of every
  attribute in every IOD, so the rule is static: *an attribute the sender included stays
  present, without its value*. ``X/Z`` becomes ``Z`` (a Type 2 stays valid), anything with
  a ``D`` becomes ``D`` (a Type 1 stays valid), ``X/Z/U*`` becomes ``U*`` (the sequence is
  kept and its items are de-identified recursively, their UIDs remapped). Every resolution
  removes the original value; none is weaker than the plain ``X`` as far as privacy goes.
- **C (clean)** only appears in option columns. Under the modified-dates option it means
  "shift" (DA, DT) or "keep" (TM: the shift is whole days); anywhere else it is ``X``
  because there is no DICOM free-text cleaner yet.
- **Attributes the table does not list** are kept, as the standard says, except where
  that would be a leak by construction (``NOT_IN_TABLE``): unknown public tags are removed,
  text is emptied unless keep-listed, dates are treated like a table date, instance UIDs
  are remapped, ages over 89 are generalised.
"""

from __future__ import annotations

import re
from typing import Final, Literal

Action = Literal["X", "Z", "D", "U", "U*", "K", "C"]

RESOLVED: Final[dict[str, Action]] = {
    "X": "X",
    "Z": "Z",
    "D": "D",
    "U": "U",
    "K": "K",
    "C": "C",
    "X/Z": "Z",
    "X/D": "D",
    "X/Z/D": "D",
    "Z/D": "D",
    "X/Z/U*": "U*",
}

# Text VRs that can carry a name, an identifier or a narrative.
TEXT_VRS: Final = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
DATE_VRS: Final = frozenset({"DA", "DT"})

# Text attributes outside the table that describe equipment, codes or display, never the
# patient or staff; they are kept. Everything else of a text VR outside the table is emptied.
TEXT_KEEP: Final = frozenset(
    {
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "MappingResourceName",
        "SequenceName",
        "PulseSequenceName",
        "ConvolutionKernel",
        "ReceiveCoilName",
        "TransmitCoilName",
        "FilterType",
        "ContrastBolusRoute",
        "WindowCenterWidthExplanation",
        "RescaleType",
        "LUTExplanation",
        "ModalityLUTType",
        "DeidentificationMethod",
    }
)

# UIDs that name a class, a syntax or a scheme, not an instance: never remapped.
CLASS_UIDS: Final = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "AffectedSOPClassUID",
        "RequestedSOPClassUID",
        "MediaStorageSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "MappingResourceUID",
        "ContextUID",
    }
)
DICOM_ROOT: Final = "1.2.840.10008."

# Pixel data, and the modalities whose images often carry text burned into the pixels;
# for them a missing BurnedInAnnotation is treated as YES.
PIXEL_TAGS: Final = (0x7FE00008, 0x7FE00009, 0x7FE00010)
PIXEL_TABLES: Final = (0x7FE00001, 0x7FE00002)
BURNS_IN_MODALITIES: Final = frozenset({"US", "IVUS", "XA", "RF", "ES", "XC", "OT", "SC", "DOC"})
SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame children

# CID 7050 De-identification Method (DCM codes) for DeidentificationMethodCodeSequence.
BASIC_PROFILE: Final = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES: Final = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
PATIENT_CHARACTERISTICS: Final = ("113108", "Retain Patient Characteristics Option")
SAFE_PRIVATE: Final = ("113111", "Retain Safe Private Option")

_CATEGORY_BY_VR: Final = {"PN": "name", "DA": "date", "DT": "date", "TM": "date", "UI": "uid"}
_CATEGORY_WORDS: Final = (
    ("Address", "geographic"),
    ("Telephone", "telecom"),
    ("Telecom", "telecom"),
    ("Name", "name"),
    ("Names", "name"),
    ("Age", "age"),
    ("ID", "identifier"),
    ("IDs", "identifier"),
    ("Identifier", "identifier"),
    ("Number", "identifier"),
    ("Comments", "free-text"),
    ("Description", "free-text"),
    ("History", "free-text"),
)
_WORD: Final = re.compile(r"[A-Z]+s?(?=[A-Z][a-z]|$)|[A-Z]?[a-z]+|\d+")


def category(keyword: str, vr: str) -> str | None:
    """A best-effort kind of identifier for the report (``name``, ``date``, ...), or None."""
    if vr in _CATEGORY_BY_VR:
        return _CATEGORY_BY_VR[vr]
    words = set(_WORD.findall(keyword))
    for word, kind in _CATEGORY_WORDS:
        if word in words:
            return kind
    return None
