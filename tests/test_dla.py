"""validate --dla: DLA readiness from TensorRT's documented DLA layer rules (tools/dla.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.cli import main
from trt_calib.core.cache import CalibrationCache, CacheEntry, amax_to_scale, make_header, scale_to_hex
from trt_calib.errors import TrtCalibError
from trt_calib.tools.dla import SOURCES, dla_readiness
from trt_calib.tools.validate import validate_cache

from conftest import LENET, TRT_TABLE


def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _arr(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _cache(amax, algorithm="EntropyCalibration2", version="8.6.1"):
    return CalibrationCache(make_header(algorithm, version), [CacheEntry(n, scale_to_hex(amax_to_scale(a))) for n, a in amax.items()])


def _one(node, inputs=(("x", [1, 8, 16, 16]),), outputs=(("y", None),), inits=(), opset=13):
    model = _model([node], [_vi(n, s) for n, s in inputs], [_vi(n, s) for n, s in outputs], inits, opset)
    (layer,) = dla_readiness(model).layers
    return layer


def _conv(name="c", k=3, cout=8, cin=8, **attrs):
    w = _arr("w", np.zeros((cout, cin // attrs.get("group", 1), k, k)))
    return helper.make_node("Conv", ["x", "w"], ["y"], name=name, **attrs), [w]


@pytest.mark.parametrize(
    "k, attrs, cout, verdict, words",
    [
        (3, {"pads": [1, 1, 1, 1]}, 8, "eligible", None),
        (33, {}, 8, "ineligible", "kernel [33, 33] outside [1, 32]"),
        (3, {"strides": [9, 9]}, 8, "ineligible", "stride [9, 9] outside [1, 8]"),
        (3, {"pads": [3, 3, 3, 3]}, 8, "ineligible", "not less than kernel"),
        (3, {"dilations": [33, 33]}, 8, "ineligible", "dilation"),
        (1, {}, 8193, "ineligible", "8193 output maps"),
        (3, {"group": 8, "pads": [1, 1, 1, 1]}, 8, "unknown", "multiples of 4"),
        (3, {"auto_pad": "SAME_UPPER"}, 8, "eligible", None),
    ],
    ids=["ok", "kernel", "stride", "padding", "dilation", "maps", "depthwise", "same-pad"],
)
def test_convolution_limits_from_nvinfer_h(k, attrs, cout, verdict, words):
    node, inits = _conv(k=k, cout=cout, **attrs)
    layer = _one(node, inits=inits)
    assert layer.verdict == verdict, layer.reasons
    if words:
        assert any(words in r for r in layer.reasons), layer.reasons
    assert SOURCES["NVINFER_H"] in layer.to_json()["sources"]


def test_a_1d_convolution_is_not_for_dla():
    w = _arr("w", np.zeros((8, 8, 3)))
    layer = _one(helper.make_node("Conv", ["x", "w"], ["y"], name="c"), inputs=(("x", [1, 8, 16]),), inits=[w])
    assert layer.verdict == "ineligible" and "2-D only" in layer.reasons[0]


@pytest.mark.parametrize(
    "node, inits, verdict, words",
    [
        (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[9, 9]), [], "ineligible", "window [9, 9]"),
        (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]), [], "eligible", None),
        (helper.make_node("Concat", ["x", "x"], ["y"], axis=1), [], "eligible", None),
        (helper.make_node("Concat", ["x", "x"], ["y"], axis=2), [], "ineligible", "channel axis only"),
        (helper.make_node("Exp", ["x"], ["y"]), [], "ineligible", "kABS"),
        (helper.make_node("Abs", ["x"], ["y"]), [], "eligible", None),
        (helper.make_node("Softplus", ["x"], ["y"]), [], "ineligible", "activation types"),
        (helper.make_node("LeakyRelu", ["x"], ["y"]), [], "unknown", "Leaky ReLU"),
        (helper.make_node("Softmax", ["x"], ["y"], axis=1), [], "unknown", "INT8 support is not stated"),
        (helper.make_node("Reshape", ["x", "s"], ["y"]), [_arr("s", [1, -1], np.int64)], "unknown", "Shuffle"),
        (helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3]), [], "ineligible", "MAX only"),
        (helper.make_node("ReduceMax", ["x"], ["y"], axes=[1]), [], "eligible", None),
        (helper.make_node("ReduceMax", ["x"], ["y"], axes=[0]), [], "ineligible", "C, H and W only"),
        (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), [_arr("i", [0], np.int64)], "ineligible", "no DLA"),
        (helper.make_node("PRelu", ["x", "x"], ["y"]), [], "ineligible", "build-time constant"),
        (helper.make_node("PRelu", ["x", "p"], ["y"]), [_arr("p", np.full((8, 1, 1), 0.25))], "eligible", None),
        (helper.make_node("Pad", ["x", "p"], ["y"]), [_arr("p", [0] * 8, np.int64)], "ineligible", "Padding layer"),
        (helper.make_node("LRN", ["x"], ["y"], size=5), [], "ineligible", "FP16 only"),
        (helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"]),
         [_arr("st", [0], np.int64), _arr("en", [4], np.int64), _arr("ax", [1], np.int64)], "eligible", None),
        (helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"]),
         [_arr("st", [0], np.int64), _arr("en", [1], np.int64), _arr("ax", [0], np.int64)], "ineligible", "first dimension"),
        (helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor"), [_arr("sc", [1, 1, 2, 2])], "eligible", None),
        (helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor"), [_arr("sc", [1, 1, 2.5, 2.5])], "ineligible", "integers in [1, 32]"),
        (helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear"), [_arr("sc", [1, 1, 8, 8])], "ineligible",
         "integers in [1, 4]"),
        (helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic"), [_arr("sc", [1, 1, 2, 2])], "ineligible",
         "nearest and linear"),
        (helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=1), [_arr("k", [2], np.int64)], "unknown", "no DLA rule"),
    ],
    ids=["pool-window", "avgpool", "concat-c", "concat-h", "exp", "abs", "softplus", "leaky", "softmax", "reshape",
         "reducemean", "reducemax-c", "reducemax-n", "gather", "prelu-tensor", "prelu-const", "pad", "lrn", "slice",
         "slice-batch", "resize-nearest", "resize-fraction", "resize-linear", "resize-cubic", "topk"],
)
def test_layer_rules(node, inits, verdict, words):
    node.name = node.name or "n"
    outputs = tuple((o, None) for o in node.output)
    layer = _one(node, outputs=outputs, inits=inits)
    assert layer.verdict == verdict, layer.reasons
    if words:
        assert any(words in r for r in layer.reasons), layer.reasons
    assert layer.sources  # every verdict names where it comes from


def _pool_net():
    """x -> Conv -> Relu -> MaxPool -> Add(pool, pool2) with a second pool: every tensor calibrated."""
    w = _arr("w", np.full((8, 8, 3, 3), 0.01))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Add", ["p", "p2"], ["y"], name="add"),
        helper.make_node("Softmax", ["y"], ["s"], name="softmax", axis=1),
    ]
    return _model(nodes, [_vi("x", [1, 8, 16, 16])], [_vi("s", None)], [w])


def test_missing_scales_of_eligible_layers_and_the_summary_line():
    model = _pool_net()
    cache = _cache({"x": 1.0, "c": 2.0, "p": 3.0, "p2": 1.5, "s": 1.0})  # r and y missing; pool2's ranges differ
    report = dla_readiness(model, cache)
    by = {layer.node: layer for layer in report.layers}
    assert by["pool2"].verdict == "ineligible" and "equal input and output ranges" in by["pool2"].reasons[0]
    assert by["conv"].missing == [] and by["relu"].missing == ["r"] and by["add"].missing == ["y"]
    assert by["pool"].verdict == "eligible" and by["pool"].missing == ["r"]  # no range to compare: not a verdict
    assert by["softmax"].verdict == "unknown" and by["softmax"].missing == []  # only eligible layers count
    assert report.missing_scales == ["r", "y"]
    eligible = sum(layer.verdict == "eligible" for layer in report.layers)
    assert report.summary() == f"{eligible} of {len(report.layers)} layers eligible, 2 scales missing (1 unknown/version-dependent)"
    assert any("different ranges" in n for n in by["add"].notes)
    tied = dla_readiness(model, _cache({"x": 1.0, "c": 2.0, "r": 3.0, "p": 3.0, "p2": 1.0, "y": 4.0, "s": 1.0}))
    assert tied.missing_scales == [] and {layer.node: layer for layer in tied.layers}["pool2"].verdict == "eligible"


def test_model_wide_findings_dynamic_shapes_calibrator_and_version():
    node, inits = _conv(pads=[1, 1, 1, 1])
    dynamic = _model([node], [_vi("x", ["n", 8, "h", 16])], [_vi("y", None)], inits)
    codes = lambda r: {f["code"] for f in r.general}
    assert codes(dla_readiness(dynamic)) == {"dla-dynamic-shape"}
    static = _model([node], [_vi("x", [1, 8, 16, 16])], [_vi("y", None)], inits)
    assert codes(dla_readiness(static, _cache({"x": 1.0}, "MinMaxCalibration"))) == {"dla-calibrator"}
    assert codes(dla_readiness(static, _cache({"x": 1.0}), trt_version="10.7.0")) == set()
    assert codes(dla_readiness(static, _cache({"x": 1.0}), trt_version="10.8.0")) == {"dla-version"}
    assert codes(dla_readiness(static, _cache({"x": 1.0}, version="11.0.0"))) == {"dla-version"}


def test_validate_dla_on_lenet_reports_and_sets_the_exit_code(capsys):
    report = validate_cache(TRT_TABLE, LENET, dla=True)
    doc = report.to_json()
    assert doc["dla"]["summary"] == [f for f in report.findings if f["code"] == "dla-summary"][0]["message"]
    missing = {f["tensor"] for f in report.findings if f["code"] == "dla-missing-scale"}
    assert missing == set(doc["dla"]["missing_scales"])
    # Caffe's table has no entry for the ONNX-only tensors: the Relu (eligible) lacks its input's scale
    assert "ip1_prerelu" in missing and "pool2_flat" not in missing  # Flatten is a Shuffle: unknown, not counted
    assert validate_cache(TRT_TABLE, LENET).to_json().get("dla") is None
    with pytest.raises(TrtCalibError, match="needs the model"):
        validate_cache(TRT_TABLE, None, dla=True)
    code = main(["validate", str(TRT_TABLE), "--model", str(LENET), "--dla"])
    out = capsys.readouterr().out
    assert code == report.exit_code == 1 and f"DLA:       {doc['dla']['summary']}" in out
    assert main(["validate", str(TRT_TABLE), "--model", str(LENET), "--dla", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["dla"]["layers_total"] == len(doc["dla"]["layers"])
