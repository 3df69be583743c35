"""Per-unit sensitivity on the bundled LeNet: every number a real run that quantize --exclude-nodes reproduces, the
same JSON on every executor, the exclusions on both TensorRT paths (Q/DQ and layer precisions), the report section."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_standin
from conftest import LENET, LENET_IMAGES, TRT_TABLE
from trt_calib.cli import main
from trt_calib.core.cache import CalibrationCache
from trt_calib.errors import CalibrationError, DataError, MissingDependencyError, ModelError, UsageError
from trt_calib.ort.collect import calibrate
from trt_calib.ort.evaluate import cosine_error, evaluate
from trt_calib.ort.executor import make_executor
from trt_calib.qdq import quantize_model
from trt_calib.qdq.sensitivity import (
    METRICS,
    exclusions,
    layer_names_for,
    load_sensitivity,
    measure_kept,
    sensitivity,
    trtexec_precision_flags,
)
from trt_calib.trt.build import build_engine, keep_layer_precisions

UNITS = ["conv1", "conv2", "ip1", "ip2"]  # LeNet's Conv/Gemm nodes, all quantised under TensorRT placement


def _images(start: int, stop: int) -> np.ndarray:
    return np.load(LENET_IMAGES)[start:stop].astype(np.float32)[:, None] / np.float32(255.0)


def _batches(start: int, stop: int, size: int = 50) -> list[dict[str, np.ndarray]]:
    x = _images(start, stop)
    return [{"data": x[i : i + size]} for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def scales():
    return calibrate(LENET, _batches(0, 200))


@pytest.fixture(scope="module")
def held():
    return _batches(400, 500)


@pytest.fixture(scope="module")
def result(scales, held):
    return sensitivity(LENET, scales, held, max_keep=4)


def _kl(qdq, held) -> float:
    """The KL of a Q/DQ model measured independently, by `evaluate`."""
    return evaluate(LENET, qdq, held, worst=0).primary.mean_kl


def _without_activation_pairs(model):
    """A copy with every activation QuantizeLinear -> DequantizeLinear pair bypassed (int8 weights stay)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    q_of = {n.output[0]: n for n in out.graph.node if n.op_type == "QuantizeLinear"}
    rename = {n.output[0]: q_of[n.input[0]].input[0] for n in out.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in q_of}
    for n in out.graph.node:
        for j, name in enumerate(n.input):
            if name in rename:
                n.input[j] = rename[name]
    return out


# ---------------------------------------------------------------------------------------------- exclusions in Q/DQ
def test_excluding_a_node_leaves_it_float_and_every_other_pair_as_it_was(scales):
    full, _ = quantize_model(LENET, scales)
    part, report = quantize_model(LENET, scales, exclude={"conv2": "named on request"})
    conv2 = next(n for n in part.graph.node if n.name == "conv2")
    assert conv2.input[:2] == ["pool1", "conv2_w"]  # float input, float weight
    inits = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    a, b = inits(full), inits(part)
    shared = [k for k in a if k.endswith("_scale") and not k.startswith(("pool1", "conv2"))]
    assert shared and all(np.array_equal(a[k], b[k]) for k in shared)
    row = next(n for n in report.nodes if n.node == "conv2")
    assert not row.quantized and row.reason == "excluded: named on request"
    assert report.excluded == {"conv2": "named on request"}
    assert "1 node(s) excluded on request" in report.summary()
    assert report.to_json()["excluded"] == {"conv2": "named on request"}


def test_excluding_every_unit_is_refused_one_left_is_a_q_dq_model(scales, held):
    with pytest.raises(CalibrationError, match="nothing left to quantise"):
        quantize_model(LENET, scales, exclude=dict.fromkeys(UNITS, "all"))
    qdq, report = quantize_model(LENET, scales, exclude=dict.fromkeys(UNITS[:3], "all"))
    assert [n.node for n in report.nodes if n.quantized] == ["ip2"]
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) == 1


def test_excluding_an_unknown_node_names_close_matches(scales):
    with pytest.raises(ModelError, match=r"no node named 'conv3'.*did you mean conv2, conv1"):
        quantize_model(LENET, scales, exclude={"conv3": "typo"})


def test_excluding_a_node_that_is_not_quantised_says_it_has_no_effect(scales):
    _, report = quantize_model(LENET, scales, exclude=exclusions(LENET, op_types=["Softmax", "LayerNormalization"]))
    assert list(report.excluded) == ["prob"]
    assert report.excluded["prob"].startswith("op type Softmax (no effect: ")
    assert all(n.quantized for n in report.nodes if n.node in UNITS)


# ---------------------------------------------------------------------------------------------- the sweep
def test_every_unit_is_ranked_by_what_excluding_it_buys_back(result):
    assert sorted(u.node for u in result.units) == UNITS
    assert [u.rank for u in result.units] == [1, 2, 3, 4]
    excluded = [u.excluded for u in result.units]
    assert excluded == sorted(excluded)
    assert result.metric is METRICS["kl"]  # LeNet's output is a softmax: probability rows
    assert all(u.excluded < result.baseline_error for u in result.units[:1])


def test_alone_and_excluded_are_the_errors_of_the_models_quantize_writes(result, scales, held):
    for unit in result.units[:2]:
        others = {n: "other" for n in UNITS if n != unit.node}
        alone, _ = quantize_model(LENET, scales, exclude=others)
        assert unit.alone == pytest.approx(_kl(alone, held), rel=1e-9)
        excluded, _ = quantize_model(LENET, scales, exclude={unit.node: "it"})
        assert unit.excluded == pytest.approx(_kl(excluded, held), rel=1e-9)
        # weights only: the same model as alone without its activation pair; activations only: float weights
        assert unit.weights_only == pytest.approx(_kl(_without_activation_pairs(alone), held), rel=1e-9)
        assert unit.weights_only != unit.activations_only


def test_the_greedy_curve_is_measured_and_reproduced_by_quantize(result, scales, held):
    full, _ = quantize_model(LENET, scales)
    assert result.greedy[0].k == 0 and result.greedy[0].error == result.baseline_error
    assert result.baseline_error == pytest.approx(_kl(full, held), rel=1e-9)
    assert [p.k for p in result.greedy] == [0, 1, 2, 3]  # never every unit: a float model is no recommendation
    two = result.greedy[2]
    assert two.kept_in_float == [u.node for u in result.units[:2]] == result.kept(2)
    qdq, _ = quantize_model(LENET, scales, exclude=dict.fromkeys(two.kept_in_float, "kept"))
    assert two.error == pytest.approx(_kl(qdq, held), rel=1e-9)
    _, [every_float] = measure_kept(LENET, scales, held, [UNITS])
    assert every_float == 0.0  # everything float: exactly the FP32 outputs


def test_without_a_target_the_choice_is_the_knee_of_the_curve_never_every_unit(result):
    """Issue 22 item 2 / issue 23 item 8: without --target LeNet's choice was k = 4, every unit in float."""
    errors = [p.error for p in result.greedy]
    best = min(errors)
    knee = next(k for k, e in enumerate(errors) if errors[0] - e >= 0.9 * (errors[0] - best))
    assert result.chosen_k == knee < len(result.units)
    assert "90% of the curve's best improvement" in result.chosen_reason and "no target" in result.chosen_reason
    assert result.kept() == [u.node for u in result.units[:knee]]


def test_measure_kept_repeats_the_runs_of_the_curve(result, scales, held):
    metric, errors = measure_kept(LENET, scales, held, [[], result.kept(2)])
    assert metric is result.metric and errors == [result.baseline_error, result.greedy[2].error]


def test_a_target_stops_the_curve_at_the_first_k_that_meets_it(scales, held, result):
    target = result.greedy[1].error * 1.0001
    stopped = sensitivity(LENET, scales, held, max_keep=4, target=target)
    assert [p.k for p in stopped.greedy] == [0, 1] and stopped.chosen_k == 1 and stopped.target_met
    missed = sensitivity(LENET, scales, held, max_keep=1, target=result.greedy[1].error / 10)
    assert not missed.target_met and missed.chosen_k == 1 and "not met" in missed.chosen_reason


