"""Model inputs and the checks every batch passes: names, dtypes (TensorRT's input-type rule), shapes and shared
dynamic dimensions; and the sha256 of the batches a manifest records."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DataError

logger = logging.getLogger("trt_calib.ort.data")


@dataclass(frozen=True)
class InputSpec:
    """One model input as the model declares it; `None`, a string or an int <= 0 in `shape` is a dynamic dim."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        dims = tuple(d if d is None or isinstance(d, str) else int(d) for d in self.shape)
        object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def static_dim(self, axis: int) -> int | None:
        """The dim at `axis` if it is fixed, else None."""
        d = self.shape[axis]
        return d if isinstance(d, int) and d > 0 else None

    def shape_text(self) -> str:
        return format_shape(self.shape)


def format_shape(shape: Sequence[Any]) -> str:
    parts = ["?" if d is None or (isinstance(d, int) and d <= 0) else str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def input_names_of(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(repr(s.name) for s in inputs)


# --------------------------------------------------------------------------------------------------------------------
# Validation shared by every source and by iter_batches


#: Inputs TensorRT calibrates in their own type; it reads every other input as float32 (NVIDIA/TensorRT
#: `tools/Polygraphy/polygraphy/backend/trt/calibrator.py`: "TensorRT requires non-index calibration inputs to be
#: provided in float32"). Float data for an index input is refused; for the others it is calibration data.
_INDEX_DTYPES = frozenset({np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_)})


def check_dtype(src: np.dtype, spec: InputSpec, where: str) -> bool:
    """Refuse conversions that change meaning (float -> index int, anything -> bool); True when a conversion is
    needed. Float data for a uint8/int8 input (read as float32 by TensorRT) is converted when its values are whole
    numbers in range (`_conform` checks the values)."""
    dst = spec.dtype
    if src.kind not in "biuf":
        raise DataError(
            f"{where}: input {spec.name!r} has non-numeric dtype {src} (the model wants {dst}). "
            "Hint: pass numeric arrays"
        )
    if src == dst:
        return False
    if dst.kind not in "biuf":
        raise DataError(f"{where}: input {spec.name!r} is declared {dst}, which trt-calib cannot feed")
    if dst in _INDEX_DTYPES and dst.kind in "iu" and src.kind == "f":
        raise DataError(
            f"{where}: input {spec.name!r} is {src} but the model wants {dst}; refusing to truncate floats to "
            "integers. Hint: convert the data to the model's dtype yourself if that is really meant"
        )
    if dst.kind == "b":
        raise DataError(f"{where}: input {spec.name!r} is {src} but the model wants bool. Hint: pass a bool array")
    return True


def _conform(value: Any, spec: InputSpec, where: str, note: set[tuple[str, str]] | None) -> np.ndarray:
    """Check one array against its InputSpec and return it C-contiguous in the declared dtype."""
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: input {spec.name!r} cannot be read as an array ({exc})") from None
    if arr.ndim != spec.rank:
        raise DataError(
            f"{where}: input {spec.name!r} has shape {format_shape(arr.shape)} (rank {arr.ndim}) but the model "
            f"declares {spec.shape_text()} (rank {spec.rank}). Hint: batches carry the batch dim first"
        )
    for axis in range(spec.rank):
        want = spec.static_dim(axis)
        if want is not None and arr.shape[axis] != want:
            raise DataError(
                f"{where}: input {spec.name!r} has shape {format_shape(arr.shape)} but the model declares "
                f"{spec.shape_text()} (dim {axis} must be {want})"
            )
    if spec.rank and arr.shape[0] == 0:
        raise DataError(f"{where}: input {spec.name!r} is an empty batch {format_shape(arr.shape)}")
    if check_dtype(arr.dtype, spec, where):
        dst = spec.dtype
        if dst.kind in "iu" and arr.dtype.kind == "f" and arr.size:
            whole = np.isfinite(arr) & (arr == np.trunc(arr))
            if not whole.all():
                first = tuple(int(i) for i in np.unravel_index(int(np.argmin(whole)), arr.shape))
                raise DataError(
                    f"{where}: input {spec.name!r} is declared {dst} but holds {arr[first]} at index {first}, not a "
                    f"whole number. Hint: pass {dst} data, or whole numbers in the {dst} range"
                )
        if dst.kind in "iu" and arr.dtype.kind in "iuf" and not np.can_cast(arr.dtype, dst, "safe") and arr.size:
            lo, hi, info = arr.min(), arr.max(), np.iinfo(dst)
            if lo < info.min or hi > info.max:
                raise DataError(
                    f"{where}: input {spec.name!r} has values in [{lo}, {hi}] that do not fit the declared {dst}"
                )
        if note is not None and (arr.dtype.str, spec.name) not in note:
            note.add((arr.dtype.str, spec.name))
            logger.info("input %r: %s data converted to the declared %s", spec.name, arr.dtype, dst)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, naming the input
            arr = arr.astype(dst, order="C")
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # (never on a rank-0 input: ascontiguousarray would make it (1,))
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), arr.shape)
            bad = arr[first]
            what = "NaN" if np.isnan(bad) else f"{bad} (infinite)"
            if not np.isnan(bad) and np.isfinite(np.asarray(value)[first]):
                what += f" after conversion to {arr.dtype}"
            raise DataError(
                f"{where}: input {spec.name!r} contains {what} at index {tuple(int(i) for i in first)}. "
                "Hint: calibration data must be finite; check the data and preprocessing"
            )
    return arr


