"""Model trust and per-patient model settings, seen through a running gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters import MllpClient
from tests.conftest import http_json
from tests.hl7_samples import oru

NEWS2 = "1104051000000101"  # SNOMED CT code of the NEWS2 score Observation


def test_a_tampered_bundle_is_refused_audited_and_the_gateway_is_not_ready(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory("tamper").start()
    assert gw.stop() == 0
    bundles = sorted((gw.data_dir / "models").iterdir())
    assert [b.name for b in bundles] == ["kdigo_aki", "news2", "qsofa"]
    for bundle in bundles:  # every model tampered: none may load
        model = bundle / "model.onnx"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0x01
        model.write_bytes(bytes(data))
    gw.start(ready=False)
    status, body = http_json(f"{gw.url}/readyz")
    assert status == 503 and body["models"] == {}
    assert all("model.onnx" in body["refused_bundles"][b.name] for b in bundles)
    assert gw.stop() == 0
    trail = (gw.data_dir / "audit" / "pipeline.infer-writeback.log").read_text()
    assert '"bundle_refused"' in trail


def test_spo2_scale_2_applies_only_to_the_patients_configured_for_it(
    gateway_factory: Any,
) -> None:
    config = {
        "inference": {
            "news2_spo2_scale2_patients": [{"system": "urn:id:TESTHOSP", "value": "COPD1"}]
        }
    }
    gw = gateway_factory("scale2", config).start()
    # SpO2 88 % on air: scale 1 scores 3, scale 2 scores 0; everything else normal
    vitals = {
        "rr": 16,
        "spo2": 88,
        "o2": 0,
        "sbp": 125,
        "hr": 72,
        "temp": 37.0,
        "acvpu": "248234008",
    }

    async def send() -> None:
        async with MllpClient("127.0.0.1", gw.mllp_port) as client:
            await client.send(oru("S2-1", "COPD1", vitals))
            await client.send(oru("S2-2", "OTHER1", vitals))

    asyncio.run(send())
    records = gw.wait_disposed(["S2-1", "S2-2"])

    def score(cid: str) -> int:
        obs = next(
            r
            for r in records[cid]["advisories"]
            if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == NEWS2
        )
        return int(obs["valueInteger"])

    assert score("S2-1") == 0
    assert score("S2-2") == 3
    gw.stop()
