"""Q/DQ ONNX for TensorRT 11: explicit INT8 from calibrated thresholds or from a TensorRT calibration cache.

TensorRT 11 has no calibrators and no dynamic ranges: INT8 is only what QuantizeLinear/DequantizeLinear pairs in the
graph say. `quantize_model` inserts them where TensorRT's placement guidance puts them (docs/qdq.md says why):

- the activation inputs and the weights of Conv, ConvTranspose, Gemm and MatMul (never their outputs, so nothing sits
  between a Conv and the ReLU/Clip TensorRT fuses into it);
- the residual input of an Add fed by a Conv, so TensorRT can fuse the Add into that Conv;
- every input of a Concat whose output is quantised, all with one shared scale (the largest of the inputs').

Activations: int8, zero point 0, one float32 scale per tensor (amax/127, or a cache's scale bit for bit). Weights:
symmetric int8 per output channel, stored as int8 initializers read through a DequantizeLinear.

`asymmetric="minmax"|"mse"` instead gives each activation pair a zero point (uint8, or int8 with a zero point) from
the tensor's signed histogram (`signs.asymmetric_quantizer`); a Concat's inputs share the pair covering the union of
their ranges. Such a model is for runtimes that take zero points (onnxruntime; DLA with TensorRT's parser flag
`kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA`): TensorRT on GPUs rejects non-zero zero points, and the model says
so in its `metadata_props` (`ASYMMETRIC_METADATA_KEY`). Weights stay symmetric int8.

Symmetric models also record every scale they were given in their `metadata_props` (`scales.record_scales`), also
those no pair can carry, so that `qdq_to_cache` gives a cache back bit for bit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .._util import require
from ..core.cache import CalibrationCache
from ..core.signs import ASYMMETRIC_METHODS, SignedHistogram
from ..errors import CalibrationError, ModelError
from ..core.result import CalibrationResult
from ..ort.control_flow import CONTROL_FLOW_OPS, constant_condition
from ..ort.model import load_model, model_inputs, refuse_quantized, tensor_types
from ..ort.data import iter_batches
from .bias import correct_biases
from .graph import BIASED_OPS, UNNAMED_PREFIX, MIN_OPSET, PLACEMENTS, WEIGHTED_OPS, Graph, constant_attr, node_label, onnx_opset
from .placement import exclusion_plan, make_plan, Plan
from .report import ActivationScale, CoverageReport, NodeCoverage
from .rewrite import NameMaker, rewrite_graph
from .scales import (ASYMMETRIC_DTYPES, ASYMMETRIC_METADATA_KEY, ASYMMETRIC_NOTE, Affine, Resolver, Scales, record_scales,
                     scale_table)

__all__ = ["quantize_model", "split_exclusions", "check_exclusions"]

log = logging.getLogger(__name__)

def _activation_scale(tensor: str, grid: Any, origin: str) -> ActivationScale:
    if isinstance(grid, Affine):
        q = grid.quantizer
        return ActivationScale(tensor, float(np.float32(q.scale)), origin, q.zero_point,
                               "uint8" if q.qmin >= 0 else "int8", asymmetric=True)
    return ActivationScale(tensor, float(grid), origin)


def _mark_asymmetric(model: Any, method: str, dtype: str) -> None:
    """Say in the model's metadata_props that its activations have zero points, and where it runs."""
    value = f"{dtype} activations with zero points ({method} ranges): {ASYMMETRIC_NOTE}"
    for prop in model.metadata_props:
        if prop.key == ASYMMETRIC_METADATA_KEY:
            prop.value = value
            return
    model.metadata_props.add(key=ASYMMETRIC_METADATA_KEY, value=value)


def _body_names(model: Any) -> set[str]:
    """Every value name defined inside the model's subgraphs (node outputs, body inputs, initializers)."""
    names: set[str] = set()

    def walk(graph: Any, top: bool) -> None:
        for node in graph.node:
            if not top:
                names.update(o for o in node.output if o)
            for attr in node.attribute:
                subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for sub in subs:
                    names.update(i.name for i in sub.input)
                    names.update(t.name for t in sub.initializer)
                    walk(sub, False)

    walk(model.graph, True)
    return names


