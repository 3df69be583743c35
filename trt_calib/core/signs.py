"""Sign-aware analysis: signed histograms, what TensorRT's symmetric int8 range costs, and asymmetric Q/DQ math.

TensorRT quantises every activation on the symmetric grid [-127, 127] * amax/127 with zero point 0, and chooses amax
from a histogram of |x|. For a tensor that is never negative (post-ReLU, softmax, sigmoid) half of the grid is never
used. This module measures that cost instead of assuming it:

- `SignedHistogram`: TensorRT's |x| histogram (bit for bit the `AbsHistogram` calibration builds) plus the counts of
  the negative values in the same bins, and the number of exact zeros. `ort.collect.collect_signed` fills one per tensor.
- `Quantizer` and `quantization_error`: the expected squared error, SQNR and clipped share of any int8/uint8
  quantizer over a histogram, with each bin's values spread evenly over the bin (exact zeros kept exact).
- `effective_bits`: how many bits of the grid the bulk of a tensor's values actually spans.
- `signed_entropy_search`: TensorRT's KL search on the signed histogram against the symmetric grid.
- `asymmetric_params` / `asymmetric_quantizer`: uint8 (or int8 with zero point) parameters for runtimes that accept
  them (onnxruntime, DLA with its parser flag); TensorRT on GPUs rejects non-zero zero points.
- `compare_choices`: TensorRT's entropy amax next to the sign-aware alternatives, each with its expected error.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .cache import amax_to_scale
from .histogram import DEFAULT_NUM_BINS, AbsHistogram, as_float32, coarsen
from .thresholds import FIRST_CANDIDATE, EntropySearch, first_argmin, entropy_search, kl_divergence_curve
from .thresholds import minmax_amax, mse_amax, percentile_amax

__all__ = [
    "SignedHistogram",
    "as_signed",
    "classify_sign",
    "expected_mse",
    "SKEW_RATIO",
    "save_signed_histograms",
    "load_any_histograms",
    "Quantizer",
    "symmetric_quantizer",
    "asymmetric_params",
    "asymmetric_quantizer",
    "ASYMMETRIC_METHODS",
    "QuantError",
    "quantization_error",
    "effective_bits",
    "BULK_COVERAGE",
    "signed_kl_curve",
    "signed_entropy_search",
    "QuantChoice",
    "compare_choices",
]

log = logging.getLogger(__name__)

#: Sub-points per histogram bin in the error model: each bin's mass is spread evenly over the bin.
SUBPOINTS = 16
#: effective_bits measures the grid span of the values that remain after dropping the largest 0.1% of |x|.
BULK_COVERAGE = 99.9
# Relative slack when asking "is x outside the grid": amax/127*127 can be an ULP below amax.
_RANGE_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------- signed histogram
class SignedHistogram:
    """TensorRT's |x| histogram (`.abs`, an exact `AbsHistogram`) plus the negative values' counts in the same bins.

    Sharing the bins makes both sides exact: `positive + negative == abs.counts` bin for bin, and the |x| histogram,
    hence TensorRT's thresholds, are the ones calibration computes from the same batches. `num_zero` counts exact
    zeros (they sit in bin 0 of the positive side and quantise without error); None when unknown.
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, *, range: float | None = None) -> None:
        self.abs = AbsHistogram(num_bins, range=range)
        self.negative = np.zeros(self.abs.num_bins, dtype=np.int64)
        self.num_zero: int | None = 0

    # Delegated views of the |x| histogram, so a SignedHistogram reads like an AbsHistogram.
    num_bins = property(lambda self: self.abs.num_bins)
    range = property(lambda self: self.abs.range)
    bin_width = property(lambda self: self.abs.bin_width)
    edges = property(lambda self: self.abs.edges)
    counts = property(lambda self: self.abs.counts)
    num_values = property(lambda self: self.abs.num_values)
    num_negative = property(lambda self: self.abs.num_negative)
    num_nan = property(lambda self: self.abs.num_nan)
    num_inf = property(lambda self: self.abs.num_inf)
    abs_max = property(lambda self: self.abs.abs_max)
    min = property(lambda self: self.abs.min)
    max = property(lambda self: self.abs.max)
    is_empty = property(lambda self: self.abs.is_empty)

    @property
    def positive(self) -> np.ndarray:
        """Counts of the non-negative values (exact zeros included, in bin 0)."""
        return self.abs.counts - self.negative

    def update(self, x: Any) -> None:
        """Fold one calibration batch in: the |x| histogram exactly as TensorRT's, and the negatives in its bins
        (counted in the same pass over the data)."""
        a = as_float32(x)
        self.begin_batch()
        self.add_part(a)
        self.end_batch()

    def begin_batch(self, abs_max: float | None = None) -> None:
        """Start a batch that arrives in parts (`add_part`, then `end_batch`): the same as one `update` with the
        whole batch. As `AbsHistogram.begin_batch`: a known batch max|x| sets or grows the range before binning
        (else the first batch's values wait for `end_batch`)."""
        self._before = self.abs.range
        self.abs.begin_batch(abs_max, signs=True)

    def add_part(self, x: Any) -> None:
        """Add part of the current batch (`AbsHistogram.add_part`: keep `x` unmodified until `end_batch`)."""
        self.abs.add_part(x)

    def end_batch(self) -> None:
        """Finish the batch begun with `begin_batch`."""
        before = self._before
        batch = self.abs.end_batch()
        after = self.abs.range
        if before > 0 and after != before:
            # The |x| histogram doubled its range k times and merged bin pairs; do the same to the negatives.
            ratio = after / before
            k = int(round(np.log2(ratio))) if np.isfinite(ratio) else int(np.log2(self.abs.num_bins)) + 1
            self.negative = coarsen(self.negative, k)
        if batch is None:
            return
        self.negative += batch.negative
        if self.num_zero is not None:
            self.num_zero += batch.num_zero

    @classmethod
    def from_abs(cls, hist: AbsHistogram) -> "SignedHistogram | None":
        """The signed histogram of a one-sided tensor from its |x| histogram; None when both signs occur.

        Exact zeros are then unknown (`num_zero` None): the |x| histogram does not count them.
        """
        if hist.num_negative not in (0, hist.num_values):
            return None
        sh = cls(hist.num_bins)
        sh.abs = hist.copy()
        sh.negative = hist.counts.copy() if hist.num_negative and hist.num_values else np.zeros_like(hist.counts)
        sh.num_zero = 0 if hist.num_negative and hist.num_values else None
        return sh

    def to_dict(self) -> dict[str, Any]:
        """The whole state: the |x| histogram's `to_dict()` plus `negative` and `num_zero`."""
        return {**self.abs.to_dict(), "negative": self.negative.copy(), "num_zero": self.num_zero}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "SignedHistogram":
        """Rebuild a histogram saved by `to_dict`."""
        state = dict(state)
        negative = np.asarray(state.pop("negative"), dtype=np.int64)
        num_zero = state.pop("num_zero")
        sh = cls(int(state["num_bins"]))
        sh.abs = AbsHistogram.from_dict(state)
        if negative.shape != sh.abs.counts.shape or (negative < 0).any() or (negative > sh.abs.counts).any():
            raise ValueError("signed histogram state: negative counts must lie between 0 and the |x| counts")
        sh.negative = negative.copy()
        sh.num_zero = None if num_zero is None else int(num_zero)
        return sh

    def __repr__(self) -> str:
        return f"SignedHistogram({self.abs!r}, negative={int(self.negative.sum())}, zeros={self.num_zero})"


