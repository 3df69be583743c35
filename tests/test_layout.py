"""The package's layers import only downwards, heavy libraries only lazily, and the documented names import.

Layers (README, "Layout"): core -> ort -> qdq -> trt / tools -> cli. Each module's imports are read from its source
(module level and inside functions alike), so a violation fails here before it becomes a cycle or a hard dependency.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "trt_calib"

#: The modules at the package root that every layer may use (errors, small helpers, the 0.1 aliases).
BASE = "base"
#: layer -> the layers it may import from (itself included).
ALLOWED_LAYERS = {
    BASE: {BASE},
    "core": {BASE, "core"},
    "ort": {BASE, "core", "ort"},
    "qdq": {BASE, "core", "ort", "qdq"},
    "trt": {BASE, "core", "ort", "trt"},
    "tools": {BASE, "core", "ort", "qdq", "tools"},
    "cli": {BASE, "core", "ort", "qdq", "trt", "tools", "cli"},
}
#: layer -> third-party top-level packages it may import (the standard library is always allowed).
ALLOWED_THIRD_PARTY = {
    BASE: set(),
    "core": {"numpy", "numba"},  # numba: the optional compiled binning kernel (core/kernel.py; a dependency where numba has wheels)
    "ort": {"numpy", "onnx", "onnxruntime", "distributed", "dask"},  # Dask: the executor's cluster engine
    "qdq": {"numpy", "onnx", "onnxruntime"},
    "trt": {"numpy", "onnx", "tensorrt", "pycuda", "cuda", "cupy", "cupyx", "torch"},
    "tools": {"numpy", "onnx", "matplotlib", "tqdm"},
    "cli": {"numpy", "tqdm"},
}
#: Imported only inside functions, never at module level: importing trt_calib must not need (or pay for) them.
LAZY_ONLY = {"onnx", "onnxruntime", "tensorrt", "pycuda", "cuda", "cupy", "cupyx", "torch", "matplotlib", "tqdm",
             "distributed", "dask", "numba"}


def _modules() -> list[Path]:
    # trt_calib/bundled holds package data (LeNet's data script among them), not modules of trt_calib
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts and "bundled" not in p.parts)


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(dotted: str) -> str:
    parts = dotted.split(".")
    if dotted == "trt_calib.__main__":  # `python -m trt_calib` is the CLI
        return "cli"
    if len(parts) >= 2 and parts[1] in ALLOWED_LAYERS:
        return parts[1]
    return BASE


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(absolute module name, at module level, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _dotted(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    typing_only: set[int] = set()
    if module == "trt_calib":  # the root's `if TYPE_CHECKING:` block names its lazy re-exports for IDEs; never run
        for node in tree.body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                typing_only.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x: x may be a module
                    found += [(f"{target}.{a.name}", id(node) in top_level, node.lineno) for a in node.names]
                    continue
            else:
                target = node.module or ""
            found.append((target, id(node) in top_level, node.lineno))
    return found


def _resolve_internal(name: str) -> str:
    """trt_calib.x.y -> the module it names (an attribute import `from .. import __version__` names the package)."""
    parts = name.split(".")
    while parts:
        candidate = REPO.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def _violations(path: Path) -> list[str]:
    """Imports of `path` that break the layer rules: an upward layer, the CLI from below, a foreign library."""
    module = _dotted(path)
    layer = _layer(module)
    where = path.relative_to(REPO)
    problems = []
    for name, top_level, line in _imports(path):
        top = name.split(".")[0]
        if top == "trt_calib":
            target = _resolve_internal(name)
            if target == "trt_calib":  # the package root: only __version__ and the lazy re-exports live there
                continue
            target_layer = _layer(target)
            if target_layer not in ALLOWED_LAYERS[layer]:
                problems.append(f"{where}:{line}: {layer} imports {target} ({target_layer})")
        elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY[layer]:
            problems.append(f"{where}:{line}: {layer} imports third-party {top}")
        if top_level and top in LAZY_ONLY:
            problems.append(f"{where}:{line}: {name} imported at module level")
    return problems


def test_every_layer_imports_only_the_layers_below_it_and_heavy_libraries_lazily():
    problems = [p for path in _modules() for p in _violations(path)]
    assert not problems, "\n".join(problems)


def test_the_rule_checker_catches_upward_cli_foreign_and_eager_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    core = tmp_path / "trt_calib" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text(
        "import tensorrt\n"
        "def f():\n"
        "    from ..ort.collect import calibrate\n"
        "    from trt_calib.cli import main\n"
        "    import scipy\n"
    )
    (core / "good.py").write_text("import numpy as np\nfrom . import bad\nfrom ..errors import DataError\n")
    problems = _violations(core / "bad.py")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "core imports third-party tensorrt",
        "tensorrt imported at module level",
        "core imports trt_calib.ort.collect (ort)",
        "core imports trt_calib.cli (cli)",
        "core imports third-party scipy",
    ]
    assert _violations(core / "good.py") == []


def test_every_module_imports_with_numpy_alone():
    """With onnx, onnxruntime, TensorRT, GPU libraries, matplotlib and tqdm unimportable, every module still imports."""
    blocked = sorted(LAZY_ONLY)
    code = (
        "import importlib, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        f"for module in {[_dotted(p) for p in _modules() if p.name != '__main__.py']!r}:\n"
        "    importlib.import_module(module)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _readme_names() -> list[str]:
    text = (REPO / "README.md").read_text()
    return sorted(set(re.findall(r"`(trt_calib(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text)))


def _import_name(dotted: str) -> object:
    """Import `a.b.c`: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_readme_names_import():
    names = _readme_names()
    assert "trt_calib.calibrate" in names and len(names) >= 4
    for name in names:
        if name.endswith(("EntropyCalibrator2", "MinMaxCalibrator", "EntropyCalibrator", "LegacyCalibrator")):
            module, _, cls = name.rpartition(".")
            assert cls in _import_name(module).__dir__(), name  # the class itself needs TensorRT
            continue
        assert _import_name(name) is not None, name


