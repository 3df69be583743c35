"""Calibration batch sources: npy, npz, image folders and generator scripts, batched reproducibly.

The same source feeds the CPU collection (onnxruntime) and the TensorRT calibrator, so a cross-check compares like
with like. TensorRT updates its histograms once per batch, so batch size, order and the last-batch policy are explicit
and recorded in `BatchSource.manifest()`. Data is read batch by batch: images are decoded per batch and `.npy` files
are read row by row (never memory-mapped: a file that shrinks while mapped kills the process with SIGBUS).
`manifest()` also records a sha256 of the batches themselves, so changed files behind a data script are noticed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import logging
import os
import secrets
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._util import require
from ..errors import DataError, TrtCalibError

__all__ = [
    "InputSpec",
    "Preprocess",
    "BatchSource",
    "open_source",
    "data_file",
    "from_arrays",
    "iter_batches",
    "IMAGE_EXTENSIONS",
    "LAST_BATCH_POLICIES",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".webp", ".tif", ".tiff", ".gif"}
)
LAST_BATCH_POLICIES = ("drop", "keep", "pad")
#: Largest image side preprocessing may produce (resize=100000 took 22 GB before anything ran).
MAX_IMAGE_SIDE = 8192
_DEFAULT_FUNCTION = "load_data"
_HASH_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------------------------------
# Model inputs and preprocessing


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
        return _shape_text(self.shape)


def _shape_text(shape: Sequence[Any]) -> str:
    parts = ["?" if d is None or (isinstance(d, int) and d <= 0) else str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _input_names(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(repr(s.name) for s in inputs)


_PREPROCESS_KEYS = ("size", "resize", "mean", "std", "scale", "layout", "order")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: (optional shorter-side resize + centre crop | resize) -> x*scale -> (x-mean)/std.

    `mean`/`std` hold one value or one per channel, in the model's channel order (after `channel_order` is applied).
    Resizing is bilinear (Pillow, antialiased when shrinking); the crop is centred, rounding like torchvision.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    layout: str = "NCHW"
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        size = self.size
        if size is not None:
            if isinstance(size, (int, np.integer)):
                size = (int(size), int(size))
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise DataError(f"preprocess: size must be (H, W) with positive values, got {self.size!r}")
            if max(size) > MAX_IMAGE_SIDE:
                raise DataError(f"preprocess: size {size[0]}x{size[1]} exceeds {MAX_IMAGE_SIDE} pixels a side")
        if self.resize is not None and int(self.resize) < 1:
            raise DataError(f"preprocess: resize must be a positive int, got {self.resize!r}")
        if self.resize is not None and int(self.resize) > MAX_IMAGE_SIDE:
            raise DataError(f"preprocess: resize={self.resize} exceeds {MAX_IMAGE_SIDE} pixels (the shorter side "
                            "after resizing; the longer one is larger still)")
        mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        std = tuple(float(v) for v in np.atleast_1d(self.std))
        if not mean or not std:
            raise DataError("preprocess: mean and std need at least one value")
        if any(v == 0.0 or not np.isfinite(v) for v in std) or not all(np.isfinite(mean)):
            raise DataError(f"preprocess: std must be finite and non-zero and mean finite, got mean={mean} std={std}")
        scale = float(self.scale)
        if not np.isfinite(scale) or scale == 0.0:
            raise DataError(f"preprocess: scale must be finite and non-zero, got {self.scale!r}")
        layout = str(self.layout).upper()
        if layout not in ("NCHW", "NHWC"):
            raise DataError(f"preprocess: layout must be NCHW or NHWC, got {self.layout!r}")
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise DataError(f"preprocess: channel order must be RGB or BGR, got {self.channel_order!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "resize", None if self.resize is None else int(self.resize))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "channel_order", order)

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse the CLI form "size=224,resize=256,mean=0.485/0.456/0.406,std=...,scale=1/255,layout=NCHW,order=RGB".

        `size` is "224" or "HxW"; lists use "/"; `scale` may be a fraction; `channel_order` is accepted for `order`.
        """
        kwargs: dict[str, Any] = {}
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "channel_order":
                key = "order"
            if not sep or not key:
                raise DataError(
                    f"preprocess: {item!r} is not key=value. Hint: known keys: {', '.join(_PREPROCESS_KEYS)}"
                )
            if key not in _PREPROCESS_KEYS:
                raise DataError(f"preprocess: unknown key {key!r}. Hint: known keys: {', '.join(_PREPROCESS_KEYS)}")
            field = "channel_order" if key == "order" else key
            if field in kwargs:
                raise DataError(f"preprocess: key {key!r} given twice")
            try:
                kwargs[field] = _parse_preprocess_value(key, value)
            except (ValueError, ZeroDivisionError) as exc:
                raise DataError(f"preprocess: bad value for key {key!r}: {value!r} ({exc})") from None
        try:
            return cls(**kwargs)
        except DataError as exc:
            raise DataError(f"{exc} (in {text!r})") from None

    def to_dict(self) -> dict:
        """JSON-ready fields, for manifests and reports."""
        return {
            "size": None if self.size is None else list(self.size),
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "layout": self.layout,
            "channel_order": self.channel_order,
        }


def _parse_number(text: str) -> float:
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(text)


