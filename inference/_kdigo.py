"""KDIGO acute kidney injury stage from serum creatinine, as a plain ONNX graph, and its manifest.

KDIGO Clinical Practice Guideline for Acute Kidney Injury (Kidney Int Suppl 2012;2:1-138),
recommendations 2.1.1 (definition) and 2.1.2 (staging, table 2), creatinine criteria only
(no urine output, no renal replacement therapy):

- AKI: a rise of >= 0.3 mg/dL within 48 h, or >= 1.5 x baseline within the prior 7 days;
- stage 1: 1.5-1.9 x baseline, or the >= 0.3 mg/dL rise within 48 h;
- stage 2: 2.0-2.9 x baseline;
- stage 3: >= 3.0 x baseline, or creatinine >= 4.0 mg/dL (353.6 umol/L) *with* an acute
  rise (either AKI criterion above), as the guideline's footnote requires.

Features come from the subject's history (see the manifest): the latest creatinine, the
lowest value in the 48 h before it (the rise compares against that; with none, the latest
itself: no rise), and the lowest in the 7 days before it (the baseline; with none, no stage
can be given and the row is not built). Values in umol/L are converted (1 mg/dL = 88.4
umol/L).

Input ``features``: float32 ``[N, 3]`` in mg/dL, columns :data:`KDIGO_COLUMNS`, values > 0.
Outputs (``[N]`` each): ``stage`` 0-3 (int64); ``rise_criterion``, ``ratio_criterion``
(>= 1.5 x baseline), ``absolute_criterion`` (>= 4.0 with an acute rise), 0/1 int64; and, for
explanations, ``baseline_ratio`` and ``rise_48h`` (mg/dL), float32 rounded down to 0.01.

Precision: the graph computes in float32, which cannot hold 1.3 or 0.3 exactly. Every
comparison therefore allows :data:`TOLERANCE_MG_DL` (1e-4 mg/dL): creatinine is reported to
0.01 mg/dL or 1 umol/L (0.011 mg/dL), so a result on a threshold lands on its side, and no
result reported in one unit lies within the tolerance of a threshold without being on it.
"""

from __future__ import annotations

import onnx

from inference._graph import FLOAT, INT64, GraphBuilder
from inference._manifest import (
    SCORE_SYSTEM,
    AdvisoryMapping,
    Aggregate,
    Code,
    Explanation,
    ModelInput,
    ModelManifest,
    loinc,
)

KDIGO_VERSION = "1.0.0"
KDIGO_INPUT = "features"
KDIGO_COLUMNS: tuple[str, ...] = (
    "creatinine",  # latest, mg/dL
    "creatinine_min_48h",  # lowest in the 48 h before the latest (else the latest), mg/dL
    "creatinine_baseline_7d",  # lowest in the 7 days before the latest, mg/dL
)
KDIGO_OUTPUTS: tuple[str, ...] = (
    "stage",
    "rise_criterion",
    "ratio_criterion",
    "absolute_criterion",
    "baseline_ratio",
    "rise_48h",
)
KDIGO_BAND_LABELS: dict[int, str] = {
    0: "no AKI",
    1: "AKI stage 1",
    2: "AKI stage 2",
    3: "AKI stage 3",
}
KDIGO_CODE = Code(
    system=SCORE_SYSTEM, code="kdigo-aki-stage", display="KDIGO AKI stage (creatinine)"
)

UMOL_PER_MG_DL = 88.4  # creatinine: 1 mg/dL = 88.4 umol/L
RISE_MG_DL = 0.3
RISE_WINDOW_H = 48.0
BASELINE_WINDOW_H = 168.0  # 7 days
LATEST_WINDOW_H = 24.0  # how long the latest result stands for "now"
STAGE_RATIOS = (1.5, 2.0, 3.0)
ABSOLUTE_MG_DL = 4.0
TOLERANCE_MG_DL = 1e-4
VALID_MG_DL = (0.1, 40.0)


