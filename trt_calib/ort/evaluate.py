"""What INT8 costs: the FP32 model and its Q/DQ version run with onnxruntime on the same held-out batches.

Both models run on onnxruntime's CPU provider with graph optimisation off (`ORT_DISABLE_ALL`), so each graph runs as
written: the Q/DQ model's QuantizeLinear/DequantizeLinear pairs round to the int8 grid in float32 and every Conv,
Gemm and MatMul computes in float on the dequantised values, which is the arithmetic TensorRT's int8 kernels
approximate (int8 products, int32 sums, one rescale). Any optimisation level would change what runs: from the basic
level up, onnxruntime's `WeightBiasQuantization` pass re-quantises float weights that sit between a
DequantizeLinear and a QuantizeLinear to int8 per tensor, and the extended level swaps in onnxruntime's own int8
kernels. Neither is what TensorRT runs.

Per output: top-1 accuracy (with labels), top-1 agreement with FP32 (all samples, and samples whose FP32 top-1/top-2
logit margin exceeds `margin`), mean KL(FP32 || INT8) of the softmax outputs, max and mean absolute error. An output
whose FP32 rows are already probabilities (non-negative, summing to 1) is used as is, and its margin is taken between
log-probabilities, which is the logit margin. A sequence output (N, T, C) of probability rows (or of logits, when
named in `sequence_outputs`) gets whole-sequence and per-position argmax agreement and per-position KL. Per
intermediate tensor present in both graphs under the same name: SQNR = 10 log10(sum x^2 / sum (x - x_int8)^2),
accumulated part by part. Per activation the Q/DQ model quantises: its own error at its Q/DQ scale on the FP32
activations (clipping and rounding, inputs left float), which names the tensors behind a lost output (`Verdict`).

Both models run through `Runner`s, each batch cut into equal parts so that both models' tensors for one part fit
`max_activation_mb` (the budget `calibrate` uses), and every part's activations are dropped before the next runs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core.signs import Quantizer
from ..errors import CalibrationError, DataError, ModelError

__all__ = [
    "cosine_error",
    "ORT_NOTE",
    "SESSION_MODE",
    "DEFAULT_MARGIN",
    "DEFAULT_ACTIVATION_MB",
    "PROBABILITY_FLOOR",
    "LOST_BELOW",
    "MIN_AGREEMENT",
    "MIN_FLIPS",
    "MIN_SEQUENCE_AGREEMENT",
    "VERDICT_EXIT",
    "TensorError",
    "ActivationQuantizer",
    "QuantizedTensor",
    "OutputMetrics",
    "Verdict",
    "VERDICT_RULE",
    "judge",
    "check_bars",
    "EvaluationReport",
    "evaluate",
    "comparable_tensors",
    "threshold_sqnr",
    "best_per_tensor",
    "activation_quantizers",
    "quantize_dequantize",
    "log_softmax",
    "looks_like_probabilities",
    "log_probabilities",
    "kl_divergence",
    "top2_margin",
    "sqnr_db",
    "fake_quantize",
    "class_rows",
    "sequence_rows",
    "sum_squares",
    "sum_sq_diff",
    "output_batch_axes",
    "batch_axis",
    "batch_first",
    "batch_samples",
    "take_samples",
]

log = logging.getLogger(__name__)

ORT_NOTE = (
    "onnxruntime's int8 arithmetic approximates TensorRT's, it does not reproduce it: here the Q/DQ graph runs as "
    "written (int8 rounding emulated in float32), while TensorRT fuses layers, multiplies in int8, accumulates in "
    "int32 and picks its own kernels. Expect a TensorRT engine's figures to differ somewhat; build it and measure "
    "to be sure."
)
SESSION_MODE = (
    "onnxruntime CPU, graph optimisation off (ORT_DISABLE_ALL): both graphs run as written, Q/DQ emulated in float32 "
    "(no WeightBiasQuantization re-quantisation, no onnxruntime int8 kernels)"
)
DEFAULT_MARGIN = 1.0
#: Activation memory (MB) both models' tensors of one part may take; the default of `calibrate`'s budget.
DEFAULT_ACTIVATION_MB = 256.0
# An INT8 probability rounded to 0 where FP32 has mass would make KL infinite; it is floored here instead, so it
# costs p * log(p / 1e-12) (about 28 p nats).
PROBABILITY_FLOOR = 1e-12
#: The verdict: an output whose share of FP32 decisions INT8 keeps (`OutputMetrics.decisions`) is below this has
#: lost most of them.
LOST_BELOW = 0.5
#: The verdict's default bar for a classifier output: it is degraded when it keeps fewer than this share of the top-1
#: classes of the samples with a clear FP32 winner (top-1/top-2 margin above the report's margin) and at least
#: `MIN_FLIPS` of them change. Those flips are errors, not coin tosses: on EfficientNet-Lite0's 102 clear-winner
#: held-out crops, healthy INT8 (minmax, mse, percentile, bias correction, onnxruntime's MinMax) keeps 97.1-100%,
#: TensorRT's entropy2, which clips five ReLU6 outputs hard, 95.1% (docs/accuracy.md).
MIN_AGREEMENT = 0.97
#: Fewer changed clear-winner samples than this are not taken for a degradation (chance, on a small set).
MIN_FLIPS = 3
#: The verdict's default bar for a sequence output: it is degraded when fewer than this share of the samples keep
#: their whole argmax sequence (an OCR line whose argmax changes anywhere may read differently).
MIN_SEQUENCE_AGREEMENT = 0.5
#: How many of the worst-quantised tensors the verdict names.
SUSPECTS = 3
_PROB_ATOL = 1e-3  # rows summing to 1 within this (and non-negative) are taken as probabilities
_BLOCK = 1 << 20


# ---------------------------------------------------------------------------------------------- metrics
def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log softmax over the last axis, in float64 (stable: the row max is subtracted first)."""
    x = np.asarray(x, dtype=np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def looks_like_probabilities(x: np.ndarray, *, atol: float = _PROB_ATOL) -> bool:
    """True when every row (last axis) is non-negative and sums to 1 within `atol`: a softmax output already."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x < 0):
        return False
    return bool(np.all(np.abs(x.sum(axis=-1) - 1.0) <= atol))


def log_probabilities(x: np.ndarray, kind: str) -> np.ndarray:
    """Row-wise log-probabilities: log softmax of logits, or the log of probability rows (renormalised, floored)."""
    if kind == "logits":
        return log_softmax(x)
    if kind != "probabilities":
        raise ValueError(f"kind must be 'logits' or 'probabilities', got {kind!r}")
    p = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    total = p.sum(axis=-1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[-1]), where=total > 0)
    return np.log(np.maximum(p, PROBABILITY_FLOOR))


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row from log-probabilities, in nats; terms where P is 0 contribute 0."""
    log_p = np.asarray(log_p, dtype=np.float64)
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - np.asarray(log_q, dtype=np.float64)), 0.0)
    return terms.sum(axis=-1)


def top2_margin(x: np.ndarray) -> np.ndarray:
    """Per row, the largest value minus the second largest (for log-probabilities: the top-1/top-2 logit margin)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < 2:
        return np.full(x.shape[:-1], np.inf)
    top = np.partition(x, x.shape[-1] - 2, axis=-1)[..., -2:]
    return top[..., 1] - top[..., 0]


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): +inf for a noiseless tensor, nan for an all-zero one that stays zero."""
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return float("nan")
    if noise == 0.0:
        return float("inf") if signal > 0 else float("nan")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def fake_quantize(x: np.ndarray, amax: float) -> np.ndarray:
    """Int8 quantise-dequantise at threshold `amax` (zero point 0) in float32, as QuantizeLinear/DequantizeLinear do.

    scale = amax / 127; q = clip(round_half_even(x / scale), -128, 127); returns q * scale. ONNX saturates to the
    full int8 range, so -amax - scale is still representable. amax 0 maps everything to 0.
    """
    x = np.asarray(x, dtype=np.float32)
    scale = np.float32(np.float32(amax) / np.float32(127.0))
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"amax must be finite and >= 0, got {amax!r}")
    if scale == 0:
        return np.zeros_like(x)
    q = np.clip(np.rint(x / scale), -128.0, 127.0)
    return (q * scale).astype(np.float32, copy=False)


def sum_squares(a: np.ndarray) -> float:
    """sum(a**2) accumulated in float64, block by block so a big float32 tensor is never copied whole."""
    flat = a.reshape(-1)
    total = 0.0
    for s in range(0, flat.size, _BLOCK):
        block = flat[s : s + _BLOCK]
        total += float(np.einsum("i,i->", block, block, dtype=np.float64))
    return total


