"""OBX -> FHIR Observation: code, typed value, units, ranges, flags, status and notes.

The value follows OBX-2: NM and SN become Quantity (UCUM when OBX-6 says so, or when
a unit sent without a system is a common UCUM code), Range or Ratio; coded types a
CodeableConcept; text types a string; DT/DTM/TS a dateTime. Values we cannot type
faithfully are kept as text or marked with ``dataAbsentReason`` rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo
from decimal import Decimal, InvalidOperation

from gateway.normalize._datatypes import (
    LOINC,
    UCUM,
    Json,
    codeable,
    fhir_datetime,
)
from gateway.normalize._errors import NormalizationError
from gateway.normalize._reader import Segment

# HL7 table 0085 -> FHIR ObservationStatus.
OBSERVATION_STATUS = {
    "F": "final",
    "U": "final",
    "C": "corrected",
    "A": "amended",
    "P": "preliminary",
    "S": "preliminary",
    "R": "registered",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
    "N": "cancelled",
    "W": "entered-in-error",
    "D": "entered-in-error",
}

# Codes of the FHIR vital-signs profile (http://hl7.org/fhir/R4/observation-vitalsigns.html).
VITAL_SIGNS = frozenset(
    {
        "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4",
        "29463-7", "39156-5", "85354-9", "8480-6", "8462-4", "3151-8", "3150-0",
    }
)  # fmt: skip

# Units that are valid UCUM codes as written; used only when OBX-6 names no system.
_COMMON_UCUM = frozenset(
    {
        "%", "/min", "mm[Hg]", "Cel", "[degF]", "L/min", "kg", "g", "cm", "m", "mg/dL",
        "mmol/L", "umol/L", "g/L", "g/dL", "mL", "L", "s", "h", "/uL", "10*3/uL",
        "10*9/L", "10*12/L", "fL", "pg", "U/L", "[IU]/L", "[IU]/mL", "ng/mL", "mg/L",
        "kg/m2", "mmol/mol", "mL/min", "{beats}/min", "{breaths}/min",
    }
)  # fmt: skip

_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_NUMBER = re.compile(r"^\s*(<=|>=|<|>)?\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")
_RANGE = re.compile(
    r"^\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*(?:-|_|to|\.\.)\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\S*\s*$"
)
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\S*\s*$")
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF", "CD"})
_TIME_TYPES = frozenset({"DTM", "TS", "DT"})


@dataclass(frozen=True, slots=True)
class ObsContext:
    """What an OBX inherits from its place in the message."""

    subject: str
    encounter: str | None
    effective: str | None
    laboratory: bool
    tz: tzinfo


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def unit_of(obx: Segment) -> Json:
    """OBX-6 -> the unit part of a Quantity (unit, and system/code when it is UCUM)."""
    code, text, system = obx.field(6, 0, 1).strip(), obx.field(6, 0, 2), obx.field(6, 0, 3)
    alt_code, alt_system = obx.field(6, 0, 4).strip(), obx.field(6, 0, 6)
    out: Json = {}
    if system.strip().upper() == "UCUM" and code:
        out = {"unit": code, "system": UCUM, "code": code}
    elif alt_system.strip().upper() == "UCUM" and alt_code:
        out = {"unit": code or alt_code, "system": UCUM, "code": alt_code}
    elif not system.strip() and code in _COMMON_UCUM:
        out = {"unit": code, "system": UCUM, "code": code}
    elif code or text:
        out = {"unit": code or text}
    return out


def _quantity(value: Decimal, unit: Json, comparator: str | None = None) -> Json:
    out: Json = {"value": value, **unit}
    if comparator:
        out["comparator"] = comparator
    return out


def _structured_numeric(obx: Segment, unit: Json) -> tuple[str, Json] | None:
    comparator = obx.field(5, 0, 1).strip()
    num1, sep, num2 = obx.field(5, 0, 2), obx.field(5, 0, 3).strip(), obx.field(5, 0, 4)
    first, second = _decimal(num1.strip()), _decimal(num2.strip())
    if first is None:
        return None
    if sep in (":", "/") and second is not None:
        return "valueRatio", {"numerator": {"value": first}, "denominator": {"value": second}}
    if sep == "-" and second is not None:
        return "valueRange", {"low": _quantity(first, unit), "high": _quantity(second, unit)}
    if not sep:
        fhir_comparator = comparator if comparator in ("<", "<=", ">=", ">") else None
        return "valueQuantity", _quantity(first, unit, fhir_comparator)
    return None


def _value(obx: Segment, kind: str, ctx: ObsContext) -> tuple[str, object] | None:
    if not obx.field(5, 0, 0, raw=True):
        return None
    if kind == "NM":
        m = _NUMBER.match(obx.field(5))
        number = _decimal(m.group(2)) if m else None
        if m and number is not None:
            return "valueQuantity", _quantity(number, unit_of(obx), m.group(1))
        return "valueString", obx.field(5)
    if kind == "SN":
        sn = _structured_numeric(obx, unit_of(obx))
        return sn if sn else ("valueString", obx.field(5, 0, 0))
    if kind in _CODED_TYPES:
        concept = codeable(obx, 5)
        return ("valueCodeableConcept", concept) if concept else None
    if kind in _TEXT_TYPES:
        lines = [obx.field(5, r, 0) for r in range(obx.rep_count(5))]
        return "valueString", "\n".join(lines)
    if kind in _TIME_TYPES:
        return "valueDateTime", fhir_datetime(obx.field(5), "OBX-5", ctx.tz)
    if kind == "TM":
        digits = obx.field(5).strip()[:6]
        if re.fullmatch(r"\d{2}(\d{2}(\d{2})?)?", digits):
            return "valueTime", f"{digits[0:2]}:{digits[2:4] or '00'}:{digits[4:6] or '00'}"
    if kind == "RP":
        return "valueString", obx.field(5)
    return "dataAbsentReason", {"coding": [{"system": _ABSENT, "code": "unsupported"}]}


def reference_range(obx: Segment, unit: Json) -> Json | None:
    """OBX-7 -> referenceRange: ``a-b``/``a to b`` -> low+high, ``<b`` -> high; text kept."""
    text = obx.field(7).strip()
    if not text:
        return None
    out: Json = {"text": text}
    bounds = _RANGE.match(text)
    if bounds:
        low, high = _decimal(bounds.group(1)), _decimal(bounds.group(2))
        if low is not None and high is not None:
            out["low"], out["high"] = _quantity(low, unit), _quantity(high, unit)
        return out
    one = _BOUND.match(text)
    value = _decimal(one.group(2)) if one else None
    if one and value is not None:
        out["high" if one.group(1).startswith("<") else "low"] = _quantity(value, unit)
    return out


def _interpretation(obx: Segment) -> list[Json]:
    out = []
    for r in range(obx.rep_count(8)):
        code = obx.field(8, r, 1).strip()
        if code:
            coding: Json = {"system": _INTERPRETATION, "code": code}
            if obx.field(8, r, 2):
                coding["display"] = obx.field(8, r, 2)
            out.append({"coding": [coding]})
    return out


def laboratory_category() -> list[Json]:
    """The ``laboratory`` observation category."""
    return [{"coding": [{"system": _CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]


def _category(code: Json, laboratory: bool) -> list[Json]:
    codings = code.get("coding", [])
    if any(c.get("system") == LOINC and c.get("code") in VITAL_SIGNS for c in codings):
        name, display = "vital-signs", "Vital Signs"
    elif laboratory:
        name, display = "laboratory", "Laboratory"
    else:
        return []
    return [{"coding": [{"system": _CATEGORY, "code": name, "display": display}]}]


def observation(obx: Segment, ctx: ObsContext) -> Json:
    """Map one OBX to an Observation resource (the caller adds NTE notes that follow it)."""
    code = codeable(obx, 3)
    if code is None:
        raise NormalizationError("OBX-3 missing: observation identifier is required")
    kind = obx.field(2).strip().upper()
    resource: Json = {
        "resourceType": "Observation",
        "status": OBSERVATION_STATUS.get(obx.field(11).strip().upper(), "unknown"),
        "code": code,
        "subject": {"reference": ctx.subject},
    }
    category = _category(code, ctx.laboratory)
    if category:
        resource["category"] = category
    if ctx.encounter:
        resource["encounter"] = {"reference": ctx.encounter}
    effective = fhir_datetime(obx.field(14), "OBX-14", ctx.tz) or ctx.effective
    if effective:
        resource["effectiveDateTime"] = effective
    value = _value(obx, kind, ctx)
    if value is not None and value[1] is not None:
        resource[value[0]] = value[1]
    interpretation = _interpretation(obx)
    if interpretation:
        resource["interpretation"] = interpretation
    ref_range = reference_range(obx, unit_of(obx))
    if ref_range:
        resource["referenceRange"] = [ref_range]
    return resource
