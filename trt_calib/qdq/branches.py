"""Measuring inside If branches: the branches the held-out data takes, inlined into one flat model, with the Q/DQ
placement `quantize_model` makes in each branch mapped onto the inlined nodes.

`quantize_model` places Q/DQ inside If branches with a plan per branch (`quantize.plan_bodies`). Sensitivity's
cones, cut models and restricted plans work on one graph and one plan, so a model whose units sit in branches is
flattened as calibration runs it (`ort.control_flow.fold_ifs`, `ort.runner.Branches`): every If whose condition has
the same value on every held-out batch (or is a constant, which TensorRT's parser folds itself) is replaced by the
branch taken, and the branch's plan joins the main graph's, node for node, with the same scales. A variant of the
flat model is the Q/DQ model `quantize_model` writes, run on data that takes those branches.

A branch no held-out batch takes, or one only some take, cannot be measured this way: its units are listed as not
ranked, each with the reason, like Loop/Scan bodies (no Q/DQ there) and the branches TensorRT never builds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .graph import WEIGHTED_OPS, Graph, node_indices, tensorrt_layer_name
from .placement import Plan

__all__ = ["Flat", "flatten", "body_nodes", "NO_QDQ_THERE"]

log = logging.getLogger(__name__)

#: Joins a branch's reason and a node's own in `Flat.not_ranked` (sensitivity's text groups nodes on the first).
NO_QDQ_THERE = "; no Q/DQ there either: "
_MARK = "trt-calib-flatten:"
_MAIN = "main"


@dataclass
class Flat:
    """A prepared model (`quantize.prepare_model`) with the If branches the held-out data takes inlined.

    `prepared`: the same object with `work` the flat model, `plan` the merged plan and `g` indexing the flat graph
    (the original when nothing needed inlining). `labels`: flat node index -> the name results give it (a main-graph
    node: its coverage label, as `quantize` reports it; a branch node: its TensorRT layer name, its name or
    ``node_of_<output>``, unique where branch labels such as ``MatMul_1`` repeat). `index`: every name a node of the
    flat model answers to -> its index. `not_ranked`: branch and body nodes that are not measured -> why.
    `conditions`: If condition -> the value every held-out batch gave it (the Ifs inlined for the data, not the
    constant ones). `inlined`: one JSON row per inlined If. `caveats`: what the reader must know about the numbers.
    `unmeasured`: the units `quantize` gives Q/DQ inside branches that are not measured (in `not_ranked` too).
    """

    prepared: Any
    labels: dict[int, str]
    index: dict[str, int]
    not_ranked: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, bool] = field(default_factory=dict)
    inlined: list[dict[str, Any]] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)  # units quantize gives Q/DQ in branches not measured


def body_nodes(prepared: Any) -> list[tuple[Any, int, Any]]:
    """(body plan, index in its graph, node) of every node inside If branches and Loop/Scan bodies."""
    return [(b, i, n) for b in prepared.bodies for i, n in enumerate(b.graph.node)]


def _static_reasons(prepared: Any) -> dict[str, str]:
    """Weighted nodes of bodies `quantize` places nothing in (Loop/Scan bodies, branches TensorRT never builds)."""
    out: dict[str, str] = {}
    for body in prepared.bodies:
        if body.plan is not None:
            continue
        weighted = [n for n in body.graph.node if n.op_type in WEIGHTED_OPS]
        for node, row in zip(weighted, body.coverage):
            out.setdefault(tensorrt_layer_name(node), row.reason)
    return out


def _unchanged(prepared: Any) -> Flat:
    """No branch holds a unit: the model as it is; weighted nodes in branches (none with Q/DQ) are listed."""
    plan = prepared.plan
    labels = {i: c.node for i, c in plan.coverage.items()}
    not_ranked = _static_reasons(prepared)
    for body in prepared.bodies:
        if body.plan is not None:
            for i, cov in sorted(body.plan.coverage.items()):
                if cov.op_type in WEIGHTED_OPS:
                    not_ranked.setdefault(tensorrt_layer_name(body.graph.node[i]), f"in the {body.where}: {cov.reason}")
    return Flat(prepared, labels, node_indices(prepared.work.graph), not_ranked)


def flatten(prepared: Any, batches: Sequence[Mapping[str, Any]], *, threads: int | None = None) -> Flat:
    """`prepared` with the If branches every batch of `batches` takes inlined, and its plans merged (module
    docstring); unchanged when no branch holds a unit. The branches are decided by running the FP32 model on each
    batch (`ort.runner.Branches`)."""
    if not any(b.plan is not None and b.plan.units for b in prepared.bodies):
        return _unchanged(prepared)
    from ..ort.control_flow import fold_ifs, shape_conditions
    from ..ort.model import ort_session, tensor_types
    from ..ort.runner import Branches

    work = prepared.work
    types = tensor_types(work)

    def open_session(model: Any, outputs: Sequence[str]) -> Any:
        return ort_session(model, outputs, types=types, optimize=False, threads=threads, role="the FP32 model")

    decider = Branches(work, [], open_session)
    seen: dict[str, dict[bool, int]] = {}
    for batch in batches:
        for cond, value in decider.decide(batch):
            counts = seen.setdefault(cond, {})
            counts[value] = counts.get(value, 0) + 1
    decisions = {c: next(iter(v)) for c, v in seen.items() if len(v) == 1 and sum(v.values()) == len(batches)}

    graphs = {_MAIN: work.graph, **{k: b.graph for k, b in enumerate(prepared.bodies)}}
    originals: dict[str, str] = {}
    for tag, graph in graphs.items():
        for i, node in enumerate(graph.node):
            key = f"{_MARK}{tag}:{i}"
            originals[key] = node.doc_string
            node.doc_string = key
    try:
        owners = _owners(work.graph)
        flat, _ = fold_ifs(work, decisions)
    finally:
        for graph in graphs.values():
            for node in graph.node:
                node.doc_string = originals.get(node.doc_string, node.doc_string)
    where: dict[tuple[str, int], int] = {}
    for f, node in enumerate(flat.graph.node):
        if node.doc_string.startswith(_MARK):
            tag, _, i = node.doc_string[len(_MARK):].rpartition(":")
            where[(tag, int(i))] = f
    _restore(flat.graph, originals)

    def mapping(tag: Any) -> dict[int, int] | None:
        """old index -> flat index of a graph all of whose nodes were inlined, else None."""
        graph = graphs[tag]
        found = {i: where[(str(tag), i)] for i in range(len(graph.node)) if (str(tag), i) in where}
        return found if len(found) == len(graph.node) or tag == _MAIN else None

    plan = Plan(prepared.plan.widest)
    labels: dict[int, str] = {}
    index: dict[str, int] = {}
    caveats: list[str] = []
    main = mapping(_MAIN) or {}
    _merge(plan, prepared.plan, main, caveats)
    labels.update({main[i]: c.node for i, c in prepared.plan.coverage.items() if i in main})
    index.update({name: main[i] for name, i in node_indices(work.graph).items() if i in main})
    inlined = {_MAIN}
    for k, body in enumerate(prepared.bodies):
        m = mapping(k) if body.plan is not None else None
        if m is None:
            continue
        inlined.add(str(k))
        _merge(plan, body.plan, m, caveats, body.where)
        labels.update({m[i]: tensorrt_layer_name(body.graph.node[i]) for i in body.plan.coverage})
        for name, i in node_indices(body.graph).items():
            index.setdefault(name, m[i])
    for f, label in labels.items():
        index.setdefault(label, f)

    not_ranked = _static_reasons(prepared)
    unmeasured: list[str] = []
    shape_only = shape_conditions(work)
    for k, body in enumerate(prepared.bodies):
        if body.plan is None or str(k) in inlined:
            continue
        why = _why_not_inlined(str(k), owners, inlined, decisions, seen, len(batches), shape_only, prepared)
        for i, cov in sorted(body.plan.coverage.items()):
            node = body.graph.node[i]
            if cov.quantized:
                text = f"in the {body.where}{why}"
                unmeasured.append(tensorrt_layer_name(node))
            elif node.op_type in WEIGHTED_OPS:
                text = f"in the {body.where}{why}{NO_QDQ_THERE}{cov.reason}"
            else:
                continue
            not_ranked.setdefault(tensorrt_layer_name(node), text)

    runtime = dict(decisions)
    rows = []
    for k, (cond, attr, _, where_if) in owners.items():
        if cond in runtime and attr == ("then_branch" if runtime[cond] else "else_branch") and k in inlined:
            rows.append({"if": where_if, "condition": cond, "value": runtime[cond], "branch": attr,
                         "held_out_batches": len(batches)})
    touched = {i for slots in plan.act_slots.values() for i, _ in slots} | set(plan.weights)
    if runtime:
        from ..ort.runner import upstream

        for cond in runtime:
            if any(n.output and cond in n.output for n in flat.graph.node) and set(upstream(flat.graph, [cond])) & touched:
                caveats.append(
                    f"the If condition {cond!r} is computed from tensors INT8 changes: every variant was measured "
                    "on the branch FP32 takes, which INT8 might not take")
    g = Graph(flat.graph)
    return Flat(replace(prepared, work=flat, plan=plan, g=g), labels, index, not_ranked, runtime, rows, caveats,
                unmeasured)


def _restore(graph: Any, originals: Mapping[str, str]) -> None:
    """Put back the doc strings `flatten` borrowed, in `graph` and every graph inside it."""
    from onnx import AttributeProto

    for node in graph.node:
        if node.doc_string.startswith(_MARK):
            node.doc_string = originals.get(node.doc_string, "")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                _restore(sub, originals)


def _owners(graph: Any) -> dict[str, tuple[str, str, str, str]]:
    """For every marked If branch: its tag -> (condition tensor, attribute, the tag of the graph holding the If, the
    If in words as `plan_bodies` names it)."""
    from onnx import AttributeProto

    out: dict[str, tuple[str, str, str, str]] = {}

    def tag_of(g: Any) -> str | None:
        for node in g.node:
            if node.doc_string.startswith(_MARK):
                return node.doc_string[len(_MARK):].rpartition(":")[0]
        return None

    def walk(g: Any, tag: str, context: str) -> None:
        from .graph import node_label

        for index, node in enumerate(g.node):
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                    sub_tag = tag_of(sub)
                    label = f"{node.op_type} {node_label(node, index)!r}" + (f" (in {context})" if context else "")
                    if sub_tag is not None and node.op_type == "If" and node.input:
                        out[sub_tag] = (node.input[0], attr.name, tag, label)
                    if sub_tag is not None:
                        walk(sub, sub_tag, f"{attr.name} of {label}")

    walk(graph, _MAIN, "")
    return out


def _why_not_inlined(tag: str, owners: Mapping[str, tuple[str, str, str, str]], inlined: set[str],
                     decisions: Mapping[str, bool], seen: Mapping[str, Mapping[bool, int]], batches: int,
                     shape_only: set[str], prepared: Any) -> str:
    """Why sensitivity does not measure inside one If branch: words that follow "in the <branch>"."""
    if tag not in owners:
        return ", which sensitivity cannot reach"
    cond, attr, parent, _ = owners[tag]
    if parent not in inlined:
        holder = prepared.bodies[int(parent)].where if parent.isdigit() else "an enclosing body"
        return f", inside the {holder}, which is not measured"
    counts = seen.get(cond, {})
    if cond in decisions:
        taken = "then_branch" if decisions[cond] else "else_branch"
        text = (f", which no held-out batch takes (its condition {cond!r} was {decisions[cond]} on all {batches}: "
                f"the {taken} was measured)")
        if cond in shape_only:
            return text + ". Hint: the condition depends on tensor shapes only: only data of other shapes takes it"
        return text + ". Hint: measure on held-out data that takes this branch (--eval-data)"
    if len(counts) == 2:
        return (f", whose condition {cond!r} was True on {counts[True]} and False on {counts[False]} held-out "
                "batches: sensitivity measures inside a branch only when every held-out batch takes it (quantize "
                "still places Q/DQ there). Hint: measure on held-out data that takes one branch (--eval-data)")
    return f", whose condition {cond!r} was not reached on every held-out batch"


def _merge(plan: Plan, src: Plan, where: Mapping[int, int], caveats: list[str], body: str = "") -> None:
    """Add `src` (the plan of one graph) to `plan` (the flat graph's), node indices mapped by `where`; `body` names
    the branch the nodes come from in their coverage rows."""
    for tensor, slots in src.act_slots.items():
        grid = src.act_grid[tensor]
        if tensor in plan.act_grid and plan.act_grid[tensor] != grid:
            caveats.append(f"{tensor!r} has Q/DQ in two graphs with different scales (quantize writes a pair in "
                           "each): measured with the wider of the two in both")
        for i, j in slots:
            plan.add(tensor, grid, src.act_origin[tensor], (where[i], j))
    plan.weights.update({where[i]: axis for i, axis in src.weights.items()})
    plan.coverage.update({where[i]: replace(cov, body=body) if body else cov
                          for i, cov in src.coverage.items() if i in where})
    for i, claimed in src.claims.items():
        plan.claims[where[i]] = [(t, (where[a], b)) for t, (a, b) in claimed]
    plan.unquantized.update(src.unquantized)
    plan.groups.extend(src.groups)
