"""Weight rounding in the float model: every quantizable weight becomes s * q, with q chosen on calibration data.

`round_weights` walks the Conv, ConvTranspose, Gemm and MatMul nodes with a constant float32 weight in graph order.
For each one it accumulates the second moments of the layer's input on the calibration batches, as the model with
every earlier layer already rounded produces it, against the float model's own input to that layer
(`core.rounding.LayerMoments`); fits the weights to the float model's output at that layer
(`reference_target`: this corrects the earlier layers' systematic weight error too) and rounds them GPTQ-style on
TensorRT's per-channel scale s = max|W| / 127 (`gptq_codes`), or to nearest. Given the activation thresholds the
model will be deployed with, the layer's own input is int8-quantised at its threshold on the fitted side, so the
codes also absorb the systematic part of that quantiser's error (its clipping); upstream activations stay float
(quantising them all made the fit chase sample-specific noise in the prototype). The layer's weight is then replaced by
s * q, each channel's largest element at +-127 s, so that TensorRT's implicit INT8 (8.6-10.x, calibrate and build the
rounded model) and `quantize` (Q/DQ for 11.x, or ModelOpt) take back exactly these codes.

Memory: the two models run segment by segment (a cut model of the nodes between two layers, in onnxruntime), and
only the tensors later nodes read are kept for every calibration batch, and only where they fit the activation
budget; a tensor too large to keep (a wide expansion before a depthwise convolution) is recomputed from the last
stored one instead. No bias is changed: measured on EfficientNet-Lite0, bias correction on top of this rounding
made the KL worse every time (docs/accuracy.md).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.rounding import (
    LayerMoments,
    channel_scales,
    conv_patches,
    dead_inputs,
    dequantized,
    gptq_codes,
    nearest_codes,
    output_error,
    pinned_elements,
    recovered_codes,
    reference_target,
)
from ..errors import DataError, ModelError
from ..ort.control_flow import CONTROL_FLOW_OPS
from ..ort.data import iter_batches
from ..ort.evaluate import fake_quantize
from ..ort.model import load_model, model_inputs, ort_session, tensor_info
from ..ort.runner import cut_model, graph_reads
from .graph import constant_attr, node_attr, node_label

__all__ = [
    "METHODS",
    "ROUNDED_METADATA_KEY",
    "RoundableLayer",
    "LayerRounding",
    "RoundingReport",
    "roundable_layers",
    "round_weights",
    "input_thresholds",
    "subsample_steps",
    "weight_codes",
]

log = logging.getLogger(__name__)

#: gptq: sequential rounding fitted to the float model's layer outputs; nearest: TensorRT's own rounding, written out.
METHODS = ("gptq", "nearest")
#: The `metadata_props` key a rounded model carries (what was done, and that its weights are exactly s * q).
ROUNDED_METADATA_KEY = "trt_calib.rounded_weights"
_ROUNDED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PATCH_BYTES = 64 << 20  # one patch matrix at a time stays under this


# ---------------------------------------------------------------------------------------------- layer geometry
@dataclass
class RoundableLayer:
    """A node whose constant weight is rounded, and how its weight maps onto grouped rows [G, R, K] whose K inputs
    are laid out like the patches `patches` cuts from its activation input."""

    index: int
    node: Any
    weight: str
    shape: tuple[int, ...]
    groups: int = 1

    @property
    def label(self) -> str:
        return node_label(self.node, self.index)

    @property
    def op(self) -> str:
        return str(self.node.op_type)

    def rows(self, w: np.ndarray) -> np.ndarray:
        """The weight as grouped rows [G, R, K], one row per output channel (the axis TensorRT scales)."""
        op, g = self.op, self.groups
        if op == "Conv":
            return w.reshape(g, w.shape[0] // g, -1)
        if op == "ConvTranspose":
            cin, cout_g = w.shape[0], w.shape[1]
            spatial = tuple(range(2, w.ndim))
            flipped = np.flip(w, axis=spatial).reshape(g, cin // g, cout_g, -1)  # [G, Cin/G, Cout/G, k]
            return flipped.transpose(0, 2, 1, 3).reshape(g, cout_g, -1)
        if op == "Gemm" and node_attr(self.node, "transB", 0):
            return w[None]
        return w.T[None]  # Gemm without transB, MatMul: [K, N]

    def weight_from_rows(self, rows: np.ndarray) -> np.ndarray:
        """The inverse of `rows`, in the weight's own layout."""
        op, g = self.op, self.groups
        if op == "Conv":
            return rows.reshape(self.shape)
        if op == "ConvTranspose":
            cin, cout_g = self.shape[0], self.shape[1]
            k = self.shape[2:]
            back = rows.reshape(g, cout_g, cin // g, -1).transpose(0, 2, 1, 3).reshape(cin, cout_g, *k)
            return np.flip(back, axis=tuple(range(2, len(self.shape)))).copy()
        if op == "Gemm" and node_attr(self.node, "transB", 0):
            return rows[0]
        return rows[0].T.copy()

    def positions(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The output map one sample of an input of `shape` gives (spatial dims); () for Gemm and MatMul, whose
        positions are rows (`rows_per_sample`)."""
        if self.op in ("Gemm", "MatMul"):
            return ()
        probe = self._conv_view(np.zeros((1, shape[1]) + tuple(shape[2:]), np.float32))
        nd = len(self.shape) - 2
        return tuple(int(d) for d in probe.shape[2 : 2 + nd])

    def rows_per_sample(self, shape: Sequence[int]) -> int:
        """Output positions per sample: the map's size, or the rows of a Gemm (1) or MatMul (all but the last dim)."""
        if self.op == "Gemm":
            return 1
        if self.op == "MatMul":
            return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        return int(np.prod(self.positions(shape)))

    def patches(self, x: np.ndarray, *, steps: Sequence[int] = (), first: int = 0) -> Iterator[np.ndarray]:
        """The layer's input patches [G, K, n] (n output positions), in chunks of samples that keep one patch
        matrix under a fixed size. `steps` (one per spatial dim; one for the rows of Gemm/MatMul) keep every step-th
        output position, at offsets that move with the sample index (`first` is the first sample's), so that samples
        together still cover every position."""
        steps = tuple(steps)
        if self.op in ("Gemm", "MatMul"):
            k = self.shape[0] if self.op == "MatMul" or not node_attr(self.node, "transB", 0) else self.shape[1]
            if self.op == "Gemm" and node_attr(self.node, "transA", 0):
                x = x.T
            flat = x.reshape(-1, k)
            step = steps[0] if steps else 1
            if step > 1:
                flat = flat[first % step :: step]
            chunk = max(1, _PATCH_BYTES // max(1, k * 4))
            for a in range(0, flat.shape[0], chunk):
                yield np.ascontiguousarray(flat[a : a + chunk].T, dtype=np.float32)[None]
            return
        if any(s > 1 for s in steps):  # a few positions per sample: gather them over samples into useful matrices
            parts: list[np.ndarray] = []
            size = 0
            for j in range(x.shape[0]):
                index, offsets = first + j, []
                for s in steps:  # mixed radix: consecutive samples take every offset combination in turn
                    offsets.append(index % s)
                    index //= s
                parts.append(self._conv_patches(x[j : j + 1], steps=steps, offsets=offsets))
                size += parts[-1].nbytes
                if size >= _PATCH_BYTES:
                    yield np.concatenate(parts, axis=-1)
                    parts, size = [], 0
            if parts:
                yield np.concatenate(parts, axis=-1)
            return
        per_sample = max(1, int(np.prod(x.shape[1:])) * int(np.prod(self.shape[2:])) * 4)
        chunk = max(1, _PATCH_BYTES // per_sample)
        for a in range(0, x.shape[0], chunk):
            yield self._conv_patches(x[a : a + chunk])

    def _conv_geometry(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...], tuple[int, ...],
                                                      tuple[int, ...]]:
        """(the input as the equivalent convolution sees it, kernel, strides, pads, dilations)."""
        nd = len(self.shape) - 2
        kernel = tuple(self.shape[2:])
        strides = tuple(node_attr(self.node, "strides", [1] * nd))
        dilations = tuple(node_attr(self.node, "dilations", [1] * nd))
        pads = tuple(node_attr(self.node, "pads", [0] * (2 * nd)))
        if self.op == "ConvTranspose":
            # the transposed convolution is a convolution of the stride-upsampled input with the flipped kernel
            out_pad = tuple(node_attr(self.node, "output_padding", [0] * nd))
            up = np.zeros(x.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides)), x.dtype)
            up[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
            edge = [d * (k - 1) for k, d in zip(kernel, dilations)]
            pads = tuple(e - p for e, p in zip(edge, pads[:nd])) + tuple(
                e - p + o for e, p, o in zip(edge, pads[nd:], out_pad))
            return up, kernel, (1,) * nd, pads, dilations
        return x, kernel, strides, _explicit_pads(self.node, x.shape[2:], kernel, strides, dilations, pads), dilations

    def _conv_view(self, x: np.ndarray) -> np.ndarray:
        x, kernel, strides, pads, dilations = self._conv_geometry(x)
        return conv_patches(x, kernel, strides, pads, dilations)

    def _conv_patches(self, x: np.ndarray, *, steps: Sequence[int] = (), offsets: Sequence[int] = ()) -> np.ndarray:
        g = self.groups
        nd = len(self.shape) - 2
        cin = x.shape[1]
        x, kernel, strides, pads, dilations = self._conv_geometry(x)
        if not offsets and all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
            b = x.shape[0]
            p = x.reshape(b, g, cin // g, -1).transpose(1, 2, 0, 3)
            return np.ascontiguousarray(p.reshape(g, cin // g, -1), dtype=np.float32)
        view = conv_patches(x, kernel, strides, pads, dilations)  # [B, C, *out, *k]
        if offsets:
            view = view[(slice(None), slice(None)) + tuple(slice(o, None, s) for o, s in zip(offsets, steps))]
        b, out = view.shape[0], view.shape[2 : 2 + nd]
        view = view.reshape((b, g, cin // g) + out + kernel)
        order = (1, 2) + tuple(range(3 + nd, 3 + 2 * nd)) + (0,) + tuple(range(3, 3 + nd))
        return np.ascontiguousarray(view.transpose(order), dtype=np.float32).reshape(g, -1, b * int(np.prod(out)))


def _explicit_pads(node: Any, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int], pads: Sequence[int]) -> tuple[int, ...]:
    """ONNX Conv pads with auto_pad resolved (SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start)."""
    mode = node_attr(node, "auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    nd = len(kernel)
    if mode in ("NOTSET", ""):
        return tuple(int(p) for p in pads)
    if mode == "VALID":
        return (0,) * (2 * nd)
    begins, ends = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return tuple(begins + ends)


def roundable_layers(model: Any) -> tuple[list[RoundableLayer], dict[str, str]]:
    """(the layers `round_weights` rounds, in graph order; node label -> why each other weighted node is not)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    produced = {o for n in graph.node for o in n.output}
    layers: list[RoundableLayer] = []
    skipped: dict[str, str] = {}
    seen: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in _ROUNDED_OPS:
            continue
        label = node_label(node, i)
        if len(node.input) < 2 or not node.input[0] or not node.input[1]:
            skipped[label] = "missing input"
            continue
        a, b = node.input[0], node.input[1]
        if a in inits or a in constants:
            skipped[label] = f"first input {a!r} is a constant"
            continue
        if b in inits:
            tensor = inits[b]
        elif b in constants and constant_attr(constants[b]) is not None:
            tensor = constant_attr(constants[b])
        else:
            skipped[label] = f"weight {b!r} is not a constant" if b in produced else f"weight {b!r} is a graph input"
            continue
        if b in seen:
            skipped[label] = f"weight {b!r} is shared with {seen[b]}, where it is rounded for that layer's inputs"
            continue
        w = numpy_helper.to_array(tensor)
        if w.dtype != np.float32:
            skipped[label] = f"weight {b!r} is {w.dtype}: only float32 weights hold s * q exactly"
            continue
        if not np.all(np.isfinite(w)):
            skipped[label] = f"weight {b!r} holds NaN or Inf"
            continue
        groups = 1
        if node.op_type in ("Conv", "ConvTranspose"):
            if w.ndim < 3:
                skipped[label] = f"weight {b!r} has rank {w.ndim}"
                continue
            groups = int(node_attr(node, "group", 1))
            if node.op_type == "ConvTranspose" and (node_attr(node, "output_shape", None) is not None
                                                    or node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
                skipped[label] = "ConvTranspose with output_shape or auto_pad (give explicit pads)"
                continue
            if node.op_type == "ConvTranspose" and w.shape[0] % groups:
                skipped[label] = f"weight {b!r} of shape {w.shape} does not split into {groups} groups"
                continue
        elif w.ndim != 2:
            skipped[label] = f"weight {b!r} has rank {w.ndim}: TensorRT scales it per tensor, not per channel"
            continue
        seen[b] = label
        layers.append(RoundableLayer(i, node, b, tuple(w.shape), groups))
    return layers, skipped


# ---------------------------------------------------------------------------------------------- running segments
class _Segments:
    """Runs a model node range by node range on the calibration batches, keeping per batch only the tensors a later
    node reads, and only while they fit the budget (else a later range starts again from the last kept tensors).

    Weights are read from the model when a range is built, so a weight replaced before its range runs is used.
    """

    def __init__(self, model: Any, batches: list[dict[str, np.ndarray]], types: dict[str, int],
                 threads: int | None, role: str) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.types = types
        self.threads = threads
        self.role = role
        # every tensor typed for `cut_model`: one shape inference could not type is fed as float, as it always was
        names = {i.name for i in model.graph.input} | {o for n in self.nodes for o in n.output if o}
        self.cut_types = {**{name: 1 for name in names}, **types}
        self.reads = graph_reads(model.graph)
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.last_use[name] = i
        self.start = 0
        self.kept: list[dict[str, np.ndarray]] = [dict(b) for b in batches]
        self.budget = 1 << 30  # bytes the kept tensors of all batches may take

    def segment(self, stop: int, outputs: tuple[str, ...]) -> tuple[Any, list[str]]:
        """(an onnxruntime session over the nodes start..stop-1 returning `outputs`, the inputs it must be fed)."""
        cut, _ = cut_model(self.model, range(self.start, stop), list(outputs), types=self.cut_types, reads=self.reads)
        inputs = [vi.name for vi in cut.graph.input]
        return ort_session(cut, (), types=self.types, threads=self.threads, role=self.role), inputs

    def run_to(self, stop: int, want: str) -> "_Pass":
        """A pass over the batches that computes tensor `want` as the nodes before `stop` give it (`_Pass.batch`)."""
        return _Pass(self, stop, want)


class _Pass:
    """One pass of `_Segments` up to a node, batch by batch. Whether the tensors nodes >= `stop` read are kept is
    decided on the first batch (they must fit the budget for every batch); `finish` moves the start there."""

    def __init__(self, run: _Segments, stop: int, want: str) -> None:
        self.run, self.stop, self.want = run, stop, want
        self.session = None
        self.inputs: list[str] = []
        self.outputs: tuple[str, ...] = ()
        self.keep: bool | None = None
        produced = {o for n in run.nodes[run.start : stop] for o in n.output if o}
        if produced:
            # `want` may come from before the segment (kept, or a graph input): then it is read from the kept values
            self.outputs = tuple(sorted({o for o in produced if run.last_use.get(o, -1) >= stop}
                                        | ({want} & produced)))
            self.session, self.inputs = run.segment(stop, self.outputs)

    def batch(self, b: int) -> np.ndarray:
        run, stop = self.run, self.stop
        values = run.kept[b]
        if self.session is None:
            return values[self.want]
        try:
            got = self.session.run(list(self.outputs), {t: values[t] for t in self.inputs})
        except Exception as exc:
            raise ModelError(f"{run.role}: onnxruntime failed on calibration batch {b} "
                             f"(nodes {run.start}..{stop - 1}): {exc}") from None
        out = dict(zip(self.outputs, got))
        live = {k: v for k, v in values.items() if run.last_use.get(k, -1) >= stop}
        live.update({k: v for k, v in out.items() if run.last_use.get(k, -1) >= stop})
        if self.keep is None:
            self.keep = sum(v.nbytes for v in live.values()) * len(run.kept) <= run.budget
        if self.keep:
            run.kept[b] = live
        return out[self.want] if self.want in out else values[self.want]

    def finish(self) -> None:
        if self.keep:
            self.run.start = self.stop


# ---------------------------------------------------------------------------------------------- report
@dataclass
class LayerRounding:
    """What rounding did to one layer: codes moved from nearest, and its output error (mean square over output
    positions, summed over channels) against the float model's output at that layer: with float weights on the
    inputs the earlier rounded layers give (inherited), with nearest codes, and with the chosen codes."""

    node: str
    op: str
    weight: str
    channels: int
    inputs: int
    groups: int
    positions: int
    codes: int
    codes_moved: int
    max_move: int
    reference_power: float | None
    error_inherited: float | None
    error_nearest: float | None
    error_rounded: float | None
    live_inputs: int | None = None  # inputs (per group, the fewest) ever non-zero on the data
    input_amax: float | None = None  # the threshold its input was int8-quantised at for the fit (None: float)
    kept_float: bool = False  # its weights were left as they were (the error even rounded is above max_error)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def underdetermined(self) -> bool:
        """Fewer positions than live inputs: H is rank-deficient, the fit is not determined by the data and its
        error on the calibration data says nothing about other data."""
        return self.live_inputs is not None and 0 < self.positions < self.live_inputs

    @property
    def relative_nearest(self) -> float | None:
        return _ratio(self.error_nearest, self.reference_power)

    @property
    def relative_rounded(self) -> float | None:
        return _ratio(self.error_rounded, self.reference_power)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "op": self.op, "weight": self.weight, "channels": self.channels,
            "inputs": self.inputs, "groups": self.groups, "positions": self.positions, "codes": self.codes,
            "codes_moved": self.codes_moved, "max_move": self.max_move,
            "reference_power": _num(self.reference_power), "error_inherited": _num(self.error_inherited),
            "error_nearest": _num(self.error_nearest), "error_rounded": _num(self.error_rounded),
            "relative_error_nearest": _num(self.relative_nearest),
            "relative_error_rounded": _num(self.relative_rounded),
            "live_inputs": self.live_inputs, "underdetermined": self.underdetermined,
            "input_amax": _num(self.input_amax), "kept_float": self.kept_float,
            "seconds": round(self.seconds, 3), "notes": list(self.notes),
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def _db(ratio: float) -> str:
    return "-inf" if ratio == math.inf else ("inf" if ratio <= 0 else f"{-10 * math.log10(ratio):.1f}")


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


@dataclass
class RoundingReport:
    """Per layer what was done, what was skipped and why, and the check that TensorRT's rule gives back the codes."""

    method: str
    layers: list[LayerRounding]
    skipped: dict[str, str]
    samples: int
    batches: int
    damp: float
    activations: str = "float"  # what the layer inputs were for the fit: "float", or the thresholds' origin
    codes_checked: int = 0
    codes_not_recovered: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def codes_moved(self) -> int:
        return sum(r.codes_moved for r in self.layers)

    @property
    def underdetermined(self) -> list[LayerRounding]:
        return [r for r in self.layers if r.underdetermined]

    def to_json(self) -> dict[str, Any]:
        measured = [r for r in self.layers if r.error_nearest is not None]
        return {
            "method": self.method,
            "activations": self.activations,
            "damp": self.damp,
            "samples": self.samples,
            "batches": self.batches,
            "layers_rounded": sum(not r.kept_float for r in self.layers),
            "kept_float": [r.node for r in self.layers if r.kept_float],
            "codes": sum(r.codes for r in self.layers if not r.kept_float),
            "codes_moved": self.codes_moved,
            "codes_checked": self.codes_checked,
            "codes_not_recovered": self.codes_not_recovered,
            "error_nearest": _num(sum(r.error_nearest or 0.0 for r in measured)) if measured else None,
            "error_rounded": _num(sum(r.error_rounded or 0.0 for r in measured)) if measured else None,
            "underdetermined": [r.node for r in self.underdetermined],
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "layers": [r.to_json() for r in self.layers],
            "skipped": dict(self.skipped),
        }

    def table(self) -> str:
        """One line per layer, then the totals."""
        width = max([len(r.node) for r in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'op':<13}  {'codes':>8}  {'moved':>7}  {'max':>3}  {'inherited':>9}  "
                 f"{'nearest':>9}  {'rounded':>9}  {'time':>6}  notes"]
        for r in self.layers:
            inh = _ratio(r.error_inherited, r.reference_power)
            lines.append(
                f"{r.node:<{width}}  {r.op:<13}  {r.codes:>8}  {r.codes_moved:>7}  {r.max_move:>3}  {_fmt(inh):>9}  "
                f"{_fmt(r.relative_nearest):>9}  {_fmt(r.relative_rounded):>9}  {r.seconds:5.2f}s  "
                + "; ".join(r.notes))
        lines.append("")
        lines.append("errors: mean square of the layer's output against the float model's output at that layer, "
                     "relative to its power; inherited: float weights on the inputs the rounded layers before give"
                     + ("" if self.activations == "float" else f", int8-quantised at the {self.activations} thresholds"))
        for label, why in self.skipped.items():
            lines.append(f"not rounded: {label}: {why}")
        moved = self.codes_moved
        total = sum(r.codes for r in self.layers if not r.kept_float)
        kept = sum(r.kept_float for r in self.layers)
        lines.append(f"{len(self.layers) - kept} layers rounded ({self.method}"
                     + (f"; {kept} kept float, their INT8 error too large" if kept else "")
                     + f"), {moved} of {total} codes moved from nearest, "
                     f"on {self.samples} samples; TensorRT's per-channel rule gives back "
                     f"{self.codes_checked - self.codes_not_recovered} of {self.codes_checked} codes")
        return "\n".join(lines)


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM where Linux gives it (it starts afresh at exec, unlike ru_maxrss,
    which keeps the pages a child shared with its parent before exec), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- the walk
def weight_codes(model: Any, layers: Sequence[RoundableLayer]) -> dict[str, np.ndarray]:
    """weight name -> the codes TensorRT's per-channel rule takes from the weight now in `model` ([G, R, K] rows)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: constant_attr(n) for n in graph.node if n.op_type == "Constant" and n.output}
    out = {}
    for layer in layers:
        tensor = inits.get(layer.weight) or constants.get(layer.weight)
        out[layer.weight] = recovered_codes(layer.rows(numpy_helper.to_array(tensor)))
    return out


def input_thresholds(model: Any, batches: Iterable[Any], *, algorithm: str = "mse", trt_version: str | None = None,
                     percentile: float = 99.99, threads: int | None = None,
                     progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """amax of every roundable layer's input by `algorithm`, as `ort.collect.calibrate` gives them (TensorRT's pool
    ties included), from histograms of those tensors only: what `round_weights(activations=...)` takes."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..core.result import amax_from_histograms
    from ..ort.collect import collect_histograms, tie_scales

    model = load_model(model)
    layers, _ = roundable_layers(model)
    names = {layer.node.input[0] for layer in layers}
    pools = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type in ("MaxPool", "AveragePool") and n.input and n.output}
    names |= {pools[t] for t in names if t in pools}  # a pool output takes its input's scale
    histograms, _ = collect_histograms(model, batches, tensors=sorted(names), threads=threads, progress=progress)
    options = {"percentile": percentile} if algorithm == "percentile" else {}
    raw, _ = amax_from_histograms(histograms, algorithm, **options)
    tied, _ = tie_scales(model, raw, trt_version=trt_version or DEFAULT_TRT_VERSION)
    return tied


def _constants_to_initializers(model: Any, names: set[str]) -> None:
    """Constant nodes that produce a rounded weight become initializers of the same name (same values)."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in names and constant_attr(node) is not None:
            tensor = graph.initializer.add()
            tensor.CopyFrom(constant_attr(node))
            tensor.name = node.output[0]
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def round_weights(
    model: Any,
    batches: Iterable[Any] | None,
    *,
    method: str = "gptq",
    damp: float = 0.01,
    max_activation_mb: float = 1024,
    max_positions: int = 1 << 14,
    activations: Mapping[str, float] | None = None,
    activations_note: str = "given",
    max_error: float | None = 0.01,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> tuple[Any, RoundingReport]:
    """A copy of `model` whose every roundable weight is s * q (module docstring), and the report.

    `batches`: calibration batches (read once, kept in memory with the tensors the walk needs; None only for
    method "nearest", which then measures nothing). `damp`: the ridge of the fit and of GPTQ, as a share of the mean
    diagonal of each layer's H. `max_activation_mb`: the tensors kept between segments, both models together.
    `max_positions`: the output positions per layer the moments are taken over (subsampled beyond; each one costs
    K^2 multiply-adds per group, and a 112x112 map over 128 samples has 1.6 million).
    `activations`: amax per activation tensor (as a calibration gives them): each layer's input is then taken
    int8-quantised at its threshold on the side being fitted, so the codes also absorb the systematic part of that
    quantiser's error (its clipping), for the thresholds the model will be deployed with; None fits float inputs.
    `activations_note` names where those thresholds come from (the report and the model's metadata say it).
    `max_error`: a layer whose output error with the chosen codes is still above this share of its output power
    (0.01: below 20 dB) keeps its float weights and is reported (None rounds every layer).
    `progress(1)` after each layer; `total(n)` once with the number of layers.
    """
    import onnx
    from onnx import numpy_helper

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not (0 <= damp < math.inf):
        raise ValueError(f"damp must be a finite number >= 0, got {damp}")
    if method == "gptq" and batches is None:
        raise DataError("GPTQ rounding fits each layer on calibration data: give batches")
    started = time.perf_counter()
    source = load_model(model)
    reference = onnx.ModelProto()
    reference.CopyFrom(source)
    layers, skipped = roundable_layers(reference)
    labels = {layer.weight: layer.label for layer in layers}  # as the input model names them
    if any(n.op_type in CONTROL_FLOW_OPS for n in reference.graph.node) and batches is not None:
        raise ModelError("weight rounding runs the model in segments and cannot cut models with If/Loop/Scan "
                         "subgraphs. Hint: --method nearest needs no data and writes TensorRT's own rounding")
    _constants_to_initializers(reference, {layer.weight for layer in layers})
    work = onnx.ModelProto()
    work.CopyFrom(reference)
    layers, _ = roundable_layers(work)
    if total is not None:
        total(len(layers))
    work_inits = {t.name: t for t in work.graph.initializer}

    listed: list[dict[str, np.ndarray]] = []
    samples = 0
    if batches is not None:
        listed = list(iter_batches(batches, model_inputs(reference)))
        if not listed:
            raise DataError("no calibration batches to round on")
        samples = int(sum(next(iter(b.values())).shape[0] for b in listed))
    types = {name: elem for name, (elem, _) in tensor_info(reference).items()}
    budget = int(max_activation_mb * 2**20)
    ref_run = work_run = None
    if listed:
        ref_run = _Segments(reference, listed, types, threads, "the float model")
        work_run = _Segments(work, listed, types, threads, "the model being rounded")
    first_changed: int | None = None
    results: list[LayerRounding] = []
    chosen: dict[str, np.ndarray] = {}

    for layer in layers:
        t0 = time.perf_counter()
        w = numpy_helper.to_array(work_inits[layer.weight]).astype(np.float32)
        rows = layer.rows(w)
        scales = channel_scales(rows)
        near = nearest_codes(rows, scales)
        notes: list[str] = []
        moments = None
        stats: dict[str, Any] = dict(positions=0, reference_power=None, error_inherited=None, error_nearest=None,
                                     error_rounded=None, live_inputs=None, input_amax=None)
        if ref_run is not None and work_run is not None:
            same = first_changed is None or first_changed >= layer.index
            ref_run.budget = work_run.budget = budget // (1 if same else 2)
            amax = None if activations is None else activations.get(layer.node.input[0])
            moments = _layer_moments(layer, rows, ref_run, work_run, same, samples, max_positions, amax)
            stats["input_amax"] = amax if moments.with_reference and amax is not None and amax > 0 else None
        codes = near
        if moments is not None:
            h, c, power = moments.means()
            if method == "gptq":
                target = reference_target(rows, h, c, damp) if moments.with_reference else rows
                codes = gptq_codes(target, scales, h, pinned=pinned_elements(rows), damp=damp)
            live = ~dead_inputs(h)
            stats.update(
                positions=moments.n, reference_power=float(power.sum()), live_inputs=int(live.sum(axis=1).min()),
                **{key: float(output_error(rows, v, h, c, power).sum()) for key, v in (
                    ("error_inherited", rows), ("error_nearest", dequantized(near, scales)),
                    ("error_rounded", dequantized(codes, scales)))})
            if 0 < moments.n < stats["live_inputs"]:
                notes.append(f"underdetermined: {moments.n} positions for {stats['live_inputs']} live inputs, so the "
                             "error on the calibration data is optimistic")
            dead_groups = int((~live.any(axis=1)).sum())
            if dead_groups:
                notes.append(f"{dead_groups} group(s) never see a non-zero input: round to nearest")
        lossy = _ratio(stats["error_rounded"], stats["reference_power"])
        kept_float = max_error is not None and lossy is not None and lossy > max_error
        if kept_float:
            # Its INT8 output is poor whatever the codes; a rounded float model would carry that into the ranges
            # calibration sees (PP-OCRv4 rec: a conv's output max 3.4 -> 12, every activation scale after it 4-15x
            # too coarse). Left as it is, calibration sees float ranges and quantize rounds it to nearest.
            notes.append(f"kept float: its INT8 output error is {100 * lossy:.3g}% of its power even rounded "
                         f"({_db(lossy)} dB, above --max-error {100 * max_error:g}%); keep it out of INT8 "
                         "(sensitivity, tune) or accept nearest rounding at quantize time")
            codes = near
        else:
            new_weight = layer.weight_from_rows(dequantized(codes, scales)).astype(np.float32)
            if new_weight.tobytes() != w.tobytes():
                first_changed = layer.index if first_changed is None else min(first_changed, layer.index)
            work_inits[layer.weight].CopyFrom(numpy_helper.from_array(new_weight, layer.weight))
            chosen[layer.weight] = codes
        moved = np.abs(codes - near)
        results.append(LayerRounding(
            node=labels[layer.weight], op=layer.op, weight=layer.weight, channels=int(rows.shape[0] * rows.shape[1]),
            inputs=int(rows.shape[2]), groups=layer.groups, codes=int(codes.size),
            codes_moved=int(np.count_nonzero(moved)), max_move=int(moved.max()) if moved.size else 0,
            seconds=time.perf_counter() - t0, notes=notes, kept_float=kept_float, **stats))
        if progress is not None:
            progress(1)
    samples_batches = len(listed)
    del ref_run, work_run, listed

    output = onnx.ModelProto()
    output.CopyFrom(source)
    rounded_layers = [layer for layer in layers if layer.weight in chosen]
    _write_weights(output, {layer.weight: work_inits[layer.weight] for layer in rounded_layers})
    recovered = weight_codes(output, rounded_layers)
    checked = sum(c.size for c in chosen.values())
    missed = sum(int(np.count_nonzero(recovered[k] != c)) for k, c in chosen.items())
    if missed:
        raise ModelError(f"internal check failed: TensorRT's per-channel weight rule gives back other codes for "
                         f"{missed} of {checked} weights")
    fitted = "float" if activations is None else activations_note
    _mark(output, method, len(rounded_layers), samples, fitted)
    report = RoundingReport(method=method, layers=results, skipped=skipped, samples=samples, activations=fitted,
                            batches=samples_batches, damp=damp, codes_checked=checked, codes_not_recovered=missed,
                            seconds=time.perf_counter() - started, peak_rss_mb=_peak_rss_mb())
    for r in report.underdetermined:
        log.warning("%s: %s", r.node, next(n for n in r.notes if n.startswith("underdetermined")))
    for r in report.layers:
        if r.kept_float:
            log.warning("%s: %s", r.node, next(n for n in r.notes if n.startswith("kept float")))
    return output, report


def _write_weights(model: Any, tensors: dict[str, Any]) -> None:
    """Put each new weight where the model holds it: its initializer, or the value of the Constant node making it
    (the graph keeps its nodes, so node names and indices stay what they were)."""
    for tensor in model.graph.initializer:
        if tensor.name in tensors:
            tensor.CopyFrom(tensors[tensor.name])
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in tensors:
            value = constant_attr(node)
            if value is not None:
                name = value.name
                value.CopyFrom(tensors[node.output[0]])
                value.name = name


def _layer_moments(layer: RoundableLayer, rows: np.ndarray, ref_run: _Segments, work_run: _Segments, same: bool,
                   samples: int, max_positions: int, amax: float | None = None) -> LayerMoments:
    """The layer's input moments over the calibration batches: from the model being rounded (int8-quantised at
    `amax` when given), against the float model's own input to the layer (unless no layer before it has changed
    and no quantiser is applied: then the two are the same). Layers with more than `max_positions` output
    positions over all samples use every step-th position per spatial dim."""
    want = layer.node.input[0]
    quantised = amax is not None and math.isfinite(amax) and amax > 0
    moments = LayerMoments(rows, with_reference=not same or quantised)
    ref_pass = ref_run.run_to(layer.index, want)
    work_pass = None if same else work_run.run_to(layer.index, want)
    steps: tuple[int, ...] = ()
    first = 0
    for b in range(len(ref_run.kept)):
        xf = np.asarray(ref_pass.batch(b), np.float32)
        if b == 0:
            shape = layer.positions(xf.shape)
            if shape:
                steps = subsample_steps(shape, samples, max_positions)
            else:  # rows of a Gemm/MatMul: every step-th row over all samples
                steps = (max(1, math.ceil(layer.rows_per_sample(xf.shape) * samples / max(1, max_positions))),)
        xq = xf if work_pass is None else np.asarray(work_pass.batch(b), np.float32)
        if quantised:
            xq = fake_quantize(xq, float(amax))
        if not moments.with_reference:
            for p in layer.patches(xf, steps=steps, first=first):
                moments.add(p)
        else:
            for pq, pf in zip(layer.patches(xq, steps=steps, first=first),
                              layer.patches(xf, steps=steps, first=first)):
                moments.add(pq, pf)
        first += xf.shape[0] if xf.ndim else 1
    ref_pass.finish()
    if work_pass is None:  # nothing before this layer changed: the model being rounded is still the float model
        work_run.start, work_run.kept = ref_run.start, list(ref_run.kept)
    else:
        work_pass.finish()
    if moments.n == 0:
        raise DataError("no calibration batches to round on")
    return moments


def subsample_steps(shape: Sequence[int], samples: int, max_positions: int) -> tuple[int, ...]:
    """A step per dim of a sample's output map (`shape`) so that about `max_positions` positions remain over
    `samples` samples: the steps' product is the factor needed, no step larger than its dim (a 4 x 2100 map takes
    steps (4, 9), not (6, 6))."""
    shape = tuple(max(1, int(d)) for d in shape)
    factor = max(1.0, int(np.prod(shape)) * samples / max(1, max_positions))
    steps = [1] * len(shape)
    for left, d in enumerate(sorted(range(len(shape)), key=lambda i: shape[i])):
        step = min(shape[d], max(1, math.ceil(factor ** (1 / (len(shape) - left)))))
        steps[d] = step
        factor /= step
    return tuple(steps)


def _mark(model: Any, method: str, layers: int, samples: int, activations: str) -> None:
    inputs = "float layer inputs" if activations == "float" else f"layer inputs int8 at the {activations} thresholds"
    value = (f"{layers} weights are s * q per output channel ({method} codes on {samples} calibration samples, "
             f"{inputs}); "
             "TensorRT's per-channel max/127 rule and `trt-calib quantize` take back exactly these codes")
    for prop in model.metadata_props:
        if prop.key == ROUNDED_METADATA_KEY:
            prop.value = value
            return
    model.metadata_props.add(key=ROUNDED_METADATA_KEY, value=value)
