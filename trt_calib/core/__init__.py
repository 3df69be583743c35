"""The numpy core: TensorRT's |x| histogram, the threshold rules, the cache format, sign analysis, comparisons.

Imports numpy and the package's errors only, so everything here runs (and is tested) without onnx, onnxruntime,
TensorRT or a GPU.
"""
