"""Arrays as batch sources: .npy (read row by row, never memory-mapped), .npz (keys are input names, ModelOpt's
format) and in-memory arrays."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .inputs import InputSpec, input_names_of, format_shape
from .source import SampleSource, file_sha256


class _ArraySource(SampleSource):
    """Samples along each input's batch axis, one array per input (npy, npz, in-memory).

    An input that is not batched (rank 0, silero's `sr`) is stored either as its one value, fed to every batch, or
    as one value per sample (an extra leading dim): each batch then takes its samples' value, which must be one
    (data holding both 16 kHz and 8 kHz chunks, sorted so that no batch mixes them).
    """

    def __init__(
        self, inputs: Sequence[InputSpec], origin: str, path: str | None,
        headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], **batching: Any,
    ) -> None:
        specs = {s.name: s for s in inputs}
        counts: dict[str, int] = {}
        self._per_sample: set[str] = set()  # unbatched inputs stored with one value per sample
        for name, (shape, _) in headers.items():
            spec = specs[name]
            if spec.batch_axis is None:
                if len(shape) == spec.rank + 1:
                    self._per_sample.add(name)
                    counts[name] = int(shape[0])
                continue  # else fed whole to every batch
            if len(shape) <= spec.batch_axis:
                where = "axis 0" if spec.batch_axis == 0 else f"axis {spec.batch_axis} (its batch axis)"
                what = "a scalar" if not shape else f"of shape {format_shape(shape)}"
                raise DataError(f"{origin}: {name!r} is {what}; samples must be stacked along {where}")
            counts[name] = int(shape[spec.batch_axis])
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{n!r}: {c} along axis {specs[n].batch_axis}" for n, c in counts.items())
            raise DataError(f"{origin}: inputs have different numbers of samples ({listed}). "
                            f"{_axis_hint([specs[n] for n in counts])}")
        if not counts:
            raise DataError(f"{origin}: no input is batched (all are rank 0), so there are no samples to batch. "
                            "Hint: use a data script that yields the batches")
        available = next(iter(counts.values()))
        super().__init__(inputs, origin, path, available, **batching)
        self._sample_shapes = {n: tuple(int(d) for d in s[1:]) if n in self._per_sample else specs[n].sample_shape(s)
                               for n, (s, _) in headers.items()}
        self._check_plan_shapes(self._sample_shapes, {n: d for n, (_, d) in headers.items()})

    def _arrays(self) -> Mapping[str, np.ndarray]:
        raise NotImplementedError

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        arrays = self._arrays()
        for index, rows in enumerate(self._plan.batches):
            batch = {}
            for s in self.inputs:
                if s.name in self._per_sample:
                    batch[s.name] = self._one_value(arrays[s.name], rows, s, index)
                else:
                    batch[s.name] = take_rows(arrays[s.name], rows, s)
            yield batch

    def _one_value(self, array: np.ndarray, rows: np.ndarray, spec: InputSpec, index: int) -> np.ndarray:
        """The value an unbatched input stored per sample has for this batch's samples: it must be one."""
        values = np.asarray(array[rows])
        if len(values) and not (values == values[:1]).all():
            found = np.unique(values.reshape(len(values), -1), axis=0)[:3]
            shown = ", ".join(str(v[0]) if v.size == 1 else str(v.tolist()) for v in found)
            raise DataError(
                f"{self.origin}, batch {index}: input {spec.name!r} {spec.shape_text()} takes one value per batch, but "
                f"the batch's samples hold {shown}. Hint: order the samples so that each batch holds one value (no "
                "--shuffle): the samples of each value together, in groups the batch size divides"
            )
        return values[0]

    def _batch_shapes(self) -> dict[str, list[int]]:
        specs = {s.name: s for s in self.inputs}
        return {n: list(specs[n].batched_shape(self.batch_size, s)) for n, s in self._sample_shapes.items()}


def _axis_hint(specs: Sequence[InputSpec]) -> str:
    """What to do when inputs disagree on their sample counts: name the inputs whose batch axis the model fixes."""
    for spec in specs:
        axis = spec.batch_axis
        if axis is not None and spec.static_dim(axis) is not None:
            free = [a for a in range(spec.rank) if spec.static_dim(a) is None]
            fix = f"--batch-axis {spec.name}:{free[0]}" if len(free) == 1 else f"--batch-axis {spec.name}:AXIS"
            return (f"Hint: the model fixes axis {axis} of {spec.name!r} {spec.shape_text()} to "
                    f"{spec.static_dim(axis)}, so it is probably not its batch axis; say which is with {fix}")
    return ("Hint: samples are stacked along each input's batch axis; give every input the same number, or say "
            "where an input's batch axis is with --batch-axis INPUT:AXIS")


def take_rows(array: np.ndarray, rows: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The samples `rows` of `array` along the input's batch axis (an input that is not batched: all of it)."""
    if spec.batch_axis is None:
        return np.asarray(array)
    return np.asarray(np.take(array, rows, axis=spec.batch_axis))


class NpySource(_ArraySource):
    """An .npy file read row by row with plain reads: its size is checked against the header at open, and a file
    that shrinks while being read is a DataError (a memory map would end the process with SIGBUS)."""

    kind = "npy"

    def __init__(self, path: Path, inputs: Sequence[InputSpec], **batching: Any) -> None:
        origin = str(path)
        if len(inputs) != 1:
            raise DataError(
                f"{origin}: a .npy file feeds one input but the model has {len(inputs)} ({input_names_of(inputs)}). "
                "Hint: use an .npz with one key per input"
            )
        self._file = path
        shape, dtype, self._fortran, self._data_offset = _npy_layout(path)
        super().__init__(inputs, origin, str(path), {inputs[0].name: (shape, dtype)}, **batching)
        self._dtype = dtype
        self._row_shape = tuple(shape[1:])

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        name = self.inputs[0].name
        if self._fortran or self.inputs[0].batch_axis != 0:  # rows not contiguous on disk: read it whole per pass
            arrays = self._arrays()
            for rows in self._plan.batches:
                yield {name: take_rows(arrays[name], rows, self.inputs[0])}
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
        return file_sha256(self._file)


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
            f"{path}: truncated: the header declares {format_shape(shape)} {dtype} ({need} bytes of data) but the "
            f"file holds {max(size - offset, 0)}. Hint: save it again"
        )
    return shape, dtype, fortran, offset


class NpzSource(_ArraySource):
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
                        f"Hint: keys must be exactly the model's inputs: {input_names_of(inputs)}"
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
        return file_sha256(self._file)

    def _extra_manifest(self) -> dict:
        return {**super()._extra_manifest(), "keys": [s.name for s in self.inputs]}


class InMemorySource(_ArraySource):
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
            a = np.require(self._data[name], requirements="C")
            h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()
