"""Rewriting the graph as planned: int8 weights behind DequantizeLinear, activation Q/DQ pairs, unused constants dropped."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..ort.control_flow import subgraph_reads
from ..ort.model import tensor_types
from .graph import Graph
from .placement import Plan
from .scales import Affine
from .weights import quantize_weight

log = logging.getLogger(__name__)


class NameMaker:
    """Fresh names: none a graph or any of its subgraphs (If branches, Loop/Scan bodies) already uses."""

    def __init__(self, graph: Any) -> None:
        self.taken: set[str] = set()
        self._add(graph)

    def _add(self, graph: Any) -> None:
        self.taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
        for n in graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
            if n.name:
                self.taken.add(n.name)
            for attr in n.attribute:
                if attr.HasField("g"):
                    self._add(attr.g)
                for sub in attr.graphs:
                    self._add(sub)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def float_dtype(elem_type: int | None) -> np.dtype:
    from onnx import TensorProto, helper

    if elem_type in (TensorProto.FLOAT16, TensorProto.DOUBLE):
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    return np.dtype(np.float32)


def _scale_and_zero_point(grid: Any) -> tuple[np.float32, np.ndarray]:
    """The scale and the scalar zero point (int8 0, or the asymmetric one in its own type) of an activation pair."""
    if isinstance(grid, Affine):
        q = grid.quantizer
        return np.float32(q.scale), np.asarray(q.zero_point, np.uint8 if q.qmin >= 0 else np.int8)
    return grid, np.zeros((), np.int8)


def rewrite_graph(model: Any, g: Graph, plan: Plan, *, graph: Any = None, names: NameMaker | None = None,
                  types: dict[str, int] | None = None) -> None:
    """Insert the planned Q/DQ nodes in place (topological order kept) and drop constants nothing reads any more.

    `graph`: the graph `g` indexes when it is not the main graph (an If branch: its new initializers go into the
    branch; the caller drops the main graph's weights that no branch reads any more); `names`, `types`: shared by
    the rewrites of one model."""
    from onnx import NodeProto, helper, numpy_helper

    graph = model.graph if graph is None else graph
    names = NameMaker(model.graph) if names is None else names
    types = tensor_types(model) if types is None else types
    old_nodes = list(graph.node)
    pending: dict[int, list[Any]] = {}  # node index -> nodes to emit before it
    new_inits: list[Any] = []
    rename: dict[tuple[int, int], str] = {}

    for tensor, slots in plan.act_slots.items():
        dtype = float_dtype(types.get(tensor))
        scale, zero_point = _scale_and_zero_point(plan.act_grid[tensor])
        if dtype != np.float32:
            log.warning("%s is %s: its scale is rounded to %s (no longer bit-exact)", tensor, dtype, dtype)
        s_name, z_name = names(f"{tensor}_scale"), names(f"{tensor}_zero_point")
        q_out, dq_out = names(f"{tensor}_quantized"), names(f"{tensor}_dequantized")
        new_inits.append(numpy_helper.from_array(np.asarray(scale, dtype=dtype).reshape(()), s_name))
        new_inits.append(numpy_helper.from_array(zero_point, z_name))
        q = helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_out], name=names(f"{tensor}_QuantizeLinear"))
        dq = helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=names(f"{tensor}_DequantizeLinear"))
        first = min(i for i, _ in slots)
        pending.setdefault(first, []).extend([q, dq])
        for slot in slots:
            rename[slot] = dq_out

    done: dict[tuple[str, int | None], str] = {}
    for index, axis in plan.weights.items():
        node = old_nodes[index]
        weight = node.input[1]
        key = (weight, axis)
        if key not in done:
            w = g.constant(weight)
            q, scale = quantize_weight(w, axis)
            scale = scale.astype(w.dtype) if w.dtype in (np.float16, np.float64) else scale
            q_name, s_name, z_name = names(f"{weight}_int8"), names(f"{weight}_scale"), names(f"{weight}_zero_point")
            dq_out = names(f"{weight}_dequantized")
            new_inits.append(numpy_helper.from_array(q, q_name))
            new_inits.append(numpy_helper.from_array(scale, s_name))
            new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name))
            kwargs = {"axis": axis} if axis is not None else {}
            dq = helper.make_node(
                "DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=names(f"{weight}_DequantizeLinear"), **kwargs
            )
            first = min(i for i in plan.weights if old_nodes[i].input[1] == weight and plan.weights[i] == axis)
            pending.setdefault(first, []).append(dq)
            done[key] = dq_out
        rename[(index, 1)] = done[key]

    new_nodes = []
    for index, old in enumerate(old_nodes):
        new_nodes.extend(pending.get(index, []))
        node = NodeProto()
        node.CopyFrom(old)
        for j in range(len(node.input)):
            if (index, j) in rename:
                node.input[j] = rename[(index, j)]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    drop_unused_constants(graph)


def drop_unused_constants(graph: Any) -> None:
    """Remove initializers and Constant nodes (and initializer-backed graph inputs) no node, output or subgraph
    reads (an If branch or a Loop body may read the main graph's initializers by name)."""
    while True:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output} | subgraph_reads(graph)
        dead_nodes = [n for n in graph.node if n.op_type == "Constant" and n.output and n.output[0] not in read]
        dead_inits = [t for t in graph.initializer if t.name not in read]
        if not dead_nodes and not dead_inits:
            return
        dead_names = {t.name for t in dead_inits}
        for n in dead_nodes:
            graph.node.remove(n)
        kept = [t for t in graph.initializer if t.name not in dead_names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        inputs = [i for i in graph.input if i.name not in dead_names]
        del graph.input[:]
        graph.input.extend(inputs)
