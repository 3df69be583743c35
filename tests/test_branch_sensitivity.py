"""Sensitivity, quantize exclusions and evaluate on models whose units sit inside If branches (issue 19).

silero_vad_op18_ifless keeps every Conv/Gemm inside one If on its rank-0 `sr` input, and its state output is
(2, batch, 128): sensitivity said "0 units", exit 0. The models here have the same pattern at toy size.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.cli import main
from trt_calib.errors import CalibrationError, ModelError
from trt_calib.ort.collect import calibrate
from trt_calib.ort.evaluate import evaluate
from trt_calib.ort.executor import SerialExecutor
from trt_calib.qdq import quantize_model
from trt_calib.qdq.sensitivity import exclusions, layer_names_for, measure_kept, sensitivity

RNG = np.random.default_rng(19)
WEIGHTS = {f"w{k}_{rate}": RNG.standard_normal(shape).astype(np.float32)
           for rate in ("16", "8") for k, shape in ((1, (4, 6)), (2, (6, 3)))}


def _branch(rate: str, act: str) -> onnx.GraphProto:
    nodes = [
        helper.make_node("MatMul", ["x", f"w1_{rate}"], [f"h{rate}"], name=f"mm1_{rate}"),
        helper.make_node(act, [f"h{rate}"], [f"r{rate}"], name=f"act_{rate}"),
        helper.make_node("MatMul", [f"r{rate}", f"w2_{rate}"], [f"o{rate}"], name=f"mm2_{rate}"),
        helper.make_node("Gather", ["state", "zero"], [f"s{rate}"], axis=0, name=f"gather_{rate}"),
        helper.make_node("Add", [f"o{rate}", f"s{rate}"], [f"a{rate}"], name=f"add_{rate}"),
        helper.make_node("Unsqueeze", [f"a{rate}", "axes0"], [f"u{rate}"], name=f"unsq_{rate}"),
        helper.make_node("Concat", [f"u{rate}", f"u{rate}"], [f"st{rate}"], axis=0, name=f"stack_{rate}"),
    ]
    return helper.make_graph(nodes, f"rate{rate}", [],
                             [helper.make_tensor_value_info(f"a{rate}", TensorProto.FLOAT, None),
                              helper.make_tensor_value_info(f"st{rate}", TensorProto.FLOAT, None)])


def vad_model(path=None) -> onnx.ModelProto:
    """x (batch, 4), state (2, batch, 3), sr (): y (batch, 3) and stateN (2, batch, 3), every MatMul inside the If on
    sr == 16000 (weights are main-graph initializers only the branches read), as in silero_vad_op18_ifless."""
    inits = [numpy_helper.from_array(w, name) for name, w in WEIGHTS.items()] + [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array(16000, np.int64), "sr16k")]
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"], name="eq"),
         helper.make_node("If", ["is16k"], ["y", "stateN"], name="rate", then_branch=_branch("16", "Relu"),
                          else_branch=_branch("8", "Sigmoid"))],
        "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 3])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, str(path))
    return model


def batch(n: int, sr: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32),
            "state": rng.standard_normal((2, n, 3)).astype(np.float32), "sr": np.array(sr, np.int64)}


DATA_SCRIPT = textwrap.dedent("""
    import numpy as np

    def _batches(rates, seed):
        rng = np.random.default_rng(seed)
        for sr in rates:
            yield {"x": rng.standard_normal((8, 4)).astype(np.float32),
                   "state": rng.standard_normal((2, 8, 3)).astype(np.float32), "sr": np.array(sr, np.int64)}

    def load_data():
        return _batches([16000, 16000, 16000], 0)

    def both():
        return _batches([16000, 8000, 16000, 8000], 1)

    def heldout():
        return _batches([16000, 16000], 2)

    def mixed():
        return _batches([16000, 8000], 3)
""")


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def cosine_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cos per sample (samples on axis 0), written out independently of the module under test."""
    a, b = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    return 1 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def error_by_hand(fp32: onnx.ModelProto, int8: onnx.ModelProto, held) -> float:
    """The Q/DQ model run whole: mean over outputs of the mean per-sample 1 - cos, stateN's samples on its axis 1."""
    ref, ours = session(fp32), session(int8)
    y, state = [], []
    for b in held:
        (y32, s32), (y8, s8) = ref.run(["y", "stateN"], b), ours.run(["y", "stateN"], b)
        y.append(cosine_error(y32, y8))
        state.append(cosine_error(np.moveaxis(s32, 1, 0), np.moveaxis(s8, 1, 0)))
    return float(np.mean([np.concatenate(y).mean(), np.concatenate(state).mean()]))


