"""INT8 accuracy of each threshold choice, weight-only INT8 and bias correction, against onnxruntime's quantize_static.

    python3 benchmarks/bench_accuracy.py                  # EfficientNet-Lite0 then LeNet (9-12 min on 2 cores)
    python3 benchmarks/bench_accuracy.py --only lenet     # LeNet alone (~25 s)
    python3 benchmarks/bench_accuracy.py --json out.json --markdown
    python3 benchmarks/bench_accuracy.py --range-only     # entropy2 with TensorRT's ranges vs --range global
    python3 benchmarks/bench_accuracy.py --only efficientnet --rounding-only   # mse, round-weights rows, tune

Every contender is a Q/DQ ONNX model evaluated by `trt_calib.ort.evaluate` on the same held-out batches (onnxruntime
CPU, ORT_DISABLE_ALL: the Q/DQ graph runs as written). Ours come from `trt_calib.qdq.quantize_model` (TensorRT
placement, int8 per-tensor activations, per-channel symmetric int8 weights):

- minmax, entropy2 (TensorRT's EntropyCalibration2, histograms updated per batch of 16), percentile 99.99, mse:
  one histogram collection over the calibration data, four threshold rules;
- entropy2 with `--range global` (`collect_histograms(range_mode="global")`): the same KL search on histograms whose
  range is each tensor's max over all calibration batches (a second collection, two passes), which does not
  depend on batch size or order; not TensorRT's algorithm;
- per-tensor best: for each tensor that gets a Q/DQ pair, the one of those four thresholds with the highest SQNR of
  that tensor alone fake-quantised (its inputs in float) over the calibration data, i.e. the lowest measured
  squared error on the real activations (`evaluate.threshold_sqnr`; `mse` minimises the same error on the histogram
  with every value at its bin centre, so the two can disagree);
- int8 weights alone: the per-tensor-best model with every activation Q/DQ pair removed (activations in float);
- per-tensor best + bias correction: `quantize_model(..., bias_correction=calibration batches)`, all of them;
- round-weights: `trt-calib round-weights` (GPTQ-style codes, `qdq.rounding`) run as a subprocess on the
  calibration data, its wall time and peak RSS measured: the rounded float model alone (weights int8, activations
  float), and then `quantize --algorithm mse` on it (calibrated on the rounded model), the issue's W8A8 recipe;
- tune: `tools.tune.tune` to KL 0.005 with at most 2 units in float, choosing on the first half of the held-out
  data; the row is measured on all of it, the note gives the half tune never saw.

Baselines, measured in the same run: onnxruntime's `quantize_static` (QDQ, per-channel, int8 symmetric weights and
activations) with MinMax, with Entropy as `extra_options={"num_bins": 2048}` asks for it (onnxruntime 1.32's
quantize_static does not pass `num_bins` on to the calibrator, which logs "Number of histogram bins : 128"), and
with Entropy really at 2048 bins (`create_calibrator(extra_options={"num_bins": 2048})`, its ranges handed to
quantize_static through `calibration_cache_path`).

EfficientNet-Lite0: `artifacts/efficientnet_lite0/` (made by `samples/efficientnet_lite0/export.py` if missing):
128 calibration crops, 256 held-out crops from the other half of each photo, no labels, so agreement with FP32 and
mean KL(FP32 || INT8) are the metrics. LeNet (sampleINT8's): calibrated on MNIST train images 50..549 in batches of
50 as sampleINT8 does, evaluated with labels on images 0..599, which contain those 500 (and all 600 are training
images of the model), so its accuracy says nothing about generalisation, only about what INT8 changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from machine import announce  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "efficientnet_lite0"
LENET = REPO / "data" / "lenet"
ALGORITHMS = ("minmax", "entropy2", "percentile", "mse")
GOALS = {"thresholds only": (0.80, 0.056), "with bias correction": (0.88, 0.025),  # (agreement >=, KL <=)
         "round-weights + mse": (0.92, 0.008)}
ROUNDING_GOAL = (60.0, 2048.0)  # round-weights on EfficientNet-Lite0: seconds <=, peak RSS MB <= (2 idle cores)
TUNE_GOAL = (0.005, 2)  # tune: KL <=, units in float <=

log = logging.getLogger("bench_accuracy")


@dataclass
class Row:
    model: str
    method: str
    agreement: float
    confident_agreement: float
    num_confident: int
    mean_kl: float
    accuracy_int8: float | None
    accuracy_fp32: float | None
    seconds: float  # making the Q/DQ model (calibration shared by our four rules is counted once, in minmax)
    worst: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. round-weights' peak RSS, tune's units in float


# ---------------------------------------------------------------------------------------------- Q/DQ surgery
def weights_only(model: Any) -> Any:
    """A copy of a Q/DQ model with every activation QuantizeLinear/DequantizeLinear pair removed (weights stay int8)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in constants:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or any(d.output[0] in graph_outputs for d in dqs):
            continue
        drop.add(id(q))
        for d in dqs:
            drop.add(id(d))
            rename[d.output[0]] = q.input[0]
    kept = [n for n in graph.node if id(n) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.checker.check_model(out)
    return out


# ---------------------------------------------------------------------------------------------- onnxruntime baselines
class _Reader:
    """onnxruntime CalibrationDataReader over a list of batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = batches
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def __len__(self) -> int:
        return len(self.batches)

    def rewind(self) -> None:
        self.it = iter(self.batches)


def ort_quantize(model_path: Path, batches: list[dict[str, np.ndarray]], method: str) -> Any:
    """onnxruntime's quantize_static: QDQ, per-channel, int8 symmetric weights and activations."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    class Reader(_Reader, CalibrationDataReader):
        pass

    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True}
    kwargs = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                  weight_type=QuantType.QInt8)
    # onnxruntime's calibrators print() their progress; keep it out of the table on stdout.
    with tempfile.TemporaryDirectory(prefix="bench_accuracy.") as tmp, contextlib.redirect_stdout(sys.stderr):
        out = Path(tmp) / "qdq.onnx"
        if method == "MinMax":
            quantize_static(str(model_path), str(out), Reader(batches), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=options, **kwargs)
        elif method == "Entropy":
            quantize_static(str(model_path), str(out), Reader(batches), calibrate_method=CalibrationMethod.Entropy,
                            extra_options={**options, "num_bins": 2048}, **kwargs)
        elif method == "Entropy-2048":
            calibrator = create_calibrator(
                model_path, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=CalibrationMethod.Entropy,
                extra_options={"symmetric": True, "num_bins": 2048},
            )
            calibrator.collect_data(Reader(batches))
            ranges = calibrator.compute_data()
            del calibrator
            save_tensors_data(ranges, Path(tmp) / "ranges.json")
            quantize_static(str(model_path), str(out), None, calibrate_method=CalibrationMethod.Entropy,
                            extra_options=options, calibration_cache_path=str(Path(tmp) / "ranges.json"), **kwargs)
        else:
            raise ValueError(method)
        return onnx.load(str(out))


# ---------------------------------------------------------------------------------------------- the suite
def run_suite(
    name: str,
    model_path: Path,
    calib: Callable[[], Any],
    heldout: Callable[[], Any],
    *,
    labels: np.ndarray | None,
    ort_methods: tuple[str, ...] = ("MinMax", "Entropy", "Entropy-2048"),
    range_only: bool = False,
    calib_args: list[str] | None = None,
    rounding_only: bool = False,
) -> list[Row]:
    """Every contender on one model: `calib()` and `heldout()` make fresh batch iterables (and may be iterated
    twice). `range_only`: only entropy2 with TensorRT's ranges and with `range_mode="global"`. `calib_args`: the
    calibration data as `trt-calib` options, for the round-weights subprocess (None: no rounding rows);
    `rounding_only`: only mse and the rounding rows."""
    from tqdm import tqdm

    from trt_calib.ort.model import load_model

    from trt_calib.ort.collect import amax_from_histograms, collect_histograms, tie_scales
    from trt_calib.ort.evaluate import best_per_tensor, evaluate, threshold_sqnr
    from trt_calib.qdq import quantize_model

    model = load_model(model_path)
    rows: list[Row] = []

    def measure(method: str, qdq: Any, seconds: float, *, worst: int = 0, note: str = "",
                extra: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        report = evaluate(model, qdq, heldout(), labels=labels, worst=worst)
        out = report.primary
        rows.append(Row(
            name, method, out.agreement, out.confident_agreement, out.num_confident, out.mean_kl, out.accuracy_int8,
            out.accuracy_fp32, seconds, [(t.name, t.sqnr_db) for t in report.worst], note, dict(extra or {}),
        ))
        log.info("%s / %s: agreement %.1f%%, KL %.4f (made in %.1f s, evaluated in %.1f s)", name, method,
                 100 * out.agreement, out.mean_kl, seconds, time.perf_counter() - t0)

    t0 = time.perf_counter()
    bar = tqdm(desc=f"{name}: histograms", unit="batch", leave=False, file=sys.stderr)
    histograms, _ = collect_histograms(model, calib(), progress=bar.update)
    bar.close()
    collect_seconds = time.perf_counter() - t0
    raw: dict[str, dict[str, float]] = {}
    tied: dict[str, dict[str, float]] = {}
    for algorithm in ALGORITHMS:
        options = {"percentile": 99.99} if algorithm == "percentile" else {}
        raw[algorithm], _ = amax_from_histograms(histograms, algorithm, **options)
        tied[algorithm], _ = tie_scales(model, raw[algorithm])
    labels_of = {"minmax": "minmax", "entropy2": "entropy2 (TensorRT)", "percentile": "percentile 99.99", "mse": "mse"}
    activations: list[str] = []
    if rounding_only:
        qdq, _ = quantize_model(model, tied["mse"])
        measure("mse", qdq, collect_seconds)
        rounding_rows(name, model_path, model, calib, heldout, calib_args or [], measure)
        return rows
    for algorithm in ("entropy2",) if range_only else ALGORITHMS:
        t0 = time.perf_counter()
        qdq, coverage = quantize_model(model, tied[algorithm])
        activations = list(coverage.activations)
        seconds = time.perf_counter() - t0 + collect_seconds
        measure(labels_of[algorithm], qdq, seconds)

    t0 = time.perf_counter()
    bar = tqdm(desc=f"{name}: global-range histograms", unit="batch", leave=False, file=sys.stderr)
    fixed, _ = collect_histograms(model, calib(), progress=bar.update, range_mode="global")
    bar.close()
    amax_fixed, _ = amax_from_histograms(fixed, "entropy2")
    moved = sum(raw["entropy2"][t] != amax_fixed[t] for t in amax_fixed)
    qdq_fixed, _ = quantize_model(model, tie_scales(model, amax_fixed)[0])
    measure("entropy2, --range global", qdq_fixed, time.perf_counter() - t0,
            note=f"{moved} of {len(amax_fixed)} amax differ from TensorRT's ranges")
    if range_only:
        return rows

    t0 = time.perf_counter()
    candidates = {t: {a: raw[a][t] for a in ALGORITHMS} for t in activations if t in raw["mse"]}
    bar = tqdm(desc=f"{name}: per-tensor SQNR", unit="batch", leave=False, file=sys.stderr)
    sqnr = threshold_sqnr(model, calib(), candidates, progress=bar.update)
    bar.close()
    best_raw, picks = best_per_tensor(raw, sqnr, ALGORITHMS)
    best, _ = tie_scales(model, best_raw)
    qdq_best, _ = quantize_model(model, best)
    best_seconds = time.perf_counter() - t0 + collect_seconds
    pick_note = "picks: " + ", ".join(f"{a} {n}" for a, n in picks.items())
    measure("per-tensor best", qdq_best, best_seconds, worst=5, note=pick_note)

    t0 = time.perf_counter()
    qdq_weights = weights_only(qdq_best)
    measure("int8 weights alone", qdq_weights, time.perf_counter() - t0 + best_seconds, note="activations in float")

    t0 = time.perf_counter()
    calib_batches = list(calib())
    qdq_bc, coverage = quantize_model(model, best, bias_correction=calib_batches,
                                      bias_correction_batches=len(calib_batches))
    info = coverage.bias_correction or {}
    measure("per-tensor best + bias correction", qdq_bc, time.perf_counter() - t0 + best_seconds, worst=5,
            note=f"{info.get('layers', '?')} layers corrected on {info.get('samples', '?')} samples")

    if calib_args is not None:
        rounding_rows(name, model_path, model, calib, heldout, calib_args, measure)

    for method in ort_methods:
        t0 = time.perf_counter()
        qdq = ort_quantize(model_path, calib_batches, method)
        label = {"MinMax": "ORT quantize_static MinMax", "Entropy": "ORT quantize_static Entropy, num_bins=2048 "
                 "(ignored: 128 bins)", "Entropy-2048": "ORT Entropy, 2048 bins (create_calibrator)"}[method]
        measure(label, qdq, time.perf_counter() - t0)
    return rows


def round_in_subprocess(model_path: Path, calib_args: list[str], out: Path) -> tuple[float, float, dict[str, Any]]:
    """`trt-calib round-weights` in a child process: (wall seconds, the child's peak RSS in MB as it reports it from
    /proc/self/status VmHWM, its JSON report). Not the parent's RUSAGE_CHILDREN: a child forked from this large
    process counts the parent's pages until it execs."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trt_calib", "-q", "round-weights", str(model_path), *calib_args,
                           "-o", str(out), "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"round-weights failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    return seconds, float(report["peak_rss_mb"]), report


def rounding_rows(name: str, model_path: Path, model: Any, calib: Callable[[], Any], heldout: Callable[[], Any],
                  calib_args: list[str], measure: Callable[..., None]) -> None:
    """round-weights alone, round-weights + mse, and tune to KL 0.005 with at most 2 units in float (`measure`
    appends each row to the suite's rows)."""
    import onnx

    from trt_calib.ort.collect import calibrate
    from trt_calib.ort.evaluate import evaluate
    from trt_calib.qdq import quantize_model
    from trt_calib.tools.tune import tune

    with tempfile.TemporaryDirectory(prefix="bench_accuracy.") as tmp:
        out = Path(tmp) / "rounded.onnx"
        seconds, peak_mb, report = round_in_subprocess(model_path, calib_args, out)
        rounded = onnx.load(str(out))
    note = (f"round-weights: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB (subprocess), {report['codes_moved']} of "
            f"{report['codes']} codes moved, {report['samples']} samples")
    log.info("%s: %s", name, note)
    measure("round-weights, weights alone", rounded, seconds, note=note + "; activations float",
            extra={"rounding_seconds": seconds, "rounding_peak_rss_mb": peak_mb})
    t0 = time.perf_counter()
    result = calibrate(rounded, calib(), algorithm="mse")
    qdq, _ = quantize_model(rounded, result)
    measure("round-weights + mse", qdq, time.perf_counter() - t0 + seconds, worst=5,
            note="quantize --algorithm mse on the rounded model")

    held = list(heldout())
    half = max(1, len(held) // 2)
    t0 = time.perf_counter()
    tuned = tune(model, list(calib()), held[:half], target=TUNE_GOAL[0], max_keep=TUNE_GOAL[1],
                 padded=0)
    qdq = tuned.qdq_model()
    unseen = evaluate(model, qdq, held[half:], worst=0).primary if len(held) > half else None
    steps = "; ".join(f"{s.name} {s.error:.4g}" for s in tuned.steps if s.kept and s.error is not None)
    measure(f"tune (KL <= {TUNE_GOAL[0]}, <= {TUNE_GOAL[1]} units in float)", qdq, time.perf_counter() - t0,
            note=f"{steps}; kept in float: {', '.join(tuned.kept) or 'none'}; tune's own KL {tuned.error:.4g} on the "
            f"first {half} held-out batches" + (f", {unseen.mean_kl:.4g} / {100 * unseen.agreement:.1f}% on the other "
            f"{len(held) - half}" if unseen is not None else ""),
            extra={"kept_in_float": list(tuned.kept), "tune_error": tuned.error,
                   "unseen_kl": None if unseen is None else unseen.mean_kl})


def efficientnet(args: argparse.Namespace) -> list[Row]:
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.data import from_arrays

    folder = Path(args.artifacts)
    needed = ("model.onnx", "calib.npz", "heldout.npz")
    if not all((folder / f).is_file() for f in needed):
        log.info("%s is incomplete: running samples/efficientnet_lite0/export.py", folder)
        subprocess.run([sys.executable, str(REPO / "samples" / "efficientnet_lite0" / "export.py"), "--out", str(folder)],
                       check=True)
    specs = model_inputs(folder / "model.onnx")
    calib = np.load(folder / "calib.npz")["input"]
    held = np.load(folder / "heldout.npz")["input"]
    return run_suite(
        "EfficientNet-Lite0", folder / "model.onnx",
        lambda: from_arrays(calib, specs, batch_size=16),
        lambda: from_arrays(held, specs, batch_size=16, last_batch="keep"),
        labels=None,
        range_only=args.range_only,
        calib_args=["--data", str(folder / "calib.npz"), "--batch-size", "16"],
        rounding_only=args.rounding_only,
    )


def lenet(args: argparse.Namespace) -> list[Row]:
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.data import from_arrays, open_source

    specs = model_inputs(LENET / "lenet.onnx")
    images = np.load(LENET / "mnist_train_images_0_599.npy").astype(np.float32).reshape(-1, 1, 28, 28) / np.float32(255)
    return run_suite(
        "LeNet (sampleINT8)", LENET / "lenet.onnx",
        lambda: open_source(LENET / "sampleint8_batches.py", specs),
        lambda: from_arrays(images, specs, batch_size=100),
        labels=np.load(LENET / "mnist_train_labels_0_599.npy"),
        range_only=args.range_only,
        calib_args=["--data", str(LENET / "sampleint8_batches.py")],
        rounding_only=args.rounding_only,
    )


# ---------------------------------------------------------------------------------------------- output
def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _kl(v: float) -> str:
    return f"{v:.4f}" if v >= 0.001 else f"{v:.2e}"


def print_table(rows: list[Row]) -> None:
    width = max(len(r.method) for r in rows)
    model = None
    for r in rows:
        if r.model != model:
            model = r.model
            print(f"\n{model}")
            print(f"  {'method':<{width}}  {'agree':>6}  {'margin>1':>14}  {'mean KL':>8}  {'top-1':>6}  {'made in':>8}")
            if r.accuracy_fp32 is not None:
                print(f"  {'FP32':<{width}}  {'':>6}  {'':>14}  {'':>8}  {_pct(r.accuracy_fp32):>6}")
        conf = f"{_pct(r.confident_agreement)} of {r.num_confident}"
        print(f"  {r.method:<{width}}  {_pct(r.agreement):>6}  {conf:>14}  {_kl(r.mean_kl):>8}  "
              f"{_pct(r.accuracy_int8):>6}  {r.seconds:7.1f}s" + (f"  {r.note}" if r.note else ""))


def print_goals(rows: list[Row]) -> None:
    eff = {r.method: r for r in rows if r.model.startswith("EfficientNet")}
    print_rounding_goals(eff)
    if "per-tensor best + bias correction" not in eff:
        return
    thresholds = [eff[m] for m in ("minmax", "entropy2 (TensorRT)", "percentile 99.99", "mse", "per-tensor best")]
    best = min(thresholds, key=lambda r: r.mean_kl)
    bc = eff["per-tensor best + bias correction"]
    print("\ngoals (EfficientNet-Lite0):")
    for label, row in (("thresholds only", best), ("with bias correction", bc)):
        agree, kl = GOALS[label]
        ok = row.agreement >= agree and row.mean_kl <= kl
        print(f"  {label}: KL <= {kl} and agreement >= {100 * agree:.0f}%: {row.method} has KL {row.mean_kl:.4f}, "
              f"agreement {_pct(row.agreement)} -> {'met' if ok else 'NOT met'}")


def print_rounding_goals(eff: dict[str, Row]) -> None:
    if "round-weights + mse" not in eff:
        return
    alone, w8a8 = eff["round-weights, weights alone"], eff["round-weights + mse"]
    tuned = next((r for m, r in eff.items() if m.startswith("tune")), None)
    agree, kl = GOALS["round-weights + mse"]
    seconds, mb = ROUNDING_GOAL
    print("\ngoals (EfficientNet-Lite0, issue 21):")
    ok = w8a8.agreement >= agree and w8a8.mean_kl <= kl
    print(f"  round-weights + mse: KL <= {kl} and agreement >= {100 * agree:.0f}%: KL {w8a8.mean_kl:.5f}, agreement "
          f"{_pct(w8a8.agreement)} -> {'met' if ok else 'NOT met'}")
    t, rss = alone.extra.get("rounding_seconds", math.nan), alone.extra.get("rounding_peak_rss_mb", math.nan)
    ok = t <= seconds and rss <= mb
    print(f"  rounding in <= {seconds:.0f} s and <= {mb / 1024:.0f} GB (2 idle cores): {t:.1f} s, {rss:.0f} MB -> "
          f"{'met' if ok else 'NOT met'} (a loaded machine inflates the time)")
    if tuned is not None:
        kept = tuned.extra.get("kept_in_float", [])
        ok = tuned.mean_kl <= TUNE_GOAL[0] and len(kept) <= TUNE_GOAL[1]
        print(f"  tune: KL <= {TUNE_GOAL[0]} with <= {TUNE_GOAL[1]} units in float: KL {tuned.mean_kl:.5f} with "
              f"{len(kept)} -> {'met' if ok else 'NOT met'}")


def print_markdown(rows: list[Row]) -> None:
    print("\n| model | method | top-1 agreement | agreement, FP32 margin > 1 | mean KL | top-1 (labels) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.model} | {r.method} | {_pct(r.agreement)} | {_pct(r.confident_agreement)} ({r.num_confident}) | "
              f"{_kl(r.mean_kl)} | {_pct(r.accuracy_int8)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("efficientnet", "lenet"), help="run one model only")
    parser.add_argument("--artifacts", default=str(ARTIFACTS), help=f"EfficientNet-Lite0 folder (default {ARTIFACTS})")
    parser.add_argument("--json", metavar="OUT.json", help="also write every row as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--range-only", action="store_true",
                        help="only entropy2 with TensorRT's ranges and with --range global (a few minutes)")
    parser.add_argument("--rounding-only", action="store_true",
                        help="only mse, the round-weights rows and tune")
    args = parser.parse_args()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("trt_calib").setLevel(logging.WARNING)
    logging.getLogger().handlers[0].addFilter(lambda r: not r.getMessage().startswith("Please consider"))

    import onnx
    import onnxruntime

    started = time.perf_counter()
    rows: list[Row] = []
    if args.only in (None, "efficientnet"):
        rows += efficientnet(args)
    if args.only in (None, "lenet"):
        rows += lenet(args)
    print(f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
          f"evaluation: onnxruntime CPU with ORT_DISABLE_ALL (Q/DQ as written)")
    print_table(rows)
    print_goals(rows)
    if args.markdown:
        print_markdown(rows)
    for r in rows:
        if r.worst:
            print(f"\n{r.model} / {r.method}: worst tensors by SQNR: "
                  + ", ".join(f"{n} {db:.1f} dB" for n, db in r.worst))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        from trt_calib._util import atomic_write

        payload = [{**r.__dict__, "worst": [list(w) for w in r.worst]} for r in rows]
        atomic_write(args.json, json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
