"""Leaving nodes in float in the Q/DQ model: only what is excluded changes, every other pair keeps its scale."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import LENET, LENET_IMAGES
from trt_calib.errors import ModelError
from trt_calib.ort.collect import calibrate
from trt_calib.qdq import qdq_session, quantize_model

UNITS = ["conv1", "conv2", "ip1", "ip2"]  # LeNet's Conv/Gemm nodes, all quantised under TensorRT placement


def _images(start: int, stop: int) -> np.ndarray:
    return np.load(LENET_IMAGES)[start:stop].astype(np.float32)[:, None] / np.float32(255.0)


def _batches(start: int, stop: int, size: int = 50) -> list[dict[str, np.ndarray]]:
    x = _images(start, stop)
    return [{"data": x[i : i + size]} for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def scales():
    return calibrate(LENET, _batches(0, 200))


@pytest.fixture(scope="module")
def held():
    return _batches(400, 500)


# ---------------------------------------------------------------------------------------------- exclusions in Q/DQ
def test_excluding_a_node_leaves_it_float_and_every_other_pair_as_it_was(scales):
    full, _ = quantize_model(LENET, scales)
    part, report = quantize_model(LENET, scales, exclude={"conv2": "named on request"})
    conv2 = next(n for n in part.graph.node if n.name == "conv2")
    assert conv2.input[:2] == ["pool1", "conv2_w"]  # float input, float weight
    inits = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    a, b = inits(full), inits(part)
    shared = [k for k in a if k.endswith("_scale") and not k.startswith(("pool1", "conv2"))]
    assert shared and all(np.array_equal(a[k], b[k]) for k in shared)
    row = next(n for n in report.nodes if n.node == "conv2")
    assert not row.quantized and row.reason == "excluded: named on request"
    assert report.excluded == {"conv2": "named on request"}
    assert "1 node(s) excluded on request" in report.summary()
    assert report.to_json()["excluded"] == {"conv2": "named on request"}


def test_excluding_every_unit_gives_the_float_outputs(scales, held):
    qdq, report = quantize_model(LENET, scales, exclude=dict.fromkeys(UNITS, "all"))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in qdq.graph.node)
    got = qdq_session(qdq).run(None, held[0])[0]
    want = qdq_session(onnx.load(LENET)).run(None, held[0])[0]
    np.testing.assert_array_equal(got, want)


def test_excluding_an_unknown_node_names_close_matches(scales):
    with pytest.raises(ModelError, match=r"no node named 'conv3'.*did you mean conv2, conv1"):
        quantize_model(LENET, scales, exclude={"conv3": "typo"})


def test_excluding_a_node_that_is_not_quantised_says_it_has_no_effect(scales):
    _, report = quantize_model(LENET, scales, exclude={"prob": "op type Softmax"})
    assert list(report.excluded) == ["prob"]
    assert report.excluded["prob"].startswith("op type Softmax (no effect: ")
    assert all(n.quantized for n in report.nodes if n.node in UNITS)


