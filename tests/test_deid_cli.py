"""``wardgate deid FILE|-`` and ``POST /deid``: the pipeline's de-identification on demand.

Both take HL7 v2 or FHIR JSON, use the keys under the data dir, print or return the
de-identified Bundle (and its report), store nothing, and never echo input in errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gateway._api import ApiContext, create_app
from gateway._cli import app
from gateway._config import DeidConfig
from security import load_keyring

PLANTED = ("QXMRN4821", "ZYXWFAMILY", "QWERTGIVEN", "617-555-0143", "MARIBELQ")
HL7 = (
    b"MSH|^~\\&|LIS|HOSP|WG|WG|20240301101500||ORU^R01^ORU_R01|CLI1|P|2.5.1\r"
    b"PID|1||QXMRN4821^^^HOSP^MR||ZYXWFAMILY^QWERTGIVEN||19600101|F|||1 Elm St^^Town^MA^02139"
    b"||617-555-0143\r"
    b"OBR|1||CLI1|V^Vitals^L|||20240301101000\r"
    b"OBX|1|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F|||20240301101000\r"
    b"NTE|1||Daughter MARIBELQ called from 617-555-0143 about the dose.\r"
)
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:mrn", "value": "QXMRN4821"}],
    "name": [{"family": "ZYXWFAMILY", "given": ["QWERTGIVEN"]}],
    "gender": "female",
}


def _no_planted(text: str) -> None:
    for value in PLANTED:
        assert value not in text


def _run(args: list[str], stdin: bytes | None = None) -> Any:
    return CliRunner().invoke(app, ["deid", *args], input=stdin)


def test_cli_turns_an_hl7_file_into_a_deidentified_bundle_on_stdout(tmp_path: Path) -> None:
    msg = tmp_path / "oru.hl7"
    msg.write_bytes(HL7)
    result = _run([str(msg), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Observation"}
    _no_planted(result.stdout)
    assert "Daughter" not in result.stdout  # free text is removed by default


def test_cli_report_goes_to_stderr_and_names_rules_not_values(tmp_path: Path) -> None:
    msg = tmp_path / "oru.hl7"
    msg.write_bytes(HL7)
    result = _run([str(msg), "--report", "--free-text", "tag", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stderr)
    assert {"path", "action", "rule", "count"} <= set(report[0])
    assert any(e["action"] == "scrubbed" and e.get("category") == "name" for e in report)
    _no_planted(result.stderr)
    _no_planted(result.stdout)
    assert "Daughter [NAME] called from [PHONE] about the dose." in result.stdout


def test_cli_reads_fhir_json_from_stdin(tmp_path: Path) -> None:
    result = _run(["-", "--data-dir", str(tmp_path)], json.dumps(PATIENT).encode())
    assert result.exit_code == 0, result.output
    patient = json.loads(result.stdout)["entry"][0]["resource"]
    assert patient == {"resourceType": "Patient", "id": patient["id"], "gender": "female"}


def test_cli_pseudonyms_follow_the_keys_in_the_data_dir(tmp_path: Path) -> None:
    def subject(data_dir: Path) -> str:
        result = _run(["-", "--data-dir", str(data_dir)], json.dumps(PATIENT).encode())
        return str(json.loads(result.stdout)["entry"][0]["resource"]["id"])

    assert subject(tmp_path / "a") == subject(tmp_path / "a")
    assert subject(tmp_path / "a") != subject(tmp_path / "b")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"QXMRN4821 is not a message", "neither HL7 v2"),
        (b'{"resourceType": "Patient", "name": "QXMRN4821",', "not valid JSON"),
        (json.dumps({**PATIENT, "identifier": []}).encode(), "no patient identifier"),
        (HL7.replace(b"ORU^R01^ORU_R01", b"QXMRN4821^Z99"), "not handled"),
    ],
)
def test_cli_refuses_bad_input_without_echoing_it(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    result = _run(["-", "--data-dir", str(tmp_path)], payload)
    assert result.exit_code == 1
    assert reason in result.stderr
    assert "QXMRN4821" not in result.output


def _patient(stdout: str) -> dict[str, Any]:
    entries = json.loads(stdout)["entry"]
    return next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")


def test_cli_profile_chooses_what_survives(tmp_path: Path) -> None:
    msg = tmp_path / "oru.hl7"
    msg.write_bytes(HL7)
    harbor = _run([str(msg), "--data-dir", str(tmp_path)])
    limited = _run([str(msg), "--profile", "limited-data-set", "--data-dir", str(tmp_path)])
    assert harbor.exit_code == 0 and limited.exit_code == 0, limited.output
    assert _patient(harbor.stdout)["address"] == [{"state": "MA", "postalCode": "021"}]
    assert _patient(limited.stdout)["address"] == [
        {"city": "Town", "state": "MA", "postalCode": "02139"}
    ]
    assert _patient(limited.stdout)["birthDate"] == "1960-01-01"  # unshifted
    _no_planted(limited.stdout)


def test_cli_profile_from_a_file_and_unknown_profiles(tmp_path: Path) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("version: 1\nextends: limited-data-set\ndates: shift\n")
    msg = tmp_path / "oru.hl7"
    msg.write_bytes(HL7)
    mine = _run([str(msg), "--profile", str(profile), "--data-dir", str(tmp_path)])
    assert mine.exit_code == 0, mine.output
    assert _patient(mine.stdout)["birthDate"] != "1960-01-01"
    assert _patient(mine.stdout)["address"][0]["city"] == "Town"
    unknown = _run([str(msg), "--profile", "safe-harbour", "--data-dir", str(tmp_path)])
    assert unknown.exit_code == 2
    assert "safe-harbor, limited-data-set" in unknown.stderr
    profile.write_text("version: 1\nextends: safe-harbor\nresources: {Patient: {name: string}}")
    bad = _run([str(msg), "--profile", str(profile), "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2
    assert "resources.Patient.name: a direct identifier cannot be allowlisted" in bad.stderr


# -- POST /deid ---------------------------------------------------------------------


def _dicom_file(path: Path) -> Path:
    """pydicom's CT_small with the planted MRN and name and an issuer, as a Part 10 file."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.PatientID, ds.PatientName, ds.IssuerOfPatientID = "QXMRN4821", "ZYXWFAMILY^QWERTGIVEN", ""
    ds.StudyDate = "20240301"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_cli_deidentifies_a_dicom_file_with_the_fhir_engines_pseudonym(tmp_path: Path) -> None:
    from pydicom import dcmread

    src, out = _dicom_file(tmp_path / "in.dcm"), tmp_path / "out.dcm"
    data = tmp_path / "data"
    args = [str(src), "--out", str(out), "--issuer-system", "urn:mrn", "--data-dir", str(data)]
    result = _run([*args, "--dicom-dates", "shift", "--report"])
    assert result.exit_code == 0, result.output
    written = out.read_bytes()
    _no_planted(written.decode("latin-1") + result.output)
    ds = dcmread(out)
    keys = load_keyring(data)
    expected = DeidConfig().deidentifier(keys).pseudonym("urn:mrn", "QXMRN4821")
    assert ds.PatientID == expected and ds.PatientIdentityRemoved == "YES"
    assert ds.StudyDate != "20240301" and ds.StudyDate[:2] in ("20", "19")  # shifted, kept
    assert any(e["path"] == "PatientName" for e in json.loads(result.stderr))


