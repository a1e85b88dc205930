"""From a de-identified FHIR Bundle to the NEWS2 feature row: codes, units, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from inference import (
    Explanation,
    FeatureExtractor,
    InputSource,
    MissingInputs,
    ModelManifest,
    news2_manifest,
    observations_from_bundle,
)
from schemas import InferenceRequest, ObservationFact

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
NOW = datetime(2031, 3, 4, 12, 0, tzinfo=UTC)


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


def q(code: str, value: float, unit: str, hours_ago: float = 1, system: str = LOINC) -> Any:
    return ObservationFact(
        system=system, code=code, value=value, unit=unit, effective=at(hours_ago)
    )


def coded(code: str, value_code: str, hours_ago: float = 1) -> ObservationFact:
    return ObservationFact(system=SNOMED, code=code, value_code=value_code, effective=at(hours_ago))


def full_set(hours_ago: float = 1) -> list[ObservationFact]:
    return [
        q("9279-1", 18, "/min", hours_ago),
        q("59408-5", 95, "%", hours_ago),
        q("3151-8", 2, "L/min", hours_ago),
        q("8480-6", 120, "mm[Hg]", hours_ago),
        q("8867-4", 80, "/min", hours_ago),
        q("8310-5", 37.2, "Cel", hours_ago),
        coded("1104441000000107", "248234008", hours_ago),
    ]


@pytest.fixture
def extractor() -> FeatureExtractor:
    return FeatureExtractor(news2_manifest())


def values(result: InferenceRequest | MissingInputs) -> dict[str, float]:
    assert isinstance(result, InferenceRequest), result
    return {f.name: f.value for f in result.features}


def test_complete_history_fills_every_column_in_order(extractor: FeatureExtractor) -> None:
    result = extractor.extract(5, "psn-1", full_set(), NOW, {})
    assert isinstance(result, InferenceRequest)
    assert [f.name for f in result.features] == extractor.manifest.column_names
    assert values(result) == {
        "respiratory_rate": 18,
        "spo2": 95,
        "on_oxygen": 1,
        "systolic_bp": 120,
        "heart_rate": 80,
        "temperature": pytest.approx(37.2),
        "acvpu_not_alert": 0,
        "spo2_scale2": 0,
    }
    assert (result.model_id, result.model_version, result.message_id, result.subject) == (
        "news2",
        "1.0.0",
        5,
        "psn-1",
    )


def test_latest_value_in_window_wins_and_carries_its_provenance(
    extractor: FeatureExtractor,
) -> None:
    history = [*full_set(), q("9279-1", 30, "/min", 0.5), q("9279-1", 12, "/min", 3)]
    result = extractor.extract(1, "psn", history, NOW, {})
    assert isinstance(result, InferenceRequest)
    rr = next(f for f in result.features if f.name == "respiratory_rate")
    assert (rr.value, rr.source_system, rr.source_code, rr.effective) == (
        30,
        LOINC,
        "9279-1",
        at(0.5),
    )
    assert rr.unit == "/min"


def test_value_outside_the_look_back_window_is_missing(extractor: FeatureExtractor) -> None:
    history = [f for f in full_set() if f.code != "8867-4"] + [q("8867-4", 80, "/min", 25)]
    result = extractor.extract(1, "psn", history, NOW, {})
    assert isinstance(result, MissingInputs)
    assert result.names == ["heart_rate"]
    assert result.reason == "missing inputs: heart_rate"


def test_future_values_are_ignored(extractor: FeatureExtractor) -> None:
    history = [*full_set(), q("8867-4", 150, "/min", -1)]
    assert values(extractor.extract(1, "psn", history, NOW, {}))["heart_rate"] == 80


def test_missing_inputs_lists_every_absent_input_by_name(extractor: FeatureExtractor) -> None:
    result = extractor.extract(1, "psn", [q("9279-1", 18, "/min")], NOW, {})
    assert isinstance(result, MissingInputs)
    assert result.names == [
        "spo2",
        "on_oxygen",
        "systolic_bp",
        "heart_rate",
        "temperature",
        "acvpu_not_alert",
    ]


def test_fahrenheit_is_converted_to_celsius(extractor: FeatureExtractor) -> None:
    history = [f for f in full_set() if f.code != "8310-5"] + [q("8310-5", 101.3, "[degF]")]
    assert values(extractor.extract(1, "psn", history, NOW, {}))["temperature"] == pytest.approx(
        38.5
    )


def test_unknown_unit_is_treated_as_missing(extractor: FeatureExtractor) -> None:
    history = [f for f in full_set() if f.code != "8310-5"] + [q("8310-5", 310, "K")]
    result = extractor.extract(1, "psn", history, NOW, {})
    assert isinstance(result, MissingInputs) and result.names == ["temperature"]


def test_a_value_in_an_unknown_unit_does_not_hide_an_older_usable_one(
    extractor: FeatureExtractor,
) -> None:
    history = [*full_set(hours_ago=2), q("8480-6", 15, "kPa", 0.5)]
    assert values(extractor.extract(1, "psn", history, NOW, {}))["systolic_bp"] == 120


def test_common_unit_spellings_are_accepted(extractor: FeatureExtractor) -> None:
    history = [
        *full_set(hours_ago=2),
        q("8480-6", 130, "mmHg"),
        q("8867-4", 90, "bpm"),
        q("8310-5", 38.0, "°C"),
    ]
    got = values(extractor.extract(1, "psn", history, NOW, {}))
    assert (got["systolic_bp"], got["heart_rate"], got["temperature"]) == (130, 90, 38.0)


@pytest.mark.parametrize(
    ("fact", "expected"),
    [
        (q("3151-8", 0, "L/min"), 0.0),
        (q("3151-8", 4, "L/min"), 1.0),
        (coded("371825009", "373066001"), 1.0),  # patient on oxygen: yes
        (coded("371825009", "373067005"), 0.0),  # patient on oxygen: no
        (coded("371825009", "722742002"), 0.0),  # breathing room air
        (ObservationFact(system=SNOMED, code="371825009", value=1.0, effective=at(1)), 1.0),
        (ObservationFact(system=SNOMED, code="371825009", value=0.0, effective=at(1)), 0.0),
    ],
)
def test_supplemental_oxygen_from_flow_rate_or_yes_no(
    extractor: FeatureExtractor, fact: ObservationFact, expected: float
) -> None:
    history = [f for f in full_set(hours_ago=2) if f.code != "3151-8"] + [fact]
    assert values(extractor.extract(1, "psn", history, NOW, {}))["on_oxygen"] == expected


@pytest.mark.parametrize(
    ("value_code", "expected"),
    [
        ("248234008", 0.0),  # alert
        ("130987000", 1.0),  # new confusion
        ("300202002", 1.0),  # voice
        ("450847001", 1.0),  # pain
        ("422768004", 1.0),  # unresponsive
    ],
)
def test_acvpu_codes(extractor: FeatureExtractor, value_code: str, expected: float) -> None:
    history = [*full_set(hours_ago=2), coded("1104441000000107", value_code)]
    assert values(extractor.extract(1, "psn", history, NOW, {}))["acvpu_not_alert"] == expected


def test_unknown_acvpu_code_is_unusable(extractor: FeatureExtractor) -> None:
    history = [f for f in full_set() if f.code != "1104441000000107"]
    history.append(coded("1104441000000107", "999999"))
    result = extractor.extract(1, "psn", history, NOW, {})
    assert isinstance(result, MissingInputs) and result.names == ["acvpu_not_alert"]


def test_spo2_scale_2_comes_from_configuration(extractor: FeatureExtractor) -> None:
    result = extractor.extract(1, "psn", full_set(), NOW, {"spo2_scale2": 1.0})
    assert isinstance(result, InferenceRequest)
    scale = next(f for f in result.features if f.name == "spo2_scale2")
    assert (scale.value, scale.source_system, scale.source_code) == (
        1.0,
        "urn:wardgate:config",
        "spo2_scale2",
    )


def _obs(code: dict[str, Any], **fields: Any) -> dict[str, Any]:
    resource = {"resourceType": "Observation", "status": "final", "code": code, **fields}
    return {"fullUrl": "urn:uuid:x", "resource": resource}


def _loinc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


def test_observations_from_bundle_reads_every_value_type() -> None:
    t = "2031-03-04T11:00:00+00:00"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            _obs(
                _loinc("8310-5"),
                effectiveDateTime=t,
                valueQuantity={"value": 37.5, "unit": "C", "code": "Cel"},
            ),
            _obs(
                {"coding": [{"system": SNOMED, "code": "1104441000000107"}]},
                effectiveDateTime="2031-03-04T11:00:00Z",
                valueCodeableConcept={"coding": [{"system": SNOMED, "code": "248234008"}]},
            ),
            _obs(
                {"coding": [{"system": SNOMED, "code": "371825009"}]},
                effectiveDateTime=t,
                valueBoolean=True,
            ),
            _obs(
                _loinc("85354-9"),
                effectiveDateTime=t,
                component=[
                    {
                        "code": _loinc("8480-6"),
                        "valueQuantity": {"value": 118, "unit": "mmHg", "code": "mm[Hg]"},
                    },
                    {
                        "code": _loinc("8462-4"),
                        "valueQuantity": {"value": 76, "unit": "mmHg", "code": "mm[Hg]"},
                    },
                ],
            ),
        ],
    }
    facts = {(f.code, f.value, f.value_code, f.unit) for f in observations_from_bundle(bundle)}
    assert facts == {
        ("8310-5", 37.5, None, "Cel"),
        ("1104441000000107", None, "248234008", None),
        ("371825009", 1.0, None, None),
        ("8480-6", 118.0, None, "mm[Hg]"),
        ("8462-4", 76.0, None, "mm[Hg]"),
    }
    assert all(
        f.effective == datetime(2031, 3, 4, 11, tzinfo=UTC)
        for f in observations_from_bundle(bundle)
    )


def test_observations_without_usable_value_or_time_are_skipped() -> None:
    value = {"valueQuantity": {"value": 80, "code": "/min"}}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            _obs(_loinc("8867-4"), **value),  # no time
            _obs(_loinc("8867-4"), effectiveDateTime="2031-03-04", **value),  # a date, no time
            _obs(_loinc("8867-4"), effectiveDateTime="2031-03-04T10:00:00Z"),  # no value
            _obs(
                _loinc("8867-4"),
                effectiveDateTime="2031-03-04T10:00:00Z",
                dataAbsentReason={"text": "not measured"},
            ),
            _obs(
                _loinc("8867-4"),
                effectiveDateTime="2031-03-04T10:00:00Z",
                **{**value, "status": "entered-in-error"},
            ),
            _obs(_loinc("8867-4"), effectiveDateTime="not a time", **value),
        ],
    }
    assert observations_from_bundle(bundle) == []


def test_bundle_to_request_end_to_end(extractor: FeatureExtractor) -> None:
    def vital(code: str, value: float, unit: str) -> dict[str, Any]:
        return _obs(
            _loinc(code),
            effectiveDateTime="2031-03-04T11:30:00+01:00",
            valueQuantity={"value": value, "code": unit},
        )

    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            vital("9279-1", 22, "/min"),
            vital("2708-6", 93, "%"),
            vital("3151-8", 0, "L/min"),
            vital("8480-6", 105, "mm[Hg]"),
            vital("8867-4", 112, "/min"),
            vital("8310-5", 100.4, "[degF]"),
            _obs(
                {"coding": [{"system": SNOMED, "code": "1104441000000107"}]},
                effectiveDateTime="2031-03-04T10:30:00Z",
                valueCodeableConcept={"coding": [{"system": SNOMED, "code": "130987000"}]},
            ),
        ],
    }
    got = values(extractor.extract(9, "psn", observations_from_bundle(bundle), NOW, {}))
    assert got == {
        "respiratory_rate": 22,
        "spo2": 93,
        "on_oxygen": 0,
        "systolic_bp": 105,
        "heart_rate": 112,
        "temperature": pytest.approx(38.0),
        "acvpu_not_alert": 1,
        "spo2_scale2": 0,
    }


def test_max_window_is_the_longest_look_back(extractor: FeatureExtractor) -> None:
    assert extractor.max_window == timedelta(hours=24)


# --- history aggregates: the manifest's window options, in general ------------------------


def _history_manifest(**overrides: Any) -> ModelManifest:
    """A two-input model: the latest heart rate, and another aggregate of its history."""
    codes = [InputSource(system=LOINC, code="8867-4")]
    second = {
        "name": "hr_other",
        "kind": "quantity",
        "codes": codes,
        "unit": "/min",
        "lookback_hours": 6,
        **overrides,
    }
    return ModelManifest.model_validate(
        {
            "id": "hist",
            "version": "1",
            "description": "test",
            "inputs": [
                {
                    "name": "hr",
                    "kind": "quantity",
                    "codes": codes,
                    "unit": "/min",
                    "lookback_hours": 2,
                },
                second,
            ],
            "outputs": ["s"],
            "advisory": {
                "score_output": "s",
                "band_output": "s",
                "band_labels": {},
                "observation_code": {"system": "x", "code": "y"},
            },
        }
    )


HR_HISTORY = [q("8867-4", v, "/min", h) for v, h in [(70, 1), (95, 3), (60, 5), (50, 7.5)]]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, 70),  # latest within 6 h of now
        ({"aggregate": "min"}, 60),
        ({"aggregate": "max"}, 95),
        # anchored: the window ends just before the latest (1 h ago)
        ({"aggregate": "min", "anchor": "hr", "lookback_hours": 6.5}, 50),  # back to 7.5 h ago
        ({"aggregate": "min", "anchor": "hr", "lookback_hours": 4}, 60),  # back to 5 h ago
        ({"aggregate": "max", "anchor": "hr", "lookback_hours": 2.5}, 95),
        ({"aggregate": "latest", "anchor": "hr"}, 95),  # the one before the latest
    ],
)
def test_an_input_can_aggregate_a_window_of_history(
    overrides: dict[str, Any], expected: float
) -> None:
    result = FeatureExtractor(_history_manifest(**overrides)).extract(1, "p", HR_HISTORY, NOW)
    assert values(result) == {"hr": 70, "hr_other": expected}


def test_an_anchored_window_excludes_the_anchor_value_itself() -> None:
    manifest = _history_manifest(aggregate="min", anchor="hr")
    result = FeatureExtractor(manifest).extract(1, "p", [q("8867-4", 70, "/min", 1)], NOW)
    assert isinstance(result, MissingInputs) and result.names == ["hr_other"]
    fallback = _history_manifest(aggregate="min", anchor="hr", fallback="hr")
    got = FeatureExtractor(fallback).extract(1, "p", [q("8867-4", 70, "/min", 1)], NOW)
    assert values(got) == {"hr": 70, "hr_other": 70}


def test_anchored_windows_lengthen_the_history_a_caller_must_keep() -> None:
    manifest = _history_manifest(aggregate="min", anchor="hr")
    assert FeatureExtractor(manifest).max_window == timedelta(hours=2 + 6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"anchor": "nope"},
        {"anchor": "hr_other"},  # itself: not an earlier input
        {"fallback": "nope"},
        {"fallback": "hr", "unit": "%"},  # a fallback of another unit
        {"kind": "flag", "unit": None, "valid_range": (0, 1)},
        {"other_units": {"[degF]": 0}},
        {"valid_range": (5, 1)},
    ],
)
def test_inconsistent_history_options_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _history_manifest(**overrides)


def test_an_anchor_must_itself_be_a_latest_value() -> None:
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(
            {
                **_history_manifest().model_dump(),
                "inputs": [
                    {**_history_manifest().inputs[0].model_dump(), "aggregate": "min"},
                    {**_history_manifest().inputs[1].model_dump(), "anchor": "hr"},
                ],
            }
        )


def test_explanation_text_allows_only_output_placeholders() -> None:
    Explanation(when="s", text="ratio {s:.2f}x, {s}")
    for bad in ["{s.__class__}", "{s!r}", "{s:>99}", "{", "a } b"]:
        with pytest.raises(ValidationError):
            Explanation(when="s", text=bad)
