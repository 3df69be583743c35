"""`trt-calib build`: an INT8 engine for TensorRT 8.6-10.x with trt-calib's calibrator.

`register(subparsers)` adds the command (handler `run_build`). TensorRT is imported only when an engine is really
built; `--dry-run` drives the calibrator on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError, UsageError
from ._common import (
    add_device_argument,
    add_data_arguments,
    add_json_flag,
    calibrator_dry_run,
    checked_by,
    data_path,
    finite_float,
    guard_paths,
    model_inputs_of,
    model_paths,
    non_negative_int,
    open_data,
    print_json,
)

__all__ = ["register", "run_build"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib build MODEL.onnx --data D --engine OUT.plan [...]`; its handler is `run_build`."""
    from ..trt.calibrator import ALGORITHMS

    p = subparsers.add_parser(
        "build",
        help="build an INT8 TensorRT engine (TensorRT 8.6-10.x) with a calibrator fed from your data",
        description="Build an INT8 TensorRT engine from an ONNX model with trt-calib's calibrator: checks the first "
        "batch before the long build, and fails loudly (no engine, no cache) if any batch fails. "
        "--dry-run drives the calibrator on the CPU and builds nothing (no TensorRT, no GPU needed).",
    )
    p.add_argument("model", help="ONNX model (MODEL.onnx)")
    add_data_arguments(p, required=False)
    p.add_argument("--engine", help="where to write the serialized engine (required unless --dry-run)")
    p.add_argument("--cache", help="calibration cache: used if it exists and matches the algorithm, else written")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default="entropy2",
                   help="TensorRT calibrator (default: entropy2 = IInt8EntropyCalibrator2)")
    add_device_argument(p)
    p.add_argument("--shapes", type=checked_by(_parse_shapes, "shapes"), help="shapes for dynamic inputs: "
                   "NAME:MINxDIMS,OPTxDIMS,MAXxDIMS[;NAME2:...]; calibration runs at OPT")
    p.add_argument("--no-fp16", action="store_true", help="do not enable FP16 for layers that stay out of INT8")
    p.add_argument("--workspace", type=finite_float(0, 1 << 20, lo_open=True), default=4.0,
                   help="builder workspace in GiB (default: 4)")
    p.add_argument("--override-ranges", metavar="FILE",
                   help="calibrate, then override these tensors' ranges: a JSON object {tensor: amax} (as `trt-calib "
                   "convert --to json` writes) or a calibration cache. TensorRT documents that set ranges override "
                   "calibrated ones (sampleINT8API)")
    p.add_argument("--cross-check", action="store_true",
                   help="recompute the calibration on the CPU from the same batches and compare per tensor")
    p.add_argument("--dry-run", action="store_true",
                   help="drive the calibrator on the CPU (host memory) to check the data; build nothing")
    keep = p.add_argument_group("mixed precision (TensorRT 8.6-10.x)")
    keep.add_argument("--keep-precision", metavar="SENS.json|N1,N2",
                      help="keep these nodes out of INT8: the top units of a `trt-calib sensitivity` file (how many: "
                      "--keep) or node names; sets layer.precision and output types of the layers TensorRT makes "
                      "from them, and OBEY_PRECISION_CONSTRAINTS")
    keep.add_argument("--keep", type=non_negative_int, metavar="K",
                      help="with a SENS.json: the top K units (default: the k the sensitivity run chose)")
    keep.add_argument("--keep-dtype", choices=("fp16", "fp32"), default="fp16",
                      help="precision of the kept layers (default fp16)")
    add_json_flag(p)
    p.set_defaults(handler=run_build)
    return p


def _parse_shapes(text: str) -> object:
    from ..trt.build import parse_shapes

    return parse_shapes(text)


