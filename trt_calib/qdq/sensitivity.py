"""Which layers lose the accuracy: per-unit INT8 sensitivity on held-out batches, screened cheaply, then measured
where it matters, and a measured greedy curve.

A *unit* is a node `quantize_model` gives Q/DQ (a Conv/ConvTranspose/Gemm/MatMul with its weight and activation
inputs, or a residual Add), under the same placement rules and scales. Every figure compares a variant's outputs
with the FP32 outputs on the same held-out batches, run with onnxruntime (graph as written, like `ort.evaluate`):

- ``alone``: only that unit in INT8 (weights and activations), everything else float;
- ``excluded``: every unit in INT8 except that one (what keeping it in float buys back);
- ``weights_only`` / ``activations_only``: only that unit's int8 weights / only its activation Q/DQ pairs, so the
  ranking says which of the two hurts (None for a unit without weights, e.g. a residual Add);
- rank 1 is the unit whose exclusion helps most (best ``excluded``; ties go to the worse ``alone``, then graph order);
- greedy curve: k = 0, 1, 2, ... top-ranked units kept in float, each point a run on every held-out sample, until the
  target is met or `max_keep` (never every unit: at most all but one) is reached.

**Cost proportional to what changes.** A variant differs from the FP32 model (alone, weights or activations only) or
from the all-INT8 model (excluded, the greedy points) only in the nodes its change reaches: its *cone*. A task runs
the reference model once per part of a batch, only as far as the tensors its variants' cones read
(`ort.runner.Runner` on `cut_model`), then each variant's cone alone (`ort.runner.SuffixRunner`): a unit near the
outputs costs a few nodes, not a model. With two cores or more, two cones run at once on one thread each
(`cone_lanes`): their many small kernels keep cores busier that way, and the numbers are the same. Batches are cut
into parts under `max_activation_mb`, as in calibration.

**Screening.** When there are more units than `candidates`, every unit is first screened by its *local error*: the
noise power over the signal power at its outputs with only it in INT8 and FP32 inputs, on every held-out sample (one
node per unit: about one pass of the model for all of them). The `candidates` units with the largest local error
are measured (all four fields, each a run to the outputs on every held-out sample) and ranked by those measurements
(`units`); the others are listed with their local error (`screened_out`), an estimate, not a measurement. The
baseline and the greedy curve are always measured.

**Nothing lost.** Results are kept as they are measured: `checkpoint(doc)` receives, after every finished task, a
partial document (``"partial": true``) with every finished run; `resume=doc` skips those runs (the rest of the run
must be the same: a fingerprint of model, scales, held-out data and options is checked), so an interrupted sweep
continues to the same result.

Q/DQ variants are built from one placement plan (`Plan.restricted`): a variant differs from the full INT8 model only
in what it leaves out, every pair keeping its scale. Runs go through `ort.executor` (serial, local processes or a
Dask cluster) in tasks that carry the float model, the plan, the held-out batches and the FP32 outputs, so results
do not depend on the engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .._util import MAX_JSON_DEPTH, json_depth
from ..errors import CalibrationError, DataError, ModelError, UsageError
from ..ort.evaluate import (
    ORT_NOTE,
    SESSION_MODE,
    batch_axis,
    batch_first,
    batch_samples,
    class_rows,
    cosine_error,
    output_batch_axes,
    take_samples,
    sum_sq_diff,
    sum_squares,
    kl_divergence,
    log_probabilities,
    looks_like_probabilities,
    sqnr_db,
)
from .branches import NO_QDQ_THERE
from .graph import WEIGHTED_OPS, node_label, node_indices, tensorrt_layer_name

__all__ = [
    "METRICS",
    "KEEP_DTYPES",
    "FORMAT",
    "PARTIAL_FORMAT",
    "Metric",
    "UnitSensitivity",
    "GreedyPoint",
    "SensitivityResult",
    "sensitivity",
    "default_candidates",
    "load_sensitivity",
    "read_partial",
    "trtexec_precision_flags",
    "layer_names_for",
    "exclusions",
    "measure_kept",
    "not_ranked_groups",
    "cone_lanes",
    "MAX_LANES",
]

log = logging.getLogger(__name__)

#: Precisions a unit kept out of INT8 can run in on TensorRT 8.6-10.x (`build --keep-dtype`, trtexec's names).
KEEP_DTYPES = ("fp16", "fp32")
#: The "format" of a finished SENS.json, and of one a sweep writes while it runs (see `read_partial`).
FORMAT = "trt-calib sensitivity"
PARTIAL_FORMAT = "trt-calib sensitivity (partial)"
#: Without a target, the chosen k is the smallest whose error gets this share of the curve's best improvement.
KNEE_SHARE = 0.9


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


def _user_metric(name: str, higher_is_better: bool) -> Metric:
    return Metric(name, f"the task metric {name} (`--metric FILE.py[:FUNCTION]`): FP32 against INT8 outputs, "
                  f"averaged over held-out batches; {'higher' if higher_is_better else 'lower'} is better",
                  higher_is_better)


@dataclass
class UnitSensitivity:
    """One unit's four errors, each measured on every held-out sample, its rank, and its screening estimate."""

    node: str
    op: str
    alone: float
    excluded: float
    weights_only: float | None
    activations_only: float
    rank: int = 0
    index: int = field(default=-1, repr=False)  # node index in the (opset >= 13) graph
    local_error: float | None = None  # the screen: noise / signal power at its outputs alone in INT8 (None: unscreened)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "alone": _num(self.alone), "excluded": _num(self.excluded),
                "weights_only": _num(self.weights_only), "activations_only": _num(self.activations_only),
                "rank": self.rank, "measured": True, "local_error": _num(self.local_error)}


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
    screening: dict[str, Any] = field(default_factory=dict)  # how the candidates were chosen
    screened_out: list[dict[str, Any]] = field(default_factory=list)  # units not measured: node, op, local_error
    not_ranked: dict[str, str] = field(default_factory=dict)  # weighted nodes left out of the ranking -> why

    @property
    def unmeasured(self) -> list[str]:
        """Units `quantize` gives Q/DQ inside If branches the held-out data does not run (listed in `not_ranked`):
        the ranking leaves them out, and the INT8 model keeps them."""
        return [str(n) for n in (self.info.get("if_branches") or {}).get("unmeasured_units", [])]

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
            "format": FORMAT,
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
            "screening": dict(self.screening),
            "screened_out": [dict(u) for u in self.screened_out],
            "not_ranked": dict(self.not_ranked),
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
                  "int8 weights / only its input Q/DQ pairs"]
        if self.screened_out:
            total = len(self.units) + len(self.screened_out)
            shown = ", ".join(f"{u['node']} ({_fmt(u['local_error'])})" for u in self.screened_out[:5])
            more = f", ... ({len(self.screened_out) - 5} more)" if len(self.screened_out) > 5 else ""
            lines.append(f"screened: the {len(self.units)} of {total} units with the largest local error (noise / "
                         f"signal power at their outputs, alone in INT8) were measured; not measured: {shown}{more}")
        branches = self.info.get("if_branches") or {}
        for row in branches.get("inlined", []):
            lines.append(f"measured inside the {row.get('branch')} of {row.get('if')}: its condition "
                         f"{row.get('condition')!r} was {row.get('value')} on every held-out batch")
        lines += [f"caveat: {c}" for c in branches.get("caveats", [])]
        if self.not_ranked:
            lines += ["", f"not ranked ({len(self.not_ranked)}):"]
            for why, nodes in not_ranked_groups(self.not_ranked):
                if len(nodes) == 1 and not nodes[0][1]:
                    lines.append(f"  {nodes[0][0]}: {why}")
                    continue
                lines.append(f"  {len(nodes)} node(s) {why}:" if why.startswith("in the ") else f"  {why}:")
                lines += [f"    {node}" + (f" ({extra})" if extra else "") for node, extra in nodes]
        lines += ["", "greedy (top-k units kept in float, each measured on every held-out sample):"]
        for p in self.greedy:
            mark = "  <- chosen" if p.k == self.chosen_k else ""
            kept = ", ".join(p.kept_in_float[-1:]) if p.k else "-"
            lines.append(f"  k={p.k:<3} {_fmt(p.error):>10}  {'+ ' + kept if p.k else kept}{mark}")
        lines.append(f"chosen: k={self.chosen_k} ({self.chosen_reason})")
        return "\n".join(lines)


