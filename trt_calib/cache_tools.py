"""Looking at calibration caches: decode and flag entries (inspect); more tools build on the same report.

Flags name what a reader should look at: a zero scale (TensorRT's value for an all-zero tensor, wrong for any
other), an infinite or NaN scale (the tensor held inf or FLT_MAX), a denormal scale, a negative scale, a name that
appears twice.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .cache import CalibrationCache

__all__ = ["entry_flags", "inspect_cache"]

_TINY = float(np.finfo(np.float32).tiny)


def entry_flags(scale: float) -> list[str]:
    """Flags for one scale value: zero, inf, nan, denormal, negative."""
    if math.isnan(scale):
        return ["nan"]
    flags = []
    if scale == 0:
        flags.append("zero")
    elif math.isinf(scale):
        flags.append("inf")
    elif abs(scale) < _TINY:
        flags.append("denormal")
    if scale < 0:
        flags.append("negative")
    return flags


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def inspect_cache(cache: CalibrationCache | str | os.PathLike) -> dict[str, Any]:
    """A JSON-able description of a cache: header, version, algorithm, and every entry with its flags."""
    if not isinstance(cache, CalibrationCache):
        cache = CalibrationCache.load(cache)
    duplicates = set(cache.duplicates())
    entries = []
    flag_counts: dict[str, int] = {}
    for e in cache.entries:
        flags = entry_flags(e.scale) + (["duplicate"] if e.name in duplicates else [])
        for f in flags:
            flag_counts[f] = flag_counts.get(f, 0) + 1
        entries.append(
            {
                "name": e.name,
                "hex": e.hex,
                "scale": _json_float(e.scale),
                "amax": _json_float(e.amax),
                "flags": flags,
            }
        )
    return {
        "file": cache.source,
        "header": cache.header,
        "trt_version": cache.trt_version,
        "algorithm": cache.algorithm,
        "num_entries": len(cache),
        "duplicates": sorted(duplicates),
        "flag_counts": flag_counts,
        "entries": entries,
    }
