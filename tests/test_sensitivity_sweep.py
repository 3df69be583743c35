"""Sensitivity at real-model scale (issue 20): each variant runs only the nodes its change reaches, screening picks
the units worth measuring, batches run in parts under the activation budget, and nothing measured is lost on
Ctrl-C (`--resume`). Also: task metrics, rank-0 inputs, never every unit in float, units without usable scales
listed, non-finite FP32 outputs refused (issues 19, 22, 23)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LENET, LENET_IMAGES, REPO, TRT_TABLE
from trt_calib.cli import main
from trt_calib.errors import CalibrationError, DataError, ModelError, UsageError
from trt_calib.ort.collect import calibrate
from trt_calib.ort.executor import make_executor
from trt_calib.ort.model import tensor_types
from trt_calib.ort.runner import Runner, SuffixRunner, cut_model, downstream
from trt_calib.qdq import qdq_session, quantize_model
from trt_calib.qdq.quantize import prepare_model
from trt_calib.qdq.sensitivity import (
    FORMAT,
    PARTIAL_FORMAT,
    _rewritten,
    load_sensitivity,
    read_partial,
    sensitivity,
)


# ---------------------------------------------------------------------------------------------- a branching model
def dag_model(classes: int = 5) -> onnx.ModelProto:
    """Conv -> Relu feeding two Convs; a residual Add; a Concat of two branches into a Conv; pooling, a Gemm to the
    logits, and a second output straight from one branch (so some changes reach only one output)."""
    rng = np.random.default_rng(7)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w(4, 3, 3, 3)), ("w2", w(4, 4, 3, 3)), ("w3", w(4, 4, 3, 3)), ("w4", w(6, 8, 3, 3)),
        ("w5", w(classes, 6)), ("b5", np.zeros(classes, np.float32)))]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2", **pads),
        helper.make_node("Conv", ["r1", "w3"], ["c3"], name="c3", **pads),
        helper.make_node("Add", ["c2", "r1"], ["add"], name="add"),
        helper.make_node("Concat", ["add", "c3"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w4"], ["c4"], name="c4", **pads),
        helper.make_node("Relu", ["c4"], ["r4"], name="r4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "w5", "b5"], ["y"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["c3"], ["z"], name="z"),
    ]
    graph = helper.make_graph(nodes, "dag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def dag_batches(seed: int, count: int = 2, size: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((size, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def dag():
    model = dag_model()
    return model, calibrate(model, dag_batches(1, 3)), dag_batches(2)


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - cos per sample, written out independently of the module under test."""
    a = x.reshape(len(x), -1).astype(np.float64)
    b = y.reshape(len(y), -1).astype(np.float64)
    return 1 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def whole_model_error(model, scales, held, weights, activations) -> float:
    """The variant built whole (every node run) and scored by hand: mean over outputs of the mean 1 - cos."""
    prepared = prepare_model(model, scales)
    variant = _rewritten(prepared.work, prepared.plan.restricted(weights=weights, activations=activations))
    ours, ref = qdq_session(variant), qdq_session(prepared.work)
    outputs = [o.name for o in prepared.work.graph.output]
    per_output = []
    for k in range(len(outputs)):
        errors = np.concatenate([cosine(ref.run(None, b)[k], ours.run(None, b)[k]) for b in held])
        per_output.append(errors.mean())
    return float(np.mean(per_output))


# ---------------------------------------------------------------------------------------------- ort.runner
def test_a_cut_model_fed_by_a_reference_run_gives_the_whole_models_outputs_bit_for_bit(dag):
    model, _, held = dag
    types = tensor_types(model)
    index = {n.name: i for i, n in enumerate(model.graph.node)}
    cone = downstream(model.graph, [index["c2"]])  # c2's branch: not c3, not z
    assert [model.graph.node[i].name for i in cone] == ["c2", "add", "cat", "c4", "r4", "gap", "flat", "fc"]
    cut, order = cut_model(model, cone, ["y"], types=types)
    assert order == cone and [i.name for i in cut.graph.input] == ["r1", "c3"]  # what the cone reads from the rest
    suffix = SuffixRunner.open(cut, threads=1)
    reference = Runner.open(model, ["r1", "c3", "y"], threads=1, budget_bytes=1 << 30, optimize=False)
    for batch in held:
        values = reference.run(batch)
        np.testing.assert_array_equal(suffix.run(values)["y"], values["y"])
    with pytest.raises(CalibrationError, match="no value for its input 'c3'"):
        suffix.run({"r1": values["r1"]})