AnyHistogram = AbsHistogram | SignedHistogram


def as_signed(hist: AnyHistogram) -> SignedHistogram | None:
    """`hist` as a SignedHistogram: itself, the one-sided conversion of an |x| histogram, or None if signs are unknown."""
    if isinstance(hist, SignedHistogram):
        return hist
    return SignedHistogram.from_abs(hist)


def _abs_of(hist: AnyHistogram) -> AbsHistogram:
    return hist.abs if isinstance(hist, SignedHistogram) else hist


def save_signed_histograms(path: str | os.PathLike, histograms: Mapping[str, SignedHistogram]) -> Path:
    """Save signed histograms to one .npz (atomically) in `histogram.save_histograms`' layout plus the negatives.

    `histogram.load_histograms` reads the file as plain |x| histograms; `load_any_histograms` restores the signs.
    """
    from .._util import atomic_write

    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, (name, sh) in enumerate(histograms.items()):
        state = sh.abs.to_dict()
        arrays[f"counts_{i}"] = state.pop("counts")
        arrays[f"negative_{i}"] = sh.negative
        meta.append({"name": name, **state, "signed": {"num_zero": sh.num_zero}})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def load_any_histograms(path: str | os.PathLike) -> dict[str, AnyHistogram]:
    """Histograms from `save_histograms` (|x| only) or `save_signed_histograms` (signed), in their saved order."""
    from ..errors import DataError

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            out: dict[str, AnyHistogram] = {}
            for i, m in enumerate(meta):
                m = dict(m)
                name = m.pop("name")
                signed = m.pop("signed", None)
                state = {**m, "counts": z[f"counts_{i}"]}
                if signed is not None and f"negative_{i}" in z.files:
                    out[name] = SignedHistogram.from_dict(
                        {**state, "negative": z[f"negative_{i}"], "num_zero": signed.get("num_zero")}
                    )
                else:
                    out[name] = AbsHistogram.from_dict(state)
    except FileNotFoundError:
        raise DataError(f"{path}: no such histogram file") from None
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{path}: not a histogram file ({exc}). Hint: write one with `trt-calib calibrate --save-histograms`"
        ) from None
    return out


