"""What every trt-calib command shares: argument types checked at parse time, the output guard, atomic output
writes, the data options, the dry run and the comparison table. Command modules import from here, never from each
other or from `cli.main`.

The CLI contract (README, "The command-line contract"): every argument is checked before any data is read (a bad one
is one line, exit 2); no output may be an input or another output of the same run; outputs are written atomically,
and a write that fails is one line naming the path; with `--json` stdout holds exactly one JSON object (the result,
or {"error", "exit"}), everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from .._util import atomic_write
from ..errors import TrtCalibError, UsageError

T = TypeVar("T")

__all__ = [
    "positive_int",
    "add_held_out_arguments",
    "same_data",
    "split_held_out",
    "candidates_arg",
    "non_negative_int",
    "int_in",
    "finite_float",
    "trt_version_arg",
    "resolve_trt_version",
    "checked_by",
    "threads_arg",
    "percentile_arg",
    "calibrator_arg",
    "MAX_THREADS",
    "add_json_flag",
    "add_executor_arguments",
    "add_device_argument",
    "open_progress",
    "progress_bar",
    "batch_count",
    "open_executor",
    "check_executor_arguments",
    "json_file",
    "json_text",
    "json_file_text",
    "is_ours",
    "JSON_MARK",
    "print_json",
    "json_mode",
    "guard_paths",
    "data_path",
    "model_paths",
    "write_output",
    "writing",
    "written_outputs",
    "reset_written",
    "add_data_arguments",
    "open_data",
    "print_comparison",
    "fmt_float",
    "add_calibrator_dry_run",
    "calibrator_dry_run",
    "model_inputs_of",
    "batch_axis_arg",
    "refuse_quantized_model",
]


# ---------------------------------------------------------------------------------------------- argument types
# Used as argparse `type=`: a bad value is refused at parse time, as one line naming the option.


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def candidates_arg(text: str) -> int | str:
    """`--candidates`: "all" or an integer >= 1 (how many units a sensitivity ranking measures)."""
    return "all" if text == "all" else positive_int(text)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in [lo, hi] (bounds that keep a typo from taking the machine, e.g. thread counts)."""

    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> Callable[[str], float]:
    """A finite float, optionally in [lo, hi] (open ends with lo_open / hi_open); nan and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        high_bad = hi is not None and (value >= hi if hi_open else value > hi)
        if low_bad or high_bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            bounds = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {value:g}")
        return value

    return parse


def trt_version_arg(text: str) -> str:
    """A TensorRT version that a cache header can encode (MAJOR.MINOR[.PATCH[.BUILD]], digits only)."""
    from ..core.cache import encode_version

    try:
        encode_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def checked_by(parse: Callable[[str], T], what: str = "") -> Callable[[str], T]:
    """An argparse type from a parser that raises TrtCalibError or ValueError (e.g. `Preprocess.parse`)."""

    def run(text: str) -> T:
        try:
            return parse(text)
        except (TrtCalibError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    run.__name__ = what or getattr(parse, "__name__", "value")
    return run


#: --threads above this is a typo, not a machine (100000 threads took 16 GB before anything ran).
MAX_THREADS = 256
threads_arg = int_in(1, MAX_THREADS)
#: A percentile of |x| in (0, 100].
percentile_arg = finite_float(0, 100, lo_open=True)


def calibrator_arg(text: str) -> str:
    """A calibrator as trt-calib names it (entropy2, minmax, ...) or as a cache header does; the header name."""
    from ..tools.entries import header_algorithm

    try:
        return header_algorithm(text)
    except TrtCalibError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _preprocess_arg(text: str) -> Any:
    from ..ort.data import Preprocess

    return Preprocess.parse(text)


def add_json_flag(p: argparse.ArgumentParser, *, file: bool = False, help: str | None = None) -> None:
    """`--json`: the result as one JSON object on stdout (all other output goes to stderr); errors are
    {"error": ..., "exit": N} on stdout. With `file=True` it is `--json [FILE]`: FILE also gets the JSON."""
    if file:
        p.add_argument("--json", nargs="?", const=True, default=None, metavar="FILE",
                       help=help or "print the result as JSON on stdout (errors too); with FILE also write it there")
        p.add_argument("--force", action="store_true",
                       help="replace an existing --json FILE that trt-calib did not write (one it wrote is replaced "
                       "without asking)")
    else:
        p.add_argument("--json", action="store_true",
                       help=help or "print the result as one JSON object on stdout (errors too)")


def json_file(args: argparse.Namespace) -> str | None:
    """The FILE of `--json FILE`, None for a bare `--json` or none."""
    value = getattr(args, "json", None)
    return value if isinstance(value, str) else None


# stdout as it was before `json_mode` sent print() to stderr: where the one JSON object goes.
_result_streams: list[Any] = []


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def json_mode(enabled: bool) -> Iterator[None]:
    """While enabled, everything but `print_json` goes to stderr: print() (ours, a data script's), and what is
    written to file descriptor 1 itself (`os.write(1, ...)` in a data script, a subprocess it starts, a library):
    fd 1 is pointed at stderr's file while the command runs, and the one JSON object goes to the real stdout
    through a descriptor kept aside."""
    if not enabled:
        yield
        return
    result: Any = sys.stdout
    saved = None
    out_fd, err_fd = _fileno(sys.__stdout__), _fileno(sys.stderr) or _fileno(sys.__stderr__)
    if out_fd is not None and err_fd is not None and out_fd != err_fd:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        try:
            saved = os.dup(out_fd)
            os.dup2(err_fd, out_fd)
        except OSError:
            saved = None
        else:
            if _fileno(sys.stdout) == out_fd:  # a real stdout (not one a test captures): write past the redirect
                result = open(os.dup(saved), "w", encoding=getattr(sys.stdout, "encoding", None) or "utf-8",
                              errors=getattr(sys.stdout, "errors", None) or "strict", closefd=True)
    _result_streams.append(result)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _result_streams.pop()
        if result is not sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                result.close()
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()  # what Python buffered for fd 1 meanwhile belongs to stderr's side
            os.dup2(saved, out_fd)
            os.close(saved)


def print_json(obj: Any) -> None:
    """The command's result as one JSON object on stdout (non-finite floats must already be strings)."""
    stream = _result_streams[-1] if _result_streams else sys.stdout
    try:
        stream.write(json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
        stream.flush()
    except BrokenPipeError:
        raise  # the reader went away: exit 1 (main)
    except OSError as exc:  # /dev/full, a disk that filled up: one line, not a traceback
        raise UsageError(f"cannot write to standard output: {exc.strerror or exc}") from None


def json_text(obj: Any) -> str:
    """`obj` as the JSON text a command writes to a --json FILE."""
    return json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n"


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """--device: the GPU library that holds the calibration buffers (trt.device's backends, or auto)."""
    from ..trt.device import BACKENDS

    p.add_argument("--device", choices=("auto", *BACKENDS), default="auto",
                   help="GPU library for the calibration buffers (default: auto = the first that works)")


def open_progress(args: argparse.Namespace, *, total: int | None, desc: str, unit: str = "batch") -> Any:
    """A tqdm bar on stderr, or None with -q or --no-progress (tqdm itself stays silent off a terminal)."""
    if getattr(args, "no_progress", False) or getattr(args, "quiet", False):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, disable=None)


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, *, total: int | None, desc: str,
                 unit: str = "batch") -> Iterator[Callable[[int], None] | None]:
    """`open_progress` as a context: yields the bar's update (None without a bar) and closes the bar."""
    bar = open_progress(args, total=total, desc=desc, unit=unit)
    try:
        yield None if bar is None else bar.update
    finally:
        if bar is not None:
            bar.close()


