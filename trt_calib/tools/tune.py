"""INT8 to an accuracy target: measured steps from the cheapest up, each a real run on held-out data.

1. thresholds: every threshold rule (minmax, TensorRT's entropy2, percentile 99.99, mse) and the best rule per
   tensor (each Q/DQ tensor's own measured SQNR on the calibration data), each scored on the held-out data;
2. weight rounding: `qdq.rounding.round_weights` (GPTQ-style codes fitted to the float model's layer outputs), with
   the threshold choice of step 1 made again on the rounded model; kept when it scores better;
3. bias correction: each layer's per-channel mean output error, measured against the ORIGINAL float model (not the
   rounded one, which would hide the weight error), folded into the biases; kept only when it scores better;
4. keep in float: `qdq.sensitivity` ranks the units on a few held-out batches, then the top k are kept in float
   (their original weights and biases back) for k = 1, 2, ... until the target is met or `max_keep` is reached.

It stops after the first step whose best configuration meets the target. The error is the metric's on the held-out
batches: "kl" (mean KL(FP32 || INT8) of the class probabilities), "cosine" (1 - cosine similarity), "sqnr" (dB,
higher is better), or a user metric (`ort.user_metric`). Choosing among candidates on the held-out data and reporting
on the same data is optimistic; give separate data to confirm (`trt-calib evaluate`).
"""

from __future__ import annotations

import html
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.cache import DEFAULT_TRT_VERSION, CalibrationCache
from ..core.result import ALGORITHM_HEADERS, amax_from_histograms
from ..errors import DataError, ModelError, UsageError
from ..ort.evaluate import (
    class_rows,
    cosine_error,
    kl_divergence,
    log_probabilities,
    looks_like_probabilities,
    sqnr_db,
    sum_sq_diff,
    sum_squares,
)
from ..ort.user_metric import MetricAccumulator, load_metric

__all__ = ["STEPS", "BUILTIN_METRICS", "TuneStep", "TuneResult", "Scorer", "tune", "report_html"]

log = logging.getLogger(__name__)

#: The steps, cheapest first.
STEPS = ("thresholds", "weight rounding", "bias correction", "keep in float")
#: Metrics computed here; anything else is a metric script FILE.py[:FUNCTION].
BUILTIN_METRICS = {
    "kl": ("mean KL(FP32 || INT8) of the classifier outputs' class probabilities (softmax of logits), nats", False),
    "cosine": ("1 - cosine similarity of each sample's FP32 and INT8 outputs, mean over samples and outputs", False),
    "sqnr": ("SQNR of the outputs over all samples, mean over outputs, dB", True),
}
_ALGORITHMS = ("minmax", "entropy2", "percentile", "mse")
_PER_TENSOR = "per-tensor best"


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class _Reference:
    """What every scoring run needs (shipped with each task, so any executor can run it)."""

    batches: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]  # FP32, per batch
    names: list[str]
    kinds: dict[str, str | None]  # output -> "logits" | "probabilities" | None
    metric: str  # a builtin name, or a metric script spec
    padded: int
    threads: int | None


def _trim(value: np.ndarray, rows: int) -> np.ndarray:
    return value[: value.shape[0] - rows] if rows and value.ndim and value.shape[0] > rows else value


def _score(ref: _Reference, got: list[dict[str, np.ndarray]]) -> tuple[float, bool]:
    """(error, higher_is_better) of one run's outputs against the FP32 ones."""
    last = len(got) - 1
    if ref.metric not in BUILTIN_METRICS:
        from ..ort.executor import per_process

        acc = MetricAccumulator(per_process(("trt-calib metric", ref.metric), lambda: load_metric(ref.metric)))
        for b, (fp32, int8, batch) in enumerate(zip(ref.outputs, got, ref.batches)):
            rows = ref.padded if b == last else 0
            fp32 = {k: _trim(v, rows) for k, v in fp32.items()}
            int8 = {k: _trim(v, rows) for k, v in int8.items()}
            feed = {k: _trim(v, rows) for k, v in batch.items()}
            samples = next(iter(fp32.values())).shape[0] if fp32 else None
            acc.add(fp32, int8, feed, samples)
        return float(acc.result()), bool(acc.higher_is_better)
    per_output = []
    for name in ref.names:
        kl, cos = [], []
        signal = noise = 0.0
        for b, (fp32, int8) in enumerate(zip(ref.outputs, got)):
            rows = ref.padded if b == last else 0
            x, y = _trim(fp32[name], rows), _trim(int8[name], rows)
            if ref.metric == "sqnr":
                signal += sum_squares(np.asarray(x, np.float64))
                noise += sum_sq_diff(np.asarray(x, np.float64), np.asarray(y, np.float64))
            elif ref.metric == "cosine":
                cos.append(cosine_error(x, y))
            elif ref.kinds[name] is not None:
                kind = ref.kinds[name]
                kl.append(kl_divergence(log_probabilities(class_rows(x), kind), log_probabilities(class_rows(y), kind)))
        if ref.metric == "sqnr":
            per_output.append(sqnr_db(signal, noise))
        elif ref.metric == "cosine":
            per_output.append(float(np.mean(np.concatenate(cos))))
        elif kl:
            per_output.append(float(np.mean(np.concatenate(kl))))
    return float(np.mean(per_output)), BUILTIN_METRICS[ref.metric][1]


