"""HTML calibration reports: per tensor, the |x| histogram with its thresholds, TensorRT's KL curve, the sign
structure, the expected quantisation error and the effective bits; a model-level table sortable by error.

The numbers come from `thresholds`, `signs` and `collect`; this module assembles them. A report is a folder
(`index.html`, `report.json`) that opens from disk: no server, no external script or style sheet. The per-tensor
figures are drawn by the browser from the numbers embedded in index.html (`report_figures`; fast at hundreds of
tensors), or, with `figures="png"`, by matplotlib into `figures/*.png`, in parallel worker processes.
`report-manifest.json` lists the files the report wrote: a new report replaces those and never touches anything else
in the folder, nor anything a symlink leads out of it.
"""

from __future__ import annotations

import fnmatch
import html
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .._util import atomic_write
from ..core.cache import DEFAULT_TRT_VERSION
from ..errors import DataError, TrtCalibError
from ..core.histogram import AbsHistogram
from ..core.signs import (
    BULK_COVERAGE,
    QuantChoice,
    QuantError,
    SignedHistogram,
    as_signed,
    classify_sign,
    compare_choices,
    effective_bits,
    quantization_error,
    signed_entropy_search,
    symmetric_quantizer,
)
from ..core.thresholds import EntropySearch, entropy_search
from ..ort.collect import collect_signed

__all__ = [
    "REPORT_MARKER",
    "MANIFEST",
    "report_files",
    "TensorSummary",
    "ReportResult",
    "analyse",
    "select_tensors",
    "render_figure",
    "figure_png",
    "FIGURE_MODES",
    "write_report",
    "build_report",
]

log = logging.getLogger(__name__)

#: report.json's "generator" value: a folder holding it is a previous report, which `write_report` may replace.
REPORT_MARKER = "trt-calib report"
#: The files a report wrote (relative path -> sha256): the only files a later report replaces or deletes, and only
#: while they still hold what was written.
MANIFEST = "report-manifest.json"
#: The symmetric thresholds every report draws, in drawing order.
THRESHOLDS = ("entropy2", "minmax", "percentile", "mse")
#: How per-tensor figures are made: "inline", drawn by the browser from data in index.html (one file, fast);
#: "png", drawn by matplotlib into figures/*.png (image files, about 0.2 s of CPU each, in parallel processes).
FIGURE_MODES = ("inline", "png")
_STYLE = {
    "entropy2": ("#d62728", "-", "entropy2 (TensorRT)"),
    "minmax": ("#7f7f7f", "--", "minmax"),
    "percentile": ("#1f77b4", ":", "percentile"),
    "mse": ("#2ca02c", "-.", "mse"),
}


