"""TensorRT INT8 calibrators (TensorRT 8.6 to 10.x) that fail loudly, and a CPU dry run of the same contract.

`EntropyCalibrator2`, `MinMaxCalibrator`, `EntropyCalibrator` and `LegacyCalibrator` are subclasses of the matching
`tensorrt.IInt8*Calibrator`, created on first access (so importing this module needs neither TensorRT nor a GPU):

    from trt_calib.calibrator import EntropyCalibrator2
    with EntropyCalibrator2(batches, cache_file="model.cache") as calib:
        config.int8_calibrator = calib
        plan = builder.build_serialized_network(network, config)
        calib.raise_if_failed()

TensorRT's Python bindings print and swallow any exception raised in a calibrator callback, then finish the build
from whatever batches were seen. These calibrators catch every exception (KeyboardInterrupt too), end calibration,
never write a cache after a failure, and `raise_if_failed()` re-raises the original exception. The logic lives in
`CalibratorCore`, which needs no TensorRT; the TensorRT classes are thin adapters around it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._util import atomic_write, require
from ..errors import CalibrationError, DataError, MissingDependencyError
from .device import DeviceBuffers, HostBuffers, is_device_array, select_backend

__all__ = [
    "ALGORITHMS",
    "CalibratorCore",
    "DryRunSummary",
    "calibrator_class",
    "make_calibrator",
    "import_tensorrt",
    "quiet_trt_deprecations",
    "dry_run",
]
# EntropyCalibrator2, MinMaxCalibrator, EntropyCalibrator and LegacyCalibrator are module attributes created on
# access (module __getattr__); they are left out of __all__ so `import *` does not need TensorRT.

logger = logging.getLogger(__name__)


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
_BY_CLASS_NAME = {a.class_name: a for a in ALGORITHMS.values()}
_CACHE_MISMATCH = ("error", "recalibrate")


def _algorithm(name: str) -> Algorithm:
    algo = ALGORITHMS.get(name) or _BY_CLASS_NAME.get(name)
    if algo is None:
        raise CalibrationError(f"unknown calibration algorithm {name!r}. Choices: {', '.join(ALGORITHMS)}.")
    return algo


@contextlib.contextmanager
def quiet_trt_deprecations() -> Iterator[None]:
    """Silence DeprecationWarnings inside this block only: TensorRT 10.1+ deprecates the calibrator and
    dynamic-range APIs this package exists to drive, and `-W error` test runs must not fail on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def import_tensorrt(purpose: str = "INT8 calibration") -> Any:
    """Import `tensorrt`, or raise MissingDependencyError saying how to get it."""
    try:
        return require("tensorrt", purpose=purpose)
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"tensorrt is needed for {purpose} but cannot be imported ({exc.__cause__}). "
            "Hint: install NVIDIA's TensorRT wheel for your CUDA version (e.g. pip install tensorrt-cu12, "
            "a version 8.6 to 10.x for calibrators), or on Jetson use the one JetPack ships."
        ) from exc.__cause__


# ---------------------------------------------------------------------------------------------------------------------
# Batches: description and validation


def _torch_like(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "is_contiguous")


def _describe(value: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, numpy dtype, C-contiguous) of a numpy array, a torch tensor or a __cuda_array_interface__ array."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype, bool(value.flags.c_contiguous)
    if _torch_like(value):
        name = str(value.dtype).rpartition(".")[2]
        try:
            dtype = np.dtype(name)
        except TypeError:
            dtype = np.dtype(np.void)  # bfloat16 and other types numpy has no name for
        return tuple(int(d) for d in value.shape), dtype, bool(value.is_contiguous())
    if is_device_array(value):
        iface = value.__cuda_array_interface__
        shape = tuple(int(d) for d in iface["shape"])
        dtype = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        contiguous = strides is None or tuple(strides) == tuple(
            int(np.prod(shape[i + 1 :], dtype=np.int64)) * dtype.itemsize for i in range(len(shape))
        )
        return shape, dtype, contiguous
    raise TypeError(type(value).__name__)


