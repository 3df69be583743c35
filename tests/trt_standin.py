"""Stand-in; not TensorRT; results are never TensorRT results.

A CPU stand-in for the parts of TensorRT's Python bindings (8.6, 10.x, and 11.x where calibrators are gone) that
trt-calib talks to, and for the GPU behind them, so the calibrator contract and the build call sequence can be tested
where neither TensorRT nor a GPU exists. It aims to be as strict as TensorRT: where TensorRT would read the wrong
bytes, crash or refuse, the stand-in raises `StandInUndefinedBehaviour` or refuses the same way. What it mirrors,
and from where (NVIDIA/TensorRT unless another repository is named; /work/notes/trt_facts.md has the quotes):

- the calibrator trampolines (`python/src/infer/pyInt8.cpp`): the base `__init__` must be called; the cache is
  read first (a non-empty buffer is used and no batch is asked for); `get_batch` results are cast like
  `std::vector<size_t>` and `len(names)` pointers are memcpy'd without a length check (a shorter list is undefined
  behaviour here); exceptions are printed as "[ERROR] Exception caught in get_batch(): ..." and end the data; the
  cache is handed over as a memoryview of memory released after the call;
- device memory: `FakeGpu` hands out allocations at addresses no host object can have, records each one's size
  and device, and bounds-checks every read. A pointer that is not one of its allocations (a host pointer) is
  refused, except in a dry run (`drive(..., memory="host")`). TensorRT reads the buffers on the device it builds
  on, the *current* CUDA device. The GPU is reached through a fake cuda-python runtime (`cudaMalloc`, ...), so
  trt-calib's own cuda-python backend runs unchanged against it;
- calibration input types: TensorRT reads INT32, INT64 and BOOL inputs in their own type and every other input
  as float32 (Polygraphy `backend/trt/calibrator.py`, "TensorRT requires non-index calibration inputs to be
  provided in float32"; trtexec's calibrator allocates `elemCount * sizeof(float)`, `samples/common/sampleEngines.cpp`);
- calibration cache: after reading a cache the stand-in writes one back (TensorRT 5.1 was seen doing so,
  pfnet-research/chainer-trt PR 14; what TensorRT writes then is not documented: the stand-in writes the cache it
  read under its own version header);
- plugins: ops outside the default ONNX domain and NVIDIA's `*_TRT` ops are looked up in the plugin registry; on
  10.x and 11.x the registry is empty until `init_libnvinfer_plugins(logger, "")` (the ONNX parser registered the
  plugins itself only up to 9.x: onnx/onnx-tensorrt `ModelImporter.cpp`); the error is onnx-tensorrt's
  `creator && "Plugin not found, are the plugin name, version, and namespace correct?"`;
- the parser's own failures that TensorRT only logs (`num_errors == 0`): "Failed to parse ONNX model from file",
  "Parse was called with a non-empty network definition" (onnx-tensorrt `ModelImporter.cpp`); on 8.x a network
  without EXPLICIT_BATCH is refused by the parser;
- builds: dynamic inputs need an optimization profile ("Network has dynamic or shape inputs, but no optimization
  profile has been defined."), and calibrating them needs a calibration profile (`NvInfer.h`
  setCalibrationProfile: "must be set if int8 calibration is used to set scales for a network with runtime
  dimensions"; the stand-in's error text is its own); calibration runs at the calibration profile's OPT shapes;
  manually set dynamic ranges override calibrated ones (`samples/sampleINT8API/README.md`: "manual dynamic range
  will override calibration generate dynamic range/scale"); a network with Q/DQ layers needs no calibration;
- flavours: 8.6 (EXPLICIT_BATCH needed, `build_engine` present), 10.x (EXPLICIT_BATCH ignored,
  DeprecationWarnings from 10.1 on the calibration APIs, `platform_has_fast_int8` deprecated from 10.5), 11.x (no
  calibrators, no INT8/FP16 flags, no dynamic ranges, no EXPLICIT_BATCH, no `platform_has_fast_int8`).

What the stand-in computes is not TensorRT's calibration: its cache holds its own plain calibration of the bytes it
read (of the model it parsed, in a build), written from the spec (/work/shared/spec/algorithm.md) and sharing no code
with trt-calib's (`_reference_amax`: its own model run, histogram, KL search, ties and cache writer), or the inputs'
max |x| when it has no model onnxruntime can run. So the calibrator's cross-check and doctor's "tensorrt cache vs
numpy" compare two computations, and a bug in trt-calib's algorithm (or in the stand-in's) makes them disagree. It
proves calls, bytes and refusals, nothing about TensorRT's numbers.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import struct
import sys
import threading
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "StandInUndefinedBehaviour",
    "DriveResult",
    "FakeGpu",
    "make_tensorrt",
    "make_cuda_runtime",
    "drive",
    "read_dtype",
    "DataType",
    "LayerType",
    "FakeTensor",
    "NoRangeTensor",
    "FakeLayer",
    "FakeConstantLayer",
    "NoPrecisionLayer",
    "FakeNetwork",
    "install",
    "state_of",
    "gpu_of",
    "tensor_names",
    "repo_root",
]

DEPRECATED_10_1 = "Use Deprecated in TensorRT 10.1. Superseded by explicit quantization. instead."
PLAN = b"STAND-IN PLAN: not a TensorRT engine\n"


class StandInUndefinedBehaviour(AssertionError):
    """What real TensorRT would turn into undefined behaviour: reading past a pointer list or a buffer, reading host
    memory as device memory, or memory of another device."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


# ---------------------------------------------------------------------------------------------------------------------
# Device memory


@dataclass
class _Allocation:
    address: int
    nbytes: int
    device: int
    data: bytearray
    freed: bool = False


