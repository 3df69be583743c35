"""Stand-in; not TensorRT; results are never TensorRT results.

A CPU stand-in for the parts of TensorRT's Python bindings (8.6 and 10.x, and 11.x where calibrators are gone)
that trt-calib talks to, so the calibrator contract and the build call sequence can be tested where TensorRT
cannot be installed. It mirrors the bindings' behaviour as read in NVIDIA/TensorRT `python/src/infer/pyInt8.cpp`:

- calibrator base classes whose `__init__` must be called (pybind11 raises TypeError at construction otherwise);
- `drive()`, the calibration driver: `read_calibration_cache()` first (a non-empty buffer is used and no batch is
  asked for), then `get_batch(names)` until None or an empty list; the result is cast like `std::vector<size_t>`
  and `len(names)` pointers are memcpy'd without a length check (here a shorter list raises
  `StandInUndefinedBehaviour`, which the real bindings would not: they read past the vector);
  every exception in a callback is printed as "[ERROR] Exception caught in get_batch(): ..." and treated as the end
  of data, and a cache is still written from the batches seen, through a memoryview over memory that is
  released after the call;
- a builder, ONNX parser and network that record the calls made on them.

What the stand-in computes is not TensorRT's calibration: in host mode it reads the bytes behind each pointer with
ctypes and writes a cache of the inputs' max |x| (or, given a model, the CPU calibration of trt_calib.ort.collect on the
read-back batches). It proves the calls and the bytes, nothing about TensorRT's numbers.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "StandInUndefinedBehaviour",
    "DriveResult",
    "make_tensorrt",
    "drive",
    "FakeTensor",
    "NoRangeTensor",
    "FakeLayer",
    "NoPrecisionLayer",
    "FakeNetwork",
    "install",
]

DEPRECATED_10_1 = "Use Deprecated in TensorRT 10.1. Superseded by explicit quantization. instead."


class StandInUndefinedBehaviour(AssertionError):
    """What real TensorRT would turn into undefined behaviour (reading past a short pointer list)."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


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
    CalibrationAlgoType.LEGACY_CALIBRATION: "LegacyCalibration",
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


@dataclass
class DriveResult:
    """What the stand-in driver saw and did."""

    names: list[str]
    algorithm: Any = None
    batch_size: int | None = None
    pointers: list[list[int]] = field(default_factory=list)
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)  # bytes read back behind the pointers
    cache_read: bytes | None = None
    cache_written: bytes | None = None
    errors: list[str] = field(default_factory=list)  # what the bindings would print to stderr
    violations: list[str] = field(default_factory=list)
    calibration_failed: bool = False  # TensorRT: "Calibration failure occurred with no scaling factors detected"


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


