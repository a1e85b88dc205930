"""A small builder for the reference models' ONNX graphs: thresholds as plain operators.

Every reference model (NEWS2, qSOFA, KDIGO AKI) is a graph of ``Gather`` (one ``[N]`` tensor
per input column), comparisons, ``Where`` and arithmetic: no weights, no training. The
builder names nodes and constants uniquely, shares constants, and finishes the model with the
opset and IR version every supported onnxruntime reads, checked with ``full_check``.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.17 the project supports
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class GraphBuilder:
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

    def columns(self, matrix: str, names: Sequence[str]) -> dict[str, str]:
        """Column ``j`` of the ``[N, k]`` input -> a ``[N]`` tensor named ``names[j]``."""
        for idx, col in enumerate(names):
            index = self.name("idx")
            self.initializers.append(helper.make_tensor(index, INT64, [], [idx]))
            self.nodes.append(helper.make_node("Gather", [matrix, index], [col], axis=1))
        return {col: col for col in names}

    def flag(self, x: str) -> str:
        """A 0/1 input read as a boolean: ``>= 0.5`` counts as set."""
        return self.op("GreaterOrEqual", [x, self.const(0.5, FLOAT)])

    def points(self, cond: str, out: str | None = None, score: int = 1) -> str:
        """``score`` (int64) where ``cond`` holds, else 0."""
        return self.op("Where", [cond, self.const(score, INT64), self.const(0, INT64)], out)

    def piecewise(
        self, x: str, rows: Sequence[tuple[int, int]], above: str, out: str | None = None
    ) -> str:
        """Score ``x`` by inclusive upper bounds, lowest first; ``above`` past the last."""
        result = above
        for i, (bound, score) in enumerate(reversed(rows)):
            cond = self.op("LessOrEqual", [x, self.const(bound, FLOAT)])
            last = i == len(rows) - 1
            result = self.op(
                "Where", [cond, self.const(score, INT64), result], out if last else None
            )
        return result

    def model(
        self,
        name: str,
        matrix: str,
        columns: Sequence[str],
        outputs: Sequence[tuple[str, int]],
        graph_doc: str,
        model_doc: str | None,
    ) -> onnx.ModelProto:
        """The checked model: input ``matrix`` float32 ``[N, len(columns)]``, ``[N]`` outputs."""
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(matrix, FLOAT, ["N", len(columns)])],
            [helper.make_tensor_value_info(out, dtype, ["N"]) for out, dtype in outputs],
            self.initializers,
            doc_string=graph_doc,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="wardgate",
            doc_string=model_doc,
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, {"columns": ",".join(columns)})
        onnx.checker.check_model(model, full_check=True)
        return model