@pytest.fixture(scope="module")
def ranked():
    model = vad_model()
    scales = calibrate(model, [batch(8, 16000, s) for s in range(3)], algorithm="minmax")
    held = [batch(8, 16000, s) for s in range(10, 13)]
    return model, scales, held, sensitivity(model, scales, held, metric="cosine", executor=SerialExecutor())


def test_units_inside_the_branch_the_held_out_data_takes_are_ranked(ranked):
    _, _, held, result = ranked
    assert sorted(u.node for u in result.units) == ["mm1_16", "mm2_16"]
    assert result.info["evaluation"]["samples"] == 24  # x's axis 0; state's samples are on its axis 1
    (row,) = result.info["if_branches"]["inlined"]
    assert row == {"if": "If 'rate'", "condition": "is16k", "value": True, "branch": "then_branch",
                   "held_out_batches": 3}
    assert set(result.not_ranked) == {"mm1_8", "mm2_8"}  # the other branch: not run
    for why in result.not_ranked.values():
        assert why.startswith("in the else_branch of If 'rate', which no held-out batch takes (its condition "
                              "'is16k' was True on all 3")
    # calibration never took the branch: r8 has no scale, but x has one, so quantize gives mm1_8 its pairs
    assert result.not_ranked["mm2_8"].endswith("no Q/DQ there either: no scale for 'r8'")
    assert result.unmeasured == ["mm1_8"]
    text = result.table()
    assert "measured inside the then_branch of If 'rate'" in text and "2 node(s) in the else_branch" in text


def test_every_figure_is_the_error_of_the_qdq_model_quantize_writes(ranked):
    """The branch is inlined, yet the numbers are those of quantize's own Q/DQ model, with its If, run whole."""
    model, scales, held, result = ranked
    full, _ = quantize_model(model, scales)
    assert [n.op_type for n in full.graph.node] == ["Equal", "If"]  # Q/DQ inside the branch, not inlined
    assert result.baseline_error == pytest.approx(error_by_hand(model, full, held), rel=1e-5)
    assert result.baseline_error > 1e-6
    for unit in result.units:
        kept, _ = quantize_model(model, scales, exclude={unit.node: "test"})
        assert unit.excluded == pytest.approx(error_by_hand(model, kept, held), rel=1e-5, abs=1e-12), unit.node
    assert result.greedy[1].error == result.units[0].excluded
    _, errors = measure_kept(model, scales, held, [[result.units[1].node], []], metric="cosine")
    assert errors == [pytest.approx(result.units[1].excluded, rel=1e-9), pytest.approx(result.baseline_error, rel=1e-9)]


def test_batches_cut_into_parts_give_the_same_numbers_with_the_state_batched_on_axis_1(ranked):
    model, scales, held, result = ranked
    parts = sensitivity(model, scales, held, metric="cosine", executor=SerialExecutor(), max_activation_mb=1e-4)
    assert parts.run["part_samples"] == 1
    assert [u.node for u in parts.units] == [u.node for u in result.units]
    # the same to float32 rounding: onnxruntime's MatMul rounds a 1-row batch a little differently from 8
    assert [(u.excluded, u.alone) for u in parts.units] == [
        (pytest.approx(u.excluded, rel=1e-6, abs=1e-9), pytest.approx(u.alone, rel=1e-6, abs=1e-9))
        for u in result.units]


