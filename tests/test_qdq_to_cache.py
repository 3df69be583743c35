"""qdq-to-cache: Q/DQ models back to a plain model plus a TensorRT cache, and the round trips that prove it."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.cli import main
from trt_calib.core.cache import CacheEntry, CalibrationCache, scale_to_hex
from trt_calib.ort.model import calibrated_tensors, model_inputs
from trt_calib.qdq import qdq_session, quantize_model
from trt_calib.qdq.to_cache import UnsupportedQdqError, float32_hex, qdq_to_cache, run_plain

from conftest import CACHES, LENET, LENET_IMAGES, MODELS, TRT_TABLE

LANNY_MODEL = MODELS / "lannyyip__share__my_model.onnx"
LANNY_CACHE = CACHES / "lannyyip__share__calibration.cache"
RETINA_MODEL = next(MODELS.glob("zxm97__*.onnx"))
RETINA_CACHE = CACHES / "zxm97__Pytorch_Retina_License_Plate_trt__calibration.cache"


# ---------------------------------------------------------------------------------------------- helpers
def _qdq_ops(model):
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _bits(value):
    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.uint32))


def _q_scales(model):
    """(tensor the QuantizeLinear reads, float32 bits of its scale) for every activation QuantizeLinear."""
    inits = _inits(model)
    return [(n.input[0], _bits(inits[n.input[1]])) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def _assert_same_bits_for_shared_names(result, reference):
    ours, ref = result.scales, reference.scales
    shared = [t for t in ours if t in ref]
    wrong = [(t, scale_to_hex(ours[t]), scale_to_hex(ref[t])) for t in shared if scale_to_hex(ours[t]) != scale_to_hex(ref[t])]
    assert not wrong, wrong
    return shared


def _lanny_cache():
    """lannyyip's cache under my_model.onnx's names: tensors numbered >= 93 are +8 in the cache, and the cache's
    93..100 belong to 8 shape-preamble tensors this export lacks (tests/data/models/README.md)."""
    cache = CalibrationCache.load(LANNY_CACHE)
    entries = []
    for e in cache.entries:
        if e.name.isdigit() and int(e.name) >= 93:
            if int(e.name) >= 101:
                entries.append(CacheEntry(str(int(e.name) - 8), e.hex))
            continue
        entries.append(e)
    return CalibrationCache(cache.header, entries)


def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _arr(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _pair(tensor, scale_name, zp_name, tag=""):
    """QuantizeLinear + DequantizeLinear on `tensor`; the DQ output is `<tensor>_dq<tag>`."""
    return [
        helper.make_node("QuantizeLinear", [tensor, scale_name, zp_name], [f"{tensor}_q{tag}"], name=f"{tensor}_Q{tag}"),
        helper.make_node("DequantizeLinear", [f"{tensor}_q{tag}", scale_name, zp_name], [f"{tensor}_dq{tag}"],
                         name=f"{tensor}_DQ{tag}"),
    ]


def _conv_block(x_dq, out, weight="w", seed=0):
    rng = np.random.default_rng(seed)
    w = _arr(weight, rng.standard_normal((4, 4, 3, 3)) * 0.1)
    return helper.make_node("Conv", [x_dq, weight], [out], name=f"conv_{out}", pads=[1, 1, 1, 1]), w


def _lenet_images(n=200):
    return np.load(LENET_IMAGES)[:n].astype(np.float32)[:, None] / np.float32(255.0)


# ---------------------------------------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def lenet_round_trip():
    reference = CalibrationCache.load(TRT_TABLE)
    qdq, _ = quantize_model(LENET, reference)
    return reference, qdq, qdq_to_cache(qdq, trt_version="7.0.0", original=LENET)


def test_lenet_cache_to_qdq_to_cache_gives_back_trt7s_scales_bit_for_bit(lenet_round_trip):
    reference, qdq, conv = lenet_round_trip
    shared = _assert_same_bits_for_shared_names(conv.cache, reference)
    # every Q/DQ pair's tensor that the Caffe-era table names is among them, and the pools' inputs come back through
    # TensorRT's tie (MaxPool input and output share one scale)
    paired = {t for t, _ in _q_scales(qdq)}
    assert {t for t in paired if t in reference} <= set(shared)
    assert {"conv1", "conv2"} <= set(shared)
    assert conv.cache.header == reference.header
    assert not _qdq_ops(conv.model)


def test_lenet_plain_model_is_lenet_with_the_qdq_models_weights(lenet_round_trip):
    _, qdq, conv = lenet_round_trip
    lenet = onnx.load(str(LENET))
    assert [(n.op_type, n.name) for n in conv.model.graph.node] == [(n.op_type, n.name) for n in lenet.graph.node]
    onnx.checker.check_model(conv.model, full_check=True)
    # the float weights are exactly what onnxruntime's DequantizeLinear makes of the int8 ones
    dq_outputs = [n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in _inits(qdq)]
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    for name in dq_outputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    values = dict(zip(dq_outputs, qdq_session(probe).run(dq_outputs, {"data": _lenet_images(1)})))
    plain = _inits(conv.model)
    assert dq_outputs and all(np.array_equal(plain[n], values[n]) for n in dq_outputs)
    folds = {w.name: w for w in conv.report.weights}
    assert set(folds) == set(dq_outputs)
    for w in folds.values():  # compared with LeNet's float weights in the same slot of the same node
        original = _inits(lenet)[w.original_name]
        assert w.original == "original" and w.max_abs_diff == pytest.approx(float(np.max(np.abs(plain[w.name] - original))))
        assert w.channels_below_full_range == 0  # per-channel max scales: every channel reaches code 127


def test_lenet_plain_model_agrees_with_fp32_on_mnist(lenet_round_trip):
    _, _, conv = lenet_round_trip
    x = _lenet_images(200)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    out = qdq_session(conv.model).run(["prob"], {"data": x})[0]
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.99
    assert np.max(np.abs(ref - out)) < 0.05  # int8 weights only: no activation rounding left


def test_lenet_report_lists_the_calibrated_tensors_left_without_a_scale(lenet_round_trip):
    _, qdq, _ = lenet_round_trip
    conv = qdq_to_cache(qdq, trt_version="7.0.0", recorded=False)  # as for a Q/DQ model quantize did not write
    missing = {m.tensor: m for m in conv.report.missing}
    assert set(missing) == set(calibrated_tensors(conv.model)) - set(conv.cache.scales)
    assert "needs none if TensorRT fuses" in missing["ip1_prerelu"].note  # Gemm read only by its Relu
    assert "falls back" in missing["ip2"].note


@pytest.mark.parametrize("model, cache", [(LANNY_MODEL, _lanny_cache), (RETINA_MODEL, lambda: CalibrationCache.load(RETINA_CACHE))],
                         ids=["lannyyip", "zxm97-retinaface"])
def test_real_cache_round_trips_bit_for_bit_on_its_model(model, cache):
    reference = cache()
    qdq, _ = quantize_model(model, reference)
    conv = qdq_to_cache(qdq, trt_version=reference.trt_version)
    shared = _assert_same_bits_for_shared_names(conv.cache, reference)
    paired = {t for t, _ in _q_scales(qdq)}
    assert paired and paired <= set(shared)  # every pair came back, under the name the cache uses
    # and so did every entry of the cache, also those no pair carries (quantize records them in the model)
    assert {e.name: e.hex for e in reference.entries}.items() <= {e.name: e.hex for e in conv.cache.entries}.items()
    assert conv.cache.header == reference.header and not _qdq_ops(conv.model)
    (spec,) = model_inputs(conv.model)  # symbolic sizes (lannyyip's width) get 64
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 64 for d in spec.shape])
    run = run_plain(conv.model, [{spec.name: x.astype(np.float32)}])
    assert run["batches"] == 1 and all(o["shape"] for o in run["outputs"])


# ---------------------------------------------------------------------------------------------- our own caches
def _entries(cache):
    return {e.name: e.hex for e in cache.entries}


def _lite0_like(seed=0):
    """EfficientNet-Lite0's structure in small: Conv stem + Clip(0, 6) (shared bounds), blocks of expand Conv + Clip,
    depthwise Conv + Clip, project Conv (no activation), a residual Add, head Conv + Clip, GlobalAveragePool,
    Reshape and Gemm."""
    rng = np.random.default_rng(seed)
    inits = [_arr("lo", 0.0), _arr("hi", 6.0), _arr("shape", [-1, 16], np.int64)]
    nodes = []

    def conv(x, out, cin, cout, k=1, group=1, stride=1, clip=True):
        w = f"{out}_w"
        inits.extend([_arr(w, rng.standard_normal((cout, cin // group, k, k)) * (1.5 / np.sqrt(cin // group * k * k))),
                      _arr(f"{out}_b", rng.standard_normal(cout) * 0.1)])
        nodes.append(helper.make_node("Conv", [x, w, f"{out}_b"], [f"{out}_conv"], name=f"{out}/Conv", group=group,
                                      strides=[stride, stride], pads=[k // 2] * 4))
        if not clip:
            return f"{out}_conv"
        nodes.append(helper.make_node("Clip", [f"{out}_conv", "lo", "hi"], [f"{out}_clip"], name=f"{out}/Clip"))
        return f"{out}_clip"

    x = conv("input", "stem", 3, 8, k=3, stride=2)
    x = conv(x, "b0_dw", 8, 8, k=3, group=8)
    p0 = conv(x, "b0_project", 8, 8, clip=False)
    x = conv(p0, "b1_expand", 8, 16)
    x = conv(x, "b1_dw", 16, 16, k=3, group=16)
    p1 = conv(x, "b1_project", 16, 8, clip=False)
    nodes.append(helper.make_node("Add", [p1, p0], ["b1_add"], name="b1/Add"))
    x = conv("b1_add", "head", 8, 16)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
              helper.make_node("Reshape", ["pool", "shape"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    inits += [_arr("fc_w", rng.standard_normal((10, 16)) * 0.3), _arr("fc_b", np.zeros(10))]
    return _model(nodes, [_vi("input", ["N", 3, 16, 16])], [_vi("logits", ["N", 10])], inits)


@pytest.mark.parametrize("given", ["cache", "calibration"])
def test_an_efficientnet_lite0_like_cache_comes_back_from_qdq_bit_for_bit(given):
    from trt_calib.ort.collect import calibrate

    model = _lite0_like()
    x = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    result = calibrate(model, [{"input": x[k:k + 8]} for k in range(0, 32, 8)], trt_version="8.6.1")
    written = CalibrationCache.parse(result.cache.to_bytes())  # the cache calibrate writes
    qdq, _ = quantize_model(model, written if given == "cache" else result)
    conv = qdq_to_cache(qdq, trt_version="8.6.1")
    assert conv.cache.dumps() == written.dumps()  # every entry, bit for bit (and in the same order)
    assert conv.report.counts()["recorded"] == len(written) == 17
    assert not [p for p in conv.model.metadata_props if p.key == "trt_calib.scales"]
    # the pairs alone carry only the tensors quantised ops read: the conv outputs before their Clip are lost
    pairs_only = _entries(qdq_to_cache(qdq, trt_version="8.6.1", recorded=False).cache)
    lost = set(_entries(written)) - set(pairs_only)
    assert {"stem_conv", "b0_dw_conv", "logits"} <= lost


def test_our_lenet_cache_comes_back_from_qdq_bit_for_bit_on_the_command_line(tmp_path, capsys):
    """Issue 22: calibrate -> quantize --from-cache -> qdq-to-cache changed conv2 and pool2 by x0.7533 (the pair on
    pool2_flat carried its scale back through Flatten and the MaxPool tie) and lost ip1_prerelu, ip2 and prob."""
    from conftest import LENET_BATCHES

    cache, q, plain, back = (tmp_path / n for n in ("lenet.cache", "q.onnx", "plain.onnx", "back.cache"))
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(cache),
                 "--trt-version", "7.0.0", "--no-progress"]) == 0
    assert main(["-q", "quantize", str(LENET), "--from-cache", str(cache), "-o", str(q)]) == 0
    assert main(["-q", "qdq-to-cache", str(q), "--onnx", str(plain), "--cache", str(back), "--trt-version", "7.0.0",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert back.read_bytes() == cache.read_bytes()
    assert doc["recorded"].startswith("used: 10 scale(s)")
    conv2 = next(e for e in doc["entries"] if e["tensor"] == "conv2")
    assert conv2["origin"] == "recorded" and conv2["hex"] == _entries(CalibrationCache.load(cache))["conv2"]
    # without the record, the Q/DQ pairs alone give what the issue saw
    assert main(["-q", "qdq-to-cache", str(q), "--onnx", str(tmp_path / "p2.onnx"), "--cache",
                 str(tmp_path / "b2.cache"), "--trt-version", "7.0.0", "--no-recorded-scales"]) == 0
    theirs, ours = _entries(CalibrationCache.load(tmp_path / "b2.cache")), _entries(CalibrationCache.load(cache))
    assert theirs["conv2"] == theirs["pool2"] == ours["pool2_flat"] != ours["conv2"]
    assert {"ip1_prerelu", "ip2", "prob"}.isdisjoint(theirs)


def _set_pair_scale(model, tensor, value):
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    init = next(t for t in model.graph.initializer if t.name == q.input[1])
    init.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32).reshape(numpy_helper.to_array(init).shape),
                                          init.name))


def test_a_record_the_pairs_contradict_is_ignored_with_a_warning(lenet_round_trip, caplog):
    reference, qdq, _ = lenet_round_trip
    edited = onnx.ModelProto()
    edited.CopyFrom(qdq)
    _set_pair_scale(edited, "pool1", 0.5)  # edited after quantize: the pair now says another scale
    conv = qdq_to_cache(edited, trt_version="7.0.0")
    assert conv.report.recorded.startswith("ignored: the pair QuantizeLinear") and "pool1" in conv.report.recorded
    assert "trt_calib.scales" in caplog.text
    assert conv.cache.scales["pool1"] == 0.5 and "prob" not in conv.cache.scales


@pytest.mark.parametrize("value", ["{", "[]", '{"scales": {"x": "zz"}, "pairs": {}}', '{"scales": 1, "pairs": {}}'])
def test_a_malformed_record_is_ignored_and_reported(lenet_round_trip, value):
    _, qdq, _ = lenet_round_trip
    edited = onnx.ModelProto()
    edited.CopyFrom(qdq)
    next(p for p in edited.metadata_props if p.key == "trt_calib.scales").value = value
    conv = qdq_to_cache(edited, trt_version="7.0.0")
    assert "is not the record quantize writes" in conv.report.recorded
    assert conv.report.counts()["recorded"] == 0


# ---------------------------------------------------------------------------------------------- onnxruntime-made
@pytest.fixture(scope="module")
def ort_qdq(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = _lenet_images(40)
            self.batches = iter([{"data": x[i:i + 10]} for i in range(0, 40, 10)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path_factory.mktemp("ortq") / "lenet.qdq.onnx"
    quantize_static(str(LENET), str(path), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return onnx.load(str(path))


def test_onnxruntime_quantize_static_model_converts_with_its_scales_exactly(ort_qdq):
    conv = qdq_to_cache(ort_qdq, original=LENET)
    entries = {e.name: int(e.hex, 16) for e in conv.cache.entries}
    outputs = {o.name for o in ort_qdq.graph.output}
    producer = {o: n for n in ort_qdq.graph.node for o in n.output}
    checked = 0
    for tensor, bits in _q_scales(ort_qdq):
        dq_out = next(n.output[0] for n in ort_qdq.graph.node if n.op_type == "DequantizeLinear"
                      and producer.get(n.input[0]) is not None and producer[n.input[0]].input[0] == tensor)
        name = dq_out if dq_out in outputs else tensor  # a pair in front of a graph output keeps the output's name
        assert entries[name] == bits, name
        checked += 1
    assert checked == len(conv.report.pairs) >= 8
    assert [o.name for o in conv.model.graph.output] == [o.name for o in ort_qdq.graph.output]
    kinds = {w.kind for w in conv.report.weights}
    assert kinds == {"int8 initializer + DequantizeLinear", "int32 bias + DequantizeLinear"}
    x = _lenet_images(200)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(LENET), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    assert np.mean(ref.argmax(1) == qdq_session(conv.model).run(["prob"], {"data": x})[0].argmax(1)) >= 0.99


# ---------------------------------------------------------------------------------------------- refusals
def _one_conv(scale=0.05, zp=0, zp_dtype=np.int8, scale_array=None):
    """x -> Q -> DQ -> Conv(w) -> y, the pair's parameters as given."""
    scale_init = _arr("s", scale if scale_array is None else scale_array)
    zp_init = _arr("z", zp, zp_dtype)
    conv, w = _conv_block("x_dq", "y")
    nodes = _pair("x", "s", "z") + [conv]
    if scale_array is not None:
        for n in nodes[:2]:
            n.attribute.append(helper.make_attribute("axis", 1))
    return _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])], [scale_init, zp_init, w])


