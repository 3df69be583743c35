"""Tools built on the layers below: cache inspection, validation, diff, check and conversion; provenance; reports.

Imports `core`, `ort` and `qdq`, never `trt` or `cli`. The cache tools' entry points are re-exported here.
"""

from .check import CheckReport, check_cache
from .convert import cache_from_json, cache_to_json, header_rewrite_warning, rewrite_header
from .diff import CacheDiff, DiffRow, diff_caches
from .entries import CALIBRATOR_NAMES, entry_flags, entry_kind, header_algorithm, inspect_cache
from .validate import SEVERITIES, ValidationReport, validate_cache

__all__ = [
    "entry_flags",
    "inspect_cache",
    "SEVERITIES",
    "CALIBRATOR_NAMES",
    "header_algorithm",
    "entry_kind",
    "ValidationReport",
    "validate_cache",
    "DiffRow",
    "CacheDiff",
    "diff_caches",
    "CheckReport",
    "check_cache",
    "cache_to_json",
    "cache_from_json",
    "rewrite_header",
    "header_rewrite_warning",
]