def test_a_branch_quantize_places_pairs_in_but_the_held_out_data_skips_is_listed_and_exits_1(tmp_path, capsys):
    vad_model(tmp_path / "vad.onnx")
    (tmp_path / "data.py").write_text(DATA_SCRIPT)
    out = tmp_path / "s.json"
    code = main(["sensitivity", str(tmp_path / "vad.onnx"), "--data", f"{tmp_path / 'data.py'}:both",
                 "--eval-data", f"{tmp_path / 'data.py'}:heldout", "--algorithm", "minmax", "--metric", "cosine",
                 "--executor", "serial", "-o", str(out), "--json"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert sorted(u["node"] for u in doc["units"]) == ["mm1_16", "mm2_16"]
    assert doc["if_branches"]["unmeasured_units"] == ["mm1_8", "mm2_8"]
    assert doc["not_ranked"]["mm2_8"].startswith("in the else_branch of If 'rate', which no held-out batch takes")
    assert json.loads(out.read_text())["if_branches"]["unmeasured_units"] == ["mm1_8", "mm2_8"]
    assert main(["report", str(tmp_path / "vad.onnx"), "--sensitivity", str(out), "-o", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Measured inside the then_branch of If &#x27;rate&#x27;" in page and "<h3>Not ranked (2)</h3>" in page
    assert "which no held-out batch takes" in page and "mm1_8, mm2_8</li>" in page


def test_nothing_to_rank_is_one_line_exit_2_with_why(tmp_path, capsys):
    """Held-out batches that take both branches: no branch is inlined, so no unit can be measured."""
    vad_model(tmp_path / "vad.onnx")
    (tmp_path / "data.py").write_text(DATA_SCRIPT)
    code = main(["sensitivity", str(tmp_path / "vad.onnx"), "--data", f"{tmp_path / 'data.py'}:both",
                 "--eval-data", f"{tmp_path / 'data.py'}:mixed", "--executor", "serial",
                 "-o", str(tmp_path / "s.json")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    (line,) = [x for x in err if "nothing to rank" in x]
    assert "whose condition 'is16k' was True on 1 and False on 1 held-out batches" in line
    assert "mm1_16" in line and not (tmp_path / "s.json").exists()


def test_sensitivity_with_no_unit_where_the_data_runs_is_an_error_not_0_units():
    model = vad_model()
    held = [batch(4, 8000, 1)]  # the 8 kHz branch
    result = sensitivity(model, {"x": 4.0}, held, metric="cosine")  # its MatMul on x gets pairs: one unit
    assert [u.node for u in result.units] == ["mm1_8"] and result.chosen_k == 0 and len(result.greedy) == 1
    with pytest.raises(CalibrationError) as refused:
        sensitivity(model, {"r16": 1.0}, held, metric="cosine")  # pairs in the 16 kHz branch only
    text = str(refused.value)
    assert text.startswith("nothing to rank: none of the 4 Conv/ConvTranspose/Gemm/MatMul node(s) gets Q/DQ where "
                           "the held-out data runs: ")
    assert "mm1_8: in the else_branch of If 'rate': no scale for 'x'" in text
    assert "mm1_16: in the then_branch of If 'rate', which no held-out batch takes" in text


def test_weighted_nodes_in_branches_without_scales_are_listed_when_only_the_main_graph_is_ranked():
    """A cache made without looking into the branches: the main graph's unit is ranked, the branch MatMuls named."""
    model = vad_model()
    graph = model.graph
    graph.node.insert(0, helper.make_node("MatMul", ["x", "w_main"], ["xm"], name="mm_main"))
    graph.initializer.append(numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w_main"))
    for attr in graph.node[-1].attribute:
        attr.g.node[0].input[0] = "xm"
    result = sensitivity(model, {"x": 3.0}, [batch(4, 16000, 1)], metric="cosine")
    assert [u.node for u in result.units] == ["mm_main"]
    assert result.not_ranked["mm1_16"] == "in the then_branch of If 'rate': no scale for 'xm'"
    assert set(result.not_ranked) == {"mm1_16", "mm2_16", "mm1_8", "mm2_8"}


def nested_model() -> onnx.ModelProto:
    """An If on sr whose then-branch holds an If on a constant; unnamed MatMuls, labels MatMul_1 in every branch."""
    w = [numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), f"v{i}") for i in range(3)]

    def leaf(tag: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Relu", ["x"], [f"in{tag}"]), helper.make_node("MatMul", [f"in{tag}", weight], [f"o{tag}"])],
            tag, [], [helper.make_tensor_value_info(f"o{tag}", TensorProto.FLOAT, None)])

    inner = helper.make_node("If", ["yes"], ["inner_out"], name="inner", then_branch=leaf("a", "v0"),
                             else_branch=leaf("b", "v1"))
    outer_then = helper.make_graph([inner, helper.make_node("Neg", ["inner_out"], ["t_out"])], "outer_then", [],
                                   [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
         helper.make_node("If", ["is16k"], ["y"], name="outer", then_branch=outer_then, else_branch=leaf("c", "v2"))],
        "nested",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [*w, numpy_helper.from_array(np.array(16000, np.int64), "sr16k"), numpy_helper.from_array(np.array(True), "yes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nested_branches_name_units_by_tensorrt_layer_and_quantize_takes_those_names():
    model = nested_model()
    rng = np.random.default_rng(5)
    cal = [{"x": rng.standard_normal((16, 4)).astype(np.float32), "sr": np.array(sr, np.int64)}
           for sr in (16000, 8000)]
    held = [{"x": rng.standard_normal((16, 4)).astype(np.float32), "sr": np.array(16000, np.int64)}]
    scales = calibrate(model, cal, algorithm="minmax")
    result = sensitivity(model, scales, held, metric="cosine")
    assert [u.node for u in result.units] == ["node_of_oa"]  # MatMul_1 would name three nodes
    assert result.not_ranked["node_of_ob"].startswith("inside the else_branch of If 'inner'")  # never built
    assert "which no held-out batch takes" in result.not_ranked["node_of_oc"]
    assert result.unmeasured == ["node_of_oc"]
    assert layer_names_for(model, ["node_of_oa"]) == {"node_of_oa": "node_of_oa"}
    kept, report = quantize_model(model, scales, exclude={"node_of_oa": "rank 1"})
    assert report.excluded == {"MatMul_1 (then_branch of If 'inner' (in then_branch of If 'outer'))": "rank 1"}
    assert {(n.body, n.quantized) for n in report.nodes if n.op_type == "MatMul"} == {
        ("then_branch of If 'inner' (in then_branch of If 'outer')", False),
        ("else_branch of If 'inner' (in then_branch of If 'outer')", False), ("else_branch of If 'outer'", True)}
    with pytest.raises(ModelError, match=r"'MatMul_1' names 3 nodes inside If/Loop/Scan bodies\. Hint: .*node_of_oa"):
        quantize_model(model, scales, exclude={"MatMul_1": "ambiguous"})


def test_quantize_excludes_nodes_inside_branches_by_name_and_op_type(ranked):
    model, scales, _, _ = ranked
    qdq, report = quantize_model(model, scales, exclude={"mm2_16": "test"})
    then = next(a.g for a in qdq.graph.node[-1].attribute if a.name == "then_branch")
    mm = {n.name: n for n in then.node}
    assert mm["mm2_16"].input[0] == "r16" and mm["mm1_16"].input[0] != "x"  # float input; the other keeps its pair
    assert report.excluded == {"mm2_16 (then_branch of If 'rate')": "test"}
    assert set(exclusions(model, op_types=["MatMul"])) == {"mm1_16", "mm2_16", "mm1_8", "mm2_8"}
    with pytest.raises(CalibrationError, match="nothing left to quantise"):
        quantize_model(model, scales, exclude=exclusions(model, op_types=["MatMul"]))
    with pytest.raises(ModelError, match=r"no node named 'mm3_16'.*did you mean .*mm1_16"):
        quantize_model(model, scales, exclude={"mm3_16": "typo"})


def test_evaluate_counts_the_state_samples_on_its_batch_axis(ranked):
    """stateN is (2, batch, 3): per sample (2, 3), and a task metric gets it joined along axis 1 from parts."""
    model, scales, held, _ = ranked
    qdq, _ = quantize_model(model, scales)
    seen = []

    def metric(fp32, int8):
        seen.append(fp32["stateN"].shape)
        return float(np.abs(fp32["stateN"][0] - int8["stateN"][0]).mean()), False

    from trt_calib.ort.user_metric import UserMetric

    user = UserMetric("state error", metric, takes_batch=False)
    whole = evaluate(model, qdq, held, worst=0, metric=user)
    state = whole.output("stateN")
    assert state.sample_shape == (2, 3) and state.num_samples == 24 and whole.num_samples == 24
    for budget, count in ((1e-4, 8), (1e-3, 4)):  # parts of 2 samples: stateN (2, 2, 3) is joined on axis 1, not 0
        seen.clear()
        parts = evaluate(model, qdq, held, worst=0, metric=user, max_activation_mb=budget)
        assert parts.num_parts == count and seen == [(2, 8, 3)] * 3
        assert parts.metric["value"] == pytest.approx(whole.metric["value"], rel=1e-6)


# ---------------------------------------------------------------------------------------------- report
def test_report_shows_the_branch_tensors_calibrate_covers_and_lists_the_rest(tmp_path, capsys):
    """The report showed main-graph tensors only (x, state, y, stateN) while calibrate covers the branch taken."""
    from trt_calib.tools.report import build_report

    model = vad_model(tmp_path / "vad.onnx")
    cal = [batch(64, 16000, s) for s in range(3)]
    result = build_report(model, tmp_path / "rep", batches=cal)
    bodies = {s.name: s.body for s in result.summaries}
    assert {"h16", "r16", "o16", "a16", "st16"} <= set(bodies) and not any(n.endswith("8") for n in bodies)
    assert bodies["r16"] == "then_branch of If 'rate'" and bodies["y"] == ""
    calibrated = calibrate(model, cal)  # the same collect functions: the same threshold
    amax = {s.name: s.amax for s in result.summaries}
    for name in ("h16", "r16", "o16", "st16"):
        assert amax[name] == pytest.approx(calibrated.amax[name], rel=1e-6), name
    assert set(result.left_out) == set(calibrated.uncovered) == {"h8", "r8", "o8", "s8", "a8", "u8", "st8"}
    assert result.left_out["r8"].startswith("in the else_branch of If 'rate', which no calibration batch took")
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [t["name"] for t in doc["left_out"]] == ["h8", "r8", "o8", "s8", "a8", "u8", "st8"]
    assert next(t for t in doc["tensors"] if t["name"] == "r16")["body"] == "then_branch of If 'rate'"
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Not in this report (7 tensors)" in page and "7 tensors in the else_branch of If &#x27;rate&#x27;" in page

    (tmp_path / "data.py").write_text(DATA_SCRIPT)
    cli = ["report", str(tmp_path / "vad.onnx"), "--no-progress", "--json"]
    assert main([*cli, "--data", str(tmp_path / "data.py"), "-o", str(tmp_path / "r1")]) == 1  # written, not clean
    assert len(json.loads(capsys.readouterr().out)["left_out"]) == 7
    assert main([*cli, "--data", f"{tmp_path / 'data.py'}:both", "-o", str(tmp_path / "r2")]) == 0
    assert json.loads(capsys.readouterr().out)["left_out"] == []
    # saved histograms of a calibration hold the branch tensors: none of them is a stranger to the model
    assert main(["calibrate", str(tmp_path / "vad.onnx"), "--data", str(tmp_path / "data.py"), "-q",
                 "--cache", str(tmp_path / "c.cache"), "--save-histograms", str(tmp_path / "h.npz")]) == 1
    assert main([*cli, "--histograms", str(tmp_path / "h.npz"), "-o", str(tmp_path / "r3")]) == 1
    doc = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert {"r16", "st16"} <= {t["name"] for t in doc["tensors"]} and len(doc["left_out"]) == 7


def test_stability_counts_samples_on_each_inputs_batch_axis_and_the_metric_sees_the_state_whole(tmp_path):
    from trt_calib.tools.stability import run_stability

    model = vad_model(tmp_path / "vad.onnx")
    rng = np.random.default_rng(4)
    samples = {"x": rng.standard_normal((32, 4)).astype(np.float32),
               "state": rng.standard_normal((2, 32, 3)).astype(np.float32), "sr": np.array(16000, np.int64)}
    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import numpy as np

        def metric(fp32, int8):
            n = fp32["y"].shape[0]
            assert fp32["stateN"].shape == (2, n, 3) == int8["stateN"].shape, fp32["stateN"].shape
            return float(np.mean(np.sign(fp32["y"]) == np.sign(int8["y"]))), True
    """))
    result = run_stability(model, samples, batch_size=8, orders=1, batch_sizes=(16,), fractions=(1.0,),
                           metric=str(tmp_path / "m.py"), max_activation_mb=1e-4)
    doc = result.to_json()
    assert doc["num_samples"] == 32
    rows = doc["end_to_end"]["variants"]
    assert rows and all(r["num_samples"] == 32 and 0.5 < r["task_metric"] <= 1 for r in rows)
    assert {"h16", "r16"} <= {t["name"] for t in doc["tensors"]}  # the branch the data takes is calibrated
