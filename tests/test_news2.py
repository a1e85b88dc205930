"""NEWS2 as an ONNX graph, tested against the published chart.

Source: Royal College of Physicians. *National Early Warning Score (NEWS) 2: Standardising
the assessment of acute-illness severity in the NHS.* London: RCP, 2017 — Chart 1 (the
NEWS2 scoring system) and Chart 2 (thresholds and triggers). One table row per band edge,
both sides of it; values between printed rows score with the band whose upper bound they
do not exceed (RR 20.5 scores as 21).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import (
    NEWS2_BAND_LABELS,
    NEWS2_COLUMNS,
    NEWS2_OUTPUTS,
    build_advisories,
    build_news2_model,
    news2_manifest,
)
from schemas import AdvisoryKind, FeatureValue, InferenceRequest

NORMAL = {
    "respiratory_rate": 16.0,
    "spo2": 97.0,
    "on_oxygen": 0.0,
    "systolic_bp": 120.0,
    "heart_rate": 70.0,
    "temperature": 37.0,
    "acvpu_not_alert": 0.0,
    "spo2_scale2": 0.0,
}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    model = build_news2_model().SerializeToString()
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def score(session: ort.InferenceSession, rows: list[dict[str, float]]) -> list[dict[str, int]]:
    batch = np.array([[row[c] for c in NEWS2_COLUMNS] for row in rows], dtype=np.float32)
    results = session.run(list(NEWS2_OUTPUTS), {"features": batch})
    outputs = dict(zip(NEWS2_OUTPUTS, results, strict=True))
    return [{k: int(v[i]) for k, v in outputs.items()} for i in range(len(rows))]


def row(**changes: float) -> dict[str, float]:
    return {**NORMAL, **changes}


# (output, row changes, expected sub-score): RCP 2017 Chart 1, every edge, both sides.
CHART: list[tuple[str, Mapping[str, float], int]] = [
    # respiration rate: <=8 3 | 9-11 1 | 12-20 0 | 21-24 2 | >=25 3
    *[
        ("respiratory_rate_score", {"respiratory_rate": v}, s)
        for v, s in [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3)]
    ],
    ("respiratory_rate_score", {"respiratory_rate": 20.5}, 2),
    ("respiratory_rate_score", {"respiratory_rate": 8.5}, 1),
    ("respiratory_rate_score", {"respiratory_rate": 24.5}, 3),
    # SpO2 scale 1: <=91 3 | 92-93 2 | 94-95 1 | >=96 0 (on air or oxygen alike)
    *[
        ("spo2_score", {"spo2": v}, s)
        for v, s in [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0)]
    ],
    ("spo2_score", {"spo2": 96, "on_oxygen": 1}, 0),
    ("spo2_score", {"spo2": 91.5}, 2),
    # SpO2 scale 2: <=83 3 | 84-85 2 | 86-87 1 | 88-92 0, >=93 on air 0 |
    #               93-94 on oxygen 1 | 95-96 on oxygen 2 | >=97 on oxygen 3
    *[
        ("spo2_score", {"spo2": v, "spo2_scale2": 1}, s)
        for v, s in [(83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0)]
    ],
    *[
        ("spo2_score", {"spo2": v, "spo2_scale2": 1, "on_oxygen": 1}, s)
        for v, s in [(83, 3), (87, 1), (88, 0), (92, 0), (93, 1), (94, 1), (95, 2), (96, 2)]
    ],
    ("spo2_score", {"spo2": 97, "spo2_scale2": 1, "on_oxygen": 1}, 3),
    ("spo2_score", {"spo2": 100, "spo2_scale2": 1, "on_oxygen": 1}, 3),
    ("spo2_score", {"spo2": 93, "spo2_scale2": 1, "on_oxygen": 0}, 0),
    ("spo2_score", {"spo2": 100, "spo2_scale2": 1, "on_oxygen": 0}, 0),
    # air or oxygen: oxygen 2 | air 0
    ("air_or_oxygen_score", {"on_oxygen": 0}, 0),
    ("air_or_oxygen_score", {"on_oxygen": 1}, 2),
    # systolic BP: <=90 3 | 91-100 2 | 101-110 1 | 111-219 0 | >=220 3
    *[
        ("systolic_bp_score", {"systolic_bp": v}, s)
        for v, s in [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
    ],
    # pulse: <=40 3 | 41-50 1 | 51-90 0 | 91-110 1 | 111-130 2 | >=131 3
    *[
        ("heart_rate_score", {"heart_rate": v}, s)
        for v, s in [
            (40, 3),
            (41, 1),
            (50, 1),
            (51, 0),
            (90, 0),
            (91, 1),
            (110, 1),
            (111, 2),
            (130, 2),
            (131, 3),
        ]
    ],
    # consciousness: Alert 0 | new Confusion, Voice, Pain, Unresponsive 3
    ("consciousness_score", {"acvpu_not_alert": 0}, 0),
    ("consciousness_score", {"acvpu_not_alert": 1}, 3),
    # temperature: <=35.0 3 | 35.1-36.0 1 | 36.1-38.0 0 | 38.1-39.0 1 | >=39.1 2
    *[
        ("temperature_score", {"temperature": v}, s)
        for v, s in [
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
        ]
    ],
]


def test_chart_table_every_band_edge(session: ort.InferenceSession) -> None:
    """Each row of the RCP 2017 chart, both sides of each edge, in one batch."""
    results = score(session, [row(**changes) for _, changes, _ in CHART])
    wrong = [
        (output, changes, expected, got[output])
        for (output, changes, expected), got in zip(CHART, results, strict=True)
        if got[output] != expected
    ]
    assert wrong == []


def test_total_is_the_sum_of_the_parameter_scores(session: ort.InferenceSession) -> None:
    results = score(session, [row(**changes) for _, changes, _ in CHART])
    components = [o for o in NEWS2_OUTPUTS if o.endswith("_score")]
    assert all(r["total"] == sum(r[c] for c in components) for r in results)


@pytest.mark.parametrize(
    ("changes", "total", "band"),
    [
        ({}, 0, "low"),
        ({"respiratory_rate": 22, "heart_rate": 95, "temperature": 38.5}, 4, "low"),
        ({"respiratory_rate": 26}, 3, "low-medium"),
        ({"acvpu_not_alert": 1, "heart_rate": 95}, 4, "low-medium"),
        ({"systolic_bp": 100, "spo2": 92, "heart_rate": 95}, 5, "medium"),
        ({"systolic_bp": 90, "heart_rate": 111}, 5, "medium"),  # a 3 but total >= 5
        ({"on_oxygen": 1, "spo2": 94, "temperature": 39.5, "heart_rate": 95}, 6, "medium"),
        ({"on_oxygen": 1, "respiratory_rate": 25, "systolic_bp": 105, "heart_rate": 95}, 7, "high"),
        ({"respiratory_rate": 5, "spo2": 80, "systolic_bp": 80, "heart_rate": 150}, 12, "high"),
    ],
)
def test_clinical_risk_band(
    session: ort.InferenceSession, changes: dict[str, float], total: int, band: str
) -> None:
    """RCP 2017 Chart 2: low 0-4, low-medium a single 3 (total < 5), medium 5-6, high >= 7."""
    (result,) = score(session, [row(**changes)])
    assert result["total"] == total
    assert NEWS2_BAND_LABELS[result["band"]] == band


def reference_news2(r: dict[str, float]) -> dict[str, int]:
    """Plain-Python NEWS2, written from the chart, independent of the graph builder."""

    def by_upper(x: float, bounds: list[tuple[float, int]], above: int) -> int:
        for bound, s in bounds:
            if x <= bound:
                return s
        return above

    oxygen = r["on_oxygen"] >= 0.5
    spo2 = r["spo2"]
    if r["spo2_scale2"] >= 0.5:
        if spo2 <= 92:
            spo2_score = by_upper(spo2, [(83, 3), (85, 2), (87, 1)], 0)
        else:
            spo2_score = by_upper(spo2, [(94, 1), (96, 2)], 3) if oxygen else 0
    else:
        spo2_score = by_upper(spo2, [(91, 3), (93, 2), (95, 1)], 0)
    scores = {
        "respiratory_rate_score": by_upper(
            r["respiratory_rate"], [(8, 3), (11, 1), (20, 0), (24, 2)], 3
        ),
        "spo2_score": spo2_score,
        "air_or_oxygen_score": 2 if oxygen else 0,
        "systolic_bp_score": by_upper(r["systolic_bp"], [(90, 3), (100, 2), (110, 1), (219, 0)], 3),
        "heart_rate_score": by_upper(
            r["heart_rate"], [(40, 3), (50, 1), (90, 0), (110, 1), (130, 2)], 3
        ),
        "consciousness_score": 3 if r["acvpu_not_alert"] >= 0.5 else 0,
        "temperature_score": by_upper(r["temperature"], [(35, 3), (36, 1), (38, 0), (39, 1)], 2),
    }
    total = sum(scores.values())
    if total >= 7:
        band = 3
    elif total >= 5:
        band = 2
    elif 3 in scores.values():
        band = 1
    else:
        band = 0
    return {**scores, "total": total, "band": band}


def _vital(lo: float, hi: float) -> st.SearchStrategy[float]:
    tenths = st.integers(int(lo * 10), int(hi * 10)).map(lambda t: t / 10)
    return st.one_of(st.integers(int(lo), int(hi)).map(float), tenths, st.floats(lo, hi, width=32))


_ROW = st.fixed_dictionaries(
    {
        "respiratory_rate": _vital(0, 60),
        "spo2": _vital(50, 100),
        "on_oxygen": st.sampled_from([0.0, 1.0]),
        "systolic_bp": _vital(40, 260),
        "heart_rate": _vital(20, 220),
        "temperature": _vital(30, 43),
        "acvpu_not_alert": st.sampled_from([0.0, 1.0]),
        "spo2_scale2": st.sampled_from([0.0, 1.0]),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=32))
def test_graph_matches_plain_python_reference(
    session: ort.InferenceSession, rows: list[dict[str, float]]
) -> None:
    # the graph sees float32: compare on the values it actually receives
    as_f32 = [{k: float(np.float32(v)) for k, v in r.items()} for r in rows]
    assert score(session, rows) == [reference_news2(r) for r in as_f32]


# --- the advisory built from NEWS2 outputs -----------------------------------------------

WHEN = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _request(message_id: int = 7, subject: str = "psn-abc") -> InferenceRequest:
    manifest = news2_manifest()
    return InferenceRequest(
        model_id=manifest.id,
        model_version=manifest.version,
        message_id=message_id,
        subject=subject,
        features=[
            FeatureValue(name=c, value=NORMAL[c], source_system="s", source_code=c, effective=WHEN)
            for c in NEWS2_COLUMNS
        ],
    )


def _outputs(session: ort.InferenceSession, **changes: float) -> dict[str, float]:
    (result,) = score(session, [row(**changes)])
    return {k: float(v) for k, v in result.items()}


def test_advisory_resources_are_valid_preliminary_fhir(session: ort.InferenceSession) -> None:
    outputs = _outputs(session, respiratory_rate=26, heart_rate=95)
    advisory = build_advisories(news2_manifest(), _request(), outputs)
    obs, risk, prov = advisory.resources
    Observation.model_validate(obs)
    RiskAssessment.model_validate(risk)
    Provenance.model_validate(prov)
    assert advisory.kind is AdvisoryKind.RISK
    assert advisory.score == 4 and advisory.interpretation == "low-medium"
    assert obs["status"] == risk["status"] == "preliminary"
    assert obs["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "1104051000000101",
        "display": "NEWS2 score",
    }
    assert risk["code"]["coding"] == obs["code"]["coding"]  # searchable by the model's code
    assert obs["valueInteger"] == 4
    assert risk["prediction"][0]["qualitativeRisk"]["text"] == "low-medium"
    pseudonym = {"identifier": {"system": "urn:wardgate:pseudonym", "value": "psn-abc"}}
    assert obs["subject"] == risk["subject"] == pseudonym
    assert prov["agent"][0]["who"] == {"type": "Device", "display": "wardgate model news2 1.0.0"}
    targets = {t["reference"] for t in prov["target"]}
    assert targets == {f"urn:uuid:{obs['id']}", f"urn:uuid:{risk['id']}"}
    assert risk["basis"] == [{"reference": f"urn:uuid:{obs['id']}"}]


def test_advisory_ids_are_deterministic(session: ort.InferenceSession) -> None:
    outputs = _outputs(session)

    def ids(request: InferenceRequest) -> list[Any]:
        return [r["id"] for r in build_advisories(news2_manifest(), request, outputs).resources]

    assert ids(_request()) == ids(_request())
    assert ids(_request()) != ids(_request(message_id=8))
    assert ids(_request()) != ids(_request(subject="psn-other"))


def test_explanation_names_the_parameters_that_scored_and_no_times(
    session: ort.InferenceSession,
) -> None:
    outputs = _outputs(session, respiratory_rate=26, on_oxygen=1, heart_rate=95)
    advisory = build_advisories(news2_manifest(), _request(), outputs)
    assert advisory.explanation == ["respiratory_rate=3", "air_or_oxygen=2", "heart_rate=1"]
    text = repr(advisory.model_dump())
    assert "2030-01-01" not in text  # no patient (feature) time anywhere in the advisory
    quiet = build_advisories(news2_manifest(), _request(), _outputs(session))
    assert quiet.explanation == ["all parameters scored 0"]
