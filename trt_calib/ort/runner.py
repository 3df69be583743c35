"""Running a model on batches: one onnxruntime session that returns the tensors asked for, each batch cut into equal
parts small enough for an activation-memory budget.

Calibration (`collect`, `shard`), evaluation and sensitivity all run models through a `Runner`, so the budget,
the part sizes and the errors that name the inputs fed are the same everywhere.

A model that differs from one already run only downstream of some nodes need not run whole: `downstream` finds the
nodes a change reaches, `cut_model` makes the sub-model of those nodes (its inputs are the tensors it reads from the
rest), and a `SuffixRunner` runs it on the tensors a `Runner` fetched from the reference run (sensitivity's variants).
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core import kernel as _kernel
from ..core.histogram import finite_abs_max
from ..errors import CalibrationError, ModelError
from .control_flow import fold_ifs
from .data import BatchSource, InputSpec, iter_batches
from .model import checked_tensors, describe, load_model, model_inputs, ort_session, sample_bytes

__all__ = ["Runner", "Branches", "SuffixRunner", "split_batch", "batch_maxima", "global_maxima", "source_inputs",
           "node_reads", "graph_reads", "readers_of", "downstream", "upstream", "cut_model"]

log = logging.getLogger(__name__)


def split_batch(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec], size: int) -> list[dict[str, np.ndarray]]:
    """The batch cut along each input's batch axis into the fewest parts of at most `size` samples, all of one size
    (give or take one sample: 16 in parts of 5 is 4, 4, 4, 4, not 5, 5, 5, 1), or whole when it cannot be cut.

    Inputs that are not batched (rank 0, or `batch_axis` None) go whole into every part; the batched ones must have a
    dynamic dim at their batch axis and agree on the number of samples.
    """
    by_name = {s.name: s for s in specs}
    batched = [by_name[k] for k in batch if k in by_name and by_name[k].batch_axis is not None]
    counts = {s.count(batch[s.name].shape) for s in batched}
    splittable = len(counts) == 1 and all(s.static_dim(s.batch_axis) is None for s in batched)  # type: ignore[arg-type]
    count = counts.pop() if len(counts) == 1 else -1
    if not splittable or count is None or size >= count:
        return [dict(batch)]
    bounds = np.linspace(0, count, -(-count // size) + 1).round().astype(int)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = {}
        for k, v in batch.items():
            spec = by_name.get(k)
            if spec is None or spec.batch_axis is None:
                part[k] = v
            else:
                index = [slice(None)] * v.ndim
                index[spec.batch_axis] = slice(int(a), int(b))
                part[k] = v[tuple(index)]
        parts.append(part)
    return parts


def source_inputs(batches: Any) -> list[InputSpec] | None:
    """The inputs a `BatchSource` was opened with (their batch axes as the user gave them), else None."""
    return list(batches.inputs) if isinstance(batches, BatchSource) else None


def _truth(value: Any) -> bool:
    """An If condition's value: its single element, as a bool."""
    array = np.asarray(value)
    if array.size != 1:
        raise CalibrationError(f"an If condition holds {array.size} values, not one")
    return bool(array.reshape(-1)[0])