def batch_count(source: Any) -> int | None:
    """How many batches a source holds, for a progress bar (None for a generator: unknown until it ends)."""
    return None if getattr(source, "kind", None) == "generator" else len(source)


def add_executor_arguments(p: argparse.ArgumentParser, *, default: str = "local") -> None:
    """--executor / --workers / --address: where a command's independent model runs go (docs/executors.md)."""
    from ..ort.executor import EXECUTORS

    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=EXECUTORS, default=default,
                   help=f"serial (this process), local (worker processes, all cores) or dask (a cluster; "
                   f"pip install \"trt-calib[cluster]\"). Default {default}; results are the same")
    g.add_argument("--workers", type=int_in(1, 4096), default=None,
                   help="worker processes (default: one per core, fewer when memory is short; at most one per core "
                   "on this machine; with --address, the cluster's workers)")
    g.add_argument("--address", type=checked_by(_address_arg, "address"), default=None, metavar="tcp://HOST:PORT",
                   help="a running Dask scheduler (--executor dask); without it a local cluster is started")


def _address_arg(text: str) -> str:
    from ..ort.executor import check_address

    return check_address(text)


def _model_bytes(model: Any) -> int:
    """The size of a model's files (the .onnx and its external data); 0 when it cannot be told yet."""
    total = 0
    try:
        for path in model_paths(model):
            total += os.stat(path).st_size
    except (TrtCalibError, OSError, ValueError, TypeError):
        pass
    return total