def test_cut_models_keep_constant_nodes_and_outer_scope_reads_of_if_bodies():
    then = helper.make_graph([helper.make_node("Add", ["a", "k"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(2, np.float32))),
         helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert downstream(model.graph, [1]) == [1, 2]  # the If reads `a` inside its body
    cut, order = cut_model(model, [2], ["y"], types=tensor_types(model))
    assert order == [0, 2] and [i.name for i in cut.graph.input] == ["c", "a"]  # the Constant came along
    got = SuffixRunner.open(cut, threads=1).run({"a": np.array([1, 2], np.float32), "c": np.array(True)})
    np.testing.assert_array_equal(got["y"], [2, 3])


# ---------------------------------------------------------------------------------------------- cones = whole runs
def test_every_number_is_the_whole_variants_error_on_a_branching_model(dag):
    model, scales, held = dag
    result = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates="all")
    index = {n.name: i for i, n in enumerate(model.graph.node)}
    every = frozenset(index[u.node] for u in result.units)
    assert sorted(u.node for u in result.units) == ["add", "c1", "c2", "c3", "c4", "fc"]
    assert result.baseline_error == pytest.approx(whole_model_error(model, scales, held, every, every), rel=1e-9)
    for unit in result.units:
        one = frozenset([index[unit.node]])
        expected = {
            "alone": (one, one), "excluded": (every - one, every - one),
            "activations_only": (frozenset(), one), "weights_only": (one, frozenset()),
        }
        for name, (w, a) in expected.items():
            got = getattr(unit, name)
            if unit.op == "Add" and name in ("weights_only", "activations_only"):
                assert got == (None if name == "weights_only" else unit.alone)
                continue
            assert got == pytest.approx(whole_model_error(model, scales, held, w, a), rel=1e-9), (unit.node, name)
    two = frozenset(index[n] for n in result.greedy[2].kept_in_float)
    assert result.greedy[2].error == pytest.approx(
        whole_model_error(model, scales, held, every - two, every - two), rel=1e-9)


def test_batches_cut_to_the_activation_budget_give_the_same_numbers(dag):
    model, scales, held = dag
    whole = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates="all")
    parted = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates="all",
                         max_activation_mb=2 * 4 * 8 * 8 * 30 / 2**20)  # a few samples' activations
    assert whole.run["part_samples"] is None and 1 <= parted.run["part_samples"] < 6
    assert [u.node for u in parted.units] == [u.node for u in whole.units]
    # the same to float32 rounding: onnxruntime's Gemm rounds a 1-row batch (GEMV) a little differently from 6
    for a, b in zip(whole.units, parted.units):
        for name in ("alone", "excluded", "weights_only", "activations_only"):
            if getattr(a, name) is None:  # the Add has no weights
                assert getattr(b, name) is None
                continue
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-6, abs=1e-9), (a.node, name)
    assert [p.error for p in parted.greedy] == pytest.approx([p.error for p in whole.greedy], rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------------- screening
def test_screening_measures_the_units_with_the_largest_local_error_and_says_the_rest_are_estimates(dag):
    model, scales, held = dag
    full = sensitivity(model, scales, held, metric="cosine", max_keep=1, candidates="all")
    screened = sensitivity(model, scales, held, metric="cosine", max_keep=1, candidates=3)
    assert len(screened.units) == 3 and len(screened.screened_out) == 3
    local = {u.node: u.local_error for u in screened.units} | {
        u["node"]: u["local_error"] for u in screened.screened_out}
    # the local error: noise over signal power at the unit's own output, it alone in INT8, FP32 inputs
    prepared = prepare_model(model, scales)
    index = {n.name: i for i, n in enumerate(model.graph.node)}
    for name, value in local.items():
        one = frozenset([index[name]])
        alone = _rewritten(prepared.work, prepared.plan.restricted(weights=one, activations=one))
        out = model.graph.node[index[name]].output[0]
        got = qdq_session(alone, outputs=[out])
        ref = qdq_session(model, outputs=[out])
        # the unit's output read from the whole model: its inputs are FP32 there, as in the screen
        x = np.concatenate([ref.run([out], b)[0] for b in held]).astype(np.float64)
        y = np.concatenate([got.run([out], b)[0] for b in held]).astype(np.float64)
        assert value == pytest.approx(np.sum((y - x) ** 2) / np.sum(x ** 2), rel=1e-9), name
    largest = sorted(local, key=local.get, reverse=True)
    assert sorted(u.node for u in screened.units) == sorted(largest[:3])
    assert [u["node"] for u in screened.screened_out] == largest[3:]
    by_node = {u.node: u for u in full.units}
    for u in screened.units:  # the measured ones are real measurements: the same as with every unit measured
        assert (u.alone, u.excluded, u.weights_only) == (by_node[u.node].alone, by_node[u.node].excluded,
                                                         by_node[u.node].weights_only)
    doc = screened.to_json()
    assert doc["screening"]["measured"] == 3 and doc["screening"]["units"] == 6
    assert "estimate" in doc["screening"]["how"] and all(u["measured"] for u in doc["units"])
    assert [u["node"] for u in doc["screened_out"]] == largest[3:]
    assert "not measured: " in screened.table()
    assert full.screened_out == [] and "every unit measured" in full.to_json()["screening"]["how"]
    back = load_sensitivity_roundtrip(screened)
    assert back.screened_out == screened.to_json()["screened_out"]


def load_sensitivity_roundtrip(result):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.json"
        path.write_text(json.dumps(result.to_json()))
        return load_sensitivity(path)


def test_results_are_the_same_on_serial_and_local_executors_with_screening(dag):
    model, scales, held = dag
    docs = []
    for kind in ("serial", "local"):
        with make_executor(kind, workers=None if kind == "serial" else 2) as ex:
            doc = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates=3, executor=ex).to_json()
        doc.pop("run")
        docs.append(json.dumps(doc, sort_keys=True))
    assert docs[0] == docs[1]


