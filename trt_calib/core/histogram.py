"""TensorRT's |x| calibration histogram: 2048 bins, first-batch range, power-of-two growth.

TensorRT's EntropyCalibration2 sees each tensor once per calibration batch. The first non-empty batch fixes the
range to its float32 max|x|; a later batch with a larger max doubles the range (merging adjacent bin pairs, so the
bin count stays the same) until the new max fits. That is why batch size and batch order change the result.
A fixed-range mode (`AbsHistogram(range=r)`) never grows, so histograms of the same range merge exactly: the basis
for sharded or order-independent collection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import kernel as _kernel

__all__ = ["AbsHistogram", "BatchSigns", "DEFAULT_NUM_BINS", "finite_abs_max", "grown_ranges", "save_histograms",
           "load_histograms"]

DEFAULT_NUM_BINS = 2048
_BLOCK = 1 << 16  # values per block: keeps the temporaries in cache (numpy's histogram does the same)
_FORMAT_VERSION = 1
_TINY = np.finfo(np.float32).tiny


class BatchSigns(NamedTuple):
    """What a batch begun with `signs=True` adds besides |x|: its negative values' counts in the same bins, and
    its exact zeros (`SignedHistogram` keeps both)."""

    negative: np.ndarray
    num_zero: int


class AbsHistogram:
    """Histogram of |x| over [0, range) with `num_bins` equal bins, updated once per calibration batch.

    Non-finite values are never binned: NaNs and infinities are counted in `num_nan` and `num_inf`.
    Besides the counts it tracks what the thresholds and reports need: the exact max|x| over all batches
    (`abs_max`, for MinMax), the signed finite extrema (`min`, `max`) and the number of negative values.
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, *, range: float | None = None) -> None:
        if int(num_bins) != num_bins or num_bins < 2 or num_bins % 2:
            raise ValueError(f"num_bins must be an even integer >= 2, got {num_bins!r}")
        if range is not None and not (np.isfinite(range) and range > 0):
            raise ValueError(f"a fixed range must be finite and > 0, got {range!r}")
        self.num_bins = int(num_bins)
        self.counts = np.zeros(self.num_bins, dtype=np.int64)
        self.fixed = range is not None
        self._range: np.float32 | None = None if range is None else np.float32(range)
        self.num_values = 0  # finite values binned
        self.num_nan = 0
        self.num_inf = 0
        self.num_negative = 0
        self.num_batches = 0
        self.abs_max = np.float32(0.0)
        self.min = np.float32(np.inf)
        self.max = np.float32(-np.inf)
        self._pending: np.ndarray | None = None  # counts of the batch in progress (begin_batch .. end_batch)
        self._negative: np.ndarray | None = None  # the batch's negative counts, when begun with signs=True
        self._num_zero = 0
        self._held: list[np.ndarray] = []  # finite values above the range, binned when the batch ends
        self._held_signed = False  # whether held values may be negative
        self._batch_size = 0
        self._batch_max = np.float32(0.0)  # the batch's finite max|x| so far

    # ------------------------------------------------------------------ properties
    @property
    def range(self) -> float:
        """Upper edge of the histogram (float32); 0 until a non-zero value was seen."""
        return float(self._range) if self._range is not None else 0.0

    @property
    def bin_width(self) -> float:
        """Width of one bin, float32(range / num_bins), as TensorRT computes it."""
        return float(self._width())

    @property
    def edges(self) -> np.ndarray:
        """Bin edges (num_bins + 1 values) in float64, for plotting."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * float(self._width())

    @property
    def is_empty(self) -> bool:
        """True before any finite value was seen."""
        return self.num_values == 0

    def _width(self) -> np.float32:
        if self._range is None:
            return np.float32(0.0)
        return np.float32(self._range / np.float32(self.num_bins))

    # ------------------------------------------------------------------ updates
    def update(self, x: Any) -> None:
        """Fold one calibration batch into the histogram (one pass over the data)."""
        a = as_float32(x)  # refused before the batch opens
        self.begin_batch()
        self.add_part(a)
        self.end_batch()

    def begin_batch(self, abs_max: float | None = None, *, signs: bool = False) -> None:
        """Start a calibration batch that arrives in parts (`add_part`), ended by `end_batch`.

        The result equals one `update` with the whole batch. If the batch's finite max|x| is known, passing it sets
        (first batch) or grows the range before binning, so no part has to be held back until `end_batch`.
        `signs=True` also counts the batch's negative values and zeros (`end_batch` returns them).
        """
        if self._pending is not None:
            raise RuntimeError("begin_batch() called again before end_batch()")
        if abs_max is not None and np.isfinite(abs_max) and abs_max > 0:
            self._fit(np.float32(abs_max))
        self._pending = np.zeros(self.num_bins + 1, dtype=np.int64)  # one extra bin: |x| == range exactly
        self._negative = np.zeros(self.num_bins + 1, dtype=np.int64) if signs else None
        self._num_zero = 0
        self._held = []
        self._held_signed = False
        self._batch_size = 0
        self._batch_max = np.float32(0.0)

    def add_part(self, x: Any) -> None:
        """Add part of the current batch. Values above the current range wait for `end_batch` (they grow it), so the
        batch may keep a reference to `x` until then: do not modify it in between."""
        if self._pending is None:
            raise RuntimeError("add_part() called outside begin_batch() ... end_batch()")
        a = as_float32(x)
        if a.size == 0:
            return
        self._batch_size += a.size
        compiled = _kernel.compiled(a.size)
        if compiled is None:
            self._add_numpy(a)
        else:
            self._add_compiled(compiled, a)

    def _add_compiled(self, compiled: Any, a: np.ndarray) -> None:
        """add_part on the compiled kernel: statistics and bins in one pass (see `kernel`)."""
        known = self._range is not None and self._range != 0
        if self.fixed:
            r = _kernel.scan(compiled, a, self._width(), np.inf, self.num_bins - 1, self._pending, self._negative)
        elif known:
            r = _kernel.scan(compiled, a, self._width(), self._range, self.num_bins, self._pending, self._negative)
        else:
            r = _kernel.scan(compiled, a)  # first batch: statistics now, bins when the batch's range is known
        self.num_nan += r.num_nan
        self.num_inf += r.num_inf
        self._num_zero += r.num_zero
        if r.num_finite == 0:
            return
        self._add_stats(r.lo, r.hi, r.num_finite, r.num_negative)
        if self.fixed:
            return
        if not known:
            self._hold(a if r.num_finite == a.size else a[np.isfinite(a)], r.lo < 0)
        elif r.num_above:
            mag = np.abs(a)
            self._hold(a[(mag > self._range) & (mag != np.inf)], r.lo < 0)

    def _add_numpy(self, a: np.ndarray) -> None:
        """add_part in numpy (the reference): statistics, then bins in blocks."""
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(a)
            nan = int(np.count_nonzero(np.isnan(a)))
            self.num_nan += nan
            self.num_inf += int(a.size - nan - np.count_nonzero(finite))
            a = a[finite]
            if a.size == 0:
                return
            lo, hi = a.min(), a.max()
        nonneg = lo >= 0
        if self._negative is not None:
            self._num_zero += int(np.count_nonzero(a == 0))
        part_max = self._add_stats(lo, hi, a.size, 0 if nonneg else int(np.count_nonzero(a < 0)))
        if self.fixed:
            self._bin_numpy(a, nonneg, clip=self.num_bins - 1)
        elif self._range is None or self._range == 0:
            self._hold(a, not nonneg)
        elif part_max > self._range:
            mag = a if nonneg else np.abs(a)
            above = mag > self._range
            self._hold(a[above], not nonneg)
            self._bin_numpy(a[~above], nonneg)
        else:
            self._bin_numpy(a, nonneg)

    def _add_stats(self, lo: np.float32, hi: np.float32, count: int, negative: int) -> np.float32:
        """Fold a part's finite extrema and counts into the statistics; returns the part's max|x|."""
        lo, hi = lo + np.float32(0.0), hi + np.float32(0.0)  # a zero extremum is +0.0, whichever zero numpy found
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        part_max = np.float32(max(-lo, hi))
        self.abs_max = max(self.abs_max, part_max)
        self._batch_max = max(self._batch_max, part_max)
        self.num_values += int(count)
        self.num_negative += int(negative)
        return part_max

    def _hold(self, values: np.ndarray, signed: bool) -> None:
        """Keep finite values for `end_batch` (they are above the range, or the range is not known yet)."""
        if values.size:
            self._held.append(values)
            self._held_signed |= bool(signed)

    def end_batch(self) -> BatchSigns | None:
        """Finish the batch: grow the range if held values need it (merging bin pairs), then add its counts.

        Returns the batch's negative counts and zeros when it was begun with `signs=True` (else None).
        """
        if self._pending is None:
            raise RuntimeError("end_batch() called without begin_batch()")
        pending, negative, held = self._pending, self._negative, self._held
        self._pending, self._negative, self._held = None, None, []
        if self._batch_size == 0:
            return None
        self.num_batches += 1
        if held:
            values = np.concatenate(held) if len(held) > 1 else held[0]
            first = self._range is None or self._range == 0
            before = self._range
            self._fit(self._batch_max)  # the largest held |x|: held values are all the batch's, or those above
            if not first and self._range != before:
                k = int(round(np.log2(float(self._range) / float(before)))) if np.isfinite(self._range) else 64
                pending = _shift_bins(pending, k)
                negative = None if negative is None else _shift_bins(negative, k)
            self._bin_held(pending, negative, values)
        pending[self.num_bins - 1] += pending[self.num_bins]
        self.counts += pending[: self.num_bins]
        if negative is None:
            return None
        negative[self.num_bins - 1] += negative[self.num_bins]
        return BatchSigns(negative[: self.num_bins], self._num_zero)

    def _bin_held(self, pending: np.ndarray, negative: np.ndarray | None, values: np.ndarray) -> None:
        """Bin the held values (all within the range now) into `pending`, their negatives into `negative`."""
        compiled = _kernel.compiled(values.size)
        if compiled is not None:
            _kernel.scan(compiled, values, self._width(), np.inf, self.num_bins, pending, negative)
            return
        signed = self._held_signed
        self._bin_into(pending, values, not signed)
        if negative is not None and signed:
            self._bin_into(negative, values[values < 0], False)

    def _bin_numpy(self, a: np.ndarray, nonneg: bool, clip: int | None = None) -> None:
        """Bin finite values into the batch's counts, and their negatives into its negative counts if kept."""
        self._bin_into(self._pending, a, nonneg, clip)
        if self._negative is not None and not nonneg:
            self._bin_into(self._negative, a[a < 0], False, clip)

    def _fit(self, batch_max: np.float32) -> None:
        """Set the range from the first non-zero batch, or double it until `batch_max` fits."""
        if self.fixed or batch_max <= 0:
            return  # fixed ranges never move: larger values clamp into the last bin
        if self._range is None or self._range == 0:
            # Zeros seen so far sit in bin 0 whatever the range, so starting the range here loses nothing.
            self._range = np.float32(batch_max)
            return
        k, grown = _doublings(self._range, batch_max)
        self.counts = coarsen(self.counts, k)
        self._range = grown

    def _bin_into(self, pending: np.ndarray, a: np.ndarray, nonneg: bool, clip: int | None = None) -> None:
        """Count finite values into `pending`: bin = floor(|x| / w), in blocks that stay in cache.

        Values up to the range give bins <= num_bins (the extra bin holds |x| == range and is folded into the last
        one); `clip` caps the bin where values may exceed the range (fixed range). The cap is taken on the float
        quotient, before the conversion, so that quotients beyond the integer range clamp too.
        """
        w = self._width()
        if w == 0 or not np.isfinite(w):
            # Range 0 (only zeros so far) or grown past float32: everything lands in bin 0.
            pending[0] += a.size
            return
        if w < _TINY and clip is None:
            clip = self.num_bins  # a subnormal width loses precision; keep indices in bounds
        buf = np.empty(min(a.size, _BLOCK), dtype=np.float32)
        for start in range(0, a.size, _BLOCK):
            block = a[start : start + _BLOCK]
            out = buf[: block.size]
            if nonneg:
                np.divide(block, w, out=out)
            else:
                np.abs(block, out=out)
                np.divide(out, w, out=out)
            if clip is not None:
                np.minimum(out, np.float32(clip), out=out)
            pending += np.bincount(out.astype(np.intp), minlength=pending.size)

    def merge(self, other: "AbsHistogram") -> "AbsHistogram":
        """Add `other` into this histogram (in place) and return self.

        Exact for fixed-range histograms of the same range. Growing histograms merge when doubling the smaller range
        (in float32, as growth does) reaches the larger one: the smaller is coarsened first, which is what growth
        itself does to earlier counts. So a histogram of batches 1..k merged with one of batches k+1..n that was
        `resumed` at the range of batches 1..k equals the histogram of batches 1..n.
        """
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        if self.fixed != other.fixed:
            raise ValueError("cannot merge a fixed-range histogram with a growing one")
        counts = other.counts
        if other._range and self._range and other._range != self._range:
            if self.fixed:
                raise ValueError(f"fixed ranges differ ({self.range!r} vs {other.range!r}); merge needs equal ranges")
            small, big = sorted((self._range, other._range))
            k, grown = _doublings(small, big)
            if grown != big:
                raise ValueError(
                    f"ranges {self.range!r} and {other.range!r} are not a power of two apart; cannot merge exactly"
                )
            if self._range < other._range:
                self.counts = coarsen(self.counts, k)
                self._range = other._range
            else:
                counts = coarsen(other.counts, k)
        elif not self._range:
            self._range = other._range
        self.counts += counts
        self.num_values += other.num_values
        self.num_nan += other.num_nan
        self.num_inf += other.num_inf
        self.num_negative += other.num_negative
        self.num_batches += other.num_batches
        self.abs_max = max(self.abs_max, other.abs_max)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def resumed(cls, range: float, num_bins: int = DEFAULT_NUM_BINS) -> "AbsHistogram":
        """An empty growing histogram whose range is already `range` (0: none yet), as TensorRT's is after earlier
        batches: later batches bin and grow exactly as they would there, and `merge` adds the earlier counts."""
        h = cls(num_bins)
        if not (np.isfinite(range) or range == np.inf) or range < 0:
            raise ValueError(f"a resumed range must be >= 0, got {range!r}")
        h._range = np.float32(range) if range > 0 else None
        return h

    def copy(self) -> "AbsHistogram":
        """An independent copy (counts included)."""
        return AbsHistogram.from_dict(self.to_dict())

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain Python values and one int64 array (JSON-able after `counts.tolist()`)."""
        return {
            "format": _FORMAT_VERSION,
            "num_bins": self.num_bins,
            "fixed": self.fixed,
            "range": None if self._range is None else float(self._range),
            "counts": self.counts.copy(),
            "num_values": self.num_values,
            "num_nan": self.num_nan,
            "num_inf": self.num_inf,
            "num_negative": self.num_negative,
            "num_batches": self.num_batches,
            "abs_max": float(self.abs_max),
            "min": float(self.min),
            "max": float(self.max),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "AbsHistogram":
        """Rebuild a histogram saved by `to_dict` (counts may be a list or an array)."""
        if state.get("format", _FORMAT_VERSION) != _FORMAT_VERSION:
            raise ValueError(f"unknown histogram state format {state.get('format')!r}")
        counts = np.asarray(state["counts"], dtype=np.int64)
        num_bins = int(state["num_bins"])
        if counts.shape != (num_bins,):
            raise ValueError(f"histogram state has {counts.size} counts for {num_bins} bins")
        rng = state["range"]
        h = cls(num_bins, range=rng if state["fixed"] else None)
        if not state["fixed"] and rng is not None:
            h._range = np.float32(rng)
        h.counts = counts.copy()
        for key in ("num_values", "num_nan", "num_inf", "num_negative", "num_batches"):
            setattr(h, key, int(state[key]))
        h.abs_max = np.float32(state["abs_max"])
        h.min = np.float32(state["min"])
        h.max = np.float32(state["max"])
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsHistogram):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        return all(
            np.array_equal(a[k], b[k]) if k == "counts" else (a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]))
            for k in a
        )

    def __repr__(self) -> str:
        return (
            f"AbsHistogram(num_bins={self.num_bins}, range={self.range!r}, values={self.num_values}, "
            f"batches={self.num_batches}, nan={self.num_nan}, inf={self.num_inf}{', fixed' if self.fixed else ''})"
        )


def as_float32(x: Any) -> np.ndarray:
    """`x` as a flat float32 array (a view when it already is one); non-numeric data is refused."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"histogram data must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float32)
    return a.reshape(-1)