@pytest.mark.parametrize(
    "model, words",
    [
        (lambda: _one_conv(zp=128, zp_dtype=np.uint8), "uint8 activation"),
        (lambda: _one_conv(zp=3), r"non-zero zero point \(3\)"),
        (lambda: _one_conv(scale_array=[0.1, 0.2, 0.3, 0.4], zp=[0, 0, 0, 0]), "per-channel activation scales"),
        (lambda: _one_conv(scale=0.0), "not a positive finite number"),
    ],
    ids=["uint8", "zero-point", "per-channel", "zero-scale"],
)
def test_what_implicit_tensorrt_cannot_express_is_refused_naming_the_node(model, words):
    with pytest.raises(UnsupportedQdqError, match=words) as info:
        qdq_to_cache(model())
    assert info.value.refusals[0][0] == "QuantizeLinear 'x_Q'"


def test_int4_weights_and_fp8_activations_are_refused_together():
    w4 = helper.make_tensor("w4", TensorProto.INT4, [4, 4, 3, 3], np.ones(144, dtype=np.int8).tolist())
    zp8 = helper.make_tensor("z8", TensorProto.FLOAT8E4M3FN, [], [0.0])
    nodes = [
        helper.make_node("DequantizeLinear", ["w4", "ws"], ["w"], name="w_DQ", axis=0),
        helper.make_node("QuantizeLinear", ["x", "s", "z8"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z8"], ["x_dq"], name="x_DQ"),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])],
                   [w4, _arr("ws", [0.1] * 4), _arr("s", 0.05), zp8], opset=21)
    with pytest.raises(UnsupportedQdqError) as info:
        qdq_to_cache(model)
    reasons = dict(info.value.refusals)
    assert "int4 weights" in reasons["DequantizeLinear 'w_DQ'"]
    assert "fp8 activations" in reasons["QuantizeLinear 'x_Q'"]


def test_an_int8_tensor_between_layers_is_refused():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="x_Q"),
             helper.make_node("Identity", ["x_q"], ["y"], name="id")]
    model = _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4], TensorProto.INT8)], [_arr("s", 0.1), _arr("z", 0, np.int8)])
    with pytest.raises(UnsupportedQdqError, match="read by Identity id, not by a DequantizeLinear"):
        qdq_to_cache(model)


