"""Where a calibration came from: the sidecar `OUT.cache.json` written next to every cache we calibrate.

It records the cache's own sha256 (so a cache and a sidecar that are not a pair, after two runs on one path or a
failed write, are told apart as stale), the model's sha256, its inputs, the data manifest (with digests of the files
and of the batches themselves), the algorithm, batch size and versions, so that `trt-calib validate` can tell a cache
whose model or data changed since it was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from .. import __version__
from .._util import atomic_write

__all__ = [
    "file_sha256",
    "make_provenance",
    "provenance_text",
    "sidecar_path",
    "write_provenance",
    "read_provenance",
    "provenance_problems",
    "MAX_SIDECAR_BYTES",
]

#: A sidecar is a few KB (an image folder's file list makes it longer); reading stops here.
MAX_SIDECAR_BYTES = 64 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(cache_path: str | os.PathLike) -> Path:
    """OUT.cache -> OUT.cache.json."""
    p = Path(cache_path)
    return p.with_name(p.name + ".json")


def make_provenance(
    *,
    model_path: str | os.PathLike,
    inputs: list[dict[str, Any]],
    data_manifest: dict[str, Any] | None,
    algorithm: str,
    header: str,
    trt_version: str,
    options: dict[str, Any] | None = None,
    cache_bytes: bytes | None = None,
) -> dict[str, Any]:
    """The sidecar's content as a JSON-able dict; `cache_bytes` (the cache as written) gives its sha256."""
    return {
        "format": "trt-calib-provenance/1",
        "cache": None if cache_bytes is None else {"sha256": hashlib.sha256(cache_bytes).hexdigest(),
                                                  "bytes": len(cache_bytes)},
        "tool": f"trt-calib {__version__}",
        "python": platform.python_version(),
        "model": {"path": str(model_path), "sha256": file_sha256(model_path), "inputs": inputs},
        "data": data_manifest,
        "algorithm": algorithm,
        "header": header,
        "trt_version": trt_version,
        "options": options or {},
    }


def provenance_text(provenance: dict[str, Any]) -> str:
    """The sidecar file's text."""
    return json.dumps(provenance, indent=2, sort_keys=False) + "\n"


def write_provenance(cache_path: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """Write the sidecar next to `cache_path`, atomically."""
    return atomic_write(sidecar_path(cache_path), provenance_text(provenance))


def read_provenance(cache_path: str | os.PathLike) -> Any:
    """The parsed sidecar of `cache_path` (any JSON value: check it with `provenance_problems`), None when there is
    none. ValueError for a file that is not JSON or too large, OSError when it cannot be read."""
    path = sidecar_path(cache_path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        data = f.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValueError(f"larger than {MAX_SIDECAR_BYTES >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("its JSON is nested too deeply to read") from None


# What each field must be when present: (type, description).
_SHAPE = {
    "cache": (dict, "an object {sha256, bytes}"),
    "model": (dict, "an object {path, sha256, inputs}"),
    "data": (dict, "a data manifest object"),
    "header": (str, "a string"),
    "algorithm": (str, "a string"),
    "trt_version": (str, "a string"),
}


def provenance_problems(record: Any) -> list[str]:
    """What is wrong with a parsed sidecar's shape (empty when it can be used)."""
    if not isinstance(record, dict):
        return [f"holds {type(record).__name__} JSON, not an object"]
    problems = []
    for key, (kind, what) in _SHAPE.items():
        value = record.get(key)
        if value is not None and not isinstance(value, kind):
            problems.append(f"'{key}' is {json.dumps(value)[:60]}, not {what}")
    for key in ("model", "cache"):
        part = record.get(key)
        if isinstance(part, dict) and part.get("sha256") is not None and not (
            isinstance(part["sha256"], str) and len(part["sha256"]) == 64
        ):
            problems.append(f"'{key}.sha256' is {json.dumps(part['sha256'])[:60]}, not a sha256 hex digest")
    return problems