def _parse_preprocess_value(key: str, value: str) -> Any:
    if not value:
        raise ValueError("empty value")
    if key == "size":
        parts = value.lower().replace("/", "x").split("x")
        dims = [int(p) for p in parts]
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2:
            raise ValueError("expected N or HxW")
        return tuple(dims)
    if key == "resize":
        return int(value)
    if key in ("mean", "std"):
        return tuple(float(v) for v in value.split("/"))
    if key == "scale":
        return _parse_number(value)
    return value  # layout, order: checked by the constructor


# --------------------------------------------------------------------------------------------------------------------
# Validation shared by every source and by iter_batches


#: Inputs TensorRT calibrates in their own type; it reads every other input as float32 (NVIDIA/TensorRT
#: `tools/Polygraphy/polygraphy/backend/trt/calibrator.py`: "TensorRT requires non-index calibration inputs to be
#: provided in float32"). Float data for an index input is refused; for the others it is calibration data.
_INDEX_DTYPES = frozenset({np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_)})


def _check_dtype(src: np.dtype, spec: InputSpec, where: str) -> bool:
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
            f"{where}: input {spec.name!r} has shape {_shape_text(arr.shape)} (rank {arr.ndim}) but the model "
            f"declares {spec.shape_text()} (rank {spec.rank}). Hint: batches carry the batch dim first"
        )
    for axis in range(spec.rank):
        want = spec.static_dim(axis)
        if want is not None and arr.shape[axis] != want:
            raise DataError(
                f"{where}: input {spec.name!r} has shape {_shape_text(arr.shape)} but the model declares "
                f"{spec.shape_text()} (dim {axis} must be {want})"
            )
    if spec.rank and arr.shape[0] == 0:
        raise DataError(f"{where}: input {spec.name!r} is an empty batch {_shape_text(arr.shape)}")
    if _check_dtype(arr.dtype, spec, where):
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
    else:
        arr = np.ascontiguousarray(arr)
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
            f"Hint: the model's inputs are {_input_names(inputs)}"
        )
    if len(inputs) != 1:
        raise DataError(
            f"{where}: got a bare array but the model has {len(inputs)} inputs ({_input_names(inputs)}). "
            "Hint: yield dicts {input_name: array}"
        )
    return {inputs[0].name: item}


class _Checker:
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
            raise DataError(f"{where}: {'; '.join(got)}. Hint: the model's inputs are {_input_names(self.inputs)}")
        out = {s.name: _conform(batch[s.name], s, where, self.note) for s in self.inputs}
        _check_shared_dims(self.inputs, {n: a.shape for n, a in out.items()}, where)
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
                f"{where}: input {name!r} has shape {_shape_text(arr.shape)} but batch 0 had {_shape_text(ref)}. "
                "Hint: every batch must have the same shape (only the last may have fewer samples)"
            )
        return out


def _check_shared_dims(inputs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]], where: str) -> None:
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
                    f"{where}: input {spec.name!r} has {dim}={size} (dim {axis} of {_shape_text(shapes[spec.name])}) "
                    f"but input {other!r} has {dim}={other_size} (dim {other_axis} of "
                    f"{_shape_text(shapes[other])}); the model declares both with the dimension {dim!r}, so they "
                    "must agree. Hint: feed both inputs the same size"
                )


def _hash_batch(digest: Any, batch: Mapping[str, np.ndarray], inputs: Sequence[InputSpec]) -> None:
    """Fold one validated batch (names, dtypes, shapes and bytes) into `digest`."""
    for spec in inputs:
        arr = np.ascontiguousarray(batch[spec.name])
        digest.update(json.dumps([spec.name, arr.dtype.str, list(arr.shape)]).encode())
        digest.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")


# --------------------------------------------------------------------------------------------------------------------
# Sources


class BatchSource:
    """An iterable of batches {input_name: array}, batch dim first, validated against the model's inputs.

    Iterating again gives the same batches in the same order; `manifest()` records where they came from.
    """

    kind = "batches"
    _noted_at_open = False  # dtype conversions already logged when the source was opened

    def __init__(self, inputs: Sequence[InputSpec], origin: str, path: str | None) -> None:
        self.inputs: tuple[InputSpec, ...] = tuple(inputs)
        self.origin = origin
        self.path = path
        self.batch_size: int | None = None
        self.num_samples = 0
        self.num_dropped = 0
        self.num_padded = 0
        self.max_batches: int | None = None
        self._content: tuple[int, str] | None = None  # (batches, sha256) of the last complete pass

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        check = _Checker(self.inputs, self.origin, note=not self._noted_at_open)
        digest = hashlib.sha256()
        count = 0
        raw_batches = self._raw_batches()
        try:
            for index, raw in enumerate(raw_batches):
                batch = check(raw, index)
                _hash_batch(digest, batch, self.inputs)
                yield batch
                count += 1
                if self.max_batches is not None and count >= self.max_batches:
                    break
        finally:
            close = getattr(raw_batches, "close", None)
            if close is not None:
                close()
        if count == 0:
            raise DataError(f"{self.origin}: no batches")
        self._content = (count, digest.hexdigest())

    def content_sha256(self) -> str:
        """sha256 of the batches themselves (what a model is fed), from the last complete pass or a new one."""
        if self._content is None:
            for _ in self:
                pass
        assert self._content is not None
        return self._content[1]

    def __len__(self) -> int:
        raise NotImplementedError

    def _raw_batches(self) -> Iterator[Any]:
        raise NotImplementedError

    def _digest(self) -> str:
        raise NotImplementedError

    def _batch_shapes(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def _extra_manifest(self) -> dict:
        return {}

    def manifest(self) -> dict:
        """Provenance, JSON-ready: what was read, a content digest, and how it was batched."""
        shapes = self._batch_shapes()
        info = {
            "kind": self.kind,
            "path": self.path,
            "sha256": self._digest(),
            "batch_size": self.batch_size,
            "num_batches": len(self),
            "num_samples": self.num_samples,
            "num_dropped": self.num_dropped,
            "num_padded": self.num_padded,
            "max_batches": self.max_batches,
            "batches_sha256": self.content_sha256(),
            "inputs": [
                {"name": s.name, "dtype": s.dtype.name, "batch_shape": shapes.get(s.name)} for s in self.inputs
            ],
        }
        info.update(self._extra_manifest())
        return info

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.origin}: {len(self)} batches of {self.batch_size}>"


