"""Weights for Q/DQ: symmetric int8 per output channel (the axis TensorRT expects per op), stored as int8."""

from __future__ import annotations

from typing import Any

import numpy as np


def weight_axis(node: Any, weight: np.ndarray) -> int | None:
    """The output-channel axis of a weighted node's constant weight (None: per-tensor is all TensorRT takes)."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul" and weight.ndim == 2:
        return 1
    return None


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their scales: scale = max|w| / 127 per slice along `axis` (or whole), q = round(w/scale).

    An all-zero slice gets scale 1 (its values stay 0); rounding is half to even, like ONNX QuantizeLinear.
    """
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        amax = np.max(np.abs(w)).reshape(()) if w.size else np.float32(0)
        shape: tuple[int, ...] = ()
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=others) if w.size else np.zeros(w.shape[axis], np.float32)
        shape = tuple(w.shape[axis] if i == axis else 1 for i in range(w.ndim))
    scale = (np.asarray(amax, dtype=np.float32) / np.float32(127.0)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale
