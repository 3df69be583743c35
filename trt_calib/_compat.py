"""The module names of trt-calib 0.1's flat layout, still importable: `trt_calib.calibrator` is
`trt_calib.trt.calibrator`, the same module object, so code and pickles written against 0.1 keep working."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: Old flat module name -> its module in the layered layout.
MOVED = {
    "histogram": "core.histogram",
    "thresholds": "core.thresholds",
    "cache": "core.cache",
    "signs": "core.signs",
    "compare": "core.compare",
    "data": "ort.data",
    "collect": "ort.collect",
    "evaluate": "ort.evaluate",
    "calibrator": "trt.calibrator",
    "device": "trt.device",
    "ranges": "trt.ranges",
    "build": "trt.build",
    "cache_tools": "tools",
    "provenance": "tools.provenance",
    "report": "tools.report",
}


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already-importable target module instead of executing a file."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set the alias's spec on it; the module keeps its own


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"{__package__}.{MOVED[name]}"))


def install() -> None:
    """Register the aliases (once per interpreter)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
