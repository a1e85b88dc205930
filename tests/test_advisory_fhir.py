"""Advisories are valid FHIR R4 by construction, checked once per model (ADR 6).

``build_advisories`` no longer validates every message's resources with fhir.resources;
instead every band of every reference model is validated here and, for any model the
gateway loads, once at start-up (``check_advisory_mapping``). A model whose advisories
would not be valid is not used: its messages are filtered with the reason. A score that
cannot become a FHIR integer dead-letters its message instead of stopping the stage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B import get_fhir_model_class

from gateway._infer import InferStage
from gateway._metrics import Metrics
from gateway._store import Store
from inference import (
    REFERENCE_MODELS,
    ModelManifest,
    build_advisories,
    kdigo_manifest,
    news2_manifest,
    qsofa_manifest,
)
from inference._advisory import check_advisory_mapping
from inference._engine import RowFailure
from schemas import DeidentifiedRecord, InferenceRequest, InferenceResult
from security.audit import AuditLog

MANIFESTS = {m.id: m for m in (news2_manifest(), qsofa_manifest(), kdigo_manifest())}
SUBJECT = "v1-" + "ab" * 20


def request(manifest: ModelManifest, message_id: int = 7) -> InferenceRequest:
    return InferenceRequest(
        model_id=manifest.id,
        model_version=manifest.version,
        message_id=message_id,
        subject=SUBJECT,
        features=[],
    )


def outputs(manifest: ModelManifest, band: int, score: float = 5.0) -> dict[str, float]:
    values = {name: 1.0 for name in manifest.outputs}
    values[manifest.advisory.score_output] = score
    values[manifest.advisory.band_output] = float(band)
    return values


def test_every_reference_model_is_covered() -> None:
    assert set(MANIFESTS) == set(REFERENCE_MODELS)


@pytest.mark.parametrize("model_id", sorted(MANIFESTS))
def test_every_band_of_every_reference_model_is_valid_r4(model_id: str) -> None:
    manifest = MANIFESTS[model_id]
    for band in [*manifest.advisory.band_labels, 99]:
        for shadow in (False, True):
            advisory = build_advisories(
                manifest, request(manifest), outputs(manifest, band), shadow=shadow
            )
            assert advisory.shadow is shadow
            kinds = [r["resourceType"] for r in advisory.resources]
            assert kinds == ["Observation", "RiskAssessment", "Provenance"]
            for resource in advisory.resources:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert check_advisory_mapping(manifest) is None


def _with_code(manifest: ModelManifest, code: str) -> ModelManifest:
    mapping = manifest.advisory
    bad = mapping.model_copy(
        update={"observation_code": mapping.observation_code.model_copy(update={"code": code})}
    )
    return manifest.model_copy(update={"advisory": bad})


def test_a_mapping_that_would_make_invalid_fhir_is_named_by_element() -> None:
    reason = check_advisory_mapping(_with_code(news2_manifest(), "two  spaces"))
    assert (
        reason
        == "advisory is not valid FHIR: Observation.code.coding.0.code (string_pattern_mismatch)"
    )


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, 2.0**31])
def test_a_score_that_is_no_fhir_integer_is_refused(score: float) -> None:
    manifest = news2_manifest()
    with pytest.raises(ValueError, match="not a finite number in integer range"):
        build_advisories(manifest, request(manifest), outputs(manifest, 0, score=score))


class StubEngine:
    """Scores every row with fixed outputs; ``nan_for`` rows get a NaN score."""

    def __init__(self, manifests: list[ModelManifest], nan_for: set[int]) -> None:
        self.models = manifests
        self.nan_for = nan_for

    def status(self) -> dict[str, dict[str, Any]]:
        return {m.id: {"enforcement": {}} for m in self.models}

    def manifest(self, model_id: str) -> ModelManifest:
        return next(m for m in self.models if m.id == model_id)

    def score_models(
        self, batches: Mapping[str, list[InferenceRequest]]
    ) -> dict[str, list[InferenceResult | RowFailure]]:
        return {m: self._score(m, requests) for m, requests in batches.items()}

    def _score(
        self, model_id: str, requests: list[InferenceRequest]
    ) -> list[InferenceResult | RowFailure]:
        manifest = self.manifest(model_id)
        return [
            InferenceResult(
                model_id=r.model_id,
                model_version=r.model_version,
                message_id=r.message_id,
                subject=r.subject,
                outputs=outputs(manifest, 0, math.nan if r.message_id in self.nan_for else 3),
            )
            for r in requests
        ]


def vitals_record(message_id: int, subject: str) -> DeidentifiedRecord:
    """Respiratory rate, systolic blood pressure and GCS: the qSOFA inputs."""
    codes = {"9279-1": (18, "/min"), "8480-6": (122, "mm[Hg]"), "9269-2": (15, None)}
    entries: list[dict[str, Any]] = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "effectiveDateTime": datetime(2024, 1, 1, 8, tzinfo=UTC).isoformat(),
                "valueQuantity": {"value": value, **({"code": unit} if unit else {})},
            }
        }
        for code, (value, unit) in codes.items()
    ]
    return DeidentifiedRecord(
        message_id=message_id,
        message_type="ORU^R01",
        subject=subject,
        bundle={"resourceType": "Bundle", "type": "collection", "entry": entries},
        report=[],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "wardgate.db")
    yield s
    s.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(tmp_path / "audit.log", Ed25519PrivateKey.generate()) as log:
        yield log


def run_infer(stage: InferStage, store: Store, records: list[DeidentifiedRecord]) -> None:
    with store.transaction() as tx:
        for record in records:
            tx.produce("deidentified", record.subject, record.model_dump_json())
    assert stage.step() == len(records)


def test_a_model_with_invalid_advisories_is_not_used(store: Store, audit: AuditLog) -> None:
    bad = _with_code(qsofa_manifest(), "two  spaces")
    engine: Any = StubEngine([bad], nan_for=set())
    stage = InferStage(store, engine, audit, Metrics(), {})
    run_infer(stage, store, [vitals_record(1, SUBJECT)])
    disposition = store.disposition(1)
    assert disposition is not None and disposition.outcome == "filtered"
    assert disposition.reason.startswith("qsofa: advisory is not valid FHIR: Observation.code")
    assert store.read("advisories", 0, 10) == []


def test_a_nan_score_dead_letters_only_its_message(store: Store, audit: AuditLog) -> None:
    engine: Any = StubEngine([qsofa_manifest()], nan_for={2})
    stage = InferStage(store, engine, audit, Metrics(), {})
    run_infer(stage, store, [vitals_record(1, SUBJECT), vitals_record(2, "v1-" + "cd" * 20)])
    dead = store.disposition(2)
    assert dead is not None and dead.outcome == "dead_lettered"
    assert dead.reason.startswith("qsofa: no advisory (output ")
    assert store.disposition(1) is None  # on its way to writeback
    (entry,) = store.read("advisories", 0, 10)
    assert '"message_id": 1' in entry.payload or '"message_id":1' in entry.payload