def _normalise_inputs(inputs: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if isinstance(inputs, Mapping):
        return {str(k): (tuple(int(d) for d in v[0]), np.dtype(v[1])) for k, v in inputs.items()}
    return {s.name: (tuple(int(d) for d in s.shape), np.dtype(s.dtype)) for s in inputs}


def _drive(calibrator: Any, inputs: Any, host_reader: bool, model: Any, trt_version: str, max_calls: int,
           result: DriveResult) -> None:
    specs = _normalise_inputs(inputs)
    names = list(specs)
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
        if host_reader:
            batch = {}
            for name, pointer in zip(names, vector):
                shape, dtype = specs[name]
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                raw = ctypes.string_at(pointer, nbytes)
                batch[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            result.batches.append(batch)
    if not result.pointers:
        result.calibration_failed = True
        return
    text = _standin_cache(result, model, trt_version) if host_reader else _placeholder_cache(result, trt_version)
    memory = bytearray(text.encode("ascii"))
    view = memoryview(memory)
    try:
        calibrator.write_calibration_cache(view)
    except BaseException as exc:
        _report(result, "write_calibration_cache", exc)
    finally:
        view.release()  # TensorRT's memory is gone after the call: a kept memoryview must not be read
        memory[:] = b"\0" * len(memory)
    result.cache_written = text.encode("ascii")


def _standin_cache(result: DriveResult, model: Any, trt_version: str) -> str:
    from trt_calib.core.cache import CalibrationCache

    header = _HEADER_OF_ALGO[CalibrationAlgoType(int(result.algorithm))]
    if model is not None:
        from trt_calib.ort.collect import calibrate

        ours = calibrate(model, result.batches, algorithm=_KEY_OF_ALGO[CalibrationAlgoType(int(result.algorithm))],
                         trt_version=trt_version)
        return CalibrationCache.from_amax(ours.amax, algorithm=header, trt_version=trt_version).dumps()
    amax = {n: float(max(np.abs(b[n]).max() for b in result.batches)) for n in result.names}
    return CalibrationCache.from_amax(amax, algorithm=header, trt_version=trt_version).dumps()


def _placeholder_cache(result: DriveResult, trt_version: str) -> str:
    from trt_calib.core.cache import CalibrationCache

    header = _HEADER_OF_ALGO[CalibrationAlgoType(int(result.algorithm))]
    return CalibrationCache.from_amax({n: 1.0 for n in result.names}, algorithm=header, trt_version=trt_version).dumps()


def drive(
    calibrator: Any,
    inputs: Any,
    *,
    host_reader: bool = True,
    model: Any = None,
    trt_version: str = "10.3.0",
    threaded: bool = False,
    max_calls: int = 100_000,
) -> DriveResult:
    """Drive `calibrator` as the bindings' calibration does. `inputs`: name -> (shape, dtype) in TensorRT's
    binding order, or InputSpecs with static shapes. In host mode the pointers are read as host memory."""
    tensorrt = sys.modules.get("tensorrt")
    base = getattr(tensorrt, "IInt8Calibrator", None)
    if base is not None and not isinstance(calibrator, base):
        raise TypeError("incompatible function arguments: the calibrator is not a tensorrt.IInt8Calibrator")
    result = DriveResult(names=list(_normalise_inputs(inputs)))
    if not threaded:
        _drive(calibrator, inputs, host_reader, model, trt_version, max_calls, result)
        return result
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _drive(calibrator, inputs, host_reader, model, trt_version, max_calls, result)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="standin-tensorrt-builder")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Networks, builder, parser


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


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


class FakeLayer:
    """An ILayer: name, type, outputs, and the precision API of 8.6-10.x (`precision`, `set_output_type`), whose
    setters warn from 10.12 on (pyGraph.cpp deprecateMember) and are gone in 11 (`NoPrecisionLayer`)."""

    def __init__(self, name: str, outputs: Sequence[FakeTensor], op: str = "", *, deprecated: bool = False) -> None:
        self.name = name
        self.type = op
        self._outputs = list(outputs)
        self._deprecated = deprecated
        self._precision: DataType | None = None
        self._output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self._outputs[index]

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


class NoPrecisionLayer(FakeLayer):
    """An ILayer of TensorRT 11: no precision or output-type constraints (weak typing removed)."""

    @property
    def precision(self) -> Any:  # type: ignore[override]
        raise AttributeError("'tensorrt.ILayer' object has no attribute 'precision'")

    @property
    def set_output_type(self) -> Any:  # type: ignore[override]
        raise AttributeError("'tensorrt.ILayer' object has no attribute 'set_output_type'")


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

    def tensor(self, name: str) -> FakeTensor:
        for t in self._inputs:
            if t.name == name:
                return t
        for layer in self._layers:
            for t in layer._outputs:
                if t.name == name:
                    return t
        raise KeyError(name)


_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
                9: DataType.BOOL, 2: DataType.UINT8}


class _ParserError:
    def __init__(self, node: int, name: str, op: str, desc: str) -> None:
        self._node, self._name, self._op, self._desc = node, name, op, desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc

    def code(self) -> int:
        return 8  # UNSUPPORTED_NODE


