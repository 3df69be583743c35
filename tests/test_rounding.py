"""Weight rounding (`core.rounding`, `qdq.rounding`, `trt-calib round-weights`): the math, the layer geometry against
onnxruntime, real improvements on small models, and weights TensorRT's per-channel rule turns back into the chosen
codes exactly."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import float_initializer, float_value_info, onnx_model
from trt_calib.cli.main import main
from trt_calib.core.rounding import (
    LayerMoments,
    channel_scales,
    dequantized,
    gptq_codes,
    nearest_codes,
    output_error,
    pinned_elements,
    recovered_codes,
    reference_target,
)
from trt_calib.ort.data import from_arrays
from trt_calib.ort.model import model_inputs
from trt_calib.qdq import quantize_model, quantize_weight
from trt_calib.qdq.rounding import ROUNDED_METADATA_KEY, roundable_layers, round_weights


# ---------------------------------------------------------------------------------------------- helpers
_model, _vi, _init = onnx_model, float_value_info, float_initializer  # conftest's small-graph builders


def _run(model, feeds, outputs=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _tensorrt_codes(weight, axis):
    """TensorRT's per-channel weight rule, written out again here: s = max|w| / 127 per output channel (float32),
    q = round half to even (w / s), clipped to [-127, 127] (Developer Guide, "Introduction to Quantization")."""
    w = np.asarray(weight, np.float32)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    scale = (np.abs(moved).max(axis=1) / np.float32(127)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(moved / scale[:, None]), -127, 127)
    return q, scale, moved


def _conv_net(seed=0, cin=3, size=12):
    """conv 3x3 -> relu -> depthwise 3x3 stride 2 -> relu -> conv 1x1 -> global pool -> gemm: a small net with the
    patterns of EfficientNet-Lite0 (dense, depthwise, pointwise convs and a classifier)."""
    rng = np.random.default_rng(seed)
    c1, c2, classes = 16, 24, 10
    inits = [
        _init("w1", rng.normal(0, 0.3, (c1, cin, 3, 3))), _init("b1", rng.normal(0, 0.1, c1)),
        _init("w2", rng.normal(0, 0.5, (c1, 1, 3, 3))), _init("b2", rng.normal(0, 0.1, c1)),
        _init("w3", rng.normal(0, 0.3, (c2, c1, 1, 1))), _init("b3", rng.normal(0, 0.1, c2)),
        _init("w4", rng.normal(0, 0.3, (classes, c2))), _init("b4", rng.normal(0, 0.1, classes)),
        _init("shape", np.array([0, -1], np.float32)),
    ]
    inits[-1] = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=c1, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="pool"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", ["N", cin, size, size])], [_vi("y", ["N", classes])], inits)


def _images(n, seed=1, cin=3, size=12):
    """Smooth, correlated images (neighbouring pixels alike), so layer inputs have the structure rounding uses."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cin, size + 2, size + 2)).astype(np.float32)
    x = (x[:, :, :-2, :-2] + x[:, :, 1:-1, 1:-1] + x[:, :, 2:, 2:]) / np.float32(3)
    return x + rng.normal(0.3, 0.2, (n, cin, 1, 1)).astype(np.float32)


def _batches(model, x, batch_size=16):
    return from_arrays(x, model_inputs(model), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------- the math
def _problem(seed=0, k=48, r=24, n=3000):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(k, k)) @ rng.normal(size=(k, n))).astype(np.float32)  # strongly correlated inputs
    w = (rng.normal(size=(r, k)) * 0.1).astype(np.float32)
    return w[None], x[None]


def test_nearest_codes_are_the_rule_quantize_and_tensorrt_use():
    rows, _ = _problem()
    s = channel_scales(rows)
    q = nearest_codes(rows, s)
    codes, scale = quantize_weight(rows[0], 0)
    assert np.array_equal(q[0], codes) and np.array_equal(s[0], scale)
    trt_q, trt_s, _ = _tensorrt_codes(rows[0], 0)
    assert np.array_equal(q[0], trt_q) and np.array_equal(s[0], trt_s)


