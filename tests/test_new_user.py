"""What a new user meets in a fresh clone (issue 22): docs whose paths exist, packaging that installs, a package whose
help lists its functions, outputs that leave the clone clean, benchmarks that say on what machine they ran."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trt_calib.cli import main

from conftest import LENET, LENET_BATCHES, REPO, TRT_TABLE

SKIP_DIRS = {".git", ".venv", ".venv-ci", "artifacts", "build", "dist", "node_modules", ".pytest_cache", ".hypothesis"}
#: Paths in NVIDIA/TensorRT's repository or release that docs cite as such (they are not files of this repository).
TENSORRT_PATHS = ("samples/common/", "samples/opensource/", "samples/python/", "samples/sampleINT8API/", "data/mnist/")
#: Built by a script, git-ignored: docs say which script makes them.
BUILT = ("artifacts/",)


def _docs() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.md") if not SKIP_DIRS & set(p.relative_to(REPO).parts))


def _exists(base: Path, path: str) -> bool:
    path = path.split("#")[0].split(":")[0]
    for folder in (base, REPO):
        if any(ch in path for ch in "*?["):
            if list(folder.glob(path)):
                return True
        elif (folder / path).exists():
            return True
    return False


def _named_paths(doc: Path) -> list[str]:
    """Markdown link targets and `code` spans that name a path of this repository."""
    text = doc.read_text(encoding="utf-8")
    tops = {p.name for p in REPO.iterdir()}
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://|#|mailto:", target):
            found.append(target)
    for span in re.findall(r"`([^`\s]+)`", text):
        span = span.rstrip(".,;")
        if "/" in span and "://" not in span and (span.startswith(("../", "./")) or span.split("/")[0] in tops):
            found.append(span)
    return [p for p in found if not p.startswith(TENSORRT_PATHS + BUILT)]


def test_docs_are_found():
    names = {str(p.relative_to(REPO)) for p in _docs()}
    assert {"README.md", "docs/cache-tools.md", "docs/calibrator.md", "docs/how-tensorrt-calibrates.md",
            "trt_calib/bundled/lenet/README.md"} <= names  # data/lenet is a link to it


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_a_doc_names_exists_in_the_clone(doc):
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text and "shared/corpus" not in text and "/work/" not in text
    missing = [p for p in _named_paths(doc) if not _exists(doc.parent, p)]
    assert not missing, f"{doc.relative_to(REPO)} names files a clone lacks: {missing}"


def test_convert_caffe_runs_with_its_default_inputs(tmp_path):
    out = tmp_path / "lenet.onnx"
    run = subprocess.run([sys.executable, str(REPO / "samples" / "sampleint8_lenet" / "convert_caffe.py"), "-o",
                          str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == LENET.read_bytes()


# ---------------------------------------------------------------------------------------------- packaging
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_and_the_build_backend_reads_it():
    project = _pyproject()
    assert project["project"]["license"] == "Apache-2.0"  # a string (PEP 639), not the deprecated table
    (requirement,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", requirement).group(1).split(".")) >= (77,)


def test_numba_is_a_dependency_where_it_has_wheels():
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    deps = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    (numba,) = [r for r in deps if r.name == "numba"]
    env = {"platform_machine": "x86_64", "python_version": "3.11"}
    assert numba.marker is not None and numba.marker.evaluate(env)
    for machine in ("aarch64", "arm64", "AMD64"):
        assert numba.marker.evaluate({**env, "platform_machine": machine})
    for machine in ("armv7l", "i686", "riscv64", "s390x"):  # no numba wheels: numpy bins there
        assert not numba.marker.evaluate({**env, "platform_machine": machine})
    assert isinstance(Marker(str(numba.marker)), Marker)


def test_ml_dtypes_0_7_0_is_excluded_for_its_half_second_import():
    from packaging.requirements import Requirement

    deps = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    (ml_dtypes,) = [r for r in deps if r.name == "ml_dtypes"]
    assert not ml_dtypes.specifier.contains("0.7.0")
    assert all(ml_dtypes.specifier.contains(v) for v in ("0.5.4", "0.6.0", "0.7.1", "1.0.0"))  # an exclusion, no cap
    from importlib.metadata import version

    assert version("ml_dtypes") != "0.7.0"  # what the install resolved (onnx would pull the newest otherwise)


def test_the_readme_says_what_the_gpu_extra_needs_and_what_works_instead():
    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index('".[gpu]"'):][:900]
    assert "cuda.h" in paragraph and "CUDA toolkit" in paragraph and "pip install cuda-python" in paragraph
    assert "pycuda has no wheels" in (REPO / "pyproject.toml").read_text()


def test_help_lists_the_public_functions_without_importing_onnx():
    code = ("import pydoc, sys, trt_calib\n"
            "text = pydoc.render_doc(trt_calib, renderer=pydoc.plaintext)\n"
            "print(sorted(n for n in ('onnx', 'onnxruntime', 'tensorrt') if n in sys.modules))\n"
            "print(text)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    before_help, text = run.stdout.split("\n", 1)
    assert before_help == "[]"  # `import trt_calib` itself imports none of them
    for signature in ("calibrate(model", "dry_run(calibrator", "class AbsHistogram", "class CalibrationCache",
                      "class TrtCalibError"):
        assert signature in text, signature
    import trt_calib

    assert {"calibrate", "dry_run", "AbsHistogram", "CalibrationCache"} <= set(dir(trt_calib))


# ---------------------------------------------------------------------------------------------- the CLI
def test_calibrate_json_file_holds_the_object_json_prints(tmp_path, capsys):
    out = tmp_path / "details.json"
    code = main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(tmp_path / "l.cache"),
                 "--trt-version", "7.0.0", "--compare", str(TRT_TABLE), "--no-progress", "--json", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert written.pop("written_by") == "trt-calib 0.1.0 calibrate"  # the mark of our own --json FILE (issue 23)
    assert written == printed
    assert {"comparison", "cache", "sidecar", "header", "tensors", "trt_version_source"} <= set(written)
    assert written["comparison"]["reference"] == str(TRT_TABLE)


# ---------------------------------------------------------------------------------------------- a clean clone
def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Two commands on a fresh machine\s+```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _ignored(path: str) -> bool:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO).returncode == 0


def test_the_readmes_first_command_leaves_only_ignored_files():
    first, second = _readme_commands()
    calibrate = shlex.split(first.split("&&", 1)[1])
    cache = calibrate[calibrate.index("--cache") + 1]
    for written in (cache, cache + ".json"):  # the cache and its sidecar
        assert _ignored(written), f"{written} would be left untracked in the repository root"
    assert second.startswith('pip install -e ".[test]"') and second.endswith("pytest")


def test_ci_runs_the_readmes_commands():
    first, _ = _readme_commands()
    readme_args = shlex.split(first.split("&&", 1)[1])
    ci = (REPO / ".ci" / "run").read_text()
    assert 'python -m pip install --quiet -e ".[test]"' in ci
    line = re.search(r"trt-calib -q calibrate (.*?)\n\s*(--trt-version.*?)\n", ci, re.S)
    ci_args = ["trt-calib", "calibrate"] + shlex.split((line.group(1) + " " + line.group(2)).replace("\\", " "))
    cache = readme_args.index("--cache")
    assert ci_args[:cache] + ci_args[cache + 2:] == readme_args[:cache] + readme_args[cache + 2:]


def test_make_doc_figures_writes_outside_the_tracked_figures_by_default():
    tree = ast.parse((REPO / "scripts" / "make_doc_figures.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "DEFAULT_OUT" for t in node.targets)]
    assert ast.unparse(value) == "REPO / 'artifacts' / 'doc-figures'"
    assert _ignored("artifacts")  # the whole folder (a symlink to a shared one, too)


# ---------------------------------------------------------------------------------------------- benchmarks
def test_every_benchmark_prints_the_machine_and_its_load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import machine
    finally:
        sys.path.pop(0)
    line = machine.machine_line("start")
    assert machine.cpu_model() in line and "load average" in line
    assert line.endswith(": idle") != (": BUSY (other processes above" in line)
    # idle is judged by what other processes use: the machine sees this process's CPU time...
    busy0, spin_until = machine.busy_seconds(), machine.own_seconds() + 0.5
    while machine.own_seconds() < spin_until:
        sum(range(10000))
    assert machine.busy_seconds() - busy0 >= 0.4
    # ...and the window takes it (and its children's) out: 30 s busy in 20 s of wall, 24 s of them our own -> 0.3
    clock = iter([100.0, 120.0])
    busy, own = iter([500.0, 530.0]), iter([7.0, 31.0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(machine.time, "monotonic", lambda: next(clock))
        mp.setattr(machine, "busy_seconds", lambda: next(busy))
        mp.setattr(machine, "own_seconds", lambda: next(own))
        window = machine.CpuWindow()
        assert window.others() == pytest.approx(0.3)
    assert machine.idle_load(2) == 1.5 and machine.idle_load(16) == 5.0
    for bench in sorted((REPO / "benchmarks").glob("bench_*.py")):
        text = bench.read_text()
        assert "from machine import announce" in text and "    announce()" in text, bench.name
