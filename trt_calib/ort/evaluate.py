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
log-probabilities, which is the logit margin. Per
intermediate tensor present in both graphs under the same name: SQNR = 10 log10(sum x^2 / sum (x - x_int8)^2),
accumulated batch by batch (activations are dropped after each batch).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import DataError, ModelError

__all__ = [
    "ORT_NOTE",
    "SESSION_MODE",
    "DEFAULT_MARGIN",
    "PROBABILITY_FLOOR",
    "TensorError",
    "OutputMetrics",
    "EvaluationReport",
    "evaluate",
    "threshold_sqnr",
    "log_softmax",
    "looks_like_probabilities",
    "log_probabilities",
    "kl_divergence",
    "top2_margin",
    "sqnr_db",
    "fake_quantize",
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
# An INT8 probability rounded to 0 where FP32 has mass would make KL infinite; it is floored here instead, so it
# costs p * log(p / 1e-12) (about 28 p nats).
PROBABILITY_FLOOR = 1e-12
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


# ---------------------------------------------------------------------------------------------- report
def _percent(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


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


@dataclass
class OutputMetrics:
    """One model output: absolute errors, and for a classifier output (N, C) agreement, KL and accuracy."""

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
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_classifier(self) -> bool:
        return self.kind is not None

    @property
    def agreement(self) -> float | None:
        """Share of samples whose INT8 top-1 class is the FP32 top-1 class."""
        return None if self.num_agree is None else self.num_agree / self.num_samples

    @property
    def confident_agreement(self) -> float | None:
        """Agreement on the samples with an FP32 top-1/top-2 margin above the report's margin (nan if none)."""
        if self.num_confident is None:
            return None
        return self.num_confident_agree / self.num_confident if self.num_confident else float("nan")

    @property
    def accuracy_fp32(self) -> float | None:
        return None if self.num_labels is None else self.num_correct_fp32 / self.num_labels

    @property
    def accuracy_int8(self) -> float | None:
        return None if self.num_labels is None else self.num_correct_int8 / self.num_labels

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "sample_shape": list(self.sample_shape),
            "num_samples": self.num_samples,
            "max_abs_error": _num(self.max_abs_error),
            "mean_abs_error": _num(self.mean_abs_error),
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
        return out


@dataclass
class EvaluationReport:
    """FP32 vs INT8 on held-out data: per-output metrics, the worst tensors by SQNR, and what ran."""

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

    def output(self, name: str) -> OutputMetrics:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output {name!r}; outputs are {', '.join(o.name for o in self.outputs)}")

    @property
    def primary(self) -> OutputMetrics:
        """The output labels apply to, else the first classifier output, else the first output."""
        if self.labels_output is not None:
            return self.output(self.labels_output)
        return next((o for o in self.outputs if o.is_classifier), self.outputs[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "margin": self.margin,
            "session": self.session,
            "note": self.note,
            "labels_output": self.labels_output,
            "seconds": round(self.seconds, 3),
            "outputs": [o.to_json() for o in self.outputs],
            "num_compared_tensors": self.num_compared,
            "worst_tensors": [t.to_json() for t in self.worst],
        }

    def format(self) -> str:
        """The report as text lines for a terminal."""
        lines = [
            f"INT8 vs FP32 on {self.num_samples} samples ({self.num_batches} batches)",
            f"ran: {self.session}",
            f"note: {self.note}",
        ]
        for o in self.outputs:
            shape = "x".join(str(d) for d in o.sample_shape) or "scalar"
            lines.append("")
            if o.is_classifier:
                how = "softmax applied" if o.kind == "logits" else "probabilities used as is"
                lines.append(f"output {o.name} ({shape} per sample, {o.kind}: {how})")
                rows = [
                    ("top-1 agreement with FP32", f"{_percent(o.agreement)} ({o.num_agree}/{o.num_samples})"),
                    (f"... where FP32 margin > {self.margin:g}",
                     f"{_percent(o.confident_agreement)} ({o.num_confident_agree}/{o.num_confident})"),
                    ("mean KL(FP32 || INT8)", f"{o.mean_kl:.4g} nats"),
                ]
                if o.num_labels is not None:
                    rows.append((f"top-1 accuracy ({o.num_labels} labels)",
                                 f"FP32 {_percent(o.accuracy_fp32)}  INT8 {_percent(o.accuracy_int8)}"))
            else:
                lines.append(f"output {o.name} ({shape} per sample; not a (N, C) classifier output)")
                rows = []
            rows.append(("|FP32 - INT8|", f"max {o.max_abs_error:.4g}  mean {o.mean_abs_error:.4g}"))
            lines += [f"  {label:<34}{value}" for label, value in rows]
        if self.worst:
            width = max([len(t.name) for t in self.worst] + [6])
            lines += ["", f"worst tensors by SQNR ({len(self.worst)} of {self.num_compared} compared by name):"]
            lines.append(f"  {'tensor':<{width}}  {'SQNR dB':>8}  {'rms FP32':>10}  {'rms error':>10}")
            for t in self.worst:
                lines.append(
                    f"  {t.name:<{width}}  {t.sqnr_db:8.2f}  {math.sqrt(t.signal_power):10.4g}  "
                    f"{math.sqrt(t.noise_power):10.4g}"
                )
        elif self.num_compared == 0:
            lines += ["", "no intermediate tensor of the FP32 graph exists under the same name in the INT8 graph"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- accumulation
def class_rows(value: np.ndarray) -> np.ndarray | None:
    """(N, C) scores when `value` is a classifier output: (N, C) or (N, C, 1, ...), C >= 2; else None."""
    if value.ndim < 2 or value.shape[1] < 2 or int(np.prod(value.shape[2:], dtype=np.int64)) != 1:
        return None
    return value.reshape(value.shape[0], value.shape[1])


class _OutputAccumulator:
    """Streams one output: error sums and per-sample top-1, margin and KL (a few numbers per sample)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sample_shape: tuple[int, ...] | None = None
        self.classifier = True
        self.abs_max = 0.0
        self.abs_sum = 0.0
        self.num_values = 0
        self.num_samples = 0
        self.prob_like = True
        self.top1_fp32: list[np.ndarray] = []
        self.top1_int8: list[np.ndarray] = []
        self.kl_logits: list[np.ndarray] = []
        self.kl_probs: list[np.ndarray] = []
        self.margin_logits: list[np.ndarray] = []
        self.margin_probs: list[np.ndarray] = []

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.sample_shape is None:
            self.sample_shape = tuple(a.shape[1:])
            self.classifier = class_rows(a) is not None and np.issubdtype(a.dtype, np.floating)
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if diff.size:
            self.abs_max = float(np.max([self.abs_max, diff.max()]))  # NaN anywhere stays NaN
            self.abs_sum += float(diff.sum())
        self.num_values += diff.size
        self.num_samples += a.shape[0] if a.ndim else 1
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

    def finish(self, margin: float, labels: np.ndarray | None) -> OutputMetrics:
        m = OutputMetrics(
            name=self.name,
            sample_shape=self.sample_shape or (),
            num_samples=self.num_samples,
            max_abs_error=self.abs_max,
            mean_abs_error=self.abs_sum / self.num_values if self.num_values else float("nan"),
        )
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


# ---------------------------------------------------------------------------------------------- evaluate
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
) -> EvaluationReport:
    """Run `fp32_model` and its Q/DQ version `int8_model` on `batches` and measure what INT8 changes.

    `labels` (one class index per evaluated sample, in batch order) give top-1 accuracy on `label_output` (default:
    the first (N, C) output). `worst` tensors with the lowest SQNR are listed (0 skips the per-tensor pass). Padded
    rows of a `BatchSource` with last_batch='pad' are left out of the output metrics.
    """
    from .model import calibrated_tensors, load_model, ort_session
    from .data import BatchSource, iter_batches

    started = time.perf_counter()
    fp32_role, int8_role = _describe(fp32_model, "FP32 model"), _describe(int8_model, "INT8 model")
    fp32, int8 = load_model(fp32_model), load_model(int8_model)
    specs, output_names = _check_pair(fp32, int8, fp32_role, int8_role)
    label_arr = None if labels is None else _check_labels(labels)
    if worst < 0:
        raise ValueError(f"worst must be >= 0, got {worst!r}")

    input_names = {s.name for s in specs}
    shared: list[str] = []
    if worst > 0:
        in_int8 = set(calibrated_tensors(int8))
        shared = [n for n in calibrated_tensors(fp32) if n in in_int8 and n not in input_names]
    fetch = output_names + [n for n in shared if n not in output_names]
    s32 = ort_session(fp32, fetch, optimize=False, threads=threads, role=fp32_role)
    s8 = ort_session(int8, fetch, optimize=False, threads=threads, role=int8_role)

    accs = {n: _OutputAccumulator(n) for n in output_names}
    sums = {n: [0.0, 0.0, 0] for n in shared}  # signal, noise, count
    padded = batches.num_padded if isinstance(batches, BatchSource) else 0
    last_index = len(batches) - 1 if padded else -1
    count = 0
    for index, batch in enumerate(iter_batches(batches, specs)):
        try:
            a = s32.run(fetch, batch)
        except Exception as exc:
            raise ModelError(f"{fp32_role}: onnxruntime failed on batch {index}: {exc}") from None
        try:
            b = s8.run(fetch, batch)
        except Exception as exc:
            raise ModelError(f"{int8_role}: onnxruntime failed on batch {index}: {exc}") from None
        for k, name in enumerate(fetch):
            x, y = np.asarray(a[k]), np.asarray(b[k])
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
                if index == last_index and x.ndim and x.shape[0] > padded:
                    x, y = x[: x.shape[0] - padded], y[: y.shape[0] - padded]
                accs[name].update(x, y)
        del a, b
        count += 1
        if progress is not None:
            progress(1)

    num_samples = accs[output_names[0]].num_samples
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
    tensors = [
        TensorError(n, sqnr_db(s, e), s / c if c else float("nan"), e / c if c else float("nan"), int(c))
        for n, (s, e, c) in sums.items()
    ]
    tensors.sort(key=lambda t: (math.isnan(t.sqnr_db), t.sqnr_db))
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
    )


def threshold_sqnr(
    model: Any,
    batches: Iterable[Any],
    candidates: Mapping[str, Mapping[str, float]],
    *,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """SQNR in dB of each tensor fake-quantised at each candidate amax, on the FP32 model's real activations.

    `candidates` maps tensor -> {label: amax}; the result maps tensor -> {label: SQNR}. The error is measured on the
    tensor alone (its inputs stay float), summed over all batches; a tensor whose amax is not finite gets nan.
    """
    from .model import tensor_types, load_model, model_inputs, ort_session
    from .data import iter_batches

    model = load_model(model)
    specs = model_inputs(model)
    input_names = {s.name for s in specs}
    types = tensor_types(model)
    missing = [n for n in candidates if n not in types and n not in input_names]
    if missing:
        raise ModelError(f"no such tensor in the model (or of unknown type): {', '.join(missing[:10])}")
    names = list(candidates)
    run_names = [n for n in names if n not in input_names]
    role = _describe(model, "model")
    session = ort_session(model, run_names, types=types, optimize=False, threads=threads, role=role)
    signal = dict.fromkeys(names, 0.0)
    noise = {n: dict.fromkeys(candidates[n], 0.0) for n in names}
    for index, batch in enumerate(iter_batches(batches, specs)):
        try:
            values = dict(zip(run_names, session.run(run_names, batch)))
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on batch {index}: {exc}") from None
        for name in names:
            x = np.asarray(batch[name] if name in input_names else values[name], dtype=np.float32)
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
