"""Calibration batch sources: npy, npz, image folders and generator scripts, batched reproducibly.

The same source feeds the CPU collection (onnxruntime) and the TensorRT calibrator, so a cross-check compares like
with like. TensorRT updates its histograms once per batch, so batch size, order and the last-batch policy are explicit
and recorded in `BatchSource.manifest()`. Data is read batch by batch: images are decoded per batch and `.npy` files
are read row by row (never memory-mapped: a file that shrinks while mapped kills the process with SIGBUS).
`manifest()` also records a sha256 of the batches themselves, so changed files behind a data script are noticed.

The readers live in the modules of this package (inputs, preprocess, source, arrays, images, scripts); this module
opens the right one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import check_regular_file
from ...errors import DataError
from .arrays import InMemorySource, NpySource, NpzSource
from .images import IMAGE_EXTENSIONS, ImageSource
from .inputs import InputSpec, Checker, infer_batch_axes, input_names_of, set_batch_axes
from .preprocess import Preprocess
from .scripts import GeneratorSource, split_script, data_file, end_user_processes, user_code
from .source import HOLD_FRACTION, LAST_BATCH_POLICIES, BatchSource, check_batching, check_max_batches, held_batches

__all__ = [
    "InputSpec",
    "infer_batch_axes",
    "set_batch_axes",
    "Preprocess",
    "BatchSource",
    "open_source",
    "data_file",
    "user_code",
    "end_user_processes",
    "from_arrays",
    "iter_batches",
    "IMAGE_EXTENSIONS",
    "LAST_BATCH_POLICIES",
    "HOLD_FRACTION",
    "held_batches",
]

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
    check_max_batches(max_batches)
    if path is None:
        raise DataError(
            "no calibration data given. Hint: pass an .npy, an .npz keyed by input name, a folder of images, "
            "or a data script.py[:function]"
        )
    text = os.fspath(path)
    script, function = split_script(text)
    if script.suffix.lower() == ".py":
        if not script.is_file():
            check_regular_file(script, kind="data script", error=DataError)  # names a FIFO, a device, a folder
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
        return GeneratorSource(script, function, inputs, max_batches)
    check_batching(batch_size, last_batch, offset, limit)
    batching = dict(
        batch_size=int(batch_size), shuffle=bool(shuffle), seed=seed, last_batch=last_batch, limit=limit,
        offset=int(offset), max_batches=max_batches, padding_is_data=bool(padding_is_data),
    )
    p = Path(text)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        return ImageSource(p, inputs, preprocess, **batching)
    check_regular_file(p, kind="data file", error=DataError)  # a FIFO would block, a device never end
    if preprocess is not None and preprocess != Preprocess():
        raise DataError(f"{p}: preprocessing applies to image folders only. Hint: store the data preprocessed")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return NpySource(p, inputs, **batching)
    if suffix == ".npz":
        return NpzSource(p, inputs, **batching)
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
    check_batching(batch_size, last_batch, offset, limit)
    if preprocess is not None and preprocess != Preprocess():
        raise DataError("arrays: preprocessing applies to image folders only. Hint: pass preprocessed arrays")
    if not isinstance(arrays, Mapping):
        if len(inputs) != 1:
            raise DataError(
                f"arrays: got one array but the model has {len(inputs)} inputs ({input_names_of(inputs)}). "
                "Hint: pass a dict {input_name: array}"
            )
        arrays = {inputs[0].name: arrays}
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(str(k) for k in arrays if k not in names)
    if missing or extra:
        raise DataError(
            f"arrays: missing {missing or 'none'}, unexpected {extra or 'none'}. "
            f"Hint: keys must be exactly the model's inputs: {input_names_of(inputs)}"
        )
    data = {}
    for n in names:
        try:
            data[n] = np.asarray(arrays[n])
        except (ValueError, TypeError) as exc:
            raise DataError(f"arrays: input {n!r} cannot be read as an array ({exc})") from None
    return InMemorySource(
        data, inputs, batch_size=int(batch_size), shuffle=bool(shuffle), seed=seed, last_batch=last_batch,
        limit=limit, offset=int(offset),
    )


def iter_batches(batches: Any, inputs: Sequence[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
    """Validated batches from what a Python caller passes: a BatchSource, an iterable of dicts, or of arrays.

    Each batch is checked (names, numeric dtype, rank and static dims, same shape as batch 0, finite) and returned
    C-contiguous in the declared dtype.
    """
    inputs = _check_inputs(inputs)
    if isinstance(batches, BatchSource) and len(batches.inputs) == len(inputs) and all(
        a.same_input(b) for a, b in zip(batches.inputs, inputs)
    ):
        yield from batches  # checked by the source, along the batch axes it was opened with
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
    check = Checker(inputs, "batches")
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
