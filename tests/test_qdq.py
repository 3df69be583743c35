"""Q/DQ export for TensorRT 11: scales, weights, placement, coverage, bias correction, CLI and sample."""

from __future__ import annotations

import argparse
import json
import runpy
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import float_initializer, float_value_info, onnx_model
from trt_calib.core.cache import CalibrationCache, amax_to_scale, hex_to_scale
from trt_calib.cli.quantize import register
from trt_calib.ort.collect import calibrate
from trt_calib.errors import CalibrationError, TrtCalibError
from trt_calib.qdq import ASYMMETRIC_METADATA_KEY, qdq_session, quantize_model, quantize_weight
from trt_calib.core.signs import asymmetric_params, asymmetric_quantizer
from trt_calib.ort.collect import collect_signed

REPO = Path(__file__).resolve().parents[1]
LENET = REPO / "data" / "lenet" / "lenet.onnx"
CACHE = REPO / "data" / "caches" / "sampleINT8_TRT-7000.cache"
IMAGES = REPO / "data" / "lenet" / "mnist_train_images_0_599.npy"
SCRIPT = REPO / "data" / "lenet" / "sampleint8_batches.py"


# ---------------------------------------------------------------------------------------------- helpers
_model, _vi, _init = onnx_model, float_value_info, float_initializer  # conftest's small-graph builders


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model, name):
    return [n for n in model.graph.node if name in n.input]


def _init_array(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _qdq_input(model, node_output, index):
    """(QuantizeLinear, DequantizeLinear) feeding input `index` of the node producing `node_output`."""
    prod = _producers(model)
    dq = prod[prod[node_output].input[index]]
    assert dq.op_type == "DequantizeLinear"
    return prod.get(dq.input[0]), dq


def _float32_bytes(value):
    return struct.pack("<f", np.float32(value))


def _lenet_images(n=300):
    return np.load(IMAGES)[:n].astype(np.float32)[:, None] / np.float32(255.0)


# ---------------------------------------------------------------------------------------------- LeNet
def test_lenet_scales_from_cache_are_the_caches_float32_bits():
    cache = CalibrationCache.load(CACHE)
    model, report = quantize_model(LENET, cache)
    entries = {e.name: e.hex for e in cache.entries}
    # graph tensor -> cache entry whose scale it must carry (pool2_flat inherits pool2's through Flatten)
    expected = {"data": "data", "pool1": "pool1", "pool2_flat": "pool2", "ip1": "ip1"}
    inits = {t.name: t for t in model.graph.initializer}
    for tensor, entry in expected.items():
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
        scale = inits[q.input[1]]
        assert scale.data_type == TensorProto.FLOAT and list(scale.dims) == []
        assert numpy_helper.to_array(scale).tobytes() == bytes.fromhex(entries[entry].zfill(8))[::-1]
        zp = inits[q.input[2]]
        assert zp.data_type == TensorProto.INT8 and numpy_helper.to_array(zp) == 0
    assert report.activations["data"].hex == "3c008912"
    assert "through Flatten" in report.activations["pool2_flat"].origin
    assert report.unused_entries == ["conv1", "conv2", "ip2", "prob"]
    assert report.unmapped_entries == [] and report.unnamed_entries == []


def test_lenet_qdq_passes_the_checker_and_agrees_with_float_on_300_images():
    model, report = quantize_model(LENET, CalibrationCache.load(CACHE))
    onnx.checker.check_model(model, full_check=True)
    assert [n.node for n in report.quantized_nodes] == ["conv1", "conv2", "ip1", "ip2"]
    x = _lenet_images(300)
    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    out = qdq_session(model).run(["prob"], {"data": x})[0]
    agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
    assert agreement >= 0.98
    assert 0 < np.abs(out - ref).max() < 0.2  # INT8 changed something, and not much


def test_lenet_from_our_calibration_uses_amax_over_127():
    def batches():
        images = np.load(IMAGES)[50:250].astype(np.float32)[:, None] / np.float32(255.0)
        return [{"data": images[i : i + 50]} for i in range(0, 200, 50)]

    result = calibrate(LENET, batches(), algorithm="minmax")
    model, report = quantize_model(LENET, result)
    q_scale = _init_array(model, _qdq_input(model, "conv2", 0)[0].input[1])
    assert q_scale.tobytes() == _float32_bytes(amax_to_scale(result.amax["pool1"]))
    x = _lenet_images(300)
    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    out = qdq_session(model).run(["prob"], {"data": x})[0]
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.98


def test_lenet_weights_are_int8_per_output_channel_as_onnx_quantizelinear_would_make_them():
    source = onnx.load(LENET)
    model, _ = quantize_model(source, CalibrationCache.load(CACHE))
    for node_out, weight, axis in (("conv2", "conv2_w", 0), ("ip1_prerelu", "ip1_w", 0)):
        w = _init_array(source, weight)
        dq = _producers(model)[_producers(model)[node_out].input[1]]
        assert dq.op_type == "DequantizeLinear" and helper.get_attribute_value(dq.attribute[0]) == axis
        q, scale = _init_array(model, dq.input[0]), _init_array(model, dq.input[1])
        assert q.dtype == np.int8 and scale.dtype == np.float32
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        np.testing.assert_array_equal(scale, np.abs(w).max(axis=reduce) / np.float32(127))
        # the reference int8: onnxruntime's own QuantizeLinear on the float weights with those scales
        ql = _model(
            [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=axis)],
            [_vi("w", list(w.shape))],
            [helper.make_tensor_value_info("q", TensorProto.INT8, None)],
            [_init("s", scale), numpy_helper.from_array(np.zeros(scale.shape, np.int8), "z")],
        )
        ref = ort.InferenceSession(ql.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"w": w})[0]
        np.testing.assert_array_equal(q, ref)
        assert np.abs(q).max(axis=reduce).min() == 127  # every channel uses the full range
        assert not any(t.name == weight for t in model.graph.initializer)  # the float copy is gone


def test_quantize_model_leaves_its_input_untouched():
    source = onnx.load(LENET)
    before = source.SerializeToString()
    quantize_model(source, CalibrationCache.load(CACHE))
    assert source.SerializeToString() == before


def test_no_float_weight_feeds_a_quantizelinear():
    # onnxruntime's WeightBiasQuantization pass re-quantises float weights sitting before a QuantizeLinear; we store
    # int8 weights read by a DequantizeLinear, so there is nothing for it to rewrite.
    model, _ = quantize_model(LENET, CalibrationCache.load(CACHE))
    inits = {t.name for t in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]


# ---------------------------------------------------------------------------------------------- weights
def test_quantize_weight_guards_zero_channels_and_rounds_half_to_even():
    w = np.array([[0.0, 0.0], [1.27, -0.005], [2.54, 0.03]], dtype=np.float32)
    q, scale = quantize_weight(w, 0)
    np.testing.assert_array_equal(scale, np.float32([1.0, 1.27 / 127, 2.54 / 127]).astype(np.float32))
    assert q.tolist()[0] == [0, 0]
    assert q[1, 0] == 127 and q[2, 0] == 127
    # -0.005 / 0.01 = -0.5 rounds to even (-0), 0.03 / 0.02 = 1.5 rounds to 2
    assert q[1, 1] == 0 and q[2, 1] == 2
    q_all, s_all = quantize_weight(w, None)
    assert s_all.shape == () and s_all == np.float32(2.54) / np.float32(127)


@pytest.mark.parametrize(
    "op, weight_shape, attrs, axis",
    [
        ("ConvTranspose", (4, 3, 3, 3), {}, 1),
        ("Gemm", (4, 6), {"transB": 0}, 1),
        ("Gemm", (6, 4), {"transB": 1}, 0),
        ("MatMul", (4, 6), {}, 1),
    ],
)
def test_weight_axis_follows_the_output_channels(op, weight_shape, attrs, axis):
    rng = np.random.default_rng(0)
    w = rng.normal(size=weight_shape).astype(np.float32)
    x_shape = [2, 4, 5, 5] if op == "ConvTranspose" else [2, 4]
    model = _model([helper.make_node(op, ["x", "w"], ["y"], **attrs)], [_vi("x", x_shape)], [_vi("y", None)], [_init("w", w)])
    qdq, report = quantize_model(model, {"x": 3.0})
    dq = _producers(qdq)[_producers(qdq)["y"].input[1]]
    assert helper.get_attribute_value(dq.attribute[0]) == axis
    scale = _init_array(qdq, dq.input[1])
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    np.testing.assert_array_equal(scale, np.abs(w).max(axis=reduce) / np.float32(127))
    assert report.nodes[0].weight_axis == axis
    x = rng.uniform(-3, 3, size=x_shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = qdq_session(qdq).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_per_tensor_weights_when_asked():
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [_vi("x", [1, 3, 6, 6])], [_vi("y", None)], [_init("w", w)])
    qdq, report = quantize_model(model, {"x": 1.0}, per_channel=False)
    dq = _producers(qdq)[_producers(qdq)["y"].input[1]]
    assert not dq.attribute and _init_array(qdq, dq.input[1]) == np.abs(w).max() / np.float32(127)
    assert report.nodes[0].weight_axis is None


