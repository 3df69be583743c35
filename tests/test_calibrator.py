"""The calibrator's contract with TensorRT's Python bindings, checked against a CPU stand-in of the bindings.

The stand-in (tests/trt_standin.py) is not TensorRT: these tests prove the calls, pointers, bytes and files, not
TensorRT's calibration results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import trt_standin
from trt_calib.core.cache import CalibrationCache
from trt_calib.trt.calibrator import (
    ALGORITHMS,
    CalibratorCore,
    calibrator_class,
    dry_run,
    make_calibrator,
)
from trt_calib.errors import CacheFormatError, CalibrationError, DataError, MissingDependencyError

INPUTS = {"a": ((2, 3), np.float32), "b": ((2, 4), np.float32)}
GPU = "cuda-python"  # the device backend that reaches the stand-in's fake GPU (trt_standin.install)


@pytest.fixture
def trt(monkeypatch):
    return trt_standin.install(monkeypatch, "10.3.0")


def two_input_batches(n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # dict order (b, a) differs from TensorRT's order (a, b) on purpose
    return [
        {"b": rng.normal(size=(2, 4)).astype(np.float32), "a": rng.normal(size=(2, 3)).astype(np.float32)}
        for _ in range(n)
    ]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------- imports


def test_importing_the_modules_needs_no_tensorrt_pycuda_or_torch():
    code = (
        "import sys\n"
        "import trt_calib.trt.calibrator, trt_calib.trt.device, trt_calib.trt.build, trt_calib.trt.ranges, trt_calib.cli.build\n"
        "bad = [m for m in ('tensorrt', 'pycuda', 'torch', 'cupy', 'cuda') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_missing_tensorrt_names_nvidias_wheel(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="NVIDIA's TensorRT wheel") as info:
        from trt_calib.trt.calibrator import EntropyCalibrator2  # noqa: F401
    assert "tensorrt is needed for EntropyCalibrator2" in str(info.value)


def test_tensorrt_11_without_calibrators_points_to_quantize(monkeypatch):
    trt_standin.install(monkeypatch, "11.0.0")
    with pytest.raises(MissingDependencyError, match="trt-calib quantize") as info:
        calibrator_class("entropy2")
    assert "TensorRT 11.0.0 has no IInt8EntropyCalibrator2" in str(info.value)


def test_unknown_attribute_is_an_attribute_error():
    import trt_calib.trt.calibrator as module

    with pytest.raises(AttributeError):
        module.NoSuchCalibrator  # noqa: B018
    assert "EntropyCalibrator2" in dir(module)


# ---------------------------------------------------------------------------------------------------- classes


@pytest.mark.parametrize("key", list(ALGORITHMS))
def test_each_calibrator_subclasses_its_tensorrt_base(trt, key):
    algo = ALGORITHMS[key]
    cls = calibrator_class(key)
    assert issubclass(cls, getattr(trt, algo.base))
    assert cls.__name__ == algo.class_name
    assert calibrator_class(algo.class_name) is cls  # one class per base
    calib = cls([np.zeros((1, 2), np.float32)], device=GPU)
    assert isinstance(calib, trt.IInt8Calibrator)


def test_lazy_module_attribute_gives_the_class(trt):
    from trt_calib.trt.calibrator import MinMaxCalibrator

    assert issubclass(MinMaxCalibrator, trt.IInt8MinMaxCalibrator)


def test_standin_refuses_a_subclass_that_skips_the_base_init(trt):
    class Broken(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match="__init__\\(\\) must be called when overriding __init__"):
        Broken()


def test_a_new_tensorrt_module_gets_new_classes(monkeypatch):
    trt_standin.install(monkeypatch, "10.3.0")
    a = calibrator_class("entropy2")
    trt_standin.install(monkeypatch, "8.6.1")
    b = calibrator_class("entropy2")
    assert a is not b
    assert issubclass(b, sys.modules["tensorrt"].IInt8EntropyCalibrator2)


# ---------------------------------------------------------------------------------------------------- contract


def test_get_batch_gives_one_int_pointer_per_name_in_order_and_the_bytes_are_the_batch(trt, tmp_path):
    batches = two_input_batches(3)
    calib = make_calibrator(batches, "entropy2", cache_file=tmp_path / "c.cache", device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    assert result.errors == [] and result.violations == []
    assert len(result.pointers) == 3
    for pointers in result.pointers:
        assert len(pointers) == 2
    for fed, read in zip(batches, result.batches):
        np.testing.assert_array_equal(read["a"], fed["a"])
        np.testing.assert_array_equal(read["b"], fed["b"])
    assert calib.batches_fed == 3
    assert calib.names == ("a", "b")
    assert calib.get_batch(["a", "b"]) is None  # still None after the end


def test_pointers_are_python_ints_and_buffers_are_reused(trt):
    calib = make_calibrator(two_input_batches(3), device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    assert all(type(p) is int for ptrs in result.pointers for p in ptrs)
    assert result.pointers[0] == result.pointers[1] == result.pointers[2]  # one buffer per input, reused
    assert result.pointers[0][0] != result.pointers[0][1]


def test_get_batch_size_is_the_first_batch_size_before_any_batch(trt):
    batches = [{"a": np.zeros((5, 3), np.float32), "b": np.zeros((5, 4), np.float32)}]
    calib = make_calibrator(batches, device=GPU)
    assert calib.get_batch_size() == 5
    result = trt_standin.drive(calib, {"a": ((5, 3), np.float32), "b": ((5, 4), np.float32)})
    assert result.batch_size == 5 and len(result.pointers) == 1


def test_single_input_networks_take_bare_arrays(trt, tmp_path):
    arrays = [np.full((2, 3), i + 0.5, np.float32) for i in range(4)]
    calib = make_calibrator(iter(arrays), "minmax", cache_file=tmp_path / "m.cache", device=GPU)
    result = trt_standin.drive(calib, {"x": ((2, 3), np.float32)})
    assert [float(b["x"][0, 0]) for b in result.batches] == [0.5, 1.5, 2.5, 3.5]
    cache = CalibrationCache.load(tmp_path / "m.cache")
    assert cache.algorithm == "MinMaxCalibration"
    assert cache.amax("x") == pytest.approx(3.5, rel=1e-6)  # the stand-in's max|x| of the bytes it read


def test_integer_inputs_of_their_declared_dtype_are_accepted(trt):
    from trt_calib.ort.data import InputSpec

    batches = [{"ids": np.arange(6, dtype=np.int32).reshape(2, 3), "x": np.ones((2, 3), np.float32)}]
    specs = [InputSpec("ids", (-1, 3), np.int32), InputSpec("x", (-1, 3), np.float32)]
    calib = make_calibrator(batches, device=GPU, input_specs=specs)
    result = trt_standin.drive(calib, {"ids": ((2, 3), np.int32), "x": ((2, 3), np.float32)})
    np.testing.assert_array_equal(result.batches[0]["ids"], batches[0]["ids"])


def test_torch_cpu_tensors_are_read_through_the_host_backend(trt):
    torch = pytest.importorskip("torch")
    batches = [{"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}]
    calib = make_calibrator(batches, device=GPU)
    result = trt_standin.drive(calib, {"x": ((2, 3), np.float32)})
    np.testing.assert_array_equal(result.batches[0]["x"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_the_standin_driver_runs_the_callbacks_on_another_thread_too(trt):
    calib = make_calibrator(two_input_batches(2), device=GPU)
    result = trt_standin.drive(calib, INPUTS, threaded=True)
    assert len(result.batches) == 2 and not calib.failed


def test_max_batches_stops_early(trt):
    calib = make_calibrator(two_input_batches(5), device=GPU, max_batches=2)
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.pointers) == 2


# ---------------------------------------------------------------------------------------------------- failures


def failing_source(kind: str):
    """Batches 0 and 1 are good; batch 2 fails in the way `kind` says."""
    good = two_input_batches(2)
    yield from good
    bad = two_input_batches(1, seed=9)[0]
    if kind == "exception":
        raise ValueError("decoder exploded on image 17")
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "shape":
        bad["a"] = np.zeros((1, 3), np.float32)
    elif kind == "names":
        bad["c"] = bad.pop("b")
    elif kind == "nan":
        bad["b"][1, 2] = np.nan
    elif kind == "dtype":
        bad["a"] = bad["a"].astype(np.int32)  # an index type: kept as it is, so it differs from batch 0
    elif kind == "contiguous":
        bad["a"] = np.asfortranarray(np.zeros((2, 3), np.float32))
    yield bad
    yield two_input_batches(1, seed=5)[0]


FAILURES = {
    "exception": (ValueError, "decoder exploded"),
    "interrupt": (KeyboardInterrupt, None),
    "shape": (DataError, r"batch 2: input 'a' has shape \(1, 3\) but batch 0 had \(2, 3\)"),
    "names": (DataError, r"batch 2 has inputs \['a', 'c'\] but the network's inputs are \['a', 'b'\] \(missing: \['b'\]; unexpected: \['c'\]\)"),
    "nan": (DataError, r"batch 2: input 'b' contains 1 NaN"),
    "dtype": (DataError, r"batch 2: input 'a' has dtype int32 but batch 0 had float32"),
    "contiguous": (DataError, r"batch 2: input 'a' is not C-contiguous"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_failing_batch_ends_calibration_writes_no_cache_and_is_reraised(trt, tmp_path, kind, capsys):
    cache_file = tmp_path / "model.cache"
    calib = make_calibrator(failing_source(kind), "entropy2", cache_file=cache_file, device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    # TensorRT would go on and write a cache from the 2 good batches; ours ends there and refuses to write it.
    assert len(result.pointers) == 2
    assert result.cache_written is not None
    assert not cache_file.exists()
    assert no_temp_files(tmp_path)
    assert calib.failed and calib.batches_fed == 2
    assert calib.get_batch(["a", "b"]) is None
    assert result.errors == []  # our callbacks never let an exception reach the bindings
    assert "[ERROR] Exception caught" not in capsys.readouterr().err
    exc_type, pattern = FAILURES[kind]
    with pytest.raises(exc_type, match=pattern) as info:
        calib.raise_if_failed()
    assert info.value is calib.failure  # the original exception object
    if sys.version_info >= (3, 11):
        assert any("get_batch() for batch 2" in n for n in info.value.__notes__)


def test_raise_if_failed_adds_its_note_once(trt):
    calib = make_calibrator(failing_source("exception"), device=GPU)
    trt_standin.drive(calib, INPUTS)
    for _ in range(2):
        with pytest.raises(ValueError):
            calib.raise_if_failed()
    if sys.version_info >= (3, 11):
        assert len(calib.failure.__notes__) == 1


def test_nothing_is_asked_of_the_source_after_a_failure(trt):
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            if i == 1:
                raise RuntimeError("bad batch")
            yield {"x": np.ones((1, 2), np.float32)}

    calib = make_calibrator(source(), device=GPU)
    trt_standin.drive(calib, {"x": ((1, 2), np.float32)})
    assert pulled == [0, 1]


def test_an_empty_source_is_a_failure_not_a_silent_empty_calibration(trt, tmp_path):
    calib = make_calibrator(iter([]), cache_file=tmp_path / "c.cache", device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    assert result.calibration_failed  # TensorRT: "no scaling factors detected"
    with pytest.raises(DataError, match="produced no batches"):
        calib.raise_if_failed()
    assert not (tmp_path / "c.cache").exists()


def test_bare_arrays_for_a_two_input_network_name_both_inputs(trt):
    calib = make_calibrator([np.zeros((2, 3), np.float32)], device=GPU)
    trt_standin.drive(calib, INPUTS)
    with pytest.raises(DataError, match=r"single array but the network has 2 inputs \['a', 'b'\]"):
        calib.raise_if_failed()


def test_fewer_batches_than_min_batches_writes_no_cache(trt, tmp_path):
    calib = make_calibrator(two_input_batches(1), cache_file=tmp_path / "c.cache", device=GPU, min_batches=2)
    trt_standin.drive(calib, INPUTS)
    assert not (tmp_path / "c.cache").exists()
    with pytest.raises(CalibrationError, match="from 1 batch\\(es\\), fewer than min_batches=2"):
        calib.raise_if_failed()


def test_a_failing_cache_write_leaves_the_old_file_and_no_temp_file(trt, tmp_path, monkeypatch):
    cache_file = tmp_path / "c.cache"
    old = CalibrationCache.from_amax({"a": 2.0}, algorithm="MinMaxCalibration").dumps()
    cache_file.write_text(old)
    calib = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU,
                            cache_mismatch="recalibrate")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    trt_standin.drive(calib, INPUTS)
    monkeypatch.undo()
    assert cache_file.read_text() == old
    assert no_temp_files(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        calib.raise_if_failed()


# ---------------------------------------------------------------------------------------------------- the cache


def test_the_cache_is_copied_out_of_the_memoryview_and_written_atomically(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    calib = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    # the stand-in zeroes and releases its memory after the callback: a kept view would now read zeros or fail
    assert cache_file.read_bytes() == result.cache_written
    assert calib.read_calibration_cache() == result.cache_written
    assert result.cache_written.startswith(b"TRT-100300-EntropyCalibration2\n")
    assert no_temp_files(tmp_path)


def test_the_standin_catches_a_calibrator_that_keeps_the_memoryview(trt):
    kept = []

    class Keeper(trt.IInt8MinMaxCalibrator):
        def __init__(self):
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.done = False

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.done:
                return None
            self.done = True
            self.x = np.ones((1, 2), np.float32)
            return [self.x.ctypes.data]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            kept.append(cache)

    trt_standin.drive(Keeper(), {"x": ((1, 2), np.float32)}, memory="host")  # a dry run: host pointers allowed
    with pytest.raises(ValueError, match="released memoryview"):
        bytes(kept[0])


def test_the_standin_flags_a_short_pointer_list_as_undefined_behaviour(trt):
    class Short(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.x = np.ones((2, 3), np.float32)

        def get_batch_size(self):
            return 2

        def get_batch(self, names):
            return [self.x.ctypes.data]  # one pointer for two names

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            pass

    with pytest.raises(trt_standin.StandInUndefinedBehaviour, match="1 pointer\\(s\\) for 2 names"):
        trt_standin.drive(Short(), INPUTS)


def test_a_matching_cache_is_used_and_no_batch_is_asked_for(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    first = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU)
    written = trt_standin.drive(first, INPUTS).cache_written

    def untouchable():
        raise AssertionError("the batches must not be read when the cache is used")
        yield  # pragma: no cover

    second = make_calibrator(untouchable(), cache_file=cache_file, device=GPU)
    result = trt_standin.drive(second, INPUTS)
    assert result.cache_read == written
    assert result.pointers == []
    assert second.cache_used and not second.failed


def test_a_cache_of_another_algorithm_is_refused_naming_both(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    trt_standin.drive(make_calibrator(two_input_batches(2), "minmax", cache_file=cache_file, device=GPU), INPUTS)
    before = cache_file.read_bytes()
    calib = make_calibrator(two_input_batches(2), "entropy2", cache_file=cache_file, device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    assert result.cache_read is None and result.pointers == []
    assert cache_file.read_bytes() == before
    with pytest.raises(CalibrationError) as info:
        calib.raise_if_failed()
    message = str(info.value)
    assert "written by MinMaxCalibration" in message
    assert "this is a EntropyCalibrator2 (EntropyCalibration2)" in message
    assert "TensorRT would reject it and recalibrate" in message
    assert "use MinMaxCalibrator" in message


def test_cache_mismatch_recalibrate_overwrites_the_other_algorithms_cache(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    trt_standin.drive(make_calibrator(two_input_batches(2), "minmax", cache_file=cache_file, device=GPU), INPUTS)
    calib = make_calibrator(two_input_batches(2), "entropy2", cache_file=cache_file, device=GPU,
                            cache_mismatch="recalibrate")
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.pointers) == 2
    assert CalibrationCache.load(cache_file).algorithm == "EntropyCalibration2"


def test_an_empty_cache_file_is_ignored_and_calibration_runs(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    cache_file.write_bytes(b"")
    calib = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU)
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.pointers) == 2
    assert cache_file.read_bytes() == result.cache_written


def test_a_malformed_cache_is_a_failure_naming_the_line(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    cache_file.write_text("TRT-100300-EntropyCalibration2\nx: zz\n")
    calib = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU)
    trt_standin.drive(calib, INPUTS)
    with pytest.raises(CacheFormatError, match=r"c.cache:2"):
        calib.raise_if_failed()


def test_a_malformed_cache_is_overwritten_with_cache_mismatch_recalibrate(trt, tmp_path):
    cache_file = tmp_path / "c.cache"
    cache_file.write_text("calibration table v1\n")
    calib = make_calibrator(two_input_batches(2), cache_file=cache_file, device=GPU, cache_mismatch="recalibrate")
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.pointers) == 2 and cache_file.read_bytes() == result.cache_written


def test_the_cache_from_a_successful_calibration_is_reused_by_the_next_build(trt):
    calib = make_calibrator(two_input_batches(2), device=GPU)  # no cache file: kept in memory
    first = trt_standin.drive(calib, INPUTS)
    second = trt_standin.drive(calib, INPUTS)
    assert second.cache_read == first.cache_written and second.pointers == []


# ---------------------------------------------------------------------------------------------------- legacy, misc


def test_the_legacy_calibrator_answers_its_extra_callbacks(trt):
    calib = make_calibrator(two_input_batches(1), "legacy", device=GPU, quantile=0.999, regression_cutoff=0.5)
    assert calib.get_quantile() == 0.999
    assert calib.get_regression_cutoff() == 0.5
    assert calib.read_histogram_cache(0) is None
    assert calib.get_algorithm() == trt.CalibrationAlgoType.LEGACY_CALIBRATION


def test_context_manager_frees_the_buffers(trt):
    with make_calibrator(two_input_batches(1), device=GPU) as calib:
        trt_standin.drive(calib, INPUTS)
        backend = calib.backend
        assert backend.capacity("a") == 2 * 3 * 4
    assert calib.backend is None and backend.capacity("a") == 0


def test_bad_arguments_fail_at_construction(trt, tmp_path):
    with pytest.raises(DataError, match="got one dict"):
        make_calibrator({"a": np.zeros(1)})
    with pytest.raises(DataError, match="open_source"):
        make_calibrator("data/")
    with pytest.raises(CalibrationError, match="cache_mismatch"):
        make_calibrator([], cache_mismatch="ignore")
    with pytest.raises(CalibrationError, match="no such file"):
        make_calibrator([], cross_check=tmp_path / "missing.onnx")
    with pytest.raises(CalibrationError, match="not available for LegacyCalibrator"):
        make_calibrator([], "legacy", cross_check=tmp_path / "missing.onnx")
    with pytest.raises(CalibrationError, match="unknown calibration algorithm 'kl'"):
        make_calibrator([], "kl")


def test_tensorrt_deprecation_warnings_do_not_escape(trt, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        calib = make_calibrator(two_input_batches(2), cache_file=tmp_path / "c.cache", device=GPU)
        trt_standin.drive(calib, INPUTS)
    assert not calib.failed


# ---------------------------------------------------------------------------------------------------- dry run


def test_dry_run_reports_batches_shapes_dtypes_and_writes_no_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a dry run needs no TensorRT
    core = CalibratorCore(two_input_batches(3), tmp_path / "c.cache", "auto")
    summary = dry_run(core, names=["a", "b"])
    assert summary.batches == 3 and summary.batch_size == 2 and summary.reached_end
    assert summary.inputs == {"a": ((2, 3), "float32"), "b": ((2, 4), "float32")}
    assert summary.seconds_per_batch > 0
    assert not summary.cache_would_be_used
    assert not (tmp_path / "c.cache").exists()
    assert summary.restarted and core.batches_fed == 0  # ready for the real build
    assert "3 batch(es) of 2" in str(summary)
    assert core.backend is None  # the host buffers are gone; the real device backend is chosen later


def test_dry_run_then_the_real_calibration_sees_every_batch(trt):
    batches = two_input_batches(3)
    calib = make_calibrator(batches, device=GPU)
    dry_run(calib)
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.batches) == 3
    np.testing.assert_array_equal(result.batches[0]["a"], batches[0]["a"])


def test_dry_run_raises_the_first_loader_failure():
    core = CalibratorCore(failing_source("shape"), device=GPU)
    with pytest.raises(DataError, match="batch 2: input 'a' has shape"):
        dry_run(core, names=["a", "b"])


def test_dry_run_of_a_generator_says_it_was_consumed():
    core = CalibratorCore(iter(two_input_batches(2)))
    summary = dry_run(core)
    assert summary.batches == 2 and not summary.restarted
    assert any("one-shot generator" in n for n in summary.notes)
    with pytest.raises(DataError, match="one-shot iterator"):
        core.reset()


def test_dry_run_max_batches_and_an_existing_cache(tmp_path):
    cache_file = tmp_path / "c.cache"
    CalibrationCache.from_amax({"a": 1.0}, algorithm="EntropyCalibration2").save(cache_file)
    core = CalibratorCore(two_input_batches(5), cache_file)
    summary = dry_run(core, max_batches=2)
    assert summary.batches == 2 and not summary.reached_end
    assert summary.cache_would_be_used
    assert "TensorRT would use it" in str(summary)
    assert core.read_calibration_cache() == cache_file.read_bytes()  # the real run still finds the cache


def test_dry_run_refuses_a_used_calibrator(trt):
    calib = make_calibrator(two_input_batches(2), device=GPU)
    trt_standin.drive(calib, INPUTS)
    with pytest.raises(CalibrationError, match="fresh calibrator"):
        dry_run(calib)


def test_peek_does_not_consume_and_validates(trt):
    batches = two_input_batches(2)
    calib = make_calibrator(batches, device=GPU)
    peeked = calib.peek(["a", "b"])
    np.testing.assert_array_equal(peeked["a"], batches[0]["a"])
    result = trt_standin.drive(calib, INPUTS)
    assert len(result.batches) == 2
    np.testing.assert_array_equal(result.batches[0]["a"], batches[0]["a"])
    bad = make_calibrator([{"a": np.zeros((2, 3), np.complex64), "b": np.zeros((2, 4), np.float32)}], device=GPU)
    with pytest.raises(DataError, match="batch 0: input 'a' has dtype complex64, but TensorRT reads float32"):
        bad.peek(["a", "b"])
    assert not bad.failed  # peek raises to its caller; nothing recorded


# ---------------------------------------------------------------------------------------------------- cross-check


def relu_sigmoid_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def single_input_batches(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(n)]


def test_cross_check_agrees_when_the_cache_comes_from_the_same_batches(trt, tmp_path):
    model = relu_sigmoid_model(tmp_path / "m.onnx")
    calib = make_calibrator(single_input_batches(), cache_file=tmp_path / "m.cache", device=GPU,
                            cross_check=model)
    # the stand-in computes its cache with our CPU calibration of the bytes it read behind the pointers
    trt_standin.drive(calib, {"x": ((2, 4), np.float32)}, model=model)
    comparison = calib.cross_check_result
    assert comparison is not None and comparison.consistent
    assert comparison.counts() == {"exact": 3}
    assert [row.name for row in comparison.rows] == ["x", "r", "y"]


def test_cross_check_reports_disagreement(trt, tmp_path, caplog):
    model = relu_sigmoid_model(tmp_path / "m.onnx")
    calib = make_calibrator(single_input_batches(), device=GPU, cross_check=model)
    with caplog.at_level("WARNING", logger="trt_calib.trt.calibrator"):
        trt_standin.drive(calib, {"x": ((2, 4), np.float32)})  # stand-in cache: max|x| of the input only
    comparison = calib.cross_check_result
    assert not comparison.consistent
    assert comparison.counts()["only-ours"] == 2
    assert comparison.rows[0].name == "x" and comparison.rows[0].verdict == "differs"
    assert "cross-check against the CPU calibration (4 batches)" in caplog.text
    assert not calib.failed  # a disagreement is a finding, not a failure


def test_cross_check_is_skipped_when_the_cache_file_is_used(trt, tmp_path):
    model = relu_sigmoid_model(tmp_path / "m.onnx")
    cache_file = tmp_path / "m.cache"
    trt_standin.drive(make_calibrator(single_input_batches(), cache_file=cache_file, device=GPU),
                      {"x": ((2, 4), np.float32)}, model=model)
    calib = make_calibrator(single_input_batches(), cache_file=cache_file, device=GPU, cross_check=model)
    result = trt_standin.drive(calib, {"x": ((2, 4), np.float32)})
    assert result.cache_read is not None and calib.cross_check_result is None
