"""Calibrate an ONNX model on the CPU: run it with onnxruntime, stream per-tensor histograms, tie scales.

Every floating-point tensor TensorRT's ONNX parser calibrates (network inputs and node outputs; not initializers,
Constant outputs, integer or bool tensors, unused outputs) becomes an extra output of an in-memory copy of the
graph. Each batch's activations update one `AbsHistogram` per tensor and are dropped before the next batch runs,
so memory is one batch's activations plus the histograms, whatever the dataset size.

Models over protobuf's 2 GB limit (weights in external data) are handed to onnxruntime as a file: the copy with the
extra outputs is saved with external data in a temporary folder.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.cache import DEFAULT_TRT_VERSION
from .data import InputSpec, iter_batches
from ..errors import CalibrationError, ModelError
from ..core import kernel as _kernel
from ..core.histogram import DEFAULT_NUM_BINS, AbsHistogram, finite_abs_max
from ..core.signs import SignedHistogram
from ..core.result import ALGORITHM_HEADERS, CalibrationResult, amax_from_histograms

__all__ = [
    "ALGORITHM_HEADERS",
    "RANGE_MODES",
    "CalibrationResult",
    "load_model",
    "external_data_files",
    "model_inputs",
    "ort_session",
    "calibrated_tensors",
    "collect_histograms",
    "checked_tensors",
    "global_maxima",
    "batch_maxima",
    "OPTIMIZATION_LEVELS",
    "collect_signed",
    "amax_from_histograms",
    "tie_scales",
    "calibrate",
]

log = logging.getLogger(__name__)

_POOL_OPS = ("MaxPool", "AveragePool")
#: protobuf cannot serialise a message this large; bigger models go to onnxruntime as a file with external data.
PROTO_LIMIT = 2**31 - 1

#: How histogram ranges are set: "trt" is TensorRT's (first batch's max, doubled as later batches exceed it, so batch
#: size and order matter); "global" takes each tensor's max over all batches in a first pass and bins every batch
#: into that fixed range, so the result depends on neither (not TensorRT's algorithm).
RANGE_MODES = ("trt", "global")
#: onnxruntime graph optimisation for calibration runs: "basic" (the default) runs the graph as it is, bit for bit
#: the arithmetic TensorRT's reference caches were reproduced with; "all" adds onnxruntime's layout transforms
#: (NCHWc convolutions), faster but with other float32 summation orders, so activations move by a few ULP.
OPTIMIZATION_LEVELS = ("basic", "all")


# ---------------------------------------------------------------------------------------------- the graph
def load_model(model: Any, *, weights: bool = True) -> Any:
    """An `onnx.ModelProto` from a path or a proto; errors name the file.

    `weights=False` leaves external data on disk (the graph of a model over 2 GB, for inspection and shape inference).
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX model")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass; missing external data OSError
        raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None
    if not proto.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (it parses, but holds no graph)")
    return proto


def external_data_files(model: Any) -> list[Path]:
    """The external-data files a model file names (resolved next to it), without reading them."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(model)
    proto = load_model(path, weights=False)
    files: dict[str, Path] = {}
    for tensor in _graph_tensors(proto.graph):
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            files.setdefault(location, path.parent / location)
    return list(files.values())


def _graph_tensors(graph: Any) -> Iterable[Any]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _describe(model: Any, default: str) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else default


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def model_inputs(model: Any) -> list[InputSpec]:
    """The inputs the model must be fed (graph inputs that are not initializers), as `InputSpec`s."""
    model = load_model(model)
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        specs.append(InputSpec(vi.name, tuple(dims), _np_dtype(tt.elem_type)))
    return specs


@functools.lru_cache(maxsize=1)
def _float_types() -> frozenset[int]:
    from onnx import TensorProto

    return frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def _tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor that shape inference (or the graph itself) can type."""
    return {name: elem for name, (elem, _) in _tensor_info(model).items()}


