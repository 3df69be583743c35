"""The stand-in (tests/trt_standin.py, not TensorRT) is as strict as TensorRT where trt-calib meets it: each test
shows a lenient calibrator or build that the stand-in refuses, as TensorRT would, and trt-calib passing the same."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trt_standin
from trt_standin import StandInUndefinedBehaviour
from trt_calib.core.cache import CalibrationCache
from trt_calib.trt.build import build_engine, build_qdq_engine, explicit_batch_flags
from trt_calib.trt.calibrator import make_calibrator

GPU = "cuda-python"


@pytest.fixture
def trt(monkeypatch):
    return trt_standin.install(monkeypatch, "10.3.0")


def model(path, elem_type=TensorProto.FLOAT, batch=2, plugin=False):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
    outputs = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [batch, 4])]
    if plugin:
        nodes.append(helper.make_node("EfficientNMS_TRT", ["r", "r"], ["n"], name="nms"))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.INT32, [batch, 1]))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", elem_type, [batch, 4])], outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def lenient_calibrator(trt, batches, cache=None):
    """A calibrator as it is often written: it uploads each batch as it comes, in its own dtype, through cudaMalloc
    of exactly its bytes; it reads `cache` and counts any cache write without batches as a failed calibration."""
    rt = sys.modules["cuda.bindings.runtime"]

    class Lenient(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self.fed, self.written = iter(batches), 0, None

        def get_batch_size(self):
            return 2

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                data = np.ascontiguousarray(batch[name])
                _, pointer = rt.cudaMalloc(data.nbytes)
                rt.cudaMemcpy(pointer, data.ctypes.data, data.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
                pointers.append(pointer)
            self.fed += 1
            return pointers

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            if self.fed == 0:
                raise RuntimeError("a calibration cache from 0 batches")
            self.written = bytes(data)

    return Lenient()


# ---------------------------------------------------------------------------------------------------- device memory


def test_every_read_is_bounds_checked_against_the_allocation(trt):
    halves = [{"x": np.ones((2, 4), np.float16)}]
    with pytest.raises(StandInUndefinedBehaviour, match=r"reads 32 bytes at offset 0 of a 16-byte allocation"):
        trt_standin.drive(lenient_calibrator(trt, halves), {"x": ((2, 4), np.float16)})
    ours = trt_standin.drive(make_calibrator(halves, device=GPU), {"x": ((2, 4), np.float16)})
    assert ours.batches[0]["x"].dtype == np.float32 and ours.batches[0]["x"].sum() == 8.0
    sizes = [b.nbytes for b in trt_standin.gpu_of(trt).allocations.values()]
    assert sizes == [16, 32]  # the fake allocator recorded each allocation's size


def test_host_pointers_are_refused_except_in_a_dry_run(trt):
    batches = [{"x": np.ones((2, 4), np.float32)}]
    with pytest.raises(StandInUndefinedBehaviour, match="is not device memory of the stand-in GPU"):
        trt_standin.drive(make_calibrator(batches, device="host"), {"x": ((2, 4), np.float32)})
    dry = trt_standin.drive(make_calibrator(batches, device="host"), {"x": ((2, 4), np.float32)}, memory="host")
    assert dry.batches[0]["x"].tolist() == batches[0]["x"].tolist()


def test_a_pointer_into_freed_memory_is_refused(trt):
    calib = make_calibrator([{"x": np.ones((2, 4), np.float32)}] * 2, device=GPU)
    pointer = calib.get_batch(["x"])[0]
    calib.free()
    with pytest.raises(StandInUndefinedBehaviour, match="was freed"):
        trt_standin.gpu_of(trt).read(pointer, 32)


# ---------------------------------------------------------------------------------------------------- input types


def test_inputs_are_read_with_tensorrts_type_rule(trt):
    mask = np.array([[True, False, True, False], [False, False, True, True]])
    as_float = [{"m": mask.astype(np.float32)}]  # a lenient calibrator "normalising" every input to float32
    read = trt_standin.drive(lenient_calibrator(trt, as_float), {"m": ((2, 4), np.bool_)}).batches[0]["m"]
    assert not np.array_equal(read, mask)  # TensorRT reads BOOL as bool: the float32 bytes are garbage to it
    ours = make_calibrator([{"m": mask}], device=GPU)
    np.testing.assert_array_equal(trt_standin.drive(ours, {"m": ((2, 4), np.bool_)}).batches[0]["m"], mask)
    assert trt_standin.read_dtype(trt_standin.DataType.BF16) == np.float32
    assert trt_standin.read_dtype(np.float16) == np.float32 and trt_standin.read_dtype(np.int64) == np.int64


# ---------------------------------------------------------------------------------------------------- plugins


def lenient_parse(trt, path):
    """Builder code without init_libnvinfer_plugins."""
    logger = trt.Logger()
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    return parser.parse_from_file(str(path)), parser


def test_plugin_ops_parse_only_after_init_libnvinfer_plugins_on_10(trt, tmp_path, monkeypatch):
    path = model(tmp_path / "m.onnx", plugin=True)
    ok, parser = lenient_parse(trt, path)
    assert not ok and "Plugin not found" in parser.get_error(0).desc()
    assert build_engine(path, ranges={"x": 1.0, "r": 1.0}).plan  # trt-calib registers them first
    old = trt_standin.install(monkeypatch, "8.6.1")  # up to 9.x the parser registered them itself
    logger = old.Logger()
    network = old.Builder(logger).create_network(1)
    assert old.OnnxParser(network, logger).parse_from_file(str(path))


# ---------------------------------------------------------------------------------------------------- cache


def test_the_standin_writes_the_cache_back_after_reading_it(trt, tmp_path):
    cache = CalibrationCache.from_amax({"x": 2.0}, trt_version="8.6.1").dumps().encode()
    lenient = lenient_calibrator(trt, [], cache=cache)
    result = trt_standin.drive(lenient, {"x": ((2, 4), np.float32)})
    assert result.rewrote_cache and result.errors == [
        "[ERROR] Exception caught in write_calibration_cache(): RuntimeError: a calibration cache from 0 batches"]
    cache_file = tmp_path / "c.cache"
    cache_file.write_bytes(cache)
    ours = make_calibrator([], device=GPU, cache_file=cache_file)
    result = trt_standin.drive(ours, {"x": ((2, 4), np.float32)})
    assert result.rewrote_cache and result.errors == [] and not ours.failed


# ---------------------------------------------------------------------------------------------------- profiles


def lenient_build(trt, path, calibrator, *, optimization_profile, calibration_profile):
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    trt.init_libnvinfer_plugins(logger, "")
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (8, 4))
    if optimization_profile:
        config.add_optimization_profile(profile)
    if calibration_profile:
        config.set_calibration_profile(profile)
    config.int8_calibrator = calibrator
    return builder.build_serialized_network(network, config)


def test_dynamic_inputs_need_an_optimization_profile_and_a_calibration_profile(trt, tmp_path, capsys):
    path = model(tmp_path / "m.onnx", batch="N")
    batches = [{"x": np.ones((2, 4), np.float32)}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert lenient_build(trt, path, make_calibrator(batches, device=GPU), optimization_profile=False,
                             calibration_profile=False) is None
        assert "no optimization profile has been defined" in capsys.readouterr().err
        assert lenient_build(trt, path, make_calibrator(batches, device=GPU), optimization_profile=True,
                             calibration_profile=False) is None
        assert "needs a calibration profile" in capsys.readouterr().err
        assert lenient_build(trt, path, make_calibrator(batches, device=GPU), optimization_profile=True,
                             calibration_profile=True) is not None
    result = build_engine(path, calibrator=make_calibrator(batches, device=GPU), shapes={"x": ((1, 4), (2, 4),
                                                                                                 (8, 4))})
    assert result.plan and result.calibration_shapes == {"x": (2, 4)}


# ---------------------------------------------------------------------------------------------------- precedence


def test_manual_ranges_override_calibrated_ones(trt, tmp_path):
    path = model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    calib = make_calibrator([{"x": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(2)], device=GPU)
    build_engine(path, calibrator=calib)
    calibrated = trt_standin.state_of(trt).engine_ranges
    assert set(calibrated) == {"x", "r"}
    calib.reset()
    build_engine(path, calibrator=calib, ranges={"r": calibrated["r"] / 4})
    assert trt_standin.state_of(trt).engine_ranges == {"x": calibrated["x"], "r": calibrated["r"] / 4}


# ---------------------------------------------------------------------------------------------------- 11.x flavour


def test_the_11_flavour_has_no_explicit_batch_and_no_platform_has_fast_int8(monkeypatch, tmp_path):
    trt = trt_standin.install(monkeypatch, "11.0.0")
    builder = trt.Builder(trt.Logger())
    with pytest.raises(AttributeError):
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # noqa: B018 - what 8.x-era code does
    with pytest.raises(AttributeError):
        builder.platform_has_fast_int8  # noqa: B018
    assert not hasattr(trt, "IInt8Calibrator") and not hasattr(trt.BuilderFlag, "INT8")
    assert explicit_batch_flags(trt, builder) == 0
    from test_trt_conformance import qdq_model

    assert build_qdq_engine(qdq_model(tmp_path / "q.onnx")).plan
    assert [c for c in trt_standin.state_of(trt).calls if c[0] == "create_network"] == [("create_network", 0)]
