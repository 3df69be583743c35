"""`trt-calib evaluate MODEL.onnx QDQ.onnx --data D [--labels L.npy] [--json OUT]`: what INT8 costs, measured.

`register(subparsers)` adds the command; its handler is `run_evaluate`. The logic lives in `trt_calib.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, TrtCalibError
from ._common import add_data_arguments, open_data

__all__ = ["register", "run_evaluate", "load_labels"]

log = logging.getLogger("trt_calib")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib evaluate`; its handler is `run_evaluate`."""
    from ..ort.evaluate import DEFAULT_MARGIN

    p = subparsers.add_parser(
        "evaluate",
        help="compare a Q/DQ (INT8) model with its FP32 model on held-out data: agreement, KL, accuracy, SQNR",
        description="Run MODEL and its Q/DQ version with onnxruntime (CPU, graph optimisation off, so the Q/DQ "
        "graph runs as written) on the same held-out data and report top-1 agreement with FP32 (all samples and "
        "those with a clear FP32 winner), mean KL(FP32 || INT8) of the softmax outputs, top-1 accuracy with "
        "--labels, absolute output errors and the tensors with the worst quantisation error (SQNR). onnxruntime's "
        "int8 arithmetic approximates TensorRT's: build the engine to measure it exactly.",
    )
    p.add_argument("model", help="the FP32 ONNX model")
    p.add_argument("int8_model", metavar="qdq_model", help="its Q/DQ (INT8) version, e.g. from trt-calib quantize")
    add_data_arguments(p)
    p.add_argument("--labels", metavar="L.npy", help="one class index per sample of --data (same order, the whole "
                   "file; --offset/--limit apply to both) for top-1 accuracy")
    p.add_argument("--label-output", metavar="NAME", help="the output the labels score (default: the first (N, C) "
                   "output)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="agreement is also reported on samples "
                   f"whose FP32 top-1/top-2 logit margin exceeds this (default {DEFAULT_MARGIN:g})")
    p.add_argument("--worst", type=int, default=10, help="list this many tensors with the lowest SQNR (default 10; "
                   "0 skips the per-tensor comparison)")
    p.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
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
    """Evaluate, print the report, and write --json if asked."""
    from .._util import atomic_write
    from ..ort.collect import load_model, model_inputs
    from ..ort.evaluate import evaluate

    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise TrtCalibError(f"{args.json}: the folder to write it in does not exist")
    inputs = model_inputs(load_model(args.model))
    load_model(args.int8_model)  # fail on an unreadable second model before reading any data
    is_script = str(args.data).split(":")[0].endswith(".py")
    if args.last_batch is None and not is_script:
        # Evaluation must see every sample: a model with a fixed batch dim gets a padded last batch, whose
        # padding evaluate() leaves out.
        args.last_batch = "pad" if inputs and inputs[0].rank and inputs[0].static_dim(0) else "keep"
    labels = None
    if args.labels:
        if args.shuffle:
            raise DataError("--shuffle with --labels: evaluation does not depend on order. Hint: drop --shuffle")
        labels = load_labels(args.labels)
    source = open_data(args, inputs)
    if labels is not None:
        labels = _labels_for(source, labels, args.labels)

    bar = None
    if not args.no_progress and not getattr(args, "quiet", False):
        from tqdm import tqdm

        total = len(source) if source.kind != "generator" else None
        bar = tqdm(total=total, unit="batch", desc="evaluating", file=sys.stderr, leave=False, disable=None)
    try:
        report = evaluate(
            args.model, args.int8_model, source, labels=labels, worst=args.worst, margin=args.margin,
            label_output=args.label_output, progress=bar.update if bar is not None else None, threads=args.threads,
        )
    finally:
        if bar is not None:
            bar.close()
    print(report.format())
    if args.json:
        payload = report.to_json()
        payload["model"] = str(args.model)
        payload["int8_model"] = str(args.int8_model)
        payload["data"] = source.manifest()
        atomic_write(args.json, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
        log.info("wrote %s", args.json)
    return 0
