"""Thresholds (amax) from an |x| histogram: TensorRT's entropy search, MinMax, percentile and MSE.

Pure functions of an `AbsHistogram`. `amax` is the symmetric threshold T of the range [-T, T]; TensorRT stores
scale = T / 127. Float32 where TensorRT uses float32 (widths, amax), float64 for sums of logs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .histogram import AbsHistogram

__all__ = [
    "NUM_LEVELS",
    "FIRST_CANDIDATE",
    "EntropySearch",
    "entropy_search",
    "entropy_amax",
    "kl_divergence_curve",
    "minmax_amax",
    "percentile_amax",
    "mse_amax",
    "ALGORITHMS",
    "compute_amax",
]

NUM_LEVELS = 128  # int8 has 127 magnitudes plus zero: TensorRT searches over 7 bits of |x|
FIRST_CANDIDATE = 128

# Two candidates whose divergences differ by less than this are a tie, and the first one wins. It makes
# "first argmin" mean what it means in exact arithmetic (e.g. many candidates with KL exactly 0) instead of
# depending on float rounding, which is ~1e-15 here.
_TIE_RTOL = 1e-9
_TIE_ATOL = 1e-12


@dataclass(frozen=True)
class EntropySearch:
    """The outcome of TensorRT's KL search: the amax, the chosen bin count and the whole divergence curve."""

    amax: float
    index: int  # i*: the number of bins kept; amax = (i* + 0.5) * bin_width
    candidates: np.ndarray  # i = FIRST_CANDIDATE .. num_bins
    divergence: np.ndarray  # KL(P || Q) for each candidate; +inf where Q misses mass of P
    bin_width: float


def kl_divergence_curve(counts: np.ndarray, *, num_levels: int = NUM_LEVELS, first: int = FIRST_CANDIDATE) -> np.ndarray:
    """KL(P_i || Q_i) for every i = first..len(counts), as TensorRT's EntropyCalibration2 defines them.

    P_i is counts[:i] with the outliers counts[i:] added to its last bin; Q_i quantises counts[:i] into
    `num_levels` levels (level(j) = floor(j * num_levels / i)) and spreads each level's mass evenly over its
    non-empty bins. No smoothing: the divergence is +inf when P has mass where Q has none.

    Computed for all candidates at once from prefix sums: per candidate only O(num_levels) work. With T the total,
    S_i the mass below i and o_i = T - S_i the outliers,
        KL(i) = [ sum_j P_j log P_j - sum_L (C_L + [L last] o_i) log(C_L / n_L) ] / T + log(S_i / T),
    where C_L and n_L are the mass and the non-empty bin count of level L.
    """
    h = np.asarray(counts, dtype=np.float64)
    nb = h.size
    if nb < first:
        raise ValueError(f"histogram has {nb} bins, fewer than the first candidate {first}")
    total = h.sum()
    i = np.arange(first, nb + 1, dtype=np.int64)
    if total <= 0:
        return np.full(i.size, np.inf)

    zero = np.zeros(1)
    mass = np.concatenate([zero, np.cumsum(h)])  # mass[k] = sum h[:k]
    nonzero = np.concatenate([zero, np.cumsum(h > 0, dtype=np.float64)])
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    plogp_prefix = np.concatenate([zero, np.cumsum(hlogh)])

    below = mass[i]  # S_i
    outliers = total - below
    last = h[i - 1] + outliers  # P[i-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = plogp_prefix[i - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)

    # Every level of every candidate is a run of bins [start, start + width) with width <= ceil(nb / levels), so
    # its term C log(C / n) is looked up in a table over (start, width): far fewer logs than candidates x levels.
    index, last_start = _level_layout(nb, num_levels, first)
    max_width = index.max() // nb + 1
    starts = np.arange(nb)[:, None]
    ends = np.minimum(starts + np.arange(max_width)[None, :], nb)
    c = mass[ends] - mass[starts]
    n = nonzero[ends] - nonzero[starts]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(n > 0, c * (np.log(np.where(c > 0, c, 1.0)) - np.log(np.where(n > 0, n, 1.0))), 0.0)
    plogq = term.T.ravel()[index].sum(axis=1)
    c_last = mass[i] - mass[last_start]
    n_last = nonzero[i] - nonzero[last_start]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q_last = np.where(n_last > 0, np.log(np.where(c_last > 0, c_last, 1.0) / np.where(n_last > 0, n_last, 1.0)), 0.0)
    plogq += outliers * log_q_last

    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (plogp - plogq) / total + np.log(below / total)
    # P has mass in bin i-1 (the outliers) where Q is empty: infinite divergence.
    kl[(h[i - 1] == 0) & (outliers > 0)] = np.inf
    kl[below <= 0] = np.inf
    return np.maximum(kl, 0.0, where=np.isfinite(kl), out=kl)