def check_executor_arguments(args: argparse.Namespace) -> None:
    """The executor options, checked right after parsing, before any data is read: --address needs --executor
    dask, --workers is refused with --executor serial, and is capped by this machine's cores and memory (each local
    worker is a process with onnxruntime and the model; `ort.executor.check_workers`). main() calls it."""
    if not hasattr(args, "executor"):
        return
    from ..ort.executor import check_workers

    if args.address is not None and args.executor != "dask":
        raise UsageError("--address needs --executor dask")
    model = getattr(args, "model", None)
    args.workers = check_workers(args.executor, args.workers, address=args.address,
                                 model_bytes=_model_bytes(model) if model and args.executor != "serial" else 0)


def open_executor(args: argparse.Namespace) -> Any:
    """The executor the options name; a context manager (close it to release the workers)."""
    from ..ort.executor import make_executor

    if args.address is not None and args.executor != "dask":
        raise UsageError("--address needs --executor dask")
    return make_executor(args.executor, workers=args.workers, address=args.address)


# ---------------------------------------------------------------------------------------------- outputs
def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _paths(value: Any) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)] if str(value) != "" else []
    return [Path(v) for v in value if v is not None and str(v) != ""]


def _image_like(path: Path) -> bool:
    from ..ort.data import IMAGE_EXTENSIONS

    return path.suffix.lower() in IMAGE_EXTENSIONS


#: The key that marks a --json FILE as trt-calib's own (the README's contract): a JSON object whose "written_by" is
#: "trt-calib VERSION COMMAND". Only such a file is replaced by a later --json FILE without --force.
JSON_MARK = "written_by"
#: A --json FILE larger than this is not ours (ours are a few MB at most); it is not read to find out.
_OURS_LIMIT = 64 << 20


def json_file_text(obj: Mapping[str, Any], command: str) -> str:
    """`obj` as the JSON text of a --json FILE, marked as trt-calib's (`JSON_MARK`) so a later run may replace it."""
    from .. import __version__

    return json_text({JSON_MARK: f"trt-calib {__version__} {command}", **obj})


def is_ours(path: str | os.PathLike) -> bool:
    """Whether `path` is a --json FILE trt-calib wrote: a JSON object carrying `JSON_MARK` (see `json_file_text`)."""
    from .._util import read_json

    try:
        if os.stat(path).st_size > _OURS_LIMIT:
            return False
        value = read_json(path, limit=_OURS_LIMIT)
    except (TrtCalibError, OSError):
        return False
    mark = value.get(JSON_MARK) if isinstance(value, dict) else None
    return isinstance(mark, str) and mark.startswith("trt-calib ")


