"""`trt-calib calibrate`: CPU calibration with onnxruntime, written as the cache TensorRT would write."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import TrtCalibError
from ._common import add_calibrator_dry_run, add_data_arguments, calibrator_dry_run, open_data, print_comparison

__all__ = ["register"]

log = logging.getLogger("trt_calib")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `calibrate` to the trt-calib parser."""
    from ..ort.collect import ALGORITHM_HEADERS
    from ..core.cache import DEFAULT_TRT_VERSION

    p = sub.add_parser(
        "calibrate",
        help="calibrate an ONNX model on the CPU and write a TensorRT calibration cache",
        description="Run MODEL with onnxruntime on the CPU over the calibration data, build TensorRT's |x| "
        "histogram of every tensor TensorRT calibrates, and write the cache TensorRT would write. "
        "Algorithms: entropy2 (TensorRT IInt8EntropyCalibrator2, header EntropyCalibration2), minmax "
        "(IInt8MinMaxCalibrator, header MinMaxCalibration), percentile and mse (not TensorRT calibrators: "
        "written under the EntropyCalibration2 header, the one trtexec --calib and EntropyCalibrator2 read, so "
        "TensorRT uses the scales as they are instead of recalibrating).",
    )
    p.add_argument("model", help="ONNX model")
    add_data_arguments(p)
    p.add_argument("--cache", required=True, metavar="OUT", help="calibration cache to write (also OUT.json "
                   "provenance next to it)")
    p.add_argument("--algorithm", choices=list(ALGORITHM_HEADERS), default="entropy2", help="default entropy2")
    p.add_argument("--percentile", type=float, default=99.99, help="for --algorithm percentile (default 99.99)")
    p.add_argument("--range", dest="range_mode", choices=("trt", "global"), default="trt",
                   help="histogram ranges: trt (TensorRT's: the first batch's max, doubled as later batches exceed "
                   "it, so batch size and order matter; default) or global (each tensor's max over all batches, "
                   "taken in a first pass: independent of batch size and order, but not TensorRT's algorithm; "
                   "the sidecar and --json say so, and TensorRT uses the cache's scales as they are)")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version to write the header for and to emulate (default {DEFAULT_TRT_VERSION}); "
                   "<= 8.0 also ties Concat inputs to the output's scale")
    p.add_argument("--json", metavar="OUT.json", help="also write per-tensor details (amax, index, ranges) as JSON")
    p.add_argument("--save-histograms", metavar="H.npz", help="also save every histogram (for reports, re-runs)")
    p.add_argument("--compare", metavar="REF.cache", help="print our table next to a reference cache "
                   "(e.g. TensorRT's) with the difference of each entry in float32 ULP")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--max-activation-mb", type=float, default=256,
                   help="run a batch in parts when its activations exceed this (default 256); the histograms "
                   "stay those of whole batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_calibrator_dry_run(p)
    p.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """The `calibrate` command: calibrate, write the cache, its sidecar and the extras; compare when asked."""
    from pathlib import Path

    from ..core.cache import CalibrationCache, make_header
    from ..core.result import GLOBAL_RANGE_NOTE
    from ..ort.collect import ALGORITHM_HEADERS, calibrate, load_model, model_inputs
    from ..tools.provenance import make_provenance, sidecar_path, write_provenance
    from .._util import atomic_write

    model = load_model(args.model)
    inputs = model_inputs(model)
    source = open_data(args, inputs)
    if args.dry_run:
        algorithm = args.algorithm if args.algorithm in ("entropy2", "minmax") else "entropy2"
        return calibrator_dry_run(source, inputs, algorithm=algorithm)
    reference = CalibrationCache.load(args.compare) if args.compare else None
    for out in (args.cache, args.json, args.save_histograms):
        if out and not Path(out).resolve().parent.is_dir():
            raise TrtCalibError(f"{out}: the folder to write it in does not exist")

    bar = None
    if not args.no_progress and not args.quiet:
        from tqdm import tqdm

        total = len(source) if source.kind != "generator" else None
        bar = tqdm(total=total, unit="batch", desc="calibrating", file=sys.stderr, leave=False, disable=None)
    try:
        result = calibrate(
            model,
            source,
            algorithm=args.algorithm,
            trt_version=args.trt_version,
            percentile=args.percentile,
            progress=bar.update if bar is not None else None,
            threads=args.threads,
            max_activation_mb=args.max_activation_mb,
            range_mode=args.range_mode,
        )
    finally:
        if bar is not None:
            bar.close()

    cache = result.cache
    cache.save(args.cache)
    manifest = source.manifest()
    write_provenance(
        args.cache,
        make_provenance(
            model_path=args.model,
            inputs=[{"name": s.name, "shape": list(s.shape), "dtype": s.dtype.name} for s in inputs],
            data_manifest=manifest,
            algorithm=args.algorithm,
            header=make_header(ALGORITHM_HEADERS[args.algorithm], args.trt_version),
            trt_version=args.trt_version,
            options={
                **({"percentile": args.percentile} if args.algorithm == "percentile" else {}),
                **({"range": args.range_mode, "note": GLOBAL_RANGE_NOTE} if args.range_mode != "trt" else {}),
            },
        ),
    )
    if args.range_mode != "trt":
        log.warning("--range %s: %s", args.range_mode, GLOBAL_RANGE_NOTE)
    if args.json:
        atomic_write(args.json, json.dumps(result.to_json(), indent=2) + "\n")
    if args.save_histograms:
        from ..core.histogram import save_histograms

        save_histograms(args.save_histograms, result.histograms)

    log.info(
        "calibrated %d tensors on %d batches (%d samples) in %.2f s, peak memory %.0f MB",
        len(result.amax), result.num_batches, manifest.get("num_samples", 0), result.seconds, result.peak_rss_mb,
    )
    log.info("wrote %s (%s) and %s", args.cache, cache.header, sidecar_path(args.cache))
    if reference is None:
        return 0
    from ..core.compare import compare

    comparison = compare(reference, result)
    print(f"ours ({cache.header}) against {args.compare} ({reference.header}):")
    print_comparison(comparison, ours_label="ours", ref_label="reference")
    return 0 if comparison.consistent else 1
