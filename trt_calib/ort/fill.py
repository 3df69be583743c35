"""Filling TensorRT's histograms from a `Runner`, batch after batch, exactly as whole batches would.

Shared by sequential calibration (`collect`) and each shard of a sharded one (`shard`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..core.histogram import AbsHistogram, finite_abs_max
from .data import iter_batches
from .runner import Runner

__all__ = ["fill_histograms", "first_batch_in_parts", "add_batch"]

log = logging.getLogger(__name__)


def first_batch_in_parts(runner: Runner, batch: Mapping[str, np.ndarray], histograms: dict[str, AbsHistogram]) -> int:
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
    for j, part in enumerate(parts):
        for name, value in runner.run(part).items():
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
    again = max((start[n] for n in restarted), default=0)
    for j in range(again):
        for name, value in runner.run(parts[j]).items():
            if name in restarted and start[name] > j:
                histograms[name].add_part(value)
    for name in start:
        histograms[name].end_batch()
    return again


def fill_histograms(runner: Runner, batches: Iterable[Any], histograms: dict[str, AbsHistogram], *, first: bool,
          size: bool = True, progress: Callable[[int], None] | None = None) -> int:
    """Every batch into the histograms, in order; returns the number of batches.

    `size`: the first batch decides the part size (else the runner's stands); `first`: the histograms have seen no
    batch yet, so a first batch that runs in parts must learn its range before binning (`first_batch_in_parts`).
    """
    count = 0
    for batch in iter_batches(batches, runner.specs):
        parts = runner.size_parts(batch) if count == 0 and size else 1
        if count == 0 and first and parts > 1:
            again = first_batch_in_parts(runner, batch, histograms)
            log.info("first batch: %d of its %d parts ran twice, to learn its range first", again, parts)
        else:
            add_batch(runner, batch, histograms)
        count += 1
        if progress is not None:
            progress(1)
    return count


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
