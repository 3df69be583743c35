"""Regenerate docs/figures/ and print the numbers docs/how-tensorrt-calibrates.md quotes.

    python3 scripts/make_doc_figures.py                  # bundled LeNet: figures + tables (~10 s on 2 cores)
    python3 scripts/make_doc_figures.py --efficientnet   # + EfficientNet-Lite0 (artifacts/efficientnet_lite0/, ~1 min)
    python3 scripts/make_doc_figures.py --accuracy       # + INT8 accuracy of symmetric vs asymmetric grids
                                                         #   (needs trt_calib.qdq; with --efficientnet ~10 min)

Everything is computed here from the bundled data with trt_calib's own functions: the sampleINT8 reproduction and
what each of TensorRT's details contributes to it (by switching them off one at a time), the growth of the histogram
range over the batches, P and Q of the KL search, and what the symmetric grid costs per tensor. The tables are
printed as Markdown. The figures go to artifacts/doc-figures/ (git-ignored), so a run leaves the clone as it was;
`--out docs/figures` replaces the copies the docs show. The same machine gives the same bytes every run, but
another CPU may move a few anti-aliased pixels: onnxruntime's convolutions and numpy's sums pick their SIMD code by
CPU, so the plotted values can differ in their last bits.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trt_calib.core.cache import CalibrationCache, amax_to_scale  # noqa: E402
from trt_calib.ort.model import calibrated_tensors, load_model, model_inputs  # noqa: E402
from trt_calib.ort.collect import calibrate, tie_scales  # noqa: E402
from trt_calib.core.compare import ulp_distance  # noqa: E402
from trt_calib.core.histogram import AbsHistogram  # noqa: E402
from trt_calib.tools.report import analyse, render_figure  # noqa: E402
from trt_calib.core.signs import (  # noqa: E402
    Quantizer,
    SignedHistogram,
    asymmetric_params,
)
from trt_calib.ort.collect import collect_signed  # noqa: E402
from trt_calib.core.thresholds import FIRST_CANDIDATE, entropy_search, kl_divergence_curve  # noqa: E402

LENET = REPO / "data" / "lenet" / "lenet.onnx"
LENET_BATCHES = REPO / "data" / "lenet" / "sampleint8_batches.py"
LENET_IMAGES = REPO / "data" / "lenet" / "mnist_train_images_0_599.npy"
LENET_LABELS = REPO / "data" / "lenet" / "mnist_train_labels_0_599.npy"
TRT_TABLE = REPO / "data" / "caches" / "sampleINT8_TRT-7000.cache"
EFFNET = REPO / "artifacts" / "efficientnet_lite0"
DEFAULT_OUT = REPO / "artifacts" / "doc-figures"
DPI = 80

log = logging.getLogger("make_doc_figures")


# ---------------------------------------------------------------------------------------------- helpers
def lenet_batches() -> list[dict[str, np.ndarray]]:
    return list(runpy.run_path(str(LENET_BATCHES))["load_data"]())


def activations(model_path: Path, batches: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, list[np.ndarray]]:
    """Every named tensor of every batch (LeNet is small enough to keep them), from a plain onnxruntime run."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inputs = {s.name for s in model_inputs(model)}
    outputs = [n for n in names if n not in inputs]
    have = {o.name for o in model.graph.output}
    for n in outputs:
        if n not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in batches:
        values = dict(zip(outputs, session.run(outputs, batch)))
        for n in names:
            out[n].append(batch[n] if n in inputs else values[n])
    return out


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- how we know
def search_variant(h: AbsHistogram, *, suppress_bin0: bool = True, half_bin: bool = True,
                   inclusive_last: bool = True) -> float:
    """TensorRT's entropy search with one of its details switched off (for the ablation table)."""
    counts = h.counts.astype(np.float64).copy()
    if suppress_bin0:
        counts[0] = counts[1]
    kl = kl_divergence_curve(counts)
    if not inclusive_last:
        kl = kl[:-1]
    finite = np.where(np.isfinite(kl), kl, np.inf)
    best = finite.min()
    index = FIRST_CANDIDATE + int(np.flatnonzero(finite <= best + 1e-9 * abs(best) + 1e-12)[0])
    w = np.float32(h.bin_width)
    return float(np.float32(np.float32(index + (0.5 if half_bin else 0.0)) * w))