def test_gptq_lowers_the_layer_error_and_trt_gives_back_its_codes():
    rows, x = _problem()
    moments = LayerMoments(rows)
    moments.add(x)
    h, c, power = moments.means()
    s = channel_scales(rows)
    near = nearest_codes(rows, s)
    codes = gptq_codes(rows, s, h, pinned=pinned_elements(rows))
    before = output_error(rows, dequantized(near, s), h, c, power).sum()
    after = output_error(rows, dequantized(codes, s), h, c, power).sum()
    assert after < 0.7 * before  # a real improvement, on correlated inputs
    assert 0 < np.count_nonzero(codes != near) and np.abs(codes - near).max() <= 4
    # the float weights s * q give TensorRT's rule back exactly these codes, and each row keeps its +-127
    w = dequantized(codes, s)
    assert np.array_equal(recovered_codes(w), codes)
    trt_q, _, moved = _tensorrt_codes(w[0], 0)
    assert np.array_equal(trt_q, codes[0]) and np.all(np.abs(codes).max(axis=-1) == 127)
    assert np.array_equal(dequantized(trt_q[None], channel_scales(w)), w)  # the rule loses nothing


def test_gptq_with_lazy_blocks_is_the_same_as_column_by_column():
    rows, x = _problem(k=40)
    h = LayerMoments(rows)
    h.add(x)
    hh = h.means()[0]
    s = channel_scales(rows)
    a = gptq_codes(rows, s, hh, pinned=pinned_elements(rows), block=128)
    b = gptq_codes(rows, s, hh, pinned=pinned_elements(rows), block=7)
    assert np.array_equal(a, b)


def test_gptq_keeps_nearest_codes_for_inputs_never_seen():
    rows, x = _problem(k=16, r=8)
    x = x.copy()
    x[:, [3, 7]] = 0.0  # two inputs always zero
    m = LayerMoments(rows)
    m.add(x)
    s = channel_scales(rows)
    codes = gptq_codes(rows, s, m.means()[0], pinned=pinned_elements(rows))
    near = nearest_codes(rows, s)
    assert np.array_equal(codes[..., [3, 7]], near[..., [3, 7]])
    # a depthwise channel (its own group) whose inputs are all zero keeps round to nearest throughout
    groups = np.concatenate([rows[:, :2, :9], rows[:, 2:4, :9]], axis=0)[:, :1]  # [2, 1, 9]
    patches = np.stack([np.random.default_rng(0).normal(size=(9, 500)), np.zeros((9, 500))]).astype(np.float32)
    m = LayerMoments(groups)
    m.add(patches)
    gs = channel_scales(groups)
    got = gptq_codes(groups, gs, m.means()[0], pinned=pinned_elements(groups))
    assert np.array_equal(got[1], nearest_codes(groups, gs)[1])


def test_reference_target_pulls_towards_the_weights_not_towards_zero():
    rng = np.random.default_rng(3)
    k = 27
    basis = rng.normal(size=(k, 3)).astype(np.float32)  # image patches: nearly rank 3, tiny other eigenvalues
    x = (basis @ rng.normal(size=(3, 4000)) + 1e-3 * rng.normal(size=(k, 4000))).astype(np.float32)
    rows = rng.normal(size=(1, 8, k)).astype(np.float32)
    m = LayerMoments(rows, with_reference=True)
    m.add(x[None], x[None] * np.float32(1.001))  # the float model's input is almost the same
    h, c, _ = m.means()
    target = reference_target(rows, h, c, damp=0.01)
    assert np.linalg.norm(target - rows) < 0.05 * np.linalg.norm(rows)
    # the textbook ridge towards zero, W C (H + lambda I)^-1, shrinks it by far more
    lam = 0.01 * np.mean(np.diag(h[0]))
    shrunk = rows[0] @ c[0] @ np.linalg.inv(h[0] + lam * np.eye(k))
    assert np.linalg.norm(shrunk) < 0.8 * np.linalg.norm(rows)


