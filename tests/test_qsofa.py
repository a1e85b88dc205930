"""qSOFA as an ONNX graph, tested against its published definition.

Source: Singer M, Deutschman CS, Seymour CW, et al. *The Third International Consensus
Definitions for Sepsis and Septic Shock (Sepsis-3).* JAMA 2016;315(8):801-810 — qSOFA:
respiratory rate >= 22/min, altered mentation (GCS < 15), systolic blood pressure <= 100
mm Hg, one point each; 2 or more is a positive qSOFA. One table row per threshold edge, both
sides of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import (
    QSOFA_BAND_LABELS,
    QSOFA_COLUMNS,
    QSOFA_OUTPUTS,
    SCORE_SYSTEM,
    FeatureExtractor,
    MissingInputs,
    build_advisories,
    build_qsofa_model,
    qsofa_manifest,
)
from schemas import InferenceRequest, ObservationFact

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ACVPU = "1104441000000107"
ALERT, CONFUSION, VOICE, PAIN, UNRESPONSIVE = (
    "248234008",
    "130987000",
    "300202002",
    "450847001",
    "422768004",
)
NORMAL = {"respiratory_rate": 16.0, "altered_mentation": 0.0, "systolic_bp": 120.0}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        build_qsofa_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )


def score(session: ort.InferenceSession, rows: list[Mapping[str, float]]) -> list[dict[str, int]]:
    batch = np.array([[r[c] for c in QSOFA_COLUMNS] for r in rows], dtype=np.float32)
    outputs = dict(
        zip(QSOFA_OUTPUTS, session.run(list(QSOFA_OUTPUTS), {"features": batch}), strict=True)
    )
    return [{k: int(v[i]) for k, v in outputs.items()} for i in range(len(rows))]


def row(**changes: float) -> dict[str, float]:
    return {**NORMAL, **changes}


# (output, row changes, expected): Singer et al. 2016, every edge, both sides.
CRITERIA: list[tuple[str, Mapping[str, float], int]] = [
    ("respiratory_rate_point", {"respiratory_rate": 21}, 0),
    ("respiratory_rate_point", {"respiratory_rate": 21.9}, 0),
    ("respiratory_rate_point", {"respiratory_rate": 22}, 1),
    ("respiratory_rate_point", {"respiratory_rate": 40}, 1),
    ("systolic_bp_point", {"systolic_bp": 101}, 0),
    ("systolic_bp_point", {"systolic_bp": 100.5}, 0),
    ("systolic_bp_point", {"systolic_bp": 100}, 1),
    ("systolic_bp_point", {"systolic_bp": 70}, 1),
    ("mentation_point", {"altered_mentation": 0}, 0),
    ("mentation_point", {"altered_mentation": 1}, 1),
    # the score and the positive flag: 1 point negative, 2 points positive
    ("total", {}, 0),
    ("positive", {"respiratory_rate": 22}, 0),
    ("positive", {"respiratory_rate": 22, "systolic_bp": 100}, 1),
    ("positive", {"respiratory_rate": 22, "altered_mentation": 1}, 1),
    ("positive", {"systolic_bp": 100, "altered_mentation": 1}, 1),
    ("positive", {"respiratory_rate": 21, "systolic_bp": 101, "altered_mentation": 1}, 0),
    ("total", {"respiratory_rate": 22, "systolic_bp": 100, "altered_mentation": 1}, 3),
    ("positive", {"respiratory_rate": 22, "systolic_bp": 100, "altered_mentation": 1}, 1),
]


def test_criteria_table_every_edge(session: ort.InferenceSession) -> None:
    """Each qSOFA criterion and the positive cut-off, both sides of each edge, in one batch."""
    results = score(session, [row(**changes) for _, changes, _ in CRITERIA])
    wrong = [
        (output, changes, expected, got[output])
        for (output, changes, expected), got in zip(CRITERIA, results, strict=True)
        if got[output] != expected
    ]
    assert wrong == []


def reference_qsofa(r: Mapping[str, float]) -> dict[str, int]:
    """Plain-Python qSOFA, written from the publication, independent of the graph builder."""
    points = {
        "respiratory_rate_point": int(r["respiratory_rate"] >= 22),
        "mentation_point": int(r["altered_mentation"] >= 0.5),
        "systolic_bp_point": int(r["systolic_bp"] <= 100),
    }
    total = sum(points.values())
    return {**points, "total": total, "positive": int(total >= 2)}


def _vital(lo: float, hi: float) -> st.SearchStrategy[float]:
    tenths = st.integers(int(lo * 10), int(hi * 10)).map(lambda t: t / 10)
    return st.one_of(st.integers(int(lo), int(hi)).map(float), tenths, st.floats(lo, hi, width=32))


_ROW = st.fixed_dictionaries(
    {
        "respiratory_rate": _vital(0, 60),
        "altered_mentation": st.sampled_from([0.0, 1.0]),
        "systolic_bp": _vital(40, 260),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=32))
def test_graph_matches_plain_python_reference(
    session: ort.InferenceSession, rows: list[dict[str, float]]
) -> None:
    as_f32 = [{k: float(np.float32(v)) for k, v in r.items()} for r in rows]
    assert score(session, rows) == [reference_qsofa(r) for r in as_f32]


# --- altered mentation from ACVPU or GCS ---------------------------------------------------

NOW = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)


def fact(code: str, hours_ago: float, **value: Any) -> ObservationFact:
    system = SNOMED if code == ACVPU else LOINC
    return ObservationFact(
        system=system, code=code, effective=NOW - timedelta(hours=hours_ago), **value
    )


def vitals(hours_ago: float = 1) -> list[ObservationFact]:
    return [
        fact("9279-1", hours_ago, value=18, unit="/min"),
        fact("8480-6", hours_ago, value=120, unit="mm[Hg]"),
    ]


def mentation(*facts: ObservationFact) -> float:
    request = FeatureExtractor(qsofa_manifest()).extract(1, "psn", [*vitals(), *facts], NOW)
    assert isinstance(request, InferenceRequest), request
    return {f.name: f.value for f in request.features}["altered_mentation"]


@pytest.mark.parametrize(
    ("answer", "altered"),
    [(ALERT, 0.0), (CONFUSION, 1.0), (VOICE, 1.0), (PAIN, 1.0), (UNRESPONSIVE, 1.0)],
)
def test_acvpu_other_than_alert_is_altered_mentation(answer: str, altered: float) -> None:
    assert mentation(fact(ACVPU, 1, value_code=answer)) == altered


@pytest.mark.parametrize(
    ("gcs", "unit", "altered"),
    [(15, "{score}", 0.0), (14, "{score}", 1.0), (3, None, 1.0), (15, None, 0.0)],
)
def test_gcs_total_below_15_is_altered_mentation(
    gcs: int, unit: str | None, altered: float
) -> None:
    assert mentation(fact("9269-2", 1, value=gcs, unit=unit)) == altered


def test_the_latest_of_acvpu_and_gcs_decides() -> None:
    assert mentation(fact(ACVPU, 3, value_code=CONFUSION), fact("9269-2", 1, value=15)) == 0.0
    assert mentation(fact(ACVPU, 1, value_code=CONFUSION), fact("9269-2", 3, value=15)) == 1.0
    assert mentation(fact(ACVPU, 1, value_code=ALERT), fact("9269-2", 3, value=9)) == 0.0


def test_without_a_mentation_observation_in_24_h_no_row_is_built() -> None:
    extractor = FeatureExtractor(qsofa_manifest())
    stale = fact(ACVPU, 25, value_code=CONFUSION)
    result = extractor.extract(1, "psn", [*vitals(), stale], NOW)
    assert isinstance(result, MissingInputs) and result.names == ["altered_mentation"]


# --- the advisory --------------------------------------------------------------------------


def test_advisory_is_coded_preliminary_fhir_and_explains_each_criterion(
    session: ort.InferenceSession,
) -> None:
    manifest = qsofa_manifest()
    history = [
        fact("9279-1", 1, value=24, unit="/min"),
        fact("8480-6", 1, value=95, unit="mmHg"),
        fact(ACVPU, 1, value_code=ALERT),
    ]
    request = FeatureExtractor(manifest).extract(3, "psn-q", history, NOW)
    assert isinstance(request, InferenceRequest)
    (result,) = score(session, [{f.name: f.value for f in request.features}])
    advisory = build_advisories(manifest, request, {k: float(v) for k, v in result.items()})
    obs, risk, prov = advisory.resources
    Observation.model_validate(obs)
    RiskAssessment.model_validate(risk)
    code = {"system": SCORE_SYSTEM, "code": "qsofa", "display": "qSOFA score"}
    assert obs["code"]["coding"] == risk["code"]["coding"] == [code]
    assert obs["status"] == risk["status"] == "preliminary"
    assert obs["valueInteger"] == 2 and advisory.interpretation == "positive"
    assert risk["prediction"][0]["qualitativeRisk"]["text"] == QSOFA_BAND_LABELS[1]
    assert prov["agent"][0]["who"]["display"] == "wardgate model qsofa 1.0.0"
    assert advisory.explanation == ["respiratory_rate>=22", "systolic_bp<=100"]
    assert NOW.date().isoformat() not in repr(advisory.model_dump())


def test_explanation_names_altered_mentation_or_says_no_criterion_was_met(
    session: ort.InferenceSession,
) -> None:
    manifest = qsofa_manifest()
    request = FeatureExtractor(manifest).extract(
        4, "psn", [*vitals(), fact(ACVPU, 1, value_code=VOICE)], NOW
    )
    assert isinstance(request, InferenceRequest)

    def explanation(features: Mapping[str, float]) -> list[str]:
        (result,) = score(session, [features])
        outputs = {k: float(v) for k, v in result.items()}
        return build_advisories(manifest, request, outputs).explanation

    assert explanation(row(altered_mentation=1)) == ["altered_mentation (ACVPU or GCS<15)"]
    assert explanation(row()) == ["no qSOFA criterion met"]