def run_build(args: argparse.Namespace) -> int:
    """The `build` command: returns the exit code; user errors raise TrtCalibError (printed by the CLI)."""
    from ..trt.build import build_engine
    from ..trt.calibrator import make_calibrator

    model = Path(args.model)
    if args.dry_run and args.data is None:
        raise DataError("--dry-run checks the calibration data: pass --data")
    if not args.dry_run and not args.engine:
        raise DataError("build needs --engine OUT.plan (or --dry-run to only check the data)")
    if args.data is None and not (args.cache and Path(args.cache).is_file()):
        raise DataError("build needs --data (or an existing --cache to reuse). Hint: --data calib.npz")
    shapes = args.shapes
    guard_paths(inputs={"MODEL": model_paths(model), "--data": data_path(args.data),
                        "--override-ranges": args.override_ranges,
                        "--keep-precision": args.keep_precision if args.keep_precision and Path(args.keep_precision).is_file() else None},
                outputs={"--engine": None if args.dry_run else args.engine, "--cache": args.cache})
    overrides = _load_overrides(args.override_ranges) if args.override_ranges else None
    kept = _kept_layers(args, model)
    inputs = model_inputs_of(model)
    source = open_data(args, inputs) if args.data is not None else []
    inputs = list(getattr(source, "inputs", inputs))  # with the batch axes --batch-axis gave
    if args.dry_run:
        return calibrator_dry_run(source, inputs, algorithm=args.algorithm, cache=args.cache,
                                  max_batches=args.max_batches, json_result=bool(args.json))
    calibrator = make_calibrator(
        source, args.algorithm, cache_file=args.cache, device=args.device, input_specs=inputs,
        max_batches=args.max_batches, cross_check=model if args.cross_check else None,
    )
    with calibrator:
        result = build_engine(
            model, calibrator=calibrator, ranges=overrides, engine_path=args.engine, fp16=not args.no_fp16,
            workspace=int(args.workspace * (1 << 30)), shapes=shapes,
            keep_precision=list(kept.values()) or None, keep_dtype=args.keep_dtype,
        )
    if args.json:
        print_json({"engine": str(result.engine_path), "bytes": len(result.plan), "trt_version": result.trt_version,
                    "batches_fed": result.batches_fed, "cache_used": bool(calibrator.cache_used),
                    "cache": args.cache,
                    "cross_check": None if calibrator.cross_check_result is None
                    else calibrator.cross_check_result.summary()})
        return 0
    fed = "a cache (no batches)" if calibrator.cache_used else f"{result.batches_fed} calibration batch(es)"
    print(f"wrote {result.engine_path} ({len(result.plan)} bytes, TensorRT {result.trt_version}) from {fed}")
    if args.cache and not calibrator.cache_used:
        print(f"wrote calibration cache {args.cache}")
    if result.ranges_report is not None:
        print(f"overrode the calibrated range of {len(result.ranges_report.applied)} tensor(s) from "
              f"{args.override_ranges}")
    if calibrator.cross_check_result is not None:
        print(calibrator.cross_check_result.summary())
    if calibrator.cross_check_error is not None:
        error = calibrator.cross_check_error
        print(f"the cross-check could not run: {type(error).__name__}: {error} (the engine and cache are kept)")
    for node, layers in result.kept_layers.items():
        print(f"kept in {args.keep_dtype}: {node} (layers {', '.join(layers)})")
    return 0


def _load_overrides(path: str) -> dict[str, float]:
    """{tensor: amax} from a JSON object or a calibration cache; DataError naming the file otherwise."""
    from .._util import read_bounded, read_json
    from ..core.cache import CalibrationCache
    from ..errors import CacheFormatError

    try:
        text = read_bounded(path, 256 << 20, kind="range file", error=DataError).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--override-ranges {path}: cannot read it ({exc})") from None
    if text.lstrip().startswith("{"):
        data = read_json(path, limit=256 << 20, kind="--override-ranges JSON", error=DataError, unique_keys=True)
        out = {}
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"--override-ranges {path}: tensor {name!r} has amax {value!r}, not a number")
            out[str(name)] = float(value)
        if not out:
            raise DataError(f"--override-ranges {path}: no tensors")
        return out
    try:
        return CalibrationCache.parse(text, source=path).amaxes()
    except CacheFormatError as exc:
        raise DataError(f"--override-ranges {path}: neither a JSON object nor a calibration cache ({exc})") from None


def _kept_layers(args: argparse.Namespace, model: Path) -> dict[str, str]:
    """--keep-precision as node -> the TensorRT layer the ONNX parser names after it (checked against the model)."""
    from ..qdq.sensitivity import layer_names_for, load_sensitivity

    spec = args.keep_precision
    if spec is None:
        if args.keep is not None:
            raise UsageError("--keep K picks the top K units of --keep-precision SENS.json: give that too")
        return {}
    if args.keep_dtype == "fp16" and args.no_fp16:
        raise UsageError("--keep-dtype fp16 needs FP16 enabled: drop --no-fp16, or use --keep-dtype fp32")
    if spec.lower().endswith(".json") or Path(spec).is_file():
        nodes = load_sensitivity(spec).kept(args.keep)
        if not nodes:
            raise UsageError(f"--keep-precision {spec}: keeps no unit (k = 0). Hint: pass --keep K")
    else:
        if args.keep is not None:
            raise UsageError("--keep goes with --keep-precision SENS.json, not with a list of nodes")
        nodes = [n.strip() for n in spec.split(",") if n.strip()]
        if not nodes:
            raise UsageError("--keep-precision: no node names given")
    return layer_names_for(model, nodes)
