"""Q/DQ ONNX for TensorRT 11 (explicit quantization): placement, rewriting, bias correction.

Imports `core` and `ort`. `quantize_model` is the entry point; the names below are its public surface.
"""

from .quantize import (
    ASYMMETRIC_DTYPES,
    ASYMMETRIC_METADATA_KEY,
    ASYMMETRIC_NOTE,
    MIN_OPSET,
    PLACEMENTS,
    WEIGHTED_OPS,
    ActivationScale,
    CoverageReport,
    NodeCoverage,
    qdq_session,
    quantize_model,
    quantize_weight,
    weight_axis,
)

__all__ = [
    "PLACEMENTS",
    "WEIGHTED_OPS",
    "MIN_OPSET",
    "ASYMMETRIC_DTYPES",
    "ASYMMETRIC_METADATA_KEY",
    "ASYMMETRIC_NOTE",
    "ActivationScale",
    "NodeCoverage",
    "CoverageReport",
    "quantize_model",
    "quantize_weight",
    "weight_axis",
    "qdq_session",
]
