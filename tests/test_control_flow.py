"""If, Loop and Scan bodies: calibrated where onnxruntime can reach them, reported where it cannot, kept by quantize.

The models reproduce silero-vad's patterns at toy size: every weighted op inside an If on a rank-0 `sr`, weights
that only the branches read (main-graph initializers), a state input whose batch axis is 1.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LENET
from trt_calib.cli import main
from trt_calib.errors import CalibrationError
from trt_calib.ort.collect import calibrate
from trt_calib.ort.control_flow import body_tensors, fold_ifs
from trt_calib.ort.model import float_types, model_inputs, tensor_types
from trt_calib.qdq import quantize_model
from trt_calib.tools.validate import validate_cache

RNG = np.random.default_rng(7)
W16 = RNG.standard_normal((4, 3)).astype(np.float32)
W8 = RNG.standard_normal((4, 3)).astype(np.float32) * 3


def _branch(tag: str, weight: str, act: str) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Mul", ["x", "half"], [f"p{tag}"]),
        helper.make_node("MatMul", [f"p{tag}", weight], [f"h{tag}"]),
        helper.make_node(act, [f"h{tag}"], [f"r{tag}"]),
        helper.make_node("Gather", ["state", "zero"], [f"s{tag}"], axis=0),
        helper.make_node("Add", [f"r{tag}", f"s{tag}"], [f"a{tag}"]),
        helper.make_node("Unsqueeze", [f"a{tag}", "axes0"], [f"u{tag}"]),
        helper.make_node("Concat", [f"u{tag}", f"u{tag}"], [f"st{tag}"], axis=0),
    ]
    outputs = [helper.make_tensor_value_info(f"a{tag}", TensorProto.FLOAT, None),
               helper.make_tensor_value_info(f"st{tag}", TensorProto.FLOAT, None)]
    return helper.make_graph(nodes, f"branch{tag}", [], outputs)


def if_model(path=None, *, constant: bool | None = None) -> onnx.ModelProto:
    """x (batch, 4), state (2, batch, 3), sr (): y, stateN = the 16 kHz branch if sr == 16000 else the 8 kHz one.

    W16 and W8 are main-graph initializers that only the branches read. `constant` makes the condition an
    initializer instead (TensorRT's parser then keeps only the taken branch)."""
    inits = [numpy_helper.from_array(W16, "W16"), numpy_helper.from_array(W8, "W8"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array(16000, np.int64), "sr16k"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = []
    if constant is None:
        nodes.append(helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]))
    else:
        inits.append(numpy_helper.from_array(np.array(constant), "is16k"))
    nodes.append(helper.make_node("If", ["is16k"], ["y", "stateN"], name="rate",
                                  then_branch=_branch("16", "W16", "Relu"), else_branch=_branch("8", "W8", "Sigmoid")))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3])]
    if constant is None:
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
               helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 3])]
    model = helper.make_model(helper.make_graph(nodes, "vad", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, str(path))
    return model


def batch(n: int, sr: int | None, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"x": rng.standard_normal((n, 4)).astype(np.float32),
           "state": rng.standard_normal((2, n, 3)).astype(np.float32)}
    if sr is not None:
        out["sr"] = np.array(sr, np.int64)
    return out


def branch_values(b: dict[str, np.ndarray], rate16: bool) -> dict[str, np.ndarray]:
    """The branch tensors of one batch, computed with numpy."""
    tag, w = ("16", W16) if rate16 else ("8", W8)
    p = b["x"] * np.float32(0.5)
    h = p @ w
    r = np.maximum(h, 0) if rate16 else 1 / (1 + np.exp(-h))
    a = r + b["state"][0]
    return {f"p{tag}": p, f"h{tag}": h, f"r{tag}": r, f"a{tag}": a, f"u{tag}": a[None], f"st{tag}": np.stack([a, a])}


def test_the_specs_find_state_batch_axis_and_sr_is_not_batched():
    specs = {s.name: s for s in model_inputs(if_model())}
    assert (specs["x"].batch_axis, specs["state"].batch_axis, specs["sr"].batch_axis) == (0, 1, None)


def test_body_tensors_are_those_trt_names_in_both_branches_of_a_runtime_if():
    model = if_model()
    body = body_tensors(model, tensor_types(model), float_types())
    assert [b.name for b in body] == ["p16", "h16", "r16", "s16", "a16", "u16", "st16",
                                      "p8", "h8", "r8", "s8", "a8", "u8", "st8"]
    assert body[0].where == "then_branch of If 'rate'" and body[-1].where == "else_branch of If 'rate'"
    assert not any(b.in_loop or b.duplicate for b in body)


def test_a_constant_condition_keeps_the_taken_branch_without_its_outputs_which_take_the_if_names():
    """onnx-tensorrt importIf: a weights condition parses only the taken branch; parseNode renames its outputs."""
    model = if_model(constant=False)
    assert [b.name for b in body_tensors(model, tensor_types(model), float_types())] == ["p8", "h8", "r8", "s8", "u8"]
    folded, undecided = fold_ifs(model, {})
    assert undecided == [] and "If" not in {n.op_type for n in folded.graph.node}
    result = calibrate(model, [batch(4, None, 1), batch(4, None, 2)], algorithm="minmax")
    assert result.uncovered == {}
    assert {"h8", "r8", "s8", "u8", "y", "stateN"} <= set(result.amax) and "a8" not in result.amax
    want = max(float(np.abs(branch_values(b, False)["r8"]).max()) for b in (batch(4, None, 1), batch(4, None, 2)))
    assert result.amax["r8"] == pytest.approx(want, rel=1e-6)


def test_calibrate_covers_the_branch_the_data_takes_and_reports_the_other():
    batches = [batch(4, 16000, s) for s in range(3)]
    result = calibrate(if_model(), batches, algorithm="minmax")
    for name in ("h16", "r16", "a16", "st16"):
        want = max(float(np.abs(branch_values(b, True)[name]).max()) for b in batches)
        assert result.amax[name] == pytest.approx(want, rel=1e-6), name
    assert sorted(result.uncovered) == ["a8", "h8", "p8", "r8", "s8", "st8", "u8"]
    assert result.uncovered["r8"].startswith("in the else_branch of If 'rate', which no calibration batch took")
    assert not any(n.endswith("8") for n in result.amax)
    assert result.to_json()["uncovered"][0]["name"] == "p8"


def test_batches_that_take_different_branches_each_calibrate_their_own_branch():
    """The condition is checked on every run: a batch whose sr differs from the last runs on its own branch, and a
    branch tensor's histogram holds only the batches that took that branch (as TensorRT's IIfConditional runs)."""
    batches = [batch(4, 16000, 0), batch(4, 8000, 1), batch(4, 8000, 2), batch(4, 16000, 3)]
    result = calibrate(if_model(), batches, algorithm="minmax")
    assert result.uncovered == {}
    for rate16, picked in ((True, [0, 3]), (False, [1, 2])):
        for name in branch_values(batches[0], rate16):
            want = max(float(np.abs(branch_values(batches[i], rate16)[name]).max()) for i in picked)
            assert result.amax[name] == pytest.approx(want, rel=1e-6), name
            assert result.histograms[name].num_batches == 2
    # y is the If's output: every batch, whichever branch made it
    want = max(float(np.abs(branch_values(b, b["sr"] == 16000)["a16" if b["sr"] == 16000 else "a8"]).max())
               for b in batches)
    assert result.amax["y"] == pytest.approx(want, rel=1e-6)


def test_a_batch_run_in_parts_and_sharded_runs_give_the_same_cache(tmp_path):
    from trt_calib.ort.executor import make_executor

    batches = [batch(6, 16000, 0), batch(6, 8000, 1), batch(6, 16000, 2)]
    whole = calibrate(if_model(), batches)
    parts = calibrate(if_model(), batches, max_activation_mb=1e-4)  # one sample per part
    assert parts.cache.to_bytes() == whole.cache.to_bytes()
    with make_executor("local", workers=2) as executor:
        assert calibrate(if_model(), batches, executor=executor).cache.to_bytes() == whole.cache.to_bytes()


def loop_model() -> onnx.ModelProto:
    """x (batch, 4) -> Loop (2 iterations): v = Relu(v @ W); the weighted op sits inside the Loop body."""
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "W"], ["mm"]), helper.make_node("Relu", ["mm"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", 4])],
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["rx"]),
         helper.make_node("Loop", ["trips", "go", "rx"], ["v"], name="steps", body=body)],
        "looped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(2, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "go")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_loop_bodies_are_reported_not_silently_skipped(tmp_path):
    model = loop_model()
    result = calibrate(model, [{"x": np.ones((2, 4), np.float32)}])
    assert set(result.amax) == {"x", "rx", "v"}
    assert sorted(result.uncovered) == ["mm", "v_in", "v_out"]
    assert "body of Loop 'steps'" in result.uncovered["mm"] and "per-iteration" in result.uncovered["mm"]
    path = tmp_path / "loop.onnx"
    onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    assert main(["calibrate", str(path), "--data", str(tmp_path / "x.npy"), "--cache", str(tmp_path / "c.cache"),
                 "--batch-size", "2"]) == 1  # written, but not a clean success
    report = validate_cache(tmp_path / "c.cache", path)
    (finding,) = [f for f in report.findings if f["code"] == "body-not-covered"]
    assert finding["severity"] == "warning" and finding["tensors"] == ["v_in", "mm", "v_out"]
    assert "Loop/Scan body" in finding["message"]
    with pytest.raises(CalibrationError, match=r"every Conv/ConvTranspose/Gemm/MatMul sits inside a Loop/Scan body"):
        quantize_model(model, result)