def test_asymmetric_pairs_report_the_name_the_plain_model_uses():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), *_pair("r", "s", "z")]
    model = _model(nodes, [_vi("x", [1, 4])], [_vi("r_dq", [1, 4])], [_arr("s", 0.1), _arr("z", 0, np.uint8)])
    conv = qdq_to_cache(model, allow_asymmetric=True)
    assert [a.tensor for a in conv.report.asymmetric] == list(conv.cache.scales) == ["r_dq"]
    assert conv.report.asymmetric[0].bits_lost == pytest.approx(math.log2(255 / 127), abs=1e-6)


def test_allow_asymmetric_writes_the_covering_symmetric_range_and_its_cost():
    scale = np.float32(0.02)
    model = _one_conv(scale=scale, zp=100, zp_dtype=np.uint8)
    conv = qdq_to_cache(model, allow_asymmetric=True)
    (a,) = conv.report.asymmetric
    assert (a.lo, a.hi) == pytest.approx((-100 * 0.02, 155 * 0.02))
    written = conv.cache.scales["x"]
    assert written * 127 >= 155 * float(scale) and np.float32(written) == pytest.approx(155 * 0.02 / 127, rel=1e-6)
    assert a.bits_lost == pytest.approx(math.log2(written / float(scale)))
    assert conv.report.to_json()["asymmetric"][0]["symmetric_hex"] == scale_to_hex(written)


