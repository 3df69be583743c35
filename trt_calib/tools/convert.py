"""`convert`: cache <-> `{name: amax}` JSON, and a header rewrite that says what it does."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._util import read_json
from ..core.cache import MAX_CACHE_BYTES, CalibrationCache, make_header, scale_to_amax, scale_to_hex
from ..errors import TrtCalibError
from .entries import check_version, header_algorithm, load_cache

__all__ = ["cache_to_json", "cache_from_json", "rewrite_header", "header_rewrite_warning"]


def cache_to_json(cache: CalibrationCache | str | os.PathLike) -> dict[str, float | str]:
    """`{name: amax}` with amax = scale * 127 exactly (float64), so `cache_from_json` gives back the same hex.

    inf and NaN are written as the strings "inf", "-inf", "nan" (JSON has no such numbers). A duplicated name keeps
    its last value, as `CalibrationCache.scales` does.
    """
    parsed = load_cache(cache)
    out: dict[str, float | str] = {}
    for name, scale in parsed.scales.items():
        amax = float(scale) * 127.0  # exact in float64: 24-bit significand times a 7-bit integer
        if math.isnan(amax) or amax < 0:
            hex_text = next(e.hex for e in reversed(parsed.entries) if e.name == name)
            raise TrtCalibError(
                f"{parsed.source or 'cache'}: tensor {name!r} has scale {hex_text} ({scale!r}), which no amax "
                "describes (amax is the symmetric range |x| <= amax, >= 0): a JSON of it could not be converted "
                "back. Hint: `trt-calib validate` the cache; recalibrate that tensor"
            )
        out[name] = amax if math.isfinite(amax) else str(amax)
    return out


def _amax_from_json(name: str, value: Any, where: str) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    if isinstance(value, str) and value.strip().lower() == "nan":
        raise TrtCalibError(f"{where}: tensor {name!r} has amax NaN: TensorRT cannot quantize with a NaN scale. "
                            "Hint: fix the tensor's range, or leave the tensor out")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrtCalibError(f"{where}: tensor {name!r} has amax {value!r}, not a number. Hint: the JSON must map "
                            "tensor names to amax values, e.g. {\"input\": 2.64}")
    amax = float(value)
    if math.isnan(amax):
        raise TrtCalibError(f"{where}: tensor {name!r} has amax NaN: TensorRT cannot quantize with a NaN scale. "
                            "Hint: fix the tensor's range, or leave the tensor out")
    if amax < 0:
        raise TrtCalibError(f"{where}: tensor {name!r} has negative amax {amax!r}; amax is the symmetric range "
                            "|x| <= amax. Hint: use abs() of the range")
    return amax


def cache_from_json(
    data: Mapping[str, Any] | str | os.PathLike,
    *,
    algorithm: str = "EntropyCalibration2",
    trt_version: str,
) -> CalibrationCache:
    """A cache from `{name: amax}` (or `calibrate --json` output) with scale = float32(amax / 127).

    The division is done in float64 and rounded once to float32: for a float32 amax that is exactly TensorRT's
    float32 division, and for an amax from `cache_to_json` it recovers the original scale bit for bit.
    """
    where = "JSON"
    if not isinstance(data, Mapping):
        where = str(data)
        # No {name: amax} table comes near the cache size limit (`convert /dev/zero`); a repeated name would keep
        # its last value in silence, so it is refused.
        data = read_json(Path(data), limit=MAX_CACHE_BYTES, kind="{name: amax} JSON", unique_keys=True)
    if isinstance(data, Mapping) and isinstance(data.get("tensors"), list):
        try:
            data = {t["name"]: t["amax"] for t in data["tensors"]}
        except (KeyError, TypeError):
            raise TrtCalibError(f"{where}: 'tensors' entries need 'name' and 'amax'") from None
    if not isinstance(data, Mapping):
        raise TrtCalibError(
            f"{where}: holds a JSON {type(data).__name__} ({json.dumps(data)[:60]}), not a {{name: amax}} mapping. "
            "Hint: the JSON must be an object mapping tensor names to amax values, e.g. {\"input\": 2.64}"
        )
    if not data:
        raise TrtCalibError(f"{where}: expected a non-empty JSON object {{tensor name: amax}}")
    if not trt_version:
        raise TrtCalibError("a cache header needs the TensorRT version that will read it. Hint: --trt-version X.Y.Z")
    check_version(trt_version)
    header = make_header(header_algorithm(algorithm), trt_version)
    entries = []
    for name, value in data.items():
        if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
            raise TrtCalibError(f"{where}: tensor name {name!r} cannot be written on one cache line")
        amax = _amax_from_json(name, value, where)
        with np.errstate(over="ignore", under="ignore"):
            scale = np.float32(amax / 127.0)
        if math.isfinite(amax) and not np.isfinite(scale_to_amax(float(scale))):
            raise TrtCalibError(f"{where}: tensor {name!r} has amax {amax!r}, beyond float32's largest value: TensorRT "
                                "reads amax = scale * 127 in float32, which would be inf. Hint: write \"inf\" if an "
                                "infinite range is meant")
        if amax > 0 and scale == 0:
            raise TrtCalibError(f"{where}: tensor {name!r} has amax {amax!r}, below the smallest float32 scale: it "
                                "would be written as 0, TensorRT's value for an all-zero tensor. Hint: write 0 if "
                                "that is meant")
        entries.append((name, scale_to_hex(float(scale))))
    return CalibrationCache(header, entries, source=where)


def rewrite_header(
    cache: CalibrationCache | str | os.PathLike, *, trt_version: str, algorithm: str | None = None
) -> CalibrationCache:
    """The same entries (byte for byte) under the header TensorRT `trt_version` writes for `algorithm`.

    `algorithm` defaults to the cache's own calibrator.
    """
    parsed = load_cache(cache)
    algo = header_algorithm(algorithm) if algorithm is not None else parsed.algorithm
    check_version(trt_version)
    header = make_header(algo, trt_version)
    return CalibrationCache(header, parsed.entries, newline=parsed.newline, final_newline=parsed.final_newline,
                            source=parsed.source)


def header_rewrite_warning(old: CalibrationCache, new: CalibrationCache) -> str:
    """What a header rewrite means, for the user to read before using the result."""
    parts = [f"rewrote header {old.header!r} -> {new.header!r}."]
    if old.version_number != new.version_number:
        parts.append(
            f"The scales were computed by TensorRT {old.trt_version}; TensorRT {new.trt_version} will now use them "
            "as they are, without recalibrating. That is sound only where both versions see the same tensors: "
            "versions differ in scale ties (Concat inputs are tied only up to 8.0), in the names of "
            "TensorRT-internal tensors ((Unnamed Layer* N), ONNXTRT_*) and in the parser's tensors, and a tensor "
            "without an entry gets no INT8 scale. Hint: `trt-calib validate` the result against the model."
        )
    if old.algorithm != new.algorithm:
        detail = (
            " MinMax scales are the full max|x|, wider than entropy thresholds: reusing them under an "
            "EntropyCalibration2 header (a known trick to feed MinMax scales to trtexec --calib) keeps outliers "
            "unclipped at the cost of resolution for the bulk of the values."
            if old.algorithm == "MinMaxCalibration" and new.algorithm == "EntropyCalibration2"
            else ""
        )
        parts.append(
            f"The scales were computed by {old.algorithm}; TensorRT's {new.algorithm} calibrator will use them "
            f"without recalibrating, so the engine gets {old.algorithm} ranges, not {new.algorithm} ones.{detail}"
        )
    if old.version_number == new.version_number and old.algorithm == new.algorithm:
        parts.append("The header did not change.")
    return " ".join(parts)