def test_cli_calibrate_writes_branch_entries_and_exits_1_while_a_branch_is_uncovered(tmp_path, capsys):
    path = tmp_path / "vad.onnx"
    if_model(path)
    b = batch(8, None, 0)
    np.savez(tmp_path / "d.npz", x=b["x"], state=b["state"], sr=np.array(16000, np.int64))
    cache = tmp_path / "c.cache"
    code = main(["calibrate", str(path), "--data", str(tmp_path / "d.npz"), "--cache", str(cache), "--batch-size", "4",
                 "--json"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in doc["tensors"]} >= {"x", "state", "y", "stateN", "h16", "r16", "a16", "st16"}
    assert [u["name"] for u in doc["uncovered"]] == ["p8", "h8", "r8", "s8", "a8", "u8", "st8"]
    report = validate_cache(cache, path)
    (finding,) = [f for f in report.findings if f["code"] == "body-not-covered"]
    assert finding["body"] == "else_branch of If 'rate'" and len(finding["tensors"]) == 7
    assert report.coverage["body_tensors"] == 14 and report.coverage["body_covered"] == 7
    assert not [f for f in report.findings if f["code"] == "not-in-model"]


def test_validate_flags_a_cache_made_without_looking_into_the_branches(tmp_path):
    path = tmp_path / "vad.onnx"
    if_model(path)
    cache = tmp_path / "main_only.cache"
    cache.write_text("TRT-8601-EntropyCalibration2\nx: 3c010a14\nstate: 3c010a14\ny: 3c010a14\nstateN: 3c010a14\n")
    report = validate_cache(cache, path)
    found = [f for f in report.findings if f["code"] == "body-not-covered"]
    assert [f["body"] for f in found] == ["then_branch of If 'rate'", "else_branch of If 'rate'"]
    assert report.exit_code == 1


def test_quantize_places_qdq_in_the_branches_and_keeps_the_weights_only_branches_read():
    """Before: the weights only the branches read were dropped and onnx.checker refused the model."""
    batches = [batch(4, 16000, 0), batch(4, 8000, 1)]
    model = if_model()
    qdq, report = quantize_model(model, calibrate(model, batches))  # runs onnx.checker (full)
    branches = {a.name: a.g for a in qdq.graph.node[-1].attribute}
    for name, g in branches.items():
        ops = [n.op_type for n in g.node]
        assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2, name  # x pair + weight
    rows = {(n.node, n.body) for n in report.nodes if n.op_type == "MatMul" and n.quantized}
    assert len(rows) == 2 and {b for _, b in rows} == {"then_branch of If 'rate'", "else_branch of If 'rate'"}
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in batches:
        y = session.run(["y"], b)[0]
        want = branch_values(b, bool(b["sr"] == 16000))["a16" if b["sr"] == 16000 else "a8"]
        assert np.abs(y - want).max() < 0.1 * np.abs(want).max()
    assert not report.unmapped_entries


def test_cli_quantize_exits_1_while_a_branch_has_no_scale_and_0_once_the_data_takes_both(tmp_path, capsys):
    path = tmp_path / "vad.onnx"
    if_model(path)
    b = batch(8, None, 0)
    np.savez(tmp_path / "d16.npz", x=b["x"], state=b["state"], sr=np.array(16000, np.int64))
    cmd = ["quantize", str(path), "--batch-size", "4", "--json"]
    assert main([*cmd, "--data", str(tmp_path / "d16.npz"), "-o", str(tmp_path / "q16.onnx")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["body_gaps"] == ["MatMul_1 (else_branch of If 'rate'): no scale for 'p8'"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "q16.onnx")), full_check=True)  # written, and valid
    (tmp_path / "mixed.py").write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for sr in (16000, 8000, 16000):\n"
        "        yield {'x': rng.standard_normal((4, 4)).astype(np.float32),\n"
        "               'state': rng.standard_normal((2, 4, 3)).astype(np.float32), 'sr': np.array(sr)}\n"
    )
    assert main(["quantize", str(path), "--json", "--data", str(tmp_path / "mixed.py"),
                 "-o", str(tmp_path / "q.onnx")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["body_gaps"] == [] and sum(n["quantized"] for n in doc["nodes"] if n["op_type"] == "MatMul") == 2


def test_a_branch_only_other_shapes_take_says_so():
    """silero's op15 export squeezes when the batch is 1: data batched by 4 never takes that branch."""
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["one"])], "then", [],
                             [helper.make_tensor_value_info("one", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["many"])], "else", [],
                              [helper.make_tensor_value_info("many", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
         helper.make_node("Equal", ["n", "one_i"], ["single"]),
         helper.make_node("If", ["single"], ["y"], name="squeeze_if_single", then_branch=then, else_branch=other)],
        "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one_i")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = calibrate(model, [{"x": np.ones((4, 3), np.float32)}, {"x": np.ones((4, 3), np.float32)}])
    assert list(result.uncovered) == ["one"] and "many" in result.amax
    assert "depends on tensor shapes only" in result.uncovered["one"]
    result = calibrate(model, [{"x": np.ones((4, 3), np.float32)}, {"x": np.ones((1, 3), np.float32)}])
    assert result.uncovered == {} and result.histograms["one"].num_batches == 1


