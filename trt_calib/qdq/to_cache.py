"""Back from Q/DQ: a plain ONNX model plus the TensorRT calibration cache that says what its Q/DQ pairs said.

Implicit INT8 (TensorRT 8.6-10.x, DLA) takes a float network and a cache; explicit INT8 (TensorRT 11, ModelOpt and
QAT exports, `quantize_model`) takes QuantizeLinear/DequantizeLinear pairs. `qdq_to_cache` goes from the second to
the first:

- an activation pair `t -> Q -> DQ -> ...` is removed and its scale is written under `t`, the tensor TensorRT sees in
  the plain model, as the float32 bits of the initializer (never through float64 arithmetic);
- a DequantizeLinear of a constant (int8/uint8 weights, int32 biases; per tensor or per axis) and a Q -> DQ of a
  float constant become float initializers holding exactly the values the DequantizeLinear produces;
- what implicit TensorRT cannot express is refused, naming the node: zero points other than 0 on activations,
  uint8 activations (unless `allow_asymmetric`, which writes the symmetric range covering the pair's and reports
  what that costs), per-channel activation scales, int4/fp8/16-bit types, pairs whose Q and DQ disagree;
- several pairs on one tensor with one scale give one entry; different scales are a conflict (the largest is
  written and the conflict reported);
- tensors without a pair of their own take a neighbour's scale across ops that keep values
  (`PASS_THROUGH_OPS`, both ways, as NVIDIA's qdq-translator does) and Concat outputs take their inputs' (the
  largest); every such entry says where it came from;
- a model `quantize_model` wrote carries every scale it was given in its metadata_props (`record_scales`); when
  every pair still holds the scale recorded for it, those scales are written as they were (a cache -> Q/DQ ->
  cache round trip gives back every entry bit for bit, also those no pair could carry), and the record is dropped
  from the plain model; a record the pairs contradict (the model was edited) is ignored, with a warning;
- the tensors TensorRT calibrates in the plain model that still have no scale are listed (they run in higher
  precision).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import numpy as np

from ..core.cache import DEFAULT_TRT_VERSION, CacheEntry, CalibrationCache, hex_to_scale, make_header
from ..errors import ModelError
from .cache_report import (
    AsymmetricConversion,
    CacheScale,
    MissingScale,
    PairScale,
    QdqConversion,
    QdqToCacheReport,
    ScaleConflict,
    WeightFold,
    float32_hex,
)
from .graph import node_attr, constant_attr, onnx_opset
from .rewrite import drop_unused_constants
from .scales import SCALES_METADATA_KEY, RecordedScales, read_recorded_scales

__all__ = [
    "PASS_THROUGH_OPS",
    "TIED_OPS",
    "FUSED_ACTIVATIONS",
    "UnsupportedQdqError",
    "PairScale",
    "CacheScale",
    "ScaleConflict",
    "AsymmetricConversion",
    "WeightFold",
    "MissingScale",
    "QdqToCacheReport",
    "QdqConversion",
    "qdq_to_cache",
    "float32_hex",
    "random_batches",
    "run_plain",
    "compare_with_original",
]

log = logging.getLogger(__name__)

#: Ops whose output holds the input's values (moved, selected or padded with zeros): a scale crosses them both ways.
PASS_THROUGH_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "MaxPool", "Pad")
#: Ops whose output scale TensorRT's calibration ties to its input's (algorithm.md, "Scale tying").
TIED_OPS = ("MaxPool", "AveragePool")
#: Activations TensorRT fuses into the Conv/Gemm before them; the Conv's own output then needs no scale.
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh")
_PRODUCERS_THAT_FUSE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
_REFUSED_TYPES = {  # TensorProto element type name -> why implicit INT8 cannot take it
    "INT4": "int4", "UINT4": "uint4", "FLOAT4E2M1": "fp4", "FLOAT8E4M3FN": "fp8", "FLOAT8E4M3FNUZ": "fp8",
    "FLOAT8E5M2": "fp8", "FLOAT8E5M2FNUZ": "fp8", "INT16": "int16", "UINT16": "uint16",
}
_QRANGE = {"INT8": (-128, 127), "UINT8": (0, 255)}
_WEIGHT_TYPES = ("INT8", "UINT8", "INT32")


class UnsupportedQdqError(ModelError):
    """The Q/DQ model holds pairs implicit TensorRT cannot express; `refusals` lists (node, reason) for each."""

    def __init__(self, refusals: list[tuple[str, str]]) -> None:
        self.refusals = list(dict.fromkeys(refusals))  # a Q read by several DQs is refused once
        shown = "; ".join(f"{node}: {why}" for node, why in self.refusals[:5])
        more = f"; ... ({len(self.refusals)} in all)" if len(self.refusals) > 5 else ""
        super().__init__(f"{len(self.refusals)} Q/DQ node(s) cannot become an implicit-INT8 cache: {shown}{more}")


# ---------------------------------------------------------------------------------------------- the graph
class _Index:
    """Producers, consumers and constants of the Q/DQ graph; constant values are read once."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self._to_array = numpy_helper.to_array
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in graph.node
                               if n.op_type == "Constant" and n.output and constant_attr(n) is not None}
        self.producer: dict[str, tuple[int, Any]] = {}
        self.consumers: dict[str, list[tuple[int, Any]]] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = (i, node)
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append((i, node))
        self.inputs = {i.name for i in graph.input if i.name not in self.initializers}
        self.outputs = [o.name for o in graph.output]
        self.folded: dict[str, np.ndarray] = {}  # DequantizeLinear outputs of constants
        self._cache: dict[str, np.ndarray] = {}

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes or name in self.folded

    def value(self, name: str) -> np.ndarray:
        if name in self.folded:
            return self.folded[name]
        if name not in self._cache:
            proto = self.initializers[name] if name in self.initializers else constant_attr(self.constant_nodes[name])
            self._cache[name] = self._to_array(proto)
        return self._cache[name]

    def elem_type(self, name: str) -> str | None:
        """TensorProto type name of a constant (None if not a graph constant)."""
        from onnx import TensorProto

        proto = self.initializers.get(name)
        if proto is None and name in self.constant_nodes:
            proto = constant_attr(self.constant_nodes[name])
        if proto is None:
            return None
        return TensorProto.DataType.Name(proto.data_type)


