"""`check`: recompute a cache on the CPU from the same data and say, per tensor, whether it is consistent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..core.cache import CalibrationCache
from ..errors import CalibrationError
from .entries import cache_version, check_version, load_cache

__all__ = ["CheckReport", "check_cache", "check_recomputable", "made_with"]

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
    made_with: str | None = None  # how the sidecar says trt-calib made the cache, when it was recomputed that way
    note: str | None = None  # why the sidecar was not used, when there is one

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
            made_with=self.made_with,
            note=self.note,
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


def made_with(cache_path: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str | None]:
    """How trt-calib made the cache at `cache_path`, from its sidecar (CACHE.json): the `calibrate` settings that
    remake it (algorithm, percentile, histogram range, optimisation level, TensorRT version) and a description;
    or (None, why not) when a sidecar is there but cannot be used; (None, None) without one (a TensorRT cache).

    A cache that `calibrate --algorithm percentile` or `--range global` wrote carries an EntropyCalibration2 header
    (the one TensorRT reads), so the header alone would recompute it with another algorithm and call it NOT
    consistent.
    """
    from ..ort.collect import ALGORITHM_HEADERS
    from .provenance import file_sha256, provenance_problems, read_provenance, sidecar_path

    if cache_path is None or not os.path.isfile(cache_path):
        return None, None
    where = sidecar_path(cache_path).name
    try:
        record = read_provenance(cache_path)
    except (ValueError, OSError) as exc:
        return None, f"{where} cannot be read ({exc}); recomputed as the header says"
    if record is None:
        return None, None
    problems = provenance_problems(record)
    if problems:
        return None, f"{where} is not a trt-calib sidecar ({'; '.join(problems)}); recomputed as the header says"
    recorded = (record.get("cache") or {}).get("sha256")
    if recorded is None or recorded != file_sha256(cache_path):
        return None, (f"{where} does not record this cache's sha256 (it belongs to another cache, or to none); "
                      "recomputed as the header says")
    algorithm = record.get("algorithm")
    options = record.get("options") or {}
    if not isinstance(options, dict) or algorithm not in ALGORITHM_HEADERS:
        return None, f"{where} names algorithm {algorithm!r}, which check cannot recompute; recomputed as the header says"
    settings: dict[str, Any] = {"algorithm": algorithm, "range_mode": options.get("range", "trt"),
                                "optimization": options.get("optimization", "basic")}
    if algorithm == "percentile":
        settings["percentile"] = options.get("percentile", 99.99)
    if settings["range_mode"] not in ("trt", "global") or settings["optimization"] not in ("basic", "all") or not (
            isinstance(settings.get("percentile", 1.0), (int, float)) and 0 < settings.get("percentile", 1.0) <= 100):
        return None, f"{where} records options check cannot apply ({options}); recomputed as the header says"
    if isinstance(record.get("trt_version"), str):
        settings["trt_version"] = record["trt_version"]
    parts = [algorithm + (f" {settings['percentile']:g}" if algorithm == "percentile" else "")]
    if settings["range_mode"] != "trt":
        parts.append(f"--range {settings['range_mode']}")
    if settings["optimization"] != "basic":
        parts.append(f"--optimization {settings['optimization']}")
    return settings, f"as {where} records trt-calib made it: {', '.join(parts)}"


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
    settings, note = made_with(cache if isinstance(cache, (str, os.PathLike)) else parsed.source)
    described = None
    options: dict[str, Any] = {}
    if settings is not None:
        algorithm = settings["algorithm"]
        options = {k: settings[k] for k in ("percentile", "range_mode", "optimization") if k in settings}
        described, note = note, None
        if trt_version is None:
            trt_version = settings.get("trt_version")
    if trt_version is None:
        trt_version = ".".join(map(str, cache_version(parsed)))
    else:
        check_version(trt_version)
    result = calibrate(model, batches, algorithm=algorithm, trt_version=trt_version, progress=progress, threads=threads,
                       **options)
    graph = load_model(model, weights=False)  # the initializer names only
    comparison = compare(parsed, result, max_ulps=DEFAULT_MAX_ULPS if max_ulps is None else max_ulps,
                         initializers=(t.name for t in graph.graph.initializer))
    return CheckReport(parsed.source, parsed.header, algorithm, trt_version, comparison, result.num_batches,
                       made_with=described, note=note)