@dataclass(frozen=True)
class _Plan:
    """Which samples go into which batch, decided once so every iteration repeats it."""

    batches: tuple[np.ndarray, ...]
    seed: int | None
    num_samples: int
    num_dropped: int
    num_padded: int


def _check_batching(batch_size: Any, last_batch: str, offset: Any, limit: Any, max_batches: Any = None) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    if last_batch not in LAST_BATCH_POLICIES:
        raise DataError(f"last_batch must be one of {', '.join(LAST_BATCH_POLICIES)}, got {last_batch!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise DataError(f"offset must be an int >= 0, got {offset!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"limit must be a positive int or None, got {limit!r}")
    _check_max_batches(max_batches)


def _check_max_batches(max_batches: Any) -> None:
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, (int, np.integer)) or max_batches < 1
    ):
        raise DataError(f"max_batches must be a positive int or None, got {max_batches!r}")


def _plan(
    available: int, origin: str, *, batch_size: int, shuffle: bool, seed: int | None, last_batch: str,
    limit: int | None, offset: int, max_batches: int | None = None, padding_is_data: bool = True,
) -> _Plan:
    """Select samples [offset, offset+limit), shuffle them with a recorded seed, cut them into batches, keep the
    first `max_batches`.

    A padded last batch repeats its last sample; unless the caller leaves the copies out (`padding_is_data=False`),
    that is a warning with the counts, and refused when the copies would outnumber the samples.
    """
    if available == 0:
        raise DataError(f"{origin}: no samples")
    if offset >= available:
        raise DataError(f"{origin}: offset={offset} but there are only {available} samples")
    stop = available if limit is None else min(available, offset + limit)
    if limit is not None and offset + limit > available:
        logger.warning(
            "%s: limit=%d from offset=%d asks for more than the %d samples there; using %d",
            origin, limit, offset, available, stop - offset,
        )
    order = np.arange(offset, stop, dtype=np.int64)
    if shuffle:
        if seed is None:
            seed = secrets.randbits(32)
            logger.info("%s: shuffling with seed %d (pass seed=%d to repeat this order)", origin, seed, seed)
        order = np.random.default_rng(seed).permutation(order)
    n = len(order)
    full, rest = divmod(n, batch_size)
    dropped = padded = 0
    if last_batch == "drop":
        if full == 0:
            raise DataError(
                f"{origin}: {n} samples but batch_size={batch_size}, so last_batch='drop' leaves no batch. "
                "Hint: lower batch_size, or use last_batch='keep' or 'pad'"
            )
        if rest:
            dropped = rest
            order = order[: full * batch_size]
            logger.warning(
                "%s: dropping the last %d of %d samples (not a full batch of %d); use last_batch='keep' or 'pad' "
                "to use them", origin, rest, n, batch_size,
            )
    elif last_batch == "pad" and rest:
        padded = batch_size - rest
        if padding_is_data and (max_batches is None or max_batches > full):
            if padded > n:
                raise DataError(
                    f"{origin}: batch_size={batch_size} but only {n} samples: last_batch='pad' would add {padded} "
                    f"copies of one sample, more than all the real samples, and they would move the scales. "
                    f"Hint: lower batch_size (e.g. {n}), or use last_batch='keep'"
                )
            logger.warning(
                "%s: padding the last batch with %d copies of sample %d (%d real samples in it, %d in all); the "
                "copies count in the histograms like real samples", origin, padded, int(order[-1]), rest, n,
            )
        order = np.concatenate([order, np.full(padded, order[-1], dtype=order.dtype)])
    batches = tuple(order[i : i + batch_size] for i in range(0, len(order), batch_size))
    if max_batches is not None and max_batches < len(batches):
        logger.info("%s: reading the first %d of %d batches (max_batches)", origin, max_batches, len(batches))
        batches = batches[:max_batches]
        return _Plan(batches, seed, sum(len(b) for b in batches), 0, 0)
    return _Plan(batches, seed, n - dropped, dropped, padded)


