"""trt-calib: TensorRT INT8 calibration you can check.

The core (histogram, thresholds, cache) needs numpy only; ONNX, TensorRT and GPU libraries are imported
by the modules that need them, when they are used.
"""

from __future__ import annotations

from .errors import CacheFormatError, CalibrationError, DataError, MissingDependencyError, ModelError, TrtCalibError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TrtCalibError",
    "CacheFormatError",
    "DataError",
    "ModelError",
    "CalibrationError",
    "MissingDependencyError",
]