class Branches:
    """Runs a model whose requested tensors lie in If branches: each part on a copy with the branches it takes
    inlined (`control_flow.fold_ifs`), so onnxruntime returns their tensors.

    Which branches a part takes is decided by running the model (its If conditions as outputs, level by level for
    nested Ifs), then checked on every later run: the conditions are outputs of the inlined copy too, and a part
    whose conditions differ from the copy's runs again on the copy of its own branches. `seen` records every value
    each condition took.
    """

    def __init__(self, model: Any, names: Sequence[str], open_session: Any) -> None:
        self.base, _ = fold_ifs(model, {})  # conditions TensorRT's parser folds (constants) are folded once
        self.names = list(names)
        self.open_session = open_session  # (model, outputs) -> an onnxruntime session
        self.probes: dict[tuple[tuple[str, bool], ...], tuple[Any, list[str]]] = {}
        self.variants: dict[tuple[tuple[str, bool], ...], tuple[Any, list[str], list[str]]] = {}
        self.key: tuple[tuple[str, bool], ...] | None = None
        self.seen: dict[str, set[bool]] = {}

    def decide(self, part: Mapping[str, np.ndarray]) -> tuple[tuple[str, bool], ...]:
        """The branches `part` takes: (condition tensor, value) for every If it reaches, outer Ifs first."""
        decisions: dict[str, bool] = {}
        while True:
            key = tuple(decisions.items())
            if key not in self.probes:
                model, undecided = fold_ifs(self.base, decisions)
                self.probes[key] = (self.open_session(model, undecided) if undecided else None, undecided)
            session, undecided = self.probes[key]
            if not undecided:
                return key
            values = session.run(undecided, dict(part))
            decisions.update({c: _truth(v) for c, v in zip(undecided, values)})

    def variant(self, key: tuple[tuple[str, bool], ...]) -> tuple[Any, list[str], list[str]]:
        """(session, the requested tensors it computes, the condition tensors it checks) for one choice of branches."""
        if key not in self.variants:
            model, _ = fold_ifs(self.base, dict(key))
            defined = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
            run = [n for n in self.names if n in defined]
            conds = [c for c, _ in key if c not in run]
            self.variants[key] = (self.open_session(model, run + conds), run, [c for c, _ in key])
        return self.variants[key]

    def run(self, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The requested tensors the part's branches compute (tensors of branches it does not take are absent)."""
        key = self.key if self.key is not None else self.decide(part)
        speculative = self.key is not None
        while True:
            session, run, conds = self.variant(key)
            wanted = run + [c for c in conds if c not in run]
            try:
                outputs = session.run(wanted, dict(part))
            except Exception:
                if not speculative:
                    raise
                key, speculative = self.decide(part), False  # the last part's branches do not fit this one
                continue
            values = dict(zip(wanted, outputs))
            del outputs
            if all(_truth(values[c]) == v for c, v in key):
                break
            if not speculative:
                raise CalibrationError("an If condition changed between deciding its branch and running it")
            key, speculative = self.decide(part), False
        self.key = key
        for c, v in key:
            self.seen.setdefault(c, set()).add(v)
        return {n: values[n] for n in run}


class Runner:
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
        self.prefetch_kernel = True  # the parts will be binned: a large batch starts loading the compiled kernel
        self.branches: Branches | None = None  # set when requested tensors lie in If branches

    @classmethod
    def open(
        cls, model: Any, tensors: Sequence[str] | None, *, threads: int | None, budget_bytes: int,
        name: str | None = None, optimization: str = "basic", inputs: Sequence[InputSpec] | None = None,
        optimize: bool = True,
    ) -> "Runner":
        """A runner over `tensors` (default: every tensor TensorRT calibrates, If branches included) of `model`, its
        session ready; `name` (default: the model's path, if given one) names the model in errors. `inputs`: the
        model's inputs with the batch axes to split along (default: the model's, `model_inputs`; a `BatchSource`
        carries those the user gave: `source_inputs`). `optimize=False` runs the graph as written (every
        onnxruntime optimisation off: Q/DQ models, see `ort_session`)."""
        role = name or describe(model, "the model")
        model = load_model(model)
        names, info = checked_tensors(model, tensors, role)
        types = {n: elem for n, (elem, _) in info.items()}
        specs = model_inputs(model)
        if inputs is not None:
            given = {s.name: s for s in inputs}
            if set(given) != {s.name for s in specs} or not all(s.same_input(given[s.name]) for s in specs):
                raise ValueError("inputs must be the model's inputs (batch axes aside)")
            specs = [given[s.name] for s in specs]
        runner = cls(None, names, specs, budget_bytes)
        runner.role = role
        runner.sample_bytes = sample_bytes(info, names, runner.specs)

        def open_session(m: Any, outputs: Sequence[str]) -> Any:
            return ort_session(m, outputs, types=types, threads=threads, role=role, optimization=optimization,
                               optimize=optimize)

        main = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
        if any(n not in main for n in runner.run_names):
            runner.branches = Branches(model, runner.run_names, open_session)
        else:
            runner.session = open_session(model, runner.run_names)
        return runner

    def split(self, batch: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The batch's inputs, cut into the parts it runs in."""
        return split_batch(batch, self.specs, self.part_size or 1 << 62)

    def run(self, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(name -> activation) for every calibrated tensor, for one part of a batch (with If branches: the tensors
        of the branches the part takes)."""
        try:
            if self.branches is not None:
                values = self.branches.run(part)
            else:
                outputs = self.session.run(self.run_names, part)
                values = dict(zip(self.run_names, outputs))
                del outputs
        except Exception as exc:
            fed = ", ".join(f"{n!r} {tuple(v.shape)} {v.dtype}" for n, v in part.items())
            raise CalibrationError(f"{self.role}: onnxruntime failed on inputs {fed}: {exc}") from None
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
        one = split_batch(batch, self.specs, 1)
        if len(one) == 1:
            self.part_size = None
            return 1
        per_sample = self.sample_bytes
        if per_sample is None:
            per_sample = sum(v.nbytes for v in self.run(one[0]).values())
        per_sample = max(1, per_sample)
        if self.prefetch_kernel:
            _kernel.prefetch(per_sample // 4 * len(one))  # a large batch: load the compiled kernel meanwhile
        self.part_size = max(1, self.budget // per_sample)
        count = len(self.split(batch))
        if count > 1:
            log.info("activations take %.0f MB per sample: running batches in %d parts of about %d samples",
                     per_sample / 2**20, count, -(-len(one) // count))
        return count


# ---------------------------------------------------------------------------------------------- running part of a model
def node_reads(node: Any) -> list[str]:
    """The tensors a node reads: its inputs, and the outer-scope names its If/Loop/Scan bodies use."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            names += _outer_reads(sub)
    return list(dict.fromkeys(names))


def graph_reads(graph: Any) -> list[list[str]]:
    """`node_reads` of every node of `graph`, by node index: computed once for the many cones and cuts of one graph
    (reading a node's attributes through protobuf costs more than the cuts' own work)."""
    return [node_reads(node) for node in graph.node]


def _outer_reads(graph: Any) -> list[str]:
    """Names a (sub)graph reads that it does not define itself (inputs, initializers, its nodes' outputs)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names = []
    for node in graph.node:
        names += [n for n in node_reads(node) if n not in defined]
        defined.update(o for o in node.output if o)
    names += [o.name for o in graph.output if o.name not in defined]
    return names


def readers_of(graph: Any, reads: Sequence[Sequence[str]] | None = None) -> dict[str, list[int]]:
    """Tensor name -> the indices of the nodes that read it (`node_reads`; `reads`: `graph_reads(graph)`, when
    known), for `downstream` to reuse."""
    readers: dict[str, list[int]] = {}
    for i, names in enumerate(graph_reads(graph) if reads is None else reads):
        for name in names:
            readers.setdefault(name, []).append(i)
    return readers


def downstream(graph: Any, seeds: Collection[int], readers: Mapping[str, Sequence[int]] | None = None) -> list[int]:
    """`seeds` (node indices) and every node that reads, directly or through others, what they make; graph order.
    `readers`: `readers_of(graph)`, when many cones of one graph are wanted (else it is built for this call)."""
    readers = readers_of(graph) if readers is None else readers
    seen = set(seeds)
    stack = list(seen)
    while stack:
        for out in graph.node[stack.pop()].output:
            for i in readers.get(out, ()):
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
    return sorted(seen)


def upstream(graph: Any, tensors: Collection[str], reads: Sequence[Sequence[str]] | None = None) -> list[int]:
    """The nodes needed to make `tensors` (node indices, graph order): their producers and those producers' own.
    `reads`: `graph_reads(graph)`, when known."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    seen: set[int] = set()
    stack = [producer[t] for t in tensors if t in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack += [producer[n] for n in (reads[i] if reads is not None else node_reads(graph.node[i])) if n in producer]
    return sorted(seen)


def cut_model(model: Any, nodes: Collection[int], outputs: Sequence[str], *, types: Mapping[str, int],
              inputs: Sequence[str] = (), reads: Sequence[Sequence[str]] | None = None) -> tuple[Any, list[int]]:
    """The sub-model that runs only `nodes` (indices into `model`'s graph, kept in graph order) and returns `outputs`,
    and the index in `model` of each of its nodes.

    Its graph inputs are `inputs` (kept even when unread, so a batch of the whole model can feed it) and then every
    tensor the nodes read that none of them makes and that is not an initializer, in the order first read: those are
    fed from another run of the model. Constant nodes whose values the nodes read come along. `types` gives the
    element types of the new graph inputs (`model.tensor_types`); `reads`: `graph_reads(model.graph)`, when known.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    if reads is None:
        reads = graph_reads(graph)
    chosen = set(nodes)
    constants = {out: i for i, n in enumerate(graph.node) if n.op_type == "Constant" for out in n.output}
    for i in list(chosen):
        chosen.update(constants[n] for n in reads[i] if n in constants)
    order = sorted(chosen)
    produced = {o for i in order for o in graph.node[i].output if o}
    initializers = {t.name: t for t in graph.initializer}
    fed = list(dict.fromkeys(inputs))
    used_inits: dict[str, Any] = {}
    for i in order:
        for name in reads[i]:
            if name in produced or name in fed:
                continue
            if name in initializers:
                used_inits.setdefault(name, initializers[name])
            else:
                fed.append(name)
    declared = {vi.name: vi for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
    missing = [n for n in list(fed) + list(outputs) if n not in declared and n not in types]
    if missing:
        raise ModelError(f"cannot cut the model at {', '.join(repr(n) for n in missing[:5])}: no known type")

    def info(name: str) -> Any:
        if name in declared and declared[name].type.HasField("tensor_type"):
            return declared[name]
        return helper.make_tensor_value_info(name, types[name], None)

    unmade = [n for n in outputs if n not in produced and n not in fed]
    if unmade:
        raise ModelError(f"cannot cut the model: {', '.join(repr(n) for n in unmade[:5])} made by no node kept")
    cut = onnx.ModelProto()
    cut.ir_version = model.ir_version
    cut.opset_import.extend(model.opset_import)
    cut.functions.extend(model.functions)
    sub = cut.graph  # filled in place: building a graph and copying it in copied every weight twice
    sub.name = f"{graph.name or 'graph'}_cut"
    sub.node.extend(graph.node[i] for i in order)
    sub.input.extend(info(n) for n in fed)
    sub.output.extend(info(n) for n in outputs)
    sub.initializer.extend(used_inits.values())
    return cut, order


class SuffixRunner:
    """Runs a cut model (`cut_model`) on the tensors another run fetched: a variant of a model that differs only
    downstream of a change costs the nodes the change reaches, not the whole model."""

    def __init__(self, session: Any, inputs: Sequence[str], outputs: Sequence[str], role: str) -> None:
        self.session = session
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.role = role

    @classmethod
    def open(cls, cut: Any, *, threads: int | None, role: str = "the model's suffix",
             optimize: bool = False, arena: bool = True) -> "SuffixRunner":
        """A runner over `cut`'s graph outputs; `optimize=False` (default) runs the graph as written; `arena=False`
        frees its activations after each run (many runners held at once)."""
        inputs = [vi.name for vi in cut.graph.input if vi.name not in {t.name for t in cut.graph.initializer}]
        outputs = [o.name for o in cut.graph.output]
        session = ort_session(cut, (), optimize=optimize, threads=threads, role=role, arena=arena)
        return cls(session, inputs, outputs, role)

    def run(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(output -> value) from `values`, which must hold every input of the cut (a reference run's tensors)."""
        try:
            feed = {n: values[n] for n in self.inputs}
        except KeyError as exc:
            raise CalibrationError(f"{self.role}: no value for its input {exc} in the reference run") from None
        try:
            got = self.session.run(self.outputs, feed)
        except Exception as exc:  # onnxruntime's own exception types
            fed = ", ".join(f"{n!r} {tuple(v.shape)} {v.dtype}" for n, v in list(feed.items())[:5])
            raise CalibrationError(f"{self.role}: onnxruntime failed on inputs {fed}: {exc}") from None
        return dict(zip(self.outputs, got))


def global_maxima(runner: Runner, batches: Iterable[Any]) -> dict[str, float]:
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


def batch_maxima(runner: Runner, batches: Iterable[Any]) -> Iterator[dict[str, float]]:
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
