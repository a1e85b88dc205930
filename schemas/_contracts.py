"""Contracts between stages: who produces each model and who consumes it.

    ingest (adapters)  --InboundMessage-->      normalize + de-identify
    normalize+deid     --DeidentifiedRecord-->  infer
    infer              --InferenceRequest-->    sandbox worker --InferenceResult--> infer
    infer              --Advisory-->            writeback
    every stage        --Disposition-->         the record store (exactly one per message)

Only ``InboundMessage`` may carry identifiable data, and it is only ever stored
encrypted. Everything downstream of de-identification is pseudonymous.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
PSEUDONYM_SYSTEM = "urn:wardgate:pseudonym"
"""Identifier system of a subject reference that holds a pseudonym (replaced at egress)."""


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Contract):
    """Where a message came from: the adapter kind and the sender's name (MSH-3^MSH-4)."""

    kind: Literal["mllp", "kafka", "fhir", "dicom", "demo"]
    name: str


class InboundMessage(_Contract):
    """Produced by ingest after the durable journal commit; consumed by normalize.

    ``id`` is the journal sequence number; ``control_id`` the sender's MSH-10.
    """

    id: int
    control_id: str
    source: Source
    received_at: datetime
    content_type: Literal["hl7v2", "fhir+json", "dicom"]
    payload: bytes
    sha256: str


class DeidReportEntry(_Contract):
    """One de-identification action: where, what was done, by which rule. Never the value.

    ``category`` is the kind of identifier the rule is about (``name``, ``phone``,
    ``date``...; None for fail-closed removals of unclassified data); ``count`` how many
    times this (path, action, rule, category) happened in the record.
    """

    path: str
    action: Literal["removed", "pseudonymized", "shifted", "generalized", "scrubbed", "kept"]
    rule: str
    category: str | None = None
    count: int = 1


class DeidentifiedRecord(_Contract):
    """Produced by normalize + de-identify; consumed by infer. Contains no PHI."""

    schema_version: int = SCHEMA_VERSION
    message_id: int
    message_type: str
    subject: str = Field(description="keyed HMAC-SHA256 pseudonym of the patient")
    bundle: dict[str, Any] = Field(description="de-identified FHIR R4 Bundle (JSON)")
    report: list[DeidReportEntry]


class ObservationFact(_Contract):
    """A single de-identified coded observation, the unit of a subject's feature history."""

    system: str
    code: str
    value: float | None = None
    value_code: str | None = None
    unit: str | None = None
    effective: datetime


class FeatureValue(_Contract):
    """One model input with the provenance of the value that filled it."""

    name: str
    value: float
    unit: str | None = None
    source_system: str
    source_code: str
    effective: datetime


class InferenceRequest(_Contract):
    """Produced by infer for the sandbox: one row of features for one subject."""

    model_id: str
    model_version: str
    message_id: int
    subject: str
    features: list[FeatureValue]


class InferenceResult(_Contract):
    """Produced by the sandbox worker: the model's named outputs for one request row."""

    model_id: str
    model_version: str
    message_id: int
    subject: str
    outputs: dict[str, float]


class AdvisoryKind(StrEnum):
    RISK = "risk"
    ISSUE = "issue"
    OBSERVATION = "observation"


class Advisory(_Contract):
    """Produced by infer; consumed by writeback. Pseudonymous until egress.

    ``resources`` are FHIR R4 resources (status preliminary) whose subject is a
    logical reference by the pseudonym identifier; writeback re-attaches the real
    identifier only when it addresses a destination.
    """

    schema_version: int = SCHEMA_VERSION
    message_id: int
    model_id: str
    model_version: str
    subject: str
    kind: AdvisoryKind
    score: float
    interpretation: str
    explanation: list[str]
    resources: list[dict[str, Any]]
    shadow: bool = Field(
        default=False, description="computed by a model in shadow mode: recorded, never written"
    )


class Outcome(StrEnum):
    WRITTEN_BACK = "written_back"
    SHADOWED = "shadowed"
    FILTERED = "filtered"
    DEAD_LETTERED = "dead_lettered"


class Disposition(_Contract):
    """The one final outcome of an accepted message, with the reason."""

    message_id: int
    outcome: Outcome
    reason: str
    destinations: list[str] = Field(default_factory=list)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
