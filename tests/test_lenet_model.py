"""The bundled LeNet (data/lenet/lenet.onnx) is sampleINT8's Caffe model, exactly.

Checks: the committed file is what the converter produces now; its weights are the caffemodel's float32 bytes;
onnxruntime agrees with an independent float64 numpy forward pass on every cached tensor; top-1 on MNIST train
0..599 is 100 %; tensor names are the ones TensorRT's calibration cache uses.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "lenet_caffe"
CAFFEMODEL = CORPUS / "mnist_lenet.caffemodel"
PROTOTXT = CORPUS / "deploy.prototxt"
DATA = REPO / "data" / "lenet"
MODEL = DATA / "lenet.onnx"
CONVERTER = REPO / "samples" / "sampleint8_lenet" / "convert_caffe.py"

CACHE_TENSORS = ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
CAFFEMODEL_SHA256 = "b1731e1c61ebd9a10ccd80714c0764c98e6ed3323d4c2d0ac3462b55d1084286"



@pytest.fixture(scope="module")
def converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_caffe", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(MODEL))


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    images = np.load(DATA / "mnist_train_images_0_599.npy")
    labels = np.load(DATA / "mnist_train_labels_0_599.npy")
    assert images.shape == (600, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (600,) and labels.dtype == np.uint8
    return images, labels


def _inputs(images: np.ndarray) -> np.ndarray:
    """sampleINT8's preprocessing: float(u8) / 255, no mean subtraction."""
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]


# ---------------------------------------------------------------------------------------------------------------
# Provenance and structure


