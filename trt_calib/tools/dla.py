"""DLA readiness: which layers of a model DLA can run in INT8, why the others cannot, and which scales they lack.

Every rule names its source; what the sources do not settle is "unknown", with the reason, never guessed:

- `NVINFER_H`: NVIDIA/TensorRT `include/NvInfer.h`, branch release/10.7 (TensorRT 10.7, the last release with DLA
  per the 11.3 docs), the "If executing this layer on DLA" notes of each layer class (identical in release/10.16
  but for a typo; in 8.6 Slice had fewer modes and SoftMax/pooling had Xavier-only notes).
- `DLA_DOCS`: "DLA Supported Layers and Restrictions",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html (the crawled
  page does not show its TensorRT version). Its Table 12 is alphabetical and was read from "Activation" to
  "Parametric ReLU": a layer that sorts inside that span and has no row is not on DLA; rows after it were not read.
- `OPERATORS_DOCS`: TensorRT 10.1.0 operator reference, https://docs.nvidia.com/deeplearning/tensorrt/operators/docs/
  (the "DLA Support" section of each operator: Reduce, ParametricReLU).
- `DLA_AVAILABILITY`: https://docs.nvidia.com/deeplearning/tensorrt/11.3.0/inference-library/work-with-dla.html
  ("TensorRT 10.7 was the last release that supported DLA"; none in 11.0-11.3).

A missing scale on a DLA layer means that layer falls back to the GPU (or fails the build without GPU fallback), so
the report lists, for eligible layers only, the calibrated input and output tensors the cache has no entry for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.cache import CalibrationCache, decode_version, encode_version

__all__ = ["SOURCES", "DlaLayer", "DlaReport", "dla_readiness", "dla_findings"]

SOURCES = {
    "NVINFER_H": "TensorRT 10.7 include/NvInfer.h (NVIDIA/TensorRT release/10.7), DLA notes of the layer class",
    "DLA_DOCS": "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html",
    "OPERATORS_DOCS": "https://docs.nvidia.com/deeplearning/tensorrt/operators/docs/ (TensorRT 10.1.0, DLA Support)",
    "DLA_AVAILABILITY": "https://docs.nvidia.com/deeplearning/tensorrt/11.3.0/inference-library/work-with-dla.html",
}
LAST_DLA_RELEASE = (10, 7)
MAX_NON_BATCH_DIM = 8192  # DLA_DOCS, general restrictions
MAX_BATCH = 4096  # DLA_DOCS, general restrictions
_ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Clip")  # NVINFER_H IActivationLayer: kRELU, kSIGMOID, kTANH, kCLIP
_OTHER_ACTIVATIONS = ("Elu", "Selu", "Softplus", "Softsign", "HardSigmoid", "ThresholdedRelu", "Gelu", "Mish")
_ELEMENTWISE = ("Add", "Sub", "Mul", "Max", "Min")  # NVINFER_H IElementWiseLayer: kSUM, kSUB, kPROD, kMAX, kMIN
_UNARY = ("Exp", "Log", "Sqrt", "Neg", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
          "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Erf", "Not", "Round", "Sign", "IsInf", "IsNaN")
_SHUFFLE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")
_NO_LAYER = ("Constant", "Identity", "Dropout")  # no layer of their own (TensorRT drops or folds them)
#: TensorRT layers an op becomes that sort inside Table 12's read span (Activation .. Parametric ReLU) with no row.
_NOT_IN_TABLE = {
    "Cast": "Cast", "Pad": "Padding", "Einsum": "Einsum", "NonZero": "NonZero", "If": "If", "Loop": "Loop",
    "Scan": "Loop", "OneHot": "OneHot", "NonMaxSuppression": "NMS", "GridSample": "GridSample", "CumSum": "Cumulative",
    "InstanceNormalization": "Normalization", "LayerNormalization": "Normalization",
    "GroupNormalization": "Normalization", "DequantizeLinear": "Dequantize", "GatherElements": "Gather",
    "GatherND": "Gather", "Range": "Fill",
}


@dataclass
class DlaLayer:
    """One node (one TensorRT layer, roughly) and whether DLA can run it in INT8."""

    node: str
    op: str
    verdict: str  # "eligible" | "ineligible" | "unknown"
    reasons: list[str] = field(default_factory=list)  # why not / why unknown
    sources: list[str] = field(default_factory=list)  # keys of SOURCES
    notes: list[str] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)  # calibrated activation inputs and outputs
    missing: list[str] = field(default_factory=list)  # of those, no cache entry (eligible layers only)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"node": self.node, "op": self.op, "verdict": self.verdict}
        for key in ("reasons", "notes", "tensors", "missing"):
            if getattr(self, key):
                row[key] = list(getattr(self, key))
        row["sources"] = [SOURCES[s] for s in self.sources]
        return row


@dataclass
class DlaReport:
    """DLA readiness of every layer, model-wide findings, and the summary line."""

    layers: list[DlaLayer]
    general: list[dict[str, Any]]  # {"severity", "code", "message", "source"}
    skipped: int  # nodes that are no DLA layer: constants, shape arithmetic, identities
    cache_given: bool

    def count(self, verdict: str) -> int:
        return sum(1 for layer in self.layers if layer.verdict == verdict)

    @property
    def missing_scales(self) -> list[str]:
        """Distinct tensors of eligible layers without a cache entry, in graph order."""
        return list(dict.fromkeys(t for layer in self.layers for t in layer.missing))

    def summary(self) -> str:
        scales = f"{len(self.missing_scales)} scales missing" if self.cache_given else "scales not checked (no cache)"
        text = f"{self.count('eligible')} of {len(self.layers)} layers eligible, {scales}"
        unknown = self.count("unknown")
        return text + (f" ({unknown} unknown/version-dependent)" if unknown else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "layers_total": len(self.layers),
            "eligible": self.count("eligible"),
            "ineligible": self.count("ineligible"),
            "unknown": self.count("unknown"),
            "missing_scales": self.missing_scales if self.cache_given else None,
            "skipped_nodes": self.skipped,
            "general": self.general,
            "layers": [layer.to_json() for layer in self.layers],
            "sources": SOURCES,
        }


# ---------------------------------------------------------------------------------------------- the graph
class _Graph:
    """Shapes (from shape inference), constants and calibrated tensors of the model."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        from ..ort.model import calibrated_tensors, infer_shapes

        self.model = model
        try:
            inferred = infer_shapes(model)  # a model over 2 GiB without its weights
        except Exception:  # best effort: rules needing a shape then say "unknown"
            inferred = model
        self.shapes: dict[str, tuple[Any, ...]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        self.values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value" and a.HasField("t"):
                        self.values[n.output[0]] = numpy_helper.to_array(a.t)
        self.constant = set(self.values)
        for n in model.graph.node:  # computed from constants only: folded by TensorRT
            ins = [t for t in n.input if t]
            if n.op_type in ("Shape", "Size", "ConstantOfShape") or (ins and all(t in self.constant for t in ins)):
                self.constant.update(t for t in n.output if t)
        self.calibrated = set(calibrated_tensors(model))
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)

    def shape(self, name: str) -> tuple[Any, ...] | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}_{index} (output {node.output[0]!r})"