def _score_models(task: tuple[_Reference, list[bytes]]) -> list[tuple[float, bool]]:
    """Run each Q/DQ model (serialised) on the held-out batches and score it; module level for the executors."""
    import onnx

    from ..qdq.bias import qdq_session

    ref, models = task
    results = []
    for data in models:
        session = qdq_session(onnx.load_model_from_string(data), outputs=ref.names, threads=ref.threads)
        got = []
        for index, batch in enumerate(ref.batches):
            try:
                got.append(dict(zip(ref.names, (np.asarray(v) for v in session.run(ref.names, batch)))))
            except Exception as exc:  # onnxruntime's own exception types
                raise ModelError(f"an INT8 candidate failed in onnxruntime on held-out batch {index}: {exc}") from None
        del session
        results.append(_score(ref, got))
    return results


class Scorer:
    """Scores Q/DQ models against the float model's outputs on the held-out batches (computed once here)."""

    def __init__(self, model: Any, batches: Sequence[Mapping[str, np.ndarray]], *, metric: str = "auto",
                 padded: int = 0, executor: Any = None, threads: int | None = None) -> None:
        from ..ort.executor import SerialExecutor
        from ..ort.model import ort_session

        self.executor = executor if executor is not None else SerialExecutor()
        names = [o.name for o in model.graph.output]
        session = ort_session(model, names, optimize=False, threads=threads, role="the FP32 model")
        outputs = []
        for index, batch in enumerate(batches):
            try:
                outputs.append(dict(zip(names, (np.asarray(v) for v in session.run(names, dict(batch))))))
            except Exception as exc:
                raise ModelError(f"the FP32 model failed in onnxruntime on held-out batch {index}: {exc}") from None
        del session
        if not outputs:
            raise DataError("no held-out batches to measure on")
        kinds: dict[str, str | None] = {}
        for name in names:
            rows = [class_rows(o[name]) if np.issubdtype(o[name].dtype, np.floating) else None for o in outputs]
            if all(r is not None for r in rows):
                kinds[name] = "probabilities" if all(looks_like_probabilities(r) for r in rows) else "logits"
            else:
                kinds[name] = None
        if metric == "auto":
            metric = "kl" if any(k is not None for k in kinds.values()) else "cosine"
        if metric == "kl" and not any(k is not None for k in kinds.values()):
            raise UsageError(f"metric 'kl' needs a classifier output of shape (N, C); the outputs are "
                             f"{', '.join(names)}. Hint: use --metric cosine, sqnr or a metric script")
        if metric not in BUILTIN_METRICS:
            load_metric(metric)  # fail here, once, with the script's own error
        self.reference = _Reference([dict(b) for b in batches], outputs, names, kinds, metric, padded,
                                    threads if threads is not None else self.executor.threads_per_worker)
        self.metric = metric
        self.higher_is_better: bool | None = BUILTIN_METRICS[metric][1] if metric in BUILTIN_METRICS else None
        self.runs = 0

    @property
    def samples(self) -> int:
        return int(sum(next(iter(o.values())).shape[0] for o in self.reference.outputs)) - self.reference.padded

    def description(self) -> str:
        if self.metric in BUILTIN_METRICS:
            return f"{self.metric}: {BUILTIN_METRICS[self.metric][0]}"
        return f"{self.metric} (a metric script)"

    def key(self, error: float) -> float:
        """Sort key: smaller is better; NaN last."""
        if error is None or math.isnan(error):
            return math.inf
        return -error if self.higher_is_better else error

    def meets(self, error: float, target: float | None) -> bool:
        if target is None or error is None or math.isnan(error):
            return False
        return error >= target if self.higher_is_better else error <= target

    def score(self, models: Sequence[Any], progress: Callable[[int], None] | None = None) -> list[float]:
        """The error of each Q/DQ model (ModelProto); runs go to the executor, a few models per task."""
        if not models:
            return []
        data = [m.SerializeToString() for m in models]
        workers = max(1, self.executor.workers)
        per_task = len(data) if self.executor.name == "serial" else max(1, math.ceil(len(data) / workers))
        chunks = [data[i : i + per_task] for i in range(0, len(data), per_task)]

        def tick(_: int) -> None:
            if progress is not None:
                progress(per_task)

        results = self.executor.map(_score_models, [(self.reference, c) for c in chunks], progress=tick)
        flat = [r for chunk in results for r in chunk]
        self.runs += len(flat)
        for _, higher in flat:
            if self.higher_is_better is None:
                self.higher_is_better = higher
            elif higher != self.higher_is_better:
                raise DataError(f"{self.metric}: said higher_is_better={self.higher_is_better} for one run and "
                                f"{higher} for another")
        return [e for e, _ in flat]