def _input_files(value: Any) -> list[Path]:
    """The files an input option reads: a data script's FILE.py of FILE.py:function, and for a single .onnx path the
    model's external-data files next to it (a list, such as `model_paths` gives, is taken as complete; an unreadable
    model adds none: loading it reports that, after the guard)."""
    from ..ort.data import data_file

    single = isinstance(value, (str, os.PathLike))
    files: list[Path] = []
    for given in _paths(value):
        path = data_file(given)
        files.append(path)
        if single and path.suffix.lower() == ".onnx" and path.is_file():
            files += _external_data(path)
    return list(dict.fromkeys(files))


def _external_data(model: Path) -> list[Path]:
    from ..ort.model import external_data_files

    try:
        return external_data_files(model)
    except TrtCalibError:
        return []


def guard_paths(
    *,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, str | os.PathLike | None],
    folders: Mapping[str, str | os.PathLike | None] | None = None,
    force: bool = False,
) -> None:
    """Refuse, before any work, outputs that would destroy an input or each other, or that cannot be written.

    `inputs` map an option name (e.g. "--data", "MODEL") to a path or a list of paths; every file an input reads is
    guarded: a data script given as FILE.py:function is FILE.py, and an .onnx model brings its external-data files
    (`model_paths` does the same for a model of any name). `outputs` map an option name to a file path (None: not
    given). An output that resolves (realpath / samefile) to any input or to another output, an empty path, a
    directory where a file goes, an existing FIFO, device or socket (never replaced by a regular file), a missing or
    read-only folder, or an image written into an image folder that is read as data, is a UsageError naming the
    options. An input that is a FIFO, device or socket is refused too (reading it could block or never end). The
    output "--json" (a `--json FILE`) replaces an existing file only when trt-calib wrote it (`is_ours`), or with
    `force`. `folders` are output folders (report -o): they may exist, must not be an input, and must be creatable
    and writable.
    """
    from .._util import special_file

    given_in = [(name, path) for name, value in inputs.items() for path in _input_files(value)]
    for name, path in given_in:
        special = special_file(path)
        if special is not None:
            raise UsageError(f"{name} {path} is {special}, not a regular file or folder; trt-calib reads regular "
                             "files only (a FIFO would block until a writer appears, a device never ends). Hint: copy "
                             "it to a file")
    given_out = {}
    for name, value in outputs.items():
        if value is None:
            continue
        if str(value) == "":
            raise UsageError(f"{name}: empty path")
        given_out[name] = Path(value)
    for name, path in given_out.items():
        for in_name, in_path in given_in:
            if _same_file(path, in_path):
                raise UsageError(f"{name} {path} is the input {in_name}; refusing to overwrite the input. Hint: write "
                                 "elsewhere")
            if in_path.is_dir() and _image_like(path) and _same_file(path.parent, in_path):
                raise UsageError(f"{name} {path} would add an image to the data folder {in_name} {in_path}, which "
                                 "the next run reads as data. Hint: write elsewhere")
        if path.is_dir():
            raise UsageError(f"{name} {path} is a directory; give a file path")
        special = special_file(path)
        if special is not None:
            raise UsageError(f"{name} {path} is {special}, not a regular file; refusing to replace it (trt-calib "
                             "writes regular files only). Hint: give a file path")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"{name} {path}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{name} {path}: the folder {parent} is not writable")
    names = list(given_out)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _same_file(given_out[a], given_out[b]):
                raise UsageError(f"{a} and {b} are the same file ({given_out[a]}); give each output its own path")
    json_out = given_out.get("--json")
    if json_out is not None and not force and os.path.lexists(json_out) and not is_ours(json_out):
        raise UsageError(f"--json {json_out} exists and is not a --json file trt-calib wrote; refusing to replace it. "
                         "Hint: give a new path, or --force to replace it")
    for name, value in (folders or {}).items():
        if value is None:
            continue
        if str(value) == "":
            raise UsageError(f"{name}: empty path")
        folder = Path(value)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{name} {folder} is a file; give a folder")
        for in_name, in_path in given_in:
            if _same_file(folder, in_path):
                raise UsageError(f"{name} {folder} is the input {in_name}; give another folder")
        for out_name, out_path in given_out.items():
            if _same_file(folder, out_path):
                raise UsageError(f"{name} and {out_name} are the same path ({folder})")
        parent = folder if folder.exists() else (folder.parent if str(folder.parent) else Path("."))
        if not parent.is_dir():
            raise UsageError(f"{name} {folder}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{name} {folder}: {parent} is not writable")