def _tensor_info(model: Any) -> dict[str, tuple[int, tuple[int | str | None, ...] | None]]:
    """(element type, dims) of every tensor that shape inference (or the graph itself) can type; a dim is an int,
    a symbol (str) or None, and dims are None where the rank is unknown."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=False)
    except Exception as exc:  # inference is best effort; untyped tensors are reported below
        log.warning("ONNX shape inference failed (%s); only tensors typed in the graph are calibrated", exc)
        inferred = model
    info: dict[str, tuple[int, tuple[int | str | None, ...] | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.elem_type:
            continue
        dims = None
        if tt.HasField("shape"):
            dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        info[vi.name] = (tt.elem_type, dims)
    return info


def _sample_bytes(info: Mapping[str, tuple[int, Any]], names: Sequence[str], specs: Sequence[InputSpec]) -> int | None:
    """Bytes of all `names` for one sample, from their inferred shapes; None unless every one of them is
    [batch, static dims...] with the inputs' symbolic batch dimension first."""
    batch_dims = {s.shape[0] for s in specs if s.shape and not isinstance(s.shape[0], int)}
    if len(batch_dims) != 1 or None in batch_dims:
        return None
    batch = batch_dims.pop()
    total = 0
    for name in names:
        elem, dims = info.get(name, (0, None))
        if not dims or dims[0] != batch or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        total += int(np.prod(dims[1:], dtype=np.int64)) * _np_dtype(elem).itemsize
    return total


def _without_weights(model: Any) -> Any:
    """`model` itself, or for a model over the protobuf limit a copy whose large initializers carry no data
    (shape inference serialises the model, and needs only the small constants: shapes, axes)."""
    import onnx

    if model.ByteSize() <= PROTO_LIMIT:
        return model
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        copy = light.graph.initializer.add()
        if tensor.ByteSize() <= 1 << 16:
            copy.CopyFrom(tensor)
            continue
        copy.name, copy.data_type = tensor.name, tensor.data_type
        copy.dims.extend(tensor.dims)
        copy.data_location = onnx.TensorProto.EXTERNAL
        entry = copy.external_data.add()
        entry.key, entry.value = "location", "(not loaded)"
    return light


def _copy_fields(src: Any, dst: Any, *, skip: str) -> None:
    """Copy every set field of one protobuf message into another, except `skip`."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def calibrated_tensors(model: Any) -> list[str]:
    """Names of the tensors TensorRT gives a calibration entry, in graph order (inputs first, then node outputs)."""
    model = load_model(model)
    return _calibrated(model, _tensor_types(model))


def _calibrated(model: Any, types: Mapping[str, int]) -> list[str]:
    """`calibrated_tensors` given the element types shape inference found."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    graph_outputs = {o.name for o in graph.output}
    floats = _float_types()
    names = [spec.name for spec in model_inputs(model) if types.get(spec.name) in floats]
    untyped = []
    for node in graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx"):
            if node.domain not in ("", "ai.onnx"):
                log.warning("node %r has custom op %s.%s; its outputs are not calibrated", node.name, node.domain, node.op_type)
            continue
        for out in node.output:
            if not out or out in initializers or (out not in consumed and out not in graph_outputs):
                continue
            if out not in types:
                untyped.append(out)
            elif types[out] in floats:
                names.append(out)
    if untyped:
        log.warning("%d tensor(s) have no inferred type and are not calibrated: %s", len(untyped), ", ".join(untyped[:10]))
    return list(dict.fromkeys(names))


def ort_session(
    model: Any,
    outputs: Sequence[str] = (),
    *,
    types: Mapping[str, int] | None = None,
    optimize: bool = True,
    threads: int | None = None,
    role: str = "the model",
    optimization: str = "basic",
) -> Any:
    """An onnxruntime CPU session over a copy of `model` that also returns every tensor in `outputs`.

    `optimize=False` turns every graph optimisation off: needed for Q/DQ models, which onnxruntime otherwise rewrites
    (its WeightBiasQuantization pass re-quantises float weights between DQ and Q per tensor; QDQ fusions swap in its
    own int8 kernels), so what ran would no longer be the graph TensorRT receives.
    """
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    missing = [n for n in outputs if n not in existing]
    if missing and types is None:
        types = _tensor_types(copy)
    for name in missing:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimization {optimization!r}; choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    enabled = level.ORT_ENABLE_ALL if optimization == "all" else level.ORT_ENABLE_BASIC
    options.graph_optimization_level = enabled if optimize else level.ORT_DISABLE_ALL
    options.log_severity_level = 3
    # Idle onnxruntime threads spin by default and would slow the numpy work between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    if copy.ByteSize() > PROTO_LIMIT:
        return _session_from_file(copy, options, role)
    try:
        return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"{role}: onnxruntime cannot load it ({exc})") from None


def _session_from_file(model: Any, options: Any, role: str) -> Any:
    """A session over `model` (over 2 GB) saved with external data in a temporary folder, removed with the session.

    `model` is consumed: saving moves its weights out of the proto.
    """
    import onnx
    import onnxruntime as ort

    folder = tempfile.TemporaryDirectory(prefix="trt-calib-model-")
    path = Path(folder.name) / "model.onnx"
    try:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    except OSError as exc:
        folder.cleanup()
        raise ModelError(f"{role}: cannot save its copy for onnxruntime in {folder.name} "
                         f"({exc.strerror or exc}). Hint: set TMPDIR to a folder with room for the model") from None
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        folder.cleanup()
        raise ModelError(f"{role}: onnxruntime cannot load it ({exc})") from None
    weakref.finalize(session, folder.cleanup)
    return session


# ---------------------------------------------------------------------------------------------- collection
def checked_tensors(model: Any, tensors: Sequence[str] | None, role: str) -> tuple[list[str], dict[str, Any]]:
    """The tensors to calibrate (`tensors`, or every tensor TensorRT calibrates) and the inferred (type, dims) of the
    model's tensors; a model with none, or a name it does not type, is an error naming `role`."""
    info = _tensor_info(model)
    names = list(tensors) if tensors is not None else _calibrated(model, {n: t for n, (t, _) in info.items()})
    if not names:
        raise CalibrationError(
            f"{role}: has no float tensor TensorRT would calibrate (inputs and node outputs are all integer, "
            "bool or constant), so a cache would be empty. Hint: INT8 calibration needs a float model"
        )
    missing = [n for n in names if n not in info]
    if missing:
        raise ModelError(f"no typed tensor named {', '.join(repr(n) for n in missing[:10])} in the model")
    return names, info


def _split(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec], size: int) -> list[dict[str, np.ndarray]]:
    """The batch cut along the batch dim into the fewest parts of at most `size` samples, all of one size (give or
    take one sample: 16 in parts of 5 is 4, 4, 4, 4, not 5, 5, 5, 1), or whole when it cannot be cut."""
    n = {v.shape[0] if v.ndim else -1 for v in batch.values()}
    splittable = len(n) == 1 and all(s.shape and not isinstance(s.shape[0], int) for s in specs)
    count = n.pop() if len(n) == 1 else -1
    if not splittable or size >= count:
        return [dict(batch)]
    bounds = np.linspace(0, count, -(-count // size) + 1).round().astype(int)
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:])]