def _label(node: Any, index: int) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else f"{node.op_type} #{index} (output {node.output[0]!r})"


def _is_q(node: Any) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in _QDQ_DOMAINS


def _is_dq(node: Any) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in _QDQ_DOMAINS


@dataclass
class _Params:
    """Scale, zero point, axis and quantised type of one Q or DQ node."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    qtype: str  # TensorProto type name of the quantised side
    axis: int
    block_size: int


def _params(ix: _Index, node: Any, index: int, qtype: str | None) -> _Params:
    """The node's parameters; ValueError(reason) when they are not constants."""
    scale_name = node.input[1] if len(node.input) > 1 else ""
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not scale_name or not ix.is_constant(scale_name):
        raise ValueError(f"scale {scale_name!r} is not a constant")
    if zp_name and not ix.is_constant(zp_name):
        raise ValueError(f"zero point {zp_name!r} is not a constant")
    zp = ix.value(zp_name) if zp_name else None
    if qtype is None:  # a QuantizeLinear: its output type is the zero point's, else output_dtype, else uint8
        if zp_name:
            qtype = ix.elem_type(zp_name) or "UINT8"
        else:
            from onnx import TensorProto

            out_dtype = int(node_attr(node, "output_dtype", 0))
            qtype = TensorProto.DataType.Name(out_dtype) if out_dtype else "UINT8"
    return _Params(ix.value(scale_name), zp, qtype, int(node_attr(node, "axis", 1)), int(node_attr(node, "block_size", 0)))


def _broadcast(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-axis parameter shaped to broadcast along `axis` of an `ndim` tensor (scalars as they are)."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = values.size
    return values.reshape(shape)


def _dequantize(q: np.ndarray, p: _Params) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero point) * scale, in the scale's type."""
    scale = _broadcast(p.scale, q.ndim, p.axis)
    zp = 0 if p.zero_point is None else _broadcast(p.zero_point.astype(np.int64), q.ndim, p.axis)
    out = (q.astype(np.int64) - zp).astype(np.float32) * scale.astype(np.float32)
    return out.astype(p.scale.dtype if p.scale.dtype != np.float64 else np.float32)