def test_reference_target_undoes_a_systematic_input_error():
    """Inputs scaled by 0.9 against the float model's: the fit scales the weights by 1/0.9, exactly as needed."""
    rng = np.random.default_rng(2)
    rows = rng.normal(0, 0.1, (1, 5, 12)).astype(np.float32)
    x = rng.normal(0.5, 1.0, (1, 12, 5000)).astype(np.float32)
    m = LayerMoments(rows, with_reference=True)
    m.add(x * np.float32(0.9), x)
    h, c, power = m.means()
    target = reference_target(rows, h, c, damp=1e-6)
    np.testing.assert_allclose(target, rows / 0.9, rtol=1e-3, atol=1e-5)
    assert output_error(rows, target, h, c, power).sum() < 1e-4 * output_error(rows, rows, h, c, power).sum()


# ---------------------------------------------------------------------------------------------- layer geometry
GEOMETRY = [
    ("Conv", (6, 4, 3, 3), dict(pads=[1, 0, 1, 2], strides=[2, 1], dilations=[1, 2]), (2, 4, 9, 10)),
    ("Conv", (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1]), (2, 4, 7, 7)),
    ("Conv", (4, 1, 5, 5), dict(group=4, strides=[2, 2], auto_pad="SAME_UPPER"), (2, 4, 9, 8)),
    ("Conv", (5, 3, 3), dict(pads=[2, 1], dilations=[2]), (3, 3, 11)),
    ("Conv", (8, 4, 1, 1), {}, (2, 4, 5, 5)),
    ("ConvTranspose", (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]), (2, 4, 5, 6)),
    ("ConvTranspose", (4, 2, 3, 3), dict(group=2, strides=[1, 2], pads=[0, 1, 0, 1], dilations=[2, 1]), (2, 4, 5, 4)),
    ("Gemm", (7, 5), dict(transB=1), (3, 5)),
    ("Gemm", (5, 7), dict(transA=1), (5, 3)),
    ("MatMul", (5, 7), {}, (2, 3, 5)),
]


@pytest.mark.parametrize("op,w_shape,attrs,x_shape", GEOMETRY)
def test_layer_rows_times_patches_is_what_onnxruntime_computes(op, w_shape, attrs, x_shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=w_shape).astype(np.float32)
    x = rng.normal(size=x_shape).astype(np.float32)
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = _model([node], [_vi("x", list(x_shape))], [y_info], [_init("w", w)])
    (y,) = _run(model, {"x": x})
    layers, skipped = roundable_layers(model)
    assert skipped == {} and len(layers) == 1
    layer = layers[0]
    rows = layer.rows(w)
    assert np.array_equal(layer.weight_from_rows(rows), w)
    patches = np.concatenate(list(layer.patches(x)), axis=-1)  # [G, K, n]
    out = np.matmul(rows, patches)  # [G, R, n]
    if op in ("Conv", "ConvTranspose"):
        g, r = out.shape[:2]
        want = y.reshape(y.shape[0], g * r, -1).transpose(1, 0, 2).reshape(g, r, -1)
    else:
        want = y.reshape(-1, y.shape[-1]).T[None]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    per_sample = layer.rows_per_sample(x.shape)
    assert per_sample * (x.shape[0] if op != "Gemm" or not attrs.get("transA") else x.shape[1]) == out.shape[-1]


def test_subsampled_positions_cover_the_map_across_samples():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="n", pads=[1, 1, 1, 1])
    model = _model([node], [_vi("x", [None, 2, 8, 8])], [_vi("y", None)], [_init("w", np.ones((3, 2, 3, 3)))])
    layer = roundable_layers(model)[0][0]
    image = np.random.default_rng(0).normal(size=(1, 2, 8, 8)).astype(np.float32)
    x = np.repeat(image, 4, axis=0)  # the same image 4 times: a position's patch is the same in every sample
    full = np.concatenate(list(layer.patches(x)), axis=-1)[0]
    some = np.concatenate(list(layer.patches(x, steps=(2, 2))), axis=-1)[0]
    assert some.shape[-1] == full.shape[-1] // 4
    # 4 samples at step 2 take the 4 offsets in turn: together they use every position of the map once
    assert {tuple(c) for c in some.T} == {tuple(c) for c in full.T}
    assert len({tuple(c) for c in some.T}) == some.shape[-1]