class _SampleSource(BatchSource):
    """A source of individual samples that trt-calib batches itself (npy, npz, arrays, images)."""

    _noted_at_open = True

    def __init__(
        self, inputs: Sequence[InputSpec], origin: str, path: str | None, available: int, *, batch_size: int,
        shuffle: bool, seed: int | None, last_batch: str, limit: int | None, offset: int,
        max_batches: int | None = None, padding_is_data: bool = True,
    ) -> None:
        super().__init__(inputs, origin, path)
        plan = _plan(
            available, origin, batch_size=batch_size, shuffle=shuffle, seed=seed, last_batch=last_batch,
            limit=limit, offset=offset, max_batches=max_batches, padding_is_data=padding_is_data,
        )
        self.max_batches = max_batches
        self._plan = plan
        self.available = available
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = plan.seed
        self.last_batch = last_batch
        self.limit = limit
        self.offset = offset
        self.num_samples = plan.num_samples
        self.num_dropped = plan.num_dropped
        self.num_padded = plan.num_padded

    def __len__(self) -> int:
        return len(self._plan.batches)

    def _check_plan_shapes(
        self, sample_shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype] | None
    ) -> None:
        """Fail at open, not mid-calibration, when the data cannot fit the model."""
        last = len(self._plan.batches[-1])
        for spec in self.inputs:
            for rows in {self.batch_size, last}:
                shape = (rows, *sample_shapes[spec.name])
                if len(shape) != spec.rank or any(
                    spec.static_dim(a) not in (None, shape[a]) for a in range(spec.rank)
                ):
                    hint = "Hint: samples are stacked along axis 0"
                    if spec.rank and spec.static_dim(0) is not None and len(shape) == spec.rank:
                        hint = (
                            f"Hint: the model has a fixed batch dim of {spec.static_dim(0)}; use that batch_size"
                            + (" and last_batch='drop' or 'pad'" if rows != self.batch_size else "")
                        )
                    raise DataError(
                        f"{self.origin}: input {spec.name!r} would be batched as {_shape_text(shape)} but the model "
                        f"declares {spec.shape_text()}. {hint}"
                    )
            if dtypes is not None and _check_dtype(dtypes[spec.name], spec, self.origin):
                logger.info(
                    "%s: input %r is %s and will be converted to the declared %s",
                    self.origin, spec.name, dtypes[spec.name], spec.dtype,
                )
        _check_shared_dims(
            self.inputs, {n: (self.batch_size, *shape) for n, shape in sample_shapes.items()}, self.origin
        )

    def _extra_manifest(self) -> dict:
        order = hashlib.sha256()
        for b in self._plan.batches:
            order.update(np.ascontiguousarray(b, dtype="<i8").tobytes())
        return {
            "shuffle": self.shuffle,
            "seed": self.seed,
            "last_batch": self.last_batch,
            "offset": self.offset,
            "limit": self.limit,
            "available_samples": self.available,
            "order_sha256": order.hexdigest(),
        }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


class _ArraySource(_SampleSource):
    """Samples along axis 0 of one array per input (npy, npz, in-memory)."""

    def __init__(
        self, inputs: Sequence[InputSpec], origin: str, path: str | None,
        headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], **batching: Any,
    ) -> None:
        counts = {name: shape[0] if shape else None for name, (shape, _) in headers.items()}
        for name, count in counts.items():
            if count is None:
                raise DataError(f"{origin}: {name!r} is a scalar; samples must be stacked along axis 0")
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{n!r}: {c}" for n, c in counts.items())
            raise DataError(f"{origin}: inputs have different numbers of samples ({listed})")
        available = next(iter(counts.values()))
        super().__init__(inputs, origin, path, available, **batching)
        self._sample_shapes = {n: tuple(int(d) for d in s[1:]) for n, (s, _) in headers.items()}
        self._check_plan_shapes(self._sample_shapes, {n: d for n, (_, d) in headers.items()})

    def _arrays(self) -> Mapping[str, np.ndarray]:
        raise NotImplementedError

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        arrays = self._arrays()
        for rows in self._plan.batches:
            yield {s.name: np.asarray(arrays[s.name][rows]) for s in self.inputs}

    def _batch_shapes(self) -> dict[str, list[int]]:
        return {n: [self.batch_size, *s] for n, s in self._sample_shapes.items()}