def _count_non_finite(value: Any) -> tuple[int, int]:
    """(NaN count, infinity count) of a floating-point array on the host or the GPU."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return 0, 0
        if np.isfinite(value).all():
            return 0, 0
        nan = int(np.count_nonzero(np.isnan(value)))
        return nan, int(value.size - nan - np.count_nonzero(np.isfinite(value)))
    if _torch_like(value):
        if not value.is_floating_point() or bool(value.isfinite().all()):
            return 0, 0
        nan = int(value.isnan().sum())
        return nan, int(value.isinf().sum())
    module = type(value).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        if value.dtype.kind != "f" or bool(cupy.isfinite(value).all()):
            return 0, 0
        return int(cupy.isnan(value).sum()), int(cupy.isinf(value).sum())
    return 0, 0


def _host_copy(value: Any) -> np.ndarray:
    """A host numpy copy of a batch array (for the cross-check and the host backend)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if _torch_like(value):
        return value.detach().cpu().numpy().copy()
    if hasattr(value, "get"):  # CuPy
        return np.asarray(value.get())
    raise CalibrationError(f"cannot copy a {type(value).__name__} to the host for the cross-check")


def _leading_dim(raw: Any) -> int:
    """The batch size a raw batch implies: the first dim of its first array (1 for a scalar)."""
    value = next(iter(raw.values())) if isinstance(raw, Mapping) else raw
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return int(shape[0]) if len(shape) else 1


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_one_shot(batches: Any) -> bool:
    """True for iterators (generators): they cannot be iterated a second time."""
    return isinstance(batches, collections.abc.Iterator)


@dataclass
class _Failure:
    exception: BaseException
    callback: str
    batch_index: int | None
    noted: bool = False

    def where(self) -> str:
        at = f" for batch {self.batch_index}" if self.batch_index is not None else ""
        return f"{self.callback}(){at}"


# ---------------------------------------------------------------------------------------------------------------------
# The calibrator logic, without TensorRT


