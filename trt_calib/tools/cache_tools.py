"""Looking at calibration caches: inspect, validate against a model, diff two caches, check by recomputation, convert.

Users lose accuracy to caches that no longer fit what TensorRT builds: a header from another TensorRT version or
calibrator makes TensorRT ignore the file and recalibrate (with random data under trtexec), a re-export renames
tensors so entries miss their layers, and a retrained model keeps its old scales. These tools say which, per tensor.

Flags name what a reader should look at: a zero scale (TensorRT's value for an all-zero tensor, wrong for any
other), an infinite or NaN scale (the tensor held inf or FLT_MAX), a denormal scale, a negative scale, a name that
appears twice.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..core.cache import TRT_ALGORITHMS, CalibrationCache, encode_version, hex_to_scale, make_header, scale_to_hex
from ..errors import CacheFormatError, CalibrationError, TrtCalibError

__all__ = [
    "entry_flags",
    "inspect_cache",
    "SEVERITIES",
    "CALIBRATOR_NAMES",
    "header_algorithm",
    "entry_kind",
    "ValidationReport",
    "validate_cache",
    "DiffRow",
    "CacheDiff",
    "diff_caches",
    "CheckReport",
    "check_cache",
    "cache_to_json",
    "cache_from_json",
    "rewrite_header",
    "header_rewrite_warning",
]

_TINY = float(np.finfo(np.float32).tiny)

SEVERITIES = ("error", "warning", "info")

# trt-calib's algorithm names -> the calibrator names TensorRT writes in the header.
CALIBRATOR_NAMES = {
    "entropy2": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "entropy": "EntropyCalibration",
    "legacy": "LegacyCalibration",
}
# The header algorithms `check` can recompute, as `collect.calibrate` algorithms.
_RECOMPUTABLE = {"EntropyCalibration2": "entropy2", "MinMaxCalibration": "minmax"}

# A tensor name TensorRT made up: numbered per build, so it moves whenever the network changes.
_UNNAMED_RE = re.compile(r"^\(Unnamed Layer\* (\d+)\) \[[^\]]+\]_output(?:_\d+)?$")
_ONNXTRT_RE = re.compile(r"^ONNXTRT_")
_TRAILING_NUMBER_RE = re.compile(r"^(.*?)(\d+)$")

# Thresholds, documented in docs/cache-tools.md.
MOST_MISSING_FRACTION = 0.5  # more of the model's tensors missing than this is an error: the cache is for another graph
OUTLIER_FACTOR = 100.0  # an amax this many times off every neighbour is flagged


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


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _load(cache: CalibrationCache | str | os.PathLike) -> CalibrationCache:
    return cache if isinstance(cache, CalibrationCache) else CalibrationCache.load(cache)


def inspect_cache(cache: CalibrationCache | str | os.PathLike) -> dict[str, Any]:
    """A JSON-able description of a cache: header, version, algorithm, and every entry with its flags."""
    cache = _load(cache)
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


# ---------------------------------------------------------------------------------------------- names
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


def _version_number(trt_version: str) -> int:
    try:
        return encode_version(trt_version)
    except ValueError as exc:
        raise TrtCalibError(f"--trt-version: {exc}") from None


def _version_tuple(cache: CalibrationCache) -> tuple[int, int, int]:
    from ..core.cache import decode_version

    number = cache.version_number
    return (4, 0, 0) if number is None else decode_version(number)


def entry_kind(name: str, initializers: Iterable[str] = ()) -> str:
    """'unnamed' for TensorRT's (Unnamed Layer* N) names, 'internal' for parser helpers, else 'named'.

    Internal names are ONNXTRT_* helpers of the ONNX parser and TensorRT 10's `<initializer>_output` tensors of
    initializers that became constant layers (only recognised when the model's initializer names are given).
    """
    if _UNNAMED_RE.match(name):
        return "unnamed"
    if _ONNXTRT_RE.match(name):
        return "internal"
    if name.endswith("_output") and name[: -len("_output")] in set(initializers):
        return "internal"
    return "named"


# ---------------------------------------------------------------------------------------------- validate
@dataclass
class ValidationReport:
    """Findings about one cache (against a model and a target TensorRT when given), most severe first."""

    cache: str | None
    header: str | None
    trt_version: str | None
    algorithm: str | None
    model: str | None
    target: dict[str, str | None]
    findings: list[dict[str, Any]] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)

    def add(self, severity: str, code: str, message: str, tensor: str | None = None, **extra: Any) -> None:
        """Record one finding (a dict `{severity, code, tensor?, message}` plus any details)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        finding: dict[str, Any] = {"severity": severity, "code": code}
        if tensor is not None:
            finding["tensor"] = tensor
        finding["message"] = message
        finding.update(extra)
        self.findings.append(finding)

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {s: sum(f["severity"] == s for f in self.findings) for s in SEVERITIES}

    @property
    def exit_code(self) -> int:
        """2 with any error, 1 with warnings only, 0 when clean (info findings do not count)."""
        counts = self.counts()
        return 2 if counts["error"] else 1 if counts["warning"] else 0

    @property
    def verdict(self) -> str:
        return ("clean", "warnings", "errors")[self.exit_code]

    def sorted_findings(self) -> list[dict[str, Any]]:
        """Findings by severity (errors first), in the order found within a severity."""
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: rank[f["severity"]])

    def to_json(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "header": self.header,
            "trt_version": self.trt_version,
            "algorithm": self.algorithm,
            "model": self.model,
            "target": self.target,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "coverage": self.coverage,
            "findings": self.sorted_findings(),
        }