@pytest.mark.slow
def test_results_are_the_same_on_serial_local_and_a_real_dask_cluster(scales):
    from distributed import LocalCluster

    held = _batches(400, 450, 25)
    docs = []
    runs = [("serial", None), ("local", None)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        runs.append(("dask", cluster.scheduler_address))
        for kind, address in runs:
            with make_executor(kind, workers=None if kind == "serial" else 2, address=address) as ex:
                ticks = []
                doc = sensitivity(LENET, scales, held, max_keep=2, executor=ex, progress=ticks.append).to_json()
            assert doc["run"]["executor"] == kind and sum(ticks) == doc["run"]["runs"]
            doc.pop("run")
            docs.append(json.dumps(doc, sort_keys=True))
    assert docs[0] == docs[1] == docs[2]


def test_metrics_cosine_and_sqnr(scales, held):
    assert cosine_error(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
                        np.array([[0.0, 1.0], [0.0, 0.0], [2.0, 2.0]])) == pytest.approx([1.0, 0.0, 0.0])
    cos = sensitivity(LENET, scales, held[:1], metric="cosine", max_keep=0, candidates="all")
    sqnr = sensitivity(LENET, scales, held[:1], metric="sqnr", max_keep=0, candidates="all")
    assert cos.baseline_error == pytest.approx(cos.baseline_outputs["prob"]["1-cosine"])
    assert sqnr.metric.higher_is_better and sqnr.baseline_error == sqnr.baseline_outputs["prob"]["sqnr_db"]
    # sqnr ranks the unit whose exclusion raises SQNR most first
    assert [u.excluded for u in sqnr.units] == sorted((u.excluded for u in sqnr.units), reverse=True)


def test_auto_metric_is_cosine_for_outputs_that_are_not_probabilities(tmp_path):
    w = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    data = [{"x": np.random.default_rng(i).normal(size=(4, 2, 8, 8)).astype(np.float32)} for i in range(2)]
    got = sensitivity(model, {"x": 3.0}, data, max_keep=1)
    assert got.metric.name == "cosine" and [u.node for u in got.units] == ["conv"]
    assert 0 < got.baseline_error < 0.01 and [p.k for p in got.greedy] == [0] and got.chosen_k == 0  # one unit: kept
    with pytest.raises(UsageError, match="metric 'kl' needs a classifier output"):
        sensitivity(model, {"x": 3.0}, data, metric="kl")


# ---------------------------------------------------------------------------------------------- SENS.json
def test_sens_json_round_trips_and_bad_files_are_named(result, tmp_path):
    path = tmp_path / "sens.json"
    path.write_text(json.dumps(result.to_json()))
    back = load_sensitivity(path)
    assert [u.node for u in back.units] == [u.node for u in result.units] and back.chosen_k == result.chosen_k
    assert back.kept(2) == result.kept(2) and back.to_json()["units"] == result.to_json()["units"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not a readable sensitivity JSON"):
        load_sensitivity(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"metric": "kl"}')
    with pytest.raises(DataError, match="other.json: not a sensitivity file of trt-calib"):
        load_sensitivity(tmp_path / "other.json")
    with pytest.raises(UsageError, match="only 4 unit"):
        back.kept(5)


def test_trtexec_flags_follow_trtexec_syntax():
    assert trtexec_precision_flags(["conv2", "ip1"]) == [
        "--precisionConstraints=obey", "--layerPrecisions=conv2:fp16,ip1:fp16",
        "--layerOutputTypes=conv2:fp16,ip1:fp16"]
    assert trtexec_precision_flags(["a b:c"], "fp32")[1] == "'--layerPrecisions=a b:c:fp32'"  # split on the last ':'
    with pytest.raises(UsageError, match="cannot express"):
        trtexec_precision_flags(["a,b"])
    assert trtexec_precision_flags([]) == []


def test_layer_names_follow_the_onnx_parser(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"], name="sig")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert layer_names_for(model, ["Relu_0", "node_of_r", "sig"]) == {
        "Relu_0": "node_of_r", "node_of_r": "node_of_r", "sig": "sig"}
    with pytest.raises(ModelError, match="no node named 'nope'"):
        layer_names_for(model, ["nope"])


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def sens_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sens")
    np.savez(folder / "d.npz", data=_images(0, 300))
    out = folder / "sens.json"
    code = main(["sensitivity", str(LENET), "--data", str(folder / "d.npz"), "--batch-size", "50",
                 "--calib-batches", "4", "--eval-batches", "1", "--max-keep", "2", "--executor", "serial",
                 "-o", str(out), "-q"])
    assert code == 0
    return out


def test_cli_writes_sens_json_and_names_the_split(sens_file):
    doc = json.loads(sens_file.read_text())
    assert doc["metric"] == "kl" and len(doc["units"]) == 4 and [p["k"] for p in doc["greedy"]] == [0, 1, 2]
    assert doc["calibration_data"].endswith("batches 0..3")
    assert "batches 4..5 (held out), first 1 used" in doc["evaluation_data"]
    assert doc["evaluation"] == {"batches": 1, "samples": 50}
    assert doc["trtexec"].startswith("--precisionConstraints=obey --layerPrecisions=")
    assert doc["chosen"]["kept_in_float"] == [u["node"] for u in doc["units"][: doc["chosen"]["k"]]]


def test_cli_json_stdout_target_exit_and_guard(tmp_path, capsys, sens_file):
    data = sens_file.parent / "d.npz"
    out = tmp_path / "s.json"
    common = ["sensitivity", str(LENET), "--data", str(data), "--batch-size", "50", "--eval-batches", "1",
              "--max-keep", "1", "--executor", "serial", "-o", str(out), "--json"]
    assert main(common + ["--target", "1e-12"]) == 1  # not met with one unit kept: a finding
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["target"] == 1e-12
    assert main(["sensitivity", str(LENET), "--data", str(data), "-o", str(LENET), "--json"]) == 2
    assert "is the input MODEL" in json.loads(capsys.readouterr().out)["error"]
    assert main(["sensitivity", str(LENET), "--data", str(data), "--from-cache", str(TRT_TABLE),
                 "--calib-batches", "2", "-o", str(out)]) == 2


def test_cli_from_cache_measures_the_cache_scales(tmp_path, held):
    np.savez(tmp_path / "h.npz", data=np.concatenate([b["data"] for b in held]))
    out = tmp_path / "s.json"
    assert main(["sensitivity", str(LENET), "--data", str(tmp_path / "h.npz"), "--batch-size", "50",
                 "--from-cache", str(TRT_TABLE), "--max-keep", "0", "--executor", "serial", "-o", str(out), "-q"]) == 0
    doc = json.loads(out.read_text())
    full, _ = quantize_model(LENET, CalibrationCache.load(TRT_TABLE))
    assert doc["baseline_error"] == pytest.approx(_kl(full, held), rel=1e-9)
    assert doc["scales"].startswith("cache ") and "all 2 batches" in doc["evaluation_data"]


def test_cli_quantize_excludes_the_top_units_of_sens_json(tmp_path, sens_file):
    report = tmp_path / "r.json"
    code = main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(tmp_path / "q.onnx"),
                 "--exclude-nodes-from", str(sens_file), "--keep", "1", "--exclude-op-types", "Add",
                 "--report", str(report), "-q"])
    assert code == 0
    top = json.loads(sens_file.read_text())["units"][0]["node"]
    doc = json.loads(report.read_text())
    assert doc["excluded"] == {top: "sensitivity rank 1 in sens.json (top 1)"}
    node = next(n for n in onnx.load(tmp_path / "q.onnx").graph.node if n.name == top)
    assert not node.input[1].endswith("_dequantized")  # its weight stays float
    assert main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(tmp_path / "q2.onnx"),
                 "--exclude-nodes", "conv9", "-q"]) == 2
    assert main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(tmp_path / "q3.onnx"),
                 "--keep", "1", "-q"]) == 2


