"""`trt-calib report`: the HTML calibration report, as a subcommand the CLI wires in with `register(subparsers)`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._common import (
    add_data_arguments,
    add_json_flag,
    data_path,
    finite_float,
    guard_paths,
    int_in,
    model_inputs_of,
    model_paths,
    non_negative_int,
    open_data,
    percentile_arg,
    print_json,
    threads_arg,
    trt_version_arg,
    writing,
)

__all__ = ["register", "run_report"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib report MODEL.onnx (--data D | --histograms H.npz) -o DIR [...]`; its handler is `run_report`."""
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..tools.report import FIGURE_MODES, THRESHOLDS

    p = subparsers.add_parser(
        "report",
        help="write an HTML report: per-tensor histograms, thresholds, KL curves, signs, expected int8 error",
        description="Write a self-contained HTML report (DIR/index.html and report.json; opens from disk, fetches "
        "nothing; the figures are drawn by the page from the numbers embedded in it). Per tensor: TensorRT's |x| histogram with the entropy2, minmax, percentile and mse thresholds, the KL "
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
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder to write (a new one is "
                   "renamed into place whole; in an earlier report's folder only the files that report wrote, listed "
                   "in its report-manifest.json, are replaced; a non-empty folder that is not a report needs "
                   "--force, and nothing in it is deleted)")
    p.add_argument("--tensors", metavar="PATTERN", help="only tensors matching these shell globs, comma-separated "
                   "(e.g. 'conv*,ip1')")
    p.add_argument("--max-tensors", type=non_negative_int, metavar="N", help="draw figures for the N tensors with "
                   "the lowest SQNR (default: all); every tensor stays in the table")
    p.add_argument("--algorithm", choices=list(THRESHOLDS), default="entropy2",
                   help="the threshold the report judges (default entropy2, what TensorRT picks)")
    p.add_argument("--percentile", type=percentile_arg, default=99.99,
                   help="percentile threshold to draw, in (0, 100] (default 99.99)")
    p.add_argument("--trt-version", type=trt_version_arg, default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose scale ties to apply (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--save-histograms", metavar="H.npz", help="with --data: also save the signed histograms, "
                   "for later reports without a second pass")
    p.add_argument("--stability", metavar="STAB.json", help="add the stability section (spread bars, settle "
                   "curve, end-to-end effect) from `trt-calib stability -o STAB.json`; alone, without --data or "
                   "--histograms, the page holds only that section")
    p.add_argument("--force", action="store_true", help="write into a non-empty -o folder that is not a report "
                   "(the report's files are added; nothing there is deleted)")
    p.add_argument("--figures", choices=list(FIGURE_MODES), default="inline",
                   help="inline (default): the browser draws each tensor's figure from the numbers embedded in "
                   "index.html (one file, seconds for hundreds of tensors); png: matplotlib draws DIR/figures/*.png "
                   "(image files to reuse elsewhere; about 0.2 s of CPU per figure, in --workers processes)")
    p.add_argument("--workers", type=int_in(1, 4096), default=None, help="with --figures png: processes drawing "
                   "the figures (default: one per core, fewer for a few figures; 1 draws in this process)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads, 1 to 256 "
                   "(default: all cores)")
    p.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=256,
                   help="with --data: run a batch in parts when its activations exceed this (default 256, as "
                   "calibrate); the histograms stay those of whole batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_flag(p, help="print what was written as JSON on stdout (errors too)")
    p.set_defaults(handler=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """Handler of `trt-calib report`: returns 0 once the report folder is in place."""
    from ..tools.report import MANIFEST, build_report

    only_sections = args.data is None and args.histograms is None and (args.stability or args.sensitivity)
    if args.data is not None and args.histograms is not None or (
            args.data is None and args.histograms is None and not only_sections):
        raise UsageError("report needs exactly one of --data D (run the model) or --histograms H.npz "
                         "(reuse a calibration's histograms), or only --stability STAB.json / --sensitivity SENS.json")
    if args.save_histograms and args.histograms:
        raise UsageError("--save-histograms goes with --data; the histograms of --histograms are saved already")
    if args.workers is not None and args.figures != "png":
        raise UsageError("--workers goes with --figures png (inline figures are drawn by the browser)")
    out = Path(args.output)
    guard_paths(
        inputs={"MODEL": model_paths(args.model), "--data": data_path(args.data), "--histograms": args.histograms,
                "--stability": args.stability, "--sensitivity": args.sensitivity},
        outputs={"--save-histograms": args.save_histograms, "the report's index.html": out / "index.html",
                 "the report's report.json": out / "report.json", "the report's manifest": out / MANIFEST}
        if out.is_dir() else {"--save-histograms": args.save_histograms},
        folders={"-o": args.output},
    )
    sections: list[Any] = []
    if args.sensitivity is not None:
        from ..tools.sensitivity_report import SensitivitySection

        sections.append(SensitivitySection(args.sensitivity))
    if args.stability is not None:
        from ..tools.stability_report import StabilitySection

        sections.append(StabilitySection(args.stability))
    patterns = [p.strip() for p in args.tensors.split(",") if p.strip()] if args.tensors else None
    progress = not args.no_progress and not getattr(args, "quiet", False)
    meta: dict[str, object] = {}
    batches = histograms = None
    if args.data is not None:
        batches = open_data(args, model_inputs_of(args.model))
        meta["data"] = f"{args.data} ({len(batches)} batches of {batches.batch_size}, {batches.num_samples} samples)"
    elif args.histograms is not None:
        from ..core.signs import load_any_histograms

        histograms = load_any_histograms(args.histograms)
        signed = sum(1 for h in histograms.values() if hasattr(h, "negative"))
        meta["histograms"] = f"{args.histograms} ({len(histograms)} tensors, {signed} with signs)"
    with writing(args.output, what="the report"):
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
            max_activation_mb=args.max_activation_mb,
            figures=args.figures,
            workers=args.workers,
        )
    index = (Path(result.path) / "index.html").resolve()
    if getattr(args, "json", False):
        print_json({"output": str(result.path), "index": str(index), "tensors": len(result.summaries),
                    "drawn": result.drawn, "figures": result.figures, "figure_mode": args.figures,
                    "sections": result.sections, "save_histograms": args.save_histograms,
                    "left_out": [{"name": n, "why": why} for n, why in result.left_out.items()]})
    log.info("open %s", index.as_uri())
    if result.left_out:
        log.warning("%d tensor(s) inside If/Loop/Scan bodies are not in the report (the page lists them with why; "
                    "exit status 1)", len(result.left_out))
        return 1
    return 0
