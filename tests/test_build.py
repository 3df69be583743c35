"""build_engine's preflight checks and call sequence, against a stand-in builder (tests/trt_standin.py).

Honest scope: these tests prove which TensorRT calls we make, in which order, with which values, and that failures
surface before or after the build as intended. They do not prove that TensorRT builds the engine.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trt_standin
from trt_calib.trt.build import build_engine, explicit_batch_flags, parse_shapes
from trt_calib.core.cache import CalibrationCache
from trt_calib.trt.calibrator import CalibratorCore, make_calibrator
from trt_calib.errors import CalibrationError, DataError, MissingDependencyError, ModelError


GPU = "cuda-python"  # the device backend that reaches the stand-in's fake GPU (trt_standin.install)


def tiny_model(path, batch="N", custom_op: bool = False):
    """x[batch, 4] -> Relu -> r -> Sigmoid -> y (optionally a node the stand-in parser cannot import)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="sigmoid")]
    if custom_op:
        nodes.append(helper.make_node("Weird", ["y"], ["z"], name="weird", domain="com.example"))
    out = "z" if custom_op else "y"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def batches(n=3, shape=(2, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture
def trt(monkeypatch):
    return trt_standin.install(monkeypatch, "10.3.0")


def calls(trt, kind=None):
    recorded = trt_standin.state_of(trt).calls
    return [c for c in recorded if kind is None or c[0] == kind]


def test_calibrated_build_call_sequence_on_tensorrt_10(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    calib = make_calibrator(batches(3), device=GPU, cache_file=tmp_path / "m.cache")
    result = build_engine(model, calibrator=calib, engine_path=tmp_path / "m.plan", workspace=1 << 28)
    names = [c[0] for c in calls(trt)]
    assert names == [
        "init_libnvinfer_plugins", "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
        "config.set_memory_pool_limit", "config.set_flag", "config.set_flag", "config.int8_calibrator",
        "build_serialized_network",
    ]
    assert calls(trt, "create_network") == [("create_network", 0)]  # TensorRT 10: always explicit batch
    assert calls(trt, "config.set_flag") == [("config.set_flag", "INT8"), ("config.set_flag", "FP16")]
    assert calls(trt, "config.set_memory_pool_limit") == [("config.set_memory_pool_limit", "WORKSPACE", 1 << 28)]
    assert (tmp_path / "m.plan").read_bytes() == result.plan == b"STAND-IN PLAN: not a TensorRT engine\n"
    assert result.batches_fed == 3 and result.calibration_shapes == {"x": (2, 4)}
    drive = trt_standin.state_of(trt).drive_results[0]
    np.testing.assert_array_equal(drive.batches[2]["x"], batches(3)[2]["x"])  # the bytes behind the pointers
    assert CalibrationCache.load(tmp_path / "m.cache").algorithm == "EntropyCalibration2"


def test_tensorrt_8_6_gets_the_explicit_batch_flag(monkeypatch, tmp_path):
    trt = trt_standin.install(monkeypatch, "8.6.1")
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    build_engine(model, calibrator=make_calibrator(batches(1), device=GPU), fp16=False)
    assert calls(trt, "create_network") == [("create_network", 1)]
    assert calls(trt, "config.set_flag") == [("config.set_flag", "INT8")]


def test_explicit_batch_flags_follow_the_builder_not_the_version_string(monkeypatch):
    trt = trt_standin.install(monkeypatch, "8.6.1")
    builder = trt.Builder(trt.Logger())
    assert explicit_batch_flags(trt, builder) == 1
    del type(builder).build_engine
    assert explicit_batch_flags(trt, builder) == 0


def test_dynamic_inputs_get_a_profile_and_calibrate_at_opt(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    calib = make_calibrator(batches(2, shape=(8, 4)), device=GPU)
    result = build_engine(model, calibrator=calib, shapes={"x": ((1, 4), (8, 4), (32, 4))})
    assert calls(trt, "profile.set_shape") == [("profile.set_shape", "x", (1, 4), (8, 4), (32, 4))]
    assert calls(trt, "config.set_calibration_profile") == [
        ("config.set_calibration_profile", {"x": ((1, 4), (8, 4), (32, 4))})]
    drive = trt_standin.state_of(trt).drive_results[0]
    assert [b["x"].shape for b in drive.batches] == [(8, 4), (8, 4)]
    assert result.calibration_shapes == {"x": (8, 4)}


def test_dynamic_inputs_without_shapes_take_the_first_batch_shape_and_say_so(trt, tmp_path, caplog):
    model = tiny_model(tmp_path / "m.onnx")
    calib = make_calibrator(batches(2, shape=(4, 4)), device=GPU)
    with caplog.at_level(logging.WARNING, logger="trt_calib.trt.build"):
        result = build_engine(model, calibrator=calib)
    assert result.profile_shapes == {"x": ((4, 4), (4, 4), (4, 4))}
    assert "building for the calibration batch shape (4, 4) only" in caplog.text


def test_preflight_refuses_a_first_batch_that_is_not_the_opt_shape_before_building(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    calib = make_calibrator(batches(2, shape=(2, 4)), device=GPU)
    with pytest.raises(DataError, match=r"input 'x' has shape \(2, 4\) but TensorRT calibrates at \(8, 4\)"):
        build_engine(model, calibrator=calib, shapes={"x": ((1, 4), (8, 4), (8, 4))})
    assert calls(trt, "build_serialized_network") == []


def test_preflight_refuses_wrong_input_names_before_building(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    calib = make_calibrator([{"images": np.zeros((2, 4), np.float32)}], device=GPU)
    with pytest.raises(DataError, match=r"batch 0 has inputs \['images'\] but the network's inputs are \['x'\]"):
        build_engine(model, calibrator=calib)
    assert calls(trt, "build_serialized_network") == []


def test_preflight_refuses_an_empty_source_and_a_non_tensorrt_calibrator(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    with pytest.raises(DataError, match="produced no batches"):
        build_engine(model, calibrator=make_calibrator(iter([]), device=GPU))
    with pytest.raises(CalibrationError, match="is a CalibratorCore, not a tensorrt.IInt8Calibrator"):
        build_engine(model, calibrator=CalibratorCore(batches(1), device=GPU))
    assert calls(trt, "build_serialized_network") == []


def test_a_failure_during_calibration_is_reraised_and_no_engine_or_cache_is_written(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)

    def source():
        yield from batches(2)
        raise OSError("image 3 is truncated")

    calib = make_calibrator(source(), device=GPU, cache_file=tmp_path / "m.cache")
    with pytest.raises(OSError, match="image 3 is truncated"):
        build_engine(model, calibrator=calib, engine_path=tmp_path / "m.plan")
    assert calls(trt, "build_serialized_network")  # the stand-in built from the 2 good batches, like TensorRT
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.cache").exists()


def test_a_matching_cache_needs_no_batches_and_a_mismatched_one_stops_before_the_build(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    cache_file = tmp_path / "m.cache"
    CalibrationCache.from_amax({"x": 2.0, "r": 2.0, "y": 1.0}, algorithm="EntropyCalibration2",
                               trt_version="10.3.0").save(cache_file)
    result = build_engine(model, calibrator=make_calibrator([], device=GPU, cache_file=cache_file))
    drive = trt_standin.state_of(trt).drive_results[0]
    assert drive.cache_read == cache_file.read_bytes() and drive.pointers == [] and result.batches_fed == 0
    with pytest.raises(CalibrationError, match="written by EntropyCalibration2.*this is a MinMaxCalibrator"):
        build_engine(model, calibrator=make_calibrator(batches(1), "minmax", device=GPU, cache_file=cache_file))
    assert len(calls(trt, "build_serialized_network")) == 1


def test_dynamic_ranges_build_sets_ranges_and_attaches_no_calibrator(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    result = build_engine(model, ranges={"x": 2.0, "r": 2.0, "y": 1.0}, engine_path=tmp_path / "m.plan")
    assert calls(trt, "config.int8_calibrator") == []
    assert [d.name for d in result.ranges_report.applied] == ["x", "r", "y"]
    assert result.ranges_report.missing == []
    assert (tmp_path / "m.plan").is_file()


def test_deprecation_warnings_of_tensorrt_10_1_do_not_escape(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        build_engine(model, calibrator=make_calibrator(batches(1, shape=(2, 4)), device=GPU),
                     shapes={"x": ((1, 4), (2, 4), (4, 4))})
        build_engine(model, ranges={"x": 1.0}, shapes={"x": ((1, 4), (2, 4), (4, 4))})


def test_parser_errors_are_reported_by_node(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2, custom_op=True)
    with pytest.raises(ModelError, match=r"node 2 'weird' \(Weird\): creator && \"Plugin not found"):
        build_engine(model, ranges={"x": 1.0})


def test_argument_errors():
    with pytest.raises(CalibrationError, match="needs a calibrator or ranges"):
        build_engine("m.onnx")
    with pytest.raises(ModelError, match="no such ONNX model"):
        build_engine("missing.onnx", ranges={"x": 1.0})


def test_shapes_that_contradict_the_model_are_refused(trt, tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    with pytest.raises(DataError, match=r"dim 1 is fixed to 4 by the model"):
        build_engine(model, ranges={"x": 1.0}, shapes={"x": ((1, 3), (1, 3), (1, 3))})
    with pytest.raises(DataError, match=r"needs 1 <= min <= opt <= max"):
        build_engine(model, ranges={"x": 1.0}, shapes={"x": ((8, 4), (2, 4), (4, 4))})
    with pytest.raises(DataError, match=r"not network inputs \['x'\]"):
        build_engine(model, ranges={"x": 1.0}, shapes={"images": ((1, 4), (1, 4), (1, 4))})


def test_tensorrt_11_points_to_quantize(monkeypatch, tmp_path):
    trt_standin.install(monkeypatch, "11.0.0")
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    with pytest.raises(MissingDependencyError, match="TensorRT 11.0.0 has no BuilderFlag.INT8.*trt-calib quantize"):
        build_engine(model, ranges={"x": 1.0})


def test_parse_shapes():
    assert parse_shapes("x:1x3x224x224") == {"x": ((1, 3, 224, 224),) * 3}
    assert parse_shapes("a:1x4,8x4,16x4; b:2x2") == {"a": ((1, 4), (8, 4), (16, 4)), "b": ((2, 2),) * 3}
    assert parse_shapes("input:0:1x2") == {"input:0": ((1, 2),) * 3}  # names may hold colons
    with pytest.raises(DataError, match="give one shape or three"):
        parse_shapes("x:1x4,2x4")
    with pytest.raises(DataError, match="dims must be integers"):
        parse_shapes("x:1xNx4")


# ---------------------------------------------------------------------------------------------------- CLI, samples

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from trt_calib.cli.build import register as add_build_parser, run_build  # noqa: E402

SAMPLES = trt_standin.repo_root() / "samples"


def build_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trt-calib")
    add_build_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["build", *argv])


def npz_data(path, n=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    np.savez(path, x=x)
    return path


def test_cli_build_dry_run_needs_no_tensorrt(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tiny_model(tmp_path / "m.onnx")
    args = build_args(str(model), "--data", str(npz_data(tmp_path / "d.npz")), "--batch-size", "2", "--dry-run")
    assert args.handler is run_build
    assert run_build(args) == 0
    out = capsys.readouterr().out
    assert "4 batch(es) of 2" in out and "input 'x': (2, 4) float32" in out and "nothing was built" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]  # nothing written


def test_cli_build_builds_with_the_standin(trt, tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    args = build_args(str(model), "--data", str(npz_data(tmp_path / "d.npz")), "--batch-size", "2",
                      "--engine", str(tmp_path / "m.plan"), "--cache", str(tmp_path / "m.cache"),
                      "--device", GPU)
    assert run_build(args) == 0
    assert (tmp_path / "m.plan").is_file() and (tmp_path / "m.cache").is_file()
    assert "from 4 calibration batch(es)" in capsys.readouterr().out


def test_cli_build_needs_an_engine_path(tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    with pytest.raises(DataError, match="--engine"):
        run_build(build_args(str(model), "--data", str(npz_data(tmp_path / "d.npz"))))


@pytest.mark.parametrize("sample", ["build_int8_engine.py", "build_with_dynamic_ranges.py"])
def test_samples_answer_help_without_tensorrt(sample):
    done = subprocess.run([sys.executable, str(SAMPLES / sample), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {sample}") and "--engine" in done.stdout


def load_sample(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), SAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dynamic_ranges_sample_builds_from_a_cpu_calibration_with_the_standin(trt, tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    sample = load_sample("build_with_dynamic_ranges.py")
    code = sample.main([str(model), "--data", str(npz_data(tmp_path / "d.npz")), "--batch-size", "2",
                        "--policy", "sign-aware", "--engine", str(tmp_path / "m.plan")])
    assert code == 0 and (tmp_path / "m.plan").is_file()
    out = capsys.readouterr().out
    assert "dynamic ranges (sign-aware): 3 tensor(s) set, 0 without a range" in out
    names = [c[0] for c in calls(trt)]
    assert names.index("init_libnvinfer_plugins") < names.index("OnnxParser")  # plugins before the parser


def test_int8_sample_builds_with_the_standin_and_registers_plugins_first(trt, tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx", batch=2)
    sample = load_sample("build_int8_engine.py")
    code = sample.main([str(model), "--data", str(npz_data(tmp_path / "d.npz")), "--batch-size", "2",
                        "--device", GPU, "--engine", str(tmp_path / "m.plan")])
    assert code == 0 and (tmp_path / "m.plan").is_file()
    assert "4 calibration batch(es)" in capsys.readouterr().out
    names = [c[0] for c in calls(trt)]
    assert names.index("init_libnvinfer_plugins") < names.index("OnnxParser")


def test_int8_sample_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tiny_model(tmp_path / "m.onnx")
    sample = load_sample("build_int8_engine.py")
    assert sample.main([str(model), "--data", str(npz_data(tmp_path / "d.npz")), "--batch-size", "4",
                        "--dry-run"]) == 0
    assert "2 batch(es) of 4" in capsys.readouterr().out