def test_input_model_is_not_changed():
    model = _one_conv()
    before = model.SerializeToString()
    qdq_to_cache(model)
    assert model.SerializeToString() == before


# ---------------------------------------------------------------------------------------------- scales
def test_a_scale_shared_by_several_pairs_is_written_once_and_different_ones_are_a_conflict():
    def two_pairs(s1, s2):
        c1, w1 = _conv_block("x_dqa", "y1", "w1", 1)
        c2, w2 = _conv_block("x_dqb", "y2", "w2", 2)
        nodes = _pair("x", "s1", "z", "a") + _pair("x", "s2", "z", "b") + [c1, c2]
        return _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("y1", [1, 4, 8, 8]), _vi("y2", [1, 4, 8, 8])],
                      [_arr("s1", s1), _arr("s2", s2), _arr("z", 0, np.int8), w1, w2])

    same = qdq_to_cache(two_pairs(0.05, 0.05))
    assert [e.name for e in same.cache.entries] == ["x"] and len(same.report.pairs) == 2
    assert same.report.conflicts == [] and same.report.exit_code == 0
    diff = qdq_to_cache(two_pairs(0.05, 0.07))
    (conflict,) = diff.report.conflicts
    assert conflict.tensor == "x" and diff.cache.scales["x"] == np.float32(0.07) and diff.report.exit_code == 1
    assert {h for h, _ in conflict.scales} == {float32_hex(0.05), float32_hex(0.07)}