def ablation(acts: Mapping[str, list[np.ndarray]], reference: CalibrationCache) -> tuple[str, dict[str, Any]]:
    """How many of TensorRT's 8 sampleINT8 entries each variant reproduces (same KL bin: within 4 float32 ULP)."""
    first_batch: dict[str, AbsHistogram] = {}
    global_range: dict[str, AbsHistogram] = {}
    for name, batches in acts.items():
        h = AbsHistogram()
        for b in batches:
            h.update(b)
        first_batch[name] = h
        g = AbsHistogram(range=float(h.abs_max))
        for b in batches:
            g.update(b)
        global_range[name] = g
    model = load_model(LENET)
    ref = reference.amaxes()

    _, trt_ties = tie_scales(model, {n: 1.0 for n in first_batch}, trt_version="7.0.0")

    def score(amax: dict[str, float], tie: bool = True) -> tuple[int, int, list[str]]:
        """Entries on TensorRT's KL bin: amax within 1% of a bin width of the cache's (the bin TensorRT's tensor
        used: a tied pool's is its input's), which absorbs the GPU-vs-CPU float32 noise of the forward pass."""
        tied = tie_scales(model, amax, trt_version="7.0.0")[0] if tie else amax
        same = exact = 0
        wrong = []
        for name, ref_amax in ref.items():
            width = first_batch[trt_ties.get(name, name)].bin_width
            if abs(tied[name] - ref_amax) < 0.01 * width:
                same += 1
                exact += ulp_distance(amax_to_scale(tied[name]), amax_to_scale(ref_amax)) == 0
            else:
                wrong.append(name)
        return same, exact, wrong

    variants: list[tuple[str, Callable[[], dict[str, float]], bool]] = [
        ("TensorRT as reconstructed (all details on)", lambda: {n: search_variant(h) for n, h in first_batch.items()}, True),
        ("range = global max|x| (no first-batch range, no doubling)",
         lambda: {n: search_variant(h) for n, h in global_range.items()}, True),
        ("no bin-0 suppression", lambda: {n: search_variant(h, suppress_bin0=False) for n, h in first_batch.items()}, True),
        ("amax = i* w (no +0.5 bin)", lambda: {n: search_variant(h, half_bin=False) for n, h in first_batch.items()}, True),
        ("candidates 128..2047 (the slide's range(128, 2048))",
         lambda: {n: search_variant(h, inclusive_last=False) for n, h in first_batch.items()}, True),
        ("no pool tying", lambda: {n: search_variant(h) for n, h in first_batch.items()}, False),
    ]
    rows = []
    results = {}
    for label, fn, tie in variants:
        same, exact, wrong = score(fn(), tie)
        results[label] = (same, exact, wrong)
        rows.append([label, f"{same}/8", exact, ", ".join(wrong) or "-"])
    table = markdown(["variant", "entries on TensorRT's KL bin", "bit-exact", "missed"], rows)
    return table, {"first_batch": first_batch, "results": results}