def _quantize(x: np.ndarray, p: _Params) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero point), as int64."""
    lo, hi = _QRANGE[p.qtype]
    scale = _broadcast(p.scale, x.ndim, p.axis).astype(np.float32)
    zp = 0 if p.zero_point is None else _broadcast(p.zero_point.astype(np.int64), x.ndim, p.axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(x.astype(np.float32) / scale).astype(np.float64) + zp
    return np.clip(q, lo, hi).astype(np.int64)


def _scale_dtype(values: np.ndarray) -> str:
    return str(values.dtype) if values.dtype != np.float32 else "float32"


# ---------------------------------------------------------------------------------------------- conversion
@dataclass
class _Pair:
    node: str
    scale: np.float32  # what goes to the cache
    own: PairScale


class _Converter:
    """One pass over the Q/DQ graph: classify every DequantizeLinear, collect scales, refusals and folds."""

    def __init__(self, model: Any, allow_asymmetric: bool) -> None:
        self.model = model
        self.ix = _Index(model.graph)
        self.allow_asymmetric = allow_asymmetric
        self.alias: dict[str, str] = {}  # DequantizeLinear output -> the activation it dequantises
        self.pairs: dict[str, list[_Pair]] = {}
        self.folds: list[WeightFold] = []
        self.written: dict[int, np.float32] = {}  # QuantizeLinear index -> the scale its pair writes
        self.asymmetric: list[AsymmetricConversion] = []
        self.refusals: list[tuple[str, str]] = []
        self.removed: set[int] = set()

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def run(self) -> None:
        for index, node in enumerate(self.ix.graph.node):
            if any(a.type == a.GRAPH or a.type == a.GRAPHS for a in node.attribute) and _has_qdq(node):
                self.refusals.append((_label(node, index), "Q/DQ nodes inside a subgraph (If/Loop/Scan body) are "
                                      "not converted. Hint: inline the subgraph or quantise only the main graph"))
            if _is_dq(node):
                self._dequantize_node(index, node)
        for index, node in enumerate(self.ix.graph.node):
            if _is_q(node):
                self._check_q_consumers(index, node)

    def _refuse(self, node: Any, index: int, why: str) -> None:
        self.refusals.append((_label(node, index), why))

    def _dequantize_node(self, index: int, node: Any) -> None:
        ix = self.ix
        x = node.input[0]
        if ix.is_constant(x):
            self._fold_constant(index, node)
            return
        producer = ix.producer.get(x)
        if producer is None or not _is_q(producer[1]):
            what = "a graph input" if x in ix.inputs else f"the output of {producer[1].op_type}" if producer else "?"
            self._refuse(node, index, f"reads {x!r}, {what}, not a QuantizeLinear or a constant: an int8 tensor "
                         "flows between layers, which implicit TensorRT cannot take. Hint: feed the float tensor")
            return
        q_index, q = producer
        if ix.is_constant(q.input[0]):
            self._fold_fake_quantized(index, node, q_index, q)
        else:
            self._activation_pair(index, node, q_index, q)

    # ------------------------------------------------------------------ constants
    def _fold_constant(self, index: int, node: Any) -> None:
        ix = self.ix
        x = node.input[0]
        qtype = ix.elem_type(x) or str(ix.value(x).dtype).upper()
        if qtype in _REFUSED_TYPES:
            self._refuse(node, index, f"{_REFUSED_TYPES[qtype]} weights ({x!r}): implicit TensorRT calibrates INT8 "
                         "only. Hint: export with int8 weights")
            return
        if qtype not in _WEIGHT_TYPES:
            self._refuse(node, index, f"dequantises {x!r} of type {qtype.lower()}; only int8, uint8 and int32 "
                         "constants are dequantised")
            return
        try:
            p = _params(ix, node, index, qtype)
        except ValueError as exc:
            self._refuse(node, index, str(exc))
            return
        if p.block_size:
            self._refuse(node, index, f"blocked quantisation (block_size {p.block_size}) of {x!r}: not converted")
            return
        q = ix.value(x)
        value = _dequantize(q, p)
        ix.folded[node.output[0]] = value
        self.removed.add(index)
        kind = "int32 bias + DequantizeLinear" if qtype == "INT32" else f"{qtype.lower()} initializer + DequantizeLinear"
        self.folds.append(self._fold_record(node, index, kind, qtype, q, p, value))

    def _fold_fake_quantized(self, index: int, dq: Any, q_index: int, q: Any) -> None:
        """A float constant through Q -> DQ (fake-quantised weights): the values the DQ puts out."""
        ix = self.ix
        try:
            qp = _params(ix, q, q_index, None)
            dp = _params(ix, dq, index, None)
        except ValueError as exc:
            self._refuse(dq, index, str(exc))
            return
        if qp.qtype in _REFUSED_TYPES:
            self._refuse(q, q_index, f"{_REFUSED_TYPES[qp.qtype]} weights: implicit TensorRT calibrates INT8 only")
            return
        if qp.qtype not in _QRANGE or qp.block_size:
            self._refuse(q, q_index, f"{qp.qtype.lower()} quantisation{' with blocks' if qp.block_size else ''} of "
                         f"a weight is not converted")
            return
        dp.qtype = qp.qtype
        w = ix.value(q.input[0])
        codes = _quantize(w, qp)
        value = _dequantize(codes, dp)
        ix.folded[dq.output[0]] = value
        self.removed.update((index, q_index))
        fold = self._fold_record(dq, index, "float + QuantizeLinear -> DequantizeLinear", qp.qtype, codes, dp, value)
        _compare(fold, value, w.astype(value.dtype), "model", q.input[0])
        self.folds.append(fold)

    def _fold_record(self, node: Any, index: int, kind: str, qtype: str, codes: np.ndarray, p: _Params,
                     value: np.ndarray) -> WeightFold:
        axis = None if p.scale.size == 1 else p.axis % max(codes.ndim, 1)
        nonzero = 0 if p.zero_point is None else int(np.count_nonzero(p.zero_point))
        below = None
        if qtype == "INT8" and codes.size:
            zp = 0 if p.zero_point is None else _broadcast(p.zero_point.astype(np.int64), codes.ndim, p.axis)
            mag = np.abs(codes.astype(np.int64) - zp)
            peaks = mag.reshape(-1) if axis is None else np.moveaxis(mag, axis, 0).reshape(mag.shape[axis], -1)
            peaks = peaks.max(axis=-1) if axis is not None else np.asarray([peaks.max()])
            below = int(np.count_nonzero((peaks > 0) & (peaks < 127)))
        consumers = [(_label(n, i)) for i, n in self.ix.consumers.get(node.output[0], [])]
        return WeightFold(node.output[0], _label(node, index), kind, qtype.lower(), axis, tuple(value.shape),
                          consumers, nonzero, below)

    # ------------------------------------------------------------------ activations
    def _activation_pair(self, index: int, dq: Any, q_index: int, q: Any) -> None:
        ix = self.ix
        try:
            qp = _params(ix, q, q_index, None)
            dp = _params(ix, dq, index, qp.qtype)
        except ValueError as exc:
            self._refuse(q, q_index, str(exc))
            return
        if qp.qtype in _REFUSED_TYPES:
            self._refuse(q, q_index, f"{_REFUSED_TYPES[qp.qtype]} activations: implicit TensorRT quantises "
                         "activations to int8 only")
            return
        if qp.qtype not in _QRANGE:
            self._refuse(q, q_index, f"quantises to {qp.qtype.lower()}, not int8 or uint8")
            return
        if qp.block_size:
            self._refuse(q, q_index, f"blocked quantisation (block_size {qp.block_size}) of an activation")
            return
        scales = qp.scale.reshape(-1)
        if scales.size != 1 and not np.all(scales.view(_uint_view(scales)) == scales[:1].view(_uint_view(scales))):
            self._refuse(q, q_index, f"per-channel activation scales ({scales.size} along axis {qp.axis}): a "
                         "TensorRT cache holds one scale per tensor")
            return
        zps = np.zeros(1, np.int64) if qp.zero_point is None else qp.zero_point.reshape(-1).astype(np.int64)
        if zps.size != 1 and np.any(zps != zps[0]):
            self._refuse(q, q_index, "per-channel activation zero points: a TensorRT cache holds one scale per tensor")
            return
        if dp.scale.reshape(-1)[:1].astype(np.float32).view(np.uint32) != scales[:1].astype(np.float32).view(np.uint32):
            self._refuse(dq, index, f"its scale ({float(dp.scale.reshape(-1)[0]):.6g}) differs from its "
                         f"QuantizeLinear's ({float(scales[0]):.6g}): a rescaling implicit TensorRT cannot express")
            return
        dzp = 0 if dp.zero_point is None else int(dp.zero_point.reshape(-1)[0])
        if dzp != int(zps[0]):
            self._refuse(dq, index, f"its zero point ({dzp}) differs from its QuantizeLinear's ({int(zps[0])})")
            return
        scale = np.float32(scales[0])
        if not (np.isfinite(scale) and scale > 0):
            self._refuse(q, q_index, f"scale {float(scale)!r} is not a positive finite number")
            return
        source = self.resolve(q.input[0])
        self.removed.update((index, q_index))
        self.alias[dq.output[0]] = source
        if q_index in self.written:  # one QuantizeLinear read by several DequantizeLinears: one pair
            return
        zp = int(zps[0])
        dtype = qp.qtype.lower()
        own = PairScale(source, _label(q, q_index), float32_hex(scale), dtype, zp, _scale_dtype(qp.scale))
        written = scale
        if dtype != "int8" or zp != 0:
            what = "uint8 activation" if dtype == "uint8" else f"non-zero zero point ({zp})"
            if not self.allow_asymmetric:
                self._refuse(q, q_index, f"{what} on {source!r}: implicit TensorRT quantises activations "
                             "symmetrically (int8, zero point 0). Hint: --allow-asymmetric writes the symmetric range "
                             "covering it and reports the resolution that costs")
                return
            written = self._symmetric(own, scale, zp, dtype)
        self.written[q_index] = written
        self.pairs.setdefault(source, []).append(_Pair(own.node, written, own))

    def _symmetric(self, own: PairScale, scale: np.float32, zp: int, dtype: str) -> np.float32:
        qmin, qmax = _QRANGE[dtype.upper()]
        lo, hi = (qmin - zp) * float(scale), (qmax - zp) * float(scale)
        amax = max(-lo, hi)
        sym = np.float32(np.float32(amax) / np.float32(127.0))
        while float(sym) * 127.0 < amax:  # round up: the symmetric range must cover the pair's
            sym = np.nextafter(sym, np.float32(np.inf))
        self.asymmetric.append(AsymmetricConversion(own.tensor, own.node, dtype, zp, float(scale), lo, hi, float(sym)))
        return np.float32(sym)

    def _check_q_consumers(self, index: int, node: Any) -> None:
        out = node.output[0]
        readers = self.ix.consumers.get(out, [])
        bad = [n for _, n in readers if not _is_dq(n)]
        if out in self.ix.outputs:
            self._refuse(node, index, f"its int8 output {out!r} is a graph output: implicit TensorRT has float I/O")
        elif bad:
            self._refuse(node, index, f"its int8 output is read by {bad[0].op_type} {bad[0].name or ''}".rstrip()
                         + ", not by a DequantizeLinear")
        elif not readers:
            self.removed.add(index)  # a dangling Q: nothing reads it


def _uint_view(values: np.ndarray) -> type:
    return {2: np.uint16, 4: np.uint32, 8: np.uint64}[values.dtype.itemsize]


def _has_qdq(node: Any) -> bool:
    for a in node.attribute:
        graphs = [a.g] if a.type == a.GRAPH else list(a.graphs) if a.type == a.GRAPHS else []
        for sub in graphs:
            if any(_is_q(n) or _is_dq(n) or _has_qdq(n) for n in sub.node):
                return True
    return False


def _compare(fold: WeightFold, value: np.ndarray, original: np.ndarray, where: str, name: str) -> None:
    if original.shape != value.shape:
        return
    diff = np.abs(value.astype(np.float64) - original.astype(np.float64))
    fold.original, fold.original_name = where, name
    fold.changed = int(np.count_nonzero(value != original))
    fold.max_abs_diff = float(diff.max()) if diff.size else 0.0
    fold.max_abs_original = float(np.max(np.abs(original))) if original.size else 0.0


# ---------------------------------------------------------------------------------------------- the plain graph
def _rewrite(model: Any, conv: _Converter) -> dict[str, str]:
    """Remove the converted Q/DQ nodes in place, read each activation through its float tensor, add the folded
    constants; returns {source tensor: its name in the plain model}."""
    from onnx import helper, numpy_helper

    graph = model.graph
    ix = conv.ix
    outputs = set(ix.outputs)
    members: dict[str, list[str]] = {}
    for alias in conv.alias:
        members.setdefault(conv.resolve(alias), []).append(alias)
    final: dict[str, str] = {}
    rename: dict[str, str] = {}
    identities: list[Any] = []
    for source, aliases in members.items():
        out_aliases = [a for a in aliases if a in outputs]
        name = source
        fixed = source in ix.inputs or source in outputs or ix.is_constant(source)
        if out_aliases and not fixed:
            name = out_aliases.pop(0)  # the graph output keeps its name: the tensor is renamed to it
            rename[source] = name
        for a in aliases:
            rename.setdefault(a, name)
        for a in out_aliases:
            identities.append(helper.make_node("Identity", [name], [a], name=f"{a}_Identity"))
        final[source] = name
    kept = []
    for index, node in enumerate(graph.node):
        if index in conv.removed:
            continue
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
        for j, name in enumerate(node.output):
            if name in rename:
                node.output[j] = rename[name]
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept + identities)
    read = {n for node in graph.node for n in node.input}
    for name, value in ix.folded.items():
        if name in read or name in outputs:
            graph.initializer.append(numpy_helper.from_array(value, name))
            if model.ir_version < 4:
                graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                                 value.shape))
    drop_unused_constants(graph)
    live = {n for node in graph.node for n in list(node.input) + list(node.output)}
    infos = [vi for vi in graph.value_info if vi.name in live and vi.name not in rename]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return final


# ---------------------------------------------------------------------------------------------- scales
def _direct_scales(conv: _Converter, final: Mapping[str, str]) -> tuple[dict[str, CacheScale], list[ScaleConflict],
                                                                         list[PairScale]]:
    entries: dict[str, CacheScale] = {}
    conflicts: list[ScaleConflict] = []
    pairs: list[PairScale] = []
    for source, found in conv.pairs.items():
        name = final.get(source, source)
        pairs.extend(PairScale(name, p.own.node, p.own.scale_hex, p.own.dtype, p.own.zero_point, p.own.scale_dtype)
                     for p in found)
        distinct: dict[str, list[_Pair]] = {}
        for p in found:
            distinct.setdefault(float32_hex(p.scale), []).append(p)
        top = max(found, key=lambda p: float(p.scale))
        if len(distinct) > 1:
            conflicts.append(ScaleConflict(name, tuple((float32_hex(p.scale), p.node) for p in found),
                                           float32_hex(top.scale)))
        nodes = ", ".join(p.node for p in found[:3]) + (", ..." if len(found) > 3 else "")
        detail = f"{'pair' if len(found) == 1 else f'{len(found)} pairs'}: {nodes}"
        if len(distinct) > 1:
            detail += " (CONFLICT: the largest)"
        entries[name] = CacheScale(name, float(top.scale), "pair", detail)
    return entries, conflicts, pairs


def _recorded_stale(conv: _Converter, recorded: RecordedScales) -> str:
    """Why the pairs contradict the scales `quantize` recorded ("" when every pair holds its recorded scale)."""
    for source, found in conv.pairs.items():
        for p in found:
            want = recorded.pairs.get(source)
            if want is None:
                return f"the pair {p.node} on {source!r} is not one quantize placed"
            if p.own.dtype != "int8" or p.own.zero_point != 0:
                return f"the pair {p.node} on {source!r} is asymmetric"
            mine = p.own.scale_hex
            if mine != want:
                narrowed = np.float32(hex_to_scale(want)).astype(p.own.scale_dtype if p.own.scale_dtype in
                                                                   ("float16", "bfloat16") else np.float32)
                if float32_hex(np.float32(narrowed)) != mine:
                    return f"the pair {p.node} on {source!r} holds {mine}, the record says {want}"
    return ""


def _restore_recorded(entries: dict[str, CacheScale], recorded: RecordedScales, final: Mapping[str, str]) -> None:
    """Write every recorded scale under the tensor's name in the plain model, over what the pairs gave."""
    for source, hx in recorded.scales.items():
        name = final.get(source, source)
        scale = hex_to_scale(hx)
        pair = entries.get(name)
        given = {"cache": "the cache's scale", "amax": "the calibrated scale"}.get(recorded.source, "the scale given")
        detail = f"recorded by quantize ({SCALES_METADATA_KEY}): {given}"
        if pair is not None and pair.origin == "pair" and pair.hex != hx:
            detail += f"; its pair holds {pair.hex} ({pair.detail})"
        elif pair is not None and pair.origin == "pair":
            detail += f", also held by its {pair.detail}"
        entries[name] = CacheScale(name, scale, "recorded", detail)