def data_path(data: str | None) -> str | None:
    """The file or folder behind --data (a data script's `FILE.py:function` without the function)."""
    if data is None:
        return None
    from ..ort.data import data_file

    return str(data_file(data))


def metric_arg(text: str) -> str:
    """--metric: auto, a built-in metric name, or FILE.py[:FUNCTION] naming an existing Python file (checked before
    any data is read; the script is loaded by the command)."""
    from ..ort.data.scripts import split_script
    from ..qdq.sensitivity import METRICS

    if text in ("auto", *METRICS):
        return text
    path, _ = split_script(text)
    if path.suffix.lower() != ".py":
        raise argparse.ArgumentTypeError(f"{text!r} is neither auto, {', '.join(METRICS)} nor a metric script "
                                         "FILE.py[:FUNCTION]")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such metric script")
    return text


def metric_path(spec: str) -> str | None:
    """The metric script a --metric value names (None for a built-in metric), for `guard_paths`."""
    from ..ort.data.scripts import split_script
    from ..qdq.sensitivity import METRICS

    return None if spec in ("auto", *METRICS) else str(split_script(spec)[0])


def model_paths(model: str | os.PathLike | None) -> list[Path]:
    """The files a model is read from: the .onnx and any external-data files it names (inputs for the guard)."""
    if model is None:
        return []
    from ..ort.model import external_data_files

    return [Path(model), *external_data_files(model)]


# Outputs written during this run, so an error or an interrupt can say what is already on disk.
_written: list[str] = []


def reset_written() -> None:
    """Forget the outputs written so far (main() calls it at the start of every run)."""
    _written.clear()


def written_outputs() -> list[str]:
    """The outputs written so far in this run, in order."""
    return list(_written)


@contextlib.contextmanager
def writing(path: str | os.PathLike, *, what: str) -> Iterator[Path]:
    """Around a library call that writes `path` atomically: an OSError becomes one line naming the path, and the
    path is recorded as written once the call returns."""
    try:
        yield Path(path)
    except OSError as exc:
        raise UsageError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    _written.append(str(path))


def write_output(path: str | os.PathLike, data: bytes | str, *, what: str) -> Path:
    """Write one output atomically; a failure (disk full, permissions) is one line naming the path, exit 2."""
    with writing(path, what=what):
        written = atomic_write(path, data)
    return written


def fmt_float(value: float) -> str:
    """A float for tables: 9 significant digits, nan and inf spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.9g}"


def batch_axis_arg(text: str) -> tuple[str, int | None]:
    """--batch-axis INPUT:AXIS: the input's name (split at the last ':') and an axis >= 0, or 'none' (not batched)."""
    name, sep, axis = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected INPUT:AXIS (e.g. state:1), got {text!r}")
    if axis.strip().lower() == "none":
        return name, None
    return name, non_negative_int(axis)