# ---------------------------------------------------------------------------------------------- figures
def figure_growth(acts: Mapping[str, list[np.ndarray]], names: list[str], path: Path) -> str:
    """Per batch: the batch's max|x| and the histogram range TensorRT's first-batch + doubling rule gives."""
    fig, axes = new_figure(4.0 * len(names), 3.0, 1, len(names))
    rows = []
    for ax, name in zip(np.atleast_1d(axes), names):
        h = AbsHistogram()
        maxima, ranges = [], []
        for b in acts[name]:
            maxima.append(float(np.abs(b).max()))
            h.update(b)
            ranges.append(h.range)
        k = np.arange(1, len(maxima) + 1)
        ax.plot(k, maxima, "o", color="#1f77b4", label="max|x| of the batch")
        ax.step(k, ranges, where="mid", color="#d62728", label="histogram range")
        ax.axhline(maxima[0], color="#7f7f7f", linestyle=":", linewidth=1, label="first batch's max|x|")
        ax.set_xlabel("calibration batch")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, max(ranges) * 1.12)
        grew = next((i + 1 for i in range(1, len(ranges)) if ranges[i] != ranges[i - 1]), None)
        rows.append([name, f"{maxima[0]:.4g}", f"{max(maxima):.4g}", grew or "-", f"{ranges[-1]:.4g}",
                     f"{max(maxima) / ranges[-1] * 2048:.0f}"])
    np.atleast_1d(axes)[0].set_ylabel("|x|")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
    fig.savefig(path)
    return markdown(["tensor", "first batch max", "overall max", "doubled at batch", "final range",
                     "bins holding data"], rows)


