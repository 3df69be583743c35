"""Calibration batches as TensorRT's callbacks consume them: pulled one at a time from any iterable, peeked without
being consumed (preflight), validated against the network's inputs and the first batch, and converted to the type
TensorRT reads, before a pointer is made.

TensorRT reads INT32, INT64 and BOOL calibration inputs in their own type and every other input as float32
(NVIDIA/TensorRT `tools/Polygraphy/polygraphy/backend/trt/calibrator.py`, `set_input_metadata`: "TensorRT requires
non-index calibration inputs to be provided in float32"; trtexec's calibrator allocates `elemCount * sizeof(float)`,
`samples/common/sampleEngines.cpp`). So float16, bfloat16, float64, uint8 and int8 batches are converted to float32
(once-per-input warning) and index inputs are handed over as they are.

Errors name the input and the batch, and say what TensorRT would read instead.
"""

from __future__ import annotations

import collections.abc
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import CalibrationError, DataError
from .device import is_device_array

__all__ = [
    "BatchFeed", "INDEX_DTYPES", "read_dtype", "torch_like", "describe", "count_non_finite", "host_copy", "leading_dim",
    "shape_text", "is_one_shot",
]

logger = logging.getLogger("trt_calib.trt.calibrator")

#: The calibration inputs TensorRT reads in their own type; it reads every other input as float32.
INDEX_DTYPES = frozenset({np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_)})
_FLOAT32 = np.dtype(np.float32)


def read_dtype(dtype: Any) -> np.dtype:
    """What TensorRT reads from the calibration buffer of an input of `dtype`: int32, int64 and bool as themselves,
    float32 for everything else (float16, bfloat16, float64, uint8, int8, ...)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return _FLOAT32  # bfloat16 and other types numpy has no name for
    return dtype if dtype in INDEX_DTYPES else _FLOAT32


def _type_name(value: Any, dtype: np.dtype) -> str:
    """The element type's name, also for types numpy cannot name (torch.bfloat16)."""
    if torch_like(value):
        return str(value.dtype).rpartition(".")[2]
    return str(dtype)


def _is_number_type(name: str, dtype: np.dtype) -> bool:
    return dtype.kind in "fiu" or name == "bfloat16"


