"""TensorRT's calibrators as trt-calib names them: the base class and the cache header each one writes."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CalibrationError

__all__ = ["Algorithm", "ALGORITHMS", "BY_CLASS_NAME", "algorithm"]


@dataclass(frozen=True)
class Algorithm:
    """One TensorRT calibrator: our name for it, the TensorRT base class and the cache header it writes."""

    key: str  # the name trt-calib uses everywhere (CLI, collect.calibrate)
    class_name: str  # our calibrator class
    base: str  # the tensorrt base class
    header: str  # the algorithm in the cache header, TRT-<version>-<header>


#: Our algorithm name -> TensorRT calibrator.
ALGORITHMS: dict[str, Algorithm] = {
    a.key: a
    for a in (
        Algorithm("entropy2", "EntropyCalibrator2", "IInt8EntropyCalibrator2", "EntropyCalibration2"),
        Algorithm("minmax", "MinMaxCalibrator", "IInt8MinMaxCalibrator", "MinMaxCalibration"),
        Algorithm("entropy", "EntropyCalibrator", "IInt8EntropyCalibrator", "EntropyCalibration"),
        Algorithm("legacy", "LegacyCalibrator", "IInt8LegacyCalibrator", "LegacyCalibration"),
    )
}
BY_CLASS_NAME = {a.class_name: a for a in ALGORITHMS.values()}


def algorithm(name: str) -> Algorithm:
    """The calibrator for our name (entropy2) or its class name (EntropyCalibrator2); CalibrationError otherwise."""
    algo = ALGORITHMS.get(name) or BY_CLASS_NAME.get(name)
    if algo is None:
        raise CalibrationError(f"unknown calibration algorithm {name!r}. Choices: {', '.join(ALGORITHMS)}.")
    return algo
