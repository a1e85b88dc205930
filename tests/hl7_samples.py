"""Hand-built HL7 v2 messages for the end-to-end tests (synthetic people only)."""

from __future__ import annotations

VITALS_NORMAL = {
    "rr": 16,
    "spo2": 97,
    "o2": 0,
    "sbp": 125,
    "hr": 72,
    "temp": 37.0,
    "acvpu": "248234008",
}
VITALS_HIGH = {
    "rr": 26,
    "spo2": 90,
    "o2": 4,
    "sbp": 88,
    "hr": 135,
    "temp": 39.5,
    "acvpu": "130987000",
}

_LOINC = [
    ("rr", "9279-1", "Respiratory rate", "/min"),
    ("spo2", "59408-5", "Oxygen saturation by pulse oximetry", "%"),
    ("o2", "3151-8", "Inhaled oxygen flow rate", "L/min"),
    ("sbp", "8480-6", "Systolic blood pressure", "mm[Hg]"),
    ("hr", "8867-4", "Heart rate", "/min"),
    ("temp", "8310-5", "Body temperature", "Cel"),
]


def msh(control_id: str, msg_type: str = "ORU^R01^ORU_R01", sender: str = "LIS^TESTHOSP") -> str:
    app, facility = sender.split("^")
    return (
        f"MSH|^~\\&|{app}|{facility}|WARDGATE|WARDGATE|20240301101500||{msg_type}|{control_id}"
        "|P|2.5.1"
    )


def pid(mrn: str, name: str = "TESTPERSON^ALICE") -> str:
    return f"PID|1||{mrn}^^^TESTHOSP^MR||{name}||19600101|F"


def oru(
    control_id: str,
    mrn: str,
    vitals: dict[str, float | str],
    when: str = "20240301101000",
    sender: str = "LIS^TESTHOSP",
) -> bytes:
    segments = [
        msh(control_id, sender=sender),
        pid(mrn),
        f"OBR|1||{control_id}|VITALS^Vital signs^L|||{when}",
    ]
    n = 0
    for key, code, text, unit in _LOINC:
        if key in vitals:
            n += 1
            segments.append(
                f"OBX|{n}|NM|{code}^{text}^LN||{vitals[key]}|{unit}^^UCUM|||||F|||{when}"
            )
    if "acvpu" in vitals:
        n += 1
        segments.append(
            f"OBX|{n}|CWE|1104441000000107^ACVPU^SCT||{vitals['acvpu']}^^SCT||||||F|||{when}"
        )
    return ("\r".join(segments) + "\r").encode()


def adt(control_id: str, mrn: str, event: str = "A01") -> bytes:
    segments = [
        msh(control_id, f"ADT^{event}^ADT_{event}", sender="HIS^TESTHOSP"),
        pid(mrn),
        "PV1|1|I|WARD1^101^A",
    ]
    return ("\r".join(segments) + "\r").encode()
