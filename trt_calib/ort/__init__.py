"""The onnxruntime layer: calibration data, running a model on the CPU to collect histograms, FP32-vs-INT8 evaluation.

Imports `core`, onnx and onnxruntime (lazily, inside the functions that run a model).
"""
