"""Per-model shadow mode and kill switch, changed at run time without a restart."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from adapters import MllpClient
from tests.conftest import http_json
from tests.hl7_samples import VITALS_HIGH, oru


def put_mode(url: str, model: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{url}/admin/models/{model}/mode",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def models_of(resources: list[dict[str, Any]]) -> set[str]:
    return {
        r["method"]["text"].split()[0] for r in resources if r["resourceType"] == "RiskAssessment"
    }


def test_shadow_then_off_then_active_without_a_restart(gateway_factory: Any) -> None:
    gw = gateway_factory("modes", {"inference": {"model_modes": {"kdigo_aki": "off"}}}).start()

    def send(cid: str) -> dict[str, Any]:
        async def main() -> None:
            async with MllpClient("127.0.0.1", gw.mllp_port) as client:
                await client.send(oru(cid, "MRN-MODES", VITALS_HIGH))

        asyncio.run(main())
        return gw.wait_disposed([cid])[cid]

    assert http_json(f"{gw.url}/admin/models")[1] == {
        "news2": "active",
        "qsofa": "active",
        "kdigo_aki": "off",
    }

    assert put_mode(gw.url, "news2", b'{"mode": "shadow"}') == (
        200,
        {"model": "news2", "mode": "shadow"},
    )
    record = send("MODE-1")
    assert record["disposition"]["outcome"] == "written_back"  # qSOFA still live
    assert models_of(record["advisories"]) == {"qsofa"}
    assert models_of(record["shadow_advisories"]) == {"news2"}  # computed and recorded
    status, bundle = http_json(f"{gw.url}/fhir/RiskAssessment?subject=urn:id:TESTHOSP|MRN-MODES")
    assert status == 200
    assert models_of([e["resource"] for e in bundle["entry"]]) == {"qsofa"}  # never served

    put_mode(gw.url, "qsofa", b'{"mode": "shadow"}')
    record = send("MODE-2")
    assert record["disposition"]["outcome"] == "shadowed"
    assert "news2, qsofa" in record["disposition"]["reason"]

    put_mode(gw.url, "news2", b'{"mode": "off"}')
    put_mode(gw.url, "qsofa", b'{"mode": "off"}')
    record = send("MODE-3")
    assert record["disposition"]["outcome"] == "filtered"
    assert "news2: switched off" in record["disposition"]["reason"]
    assert record["advisories"] == [] and record["shadow_advisories"] == []

    put_mode(gw.url, "news2", b'{"mode": "active"}')
    record = send("MODE-4")
    assert record["disposition"]["outcome"] == "written_back"
    assert models_of(record["advisories"]) == {"news2"}

    assert gw.stop() == 0
    trail = (gw.data_dir / "audit" / "gateway.log").read_text()
    assert trail.count('"model_mode"') == 5


def test_bad_mode_requests_get_operation_outcomes(gateway_factory: Any) -> None:
    gw = gateway_factory("badmodes").start()
    status, body = put_mode(gw.url, "nosuchmodel", b'{"mode": "off"}')
    assert status == 404 and body["resourceType"] == "OperationOutcome"
    status, body = put_mode(gw.url, "news2", b'{"mode": "sometimes"}')
    assert status == 400 and "active, shadow, off" in body["issue"][0]["diagnostics"]
    status, body = put_mode(gw.url, "news2", b"not json")
    assert status == 400
    gw.stop()
