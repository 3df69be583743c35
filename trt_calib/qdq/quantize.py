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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .._util import require
from ..core.cache import CalibrationCache, amax_to_scale, scale_to_hex
from ..ort.collect import CalibrationResult, _tensor_types, load_model, model_inputs, ort_session
from ..ort.data import iter_batches
from ..errors import CalibrationError, ModelError
from ..core.histogram import AbsHistogram
from ..core.signs import ASYMMETRIC_METHODS, Quantizer, SignedHistogram, asymmetric_params, asymmetric_quantizer

__all__ = [
    "PLACEMENTS",
    "WEIGHTED_OPS",
    "MIN_OPSET",
    "ASYMMETRIC_DTYPES",
    "ASYMMETRIC_METADATA_KEY",
    "ASYMMETRIC_NOTE",
    "ActivationScale",
    "NodeCoverage",
    "CoverageReport",
    "quantize_model",
    "quantize_weight",
    "weight_axis",
    "qdq_session",
]

log = logging.getLogger(__name__)

MIN_OPSET = 13  # DequantizeLinear's `axis` (per-channel weights) arrived in opset 13
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PLACEMENTS = {
    "trt": "inputs and weights of Conv/ConvTranspose/Gemm/MatMul, residual inputs of Conv-fed Adds, shared Concat scales",
    "weighted": "inputs and weights of Conv/ConvTranspose/Gemm/MatMul only (no Add residuals)",
}
_BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")
# Ops whose output holds the same values (or a selection of them) as their first input: a tensor without its own scale
# takes the scale of what it was reshaped or max-pooled from. TensorRT ties max-pool scales the same way.
_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "MaxPool")
_FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu")
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
_UNNAMED_PREFIX = "(Unnamed Layer*"

#: Activation types `quantize_model(asymmetric=...)` offers: (qmin, qmax, zero-point dtype).
ASYMMETRIC_DTYPES = {"uint8": (0, 255, np.uint8), "int8": (-128, 127, np.int8)}
#: The `metadata_props` key that marks a model with asymmetric activations.
ASYMMETRIC_METADATA_KEY = "trt_calib.asymmetric"
#: Where a model with zero points runs; in the metadata, the coverage report, the warning and the CLI help.
ASYMMETRIC_NOTE = (
    "TensorRT on GPUs rejects it (zero points must be 0: only symmetric quantization is supported); DLA needs the "
    "ONNX parser flag kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA (TensorRT 10.11+); onnxruntime runs it"
)


# ---------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ActivationScale:
    """The Q/DQ pair on one activation tensor: its float32 scale, zero point and type, and where they came from."""

    tensor: str
    scale: float
    origin: str  # e.g. "cache", "calibration", "inherited from pool2 through Flatten", "shared by Concat 'cat'"
    zero_point: int = 0
    dtype: str = "int8"  # the zero point's type, which is the quantised type: "int8" or "uint8"
    asymmetric: bool = False  # True when it came from an asymmetric range (its zero point may still be 0)

    @property
    def hex(self) -> str:
        return scale_to_hex(self.scale)

    @property
    def amax(self) -> float:
        """The symmetric threshold scale * 127; for an asymmetric pair, the largest |x| it represents."""
        if not self.asymmetric:
            return float(np.float32(self.scale) * np.float32(127.0))
        return max(-self.lo, self.hi)

    @property
    def lo(self) -> float:
        """The most negative value the pair represents ((qmin - zero point) * scale)."""
        qmin = ASYMMETRIC_DTYPES[self.dtype][0] if self.asymmetric else -127
        return (qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        """The most positive value the pair represents ((qmax - zero point) * scale)."""
        qmax = ASYMMETRIC_DTYPES[self.dtype][1] if self.asymmetric else 127
        return (qmax - self.zero_point) * self.scale

    def to_json(self) -> dict[str, Any]:
        """JSON-able values; zero point, type and represented range only for asymmetric pairs."""
        row: dict[str, Any] = {"tensor": self.tensor, "scale": self.scale, "hex": self.hex, "amax": self.amax,
                               "origin": self.origin}
        if self.asymmetric:
            row.update(zero_point=self.zero_point, dtype=self.dtype, lo=self.lo, hi=self.hi)
        return row


@dataclass
class NodeCoverage:
    """What happened to one node: which inputs and weight got Q/DQ, or why it stays in float."""

    node: str
    op_type: str
    quantized: bool
    inputs: list[str] = field(default_factory=list)  # activation tensors read through a Q/DQ pair
    weight: str | None = None
    weight_axis: int | None = None  # None: one scale for the whole weight
    reason: str = ""  # why it stays in float (or a note on how it was quantised)
    bias_shift: float | None = None  # bias correction: the largest per-channel shift folded into the bias

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"node": self.node, "op_type": self.op_type, "quantized": self.quantized}
        if self.inputs:
            row["inputs"] = list(self.inputs)
        if self.weight is not None:
            row["weight"] = self.weight
            row["weight_axis"] = self.weight_axis
        if self.reason:
            row["reason"] = self.reason
        if self.bias_shift is not None:
            row["bias_shift"] = self.bias_shift
        return row


