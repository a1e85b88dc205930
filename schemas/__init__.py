"""The typed contracts between wardgate's stages.

Every object that crosses a stage boundary (a bus topic, a process pipe, the API)
is one of these pydantic models. Stages import them from here and never import
each other's internals. ``SCHEMA_VERSION`` changes when a contract changes shape.
"""

from schemas._contracts import (
    PSEUDONYM_SYSTEM,
    SCHEMA_VERSION,
    Advisory,
    AdvisoryKind,
    DeidentifiedRecord,
    DeidReportEntry,
    Disposition,
    FeatureValue,
    InboundMessage,
    InferenceRequest,
    InferenceResult,
    ObservationFact,
    Outcome,
    Source,
)

__all__ = [
    "PSEUDONYM_SYSTEM",
    "SCHEMA_VERSION",
    "Advisory",
    "AdvisoryKind",
    "DeidReportEntry",
    "DeidentifiedRecord",
    "Disposition",
    "FeatureValue",
    "InboundMessage",
    "InferenceRequest",
    "InferenceResult",
    "ObservationFact",
    "Outcome",
    "Source",
]
