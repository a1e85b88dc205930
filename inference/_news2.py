"""NEWS2 (Royal College of Physicians, 2017) as a plain ONNX graph: thresholds, no training.

The chart is a set of bands per parameter; each band is applied by its *upper bound with
``<=``*, so a value that falls between two printed rows (RR 20.5, temperature 38.05) scores
with the next band up (RR 20.5 -> 2, as if it were 21). All thresholds are whole numbers,
exactly representable in float32, so the graph and a float64 reference agree on every
float32 input.

Input ``features``: float32 ``[N, 8]``, columns in :data:`NEWS2_COLUMNS` order. Flags are
0/1 (``>= 0.5`` counts as set). Inputs must be finite: the engine refuses NaN before it
reaches the graph, because a comparison with NaN is false and would fall into a top band.

Outputs (int64 ``[N]`` each): ``total``, ``band`` (:data:`NEWS2_BAND_LABELS`) and one
``<parameter>_score`` per chart row (:data:`NEWS2_COMPONENT_OUTPUTS`).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from inference._graph import GraphBuilder
from inference._manifest import (
    SNOMED,
    AdvisoryMapping,
    Code,
    InputSource,
    ModelInput,
    ModelManifest,
    loinc,
)
from inference._vitals import RESPIRATORY_RATE, SYSTOLIC_BP, VITALS_WINDOW_H

NEWS2_INPUT = "features"

NEWS2_COLUMNS: tuple[str, ...] = (
    "respiratory_rate",  # /min
    "spo2",  # %
    "on_oxygen",  # 0 = air, 1 = supplemental oxygen
    "systolic_bp",  # mm[Hg]
    "heart_rate",  # /min
    "temperature",  # Cel
    "acvpu_not_alert",  # 0 = Alert, 1 = new Confusion / Voice / Pain / Unresponsive
    "spo2_scale2",  # 0 = SpO2 scale 1, 1 = scale 2 (hypercapnic respiratory failure)
)

#: output name -> the chart parameter it scores (used in explanations)
NEWS2_COMPONENT_OUTPUTS: dict[str, str] = {
    "respiratory_rate_score": "respiratory_rate",
    "spo2_score": "spo2",
    "air_or_oxygen_score": "air_or_oxygen",
    "systolic_bp_score": "systolic_bp",
    "heart_rate_score": "heart_rate",
    "consciousness_score": "consciousness",
    "temperature_score": "temperature",
}

NEWS2_OUTPUTS: tuple[str, ...] = ("total", "band", *NEWS2_COMPONENT_OUTPUTS)

NEWS2_VERSION = "1.0.0"

#: clinical risk band code -> label (RCP 2017, chart 2)
NEWS2_BAND_LABELS: dict[int, str] = {0: "low", 1: "low-medium", 2: "medium", 3: "high"}

# (upper bound inclusive, score) rows, then the score above the last bound.
_RR = ([(8, 3), (11, 1), (20, 0), (24, 2)], 3)
_SPO2_S1 = ([(91, 3), (93, 2), (95, 1)], 0)
_SPO2_S2_LOW = [(83, 3), (85, 2), (87, 1), (92, 0)]  # above 92: depends on air/oxygen
_SPO2_S2_OXYGEN = ([(94, 1), (96, 2)], 3)
_SBP = ([(90, 3), (100, 2), (110, 1), (219, 0)], 3)
_HR = ([(40, 3), (50, 1), (90, 0), (110, 1), (130, 2)], 3)
_TEMP = ([(35, 3), (36, 1), (38, 0), (39, 1)], 2)


def build_news2_model() -> onnx.ModelProto:
    """Build and check the NEWS2 graph."""
    g = GraphBuilder()
    cols = g.columns(NEWS2_INPUT, NEWS2_COLUMNS)

    def flag(col: str) -> str:
        return g.flag(cols[col])

    int64 = TensorProto.INT64
    on_oxygen = flag("on_oxygen")
    zero, two, three = g.const(0, int64), g.const(2, int64), g.const(3, int64)

    g.piecewise(cols["respiratory_rate"], _RR[0], g.const(_RR[1], int64), "respiratory_rate_score")
    scale1 = g.piecewise(cols["spo2"], _SPO2_S1[0], g.const(_SPO2_S1[1], int64))
    oxy_high = g.piecewise(cols["spo2"], _SPO2_S2_OXYGEN[0], g.const(_SPO2_S2_OXYGEN[1], int64))
    s2_above = g.op("Where", [on_oxygen, oxy_high, zero])
    scale2 = g.piecewise(cols["spo2"], _SPO2_S2_LOW, s2_above)
    g.op("Where", [flag("spo2_scale2"), scale2, scale1], "spo2_score")
    g.op("Where", [on_oxygen, two, zero], "air_or_oxygen_score")
    g.piecewise(cols["systolic_bp"], _SBP[0], g.const(_SBP[1], int64), "systolic_bp_score")
    g.piecewise(cols["heart_rate"], _HR[0], g.const(_HR[1], int64), "heart_rate_score")
    g.op("Where", [flag("acvpu_not_alert"), three, zero], "consciousness_score")
    g.piecewise(cols["temperature"], _TEMP[0], g.const(_TEMP[1], int64), "temperature_score")

    components = list(NEWS2_COMPONENT_OUTPUTS)
    total = components[0]
    for i, name in enumerate(components[1:], start=2):
        total = g.op("Add", [total, name], "total" if i == len(components) else None)
    any_three = g.op("Equal", [g.op("Max", components), three])
    low_or_lm = g.op("Where", [any_three, g.const(1, int64), zero])
    medium_or_less = g.op(
        "Where", [g.op("GreaterOrEqual", ["total", g.const(5, int64)]), two, low_or_lm]
    )
    g.op(
        "Where",
        [g.op("GreaterOrEqual", ["total", g.const(7, int64)]), three, medium_or_less],
        "band",
    )
    return g.model(
        "news2",
        NEWS2_INPUT,
        NEWS2_COLUMNS,
        [(name, int64) for name in NEWS2_OUTPUTS],
        "NEWS2 (RCP 2017). Columns: " + ", ".join(NEWS2_COLUMNS),
        __doc__,
    )


def news2_manifest() -> ModelManifest:
    """The manifest of the reference NEWS2 model; inputs follow ``NEWS2_COLUMNS``.

    NEWS2 input codes:
    - respiratory rate LOINC 9279-1 (/min); SpO2 LOINC 59408-5 or 2708-6 (%);
    - supplemental oxygen, either LOINC 3151-8 inhaled oxygen flow rate (L/min; flow > 0 means
      on oxygen) or SNOMED CT 371825009 |Patient on oxygen| answered yes 373066001 / no
      373067005 (or a valueBoolean), the coding NHS England's vital-signs guidance uses; a coded
      "air or oxygen" answer of 722742002 |Breathing room air| or 371825009 is accepted too;
    - systolic BP LOINC 8480-6 (mm[Hg]); heart rate LOINC 8867-4 (/min);
      temperature LOINC 8310-5 (Cel; [degF] is converted);
    - consciousness: SNOMED CT 1104441000000107 ACVPU, alert 248234008 -> 0; new confusion
      130987000, voice 300202002, pain 450847001, unresponsive 422768004 -> 1;
    - SpO2 scale 2: a ``config`` input, set per patient by configuration, default scale 1.
    """
    inputs = [
        RESPIRATORY_RATE,
        ModelInput(
            name="spo2",
            kind="quantity",
            description="oxygen saturation",
            codes=[
                loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
                loinc("2708-6", "Oxygen saturation in Arterial blood"),
            ],
            unit="%",
            lookback_hours=VITALS_WINDOW_H,
        ),
        ModelInput(
            name="on_oxygen",
            kind="flag",
            description="supplemental oxygen (1) or air (0)",
            codes=[
                loinc("3151-8", "Inhaled oxygen flow rate", unit="L/min"),
                InputSource(system=SNOMED, code="371825009", display="Patient on oxygen"),
            ],
            value_map={"373066001": 1.0, "373067005": 0.0, "371825009": 1.0, "722742002": 0.0},
            lookback_hours=VITALS_WINDOW_H,
        ),
        SYSTOLIC_BP,
        ModelInput(
            name="heart_rate",
            kind="quantity",
            description="pulse",
            codes=[loinc("8867-4", "Heart rate")],
            unit="/min",
            lookback_hours=VITALS_WINDOW_H,
        ),
        ModelInput(
            name="temperature",
            kind="quantity",
            description="body temperature",
            codes=[loinc("8310-5", "Body temperature")],
            unit="Cel",
            lookback_hours=VITALS_WINDOW_H,
        ),
        ModelInput(
            name="acvpu_not_alert",
            kind="coded",
            description="ACVPU other than Alert (new confusion, voice, pain, unresponsive)",
            codes=[InputSource(system=SNOMED, code="1104441000000107", display="ACVPU")],
            value_map={
                "248234008": 0.0,
                "130987000": 1.0,
                "300202002": 1.0,
                "450847001": 1.0,
                "422768004": 1.0,
            },
            lookback_hours=VITALS_WINDOW_H,
        ),
        ModelInput(
            name="spo2_scale2",
            kind="config",
            description="use SpO2 scale 2 (target 88-92%), set by a clinician per patient",
            default=0.0,
        ),
    ]
    assert [i.name for i in inputs] == list(NEWS2_COLUMNS)
    return ModelManifest(
        id="news2",
        version=NEWS2_VERSION,
        description="National Early Warning Score 2, as an ONNX graph of the published chart",
        reference="Royal College of Physicians. National Early Warning Score (NEWS) 2. 2017.",
        onnx_input=NEWS2_INPUT,
        inputs=inputs,
        outputs=list(NEWS2_OUTPUTS),
        advisory=AdvisoryMapping(
            kind="risk",
            score_output="total",
            band_output="band",
            band_labels=NEWS2_BAND_LABELS,
            component_outputs=NEWS2_COMPONENT_OUTPUTS,
            observation_code=Code(system=SNOMED, code="1104051000000101", display="NEWS2 score"),
        ),
    )
