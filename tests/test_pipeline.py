"""The walking skeleton end to end: MLLP in, NEWS2 advisories out, against a real gateway."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest

from adapters import MllpClient, ack_code
from tests.conftest import GatewayProcess, http_json
from tests.hl7_samples import VITALS_HIGH, VITALS_NORMAL, adt, oru

NEWS2_CODE = "http://snomed.info/sct|1104051000000101"
QSOFA_CODE = "https://wardgate.dev/CodeSystem/score|qsofa"


def model_resources(resources: list[dict[str, Any]], model_id: str) -> list[dict[str, Any]]:
    """The advisory resources one model wrote (its Device agent names it on the Provenance)."""
    provenance = [
        r
        for r in resources
        if r["resourceType"] == "Provenance" and f" {model_id} " in r["agent"][0]["who"]["display"]
    ]
    targets = {t["reference"].removeprefix("urn:uuid:") for p in provenance for t in p["target"]}
    return [r for r in resources if r in provenance or r["id"] in targets]


def send(port: int, messages: list[bytes]) -> list[bytes]:
    async def main() -> list[bytes]:
        async with MllpClient("127.0.0.1", port) as client:
            return [await client.send(m) for m in messages]

    return asyncio.run(main())


def err_segment(ack: bytes) -> str:
    return next(s for s in ack.decode().split("\r") if s.startswith("ERR"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gateway = GatewayProcess(tmp_path_factory.mktemp("pipeline") / "data").start()
    yield gateway
    assert gateway.stop() == 0


def test_vitals_become_a_news2_observation_risk_assessment_and_provenance(
    gw: GatewayProcess,
) -> None:
    acks = send(gw.mllp_port, [adt("P-ADT-1", "MRN1001"), oru("P-ORU-1", "MRN1001", VITALS_HIGH)])
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    records = gw.wait_disposed(["P-ADT-1", "P-ORU-1"])
    assert records["P-ADT-1"]["disposition"]["outcome"] == "filtered"
    oru_record = records["P-ORU-1"]
    assert oru_record["disposition"]["outcome"] == "written_back"
    news2 = model_resources(oru_record["advisories"], "news2")
    types = sorted(r["resourceType"] for r in news2)
    assert types == ["Observation", "Provenance", "RiskAssessment"]
    qsofa = model_resources(oru_record["advisories"], "qsofa")  # RR 26, SBP 88, confusion
    assert sorted(r["resourceType"] for r in qsofa) == types
    assert len(oru_record["advisories"]) == len(news2) + len(qsofa)

    status, bundle = http_json(
        f"{gw.url}/fhir/Observation?code={NEWS2_CODE}&subject=urn:id:TESTHOSP|MRN1001"
    )
    assert status == 200 and bundle["type"] == "searchset" and bundle["total"] == 1
    obs = bundle["entry"][0]["resource"]
    # RR 26 (3) + SpO2 90 (3) + oxygen (2) + SBP 88 (3) + HR 135 (3) + T 39.5 (2) + confusion (3)
    assert obs["status"] == "preliminary" and obs["valueInteger"] == 19
    assert obs["subject"]["identifier"] == {"system": "urn:id:TESTHOSP", "value": "MRN1001"}

    status, bundle = http_json(
        f"{gw.url}/fhir/RiskAssessment?code={NEWS2_CODE}&subject=urn:id:TESTHOSP|MRN1001"
    )
    assert status == 200 and bundle["total"] == 1
    risk = bundle["entry"][0]["resource"]
    assert risk["status"] == "preliminary"
    assert risk["prediction"][0]["qualitativeRisk"]["text"] == "high"

    status, bundle = http_json(
        f"{gw.url}/fhir/RiskAssessment?code={QSOFA_CODE}&subject=urn:id:TESTHOSP|MRN1001"
    )
    assert status == 200 and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["prediction"][0]["qualitativeRisk"]["text"] == "positive"

    status, bundle = http_json(f"{gw.url}/fhir/Provenance")
    assert any("news2" in str(e["resource"]["agent"]) for e in bundle["entry"])


def test_the_record_shows_what_the_model_saw_and_it_is_deidentified(gw: GatewayProcess) -> None:
    send(gw.mllp_port, [oru("P-ORU-2", "MRN1002", VITALS_NORMAL)])
    record = gw.wait_disposed(["P-ORU-2"])["P-ORU-2"]
    seen = str(record["deidentified"])
    assert "MRN1002" not in seen and "TESTPERSON" not in seen and "ALICE" not in seen
    patient = next(
        e["resource"]
        for e in record["deidentified"]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["id"].startswith("v1-")


def test_a_repeated_control_id_is_acknowledged_again_and_processed_once(gw: GatewayProcess) -> None:
    message = oru("P-DUP-1", "MRN1003", VITALS_NORMAL)
    acks = send(gw.mllp_port, [message, message])
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    gw.wait_disposed(["P-DUP-1"])
    for code in (NEWS2_CODE, QSOFA_CODE):  # one per model, not one per copy of the message
        status, bundle = http_json(
            f"{gw.url}/fhir/RiskAssessment?code={code}&subject=urn:id:TESTHOSP|MRN1003"
        )
        assert status == 200 and bundle["total"] == 1
    status, bundle = http_json(f"{gw.url}/fhir/RiskAssessment?subject=urn:id:TESTHOSP|MRN1003")
    assert status == 200 and bundle["total"] == 2


def test_same_control_id_from_another_sender_is_a_different_message(gw: GatewayProcess) -> None:
    send(
        gw.mllp_port,
        [
            oru("P-SAME-1", "MRN1004", VITALS_NORMAL),
            oru("P-SAME-1", "MRN1004", VITALS_NORMAL, sender="LIS2^OTHER"),
        ],
    )
    status, body = http_json(f"{gw.url}/records/P-SAME-1")
    assert status == 409 and body["resourceType"] == "OperationOutcome"
    status, body = http_json(f"{gw.url}/records/P-SAME-1?sender=LIS2^OTHER")
    assert status == 200


def test_unhandled_message_type_is_accepted_then_filtered_with_the_reason(
    gw: GatewayProcess,
) -> None:
    [ack] = send(gw.mllp_port, [adt("P-A03-1", "MRN1005", event="A03")])
    assert ack_code(ack) == "AA"
    record = gw.wait_disposed(["P-A03-1"])["P-A03-1"]
    assert record["disposition"]["outcome"] == "filtered"
    assert "ADT^A03" in record["disposition"]["reason"]


def test_incomplete_vitals_are_filtered_naming_the_missing_inputs(gw: GatewayProcess) -> None:
    send(gw.mllp_port, [oru("P-PART-1", "MRN1006", {"rr": 18, "hr": 80})])
    reason = gw.wait_disposed(["P-PART-1"])["P-PART-1"]["disposition"]["reason"]
    assert "missing inputs" in reason and "spo2" in reason


def test_partial_vitals_combine_with_the_subjects_recent_history(gw: GatewayProcess) -> None:
    first = {k: v for k, v in VITALS_NORMAL.items() if k != "hr"}
    send(
        gw.mllp_port,
        [
            oru("P-HIST-1", "MRN1007", first, when="20240301100000"),
            oru("P-HIST-2", "MRN1007", {"hr": 135}, when="20240301103000"),
        ],
    )
    records = gw.wait_disposed(["P-HIST-1", "P-HIST-2"])
    # no heart rate yet: no NEWS2 (qSOFA, which needs none, scored the first message alone)
    assert model_resources(records["P-HIST-1"]["advisories"], "news2") == []
    assert len(model_resources(records["P-HIST-1"]["advisories"], "qsofa")) == 3
    assert records["P-HIST-2"]["disposition"]["outcome"] == "written_back"
    news2 = model_resources(records["P-HIST-2"]["advisories"], "news2")
    obs = next(r for r in news2 if r["resourceType"] == "Observation")
    assert obs["valueInteger"] == 3  # HR 135 scores 3; everything else in range


@pytest.mark.parametrize(
    ("frame", "code", "err_code", "text"),
    [
        (b"PID|1||X\r", "AR", "100", "MSH"),
        (b"MSH|^~\\&|A|B|C|D|20240101|||C1|P|2.5.1\r", "AR", "101", "MSH-9"),
        (b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01||P|2.5.1\r", "AR", "101", "MSH-10"),
        (b"MSH|^^^^|A|B|C|D|20240101||ORU^R01|C2|P|2.5.1\r", "AR", "102", "MSH-2"),
    ],
)
def test_bad_input_gets_an_error_ack_with_the_reason_and_no_patient_data(
    gw: GatewayProcess, frame: bytes, code: str, err_code: str, text: str
) -> None:
    [ack] = send(gw.mllp_port, [frame + b"PID|1||SECRETMRN^^^H^MR||SECRETNAME\r"])
    assert ack_code(ack) == code
    assert text in ack.decode().split("\r")[1]
    assert err_segment(ack).split("|")[3].startswith(err_code)
    assert b"SECRET" not in ack


def test_a_value_fhir_cannot_carry_is_dead_lettered_naming_the_element(
    gw: GatewayProcess,
) -> None:
    """A 100,000-digit decimal once passed validation and then stalled the stage for good
    (the batch could never be written); now the check refuses it and the rest flows on."""
    huge = oru("P-HUGE-1", "MRN1020", VITALS_NORMAL).replace(
        b"|NM|9279-1^Respiratory rate^LN||16|", b"|SN|9279-1^Respiratory rate^LN||^9E+99999|"
    )
    assert b"9E+99999" in huge
    acks = send(gw.mllp_port, [huge, oru("P-HUGE-2", "MRN1020", VITALS_NORMAL)])
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    records = gw.wait_disposed(["P-HUGE-1", "P-HUGE-2"])
    dead = records["P-HUGE-1"]["disposition"]
    assert dead["outcome"] == "dead_lettered"
    assert dead["reason"] == "FHIR validation failed: Observation.valueQuantity.value (decimal)"
    assert records["P-HUGE-2"]["disposition"]["outcome"] == "written_back"


def test_health_readiness_and_metrics(gw: GatewayProcess) -> None:
    send(gw.mllp_port, [oru("P-MET-1", "MRN1010", VITALS_NORMAL)])
    gw.wait_disposed(["P-MET-1"])
    time.sleep(1.5)  # the pipeline publishes its metrics once a second
    assert http_json(f"{gw.url}/healthz") == (200, {"status": "ok"})
    status, ready = http_json(f"{gw.url}/readyz")
    assert status == 200 and ready["models"]["news2"]["provider"] == "CPUExecutionProvider"
    with urllib.request.urlopen(f"{gw.url}/metrics") as resp:
        text = resp.read().decode()
    assert "wardgate_ack_seconds_bucket" in text  # from the ingest process
    assert 'wardgate_messages_total{outcome="accepted",stage="ingest"}' in text
    assert 'stage="writeback"' in text  # merged from the pipeline process
    assert "wardgate_model_info{" in text


def test_no_route_can_update_or_delete_an_advisory(gw: GatewayProcess) -> None:
    for method in ("PUT", "DELETE", "POST", "PATCH"):
        req = urllib.request.Request(f"{gw.url}/fhir/Observation/x", method=method, data=b"{}")
        try:
            urllib.request.urlopen(req)
            raise AssertionError(f"{method} succeeded")
        except urllib.error.HTTPError as err:
            assert err.code in (404, 405)
            assert b"OperationOutcome" in err.read()


def test_unknown_resource_type_and_bad_search_get_operation_outcomes(gw: GatewayProcess) -> None:
    status, body = http_json(f"{gw.url}/fhir/Patient")
    assert status == 404 and body["resourceType"] == "OperationOutcome"
    status, body = http_json(f"{gw.url}/fhir/Observation?subject=MRN1001")
    assert status == 400 and "system|value" in body["issue"][0]["diagnostics"]
