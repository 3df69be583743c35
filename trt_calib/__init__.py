"""trt-calib: TensorRT INT8 calibration you can check.

Layers, each importing only those below it: `core` (numpy: histograms, thresholds, the cache format), `ort`
(onnxruntime: data, collection, evaluation), `qdq` (Q/DQ graphs), `trt` (TensorRT and GPUs, imported lazily),
`tools` (cache tools, reports) and `cli`. The main entry points are re-exported here without importing onnx,
onnxruntime or TensorRT at package import.
"""

from __future__ import annotations

from . import _compat
from .errors import CacheFormatError, CalibrationError, DataError, MissingDependencyError, ModelError, TrtCalibError

__version__ = "0.1.0"

_LAZY = {
    "AbsHistogram": "core.histogram",
    "CalibrationCache": "core.cache",
    "calibrate": "ort.collect",
    "dry_run": "trt.calibrator",
}

_compat.install()


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
