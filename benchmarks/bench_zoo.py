"""The zoo (samples/zoo/: PP-OCR det/rec/cls, YOLOv8n, silero VAD) through trt-calib and onnxruntime's quantizer.

    python3 benchmarks/bench_zoo.py                       # every model (long: tens of minutes on 2 cores)
    python3 benchmarks/bench_zoo.py --quick               # smoke test: 2 calibration batches, 2 held-out batches
    python3 benchmarks/bench_zoo.py --only ppocr_rec yolov8n_320 --timeout 1200 --json zoo.json

Per model it prints: Q/DQ coverage (weighted nodes quantised, and how many of the model's Conv/ConvTranspose/Gemm/
MatMul sit inside If/Loop/Scan bodies), the calibrate time (`trt_calib.ort.collect.calibrate`, entropy2) against
plain inference over the same calibration batches in the same process (onnxruntime, default optimisation, model
outputs only), the peak RSS of that process, and the model's task metric (samples/zoo/metrics.py, INT8 against
FP32 on the held-out set) for:

- entropy2, minmax, mse: one histogram collection, three threshold rules, `quantize_model` (TensorRT placement);
- best per tensor: for each tensor the one of those three thresholds with the highest SQNR of that tensor alone
  fake-quantised over the calibration data (as benchmarks/bench_accuracy.py picks it);
- entropy2 with the top 3 units of `trt_calib.qdq.sensitivity` left in float (ranked on the first 8 calibration
  samples, or the VAD data script's first batch, never on the held-out data the metric is measured on);
- onnxruntime's `quantize_static` (QDQ, per-channel, int8 symmetric, MinMax) on the same calibration batches.

Each contender runs in its own subprocess under a time limit; one that fails, is refused or runs out of time prints
its one-line reason in the table, and the others go on. The Q/DQ models run in onnxruntime with every graph
optimisation off (as written). The zoo is built by samples/zoo/build.py (run first if artifacts/zoo/ is missing).
Not in CI. Timings on a shared machine are not idle figures: the machine's load is printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import announce, start_line  # noqa: E402  benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "artifacts" / "zoo"
METRICS = REPO / "samples" / "zoo" / "metrics.py"
ALGORITHMS = ("entropy2", "minmax", "mse")
CONTENDERS = ("entropy2", "minmax", "mse", "best", "exclude3", "ort")
LABELS = {"entropy2": "entropy2 (TensorRT)", "minmax": "minmax", "mse": "mse", "best": "best per tensor",
          "exclude3": "entropy2, top-3 sensitive in float", "ort": "ORT quantize_static MinMax"}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")  # weighted too; listed apart from the Q/DQ count
QUICK_BATCHES = 2
SENSITIVITY_SAMPLES = 8


# ---------------------------------------------------------------------------------------------- data and models
def manifest(zoo: Path) -> dict[str, Any]:
    return json.loads((zoo / "manifest.json").read_text())["models"]


def sources(zoo: Path, name: str, entry: dict[str, Any], split: str, quick: bool, *, batch_size: int | None = None,
            max_batches: int | None = None) -> Any:
    """The split's batches as trt-calib's data layer opens them (the npz, or the VAD's data script, whose batches
    are its own)."""
    from trt_calib.ort.data import open_source
    from trt_calib.ort.model import model_inputs

    folder = zoo / name
    specs = model_inputs(folder / "model.onnx")
    spec = entry["data"][split]
    limit = max_batches or (QUICK_BATCHES if quick else None)
    if spec.endswith(".npz"):
        return open_source(folder / spec, specs, batch_size=batch_size or entry["batch_size"],
                           last_batch="drop" if split == "calib" else "keep", max_batches=limit)
    return open_source(f"{folder / spec}", specs, max_batches=limit)


def raw_batches(zoo: Path, name: str, entry: dict[str, Any], split: str, quick: bool) -> list[dict[str, np.ndarray]]:
    """The same batches read without trt-calib (np.load, or the data script called directly): plain inference,
    onnxruntime's quantizer and every metric evaluation get them, so a refusal by trt-calib's data checks shows in
    our rows only."""
    import importlib.util

    folder = zoo / name
    spec = entry["data"][split]
    limit = QUICK_BATCHES if quick else None
    if spec.endswith(".npz"):
        with np.load(folder / spec, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        size, count = entry["batch_size"], len(next(iter(arrays.values())))
        stop = count - count % size if split == "calib" else count
        out = [{k: v[i:i + size] for k, v in arrays.items()} for i in range(0, stop, size)]
        return out[:limit]
    path, _, function = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_bench_zoo_{name}_data", folder / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    out = []
    for batch in getattr(module, function or "load_data")():
        out.append(batch)
        if limit is not None and len(out) >= limit:
            break
    return out


def _graphs(graph: Any, nested: bool = False) -> Iterator[tuple[Any, bool]]:
    """The graph and every If/Loop/Scan body in it, with whether it is a body."""
    import onnx

    yield graph, nested
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub, True)


# Ops a Q/DQ pair commutes with (TensorRT propagates Q/DQ through them): a tensor they make from dequantized inputs
# reaches the next layer as int8. Concat needs every input dequantized, the others their data input.
PASS_THROUGH_OPS = ("Concat", "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice",
                    "Split", "Identity")


def weighted_coverage(model: Any) -> dict[str, int]:
    """Conv/ConvTranspose/Gemm/MatMul nodes in the main graph and in If/Loop/Scan bodies, and how many of them get
    both their first two inputs as int8: from a DequantizeLinear, directly or through ops Q/DQ commutes with
    (PASS_THROUGH_OPS). Counted from the graph itself, so a tool that looks only at the main graph cannot hide
    the bodies."""
    from trt_calib.ort.model import load_model

    model = load_model(model)
    graphs = list(_graphs(model.graph))
    dequantized = {o for g, _ in graphs for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    for graph, _ in graphs:  # nodes are in topological order within a graph
        for node in graph.node:
            if node.op_type not in PASS_THROUGH_OPS or not node.input:
                continue
            data = [i for i in node.input if i] if node.op_type == "Concat" else [node.input[0]]
            if all(i in dequantized for i in data):
                dequantized.update(node.output)
    out = {"main": 0, "nested": 0, "quantized": 0, "quantized_nested": 0, "dq_nodes": 0, "recurrent": 0,
           "recurrent_nested": 0}
    for graph, nested in graphs:
        for node in graph.node:
            out["dq_nodes"] += node.op_type == "DequantizeLinear"
            if node.op_type in RECURRENT_OPS:
                out["recurrent_nested" if nested else "recurrent"] += 1
            if node.op_type not in WEIGHTED_OPS:
                continue
            out["nested" if nested else "main"] += 1
            if len(node.input) >= 2 and node.input[0] in dequantized and node.input[1] in dequantized:
                out["quantized_nested" if nested else "quantized"] += 1
    return out


def coverage_note(c: dict[str, int]) -> str:
    total = c["main"] + c["nested"]
    text = f"int8 {c['quantized'] + c['quantized_nested']}/{total} weighted"
    if c["nested"]:
        text += f" ({c['quantized_nested']}/{c['nested']} in If/Loop bodies)"
    if total and not c["quantized"] + c["quantized_nested"]:
        text += ": NOTHING runs in int8, the metric measures FP32"
    return text


def task_metric(fp32_path: Path, int8_model: Any, batches: list[dict[str, np.ndarray]], metric_spec: str
                ) -> tuple[float, int]:
    """The metric over the held-out batches: FP32 and INT8 (every ORT optimisation off) on each batch."""
    from trt_calib.ort.model import load_model, ort_session
    from trt_calib.ort.user_metric import MetricAccumulator, load_metric

    fp32 = load_model(fp32_path)
    outputs = [o.name for o in fp32.graph.output]
    s32 = ort_session(fp32, outputs, optimize=False, role="FP32 model")
    s8 = ort_session(load_model(int8_model), outputs, optimize=False, role="INT8 model")
    acc = MetricAccumulator(load_metric(metric_spec))
    count = 0
    for batch in batches:
        a = dict(zip(outputs, s32.run(outputs, batch)))
        b = dict(zip(outputs, s8.run(outputs, batch)))
        first = next(iter(batch.values()))
        acc.add(a, b, batch, samples=int(first.shape[0]) if first.ndim else 1)
        count += 1
    return acc.result(), count


# ---------------------------------------------------------------------------------------------- workers
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def work_calibrate(zoo: Path, name: str, entry: dict[str, Any], quick: bool, workdir: Path) -> dict[str, Any]:
    """Plain inference, then calibrate (entropy2) on the same batches in this process; the three amax sets (raw and
    tied) for the other workers; coverage of the entropy2 Q/DQ model."""
    import onnxruntime as ort

    from trt_calib.core.result import amax_from_histograms
    from trt_calib.errors import TrtCalibError
    from trt_calib.ort.collect import calibrate, tie_scales
    from trt_calib.ort.model import load_model
    from trt_calib.qdq import quantize_model

    path = zoo / name / "model.onnx"
    model = load_model(path)
    raw_calib = raw_batches(zoo, name, entry, "calib", quick)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    for batch in raw_calib:
        session.run(None, batch)
    plain = time.perf_counter() - t0
    del session, raw_calib
    batches = sources(zoo, name, entry, "calib", quick)  # read and checked by trt-calib, as the CLI does
    t0 = time.perf_counter()
    result = calibrate(model, batches, algorithm="entropy2")
    seconds = time.perf_counter() - t0
    raw = {a: amax_from_histograms(result.histograms, a)[0] for a in ALGORITHMS}
    tied = {a: tie_scales(model, raw[a])[0] for a in ALGORITHMS}
    (workdir / "amax.json").write_text(json.dumps({"raw": raw, "tied": tied}))
    out: dict[str, Any] = {"plain_s": plain, "calibrate_s": seconds, "ratio": seconds / plain if plain else math.nan,
                           "batches": result.num_batches, "calibrated_tensors": len(result.amax),
                           "peak_rss_mb": peak_rss_mb()}
    try:
        qdq, coverage = quantize_model(model, tied["entropy2"])
        out.update(coverage=coverage.summary(), activation_pairs=len(coverage.activations),
                   qdq=weighted_coverage(qdq))
    except TrtCalibError as exc:
        out["coverage_error"] = f"quantize refused ({type(exc).__name__}): {_one_line(str(exc))}"
    return out


def work_qdq(zoo: Path, name: str, entry: dict[str, Any], quick: bool, workdir: Path, contender: str
             ) -> dict[str, Any]:
    """One of our Q/DQ models (entropy2, minmax, mse, best, exclude3), made from the calibrate worker's amax, and
    its task metric on the held-out set."""
    from trt_calib.ort.collect import tie_scales
    from trt_calib.ort.model import load_model
    from trt_calib.qdq import quantize_model

    path = zoo / name / "model.onnx"
    model = load_model(path)
    amax = json.loads((workdir / "amax.json").read_text())
    note = ""
    t0 = time.perf_counter()
    exclude = None
    if contender in ALGORITHMS:
        scales = amax["tied"][contender]
    elif contender == "best":
        from trt_calib.ort.evaluate import best_per_tensor, threshold_sqnr

        raw = amax["raw"]
        _, coverage = quantize_model(model, amax["tied"]["entropy2"])
        candidates = {t: {a: raw[a][t] for a in ALGORITHMS} for t in coverage.activations if t in raw["mse"]}
        sqnr = threshold_sqnr(model, sources(zoo, name, entry, "calib", quick), candidates)
        best, picks = best_per_tensor(raw, sqnr, ALGORITHMS)
        scales = tie_scales(model, best)[0]
        note = "picks: " + ", ".join(f"{a} {n}" for a, n in picks.items())
    elif contender == "exclude3":
        from trt_calib.qdq.sensitivity import sensitivity

        scales = amax["tied"]["entropy2"]
        # sensitivity builds and runs about four Q/DQ variants per unit: it gets the first SENSITIVITY_SAMPLES
        # calibration samples (a data script's first batch), never the held-out ones the metric is measured on
        samples = 2 if quick else SENSITIVITY_SAMPLES
        calib = sources(zoo, name, entry, "calib", quick, batch_size=min(samples, entry["batch_size"]), max_batches=1)
        result = sensitivity(model, scales, calib, max_keep=3)
        top = [u.node for u in result.units[:3]]
        exclude = {n: "top-3 sensitivity" for n in top}
        note = f"in float: {', '.join(top)} ({result.metric.name} error)"
    else:
        raise ValueError(contender)
    qdq, _ = quantize_model(model, scales, exclude=exclude)
    made = time.perf_counter() - t0
    value, batches = task_metric(path, qdq, raw_batches(zoo, name, entry, "heldout", quick), _metric(entry))
    note = "; ".join(x for x in (coverage_note(weighted_coverage(qdq)), note) if x)
    return {"metric": value, "made_s": made, "heldout_batches": batches, "note": note, "peak_rss_mb": peak_rss_mb()}


def work_ort(zoo: Path, name: str, entry: dict[str, Any], quick: bool, workdir: Path) -> dict[str, Any]:
    """onnxruntime's quantize_static (QDQ, per-channel, int8 symmetric weights and activations, MinMax) on the same
    calibration batches, and its task metric."""
    import contextlib

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    path = zoo / name / "model.onnx"
    batches = raw_batches(zoo, name, entry, "calib", quick)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[dict[str, np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(batches)

    out = workdir / "ort_qdq.onnx"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its calibrators print progress
        quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    made = time.perf_counter() - t0
    qdq = onnx.load(str(out))
    coverage = weighted_coverage(qdq)
    value, count = task_metric(path, qdq, raw_batches(zoo, name, entry, "heldout", quick), _metric(entry))
    note = f"{coverage['dq_nodes']} DequantizeLinear, {coverage_note(coverage)}"
    return {"metric": value, "made_s": made, "heldout_batches": count, "note": note, "peak_rss_mb": peak_rss_mb()}


def _metric(entry: dict[str, Any]) -> str:
    return f"{METRICS}:{entry['family']}"


def worker(args: argparse.Namespace) -> int:
    """Run one contender; the result goes to --result as JSON, a failure to stderr as one line."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    from trt_calib.errors import TrtCalibError

    zoo, workdir = Path(args.zoo), Path(args.workdir)
    entry = manifest(zoo)[args.model]
    try:
        if args.worker == "calibrate":
            out = work_calibrate(zoo, args.model, entry, args.quick, workdir)
        elif args.worker == "ort":
            out = work_ort(zoo, args.model, entry, args.quick, workdir)
        else:
            out = work_qdq(zoo, args.model, entry, args.quick, workdir, args.worker)
    except TrtCalibError as exc:
        print(f"REFUSED {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # the bench reports any failure as a row, never a crash
        print(f"FAILED {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 70
    Path(args.result).write_text(json.dumps(out, default=float))
    return 0


def _one_line(text: str, width: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------- the parent
@dataclass
class Outcome:
    contender: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def run_contender(args: argparse.Namespace, model: str, contender: str, workdir: Path) -> Outcome:
    """One contender in its own process, under --timeout; its one-line reason when it does not finish well."""
    result = workdir / f"{contender}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, "--model", model,
               "--zoo", str(args.zoo), "--workdir", str(workdir), "--result", str(result)]
    if args.quick:
        command.append("--quick")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return Outcome(contender, False, reason=f"timed out after {args.timeout:.0f} s", seconds=args.timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode == 0 and result.is_file():
        return Outcome(contender, True, json.loads(result.read_text()), seconds=seconds)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("REFUSED", "FAILED"))]
    if lines:
        reason = lines[-1]
    else:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        reason = f"exit {proc.returncode}: " + _one_line(tail[-1] if tail else "(no message)")
    return Outcome(contender, False, reason=reason, seconds=seconds)


def _pct(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def print_model(name: str, entry: dict[str, Any], graph: dict[str, int], outcomes: dict[str, Outcome]) -> None:
    print(f"\n{name}: {entry['description']}")
    print(f"  metric: samples/zoo/metrics.py:{entry['family']} (INT8 vs FP32, held-out set, higher is better)")
    where = f" ({graph['nested']} of them inside If/Loop/Scan bodies)" if graph["nested"] else ""
    recurrent = graph["recurrent"] + graph["recurrent_nested"]
    rnn = (f", {recurrent} LSTM/GRU/RNN ({graph['recurrent_nested']} inside bodies), not counted above"
           if recurrent else "")
    print(f"  model: {graph['main'] + graph['nested']} Conv/ConvTranspose/Gemm/MatMul{where}{rnn}")
    cal = outcomes["calibrate"]
    if cal.ok:
        d = cal.data
        if "qdq" in d:
            print(f"  Q/DQ coverage (entropy2): {coverage_note(d['qdq'])}, {d['activation_pairs']} activation pairs; "
                  f"quantize says: {d['coverage']}")
        else:
            print(f"  Q/DQ coverage: {d['coverage_error']}")
        print(f"  calibrate (entropy2): {d['calibrated_tensors']} tensors, {d['calibrate_s']:.1f} s / plain "
              f"inference {d['plain_s']:.1f} s = {d['ratio']:.2f}x on {d['batches']} batches; peak RSS "
              f"{d['peak_rss_mb']:.0f} MiB")
    else:
        print(f"  calibrate: {cal.reason}")
    width = max(len(v) for v in LABELS.values())
    print(f"  {'contender':<{width}}  {'metric':>7}  {'made in':>8}  note")
    for contender in CONTENDERS:
        o = outcomes.get(contender)
        if o is None:
            continue
        if o.ok:
            print(f"  {LABELS[contender]:<{width}}  {_pct(o.data['metric']):>7}  {o.data['made_s']:7.1f}s  "
                  f"{o.data.get('note', '')}")
        else:
            print(f"  {LABELS[contender]:<{width}}  {'-':>7}  {'':>8}  {o.reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ZOO, help=f"the built zoo (default {ZOO})")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="these models only (names in the manifest)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_BATCHES} calibration and {QUICK_BATCHES} held-out batches, "
                        "sensitivity on 2 samples")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender (default 1800)")
    parser.add_argument("--json", metavar="OUT.json", help="also write every outcome as JSON")
    parser.add_argument("--worker", choices=("calibrate", *CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not (args.zoo / "manifest.json").is_file():
        print(f"{args.zoo} has no manifest.json: building the zoo (samples/zoo/build.py)", file=sys.stderr)
        subprocess.run([sys.executable, str(REPO / "samples" / "zoo" / "build.py"), "--out", str(args.zoo)],
                       check=True)
    models = manifest(args.zoo)
    names = args.only or list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        parser.error(f"not in the zoo: {', '.join(unknown)} (models: {', '.join(models)})")

    import onnx
    import onnxruntime

    started = time.perf_counter()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    print(f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__}"
          + ("; --quick: numbers are a smoke test, not results" if args.quick else ""))
    report: dict[str, Any] = {"machine": start_line(), "quick": args.quick, "models": {}}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench_zoo.{name}.") as tmp:
            workdir = Path(tmp)
            outcomes = {"calibrate": run_contender(args, name, "calibrate", workdir)}
            print(f"[{name}] calibrate: {'ok' if outcomes['calibrate'].ok else outcomes['calibrate'].reason} "
                  f"({outcomes['calibrate'].seconds:.0f} s)", file=sys.stderr, flush=True)
            for contender in CONTENDERS:
                if contender != "ort" and not outcomes["calibrate"].ok:
                    outcomes[contender] = Outcome(contender, False, reason="no calibration (calibrate did not finish)")
                    continue
                outcomes[contender] = run_contender(args, name, contender, workdir)
                o = outcomes[contender]
                print(f"[{name}] {contender}: {'ok' if o.ok else o.reason} ({o.seconds:.0f} s)", file=sys.stderr,
                      flush=True)
        graph = weighted_coverage(args.zoo / name / "model.onnx")
        print_model(name, models[name], graph, outcomes)
        sys.stdout.flush()
        report["models"][name] = {"graph": graph, **{k: {"ok": o.ok, "reason": o.reason, "seconds": o.seconds,
                                                         **o.data} for k, o in outcomes.items()}}
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        from trt_calib._util import atomic_write

        atomic_write(args.json, json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