def build_kdigo_model() -> onnx.ModelProto:
    """Build and check the KDIGO AKI graph."""
    g = GraphBuilder()
    cols = g.columns(KDIGO_INPUT, KDIGO_COLUMNS)
    cr = cols["creatinine"]
    tol = g.const(TOLERANCE_MG_DL, FLOAT)

    def at_least(x: str, bound: str) -> str:
        return g.op("GreaterOrEqual", [x, g.op("Sub", [bound, tol])])

    rise = g.op("Sub", [cr, cols["creatinine_min_48h"]])
    rise_met = at_least(rise, g.const(RISE_MG_DL, FLOAT))
    # a baseline must be > 0 (the extractor refuses implausible values); guard the division
    baseline = g.op("Max", [cols["creatinine_baseline_7d"], g.const(VALID_MG_DL[0], FLOAT)])
    x15, x20, x30 = (at_least(cr, g.op("Mul", [baseline, g.const(k, FLOAT)])) for k in STAGE_RATIOS)
    acute = g.op("Or", [rise_met, x15])
    absolute = g.op("And", [at_least(cr, g.const(ABSOLUTE_MG_DL, FLOAT)), acute])

    zero, one = g.const(0, INT64), g.const(1, INT64)
    two, three = g.const(2, INT64), g.const(3, INT64)
    stage1 = g.op("Where", [acute, one, zero])
    stage2 = g.op("Where", [x20, two, stage1])
    g.op("Where", [g.op("Or", [x30, absolute]), three, stage2], "stage")
    g.points(rise_met, "rise_criterion")
    g.points(x15, "ratio_criterion")
    g.points(absolute, "absolute_criterion")

    def hundredths_down(x: str, out: str) -> str:
        hundred = g.const(100, FLOAT)
        nudged = g.op("Add", [g.op("Mul", [x, hundred]), g.const(0.001, FLOAT)])
        return g.op("Div", [g.op("Floor", [nudged]), hundred], out)

    hundredths_down(g.op("Div", [cr, baseline]), "baseline_ratio")
    hundredths_down(rise, "rise_48h")
    float_outputs = {"baseline_ratio", "rise_48h"}
    return g.model(
        "kdigo_aki",
        KDIGO_INPUT,
        KDIGO_COLUMNS,
        [(name, FLOAT if name in float_outputs else INT64) for name in KDIGO_OUTPUTS],
        "KDIGO AKI stage, creatinine criteria (KDIGO 2012). Columns: " + ", ".join(KDIGO_COLUMNS),
        __doc__ or "",
    )


def _creatinine(
    name: str,
    description: str,
    hours: float,
    aggregate: Aggregate = "latest",
    fallback: str | None = None,
) -> ModelInput:
    """A creatinine input in mg/dL; any but the latest looks back from the latest value."""
    return ModelInput(
        name=name,
        kind="quantity",
        description=description,
        codes=[
            loinc("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
            loinc("38483-4", "Creatinine [Mass/volume] in Blood"),
            loinc("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", unit="umol/L"),
        ],
        unit="mg/dL",
        other_units={"umol/L": UMOL_PER_MG_DL},
        valid_range=VALID_MG_DL,
        lookback_hours=hours,
        aggregate=aggregate,
        anchor=None if aggregate == "latest" else "creatinine",
        fallback=fallback,
    )


def kdigo_manifest() -> ModelManifest:
    """The manifest of the reference KDIGO AKI model; inputs follow ``KDIGO_COLUMNS``."""
    inputs = [
        _creatinine("creatinine", "latest serum creatinine", LATEST_WINDOW_H),
        _creatinine(
            "creatinine_min_48h",
            "lowest creatinine in the 48 h before the latest (else the latest)",
            RISE_WINDOW_H,
            aggregate="min",
            fallback="creatinine",
        ),
        _creatinine(
            "creatinine_baseline_7d",
            "baseline: lowest creatinine in the 7 days before the latest",
            BASELINE_WINDOW_H,
            aggregate="min",
        ),
    ]
    assert [i.name for i in inputs] == list(KDIGO_COLUMNS)
    return ModelManifest(
        id="kdigo_aki",
        version=KDIGO_VERSION,
        description="KDIGO acute kidney injury stage from serum creatinine history",
        reference=(
            "Kidney Disease: Improving Global Outcomes (KDIGO) Acute Kidney Injury Work Group."
            " KDIGO Clinical Practice Guideline for Acute Kidney Injury. Kidney Int Suppl"
            " 2012;2:1-138 (recommendations 2.1.1-2.1.2)."
        ),
        onnx_input=KDIGO_INPUT,
        inputs=inputs,
        outputs=list(KDIGO_OUTPUTS),
        advisory=AdvisoryMapping(
            kind="risk",
            score_output="stage",
            band_output="stage",
            band_labels=KDIGO_BAND_LABELS,
            explanations=[
                Explanation(
                    when="ratio_criterion",
                    text="creatinine {baseline_ratio:.2f}x baseline within 7 d",
                ),
                Explanation(
                    when="rise_criterion", text="creatinine rise {rise_48h:.2f} mg/dL within 48 h"
                ),
                Explanation(
                    when="absolute_criterion", text="creatinine >=4.0 mg/dL with an acute rise"
                ),
            ],
            explain_none="no KDIGO creatinine criterion met",
            observation_code=KDIGO_CODE,
        ),
    )