def test_cli_dicom_needs_an_out_path_and_a_patient_system(tmp_path: Path) -> None:
    src = _dicom_file(tmp_path / "in.dcm")
    data = ["--data-dir", str(tmp_path / "data")]
    no_out = _run([str(src), *data])
    assert no_out.exit_code == 2 and "--out" in no_out.stderr
    no_system = _run([str(src), "--out", str(tmp_path / "o.dcm"), *data])
    assert no_system.exit_code == 1 and "default_issuer_system" in no_system.stderr
    assert not (tmp_path / "o.dcm").exists()
    _no_planted(no_system.output)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    ctx = ApiContext(
        store=None,  # type: ignore[arg-type]  # /deid touches no store
        journal=None,  # type: ignore[arg-type]
        vault=None,  # type: ignore[arg-type]
        keys=load_keyring(tmp_path),
        metrics_render=lambda: b"",
        readiness=lambda: (True, {}),
        deid=DeidConfig(free_text="tag"),
    )
    return TestClient(create_app(ctx))


def test_post_deid_hl7_returns_bundle_and_report(client: TestClient) -> None:
    r = client.post("/deid", content=HL7, headers={"content-type": "x-application/hl7-v2+er7"})
    assert r.status_code == 200
    body = r.json()
    assert body["bundle"]["resourceType"] == "Bundle"
    assert any(e["action"] == "scrubbed" for e in body["report"])
    assert "[NAME]" in r.text
    _no_planted(r.text)


def test_post_deid_fhir_json_and_free_text_choice(client: TestClient) -> None:
    r = client.post("/deid?free_text=remove", json=PATIENT)
    assert r.status_code == 200
    _no_planted(r.text)
    bad = client.post("/deid?free_text=keep", json=PATIENT)
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("payload", "content_type", "status"),
    [
        (b'{"resourceType": "Patient", "name": "QXMRN4821"', "application/fhir+json", 422),
        (b"QXMRN4821", "text/plain", 422),
        (b"QXMRN4821", "application/xml", 415),
        (b"   ", "text/plain", 400),
        (b"MSH" + b"x" * (1024 * 1024), "text/plain", 413),
    ],
)
def test_post_deid_bad_input_is_an_operation_outcome_without_the_input(
    client: TestClient, payload: bytes, content_type: str, status: int
) -> None:
    r = client.post("/deid", content=payload, headers={"content-type": content_type})
    assert r.status_code == status
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "QXMRN4821" not in r.text


def test_post_deid_profile_is_a_builtin_or_the_configured_one(client: TestClient) -> None:
    hl7 = {"content-type": "x-application/hl7-v2+er7"}
    r = client.post("/deid?profile=limited-data-set&free_text=remove", content=HL7, headers=hl7)
    assert r.status_code == 200
    patient = next(
        e["resource"]
        for e in r.json()["bundle"]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["address"] == [{"city": "Town", "state": "MA", "postalCode": "02139"}]
    _no_planted(r.text)
    for bad in ("/etc/passwd", "safe-harbour", "../profiles/safe-harbor.yaml"):
        refused = client.post("/deid", params={"profile": bad}, content=HL7, headers=hl7)
        assert refused.status_code == 400
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert bad not in refused.text