def test_conv_weight_from_a_constant_node():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "w"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", None)])
    qdq, report = quantize_model(model, {"x": 1.0})
    onnx.checker.check_model(qdq, full_check=True)
    assert report.nodes[-1].quantized and report.nodes[-1].weight == "w"
    assert not [n for n in qdq.graph.node if n.op_type == "Constant"]  # replaced by the int8 initializer
    q = _init_array(qdq, _producers(qdq)[_producers(qdq)["y"].input[1]].input[0])
    assert q.dtype == np.int8 and q.shape == w.shape
    x = rng.uniform(-1, 1, size=(1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = qdq_session(qdq).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------- placement
def _conv_init(name, cout, cin, k=3, seed=0):
    return _init(name, np.random.default_rng(seed).normal(scale=0.3, size=(cout, cin, k, k)))


def test_no_qdq_between_a_conv_and_its_relu():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [_conv_init("w1", 4, 3), _conv_init("w2", 4, 4, seed=1)])
    qdq, report = quantize_model(model, {"x": 1.0, "c1": 5.0, "r1": 4.0})
    relu = next(n for n in qdq.graph.node if n.op_type == "Relu")
    assert relu.input[0] == "c1" and _producers(qdq)["c1"].op_type == "Conv"
    assert [n.op_type for n in _consumers(qdq, "c1")] == ["Relu"]
    assert [n.op_type for n in _consumers(qdq, "r1")] == ["QuantizeLinear"]
    assert set(report.activations) == {"x", "r1"}
    assert "c1" in report.unused_entries
    assert "fused into the preceding layer" in next(n for n in report.nodes if n.op_type == "Relu").reason


def test_concat_inputs_share_the_largest_scale():
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"]),
        helper.make_node("Conv", ["b", "wd"], ["z"]),  # b is also read directly: the same pair, the shared scale
    ]
    inits = [_conv_init("wa", 2, 3), _conv_init("wb", 2, 3, seed=1), _conv_init("wc", 2, 4, 1, seed=2), _conv_init("wd", 2, 2, 1, seed=3)]
    model = _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", None), _vi("z", None)], inits)
    amax = {"x": 1.0, "a": 2.0, "b": 6.0, "cat": 5.0}
    qdq, report = quantize_model(model, amax)
    onnx.checker.check_model(qdq, full_check=True)
    concat = next(n for n in qdq.graph.node if n.op_type == "Concat")
    scales = [_init_array(qdq, _producers(qdq)[t].input[1]) for t in concat.input]
    assert [_producers(qdq)[t].op_type for t in concat.input] == ["DequantizeLinear"] * 2
    assert scales[0].tobytes() == scales[1].tobytes() == _float32_bytes(amax_to_scale(6.0))
    # the Concat output itself gets no pair of its own; the Conv reading it sees the concatenated DQ outputs
    assert _producers(qdq)[_producers(qdq)["y"].input[0]].op_type == "Concat"
    # b's pair is shared by the Concat and the 1x1 Conv that reads b directly
    assert _producers(qdq)["z"].input[0] == concat.input[1]
    assert report.activations["a"].scale == report.activations["b"].scale == amax_to_scale(6.0)
    assert "Concat 'cat'" in report.activations["a"].origin


def test_add_quantises_the_residual_input_not_the_conv_output():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", None)], [_conv_init("w1", 4, 4), _conv_init("w2", 4, 4, seed=1)])
    qdq, report = quantize_model(model, {"x": 1.5, "r1": 3.0, "c2": 4.0})
    add = next(n for n in qdq.graph.node if n.op_type == "Add")
    assert add.input[0] == "c2"  # the Conv side stays float: TensorRT fuses the Add into that Conv
    assert _producers(qdq)[add.input[1]].op_type == "DequantizeLinear"
    first_conv = _producers(qdq)["c1"]
    assert first_conv.input[0] == add.input[1]  # one pair for x, shared by Conv and Add
    cov = next(n for n in report.nodes if n.op_type == "Add")
    assert cov.quantized and cov.inputs == ["x"]
    # placement "weighted" leaves the Add alone
    qdq_w, report_w = quantize_model(model, {"x": 1.5, "r1": 3.0, "c2": 4.0}, placement="weighted")
    assert next(n for n in qdq_w.graph.node if n.op_type == "Add").input[1] == "x"
    assert not next(n for n in report_w.nodes if n.op_type == "Add").quantized


def test_add_of_two_non_conv_tensors_stays_float():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["s"]), helper.make_node("Conv", ["s", "w"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", None)], [_conv_init("w", 2, 2, 1)])
    qdq, report = quantize_model(model, {"x": 1.0, "r": 1.0, "s": 2.0})
    add = next(n for n in report.nodes if n.op_type == "Add")
    assert not add.quantized and "no input comes from a Conv" in add.reason
    assert set(report.activations) == {"s"}


def test_max_pool_input_gets_no_pair_and_its_output_inherits_the_scale():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [1, 2, 8, 8])], [_vi("y", None)], [_conv_init("w1", 2, 2), _conv_init("w2", 2, 2, seed=1)])
    qdq, report = quantize_model(model, {"x": 1.0, "c1": 3.0})  # no entry for the pool output
    assert [n.op_type for n in _consumers(qdq, "c1")] == ["MaxPool"]
    assert report.activations["p"].scale == amax_to_scale(3.0)
    assert "through MaxPool" in report.activations["p"].origin


# ---------------------------------------------------------------------------------------------- coverage
def _two_convs():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["y"])]
    return _model(nodes, [_vi("x", [1, 2, 6, 6])], [_vi("y", None)], [_conv_init("w1", 2, 2), _conv_init("w2", 2, 2, seed=1)])


def test_unmapped_and_unnamed_cache_entries_are_reported():
    text = "TRT-8601-EntropyCalibration2\nx: 3c010204\nr1: 3d000000\nrenamed_tensor: 3c000000\n(Unnamed Layer* 3) [Convolution]_output: 3c800000\n"
    cache = CalibrationCache.parse(text)
    qdq, report = quantize_model(_two_convs(), cache)
    assert report.scale_source == "cache"
    assert report.unmapped_entries == ["renamed_tensor"]
    assert report.unnamed_entries == ["(Unnamed Layer* 3) [Convolution]_output"]
    assert report.unused_entries == []
    assert _init_array(qdq, _qdq_input(qdq, "y", 0)[0].input[1]).tobytes() == _float32_bytes(hex_to_scale("3d000000"))
    table = report.table()
    assert "renamed_tensor" in table and "(Unnamed Layer* 3)" in table
    doc = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert doc["unmapped_entries"] == ["renamed_tensor"] and doc["activations"][0]["hex"] == "3c010204"


