"""The synthetic demo feed: valid, unique, deterministic, and clinically varied.

NEWS2 bands are checked with the Royal College of Physicians' chart (National Early
Warning Score (NEWS) 2, December 2017, SpO2 scale 1): low = aggregate 0-4, a single
red score = 3 in one parameter, medium = 5-6, high = 7 or more.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway._demo_feed import ACVPU, one_oru, synthetic_messages
from gateway.normalize import parse_message, to_fhir, validate_envelope


def _band(value: float, bands: list[tuple[float, int]]) -> int:
    """Points for *value*: the first (upper bound, points) it does not exceed."""
    return next(points for bound, points in bands if value <= bound)


def news2(v: dict[str, Any]) -> tuple[int, bool]:
    """(aggregate score, any single parameter scoring 3) per the RCP 2017 chart."""
    parts = [
        _band(v["9279-1"], [(8, 3), (11, 1), (20, 0), (24, 2), (1e9, 3)]),
        _band(v["59408-5"], [(91, 3), (93, 2), (95, 1), (1e9, 0)]),
        2 if v["3151-8"] > 0 else 0,
        _band(v["8480-6"], [(90, 3), (100, 2), (110, 1), (219, 0), (1e9, 3)]),
        _band(v["8867-4"], [(40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (1e9, 3)]),
        0 if v["1104441000000107"] == "248234008" else 3,
        _band(v["8310-5"], [(35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (1e9, 2)]),
    ]
    return sum(parts), 3 in parts


def _band_name(score: int, red: bool) -> str:
    if score >= 7:
        return "high"
    if score >= 5:
        return "medium"
    return "single-red" if red else "low"


def _vitals(bundle: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation":
            code = res["code"]["coding"][0]["code"]
            if "valueQuantity" in res:
                out[code] = res["valueQuantity"]["value"]
            else:
                out[code] = res["valueCodeableConcept"]["coding"][0]["code"]
    return out


def test_every_message_passes_the_envelope_and_maps_to_fhir() -> None:
    for raw in synthetic_messages(8, 3, seed=1):
        env = validate_envelope(raw)
        assert (env.sending_application, env.sending_facility) == ("DEMO-HIS", "DEMO-HOSPITAL")
        bundle = to_fhir(raw)
        assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"


def test_admissions_come_first_then_rounds_of_vitals() -> None:
    types = [parse_message(m).message_type for m in synthetic_messages(3, 2)]
    assert types == ["ADT^A01"] * 3 + ["ORU^R01"] * 6


def test_control_ids_are_unique_and_the_feed_is_deterministic_per_seed() -> None:
    feed = list(synthetic_messages(6, 4, seed=7))
    ids = [parse_message(m).control_id for m in feed]
    assert len(ids) == len(set(ids)) == 6 + 6 * 4
    assert feed == list(synthetic_messages(6, 4, seed=7))
    assert feed != list(synthetic_messages(6, 4, seed=8))


def test_patients_are_obviously_synthetic() -> None:
    msg = parse_message(next(synthetic_messages(1, 1)))
    assert msg.field("PID", 3) == "DEMO0001"
    assert msg.field("PID", 3, comp=4) == "WARDGATE-DEMO"
    assert (msg.field("PID", 5), msg.field("PID", 5, comp=2)) == ("DEMO", "SYNTHETIC-0001")


def test_vitals_cover_every_news2_input_with_final_status_and_advancing_times() -> None:
    feed = list(synthetic_messages(1, 3))[1:]
    times = []
    for raw in feed:
        bundle = to_fhir(raw)
        observations = [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
        ]
        assert set(_vitals(bundle)) == {
            "9279-1", "59408-5", "3151-8", "8480-6", "8867-4", "8310-5", "1104441000000107"
        }  # fmt: skip
        assert {o["status"] for o in observations} == {"final"}
        times.append({o["effectiveDateTime"] for o in observations})
    assert all(len(t) == 1 for t in times)
    flat = [t.pop() for t in times]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)


def test_every_news2_band_occurs_and_most_patients_are_alert() -> None:
    bands: Counter[str] = Counter()
    consciousness: Counter[str] = Counter()
    for raw in synthetic_messages(8, 4, seed=3):
        if parse_message(raw).message_type != "ORU^R01":
            continue
        vitals = _vitals(to_fhir(raw))
        bands[_band_name(*news2(vitals))] += 1
        consciousness[vitals["1104441000000107"]] += 1
    assert set(bands) == {"low", "single-red", "medium", "high"}
    assert consciousness["248234008"] > sum(consciousness.values()) / 2


@pytest.mark.parametrize("letter", sorted(ACVPU))
def test_one_oru_builds_the_vitals_it_is_given(letter: str) -> None:
    when = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    vitals: dict[str, float | str] = {"rr": 18, "spo2": 96, "temp": 37.1, "acvpu": letter}
    bundle = to_fhir(one_oru("DEMO0042", "BENCH-1", vitals, when))
    got = _vitals(bundle)
    assert got == {
        "9279-1": 18,
        "59408-5": 96,
        "8310-5": 37.1,
        "1104441000000107": ACVPU[letter][0],
    }


def test_one_oru_rejects_unknown_vital_names() -> None:
    with pytest.raises(ValueError, match="unknown vital sign keys"):
        one_oru("DEMO0001", "X", {"bp": 120}, datetime(2024, 1, 1, tzinfo=UTC))
