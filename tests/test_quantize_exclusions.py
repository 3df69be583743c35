"""quantize --exclude-nodes: names are checked against the model, If branches included, before any data is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.cli import main
from trt_calib.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
LENET = REPO / "data" / "lenet" / "lenet.onnx"


def _branchy(path: Path) -> None:
    """x (N, 4), sr (int64 scalar) -> If(sr == 16000): then mm_a, Relu, an unnamed MatMul, mm_b; else mm_c, Relu
    and an unnamed MatMul (both unnamed MatMuls are `MatMul_2` by label: ambiguous)."""
    rng = np.random.default_rng(31)
    w = {n: numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
         for n, s in (("W1", (4, 6)), ("W2", (6, 3)), ("W3", (4, 3)), ("W4", (3, 3)), ("W5", (3, 3)))}
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3])  # noqa: E731
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm_a"),
                              helper.make_node("Relu", ["h"], ["r"], name="relu_a"),
                              helper.make_node("MatMul", ["r", "W2"], ["t0"]),
                              helper.make_node("MatMul", ["t0", "W4"], ["yt"], name="mm_b")], "then", [], [out("yt")])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "W3"], ["e0"], name="mm_c"),
                               helper.make_node("Relu", ["e0"], ["e1"], name="relu_c"),
                               helper.make_node("MatMul", ["e1", "W5"], ["ye"])], "else", [], [out("ye")])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "rate16k"], ["cond"], name="is16k"),
         helper.make_node("If", ["cond"], ["y"], name="rate", then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])], [out("y")],
        [numpy_helper.from_array(np.int64(16000), "rate16k"), *w.values()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_check_exclusions_knows_the_nodes_of_the_main_graph_and_every_branch(tmp_path):
    from trt_calib.qdq.quantize import check_exclusions

    _branchy(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    check_exclusions(model, {"rate": "", "mm_b": "", "relu_c": "", "node_of_t0": "", "node_of_ye": ""})
    check_exclusions(model, [])
    with pytest.raises(ModelError, match=r"no node named 'mm_d' in the model\. Hint: did you mean mm_c, mm_b, mm_a\?"):
        check_exclusions(model, ["mm_b", "mm_d"])
    with pytest.raises(ModelError, match=r"'MatMul_2' names 2 nodes inside If/Loop/Scan bodies\. Hint: name one by "
                                         r"its TensorRT layer name: node_of_ye \(else_branch of If 'rate'\), "
                                         r"node_of_t0 \(then_branch of If 'rate'\)"):
        check_exclusions(model, ["MatMul_2"])


def test_cli_quantize_refuses_an_unknown_exclusion_before_reading_any_data(tmp_path, capsys):
    """Issue 19: an unknown --exclude-nodes name was reported after calibration had run on all the data."""
    _branchy(tmp_path / "m.onnx")
    marker = tmp_path / "read"
    (tmp_path / "data.py").write_text(
        f"import pathlib\nimport numpy as np\npathlib.Path({str(marker)!r}).touch()\n"
        "def load_data():\n"
        "    for k in range(2):\n"
        "        yield {'x': np.random.default_rng(k).normal(size=(4, 4)).astype('f4'), 'sr': np.array(16000)}\n")
    base = ["quantize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "data.py"), "-o", str(tmp_path / "q.onnx"),
            "--no-progress"]
    for extra, message in (
        (["--exclude-nodes", "mm_b,mm_x"], "no node named 'mm_x' in the model. Hint: did you mean mm_c, mm_b, mm_a?"),
        (["--exclude-nodes", "MatMul_2"], "'MatMul_2' names 2 nodes inside If/Loop/Scan bodies"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert not marker.exists() and not (tmp_path / "q.onnx").exists()
    # a name inside the branch the data takes is excluded there (the else branch never runs: exit 1, its
    # MatMuls have no scale)
    assert main(base + ["--exclude-nodes", "mm_b", "-q", "--report", str(tmp_path / "r.json")]) == 1
    assert marker.exists()
    assert json.loads((tmp_path / "r.json").read_text())["excluded"] == {"mm_b (then_branch of If 'rate')":
                                                                          "named on request"}


def test_cli_quantize_refuses_an_unknown_exclusion_of_lenet_before_the_data(tmp_path, capsys):
    marker = tmp_path / "read"
    (tmp_path / "data.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                      "def load_data():\n"
                                      "    yield {'data': __import__('numpy').zeros((2, 1, 28, 28), 'f4')}\n")
    assert main(["quantize", str(LENET), "--data", str(tmp_path / "data.py"), "-o", str(tmp_path / "q.onnx"),
                 "--exclude-nodes", "conv9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no node named 'conv9'" in err and "did you mean conv" in err
    assert not marker.exists()
