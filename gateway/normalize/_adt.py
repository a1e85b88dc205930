"""ADT^A01/A04/A08 -> Patient (+ contacts from NK1) and, when PV1 describes a visit, Encounter.

Only the patient and the visit are mapped: allergies, diagnoses, procedures, insurance
and observations carried by ADT are out of scope for the models wardgate serves, so
they are not converted (and so never leave the PHI zone).
"""

from __future__ import annotations

from datetime import tzinfo

from gateway.normalize._bundle import BundleBuilder
from gateway.normalize._errors import NormalizationError
from gateway.normalize._patient import contact, encounter, has_visit, patient
from gateway.normalize._reader import Hl7Message


def map_adt(msg: Hl7Message, out: BundleBuilder, tz: tzinfo) -> None:
    """Add the Patient and Encounter of one ADT message to *out*."""
    pid = msg.segment("PID")
    if pid is None:
        raise NormalizationError(f"PID missing: {msg.message_type} requires a PID segment")
    resource = patient(pid, tz)
    contacts = [c for c in (contact(nk1) for nk1 in msg.segments("NK1")) if c]
    if contacts:
        resource["contact"] = contacts
    subject = out.add(resource)
    pv1 = msg.segment("PV1")
    if pv1 is not None and has_visit(pv1):
        out.add(encounter(pv1, subject, msg.trigger, tz))
