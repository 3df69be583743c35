"""Per-tensor agreement between a reference cache (usually TensorRT's) and our calibration.

For the entropy calibrator the meaningful question is whether both picked the same KL index i: the amax is
(i + 0.5) * w, so a reference amax maps back to an index on our histogram. A few float32 ULPs at the same index come
from the forward pass (GPU vs CPU summation order), not from the algorithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .cache import CalibrationCache, amax_to_scale, entry_kind
from .result import CalibrationResult

__all__ = ["TensorAgreement", "Comparison", "compare", "ulp_distance", "DEFAULT_MAX_ULPS"]

DEFAULT_MAX_ULPS = 4


def ulp_distance(a: float, b: float) -> int | None:
    """How many float32 values lie between a and b (0 when equal); None when either is NaN or signs differ."""
    x, y = np.float32(a), np.float32(b)
    if np.isnan(x) or np.isnan(y):
        return None
    if x == y:
        return 0
    if np.signbit(x) != np.signbit(y):
        return None
    ix, iy = int(x.view(np.int32)), int(y.view(np.int32))
    return abs(ix - iy)


@dataclass(frozen=True)
class TensorAgreement:
    """One tensor: the reference and our amax, their distance, and whether they sit on the same KL index."""

    name: str
    reference_amax: float | None
    our_amax: float | None
    ulps: int | None  # float32 values between the two stored scales (what the cache files hold)
    ratio: float | None
    reference_index: float | None  # the reference amax expressed as a KL index on our histogram
    our_index: int | None
    verdict: str  # exact | same-bin | within-ulps | differs | only-reference | only-ours | internal

    @property
    def consistent(self) -> bool:
        return self.verdict in ("exact", "same-bin", "within-ulps")

    def to_json(self) -> dict[str, Any]:
        def num(v: Any) -> Any:
            return str(v) if isinstance(v, float) and not math.isfinite(v) else v

        return {k: num(v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    """Agreement of every tensor, in the reference's order, then tensors only we calibrated."""

    rows: list[TensorAgreement] = field(default_factory=list)
    max_ulps: int = DEFAULT_MAX_ULPS

    @property
    def shared(self) -> list[TensorAgreement]:
        return [r for r in self.rows if r.verdict not in ("only-reference", "only-ours", "internal")]

    @property
    def internal(self) -> list[str]:
        """Reference entries TensorRT made up (unnamed layers, parser helpers): no ONNX tensor to recompute them from."""
        return [r.name for r in self.rows if r.verdict == "internal"]

    @property
    def consistent(self) -> bool:
        """Every tensor both have agrees, and no reference tensor of the ONNX graph is missing from ours."""
        return all(r.consistent for r in self.shared) and not any(r.verdict == "only-reference" for r in self.rows)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out

    def summary(self) -> str:
        shared = self.shared
        agree = sum(r.consistent for r in shared)
        parts = [f"{agree}/{len(shared)} shared tensors consistent"]
        counts = self.counts()
        parts += [f"{counts[k]} {k}" for k in ("exact", "same-bin", "within-ulps", "differs") if counts.get(k)]
        for k in ("only-reference", "only-ours"):
            if counts.get(k):
                parts.append(f"{counts[k]} {k.replace('-', ' ')}")
        if counts.get("internal"):
            parts.append(f"{counts['internal']} TensorRT-internal entries not checked")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "summary": self.summary(),
            "max_ulps": self.max_ulps,
            "tensors": [r.to_json() for r in self.rows],
        }


def _index_of(amax: float, width: float) -> float | None:
    if not (math.isfinite(amax) and width > 0 and math.isfinite(width)):
        return None
    return amax / width - 0.5


def compare(
    reference: CalibrationCache,
    ours: CalibrationResult,
    *,
    max_ulps: int = DEFAULT_MAX_ULPS,
    initializers: Iterable[str] = (),
) -> Comparison:
    """Compare a reference cache with our calibration, tensor by tensor (names must match exactly).

    A reference entry we lack is `internal` when TensorRT made its name up (`core.cache.entry_kind`; pass the
    model's `initializers` to recognise TensorRT 10's `<initializer>_output` constants), else `only-reference`.
    """
    rows = []
    ref_amax = reference.amaxes()
    ref_scale = reference.scales
    initializers = frozenset(initializers)
    for name, r in ref_amax.items():
        o = ours.amax.get(name)
        if o is None:
            verdict = "only-reference" if entry_kind(name, initializers) == "named" else "internal"
            rows.append(TensorAgreement(name, r, None, None, None, None, None, verdict))
            continue
        ulps = ulp_distance(ref_scale[name], amax_to_scale(o))  # in the stored scale, the number a cache holds
        ratio = (r / o) if (o and math.isfinite(o) and math.isfinite(r)) else None
        ref_index = our_index = None
        hist = ours.histograms.get(ours.source_of(name))
        if ours.algorithm == "entropy2" and hist is not None:
            ref_index = _index_of(r, hist.bin_width)
            our_index = ours.entropy_index.get(ours.source_of(name))
        # Same bin: both amaxes land on the index we chose. Ours is located from its amax, not taken on trust, so a
        # wrong amax formula after a right search is not "same-bin" (issue 23 item 25).
        our_at = _index_of(o, hist.bin_width) if ref_index is not None else None
        if ulps == 0:
            verdict = "exact"
        elif (ref_index is not None and our_index is not None and our_at is not None
              and abs(ref_index - our_index) < 0.01 and abs(our_at - our_index) < 0.01):
            verdict = "same-bin"
        elif ulps is not None and ulps <= max_ulps:
            verdict = "within-ulps"
        else:
            verdict = "differs"
        rows.append(TensorAgreement(name, r, o, ulps, ratio, ref_index, our_index, verdict))
    for name, o in ours.amax.items():
        if name not in ref_amax:
            rows.append(TensorAgreement(name, None, o, None, None, None, ours.entropy_index.get(name), "only-ours"))
    return Comparison(rows, max_ulps)
