"""evaluate: FP32 vs Q/DQ metrics against numpy formulas, LeNet end to end, errors, JSON and the CLI command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.ort.model import model_inputs
from trt_calib.ort.data import from_arrays
from trt_calib.errors import DataError, ModelError
from trt_calib.ort.evaluate import (
    OutputMetrics,
    evaluate,
    judge,
    fake_quantize,
    kl_divergence,
    log_probabilities,
    log_softmax,
    looks_like_probabilities,
    sqnr_db,
    threshold_sqnr,
    top2_margin,
)

REPO = Path(__file__).resolve().parents[1]
LENET = REPO / "data" / "lenet"


# ---------------------------------------------------------------------------------------------- tiny models
def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _scale(name, amax):
    return [numpy_helper.from_array(np.float32(amax / 127), name), numpy_helper.from_array(np.int8(0), name + "_zp")]


def _qdq(src, dst, scale):
    return [
        helper.make_node("QuantizeLinear", [src, scale, scale + "_zp"], [dst + "_q"]),
        helper.make_node("DequantizeLinear", [dst + "_q", scale, scale + "_zp"], [dst]),
    ]


def _logit_pair(amax: float, *, softmax: bool = False):
    """FP32: h = 2x, y = h/2 (optionally softmax); INT8: the same on x quantised at `amax`."""
    consts = [numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.float32(0.5), "half")]
    tail = [helper.make_node("Mul", ["h", "half"], ["z" if softmax else "y"])]
    if softmax:
        tail.append(helper.make_node("Softmax", ["z"], ["y"], axis=1))
    fp32 = _model([helper.make_node("Mul", ["x", "two"], ["h"]), *tail], [_vi("x", ["N", 10])], [_vi("y", ["N", 10])],
                  consts)
    int8 = _model([*_qdq("x", "xd", "s"), helper.make_node("Mul", ["xd", "two"], ["h"]), *tail],
                  [_vi("x", ["N", 10])], [_vi("y", ["N", 10])], consts + _scale("s", amax))
    return fp32, int8


def _batches(model, x, batch_size=16):
    return from_arrays(x, model_inputs(model), batch_size=batch_size, last_batch="keep")


def _numpy_kl(a, b):
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    return (p * np.log(p / q)).sum(1)


# ---------------------------------------------------------------------------------------------- formulas
def test_kl_matches_the_definition_and_is_zero_only_for_equal_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    np.testing.assert_allclose(kl_divergence(log_softmax(a), log_softmax(b)), _numpy_kl(a, b), rtol=1e-12)
    np.testing.assert_allclose(kl_divergence(log_softmax(a), log_softmax(a + 5.0)), 0.0, atol=1e-14)
    assert not np.allclose(kl_divergence(log_softmax(a), log_softmax(b)), kl_divergence(log_softmax(b), log_softmax(a)))


def test_log_softmax_is_stable_for_huge_logits():
    out = log_softmax(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(out, [[0.0, -1000.0, -2000.0]], atol=1e-12)


def test_probability_rows_are_recognised_and_zero_mass_is_floored():
    p = np.array([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])
    assert looks_like_probabilities(p)
    assert not looks_like_probabilities(p * 1.01)  # rows sum to 1.01
    assert not looks_like_probabilities(np.array([[1.5, -0.5]]))  # sums to 1 but negative
    q = np.array([[0.5, 0.0, 0.5], [0.2, 0.2, 0.6]])
    kl = kl_divergence(log_probabilities(p, "probabilities"), log_probabilities(q, "probabilities"))
    # Row 0: 0.7 log(0.7/0.5) + 0.3 log(0.3/1e-12); the zero of P contributes nothing.
    assert kl[0] == pytest.approx(0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 1e-12), rel=1e-9)
    assert kl[1] == pytest.approx(0.0, abs=1e-15)


def test_top2_margin_is_the_gap_between_the_two_largest():
    x = np.array([[1.0, 5.0, 3.0, 4.5], [2.0, 2.0, 0.0, 1.0]])
    np.testing.assert_allclose(top2_margin(x), [0.5, 0.0])
    # Softmax shifts every logit of a row by the same amount, so the margin of log-probabilities is the logit margin.
    np.testing.assert_allclose(top2_margin(log_softmax(x)), [0.5, 0.0], atol=1e-12)


def test_sqnr_db_edge_cases():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert math.isnan(sqnr_db(0.0, 0.0))


def test_fake_quantize_is_bit_exact_with_onnxruntime_qdq():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(4, 10)) * 3).astype(np.float32)
    x[0, :4] = [0.5 * 3 / 127, 1.5 * 3 / 127, 10.0, -10.0]  # ties at half steps round to even; +-10 clip
    _, int8 = _logit_pair(3.0)
    sess = ort.InferenceSession(int8.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(["y"], {"x": x})[0]
    np.testing.assert_array_equal(fake_quantize(x, 3.0), expected)
    # Saturation is asymmetric, as ONNX defines it: +amax but -128 steps.
    assert fake_quantize(x, 3.0)[0, 2] == np.float32(3.0)
    assert fake_quantize(x, 3.0)[0, 3] == np.float32(-128) * np.float32(np.float32(3.0) / np.float32(127))


# ---------------------------------------------------------------------------------------------- evaluate, tiny
def test_agreement_margin_kl_and_errors_match_numpy_on_handmade_logits():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(70, 10)) * 2.0).astype(np.float32)
    fp32, int8 = _logit_pair(3.0)  # clipping at 3 ties the top classes of many samples
    report = evaluate(fp32, int8, _batches(fp32, x), worst=5)

    xq = fake_quantize(x, 3.0)
    agree = x.argmax(1) == xq.argmax(1)
    top = np.sort(x.astype(np.float64), axis=1)
    confident = (top[:, -1] - top[:, -2]) > 1.0
    out = report.output("y")
    assert 0 < agree.sum() < 70 and 0 < confident.sum() < 70  # the data exercises both branches
    assert out.kind == "logits" and out.num_samples == 70 and report.num_batches == 5
    assert out.num_agree == int(agree.sum())
    assert out.num_confident == int(confident.sum())
    assert out.num_confident_agree == int((agree & confident).sum())
    assert out.mean_kl == pytest.approx(float(_numpy_kl(x.astype(np.float64), xq.astype(np.float64)).mean()), rel=1e-9)
    diff = np.abs(x.astype(np.float64) - xq)
    assert out.max_abs_error == pytest.approx(float(diff.max()), rel=1e-12)
    assert out.mean_abs_error == pytest.approx(float(diff.mean()), rel=1e-9)
    np.testing.assert_array_equal(out.samples["top1_int8"], xq.argmax(1))


def test_sqnr_of_shared_tensors_matches_the_formula_and_worst_come_first():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(40, 10)) * 2.0).astype(np.float32)
    fp32, int8 = _logit_pair(3.0)
    report = evaluate(fp32, int8, _batches(fp32, x, batch_size=8))
    h, hq = 2.0 * x.astype(np.float64), 2.0 * fake_quantize(x, 3.0).astype(np.float64)
    expected = 10 * math.log10((h**2).sum() / ((h - hq) ** 2).sum())
    names = [t.name for t in report.worst]
    assert sorted(names) == ["h", "y"] and report.num_compared == 2  # "x" is an input: identical in both
    by_name = {t.name: t for t in report.worst}
    assert by_name["h"].sqnr_db == pytest.approx(expected, rel=1e-9)
    assert by_name["h"].num_values == 400
    assert by_name["y"].sqnr_db == pytest.approx(expected, rel=1e-9)  # y = h / 2 exactly
    assert report.worst[0].sqnr_db <= report.worst[1].sqnr_db
    assert evaluate(fp32, int8, _batches(fp32, x), worst=1).worst[0].name in ("h", "y")
    assert evaluate(fp32, int8, _batches(fp32, x), worst=0).num_compared == 0


def test_probability_outputs_are_used_as_they_are():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(32, 10)) * 2.0).astype(np.float32)
    fp32, int8 = _logit_pair(2.0, softmax=True)
    out = evaluate(fp32, int8, _batches(fp32, x)).output("y")
    assert out.kind == "probabilities"
    # KL of the two softmax outputs themselves, not of a softmax applied to them again.
    assert out.mean_kl == pytest.approx(float(_numpy_kl(x.astype(np.float64), fake_quantize(x, 2.0)).mean()), rel=1e-4)
    assert out.mean_kl > 1.5 * float(_numpy_kl(_softmax(x), _softmax(fake_quantize(x, 2.0))).mean())


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _conv_pair():
    """FP32: y = Conv(x, W, B); INT8: Q/DQ on x, then the same Conv with *float* W and B, then Q/DQ on y."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * np.float32([1, 10, 0.1, 1, 1, 1, 1, 5])[:, None, None, None]
    b = rng.normal(size=8).astype(np.float32)
    consts = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    conv = helper.make_node("Conv", ["xd", "W", "B"], ["y"], pads=[1, 1, 1, 1])
    fp32 = _model([helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1]),
                   helper.make_node("Identity", ["y"], ["out"])],
                  [_vi("x", ["N", 3, 8, 8])], [_vi("out", ["N", 8, 8, 8])], consts)
    int8 = _model([*_qdq("x", "xd", "s1"), conv, *_qdq("y", "out", "s2")], [_vi("x", ["N", 3, 8, 8])],
                  [_vi("out", ["N", 8, 8, 8])], consts + _scale("s1", 2.54) + _scale("s2", 12.7))
    return fp32, int8, w, b