def _check(qdq: Any, float_model: Any) -> None:
    """onnx.checker (full) on the result; a failure the float model already had is only logged."""
    import onnx

    from ..ort.model import over_proto_limit

    if over_proto_limit(qdq):  # the checker serialises the model, which protobuf cannot over 2 GiB
        log.warning("the Q/DQ model is over protobuf's 2 GiB limit: onnx.checker was not run on it")
        return
    try:
        onnx.checker.check_model(qdq, full_check=True)
    except Exception as exc:  # ValidationError or shape-inference errors
        try:
            onnx.checker.check_model(float_model, full_check=True)
        except Exception as original:
            log.warning("the input model already fails onnx.checker (%s); the Q/DQ model does too", original)
            return
        raise ModelError(f"the Q/DQ model fails onnx.checker, the float model does not: {exc}") from None


@dataclass
class BodyPlan:
    """Q/DQ placement inside one If branch (a `graph` inside the working copy), or why a Loop/Scan body gets none."""

    graph: Any  # the branch's GraphProto, inside the working copy (rewritten in place)
    where: str  # "then_branch of If 'x'"
    g: Graph | None = None  # None: a Loop/Scan body, not placed
    plan: Plan | None = None
    resolver: Resolver | None = None
    coverage: list[NodeCoverage] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # weighted nodes left in float for want of any scale


@dataclass
class _Prepared:
    """A float model made ready for Q/DQ: at opset >= 13, indexed, its scales resolved and its full placement planned."""

    work: Any  # a copy of the model at opset >= 13, still float (quantize_model rewrites it in place)
    opset_before: int
    g: Graph
    table: Scales
    resolver: Resolver
    plan: Plan
    bodies: list[BodyPlan] = field(default_factory=list)  # If branches and Loop/Scan bodies (`plan_bodies`)