def _as_mapping(item: Any, inputs: Sequence[InputSpec], where: str) -> Mapping[str, Any]:
    """One batch as {input_name: array}; a bare array is accepted for single-input models."""
    if isinstance(item, Mapping):
        return item
    if isinstance(item, (str, bytes)) or (not hasattr(item, "__array__") and not isinstance(item, (list, tuple))):
        raise DataError(
            f"{where}: expected a dict {{input_name: array}}, got {type(item).__name__}. "
            f"Hint: the model's inputs are {input_names_of(inputs)}"
        )
    if len(inputs) != 1:
        raise DataError(
            f"{where}: got a bare array but the model has {len(inputs)} inputs ({input_names_of(inputs)}). "
            "Hint: yield dicts {input_name: array}"
        )
    return {inputs[0].name: item}


class Checker:
    """Validates a stream of batches: names, dtypes, shapes, finiteness, and shape consistency across batches."""

    def __init__(self, inputs: Sequence[InputSpec], origin: str, *, note: bool = True) -> None:
        self.inputs = tuple(inputs)
        self.origin = origin
        self.note: set[tuple[str, str]] | None = set() if note else None
        self.first: dict[str, tuple[int, ...]] | None = None
        self.short_at: int | None = None

    def __call__(self, batch: Any, index: int) -> dict[str, np.ndarray]:
        where = f"{self.origin}, batch {index}"
        batch = _as_mapping(batch, self.inputs, where)
        names = [s.name for s in self.inputs]
        missing = [n for n in names if n not in batch]
        extra = sorted(str(k) for k in batch if k not in names)
        if missing or extra:
            got = []
            if missing:
                got.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                got.append(f"unexpected {', '.join(map(repr, extra))}")
            raise DataError(f"{where}: {'; '.join(got)}. Hint: the model's inputs are {input_names_of(self.inputs)}")
        out = {s.name: _conform(batch[s.name], s, where, self.note) for s in self.inputs}
        check_shared_dims(self.inputs, {n: a.shape for n, a in out.items()}, where)
        if self.first is None:
            self.first = {n: a.shape for n, a in out.items()}
            return out
        if self.short_at is not None:
            raise DataError(
                f"{where}: comes after the shorter batch {self.short_at}; only the last batch may be shorter"
            )
        for name, arr in out.items():
            ref = self.first[name]
            if arr.shape == ref:
                continue
            if arr.ndim and arr.shape[1:] == ref[1:] and arr.shape[0] < ref[0]:
                self.short_at = index
                continue
            raise DataError(
                f"{where}: input {name!r} has shape {format_shape(arr.shape)} but batch 0 had {format_shape(ref)}. "
                "Hint: every batch must have the same shape (only the last may have fewer samples)"
            )
        return out


def check_shared_dims(inputs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """Inputs that name the same dynamic dim (e.g. both (N, 4)) must get the same size for it."""
    seen: dict[str, tuple[str, int, int]] = {}
    for spec in inputs:
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str) or not dim or axis >= len(shapes[spec.name]):
                continue
            size = int(shapes[spec.name][axis])
            if dim not in seen:
                seen[dim] = (spec.name, axis, size)
                continue
            other, other_axis, other_size = seen[dim]
            if size != other_size:
                raise DataError(
                    f"{where}: input {spec.name!r} has {dim}={size} (dim {axis} of {format_shape(shapes[spec.name])}) "
                    f"but input {other!r} has {dim}={other_size} (dim {other_axis} of "
                    f"{format_shape(shapes[other])}); the model declares both with the dimension {dim!r}, so they "
                    "must agree. Hint: feed both inputs the same size"
                )


def hash_batch(digest: Any, batch: Mapping[str, np.ndarray], inputs: Sequence[InputSpec]) -> None:
    """Fold one validated batch (names, dtypes, shapes and bytes) into `digest`."""
    for spec in inputs:
        arr = np.ascontiguousarray(batch[spec.name])
        digest.update(json.dumps([spec.name, arr.dtype.str, list(arr.shape)]).encode())
        digest.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")
