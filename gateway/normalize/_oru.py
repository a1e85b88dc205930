"""ORU^R01 -> Patient, Encounter, one DiagnosticReport per OBR, one Observation per OBX.

The segment walk follows the ORU_R01 structure::

    PATIENT_RESULT* = PID [PD1] [NK1*] [NTE*] [PATIENT_OBSERVATION: OBX*] [VISIT: PV1 [PV2]]
                      ORDER_OBSERVATION+ = [ORC] OBR [NTE*] {OBX [NTE*]}* [SPECIMEN: SPM OBX*]

* An OBX before any ORC/OBR of its patient is a patient observation (v2.7+ allows it);
  it becomes an Observation that no report lists. An OBX after an ORC but before that
  order's OBR, or before any PID, is a structural error.
* NTE after an OBX -> that Observation's ``note``; NTE after an OBR -> the report's
  ``conclusion`` (R4 DiagnosticReport has no ``note``).
* A text OBX (TX/FT/ST) with no OBX-3 is report narrative, not an observation: such
  lines are joined into one ``presentedForm`` text/plain attachment of the report.
* The report lists every Observation of its order, specimen OBX included. An order
  with an SPM is a laboratory order: its Observations get the ``laboratory`` category
  unless their code is a vital sign.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import tzinfo

from gateway.normalize._bundle import BundleBuilder
from gateway.normalize._datatypes import Json, codeable, fhir_datetime, fhir_instant, table_concept
from gateway.normalize._errors import NormalizationError
from gateway.normalize._observation import ObsContext, laboratory_category, observation
from gateway.normalize._patient import contact, encounter, has_visit, patient
from gateway.normalize._reader import Hl7Message, Segment

# HL7 table 0123 (OBR-25) -> FHIR DiagnosticReportStatus.
REPORT_STATUS = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "R": "preliminary",
    "N": "preliminary",
    "C": "corrected",
    "M": "corrected",
    "F": "final",
    "X": "cancelled",
    "D": "entered-in-error",
}
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_NARRATIVE_TYPES = frozenset({"TX", "FT", "ST"})


@dataclass
class _Order:
    report: Json
    effective: str | None
    laboratory: bool
    observations: list[Json] = field(default_factory=list)
    narrative: list[str] = field(default_factory=list)
    narrative_time: str | None = None


@dataclass
class _Walk:
    msg: Hl7Message
    out: BundleBuilder
    tz: tzinfo
    subject: str | None = None
    patient: Json | None = None
    encounter: str | None = None
    order: _Order | None = None
    orc_open: bool = False
    last: Json | None = None  # the resource an NTE attaches to
    orders: list[_Order] = field(default_factory=list)

    def pid(self, seg: Segment) -> None:
        self.patient = patient(seg, self.tz)
        self.subject = self.out.add(self.patient)
        self.encounter, self.order, self.orc_open, self.last = None, None, False, None

    def nk1(self, seg: Segment) -> None:
        item = contact(seg)
        if self.patient is not None and item:
            self.patient.setdefault("contact", []).append(item)

    def pv1(self, seg: Segment) -> None:
        if self.subject is None:
            raise NormalizationError("PV1 before PID: a visit needs its patient")
        if has_visit(seg):
            self.encounter = self.out.add(encounter(seg, self.subject, self.msg.trigger, self.tz))

    def obr(self, seg: Segment) -> None:
        if self.subject is None:
            raise NormalizationError("OBR before PID: an order needs its patient")
        code = codeable(seg, 4)
        if code is None:
            raise NormalizationError("OBR-4 missing: universal service identifier is required")
        effective = fhir_datetime(seg.field(7), "OBR-7", self.tz)
        report: Json = {
            "resourceType": "DiagnosticReport",
            "status": REPORT_STATUS.get(seg.field(25).strip().upper(), "unknown"),
            "code": code,
            "subject": {"reference": self.subject},
        }
        section = seg.field(24).strip()
        if section:
            report["category"] = [table_concept(section, _V2_0074)]
        if self.encounter:
            report["encounter"] = {"reference": self.encounter}
        if effective:
            report["effectiveDateTime"] = effective
        issued = fhir_instant(seg.field(22), "OBR-22", self.tz)
        if issued:
            report["issued"] = issued
        self.out.add(report)
        self.order = _Order(report, effective, laboratory=False)
        self.orders.append(self.order)
        self.orc_open, self.last = False, report

    def obx(self, seg: Segment) -> None:
        if self.subject is None:
            raise NormalizationError("OBX before PID: an observation needs its patient")
        if self.orc_open:
            raise NormalizationError("OBX before OBR: an ORC must be followed by its OBR")
        order = self.order
        narrative = (
            order is not None
            and not seg.field(3, 0, 0, raw=True).strip()
            and seg.field(2).strip().upper() in _NARRATIVE_TYPES
        )
        if order is not None and narrative:
            order.narrative.append(seg.field(5, 0, 0))
            order.narrative_time = order.narrative_time or fhir_datetime(
                seg.field(14), "OBX-14", self.tz
            )
            self.last = None
            return
        ctx = ObsContext(
            subject=self.subject,
            encounter=self.encounter,
            effective=order.effective if order else None,
            laboratory=order.laboratory if order else False,
            tz=self.tz,
        )
        resource = observation(seg, ctx)
        url = self.out.add(resource)
        if order is not None:
            order.report.setdefault("result", []).append({"reference": url})
            order.observations.append(resource)
        self.last = resource

    def nte(self, seg: Segment) -> None:
        text = "\n".join(seg.field(3, r, 0) for r in range(seg.rep_count(3)))
        if not text or self.last is None:
            return
        if self.last["resourceType"] == "Observation":
            self.last.setdefault("note", []).append({"text": text})
        elif self.last["resourceType"] == "DiagnosticReport":
            existing = self.last.get("conclusion")
            self.last["conclusion"] = f"{existing}\n{text}" if existing else text

    def spm(self, seg: Segment) -> None:
        if self.order is not None:
            self.order.laboratory = True
        self.last = None

    def finish(self) -> None:
        if self.subject is None:
            raise NormalizationError("PID missing: ORU^R01 requires a PID segment")
        for order in self.orders:
            if order.laboratory:  # SPM may follow the OBX it qualifies
                for obs in order.observations:
                    obs.setdefault("category", laboratory_category())
            if order.narrative:
                attachment: Json = {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode("\n".join(order.narrative).encode()).decode(),
                }
                title = order.report["code"].get("text") or next(
                    (c.get("display") for c in order.report["code"].get("coding", [])), None
                )
                if title:
                    attachment["title"] = title
                creation = order.narrative_time or order.effective
                if creation:
                    attachment["creation"] = creation
                order.report["presentedForm"] = [attachment]


def map_oru(msg: Hl7Message, out: BundleBuilder, tz: tzinfo) -> None:
    """Add the resources of one ORU^R01 message to *out*."""
    walk = _Walk(msg, out, tz)
    for seg in msg.segments()[1:]:
        name = seg.name
        if name == "PID":
            walk.pid(seg)
        elif name == "NK1":
            walk.nk1(seg)
        elif name == "PV1":
            walk.pv1(seg)
        elif name == "ORC":
            walk.orc_open, walk.order, walk.last = True, None, None
        elif name == "OBR":
            walk.obr(seg)
        elif name == "OBX":
            walk.obx(seg)
        elif name == "NTE":
            walk.nte(seg)
        elif name == "SPM":
            walk.spm(seg)
    walk.finish()
