"""trt-calib: TensorRT INT8 calibration you can check.

Layers, each importing only those below it: `core` (numpy: histograms, thresholds, the cache format), `ort`
(onnxruntime: data, collection, evaluation), `qdq` (Q/DQ graphs), `trt` (TensorRT and GPUs, imported lazily),
`tools` (cache tools, reports) and `cli`. The main entry points are re-exported here without importing onnx,
onnxruntime or TensorRT at package import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _compat
from .errors import CacheFormatError, CalibrationError, DataError, MissingDependencyError, ModelError, TrtCalibError

if TYPE_CHECKING:  # what the lazy names below are, for IDEs and type checkers (nothing is imported at run time)
    from .core.cache import CalibrationCache
    from .core.histogram import AbsHistogram
    from .ort.collect import calibrate
    from .trt.calibrator import dry_run

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


def __dir__() -> list[str]:
    """The module's names and the lazy ones, so `dir()`, `help(trt_calib)` and completion list the entry points."""
    return sorted(set(globals()) | set(_LAZY))


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
