"""Is the calibration set good enough? TensorRT entropy2's amax per tensor under other batch orders, batch sizes and
subsets of the same data, and what the spread costs end to end.

Why the amax moves: TensorRT's histogram range is the first batch's max|x|, doubled whenever a later batch exceeds
it (`core.histogram`). With m the first batch's max and M the data's, the final range is m * 2**k, anywhere in
[M, 2M), so the 2048 bins, and with them the KL choice, depend on which samples come first and how many share a
batch. Each variant here is a whole calibration: the model rerun by `ort.collect.collect_histograms` on that
variant's batches, so its amax is exactly what the algorithm gives for that batching (no per-batch statistics are
reused across variants, so there is no approximation to bound). Variants run on an `ort.executor` engine; the
results do not depend on which.

Variants, all drawn from the same pool of samples (the data in its given order):
- base: the data in order, at the base batch size (what `calibrate` would do);
- order: a random permutation of the samples (seeded), at the base batch size, as a shuffling data loader gives;
- batch_size: the data in order at another batch size;
- subset: the first n samples in order, at the base batch size (the settle curve).

Per tensor, the spread over base + orders + batch sizes: min, max, and max - min in % of the base amax and in bins of
the base histogram; a tensor is unstable when that range exceeds the tolerance (in %). The settle point is the
smallest subset from which every larger subset's amax lies within one bin of the full data's. End to end, each
distinct set of scales becomes a Q/DQ model (`qdq.quantize_model`) evaluated against FP32 (`ort.evaluate`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..core.cache import DEFAULT_TRT_VERSION
from .._util import MAX_JSON_DEPTH, json_depth
from ..errors import DataError, TrtCalibError
from ..ort.executor import ShippedModel

__all__ = [
    "FORMAT",
    "KINDS",
    "SPREAD_KINDS",
    "Variant",
    "plan_variants",
    "gather_samples",
    "run_stability",
    "load_stability",
]

log = logging.getLogger(__name__)

#: STAB.json's "format" value.
FORMAT = "trt-calib-stability/1"
#: Variant kinds, in the order they are listed.
KINDS = ("base", "order", "batch_size", "subset")
#: The kinds whose amax make a tensor's spread (subsets make the settle curve instead).
SPREAD_KINDS = ("base", "order", "batch_size")
_WITHIN_ONE_BIN = 1.0 + 1e-6  # |amax - full| <= one bin, with room for the float32 rounding of amax itself


# ---------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One way to batch the sample pool: which samples (a seeded permutation or the data order, then the first
    `num_samples`), cut into batches of `batch_size`."""

    id: int
    kind: str
    batch_size: int
    seed: int | None  # permutation seed (np.random.default_rng(seed).permutation); None: the data's order
    num_samples: int  # samples taken from the front of that order
    label: str

    def indices(self, total: int, last_batch: str) -> np.ndarray:
        """Sample indices in feeding order; with last_batch 'drop' only whole batches (nothing left to warn about)."""
        order = np.arange(total) if self.seed is None else np.random.default_rng(self.seed).permutation(total)
        take = self.num_samples
        if last_batch == "drop":
            take -= take % self.batch_size
        return order[:take]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "batch_size": self.batch_size,
                "seed": self.seed, "num_samples": self.num_samples}


def plan_variants(
    num_samples: int,
    base_batch_size: int,
    *,
    orders: int = 5,
    batch_sizes: Sequence[int] = (8, 16, 32),
    fractions: Sequence[float] = (0.25, 0.5, 1.0),
    seed: int = 0,
    last_batch: str = "drop",
) -> list[Variant]:
    """The variants to calibrate, the base first; duplicates (e.g. the base batch size again) are dropped."""
    if num_samples < 1:
        raise DataError("stability: no samples")
    if orders < 0:
        raise ValueError(f"orders must be >= 0, got {orders}")
    bad = [f for f in fractions if not (isinstance(f, (int, float)) and 0 < f <= 1)]
    if bad:
        raise ValueError(f"fractions must be in (0, 1], got {bad}")
    full = num_samples if last_batch != "drop" else num_samples - num_samples % base_batch_size
    if full < 1:
        raise DataError(
            f"stability: {num_samples} samples make no whole batch of {base_batch_size}. Hint: lower --batch-size"
        )
    out: list[Variant] = []
    seen: set[tuple[int, int | None, int]] = set()

    def add(kind: str, batch_size: int, order_seed: int | None, count: int, label: str) -> None:
        key = (batch_size, order_seed, count)
        if key in seen:
            return
        usable = count if last_batch != "drop" else count - count % batch_size
        if usable < 1:
            log.warning("stability: %s skipped: %d samples make no whole batch of %d", label, count, batch_size)
            return
        seen.add(key)
        out.append(Variant(len(out), kind, int(batch_size), order_seed, int(count), label))

    add("base", base_batch_size, None, num_samples, f"data order, batch {base_batch_size}")
    for i in range(orders):
        add("order", base_batch_size, seed + i, num_samples, f"order seed {seed + i}, batch {base_batch_size}")
    for b in batch_sizes:
        add("batch_size", int(b), None, num_samples, f"data order, batch {int(b)}")
    for f in sorted(set(fractions)):
        count = max(base_batch_size, int(math.floor(f * num_samples)))
        if count >= num_samples:
            continue  # the full data is the base
        add("subset", base_batch_size, None, count, f"first {count} samples, batch {base_batch_size}")
    return out


