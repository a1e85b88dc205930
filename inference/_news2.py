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

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

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

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.17 the project supports


class _Graph:
    """Collects nodes and constants with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[int, float], str] = {}
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: float, dtype: int) -> str:
        key = (dtype, float(value))
        if key not in self._consts:
            name = self.name("c")
            self.initializers.append(helper.make_tensor(name, dtype, [], [value]))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out]))
        return out

    def piecewise(
        self, x: str, rows: Sequence[tuple[int, int]], above: str, out: str | None = None
    ) -> str:
        """Score ``x`` by inclusive upper bounds, lowest first; ``above`` past the last."""
        result = above
        for i, (bound, score) in enumerate(reversed(rows)):
            cond = self.op("LessOrEqual", [x, self.const(bound, TensorProto.FLOAT)])
            last = i == len(rows) - 1
            result = self.op(
                "Where", [cond, self.const(score, TensorProto.INT64), result], out if last else None
            )
        return result


def build_news2_model() -> onnx.ModelProto:
    """Build and check the NEWS2 graph."""
    g = _Graph()
    cols: dict[str, str] = {}
    for idx, col in enumerate(NEWS2_COLUMNS):  # column j -> a [N] tensor named after it
        index = g.name("idx")
        g.initializers.append(helper.make_tensor(index, TensorProto.INT64, [], [idx]))
        g.nodes.append(helper.make_node("Gather", [NEWS2_INPUT, index], [col], axis=1))
        cols[col] = col

    def flag(col: str) -> str:
        return g.op("GreaterOrEqual", [cols[col], g.const(0.5, TensorProto.FLOAT)])

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

    graph = helper.make_graph(
        g.nodes,
        "news2",
        [helper.make_tensor_value_info(NEWS2_INPUT, TensorProto.FLOAT, ["N", len(NEWS2_COLUMNS)])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["N"]) for name in NEWS2_OUTPUTS],
        g.initializers,
        doc_string="NEWS2 (RCP 2017). Columns: " + ", ".join(NEWS2_COLUMNS),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="wardgate",
        doc_string=__doc__,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"columns": ",".join(NEWS2_COLUMNS)})
    onnx.checker.check_model(model, full_check=True)
    return model