def not_ranked_groups(not_ranked: Mapping[str, str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(shared reason, [(node, its own reason or "")]) in first-seen order: one paragraph per branch in the text."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for node, why in not_ranked.items():
        shared, _, own = why.partition(NO_QDQ_THERE)
        groups.setdefault(shared, []).append((node, own))
    return list(groups.items())


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
_FP32, _INT8 = "fp32", "int8"  # the reference a variant is cut from


@dataclass
class _Job:
    """What every task needs, shipped with each (so any executor can run it): the float model, the plan, the held-out
    batches and their FP32 outputs."""

    model: Any  # executor.ShippedModel: the float model at opset >= 13
    plan: Any  # placement.Plan
    plan_digest: str
    inputs: list[Any]  # InputSpec
    outputs: list[str]
    batches: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]  # per batch, per output
    kinds: dict[str, str | None]  # output -> "probabilities" | "logits" (classifier) | None
    metric: str  # a METRICS name, or "user"
    user_metric: str | None  # FILE.py:FUNCTION (absolute) of the user metric
    padded: int  # padded rows at the end of the last batch, left out of the scores
    threads: int | None
    part_size: int | None  # samples per part (None: whole batches)
    output_axes: list[int | None] = field(default_factory=list)  # per output, its batch axis (None: per batch)
    arena: bool = False  # onnxruntime's memory arena for the cones' sessions (off: activations freed after a run)


@dataclass(frozen=True)
class _Variant:
    """One run: int8 weights for the units in `weights`, activation pairs for those in `activations`, cut from the
    `reference` model (what it differs from only downstream of its change). `key` names it in the journal.

    `local`: not a run to the outputs but the screen of the one unit in `weights`: the relative noise power at its
    output with only it in INT8 and FP32 inputs (its own node, nothing downstream)."""

    key: str
    weights: frozenset
    activations: frozenset
    reference: str
    local: bool = False


def _rows(batch: Mapping[str, np.ndarray], specs: Sequence[Any]) -> int | None:
    """The samples in a batch, along each input's batch axis (silero's state has it at 1)."""
    return batch_samples(batch, specs)


def _axis(job: "_Job", k: int) -> int | None:
    return job.output_axes[k] if k < len(job.output_axes) else 0


class _Score:
    """One variant's errors against FP32, accumulated part by part and batch by batch."""

    def __init__(self, job: _Job, user: Any) -> None:
        from ..ort.user_metric import MetricAccumulator

        self.job = job
        # per output: [sum of per-sample 1-cos, samples, sum of per-sample KL, KL samples, signal, noise]
        self.sums = {name: [0.0, 0, 0.0, 0, 0.0, 0.0] for name in job.outputs}
        self.user = None if user is None else MetricAccumulator(user)
        self.parts: list[list[np.ndarray]] = []

    def add(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], keep: int | None) -> None:
        """One part's outputs; only its first `keep` rows count (the rest is padding), all when None."""
        for k, name in enumerate(self.job.outputs):
            x, y = np.asarray(ref[k]), np.asarray(got[k])
            if x.shape != y.shape:
                raise ModelError(f"output {name!r} is {y.shape} in a Q/DQ variant but {x.shape} in the FP32 model")
            axis = _axis(self.job, k)
            if keep is not None:
                x, y = take_samples(x, axis, 0, keep), take_samples(y, axis, 0, keep)
            x, y = batch_first(x, axis), batch_first(y, axis)  # per-sample errors count samples on axis 0
            if x.shape[0] == 0:
                continue
            s = self.sums[name]
            xd, yd = np.asarray(x, np.float64), np.asarray(y, np.float64)
            cos = cosine_error(x, y)
            s[0] += float(np.sum(cos))
            s[1] += cos.size
            kind = self.job.kinds[name]
            if kind is not None:
                kl = kl_divergence(log_probabilities(class_rows(x), kind), log_probabilities(class_rows(y), kind))
                s[2] += float(np.sum(kl))
                s[3] += kl.size
            s[4] += sum_squares(xd)
            s[5] += sum_sq_diff(xd, yd)
        if self.user is not None:
            self.parts.append([np.asarray(v) for v in got])

    def end_batch(self, index: int, batch: Mapping[str, np.ndarray], keep: int | None) -> None:
        """Give the user metric the whole batch (its parts joined), padding left out."""
        if self.user is None:
            return
        parts, self.parts = self.parts, []
        axes = [_axis(self.job, k) for k in range(len(self.job.outputs))]
        got = parts[0] if len(parts) == 1 else [np.concatenate(v, axis=a or 0) for v, a in zip(zip(*parts), axes)]
        ref = self.job.reference[index]
        if keep is not None:
            got = [take_samples(v, a, 0, keep) for v, a in zip(got, axes)]
            ref = [take_samples(v, a, 0, keep) for v, a in zip(ref, axes)]
            by_name = {s.name: s for s in self.job.inputs}
            batch = {n: take_samples(v, by_name[n].batch_axis if n in by_name else None, 0, keep)
                     for n, v in batch.items()}
        samples = keep if keep is not None else _rows(batch, self.job.inputs)
        self.user.add(dict(zip(self.job.outputs, ref)), dict(zip(self.job.outputs, got)), dict(batch), samples)

    def result(self) -> dict[str, Any]:
        """{"error", "outputs"} (and "higher_is_better" for a user metric), JSON-ready."""
        per_output: dict[str, dict[str, Any]] = {}
        for name, (cos, n, kl, kl_n, signal, noise) in self.sums.items():
            row: dict[str, Any] = {"1-cosine": cos / n if n else math.nan, "sqnr_db": sqnr_db(signal, noise)}
            if self.job.kinds[name] is not None:
                row["kl"] = kl / kl_n if kl_n else math.nan
            per_output[name] = row
        out: dict[str, Any] = {}
        name = self.job.metric
        if name == "user":
            out["error"] = self.user.result()
            out["higher_is_better"] = self.user.higher_is_better
        elif name == "kl":
            out["error"] = float(np.mean([r["kl"] for r in per_output.values() if "kl" in r]))
        elif name == "cosine":
            out["error"] = float(np.mean([r["1-cosine"] for r in per_output.values()]))
        else:
            out["error"] = float(np.mean([r["sqnr_db"] for r in per_output.values()]))
        out["error"] = _num(out["error"])
        out["outputs"] = {n: {k: _num(v) for k, v in r.items()} for n, r in per_output.items()}
        return out


