"""Build an INT8 TensorRT engine (TensorRT 8.6 and 10.x) from ONNX, with a calibrator, with dynamic ranges, or with
a calibrator whose ranges are overridden for some tensors; and (any version with a parser) a strongly typed engine
from a Q/DQ model, TensorRT 11's only INT8 path.

The build can take minutes, so what can be checked first is checked first: a calibrator or ranges given, the
calibrator attached and of the right kind, its cache usable or its first batch producible, matching the calibration
shapes and of the type TensorRT reads. After the build, a failure inside a calibrator callback is re-raised before
any engine is written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._util import atomic_write
from .batches import read_dtype
from .calibrator import CalibratorCore, import_tensorrt, quiet_trt_deprecations
from ..errors import CalibrationError, DataError, MissingDependencyError, ModelError

__all__ = [
    "BuildResult", "KEEP_DTYPES", "build_engine", "build_qdq_engine", "explicit_batch_flags", "init_plugins",
    "keep_layer_precisions", "parse_shapes",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass
class BuildResult:
    """A serialized engine and what went into it."""

    plan: bytes
    engine_path: Path | None
    calibration_shapes: dict[str, Shape] = field(default_factory=dict)
    profile_shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    batches_fed: int | None = None  # batches TensorRT calibrated on in this build (0 when a cache was used)
    ranges_report: Any = None
    trt_version: str = ""
    log: list[str] = field(default_factory=list)
    cache_used: bool = False  # the calibrator handed TensorRT a cache instead of batches
    kept_layers: dict[str, list[str]] = field(default_factory=dict)  # keep_precision: node's layer -> layers set


def parse_shapes(text: str) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Parse ``name:1x3x224x224[,8x3x224x224,16x3x224x224][;name2:...]`` into name -> (min, opt, max).

    One shape means min = opt = max; three give the optimisation profile's min, opt and max.
    """
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, dims = part.rpartition(":")
        if not sep or not name:
            raise DataError(f"--shapes entry {part!r}: expected NAME:DxDxD[,DxDxD,DxDxD]")
        try:
            shapes = [tuple(int(d) for d in s.strip().lower().split("x")) for s in dims.split(",")]
        except ValueError:
            raise DataError(f"--shapes entry {part!r}: dims must be integers joined by 'x' (e.g. 1x3x224x224)") from None
        if len(shapes) == 1:
            shapes = shapes * 3
        if len(shapes) != 3:
            raise DataError(f"--shapes entry {part!r}: give one shape or three (min,opt,max), not {len(shapes)}")
        out[name] = (shapes[0], shapes[1], shapes[2])
    if not out:
        raise DataError(f"--shapes {text!r}: no shapes given")
    return out


def explicit_batch_flags(trt: Any, builder: Any) -> int:
    """Network creation flags: EXPLICIT_BATCH on TensorRT 8.x; 0 on 10.x, where networks are always explicit batch.

    Detected by the builder's implicit-batch-era `build_engine`, which TensorRT 10.0 removed together with
    implicit batch (the flag is deprecated and ignored there, and gone in 11).
    """
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
    if flag is None or not hasattr(builder, "build_engine"):
        return 0
    return 1 << int(flag)


def make_logger(trt: Any, verbose: bool) -> Any:
    """A TensorRT logger that forwards to Python logging and keeps the errors for our exception messages."""
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.lines: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if int(level) <= int(severity.ERROR):
                self.errors.append(msg)
                logger.error("TensorRT: %s", msg)
            elif int(level) == int(severity.WARNING):
                logger.warning("TensorRT: %s", msg)
            elif int(level) == int(severity.INFO):
                (logger.info if verbose else logger.debug)("TensorRT: %s", msg)
            else:
                logger.debug("TensorRT: %s", msg)
            self.lines.append(msg)

    return _Logger()