def _propagate(model: Any, entries: dict[str, CacheScale]) -> None:
    """Give tensors without a scale a neighbour's, across pass-through ops and ties (both ways) and Concat outputs
    (the largest input), until nothing changes. A pair's own scale is never replaced."""
    nodes = list(model.graph.node)
    constants = {t.name for t in model.graph.initializer} | {n.output[0] for n in nodes if n.op_type == "Constant"}

    def label(node: Any) -> str:
        return f"{node.op_type} {node.name!r}" if node.name else node.op_type

    def single(node: Any) -> tuple[str, str] | None:
        if node.op_type not in PASS_THROUGH_OPS + TIED_OPS or not node.input or not node.output or not node.input[0]:
            return None
        if node.op_type == "Pad" and not _pads_with_zero(node, constants, model):
            return None
        return node.input[0], node.output[0]  # MaxPool's optional second output holds indices, not values

    changed = True
    while changed:
        changed = False
        for node in nodes:  # forward, in graph order
            io = single(node)
            if io is not None and io[0] in entries and io[1] not in entries:
                src = entries[io[0]]
                kind = "tie" if node.op_type in TIED_OPS else "pass-through"
                entries[io[1]] = CacheScale(io[1], src.scale, kind, f"{kind}: from {io[0]!r} through {label(node)}")
                changed = True
            elif node.op_type == "Concat" and node.output and node.output[0] not in entries:
                ins = [t for t in node.input if t and t not in constants]
                if ins and all(t in entries for t in ins):
                    top = max(ins, key=lambda t: entries[t].scale)
                    same = len({entries[t].hex for t in ins}) == 1
                    how = "the scale all its inputs share" if same else f"the largest input scale, {top!r}'s"
                    entries[node.output[0]] = CacheScale(node.output[0], entries[top].scale, "concat",
                                                         f"concat: {label(node)} output takes {how}")
                    changed = True
        for node in reversed(nodes):  # backward
            io = single(node)
            if io is not None and io[1] in entries and io[0] not in entries and io[0] not in constants:
                dst = entries[io[1]]
                kind = "tie" if node.op_type in TIED_OPS else "pass-through"
                entries[io[0]] = CacheScale(io[0], dst.scale, kind, f"{kind}: from {io[1]!r} back through {label(node)}")
                changed = True