class _LocalScore:
    """A unit's local error: noise power over signal power at its outputs, every held-out sample."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray], keep: int | None) -> None:
        for x, y in zip(ref, got):
            if keep is not None and x.ndim:
                x, y = x[:keep], y[:keep]
            self.signal += sum_squares(np.asarray(x, np.float64))
            self.noise += sum_sq_diff(np.asarray(x, np.float64), np.asarray(y, np.float64))

    def end_batch(self, *_: Any) -> None:
        pass

    def result(self) -> dict[str, Any]:
        value = self.noise / self.signal if self.signal > 0 else (0.0 if self.noise == 0 else math.inf)
        return {"local_error": _num(value), "sqnr_db": _num(sqnr_db(self.signal, self.noise))}


# ---------------------------------------------------------------------------------------------- running variants
def _slot_set(plan: Any) -> set[tuple[str, tuple[int, int]]]:
    return {(t, slot) for t, slots in plan.act_slots.items() for slot in slots}


def _changed(reference: Any, variant: Any) -> set[int]:
    """The nodes whose inputs or weights differ between two restrictions of one plan."""
    nodes = {slot[0] for _, slot in _slot_set(reference) ^ _slot_set(variant)}
    nodes.update(set(reference.weights) ^ set(variant.weights))
    nodes.update(i for i in set(reference.weights) & set(variant.weights) if reference.weights[i] != variant.weights[i])
    return nodes


def _remapped(plan: Any, position: Mapping[int, int]) -> Any:
    """The plan restricted to the nodes of a cut model, renumbered (`position`: old index -> index in the cut)."""
    slots = {}
    for tensor, planned in plan.act_slots.items():
        kept = [(position[i], j) for i, j in planned if i in position]
        if kept:
            slots[tensor] = kept
    weights = {position[i]: axis for i, axis in plan.weights.items() if i in position}
    return replace(plan, act_slots=slots, weights=weights, claims={}, coverage={})


def _rewritten(model: Any, plan: Any, types: dict[str, int] | None = None) -> Any:
    """A copy of `model` with `plan`'s Q/DQ nodes (`types`: its tensors' element types, when known)."""
    import onnx

    from .graph import Graph
    from .rewrite import rewrite_graph

    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewrite_graph(out, Graph(out.graph), plan, types=types)
    return out


def _process_state(job: _Job) -> dict[str, Any]:
    """What a worker process keeps between tasks of one sweep: the parsed model, its types, the all-INT8 model."""
    from ..ort.executor import per_process

    def make() -> dict[str, Any]:
        from ..ort.model import tensor_types

        from ..ort.runner import graph_reads, readers_of

        work = job.model.load()
        reads = graph_reads(work.graph)
        return {"work": work, "types": tensor_types(work), "reads": reads, "readers": readers_of(work.graph, reads),
                "int8": None, "int8_reads": None}

    return per_process(("trt-calib sensitivity", job.model.sha256, job.plan_digest), make)


def _user(job: _Job) -> Any:
    if job.user_metric is None:
        return None
    from ..ort.executor import per_process
    from ..ort.user_metric import load_metric

    return per_process(("trt-calib user metric", job.user_metric), lambda: load_metric(job.user_metric))


def _suffix(job: _Job, state: Mapping[str, Any], plan: Any, changed: set[int], role: str, threads: int | None) -> Any:
    """A SuffixRunner over the nodes `changed` reaches, with `plan`'s Q/DQ there (None when they reach no output),
    on `threads` onnxruntime threads."""
    from ..ort.runner import SuffixRunner, cut_model, downstream
    from .graph import Graph
    from .rewrite import rewrite_graph

    work = state["work"]
    cone = downstream(work.graph, changed, state["readers"])
    made = {o for i in cone for o in work.graph.node[i].output}
    outputs = [o for o in job.outputs if o in made]
    if not outputs:
        return None
    cut, order = cut_model(work, cone, outputs, types=state["types"], reads=state["reads"])
    # the whole model's types: inferring the cut's again for every variant cost more than running some of them
    rewrite_graph(cut, Graph(cut.graph), _remapped(plan, {old: new for new, old in enumerate(order)}),
                  types=state["types"])
    return SuffixRunner.open(cut, threads=threads, role=role, arena=job.arena)


def _run_variants(task: tuple[_Job, list[_Variant]]) -> list[tuple[str, dict[str, Any]]]:
    """Run a task's variants on every batch of its job; module level so workers can run it."""
    job, variants = task
    state = _process_state(job)
    results: dict[str, dict[str, Any]] = {}
    for reference in (_FP32, _INT8):
        group = [v for v in variants if v.reference == reference]
        if group:
            results.update(_run_group(job, state, reference, group))
    return [(v.key, results[v.key]) for v in variants]


def _local_model(job: _Job, state: Mapping[str, Any], units: Sequence[int]) -> tuple[Any, dict[int, list[str]]]:
    """One model that runs every unit of `units` alone in INT8 on FP32 inputs: a copy of each unit's node (and of the
    Concats its shared pairs sit on), outputs renamed, with its own Q/DQ; its inputs are the FP32 tensors the copies
    read. Returns the model and, per unit, (its output in the model, the renamed copy) pairs flattened as
    [original, copy, original, copy, ...]."""
    import onnx
    from onnx import helper

    from ..ort.runner import downstream, node_reads, upstream
    from .graph import Graph
    from .rewrite import rewrite_graph

    work = state["work"]
    graph = work.graph
    types = state["types"]
    initializers = {t.name: t for t in graph.initializer}
    constants = {out: n for n in graph.node if n.op_type == "Constant" for out in n.output}
    nodes: list[Any] = []
    slots: dict[str, list[tuple[int, int]]] = {}
    weights: dict[int, Any] = {}
    pairs: dict[int, list[str]] = {}
    used_constants: dict[str, Any] = {}
    for unit in units:
        seeds = {i for _, (i, _) in job.plan.claims.get(unit, [])} - {unit}
        path = set(downstream(graph, seeds, state["readers"])) & set(
            upstream(graph, [n for n in graph.node[unit].input if n], state["reads"]))
        rename: dict[str, str] = {}
        where: dict[int, int] = {}
        for i in sorted(path | seeds | {unit}):
            node = onnx.NodeProto()
            node.CopyFrom(graph.node[i])
            for j, name in enumerate(node.input):
                if name in rename:
                    node.input[j] = rename[name]
                elif name in constants:
                    used_constants[name] = constants[name]
            for j, name in enumerate(node.output):
                if name:
                    rename[name] = node.output[j] = f"{name}__trt_calib_local_{unit}"
            node.name = f"{node.name or node.op_type}__trt_calib_local_{unit}"
            where[i] = len(nodes)
            nodes.append(node)
        for tensor, (i, j) in job.plan.claims.get(unit, []):
            slots.setdefault(tensor, []).append((where[i], j))
        if unit in job.plan.weights:
            weights[where[unit]] = job.plan.weights[unit]
        pairs[unit] = [x for o in graph.node[unit].output if o for x in (o, rename[o])]
    made = {o for n in nodes for o in n.output}
    reads = list(dict.fromkeys(r for n in nodes for r in node_reads(n) if r not in made))
    inputs = [r for r in reads if r not in initializers and r not in used_constants]
    model = onnx.ModelProto()
    model.ir_version = work.ir_version
    model.opset_import.extend(work.opset_import)
    model.functions.extend(work.functions)
    model.graph.CopyFrom(helper.make_graph(
        list(used_constants.values()) + nodes, "units_alone",
        [helper.make_tensor_value_info(n, types[n], None) for n in inputs],
        [helper.make_tensor_value_info(c, types[o], None) for u in units for o, c in zip(pairs[u][::2], pairs[u][1::2])],
        [initializers[r] for r in reads if r in initializers]))
    shift = len(used_constants)
    plan = replace(job.plan, act_slots={t: [(i + shift, j) for i, j in v] for t, v in slots.items()},
                   weights={i + shift: a for i, a in weights.items()}, claims={}, coverage={})
    rewrite_graph(model, Graph(model.graph), plan, types=types)
    return model, pairs