def test_subsampling_steps_never_exceed_the_map():
    """YOLOv8's DFL convolution sees a 4 x 2100 map: steps of 6 x 6 would leave samples with no position at all."""
    from trt_calib.qdq.rounding import subsample_steps

    assert subsample_steps((4, 2100), 64, 16384) == (4, 9)
    assert subsample_steps((112, 112), 128, 16384) == (10, 10)
    assert subsample_steps((7, 7), 128, 16384) == (1, 1)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dfl")
    model = _model([node], [_vi("x", [None, 16, 4, 60])], [_vi("y", None)], [_init("w", np.ones((1, 16, 1, 1)))])
    layer = roundable_layers(model)[0][0]
    steps = subsample_steps(layer.positions((8, 16, 4, 60)), 8, 120)
    assert steps == (4, 4)
    x = np.random.default_rng(0).normal(size=(8, 16, 4, 60)).astype(np.float32)
    got = np.concatenate(list(layer.patches(x, steps=steps)), axis=-1)
    assert got.shape == (1, 16, 8 * 15)  # each sample keeps 1 x 15 of its 4 x 60 positions


# ---------------------------------------------------------------------------------------------- round_weights
@pytest.fixture(scope="module")
def rounded_net():
    model = _conv_net()
    calib = _images(64)
    rounded, report = round_weights(model, _batches(model, calib))
    return model, rounded, report, calib


def test_every_layer_is_fitted_better_than_nearest(rounded_net):
    model, rounded, report, _ = rounded_net
    assert [r.node for r in report.layers] == ["conv1", "dw", "pw", "fc"] and report.skipped == {}
    for r in report.layers:
        assert r.error_rounded < r.error_nearest, r.node
        assert r.codes_moved > 0 and r.positions > 0
    # the first layer sees the float model's own input: nothing inherited
    assert report.layers[0].error_inherited == pytest.approx(0.0, abs=1e-9)
    total_before = sum(r.error_nearest for r in report.layers)
    total_after = sum(r.error_rounded for r in report.layers)
    assert total_after < 0.8 * total_before
    # the classifier has 24 inputs and 64 samples: determined; no layer is flagged
    assert report.underdetermined == []
    assert report.codes_checked == sum(r.codes for r in report.layers) and report.codes_not_recovered == 0


def test_rounded_weights_are_exactly_what_tensorrts_per_channel_rule_quantises(rounded_net):
    model, rounded, report, _ = rounded_net
    original, new = _weights(model), _weights(rounded)
    axes = {"w1": 0, "w2": 0, "w3": 0, "w4": 0}  # Conv: axis 0; Gemm transB=1: axis 0
    for name, axis in axes.items():
        q, scale, moved = _tensorrt_codes(new[name], axis)
        # every weight is exactly s * q: TensorRT's rule recovers the codes and loses nothing
        assert np.array_equal((q * scale[:, None]).astype(np.float32), moved), name
        assert np.all(np.abs(q).max(axis=1) == 127), name
        # same scale as the original weights' (the largest weight of each channel is pinned at +-127 s)
        _, original_scale, _ = _tensorrt_codes(original[name], axis)
        np.testing.assert_allclose(scale, original_scale, rtol=1e-6)
        # and the project's own Q/DQ weight rule writes the same int8 codes
        codes, _ = quantize_weight(new[name], axis)
        assert np.array_equal(np.moveaxis(codes, axis, 0).reshape(q.shape), q)
    assert original["b1"].tobytes() == new["b1"].tobytes()  # no bias is changed
    assert any(p.key == ROUNDED_METADATA_KEY for p in rounded.metadata_props)


