"""Q/DQ ONNX for TensorRT 11 (explicit quantization). `quantize_model` is the entry point.

Modules, in the order the work happens: `graph` (the graph facts placement needs), `scales` (where each scale comes
from), `placement` (which tensors get Q/DQ, TensorRT's guidance), `weights` and `rewrite` (the new graph), `bias`
(sequential bias correction), `report` (coverage), `quantize` (all of it). The way back: `to_cache` turns a Q/DQ
model into a plain model plus a TensorRT calibration cache (`cache_report` says what it did). Imports `core` and `ort`.
"""

from .bias import qdq_session
from .graph import MIN_OPSET, PLACEMENTS, WEIGHTED_OPS
from .quantize import quantize_model
from .report import ActivationScale, CoverageReport, NodeCoverage
from .scales import ASYMMETRIC_DTYPES, ASYMMETRIC_METADATA_KEY, ASYMMETRIC_NOTE
from .to_cache import QdqConversion, UnsupportedQdqError, qdq_to_cache
from .weights import quantize_weight, weight_axis

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
    "qdq_to_cache",
    "QdqConversion",
    "UnsupportedQdqError",
]