def _pads_with_zero(node: Any, constants: set[str], model: Any) -> bool:
    mode = node_attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        return True  # reflect / edge copy input values
    if len(node.input) > 2 and node.input[2]:
        from onnx import numpy_helper

        inits = {t.name: t for t in model.graph.initializer}
        if node.input[2] not in inits:
            return False
        return bool(np.all(numpy_helper.to_array(inits[node.input[2]]) == 0))
    return float(node_attr(node, "value", 0.0)) == 0.0


def _missing(model: Any, calibrated: list[str], entries: Mapping[str, CacheScale]) -> list[MissingScale]:
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    out = []
    for t in calibrated:
        if t in entries:
            continue
        node = producer.get(t)
        op = node.op_type if node is not None else "input"
        readers = consumers.get(t, [])
        note = "falls back to higher precision"
        if (op in _PRODUCERS_THAT_FUSE and len(readers) == 1 and readers[0].op_type in FUSED_ACTIVATIONS
                and readers[0].output and readers[0].output[0] in entries):
            note = (f"read only by {readers[0].op_type} {readers[0].name or readers[0].output[0]!r}, which has a scale: "
                    "needs none if TensorRT fuses the two")
        elif not readers:
            note = "a graph output: runs in higher precision at the end of the network"
        out.append(MissingScale(t, op, note))
    return out