# ---------------------------------------------------------------------------------------------- results
def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


@dataclass
class TuneStep:
    """One measured step: its candidates (each a real run), the best one, and whether it is kept."""

    name: str
    error: float | None  # the configuration's error after this step (the best so far)
    kept: bool
    seconds: float
    candidates: list[dict[str, Any]] = field(default_factory=list)  # {"name", "error", ...}
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "error": _num(self.error), "kept": self.kept, "seconds": round(self.seconds, 3),
                "candidates": [{**c, "error": _num(c.get("error"))} for c in self.candidates], "note": self.note}


@dataclass
class TuneResult:
    """The configuration tune chose and how each step scored; the files come from its methods."""

    metric: str
    metric_description: str
    higher_is_better: bool
    target: float | None
    steps: list[TuneStep]
    float_model: Any  # the float model to calibrate/build with the cache: rounded weights, corrected biases if kept
    amax: dict[str, float]  # the chosen thresholds, TensorRT's ties applied
    algorithm: str  # the cache header's calibrator: "minmax" when every threshold is minmax's, else "entropy2"
    thresholds: str  # how they were chosen
    rounded: bool
    bias_corrected: bool
    kept: list[str]  # units kept in float
    layers: dict[str, str]  # unit -> the TensorRT layer name the ONNX parser gives it
    error: float
    sensitivity: Any = None  # the SensitivityResult the units were ranked by (None if that step did not run)
    rounding: Any = None  # the RoundingReport (None if rounding did not run)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def target_met(self) -> bool:
        if self.target is None:
            return False
        return self.error >= self.target if self.higher_is_better else self.error <= self.target

    def cache(self, trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
        """The TensorRT calibration cache of the chosen thresholds, for `float_model`."""
        return CalibrationCache.from_amax(self.amax, algorithm=ALGORITHM_HEADERS[self.algorithm],
                                          trt_version=trt_version)

    def qdq_model(self) -> Any:
        """The Q/DQ model (TensorRT 11): `float_model` with the chosen thresholds, the kept units in float."""
        from ..qdq import quantize_model

        exclude = {n: "kept in float by tune" for n in self.kept}
        qdq, _ = quantize_model(self.float_model, self.amax, exclude=exclude or None)
        return qdq

    def trtexec_flags(self, dtype: str = "fp16") -> list[str]:
        from ..qdq.sensitivity import trtexec_precision_flags

        return trtexec_precision_flags([self.layers.get(n, n) for n in self.kept], dtype)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "metric_description": self.metric_description,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "target_met": self.target_met,
            "final_error": _num(self.error),
            "steps": [s.to_json() for s in self.steps],
            "chosen": {
                "thresholds": self.thresholds,
                "cache_algorithm": self.algorithm,
                "weight_rounding": self.rounded,
                "bias_correction": self.bias_corrected,
                "kept_in_float": list(self.kept),
                "tensorrt_layers": {n: self.layers.get(n, n) for n in self.kept},
            },
            **self.info,
        }


