"""`trt-calib evaluate MODEL.onnx QDQ.onnx --data D [--labels L.npy] [--metric M.py [--accept V]] [--json [OUT]]`:
what INT8 costs, measured, and a verdict (`ort.evaluate.Verdict`): exit 3 when INT8 loses most of FP32's decisions,
1 when it is degraded, 0 when fine or when nothing could be judged.

`register(subparsers)` adds the command; its handler is `run_evaluate`. The logic lives in `trt_calib.ort.evaluate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UsageError
from ._common import (
    add_data_arguments,
    add_json_flag,
    batch_count,
    data_path,
    finite_float,
    guard_paths,
    json_file,
    json_file_text,
    model_inputs_of,
    model_paths,
    non_negative_int,
    open_data,
    print_json,
    progress_bar,
    threads_arg,
    write_output,
)

__all__ = ["register", "run_evaluate", "load_labels"]

log = logging.getLogger("trt_calib")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib evaluate`; its handler is `run_evaluate`."""
    from ..ort.evaluate import (DEFAULT_ACTIVATION_MB, DEFAULT_MARGIN, LOST_BELOW, MIN_AGREEMENT, MIN_FLIPS,
                                MIN_SEQUENCE_AGREEMENT)

    p = subparsers.add_parser(
        "evaluate",
        help="compare a Q/DQ (INT8) model with its FP32 model on held-out data: agreement, KL, accuracy, SQNR, a "
        "verdict",
        description="Run MODEL and its Q/DQ version with onnxruntime (CPU, graph optimisation off, so the Q/DQ "
        "graph runs as written) on the same held-out data and report top-1 agreement with FP32 (all samples and "
        "those with a clear FP32 winner), mean KL(FP32 || INT8) of the softmax outputs, top-1 accuracy with "
        "--labels; for sequence outputs (N, T, C) whole-sequence and per-position agreement and per-position KL; "
        "absolute output errors, the tensors with the worst quantisation error (SQNR), the quantised activations "
        "whose own Q/DQ pair hurts most (clipping), If branches included, a task metric with --metric, and a "
        f"verdict. Exit 3 (lost) when an output keeps fewer than {LOST_BELOW:.0%} of FP32's decisions (top-1 "
        "classes; a sequence's positions off its majority class); exit 1 (degraded) when whole argmax sequences "
        "agree for fewer than --min-sequence-agreement of the samples, when more than 1 - --min-agreement of the "
        f"samples with a clear FP32 winner change class (at least {MIN_FLIPS}), or when the task metric misses "
        "--accept; exit 0 when fine, or when no output makes decisions and no --accept bar is given (the verdict "
        "then says it judged nothing). onnxruntime's int8 arithmetic approximates TensorRT's: build the engine to "
        "measure it exactly.",
    )
    p.add_argument("model", help="the FP32 ONNX model")
    p.add_argument("int8_model", metavar="qdq_model", help="its Q/DQ (INT8) version, e.g. from trt-calib quantize")
    add_data_arguments(p)
    p.add_argument("--labels", metavar="L.npy", help="one class index per sample of --data (same order, the whole "
                   "file; --offset/--limit apply to both) for top-1 accuracy")
    p.add_argument("--label-output", metavar="NAME", help="the output the labels score (default: the first (N, C) "
                   "output)")
    p.add_argument("--margin", type=finite_float(0), default=DEFAULT_MARGIN, help="agreement is also reported on "
                   f"samples whose FP32 top-1/top-2 logit margin exceeds this (default {DEFAULT_MARGIN:g})")
    p.add_argument("--worst", type=non_negative_int, default=10, help="list this many tensors with the lowest SQNR, "
                   "and quantised activations with the worst own error (default 10; 0 skips the per-tensor "
                   "comparison, and the verdict then names no tensor)")
    p.add_argument("--metric", metavar="FILE.py[:FUNCTION]", default=None,
                   help="a task metric: FUNCTION (default `metric`) of (fp32_outputs, int8_outputs[, batch]) returning "
                   "value or (value, higher_is_better[, weight]), called once per batch, averaged by weight "
                   "(default: the batch's samples); see docs/accuracy.md")
    p.add_argument("--accept", metavar="VALUE", type=finite_float(), default=None,
                   help="with --metric: the value INT8's task metric must reach (at least VALUE when higher is "
                   "better, at most when lower is); a worse one makes the verdict degraded (exit 1), and a model "
                   "whose outputs make no countable decision (a detector) is judged by it")
    p.add_argument("--min-agreement", metavar="FRACTION", type=finite_float(0, 1), default=MIN_AGREEMENT,
                   help="a classifier output is degraded when it keeps fewer than this share of the top-1 classes "
                   f"of the samples whose FP32 margin exceeds --margin, at least {MIN_FLIPS} of them changed "
                   f"(default {MIN_AGREEMENT:g}; 0 switches the check off)")
    p.add_argument("--min-sequence-agreement", metavar="FRACTION", type=finite_float(0, 1),
                   default=MIN_SEQUENCE_AGREEMENT, help="a sequence output is degraded when fewer than this share of "
                   f"the samples keep their whole argmax sequence (default {MIN_SEQUENCE_AGREEMENT:g}; 0 switches "
                   "the check off)")
    p.add_argument("--sequence-output", metavar="NAME", action="append", default=[],
                   help="an output (N, T, C) whose rows are logits over C classes, for sequence agreement and "
                   "per-position KL (rows of probabilities are recognised without it); repeatable")
    p.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=DEFAULT_ACTIVATION_MB,
                   help="run a batch in equal parts so both models' tensors of one part fit this "
                   f"(default {DEFAULT_ACTIVATION_MB:g}, as calibrate)")
    add_json_flag(p, file=True, help="print the report as JSON on stdout (errors too); with FILE also write it "
                  "there (the text report then goes to stderr)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads, 1 to 256 "
                   "(default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_evaluate)
    return p


def load_labels(path: str | Path) -> np.ndarray:
    """Class indices from a .npy file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such labels file")
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: labels must be an .npy file of class indices. Hint: np.save('labels.npy', labels)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError for damaged files
        raise DataError(f"{path}: not a readable .npy file ({exc})") from None


def _labels_for(source: Any, labels: np.ndarray, path: str) -> np.ndarray:
    """The labels of the samples `source` feeds, in order: the file covers the whole data, as --data does."""
    available = getattr(source, "available", None)
    if available is None:  # a data script: labels follow the yielded order
        return labels
    if len(labels) != available:
        raise DataError(
            f"{path}: {len(labels)} labels but the data holds {available} samples. Hint: one label per sample of "
            "--data, in the same order"
        )
    start = source.offset
    return labels[start : start + source.num_samples]


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the report, and write --json if asked; the verdict's exit status (3 lost, 1 degraded)."""
    from ..ort.model import load_model
    from ..ort.evaluate import evaluate
    from ..ort.user_metric import load_metric

    out_json = json_file(args)
    if args.accept is not None and args.metric is None:
        raise UsageError(f"--accept {args.accept:g} is the bar of a task metric: give --metric FILE.py[:FUNCTION] too")
    guard_paths(inputs={"MODEL": model_paths(args.model), "QDQ_MODEL": model_paths(args.int8_model),
                        "--data": data_path(args.data), "--labels": args.labels,
                        "--metric": data_path(args.metric)},
                outputs={"--json": out_json}, force=args.force)
    metric = load_metric(args.metric) if args.metric is not None else None  # a bad script fails before any data
    inputs = model_inputs_of(args.model)
    outputs = [o.name for o in load_model(args.model, weights=False).graph.output]
    unknown = [n for n in args.sequence_output if n not in outputs]
    if unknown:
        raise UsageError(f"--sequence-output {unknown[0]}: no such output; the outputs are {', '.join(outputs)}")
    load_model(args.int8_model, weights=False)  # fail on an unreadable second model before reading any data
    is_script = str(args.data).split(":")[0].endswith(".py")
    if args.last_batch is None and not is_script:
        # Evaluation must see every sample: a model with a fixed batch dim gets a padded last batch, whose
        # padding evaluate() leaves out.
        args.last_batch = "pad" if inputs and inputs[0].rank and inputs[0].static_dim(0) else "keep"
    labels = None
    if args.labels:
        if args.shuffle:
            raise UsageError("--shuffle with --labels: evaluation does not depend on order. Hint: drop --shuffle")
        labels = load_labels(args.labels)
    source = open_data(args, inputs, padding_is_data=False)  # evaluate leaves a padded batch's copies out
    if labels is not None:
        labels = _labels_for(source, labels, args.labels)

    with progress_bar(args, total=batch_count(source), desc="evaluating") as progress:
        report = evaluate(
            args.model, args.int8_model, source, labels=labels, worst=args.worst, margin=args.margin,
            label_output=args.label_output, progress=progress, threads=args.threads,
            max_activation_mb=args.max_activation_mb, metric=metric, sequence_outputs=args.sequence_output,
            accept=args.accept, min_agreement=args.min_agreement, min_sequence_agreement=args.min_sequence_agreement,
        )
    code = report.exit_code
    if not args.json:
        print(report.format())
        return code
    payload = report.to_json()
    payload["model"] = str(args.model)
    payload["int8_model"] = str(args.int8_model)
    payload["data"] = source.manifest()
    payload["exit"] = code
    if out_json:
        write_output(out_json, json_file_text(payload, "evaluate"), what="the --json report")
        log.info("wrote %s", out_json)
    if not getattr(args, "quiet", False):
        print(report.format(), file=sys.stderr)
    print_json(payload)
    return code