def finite_abs_max(x: Any) -> float:
    """max|x| over the finite values of `x` in float32 (0.0 when there are none).

    numpy's vectorised min and max come first (about 0.13 ns a value, a third of the compiled kernel's full scan,
    and they never wait for the kernel to load); only data holding a NaN or an infinity takes the slower path.
    """
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    if a.size == 0:
        return 0.0
    lo, hi = a.min(), a.max()
    if np.isfinite(lo) and np.isfinite(hi):
        return float(max(-lo, hi))
    compiled = _kernel.compiled(a.size)
    if compiled is not None:
        r = _kernel.scan(compiled, a)
        return float(max(-r.lo, r.hi)) if r.num_finite else 0.0
    a = a[np.isfinite(a)]
    return float(max(-a.min(), a.max())) if a.size else 0.0


def _doublings(rng: np.float32, target: np.float32) -> tuple[int, np.float32]:
    """TensorRT's growth: how many float32 doublings take `rng` to at least `target`, and where they end (inf when
    the range outgrows float32)."""
    k, grown = 0, np.float32(rng)
    with np.errstate(over="ignore"):
        while grown < target:
            grown = np.float32(grown * np.float32(2.0))
            k += 1
    return k, grown


def grown_ranges(maxima: Any) -> np.ndarray:
    """TensorRT's histogram ranges after each batch, from each batch's finite max|x| (one row per batch, one column
    per tensor): the first non-zero max, doubled in float32 whenever a later batch exceeds the range; 0 before any
    non-zero value. Row b is the range a histogram has after batches 0..b, whatever their counts were."""
    maxima = np.asarray(maxima, dtype=np.float32)
    out = np.zeros_like(maxima)
    rng = np.zeros(maxima.shape[1:], dtype=np.float32)
    with np.errstate(over="ignore"):
        for b, m in enumerate(maxima):
            rng = np.where(rng == 0, m, rng)
            while np.any(rng < m):
                rng = np.where(rng < m, rng * np.float32(2.0), rng).astype(np.float32)
            out[b] = rng
    return out


