"""Sharded calibration, TensorRT-exact: the batches split over an executor's workers, the same cache byte for byte.

TensorRT's histogram of a tensor depends on every earlier batch through one number only, its range: the first
non-zero batch max, doubled whenever a later batch exceeds it. A worker that starts a run of batches from the range
those before it left behind bins and grows exactly as the sequential calibration does there; its counts then join
the earlier ones by the same pair merges growth applies (`AbsHistogram.merge`). So:

1. pass one: the batches before the last shard run on the workers, and each batch's finite max|x| per tensor comes
   back (`batch_maxima`, the pass `range_mode="global"` also uses);
2. the driver derives from them the range TensorRT's growth rule gives after every batch (`grown_ranges`);
3. pass two: shard s (a contiguous run of batches) starts from the range after the batches before it, fills
   histograms batch by batch as the sequential code does, and returns them;
4. the driver merges the shards in order, raising each earlier sum to the later range by exact pair merges.

With `range_mode="global"` pass one covers every batch and pass two fills fixed-range histograms, which add up.
The first shard needs no range and the last shard's maxima are needed by no one, so one worker is one pass.
Two passes run the model about 1 + (S - 1) / S times on S shards instead of once: on S workers the wall time is
about (1 + (S - 1) / S) / S of one worker's, so sharding pays from two workers that do not share cores.

The driver reads the batches once, keeps them in memory and sends each worker its batches (pickled: local
processes or a Dask cluster alike); workers keep one onnxruntime session per process for both passes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import kernel as _kernel
from ..core.histogram import AbsHistogram, grown_ranges
from .fill import fill_histograms
from .model import checked_tensors, load_model, model_inputs
from .runner import Runner, batch_maxima, source_inputs
from .data import held_batches, iter_batches
from .executor import Executor, ShippedModel, per_process

__all__ = ["collect_sharded", "shard_bounds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """One worker's share of a pass: its batches, and for pass two the range each histogram starts from."""

    model: ShippedModel
    name: str
    tensors: tuple[str, ...]
    batches: tuple[Mapping[str, np.ndarray], ...]
    threads: int | None
    max_activation_mb: float
    optimization: str
    num_bins: int = 0
    start: Mapping[str, float] | None = None  # pass two, TensorRT ranges: each tensor's range before the shard
    fixed: Mapping[str, float] | None = None  # pass two, global ranges: each tensor's fixed range
    first: bool = False  # the shard holds the calibration's first batch
    inputs: tuple[Any, ...] | None = None  # the model's InputSpecs with the batch axes the data was opened with


def _runner(job: _Job) -> Runner:
    """This process's runner for the job's model and settings (its onnxruntime session made once)."""

    def make() -> Runner:
        return Runner.open(job.model.load(), job.tensors, threads=job.threads, budget_bytes=int(job.max_activation_mb * 2**20),
                            name=job.name, optimization=job.optimization, inputs=job.inputs)

    key = ("trt-calib shard runner", job.model.sha256, job.tensors, job.threads, job.max_activation_mb,
           job.optimization, job.inputs)
    return per_process(key, make)


def _maxima(job: _Job) -> np.ndarray:
    """Pass one on a worker: each batch's finite max|x| per tensor (rows: batches, columns: `job.tensors`)."""
    runner = _runner(job)
    with _kernel.using_threads(job.threads):
        rows = [[m[name] for name in job.tensors] for m in batch_maxima(runner, job.batches)]
    return np.asarray(rows, dtype=np.float32).reshape(len(job.batches), len(job.tensors))


def _histograms(job: _Job) -> dict[str, AbsHistogram]:
    """Pass two on a worker: the shard's histograms, each started from its range before the shard."""
    runner = _runner(job)
    if job.fixed is not None:
        histograms = {n: AbsHistogram(job.num_bins, range=r) if r > 0 else AbsHistogram(job.num_bins)
                      for n, r in job.fixed.items()}
    else:
        start = job.start or {}
        histograms = {n: AbsHistogram.resumed(start.get(n, 0.0), job.num_bins) for n in job.tensors}
    with _kernel.using_threads(job.threads):
        fill_histograms(runner, job.batches, histograms, first=job.first and job.fixed is None)
    return histograms


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """`count` batches cut into `shards` contiguous runs of equal size (give or take one), in order."""
    shards = max(1, min(shards, count))
    edges = np.linspace(0, count, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def collect_sharded(
    model: Any,
    batches: Any,
    executor: Executor,
    *,
    tensors: Sequence[str] | None = None,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = 256,
    name: str | None = None,
    range_mode: str = "trt",
    optimization: str = "basic",
) -> tuple[dict[str, AbsHistogram], int]:
    """`collect_histograms` over `executor`'s workers: the same histograms (hence the same cache), in two passes.

    `threads` is onnxruntime's (and the binning kernel's) threads per worker; default: the executor's share of
    this machine's cores. `progress(n)` is called as shards finish, with their number of batches.
    """
    role = name or (str(model) if isinstance(model, (str, os.PathLike)) else "the model")
    model = load_model(model)
    names = tuple(checked_tensors(model, tensors, role)[0])
    given = source_inputs(batches)
    specs = given if given is not None else model_inputs(model)
    held = held_batches(iter_batches(batches, specs), origin=getattr(batches, "origin", "the data"),
                        purpose="sharded calibration (each worker is sent its batches)")
    all_batches = [dict(b) for b in held]
    count = len(all_batches)  # iter_batches refuses an empty source
    shards = shard_bounds(count, executor.workers)
    job = _Job(ShippedModel.of(model), role, names, (), threads or executor.threads_per_worker, max_activation_mb,
               optimization, num_bins, inputs=tuple(given) if given is not None else None)

    def jobs(lo: int, hi: int, parts: int, **fields: Any) -> list[_Job]:
        return [_replace(job, batches=tuple(all_batches[lo + a : lo + b]), **fields)
                for a, b in shard_bounds(hi - lo, parts)]

    # Pass one: the maxima the later shards start from (global ranges: every batch's).
    needed = count if range_mode == "global" else shards[-1][0]
    maxima = np.zeros((0, len(names)), dtype=np.float32)
    if needed:
        maxima = np.concatenate(executor.map(_maxima, jobs(0, needed, executor.workers)))
        log.info("pass one: the maxima of %d of %d batches, on %d workers", needed, count, executor.workers)
    if range_mode == "global":
        top = maxima.max(axis=0)
        second = [_replace(job, batches=tuple(all_batches[a:b]), fixed=dict(zip(names, map(float, top))))
                  for a, b in shards]
    else:
        ranges = grown_ranges(maxima)  # row b: the ranges after batch b
        second = []
        for a, b in shards:
            start = dict(zip(names, map(float, ranges[a - 1]))) if a else None
            second.append(_replace(job, batches=tuple(all_batches[a:b]), start=start, first=a == 0))

    def advance(_: int) -> None:
        if progress is not None:
            progress(count // len(shards))

    parts = executor.map(_histograms, second, progress=advance if progress is not None else None)
    if progress is not None and count % len(shards):
        progress(count % len(shards))
    histograms = parts[0]
    for later in parts[1:]:
        for n in names:
            histograms[n].merge(later[n])
    return histograms, count


def _replace(job: _Job, **fields: Any) -> _Job:
    from dataclasses import replace

    return replace(job, **fields)