@pytest.mark.parametrize(
    "old, new",
    [
        ("trt_calib.calibrator", "trt_calib.trt.calibrator"),
        ("trt_calib.ranges", "trt_calib.trt.ranges"),
        ("trt_calib.collect", "trt_calib.ort.collect"),
        ("trt_calib.cache", "trt_calib.core.cache"),
        ("trt_calib.report", "trt_calib.tools.report"),
    ],
)
def test_the_flat_names_of_0_1_are_the_same_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new  # the alias did not take over the module's identity


def test_flat_names_work_with_from_imports():
    from trt_calib.calibrator import CalibratorCore
    from trt_calib.qdq import quantize_model
    from trt_calib.ranges import apply_dynamic_ranges

    from trt_calib.trt import calibrator, ranges

    assert CalibratorCore is calibrator.CalibratorCore and apply_dynamic_ranges is ranges.apply_dynamic_ranges
    assert callable(quantize_model)


def _internal_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (module level and inside functions), packages' own inits aside."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        module = _dotted(path)
        targets = {_resolve_internal(name) for name, _, _ in _imports(path) if name.split(".")[0] == "trt_calib"}
        graph[module] = {t for t in targets if t != module and t != "trt_calib" and not module.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once (as the path from its smallest module back to it)."""
    found, seen = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen and min(path) == start:
                        seen.add(key)
                        found.append(path + [start])
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return found


def test_no_two_modules_import_each_other_even_inside_functions():
    """A cycle (issue 20: collect <-> shard) means two modules share a concept that wants a module of its own."""
    cycles = _cycles(_internal_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_private_name_from_another():
    """What modules share is public: `from .x import _name` across modules hides a dependency."""
    problems = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("trt_calib")):
                module = _dotted(path)
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                base = package.split(".")[: len(package.split(".")) - max(0, node.level - 1)] if node.level else []
                target = ".".join(base + [node.module]) if node.module and node.level else (node.module or ".".join(base))
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                           and _resolve_internal(f"{target}.{a.name}") != f"{target}.{a.name}"]  # a private module is fine
                if private:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {', '.join(private)}")
    assert not problems, "\n".join(problems)


def test_the_roots_typing_only_imports_are_exactly_its_lazy_re_exports():
    import trt_calib

    tree = ast.parse((REPO / "trt_calib" / "__init__.py").read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    declared = {alias.name: node.module for node in block.body for alias in node.names}
    assert declared == trt_calib._LAZY