# ---------------------------------------------------------------------------------------------- the steps
def _threshold_candidates(model: Any, calib: list[dict[str, np.ndarray]], trt_version: str,
                          threads: int | None) -> list[tuple[str, dict[str, float], str]]:
    """(name, tied amax, cache algorithm) for each rule and for the per-tensor best; one histogram collection."""
    from ..ort.collect import collect_histograms, tie_scales
    from ..ort.evaluate import best_per_tensor, threshold_sqnr
    from ..qdq import quantize_model

    histograms, _ = collect_histograms(model, calib, threads=threads)
    raw: dict[str, dict[str, float]] = {}
    out = []
    for algorithm in _ALGORITHMS:
        options = {"percentile": 99.99} if algorithm == "percentile" else {}
        raw[algorithm], _ = amax_from_histograms(histograms, algorithm, **options)
        tied, _ = tie_scales(model, raw[algorithm], trt_version=trt_version)
        out.append((algorithm, tied, "minmax" if algorithm == "minmax" else "entropy2"))
    _, coverage = quantize_model(model, out[-1][1], check=False)
    activations = [t for t in coverage.activations if t in raw["mse"]]
    candidates = {t: {a: raw[a][t] for a in _ALGORITHMS} for t in activations}
    sqnr = threshold_sqnr(model, calib, candidates, threads=threads) if candidates else {}
    best, picks = best_per_tensor(raw, sqnr, _ALGORITHMS)
    tied, _ = tie_scales(model, best, trt_version=trt_version)
    how = ", ".join(f"{a} {n}" for a, n in picks.items() if n)
    out.append((f"{_PER_TENSOR} ({how})", tied, "minmax" if picks["minmax"] == sum(picks.values()) else "entropy2"))
    return out


def _best_thresholds(model: Any, calib: list[dict[str, np.ndarray]], scorer: Scorer, trt_version: str,
                     threads: int | None, progress: Callable[[int], None] | None
                     ) -> tuple[list[dict[str, Any]], tuple[str, dict[str, float], str], float]:
    """Score every threshold candidate on `model`: (candidate rows, the best (name, amax, algorithm), its error)."""
    from ..qdq import quantize_model

    candidates = _threshold_candidates(model, calib, trt_version, threads)
    errors = scorer.score([quantize_model(model, amax)[0] for _, amax, _ in candidates], progress)
    rows = [{"name": name, "error": e} for (name, _, _), e in zip(candidates, errors)]
    best = min(range(len(candidates)), key=lambda i: (scorer.key(errors[i]), i))
    return rows, candidates[best], errors[best]