# ---------------------------------------------------------------------------------------------- sign structure
#: Both signs present, and the smaller side's extent below this fraction of the larger: "skewed".
SKEW_RATIO = 0.25


def classify_sign(hist: Any) -> str:
    """non-negative, non-positive, skewed, symmetric, or unknown (no finite value seen), from an AbsHistogram."""
    if hist is None or hist.num_values == 0:
        return "unknown"
    lo, hi = float(hist.min), float(hist.max)
    if lo >= 0:
        return "non-negative"
    if hi <= 0:
        return "non-positive"
    small, big = sorted((-lo, hi))
    return "skewed" if small < SKEW_RATIO * big else "symmetric"


def expected_mse(hist: Any, amax: float) -> float:
    """Mean squared error of symmetric INT8 quantisation at `amax` over the histogram (values at bin centres)."""
    if hist.num_values == 0 or hist.bin_width == 0 or not amax > 0:
        return 0.0
    w = float(hist.bin_width)
    counts = np.asarray(hist.counts, dtype=np.float64)
    nz = np.flatnonzero(counts)
    centres = (nz + 0.5) * w
    step = float(amax) / 127.0
    q = np.minimum(np.rint(centres / step), 127.0) * step
    return float(((centres - q) ** 2 * counts[nz]).sum() / counts.sum())


