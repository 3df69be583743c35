"""Shared fixtures and paths: the bundled LeNet, and the real caches and models in tests/data (see its README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
CACHES = TEST_DATA / "caches"
MODELS = TEST_DATA / "models"
LENET_CAFFE = TEST_DATA / "lenet_caffe"

# The bundled sampleINT8 LeNet, its calibration batches and images, and the table TensorRT 7 published for it.
LENET = REPO / "data" / "lenet" / "lenet.onnx"
LENET_BATCHES = REPO / "data" / "lenet" / "sampleint8_batches.py"
LENET_IMAGES = REPO / "data" / "lenet" / "mnist_train_images_0_599.npy"
TRT_TABLE = REPO / "data" / "caches" / "sampleINT8_TRT-7000.cache"


def real_caches() -> list[Path]:
    """The 14 real TensorRT caches in tests/data/caches."""
    return sorted(p for p in CACHES.iterdir() if p.is_file() and p.name != "README.md")


@pytest.fixture
def corpus_caches() -> list[Path]:
    return real_caches()


# ---------------------------------------------------------------------------------------------- small ONNX graphs
def onnx_model(nodes, inputs, outputs, inits=(), opset=13):
    """A checked opset-`opset` model of `nodes`, its outputs given their inferred shapes (as exporters write them)."""
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for out in model.graph.output:
        out.CopyFrom(inferred[out.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def float_value_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def float_initializer(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


# ---------------------------------------------------------------------------------------------- the CLI in process
def run(capsys, *argv) -> tuple[int, str, str]:
    """`trt-calib ARGV` in process: (exit status, stdout, stderr)."""
    from trt_calib.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single error line a failing command prints (and check that there is exactly one)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
