"""calibrate --range global: each tensor's max over all batches fixes its histogram's range, so the result depends on
neither batch size nor order; it is not TensorRT's algorithm, and the sidecar and JSON (not the cache) say so."""

from __future__ import annotations

import json

import numpy as np
import pytest

import trt_standin
from trt_calib.cli import main
from trt_calib.core.cache import CalibrationCache
from trt_calib.core.thresholds import entropy_search
from trt_calib.errors import CalibrationError
from trt_calib.ort.model import model_inputs
from trt_calib.ort.collect import calibrate, collect_histograms
from trt_calib.ort.data import from_arrays

from conftest import LENET, LENET_BATCHES, LENET_IMAGES

SPECS = model_inputs(LENET)


@pytest.fixture(scope="module")
def images():
    """sampleINT8's calibration images 50..549, scaled as it scales them."""
    return (np.load(LENET_IMAGES)[50:550].astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)


def test_global_range_does_not_depend_on_batch_size_or_order(images):
    shuffled = images[np.random.default_rng(5).permutation(len(images))]
    a, _ = collect_histograms(LENET, from_arrays(images, SPECS, batch_size=50), range_mode="global")
    b, _ = collect_histograms(LENET, from_arrays(shuffled, SPECS, batch_size=20), range_mode="global")
    for name in a:
        assert a[name].fixed and a[name].range == float(a[name].abs_max)
        assert np.array_equal(a[name].counts, b[name].counts) and a[name].range == b[name].range, name
    trt_a, _ = collect_histograms(LENET, from_arrays(images, SPECS, batch_size=50))
    trt_b, _ = collect_histograms(LENET, from_arrays(shuffled, SPECS, batch_size=20))
    assert any(entropy_search(trt_a[n]).amax != entropy_search(trt_b[n]).amax for n in a)  # TensorRT's do depend


def test_global_range_needs_batches_it_can_read_twice(images):
    with pytest.raises(CalibrationError, match="reads the batches twice"):
        calibrate(LENET, ({"data": images[i : i + 50]} for i in range(0, 100, 50)), range_mode="global")
    with pytest.raises(ValueError, match="unknown range_mode"):
        calibrate(LENET, [{"data": images[:50]}], range_mode="first")


def test_calibrate_range_global_says_so_outside_the_cache_and_tensorrt_uses_its_scales(tmp_path, monkeypatch):
    cache_file, details = tmp_path / "global.cache", tmp_path / "global.json"
    assert main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache_file), "--range",
                 "global", "--json", str(details), "-q"]) == 0
    text = cache_file.read_text()
    lines = text.splitlines()
    assert lines[0].endswith("-EntropyCalibration2")
    assert all(line.rpartition(": ")[2] and not line.startswith("#") for line in lines[1:])  # name: hex only
    sidecar = json.loads((tmp_path / "global.cache.json").read_text())
    assert sidecar["options"]["range"] == "global" and "not TensorRT's algorithm" in sidecar["options"]["note"]
    detail = json.loads(details.read_text())
    assert detail["range_mode"] == "global" and "not TensorRT's algorithm" in detail["note"]

    # TensorRT (its calibrator contract, the stand-in) reads the cache and asks for no batch: the scales are used
    trt_standin.install(monkeypatch, "10.3.0")
    from trt_calib.trt.calibrator import make_calibrator

    def untouchable():
        raise AssertionError("the batches must not be read when the cache is used")
        yield  # pragma: no cover

    calibrator = make_calibrator(untouchable(), cache_file=cache_file, device="host")
    result = trt_standin.drive(calibrator, {"data": ((50, 1, 28, 28), np.float32)})
    assert result.cache_read == text.encode("ascii") and result.pointers == [] and calibrator.cache_used
    # trtexec's reader (last ':' then 8 hex digits) gives the same scales as ours
    parsed = CalibrationCache.parse(text)
    trtexec = {line[: line.rfind(":")]: int(line[line.rfind(":") + 2 :][:8], 16) for line in lines[1:]}
    assert trtexec == {e.name: int(e.hex, 16) for e in parsed.entries}
