"""Filling TensorRT's histograms from a `Runner`, batch after batch, exactly as whole batches would.

Shared by sequential calibration (`collect`) and each shard of a sharded one (`shard`).

With `ahead=True` the model runs one part ahead on a worker thread while this thread bins the part before
(`run_ahead`): the binning kernel releases the GIL, so the two overlap where onnxruntime leaves cores idle (on 2
cores at the exact level it keeps 1.8 busy, so little: docs/performance.md). Parts are binned in the same order, so the histograms are the same
bytes; at most two parts' activations exist at once (the caller gives the runner half the activation budget).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np

from ..core.histogram import AbsHistogram, finite_abs_max
from .data import iter_batches
from .runner import Runner

__all__ = ["fill_histograms", "first_batch_in_parts", "add_batch", "run_ahead"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_ahead(runner: Runner, parts: Iterable[tuple[T, Mapping[str, np.ndarray]]], *,
              ahead: bool = True) -> Iterator[tuple[T, dict[str, np.ndarray]]]:
    """(tag, runner.run(part)) for each (tag, part), in order; with `ahead`, part k + 1 runs on a worker thread
    while the caller works on part k.

    The run of part k + 2 starts only when the caller asks for part k + 1, so at most two parts' activations are
    alive: the one being used and the one running (`fill_histograms` also clears each dict once it is binned).
    `parts` is read on the calling thread (a data script's generator never runs on the worker). An error of a run
    is raised here, at the part it belongs to.
    """
    if not ahead:
        for tag, part in parts:
            yield tag, runner.run(part)
        return
    items = iter(parts)
    with ThreadPoolExecutor(1, thread_name_prefix="trt-calib-run") as pool:
        nxt = next(items, None)
        running = None if nxt is None else (nxt[0], pool.submit(runner.run, nxt[1]))
        try:
            while running is not None:
                tag, future = running
                nxt = next(items, None)  # the next part's inputs, read while the model runs
                values = future.result()
                running = None if nxt is None else (nxt[0], pool.submit(runner.run, nxt[1]))
                yield tag, values
                del values
        finally:
            if running is not None:  # abandoned (an error or an interrupt in the caller): let the run finish
                running[1].cancel()


def first_batch_in_parts(runner: Runner, batch: Mapping[str, np.ndarray], histograms: dict[str, AbsHistogram], *,
                         ahead: bool = False) -> int:
    """TensorRT's first batch, run in parts: returns how many parts had to run twice.

    The first batch's range is its max over all parts, and it must be known before any value is binned. Each
    tensor bins every part at the largest max seen so far and starts over (a fresh histogram at the new max) when
    a part raises it; afterwards only the parts before the last such raise of any tensor run again, and only the
    tensors that started over later bin them. The histograms equal those of the whole batch; the part holding
    every tensor's largest value, and all parts after it, run once.
    """
    parts = runner.split(batch)
    start: dict[str, int] = {}  # per tensor: the first part binned at its final range
    restarted: set[str] = set()  # tensors whose first parts must be binned again
    for j, values in run_ahead(runner, enumerate(parts), ahead=ahead):
        for name, value in values.items():
            h = histograms[name]
            if name not in start:  # its first part (a tensor of an If branch may first appear in a later part)
                h.begin_batch(finite_abs_max(value))
                h.add_part(value)
                start[name] = j
                continue
            seen = h.abs_max  # h holds only this batch so far: its max
            h.add_part(value)
            if h.abs_max > seen:  # this part raised the max: bin it again at the new max, the parts before later
                fresh = histograms[name] = AbsHistogram(h.num_bins)
                fresh.begin_batch(float(h.abs_max))
                fresh.add_part(value)
                start[name] = j
                restarted.add(name)
        values.clear()
    again = max((start[n] for n in restarted), default=0)
    for j, values in run_ahead(runner, ((j, parts[j]) for j in range(again)), ahead=ahead):
        for name, value in values.items():
            if name in restarted and start[name] > j:
                histograms[name].add_part(value)
        values.clear()
    for name in start:
        histograms[name].end_batch()
    return again


def fill_histograms(runner: Runner, batches: Iterable[Any], histograms: dict[str, AbsHistogram], *, first: bool,
                    size: bool = True, progress: Callable[[int], None] | None = None, ahead: bool = False) -> int:
    """Every batch into the histograms, in order; returns the number of batches.

    `size`: the first batch decides the part size (else the runner's stands); `first`: the histograms have seen no
    batch yet, so a first batch that runs in parts must learn its range before binning (`first_batch_in_parts`).
    `ahead`: run the next part while this one is binned (`run_ahead`); the same histograms.
    """
    source = iter(iter_batches(batches, runner.specs))
    batch = next(source, None)
    if batch is None:
        return 0
    parts = runner.size_parts(batch) if size else 1
    if first and parts > 1:
        again = first_batch_in_parts(runner, batch, histograms, ahead=ahead)
        log.info("first batch: %d of its %d parts ran twice, to learn its range first", again, parts)
        if progress is not None:
            progress(1)
        count = 1
    else:
        source = _chain(batch, source)
        count = 0
    del batch

    def stream() -> Iterator[tuple[tuple[bool, bool], Mapping[str, np.ndarray]]]:
        for whole in source:
            cut = runner.split(whole)
            for j, part in enumerate(cut):
                yield (j == 0, j == len(cut) - 1), part

    for (begins, ends), values in run_ahead(runner, stream(), ahead=ahead):
        if begins:
            for h in histograms.values():
                h.begin_batch()
        for name, value in values.items():
            histograms[name].add_part(value)
        values.clear()
        if ends:
            for h in histograms.values():
                h.end_batch()
            count += 1
            if progress is not None:
                progress(1)
    return count


def _chain(first: T, rest: Iterator[T]) -> Iterator[T]:
    yield first
    yield from rest


def add_batch(runner: Runner, batch: Mapping[str, np.ndarray], histograms: Mapping[str, AbsHistogram]) -> None:
    """One calibration batch into every histogram, part by part."""
    for h in histograms.values():
        h.begin_batch()
    for values in runner.parts(batch):
        for name, value in values.items():
            histograms[name].add_part(value)
        del values
    for h in histograms.values():
        h.end_batch()
