"""Tools built on the layers below: cache inspection, validation, diff, check and conversion; provenance; reports.

Imports `core`, `ort` and `qdq`, never `trt` or `cli`.
"""
