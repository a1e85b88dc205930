"""KDIGO AKI staging from serum creatinine history, tested against the 2012 guideline.

Source: Kidney Disease: Improving Global Outcomes (KDIGO) Acute Kidney Injury Work Group.
*KDIGO Clinical Practice Guideline for Acute Kidney Injury.* Kidney Int Suppl 2012;2:1-138 —
recommendation 2.1.1 (AKI: a rise in serum creatinine of >= 0.3 mg/dL within 48 hours, or to
>= 1.5 times baseline known or presumed to have occurred within the prior 7 days) and 2.1.2 /
table 2 (stage 1: 1.5-1.9 x baseline or >= 0.3 mg/dL rise; stage 2: 2.0-2.9 x; stage 3:
>= 3.0 x, or an increase to >= 4.0 mg/dL (>= 353.6 umol/L)). Units: 1 mg/dL = 88.4 umol/L.
Baseline is the lowest value in the 7 days before the latest; the 48-hour rise compares the
latest with the lowest value in the 48 hours before it. One table row per threshold edge,
both sides of it, in mg/dL and in umol/L.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import MllpClient, ack_code
from inference import (
    KDIGO_BAND_LABELS,
    KDIGO_COLUMNS,
    KDIGO_OUTPUTS,
    SCORE_SYSTEM,
    FeatureExtractor,
    MissingInputs,
    build_advisories,
    build_kdigo_model,
    kdigo_manifest,
)
from schemas import InferenceRequest, ObservationFact
from tests.conftest import http_json
from tests.hl7_samples import msh, pid

LOINC = "http://loinc.org"
MASS_SERUM, MASS_BLOOD, MOLES_SERUM = "2160-0", "38483-4", "14682-9"
UMOL = Fraction(884, 10)  # umol/L per mg/dL
INT_OUTPUTS = ("stage", "rise_criterion", "ratio_criterion", "absolute_criterion")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        build_kdigo_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )


def run(session: ort.InferenceSession, rows: list[Mapping[str, float]]) -> list[dict[str, float]]:
    batch = np.array([[r[c] for c in KDIGO_COLUMNS] for r in rows], dtype=np.float32)
    outputs = dict(
        zip(KDIGO_OUTPUTS, session.run(list(KDIGO_OUTPUTS), {"features": batch}), strict=True)
    )
    return [{k: float(v[i]) for k, v in outputs.items()} for i in range(len(rows))]


def mg(latest: float, min_48h: float | None = None, baseline: float = 1.0) -> dict[str, float]:
    """A graph row in mg/dL; no value in the 48 h before the latest means the latest itself."""
    return {
        "creatinine": latest,
        "creatinine_min_48h": latest if min_48h is None else min_48h,
        "creatinine_baseline_7d": baseline,
    }


def umol(latest: int, min_48h: int | None = None, baseline: int = 88) -> dict[str, float]:
    """The same row from umol/L results, converted as the feature extractor does."""
    return mg(latest / 88.4, None if min_48h is None else min_48h / 88.4, baseline / 88.4)


# (row, expected stage): KDIGO 2012 table 2, every edge, both sides.
STAGES: list[tuple[str, dict[str, float], int]] = [
    ("no change", mg(1.0), 0),
    # >= 0.3 mg/dL within 48 h (ratio kept below 1.5)
    ("rise 0.29", mg(1.29, 1.0), 0),
    ("rise 0.30", mg(1.30, 1.0), 1),
    ("rise 0.30 from 1.10", mg(1.40, 1.10), 1),
    ("rise 0.29 from 1.10", mg(1.39, 1.10), 0),
    ("rise 26 umol/L (0.294 mg/dL)", umol(114, 88, 88), 0),
    ("rise 27 umol/L (0.305 mg/dL)", umol(115, 88, 88), 1),
    # 1.5 x baseline
    ("1.49 x", mg(1.49), 0),
    ("1.50 x", mg(1.50), 1),
    ("1.50 x of 0.62", mg(0.93, baseline=0.62), 1),
    ("1.49 x of 0.62", mg(0.92, baseline=0.62), 0),
    ("1.5 x in umol/L (62 -> 93)", umol(93, baseline=62), 1),
    ("1.48 x in umol/L (62 -> 92)", umol(92, baseline=62), 0),
    # 2.0 x
    ("1.99 x", mg(1.99), 1),
    ("2.00 x", mg(2.00), 2),
    ("2.0 x in umol/L (70 -> 140)", umol(140, baseline=70), 2),
    ("1.99 x in umol/L (70 -> 139)", umol(139, baseline=70), 1),
    # 3.0 x
    ("2.99 x", mg(2.99), 2),
    ("3.00 x", mg(3.00), 3),
    ("3.0 x in umol/L (61 -> 183)", umol(183, baseline=61), 3),
    ("2.98 x in umol/L (61 -> 182)", umol(182, baseline=61), 2),
    # >= 4.0 mg/dL with an acute rise (the rise alone, or >= 1.5 x)
    ("3.99 with 1.5 x", mg(3.99, baseline=2.6), 1),
    ("4.00 with 1.5 x", mg(4.00, baseline=2.6), 3),
    ("3.99 with a 0.3 rise", mg(3.99, 3.69, 3.69), 1),
    ("4.00 with a 0.3 rise", mg(4.00, 3.70, 3.70), 3),
    ("4.00 with a 0.29 rise", mg(4.00, 3.71, 3.71), 0),
    ("4.00, no acute rise", mg(4.00, baseline=3.9), 0),
    ("353 umol/L with 1.5 x", umol(353, baseline=230), 1),
    ("354 umol/L with 1.5 x", umol(354, baseline=230), 3),
    ("354 umol/L, no acute rise", umol(354, baseline=340), 0),
]


def test_stage_table_every_edge(session: ort.InferenceSession) -> None:
    """Each KDIGO 2012 creatinine criterion, both sides of each edge, in one batch."""
    results = run(session, [r for _, r, _ in STAGES])
    wrong = [
        (name, expected, got["stage"])
        for (name, _, expected), got in zip(STAGES, results, strict=True)
        if got["stage"] != expected
    ]
    assert wrong == []


def reference_kdigo(latest: Fraction, min_48h: Fraction, baseline: Fraction) -> dict[str, int]:
    """Plain-Python KDIGO 2012 in exact arithmetic, independent of the graph builder."""
    rise = latest - min_48h >= Fraction(3, 10)
    x15, x20, x30 = (latest >= k * baseline for k in (Fraction(3, 2), 2, 3))
    absolute = latest >= 4 and (rise or x15)
    stage = 3 if x30 or absolute else 2 if x20 else 1 if rise or x15 else 0
    return {
        "stage": stage,
        "rise_criterion": int(rise),
        "ratio_criterion": int(x15),
        "absolute_criterion": int(absolute),
    }


@st.composite
def lab_rows(draw: st.DrawFn) -> tuple[Fraction, Fraction, Fraction]:
    """Three results of one laboratory (0.01 mg/dL or 1 umol/L), often on a threshold."""
    per_mg = draw(st.sampled_from([Fraction(100), UMOL]))  # grid steps per mg/dL
    low, high = math.ceil(Fraction(1, 10) * per_mg), math.floor(40 * per_mg)

    def near(x: Fraction) -> st.SearchStrategy[int]:
        return st.integers(math.floor(x) - 1, math.ceil(x) + 1).filter(lambda g: low <= g <= high)

    baseline = draw(st.integers(low, math.floor(13 * per_mg)))
    min_48h = draw(st.one_of(st.integers(baseline, high), st.just(-1)))  # -1: the latest itself
    anchor = baseline if min_48h < 0 else min_48h
    latest = draw(
        st.one_of(
            st.integers(low, high),
            near(Fraction(3, 10) * per_mg + anchor),
            near(4 * per_mg),
            *(near(k * baseline) for k in (Fraction(3, 2), 2, 3)),
        )
    )
    values = [Fraction(g) / per_mg for g in (latest, latest if min_48h < 0 else min_48h, baseline)]
    return values[0], values[1], values[2]


@settings(max_examples=200, deadline=None)
@given(st.lists(lab_rows(), min_size=1, max_size=32))
def test_graph_matches_exact_reference_on_laboratory_values(
    session: ort.InferenceSession, rows: list[tuple[Fraction, Fraction, Fraction]]
) -> None:
    graph_rows = [
        dict(zip(KDIGO_COLUMNS, (float(v) for v in values), strict=True)) for values in rows
    ]
    got = [{k: int(r[k]) for k in INT_OUTPUTS} for r in run(session, graph_rows)]
    assert got == [reference_kdigo(*values) for values in rows]


def test_ratio_and_rise_outputs_are_rounded_down_to_hundredths(
    session: ort.InferenceSession,
) -> None:
    exact, below, rise = run(session, [mg(1.5), mg(2.99, baseline=1.5), mg(1.3, 1.0)])
    assert exact["baseline_ratio"] == pytest.approx(1.5)
    assert below["baseline_ratio"] == pytest.approx(1.99)  # 1.9933: never shown as 2.00
    assert rise["rise_48h"] == pytest.approx(0.3)


# --- features from the subject's history ---------------------------------------------------

NOW = datetime(2031, 7, 8, 12, 0, tzinfo=UTC)


def cr(value: float, hours_before_now: float, unit: str = "mg/dL", code: str = MASS_SERUM) -> Any:
    return ObservationFact(
        system=LOINC,
        code=code,
        value=value,
        unit=unit,
        effective=NOW - timedelta(hours=hours_before_now),
    )


def features(history: list[ObservationFact]) -> dict[str, float] | MissingInputs:
    result = FeatureExtractor(kdigo_manifest()).extract(1, "psn", history, NOW)
    if isinstance(result, MissingInputs):
        return result
    return {f.name: f.value for f in result.features}


def stage(session: ort.InferenceSession, history: list[ObservationFact]) -> int:
    row = features(history)
    assert not isinstance(row, MissingInputs), row.reason
    return int(run(session, [row])[0]["stage"])


def test_rise_within_48_h_counts_and_outside_does_not(session: ort.InferenceSession) -> None:
    latest = cr(1.35, 1)
    assert stage(session, [cr(1.0, 1 + 47), latest]) == 1
    assert stage(session, [cr(1.0, 1 + 48), latest]) == 1  # 48 h to the minute: within
    assert stage(session, [cr(1.0, 1 + 49), latest]) == 0  # 1.35 x baseline, no 48-h rise


def test_the_48_h_window_ends_at_the_latest_result_not_now(session: ort.InferenceSession) -> None:
    latest = cr(1.35, 20)  # the latest result is 20 h old
    assert stage(session, [cr(1.0, 20 + 40), latest]) == 1  # 60 h before now, 40 h before it
    assert features([cr(1.0, 20 + 40), latest]) == {
        "creatinine": 1.35,
        "creatinine_min_48h": 1.0,
        "creatinine_baseline_7d": 1.0,
    }


def test_the_lowest_value_in_48_h_is_the_reference_for_the_rise() -> None:
    history = [cr(1.1, 30), cr(0.9, 20), cr(1.2, 10), cr(1.25, 1)]
    row = features(history)
    assert not isinstance(row, MissingInputs)
    assert (row["creatinine_min_48h"], row["creatinine_baseline_7d"]) == (0.9, 0.9)


def test_without_an_earlier_value_in_48_h_the_rise_is_measured_from_the_latest() -> None:
    row = features([cr(1.0, 1 + 72), cr(1.6, 1)])
    assert row == {"creatinine": 1.6, "creatinine_min_48h": 1.6, "creatinine_baseline_7d": 1.0}


def test_baseline_within_7_days_counts_and_older_does_not(session: ort.InferenceSession) -> None:
    latest = cr(2.0, 1)
    assert stage(session, [cr(1.0, 1 + 6.9 * 24), cr(1.3, 1 + 96), latest]) == 2
    assert stage(session, [cr(1.0, 1 + 7 * 24), cr(1.3, 1 + 96), latest]) == 2  # exactly 7 d
    assert stage(session, [cr(1.0, 1 + 7.1 * 24), cr(1.3, 1 + 96), latest]) == 1  # 1.54 x of 1.3


def test_without_any_earlier_value_no_stage_is_given() -> None:
    result = features([cr(5.0, 1)])
    assert isinstance(result, MissingInputs)
    assert result.names == ["creatinine_baseline_7d"]
    old = features([cr(1.0, 1 + 8 * 24), cr(5.0, 1)])
    assert isinstance(old, MissingInputs) and old.names == ["creatinine_baseline_7d"]


def test_a_latest_result_older_than_24_h_leaves_nothing_to_stage() -> None:
    result = features([cr(1.0, 30 + 24), cr(2.0, 30)])
    assert isinstance(result, MissingInputs)
    assert result.names == ["creatinine", "creatinine_min_48h", "creatinine_baseline_7d"]


def test_four_mg_dl_is_stage_3_only_with_an_acute_rise(session: ort.InferenceSession) -> None:
    latest = cr(4.1, 1)
    assert stage(session, [cr(3.7, 1 + 30), latest]) == 3  # a 0.4 rise within 48 h
    assert stage(session, [cr(2.7, 1 + 120), latest]) == 3  # 1.52 x baseline within 7 d
    assert stage(session, [cr(3.9, 1 + 30), latest]) == 0  # chronic: 0.2 rise, 1.05 x
    assert stage(session, [cr(3.7, 1 + 60), cr(3.9, 1 + 30), latest]) == 0  # rise not in 48 h


# --- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "code", "mg_dl"),
    [
        (1.2, "mg/dL", MASS_SERUM, 1.2),
        (1.2, "mg/dl", MASS_BLOOD, 1.2),
        (106.08, "umol/L", MOLES_SERUM, 1.2),
        (88.4, "umol/L", MASS_SERUM, 1.0),  # a mass-coded result sent in umol/L: converted
        (88.4, "µmol/L", MOLES_SERUM, 1.0),
        (88.4, "\u03bcmol/l", MOLES_SERUM, 1.0),
        (353.6, "umol/L", MOLES_SERUM, 4.0),
        (1.0, "mg/dL", MOLES_SERUM, 1.0),  # a moles-coded result sent in mg/dL: as sent
    ],
)
def test_creatinine_units_are_converted_to_mg_dl(
    value: float, unit: str, code: str, mg_dl: float
) -> None:
    row = features([cr(0.5, 30), cr(value, 1, unit, code)])
    assert not isinstance(row, MissingInputs)
    assert row["creatinine"] == pytest.approx(mg_dl)


@pytest.mark.parametrize(("value", "unit"), [(0.1, "mmol/L"), (1.2, "g/L"), (1.2, None)])
def test_a_creatinine_in_an_unknown_unit_is_unusable(value: float, unit: str | None) -> None:
    row = features([cr(0.5, 30), cr(0.6, 2), cr(value, 1, unit)])  # type: ignore[arg-type]
    assert not isinstance(row, MissingInputs)
    assert row["creatinine"] == 0.6


def test_implausible_values_are_unusable_not_an_infinite_ratio() -> None:
    row = features([cr(0.0, 30), cr(0.9, 20), cr(1.2, 1), cr(400.0, 2)])
    assert row == {"creatinine": 1.2, "creatinine_min_48h": 0.9, "creatinine_baseline_7d": 0.9}


def test_mixed_units_in_one_history(session: ort.InferenceSession) -> None:
    """A baseline reported in umol/L and a latest in mg/dL (e.g. two laboratories)."""
    history = [cr(62, 1 + 100, "umol/L", MOLES_SERUM), cr(1.41, 1)]  # 1.41 / 0.7014 = 2.01 x
    assert stage(session, history) == 2


def test_max_window_covers_the_latest_window_and_the_baseline_before_it() -> None:
    assert FeatureExtractor(kdigo_manifest()).max_window == timedelta(hours=24 + 168)


# --- the advisory --------------------------------------------------------------------------


def advisory_for(session: ort.InferenceSession, history: list[ObservationFact]) -> Any:
    manifest = kdigo_manifest()
    request = FeatureExtractor(manifest).extract(11, "psn-k", history, NOW)
    assert isinstance(request, InferenceRequest)
    (outputs,) = run(session, [{f.name: f.value for f in request.features}])
    return build_advisories(manifest, request, outputs)


def test_advisory_carries_the_stage_and_explains_the_criteria(
    session: ort.InferenceSession,
) -> None:
    advisory = advisory_for(session, [cr(1.0, 1 + 100), cr(1.9, 1 + 30), cr(2.1, 1)])
    obs, risk, prov = advisory.resources
    Observation.model_validate(obs)
    RiskAssessment.model_validate(risk)
    code = {
        "system": SCORE_SYSTEM,
        "code": "kdigo-aki-stage",
        "display": "KDIGO AKI stage (creatinine)",
    }
    assert obs["code"]["coding"] == risk["code"]["coding"] == [code]
    assert obs["valueInteger"] == 2 and advisory.score == 2
    assert advisory.interpretation == KDIGO_BAND_LABELS[2] == "AKI stage 2"
    assert obs["status"] == risk["status"] == "preliminary"
    assert prov["agent"][0]["who"]["display"] == "wardgate model kdigo_aki 1.0.0"
    assert advisory.explanation == ["creatinine 2.10x baseline within 7 d"]
    text = repr(advisory.model_dump())
    assert NOW.date().isoformat() not in text and "2031-07" not in text


def test_explanations_of_rise_absolute_and_no_criterion(session: ort.InferenceSession) -> None:
    assert advisory_for(session, [cr(3.8, 1 + 30), cr(4.2, 1)]).explanation == [
        "creatinine rise 0.40 mg/dL within 48 h",
        "creatinine >=4.0 mg/dL with an acute rise",
    ]
    quiet = advisory_for(session, [cr(1.0, 1 + 30), cr(1.1, 1)])
    assert quiet.explanation == ["no KDIGO creatinine criterion met"]
    assert quiet.interpretation == "no AKI"


# --- through a running gateway -------------------------------------------------------------


def _lab(control_id: str, mrn: str, when: str, code: str, value: str, unit: str) -> bytes:
    segments = [
        msh(control_id),
        pid(mrn),
        f"OBR|1||{control_id}|CHEM^Chemistry^L|||{when}",
        f"OBX|1|NM|{code}^Creatinine^LN||{value}|{unit}^^UCUM|||||F|||{when}",
    ]
    return ("\r".join(segments) + "\r").encode()


def test_a_gateway_stages_aki_from_the_creatinine_history_it_has_kept(
    gateway_factory: Any,
) -> None:
    """Baseline 62 umol/L on day 1, 1.41 mg/dL three days later: 2.01 x baseline, stage 2."""
    gw = gateway_factory("kdigo").start()
    messages = [
        _lab("K-1", "MRN7001", "20240301080000", MOLES_SERUM, "62", "umol/L"),
        _lab("K-2", "MRN7001", "20240304080000", MASS_SERUM, "1.41", "mg/dL"),
    ]

    async def send() -> list[str]:
        async with MllpClient("127.0.0.1", gw.mllp_port) as client:
            return [ack_code(await client.send(m)) for m in messages]

    assert asyncio.run(send()) == ["AA", "AA"]
    records = gw.wait_disposed(["K-1", "K-2"])
    first = records["K-1"]["disposition"]
    assert first["outcome"] == "filtered"  # one result: no baseline yet
    assert "kdigo_aki: missing inputs creatinine_baseline_7d" in first["reason"]
    assert records["K-2"]["disposition"]["outcome"] == "written_back"
    code = f"{SCORE_SYSTEM}|kdigo-aki-stage"
    status, bundle = http_json(
        f"{gw.url}/fhir/RiskAssessment?code={code}&subject=urn:id:TESTHOSP|MRN7001"
    )
    assert status == 200 and bundle["total"] == 1
    risk = bundle["entry"][0]["resource"]
    assert risk["prediction"][0]["qualitativeRisk"]["text"] == "AKI stage 2"
    status, bundle = http_json(f"{gw.url}/fhir/Observation?code={code}")
    assert bundle["entry"][0]["resource"]["valueInteger"] == 2
    assert gw.stop() == 0
