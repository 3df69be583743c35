"""Which layers lose the accuracy: per-unit INT8 sensitivity, measured on held-out batches, and a measured greedy curve.

A *unit* is a node `quantize_model` gives Q/DQ (a Conv/ConvTranspose/Gemm/MatMul with its weight and activation
inputs, or a residual Add), under the same placement rules and scales. Every figure is a real run of the model with
onnxruntime (graph as written, like `ort.evaluate`) on the same held-out batches, against FP32 outputs computed once:

- ``alone``: only that unit in INT8 (weights and activations), everything else float;
- ``excluded``: every unit in INT8 except that one (what keeping it in float buys back);
- ``weights_only`` / ``activations_only``: only that unit's int8 weights / only its activation Q/DQ pairs, so the
  ranking says which of the two hurts (None for a unit without weights, e.g. a residual Add);
- rank 1 is the unit whose exclusion helps most (best ``excluded``; ties go to the worse ``alone``, then graph order);
- greedy curve: k = 0, 1, 2, ... top-ranked units kept in float, each point a real run, until the target is met or
  `max_keep` is reached.

Q/DQ variants are built in memory from one placement plan (`Plan.restricted`): a variant differs from the full
INT8 model only in what it leaves out, every pair keeping its scale. Runs go through `ort.executor` (serial, local
processes or a Dask cluster) in tasks that carry the float model, the plan, the held-out batches and the FP32
outputs, so results do not depend on the engine.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import DataError, ModelError, UsageError
from ..ort.evaluate import (
    ORT_NOTE,
    SESSION_MODE,
    class_rows,
    sum_sq_diff,
    sum_squares,
    kl_divergence,
    log_probabilities,
    looks_like_probabilities,
    sqnr_db,
)
from .graph import node_label, node_indices, tensorrt_layer_name

__all__ = [
    "METRICS",
    "KEEP_DTYPES",
    "Metric",
    "UnitSensitivity",
    "GreedyPoint",
    "SensitivityResult",
    "sensitivity",
    "load_sensitivity",
    "trtexec_precision_flags",
    "layer_names_for",
    "exclusions",
    "measure_kept",
]

log = logging.getLogger(__name__)

#: Precisions a unit kept out of INT8 can run in on TensorRT 8.6-10.x (`build --keep-dtype`, trtexec's names).
KEEP_DTYPES = ("fp16", "fp32")


@dataclass(frozen=True)
class Metric:
    """An output error measure: its name in the JSON, what it is, and which way is better."""

    name: str
    description: str
    higher_is_better: bool = False

    def key(self, value: float | None) -> float:
        """A sort key: smaller is better; NaN and None sort last."""
        if value is None or math.isnan(value):
            return math.inf
        return -value if self.higher_is_better else value

    def meets(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target


METRICS = {
    "kl": Metric("kl", "mean KL(FP32 || INT8) over samples of the classifier outputs' class probabilities (the rows "
                 "as they are when they are probability vectors, else their softmax), nats; lower is better"),
    "cosine": Metric("cosine", "1 - cosine similarity of each sample's FP32 and INT8 outputs, mean over samples and "
                     "outputs; lower is better"),
    "sqnr": Metric("sqnr", "SQNR of the outputs, 10 log10(sum x^2 / sum (x - x_int8)^2) over all samples, mean over "
                   "outputs, dB; higher is better", higher_is_better=True),
}


@dataclass
class UnitSensitivity:
    """One unit's four measured errors and its rank."""

    node: str
    op: str
    alone: float
    excluded: float
    weights_only: float | None
    activations_only: float
    rank: int = 0
    index: int = field(default=-1, repr=False)  # node index in the (opset >= 13) graph

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "alone": _num(self.alone), "excluded": _num(self.excluded),
                "weights_only": _num(self.weights_only), "activations_only": _num(self.activations_only),
                "rank": self.rank}


@dataclass
class GreedyPoint:
    """The top-k units kept in float and the error measured with them excluded."""

    k: int
    kept_in_float: list[str]
    error: float
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "kept_in_float": list(self.kept_in_float), "error": _num(self.error),
                "outputs": self.outputs}