@dataclass
class _Graph:
    """What validate needs to know about an ONNX graph."""

    calibrated: list[str]
    tensors: set[str]
    inputs: set[str]
    initializers: set[str]
    constant: set[str]
    producer: dict[str, Any]
    consumers: dict[str, list[Any]]
    nodes: list[Any]


def _graph(model: Any) -> _Graph:
    from ..ort.collect import calibrated_tensors, load_model, model_inputs

    model = load_model(model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {s.name for s in model_inputs(model)}
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    tensors = set(inputs) | initializers
    # Constant folding by name: a tensor computed only from constants (or from shapes) holds no calibration data.
    constant = set(initializers)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
        for name in node.output:
            if name:
                producer[name] = node
                tensors.add(name)
        real_inputs = [n for n in node.input if n]
        if node.op_type in ("Constant", "ConstantOfShape", "Shape", "Size") or (
            real_inputs and all(n in constant for n in real_inputs)
        ):
            constant.update(n for n in node.output if n)
    return _Graph(
        calibrated=calibrated_tensors(model),
        tensors=tensors,
        inputs=inputs,
        initializers=initializers,
        constant=constant,
        producer=producer,
        consumers=consumers,
        nodes=list(graph.node),
    )


def _header_findings(report: ValidationReport, cache: CalibrationCache, trt_version: str | None, algorithm: str | None) -> None:
    version_text = "TensorRT 4 (legacy header '1')" if cache.is_legacy else f"TensorRT {cache.trt_version}"
    if trt_version is not None:
        wanted = _version_number(trt_version)
        if cache.version_number != wanted:
            report.add(
                "error",
                "header-version-mismatch",
                f"header {cache.header!r} was written by {version_text}, the target is TensorRT {trt_version} "
                f"(header number {wanted}): TensorRT will ignore this cache and recalibrate (with whatever data its "
                "calibrator gives, random data under trtexec --calib). Hint: recalibrate for the target, or "
                "`trt-calib convert --rewrite-header --trt-version "
                f"{trt_version}` if you accept scales computed by another version",
                cache_version=cache.trt_version,
                target_version=trt_version,
            )
    elif cache.is_legacy:
        report.add(
            "warning",
            "legacy-header",
            "header '1' is TensorRT 4's: TensorRT 5 and later write TRT-<version>-<Algorithm> headers and are "
            "expected to ignore this cache and recalibrate. Hint: recalibrate, or give --trt-version to check "
            "against your TensorRT",
        )
    else:
        report.add(
            "info",
            "header-version",
            f"written by {version_text}; TensorRT reads a cache only when its header names the same version "
            "(no --trt-version given, so not checked)",
        )
    if algorithm is not None:
        wanted_algo = header_algorithm(algorithm)
        if cache.algorithm != wanted_algo:
            report.add(
                "error",
                "header-algorithm-mismatch",
                f"header calibrator is {cache.algorithm}, the target calibrator is {wanted_algo}: TensorRT will "
                f"ignore this cache and recalibrate. Hint: build with the calibrator that wrote the cache "
                f"({cache.algorithm}), or rewrite the header with `trt-calib convert --rewrite-header` knowing the "
                "scales were computed by the other algorithm",
                cache_algorithm=cache.algorithm,
                target_algorithm=wanted_algo,
            )
    elif cache.algorithm == "MinMaxCalibration":
        report.add(
            "info",
            "header-algorithm",
            "header calibrator is MinMaxCalibration: only IInt8MinMaxCalibrator reads it; trtexec --calib reads "
            "caches with EntropyCalibration2 and would ignore this one",
        )


def _value_findings(report: ValidationReport, cache: CalibrationCache, g: _Graph | None) -> None:
    initializers = g.initializers if g is not None else set()
    for e in cache.entries:
        scale = e.scale
        flags = entry_flags(scale)
        kind = entry_kind(e.name, initializers)
        if "nan" in flags:
            report.add("error", "nan-scale", f"scale is NaN ({e.hex}): TensorRT cannot quantize with it. Hint: "
                       "the tensor held NaN during calibration; fix the model or data and recalibrate", e.name)
            continue
        if "negative" in flags:
            report.add("error", "negative-scale", f"scale {scale:.6g} ({e.hex}) is negative; TensorRT never writes "
                       "one, so the file was edited or corrupted. Hint: recalibrate", e.name)
        if "inf" in flags:
            report.add("warning", "inf-scale", f"scale is infinite ({e.hex}): every finite value of this tensor "
                       "quantizes to 0 if it runs in INT8. Usually the tensor held inf or +-FLT_MAX (an attention "
                       "mask); keep it out of INT8 or clamp the constant", e.name)
        if "denormal" in flags:
            report.add("warning", "denormal-scale", f"scale {scale:.6g} ({e.hex}) is denormal: amax "
                       f"{e.amax:.6g} is far below any useful activation range. Hint: check the calibration data "
                       "reaches this tensor", e.name)
        if "zero" in flags:
            _zero_finding(report, e.name, kind, g)


def _zero_finding(report: ValidationReport, name: str, kind: str, g: _Graph | None) -> None:
    why = "TensorRT writes 0 for a tensor that was all zeros during calibration"
    if g is not None and name in g.inputs:
        report.add("warning", "zero-scale", f"network input has scale 0: {why}, so the calibration data fed "
                   "zeros here. Hint: check the data (an empty image folder, a wrong key, missing preprocessing)", name)
    elif g is not None and name in g.constant:
        report.add("info", "zero-scale", f"scale 0 on a tensor computed from constants only: expected if it is "
                   "constant zero", name)
    elif (kind == "unnamed" and "[Constant]" in name) or kind == "internal":
        report.add("info", "zero-scale", f"scale 0 on a TensorRT constant/helper tensor: expected for a zero "
                   "constant", name)
    else:
        report.add("warning", "zero-scale", f"scale 0: {why}; unless this tensor is constant zero "
                   "its INT8 output will be all zeros. Hint: check that the calibration data reaches it", name)


def _numbering_shift(missing: list[str], candidates: Iterable[str]) -> tuple[int, int, str, str] | None:
    """A constant offset in the trailing number that maps most missing names onto cache names, if any.

    Returns (offset, how many missing names it maps, one missing name, its cache name).
    """
    pool: dict[str, set[int]] = {}
    for name in candidates:
        m = _TRAILING_NUMBER_RE.match(name)
        if m:
            pool.setdefault(m.group(1), set()).add(int(m.group(2)))
    numbered = [(m.group(1), int(m.group(2))) for m in map(_TRAILING_NUMBER_RE.match, missing) if m]
    if len(numbered) < 3:
        return None
    votes: dict[int, int] = {}
    for prefix, number in numbered:
        for other in pool.get(prefix, ()):
            if other != number:
                votes[other - number] = votes.get(other - number, 0) + 1
    if not votes:
        return None
    offset, hits = max(votes.items(), key=lambda kv: (kv[1], -abs(kv[0])))
    if hits < max(3, len(numbered) // 2):
        return None
    prefix, number = next((p, n) for p, n in numbered if n + offset in pool.get(p, ()))
    return offset, hits, f"{prefix}{number}", f"{prefix}{number + offset}"


def _coverage_findings(report: ValidationReport, cache: CalibrationCache, g: _Graph) -> None:
    names = list(cache.scales)
    in_cache = set(names)
    calibrated = set(g.calibrated)
    missing = [t for t in g.calibrated if t not in in_cache]
    groups: dict[str, list[str]] = {"unnamed": [], "internal": [], "uncalibrated": [], "extra": []}
    for name in names:
        if name in calibrated:
            continue
        kind = entry_kind(name, g.initializers)
        if kind != "named":
            groups[kind].append(name)
        elif name in g.tensors:
            groups["uncalibrated"].append(name)
        else:
            groups["extra"].append(name)
    n_model = len(g.calibrated)
    report.coverage = {
        "model_tensors": n_model,
        "covered": n_model - len(missing),
        "missing": len(missing),
        "cache_entries": len(cache.entries),
        "not_in_model": len(groups["extra"]),
        "uncalibrated_in_model": len(groups["uncalibrated"]),
        "unnamed": len(groups["unnamed"]),
        "internal": len(groups["internal"]),
        "duplicates": len(cache.duplicates()),
    }
    if n_model and len(missing) > MOST_MISSING_FRACTION * n_model:
        report.add(
            "error",
            "most-tensors-missing",
            f"{len(missing)} of the {n_model} tensors TensorRT calibrates in this model have no entry: the cache "
            "was written for another model or another export of it. TensorRT builds those layers without INT8 "
            "scales (higher precision, or a default range). Hint: recalibrate on this model",
            missing=len(missing),
            model_tensors=n_model,
        )
    for name in missing:
        report.add("warning", "missing-entry", "TensorRT calibrates this tensor but the cache has no entry: its "
                   "layer gets no INT8 scale (runs in higher precision, or TensorRT reports missing "
                   "quantization data)", name)
    # Every cache name is a candidate: after a renumbering, shifted names collide with other tensors of the model.
    shift = _numbering_shift(missing, names)
    if shift is not None:
        offset, hits, example, cache_name = shift
        report.add(
            "info",
            "renumbered",
            f"{hits} of the {len(missing)} missing names exist in the cache renumbered by {offset:+d} "
            f"({example} -> {cache_name}): the exporter numbered tensors differently (extra or fewer nodes "
            "before them). Same names with shifted numbers mean different tensors; the scales cannot be "
            "trusted for this model. Hint: recalibrate on this export",
            offset=offset,
            matches=hits,
        )
    for name in groups["extra"]:
        report.add("warning", "not-in-model", "cache entry names no tensor of this model (stale entry from "
                   "another export or a model with more layers); TensorRT ignores it", name)
    for name in groups["uncalibrated"]:
        report.add("warning", "uncalibrated-entry", "entry names a tensor of this model that TensorRT does not "
                   "calibrate (a constant, an initializer, an integer or an unused tensor): it probably "
                   "belongs to a different tensor of another export", name)
    if groups["unnamed"]:
        numbers = sorted(int(_UNNAMED_RE.match(n).group(1)) for n in groups["unnamed"])  # type: ignore[union-attr]
        report.add(
            "info",
            "unnamed-entries",
            f"{len(groups['unnamed'])} entries are TensorRT's (Unnamed Layer* N) tensors (layers {numbers[0]}.."
            f"{numbers[-1]}): they cannot be checked against the model and their numbering changes whenever "
            "the network gains or loses a layer, so a cache reused on another export silently misplaces them",
            count=len(groups["unnamed"]),
        )
    if groups["internal"]:
        report.add(
            "info",
            "internal-entries",
            f"{len(groups['internal'])} entries are TensorRT's ONNX parser helpers (ONNXTRT_*, <initializer>_output),"
            " not tensors of the model",
            count=len(groups["internal"]),
        )
    for name in cache.duplicates():
        hexes = [e.hex for e in cache.entries if e.name == name]
        report.add("warning", "duplicate", f"{len(hexes)} entries ({', '.join(hexes)}): which one TensorRT uses "
                   "is not documented (trt-calib takes the last). Hint: keep one", name)


def _amax_map(cache: CalibrationCache) -> dict[str, float]:
    return {n: a for n, a in cache.amaxes().items() if math.isfinite(a) and a > 0}


def _outlier_findings(report: ValidationReport, cache: CalibrationCache, g: _Graph) -> None:
    amax = _amax_map(cache)
    for name in g.calibrated:
        a = amax.get(name)
        node = g.producer.get(name)
        if a is None or node is None:
            continue
        before = [amax[n] for n in node.input if n in amax and n != name]
        after = [amax[o] for c in g.consumers.get(name, []) for o in c.output if o in amax and o != name]
        if not before or not after:
            continue
        neighbours = before + after
        if all(max(a / b, b / a) > OUTLIER_FACTOR for b in neighbours):
            nearest = min(neighbours, key=lambda b: abs(math.log(a / b)))
            report.add(
                "warning",
                "amax-outlier",
                f"amax {a:.6g} is more than {OUTLIER_FACTOR:g}x off its producer's inputs "
                f"({', '.join(f'{b:.3g}' for b in before)}) and its consumers' outputs "
                f"({', '.join(f'{b:.3g}' for b in after)}); nearest is {a / nearest:.3g}x. Hint: a stale or "
                "misnamed entry, or a calibration batch that never reached this branch",
                name,
                amax=a,
            )


def _pool_findings(report: ValidationReport, cache: CalibrationCache, g: _Graph, tie_version: tuple[int, int, int]) -> None:
    scales = cache.scales
    concat_ties = tie_version[:2] <= (8, 0)
    for node in g.nodes:
        if node.op_type not in ("MaxPool", "AveragePool") or not node.input or not node.output:
            continue
        src, dst = node.input[0], node.output[0]
        if src not in scales or dst not in scales or scale_to_hex(scales[src]) == scale_to_hex(scales[dst]):
            continue
        concats = [c for t in (src, dst) for c in g.consumers.get(t, []) if c.op_type == "Concat"]
        detail = (f"{node.op_type} {node.name or dst!r}: output scale {scales[dst]:.6g} differs from its input "
                  f"{src!r}'s {scales[src]:.6g}")
        if concat_ties and concats:
            report.add(
                "info",
                "pool-untied",
                f"{detail}. Expected for TensorRT <= 8.0: the pool's tensors also feed Concat "
                f"{concats[0].name or concats[0].output[0]!r}, whose tie overwrites their scale after the pool took "
                "its input's",
                dst,
            )
        else:
            hint = ("" if not concat_ties else " (TensorRT <= 8.0 Concat ties can overwrite a pool input, but no "
                    "Concat consumes these tensors)")
            report.add(
                "warning",
                "pool-untied",
                f"{detail}; TensorRT gives a pool output its input's scale{hint}. Hint: the entries come from "
                "different calibrations or another export",
                dst,
            )


# Data manifest fields that change the histograms (content, batching, order, preprocessing), as the sidecar records them.
_DATA_FIELDS = {
    "sha256": "content sha256",
    "kind": "kind",
    "batch_size": "batch size",
    "num_batches": "batches",
    "num_samples": "samples",
    "order_sha256": "batch order",
    "shuffle": "shuffle",
    "seed": "seed",
    "offset": "offset",
    "limit": "limit",
    "last_batch": "last batch",
    "preprocess": "preprocessing",
}


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if isinstance(value, str) and len(value) == 64 else text


def _data_findings(report: ValidationReport, record: dict[str, Any], data_manifest: Mapping[str, Any], where: str) -> None:
    recorded = record.get("data")
    if not isinstance(recorded, Mapping):
        report.add("info", "provenance-data", f"{where} records no data manifest; cannot compare the data")
        return
    changed = [
        f"{label} {_short(recorded[key])} -> {_short(data_manifest[key])}"
        for key, label in _DATA_FIELDS.items()
        if key in recorded and key in data_manifest and recorded[key] != data_manifest[key]
    ]
    if changed:
        report.add(
            "warning",
            "data-changed",
            f"the calibration data differs from the data recorded in {where}: {'; '.join(changed)}. TensorRT's "
            "histograms depend on the data, the batch size and the batch order. Hint: recalibrate on this data, or "
            "pass the data options the cache was made with",
            changes=changed,
        )
    else:
        report.add("info", "provenance-data", f"data, batching and order match {where}")


def _provenance_findings(
    report: ValidationReport,
    cache: CalibrationCache,
    cache_path: Path,
    model_path: Path | None,
    data_manifest: Mapping[str, Any] | None,
) -> None:
    from .provenance import file_sha256, read_provenance, sidecar_path

    try:
        record = read_provenance(cache_path)
    except (ValueError, OSError) as exc:
        report.add("warning", "provenance-unreadable", f"{sidecar_path(cache_path)} cannot be read ({exc}); "
                   "cannot tell whether the model or data changed since calibration")
        return
    if record is None:
        if data_manifest is not None:
            report.add("info", "no-provenance", f"no {sidecar_path(cache_path).name} next to the cache (it is "
                       "written by `trt-calib calibrate`): cannot tell whether the data changed")
        return
    if data_manifest is not None:
        _data_findings(report, record, data_manifest, sidecar_path(cache_path).name)
    recorded = (record.get("model") or {}).get("sha256")
    if record.get("header") and record["header"] != cache.header:
        report.add("warning", "provenance-header", f"header {cache.header!r} differs from {record['header']!r} "
                   f"recorded in {sidecar_path(cache_path).name} when it was calibrated: the file was rewritten "
                   "or replaced since")
    if model_path is None or not recorded:
        return
    actual = file_sha256(model_path)
    if actual != recorded:
        report.add(
            "warning",
            "model-changed",
            f"{model_path} has sha256 {actual[:12]}..., but the cache was calibrated from "
            f"{(record.get('model') or {}).get('path')!s} with sha256 {recorded[:12]}... "
            f"({sidecar_path(cache_path).name}): its scales describe other weights. Hint: recalibrate",
            recorded_sha256=recorded,
            model_sha256=actual,
        )
    else:
        report.add("info", "provenance", f"model matches the one recorded in {sidecar_path(cache_path).name} "
                   f"(sha256 {actual[:12]}...)")


def validate_cache(
    cache: CalibrationCache | str | os.PathLike,
    model: Any = None,
    *,
    trt_version: str | None = None,
    algorithm: str | None = None,
    data_manifest: Mapping[str, Any] | None = None,
) -> ValidationReport:
    """Check a cache's header against a target, its entries against a model, its values, and its provenance.

    `data_manifest` (`BatchSource.manifest()` of the data at hand) is compared with the one the sidecar recorded.
    An unparsable cache becomes an `unparsable` error finding rather than an exception, so `--json` still reports.
    """
    source = None if isinstance(cache, CalibrationCache) else str(cache)
    model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
    target = {
        "trt_version": trt_version,
        "algorithm": header_algorithm(algorithm) if algorithm is not None else None,
    }
    if trt_version is not None:
        _version_number(trt_version)
    if source is not None and not Path(source).is_file():
        _load(cache)  # raises CacheFormatError naming the missing file: a user error, not a finding
    try:
        parsed = _load(cache)
    except CacheFormatError as exc:
        report = ValidationReport(source, None, None, None, model_name, target)
        report.add("error", "unparsable", f"{exc}. Hint: TensorRT would fail to read it or ignore it")
        return report
    report = ValidationReport(parsed.source, parsed.header, parsed.trt_version, parsed.algorithm, model_name, target)
    _header_findings(report, parsed, trt_version, algorithm)
    g = _graph(model) if model is not None else None
    _value_findings(report, parsed, g)
    if g is not None:
        _coverage_findings(report, parsed, g)
        _outlier_findings(report, parsed, g)
        _pool_findings(report, parsed, g, _version_tuple(parsed))
    else:
        for name in parsed.duplicates():
            report.add("warning", "duplicate", "name appears on more than one line; which one TensorRT uses is "
                       "not documented (trt-calib takes the last)", name)
        report.add("info", "no-model", "no model given: coverage, outliers and pool ties not checked")
    if source is not None:
        _provenance_findings(report, parsed, Path(source), Path(model_name) if model_name else None, data_manifest)
    return report


# ---------------------------------------------------------------------------------------------- diff
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
            out[key] = _json_float(value) if isinstance(value, float) else value
        out["abs_log_ratio"] = _json_float(self.log_ratio)
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

    ca, cb = _load(a), _load(b)
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
    return CacheDiff(ca.source, cb.source, ca.header, cb.header, rows, only_a, only_b, header_differences)


# ---------------------------------------------------------------------------------------------- check
@dataclass
class CheckReport:
    """A cache recomputed on the CPU: per-tensor agreement (`compare.Comparison`) and the overall verdict."""

    cache: str | None
    header: str
    algorithm: str
    trt_version: str
    comparison: Any
    not_recomputable: list[str]
    num_batches: int

    @property
    def consistent(self) -> bool:
        """Every cache entry we recomputed agrees, and every entry that names a model tensor was recomputed."""
        skipped = set(self.not_recomputable)
        rows = [r for r in self.comparison.rows if r.name not in skipped]
        shared_ok = all(r.consistent for r in rows if r.verdict not in ("only-reference", "only-ours"))
        return shared_ok and not any(r.verdict == "only-reference" for r in rows)

    def summary(self) -> str:
        text = self.comparison.summary()
        if self.not_recomputable:
            text += f"; {len(self.not_recomputable)} TensorRT-internal entries not checked"
        return f"{text} -> {'consistent' if self.consistent else 'NOT consistent'}"

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
    from ..ort.collect import calibrate, load_model
    from ..core.compare import DEFAULT_MAX_ULPS, compare

    parsed = _load(cache)
    algorithm = _RECOMPUTABLE.get(parsed.algorithm)
    if algorithm is None:
        raise CalibrationError(
            f"{parsed.source or 'cache'}: header {parsed.header!r} names calibrator {parsed.algorithm}, which "
            f"trt-calib cannot recompute (it reimplements {', '.join(_RECOMPUTABLE)}). Hint: use `trt-calib "
            "validate` for the checks that need no recomputation"
        )
    if trt_version is None:
        trt_version = ".".join(map(str, _version_tuple(parsed)))
    else:
        _version_number(trt_version)
    model = load_model(model)
    result = calibrate(model, batches, algorithm=algorithm, trt_version=trt_version, progress=progress, threads=threads)
    comparison = compare(parsed, result, max_ulps=DEFAULT_MAX_ULPS if max_ulps is None else max_ulps)
    initializers = {t.name for t in model.graph.initializer}
    internal = [e.name for e in parsed.entries if e.name not in result.amax and entry_kind(e.name, initializers) != "named"]
    return CheckReport(parsed.source, parsed.header, algorithm, trt_version, comparison,
                       list(dict.fromkeys(internal)), result.num_batches)


# ---------------------------------------------------------------------------------------------- convert
def cache_to_json(cache: CalibrationCache | str | os.PathLike) -> dict[str, float | str]:
    """`{name: amax}` with amax = scale * 127 exactly (float64), so `cache_from_json` gives back the same hex.

    inf and NaN are written as the strings "inf", "-inf", "nan" (JSON has no such numbers). A duplicated name keeps
    its last value, as `CalibrationCache.scales` does.
    """
    parsed = _load(cache)
    out: dict[str, float | str] = {}
    for name, scale in parsed.scales.items():
        amax = float(scale) * 127.0  # exact in float64: 24-bit significand times a 7-bit integer
        out[name] = amax if math.isfinite(amax) else str(amax)
    return out


def _amax_from_json(name: str, value: Any, where: str) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity", "nan"):
        return float(value.strip().lower().replace("infinity", "inf"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrtCalibError(f"{where}: tensor {name!r} has amax {value!r}, not a number. Hint: the JSON must map "
                            "tensor names to amax values, e.g. {\"input\": 2.64}")
    amax = float(value)
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
        try:
            data = json.loads(Path(data).read_text())
        except FileNotFoundError:
            raise TrtCalibError(f"{where}: no such file") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise TrtCalibError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(data, Mapping) and isinstance(data.get("tensors"), list):
        try:
            data = {t["name"]: t["amax"] for t in data["tensors"]}
        except (KeyError, TypeError):
            raise TrtCalibError(f"{where}: 'tensors' entries need 'name' and 'amax'") from None
    if not isinstance(data, Mapping) or not data:
        raise TrtCalibError(f"{where}: expected a non-empty JSON object {{tensor name: amax}}")
    if not trt_version:
        raise TrtCalibError("a cache header needs the TensorRT version that will read it. Hint: --trt-version X.Y.Z")
    _version_number(trt_version)
    header = make_header(header_algorithm(algorithm), trt_version)
    entries = []
    for name, value in data.items():
        if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
            raise TrtCalibError(f"{where}: tensor name {name!r} cannot be written on one cache line")
        amax = _amax_from_json(name, value, where)
        with np.errstate(over="ignore"):
            scale = np.float32(amax / 127.0)
        entries.append((name, scale_to_hex(float(scale))))
    return CalibrationCache(header, entries, source=where)


def rewrite_header(
    cache: CalibrationCache | str | os.PathLike, *, trt_version: str, algorithm: str | None = None
) -> CalibrationCache:
    """The same entries (byte for byte) under the header TensorRT `trt_version` writes for `algorithm`.

    `algorithm` defaults to the cache's own calibrator.
    """
    parsed = _load(cache)
    algo = header_algorithm(algorithm) if algorithm is not None else parsed.algorithm
    _version_number(trt_version)
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
