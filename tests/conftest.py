"""Shared fixtures: where the read-only corpus lives (../shared beside the checkout, as in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHES = SHARED / "corpus" / "caches"

# The bundled sampleINT8 LeNet, its calibration batches and images, and the table TensorRT 7 published for it.
LENET = REPO / "data" / "lenet" / "lenet.onnx"
LENET_BATCHES = REPO / "data" / "lenet" / "sampleint8_batches.py"
LENET_IMAGES = REPO / "data" / "lenet" / "mnist_train_images_0_599.npy"
TRT_TABLE = REPO / "data" / "caches" / "sampleINT8_TRT-7000.cache"


def real_caches() -> list[Path]:
    """The real TensorRT caches of the corpus (empty list when ../shared is absent)."""
    if not CACHES.is_dir():
        return []
    return sorted(p for p in CACHES.iterdir() if p.is_file() and p.name != "README.md")


@pytest.fixture
def corpus_caches() -> list[Path]:
    caches = real_caches()
    if not caches:
        pytest.skip(f"corpus of real caches not found at {CACHES}")
    return caches
