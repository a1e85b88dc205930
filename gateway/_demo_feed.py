"""A clearly synthetic HL7 v2.5.1 feed for ``wardgate demo``, tests and benchmarks.

Every identifier says what it is: patients ``DEMO^SYNTHETIC-0001`` with MRN
``DEMO0001`` (assigning authority ``WARDGATE-DEMO``), sent by ``DEMO-HIS^DEMO-HOSPITAL``
with processing id ``T`` (training). Nothing here resembles a real person.

:func:`synthetic_messages` yields one ADT^A01 per patient, then ``rounds`` ORU^R01
vital-sign messages per patient carrying every NEWS2 input (RCP, National Early
Warning Score 2, 2017): respiration rate, SpO2, inhaled oxygen flow (0 = air),
systolic pressure, pulse, temperature and ACVPU consciousness. Patients cycle through
four trajectories so that, with four or more patients, the last round contains every
NEWS2 band: low (aggregate 0), a single red score (aggregate 3, new confusion),
medium (aggregate 5) and high (aggregate 12 or more).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

SENDER = "DEMO-HIS|DEMO-HOSPITAL"  # MSH-3|MSH-4
RECEIVER = "WARDGATE|WARDGATE"  # MSH-5|MSH-6
AUTHORITY = "WARDGATE-DEMO"
START = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
ROUND_INTERVAL = timedelta(hours=1)

# name -> (OBX-2, OBX-3, OBX-6); the keys of ``vitals`` in :func:`one_oru`.
VITALS: dict[str, tuple[str, str, str]] = {
    "rr": ("NM", "9279-1^Respiratory rate^LN", "/min^per minute^UCUM"),
    "spo2": ("NM", "59408-5^Oxygen saturation by Pulse oximetry^LN", "%^percent^UCUM"),
    "o2_flow": ("NM", "3151-8^Inhaled oxygen flow rate^LN", "L/min^liter per minute^UCUM"),
    "sbp": ("NM", "8480-6^Systolic blood pressure^LN", "mm[Hg]^millimeter of mercury^UCUM"),
    "hr": ("NM", "8867-4^Heart rate^LN", "/min^per minute^UCUM"),
    "temp": ("NM", "8310-5^Body temperature^LN", "Cel^degree Celsius^UCUM"),
    "acvpu": ("CWE", "1104441000000107^ACVPU scale score^SCT", ""),
}
# ACVPU: letter -> (SNOMED CT code, display).
ACVPU = {
    "A": ("248234008", "Mentally alert"),
    "C": ("130987000", "Acute confusion"),
    "V": ("300202002", "Responds to voice"),
    "P": ("450847001", "Responds to pain"),
    "U": ("422768004", "Unresponsive"),
}
_ACVPU_BY_CODE = {code: (code, display) for code, display in ACVPU.values()}


def _ts(when: datetime) -> str:
    """An HL7 DTM with an explicit offset (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.strftime("%Y%m%d%H%M%S%z")


def _number(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _name_for(mrn: str) -> str:
    digits = mrn.removeprefix("DEMO")
    return f"DEMO^SYNTHETIC-{digits}" if digits.isdigit() else "DEMO^SYNTHETIC"


def _msh(message_type: str, control_id: str, when: datetime) -> str:
    return f"MSH|^~\\&|{SENDER}|{RECEIVER}|{_ts(when)}||{message_type}|{control_id}|T|2.5.1"


def _pid(mrn: str, birth: str, sex: str) -> str:
    return f"PID|1||{mrn}^^^{AUTHORITY}^MR||{_name_for(mrn)}||{birth}|{sex}"


def _pv1(mrn: str, admitted: datetime) -> str:
    visit = f"V{mrn}^^^{AUTHORITY}^VN"
    return f"PV1|1|I|DEMO-WARD^BAY-1^BED-{mrn[-2:]}|" + "|" * 15 + visit + "|" * 25 + _ts(admitted)


def one_adt(
    mrn: str, control_id: str, when: datetime, birth: str = "19600101", sex: str = "U"
) -> bytes:
    """An ADT^A01 admitting the synthetic patient *mrn* at *when*."""
    segments = [
        _msh("ADT^A01^ADT_A01", control_id, when),
        f"EVN|A01|{_ts(when)}",
        _pid(mrn, birth, sex),
        _pv1(mrn, when),
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def _obx(n: int, name: str, value: float | str, when: datetime) -> str:
    kind, code, unit = VITALS[name]
    if name == "acvpu":
        key = str(value)
        snomed, display = ACVPU.get(key.upper()) or _ACVPU_BY_CODE[key]
        text = f"{snomed}^{display}^SCT"
    else:
        text = _number(float(value))
    return f"OBX|{n}|{kind}|{code}||{text}|{unit}|||||F|||{_ts(when)}"


def one_oru(
    mrn: str,
    control_id: str,
    vitals: Mapping[str, float | str],
    when: datetime,
    admitted: datetime | None = None,
) -> bytes:
    """An ORU^R01 with one OBX per entry of *vitals* (keys of ``VITALS``), all taken at *when*.

    ``acvpu`` takes a letter (``A``, ``C``, ``V``, ``P``, ``U``) or the SNOMED CT code.
    """
    unknown = set(vitals) - set(VITALS)
    if unknown:
        raise ValueError(f"unknown vital sign keys: {sorted(unknown)}; known: {sorted(VITALS)}")
    segments = [
        _msh("ORU^R01^ORU_R01", control_id, when),
        _pid(mrn, "19600101", "U"),
        _pv1(mrn, admitted or when),
        f"OBR|1|||85353-1^Vital signs panel^LN|||{_ts(when)}" + "|" * 18 + "F",
    ]
    segments += [_obx(i, name, value, when) for i, (name, value) in enumerate(vitals.items(), 1)]
    return ("\r".join(segments) + "\r").encode("ascii")


@dataclass(frozen=True)
class _Trajectory:
    """Where a patient's vitals end up by the last round (they start near normal)."""

    rr: float
    spo2: float
    o2_flow: float
    sbp: float
    hr: float
    temp: float
    acvpu: str


_HEALTHY = _Trajectory(16, 97, 0, 124, 72, 36.8, "A")
_TRAJECTORIES = [
    _HEALTHY,  # NEWS2 0: low
    _Trajectory(16, 97, 0, 124, 72, 36.8, "C"),  # 3 from new confusion alone: single red
    _Trajectory(22, 95, 0, 105, 95, 37.5, "A"),  # 2+1+1+1 = 5: medium
    _Trajectory(26, 92, 2, 98, 118, 38.6, "V"),  # 3+2+2+2+2+3+1 = 15: high
]
_HIGH_CONSCIOUSNESS = ["V", "P", "U", "A"]


def _vitals(start: _Trajectory, end: _Trajectory, progress: float) -> dict[str, float | str]:
    def lerp(a: float, b: float) -> float:
        return round(a + (b - a) * progress, 1)

    return {
        "rr": round(lerp(start.rr, end.rr)),
        "spo2": round(lerp(start.spo2, end.spo2)),
        "o2_flow": lerp(start.o2_flow, end.o2_flow) if progress >= 0.5 else 0.0,
        "sbp": round(lerp(start.sbp, end.sbp)),
        "hr": round(lerp(start.hr, end.hr)),
        "temp": lerp(start.temp, end.temp),
        "acvpu": end.acvpu if progress >= 1 else start.acvpu,
    }


def synthetic_messages(n_patients: int, rounds: int, seed: int = 0) -> Iterator[bytes]:
    """ADT^A01 for each patient, then *rounds* ORU^R01 vital-sign messages per patient.

    Deterministic for a given *seed*; MSH-10 is unique within the feed and per seed.
    """
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    counter = 0

    def control_id() -> str:
        nonlocal counter
        counter += 1
        return f"DEMO-{seed}-{counter:07d}"

    patients = []
    for i in range(n_patients):
        mrn = f"DEMO{i + 1:04d}"
        baseline = _Trajectory(
            rr=rng.randint(14, 18),
            spo2=rng.randint(96, 99),
            o2_flow=0,
            sbp=rng.randint(115, 135),
            hr=rng.randint(62, 84),
            temp=round(rng.uniform(36.4, 37.4), 1),
            acvpu="A",
        )
        target = _TRAJECTORIES[i % len(_TRAJECTORIES)]
        if target is _HEALTHY:
            target = baseline
        elif target.acvpu == "V":
            consciousness = _HIGH_CONSCIOUSNESS[(i // len(_TRAJECTORIES)) % 4]
            target = replace(target, acvpu=consciousness)
        birth = f"19{rng.randint(30, 99):02d}0101"
        patients.append((mrn, baseline, target, birth, rng.choice("MFU")))
    for mrn, _, _, birth, sex in patients:
        yield one_adt(mrn, control_id(), START, birth, sex)
    for r in range(rounds):
        when = START + ROUND_INTERVAL * (r + 1)
        progress = (r + 1) / rounds
        for mrn, baseline, target, _, _ in patients:
            yield one_oru(mrn, control_id(), _vitals(baseline, target, progress), when, START)
