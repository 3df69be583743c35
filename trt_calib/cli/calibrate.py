"""`trt-calib calibrate`: CPU calibration with onnxruntime, written as the cache TensorRT would write."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import (
    add_calibrator_dry_run,
    add_data_arguments,
    add_executor_arguments,
    add_json_flag,
    batch_count,
    calibrator_dry_run,
    data_path,
    finite_float,
    guard_paths,
    json_file,
    json_file_text,
    model_inputs_of,
    model_paths,
    open_data,
    open_executor,
    percentile_arg,
    print_comparison,
    refuse_quantized_model,
    print_json,
    progress_bar,
    resolve_trt_version,
    threads_arg,
    trt_version_arg,
    write_output,
    writing,
)

__all__ = ["register"]

log = logging.getLogger("trt_calib")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `calibrate` to the trt-calib parser."""
    from ..ort.model import OPTIMIZATION_LEVELS
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
                   "provenance next to it, which records the cache's sha256)")
    p.add_argument("--algorithm", choices=list(ALGORITHM_HEADERS), default="entropy2", help="default entropy2")
    p.add_argument("--percentile", type=percentile_arg, default=99.99,
                   help="for --algorithm percentile, in (0, 100] (default 99.99)")
    p.add_argument("--trt-version", type=trt_version_arg, default=None,
                   help="TensorRT version to write the header for and to emulate (TensorRT ignores a cache whose "
                   "header names another version). Default: the installed tensorrt's, else "
                   f"{DEFAULT_TRT_VERSION}, with a warning; <= 8.0 also ties Concat inputs to the output's scale")
    p.add_argument("--range", dest="range_mode", choices=("trt", "global"), default="trt",
                   help="histogram ranges: trt (TensorRT's: the first batch's max, doubled as later batches exceed "
                   "it, so batch size and order matter; default) or global (each tensor's max over all batches, "
                   "taken in a first pass: independent of batch size and order, but not TensorRT's algorithm; "
                   "the sidecar and --json say so, and TensorRT uses the cache's scales as they are)")
    add_json_flag(p, file=True, help="print the result (cache, sidecar, header, TensorRT version and where it came "
                  "from, per-tensor amax, index and ranges, the --compare table) as JSON on stdout (errors too); "
                  "with FILE also write the same object there")
    p.add_argument("--save-histograms", metavar="H.npz", help="also save every histogram (for reports, re-runs)")
    p.add_argument("--compare", metavar="REF.cache", help="print our table next to a reference cache "
                   "(e.g. TensorRT's) with the difference of each entry in float32 ULP")
    p.add_argument("--optimization", choices=OPTIMIZATION_LEVELS, default="basic",
                   help="onnxruntime graph optimisation for the calibration runs: basic (default: the exact "
                   "arithmetic, which reproduces TensorRT's sampleINT8 table bit for bit where TensorRT's own GPU "
                   "sums allow) or all (about twice as fast on CNNs: NCHWc convolutions sum in another order, so "
                   "activations move by a few ULP and a scale can land on a neighbouring KL index)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads and "
                   "histogram threads, 1 to 256 (default: all cores; with --executor, per worker)")
    p.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=256,
                   help="activation memory a batch may take at once (default 256): a larger batch runs in parts, "
                   "each of half of it, as the next part runs while one is binned (all of it with --threads 1); "
                   "the histograms stay those of whole batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_calibrator_dry_run(p)
    add_executor_arguments(p, default="serial")
    p.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """The `calibrate` command: calibrate, write the cache, its sidecar and the extras; compare when asked."""
    from ..core.cache import CalibrationCache, make_header
    from ..core.result import GLOBAL_RANGE_NOTE
    from ..ort.collect import ALGORITHM_HEADERS, calibrate
    from ..tools.provenance import make_provenance, provenance_text, sidecar_path

    sidecar = sidecar_path(args.cache) if Path(args.cache).name else None  # "" and "." are refused below
    out_json = json_file(args)
    inputs_guard = {"MODEL": model_paths(args.model), "--data": data_path(args.data), "--compare": args.compare}
    if args.dry_run:
        guard_paths(inputs=inputs_guard, outputs={})
    else:
        guard_paths(inputs=inputs_guard, outputs={"--cache": args.cache, "the sidecar (--cache OUT.json)": sidecar,
                                                  "--json": out_json, "--save-histograms": args.save_histograms},
                    force=args.force)
    refuse_quantized_model(args.model, "calibration")
    if not args.dry_run:
        args.trt_version, trt_source = resolve_trt_version(args.trt_version)
    source = open_data(args, model_inputs_of(args.model))
    inputs = list(source.inputs)  # the batch axes --batch-axis gave
    if args.dry_run:
        algorithm = args.algorithm if args.algorithm in ("entropy2", "minmax") else "entropy2"
        return calibrator_dry_run(source, inputs, algorithm=algorithm, json_result=bool(args.json))
    reference = CalibrationCache.load(args.compare) if args.compare else None

    with progress_bar(args, total=batch_count(source), desc="calibrating") as progress, \
            open_executor(args) as executor:
        result = calibrate(
            args.model,
            source,
            algorithm=args.algorithm,
            trt_version=args.trt_version,
            percentile=args.percentile,
            progress=progress,
            threads=args.threads,
            max_activation_mb=args.max_activation_mb,
            range_mode=args.range_mode,
            optimization=args.optimization,
            executor=executor,
        )

    cache = result.cache
    payload = cache.to_bytes()  # refuses names the format cannot carry before anything is written
    manifest = source.manifest()
    provenance = make_provenance(
        model_path=args.model,
        inputs=[{"name": s.name, "shape": list(s.shape), "dtype": s.dtype.name, "batch_axis": s.batch_axis}
                for s in inputs],
        data_manifest=manifest,
        algorithm=args.algorithm,
        header=make_header(ALGORITHM_HEADERS[args.algorithm], args.trt_version),
        trt_version=args.trt_version,
        options={
            **({"percentile": args.percentile} if args.algorithm == "percentile" else {}),
            **({"range": args.range_mode, "note": GLOBAL_RANGE_NOTE} if args.range_mode != "trt" else {}),
            **({"optimization": args.optimization} if args.optimization != "basic" else {}),
            **({"uncovered": len(result.uncovered)} if result.uncovered else {}),
        },
        cache_bytes=payload,
    )
    comparison = None
    if reference is not None:
        from ..core.compare import compare

        comparison = compare(reference, result)
    summary = {"cache": str(args.cache), "sidecar": str(sidecar), "header": cache.header,
               **result.to_json(), "trt_version_source": trt_source,
               # peak_rss_mb is this process's; worker processes (--executor local/dask) hold their own memory besides
               "workers_peak_rss_mb": round(executor.workers_peak_mb, 1), "worker_processes": executor.worker_processes}
    if comparison is not None:
        summary["comparison"] = {"reference": str(args.compare), **comparison.to_json()}
    write_output(args.cache, payload, what="the cache")
    write_output(sidecar, provenance_text(provenance), what="the sidecar")
    if out_json:
        write_output(out_json, json_file_text(summary, "calibrate"), what="the --json result")
    if args.range_mode != "trt":
        log.warning("--range %s: %s", args.range_mode, GLOBAL_RANGE_NOTE)
    if args.save_histograms:
        from ..core.histogram import save_histograms

        with writing(args.save_histograms, what="the histograms"):
            save_histograms(args.save_histograms, result.histograms)

    workers = (f" here, {executor.workers_peak_mb:.0f} MB in its {executor.worker_processes} worker process(es)"
               if executor.worker_processes else "")
    log.info(
        "calibrated %d tensors on %d batches (%d samples) in %.2f s, peak memory %.0f MB%s",
        len(result.amax), result.num_batches, manifest.get("num_samples", 0), result.seconds, result.peak_rss_mb,
        workers,
    )
    if result.uncovered:  # each reason was logged as a warning by calibrate()
        log.warning("%d tensor(s) TensorRT names inside If/Loop/Scan bodies have no entry in %s (exit status 1)",
                    len(result.uncovered), args.cache)
    log.info("wrote %s (%s) and %s", args.cache, cache.header, sidecar)
    if comparison is not None:
        print(f"ours ({cache.header}) against {args.compare} ({reference.header}):")
        print_comparison(comparison, ours_label="ours", ref_label="reference")
    # A cache that leaves tensors TensorRT names without an entry is written, but not as a clean success.
    status = 0 if (comparison is None or comparison.consistent) and not result.uncovered else 1
    if args.json:
        print_json(summary)
    return status