def test_one_quantizelinear_read_by_two_dequantizelinears_is_one_pair():
    c1, w1 = _conv_block("x_dq1", "y1", "w1", 1)
    c2, w2 = _conv_block("x_dq2", "y2", "w2", 2)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq1"], name="x_DQ1"),
             helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq2"], name="x_DQ2"), c1, c2]
    model = _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("y1", [1, 4, 8, 8]), _vi("y2", [1, 4, 8, 8])],
                   [_arr("s", 0.05), _arr("z", 0, np.int8), w1, w2])
    conv = qdq_to_cache(model)
    assert [p.node for p in conv.report.pairs] == ["QuantizeLinear 'x_Q'"] and list(conv.cache.scales) == ["x"]
    assert [list(n.input)[0] for n in conv.model.graph.node] == ["x", "x"]
    model.graph.initializer[1].CopyFrom(_arr("z", 9, np.int8))
    with pytest.raises(UnsupportedQdqError) as info:
        qdq_to_cache(model)
    assert len(info.value.refusals) == 1


def test_scales_are_the_initializers_float32_bits_including_float16_ones():
    for value in (np.float32(0.1), np.float32(1e-38), np.nextafter(np.float32(0.3), np.float32(1))):
        conv = qdq_to_cache(_one_conv(scale=value))
        assert int(conv.cache.entries[0].hex, 16) == _bits(value)
    half = _one_conv()
    half.graph.initializer[0].CopyFrom(_arr("s", 0.1, np.float16))
    conv = qdq_to_cache(half, check=False)
    assert conv.cache.entries[0].hex == float32_hex(np.float32(np.float16(0.1)))
    assert conv.report.pairs[0].scale_dtype == "float16"
    brain = _one_conv()
    brain.graph.initializer[0].CopyFrom(helper.make_tensor("s", TensorProto.BFLOAT16, [], [0.1]))
    conv = qdq_to_cache(brain, check=False)
    bf16 = numpy_helper.to_array(brain.graph.initializer[0])
    assert conv.cache.entries[0].hex == float32_hex(bf16.astype(np.float32))
    assert int(conv.cache.entries[0].hex, 16) & 0xFFFF == 0  # a bfloat16 is the top half of a float32


