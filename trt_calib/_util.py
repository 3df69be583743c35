"""Small helpers shared by modules: atomic writes and lazy optional imports."""

from __future__ import annotations

import errno
import importlib
import json
import os
import stat
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import MissingDependencyError, TrtCalibError

__all__ = ["atomic_write", "read_bounded", "read_json", "require", "special_file", "check_regular_file",
           "available_memory_mb", "json_depth", "MAX_JSON_DEPTH"]

#: Deeper than any JSON document trt-calib writes (they nest 5 or 6 levels), far below what recursion can reach.
MAX_JSON_DEPTH = 64

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _special_kind(mode: int) -> str | None:
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


def available_memory_mb() -> float | None:
    """Memory available for new allocations and processes (MemAvailable of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (AttributeError, OSError, ValueError):
        return None


def special_file(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists and is neither a regular file nor a folder ("a FIFO (named pipe)", "a character
    device", ...; symbolic links followed), else None. trt-calib reads and writes regular files only: reading a FIFO
    blocks until some writer appears, a device such as /dev/zero never ends, and replacing one (`--json /dev/null`
    as root) would put a regular file in the system's place."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return _special_kind(mode)


def _special_message(path: str | os.PathLike, special: str, kind: str) -> str:
    return (f"{path} is {special}, not a regular file: trt-calib reads only regular files (as the {kind} here: a FIFO "
            "would block until a writer appears, a device never ends). Hint: copy it to a file first")


def check_regular_file(path: str | os.PathLike, *, kind: str = "file",
                       error: type[TrtCalibError] = TrtCalibError) -> None:
    """Refuse, as one `error` naming it, a `path` that is missing, a folder, or not a regular file (see
    `special_file`)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such {kind}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory, not a {kind}")
    special = _special_kind(mode)
    if special is not None:
        raise error(_special_message(path, special, kind))


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place.

    A reader never sees a half-written file and a failure leaves any previous file untouched. A `path` that is a
    FIFO, a device or a socket is never replaced (OSError EEXIST, nothing written): see `special_file`.
    """
    path = Path(path)
    special = special_file(path)
    if special is not None:
        raise OSError(errno.EEXIST, f"it is {special}, not a regular file; refusing to replace it", str(path))
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs should get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_bounded(path: str | os.PathLike, limit: int, *, kind: str = "file",
                 error: type[TrtCalibError] = TrtCalibError) -> bytes:
    """At most `limit` bytes of the regular file `path` (a huge file cannot fill memory); a missing, directory,
    special (FIFO, device, socket: `special_file`) or unreadable path is one `error` naming it.

    The file is opened without blocking and checked on the open descriptor, so a FIFO without a writer cannot hang
    the read, and a path swapped for one after a check is still refused."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {kind}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory, not a {kind}")
        special = _special_kind(mode)
        if special is not None:
            raise error(_special_message(path, special, kind))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, *, limit: int, kind: str = "JSON file",
              error: type[TrtCalibError] = TrtCalibError, unique_keys: bool = False) -> Any:
    """The JSON value in the regular file `path` (at most `limit` bytes), or one `error` naming the file: missing,
    special, too large, not UTF-8, not JSON, nested deeper than Python can parse (a RecursionError otherwise), or,
    with `unique_keys`, an object that repeats a key (json keeps the last value in silence)."""
    data = read_bounded(path, limit + 1, kind=kind, error=error)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit >> 20} MiB, far larger than any {kind}; not read further")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ValueError(f"the key {key[:80]!r} appears more than once in one object")
            seen[key] = value
        return seen

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs if unique_keys else None)
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a readable {kind} (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise error(f"{path}: not a readable {kind} (its JSON is nested too deeply to read)") from None
    except ValueError as exc:
        raise error(f"{path}: not a readable {kind} (not valid JSON: {str(exc)[:200]})") from None


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import an optional dependency, or raise `MissingDependencyError` saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f'pip install "trt-calib[{extra}]"' if extra else f"pip install {module.split('.')[0]}"
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{module} is needed{what} but cannot be imported ({exc}). Hint: {hint}"
        ) from exc


def json_depth(value: object) -> int:
    """How deeply a parsed JSON value nests arrays and objects (a scalar is 0), counted without recursion, so that
    a hostile document cannot exhaust the stack of the code that reads it."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth
