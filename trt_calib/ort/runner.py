"""Running a model on batches: one onnxruntime session that returns the tensors asked for, each batch cut into equal
parts small enough for an activation-memory budget.

Calibration (`collect`, `shard`), evaluation and sensitivity all run models through a `Runner`, so the budget,
the part sizes and the errors that name the inputs fed are the same everywhere.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core import kernel as _kernel
from ..core.histogram import finite_abs_max
from ..errors import CalibrationError
from .data import InputSpec, iter_batches
from .model import checked_tensors, describe, load_model, model_inputs, ort_session, sample_bytes

__all__ = ["Runner", "split_batch", "batch_maxima", "global_maxima"]

log = logging.getLogger(__name__)


def split_batch(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec], size: int) -> list[dict[str, np.ndarray]]:
    """The batch cut along the batch dim into the fewest parts of at most `size` samples, all of one size (give or
    take one sample: 16 in parts of 5 is 4, 4, 4, 4, not 5, 5, 5, 1), or whole when it cannot be cut."""
    n = {v.shape[0] if v.ndim else -1 for v in batch.values()}
    splittable = len(n) == 1 and all(s.shape and not isinstance(s.shape[0], int) for s in specs)
    count = n.pop() if len(n) == 1 else -1
    if not splittable or size >= count:
        return [dict(batch)]
    bounds = np.linspace(0, count, -(-count // size) + 1).round().astype(int)
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:])]


class Runner:
    """Runs the session on one calibration batch, in parts small enough for the activation-memory budget."""

    def __init__(self, session: Any, names: Sequence[str], specs: Sequence[InputSpec], budget_bytes: int) -> None:
        self.session = session
        self.input_names = {s.name for s in specs}
        self.run_names = [n for n in names if n not in self.input_names]
        self.names = list(names)
        self.specs = specs
        self.budget = budget_bytes
        self.part_size: int | None = None  # samples per part, fixed from the first batch
        self.sample_bytes: int | None = None  # activation bytes per sample, when the shapes tell it
        self.role = "the model"
        self.prefetch_kernel = True  # the parts will be binned: a large batch starts loading the compiled kernel

    @classmethod
    def open(
        cls, model: Any, tensors: Sequence[str] | None, *, threads: int | None, budget_bytes: int,
        name: str | None = None, optimization: str = "basic", optimize: bool = True,
    ) -> "Runner":
        """A runner over `tensors` (default: every tensor TensorRT calibrates) of `model`, its session ready;
        `name` (default: the model's path, if given one) names the model in errors. `optimize=False` runs the graph
        as written (every onnxruntime optimisation off: Q/DQ models, see `ort_session`)."""
        role = name or describe(model, "the model")
        model = load_model(model)
        names, info = checked_tensors(model, tensors, role)
        types = {n: elem for n, (elem, _) in info.items()}
        runner = cls(None, names, model_inputs(model), budget_bytes)
        runner.role = role
        runner.sample_bytes = sample_bytes(info, names, runner.specs)
        runner.session = ort_session(model, runner.run_names, types=types, threads=threads, role=role,
                                     optimization=optimization, optimize=optimize)
        return runner

    def split(self, batch: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The batch's inputs, cut into the parts it runs in."""
        return split_batch(batch, self.specs, self.part_size or 1 << 62)

    def run(self, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(name -> activation) for every calibrated tensor, for one part of a batch."""
        try:
            outputs = self.session.run(self.run_names, part)
        except Exception as exc:
            fed = ", ".join(f"{n!r} {tuple(v.shape)} {v.dtype}" for n, v in part.items())
            raise CalibrationError(f"{self.role}: onnxruntime failed on inputs {fed}: {exc}") from None
        values = dict(zip(self.run_names, outputs))
        del outputs
        values.update({n: part[n] for n in self.names if n in self.input_names})
        return values

    def parts(self, batch: Mapping[str, np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
        """(name -> activation) for every calibrated tensor, one part of the batch at a time."""
        for part in self.split(batch):
            yield self.run(part)

    def size_parts(self, batch: Mapping[str, np.ndarray]) -> int:
        """Decide the part size (samples) for this and the later batches; returns the number of parts of `batch`.

        The activation bytes per sample come from the inferred shapes when they are static but for the batch
        dimension, else from running one sample.
        """
        one = split_batch(batch, self.specs, 1)
        if len(one) == 1:
            self.part_size = None
            return 1
        per_sample = self.sample_bytes
        if per_sample is None:
            per_sample = sum(v.nbytes for v in self.run(one[0]).values())
        per_sample = max(1, per_sample)
        if self.prefetch_kernel:
            _kernel.prefetch(per_sample // 4 * len(one))  # a large batch: load the compiled kernel meanwhile
        self.part_size = max(1, self.budget // per_sample)
        count = len(self.split(batch))
        if count > 1:
            log.info("activations take %.0f MB per sample: running batches in %d parts of about %d samples",
                     per_sample / 2**20, count, -(-len(one) // count))
        return count


def global_maxima(runner: Runner, batches: Iterable[Any]) -> dict[str, float]:
    """Pass one of `range_mode="global"`: each tensor's finite max|x| over all batches (sizes the runner's parts)."""
    if iter(batches) is batches:
        raise CalibrationError(
            "range_mode='global' reads the batches twice, but they are a one-shot iterator. "
            "Hint: pass a list or a BatchSource (open_source / from_arrays), which can be iterated again"
        )
    maxima = dict.fromkeys(runner.names, 0.0)
    for batch_max in batch_maxima(runner, batches):
        for name, value in batch_max.items():
            maxima[name] = max(maxima[name], value)
    return maxima


def batch_maxima(runner: Runner, batches: Iterable[Any]) -> Iterator[dict[str, float]]:
    """Each batch's finite max|x| per tensor, batch after batch (the first batch sizes the runner's parts)."""
    for count, batch in enumerate(iter_batches(batches, runner.specs)):
        if count == 0:
            runner.size_parts(batch)
        maxima = dict.fromkeys(runner.names, 0.0)
        for values in runner.parts(batch):
            for name, value in values.items():
                maxima[name] = max(maxima[name], finite_abs_max(value))
            del values
        yield maxima