@dataclass
class CoverageReport:
    """Which nodes `quantize_model` quantised, which stay in float and why, and how the scales were mapped."""

    nodes: list[NodeCoverage]
    activations: dict[str, ActivationScale]  # tensor -> its Q/DQ scale
    unquantized_tensors: dict[str, str]  # activation inputs of weighted ops left in float -> why
    scale_source: str  # "cache" or "amax"
    unmapped_entries: list[str] = field(default_factory=list)  # cache/amax names that are no tensor of the model
    unnamed_entries: list[str] = field(default_factory=list)  # "(Unnamed Layer* N) ..." entries: unmappable by nature
    unused_entries: list[str] = field(default_factory=list)  # named a tensor, but no Q/DQ needed that scale
    opset: tuple[int, int] = (0, 0)  # (before, after)
    per_channel: bool = True
    placement: str = "trt"
    bias_correction: dict[str, Any] | None = None
    asymmetric: dict[str, str] | None = None  # {"method", "dtype", "note"} when activations have zero points

    @property
    def quantized_nodes(self) -> list[NodeCoverage]:
        return [n for n in self.nodes if n.quantized]

    @property
    def float_weighted_nodes(self) -> list[NodeCoverage]:
        """Conv/ConvTranspose/Gemm/MatMul nodes left in float: the coverage gaps that cost speed."""
        return [n for n in self.nodes if n.op_type in WEIGHTED_OPS and not n.quantized]

    def summary(self) -> str:
        weighted = [n for n in self.nodes if n.op_type in WEIGHTED_OPS]
        adds = [n for n in self.nodes if n.op_type == "Add" and n.quantized]
        text = (
            f"{sum(n.quantized for n in weighted)}/{len(weighted)} Conv/ConvTranspose/Gemm/MatMul nodes quantised, "
            f"{len(adds)} Add residual(s), {len(self.activations)} activation Q/DQ pair(s)"
        )
        if self.scale_source == "cache":
            text += (
                f"; cache entries: {len(self.unmapped_entries)} unmapped, {len(self.unnamed_entries)} unnamed, "
                f"{len(self.unused_entries)} not needed"
            )
        if self.asymmetric:
            text += f"; ASYMMETRIC {self.asymmetric['dtype']} activations ({self.asymmetric['method']} ranges)"
        return text

    def table(self) -> str:
        """One line per node that Q/DQ placement considers (weighted ops, Add, Concat), then the summary."""
        rows = [n for n in self.nodes if n.op_type in WEIGHTED_OPS + ("Add", "Concat")]
        width = max([len(n.node) for n in rows] + [4])
        header = "input scale:zp" if self.asymmetric else "input scales"
        lines = [f"{'node':<{width}}  {'op':<13}  {'int8':<4}  {header:<24}  {'weight':<10}  note"]
        for n in rows:
            pairs = [self.activations[t] for t in n.inputs if t in self.activations]
            if self.asymmetric:
                scales = ",".join(f"{a.hex}:{a.zero_point}" for a in pairs) or "-"
            else:
                scales = ",".join(a.hex for a in pairs) or "-"
            if n.weight is None:
                weight = "-"
            else:
                weight = "per-tensor" if n.weight_axis is None else f"axis {n.weight_axis}"
            note = n.reason
            if n.bias_shift is not None:
                note = (note + "; " if note else "") + f"bias shifted by up to {n.bias_shift:.3g}"
            lines.append(
                f"{n.node:<{width}}  {n.op_type:<13}  {'yes' if n.quantized else 'no':<4}  {scales:<24}  {weight:<10}  {note}"
            )
        lines.append("")
        for title, names in (
            ("unmapped entries (no such tensor)", self.unmapped_entries),
            ("unnamed entries (TensorRT-internal names, unmappable)", self.unnamed_entries),
            ("entries not needed by the placement", self.unused_entries),
        ):
            if names:
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                lines.append(f"{title}: {shown}")
        if self.unquantized_tensors:
            lines.append("activations left in float:")
            lines.extend(f"  {t}: {why}" for t, why in self.unquantized_tensors.items())
        if self.asymmetric:
            lines.append(
                f"ASYMMETRIC: {self.asymmetric['dtype']} activations with zero points ({self.asymmetric['method']} "
                f"ranges). {self.asymmetric['note']}"
            )
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "per_channel_weights": self.per_channel,
            "scale_source": self.scale_source,
            "opset": {"before": self.opset[0], "after": self.opset[1]},
            "summary": self.summary(),
            "nodes": [n.to_json() for n in self.nodes],
            "activations": [a.to_json() for a in self.activations.values()],
            "unquantized_tensors": dict(self.unquantized_tensors),
            "unmapped_entries": list(self.unmapped_entries),
            "unnamed_entries": list(self.unnamed_entries),
            "unused_entries": list(self.unused_entries),
            "bias_correction": self.bias_correction,
            "asymmetric": self.asymmetric,
        }