def sum_sq_diff(a: np.ndarray, b: np.ndarray) -> float:
    """sum((a - b)**2) accumulated in float64 (the difference itself is taken in the tensors' dtype)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for s in range(0, fa.size, _BLOCK):
        d = fa[s : s + _BLOCK] - fb[s : s + _BLOCK]
        total += float(np.einsum("i,i->", d, d, dtype=np.float64))
    return total


def cosine_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cos(x_i, y_i) per sample (the batch dim first): 0 when both are zero, 1 when only one is.

    Computed as |x/|x| - y/|y||^2 / 2, which equals 1 - cos but keeps its precision for nearly equal outputs
    (1 - x.y/(|x||y|) cancels to rounding noise there) and is exactly 0 for equal ones.
    """
    n = x.shape[0] if x.ndim else 1
    a = np.asarray(x, np.float64).reshape(n, -1)
    b = np.asarray(y, np.float64).reshape(n, -1)
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    ua = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    ub = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    half = 0.5 * np.sum((ua - ub) ** 2, axis=1)
    one_zero = (na[:, 0] > 0) != (nb[:, 0] > 0)
    return np.where(one_zero, 1.0, half)


def quantize_dequantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear in float32, as ONNX defines them for a per-tensor scale:
    q = clip(round_half_even(x / scale) + zero_point, qmin, qmax); returns (q - zero_point) * scale."""
    x = np.asarray(x, dtype=np.float32)
    s = np.float32(scale)
    q = np.clip(np.rint(x / s) + np.float32(zero_point), np.float32(qmin), np.float32(qmax))
    return ((q - np.float32(zero_point)) * s).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ActivationQuantizer(Quantizer):
    """The per-tensor QuantizeLinear a Q/DQ model applies to one activation (`core.signs.Quantizer`'s grid): values
    outside [lo, hi] are clipped. `name` is the tensor; `body` says where it sits when not in the main graph
    ("then_branch of If 'x'")."""

    name: str = ""
    body: str = ""

    @property
    def symmetric(self) -> bool:
        """int8 with zero point 0, as TensorRT's Q/DQ take it ([-128, 127]: hi is the amax)."""
        return self.zero_point == 0 and self.qmin == -128 and self.qmax == 127

    def clip_text(self) -> str:
        """'clipped at 0.053' (symmetric int8: the amax, scale x 127) or 'clipped to [lo, hi]'."""
        return f"clipped at {self.hi:.3g}" if self.symmetric else f"clipped to [{self.lo:.3g}, {self.hi:.3g}]"


def _constant_arrays(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of a graph, by name (small ones only: scales and zero points)."""
    from onnx import numpy_helper

    values = {t.name: t for t in graph.initializer if int(np.prod(t.dims, dtype=np.int64)) <= 1}
    out = {name: numpy_helper.to_array(t) for name, t in values.items()}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and int(np.prod(attr.t.dims, dtype=np.int64)) <= 1:
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _scopes(graph: Any, where: str = "", weights: frozenset[str] = frozenset(),
            consts: Mapping[str, np.ndarray] | None = None
            ) -> Iterable[tuple[Any, str, frozenset[str], dict[str, np.ndarray]]]:
    """(graph, where, weights, small constants) for the main graph and every subgraph inside it, outer first: a
    branch sees the initializers and constants of the graphs around it (its scales may be the main graph's)."""
    from onnx import AttributeProto

    weights = weights | {t.name for t in graph.initializer}
    visible = {**(consts or {}), **_constant_arrays(graph)}
    yield graph, where, weights, visible
    for index, node in enumerate(graph.node):
        label = repr(node.name) if node.name else (f"producing {node.output[0]!r}" if node.output else f"#{index}")
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                here = f"{attr.name} of {node.op_type} {label}" + (f" (in {where})" if where else "")
                yield from _scopes(sub, here, weights, visible)


def activation_quantizers(model: Any) -> dict[str, ActivationQuantizer]:
    """The activations (graph inputs and node outputs, not weights) a Q/DQ model quantises per tensor, by name, in
    the main graph and inside If/Loop/Scan bodies (`ActivationQuantizer.body` says which).

    A QuantizeLinear without a zero point quantises to uint8 (ONNX's default) unless its `output_dtype` says
    otherwise; per-channel activation scales and float8 outputs are left out (a note in the log).
    """
    return {name: q for name, (q, _) in _scoped_quantizers(model).items()}


def _scoped_quantizers(model: Any) -> dict[str, tuple[ActivationQuantizer, frozenset[str]]]:
    """`activation_quantizers`, each with the tensors its graph (main, or the body holding it) makes: one of those
    present in a run says the body ran."""
    from onnx import TensorProto

    from .model import load_model

    ranges = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255), TensorProto.INT16: (-32768, 32767),
              TensorProto.UINT16: (0, 65535)}
    found: dict[str, tuple[ActivationQuantizer, frozenset[str]]] = {}
    skipped = []
    for graph, where, weights, consts in _scopes(load_model(model).graph):
        made = frozenset(o for n in graph.node for o in n.output if o)
        for node in graph.node:
            if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") or not node.input[0]:
                continue
            x = node.input[0]
            if x in weights or x in consts or x in found:
                continue
            scale = consts.get(node.input[1]) if len(node.input) > 1 else None
            zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            dtype = TensorProto.UINT8
            if zp is not None:
                dtype = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
                         np.dtype(np.int16): TensorProto.INT16,
                         np.dtype(np.uint16): TensorProto.UINT16}.get(zp.dtype, 0)
            else:
                dtype = next((int(a.i) for a in node.attribute if a.name == "output_dtype" and a.i), dtype)
            if scale is None or dtype not in ranges or (len(node.input) > 2 and node.input[2] and zp is None):
                skipped.append(x)
                continue
            qmin, qmax = ranges[dtype]
            q = ActivationQuantizer(scale=float(scale.reshape(-1)[0]),
                                    zero_point=int(zp.reshape(-1)[0]) if zp is not None else 0,
                                    qmin=qmin, qmax=qmax, name=x, body=where)
            found[x] = (q, made)
    if skipped:
        log.info("%d quantised activation(s) have per-channel or non-integer Q/DQ; their clipping is not measured: %s",
                 len(skipped), ", ".join(skipped[:5]))
    return found


# ---------------------------------------------------------------------------------------------- report
def _percent(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


def _ratio(num: int | None, den: int | None) -> float | None:
    if num is None or den is None:
        return None
    return num / den if den else float("nan")


@dataclass(frozen=True)
class TensorError:
    """Quantisation error of one tensor present in both graphs, over all evaluated batches."""

    name: str
    sqnr_db: float
    signal_power: float  # mean x^2 of the FP32 tensor
    noise_power: float  # mean (x - x_int8)^2
    num_values: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sqnr_db": _num(self.sqnr_db),
            "signal_power": _num(self.signal_power),
            "noise_power": _num(self.noise_power),
            "num_values": self.num_values,
        }


@dataclass(frozen=True)
class QuantizedTensor:
    """One activation the Q/DQ model quantises, measured on the FP32 model's values: what its Q/DQ pair alone does
    to it (inputs float), i.e. its clipping and rounding at the scale the model carries."""

    quantizer: ActivationQuantizer
    max_abs: float  # largest finite |x| seen
    min_value: float
    max_value: float
    num_clipped: int  # values outside [lo, hi]
    num_values: int
    sqnr_db: float  # 10 log10(sum x^2 / sum (x - qdq(x))^2)

    @property
    def name(self) -> str:
        return self.quantizer.name

    @property
    def clipped_fraction(self) -> float:
        return self.num_clipped / self.num_values if self.num_values else float("nan")

    def describe(self) -> str:
        """'p2o.Add.103 clipped at 0.053 (max |x| 0.43, 2.1% of values clipped; own SQNR 4.2 dB)'."""
        q = self.quantizer
        seen = f"max |x| {self.max_abs:.3g}" if q.symmetric else f"values in [{self.min_value:.3g}, {self.max_value:.3g}]"
        if self.num_clipped:
            where, clipped = q.clip_text(), f"{100 * self.clipped_fraction:.2g}% of values clipped"
        else:  # its error is rounding: a step too coarse for its values
            where, clipped = (f"amax {q.hi:.3g}" if q.symmetric else f"range [{q.lo:.3g}, {q.hi:.3g}]"), "none clipped"
        inside = f" (in {q.body})" if q.body else ""
        return f"{self.name}{inside} {where} ({seen}, {clipped}; own SQNR {self.sqnr_db:.1f} dB)"

    def to_json(self) -> dict[str, Any]:
        q = self.quantizer
        return {
            "name": self.name,
            "body": q.body or None,
            "scale": q.scale,
            "zero_point": q.zero_point,
            "clip_low": _num(q.lo),
            "clip_high": _num(q.hi),
            "max_abs": _num(self.max_abs),
            "min": _num(self.min_value),
            "max": _num(self.max_value),
            "num_clipped": self.num_clipped,
            "clipped_fraction": _num(self.clipped_fraction),
            "num_values": self.num_values,
            "sqnr_db": _num(self.sqnr_db),
        }


