"""Shared fixtures and paths: the bundled LeNet, and the real caches and models in tests/data (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
