"""Placement: which tensors get Q/DQ pairs, following TensorRT's guidance (docs/qdq.md), and which share a scale."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from ..errors import ModelError
from .graph import FUSED_ACTIVATIONS, POOLS, WEIGHTED_OPS, Graph, node_label, node_indices
from .report import NodeCoverage
from .scales import Resolver
from .weights import weight_axis


@dataclass
class Plan:
    """What to insert: activation Q/DQ pairs (tensor -> grid, slots) and weight DQs (node index -> axis)."""

    widest: Callable[[Sequence[Any]], Any]  # Scales.widest: the grid that covers several
    act_grid: dict[str, Any] = field(default_factory=dict)  # np.float32 scale, or Affine when asymmetric
    act_origin: dict[str, str] = field(default_factory=dict)
    act_slots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    weights: dict[int, int | None] = field(default_factory=dict)  # node index -> axis (None per-tensor)
    coverage: dict[int, NodeCoverage] = field(default_factory=dict)
    unquantized: dict[str, str] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # Concat leaves sharing one grid
    # node index -> the (tensor, slot) pairs placed for that node: what leaving it in float takes away
    claims: dict[int, list[tuple[str, tuple[int, int]]]] = field(default_factory=dict)

    @property
    def units(self) -> list[int]:
        """The quantised nodes (weighted ops, residual Adds), in graph order: what exclusions act on."""
        return [i for i in sorted(self.coverage) if self.coverage[i].quantized]

    def restricted(self, *, weights: Collection[int], activations: Collection[int]) -> "Plan":
        """This plan with int8 weights only for the nodes in `weights` and activation Q/DQ pairs only where a node in
        `activations` reads them; every grid stays as planned, so a restricted model differs only in what is left out.
        A pair that two nodes read (a shared input, a Concat feeding both) stays while either keeps it."""
        keep = {(t, slot) for i in activations for t, slot in self.claims.get(i, [])}
        slots = {}
        for tensor, planned in self.act_slots.items():
            kept = [slot for slot in planned if (tensor, slot) in keep]
            if kept:
                slots[tensor] = kept
        return replace(self, act_slots=slots, weights={i: a for i, a in self.weights.items() if i in weights})

    def add(self, tensor: str, grid: Any, origin: str, slot: tuple[int, int]) -> None:
        if tensor in self.act_grid and self.act_grid[tensor] != grid:
            # A tensor reached both as itself and as a Concat input: the shared (wider) grid wins.
            merged = self.widest([self.act_grid[tensor], grid])
            if merged is not self.act_grid[tensor]:
                self.act_grid[tensor], self.act_origin[tensor] = merged, origin
        elif tensor not in self.act_grid:
            self.act_grid[tensor], self.act_origin[tensor] = grid, origin
        slots = self.act_slots.setdefault(tensor, [])
        if slot not in slots:
            slots.append(slot)


def _fusing_conv(g: Graph, tensor: str, add_index: int) -> bool:
    """True when `tensor` is the output of a Conv (optionally through a BatchNormalization TensorRT folds) read by
    this Add alone, so TensorRT can fuse the Add into that Conv."""
    if g.consumers.get(tensor, []) and {i for i, _ in g.consumers[tensor]} != {add_index}:
        return False
    if tensor in g.outputs:
        return False
    op = g.op_of(tensor)
    if op == "BatchNormalization":
        _, bn = g.producer[tensor]
        return bool(bn.input) and _fusing_conv(g, bn.input[0], g.producer[tensor][0])
    return op in ("Conv", "ConvTranspose")


def make_plan(g: Graph, resolver: Resolver, *, per_channel: bool, placement: str) -> Plan:
    plan = Plan(resolver.scales.widest)
    nodes = g.graph.node

    def take(tensor: str) -> tuple[bool, str]:
        """Whether `tensor` can have a Q/DQ; (False, reason) when it cannot."""
        grid, text, _ = resolver.resolve(tensor)
        return grid is not None, text

    def commit(index: int, j: int, tensor: str) -> None:
        grid, text, leaves = resolver.resolve(tensor)
        assert grid is not None
        claims = plan.claims.setdefault(index, [])
        if leaves is None:
            plan.add(tensor, grid, text, (index, j))
            claims.append((tensor, (index, j)))
            own = resolver.own(tensor)
            if own is not None:
                resolver.used.add(own[2])
            return
        plan.groups.append([t for _, _, t in leaves])
        for li, lj, leaf in leaves:
            plan.add(leaf, grid, text, (li, lj))
            claims.append((leaf, (li, lj)))
            own = resolver.own(leaf)
            if own is not None:
                resolver.used.add(own[2])
        if not any(resolver.own(t) for _, _, t in leaves):
            own = resolver.own(tensor)
            if own is not None:
                resolver.used.add(own[2])

    for index, node in enumerate(nodes):
        label = node_label(node, index)
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            plan.coverage[index] = NodeCoverage(label, op, False, reason=f"custom op ({node.domain}): left as it is")
            continue
        if op in WEIGHTED_OPS:
            plan.coverage[index] = _plan_weighted(g, index, node, label, take, commit, plan, per_channel)
        elif op == "Add" and placement == "trt":
            plan.coverage[index] = _plan_add(g, index, node, label, take, commit)
        elif op != "Constant":
            plan.coverage[index] = NodeCoverage(label, op, False, reason=_by_design(g, node))
    _unify_groups(plan)
    _describe_concats(g, plan)
    return plan


def _describe_concats(g: Graph, plan: Plan) -> None:
    """Concat coverage: which inputs carry a shared pair (they do when a quantised op reads the Concat)."""
    for index, node in enumerate(g.graph.node):
        if node.op_type == "Concat" and index in plan.coverage:
            shared = [j for j, t in enumerate(node.input) if (index, j) in plan.act_slots.get(t, [])]
            cov = plan.coverage[index]
            if shared:
                cov.inputs = [node.input[j] for j in shared]
                cov.reason = "inputs share one scale (its output feeds a quantised op)"
            elif cov.inputs:
                cov.inputs = []
                cov.reason = "output not quantised: its quantised readers were excluded"


def exclusion_plan(g: Graph, plan: Plan, exclude: Mapping[str, str]) -> tuple[Plan, dict[str, str]]:
    """The plan without the nodes in `exclude` (name -> why): their weights stay float and they read float inputs.

    Names are node labels (or TensorRT's ``node_of_<output>`` for unnamed nodes); an unknown name is a ModelError.
    Returns the new plan and, per excluded name, the line the coverage report shows.
    """
    known = node_indices(g.graph)
    unknown = [n for n in exclude if n not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=3)
        hint = (f" Hint: did you mean {', '.join(close)}?" if close
                else " Hint: names are ONNX node names, as the coverage report lists them")
        raise ModelError(f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model.{hint}")
    units = set(plan.units)
    dropped = {known[n] for n in exclude} & units
    keep = units - dropped
    new = plan.restricted(weights=keep, activations=keep)
    new.coverage = {i: replace(c, inputs=list(c.inputs)) for i, c in plan.coverage.items()}
    lines: dict[str, str] = {}
    for name, why in exclude.items():
        index = known[name]
        label = node_label(g.graph.node[index], index)
        cov = new.coverage.get(index)
        if index in dropped:
            new.coverage[index] = NodeCoverage(cov.node, cov.op_type, False, reason=f"excluded: {why}")
            lines[label] = why
        elif label not in lines:
            left = cov.reason if cov is not None and cov.reason else "not quantised by this placement"
            lines[label] = f"{why} (no effect: {left})"
    _describe_concats(g, new)
    return new, lines


def _plan_weighted(g, index, node, label, take, commit, plan, per_channel) -> NodeCoverage:
    op = node.op_type
    if len(node.input) < 2 or not node.input[0] or not node.input[1]:
        return NodeCoverage(label, op, False, reason="missing input")
    a, b = node.input[0], node.input[1]
    if g.is_constant(a):
        return NodeCoverage(label, op, False, reason=f"first input {a!r} is a constant")
    activations = [(0, a)]
    weight = None
    if g.is_constant(b):
        weight = b
    elif op in ("Gemm", "MatMul"):
        activations.append((1, b))  # activation x activation product: both inputs per tensor
    else:
        return NodeCoverage(label, op, False, reason=f"weight {b!r} is not a constant")
    axis = None
    if weight is not None:
        w = g.constant(weight)
        if not np.issubdtype(w.dtype, np.floating):
            return NodeCoverage(label, op, False, reason=f"weight {weight!r} is {w.dtype}, not floating point")
        if not np.all(np.isfinite(w)):
            return NodeCoverage(label, op, False, reason=f"weight {weight!r} holds NaN or Inf")
        axis = weight_axis(node, w) if per_channel else None
    for _, t in activations:
        ok, why = take(t)
        if not ok:
            plan.unquantized[t] = why
            return NodeCoverage(label, op, False, reason=why)
    for j, t in activations:
        commit(index, j, t)
    if weight is not None:
        plan.weights[index] = axis
    note = ""
    if weight is not None and per_channel and axis is None:
        note = f"per-tensor weight (MatMul weight of rank {g.constant(weight).ndim})"
    return NodeCoverage(label, op, True, inputs=[t for _, t in activations], weight=weight, weight_axis=axis, reason=note)


def _plan_add(g, index, node, label, take, commit) -> NodeCoverage:
    inputs = [t for t in node.input if t]
    if len(inputs) != 2 or any(g.is_constant(t) for t in inputs):
        return NodeCoverage(label, "Add", False, reason="not a residual Add (a constant input): not quantised by design")
    if _fusing_conv(g, node.input[0], index):
        j = 1
    elif _fusing_conv(g, node.input[1], index):
        j = 0
    else:
        return NodeCoverage(label, "Add", False, reason="no input comes from a Conv it can fuse into: not quantised by design")
    residual = node.input[j]
    ok, why = take(residual)
    if not ok:
        return NodeCoverage(label, "Add", False, reason=f"residual input: {why}")
    commit(index, j, residual)
    return NodeCoverage(label, "Add", True, inputs=[residual], reason=f"residual input quantised; the Add fuses into the Conv producing {node.input[1 - j]!r}")


def _by_design(g: Graph, node: Any) -> str:
    op = node.op_type
    if op in FUSED_ACTIVATIONS and node.input and g.op_of(node.input[0]) in WEIGHTED_OPS + ("BatchNormalization",):
        return "fused into the preceding layer by TensorRT: no Q/DQ in between"
    if op in POOLS:
        return "pooling: TensorRT moves the next Q across it (no Q/DQ of its own)"
    if op == "Concat":
        return "output not quantised: inputs keep their precision"
    if op == "Add":
        return "placement 'weighted': Adds are not quantised"
    return "not quantised by design (runs in its inputs' precision)"


def _unify_groups(plan: Plan) -> None:
    """Concat groups that share a tensor get one grid: the largest scale of the groups', or their ranges' union."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in plan.groups:
        for t in group[1:]:
            parent[find(t)] = find(group[0])
    components: dict[str, list[str]] = {}
    for group in plan.groups:
        for t in group:
            components.setdefault(find(t), []).append(t)
    for members in components.values():
        grid = plan.widest([plan.act_grid[t] for t in members])
        top = next((t for t in members if plan.act_grid[t] is grid), None)
        origin = plan.act_origin[top] if top is not None else "shared by Concats with a common input (their ranges' union)"
        for t in members:
            if plan.act_grid[t] != grid:
                plan.act_grid[t] = grid
                plan.act_origin[t] = origin