# ---------------------------------------------------------------------------------------------- weights
def weight_axis(node: Any, weight: np.ndarray) -> int | None:
    """The output-channel axis of a weighted node's constant weight (None: per-tensor is all TensorRT takes)."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul" and weight.ndim == 2:
        return 1
    return None


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their scales: scale = max|w| / 127 per slice along `axis` (or whole), q = round(w/scale).

    An all-zero slice gets scale 1 (its values stay 0); rounding is half to even, like ONNX QuantizeLinear.
    """
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        amax = np.max(np.abs(w)).reshape(()) if w.size else np.float32(0)
        shape: tuple[int, ...] = ()
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=others) if w.size else np.zeros(w.shape[axis], np.float32)
        shape = tuple(w.shape[axis] if i == axis else 1 for i in range(w.ndim))
    scale = (np.asarray(amax, dtype=np.float32) / np.float32(127.0)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


# ---------------------------------------------------------------------------------------------- graph helpers
class _Graph:
    """Read-only indexes over a graph: producers, consumers, constants."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output and _constant_attr(n) is not None
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
        return self._numpy_helper.to_array(_constant_attr(self.constant_nodes[name]))

    def is_tensor(self, name: str) -> bool:
        return name in self.producer or name in self.inputs or name in self.initializers

    def op_of(self, name: str) -> str | None:
        p = self.producer.get(name)
        return p[1].op_type if p else None


def _constant_attr(node: Any) -> Any:
    """The TensorProto of a Constant node's `value` attribute (None for value_float etc., which hold no weights)."""
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return a.t
    return None


def _node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class _Affine:
    """An asymmetric activation grid: the quantizer and the range it was asked to cover (what Concat unions merge)."""

    quantizer: Quantizer
    lo: float
    hi: float
    problem: str = ""  # why the tensor cannot have a pair (no finite values, infinities, all zeros)

    @classmethod
    def of(cls, q: Quantizer) -> "_Affine":
        return cls(q, q.lo, q.hi)


@dataclass
class _Scales:
    """Per-tensor grids and how to merge them: float32 scales (symmetric) or `_Affine` grids (asymmetric)."""

    table: dict[str, Any]  # name -> np.float32 scale, or _Affine when asymmetric
    source: str  # "cache" | "amax" | "histograms"
    names: list[str]  # as given, in order (duplicates once)
    asymmetric: tuple[str, str] | None = None  # (method, dtype)

    def widest(self, grids: Sequence[Any]) -> Any:
        """One grid for tensors that must share one: the largest scale, or the pair covering every range.

        Asymmetric: a grid whose asked-for range already covers the others is returned as it is, so merging again
        never moves a shared pair; a grid with a problem other than all zeros wins (the group cannot be quantised).
        """
        if self.asymmetric is None:
            return max(grids, key=float)
        broken = [a for a in grids if a.problem and a.quantizer.scale != 0]
        if broken:
            return broken[0]
        live = [a for a in grids if not a.problem] or list(grids)
        lo, hi = min(a.lo for a in live), max(a.hi for a in live)
        for a in live:
            if a.lo == lo and a.hi == hi:
                return a
        qmin, qmax, _ = ASYMMETRIC_DTYPES[self.asymmetric[1]]
        return _Affine(Quantizer(*asymmetric_params(lo, hi, qmin, qmax), qmin, qmax), lo, hi)


def _scale_table(scales: Any, asymmetric: tuple[str, str] | None = None) -> _Scales:
    if asymmetric is not None:
        return _affine_table(scales, *asymmetric)
    if isinstance(scales, CalibrationCache):
        # the cache's float32 itself: bit-exact, never amax/127 recomputed
        table = {e.name: np.float32(e.scale) for e in scales.entries}
        if scales.duplicates():
            log.warning("cache names %d tensor(s) twice (%s); the last line wins", len(scales.duplicates()),
                        ", ".join(scales.duplicates()[:5]))
        return _Scales(table, "cache", list(table))
    if isinstance(scales, CalibrationResult):
        scales = scales.amax
    if not isinstance(scales, Mapping):
        raise TypeError(
            f"scales must be a mapping tensor -> amax, a CalibrationCache or a CalibrationResult, not {type(scales).__name__}"
        )
    table = {}
    for name, amax in scales.items():
        if isinstance(amax, (AbsHistogram, SignedHistogram)):
            raise TypeError(f"scales holds a histogram for {name!r}: histograms are for asymmetric='minmax'|'mse'; "
                            "symmetric scales need amax per tensor (or a CalibrationResult)")
        try:
            table[str(name)] = np.float32(amax_to_scale(float(amax)))
        except (TypeError, ValueError):
            raise TypeError(f"amax of tensor {name!r} is {amax!r}, not a number") from None
    return _Scales(table, "amax", list(table))


def _affine_table(scales: Any, method: str, dtype: str) -> _Scales:
    """One `_Affine` per histogram: `asymmetric_quantizer` over the range `method` picks, on `dtype`'s codes."""
    if isinstance(scales, CalibrationCache):
        raise TypeError("asymmetric Q/DQ needs histograms, not a calibration cache: a cache holds one symmetric "
                        "threshold per tensor, not the signed ranges zero points come from")
    if isinstance(scales, CalibrationResult):
        scales = scales.histograms
    if not isinstance(scales, Mapping) or not all(isinstance(h, (AbsHistogram, SignedHistogram)) for h in scales.values()):
        raise TypeError(
            "asymmetric Q/DQ needs a mapping tensor -> SignedHistogram (ort.collect.collect_signed) or a CalibrationResult, "
            f"not {type(scales).__name__}" + (" of amax values" if isinstance(scales, Mapping) else "")
        )
    qmin, qmax, _ = ASYMMETRIC_DTYPES[dtype]
    table: dict[str, Any] = {}
    unsigned: list[str] = []
    nonfinite: list[str] = []
    for name, h in scales.items():
        if h.num_nan or h.num_inf:
            nonfinite.append(f"{name} ({h.num_nan} NaN, {h.num_inf} Inf)")
        if h.is_empty or h.num_inf:
            problem = "no finite values in calibration" if h.is_empty else f"{h.num_inf} infinite value(s) in calibration"
            table[str(name)] = _Affine(Quantizer(float("inf"), 0, qmin, qmax), 0.0, 0.0, problem)
            continue
        if float(h.abs_max) == 0:
            table[str(name)] = _Affine(Quantizer(0.0, 0, qmin, qmax), 0.0, 0.0,
                                       "zero range (the tensor was all zeros in calibration)")
            continue
        if method == "mse" and not isinstance(h, SignedHistogram) and h.num_negative not in (0, h.num_values):
            unsigned.append(str(name))
            continue
        table[str(name)] = _Affine.of(asymmetric_quantizer(h, method, qmin=qmin, qmax=qmax))
    if unsigned:
        raise ValueError(
            f"asymmetric='mse' needs the signs of the values, and {len(unsigned)} |x| histogram(s) hold both signs "
            f"({', '.join(unsigned[:5])}{', ...' if len(unsigned) > 5 else ''}). Hint: collect them with "
            "trt_calib.ort.collect.collect_signed, or use asymmetric='minmax' (the signed extrema suffice)"
        )
    if nonfinite:
        log.warning("%d tensor(s) hold NaN or Inf values (NaN is ignored; a tensor with Inf gets no pair): %s",
                    len(nonfinite), ", ".join(nonfinite[:10]))
    return _Scales(table, "histograms", list(table), (method, dtype))


def _scale_problem(scale: np.float32) -> str:
    if not np.isfinite(scale):
        return f"non-finite scale ({float(scale)})"
    if scale == 0:
        return "zero scale (the tensor was all zeros in calibration)"
    if scale < 0:
        return f"negative scale ({float(scale)})"
    return ""


def _grid_problem(grid: Any) -> str:
    if isinstance(grid, _Affine):
        return grid.problem or _scale_problem(np.float32(grid.quantizer.scale))
    return _scale_problem(grid)


class _Resolver:
    """Finds the grid of an activation tensor: its own, one inherited through reshapes/max-pool, or a Concat's.

    Symmetric, a tensor's own scale comes first (pools are already tied by calibration or by TensorRT's cache).
    Asymmetric, a pass-through output takes its source's pair whenever the source has one, so a Q can move back
    across the reshape or max-pool without a requantisation.
    """

    def __init__(self, g: _Graph, scales: _Scales) -> None:
        self.g = g
        self.scales = scales
        self.used: set[str] = set()  # table names whose grid ended up in a Q/DQ

    def own(self, name: str, _via: tuple[str, ...] = ()) -> tuple[Any, str, str] | None:
        """(grid, origin text, table name) for `name` without Concat sharing."""
        producer = self.g.producer.get(name)
        through = producer is not None and producer[1].op_type in _PASS_THROUGH and bool(producer[1].input)
        if through and self.scales.asymmetric is not None:
            found = self.own(producer[1].input[0], (producer[1].op_type,) + _via)
            if found is not None:
                return found
        if name in self.scales.table:
            origin = {"cache": "cache", "amax": "calibration", "histograms": "histogram"}[self.scales.source]
            if _via:
                origin = f"{origin} entry of {name!r}, through {' -> '.join(_via)}"
            return self.scales.table[name], origin, name
        if through and self.scales.asymmetric is None:
            return self.own(producer[1].input[0], (producer[1].op_type,) + _via)
        return None

    def concat_leaves(self, name: str, _seen: frozenset[str] = frozenset()) -> list[tuple[int, int, str]] | None:
        """(node index, input index, tensor) of the activation inputs feeding `name` through (nested) Concats."""
        producer = self.g.producer.get(name)
        if producer is None or producer[1].op_type != "Concat" or name in _seen:
            return None
        index, node = producer
        leaves: list[tuple[int, int, str]] = []
        for j, t in enumerate(node.input):
            if not t or self.g.is_constant(t):
                continue
            nested = self.concat_leaves(t, _seen | {name})
            leaves.extend(nested if nested is not None else [(index, j, t)])
        return leaves

    def resolve(self, name: str) -> tuple[Any, str, list[tuple[int, int, str]] | None]:
        """(grid, origin or reason, concat leaves): grid None means unquantisable and the text says why."""
        leaves = self.concat_leaves(name)
        if leaves is not None:
            found = [(self.own(t), t) for _, _, t in leaves]
            known = [(r[0], t) for r, t in found if r is not None]
            if not known:
                own = self.own(name)
                if own is None:
                    return None, f"no scale for {name!r} or any input of the Concat producing it", None
                known = [(own[0], name)]
            grid = self.scales.widest([k[0] for k in known])
            src = next((t for g, t in known if g is grid), None)
            problem = _grid_problem(grid)
            if problem:
                return None, f"{problem} for {src!r} (Concat {name!r})", None
            if self.scales.asymmetric is None:
                return grid, f"shared by the inputs of Concat {name!r} (largest: {src!r})", leaves
            how = f"widest: {src!r}" if src is not None else "the union of their ranges"
            return grid, f"shared by the inputs of Concat {name!r} ({how})", leaves
        own = self.own(name)
        if own is None:
            return None, f"no scale for {name!r}", None
        problem = _grid_problem(own[0])
        if problem:
            return None, f"{problem} for {name!r}", None
        return own[0], own[1], None


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    """What to insert: activation Q/DQ pairs (tensor -> grid, slots) and weight DQs (node index -> axis)."""

    widest: Callable[[Sequence[Any]], Any]  # _Scales.widest: the grid that covers several
    act_grid: dict[str, Any] = field(default_factory=dict)  # np.float32 scale, or _Affine when asymmetric
    act_origin: dict[str, str] = field(default_factory=dict)
    act_slots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    weights: dict[int, int | None] = field(default_factory=dict)  # node index -> axis (None per-tensor)
    coverage: dict[int, NodeCoverage] = field(default_factory=dict)
    unquantized: dict[str, str] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # Concat leaves sharing one grid

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


def _fusing_conv(g: _Graph, tensor: str, add_index: int) -> bool:
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


def _plan(g: _Graph, resolver: _Resolver, *, per_channel: bool, placement: str) -> _Plan:
    plan = _Plan(resolver.scales.widest)
    nodes = g.graph.node

    def take(tensor: str) -> tuple[bool, str]:
        """Whether `tensor` can have a Q/DQ; (False, reason) when it cannot."""
        grid, text, _ = resolver.resolve(tensor)
        return grid is not None, text

    def commit(index: int, j: int, tensor: str) -> None:
        grid, text, leaves = resolver.resolve(tensor)
        assert grid is not None
        if leaves is None:
            plan.add(tensor, grid, text, (index, j))
            own = resolver.own(tensor)
            if own is not None:
                resolver.used.add(own[2])
            return
        plan.groups.append([t for _, _, t in leaves])
        for li, lj, leaf in leaves:
            plan.add(leaf, grid, text, (li, lj))
            own = resolver.own(leaf)
            if own is not None:
                resolver.used.add(own[2])
        if not any(resolver.own(t) for _, _, t in leaves):
            own = resolver.own(tensor)
            if own is not None:
                resolver.used.add(own[2])

    for index, node in enumerate(nodes):
        label = _node_label(node, index)
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
    for index, node in enumerate(nodes):
        if node.op_type == "Concat" and index in plan.coverage:
            shared = [j for j, t in enumerate(node.input) if (index, j) in plan.act_slots.get(t, [])]
            if shared:
                cov = plan.coverage[index]
                cov.inputs = [node.input[j] for j in shared]
                cov.reason = "inputs share one scale (its output feeds a quantised op)"
    return plan


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


def _by_design(g: _Graph, node: Any) -> str:
    op = node.op_type
    if op in _FUSED_ACTIVATIONS and node.input and g.op_of(node.input[0]) in WEIGHTED_OPS + ("BatchNormalization",):
        return "fused into the preceding layer by TensorRT: no Q/DQ in between"
    if op in _POOLS:
        return "pooling: TensorRT moves the next Q across it (no Q/DQ of its own)"
    if op == "Concat":
        return "output not quantised: inputs keep their precision"
    if op == "Add":
        return "placement 'weighted': Adds are not quantised"
    return "not quantised by design (runs in its inputs' precision)"


def _unify_groups(plan: _Plan) -> None:
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


# ---------------------------------------------------------------------------------------------- rewriting
class _Names:
    def __init__(self, graph: Any) -> None:
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
        for n in graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
            if n.name:
                self.taken.add(n.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _float_dtype(elem_type: int | None) -> np.dtype:
    from onnx import TensorProto, helper

    if elem_type in (TensorProto.FLOAT16, TensorProto.DOUBLE):
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    return np.dtype(np.float32)


def _scale_and_zero_point(grid: Any) -> tuple[np.float32, np.ndarray]:
    """The scale and the scalar zero point (int8 0, or the asymmetric one in its own type) of an activation pair."""
    if isinstance(grid, _Affine):
        q = grid.quantizer
        return np.float32(q.scale), np.asarray(q.zero_point, np.uint8 if q.qmin >= 0 else np.int8)
    return grid, np.zeros((), np.int8)


def _rewrite(model: Any, g: _Graph, plan: _Plan) -> None:
    """Insert the planned Q/DQ nodes in place (topological order kept) and drop constants nothing reads any more."""
    from onnx import NodeProto, helper, numpy_helper

    graph = model.graph
    names = _Names(graph)
    types = _tensor_types(model)
    old_nodes = list(graph.node)
    pending: dict[int, list[Any]] = {}  # node index -> nodes to emit before it
    new_inits: list[Any] = []
    rename: dict[tuple[int, int], str] = {}

    for tensor, slots in plan.act_slots.items():
        dtype = _float_dtype(types.get(tensor))
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
    _drop_unused_constants(graph)


def _drop_unused_constants(graph: Any) -> None:
    """Remove initializers and Constant nodes (and initializer-backed graph inputs) no node or output reads."""
    while True:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
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


# ---------------------------------------------------------------------------------------------- onnxruntime
def qdq_session(model: Any, *, outputs: Sequence[str] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime CPU session that runs a Q/DQ model as written: every graph optimisation off (see `ort_session`)."""
    return ort_session(load_model(model), outputs or (), optimize=False, threads=threads, role="the Q/DQ model")


# ---------------------------------------------------------------------------------------------- bias correction
class _Segments:
    """Run a model in segments that each end at one layer output, keeping only the tensors later segments read.

    Between segments the caller may edit a layer's output in place (bias correction does), so each layer is seen
    with every earlier correction applied, at the cost of about one forward pass in all.
    """

    def __init__(self, model: Any, layer_outputs: Sequence[str]) -> None:
        self.model = model
        graph = model.graph
        self.types = _tensor_types(model)
        producer = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
        self.ends = [(producer[t], t) for t in layer_outputs]
        if [e for e, _ in self.ends] != sorted(e for e, _ in self.ends):
            raise ModelError("layers are not in topological order")
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(graph.node):
            for name in n.input:
                self.last_use[name] = i
        for o in graph.output:
            self.last_use[o.name] = len(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}

    def _segment(self, start: int, end: int, out: str) -> tuple[Any, list[str], list[str]]:
        from onnx import helper

        graph = self.model.graph
        nodes = list(graph.node[start : end + 1])
        produced = {o for n in nodes for o in n.output if o}
        inputs, inits = [], []
        for n in nodes:
            for name in n.input:
                if not name or name in produced or name in inputs:
                    continue
                if name in self.initializers:
                    if self.initializers[name] not in inits:
                        inits.append(self.initializers[name])
                else:
                    inputs.append(name)
        outputs = [o for n in nodes for o in n.output if o and (self.last_use.get(o, -1) > end or o == out)]
        sub = helper.make_graph(
            nodes,
            f"segment_{start}_{end}",
            [helper.make_tensor_value_info(t, self.types.get(t, 1), None) for t in inputs],
            [helper.make_tensor_value_info(t, self.types.get(t, 1), None) for t in outputs],
            inits,
        )
        m = helper.make_model(sub, opset_imports=list(self.model.opset_import))
        m.ir_version = self.model.ir_version
        return m, inputs, outputs

    def run(self, batches: list[dict[str, np.ndarray]], visit: Callable[[int, str, list[dict[str, np.ndarray]]], None]) -> None:
        live = [dict(b) for b in batches]
        start = 0
        for k, (end, out) in enumerate(self.ends):
            if end >= start:
                sub, inputs, outputs = self._segment(start, end, out)
                session = qdq_session(sub)
                for values in live:
                    results = session.run(outputs, {t: values[t] for t in inputs})
                    values.update(zip(outputs, results))
                    for t in [t for t in values if self.last_use.get(t, -1) <= end and t != out]:
                        del values[t]
                start = end + 1
            visit(k, out, live)


def _channel_means(values: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    total, count = None, 0
    for v in values:
        x = np.asarray(v[name], dtype=np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        s = x.sum(axis=axes)
        total = s if total is None else total + s
        count += x.size // x.shape[1]
    return total / max(count, 1)


def _correct_biases(
    float_model: Any,
    qdq_model: Any,
    layers: list[tuple[int, str]],
    batches: list[dict[str, np.ndarray]],
    progress: Callable[[int], None] | None,
) -> tuple[dict[int, float], dict[str, Any]]:
    """Fold each layer's measured per-channel mean error into its bias, in topological order; edits `qdq_model`."""
    from onnx import numpy_helper

    started = time.perf_counter()
    outs = [out for _, out in layers]
    float_means: dict[str, np.ndarray] = {}
    _Segments(float_model, outs).run(batches, lambda k, out, live: float_means.__setitem__(out, _channel_means(live, out)))

    graph = qdq_model.graph
    by_output = {n.output[0]: n for n in graph.node if n.output}
    inits = {t.name: t for t in graph.initializer}
    names = _Names(graph)
    types = _tensor_types(qdq_model)
    shifts: dict[int, float] = {}
    before: list[float] = []

    def visit(k: int, out: str, live: list[dict[str, np.ndarray]]) -> None:
        index, _ = layers[k]
        node = by_output[out]
        err = _channel_means(live, out) - float_means[out]
        before.append(float(np.mean(np.abs(err))))
        new_bias = _shifted_bias(node, err, inits, types, out)
        if new_bias is not None:
            name = names(f"{out}_bias_corrected")
            tensor = numpy_helper.from_array(new_bias, name)
            graph.initializer.append(tensor)
            inits[name] = tensor
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
            shape = [1] * live[0][out].ndim
            shape[1] = err.size
            correction = err.astype(live[0][out].dtype).reshape(shape)
            for values in live:
                values[out] = values[out] - correction
            shifts[index] = float(np.max(np.abs(err)))
        if progress is not None:
            progress(1)

    _Segments(qdq_model, outs).run(batches, visit)
    _drop_unused_constants(graph)
    info = {
        "batches": len(batches),
        "samples": int(sum(next(iter(b.values())).shape[0] for b in batches)),
        "layers": len(shifts),
        "mean_abs_error_before": float(np.mean(before)) if before else 0.0,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return shifts, info


def _shifted_bias(node: Any, err: np.ndarray, inits: dict[str, Any], types: dict[str, int], out: str) -> np.ndarray | None:
    """The layer's bias minus `err` (per output channel), shaped as the node reads it; None when it cannot take one."""
    from onnx import numpy_helper

    dtype = _float_dtype(types.get(out))
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias_name is not None and bias_name not in inits:
        log.warning("%s: bias %r is not an initializer; bias correction skipped", out, bias_name)
        return None
    bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else None
    if node.op_type != "Gemm":
        base = bias if bias is not None else np.zeros(err.shape, np.float64)
        return (base - err).astype(dtype)
    beta = float(_attr(node, "beta", 1.0))
    if beta == 0.0:
        log.warning("%s: Gemm with beta=0 ignores its C input; bias correction skipped", out)
        return None
    delta = err / beta
    if bias is None or bias.size == 1:
        base = np.zeros(err.shape, np.float64) + (float(bias.reshape(-1)[0]) if bias is not None else 0.0)
        return (base - delta).astype(dtype)
    if bias.shape[-1] != err.size:
        log.warning("%s: Gemm C of shape %s does not broadcast per output column; bias correction skipped", out, bias.shape)
        return None
    return (bias - delta).astype(dtype)


def _activation_scale(tensor: str, grid: Any, origin: str) -> ActivationScale:
    if isinstance(grid, _Affine):
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

    try:
        onnx.checker.check_model(qdq, full_check=True)
    except Exception as exc:  # ValidationError or shape-inference errors
        try:
            onnx.checker.check_model(float_model, full_check=True)
        except Exception as original:
            log.warning("the input model already fails onnx.checker (%s); the Q/DQ model does too", original)
            return
        raise ModelError(f"the Q/DQ model fails onnx.checker, the float model does not: {exc}") from None


# ---------------------------------------------------------------------------------------------- entry point
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
    """
    onnx = require("onnx", purpose="Q/DQ export")
    from onnx import version_converter

    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if bias_correction_batches < 1:
        raise ValueError(f"bias_correction_batches must be at least 1, got {bias_correction_batches}")
    if asymmetric is not None and asymmetric not in ASYMMETRIC_METHODS:
        raise ValueError(f"unknown asymmetric method {asymmetric!r}; choose one of {', '.join(ASYMMETRIC_METHODS)} (or None)")
    if asymmetric_dtype not in ASYMMETRIC_DTYPES:
        raise ValueError(f"unknown asymmetric_dtype {asymmetric_dtype!r}; choose one of {', '.join(ASYMMETRIC_DTYPES)}")
    table = _scale_table(scales, None if asymmetric is None else (asymmetric, asymmetric_dtype))
    original = load_model(model)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    before = _opset(work)
    if before < MIN_OPSET:
        try:
            work = version_converter.convert_version(work, MIN_OPSET)
        except Exception as exc:  # the converter raises plain RuntimeErrors naming the op it cannot adapt
            raise ModelError(
                f"the model is opset {before} and onnx's version converter cannot take it to opset {MIN_OPSET} "
                f"(per-channel DequantizeLinear needs it): {exc}. Hint: re-export the model with opset >= 13"
            ) from None
        log.info("model upgraded from opset %d to %d (per-channel DequantizeLinear needs opset 13)", before, MIN_OPSET)
    float_model = onnx.ModelProto()
    float_model.CopyFrom(work)

    g = _Graph(work.graph)
    resolver = _Resolver(g, table)
    plan = _plan(g, resolver, per_channel=per_channel, placement=placement)
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
    layers = [(i, n.output[0]) for i, n in enumerate(work.graph.node) if i in plan.weights and n.op_type in _BIASED_OPS]
    _rewrite(work, g, plan)

    report = CoverageReport(
        nodes=[plan.coverage[i] for i in sorted(plan.coverage)],
        activations={t: _activation_scale(t, plan.act_grid[t], plan.act_origin[t]) for t in plan.act_slots},
        unquantized_tensors=plan.unquantized,
        scale_source=table.source,
        unmapped_entries=[n for n in table.names if not n.startswith(_UNNAMED_PREFIX) and not g.is_tensor(n)],
        unnamed_entries=[n for n in table.names if n.startswith(_UNNAMED_PREFIX)],
        unused_entries=[n for n in table.names if g.is_tensor(n) and n not in resolver.used],
        opset=(before, _opset(work)),
        per_channel=per_channel,
        placement=placement,
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
        shifts, info = _correct_biases(float_model, work, layers, batches, progress)
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
