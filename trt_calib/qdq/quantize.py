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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .._util import require
from ..core.cache import CalibrationCache
from ..core.signs import ASYMMETRIC_METHODS, SignedHistogram
from ..errors import CalibrationError, ModelError
from ..core.result import CalibrationResult
from ..ort.model import load_model, model_inputs
from ..ort.data import iter_batches
from .bias import correct_biases
from .graph import BIASED_OPS, UNNAMED_PREFIX, MIN_OPSET, PLACEMENTS, Graph, onnx_opset
from .placement import exclusion_plan, make_plan, Plan
from .report import ActivationScale, CoverageReport
from .rewrite import rewrite_graph
from .scales import ASYMMETRIC_DTYPES, ASYMMETRIC_METADATA_KEY, ASYMMETRIC_NOTE, Affine, Resolver, Scales, scale_table

__all__ = ["quantize_model"]

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
class _Prepared:
    """A float model made ready for Q/DQ: at opset >= 13, indexed, its scales resolved and its full placement planned."""

    work: Any  # a copy of the model at opset >= 13, still float (quantize_model rewrites it in place)
    opset_before: int
    g: Graph
    table: Scales
    resolver: Resolver
    plan: Plan


def prepare_model(
    model: Any, scales: Any, *, per_channel: bool = True, placement: str = "trt", asymmetric: str | None = None,
    asymmetric_dtype: str = "uint8",
) -> _Prepared:
    """Everything `quantize_model` decides before it edits the graph; `sensitivity` restricts the same plan."""
    onnx = require("onnx", purpose="Q/DQ export")
    from onnx import version_converter

    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if asymmetric is not None and asymmetric not in ASYMMETRIC_METHODS:
        raise ValueError(f"unknown asymmetric method {asymmetric!r}; choose one of {', '.join(ASYMMETRIC_METHODS)} (or None)")
    if asymmetric_dtype not in ASYMMETRIC_DTYPES:
        raise ValueError(f"unknown asymmetric_dtype {asymmetric_dtype!r}; choose one of {', '.join(ASYMMETRIC_DTYPES)}")
    table = scale_table(scales, None if asymmetric is None else (asymmetric, asymmetric_dtype))
    original = load_model(model)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    before = onnx_opset(work)
    if before < MIN_OPSET:
        try:
            work = version_converter.convert_version(work, MIN_OPSET)
        except Exception as exc:  # the converter raises plain RuntimeErrors naming the op it cannot adapt
            raise ModelError(
                f"the model is opset {before} and onnx's version converter cannot take it to opset {MIN_OPSET} "
                f"(per-channel DequantizeLinear needs it): {exc}. Hint: re-export the model with opset >= 13"
            ) from None
        log.info("model upgraded from opset %d to %d (per-channel DequantizeLinear needs opset 13)", before, MIN_OPSET)
    g = Graph(work.graph)
    resolver = Resolver(g, table)
    plan = make_plan(g, resolver, per_channel=per_channel, placement=placement)
    if not plan.act_slots:
        hint = {
            "cache": "Hint: cache entries must carry the ONNX tensor names (TensorRT's parser keeps them)",
            "amax": "Hint: pass amax for the inputs of the Conv/Gemm/MatMul nodes",
            "histograms": "Hint: pass histograms of the inputs of the Conv/Gemm/MatMul nodes",
        }[table.source]
        raise CalibrationError(
            f"nothing to quantise: none of the {len(table.names)} scale(s) given names an input of a "
            f"Conv/ConvTranspose/Gemm/MatMul of the model. {hint}"
        )
    return _Prepared(work, before, g, table, resolver, plan)


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
) -> tuple[Any, CoverageReport]:
    """A Q/DQ copy of `model` for TensorRT 11 and its coverage report; `model` itself is not changed.

    `scales`: amax per tensor (a mapping or a `CalibrationResult`; scale = amax/127), or a `CalibrationCache` whose
    float32 scales are used bit for bit. `bias_correction`: calibration batches; when given, the first
    `bias_correction_batches` of them measure each quantised Conv/ConvTranspose/Gemm's per-channel mean output error,
    layer after layer, and fold it into the bias. `progress` is called with 1 per corrected layer.

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
        plan, excluded = exclusion_plan(g, plan, exclude)
    layers = [(i, n.output[0]) for i, n in enumerate(work.graph.node) if i in plan.weights and n.op_type in BIASED_OPS]
    rewrite_graph(work, g, plan)

    report = CoverageReport(
        nodes=[plan.coverage[i] for i in sorted(plan.coverage)],
        activations={t: _activation_scale(t, plan.act_grid[t], plan.act_origin[t]) for t in plan.act_slots},
        unquantized_tensors=plan.unquantized,
        scale_source=table.source,
        unmapped_entries=[n for n in table.names if not n.startswith(UNNAMED_PREFIX) and not g.is_tensor(n)],
        unnamed_entries=[n for n in table.names if n.startswith(UNNAMED_PREFIX)],
        unused_entries=[n for n in table.names if g.is_tensor(n) and n not in resolver.used],
        opset=(before, onnx_opset(work)),
        per_channel=per_channel,
        placement=placement,
        excluded=excluded,
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
        if any(n.op_type in ("If", "Loop", "Scan") for n in work.graph.node):
            raise ModelError("bias correction cannot run models with If/Loop/Scan subgraphs")
        specs = model_inputs(float_model)
        batches = []
        for batch in iter_batches(bias_correction, specs):
            batches.append(batch)
            if len(batches) >= bias_correction_batches:
                break
        shifts, info = correct_biases(float_model, work, layers, batches, progress)
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
