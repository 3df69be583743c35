"""Sharded calibration: the sequential cache byte for byte, on local processes and a real Dask cluster."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from trt_calib.cli import main
from trt_calib.errors import CalibrationError
from trt_calib.ort.model import model_inputs
from trt_calib.ort.collect import calibrate, collect_histograms
from trt_calib.ort.data import open_source
from trt_calib.ort.executor import Executor, make_executor
from trt_calib.ort.shard import shard_bounds

from conftest import LENET, LENET_BATCHES


@pytest.fixture(scope="module")
def lenet_batches() -> list[dict[str, np.ndarray]]:
    """sampleINT8's 10 batches: several LeNet tensors grow their range after the first batch."""
    return list(open_source(LENET_BATCHES, model_inputs(LENET)))


@pytest.fixture(scope="module")
def sequential(lenet_batches):
    return calibrate(LENET, lenet_batches, trt_version="7.0.0")


def assert_same(result, expected) -> None:
    assert result.cache.to_bytes() == expected.cache.to_bytes()
    assert result.num_batches == expected.num_batches
    for name, h in expected.histograms.items():
        assert result.histograms[name] == h, name


def test_the_lenet_batches_do_grow_ranges_so_the_shards_start_from_different_ones(lenet_batches):
    first, _ = collect_histograms(LENET, lenet_batches[:1])
    full, _ = collect_histograms(LENET, lenet_batches)
    assert sum(full[n].range != first[n].range for n in full) >= 4


def test_two_local_processes_give_the_sequential_cache_byte_for_byte(lenet_batches, sequential):
    with make_executor("local", workers=2) as executor:
        assert_same(calibrate(LENET, lenet_batches, trt_version="7.0.0", executor=executor), sequential)
        # Batches in parts too: the first one learns its range first, the later shards hold values above theirs.
        assert_same(calibrate(LENET, lenet_batches, trt_version="7.0.0", executor=executor,
                              max_activation_mb=0.5), sequential)


@pytest.mark.slow
def test_a_real_dask_local_cluster_gives_the_sequential_cache_byte_for_byte(lenet_batches, sequential):
    from distributed import LocalCluster

    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with make_executor("dask", address=cluster.scheduler_address) as executor:
            ticks: list[int] = []
            result = calibrate(LENET, lenet_batches, trt_version="7.0.0", executor=executor, progress=ticks.append)
    assert_same(result, sequential)
    assert sum(ticks) == len(lenet_batches)


def test_global_ranges_shard_too(lenet_batches):
    expected = calibrate(LENET, lenet_batches, trt_version="7.0.0", range_mode="global")
    with make_executor("local", workers=2) as executor:
        result = calibrate(LENET, lenet_batches, trt_version="7.0.0", range_mode="global", executor=executor)
    assert_same(result, expected)
    assert result.range_mode == "global"


def test_shards_are_contiguous_runs_of_equal_size():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 1) == [(0, 7)]


class _NoWorkers(Executor):
    """An executor that must not be reached."""

    name = "local"

    def map(self, fn, items, *, progress=None):
        raise AssertionError("work was sent to workers")


def test_a_model_without_float_tensors_is_refused_before_any_worker_runs():
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["s"])], "ints",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("s", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(CalibrationError, match="no float tensor"):
        collect_histograms(model, [{"x": np.zeros((1, 4), np.int64)}], executor=_NoWorkers(2))


def test_cli_calibrate_on_worker_processes_writes_the_same_cache(tmp_path, capsys):
    common = [str(LENET), "--data", str(LENET_BATCHES), "--trt-version", "7.0.0", "-q"]
    assert main(["calibrate", *common, "--cache", str(tmp_path / "serial.cache")]) == 0
    assert main(["calibrate", *common, "--cache", str(tmp_path / "local.cache"), "--executor", "local",
                 "--workers", "2"]) == 0
    assert (tmp_path / "serial.cache").read_bytes() == (tmp_path / "local.cache").read_bytes()
    assert main(["calibrate", *common, "--cache", str(tmp_path / "x.cache"), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
