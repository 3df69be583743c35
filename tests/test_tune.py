"""`trt-calib tune` (`tools.tune`): measured steps to an accuracy target, the files both TensorRT paths need, and
errors that are what `evaluate` measures on the written Q/DQ model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import LENET, LENET_BATCHES
from trt_calib.cli.main import main
from trt_calib.core.cache import CalibrationCache
from trt_calib.ort.data import open_source
from trt_calib.ort.evaluate import evaluate
from trt_calib.ort.model import model_inputs
from trt_calib.qdq.sensitivity import load_sensitivity
from trt_calib.tools.tune import STEPS, Scorer, tune


def _lenet_batches(count=4):
    batches = list(open_source(LENET_BATCHES, model_inputs(LENET)))
    return batches[: count // 2], batches[count // 2 : count]


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One CLI run on LeNet with every step (no target): 5 calibration and 5 held-out batches of 50 images. Rounding,
    bias correction and two units in float are all kept on this data."""
    folder = tmp_path_factory.mktemp("tune") / "out"
    code = main(["-q", "tune", str(LENET), "--data", str(LENET_BATCHES), "--max-keep", "2",
                 "--rank-batches", "1", "-o", str(folder), "--json", "--no-progress"])
    return code, folder


def test_every_step_is_measured_and_kept_only_when_it_helps(tuned):
    code, folder = tuned
    assert code == 0
    doc = json.loads((folder / "tune.json").read_text())
    assert [s["name"] for s in doc["steps"]] == list(STEPS)
    assert doc["metric"] == "kl" and doc["target"] is None and doc["evaluation"]["samples"] == 250
    assert doc["chosen"]["weight_rounding"] and doc["chosen"]["bias_correction"] and len(doc["chosen"]["kept_in_float"]) == 2
    thresholds = doc["steps"][0]
    assert [c["name"].split(" (")[0] for c in thresholds["candidates"]] == [
        "minmax", "entropy2", "percentile", "mse", "per-tensor best"]
    assert thresholds["error"] == min(c["error"] for c in thresholds["candidates"])
    previous = thresholds["error"]
    for step in doc["steps"][1:]:
        assert step["candidates"], step["name"]  # every step ran (no target)
        if step["kept"]:
            assert step["error"] < previous, step["name"]
        else:
            assert step["error"] == previous, step["name"]
        previous = step["error"]
    assert doc["final_error"] == previous
    assert doc["chosen"]["weight_rounding"] == doc["steps"][1]["kept"]
    assert doc["rounding"]["layers_rounded"] == 4 and doc["rounding"]["codes_not_recovered"] == 0
    rounding = doc["steps"][1]["candidates"]  # the 5 threshold choices again, on the rounded model
    assert [c["name"].split(" (")[0] for c in rounding] == [c["name"].split(" (")[0] for c in thresholds["candidates"]]
    assert doc["steps"][1]["error"] == min(c["error"] for c in rounding)


def test_the_qdq_model_scores_what_tune_reported(tuned):
    """evaluate() on DIR/model.qdq.onnx with the same held-out batches gives tune's final error."""
    _, folder = tuned
    doc = json.loads((folder / "tune.json").read_text())
    _, held = _lenet_batches(10)
    report = evaluate(LENET, folder / "model.qdq.onnx", held, worst=0)
    assert report.primary.mean_kl == pytest.approx(doc["final_error"], rel=1e-9)
    qdq = onnx.load(folder / "model.qdq.onnx")
    kept = doc["chosen"]["kept_in_float"]
    assert len(kept) == len(doc["steps"][3]["candidates"][-1]["kept_in_float"]) or kept == []
    for node in qdq.graph.node:
        if node.name in kept:  # kept units read float inputs and float weights
            producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input)


def test_the_cache_and_the_float_model_go_together(tuned):
    _, folder = tuned
    doc = json.loads((folder / "tune.json").read_text())
    cache = CalibrationCache.load(folder / "model.cache")
    assert cache.header.endswith("EntropyCalibration2") or cache.header.endswith("MinMaxCalibration")
    assert cache.header.startswith("TRT-")
    names = {e.name for e in cache.entries}
    assert {"data", "conv1", "pool1", "ip1", "prob"} <= names
    assert all(e.scale > 0 for e in cache.entries)
    if doc["chosen"]["weight_rounding"]:
        rounded = onnx.load(folder / "model.rounded.onnx")
        original, new = _weights(onnx.load(LENET)), _weights(rounded)
        kept = set(doc["chosen"]["kept_in_float"])
        for node in rounded.graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            w = new[node.input[1]]
            if node.name in kept:  # a unit kept in float runs its own float weights and bias, not rounded/corrected
                source = next(n for n in onnx.load(LENET).graph.node if n.name == node.name)
                assert list(node.input) == list(source.input)
                assert all(new[i].tobytes() == original[i].tobytes() for i in node.input[1:])
                continue
            axis = 0 if node.op_type == "Conv" or any(a.name == "transB" and a.i for a in node.attribute) else 1
            moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            s = (np.abs(moved).max(axis=1) / np.float32(127)).astype(np.float32)
            q = np.clip(np.rint(moved / s[:, None]), -127, 127)
            assert np.array_equal((q * s[:, None]).astype(np.float32), moved), node.name


