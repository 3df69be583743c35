"""The batch source every reader is: batching plans (batch size, last-batch policy, offset, limit, shuffling with a
recorded seed), iteration with checks, and the manifest that records all of it."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .inputs import InputSpec, Checker, check_dtype, check_shared_dims, hash_batch, format_shape

logger = logging.getLogger("trt_calib.ort.data")

LAST_BATCH_POLICIES = ("drop", "keep", "pad")
_HASH_BLOCK = 1 << 20
#: The share of the available memory a command may fill with batches it must hold all at once (sharded calibration,
#: stability, sensitivity's held-out data); `held_batches` refuses more.
HOLD_FRACTION = 0.5


def held_batches(batches: Any, *, origin: str, purpose: str, limit_mb: float | None = None) -> Iterator[Any]:
    """`batches`, for a caller that keeps every one in memory: once they add up to more than `limit_mb` (default:
    `HOLD_FRACTION` of the memory available now) the source is not read further and a one-line DataError says why.

    A data script's generator may never end; reading it into memory would grow until the machine gave out (5.7 GB
    in 14 s, then a MemoryError blamed on the script). No command holds an unbounded source.
    """
    from ..._util import available_memory_mb

    if limit_mb is None:
        available = available_memory_mb()
        limit_mb = float("inf") if available is None else HOLD_FRACTION * available
    held = 0
    it = iter(batches)
    for count, batch in enumerate(it, start=1):
        held += sum(int(np.asarray(v).nbytes) for v in (batch.values() if isinstance(batch, Mapping) else [batch]))
        if held > limit_mb * 2**20:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the generator's own cleanup runs now, not at some later collection
            raise DataError(
                f"{origin}: {count} batches ({held / 2**20:.0f} MB) read and the data has not ended; {purpose} holds "
                f"every batch in memory, and {limit_mb:.0f} MB is its share of this machine's. Hint: --max-batches N "
                "reads at most N batches (a data script's generator is not asked for more)"
            )
        yield batch


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
        check = Checker(self.inputs, self.origin, note=not self._noted_at_open)
        digest = hashlib.sha256()
        count = 0
        raw_batches = self._raw_batches()
        try:
            for index, raw in enumerate(raw_batches):
                batch = check(raw, index)
                hash_batch(digest, batch, self.inputs)
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
                {"name": s.name, "dtype": s.dtype.name, "batch_shape": shapes.get(s.name), "batch_axis": s.batch_axis}
                for s in self.inputs
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


def check_batching(batch_size: Any, last_batch: str, offset: Any, limit: Any, max_batches: Any = None) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    if last_batch not in LAST_BATCH_POLICIES:
        raise DataError(f"last_batch must be one of {', '.join(LAST_BATCH_POLICIES)}, got {last_batch!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise DataError(f"offset must be an int >= 0, got {offset!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"limit must be a positive int or None, got {limit!r}")
    check_max_batches(max_batches)


def check_max_batches(max_batches: Any) -> None:
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


class SampleSource(BatchSource):
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
        """Fail at open, not mid-calibration, when the data cannot fit the model.

        `sample_shapes` are the shapes of one sample (the batch axis taken out), or the whole array of an input that
        is not batched.
        """
        last = len(self._plan.batches[-1])
        for spec in self.inputs:
            for rows in {self.batch_size, last}:
                shape = spec.batched_shape(rows, sample_shapes[spec.name])
                if len(shape) != spec.rank or any(
                    spec.static_dim(a) not in (None, shape[a]) for a in range(spec.rank)
                ):
                    raise DataError(
                        f"{self.origin}: input {spec.name!r} would be batched as {format_shape(shape)} but the model "
                        f"declares {spec.shape_text()}. {_plan_hint(spec, shape, rows != self.batch_size)}"
                    )
            if dtypes is not None and check_dtype(dtypes[spec.name], spec, self.origin):
                logger.info(
                    "%s: input %r is %s and will be converted to the declared %s",
                    self.origin, spec.name, dtypes[spec.name], spec.dtype,
                )
        check_shared_dims(
            self.inputs, {s.name: s.batched_shape(self.batch_size, sample_shapes[s.name]) for s in self.inputs},
            self.origin,
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


def _plan_hint(spec: InputSpec, shape: tuple[int, ...], last: bool) -> str:
    """Why batching cannot fit `spec`, and what to change."""
    axis = spec.batch_axis
    if axis is None:
        return f"Hint: input {spec.name!r} is not batched (rank 0): store one value of shape {spec.shape_text()}"
    if len(shape) != spec.rank:
        return (f"Hint: samples of {spec.name!r} are stacked along its batch axis {axis}; store them so, or say where "
                f"the batch axis is with --batch-axis {spec.name}:AXIS")
    fixed = spec.static_dim(axis)
    wrong = [a for a in range(spec.rank) if a != axis and spec.static_dim(a) not in (None, shape[a])]
    if fixed is not None and not wrong:
        where = "" if axis == 0 else f" (axis {axis} of {spec.name!r})"
        return (f"Hint: the model has a fixed batch dim of {fixed}{where}; use that batch_size"
                + (" and last_batch='drop' or 'pad'" if last else ""))
    return (f"Hint: samples of {spec.name!r} are stacked along axis {axis} (its batch axis); if the batch axis is "
            f"another one, say so with --batch-axis {spec.name}:AXIS")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