class _Verdict:
    """Collects one layer's reasons: any ineligible reason wins over unknown ones."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.unknown: list[str] = []
        self.notes: list[str] = []
        self.sources: list[str] = []

    def cite(self, *keys: str) -> "_Verdict":
        self.sources.extend(k for k in keys if k not in self.sources)
        return self

    def check(self, ok: bool | None, why: str) -> None:
        """ok False: a broken rule; None: the rule cannot be checked (shape unknown)."""
        if ok is False:
            self.bad.append(why)
        elif ok is None:
            self.unknown.append(f"cannot check: {why}")

    @property
    def verdict(self) -> str:
        return "ineligible" if self.bad else "unknown" if self.unknown else "eligible"


def _in(values: Any, lo: int, hi: int) -> bool:
    return all(lo <= int(v) <= hi for v in values)


# ---------------------------------------------------------------------------------------------- layer rules
def _conv(node: Any, g: _Graph, v: _Verdict) -> None:
    """IConvolutionLayer (NVINFER_H) and Table 12 "Convolution / Fully Connected" (DLA_DOCS)."""
    v.cite("NVINFER_H", "DLA_DOCS")
    w = g.values.get(node.input[1]) if len(node.input) > 1 else None
    kernel = list(_attr(node, "kernel_shape", []) or (list(w.shape[2:]) if w is not None else []))
    if not kernel:
        v.check(None, "kernel size (weight is not a constant)")
        return
    if len(kernel) != 2:
        v.check(False, f"{len(kernel)}-D convolution: DLA convolutions are 2-D only")
        return
    strides = list(_attr(node, "strides", [1, 1]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    v.check(_in(kernel, 1, 32), f"kernel {kernel} outside [1, 32]")
    v.check(_in(strides, 1, 8), f"stride {strides} outside [1, 8]")
    v.check(_in(dilations, 1, 32), f"dilation {dilations} outside [1, 32]")
    pads = _pads(node, g, kernel, strides, dilations)
    if pads is None:
        v.check(None, f"padding (auto_pad {_attr(node, 'auto_pad', 'NOTSET')} with unknown input size)")
    else:
        v.check(_in(pads, 0, 31), f"padding {pads} outside [0, 31]")
        v.check(all(p < kernel[i % 2] for i, p in enumerate(pads)), f"padding {pads} not less than kernel {kernel}")
    group = int(_attr(node, "group", 1))
    v.check(group <= 8192, f"{group} groups, more than 8192")
    if w is None:
        v.check(None, "output maps (weight is not a constant)")
        return
    maps = int(w.shape[0])
    v.check(1 <= maps <= 8192, f"{maps} output maps outside [1, 8192]")
    if group > 1:
        cin, cout = int(w.shape[1]), maps // group
        if cin % 4 or cout % 4:
            v.unknown.append(
                f"groups of {cin} input / {cout} output channels: NvInfer.h's general INT8 note asks for multiples of "
                "4; whether DLA enforces it is not stated")


def _pads(node: Any, g: _Graph, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int] | None:
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        return list(_attr(node, "pads", [0] * 2 * len(kernel))) if auto == "NOTSET" else [0] * 2 * len(kernel)
    shape = g.shape(node.input[0])
    if shape is None or any(d is None for d in shape[2:]):
        return None
    pads = []
    for i, size in enumerate(shape[2:]):
        total = max((math.ceil(size / strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
        pads.append(total)
    halves = [p // 2 for p in pads]
    rest = [p - h for p, h in zip(pads, halves)]
    return halves + rest if auto == "SAME_UPPER" else rest + halves


def _deconv(node: Any, g: _Graph, v: _Verdict) -> None:
    """IDeconvolutionLayer (NVINFER_H); Table 12 "Deconvolution" (DLA_DOCS: no grouped/dilated; padding 0)."""
    v.cite("NVINFER_H", "DLA_DOCS")
    w = g.values.get(node.input[1]) if len(node.input) > 1 else None
    kernel = list(_attr(node, "kernel_shape", []) or (list(w.shape[2:]) if w is not None else []))
    if len(kernel) != 2:
        v.check(False if kernel else None, f"{len(kernel)}-D deconvolution: DLA takes 2-D only")
        return
    strides = list(_attr(node, "strides", [1, 1]))

    def fits(dims: list[int]) -> bool:  # [1, 32], or one of 64/96/128 with 1 in the other dimension
        return _in(dims, 1, 32) or sorted(int(d) for d in dims) in ([1, 64], [1, 96], [1, 128])

    v.check(fits(kernel), f"kernel {kernel}: DLA takes [1, 32] or 1x64/64x1/1x96/96x1/1x128/128x1")
    v.check(fits(strides), f"stride {strides}: DLA takes [1, 32] or 1x64/64x1/1x96/96x1/1x128/128x1")
    v.check(int(_attr(node, "group", 1)) == 1, f"{_attr(node, 'group', 1)} groups: DLA deconvolution takes one")
    v.check(all(int(d) == 1 for d in _attr(node, "dilations", [1, 1])), "dilated: DLA deconvolution takes none")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    v.check(all(int(p) == 0 for p in pads) and _attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID"),
            f"padding {pads}: DLA deconvolution padding must be 0")
    if w is not None:
        maps = int(w.shape[1]) * int(_attr(node, "group", 1))
        v.check(1 <= maps <= 8192, f"{maps} output maps outside [1, 8192]")


def _pool(node: Any, g: _Graph, v: _Verdict) -> None:
    """IPoolingLayer (NVINFER_H): kMAX/kAVERAGE, window [1, 8], stride [1, 16], padding [0, 7], 2-D."""
    v.cite("NVINFER_H")
    kernel = list(_attr(node, "kernel_shape", []))
    if len(kernel) != 2:
        v.check(False, f"{len(kernel)}-D pooling: DLA pooling is 2-D")
        return
    v.check(_in(kernel, 1, 8), f"window {kernel} outside [1, 8]")
    v.check(_in(_attr(node, "strides", [1, 1]), 1, 16), f"stride {list(_attr(node, 'strides', [1, 1]))} outside [1, 16]")
    pads = _pads(node, g, kernel, list(_attr(node, "strides", [1, 1])), [1, 1])
    if pads is None:
        v.check(None, "padding (auto_pad with unknown input size)")
    else:
        v.check(_in(pads, 0, 7), f"padding {pads} outside [0, 7]")
    if any(int(d) != 1 for d in _attr(node, "dilations", [1, 1])):
        v.unknown.append("dilated pooling: no DLA rule found")


def _listed(*keys: str) -> Callable[[Any, _Graph, _Verdict], None]:
    """A layer DLA runs with no rule left to check (ReLU/Sigmoid/TanH/Clip, Sum/Sub/Prod/Max/Min, Abs)."""

    def rule(node: Any, g: _Graph, v: _Verdict) -> None:
        v.cite(*keys)

    return rule


def _leaky(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H", "DLA_DOCS")
    v.unknown.append("DLA's table lists Leaky ReLU, the 10.7 header's DLA activation types (kRELU, kSIGMOID, "
                     "kTANH, kCLIP) do not")


def _prelu(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H", "OPERATORS_DOCS")
    v.check(len(node.input) > 1 and node.input[1] in g.constant, "slopes are not a build-time constant")


def _concat(node: Any, g: _Graph, v: _Verdict) -> None:
    """IConcatenationLayer (NVINFER_H): the channel axis (third to last); Table 12: >= 2 inputs (DLA_DOCS)."""
    v.cite("NVINFER_H", "DLA_DOCS")
    rank = g.rank(node.output[0])
    axis = int(_attr(node, "axis", 1))
    if rank is None:
        v.check(None, "concatenation axis (rank unknown)")
    else:
        v.check(axis % rank == rank - 3, f"axis {axis} of a rank-{rank} tensor: DLA concatenates on the channel axis only")
    v.check(len([t for t in node.input if t]) >= 2, "one input: DLA's table asks for at least two")


def _div_pow(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H", "DLA_DOCS")
    v.unknown.append(f"DLA's table lists {node.op_type}, the 10.7 header's DLA element-wise operations (kSUM, "
                     "kPROD, kMAX, kMIN, kSUB) do not")


def _unary(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H")
    v.check(False, f"{node.op_type}: DLA runs only UnaryOperation::kABS")


def _other_activation(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H")
    v.check(False, f"{node.op_type}: DLA's activation types are kRELU, kSIGMOID, kTANH and kCLIP")


def _gather(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H")
    v.check(False, "IGatherLayer: no DLA support")


def _slice(node: Any, g: _Graph, v: _Verdict) -> None:
    """ISliceLayer (NVINFER_H): constant starts/sizes/axes, stride 1, not on the first axis, 4-D input."""
    v.cite("NVINFER_H")
    rank = g.rank(node.input[0])
    v.check(None if rank is None else rank == 4, f"input of rank {rank}: DLA slices 4-D tensors")
    params = [t for t in node.input[1:] if t]
    if not all(t in g.constant for t in params):
        v.check(False, "starts/ends/axes/steps are not build-time constants")
        return
    starts = g.values.get(node.input[1]) if len(node.input) > 1 else None
    axes = g.values.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = g.values.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or (len(node.input) > 3 and node.input[3] and axes is None):
        v.check(None, "slice parameters computed from constants (not read)")
        return
    axes_list = list(range(len(starts))) if axes is None else [int(a) % (rank or 1) for a in axes.reshape(-1)]
    v.check(0 not in axes_list, "slices the first dimension")
    if steps is not None:
        v.check(all(int(s) == 1 for s in steps.reshape(-1)), f"steps {steps.reshape(-1).tolist()}: DLA takes 1")


def _resize(node: Any, g: _Graph, v: _Verdict) -> None:
    """IResizeLayer (NVINFER_H): mode/coordinate/rounding combinations and 4 integer scales."""
    v.cite("NVINFER_H")
    v.notes.append("ONNX attributes read as TensorRT's ONNX parser maps them (half_pixel, asymmetric, "
                   "round_prefer_floor -> kHALF_DOWN, round_prefer_ceil -> kHALF_UP, pytorch_half_pixel -> kUPPER)")
    mode = _attr(node, "mode", "nearest")
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel" if g.opset >= 11 else "asymmetric")
    rounding = _attr(node, "nearest_mode", "round_prefer_floor" if g.opset >= 11 else "floor")
    if mode == "nearest":
        ok = (coord, rounding) in (("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                                   ("half_pixel", "round_prefer_ceil"))
        v.check(ok, f"nearest with {coord}/{rounding}: DLA takes asymmetric/floor or half_pixel/round_prefer_*")
        top = 32
    elif mode == "linear":
        v.check(coord in ("half_pixel", "pytorch_half_pixel"), f"linear with {coord}: DLA takes half_pixel")
        top = 4
    else:
        v.check(False, f"{mode} resize: DLA takes nearest and linear")
        return
    scales_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 3 and node.input[3]:
        v.unknown.append("output sizes instead of scales: DLA refuses setOutputDimensions(); whether the parser "
                         "turns static sizes into scales is not stated")
        return
    if g.opset < 11 and len(node.input) > 1:
        scales_name = node.input[1]
    scales = g.values.get(scales_name) if scales_name else None
    if scales is None:
        v.check(None, "scales (not a constant)")
        return
    s = [float(x) for x in scales.reshape(-1)]
    ok = len(s) == 4 and s[0] == 1 and s[1] == 1 and all(x.is_integer() and 1 <= x <= top for x in s[2:])
    v.check(ok, f"scales {s}: DLA takes 4 scales, 1 and 1 first, then integers in [1, {top}]")


def _reduce(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("OPERATORS_DOCS")
    if node.op_type != "ReduceMax":
        v.check(False, f"{node.op_type}: DLA reduces with MAX only")
        return
    rank = g.rank(node.input[0])
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in g.values:
        axes = g.values[node.input[1]].reshape(-1).tolist()
    if rank is None or axes is None:
        v.check(None, "reduced axes")
        return
    v.check(all(int(a) % rank >= rank - 3 for a in axes), f"axes {axes}: DLA reduces C, H and W only")


def _global_pool(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("OPERATORS_DOCS")
    v.unknown.append("newer ONNX parsers build a Reduce layer (DLA reduces with MAX only), older ones a pooling "
                     "layer over the whole map (window [1, 8] on DLA)")


def _lrn(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("NVINFER_H", "DLA_DOCS")
    v.check(int(_attr(node, "size", 0)) in (3, 5, 7, 9), f"window {_attr(node, 'size', 0)}: DLA takes 3, 5, 7, 9")
    v.check(False, "DLA runs LRN in FP16 only (INT8 inputs go to FP16)")


def _unknown_because(why: str, *keys: str) -> Callable[[Any, _Graph, _Verdict], None]:
    def rule(node: Any, g: _Graph, v: _Verdict) -> None:
        v.cite(*keys)
        v.unknown.append(why)

    return rule


def _not_in_table(node: Any, g: _Graph, v: _Verdict) -> None:
    v.cite("DLA_DOCS")
    v.check(False, f"TensorRT builds a {_NOT_IN_TABLE[node.op_type]} layer, which DLA's layer table does not list")


_RULES: dict[str, Callable[[Any, _Graph, _Verdict], None]] = {
    "Conv": _conv,
    "ConvTranspose": _deconv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LeakyRelu": _leaky,
    "PRelu": _prelu,
    "Concat": _concat,
    "Div": _div_pow,
    "Pow": _div_pow,
    "Abs": _listed("NVINFER_H"),
    "Gather": _gather,
    "Slice": _slice,
    "Resize": _resize,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "LRN": _lrn,
    "Softmax": _unknown_because("DLA's SoftMax rules (axis, sizes) exist but its INT8 support is not stated in the "
                                "sources read", "NVINFER_H"),
    "Gemm": _unknown_because("DLA's table has \"Convolution / Fully Connected\"; older parsers built FullyConnected "
                             "layers, TensorRT 10 builds MatrixMultiply, which the table does not list", "DLA_DOCS"),
    "MatMul": _unknown_because("TensorRT 10 builds a MatrixMultiply layer, which DLA's table does not list; older "
                               "versions turned some into FullyConnected layers", "DLA_DOCS"),
    "BatchNormalization": _unknown_because("a Scale layer (fused into the convolution before it when TensorRT can); "
                                           "no DLA rule for Scale in the sources read", "DLA_DOCS"),
    "Equal": _unknown_because("DLA's table: comparisons run in INT8 and their output must be cast to FP16/INT8 "
                              "immediately", "DLA_DOCS"),
    "QuantizeLinear": _unknown_because("explicit quantization (Q/DQ) on DLA depends on the TensorRT version",
                                       "DLA_DOCS"),
}
for _op in _ACTIVATIONS + _ELEMENTWISE:
    _RULES[_op] = _listed("NVINFER_H")
for _op in _OTHER_ACTIVATIONS:
    _RULES[_op] = _other_activation
for _op in _UNARY:
    _RULES[_op] = _unary
for _op in _SHUFFLE:
    _RULES[_op] = _unknown_because("a Shuffle layer: no DLA rule for Shuffle in the sources read", "DLA_DOCS")
for _op in ("ReduceMax", "ReduceMean", "ReduceSum", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    _RULES[_op] = _reduce
for _op in ("Greater", "Less"):
    _RULES[_op] = _RULES["Equal"]
for _op in _NOT_IN_TABLE:
    _RULES[_op] = _not_in_table


# ---------------------------------------------------------------------------------------------- the report
def dla_readiness(model: Any, cache: CalibrationCache | None = None, *, trt_version: str | None = None) -> DlaReport:
    """DLA INT8 readiness of `model` (path or ModelProto) and, with `cache`, the scales its eligible layers lack.

    `trt_version` (else the cache header's) is checked against DLA's availability.
    """
    from ..ort.model import load_model

    model = load_model(model)
    g = _Graph(model)
    scales = cache.scales if cache is not None else None
    layers: list[DlaLayer] = []
    skipped = 0
    for index, node in enumerate(model.graph.node):
        outs = [t for t in node.output if t]
        if node.op_type in _NO_LAYER or not outs or all(t in g.constant for t in outs):
            skipped += 1
            continue
        v = _Verdict()
        rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            what = f"custom op {node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            v.cite("DLA_DOCS")
            v.unknown.append(f"{what}: no DLA rule found in the sources read (DLA's layer table was read from "
                             "Activation to Parametric ReLU only)")
        else:
            rule(node, g, v)
        _dims(node, g, v)
        if scales is not None:
            _int8_ranges(node, g, scales, v)
        tensors = [t for t in list(node.input) + outs if t in g.calibrated and t not in g.constant]
        layer = DlaLayer(_label(node, index), node.op_type, v.verdict, v.bad or v.unknown, v.sources, v.notes,
                         list(dict.fromkeys(tensors)))
        if scales is not None and layer.verdict == "eligible":
            layer.missing = [t for t in layer.tensors if t not in scales]
        layers.append(layer)
    general = _general(model, g, cache, trt_version)
    return DlaReport(layers, general, skipped, cache is not None)


def _dims(node: Any, g: _Graph, v: _Verdict) -> None:
    """DLA_DOCS general restrictions: non-batch dimensions <= 8192, batch (all but C, H, W) <= 4096."""
    for t in [t for t in list(node.input) + list(node.output) if t and t not in g.constant]:
        shape = g.shape(t)
        if not shape:
            continue
        big = [d for d in shape[1:] if d is not None and d > MAX_NON_BATCH_DIM]
        if big:
            v.cite("DLA_DOCS")
            v.check(False, f"tensor {t!r} has a dimension of {big[0]}, more than {MAX_NON_BATCH_DIM}")
        lead = shape[:-3] if len(shape) > 3 else shape[:1]
        if lead and all(d is not None for d in lead) and int(np.prod(lead)) > MAX_BATCH:
            v.cite("DLA_DOCS")
            v.check(False, f"tensor {t!r} has a DLA batch of {int(np.prod(lead))}, more than {MAX_BATCH}")


def _int8_ranges(node: Any, g: _Graph, scales: dict[str, float], v: _Verdict) -> None:
    """INT8 rules that read the cache: equal pooling ranges (required); element-wise inputs (TensorRT takes the max)."""
    if node.op_type in ("MaxPool", "AveragePool") and node.input and node.output:
        a, b = scales.get(node.input[0]), scales.get(node.output[0])
        if a is not None and b is not None and np.float32(a) != np.float32(b):
            v.cite("NVINFER_H")
            v.check(False, f"INT8 pooling needs equal input and output ranges; the cache has amax "
                    f"{a * 127:.6g} for {node.input[0]!r} and {b * 127:.6g} for {node.output[0]!r}")
    if node.op_type in _ELEMENTWISE:
        ins = [t for t in node.input if t and t not in g.constant and t in scales]
        if len(ins) == 2 and np.float32(scales[ins[0]]) != np.float32(scales[ins[1]]):
            v.notes.append(f"inputs {ins[0]!r} and {ins[1]!r} have different ranges; DLA needs them equal and "
                           "TensorRT uses the larger for both (NvInfer.h, IElementWiseLayer)")


def _general(model: Any, g: _Graph, cache: CalibrationCache | None, trt_version: str | None) -> list[dict[str, Any]]:
    from ..ort.model import model_inputs

    found: list[dict[str, Any]] = []

    def add(severity: str, code: str, message: str, source: str) -> None:
        found.append({"severity": severity, "code": code, "message": message, "source": SOURCES[source]})

    for spec in model_inputs(model):
        dynamic = [d for d in spec.shape[1:] if not isinstance(d, int)]
        if dynamic:
            add("warning", "dla-dynamic-shape",
                f"input {spec.name!r} has dynamic dimensions {spec.shape}: DLA takes no dynamic dimensions (a "
                "profile's min, opt and max must be equal)", "DLA_DOCS")
    if cache is not None and cache.algorithm != "EntropyCalibration2":
        add("warning", "dla-calibrator",
            f"the cache was written by {cache.algorithm or 'an unknown calibrator'}: NvInfer.h calls "
            "IInt8EntropyCalibrator2 the required calibrator for DLA", "NVINFER_H")
    version = None
    if trt_version is not None:
        version = decode_version(encode_version(trt_version))
    elif cache is not None and cache.version_number is not None:
        version = decode_version(cache.version_number)
    if version is not None and version[:2] > LAST_DLA_RELEASE:
        add("warning", "dla-version",
            f"TensorRT {'.'.join(map(str, version))}: per TensorRT's 11.3 documentation, 10.7 was the last release "
            "that supported DLA (none in 11.0-11.3; 11.4 only on Windows on ARM, in beta)", "DLA_AVAILABILITY")
    return found


def dla_findings(report: Any, cache: CalibrationCache, model: Any, *, trt_version: str | None = None) -> DlaReport:
    """Add the DLA readiness findings to a `ValidationReport` and set its `dla` section."""
    dla = dla_readiness(model, cache, trt_version=trt_version)
    for f in dla.general:
        report.add(f["severity"], f["code"], f["message"], source=f["source"])
    for layer in dla.layers:
        if layer.verdict == "ineligible":
            report.add("warning", "dla-ineligible", f"{layer.op} {layer.node!r} cannot run on DLA in INT8: "
                       f"{'; '.join(layer.reasons)}", node=layer.node, sources=[SOURCES[s] for s in layer.sources])
        elif layer.verdict == "unknown":
            report.add("info", "dla-unknown", f"{layer.op} {layer.node!r}: unknown/version-dependent on DLA: "
                       f"{'; '.join(layer.reasons)}", node=layer.node, sources=[SOURCES[s] for s in layer.sources])
        for note in layer.notes:
            if "ranges" in note:
                report.add("info", "dla-elementwise-ranges", f"{layer.op} {layer.node!r}: {note}", node=layer.node)
    for tensor in dla.missing_scales:
        users = [layer.node for layer in dla.layers if tensor in layer.missing]
        report.add("warning", "dla-missing-scale", "a DLA-eligible layer reads or writes this tensor and the cache "
                   "has no scale for it: that layer falls back to the GPU (or fails without GPU fallback)", tensor,
                   layers=users)
    report.add("info", "dla-summary", dla.summary())
    report.dla = dla.to_json()
    return dla
