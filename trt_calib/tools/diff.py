"""`diff`: two caches tensor by tensor: ratio B/A, float32 ULPs, the change in histogram bins, entries in one only."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..core.cache import CalibrationCache, hex_to_scale
from .entries import json_float, load_cache

__all__ = ["DiffRow", "CacheDiff", "diff_caches"]


@dataclass(frozen=True)
class DiffRow:
    """One tensor in A and/or B: amax both sides, ratio B/A, ULP distance, and the change in histogram bins."""

    name: str
    a_amax: float | None
    b_amax: float | None
    a_hex: str | None
    b_hex: str | None
    ratio: float | None  # B / A
    ulps: int | None
    bins: float | None  # (B - A) / bin width
    bins_exact: bool  # True when the bin width came from a saved histogram, False for the amax/2048 estimate
    status: str  # same | changed | only-a | only-b

    @property
    def log_ratio(self) -> float | None:
        """|ln(B/A)|: inf when one side is 0 or not finite and the other is not, None when neither is usable."""
        if self.status != "changed":
            return 0.0 if self.status == "same" else None
        if self.ratio is not None and self.ratio > 0 and math.isfinite(self.ratio):
            return abs(math.log(self.ratio))
        return math.inf

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("name", "a_amax", "b_amax", "a_hex", "b_hex", "ratio", "ulps", "bins", "bins_exact", "status"):
            value = getattr(self, key)
            out[key] = json_float(value) if isinstance(value, float) else value
        out["abs_log_ratio"] = json_float(self.log_ratio)
        return out


@dataclass
class CacheDiff:
    """Two caches compared entry by entry; `rows` are shared tensors, largest change first."""

    a: str | None
    b: str | None
    a_header: str
    b_header: str
    rows: list[DiffRow]
    only_a: list[DiffRow]
    only_b: list[DiffRow]
    header_differences: list[str]
    duplicates_a: list[str] = field(default_factory=list)
    duplicates_b: list[str] = field(default_factory=list)

    def duplicate_notes(self) -> list[str]:
        """One line per side whose cache repeats names: the diff compares the last value of each."""
        notes = []
        for side, names in (("A", self.duplicates_a), ("B", self.duplicates_b)):
            if names:
                shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
                notes.append(f"{side} repeats {len(names)} name(s) ({shown}); the diff compares the last value of "
                             "each (what trt-calib reads; TensorRT's choice is not documented)")
        return notes

    @property
    def changed(self) -> list[DiffRow]:
        return [r for r in self.rows if r.status == "changed"]

    @property
    def identical(self) -> bool:
        """Same header and the same hex for every tensor, none only on one side."""
        return not (self.header_differences or self.changed or self.only_a or self.only_b)

    def summary(self) -> str:
        ratios = [r.ratio for r in self.rows if r.ratio is not None and r.ratio > 0 and math.isfinite(r.ratio)]
        parts = [f"{len(self.rows)} shared tensors, {len(self.rows) - len(self.changed)} identical, "
                 f"{len(self.changed)} changed"]
        if ratios:
            parts.append(f"median B/A {float(np.median(ratios)):.4g}")
            worst = max(self.rows, key=lambda r: r.log_ratio if r.log_ratio is not None else -1.0)
            if worst.status == "changed":
                parts.append(f"largest {worst.name} x{worst.ratio:.4g}" if worst.ratio else f"largest {worst.name}")
        parts.append(f"{len(self.only_a)} only in A, {len(self.only_b)} only in B")
        return ", ".join(parts)

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        rows = self.rows if top is None else self.rows[:top]
        return {
            "a": self.a,
            "b": self.b,
            "a_header": self.a_header,
            "b_header": self.b_header,
            "header_differences": self.header_differences,
            "duplicates_a": self.duplicates_a,
            "duplicates_b": self.duplicates_b,
            "notes": self.duplicate_notes(),
            "identical": self.identical,
            "summary": self.summary(),
            "bins_note": "bins = (B - A) / bin width; the width is A's saved histogram's when given, else the "
            "estimate A_amax / 2048 (an upper bound: a histogram's range is at least the amax chosen from it)",
            "tensors": [r.to_json() for r in rows],
            "only_a": [r.to_json() for r in self.only_a],
            "only_b": [r.to_json() for r in self.only_b],
        }


def _histogram_width(name: str, histograms: Mapping[str, Any] | None) -> float | None:
    if not histograms or name not in histograms:
        return None
    width = float(histograms[name].bin_width)
    return width if width > 0 and math.isfinite(width) else None


def diff_caches(
    a: CalibrationCache | str | os.PathLike,
    b: CalibrationCache | str | os.PathLike,
    *,
    histograms_a: Mapping[str, Any] | None = None,
    histograms_b: Mapping[str, Any] | None = None,
) -> CacheDiff:
    """Per-tensor ratio B/A, ULP distance and bin difference, largest |log ratio| first; entries only in one file.

    Bin differences use A's saved histogram (`histograms_a`, e.g. from `calibrate --save-histograms`) when given,
    else B's, else the estimate A_amax / 2048 as the bin width.
    """
    from ..core.compare import ulp_distance

    ca, cb = load_cache(a), load_cache(b)
    sa, sb = ca.scales, cb.scales
    ha = {e.name: e.hex for e in ca.entries}
    hb = {e.name: e.hex for e in cb.entries}
    amax_a, amax_b = ca.amaxes(), cb.amaxes()
    header_differences = []
    if ca.version_number != cb.version_number:
        header_differences.append(f"TensorRT version: A {ca.trt_version}, B {cb.trt_version}")
    if ca.algorithm != cb.algorithm:
        header_differences.append(f"calibrator: A {ca.algorithm}, B {cb.algorithm}")
    rows, only_a, only_b = [], [], []
    for name in sa:
        x = amax_a[name]
        if name not in sb:
            only_a.append(DiffRow(name, x, None, ha[name], None, None, None, None, False, "only-a"))
            continue
        y = amax_b[name]
        same = hex_to_scale(ha[name]) == hex_to_scale(hb[name]) or ha[name].lower() == hb[name].lower()
        ratio = y / x if (x and math.isfinite(x) and math.isfinite(y)) else None
        width = _histogram_width(name, histograms_a) or _histogram_width(name, histograms_b)
        exact = width is not None
        if width is None and x > 0 and math.isfinite(x):
            width = x / 2048.0
        bins = (y - x) / width if width and math.isfinite(y) and math.isfinite(x) else None
        ulps = ulp_distance(sa[name], sb[name])
        rows.append(DiffRow(name, x, y, ha[name], hb[name], ratio, ulps, bins, exact, "same" if same else "changed"))
    for name in sb:
        if name not in sa:
            only_b.append(DiffRow(name, None, amax_b[name], None, hb[name], None, None, None, False, "only-b"))
    rows.sort(key=lambda r: -(r.log_ratio if r.log_ratio is not None else math.inf))
    return CacheDiff(ca.source, cb.source, ca.header, cb.header, rows, only_a, only_b, header_differences,
                     ca.duplicates(), cb.duplicates())