# ---------------------------------------------------------------------------------------------- quantizers
@dataclass(frozen=True)
class Quantizer:
    """A uniform quantizer q = clip(rint(x / scale) + zero_point, qmin, qmax), x' = (q - zero_point) * scale.

    Rounding is half to even, as in TensorRT and ONNX QuantizeLinear. TensorRT's is `symmetric_quantizer(amax)`.
    """

    scale: float  # a float32 value
    zero_point: int
    qmin: int
    qmax: int

    @property
    def lo(self) -> float:
        """The most negative representable value."""
        return (self.qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        """The most positive representable value."""
        return (self.qmax - self.zero_point) * self.scale

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    @property
    def is_symmetric(self) -> bool:
        """True for a zero point of 0 on a grid symmetric around it (what TensorRT runs)."""
        return self.zero_point == 0 and self.qmin == -self.qmax

    def quantize(self, x: Any) -> np.ndarray:
        """Integer codes of `x` (float64 arithmetic on the float32 scale)."""
        x = np.asarray(x, dtype=np.float64)
        if self.scale == 0:
            return np.full(x.shape, self.zero_point, dtype=np.int64)
        return np.clip(np.rint(x / self.scale) + self.zero_point, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: Any) -> np.ndarray:
        """Real values of integer codes."""
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale

    def describe(self) -> str:
        """One line, e.g. 'int8 [-127, 127] x 0.0123' or 'uint8 [0, 255] x 0.004, zero point 0'."""
        kind = "uint8" if self.qmin >= 0 else "int8"
        zp = "" if self.zero_point == 0 and self.is_symmetric else f", zero point {self.zero_point}"
        return f"{kind} [{self.qmin}, {self.qmax}] x {self.scale:.6g}{zp}"


def symmetric_quantizer(amax: float) -> Quantizer:
    """TensorRT's int8 quantizer for threshold `amax`: scale = float32(amax) / 127, zero point 0, codes [-127, 127]."""
    amax = float(amax)
    if not (np.isfinite(amax) and amax >= 0):
        raise ValueError(f"amax must be finite and >= 0, got {amax!r}")
    return Quantizer(amax_to_scale(amax), 0, -127, 127)


def asymmetric_params(min: float, max: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """(scale, zero_point) of the affine quantizer covering [min, max] on codes [qmin, qmax], with 0 exact.

    The range is first widened to contain 0 (lo = min(min, 0), hi = max(max, 0)), then
    scale = float32((hi - lo) / (qmax - qmin)) and zero_point = rint(qmin - lo / scale), clamped to [qmin, qmax].
    Zero is exactly representable: x = 0 quantises to `zero_point` and dequantises to exactly 0, so zero padding,
    ReLU zeros and sparse activations stay exact. Rounding the zero point shifts the covered range by at most
    scale/2, so every x in [min, max] is reproduced within scale/2. An all-zero range gives (1.0, the code nearest 0).
    qmin=0, qmax=255 is onnxruntime's uint8 activation type; qmin=-128, qmax=127 is int8 with a zero point.
    """
    lo, hi = float(min), float(max)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"min and max must be finite, got [{lo!r}, {hi!r}]")
    if lo > hi:
        raise ValueError(f"min must not exceed max, got [{lo!r}, {hi!r}]")
    if int(qmin) != qmin or int(qmax) != qmax or qmin >= qmax:
        raise ValueError(f"need integer codes qmin < qmax, got [{qmin!r}, {qmax!r}]")
    qmin, qmax = int(qmin), int(qmax)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.float32((hi - lo) / (qmax - qmin))
    if not scale > 0:  # an all-zero range (or one too narrow for float32): only zero matters
        return 1.0, int(np.clip(0, qmin, qmax))
    zero_point = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return float(scale), zero_point


#: How `asymmetric_quantizer` chooses the range: the observed [min, max], or the [min, max] shrunk by the common
#: factor that minimises the expected squared error (needs the signs: a SignedHistogram or a one-sided tensor).
ASYMMETRIC_METHODS = ("minmax", "mse")


def asymmetric_quantizer(hist: AnyHistogram, method: str = "minmax", *, qmin: int = 0, qmax: int = 255) -> Quantizer:
    """An affine quantizer for one tensor from its histogram: `asymmetric_params` over the range `method` picks.

    "minmax" needs only the signed extrema that every |x| histogram tracks. "mse" searches t in (0, 1] for the range
    [t*min, t*max] with the lowest expected squared error (values at bin centres), so it needs the signed
    distribution: a SignedHistogram, or an |x| histogram of a one-sided tensor.
    """
    if method not in ASYMMETRIC_METHODS:
        raise ValueError(f"unknown asymmetric method {method!r}; choose one of {', '.join(ASYMMETRIC_METHODS)}")
    if hist.num_inf or hist.is_empty:
        raise ValueError(f"an asymmetric range needs finite values; histogram has {hist.num_values} finite, "
                         f"{hist.num_inf} infinite")
    lo, hi = min(float(hist.min), 0.0), max(float(hist.max), 0.0)
    if method == "mse":
        sh = as_signed(hist)
        if sh is None:
            raise ValueError("the mse range needs the signs of the values: pass a SignedHistogram "
                             "(signs.collect_signed), or use method='minmax'")
        x, weight = _points(sh, subpoints=1)
        t = _best_shrink(x, weight, lo, hi, qmin, qmax)
        lo, hi = lo * t, hi * t
    scale, zp = asymmetric_params(lo, hi, qmin, qmax)
    return Quantizer(scale, zp, int(qmin), int(qmax))


def _best_shrink(x: np.ndarray, weight: np.ndarray, lo: float, hi: float, qmin: int, qmax: int,
                 candidates: int = 512) -> float:
    """The factor t in (0, 1] for which the range [t*lo, t*hi] quantises (x, weight) with the least squared error."""
    ts = np.arange(1, candidates + 1, dtype=np.float64) / candidates
    errors = np.empty(ts.size)
    chunk = max(1, (1 << 21) // max(1, x.size))
    for s in range(0, ts.size, chunk):
        t = ts[s : s + chunk, None]
        scale = ((hi - lo) * t / (qmax - qmin)).astype(np.float32).astype(np.float64)  # float32, as stored
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qmin - lo * t / scale), qmin, qmax)
        q = np.clip(np.rint(x[None, :] / scale) + zp, qmin, qmax)
        errors[s : s + chunk] = (((q - zp) * scale - x[None, :]) ** 2 * weight[None, :]).sum(axis=1)
    return float(ts[first_argmin(errors)])