def add_data_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The data options shared by every command that reads calibration data (checked at parse time)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        metavar="PATH",
        help=".npy (single input), .npz (keys = input names), a folder of images (see --preprocess), "
        "or a Python file with a generator of {input_name: batch} (FILE.py or FILE.py:function, default load_data)",
    )
    g.add_argument("--batch-size", type=positive_int, default=None, help="samples per calibration batch (default: "
                   "the model's static batch dim, else 8). TensorRT updates histograms once per batch, so it matters")
    g.add_argument("--last-batch", choices=("drop", "keep", "pad"), default=None,
                   help="what to do with a short last batch (default drop, with a warning; pad repeats the last "
                   "sample and says how often)")
    g.add_argument("--shuffle", action="store_true", help="shuffle samples before batching (seed recorded)")
    g.add_argument("--seed", type=non_negative_int, default=None, help="seed for --shuffle")
    g.add_argument("--offset", type=non_negative_int, default=None, help="skip this many samples first")
    g.add_argument("--limit", type=positive_int, default=None, help="use at most this many samples")
    g.add_argument("--max-batches", type=positive_int, default=None, metavar="N",
                   help="read at most N batches (a data script's generator is not asked for more)")
    g.add_argument("--preprocess", type=checked_by(_preprocess_arg, "preprocess"), default=None, metavar="SPEC",
                   help="image preprocessing, e.g. size=224,resize=256,mean=0.485/0.456/0.406,"
                   "std=0.229/0.224/0.225,scale=1/255,layout=NCHW,order=RGB")
    g.add_argument("--batch-axis", type=batch_axis_arg, action="append", default=None, metavar="INPUT:AXIS",
                   help="the axis INPUT's samples are stacked along, in the data and in the model (default: the "
                   "axis carrying the dim name the inputs share as their first, e.g. state (2, batch, 128) -> 1; "
                   "else 0; 'none' for an input fed whole to every batch). Repeat for several inputs")


def add_held_out_arguments(p: argparse.ArgumentParser, *, measured: str) -> None:
    """--eval-data, --calib-batches, --eval-batches (read by `split_held_out`); `measured`: what is measured on them,
    for the help ("the units", "every step")."""
    split = p.add_argument_group("held-out data")
    split.add_argument("--eval-data", metavar="PATH", help=f"held-out data {measured} measured on (same formats and "
                       "--batch-size as --data); default: the batches of --data after the calibration ones")
    split.add_argument("--calib-batches", type=positive_int, metavar="N", help="without --eval-data: calibrate on "
                       "the first N batches of --data and measure on the rest (default: half of them, rounded up)")
    split.add_argument("--eval-batches", type=positive_int, metavar="M", help="measure on at most M held-out batches "
                       "(every run is one pass over them)")


def same_data(a: str, b: str) -> bool:
    """Whether two --data values read the same data: the same file or folder (by real path), and for a data script
    the same function."""
    from ..ort.data.scripts import split_script

    (file_a, fn_a), (file_b, fn_b) = split_script(str(a)), split_script(str(b))
    try:
        same = os.path.samefile(file_a, file_b)
    except OSError:
        same = os.path.realpath(file_a) == os.path.realpath(file_b)
    return same and (fn_a == fn_b or file_a.suffix.lower() != ".py")