@dataclass
class TensorSummary:
    """Everything the report shows for one tensor; numbers from `thresholds` and `signs`."""

    name: str
    order: int  # position in the model's calibration order
    sign: str  # non-negative, non-positive, skewed, symmetric, unknown (core.signs.classify_sign)
    min: float
    max: float
    num_values: int
    negative_share: float
    zero_share: float | None  # exact zeros; None when only an |x| histogram was kept
    signs_known: bool  # whether sign-aware alternatives could be measured
    algorithm: str
    amax: float  # what the cache gets: the algorithm's threshold, after TensorRT's scale ties
    tied_to: str | None
    error: QuantError  # at `amax`
    bits: float  # effective bits at `amax`
    entropy: EntropySearch
    signed_entropy: EntropySearch | None
    choices: list[QuantChoice] = field(default_factory=list)
    figure: str | None = None  # path relative to the report folder
    body: str = ""  # the If branch holding the tensor ("then_branch of If 'x'"), "" in the main graph

    @property
    def thresholds(self) -> dict[str, float]:
        """The symmetric thresholds of the tensor's own histogram, by algorithm."""
        return {c.name: c.amax for c in self.choices if c.amax is not None}

    def choice(self, name: str) -> QuantChoice | None:
        return next((c for c in self.choices if c.name == name), None)

    def best(self, *, tensorrt: bool) -> QuantChoice | None:
        """The choice with the lowest expected error among those TensorRT can run (or among the others)."""
        pool = [c for c in self.choices if c.tensorrt == tensorrt]
        return min(pool, key=lambda c: c.error.mse) if pool else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (non-finite floats as strings)."""
        return _jsonable(
            {
                "name": self.name,
                "order": self.order,
                "sign": self.sign,
                "min": self.min,
                "max": self.max,
                "num_values": self.num_values,
                "negative_share": self.negative_share,
                "zero_share": self.zero_share,
                "signs_known": self.signs_known,
                "algorithm": self.algorithm,
                "amax": self.amax,
                "tied_to": self.tied_to,
                "mse": self.error.mse,
                "sqnr_db": self.error.sqnr_db,
                "clipped": self.error.clipped,
                "effective_bits": self.bits,
                "entropy_index": self.entropy.index,
                "signed_entropy_index": None if self.signed_entropy is None else self.signed_entropy.index,
                "choices": [c.to_dict() for c in self.choices],
                "figure": self.figure,
                **({"body": self.body} if self.body else {}),
            }
        )


@dataclass
class ReportResult:
    """What `build_report` wrote: the folder, the summaries (all tensors), the tensors drawn, the figures on the page
    (the tensors' and the sections') and the sections."""

    path: Path
    summaries: list[TensorSummary]
    drawn: list[str]
    seconds: float
    figures: int = 0
    sections: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # tensors calibrate names but no data reached -> why

    def describe(self) -> str:
        """What the page holds, in words: "253 tensors, 253 figures", "the stability section, 2 figures"."""
        parts = []
        if self.summaries or not self.sections:
            parts.append(f"{len(self.summaries)} tensor{'s' * (len(self.summaries) != 1)}")
        if self.sections:
            parts.append(f"the {' and '.join(self.sections)} section{'s' * (len(self.sections) != 1)}")
        parts.append(f"{self.figures} figure{'s' * (self.figures != 1)}")
        if self.left_out:
            parts.append(f"{len(self.left_out)} tensor{'s' * (len(self.left_out) != 1)} left out (no data reached "
                         "them)")
        return ", ".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------- analysis
def analyse(
    histograms: Mapping[str, AbsHistogram | SignedHistogram],
    *,
    model: Any = None,
    algorithm: str = "entropy2",
    percentile: float = 99.99,
    trt_version: str = DEFAULT_TRT_VERSION,
    progress: Callable[[int], None] | None = None,
) -> list[TensorSummary]:
    """One summary per histogram (in the mapping's order): thresholds, errors, signs; ties applied when `model` is given.

    `progress(1)` is called after each tensor's thresholds are searched (most of the time goes there)."""
    if algorithm not in THRESHOLDS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(THRESHOLDS)}")
    per_tensor: dict[str, tuple[EntropySearch, list[QuantChoice]]] = {}
    raw: dict[str, float] = {}
    for name, hist in histograms.items():
        h = hist.abs if isinstance(hist, SignedHistogram) else hist
        search = entropy_search(h)
        choices = compare_choices(hist, percentile=percentile, entropy=search)
        per_tensor[name] = (search, choices)
        by_name = {c.name: c.amax for c in choices}
        raw[name] = by_name.get(algorithm, search.amax if algorithm == "entropy2" else _degenerate_amax(h, algorithm))
        if progress is not None:
            progress(1)
    tied: dict[str, str] = {}
    amax = raw
    if model is not None:
        from ..ort.collect import tie_scales

        amax, tied = tie_scales(model, raw, trt_version=trt_version)
    out = []
    for order, (name, hist) in enumerate(histograms.items()):
        h = hist.abs if isinstance(hist, SignedHistogram) else hist
        search, choices = per_tensor[name]
        sh = as_signed(hist)
        finite = np.isfinite(amax[name]) and not h.num_inf
        quantizer = symmetric_quantizer(amax[name]) if finite else None
        error = quantization_error(hist, quantizer) if quantizer else QuantError(float("inf"), float("nan"), float("nan"))
        values = max(h.num_values, 1)
        signed_search = None
        if isinstance(hist, SignedHistogram) and hist.num_negative and finite:
            signed_search = signed_entropy_search(hist)
        out.append(
            TensorSummary(
                name=name,
                order=order,
                sign=classify_sign(h),
                min=float(h.min) if h.num_values else float("nan"),
                max=float(h.max) if h.num_values else float("nan"),
                num_values=h.num_values,
                negative_share=h.num_negative / values,
                zero_share=None if sh is None or sh.num_zero is None else sh.num_zero / values,
                signs_known=sh is not None,
                algorithm=algorithm,
                amax=float(amax[name]),
                tied_to=tied.get(name),
                error=error,
                bits=effective_bits(h, quantizer) if quantizer else 0.0,
                entropy=search,
                signed_entropy=signed_search,
                choices=choices,
            )
        )
    return out


def _degenerate_amax(h: AbsHistogram, algorithm: str) -> float:
    """The threshold of an empty, all-zero or non-finite histogram, for which `compare_choices` has no choices."""
    from ..core.thresholds import compute_amax

    return compute_amax(h, algorithm)


def report_tensors(model: Any) -> tuple[list[str], dict[str, str], list[Any]]:
    """The tensors a report covers: those `calibrate` calibrates (main graph, then the If-branch tensors onnxruntime
    can reach: `ort.control_flow`), in that order; where each branch tensor sits; and every body tensor TensorRT
    names (`control_flow.body_tensors`), to say which the data left out."""
    from ..ort.control_flow import body_tensors, reachable_body_tensors
    from ..ort.model import calibrated_from_types, float_types, tensor_types

    types = tensor_types(model)
    names = calibrated_from_types(model, types)
    body = body_tensors(model, types, float_types())
    known = set(names)
    names += [n for n in reachable_body_tensors(body) if n not in known]
    return names, {b.name: b.where for b in body}, body


def left_out_tensors(model: Any, body: Sequence[Any], covered: Iterable[str]) -> dict[str, str]:
    """The body tensors calibrate would name that have no histogram here, and why (the reasons `calibrate` gives:
    a branch no batch took, a Loop/Scan body, a name TensorRT renames)."""
    from ..ort.control_flow import if_conditions, shape_conditions, uncovered_reasons

    if not body:
        return {}
    return uncovered_reasons(body, covered, owners=if_conditions(model), shape_only=shape_conditions(model))


