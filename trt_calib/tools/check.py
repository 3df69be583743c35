"""`check`: recompute a cache on the CPU from the same data and say, per tensor, whether it is consistent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..core.cache import CalibrationCache
from ..errors import CalibrationError
from .entries import cache_version, check_version, load_cache

__all__ = ["CheckReport", "check_cache", "check_recomputable"]

# The header algorithms `check` can recompute, as `collect.calibrate` algorithms.
_RECOMPUTABLE = {"EntropyCalibration2": "entropy2", "MinMaxCalibration": "minmax"}


@dataclass
class CheckReport:
    """A cache recomputed on the CPU: per-tensor agreement (`compare.Comparison`) and the overall verdict."""

    cache: str | None
    header: str
    algorithm: str
    trt_version: str
    comparison: Any
    num_batches: int

    @property
    def not_recomputable(self) -> list[str]:
        """Entries TensorRT made up (unnamed layers, parser helpers): no model tensor to recompute them from."""
        return self.comparison.internal

    @property
    def consistent(self) -> bool:
        """Every cache entry we recomputed agrees, and every entry that names a model tensor was recomputed."""
        return self.comparison.consistent

    def summary(self) -> str:
        return f"{self.comparison.summary()} -> {'consistent' if self.consistent else 'NOT consistent'}"

    def to_json(self) -> dict[str, Any]:
        out = self.comparison.to_json()
        out.update(
            cache=self.cache,
            header=self.header,
            algorithm=self.algorithm,
            trt_version=self.trt_version,
            num_batches=self.num_batches,
            not_recomputable=self.not_recomputable,
            consistent=self.consistent,
            summary=self.summary(),
        )
        return out


def check_recomputable(cache: CalibrationCache) -> str:
    """The `calibrate` algorithm that recomputes `cache`; CalibrationError for a cache `check` cannot verify (another
    calibrator, or no entries at all), raised before any data is read."""
    algorithm = _RECOMPUTABLE.get(cache.algorithm)
    if algorithm is None:
        raise CalibrationError(
            f"{cache.source or 'cache'}: header {cache.header!r} names calibrator {cache.algorithm}, which "
            f"trt-calib cannot recompute (it reimplements {', '.join(_RECOMPUTABLE)}). Hint: use `trt-calib "
            "validate` for the checks that need no recomputation"
        )
    if not cache.entries:
        raise CalibrationError(
            f"{cache.source or 'cache'}: holds only the header {cache.header!r} and no entries, so there is nothing "
            "to check (TensorRT would calibrate every tensor itself). Hint: check the file that was meant"
        )
    return algorithm


def check_cache(
    cache: CalibrationCache | str | os.PathLike,
    model: Any,
    batches: Iterable[Any],
    *,
    trt_version: str | None = None,
    max_ulps: int | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> CheckReport:
    """Recalibrate `model` on `batches` with the cache's calibrator and compare every entry with ours.

    The TensorRT version to emulate (it decides the Concat ties) defaults to the one in the header.
    """
    from ..ort.model import load_model
    from ..ort.collect import calibrate
    from ..core.compare import DEFAULT_MAX_ULPS, compare

    parsed = load_cache(cache)
    algorithm = check_recomputable(parsed)
    if trt_version is None:
        trt_version = ".".join(map(str, cache_version(parsed)))
    else:
        check_version(trt_version)
    result = calibrate(model, batches, algorithm=algorithm, trt_version=trt_version, progress=progress, threads=threads)
    graph = load_model(model, weights=False)  # the initializer names only
    comparison = compare(parsed, result, max_ulps=DEFAULT_MAX_ULPS if max_ulps is None else max_ulps,
                         initializers=(t.name for t in graph.graph.initializer))
    return CheckReport(parsed.source, parsed.header, algorithm, trt_version, comparison, result.num_batches)