class _NpySource(_ArraySource):
    """An .npy file read row by row with plain reads: its size is checked against the header at open, and a file
    that shrinks while being read is a DataError (a memory map would end the process with SIGBUS)."""

    kind = "npy"

    def __init__(self, path: Path, inputs: Sequence[InputSpec], **batching: Any) -> None:
        origin = str(path)
        if len(inputs) != 1:
            raise DataError(
                f"{origin}: a .npy file feeds one input but the model has {len(inputs)} ({_input_names(inputs)}). "
                "Hint: use an .npz with one key per input"
            )
        self._file = path
        shape, dtype, self._fortran, self._data_offset = _npy_layout(path)
        super().__init__(inputs, origin, str(path), {inputs[0].name: (shape, dtype)}, **batching)
        self._dtype = dtype
        self._row_shape = tuple(shape[1:])

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        name = self.inputs[0].name
        if self._fortran:  # rows are not contiguous on disk: read the whole array once per pass
            arrays = self._arrays()
            for rows in self._plan.batches:
                yield {name: np.asarray(arrays[name][rows])}
            return
        try:
            f = open(self._file, "rb")
        except OSError as exc:
            raise DataError(f"{self.origin}: cannot read ({exc.strerror or exc})") from None
        with f:
            for rows in self._plan.batches:
                yield {name: self._read_rows(f, rows)}

    def _read_rows(self, f: Any, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self._row_shape), dtype=self._dtype)
        row_bytes = out[0].nbytes if len(out) else 0
        flat = out.reshape(len(rows), -1).view(np.uint8) if out.size else None
        if flat is None:
            return out
        consecutive = len(rows) > 1 and bool(np.all(np.diff(rows) == 1))
        spans = [(int(rows[0]), slice(0, len(rows)))] if consecutive else [(int(r), slice(k, k + 1)) for k, r in
                                                                              enumerate(rows)]
        for first, where in spans:
            want = (where.stop - where.start) * row_bytes
            f.seek(self._data_offset + first * row_bytes)
            got = f.readinto(memoryview(flat[where]).cast("B"))
            if got != want:
                raise DataError(
                    f"{self.origin}: ended {want - (got or 0)} bytes early while reading sample {first}: the file was "
                    "truncated or replaced while being read. Hint: do not change calibration data during a run"
                )
        return out

    def _arrays(self) -> Mapping[str, np.ndarray]:
        try:
            arr = np.load(self._file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{self.origin}: cannot read ({exc})") from None
        return {self.inputs[0].name: arr}

    def _digest(self) -> str:
        return _file_sha256(self._file)


def _read_npy_header(f: Any, origin: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from an .npy header without reading the data; None for header versions read only whole."""
    layout = _read_npy_layout(f, origin)
    return None if layout is None else (layout[0], layout[1])


def _read_npy_layout(f: Any, origin: str) -> tuple[tuple[int, ...], np.dtype, bool] | None:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
    except (ValueError, EOFError, OSError) as exc:
        raise DataError(f"{origin}: not a readable .npy array ({exc})") from None
    return tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of an .npy file whose size matches its header."""
    try:
        with open(path, "rb") as f:
            layout = _read_npy_layout(f, str(path))
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if layout is None:
        raise DataError(f"{path}: unsupported .npy format version. Hint: save it with numpy.save")
    shape, dtype, fortran = layout
    if dtype.hasobject:
        raise DataError(f"{path}: holds Python objects (dtype {dtype}), not numbers. Hint: save a numeric array")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - offset < need:
        raise DataError(
            f"{path}: truncated: the header declares {_shape_text(shape)} {dtype} ({need} bytes of data) but the "
            f"file holds {max(size - offset, 0)}. Hint: save it again"
        )
    return shape, dtype, fortran, offset


class _NpzSource(_ArraySource):
    kind = "npz"

    def __init__(self, path: Path, inputs: Sequence[InputSpec], **batching: Any) -> None:
        origin = str(path)
        self._file = path
        headers = {}
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if m.endswith(".npy")]
                keys = [m[: -len(".npy")] for m in members]
                names = [s.name for s in inputs]
                missing = [n for n in names if n not in keys]
                extra = [k for k in keys if k not in names]
                if missing or extra:
                    what = []
                    if missing:
                        what.append(f"missing {', '.join(map(repr, missing))}")
                    if extra:
                        what.append(f"keys that are not model inputs: {', '.join(map(repr, extra))}")
                    raise DataError(
                        f"{origin}: {'; '.join(what)}. Note: the file has keys {', '.join(map(repr, keys)) or 'none'}. "
                        f"Hint: keys must be exactly the model's inputs: {_input_names(inputs)}"
                    )
                for key, member in zip(keys, members):
                    with zf.open(member) as f:
                        headers[key] = _read_npy_header(f, f"{origin}[{key!r}]")
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{origin}: not a readable .npz archive ({exc})") from None
        if any(h is None for h in headers.values()):
            with np.load(path, allow_pickle=False) as z:
                headers = {k: (z[k].shape, z[k].dtype) for k in headers}
        super().__init__(inputs, origin, str(path), {s.name: headers[s.name] for s in inputs}, **batching)

    def _arrays(self) -> Mapping[str, np.ndarray]:
        # An npz member cannot be memory-mapped in general (it may be compressed): each key is read once per pass.
        import zlib

        try:
            with np.load(self._file, allow_pickle=False) as z:
                return {s.name: z[s.name] for s in self.inputs}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{self.origin}: cannot read ({type(exc).__name__}: {exc})") from None

    def _digest(self) -> str:
        return _file_sha256(self._file)

    def _extra_manifest(self) -> dict:
        return {**super()._extra_manifest(), "keys": [s.name for s in self.inputs]}


class _InMemorySource(_ArraySource):
    kind = "arrays"

    def __init__(self, arrays: Mapping[str, np.ndarray], inputs: Sequence[InputSpec], **batching: Any) -> None:
        self._data = dict(arrays)
        super().__init__(
            inputs, "arrays", None, {n: (a.shape, a.dtype) for n, a in self._data.items()}, **batching
        )

    def _arrays(self) -> Mapping[str, np.ndarray]:
        return self._data

    def _digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self._data):
            a = np.ascontiguousarray(self._data[name])
            h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Image folders


