"""The outcome of a calibration as data: per-tensor amax, histograms, and the cache they make.

Pure numpy: the thresholds of a set of histograms by any algorithm, and the record a calibration returns. Shared by
the onnxruntime collector, the TensorRT calibrator's cross-check and the comparison with a reference cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .cache import CalibrationCache, amax_to_scale, make_header, scale_to_hex
from .histogram import AbsHistogram
from .thresholds import compute_amax, entropy_search

__all__ = ["ALGORITHM_HEADERS", "GLOBAL_RANGE_NOTE", "CalibrationResult", "amax_from_histograms"]

# The cache header each algorithm is written with. TensorRT reads a cache only when the header names the calibrator
# reading it; percentile and MSE are not TensorRT calibrators, so their scales go out under EntropyCalibration2,
# the calibrator trtexec --calib and most build scripts read caches with.
ALGORITHM_HEADERS = {
    "entropy2": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
}

# What a cache calibrated with range_mode="global" must say about itself. It goes into the sidecar and the JSON, not
# into the cache: TensorRT's own cache reader is closed source, and the readers we can see (trtexec, ModelOpt,
# onnxruntime's TensorRT EP, ours) either fail on a line that is not "name: hex" or were not shown to skip it.
GLOBAL_RANGE_NOTE = (
    "not TensorRT's algorithm: each histogram's range is the tensor's max|x| over all batches (a first pass), not "
    "the first batch's max doubled as later batches exceed it, so the scales do not depend on batch size or order. "
    "TensorRT reads the cache and uses its scales as they are; it would not compute the same ones itself"
)


@dataclass
class CalibrationResult:
    """The outcome of a CPU calibration: per-tensor amax (TensorRT order), the histograms and the cache."""

    amax: dict[str, float]
    histograms: dict[str, AbsHistogram]
    algorithm: str
    trt_version: str
    tied: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose scale it took
    entropy_index: dict[str, int] = field(default_factory=dict)  # entropy2: the chosen bin count per tensor
    num_batches: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    range_mode: str = "trt"  # "global": fixed ranges from a first pass (GLOBAL_RANGE_NOTE)
    optimization: str = "basic"  # onnxruntime's graph optimisation for the calibration runs
    # tensors TensorRT names inside If/Loop/Scan bodies that have no entry, and why (ort.control_flow)
    uncovered: dict[str, str] = field(default_factory=dict)

    @property
    def cache(self) -> CalibrationCache:
        """The TensorRT calibration cache these thresholds make."""
        return CalibrationCache.from_amax(
            self.amax, algorithm=ALGORITHM_HEADERS[self.algorithm], trt_version=self.trt_version
        )

    def source_of(self, name: str) -> str:
        """The tensor whose histogram decided `name`'s scale (itself unless tied)."""
        return self.tied.get(name, name)

    def to_json(self) -> dict[str, Any]:
        """Per-tensor details as JSON-able values (inf/nan as strings)."""
        def num(v: float) -> float | str:
            return v if np.isfinite(v) else str(v)

        tensors = []
        for name, amax in self.amax.items():
            h = self.histograms.get(name)
            row: dict[str, Any] = {
                "name": name,
                "amax": num(amax),
                "scale": num(amax_to_scale(amax)),
                "hex": scale_to_hex(amax_to_scale(amax)),
            }
            if name in self.tied:
                row["tied_to"] = self.tied[name]
            if name in self.entropy_index:
                row["entropy_index"] = self.entropy_index[name]
            if h is not None:
                row.update(
                    range=num(h.range),
                    abs_max=num(float(h.abs_max)),
                    min=num(float(h.min)) if h.num_values else None,
                    max=num(float(h.max)) if h.num_values else None,
                    num_values=h.num_values,
                    num_negative=h.num_negative,
                    num_nan=h.num_nan,
                    num_inf=h.num_inf,
                )
            tensors.append(row)
        out: dict[str, Any] = {
            "algorithm": self.algorithm,
            "header": make_header(ALGORITHM_HEADERS[self.algorithm], self.trt_version),
            "trt_version": self.trt_version,
            "range_mode": self.range_mode,
            "optimization": self.optimization,
            "num_batches": self.num_batches,
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "tensors": tensors,
            "uncovered": [{"name": n, "reason": r} for n, r in self.uncovered.items()],
        }
        if self.range_mode != "trt":
            out["note"] = GLOBAL_RANGE_NOTE
        return out


def amax_from_histograms(
    histograms: Mapping[str, AbsHistogram], algorithm: str = "entropy2", **options: float
) -> tuple[dict[str, float], dict[str, int]]:
    """amax per tensor by `algorithm`; for entropy2 also the chosen bin count per tensor."""
    if algorithm not in ALGORITHM_HEADERS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHM_HEADERS)}")
    amax: dict[str, float] = {}
    index: dict[str, int] = {}
    for name, h in histograms.items():
        if algorithm == "entropy2":
            result = entropy_search(h)
            amax[name], index[name] = result.amax, result.index
        else:
            amax[name] = compute_amax(h, algorithm, **options)
    return amax, index
