"""The TensorRT version a cache header names is never a silent guess (issue 22, item 1): without --trt-version the
installed TensorRT's is taken, else trt-calib's default with one stderr line naming it and how to change it; --json
records the version and where it came from."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import trt_standin
from trt_calib.cli import main
from trt_calib.core.cache import DEFAULT_TRT_VERSION, CalibrationCache, make_header
from trt_calib.trt.version import installed_tensorrt, release_version

from conftest import LENET, LENET_BATCHES, TRT_TABLE

DEFAULT_HEADER = make_header("EntropyCalibration2", DEFAULT_TRT_VERSION)


@pytest.fixture
def no_tensorrt(monkeypatch, tmp_path):
    """No TensorRT module importable, whatever this machine has."""
    for name in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, find_spec finds nothing


def _fake_module(tmp_path, monkeypatch, name, body):
    """A package `name` on sys.path with `body` as its __init__.py (placeholders, runtimes)."""
    folder = tmp_path / "site" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for module in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch"):
        monkeypatch.delitem(sys.modules, module, raising=False)


@pytest.mark.parametrize("text, version", [
    ("10.16.1", "10.16.1"), ("10.2.0.post1", "10.2.0"), ("10.11.0.33", "10.11.0"), ("8.6.1.6", "8.6.1"),
    ("10.0.0b6", "10.0.0"), ("7.0", "7.0.0"),
    ("99.0.0", None),  # nvidia-tensorrt's redirecting placeholder (NVIDIA/TensorRT#2668)
    ("0.0.1.dev5", None), ("", None), ("unknown", None), (None, None), (10, None), ("8.10.0", None),
])
def test_release_version_takes_real_tensorrt_versions_only(text, version):
    assert release_version(text) == version


def _lines(caplog, words):
    """The log lines (what the CLI prints on stderr) holding `words`."""
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_calibrate_without_a_version_says_which_header_it_writes(tmp_path, capsys, caplog, no_tensorrt):
    cache = tmp_path / "l.cache"
    assert main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache), "--no-progress",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    lines = _lines(caplog, "--trt-version")
    assert len(lines) == 1 and DEFAULT_TRT_VERSION in lines[0] and "no TensorRT is installed" in lines[0]
    assert "\n" not in lines[0] and caplog.records[0].levelname == "WARNING"
    assert CalibrationCache.load(cache).header == DEFAULT_HEADER == doc["header"]
    assert doc["trt_version"] == DEFAULT_TRT_VERSION
    assert doc["trt_version_source"] == "default (no TensorRT is installed here)"


def test_calibrate_without_a_version_in_a_real_process_prints_one_line(tmp_path):
    import importlib.util
    import subprocess

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("a tensorrt is installed here: its version is taken")
    run = subprocess.run([sys.executable, "-m", "trt_calib", "-q", "calibrate", str(LENET), "--data",
                          str(LENET_BATCHES), "--cache", str(tmp_path / "l.cache")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"the cache header names TensorRT {DEFAULT_TRT_VERSION}, trt-calib's default (no TensorRT is installed here); "
        "TensorRT ignores a cache made for another version. Hint: --trt-version X.Y.Z, the TensorRT that will read it"]


def test_calibrate_takes_the_installed_tensorrts_version(tmp_path, capsys, caplog, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0")
    caplog.set_level("INFO", logger="trt_calib")
    cache = tmp_path / "l.cache"
    assert main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache), "--no-progress",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert CalibrationCache.load(cache).header == "TRT-100300-EntropyCalibration2"
    assert doc["trt_version"] == "10.3.0" and doc["trt_version_source"] == "installed tensorrt 10.3.0"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert _lines(caplog, "the installed one (tensorrt 10.3.0)")


def test_an_explicit_version_wins_and_says_nothing(tmp_path, capsys, caplog, monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0")
    cache = tmp_path / "l.cache"
    assert main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache), "--no-progress",
                 "--trt-version", "7.0.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trt_version_source"] == "--trt-version"
    assert CalibrationCache.load(cache).header == "TRT-7000-EntropyCalibration2"
    assert not _lines(caplog, "--trt-version")


@pytest.mark.parametrize("name, body, seen", [
    # the `tensorrt` frontend without its bindings wheel (what a failed pip install leaves)
    ("tensorrt", "from tensorrt_bindings import *\n", "tensorrt (does not import: ModuleNotFoundError)"),
    ("tensorrt", "__version__ = '99.0.0'\n", "tensorrt '99.0.0' (not a TensorRT release version)"),
    ("tensorrt", "", "tensorrt (no version)"),
    ("tensorrt_lean", "__version__ = '10.2.0.post1'\n", "tensorrt_lean 10.2.0.post1, a runtime that reads no caches"),
])
def test_placeholders_and_runtimes_are_not_taken_and_the_line_says_what_was_found(tmp_path, caplog, monkeypatch,
                                                                                 name, body, seen):
    _fake_module(tmp_path, monkeypatch, name, body)
    found = installed_tensorrt()
    assert found is not None and found.version is None and found.found == seen
    cache = tmp_path / "l.cache"
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache),
                 "--no-progress"]) == 0
    (line,) = _lines(caplog, "--trt-version")
    assert f"found {seen}" in line and CalibrationCache.load(cache).header == DEFAULT_HEADER


def test_a_real_looking_installed_module_is_taken(tmp_path, monkeypatch):
    _fake_module(tmp_path, monkeypatch, "tensorrt", "__version__ = '10.11.0.33'\n")
    found = installed_tensorrt()
    assert (found.version, found.found, found.module) == ("10.11.0", "tensorrt 10.11.0.33", "tensorrt")


def test_qdq_to_cache_and_quantize_say_it_too(tmp_path, capsys, caplog, no_tensorrt):
    q, plain, cache = tmp_path / "q.onnx", tmp_path / "p.onnx", tmp_path / "c.cache"
    assert main(["-q", "quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(q)]) == 0
    assert not _lines(caplog, "--trt-version")  # a cache's scales: no version is emulated
    assert main(["qdq-to-cache", str(q), "--onnx", str(plain), "--cache", str(cache), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trt_version_source"].startswith("default") and doc["header"] == DEFAULT_HEADER
    assert len(_lines(caplog, "trt-calib's default")) == 1
    caplog.clear()
    images = np.load(LENET_BATCHES.parent / "mnist_train_images_0_599.npy")[:40].astype(np.float32)[:, None] / 255
    np.save(tmp_path / "d.npy", images)
    assert main(["quantize", str(LENET), "--data", str(tmp_path / "d.npy"), "--batch-size", "20", "-o",
                 str(tmp_path / "q2.onnx"), "--json", "--no-progress"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trt_version"] == DEFAULT_TRT_VERSION and doc["trt_version_source"].startswith("default")
    (line,) = _lines(caplog, "--trt-version")
    assert line.startswith(f"emulating the calibration of TensorRT {DEFAULT_TRT_VERSION}")


def test_convert_takes_the_installed_version_and_otherwise_asks_for_one(tmp_path, capsys, monkeypatch):
    amax = tmp_path / "a.json"
    amax.write_text(json.dumps({"data": 1.0, "conv1": 2.5}))
    out = tmp_path / "c.cache"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["convert", str(amax), "--to", "cache", "-o", str(out)]) == 2
    assert "needs --trt-version" in capsys.readouterr().err and not out.exists()
    trt_standin.install(monkeypatch, "8.6.1")
    assert main(["convert", str(amax), "--to", "cache", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["header"] == CalibrationCache.load(out).header == "TRT-8601-EntropyCalibration2"
    assert doc["trt_version_source"] == "installed tensorrt 8.6.1" and "installed one" in captured.err


def test_sensitivity_says_which_calibration_it_emulates(tmp_path, capsys, caplog, no_tensorrt):
    images = np.load(LENET_BATCHES.parent / "mnist_train_images_0_599.npy")[:100].astype(np.float32)[:, None] / 255
    np.savez(tmp_path / "d.npz", data=images)
    assert main(["sensitivity", str(LENET), "--data", str(tmp_path / "d.npz"), "--batch-size", "50", "-o",
                 str(tmp_path / "s.json"), "--executor", "serial", "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scales"].endswith(f"TensorRT {DEFAULT_TRT_VERSION} emulated; version: default (no TensorRT is "
                                  "installed here))")
    (line,) = _lines(caplog, "--trt-version")
    assert line.startswith(f"emulating the calibration of TensorRT {DEFAULT_TRT_VERSION}")
