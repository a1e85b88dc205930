"""Advisories as HL7 v2 ORU^R01 with result status P (preliminary), for MLLP destinations.

Built only at egress, where the writeback stage re-attaches the patient's real
identifier; the OBX carries the score and the OBR/OBX status is always ``P``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.normalize import escape


def _cx(identifier: dict[str, str]) -> str:
    system = identifier.get("system", "")
    authority = system.removeprefix("urn:id:").removeprefix("urn:oid:")
    return f"{escape(identifier['value'])}^^^{escape(authority)}"


def advisory_oru(
    control_id: str, identifiers: Sequence[dict[str, str]], resources: Sequence[dict[str, Any]]
) -> bytes:
    """One ORU^R01 for one advisory: an OBX per Observation/RiskAssessment result, all ``P``."""
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    pid3 = "~".join(_cx(i) for i in identifiers)
    segments = [
        f"MSH|^~\\&|WARDGATE|WARDGATE|||{now}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{pid3}",
        f"OBR|1||{control_id}|ADVISORY^Wardgate advisory^L|||{now}|||||||||||||||||P",
    ]
    n = 0
    for res in resources:
        if res.get("resourceType") == "Observation" and "valueInteger" in res:
            coding = res["code"]["coding"][0]
            n += 1
            segments.append(
                f"OBX|{n}|NM|{coding['code']}^{escape(coding.get('display', ''))}^SCT||"
                f"{res['valueInteger']}||||||P"
            )
        elif res.get("resourceType") == "RiskAssessment":
            text = res["prediction"][0]["qualitativeRisk"]["text"]
            n += 1
            segments.append(f"OBX|{n}|ST|RISK^Risk band^L||{escape(text)}||||||P")
    return ("\r".join(segments) + "\r").encode()
