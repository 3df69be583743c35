"""CPU calibration: which tensors, streaming histograms, ties, and NVIDIA's sampleINT8 table reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trt_calib.core.cache import CalibrationCache, amax_to_scale
from trt_calib.cli import main
from trt_calib.ort.model import calibrated_tensors, model_inputs
from trt_calib.ort.collect import calibrate, collect_histograms, tie_scales
from trt_calib.core.compare import compare, ulp_distance
from trt_calib.ort.data import open_source
from trt_calib.errors import DataError, ModelError
from trt_calib.core.histogram import AbsHistogram
from trt_calib.core.thresholds import entropy_amax, minmax_amax

from conftest import LENET, LENET_BATCHES, LENET_IMAGES, TRT_TABLE


def tiny_model(path: Path | None = None) -> onnx.ModelProto:
    """x -> Conv -> Relu -> MaxPool -> Concat(with Relu) ; plus a Shape (int64) branch and a Constant."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -2.0])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [], [3.0])),
        helper.make_node("Mul", ["pool", "c"], ["scaled"]),
        helper.make_node("Shape", ["scaled"], ["shape"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Concat", ["pool", "scaled"], ["cat"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [
            helper.make_tensor_value_info("cat", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("shape", TensorProto.INT64, None),
            helper.make_tensor_value_info("gap", TensorProto.FLOAT, None),
        ],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, str(path))
    return model


def test_calibrated_tensors_are_float_activations_in_graph_order():
    names = calibrated_tensors(tiny_model())
    assert names == ["x", "conv", "relu", "pool", "scaled", "gap", "cat"]  # no w, c (Constant), shape (int64)


def test_model_inputs_reads_names_shapes_and_dtypes():
    (spec,) = model_inputs(tiny_model())
    assert spec.name == "x" and spec.shape == ("N", 1, 4, 4) and spec.dtype == np.float32


def test_histograms_equal_a_numpy_forward_pass_batch_by_batch():
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((2, 1, 4, 4)).astype(np.float32) * s} for s in (1.0, 3.0)]
    hists, count = collect_histograms(tiny_model(), batches)
    assert count == 2
    expected = {name: AbsHistogram() for name in hists}
    for b in batches:
        x = b["x"]
        conv = np.concatenate([x * 1.0, x * -2.0], axis=1)
        relu = np.maximum(conv, 0)
        pool = relu.reshape(2, 2, 2, 2, 2, 2).max(axis=(3, 5))
        scaled = pool * np.float32(3.0)
        for name, v in [("x", x), ("conv", conv), ("relu", relu), ("pool", pool), ("scaled", scaled),
                        ("gap", relu.mean(axis=(2, 3), keepdims=True)), ("cat", np.concatenate([pool, scaled], 1))]:
            expected[name].update(v)
    for name, h in hists.items():
        assert h.range == pytest.approx(expected[name].range, rel=1e-6), name
        assert h.num_values == expected[name].num_values, name
        assert h.counts.sum() == expected[name].counts.sum()
        assert float(h.abs_max) == pytest.approx(float(expected[name].abs_max), rel=1e-6)


def test_pool_outputs_take_their_input_scale_and_concat_ties_only_before_8_1():
    amax = {"x": 1.0, "conv": 2.0, "relu": 1.5, "pool": 1.2, "scaled": 3.6, "gap": 0.5, "cat": 4.0}
    tied, sources = tie_scales(tiny_model(), amax, trt_version="10.3.0")
    assert tied["pool"] == 1.5 and sources == {"pool": "relu"}
    assert tied["cat"] == 4.0 and tied["scaled"] == 3.6
    old, old_sources = tie_scales(tiny_model(), amax, trt_version="8.0.1")
    assert old["pool"] == 4.0 and old["scaled"] == 4.0 and old["relu"] == 1.5
    assert old_sources["scaled"] == "cat"
    assert list(old) == list(amax)  # TensorRT's order is kept


def test_calibrate_streams_and_writes_a_consistent_cache():
    rng = np.random.default_rng(1)
    batches = [{"x": rng.random((4, 1, 4, 4), dtype=np.float32)} for _ in range(3)]
    result = calibrate(tiny_model(), batches, trt_version="10.3.0")
    assert result.num_batches == 3
    assert result.amax["x"] == entropy_amax(result.histograms["x"])
    cache = result.cache
    assert cache.header == "TRT-100300-EntropyCalibration2"
    assert cache.scales["relu"] == pytest.approx(amax_to_scale(result.amax["relu"]))
    minmax = calibrate(tiny_model(), batches, algorithm="minmax")
    assert minmax.cache.algorithm == "MinMaxCalibration"
    assert minmax.amax["x"] == minmax_amax(minmax.histograms["x"])
    assert minmax.amax["x"] == float(max(np.abs(b["x"]).max() for b in batches))


