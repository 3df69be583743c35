"""Task metrics from the user: `--metric FILE.py[:FUNCTION]`, the convention of data scripts.

A cosine or KL over raw outputs can be blind to what a task needs (YOLO's output mixes pixel boxes with 0..1 class
scores; OCR needs the decoded text). A metric script says what "still right" means for the model at hand:

    def metric(fp32, int8, batch=None):          # default FUNCTION name: "metric"
        # fp32, int8: {output_name: np.ndarray} for one held-out batch; batch: {input_name: np.ndarray}
        return value, higher_is_better            # or just `value` (then set metric.higher_is_better = True/False)
        # or (value, higher_is_better, weight): batches are averaged with these weights (default: batch samples)

Per-batch values are averaged weighted by `weight` (by default the batch's samples), so a pooled ratio over the
whole held-out set (e.g. 12 of 13 detections matched) is `(matched / total, True, total)`.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import DataError
from .data.scripts import load_script_function, split_script

__all__ = ["DEFAULT_FUNCTION", "UserMetric", "MetricAccumulator", "load_metric"]

DEFAULT_FUNCTION = "metric"


@dataclass(frozen=True)
class UserMetric:
    """A loaded metric function: `name` is how reports name it ("file.py:function")."""

    name: str
    function: Callable[..., Any]
    takes_batch: bool
    declared_higher_is_better: bool | None = None

    def __call__(self, fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray],
                 batch: Mapping[str, np.ndarray] | None = None) -> tuple[float, bool | None, float | None]:
        """(value, higher_is_better or None, weight or None) for one batch; a malformed answer is a `DataError`."""
        try:
            got = self.function(fp32, int8, batch) if self.takes_batch else self.function(fp32, int8)
        except Exception as exc:
            raise DataError(f"{self.name}: the metric failed ({type(exc).__name__}: {exc})") from exc
        parts = tuple(got) if isinstance(got, (tuple, list)) else (got,)
        if not 1 <= len(parts) <= 3:
            raise DataError(f"{self.name}: returned {len(parts)} values; return value, (value, higher_is_better) "
                            "or (value, higher_is_better, weight)")
        value = _number(self.name, "value", parts[0])
        higher = self.declared_higher_is_better
        if len(parts) >= 2:
            if not isinstance(parts[1], (bool, np.bool_)):
                raise DataError(f"{self.name}: higher_is_better must be True or False, not {parts[1]!r}")
            higher = bool(parts[1])
        weight = _number(self.name, "weight", parts[2]) if len(parts) == 3 else None
        if weight is not None and (weight < 0 or not math.isfinite(weight)):
            raise DataError(f"{self.name}: weight must be a finite number >= 0, not {weight!r}")
        return value, higher, weight


def _number(name: str, what: str, value: Any) -> float:
    try:
        return float(np.asarray(value, dtype=np.float64).item())
    except (TypeError, ValueError):
        raise DataError(f"{name}: its {what} must be one number, not {type(value).__name__} {value!r:.60}") from None


@dataclass
class MetricAccumulator:
    """The weighted mean of a `UserMetric` over held-out batches, and which way is better."""

    metric: UserMetric
    total: float = 0.0
    weight: float = 0.0
    higher_is_better: bool | None = None
    batches: int = field(default=0)

    def add(self, fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray],
            batch: Mapping[str, np.ndarray] | None = None, samples: int | None = None) -> None:
        value, higher, weight = self.metric(fp32, int8, batch)
        if higher is not None:
            if self.higher_is_better is not None and higher != self.higher_is_better:
                raise DataError(f"{self.metric.name}: said higher_is_better={self.higher_is_better} for an earlier "
                                f"batch and {higher} for batch {self.batches}")
            self.higher_is_better = higher
        w = weight if weight is not None else float(samples if samples is not None else 1)
        if w:
            self.total += value * w
            self.weight += w
        self.batches += 1

    def result(self) -> float:
        """The weighted mean; NaN when every weight was 0. Which way is better must be known by now."""
        if self.higher_is_better is None:
            raise DataError(f"{self.metric.name}: never said whether higher is better. Hint: return "
                            "(value, higher_is_better), or set `higher_is_better = True` on the function")
        return self.total / self.weight if self.weight else math.nan


def load_metric(spec: str | os.PathLike) -> UserMetric:
    """The metric a `--metric FILE.py[:FUNCTION]` names (default function `metric`); errors name the file."""
    text = os.fspath(spec)
    path, function = split_script(text)
    if function == "load_data" and not text.endswith(":load_data"):  # split_script's data-script default
        function = DEFAULT_FUNCTION
    if path.suffix.lower() != ".py":
        raise DataError(f"{text}: a metric is a Python file, FILE.py or FILE.py:FUNCTION")
    if not path.is_file():
        raise DataError(f"{path}: no such metric script")
    fn = load_script_function(path, function, what="metric script", arguments=None)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = None
    positional = None if params is None else [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = params is not None and any(p.kind == p.VAR_POSITIONAL for p in params)
    if positional is not None and not varargs and len(positional) < 2:
        raise DataError(f"{path}: {function}{inspect.signature(fn)} must take (fp32_outputs, int8_outputs[, batch])")
    takes_batch = varargs or positional is None or len(positional) >= 3
    declared = getattr(fn, "higher_is_better", None)
    if declared is not None and not isinstance(declared, bool):
        raise DataError(f"{path}: {function}.higher_is_better must be True or False, not {declared!r}")
    return UserMetric(f"{path.name}:{function}", fn, takes_batch, declared)