def test_rounding_brings_the_model_output_closer_to_float_than_nearest(rounded_net):
    model, rounded, _, calib = rounded_net
    nearest, _ = round_weights(model, None, method="nearest")
    held = _images(64, seed=7)  # held-out images the rounding never saw
    for x in (calib, held):
        (ref,) = _run(model, {"x": x})
        (got,) = _run(rounded, {"x": x})
        (near,) = _run(nearest, {"x": x})
        assert np.mean((got - ref) ** 2) < 0.7 * np.mean((near - ref) ** 2)
    # the Q/DQ model of the rounded weights (activations calibrated) is closer too
    from trt_calib.ort.collect import calibrate

    def qdq_error(m):
        q, _ = quantize_model(m, calibrate(m, _batches(m, calib), algorithm="mse"))
        (out,) = _run(q, {"x": held})
        (ref,) = _run(model, {"x": held})
        return np.mean((out - ref) ** 2)

    assert qdq_error(rounded) < qdq_error(nearest)


def test_nearest_method_writes_tensorrts_own_rounding_without_data():
    model = _conv_net()
    nearest, report = round_weights(model, None, method="nearest")
    for name, w in _weights(model).items():
        if name.startswith("w"):
            q, s, _ = _tensorrt_codes(w, 0)
            q2, s2, moved = _tensorrt_codes(_weights(nearest)[name], 0)
            assert np.array_equal(q, q2) and np.array_equal((q * s[:, None]).astype(np.float32), moved)
    assert report.codes_moved == 0 and all(r.error_nearest is None for r in report.layers)
    # with data it measures: the layers after the first see the inputs its nearest weights give, not float ones
    _, measured = round_weights(model, _batches(model, _images(16)), method="nearest")
    assert measured.codes_moved == 0 and measured.layers[0].error_inherited == pytest.approx(0.0, abs=1e-12)
    assert all(r.error_inherited > 0 and r.error_rounded == r.error_nearest for r in measured.layers[1:])


def test_a_tiny_activation_budget_recomputes_and_gives_the_same_codes():
    model = _conv_net(seed=2)
    calib = _images(32, seed=3)
    big, _ = round_weights(model, _batches(model, calib), max_activation_mb=1024)
    small, _ = round_weights(model, _batches(model, calib), max_activation_mb=1e-6)
    for name, w in _weights(big).items():
        assert w.tobytes() == _weights(small)[name].tobytes(), name


def test_underdetermined_layers_are_reported(caplog):
    model = _conv_net(seed=4)
    _, report = round_weights(model, _batches(model, _images(16, seed=5), batch_size=8))
    fc = next(r for r in report.layers if r.node == "fc")
    assert fc.underdetermined and fc.positions == 16 and fc.live_inputs == 24
    assert [r.node for r in report.underdetermined] == ["fc"]
    assert "underdetermined" in report.to_json()["layers"][-1]["notes"][0]
    assert "fc: underdetermined: 16 positions for 24 live inputs" in caplog.text


def test_convtranspose_matmul_and_constant_weights_round_exactly():
    rng = np.random.default_rng(5)
    w_ct = rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32)
    w_mm = rng.normal(0, 0.3, (6, 5)).astype(np.float32)
    const = helper.make_node("Constant", [], ["w_mm"], value=numpy_helper.from_array(w_mm, "v"))
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w_ct"], ["t"], name="up", strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Relu", ["t"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["p"], name="nhwc", perm=[0, 2, 3, 1]),
        const,
        helper.make_node("MatMul", ["p", "w_mm"], ["y"]),  # unnamed: reported as MatMul_4, its index here
    ]
    model = _model(nodes, [_vi("x", ["N", 4, 5, 5])], [_vi("y", None)], [_init("w_ct", w_ct)])
    x = _images(24, cin=4, size=5)
    rounded, report = round_weights(model, _batches(model, x, batch_size=8))
    assert [r.node for r in report.layers] == ["up", "MatMul_4"]
    for r in report.layers:
        assert r.error_rounded < r.error_nearest
    # the Constant node stays (node order and names unchanged) and holds the rounded weight
    assert [n.op_type for n in rounded.graph.node] == [n.op_type for n in model.graph.node]
    new = _weights(rounded)
    new["w_mm"] = numpy_helper.to_array(next(n for n in rounded.graph.node if n.op_type == "Constant").attribute[0].t)
    for name, axis in (("w_ct", 1), ("w_mm", 1)):
        q, s, moved = _tensorrt_codes(new[name], axis)
        assert np.array_equal((q * s[:, None]).astype(np.float32), moved) and np.all(np.abs(q).max(axis=1) == 127)
    (a,), (b,) = _run(model, {"x": x}), _run(rounded, {"x": x})
    assert a.shape == b.shape and np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_weights_that_cannot_hold_s_times_q_are_skipped_with_the_reason():
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float16), "w16")
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w16"], ["y16"], name="half"),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["y", "w"], ["a"], name="first"),
        helper.make_node("Conv", ["y", "w"], ["b"], name="second"),
        helper.make_node("Add", ["a", "b"], ["z"], name="add"),
    ]
    model = _model(nodes, [_vi("x", ["N", 3, 4, 4])], [_vi("z", None)],
                   [w16, _init("w", rng.normal(size=(4, 4, 1, 1)))])
    layers, skipped = roundable_layers(model)
    assert [layer.label for layer in layers] == ["first"]
    assert "float16" in skipped["half"] and "shared with first" in skipped["second"]