def split_held_out(args: argparse.Namespace, source: Any, inputs: list, *, purpose: str,
                   calibrate: bool = True) -> tuple[Any, list, int, dict[str, str]]:
    """(calibration batches, or None without `calibrate`; held-out batches; padded rows of the last held-out one;
    what was used) for the commands that measure on held-out data (sensitivity, tune): `--eval-data`, else `--data`
    cut by `--calib-batches` (default: half its batches, rounded up). Held-out batches are kept in memory, within
    `held_batches`' share of it (an endless data script is a DataError, not a machine run out of memory).
    With `--eval-data` the calibration batches stay the `source`, read as the caller goes."""
    from ..ort.data import held_batches

    if args.eval_data is not None:
        held = argparse.Namespace(**vars(args))
        held.data, held.offset, held.limit, held.shuffle, held.seed = args.eval_data, None, None, False, None
        if held.last_batch is None and not str(args.eval_data).split(":")[0].endswith(".py"):
            # every held-out sample counts: a model with a fixed batch dim gets a padded last batch, left out of scores
            held.last_batch = "pad" if inputs and inputs[0].rank and inputs[0].static_dim(0) else "keep"
        eval_source = open_data(held, inputs)
        batches = list(held_batches(eval_source, origin=str(args.eval_data), purpose=purpose))
        what = {"evaluation_data": f"{args.eval_data} ({len(batches)} batches)"}
        if calibrate:
            what["calibration_data"] = f"{args.data} ({len(source)} batches)"
        return (source if calibrate else None), batches, eval_source.num_padded, what
    batches = list(held_batches(source, origin=str(args.data), purpose=purpose))
    if not calibrate:
        return None, batches, source.num_padded, {"evaluation_data": f"{args.data} (all {len(batches)} batches)"}
    n = len(batches)
    if n < 2:
        raise UsageError(f"--data {args.data} holds {n} batch(es): calibration and held-out data need at least one "
                         "each. Hint: give --eval-data, or a smaller --batch-size")
    first = args.calib_batches if args.calib_batches is not None else math.ceil(n / 2)
    if first >= n:
        raise UsageError(f"--calib-batches {first} leaves no held-out batch of the {n} in --data")
    return batches[:first], batches[first:], source.num_padded, {
        "calibration_data": f"{args.data} batches 0..{first - 1}",
        "evaluation_data": f"{args.data} batches {first}..{n - 1} (held out)",
    }


