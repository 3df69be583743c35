"""The TensorRT layer: calibrator classes, device buffers, dynamic ranges and engine builds for TensorRT 8.6-10.x.

Imports `core` and `ort`; `tensorrt` and the GPU libraries (pycuda, cuda-python, CuPy, torch) are imported lazily,
when a calibrator is created or an engine is built, so importing this package needs neither.
"""
