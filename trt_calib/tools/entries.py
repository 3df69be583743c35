"""Reading calibration-cache entries: flags per scale, what kind of name an entry has, header names, `inspect`.

Users lose accuracy to caches that no longer fit what TensorRT builds: a header from another TensorRT version or
calibrator makes TensorRT ignore the file and recalibrate (with random data under trtexec), a re-export renames
tensors so entries miss their layers, and a retrained model keeps its old scales. These tools say which, per tensor.

Flags name what a reader should look at: a zero scale (TensorRT's value for an all-zero tensor, wrong for any
other), an infinite or NaN scale (the tensor held inf or FLT_MAX), a denormal scale, a negative scale, a name that
appears twice.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..core.cache import TRT_ALGORITHMS, CalibrationCache, decode_version, encode_version, entry_kind
from ..errors import TrtCalibError

__all__ = [
    "entry_flags",
    "inspect_cache",
    "CALIBRATOR_NAMES",
    "header_algorithm",
    "entry_kind",
    "json_float",
    "load_cache",
    "check_version",
    "cache_version",
]

_TINY = float(np.finfo(np.float32).tiny)

# trt-calib's algorithm names -> the calibrator names TensorRT writes in the header.
CALIBRATOR_NAMES = {
    "entropy2": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "entropy": "EntropyCalibration",
    "legacy": "LegacyCalibration",
}

# A tensor name TensorRT made up: numbered per build, so it moves whenever the network changes.



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


def json_float(value: float | None) -> float | str | None:
    """A float for JSON: inf and nan as strings, None as is."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def load_cache(cache: CalibrationCache | str | os.PathLike) -> CalibrationCache:
    """A parsed cache from a cache or a path (CacheFormatError names the file)."""
    return cache if isinstance(cache, CalibrationCache) else CalibrationCache.load(cache)


def inspect_cache(cache: CalibrationCache | str | os.PathLike) -> dict[str, Any]:
    """A JSON-able description of a cache: header, version, algorithm, and every entry with its flags."""
    cache = load_cache(cache)
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
                "scale": json_float(e.scale),
                "amax": json_float(e.amax),
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
        "notes": [{"code": code, "message": message} for code, message in cache.notes],
        "entries": entries,
    }


def header_algorithm(name: str) -> str:
    """The header calibrator name for `name`: entropy2 -> EntropyCalibration2, or a header name as it is."""
    key = name.strip()
    if key.lower() in CALIBRATOR_NAMES:
        return CALIBRATOR_NAMES[key.lower()]
    for algo in TRT_ALGORITHMS:
        if key.lower() == algo.lower():
            return algo
    if key.lower() in ("percentile", "mse"):
        raise TrtCalibError(
            f"algorithm {name!r} is not a TensorRT calibrator, so no cache header names it; trt-calib writes "
            "percentile and mse scales under EntropyCalibration2. Hint: use entropy2 (EntropyCalibration2)"
        )
    choices = ", ".join(f"{k} ({v})" for k, v in CALIBRATOR_NAMES.items())
    raise TrtCalibError(f"unknown calibration algorithm {name!r}; choose one of {choices}")


def check_version(trt_version: str) -> int:
    """The header number of `trt_version`, or a one-line --trt-version error."""
    try:
        return encode_version(trt_version)
    except ValueError as exc:
        raise TrtCalibError(f"--trt-version: {exc}") from None


def cache_version(cache: CalibrationCache) -> tuple[int, int, int]:
    """The TensorRT version that wrote `cache` ((4, 0, 0) for the legacy header)."""
    number = cache.version_number
    return (4, 0, 0) if number is None else decode_version(number)


