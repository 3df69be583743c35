"""The `trt-calib` command line: the parser over every command module, logging, exit codes and one-line errors.

Each command module (`calibrate`, `cache`, `build`, `quantize`, `qdq_to_cache`, `evaluate`, `sensitivity`, `report`,
`stability`, `doctor`, `round_weights`, `tune`) has `register(subparsers)`; the handlers parse nothing themselves, call the layers below, print
and return an exit code.

Exit codes, the same for every command: 0 ok; 1 findings (warnings, differences, not consistent) and a broken pipe;
2 usage or input error; 3 findings that are errors; 70 an unexpected error (a bug: one line, the traceback with
--debug); 130 interrupted. With `--json`, stdout holds exactly one JSON object: the result, or for an error
{"error": "...", "exit": N}; everything else (a data script's prints too) goes to stderr. An error or an interrupt
after some outputs were written names them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, NoReturn, Sequence

from .. import __version__
from ..errors import TrtCalibError, UsageError
from ._common import json_mode, reset_written, written_outputs

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_ERRORS", "EXIT_UNEXPECTED"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_ERRORS = 3
EXIT_UNEXPECTED = 70

#: The command modules, in the order their commands appear in --help.
_COMMAND_MODULES = (
    "calibrate", "cache", "build", "quantize", "qdq_to_cache", "evaluate", "sensitivity", "report", "stability",
    "doctor", "round_weights", "tune",
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2, JSON with --json) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _global_options() -> argparse.ArgumentParser:
    """-q and --debug, accepted before and after the command name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors on stderr (no progress bars)")
    return common


class _Subparsers(argparse._SubParsersAction):
    """Every subcommand parser gets -q/--debug and the one-line error behaviour."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("parents", [])
        kwargs["parents"] = [*kwargs["parents"], _global_options()]
        return super().add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand)."""
    parser = _Parser(
        prog="trt-calib",
        description="TensorRT INT8 calibration you can check: TensorRT's algorithms reimplemented in numpy, "
        "calibration on the CPU, and tools for calibration caches.",
        epilog="exit codes: 0 ok, 1 findings, 2 usage or input error, 3 findings that are errors, 70 unexpected",
        parents=[_global_options()],
    )
    parser.register("action", "parsers", _Subparsers)
    parser.add_argument("--version", action="version", version=f"trt-calib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


def _wants_json(argv: Sequence[str], args: argparse.Namespace | None) -> bool:
    if args is not None:
        return bool(getattr(args, "json", False))
    return any(a == "--json" or a.startswith("--json=") for a in argv)


def _command(argv: Sequence[str], args: argparse.Namespace | None) -> str:
    if args is not None and getattr(args, "command", None):
        return str(args.command)
    return next((a for a in argv if not a.startswith("-")), "")


def _fail(message: str, code: int, *, argv: Sequence[str], args: argparse.Namespace | None) -> int:
    command = _command(argv, args)
    written = written_outputs()
    if written:
        message = f"{message} (already written before this: {', '.join(written)})"
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"trt-calib{' ' + command if command else ''}: error: {line}", file=sys.stderr)
    if _wants_json(argv, args):
        print(json.dumps({"error": line, "exit": code}))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (see the module docstring for the codes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    debug = "--debug" in argv
    reset_written()
    try:
        args = build_parser().parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        quiet = bool(getattr(args, "quiet", False))
        args.quiet, args.debug = quiet, debug
        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO,
            format="%(levelname)s: %(message)s" if debug else "%(message)s",
            stream=sys.stderr,
        )
        with json_mode(_wants_json(argv, args)):
            return int(args.handler(args) or 0)
    except TrtCalibError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code, argv=argv, args=args)
    except KeyboardInterrupt:
        return _fail("interrupted" if written_outputs() else "interrupted; no output was written", 130, argv=argv,
                     args=args)
    except BrokenPipeError:
        # stdout went away (`trt-calib diff A B | head`): not a success; keep Python from complaining at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FINDINGS
    except Exception as exc:  # a bug in trt-calib or a library: one line, the traceback with --debug
        if debug:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                     EXIT_UNEXPECTED, argv=argv, args=args)
