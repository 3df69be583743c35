"""`trt-calib qdq-to-cache`: a Q/DQ ONNX model (ModelOpt, QAT exports, `quantize`) back to a plain ONNX model plus
the TensorRT calibration cache holding its scales, for implicit INT8 builds (TensorRT 8.6-10.x, DLA).

Exit status: 0 converted; 1 converted with findings (pairs on one tensor with different scales); 2 usage or input
error; 3 the model holds Q/DQ nodes implicit TensorRT cannot express (nothing written, every node listed).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ._common import (
    add_data_arguments,
    add_json_flag,
    data_path,
    guard_paths,
    model_paths,
    open_data,
    positive_int,
    print_json,
    resolve_trt_version,
    trt_version_arg,
    write_output,
)

__all__ = ["register"]

log = logging.getLogger(__name__)

EXIT_REFUSED = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `qdq-to-cache` subcommand."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..tools.entries import CALIBRATOR_NAMES

    p = subparsers.add_parser(
        "qdq-to-cache",
        help="turn a Q/DQ ONNX model into a plain ONNX model plus a TensorRT calibration cache (implicit INT8, DLA)",
        description="Remove the QuantizeLinear/DequantizeLinear pairs of a Q/DQ model and write each activation's "
        "scale, bit for bit, under the name of the tensor TensorRT sees in the plain model; quantised weights become "
        "float initializers holding the dequantised values. Refuses, naming the node, what implicit TensorRT cannot "
        "express (zero points on activations, uint8 activations unless --allow-asymmetric, per-channel activation "
        "scales, int4/fp8). Tensors without a pair take their neighbour's scale across ops that keep values "
        "(MaxPool, Reshape, Transpose, Flatten, ...) and Concat outputs their inputs' largest, as TensorRT's ties "
        "do. The plain model is checked, run in onnxruntime, and compared with --original when given. Exit status: "
        "0 done, 1 done with conflicting scales, 2 usage error, 3 refused (nothing written).",
    )
    p.add_argument("model", metavar="Q.onnx", help="the Q/DQ model")
    p.add_argument("--onnx", required=True, metavar="PLAIN.onnx", help="plain model to write (no Q/DQ nodes)")
    p.add_argument("--cache", required=True, metavar="OUT.cache", help="calibration cache to write")
    p.add_argument("--trt-version", type=trt_version_arg, default=None,
                   help="TensorRT version whose header the cache gets; TensorRT reads a cache only under its own "
                   f"version (default: the installed tensorrt's, else {DEFAULT_TRT_VERSION}, with a warning)")
    p.add_argument("--algorithm", choices=list(CALIBRATOR_NAMES), default="entropy2",
                   help="calibrator named in the header (default entropy2, EntropyCalibration2: trtexec --calib and DLA)")
    p.add_argument("--allow-asymmetric", action="store_true",
                   help="write uint8 / zero-point activation pairs as the symmetric range covering them (reports the "
                   "resolution it costs) instead of refusing them")
    p.add_argument("--no-propagate", action="store_true",
                   help="no scales across pass-through ops, ties or Concats (only the pairs' own, and those "
                   "quantize recorded)")
    p.add_argument("--no-recorded-scales", action="store_true",
                   help="ignore the scales `trt-calib quantize` recorded in the model's metadata (every scale of the "
                   "cache or calibration it was given, also those no pair carries: by default they come back bit "
                   "for bit when every pair still holds its recorded scale)")
    p.add_argument("--original", metavar="FP32.onnx",
                   help="the float model: compare its outputs with the plain model's (top-1 agreement, max |diff|) "
                   "and its weights with the dequantised ones")
    p.add_argument("--samples", type=positive_int, default=8,
                   help="random samples for the onnxruntime run when no --data is given (default 8)")
    add_data_arguments(p, required=False)
    add_json_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..core.cache import make_header
    from ..qdq.to_cache import (
        UnsupportedQdqError,
        compare_with_original,
        qdq_to_cache,
        random_batches,
        run_plain,
    )
    from ..tools.entries import CALIBRATOR_NAMES

    guard_paths(
        inputs={"Q.onnx": model_paths(args.model), "--original": model_paths(args.original),
                "--data": data_path(args.data)},
        outputs={"--onnx": args.onnx, "--cache": args.cache},
    )
    algorithm = CALIBRATOR_NAMES[args.algorithm]
    args.trt_version, trt_source = resolve_trt_version(args.trt_version)
    make_header(algorithm, args.trt_version)
    try:
        conv = qdq_to_cache(args.model, trt_version=args.trt_version, algorithm=algorithm,
                            allow_asymmetric=args.allow_asymmetric, propagate=not args.no_propagate,
                            original=args.original, recorded=not args.no_recorded_scales)
    except UnsupportedQdqError as exc:
        return _refused(args, exc)
    report = conv.report

    if args.data is not None:
        from ..ort.model import model_inputs

        batches: Any = open_data(args, model_inputs(conv.model))
        describe = f"--data {args.data}"
    else:
        batches = random_batches(conv.model, samples=args.samples)
        describe = f"{args.samples} random samples (N(0, 1), seed 0)"
    report.run = run_plain(conv.model, batches, describe=describe)
    if args.original:
        report.comparison = compare_with_original(conv.model, args.original, batches, describe=describe)

    from ..ort.model import serialize_model

    payload = serialize_model(conv.model, role=f"{args.onnx} (the plain model)")  # over 2 GiB: one line
    write_output(args.onnx, payload, what="plain model")
    write_output(args.cache, conv.cache.dumps().encode("ascii"), what="calibration cache")
    if args.json:
        doc = report.to_json()
        doc.update(model=str(args.model), onnx=str(args.onnx), cache=str(args.cache), refused=[],
                   trt_version=args.trt_version, trt_version_source=trt_source)
        print_json(doc)
    elif not getattr(args, "quiet", False):
        print(report.table())
    log.info("wrote %s and %s", args.onnx, args.cache)
    return report.exit_code


def _refused(args: argparse.Namespace, exc: Any) -> int:
    """Every refused node, as text or JSON; nothing is written."""
    if args.json:
        print_json({"model": str(args.model), "refused": [{"node": n, "reason": r} for n, r in exc.refusals],
                    "error": str(exc), "exit": EXIT_REFUSED})  # the shape of every --json error
    else:
        print(f"{args.model}: {len(exc.refusals)} Q/DQ node(s) implicit TensorRT cannot express; nothing written")
        for node, reason in exc.refusals:
            print(f"  {node}: {reason}")
    log.error("%d Q/DQ node(s) refused; nothing written", len(exc.refusals))
    return EXIT_REFUSED