def test_cones_run_side_by_side_give_the_same_json_as_one_at_a_time(dag, monkeypatch):
    import threading

    import trt_calib.qdq.sensitivity as sens

    model, scales, held = dag
    assert sens.cone_lanes(2, 13) == (2, 1) and sens.cone_lanes(16, 13) == (2, 8) and sens.cone_lanes(2, 1) == (1, 2)
    seen: set[str] = set()
    run = SuffixRunner.run

    def spy(self, values):
        seen.add(threading.current_thread().name)
        return run(self, values)

    monkeypatch.setattr(SuffixRunner, "run", spy)
    docs = []
    for lanes in (1, 2):
        monkeypatch.setattr(sens, "cone_lanes", lambda threads, cones, n=lanes: (min(n, cones), 1))
        seen.clear()
        doc = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates="all").to_json()
        assert any(n.startswith("trt-calib-cone") for n in seen) == (lanes == 2)
        doc.pop("run")
        docs.append(json.dumps(doc, sort_keys=True))
    assert docs[0] == docs[1]


def test_tasks_are_cut_to_about_equal_cone_cost_and_the_costliest_go_first(dag, monkeypatch):
    import trt_calib.qdq.sensitivity as sens
    from trt_calib.ort.executor import SerialExecutor

    model, scales, held = dag
    prepared = prepare_model(model, scales)
    index = {n.name: i for i, n in enumerate(prepared.work.graph.node)}
    _, cost = sens._variant_sizes(prepared)
    one = lambda name: frozenset([index[name]])  # noqa: E731
    # multiply-adds per sample by hand (N = 1): the Gemm alone is 5 outputs x 6 inputs; c3 reaches c3 (4x8x8 outputs,
    # 4x3x3 weights each), the Concat, c4 (6x8x8, 8x3x3), Relu, pooling, Flatten, the Gemm and the Sigmoid
    assert cost(sens._Variant("a", one("fc"), one("fc"), sens._FP32)) == 5 * 6
    c3 = 256 * 36 + 512 + 384 * 72 + 384 + 6 + 6 + 30 + 256
    assert cost(sens._Variant("b", one("c3"), one("c3"), sens._FP32)) == c3
    assert cost(sens._Variant("c", one("c3"), one("c3"), sens._FP32, local=True)) == 0

    tasks = []

    class Recording(SerialExecutor):
        def map(self, fn, items, **kwargs):
            items = list(items)
            tasks.append([sum(cost(v) for v in chunk) for _, chunk in items])
            return super().map(fn, items, **kwargs)

    sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates="all", executor=Recording())
    costs = max(tasks, key=len)  # the phase with every unit's four fields and the baseline, in 2 tasks or more
    assert len(costs) >= 2 and costs == sorted(costs, reverse=True)
    assert max(costs) <= 1.05 * sum(costs) / 2  # a task's share: the serial executor cuts a phase in 2


