"""The sensitivity section of the HTML report: per-unit bars and the measured greedy curve, from a SENS.json.

The numbers come from `qdq.sensitivity` (`trt-calib sensitivity`); this module only draws and tabulates them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ..qdq.sensitivity import SensitivityResult, load_sensitivity, not_ranked_groups

__all__ = ["SensitivitySection", "BARS_FIGURE", "CURVE_FIGURE"]

BARS_FIGURE = "figures/sensitivity_bars.png"
CURVE_FIGURE = "figures/sensitivity_greedy.png"
_MAX_BARS = 40  # units drawn in the bar chart (all are in the table)


def _gain(result: SensitivityResult, value: float) -> float:
    """How much better than every unit INT8 `value` is, in the metric's own units (positive = better)."""
    m = result.metric
    return m.key(result.baseline_error) - m.key(value)


def _f(v: float | None, fmt: str = ".4g") -> str:
    if v is None:
        return "-"
    return format(v, fmt) if math.isfinite(v) else str(v)


class SensitivitySection:
    """One report section from a SENS.json: `render(folder)` draws its two figures there and returns its HTML."""

    name = "sensitivity"  # its key in report.json

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.result = load_sensitivity(self.path)
        self.figures: list[str] = []  # what `render` drew

    def meta(self) -> dict[str, Any]:
        r = self.result
        return {"sensitivity": f"{self.path} ({len(r.units)} units, metric {r.metric.name})"}

    def to_json(self) -> dict[str, Any]:
        return self.result.to_json()

    def render(self, folder: Path) -> str:
        """Draw the bar chart and the greedy curve into `folder`/figures and return the section's HTML."""
        self._bars(folder / BARS_FIGURE)
        self._curve(folder / CURVE_FIGURE)
        self.figures = [BARS_FIGURE, CURVE_FIGURE]
        return self._html()

    # ------------------------------------------------------------------------------------------ figures
    def _bars(self, path: Path) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        r = self.result
        units = r.units[:_MAX_BARS]
        n = max(1, len(units))
        fig = Figure(figsize=(11, 1.2 + 0.28 * n), dpi=80)
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2, sharey=True)
        fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.75 / (1.2 + 0.28 * n), bottom=0.45 / (1.2 + 0.28 * n),
                            wspace=0.06)
        y = list(range(len(units)))
        labels = [f"{u.rank}. {u.node} ({u.op})" for u in units]
        gains = [_gain(r, u.excluded) for u in units]
        left.barh(y, gains, color=["#2ca02c" if g >= 0 else "#d62728" for g in gains], height=0.7)
        left.axvline(0, color="black", linewidth=0.8)
        left.set_yticks(y, labels, fontsize=8)
        left.invert_yaxis()
        left.set_title("bought back by keeping it in float\n(every unit INT8 minus every unit but this one)",
                       fontsize=9)
        left.set_xlabel(r.metric.name, fontsize=8)
        h = 0.27
        series = (("alone", "#7f7f7f", [u.alone for u in units]),
                  ("weights only", "#1f77b4", [u.weights_only for u in units]),
                  ("activations only", "#ff7f0e", [u.activations_only for u in units]))
        for k, (label, color, values) in enumerate(series):
            shown = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
            right.barh([i + (k - 1) * h for i in y], shown, height=h, color=color, label=label)
        right.set_title("INT8 in this unit only (the rest float)", fontsize=9)
        right.set_xlabel(r.metric.name + (" (higher is better)" if r.metric.higher_is_better else ""), fontsize=8)
        right.legend(fontsize=7, loc="lower right")
        for ax in (left, right):
            ax.tick_params(axis="x", labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.xaxis.get_offset_text().set_fontsize(7)
        fig.savefig(path, format="png")

    def _curve(self, path: Path) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        r = self.result
        fig = Figure(figsize=(6.5, 3.4), dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.16, right=0.97, top=0.88, bottom=0.15)
        ks = [p.k for p in r.greedy]
        errors = [p.error for p in r.greedy]
        ax.plot(ks, errors, "o-", color="#1f77b4", label="measured, top-k kept in float")
        if r.target is not None:
            ax.axhline(r.target, color="#d62728", linestyle="--", linewidth=1, label=f"target {r.target:g}")
        chosen = next((p for p in r.greedy if p.k == r.chosen_k), None)
        if chosen is not None:
            ax.plot([chosen.k], [chosen.error], "s", color="#d62728", markersize=9, fillstyle="none",
                    label=f"chosen k = {chosen.k}")
        ax.set_xlabel("units kept in float (k)")
        ax.set_ylabel(r.metric.name)
        ax.set_xticks(ks)
        ax.set_title("greedy curve: each point a real run", fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.legend(fontsize=7)
        fig.savefig(path, format="png")

    # ------------------------------------------------------------------------------------------ html
    def _html(self) -> str:
        r = self.result
        rows = "".join(
            f"<tr><td>{u.rank}</td><td class='name'>{html.escape(u.node)}</td><td class='name'>{html.escape(u.op)}"
            f"</td><td>{_f(u.excluded)}</td><td>{_f(_gain(r, u.excluded), '+.4g')}</td><td>{_f(u.alone)}</td>"
            f"<td>{_f(u.weights_only)}</td><td>{_f(u.activations_only)}</td></tr>"
            for u in r.units
        )
        greedy = "".join(
            ("<tr class='worst'>" if p.k == r.chosen_k else "<tr>") + f"<td>{p.k}</td><td>{_f(p.error)}</td>"
            f"<td class='name'>{html.escape(', '.join(p.kept_in_float) or '-')}</td></tr>"
            for p in r.greedy
        )
        evaluation = r.info.get("evaluation_data") or r.info.get("evaluation", "")
        branches = "".join(
            f"<p>Measured inside the {html.escape(str(row.get('branch')))} of {html.escape(str(row.get('if')))}: its "
            f"condition <code>{html.escape(str(row.get('condition')))}</code> was {html.escape(str(row.get('value')))} "
            "on every held-out batch.</p>" for row in (r.info.get("if_branches") or {}).get("inlined", []))
        left = ""
        if r.not_ranked:
            items = "".join(
                f"<li>{html.escape(why)}: " + html.escape(", ".join(n + (f" ({own})" if own else "") for n, own in nodes))
                + "</li>" for why, nodes in not_ranked_groups(r.not_ranked))
            left = f"<h3>Not ranked ({len(r.not_ranked)})</h3><ul>{items}</ul>"
        if r.screened_out:
            left += (f"<p>Screened out (estimated by their local error, not measured): {len(r.screened_out)} units, "
                     "listed in report.json.</p>")
        omitted = (f" The bar chart shows the top {_MAX_BARS} of {len(r.units)}; the table has all."
                   if len(r.units) > _MAX_BARS else "")
        return f"""
<h2 id="sensitivity">Sensitivity: which units INT8 hurts</h2>
<p>From <code>{html.escape(str(self.path))}</code>. Metric: <b>{html.escape(r.metric.name)}</b>,
{html.escape(r.metric.description)}. Every unit INT8: <b>{_f(r.baseline_error)}</b>. Held-out data:
{html.escape(str(evaluation))}. Each number is a real run (onnxruntime, Q/DQ graph as written); rank 1 is the unit
whose exclusion helps most.{omitted}</p>
<img src="{BARS_FIGURE}" alt="sensitivity bars">
<table class="sortable"><thead><tr><th>rank</th><th class="name">node</th><th class="name">op</th>
<th>excluded</th><th>gain</th><th>alone</th><th>weights only</th><th>activations only</th></tr></thead>
<tbody>{rows}</tbody></table>
{branches}{left}
<h3>Greedy curve</h3>
<p>k top-ranked units kept in float, each point measured; chosen: k = {r.chosen_k}
({html.escape(r.chosen_reason)}).</p>
<img src="{CURVE_FIGURE}" alt="greedy curve">
<table><thead><tr><th>k</th><th>error</th><th class="name">kept in float</th></tr></thead>
<tbody>{greedy}</tbody></table>
"""