def nested_model() -> onnx.ModelProto:
    """An If (on sr) whose then-branch holds another If (on a constant), each branch with its own MatMul."""
    w = [numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), f"w{i}") for i in range(3)]

    def leaf(tag: str, weight: str, source: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Relu", [source], [f"in{tag}"]), helper.make_node("MatMul", [f"in{tag}", weight], [f"o{tag}"])],
            tag, [], [helper.make_tensor_value_info(f"o{tag}", TensorProto.FLOAT, None)])

    inner = helper.make_node("If", ["yes"], ["inner_out"], name="inner", then_branch=leaf("a", "w0", "x"),
                             else_branch=leaf("b", "w1", "x"))
    outer_then = helper.make_graph([inner, helper.make_node("Neg", ["inner_out"], ["t_out"])], "outer_then", [],
                                   [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
         helper.make_node("If", ["is16k"], ["y"], name="outer", then_branch=outer_then,
                          else_branch=leaf("c", "w2", "x"))],
        "nested",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [*w, numpy_helper.from_array(np.array(16000, np.int64), "sr16k"), numpy_helper.from_array(np.array(True), "yes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_nested_branches_calibrate_and_quantize_and_a_constant_ifs_other_branch_is_no_gap():
    model = nested_model()
    rng = np.random.default_rng(11)
    batches = [{"x": rng.standard_normal((16, 4)).astype(np.float32), "sr": np.array(sr, np.int64)}
               for sr in (16000, 8000, 16000)]
    result = calibrate(model, batches, algorithm="minmax")  # 16 values a branch: too few for entropy's search
    assert {"ina", "inner_out", "t_out", "inc", "oc"} <= set(result.amax)
    assert result.uncovered == {}  # the inner If's else-branch does not exist for TensorRT: nothing to report
    assert "inb" not in result.amax and "oa" not in result.amax  # oa: TensorRT names it inner_out
    qdq, report = quantize_model(model, result)
    assert report.body_gaps == []
    quantized = {(n.node, n.body) for n in report.nodes if n.op_type == "MatMul" and n.quantized}
    assert quantized == {("MatMul_1", "then_branch of If 'inner' (in then_branch of If 'outer')"),
                         ("MatMul_1", "else_branch of If 'outer'")}
    (skipped,) = [n for n in report.nodes if n.op_type == "MatMul" and not n.quantized]
    assert "which TensorRT does not build" in skipped.reason
    inner = [a.g for a in [a.g for a in qdq.graph.node[-1].attribute if a.name == "then_branch"][0].node[0].attribute
             if a.name == "then_branch"][0]
    assert [n.op_type for n in inner.node].count("QuantizeLinear") == 1  # rewritten in place, kept by the outer copy
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in batches:
        want = reference.run(["y"], b)[0]
        assert np.abs(session.run(["y"], b)[0] - want).max() < 0.03 * np.abs(want).max()


def test_a_model_without_control_flow_skips_the_body_search(monkeypatch):
    """No If/Loop/Scan at the top level means no bodies: calibrate does not infer shapes again to look for them."""
    import trt_calib.ort.collect as collect

    def boom(*_, **__):
        raise AssertionError("searched bodies of a model without control flow")

    monkeypatch.setattr(collect, "body_tensors", boom)
    monkeypatch.setattr(collect, "tensor_types", boom)
    model = onnx.load(str(LENET))
    result = collect.calibrate(model, [{"data": np.random.default_rng(0).random((2, 1, 28, 28), np.float32)}])
    assert result.uncovered == {} and len(result.amax) > 5
