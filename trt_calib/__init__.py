"""trt-calib: TensorRT INT8 calibration you can check.

The core (histogram, thresholds, cache) needs numpy only; ONNX, TensorRT and GPU libraries are imported
by the modules that need them, when they are used.
"""

from __future__ import annotations

from .errors import CacheFormatError, CalibrationError, DataError, MissingDependencyError, ModelError, TrtCalibError

__version__ = "0.1.0"

_LAZY = {
    "AbsHistogram": "histogram",
    "CalibrationCache": "cache",
    "calibrate": "collect",
    "dry_run": "calibrator",
}


def __getattr__(name: str):
    """Re-export the main entry points without importing onnx/onnxruntime at package import."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "AbsHistogram",
    "CalibrationCache",
    "calibrate",
    "dry_run",
    "TrtCalibError",
    "CacheFormatError",
    "DataError",
    "ModelError",
    "CalibrationError",
    "MissingDependencyError",
]