class _State:
    """Calls recorded by one stand-in tensorrt module, in order."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls: list[tuple] = []
        self.drive_results: list[DriveResult] = []
        self.layer_precisions: dict[str, tuple] = {}  # at the last build: layer -> (precision, {output: type})

    def record(self, *call: Any) -> None:
        self.calls.append(call)


def _make_builder_api(module: types.ModuleType, state: _State, deprecated: bool, v10: bool, v11: bool) -> None:
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

    class OnnxParser:
        def __init__(self, network: FakeNetwork, logger: ILogger) -> None:
            state.record("OnnxParser")
            self.network, self.logger, self._errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> _ParserError:
            return self._errors[index]

        def parse_from_file(self, path: str) -> bool:
            state.record("parse_from_file", path)
            import onnx

            try:
                model = onnx.load(path)
            except Exception as exc:
                self._errors.append(_ParserError(-1, "", "", f"cannot read the model: {exc}"))
                return False
            return self._populate(model)

        def parse(self, data: bytes, path: str | None = None) -> bool:
            state.record("parse")
            import onnx

            return self._populate(onnx.load_from_string(data))

        def _populate(self, model: Any) -> bool:
            graph = model.graph
            known = {i.name for i in graph.initializer}
            types_ = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
            for value in graph.input:
                if value.name in known:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network._inputs.append(self.network._tensor(
                    value.name, dims, _ONNX_TO_TRT.get(value.type.tensor_type.elem_type, DataType.FLOAT)))
            for index, node in enumerate(graph.node):
                if node.domain not in ("", "ai.onnx"):
                    self._errors.append(_ParserError(
                        index, node.name, node.op_type,
                        f"No importer registered for op: {node.op_type} (stand-in: only the default domain)"))
                    return False
                outputs = [self.network._tensor(o, (), _ONNX_TO_TRT.get(types_.get(o, 1), DataType.FLOAT))
                           for o in node.output if o]
                # onnx-tensorrt names a node's first layer after the node, or node_of_<first output> (getNodeName)
                name = node.name or (f"node_of_{node.output[0]}" if node.output else "")
                self.network._layers.append(self.network._layer(name, outputs, node.op_type))
            return True

    class _Network(FakeNetwork):
        def _tensor(self, name: str, shape: Sequence[int], dtype: DataType) -> FakeTensor:
            cls = NoRangeTensor if v11 else FakeTensor
            return cls(name, shape, dtype, deprecated=deprecated)

        def _layer(self, name: str, outputs: Sequence[FakeTensor], op: str) -> FakeLayer:
            cls = NoPrecisionLayer if v11 else FakeLayer
            return cls(name, outputs, op, deprecated=_version_tuple(state.version) >= (10, 12))

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Sequence[int], opt: Sequence[int], hi: Sequence[int]) -> None:
            state.record("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        def get_shape(self, name: str) -> list[tuple]:
            return list(self.shapes[name])

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags: set[Any] = set()
            self.pools: dict[Any, int] = {}
            self.profiles: list[IOptimizationProfile] = []
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

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            if not isinstance(logger, ILogger):
                raise TypeError("Builder(): incompatible function arguments (logger must be a tensorrt.ILogger)")
            state.record("Builder")
            self.logger = logger
            self.platform_has_fast_int8 = True

        def create_network(self, flags: int = 0) -> FakeNetwork:
            state.record("create_network", flags)
            if not v10 and not flags & (1 << int(module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                raise AssertionError("stand-in TensorRT 8.x: an implicit-batch network cannot parse ONNX")
            return _Network(flags=flags)

        def create_builder_config(self) -> IBuilderConfig:
            state.record("create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: FakeNetwork, config: IBuilderConfig) -> Any:
            state.record("build_serialized_network")
            state.layer_precisions = {layer.name: (layer._precision, dict(layer._output_types))
                                      for layer in network._layers if layer._precision is not None or layer._output_types}
            if module.BuilderFlag.INT8 in config.flags:
                calibrator = config._calibrator
                if calibrator is not None:
                    inputs = {}
                    profile = config._calibration_profile or (config.profiles[0] if config.profiles else None)
                    for t in network._inputs:
                        shape = profile.shapes[t.name][1] if profile and t.name in profile.shapes else t.shape
                        dtype = {DataType.INT32: np.int32, DataType.INT64: np.int64}.get(t.dtype, np.float32)
                        inputs[t.name] = (shape, dtype)
                    result = drive(calibrator, inputs, trt_version=state.version)
                    state.drive_results.append(result)
                    if result.calibration_failed:
                        self.logger.log(Severity.ERROR, "Calibration failure occurred with no scaling factors detected.")
                        return None
                else:
                    ranged = [t for t in _all_tensors(network) if t.dynamic_range is not None]
                    if not ranged:
                        self.logger.log(Severity.ERROR, "Calibration failure occurred with no scaling factors detected.")
                        return None
            return bytes(b"STAND-IN PLAN: not a TensorRT engine\n")

    if not v10:
        Builder.build_engine = lambda self, network, config: None  # the implicit-batch era API, gone in 10.0

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    flags = ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] if not v11 else ["TF32"]
    BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)

    module.ILogger = ILogger
    module.Logger = Logger
    module.OnnxParser = OnnxParser
    module.Builder = Builder
    module.IBuilderConfig = IBuilderConfig
    module.IOptimizationProfile = IOptimizationProfile
    module.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    module.MemoryPoolType = MemoryPoolType
    module.BuilderFlag = BuilderFlag
    module.DataType = DataType
    module.float32, module.float16, module.int8, module.int32, module.bool = (
        DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.BOOL)


def _all_tensors(network: FakeNetwork) -> list[FakeTensor]:
    out = list(network._inputs)
    for layer in network._layers:
        out.extend(layer._outputs)
    return out


def make_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A stand-in `tensorrt` module for TensorRT `version`: 8.6 (EXPLICIT_BATCH needed, build_engine present),
    10.x (DeprecationWarnings from 10.1 on the calibration APIs), or 11.x (no calibrators, no dynamic ranges)."""
    v = _version_tuple(version)
    v10, v11 = v >= (10,), v >= (11,)
    deprecated = v >= (10, 1)
    module = types.ModuleType("tensorrt", "Stand-in; not TensorRT; results are never TensorRT results.")
    module.__version__ = version
    module.__standin__ = True
    state = _State(version)
    module._standin_state = state
    if not v11:
        for name, cls in _make_calibrator_classes(deprecated).items():
            setattr(module, name, cls)
        module.CalibrationAlgoType = CalibrationAlgoType
    _make_builder_api(module, state, deprecated, v10, v11)
    return module


def install(monkeypatch: Any, version: str = "10.3.0") -> types.ModuleType:
    """Put a stand-in `tensorrt` into sys.modules for one test (pytest's monkeypatch undoes it)."""
    module = make_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def state_of(module: types.ModuleType) -> _State:
    return module._standin_state


def tensor_names(network: FakeNetwork) -> list[str]:
    return [t.name for t in _all_tensors(network)]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
