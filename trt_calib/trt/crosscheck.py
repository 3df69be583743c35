"""The cross-check: keep host copies of the batches TensorRT saw, and when TensorRT writes its cache recompute the
calibration on the CPU (`ort.collect.calibrate`) and compare per tensor (`core.compare`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.cache import CalibrationCache
from ..core.compare import Comparison, compare
from ..core.thresholds import ALGORITHMS as CPU_ALGORITHMS
from ..errors import CalibrationError
from ..ort.model import load_model
from ..ort.collect import calibrate
from .algorithms import ALGORITHMS, Algorithm
from .batches import host_copy

__all__ = ["CrossCheck"]

logger = logging.getLogger("trt_calib.trt.calibrator")


class CrossCheck:
    """Host copies of the fed batches and, after `run`, the per-tensor comparison (`result`)."""

    def __init__(self, model: Any, algorithm: Algorithm) -> None:
        if model is True:
            raise CalibrationError(
                "cross_check needs the ONNX model the engine is built from: pass cross_check='model.onnx'"
            )
        if algorithm.key not in CPU_ALGORITHMS:
            raise CalibrationError(
                f"cross_check is not available for {algorithm.class_name}: trt-calib reimplements "
                f"{', '.join(k for k in ALGORITHMS if k in CPU_ALGORITHMS)} on the CPU, not {algorithm.header}."
            )
        if isinstance(model, (str, os.PathLike)) and not Path(model).is_file():
            raise CalibrationError(f"cross_check model {model}: no such file")
        self.model = model
        self.algorithm = algorithm
        self.kept: list[dict[str, np.ndarray]] = []
        self.result: Comparison | None = None
        self.error: BaseException | None = None

    def keep(self, batch: Mapping[str, Any], names: Sequence[str]) -> None:
        """Copy one fed batch to the host (device arrays included)."""
        self.kept.append({name: host_copy(batch[name]) for name in names})

    def run_safely(self, data: bytes) -> None:
        """`run`, keeping an exception as `error`: the cache is already written, so a cross-check that cannot run
        is a cross-check problem, not a calibration failure (the engine is kept)."""
        try:
            self.run(data)
        except BaseException as exc:  # Ctrl-C too: inside a TensorRT callback it would be swallowed anyway
            self.error = exc
            self.kept = []
            logger.warning(
                "the cross-check could not run (%s: %s); the calibration cache was written and the build goes on",
                type(exc).__name__, exc,
            )

    def run(self, data: bytes) -> None:
        """Recompute the calibration from the kept batches and compare it with TensorRT's cache `data`."""
        if not self.kept:
            logger.info("cross-check skipped: no batches were fed (the cache came from a file)")
            return
        reference = CalibrationCache.parse(data, source="TensorRT's calibration cache")
        model = load_model(self.model)
        ours = calibrate(model, self.kept, algorithm=self.algorithm.key, trt_version=reference.trt_version)
        # TensorRT's cache also holds tensors it made up (unnamed layers, constants): not inconsistencies.
        self.result = compare(reference, ours, initializers=(t.name for t in model.graph.initializer))
        level = logging.INFO if self.result.consistent else logging.WARNING
        logger.log(level, "cross-check against the CPU calibration (%d batches):\n%s", len(self.kept),
                   self.result.summary())
        self.kept = []
