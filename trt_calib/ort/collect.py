"""Calibrate an ONNX model on the CPU: run it with onnxruntime, stream per-tensor histograms, tie scales.

Every floating-point tensor TensorRT's ONNX parser calibrates (network inputs and node outputs; not initializers,
Constant outputs, integer or bool tensors, unused outputs) becomes an extra output of an in-memory copy of the
graph (`model`, `runner`). Each batch's activations update one `AbsHistogram` per tensor (`fill`) and are dropped
before the next batch runs, so memory is one batch's activations plus the histograms, whatever the dataset size.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..core import kernel as _kernel
from ..core.cache import DEFAULT_TRT_VERSION
from ..core.histogram import DEFAULT_NUM_BINS, AbsHistogram, finite_abs_max
from ..core.result import ALGORITHM_HEADERS, CalibrationResult, amax_from_histograms
from ..core.signs import SignedHistogram
from ..errors import CalibrationError
from .data import iter_batches
from .fill import fill_histograms
from .control_flow import CONTROL_FLOW_OPS, body_tensors, if_conditions, shape_conditions, summary_lines, uncovered_reasons
from .model import describe, float_types, load_model, model_inputs, refuse_quantized, tensor_types
from .runner import Runner, global_maxima, source_inputs
from .shard import collect_sharded

__all__ = [
    "ALGORITHM_HEADERS",
    "RANGE_MODES",
    "CalibrationResult",
    "collect_histograms",
    "collect_signed",
    "pipelined",
    "amax_from_histograms",
    "tie_scales",
    "calibrate",
]

log = logging.getLogger(__name__)

_POOL_OPS = ("MaxPool", "AveragePool")
#: How histogram ranges are set: "trt" is TensorRT's (first batch's max, doubled as later batches exceed it, so batch
#: size and order matter); "global" takes each tensor's max over all batches in a first pass and bins every batch
#: into that fixed range, so the result depends on neither (not TensorRT's algorithm).
RANGE_MODES = ("trt", "global")


def pipelined(threads: int | None) -> bool:
    """Whether calibration runs the next part while it bins one (`fill.run_ahead`): not with one thread or core."""
    return threads != 1 and (threads or _kernel.usable_cpus()) > 1


def collect_histograms(
    model: Any,
    batches: Iterable[Any],
    *,
    tensors: Sequence[str] | None = None,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = 256,
    name: str | None = None,
    range_mode: str = "trt",
    optimization: str = "basic",
    executor: Any = None,
) -> tuple[dict[str, AbsHistogram], int]:
    """One histogram per calibrated tensor, updated once per batch in batch order; returns (histograms, batches).

    A batch whose activations exceed `max_activation_mb` runs in parts; the histograms are exactly those of whole
    batches (the parts of the first batch before its largest values run twice, to learn its range before binning:
    `first_batch_in_parts`). With more than one thread (`pipelined`), the next part runs while one is binned, and
    each part gets half of `max_activation_mb`, so the activations alive at once stay within it. `progress` is called with 1 after
    each batch. `range_mode="global"` (see `RANGE_MODES`) reads `batches` twice: a first pass over every batch
    takes each tensor's max|x| (`global_maxima`), then fixed-range histograms of that range are filled.
    `optimization` is onnxruntime's graph optimisation (`OPTIMIZATION_LEVELS`; "basic" is the exact one).
    An `executor` (`ort.executor`) other than serial shards the batches over its workers (`ort.shard`): the same
    histograms, in two passes.
    """
    if range_mode not in RANGE_MODES:
        raise ValueError(f"unknown range_mode {range_mode!r}; choose one of {', '.join(RANGE_MODES)}")
    if executor is not None and executor.name != "serial":
        return collect_sharded(model, batches, executor, tensors=tensors, num_bins=num_bins, progress=progress,
                               threads=threads, max_activation_mb=max_activation_mb, name=name,
                               range_mode=range_mode, optimization=optimization)
    ahead = pipelined(threads)
    budget = int(max_activation_mb * 2**20) // (2 if ahead else 1)  # two parts are alive when one runs ahead
    runner = Runner.open(model, tensors, threads=threads, budget_bytes=budget, name=name, optimization=optimization,
                         inputs=source_inputs(batches))
    if range_mode == "global":
        # A tensor that is zero everywhere has no range to fix; its growing histogram stays at range 0 (amax 0).
        fixed = global_maxima(runner, batches)
        histograms = {n: AbsHistogram(num_bins, range=m) if m > 0 else AbsHistogram(num_bins) for n, m in fixed.items()}
    else:
        histograms = {n: AbsHistogram(num_bins) for n in runner.names}
    with _kernel.using_threads(threads):
        count = fill_histograms(runner, batches, histograms, first=range_mode == "trt", size=range_mode == "trt",
                                progress=progress, ahead=ahead)
    return histograms, count


def collect_signed(
    model: Any,
    batches: Iterable[Any],
    tensors: Sequence[str] | None = None,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    name: str | None = None,
    max_activation_mb: float = 256,
) -> tuple[dict[str, SignedHistogram], int]:
    """One SignedHistogram per calibrated tensor (or per name in `tensors`), updated once per batch; (histograms, batches).

    The `.abs` part of each equals what `collect_histograms` builds from the same batches. A batch whose activations
    exceed `max_activation_mb` runs in parts, with the same histograms; a first batch in parts runs twice (first for
    its max|x|, which sets TensorRT's range, so that no part is held back until the batch ends).
    """
    runner = Runner.open(model, tensors, threads=threads, budget_bytes=int(max_activation_mb * 2**20), name=name,
                         inputs=source_inputs(batches))
    histograms = {n: SignedHistogram(num_bins) for n in runner.names}
    count = 0
    with _kernel.using_threads(threads):
        for batch in iter_batches(batches, runner.specs):
            maxima = None
            if count == 0 and runner.size_parts(batch) > 1:  # the first batch's range, before anything is binned
                maxima = {}
                for values in runner.parts(batch):
                    for tensor, value in values.items():
                        maxima[tensor] = max(maxima.get(tensor, 0.0), finite_abs_max(value))
                    del values
            begun: set[str] = set()  # a tensor of an If branch is in the parts that take its branch only
            for values in runner.parts(batch):
                for tensor, value in values.items():
                    if tensor not in begun:
                        histograms[tensor].begin_batch(None if maxima is None else maxima[tensor])
                        begun.add(tensor)
                    histograms[tensor].add_part(value)
                del values
            for tensor in begun:
                histograms[tensor].end_batch()
            count += 1
            if progress is not None:
                progress(1)
    if runner.branches is not None:  # tensors of If branches no batch took have no histogram to give
        histograms = {n: h for n, h in histograms.items() if h.abs.num_batches or n in runner.input_names}
    return histograms, count


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r} (expected e.g. 10.16.1)") from None


def tie_scales(model: Any, amax: Mapping[str, float], *, trt_version: str = DEFAULT_TRT_VERSION) -> tuple[dict[str, float], dict[str, str]]:
    """Apply TensorRT's scale ties: pool outputs take their input's scale; Concat inputs take the output's (<= 8.0).

    Returns the tied amax mapping (same order) and which tensor each tied tensor took its scale from.
    """
    model = load_model(model)
    out = dict(amax)
    tied: dict[str, str] = {}

    def source(name: str) -> str:
        return tied.get(name, name)

    for node in model.graph.node:
        if node.op_type in _POOL_OPS and node.input and node.output:
            src, dst = node.input[0], node.output[0]
            if src in out and dst in out:
                out[dst] = out[src]
                tied[dst] = source(src)
    if _version_tuple(trt_version)[:2] <= (8, 0):
        for node in model.graph.node:
            if node.op_type == "Concat" and node.output and node.output[0] in out:
                dst = node.output[0]
                for src in node.input:
                    if src in out:
                        out[src] = out[dst]
                        tied[src] = source(dst)
    return out, tied


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def calibrate(
    model: Any,
    batches: Iterable[Any],
    *,
    algorithm: str = "entropy2",
    trt_version: str = DEFAULT_TRT_VERSION,
    percentile: float = 99.99,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = 256,
    range_mode: str = "trt",
    optimization: str = "basic",
    executor: Any = None,
) -> CalibrationResult:
    """Calibrate `model` on `batches` as TensorRT `trt_version` would with `algorithm`; nothing is written.

    `range_mode="global"` fixes each histogram's range to the tensor's max over all batches first, so the result
    does not depend on batch size or order; that is not TensorRT's algorithm (the result says so).
    `optimization="all"` runs onnxruntime's full graph optimisation: faster, but its convolutions sum in another
    order, so activations (and some scales) move by a few ULP from the exact default, "basic". An `executor`
    shards the batches over its workers with the same result (`collect_histograms`).
    """
    if algorithm not in ALGORITHM_HEADERS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHM_HEADERS)}")
    _version_tuple(trt_version)
    started = time.perf_counter()
    name = describe(model, "the model")
    model = load_model(model)
    refuse_quantized(model, name, "calibration")
    histograms, count = collect_histograms(
        model, batches, num_bins=num_bins, progress=progress, threads=threads, max_activation_mb=max_activation_mb,
        name=name,
        range_mode=range_mode,
        optimization=optimization,
        executor=executor,
    )
    uncovered = _uncovered(model, histograms)
    for name_ in uncovered:
        histograms.pop(name_, None)
    input_names = {s.name for s in model_inputs(model)}
    bad_inputs = [n for n in input_names if n in histograms and histograms[n].num_nan]
    if bad_inputs:
        raise CalibrationError(f"input(s) {', '.join(sorted(bad_inputs))} hold NaN values")
    nonfinite = [n for n, h in histograms.items() if h.num_nan or h.num_inf]
    if nonfinite:
        log.warning(
            "%d tensor(s) hold NaN or Inf values (their scale is inf or unreliable): %s",
            len(nonfinite),
            ", ".join(f"{n} ({histograms[n].num_nan} NaN, {histograms[n].num_inf} Inf)" for n in nonfinite[:10]),
        )
    options = {"percentile": percentile} if algorithm == "percentile" else {}
    raw, index = amax_from_histograms(histograms, algorithm, **options)
    amax, tied = tie_scales(model, raw, trt_version=trt_version)
    return CalibrationResult(
        amax=amax,
        histograms=histograms,
        algorithm=algorithm,
        trt_version=trt_version,
        tied=tied,
        entropy_index=index,
        num_batches=count,
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
        range_mode=range_mode,
        optimization=optimization,
        uncovered=uncovered,
    )


def _uncovered(model: Any, histograms: Mapping[str, AbsHistogram]) -> dict[str, str]:
    """The tensors TensorRT names in If/Loop/Scan bodies that no calibration batch reached, and why."""
    if not any(node.op_type in CONTROL_FLOW_OPS for node in model.graph.node):
        return {}  # bodies hang off top-level nodes: none, nothing to cover (and no shape inference to pay for)
    body = body_tensors(model, tensor_types(model), float_types())
    if not body:
        return {}
    covered = [n for n, h in histograms.items() if h.num_batches]
    reasons = uncovered_reasons(body, covered, owners=if_conditions(model), shape_only=shape_conditions(model))
    for line in summary_lines(reasons):
        log.warning("not calibrated: %s", line)
    return reasons