def p_and_q(counts: np.ndarray, i: int, levels: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The slide's P (outliers folded into bin i-1) and Q (128 levels expanded over the non-empty bins), normalised."""
    h = counts.astype(np.float64).copy()
    h[0] = h[1]
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    q = np.zeros(i)
    level = np.arange(i) * levels // i
    mass = np.bincount(level, weights=h[:i], minlength=levels)
    nonzero = np.bincount(level, weights=(h[:i] > 0).astype(float), minlength=levels)
    filled = h[:i] > 0
    q[filled] = mass[level[filled]] / nonzero[level[filled]]
    return p / p.sum(), q / q.sum()


def figure_p_q(h: AbsHistogram, name: str, path: Path) -> str:
    """P against Q at TensorRT's choice and at a too-small candidate, and the whole KL curve."""
    search = entropy_search(h)
    small = max(FIRST_CANDIDATE, search.index // 3)
    fig, axes = new_figure(13.0, 3.2, 1, 3)
    rows = []
    for ax, i in zip(axes[:2], (small, search.index)):
        p, q = p_and_q(h.counts, i)
        x = np.arange(i)
        ax.step(x, np.where(p > 0, p, np.nan), where="post", color="#1f77b4", linewidth=0.8, label="P (reference)")
        ax.step(x, np.where(q > 0, q, np.nan), where="post", color="#d62728", linewidth=0.8, label="Q (128 levels)")
        ax.set_yscale("log")
        kl = search.divergence[i - FIRST_CANDIDATE]
        ax.set_title(f"{name}: i = {i}, KL = {kl:.4g}", fontsize=10)
        ax.set_xlabel("bin j")
        ax.legend(fontsize=7, loc="lower left")
        rows.append([i, f"{(i + 0.5) * h.bin_width:.4g}", f"{h.counts[i:].sum() / h.counts.sum() * 100:.3g}%",
                     f"{kl:.4g}"])
    ax = axes[2]
    ax.plot(search.candidates, search.divergence, color="#d62728", linewidth=0.8)
    ax.plot([search.index], [search.divergence[search.index - FIRST_CANDIDATE]], "o", color="#d62728")
    ax.plot([small], [search.divergence[small - FIRST_CANDIDATE]], "s", color="#7f7f7f")
    ax.set_yscale("log")
    ax.set_xlabel("candidate i")
    ax.set_title("KL(P || Q) over i = 128..2048", fontsize=10)
    fig.savefig(path)
    return markdown(["candidate i", "amax (i + 0.5) w", "values beyond (folded into bin i-1)", "KL(P || Q)"], rows)


def cost_rows(summaries: list[Any]) -> tuple[list[list[Any]], dict[str, dict[str, float]]]:
    rows, data = [], {}
    for s in summaries:
        ch = {c.name: c for c in s.choices}
        best = s.best(tensorrt=True)
        u_mm, u_mse = ch.get("uint8-minmax"), ch.get("uint8-mse")
        data[s.name] = {
            "trt": s.error.sqnr_db, "best_sym": best.error.sqnr_db, "best_sym_name": best.name,
            "u8_minmax": u_mm.error.sqnr_db if u_mm else float("nan"),
            "u8_mse": u_mse.error.sqnr_db if u_mse else float("nan"),
            "bits_trt": s.bits, "bits_u8": u_mm.bits if u_mm else float("nan"),
            "minmax": ch["minmax"].error.sqnr_db,
        }
        d = data[s.name]
        rows.append([
            s.name, s.sign, f"{100 * s.negative_share:.3g}%",
            "-" if s.zero_share is None else f"{100 * s.zero_share:.3g}%",
            f"{s.amax:.4g}" + (f" (tied to {s.tied_to})" if s.tied_to else ""),
            f"{100 * s.error.clipped:.3g}%", f"{s.bits:.2f}", f"{d['trt']:.2f}",
            f"{d['best_sym']:.2f} ({d['best_sym_name']})", f"{d['minmax']:.2f}",
            f"{d['u8_minmax']:.2f}", f"{d['u8_mse']:.2f}", f"{d['bits_u8']:.2f}",
        ])
    return rows, data


COST_HEADERS = ["tensor", "signs", "negative", "exact zeros", "TensorRT amax", "clipped", "eff. bits",
                "SQNR dB (TensorRT)", "best symmetric", "symmetric minmax", "uint8 minmax", "uint8 mse",
                "uint8 eff. bits"]


def figure_cost(data: Mapping[str, Mapping[str, float]], title: str, path: Path, *, labels: bool = True) -> None:
    """Per tensor: SQNR of TensorRT's choice, the best symmetric threshold and asymmetric uint8; effective bits."""
    names = list(data)
    x = np.arange(len(names))
    size = (max(8.0, 0.55 * len(names) + 3), 5.2) if labels else (13.0, 4.6)
    fig, (top, bottom) = new_figure(*size, 2, 1, sharex=True, height_ratios=[2, 1])
    series = [("trt", "TensorRT entropy2 amax", "#d62728"), ("best_sym", "best symmetric threshold", "#1f77b4"),
              ("u8_mse", "uint8 (asymmetric, mse range)", "#2ca02c")]
    width = 0.27 if labels else 0.3
    for k, (key, label, color) in enumerate(series):
        top.bar(x + (k - 1) * width, [data[n][key] for n in names], width, color=color, label=label)
    top.set_ylabel("SQNR dB (higher is better)")
    top.set_ylim(0, top.get_ylim()[1] * 1.18)
    top.legend(fontsize=8, loc="upper left", ncols=3)
    top.set_title(title, fontsize=10)
    bottom.bar(x - 0.2, [data[n]["bits_trt"] for n in names], 0.4, color="#d62728", label="TensorRT's int8 grid")
    bottom.bar(x + 0.2, [data[n]["bits_u8"] for n in names], 0.4, color="#2ca02c", label="uint8 minmax grid")
    bottom.set_ylim(5, 8.9)
    bottom.set_ylabel("effective bits")
    bottom.legend(fontsize=8, loc="upper left", ncols=2)
    if labels:
        bottom.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    else:
        bottom.set_xlabel("tensor (model order)")
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------- accuracy
def with_activation_grids(qdq_model: Any, grids: Mapping[str, Quantizer]) -> Any:
    """A copy of a Q/DQ model whose activation Q/DQ pairs for the named tensors use the given (scale, zero point).

    For grids `quantize_model(asymmetric=...)` does not offer (a uint8 grid over TensorRT's own threshold on some
    tensors only): the Q and DQ of one activation share their scale and zero-point initializers in trt_calib.qdq's
    output, so rewriting the two initializers changes both.
    """
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(qdq_model)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        tensor = node.input[0]
        if node.op_type != "QuantizeLinear" or tensor in inits or tensor not in grids:
            continue
        q = grids[tensor]
        zdtype = np.uint8 if q.qmin >= 0 else np.int8
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.asarray(q.scale, np.float32), node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.asarray(q.zero_point, zdtype), node.input[2]))
    return out


