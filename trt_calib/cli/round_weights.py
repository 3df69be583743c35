"""`trt-calib round-weights`: a float model whose weights are exactly the INT8 codes chosen on calibration data.

`register(subparsers)` adds the command (handler `run_round_weights`); the work is `qdq.rounding.round_weights`.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import TrtCalibError, UsageError
from ._common import (
    add_data_arguments,
    add_json_flag,
    data_path,
    finite_float,
    guard_paths,
    json_text,
    model_inputs_of,
    model_paths,
    open_data,
    open_progress,
    percentile_arg,
    positive_int,
    print_json,
    threads_arg,
    trt_version_arg,
    write_output,
)

__all__ = ["register", "run_round_weights"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib round-weights MODEL --data D -o ROUNDED.onnx [...]`."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..ort.collect import ALGORITHM_HEADERS
    from ..qdq.rounding import METHODS

    p = subparsers.add_parser(
        "round-weights",
        help="choose the INT8 weight codes on calibration data (GPTQ-style) and write them into the float model",
        description="Replace every weight of a Conv, ConvTranspose, Gemm or MatMul (constant, float32) by s * q: "
        "s = max|w| / 127 per output channel, TensorRT's own weight scale, and q the int8 codes chosen layer after "
        "layer in graph order to reproduce the float model's output at that layer from the inputs the already "
        "rounded layers give (GPTQ-style: one input column at a time, its error pushed onto the others), instead of "
        "rounding each weight to nearest. Each channel's largest weight stays at +-127 s, so TensorRT's "
        "per-channel rule in implicit INT8 (calibrate and build ROUNDED.onnx, 8.6-10.x) and `trt-calib quantize` "
        "(TensorRT 11) take back exactly these codes. Biases are not changed. Prints per layer the codes moved "
        "and the layer's output error with nearest and with the chosen codes.",
    )
    p.add_argument("model", help="ONNX model (float)")
    add_data_arguments(p, required=False)
    p.add_argument("-o", "--output", required=True, metavar="ROUNDED.onnx", help="the rounded float model to write")
    p.add_argument("--method", choices=METHODS, default="gptq",
                   help="gptq (default): codes fitted on --data; nearest: TensorRT's own rounding written out "
                   "(no data needed; with --data the layer errors are measured too)")
    p.add_argument("--activations", choices=("none", *ALGORITHM_HEADERS), default="none",
                   help="fit each layer's codes with its input int8 at these thresholds (calibrated on --data "
                   "first: the rule the model will be quantised with), so they absorb that quantiser's clipping; "
                   "none (default) fits float inputs. On EfficientNet-Lite0 mse measured no better than none and "
                   "entropy2 worse (docs/accuracy.md)")
    p.add_argument("--percentile", type=percentile_arg, default=99.99,
                   help="for --activations percentile, in (0, 100] (default 99.99)")
    p.add_argument("--trt-version", type=trt_version_arg, default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose calibration to emulate for --activations (default "
                   f"{DEFAULT_TRT_VERSION})")
    p.add_argument("--damp", type=finite_float(0, 1), default=0.01,
                   help="ridge of each layer's fit, a share of the mean diagonal of its input's second moments: "
                   "pulls towards the original weights (default 0.01)")
    p.add_argument("--max-error", type=finite_float(0, None, lo_open=True), default=0.01, metavar="RATIO",
                   help="leave a layer's float weights (and say so) when its output error with the chosen codes is "
                   "still above this share of its output power (default 0.01, i.e. below 20 dB): its INT8 is poor "
                   "whatever the codes, and rounded weights would carry that into the activation ranges "
                   "calibration sees")
    p.add_argument("--max-positions", type=positive_int, default=1 << 14, metavar="N",
                   help="output positions per layer the statistics are taken over, subsampled evenly beyond "
                   "(default 16384)")
    p.add_argument("--max-activation-mb", type=finite_float(1, None), default=1024, metavar="MB",
                   help="activations kept between segments, float and rounded model together; larger ones are "
                   "recomputed (default 1024)")
    p.add_argument("--report", metavar="OUT.json", help="also write the per-layer report as JSON")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads, 1 to 256")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p, help="print the report as JSON on stdout (errors too)")
    p.set_defaults(handler=run_round_weights)
    return p


def run_round_weights(args: argparse.Namespace) -> int:
    """Round, write ROUNDED.onnx (and --report), print the per-layer table."""
    from ..ort.data import held_batches
    from ..ort.model import load_model
    from ..qdq.rounding import input_thresholds, round_weights

    if args.method == "gptq" and args.data is None:
        raise UsageError("--method gptq fits each layer on calibration data: give --data (or use --method nearest)")
    guard_paths(inputs={"MODEL": model_paths(args.model), "--data": data_path(args.data)},
                outputs={"-o": args.output, "--report": args.report})
    source = open_data(args, model_inputs_of(args.model)) if args.data is not None else None
    model = load_model(args.model)
    if source is not None:  # the fit keeps every batch: within a share of memory (an endless data script stops)
        source = list(held_batches(source, origin=str(args.data), purpose="round-weights"))
    activations, note = None, "float"
    if source is not None and args.activations != "none":
        bar = open_progress(args, total=len(source), desc="calibrating") if not args.json else None
        try:
            activations = input_thresholds(model, source, algorithm=args.activations, trt_version=args.trt_version,
                                           percentile=args.percentile, threads=args.threads,
                                           progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        note = args.activations + (f" {args.percentile:g}" if args.activations == "percentile" else "")
    bar = open_progress(args, total=None, desc="rounding", unit="layer") if not args.json else None
    try:
        rounded, report = round_weights(
            model, source, method=args.method, damp=args.damp, max_activation_mb=args.max_activation_mb,
            max_positions=args.max_positions, activations=activations, activations_note=note,
            max_error=args.max_error, threads=args.threads,
            progress=bar.update if bar is not None else None,
            total=(lambda n: setattr(bar, "total", n)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    try:
        payload = rounded.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise TrtCalibError(f"{args.output}: the rounded model cannot be serialised ({exc})") from None
    write_output(args.output, payload, what="the rounded model")
    document = {"model": str(args.model), "output": str(args.output), **report.to_json()}
    if args.report:
        write_output(args.report, json_text(document), what="the rounding report")
    if args.json:
        print_json(document)
    elif not args.quiet:
        print(report.table())
    for label, why in report.skipped.items():
        log.warning("%s keeps its weight as it is: %s", label, why)
    log.info("wrote %s%s in %.1f s", args.output, f" and {args.report}" if args.report else "", report.seconds)
    return 0