def init_plugins(trt: Any, trt_logger: Any) -> None:
    """Register TensorRT's plugin library (EfficientNMS_TRT, BatchedNMSDynamic_TRT, ...) before any ONNX parser.

    Since 10.0 the ONNX parser no longer does it itself (onnx/onnx-tensorrt `ModelImporter.cpp` called
    `initLibNvInferPlugins` up to 9.x); Polygraphy calls it right before creating the parser
    (NVIDIA/TensorRT `tools/Polygraphy/polygraphy/backend/trt/loader.py`) and NVIDIA's samples before the builder
    (`samples/python/efficientdet/build_engine.py`). Calling it on 8.6 too is harmless.
    """
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is None:
        logger.warning("this tensorrt has no init_libnvinfer_plugins: models with TensorRT plugins will not parse")
        return
    if not init(trt_logger, ""):
        logger.warning("init_libnvinfer_plugins reported a failure: models with TensorRT plugins may not parse")


def _parse_onnx(trt: Any, network: Any, trt_logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, trt_logger)
    logged = len(trt_logger.errors)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(str(onnx_path))
    else:
        ok = parser.parse(onnx_path.read_bytes())
    if ok:
        return parser
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        errors.append(f"{where}: {err.desc()}")
    if not errors:
        # parse() can fail with num_errors == 0: some failures are only logged (onnx/onnx-tensorrt ModelImporter.cpp:
        # "Failed to parse ONNX model from file", "Parse was called with a non-empty network definition")
        errors = [f"TensorRT logged: {line}" for line in trt_logger.errors[logged:]]
    details = "\n  ".join(errors) if errors else "no details from the parser or TensorRT's log"
    raise ModelError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  {details}")


def _network_inputs(network: Any) -> list[tuple[str, Shape, str]]:
    out = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dtype = getattr(t.dtype, "name", None) or str(t.dtype).rpartition(".")[2]
        out.append((t.name, tuple(int(d) for d in t.shape), str(dtype).upper()))
    return out


def _check_profile_shape(name: str, declared: Shape, shapes: tuple[Shape, Shape, Shape]) -> None:
    for label, shape in zip(("min", "opt", "max"), shapes):
        if len(shape) != len(declared):
            raise DataError(f"shapes[{name!r}] {label} {shape} has rank {len(shape)}, the input has {len(declared)}")
        for axis, (want, got) in enumerate(zip(declared, shape)):
            if want >= 0 and want != got:
                raise DataError(f"shapes[{name!r}] {label} {shape}: dim {axis} is fixed to {want} by the model")
    lo, opt, hi = (np.array(s) for s in shapes)
    if not (np.all(lo <= opt) and np.all(opt <= hi) and np.all(lo >= 1)):
        raise DataError(f"shapes[{name!r}] needs 1 <= min <= opt <= max in every dim, got {shapes}")