def _constants(graph: Any) -> dict[str, Any]:
    """name -> TensorProto of a graph's initializers and Constant outputs (what its branches may read)."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and constant_attr(node) is not None:
            out[node.output[0]] = constant_attr(node)
    return out


def plan_bodies(work: Any, table: Scales, *, per_channel: bool, placement: str) -> list[BodyPlan]:
    """Q/DQ placement in every If branch, by the main graph's rules, with the scales of the branch's own tensors
    (TensorRT names them as ONNX does: `ort.control_flow`); a branch's weights may be the enclosing graphs'
    initializers. Loop/Scan bodies get none (trt-calib calibrates no Loop/Scan body); their weighted nodes are
    listed as left in float, with why."""
    from onnx import AttributeProto

    bodies: list[BodyPlan] = []

    def walk(graph: Any, outer: dict[str, Any], context: str, in_loop: bool) -> None:
        visible = {**outer, **_constants(graph)}
        for index, node in enumerate(graph.node):
            label = node_label(node, index)
            for attr in node.attribute:
                subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    where = f"{attr.name} of {node.op_type} {label!r}" + (f" (in {context})" if context else "")
                    loop = in_loop or node.op_type != "If"
                    body = BodyPlan(sub, where)
                    fixed = constant_condition(graph, node.input[0], visible) if node.op_type == "If" else None
                    if fixed is not None and attr.name != ("then_branch" if fixed else "else_branch"):
                        why = (f"inside the {where}, which TensorRT does not build: the If's condition is a "
                               "constant, and its parser keeps only the taken branch")
                        body.coverage = [NodeCoverage(node_label(n, i), n.op_type, False, reason=why, body=where)
                                         for i, n in enumerate(sub.node) if n.op_type in WEIGHTED_OPS]
                        bodies.append(body)
                        continue
                    if loop:
                        why = (f"inside the {where}: trt-calib places no Q/DQ in Loop/Scan bodies (it cannot "
                               "calibrate them: onnxruntime returns no per-iteration values)")
                        body.coverage = [NodeCoverage(node_label(n, i), n.op_type, False, reason=why, body=where)
                                         for i, n in enumerate(sub.node) if n.op_type in WEIGHTED_OPS]
                        body.gaps = [f"{c.node} ({where}): Loop/Scan body" for c in body.coverage]
                    else:
                        body.g = Graph(sub, outer=visible)
                        body.resolver = Resolver(body.g, table)
                        body.plan = make_plan(body.g, body.resolver, per_channel=per_channel, placement=placement)
                        body.coverage = [replace(body.plan.coverage[i], body=where) for i in sorted(body.plan.coverage)]
                        for row, i in zip(body.coverage, sorted(body.plan.coverage)):
                            n = sub.node[i]
                            if (row.op_type in WEIGHTED_OPS and not row.quantized and n.input
                                    and not body.g.is_constant(n.input[0]) and body.resolver.own(n.input[0]) is None):
                                body.gaps.append(f"{row.node} ({where}): no scale for {n.input[0]!r}")
                    bodies.append(body)
                    walk(sub, visible, where, loop)

    walk(work.graph, {}, "", False)
    return bodies


def split_exclusions(prepared: _Prepared, exclude: Mapping[str, str]) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """`exclude` (node name -> why) split into the main graph's names and, per body (index into `prepared.bodies`),
    the names of nodes inside If branches and Loop/Scan bodies. A name of the main graph is the main graph's; one
    that names nodes in several bodies (an unnamed ``MatMul_1`` in both branches) must be given as the TensorRT
    layer name (``node_of_<output>``); a name no graph has is a ModelError with close matches."""
    return _locate(prepared.g.graph, [(b.graph, b.where) for b in prepared.bodies], exclude)


def _locate(main_graph: Any, bodies: list[tuple[Any, str]], exclude: Mapping[str, str]
            ) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """`split_exclusions` on a main graph and its bodies ((graph, where) in `plan_bodies` order)."""
    import difflib

    from .graph import node_indices, tensorrt_layer_name

    main_known = node_indices(main_graph)
    indexed = [(k, graph, where, node_indices(graph)) for k, (graph, where) in enumerate(bodies)]
    main: dict[str, str] = {}
    inside: dict[int, dict[str, str]] = {}
    unknown = []
    for name, why in exclude.items():
        if name in main_known:
            main[name] = why
            continue
        hits = [(k, graph, where, known[name]) for k, graph, where, known in indexed if name in known]
        if not hits:
            unknown.append(name)
        elif len(hits) > 1:
            layers = ", ".join(f"{tensorrt_layer_name(graph.node[i])} ({where})" for _, graph, where, i in hits)
            raise ModelError(f"{name!r} names {len(hits)} nodes inside If/Loop/Scan bodies. Hint: name one by its "
                             f"TensorRT layer name: {layers}")
        else:
            inside.setdefault(hits[0][0], {})[name] = why
    if unknown:
        everything = list(main_known) + [n for _, _, _, known in indexed for n in known]
        close = difflib.get_close_matches(unknown[0], everything, n=3)
        hint = (f" Hint: did you mean {', '.join(close)}?" if close
                else " Hint: names are ONNX node names, as the coverage report lists them")
        raise ModelError(f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model.{hint}")
    return main, inside


def _body_graphs(graph: Any, context: str = "") -> list[tuple[Any, str]]:
    """(body, where) for every If branch and Loop/Scan body inside `graph`, in `plan_bodies` order and wording."""
    from onnx import AttributeProto

    out: list[tuple[Any, str]] = []
    for index, node in enumerate(graph.node):
        label = node_label(node, index)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                where = f"{attr.name} of {node.op_type} {label!r}" + (f" (in {context})" if context else "")
                out.append((sub, where))
                out += _body_graphs(sub, where)
    return out


def check_exclusions(model: Any, exclude: Mapping[str, str] | Iterable[str]) -> None:
    """The check `quantize_model(exclude=...)` makes of the names, made on the model alone, before any scale or data
    exists: a ModelError (close matches in its hint) for a name no node of the main graph or of an If/Loop/Scan body
    answers to, or one several bodies share. A model below opset 13 is checked as `quantize_model` will see it,
    after onnx's version converter."""
    names = dict.fromkeys(exclude, "")
    if not names:
        return
    work = load_model(model)
    if onnx_opset(work) < MIN_OPSET:
        work = _upgraded(work)
    _locate(work.graph, _body_graphs(work.graph), names)


