"""If, Loop and Scan bodies: which of their tensors TensorRT names, and calibrating those onnxruntime can reach.

What TensorRT's ONNX parser does with them (onnx/onnx-tensorrt 10.1 GA, commit 96e7811: `onnxOpImporters.cpp`,
`ConditionalHelpers.cpp`, `ImporterContext.cpp`; 8.6 GA's `builtin_op_importers.cpp` does the same;
docs/how-tensorrt-calibrates.md, section 6):

- `If` whose condition is an initializer or a Constant output (`importIf`: `cond.is_weights()`): only the taken
  branch is parsed, inline (`parseGraph` in a `NameScope`). Its tensors are ordinary network tensors under their
  ONNX names, and the branch outputs are then registered under the If's output names (`parseNode` renames each
  output tensor), so the branch output names name no TensorRT tensor. The other branch does not exist in the
  network.
- any other `If`: an `IIfConditional`; both branches are parsed (`importSubgraph`, then-branch first) and their
  tensors keep their ONNX names; the If's outputs are the `IIfConditionalOutputLayer` outputs, distinct tensors
  named after the If's outputs (branch outputs keep their own names).
- `Loop` and `Scan`: an `ILoop` whose body is parsed once (`importLoop`, `importScan`); body tensors keep their
  ONNX names and hold one iteration's values at a time.

TensorRT makes names unique with a parser-wide counter (`ImporterContext::registerTensor` -> `generateUniqueName`:
a repeated name becomes `name_N`), so a name used twice in a model cannot be predicted; those tensors are reported.

onnxruntime returns subgraph values only when the graph is rewritten: an If whose condition is decided is replaced
by its taken branch (`fold_ifs`). The condition's value comes from running the model (`runner.Branches`) and is
checked again on every run, so data whose condition changes between batches runs each batch on the branch it takes.
Loop and Scan bodies run once per iteration and onnxruntime exposes no per-iteration value: not calibrated, reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "CONTROL_FLOW_OPS",
    "BodyTensor",
    "subgraph_reads",
    "body_tensors",
    "reachable_body_tensors",
    "constant_condition",
    "fold_ifs",
    "main_ifs",
    "uncovered_reasons",
    "if_conditions",
    "shape_conditions",
    "missing_bodies",
    "grouped",
    "summary_lines",
]

log = logging.getLogger(__name__)

CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


@dataclass(frozen=True)
class BodyTensor:
    """A tensor TensorRT names inside an If branch or a Loop/Scan body.

    `path` is the chain of (node label, attribute) from the main graph to the body holding it, e.g.
    (("node_cond__1", "else_branch"),); `in_loop` is True when any body on the path is a Loop or Scan (onnxruntime
    cannot expose it); `duplicate` when its name is used more than once in the model (TensorRT renames repeats).
    """

    name: str
    path: tuple[tuple[str, str], ...]
    in_loop: bool = False
    duplicate: bool = False

    @property
    def where(self) -> str:
        """The body in words: "else_branch of If 'x'", "body of Loop 'y' (in then_branch of If 'x')"."""
        parts = [f"{attr} of {label}" for label, attr in self.path]
        text = parts[-1]
        if len(parts) > 1:
            text += " (in " + ", in ".join(reversed(parts[:-1])) + ")"
        return text


def _label(node: Any, index: int) -> str:
    """A node in words: its name, or for an unnamed node its first output (unique, and kept by `fold_ifs`)."""
    if node.name:
        return f"{node.op_type} {node.name!r}"
    return f"{node.op_type} producing {node.output[0]!r}" if node.output else f"{node.op_type} #{index}"


def _subgraphs(node: Any) -> Iterator[tuple[str, Any]]:
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield attr.name, g


def subgraph_reads(graph: Any) -> set[str]:
    """Every name that nodes inside `graph`'s subgraphs read (at any depth), outer-scope names included: what a
    rewrite of `graph` must keep (initializers a branch uses, tensors a body reads from outside)."""
    names: set[str] = set()
    for node in graph.node:
        for _, sub in _subgraphs(node):
            for inner in sub.node:
                names.update(n for n in inner.input if n)
            names.update(o.name for o in sub.output)
            names |= subgraph_reads(sub)
    return names


def constant_condition(graph: Any, name: str, outer: Mapping[str, Any] | None = None) -> bool | None:
    """The value of an If condition TensorRT's parser folds (an initializer or a Constant output of this graph or an
    enclosing one, `outer`), else None."""
    from onnx import numpy_helper

    tensor = _constant_tensor(graph, name) or (outer or {}).get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return bool(value.reshape(-1)[0]) if value.size == 1 else None


def _constant_tensor(graph: Any, name: str) -> Any:
    for t in graph.initializer:
        if t.name == name:
            return t
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    return a.t
    return None


def _constants_of(graph: Any) -> dict[str, Any]:
    """name -> TensorProto of the graph's initializers and Constant outputs (what an inner If may read)."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[node.output[0]] = a.t
    return out


