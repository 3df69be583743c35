"""The first exception raised inside a TensorRT callback, kept to re-raise after the build.

TensorRT's Python bindings print and swallow what a calibrator callback raises (pyInt8.cpp wraps each call), then
finish the build from whatever batches were seen; so a calibrator records the failure, ends calibration, and the
caller re-raises it with `raise_if_failed()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["Failure", "FailureRecord"]

logger = logging.getLogger("trt_calib.trt.calibrator")


@dataclass
class Failure:
    """One exception, the callback it came from and the batch it was working on."""

    exception: BaseException
    callback: str
    batch_index: int | None
    cache_written: bool = False  # a calibration cache had been written before the failure
    noted: bool = False

    def where(self) -> str:
        at = f" for batch {self.batch_index}" if self.batch_index is not None else ""
        return f"{self.callback}(){at}"


class FailureRecord:
    """Keeps the first failure (later ones are logged at debug level) and re-raises it on request."""

    def __init__(self) -> None:
        self.first: Failure | None = None

    def record(self, exc: BaseException, callback: str, batch_index: int | None, *,
               cache_written: bool = False) -> None:
        """Note `exc` raised in `callback`; only the first failure is kept and logged as an error.

        `cache_written`: a cache was already written before the failure, so the messages must not deny it.
        """
        if self.first is not None:
            logger.debug("after the first failure, %s() also raised %s: %s", callback, type(exc).__name__, exc)
            return
        self.first = Failure(exc, callback, batch_index, cache_written)
        cache = "the calibration cache written before it stays" if cache_written else "no cache will be written"
        logger.error(
            "calibration failed in %s: %s: %s. Calibration ends here and %s; TensorRT may still finish the build "
            "from partial data, so call raise_if_failed() after it.",
            self.first.where(), type(exc).__name__, exc, cache,
        )

    def raise_if_failed(self) -> None:
        """Re-raise the first exception (with a note naming callback and batch), or return."""
        failure = self.first
        if failure is None:
            return
        exc = failure.exception
        if not failure.noted and hasattr(exc, "add_note"):
            cache = ("the calibration cache had been written before" if failure.cache_written
                     else "no calibration cache was written")
            exc.add_note(
                f"trt-calib: raised inside TensorRT's {failure.where()} callback; calibration ended there and {cache}."
            )
            failure.noted = True
        raise exc