def _trt_read_dtype(trt_type: str) -> np.dtype:
    """What TensorRT reads from the calibration buffer of a network input of TensorRT type `trt_type`."""
    return read_dtype({"INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}.get(trt_type, np.float32))


def _calibrator_cache(calibrator: Any) -> bytes | None:
    """The cache a trt-calib calibrator will hand TensorRT (from its file, or kept from an earlier build), checked
    now so that a cache of another algorithm stops the build before it starts; None when TensorRT will calibrate."""
    core = getattr(calibrator, "_core", None)
    if not isinstance(core, CalibratorCore):
        return None
    cached = core.read_calibration_cache()
    core.raise_if_failed()  # a cache of another algorithm: say so now, not after the build
    return cached


def _preflight_calibrator(trt: Any, calibrator: Any, inputs: list[tuple[str, Shape, str]],
                          calib_shapes: Mapping[str, Shape], cached: bytes | None) -> None:
    """Before the long build: the calibrator is a TensorRT calibrator and its first batch fits the network."""
    if not isinstance(calibrator, trt.IInt8Calibrator):
        raise CalibrationError(
            f"calibrator is a {type(calibrator).__name__}, not a tensorrt.IInt8Calibrator. "
            "Hint: use trt_calib.calibrator.EntropyCalibrator2 (or make_calibrator)"
        )
    core = getattr(calibrator, "_core", None)
    if not isinstance(core, CalibratorCore):
        logger.info("calibrator is not a trt-calib calibrator: skipping the first-batch preflight")
        return
    if cached is not None:
        logger.info("the calibrator has a matching calibration cache: TensorRT will use it and ask for no batches")
        return
    names = [name for name, _, _ in inputs]
    batch = core.peek(names)  # raises DataError naming the input and batch; converted to what TensorRT reads
    for name, _, trt_type in inputs:
        shape = tuple(int(d) for d in batch[name].shape)
        want = calib_shapes[name]
        if shape != want:
            raise DataError(
                f"calibration batch 0: input {name!r} has shape {shape} but TensorRT calibrates at {want} "
                "(the calibration profile's OPT shape, or the static shape). Hint: make the batches that shape, "
                "or set the OPT shape with shapes={name: (min, opt, max)}"
            )
        got = core.dtypes.get(name)
        reads = _trt_read_dtype(trt_type)
        if got != reads:
            raise DataError(
                f"calibration batch 0: input {name!r} is {got}, but the network input is {trt_type} and TensorRT "
                f"reads {reads} for it (INT32, INT64 and BOOL inputs as they are, every other input as float32). "
                f"Hint: pass input_specs=model_inputs(model) so the calibrator knows the input types"
            )


def _default_shape(declared: Shape) -> Shape:
    """trtexec's shape for a dynamic input given no shapes: every dynamic dim 1 (NVIDIA/TensorRT
    `samples/common/sampleEngines.cpp`: "Dynamic dimensions required for input ... Automatically overriding shape")."""
    return tuple(d if d >= 0 else 1 for d in declared)


#: Precisions `keep_layer_precisions` can keep layers in, by trtexec's names.
KEEP_DTYPES = {"fp16": "float16", "fp32": "float32"}
_FLOAT_OUTPUTS = ("FLOAT", "HALF", "BF16")


def _parser_layer_names(onnx_path: Path) -> set[str]:
    """The name TensorRT's ONNX parser gives each node's first layer: the node's name, or node_of_<first output>
    (onnx-tensorrt getNodeName; qdq.graph.tensorrt_layer_name says the same for the layers above this one)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {n.name or (f"node_of_{n.output[0]}" if n.output else "") for n in graph.node}


def _owner(layer_name: str, wanted: set[str], node_layers: set[str]) -> str | None:
    """Which wanted node's layer this is: its exact name, or `<name>_<N>`, the name the parser gives a node's further
    layers (one counter for the whole import), unless `<name>_<N>` is the first layer of another node."""
    if layer_name in wanted:
        return layer_name
    base, sep, suffix = layer_name.rpartition("_")
    if sep and suffix.isdigit() and base in wanted and layer_name not in node_layers:
        return base
    return None


def keep_layer_precisions(trt: Any, network: Any, config: Any, layers: Sequence[str], dtype: str = "fp16", *,
                          node_layers: set[str] | None = None) -> dict[str, list[str]]:
    """Keep the layers TensorRT's ONNX parser made for some nodes out of INT8: `layer.precision` and the type of each
    float output set to `dtype`, and BuilderFlag.OBEY_PRECISION_CONSTRAINTS so the build fails rather than ignore it.

    `layers` are the nodes' parser layer names (node name, or node_of_<output>); layers named `<name>_<N>` are the same
    node's further layers. Constant layers (weights) are left alone. Returns name -> the layers set; a name matching
    no layer is a ModelError before the build. TensorRT 8.6-10.x (deprecated in 10.12, removed in 11).
    """
    if dtype not in KEEP_DTYPES:
        raise DataError(f"keep dtype must be one of {', '.join(KEEP_DTYPES)}, got {dtype!r}")
    flags = getattr(trt, "BuilderFlag", None)
    if not hasattr(flags, "OBEY_PRECISION_CONSTRAINTS"):
        raise MissingDependencyError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no precision constraints (TensorRT 11 removed "
            "layer.precision and OBEY_PRECISION_CONSTRAINTS). Hint: leave the nodes out of the Q/DQ model instead: "
            "trt-calib quantize --exclude-nodes-from SENS.json"
        )
    target = getattr(trt, KEEP_DTYPES[dtype])
    wanted = set(layers)
    found: dict[str, list[str]] = {name: [] for name in layers}
    constant = getattr(getattr(trt, "LayerType", None), "CONSTANT", None)
    with quiet_trt_deprecations():
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            owner = _owner(layer.name, wanted, node_layers or set())
            if owner is None or (constant is not None and layer.type == constant):
                continue
            layer.precision = target
            for j in range(layer.num_outputs):
                kind = getattr(layer.get_output(j).dtype, "name", "")
                if kind.upper() in _FLOAT_OUTPUTS:  # shape and index outputs must stay integers
                    layer.set_output_type(j, target)
            found[owner].append(layer.name)
        missing = [name for name, hit in found.items() if not hit]
        if missing:
            raise ModelError(
                f"no TensorRT layer is named after node(s) {', '.join(repr(n) for n in missing[:5])}: the ONNX parser "
                "names a node's layers after the node (node_of_<output> when unnamed). Hint: check the names against "
                "the model the engine is built from"
            )
        config.set_flag(flags.OBEY_PRECISION_CONSTRAINTS)
    return found


def build_engine(
    onnx_path: str | os.PathLike,
    *,
    calibrator: Any = None,
    ranges: Any = None,
    engine_path: str | os.PathLike | None = None,
    fp16: bool = True,
    workspace: int = 4 << 30,
    shapes: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]] | None = None,
    range_policy: str = "symmetric",
    verbose: bool = False,
    keep_precision: Sequence[str] | None = None,
    keep_dtype: str = "fp16",
) -> BuildResult:
    """Build an INT8 engine from `onnx_path` with `calibrator` (a TensorRT calibrator), `ranges` (a cache, a
    mapping name -> amax or a CalibrationResult, applied with set_dynamic_range), or both: then TensorRT calibrates
    and the ranges override the calibrated ones for the tensors they name, as sampleINT8API documents
    (NVIDIA/TensorRT `samples/sampleINT8API/README.md`: "manual dynamic range will override calibration generate
    dynamic range/scale"). For TensorRT 8.6 and 10.x.

    Dynamic inputs need `shapes` name -> (min, opt, max); calibration runs at OPT. Without `shapes`, dynamic
    inputs take the calibrator's first batch shape for min, opt and max (logged); when the calibrator has a cache
    and no batch, every dynamic dim is 1, as trtexec does (logged). FP16 is enabled too (`fp16`) so layers TensorRT
    keeps out of INT8 need not fall back to FP32. The plan is written atomically to `engine_path`.

    `keep_precision`: parser layer names of nodes to keep out of INT8, in `keep_dtype` ("fp16" or "fp32"), with
    OBEY_PRECISION_CONSTRAINTS (`keep_layer_precisions`); typically the top of a `trt-calib sensitivity` ranking.
    """
    onnx_path = Path(onnx_path)
    if keep_precision and keep_dtype == "fp16" and not fp16:
        raise DataError("keeping layers in fp16 needs the FP16 builder flag: drop fp16=False (--no-fp16) or keep "
                        "them in fp32")
    if calibrator is None and ranges is None:
        raise CalibrationError("an INT8 build needs a calibrator or ranges (set_dynamic_range); got neither")
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX model")
    trt = import_tensorrt("building an INT8 engine")
    if not hasattr(getattr(trt, "BuilderFlag", None), "INT8"):
        raise MissingDependencyError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no BuilderFlag.INT8: TensorRT 11 removed implicit INT8 "
            "(calibrators and dynamic ranges). Hint: run `trt-calib quantize` for a Q/DQ ONNX model and build it "
            "strongly typed"
        )
    if calibrator is not None and not hasattr(trt, "IInt8Calibrator"):
        raise MissingDependencyError(f"TensorRT {trt.__version__} has no calibrators. Hint: use `trt-calib quantize`")

    trt_logger = make_logger(trt, verbose)
    init_plugins(trt, trt_logger)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(explicit_batch_flags(trt, builder))
    parser = _parse_onnx(trt, network, trt_logger, onnx_path)  # noqa: F841  owns the weights: keep it until built
    inputs = _network_inputs(network)
    input_names = {name for name, _, _ in inputs}
    shapes = {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in (shapes or {}).items()}
    unknown = sorted(set(shapes) - input_names)
    if unknown:
        raise DataError(f"shapes name {unknown}, which are not network inputs {sorted(input_names)}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    else:
        config.max_workspace_size = int(workspace)
    with quiet_trt_deprecations():
        if not getattr(builder, "platform_has_fast_int8", True):
            logger.warning("this GPU has no fast INT8: the engine may run slower than FP16")
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)

    core = getattr(calibrator, "_core", None)
    core = core if isinstance(core, CalibratorCore) else None
    cached = _calibrator_cache(calibrator) if calibrator is not None else None
    profile_shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    calib_shapes: dict[str, Shape] = {}
    dynamic = [(n, s) for n, s, _ in inputs if any(d < 0 for d in s)]
    for name, declared in dynamic:
        if name in shapes:
            chosen = shapes[name]
        else:
            if core is None:
                raise DataError(
                    f"input {name!r} has dynamic shape {declared}; pass shapes={{{name!r}: (min, opt, max)}}"
                )
            first = _first_batch_shape(core, [n for n, _, _ in inputs], name, cached is not None)
            if first is None:
                first = _default_shape(declared)
                logger.warning(
                    "input %r has dynamic shape %s, no shapes were given and the calibration cache needs no batch: "
                    "building for %s only (every dynamic dim 1, as trtexec does). Hint: pass shapes={name: (min, "
                    "opt, max)}", name, declared, first,
                )
            else:
                logger.warning(
                    "input %r has dynamic shape %s and no shapes were given: building for the calibration batch "
                    "shape %s only. Hint: pass shapes={name: (min, opt, max)}", name, declared, first,
                )
            chosen = (first, first, first)
        _check_profile_shape(name, declared, chosen)
        profile_shapes[name] = chosen
    for name, declared, _ in inputs:
        calib_shapes[name] = profile_shapes[name][1] if name in profile_shapes else declared
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        if calibrator is not None:
            with quiet_trt_deprecations():
                config.set_calibration_profile(profile)  # calibration runs at OPT

    kept_layers: dict[str, list[str]] = {}
    if keep_precision:
        kept_layers = keep_layer_precisions(trt, network, config, keep_precision, keep_dtype,
                                            node_layers=_parser_layer_names(onnx_path))
        logger.info("kept %d node(s) out of INT8 in %s: %s", len(kept_layers), keep_dtype,
                    ", ".join(f"{n} ({len(v)} layer(s))" for n, v in kept_layers.items()))

    ranges_report = None
    if calibrator is not None:
        _preflight_calibrator(trt, calibrator, inputs, calib_shapes, cached)
    if ranges is not None:
        from .ranges import apply_dynamic_ranges, range_names

        # With a calibrator, the ranges are overrides: only the tensors they name get one (the calibrator gives
        # the rest); without, every tensor with a range gets it and constants get theirs from their weights.
        only = range_names(ranges) if calibrator is not None else None
        ranges_report = apply_dynamic_ranges(network, ranges, policy=range_policy, only=only)
    if calibrator is not None:
        with quiet_trt_deprecations():
            config.int8_calibrator = calibrator
            attached = config.int8_calibrator
        if attached is None:
            raise CalibrationError("the calibrator did not attach to the builder config (config.int8_calibrator)")

    with quiet_trt_deprecations():
        if not config.get_flag(trt.BuilderFlag.INT8):
            raise CalibrationError("the INT8 builder flag did not stick (config.get_flag(BuilderFlag.INT8) is False)")
    logger.info("building the INT8 engine for %s (TensorRT %s); this can take minutes", onnx_path, trt.__version__)
    fed_before = core.batches_fed if core is not None else 0
    plan = builder.build_serialized_network(network, config)
    if calibrator is not None and hasattr(calibrator, "raise_if_failed"):
        calibrator.raise_if_failed()  # before anything is written: the engine may come from partial data
    if plan is None:
        errors = "\n  ".join(trt_logger.errors[-10:]) or "(TensorRT logged no error)"
        raise CalibrationError(f"TensorRT could not build the engine for {onnx_path}. TensorRT said:\n  {errors}")
    data = memoryview(plan).tobytes()
    cache_used = bool(core is not None and core.cache_used)
    result = BuildResult(
        plan=data,
        engine_path=None,
        calibration_shapes=calib_shapes,
        profile_shapes=profile_shapes,
        batches_fed=None if core is None else (0 if cache_used else core.batches_fed - fed_before),
        ranges_report=ranges_report,
        trt_version=str(getattr(trt, "__version__", "")),
        log=list(trt_logger.lines),
        cache_used=cache_used,
        kept_layers=kept_layers,
    )
    if engine_path is not None:
        result.engine_path = atomic_write(engine_path, data)
        logger.info("wrote %s (%d bytes)", result.engine_path, len(data))
    return result


def _first_batch_shape(core: CalibratorCore, names: list[str], name: str, cached: bool) -> Shape | None:
    """The shape of input `name` in the calibrator's first batch; with a cache, None when there is no batch to see
    (TensorRT will not ask for one)."""
    known = core.feed.first_shapes.get(name)
    if known is not None:
        return tuple(int(d) for d in known)
    if not cached:
        return tuple(int(d) for d in core.peek(names)[name].shape)
    if core.feed.exhausted:
        return None
    try:
        return tuple(int(d) for d in core.peek(names)[name].shape)
    except DataError:
        return None


def build_qdq_engine(
    onnx_path: str | os.PathLike,
    *,
    engine_path: str | os.PathLike | None = None,
    workspace: int = 4 << 30,
    shapes: Mapping[str, Sequence[int]] | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Build a strongly typed engine from a Q/DQ ONNX model (what `trt-calib quantize` writes): INT8 comes from the
    QuantizeLinear/DequantizeLinear nodes alone, with no precision flag and no calibrator. TensorRT 11 has no other
    INT8 path; 10.x gets the STRONGLY_TYPED flag; 8.6 (no strong typing) gets explicit batch and BuilderFlag.INT8,
    which its explicit quantization needs. Dynamic inputs need `shapes` name -> shape (min = opt = max)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX model")
    trt = import_tensorrt("building a Q/DQ engine")
    trt_logger = make_logger(trt, verbose)
    init_plugins(trt, trt_logger)
    builder = trt.Builder(trt_logger)
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = getattr(creation, "STRONGLY_TYPED", None)
    flags = explicit_batch_flags(trt, builder)
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if strongly_typed is not None and major < 11:  # deprecated and ignored in 11: always strongly typed
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = _parse_onnx(trt, network, trt_logger, onnx_path)  # noqa: F841  owns the weights: keep it until built
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if strongly_typed is None and hasattr(getattr(trt, "BuilderFlag", None), "INT8"):
        with quiet_trt_deprecations():
            config.set_flag(trt.BuilderFlag.INT8)
    shapes = dict(shapes or {})
    profile_shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, declared, _ in _network_inputs(network):
        if any(d < 0 for d in declared):
            if name not in shapes:
                raise DataError(f"input {name!r} has dynamic shape {declared}; pass shapes={{{name!r}: shape}}")
            shape = tuple(int(d) for d in shapes[name])
            _check_profile_shape(name, declared, (shape, shape, shape))
            profile_shapes[name] = (shape, shape, shape)
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    logger.info("building the strongly typed Q/DQ engine for %s (TensorRT %s)", onnx_path, trt.__version__)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = "\n  ".join(trt_logger.errors[-10:]) or "(TensorRT logged no error)"
        raise CalibrationError(f"TensorRT could not build the engine for {onnx_path}. TensorRT said:\n  {errors}")
    data = memoryview(plan).tobytes()
    result = BuildResult(plan=data, engine_path=None, profile_shapes=profile_shapes,
                         trt_version=str(getattr(trt, "__version__", "")), log=list(trt_logger.lines))
    if engine_path is not None:
        result.engine_path = atomic_write(engine_path, data)
    return result
