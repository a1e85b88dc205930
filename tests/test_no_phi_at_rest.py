"""No PHI at rest in plaintext or in logs: plant identifiers everywhere, then search."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from adapters import MllpClient, ack_code
from tests.conftest import http_json

NEWS2_CODE = "http://snomed.info/sct|1104051000000101"

# Distinctive planted values: every one must be absent from every file after the run.
PLANTED = {
    "mrn": "ZQMRN48213",
    "ssn": "987-65-4329",
    "family": "QUIXWORTHY",
    "given": "ZEBEDIAH",
    "mother": "MAIDENVELTRAP",
    "street": "77 ZYXWV LANE",
    "city": "KLOPSTADT",
    "zip": "90210-4431",
    "phone": "5553829174",
    "email": "ZEB@QUIXMAIL.EXAMPLE",
    "account": "ACCT771245",
    "dl": "DLX9912837",
    "nk_family": "KINSWORTHX",
    "nk_given": "ORLANDINE",
    "nk_phone": "5559912345",
    "nk_street": "12 KINFOLK ROW",
    "employer": "ACMEWIDGETZ",
    "attending": "DRFROBISHER",
    "visit": "VN5562219",
    "note": "PATIENT SAYS NEIGHBOUR BARTHOLOMEWZ VISITS",
    "obs_text": "SPOKE WITH DAUGHTER CORNELIAX",
    "birth_place": "SNORKVILLE",
}


def _message(cid: str) -> bytes:
    p = PLANTED
    segs = [
        f"MSH|^~\\&|LIS|TESTHOSP|WARDGATE|WARDGATE|20240301101500||ORU^R01^ORU_R01|{cid}|P|2.5.1",
        f"PID|1|{p['mrn']}|{p['mrn']}^^^TESTHOSP^MR~{p['ssn']}^^^SSA^SS|ALT{p['mrn']}|"
        f"{p['family']}^{p['given']}^Q^JR^MR||19600101|M|{p['family']}ALIAS^{p['given']}|2106-3|"
        f"{p['street']}^APT 9^{p['city']}^CA^{p['zip']}^USA||{p['phone']}^PRN^PH^{p['email']}|"
        f"{p['phone']}|en|M|CHR|{p['account']}|{p['ssn']}|{p['dl']}^CA|{p['mother']}||"
        f"{p['birth_place']}",
        f"NK1|1|{p['nk_family']}^{p['nk_given']}|SPO^Spouse|{p['nk_street']}^^{p['city']}^CA^"
        f"{p['zip']}|{p['nk_phone']}|{p['nk_phone']}||||{p['employer']}",
        f"PV1|1|I|WARD1^101^A||||{p['attending']}^SMITH^J|{p['attending']}^JONES|||||||||"
        f"{p['attending']}^REF|INP|{p['visit']}",
        f"OBR|1||{cid}|VITALS^Vital signs^L|||20240301101000",
        f"NTE|1||{p['note']}",
        "OBX|1|NM|9279-1^Respiratory rate^LN||18|/min^^UCUM|||||F|||20240301101000",
        "OBX|2|NM|59408-5^SpO2^LN||97|%^^UCUM|||||F|||20240301101000",
        "OBX|3|NM|3151-8^O2 flow^LN||0|L/min^^UCUM|||||F|||20240301101000",
        "OBX|4|NM|8480-6^Systolic BP^LN||120|mm[Hg]^^UCUM|||||F|||20240301101000",
        "OBX|5|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F|||20240301101000",
        "OBX|6|NM|8310-5^Temperature^LN||37.2|Cel^^UCUM|||||F|||20240301101000",
        "OBX|7|CWE|1104441000000107^ACVPU^SCT||248234008^^SCT||||||F|||20240301101000",
        f"OBX|8|TX|8251-1^Note^LN||{p['obs_text']}||||||F|||20240301101000",
        f"NTE|1||{p['note']}",
    ]
    return ("\r".join(segs) + "\r").encode()


def _all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(f, f.read_bytes()) for f in sorted(root.rglob("*")) if f.is_file()]


def test_planted_identifiers_appear_in_no_file_under_the_data_dir_nor_the_logs(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory("phi").start()

    async def send() -> list[str]:
        async with MllpClient("127.0.0.1", gw.mllp_port) as client:
            return [ack_code(await client.send(_message(f"PHI-{i}"))) for i in range(3)]

    assert asyncio.run(send()) == ["AA", "AA", "AA"]
    records = gw.wait_disposed(["PHI-0", "PHI-1", "PHI-2"])
    assert {r["disposition"]["outcome"] for r in records.values()} == {"written_back"}
    # the egress point re-identifies: the real MRN is served there, and only there
    status, bundle = http_json(
        f"{gw.url}/fhir/RiskAssessment?code={NEWS2_CODE}&subject=urn:id:TESTHOSP|{PLANTED['mrn']}"
    )
    assert status == 200 and bundle["total"] == 3
    assert gw.stop(signal.SIGTERM) == 0

    files = [*_all_bytes(gw.data_dir), (gw.log_path, gw.log_path.read_bytes())]
    assert len(files) > 5
    for path, data in files:
        lowered = data.lower()
        for field, value in PLANTED.items():
            for variant in {value, value.replace(" ", "^")}:
                assert variant.lower().encode() not in lowered, f"{field} found in {path.name}"
