"""The `trt-calib` command line: argument parsing, output, exit codes and one-line errors.

Logic lives in the modules; each command here parses, calls one function, prints and returns an exit code.
User errors (`TrtCalibError`) print as one line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any, Callable, Sequence

from . import __version__
from .errors import TrtCalibError

__all__ = ["main", "build_parser"]

log = logging.getLogger("trt_calib")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.9g}"


# ---------------------------------------------------------------------------------------------- inspect
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a TensorRT calibration cache: header, version, algorithm, scales and amax, flags",
        description="Decode a TensorRT calibration cache (any version, 4 to 10.x) into a table of name / scale / amax "
        "and flag suspicious entries (zero, inf, NaN, denormal, duplicate names).",
    )
    p.add_argument("cache", help="calibration cache file (e.g. calibration.cache)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .cache_tools import inspect_cache

    report = inspect_cache(args.cache)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False, default=str))
        return 0
    print(f"file:        {report['file']}")
    print(f"header:      {report['header']}")
    print(f"TensorRT:    {report['trt_version']}")
    print(f"algorithm:   {report['algorithm']}")
    print(f"entries:     {report['num_entries']}")
    width = max([len(e["name"]) for e in report["entries"]] + [6])
    print()
    print(f"{'tensor':<{width}}  {'hex':>8}  {'scale':>14}  {'amax':>14}  flags")
    for e in report["entries"]:
        flags = ",".join(e["flags"])
        print(f"{e['name']:<{width}}  {e['hex']:>8}  {_fmt(float(e['scale'])):>14}  {_fmt(float(e['amax'])):>14}  {flags}")
    counts = report["flag_counts"]
    if counts:
        print()
        print("flags: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


# ---------------------------------------------------------------------------------------------- calibrate
def add_data_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The data options shared by every command that reads calibration data."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        metavar="PATH",
        help=".npy (single input), .npz (keys = input names), a folder of images (see --preprocess), "
        "or a Python file with a generator of {input_name: batch} (FILE.py or FILE.py:function, default load_data)",
    )
    g.add_argument("--batch-size", type=int, default=None, help="samples per calibration batch (default: the "
                   "model's static batch dim, else 8). TensorRT updates histograms once per batch, so it matters")
    g.add_argument("--last-batch", choices=("drop", "keep", "pad"), default=None,
                   help="what to do with a short last batch (default drop, with a warning)")
    g.add_argument("--shuffle", action="store_true", help="shuffle samples before batching (seed recorded)")
    g.add_argument("--seed", type=int, default=None, help="seed for --shuffle")
    g.add_argument("--offset", type=int, default=None, help="skip this many samples first")
    g.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    g.add_argument("--preprocess", default=None, metavar="SPEC",
                   help="image preprocessing, e.g. size=224,resize=256,mean=0.485/0.456/0.406,"
                   "std=0.229/0.224/0.225,scale=1/255,layout=NCHW,order=RGB")


def open_data(args: argparse.Namespace, inputs: list) -> Any:
    """A `BatchSource` from the data options; only options the user gave are passed (data scripts refuse others)."""
    from .data import Preprocess, open_source

    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    elif not str(args.data).split(":")[0].endswith(".py"):
        first = inputs[0].shape[0] if inputs and inputs[0].shape else None
        kwargs["batch_size"] = first if isinstance(first, int) and first > 0 else 8
    for key in ("last_batch", "seed", "offset", "limit"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.shuffle:
        kwargs["shuffle"] = True
    if args.preprocess:
        kwargs["preprocess"] = Preprocess.parse(args.preprocess)
    return open_source(args.data, inputs, **kwargs)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    from .collect import ALGORITHM_HEADERS
    from .cache import DEFAULT_TRT_VERSION

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
    from .cli_build import add_calibrator_dry_run

    add_calibrator_dry_run(p)
    p.set_defaults(handler=_run_calibrate)


def print_comparison(comparison: Any, *, ours_label: str = "ours", ref_label: str = "reference") -> None:
    """Our table next to a reference, one line per tensor, with the ULP difference and the verdict."""
    rows = comparison.rows
    width = max([len(r.name) for r in rows] + [6])
    print(f"{'tensor':<{width}}  {ref_label:>10}  {ours_label:>10}  {'ULP':>5}  {'index':>11}  verdict")
    from .cache import amax_to_scale, scale_to_hex

    def hx(v: float | None) -> str:
        return "-" if v is None else scale_to_hex(amax_to_scale(v))

    for r in rows:
        ulps = "-" if r.ulps is None else str(r.ulps)
        if r.reference_index is not None and r.our_index is not None:
            index = f"{r.reference_index:.2f}/{r.our_index}"
        else:
            index = "-"
        print(f"{r.name:<{width}}  {hx(r.reference_amax):>10}  {hx(r.our_amax):>10}  {ulps:>5}  {index:>11}  {r.verdict}")
    print(comparison.summary())


def _run_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .cache import CalibrationCache, make_header
    from .collect import ALGORITHM_HEADERS, calibrate, load_model, model_inputs
    from .provenance import make_provenance, sidecar_path, write_provenance
    from ._util import atomic_write

    model = load_model(args.model)
    inputs = model_inputs(model)
    source = open_data(args, inputs)
    if args.dry_run:
        from .cli_build import calibrator_dry_run

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
            options={"percentile": args.percentile} if args.algorithm == "percentile" else {},
        ),
    )
    if args.json:
        atomic_write(args.json, json.dumps(result.to_json(), indent=2) + "\n")
    if args.save_histograms:
        from .histogram import save_histograms

        save_histograms(args.save_histograms, result.histograms)

    log.info(
        "calibrated %d tensors on %d batches (%d samples) in %.2f s, peak memory %.0f MB",
        len(result.amax), result.num_batches, manifest.get("num_samples", 0), result.seconds, result.peak_rss_mb,
    )
    log.info("wrote %s (%s) and %s", args.cache, cache.header, sidecar_path(args.cache))
    if reference is None:
        return 0
    from .compare import compare

    comparison = compare(reference, result)
    print(f"ours ({cache.header}) against {args.compare} ({reference.header}):")
    print_comparison(comparison, ours_label="ours", ref_label="reference")
    return 0 if comparison.consistent else 1


# ---------------------------------------------------------------------------------------------- parser
# Commands that live beside the logic they drive; each module's register(subparsers) adds its subcommands.
_COMMAND_MODULES = ("cli_cache", "cli_qdq", "cli_evaluate", "cli_report")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(
        prog="trt-calib",
        description="TensorRT INT8 calibration you can check: TensorRT's algorithms reimplemented in numpy, "
        "calibration on the CPU, and tools for calibration caches.",
    )
    parser.add_argument("--version", action="version", version=f"trt-calib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_inspect(sub)
    _add_calibrate(sub)
    from .cli_build import add_build_parser

    add_build_parser(sub)
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 warnings where a command says so, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except TrtCalibError as exc:
        if args.debug:
            raise
        print(f"trt-calib {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"trt-calib {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
