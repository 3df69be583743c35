"""`trt-calib sensitivity`: which units cost the accuracy, measured on held-out data, and how many to keep in float.

`register(subparsers)` adds the command (handler `run_sensitivity`); the work is `qdq.sensitivity.sensitivity`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..errors import UsageError
from ._common import (
    add_held_out_arguments,
    add_data_arguments,
    add_executor_arguments,
    add_json_flag,
    candidates_arg,
    data_path,
    finite_float,
    guard_paths,
    json_text,
    metric_arg,
    metric_path,
    model_paths,
    non_negative_int,
    open_data,
    open_executor,
    print_json,
    resolve_trt_version,
    same_data,
    split_held_out,
    trt_version_arg,
    write_output,
)

__all__ = ["register", "run_sensitivity"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib sensitivity MODEL --data D -o SENS.json [...]`; its handler is `run_sensitivity`."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..ort.collect import ALGORITHM_HEADERS
    from ..qdq import PLACEMENTS
    from ..qdq.sensitivity import KEEP_DTYPES

    p = subparsers.add_parser(
        "sensitivity",
        help="rank the layers INT8 hurts most (measured on held-out data) and how many to keep in float",
        description="For every node `trt-calib quantize` gives Q/DQ (a unit: a Conv/Gemm/MatMul with its weight and "
        "inputs, or a residual Add), measure the output error on held-out batches with only that unit INT8 "
        "(alone), with every unit but that one INT8 (excluded), and with only its weights or only its activations "
        "INT8; rank the units by what excluding them buys back, then run the model with the top k kept in float, "
        "k = 0, 1, 2, ... until --target or --max-keep (never every unit). Each variant runs only the nodes its "
        "change reaches; with more units than --candidates, every unit is first screened by its local error (the "
        "noise it adds at its own output, cheap) and only the largest are measured (the JSON lists the others with "
        "that estimate). "
        "Every number is a run with onnxruntime (CPU, graph as written). SENS.json is written as runs finish "
        "(partial until the end): after Ctrl-C or a kill, --resume continues it. `quantize --exclude-nodes-from` "
        "and `build --keep-precision` act on it, and the trtexec flags that do the same are printed.",
    )
    p.add_argument("model", help="ONNX model (float)")
    add_data_arguments(p)
    add_held_out_arguments(p, measured="the units are")
    src = p.add_argument_group("scales (as `quantize`)")
    how = src.add_mutually_exclusive_group()
    how.add_argument("--from-cache", metavar="CACHE", help="the scales of this TensorRT calibration cache, bit for "
                     "bit (then all of --data is held out unless --eval-data is given)")
    how.add_argument("--algorithm", choices=list(ALGORITHM_HEADERS), default=None,
                     help="threshold algorithm when calibrating on --data (default entropy2)")
    src.add_argument("--percentile", type=finite_float(0, 100, lo_open=True), default=99.99,
                     help="for --algorithm percentile (default 99.99)")
    src.add_argument("--trt-version", type=trt_version_arg, default=None,
                     help="TensorRT version whose calibration to emulate (default: the installed tensorrt's, else "
                     f"{DEFAULT_TRT_VERSION}, with a warning)")
    src.add_argument("--placement", choices=list(PLACEMENTS), default="trt", help="as `quantize --placement`")
    src.add_argument("--per-tensor-weights", action="store_true", help="as `quantize --per-tensor-weights`")
    m = p.add_argument_group("measurement")
    m.add_argument("--metric", type=metric_arg, default="auto", metavar="METRIC",
                   help="auto (default): mean KL(FP32 || INT8) when every output is a probability vector, else "
                   "1 - cosine; kl (softmax of logits too), cosine, sqnr (dB, higher is better), or a task metric "
                   "FILE.py[:FUNCTION] (default function `metric`): fn(fp32_outputs, int8_outputs[, batch]) -> "
                   "value or (value, higher_is_better[, weight]), averaged over held-out batches")
    m.add_argument("--target", type=finite_float(), default=None, metavar="ERROR",
                   help="stop the greedy curve at the first k whose error meets this (<=; >= for sqnr)")
    m.add_argument("--max-keep", type=non_negative_int, default=10, metavar="K",
                   help="keep at most K units in float on the greedy curve (default 10)")
    m.add_argument("--keep-dtype", choices=KEEP_DTYPES, default="fp16",
                   help="precision of the kept units in the printed trtexec flags (default fp16)")
    m.add_argument("--candidates", type=candidates_arg, default=None, metavar="N|all",
                   help="with more units than N, screen every unit by its local error (noise at its own output, "
                   "cheap) and measure only the N largest; the others are listed as screened out (default: "
                   "--max-keep plus half of it, at least 3 more); all: measure every unit")
    m.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=256, metavar="MB",
                   help="activation memory budget: batches run in equal parts that fit it, as in calibrate "
                   "(default 256)")
    m.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep whose partial result is in -o (same model, data, scales "
                   "and options); the finished runs are not made again and the result is the same")
    p.add_argument("-o", "--output", required=True, metavar="SENS.json", help="where to write the result")
    add_json_flag(p, help="print the result as one JSON object on stdout (errors too)")
    add_executor_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_sensitivity)
    return p


def _bar(args: argparse.Namespace, desc: str, unit: str, total: int | None = None) -> Any:
    if args.no_progress or args.quiet or args.json:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, disable=None)


def run_sensitivity(args: argparse.Namespace) -> int:
    """Calibrate (or read the cache), sweep, write SENS.json, print the ranking; exit 1 if --target is not met."""
    from ..core.cache import CalibrationCache
    from ..ort.model import load_model, model_inputs
    from ..ort.collect import calibrate
    from ..ort.user_metric import load_metric
    from ..qdq.sensitivity import not_ranked_groups, read_partial, sensitivity

    if args.calib_batches is not None and (args.eval_data is not None or args.from_cache):
        raise UsageError("--calib-batches splits --data into calibration and held-out batches; it does not go with "
                         "--eval-data or --from-cache")
    if args.resume and not os.path.isfile(args.output):
        raise UsageError(f"--resume: {args.output} does not exist; nothing to resume. Hint: drop --resume")
    guard_paths(
        inputs={"MODEL": model_paths(args.model), "--data": data_path(args.data),
                "--eval-data": data_path(args.eval_data), "--from-cache": args.from_cache,
                "--metric": metric_path(args.metric)},
        outputs={"-o": args.output},
    )
    if args.eval_data is not None and not args.from_cache and same_data(args.data, args.eval_data):
        raise UsageError(f"--eval-data {args.eval_data} is --data {args.data}: the units would be measured on the "
                         "batches they were calibrated on, which hides what INT8 costs on new data. Hint: drop "
                         "--eval-data to hold out the later batches of --data, or give other data")
    trt_source = ""
    if not args.from_cache:
        args.trt_version, trt_source = resolve_trt_version(args.trt_version, purpose="emulate")
    resume = read_partial(args.output) if args.resume else None
    if metric_path(args.metric) is not None:
        load_metric(args.metric)  # a broken metric script fails now, not after the calibration
    model = load_model(args.model)
    inputs = model_inputs(model)
    cache = CalibrationCache.load(args.from_cache) if args.from_cache else None
    source = open_data(args, inputs)
    calib, held, padded, what = split_held_out(args, source, inputs, purpose="sensitivity",
                                               calibrate=not args.from_cache)
    if args.eval_batches is not None and args.eval_batches < len(held):
        held, padded = held[: args.eval_batches], 0
        what["evaluation_data"] += f", first {args.eval_batches} used"
    if cache is not None:
        scales: Any = cache
        what["scales"] = f"cache {args.from_cache} ({cache.header})"
    else:
        algorithm = args.algorithm or "entropy2"
        bar = _bar(args, "calibrating", "batch", len(calib) if hasattr(calib, "__len__") else None)
        try:
            scales = calibrate(model, calib, algorithm=algorithm, trt_version=args.trt_version,
                               percentile=args.percentile, progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        what["scales"] = f"calibration ({algorithm}, TensorRT {args.trt_version} emulated; version: {trt_source})"
    info = {"model": str(args.model), **what}

    bar = _bar(args, "measuring", "run")
    saved = [False]

    def save(document: dict[str, Any]) -> None:
        """Write -o atomically; named once in what this run wrote (an interrupt's message lists it)."""
        from .._util import atomic_write

        if not saved[0]:
            write_output(args.output, json_text(document), what="the sensitivity file")
            saved[0] = True
            return
        try:
            atomic_write(args.output, json_text(document))
        except OSError as exc:
            raise UsageError(f"cannot write the sensitivity file {args.output}: {exc.strerror or exc}") from None

    def checkpoint(partial: dict[str, Any]) -> None:
        """Every finished run on disk, so Ctrl-C or a kill loses at most the runs in flight."""
        save({**partial, "model": str(args.model)})

    with open_executor(args) as executor:
        try:
            result = sensitivity(
                model, scales, held, metric=args.metric, placement=args.placement,
                per_channel=not args.per_tensor_weights, target=args.target, max_keep=args.max_keep,
                executor=executor, progress=bar.update if bar is not None else None, info=info, padded=padded,
                total=(lambda n: setattr(bar, "total", n)) if bar is not None else None,
                candidates=args.candidates,
                max_activation_mb=args.max_activation_mb, checkpoint=checkpoint, resume=resume,
            )
        finally:
            if bar is not None:
                bar.close()
    document = result.to_json()
    flags = result.trtexec_flags(dtype=args.keep_dtype)
    document["trtexec"] = " ".join(flags)
    save(document)
    if args.json:
        print_json(document)
    else:
        print(result.table())
        kept = result.kept()
        if kept:
            print(f"\nkeep the top {len(kept)} in float ({', '.join(kept)}):")
            print(f"  TensorRT 11 (Q/DQ):   trt-calib quantize {args.model} ... --exclude-nodes-from {args.output}")
            print(f"  TensorRT 8.6-10.x:    trt-calib build {args.model} ... --keep-precision {args.output}"
                  + (f" --keep-dtype {args.keep_dtype}" if args.keep_dtype != "fp16" else ""))
            print(f"  trtexec (8.6-10.x):   {' '.join(flags)}  (with your --onnx, --int8, --fp16, --calib)")
        log.info("wrote %s (%d units, %d runs in %.1f s on %s%s)", args.output, len(result.units),
                 result.run["runs"], result.run["seconds"], result.run["executor"],
                 f"; {result.run['resumed_runs']} runs resumed" if result.run.get("resumed_runs") else "")
    if result.not_ranked:
        groups = not_ranked_groups(result.not_ranked)
        why, nodes = groups[0]
        log.warning("%d node(s) are not ranked: %s: %s%s (%s)", len(result.not_ranked),
                    ", ".join(n for n, _ in nodes[:3]) + (", ..." if len(nodes) > 3 else ""), why,
                    f"; and {len(groups) - 1} other reason(s)" if len(groups) > 1 else "",
                    "the table lists each with why" if not args.json else "`not_ranked` in the JSON says why")
    code = 0
    if result.unmeasured:
        log.warning("%d unit(s) that quantize gives Q/DQ inside If branches the held-out data does not run are not "
                    "measured (%s): the ranking and the greedy curve leave them out (exit status 1)",
                    len(result.unmeasured), ", ".join(result.unmeasured[:5]) + (", ..." if len(result.unmeasured) > 5 else ""))
        code = 1
    if args.target is not None and not result.target_met:
        log.warning("--target %g not met with up to %d unit(s) kept in float", args.target, args.max_keep)
        return 1
    return code
