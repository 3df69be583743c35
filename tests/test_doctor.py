"""`trt-calib doctor`, without TensorRT and through the stand-in (tests/trt_standin.py: not TensorRT; the doctor's
TensorRT checks are exercised, their numbers are the stand-in's, which are our own CPU calibration)."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest

import trt_standin
import trt_calib.trt.doctor as doctor
from trt_calib.cli.main import main

TRT_CHECKS = ["lenet int8 build (EntropyCalibrator2)", "tensorrt cache vs numpy", "tensorrt cache vs TRT-7000 table",
              "build from the cache", "set_dynamic_range overrides"]


@pytest.fixture
def no_gpu_libraries(monkeypatch):
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "cupy"):
        monkeypatch.setitem(sys.modules, name, None)
    torch = types.ModuleType("torch")
    torch.__version__ = "2.99.0+cpu"
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", torch)


def run_json(capsys, *argv):
    code = main(["doctor", "--json", *argv])
    report = json.loads(capsys.readouterr().out)
    return code, report, {c["name"]: c for c in report["checks"]}


def test_without_tensorrt_the_cpu_checks_still_run(monkeypatch, capsys, no_gpu_libraries):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, report, checks = run_json(capsys)
    assert code == 0 and report["tensorrt"] is None
    assert set(report) == {"tensorrt", "checks"} and all(set(c) == {"name", "status", "detail"} for c in
                                                          report["checks"])
    assert checks["tensorrt"]["status"] == "skip" and "not installed" in checks["tensorrt"]["detail"]
    assert checks["gpu"]["status"] == "skip" and "pycuda: not installed" in checks["gpu"]["detail"]
    assert "torch: torch 2.99.0+cpu is installed but torch.cuda.is_available() is False" in checks["gpu"]["detail"]
    assert checks["lenet reproduction (cpu)"]["status"] == "pass"
    assert "8/8 shared tensors consistent, 4 exact, 4 same-bin" in checks["lenet reproduction (cpu)"]["detail"]
    assert checks["cache round trip (cpu)"]["status"] == "pass"
    assert checks["histogram kernel"]["status"] == "pass" and "numba " in checks["histogram kernel"]["detail"]
    for name in TRT_CHECKS:
        assert checks[name] == {"name": name, "status": "skip", "detail": "TensorRT is not installed"}


def test_with_the_standin_every_tensorrt_check_runs(monkeypatch, capsys):
    trt_standin.install(monkeypatch, "10.3.0")
    assert main(["doctor", "--device", "cuda-python"]) == 0
    table = capsys.readouterr().out
    assert "10.3.0 (stand-in, not TensorRT)" in table
    for name in TRT_CHECKS:
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert line.split()[len(name.split())] == "pass", line
    assert "engine of 37 bytes from 10 batches; TensorRT wrote TRT-100300-EntropyCalibration2" in table
    assert "8 calibrated ranges overridden" in table and "12 passed, 0 failed, 1 skipped" in table


def test_tensorrt_11_builds_the_qdq_model_instead(monkeypatch, capsys):
    trt_standin.install(monkeypatch, "11.0.0")
    code, report, checks = run_json(capsys, "--device", "cuda-python")
    assert code == 0 and report["tensorrt"] == "11.0.0"
    assert checks["lenet q/dq build (TensorRT 11)"]["status"] == "pass"
    assert checks["int8/fp16 support"]["status"] == "skip"
    assert all(checks[name]["status"] == "skip" and "has no calibrators" in checks[name]["detail"]
               for name in TRT_CHECKS)


def test_tensorrt_without_a_gpu_says_so_and_runs_the_cpu_checks(monkeypatch, capsys, no_gpu_libraries):
    trt_standin.install(monkeypatch, "10.3.0", cuda_python="none")
    code, report, checks = run_json(capsys)
    assert code == 0 and report["tensorrt"] == "10.3.0"
    assert checks["gpu"]["status"] == "skip"
    assert all(checks[name]["detail"] == "no GPU: no device backend works (auto)" for name in TRT_CHECKS)
    assert checks["lenet reproduction (cpu)"]["status"] == "pass"


def test_a_failed_check_exits_1(monkeypatch, capsys, tmp_path, no_gpu_libraries):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    data = tmp_path / "data"
    shutil.copytree(doctor.DATA_DIR, data)
    table = data / "caches" / "sampleINT8_TRT-7000.cache"
    table.write_text(table.read_text().replace("conv2: 3ddc858b", "conv2: 3de00000"))
    monkeypatch.setattr(doctor, "DATA_DIR", data)
    code, _, checks = run_json(capsys)
    assert code == 1
    failed = checks["lenet reproduction (cpu)"]
    assert failed["status"] == "fail" and "7/8 shared tensors consistent" in failed["detail"]
    assert "differs: conv2" in failed["detail"]


def test_an_explicit_device_that_does_not_work_is_a_failure(monkeypatch, capsys, no_gpu_libraries):
    trt_standin.install(monkeypatch, "10.3.0", cuda_python="none")
    code, _, checks = run_json(capsys, "--device", "cuda-python")
    assert code == 1 and checks["gpu"]["status"] == "fail"
    assert "cuda-python: not installed" in checks["gpu"]["detail"]


def test_a_bad_device_is_a_usage_error(capsys):
    assert main(["doctor", "--device", "opencl"]) == 2
    assert "invalid choice: 'opencl'" in capsys.readouterr().err


def test_tensorrt_internal_tensors_in_its_cache_do_not_fail_the_comparison(monkeypatch, capsys):
    """Real caches hold TensorRT's own tensors ("(Unnamed Layer* 7) [Constant]_output"); only shared ones count."""
    trt_standin.install(monkeypatch, "10.3.0")
    original = trt_standin._standin_cache
    monkeypatch.setattr(trt_standin, "_standin_cache", lambda *args: original(*args)
                        + "(Unnamed Layer* 7) [Constant]_output: 3c010a14\n")
    code, _, checks = run_json(capsys, "--device", "cuda-python")
    assert code == 0, checks
    numpy_check = checks["tensorrt cache vs numpy"]
    assert numpy_check["status"] == "pass" and "10/10 shared tensors consistent" in numpy_check["detail"]
    assert "1 TensorRT-internal entries not checked" in numpy_check["detail"]


def test_without_numba_the_doctor_says_histograms_bin_with_numpy(monkeypatch, capsys, no_gpu_libraries):
    from trt_calib.core import kernel

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "numba", None)
    for key, value in {"compiled": None, "failed": None, "loader": None, "backend": "auto"}.items():
        monkeypatch.setitem(kernel._state, key, value)
    code, _, checks = run_json(capsys)
    assert code == 0 and checks["histogram kernel"]["status"] == "skip"
    assert "Hint: pip install numba" in checks["histogram kernel"]["detail"]