@functools.lru_cache(maxsize=8)
def _level_layout(num_bins: int, num_levels: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each level of each candidate lies, as flat indices into a (width, start) table, plus last-level starts.

    Level L of candidate i covers bins [ceil(L*i/levels), ceil((L+1)*i/levels)), i.e. level(j) = floor(j*levels/i).
    Depends only on the shape of the search, so it is computed once.
    """
    i = np.arange(first, num_bins + 1, dtype=np.int64)
    levels = np.arange(num_levels + 1, dtype=np.int64)
    edges = (levels[None, :] * i[:, None] + (num_levels - 1)) // num_levels
    start, width = edges[:, :-1], np.diff(edges, axis=1)
    index = (width * num_bins + start).astype(np.intp)
    index.setflags(write=False)
    last = edges[:, -2].copy()
    last.setflags(write=False)
    return index, last


def first_argmin(values: np.ndarray) -> int:
    best = np.min(values)
    if not np.isfinite(best):
        return int(values.size - 1)
    return int(np.flatnonzero(values <= best + _TIE_RTOL * abs(best) + _TIE_ATOL)[0])


def entropy_search(hist: AbsHistogram) -> EntropySearch:
    """TensorRT EntropyCalibration2 on a histogram: bin-0 suppression, KL over i = 128..2048, amax = (i* + 0.5) w.

    Bin 0 is set to bin 1's count first (the zero spike of post-ReLU tensors would otherwise dominate); the stored
    histogram is not modified. A histogram holding infinities gives amax = inf, an all-zero one amax = 0.
    """
    w = np.float32(hist.bin_width)
    candidates = np.arange(FIRST_CANDIDATE, hist.num_bins + 1)
    if hist.num_inf > 0 or not np.isfinite(w):
        return EntropySearch(float("inf"), hist.num_bins, candidates, np.full(candidates.size, np.nan), float(w))
    if hist.is_empty or w == 0:
        return EntropySearch(0.0, hist.num_bins, candidates, np.full(candidates.size, np.nan), float(w))
    counts = hist.counts.copy()
    counts[0] = counts[1]
    kl = kl_divergence_curve(counts)
    index = int(candidates[first_argmin(kl)])
    with np.errstate(over="ignore"):
        amax = np.float32(np.float32(index + 0.5) * w)
    return EntropySearch(float(amax), index, candidates, kl, float(w))


def entropy_amax(hist: AbsHistogram) -> float:
    """The amax TensorRT's EntropyCalibration2 picks for this histogram (float32 value as a Python float)."""
    return entropy_search(hist).amax


def minmax_amax(hist: AbsHistogram) -> float:
    """TensorRT MinMaxCalibration: the exact max|x| over all batches (no +0.5); inf if any value was infinite."""
    if hist.num_inf > 0:
        return float("inf")
    return float(np.float32(hist.abs_max))


def percentile_amax(hist: AbsHistogram, percentile: float = 99.99) -> float:
    """The upper edge of the bin where the |x| CDF reaches `percentile` %, capped at the true max|x|."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if hist.num_inf > 0:
        return float("inf")
    if hist.is_empty or hist.bin_width == 0:
        return 0.0
    cdf = np.cumsum(hist.counts, dtype=np.float64)
    target = cdf[-1] * (percentile / 100.0)
    k = int(np.searchsorted(cdf, target, side="left"))
    amax = np.float32(np.float32(k + 1) * np.float32(hist.bin_width))
    return float(min(amax, np.float32(hist.abs_max)))


def mse_amax(hist: AbsHistogram, *, first: int = 16, stride: int = 1) -> float:
    """The amax minimising the expected squared error of symmetric int8 quantisation over the histogram.

    Candidates are the bin edges k*w for k = first..num_bins; each bin's values are represented by its centre,
    rounded to the int8 grid of step amax/127 and clipped at amax.
    """
    if hist.num_inf > 0:
        return float("inf")
    if hist.is_empty or hist.bin_width == 0:
        return 0.0
    w = float(hist.bin_width)
    counts = hist.counts.astype(np.float64)
    nz = np.flatnonzero(counts)
    centres = (nz + 0.5) * w
    weights = counts[nz]
    ks = np.arange(max(1, first), hist.num_bins + 1, stride)
    errors = np.empty(ks.size)
    chunk = max(1, (1 << 22) // max(1, nz.size))
    for s in range(0, ks.size, chunk):
        amax = ks[s : s + chunk, None] * w
        step = amax / 127.0
        q = np.minimum(np.rint(centres[None, :] / step), 127.0) * step
        errors[s : s + chunk] = ((centres[None, :] - q) ** 2 * weights[None, :]).sum(axis=1)
    best = ks[first_argmin(errors)]
    return float(min(np.float32(best * w), np.float32(hist.abs_max)))


ALGORITHMS: dict[str, Callable[..., float]] = {
    "entropy2": entropy_amax,
    "minmax": minmax_amax,
    "percentile": percentile_amax,
    "mse": mse_amax,
}


def compute_amax(hist: AbsHistogram, algorithm: str = "entropy2", **options: float) -> float:
    """The amax of `hist` by the named algorithm (`entropy2`, `minmax`, `percentile`, `mse`)."""
    try:
        fn = ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}") from None
    return fn(hist, **options)
