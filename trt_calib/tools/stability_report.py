"""The stability section of the HTML report: per-tensor spread bars, the settle curve and the end-to-end table, from a
STAB.json (`tools.stability`, `trt-calib stability`). This module only draws and tabulates them."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from .report import table_cell, json_number
from .stability import load_stability

__all__ = ["StabilitySection", "render_stability_figures", "stability_section", "stability_plots"]

#: What reading a STAB.json whose fields are not those `trt-calib stability` writes can raise.
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OverflowError)


_KIND_STYLE = {
    "base": ("#000000", "D", "base (data order)"),
    "order": ("#1f77b4", "o", "random order"),
    "batch_size": ("#ff7f0e", "s", "other batch size"),
}
_STABILITY_ROWS = 40  # tensors drawn in the spread bars (the least stable first)


def _short(name: str, width: int = 34) -> str:
    """A tensor name for a figure label: its start and its end, which tell layers apart, around an ellipsis."""
    return name if len(name) <= width else f"{name[: width // 2 - 2]}...{name[-(width // 2 - 1):]}"


def _judged(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tensors STAB.json judges (not tied, finite non-zero amax), least stable first."""
    rows = [t for t in record["tensors"] if t.get("tied_to") is None and not t.get("degenerate")]
    return sorted(rows, key=lambda t: -float(t["range_percent"]))


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def stability_plots(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers the two figures draw, read from STAB.json (a field that is missing or of the wrong type raises
    here, before anything is drawn): per shown tensor its spread in % of the base amax, per tensor its settle curve
    in bins of the base histogram."""
    variants = record["variants"]
    judged = _judged(record)
    spread = []
    for t in judged[:_STABILITY_ROWS][::-1]:  # least stable at the top
        base = float(t["base_amax"])
        points = [(100.0 * (float(t["amax"][i]) / base - 1.0), _KIND_STYLE[variants[i]["kind"]], variants[i]["kind"])
                  for i in record["spread_variants"]]
        spread.append({"name": str(t["name"]), "unstable": bool(t["unstable"]),
                       "points": [p for p in points if math.isfinite(p[0])]})
    settle = []
    if judged and record["subset_variants"]:
        loud = [t for t in judged if t["unstable"] or t["settle"]["settled_at"] is None][:10]  # least stable first
        loud_names = {t["name"] for t in loud}
        for t in [t for t in judged if t["name"] not in loud_names] + loud:  # the labelled lines drawn on top
            sizes = [float(n) for n in t["settle"]["num_samples"]]
            bins = [(float(a) - float(t["base_amax"])) / float(t["base_bin_width"]) for a in t["settle"]["amax"]]
            if len(sizes) != len(bins):
                raise ValueError(f"{t['name']}: settle curve of {len(bins)} amax for {len(sizes)} sample counts")
            keep = [(n, b) for n, b in zip(sizes, bins) if math.isfinite(n) and math.isfinite(b)]
            settle.append({"name": str(t["name"]), "loud": t["name"] in loud_names,
                           "sizes": [n for n, _ in keep], "bins": [b for _, b in keep]})
    return {"spread": spread, "settle": settle, "judged": len(judged), "variants": len(record["spread_variants"]),
            "tolerance": float(record["tolerance_percent"])}


def render_stability_figures(record: Mapping[str, Any], folder: str | os.PathLike,
                             plots: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Draw STAB.json's spread bars and settle curve into `folder`/figures; returns their paths relative to it.
    `plots` is `stability_plots(record)`, when already made."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    (folder / "figures").mkdir(exist_ok=True)
    plots = stability_plots(record) if plots is None else plots
    tolerance = plots["tolerance"]
    out: dict[str, str] = {}
    if plots["spread"]:
        shown = plots["spread"]
        fig = Figure(figsize=(9.0, 1.2 + 0.24 * len(shown)), dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.25, right=0.97, bottom=0.6 / (1.2 + 0.24 * len(shown)) + 0.05, top=0.93)
        for y, t in enumerate(shown):
            rel = [r for r, _, _ in t["points"]]
            color = "#d62728" if t["unstable"] else "#9e9e9e"
            if rel:
                ax.plot([min(rel), max(rel)], [y, y], color=color, linewidth=5, alpha=0.45, solid_capstyle="butt")
            for r, (c, marker, _), kind in t["points"]:
                ax.plot([r], [y], marker=marker, color=c, markersize=4, linestyle="none",
                        zorder=4 if kind == "base" else 3)
        for kind, (c, marker, label) in _KIND_STYLE.items():
            ax.plot([], [], marker=marker, color=c, linestyle="none", label=label)
        ax.plot([], [], color="#d62728", linewidth=5, alpha=0.45, label=f"range > {tolerance:g}% (unstable)")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([_short(t["name"]) for t in shown], fontsize=7)
        ax.set_xlabel("amax relative to the base calibration (%)")
        ax.set_title(f"entropy2 amax over {plots['variants']} orders / batch sizes "
                     f"({len(shown)} least stable of {plots['judged']} tensors)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right", framealpha=0.85)
        ax.grid(axis="x", color="#eeeeee")
        out["spread"] = "figures/stability_spread.png"
        fig.savefig(folder / out["spread"])
    if plots["settle"]:
        fig = Figure(figsize=(9.6, 4.2), dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.08, right=0.70, bottom=0.13, top=0.91)
        ax.axhspan(-1.0, 1.0, color="#2ca02c", alpha=0.12, label="within one bin")
        for t in plots["settle"]:
            if t["loud"]:
                ax.plot(t["sizes"], t["bins"], marker="o", markersize=3, linewidth=1.2, label=_short(t["name"]))
            else:
                ax.plot(t["sizes"], t["bins"], color="#b0b0b0", linewidth=0.7)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("calibration samples (the first n of the data)")
        ax.set_ylabel("amax - full-data amax (bins)")
        ax.set_title("settle curve: does more data still move the amax?", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
        ax.grid(color="#eeeeee")
        out["settle"] = "figures/stability_settle.png"
        fig.savefig(folder / out["settle"])
    return out


def stability_section(record: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The report's stability section: summary, the two figures, the per-tensor table and the end-to-end effect."""
    s = record["summary"]
    variants = record["variants"]
    counts = {k: sum(v["kind"] == k for v in variants) for k in ("order", "batch_size", "subset")}
    sizes = sorted({v["batch_size"] for v in variants if v["kind"] in ("base", "batch_size")})
    parts = [
        "<h2>Stability: batch order, batch size, amount of data</h2>",
        f"<p>{len(variants)} calibrations with TensorRT's entropy2 on the same {record['num_samples']} samples, each "
        f"a full rerun: the data in order at batch {record['base_batch_size']} (the base), {counts['order']} random "
        f"orders, batch sizes {', '.join(map(str, sizes))}, and {counts['subset']} subsets. "
        f"<b>{s['unstable']} of {s['judged']}</b> tensors are unstable (max &minus; min of the amax above "
        f"{float(record['tolerance_percent']):g}% of the base amax)"
        + (": " + html.escape(", ".join(s["unstable_tensors"][:12])) if s["unstable"] else "")
        + ("" if s.get("unstable_quantized") is None else
           f"; {len(s['unstable_quantized'])} of them get a Q/DQ pair where <code>quantize_model</code> places "
           "them (TensorRT's guidance; the others' scales matter only to an implicit-INT8 engine)")
        + ". Why: TensorRT's histogram range is the first batch's max, doubled as later batches exceed it, so "
        "which samples come first moves every bin edge, and the KL choice with them.</p>",
    ]
    if "spread" in figures:
        parts.append(f'<img src="{html.escape(figures["spread"])}" alt="amax spread per tensor">')
    if "settle" in figures:
        parts.append(f'<img src="{html.escape(figures["settle"])}" alt="settle curve">')
    head = ("<tr><th class='name'>tensor</th><th>base amax</th><th>min</th><th>max</th><th>range %</th>"
            "<th>range (bins)</th><th>settled at (samples)</th><th class='name'>Q/DQ pair</th>"
            "<th class='name'>verdict</th></tr>")
    rows = []
    for t in _judged(record):
        settled = t["settle"]["settled_at"]
        settled_text = "-" if not record["subset_variants"] else ("not settled" if settled is None else str(settled))
        rows.append(
            "<tr" + (' class="worst"' if t["unstable"] else "") + ">"
            + table_cell(t["name"], cls="name") + table_cell(float(t["base_amax"]), json_number(float(t["base_amax"])))
            + table_cell(float(t["min"]), json_number(float(t["min"]))) + table_cell(float(t["max"]), json_number(float(t["max"])))
            + table_cell(float(t["range_percent"]), json_number(float(t["range_percent"]), ".2f"))
            + table_cell(float(t["range_bins"]), json_number(float(t["range_bins"]), ".1f"))
            + table_cell(float("inf") if settled is None else float(settled), settled_text)
            + table_cell({True: "yes", False: "no"}.get(t.get("quantized"), "?"), cls="name")
            + table_cell("unstable" if t["unstable"] else "stable", cls="name") + "</tr>"
        )
    parts.append(f'<table class="sortable" id="stability"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>')
    e2e = record["end_to_end"]
    if "skipped" in e2e:
        parts.append(f"<p>End to end: not measured ({html.escape(str(e2e['skipped']))}).</p>")
    else:
        metric = e2e["metric"]
        head = (f"<tr><th class='name'>variant</th><th>{html.escape(metric)}</th><th>agreement %</th>"
                "<th class='name'></th></tr>")
        rows = []
        for r in e2e["variants"]:
            mark = {e2e["best"]: "most favourable", e2e["worst"]: "least favourable"}.get(r["variant"], "")
            agreement = r.get("agreement")
            rows.append(
                "<tr>" + table_cell(r["label"], cls="name") + table_cell(float(r[metric]), json_number(float(r[metric]), ".4g"))
                + table_cell(float("nan") if agreement is None else 100 * float(agreement),
                        "-" if agreement is None else f"{100 * float(agreement):.1f}")
                + table_cell(mark, cls="name") + "</tr>"
            )
        parts.append(
            f"<p>End to end: each distinct set of scales as a Q/DQ model, evaluated against FP32 on "
            f"{html.escape(str(e2e['on']))} (output {html.escape(str(e2e['output']))}; {_ORT_NOTE_SHORT})</p>"
            f'<table class="sortable"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        )
    parts.append(
        '<p class="small">range %: (max &minus; min) / base amax over the base, the random orders and the batch '
        "sizes; range (bins): the same in bins of the base histogram. settled at: the smallest subset from which "
        "every larger subset's amax lies within one bin of the full data's (not settled: only the full data "
        "does).</p>"
    )
    return "\n".join(parts)


_ORT_NOTE_SHORT = "onnxruntime's int8 arithmetic approximates TensorRT's: compare the rows with each other"


class StabilitySection:
    """One report section from a STAB.json: `render(folder)` draws its figures there and returns its HTML."""

    name = "stability"  # its key in report.json

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.record = load_stability(self.path)
        self.figures: list[str] = []  # what `render` drew
        # Everything the section shows is read now, so that a STAB.json with the right format tag but other fields
        # is refused before any data is read or anything drawn.
        try:
            self.plots = stability_plots(self.record)
            names = {"spread": "figures/stability_spread.png"} if self.plots["spread"] else {}
            if self.plots["settle"]:
                names["settle"] = "figures/stability_settle.png"
            self.html = stability_section(self.record, names)
            s = self.record["summary"]
            self.description = (f"{self.path} ({len(self.record['variants'])} calibrations, {int(s['unstable'])} of "
                                f"{int(s['judged'])} tensors unstable)")
            if not isinstance(s, dict):
                raise TypeError(f"summary is a {type(s).__name__}, not an object")
        except _MALFORMED as exc:
            raise DataError(
                f"{self.path}: a stability file with trt-calib's format tag, but not as `trt-calib stability` writes it "
                f"({type(exc).__name__}: {str(exc)[:200]}). Hint: write it again with trt-calib stability -o"
            ) from None

    def meta(self) -> dict[str, Any]:
        return {"stability": self.description}

    def to_json(self) -> Mapping[str, Any]:
        return self.record["summary"]

    def render(self, folder: Path) -> str:
        """Draw the spread bars and the settle curve into `folder`/figures and return the section's HTML."""
        self.figures = list(render_stability_figures(self.record, folder, self.plots).values())
        return self.html