class FakeGpu:
    """Device memory of stand-in GPUs: every allocation knows its size and device, and every read is checked.

    Addresses start in the kernel half of the 64-bit address space, which no host (user-space) pointer can hold, and
    allocations are spaced apart, so a read past an allocation's end never lands in another one.
    """

    BASE = 0xFFFF_A000_0000_0000
    GAP = 1 << 20

    def __init__(self, devices: int = 1, *, name: str = "Stand-in GPU (not a GPU)", driver: int = 12040,
                 compute_capability: tuple[int, int] = (9, 0)) -> None:
        self.devices = devices
        self.current = 0
        self.name = name
        self.driver = driver
        self.compute_capability = compute_capability
        self._next = self.BASE
        self.allocations: dict[int, _Allocation] = {}
        self.host_blocks: dict[int, Any] = {}  # pinned host memory (real host memory, kept alive here)
        self.log: list[tuple] = []

    def malloc(self, nbytes: int, device: int | None = None) -> int:
        device = self.current if device is None else device
        address = self._next
        self._next += ((max(nbytes, 1) + self.GAP - 1) // self.GAP + 1) * self.GAP
        self.allocations[address] = _Allocation(address, nbytes, device, bytearray(nbytes))
        self.log.append(("malloc", nbytes, device))
        return address

    def free(self, address: int) -> None:
        block = self.allocations.get(address)
        if block is None or block.freed:
            raise StandInUndefinedBehaviour(f"cudaFree({address:#x}): not a live allocation")
        block.freed = True
        self.log.append(("free", block.nbytes, block.device))

    def owner(self, address: int) -> _Allocation | None:
        """The allocation holding `address`, or None (a host pointer, or memory never allocated)."""
        for block in self.allocations.values():
            if block.address <= address < block.address + max(block.nbytes, 1):
                return block
        return None

    def _check(self, address: int, nbytes: int, what: str, device: int | None) -> tuple[_Allocation, int]:
        if address == 0:
            raise StandInUndefinedBehaviour(f"{what}: nullptr")
        block = self.owner(address)
        if block is None:
            raise StandInUndefinedBehaviour(
                f"{what}: {address:#x} is not device memory of the stand-in GPU (a host pointer?); TensorRT would "
                "read it as a device address"
            )
        if block.freed:
            raise StandInUndefinedBehaviour(f"{what}: {address:#x} was freed")
        offset = address - block.address
        if offset + nbytes > block.nbytes:
            raise StandInUndefinedBehaviour(
                f"{what}: reads {nbytes} bytes at offset {offset} of a {block.nbytes}-byte allocation "
                f"({offset + nbytes - block.nbytes} bytes past its end)"
            )
        if device is not None and block.device != device:
            raise StandInUndefinedBehaviour(
                f"{what}: {address:#x} is memory of device {block.device}, but TensorRT runs on device {device} "
                "(the current device)"
            )
        return block, offset

    def read(self, address: int, nbytes: int, *, what: str = "read", device: int | None = None) -> bytes:
        block, offset = self._check(address, nbytes, what, device)
        return bytes(block.data[offset: offset + nbytes])

    def write(self, address: int, data: bytes, *, what: str = "write") -> None:
        block, offset = self._check(address, len(data), what, None)
        block.data[offset: offset + len(data)] = data

    def host_alloc(self, nbytes: int) -> int:
        buffer = ctypes.create_string_buffer(max(nbytes, 1))
        address = ctypes.addressof(buffer)
        self.host_blocks[address] = buffer
        return address

    def host_free(self, address: int) -> None:
        if self.host_blocks.pop(address, None) is None:
            raise StandInUndefinedBehaviour(f"cudaFreeHost({address:#x}): not pinned host memory")

    def live(self, device: int | None = None) -> list[_Allocation]:
        return [b for b in self.allocations.values() if not b.freed and (device is None or b.device == device)]


def make_cuda_runtime(gpu: FakeGpu, name: str = "cuda.bindings.runtime") -> types.ModuleType:
    """A fake cuda-python runtime module over `gpu`: every call returns `(cudaError_t, *values)` like cuda-python."""
    rt = types.ModuleType(name, "Stand-in cuda-python runtime over a FakeGpu; not CUDA.")

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    ok = cudaError_t.cudaSuccess

    class _Props:
        def __init__(self) -> None:
            self.name = gpu.name.encode()
            self.major, self.minor = gpu.compute_capability

    def get_device_count():
        return ok, gpu.devices

    def get_device():
        return ok, gpu.current

    def set_device(index):
        if not 0 <= int(index) < gpu.devices:
            return (cudaError_t.cudaErrorInvalidDevice,)
        gpu.current = int(index)
        return (ok,)

    def malloc(nbytes):
        return ok, gpu.malloc(int(nbytes))

    def free(address):
        gpu.free(int(address))
        return (ok,)

    def malloc_host(nbytes):
        return ok, gpu.host_alloc(int(nbytes))

    def free_host(address):
        gpu.host_free(int(address))
        return (ok,)

    def memcpy(dst, src, nbytes, kind, stream=None):
        dst, src, nbytes = int(dst), int(src), int(nbytes)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            gpu.write(dst, ctypes.string_at(src, nbytes), what="cudaMemcpy host to device")
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            ctypes.memmove(dst, gpu.read(src, nbytes, what="cudaMemcpy device to host"), nbytes)
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    functions = {
        "cudaGetDeviceCount": get_device_count,
        "cudaGetDevice": get_device,
        "cudaSetDevice": set_device,
        "cudaMalloc": malloc,
        "cudaFree": free,
        "cudaMallocHost": malloc_host,
        "cudaFreeHost": free_host,
        "cudaMemcpy": memcpy,
        "cudaMemcpyAsync": memcpy,
        "cudaStreamCreate": lambda: (ok, object()),
        "cudaStreamSynchronize": lambda stream: (ok,),
        "cudaStreamDestroy": lambda stream: (ok,),
        "cudaDeviceSynchronize": lambda: (ok,),
        "cudaDriverGetVersion": lambda: (ok, gpu.driver),
        "cudaRuntimeGetVersion": lambda: (ok, gpu.driver),
        "cudaGetDeviceProperties": lambda index: (ok, _Props()),
        "cudaGetErrorString": lambda err: (ok, f"stand-in error {int(err)}".encode()),
    }
    for key, value in functions.items():
        setattr(rt, key, value)
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt._standin_gpu = gpu
    return rt


# ---------------------------------------------------------------------------------------------------------------------
# pybind11-like classes


class _PybindMeta(type):
    """pybind11's metaclass check: a Python subclass must call the bound base `__init__`."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = cls.__new__(cls)
        obj.__init__(*args, **kwargs)
        if not getattr(obj, "_standin_base_initialised", False):
            base = next(b for b in cls.__mro__ if b.__dict__.get("_standin_bound"))
            raise TypeError(f"tensorrt.tensorrt.{base.__name__}.__init__() must be called when overriding __init__")
        return obj


class _Bound(metaclass=_PybindMeta):
    _standin_bound = True

    def __init__(self) -> None:
        self._standin_base_initialised = True


class CalibrationAlgoType(enum.IntEnum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


_HEADER_OF_ALGO = {
    CalibrationAlgoType.LEGACY_CALIBRATION: "LegacyCalibration",  # a guess: TensorRT's Legacy header is unknown
    CalibrationAlgoType.ENTROPY_CALIBRATION: "EntropyCalibration",
    CalibrationAlgoType.ENTROPY_CALIBRATION_2: "EntropyCalibration2",
    CalibrationAlgoType.MINMAX_CALIBRATION: "MinMaxCalibration",
}
_KEY_OF_ALGO = {
    CalibrationAlgoType.LEGACY_CALIBRATION: "legacy",
    CalibrationAlgoType.ENTROPY_CALIBRATION: "entropy",
    CalibrationAlgoType.ENTROPY_CALIBRATION_2: "entropy2",
    CalibrationAlgoType.MINMAX_CALIBRATION: "minmax",
}


def _pure_virtual(cls_name: str, method: str) -> Any:
    def call(self: Any, *args: Any) -> Any:
        raise RuntimeError(f'Tried to call pure virtual function "{cls_name}::{method}"')

    return call


def _make_calibrator_classes(deprecated: bool) -> dict[str, type]:
    def get_batch_size(self: Any) -> int:
        if deprecated:
            warnings.warn("Implicit batch dimensions support has been removed", DeprecationWarning, stacklevel=2)
        raise RuntimeError('Tried to call pure virtual function "IInt8Calibrator::getBatchSize"')

    common = {
        "get_batch_size": get_batch_size,
        "get_batch": _pure_virtual("IInt8Calibrator", "getBatch"),
        "read_calibration_cache": _pure_virtual("IInt8Calibrator", "readCalibrationCache"),
        "write_calibration_cache": _pure_virtual("IInt8Calibrator", "writeCalibrationCache"),
    }
    base = type("IInt8Calibrator", (_Bound,), {
        **common, "get_algorithm": _pure_virtual("IInt8Calibrator", "getAlgorithm"), "_standin_bound": True,
    })
    classes = {"IInt8Calibrator": base}
    for name, algo in (
        ("IInt8EntropyCalibrator2", CalibrationAlgoType.ENTROPY_CALIBRATION_2),
        ("IInt8MinMaxCalibrator", CalibrationAlgoType.MINMAX_CALIBRATION),
        ("IInt8EntropyCalibrator", CalibrationAlgoType.ENTROPY_CALIBRATION),
        ("IInt8LegacyCalibrator", CalibrationAlgoType.LEGACY_CALIBRATION),
    ):
        ns: dict[str, Any] = {"get_algorithm": (lambda a: lambda self: a)(algo), "_standin_bound": True}
        if name == "IInt8LegacyCalibrator":
            for m in ("get_quantile", "get_regression_cutoff", "read_histogram_cache", "write_histogram_cache"):
                ns[m] = _pure_virtual(name, m)
        classes[name] = type(name, (base,), ns)
    return classes


# ---------------------------------------------------------------------------------------------------------------------
# The calibration driver


def read_dtype(dtype: Any) -> np.dtype:
    """The dtype TensorRT reads from a calibration buffer for an input of `dtype` (a numpy dtype or a DataType):
    INT32, INT64 and BOOL as themselves, every other input as float32."""
    if isinstance(dtype, DataType):
        return {DataType.INT32: np.dtype(np.int32), DataType.INT64: np.dtype(np.int64),
                DataType.BOOL: np.dtype(np.bool_)}.get(dtype, np.dtype(np.float32))
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_)):
        return dtype
    return np.dtype(np.float32)


@dataclass
class DriveResult:
    """What the stand-in driver saw and did."""

    names: list[str]
    algorithm: Any = None
    batch_size: int | None = None
    pointers: list[list[int]] = field(default_factory=list)
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)  # what TensorRT read behind the pointers
    cache_read: bytes | None = None
    cache_written: bytes | None = None
    rewrote_cache: bool = False  # the cache was written back after it was read
    errors: list[str] = field(default_factory=list)  # what the bindings would print to stderr
    violations: list[str] = field(default_factory=list)
    calibration_failed: bool = False  # TensorRT: "Calibration failure occurred with no scaling factors detected"

    @property
    def cache(self) -> bytes | None:
        """The cache TensorRT ends up with: the one it wrote, else the one it read."""
        return self.cache_written if self.cache_written is not None else self.cache_read


def _report(result: DriveResult, callback: str, exc: BaseException) -> None:
    message = f"[ERROR] Exception caught in {callback}(): {type(exc).__name__}: {exc}"
    result.errors.append(message)
    print(message, file=sys.stderr)


def _as_size_t_vector(obj: Any) -> list[int]:
    """pybind11's cast to std::vector<size_t>: a non-str sequence of non-negative ints (or __index__ objects)."""
    if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
        raise RuntimeError(f"Unable to cast Python instance of type {type(obj)} to C++ type 'std::vector<size_t>'")
    out = []
    for item in obj:
        if isinstance(item, (bool, float)) or not hasattr(item, "__index__"):
            raise RuntimeError(f"Unable to cast Python instance of type {type(item)} to C++ type 'size_t'")
        value = item.__index__()
        if value < 0 or value >= 1 << 64:
            raise RuntimeError(f"Unable to cast Python instance {value} to C++ type 'size_t'")
        out.append(value)
    return out


def _normalise_inputs(inputs: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    if isinstance(inputs, Mapping):
        return {str(k): (tuple(int(d) for d in v[0]), v[1]) for k, v in inputs.items()}
    return {s.name: (tuple(int(d) for d in s.shape), np.dtype(s.dtype)) for s in inputs}


_MEMORY = ("fake-gpu", "host", "real-gpu")


def _read_batch(names: list[str], vector: list[int], specs: Mapping[str, tuple], memory: str, gpu: FakeGpu | None,
                device: int | None) -> dict[str, np.ndarray]:
    batch = {}
    for name, pointer in zip(names, vector):
        shape, dtype = specs[name]
        dtype = read_dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if memory == "fake-gpu":
            raw = gpu.read(pointer, nbytes, what=f"calibration input {name!r}", device=device)
        else:
            if gpu is not None and gpu.owner(pointer) is not None:
                raw = gpu.read(pointer, nbytes, what=f"calibration input {name!r}")
            else:
                raw = ctypes.string_at(pointer, nbytes)  # a dry run: host memory, not bounds-checked
        batch[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return batch


def _rewritten(cache: bytes, algorithm: Any, trt_version: str) -> bytes:
    """The cache the stand-in writes back after reading `cache`: the same entries under its own version header."""
    from trt_calib.core.cache import CalibrationCache, make_header
    from trt_calib.errors import CacheFormatError

    try:
        parsed = CalibrationCache.parse(cache)
    except CacheFormatError:
        return cache
    header = make_header(_HEADER_OF_ALGO[CalibrationAlgoType(int(algorithm))], trt_version)
    return CalibrationCache(header, parsed.entries, newline=parsed.newline,
                            final_newline=parsed.final_newline).dumps().encode("ascii")


def _write_cache(calibrator: Any, data: bytes, result: DriveResult) -> None:
    memory = bytearray(data)
    view = memoryview(memory)
    try:
        calibrator.write_calibration_cache(view)
    except BaseException as exc:
        _report(result, "write_calibration_cache", exc)
    finally:
        view.release()  # TensorRT's memory is gone after the call: a kept memoryview must not be read
        memory[:] = b"\0" * len(memory)


def _drive(calibrator: Any, inputs: Any, memory: str, gpu: FakeGpu | None, model: Any, trt_version: str,
           max_calls: int, result: DriveResult) -> None:
    specs = _normalise_inputs(inputs)
    names = list(specs)
    device = gpu.current if gpu is not None else None  # TensorRT builds on the current device
    try:
        result.algorithm = calibrator.get_algorithm()
    except BaseException as exc:
        _report(result, "get_algorithm", exc)
        result.algorithm = CalibrationAlgoType.LEGACY_CALIBRATION
    try:
        cache = calibrator.read_calibration_cache()
        if cache is not None:
            cache = memoryview(cache).tobytes()  # py::buffer{cacheRaw}: str and the like raise here
    except BaseException as exc:
        _report(result, "read_calibration_cache", exc)
        cache = None
    if cache:
        result.cache_read = cache
        result.rewrote_cache = True
        _write_cache(calibrator, _rewritten(cache, result.algorithm, trt_version), result)
        return
    try:
        result.batch_size = int(calibrator.get_batch_size())
    except BaseException as exc:
        _report(result, "get_batch_size", exc)
        result.batch_size = -1
    for _ in range(max_calls):
        try:
            got = calibrator.get_batch(list(names))
            if got is None:
                break
            vector = _as_size_t_vector(got)
            if not vector:
                break
        except BaseException as exc:
            _report(result, "get_batch", exc)
            break
        if len(vector) < len(names):
            raise StandInUndefinedBehaviour(
                f"get_batch returned {len(vector)} pointer(s) for {len(names)} names {names}: TensorRT memcpy's "
                f"{len(names)} pointers from the vector (reads past its end)"
            )
        if len(vector) > len(names):
            result.violations.append(f"get_batch returned {len(vector)} pointers for {len(names)} names")
        vector = vector[: len(names)]
        result.pointers.append(vector)
        if memory != "real-gpu":
            result.batches.append(_read_batch(names, vector, specs, memory, gpu, device))
    if not result.pointers:
        result.calibration_failed = True
        return
    text = _placeholder_cache(result, trt_version) if memory == "real-gpu" else _standin_cache(result, model,
                                                                                                 trt_version)
    data = text.encode("ascii")
    _write_cache(calibrator, data, result)
    result.cache_written = data


def _standin_cache(result: DriveResult, model: Any, trt_version: str) -> str:
    """The cache the stand-in "TensorRT" writes: its own calibration of the bytes it read (`_reference_amax`), or
    the inputs' max |x| when it has no model onnxruntime can run (a TensorRT plugin op)."""
    header = _HEADER_OF_ALGO[CalibrationAlgoType(int(result.algorithm))]
    key = _KEY_OF_ALGO[CalibrationAlgoType(int(result.algorithm))]
    amax = None
    if model is not None and key in ("entropy2", "minmax"):
        amax = _reference_amax(model, result.batches, key, trt_version)
    if amax is None:
        amax = {n: _abs_max(b[n] for b in result.batches) for n in result.names}
    return _reference_cache_text(header, trt_version, amax)


# ------------------------------------------------------------------------------------------------------------------
# The stand-in's own calibration. It shares no code with trt_calib's (no histogram, KL search, scale tie, tensor list,
# model runner or cache writer of trt_calib is used), so that the calibrator's cross-check and doctor's "tensorrt
# cache vs numpy" compare two computations: an algorithm bug on either side makes them differ. It is written as
# plainly as the spec states it (/work/shared/spec/algorithm.md, "Verified reconstruction", sections 0, 4 and
# "Scale tying"): a loop over the batches for the histogram, a loop over the candidates for the KL search, and
# it favours clarity over speed (results are cached per histogram).
_NUM_BINS = 2048
_NUM_LEVELS = 128
_FIRST_CANDIDATE = 128
_REFERENCE_SEARCHES: dict[tuple[bytes, float], float] = {}


def _reference_amax(model: Any, batches: Sequence[Mapping[str, np.ndarray]], algorithm: str,
                    trt_version: str) -> dict[str, float] | None:
    """{tensor: amax} as the spec's TensorRT computes it for `batches`; None when onnxruntime cannot run `model`."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    names = _reference_tensors(proto)
    try:
        outputs = _reference_run(proto, batches, names)
    except Exception:  # a model onnxruntime cannot run (a TensorRT plugin op): the caller falls back
        return None
    amax: dict[str, float] = {}
    for name in names:
        values = [out[name] for out in outputs]
        if algorithm == "minmax":
            amax[name] = _abs_max(values)  # MinMaxCalibration: max |x| over all batches, no +0.5
        else:
            counts, width, infinite = _reference_histogram(values)
            amax[name] = math.inf if infinite else _reference_entropy(counts, width)
    return _reference_ties(proto, amax, trt_version)


def _reference_tensors(model: Any) -> list[str]:
    """The tensors TensorRT gives an entry (spec, "Which tensors get an entry"): the float graph inputs, then the
    outputs of every node but Constant in graph order that some node consumes or that are graph outputs, when
    onnx's shape inference types them as a float. Initializers (weights) get none; custom-domain ops are skipped."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    weights = {t.name for t in model.graph.initializer}
    consumed = {name for node in model.graph.node for name in node.input}
    graph_outputs = {o.name for o in model.graph.output}
    names = [i.name for i in model.graph.input if i.name not in weights and types.get(i.name) in floats]
    for node in model.graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        names += [o for o in node.output if o and o not in weights and (o in consumed or o in graph_outputs)
                  and types.get(o) in floats]
    return list(dict.fromkeys(names))


def _reference_run(model: Any, batches: Sequence[Mapping[str, np.ndarray]], names: list[str]) -> list[dict]:
    """Every tensor of `names` for every batch, from a plain onnxruntime session (the model's graph with those
    tensors added as outputs; basic graph optimisation, the exact arithmetic the CPU calibration uses too)."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    return [dict(zip(names, session.run(names, {n: batch[n] for n in feeds}))) for batch in batches]


def _abs_max(values: Iterable[np.ndarray]) -> float:
    """max |x| over all values (float32), inf if any is infinite; NaNs are ignored."""
    top = np.float32(0.0)
    for v in values:
        a = np.abs(np.asarray(v, dtype=np.float32))
        if np.isinf(a).any():
            return math.inf
        a = a[np.isfinite(a)]
        if a.size:
            top = max(top, a.max())
    return float(top)


def _reference_histogram(values: Iterable[np.ndarray]) -> tuple[np.ndarray, np.float32, bool]:
    """TensorRT's |x| histogram, batch by batch: 2048 bins over [0, m]; m = the first non-zero batch's max |x|
    (float32), doubled (adjacent bin pairs merged) while a later batch's max exceeds it; bin = min(floor(|x| / w),
    2047) with w = m / 2048 in float32. Returns (counts, w, whether some value was infinite)."""
    counts = np.zeros(_NUM_BINS, dtype=np.int64)
    top = np.float32(0.0)
    infinite = False
    for batch in values:
        a = np.abs(np.asarray(batch, dtype=np.float32)).ravel()
        infinite |= bool(np.isinf(a).any())
        a = a[np.isfinite(a)]
        if a.size == 0:
            continue
        m = a.max()
        if top == 0:
            if m == 0:
                counts[0] += a.size  # zeros land in bin 0 whatever the range becomes
                continue
            top = m
        while m > top:
            top = np.float32(top * np.float32(2.0))
            pairs = counts.reshape(_NUM_BINS // 2, 2).sum(axis=1)
            counts = np.concatenate([pairs, np.zeros(_NUM_BINS // 2, dtype=np.int64)])
        width = np.float32(top / np.float32(_NUM_BINS))
        bins = np.floor(a / width).astype(np.int64)
        counts += np.bincount(np.minimum(bins, _NUM_BINS - 1), minlength=_NUM_BINS)
    return counts, np.float32(top / np.float32(_NUM_BINS)), infinite


def _reference_entropy(counts: np.ndarray, width: np.float32) -> float:
    """EntropyCalibration2's threshold for a histogram (spec section 0): bin 0 takes bin 1's count; for each
    i = 128..2048, P = the first i bins with the outliers added to the last, Q = those bins merged into 128 levels
    (level(j) = floor(j * 128 / i)) and each level's mass spread over its non-empty bins; KL(P || Q) is infinite
    where P has mass and Q none; the first i of least KL wins; amax = (i + 0.5) * w in float32."""
    key = (counts.tobytes(), float(width))
    if key in _REFERENCE_SEARCHES:
        return _REFERENCE_SEARCHES[key]
    h = counts.astype(np.float64)
    h[0] = h[1]
    if width == 0 or h.sum() == 0:
        return 0.0
    divergences = []
    for i in range(_FIRST_CANDIDATE, _NUM_BINS + 1):
        kept = h[:i]
        p = kept.copy()
        p[i - 1] += h[i:].sum()
        level = np.arange(i) * _NUM_LEVELS // i
        mass = np.bincount(level, weights=kept, minlength=_NUM_LEVELS)
        filled = np.bincount(level, weights=(kept != 0).astype(np.float64), minlength=_NUM_LEVELS)
        q = np.where(kept != 0, mass[level] / np.maximum(filled[level], 1.0), 0.0)
        if np.any((p > 0) & (q == 0)) or q.sum() == 0:
            divergences.append(math.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        nz = p > 0
        divergences.append(float(np.sum(p[nz] * np.log(p[nz] / q[nz]))))
    best = min(divergences)
    if not math.isfinite(best):
        chosen = _NUM_BINS
    else:
        # the first minimum; divergences that differ only by the rounding of their sums (1e-9 relative) are equal
        chosen = _FIRST_CANDIDATE + next(k for k, d in enumerate(divergences) if d <= best + 1e-9 * abs(best) + 1e-12)
    amax = float(np.float32(np.float32(chosen + 0.5) * width))
    _REFERENCE_SEARCHES[key] = amax
    return amax


def _reference_ties(model: Any, amax: dict[str, float], trt_version: str) -> dict[str, float]:
    """The spec's scale ties ("Scale tying"): each MaxPool/AveragePool output takes its input's amax, in graph
    order; emulating TensorRT <= 8.0, each Concat's inputs then take its output's."""
    out = dict(amax)
    for node in model.graph.node:
        if node.op_type in ("MaxPool", "AveragePool") and node.input[0] in out and node.output[0] in out:
            out[node.output[0]] = out[node.input[0]]
    if _version_tuple(trt_version)[:2] <= (8, 0):
        for node in model.graph.node:
            if node.op_type == "Concat" and node.output[0] in out:
                for name in node.input:
                    if name in out:
                        out[name] = out[node.output[0]]
    return out


def _reference_cache_text(algorithm: str, trt_version: str, amax: Mapping[str, float]) -> str:
    """A cache as the spec's section 4 writes it: TRT-<getInferLibVersion()>-<Algorithm>, then one line per tensor,
    `name: printf("%x")` of the float32 bits of scale = float32(amax) / 127.0f."""
    major, minor, patch = (list(_version_tuple(trt_version)) + [0, 0])[:3]
    number = (major * 100 + minor) * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
    lines = [f"TRT-{number}-{algorithm}"]
    for name, value in amax.items():
        with np.errstate(over="ignore"):
            scale = np.float32(value) / np.float32(127.0)
        lines.append(f"{name}: {struct.unpack('>I', struct.pack('>f', scale))[0]:x}")
    return "\n".join(lines) + "\n"


def _placeholder_cache(result: DriveResult, trt_version: str) -> str:
    from trt_calib.core.cache import CalibrationCache

    header = _HEADER_OF_ALGO[CalibrationAlgoType(int(result.algorithm))]
    return CalibrationCache.from_amax({n: 1.0 for n in result.names}, algorithm=header, trt_version=trt_version).dumps()


def drive(
    calibrator: Any,
    inputs: Any,
    *,
    memory: str = "fake-gpu",
    gpu: FakeGpu | None = None,
    model: Any = None,
    trt_version: str = "10.3.0",
    threaded: bool = False,
    max_calls: int = 100_000,
) -> DriveResult:
    """Drive `calibrator` as the bindings' calibration does. `inputs`: name -> (shape, dtype) in TensorRT's binding
    order (a numpy dtype or a DataType; read with TensorRT's type rule), or InputSpecs with static shapes.

    `memory`: ``fake-gpu`` (pointers must be allocations of the stand-in GPU, on the current device, large enough
    for what TensorRT reads), ``host`` (a dry run: host pointers are read too) or ``real-gpu`` (pointers into a real
    GPU are taken as they are and not read).
    """
    if memory not in _MEMORY:
        raise ValueError(f"memory must be one of {_MEMORY}")
    tensorrt = sys.modules.get("tensorrt")
    base = getattr(tensorrt, "IInt8Calibrator", None)
    if base is not None and not isinstance(calibrator, base):
        raise TypeError("incompatible function arguments: the calibrator is not a tensorrt.IInt8Calibrator")
    gpu = gpu if gpu is not None else getattr(tensorrt, "_standin_gpu", None)
    if memory == "fake-gpu" and gpu is None:
        raise ValueError("no stand-in GPU: install() the stand-in, pass gpu=, or memory='host' for a dry run")
    result = DriveResult(names=list(_normalise_inputs(inputs)))
    if not threaded:
        _drive(calibrator, inputs, memory, gpu, model, trt_version, max_calls, result)
        return result
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _drive(calibrator, inputs, memory, gpu, model, trt_version, max_calls, result)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="standin-tensorrt-builder")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Networks: tensors and layers


class DataType(enum.IntEnum):
    """nvinfer1::DataType's numbering (NvInferRuntimeBase.h)."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class LayerType(enum.IntEnum):
    CONVOLUTION = 0
    ACTIVATION = 2
    POOLING = 3
    SCALE = 5
    SOFTMAX = 6
    CONCATENATION = 8
    ELEMENTWISE = 9
    PLUGIN_V2 = 10
    UNARY = 11
    SHUFFLE = 13
    REDUCE = 14
    CONSTANT = 19
    IDENTITY = 20
    MATRIX_MULTIPLY = 22
    QUANTIZE = 33
    DEQUANTIZE = 34


class FakeTensor:
    """An ITensor: name, shape, dtype and (TensorRT <= 10) dynamic ranges; records what was set."""

    def __init__(self, name: str, shape: Sequence[int] = (), dtype: DataType = DataType.FLOAT, *,
                 deprecated: bool = False) -> None:
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype
        self._deprecated = deprecated
        self.range_calls: list[tuple[float, float]] = []
        self._range: tuple[float, float] | None = None

    def set_dynamic_range(self, lo: float, hi: float) -> bool:
        if self._deprecated:
            warnings.warn(DEPRECATED_10_1, DeprecationWarning, stacklevel=2)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            return False
        self.range_calls.append((lo, hi))
        self._range = (lo, hi)
        return True

    @property
    def dynamic_range(self) -> tuple[float, float] | None:
        return self._range

    def __repr__(self) -> str:
        return f"<stand-in ITensor {self.name!r} {self.shape} {self.dtype.name}>"


class NoRangeTensor(FakeTensor):
    """An ITensor of TensorRT 11: no dynamic ranges."""

    @property
    def set_dynamic_range(self) -> Any:  # type: ignore[override]
        raise AttributeError("'tensorrt.ITensor' object has no attribute 'set_dynamic_range'")


DEPRECATED_10_12 = "Deprecated in TensorRT 10.12. Superseded by strong typing."


DEPRECATED_10_12 = "Deprecated in TensorRT 10.12. Superseded by strong typing."


class FakeLayer:
    """An ILayer: name, type, inputs and outputs, and (TensorRT 8.6-10.x) the per-layer precision API (`precision`,
    `set_output_type`), recorded and type-checked, whose setters warn from 10.12 on (pyGraph.cpp deprecateMember)
    and are gone in 11 (`NoPrecisionLayer`). Subclass attributes (a constant's weights) need the cast Polygraphy does
    (`layer.__class__ = trt.IConstantLayer`, `backend/trt/util.py`)."""

    def __init__(self, name: str, outputs: Sequence[FakeTensor], op: str = "", *, inputs: Sequence[Any] = (),
                 layer_type: LayerType | None = None, weights: np.ndarray | None = None,
                 deprecated: bool = False) -> None:
        self.name = name
        self._deprecated = deprecated
        self.op = op
        self.type = layer_type if layer_type is not None else _LAYER_OF_OP.get(op, LayerType.IDENTITY)
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._weights = weights
        self._precision: DataType | None = None
        self._output_types: dict[int, DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> Any:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self._outputs[index]

    # per-layer precision (TensorRT 8.6-10.x; `python/src/infer/pyGraph.cpp`); recorded, not enforced
    @property
    def precision(self) -> DataType:
        return DataType.FLOAT if self._precision is None else self._precision

    @precision.setter
    def precision(self, dtype: DataType) -> None:
        if self._deprecated:
            warnings.warn(DEPRECATED_10_12, DeprecationWarning, stacklevel=2)
        if not isinstance(dtype, DataType):
            raise TypeError("(): incompatible function arguments. precision takes a tensorrt.DataType")
        self._precision = dtype

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def set_output_type(self, index: int, dtype: DataType) -> None:
        if self._deprecated:
            warnings.warn(DEPRECATED_10_12, DeprecationWarning, stacklevel=2)
        if not isinstance(dtype, DataType):
            raise TypeError("set_output_type(): incompatible function arguments. dtype must be a tensorrt.DataType")
        if not 0 <= index < len(self._outputs):  # TensorRT logs an API error and ignores it: we fail louder
            raise IndexError(f"layer {self.name!r} has {len(self._outputs)} output(s), not an output {index}")
        self._output_types[index] = dtype

    def get_output_type(self, index: int) -> DataType:
        return self._output_types.get(index, self._outputs[index].dtype)

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types

    def __repr__(self) -> str:
        return f"<stand-in ILayer {self.name!r} {self.type.name}>"


class NoPrecisionLayer(FakeLayer):
    """An ILayer of TensorRT 11: no precision or output-type constraints (weak typing removed)."""

    @property
    def precision(self) -> Any:  # type: ignore[override]
        raise AttributeError("'tensorrt.ILayer' object has no attribute 'precision'")

    @property
    def set_output_type(self) -> Any:  # type: ignore[override]
        raise AttributeError("'tensorrt.ILayer' object has no attribute 'set_output_type'")


class FakeConstantLayer(FakeLayer):
    """IConstantLayer: `weights` is a numpy array (pyGraph.cpp `constant_get_weights`)."""

    @property
    def weights(self) -> np.ndarray:
        return self._weights


_LAYER_OF_OP = {
    "Conv": LayerType.CONVOLUTION, "Relu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION,
    "Tanh": LayerType.ACTIVATION, "MaxPool": LayerType.POOLING, "AveragePool": LayerType.POOLING,
    "Add": LayerType.ELEMENTWISE, "Sub": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE,
    "Div": LayerType.ELEMENTWISE, "Max": LayerType.ELEMENTWISE, "Min": LayerType.ELEMENTWISE,
    "Softmax": LayerType.SOFTMAX, "Concat": LayerType.CONCATENATION, "Reshape": LayerType.SHUFFLE,
    "Flatten": LayerType.SHUFFLE, "Transpose": LayerType.SHUFFLE, "MatMul": LayerType.MATRIX_MULTIPLY,
    "Gemm": LayerType.MATRIX_MULTIPLY, "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE,
    "Identity": LayerType.IDENTITY, "Cast": LayerType.IDENTITY,
}
#: Ops whose initializer inputs TensorRT's ONNX parser turns into constant layers (named after the weights,
#: onnx-tensorrt `importerUtils.cpp`); Conv/Gemm weights and Q/DQ scales stay weights of their layer here.
_CONSTANT_CONSUMERS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "MatMul", "Concat", "Where"})
#: Some of NVIDIA's plugin library (TensorRT `plugin/`): known to the registry after init_libnvinfer_plugins.
PLUGINS = frozenset({"EfficientNMS_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT", "NMS_TRT", "NMSDynamic_TRT",
                     "ROIAlign_TRT", "ResizeNearest_TRT", "InstanceNormalization_TRT", "PyramidROIAlign_TRT"})


class FakeNetwork:
    """An INetworkDefinition: inputs and layers with outputs, as TensorRT's Python API exposes them."""

    def __init__(self, inputs: Sequence[FakeTensor] = (), layers: Sequence[FakeLayer] = (), flags: int = 0) -> None:
        self._inputs = list(inputs)
        self._layers = list(layers)
        self.flags = flags

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self._inputs[index]

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self._layers[index]

    def __iter__(self):
        return iter(list(self._layers))

    def tensor(self, name: str) -> FakeTensor:
        for t in self._inputs:
            if t.name == name:
                return t
        for layer in self._layers:
            for t in layer._outputs:
                if t.name == name:
                    return t
        raise KeyError(name)

    def layer(self, name: str) -> FakeLayer:
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 3: DataType.INT8, 6: DataType.INT32,
                7: DataType.INT64, 9: DataType.BOOL, 2: DataType.UINT8}


class _ParserError:
    def __init__(self, node: int, name: str, op: str, desc: str, code: int = 8) -> None:
        self._node, self._name, self._op, self._desc, self._code = node, name, op, desc, code

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc

    def code(self) -> int:
        return self._code  # 8 = UNSUPPORTED_NODE, 4 = INVALID_NODE

    def __str__(self) -> str:
        return f"In node {self._node} with name: {self._name} and operator: {self._op}: {self._desc}"


class _State:
    """Calls recorded by one stand-in tensorrt module, in order, and what its builds decided."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls: list[tuple] = []
        self.drive_results: list[DriveResult] = []
        self.plugins_initialised = False
        self.engine_ranges: dict[str, float] | None = None  # the scales the last build would use, by tensor
        self.built_networks: list[tuple[FakeNetwork, bool]] = []  # and whether the build was DETAILED
        self.layer_precisions: dict[str, tuple] = {}  # at the last build: layer -> (precision, {output: type})

    def record(self, *call: Any) -> None:
        self.calls.append(call)


def _make_builder_api(module: types.ModuleType, state: _State, gpu: FakeGpu, version: tuple[int, ...]) -> None:
    v10, v11 = version >= (10,), version >= (11,)
    deprecated = version >= (10, 1)

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger(_Bound):
        def log(self, severity: Severity, msg: str) -> None:
            raise RuntimeError('Tried to call pure virtual function "ILogger::log"')

    ILogger.Severity = Severity

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity(i) for i in range(5))

        def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
            ILogger.__init__(self)
            self.min_severity = min_severity

        def log(self, severity: Severity, msg: str) -> None:
            if severity <= self.min_severity:
                print(f"[stand-in TRT] {msg}", file=sys.stderr)

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        if not isinstance(logger, ILogger) or not isinstance(namespace, str):
            raise TypeError("init_libnvinfer_plugins(): incompatible function arguments (logger, namespace: str)")
        state.record("init_libnvinfer_plugins", namespace)
        state.plugins_initialised = True
        return True

    class _Network(FakeNetwork):
        def _tensor(self, name: str, shape: Sequence[int], dtype: DataType) -> FakeTensor:
            cls = NoRangeTensor if v11 else FakeTensor
            return cls(name, shape, dtype, deprecated=deprecated)

        def _layer(self, name: str, outputs: Sequence[FakeTensor], op: str = "", **kwargs: Any) -> FakeLayer:
            cls = NoPrecisionLayer if v11 else FakeLayer
            return cls(name, outputs, op, deprecated=version >= (10, 12), **kwargs)

    class OnnxParser:
        def __init__(self, network: _Network, logger: ILogger) -> None:
            state.record("OnnxParser")
            self.network, self.logger, self._errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> _ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

        def _log_error(self, message: str) -> bool:
            self.logger.log(Severity.ERROR, message)  # logged only: num_errors stays 0 (ModelImporter.cpp)
            return False

        def parse_from_file(self, path: str) -> bool:
            state.record("parse_from_file", path)
            import onnx

            if not Path(path).is_file():
                return self._log_error(f"Input is not a regular file: {path}")
            try:
                model = onnx.load(path)
            except Exception:
                return self._log_error(f"Failed to parse ONNX model from file: {path}!")
            return self._populate(model)

        def parse(self, data: bytes, path: str | None = None) -> bool:
            state.record("parse")
            import onnx

            try:
                model = onnx.load_from_string(bytes(data))
            except Exception as exc:
                self._errors.append(_ParserError(-1, "", "", f"Failed to parse the ONNX model ({exc})"))
                return False
            return self._populate(model)

        def _populate(self, model: Any) -> bool:
            from onnx import numpy_helper

            network = self.network
            if network.num_layers > 0:
                return self._log_error("Parse was called with a non-empty network definition")
            network.onnx_model = model  # the stand-in computes its calibration cache with it
            if not v10 and not network.flags & (1 << int(module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                self._errors.append(_ParserError(
                    -1, "", "", "This version of the ONNX parser only supports TensorRT INetworkDefinitions with an "
                    "explicit batch dimension. Please ensure the network was created using the EXPLICIT_BATCH "
                    "NetworkDefinitionCreationFlag."))
                return False
            graph = model.graph
            weights = {i.name: i for i in graph.initializer}
            types_ = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
            tensors: dict[str, FakeTensor] = {}
            for value in graph.input:
                if value.name in weights:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                tensor = network._tensor(value.name, dims, _ONNX_TO_TRT.get(value.type.tensor_type.elem_type,
                                                                             DataType.FLOAT))
                network._inputs.append(tensor)
                tensors[value.name] = tensor
            for index, node in enumerate(graph.node):
                name = node.name or (f"node_of_{node.output[0]}" if node.output else f"node_{index}")
                plugin = node.domain not in ("", "ai.onnx") or node.op_type.endswith("_TRT")
                if plugin:
                    registered = state.plugins_initialised or not v10  # <= 9.x: the parser registered them
                    if not (registered and node.op_type in PLUGINS):
                        self._errors.append(_ParserError(
                            index, node.name, node.op_type,
                            'creator && "Plugin not found, are the plugin name, version, and namespace correct?"',
                            code=4))
                        return False
                inputs = []
                for src in node.input:
                    if src in weights and node.op_type in _CONSTANT_CONSUMERS and src not in tensors:
                        array = numpy_helper.to_array(weights[src])
                        out = network._tensor(src, array.shape, _ONNX_TO_TRT.get(weights[src].data_type,
                                                                                 DataType.FLOAT))
                        network._layers.append(network._layer(src, [out], layer_type=LayerType.CONSTANT, weights=array))
                        tensors[src] = out
                    if src in tensors:
                        inputs.append(tensors[src])
                outputs = [network._tensor(o, (), _ONNX_TO_TRT.get(types_.get(o, 1), DataType.FLOAT))
                           for o in node.output if o]
                for t in outputs:
                    tensors[t.name] = t
                layer_type = LayerType.PLUGIN_V2 if plugin else None
                network._layers.append(network._layer(name, outputs, node.op_type, inputs=inputs, layer_type=layer_type))
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Sequence[int], opt: Sequence[int], hi: Sequence[int]) -> None:
            state.record("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        def get_shape(self, name: str) -> list[tuple]:
            return list(self.shapes[name])

    class ProfilingVerbosity(enum.IntEnum):
        LAYER_NAMES_ONLY = 0
        NONE = 1
        DETAILED = 2

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags: set[Any] = set()
            self.pools: dict[Any, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
            self._calibrator = None
            self._calibration_profile = None

        def set_flag(self, flag: Any) -> None:
            state.record("config.set_flag", flag.name)
            self.flags.add(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            state.record("config.set_memory_pool_limit", pool.name, size)
            self.pools[pool] = size

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            state.record("config.add_optimization_profile", dict(profile.shapes))
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class CalibratingBuilderConfig(IBuilderConfig):
        """TensorRT <= 10: a calibrator and a calibration profile."""

        def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
            if deprecated:
                warnings.warn(DEPRECATED_10_1, DeprecationWarning, stacklevel=2)
            state.record("config.set_calibration_profile", dict(profile.shapes))
            self._calibration_profile = profile
            return True

        def get_calibration_profile(self) -> IOptimizationProfile | None:
            return self._calibration_profile

        @property
        def int8_calibrator(self) -> Any:
            if deprecated:
                warnings.warn(DEPRECATED_10_1, DeprecationWarning, stacklevel=2)
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, calibrator: Any) -> None:
            if deprecated:
                warnings.warn(DEPRECATED_10_1, DeprecationWarning, stacklevel=2)
            if calibrator is not None and not isinstance(calibrator, module.IInt8Calibrator):
                raise TypeError("(): incompatible function arguments. int8_calibrator takes a tensorrt.IInt8Calibrator")
            state.record("config.int8_calibrator", type(calibrator).__name__)
            self._calibrator = calibrator

    class HostMemory(bytes):
        """IHostMemory: a buffer with `nbytes`."""

        @property
        def nbytes(self) -> int:
            return len(self)

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Builder(): incompatible function arguments (logger must be a tensorrt.ILogger)")
            state.record("Builder")
            self.logger = logger

        def create_network(self, flags: int = 0) -> _Network:
            state.record("create_network", flags)
            return _Network(flags=flags)

        def create_builder_config(self) -> IBuilderConfig:
            state.record("create_builder_config")
            return IBuilderConfig() if v11 else CalibratingBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def _error(self, message: str) -> None:
            self.logger.log(Severity.ERROR, message)

        def build_serialized_network(self, network: FakeNetwork, config: IBuilderConfig) -> Any:
            state.record("build_serialized_network")
            state.layer_precisions = {layer.name: (layer._precision, dict(layer._output_types))
                                      for layer in network._layers if layer._precision is not None or layer._output_types}
            state.engine_ranges = None
            dynamic = [t for t in network._inputs if any(d < 0 for d in t.shape)]
            if dynamic and not config.profiles:
                self._error("Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
            for number, profile in enumerate(config.profiles):
                unset = [t.name for t in dynamic if t.name not in profile.shapes]
                if unset:
                    self._error(f"Optimization profile {number} has no shapes for dynamic input(s) {unset}.")
                    return None
            explicit = any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network._layers)
            int8 = hasattr(module.BuilderFlag, "INT8") and module.BuilderFlag.INT8 in config.flags
            if int8 and not explicit:
                ranges: dict[str, float] = {}
                calibrator = config._calibrator
                if calibrator is not None:
                    calibration_profile = config._calibration_profile
                    if dynamic and calibration_profile is None:
                        self._error("stand-in: INT8 calibration of a network with dynamic inputs needs a "
                                    "calibration profile (IBuilderConfig.set_calibration_profile)")
                        return None
                    inputs = {}
                    for t in network._inputs:
                        shape = calibration_profile.shapes[t.name][1] if t in dynamic else t.shape
                        inputs[t.name] = (shape, t.dtype)
                    result = drive(calibrator, inputs, trt_version=state.version, gpu=gpu,
                                   model=getattr(network, "onnx_model", None))
                    state.drive_results.append(result)
                    if result.calibration_failed:
                        self._error("Calibration failure occurred with no scaling factors detected.")
                        return None
                    ranges.update(_cache_ranges(result.cache))
                manual = {t.name: max(abs(t.dynamic_range[0]), abs(t.dynamic_range[1]))
                          for t in _all_tensors(network) if t.dynamic_range is not None}
                ranges.update(manual)  # manual ranges override calibrated ones (sampleINT8API README)
                if not ranges:
                    self._error("Calibration failure occurred with no scaling factors detected.")
                    return None
                state.engine_ranges = ranges
            state.built_networks.append((network, config.profiling_verbosity == ProfilingVerbosity.DETAILED))
            return HostMemory(PLAN)

    class _Inspector:
        def __init__(self, network: FakeNetwork, detailed: bool) -> None:
            self.network, self.detailed = network, detailed

        def get_engine_information(self, fmt: Any) -> str:
            int8 = {t.name for layer in self.network._layers if layer.type == LayerType.QUANTIZE
                    for t in layer._outputs}

            def io(tensor: Any) -> dict[str, str]:
                quantized = tensor.name in int8
                fmt_text = "Row major INT8 format where column stride % 64 == 0" if quantized else \
                    "Row major linear FP32 format (kLINEAR)"
                if v11:  # 11.x split "Format/Datatype" (IEngineInspector migration guide)
                    return {"Name": tensor.name, "Format": fmt_text, "DataType": "Int8" if quantized else "Float"}
                return {"Name": tensor.name, "Format/Datatype": fmt_text}

            if not self.detailed:
                layers: list[Any] = [layer.name for layer in self.network._layers]
            else:
                layers = [{"Name": layer.name, "LayerType": layer.type.name,
                           "Inputs": [io(t) for t in layer._inputs], "Outputs": [io(t) for t in layer._outputs]}
                          for layer in self.network._layers]
            key = "I/O Tensors" if v11 else "Bindings"
            return json.dumps({"Layers": layers, key: [t.name for t in self.network._inputs]})

    class _Engine:
        def __init__(self, network: FakeNetwork, detailed: bool) -> None:
            self._network, self._detailed = network, detailed

        def create_engine_inspector(self) -> _Inspector:
            return _Inspector(self._network, self._detailed)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: Any) -> Any:
            if bytes(plan) != PLAN or not state.built_networks:
                self.logger.log(Severity.ERROR, "stand-in: not a plan the stand-in built")
                return None
            return _Engine(*state.built_networks[-1])

    if not v11:
        def platform_has_fast_int8(self: Any) -> bool:
            if version >= (10, 5):
                warnings.warn("Deprecated in TensorRT 10.5. Please query data type support from CUDA directly.",
                              DeprecationWarning, stacklevel=2)
            return True

        Builder.platform_has_fast_int8 = property(platform_has_fast_int8)
        Builder.platform_has_fast_fp16 = property(platform_has_fast_int8)
    if not v10:
        Builder.build_engine = lambda self, network, config: None  # the implicit-batch era API, gone in 10.0

    if v11:  # NvInfer.h@release/11.0: EXPLICIT_BATCH is gone and the members were renumbered
        flags_enum = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    elif v10:
        flags_enum = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    else:
        flags_enum = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags_enum)

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class LayerInformationFormat(enum.IntEnum):
        ONELINE = 0
        JSON = 1

    flags = ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"] if not v11 else ["TF32"]
    BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)

    module.ILogger = ILogger
    module.Logger = Logger
    module.init_libnvinfer_plugins = init_libnvinfer_plugins
    module.OnnxParser = OnnxParser
    module.Builder = Builder
    module.Runtime = Runtime
    module.IBuilderConfig = IBuilderConfig
    module.IOptimizationProfile = IOptimizationProfile
    module.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    module.MemoryPoolType = MemoryPoolType
    module.BuilderFlag = BuilderFlag
    module.ProfilingVerbosity = ProfilingVerbosity
    module.LayerInformationFormat = LayerInformationFormat
    module.DataType = DataType
    module.LayerType = LayerType
    module.ILayer = FakeLayer
    module.IConstantLayer = FakeConstantLayer
    module.float32, module.float16, module.bfloat16, module.int8, module.int32, module.int64, module.bool = (
        DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT8, DataType.INT32, DataType.INT64, DataType.BOOL)


def _cache_ranges(cache: bytes | None) -> dict[str, float]:
    from trt_calib.core.cache import CalibrationCache
    from trt_calib.errors import CacheFormatError

    if not cache:
        return {}
    try:
        return CalibrationCache.parse(cache).amaxes()
    except CacheFormatError:
        return {}


def _all_tensors(network: FakeNetwork) -> list[FakeTensor]:
    out = list(network._inputs)
    for layer in network._layers:
        out.extend(layer._outputs)
    return out


def make_tensorrt(version: str = "10.3.0", *, gpu: FakeGpu | None = None) -> types.ModuleType:
    """A stand-in `tensorrt` module for TensorRT `version` (8.6, 10.x or 11.x flavour) building on `gpu`."""
    v = _version_tuple(version)
    module = types.ModuleType("tensorrt", "Stand-in; not TensorRT; results are never TensorRT results.")
    module.__version__ = version
    module.__standin__ = True
    state = _State(version)
    module._standin_state = state
    module._standin_gpu = gpu if gpu is not None else FakeGpu()
    if v < (11,):
        for name, cls in _make_calibrator_classes(v >= (10, 1)).items():
            setattr(module, name, cls)
        module.CalibrationAlgoType = CalibrationAlgoType
    _make_builder_api(module, state, module._standin_gpu, v)
    return module


def install(monkeypatch: Any, version: str = "10.3.0", *, devices: int = 1, cuda_python: str = "bindings") -> \
        types.ModuleType:
    """Put a stand-in `tensorrt`, and a fake cuda-python over its stand-in GPU, into sys.modules for one test
    (pytest's monkeypatch undoes it). `cuda_python`: ``bindings`` (`cuda.bindings.runtime`, cuda-python >= 12.6.1),
    ``legacy`` (only `cuda.cudart`, as before 12.6.1), ``none``, or ``keep`` (leave the real one, for GPU tests)."""
    gpu = FakeGpu(devices)
    module = make_tensorrt(version, gpu=gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if cuda_python == "keep":
        return module
    cuda = types.ModuleType("cuda", "Stand-in cuda-python package; not CUDA.")
    cuda.__path__ = []
    names = ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart")
    fakes: dict[str, Any] = dict.fromkeys(names)
    if cuda_python == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = make_cuda_runtime(gpu, "cuda.bindings.runtime")
        cuda.bindings = bindings
        fakes.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": bindings.runtime})
    elif cuda_python == "legacy":
        cuda.cudart = make_cuda_runtime(gpu, "cuda.cudart")
        fakes.update({"cuda": cuda, "cuda.cudart": cuda.cudart})
    elif cuda_python != "none":
        raise ValueError(f"cuda_python must be bindings, legacy, none or keep, not {cuda_python!r}")
    for name, value in fakes.items():
        monkeypatch.setitem(sys.modules, name, value)
    return module


def state_of(module: types.ModuleType) -> _State:
    return module._standin_state


def gpu_of(module: types.ModuleType) -> FakeGpu:
    return module._standin_gpu


def tensor_names(network: FakeNetwork) -> list[str]:
    return [t.name for t in _all_tensors(network)]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
