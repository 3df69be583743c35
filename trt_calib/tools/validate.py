"""`validate`: will TensorRT use this cache for this model? Header against the target, coverage of the model's
tensors, suspicious values, pool ties, and whether the model or data changed since calibration (the sidecar)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..core.cache import CalibrationCache, scale_to_hex
from ..errors import CacheFormatError, TrtCalibError
from ..core.cache import UNNAMED_RE
from .entries import cache_version, check_version, entry_flags, entry_kind, header_algorithm, load_cache

__all__ = ["SEVERITIES", "ValidationReport", "validate_cache", "MOST_MISSING_FRACTION", "OUTLIER_FACTOR"]

SEVERITIES = ("error", "warning", "info")

# Thresholds, documented in docs/cache-tools.md.
MOST_MISSING_FRACTION = 0.5  # more of the model's tensors missing than this is an error: the cache is for another graph
OUTLIER_FACTOR = 100.0  # an amax this many times off every neighbour is flagged
_TRAILING_NUMBER_RE = re.compile(r"^(.*?)(\d+)$")


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
    dla: dict[str, Any] | None = None  # DlaReport.to_json() when validated with dla=True

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
        """3 with any error, 1 with warnings only, 0 when clean (info findings do not count); the CLI's exit status,
        where 2 stays a usage or input error."""
        counts = self.counts()
        return 3 if counts["error"] else 1 if counts["warning"] else 0

    @property
    def verdict(self) -> str:
        return {0: "clean", 1: "warnings", 3: "errors"}[self.exit_code]

    def sorted_findings(self) -> list[dict[str, Any]]:
        """Findings by severity (errors first), in the order found within a severity."""
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: rank[f["severity"]])

    def to_json(self) -> dict[str, Any]:
        doc = {
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
        if self.dla is not None:
            doc["dla"] = self.dla
        return doc


@dataclass
class _Graph:
    """What validate needs to know about an ONNX graph."""

    calibrated: list[str]  # main-graph tensors TensorRT calibrates
    tensors: set[str]
    inputs: set[str]
    initializers: set[str]
    constant: set[str]
    producer: dict[str, Any]
    consumers: dict[str, list[Any]]
    nodes: list[Any]
    body: list[Any] = field(default_factory=list)  # control_flow.BodyTensor: what TensorRT names in If/Loop/Scan bodies
    shape_only: set[str] = field(default_factory=set)  # If labels whose condition depends on tensor shapes only


def _graph(model: Any) -> _Graph:
    from ..ort.control_flow import body_tensors, if_conditions, shape_conditions
    from ..ort.model import calibrated_from_types, float_types, load_model, model_inputs, tensor_types

    model = load_model(model, weights=False)  # the graph only: a model over 2 GB keeps its weights on disk
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {s.name for s in model_inputs(model)}
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    tensors = set(inputs) | initializers
    # Constant folding by name: a tensor computed only from constants (or from shapes) holds no calibration data.
    constant = set(initializers)

    def index(g: Any) -> None:
        for node in g.node:
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
            for attr in node.attribute:  # If branches, Loop/Scan bodies: their tensors are the model's too
                if attr.HasField("g"):
                    constant.update(t.name for t in attr.g.initializer)
                    index(attr.g)
                for sub in attr.graphs:
                    index(sub)

    index(graph)
    types = tensor_types(model)
    return _Graph(
        calibrated=calibrated_from_types(model, types),
        tensors=tensors,
        inputs=inputs,
        initializers=initializers,
        constant=constant,
        producer=producer,
        consumers=consumers,
        nodes=list(graph.node),
        body=body_tensors(model, types, float_types()),
        shape_only={label for label, cond in if_conditions(model).items() if cond in shape_conditions(model)},
    )


def _header_findings(report: ValidationReport, cache: CalibrationCache, trt_version: str | None, algorithm: str | None) -> None:
    version_text = "TensorRT 4 (legacy header '1')" if cache.is_legacy else f"TensorRT {cache.trt_version}"
    problem = cache.version_problem
    if problem is not None:
        version_text = f"no TensorRT (its number {problem})"
        report.add(
            "error",
            "header-version-invalid",
            f"header {cache.header!r}: the version number {problem}. TensorRT compares the header it would write "
            "with this one, so no TensorRT uses the cache: each recalibrates. Hint: recalibrate, or `trt-calib "
            "convert --rewrite-header --trt-version X.Y.Z` for the TensorRT that will read it",
        )
    if trt_version is not None:
        wanted = check_version(trt_version)
        if problem is not None or cache.version_number != wanted:
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


# What the parser accepted but noticed (CalibrationCache.notes), by code: the severity of each as a finding.
_NOTE_SEVERITY = {"header-whitespace": "warning", "mixed-line-endings": "info", "value-whitespace": "info"}


def _note_findings(report: ValidationReport, cache: CalibrationCache) -> None:
    for code, message in cache.notes:
        report.add(_NOTE_SEVERITY.get(code, "info"), code, message)


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
        report.add("info", "zero-scale", "scale 0 on a tensor computed from constants only: expected if it is "
                   "constant zero", name)
    elif (kind == "unnamed" and "[Constant]" in name) or kind == "internal":
        report.add("info", "zero-scale", "scale 0 on a TensorRT constant/helper tensor: expected for a zero "
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
    calibrated = set(g.calibrated) | {b.name for b in g.body}
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
        "body_tensors": len({b.name for b in g.body}),
        "body_covered": len({b.name for b in g.body if b.name in in_cache}),
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
    _body_findings(report, g, in_cache)
    for name in groups["extra"]:
        report.add("warning", "not-in-model", "cache entry names no tensor of this model (stale entry from "
                   "another export or a model with more layers); TensorRT ignores it", name)
    for name in groups["uncalibrated"]:
        report.add("warning", "uncalibrated-entry", "entry names a tensor of this model that TensorRT does not "
                   "calibrate (a constant, an initializer, an integer or an unused tensor): it probably "
                   "belongs to a different tensor of another export", name)
    if groups["unnamed"]:
        numbers = sorted(int(UNNAMED_RE.match(n).group(1)) for n in groups["unnamed"])  # type: ignore[union-attr]
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


def _body_findings(report: ValidationReport, g: _Graph, in_cache: set[str]) -> None:
    """One warning per If branch or Loop/Scan body with tensors TensorRT names but the cache lacks."""
    from ..ort.control_flow import BodyTensor, missing_bodies

    outermost = missing_bodies(g.body, [b.name for b in g.body if b.name not in in_cache])
    bodies: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for b in g.body:
        if b.name in outermost:
            bodies.setdefault(outermost[b.name], []).append(b)
    for path, missing in bodies.items():
        first = BodyTensor(missing[0].name, path, missing[0].in_loop, missing[0].duplicate)
        total = sum(1 for b in g.body if b.path[: len(path)] == path)
        if first.duplicate:
            why = ("their names are used more than once in the model, and TensorRT renames repeats name_N with a "
                   "counter shared by the whole parse")
        elif first.in_loop:
            why = ("a Loop/Scan body runs once per iteration (an ILoop in TensorRT); trt-calib cannot calibrate it, "
                   "onnxruntime returns no per-iteration values")
        elif first.path[-1][0] in g.shape_only:
            why = ("the calibration data never took this branch; its condition depends on tensor shapes only, so "
                   "only data of other shapes (another batch size or length, where the model admits one) takes it")
        else:
            why = ("the calibration data never took this branch, or the cache was made without looking into If "
                   "branches. Hint: calibrate with `trt-calib calibrate` on data that takes it")
        names = [b.name for b in missing]
        report.add(
            "warning",
            "body-not-covered",
            f"{len(missing)} of the {total} tensors TensorRT names in the {first.where} have no entry "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): TensorRT builds those layers without INT8 "
            f"scales. Why: {why}",
            body=first.where,
            tensors=names,
        )


def _amax_map(cache: CalibrationCache) -> dict[str, float]:
    return {n: a for n, a in cache.amaxes().items() if math.isfinite(a) and a > 0}


#: Ops whose output range says nothing about their input's (and the reverse): bounded outputs (a Sigmoid gives
#: class scores in [0, 1] whatever the logits) and non-linear ranges (Sqrt of a power spectrum, Exp, Pow). Comparing
#: amax across them flags correct caches: YOLOv8's class-score Sigmoid sits 1000x below its logits.
NO_RANGE_RELATION = frozenset({
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "HardSigmoid", "Softsign", "Erf", "Sin", "Cos", "Atan", "Asin",
    "Acos", "Sign", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
})


#: Ops whose output lies in [-1, 1] whatever their input. TensorRT's histogram range is below twice a tensor's
#: largest |x| (the first batch's max, doubled until later batches fit), and no threshold exceeds the range, so an
#: amax above 2 on their output cannot come from them (above 1 it can: entropy thresholds reach into the range).
UNIT_RANGE = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh", "Softsign", "Erf", "Sin", "Cos", "Sign"})


def _outlier_findings(report: ValidationReport, cache: CalibrationCache, g: _Graph) -> None:
    """A tensor whose amax is more than OUTLIER_FACTOR off every neighbour it has a range relation with, on both
    sides: its producer's inputs, and its consumers' outputs. No relation crosses an op of NO_RANGE_RELATION, and a
    Concat's output only bounds its inputs from above (an input far below the Concat is normal: YOLOv8's scores
    next to pixel boxes)."""
    amax = _amax_map(cache)
    for name in g.calibrated:
        a = amax.get(name)
        node = g.producer.get(name)
        if a is None or node is None:
            continue
        if node.op_type in UNIT_RANGE and a > 2.0:
            report.add("warning", "amax-outlier", f"amax {a:.6g} is above 2, but a {node.op_type} output lies in "
                       "[-1, 1] and TensorRT's histogram range stays below twice the largest value. Hint: a stale or "
                       "misnamed entry (it belongs to another tensor)", name, amax=a)
            continue
        if node.op_type in NO_RANGE_RELATION:
            continue
        before = [amax[n] for n in node.input if n in amax and n != name]
        after: list[float] = []
        bounds: list[float] = []  # Concat outputs: off only when this tensor is far above them
        for consumer in g.consumers.get(name, []):
            if consumer.op_type in NO_RANGE_RELATION:
                continue
            outs = [amax[o] for o in consumer.output if o in amax and o != name]
            (bounds if consumer.op_type == "Concat" else after).extend(outs)
        if not before or not (after or bounds):
            continue
        off = all(max(a / b, b / a) > OUTLIER_FACTOR for b in before + after) and all(
            a / b > OUTLIER_FACTOR for b in bounds
        )
        if off:
            neighbours = before + after + bounds
            nearest = min(neighbours, key=lambda b: abs(math.log(a / b)))
            report.add(
                "warning",
                "amax-outlier",
                f"amax {a:.6g} is more than {OUTLIER_FACTOR:g}x off its producer's inputs "
                f"({', '.join(f'{b:.3g}' for b in before)}) and its consumers' outputs "
                f"({', '.join(f'{b:.3g}' for b in after + bounds)}); nearest is {a / nearest:.3g}x. Hint: a stale or "
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
    "batches_sha256": "batch content sha256",
    "max_batches": "max batches",
    "order_sha256": "batch order",
    "shuffle": "shuffle",
    "seed": "seed",
    "offset": "offset",
    "limit": "limit",
    "last_batch": "last batch",
    "preprocess": "preprocessing",
}


#: The fields that pin the data's content: without one of them, equal batch counts say nothing about the data.
_CONTENT_FIELDS = ("sha256", "batches_sha256")


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
    compared = [label for key, label in _DATA_FIELDS.items() if key in recorded and key in data_manifest]
    unchecked = [label for key, label in _DATA_FIELDS.items() if key in data_manifest and key not in recorded]
    content = [key for key in _CONTENT_FIELDS if key in recorded and key in data_manifest]
    if not changed and not content:
        report.add(
            "warning",
            "provenance-data-unchecked",
            f"{where} records no sha256 of the data's content, so whether the data changed cannot be told "
            f"(not recorded: {', '.join(unchecked) or 'anything this data has'}"
            + (f"; compared and equal: {', '.join(compared)}" if compared else "") + "). Hint: recalibrate with "
            "this trt-calib, whose sidecar records them",
            unchecked=unchecked,
        )
        return
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
        missing = f"; not recorded there, so not compared: {', '.join(unchecked)}" if unchecked else ""
        report.add("info", "provenance-data", f"data, batching and order match {where} (compared: "
                   f"{', '.join(compared)}{missing})")


def _provenance_findings(
    report: ValidationReport,
    cache: CalibrationCache,
    cache_path: Path,
    model_path: Path | None,
    data_manifest: Mapping[str, Any] | None,
) -> None:
    from .provenance import file_sha256, provenance_problems, read_provenance, sidecar_path

    where = sidecar_path(cache_path).name
    try:
        record = read_provenance(cache_path)
    except (ValueError, OSError) as exc:
        report.add("warning", "provenance-unreadable", f"{sidecar_path(cache_path)} cannot be read ({exc}); "
                   "cannot tell whether the model or data changed since calibration")
        return
    if record is None and sidecar_path(cache_path).is_file():  # the file holds JSON null: not missing, malformed
        report.add("warning", "provenance-malformed", f"{where} is not a trt-calib sidecar: it holds JSON null, not "
                   "an object. Cannot tell whether the model or data changed since calibration. Hint: recalibrate, "
                   "or delete the file", problems=["holds JSON null, not an object"])
        return
    if record is None:
        if data_manifest is not None:
            report.add("info", "no-provenance", f"no {where} next to the cache (it is "
                       "written by `trt-calib calibrate`): cannot tell whether the data changed")
        return
    problems = provenance_problems(record)
    if problems:
        report.add("warning", "provenance-malformed", f"{where} is not a trt-calib sidecar: {'; '.join(problems)}. "
                   "Cannot tell whether the model or data changed since calibration. Hint: recalibrate, or delete "
                   "the file", problems=problems)
        return
    recorded_cache = (record.get("cache") or {}).get("sha256")
    if recorded_cache is not None:
        actual_cache = file_sha256(cache_path)
        if actual_cache != recorded_cache:
            report.add(
                "warning",
                "provenance-stale",
                f"{where} was written for another cache (sha256 {recorded_cache[:12]}...; this one has "
                f"{actual_cache[:12]}...): the cache was replaced or rewritten after it, or two runs wrote to one "
                "path, so its model and data records do not describe this cache and are not compared. Hint: "
                "recalibrate to get a matching pair",
                recorded_sha256=recorded_cache,
                cache_sha256=actual_cache,
            )
            return
    if data_manifest is not None:
        _data_findings(report, record, data_manifest, where)
    recorded = (record.get("model") or {}).get("sha256")
    if record.get("header") and record["header"] != cache.header:
        report.add("warning", "provenance-header", f"header {cache.header!r} differs from {record['header']!r} "
                   f"recorded in {where} when it was calibrated: the file was rewritten "
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
            f"({where}): its scales describe other weights. Hint: recalibrate",
            recorded_sha256=recorded,
            model_sha256=actual,
        )
    else:
        report.add("info", "provenance", f"model matches the one recorded in {where} "
                   f"(sha256 {actual[:12]}...)")


def validate_cache(
    cache: CalibrationCache | str | os.PathLike,
    model: Any = None,
    *,
    trt_version: str | None = None,
    algorithm: str | None = None,
    data_manifest: Mapping[str, Any] | None = None,
    dla: bool = False,
) -> ValidationReport:
    """Check a cache's header against a target, its entries against a model, its values, and its provenance.

    `data_manifest` (`BatchSource.manifest()` of the data at hand) is compared with the one the sidecar recorded.
    `dla=True` (needs `model`) adds DLA readiness (`tools.dla`): layers DLA cannot run in INT8 and why, scales its
    eligible layers lack, and the summary "N of M layers eligible, K scales missing".
    An unparsable cache becomes an `unparsable` error finding rather than an exception, so `--json` still reports.
    """
    source = None if isinstance(cache, CalibrationCache) else str(cache)
    model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
    target = {
        "trt_version": trt_version,
        "algorithm": header_algorithm(algorithm) if algorithm is not None else None,
    }
    if trt_version is not None:
        check_version(trt_version)
    if dla and model is None:
        raise TrtCalibError("DLA readiness needs the model: give --model")
    if source is not None and not Path(source).is_file():
        load_cache(cache)  # raises CacheFormatError naming the missing file: a user error, not a finding
    try:
        parsed = load_cache(cache)
    except CacheFormatError as exc:
        report = ValidationReport(source, None, None, None, model_name, target)
        report.add("error", "unparsable", f"{exc}. Hint: TensorRT would fail to read it or ignore it")
        return report
    report = ValidationReport(parsed.source, parsed.header, parsed.trt_version, parsed.algorithm, model_name, target)
    _note_findings(report, parsed)
    _header_findings(report, parsed, trt_version, algorithm)
    g = _graph(model) if model is not None else None
    _value_findings(report, parsed, g)
    if g is not None:
        _coverage_findings(report, parsed, g)
        _outlier_findings(report, parsed, g)
        _pool_findings(report, parsed, g, cache_version(parsed))
        if dla:
            from .dla import dla_findings

            dla_findings(report, parsed, model, trt_version=trt_version)
    else:
        for name in parsed.duplicates():
            report.add("warning", "duplicate", "name appears on more than one line; which one TensorRT uses is "
                       "not documented (trt-calib takes the last)", name)
        report.add("info", "no-model", "no model given: coverage, outliers and pool ties not checked")
    if source is not None:
        _provenance_findings(report, parsed, Path(source), Path(model_name) if model_name else None, data_manifest)
    return report
