"""Where a calibration came from: the sidecar `OUT.cache.json` written next to every cache we calibrate.

It records the model's sha256, its inputs, the data manifest (with a content digest), the algorithm, batch size and
versions, so that `trt-calib validate` can tell a cache whose model or data changed since it was made.
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

__all__ = ["file_sha256", "make_provenance", "sidecar_path", "write_provenance", "read_provenance"]


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
) -> dict[str, Any]:
    """The sidecar's content as a JSON-able dict."""
    return {
        "format": "trt-calib-provenance/1",
        "tool": f"trt-calib {__version__}",
        "python": platform.python_version(),
        "model": {"path": str(model_path), "sha256": file_sha256(model_path), "inputs": inputs},
        "data": data_manifest,
        "algorithm": algorithm,
        "header": header,
        "trt_version": trt_version,
        "options": options or {},
    }


def write_provenance(cache_path: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """Write the sidecar next to `cache_path`, atomically."""
    return atomic_write(sidecar_path(cache_path), json.dumps(provenance, indent=2, sort_keys=False) + "\n")


def read_provenance(cache_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of `cache_path`, or None when there is none."""
    path = sidecar_path(cache_path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())
