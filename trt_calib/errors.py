"""The one family of errors a user can cause; the CLI prints them as one line."""

from __future__ import annotations

__all__ = [
    "TrtCalibError",
    "CacheFormatError",
    "DataError",
    "ModelError",
    "CalibrationError",
    "MissingDependencyError",
    "UsageError",
    "WorkerLostError",
    "EXIT_WORKER_LOST",
]

#: Exit status when a worker process died under a command (killed by the system, out of memory): not a bug of
#: trt-calib (70) and not a usage error (2). 75 is EX_TEMPFAIL of sysexits.h: the same run may succeed when retried
#: with fewer workers or more memory.
EXIT_WORKER_LOST = 75


class TrtCalibError(Exception):
    """Base of every error caused by input, files or environment (not by a bug in trt-calib)."""

    exit_code = 2


class CacheFormatError(TrtCalibError):
    """A calibration cache that does not follow TensorRT's format; the message names file and line."""


class DataError(TrtCalibError):
    """Calibration data that is missing, empty, or does not match the model's inputs."""


class ModelError(TrtCalibError):
    """An ONNX model that cannot be loaded or run."""


class CalibrationError(TrtCalibError):
    """Calibration itself failed (a failing batch, NaN inputs, a TensorRT callback error)."""


class MissingDependencyError(TrtCalibError):
    """An optional dependency (tensorrt, pycuda, ...) is needed for this feature and is not installed."""


class UsageError(TrtCalibError):
    """A bad argument or an output that would destroy an input: refused before any data is read."""


class WorkerLostError(TrtCalibError):
    """A worker process of an executor died (killed by a signal, the out-of-memory killer) before finishing its
    part; the run stops, writes nothing more, and exits with `EXIT_WORKER_LOST`."""

    exit_code = EXIT_WORKER_LOST