def select_tensors(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """The names matching any of the glob `patterns` (all names when None), in the given order."""
    if not patterns:
        return list(names)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise DataError(
            f"--tensors {','.join(patterns)} matches none of the {len(names)} tensors ({shown}). "
            "Hint: patterns are shell globs such as 'conv*' or '*relu*', comma-separated"
        )
    return chosen


def _tie_sources(model: Any, names: Sequence[str]) -> list[str]:
    """Tensors whose scale a selected tensor may take (pool inputs, Concat outputs), found by walking the graph."""
    wanted = set(names)
    extra: list[str] = []
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            links: list[tuple[str, str]] = []
            if node.op_type in ("MaxPool", "AveragePool") and node.input and node.output:
                links.append((node.output[0], node.input[0]))
            if node.op_type == "Concat" and node.output:
                links += [(src, node.output[0]) for src in node.input]
            for dst, src in links:
                if dst in wanted and src not in wanted:
                    wanted.add(src)
                    extra.append(src)
                    changed = True
    return extra


# ---------------------------------------------------------------------------------------------- figures
def render_figure(summary: TensorSummary, hist: AbsHistogram | SignedHistogram, path: str | os.PathLike) -> Path:
    """Draw one tensor's figure (PNG, Agg backend): |x| histogram with thresholds, KL curve, signed view if known."""
    path = Path(path)
    _figure(summary, hist).savefig(path, format="png")
    return path


def figure_png(item: tuple[TensorSummary, AbsHistogram | SignedHistogram]) -> bytes:
    """`render_figure` of a (summary, histogram) pair as PNG bytes: the task each worker runs for `figures="png"`."""
    import io

    buffer = io.BytesIO()
    _figure(*item).savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(summary: TensorSummary, hist: AbsHistogram | SignedHistogram) -> Any:
    """The matplotlib Figure `render_figure` saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = hist.abs if isinstance(hist, SignedHistogram) else hist
    sh = as_signed(hist)
    panels = 3 if sh is not None else 2
    fig = Figure(figsize=(4.3 * panels, 3.3), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    fig.subplots_adjust(left=0.06 if panels == 3 else 0.08, right=0.99, bottom=0.15, top=0.84, wspace=0.27)
    edges = h.edges

    ax = axes[0]
    _steps(ax, edges, h.counts, fill="#c7c7c7", line="#555555")
    ax.set_xlabel("|x|")
    ax.set_ylabel("count (log)")
    ax.set_title("|x| histogram (TensorRT's 2048 bins)", fontsize=10)
    thresholds = summary.thresholds
    for name in THRESHOLDS:
        if name in thresholds and np.isfinite(thresholds[name]):
            color, style, label = _STYLE[name]
            choice = summary.choice(name)
            clipped = f", {100 * choice.error.clipped:.3g}% clipped" if choice else ""
            ax.axvline(thresholds[name], color=color, linestyle=style, linewidth=1.4,
                       label=f"{label} {thresholds[name]:.4g}{clipped}")
    if summary.tied_to and np.isfinite(summary.amax):
        ax.axvline(summary.amax, color="black", linewidth=1.0, label=f"tied to {summary.tied_to} {summary.amax:.4g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.85)

    ax = axes[1]
    search = summary.entropy
    finite = np.isfinite(search.divergence)
    amaxes = (search.candidates + 0.5) * search.bin_width
    if finite.any():
        ax.plot(amaxes[finite], search.divergence[finite], color="#d62728", linewidth=1.0, label="|x| (TensorRT)")
        chosen = search.index - search.candidates[0]
        ax.plot([search.amax], [search.divergence[chosen]], "o", color="#d62728",
                label=f"i* = {search.index}, amax {search.amax:.4g}")
        signed = summary.signed_entropy
        if signed is not None and np.isfinite(signed.divergence).any():
            sf = np.isfinite(signed.divergence)
            ax.plot(amaxes[sf], signed.divergence[sf], color="#9467bd", linewidth=1.0, linestyle="--",
                    label="signed histogram")
            j = signed.index - signed.candidates[0]
            ax.plot([signed.amax], [signed.divergence[j]], "s", color="#9467bd",
                    label=f"signed i* = {signed.index}, amax {signed.amax:.4g}")
        if (search.divergence[finite] > 0).all():
            _log_y(ax, subs=(1.0, 2.0, 5.0))
        ax.legend(fontsize=7, loc="upper right", framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no finite divergence", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("candidate amax = (i + 0.5) w")
    ax.set_ylabel("KL(P || Q)")
    ax.set_title("KL divergence over candidates i = 128..2048", fontsize=10)

    if sh is not None:
        ax = axes[2]
        if sh.negative.any():
            _steps(ax, -edges[::-1], sh.negative[::-1], fill="#9ecae1", line="#3182bd", label="x < 0")
        _steps(ax, edges, sh.positive, fill="#fdae6b", line="#e6550d", label="x >= 0")
        if np.isfinite(summary.amax) and summary.amax > 0:
            ax.axvspan(-summary.amax, summary.amax, color="#d62728", alpha=0.07)
            ax.axvline(-summary.amax, color="#d62728", linewidth=1.0)
            ax.axvline(summary.amax, color="#d62728", linewidth=1.0,
                       label=f"int8 grid [-{summary.amax:.3g}, {summary.amax:.3g}]")
        uint8 = summary.choice("uint8-minmax")
        if uint8 is not None:
            q = uint8.quantizer
            ax.axvline(q.lo, color="#2ca02c", linestyle="--", linewidth=1.0)
            ax.axvline(q.hi, color="#2ca02c", linestyle="--", linewidth=1.0,
                       label=f"uint8 range [{q.lo:.3g}, {q.hi:.3g}]")
        ax.set_xlabel("x")
        ax.set_ylabel("count (log)")
        ax.set_title(f"signs: {summary.sign}, {100 * summary.negative_share:.3g}% negative", fontsize=10)
        ax.legend(fontsize=7, loc="upper right", framealpha=0.85)
    fig.suptitle(summary.name, fontsize=11)
    return fig


def _log_y(ax: Any, subs: tuple[float, ...] = (1.0,)) -> None:
    """Log y axis with a few plain-text major ticks and no minor ones (minor ticks and mathtext labels cost most of
    a figure's drawing time)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=subs, numticks=7))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_tick_text))


def _tick_text(value: float, _position: Any = None) -> str:
    """1e5 rather than 100000 or mathtext's 10^5 (mathtext is slow to lay out)."""
    if value > 0:
        exponent = math.log10(value)
        if abs(exponent) >= 4 and abs(exponent - round(exponent)) < 1e-9:
            return f"1e{round(exponent)}"
    return f"{value:g}"


def _steps(ax: Any, edges: np.ndarray, counts: np.ndarray, *, fill: str, line: str, label: str | None = None) -> None:
    """A histogram on a log axis as a filled step line (much faster to draw than a 2048-step patch)."""
    y = np.asarray(counts, dtype=np.float64)
    x = np.asarray(edges, dtype=np.float64)
    y = np.append(y, y[-1])  # steps-post needs the last edge too
    shown = np.where(y > 0, y, np.nan)
    ax.fill_between(x, np.where(y > 0, y, 0.5), 0.5, step="post", color=fill, linewidth=0)
    ax.plot(x, shown, drawstyle="steps-post", color=line, linewidth=0.6, label=label)
    _log_y(ax)
    ax.set_ylim(bottom=0.5)


# ---------------------------------------------------------------------------------------------- page
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1.05em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.name, th.name { text-align: left; } td.note { text-align: left; white-space: normal; color: #555; }
tr.worst td { background: #fff4f4; }
.meta td { text-align: left; } .meta td:first-child { color: #666; }
dl dt { font-weight: 600; margin-top: 0.6em; } dl dd { margin-left: 1.5em; }
img { max-width: 100%; border: 1px solid #eee; }
.small { color: #666; font-size: 0.85em; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], dir = th.classList.contains("sorted-asc") ? -1 : 1;
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        return dir * c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _figure_css(payloads: Any) -> str:
    if payloads is None:
        return ""
    from .report_figures import FIGURE_CSS

    return FIGURE_CSS


def json_number(v: float, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, fmt)


def _sort_key(v: Any) -> str:
    if isinstance(v, (float, int, np.floating, np.integer)):
        v = float(v)
        if math.isnan(v):
            return ""
        return repr(max(min(v, 1e300), -1e300))
    return str(v)


def table_cell(value: Any, text: str | None = None, cls: str = "") -> str:
    shown = html.escape(text if text is not None else str(value))
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-v="{html.escape(_sort_key(value))}">{shown}</td>'


def _anchor(name: str) -> str:
    return "t-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _model_table(summaries: Sequence[TensorSummary], drawn: set[str]) -> str:
    head = (
        "<tr><th>#</th><th class='name'>tensor</th><th class='name'>signs</th><th>min</th><th>max</th>"
        "<th>negative %</th><th>zeros %</th><th>amax</th><th>clipped %</th><th>effective bits</th><th>MSE</th>"
        "<th>SQNR dB</th><th class='name'>best TensorRT choice</th><th>its SQNR dB</th>"
        "<th>uint8 SQNR dB</th><th>uint8 gain dB</th></tr>"
    )
    worst = sorted((s for s in summaries if np.isfinite(s.error.sqnr_db)), key=lambda s: s.error.sqnr_db)[:3]
    worst_names = {s.name for s in worst}
    rows = []
    for s in summaries:
        best = s.best(tensorrt=True)
        uint8 = s.best(tensorrt=False)
        gain = uint8.error.sqnr_db - s.error.sqnr_db if uint8 is not None else float("nan")
        name_html = (f'<a href="#{_anchor(s.name)}">{html.escape(s.name)}</a>' if s.name in drawn
                     else html.escape(s.name))
        if s.body:
            name_html += f' <span class="small">({html.escape(s.body)})</span>' 
        amax_text = json_number(s.amax) + (f" (tied to {s.tied_to})" if s.tied_to else "")
        cls = ' class="worst"' if s.name in worst_names else ""
        rows.append(
            f"<tr{cls}>"
            + table_cell(s.order, str(s.order))
            + f'<td class="name" data-v="{html.escape(s.name)}">{name_html}</td>'
            + table_cell(s.sign, cls="name")
            + table_cell(s.min, json_number(s.min))
            + table_cell(s.max, json_number(s.max))
            + table_cell(100 * s.negative_share, json_number(100 * s.negative_share, ".3g"))
            + table_cell(float("nan") if s.zero_share is None else 100 * s.zero_share,
                    "?" if s.zero_share is None else json_number(100 * s.zero_share, ".3g"))
            + table_cell(s.amax, amax_text)
            + table_cell(100 * s.error.clipped, json_number(100 * s.error.clipped, ".3g"))
            + table_cell(s.bits, json_number(s.bits, ".2f"))
            + table_cell(s.error.mse, json_number(s.error.mse, ".3e"))
            + table_cell(s.error.sqnr_db, json_number(s.error.sqnr_db, ".2f"))
            + table_cell(best.name if best else "", best.name if best else "-", cls="name")
            + table_cell(best.error.sqnr_db if best else float("nan"), json_number(best.error.sqnr_db, ".2f") if best else "-")
            + table_cell(uint8.error.sqnr_db if uint8 else float("nan"), json_number(uint8.error.sqnr_db, ".2f") if uint8 else "-")
            + table_cell(gain, json_number(gain, "+.2f"))
            + "</tr>"
        )
    return f'<table class="sortable" id="tensors"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _choices_table(s: TensorSummary) -> str:
    head = ("<tr><th class='name'>choice</th><th class='name'>grid</th><th>amax / range</th><th>clipped %</th>"
            "<th>effective bits</th><th>MSE</th><th>SQNR dB</th><th class='name'>runs on</th></tr>")
    rows = []
    for c in s.choices:
        q = c.quantizer
        rng = json_number(c.amax) if c.amax is not None else f"[{json_number(q.lo)}, {json_number(q.hi)}]"
        runs = "TensorRT (int8, zero point 0)" if c.tensorrt else "onnxruntime, DLA with its flag; not TensorRT GPUs"
        rows.append(
            "<tr>" + table_cell(c.name, cls="name") + table_cell(q.describe(), cls="name") + table_cell(rng)
            + table_cell(100 * c.error.clipped, json_number(100 * c.error.clipped, ".3g")) + table_cell(c.bits, json_number(c.bits, ".2f"))
            + table_cell(c.error.mse, json_number(c.error.mse, ".3e")) + table_cell(c.error.sqnr_db, json_number(c.error.sqnr_db, ".2f"))
            + table_cell(runs, cls="note") + "</tr>"
        )
    return f'<table class="sortable"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _definitions(algorithm: str) -> str:
    return f"""
<h2>How to read this page</h2>
<dl>
<dt>amax</dt><dd>The symmetric threshold T of TensorRT's int8 grid [-127, 127] &times; T/127 (zero point 0), by
<b>{html.escape(algorithm)}</b>, after TensorRT's scale ties (a pooling output takes its input's scale).</dd>
<dt>Expected MSE and SQNR</dt><dd>Mean squared error of quantising the tensor, computed from the histogram: each
bin's values are spread evenly over the bin (16 points per bin, none beyond the observed extremes); exact zeros,
when counted, stay exact. SQNR = 10 log10(mean x&sup2; / MSE). Checked against the real activations of the bundled
LeNet: within 0.2 dB, except values that pile up at one point inside a bin (softmax outputs near 0, 8-bit image
inputs), where the estimate overstates the error.</dd>
<dt>clipped %</dt><dd>Share of the values outside the grid's range (they saturate at the end code).</dd>
<dt>effective bits</dt><dd>log2 of the number of grid codes the bulk of the values spans. The bulk is
[max(min, &minus;p), min(max, p)] with p the {BULK_COVERAGE:g}th percentile of |x| (the largest
{100 - BULK_COVERAGE:.1g}% are left out, so a few outliers do not count as use). A symmetric tensor with amax = p spans
255 codes (7.99 bits); a one-sided tensor at most 128 (7 bits) of TensorRT's grid, 256 (8 bits) of a uint8 grid;
an amax 8&times; above p costs 3 more bits. Clipping is not counted as use: read it together with clipped %.</dd>
<dt>signs</dt><dd>non-negative / non-positive (one-sided), skewed (both signs, the smaller side's extent under a
quarter of the larger), symmetric.</dd>
<dt>choices</dt><dd>entropy2 is TensorRT's EntropyCalibration2 on the |x| histogram; minmax, percentile, mse are the
other symmetric thresholds (the error of a symmetric grid depends on |x| only); signed-kl runs TensorRT's search on
the signed histogram (two 128-level halves); uint8-minmax and uint8-mse are asymmetric (scale, zero point) grids,
which TensorRT on GPUs rejects (zero points must be 0) but onnxruntime and DLA (with its ONNX-parser flag)
accept.</dd>
</dl>
"""


def figure_id(summary: TensorSummary) -> str:
    """The id of a tensor's figure in the page (unique: names that differ only in odd characters share anchors)."""
    return f"fig-{summary.order}"


def _page(summaries: Sequence[TensorSummary], drawn: Sequence[str], meta: Mapping[str, Any], extra: str = "",
          payloads: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The page; with `payloads` (`report_figures.figure_payload`), the figures are drawn by the browser."""
    title = f"trt-calib report: {meta.get('model_name', 'model')}"
    meta_rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in meta.items() if k != "model_name"
    )
    drawn_set = set(drawn)
    sections = []
    by_name = {s.name: s for s in summaries}
    for name in drawn:
        s = by_name[name]
        tie = f" Its scale is tied to <b>{html.escape(s.tied_to)}</b>." if s.tied_to else ""
        zeros = "" if s.zero_share is None else f", {100 * s.zero_share:.3g}% exact zeros"
        inside = f" In the {html.escape(s.body)}." if s.body else ""
        sections.append(
            f'<h3 id="{_anchor(s.name)}">{html.escape(s.name)}</h3>'
            f"<p>{s.num_values:,} values in [{json_number(s.min)}, {json_number(s.max)}], {html.escape(s.sign)}, "
            f"{100 * s.negative_share:.3g}% negative{zeros}. amax {json_number(s.amax)} ({html.escape(s.algorithm)}): "
            f"{100 * s.error.clipped:.3g}% clipped, {s.bits:.2f} effective bits, SQNR {json_number(s.error.sqnr_db, '.2f')} dB."
            f"{tie}{inside}</p>"
            + (f'<img src="{html.escape(s.figure)}" alt="figures of {html.escape(s.name)}">' if s.figure else "")
            + (f'<div class="figure" id="{figure_id(s)}"><noscript>The figure is drawn by the page\'s script: allow '
               "JavaScript for this file, or write PNG figures with --figures png.</noscript></div>"
               if payloads is not None else "")
            + _choices_table(s)
        )
    omitted = len(summaries) - len(drawn)
    note = (f'<p class="small">Figures for the {len(drawn)} tensors with the lowest SQNR; {omitted} more are in the '
            "table only (raise --max-tensors to draw them).</p>" if omitted else "")
    script = ""
    if payloads is not None:
        from .report_figures import FIGURE_SCRIPT, payload_script

        note += '<p id="figure-status"></p>'
        script = payload_script(list(payloads)) + f"\n<script>{FIGURE_SCRIPT}</script>"
    tensors = "" if not summaries else f"""<h2>Tensors</h2>
<p class="small">Click a column to sort (e.g. SQNR dB for the tensors TensorRT quantises worst). Shaded rows: the three
lowest SQNR. "uint8 gain" is the SQNR of the best asymmetric uint8 grid minus that of the chosen amax.</p>
{_model_table(summaries, drawn_set)}
{_definitions(summaries[0].algorithm)}
<h2>Per tensor</h2>
{note}
{"".join(sections)}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}{_figure_css(payloads)}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table class="meta">{meta_rows}</table>
{extra}
{tensors}
<script>{_SORT_JS}</script>
{script}
</body></html>
"""


# ---------------------------------------------------------------------------------------------- folder
def _check_target(out_dir: Path, force: bool) -> None:
    """Refuse a file, a missing parent, or a non-empty folder holding no previous report unless forced (then the
    report's files are added beside what is there; nothing is deleted that the report did not write)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrtCalibError(f"{out_dir}: exists and is not a folder. Hint: choose another -o")
    if not out_dir.resolve().parent.is_dir():
        raise TrtCalibError(f"{out_dir}: the folder to write it in does not exist")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force and not _is_report(out_dir):
        raise TrtCalibError(
            f"{out_dir}: folder is not empty and holds no previous report (no report.json from trt-calib). "
            "Hint: choose another -o, or pass --force to write the report's files beside what is there"
        )


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 20)
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return None


def report_files(folder: str | os.PathLike) -> dict[str, str | None] | None:
    """The files (relative path -> sha256 when recorded) a previous report wrote in `folder`, from its manifest (or,
    for a report written before manifests, from its report.json); None when the folder holds no report."""
    folder = Path(folder)
    manifest = _read_json(folder / MANIFEST)
    if isinstance(manifest, dict) and manifest.get("generator") == REPORT_MARKER:
        listed = manifest.get("files")
        if isinstance(listed, dict):
            files = {f: h if isinstance(h, str) else None for f, h in listed.items() if _safe_relative(f)}
            return {**files, MANIFEST: None}
    report = _read_json(folder / "report.json")
    if not (isinstance(report, dict) and report.get("generator") == REPORT_MARKER):
        return None
    names = {"index.html", "report.json"}
    for tensor in report.get("tensors") or []:
        figure = tensor.get("figure") if isinstance(tensor, dict) else None
        if isinstance(figure, str) and _safe_relative(figure):
            names.add(figure)
    return dict.fromkeys(names)


def _still_ours(path: Path, sha256: str | None) -> bool:
    """A listed file still holds what the report wrote (unknown for reports written before hashes were kept)."""
    if sha256 is None:
        return True
    from .provenance import file_sha256

    try:
        return file_sha256(path) == sha256
    except OSError:
        return False


def _safe_relative(name: str) -> bool:
    """A manifest entry that stays inside the report folder (a hand-edited manifest must not reach outside)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _is_report(folder: Path) -> bool:
    return report_files(folder) is not None


def _figure_name(index: int, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "tensor"
    return f"figures/{index:04d}_{slug}.png"


def _manifest_text(files: Mapping[str, str | None]) -> str:
    return json.dumps({"generator": REPORT_MARKER, "files": dict(sorted(files.items()))}, indent=1) + "\n"


def write_report(
    out_dir: str | os.PathLike,
    summaries: Sequence[TensorSummary],
    histograms: Mapping[str, AbsHistogram | SignedHistogram],
    *,
    meta: Mapping[str, Any],
    max_tensors: int | None = None,
    force: bool = False,
    progress: bool = False,
    sections: Sequence[Any] = (),
    figures: str = "inline",
    workers: int | None = None,
    left_out: Mapping[str, str] | None = None,
) -> list[str]:
    """Write the report into `out_dir`; returns the drawn names.

    Figures are drawn for the `max_tensors` tensors with the lowest SQNR (all when None), kept in model order:
    `figures="inline"` embeds their numbers for the browser to draw, `"png"` draws PNG files with matplotlib in
    `workers` processes (default: one per core; 1 draws in this process). `sections` (e.g.
    `sensitivity_report.SensitivitySection`) draw their figures into the folder with `render(folder)`, which returns
    their HTML, shown before the tensors; `to_json()` goes into report.json. `left_out`: tensors calibrate would
    name that the report has no histogram of (If branches no batch took, Loop/Scan bodies), with why: listed on the
    page and in report.json.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, force)
    if figures not in FIGURE_MODES:
        raise TrtCalibError(f"unknown figure mode {figures!r}; choose one of {', '.join(FIGURE_MODES)}")
    if max_tensors is not None and max_tensors < 0:
        raise TrtCalibError(f"--max-tensors must be >= 0, got {max_tensors}")
    if workers is not None and workers < 1:
        raise TrtCalibError(f"workers must be >= 1, got {workers}")
    ranked = sorted(summaries, key=lambda s: (_sqnr_rank(s), s.order))
    limit = len(ranked) if max_tensors is None else max_tensors
    drawn_set = {s.name for s in ranked[:limit]}
    drawn = [s.name for s in summaries if s.name in drawn_set]
    by_name = {s.name: s for s in summaries}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.resolve().parent))
    try:
        (tmp / "figures").mkdir()
        from tqdm import tqdm

        with tqdm(total=len(drawn), desc="figures", unit="figure", file=sys.stderr, leave=False,
                  disable=None if progress else True) as bar:
            payloads = None
            if figures == "inline":
                from .report_figures import figure_payload

                payloads = []
                for name in drawn:
                    s = by_name[name]
                    s.figure = None
                    payloads.append(figure_payload(s, histograms[name], figure_id(s)))
                    bar.update(1)
            else:
                pngs = _draw_pngs([(by_name[n], histograms[n]) for n in drawn], workers, bar.update)
                for name, png in zip(drawn, pngs):
                    s = by_name[name]
                    s.figure = _figure_name(s.order, s.name)
                    (tmp / s.figure).write_bytes(png)
        extra = "".join(section.render(tmp) for section in sections)
        extra += _left_out_section(left_out or {})
        (tmp / "index.html").write_text(_page(summaries, drawn, meta, extra, payloads), encoding="utf-8")
        report = {"generator": REPORT_MARKER, **_jsonable(dict(meta)), "figures": figures, "drawn": drawn,
                  "tensors": [s.to_dict() for s in summaries],
                  "left_out": [{"name": n, "why": why} for n, why in (left_out or {}).items()]}
        for section in sections:
            report[section.name] = _jsonable(section.to_json())
        (tmp / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        from .provenance import file_sha256

        if not any((tmp / "figures").iterdir()):
            (tmp / "figures").rmdir()
        # Everything in the fresh temporary folder is the report's own: the manifest lists it all.
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        hashes = {f: file_sha256(tmp / f) for f in files}
        (tmp / MANIFEST).write_text(_manifest_text(hashes), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        _install(tmp, out_dir, hashes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return drawn


def _left_out_section(left_out: Mapping[str, str]) -> str:
    """The tensors the report does not show and why, one paragraph per body (`control_flow.grouped`)."""
    if not left_out:
        return ""
    from ..ort.control_flow import grouped

    items = "".join(
        f"<li>{len(names)} tensor{'s' * (len(names) != 1)} {html.escape(why)}: "
        f"{html.escape(', '.join(names[:20]))}{html.escape(', ...') if len(names) > 20 else ''}</li>"
        for why, names in grouped(left_out))
    return (f'<h2 id="left-out">Not in this report ({len(left_out)} tensors)</h2>'
            '<p class="small">Tensors inside If branches and Loop/Scan bodies that TensorRT names and calibrate would '
            f"calibrate, but no histogram of which exists here:</p><ul>{items}</ul>")


def _draw_pngs(items: Sequence[tuple[TensorSummary, Any]], workers: int | None,
               progress: Callable[[int], None]) -> list[bytes]:
    """PNG bytes of each (summary, histogram), drawn by matplotlib: in worker processes (`ort.executor`, local)
    when there are enough figures to pay for starting them, else here."""
    from ..ort.executor import make_executor

    count = workers if workers is not None else min(_cores(), len(items) // _FIGURES_PER_WORKER)
    kind = "local" if count > 1 else "serial"
    with make_executor(kind, workers=count if kind == "local" else None) as executor:
        return executor.map(figure_png, items, progress=progress)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: A worker process costs about as much to start (imports, matplotlib's setup) as drawing a few figures.
_FIGURES_PER_WORKER = 8


def _sqnr_rank(s: TensorSummary) -> float:
    v = s.error.sqnr_db
    return v if not math.isnan(v) else math.inf


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inside(folder: Path, name: str) -> bool:
    """Whether `folder/name` is reached without a symlink below `folder`: its real path is the folder's real path
    joined with `name`. A manifest entry that a symlink leads elsewhere (even out of the folder) is not ours."""
    real = os.path.realpath(folder)
    return os.path.realpath(os.path.join(folder, name)) == os.path.normpath(os.path.join(real, name))


def _install(tmp: Path, out_dir: Path, files: Mapping[str, str]) -> None:
    """Move the finished report from `tmp` into `out_dir`, replacing only files a previous report wrote there and
    that still hold what it wrote; `files` maps the new report's files (all but the manifest) to their sha256.

    Every path is resolved first: nothing reached through a symlink is written, replaced or deleted (a manifest
    entry under a symlinked folder may be anyone's file, anywhere)."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    listed = report_files(out_dir) or {}
    linked = sorted(f for f in {*listed, *files} if f != MANIFEST and not _inside(out_dir, f))
    owned = {f: h for f, h in listed.items()
             if f == MANIFEST or (f not in linked and _still_ours(out_dir / f, h))}
    outside = [f for f in files if f in linked]
    if outside:
        raise TrtCalibError(
            f"{out_dir}: the report would write {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} through a "
            "symlink (the path resolves elsewhere); nothing was changed. Hint: remove the symlink, or choose another -o"
        )
    foreign = [f for f in [*files, MANIFEST] if f not in owned and os.path.lexists(out_dir / f)]
    new_figures = any(f.startswith("figures/") for f in files)
    if new_figures and os.path.lexists(out_dir / "figures") and not (out_dir / "figures").is_dir():
        foreign.append("figures")
    if foreign:
        raise TrtCalibError(
            f"{out_dir}: the report would replace {', '.join(sorted(foreign)[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}, which no earlier report there wrote (or which changed since); "
            "nothing was changed. Hint: move those files away, or choose another -o"
        )
    # The manifest on disk lists every file this run may write before any is moved, so an interruption leaves
    # nothing a later report would take for someone else's.
    pending = {**{f: h for f, h in owned.items() if f != MANIFEST}, **dict.fromkeys(files)}
    atomic_write(out_dir / MANIFEST, _manifest_text(pending))
    if new_figures:
        (out_dir / "figures").mkdir(exist_ok=True)
    for name in sorted(files):
        os.replace(tmp / name, out_dir / name)
    for name in sorted(set(owned) - set(files) - {MANIFEST}):
        try:
            os.unlink(out_dir / name)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            log.warning("%s: listed in the report's manifest but a folder now; left in place", out_dir / name)
    kept = [f for f in listed if f in linked]
    if kept:
        log.warning("%s: left %s in place: listed by the earlier report, but reached through a symlink now",
                    out_dir, ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""))
    stale = sorted(set(listed) - set(owned) - set(kept))
    if stale:
        log.info("%s: kept %s, which the earlier report wrote but which changed since", out_dir, ", ".join(stale[:5]))
    atomic_write(out_dir / MANIFEST, _manifest_text(files))


# ---------------------------------------------------------------------------------------------- all of it
def build_report(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    batches: Iterable[Any] | None = None,
    histograms: Mapping[str, AbsHistogram | SignedHistogram] | None = None,
    tensors: Sequence[str] | None = None,
    max_tensors: int | None = None,
    algorithm: str = "entropy2",
    percentile: float = 99.99,
    trt_version: str = DEFAULT_TRT_VERSION,
    force: bool = False,
    progress: bool = False,
    threads: int | None = None,
    meta: Mapping[str, Any] | None = None,
    save_histograms: str | os.PathLike | None = None,
    sections: Sequence[Any] = (),
    max_activation_mb: float = 256,
    figures: str = "inline",
    workers: int | None = None,
) -> ReportResult:
    """Collect signed histograms from `batches` (or use saved `histograms`), analyse, and write the report folder.

    `tensors` are glob patterns limiting the tensors reported. `sections` are extra sections (`write_report`); with
    them, neither batches nor histograms are needed. A batch whose activations exceed `max_activation_mb` runs in
    parts, as in calibration (the same histograms). `figures` and `workers`: see `write_report`. Nothing is written
    unless everything succeeded.
    """
    from ..ort.model import load_model

    started = time.perf_counter()
    if batches is None and histograms is None and sections:
        histograms = {}
    elif (batches is None) == (histograms is None):
        raise TrtCalibError("give either calibration data or saved histograms (not both). "
                            "Hint: --data D runs the model; --histograms H.npz reuses a calibration's histograms")
    out_dir = Path(out_dir)
    _check_target(out_dir, force)
    model_path = None if not isinstance(model, (str, os.PathLike)) else str(model)
    model = load_model(model)
    covering = batches is not None or bool(histograms)  # not a page of sections only
    everything, where, body = report_tensors(model) if covering else ([], {}, [])
    if histograms is None:
        names = select_tensors(everything, tensors)
        extra = _tie_sources(model, names) if tensors else []
        bar = None
        if progress:
            from tqdm import tqdm

            total = len(batches) if hasattr(batches, "__len__") else None
            bar = tqdm(total=total, unit="batch", desc="collecting", file=sys.stderr, leave=False, disable=None)
        try:
            collected, _ = collect_signed(model, batches, names + extra, progress=bar.update if bar else None,
                                          threads=threads, max_activation_mb=max_activation_mb)
        finally:
            if bar is not None:
                bar.close()
        if save_histograms:
            from ..core.signs import save_signed_histograms

            save_signed_histograms(save_histograms, collected)
        histograms = collected
    else:
        names = select_tensors(list(histograms), tensors)
        if tensors:
            keep = set(names) | set(_tie_sources(model, names))
            histograms = {n: h for n, h in histograms.items() if n in keep}
        graph_names = set(everything) | set(where) if histograms else set()
        strangers = [n for n in histograms if n not in graph_names]
        if strangers and len(strangers) == len(histograms):
            raise DataError(
                f"none of the {len(histograms)} saved histograms names a tensor of this model "
                f"(e.g. {', '.join(strangers[:5])}). Hint: the histograms must come from this model"
            )
        if strangers:
            log.warning("%d saved histogram(s) name no tensor of the model: %s", len(strangers), ", ".join(strangers[:10]))
    from tqdm import tqdm

    with tqdm(total=len(histograms), desc="thresholds", unit="tensor", file=sys.stderr, leave=False,
              disable=None if progress else True) as bar:
        summaries_all = analyse(histograms, model=model, algorithm=algorithm, percentile=percentile,
                                trt_version=trt_version, progress=bar.update)
    wanted = set(names)
    summaries = [s for s in summaries_all if s.name in wanted]
    for order, s in enumerate(summaries):
        s.order = order
        s.body = where.get(s.name, "")
    left_out = {n: why for n, why in left_out_tensors(model, body, histograms).items()
                if not tensors or any(fnmatch.fnmatchcase(n, p) for p in tensors)} if covering else {}
    if left_out:
        from ..ort.control_flow import summary_lines

        for line in summary_lines(left_out):
            log.warning("not in the report: %s", line)
    info = {
        "model_name": Path(model_path).name if model_path else (model.graph.name or "model"),
        "model": model_path or "(in memory)",
        **(meta or {}),
        "algorithm": algorithm,
        "TensorRT version emulated": trt_version,
        "tensors": len(summaries),
        "written by": f"trt-calib {_version()}",
    }
    if algorithm == "percentile":
        info["percentile"] = percentile
    if not summaries and sections:  # a page of sections only (report --stability / --sensitivity alone)
        for key in ("algorithm", "TensorRT version emulated", "tensors"):
            info.pop(key)
    drawn = write_report(out_dir, summaries, histograms, meta=info, max_tensors=max_tensors, force=force,
                         progress=progress, sections=sections, figures=figures, workers=workers, left_out=left_out)
    seconds = time.perf_counter() - started
    result = ReportResult(out_dir, summaries, drawn, seconds,
                          figures=len(drawn) + sum(len(getattr(s, "figures", ())) for s in sections),
                          sections=[s.name for s in sections], left_out=left_out)
    log.info("wrote %s (%s) in %.1f s", out_dir / "index.html", result.describe(), seconds)
    return result


def _version() -> str:
    from .. import __version__

    return __version__