@dataclass
class SensitivityResult:
    """Every unit's errors, the ranking, the greedy curve and the k chosen from it (see the module docstring)."""

    metric: Metric
    baseline_error: float
    baseline_outputs: dict[str, dict[str, Any]]
    units: list[UnitSensitivity]  # by rank
    greedy: list[GreedyPoint]
    target: float | None
    max_keep: int
    chosen_k: int
    chosen_reason: str
    layers: dict[str, str] = field(default_factory=dict)  # unit -> the TensorRT layer name the ONNX parser gives it
    info: dict[str, Any] = field(default_factory=dict)  # what was measured on what (JSON-ready)
    run: dict[str, Any] = field(default_factory=dict)  # executor, runs, seconds: the only part that varies by engine

    @property
    def target_met(self) -> bool:
        return self.target is not None and any(self.metric.meets(p.error, self.target) for p in self.greedy)

    def kept(self, k: int | None = None) -> list[str]:
        """The top `k` units by rank (default: the chosen k), the ones to keep in float."""
        k = self.chosen_k if k is None else k
        if k < 0:
            raise UsageError(f"--keep must be >= 0, got {k}")
        if k > len(self.units):
            raise UsageError(f"--keep {k}: the ranking holds only {len(self.units)} unit(s)")
        return [u.node for u in self.units[:k]]

    def trtexec_flags(self, k: int | None = None, dtype: str = "fp16") -> list[str]:
        """trtexec flags (TensorRT 8.6-10.x) that keep the top `k` units in `dtype`; [] when k is 0."""
        return trtexec_precision_flags([self.layers.get(n, n) for n in self.kept(k)], dtype)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric.name,
            "metric_description": self.metric.description,
            "higher_is_better": self.metric.higher_is_better,
            "baseline_error": _num(self.baseline_error),
            "baseline_outputs": self.baseline_outputs,
            "units": [u.to_json() for u in self.units],
            "greedy": [p.to_json() for p in self.greedy],
            "target": self.target,
            "max_keep": self.max_keep,
            "chosen": {"k": self.chosen_k, "why": self.chosen_reason, "kept_in_float": self.kept()},
            "tensorrt_layers": dict(self.layers),
            **self.info,
            "run": self.run,
        }

    def table(self) -> str:
        """The ranking and the greedy curve as text."""
        m = self.metric
        width = max([len(u.node) for u in self.units] + [4])
        lines = [f"metric: {m.name} ({m.description})",
                 f"every unit INT8: {_fmt(self.baseline_error)}", ""]
        lines.append(f"{'rank':>4}  {'node':<{width}}  {'op':<13}  {'excluded':>10}  {'alone':>10}  "
                     f"{'weights':>10}  {'activations':>11}")
        for u in self.units:
            lines.append(f"{u.rank:>4}  {u.node:<{width}}  {u.op:<13}  {_fmt(u.excluded):>10}  {_fmt(u.alone):>10}  "
                         f"{_fmt(u.weights_only):>10}  {_fmt(u.activations_only):>11}")
        lines += ["", "excluded: every unit INT8 but this one; alone: only this one; weights / activations: only its "
                  "int8 weights / only its input Q/DQ pairs", "",
                  "greedy (top-k units kept in float, each a real run):"]
        for p in self.greedy:
            mark = "  <- chosen" if p.k == self.chosen_k else ""
            kept = ", ".join(p.kept_in_float[-1:]) if p.k else "-"
            lines.append(f"  k={p.k:<3} {_fmt(p.error):>10}  {'+ ' + kept if p.k else kept}{mark}")
        lines.append(f"chosen: k={self.chosen_k} ({self.chosen_reason})")
        return "\n".join(lines)


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