def test_pass_through_ops_ties_and_concats_carry_scales_both_ways():
    # x -> Relu -> MaxPool -> Q/DQ -> Conv -> Reshape -> r ; Concat(two paired tensors) -> cat
    c1, w1 = _conv_block("p_dq", "c", "w1", 1)
    nodes = [
        helper.make_node("Relu", ["x"], ["r0"], name="relu"),
        helper.make_node("MaxPool", ["r0"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        *_pair("p", "s1", "z"),
        c1,
        *_pair("c", "s2", "z"),
        helper.make_node("Reshape", ["c_dq", "shape"], ["flat"], name="reshape"),
        helper.make_node("Concat", ["p", "c"], ["cat"], name="cat", axis=1),
    ]
    model = _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("flat", [1, 64]), _vi("cat", [1, 8, 4, 4])],
                   [_arr("s1", 0.05), _arr("s2", 0.2), _arr("z", 0, np.int8), w1, _arr("shape", [1, 64], np.int64)])
    conv = qdq_to_cache(model)
    by = {e.tensor: e for e in conv.report.entries}
    assert by["r0"].origin == "tie" and by["r0"].scale == by["p"].scale  # MaxPool input takes its output's
    assert by["flat"].origin == "pass-through" and by["flat"].scale == by["c"].scale
    assert by["cat"].origin == "concat" and by["cat"].scale == max(by["p"].scale, by["c"].scale)
    assert "x" not in by  # Relu changes values: no scale crosses it
    only = qdq_to_cache(model, propagate=False)
    assert sorted(only.cache.scales) == ["c", "p"]


