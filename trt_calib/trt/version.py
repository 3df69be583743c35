"""Which TensorRT is installed here: the version a cache header should name when the user names none.

TensorRT ignores a calibration cache whose header names another version and recalibrates without a word
(docs/cache-tools.md), so a header must name the TensorRT that will read it. The best guess without `--trt-version`
is the TensorRT installed beside trt-calib: its builder is what reads the cache.

Only the full `tensorrt` module builds engines and reads caches. What else a pip install may leave (NVIDIA's
packaging, python/packaging in NVIDIA/TensorRT):

- the `tensorrt` frontend re-exports `tensorrt_bindings`; without them `import tensorrt` raises ImportError;
- `tensorrt_lean` and `tensorrt_dispatch` are runtimes that deserialise engines and build none: they read no cache,
  so their version is reported but not taken;
- placeholders: `nvidia-tensorrt` 0.0.1.devN raised at install, its 99.0.0 redirects to `tensorrt`
  (NVIDIA/TensorRT#2668), and the index-redirecting sdists (`9.0.1.post11.dev4`) install nothing importable.

`__version__` is `TENSORRT_PYTHON_VERSION`, e.g. "10.2.0.post1" or "10.11.0.33"; a version is taken only when it
starts with MAJOR.MINOR (major 5 to 98: no real TensorRT before 5, and 99 is the placeholder) and a header can
encode it. Importing `tensorrt` can take a second or more, so this runs only when no version was given.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass

__all__ = ["InstalledTensorRT", "installed_tensorrt", "release_version", "BUILDER_MODULE", "RUNTIME_MODULES"]

#: The module whose builder reads calibration caches.
BUILDER_MODULE = "tensorrt"
#: Runtime-only modules: no builder, so no cache is read by them.
RUNTIME_MODULES = ("tensorrt_lean", "tensorrt_dispatch")

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class InstalledTensorRT:
    """What was found: `version` (MAJOR.MINOR.PATCH, for a header) when the builder module imports with a real
    version, else None; `found` says what is there, for messages ("tensorrt 10.3.0.26", "tensorrt_lean 10.2.0")."""

    version: str | None
    found: str
    module: str | None = None


def release_version(text: object) -> str | None:
    """MAJOR.MINOR.PATCH of a TensorRT `__version__` ("10.2.0.post1" -> "10.2.0"); None for a placeholder's or junk."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text.strip())
    if m is None:
        return None
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if not 5 <= major <= 98 or (major < 10 and minor > 9) or minor > 99 or patch > 99:
        return None
    return f"{major}.{minor}.{patch}"


def _module_version(name: str) -> tuple[str | None, str] | None:
    """(release version or None, what was seen) of an importable module `name`; None when it is not there."""
    if name in sys.modules and sys.modules[name] is None:
        return None  # blocked (sys.modules[name] = None makes the import fail): not there
    if name not in sys.modules:
        try:
            if importlib.util.find_spec(name) is None:
                return None
        except (ImportError, ValueError):
            return None
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError (bindings missing), OSError (a library), anything a broken install raises
        return None, f"{name} (does not import: {type(exc).__name__})"
    raw = getattr(module, "__version__", None)
    version = release_version(raw)
    if version is None:
        return None, f"{name} {raw!r} (not a TensorRT release version)" if raw is not None else f"{name} (no version)"
    return version, f"{name} {raw}"


def installed_tensorrt() -> InstalledTensorRT | None:
    """The TensorRT installed here (see the module docstring), or None when no TensorRT module is importable."""
    seen = []
    builder = _module_version(BUILDER_MODULE)
    if builder is not None:
        version, what = builder
        if version is not None:
            return InstalledTensorRT(version, what, BUILDER_MODULE)
        seen.append(what)
    for name in RUNTIME_MODULES:
        runtime = _module_version(name)
        if runtime is not None:
            seen.append(f"{runtime[1]}, a runtime that reads no caches")
    return InstalledTensorRT(None, "; ".join(seen)) if seen else None