def test_tensors_without_a_scale_leave_their_node_in_float():
    qdq, report = quantize_model(_two_convs(), {"x": 1.0})
    first, second = [n for n in report.nodes if n.op_type == "Conv"]
    assert first.quantized and not second.quantized
    assert second.reason == "no scale for 'r1'" and report.unquantized_tensors == {"r1": "no scale for 'r1'"}
    conv2 = _producers(qdq)["y"]
    assert conv2.input[:2] == ["r1", "w2"]  # untouched: float input, float weight
    assert report.float_weighted_nodes == [second]


@pytest.mark.parametrize("amax, reason", [(0.0, "zero scale"), (float("inf"), "non-finite scale"), (float("nan"), "non-finite scale")])
def test_zero_and_non_finite_scales_leave_the_node_in_float(amax, reason):
    _, report = quantize_model(_two_convs(), {"x": 1.0, "r1": amax})
    second = [n for n in report.nodes if n.op_type == "Conv"][1]
    assert not second.quantized and second.reason.startswith(reason)


def test_nothing_to_quantise_is_an_error_that_says_so():
    cache = CalibrationCache.parse("TRT-8601-EntropyCalibration2\nother: 3c010204\n")
    with pytest.raises(CalibrationError, match="none of the 1 scale"):
        quantize_model(_two_convs(), cache)


def test_low_opset_model_is_upgraded_to_13():
    model = _two_convs()
    model.opset_import[0].version = 11
    qdq, report = quantize_model(model, {"x": 1.0, "r1": 2.0})
    assert report.opset == (11, 13)
    assert max(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")) == 13
    onnx.checker.check_model(qdq, full_check=True)


def test_qdq_session_runs_the_graph_as_written():
    # y = DQ(Q(x)) @ DQ(w_int8): compute it in numpy and compare bit for bit
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [4, 5])], [_vi("y", None)], [_init("w", w)])
    qdq, _ = quantize_model(model, {"x": 2.0})
    x = rng.uniform(-3, 3, size=(4, 5)).astype(np.float32)
    s = np.float32(amax_to_scale(2.0))
    xq = np.clip(np.rint(x / s), -128, 127).astype(np.float32) * s
    q, ws = quantize_weight(w, 1)
    expected = xq @ (q.astype(np.float32) * ws[None, :])
    out = qdq_session(qdq).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- bias correction
def _depthwise_model(seed=4):
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),  # depthwise, no bias
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"]),
    ]
    # a few large taps make the other weights round coarsely: the per-channel mean shift bias correction fixes
    w2 = rng.normal(scale=0.05, size=(8, 1, 3, 3))
    w2[:, 0, 0, 0] = 1.0
    inits = [
        _init("w1", rng.normal(scale=0.4, size=(8, 3, 3, 3))),
        _init("b1", rng.normal(scale=0.1, size=8)),
        _init("w2", w2),
        _init("w3", rng.normal(scale=0.3, size=(6, 8, 1, 1))),
        _init("b3", np.zeros(6)),
    ]
    return _model(nodes, [_vi("x", [4, 3, 10, 10])], [_vi("y", None)], inits)


def _channel_error(float_model, qdq, batches):
    f = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"])
    q = qdq_session(qdq)
    diffs = [q.run(["y"], b)[0].astype(np.float64) - f.run(["y"], b)[0] for b in batches]
    return np.abs(np.mean([d.mean(axis=(0, 2, 3)) for d in diffs], axis=0))


def test_bias_correction_removes_most_of_the_per_channel_mean_error():
    model = _depthwise_model()
    rng = np.random.default_rng(5)
    calib = [{"x": rng.uniform(0, 1, size=(4, 3, 10, 10)).astype(np.float32)} for _ in range(4)]
    heldout = [{"x": rng.uniform(0, 1, size=(4, 3, 10, 10)).astype(np.float32)} for _ in range(4)]
    result = calibrate(model, calib, algorithm="minmax")
    plain, _ = quantize_model(model, result)
    corrected, report = quantize_model(model, result, bias_correction=calib, bias_correction_batches=4)
    onnx.checker.check_model(corrected, full_check=True)
    before, after = _channel_error(model, plain, heldout), _channel_error(model, corrected, heldout)
    assert before.mean() > 1e-3  # there is a shift to correct
    assert after.mean() < 0.3 * before.mean()
    info = report.bias_correction
    assert info["batches"] == 4 and info["samples"] == 16 and info["layers"] == 3
    shifted = [n for n in report.nodes if n.op_type == "Conv"]
    assert all(n.bias_shift is not None and n.bias_shift > 0 for n in shifted)
    # the depthwise Conv had no bias: it has one now, holding minus its measured error
    dw = _producers(corrected)["c2"]
    assert len(dw.input) == 3 and _init_array(corrected, dw.input[2]).shape == (8,)
    assert not any(t.name == "b1" for t in corrected.graph.initializer)  # replaced, not kept beside