@dataclass
class OutputMetrics:
    """One model output: absolute errors; for a classifier output (N, C) top-1 agreement, KL and accuracy; for a
    sequence output (N, T, C) whole-sequence and per-position argmax agreement and per-position KL."""

    name: str
    sample_shape: tuple[int, ...]
    num_samples: int
    max_abs_error: float
    mean_abs_error: float
    kind: str | None = None  # "logits" (softmax applied) | "probabilities" (used as is) | None: not a classifier
    num_agree: int | None = None
    num_confident: int | None = None  # samples whose FP32 top-1/top-2 margin exceeds the report's margin
    num_confident_agree: int | None = None
    mean_kl: float | None = None
    num_labels: int | None = None
    num_correct_fp32: int | None = None
    num_correct_int8: int | None = None
    sequence: str | None = None  # (N, T, C) rows over C: "logits" | "probabilities" | None: not a sequence output
    num_sequences_agree: int | None = None  # samples whose whole argmax sequence equals FP32's
    num_positions: int | None = None
    num_positions_agree: int | None = None
    mean_position_kl: float | None = None  # mean over every (sample, position) row of KL(FP32 || INT8)
    majority_class: int | None = None  # FP32's most frequent argmax over all positions (CTC's blank, typically)
    num_minority_positions: int | None = None  # positions where FP32's argmax is another class
    num_minority_agree: int | None = None
    sqnr_db: float = float("nan")  # 10 log10(sum x^2 / sum (x - x_int8)^2) over the whole output
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_classifier(self) -> bool:
        return self.kind is not None

    @property
    def is_sequence(self) -> bool:
        return self.sequence is not None

    @property
    def agreement(self) -> float | None:
        """Share of samples whose INT8 top-1 class is the FP32 top-1 class."""
        return None if self.num_agree is None else self.num_agree / self.num_samples

    @property
    def confident_agreement(self) -> float | None:
        """Agreement on the samples with an FP32 top-1/top-2 margin above the report's margin (nan if none)."""
        return _ratio(self.num_confident_agree, self.num_confident)

    @property
    def accuracy_fp32(self) -> float | None:
        return None if self.num_labels is None else self.num_correct_fp32 / self.num_labels

    @property
    def accuracy_int8(self) -> float | None:
        return None if self.num_labels is None else self.num_correct_int8 / self.num_labels

    @property
    def sequence_agreement(self) -> float | None:
        """Share of samples whose whole INT8 argmax sequence equals FP32's."""
        return _ratio(self.num_sequences_agree, self.num_samples if self.is_sequence else None)

    @property
    def position_agreement(self) -> float | None:
        """Share of (sample, position) rows whose INT8 argmax is FP32's."""
        return _ratio(self.num_positions_agree, self.num_positions)

    @property
    def minority_position_agreement(self) -> float | None:
        """Position agreement where FP32's argmax is not its majority class: blanks cannot pad it."""
        return _ratio(self.num_minority_agree, self.num_minority_positions)

    @property
    def decisions(self) -> tuple[str, int, int] | None:
        """(what, kept, of): the FP32 decisions this output makes and how many INT8 keeps; None for other outputs.

        A classifier's are its top-1 classes. A sequence's are its positions' classes, less those of FP32's majority
        class (CTC's blank, padding), which are easy to keep and would hide a model that lost everything else;
        when FP32 gives every position that class, all positions."""
        if self.is_sequence:
            if self.num_minority_positions:
                return (f"positions where FP32 is not class {self.majority_class}", self.num_minority_agree,
                        self.num_minority_positions)
            return "positions", self.num_positions_agree, self.num_positions
        if self.is_classifier:
            return "top-1 classes", self.num_agree, self.num_samples
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "sample_shape": list(self.sample_shape),
            "num_samples": self.num_samples,
            "max_abs_error": _num(self.max_abs_error),
            "mean_abs_error": _num(self.mean_abs_error),
            "sqnr_db": _num(self.sqnr_db),
            "kind": self.kind,
        }
        if self.is_classifier:
            out.update(
                agreement=_num(self.agreement),
                num_agree=self.num_agree,
                num_confident=self.num_confident,
                confident_agreement=_num(self.confident_agreement),
                num_confident_agree=self.num_confident_agree,
                mean_kl=_num(self.mean_kl),
            )
        if self.num_labels is not None:
            out.update(
                num_labels=self.num_labels,
                accuracy_fp32=_num(self.accuracy_fp32),
                accuracy_int8=_num(self.accuracy_int8),
            )
        if self.is_sequence:
            out.update(
                sequence=self.sequence,
                sequence_agreement=_num(self.sequence_agreement),
                num_sequences_agree=self.num_sequences_agree,
                position_agreement=_num(self.position_agreement),
                num_positions=self.num_positions,
                num_positions_agree=self.num_positions_agree,
                position_kl=_num(self.mean_position_kl),
                majority_class=self.majority_class,
                minority_position_agreement=_num(self.minority_position_agreement),
                num_minority_positions=self.num_minority_positions,
                num_minority_agree=self.num_minority_agree,
            )
        return out

    def format_rows(self, margin: float) -> list[str]:
        """This output's lines of the text report."""
        shape = "x".join(str(d) for d in self.sample_shape) or "scalar"
        rows: list[tuple[str, str]] = []
        if self.is_sequence:
            how = "softmax applied per row" if self.sequence == "logits" else "probability rows used as is"
            head = f"output {self.name} ({shape} per sample: a sequence of {self.sample_shape[0]} rows, {how})"
            rows += [
                ("whole-sequence agreement", f"{_percent(self.sequence_agreement)} "
                                             f"({self.num_sequences_agree}/{self.num_samples})"),
                ("per-position argmax agreement", f"{_percent(self.position_agreement)} "
                                                  f"({self.num_positions_agree}/{self.num_positions})"),
                (f"... where FP32 is not class {self.majority_class}",
                 f"{_percent(self.minority_position_agreement)} ({self.num_minority_agree}/"
                 f"{self.num_minority_positions}; class {self.majority_class} is "
                 f"{_percent(_ratio(self.num_positions - self.num_minority_positions, self.num_positions))} of FP32's "
                 "positions)"),
                ("per-position KL(FP32 || INT8)", f"{self.mean_position_kl:.4g} nats"),
            ]
        elif self.is_classifier:
            how = "softmax applied" if self.kind == "logits" else "probabilities used as is"
            head = f"output {self.name} ({shape} per sample, {self.kind}: {how})"
            rows += [
                ("top-1 agreement with FP32", f"{_percent(self.agreement)} ({self.num_agree}/{self.num_samples})"),
                (f"... where FP32 margin > {margin:g}",
                 f"{_percent(self.confident_agreement)} ({self.num_confident_agree}/{self.num_confident})"),
                ("mean KL(FP32 || INT8)", f"{self.mean_kl:.4g} nats"),
            ]
            if self.num_labels is not None:
                rows.append((f"top-1 accuracy ({self.num_labels} labels)",
                             f"FP32 {_percent(self.accuracy_fp32)}  INT8 {_percent(self.accuracy_int8)}"))
        else:
            head = f"output {self.name} ({shape} per sample; not a (N, C) classifier output)"
        rows.append(("|FP32 - INT8|", f"max {self.max_abs_error:.4g}  mean {self.mean_abs_error:.4g}  "
                                      f"(SQNR {self.sqnr_db:.3g} dB)"))
        return [head] + [f"  {label:<34}{value}" for label, value in rows]


#: Exit status of `trt-calib evaluate` per verdict level (the CLI contract: 1 a finding, 3 a finding that is an error).
VERDICT_EXIT = {"fine": 0, "unjudged": 0, "degraded": 1, "lost": 3}


@dataclass(frozen=True)
class Verdict:
    """Whether INT8 kept FP32's decisions, in one line, at one of four levels (`VERDICT_RULE`):

    - `lost`: an output keeps fewer than `LOST_BELOW` of FP32's decisions (`OutputMetrics.decisions`: top-1
      classes, or a sequence's positions outside FP32's majority class);
    - `degraded`: none is lost, but a finding the user must not miss: a sequence output whose whole argmax sequences
      agree for fewer than `min_sequence_agreement` of the samples, a classifier output that changes the class of
      more than 1 - `min_agreement` of the samples with a clear FP32 winner (at least `MIN_FLIPS` of them), or a
      task metric worse than the value the user accepts;
    - `fine`: an output makes decisions, or a task metric has a bar, and nothing above fired;
    - `unjudged`: no output makes countable decisions and no task metric has a bar: nothing was judged.

    `suspects` are the quantised activations with the worst own error (clipping and rounding at their scale), the
    likeliest causes of a loss."""

    level: str
    line: str
    lost_outputs: tuple[str, ...] = ()
    suspects: tuple[QuantizedTensor, ...] = ()
    findings: tuple[str, ...] = ()  # what makes it degraded (or lost), one phrase each
    degraded_outputs: tuple[str, ...] = ()
    thresholds: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        return self.level == "lost"

    @property
    def degraded(self) -> bool:
        return self.level == "degraded"

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT[self.level]

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "exit": self.exit_code, "lost": self.lost, "line": self.line,
                "lost_outputs": list(self.lost_outputs), "degraded_outputs": list(self.degraded_outputs),
                "findings": list(self.findings), "suspects": [q.to_json() for q in self.suspects],
                "thresholds": {k: _num(v) if isinstance(v, float) else v for k, v in self.thresholds.items()},
                "rule": VERDICT_RULE}


