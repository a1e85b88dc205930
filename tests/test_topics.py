"""What the stages write on the topics parses back to the contracts they wrote."""

from __future__ import annotations

import json

from gateway._infer import advisories_payload
from gateway._normalize_workers import _serialise
from gateway._writeback import _Envelope
from inference import build_advisories, news2_manifest, qsofa_manifest
from schemas import DeidentifiedRecord, DeidReportEntry, InferenceRequest


def test_a_record_is_serialised_once_and_parses_back_whole() -> None:
    record = DeidentifiedRecord(
        message_id=42,
        message_type="ORU^R01",
        subject="v1-" + "ab" * 20,
        bundle={"resourceType": "Bundle", "type": "collection", "entry": [{"x": 1.5, "é": "ü"}]},
        report=[DeidReportEntry(path="Patient.name", action="removed", rule="r", count=2)],
    )
    bundle, payload = _serialise(record)
    assert json.loads(bundle) == record.bundle
    assert DeidentifiedRecord.model_validate_json(payload) == record


def test_an_advisories_entry_parses_back_to_the_advisories() -> None:
    advisories = []
    for manifest in (news2_manifest(), qsofa_manifest()):
        request = InferenceRequest(
            model_id=manifest.id,
            model_version=manifest.version,
            message_id=7,
            subject="v1-" + "cd" * 20,
            features=[],
        )
        outputs = {name: 1.0 for name in manifest.outputs}
        advisories.append(build_advisories(manifest, request, outputs, shadow=True))
    body = _Envelope.model_validate_json(advisories_payload(7, advisories))
    assert body.message_id == 7 and body.advisories == advisories