# ---------------------------------------------------------------------------------------------- trtexec
def trtexec_precision_flags(layers: Sequence[str], dtype: str = "fp16") -> list[str]:
    """trtexec flags that make `layers` run and output in `dtype` (TensorRT 8.6-10.x; removed in 11).

    trtexec splits the lists on ',' and a name from its type on the last ':' (samples/common/sampleOptions.cpp), so a
    layer name holding ',' or a quote cannot be given; '*' in a name is a wildcard there. Each flag is shell-quoted.
    """
    if dtype not in KEEP_DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(KEEP_DTYPES)}")
    if not layers:
        return []
    bad = [n for n in layers if "," in n or "'" in n]
    if bad:
        raise UsageError(
            f"layer name(s) {', '.join(repr(n) for n in bad[:5])} hold ',' or \"'\", which trtexec's "
            "--layerPrecisions cannot express. Hint: rename the ONNX nodes, or use `trt-calib build --keep-precision`"
        )
    wild = [n for n in layers if "*" in n]
    if wild:
        log.warning("layer name(s) %s hold '*', which trtexec reads as a wildcard", ", ".join(wild[:5]))
    spec = ",".join(f"{n}:{dtype}" for n in layers)
    return [shlex.quote(f) for f in
            ("--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}")]


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class _Sweep:
    """What every run needs, shipped with each task (so any executor can run it): the float model, the plan, the
    held-out batches and the FP32 outputs."""

    model: Any  # the float model at opset >= 13, an ort.executor.ShippedModel (over 2 GiB too)
    plan: Any  # placement.Plan
    batches: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]  # per batch, per output
    outputs: list[str]
    kinds: dict[str, str | None]  # output -> "probabilities" | "logits" (classifier) | None
    metric: Metric
    padded: int  # padded rows at the end of the last batch, left out of the scores
    threads: int | None


def _trim(values: list[np.ndarray], rows: int) -> list[np.ndarray]:
    return [v[: v.shape[0] - rows] if rows and v.ndim and v.shape[0] > rows else v for v in values]


def _score(sweep: _Sweep, got: list[list[np.ndarray]]) -> tuple[float, dict[str, dict[str, Any]]]:
    """(headline error, per-output measures) of one run's outputs against the FP32 reference."""
    last = len(got) - 1
    per_output: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(sweep.outputs):
        kl: list[np.ndarray] = []
        cos: list[np.ndarray] = []
        signal = noise = 0.0
        for b, (ref, out) in enumerate(zip(sweep.reference, got)):
            x, y = ref[k], out[k]
            if b == last:
                x, y = _trim([x, y], sweep.padded)
            signal += sum_squares(np.asarray(x, np.float64))
            noise += sum_sq_diff(np.asarray(x, np.float64), np.asarray(y, np.float64))
            cos.append(_cosine_error(x, y))
            kind = sweep.kinds[name]
            if kind is not None:
                p, q = log_probabilities(class_rows(x), kind), log_probabilities(class_rows(y), kind)
                kl.append(kl_divergence(p, q))
        row: dict[str, Any] = {"1-cosine": float(np.mean(np.concatenate(cos))), "sqnr_db": sqnr_db(signal, noise)}
        if kl:
            row["kl"] = float(np.mean(np.concatenate(kl)))
        per_output[name] = row
    m = sweep.metric
    if m.name == "kl":
        error = float(np.mean([r["kl"] for r in per_output.values() if "kl" in r]))
    elif m.name == "cosine":
        error = float(np.mean([r["1-cosine"] for r in per_output.values()]))
    else:
        error = float(np.mean([r["sqnr_db"] for r in per_output.values()]))
    return error, {n: {k: _num(v) for k, v in r.items()} for n, r in per_output.items()}