def _shift_bins(pending: np.ndarray, k: int) -> np.ndarray:
    """Counts binned at width w re-binned at width w * 2**k: bin j moves to j >> k (exact: halving is exact)."""
    target = np.arange(pending.size) >> min(k, 62)
    return np.bincount(target, weights=pending, minlength=pending.size).astype(np.int64)


def coarsen(counts: np.ndarray, k: int) -> np.ndarray:
    """Counts after doubling the range k times: adjacent bin pairs merged, the upper half emptied."""
    counts = counts.copy()
    for _ in range(min(k, int(np.log2(counts.size)) + 1)):
        merged = counts.reshape(-1, 2).sum(axis=1)
        counts[: merged.size] = merged
        counts[merged.size :] = 0
    return counts


def save_histograms(path: str | os.PathLike, histograms: dict[str, AbsHistogram]) -> Path:
    """Save named histograms to one .npz file (written atomically)."""
    import io
    import json

    from .._util import atomic_write

    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, (name, h) in enumerate(histograms.items()):
        state = h.to_dict()
        arrays[f"counts_{i}"] = state.pop("counts")
        meta.append({"name": name, **state})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def load_histograms(path: str | os.PathLike) -> dict[str, AbsHistogram]:
    """Load histograms saved by `save_histograms`, in their saved order."""
    import json

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode("utf-8"))
        out: dict[str, AbsHistogram] = {}
        for i, m in enumerate(meta):
            name = m.pop("name")
            out[name] = AbsHistogram.from_dict({**m, "counts": z[f"counts_{i}"]})
    return out