VERDICT_RULE = (
    f"lost (exit 3) when an output keeps fewer than {LOST_BELOW:.0%} of FP32's decisions: the top-1 classes of an "
    "(N, C) output; the argmax of the positions of an (N, T, C) one where FP32 is not its majority class (CTC's "
    "blank). degraded (exit 1) when none is lost but a sequence output's whole argmax sequences agree for fewer than "
    f"min_sequence_agreement (default {MIN_SEQUENCE_AGREEMENT:.0%}) of the samples, or a classifier output changes "
    f"the class of more than 1 - min_agreement (default {1 - MIN_AGREEMENT:.0%}) of the samples with a clear FP32 "
    f"winner (top-1/top-2 margin above the report's margin), at least {MIN_FLIPS} of them, or the task metric is "
    "worse than --accept. fine (exit 0) when an output makes decisions or the task metric has a bar, and none of "
    "that fired; unjudged (exit 0) when nothing could be judged. suspects are the quantised activations with the "
    "lowest SQNR of their own Q/DQ pair on FP32 values"
)


def _metric_text(metric: Mapping[str, Any] | None, accept: float | None) -> tuple[str, bool | None]:
    """'; task metric NAME 0.078 (higher is better, accepted from 0.9: NOT MET)' and whether it meets `accept`
    (None without a bar)."""
    if metric is None:
        return "", None
    value, higher = metric["value"], metric["higher_is_better"]
    way = "higher" if higher else "lower"
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    if accept is None:
        return f"; task metric {metric['name']} {shown} ({way} is better; no --accept bar)", None
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= accept if higher else value <= accept)
    bar = f"accepted {'from' if higher else 'up to'} {accept:g}"
    return f"; task metric {metric['name']} {shown} ({way} is better, {bar}: {'met' if ok else 'NOT MET'})", ok