def _cosine_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cos(x_i, y_i) per sample (the batch dim first): 0 when both are zero, 1 when only one is.

    Computed as |x/|x| - y/|y||^2 / 2, which equals 1 - cos but keeps its precision for nearly equal outputs
    (1 - x.y/(|x||y|) cancels to rounding noise there) and is exactly 0 for equal ones.
    """
    n = x.shape[0] if x.ndim else 1
    a = np.asarray(x, np.float64).reshape(n, -1)
    b = np.asarray(y, np.float64).reshape(n, -1)
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    ua = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    ub = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    half = 0.5 * np.sum((ua - ub) ** 2, axis=1)
    one_zero = (na[:, 0] > 0) != (nb[:, 0] > 0)
    return np.where(one_zero, 1.0, half)


def _run_variants(task: tuple[_Sweep, list[tuple[frozenset, frozenset]]]) -> list[tuple[float, dict]]:
    """Build and run each (int8-weight units, int8-activation units) variant; module level so workers can run it."""
    import onnx

    from .bias import qdq_session
    from .graph import Graph
    from .rewrite import rewrite_graph

    sweep, variants = task
    work = sweep.model.parse()  # a ShippedModel: a model over 2 GiB travels with its weights beside the graph
    g = Graph(work.graph)
    results = []
    for weights, activations in variants:
        model = onnx.ModelProto()
        model.CopyFrom(work)
        rewrite_graph(model, g, sweep.plan.restricted(weights=weights, activations=activations))
        session = qdq_session(model, outputs=sweep.outputs, threads=sweep.threads)
        got = []
        for index, batch in enumerate(sweep.batches):
            try:
                got.append([np.asarray(v) for v in session.run(sweep.outputs, batch)])
            except Exception as exc:  # onnxruntime's own exception types
                raise ModelError(f"a Q/DQ variant failed in onnxruntime on held-out batch {index}: {exc}") from None
        del session
        results.append(_score(sweep, got))
    return results


class _Runner:
    """Runs variants on an executor in tasks; counts runs and time, reports progress per finished run."""

    def __init__(self, sweep: _Sweep, executor: Any, progress: Callable[[int], None] | None) -> None:
        self.sweep = sweep
        self.executor = executor
        self.progress = progress
        self.runs = 0

    def __call__(self, variants: list[tuple[frozenset, frozenset]], *, per_task: int | None = None) -> list[tuple]:
        if not variants:
            return []
        if per_task is None:
            # One run per task in this process; elsewhere a few tasks per worker, each shipping the sweep once.
            workers = max(1, self.executor.workers)
            per_task = 1 if self.executor.name == "serial" else max(1, math.ceil(len(variants) / (4 * workers)))
        chunks = [variants[i : i + per_task] for i in range(0, len(variants), per_task)]
        left = [len(variants)]

        def tick(_: int) -> None:
            n = min(per_task, left[0])
            left[0] -= n
            if self.progress is not None and n:
                self.progress(n)

        results = self.executor.map(_run_variants, [(self.sweep, c) for c in chunks], progress=tick)
        self.runs += len(variants)
        return [r for chunk in results for r in chunk]


# ---------------------------------------------------------------------------------------------- the sweep
def _resolve_metric(metric: str, kinds: Mapping[str, str | None], probabilities: Mapping[str, bool]) -> Metric:
    if metric == "auto":
        if kinds and all(kinds[n] is not None and probabilities[n] for n in kinds):
            return METRICS["kl"]
        return METRICS["cosine"]
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of auto, {', '.join(METRICS)}")
    if metric == "kl" and not any(k is not None for k in kinds.values()):
        raise UsageError(
            f"metric 'kl' needs a classifier output of shape (N, C) (or (N, C, 1, ...)); the outputs are "
            f"{', '.join(kinds)}. Hint: use --metric cosine or sqnr"
        )
    return METRICS[metric]


def _samples(sweep: _Sweep) -> int:
    return int(sum(r[0].shape[0] if r[0].ndim else 1 for r in sweep.reference)) - sweep.padded


def _setup(model: Any, scales: Any, eval_batches: Iterable[Any], *, metric: str, placement: str, per_channel: bool,
           padded: int | None, threads: int | None) -> tuple[Any, _Sweep]:
    """The full placement plan and the sweep every run shares: held-out batches, FP32 outputs (computed once here)
    and the metric resolved from them."""
    from ..ort.model import model_inputs, ort_session
    from ..ort.data import BatchSource, iter_batches
    from .quantize import prepare_model

    prepared = prepare_model(model, scales, per_channel=per_channel, placement=placement)
    work = prepared.work
    if padded is None:
        padded = eval_batches.num_padded if isinstance(eval_batches, BatchSource) else 0
    batches = list(iter_batches(eval_batches, model_inputs(work)))
    if not batches:
        raise DataError("no held-out batches to measure on")
    outputs = [o.name for o in work.graph.output]
    session = ort_session(work, outputs, optimize=False, role="the FP32 model")
    reference = []
    for index, batch in enumerate(batches):
        try:
            reference.append([np.asarray(v) for v in session.run(outputs, batch)])
        except Exception as exc:
            raise ModelError(f"the FP32 model failed in onnxruntime on held-out batch {index}: {exc}") from None
    del session
    kinds: dict[str, str | None] = {}
    probabilities: dict[str, bool] = {}
    for k, name in enumerate(outputs):
        first = reference[0][k]
        rows = [class_rows(r[k]) for r in reference] if np.issubdtype(first.dtype, np.floating) else [None]
        classifier = all(r is not None for r in rows)
        probabilities[name] = classifier and all(looks_like_probabilities(r) for r in rows)
        kinds[name] = None if not classifier else ("probabilities" if probabilities[name] else "logits")
    chosen = _resolve_metric(metric, kinds, probabilities)
    if chosen.name != "kl":
        kinds = dict.fromkeys(kinds)  # no KL to compute
    from ..ort.executor import ShippedModel

    sweep = _Sweep(ShippedModel.of(work), prepared.plan, batches, reference, outputs, kinds, chosen, padded, threads)
    return prepared, sweep


def measure_kept(
    model: Any,
    scales: Any,
    eval_batches: Iterable[Any],
    kept_sets: Sequence[Sequence[str]],
    *,
    metric: str = "auto",
    placement: str = "trt",
    per_channel: bool = True,
    executor: Any = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Metric, list[float]]:
    """The error of the INT8 model with each set of nodes kept in float (what `quantize_model(exclude=...)` writes),
    measured like `sensitivity`'s runs: (the metric, one error per set)."""
    from ..ort.executor import SerialExecutor

    executor = executor if executor is not None else SerialExecutor()
    prepared, sweep = _setup(model, scales, eval_batches, metric=metric, placement=placement,
                             per_channel=per_channel, padded=None, threads=executor.threads_per_worker)
    known = node_indices(prepared.work.graph)
    every = frozenset(prepared.plan.units)
    variants = []
    for names in kept_sets:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ModelError(f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model")
        rest = every - {known[n] for n in names}
        variants.append((rest, rest))
    results = _Runner(sweep, executor, progress)(variants)
    return sweep.metric, [error for error, _ in results]


def sensitivity(
    model: Any,
    scales: Any,
    eval_batches: Iterable[Any],
    *,
    metric: str = "auto",
    placement: str = "trt",
    per_channel: bool = True,
    target: float | None = None,
    max_keep: int = 10,
    executor: Any = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    info: Mapping[str, Any] | None = None,
    padded: int | None = None,
) -> SensitivityResult:
    """Rank every unit `quantize_model(model, scales, placement=..., per_channel=...)` would quantise by the output
    error INT8 costs there, on `eval_batches` (held-out data), and measure the greedy curve (module docstring).

    `metric`: "auto" (KL when every output is a probability vector, else 1 - cosine), "kl", "cosine" or "sqnr".
    `target`: stop the greedy curve at the first k whose error meets it (<=, or >= for sqnr). `executor`: an
    `ort.executor.Executor` (default: this process); `progress(n)` after n runs finish, `total(n)` once with the
    most runs there will be. `padded`: rows of padding at the end of the last batch, left out of the scores (default:
    a `BatchSource`'s own count). `info` is copied into the JSON.
    """
    from ..ort.executor import SerialExecutor

    if max_keep < 0:
        raise UsageError(f"max_keep must be >= 0, got {max_keep}")
    if target is not None and not math.isfinite(target):
        raise UsageError(f"target must be a finite number, got {target}")
    started = time.perf_counter()
    executor = executor if executor is not None else SerialExecutor()
    prepared, sweep = _setup(model, scales, eval_batches, metric=metric, placement=placement,
                             per_channel=per_channel, padded=padded, threads=executor.threads_per_worker)
    plan, nodes, units, chosen_metric = prepared.plan, prepared.work.graph.node, prepared.plan.units, sweep.metric
    run = _Runner(sweep, executor, progress)

    every = frozenset(units)
    none: frozenset = frozenset()
    variants: dict[tuple[frozenset, frozenset], int] = {}

    def want(w: frozenset, a: frozenset) -> tuple[frozenset, frozenset]:
        variants.setdefault((w, a), len(variants))
        return (w, a)

    baseline = want(every, every)
    asked = {}
    for u in units:
        one = frozenset([u])
        has_weights = u in plan.weights
        asked[u] = {
            "alone": want(one, one),
            "excluded": want(every - one, every - one),
            "weights_only": want(one, none) if has_weights else None,
            "activations_only": want(none, one) if has_weights else None,
        }
    if total is not None:
        total(len(variants) + min(max_keep, len(units)))
    measured = dict(zip(variants, run(list(variants))))
    ranking_seconds = time.perf_counter() - started

    rows = []
    for u in units:
        got = {key: (measured[v][0] if v is not None else None) for key, v in asked[u].items()}
        if got["activations_only"] is None:
            got["activations_only"] = got["alone"]  # no weights: the unit is its activations
        rows.append(UnitSensitivity(node_label(nodes[u], u), nodes[u].op_type, got["alone"], got["excluded"],
                                    got["weights_only"], got["activations_only"], index=u))
    m = chosen_metric
    rows.sort(key=lambda r: (m.key(r.excluded), -m.key(r.alone), r.index))
    for rank, r in enumerate(rows, 1):
        r.rank = rank

    base_error, base_outputs = measured[baseline]
    greedy = [GreedyPoint(0, [], base_error, base_outputs)]
    limit = min(max_keep, len(rows))
    k = 1
    greedy_started = time.perf_counter()
    while (target is None or not m.meets(greedy[-1].error, target)) and k <= limit:
        ks = list(range(k, min(limit, k + max(1, executor.workers) - 1) + 1))
        sets = []
        for j in ks:
            kept = frozenset(r.index for r in rows[:j])
            sets.append((every - kept, every - kept))
        for j, (error, per_output) in zip(ks, run(sets, per_task=1)):
            greedy.append(GreedyPoint(j, [r.node for r in rows[:j]], error, per_output))
            if target is not None and m.meets(error, target):
                break
        k = ks[-1] + 1
    meeting = [p.k for p in greedy if target is not None and m.meets(p.error, target)]
    if meeting:
        chosen, why = meeting[0], f"the smallest k whose error meets the target {target:g}"
    else:
        best = min(greedy, key=lambda p: (m.key(p.error), p.k))
        chosen = best.k
        why = ("the lowest error of the curve (no target given)" if target is None else
               f"target {target:g} not met within k <= {limit}: the lowest error of the curve")

    layers = {r.node: tensorrt_layer_name(nodes[r.index]) for r in rows}
    doc = {
        "placement": placement,
        "per_channel_weights": per_channel,
        "evaluation": {"batches": len(sweep.batches), "samples": _samples(sweep)},
        "session": SESSION_MODE,
        "note": ORT_NOTE,
        **dict(info or {}),
    }
    return SensitivityResult(
        metric=m, baseline_error=base_error, baseline_outputs=base_outputs, units=rows, greedy=greedy,
        target=target, max_keep=max_keep, chosen_k=chosen, chosen_reason=why, layers=layers, info=doc,
        run={"executor": executor.name, "workers": executor.workers, "runs": run.runs,
             "ranking_seconds": round(ranking_seconds, 3),
             "greedy_seconds": round(time.perf_counter() - greedy_started, 3),
             "seconds": round(time.perf_counter() - started, 3)},
    )


# ---------------------------------------------------------------------------------------------- reading SENS.json
def load_sensitivity(path: str | Path) -> SensitivityResult:
    """A SENS.json written by `trt-calib sensitivity`, checked enough to act on; errors name the file."""
    from .._util import read_json

    path = Path(path)
    # bounded, regular files only, and a JSON nested too deeply for Python is a DataError, not a RecursionError
    doc = read_json(path, limit=256 << 20, kind="sensitivity JSON", error=DataError)
    try:
        return _from_json(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: not a sensitivity file of trt-calib ({type(exc).__name__}: {exc}). "
            "Hint: write one with `trt-calib sensitivity MODEL --data D -o SENS.json`"
        ) from None


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _from_json(doc: Mapping[str, Any]) -> SensitivityResult:
    metric = METRICS[doc["metric"]]
    units = [UnitSensitivity(str(u["node"]), str(u["op"]), _float(u["alone"]), _float(u["excluded"]),
                             _float(u["weights_only"]), _float(u["activations_only"]), int(u["rank"]))
             for u in doc["units"]]
    ranks = sorted(u.rank for u in units)
    if ranks != list(range(1, len(units) + 1)):
        raise ValueError(f"ranks must be 1..{len(units)}, got {ranks[:10]}")
    units.sort(key=lambda u: u.rank)
    greedy = [GreedyPoint(int(p["k"]), [str(n) for n in p["kept_in_float"]], float(p["error"]),
                          dict(p.get("outputs", {}))) for p in doc["greedy"]]
    chosen = doc.get("chosen", {})
    known = {"metric", "metric_description", "higher_is_better", "baseline_error", "baseline_outputs", "units",
             "greedy", "target", "max_keep", "chosen", "tensorrt_layers", "run"}
    return SensitivityResult(
        metric=metric, baseline_error=float(doc["baseline_error"]),
        baseline_outputs=dict(doc.get("baseline_outputs", {})),
        units=units, greedy=greedy, target=_float(doc.get("target")), max_keep=int(doc.get("max_keep", len(greedy))),
        chosen_k=int(chosen.get("k", 0)), chosen_reason=str(chosen.get("why", "")),
        layers={str(k): str(v) for k, v in doc.get("tensorrt_layers", {}).items()},
        info={k: v for k, v in doc.items() if k not in known}, run=dict(doc.get("run", {})),
    )


def layer_names_for(model: Any, nodes: Sequence[str]) -> dict[str, str]:
    """node name (as the coverage report or SENS.json lists it, or TensorRT's node_of_<output>) -> the name of the
    TensorRT layer the ONNX parser creates for it; a name that is no node of `model` is a ModelError."""
    from ..ort.model import load_model

    graph = load_model(model).graph
    known = node_indices(graph)
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise ModelError(
            f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model. Hint: the names must come from "
            "this model (a SENS.json of another model, or a typo?)"
        )
    return {n: tensorrt_layer_name(graph.node[known[n]]) for n in nodes}


def exclusions(
    model: Any,
    *,
    nodes: Sequence[str] = (),
    sensitivity_file: str | Path | None = None,
    keep: int | None = None,
    op_types: Sequence[str] = (),
) -> dict[str, str]:
    """node -> why to leave it in float, from names, the top `keep` units of a SENS.json (default: the k it chose)
    and op types; what `quantize_model(exclude=...)` takes. Op types no node has are only logged."""
    from ..ort.model import load_model

    graph = load_model(model).graph
    out: dict[str, str] = {}
    for name in nodes:
        out.setdefault(name, "named on request")
    if sensitivity_file is not None:
        result = load_sensitivity(sensitivity_file)
        kept = result.kept(keep)
        how = f"top {len(kept)}" + ("" if keep is not None else f", the k it chose: {result.chosen_reason}")
        for unit in result.units[: len(kept)]:
            out.setdefault(unit.node, f"sensitivity rank {unit.rank} in {Path(sensitivity_file).name} ({how})")
    for op in op_types:
        hits = [node_label(n, i) for i, n in enumerate(graph.node) if n.op_type == op]
        if not hits:
            log.warning("--exclude-op-types %s: the model has no %s node", op, op)
        for label in hits:
            out.setdefault(label, f"op type {op}")
    return out  # names that are no node of the model: quantize_model says so, with close matches