def cone_lanes(threads: int, cones: int) -> tuple[int, int]:
    """(cones run at once, onnxruntime threads each) for a task's cones on `threads` cores: one thread per cone, up
    to `MAX_LANES` cones side by side (a cone's small kernels keep two threads of one run less busy than two runs of
    one thread each; results do not depend on the thread count)."""
    lanes = max(1, min(threads, cones, MAX_LANES))
    return lanes, max(1, threads // lanes)


#: At most this many cones of one task run at once (each holds its activations: see `cone_lanes`).
MAX_LANES = 2


def _run_group(job: _Job, state: dict[str, Any], reference: str, variants: list[_Variant]) -> dict[str, dict]:
    """Run the reference model once per part, as far as the variants' cones read, then every variant's cone (up to
    `cone_lanes` of them at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..core.kernel import usable_cpus
    from ..ort.runner import SuffixRunner, cut_model, graph_reads, upstream

    work = state["work"]
    if reference == _INT8:
        if state["int8"] is None:
            state["int8"] = _rewritten(work, job.plan, state["types"])
            state["int8_reads"] = graph_reads(state["int8"].graph)
        ref_model, ref_plan, ref_reads = state["int8"], job.plan, state["int8_reads"]
    else:
        ref_model, ref_plan, ref_reads = work, job.plan.restricted(weights=(), activations=()), state["reads"]
    suffixes: dict[str, Any] = {}
    needed: set[str] = set()
    local = [v for v in variants if v.local]
    pairs: dict[int, list[str]] = {}
    alone = None
    if local:
        model, pairs = _local_model(job, state, [next(iter(v.weights)) for v in local])
        alone = SuffixRunner.open(model, threads=job.threads, role="the units alone")
        needed.update(alone.inputs)
        needed.update(o for p in pairs.values() for o in p[::2])
    cones = [v for v in variants if not v.local]
    lanes, threads = cone_lanes(job.threads or usable_cpus(), len(cones))
    for v in cones:
        plan = job.plan.restricted(weights=v.weights, activations=v.activations)
        changed = _changed(ref_plan, plan)
        runner = _suffix(job, state, plan, changed, f"the Q/DQ variant {v.key}", threads) if changed else None
        suffixes[v.key] = runner
        made = set(runner.outputs) if runner is not None else set()
        needed.update(runner.inputs if runner is not None else ())
        needed.update(o for o in job.outputs if o not in made)
    input_names = [s.name for s in job.inputs]
    fetch = sorted(n for n in needed if n not in input_names)
    runner = None
    if fetch:
        prefix, _ = cut_model(ref_model, upstream(ref_model.graph, fetch, ref_reads), fetch, types=state["types"],
                              inputs=input_names, reads=ref_reads)
        # a session over the cut as written (no part sizing: the job's parts are fixed), so no shape inference
        runner = SuffixRunner.open(prefix, threads=job.threads, role=f"the {reference.upper()} model")
    user = _user(job)
    scores: dict[str, Any] = {v.key: _LocalScore() if v.local else _Score(job, user) for v in variants}
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="trt-calib-cone") if lanes > 1 else None
    try:
        _score_batches(job, runner, input_names, local, alone, pairs, cones, suffixes, scores, pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # an interrupt waits for the cones already running
    return {key: score.result() for key, score in scores.items()}


def _run_cone(job: _Job, suffixes: Mapping[str, Any], scores: Mapping[str, Any], values: Mapping[str, np.ndarray],
              ref: Sequence[np.ndarray], keep: int | None, v: _Variant) -> None:
    """One variant's cone on one part (the reference run's `values`), scored against the FP32 outputs `ref`."""
    suffix = suffixes[v.key]
    got = suffix.run(values) if suffix is not None else {}
    scores[v.key].add(ref, [got[o] if o in got else values[o] for o in job.outputs], keep)


def _score_batches(job: _Job, runner: Any, input_names: Sequence[str], local: Sequence[_Variant], alone: Any,
                   pairs: Mapping[int, list[str]], cones: Sequence[_Variant], suffixes: Mapping[str, Any],
                   scores: Mapping[str, Any], pool: Any) -> None:
    """Every part of every held-out batch: the reference run, then the screen's and the cones' runs, into `scores`
    (each variant's parts in batch order, so its sums do not depend on `pool`)."""
    from ..ort.runner import split_batch

    last = len(job.batches) - 1
    for index, batch in enumerate(job.batches):
        rows = _rows(batch, job.inputs)
        valid = rows - job.padded if index == last and job.padded and rows is not None else None
        offset = 0
        for part in split_batch(batch, job.inputs, job.part_size or 1 << 62):
            values = runner.run(part) if runner is not None else {}
            values.update((n, part[n]) for n in input_names if n not in values)
            count = _rows(part, job.inputs)
            whole = count is None or count == rows
            ref = [r if whole else take_samples(r, _axis(job, k), offset, offset + count)
                   for k, r in enumerate(job.reference[index])]
            keep = None if valid is None else max(0, min(count if count is not None else valid, valid - offset))
            if local:
                got = alone.run(values)
                for v in local:
                    pair = pairs[next(iter(v.weights))]
                    scores[v.key].add([values[o] for o in pair[::2]], [got[c] for c in pair[1::2]], keep)
                del got
            cone = partial(_run_cone, job, suffixes, scores, values, ref, keep)
            if pool is None:
                for v in cones:
                    cone(v)
            else:
                list(pool.map(cone, cones))  # the first error, if any, is raised here
            del values, cone
            offset += count or 0
        for v in [*local, *cones]:
            scores[v.key].end_batch(index, batch, valid)


# ---------------------------------------------------------------------------------------------- the sweep
class _Sweep:
    """Runs variants on an executor in tasks, keeps every finished run (`done`, by key) and hands the partial
    document to `checkpoint` after each task; counts runs and time, reports progress per finished task's runs."""

    def __init__(self, executor: Any, progress: Callable[[int], None] | None,
                 checkpoint: Callable[[dict[str, Any]], None] | None, fingerprint: dict[str, Any],
                 done: Mapping[str, Any] | None = None, *, weight: Callable[[_Variant], int] | None = None,
                 cost: Callable[[_Variant], float] | None = None, capacity: int | None = None) -> None:
        self.weight = weight  # a variant's session bytes (its cone's weights); a task holds at most `capacity`
        self.cost = cost  # a variant's cone cost (`_variant_sizes`): tasks of about equal cost
        self.capacity = capacity
        self.executor = executor
        self.progress = progress
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.done: dict[str, dict[str, Any]] = dict(done or {})
        self.resumed = len(self.done)
        self.runs = 0
        self.seconds: dict[str, float] = {}  # phase -> wall seconds

    def measure(self, job: _Job, variants: Sequence[_Variant], *, per_task: int | None = None,
                tasks_per_worker: int = 4, stop: Callable[[dict[str, dict]], bool] | None = None,
                phase: str = "runs") -> dict[str, dict[str, Any]]:
        """{key: result} of every variant, running those not done yet, in tasks of `per_task` variants (default:
        `tasks_per_worker` tasks per worker) that never mix references; `stop(results so far)`, checked before each
        round of one task per worker, ends the measurement early (the greedy curve at its target)."""
        started = time.perf_counter()
        try:
            return self._measure(job, variants, per_task, tasks_per_worker, stop)
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - started, 3)

    def _measure(self, job: _Job, variants: Sequence[_Variant], per_task: int | None, tasks_per_worker: int,
                 stop: Callable[[dict[str, dict]], bool] | None) -> dict[str, dict[str, Any]]:
        todo = list({v.key: v for v in variants if v.key not in self.done}.values())
        workers = max(1, self.executor.workers)
        costs = {v.key: self.cost(v) for v in todo} if self.cost is not None else {}
        share = math.inf
        if per_task is None:
            # A task runs its reference model once for all its variants: a few tasks per worker and phase, each
            # kept (`checkpoint`) as soon as it finishes, so an interrupt loses at most the tasks running. Tasks
            # are cut to about equal cost when the cones' costs are known, else to equal numbers of variants.
            tasks = tasks_per_worker * workers
            total = sum(costs.values())
            if total > 0:
                per_task, share = len(todo), total / tasks
            else:
                per_task = max(1, math.ceil(len(todo) / tasks))
        chunks: list[list[_Variant]] = []
        held = 0
        spent = 0.0
        for v in todo:
            size = self.weight(v) if self.weight is not None else 0
            fits = self.capacity is None or held + size <= self.capacity
            cost = costs.get(v.key, 0.0)
            if (chunks and len(chunks[-1]) < per_task and chunks[-1][-1].reference == v.reference and fits
                    and spent + cost <= share * 1.05):
                chunks[-1].append(v)
                held += size
                spent += cost
            else:
                chunks.append([v])
                held, spent = size, cost
        if stop is None and costs:  # the longest tasks first, so the last to start are short
            chunks.sort(key=lambda c: -sum(costs.get(v.key, 0.0) for v in c))

        def finished(_: int, results: list[tuple[str, dict[str, Any]]]) -> None:
            self.done.update(results)
            self.runs += len(results)
            if self.progress is not None:
                self.progress(len(results))
            if self.checkpoint is not None:
                self.checkpoint(self.partial())

        # Every task of a phase goes to the executor at once (a worker takes the next as it finishes one); the greedy
        # curve, which may stop at its target, goes in rounds of one task per worker.
        rounds = [chunks] if stop is None else [chunks[i : i + workers] for i in range(0, len(chunks), workers)]
        for batch in rounds:
            if stop is not None and stop(self._known(variants)):
                break
            self.executor.map(_run_variants, [(job, c) for c in batch], on_result=finished)
        return self._known(variants)

    def _known(self, variants: Sequence[_Variant]) -> dict[str, dict[str, Any]]:
        return {v.key: self.done[v.key] for v in variants if v.key in self.done}

    def partial(self) -> dict[str, Any]:
        """The document that lets `resume` continue this sweep: every finished run, and what it was run on."""
        return {"format": PARTIAL_FORMAT, "partial": True,
                "note": "an unfinished sensitivity sweep: `trt-calib sensitivity ... --resume` continues it",
                "runs_done": len(self.done), "fingerprint": self.fingerprint, "measured": dict(self.done)}


def _error(result: Mapping[str, Any]) -> float:
    return float(result["error"])


