"""PID (+NK1) -> Patient and PV1 -> Encounter, shared by every message type we map."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo

from gateway.normalize._datatypes import (
    Json,
    address,
    codeable,
    contact_point,
    fhir_date,
    fhir_datetime,
    gender,
    human_name,
    identifier,
    location_display,
    table_concept,
)
from gateway.normalize._reader import Segment

_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
_V2_0007 = "http://terminology.hl7.org/CodeSystem/v2-0007"
_V2_0063 = "http://terminology.hl7.org/CodeSystem/v2-0063"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# PV1-2 patient class (table 0004, plus spellings seen in the wild) -> v3 ActCode.
_CLASS = {
    "I": ("IMP", "inpatient encounter"),
    "IP": ("IMP", "inpatient encounter"),
    "INPATIENT": ("IMP", "inpatient encounter"),
    "B": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "OP": ("AMB", "ambulatory"),
    "OUTPATIENT": ("AMB", "ambulatory"),
    "R": ("AMB", "ambulatory"),
    "C": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "ER": ("EMER", "emergency"),
    "ED": ("EMER", "emergency"),
    "EMERGENCY": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "H": ("HH", "home health"),
    "V": ("VR", "virtual"),
    "S": ("SS", "short stay"),
    "OBS": ("OBSENC", "observation encounter"),
}


def _repeated(
    seg: Segment, idx: int, build: Callable[[Segment, int, int], Json | None]
) -> list[Json]:
    out: list[Json] = []
    for r in range(seg.rep_count(idx)):
        item = build(seg, idx, r)
        if item:
            out.append(item)
    return out


def _telecoms(seg: Segment, home_idx: int, work_idx: int) -> list[Json]:
    out: list[Json] = []
    for idx, use in ((home_idx, "home"), (work_idx, "work")):
        for r in range(seg.rep_count(idx)):
            item = contact_point(seg, idx, r, use)
            if item:
                out.append(item)
    return out


def patient(pid: Segment, tz: tzinfo) -> Json:
    """PID -> Patient: identifiers (all PID-3), names, birth date, sex, addresses, telecom."""
    resource: Json = {"resourceType": "Patient"}
    identifiers = _repeated(pid, 3, identifier)
    if identifiers:
        resource["identifier"] = identifiers
    names = _repeated(pid, 5, human_name)
    if names:
        resource["name"] = names
    telecom = _telecoms(pid, 13, 14)
    if telecom:
        resource["telecom"] = telecom
    sex = gender(pid.field(8))
    if sex:
        resource["gender"] = sex
    birth = fhir_date(pid.field(7), "PID-7")
    if birth:
        resource["birthDate"] = birth
    death = fhir_datetime(pid.field(29), "PID-29", tz)
    if death:
        resource["deceasedDateTime"] = death
    elif pid.field(30).strip().upper() in ("Y", "N"):
        resource["deceasedBoolean"] = pid.field(30).strip().upper() == "Y"
    addresses = _repeated(pid, 11, address)
    if addresses:
        resource["address"] = addresses
    return resource


def contact(nk1: Segment) -> Json | None:
    """NK1 -> Patient.contact (name, relationship, telecom, address, gender)."""
    out: Json = {}
    relationship = codeable(nk1, 3)
    if relationship:
        for coding in relationship.get("coding", []):
            coding.setdefault("system", _V2_0063)
        out["relationship"] = [relationship]
    name = human_name(nk1, 2)
    if name:
        out["name"] = name
    telecom = _telecoms(nk1, 5, 6)
    if telecom:
        out["telecom"] = telecom
    addr = address(nk1, 4)
    if addr:
        out["address"] = addr
    sex = gender(nk1.field(15))
    if sex:
        out["gender"] = sex
    if not any(k in out for k in ("name", "telecom", "address")):
        return None  # pat-1: a contact needs a name, telecom, address or organization
    return out


def has_visit(pv1: Segment) -> bool:
    """Whether a PV1 describes a visit at all (``PV1|1|N`` means "not applicable")."""
    klass = pv1.field(2).strip().upper()
    return bool((klass and klass != "N") or pv1.field(3) or pv1.field(19) or pv1.field(44))


def encounter(pv1: Segment, subject: str, trigger: str, tz: tzinfo) -> Json:
    """PV1 -> Encounter: class PV1-2, period PV1-44/45, location PV1-3, visit number PV1-19.

    Status: finished once PV1-45 (discharge) is sent; in-progress after an admit time
    or an A01/A04 trigger; unknown otherwise (an A08 or ORU need not be current).
    """
    klass = _CLASS.get(pv1.field(2).strip().upper())
    class_coding: Json = (
        {"system": _ACT_CODE, "code": klass[0], "display": klass[1]}
        if klass
        else {"system": _NULL_FLAVOR, "code": "UNK", "display": "unknown"}
    )
    start = fhir_datetime(pv1.field(44), "PV1-44", tz)
    end = fhir_datetime(pv1.field(45), "PV1-45", tz)
    if end:
        status = "finished"
    elif start or trigger in ("A01", "A04"):
        status = "in-progress"
    else:
        status = "unknown"
    resource: Json = {
        "resourceType": "Encounter",
        "status": status,
        "class": class_coding,
        "subject": {"reference": subject},
    }
    visit = identifier(pv1, 19)
    if visit:
        visit.setdefault("type", table_concept("VN", _V2_0203))
        resource["identifier"] = [visit]
    admission_type = pv1.field(4).strip()
    if admission_type:
        resource["type"] = [table_concept(admission_type, _V2_0007)]
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        resource["period"] = period
    where = location_display(pv1, 3)
    if where:
        resource["location"] = [{"location": {"display": where}}]
    return resource