def test_calibrate_refuses_no_batches_and_unknown_algorithm():
    with pytest.raises(ValueError, match="entropy2, minmax, percentile, mse"):
        calibrate(tiny_model(), [], algorithm="kl")
    with pytest.raises(DataError, match="no batches"):
        calibrate(tiny_model(), [])


def test_nonfinite_activations_are_named_in_a_warning(caplog):
    batch = {"x": np.full((1, 1, 4, 4), 3e38, np.float32)}  # conv * -2 overflows to -inf
    result = calibrate(tiny_model(), [batch])
    assert "conv" in caplog.text and "Inf" in caplog.text
    assert result.amax["conv"] == float("inf")


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such ONNX model"):
        calibrate(tmp_path / "nope.onnx", [])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.onnx"):
        calibrated_tensors(bad)


def test_ulp_distance():
    assert ulp_distance(1.0, 1.0) == 0
    assert ulp_distance(1.0, float(np.nextafter(np.float32(1.0), np.float32(2.0)))) == 1
    assert ulp_distance(-1.0, 1.0) is None


# ------------------------------------------------------------------------------------------------ sampleINT8
def test_lenet_reproduces_tensorrts_published_sampleint8_table():
    """Acceptance: every entry on TensorRT's KL index (rel. diff < 2e-4), data/conv1/pool1/prob bit-exact."""
    source = open_source(LENET_BATCHES, model_inputs(LENET))
    result = calibrate(LENET, source, trt_version="7.0.0")
    reference = CalibrationCache.load(TRT_TABLE)
    assert result.cache.header == reference.header == "TRT-7000-EntropyCalibration2"
    ours = result.cache.scales
    for name, scale in reference.scales.items():
        assert abs(ours[name] / scale - 1) < 2e-4, name
    for name in ("data", "conv1", "pool1", "prob"):
        assert ours[name] == reference.scales[name], name
    comparison = compare(reference, result)
    assert comparison.consistent
    assert {r.name: r.verdict for r in comparison.shared} == {
        "data": "exact", "conv1": "exact", "pool1": "exact", "prob": "exact",
        "conv2": "same-bin", "pool2": "same-bin", "ip1": "same-bin", "ip2": "same-bin",
    }
    assert result.entropy_index["data"] == 2040 and result.entropy_index["prob"] == 2048
    assert result.tied == {"pool1": "conv1", "pool2": "conv2"}


def test_lenet_images_0_to_499_miss_the_table_so_the_off_by_one_matters():
    images = np.load(LENET_IMAGES)[:500]
    batches = [{"data": images[k : k + 50, None].astype(np.float32) / np.float32(255)} for k in range(0, 500, 50)]
    result = calibrate(LENET, batches, trt_version="7.0.0")
    reference = CalibrationCache.load(TRT_TABLE)
    assert result.cache.scales["data"] == reference.scales["data"]  # pixel counts give the same data entry
    assert not compare(reference, result).consistent


def test_cli_calibrate_writes_cache_sidecar_json_and_compares(tmp_path, capsys):
    out = tmp_path / "lenet.cache"
    details = tmp_path / "lenet.json"
    code = main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(out),
                 "--trt-version", "7.0.0", "--json", str(details), "--compare", str(TRT_TABLE)])
    assert code == 0
    captured = capsys.readouterr()
    # --json FILE: stdout holds the JSON alone (also written to FILE); the comparison table goes to stderr
    assert "8/8 shared tensors consistent" in captured.err and "3c008912" in captured.err
    printed = json.loads(captured.out)
    assert printed["comparison"]["summary"].startswith("8/8 shared tensors consistent")
    written = json.loads(details.read_text())
    assert written.pop("written_by") == "trt-calib 0.1.0 calibrate"  # marks the --json FILE as ours (README)
    assert printed == written  # the same object, comparison and all (issue 22)
    cache = CalibrationCache.load(out)
    assert cache.header == "TRT-7000-EntropyCalibration2" and len(cache) == 10
    sidecar = json.loads((tmp_path / "lenet.cache.json").read_text())
    assert sidecar["model"]["sha256"] and sidecar["data"]["kind"] == "generator"
    assert sidecar["algorithm"] == "entropy2" and sidecar["trt_version"] == "7.0.0"
    rows = {t["name"]: t for t in json.loads(details.read_text())["tensors"]}
    assert rows["data"]["entropy_index"] == 2040 and rows["pool1"]["tied_to"] == "conv1"