def test_bias_correction_takes_biases_from_constant_nodes_as_paddle2onnx_writes_them():
    model = _depthwise_model()
    b1 = next(t for t in model.graph.initializer if t.name == "b1")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["b1"], value=b1))
    model.graph.initializer.remove(b1)
    rng = np.random.default_rng(8)
    calib = [{"x": rng.uniform(0, 1, size=(4, 3, 10, 10)).astype(np.float32)} for _ in range(2)]
    result = calibrate(model, calib, algorithm="minmax")
    corrected, report = quantize_model(model, result, bias_correction=calib)
    onnx.checker.check_model(corrected, full_check=True)
    assert report.bias_correction["layers"] == 3  # the Constant-fed Conv included
    conv = _producers(corrected)["c1"]
    shift = _init_array(corrected, conv.input[2]) - numpy_helper.to_array(b1)
    first_conv = [n for n in report.nodes if n.op_type == "Conv"][0]
    assert np.abs(shift).max() == pytest.approx(first_conv.bias_shift, rel=1e-6) and first_conv.bias_shift > 0
    assert not any(n.op_type == "Constant" and n.output[0] == "b1" for n in corrected.graph.node)  # unused: gone


def test_bias_correction_in_parts_of_the_activation_budget_gives_the_same_biases():
    """Batches of 8 cut into parts of 2 samples (budget): the biases of whole batches, to float64 rounding."""
    model = _depthwise_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    rng = np.random.default_rng(7)
    calib = [{"x": rng.uniform(0, 1, size=(8, 3, 10, 10)).astype(np.float32)} for _ in range(3)]
    result = calibrate(model, calib, algorithm="minmax")
    whole, whole_report = quantize_model(model, result, bias_correction=calib, threads=1)
    per_sample = 4 * (3 + 8 + 8 + 8 + 8 + 6) * 100  # x, c1, r1, c2, r2, y: float32, 10x10
    split, split_report = quantize_model(model, result, bias_correction=calib, threads=1,
                                         max_activation_mb=2.5 * per_sample / 2**20)
    assert whole_report.bias_correction["parts"] == 3 and split_report.bias_correction["parts"] == 12
    biases = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if "bias_corrected" in t.name}
    a, b = biases(whole), biases(split)
    assert a.keys() == b.keys() and len(a) == 3
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-9)  # float32 biases of float64 means
    assert split_report.bias_correction["mean_abs_error_before"] == pytest.approx(
        whole_report.bias_correction["mean_abs_error_before"], rel=1e-9)


def test_bias_correction_of_a_gemm_with_transposed_weight():
    rng = np.random.default_rng(6)
    w = rng.normal(scale=0.2, size=(5, 16)).astype(np.float32)
    w[:, 0] = 2.0
    model = _model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, beta=0.5)],
        [_vi("x", [8, 16])],
        [_vi("y", None)],
        [_init("w", w), _init("c", np.ones(5))],
    )
    calib = [{"x": rng.uniform(0, 1, size=(8, 16)).astype(np.float32)} for _ in range(4)]
    result = calibrate(model, calib, algorithm="minmax")
    plain, _ = quantize_model(model, result)
    corrected, _ = quantize_model(model, result, bias_correction=calib)
    f = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    err = lambda m: np.abs(np.mean([qdq_session(m).run(None, b)[0] - f.run(None, b)[0] for b in calib], axis=(0, 1)))
    assert err(corrected).max() < 1e-5 < err(plain).max()  # on the data it measured on, the mean error is gone