def _to_float32(name: str, value: Any, index: int) -> Any:
    """`value` as a C-contiguous float32 array on the same side (host or GPU) it came from."""
    if isinstance(value, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range float64 becomes inf, reported after
            return np.ascontiguousarray(value, dtype=np.float32)
    if torch_like(value):
        return value.float().contiguous()
    if type(value).__module__.split(".")[0] == "cupy":
        return value.astype("float32", order="C")
    raise DataError(
        f"batch {index}: input {name!r} is a {type(value).__name__} of another type than float32, and TensorRT reads "
        "float32 for it; trt-calib converts numpy, torch and CuPy arrays only. Hint: convert it to float32 yourself"
    )


def torch_like(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "is_contiguous")


def describe(value: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, numpy dtype, C-contiguous) of a numpy array, a torch tensor or a __cuda_array_interface__ array."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype, bool(value.flags.c_contiguous)
    if torch_like(value):
        name = str(value.dtype).rpartition(".")[2]
        try:
            dtype = np.dtype(name)
        except TypeError:
            dtype = np.dtype(np.void)  # bfloat16 and other types numpy has no name for
        return tuple(int(d) for d in value.shape), dtype, bool(value.is_contiguous())
    if is_device_array(value):
        iface = value.__cuda_array_interface__
        shape = tuple(int(d) for d in iface["shape"])
        dtype = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        contiguous = strides is None or tuple(strides) == tuple(
            int(np.prod(shape[i + 1 :], dtype=np.int64)) * dtype.itemsize for i in range(len(shape))
        )
        return shape, dtype, contiguous
    raise TypeError(type(value).__name__)


def count_non_finite(value: Any) -> tuple[int, int]:
    """(NaN count, infinity count) of a floating-point array on the host or the GPU."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return 0, 0
        if np.isfinite(value).all():
            return 0, 0
        nan = int(np.count_nonzero(np.isnan(value)))
        return nan, int(value.size - nan - np.count_nonzero(np.isfinite(value)))
    if torch_like(value):
        if not value.is_floating_point() or bool(value.isfinite().all()):
            return 0, 0
        nan = int(value.isnan().sum())
        return nan, int(value.isinf().sum())
    module = type(value).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        if value.dtype.kind != "f" or bool(cupy.isfinite(value).all()):
            return 0, 0
        return int(cupy.isnan(value).sum()), int(cupy.isinf(value).sum())
    return 0, 0


def host_copy(value: Any) -> np.ndarray:
    """A host numpy copy of a batch array (for the cross-check and the host backend)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if torch_like(value):
        return value.detach().cpu().numpy().copy()
    if hasattr(value, "get"):  # CuPy
        return np.asarray(value.get())
    raise CalibrationError(f"cannot copy a {type(value).__name__} to the host for the cross-check")


def leading_dim(raw: Any, input_specs: Mapping[str, Any] | None = None) -> int:
    """The batch size a raw batch implies: the dim at the batch axis of its first batched input (`InputSpec`
    .batch_axis when `input_specs` names it, e.g. 1 for silero's state (2, batch, 128); rank-0 inputs are not
    batched), else the first dim of its first array (1 for a scalar)."""
    specs = input_specs or {}
    items = list(raw.items()) if isinstance(raw, Mapping) else [(None, raw)]
    for name, value in items:
        spec = specs.get(name) if name is not None else None
        shape = getattr(value, "shape", None)
        if shape is None:
            shape = np.shape(value)
        if spec is not None:
            axis = getattr(spec, "batch_axis", 0)
            if axis is None or len(shape) <= axis:
                continue  # not batched: the next input tells the batch size
            return int(shape[axis])
        return int(shape[0]) if len(shape) else 1
    return 1


def shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def is_one_shot(batches: Any) -> bool:
    """True for iterators (generators): they cannot be iterated a second time."""
    return isinstance(batches, collections.abc.Iterator)


class BatchFeed:
    """The batch source behind a calibrator: pull, peek and validate, remembering the first batch's shapes and dtypes.

    `fed` counts the batches handed to TensorRT (the caller advances it); `names` is TensorRT's input order once
    known; `exhausted` ends the feed (the data ended, max_batches, or a failure).
    """

    def __init__(self, source: Any, input_specs: Sequence[Any] | None = None) -> None:
        if source is None or isinstance(source, (str, bytes, os.PathLike)):
            raise DataError(
                f"batches must be an iterable of {{input_name: array}} dicts or arrays, got {source!r}. "
                "Hint: trt_calib.ort.data.open_source(path, inputs, batch_size=...) reads files and folders"
            )
        if isinstance(source, Mapping) or isinstance(source, np.ndarray):
            raise DataError(
                f"batches must be an iterable of batches, got one {type(source).__name__}. Hint: pass [batch]"
            )
        if not isinstance(source, collections.abc.Iterable):
            raise DataError(f"batches: {type(source).__name__} is not iterable")
        self.source = source
        self.input_specs = {s.name: s for s in input_specs} if input_specs else {}
        self._converted: set[str] = set()  # inputs whose conversion to float32 was already announced
        self.restart()

    @property
    def restartable(self) -> bool:
        """True if `restart()` can start the batches again (a one-shot iterator only before anything was taken)."""
        return not is_one_shot(self.source) or not self.started

    def reset(self) -> None:
        """Start the batches again (for another build). One-shot iterators cannot be restarted: DataError."""
        if not self.restartable:
            raise DataError(
                "the calibration batches are a one-shot iterator (a generator) and were consumed. "
                "Hint: pass a list or a trt_calib.ort.data source to calibrate more than once"
            )
        self.restart()

    def restart(self) -> None:
        """Forget everything about the previous pass (the source itself is iterated again from the start)."""
        self._iterator: Iterator[Any] | None = None
        self._raw_pending: list[Any] = []
        self._peeked: tuple[tuple[str, ...], dict[str, Any]] | None = None
        self.first_shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.names: tuple[str, ...] | None = None
        self.exhausted = False
        self.fed = 0

    @property
    def started(self) -> bool:
        """True once anything was taken from the source."""
        return self._iterator is not None or bool(self._raw_pending) or self._peeked is not None

    def pull(self) -> Any:
        """The next raw batch from the source, or None at the end."""
        if self._raw_pending:
            return self._raw_pending.pop(0)
        if self.exhausted:
            return None
        if self._iterator is None:
            self._iterator = iter(self.source)
        try:
            return next(self._iterator)
        except StopIteration:
            return None

    def peek_raw(self) -> Any:
        """The next raw batch without consuming it (None at the end)."""
        if self._peeked is not None:
            return self._peeked[1]
        if not self._raw_pending:
            raw = self.pull()
            if raw is None:
                return None
            self._raw_pending.append(raw)
        return self._raw_pending[0]

    def input_names(self) -> tuple[str, ...] | None:
        """Input names known without TensorRT: TensorRT's order once seen, else the specs, else the first batch."""
        if self.names is not None:
            return self.names
        if self.input_specs:
            return tuple(self.input_specs)
        raw = self.peek_raw()
        if isinstance(raw, Mapping):
            return tuple(str(k) for k in raw)
        return None

    def _as_dict(self, raw: Any, names: Sequence[str], index: int) -> dict[str, Any]:
        if isinstance(raw, Mapping):
            return dict(raw)
        if isinstance(raw, (str, bytes)) or raw is None:
            raise DataError(f"batch {index}: expected a dict {{input_name: array}} or an array, got {raw!r}")
        if isinstance(raw, (list, tuple)):
            raise DataError(
                f"batch {index} is a {type(raw).__name__}; the network's inputs are {list(names)}. "
                "Hint: yield a dict {input_name: array} (or a bare array for a single-input network)"
            )
        if len(names) != 1:
            raise DataError(
                f"batch {index} is a single array but the network has {len(names)} inputs {list(names)}. "
                "Hint: yield dicts {input_name: array}"
            )
        return {names[0]: raw}

    def validate(self, raw: Any, names: Sequence[str], index: int) -> dict[str, Any]:
        """Check one batch against TensorRT's input names and the first batch; errors name input and batch."""
        batch = self._as_dict(raw, names, index)
        keys = [str(k) for k in batch]
        if set(keys) != set(names) or len(keys) != len(names):
            missing = [n for n in names if n not in batch]
            extra = [k for k in keys if k not in names]
            raise DataError(
                f"batch {index} has inputs {keys} but the network's inputs are {list(names)} "
                f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}). "
                "Hint: key each batch by the ONNX input names"
            )
        out: dict[str, Any] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            value = batch[name]
            if not isinstance(value, np.ndarray) and not torch_like(value) and not is_device_array(value):
                try:
                    value = np.asarray(value)
                except (TypeError, ValueError) as exc:
                    raise DataError(f"batch {index}: input {name!r} cannot be read as an array ({exc})") from None
            shape, dtype, contiguous = describe(value)
            spec = self.input_specs.get(name)
            value, dtype, converted = self._as_read_type(name, value, dtype, spec, index)
            if not contiguous and not converted:
                raise DataError(
                    f"batch {index}: input {name!r} is not C-contiguous; TensorRT reads the bytes in order. "
                    "Hint: np.ascontiguousarray(x) (or .contiguous() for torch)"
                )
            first_dtype = self.dtypes.get(name)
            if first_dtype is not None and dtype != first_dtype:
                raise DataError(
                    f"batch {index}: input {name!r} has dtype {dtype} but batch 0 had {first_dtype}. "
                    "Hint: give every batch the same dtype"
                )
            first = self.first_shapes.get(name)
            if first is not None and shape != first:
                raise DataError(
                    f"batch {index}: input {name!r} has shape {shape_text(shape)} but batch 0 had "
                    f"{shape_text(first)}. TensorRT calibrates at one shape and would read a smaller batch past "
                    "its end. Hint: drop or pad the last batch (last_batch='drop' or 'pad')"
                )
            if first is None and spec is not None:
                self._check_spec_shape(spec, shape, index)
            nan, inf = count_non_finite(value)
            if nan or inf:
                after = " (after conversion to float32)" if converted else ""
                raise DataError(
                    f"batch {index}: input {name!r} contains {nan} NaN and {inf} infinite value(s){after}; "
                    "calibration data must be finite. Hint: check the data and its preprocessing"
                )
            out[name] = value
            shapes[name] = shape
            self.dtypes.setdefault(name, dtype)
        for name, shape in shapes.items():
            self.first_shapes.setdefault(name, shape)
        return out

    def _as_read_type(self, name: str, value: Any, dtype: np.dtype, spec: Any,
                      index: int) -> tuple[Any, np.dtype, bool]:
        """`value` in the type TensorRT reads for input `name`, that type, and whether it was converted.

        The network's type of the input comes from its InputSpec; without one, int32, int64 and bool data is taken
        for an index input (TensorRT reads it as it is) and any other number type for a float input.
        """
        type_name = _type_name(value, dtype)
        network_type = np.dtype(spec.dtype) if spec is not None else dtype
        if network_type in INDEX_DTYPES:
            if dtype != network_type:
                raise DataError(
                    f"batch {index}: input {name!r} has dtype {type_name}, but the network input is {network_type} "
                    f"and TensorRT reads {network_type} for it. Hint: convert the data (x.astype(np.{network_type}))"
                )
            return value, dtype, False
        if dtype == _FLOAT32:
            return value, dtype, False
        if not _is_number_type(type_name, dtype):
            raise DataError(
                f"batch {index}: input {name!r} has dtype {type_name}, but TensorRT reads float32 for it. "
                "Hint: pass numbers (x.astype(np.float32))"
            )
        if name not in self._converted:
            self._converted.add(name)
            logger.warning(
                "input %r: %s calibration batches are converted to float32, which TensorRT reads for every "
                "calibration input that is not INT32, INT64 or BOOL", name, type_name,
            )
        return _to_float32(name, value, index), _FLOAT32, True

    @staticmethod
    def _check_spec_shape(spec: Any, shape: tuple[int, ...], index: int) -> None:
        dims = tuple(spec.shape)
        if len(dims) != len(shape):
            raise DataError(
                f"batch {index}: input {spec.name!r} has shape {shape_text(shape)} (rank {len(shape)}) but the "
                f"network declares rank {len(dims)} {shape_text(['?' if not isinstance(d, int) or d <= 0 else d for d in dims])}"
            )
        for axis, (want, got) in enumerate(zip(dims, shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise DataError(
                    f"batch {index}: input {spec.name!r} has shape {shape_text(shape)} but the network fixes dim "
                    f"{axis} to {want}"
                )

    def peek(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The next batch, validated, without consuming it (preflight checks before a long build).

        Raises the validation error directly (nothing is recorded as a calibration failure).
        """
        names = tuple(names) if names is not None else self.input_names()
        if names is None:
            raise DataError("peek: the input names are unknown (bare-array batches). Hint: pass names=[...]")
        if self._peeked is not None and self._peeked[0] == names:
            return dict(self._peeked[1])
        index = self.fed
        raw = self._peeked[1] if self._peeked is not None else self.pull()
        self._peeked = None
        if raw is None:
            if index == 0:
                raise DataError("the calibration data produced no batches")
            raise DataError(f"the calibration data ended after {index} batches; there is no next batch to peek")
        try:
            batch = self.validate(raw, names, index)
        except BaseException:
            self._raw_pending.insert(0, raw)
            raise
        self._peeked = (names, batch)
        return dict(batch)

    def next(self, names: tuple[str, ...], index: int) -> dict[str, Any] | None:
        """The next batch validated against `names` (a peeked one first), or None at the end."""
        if self._peeked is not None:
            peeked_names, batch = self._peeked
            self._peeked = None
            if peeked_names == names:
                return batch
            return self.validate(batch, names, index)
        raw = self.pull()
        if raw is None:
            return None
        return self.validate(raw, names, index)