def _numpy_conv(x, w, b):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64)) + b[None, :, None, None]


def test_qdq_graph_runs_as_written_without_weight_requantisation():
    fp32, int8, w, b = _conv_pair()
    x = np.random.default_rng(7).normal(size=(6, 3, 8, 8)).astype(np.float32)
    report = evaluate(fp32, int8, _batches(fp32, x, batch_size=3))
    y = _numpy_conv(x, w, b)
    yq = _numpy_conv(fake_quantize(x, 2.54), w, b)  # float weights, as the graph says
    expected = 10 * math.log10((y**2).sum() / ((y - yq) ** 2).sum())
    assert {t.name: t.sqnr_db for t in report.worst}["y"] == pytest.approx(expected, rel=1e-4)

    # The premise: with onnxruntime's basic optimisation the same graph computes something else (its
    # WeightBiasQuantization pass rounds W to int8 per tensor), which the evaluation must not measure.
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    model.graph.output.append(_vi("y", None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    basic = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    y_basic = basic.run(["y"], {"x": x})[0].astype(np.float64)

    def channel_sqnr(other):  # channel 2 has weights 100x smaller than channel 1: per-tensor int8 wipes them out
        return 10 * math.log10((y[:, 2] ** 2).sum() / ((y[:, 2] - other[:, 2]) ** 2).sum())

    assert channel_sqnr(y_basic) < channel_sqnr(yq) - 20.0
    assert "ORT_DISABLE_ALL" in report.session


def test_non_classifier_outputs_get_errors_only():
    fp32, int8, _, _ = _conv_pair()
    x = np.random.default_rng(8).normal(size=(4, 3, 8, 8)).astype(np.float32)
    out = evaluate(fp32, int8, _batches(fp32, x, batch_size=2)).output("out")
    assert out.kind is None and out.agreement is None and out.mean_kl is None
    assert out.sample_shape == (8, 8, 8) and out.max_abs_error > 0
    assert "not a (N, C) classifier output" in evaluate(fp32, int8, _batches(fp32, x, batch_size=2)).format()


def test_threshold_sqnr_scores_each_candidate_on_real_activations():
    fp32, _ = _logit_pair(3.0)
    x = (np.random.default_rng(9).normal(size=(24, 10)) * 2.0).astype(np.float32)
    got = threshold_sqnr(fp32, _batches(fp32, x, batch_size=8), {"h": {"tight": 2.0, "max": float(np.abs(2 * x).max())}})
    h = 2.0 * x
    for label, amax in (("tight", 2.0), ("max", float(np.abs(h).max()))):
        hq = fake_quantize(h, amax).astype(np.float64)
        expected = 10 * math.log10((h.astype(np.float64) ** 2).sum() / ((h - hq) ** 2).sum())
        assert got["h"][label] == pytest.approx(expected, rel=1e-9)
    assert got["h"]["max"] > got["h"]["tight"]  # clipping at 2 hurts a tensor of |h| up to ~15
    with pytest.raises(ModelError, match="no such tensor"):
        threshold_sqnr(fp32, _batches(fp32, x), {"nope": {"a": 1.0}})


# ---------------------------------------------------------------------------------------------- mismatches
def test_models_with_different_inputs_or_outputs_are_refused():
    fp32, int8 = _logit_pair(3.0)
    x = np.zeros((4, 10), np.float32)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(int8)
    renamed.graph.input[0].name = "pixels"
    renamed.graph.node[0].input[0] = "pixels"
    with pytest.raises(ModelError, match=r"different inputs: FP32 model has \['x'\], INT8 model has \['pixels'\]"):
        evaluate(fp32, renamed, _batches(fp32, x))
    other_out = onnx.ModelProto()
    other_out.CopyFrom(int8)
    other_out.graph.output[0].name = "h"
    with pytest.raises(ModelError, match=r"different outputs: .*\['y'\].*\['h'\]"):
        evaluate(fp32, other_out, _batches(fp32, x))
    wider = onnx.ModelProto()
    wider.CopyFrom(int8)
    wider.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12
    with pytest.raises(ModelError, match=r"input 'x' is \(N, 10\) in FP32 model but \(N, 12\) in INT8 model"):
        evaluate(fp32, wider, _batches(fp32, x))


def test_a_missing_model_file_is_named(tmp_path):
    fp32, _ = _logit_pair(3.0)
    with pytest.raises(ModelError, match="no_such.onnx"):
        evaluate(fp32, tmp_path / "no_such.onnx", [{"x": np.zeros((1, 10), np.float32)}])


# ---------------------------------------------------------------------------------------------- LeNet
@pytest.fixture(scope="module")
def lenet_qdq(tmp_path_factory):
    """LeNet quantised by onnxruntime's quantize_static (QDQ, per-channel, symmetric) on sampleINT8's images 50..549."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = np.load(LENET / "mnist_train_images_0_599.npy")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(
                {"data": (images[i : i + 50].astype(np.float32) / 255).reshape(-1, 1, 28, 28)} for i in range(50, 550, 50)
            )

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("lenet") / "lenet_qdq.onnx"
    quantize_static(
        str(LENET / "lenet.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


@pytest.fixture(scope="module")
def mnist():
    x = np.load(LENET / "mnist_train_images_0_599.npy").astype(np.float32).reshape(-1, 1, 28, 28) / np.float32(255)
    return x, np.load(LENET / "mnist_train_labels_0_599.npy")


def _predictions(model_path, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["prob"], {"data": x})[0].argmax(1)


def test_qdq_lenet_end_to_end_with_labels(lenet_qdq, mnist):
    x, labels = mnist
    source = from_arrays(x, model_inputs(LENET / "lenet.onnx"), batch_size=64, last_batch="pad")
    report = evaluate(LENET / "lenet.onnx", lenet_qdq, source, labels=labels)
    out = report.primary
    assert report.num_samples == 600 and source.num_padded == 40  # the 40 padded rows are not counted
    assert out.name == "prob" and out.kind == "probabilities" and report.labels_output == "prob"
    assert out.agreement >= 0.99 and out.mean_kl < 0.02
    fp32_pred, int8_pred = _predictions(LENET / "lenet.onnx", x), _predictions(lenet_qdq, x)
    assert out.num_correct_fp32 == int((fp32_pred == labels).sum())
    assert out.num_correct_int8 == int((int8_pred == labels).sum())
    assert out.num_agree == int((fp32_pred == int8_pred).sum())
    assert {"conv1", "conv2", "ip1", "ip2"} <= {t.name for t in report.tensors}
    assert all(20 < t.sqnr_db < 60 for t in report.tensors)  # 8 bits: ~48 dB at best, degraded by each layer


def test_labels_must_fit_the_samples(lenet_qdq, mnist):
    x, labels = mnist
    batches = from_arrays(x[:100], model_inputs(LENET / "lenet.onnx"), batch_size=50)
    with pytest.raises(DataError, match="99 labels for 100 evaluated samples"):
        evaluate(LENET / "lenet.onnx", lenet_qdq, batches, labels=labels[:99])
    bad = labels[:100].copy()
    bad[7] = 10
    with pytest.raises(DataError, match=r"1 label\(s\) outside 0..9 .* e.g. 10 at sample 7"):
        evaluate(LENET / "lenet.onnx", lenet_qdq, batches, labels=bad)
    with pytest.raises(DataError, match="one class index per sample"):
        evaluate(LENET / "lenet.onnx", lenet_qdq, batches, labels=np.eye(10)[labels[:100]])


def test_report_json_is_strict_json_with_the_measured_values():
    fp32, int8 = _logit_pair(3.0)
    x = (np.random.default_rng(10).normal(size=(20, 10)) * 2.0).astype(np.float32)
    report = evaluate(fp32, fp32, _batches(fp32, x))  # the same model twice: no error anywhere
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["outputs"][0]["agreement"] == 1.0 and data["outputs"][0]["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert data["worst_tensors"][0]["sqnr_db"] == "inf"
    assert "approximates TensorRT" in data["note"] and "ORT_DISABLE_ALL" in data["session"]
    q = json.loads(json.dumps(evaluate(fp32, int8, _batches(fp32, x)).to_json(), allow_nan=False))
    assert q["outputs"][0]["max_abs_error"] == pytest.approx(float(np.abs(x - fake_quantize(x, 3.0)).max()), rel=1e-6)
    assert q["num_samples"] == 20 and q["worst_tensors"][0]["num_values"] == 200


# ---------------------------------------------------------------------------------------------- CLI
def _cli(argv):
    from trt_calib.cli.evaluate import register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_evaluate_prints_the_report_and_writes_json(lenet_qdq, mnist, tmp_path, capsys):
    x, labels = mnist
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "report.json"
    rc = _cli(["evaluate", str(LENET / "lenet.onnx"), str(lenet_qdq), "--data", str(tmp_path / "x.npy"),
               "--labels", str(tmp_path / "labels.npy"), "--offset", "100", "--batch-size", "64",
               "--json", str(out), "--no-progress", "--worst", "3"])
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.err  # with --json, stdout holds the JSON alone and the text report goes to stderr
    assert "approximates TensorRT" in text and "ORT_DISABLE_ALL" in text and "top-1 accuracy (500 labels)" in text
    data = json.loads(out.read_text())
    assert data.pop("written_by") == "trt-calib 0.1.0 evaluate"  # marks the file as ours (README, --json FILE)
    assert json.loads(captured.out) == data
    assert data["num_samples"] == 500 and len(data["worst_tensors"]) == 3
    pred = _predictions(LENET / "lenet.onnx", x[100:])
    assert data["outputs"][0]["accuracy_fp32"] == pytest.approx(float((pred == labels[100:]).mean()))
    assert data["data"]["offset"] == 100


def test_trt_calib_evaluate_errors_are_one_line_with_exit_2(lenet_qdq, mnist, tmp_path, capsys):
    from trt_calib.cli import main

    x, labels = mnist
    np.save(tmp_path / "x.npy", x[:64])
    np.save(tmp_path / "labels.npy", labels[:60])
    rc = main(["evaluate", str(LENET / "lenet.onnx"), str(lenet_qdq), "--data", str(tmp_path / "x.npy"),
               "--labels", str(tmp_path / "labels.npy"), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("trt-calib evaluate: error:") and "labels.npy: 60 labels but the data holds 64 samples" in err
    assert not (tmp_path / "r.json").exists()
    assert main(["evaluate", str(LENET / "lenet.onnx"), str(tmp_path / "missing.onnx"), "--data",
                 str(tmp_path / "x.npy")]) == 2
    assert "missing.onnx" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sequences, verdict
def _sequence_pair(amax: float, *, softmax: bool = True):
    """FP32: y = Softmax(2x) over the last axis of x (N, T, C) (or y = 2x, logits); INT8: the same on x quantised."""
    consts = [numpy_helper.from_array(np.float32(2), "two")]
    tail = [helper.make_node("Softmax", ["h"], ["y"], axis=2)] if softmax else [helper.make_node("Identity", ["h"], ["y"])]
    shape = ["N", 6, 5]
    fp32 = _model([helper.make_node("Mul", ["x", "two"], ["h"]), *tail], [_vi("x", shape)], [_vi("y", shape)], consts)
    int8 = _model([*_qdq("x", "xd", "s"), helper.make_node("Mul", ["xd", "two"], ["h"]), *tail],
                  [_vi("x", shape)], [_vi("y", shape)], consts + _scale("s", amax))
    return fp32, int8


def _sequences(n=24, seed=11):
    """Rows over 5 classes, class 0 winning at most positions (a CTC blank), another class at a few."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 5)).astype(np.float32)
    x[:, :, 0] += 1.5
    return x


def _expected_sequence(x, amax):
    p = _softmax_last(2.0 * x.astype(np.float64))
    q = _softmax_last(2.0 * fake_quantize(x, amax).astype(np.float64))
    t32, t8 = p.argmax(-1), q.argmax(-1)
    kl = (p * np.log(p / np.maximum(q, 1e-12))).sum(-1)
    return t32, t8, kl


def _softmax_last(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sequence_outputs_get_whole_sequence_and_per_position_agreement_and_kl():
    x = _sequences()
    fp32, int8 = _sequence_pair(1.0)  # clipping at 1 flattens the winning margins: some positions flip
    out = evaluate(fp32, int8, _batches(fp32, x, batch_size=8)).output("y")
    t32, t8, kl = _expected_sequence(x, 1.0)
    agree = t32 == t8
    assert 0 < agree.all(1).sum() < 24 and 0 < (~agree).sum()  # the data exercises both
    assert out.sequence == "probabilities" and not out.is_classifier and out.num_samples == 24
    assert out.num_sequences_agree == int(agree.all(1).sum())
    assert out.sequence_agreement == pytest.approx(agree.all(1).mean())
    assert (out.num_positions, out.num_positions_agree) == (144, int(agree.sum()))
    assert out.mean_position_kl == pytest.approx(float(kl.mean()), rel=1e-5)
    majority = np.bincount(t32.reshape(-1)).argmax()
    assert out.majority_class == majority == 0
    off = t32 != majority
    assert out.num_minority_positions == int(off.sum()) and out.num_minority_agree == int((agree & off).sum())
    assert out.minority_position_agreement < out.position_agreement  # the majority class pads plain agreement
    data = out.to_json()
    assert data["sequence_agreement"] == out.sequence_agreement and data["position_kl"] == out.mean_position_kl
    np.testing.assert_array_equal(out.samples["sequence_agree"], agree.all(1))


def test_sequence_logits_are_named_and_other_rank3_outputs_are_not_sequences():
    x = _sequences()
    fp32, int8 = _sequence_pair(1.0, softmax=False)
    plain = evaluate(fp32, int8, _batches(fp32, x, batch_size=8)).output("y")
    assert plain.sequence is None and plain.decisions is None  # raw scores of unknown meaning: errors only
    out = evaluate(fp32, int8, _batches(fp32, x, batch_size=8), sequence_outputs=["y"]).output("y")
    t32, t8, kl = _expected_sequence(x, 1.0)  # softmax of the logits 2x
    assert out.sequence == "logits" and out.num_sequences_agree == int((t32 == t8).all(1).sum())
    assert out.mean_position_kl == pytest.approx(float(kl.mean()), rel=1e-9)
    with pytest.raises(DataError, match="sequence output 'nope' is not an output"):
        evaluate(fp32, int8, _batches(fp32, x), sequence_outputs=["nope"])


def test_the_verdict_says_when_int8_loses_most_decisions_and_names_the_clipped_tensor():
    x = _sequences()
    fp32, int8 = _sequence_pair(0.02)  # clipped at 0.02 where |x| reaches ~4: every row nearly flat
    report = evaluate(fp32, int8, _batches(fp32, x, batch_size=8))
    out = report.output("y")
    assert out.num_sequences_agree < 12 and report.lost
    v = report.verdict
    assert v.lost_outputs == ("y",) and [q.name for q in v.suspects] == ["x"]
    q = v.suspects[0]
    scale = np.float32(np.float32(0.02) / np.float32(127))
    assert q.quantizer.scale == pytest.approx(float(scale), rel=1e-7) and q.quantizer.symmetric
    assert q.max_abs == pytest.approx(float(np.abs(x).max()))
    lo, hi = -128 * q.quantizer.scale, 127 * q.quantizer.scale
    assert q.num_clipped == int(((x < np.float32(lo)) | (x > np.float32(hi))).sum()) and q.num_values == x.size
    own = 10 * math.log10((x.astype(np.float64) ** 2).sum() / ((x - fake_quantize(x, 0.02)).astype(np.float64) ** 2).sum())
    assert q.sqnr_db == pytest.approx(own, rel=1e-6)
    assert v.line.startswith("verdict: INT8 LOSES MOST OF FP32'S DECISIONS: y keeps ")
    assert f"x clipped at {hi:.3g} (max |x| {np.abs(x).max():.3g}" in v.line
    assert report.format().splitlines()[-1] == v.line
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["verdict"]["lost"] and data["verdict"]["suspects"][0]["name"] == "x"
    assert data["worst_quantized_tensors"][0]["clip_high"] == pytest.approx(hi)

    kept = evaluate(fp32, _sequence_pair(float(np.abs(x).max()))[1], _batches(fp32, x, batch_size=8))
    assert kept.level == "fine" and kept.exit_code == 0
    assert kept.verdict.line.startswith("verdict: fine: INT8 keeps FP32's decisions: y keeps ")
    blind = evaluate(fp32, int8, _batches(fp32, x, batch_size=8), worst=0)  # no per-tensor pass: no suspects named
    assert blind.lost and not blind.verdict.suspects and "--worst 0" in blind.verdict.line


def _sequence_metrics(whole, kept, minority, positions=320, samples=8):
    return OutputMetrics("text", (40, 6625), samples, 1.0, 1e-4, sequence="probabilities", num_sequences_agree=whole,
                         num_positions=positions, num_positions_agree=positions - minority + kept, majority_class=0,
                         num_minority_positions=minority, num_minority_agree=kept, mean_position_kl=0.1)


def test_a_sequence_is_judged_on_the_positions_fp32_does_not_give_its_majority_class():
    # PP-OCRv4 rec under entropy2: every position blank, 63% of FP32's are blank too; under mse: 3 of 8 argmax
    # sequences equal but 111 of 117 non-blank positions (CTC's collapse makes 5 of 8 texts equal)
    destroyed = judge([_sequence_metrics(0, 0, 117)], [])
    assert destroyed.lost and "keeps 0/117 positions where FP32 is not class 0 (0.0%; whole sequences 0/8)" in \
        destroyed.line
    assert not judge([_sequence_metrics(3, 111, 117)], []).lost
    assert judge([_sequence_metrics(8, 58, 117)], []).lost  # 49.6%: below half, whatever the whole sequences say
    # FP32 blank everywhere: every position is a decision
    blank = _sequence_metrics(5, 0, 0)
    blank.num_positions_agree = 300
    assert judge([blank], []).line.endswith("keeps 300/320 positions (93.8%; whole sequences 5/8)")


def test_classifier_verdict_and_outputs_without_decisions():
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(40, 10)) * 2.0).astype(np.float32)
    fp32, int8 = _logit_pair(0.01)  # every logit clipped to +-0.01: the argmax is noise
    report = evaluate(fp32, int8, _batches(fp32, x))
    assert report.output("y").agreement < 0.5 and report.lost and "top-1 classes" in report.verdict.line
    conv32, conv8, _, _ = _conv_pair()
    images = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    plain = evaluate(conv32, conv8, _batches(conv32, images, batch_size=2))
    assert not plain.lost and plain.level == "unjudged" and plain.exit_code == 0
    assert plain.verdict.line.startswith("verdict: not judged: no output is a classifier")
    assert "Hint: --metric FILE.py" in plain.verdict.line


def test_a_sequence_whose_whole_sequences_mostly_differ_is_degraded_not_fine():
    """Issue 19: PP-OCRv4 rec (entropy2, 64 held-out lines) kept 57.1% of FP32's non-blank positions while whole
    sequences agreed on 1/64 and the decoded text on 7.8%: the verdict said "keeps most of FP32's decisions"."""
    rec = _sequence_metrics(1, 370, 648, positions=2560, samples=64)
    v = judge([rec], [], metric={"name": "metrics.py:ocr_rec", "value": 0.078, "higher_is_better": True})
    assert v.level == "degraded" and v.exit_code == 1 and not v.lost and v.degraded_outputs == ("text",)
    assert v.line.startswith("verdict: INT8 IS DEGRADED: text: whole argmax sequences agree on 1/64 samples (1.6%, "
                             "under 50%), though it keeps 370/648 positions where FP32 is not class 0 (57.1%)")
    assert "task metric metrics.py:ocr_rec 0.078 (higher is better; no --accept bar)" in v.line
    assert "Hint" not in v.line  # the metric is given: no hint to give one
    # PP-OCRv4 rec under mse: 111 of 117 non-blank positions, but 3 of 8 argmax sequences: degraded too
    assert judge([_sequence_metrics(3, 111, 117)], []).level == "degraded"
    assert judge([_sequence_metrics(4, 111, 117)], []).level == "fine"  # half the sequences: not under it
    assert judge([_sequence_metrics(3, 111, 117)], [], min_sequence_agreement=0.3).level == "fine"
    data = v.to_json()
    assert data["level"] == "degraded" and data["exit"] == 1 and data["thresholds"]["min_sequence_agreement"] == 0.5


def _classifier_metrics(agree, confident, confident_agree, samples=256):
    return OutputMetrics("logits", (1000,), samples, 1.0, 0.1, kind="logits", num_agree=agree,
                         num_confident=confident, num_confident_agree=confident_agree, mean_kl=0.05)


def test_a_classifier_that_changes_clear_winners_is_degraded():
    # EfficientNet-Lite0, 256 held-out crops, 102 with FP32 margin > 1 (docs/accuracy.md): entropy2 keeps 97 of them
    entropy2 = judge([_classifier_metrics(197, 102, 97)], [])
    assert entropy2.level == "degraded" and entropy2.exit_code == 1
    assert entropy2.line.startswith("verdict: INT8 IS DEGRADED: logits: 5 of the 102 samples with a clear FP32 "
                                    "winner (margin > 1) change class (95.1% kept, under 97%; top-1 agreement "
                                    "197/256, 77.0%) (the quantised tensors were not measured")
    assert judge([_classifier_metrics(197, 102, 97)], [], min_agreement=0.95).level == "fine"
    # mse + bias correction 232/256 and 102/102; onnxruntime's MinMax 215/256 and 99/102: fine
    fine = judge([_classifier_metrics(232, 102, 102)], [])
    assert fine.level == "fine" and fine.line == ("verdict: fine: INT8 keeps FP32's decisions: logits keeps 232/256 "
                                                  "top-1 classes (90.6%; 102/102 with a clear FP32 winner)")
    assert judge([_classifier_metrics(215, 102, 99)], []).level == "fine"
    # two changed clear winners of 10 are 80% but could be chance on so few: not degraded; three are
    assert judge([_classifier_metrics(8, 10, 8, samples=12)], []).level == "fine"
    assert judge([_classifier_metrics(8, 10, 7, samples=12)], []).level == "degraded"
    assert judge([_classifier_metrics(120, 102, 90)], []).level == "lost"  # 46.9% of all top-1 classes


def test_the_task_metric_is_in_the_verdict_and_accept_makes_it_a_bar():
    seq = _sequence_metrics(7, 111, 117)  # fine by the outputs
    metric = {"name": "m.py:ocr", "value": 0.6, "higher_is_better": True}
    assert judge([seq], [], metric=metric).level == "fine"
    missed = judge([seq], [], metric=metric, accept=0.9)
    assert missed.level == "degraded" and missed.line.startswith(
        "verdict: INT8 IS DEGRADED: task metric m.py:ocr 0.6 (higher is better, accepted from 0.9: NOT MET)")
    met = judge([seq], [], metric=metric, accept=0.6)
    assert met.level == "fine" and "accepted from 0.6: met" in met.line
    lower = {"name": "m.py:err", "value": 0.2, "higher_is_better": False}
    assert judge([], [], metric=lower, accept=0.1).level == "degraded"
    none = judge([], [], metric=lower, accept=0.25)
    assert none.level == "fine" and none.line.startswith("verdict: fine by the task metric (no output is a classifier")
    unjudged = judge([], [], metric=lower)
    assert unjudged.level == "unjudged" and unjudged.exit_code == 0 and "task metric m.py:err 0.2" in unjudged.line
    assert "Hint: --accept VALUE" in unjudged.line and "--metric" not in unjudged.line
    with pytest.raises(ValueError, match="accept is the bar of a task metric"):
        judge([seq], [], accept=0.5)
    with pytest.raises(ValueError, match="min_agreement must be a fraction"):
        judge([seq], [], min_agreement=1.5)


def test_cli_evaluate_exit_1_when_degraded_and_accept_checked_before_data(tmp_path, capsys):
    from trt_calib.cli import main

    x = _sequences()
    fp32, int8 = _sequence_pair(1.0)  # 11 of 24 whole sequences, 29 of 44 positions off the blank
    onnx.save(fp32, tmp_path / "m.onnx")
    onnx.save(int8, tmp_path / "q.onnx")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "task.py").write_text(TASK)
    base = ["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--no-progress", "--batch-size", "8",
            "--data", str(tmp_path / "x.npy")]
    assert main(base) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verdict: INT8 IS DEGRADED: y: whole argmax sequences agree on 11/24 samples (45.8%")
    assert "likeliest causes (worst own Q/DQ error): x clipped at 1" in last
    assert main(base + ["--min-sequence-agreement", "0.4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit"] == 0 and data["verdict"]["level"] == "fine"
    # the task metric (whole sequences equal, 11/24) in the verdict line; --accept makes it a bar
    assert main(base + ["--min-sequence-agreement", "0", "--metric", str(tmp_path / "task.py"), "--accept",
                        "0.4"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verdict: fine:") and "task metric task.py:metric 0.4583 (higher is better, accepted " \
        "from 0.4: met)" in last
    assert main(base + ["--min-sequence-agreement", "0", "--metric", str(tmp_path / "task.py"), "--accept",
                        "0.5", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"]["findings"][0].startswith("task metric task.py:metric")

    marker = tmp_path / "read"
    (tmp_path / "data.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                      "def load_data():\n    yield {'x': __import__('numpy').zeros((2, 6, 5), 'f4')}\n")
    script = base[:-1] + [str(tmp_path / "data.py")]
    for extra, message in ((["--accept", "0.5"], "--accept 0.5 is the bar of a task metric: give --metric"),
                           (["--min-agreement", "2"], "--min-agreement: must be in [0, 1], got 2"),
                           (["--accept", "nan", "--metric", str(tmp_path / "task.py")], "--accept: must be a finite")):
        assert main(script + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert not marker.exists()


# ---------------------------------------------------------------------------------------------- If branches
_W = np.random.default_rng(21)
W1, W2, W3 = (_W.normal(size=s).astype(np.float32) for s in ((4, 6), (6, 3), (4, 3)))


def _if_pair(amax_x: float, amax_r: float):
    """Like silero_vad_op18_ifless: every MatMul inside one If on `sr == 16000`. Then: h = x W1, r = Relu(h),
    y = r W2; else: y = x W3. The INT8 model quantises x and r inside the then branch, x's scale an initializer of
    the main graph, r's one of the branch."""
    def branch(name, nodes, out, inits=()):
        return helper.make_graph(nodes, name, [], [_vi(out, ["N", 3])], list(inits))

    def model(then, other, inits=()):
        nodes = [helper.make_node("Equal", ["sr", "rate16k"], ["cond"]),
                 helper.make_node("If", ["cond"], ["y"], name="rate", then_branch=then, else_branch=other)]
        inits = [numpy_helper.from_array(np.int64(16000), "rate16k"), numpy_helper.from_array(W1, "W1"),
                 numpy_helper.from_array(W2, "W2"), numpy_helper.from_array(W3, "W3"), *inits]
        return _model(nodes, [_vi("x", ["N", 4]), _vi("sr", [], TensorProto.INT64)], [_vi("y", ["N", 3])], inits)

    other = branch("else", [helper.make_node("MatMul", ["x", "W3"], ["ye"])], "ye")
    fp32 = model(branch("then", [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                                 helper.make_node("MatMul", ["r", "W2"], ["yt"])], "yt"), other)
    then8 = branch("then", [*_qdq("x", "xd", "sx"), helper.make_node("MatMul", ["xd", "W1"], ["h"]),
                            helper.make_node("Relu", ["h"], ["r"]), *_qdq("r", "rd", "sr_"),
                            helper.make_node("MatMul", ["rd", "W2"], ["yt"])], "yt", _scale("sr_", amax_r))
    return fp32, model(then8, other, _scale("sx", amax_x))


def _if_batches(x, rates, size=8):
    return [{"x": x[k : k + size], "sr": np.array(rate, np.int64)} for k, rate in zip(range(0, len(x), size), rates)]


def test_evaluate_compares_the_tensors_of_the_if_branches_the_data_takes():
    """Issue 19: on silero_vad_op18_ifless evaluate compared 2 tensors (the outputs) and never the 46 in the If."""
    x = np.random.default_rng(23).normal(size=(24, 4)).astype(np.float32) * 2
    fp32, int8 = _if_pair(8.0, 0.5)
    report = evaluate(fp32, int8, _if_batches(x, [16000, 16000, 8000]), worst=10)
    h, h8 = x[:16] @ W1, fake_quantize(x[:16], 8.0) @ W1  # the 8 kHz batch takes the else branch: no h, no r
    r, r8 = np.maximum(h, 0), np.maximum(h8, 0)
    sq = {t.name: t for t in report.tensors}
    assert {"h", "r", "yt", "ye", "y"} <= set(sq) and report.num_body_compared == 3 + 1  # h, r, yt; ye
    for name, a, b in (("h", h, h8), ("r", r, r8)):
        want = 10 * math.log10((a.astype(np.float64) ** 2).sum() / ((a - b).astype(np.float64) ** 2).sum())
        assert sq[name].sqnr_db == pytest.approx(want, rel=1e-5) and sq[name].num_values == a.size
    assert sq["ye"].num_values == 8 * 3 and sq["ye"].sqnr_db == math.inf  # the float else branch: no error
    assert report.unreached == []
    q = {t.name: t for t in report.quantized}
    assert set(q) == {"x", "r"} and q["r"].quantizer.body == "then_branch of If 'rate'"
    assert q["r"].num_values == r.size and q["r"].num_clipped == int((r > np.float32(0.5)).sum()) > 0
    # x is a graph input quantised in the then branch: measured on the parts that took it; its scale is the main
    # graph's
    assert q["x"].num_values == 16 * 4 and q["x"].quantizer.scale == pytest.approx(8.0 / 127)
    text = report.format()
    assert "compared by name, 4 of them inside If branches" in text and "in then_branch of If 'rate'" in text
    assert report.to_json()["worst_quantized_tensors"][0]["body"] == "then_branch of If 'rate'"

    only8k = evaluate(fp32, int8, _if_batches(x, [8000] * 3), worst=10)
    assert sorted(only8k.unreached) == ["h", "r", "yt"]
    assert {t.name for t in only8k.tensors} == {"ye", "y"} and only8k.quantized == []
    assert "not compared: 3 tensor(s) of If branches no evaluated sample took" in only8k.format()


def test_the_verdict_names_the_clipping_inside_an_if_branch():
    x = np.random.default_rng(22).normal(size=(40, 4)).astype(np.float32) * 2
    fp32, int8 = _if_pair(8.0, 0.02)  # r clipped at 0.02 where it reaches ~10
    report = evaluate(fp32, int8, _if_batches(x, [16000] * 5))
    y = np.maximum(x @ W1, 0) @ W2
    y8 = fake_quantize(np.maximum(fake_quantize(x, 8.0) @ W1, 0), 0.02) @ W2
    top = np.sort(y, axis=1)
    clear = top[:, -1] - top[:, -2] > 1.0
    flips = int((clear & (y.argmax(1) != y8.argmax(1))).sum())
    assert flips >= 3 and (y.argmax(1) == y8.argmax(1)).mean() >= 0.5  # degraded, not lost
    assert report.level == "degraded" and report.verdict.suspects[0].name == "r"
    assert f"y: {flips} of the {int(clear.sum())} samples with a clear FP32 winner (margin > 1) change class" in \
        report.verdict.line
    assert "r (in then_branch of If 'rate') clipped at 0.02 (max |x|" in report.verdict.line


def test_a_branch_pair_is_measured_where_its_branch_ran_even_when_the_branch_shares_no_tensor_name():
    """The INT8 then branch names its tensors apart from FP32's (its output too): which parts ran it is read from a
    tensor of the INT8 graph alone."""
    def model(then):
        other = helper.make_graph([helper.make_node("Neg", ["x"], ["ye"])], "else", [], [_vi("ye", ["N", 3])])
        nodes = [helper.make_node("Equal", ["sr", "rate16k"], ["cond"]),
                 helper.make_node("If", ["cond"], ["y"], name="rate", then_branch=then, else_branch=other)]
        return _model(nodes, [_vi("x", ["N", 3]), _vi("sr", [], TensorProto.INT64)], [_vi("y", ["N", 3])],
                      [numpy_helper.from_array(np.int64(16000), "rate16k"), *_scale("sx", 1.0)])

    fp32 = model(helper.make_graph([helper.make_node("Relu", ["x"], ["yt"])], "then", [], [_vi("yt", ["N", 3])]))
    int8 = model(helper.make_graph([*_qdq("x", "xd", "sx"), helper.make_node("Relu", ["xd"], ["yt8"])], "then", [],
                                   [_vi("yt8", ["N", 3])]))
    x = np.random.default_rng(24).normal(size=(24, 3)).astype(np.float32) * 2
    report = evaluate(fp32, int8, _if_batches(x, [8000, 16000, 8000]))
    (q,) = report.quantized
    assert q.name == "x" and q.quantizer.body == "then_branch of If 'rate'"
    s = np.float32(np.float32(1.0) / np.float32(127))
    ran = x[8:16]  # the 16 kHz batch only
    assert q.num_values == ran.size and q.num_clipped == int(((ran < -128 * s) | (ran > 127 * s)).sum()) > 0


# ---------------------------------------------------------------------------------------------- memory budget
def _json_numbers(data, path=""):
    """(path, value) for every number in a JSON document, to compare two reports field by field."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k not in ("seconds", "num_parts"):
                yield from _json_numbers(v, f"{path}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _json_numbers(v, f"{path}[{i}]")
    else:
        yield path, data


def test_split_batches_give_the_metrics_of_whole_batches():
    """A budget that fits one sample per part: the same report as whole batches, to float64 rounding."""
    x = _sequences(n=22)
    fp32, int8 = _sequence_pair(1.5)
    specs = model_inputs(fp32)
    whole = evaluate(fp32, int8, from_arrays(x, specs, batch_size=8, last_batch="pad"), worst=20)
    per_sample = 2 * 6 * 5 * 4 * 2  # h and y, float32; FP32 also fetches x
    split = evaluate(fp32, int8, from_arrays(x, specs, batch_size=8, last_batch="pad"), worst=20,
                     max_activation_mb=1.5 * per_sample / 2**20)
    assert whole.num_parts == 1 and split.num_parts > 1
    assert split.num_samples == whole.num_samples == 22  # the 2 padding copies of the last batch are left out
    a, b = dict(_json_numbers(whole.to_json())), dict(_json_numbers(split.to_json()))
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key
        else:
            assert b[key] == value, key
    # without the per-tensor pass only the outputs come back, but onnxruntime still works on every tensor: the
    # parts are sized by all of them (x, h, y: 3 of 30 floats), not by the output alone
    budget = 2 * 2.5 * 3 * 30 * 4 / 2**20  # half for each model: parts of 2 samples
    assert evaluate(fp32, int8, from_arrays(x, specs, batch_size=8), worst=0, max_activation_mb=budget).num_parts == 4
    assert evaluate(fp32, int8, from_arrays(x, specs, batch_size=8), worst=0).num_parts == 1
    # and the padding copies are out of the output metrics, as when no sample is padded
    exact = evaluate(fp32, int8, from_arrays(x, specs, batch_size=8, last_batch="keep"), worst=20)
    c, d = dict(_json_numbers(exact.output("y").to_json())), dict(_json_numbers(split.output("y").to_json()))
    assert c.keys() == d.keys() and all(d[k] == pytest.approx(v, rel=1e-12) for k, v in c.items()
                                        if not isinstance(v, (str, type(None))))


def test_threshold_sqnr_in_parts_equals_whole_batches():
    fp32, _ = _logit_pair(3.0)
    x = (np.random.default_rng(13).normal(size=(24, 10)) * 2.0).astype(np.float32)
    cand = {"h": {"tight": 2.0, "max": 30.0}, "x": {"a": 1.0}}
    whole = threshold_sqnr(fp32, _batches(fp32, x, batch_size=8), cand)
    parts = threshold_sqnr(fp32, _batches(fp32, x, batch_size=8), cand, max_activation_mb=100 / 2**20)
    for name in cand:
        for label in cand[name]:
            assert parts[name][label] == pytest.approx(whole[name][label], rel=1e-12)
    with pytest.raises(ValueError, match="max_activation_mb"):
        threshold_sqnr(fp32, _batches(fp32, x), cand, max_activation_mb=0)


# ---------------------------------------------------------------------------------------------- task metric
TASK = """
import numpy as np

def metric(fp32, int8, batch):
    assert len(fp32["y"]) == len(int8["y"]) == len(batch["x"])
    same = (fp32["y"].argmax(-1) == int8["y"].argmax(-1)).all(-1)
    return float(same.mean()), True

def rows(fp32, int8):
    return float(len(fp32["y"])), False, 1.0
"""


def test_a_task_metric_sees_whole_batches_even_when_they_run_in_parts(tmp_path):
    script = tmp_path / "task.py"
    script.write_text(TASK)
    x = _sequences(n=20)
    fp32, int8 = _sequence_pair(1.0)
    report = evaluate(fp32, int8, _batches(fp32, x, batch_size=8), metric=f"{script}",
                      max_activation_mb=1e-4)
    assert report.num_parts > 1
    t32, t8, _ = _expected_sequence(x, 1.0)
    assert report.metric["value"] == pytest.approx((t32 == t8).all(1).mean())  # weighted by samples: 8, 8, 4
    assert report.metric["higher_is_better"] is True and report.metric["batches"] == 3
    rows = evaluate(fp32, int8, _batches(fp32, x, batch_size=8), metric=f"{script}:rows", max_activation_mb=1e-4)
    assert rows.metric["value"] == pytest.approx((8 + 8 + 4) / 3)  # batches of 8, 8 and 4 rows, not parts
    assert "task metric task.py:metric: " in report.format()
    assert json.loads(json.dumps(report.to_json()))["metric"]["name"] == "task.py:metric"


def test_cli_evaluate_exit_3_on_a_lost_model_and_metric_checked_before_data(tmp_path, capsys):
    from trt_calib.cli import main

    x = _sequences()
    fp32, int8 = _sequence_pair(0.02)
    onnx.save(fp32, tmp_path / "m.onnx")
    onnx.save(int8, tmp_path / "q.onnx")
    np.save(tmp_path / "x.npy", x)
    base = ["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--no-progress", "--batch-size", "8"]
    assert main(base + ["--data", str(tmp_path / "x.npy")]) == 3
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("verdict: INT8 LOSES MOST OF FP32'S DECISIONS: y keeps")
    assert main(base + ["--data", str(tmp_path / "x.npy"), "--json", "--max-activation-mb", "0.001"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["exit"] == 3 and data["verdict"]["lost"] and data["num_parts"] > 1
    assert data["outputs"][0]["sequence_agreement"] < 0.5

    # a bad --metric or --sequence-output is refused before the data is read (a data script that would leave a mark)
    marker = tmp_path / "read"
    (tmp_path / "data.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                      "def load_data():\n    yield {'x': __import__('numpy').zeros((2, 6, 5), 'f4')}\n")
    (tmp_path / "bad.py").write_text("def metric(fp32):\n    return 1.0\n")
    for extra, message in ((["--metric", str(tmp_path / "missing.py")], "no such metric script"),
                           (["--metric", str(tmp_path / "bad.py")], "must take (fp32_outputs, int8_outputs"),
                           (["--sequence-output", "z"], "--sequence-output z: no such output")):
        assert main(base + ["--data", str(tmp_path / "data.py")] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
        assert not marker.exists()
    assert main(base + ["--data", str(tmp_path / "data.py"), "--max-activation-mb", "0"]) == 2
    assert "--max-activation-mb" in capsys.readouterr().err


def test_a_task_metric_gets_an_output_whose_batch_axis_is_not_first_joined_along_it(tmp_path):
    """Like silero's state (2, batch, 128): the parts are joined along the axis that holds their samples."""
    script = tmp_path / "state.py"
    script.write_text("def metric(fp32, int8, batch):\n"
                      "    assert fp32['s'].shape == (2, len(batch['x']), 3), fp32['s'].shape\n"
                      "    return float(abs(fp32['s'] - int8['s']).max()), False\n")
    shape = ["N", 2, 3]
    nodes = [helper.make_node("Transpose", ["x"], ["s"], perm=[1, 0, 2])]
    fp32 = _model(nodes, [_vi("x", shape)], [_vi("s", [2, "N", 3])])
    int8 = _model([*_qdq("x", "xd", "q"), helper.make_node("Transpose", ["xd"], ["s"], perm=[1, 0, 2])],
                  [_vi("x", shape)], [_vi("s", [2, "N", 3])], _scale("q", 1.0))
    x = np.random.default_rng(14).normal(size=(10, 2, 3)).astype(np.float32)
    report = evaluate(fp32, int8, _batches(fp32, x, batch_size=5), metric=str(script), max_activation_mb=1e-4)
    assert report.num_parts == 5
    err = np.abs(x - fake_quantize(x, 1.0)).reshape(2, -1).max(axis=1)  # per batch of 5, averaged (equal weights)
    assert report.metric["value"] == pytest.approx(float(err.mean()), rel=1e-6)


def test_best_per_tensor_picks_the_highest_sqnr_and_keeps_the_default_elsewhere():
    from trt_calib.ort.evaluate import best_per_tensor

    raw = {"minmax": {"a": 4.0, "b": 8.0, "c": 2.0}, "mse": {"a": 3.0, "b": 6.0, "c": 1.0}}
    sqnr = {"a": {"minmax": 30.0, "mse": 25.0}, "b": {"minmax": float("nan"), "mse": 20.0}}
    best, picks = best_per_tensor(raw, sqnr, ("minmax", "mse"))
    assert best == {"a": 4.0, "b": 6.0, "c": 1.0}  # nan scores lowest; "c" was not scored: mse's amax
    assert picks == {"minmax": 1, "mse": 1}