def _biased_layers(qdq: Any) -> list[tuple[int, str]]:
    """(index, output) of the Conv/ConvTranspose/Gemm nodes of a Q/DQ model whose weight is read through a DQ."""
    from ..qdq.graph import BIASED_OPS

    producer = {o: n for n in qdq.graph.node for o in n.output}
    out = []
    for i, node in enumerate(qdq.graph.node):
        if node.op_type in BIASED_OPS and len(node.input) > 1:
            p = producer.get(node.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                out.append((i, node.output[0]))
    return out


def _bias_corrected(original: Any, current: Any, amax: Mapping[str, float],
                    calib: list[dict[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """`current` with each quantised layer's bias corrected by its per-channel mean INT8 error against `original`."""
    import onnx
    from onnx import numpy_helper

    from ..qdq import quantize_model
    from ..qdq.bias import correct_biases

    qdq, _ = quantize_model(current, amax)
    layers = _biased_layers(qdq)
    _, info = correct_biases(original, qdq, layers, calib, None)
    corrected = {n.output[0]: n.input[2] for n in qdq.graph.node
                 if len(n.input) > 2 and n.input[2].endswith("_bias_corrected")}
    values = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name in set(corrected.values())}
    out = onnx.ModelProto()
    out.CopyFrom(current)
    graph = out.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for node in graph.node:
        if node.output and node.output[0] in corrected:
            name = corrected[node.output[0]]
            while name in names:
                name += "_"
            names.add(name)
            graph.initializer.append(numpy_helper.from_array(values[corrected[node.output[0]]], name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
    _drop_unused_initializers(graph)
    return out, info


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _opset13(model: Any) -> Any:
    """The model at opset >= 13 (per-channel DequantizeLinear needs it), converted once here rather than by every
    `quantize_model` call of every candidate."""
    from ..qdq.graph import MIN_OPSET, onnx_opset

    before = onnx_opset(model)
    if before >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeErrors naming the op it cannot adapt
        raise ModelError(f"the model is opset {before} and onnx's version converter cannot take it to opset "
                         f"{MIN_OPSET} (per-channel DequantizeLinear needs it): {exc}") from None
    log.info("model upgraded from opset %d to %d once for all candidates (per-channel DequantizeLinear needs 13)",
             before, MIN_OPSET)
    return converted


def _restored(current: Any, original: Any, nodes: Sequence[str]) -> Any:
    """`current` with the named nodes' weight and bias inputs as they are in `original` (units kept in float run
    with their own float weights and biases, not the rounded or corrected ones). Nodes are matched by output."""
    import onnx

    from ..qdq.graph import node_indices

    if not nodes:
        return current
    out = onnx.ModelProto()
    out.CopyFrom(current)
    index = node_indices(out.graph)
    by_output = {n.output[0]: n for n in original.graph.node if n.output}
    original_inits = {t.name: t for t in original.graph.initializer}
    inits = {t.name: t for t in out.graph.initializer}
    for name in nodes:
        node = out.graph.node[index[name]] if name in index else None
        source = by_output.get(node.output[0]) if node is not None and node.output else None
        if source is None:
            continue
        for j in (1, 2):
            want = source.input[j] if j < len(source.input) else ""
            have = node.input[j] if j < len(node.input) else ""
            if not want:  # the original has no bias: drop one bias correction added
                if have:
                    del node.input[j:]
                continue
            if want not in original_inits:
                continue
            if want in inits:
                inits[want].CopyFrom(original_inits[want])
            else:
                out.graph.initializer.append(original_inits[want])
                inits[want] = out.graph.initializer[-1]
            while len(node.input) <= j:
                node.input.append("")
            node.input[j] = want
    _drop_unused_initializers(out.graph)
    return out


def tune(
    model: Any,
    calib: Sequence[Mapping[str, np.ndarray]],
    held_out: Sequence[Mapping[str, np.ndarray]],
    *,
    metric: str = "auto",
    target: float | None = None,
    steps: Sequence[str] = STEPS,
    max_keep: int = 5,
    rank_batches: int = 2,
    candidates: int | str | None = "all",
    trt_version: str = DEFAULT_TRT_VERSION,
    padded: int = 0,
    executor: Any = None,
    threads: int | None = None,
    round_options: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run the steps (module docstring) until the target is met; every error is a real run on `held_out`.

    `calib`: calibration batches (thresholds, rounding, bias correction); `held_out`: the batches every candidate is
    scored on, `padded` rows of padding at the end of the last one left out. `metric`: "auto" (kl for a classifier,
    else cosine), "kl", "cosine", "sqnr" or a metric script FILE.py[:FUNCTION]. `steps`: which steps may run (in
    their fixed order). `rank_batches`: held-out batches the sensitivity ranking runs on (it runs every unit 4
    times). `candidates`: how many units it measures ("all", the default: every unit; N: the N largest by the
    screen; None: sensitivity's default for `max_keep`). `progress(n)` after n scored runs; `stage(text)` as each
    step starts.
    """
    import onnx

    from ..ort.model import load_model
    from ..qdq import quantize_model
    from ..qdq.graph import node_indices, tensorrt_layer_name
    from ..qdq.rounding import round_weights
    from ..qdq.sensitivity import default_candidates, sensitivity

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UsageError(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if "thresholds" not in steps:
        raise UsageError("the thresholds step cannot be skipped: every later step starts from its thresholds")
    if max_keep < 0 or rank_batches < 1:
        raise UsageError("max_keep must be >= 0 and rank_batches >= 1")
    started = time.perf_counter()
    original = _opset13(load_model(model))
    calib = [dict(b) for b in calib]
    held_out = [dict(b) for b in held_out]
    if not calib:
        raise DataError("no calibration batches")
    scorer = Scorer(original, held_out, metric=metric, padded=padded, executor=executor, threads=threads)
    say = stage or (lambda text: log.info("%s", text))
    result_steps: list[TuneStep] = []

    def done(error: float) -> bool:
        return scorer.meets(error, target)

    # 1. thresholds
    t0 = time.perf_counter()
    say("thresholds: calibrating and scoring every rule")
    rows, (name, amax, algorithm), error = _best_thresholds(original, calib, scorer, trt_version, threads, progress)
    current, thresholds = original, name
    result_steps.append(TuneStep("thresholds", error, True, time.perf_counter() - t0, rows,
                                 f"best: {name}"))
    rounded = bias_corrected = False
    rounding_report = None

    # 2. weight rounding, the thresholds chosen again on the rounded model
    if "weight rounding" in steps and not done(error):
        t0 = time.perf_counter()
        say("weight rounding: GPTQ-style codes on the calibration data")
        candidate, rounding_report = round_weights(original, calib, threads=threads, **dict(round_options or {}))
        rows, best, r_error = _best_thresholds(candidate, calib, scorer, trt_version, threads, progress)
        better = scorer.key(r_error) < scorer.key(error)
        note = (f"{rounding_report.codes_moved} of {sum(r.codes for r in rounding_report.layers)} codes moved; "
                f"thresholds again on the rounded model, best: {best[0]}")
        if better:
            current, (thresholds, amax, algorithm), error, rounded = candidate, best, r_error, True
        else:
            note += "; not kept (no better than without)"
        result_steps.append(TuneStep("weight rounding", error, better, time.perf_counter() - t0, rows, note))

    # 3. bias correction, measured against the original float model
    if "bias correction" in steps and not done(error):
        t0 = time.perf_counter()
        say("bias correction: per-channel mean errors against the float model")
        candidate, info = _bias_corrected(original, current, amax, calib)
        (b_error,) = scorer.score([quantize_model(candidate, amax)[0]], progress)
        better = scorer.key(b_error) < scorer.key(error)
        note = f"{info['layers']} layers corrected on {info['samples']} calibration samples"
        if better:
            current, error, bias_corrected = candidate, b_error, True
        else:
            note += "; not kept (no better than without)"
        result_steps.append(TuneStep("bias correction", error, better, time.perf_counter() - t0,
                                     [{"name": "bias correction", "error": b_error}], note))

    # 4. the fewest units kept in float
    kept: list[str] = []
    ranking = None
    if "keep in float" in steps and max_keep > 0 and not done(error):
        t0 = time.perf_counter()
        say(f"keep in float: ranking the units on {min(rank_batches, len(held_out))} held-out batch(es)")
        builtin = scorer.metric if scorer.metric in BUILTIN_METRICS else (
            "kl" if any(k is not None for k in scorer.reference.kinds.values()) else "cosine")
        # every unit measured by default: on EfficientNet-Lite0 the screen by local error left out the stem conv,
        # whose input pair is the largest loss once the weights are rounded (docs/accuracy.md, tune)
        ranking = sensitivity(current, amax, held_out[:rank_batches], metric=builtin, max_keep=0,
                              candidates=default_candidates(max_keep) if candidates is None else candidates,
                              executor=executor, padded=padded if rank_batches >= len(held_out) else 0,
                              info={"ranked_for": "trt-calib tune"})
        order = [u.node for u in ranking.units]
        rows = [{"name": "k=0", "k": 0, "error": error, "kept_in_float": []}]
        best_k, best_error = 0, error
        workers = max(1, scorer.executor.workers)
        k = 1
        # every unit in float is no INT8 model at all: at least one stays quantised
        limit = min(max_keep, len(order), int(ranking.screening.get("units", len(order) + 1)) - 1)
        while k <= limit:
            ks = list(range(k, min(limit, k + workers - 1) + 1))
            models = []
            for j in ks:
                float_j = _restored(current, original, order[:j]) if (rounded or bias_corrected) else current
                models.append(quantize_model(float_j, amax, exclude={n: "kept in float" for n in order[:j]})[0])
            errors = scorer.score(models, progress)
            met = False
            for j, e in zip(ks, errors):
                rows.append({"name": f"k={j}", "k": j, "error": e, "kept_in_float": order[:j]})
                if scorer.key(e) < scorer.key(best_error) and not met:
                    best_k, best_error = j, e
                if done(e) and not met:
                    best_k, best_error, met = j, e, True
            if met:
                break
            k = ks[-1] + 1
        kept = order[:best_k]
        if kept and (rounded or bias_corrected):
            current = _restored(current, original, kept)
        note = (f"units ranked by sensitivity ({ranking.metric.name}) on {min(rank_batches, len(held_out))} held-out "
                f"batch(es); k={best_k}: " + (", ".join(kept) if kept else "no unit kept helps"))
        if best_k:
            error = best_error
        result_steps.append(TuneStep("keep in float", error, bool(best_k), time.perf_counter() - t0, rows, note))

    for name in STEPS:
        if name not in [s.name for s in result_steps]:
            why = "not asked for" if name not in steps else "not needed: the target was met before"
            if name == "keep in float" and name in steps and max_keep == 0:
                why = "max_keep is 0"
            result_steps.append(TuneStep(name, None, False, 0.0, [], why))
    result_steps.sort(key=lambda s: STEPS.index(s.name))

    index = node_indices(current.graph)
    layers = {n: tensorrt_layer_name(current.graph.node[index[n]]) for n in kept if n in index}
    if current is original:
        current = onnx.ModelProto()
        current.CopyFrom(original)
    return TuneResult(
        metric=scorer.metric, metric_description=scorer.description(),
        higher_is_better=bool(scorer.higher_is_better), target=target, steps=result_steps, float_model=current,
        amax=dict(amax), algorithm=algorithm, thresholds=thresholds, rounded=rounded,
        bias_corrected=bias_corrected, kept=kept, layers=layers, error=error, sensitivity=ranking,
        rounding=rounding_report,
        info={"evaluation": {"batches": len(held_out), "samples": scorer.samples},
              "calibration": {"batches": len(calib),
                              "samples": int(sum(next(iter(b.values())).shape[0] for b in calib))},
              "runs": scorer.runs, "seconds": round(time.perf_counter() - started, 3)},
    )


# ---------------------------------------------------------------------------------------------- the report page
def report_html(result: TuneResult, *, title: str = "trt-calib tune", files: Mapping[str, str] | None = None,
                commands: Sequence[str] = ()) -> str:
    """A small self-contained HTML page: the steps with every candidate's error, the choice and how to use it."""
    e = html.escape

    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else e(str(v)))

    status = ("met" if result.target_met else "not met") if result.target is not None else "no target given"
    rows = []
    for step in result.steps:
        rows.append(f"<tr class='step'><th>{e(step.name)}</th><td>{fmt(step.error)}</td>"
                    f"<td>{'kept' if step.kept else 'not kept'}</td><td>{step.seconds:.1f} s</td>"
                    f"<td>{e(step.note)}</td></tr>")
        for c in step.candidates:
            rows.append(f"<tr><td class='cand'>{e(str(c.get('name')))}</td><td>{fmt(c.get('error'))}</td>"
                        "<td></td><td></td><td></td></tr>")
    chosen = result.to_json()["chosen"]
    listing = "".join(f"<li><code>{e(k)}</code>: {e(str(v))}</li>" for k, v in chosen.items())
    file_rows = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in (files or {}).items())
    cmd = "".join(f"<pre>{e(c)}</pre>" for c in commands)
    direction = "higher is better" if result.higher_is_better else "lower is better"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.25em 0.8em; text-align: left; }}
tr.step {{ border-top: 1px solid #999; background: #f4f4f4; }} td.cand {{ padding-left: 2em; color: #444; }}
pre {{ background: #f4f4f4; padding: 0.5em; overflow-x: auto; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>metric: {e(result.metric_description)} ({direction}); target {fmt(result.target)}: <b>{status}</b>;
final error <b>{fmt(result.error)}</b> on {result.info.get('evaluation', {}).get('samples', '?')} held-out samples.</p>
<table><tr><th>step</th><th>error</th><th></th><th>time</th><th>note</th></tr>
{''.join(rows)}
</table>
<h2>Chosen</h2><ul>{listing}</ul>
<h2>Files</h2><ul>{file_rows}</ul>
<h2>Use</h2>{cmd}
<p>Every error is a real run with onnxruntime (CPU, graph as written) on the held-out data; the candidates were
chosen on that same data, so confirm on other data with <code>trt-calib evaluate</code>. onnxruntime's int8
arithmetic approximates TensorRT's; build and measure to be sure.</p>
</body></html>
"""