def _all_names(graph: Any) -> Iterator[str]:
    """Every value name a graph defines (inputs, initializers, node outputs), its subgraphs' too, repeats kept."""
    initializers = {t.name for t in graph.initializer}
    yield from (i.name for i in graph.input if i.name not in initializers)
    yield from initializers
    for node in graph.node:
        yield from (o for o in node.output if o)
        for _, sub in _subgraphs(node):
            yield from _all_names(sub)


def _calibrated_in(graph: Any, types: Mapping[str, int], floats: frozenset[int], *, skip: set[str]) -> list[str]:
    """The tensors of one body TensorRT would calibrate, by the main graph's rule (`model.calibrated_from_types`):
    float outputs of standard nodes other than Constant that something reads (a node, a deeper body, an output)."""
    read = {n for node in graph.node for n in node.input} | {o.name for o in graph.output} | subgraph_reads(graph)
    initializers = {t.name for t in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for out in node.output:
            if out and out not in initializers and out in read and out not in skip and types.get(out) in floats:
                names.append(out)
    return names


def body_tensors(model: Any, types: Mapping[str, int], floats: frozenset[int]) -> list[BodyTensor]:
    """Every tensor TensorRT's parser names inside If branches and Loop/Scan bodies and would calibrate, in import
    order (then-branch before else-branch, outer before inner); `types` types them (`model.tensor_types`).

    An If whose condition is a constant contributes its taken branch only, without the branch outputs (TensorRT
    renames them to the If's outputs); Loop/Scan bodies add their float state and scan inputs (TensorRT's
    recurrence and iterator outputs carry the body input names).
    """
    counts: dict[str, int] = {}
    for name in _all_names(model.graph):
        counts[name] = counts.get(name, 0) + 1
    found: list[BodyTensor] = []

    def walk(graph: Any, path: tuple[tuple[str, str], ...], in_loop: bool, outer: dict[str, Any]) -> None:
        visible = {**outer, **_constants_of(graph)}
        for index, node in enumerate(graph.node):
            if node.op_type not in CONTROL_FLOW_OPS or node.domain not in ("", "ai.onnx"):
                continue
            label = _label(node, index)
            bodies = dict(_subgraphs(node))
            loop = in_loop or node.op_type != "If"
            if node.op_type == "If":
                value = constant_condition(graph, node.input[0], visible) if node.input else None
                taken = ["then_branch", "else_branch"] if value is None else ["then_branch" if value else "else_branch"]
            else:
                taken = ["body"]
            for attr in taken:
                body = bodies.get(attr)
                if body is None:
                    continue
                here = path + ((label, attr),)
                skip: set[str] = set()
                if node.op_type == "If" and value is not None:
                    skip = {o.name for o in body.output}
                names = _calibrated_in(body, types, floats, skip=skip)
                if node.op_type != "If":
                    first = 2 if node.op_type == "Loop" else 0
                    names = [i.name for i in body.input[first:] if types.get(i.name) in floats] + names
                for name in dict.fromkeys(names):
                    found.append(BodyTensor(name, here, loop, counts.get(name, 0) > 1))
                walk(body, here, loop, visible)

    walk(model.graph, (), False, {})
    return found


def reachable_body_tensors(body: Iterable[BodyTensor]) -> list[str]:
    """The body tensors onnxruntime can be made to return (If branches outside any Loop/Scan, unique names)."""
    return [b.name for b in body if not b.in_loop and not b.duplicate]


def main_ifs(graph: Any) -> list[tuple[int, Any]]:
    """(index, node) of the main graph's If nodes."""
    return [(i, n) for i, n in enumerate(graph.node) if n.op_type == "If" and n.domain in ("", "ai.onnx")]


def fold_ifs(model: Any, decisions: Mapping[str, bool]) -> tuple[Any, list[str]]:
    """A copy of `model` in which every main-graph If whose condition is constant (as TensorRT folds it) or decided
    in `decisions` (condition tensor -> value) is replaced by its taken branch, repeatedly (a branch's Ifs become
    main-graph Ifs); returns the copy and the condition tensors of the Ifs left undecided.

    The taken branch's nodes and initializers move into the main graph in the If's place, and an Identity gives
    each branch output the If's output name, so both names stay (as in TensorRT's IIfConditional).
    """
    import onnx
    from onnx import helper

    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    while True:
        visible = _constants_of(graph)
        replaced = False
        nodes: list[Any] = []
        for node in list(graph.node):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input:
                nodes.append(node)
                continue
            cond = node.input[0]
            value = constant_condition(graph, cond, visible)
            if value is None:
                value = decisions.get(cond)
            if value is None:
                nodes.append(node)
                continue
            branch = next(g for name, g in _subgraphs(node) if name == ("then_branch" if value else "else_branch"))
            graph.initializer.extend(branch.initializer)
            nodes.extend(branch.node)
            for out, branch_out in zip(node.output, branch.output):
                if out:
                    nodes.append(helper.make_node("Identity", [branch_out.name], [out],
                                                  name=f"{out}/taken_{'then' if value else 'else'}_branch"))
            replaced = True
        del graph.node[:]
        graph.node.extend(nodes)
        if not replaced:
            break
    undecided = list(dict.fromkeys(n.input[0] for _, n in main_ifs(graph) if n.input))
    return work, undecided


def _where(path: tuple[tuple[str, str], ...]) -> str:
    return BodyTensor("", path).where


def missing_bodies(body: Sequence[BodyTensor], missing: Iterable[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each missing body tensor, the outermost body on its path whose tensors (nested bodies included) are all
    missing: an untaken branch is one finding, not one per If inside it."""
    gone = set(missing)
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for b in body:
        if b.name not in gone:
            continue
        for k in range(1, len(b.path) + 1):
            prefix = b.path[:k]
            if all(o.name in gone for o in body if o.path[:k] == prefix):
                out[b.name] = prefix
                break
        else:
            out[b.name] = b.path
    return out


def uncovered_reasons(body: Sequence[BodyTensor], covered: Iterable[str],
                      conditions: Mapping[str, set[bool]] | None = None,
                      owners: Mapping[str, str] | None = None,
                      shape_only: Iterable[str] | None = None) -> dict[str, str]:
    """Why each body tensor not in `covered` has no calibration entry, by name.

    `conditions`: the values each If condition took over the calibration runs; `owners`: If label -> its
    condition tensor, to say which value the data never gave; `shape_only`: conditions computed from tensor shapes
    only (`shape_conditions`), whose other branch only data of other shapes reaches.
    """
    shape_only = set(shape_only or ())
    done = set(covered)
    reasons: dict[str, str] = {}
    bodies = missing_bodies(body, [b.name for b in body if b.name not in done])
    for b in body:
        if b.name in done or b.name in reasons:
            continue
        if not b.duplicate and not b.in_loop:
            b = BodyTensor(b.name, bodies[b.name])
        if b.duplicate:
            reasons[b.name] = (
                f"in the {b.where}: its name is used more than once in the model, and TensorRT renames repeats "
                "name_N with a counter shared by the whole parse, so no cache name can be predicted for it"
            )
        elif b.in_loop:
            reasons[b.name] = (
                f"in the {b.where}: a Loop/Scan body runs once per iteration (TensorRT imports it as an ILoop) "
                "and onnxruntime returns no per-iteration values, so trt-calib cannot calibrate it"
            )
        else:
            label, attr = b.path[-1]
            text = f"in the {b.where}, which no calibration batch took"
            cond = (owners or {}).get(label)
            seen = (conditions or {}).get(cond or "", set())
            if cond and seen:
                text += f" (its condition {cond!r} was {' and '.join(str(v) for v in sorted(seen))} in every run)"
            if cond and cond in (shape_only or ()):
                hint = ("its condition depends on tensor shapes only: only data of other shapes (another batch "
                        "size or length, where the model admits one) takes it")
            else:
                hint = "add calibration data that takes this branch"
            reasons[b.name] = f"{text}. Hint: {hint}"
    return reasons


def shape_conditions(model: Any) -> set[str]:
    """The If conditions (at any depth) computed from tensor shapes and constants only (Shape, Size, initializers,
    Constant outputs): silero's batch-size tests, which no data of one shape can take both ways."""
    producers: dict[str, Any] = {}
    constants: set[str] = set()

    def index(graph: Any) -> None:
        constants.update(t.name for t in graph.initializer)
        for node in graph.node:
            for out in node.output:
                producers[out] = node
            for _, sub in _subgraphs(node):
                index(sub)

    index(model.graph)
    memo: dict[str, bool] = {}

    def shapes_only(name: str, depth: int = 0) -> bool:
        if name in memo:
            return memo[name]
        memo[name] = False  # cycles (none in a valid model) and depth limits end as "depends on data"
        node = producers.get(name)
        if name in constants:
            result = True
        elif node is None or depth > 200:
            result = False
        elif node.op_type in ("Shape", "Size", "Constant", "ConstantOfShape"):
            result = node.op_type != "ConstantOfShape" or all(shapes_only(i, depth + 1) for i in node.input if i)
        else:
            inputs = [i for i in node.input if i]
            result = bool(inputs) and all(shapes_only(i, depth + 1) for i in inputs) and not any(True for _ in _subgraphs(node))
        memo[name] = result
        return result

    return {cond for cond in if_conditions(model).values() if shapes_only(cond)}


def if_conditions(model: Any) -> dict[str, str]:
    """If label (as `BodyTensor.path` names it) -> its condition tensor, for every If at any depth."""
    out: dict[str, str] = {}

    def walk(graph: Any) -> None:
        for index, node in enumerate(graph.node):
            if node.op_type == "If" and node.input:
                out[_label(node, index)] = node.input[0]
            for _, sub in _subgraphs(node):
                walk(sub)

    walk(model.graph)
    return out


def grouped(reasons: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """(reason, tensors) for each distinct reason, in first-seen order: one line per body for messages."""
    groups: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        groups.setdefault(reason, []).append(name)
    return list(groups.items())


def summary_lines(reasons: Mapping[str, str], limit: int = 3, bodies: int = 6) -> list[str]:
    """One line per reason (at most `bodies`, then one line for the rest): how many tensors, a few names, why."""
    groups = grouped(reasons)
    lines = []
    for reason, names in groups[:bodies]:
        shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
        lines.append(f"{len(names)} tensor(s) ({shown}) {reason}")
    rest = groups[bodies:]
    if rest:
        lines.append(f"{sum(len(n) for _, n in rest)} more tensor(s) in {len(rest)} other bodies (--json lists each "
                     "with its reason)")
    return lines