# ---------------------------------------------------------------------------------------------- expected error
@dataclass(frozen=True)
class QuantError:
    """Expected quantisation error of one quantizer over one tensor's histogram."""

    mse: float  # mean of (x - x')^2 over all finite values
    signal: float  # mean of x^2
    clipped: float  # share of values outside [lo, hi] (they saturate)

    @property
    def sqnr_db(self) -> float:
        """10 log10(signal / mse): +inf for an error-free quantizer, nan for an all-zero tensor."""
        if self.mse <= 0:
            return float("inf") if self.signal > 0 else float("nan")
        return float(10.0 * np.log10(self.signal / self.mse)) if self.signal > 0 else float("-inf")


def _side_points(counts: np.ndarray, width: float, cap: float, subpoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of one side (>= 0): each non-empty bin's count spread evenly over `subpoints` points, capped at `cap`."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return np.zeros(0), np.zeros(0)
    offsets = (np.arange(subpoints) + 0.5) / subpoints
    x = np.minimum((nz[:, None] + offsets[None, :]) * width, cap).ravel()
    weight = np.repeat(counts[nz].astype(np.float64) / subpoints, subpoints)
    return x, weight


def _points(hist: AnyHistogram, subpoints: int = SUBPOINTS) -> tuple[np.ndarray, np.ndarray]:
    """(values, weights) standing for the histogram's finite values: signed when the signs are known, else |x|."""
    w = float(hist.bin_width)
    sh = as_signed(hist)
    if sh is None:  # both signs, |x| only: fine for symmetric quantizers, whose error depends on |x| alone
        return _side_points(np.asarray(hist.counts), w, float(hist.abs_max), subpoints)
    pos = sh.positive.copy()
    zeros = 0
    if sh.num_zero:
        zeros = min(int(sh.num_zero), int(pos[0]))
        pos[0] -= zeros
    xp, wp = _side_points(pos, w, max(float(sh.max), 0.0), subpoints)
    xn, wn = _side_points(sh.negative, w, max(-float(sh.min), 0.0), subpoints)
    parts_x, parts_w = [xp, -xn], [wp, wn]
    if zeros:
        parts_x.append(np.zeros(1))
        parts_w.append(np.array([float(zeros)]))
    return np.concatenate(parts_x), np.concatenate(parts_w)


def quantization_error(hist: AnyHistogram, quantizer: Quantizer, *, subpoints: int = SUBPOINTS) -> QuantError:
    """Expected error of `quantizer` over the tensor the histogram describes.

    Model: each bin's values are spread evenly over the bin (`subpoints` points per bin, none beyond the observed
    extremes); exact zeros, when a SignedHistogram counted them, stay exact. An |x| histogram of a tensor with both
    signs serves symmetric quantizers only (their error depends on |x| alone); asymmetric ones need the signs.
    """
    if quantizer.scale < 0 or not np.isfinite(quantizer.scale):
        raise ValueError(f"quantizer scale must be finite and >= 0, got {quantizer.scale!r}")
    if hist.num_inf:
        return QuantError(float("inf"), float("inf"), float("nan"))
    if hist.is_empty or hist.bin_width == 0:
        return QuantError(0.0, 0.0, 0.0)
    if not quantizer.is_symmetric and as_signed(hist) is None:
        raise ValueError("an asymmetric quantizer's error needs the signs of the values: pass a SignedHistogram "
                         "(signs.collect_signed); an |x| histogram serves only symmetric quantizers")
    x, weight = _points(hist, subpoints)
    total = weight.sum()
    err = quantizer.dequantize(quantizer.quantize(x)) - x
    slack_hi = quantizer.hi * (1 + _RANGE_RTOL)
    slack_lo = quantizer.lo * (1 + _RANGE_RTOL)
    clipped = weight[(x > slack_hi) | (x < slack_lo)].sum()
    return QuantError(
        mse=float((err * err * weight).sum() / total),
        signal=float((x * x * weight).sum() / total),
        clipped=float(clipped / total),
    )


def effective_bits(hist: AnyHistogram, quantizer: Quantizer, *, coverage: float = BULK_COVERAGE) -> float:
    """log2 of the number of grid codes the bulk of the tensor's values spans.

    The bulk is [max(min, -p), min(max, p)] with p the `coverage` percentile of |x| (99.9: the largest 0.1% of |x|
    are left out, so a few outliers do not count as use of the grid). Codes spanned = code(upper) - code(lower) + 1.
    A symmetric tensor whose amax equals p spans all 255 codes (7.99 bits); a one-sided tensor spans at most 128
    (7 bits) of TensorRT's grid and 256 (8 bits) of a uint8 grid; an amax 8x above p loses 3 more bits.
    """
    h = _abs_of(hist)
    if h.is_empty or h.num_inf or quantizer.scale == 0:
        return 0.0
    p = percentile_amax(h, coverage)
    upper = min(float(h.max), p)
    lower = min(max(float(h.min), -p), upper)
    codes = quantizer.quantize(np.array([lower, upper]))
    return float(np.log2(int(codes[1] - codes[0]) + 1))


# ---------------------------------------------------------------------------------------------- signed KL
def signed_kl_curve(sh: SignedHistogram) -> np.ndarray:
    """KL(P_i || Q_i) over candidates i = 128..num_bins for the signed histogram against the symmetric grid.

    The candidate keeps i bins on each side ([-(i + 0.5) w, (i + 0.5) w]); each side is quantised into 128 levels
    as in TensorRT's |x| search (so 255 codes in all), with its outliers folded into its own last bin. Bin 0 of each
    side is suppressed as TensorRT does for |x|. With no negatives this is exactly TensorRT's curve.
    The joint divergence follows from the per-side ones: for a side with total T_s and kept mass S_s,
    sum P log(P/Q) (unnormalised) = T_s (KL_s - log(S_s / T_s)), and KL = (sum_s of those) / T + log(S / T).
    """
    sides = [sh.positive.astype(np.float64), sh.negative.astype(np.float64)]
    candidates = np.arange(FIRST_CANDIDATE, sh.num_bins + 1)
    unnormalised = np.zeros(candidates.size)
    kept = np.zeros(candidates.size)
    total = 0.0
    for counts in sides:
        counts = counts.copy()
        counts[0] = counts[1]
        t = counts.sum()
        if t <= 0:
            continue
        below = np.cumsum(counts)[candidates - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            unnormalised += t * (kl_divergence_curve(counts) - np.log(below / t))
        kept += below
        total += t
    if total <= 0:
        return np.full(candidates.size, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = unnormalised / total + np.log(kept / total)
    kl[~np.isfinite(kl)] = np.inf
    return np.maximum(kl, 0.0)


def signed_entropy_search(sh: SignedHistogram) -> EntropySearch:
    """TensorRT's entropy search run on the signed histogram: amax = (i* + 0.5) w for the first minimum of the curve."""
    w = np.float32(sh.bin_width)
    candidates = np.arange(FIRST_CANDIDATE, sh.num_bins + 1)
    if sh.num_inf or not np.isfinite(w) or sh.is_empty or w == 0:
        return entropy_search(sh.abs)  # the degenerate cases are TensorRT's
    kl = signed_kl_curve(sh)
    index = int(candidates[first_argmin(kl)])
    with np.errstate(over="ignore"):
        amax = np.float32(np.float32(index + 0.5) * w)
    return EntropySearch(float(amax), index, candidates, kl, float(w))


# ---------------------------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class QuantChoice:
    """One way to quantise a tensor, and what it costs: the expected error, clipped share and effective bits."""

    name: str
    quantizer: Quantizer
    error: QuantError
    bits: float
    tensorrt: bool  # True when TensorRT's symmetric int8 grid can run it (zero point 0)
    amax: float | None = None  # the symmetric threshold it came from (None for asymmetric ones)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (non-finite floats stay floats)."""
        q = self.quantizer
        return {
            "name": self.name,
            "amax": self.amax,
            "grid": q.describe(),
            "scale": q.scale,
            "zero_point": q.zero_point,
            "qmin": q.qmin,
            "qmax": q.qmax,
            "lo": q.lo,
            "hi": q.hi,
            "mse": self.error.mse,
            "sqnr_db": self.error.sqnr_db,
            "clipped": self.error.clipped,
            "bits": self.bits,
            "tensorrt": self.tensorrt,
        }


def compare_choices(
    hist: AnyHistogram,
    *,
    percentile: float = 99.99,
    entropy: EntropySearch | None = None,
) -> list[QuantChoice]:
    """TensorRT's entropy amax next to the other symmetric thresholds and the sign-aware alternatives.

    Symmetric int8 (TensorRT can run these): entropy2, minmax, percentile, mse (the error of a symmetric grid depends
    on |x| only, so this is also the signed-histogram MSE), and signed-kl (needs a SignedHistogram with negatives;
    for a one-sided tensor it equals entropy2). Asymmetric uint8, for runtimes that accept zero points: uint8-minmax,
    and uint8-mse (needs the signs). Each with its expected error from `quantization_error`.
    """
    h = _abs_of(hist)
    if h.is_empty or h.num_inf or h.bin_width == 0:
        return []
    entropy = entropy if entropy is not None else entropy_search(h)
    amaxes = {
        "entropy2": entropy.amax,
        "minmax": minmax_amax(h),
        "percentile": percentile_amax(h, percentile),
        "mse": mse_amax(h),
    }
    sh = as_signed(hist)
    if isinstance(hist, SignedHistogram) and hist.num_negative:
        amaxes["signed-kl"] = signed_entropy_search(hist).amax
    # A threshold can overflow float32 ((i + 0.5) * width for a tensor reaching FLT_MAX): TensorRT writes inf for
    # it; such a threshold has no grid, so it is left out of the choices (the report shows it as inf).
    quantizers = {name: symmetric_quantizer(a) for name, a in amaxes.items() if np.isfinite(a)}
    if sh is not None:
        quantizers["uint8-minmax"] = asymmetric_quantizer(sh, "minmax")
        quantizers["uint8-mse"] = asymmetric_quantizer(sh, "mse")
    source = hist if sh is None else sh  # the signs, where known, serve every quantizer
    return [
        QuantChoice(name, q, quantization_error(source, q), effective_bits(h, q), q.is_symmetric, amaxes.get(name))
        for name, q in quantizers.items()
    ]
