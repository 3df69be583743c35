#!/usr/bin/env python3
"""Build a strongly typed TensorRT 11 engine from a Q/DQ ONNX model (what `trt-calib quantize` writes).

TensorRT 11 has no INT8 builder flag and no calibrator: the QuantizeLinear/DequantizeLinear nodes in the graph alone
decide what runs in INT8, and every network is strongly typed. So this builds with no precision flags at all:
trt.Builder -> create_network(0) -> OnnxParser -> build_serialized_network. TensorRT 10.x gets a strongly typed
network explicitly (the flag exists there), which gives the same explicit-quantisation build. TensorRT 8.6 has no
strong typing: it gets an explicit-batch network (its ONNX parser accepts nothing else) and the INT8 builder flag,
which 8.x needs for any quantization ("To enable any quantization operations, the INT8 flag must be set in the
builder configuration", TensorRT 8.x Developer Guide, "Working with INT8").

The plugin library (EfficientNMS_TRT, ...) is registered before the parser: since TensorRT 10.0 the ONNX parser no
longer does it itself (NVIDIA/TensorRT Polygraphy `backend/trt/loader.py` does the same).

Example:
    trt-calib quantize model.onnx --from-cache model.cache -o model.qdq.onnx
    python samples/build_qdq_engine_trt11.py model.qdq.onnx -o model.engine --layer-info layers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition(":")
    if not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME:DxDxD, e.g. input:8x3x224x224, got {text!r}")
    try:
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions must be integers separated by 'x'") from None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a strongly typed TensorRT 11 engine from a Q/DQ ONNX model, with no precision flags "
        "(INT8 comes from the Q/DQ nodes alone).",
        epilog="TensorRT is imported only when building: pip install tensorrt (11.x; 10.x works too).",
    )
    parser.add_argument("model", help="Q/DQ ONNX model, e.g. from trt-calib quantize")
    parser.add_argument("-o", "--engine", required=True, help="serialized engine to write")
    parser.add_argument("--shape", action="append", type=_parse_shape, default=[], metavar="NAME:DxD...",
                        help="fixed shape for a dynamic input (min = opt = max); repeat per input")
    parser.add_argument("--workspace-mib", type=int, default=2048, help="workspace memory pool limit (default 2048)")
    parser.add_argument("--layer-info", metavar="OUT.json",
                        help="also write TensorRT's per-layer engine information (precisions, fusions) as JSON")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    args = parser.parse_args(argv)

    try:
        import tensorrt as trt
    except ImportError as exc:
        print(f"error: tensorrt cannot be imported ({exc}). Hint: pip install tensorrt (TensorRT 11.x)", file=sys.stderr)
        return 2

    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # before the parser: it no longer registers them (TensorRT >= 10)
    builder = trt.Builder(logger)
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    explicit_batch = getattr(creation, "EXPLICIT_BATCH", None)  # gone in 11; ignored in 10; needed by 8.x
    if explicit_batch is not None and hasattr(builder, "build_engine"):  # 8.x: the implicit-batch era API exists
        flags |= 1 << int(explicit_batch)
    major = int(trt.__version__.split(".")[0])
    strongly_typed = getattr(creation, "STRONGLY_TYPED", None)
    if major < 11 and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)  # TensorRT 11 is always strongly typed and takes no flag
    network = builder.create_network(flags)
    onnx_parser = trt.OnnxParser(network, logger)
    if not onnx_parser.parse_from_file(str(args.model)):
        for i in range(onnx_parser.num_errors):
            print(f"error: {args.model}: {onnx_parser.get_error(i)}", file=sys.stderr)
        if not onnx_parser.num_errors:
            print(f"error: {args.model}: TensorRT's ONNX parser failed (see its log above)", file=sys.stderr)
        return 1

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    if strongly_typed is None and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # 8.x: Q/DQ layers need it
    if args.layer_info:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    shapes = dict(args.shape)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        missing = [t.name for t in dynamic if t.name not in shapes]
        if missing:
            print(f"error: dynamic input(s) {', '.join(missing)} need --shape NAME:DxD...", file=sys.stderr)
            return 2
        profile = builder.create_optimization_profile()
        for t in dynamic:
            profile.set_shape(t.name, shapes[t.name], shapes[t.name], shapes[t.name])
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        print("error: TensorRT could not build the engine (see its log above)", file=sys.stderr)
        return 1
    _write_atomically(Path(args.engine), bytes(serialized))
    print(f"wrote {args.engine} ({serialized.nbytes} bytes, TensorRT {trt.__version__})")

    if args.layer_info:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        _write_atomically(Path(args.layer_info), (json.dumps(info, indent=2) + "\n").encode())
        layers = info.get("Layers", [])
        # Format strings spell it "Int8" and "INT8" (TensorRT trt-engine-explorer `trex/activations.py`); 11.x splits
        # "Format/Datatype" into "Format" and "DataType". Polygraphy matches case-insensitively too.
        int8 = [layer for layer in layers
                if isinstance(layer, dict) and "INT8" in json.dumps(layer.get("Inputs", [])).upper()]
        print(f"{len(layers)} layers, {len(int8)} with an INT8 input; details in {args.layer_info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
