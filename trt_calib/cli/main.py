"""The `trt-calib` command line: the parser over every command module, logging, exit codes and one-line errors.

Each command module (`calibrate`, `cache`, `build`, `quantize`, `evaluate`, `report`) has `register(subparsers)`;
the handlers parse nothing themselves, call the layers below, print and return an exit code. User errors
(`TrtCalibError`) print as one line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from .. import __version__
from ..errors import TrtCalibError

__all__ = ["main", "build_parser"]

#: The command modules, in the order their commands appear in --help.
_COMMAND_MODULES = ("calibrate", "cache", "build", "quantize", "evaluate", "report")


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