def open_data(args: argparse.Namespace, inputs: list, *, padding_is_data: bool = True) -> Any:
    """A `BatchSource` from the data options; only options the user gave are passed (data scripts refuse others).

    `padding_is_data=False` for commands that leave a padded last batch's copies out (evaluate).
    """
    from ..ort.data import open_source, set_batch_axes

    if getattr(args, "batch_axis", None):
        inputs = set_batch_axes(inputs, dict(args.batch_axis))
    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    elif not str(args.data).split(":")[0].endswith(".py"):
        batched = next((s for s in inputs if s.batch_axis is not None), None)
        first = batched.static_dim(batched.batch_axis) if batched is not None else None
        kwargs["batch_size"] = first if first else 8
    for key in ("last_batch", "seed", "offset", "limit", "max_batches"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if args.shuffle:
        kwargs["shuffle"] = True
    if args.preprocess:
        kwargs["preprocess"] = args.preprocess
    if not padding_is_data:
        kwargs["padding_is_data"] = False
    return open_source(args.data, inputs, **kwargs)


def print_comparison(comparison: Any, *, ours_label: str = "ours", ref_label: str = "reference") -> None:
    """Our table next to a reference, one line per tensor, with the ULP difference and the verdict."""
    rows = comparison.rows
    width = max([len(r.name) for r in rows] + [6])
    print(f"{'tensor':<{width}}  {ref_label:>10}  {ours_label:>10}  {'ULP':>5}  {'index':>11}  verdict")
    from ..core.cache import amax_to_scale, scale_to_hex

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


def add_calibrator_dry_run(parser: argparse.ArgumentParser) -> None:
    """Add `--dry-run` to a command that reads a model and --data: check the data through the calibrator's contract."""
    parser.add_argument(
        "--dry-run", action="store_true",
        help="feed the data through the TensorRT calibrator's callbacks on the CPU (no TensorRT, no GPU) and "
        "report batches, shapes, dtypes and time per batch; writes nothing",
    )


def refuse_quantized_model(model: str | os.PathLike, what: str) -> None:
    """One line, exit 2, before any data is read, when MODEL is already quantized (`ort.model.refuse_quantized`)."""
    from ..ort.model import load_model, refuse_quantized

    refuse_quantized(load_model(model, weights=False), str(model), what)


def model_inputs_of(model: str | os.PathLike) -> list[Any]:
    """The model's inputs, read without its external weights; ModelError names a missing, empty or unreadable file."""
    from ..ort.model import load_model, model_inputs

    return list(model_inputs(load_model(model, weights=False)))


class _BelowError:
    """A logging filter that drops ERROR records (and worse)."""

    def filter(self, record: Any) -> bool:
        return record.levelno < 40


def calibrator_dry_run(
    source: Any,
    inputs: Sequence[Any],
    *,
    algorithm: str = "entropy2",
    cache: str | None = None,
    max_batches: int | None = None,
    out: Callable[[str], None] = print,
    json_result: bool = False,
) -> int:
    """Drive a calibrator over `source` on the CPU, print the summary with `out` (or as JSON), return the exit code
    (0; a failing batch raises)."""
    from ..trt.calibrator import CalibratorCore, dry_run

    core = CalibratorCore(source, cache, "host", algorithm=algorithm, input_specs=inputs)
    # The calibrator logs a failing batch for TensorRT builds, which swallow it; a dry run raises the same failure,
    # printed once by main as the command's one error line.
    calibrator_log = logging.getLogger("trt_calib.trt.calibrator")
    drop_errors = _BelowError()
    calibrator_log.addFilter(drop_errors)
    try:
        summary = dry_run(core, names=[s.name for s in inputs], max_batches=max_batches)
    finally:
        calibrator_log.removeFilter(drop_errors)
    if json_result:
        print_json({
            "dry_run": True, "algorithm": summary.algorithm, "batches": summary.batches,
            "batch_size": summary.batch_size,
            "inputs": {n: {"shape": list(shape), "dtype": dtype} for n, (shape, dtype) in summary.inputs.items()},
            "seconds_per_batch": summary.seconds_per_batch, "reached_end": summary.reached_end,
            "cache_file": summary.cache_file, "cache_would_be_used": summary.cache_would_be_used,
            "notes": list(summary.notes), "written": [],
        })
        return 0
    out(str(summary))
    out("dry run: nothing was built or written")
    return 0


# ---------------------------------------------------------------------------------------------- TensorRT version
def resolve_trt_version(given: str | None, *, purpose: str = "header") -> tuple[str, str]:
    """(version, where it came from) for a command's --trt-version, never a silent guess.

    Given: as given. Not given: the installed TensorRT's (`trt.version.installed_tensorrt`; an info line says so),
    else trt-calib's DEFAULT_TRT_VERSION with one warning line on stderr naming it and how to change it: TensorRT
    ignores a cache whose header names another version. `purpose` is "header" (the version goes into a cache header)
    or "emulate" (only the calibration emulated depends on it). `--json` outputs record both values.
    """
    if given is not None:
        return given, "--trt-version"
    from ..core.cache import DEFAULT_TRT_VERSION
    from ..trt.version import installed_tensorrt

    found = installed_tensorrt()
    if found is not None and found.version is not None:
        log = logging.getLogger("trt_calib")
        what = "the cache header names" if purpose == "header" else "emulating the calibration of"
        log.info("%s TensorRT %s, the installed one (%s); --trt-version X.Y.Z for another", what, found.version,
                 found.found)
        return found.version, f"installed {found.found}"
    why = "no TensorRT is installed here" if found is None else f"found {found.found}"
    if purpose == "header":
        logging.getLogger("trt_calib").warning(
            "the cache header names TensorRT %s, trt-calib's default (%s); TensorRT ignores a cache made for another "
            "version. Hint: --trt-version X.Y.Z, the TensorRT that will read it", DEFAULT_TRT_VERSION, why)
    else:
        logging.getLogger("trt_calib").warning(
            "emulating the calibration of TensorRT %s, trt-calib's default (%s). Hint: --trt-version X.Y.Z (8.0 and "
            "older also tie Concat inputs)", DEFAULT_TRT_VERSION, why)
    return DEFAULT_TRT_VERSION, f"default ({why})"