def test_cli_calibrate_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.cache"
    assert main(["calibrate", str(LENET), "--data", str(tmp_path / "missing.npy"), "--cache", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.npy" in err and "\n" not in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 1, 28, 28), np.float32))
    assert main(["calibrate", str(LENET), "--data", str(wrong), "--cache", str(out)]) == 2
    assert "image" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [wrong]


def test_cli_calibrate_minmax_with_npy_batches(tmp_path):
    images = np.load(LENET_IMAGES)[:64, None].astype(np.float32) / 255
    npy = tmp_path / "x.npy"
    np.save(npy, images)
    out = tmp_path / "mm.cache"
    assert main(["-q", "calibrate", str(LENET), "--data", str(npy), "--batch-size", "16", "--cache", str(out),
                 "--algorithm", "minmax", "--trt-version", "8.6.1", "--no-progress"]) == 0
    cache = CalibrationCache.load(out)
    assert cache.header == "TRT-8601-MinMaxCalibration"
    assert cache.amax("data") == 1.0


@pytest.mark.parametrize("threads, parts", [(1, "3 parts of about 2"), (2, "6 parts of about 1")])
def test_batches_run_in_parts_give_exactly_the_whole_batch_histograms(caplog, threads, parts):
    """With 2 threads the next part runs while one is binned, so each part gets half the budget."""
    rng = np.random.default_rng(7)
    scales = (1.0, 0.5, 4.0, 2.0)  # the third batch grows every range
    batches = [{"x": (rng.standard_normal((6, 1, 4, 4)) * s).astype(np.float32)} for s in scales]
    whole, _ = collect_histograms(tiny_model(), batches, threads=1)
    caplog.set_level("INFO")
    per_sample = 4 * (16 + 32 + 32 + 8 + 8 + 2 + 16)  # float32 values of x, conv, relu, pool, scaled, gap, cat
    parted, n = collect_histograms(tiny_model(), batches, max_activation_mb=2 * per_sample / 2**20, threads=threads)
    assert n == 4 and f"in {parts} samples" in caplog.text
    for name in whole:
        assert parted[name] == whole[name], name


def test_lenet_in_parts_still_reproduces_the_table():
    """onnxruntime's float32 results depend on the batch size by an ULP or so; the KL indices do not move."""
    source = open_source(LENET_BATCHES, model_inputs(LENET))
    result = calibrate(LENET, source, trt_version="7.0.0", max_activation_mb=0.5)
    comparison = compare(CalibrationCache.load(TRT_TABLE), result)
    assert comparison.consistent, comparison.summary()
    assert result.cache.scales["data"] == CalibrationCache.load(TRT_TABLE).scales["data"]


def test_tensorrt_internal_reference_entries_are_not_inconsistencies():
    """A real cache also names tensors TensorRT made up; only ONNX-named entries we lack make the pair inconsistent."""
    h = AbsHistogram()
    h.update(np.linspace(0, 2, 1000, dtype=np.float32))
    from trt_calib.core.result import CalibrationResult

    ours = CalibrationResult(amax={"x": 2.0}, histograms={"x": h}, algorithm="minmax", trt_version="10.3.0")
    x = f"x: {ours.cache.entries[0].hex}\n"
    internal = "(Unnamed Layer* 7) [Constant]_output: 3c010a14\nONNXTRT_Broadcast_1: 3c010a14\nw_output: 3c010a14\n"
    reference = CalibrationCache.parse("TRT-100300-MinMaxCalibration\n" + x + internal)
    comparison = compare(reference, ours, initializers=["w"])
    assert comparison.consistent
    assert comparison.internal == ["(Unnamed Layer* 7) [Constant]_output", "ONNXTRT_Broadcast_1", "w_output"]
    assert "3 TensorRT-internal entries not checked" in comparison.summary()
    without_initializers = compare(reference, ours)  # w_output is then an ONNX-looking name we lack
    assert not without_initializers.consistent
    assert [r.name for r in without_initializers.rows if r.verdict == "only-reference"] == ["w_output"]


def test_a_batch_is_cut_into_equal_parts():
    from trt_calib.ort.runner import split_batch

    specs = model_inputs(tiny_model())
    batch = {"x": np.arange(16, dtype=np.float32).reshape(16, 1, 1, 1)}
    assert [len(p["x"]) for p in split_batch(batch, specs, 5)] == [4, 4, 4, 4]  # not 5, 5, 5, 1
    assert [len(p["x"]) for p in split_batch(batch, specs, 6)] == [5, 6, 5]
    assert np.concatenate([p["x"] for p in split_batch(batch, specs, 3)]).ravel().tolist() == list(range(16))
    assert len(split_batch(batch, specs, 16)) == 1


@pytest.mark.parametrize("threads, parts, again", [(1, "4 parts of about 4", "2 of its 4"),
                                                   (2, "8 parts of about 2", "4 of its 8")])
def test_a_first_batch_in_parts_runs_again_only_the_parts_before_its_largest_values(caplog, threads, parts, again):
    """Every tensor's max sits in sample 9: the parts before its part run twice, it and the later ones once (with 2
    threads the parts are half as large, as the next runs while one is binned)."""
    rng = np.random.default_rng(3)
    first = rng.uniform(-0.9, 0.9, (16, 1, 4, 4)).astype(np.float32)
    first[9, 0, 1, 1], first[9, 0, 2, 2] = 10.0, -10.0  # sample 9: in part 3 of 4 parts of 4, part 5 of 8 of 2
    batches = [{"x": first}, {"x": rng.standard_normal((16, 1, 4, 4)).astype(np.float32) * 4}]
    whole, _ = collect_histograms(tiny_model(), batches, threads=1)
    caplog.set_level("INFO")
    per_sample = 4 * (16 + 32 + 32 + 8 + 8 + 2 + 16)
    parted, _ = collect_histograms(tiny_model(), batches, max_activation_mb=4.5 * per_sample / 2**20, threads=threads)
    assert f"in {parts} samples" in caplog.text
    assert f"first batch: {again} parts ran twice" in caplog.text
    for name in whole:
        assert parted[name] == whole[name], name


def test_activation_bytes_per_sample_come_from_the_shapes_when_they_are_static():
    from trt_calib.ort.runner import Runner

    for model, batch in ((tiny_model(), {"x": np.ones((1, 1, 4, 4), np.float32)}),
                         (LENET, {"data": np.ones((1, 1, 28, 28), np.float32)})):
        runner = Runner.open(model, None, threads=1, budget_bytes=1 << 30)
        assert runner.sample_bytes == sum(v.nbytes for v in runner.run(batch).values())
    dynamic = tiny_model()
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"  # height unknown: measure a sample
    assert Runner.open(dynamic, None, threads=1, budget_bytes=1 << 30).sample_bytes is None


def test_optimization_all_is_faster_arithmetic_that_keeps_lenet_on_tensorrts_kl_index():
    source = open_source(LENET_BATCHES, model_inputs(LENET))
    exact = calibrate(LENET, source, trt_version="7.0.0")
    fast = calibrate(LENET, source, trt_version="7.0.0", optimization="all")
    comparison = compare(CalibrationCache.load(TRT_TABLE), fast)
    assert comparison.consistent, comparison.summary()
    moved = [n for n in exact.amax if exact.amax[n] != fast.amax[n]]
    assert 0 < len(moved) < len(exact.amax)  # NCHWc convolutions sum in another order: a few entries move
    assert all(ulp_distance(exact.amax[n], fast.amax[n]) <= 8 for n in moved)
    assert fast.to_json()["optimization"] == "all" and exact.to_json()["optimization"] == "basic"
    with pytest.raises(ValueError, match="unknown optimization 'fast'"):
        calibrate(LENET, source, optimization="fast")


def test_cli_calibrate_records_a_non_default_optimization_in_the_sidecar_and_json(tmp_path, capsys):
    out = tmp_path / "lenet.cache"
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(out),
                 "--optimization", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["optimization"] == "all"
    assert json.loads((tmp_path / "lenet.cache.json").read_text())["options"] == {"optimization": "all"}
    assert main(["calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(out), "--optimization",
                 "fast"]) == 2


def test_running_ahead_keeps_at_most_two_parts_alive_and_bins_in_order():
    """While part k + 1 runs, part k is being binned; part k - 1 is gone (what halving the budget relies on)."""
    import weakref

    from trt_calib.core.histogram import AbsHistogram
    from trt_calib.ort.fill import fill_histograms
    from trt_calib.ort.runner import Runner

    rng = np.random.default_rng(5)
    batches = [{"x": (rng.standard_normal((8, 1, 4, 4)) * s).astype(np.float32)} for s in (1.0, 3.0, 0.5)]
    per_sample = 4 * (16 + 32 + 32 + 8 + 8 + 2 + 16)
    runner = Runner.open(tiny_model(), None, threads=2, budget_bytes=2 * per_sample)
    live: set[int] = set()  # ids of output arrays not yet freed
    seen, order = [], []
    real_run = runner.run

    def run(part):
        seen.append(len(live))  # outputs of earlier parts still alive when this part starts
        values = real_run(part)
        for name, value in values.items():
            if name not in runner.input_names:
                live.add(id(value))
                weakref.finalize(value, live.discard, id(value))
        order.append(float(part["x"].sum()))
        return values

    runner.run = run
    histograms = {n: AbsHistogram() for n in runner.names}
    assert fill_histograms(runner, batches, histograms, first=True, ahead=True) == 3
    outputs = len(runner.run_names)
    assert len(order) > 6 and max(seen) <= outputs  # never two earlier parts' outputs alive
    sequential, _ = collect_histograms(tiny_model(), batches, max_activation_mb=2 * per_sample / 2**20, threads=1)
    assert histograms == sequential