# ---------------------------------------------------------------------------------------------- nothing lost
def test_a_partial_document_after_every_round_and_resume_gives_the_same_result(dag):
    model, scales, held = dag
    partials = []
    first = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates=3, checkpoint=partials.append)
    assert len(partials) >= 4 and all(p["partial"] and p["format"] == PARTIAL_FORMAT for p in partials)
    done = [p["runs_done"] for p in partials]
    assert done == sorted(done) and done[-1] == first.run["runs"]
    middle = json.loads(json.dumps(partials[len(partials) // 2]))  # as it comes back from the file
    resumed = sensitivity(model, scales, held, metric="cosine", max_keep=2, candidates=3, resume=middle)
    assert resumed.run["resumed_runs"] == middle["runs_done"]
    assert resumed.run["runs"] == first.run["runs"] - middle["runs_done"]
    a, b = first.to_json(), resumed.to_json()
    a.pop("run"), b.pop("run")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    with pytest.raises(UsageError, match=r"other settings \(max_keep differ\)"):
        sensitivity(model, scales, held, metric="cosine", max_keep=1, candidates=3, resume=middle)
    with pytest.raises(UsageError, match=r"heldout_sha256"):
        sensitivity(model, scales, held[:1], metric="cosine", max_keep=2, candidates=3, resume=middle)


SLOW_METRIC = """
import time
import numpy as np

def metric(fp32, int8):
    time.sleep({sleep})
    a, b = fp32["prob"], int8["prob"]
    return float(np.mean(a.argmax(1) == b.argmax(1))), True
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_ctrl_c_keeps_every_finished_run_and_resume_finishes_the_same_json(tmp_path, executor):
    np.save(tmp_path / "d.npy", np.load(LENET_IMAGES)[:300].astype(np.float32)[:, None] / np.float32(255.0))
    (tmp_path / "m.py").write_text(SLOW_METRIC.format(sleep=0.05))
    common = ["sensitivity", str(LENET), "--trt-version", "10.16.1", "--data", str(tmp_path / "d.npy"),
              "--batch-size", "50", "--calib-batches", "2", "--metric", str(tmp_path / "m.py"), "--candidates", "all",
              "--max-keep", "3", "-q"]
    serial = [*common, "--executor", "serial"]
    common += ["--executor", executor] + (["--workers", "2"] if executor == "local" else [])
    out = tmp_path / "s.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "trt_calib", *common, "-o", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        children |= _children(proc.pid)
        if out.exists() and json.loads(out.read_text() or "{}").get("partial"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    children |= _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr and str(out) in stderr, stderr
    partial = read_partial(out)
    assert partial["partial"] and partial["runs_done"] >= 1
    with pytest.raises(DataError, match="an unfinished sensitivity sweep"):
        load_sensitivity(out)
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "worker processes outlived the command"

    assert main([*common, "-o", str(out), "--resume"]) == 0
    resumed = json.loads(out.read_text())
    assert resumed["format"] == FORMAT and resumed["run"]["resumed_runs"] == partial["runs_done"]
    assert main([*serial, "-o", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    for doc in (resumed, whole):
        doc.pop("run")
    assert resumed == whole
    assert main([*common, "-o", str(out), "--resume"]) == 2  # finished: nothing to resume
    assert main([*common, "-o", str(tmp_path / "none.json"), "--resume"]) == 2


# ---------------------------------------------------------------------------------------------- --metric FILE.py
def test_a_task_metric_ranks_and_chooses_which_way_it_says(tmp_path, capsys):
    (tmp_path / "agree.py").write_text(textwrap.dedent("""
        import numpy as np

        def top1(fp32, int8, batch):
            assert set(batch) == {"data"}
            # minus the total variation distance of the class probabilities, pooled over samples
            tv = 0.5 * np.abs(fp32["prob"] - int8["prob"]).sum(axis=1)
            return -float(tv.mean()), True, float(len(tv))
    """))
    images = np.load(LENET_IMAGES)[:400].astype(np.float32)[:, None] / np.float32(255.0)
    held = [{"data": images[i : i + 50]} for i in range(300, 400, 50)]
    scales = calibrate(LENET, [{"data": images[i : i + 50]} for i in range(0, 200, 50)])
    result = sensitivity(LENET, scales, held, metric=f"{tmp_path / 'agree.py'}:top1", max_keep=2)
    assert result.metric.name == "agree.py:top1" and result.metric.higher_is_better
    full, _ = quantize_model(LENET, scales)
    fp32, int8 = qdq_session(onnx.load(LENET)), qdq_session(full)
    tv = np.concatenate([0.5 * np.abs(fp32.run(None, b)[0] - int8.run(None, b)[0]).sum(axis=1) for b in held])
    assert result.baseline_error == pytest.approx(-tv.mean(), rel=1e-6)  # float32 sums and result.baseline_error < 0
    excluded = [u.excluded for u in result.units]
    assert excluded == sorted(excluded, reverse=True) and excluded[0] > result.baseline_error  # higher is better
    assert [p.error for p in result.greedy] == sorted(p.error for p in result.greedy)
    back = load_sensitivity_roundtrip(result)
    assert back.metric.name == "agree.py:top1" and back.metric.higher_is_better

    np.save(tmp_path / "d.npy", images[:300])
    out = tmp_path / "s.json"
    args = ["sensitivity", str(LENET), "--data", str(tmp_path / "d.npy"), "--batch-size", "50", "--max-keep", "1",
            "--executor", "serial", "-o", str(out), "-q"]
    assert main([*args, "--metric", f"{tmp_path / 'agree.py'}:top1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "agree.py:top1" and doc["higher_is_better"] is True
    assert main([*args, "--metric", str(tmp_path / "missing.py")]) == 2
    assert "no such metric script" in capsys.readouterr().err
    assert main([*args, "--metric", "nope"]) == 2
    (tmp_path / "broken.py").write_text("def metric(a):\n    return 1\n")
    assert main([*args, "--metric", str(tmp_path / "broken.py")]) == 2
    assert "must take (fp32_outputs, int8_outputs" in capsys.readouterr().err
    assert not out.exists() or json.loads(out.read_text())["metric"] == "agree.py:top1"
    assert main([*args[:-3], "-o", str(tmp_path / "agree.py"), "--metric", str(tmp_path / "agree.py")]) == 2


# ---------------------------------------------------------------------------------------------- rank-0 inputs
def rank0_model() -> onnx.ModelProto:
    """silero's pattern: a batch input and a rank-0 integer input (its sample rate) that scales the features."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("Div", ["srf", "k"], ["gain"]),
         helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1]),
         helper.make_node("Mul", ["c", "gain"], ["m"]),
         helper.make_node("Relu", ["m"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1])],
        "r0", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 16]),
               helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 16])],
        [numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((3, 4, 3)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.array(16000, np.float32), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_rank_0_input_works_in_sensitivity_as_in_calibrate(tmp_path):
    """Issue 19 item 5: `sr` came back (1,) from the batch check and sensitivity refused it."""
    onnx.save(rank0_model(), tmp_path / "r0.onnx")
    (tmp_path / "data.py").write_text(textwrap.dedent("""
        import numpy as np

        def load_data():
            rng = np.random.default_rng(0)
            for _ in range(4):
                yield {"x": rng.standard_normal((8, 2, 16)).astype(np.float32), "sr": np.array(16000, np.int64)}
    """))
    common = ["--data", str(tmp_path / "data.py"), "-q"]
    assert main(["calibrate", str(tmp_path / "r0.onnx"), *common, "--cache", str(tmp_path / "r0.cache")]) == 0
    assert main(["sensitivity", str(tmp_path / "r0.onnx"), *common, "--executor", "serial",
                 "-o", str(tmp_path / "s.json"), "--max-activation-mb", "0.001"]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert sorted(u["node"] for u in doc["units"]) == ["conv1", "conv2"] and doc["evaluation"]["samples"] == 16
    assert doc["run"]["part_samples"] == 1  # the budget cuts x along its batch axis; sr goes whole to every part


# ---------------------------------------------------------------------------------------------- recommendations
def test_quantize_refuses_to_write_a_model_without_q_dq(tmp_path, capsys):
    """Issue 22 item 2: `--exclude-nodes-from` keeping every unit wrote a float model and exited 0."""
    scales = calibrate(LENET, [{"data": np.load(LENET_IMAGES)[:50].astype(np.float32)[:, None] / 255}])
    with pytest.raises(CalibrationError, match="nothing left to quantise.*no Q/DQ"):
        quantize_model(LENET, scales, exclude=dict.fromkeys(["conv1", "conv2", "ip1", "ip2"], "all"))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(out),
                 "--exclude-nodes", "conv1,conv2,ip1,ip2", "-q"]) == 2
    assert "nothing left to quantise" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(out),
                 "--exclude-nodes", "conv1,conv2,ip1", "-q"]) == 0  # one unit left: a Q/DQ model


