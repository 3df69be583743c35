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
from typing import Callable, Sequence

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


# ---------------------------------------------------------------------------------------------- parser
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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
    for add in _EXTRA_COMMANDS:
        add(sub)
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