def gather_samples(batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
    """Every sample of `batches` stacked per input along its batch axis (axis 0 unless the source's `InputSpec`s
    say otherwise; an input that is not batched, such as a rank-0 one, is kept once and must not change), and the
    first batch's size (the base batch size)."""
    specs = {s.name: s for s in getattr(batches, "inputs", ())}
    parts: dict[str, list[np.ndarray]] = {}
    first = None
    for batch in batches:
        for name, value in batch.items():
            value = np.asarray(value)
            spec = specs.get(name)
            axis = spec.batch_axis if spec is not None else (0 if value.ndim else None)
            if axis is None:
                if name in parts and not np.array_equal(parts[name][0], value):
                    raise DataError(f"stability: input {name!r} is not batched and changes between batches; "
                                    "stability re-batches the samples, so it must hold one value")
                parts[name] = [value]
                continue
            if first is None:
                first = int(value.shape[axis])
            parts.setdefault(name, []).append(value)
    if first is None:
        raise DataError("stability: the data holds no batches")

    def stacked(name: str, values: list[np.ndarray]) -> np.ndarray:
        spec = specs.get(name)
        axis = spec.batch_axis if spec is not None else (0 if values[0].ndim else None)
        return values[0] if axis is None else np.concatenate(values, axis=axis)

    return {name: stacked(name, values) for name, values in parts.items()}, first


# ---------------------------------------------------------------------------------------------- work items
@dataclass(frozen=True)
class _CalibrationJob:
    model: ShippedModel
    specs: tuple[Any, ...]
    variant: Variant
    pool: Mapping[str, np.ndarray]  # every sample (shared, not copied, in this process)
    indices: np.ndarray  # the variant's samples in feeding order
    last_batch: str
    threads: int | None
    max_activation_mb: float


@dataclass(frozen=True)
class _Outcome:
    """One variant's calibration: per tensor amax, KL index, bin width and final histogram range."""

    amax: dict[str, float]
    index: dict[str, int]
    bin_width: dict[str, float]
    range: dict[str, float]
    num_batches: int
    seconds: float


def _calibrate_variant(job: _CalibrationJob) -> _Outcome:
    """TensorRT entropy2 on one variant's batches: the model rerun on them (module level, so workers can run it)."""
    from ..core.thresholds import entropy_search
    from ..ort.collect import collect_histograms
    from ..ort.data import from_arrays

    started = time.perf_counter()
    axes = {spec.name: spec.batch_axis for spec in job.specs}
    samples = {name: np.asarray(values) if axes.get(name, 0) is None
               else np.take(np.asarray(values), job.indices, axis=axes.get(name, 0))
               for name, values in job.pool.items()}
    source = from_arrays(samples, job.specs, batch_size=job.variant.batch_size, last_batch=job.last_batch)
    histograms, count = collect_histograms(job.model.load(), source, threads=job.threads,
                                           max_activation_mb=job.max_activation_mb)
    amax, index, width, rng = {}, {}, {}, {}
    for name, h in histograms.items():
        found = entropy_search(h)
        amax[name], index[name], width[name], rng[name] = found.amax, found.index, found.bin_width, h.range
    return _Outcome(amax, index, width, rng, count, time.perf_counter() - started)


@dataclass(frozen=True)
class _EvaluationJob:
    model: ShippedModel
    specs: tuple[Any, ...]
    amax: Mapping[str, float]
    samples: Mapping[str, np.ndarray]
    batch_size: int
    threads: int | None
    max_activation_mb: float = 256
    metric: str | None = None  # a `--metric FILE.py[:FUNCTION]`, loaded where the job runs (functions do not ship)


def _evaluate_scales(job: _EvaluationJob) -> dict[str, Any]:
    """Q/DQ model from one set of scales, evaluated against FP32 on the held-out samples; an error is returned."""
    from ..ort.data import from_arrays
    from ..ort.evaluate import evaluate
    from ..qdq import quantize_model

    model = job.model.load()
    try:
        qdq, _ = quantize_model(model, dict(job.amax), check=False)
        static = job.specs[0].rank and job.specs[0].static_dim(0) is not None
        source = from_arrays(job.samples, job.specs, batch_size=job.batch_size,
                             last_batch="pad" if static else "keep")
        report = evaluate(model, qdq, source, worst=0, threads=job.threads, max_activation_mb=job.max_activation_mb,
                          metric=job.metric)
    except TrtCalibError as exc:
        return {"error": str(exc)}
    out = report.primary
    row: dict[str, Any] = {"output": out.name, "kind": out.kind or out.sequence, "num_samples": out.num_samples,
                           "mean_abs_error": out.mean_abs_error, "max_abs_error": out.max_abs_error,
                           "num_parts": report.num_parts}
    if out.is_classifier:
        row.update(mean_kl=out.mean_kl, agreement=out.agreement)
    elif out.is_sequence:  # per-position KL ranks; whole-sequence agreement is the decision kept
        row.update(mean_kl=out.mean_position_kl, agreement=out.sequence_agreement,
                   position_agreement=out.position_agreement)
    if report.metric is not None:
        row.update(task_metric=report.metric["value"], task_metric_higher_is_better=report.metric["higher_is_better"])
    return row


def _quantized_tensors(model: Any, amax: Mapping[str, float]) -> set[str] | None:
    """The tensors that get a Q/DQ pair where `qdq.quantize_model` places them (TensorRT's guidance: inputs of
    weighted ops, residual Adds, Concats); None when it places none. The others' spread cannot reach the output of
    an explicit-quantization engine (a Conv output fused with its ReLU, a Softmax input)."""
    from ..qdq import quantize_model

    try:
        _, coverage = quantize_model(model, dict(amax), check=False)
    except TrtCalibError as exc:
        log.info("stability: no Q/DQ placement (%s)", exc)
        return None
    return set(coverage.activations)


# ---------------------------------------------------------------------------------------------- statistics
def _finite(v: float) -> bool:
    return v is not None and math.isfinite(v)


def _spread(amax: Sequence[float], base: float, width: float, tolerance: float) -> dict[str, Any]:
    """min, max and max - min of a tensor's amax over variants, in % of the base amax and in base bins."""
    if not all(_finite(a) for a in amax) or not _finite(base) or base <= 0:
        return {"min": min(amax), "max": max(amax), "range_percent": None, "range_bins": None, "unstable": False,
                "degenerate": True}
    lo, hi = float(min(amax)), float(max(amax))
    percent = 100.0 * (hi - lo) / base
    return {"min": lo, "max": hi, "range_percent": percent,
            "range_bins": (hi - lo) / width if width > 0 else None,
            "unstable": percent > tolerance, "degenerate": False}


def _settle(sizes: Sequence[int], amax: Sequence[float], full: float, width: float) -> int | None:
    """The smallest subset size from which every larger one (the full data last) is within one bin of the full
    data's amax; None when only the full data is (the amax has not settled)."""
    if not _finite(full) or width <= 0:
        return None
    within = [_finite(a) and abs(a - full) <= _WITHIN_ONE_BIN * width for a in amax]
    settled_at = None
    for size, ok in zip(reversed(sizes[:-1]), reversed(within[:-1])):
        if not ok:
            break
        settled_at = size
    return settled_at


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else str(v)
    return v


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    return _num(value)


# ---------------------------------------------------------------------------------------------- all of it
@dataclass
class StabilityResult:
    """What `run_stability` measured; `to_json()` is STAB.json."""

    record: dict[str, Any]
    outcomes: list[_Outcome] = field(default_factory=list, repr=False)

    @property
    def unstable(self) -> list[str]:
        return list(self.record["summary"]["unstable_tensors"])

    def to_json(self) -> dict[str, Any]:
        return self.record


def run_stability(
    model: Any,
    samples: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    orders: int = 5,
    batch_sizes: Sequence[int] = (8, 16, 32),
    fractions: Sequence[float] = (0.25, 0.5, 1.0),
    seed: int = 0,
    tolerance: float = 5.0,
    last_batch: str = "drop",
    trt_version: str = DEFAULT_TRT_VERSION,
    heldout: Mapping[str, np.ndarray] | None = None,
    end_to_end: bool = True,
    executor: Any = None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    max_activation_mb: float = 256,
    meta: Mapping[str, Any] | None = None,
    metric: str | None = None,
) -> StabilityResult:
    """Calibrate every variant of `samples` (stacked per input along axis 0) and measure the spread per tensor.

    `heldout` samples evaluate the end-to-end effect (the calibration samples when None); `end_to_end=False` skips
    it. `executor` is an `ort.executor.Executor` (serial when None). `progress(what, total)` may return a callback
    taking 1 per finished item. `tolerance` is in % of the base amax. Every model run (calibrations and the
    end-to-end evaluations) cuts batches into equal parts within `max_activation_mb`. `metric`: a user's task metric
    `FILE.py[:FUNCTION]` (`ort.user_metric`), which then ranks the end-to-end variants.
    """
    from ..ort.model import load_model, model_inputs
    from ..ort.collect import tie_scales
    from ..ort.executor import SerialExecutor

    started = time.perf_counter()
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    proto = load_model(model)
    specs = tuple(model_inputs(proto))
    names = [s.name for s in specs]
    if set(samples) != set(names):
        raise DataError(f"stability: samples are for inputs {sorted(samples)}, the model has {names}")
    total = {int(np.asarray(samples[s.name]).shape[s.batch_axis]) for s in specs if s.batch_axis is not None}
    if len(total) != 1:
        raise DataError(f"stability: the inputs hold different numbers of samples ({sorted(total)})")
    num_samples = total.pop()
    static = {s.static_dim(s.batch_axis) for s in specs
              if s.batch_axis is not None and s.static_dim(s.batch_axis) is not None}
    wanted = [batch_size, *batch_sizes]
    if static and any(b not in static for b in wanted):
        raise DataError(
            f"stability: the model's batch dim is fixed at {static.pop()}, so batch sizes {sorted(set(wanted))} "
            "cannot all run. Hint: give only that batch size (--batch-sizes), or export the model with a dynamic "
            "batch dim"
        )
    variants = plan_variants(num_samples, batch_size, orders=orders, batch_sizes=batch_sizes, fractions=fractions,
                             seed=seed, last_batch=last_batch)
    packed = ShippedModel.of(proto)
    engine = executor if executor is not None else SerialExecutor()
    threads = engine.threads_per_worker
    pool = {n: samples[n] for n in names}
    jobs = [_CalibrationJob(packed, specs, v, pool, v.indices(num_samples, last_batch), last_batch, threads,
                            max_activation_mb) for v in variants]
    log.info("stability: %d calibrations (%s) on %s", len(jobs),
             ", ".join(f"{sum(v.kind == k for v in variants)} {k}" for k in KINDS), engine)
    outcomes = engine.map(_calibrate_variant, jobs, progress=progress("calibrating", len(jobs)) if progress else None)
    del jobs

    tied = [tie_scales(proto, o.amax, trt_version=trt_version) for o in outcomes]
    tied_to = tied[0][1]
    quantized = _quantized_tensors(proto, tied[0][0]) if end_to_end else None
    spread_ids = [v.id for v in variants if v.kind in SPREAD_KINDS]
    subset_ids = sorted((v.id for v in variants if v.kind == "subset"), key=lambda i: variants[i].num_samples)
    base = outcomes[0]
    tensors = []
    for name in base.amax:
        amax = [o.amax[name] for o in outcomes]
        width = base.bin_width[name]
        spread = _spread([amax[i] for i in spread_ids], base.amax[name], width, tolerance)
        curve_ids = subset_ids + [0]
        sizes = [variants[i].num_samples for i in curve_ids]
        curve = [amax[i] for i in curve_ids]
        tensors.append({
            "name": name,
            "tied_to": tied_to.get(name),
            "quantized": None if quantized is None else name in quantized,
            "base_amax": base.amax[name],
            "base_bin_width": width,
            "amax": amax,
            "index": [o.index[name] for o in outcomes],
            "bin_width": [o.bin_width[name] for o in outcomes],
            "range": [o.range[name] for o in outcomes],
            **spread,
            "settle": {"num_samples": sizes, "amax": curve,
                       "settled_at": _settle(sizes, curve, base.amax[name], width)},
        })
    judged = [t for t in tensors if t["tied_to"] is None and not t["degenerate"]]
    unstable = sorted((t for t in judged if t["unstable"]), key=lambda t: -t["range_percent"])
    summary = {
        "tensors": len(tensors),
        "judged": len(judged),
        "unstable": len(unstable),
        "unstable_tensors": [t["name"] for t in unstable],
        "unstable_quantized": None if quantized is None else [t["name"] for t in unstable if t["quantized"]],
        "largest_range_percent": max((t["range_percent"] for t in judged), default=None),
        "not_settled": [t["name"] for t in judged if subset_ids and t["settle"]["settled_at"] is None],
    }

    e2e: dict[str, Any]
    if not end_to_end:
        e2e = {"skipped": "not asked for"}
    else:
        on = "held-out samples" if heldout is not None else "the calibration samples (no held-out data given)"
        e2e = _end_to_end(packed, specs, variants, [t[0] for t in tied], quantized, spread_ids,
                          heldout if heldout is not None else samples, batch_size, engine, progress, on=on,
                          max_activation_mb=max_activation_mb, metric=metric)

    record = {
        "format": FORMAT,
        "generator": f"trt-calib {__version__}",
        **dict(meta or {}),
        "algorithm": "entropy2",
        "trt_version": trt_version,
        "tolerance_percent": tolerance,
        "num_samples": num_samples,
        "base_batch_size": batch_size,
        "last_batch": last_batch,
        "executor": engine.name,
        "variants": [{**v.to_dict(), "num_batches": o.num_batches, "seconds": round(o.seconds, 3)}
                     for v, o in zip(variants, outcomes)],
        "spread_variants": spread_ids,
        "subset_variants": subset_ids,
        "tensors": tensors,
        "summary": summary,
        "end_to_end": e2e,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return StabilityResult(_jsonable(record), outcomes)


def _end_to_end(
    packed: ShippedModel, specs: tuple[Any, ...], variants: list[Variant], tied: list[dict[str, float]],
    quantized: set[str] | None, spread_ids: list[int], samples: Mapping[str, np.ndarray], batch_size: int,
    engine: Any, progress: Callable[[str, int], Callable[[int], None] | None] | None, *, on: str,
    max_activation_mb: float = 256, metric: str | None = None,
) -> dict[str, Any]:
    """Evaluate each distinct set of scales among the spread variants; the most and least favourable by the error.

    Variants whose scales differ only on tensors without a Q/DQ pair make the same Q/DQ model: it runs once."""
    if quantized is None:
        return {"skipped": "quantize_model places no Q/DQ pair in this model"}
    groups: dict[tuple, list[int]] = {}
    for i in spread_ids:
        key = tuple(sorted((n, float(a)) for n, a in tied[i].items() if n in quantized))
        groups.setdefault(key, []).append(i)
    firsts = [ids[0] for ids in groups.values()]
    jobs = [_EvaluationJob(packed, specs, tied[i], dict(samples), batch_size, engine.threads_per_worker,
                           max_activation_mb, metric) for i in firsts]
    rows = engine.map(_evaluate_scales, jobs, progress=progress("evaluating", len(jobs)) if progress else None)
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"skipped": errors[0]}
    if metric is not None:  # the user's task metric ranks, in the direction it says is better
        key, sign = "task_metric", -1.0 if rows[0]["task_metric_higher_is_better"] else 1.0
    else:
        key, sign = ("mean_kl" if rows[0].get("kind") else "mean_abs_error"), 1.0
    measured = []
    for ids, row in zip(groups.values(), rows):
        for i in ids:
            same = ids[0] if i != ids[0] else None
            measured.append({"variant": i, "label": variants[i].label, "same_scales_as": same, **row})
    measured.sort(key=lambda r: r["variant"])
    ranked = sorted(measured, key=lambda r: (_rank_key(sign * r[key]), r["variant"]))
    extra = {} if metric is None else {"task_metric": metric,
                                       "higher_is_better": rows[0]["task_metric_higher_is_better"]}
    return {
        "on": on,
        "output": rows[0]["output"],
        "metric": key,
        **extra,
        "evaluations": len(jobs),
        "variants": measured,
        "best": ranked[0]["variant"],
        "worst": ranked[-1]["variant"],
        "base": next(r for r in measured if r["variant"] == 0),
    }


def _rank_key(value: float) -> float:
    """Smaller is better; NaN last."""
    return math.inf if value is None or math.isnan(value) else value


def load_stability(path: str | Path) -> dict[str, Any]:
    """A STAB.json written by `trt-calib stability`; errors name the file."""
    from .._util import read_json

    path = Path(path)
    # bounded, regular files only, and a JSON nested too deeply for Python is a DataError, not a RecursionError
    record = read_json(path, limit=1 << 30, kind="stability JSON", error=DataError)
    if json_depth(record) > MAX_JSON_DEPTH:
        raise DataError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels: not a stability file")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: not a trt-calib stability file (format {FORMAT!r}). Hint: trt-calib stability "
                        "MODEL --data D -o STAB.json writes one")
    return record