def test_report_section_draws_the_bars_and_the_curve(tmp_path, sens_file):
    out = tmp_path / "rep"
    assert main(["report", str(LENET), "--sensitivity", str(sens_file), "-o", str(out), "-q"]) == 0
    page = (out / "index.html").read_text()
    assert "Sensitivity: which units INT8 hurts" in page and "Greedy curve" in page
    for png in ("figures/sensitivity_bars.png", "figures/sensitivity_greedy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in page
    doc = json.loads((out / "report.json").read_text())
    assert doc["sensitivity"]["units"] == json.loads(sens_file.read_text())["units"] and doc["tensors"] == []


# ---------------------------------------------------------------------------------------------- layer precisions
@pytest.fixture
def trt(monkeypatch):
    return trt_standin.install(monkeypatch, "10.3.0")


def test_build_keeps_the_named_layers_in_fp16_and_obeys(trt, tmp_path):
    result = build_engine(LENET, ranges=CalibrationCache.load(TRT_TABLE), shapes={"data": ((1, 1, 28, 28),) * 3},
                          keep_precision=["conv2", "ip1"])
    state = trt_standin.state_of(trt)
    half = trt.DataType.HALF
    assert state.layer_precisions == {"conv2": (half, {0: half}), "ip1": (half, {0: half})}
    assert ("config.set_flag", "OBEY_PRECISION_CONSTRAINTS") in state.calls
    assert result.kept_layers == {"conv2": ["conv2"], "ip1": ["ip1"]}
    with pytest.raises(ModelError, match="no TensorRT layer is named after node\\(s\\) 'conv9'"):
        build_engine(LENET, ranges={"data": 1.0}, shapes={"data": ((1, 1, 28, 28),) * 3}, keep_precision=["conv9"])
    with pytest.raises(DataError, match="needs the FP16 builder flag"):
        build_engine(LENET, ranges={"data": 1.0}, fp16=False, keep_precision=["conv2"])


def test_an_unnamed_node_is_found_under_the_name_the_parser_gives_it(trt, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"], name="sig")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    layers = layer_names_for(path, ["Relu_0"])
    result = build_engine(path, ranges={"x": 1.0, "r": 1.0, "y": 1.0}, keep_precision=list(layers.values()))
    assert result.kept_layers == {"node_of_r": ["node_of_r"]}


def test_further_layers_of_a_node_are_kept_too_but_not_another_nodes(trt):
    t = trt_standin.FakeTensor
    layers = [trt_standin.FakeLayer(name, [t(name + ":0", (), dtype)])
              for name, dtype in (("conv", trt.DataType.FLOAT), ("conv_4", trt.DataType.FLOAT),
                                  ("conv_1", trt.DataType.FLOAT), ("conv_7", trt.DataType.INT32),
                                  ("ONNXTRT_Broadcast", trt.DataType.FLOAT))]
    network = trt_standin.FakeNetwork([], layers)
    config = trt.Builder(trt.Logger()).create_builder_config()
    found = keep_layer_precisions(trt, network, config, ["conv"], "fp32", node_layers={"conv", "conv_1"})
    assert found == {"conv": ["conv", "conv_4", "conv_7"]}
    assert [layer.precision_is_set for layer in layers] == [True, True, False, True, False]
    assert not layers[3].output_type_is_set(0)  # an INT32 (shape) output keeps its type


def test_precision_api_deprecation_of_10_12_does_not_escape_and_11_has_none(monkeypatch, tmp_path):
    trt = trt_standin.install(monkeypatch, "10.12.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        build_engine(LENET, ranges=CalibrationCache.load(TRT_TABLE), shapes={"data": ((1, 1, 28, 28),) * 3},
                     keep_precision=["conv1"])
    assert trt_standin.state_of(trt).layer_precisions == {"conv1": (trt.DataType.HALF, {0: trt.DataType.HALF})}
    trt11 = trt_standin.install(monkeypatch, "11.0.0")
    network = trt_standin.FakeNetwork([], [trt_standin.NoPrecisionLayer("conv1", [])])
    with pytest.raises(MissingDependencyError, match="TensorRT 11.*--exclude-nodes-from"):
        keep_layer_precisions(trt11, network, object(), ["conv1"])


def test_cli_build_keep_precision_from_sens_json(trt, tmp_path, sens_file, capsys):
    cache = tmp_path / "c.cache"
    shutil.copy(TRT_TABLE, cache)
    common = ["build", str(LENET), "--cache", str(cache), "--shapes", "data:1x1x28x28", "--engine",
              str(tmp_path / "m.plan")]
    assert main(common + ["--keep-precision", str(sens_file), "--keep", "2", "--keep-dtype", "fp32"]) == 0
    top2 = [u["node"] for u in json.loads(sens_file.read_text())["units"][:2]]
    f32 = trt.DataType.FLOAT
    assert trt_standin.state_of(trt).layer_precisions == {n: (f32, {0: f32}) for n in top2}
    assert f"kept in fp32: {top2[0]} (layers {top2[0]})" in capsys.readouterr().out
    assert main(common + ["--keep-precision", "conv1,ip2", "--keep", "1"]) == 2
    assert main(common + ["--keep-precision", "conv1", "--no-fp16"]) == 2
    assert main(common + ["--keep-precision", "conv1,nope"]) == 2