def test_committed_model_is_what_the_converter_writes(converter: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "lenet.onnx"
    assert converter.main(["--caffemodel", str(CAFFEMODEL), "--prototxt", str(PROTOTXT), "-o", str(out)]) == 0
    assert out.read_bytes() == MODEL.read_bytes()
    again = converter.convert_files(CAFFEMODEL, PROTOTXT, tmp_path / "again.onnx")
    assert again == MODEL.read_bytes(), "conversion is not deterministic"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_initializers_are_the_caffemodel_float32_bytes(converter: ModuleType, model: onnx.ModelProto) -> None:
    raw_file = CAFFEMODEL.read_bytes()
    _, layers = converter.read_caffemodel(raw_file)
    blobs = {layer.name: layer.blobs for layer in layers if layer.blobs}
    assert {name: [b.shape for b in bs] for name, bs in blobs.items()} == {
        "conv1": [(20, 1, 5, 5), (20,)],
        "conv2": [(50, 20, 5, 5), (50,)],
        "ip1": [(500, 800), (500,)],
        "ip2": [(10, 500), (10,)],
    }
    inits = {t.name: t for t in model.graph.initializer}
    assert set(inits) == {f"{layer}_{kind}" for layer in blobs for kind in "wb"}
    for layer, (w, b) in blobs.items():
        for tensor, blob in ((inits[f"{layer}_w"], w), (inits[f"{layer}_b"], b)):
            value = numpy_helper.to_array(tensor)
            assert value.dtype == np.float32 and value.shape == blob.shape
            assert value.tobytes() == blob.astype("<f4").tobytes(), tensor.name
            # Independent of the decoder: the bytes sit in the file once, as a packed field 5 (tag 0x2a).
            payload = value.astype("<f4").tobytes()
            hits = [m.start() for m in re.finditer(re.escape(payload), raw_file)]
            assert len(hits) == 1, tensor.name
            assert _varint_before(raw_file, hits[0]) == len(payload), tensor.name


def _varint_before(buf: bytes, end: int) -> int:
    """The length varint that ends at `end` and follows the tag 0x2a (BlobProto.data, length-delimited)."""
    for size in range(1, 6):
        start = end - size
        chunk = buf[start:end]
        if buf[start - 1] == 0x2A and all(c & 0x80 for c in chunk[:-1]) and not chunk[-1] & 0x80:
            return sum((c & 0x7F) << (7 * i) for i, c in enumerate(chunk))
    raise AssertionError("no BlobProto.data tag before the blob bytes")


def test_model_is_valid_opset13_with_symbolic_batch(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    (inp,) = model.graph.input
    assert inp.name == "data" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    assert [o.name for o in model.graph.output] == ["prob"]
    assert CAFFEMODEL_SHA256 in model.doc_string


def test_tensor_names_follow_the_tensorrt_cache(model: onnx.ModelProto) -> None:
    produced = {out: node for node in model.graph.node for out in node.output}
    for name in CACHE_TENSORS[1:]:
        assert name in produced, name
    assert model.graph.input[0].name == "data"
    assert [n.op_type for n in model.graph.node] == [
        "Conv", "MaxPool", "Conv", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm", "Softmax"]
    relu = produced["ip1"]
    assert relu.op_type == "Relu" and list(relu.input) == ["ip1_prerelu"]
    assert produced["ip1_prerelu"].op_type == "Gemm" and list(produced["ip1_prerelu"].input)[0] == "pool2_flat"
    assert produced["pool2_flat"].op_type == "Flatten" and list(produced["pool2_flat"].input) == ["pool2"]
    assert list(produced["ip2"].input)[0] == "ip1"


# ---------------------------------------------------------------------------------------------------------------
# Numerics


def _reference_forward(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Caffe LeNet in float64 numpy, from the model's initializers, returning every cached tensor."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}

    def conv(a: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        k = weight.shape[-1]
        patches = sliding_window_view(a, (k, k), axis=(2, 3))  # (N, C, H', W', k, k), cross-correlation
        return np.einsum("nchwij,ocij->nohw", patches, weight) + bias[None, :, None, None]

    def maxpool2(a: np.ndarray) -> np.ndarray:
        n, c, h, wd = a.shape
        return a.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))

    out = {"data": x.astype(np.float64)}
    out["conv1"] = conv(out["data"], w["conv1_w"], w["conv1_b"])
    out["pool1"] = maxpool2(out["conv1"])
    out["conv2"] = conv(out["pool1"], w["conv2_w"], w["conv2_b"])
    out["pool2"] = maxpool2(out["conv2"])
    flat = out["pool2"].reshape(len(x), -1)  # C, H, W order
    out["ip1"] = np.maximum(flat @ w["ip1_w"].T + w["ip1_b"], 0.0)
    out["ip2"] = out["ip1"] @ w["ip2_w"].T + w["ip2_b"]
    e = np.exp(out["ip2"] - out["ip2"].max(axis=1, keepdims=True))
    out["prob"] = e / e.sum(axis=1, keepdims=True)
    return out


def _session(model: onnx.ModelProto, outputs: list[str]):
    """An onnxruntime CPU session that also returns the named intermediate tensors."""
    ort = pytest.importorskip("onnxruntime")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {vi.name: vi for vi in m.graph.value_info}
    for name in outputs:
        if name not in {o.name for o in m.graph.output}:
            m.graph.output.append(known[name])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnxruntime_matches_float64_numpy(model: onnx.ModelProto, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = mnist
    x = _inputs(images[40:77])  # 37 images: an odd batch size through the symbolic batch dimension
    names = CACHE_TENSORS[1:]
    got = dict(zip(names, _session(model, names).run(names, {"data": x}), strict=True))
    ref = _reference_forward(model, x)
    for name in names:
        assert got[name].dtype == np.float32 and got[name].shape == ref[name].shape, name
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    assert (ref["ip1"] == 0).any() and (ref["ip1"] > 0).any()  # the ReLU really clips


def test_top1_is_100_percent_on_train_0_599(model: onnx.ModelProto, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    (prob,) = _session(model, []).run(["prob"], {"data": _inputs(images)})
    assert prob.shape == (600, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    # A narrow pass: train image 80 (a 9) beats class 8 by only ~1.1e-3 in ip2.
    wrong = np.flatnonzero(prob.argmax(axis=1) != labels)
    assert wrong.size == 0, f"misclassified train images: {wrong.tolist()}"


# ---------------------------------------------------------------------------------------------------------------
# Converter pieces


def test_caffe_and_onnx_pool_sizes(converter: ModuleType) -> None:
    assert converter.caffe_pool_size(24, 2, 2) == converter.onnx_pool_size(24, 2, 2) == 12
    assert converter.caffe_pool_size(8, 2, 2) == converter.onnx_pool_size(8, 2, 2) == 4
    assert (converter.caffe_pool_size(7, 2, 2), converter.onnx_pool_size(7, 2, 2)) == (4, 3)  # ceil vs floor


def test_prototxt_parser(converter: ModuleType) -> None:
    text = 'name: "x" # comment\nlayer { name: "a" type: "Input" input_param { shape: { dim: 2 dim: 3 } } }\n' \
           "layer { name: 'b' pooling_param { pool: MAX kernel_size: 2 } bottom: \"a\" top: \"a\" }"
    net = converter.parse_prototxt(text)
    assert net["name"] == ["x"]
    a, b = net["layer"]
    assert a["input_param"][0]["shape"][0]["dim"] == ["2", "3"]
    assert b["name"] == ["b"] and b["pooling_param"][0] == {"pool": ["MAX"], "kernel_size": ["2"]}
    with pytest.raises(converter.ConversionError):
        converter.parse_prototxt("layer { name: 'a'")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("num_output: 20", "num_output: 30", "blobs"),
        ("kernel_size: 2\n    stride: 2", "kernel_size: 3\n    stride: 3", "kernel_size is 3"),
        ("pool: MAX", "pool: AVE", "MAX pooling"),
    ],
)
def test_converter_rejects_a_prototxt_that_does_not_fit(converter: ModuleType, old: str, new: str,
                                                         message: str) -> None:
    text = PROTOTXT.read_text()
    assert old in text
    with pytest.raises(converter.ConversionError, match=message):
        converter.convert(CAFFEMODEL.read_bytes(), text.replace(old, new, 1))