class CalibratorCore:
    """Everything a TensorRT calibrator does, with no TensorRT base class: batches, validation, device buffers,
    the cache, failure capture and the cross-check. The TensorRT classes delegate to one of these; dry runs and
    tests drive it directly.

    Args:
        batches: an iterable of ``{input_name: array}`` dicts, of bare arrays (single-input networks), or a
            `trt_calib.data.BatchSource`. Arrays may be numpy arrays or CUDA tensors (torch, CuPy: zero-copy).
        cache_file: calibration cache to read (if it exists and matches this algorithm) and to write.
        device: device backend name (``auto``, ``pycuda``, ``cuda-python``, ``cupy``, ``torch``, ``host``) or
            a `DeviceBuffers`; created at the first batch.
        algorithm: ``entropy2``, ``minmax``, ``entropy`` or ``legacy``.
        input_specs: the network inputs (`trt_calib.data.InputSpec`); their dtype is accepted besides float32
            and their static dims are checked.
        cross_check: an ONNX model (path or ModelProto): keep host copies of the batches and, when TensorRT writes
            its cache, recompute it on the CPU and compare (`cross_check_result`). Costs host memory.
        max_batches: stop after this many batches.
        min_batches: refuse to write a cache computed from fewer batches.
        cache_mismatch: ``error`` (default) refuses a cache written by another algorithm; ``recalibrate`` logs a
            warning, lets TensorRT recalibrate and overwrites the file.
    """

    def __init__(
        self,
        batches: Any,
        cache_file: str | os.PathLike | None = None,
        device: str | DeviceBuffers = "auto",
        *,
        algorithm: str = "entropy2",
        input_specs: Sequence[Any] | None = None,
        cross_check: Any = None,
        max_batches: int | None = None,
        min_batches: int = 1,
        cache_mismatch: str = "error",
        device_index: int = 0,
        quantile: float = 0.9999,
        regression_cutoff: float = 1.0,
        trt_version: str | None = None,
    ) -> None:
        self.algorithm = _algorithm(algorithm)
        if batches is None or isinstance(batches, (str, bytes, os.PathLike)):
            raise DataError(
                f"batches must be an iterable of {{input_name: array}} dicts or arrays, got {batches!r}. "
                "Hint: trt_calib.data.open_source(path, inputs, batch_size=...) reads files and folders"
            )
        if isinstance(batches, Mapping) or isinstance(batches, np.ndarray):
            raise DataError(
                f"batches must be an iterable of batches, got one {type(batches).__name__}. Hint: pass [batch]"
            )
        if not isinstance(batches, collections.abc.Iterable):
            raise DataError(f"batches: {type(batches).__name__} is not iterable")
        if cache_mismatch not in _CACHE_MISMATCH:
            raise CalibrationError(f"cache_mismatch must be one of {_CACHE_MISMATCH}, got {cache_mismatch!r}")
        if max_batches is not None and max_batches < 1:
            raise CalibrationError(f"max_batches must be >= 1, got {max_batches}")
        if min_batches < 0:
            raise CalibrationError(f"min_batches must be >= 0, got {min_batches}")
        if not isinstance(device, (str, DeviceBuffers)):
            raise CalibrationError(f"device must be a backend name or a DeviceBuffers, got {type(device).__name__}")
        self._source = batches
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._device_request: str | DeviceBuffers = device
        self.device_index = device_index
        self.input_specs = {s.name: s for s in input_specs} if input_specs else {}
        self.max_batches = max_batches
        self.min_batches = min_batches
        self.cache_mismatch = cache_mismatch
        self.quantile = float(quantile)
        self.regression_cutoff = float(regression_cutoff)
        self.trt_version = trt_version
        self.cross_check = self._check_cross_check(cross_check)
        self.cross_check_result: Any = None
        self._buffers: DeviceBuffers | None = None
        self._start()
        self._cache_bytes: bytes | None = None
        self.cache_used = False

    def _check_cross_check(self, model: Any) -> Any:
        if model is None or model is False:
            return None
        if model is True:
            raise CalibrationError(
                "cross_check needs the ONNX model the engine is built from: pass cross_check='model.onnx'"
            )
        from ..core.thresholds import ALGORITHMS as CPU_ALGORITHMS

        if self.algorithm.key not in CPU_ALGORITHMS:
            raise CalibrationError(
                f"cross_check is not available for {self.algorithm.class_name}: trt-calib reimplements "
                f"{', '.join(k for k in ALGORITHMS if k in CPU_ALGORITHMS)} on the CPU, not {self.algorithm.header}."
            )
        if isinstance(model, (str, os.PathLike)) and not Path(model).is_file():
            raise CalibrationError(f"cross_check model {model}: no such file")
        return model

    def _start(self) -> None:
        """(Re)set the per-calibration state."""
        self._iterator: Iterator[Any] | None = None
        self._raw_pending: list[Any] = []
        self._peeked: tuple[tuple[str, ...], dict[str, Any]] | None = None
        self._first_shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._batch_size: int | None = None
        self._names: tuple[str, ...] | None = None
        self._failure: _Failure | None = None
        self._exhausted = False
        self._kept: list[dict[str, np.ndarray]] = []
        self.batches_fed = 0
        self.seconds_per_batch: list[float] = []

    # ------------------------------------------------------------------------------------------ state
    @property
    def failed(self) -> bool:
        """True once a callback failed; calibration has ended."""
        return self._failure is not None

    @property
    def failure(self) -> BaseException | None:
        """The first exception raised inside a callback, or None."""
        return None if self._failure is None else self._failure.exception

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each input in the first batch (every batch must match)."""
        return dict(self._first_shapes)

    @property
    def names(self) -> tuple[str, ...] | None:
        """Input names in the order TensorRT asked for them, once it has."""
        return self._names

    @property
    def backend(self) -> DeviceBuffers | None:
        """The device backend in use (None before the first batch)."""
        return self._buffers

    def raise_if_failed(self) -> None:
        """Re-raise the first exception raised inside a callback (with a note naming callback and batch)."""
        failure = self._failure
        if failure is None:
            return
        exc = failure.exception
        if not failure.noted and hasattr(exc, "add_note"):
            exc.add_note(
                f"trt-calib: raised inside TensorRT's {failure.where()} callback; calibration ended there and "
                "no calibration cache was written."
            )
            failure.noted = True
        raise exc

    def _record_failure(self, exc: BaseException, callback: str, batch_index: int | None) -> None:
        self._exhausted = True
        if self._failure is not None:
            logger.debug("after the first failure, %s() also raised %s: %s", callback, type(exc).__name__, exc)
            return
        self._failure = _Failure(exc, callback, batch_index)
        logger.error(
            "calibration failed in %s: %s: %s. Calibration ends here and no cache will be written; TensorRT may "
            "still finish the build from partial data, so call raise_if_failed() after it.",
            self._failure.where(), type(exc).__name__, exc,
        )

    # ------------------------------------------------------------------------------------------ batches
    def _pull(self) -> Any:
        """The next raw batch from the source, or None at the end."""
        if self._raw_pending:
            return self._raw_pending.pop(0)
        if self._exhausted:
            return None
        if self._iterator is None:
            self._iterator = iter(self._source)
        try:
            return next(self._iterator)
        except StopIteration:
            return None

    def _peek_raw(self) -> Any:
        if self._peeked is not None:
            return self._peeked[1]
        if not self._raw_pending:
            raw = self._pull()
            if raw is None:
                return None
            self._raw_pending.append(raw)
        return self._raw_pending[0]

    def input_names(self) -> tuple[str, ...] | None:
        """Input names known without TensorRT: TensorRT's order once seen, else the specs, else the first batch."""
        if self._names is not None:
            return self._names
        if self.input_specs:
            return tuple(self.input_specs)
        raw = self._peek_raw()
        if isinstance(raw, Mapping):
            return tuple(str(k) for k in raw)
        return None

    def _as_dict(self, raw: Any, names: Sequence[str], index: int) -> dict[str, Any]:
        if isinstance(raw, Mapping):
            return dict(raw)
        if isinstance(raw, (str, bytes)) or raw is None:
            raise DataError(f"batch {index}: expected a dict {{input_name: array}} or an array, got {raw!r}")
        if isinstance(raw, (list, tuple)):
            raise DataError(
                f"batch {index} is a {type(raw).__name__}; the network's inputs are {list(names)}. "
                "Hint: yield a dict {input_name: array} (or a bare array for a single-input network)"
            )
        if len(names) != 1:
            raise DataError(
                f"batch {index} is a single array but the network has {len(names)} inputs {list(names)}. "
                "Hint: yield dicts {input_name: array}"
            )
        return {names[0]: raw}

    def _validate(self, raw: Any, names: Sequence[str], index: int) -> dict[str, Any]:
        """Check one batch against TensorRT's input names and the first batch; errors name input and batch."""
        batch = self._as_dict(raw, names, index)
        keys = [str(k) for k in batch]
        if set(keys) != set(names) or len(keys) != len(names):
            missing = [n for n in names if n not in batch]
            extra = [k for k in keys if k not in names]
            raise DataError(
                f"batch {index} has inputs {keys} but the network's inputs are {list(names)} "
                f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}). "
                "Hint: key each batch by the ONNX input names"
            )
        out: dict[str, Any] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            value = batch[name]
            if not isinstance(value, np.ndarray) and not _torch_like(value) and not is_device_array(value):
                try:
                    value = np.asarray(value)
                except (TypeError, ValueError) as exc:
                    raise DataError(f"batch {index}: input {name!r} cannot be read as an array ({exc})") from None
            shape, dtype, contiguous = _describe(value)
            spec = self.input_specs.get(name)
            allowed = [np.dtype(np.float32)] + ([np.dtype(spec.dtype)] if spec is not None else [])
            if dtype not in allowed:
                want = " or ".join(sorted({str(d) for d in allowed}))
                raise DataError(
                    f"batch {index}: input {name!r} has dtype {dtype}, but TensorRT reads {want} for it. "
                    f"Hint: convert the data (e.g. x.astype(np.{allowed[-1]}))"
                )
            if not contiguous:
                raise DataError(
                    f"batch {index}: input {name!r} is not C-contiguous; TensorRT reads the bytes in order. "
                    "Hint: np.ascontiguousarray(x) (or .contiguous() for torch)"
                )
            first = self._first_shapes.get(name)
            if first is not None and shape != first:
                raise DataError(
                    f"batch {index}: input {name!r} has shape {_shape_text(shape)} but batch 0 had "
                    f"{_shape_text(first)}. TensorRT calibrates at one shape and would read a smaller batch past "
                    "its end. Hint: drop or pad the last batch (last_batch='drop' or 'pad')"
                )
            if first is None and spec is not None:
                self._check_spec_shape(spec, shape, index)
            nan, inf = _count_non_finite(value)
            if nan or inf:
                raise DataError(
                    f"batch {index}: input {name!r} contains {nan} NaN and {inf} infinite value(s); calibration "
                    "data must be finite. Hint: check the data and its preprocessing"
                )
            out[name] = value
            shapes[name] = shape
            self.dtypes.setdefault(name, dtype)
        for name, shape in shapes.items():
            self._first_shapes.setdefault(name, shape)
        return out

    @staticmethod
    def _check_spec_shape(spec: Any, shape: tuple[int, ...], index: int) -> None:
        dims = tuple(spec.shape)
        if len(dims) != len(shape):
            raise DataError(
                f"batch {index}: input {spec.name!r} has shape {_shape_text(shape)} (rank {len(shape)}) but the "
                f"network declares rank {len(dims)} {_shape_text(['?' if not isinstance(d, int) or d <= 0 else d for d in dims])}"
            )
        for axis, (want, got) in enumerate(zip(dims, shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise DataError(
                    f"batch {index}: input {spec.name!r} has shape {_shape_text(shape)} but the network fixes dim "
                    f"{axis} to {want}"
                )

    def peek(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The next batch, validated, without consuming it (preflight checks before a long build).

        Raises the validation error directly (nothing is recorded as a calibration failure).
        """
        names = tuple(names) if names is not None else self.input_names()
        if names is None:
            raise DataError("peek: the input names are unknown (bare-array batches). Hint: pass names=[...]")
        if self._peeked is not None and self._peeked[0] == names:
            return dict(self._peeked[1])
        index = self.batches_fed
        raw = self._peeked[1] if self._peeked is not None else self._pull()
        self._peeked = None
        if raw is None:
            if index == 0:
                raise DataError("the calibration data produced no batches")
            raise DataError(f"the calibration data ended after {index} batches; there is no next batch to peek")
        try:
            batch = self._validate(raw, names, index)
        except BaseException:
            self._raw_pending.insert(0, raw)
            raise
        self._peeked = (names, batch)
        return dict(batch)

    def _next_batch(self, names: tuple[str, ...], index: int) -> dict[str, Any] | None:
        if self._peeked is not None:
            peeked_names, batch = self._peeked
            self._peeked = None
            if peeked_names == names:
                return batch
            return self._validate(batch, names, index)
        raw = self._pull()
        if raw is None:
            return None
        return self._validate(raw, names, index)

    def _device(self) -> DeviceBuffers:
        if self._buffers is None:
            request = self._device_request
            if isinstance(request, DeviceBuffers):
                self._buffers = request
            else:
                self._buffers = select_backend(request, device_index=self.device_index)
            if self._buffers.name == "host" and self.trt_version is not None:
                logger.warning(
                    "the host device backend hands host pointers to TensorRT, which reads device memory; "
                    "it is meant for dry runs and stand-ins"
                )
        return self._buffers

    # ------------------------------------------------------------------------------------------ TensorRT callbacks
    def get_batch_size(self) -> int:
        """The batch size of the first batch (TensorRT <= 8 uses it; for explicit-batch networks it is informational)."""
        try:
            if self._batch_size is None:
                raw = self._peek_raw()
                if raw is None:
                    return 1  # get_batch reports the empty source
                self._batch_size = _leading_dim(raw)
            return self._batch_size
        except BaseException as exc:
            self._record_failure(exc, "get_batch_size", self.batches_fed)
            return 1

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Exactly one device pointer per name, in the order of `names`; None when the data ends or after a failure."""
        if self._exhausted:
            return None
        index = self.batches_fed
        try:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
            if self._names is None:
                self._names = names
            if self.max_batches is not None and index >= self.max_batches:
                self._exhausted = True
                logger.info("calibration stops at max_batches=%d", self.max_batches)
                return None
            start = time.perf_counter()
            batch = self._next_batch(names, index)
            if batch is None:
                self._exhausted = True
                if index == 0:
                    raise DataError(
                        "the calibration data produced no batches; TensorRT would calibrate on nothing. "
                        "Hint: check the data path, or that a generator was not already consumed"
                    )
                logger.info("calibration data ended after %d batch(es)", index)
                return None
            buffers = self._device()
            pointers = [int(buffers.upload(name, batch[name])) for name in names]
            if self.cross_check is not None:
                self._kept.append({name: _host_copy(batch[name]) for name in names})
            self.batches_fed += 1
            self.seconds_per_batch.append(time.perf_counter() - start)
            logger.debug("calibration batch %d: %s", index, {n: _shape_text(self._first_shapes[n]) for n in names})
            return pointers
        except BaseException as exc:  # KeyboardInterrupt too: the bindings would swallow it
            self._record_failure(exc, "get_batch", index)
            return None

    def read_calibration_cache(self) -> bytes | None:
        """The cache bytes if `cache_file` holds a cache for this algorithm, else None (TensorRT then calibrates)."""
        try:
            if self._cache_bytes is not None:
                return self._cache_bytes
            if self.cache_file is None:
                return None
            path = self.cache_file
            if not path.exists():
                logger.info("no calibration cache at %s yet: TensorRT will calibrate", path)
                return None
            data = path.read_bytes()
            if not data:
                logger.warning("calibration cache %s is empty; ignoring it, TensorRT will calibrate", path)
                return None
            from ..core.cache import CalibrationCache
            from ..errors import CacheFormatError

            try:
                cache = CalibrationCache.parse(data, source=path)
            except CacheFormatError as exc:
                if self.cache_mismatch != "recalibrate":
                    raise
                logger.warning("%s; TensorRT would reject it: recalibrating, the file will be overwritten", exc)
                return None
            if cache.algorithm != self.algorithm.header:
                match = next((a.class_name for a in ALGORITHMS.values() if a.header == cache.algorithm), None)
                message = (
                    f"calibration cache {path} was written by {cache.algorithm or 'an unknown calibrator'} "
                    f"(header {cache.header!r}) but this is a {self.algorithm.class_name} "
                    f"({self.algorithm.header}): TensorRT would reject it and recalibrate"
                )
                if self.cache_mismatch == "recalibrate":
                    logger.warning("%s; recalibrating, the file will be overwritten", message)
                    return None
                hint = f"use {match}, " if match else ""
                raise CalibrationError(
                    f"{message}. Hint: {hint}delete the file, or pass cache_mismatch='recalibrate' to overwrite it"
                )
            self._warn_version(cache, path)
            logger.info(
                "using calibration cache %s (%s, TensorRT %s, %d tensors): TensorRT will not ask for batches",
                path, cache.algorithm, cache.trt_version, len(cache),
            )
            self._cache_bytes = data
            self.cache_used = True
            return data
        except BaseException as exc:
            self._record_failure(exc, "read_calibration_cache", None)
            return None

    def _warn_version(self, cache: Any, path: Path) -> None:
        if self.trt_version is None or cache.version_number is None:
            return
        from ..core.cache import encode_version

        try:
            running = encode_version(self.trt_version.split("+")[0].split("post")[0])
        except ValueError:
            return
        if running != cache.version_number:
            logger.warning(
                "calibration cache %s was written by TensorRT %s, this is TensorRT %s: TensorRT may ignore it "
                "and recalibrate", path, cache.trt_version, self.trt_version,
            )

    def write_calibration_cache(self, cache: Any) -> None:
        """Copy TensorRT's cache (a memoryview of its memory) and write it atomically, never after a failure."""
        try:
            data = bytes(cache)  # the memoryview dies with the callback
            if self._failure is not None:
                logger.error(
                    "not writing the calibration cache TensorRT produced: calibration failed in %s, so it comes "
                    "from partial data", self._failure.where(),
                )
                return None
            if self.cache_used and data == self._cache_bytes:
                return None
            if self.batches_fed < self.min_batches:
                raise CalibrationError(
                    f"TensorRT produced a calibration cache from {self.batches_fed} batch(es), fewer than "
                    f"min_batches={self.min_batches}; not writing it. Hint: provide more calibration data"
                )
            if self.cache_file is not None:
                atomic_write(self.cache_file, data)
                logger.info("wrote calibration cache %s (%d bytes, %d batches)", self.cache_file, len(data),
                            self.batches_fed)
            self._cache_bytes = data
            if self.cross_check is not None:
                self._run_cross_check(data)
        except BaseException as exc:
            self._record_failure(exc, "write_calibration_cache", None)
        return None

    def _run_cross_check(self, data: bytes) -> None:
        """Recompute the calibration on the CPU from the batches TensorRT saw and compare per tensor."""
        if not self._kept:
            logger.info("cross-check skipped: no batches were fed (the cache came from a file)")
            return
        from ..core.cache import CalibrationCache
        from ..ort.collect import calibrate
        from ..core.compare import compare

        reference = CalibrationCache.parse(data, source="TensorRT's calibration cache")
        ours = calibrate(self.cross_check, self._kept, algorithm=self.algorithm.key, trt_version=reference.trt_version)
        self.cross_check_result = compare(reference, ours)
        level = logging.INFO if getattr(self.cross_check_result, "consistent", False) else logging.WARNING
        logger.log(level, "cross-check against the CPU calibration (%d batches):\n%s", len(self._kept),
                   self.cross_check_result.summary())
        self._kept = []

    # ------------------------------------------------------------------------------------------ lifetime
    def reset(self) -> None:
        """Start the batches again (for another build). One-shot iterators cannot be restarted: DataError."""
        if _is_one_shot(self._source) and (self._iterator is not None or self._raw_pending or self._peeked):
            raise DataError(
                "the calibration batches are a one-shot iterator (a generator) and were consumed. "
                "Hint: pass a list or a trt_calib.data source to calibrate more than once"
            )
        self._start()

    @property
    def restartable(self) -> bool:
        """True if `reset()` can start the batches again."""
        return not _is_one_shot(self._source) or (
            self._iterator is None and not self._raw_pending and self._peeked is None
        )

    def free(self) -> None:
        """Release the device buffers (the calibrator can create new ones if used again)."""
        if self._buffers is not None:
            buffers, self._buffers = self._buffers, None
            buffers.free()

    @contextlib.contextmanager
    def _using_device(self, buffers: DeviceBuffers) -> Iterator[None]:
        saved = self._buffers, self._device_request
        self._buffers, self._device_request = buffers, buffers
        try:
            yield
        finally:
            self._buffers, self._device_request = saved

    def __enter__(self) -> "CalibratorCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        state = "failed" if self.failed else ("done" if self._exhausted else "ready")
        return f"<CalibratorCore {self.algorithm.class_name} batches={self.batches_fed} {state}>"


# ---------------------------------------------------------------------------------------------------------------------
# The TensorRT classes: thin adapters created when tensorrt imports

_CLASSES: dict[tuple[Any, str], type] = {}


def _adapter_namespace(algo: Algorithm, base: type, trt_version: str | None) -> dict[str, Any]:
    def __init__(self: Any, batches: Any, cache_file: str | os.PathLike | None = None,
                 device: str | DeviceBuffers = "auto", **options: Any) -> None:
        with quiet_trt_deprecations():
            base.__init__(self)  # pybind's trampoline; without it TensorRT crashes
        options.setdefault("trt_version", trt_version)
        self._core = CalibratorCore(batches, cache_file, device, algorithm=algo.key, **options)

    def get_batch_size(self: Any) -> int:
        return self._core.get_batch_size()

    def get_batch(self: Any, names: Sequence[str], *_: Any) -> list[int] | None:
        return self._core.get_batch(names)

    def read_calibration_cache(self: Any, *_: Any) -> bytes | None:
        return self._core.read_calibration_cache()

    def write_calibration_cache(self: Any, cache: Any, *_: Any) -> None:
        return self._core.write_calibration_cache(cache)

    def __getattr__(self: Any, name: str) -> Any:
        core = self.__dict__.get("_core") if name != "__dict__" else None
        if core is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(core, name)

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self: Any, *exc: object) -> None:
        self._core.free()

    def __repr__(self: Any) -> str:
        core = self.__dict__.get("_core")
        return f"<{algo.class_name} ({algo.base}) {core!r}>"

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__module__": __name__,
        "__qualname__": algo.class_name,
        "__doc__": f"TensorRT {algo.base} that fails loudly; see `CalibratorCore` for the arguments.",
        "algorithm": algo,
        "get_batch_size": get_batch_size,
        "get_batch": get_batch,
        "read_calibration_cache": read_calibration_cache,
        "write_calibration_cache": write_calibration_cache,
        "__getattr__": __getattr__,
        "__enter__": __enter__,
        "__exit__": __exit__,
        "__repr__": __repr__,
    }
    if algo.key == "legacy":

        def get_quantile(self: Any) -> float:
            return self._core.quantile

        def get_regression_cutoff(self: Any) -> float:
            return self._core.regression_cutoff

        def read_histogram_cache(self: Any, *_: Any) -> None:
            return None  # no histogram cache: TensorRT computes histograms from the batches

        def write_histogram_cache(self: Any, *_: Any) -> None:
            return None

        namespace.update(
            get_quantile=get_quantile,
            get_regression_cutoff=get_regression_cutoff,
            read_histogram_cache=read_histogram_cache,
            write_histogram_cache=write_histogram_cache,
        )
    return namespace


def calibrator_class(algorithm: str = "entropy2") -> type:
    """The TensorRT calibrator class for `algorithm` (``entropy2``, ``minmax``, ``entropy``, ``legacy`` or a class
    name such as ``EntropyCalibrator2``), created on first use from the installed TensorRT."""
    algo = _algorithm(algorithm)
    trt = import_tensorrt(algo.class_name)
    base = getattr(trt, algo.base, None)
    if base is None:
        version = getattr(trt, "__version__", "?")
        raise MissingDependencyError(
            f"TensorRT {version} has no {algo.base}: TensorRT 11 removed calibrators (implicit quantization). "
            "Hint: run `trt-calib quantize` to write a Q/DQ ONNX model that TensorRT 11 builds without a "
            "calibrator, or use TensorRT 8.6-10.x for calibrators."
        )
    key = (base, algo.key)
    cls = _CLASSES.get(key)
    if cls is None:
        cls = type(algo.class_name, (base,), _adapter_namespace(algo, base, getattr(trt, "__version__", None)))
        _CLASSES[key] = cls
    return cls


def make_calibrator(batches: Any, algorithm: str = "entropy2", **options: Any) -> Any:
    """A TensorRT calibrator for `algorithm` fed by `batches` (options as for `CalibratorCore`)."""
    return calibrator_class(algorithm)(batches, **options)


def __getattr__(name: str) -> Any:
    if name in _BY_CLASS_NAME:
        return calibrator_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_BY_CLASS_NAME))