# ---------------------------------------------------------------------------------------------- entry point
def qdq_to_cache(
    model: Any,
    *,
    trt_version: str = DEFAULT_TRT_VERSION,
    algorithm: str = "EntropyCalibration2",
    allow_asymmetric: bool = False,
    propagate: bool = True,
    original: Any = None,
    check: bool = True,
    recorded: bool = True,
) -> QdqConversion:
    """The plain model, the TensorRT cache and the report for a Q/DQ `model` (a path or a ModelProto, unchanged).

    `trt_version` and `algorithm` make the header TensorRT reads the cache under (EntropyCalibration2: DLA's
    calibrator). `allow_asymmetric` turns uint8 and zero-point pairs into the symmetric range covering them instead
    of refusing them. `propagate=False` writes no scales across pass-through ops, ties and Concats. `recorded=False`
    ignores the scales `quantize_model` recorded in the model (`record_scales`), so only what the pairs hold and what
    propagates from them is written. `original` (the FP32 model) lets the
    report compare every dequantised weight with its float original, matched by consumer node name and input slot.
    Raises `UnsupportedQdqError` listing every node implicit TensorRT cannot express.
    """
    import onnx

    from ..ort.model import calibrated_tensors, load_model

    make_header(algorithm, trt_version)  # a bad version or algorithm fails before any work
    source = load_model(model)
    plain = onnx.ModelProto()
    plain.CopyFrom(source)
    conv = _Converter(plain, allow_asymmetric)
    conv.run()
    if conv.refusals:
        raise UnsupportedQdqError(conv.refusals)
    if not conv.pairs and not conv.folds:
        raise ModelError("no QuantizeLinear/DequantizeLinear pair in the model: nothing to convert. Hint: give the "
                         "Q/DQ model (quantize's output, a ModelOpt or QAT export), not the float one")
    removed = len(conv.removed)
    final = _rewrite(plain, conv)
    entries, conflicts, pairs = _direct_scales(conv, final)
    record, unreadable = read_recorded_scales(source)
    _drop_record(plain)
    record_note = unreadable
    if record is not None and recorded:
        record_note = _recorded_stale(conv, record)
        if not record_note:
            _restore_recorded(entries, record, final)
            record_note = f"used: {len(record.scales)} scale(s) as quantize recorded them"
        else:
            record_note = f"ignored: {record_note} (the model was changed after quantize)"
            log.warning("the scales quantize recorded in %s are %s", SCALES_METADATA_KEY, record_note)
    elif record is not None:
        record_note = "not used (recorded=False)"
    if propagate:
        _propagate(plain, entries)
    calibrated = calibrated_tensors(plain)
    order = {t: i for i, t in enumerate(calibrated)}
    ordered = sorted(entries.values(), key=lambda e: (order.get(e.tensor, len(order)), e.tensor))
    bad = [e.tensor for e in ordered if "\n" in e.tensor or "\r" in e.tensor or e.tensor.endswith(" ")]
    if bad:
        raise ModelError(f"tensor name {bad[0]!r} cannot be written on one line of a TensorRT cache")
    if original is not None:
        _compare_originals(conv.folds, plain, load_model(original))
    checker = _check(plain, source) if check else "not run"
    cache = CalibrationCache(make_header(algorithm, trt_version), [CacheEntry(e.tensor, e.hex) for e in ordered])
    asymmetric = [replace(a, tensor=final.get(a.tensor, a.tensor)) for a in conv.asymmetric]
    report = QdqToCacheReport(
        header=cache.header, pairs=pairs, entries=ordered, conflicts=conflicts, asymmetric=asymmetric,
        weights=conv.folds, missing=_missing(plain, calibrated, entries), removed_nodes=removed,
        calibrated=len(calibrated), opset=onnx_opset(plain), propagate=propagate, checker=checker,
        recorded=record_note,
    )
    if conflicts:
        log.warning("%d tensor(s) have Q/DQ pairs with different scales; the largest was written: %s",
                    len(conflicts), ", ".join(c.tensor for c in conflicts[:5]))
    if asymmetric:
        worst = max(asymmetric, key=lambda a: a.bits_lost)
        log.warning("%d asymmetric pair(s) made symmetric; the worst, %s, loses %.2f bits of resolution",
                    len(asymmetric), worst.tensor, worst.bits_lost)
    return QdqConversion(plain, cache, report)


