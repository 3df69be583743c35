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

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .._util import require
from ..errors import CalibrationError, DataError, MissingDependencyError
from .algorithms import ALGORITHMS, BY_CLASS_NAME, Algorithm
from .algorithms import algorithm as find_algorithm
from .batches import BatchFeed, leading_dim, shape_text
from .cache_file import CacheFile
from .crosscheck import CrossCheck
from .device import DeviceBuffers, HostBuffers, select_backend
from .failures import FailureRecord

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

#: The Legacy calibrator's quantile and regression cutoff when none is given: Polygraphy's defaults
#: (NVIDIA/TensorRT `tools/Polygraphy/polygraphy/backend/trt/calibrator.py`, `util.default(quantile, 0.5)`).
_LEGACY_DEFAULT = 0.5


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
# The calibrator logic, without TensorRT


class CalibratorCore:
    """Everything a TensorRT calibrator does, with no TensorRT base class. The TensorRT classes delegate to one of
    these; dry runs and tests drive it directly. Its parts: the batches (`BatchFeed`: pulling, peeking, validation),
    the device buffers (`trt.device`), the cache (`CacheFile`), the failure record (`FailureRecord`) and the
    cross-check (`CrossCheck`).

    Args:
        batches: an iterable of ``{input_name: array}`` dicts, of bare arrays (single-input networks), or a
            `trt_calib.ort.data.BatchSource`. Arrays may be numpy arrays or CUDA tensors (torch, CuPy: zero-copy).
        cache_file: calibration cache to read (if it exists and matches this algorithm) and to write.
        device: device backend name (``auto``, ``pycuda``, ``cuda-python``, ``cupy``, ``torch``, ``host``) or
            a `DeviceBuffers`; created at the first batch.
        algorithm: ``entropy2``, ``minmax``, ``entropy`` or ``legacy``.
        input_specs: the network inputs (`trt_calib.ort.data.InputSpec`): their dtypes decide what TensorRT reads
            (INT32, INT64 and BOOL inputs as they are, every other input as float32, so such batches are converted)
            and their static dims are checked.
        cross_check: an ONNX model (path or ModelProto): keep host copies of the batches and, when TensorRT writes
            its cache, recompute it on the CPU and compare (`cross_check_result`). Costs host memory.
        max_batches: stop after this many batches.
        min_batches: refuse to write a cache computed from fewer batches.
        cache_mismatch: ``error`` (default) refuses a cache written by another algorithm; ``recalibrate`` logs a
            warning, lets TensorRT recalibrate and overwrites the file.
        device_index: the CUDA device of the buffers; None (default) is the current device, the one TensorRT builds
            on.
        quantile, regression_cutoff: the Legacy calibrator's settings; None means 0.5 and 0.5, Polygraphy's defaults
            (NVIDIA/TensorRT `tools/Polygraphy/polygraphy/backend/trt/calibrator.py`).
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
        device_index: int | None = None,
        quantile: float | None = None,
        regression_cutoff: float | None = None,
        trt_version: str | None = None,
    ) -> None:
        self.algorithm = find_algorithm(algorithm)
        self.feed = BatchFeed(batches, input_specs)
        if max_batches is not None and max_batches < 1:
            raise CalibrationError(f"max_batches must be >= 1, got {max_batches}")
        if min_batches < 0:
            raise CalibrationError(f"min_batches must be >= 0, got {min_batches}")
        if not isinstance(device, (str, DeviceBuffers)):
            raise CalibrationError(f"device must be a backend name or a DeviceBuffers, got {type(device).__name__}")
        self.cache = CacheFile(cache_file, self.algorithm, mismatch=cache_mismatch, trt_version=trt_version)
        self._device_request: str | DeviceBuffers = device
        self.device_index = device_index
        self.max_batches = max_batches
        self.min_batches = min_batches
        self.quantile = _LEGACY_DEFAULT if quantile is None else float(quantile)
        self.regression_cutoff = _LEGACY_DEFAULT if regression_cutoff is None else float(regression_cutoff)
        self.trt_version = trt_version
        self._cross_check_model = None if cross_check is None or cross_check is False else cross_check
        self.crosscheck = None if self._cross_check_model is None else CrossCheck(self._cross_check_model, self.algorithm)
        self._buffers: DeviceBuffers | None = None
        self._start()

    def _start(self) -> None:
        """(Re)set the per-calibration state."""
        self.feed.restart()
        self.failures = FailureRecord()
        self.cache_written = False  # a cache was written (file or memory) during this calibration
        self._batch_size: int | None = None
        self.seconds_per_batch: list[float] = []
        if self.crosscheck is not None:
            self.crosscheck.kept, self.crosscheck.error = [], None

    # ------------------------------------------------------------------------------------------ state
    @property
    def cache_file(self) -> Path | None:
        """The cache path (None: the cache lives in memory only)."""
        return self.cache.path

    @property
    def cache_used(self) -> bool:
        """True when TensorRT was handed a cache instead of calibrating."""
        return self.cache.used

    @property
    def cache_mismatch(self) -> str:
        return self.cache.mismatch

    @property
    def cross_check(self) -> Any:
        """The ONNX model of the cross-check, or None."""
        return self._cross_check_model

    @property
    def cross_check_result(self) -> Any:
        """The per-tensor comparison with the CPU calibration, once TensorRT wrote its cache (else None)."""
        return None if self.crosscheck is None else self.crosscheck.result

    @property
    def cross_check_error(self) -> BaseException | None:
        """The exception that stopped the cross-check (a cross-check problem, not a calibration failure), or None."""
        return None if self.crosscheck is None else self.crosscheck.error

    @property
    def batches_fed(self) -> int:
        """Batches handed to TensorRT so far."""
        return self.feed.fed

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        """The dtype of each input in the first batch."""
        return self.feed.dtypes

    @property
    def input_specs(self) -> dict[str, Any]:
        return self.feed.input_specs

    @property
    def failed(self) -> bool:
        """True once a callback failed; calibration has ended."""
        return self.failures.first is not None

    @property
    def failure(self) -> BaseException | None:
        """The first exception raised inside a callback, or None."""
        return None if self.failures.first is None else self.failures.first.exception

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each input in the first batch (every batch must match)."""
        return dict(self.feed.first_shapes)

    @property
    def names(self) -> tuple[str, ...] | None:
        """Input names in the order TensorRT asked for them, once it has."""
        return self.feed.names

    @property
    def backend(self) -> DeviceBuffers | None:
        """The device backend in use (None before the first batch)."""
        return self._buffers

    def raise_if_failed(self) -> None:
        """Re-raise the first exception raised inside a callback (with a note naming callback and batch)."""
        self.failures.raise_if_failed()

    def _record_failure(self, exc: BaseException, callback: str, batch_index: int | None) -> None:
        self.feed.exhausted = True
        self.failures.record(exc, callback, batch_index, cache_written=self.cache_written)

    def input_names(self) -> tuple[str, ...] | None:
        """Input names known without TensorRT: TensorRT's order once seen, else the specs, else the first batch."""
        return self.feed.input_names()

    def peek(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The next batch, validated, without consuming it (preflight checks before a long build).

        Raises the validation error directly (nothing is recorded as a calibration failure).
        """
        return self.feed.peek(names)

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
                raw = self.feed.peek_raw()
                if raw is None:
                    return 1  # get_batch reports the empty source
                self._batch_size = leading_dim(raw, self.feed.input_specs)
            return self._batch_size
        except BaseException as exc:
            self._record_failure(exc, "get_batch_size", self.batches_fed)
            return 1

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Exactly one device pointer per name, in the order of `names`; None when the data ends or after a failure."""
        feed = self.feed
        if feed.exhausted:
            return None
        index = feed.fed
        try:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
            if feed.names is None:
                feed.names = names
            if self.max_batches is not None and index >= self.max_batches:
                feed.exhausted = True
                logger.info("calibration stops at max_batches=%d", self.max_batches)
                return None
            start = time.perf_counter()
            batch = feed.next(names, index)
            if batch is None:
                feed.exhausted = True
                if index == 0:
                    raise DataError(
                        "the calibration data produced no batches; TensorRT would calibrate on nothing. "
                        "Hint: check the data path, or that a generator was not already consumed"
                    )
                logger.info("calibration data ended after %d batch(es)", index)
                return None
            buffers = self._device()
            pointers = [int(buffers.upload(name, batch[name])) for name in names]
            if self.crosscheck is not None:
                self.crosscheck.keep(batch, names)
            feed.fed += 1
            self.seconds_per_batch.append(time.perf_counter() - start)
            logger.debug("calibration batch %d: %s", index, {n: shape_text(feed.first_shapes[n]) for n in names})
            return pointers
        except BaseException as exc:  # KeyboardInterrupt too: the bindings would swallow it
            self._record_failure(exc, "get_batch", index)
            return None

    def read_calibration_cache(self) -> bytes | None:
        """The cache bytes if `cache_file` holds a cache for this algorithm, else None (TensorRT then calibrates)."""
        try:
            return self.cache.read()
        except BaseException as exc:
            self._record_failure(exc, "read_calibration_cache", None)
            return None

    def write_calibration_cache(self, cache: Any) -> None:
        """Copy TensorRT's cache (a memoryview of its memory) and write it atomically, never after a failure.

        TensorRT may write back a cache it has just read (TensorRT 5.1 did, pfnet-research/chainer-trt PR 14; NVIDIA
        documents neither way). That is no calibration: `min_batches` does not apply, nothing fails, and the file
        is rewritten (atomically) only when the bytes differ from those read.
        """
        try:
            data = bytes(cache)  # the memoryview dies with the callback
            first = self.failures.first
            if first is not None:
                logger.error(
                    "not writing the calibration cache TensorRT produced: calibration failed in %s, so it comes "
                    "from partial data", first.where(),
                )
                return None
            if self.cache.used and self.batches_fed == 0:  # a cache written back, not a calibration
                if data != self.cache.data:
                    logger.info("TensorRT wrote back the calibration cache it read, changed (%d bytes)", len(data))
                    self.cache.write(data, 0)
                    self.cache_written = True
                return None
            if self.batches_fed < self.min_batches:
                raise CalibrationError(
                    f"TensorRT produced a calibration cache from {self.batches_fed} batch(es), fewer than "
                    f"min_batches={self.min_batches}; not writing it. Hint: provide more calibration data"
                )
            self.cache.write(data, self.batches_fed)
            self.cache_written = True
        except BaseException as exc:
            self._record_failure(exc, "write_calibration_cache", None)
            return None
        if self.crosscheck is not None:
            self.crosscheck.run_safely(data)
        return None

    # ------------------------------------------------------------------------------------------ lifetime
    def reset(self) -> None:
        """Start the batches again (for another build). One-shot iterators cannot be restarted: DataError."""
        self.feed.reset()
        self._start()

    @property
    def restartable(self) -> bool:
        """True if `reset()` can start the batches again."""
        return self.feed.restartable

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
        state = "failed" if self.failed else ("done" if self.feed.exhausted else "ready")
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
    algo = find_algorithm(algorithm)
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
    if name in BY_CLASS_NAME:
        return calibrator_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(BY_CLASS_NAME))


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
            lines.append(f"  input {name!r}: {shape_text(shape)} {dtype}")
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
    saved_cache = core.cache.data, core.cache.used
    with host, core._using_device(host):
        cache = core.read_calibration_cache()
        core.cache.data, core.cache.used = saved_cache  # a dry run leaves no cache loaded
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