def accuracy(model_path: Path, calib: Any, heldout: Any, hists: Mapping[str, SignedHistogram], *,
             labels: np.ndarray | None, trt_version: str) -> str:
    """Agreement, KL (and accuracy) of symmetric and asymmetric activation grids, all with the same int8 weights."""
    from trt_calib.ort.evaluate import evaluate
    from trt_calib.qdq import quantize_model
    from trt_calib.core.thresholds import mse_amax

    model = load_model(model_path)
    result = calibrate(model, calib, trt_version=trt_version)
    base, coverage = quantize_model(model, result)
    quantised = list(coverage.activations)
    one_sided = [t for t in quantised if t in hists and hists[t].num_negative == 0]
    mse = {n: mse_amax(h.abs) for n, h in hists.items()}
    sym_mse, _ = quantize_model(model, {**result.amax, **mse})
    variants = {
        "TensorRT entropy2, symmetric int8 (what TensorRT runs)": base,
        "symmetric int8, mse thresholds": sym_mse,
        "uint8 [0, entropy2 amax] on the one-sided tensors only (same clipping, half the step)": with_activation_grids(
            base, {t: Quantizer(*asymmetric_params(0.0, result.amax[t]), 0, 255) for t in one_sided}),
        "uint8 minmax on every quantised activation": quantize_model(model, hists, asymmetric="minmax")[0],
        "uint8 mse on every quantised activation": quantize_model(model, hists, asymmetric="mse")[0],
    }
    rows = []
    for label, qdq in variants.items():
        report = evaluate(model, qdq, heldout, labels=labels, worst=0)
        out = report.primary
        acc = "-" if out.accuracy_int8 is None else f"{100 * out.accuracy_int8:.2f}% (FP32 {100 * out.accuracy_fp32:.2f}%)"
        rows.append([label, f"{100 * out.agreement:.2f}%", f"{out.mean_kl:.3g}", acc])
        log.info("%s: agreement %.4f, KL %.3g", label, out.agreement, out.mean_kl)
    note = (f"{len(quantised)} activations quantised ({len(one_sided)} one-sided: "
            f"{', '.join(one_sided[:6])}{' ...' if len(one_sided) > 6 else ''})")
    return note + "\n\n" + markdown(["activation grids (weights: int8 per channel in all)", "top-1 agreement with FP32",
                                     "mean KL(FP32 || INT8)", "top-1 accuracy"], rows)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figure folder (default artifacts/doc-figures, "
                        "git-ignored; docs/figures holds the copies the docs show)")
    parser.add_argument("--efficientnet", action="store_true", help="also measure EfficientNet-Lite0")
    parser.add_argument("--accuracy", action="store_true", help="also measure INT8 accuracy (needs trt_calib.qdq)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    batches = lenet_batches()
    names = calibrated_tensors(LENET)
    acts = activations(LENET, batches, names)
    reference = CalibrationCache.load(TRT_TABLE)
    table, found = ablation(acts, reference)
    print("## sampleINT8: which details reproduce TensorRT's table\n")
    print(table)

    print("\n## LeNet: first-batch range and doubling\n")
    print(figure_growth(acts, ["conv1", "ip1", "ip2"], args.out / "lenet_growth.png"))

    print("\n## LeNet ip1: P and Q\n")
    print(figure_p_q(found["first_batch"]["ip1"], "ip1", args.out / "lenet_ip1_p_q.png"))

    signed, _ = collect_signed(LENET, batches)
    summaries = analyse(signed, model=LENET, trt_version="7.0.0")
    for s in summaries:
        if s.name in ("conv1", "ip1"):
            render_figure(s, signed[s.name], args.out / f"lenet_{s.name}.png")
    rows, data = cost_rows(summaries)
    print("\n## LeNet: what the symmetric grid costs (expected error from the histograms)\n")
    print(markdown(COST_HEADERS, rows))
    figure_cost(data, "LeNet (sampleINT8 calibration batches): expected quantisation SQNR per tensor",
                args.out / "lenet_symmetric_cost.png")

    if args.accuracy:
        images = np.load(LENET_IMAGES).astype(np.float32)[:, None] / np.float32(255.0)
        heldout = [{"data": images[k : k + 50]} for k in range(0, 600, 50)]
        print("\n## LeNet accuracy (MNIST train images 0..599, 500 of them the calibration images)\n")
        print(accuracy(LENET, batches, heldout, signed, labels=np.load(LENET_LABELS), trt_version="7.0.0"))

    if args.efficientnet:
        from trt_calib.ort.data import open_source

        model = EFFNET / "model.onnx"
        if not model.is_file():
            print(f"{model} is missing: run python3 samples/efficientnet_lite0/export.py first", file=sys.stderr)
            return 2
        inputs = model_inputs(model)
        calib = open_source(EFFNET / "calib.npz", inputs, batch_size=16)
        eff_signed, _ = collect_signed(model, calib)
        eff = analyse(eff_signed, model=model)
        rows, data = cost_rows(eff)
        print("\n## EfficientNet-Lite0 (128 crops, batches of 16): by sign class\n")
        print(summarise_classes(eff, data))
        figure_cost(data, "EfficientNet-Lite0 (128 calibration crops): expected quantisation SQNR per tensor",
                    args.out / "efficientnet_symmetric_cost.png", labels=False)
        if args.accuracy:
            heldout = open_source(EFFNET / "heldout.npz", inputs, batch_size=32)
            print("\n## EfficientNet-Lite0 accuracy (256 held-out crops, no labels)\n")
            print(accuracy(model, calib, heldout, eff_signed, labels=None, trt_version="10.16.1"))
    sizes = sum(p.stat().st_size for p in args.out.glob("*.png"))
    log.info("figures in %s: %.0f kB", args.out, sizes / 1024)
    return 0


def summarise_classes(summaries: list[Any], data: Mapping[str, Mapping[str, float]]) -> str:
    """Medians per sign class: effective bits and SQNR of TensorRT's choice, the best symmetric one, and uint8."""
    rows = []
    for cls in ("non-negative", "symmetric", "skewed", "non-positive"):
        names = [s.name for s in summaries if s.sign == cls]
        if not names:
            continue

        def med(key: str) -> float:
            return float(np.nanmedian([data[n][key] for n in names]))

        gain_same = np.nanmedian([data[n]["u8_minmax"] - data[n]["minmax"] for n in names])
        gain_best = np.nanmedian([data[n]["u8_mse"] - data[n]["best_sym"] for n in names])
        rows.append([cls, len(names), f"{med('bits_trt'):.2f}", f"{med('bits_u8'):.2f}", f"{med('trt'):.2f}",
                     f"{med('best_sym'):.2f}", f"{med('u8_mse'):.2f}", f"{gain_same:+.2f}", f"{gain_best:+.2f}"])
    return markdown(["signs", "tensors", "eff. bits (TensorRT grid)", "eff. bits (uint8 minmax)",
                     "SQNR dB TensorRT entropy2", "best symmetric", "uint8 mse",
                     "uint8 minmax - symmetric minmax", "uint8 mse - best symmetric"], rows) + \
        "\n\n(medians over the tensors of each class)"


if __name__ == "__main__":
    sys.exit(main())