def _resolve_metric(metric: str, kinds: Mapping[str, str | None], probabilities: Mapping[str, bool]) -> Metric:
    if metric == "auto":
        if kinds and all(kinds[n] is not None and probabilities[n] for n in kinds):
            return METRICS["kl"]
        return METRICS["cosine"]
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose one of auto, {', '.join(METRICS)}, or FILE.py[:FUNCTION]")
    if metric == "kl" and not any(k is not None for k in kinds.values()):
        raise UsageError(
            f"metric 'kl' needs a classifier output of shape (N, C) (or (N, C, 1, ...)); the outputs are "
            f"{', '.join(kinds)}. Hint: use --metric cosine or sqnr"
        )
    return METRICS[metric]


def _load_user_metric(metric: Any, executor: Any) -> tuple[Any, str | None, str | None]:
    """(the UserMetric, the spec workers load it from, its file's sha256) for a task metric; Nones for a built-in.

    A metric given as "FILE.py[:FUNCTION]" is loaded again in each worker process; a `UserMetric` object only runs
    in this process (its function cannot be sent to another)."""
    from ..ort.executor import per_process
    from ..ort.user_metric import UserMetric, load_metric

    if isinstance(metric, UserMetric):
        if executor.name != "serial":
            raise UsageError(f"a UserMetric object runs in this process only; to measure on the {executor.name} "
                             "executor pass its 'FILE.py[:FUNCTION]' instead")
        spec = f"<object {id(metric)}>"
        per_process(("trt-calib user metric", spec), lambda: metric)
        return metric, spec, None
    if isinstance(metric, os.PathLike) or (isinstance(metric, str) and metric not in ("auto", *METRICS)):
        from ..ort.data.scripts import split_script

        user = load_metric(metric)
        path, _ = split_script(os.fspath(metric))
        spec = f"{path.resolve()}:{user.name.rpartition(':')[2]}"
        return user, spec, _file_sha256(str(path))
    return None, None, None


@dataclass
class _Setup:
    prepared: Any  # the prepared model, with the If branches the held-out data takes inlined (`branches.flatten`)
    job: _Job
    metric: Metric | None  # None for a user metric until its first run says which way is better
    user: Any  # the loaded UserMetric, or None
    fingerprint: dict[str, Any]
    flat: Any  # branches.Flat: node labels and names, what is not ranked in bodies, the Ifs inlined

    def label(self, index: int) -> str:
        """The name a unit has in results (what `quantize --exclude-nodes` and `build --keep-precision` take)."""
        return self.flat.labels.get(index) or node_label(self.prepared.work.graph.node[index], index)


def _setup(model: Any, scales: Any, eval_batches: Iterable[Any], *, metric: Any, placement: str, per_channel: bool,
           padded: int | None, executor: Any, max_activation_mb: float) -> _Setup:
    """The full placement plan and the job every run shares: held-out batches, FP32 outputs (computed once here, in
    parts under the activation budget), the metric resolved from them, and the sweep's fingerprint."""
    from ..ort.data import BatchSource, iter_batches
    from ..ort.data.inputs import hash_batch
    from ..ort.executor import ShippedModel
    from ..ort.model import model_inputs
    from .branches import flatten
    from .quantize import prepare_model

    if not (isinstance(max_activation_mb, (int, float)) and math.isfinite(max_activation_mb) and max_activation_mb > 0):
        raise UsageError(f"max_activation_mb must be a finite number > 0, got {max_activation_mb!r}")
    threads = executor.threads_per_worker
    user, spec, metric_sha = _load_user_metric(metric, executor)
    prepared = prepare_model(model, scales, per_channel=per_channel, placement=placement)
    specs = model_inputs(prepared.work)
    if padded is None:
        padded = eval_batches.num_padded if isinstance(eval_batches, BatchSource) else 0
    batches = list(iter_batches(eval_batches, specs))
    if not batches:
        raise DataError("no held-out batches to measure on")
    flat = flatten(prepared, batches, threads=threads)
    prepared = flat.prepared
    work = prepared.work
    if not prepared.plan.units:
        raise CalibrationError(_nothing_to_rank(prepared, flat))
    outputs = [o.name for o in work.graph.output]
    reference, part_size, axes = _fp32_outputs(work, prepared.plan, specs, outputs, batches, threads,
                                               max_activation_mb, flat.conditions)
    _check_finite(outputs, reference)
    kinds: dict[str, str | None] = {}
    probabilities: dict[str, bool] = {}
    for k, name in enumerate(outputs):
        first = reference[0][k]
        rows = ([class_rows(batch_first(r[k], axes[k])) for r in reference]
                if np.issubdtype(first.dtype, np.floating) else [None])
        classifier = all(r is not None for r in rows)
        probabilities[name] = classifier and all(looks_like_probabilities(r) for r in rows)
        kinds[name] = None if not classifier else ("probabilities" if probabilities[name] else "logits")
    chosen = None if user is not None else _resolve_metric(str(metric), kinds, probabilities)
    if chosen is not None and chosen.name != "kl":
        kinds = dict.fromkeys(kinds)  # no KL to compute
    shipped = ShippedModel.of(work)
    plan_digest = _plan_digest(prepared.plan)
    data = hashlib.sha256()
    for batch in batches:
        hash_batch(data, batch, specs)
    job = _Job(shipped, prepared.plan, plan_digest, specs, outputs, batches, reference, kinds,
               "user" if user is not None else chosen.name, spec, padded, threads, part_size, axes)
    fingerprint = {
        "model_sha256": shipped.sha256, "plan_sha256": plan_digest, "heldout_sha256": data.hexdigest(),
        "padded": padded, "metric": user.name if user is not None else chosen.name,
        "metric_sha256": metric_sha,
    }
    return _Setup(prepared, job, chosen, user, fingerprint, flat)


def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _plan_digest(plan: Any) -> str:
    """A digest of what a plan inserts: every pair's tensor, grid and slots, every weight's axis."""
    h = hashlib.sha256()
    for tensor in sorted(plan.act_slots):
        h.update(repr((tensor, repr(plan.act_grid[tensor]), sorted(plan.act_slots[tensor]))).encode())
    h.update(repr(sorted(plan.weights.items(), key=lambda kv: kv[0])).encode())
    h.update(repr({i: sorted(c) for i, c in plan.claims.items()}).encode())
    return h.hexdigest()


