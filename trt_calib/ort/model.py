"""An ONNX model as the other modules see it: loaded once, its inputs, its tensors' types, and onnxruntime sessions.

Every tensor a command reads (calibration, evaluation, sensitivity) comes out of an `ort_session` over a copy of the
graph with those tensors added as outputs. Models over protobuf's 2 GB limit (weights in external data) are handed
to onnxruntime as a file: the copy is saved with external data in a temporary folder.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import CalibrationError, ModelError
from .control_flow import body_tensors, reachable_body_tensors
from .data import InputSpec, infer_batch_axes

__all__ = [
    "PROTO_LIMIT",
    "over_proto_limit",
    "serialized",
    "serialize_model",
    "infer_shapes",
    "split_weights",
    "join_weights",
    "OPTIMIZATION_LEVELS",
    "load_model",
    "external_data_files",
    "describe",
    "model_inputs",
    "float_types",
    "tensor_types",
    "tensor_info",
    "sample_bytes",
    "calibrated_tensors",
    "calibrated_from_types",
    "checked_tensors",
    "ort_session",
    "QUANTIZED_OPS",
    "quantized_nodes",
    "refuse_quantized",
]

log = logging.getLogger(__name__)

#: protobuf cannot serialise a message this large; bigger models go to onnxruntime as a file with external data.
PROTO_LIMIT = 2**31 - 1

#: onnxruntime graph optimisation for calibration runs: "basic" (the default) runs the graph as it is, bit for bit
#: the arithmetic TensorRT's reference caches were reproduced with; "all" adds onnxruntime's layout transforms
#: (NCHWc convolutions), faster but with other float32 summation orders, so activations move by a few ULP.
OPTIMIZATION_LEVELS = ("basic", "all")


def load_model(model: Any, *, weights: bool = True) -> Any:
    """An `onnx.ModelProto` from a path or a proto; errors name the file.

    `weights=False` leaves external data on disk (the graph of a model over 2 GB, for inspection and shape inference).
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        from .._util import check_regular_file

        check_regular_file(path, kind="ONNX model", error=ModelError)  # names a FIFO, a device, a folder
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


def describe(model: Any, default: str) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else default


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def model_inputs(model: Any) -> list[InputSpec]:
    """The inputs the model must be fed (graph inputs that are not initializers), as `InputSpec`s, each with the
    batch axis its dim names give (`data.infer_batch_axes`). A dim named '?' or '' is unknown, not a shared name."""
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
    return infer_batch_axes(specs)


@functools.lru_cache(maxsize=1)
def float_types() -> frozenset[int]:
    from onnx import TensorProto

    return frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor that shape inference (or the graph itself) can type."""
    return {name: elem for name, (elem, _) in tensor_info(model).items()}


def tensor_info(model: Any) -> dict[str, tuple[int, tuple[int | str | None, ...] | None]]:
    """(element type, dims) of every tensor that shape inference (or the graph itself) can type; a dim is an int,
    a symbol (str) or None, and dims are None where the rank is unknown."""
    try:
        inferred = infer_shapes(model)
    except Exception as exc:  # inference is best effort; untyped tensors are reported below
        log.warning("ONNX shape inference failed (%s); only tensors typed in the graph are calibrated", exc)
        inferred = model
    info: dict[str, tuple[int, tuple[int | str | None, ...] | None]] = {}
    for vi in _value_infos(inferred.graph):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.elem_type or vi.name in info:
            continue
        dims = None
        if tt.HasField("shape"):
            dims = tuple(int(d.dim_value) if d.HasField("dim_value") else _dim_name(d.dim_param) for d in tt.shape.dim)
        info[vi.name] = (tt.elem_type, dims)
    return info


def _dim_name(name: str) -> str | None:
    """A dim's name, None for the unknown ones ('?', '') that name no dim two tensors share."""
    return None if name.strip() in ("", "?") else name


def _value_infos(graph: Any) -> Iterable[Any]:
    """The typed values of a graph and of its subgraphs (If branches, Loop/Scan bodies), outer graph first."""
    yield from graph.value_info
    yield from graph.input
    yield from graph.output
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _value_infos(attr.g)
            for sub in attr.graphs:
                yield from _value_infos(sub)


def sample_bytes(info: Mapping[str, tuple[int, Any]], names: Sequence[str], specs: Sequence[InputSpec]) -> int | None:
    """Bytes of all `names` for one sample, from their inferred shapes; None unless every one of them carries the
    inputs' named batch dim once (at any axis) and static dims elsewhere."""
    batch_dims = {s.shape[s.batch_axis] for s in specs if s.batch_axis is not None}
    if len(batch_dims) != 1 or not all(isinstance(d, str) for d in batch_dims):
        return None
    batch = batch_dims.pop()
    total = 0
    for name in names:
        elem, dims = info.get(name, (0, None))
        if not dims or list(dims).count(batch) != 1:
            return None
        rest = [d for d in dims if d != batch]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            return None
        total += int(np.prod(rest, dtype=np.int64)) * _np_dtype(elem).itemsize
    return total


