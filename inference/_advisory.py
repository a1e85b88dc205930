"""Model outputs -> the advisory writeback sends: FHIR R4 resources, all ``preliminary``.

For a risk model the advisory holds three resources:
- an Observation carrying the score (``valueInteger``), coded as the manifest says;
- a RiskAssessment coded like the Observation (so a search by code tells models apart),
  whose ``prediction[0].qualitativeRisk.text`` is the band label and whose ``basis`` points
  at that Observation only;
- a Provenance naming the model (id, version) as a Device agent, targeting both.

The subject is a logical reference by the pseudonym identifier; writeback swaps in the real
identifier at egress. Ids are UUIDv5 of (model, version, message, subject, resource type),
so re-processing a message yields the same ids, and each resource also carries that id as a
business identifier for conditional create. References between the three resources use
``urn:uuid:<id>`` so writeback can post them together in one transaction Bundle. No patient
time appears anywhere: ``Provenance.recorded`` is the time of scoring (required by FHIR).

Validity (ADR 6): the resources are plain dicts, not validated per message. What varies
per message is valid by construction (UUIDs, the pseudonym, an integer score checked to be
finite and in range, the time of scoring); what comes from the manifest (codes, labels,
model id and version) is checked once per model by :func:`check_advisory_mapping`, which
builds an advisory for every band and validates it with the ``fhir.resources`` R4B models.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from inference._manifest import PLACEHOLDER, ModelManifest
from schemas import PSEUDONYM_SYSTEM, Advisory, AdvisoryKind, InferenceRequest

ADVISORY_ID_SYSTEM = "urn:wardgate:advisory"
_NAMESPACE = uuid.UUID("6f1d1e0c-8a52-5b57-9a0e-3c1f0b8b2d11")
_INT32 = 2**31 - 1


def resource_id(model_id: str, version: str, message_id: int, subject: str, kind: str) -> str:
    """Deterministic id of one advisory resource."""
    return str(uuid.uuid5(_NAMESPACE, f"{model_id}|{version}|{message_id}|{subject}|{kind}"))


def explain(manifest: ModelManifest, outputs: dict[str, float]) -> list[str]:
    """Which inputs drove the result, from the manifest's explanation mapping.

    ``parameter=sub-score`` for every component that added to the score (largest first),
    then each explanation rule whose output is > 0, its placeholders filled from outputs;
    ``explain_none`` when nothing applies. Only outputs are read, never features, so no
    patient time can reach the text.
    """
    mapping = manifest.advisory
    parts = [
        (int(outputs[out]), name)
        for out, name in mapping.component_outputs.items()
        if out in outputs and outputs[out] > 0
    ]
    parts.sort(key=lambda p: (-p[0], p[1]))
    lines = [f"{name}={score}" for score, name in parts]
    for rule in mapping.explanations:
        if outputs.get(rule.when, 0.0) > 0:
            lines.append(PLACEHOLDER.sub(lambda m: _show(outputs, m), rule.text))
    return lines or [mapping.explain_none]


def _show(outputs: dict[str, float], match: re.Match[str]) -> str:
    value = outputs.get(match.group(1))
    if value is None:
        return "?"
    spec = match.group(2)
    return format(value, spec) if spec else f"{value:g}"


def build_advisories(
    manifest: ModelManifest,
    request: InferenceRequest,
    outputs: dict[str, float],
    *,
    recorded: datetime | None = None,
    shadow: bool = False,
) -> Advisory:
    """One advisory (score Observation, RiskAssessment, Provenance) for one scored request.

    ``ValueError`` when the score or band output is not a finite number in FHIR's integer
    range (a model that misbehaves on this row).
    """
    mapping = manifest.advisory
    score = outputs[mapping.score_output]
    for name in (mapping.score_output, mapping.band_output):
        if not abs(outputs[name]) <= _INT32:  # NaN fails this too
            raise ValueError(f"output {name} is not a finite number in integer range")
    band = int(outputs[mapping.band_output])
    label = mapping.band_labels.get(band, f"band {band}")
    ids = {
        kind: resource_id(manifest.id, manifest.version, request.message_id, request.subject, kind)
        for kind in ("Observation", "RiskAssessment", "Provenance")
    }
    subject = {"identifier": {"system": PSEUDONYM_SYSTEM, "value": request.subject}}
    device = f"wardgate model {manifest.id} {manifest.version}"
    code = mapping.observation_code

    def identifier(kind: str) -> list[dict[str, str]]:
        return [{"system": ADVISORY_ID_SYSTEM, "value": ids[kind]}]

    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": ids["Observation"],
        "identifier": identifier("Observation"),
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "survey",
                    }
                ]
            }
        ],
        "code": {"coding": [code.model_dump(exclude_none=True)], "text": code.display},
        "subject": subject,
        "valueInteger": int(score),
        "interpretation": [{"text": label}],
        "device": {"display": device},
    }
    risk: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": ids["RiskAssessment"],
        "identifier": identifier("RiskAssessment"),
        "status": "preliminary",
        "subject": subject,
        "code": {"coding": [code.model_dump(exclude_none=True)], "text": code.display},
        "method": {"text": f"{manifest.id} {manifest.version}"},
        "basis": [{"reference": f"urn:uuid:{ids['Observation']}"}],
        "prediction": [{"qualitativeRisk": {"text": label}}],
        "note": [{"text": "Advisory only; computed by " + device}],
    }
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": ids["Provenance"],
        "target": [
            {"reference": f"urn:uuid:{ids['Observation']}"},
            {"reference": f"urn:uuid:{ids['RiskAssessment']}"},
        ],
        "recorded": _instant(recorded or datetime.now(UTC)),
        "agent": [{"who": {"type": "Device", "display": device}}],
    }
    return Advisory(
        message_id=request.message_id,
        model_id=manifest.id,
        model_version=manifest.version,
        subject=request.subject,
        kind=AdvisoryKind(mapping.kind),
        score=float(score),
        interpretation=label,
        explanation=explain(manifest, outputs),
        resources=[observation, risk, provenance],
        shadow=shadow,
    )


def check_advisory_mapping(manifest: ModelManifest) -> str | None:
    """Why this model's advisories would not be valid FHIR R4, or None when they are.

    Builds the advisory of every band the manifest labels (and of an unlabelled band) and
    validates each resource with its ``fhir.resources`` R4B model: everything an advisory
    takes from the manifest is covered, so :func:`build_advisories` need not validate per
    message. The reason names the resource, element and error type.
    """
    mapping = manifest.advisory
    request = InferenceRequest(
        model_id=manifest.id,
        model_version=manifest.version,
        message_id=1,
        subject="v1-" + "0" * 40,
        features=[],
    )
    unlabelled = max(mapping.band_labels, default=0) + 1
    for band in [*mapping.band_labels, unlabelled]:
        outputs = {name: 1.0 for name in manifest.outputs}
        outputs[mapping.band_output] = float(band)
        advisory = build_advisories(manifest, request, outputs)
        for resource in advisory.resources:
            kind = resource["resourceType"]
            try:
                get_fhir_model_class(kind).model_validate(resource)
            except ValidationError as exc:
                where = ".".join([kind, *(str(p) for p in exc.errors()[0]["loc"])])
                return f"advisory is not valid FHIR: {where} ({exc.errors()[0]['type']})"
    return None


def _instant(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