def _fp32_outputs(work: Any, plan: Any, specs: Sequence[Any], outputs: list[str],
                  batches: list[dict[str, np.ndarray]], threads: int | None, max_activation_mb: float,
                  conditions: Mapping[str, bool] | None = None,
                  ) -> tuple[list[list[np.ndarray]], int | None, list[int | None]]:
    """The FP32 outputs per batch, the samples per part every task cuts batches into (None: whole batches), and each
    output's batch axis (None: one value per batch).

    A task holds the reference tensors its variants' cones read (at most every tensor some unit's cone reads) and
    the cones' own activations: half the budget goes to the first, so parts are sized on those tensors. The outputs
    are computed in the same parts and joined along their batch axes (silero's state has it at 1); when an output
    has none they cannot be, and batches run whole. `conditions`: the If conditions whose branches were inlined
    (`branches.flatten`, decided on whole batches), checked on every part.
    """
    from ..ort.runner import Runner, downstream, graph_reads, readers_of, split_batch

    graph = work.graph
    reads = graph_reads(graph)
    readers = readers_of(graph, reads)
    inits = {t.name for t in graph.initializer}
    read: set[str] = set()
    for u in plan.units:
        cone = downstream(graph, {u} | {i for _, (i, _) in plan.claims.get(u, [])}, readers)
        made = {o for i in cone for o in graph.node[i].output}
        read.update(n for i in cone for n in reads[i] if n not in made and n not in inits)
    inputs = {s.name for s in specs}
    names = list(outputs) + sorted(n for n in read if n not in inputs and n not in outputs)
    runner = Runner.open(work, names, threads=threads, budget_bytes=max(1, int(max_activation_mb * 2**19)),
                         name="the FP32 model", optimize=False)
    part_size = runner.part_size if runner.size_parts(batches[0]) > 1 else None
    conds = [c for c in (conditions or {}) if c not in outputs]
    if part_size is not None or conds:
        runner = Runner.open(work, outputs + conds, threads=threads, budget_bytes=1 << 62, name="the FP32 model",
                             optimize=False)
    declared = output_batch_axes(work, specs)

    def run(part: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = runner.run(part)
        for c in conds:
            if bool(np.asarray(values[c]).reshape(-1)[0]) != conditions[c]:
                raise ModelError(
                    f"the If condition {c!r} is {not conditions[c]} on a part of a held-out batch but "
                    f"{conditions[c]} on the whole batches: the branch taken depends on the part size. Hint: a "
                    "larger --max-activation-mb runs batches whole")
        return [np.asarray(values[n]) for n in outputs]

    reference = []
    axes: list[int | None] | None = None
    for batch in batches:
        parts = split_batch(batch, specs, part_size or 1 << 62)
        got = [run(p) for p in parts]
        if axes is None:
            counted = batch_samples(parts[0], specs)
            axes = [batch_axis(v, counted, declared.get(n)) for n, v in zip(outputs, got[0])]
        if len(parts) > 1:
            sizes = [batch_samples(p, specs) for p in parts]
            if any(a is None or v.ndim <= a or v.shape[a] != n
                   for values, n in zip(got, sizes) for v, a in zip(values, axes)):
                log.info("an output has no batch axis: held-out batches run whole, whatever the budget")
                whole = [run(b) for b in batches]
                return whole, None, [batch_axis(v, batch_samples(batches[0], specs), declared.get(n))
                                     for n, v in zip(outputs, whole[0])]
            got = [[np.concatenate(v, axis=a) for v, a in zip(zip(*got), axes)]]
        reference.append(got[0])
    return reference, part_size, axes or []


def _nothing_to_rank(prepared: Any, flat: Any) -> str:
    """Why no unit can be ranked: every weighted node left out, with its reason (the first few)."""
    left = {**_not_ranked(prepared, flat.labels), **flat.not_ranked}
    if not left:
        return ("nothing to rank: the model has no Conv/ConvTranspose/Gemm/MatMul or residual Add that quantize "
                "gives Q/DQ")
    shown = "; ".join(f"{node}: {why}" for node, why in list(left.items())[:3])
    more = f" (and {len(left) - 3} more)" if len(left) > 3 else ""
    return (f"nothing to rank: none of the {len(left)} Conv/ConvTranspose/Gemm/MatMul node(s) gets Q/DQ where the "
            f"held-out data runs: {shown}{more}")


def _check_finite(outputs: Sequence[str], reference: Sequence[Sequence[np.ndarray]]) -> None:
    """An FP32 output that is not finite leaves nothing to measure INT8 against: an error, not a row of NaNs."""
    for index, values in enumerate(reference):
        for name, value in zip(outputs, values):
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                what = "NaN" if np.isnan(value).any() else "inf"
                raise ModelError(
                    f"the FP32 model's output {name!r} holds {what} on held-out batch {index} ({bad} of "
                    f"{value.size} values not finite): no INT8 error can be measured against it. Hint: check the "
                    "model and the held-out data (its preprocessing); evaluate it with `trt-calib evaluate`"
                )


def _samples(job: _Job) -> int:
    return int(sum(_rows(b, job.inputs) or 1 for b in job.batches)) - job.padded


def default_candidates(max_keep: int) -> int:
    """How many screened units are measured on every held-out sample by default: the `max_keep` the greedy curve can
    keep and a margin for the screen's noise (half of it, at least 3)."""
    return max_keep + max(3, max_keep // 2)


def measure_kept(
    model: Any,
    scales: Any,
    eval_batches: Iterable[Any],
    kept_sets: Sequence[Sequence[str]],
    *,
    metric: Any = "auto",
    placement: str = "trt",
    per_channel: bool = True,
    executor: Any = None,
    progress: Callable[[int], None] | None = None,
    max_activation_mb: float = 256,
) -> tuple[Metric, list[float]]:
    """The error of the INT8 model with each set of nodes kept in float (what `quantize_model(exclude=...)` writes),
    measured like `sensitivity`'s runs: (the metric, one error per set)."""
    from ..ort.executor import SerialExecutor

    executor = executor if executor is not None else SerialExecutor()
    setup = _setup(model, scales, eval_batches, metric=metric, placement=placement, per_channel=per_channel,
                   padded=None, executor=executor, max_activation_mb=max_activation_mb)
    known = setup.flat.index
    every = frozenset(setup.prepared.plan.units)
    variants = []
    for j, names in enumerate(kept_sets):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ModelError(f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model")
        rest = every - {known[n] for n in names}
        variants.append(_Variant(f"kept/{j}", rest, rest, _INT8))
    weight, cost = _variant_sizes(setup.prepared)
    sweep = _Sweep(executor, progress, None, setup.fingerprint, weight=weight, cost=cost,
                   capacity=int(max_activation_mb * 2**20))
    results = sweep.measure(setup.job, variants)
    m = setup.metric or _user_metric(setup.user.name, bool(next(iter(results.values()))["higher_is_better"]))
    return m, [_error(results[v.key]) for v in variants]


def sensitivity(
    model: Any,
    scales: Any,
    eval_batches: Iterable[Any],
    *,
    metric: Any = "auto",
    placement: str = "trt",
    per_channel: bool = True,
    target: float | None = None,
    max_keep: int = 10,
    executor: Any = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    info: Mapping[str, Any] | None = None,
    padded: int | None = None,
    candidates: int | str | None = None,
    max_activation_mb: float = 256,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> SensitivityResult:
    """Rank every unit `quantize_model(model, scales, placement=..., per_channel=...)` would quantise by the output
    error INT8 costs there, on `eval_batches` (held-out data), and measure the greedy curve (module docstring).

    `metric`: "auto" (KL when every output is a probability vector, else 1 - cosine), "kl", "cosine", "sqnr", or a
    task metric: a `ort.user_metric.UserMetric` or the "FILE.py[:FUNCTION]" that names one. `target`: stop the greedy
    curve at the first k whose error meets it (<=, or >= when higher is better). `candidates` (default
    `default_candidates(max_keep)`; "all" or at least the number of units: every unit, no screening): how many units,
    those with the largest local error (the screen), are measured; the others are listed in `screened_out`. `executor`: an `ort.executor.Executor` (default: this process);
    `progress(n)` after n runs finish, `total(n)` once with the most runs there will be. `padded`: rows of padding at
    the end of the last batch, left out of the scores (default: a `BatchSource`'s own count). `max_activation_mb`:
    the activation budget batches are cut to. `checkpoint(doc)`: called with the partial document after every
    finished task; `resume`: such a document, whose runs are not made again. `info` is copied into the JSON.
    """
    from ..ort.executor import SerialExecutor

    if max_keep < 0:
        raise UsageError(f"max_keep must be >= 0, got {max_keep}")
    if target is not None and not math.isfinite(target):
        raise UsageError(f"target must be a finite number, got {target}")
    if candidates is not None and candidates != "all" and not (isinstance(candidates, int) and candidates >= 1):
        raise UsageError(f"candidates must be 'all' or an integer >= 1, got {candidates!r}")
    started = time.perf_counter()
    executor = executor if executor is not None else SerialExecutor()
    executor.warm([__name__])  # worker processes start while the setup runs here
    setup = _setup(model, scales, eval_batches, metric=metric, placement=placement, per_channel=per_channel,
                   padded=padded, executor=executor, max_activation_mb=max_activation_mb)
    prepared, job = setup.prepared, setup.job
    plan, nodes, units = prepared.plan, prepared.work.graph.node, prepared.plan.units
    every = frozenset(units)
    none: frozenset = frozenset()
    samples = _samples(job)
    wanted = default_candidates(max_keep) if candidates is None else len(units) if candidates == "all" else candidates
    measure_all = wanted >= len(units)
    fingerprint = dict(setup.fingerprint, placement=placement, per_channel=per_channel, max_keep=max_keep,
                       target=target, candidates=None if measure_all else wanted)
    done = _resumed(resume, fingerprint)
    weight, cost = _variant_sizes(prepared)
    sweep = _Sweep(executor, progress, checkpoint, fingerprint, done, weight=weight, cost=cost,
                   capacity=int(max_activation_mb * 2**20))
    # a recommendation never keeps every unit in float; nor more than were measured
    limit = min(max_keep, max(0, len(units) - 1), wanted)

    def fields(u: int) -> list[_Variant]:
        one = frozenset([u])
        out = [_Variant(f"alone/{u}", one, one, _FP32)]
        if u in plan.weights:
            out += [_Variant(f"weights_only/{u}", one, none, _FP32), _Variant(f"activations_only/{u}", none, one, _FP32)]
        return out + [_Variant(f"excluded/{u}", every - one, every - one, _INT8)]

    if total is not None:  # the runs still to make (the first greedy point is the top unit's `excluded` run)
        measured_units = len(units) if measure_all else wanted
        planned = 1 + (0 if measure_all else len(units)) + sum(len(fields(u)) for u in units[:measured_units])
        total(max(0, planned + max(0, limit - 1) - len(done)))
    local: dict[int, float] = {}
    chosen_units = list(units)
    if not measure_all:
        got = sweep.measure(job, [_Variant(f"local/{u}", frozenset([u]), frozenset([u]), _FP32, local=True)
                                  for u in units], tasks_per_worker=1, phase="screen")
        local = {u: float(got[f"local/{u}"]["local_error"]) for u in units}
        chosen_units = sorted(units, key=lambda u: (-_sortable(local[u]), u))[:wanted]
    # the baseline (every unit INT8) rides with the `excluded` runs, which run the INT8 model anyway
    runs = [v for u in sorted(chosen_units) for v in fields(u)] + [_Variant("baseline", every, every, _INT8)]
    got = sweep.measure(job, sorted(runs, key=lambda v: v.reference), tasks_per_worker=2, phase="measure")
    baseline = got["baseline"]
    higher = baseline.get("higher_is_better")
    m = setup.metric or _user_metric(setup.user.name, bool(higher))
    if setup.metric is None and higher is None:
        raise DataError(f"{setup.user.name}: never said whether higher is better")
    rows = []
    for u in sorted(chosen_units):
        value = {f: (_error(got[f"{f}/{u}"]) if f"{f}/{u}" in got else None)
                 for f in ("alone", "excluded", "weights_only", "activations_only")}
        if value["activations_only"] is None:
            value["activations_only"] = value["alone"]  # no weights: the unit is its activations
        rows.append(UnitSensitivity(setup.label(u), nodes[u].op_type, value["alone"], value["excluded"],
                                    value["weights_only"], value["activations_only"], index=u,
                                    local_error=local.get(u)))
    rows.sort(key=lambda r: (m.key(r.excluded), -m.key(r.alone), r.index))
    for rank, r in enumerate(rows, 1):
        r.rank = rank
    screened_out = [{"node": setup.label(u), "op": nodes[u].op_type, "local_error": _num(local[u])}
                    for u in sorted(set(units) - set(chosen_units), key=lambda u: (-_sortable(local[u]), u))]
    ranking_seconds = time.perf_counter() - started

    greedy = [GreedyPoint(0, [], _error(baseline), baseline["outputs"])]
    greedy_started = time.perf_counter()

    def point(j: int) -> _Variant:
        kept = frozenset(r.index for r in rows[:j])
        if j == 1:  # the top unit kept in float is its own `excluded` run, already measured
            return _Variant(f"excluded/{rows[0].index}", every - kept, every - kept, _INT8)
        return _Variant(f"greedy/{j}", every - kept, every - kept, _INT8)

    def met(results: Mapping[str, dict]) -> bool:
        return target is not None and any(m.meets(_error(r), target) for r in results.values())

    points = [point(j) for j in range(1, limit + 1)]
    measured = sweep.measure(job, points, per_task=1, stop=met, phase="greedy")
    for j, v in enumerate(points, 1):
        if v.key not in measured:
            break
        greedy.append(GreedyPoint(j, [r.node for r in rows[:j]], _error(measured[v.key]), measured[v.key]["outputs"]))
        if target is not None and m.meets(greedy[-1].error, target):
            break
    chosen, why = _choose(greedy, m, target, limit, len(units))

    layers = {r.node: tensorrt_layer_name(nodes[r.index]) for r in rows}
    doc = {
        "placement": placement,
        "per_channel_weights": per_channel,
        "evaluation": {"batches": len(job.batches), "samples": samples},
        "session": SESSION_MODE,
        "note": ORT_NOTE,
        **dict(info or {}),
    }
    if setup.flat.inlined or setup.flat.caveats or setup.flat.unmeasured:
        doc["if_branches"] = {
            "how": "each If whose condition had one value on every held-out batch is replaced by the branch taken, "
                   "with the Q/DQ quantize places in it (same scales): its units are ranked like the main graph's",
            "inlined": list(setup.flat.inlined), "caveats": list(setup.flat.caveats),
            "unmeasured_units": list(setup.flat.unmeasured)}
    screening = {
        "units": len(units),
        "measured": len(rows),
        "how": ("every unit measured on every held-out sample (no more units than candidates)" if measure_all else
                f"screened: each unit's local error (noise / signal power at its outputs with only it in INT8 and "
                f"FP32 inputs, on every held-out sample; `local_error`), an estimate of what it adds, not a "
                f"measurement of the outputs. The {len(rows)} largest were measured (`units`, every number a run "
                f"to the outputs on all {samples} samples); the other {len(screened_out)} are in `screened_out`"),
    }
    return SensitivityResult(
        metric=m, baseline_error=_error(baseline), baseline_outputs=baseline["outputs"], units=rows, greedy=greedy,
        target=target, max_keep=max_keep, chosen_k=chosen, chosen_reason=why, layers=layers, info=doc,
        run={"executor": executor.name, "workers": executor.workers, "runs": sweep.runs,
             "resumed_runs": sweep.resumed, "part_samples": job.part_size, "phase_seconds": sweep.seconds,
             "ranking_seconds": round(ranking_seconds, 3),
             "greedy_seconds": round(time.perf_counter() - greedy_started, 3),
             "seconds": round(time.perf_counter() - started, 3)},
        screening=screening,
        screened_out=screened_out,
        not_ranked={**_not_ranked(prepared, setup.flat.labels), **setup.flat.not_ranked},
    )


def _variant_sizes(prepared: Any) -> tuple[Callable[[_Variant], int], Callable[[_Variant], float]]:
    """(a variant's session memory, its cone's cost), both from the nodes its change reaches.

    The memory is estimated from the cone's weights (twice: onnxruntime's copy and the model's): the sessions a task
    holds at once are kept under the budget (a unit near the input holds the whole model). The cost, multiply-adds
    per sample from the inferred shapes (unknown dims count 1), sizes tasks so that they take about as long each,
    and the longest are queued first: a task of whole-model cones no longer ends a phase alone."""
    from ..ort.model import tensor_info
    from ..ort.runner import downstream, graph_reads, readers_of

    graph = prepared.work.graph
    reads = graph_reads(graph)
    readers = readers_of(graph, reads)
    inits = {t.name: t for t in graph.initializer}
    sizes = {name: int(np.prod(t.dims, dtype=np.int64)) * 4 for name, t in inits.items()}
    info = tensor_info(prepared.work)
    empty = prepared.plan.restricted(weights=(), activations=())
    costs = [_node_cost(node, info, inits) for node in graph.node]
    cones: dict[str, list[int]] = {}

    def cone(v: _Variant) -> list[int]:
        if v.key not in cones:
            reference = prepared.plan if v.reference == _INT8 else empty
            changed = _changed(reference, prepared.plan.restricted(weights=v.weights, activations=v.activations))
            cones[v.key] = downstream(graph, changed, readers) if changed and not v.local else []
        return cones[v.key]

    def weight(v: _Variant) -> int:
        read = {n for i in cone(v) for n in reads[i]}
        return 2 * sum(sizes.get(n, 0) for n in read)

    def cost(v: _Variant) -> float:
        return float(sum(costs[i] for i in cone(v)))

    return weight, cost


def _node_cost(node: Any, info: Mapping[str, tuple[int, Any]], inits: Mapping[str, Any]) -> float:
    """About the multiply-adds of one node per sample: its output values, times the weight values each reads for a
    Conv/ConvTranspose/Gemm/MatMul with a constant weight."""
    out = 0.0
    for name in node.output:
        dims = info.get(name, (0, None))[1] if name else None
        out += float(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims])) if dims else 1.0
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or node.op_type not in WEIGHTED_OPS or len(weight.dims) < 2:
        return out
    dims = list(weight.dims)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    per = {"Conv": np.prod(dims[1:]), "ConvTranspose": np.prod(dims) / max(1, dims[1]),
           "Gemm": dims[1] if trans_b else dims[0]}.get(node.op_type, dims[-2])
    return out * max(1.0, float(per))


def _sortable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _choose(greedy: Sequence[GreedyPoint], m: Metric, target: float | None, limit: int, units: int) -> tuple[int, str]:
    """The k to recommend: the smallest meeting the target; without one, the smallest that gets `KNEE_SHARE` of the
    curve's best improvement; never every unit (the curve stops one short)."""
    meeting = [p.k for p in greedy if target is not None and m.meets(p.error, target)]
    if meeting:
        return meeting[0], f"the smallest k whose error meets the target {target:g}"
    best = min(greedy, key=lambda p: (m.key(p.error), p.k))
    binds = units > 0 and limit == units - 1 and best.k == limit
    cap = f"; k <= {limit}: keeping every unit in float is no INT8 model" if binds else ""
    if target is not None:
        return best.k, f"target {target:g} not met within k <= {limit}: the lowest error of the curve{cap}"
    base = m.key(greedy[0].error)
    gain = base - m.key(best.error)
    if not math.isfinite(gain) or gain <= 0:
        return best.k, f"the lowest error of the curve (no target given){cap}"
    enough = next(p for p in greedy if base - m.key(p.error) >= KNEE_SHARE * gain)
    return enough.k, (f"the smallest k that gets {KNEE_SHARE:.0%} of the curve's best improvement (k={best.k}); no "
                      f"target given{cap}")


def _not_ranked(prepared: Any, labels: Mapping[int, str] | None = None) -> dict[str, str]:
    """Weighted nodes (and residual Adds) the plan leaves without Q/DQ because of their scales or weights: no unit,
    so no rank; listed with the reason instead of vanishing from the ranking. `labels`: node index -> its name in
    results (`branches.Flat.labels`; a branch node's reason says which branch)."""
    out = {}
    for index, cov in sorted(prepared.plan.coverage.items()):
        if cov.quantized:
            continue
        scale_problem = cov.op_type == "Add" and cov.reason.startswith("residual input:")
        if cov.op_type in WEIGHTED_OPS or scale_problem:
            where = f"in the {cov.body}: " if cov.body else ""
            out[(labels or {}).get(index, cov.node)] = where + cov.reason
    return out


def _resumed(resume: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The finished runs of a partial document, after checking it was made by this very sweep."""
    if resume is None:
        return {}
    theirs = resume.get("fingerprint")
    if resume.get("format") != PARTIAL_FORMAT or not isinstance(theirs, Mapping):
        raise UsageError("--resume needs a partial sensitivity file (one an interrupted `trt-calib sensitivity` "
                         "wrote)")
    mine = json.loads(json.dumps(fingerprint))
    differ = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if differ:
        raise UsageError(f"--resume: the partial file was measured with other settings ({', '.join(differ)} "
                         "differ). Hint: run with the same model, data, scales and options, or drop --resume")
    measured = resume.get("measured")
    if not isinstance(measured, Mapping) or not all(isinstance(v, Mapping) for v in measured.values()):
        raise UsageError("--resume: the partial file holds no measurements")
    return {str(k): dict(v) for k, v in measured.items()}


# ---------------------------------------------------------------------------------------------- reading SENS.json
def _read_json(path: Path) -> Any:
    """A sensitivity file's JSON: bounded, a regular file, and nesting beyond what trt-calib writes is a DataError."""
    from .._util import read_json

    doc = read_json(path, limit=256 << 20, kind="sensitivity JSON", error=DataError)
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise DataError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels: not a sensitivity file")
    return doc


def load_sensitivity(path: str | Path) -> SensitivityResult:
    """A SENS.json written by `trt-calib sensitivity`, checked enough to act on; errors name the file."""
    path = Path(path)
    doc = _read_json(path)
    if isinstance(doc, Mapping) and (doc.get("partial") or doc.get("format") == PARTIAL_FORMAT):
        raise DataError(
            f"{path}: an unfinished sensitivity sweep ({doc.get('runs_done', '?')} runs kept), not a result. Hint: "
            f"finish it with the same `trt-calib sensitivity ... -o {path} --resume`"
        )
    try:
        return _from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{path}: not a sensitivity file of trt-calib ({type(exc).__name__}: {exc}). "
            "Hint: write one with `trt-calib sensitivity MODEL --data D -o SENS.json`"
        ) from None


def read_partial(path: str | Path) -> dict[str, Any]:
    """The partial document an interrupted sweep left in `path` (what `sensitivity(resume=...)` takes)."""
    path = Path(path)
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, PARTIAL_FORMAT) and "units" not in doc:
        raise DataError(f"{path}: not a sensitivity file of trt-calib, nothing to resume")
    if doc.get("format") != PARTIAL_FORMAT:
        raise DataError(f"{path}: already a finished sensitivity result, nothing to resume. Hint: drop --resume to "
                        "measure again")
    return doc


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _from_json(doc: Mapping[str, Any]) -> SensitivityResult:
    name = str(doc["metric"])
    metric = METRICS.get(name) or Metric(name, str(doc.get("metric_description", "")),
                                         bool(doc.get("higher_is_better", False)))
    units = [UnitSensitivity(str(u["node"]), str(u["op"]), float(u["alone"]), float(u["excluded"]),
                             _float(u["weights_only"]), float(u["activations_only"]), int(u["rank"]),
                             local_error=_float(u.get("local_error")))
             for u in doc["units"]]
    ranks = sorted(u.rank for u in units)
    if ranks != list(range(1, len(units) + 1)):
        raise ValueError(f"ranks must be 1..{len(units)}, got {ranks[:10]}")
    units.sort(key=lambda u: u.rank)
    greedy = [GreedyPoint(int(p["k"]), [str(n) for n in p["kept_in_float"]], float(p["error"]),
                          dict(p.get("outputs", {}))) for p in doc["greedy"]]
    chosen = doc.get("chosen", {})
    known = {"format", "metric", "metric_description", "higher_is_better", "baseline_error", "baseline_outputs",
             "units", "greedy", "target", "max_keep", "chosen", "tensorrt_layers", "run", "screening", "screened_out",
             "not_ranked"}
    return SensitivityResult(
        metric=metric, baseline_error=float(doc["baseline_error"]),
        baseline_outputs=dict(doc.get("baseline_outputs", {})),
        units=units, greedy=greedy, target=_float(doc.get("target")), max_keep=int(doc.get("max_keep", len(greedy))),
        chosen_k=int(chosen.get("k", 0)), chosen_reason=str(chosen.get("why", "")),
        layers={str(k): str(v) for k, v in doc.get("tensorrt_layers", {}).items()},
        info={k: v for k, v in doc.items() if k not in known}, run=dict(doc.get("run", {})),
        screening=dict(doc.get("screening", {})), screened_out=[dict(u) for u in doc.get("screened_out", [])],
        not_ranked={str(k): str(v) for k, v in
                                                              doc.get("not_ranked", {}).items()},
    )


def layer_names_for(model: Any, nodes: Sequence[str]) -> dict[str, str]:
    """node name (as the coverage report or SENS.json lists it, or TensorRT's node_of_<output>) -> the name of the
    TensorRT layer the ONNX parser creates for it; a name that is no node of `model` is a ModelError."""
    from ..ort.model import load_model

    graph = load_model(model).graph
    known = {name: graph.node[i] for name, i in node_indices(graph).items()}
    for sub in _body_graphs(graph):  # If branches and Loop/Scan bodies: SENS.json names their nodes too
        for name, i in node_indices(sub).items():
            known.setdefault(name, sub.node[i])
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise ModelError(
            f"no node named {', '.join(repr(n) for n in unknown[:5])} in the model. Hint: the names must come from "
            "this model (a SENS.json of another model, or a typo?)"
        )
    return {n: tensorrt_layer_name(known[n]) for n in nodes}


def _body_graphs(graph: Any) -> list[Any]:
    """Every If branch and Loop/Scan body inside `graph`, outer before inner."""
    out = []
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                out.append(sub)
                out += _body_graphs(sub)
    return out


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
        # inside bodies, by TensorRT layer name: unnamed nodes' labels (MatMul_1) repeat from branch to branch
        hits += [tensorrt_layer_name(n) for sub in _body_graphs(graph) for n in sub.node if n.op_type == op]
        if not hits:
            log.warning("--exclude-op-types %s: the model has no %s node", op, op)
        for label in hits:
            out.setdefault(label, f"op type {op}")
    return out  # names that are no node of the model: quantize_model says so, with close matches