class _Runner:
    """Runs the session on one calibration batch, in parts small enough for the activation-memory budget."""

    def __init__(self, session: Any, names: Sequence[str], specs: Sequence[InputSpec], budget_bytes: int) -> None:
        self.session = session
        self.input_names = {s.name for s in specs}
        self.run_names = [n for n in names if n not in self.input_names]
        self.names = list(names)
        self.specs = specs
        self.budget = budget_bytes
        self.part_size: int | None = None  # samples per part, fixed from the first batch
        self.sample_bytes: int | None = None  # activation bytes per sample, when the shapes tell it
        self.role = "the model"

    @classmethod
    def open(
        cls, model: Any, tensors: Sequence[str] | None, *, threads: int | None, budget_bytes: int,
        name: str | None = None, optimization: str = "basic",
    ) -> "_Runner":
        """A runner over `tensors` (default: every tensor TensorRT calibrates) of `model`, its session ready;
        `name` (default: the model's path, if given one) names the model in errors."""
        role = name or _describe(model, "the model")
        model = load_model(model)
        names, info = checked_tensors(model, tensors, role)
        types = {n: elem for n, (elem, _) in info.items()}
        runner = cls(None, names, model_inputs(model), budget_bytes)
        runner.role = role
        runner.sample_bytes = _sample_bytes(info, names, runner.specs)
        runner.session = ort_session(model, runner.run_names, types=types, threads=threads, role=role,
                                     optimization=optimization)
        return runner

    def split(self, batch: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The batch's inputs, cut into the parts it runs in."""
        return _split(batch, self.specs, self.part_size or 1 << 62)

    def run(self, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(name -> activation) for every calibrated tensor, for one part of a batch."""
        try:
            outputs = self.session.run(self.run_names, part)
        except Exception as exc:
            fed = ", ".join(f"{n!r} {tuple(v.shape)} {v.dtype}" for n, v in part.items())
            raise CalibrationError(f"{self.role}: onnxruntime failed on inputs {fed}: {exc}") from None
        values = dict(zip(self.run_names, outputs))
        del outputs
        values.update({n: part[n] for n in self.names if n in self.input_names})
        return values

    def parts(self, batch: Mapping[str, np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
        """(name -> activation) for every calibrated tensor, one part of the batch at a time."""
        for part in self.split(batch):
            yield self.run(part)

    def size_parts(self, batch: Mapping[str, np.ndarray]) -> int:
        """Decide the part size (samples) for this and the later batches; returns the number of parts of `batch`.

        The activation bytes per sample come from the inferred shapes when they are static but for the batch
        dimension, else from running one sample.
        """
        one = _split(batch, self.specs, 1)
        if len(one) == 1:
            self.part_size = None
            return 1
        per_sample = self.sample_bytes
        if per_sample is None:
            per_sample = sum(v.nbytes for v in self.run(one[0]).values())
        per_sample = max(1, per_sample)
        _kernel.prefetch(per_sample // 4 * len(one))  # a large batch: load the compiled kernel meanwhile
        self.part_size = max(1, self.budget // per_sample)
        count = len(self.split(batch))
        if count > 1:
            log.info("activations take %.0f MB per sample: running batches in %d parts of about %d samples",
                     per_sample / 2**20, count, -(-len(one) // count))
        return count


def _first_batch_in_parts(runner: _Runner, batch: Mapping[str, np.ndarray], histograms: dict[str, AbsHistogram]) -> int:
    """TensorRT's first batch, run in parts: returns how many parts had to run twice.

    The first batch's range is its max over all parts, and it must be known before any value is binned. Each
    tensor bins every part at the largest max seen so far and starts over (a fresh histogram at the new max) when
    a part raises it; afterwards only the parts before the last such raise of any tensor run again, and only the
    tensors that started over later bin them. The histograms equal those of the whole batch; the part holding
    every tensor's largest value, and all parts after it, run once.
    """
    parts = runner.split(batch)
    start: dict[str, int] = {}  # per tensor: the first part binned at its final range
    for j, part in enumerate(parts):
        for name, value in runner.run(part).items():
            h = histograms[name]
            if j == 0:
                h.begin_batch(finite_abs_max(value))
                h.add_part(value)
                start[name] = 0
                continue
            seen = h.abs_max  # h holds only this batch so far: its max
            h.add_part(value)
            if h.abs_max > seen:  # this part raised the max: bin it again at the new max, the parts before later
                fresh = histograms[name] = AbsHistogram(h.num_bins)
                fresh.begin_batch(float(h.abs_max))
                fresh.add_part(value)
                start[name] = j
    again = max(start.values(), default=0)
    for j in range(again):
        for name, value in runner.run(parts[j]).items():
            if start[name] > j:
                histograms[name].add_part(value)
    for h in histograms.values():
        h.end_batch()
    return again


def collect_histograms(
    model: Any,
    batches: Iterable[Any],
    *,
    tensors: Sequence[str] | None = None,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = 256,
    name: str | None = None,
    range_mode: str = "trt",
    optimization: str = "basic",
    executor: Any = None,
) -> tuple[dict[str, AbsHistogram], int]:
    """One histogram per calibrated tensor, updated once per batch in batch order; returns (histograms, batches).

    A batch whose activations exceed `max_activation_mb` runs in parts; the histograms are exactly those of whole
    batches (the parts of the first batch before its largest values run twice, to learn its range before binning:
    `_first_batch_in_parts`). `progress` is called with 1 after
    each batch. `range_mode="global"` (see `RANGE_MODES`) reads `batches` twice: a first pass over every batch
    takes each tensor's max|x| (`global_maxima`), then fixed-range histograms of that range are filled.
    `optimization` is onnxruntime's graph optimisation (`OPTIMIZATION_LEVELS`; "basic" is the exact one).
    An `executor` (`ort.executor`) other than serial shards the batches over its workers (`ort.shard`): the same
    histograms, in two passes.
    """
    if range_mode not in RANGE_MODES:
        raise ValueError(f"unknown range_mode {range_mode!r}; choose one of {', '.join(RANGE_MODES)}")
    if executor is not None and executor.name != "serial":
        from .shard import collect_sharded

        return collect_sharded(model, batches, executor, tensors=tensors, num_bins=num_bins, progress=progress,
                               threads=threads, max_activation_mb=max_activation_mb, name=name,
                               range_mode=range_mode, optimization=optimization)
    runner = _Runner.open(model, tensors, threads=threads, budget_bytes=int(max_activation_mb * 2**20),
                          name=name, optimization=optimization)
    if range_mode == "global":
        # A tensor that is zero everywhere has no range to fix; its growing histogram stays at range 0 (amax 0).
        fixed = global_maxima(runner, batches)
        histograms = {n: AbsHistogram(num_bins, range=m) if m > 0 else AbsHistogram(num_bins) for n, m in fixed.items()}
    else:
        histograms = {n: AbsHistogram(num_bins) for n in runner.names}
    with _kernel.using_threads(threads):
        count = _fill(runner, batches, histograms, first=range_mode == "trt", size=range_mode == "trt",
                      progress=progress)
    return histograms, count


def _fill(runner: _Runner, batches: Iterable[Any], histograms: dict[str, AbsHistogram], *, first: bool,
          size: bool = True, progress: Callable[[int], None] | None = None) -> int:
    """Every batch into the histograms, in order; returns the number of batches.

    `size`: the first batch decides the part size (else the runner's stands); `first`: the histograms have seen no
    batch yet, so a first batch that runs in parts must learn its range before binning (`_first_batch_in_parts`).
    """
    count = 0
    for batch in iter_batches(batches, runner.specs):
        parts = runner.size_parts(batch) if count == 0 and size else 1
        if count == 0 and first and parts > 1:
            again = _first_batch_in_parts(runner, batch, histograms)
            log.info("first batch: %d of its %d parts ran twice, to learn its range first", again, parts)
        else:
            _add_batch(runner, batch, histograms)
        count += 1
        if progress is not None:
            progress(1)
    return count


def _add_batch(runner: _Runner, batch: Mapping[str, np.ndarray], histograms: Mapping[str, AbsHistogram]) -> None:
    """One calibration batch into every histogram, part by part."""
    for h in histograms.values():
        h.begin_batch()
    for values in runner.parts(batch):
        for name, value in values.items():
            histograms[name].add_part(value)
        del values
    for h in histograms.values():
        h.end_batch()


def global_maxima(runner: _Runner, batches: Iterable[Any]) -> dict[str, float]:
    """Pass one of `range_mode="global"`: each tensor's finite max|x| over all batches (sizes the runner's parts)."""
    if iter(batches) is batches:
        raise CalibrationError(
            "range_mode='global' reads the batches twice, but they are a one-shot iterator. "
            "Hint: pass a list or a BatchSource (open_source / from_arrays), which can be iterated again"
        )
    maxima = dict.fromkeys(runner.names, 0.0)
    for batch_max in batch_maxima(runner, batches):
        for name, value in batch_max.items():
            maxima[name] = max(maxima[name], value)
    return maxima


def batch_maxima(runner: _Runner, batches: Iterable[Any]) -> Iterator[dict[str, float]]:
    """Each batch's finite max|x| per tensor, batch after batch (the first batch sizes the runner's parts)."""
    for count, batch in enumerate(iter_batches(batches, runner.specs)):
        if count == 0:
            runner.size_parts(batch)
        maxima = dict.fromkeys(runner.names, 0.0)
        for values in runner.parts(batch):
            for name, value in values.items():
                maxima[name] = max(maxima[name], finite_abs_max(value))
            del values
        yield maxima


def collect_signed(
    model: Any,
    batches: Iterable[Any],
    tensors: Sequence[str] | None = None,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    name: str | None = None,
) -> tuple[dict[str, SignedHistogram], int]:
    """One SignedHistogram per calibrated tensor (or per name in `tensors`), updated once per batch; (histograms, batches).

    The `.abs` part of each equals what `collect_histograms` builds from the same batches.
    """
    runner = _Runner.open(model, tensors, threads=threads, budget_bytes=1 << 62, name=name)  # no parts for signs
    histograms = {n: SignedHistogram(num_bins) for n in runner.names}
    count = 0
    for batch in iter_batches(batches, runner.specs):
        for values in runner.parts(batch):
            for name, value in values.items():
                histograms[name].update(value)
            del values
        count += 1
        if progress is not None:
            progress(1)
    return histograms, count


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r} (expected e.g. 10.16.1)") from None


def tie_scales(model: Any, amax: Mapping[str, float], *, trt_version: str = DEFAULT_TRT_VERSION) -> tuple[dict[str, float], dict[str, str]]:
    """Apply TensorRT's scale ties: pool outputs take their input's scale; Concat inputs take the output's (<= 8.0).

    Returns the tied amax mapping (same order) and which tensor each tied tensor took its scale from.
    """
    model = load_model(model)
    out = dict(amax)
    tied: dict[str, str] = {}

    def source(name: str) -> str:
        return tied.get(name, name)

    for node in model.graph.node:
        if node.op_type in _POOL_OPS and node.input and node.output:
            src, dst = node.input[0], node.output[0]
            if src in out and dst in out:
                out[dst] = out[src]
                tied[dst] = source(src)
    if _version_tuple(trt_version)[:2] <= (8, 0):
        for node in model.graph.node:
            if node.op_type == "Concat" and node.output and node.output[0] in out:
                dst = node.output[0]
                for src in node.input:
                    if src in out:
                        out[src] = out[dst]
                        tied[src] = source(dst)
    return out, tied


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def calibrate(
    model: Any,
    batches: Iterable[Any],
    *,
    algorithm: str = "entropy2",
    trt_version: str = DEFAULT_TRT_VERSION,
    percentile: float = 99.99,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    max_activation_mb: float = 256,
    range_mode: str = "trt",
    optimization: str = "basic",
    executor: Any = None,
) -> CalibrationResult:
    """Calibrate `model` on `batches` as TensorRT `trt_version` would with `algorithm`; nothing is written.

    `range_mode="global"` fixes each histogram's range to the tensor's max over all batches first, so the result
    does not depend on batch size or order; that is not TensorRT's algorithm (the result says so).
    `optimization="all"` runs onnxruntime's full graph optimisation: faster, but its convolutions sum in another
    order, so activations (and some scales) move by a few ULP from the exact default, "basic". An `executor`
    shards the batches over its workers with the same result (`collect_histograms`).
    """
    if algorithm not in ALGORITHM_HEADERS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHM_HEADERS)}")
    _version_tuple(trt_version)
    started = time.perf_counter()
    name = _describe(model, "the model")
    model = load_model(model)
    histograms, count = collect_histograms(
        model, batches, num_bins=num_bins, progress=progress, threads=threads, max_activation_mb=max_activation_mb,
        name=name,
        range_mode=range_mode,
        optimization=optimization,
        executor=executor,
    )
    input_names = {s.name for s in model_inputs(model)}
    bad_inputs = [n for n in input_names if n in histograms and histograms[n].num_nan]
    if bad_inputs:
        raise CalibrationError(f"input(s) {', '.join(sorted(bad_inputs))} hold NaN values")
    nonfinite = [n for n, h in histograms.items() if h.num_nan or h.num_inf]
    if nonfinite:
        log.warning(
            "%d tensor(s) hold NaN or Inf values (their scale is inf or unreliable): %s",
            len(nonfinite),
            ", ".join(f"{n} ({histograms[n].num_nan} NaN, {histograms[n].num_inf} Inf)" for n in nonfinite[:10]),
        )
    options = {"percentile": percentile} if algorithm == "percentile" else {}
    raw, index = amax_from_histograms(histograms, algorithm, **options)
    amax, tied = tie_scales(model, raw, trt_version=trt_version)
    return CalibrationResult(
        amax=amax,
        histograms=histograms,
        algorithm=algorithm,
        trt_version=trt_version,
        tied=tied,
        entropy_index=index,
        num_batches=count,
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
        range_mode=range_mode,
        optimization=optimization,
    )