def over_proto_limit(model: Any) -> bool:
    """Whether protobuf cannot serialise `model` (over 2 GiB, weights loaded from external data). Every serialisation
    of a model goes through this test (`serialize_model`, `ort_session`, shape inference, `ShippedModel`): for such a
    model protobuf's own ByteSize() fails ("Failed to serialize proto", an EncodeError), so that failure is the answer."""
    try:
        return model.ByteSize() > PROTO_LIMIT
    except Exception:  # google.protobuf.message.EncodeError: too large to measure, hence to serialise
        return True


def serialized(model: Any) -> bytes | None:
    """`model` as bytes, or None when protobuf cannot hold it (over 2 GiB): `over_proto_limit` and the serialisation
    in one pass, for the callers that need the bytes (a session per sensitivity variant measured the model twice)."""
    try:
        data = model.SerializeToString()
    except Exception:  # google.protobuf.message.EncodeError: too large to serialise
        return None
    return None if len(data) > PROTO_LIMIT else data


def serialize_model(model: Any, *, role: str = "the model") -> bytes:
    """`model` as bytes; a model over protobuf's 2 GiB limit is a ModelError naming `role` (save it with external data
    instead: onnx.save_model(..., save_as_external_data=True)), not an exit 70."""
    if over_proto_limit(model):
        raise ModelError(f"{role}: over protobuf's 2 GiB limit, so it cannot be written as one .onnx file. Hint: it "
                         "needs its weights in external data (onnx.save_model(..., save_as_external_data=True))")
    return model.SerializeToString()


def infer_shapes(model: Any) -> Any:
    """onnx.shape_inference.infer_shapes of `model` (not strict), a model over the protobuf limit without its large
    weights (inference serialises the model and needs only the small constants: shapes, axes)."""
    import onnx

    return onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=False)


def _without_weights(model: Any) -> Any:
    """`model` itself, or for a model over the protobuf limit a copy whose large initializers carry no data
    (shape inference serialises the model, and needs only the small constants: shapes, axes)."""
    return _without_weights_copy(model) if over_proto_limit(model) else model


#: Initializers larger than this lose their data in `_without_weights_copy` (shapes and axes are far smaller).
_LARGE_TENSOR = 1 << 16


def _large(tensor: Any) -> bool:
    try:
        return tensor.ByteSize() > _LARGE_TENSOR
    except Exception:  # EncodeError: one tensor over 2 GiB
        return True


def _without_weights_copy(model: Any) -> Any:
    """A copy of `model` whose large initializers (not strings) keep name, type and dims but no data, marked as
    external data "(not loaded)" so that nothing mistakes them for empty tensors."""
    import onnx

    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        copy = light.graph.initializer.add()
        if tensor.data_type == onnx.TensorProto.STRING or not _large(tensor):
            copy.CopyFrom(tensor)
            continue
        copy.name, copy.data_type = tensor.name, tensor.data_type
        copy.dims.extend(tensor.dims)
        copy.data_location = onnx.TensorProto.EXTERNAL
        entry = copy.external_data.add()
        entry.key, entry.value = "location", "(not loaded)"
    return light


def split_weights(model: Any) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """`model` as bytes protobuf can hold: for a model over the limit, the graph with the data of its large
    initializers taken out, and those data as (name, little-endian bytes) beside it; `join_weights` rebuilds it.
    Each part stays under 2 GiB where the whole cannot (a worker process or a Dask worker receives both)."""
    if not over_proto_limit(model):
        return model.SerializeToString(), ()
    from onnx import numpy_helper

    light = _without_weights_copy(model)
    apart = []
    for original, tensor in zip(model.graph.initializer, light.graph.initializer):
        if not tensor.external_data:
            continue
        if original.HasField("raw_data"):
            data = bytes(original.raw_data)
        else:  # typed fields (float_data, ...): the same values as raw little-endian bytes
            array = numpy_helper.to_array(original)
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        apart.append((original.name, data))
        del tensor.external_data[:]
        tensor.ClearField("data_location")
    return light.SerializeToString(), tuple(apart)