def check_bars(*, accept: float | None, has_metric: bool, min_agreement: float,
               min_sequence_agreement: float) -> None:
    """ValueError for a verdict bar out of range, or an `accept` without a task metric to hold it to."""
    for what, value in (("min_agreement", min_agreement), ("min_sequence_agreement", min_sequence_agreement)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{what} must be a fraction in [0, 1], got {value!r}")
    if accept is not None:
        if isinstance(accept, bool) or not (isinstance(accept, (int, float)) and math.isfinite(accept)):
            raise ValueError(f"accept must be a finite number, got {accept!r}")
        if not has_metric:
            raise ValueError("accept is the bar of a task metric: give the metric too")


def judge(outputs: Sequence[OutputMetrics], quantized: Sequence[QuantizedTensor], *,
          metric: Mapping[str, Any] | None = None, accept: float | None = None, margin: float = DEFAULT_MARGIN,
          min_agreement: float = MIN_AGREEMENT, min_sequence_agreement: float = MIN_SEQUENCE_AGREEMENT) -> Verdict:
    """The verdict on a report's outputs (see `Verdict`); `quantized` worst first; `metric` the report's task metric
    (name, value, higher_is_better) and `accept` the value it must reach (at most, when lower is better); `margin`
    the one the outputs' clear-winner counts were taken with."""
    check_bars(accept=accept, has_metric=metric is not None, min_agreement=min_agreement,
               min_sequence_agreement=min_sequence_agreement)
    thresholds = {"lost_below": LOST_BELOW, "min_agreement": float(min_agreement), "min_flips": MIN_FLIPS,
                  "min_sequence_agreement": float(min_sequence_agreement), "margin": float(margin), "accept": accept}
    judged = [(o, o.decisions) for o in outputs if o.decisions is not None and o.decisions[2]]
    metric_text, metric_ok = _metric_text(metric, accept)
    suspects = tuple(quantized[:SUSPECTS])
    cause = ("; likeliest causes (worst own Q/DQ error): " + "; ".join(q.describe() for q in suspects)) if suspects \
        else " (the quantised tensors were not measured: run without --worst 0 to name them)"

    def kept(o: OutputMetrics, d: tuple[str, int, int]) -> str:
        if o.is_sequence:
            extra = f"; whole sequences {o.num_sequences_agree}/{o.num_samples}"
        elif o.num_confident:
            extra = f"; {o.num_confident_agree}/{o.num_confident} with a clear FP32 winner"
        else:
            extra = ""
        return f"{o.name} keeps {d[1]}/{d[2]} {d[0]} ({_percent(d[1] / d[2])}{extra})"

    lost = [(o, d) for o, d in judged if d[1] < LOST_BELOW * d[2]]
    if lost:
        what = "; ".join(kept(o, d) for o, d in lost)
        return Verdict("lost", f"verdict: INT8 LOSES MOST OF FP32'S DECISIONS: {what}{metric_text}{cause}",
                       tuple(o.name for o, _ in lost), suspects, tuple(kept(o, d) for o, d in lost),
                       thresholds=thresholds)
    findings: list[tuple[str, str]] = []
    for o, d in judged:
        if o.is_sequence:
            if o.num_sequences_agree < min_sequence_agreement * o.num_samples:
                findings.append((o.name, f"{o.name}: whole argmax sequences agree on {o.num_sequences_agree}/"
                                 f"{o.num_samples} samples ({_percent(o.sequence_agreement)}, under "
                                 f"{min_sequence_agreement:.0%}), though it keeps {d[1]}/{d[2]} {d[0]} "
                                 f"({_percent(d[1] / d[2])})"))
        elif o.is_classifier and o.num_confident:
            flips = o.num_confident - o.num_confident_agree
            if flips >= MIN_FLIPS and o.num_confident_agree < min_agreement * o.num_confident:
                findings.append((o.name, f"{o.name}: {flips} of the {o.num_confident} samples with a clear FP32 "
                                 f"winner (margin > {margin:g}) change class ({_percent(o.confident_agreement)} kept, "
                                 f"under {min_agreement:.0%}; top-1 agreement {o.num_agree}/{o.num_samples}, "
                                 f"{_percent(o.agreement)})"))
    if metric_ok is False:  # the metric's text becomes a finding, first: the user's own bar
        findings.insert(0, ("", metric_text[2:]))
        metric_text = ""
    if findings:
        return Verdict("degraded", f"verdict: INT8 IS DEGRADED: {'; '.join(f for _, f in findings)}{metric_text}"
                       f"{cause}", (), suspects, tuple(f for _, f in findings),
                       tuple(dict.fromkeys(n for n, _ in findings if n)), thresholds)
    if judged:
        return Verdict("fine", f"verdict: fine: INT8 keeps FP32's decisions: {'; '.join(kept(o, d) for o, d in judged)}"
                       f"{metric_text}", thresholds=thresholds)
    if metric_ok:
        return Verdict("fine", "verdict: fine by the task metric (no output is a classifier (N, C) or a sequence "
                       f"(N, T, C) of class scores){metric_text}", thresholds=thresholds)
    hint = ("Hint: --accept VALUE makes the task metric a verdict" if metric is not None
            else "Hint: --metric FILE.py measures what your task needs, --accept VALUE sets its bar")
    return Verdict("unjudged", "verdict: not judged: no output is a classifier (N, C) or a sequence (N, T, C) of "
                   f"class scores, so no FP32 decision can be counted{metric_text}. {hint}", thresholds=thresholds)


@dataclass
class EvaluationReport:
    """FP32 vs INT8 on held-out data: per-output metrics, the worst tensors by SQNR, the quantised activations'
    clipping, a task metric if given, the verdict, and what ran."""

    outputs: list[OutputMetrics]
    worst: list[TensorError]
    num_compared: int  # tensors present in both graphs whose SQNR was measured
    num_samples: int
    num_batches: int
    margin: float
    session: str = SESSION_MODE
    note: str = ORT_NOTE
    labels_output: str | None = None
    seconds: float = 0.0
    tensors: list[TensorError] = field(default_factory=list, repr=False, compare=False)  # all, worst first
    quantized: list[QuantizedTensor] = field(default_factory=list)  # every measured Q/DQ activation, worst first
    num_worst: int = 10  # how many of `quantized` the report lists
    metric: dict[str, Any] | None = None  # a user's task metric: name, value, higher_is_better, batches, weight
    verdict: Verdict | None = None
    num_parts: int = 1  # parts per (full) batch, from the activation budget
    num_body_compared: int = 0  # of `num_compared`, tensors inside If branches (those the data took)
    unreached: list[str] = field(default_factory=list)  # tensors of If branches no evaluated sample took

    def output(self, name: str) -> OutputMetrics:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output {name!r}; outputs are {', '.join(o.name for o in self.outputs)}")

    @property
    def primary(self) -> OutputMetrics:
        """The output labels apply to, else the first classifier output, else the first sequence output, else the
        first output."""
        if self.labels_output is not None:
            return self.output(self.labels_output)
        return next((o for o in self.outputs if o.is_classifier),
                    next((o for o in self.outputs if o.is_sequence), self.outputs[0]))

    @property
    def lost(self) -> bool:
        """True when the verdict says INT8 lost most of FP32's decisions."""
        return self.verdict is not None and self.verdict.lost

    @property
    def level(self) -> str:
        """The verdict's level: fine, degraded, lost, or unjudged."""
        return self.verdict.level if self.verdict is not None else "unjudged"

    @property
    def exit_code(self) -> int:
        """The exit status `trt-calib evaluate` gives this report: 0 fine or unjudged, 1 degraded, 3 lost."""
        return VERDICT_EXIT[self.level]

    def to_json(self) -> dict[str, Any]:
        out = {
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "num_parts": self.num_parts,
            "margin": self.margin,
            "session": self.session,
            "note": self.note,
            "labels_output": self.labels_output,
            "seconds": round(self.seconds, 3),
            "outputs": [o.to_json() for o in self.outputs],
            "num_compared_tensors": self.num_compared,
            "num_branch_tensors_compared": self.num_body_compared,
            "unreached_branch_tensors": list(self.unreached),
            "worst_tensors": [t.to_json() for t in self.worst],
            "num_quantized_tensors": len(self.quantized),
            "worst_quantized_tensors": [q.to_json() for q in self.quantized[: self.num_worst]],
        }
        if self.metric is not None:
            out["metric"] = {k: _num(v) if isinstance(v, float) else v for k, v in self.metric.items()}
        if self.verdict is not None:
            out["verdict"] = self.verdict.to_json()
        return out

    def format(self) -> str:
        """The report as text lines for a terminal; the verdict is the last line."""
        lines = [
            f"INT8 vs FP32 on {self.num_samples} samples ({self.num_batches} batches"
            + (f", each in {self.num_parts} parts for the activation budget" if self.num_parts > 1 else "") + ")",
            f"ran: {self.session}",
            f"note: {self.note}",
        ]
        for o in self.outputs:
            lines.append("")
            lines += o.format_rows(self.margin)
        if self.metric is not None:
            m = self.metric
            way = "higher is better" if m["higher_is_better"] else "lower is better"
            lines += ["", f"task metric {m['name']}: {m['value']:.6g} ({way}; {m['batches']} batches, weight "
                          f"{m['weight']:g})"]
        if self.worst:
            width = max([len(t.name) for t in self.worst] + [6])
            inside = f", {self.num_body_compared} of them inside If branches" if self.num_body_compared else ""
            lines += ["", f"worst tensors by SQNR ({len(self.worst)} of {self.num_compared} compared by name{inside}):"]
            lines.append(f"  {'tensor':<{width}}  {'SQNR dB':>8}  {'rms FP32':>10}  {'rms error':>10}")
            for t in self.worst:
                lines.append(
                    f"  {t.name:<{width}}  {t.sqnr_db:8.2f}  {math.sqrt(t.signal_power):10.4g}  "
                    f"{math.sqrt(t.noise_power):10.4g}"
                )
        elif self.num_compared == 0 and self.num_worst:
            lines += ["", "no intermediate tensor of the FP32 graph exists under the same name in the INT8 graph"]
        if self.unreached and self.num_worst:
            lines.append(f"not compared: {len(self.unreached)} tensor(s) of If branches no evaluated sample took "
                         f"(e.g. {', '.join(self.unreached[:3])})")
        shown = self.quantized[: self.num_worst]
        if shown:
            width = max([len(q.name) for q in shown] + [6])
            lines += ["", f"quantised activations, worst own error first ({len(shown)} of {len(self.quantized)}; "
                          "their Q/DQ pair alone on FP32 values):"]
            lines.append(f"  {'tensor':<{width}}  {'SQNR dB':>8}  {'clip at':>10}  {'max |x|':>10}  {'clipped':>8}")
            for q in shown:
                clip = f"{q.quantizer.hi:.4g}" if q.quantizer.symmetric else f"{q.quantizer.lo:.3g}..{q.quantizer.hi:.3g}"
                where = f"  in {q.quantizer.body}" if q.quantizer.body else ""
                lines.append(f"  {q.name:<{width}}  {q.sqnr_db:8.2f}  {clip:>10}  {q.max_abs:10.4g}  "
                             f"{100 * q.clipped_fraction:7.3g}%{where}")
        if self.verdict is not None:
            lines += ["", self.verdict.line]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- accumulation
def class_rows(value: np.ndarray) -> np.ndarray | None:
    """(N, C) scores when `value` is a classifier output: (N, C) or (N, C, 1, ...), C >= 2; else None."""
    if value.ndim < 2 or value.shape[1] < 2 or int(np.prod(value.shape[2:], dtype=np.int64)) != 1:
        return None
    return value.reshape(value.shape[0], value.shape[1])


def sequence_rows(value: np.ndarray) -> np.ndarray | None:
    """`value` when it can be a sequence output: float, (N, T, C) with C >= 2; else None. Whether its rows are
    class scores is for the caller to say (probability rows are recognised, logits must be named)."""
    if value.ndim != 3 or value.shape[2] < 2 or not np.issubdtype(value.dtype, np.floating):
        return None
    return value


class _OutputAccumulator:
    """Streams one output, part by part: error sums and per-sample top-1, margin and KL for a classifier output,
    per-sample sequence agreement and per-position counts and KL for a sequence output (a few numbers per sample)."""

    def __init__(self, name: str, *, sequence_logits: bool = False) -> None:
        self.name = name
        self.sample_shape: tuple[int, ...] | None = None
        self.classifier = True
        self.sequence = False  # an (N, T, C) output that may be a sequence of class scores
        self.sequence_logits = sequence_logits  # named as a sequence of logits by the caller
        self.abs_max = 0.0
        self.abs_sum = 0.0
        self.signal = 0.0  # sum x^2 and sum (x - x_int8)^2, for the output's SQNR
        self.noise = 0.0
        self.num_values = 0
        self.num_samples = 0
        self.prob_like = True
        self.top1_fp32: list[np.ndarray] = []
        self.top1_int8: list[np.ndarray] = []
        self.kl_logits: list[np.ndarray] = []
        self.kl_probs: list[np.ndarray] = []
        self.margin_logits: list[np.ndarray] = []
        self.margin_probs: list[np.ndarray] = []
        # sequences: per sample whole-sequence agreement, agreeing positions, positions, KL sums; per FP32 class
        self.seq_agree: list[np.ndarray] = []
        self.pos_agree: list[np.ndarray] = []
        self.pos_count: list[np.ndarray] = []
        self.class_count: np.ndarray | None = None
        self.class_agree: np.ndarray | None = None

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.sample_shape is None:
            self.sample_shape = tuple(a.shape[1:])
            self.classifier = class_rows(a) is not None and np.issubdtype(a.dtype, np.floating)
            self.sequence = sequence_rows(a) is not None
        if a.ndim and a.shape[0] == 0:
            return
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if diff.size:
            self.abs_max = float(np.max([self.abs_max, diff.max()]))  # NaN anywhere stays NaN
            self.abs_sum += float(diff.sum())
            self.noise += float(np.einsum("i,i->", diff.reshape(-1), diff.reshape(-1)))
            self.signal += float(np.einsum("i,i->", *(2 * [np.asarray(a, dtype=np.float64).reshape(-1)])))
        self.num_values += diff.size
        del diff
        self.num_samples += a.shape[0] if a.ndim else 1
        if self.sequence:
            self._update_sequence(a, b)
        if not self.classifier:
            return
        p, q = class_rows(a), class_rows(b)
        self.top1_fp32.append(np.argmax(p, axis=1))
        self.top1_int8.append(np.argmax(q, axis=1))
        lp = log_softmax(p)
        self.kl_logits.append(kl_divergence(lp, log_softmax(q)))
        self.margin_logits.append(top2_margin(lp))
        if self.prob_like and looks_like_probabilities(p):
            lp = log_probabilities(p, "probabilities")
            self.kl_probs.append(kl_divergence(lp, log_probabilities(q, "probabilities")))
            self.margin_probs.append(top2_margin(lp))
        else:
            self.prob_like = False
            self.kl_probs.clear()
            self.margin_probs.clear()

    def _update_sequence(self, a: np.ndarray, b: np.ndarray) -> None:
        n, t, c = a.shape
        if self.class_count is None:
            self.class_count = np.zeros(c, np.int64)
            self.class_agree = np.zeros(c, np.int64)
        if c != self.class_count.size:
            self.sequence = False  # the class axis changed size between batches: not one sequence of classes
            return
        t32, t8 = np.argmax(a, axis=2), np.argmax(b, axis=2)
        agree = t32 == t8
        self.seq_agree.append(agree.all(axis=1))
        self.pos_agree.append(agree.sum(axis=1))
        self.pos_count.append(np.full(n, t, np.int64))
        self.class_count += np.bincount(t32.reshape(-1), minlength=c)
        self.class_agree += np.bincount(t32[agree], minlength=c)
        step = max(1, _BLOCK // max(1, t * c))  # a few samples at a time: the float64 rows stay small
        kl_l, kl_p = np.empty(n), np.empty(n)
        for s in range(0, n, step):
            pa, pb = a[s : s + step], b[s : s + step]
            kl_l[s : s + step] = kl_divergence(log_softmax(pa), log_softmax(pb)).sum(axis=1)
            if self.prob_like and looks_like_probabilities(pa):
                kl_p[s : s + step] = kl_divergence(log_probabilities(pa, "probabilities"),
                                                   log_probabilities(pb, "probabilities")).sum(axis=1)
            else:
                self.prob_like = False
        self.kl_logits.append(kl_l)
        if self.prob_like:
            self.kl_probs.append(kl_p)
        else:
            self.kl_probs.clear()

    def finish(self, margin: float, labels: np.ndarray | None) -> OutputMetrics:
        m = OutputMetrics(
            name=self.name,
            sample_shape=self.sample_shape or (),
            num_samples=self.num_samples,
            max_abs_error=self.abs_max,
            mean_abs_error=self.abs_sum / self.num_values if self.num_values else float("nan"),
            sqnr_db=sqnr_db(self.signal, self.noise),
        )
        if self.sequence and self.seq_agree and (self.prob_like or self.sequence_logits):
            return self._finish_sequence(m)
        if not self.classifier or not self.top1_fp32:
            return m
        kind = "probabilities" if self.prob_like else "logits"
        kl = np.concatenate(self.kl_probs if self.prob_like else self.kl_logits)
        margins = np.concatenate(self.margin_probs if self.prob_like else self.margin_logits)
        t32, t8 = np.concatenate(self.top1_fp32), np.concatenate(self.top1_int8)
        agree = t32 == t8
        confident = margins > margin
        m.kind = kind
        m.num_agree = int(agree.sum())
        m.num_confident = int(confident.sum())
        m.num_confident_agree = int((agree & confident).sum())
        m.mean_kl = float(kl.mean())
        m.samples = {"top1_fp32": t32, "top1_int8": t8, "margin": margins, "kl": kl}
        if labels is not None:
            m.num_labels = int(labels.size)
            m.num_correct_fp32 = int((t32 == labels).sum())
            m.num_correct_int8 = int((t8 == labels).sum())
            m.samples["labels"] = labels
        return m

    def _finish_sequence(self, m: OutputMetrics) -> OutputMetrics:
        kl = np.concatenate(self.kl_probs if self.prob_like else self.kl_logits)
        seq, pos, count = (np.concatenate(x) for x in (self.seq_agree, self.pos_agree, self.pos_count))
        majority = int(np.argmax(self.class_count))
        m.sequence = "probabilities" if self.prob_like else "logits"
        m.num_sequences_agree = int(seq.sum())
        m.num_positions = int(count.sum())
        m.num_positions_agree = int(pos.sum())
        m.mean_position_kl = float(kl.sum() / m.num_positions) if m.num_positions else float("nan")
        m.majority_class = majority
        m.num_minority_positions = m.num_positions - int(self.class_count[majority])
        m.num_minority_agree = m.num_positions_agree - int(self.class_agree[majority])
        m.samples = {"sequence_agree": seq, "position_agreement": pos / np.maximum(count, 1),
                     "position_kl": kl / np.maximum(count, 1)}
        return m


class _ClipAccumulator:
    """One quantised activation on the FP32 model's values: max, clipped count, and its own Q/DQ error."""

    def __init__(self, quantizer: ActivationQuantizer) -> None:
        self.q = quantizer
        self.max_abs = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.clipped = 0
        self.count = 0
        self.signal = 0.0
        self.noise = 0.0

    def update(self, x: np.ndarray) -> None:
        q = self.q
        flat = np.asarray(x).reshape(-1)
        lo, hi = np.float32(q.lo), np.float32(q.hi)
        for s in range(0, flat.size, _BLOCK):
            block = flat[s : s + _BLOCK].astype(np.float32, copy=False)
            finite = block[np.isfinite(block)]
            if finite.size:
                self.lo = min(self.lo, float(finite.min()))
                self.hi = max(self.hi, float(finite.max()))
                self.max_abs = max(self.max_abs, abs(self.lo), abs(self.hi))
            self.clipped += int(np.count_nonzero((block < lo) | (block > hi)))
            self.signal += float(np.einsum("i,i->", block, block, dtype=np.float64))
            d = block - quantize_dequantize(block, q.scale, q.zero_point, q.qmin, q.qmax)
            self.noise += float(np.einsum("i,i->", d, d, dtype=np.float64))
        self.count += flat.size

    def finish(self) -> QuantizedTensor:
        lo, hi = (self.lo, self.hi) if self.count and math.isfinite(self.lo) else (float("nan"), float("nan"))
        return QuantizedTensor(self.q, self.max_abs, lo, hi, self.clipped, self.count, sqnr_db(self.signal, self.noise))


# ---------------------------------------------------------------------------------------------- sessions
def _describe(model: Any, role: str) -> str:
    import onnx

    return role if isinstance(model, onnx.ModelProto) else f"{role} {model}"


def _check_pair(fp32: Any, int8: Any, fp32_role: str, int8_role: str) -> tuple[list[Any], list[str]]:
    """The shared inputs and outputs of the two models; a ModelError naming the difference otherwise."""
    from .model import model_inputs

    hint = "Hint: pass the FP32 model the Q/DQ model was made from"
    a, b = model_inputs(fp32), model_inputs(int8)
    if [s.name for s in a] != [s.name for s in b]:
        raise ModelError(
            f"the models take different inputs: {fp32_role} has {[s.name for s in a]}, "
            f"{int8_role} has {[s.name for s in b]}. {hint}"
        )
    for sa, sb in zip(a, b):
        if sa.dtype != sb.dtype:
            raise ModelError(f"input {sa.name!r} is {sa.dtype} in {fp32_role} but {sb.dtype} in {int8_role}. {hint}")
        if sa.rank != sb.rank or any(
            None not in (sa.static_dim(i), sb.static_dim(i)) and sa.static_dim(i) != sb.static_dim(i)
            for i in range(sa.rank)
        ):
            raise ModelError(
                f"input {sa.name!r} is {sa.shape_text()} in {fp32_role} but {sb.shape_text()} in {int8_role}. {hint}"
            )
    outs_a = [o.name for o in fp32.graph.output]
    outs_b = [o.name for o in int8.graph.output]
    if sorted(outs_a) != sorted(outs_b):
        raise ModelError(
            f"the models have different outputs: {fp32_role} has {outs_a}, {int8_role} has {outs_b}. {hint}"
        )
    return a, outs_a


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(
            f"labels: expected one class index per sample (shape (N,)), got shape {arr.shape}. "
            "Hint: for one-hot labels pass labels.argmax(axis=1)"
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise DataError("labels: float labels must be whole numbers (class indices)")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"labels: expected integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _budget_bytes(max_activation_mb: float) -> int:
    if not (isinstance(max_activation_mb, (int, float)) and math.isfinite(max_activation_mb) and max_activation_mb > 0):
        raise ValueError(f"max_activation_mb must be a finite number > 0, got {max_activation_mb!r}")
    return int(max_activation_mb * 2**20)


def output_batch_axes(model: Any, specs: Sequence[Any]) -> dict[str, int | None]:
    """Each output's batch axis as the model declares it: the axis whose dim is named like an input's batch dim
    (silero's stateN (2, batch, 128): 1); None where its dims name none (`batch_axis` then looks at the values)."""
    names = {s.shape[s.batch_axis] for s in specs if s.batch_axis is not None and isinstance(s.shape[s.batch_axis], str)}
    axes: dict[str, int | None] = {}
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim if o.type.HasField("tensor_type") else []
        axes[o.name] = next((k for k, d in enumerate(dims) if d.dim_param and d.dim_param in names), None)
    return axes


def batch_axis(value: Any, samples: int | None, declared: int | None = None) -> int | None:
    """The axis of an output `value` that holds a batch's `samples` samples: `declared` (`output_batch_axes`) when
    its size fits, else axis 0 when it does, else the first axis that does; None when none does (a value per batch,
    not per sample). Without a sample count (no input is batched) axis 0, if any."""
    shape = np.shape(value)
    if samples is None:
        return 0 if shape else None
    if declared is not None and declared < len(shape) and shape[declared] == samples:
        return declared
    return next((k for k, n in enumerate(shape) if n == samples), None)


def batch_first(value: np.ndarray, axis: int | None) -> np.ndarray:
    """`value` with its batch axis first (a value per batch, `axis` None, becomes one sample)."""
    value = np.asarray(value)
    if axis is None:
        return value[None]
    return np.moveaxis(value, axis, 0) if axis else value


def take_samples(value: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    """Samples start..stop of `value` along its batch axis (all of it when it has none)."""
    if axis is None:
        return value
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return value[tuple(index)]


def batch_samples(batch: Mapping[str, np.ndarray], specs: Sequence[Any]) -> int | None:
    """The samples in a batch of inputs, counted along each input's batch axis (None when no input is batched)."""
    by_name = {s.name: s for s in specs}
    for name, value in batch.items():
        spec = by_name.get(name)
        if spec is not None and spec.batch_axis is not None:
            count = spec.count(np.shape(value))
            if count is not None:
                return count
    return None


def _joined(parts: list[np.ndarray], rows: list[int], axis: int | None = None) -> np.ndarray:
    """One batch's output from its parts' (`rows` samples each), joined along the batch axis: `axis` when every part
    has its samples there, else the first axis whose size is each part's sample count (axis 0 for most models; a
    recurrent state (2, N, 128) has it at 1). An output without one (a per-part scalar) becomes one value per part."""
    if len(parts) == 1:
        return parts[0]
    ndim = {p.ndim for p in parts}
    if len(ndim) == 1 and (n := ndim.pop()):
        order = ([axis] if axis is not None and axis < n else []) + list(range(n))
        for k in order:
            if all(p.shape[k] == r for p, r in zip(parts, rows)):
                return np.concatenate(parts, axis=k)
    return np.stack(parts)


def _size_parts(r32: Any, r8: Any, fp32: Any, batch: Mapping[str, np.ndarray], threads: int | None, *,
                full: bool) -> int:
    """Fix both runners' part size from the first batch; returns its number of parts.

    With the per-tensor pass (`full`) FP32 fetches about every tensor, so what it holds is what it runs. Without
    it only the outputs come back, yet onnxruntime still holds a batch's working tensors: the part size then comes
    from every float tensor of the model, the bound `calibrate` uses, from the inferred shapes or one sample's run.
    """
    from .model import checked_tensors, sample_bytes
    from .runner import Runner

    if full:
        count = r32.size_parts(batch)
    else:
        try:
            names, info = checked_tensors(fp32, None, r32.role)
        except CalibrationError:  # no float tensor at all: the outputs are all there is
            names, info = r32.names, {}
        bound = sample_bytes(info, names, r32.specs)
        if bound is not None:
            r32.sample_bytes = max(bound, r32.sample_bytes or 0)
            count = r32.size_parts(batch)
        else:
            sizer = Runner.open(fp32, names, threads=threads, budget_bytes=r32.budget, name=r32.role, optimize=False)
            sizer.prefetch_kernel = False
            count = sizer.size_parts(batch)
            r32.part_size = sizer.part_size
            del sizer
    r8.part_size = r32.part_size
    return count


# ---------------------------------------------------------------------------------------------- evaluate
def comparable_tensors(model: Any) -> tuple[list[str], set[str]]:
    """The tensors the per-tensor pass can fetch from `model`: every tensor TensorRT calibrates in the main graph,
    then those inside If branches onnxruntime can be made to return (`control_flow.reachable_body_tensors`: not in
    Loop/Scan bodies, names used once); and the set of the latter."""
    from .control_flow import body_tensors, reachable_body_tensors
    from .model import calibrated_from_types, float_types, tensor_info

    types = {n: t for n, (t, _) in tensor_info(model).items()}
    main = calibrated_from_types(model, types)
    seen = set(main)
    bodies = [n for n in reachable_body_tensors(body_tensors(model, types, float_types())) if n not in seen]
    return main + bodies, set(bodies)


def evaluate(
    fp32_model: Any,
    int8_model: Any,
    batches: Iterable[Any],
    *,
    labels: Any = None,
    worst: int = 10,
    margin: float = DEFAULT_MARGIN,
    label_output: str | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = DEFAULT_ACTIVATION_MB,
    metric: Any = None,
    sequence_outputs: Sequence[str] = (),
    accept: float | None = None,
    min_agreement: float = MIN_AGREEMENT,
    min_sequence_agreement: float = MIN_SEQUENCE_AGREEMENT,
) -> EvaluationReport:
    """Run `fp32_model` and its Q/DQ version `int8_model` on `batches` and measure what INT8 changes.

    `labels` (one class index per evaluated sample, in batch order) give top-1 accuracy on `label_output` (default:
    the first (N, C) output). `worst` tensors with the lowest SQNR, and quantised activations with the lowest own
    Q/DQ SQNR, are listed (0 skips the per-tensor pass). Padded rows of a `BatchSource` with last_batch='pad' are
    left out of the output metrics. Each batch runs in equal parts whose tensors, both models' together, fit
    `max_activation_mb`; the metrics are those of whole batches (sums in another order: float64 rounding).
    `metric`: a user's task metric (`user_metric.load_metric`'s, or its `FILE.py[:FUNCTION]`), called once per
    batch with both models' outputs for the whole batch. `sequence_outputs`: outputs (N, T, C) whose rows are logits
    (probability rows are recognised without it). `accept` (the value the task metric must reach, or not exceed when
    lower is better), `min_agreement` and `min_sequence_agreement` are the verdict's bars (`judge`).

    The per-tensor pass covers the main graph and the If branches the data takes (`Runner` inlines them): a tensor
    is compared on the parts where both models computed it, and an activation's clipping is measured wherever the
    Q/DQ model quantises it, branches included.
    """
    from .data import BatchSource, iter_batches
    from .model import load_model
    from .runner import Runner
    from .user_metric import MetricAccumulator, UserMetric, load_metric

    started = time.perf_counter()
    budget = _budget_bytes(max_activation_mb)
    if worst < 0:
        raise ValueError(f"worst must be >= 0, got {worst!r}")
    check_bars(accept=accept, has_metric=metric is not None, min_agreement=min_agreement,
               min_sequence_agreement=min_sequence_agreement)
    if metric is not None and not isinstance(metric, UserMetric):
        metric = load_metric(metric)
    fp32_role, int8_role = _describe(fp32_model, "FP32 model"), _describe(int8_model, "INT8 model")
    fp32, int8 = load_model(fp32_model), load_model(int8_model)
    specs, output_names = _check_pair(fp32, int8, fp32_role, int8_role)
    unknown = [n for n in sequence_outputs if n not in output_names]
    if unknown:
        raise DataError(f"sequence output {unknown[0]!r} is not an output; outputs are {output_names}")
    label_arr = None if labels is None else _check_labels(labels)

    input_names = {s.name for s in specs}
    shared: list[str] = []
    quantizers: dict[str, ActivationQuantizer] = {}
    in_bodies: set[str] = set()
    int8_bodies: set[str] = set()
    scoped: dict[str, tuple[ActivationQuantizer, frozenset[str]]] = {}
    if worst > 0:
        fp32_tensors, fp32_bodies = comparable_tensors(fp32)
        int8_tensors, int8_bodies = comparable_tensors(int8)
        in_int8 = set(int8_tensors)
        shared = [n for n in fp32_tensors if n in in_int8 and n not in input_names]
        known = set(fp32_tensors)
        scoped = {n: qm for n, qm in _scoped_quantizers(int8).items() if n in known}
        quantizers = {n: q for n, (q, _) in scoped.items()}
        in_bodies = fp32_bodies | int8_bodies
    fetch8 = output_names + [n for n in shared if n not in output_names]
    # A quantiser inside a branch counts on the parts whose INT8 run took that branch: one of the tensors its branch
    # makes is fetched as a witness (a branch may quantise a tensor of the main graph, there in every part).
    witness: dict[str, str] = {}
    for n, (q, made) in scoped.items():
        if q.body:
            witness[n] = next((t for t in fetch8 if t in made), None) or min(made & int8_bodies, default="")
    only8 = [t for t in dict.fromkeys(witness.values()) if t and t not in fetch8]  # tensors of the INT8 graph alone
    fetch32 = fetch8 + [n for n in quantizers if n not in fetch8]
    # Both models' tensors of one part are held at once: each runner gets half the budget. FP32 fetches the same
    # tensors as INT8 and the quantised activations, so the part size it finds fits both.
    r32 = Runner.open(fp32, fetch32, threads=threads, budget_bytes=budget // 2, name=fp32_role, optimize=False)
    r8 = Runner.open(int8, fetch8 + only8, threads=threads, budget_bytes=budget // 2, name=int8_role, optimize=False)
    r32.prefetch_kernel = r8.prefetch_kernel = False  # nothing is binned here

    seq_named = set(sequence_outputs)
    accs = {n: _OutputAccumulator(n, sequence_logits=n in seq_named) for n in output_names}
    sums = {n: [0.0, 0.0, 0] for n in shared}  # signal, noise, count
    clips = {n: _ClipAccumulator(q) for n, q in quantizers.items()}
    task = MetricAccumulator(metric) if metric is not None else None
    padded = batches.num_padded if isinstance(batches, BatchSource) else 0
    last_index = len(batches) - 1 if padded else -1
    declared = output_batch_axes(fp32, r32.specs)
    out_axes: dict[str, int | None] = {}  # each output's batch axis, from the first batch
    count = 0
    num_parts = 1
    total = 0
    for index, batch in enumerate(iter_batches(batches, r32.specs)):
        if index == 0:
            num_parts = _size_parts(r32, r8, fp32, batch, threads, full=worst > 0)
        samples = batch_samples(batch, r32.specs)
        rows = samples if samples is not None else 1
        keep = rows - padded if index == last_index else rows  # rows before the padding copies
        total += keep
        outs32: dict[str, list[np.ndarray]] = {n: [] for n in output_names} if task else {}
        outs8: dict[str, list[np.ndarray]] = {n: [] for n in output_names} if task else {}
        sizes: list[int] = []
        start = 0
        for part in r32.split(batch):
            a, b = r32.run(part), r8.run(part)
            counted = batch_samples(part, r32.specs)
            size = counted if counted is not None else 1
            for name in fetch8:
                if name not in a or name not in b:  # in an If branch this part does not take (in either model)
                    continue
                x, y = np.asarray(a[name]), np.asarray(b[name])
                if x.shape != y.shape:
                    raise ModelError(
                        f"tensor {name!r} is {x.shape} in {fp32_role} but {y.shape} in {int8_role} on batch {index}. "
                        "Hint: pass the FP32 model the Q/DQ model was made from"
                    )
                if name in sums:
                    s = sums[name]
                    s[0] += sum_squares(x)
                    s[1] += sum_sq_diff(x, y)
                    s[2] += x.size
                if name in accs:
                    if name not in out_axes:
                        out_axes[name] = batch_axis(x, counted, declared.get(name))
                    axis = out_axes[name]
                    if axis is not None and (axis >= x.ndim or x.shape[axis] != size):
                        axis = batch_axis(x, counted)  # a part of another size: only its sample count tells
                    if keep < rows and axis is not None:
                        x, y = take_samples(x, axis, 0, max(0, keep - start)), take_samples(y, axis, 0, max(0, keep - start))
                    accs[name].update(batch_first(x, axis), batch_first(y, axis))
                    if task:
                        outs32[name].append(x)
                        outs8[name].append(y)
            sizes.append(min(size, max(0, keep - start)))
            for name, acc in clips.items():
                if name in a and (not witness.get(name) or witness[name] in b):
                    acc.update(a[name])
            del a, b
            start += size
        if task:
            by_name = {s.name: s for s in r32.specs}
            whole = batch if keep == rows else {
                k: take_samples(v, by_name[k].batch_axis if k in by_name else None, 0, keep) for k, v in batch.items()}
            task.add({n: _joined(v, sizes, out_axes.get(n)) for n, v in outs32.items()},
                     {n: _joined(v, sizes, out_axes.get(n)) for n, v in outs8.items()}, whole, samples=keep)
            del outs32, outs8
        count += 1
        if progress is not None:
            progress(1)

    num_samples = total
    if label_arr is not None:
        classifiers = [n for n in output_names if accs[n].classifier]
        if label_output is None:
            if not classifiers:
                raise DataError(
                    f"labels given but no output is a (N, C) classifier output: {output_names}. "
                    "Hint: drop the labels or pass label_output"
                )
            label_output = classifiers[0]
        elif label_output not in accs:
            raise DataError(f"label_output {label_output!r} is not an output; outputs are {output_names}")
        elif not accs[label_output].classifier:
            raise DataError(f"label_output {label_output!r} is not a (N, C) classifier output")
        acc = accs[label_output]
        if label_arr.size != acc.num_samples:
            raise DataError(
                f"labels: {label_arr.size} labels for {acc.num_samples} evaluated samples. "
                "Hint: one label per sample, in the order the data is fed"
            )
        classes = acc.sample_shape[0]
        bad = (label_arr < 0) | (label_arr >= classes)
        if bad.any():
            raise DataError(
                f"labels: {int(bad.sum())} label(s) outside 0..{classes - 1} (output {label_output!r} has {classes} "
                f"classes), e.g. {int(label_arr[bad][0])} at sample {int(np.flatnonzero(bad)[0])}"
            )
    metrics = [accs[n].finish(margin, label_arr if n == label_output else None) for n in output_names]
    for n in seq_named:
        if not accs[n].sequence:
            raise DataError(f"sequence output {n!r} is {accs[n].sample_shape} per sample, not (T, C) of float class "
                            "scores")
    unreached = [n for n, (_, _, c) in sums.items() if n in in_bodies and not c]
    tensors = [
        TensorError(n, sqnr_db(s, e), s / c if c else float("nan"), e / c if c else float("nan"), int(c))
        for n, (s, e, c) in sums.items() if c or n not in in_bodies
    ]
    tensors.sort(key=lambda t: (math.isnan(t.sqnr_db), t.sqnr_db))
    quantized = [c.finish() for c in clips.values() if c.count or not c.q.body]  # a branch no sample took: none
    quantized.sort(key=lambda q: (math.isnan(q.sqnr_db), q.sqnr_db))
    task_result = None
    if task is not None:
        task_result = {"name": task.metric.name, "value": task.result(), "higher_is_better": task.higher_is_better,
                       "batches": task.batches, "weight": task.weight}
    return EvaluationReport(
        outputs=metrics,
        worst=tensors[:worst],
        num_compared=len(tensors),
        num_samples=num_samples,
        num_batches=count,
        margin=float(margin),
        labels_output=label_output if label_arr is not None else None,
        seconds=time.perf_counter() - started,
        tensors=tensors,
        quantized=quantized,
        num_worst=worst,
        metric=task_result,
        verdict=judge(metrics, quantized, metric=task_result, accept=accept, margin=margin,
                      min_agreement=min_agreement, min_sequence_agreement=min_sequence_agreement),
        num_parts=num_parts,
        num_body_compared=sum(t.name in in_bodies for t in tensors),
        unreached=unreached,
    )


def threshold_sqnr(
    model: Any,
    batches: Iterable[Any],
    candidates: Mapping[str, Mapping[str, float]],
    *,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = DEFAULT_ACTIVATION_MB,
) -> dict[str, dict[str, float]]:
    """SQNR in dB of each tensor fake-quantised at each candidate amax, on the FP32 model's real activations.

    `candidates` maps tensor -> {label: amax}; the result maps tensor -> {label: SQNR}. The error is measured on the
    tensor alone (its inputs stay float), summed over all batches (each run in parts within `max_activation_mb`);
    a tensor whose amax is not finite gets nan.
    """
    from .data import iter_batches
    from .model import load_model, model_inputs, tensor_types
    from .runner import Runner

    budget = _budget_bytes(max_activation_mb)
    model = load_model(model)
    input_names = {s.name for s in model_inputs(model)}
    types = tensor_types(model)
    missing = [n for n in candidates if n not in types and n not in input_names]
    if missing:
        raise ModelError(f"no such tensor in the model (or of unknown type): {', '.join(missing[:10])}")
    names = list(candidates)
    runner = Runner.open(model, names, threads=threads, budget_bytes=budget, name=_describe(model, "model"),
                         optimize=False)
    runner.prefetch_kernel = False
    signal = dict.fromkeys(names, 0.0)
    noise = {n: dict.fromkeys(candidates[n], 0.0) for n in names}
    for index, batch in enumerate(iter_batches(batches, runner.specs)):
        if index == 0:
            runner.size_parts(batch)
        for values in runner.parts(batch):
            for name in names:
                x = np.asarray(values[name], dtype=np.float32)
                signal[name] += sum_squares(x)
                for label, amax in candidates[name].items():
                    if not math.isfinite(amax) or amax < 0:
                        noise[name][label] = float("nan")
                        continue
                    noise[name][label] += sum_sq_diff(x, fake_quantize(x, amax))
            del values
        if progress is not None:
            progress(1)
    return {n: {label: sqnr_db(signal[n], e) for label, e in noise[n].items()} for n in names}


def best_per_tensor(raw: Mapping[str, Mapping[str, float]], sqnr: Mapping[str, Mapping[str, float]],
                    algorithms: Sequence[str], *, default: str = "mse") -> tuple[dict[str, float], dict[str, int]]:
    """(amax per tensor, how often each algorithm was picked): for each tensor `threshold_sqnr` scored, the
    algorithm whose amax gave the highest SQNR (a nan scores lowest; ties go to the first in `algorithms`); every
    other tensor keeps `default`'s amax. `raw` maps algorithm -> {tensor: amax}."""
    best = dict(raw[default])
    picks = dict.fromkeys(algorithms, 0)
    for tensor, scores in sqnr.items():
        pick = max(algorithms, key=lambda a: scores[a] if math.isfinite(scores[a]) else -math.inf)
        best[tensor] = raw[pick][tensor]
        picks[pick] += 1
    return best, picks
