"""The calibration cache a calibrator reads and writes: TensorRT's bytes, kept in memory for later builds and
written atomically; a cache for another calibrator is refused (or recalibrated over) instead of silently used."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .._util import atomic_write
from ..core.cache import CalibrationCache, encode_version
from ..errors import CacheFormatError, CalibrationError
from .algorithms import ALGORITHMS, Algorithm

__all__ = ["CacheFile", "CACHE_MISMATCH"]

logger = logging.getLogger("trt_calib.trt.calibrator")

#: What to do with a cache written by another calibrator: refuse it, or let TensorRT recalibrate and overwrite it.
CACHE_MISMATCH = ("error", "recalibrate")


class CacheFile:
    """One calibrator's cache: `read()` for TensorRT's read callback, `write()` for its write callback.

    `data` holds the bytes last read or written (reused by a later build with the same calibrator); `used` is True
    when TensorRT was handed a cache instead of calibrating.
    """

    def __init__(self, path: str | os.PathLike | None, algorithm: Algorithm, *, mismatch: str = "error",
                 trt_version: str | None = None) -> None:
        if mismatch not in CACHE_MISMATCH:
            raise CalibrationError(f"cache_mismatch must be one of {CACHE_MISMATCH}, got {mismatch!r}")
        self.path = Path(path) if path is not None else None
        self.algorithm = algorithm
        self.mismatch = mismatch
        self.trt_version = trt_version
        self.data: bytes | None = None
        self.used = False

    def read(self) -> bytes | None:
        """The cache bytes if there is a cache for this algorithm, else None (TensorRT then calibrates)."""
        if self.data is not None:
            self.used = True  # a cache kept from an earlier build with this calibrator
            return self.data
        if self.path is None:
            return None
        path = self.path
        if not path.exists():
            logger.info("no calibration cache at %s yet: TensorRT will calibrate", path)
            return None
        data = path.read_bytes()
        if not data:
            logger.warning("calibration cache %s is empty; ignoring it, TensorRT will calibrate", path)
            return None
        legacy = self.algorithm.key == "legacy"
        try:
            cache = CalibrationCache.parse(data, source=path)
        except CacheFormatError as exc:
            if legacy:
                logger.warning("%s. The Legacy calibrator's cache format is not documented: handing the file to "
                               "TensorRT as it is, which decides whether to use it", exc)
                return self._use(data)
            if self.mismatch != "recalibrate":
                raise
            logger.warning("%s; TensorRT would reject it: recalibrating, the file will be overwritten", exc)
            return None
        if cache.algorithm != self.algorithm.header:
            match = next((a.class_name for a in ALGORITHMS.values() if a.header == cache.algorithm), None)
            if legacy and match is None:
                logger.warning(
                    "calibration cache %s has the header %r. The header TensorRT writes for the Legacy calibrator is "
                    "not known (trt-calib presumes %s), so this is no reason to refuse it: handing it to TensorRT, "
                    "which decides whether to use it", path, cache.header, self.algorithm.header,
                )
                return self._use(data)
            message = (
                f"calibration cache {path} was written by {cache.algorithm or 'an unknown calibrator'} "
                f"(header {cache.header!r}) but this is a {self.algorithm.class_name} "
                f"({self.algorithm.header}): TensorRT would reject it and recalibrate"
            )
            if self.mismatch == "recalibrate":
                logger.warning("%s; recalibrating, the file will be overwritten", message)
                return None
            hint = f"use {match}, " if match else ""
            raise CalibrationError(
                f"{message}. Hint: {hint}delete the file, or pass cache_mismatch='recalibrate' to overwrite it"
            )
        self._warn_version(cache, path)
        logger.info(
            "using calibration cache %s (%s, TensorRT %s, %d tensors): TensorRT will not ask for batches",
            path, cache.algorithm, cache.trt_version, len(cache),
        )
        return self._use(data)

    def _use(self, data: bytes) -> bytes:
        self.data = data
        self.used = True
        return data

    def _warn_version(self, cache: Any, path: Path) -> None:
        if self.trt_version is None or cache.version_number is None:
            return
        try:
            running = encode_version(self.trt_version.split("+")[0].split("post")[0])
        except ValueError:
            return
        if running != cache.version_number:
            logger.warning(
                "calibration cache %s was written by TensorRT %s, this is TensorRT %s: TensorRT may ignore it "
                "and recalibrate", path, cache.trt_version, self.trt_version,
            )

    def write(self, data: bytes, batches: int) -> None:
        """Keep `data` and write it atomically to the path, if there is one."""
        if self.path is not None:
            atomic_write(self.path, data)
            logger.info("wrote calibration cache %s (%d bytes, %d batches)", self.path, len(data), batches)
        self.data = data
