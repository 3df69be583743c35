"""Sequential bias correction: measure each quantised layer's per-channel mean output error and fold it into its bias.

Every model run goes through `ort.runner.Runner`, on parts of the calibration batches small enough for the
activation budget (`max_activation_mb`, the one `calibrate` uses: every float tensor of one part of the model fits
it). Also `qdq_session`: an onnxruntime session that runs a Q/DQ graph as written (no graph optimisation)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CalibrationError, ModelError
from ..ort.data import InputSpec
from ..ort.model import checked_tensors, load_model, model_inputs, ort_session, sample_bytes, tensor_types
from ..ort.runner import Runner, cut_model, graph_reads, split_batch
from .graph import node_attr
from .rewrite import drop_unused_constants, float_dtype, NameMaker

log = logging.getLogger(__name__)

#: The activation budget (MB) bias correction runs in by default: `calibrate`'s.
DEFAULT_ACTIVATION_MB = 256.0


def qdq_session(model: Any, *, outputs: Sequence[str] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime CPU session that runs a Q/DQ model as written: every graph optimisation off (see `ort_session`)."""
    return ort_session(load_model(model), outputs or (), optimize=False, threads=threads, role="the Q/DQ model")


def budget_parts(model: Any, batches: Sequence[Mapping[str, np.ndarray]], *, max_activation_mb: float,
                 threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """The batches cut into equal parts (the size the first batch gets) whose float tensors in `model` fit
    `max_activation_mb`: per sample, every tensor `calibrate` would record, from the inferred shapes, or measured
    on one sample when the shapes do not tell."""
    if not batches:
        return []
    specs = model_inputs(model)
    budget = int(max_activation_mb * 2**20)
    try:
        names, info = checked_tensors(model, None, "the float model")
    except CalibrationError:  # no float tensor: nothing to size by
        return [dict(b) for b in batches]
    runner = Runner(None, names, specs, budget)
    runner.prefetch_kernel = False
    runner.sample_bytes = sample_bytes(info, names, specs)
    if runner.sample_bytes is None:
        runner = Runner.open(model, names, threads=threads, budget_bytes=budget, name="the float model",
                             optimize=False)
        runner.prefetch_kernel = False
    count = runner.size_parts(batches[0])
    size = runner.part_size or 1 << 62
    if count > 1:
        log.info("bias correction: batches in %d parts for the activation budget (%g MB)", count, max_activation_mb)
    return [part for batch in batches for part in split_batch(batch, specs, size)]


class _Segments:
    """Run a model in segments that each end at one layer output, keeping only the tensors later segments read.

    Between segments the caller may edit a layer's output in place (bias correction does), so each layer is seen
    with every earlier correction applied, at the cost of about one forward pass in all. Each segment is a `Runner`
    over its own small model, run on every part in turn.
    """

    def __init__(self, model: Any, layer_outputs: Sequence[str], *, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        graph = model.graph
        self.types = tensor_types(model)
        producer = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
        self.ends = [(producer[t], t) for t in layer_outputs]
        if [e for e, _ in self.ends] != sorted(e for e, _ in self.ends):
            raise ModelError("layers are not in topological order")
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(graph.node):
            for name in n.input:
                self.last_use[name] = i
        for o in graph.output:
            self.last_use[o.name] = len(graph.node)
        # every tensor typed for `cut_model`: one shape inference could not type is fed as float, as it always was
        names = {i.name for i in graph.input} | {o for n in graph.node for o in n.output if o}
        self.cut_types = {**{name: 1 for name in names}, **self.types}
        self.reads = graph_reads(graph)

    def _segment(self, start: int, end: int, out: str) -> tuple[Any, list[str], list[str]]:
        """(the sub-model of nodes start..end, its inputs, its outputs: `out` and what later nodes read)."""
        nodes = self.model.graph.node[start : end + 1]
        outputs = [o for n in nodes for o in n.output if o and (self.last_use.get(o, -1) > end or o == out)]
        m, _ = cut_model(self.model, range(start, end + 1), outputs, types=self.cut_types, reads=self.reads)
        return m, [vi.name for vi in m.graph.input], outputs

    def _runner(self, sub: Any, inputs: list[str], outputs: list[str], start: int, end: int) -> Runner:
        from onnx import helper

        specs = [InputSpec(t, (), helper.tensor_dtype_to_np_dtype(self.types.get(t, 1))) for t in inputs]
        runner = Runner(qdq_session(sub, threads=self.threads), outputs, specs, 1 << 62)
        runner.role = f"bias correction, nodes {start}..{end} of the model"
        return runner

    def run(self, parts: list[dict[str, np.ndarray]], visit: Callable[[int, str, list[dict[str, np.ndarray]]], None]) -> None:
        live = [dict(p) for p in parts]
        start = 0
        for k, (end, out) in enumerate(self.ends):
            if end >= start:
                sub, inputs, outputs = self._segment(start, end, out)
                runner = self._runner(sub, inputs, outputs, start, end)
                for values in live:
                    values.update(runner.run({t: values[t] for t in inputs}))
                    for t in [t for t in values if self.last_use.get(t, -1) <= end and t != out]:
                        del values[t]
                start = end + 1
            visit(k, out, live)


def _channel_sums(x: np.ndarray) -> tuple[np.ndarray, int]:
    x = np.asarray(x, dtype=np.float64)
    return x.sum(axis=tuple(i for i in range(x.ndim) if i != 1)), x.size // x.shape[1]


def _channel_means(values: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    total, count = None, 0
    for v in values:
        s, c = _channel_sums(v[name])
        total = s if total is None else total + s
        count += c
    return total / max(count, 1)


def _float_means(model: Any, outs: list[str], parts: list[dict[str, np.ndarray]], threads: int | None) -> dict[str, np.ndarray]:
    """Each layer output's per-channel mean in the float model, over all parts: one run per part, nothing kept."""
    runner = Runner.open(model, outs, threads=threads, budget_bytes=1 << 62, name="the float model", optimize=False)
    totals: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(outs, 0)
    for part in parts:
        values = runner.run(part)
        for name in outs:
            s, c = _channel_sums(values[name])
            totals[name] = s if name not in totals else totals[name] + s
            counts[name] += c
        del values
    return {name: totals[name] / max(counts[name], 1) for name in outs}


def correct_biases(
    float_model: Any,
    qdq_model: Any,
    layers: list[tuple[int, str]],
    batches: list[dict[str, np.ndarray]],
    progress: Callable[[int], None] | None,
    *,
    max_activation_mb: float = DEFAULT_ACTIVATION_MB,
    threads: int | None = None,
) -> tuple[dict[int, float], dict[str, Any]]:
    """Fold each layer's measured per-channel mean error into its bias, in topological order; edits `qdq_model`.

    The batches run in parts within `max_activation_mb` (`budget_parts`); between layers the Q/DQ model's tensors
    that later layers read are kept for every sample of `batches` (a layer's correction needs all of them first).
    """
    from onnx import numpy_helper

    started = time.perf_counter()
    outs = [out for _, out in layers]
    parts = budget_parts(float_model, batches, max_activation_mb=max_activation_mb, threads=threads)
    float_means = _float_means(float_model, outs, parts, threads) if outs else {}

    graph = qdq_model.graph
    by_output = {n.output[0]: n for n in graph.node if n.output}
    inits = {t.name: t for t in graph.initializer}
    for n in graph.node:  # paddle2onnx writes biases as Constant nodes: as good as initializers here
        if n.op_type == "Constant" and n.output and n.output[0] not in inits:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                inits[n.output[0]] = value
    names = NameMaker(graph)
    types = tensor_types(qdq_model)
    shifts: dict[int, float] = {}
    before: list[float] = []

    def visit(k: int, out: str, live: list[dict[str, np.ndarray]]) -> None:
        index, _ = layers[k]
        node = by_output[out]
        err = _channel_means(live, out) - float_means[out]
        before.append(float(np.mean(np.abs(err))))
        new_bias = _shifted_bias(node, err, inits, types, out)
        if new_bias is not None:
            name = names(f"{out}_bias_corrected")
            tensor = numpy_helper.from_array(new_bias, name)
            graph.initializer.append(tensor)
            inits[name] = tensor
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
            shape = [1] * live[0][out].ndim
            shape[1] = err.size
            correction = err.astype(live[0][out].dtype).reshape(shape)
            for values in live:
                values[out] = values[out] - correction
            shifts[index] = float(np.max(np.abs(err)))
        if progress is not None:
            progress(1)

    _Segments(qdq_model, outs, threads=threads).run(parts, visit)
    drop_unused_constants(graph)
    info = {
        "batches": len(batches),
        "samples": int(sum(next(iter(b.values())).shape[0] for b in batches)),
        "parts": len(parts),
        "layers": len(shifts),
        "mean_abs_error_before": float(np.mean(before)) if before else 0.0,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return shifts, info


def _shifted_bias(node: Any, err: np.ndarray, inits: dict[str, Any], types: dict[str, int], out: str) -> np.ndarray | None:
    """The layer's bias minus `err` (per output channel), shaped as the node reads it; None when it cannot take one."""
    from onnx import numpy_helper

    dtype = float_dtype(types.get(out))
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias_name is not None and bias_name not in inits:
        log.warning("%s: bias %r is computed, not a constant; bias correction skipped", out, bias_name)
        return None
    bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else None
    if node.op_type != "Gemm":
        base = bias if bias is not None else np.zeros(err.shape, np.float64)
        return (base - err).astype(dtype)
    beta = float(node_attr(node, "beta", 1.0))
    if beta == 0.0:
        log.warning("%s: Gemm with beta=0 ignores its C input; bias correction skipped", out)
        return None
    delta = err / beta
    if bias is None or bias.size == 1:
        base = np.zeros(err.shape, np.float64) + (float(bias.reshape(-1)[0]) if bias is not None else 0.0)
        return (base - delta).astype(dtype)
    if bias.shape[-1] != err.size:
        log.warning("%s: Gemm C of shape %s does not broadcast per output column; bias correction skipped", out, bias.shape)
        return None
    return (bias - delta).astype(dtype)
