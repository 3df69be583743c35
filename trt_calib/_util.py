"""Small helpers shared by modules: atomic writes and lazy optional imports."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import ModuleType

from .errors import MissingDependencyError, TrtCalibError

__all__ = ["atomic_write", "read_bounded", "require", "json_depth", "MAX_JSON_DEPTH"]

#: Deeper than any JSON document trt-calib writes (they nest 5 or 6 levels), far below what recursion can reach.
MAX_JSON_DEPTH = 64


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place.

    A reader never sees a half-written file and a failure leaves any previous file untouched.
    """
    path = Path(path)
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
    """At most `limit` bytes of `path` (so `/dev/zero` or a huge file cannot fill memory); a missing, directory or
    unreadable path is one `error` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        raise error(f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {kind}") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None


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