# ---------------------------------------------------------------------------------------------------------------------
# Dry run


@dataclass
class DryRunSummary:
    """What a dry run saw: batches produced, each input's shape and dtype, and the time per batch."""

    algorithm: str
    batches: int
    inputs: dict[str, tuple[tuple[int, ...], str]]
    batch_size: int
    seconds_per_batch: float
    total_seconds: float
    cache_file: str | None = None
    cache_would_be_used: bool = False
    reached_end: bool = True
    restarted: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"dry run ({self.algorithm}, host memory, no TensorRT): {self.batches} batch(es) of {self.batch_size}, "
            f"{self.seconds_per_batch * 1e3:.1f} ms per batch, {self.total_seconds:.2f} s in all"
        ]
        for name, (shape, dtype) in self.inputs.items():
            lines.append(f"  input {name!r}: {_shape_text(shape)} {dtype}")
        if self.cache_file is not None:
            state = "valid for this calibrator: TensorRT would use it and skip calibration" if self.cache_would_be_used \
                else "absent: TensorRT would calibrate"
            lines.append(f"  cache {self.cache_file}: {state}")
        if not self.reached_end:
            lines.append("  stopped at max_batches before the end of the data")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def dry_run(calibrator: Any, names: Sequence[str] | None = None, max_batches: int | None = None) -> DryRunSummary:
    """Drive `calibrator` as TensorRT's bindings would, on the CPU with host memory, and raise its first failure.

    Finds loader bugs (wrong names, shapes, dtypes, NaNs, an empty generator) before GPU time is spent. Writes no
    cache. Afterwards the calibrator is reset for the real build when its batches can be iterated again; a
    one-shot generator cannot, and the summary says so.
    """
    core: CalibratorCore = getattr(calibrator, "_core", calibrator)
    if not isinstance(core, CalibratorCore):
        raise TypeError(f"dry_run needs a trt-calib calibrator, got {type(calibrator).__name__}")
    if core.batches_fed or core.failed:
        raise CalibrationError("dry_run needs a fresh calibrator; this one has already fed TensorRT. Hint: reset()")
    if max_batches is not None and max_batches < 1:
        raise CalibrationError(f"max_batches must be >= 1, got {max_batches}")
    host = HostBuffers()
    notes: list[str] = []
    start = time.perf_counter()
    reached_end = True
    saved_cache = core._cache_bytes, core.cache_used
    with host, core._using_device(host):
        cache = core.read_calibration_cache()
        core._cache_bytes, core.cache_used = saved_cache  # a dry run leaves no cache loaded
        core.raise_if_failed()
        cache_used = cache is not None
        batch_size = core.get_batch_size()
        core.raise_if_failed()
        if names is None:
            names = core.input_names()
        if names is None:
            names = ("input",)
            notes.append("bare-array batches: the single input was called 'input'")
        names = tuple(names)
        while True:
            if max_batches is not None and core.batches_fed >= max_batches:
                reached_end = False
                break
            pointers = core.get_batch(list(names))
            if pointers is None:
                break
            if len(pointers) != len(names) or not all(type(p) is int and p > 0 for p in pointers):
                raise CalibrationError(f"get_batch returned {pointers!r} for names {list(names)} (contract broken)")
        core.raise_if_failed()
    seconds = list(core.seconds_per_batch)
    summary = DryRunSummary(
        algorithm=core.algorithm.class_name,
        batches=core.batches_fed,
        inputs={n: (core.shapes[n], str(core.dtypes[n])) for n in names if n in core.shapes},
        batch_size=batch_size,
        seconds_per_batch=float(np.mean(seconds)) if seconds else 0.0,
        total_seconds=time.perf_counter() - start,
        cache_file=None if core.cache_file is None else str(core.cache_file),
        cache_would_be_used=cache_used,
        reached_end=reached_end,
        notes=notes,
    )
    if core.restartable:
        core.reset()
        summary.restarted = True
    else:
        summary.notes.append(
            "the batches come from a one-shot generator and were consumed: create a new calibrator for the build"
        )
    return summary
