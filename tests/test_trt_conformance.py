"""What TensorRT's own sources say the calibrator and the build path must do (issue 11, items 1 to 11), each checked
against the stand-in (tests/trt_standin.py: not TensorRT; it is as strict as TensorRT where these tests look).

Each item's first test failed on the code before the fix; the sources are cited in the library's comments and in
docs/calibrator.md ("What changed, and why").
"""

from __future__ import annotations

import logging
import os
import sys
import types
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_standin
from trt_calib.core.cache import CalibrationCache
from trt_calib.errors import CalibrationError, DataError, MissingDependencyError, ModelError
from trt_calib.ort.model import model_inputs
from trt_calib.ort.data import InputSpec, iter_batches
from trt_calib.trt.build import build_engine
from trt_calib.trt.calibrator import CalibratorCore, make_calibrator
from trt_calib.trt.device import select_backend
from trt_calib.trt.ranges import apply_dynamic_ranges

GPU = "cuda-python"  # the device backend that reaches the stand-in's fake GPU


def save(model, path):
    onnx.save(model, str(path))
    return path


def relu_model(path, elem_type=TensorProto.FLOAT, batch=2, extra_nodes=(), extra_outputs=(), initializers=()):
    """x[batch, 4] (elem_type) -> Cast(float) -> Relu -> r (-> extra nodes)."""
    nodes = [helper.make_node("Cast", ["x"], ["c"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *extra_nodes]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", elem_type, [batch, 4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [batch, 4]), *extra_outputs],
        initializer=list(initializers),
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def trt(monkeypatch):
    return trt_standin.install(monkeypatch, "10.3.0")


def state(trt):
    return trt_standin.state_of(trt)


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------- 1: input types


def test_float16_input_model_calibrates_through_float32_buffers(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx", TensorProto.FLOAT16)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(2, 4)).astype(np.float16)} for _ in range(3)]
    calib = make_calibrator(batches, device=GPU, input_specs=model_inputs(model))
    build_engine(model, calibrator=calib)
    drive = state(trt).drive_results[0]
    assert [b["x"].dtype for b in drive.batches] == [np.float32] * 3  # TensorRT read float32
    np.testing.assert_array_equal(drive.batches[2]["x"], batches[2]["x"].astype(np.float32))


def test_uint8_input_model_hands_tensorrt_a_float32_buffer_of_the_size_it_reads(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx", TensorProto.UINT8)
    inputs = model_inputs(model)
    pixels = np.arange(8, dtype=np.uint8).reshape(2, 4) * 30
    calib = make_calibrator(iter_batches([{"x": pixels}] * 2, inputs), device=GPU, input_specs=inputs)
    build_engine(model, calibrator=calib)
    drive = state(trt).drive_results[0]
    np.testing.assert_array_equal(drive.batches[0]["x"], pixels.astype(np.float32))
    assert calib.backend.capacity("x") == pixels.size * 4  # sized from what TensorRT reads


def test_float64_int8_and_bfloat16_batches_are_converted_with_one_warning_per_input(trt, caplog):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([[-2.0, 0.5, 1.0]], np.float64)
    batches = [{"a": values, "b": np.array([[-3, 0, 7]], np.int8), "c": values.astype(ml_dtypes.bfloat16)}] * 3
    specs = [InputSpec("a", (1, 3), np.float64), InputSpec("b", (1, 3), np.int8),
             InputSpec("c", (1, 3), ml_dtypes.bfloat16)]
    with caplog.at_level(logging.WARNING, logger="trt_calib.trt.calibrator"):
        calib = make_calibrator(batches, device=GPU, input_specs=specs)
        result = trt_standin.drive(calib, {"a": ((1, 3), np.float64), "b": ((1, 3), np.int8),
                                           "c": ((1, 3), trt_standin.DataType.BF16)})
    assert not calib.failed and len(result.batches) == 3
    np.testing.assert_array_equal(result.batches[0]["b"], np.array([[-3, 0, 7]], np.float32))
    np.testing.assert_array_equal(result.batches[0]["c"], values.astype(np.float32))
    warnings_ = [r.getMessage() for r in caplog.records if "converted to float32" in r.getMessage()]
    assert len(warnings_) == 3 and {w.split("'")[1] for w in warnings_} == {"a", "b", "c"}


def test_index_inputs_are_handed_over_in_their_own_type(trt):
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.array([[True, False, True], [False, True, True]])
    specs = [InputSpec("ids", (2, 3), np.int64), InputSpec("mask", (2, 3), np.bool_)]
    calib = make_calibrator([{"ids": ids, "mask": mask}], device=GPU, input_specs=specs)
    result = trt_standin.drive(calib, specs)
    np.testing.assert_array_equal(result.batches[0]["ids"], ids)
    np.testing.assert_array_equal(result.batches[0]["mask"], mask)
    bad = make_calibrator([{"ids": ids.astype(np.float32), "mask": mask}], device=GPU, input_specs=specs)
    with pytest.raises(DataError, match=r"input 'ids' has dtype float32, but the network input is int64"):
        bad.peek(["ids", "mask"])


def test_the_preflight_refuses_data_tensorrt_would_misread(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx", TensorProto.INT32)
    calib = make_calibrator([{"x": np.ones((2, 4), np.float32)}], device=GPU)  # no input_specs
    with pytest.raises(DataError, match=r"input 'x' is float32, but the network input is INT32 and TensorRT reads "
                                        r"int32"):
        build_engine(model, calibrator=calib)
    assert state(trt).calls[-1][0] != "build_serialized_network"


def test_the_loader_feeds_whole_float_data_to_a_uint8_input_and_refuses_fractions():
    spec = InputSpec("x", ("N", 3), np.uint8)
    (batch,) = iter_batches([{"x": np.array([[0.0, 127.0, 255.0]], np.float32)}], [spec])
    assert batch["x"].dtype == np.uint8 and batch["x"].tolist() == [[0, 127, 255]]
    with pytest.raises(DataError, match=r"input 'x' is declared uint8 but holds 0.5 at index \(0, 1\)"):
        list(iter_batches([{"x": np.array([[0.0, 0.5, 1.0]], np.float32)}], [spec]))
    with pytest.raises(DataError, match="refusing to truncate floats"):  # index inputs stay strict
        list(iter_batches([{"x": np.array([[1.0, 2.0, 3.0]])}], [InputSpec("x", ("N", 3), np.int32)]))


# ---------------------------------------------------------------------------------------------------- 2: plugins


def nms_model(path):
    """r -> EfficientNMS_TRT (TensorRT's plugin library; no ONNX importer of its own)."""
    nms = helper.make_node("EfficientNMS_TRT", ["r", "r"], ["num", "boxes"], name="nms", plugin_version="1",
                           max_output_boxes=10)
    outs = [helper.make_tensor_value_info("num", TensorProto.INT32, [2, 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2, 10, 4])]
    return relu_model(path, extra_nodes=[nms], extra_outputs=outs)


def test_a_model_with_an_efficientnms_plugin_parses_on_tensorrt_10(trt, tmp_path):
    model = nms_model(tmp_path / "m.onnx")
    result = build_engine(model, ranges={"x": 1.0, "c": 1.0, "r": 1.0})
    calls = [c[0] for c in state(trt).calls]
    assert calls.index("init_libnvinfer_plugins") < calls.index("OnnxParser")
    assert ("init_libnvinfer_plugins", "") in state(trt).calls
    assert result.plan and "boxes" in result.ranges_report.missing


# ---------------------------------------------------------------------------------------------------- 3: write after read


def test_a_cache_tensorrt_writes_back_after_reading_it_is_no_failure(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    cache_file = tmp_path / "m.cache"
    CalibrationCache.from_amax({"x": 2.0, "c": 2.0, "r": 2.0}, algorithm="EntropyCalibration2",
                               trt_version="8.6.1").save(cache_file)
    calib = make_calibrator([], device=GPU, cache_file=cache_file, min_batches=2)
    result = build_engine(model, calibrator=calib, engine_path=tmp_path / "m.plan")
    drive = state(trt).drive_results[0]
    assert drive.rewrote_cache and drive.pointers == []
    assert (tmp_path / "m.plan").is_file() and result.cache_used and result.batches_fed == 0 and not calib.failed
    rewritten = CalibrationCache.load(cache_file)
    assert rewritten.header == "TRT-100300-EntropyCalibration2"  # the bytes differed: written (atomically)
    assert rewritten.amaxes() == CalibrationCache.parse(drive.cache_read).amaxes() and no_temp_files(tmp_path)


def test_an_unchanged_cache_written_back_leaves_the_file_alone(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    cache_file = tmp_path / "m.cache"
    CalibrationCache.from_amax({"x": 2.0, "r": 2.0}, trt_version="10.3.0").save(cache_file)
    before = os.stat(cache_file)
    build_engine(model, calibrator=make_calibrator([], device=GPU, cache_file=cache_file, min_batches=5))
    assert state(trt).drive_results[0].rewrote_cache
    assert os.stat(cache_file).st_ino == before.st_ino and os.stat(cache_file).st_mtime_ns == before.st_mtime_ns


# ---------------------------------------------------------------------------------------------------- 4: build_engine


def test_a_second_build_with_the_same_calibrator_reuses_the_cache_in_memory(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    calib = make_calibrator([{"x": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(3)], device=GPU)
    first = build_engine(model, calibrator=calib)
    second = build_engine(model, calibrator=calib)
    drives = state(trt).drive_results
    assert first.batches_fed == 3 and len(drives[0].pointers) == 3
    assert second.cache_used and second.batches_fed == 0 and drives[1].pointers == []
    assert drives[1].cache_read == drives[0].cache_written


def test_a_dynamic_model_builds_from_a_cache_alone(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx", batch="N")
    cache_file = tmp_path / "m.cache"
    CalibrationCache.from_amax({"x": 2.0, "r": 2.0}, trt_version="10.3.0").save(cache_file)
    result = build_engine(model, calibrator=make_calibrator([], device=GPU, cache_file=cache_file))
    assert result.cache_used and result.profile_shapes == {"x": ((1, 4), (1, 4), (1, 4))}  # trtexec's rule
    assert state(trt).calls[-1][0] == "build_serialized_network"


def test_the_cli_builds_a_dynamic_model_from_a_cache_alone(trt, tmp_path, capsys):
    from trt_calib.cli.main import main

    model = relu_model(tmp_path / "m.onnx", batch="N")
    cache_file = tmp_path / "m.cache"
    CalibrationCache.from_amax({"x": 2.0, "r": 2.0}, trt_version="10.3.0").save(cache_file)
    code = main(["build", str(model), "--cache", str(cache_file), "--engine", str(tmp_path / "m.plan"),
                 "--device", GPU])
    assert code == 0 and (tmp_path / "m.plan").is_file()
    assert "from a cache (no batches)" in capsys.readouterr().out


def test_a_failing_cross_check_keeps_the_engine_and_the_messages_say_the_cache_was_written(trt, tmp_path,
                                                                                          monkeypatch, caplog):
    import trt_calib.trt.crosscheck as crosscheck

    def broken(*args, **kwargs):
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(crosscheck, "calibrate", broken)
    model = relu_model(tmp_path / "m.onnx")
    calib = make_calibrator([{"x": np.ones((2, 4), np.float32)}] * 2, device=GPU, cache_file=tmp_path / "m.cache",
                            cross_check=model)
    with caplog.at_level(logging.INFO, logger="trt_calib"):
        build_engine(model, calibrator=calib, engine_path=tmp_path / "m.plan")
    assert (tmp_path / "m.plan").is_file() and (tmp_path / "m.cache").is_file()
    assert not calib.failed and isinstance(calib.cross_check_error, RuntimeError)
    assert "cross-check could not run (RuntimeError: onnxruntime exploded)" in caplog.text
    assert "no cache will be written" not in caplog.text and "no calibration cache was written" not in caplog.text


# ---------------------------------------------------------------------------------------------------- 5: device


def test_buffers_are_allocated_on_the_current_device_where_tensorrt_builds(monkeypatch, tmp_path):
    trt = trt_standin.install(monkeypatch, "10.3.0", devices=2)
    runtime = sys.modules["cuda.bindings.runtime"]
    runtime.cudaSetDevice(1)  # as torch.cuda.set_device(1) would: TensorRT builds on device 1
    model = relu_model(tmp_path / "m.onnx")
    calib = make_calibrator([{"x": np.ones((2, 4), np.float32)}], device=GPU)
    build_engine(model, calibrator=calib)
    gpu = trt_standin.gpu_of(trt)
    assert calib.backend.device_index == 1
    assert {a.device for a in gpu.allocations.values()} == {1}
    assert len(state(trt).drive_results[0].batches) == 1


def test_an_explicit_device_index_is_still_honoured(monkeypatch):
    trt = trt_standin.install(monkeypatch, "10.3.0", devices=2)
    backend = select_backend(GPU, device_index=1)
    backend.upload("x", np.ones(3, np.float32))
    assert backend.device_index == 1 and trt_standin.gpu_of(trt).current == 0
    assert [a.device for a in trt_standin.gpu_of(trt).allocations.values()] == [1]


def test_pycuda_uses_the_device_of_the_current_context(monkeypatch):
    from test_device import FakePycuda

    fake = FakePycuda(devices=2)
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=fake.module))
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake.module)
    fake.module.Device(1).retain_primary_context().push()  # what torch.cuda.set_device(1) leaves current
    backend = select_backend("pycuda")
    backend.upload("x", np.ones(4, np.float32))
    assert backend.device_index == 1 and [a.device for a in fake.allocations] == [1]
    fake.module.Context.pop()
    assert select_backend("pycuda").device_index == 0  # no current context: the runtime's default, device 0


class _FakeCupy:
    """Just enough of CuPy for CupyBuffers: devices, a current device, device-tagged arrays."""

    def __init__(self, current: int, devices: int = 2):
        fake = self
        self.active = [current]
        self.arrays: list[tuple[int, int]] = []

        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                fake.active.append(self.index)

            def __exit__(self, *exc):
                fake.active.pop()

            def synchronize(self):
                pass

        runtime = types.SimpleNamespace(getDevice=lambda: fake.active[-1], getDeviceCount=lambda: devices,
                                        CUDARuntimeError=RuntimeError)
        self.cuda = types.SimpleNamespace(runtime=runtime, Device=Device, Stream=lambda non_blocking: object())
        self.uint8 = np.uint8

    def empty(self, shape, dtype):
        self.arrays.append((shape[0], self.active[-1]))
        return np.empty(shape, dtype)


class _FakeTorch:
    """Just enough of torch for TorchBuffers' construction and allocation."""

    def __init__(self, current: int, devices: int = 2):
        self.__version__ = "2.99.0"
        self.uint8 = np.uint8
        self.allocations: list[tuple[int, Any]] = []
        self.cuda = types.SimpleNamespace(is_available=lambda: True, current_device=lambda: current,
                                          device_count=lambda: devices, Stream=lambda device: object())
        self.device = lambda kind, index: (kind, index)

    def empty(self, nbytes, dtype, device=None, pin_memory=False):
        self.allocations.append((nbytes, device))
        return np.empty(nbytes, dtype)


def test_cupy_and_torch_use_the_current_device(monkeypatch):
    cupy = _FakeCupy(current=1)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    backend = select_backend("cupy")
    with backend._active():
        backend._buffer_for("x", 16)
    assert backend.device_index == 1 and cupy.arrays == [(16, 1)]
    torch = _FakeTorch(current=1)
    monkeypatch.setitem(sys.modules, "torch", torch)
    backend = select_backend("torch")
    backend._buffer_for("x", 16)
    assert backend.device_index == 1 and torch.allocations == [(16, ("cuda", 1))]


def test_the_calibrator_defaults_to_the_current_device():
    assert CalibratorCore([np.zeros(1, np.float32)]).device_index is None


# ---------------------------------------------------------------------------------------------------- 6: constants


def add_const_model(path):
    """x -> Cast -> Relu -> r; r + bias (an initializer: a constant layer in TensorRT) -> y."""
    bias = numpy_helper.from_array(np.array([-3.0, 1.0, 2.0, 0.5], np.float32), "bias")
    add = helper.make_node("Add", ["r", "bias"], ["y"], name="add")
    return relu_model(path, extra_nodes=[add], initializers=[bias],
                      extra_outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])


def test_constant_layer_outputs_get_their_range_from_the_weights(trt, tmp_path):
    model = add_const_model(tmp_path / "m.onnx")
    result = build_engine(model, ranges={"x": 1.0, "c": 1.0, "r": 1.0, "y": 4.0})
    report = result.ranges_report
    assert [d.name for d in report.derived] == ["bias"] and report.derived[0].amax == 3.0
    assert report.missing == [] and "from constant weights (max |w|" in report.summary()
    network = state(trt).built_networks[-1][0]
    assert network.tensor("bias").dynamic_range == (-3.0, 3.0)


def test_a_range_given_for_a_constant_wins_over_its_weights():
    weights = np.array([[1.0, -8.0]], np.float32)
    out = trt_standin.FakeTensor("w", (1, 2))
    net = trt_standin.FakeNetwork(inputs=[trt_standin.FakeTensor("x", (1, 2))], layers=[
        trt_standin.FakeLayer("w", [out], layer_type=trt_standin.LayerType.CONSTANT, weights=weights)])
    assert apply_dynamic_ranges(net, {"x": 1.0, "w": 2.0}).derived == []
    assert out.dynamic_range == (-2.0, 2.0)


# ---------------------------------------------------------------------------------------------------- 7: precedence


def test_ranges_override_the_calibrator_for_the_tensors_they_name(trt, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    calib = make_calibrator([{"x": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(2)], device=GPU)
    result = build_engine(model, calibrator=calib, ranges={"r": 0.5})
    calibrated = CalibrationCache.parse(state(trt).drive_results[0].cache_written).amaxes()
    assert state(trt).engine_ranges == {**calibrated, "r": 0.5}  # manual ranges win (sampleINT8API README)
    assert [d.name for d in result.ranges_report.applied] == ["r"] and result.ranges_report.missing == []


def test_only_sets_the_named_tensors_and_reports_no_other_as_missing():
    net = trt_standin.FakeNetwork(inputs=[trt_standin.FakeTensor("x", (1,))],
                                  layers=[trt_standin.FakeLayer("l", [trt_standin.FakeTensor("y", (1,))])])
    report = apply_dynamic_ranges(net, {"x": 2.0, "y": 3.0}, only=["y"])
    assert net.tensor("x").dynamic_range is None and net.tensor("y").dynamic_range == (-3.0, 3.0)
    assert report.missing == [] and report.unused == ["x"]


def test_the_cli_overrides_ranges_from_a_json_file(trt, tmp_path):
    from trt_calib.cli.main import main

    model = relu_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32))
    (tmp_path / "over.json").write_text('{"r": 0.25}')
    code = main(["build", str(model), "--data", str(tmp_path / "d.npz"), "--batch-size", "2", "--device", GPU,
                 "--engine", str(tmp_path / "m.plan"), "--override-ranges", str(tmp_path / "over.json")])
    assert code == 0 and state(trt).engine_ranges["r"] == 0.25


# ---------------------------------------------------------------------------------------------------- 8: legacy


def test_the_legacy_calibrator_defaults_to_polygraphys_quantile_and_cutoff(trt):
    calib = make_calibrator([np.zeros((1, 2), np.float32)], "legacy", device=GPU)
    assert calib.get_quantile() == 0.5 and calib.get_regression_cutoff() == 0.5
    given = make_calibrator([np.zeros((1, 2), np.float32)], "legacy", device=GPU, quantile=0.9)
    assert given.get_quantile() == 0.9 and given.get_regression_cutoff() == 0.5


def test_a_legacy_cache_is_not_refused_for_its_header(trt, tmp_path, caplog):
    cache_file = tmp_path / "legacy.cache"
    original = b"TRT-8601-LegacyCalibrationV1\nx: 3c010a14\n"  # whatever TensorRT writes: unknown
    cache_file.write_bytes(original)
    calib = make_calibrator([], "legacy", device=GPU, cache_file=cache_file)
    with caplog.at_level(logging.WARNING, logger="trt_calib.trt.calibrator"):
        result = trt_standin.drive(calib, {"x": ((1, 2), np.float32)})
    assert result.cache_read == original and result.pointers == [] and not calib.failed
    assert "The header TensorRT writes for the Legacy calibrator is not known" in caplog.text
    other = tmp_path / "entropy.cache"
    other.write_text("TRT-8601-EntropyCalibration2\nx: 3c010a14\n")  # another calibrator's: still refused
    refused = make_calibrator([], "legacy", device=GPU, cache_file=other)
    trt_standin.drive(refused, {"x": ((1, 2), np.float32)})
    with pytest.raises(CalibrationError, match="written by EntropyCalibration2"):
        refused.raise_if_failed()


# ---------------------------------------------------------------------------------------------------- 9: cuda-python


def test_cuda_python_before_12_6_1_is_reached_through_cuda_cudart(monkeypatch):
    trt = trt_standin.install(monkeypatch, "10.3.0", cuda_python="legacy")
    calib = make_calibrator([{"x": np.full((1, 2), 1.5, np.float32)}], device="cuda-python")
    result = trt_standin.drive(calib, {"x": ((1, 2), np.float32)})
    assert result.batches[0]["x"].tolist() == [[1.5, 1.5]] and calib.backend.name == "cuda-python"
    assert trt_standin.gpu_of(trt).live()


def test_without_cuda_python_the_error_names_both_modules(monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0", cuda_python="none")
    with pytest.raises(MissingDependencyError, match=r"neither cuda.bindings.runtime .* nor cuda.cudart"):
        select_backend("cuda-python")


# ---------------------------------------------------------------------------------------------------- 10: Q/DQ sample

SAMPLE = trt_standin.repo_root() / "samples" / "build_qdq_engine_trt11.py"


def qdq_model(path, plugin=False):
    """x -> QuantizeLinear -> DequantizeLinear -> Relu -> y (optionally -> EfficientNMS_TRT)."""
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dequant"),
             helper.make_node("Relu", ["d"], ["y"], name="relu")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    if plugin:
        nodes.append(helper.make_node("EfficientNMS_TRT", ["y", "y"], ["num"], name="nms"))
        outputs.append(helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              outputs, initializer=[scale, zero])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def load_sample():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_qdq_engine_trt11", SAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version, flags", [("8.6.1", 1), ("10.3.0", 2), ("11.0.0", 0)])
def test_the_qdq_sample_builds_an_explicit_batch_network_on_each_version(monkeypatch, tmp_path, capsys, version,
                                                                         flags):
    trt = trt_standin.install(monkeypatch, version)
    model = qdq_model(tmp_path / "q.onnx")
    code = load_sample().main([str(model), "-o", str(tmp_path / "q.plan")])
    assert code == 0, capsys.readouterr().err
    assert [c for c in state(trt).calls if c[0] == "create_network"] == [("create_network", flags)]
    int8_flag = [c for c in state(trt).calls if c[0] == "config.set_flag"]
    assert int8_flag == ([("config.set_flag", "INT8")] if version.startswith("8.") else [])


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_the_qdq_sample_finds_int8_layers_whatever_the_case_of_the_format_string(monkeypatch, tmp_path, capsys,
                                                                                 version):
    trt_standin.install(monkeypatch, version)
    model = qdq_model(tmp_path / "q.onnx")
    assert load_sample().main([str(model), "-o", str(tmp_path / "q.plan"),
                               "--layer-info", str(tmp_path / "layers.json")]) == 0
    assert "3 layers, 1 with an INT8 input" in capsys.readouterr().out  # "Row major INT8 format ..."


def test_the_qdq_sample_registers_the_plugins_before_parsing(trt, tmp_path, capsys):
    model = qdq_model(tmp_path / "q.onnx", plugin=True)
    assert load_sample().main([str(model), "-o", str(tmp_path / "q.plan")]) == 0, capsys.readouterr().err
    calls = [c[0] for c in state(trt).calls]
    assert calls.index("init_libnvinfer_plugins") < calls.index("OnnxParser")


# ---------------------------------------------------------------------------------------------------- 11: parser errors


def test_parser_failures_tensorrt_only_logs_are_reported(trt, tmp_path):
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\x07garbage that is no protobuf")
    with pytest.raises(ModelError, match=r"TensorRT logged: Failed to parse ONNX model from file: .*broken.onnx"):
        build_engine(model, ranges={"x": 1.0})


def test_a_cache_tensorrt_rejects_and_recalibrates_over_is_a_calibration_again(trt, tmp_path):
    """If TensorRT reads the cache but still asks for batches (it rejected it), what it writes is a calibration."""
    cache_file = tmp_path / "c.cache"
    CalibrationCache.from_amax({"x": 2.0}, trt_version="8.6.1").save(cache_file)
    calib = make_calibrator([{"x": np.ones((2, 4), np.float32)}], device=GPU, cache_file=cache_file, min_batches=2)
    assert calib.read_calibration_cache() is not None  # read, as TensorRT does first
    assert calib.get_batch(["x"]) is not None and calib.get_batch(["x"]) is None  # ... then it calibrated anyway
    calib.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2\nx: 3c010a14\n"))
    with pytest.raises(CalibrationError, match="fewer than min_batches=2"):
        calib.raise_if_failed()