def _upgraded(work: Any) -> Any:
    """`work` converted to opset `MIN_OPSET` (per-channel DequantizeLinear needs it), or a ModelError saying why not."""
    from onnx import version_converter

    before = onnx_opset(work)
    try:
        return version_converter.convert_version(work, MIN_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeErrors naming the op it cannot adapt
        raise ModelError(
            f"the model is opset {before} and onnx's version converter cannot take it to opset {MIN_OPSET} "
            f"(per-channel DequantizeLinear needs it): {exc}. Hint: re-export the model with opset >= 13"
        ) from None


def _exclude_in_bodies(prepared: _Prepared, inside: Mapping[int, Mapping[str, str]]) -> dict[str, str]:
    """Apply exclusions inside bodies (`split_exclusions`) to their plans and coverage rows; the report's lines."""
    lines: dict[str, str] = {}
    for k, names in inside.items():
        body = prepared.bodies[k]
        if body.plan is None or body.g is None:
            for name, why in names.items():
                row = next((c for c in body.coverage if c.node == name), None)
                left = row.reason if row is not None else f"inside the {body.where}, where trt-calib places no Q/DQ"
                lines[f"{name} ({body.where})"] = f"{why} (no effect: {left})"
            continue
        body.plan, found = exclusion_plan(body.g, body.plan, names)
        body.coverage = [replace(body.plan.coverage[i], body=body.where) for i in sorted(body.plan.coverage)]
        lines.update({f"{label} ({body.where})": why for label, why in found.items()})
    return lines


def prepare_model(
    model: Any, scales: Any, *, per_channel: bool = True, placement: str = "trt", asymmetric: str | None = None,
    asymmetric_dtype: str = "uint8",
) -> _Prepared:
    """Everything `quantize_model` decides before it edits the graph; `sensitivity` restricts the same plan."""
    onnx = require("onnx", purpose="Q/DQ export")

    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if asymmetric is not None and asymmetric not in ASYMMETRIC_METHODS:
        raise ValueError(f"unknown asymmetric method {asymmetric!r}; choose one of {', '.join(ASYMMETRIC_METHODS)} (or None)")
    if asymmetric_dtype not in ASYMMETRIC_DTYPES:
        raise ValueError(f"unknown asymmetric_dtype {asymmetric_dtype!r}; choose one of {', '.join(ASYMMETRIC_DTYPES)}")
    original = load_model(model)
    refuse_quantized(original, str(model) if isinstance(model, (str, os.PathLike)) else "the model", "Q/DQ insertion")
    table = scale_table(scales, None if asymmetric is None else (asymmetric, asymmetric_dtype))
    work = onnx.ModelProto()
    work.CopyFrom(original)
    before = onnx_opset(work)
    if before < MIN_OPSET:
        work = _upgraded(work)
        log.info("model upgraded from opset %d to %d (per-channel DequantizeLinear needs opset 13)", before, MIN_OPSET)
    g = Graph(work.graph)
    resolver = Resolver(g, table)
    plan = make_plan(g, resolver, per_channel=per_channel, placement=placement)
    bodies = plan_bodies(work, table, per_channel=per_channel, placement=placement)
    if not plan.act_slots and not any(b.plan is not None and b.plan.act_slots for b in bodies):
        hint = {
            "cache": "Hint: cache entries must carry the ONNX tensor names (TensorRT's parser keeps them)",
            "amax": "Hint: pass amax for the inputs of the Conv/Gemm/MatMul nodes",
            "histograms": "Hint: pass histograms of the inputs of the Conv/Gemm/MatMul nodes",
        }[table.source]
        in_main = any(n.op_type in WEIGHTED_OPS for n in work.graph.node)
        looped = [c for b in bodies if b.plan is None for c in b.coverage]
        if not in_main and looped:
            raise CalibrationError(
                f"nothing to quantise: every Conv/ConvTranspose/Gemm/MatMul sits inside a Loop/Scan body (e.g. "
                f"{looped[0].node}, {looped[0].body}), where trt-calib places no Q/DQ: it cannot calibrate them, "
                "onnxruntime returns no per-iteration values"
            )
        raise CalibrationError(
            f"nothing to quantise: none of the {len(table.names)} scale(s) given names an input of a "
            f"Conv/ConvTranspose/Gemm/MatMul of the model. {hint}"
        )
    return _Prepared(work, before, g, table, resolver, plan, bodies)


def quantize_model(
    model: Any,
    scales: Mapping[str, float] | CalibrationCache | CalibrationResult | Mapping[str, SignedHistogram],
    *,
    per_channel: bool = True,
    placement: str = "trt",
    asymmetric: str | None = None,
    asymmetric_dtype: str = "uint8",
    bias_correction: Iterable[Any] | None = None,
    bias_correction_batches: int = 4,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
    exclude: Mapping[str, str] | None = None,
    max_activation_mb: float = 256,
    threads: int | None = None,
) -> tuple[Any, CoverageReport]:
    """A Q/DQ copy of `model` for TensorRT 11 and its coverage report; `model` itself is not changed.

    `scales`: amax per tensor (a mapping or a `CalibrationResult`; scale = amax/127), or a `CalibrationCache` whose
    float32 scales are used bit for bit. `bias_correction`: calibration batches; when given, the first
    `bias_correction_batches` of them measure each quantised Conv/ConvTranspose/Gemm's per-channel mean output error,
    layer after layer, and fold it into the bias, running those batches in parts within `max_activation_mb` (as
    `calibrate` does) on `threads` onnxruntime threads. `progress` is called with 1 per corrected layer.

    `asymmetric` ("minmax" or "mse"): activations get `signs.asymmetric_quantizer`'s scale and zero point on
    `asymmetric_dtype`'s codes ("uint8" [0, 255], or "int8" [-128, 127] with a zero point) instead of amax/127 and 0.
    `scales` must then be histograms: a mapping tensor -> SignedHistogram (`ort.collect.collect_signed`), or a
    `CalibrationResult`, whose |x| histograms serve "minmax" (they keep the signed extrema) and "mse" only for
    one-sided tensors. Not for TensorRT on GPUs (`ASYMMETRIC_NOTE`); the model's metadata_props say so.

    `exclude` maps node names (as the coverage report lists them) to why they stay in float: those nodes keep float
    weights and read float inputs, every other pair keeps the scale it has without exclusions (what `sensitivity`
    measures). The report lists each with its reason.
    """
    onnx = require("onnx", purpose="Q/DQ export")

    if bias_correction_batches < 1:
        raise ValueError(f"bias_correction_batches must be at least 1, got {bias_correction_batches}")
    prepared = prepare_model(model, scales, per_channel=per_channel, placement=placement, asymmetric=asymmetric,
                        asymmetric_dtype=asymmetric_dtype)
    work, g, table, resolver, plan, before = (prepared.work, prepared.g, prepared.table, prepared.resolver,
                                              prepared.plan, prepared.opset_before)
    float_model = onnx.ModelProto()
    float_model.CopyFrom(work)
    excluded: dict[str, str] = {}
    if exclude:
        main_exclude, body_exclude = split_exclusions(prepared, exclude)
        plan, excluded = exclusion_plan(g, plan, main_exclude)
        excluded.update(_exclude_in_bodies(prepared, body_exclude))
        if not plan.act_slots and not plan.weights and not any(
                b.plan is not None and (b.plan.act_slots or b.plan.weights) for b in prepared.bodies):
            raise CalibrationError(
                f"nothing left to quantise: the {len(excluded)} exclusion(s) leave every quantisable node "
                f"({', '.join(list(excluded)[:5])}{', ...' if len(excluded) > 5 else ''}) in float, so the model "
                "would carry no Q/DQ. Hint: exclude fewer nodes (a smaller --keep)"
            )
    layers = [(i, n.output[0]) for i, n in enumerate(work.graph.node) if i in plan.weights and n.op_type in BIASED_OPS]
    used: set[str] = set()
    body_pairs: dict[str, Any] = {}
    activations: dict[str, ActivationScale] = {}
    unquantized: dict[str, str] = {}
    if prepared.bodies:  # branches first: the main rewrite copies the If nodes that hold them
        names, types = NameMaker(work.graph), tensor_types(work)
        for body in reversed(prepared.bodies):  # inner branches first: an outer rewrite copies the Ifs inside it
            if body.plan is None or body.g is None or body.resolver is None:
                continue
            rewrite_graph(work, body.g, body.plan, graph=body.graph, names=names, types=types)
            activations.update({t: _activation_scale(t, body.plan.act_grid[t], body.plan.act_origin[t])
                                for t in body.plan.act_slots})
            unquantized.update(body.plan.unquantized)
            body_pairs.update({t: body.plan.act_grid[t] for t in body.plan.act_slots})
            used |= body.resolver.used
    rewrite_graph(work, g, plan)  # also drops main-graph weights that branches now read as int8 copies
    record_scales(work, table, {**{t: plan.act_grid[t] for t in plan.act_slots}, **body_pairs},
                  scales.header if isinstance(scales, CalibrationCache) else None)
    used |= resolver.used
    activations = {**{t: _activation_scale(t, plan.act_grid[t], plan.act_origin[t]) for t in plan.act_slots},
                   **activations}
    unquantized = {**plan.unquantized, **unquantized}
    in_bodies = _body_names(work)

    def known(name: str) -> bool:
        return g.is_tensor(name) or name in in_bodies

    report = CoverageReport(
        nodes=[plan.coverage[i] for i in sorted(plan.coverage)] + [c for b in prepared.bodies for c in b.coverage],
        activations=activations,
        unquantized_tensors=unquantized,
        scale_source=table.source,
        unmapped_entries=[n for n in table.names if not n.startswith(UNNAMED_PREFIX) and not known(n)],
        unnamed_entries=[n for n in table.names if n.startswith(UNNAMED_PREFIX)],
        unused_entries=[n for n in table.names if known(n) and n not in used],
        opset=(before, onnx_opset(work)),
        per_channel=per_channel,
        placement=placement,
        excluded=excluded,
        body_gaps=[gap for b in prepared.bodies for gap in b.gaps],
    )
    if asymmetric is not None:
        report.asymmetric = {"method": asymmetric, "dtype": asymmetric_dtype, "note": ASYMMETRIC_NOTE}
        _mark_asymmetric(work, asymmetric, asymmetric_dtype)
        nonzero = sum(a.zero_point != 0 for a in report.activations.values())
        log.warning(
            "asymmetric %s activations (%s ranges, %d of %d zero points non-zero): %s", asymmetric_dtype, asymmetric,
            nonzero, len(report.activations), ASYMMETRIC_NOTE,
        )

    if bias_correction is not None:
        if any(n.op_type in CONTROL_FLOW_OPS for n in work.graph.node):
            raise ModelError("bias correction cannot run models with If/Loop/Scan subgraphs")
        specs = model_inputs(float_model)
        batches = []
        for batch in iter_batches(bias_correction, specs):
            batches.append(batch)
            if len(batches) >= bias_correction_batches:
                break
        shifts, info = correct_biases(float_model, work, layers, batches, progress,
                                      max_activation_mb=max_activation_mb, threads=threads)
        for index, shift in shifts.items():
            plan.coverage[index].bias_shift = shift
        report.bias_correction = info
        log.info(
            "bias correction: %d layers on %d batches (%d samples) in %.1f s", info["layers"], info["batches"],
            info["samples"], info["seconds"],
        )

    if check:
        _check(work, float_model)
    return work, report