def test_the_kept_units_are_readable_by_build_and_quantize(tuned, tmp_path):
    _, folder = tuned
    doc = json.loads((folder / "tune.json").read_text())
    kept = doc["chosen"]["kept_in_float"]
    assert (folder / "sensitivity.json").is_file() and (folder / "report.html").is_file()
    ranking = load_sensitivity(folder / "sensitivity.json")
    assert ranking.kept() == kept
    if kept:
        assert (folder / "keep_precision.txt").read_text().strip() == ",".join(kept)
        assert "--layerPrecisions=" in doc["trtexec"]
        out = tmp_path / "q.onnx"
        assert main(["-q", "quantize", str(LENET), "--from-cache", str(folder / "model.cache"),
                     "--exclude-nodes-from", str(folder / "sensitivity.json"), "-o", str(out)]) == 0
    page = (folder / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "weight rounding" in page and "<script" not in page


def test_a_target_stops_at_the_first_step_that_meets_it():
    calib, held = _lenet_batches()
    result = tune(LENET, calib, held, target=1.0, max_keep=2)
    assert result.target_met and [s.kept for s in result.steps] == [True, False, False, False]
    assert all("target was met" in s.note for s in result.steps[1:])
    assert result.rounding is None and result.sensitivity is None
    impossible = tune(LENET, calib, held, target=0.0, max_keep=1, steps=("thresholds", "bias correction"))
    assert not impossible.target_met
    assert impossible.steps[1].note == "not asked for" and impossible.steps[2].candidates


def test_the_ranking_measures_every_unit_the_greedy_loop_may_keep():
    """Ranked with max_keep=0, the screen measured only 3 units, so `--max-keep 10` stopped at k = 3 (PP-OCRv4 rec,
    51 units). LeNet has 4: all are ranked, and k stops at 3, since all 4 in float leaves no INT8 model."""
    calib, held = _lenet_batches()
    result = tune(LENET, calib, held, max_keep=10, steps=("thresholds", "keep in float"))
    keep = result.steps[-1]
    assert len(result.sensitivity.units) == 4
    assert [row["k"] for row in keep.candidates] == [0, 1, 2, 3]
    fewer = tune(LENET, calib, held, max_keep=2, steps=("thresholds", "keep in float"))
    assert len(fewer.sensitivity.units) == 4  # 2 + the screen's margin of 3 covers all 4
    assert [row["k"] for row in fewer.steps[-1].candidates] == [0, 1, 2]


def test_a_user_metric_script_drives_the_steps(tmp_path, capsys):
    script = tmp_path / "agree.py"
    script.write_text(
        "import numpy as np\n"
        "def agreement(fp32, int8):\n"
        "    a, b = fp32['prob'].argmax(1), int8['prob'].argmax(1)\n"
        "    return float((a == b).mean()), True\n"
    )
    calib, held = _lenet_batches()
    scorer = Scorer(onnx.load(LENET), held, metric=f"{script}:agreement")
    assert scorer.higher_is_better is None  # learnt from the script's answers
    out = tmp_path / "out"
    code = main(["tune", str(LENET), "--data", str(LENET_BATCHES), "--max-batches", "4", "--metric",
                 f"{script}:agreement", "--target", "0.99", "--no-rounding", "--max-keep", "1", "-o", str(out),
                 "--json", "--no-progress"])
    doc = json.loads(capsys.readouterr().out)
    assert code == (0 if doc["target_met"] else 1)
    assert doc["higher_is_better"] is True and doc["metric"].endswith("agree.py:agreement")
    assert 0.9 <= doc["final_error"] <= 1.0 and doc["steps"][1]["note"] == "not asked for"


def test_tune_refuses_bad_arguments_before_reading_data(tmp_path, capsys):
    script = tmp_path / "d.py"
    script.write_text("raise RuntimeError('the data must not be read')\n")
    cases = [
        (["--metric", "nope"], "neither auto"),
        (["--metric", str(tmp_path / "missing.py")], "no such metric script"),
        (["--target", "inf"], "finite"),
        (["--eval-data", str(script), "--calib-batches", "2"], "does not go with"),
        (["-o", str(script)], "is a file"),
        (["--eval-data", str(script)], "is --data"),  # scored on the batches it calibrated on: refused
    ]
    for extra, message in cases:
        argv = ["tune", str(LENET), "--data", str(script), "-o", str(tmp_path / "out"), *extra]
        assert main(argv) == 2, extra
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.py"]


def test_tune_never_writes_over_an_input_in_its_folder(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    model = folder / "model.qdq.onnx"  # an input named like one of tune's outputs
    model.write_bytes(LENET.read_bytes())
    assert main(["tune", str(model), "--data", str(LENET_BATCHES), "-o", str(folder)]) == 2
    assert "is the input MODEL" in capsys.readouterr().err
    assert model.read_bytes() == LENET.read_bytes() and sorted(p.name for p in folder.iterdir()) == [model.name]


def test_scores_are_the_same_on_the_local_executor():
    from trt_calib.ort.executor import LocalExecutor
    from trt_calib.qdq import quantize_model
    from trt_calib.ort.collect import calibrate

    calib, held = _lenet_batches()
    model = onnx.load(LENET)
    models = [quantize_model(model, calibrate(model, calib, algorithm=a))[0] for a in ("minmax", "mse")]
    serial = Scorer(model, held).score(models)
    with LocalExecutor(workers=2) as executor:
        local = Scorer(model, held, executor=executor).score(models)
    assert local == serial and serial[0] != serial[1]
