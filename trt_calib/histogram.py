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
from typing import Any

import numpy as np

__all__ = ["AbsHistogram", "DEFAULT_NUM_BINS", "save_histograms", "load_histograms"]

DEFAULT_NUM_BINS = 2048
_BLOCK = 1 << 16  # values per block: keeps the temporaries in cache (numpy's histogram does the same)
_FORMAT_VERSION = 1


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
        """Fold one calibration batch into the histogram (one pass over the data, in blocks)."""
        a = np.asarray(x)
        if a.dtype != np.float32:
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise TypeError(f"histogram data must be numeric, got dtype {a.dtype}")
            a = a.astype(np.float32)
        a = a.reshape(-1)
        if a.size == 0:
            return
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(a)
            nan = int(np.count_nonzero(np.isnan(a)))
            self.num_nan += nan
            self.num_inf += int(a.size - nan - np.count_nonzero(finite))
            a = a[finite]
            if a.size == 0:
                self.num_batches += 1
                return
            lo, hi = a.min(), a.max()
        self.num_batches += 1
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        batch_max = np.float32(max(-lo, hi))
        self.abs_max = max(self.abs_max, batch_max)
        self._fit(batch_max)
        self.num_values += int(a.size)
        self._bin(a)

    def _fit(self, batch_max: np.float32) -> None:
        """Set the range from the first non-zero batch, or double it until `batch_max` fits."""
        if self.fixed or batch_max <= 0:
            return  # fixed ranges never move: larger values clamp into the last bin
        if self._range is None or self._range == 0:
            # Zeros seen so far sit in bin 0 whatever the range, so starting the range here loses nothing.
            self._range = batch_max
            return
        k = 0
        grown = self._range
        with np.errstate(over="ignore"):
            while grown < batch_max:
                grown = np.float32(grown * np.float32(2.0))
                k += 1
        self.counts = _coarsen(self.counts, k)
        self._range = grown

    def _bin(self, a: np.ndarray) -> None:
        """Add finite values to the counts: bin = min(floor(|x| / w), num_bins - 1)."""
        w = self._width()
        last = self.num_bins - 1
        negatives = 0
        if self._range is None or w == 0 or not np.isfinite(w):
            # All zeros (range 0), or a range grown past float32: everything lands in bin 0.
            self.counts[0] += a.size
            self.num_negative += int(np.count_nonzero(a < 0))
            return
        buf = np.empty(min(a.size, _BLOCK), dtype=np.float32)
        for start in range(0, a.size, _BLOCK):
            block = a[start : start + _BLOCK]
            out = buf[: block.size]
            negatives += int(np.count_nonzero(block < 0))
            np.abs(block, out=out)
            np.divide(out, w, out=out)
            idx = out.astype(np.intp)
            np.minimum(idx, last, out=idx)
            self.counts += np.bincount(idx, minlength=self.num_bins)
        self.num_negative += negatives

    def merge(self, other: "AbsHistogram") -> "AbsHistogram":
        """Add `other` into this histogram (in place) and return self.

        Exact for fixed-range histograms of the same range. Growing histograms merge when one range is the other
        times a power of two (the smaller is coarsened first), which is what growth produces from a common start.
        """
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        if self.fixed != other.fixed:
            raise ValueError("cannot merge a fixed-range histogram with a growing one")
        counts = other.counts
        if other._range is not None and self._range is not None and other._range != self._range:
            if self.fixed:
                raise ValueError(f"fixed ranges differ ({self.range!r} vs {other.range!r}); merge needs equal ranges")
            big, small = (self._range, other._range) if self._range > other._range else (other._range, self._range)
            ratio = float(big) / float(small) if small > 0 else np.inf
            k = int(round(np.log2(ratio))) if np.isfinite(ratio) else -1
            if k < 1 or np.float32(small * np.float32(2.0**k)) != big:
                raise ValueError(
                    f"ranges {self.range!r} and {other.range!r} are not a power of two apart; cannot merge exactly"
                )
            if self._range < other._range:
                self.counts = _coarsen(self.counts, k)
                self._range = other._range
            else:
                counts = _coarsen(other.counts, k)
        elif self._range is None or self._range == 0:
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


def _coarsen(counts: np.ndarray, k: int) -> np.ndarray:
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

    from ._util import atomic_write

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