# ---------------------------------------------------------------------------------------------- the command
def test_round_weights_command_writes_the_model_the_report_and_json(tmp_path, capsys):
    model = _conv_net()
    src, data = tmp_path / "m.onnx", tmp_path / "calib.npy"
    onnx.save(model, src)
    np.save(data, _images(32))
    out, rep = tmp_path / "r.onnx", tmp_path / "r.json"
    code = main(["round-weights", str(src), "--data", str(data), "--batch-size", "8", "-o", str(out),
                 "--report", str(rep), "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(rep.read_text())
    assert doc["method"] == "gptq" and doc["layers_rounded"] == 4 and doc["codes_not_recovered"] == 0
    assert doc["samples"] == 32 and doc["error_rounded"] < doc["error_nearest"]
    assert all(set(layer) >= {"codes_moved", "error_nearest", "error_rounded", "seconds"} for layer in doc["layers"])
    q, s, moved = _tensorrt_codes(_weights(onnx.load(out))["w3"], 0)
    assert np.array_equal((q * s[:, None]).astype(np.float32), moved)
    # text mode: the per-layer table
    assert main(["-q", "round-weights", str(src), "--method", "nearest", "-o", str(tmp_path / "n.onnx")]) == 0
    assert main(["round-weights", str(src), "--data", str(data), "-o", str(tmp_path / "t.onnx"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "conv1" in text and "codes moved from nearest" in text


def test_round_weights_command_refuses_bad_use_before_reading_data(tmp_path, capsys):
    model = _conv_net()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    script = tmp_path / "d.py"
    script.write_text("raise RuntimeError('the data must not be read')\n")
    assert main(["round-weights", str(src), "-o", str(tmp_path / "r.onnx")]) == 2
    assert "give --data" in capsys.readouterr().err
    assert main(["round-weights", str(src), "--data", str(script), "-o", str(src)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(["round-weights", str(src), "--data", str(script), "-o", str(tmp_path / "r.onnx"),
                 "--damp", "nan"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.py", "m.onnx"]


def test_models_with_subgraphs_are_refused_with_a_reason_unless_no_data_is_needed():
    from trt_calib.errors import ModelError

    rng = np.random.default_rng(0)
    then = helper.make_graph([helper.make_node("Identity", ["c"], ["t"])], "then", [], [_vi("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [], [_vi("e", None)])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then, else_branch=other),
    ]
    model = helper.make_model(helper.make_graph(
        nodes, "t", [_vi("x", ["N", 2, 4, 4]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [_vi("y", None)], [_init("w", rng.normal(size=(3, 2, 1, 1)))]), opset_imports=[helper.make_opsetid("", 13)])
    batches = [{"x": rng.normal(size=(2, 2, 4, 4)).astype(np.float32), "flag": np.array(True)}]
    with pytest.raises(ModelError, match="If/Loop/Scan"):
        round_weights(model, batches)
    nearest, report = round_weights(model, None, method="nearest")
    q, s, moved = _tensorrt_codes(_weights(nearest)["w"], 0)
    assert [r.node for r in report.layers] == ["conv"]
    assert np.array_equal((q * s[:, None]).astype(np.float32), moved)


def test_fitting_for_the_activation_thresholds_beats_float_inputs_in_the_int8_model():
    """With each layer's input int8 at the thresholds the Q/DQ model will use, the codes absorb that quantiser's
    clipping: the int8 model's output is closer to float than with codes fitted on float inputs."""
    from trt_calib.ort.collect import calibrate

    model = _conv_net(seed=6)
    calib, held = _images(64, seed=8), _images(64, seed=9)
    thresholds = calibrate(model, _batches(model, calib), algorithm="mse")
    plain, _ = round_weights(model, _batches(model, calib))
    aware, report = round_weights(model, _batches(model, calib), activations=thresholds.amax,
                                  activations_note="mse")
    assert report.activations == "mse" and "int8 at the mse thresholds" in aware.metadata_props[0].value
    # the thresholds round-weights calibrates itself (layer inputs only) are calibrate()'s, bit for bit
    from trt_calib.qdq.rounding import input_thresholds

    own = input_thresholds(model, _batches(model, calib), algorithm="mse")
    assert own == {t: thresholds.amax[t] for t in ("x", "r1", "r2", "f")}
    assert [r.input_amax for r in report.layers] == [thresholds.amax[n] for n in ("x", "r1", "r2", "f")]
    for r in report.layers:
        assert r.error_rounded < r.error_nearest, r.node
    (ref,) = _run(model, {"x": held})

    def int8_error(m):
        q, _ = quantize_model(m, calibrate(m, _batches(m, calib), algorithm="mse"))
        (out,) = _run(q, {"x": held})
        return np.mean((out - ref) ** 2)

    assert int8_error(aware) < int8_error(plain)
    q, s, moved = _tensorrt_codes(_weights(aware)["w2"], 0)
    assert np.array_equal((q * s[:, None]).astype(np.float32), moved)


def test_a_layer_whose_int8_output_is_poor_anyway_keeps_its_float_weights(caplog):
    """A channel whose largest weight is 10^4 times the others rounds them all to 0: no choice of codes fixes that
    layer, and rounded weights would carry its error into the ranges calibration sees (PP-OCRv4 rec), so the layer
    is left as it is, with a warning, and the others are rounded."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.01, (4, 6, 1, 1)).astype(np.float32)
    w1[:, 0] = 100.0  # input channel 0 carries the huge weight, and is almost always zero below
    w2 = rng.normal(0, 0.3, (5, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="bad"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="good")]
    model = _model(nodes, [_vi("x", ["N", 6, 4, 4])], [_vi("y", None)], [_init("w1", w1), _init("w2", w2)])
    x = rng.normal(1.0, 0.5, (32, 6, 4, 4)).astype(np.float32)
    x[:, 0] = 0.0
    x[0, 0, 0, 0] = 1e-3
    rounded, report = round_weights(model, [{"x": x}])
    bad, good = report.layers
    assert bad.kept_float and "kept float" in bad.notes[-1] and bad.relative_rounded > 0.01
    assert not good.kept_float and good.error_rounded < good.error_nearest
    new = _weights(rounded)
    assert new["w1"].tobytes() == w1.tobytes()  # left as it was: quantize rounds it to nearest itself
    q, s, moved = _tensorrt_codes(new["w2"], 0)
    assert np.array_equal((q * s[:, None]).astype(np.float32), moved)
    doc = report.to_json()
    assert doc["kept_float"] == ["bad"] and doc["layers_rounded"] == 1 and doc["codes_checked"] == w2.size
    assert "bad: kept float" in caplog.text
    everything, report = round_weights(model, [{"x": x}], max_error=None)
    assert not report.layers[0].kept_float and _weights(everything)["w1"].tobytes() != w1.tobytes()
