"""`trt-calib report`: the HTML calibration report, as a subcommand the CLI wires in with `register(subparsers)`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import TrtCalibError
from ._common import add_data_arguments, open_data

__all__ = ["register", "run_report"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib report MODEL.onnx (--data D | --histograms H.npz) -o DIR [...]`; its handler is `run_report`."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..tools.report import THRESHOLDS

    p = subparsers.add_parser(
        "report",
        help="write an HTML report: per-tensor histograms, thresholds, KL curves, signs, expected int8 error",
        description="Write a self-contained HTML report (DIR/index.html, PNG figures, report.json; opens from disk). "
        "Per tensor: TensorRT's |x| histogram with the entropy2, minmax, percentile and mse thresholds, the KL "
        "divergence curve with TensorRT's choice, the sign structure, the expected quantisation error (MSE, SQNR, "
        "share clipped) and the effective bits, next to sign-aware alternatives (signed-histogram KL, asymmetric "
        "uint8); a model-level table sortable by error. With --data the model runs once on the CPU; "
        "--histograms reuses the histograms of `trt-calib calibrate --save-histograms` (no second pass; sign-aware "
        "alternatives then only for one-sided tensors).",
    )
    p.add_argument("model", help="ONNX model (for tensor order and TensorRT's scale ties; run with --data)")
    add_data_arguments(p, required=False)
    p.add_argument("--histograms", metavar="H.npz", help="saved histograms instead of --data "
                   "(from calibrate --save-histograms or report --save-histograms)")
    p.add_argument("--sensitivity", metavar="SENS.json", help="add the per-unit sensitivity bars and the greedy curve "
                   "of `trt-calib sensitivity` (alone, it needs neither --data nor --histograms)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder to write (replaced "
                   "atomically; a non-empty folder that is not a previous report needs --force)")
    p.add_argument("--tensors", metavar="PATTERN", help="only tensors matching these shell globs, comma-separated "
                   "(e.g. 'conv*,ip1')")
    p.add_argument("--max-tensors", type=int, metavar="N", help="draw figures for the N tensors with the lowest SQNR "
                   "(default: all); every tensor stays in the table")
    p.add_argument("--algorithm", choices=list(THRESHOLDS), default="entropy2",
                   help="the threshold the report judges (default entropy2, what TensorRT picks)")
    p.add_argument("--percentile", type=float, default=99.99, help="percentile threshold to draw (default 99.99)")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose scale ties to apply (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--save-histograms", metavar="H.npz", help="with --data: also save the signed histograms, "
                   "for later reports without a second pass")
    p.add_argument("--force", action="store_true", help="replace a non-empty -o folder that is not a report")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """Handler of `trt-calib report`: returns 0 once the report folder is in place."""
    from ..tools.report import build_report

    if (args.data is None) == (args.histograms is None) and not (args.data is None and args.sensitivity):
        raise TrtCalibError("report needs exactly one of --data D (run the model) or --histograms H.npz "
                            "(reuse a calibration's histograms), or only --sensitivity SENS.json")
    sections = []
    if args.sensitivity is not None:
        from ..tools.sensitivity_report import SensitivitySection

        sections.append(SensitivitySection(args.sensitivity))
    if args.save_histograms and args.histograms:
        raise TrtCalibError("--save-histograms goes with --data; the histograms of --histograms are saved already")
    if args.max_tensors is not None and args.max_tensors < 0:
        raise TrtCalibError(f"--max-tensors must be >= 0, got {args.max_tensors}")
    if args.save_histograms and not Path(args.save_histograms).resolve().parent.is_dir():
        raise TrtCalibError(f"{args.save_histograms}: the folder to write it in does not exist")
    patterns = [p.strip() for p in args.tensors.split(",") if p.strip()] if args.tensors else None
    progress = not args.no_progress and not getattr(args, "quiet", False)
    meta: dict[str, object] = {}
    batches = histograms = None
    if args.data is not None:
        from ..ort.collect import load_model, model_inputs

        batches = open_data(args, model_inputs(load_model(args.model)))
        manifest = batches.manifest()
        meta["data"] = f"{args.data} ({manifest.get('num_batches')} batches of {manifest.get('batch_size')}, " \
                       f"{manifest.get('num_samples')} samples)"
    elif args.histograms is not None:
        from ..core.signs import load_any_histograms

        histograms = load_any_histograms(args.histograms)
        signed = sum(1 for h in histograms.values() if hasattr(h, "negative"))
        meta["histograms"] = f"{args.histograms} ({len(histograms)} tensors, {signed} with signs)"
    result = build_report(
        args.model,
        args.output,
        batches=batches,
        histograms=histograms,
        tensors=patterns,
        max_tensors=args.max_tensors,
        algorithm=args.algorithm,
        percentile=args.percentile,
        trt_version=args.trt_version,
        force=args.force,
        progress=progress,
        threads=args.threads,
        meta={**meta, **{k: v for sec in sections for k, v in sec.meta().items()}},
        save_histograms=args.save_histograms,
        sections=sections,
    )
    log.info("open %s", (Path(result.path) / "index.html").resolve().as_uri())
    return 0