def _drop_record(model: Any) -> None:
    """The plain model keeps no `record_scales` record: its scales are in the cache now."""
    kept = [p for p in model.metadata_props if p.key != SCALES_METADATA_KEY]
    if len(kept) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def _compare_originals(folds: Iterable[WeightFold], plain: Any, original: Any) -> None:
    """Match each folded weight to the FP32 model's constant in the same slot of the same-named node."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    for n in original.graph.node:
        if n.op_type == "Constant" and n.output and constant_attr(n) is not None:
            inits[n.output[0]] = numpy_helper.to_array(constant_attr(n))
    slots = {(n.name, j): name for n in original.graph.node if n.name for j, name in enumerate(n.input)}
    values = {t.name: t for t in plain.graph.initializer}
    for fold in folds:
        if fold.original is not None or fold.name not in values:
            continue
        for node in plain.graph.node:
            if not node.name or fold.name not in node.input:
                continue
            ref = slots.get((node.name, list(node.input).index(fold.name)))
            if ref in inits:
                value = numpy_helper.to_array(values[fold.name])
                _compare(fold, value, inits[ref].astype(value.dtype, copy=False), "original", ref)
                break


def _check(plain: Any, qdq: Any) -> str:
    """onnx.checker (full) on the plain model; a failure the Q/DQ model already had is only noted."""
    import onnx

    from ..ort.model import over_proto_limit

    if over_proto_limit(plain):  # the checker serialises the model, which protobuf cannot over 2 GiB
        return "not run: the model is over protobuf's 2 GiB limit"
    try:
        onnx.checker.check_model(plain, full_check=True)
        return "passed"
    except Exception as exc:  # ValidationError or shape-inference errors
        try:
            onnx.checker.check_model(qdq, full_check=True)
        except Exception:
            log.warning("the Q/DQ model already fails onnx.checker; the plain model does too (%s)", exc)
            return f"failed, as the Q/DQ model does: {exc}"
        raise ModelError(f"the plain model fails onnx.checker, the Q/DQ model does not: {exc}") from None


# ---------------------------------------------------------------------------------------------- running it
def random_batches(model: Any, *, samples: int = 8, seed: int = 0) -> Any:
    """`samples` seeded random samples for the model's inputs (float N(0, 1), integers 0), as a BatchSource.

    A symbolic first dimension is the batch; any other symbolic dimension cannot be guessed (DataError).
    """
    from ..errors import DataError
    from ..ort.model import model_inputs
    from ..ort.data import from_arrays

    specs = model_inputs(model)
    rng = np.random.default_rng(seed)
    batch = next((s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)), None)
    count = samples if batch is None else -(-samples // batch) * batch
    arrays = {}
    for s in specs:
        if not s.shape or any(not isinstance(d, int) for d in s.shape[1:]):
            raise DataError(f"input {s.name!r} has shape {s.shape}: random inputs need a batch dimension and static "
                            "other dimensions. Hint: give --data")
        shape = (count, *s.shape[1:])
        if np.issubdtype(s.dtype, np.floating):
            arrays[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            arrays[s.name] = np.zeros(shape, dtype=s.dtype)
    return from_arrays(arrays, specs, batch_size=batch or samples)


def run_plain(model: Any, batches: Any, *, describe: str = "") -> dict[str, Any]:
    """Run the plain model once per batch in onnxruntime (optimisations off); the outputs' names and shapes."""
    from ..ort.model import load_model, model_inputs, ort_session
    from ..ort.data import iter_batches

    model = load_model(model)
    session = ort_session(model, optimize=False, role="the plain model")
    names = [o.name for o in session.get_outputs()]
    shapes: dict[str, list[int]] = {}
    count = 0
    for batch in iter_batches(batches, model_inputs(model)):
        try:
            values = session.run(names, batch)
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(f"the plain model fails in onnxruntime on batch {count}: {exc}") from None
        for n, v in zip(names, values):
            if not np.all(np.isfinite(v)) and np.issubdtype(np.asarray(v).dtype, np.floating):
                log.warning("the plain model's output %r holds NaN or Inf on batch %d", n, count)
            shapes[n] = list(np.shape(v))
        count += 1
    return {"inputs": describe or f"{count} batch(es)", "batches": count,
            "outputs": [{"name": n, "shape": shapes.get(n)} for n in names]}


def compare_with_original(plain: Any, original: Any, batches: Any, *, describe: str = "") -> dict[str, Any]:
    """FP32 original vs plain model on `batches`: per output, top-1 agreement (classifier outputs) and |diff|."""
    from ..ort.evaluate import evaluate

    result = evaluate(original, plain, batches, worst=0)
    return {"inputs": describe or f"{result.num_samples} samples", "num_samples": result.num_samples,
            "outputs": [o.to_json() for o in result.outputs]}
