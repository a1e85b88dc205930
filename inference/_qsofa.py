"""qSOFA (Singer et al., JAMA 2016, Sepsis-3) as a plain ONNX graph, and its manifest.

One point each for respiratory rate >= 22/min, altered mentation, and systolic blood
pressure <= 100 mm[Hg]; a score of 2 or more is "positive" (Singer M, Deutschman CS,
Seymour CW, et al. The Third International Consensus Definitions for Sepsis and Septic Shock
(Sepsis-3). JAMA 2016;315(8):801-810, box 4 / figure). Both thresholds are whole numbers,
exactly representable in float32, so the graph and a float64 reference agree on every
float32 input.

Input ``features``: float32 ``[N, 3]``, columns in :data:`QSOFA_COLUMNS` order;
``altered_mentation`` is 0/1 (``>= 0.5`` counts as set). Outputs (int64 ``[N]`` each):
``total`` 0-3, ``positive`` 0/1, and one ``*_point`` per criterion (used in explanations).

Altered mentation is filled from the latest of either observation in the window: the ACVPU
scale (SNOMED CT 1104441000000107; anything other than Alert 248234008 counts), or a Glasgow
Coma Scale total (LOINC 9269-2) below 15, the cut-off the Sepsis-3 task force uses.
"""

from __future__ import annotations

import onnx

from inference._graph import FLOAT, INT64, GraphBuilder
from inference._manifest import (
    SCORE_SYSTEM,
    SNOMED,
    AdvisoryMapping,
    Code,
    Explanation,
    InputSource,
    ModelInput,
    ModelManifest,
)
from inference._vitals import RESPIRATORY_RATE, SYSTOLIC_BP, VITALS_WINDOW_H

QSOFA_VERSION = "1.0.0"
QSOFA_INPUT = "features"
QSOFA_COLUMNS: tuple[str, ...] = (
    "respiratory_rate",  # /min
    "altered_mentation",  # 0 = alert (ACVPU A, GCS 15), 1 = altered
    "systolic_bp",  # mm[Hg]
)
QSOFA_OUTPUTS: tuple[str, ...] = (
    "total",
    "positive",
    "respiratory_rate_point",
    "mentation_point",
    "systolic_bp_point",
)
QSOFA_BAND_LABELS: dict[int, str] = {0: "negative", 1: "positive"}
QSOFA_CODE = Code(system=SCORE_SYSTEM, code="qsofa", display="qSOFA score")

RR_AT_LEAST = 22  # /min
SBP_AT_MOST = 100  # mm[Hg]
GCS_BELOW = 15.0
POSITIVE_AT_LEAST = 2
# ACVPU (SNOMED CT): alert, new confusion, voice, pain, unresponsive
_ACVPU = {
    "248234008": 0.0,
    "130987000": 1.0,
    "300202002": 1.0,
    "450847001": 1.0,
    "422768004": 1.0,
}


def build_qsofa_model() -> onnx.ModelProto:
    """Build and check the qSOFA graph."""
    g = GraphBuilder()
    cols = g.columns(QSOFA_INPUT, QSOFA_COLUMNS)
    rr = g.op("GreaterOrEqual", [cols["respiratory_rate"], g.const(RR_AT_LEAST, FLOAT)])
    g.points(rr, "respiratory_rate_point")
    g.points(g.flag(cols["altered_mentation"]), "mentation_point")
    sbp = g.op("LessOrEqual", [cols["systolic_bp"], g.const(SBP_AT_MOST, FLOAT)])
    g.points(sbp, "systolic_bp_point")
    partial = g.op("Add", ["respiratory_rate_point", "mentation_point"])
    g.op("Add", [partial, "systolic_bp_point"], "total")
    g.points(g.op("GreaterOrEqual", ["total", g.const(POSITIVE_AT_LEAST, INT64)]), "positive")
    return g.model(
        "qsofa",
        QSOFA_INPUT,
        QSOFA_COLUMNS,
        [(name, INT64) for name in QSOFA_OUTPUTS],
        "qSOFA (Singer et al., JAMA 2016). Columns: " + ", ".join(QSOFA_COLUMNS),
        __doc__ or "",
    )


def qsofa_manifest() -> ModelManifest:
    """The manifest of the reference qSOFA model; inputs follow ``QSOFA_COLUMNS``."""
    inputs = [
        RESPIRATORY_RATE,
        ModelInput(
            name="altered_mentation",
            kind="flag",
            description="ACVPU other than Alert, or GCS total < 15 (whichever is latest)",
            codes=[
                InputSource(system=SNOMED, code="1104441000000107", display="ACVPU"),
                InputSource(
                    system="http://loinc.org",
                    code="9269-2",
                    display="Glasgow coma score total",
                    flag_below=GCS_BELOW,
                ),
            ],
            value_map=_ACVPU,
            lookback_hours=VITALS_WINDOW_H,
        ),
        SYSTOLIC_BP,
    ]
    assert [i.name for i in inputs] == list(QSOFA_COLUMNS)
    return ModelManifest(
        id="qsofa",
        version=QSOFA_VERSION,
        description="quick Sequential Organ Failure Assessment (qSOFA), Sepsis-3",
        reference=(
            "Singer M, Deutschman CS, Seymour CW, et al. The Third International Consensus"
            " Definitions for Sepsis and Septic Shock (Sepsis-3). JAMA 2016;315(8):801-810."
        ),
        onnx_input=QSOFA_INPUT,
        inputs=inputs,
        outputs=list(QSOFA_OUTPUTS),
        advisory=AdvisoryMapping(
            kind="risk",
            score_output="total",
            band_output="positive",
            band_labels=QSOFA_BAND_LABELS,
            explanations=[
                Explanation(when="respiratory_rate_point", text=f"respiratory_rate>={RR_AT_LEAST}"),
                Explanation(when="mentation_point", text="altered_mentation (ACVPU or GCS<15)"),
                Explanation(when="systolic_bp_point", text=f"systolic_bp<={SBP_AT_MOST}"),
            ],
            explain_none="no qSOFA criterion met",
            observation_code=QSOFA_CODE,
        ),
    )