def test_a_pair_in_front_of_a_graph_output_keeps_the_outputs_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), *_pair("r", "s", "z")]
    model = _model(nodes, [_vi("x", [1, 4])], [_vi("r_dq", [1, 4])], [_arr("s", 0.1), _arr("z", 0, np.int8)])
    conv = qdq_to_cache(model)
    assert [o.name for o in conv.model.graph.output] == ["r_dq"]
    assert conv.model.graph.node[0].output[0] == "r_dq" and list(conv.cache.scales) == ["r_dq"]
    # an input read straight into an output through a pair keeps both names, joined by an Identity
    direct = _model(_pair("x", "s", "z"), [_vi("x", [1, 4])], [_vi("x_dq", [1, 4])], [_arr("s", 0.1), _arr("z", 0, np.int8)])
    plain = qdq_to_cache(direct).model
    assert [(n.op_type, list(n.input), list(n.output)) for n in plain.graph.node] == [("Identity", ["x"], ["x_dq"])]


def test_fake_quantised_float_weights_become_the_values_the_dequantizelinear_makes():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((4, 4, 3, 3)) * 0.1).astype(np.float32)
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    nodes = [*_pair("x", "s", "z"),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["w_q"], name="w_Q", axis=0),
             helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w_dq"], name="w_DQ", axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = _model(nodes, [_vi("x", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])],
                   [_arr("s", 0.05), _arr("z", 0, np.int8), _arr("w", w), _arr("ws", scale), _arr("wz", [0] * 4, np.int8)])
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("w_dq", TensorProto.FLOAT, None))
    expected = qdq_session(probe).run(["w_dq"], {"x": np.zeros((1, 4, 8, 8), np.float32)})[0]
    conv = qdq_to_cache(model)
    assert np.array_equal(_inits(conv.model)["w_dq"], expected)
    (fold,) = conv.report.weights
    assert fold.original == "model" and fold.original_name == "w" and fold.axis == 0
    assert fold.changed == int(np.count_nonzero(expected != w)) > 0
    assert "w" not in _inits(conv.model)  # the float original is gone once nothing reads it


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_plain_model_and_the_cache_and_compares_with_the_original(tmp_path, lenet_round_trip, capsys):
    _, qdq, conv = lenet_round_trip
    q = tmp_path / "q.onnx"
    onnx.save(qdq, str(q))
    plain, cache = tmp_path / "plain.onnx", tmp_path / "out.cache"
    code = main(["qdq-to-cache", str(q), "--onnx", str(plain), "--cache", str(cache), "--trt-version", "7.0.0",
                 "--original", str(LENET), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert CalibrationCache.load(cache) == conv.cache
    assert doc["comparison"]["outputs"][0]["name"] == "prob" and doc["comparison"]["num_samples"] == 8
    assert doc["run"]["outputs"] == [{"name": "prob", "shape": [8, 10]}]
    assert not _qdq_ops(onnx.load(str(plain)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cache", "plain.onnx", "q.onnx"]


def test_cli_refuses_with_exit_3_and_writes_nothing(tmp_path, capsys):
    q = tmp_path / "q.onnx"
    onnx.save(_one_conv(zp=7), str(q))
    plain, cache = tmp_path / "plain.onnx", tmp_path / "out.cache"
    assert main(["qdq-to-cache", str(q), "--onnx", str(plain), "--cache", str(cache), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["refused"][0]["node"] == "QuantizeLinear 'x_Q'" and "zero point" in doc["refused"][0]["reason"]
    assert not plain.exists() and not cache.exists()


def test_cli_refuses_an_output_on_an_input_before_reading_it(tmp_path, capsys):
    q = tmp_path / "q.onnx"
    onnx.save(_one_conv(), str(q))
    before = q.read_bytes()
    assert main(["qdq-to-cache", str(q), "--onnx", str(q), "--cache", str(tmp_path / "c.cache")]) == 2
    assert q.read_bytes() == before and "refusing to overwrite" in capsys.readouterr().err
