"""The graph facts Q/DQ placement needs: which ops carry weights, pass values through or fuse, and a small
indexed view of an ONNX graph (producers, consumers, initializers, constants)."""

from __future__ import annotations

from typing import Any

import numpy as np


MIN_OPSET = 13  # DequantizeLinear's `axis` (per-channel weights) arrived in opset 13
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PLACEMENTS = {
    "trt": "inputs and weights of Conv/ConvTranspose/Gemm/MatMul, residual inputs of Conv-fed Adds, shared Concat scales",
    "weighted": "inputs and weights of Conv/ConvTranspose/Gemm/MatMul only (no Add residuals)",
}
BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")
# Ops whose output holds the same values (or a selection of them) as their first input: a tensor without its own scale
# takes the scale of what it was reshaped or max-pooled from. TensorRT ties max-pool scales the same way.
PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "MaxPool")
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu")
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
UNNAMED_PREFIX = "(Unnamed Layer*"


class Graph:
    """Read-only indexes over a graph: producers, consumers, constants.

    `outer`: name -> TensorProto of the constants an If branch reads from enclosing graphs (weights of a branch's
    Conv are often the main graph's initializers)."""

    def __init__(self, graph: Any, outer: Any = None) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.initializers = {**(outer or {}), **{t.name: t for t in graph.initializer}}
        self.constant_nodes = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output and constant_attr(n) is not None
        }
        self.producer: dict[str, tuple[int, Any]] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = (i, node)
            for j, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((i, j))
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input if i.name not in self.initializers}
        self._numpy_helper = numpy_helper

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray:
        if name in self.initializers:
            return self._numpy_helper.to_array(self.initializers[name])
        return self._numpy_helper.to_array(constant_attr(self.constant_nodes[name]))

    def is_tensor(self, name: str) -> bool:
        return name in self.producer or name in self.inputs or name in self.initializers

    def op_of(self, name: str) -> str | None:
        p = self.producer.get(name)
        return p[1].op_type if p else None


def constant_attr(node: Any) -> Any:
    """The TensorProto of a Constant node's `value` attribute (None for value_float etc., which hold no weights)."""
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return a.t
    return None


def node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def tensorrt_layer_name(node: Any) -> str:
    """The name TensorRT's ONNX parser gives the first layer it creates for `node`: the node's name, or
    ``node_of_<first output>`` for an unnamed node (onnx-tensorrt importerUtils.cpp getNodeName, 8.6 to 10.x)."""
    if not node.name and node.output:
        return f"node_of_{node.output[0]}"
    return node.name


def node_indices(graph: Any) -> dict[str, int]:
    """Every name a node answers to -> its index: its label (name, or OpType_index when unnamed) and, for an
    unnamed node, the TensorRT layer name ``node_of_<output>`` too. A name two nodes share points at the first."""
    out: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        out.setdefault(node_label(node, i), i)
    for i, node in enumerate(graph.node):
        out.setdefault(tensorrt_layer_name(node), i)
    return out


def onnx_opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def node_attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