def join_weights(data: bytes, apart: Sequence[tuple[str, bytes]] = ()) -> Any:
    """The `onnx.ModelProto` that `split_weights` took apart (a model over the limit is over it again)."""
    import onnx

    model = onnx.ModelProto.FromString(data)
    if apart:
        raw = dict(apart)
        for tensor in model.graph.initializer:
            if tensor.name in raw:
                tensor.raw_data = raw[tensor.name]
    return model


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
    return calibrated_from_types(model, tensor_types(model))


def calibrated_from_types(model: Any, types: Mapping[str, int]) -> list[str]:
    """`calibrated_tensors` given the element types shape inference found."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    graph_outputs = {o.name for o in graph.output}
    floats = float_types()
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
    arena: bool = True,
) -> Any:
    """An onnxruntime CPU session over `model` that also returns every tensor in `outputs` (added to a copy: `model`
    itself is not changed).

    `arena=False` gives the activations back after every run instead of keeping them in onnxruntime's arena: for
    the many short-lived sessions sensitivity holds at once.

    `optimize=False` turns every graph optimisation off: needed for Q/DQ models, which onnxruntime otherwise rewrites
    (its WeightBiasQuantization pass re-quantises float weights between DQ and Q per tensor; QDQ fusions swap in its
    own int8 kernels), so what ran would no longer be the graph TensorRT receives.
    """
    import onnx
    import onnxruntime as ort

    existing = {o.name for o in model.graph.output}
    missing = [n for n in outputs if n not in existing]
    copy = model  # copied only when outputs are added (or its weights are moved out below)
    if missing:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if types is None:
            types = tensor_types(copy)
    for name in missing:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimization {optimization!r}; choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    enabled = level.ORT_ENABLE_ALL if optimization == "all" else level.ORT_ENABLE_BASIC
    options.graph_optimization_level = enabled if optimize else level.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    # Idle onnxruntime threads spin by default and would slow the numpy work between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    data = serialized(copy)
    if data is None:
        if copy is model:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
        return _session_from_file(copy, options, role)
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
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


def checked_tensors(model: Any, tensors: Sequence[str] | None, role: str) -> tuple[list[str], dict[str, Any]]:
    """The tensors to calibrate (`tensors`, or every tensor TensorRT calibrates, If branches included where
    onnxruntime can reach them: `control_flow`) and the inferred (type, dims) of the model's tensors, subgraphs
    included; a model with none, or a name it does not type, is an error naming `role`."""
    info = tensor_info(model)
    if tensors is not None:
        names = list(tensors)
    else:
        types = {n: t for n, (t, _) in info.items()}
        names = calibrated_from_types(model, types)
        names += [n for n in reachable_body_tensors(body_tensors(model, types, float_types())) if n not in names]
    if not names:
        raise CalibrationError(
            f"{role}: has no float tensor TensorRT would calibrate (inputs and node outputs are all integer, "
            "bool or constant), so a cache would be empty. Hint: INT8 calibration needs a float model"
        )
    missing = [n for n in names if n not in info]
    if missing:
        raise ModelError(f"no typed tensor named {', '.join(repr(n) for n in missing[:10])} in the model")
    return names, info


#: Operators of a model that is already quantised: its scales are in the graph, there is nothing to calibrate.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QEmbedLayerNormalization",
})


def quantized_nodes(model: Any) -> list[tuple[str, str]]:
    """(node name or its first output, op type) of every quantised operator, subgraphs included, in graph order."""
    found: list[tuple[str, str]] = []

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                found.append((node.name or (node.output[0] if node.output else "?"), node.op_type))
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(load_model(model, weights=False).graph)
    return found


def refuse_quantized(model: Any, role: str, what: str) -> None:
    """A ModelError (one line) when `model` is already quantised: `what` (calibrating, Q/DQ insertion) needs a float
    model. Q/DQ models are pointed at `trt-calib qdq-to-cache`, which turns their scales into a TensorRT cache."""
    nodes = quantized_nodes(model)
    if not nodes:
        return
    counts: dict[str, int] = {}
    for _, op in nodes:
        counts[op] = counts.get(op, 0) + 1
    ops = sorted(counts)
    shown = ", ".join(f"{name} ({op})" for name, op in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    if set(ops) <= qdq:
        hint = ("Hint: `trt-calib qdq-to-cache MODEL --onnx PLAIN.onnx --cache OUT.cache` turns its Q/DQ scales "
                "into a TensorRT calibration cache (and the plain model it applies to); "
                f"{what} needs the float model it was made from")
    else:
        hint = (f"Hint: {what} needs the float model; integer operators (onnxruntime's QOperator format, dynamic "
                "quantization) cannot be turned back into one here")
    kinds = ", ".join(f"{counts[op]} {op}" for op in sorted(counts, key=lambda o: -counts[o]))
    raise ModelError(f"{role} is already quantized ({kinds}: {shown}). {hint}")