@pytest.mark.parametrize("bits,reason", [("00000000", "zero scale"), ("80000000", "zero scale"),
                                         ("7fc00000", "non-finite scale (nan)"),
                                         ("7f800000", "non-finite scale (inf)")])
def test_a_unit_whose_cache_scale_is_unusable_is_listed_with_the_reason(tmp_path, capsys, caplog, bits, reason):
    """Issue 23 item 7: conv2 (input pool1) vanished from the ranking without a word."""
    text = TRT_TABLE.read_text().splitlines()
    (tmp_path / "bad.cache").write_text("\n".join(f"pool1: {bits}" if t.startswith("pool1:") else t for t in text)
                                        + "\n")
    np.save(tmp_path / "h.npy", np.load(LENET_IMAGES)[400:500].astype(np.float32)[:, None] / np.float32(255.0))
    out = tmp_path / "s.json"
    assert main(["sensitivity", str(LENET), "--data", str(tmp_path / "h.npy"), "--batch-size", "50",
                 "--from-cache", str(tmp_path / "bad.cache"), "--executor", "serial", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert sorted(u["node"] for u in doc["units"]) == ["conv1", "ip1", "ip2"]
    assert list(doc["not_ranked"]) == ["conv2"] and doc["not_ranked"]["conv2"].startswith(reason)
    assert "not ranked (1):" in captured.out and "conv2: " + reason in captured.out
    assert "are not ranked: conv2: " + reason in caplog.text


def test_non_finite_fp32_outputs_are_an_error_not_a_row_of_nans(tmp_path, capsys):
    """Issue 23 item 9: inf outputs gave nan everywhere, "chosen k=0", exit 0."""
    model = dag_model()
    big = numpy_helper.from_array(np.full(5, np.finfo(np.float32).max, np.float32), "b5")
    model.graph.initializer[[t.name for t in model.graph.initializer].index("b5")].CopyFrom(big)
    model.graph.node[-2].input[0] = "flat"
    for node in model.graph.node:
        if node.name == "fc":
            node.attribute.append(helper.make_attribute("beta", 10.0))  # bias * 10: overflows to inf
    held = dag_batches(2)
    with pytest.raises(ModelError, match=r"output 'y' holds inf on held-out batch 0 \(30 of 30 values"):
        sensitivity(model, {"x": 3.0, "r1": 2.0, "add": 3.0, "c3": 3.0, "flat": 1.0}, held, max_keep=1)
    onnx.save(model, tmp_path / "inf.onnx")
    np.save(tmp_path / "x.npy", np.concatenate([b["x"] for b in held] * 2))
    assert main(["sensitivity", str(tmp_path / "inf.onnx"), "--data", str(tmp_path / "x.npy"), "--batch-size",
                 "6", "--executor", "serial", "-o", str(tmp_path / "s.json"), "-q", "--json"]) == 2
    assert "holds inf" in json.loads(capsys.readouterr().out)["error"]
    assert not (tmp_path / "s.json").exists()