# ---------------------------------------------------------------------------------------------- CLI and sample
def _cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_from_cache_writes_the_model_and_the_report(tmp_path, capsys):
    out, report = tmp_path / "lenet.qdq.onnx", tmp_path / "coverage.json"
    assert _cli(["quantize", str(LENET), "--from-cache", str(CACHE), "-o", str(out), "--report", str(report), "--no-progress"]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    doc = json.loads(report.read_text())
    assert doc["scale_source"] == "cache" and doc["unused_entries"] == ["conv1", "conv2", "ip2", "prob"]
    assert doc["scales_from"] == str(CACHE)
    printed = capsys.readouterr().out
    assert "4/4 Conv/ConvTranspose/Gemm/MatMul nodes quantised" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coverage.json", "lenet.qdq.onnx"]  # no stray temp files


def test_cli_calibrates_with_bias_correction(tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    argv = ["quantize", str(LENET), "--data", str(SCRIPT), "--algorithm", "minmax", "-o", str(out), "--report", str(report),
            "--bias-correction", "--bias-correction-batches", "2", "--no-progress"]
    assert _cli(argv) == 0
    doc = json.loads(report.read_text())
    assert doc["bias_correction"]["batches"] == 2 and doc["bias_correction"]["samples"] == 100
    assert doc["scales_from"] == "calibration (minmax)"
    x = _lenet_images(300)
    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    q = qdq_session(str(out)).run(["prob"], {"data": x})[0]
    assert np.mean(ref.argmax(1) == q.argmax(1)) >= 0.98


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give --data"),
        (["--from-cache", str(CACHE), "--bias-correction"], "--bias-correction runs the model"),
    ],
)
def test_cli_refuses_missing_inputs_before_writing(tmp_path, extra, message):
    out = tmp_path / "q.onnx"
    with pytest.raises(TrtCalibError, match=message):
        _cli(["quantize", str(LENET), "-o", str(out), *extra])
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- asymmetric
def _activation_pairs(model):
    """tensor -> (scale initializer, zero-point initializer) of every activation QuantizeLinear, checking that its
    DequantizeLinear reads the same two initializers."""
    inits = {t.name: t for t in model.graph.initializer}
    pairs = {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dq = _consumers(model, q.output[0])
        assert [n.op_type for n in dq] == ["DequantizeLinear"] and dq[0].input[1:] == q.input[1:]
        pairs[q.input[0]] = (inits[q.input[1]], inits[q.input[2]])
    return pairs


def _assert_pair(pair, quantizer, elem_type):
    scale, zp = pair
    assert scale.data_type == TensorProto.FLOAT and list(scale.dims) == []
    assert numpy_helper.to_array(scale).tobytes() == _float32_bytes(quantizer.scale)
    assert zp.data_type == elem_type and list(zp.dims) == []
    assert int(numpy_helper.to_array(zp)) == quantizer.zero_point


def _signed_then_relu():
    """x (both signs) -> Conv -> Relu -> r (one-sided) -> Conv -> y, and calibration batches for it."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [2, 3, 6, 6])], [_vi("y", None)], [_conv_init("w1", 4, 3), _conv_init("w2", 2, 4, 1, seed=1)])
    rng = np.random.default_rng(7)
    batches = [{"x": rng.uniform(-1.0, 3.0, size=(2, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    return model, batches


@pytest.mark.parametrize("method", ["mse", "minmax"])
def test_asymmetric_pairs_are_asymmetric_quantizers_for_signed_and_post_relu_tensors(method):
    model, batches = _signed_then_relu()
    hists, _ = collect_signed(model, batches)
    qdq, report = quantize_model(model, hists, asymmetric=method)
    onnx.checker.check_model(qdq, full_check=True)
    pairs = _activation_pairs(qdq)
    assert set(pairs) == {"x", "r"}
    qx, qr = asymmetric_quantizer(hists["x"], method), asymmetric_quantizer(hists["r"], method)
    assert qr.zero_point == 0 and 40 < qx.zero_point < 100  # post-ReLU: the uint8 grid starts at 0; x: about 255/4
    _assert_pair(pairs["x"], qx, TensorProto.UINT8)
    _assert_pair(pairs["r"], qr, TensorProto.UINT8)
    assert report.activations["x"].zero_point == qx.zero_point and report.activations["x"].dtype == "uint8"
    # onnxruntime reads the uint8 zero point as the Quantizer does: DQ(Q(x)) is its fake quantisation
    x = batches[0]["x"]
    dq_x = _consumers(qdq, next(n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"))[0].output[0]
    out = qdq_session(qdq, outputs=[dq_x]).run([dq_x], {"x": x})[0]
    np.testing.assert_array_equal(out, qx.dequantize(qx.quantize(x)).astype(np.float32))


def test_asymmetric_int8_has_a_zero_point_of_its_own_type():
    model, batches = _signed_then_relu()
    hists, _ = collect_signed(model, batches)
    qdq, report = quantize_model(model, hists, asymmetric="mse", asymmetric_dtype="int8")
    onnx.checker.check_model(qdq, full_check=True)
    pairs = _activation_pairs(qdq)
    qx = asymmetric_quantizer(hists["x"], "mse", qmin=-128, qmax=127)
    qr = asymmetric_quantizer(hists["r"], "mse", qmin=-128, qmax=127)
    assert qr.zero_point == -128  # one-sided on int8 codes: zero sits at the bottom code
    _assert_pair(pairs["x"], qx, TensorProto.INT8)
    _assert_pair(pairs["r"], qr, TensorProto.INT8)
    assert report.asymmetric["dtype"] == "int8" and report.activations["r"].lo == 0.0


def _concat_of_inputs(lo2, hi2):
    """Concat(x1, x2) -> 1x1 Conv -> y, and x2 also read by its own Conv -> z; calibration batches with x1 in
    [-1, 2] and x2 in [lo2, hi2]."""
    nodes = [
        helper.make_node("Concat", ["x1", "x2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"]),
        helper.make_node("Conv", ["x2", "wd"], ["z"]),
    ]
    model = _model(nodes, [_vi("x1", [2, 2, 4, 4]), _vi("x2", [2, 2, 4, 4])], [_vi("y", None), _vi("z", None)],
                   [_conv_init("wc", 2, 4, 1), _conv_init("wd", 2, 2, 1, seed=1)])
    rng = np.random.default_rng(8)
    batches = []
    for _ in range(2):
        x1 = rng.uniform(-1.0, 2.0, size=(2, 2, 4, 4)).astype(np.float32)
        x2 = rng.uniform(lo2, hi2, size=(2, 2, 4, 4)).astype(np.float32)
        x1.flat[:2], x2.flat[:2] = (-1.0, 2.0), (lo2, hi2)  # exact extremes
        batches.append({"x1": x1, "x2": x2})
    return model, batches


def test_asymmetric_concat_inputs_share_the_pair_of_their_ranges_union():
    model, batches = _concat_of_inputs(-3.0, 0.5)
    hists, _ = collect_signed(model, batches)
    qdq, report = quantize_model(model, hists, asymmetric="minmax")
    onnx.checker.check_model(qdq, full_check=True)
    q1, q2 = (asymmetric_quantizer(hists[t], "minmax") for t in ("x1", "x2"))
    assert (q1.lo, q1.hi) != (q2.lo, q2.hi)
    scale, zp = asymmetric_params(min(q1.lo, q2.lo), max(q1.hi, q2.hi), 0, 255)
    pairs = _activation_pairs(qdq)
    assert set(pairs) == {"x1", "x2"}  # x2 keeps one pair, shared by the Concat and the Conv reading it directly
    for t in ("x1", "x2"):
        assert numpy_helper.to_array(pairs[t][0]).tobytes() == _float32_bytes(scale)
        assert int(numpy_helper.to_array(pairs[t][1])) == zp
    assert scale > max(q1.scale, q2.scale) and zp not in (q1.zero_point, q2.zero_point)
    assert _producers(qdq)["z"].input[0] == next(n for n in qdq.graph.node if n.op_type == "Concat").input[1]
    assert "union of their ranges" in report.activations["x1"].origin


def test_asymmetric_concat_input_that_covers_the_other_lends_its_own_pair():
    model, batches = _concat_of_inputs(-0.5, 1.0)
    hists, _ = collect_signed(model, batches)
    qdq, report = quantize_model(model, hists, asymmetric="minmax")
    q1 = asymmetric_quantizer(hists["x1"], "minmax")
    for pair in _activation_pairs(qdq).values():
        _assert_pair(pair, q1, TensorProto.UINT8)
    assert "widest: 'x1'" in report.activations["x2"].origin


def test_asymmetric_pass_through_tensors_take_their_sources_pair():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["c2"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),
    ]
    inits = [_conv_init("w1", 2, 2), _conv_init("w2", 2, 2, 1, seed=1),
             _init("wg", np.random.default_rng(2).normal(size=(3, 8)))]
    model = _model(nodes, [_vi("x", [2, 2, 4, 4])], [_vi("c2", None), _vi("g", None)], inits)
    rng = np.random.default_rng(9)
    batches = [{"x": rng.normal(size=(2, 2, 4, 4)).astype(np.float32)} for _ in range(2)]
    hists, _ = collect_signed(model, batches)
    qdq, report = quantize_model(model, hists, asymmetric="mse")
    onnx.checker.check_model(qdq, full_check=True)
    own, source = asymmetric_quantizer(hists["p"], "mse"), asymmetric_quantizer(hists["c1"], "mse")
    assert own != source  # max pooling changed the range: taking the pool's own would differ
    pairs = _activation_pairs(qdq)
    assert set(pairs) == {"x", "p", "f"}
    _assert_pair(pairs["p"], source, TensorProto.UINT8)
    _assert_pair(pairs["f"], source, TensorProto.UINT8)
    assert report.activations["f"].origin == "histogram entry of 'c1', through MaxPool -> Flatten"
    assert [n.op_type for n in _consumers(qdq, "c1")] == ["MaxPool"]  # still no pair on the pool input


def _sampleint8_batches():
    return list(runpy.run_path(str(SCRIPT))["load_data"]())


@pytest.fixture(scope="module")
def lenet_signed():
    return collect_signed(LENET, _sampleint8_batches())[0]


def test_asymmetric_lenet_passes_the_checker_and_agrees_with_float_on_300_images(lenet_signed):
    model, report = quantize_model(LENET, lenet_signed, asymmetric="mse")
    onnx.checker.check_model(model, full_check=True)
    assert [n.node for n in report.quantized_nodes] == ["conv1", "conv2", "ip1", "ip2"]
    zps = {t: a.zero_point for t, a in report.activations.items()}
    assert zps["data"] == 0 and zps["ip1"] == 0 and zps["pool1"] > 0  # post-ReLU / image input vs signed
    x = _lenet_images(300)
    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    out = qdq_session(model).run(["prob"], {"data": x})[0]
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.98
    assert 0 < np.abs(out - ref).max() < 0.2


def test_asymmetric_minmax_from_a_calibration_result_equals_the_signed_histograms():
    # |x| histograms keep the signed extrema, which is all minmax needs; mse needs the signs
    model, batches = _signed_then_relu()
    result = calibrate(model, batches)
    hists, _ = collect_signed(model, batches)
    from_result, _ = quantize_model(model, result, asymmetric="minmax")
    from_signed, _ = quantize_model(model, hists, asymmetric="minmax")
    assert from_result.SerializeToString() == from_signed.SerializeToString()
    with pytest.raises(ValueError, match="collect_signed"):
        quantize_model(model, result, asymmetric="mse")


@pytest.mark.parametrize("scales, message", [
    (CalibrationCache.parse("TRT-8601-EntropyCalibration2\nx: 3c010204\n"), "not a calibration cache"),
    ({"x": 1.0, "r": 2.0}, "of amax values"),
])
def test_asymmetric_refuses_scales_without_signs(scales, message):
    model, _ = _signed_then_relu()
    with pytest.raises(TypeError, match=message):
        quantize_model(model, scales, asymmetric="minmax")


def test_asymmetric_all_zero_tensor_leaves_its_node_in_float():
    # non-negative x through a Conv with negative weights: the ReLU output is all zeros in calibration
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    w1 = -np.abs(np.random.default_rng(3).normal(size=(2, 2, 1, 1))) - 0.1
    model = _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", None)], [_init("w1", w1), _conv_init("w2", 2, 2, 1, seed=1)])
    x = np.random.default_rng(4).uniform(0.5, 1.0, size=(1, 2, 3, 3)).astype(np.float32)
    hists, _ = collect_signed(model, [{"x": x}])
    _, report = quantize_model(model, hists, asymmetric="minmax")
    first, second = [n for n in report.nodes if n.op_type == "Conv"]
    assert first.quantized and not second.quantized
    assert report.unquantized_tensors == {"r": "zero range (the tensor was all zeros in calibration) for 'r'"}


def test_symmetric_output_keeps_int8_zero_points_and_amax_over_127_scales():
    # every activation pair of the default (symmetric) path: int8 zero point 0, scale = amax/127 bit for bit
    result = calibrate(LENET, _sampleint8_batches()[:4], algorithm="minmax")
    model, report = quantize_model(LENET, result)
    pairs = _activation_pairs(model)
    assert set(pairs) == {"data", "pool1", "pool2_flat", "ip1"}
    for t, (scale, zp) in pairs.items():
        assert numpy_helper.to_array(scale).tobytes() == _float32_bytes(amax_to_scale(result.amax[t]))
        assert zp.data_type == TensorProto.INT8 and numpy_helper.to_array(zp) == 0
    for t in model.graph.initializer:  # weights too: no uint8 anywhere
        assert t.data_type != TensorProto.UINT8
    assert not [p for p in model.metadata_props if p.key == ASYMMETRIC_METADATA_KEY]
    assert report.asymmetric is None and "ASYMMETRIC" not in report.table()
    assert report.to_json()["activations"][0].keys() == {"tensor", "scale", "hex", "amax", "origin"}


def test_cli_asymmetric_marks_the_model_the_report_and_the_log(tmp_path, capsys, caplog):
    out, report = tmp_path / "asym.onnx", tmp_path / "r.json"
    argv = ["quantize", str(LENET), "--data", str(SCRIPT), "--asymmetric", "-o", str(out), "--report", str(report),
            "--no-progress"]
    with caplog.at_level("WARNING", logger="trt_calib.qdq"):
        assert _cli(argv) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[ASYMMETRIC_METADATA_KEY].startswith("uint8 activations with zero points (mse ranges)")
    assert "kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA" in meta[ASYMMETRIC_METADATA_KEY]
    assert "rejects" in meta[ASYMMETRIC_METADATA_KEY]
    doc = json.loads(report.read_text())
    assert doc["asymmetric"]["method"] == "mse" and doc["asymmetric"]["dtype"] == "uint8"
    assert doc["scales_from"] == "signed histograms (asymmetric mse, uint8)"
    by_tensor = {a["tensor"]: a for a in doc["activations"]}
    assert by_tensor["pool1"]["zero_point"] > 0 and by_tensor["pool1"]["dtype"] == "uint8"
    assert "ASYMMETRIC: uint8 activations with zero points" in capsys.readouterr().out
    assert any("TensorRT on GPUs rejects" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--from-cache", str(CACHE), "--asymmetric"], "a calibration cache holds one symmetric amax per tensor"),
        (["--from-cache", str(CACHE), "--asymmetric", "minmax", "--data", str(SCRIPT)], "cannot use --from-cache"),
        (["--asymmetric", "minmax"], "give --data"),
        (["--data", str(SCRIPT), "--asymmetric", "mse", "--algorithm", "minmax"], "--algorithm minmax picks symmetric"),
        (["--data", str(SCRIPT), "--asymmetric-dtype", "int8"], "needs --asymmetric"),
    ],
)
def test_cli_asymmetric_refusals(tmp_path, extra, message):
    out = tmp_path / "q.onnx"
    with pytest.raises(TrtCalibError, match=message):
        _cli(["quantize", str(LENET), "-o", str(out), *extra])
    assert not out.exists()


def test_cli_from_cache_with_asymmetric_exits_2_with_one_line(tmp_path, capsys):
    from trt_calib.cli import main

    out = tmp_path / "q.onnx"
    assert main(["quantize", str(LENET), "--from-cache", str(CACHE), "--asymmetric", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--asymmetric cannot use --from-cache" in err[0] and "Hint: give --data" in err[0]
    assert not out.exists()


def test_engine_build_sample_prints_help_without_tensorrt():
    sample = REPO / "samples" / "build_qdq_engine_trt11.py"
    done = subprocess.run([sys.executable, str(sample), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "strongly typed TensorRT 11 engine" in text and "no precision flags" in text
