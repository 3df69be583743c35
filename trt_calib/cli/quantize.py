"""`trt-calib quantize`: a Q/DQ ONNX model for TensorRT 11, from calibration data or from a TensorRT cache.

`--asymmetric` writes activations with zero points for runtimes that take them (not TensorRT on GPUs).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ._common import (
    add_data_arguments,
    add_json_flag,
    batch_count,
    data_path,
    finite_float,
    guard_paths,
    json_text,
    model_inputs_of,
    model_paths,
    non_negative_int,
    open_data,
    percentile_arg,
    positive_int,
    print_json,
    progress_bar,
    refuse_quantized_model,
    threads_arg,
    resolve_trt_version,
    trt_version_arg,
    write_output,
)

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quantize` subcommand."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..ort.collect import ALGORITHM_HEADERS
    from ..qdq import ASYMMETRIC_DTYPES, ASYMMETRIC_NOTE
    from ..core.signs import ASYMMETRIC_METHODS

    p = subparsers.add_parser(
        "quantize",
        help="write a Q/DQ ONNX model (explicit INT8, TensorRT 11) from calibration data or a calibration cache",
        description="Insert QuantizeLinear/DequantizeLinear pairs where TensorRT fuses them (inputs and weights of "
        "Conv/ConvTranspose/Gemm/MatMul, residual inputs of Conv-fed Adds, one scale per Concat), int8 with zero "
        "point 0, per-channel int8 weights. Scales come from calibrating on --data (as `calibrate` does) or, bit for "
        "bit, from a TensorRT cache (--from-cache), whose entries are matched to tensors by name. Prints the "
        "coverage: which nodes run in INT8 and which stay in float, and why. --asymmetric writes uint8 activations "
        f"with zero points instead, NOT for TensorRT on GPUs: {ASYMMETRIC_NOTE}. Q/DQ pairs go into If branches "
        "too (by the same rules, with the scales of the branch's tensors); Loop/Scan bodies get none. Exit status: "
        "0 done, 1 done but Conv/Gemm/MatMul nodes inside If/Loop/Scan bodies have no scale (a branch the data "
        "never took, a Loop body) and stay in float, 2 usage or input error.",
    )
    p.add_argument("model", help="ONNX model (float)")
    add_data_arguments(p, required=False)
    src = p.add_argument_group("scales")
    src.add_argument("--from-cache", metavar="CACHE", help="take the scales of this TensorRT calibration cache "
                     "(--data is then only used by --bias-correction)")
    src.add_argument("--algorithm", choices=list(ALGORITHM_HEADERS), default=None,
                     help="threshold algorithm when calibrating on --data (default entropy2; not with --asymmetric)")
    src.add_argument("--percentile", type=percentile_arg, default=99.99,
                     help="for --algorithm percentile, in (0, 100] (default 99.99)")
    src.add_argument("--trt-version", type=trt_version_arg, default=None,
                     help="TensorRT version whose calibration to emulate on --data (default: the installed "
                     f"tensorrt's, else {DEFAULT_TRT_VERSION}, with a warning)")
    src.add_argument("--asymmetric", nargs="?", const="mse", choices=ASYMMETRIC_METHODS, default=None,
                     help="activations with zero points from signed histograms of --data: the range is the observed "
                     "[min, max] (minmax) or the one with the least expected squared error (mse, what a bare "
                     "--asymmetric means). Weights stay symmetric int8. NOT for TensorRT on GPUs, which rejects "
                     "non-zero zero points; DLA needs kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA (TensorRT "
                     "10.11+); onnxruntime runs it. Needs --data: a cache holds no signs")
    src.add_argument("--asymmetric-dtype", choices=list(ASYMMETRIC_DTYPES), default=None,
                     help="activation type with --asymmetric: uint8 [0, 255] (default) or int8 [-128, 127] with a "
                     "zero point")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="Q/DQ model to write")
    p.add_argument("--report", metavar="OUT.json", help="also write the coverage report as JSON")
    p.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight instead of per channel")
    p.add_argument("--placement", choices=("trt", "weighted"), default="trt",
                   help="trt (default): weighted ops, Add residuals, Concat groups; weighted: weighted ops only")
    p.add_argument("--bias-correction", action="store_true",
                   help="fold each quantised layer's measured per-channel mean error into its bias, layer after "
                   "layer (needs --data)")
    p.add_argument("--bias-correction-batches", type=positive_int, default=4, metavar="N",
                   help="calibration batches bias correction runs (default 4)")
    p.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=256,
                   help="run a batch in equal parts when its activations exceed this, in calibration and bias "
                   "correction (default 256, as calibrate)")
    ex = p.add_argument_group("leaving nodes in float (the coverage report lists each, with why)")
    ex.add_argument("--exclude-nodes", metavar="N1,N2", help="no Q/DQ for these nodes (names as the coverage "
                    "report or `trt-calib sensitivity` lists them): float weights, float inputs")
    ex.add_argument("--exclude-nodes-from", metavar="SENS.json", help="the top units of a `trt-calib sensitivity` "
                    "ranking (how many: --keep)")
    ex.add_argument("--keep", type=non_negative_int, metavar="K", help="with --exclude-nodes-from: the top K units "
                    "(default: the k the sensitivity run chose)")
    ex.add_argument("--exclude-op-types", metavar="OP1,OP2", help="no Q/DQ for any node of these op types, e.g. "
                    "Add,LayerNormalization,Softmax,Sigmoid (a type this placement never quantises is listed as such)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads for "
                   "calibration, 1 to 256")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p, help="print the coverage report as JSON on stdout (errors too)")
    p.set_defaults(handler=_run_quantize)


def _names(text: str | None) -> list[str]:
    """A comma-separated option as a list (empty entries dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _run_quantize(args: argparse.Namespace) -> int:
    from ..core.cache import CalibrationCache
    from ..ort.model import load_model
    from ..ort.collect import calibrate
    from ..errors import TrtCalibError, UsageError
    from ..qdq import quantize_model
    from ..qdq.quantize import check_exclusions
    from ..qdq.sensitivity import exclusions
    from ..ort.collect import collect_signed

    if args.asymmetric is not None and args.from_cache is not None:
        raise TrtCalibError(
            f"--asymmetric cannot use --from-cache {args.from_cache}: a calibration cache holds one symmetric amax per "
            "tensor, not the signs and ranges a zero point is computed from. Hint: give --data instead"
        )
    if args.asymmetric is not None and args.data is None:
        raise TrtCalibError("--asymmetric computes zero points from signed histograms: give --data")
    if args.asymmetric is not None and args.algorithm is not None:
        raise TrtCalibError(
            f"--algorithm {args.algorithm} picks symmetric thresholds; with --asymmetric the range comes from "
            f"--asymmetric {args.asymmetric} itself. Hint: drop one of the two"
        )
    if args.asymmetric_dtype is not None and args.asymmetric is None:
        raise TrtCalibError(f"--asymmetric-dtype {args.asymmetric_dtype} needs --asymmetric (symmetric pairs are int8)")
    if args.from_cache is None and args.data is None:
        raise TrtCalibError("give --data (calibrate now) or --from-cache CACHE (use a TensorRT cache's scales)")
    algorithm = args.algorithm or "entropy2"
    dtype = args.asymmetric_dtype or "uint8"
    if args.bias_correction and args.data is None:
        raise UsageError("--bias-correction runs the model on calibration data: give --data too")
    if args.keep is not None and args.exclude_nodes_from is None:
        raise UsageError("--keep K picks the top K units of --exclude-nodes-from SENS.json: give that too")
    guard_paths(inputs={"MODEL": model_paths(args.model), "--data": data_path(args.data),
                        "--from-cache": args.from_cache, "--exclude-nodes-from": args.exclude_nodes_from},
                outputs={"-o": args.output, "--report": args.report})

    refuse_quantized_model(args.model, "Q/DQ insertion")
    trt_version = None
    if args.from_cache is None and args.asymmetric is None:
        trt_version = resolve_trt_version(args.trt_version, purpose="emulate")
    if args.from_cache is not None:
        from_cache = CalibrationCache.load(args.from_cache)  # before the model's weights and any data are read
    model = load_model(args.model)
    exclude = exclusions(
        model, nodes=_names(args.exclude_nodes), sensitivity_file=args.exclude_nodes_from, keep=args.keep,
        op_types=_names(args.exclude_op_types),
    )
    check_exclusions(model, exclude)  # a name no node has is refused before the data is opened, not after calibrating
    source = open_data(args, model_inputs_of(args.model)) if args.data is not None else None
    if args.from_cache is not None:
        scales: Any = from_cache
        scales_from = str(args.from_cache)
    else:
        with progress_bar(args, total=batch_count(source), desc="calibrating") as progress:
            if args.asymmetric is not None:
                scales, _ = collect_signed(model, source, progress=progress, threads=args.threads,
                                           name=str(args.model))
                scales_from = f"signed histograms (asymmetric {args.asymmetric}, {dtype})"
            else:
                scales = calibrate(
                    args.model, source, algorithm=algorithm, trt_version=trt_version[0], percentile=args.percentile,
                    progress=progress, threads=args.threads, max_activation_mb=args.max_activation_mb,
                )
                scales_from = f"calibration ({algorithm})"

    bias_args = args if args.bias_correction else argparse.Namespace(no_progress=True)
    with progress_bar(bias_args, total=None, desc="bias correction", unit="layer") as progress:
        qdq, report = quantize_model(
            model,
            scales,
            per_channel=not args.per_tensor_weights,
            placement=args.placement,
            asymmetric=args.asymmetric,
            asymmetric_dtype=dtype,
            bias_correction=source if args.bias_correction else None,
            bias_correction_batches=args.bias_correction_batches,
            progress=progress,
            exclude=exclude,
            max_activation_mb=args.max_activation_mb,
            threads=args.threads,
        )

    from ..ort.model import serialize_model

    payload = serialize_model(qdq, role=f"{args.output} (the Q/DQ model)")  # over 2 GiB: one line, not exit 70
    write_output(args.output, payload, what="the Q/DQ model")
    document = report.to_json()
    document["model"] = str(args.model)
    document["output"] = str(args.output)
    document["scales_from"] = scales_from
    if trt_version is not None:
        document["trt_version"], document["trt_version_source"] = trt_version
    if args.report:
        write_output(args.report, json_text(document), what="the coverage report")
    if args.json:
        print_json(document)
    elif not getattr(args, "quiet", False):
        print(report.table())
    left = report.float_weighted_nodes
    if left:
        log.warning(
            "%d Conv/ConvTranspose/Gemm/MatMul node(s) stay in float: %s", len(left),
            "; ".join(f"{n.node}: {n.reason}" for n in left[:5]) + ("; ..." if len(left) > 5 else ""),
        )
    log.info("wrote %s%s", args.output, f" and {args.report}" if args.report else "")
    if report.body_gaps:
        # Written, but not a clean success: those layers run in float in every engine built from it.
        log.warning("%d Conv/ConvTranspose/Gemm/MatMul node(s) inside If/Loop/Scan bodies have no scale and stay "
                    "in float (exit status 1): %s", len(report.body_gaps),
                    "; ".join(report.body_gaps[:3]) + ("; ..." if len(report.body_gaps) > 3 else ""))
        return 1
    return 0
