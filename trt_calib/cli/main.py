"""The `trt-calib` command line: the parser over every command module, logging, exit codes and one-line errors.

Each command module (`calibrate`, `cache`, `build`, `quantize`, `qdq_to_cache`, `evaluate`, `sensitivity`, `report`,
`stability`, `doctor`, `round_weights`, `tune`) has `register(subparsers)`; the handlers parse nothing themselves, call the layers below, print
and return an exit code.

Exit codes, the same for every command: 0 ok; 1 findings (warnings, differences, not consistent) and a broken pipe
(the reader of stdout went away before the command ended); 2 usage or input error (a standard output that cannot
be written, such as /dev/full, included); 3 findings that are errors; 70 an unexpected error (a bug: one line, the
traceback with --debug); 75 a worker process died (killed by the system, out of memory: not a bug of trt-calib, the
run may succeed with fewer workers); 130 interrupted (one line; a second Ctrl-C while workers are being stopped is
ignored). With `--json`, stdout holds exactly one JSON object: the result, or for an error
{"error": "...", "exit": N}; everything else (a data script's prints, and what it writes to file descriptor 1
itself or through a subprocess) goes to stderr. An error or an interrupt after some outputs were written names them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import select
import signal
import stat
import sys
import threading
from typing import Any, Iterator, NoReturn, Sequence

from .. import __version__
from ..errors import EXIT_WORKER_LOST, TrtCalibError, UsageError
from ._common import check_executor_arguments, json_mode, reset_written, written_outputs

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_ERRORS", "EXIT_UNEXPECTED",
           "EXIT_WORKER_LOST", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_ERRORS = 3
EXIT_UNEXPECTED = 70
EXIT_INTERRUPTED = 130

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
        epilog="exit codes: 0 ok, 1 findings (or a broken pipe), 2 usage or input error, 3 findings that are errors, "
        "70 unexpected, 75 a worker process died, 130 interrupted",
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


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so what Python still holds for stdout can be flushed at exit without a
    second error (a closed pipe, a full disk)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _fail(message: str, code: int, *, argv: Sequence[str], args: argparse.Namespace | None) -> int:
    command = _command(argv, args)
    written = written_outputs()
    if written:
        message = f"{message} (already written before this: {', '.join(written)})"
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"trt-calib{' ' + command if command else ''}: error: {line}", file=sys.stderr)
    if _wants_json(argv, args):
        try:
            print(json.dumps({"error": line, "exit": code}), flush=True)
        except (OSError, TrtCalibError):  # stdout itself is what failed (a closed pipe, a full disk)
            _discard_stdout()
    return code


class _StdoutError(UsageError):
    """Standard output cannot be written (a full disk, /dev/full): one line, exit 2, like any output."""


class _GuardedStdout:
    """sys.stdout while a command runs: a write or flush that fails (other than a closed pipe) raises _StdoutError
    naming standard output, instead of an OSError that looks like a bug (exit 70) or a traceback at exit."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(f"cannot write to standard output: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def writelines(self, lines: Any) -> None:
        self._guard(self._stream.writelines, lines)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_stdout() -> Iterator[None]:
    original = sys.stdout
    sys.stdout = _GuardedStdout(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = original


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`trt-calib inspect --json | head -c 10`): the output was
    cut, so the command did not deliver it, even though every write went into the pipe."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _end_script_processes() -> None:
    """Stop what a data script started and left running (no orphan outlives the command), and say so."""
    if "trt_calib.ort.data.scripts" not in sys.modules:  # no script ran (inspect, diff, ...)
        return
    from ..ort.data import end_user_processes

    left = end_user_processes()
    if left:
        print(f"trt-calib: warning: the data script left {len(left)} process(es) running ({', '.join(map(str, left))});"
              " stopped them", file=sys.stderr)


@contextlib.contextmanager
def _interrupt_once() -> Iterator[None]:
    """While a command runs, the first SIGINT raises KeyboardInterrupt and later ones are ignored: the command is
    then stopping its workers and must not be cut short (a second Ctrl-C, or `timeout` and the terminal both sending
    one, hung the run or left workers alive). Only in the main thread; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = []

    def handler(signum: int, frame: Any) -> None:
        if interrupted:
            return
        interrupted.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        # After a real Ctrl-C the command is on its way out: a later one (the terminal and `timeout` both sending
        # one) must not turn the one-line exit 130 into a death by SIGINT. Otherwise the previous handler returns.
        signal.signal(signal.SIGINT, signal.SIG_IGN if interrupted else previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (see the module docstring for the codes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _interrupt_once():
        with _guarded_stdout():
            code = _run(argv)
        _end_script_processes()
        if code == EXIT_OK and _reader_gone():
            _discard_stdout()
            return EXIT_FINDINGS
        return code


def _run(argv: list[str]) -> int:
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
        check_executor_arguments(args)
        with json_mode(_wants_json(argv, args)):
            code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a full disk or a closed pipe is this command's failure, not one at exit
        return code
    except _StdoutError as exc:
        _discard_stdout()
        return _fail(str(exc), exc.exit_code, argv=argv, args=args)
    except TrtCalibError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code, argv=argv, args=args)
    except KeyboardInterrupt:
        return _fail("interrupted" if written_outputs() else "interrupted; no output was written", EXIT_INTERRUPTED,
                     argv=argv, args=args)
    except BrokenPipeError:
        # stdout went away (`trt-calib diff A B | head`): not a success; keep Python from complaining at exit.
        _discard_stdout()
        return EXIT_FINDINGS
    except Exception as exc:  # a bug in trt-calib or a library: one line, the traceback with --debug
        if debug:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                     EXIT_UNEXPECTED, argv=argv, args=args)