def _list_images(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc})") from None
    images = [
        p for p in entries
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not images:
        subdirs = [p.name for p in entries if p.is_dir()]
        hint = (
            f" Note: subfolders ({', '.join(subdirs[:3])}{', ...' if len(subdirs) > 3 else ''}) are not searched. "
            "Hint: point at a folder that holds the images"
            if subdirs
            else f" Hint: supported extensions are {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
        raise DataError(f"{folder}: no images in this folder.{hint}")
    return images


class _ImageSource(_SampleSource):
    """A folder of images, decoded with Pillow one batch at a time."""

    kind = "images"

    def __init__(
        self, folder: Path, inputs: Sequence[InputSpec], preprocess: Preprocess | None, **batching: Any
    ) -> None:
        origin = str(folder)
        if len(inputs) != 1:
            raise DataError(
                f"{origin}: an image folder feeds one input but the model has {len(inputs)} "
                f"({_input_names(inputs)}). Hint: prepare an .npz with one key per input"
            )
        pre = preprocess or Preprocess()
        spec = inputs[0]
        if spec.rank != 4:
            raise DataError(
                f"{origin}: input {spec.name!r} has shape {spec.shape_text()}, not an image batch "
                f"({pre.layout}). Hint: images need a rank-4 input"
            )
        c_axis, h_axis, w_axis = (1, 2, 3) if pre.layout == "NCHW" else (3, 1, 2)
        channels = spec.static_dim(c_axis)
        if channels is None:
            channels = 3
            logger.info("%s: input %r has a dynamic channel dim; feeding 3 channels", origin, spec.name)
        if channels not in (1, 3):
            other = "NHWC" if pre.layout == "NCHW" else "NCHW"
            raise DataError(
                f"{origin}: input {spec.name!r} {spec.shape_text()} has {channels} channels in layout {pre.layout}; "
                f"images give 1 (grayscale) or 3. Hint: is the layout {other}? (preprocess layout={other})"
            )
        size = pre.size
        declared = (spec.static_dim(h_axis), spec.static_dim(w_axis))
        if size is None:
            if None in declared:
                raise DataError(
                    f"{origin}: input {spec.name!r} {spec.shape_text()} has a dynamic height or width. "
                    "Hint: give the image size, e.g. preprocess size=224 or size=HxW"
                )
            size = declared
        elif any(d is not None and d != s for d, s in zip(declared, size)):
            raise DataError(
                f"{origin}: preprocess size={size[0]}x{size[1]} does not match input {spec.name!r} "
                f"{spec.shape_text()}"
            )
        if pre.resize is not None and pre.resize < min(size):
            raise DataError(
                f"{origin}: preprocess resize={pre.resize} is smaller than the crop size {size[0]}x{size[1]}. "
                "Hint: resize is the shorter side before the centre crop and must be at least the crop size"
            )
        for key in ("mean", "std"):
            if len(getattr(pre, key)) not in (1, channels):
                raise DataError(
                    f"{origin}: preprocess {key} has {len(getattr(pre, key))} values but the input has "
                    f"{channels} channel(s)"
                )
        if spec.dtype.kind in "iu":
            if pre.scale != 1.0 or any(pre.mean) or any(v != 1.0 for v in pre.std):
                raise DataError(
                    f"{origin}: input {spec.name!r} is {spec.dtype}, so pixels are fed as they are; "
                    "scale, mean and std cannot apply. Hint: preprocess scale=1 (and no mean/std)"
                )
        elif spec.dtype.kind != "f":
            raise DataError(f"{origin}: input {spec.name!r} is {spec.dtype}; images feed float or integer inputs")
        self._files = _list_images(folder)
        super().__init__(inputs, origin, str(folder), len(self._files), **batching)
        self.preprocess = pre
        self.channels = channels
        self.size = size
        self._check_plan_shapes({spec.name: tuple(self._batch_shapes()[spec.name][1:])}, None)
        self._mode = "L" if channels == 1 else "RGB"
        self._work = np.dtype(np.float64 if spec.dtype == np.float64 else np.float32)

    def _selected(self) -> list[Path]:
        rows = sorted({int(i) for b in self._plan.batches for i in b})
        return [self._files[i] for i in rows]

    def _decode(self, path: Path) -> np.ndarray:
        """One image as (H, W, C) uint8 in the model's channel order, resized and cropped."""
        image_mod = require("PIL.Image", purpose="reading image folders")
        resampling = getattr(image_mod, "Resampling", image_mod).BILINEAR
        pre, (h, w) = self.preprocess, self.size
        try:
            # From bytes, not the path: Pillow memory-maps some formats, and a file that shrinks while mapped
            # ends the process with SIGBUS.
            with image_mod.open(io.BytesIO(path.read_bytes())) as im:
                im = im.convert(self._mode)
                if pre.resize is None:
                    im = im.resize((w, h), resampling)
                else:
                    iw, ih = im.size
                    short, long = (iw, ih) if iw <= ih else (ih, iw)
                    new_long = int(pre.resize * long / short)
                    nw, nh = (pre.resize, new_long) if iw <= ih else (new_long, pre.resize)
                    if (nw, nh) != (iw, ih):
                        im = im.resize((nw, nh), resampling)
                    if nh < h or nw < w:
                        raise DataError(
                            f"{path}: {iw}x{ih} resized to {nw}x{nh} is smaller than the crop {w}x{h}. "
                            "Hint: raise preprocess resize"
                        )
                    top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
                    im = im.crop((left, top, left + w, top + h))
                pixels = np.asarray(im, dtype=np.uint8)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode the image ({exc})") from None
        except Exception as exc:  # Pillow raises its own types, e.g. DecompressionBombError
            raise DataError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        elif pre.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        return pixels

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        spec, pre = self.inputs[0], self.preprocess
        h, w = self.size
        mean = np.asarray(pre.mean, dtype=self._work)
        std = np.asarray(pre.std, dtype=self._work)
        for rows in self._plan.batches:
            decoded: dict[int, np.ndarray] = {}
            pixels = np.empty((len(rows), h, w, self.channels), dtype=np.uint8)
            for k, i in enumerate(rows):
                i = int(i)
                if i not in decoded:
                    decoded[i] = self._decode(self._files[i])
                pixels[k] = decoded[i]
            if spec.dtype.kind == "f":
                x = pixels.astype(self._work)
                x *= self._work.type(pre.scale)
                x -= mean
                x /= std
            else:
                x = pixels
            if pre.layout == "NCHW":
                x = x.transpose(0, 3, 1, 2)
            yield {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}

    def _batch_shapes(self) -> dict[str, list[int]]:
        h, w = self.size
        dims = [h, w, self.channels] if self.preprocess.layout == "NHWC" else [self.channels, h, w]
        return {self.inputs[0].name: [self.batch_size, *dims]}

    def _digest(self) -> str:
        h = hashlib.sha256()
        for path in self._selected():
            entry = [path.name, path.stat().st_size, _file_sha256(path)]
            h.update(json.dumps(entry).encode() + b"\n")
        return h.hexdigest()

    def _extra_manifest(self) -> dict:
        return {
            **super()._extra_manifest(),
            "preprocess": self.preprocess.to_dict(),
            "image_size": list(self.size),
            "image_mode": self._mode,
            "interpolation": "bilinear",
            "files": [p.name for p in self._selected()],
        }


# --------------------------------------------------------------------------------------------------------------------
# Generator scripts


def _split_script(text: str) -> tuple[Path, str]:
    """"data.py" or "data.py:func"; a drive letter ("C:\\...") is not taken for a function name."""
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith(".py") and tail.isidentifier():
        return Path(head), tail
    return Path(text), _DEFAULT_FUNCTION


def data_file(path: str | os.PathLike) -> Path:
    """The file or folder a --data value reads: a data script's FILE.py of FILE.py:function, else the path itself."""
    script, _ = _split_script(os.fspath(path))
    return script if script.suffix.lower() == ".py" else Path(path)


def _load_function(path: Path, name: str) -> Callable[[], Any]:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    module_name = f"_trt_calib_data_script_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(module_name, None)
        raise DataError(
            f"{path}: the data script called sys.exit({exc.code!r}) while being imported; it must define a "
            "function that yields batches, not exit. Hint: guard script code with `if __name__ == '__main__':`"
        ) from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise DataError(f"{path}: importing the data script failed ({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise DataError(
            f"{path}: has no function {name!r}. Note: it defines {', '.join(found) or 'no functions'}. "
            f"Hint: name it with {path}:FUNCTION"
        )
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise DataError(f"{path}: {name}{inspect.signature(fn)} must be callable without arguments") from None
    except ValueError:
        pass  # no signature available (builtins); try calling it
    return fn


class _GeneratorSource(BatchSource):
    """Batches exactly as a user's data script yields them (Polygraphy-style `load_data()`)."""

    kind = "generator"

    def __init__(
        self, path: Path, function: str, inputs: Sequence[InputSpec], max_batches: int | None = None
    ) -> None:
        super().__init__(inputs, f"{path}:{function}", str(path))
        self.max_batches = max_batches
        self._file = path
        self.function = function
        self._fn = _load_function(path, function)
        self._stats: dict | None = None

    def _raw_batches(self) -> Iterator[Any]:
        try:
            items = self._fn()
            it = iter(items)
        except TrtCalibError:
            raise
        except SystemExit as exc:
            raise DataError(
                f"{self.origin}: called sys.exit({exc.code!r}) instead of returning batches; no batch was made. "
                "Hint: a data script ends its data by returning, never by exiting"
            ) from None
        except Exception as exc:
            raise DataError(
                f"{self.origin}: calling it failed ({type(exc).__name__}: {exc}). "
                "Hint: it must return an iterable of dicts {input_name: array}"
            ) from exc
        index = 0
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except TrtCalibError:
                raise
            except SystemExit as exc:
                raise DataError(
                    f"{self.origin}: called sys.exit({exc.code!r}) while making batch {index}, after {index} "
                    "batch(es); calibrating on part of the data would give other scales. Hint: a data script ends "
                    "its data by returning, never by exiting"
                ) from None
            except Exception as exc:
                raise DataError(
                    f"{self.origin}: raised {type(exc).__name__} while making batch {index}: {exc}"
                ) from exc
            yield item
            index += 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        batches = samples = 0
        shapes: dict[str, list[int]] = {}
        for batch in super().__iter__():
            if not shapes:
                shapes = {n: list(a.shape) for n, a in batch.items()}
            first = batch[self.inputs[0].name]
            samples += first.shape[0] if first.ndim else 1
            batches += 1
            yield batch
        self._stats = {"batches": batches, "samples": samples, "shapes": shapes}

    def _scan(self) -> dict:
        """Counts need one pass through the user's generator; it is made once, on demand."""
        if self._stats is None:
            for _ in self:
                pass
        assert self._stats is not None
        return self._stats

    def __len__(self) -> int:
        return self._scan()["batches"]

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self._scan()["samples"]

    @num_samples.setter
    def num_samples(self, value: int) -> None:
        pass  # counted from the batches the script yields, never set

    def _batch_shapes(self) -> dict[str, list[int]]:
        return self._scan()["shapes"]

    def _digest(self) -> str:
        return _file_sha256(self._file)

    def _extra_manifest(self) -> dict:
        shapes = self._scan()["shapes"]
        first = shapes.get(self.inputs[0].name) or [None]
        return {
            "function": self.function,
            "batch_size": first[0],
            "shuffle": False,
            "seed": None,
            "last_batch": "as yielded",
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.origin}>"


# --------------------------------------------------------------------------------------------------------------------
# Entry points


def open_source(
    path: str | os.PathLike | None,
    inputs: Sequence[InputSpec],
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int | None = None,
    last_batch: str = "drop",
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    offset: int = 0,
    max_batches: int | None = None,
    padding_is_data: bool = True,
) -> BatchSource:
    """Open calibration data by path: .npy, .npz (keys = input names), a folder of images, or a data script .py[:func].

    Samples [offset, offset+limit) are selected, then shuffled (with `seed`), then batched per `last_batch`; at most
    `max_batches` batches are read (a data script's generator is not asked for more). A padded last batch is
    warned about with its counts (refused when the copies outnumber the samples) unless `padding_is_data=False`
    says the caller leaves the copies out.
    """
    inputs = _check_inputs(inputs)
    _check_max_batches(max_batches)
    if path is None:
        raise DataError(
            "no calibration data given. Hint: pass an .npy, an .npz keyed by input name, a folder of images, "
            "or a data script.py[:function]"
        )
    text = os.fspath(path)
    script, function = _split_script(text)
    if script.suffix.lower() == ".py":
        if not script.is_file():
            raise DataError(f"{script}: no such data script")
        ignored = {
            "batch_size": batch_size != 1, "shuffle": bool(shuffle), "seed": seed is not None,
            "last_batch": last_batch != "drop", "limit": limit is not None, "offset": offset != 0,
            "preprocess": preprocess is not None and preprocess != Preprocess(),
        }
        given = [k for k, v in ignored.items() if v]
        if given:
            raise DataError(
                f"{script}: a data script yields ready batches, so {', '.join(given)} cannot apply. "
                "Hint: batch, order and select the data inside the script"
            )
        return _GeneratorSource(script, function, inputs, max_batches)
    _check_batching(batch_size, last_batch, offset, limit)
    batching = dict(
        batch_size=int(batch_size), shuffle=bool(shuffle), seed=seed, last_batch=last_batch, limit=limit,
        offset=int(offset), max_batches=max_batches, padding_is_data=bool(padding_is_data),
    )
    p = Path(text)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        return _ImageSource(p, inputs, preprocess, **batching)
    if preprocess is not None and preprocess != Preprocess():
        raise DataError(f"{p}: preprocessing applies to image folders only. Hint: store the data preprocessed")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _NpySource(p, inputs, **batching)
    if suffix == ".npz":
        return _NpzSource(p, inputs, **batching)
    raise DataError(
        f"{p}: unsupported calibration data {suffix or '(no extension)'!r}. "
        "Hint: use .npy, .npz (keys = input names), a folder of images, or a data script .py[:function]"
    )


def from_arrays(
    arrays: Mapping[str, np.ndarray] | np.ndarray,
    inputs: Sequence[InputSpec],
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int | None = None,
    last_batch: str = "drop",
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> BatchSource:
    """In-memory samples (stacked along axis 0), batched like `open_source`; a bare array feeds a single-input model.

    The arrays are referenced, not copied: do not change them while the source is in use.
    """
    inputs = _check_inputs(inputs)
    _check_batching(batch_size, last_batch, offset, limit)
    if preprocess is not None and preprocess != Preprocess():
        raise DataError("arrays: preprocessing applies to image folders only. Hint: pass preprocessed arrays")
    if not isinstance(arrays, Mapping):
        if len(inputs) != 1:
            raise DataError(
                f"arrays: got one array but the model has {len(inputs)} inputs ({_input_names(inputs)}). "
                "Hint: pass a dict {input_name: array}"
            )
        arrays = {inputs[0].name: arrays}
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(str(k) for k in arrays if k not in names)
    if missing or extra:
        raise DataError(
            f"arrays: missing {missing or 'none'}, unexpected {extra or 'none'}. "
            f"Hint: keys must be exactly the model's inputs: {_input_names(inputs)}"
        )
    data = {}
    for n in names:
        try:
            data[n] = np.asarray(arrays[n])
        except (ValueError, TypeError) as exc:
            raise DataError(f"arrays: input {n!r} cannot be read as an array ({exc})") from None
    return _InMemorySource(
        data, inputs, batch_size=int(batch_size), shuffle=bool(shuffle), seed=seed, last_batch=last_batch,
        limit=limit, offset=int(offset),
    )


def iter_batches(batches: Any, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
    """Validated batches from what a Python caller passes: a BatchSource, an iterable of dicts, or of arrays.

    Each batch is checked (names, numeric dtype, rank and static dims, same shape as batch 0, finite) and returned
    C-contiguous in the declared dtype.
    """
    inputs = _check_inputs(inputs)
    if isinstance(batches, BatchSource) and batches.inputs == inputs:
        yield from batches
        return
    if isinstance(batches, np.ndarray):
        raise DataError(
            "batches: got one array, not an iterable of batches. "
            "Hint: from_arrays(array, inputs, batch_size=...) batches stacked samples"
        )
    if isinstance(batches, Mapping):
        raise DataError("batches: got one dict, not an iterable of batches. Hint: pass [batch] or use from_arrays")
    try:
        it = iter(batches)
    except TypeError:
        raise DataError(f"batches: {type(batches).__name__} is not iterable") from None
    check = _Checker(inputs, "batches")
    count = 0
    for index, item in enumerate(it):
        yield check(item, index)
        count += 1
    if count == 0:
        raise DataError("batches: no batches")


def _check_inputs(inputs: Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    inputs = tuple(inputs)
    if not inputs:
        raise DataError("the model has no inputs to feed")
    if not all(isinstance(s, InputSpec) for s in inputs):
        raise TypeError("inputs must be InputSpec objects")
    names = [s.name for s in inputs]
    if len(set(names)) != len(names):
        raise DataError(f"the model declares duplicate input names: {names}")
    return inputs
