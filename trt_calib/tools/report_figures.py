"""The report's per-tensor figures, drawn by the browser from data embedded in index.html.

Drawing a figure with matplotlib costs about 0.2 s of CPU; a model of 250 tensors spent most of its report there.
Instead, `figure_payload` packs what a figure shows (TensorRT's |x| counts, the negative counts, the KL curves and
the thresholds: the numbers, not pixels) into a compact JSON record, and `FIGURE_SCRIPT`, inlined in the page, draws
the same three panels as inline SVG. Nothing is fetched: the page stays one file that opens from disk. The counts and
curves of all figures are one zlib stream, base64-encoded; the browser inflates it once with its own
`DecompressionStream` (Chromium 80, Firefox 113, Safari 16.4 and later).
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from typing import Any

import numpy as np

from ..core.histogram import AbsHistogram
from ..core.signs import SignedHistogram, as_signed

__all__ = ["figure_payload", "payload_script", "FIGURE_SCRIPT", "FIGURE_CSS"]

#: The symmetric thresholds drawn, in drawing order (as in `report.THRESHOLDS`).
_DRAWN = ("entropy2", "minmax", "percentile", "mse")


def _num(v: Any) -> float | None:
    """A finite float, or None (JSON has no inf/nan; the figure skips what is not finite)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _counts(a: np.ndarray) -> tuple[str, bytes]:
    """Counts as little-endian uint32 when they fit (they almost always do), else float64 (exact to 2^53)."""
    a = np.asarray(a)
    if a.size == 0 or (a.min() >= 0 and a.max() < 2**32):
        return "u32", a.astype("<u4").tobytes()
    return "f64", a.astype("<f8").tobytes()


def figure_payload(summary: Any, hist: AbsHistogram | SignedHistogram, anchor: str) -> tuple[dict[str, Any], bytes]:
    """What the browser needs to draw `summary`'s figure (a `report.TensorSummary`): the JSON-ready scalars and the
    packed arrays (counts, negative counts, KL curves, little-endian), for `payload_script`.

    `anchor` is the id of the figure's place in the page.
    """
    h = hist.abs if isinstance(hist, SignedHistogram) else hist
    sh = as_signed(hist)
    kind, blob = _counts(h.counts)
    if sh is not None:
        kind_neg, neg = _counts(sh.negative)
        if kind_neg != kind:  # one type for both sides
            kind, blob, neg = "f64", np.asarray(h.counts).astype("<f8").tobytes(), sh.negative.astype("<f8").tobytes()
        blob += neg
    search = summary.entropy
    blob += np.asarray(search.divergence, dtype="<f4").tobytes()
    signed = summary.signed_entropy
    if signed is not None:
        blob += np.asarray(signed.divergence, dtype="<f4").tobytes()
    thresholds = []
    for name in _DRAWN:
        choice = summary.choice(name)
        value = summary.thresholds.get(name)
        if value is not None and _num(value) is not None:
            thresholds.append([name, _num(value), None if choice is None else _num(100 * choice.error.clipped)])
    uint8 = summary.choice("uint8-minmax")

    def search_json(s: Any) -> dict[str, Any]:
        first = int(s.candidates[0]) if len(s.candidates) else 0
        return {"first": first, "n": int(len(s.divergence)), "i": int(s.index), "amax": _num(s.amax)}

    return {
        "id": anchor,
        "name": summary.name,
        "bins": int(h.num_bins),
        "width": _num(h.bin_width),
        "values": int(h.num_values),
        "counts": kind,
        "signed": sh is not None,
        "kl": search_json(search),
        "skl": None if signed is None else search_json(signed),
        "thresholds": thresholds,
        "tied": None if not summary.tied_to else [summary.tied_to, _num(summary.amax)],
        "amax": _num(summary.amax),
        "sign": summary.sign,
        "negative_percent": _num(100 * summary.negative_share),
        "uint8": None if uint8 is None else [_num(uint8.quantizer.lo), _num(uint8.quantizer.hi)],
    }, blob


def payload_script(payloads: list[tuple[dict[str, Any], bytes]]) -> str:
    """The figures' data as an inert JSON script element (no `<` inside, so nothing can end it early): each
    figure's scalars with the offset and size of its arrays in one compressed stream of all of them."""
    figures, offset = [], 0
    for meta, blob in payloads:
        figures.append({**meta, "offset": offset, "size": len(blob)})
        offset += len(blob)
    data = base64.b64encode(zlib.compress(b"".join(blob for _, blob in payloads), 6)).decode("ascii")
    text = json.dumps({"figures": figures, "data": data}, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c")  # only inside strings: no tag, comment or script state can start
    return f'<script type="application/json" id="trt-calib-figure-data">{text}</script>'


FIGURE_CSS = """
.figure { margin: 0.4em 0; min-height: 270px; content-visibility: auto; contain-intrinsic-size: auto 290px; }
.figure svg { display: block; width: 100%; max-width: 1400px; height: auto; }
.figure svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; fill: #222; }
.figure .readout { font-size: 0.8em; color: #444; min-height: 1.3em; font-variant-numeric: tabular-nums; }
.figure.failed { color: #b00; min-height: 0; }
#figure-status { color: #666; font-size: 0.85em; }
"""

# The panels, as the PNG renderer (`report.render_figure`) draws them: (1) the |x| histogram on a log axis with
# the four thresholds, (2) TensorRT's KL curve over the candidates with its choice (and the signed histogram's),
# (3) when signs are known, the signed histogram with the int8 grid and the uint8 range. Each figure is an inline
# SVG (vector, prints, no pixels kept per figure); a histogram's 2048 bins are reduced to what each pixel column
# shows (the column's highest count for the fill, its lowest to highest for the outline). The value under the
# pointer is read out below the figure.
FIGURE_SCRIPT = r"""
(function () {
  "use strict";
  var holder = document.getElementById("trt-calib-figure-data");
  if (!holder) return;
  var EMBEDDED = JSON.parse(holder.textContent), FIGS = EMBEDDED.figures;
  var STYLE = {
    entropy2: ["#d62728", "", "entropy2 (TensorRT)"],
    minmax: ["#7f7f7f", "6 4", "minmax"],
    percentile: ["#1f77b4", "1.5 3", "percentile"],
    mse: ["#2ca02c", "7 3 1.5 3", "mse"]
  };
  var WIDTH = 1100, HEIGHT = 270;
  var status = document.getElementById("figure-status");
  var store = {};
  window.trtCalibFigures = store;
  var done = 0, failed = 0;
  var measure = document.createElement("canvas").getContext("2d");

  function fmt(v, digits) {
    if (v === null || v === undefined) return "-";
    if (!isFinite(v)) return isNaN(v) ? "nan" : (v > 0 ? "inf" : "-inf");
    var s = Number(v).toPrecision(digits || 4);
    if (s.indexOf("e") >= 0) {
      var parts = s.split("e"), m = parts[0], e = parseInt(parts[1], 10);
      if (m.indexOf(".") >= 0) m = m.replace(/0+$/, "").replace(/\.$/, "");
      return m + "e" + (e < 0 ? "-" : "+") + (Math.abs(e) < 10 ? "0" : "") + Math.abs(e);
    }
    if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
    return s;
  }
  function tickText(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(6)));
    var e = Math.floor(Math.log10(a) + 1e-9);
    return String(Number((v / Math.pow(10, e)).toPrecision(3))) + "e" + e;
  }
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function r1(v) { return Math.round(v * 10) / 10; }
  function textWidth(s, px) { measure.font = px + "px system-ui, sans-serif"; return measure.measureText(s).width; }

  function bytesOf(text) {
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function inflate(bytes) {
    if (typeof DecompressionStream === "undefined")
      return Promise.reject(new Error("this browser cannot inflate the embedded data (no DecompressionStream)"));
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer();
  }
  function decode(f, all) {
    var buf = all.slice(f.offset, f.offset + f.size), off = 0;
    function take(Type, n) {
      var size = n * Type.BYTES_PER_ELEMENT, a = new Type(buf.slice(off, off + size));
      off += size;
      return a;
    }
    var C = f.counts === "u32" ? Uint32Array : Float64Array, d = {};
    d.counts = take(C, f.bins);
    d.negative = f.signed ? take(C, f.bins) : null;
    d.kl = take(Float32Array, f.kl.n);
    d.skl = f.skl ? take(Float32Array, f.skl.n) : null;
    if (off !== f.size || buf.byteLength !== f.size)
      throw new Error(f.name + ": embedded data holds " + buf.byteLength + " bytes, not " + off);
    return d;
  }

  function linTicks(lo, hi, n) {
    var span = hi - lo;
    if (!(span > 0)) return [lo];
    var mag = Math.pow(10, Math.floor(Math.log10(span / n))), step = mag;
    [1, 2, 2.5, 5, 10].some(function (m) { step = m * mag; return span / step <= n; });
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }
  function logTicks(lo, hi, subs) {
    var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi)), out = [];
    var step = Math.max(1, Math.ceil((b - a) / 6)), use = b - a <= 3 ? subs : [1];
    for (var e = a; e <= b; e += step) use.forEach(function (s) {
      var v = s * Math.pow(10, e);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
    });
    return out;
  }

  // One panel: a box in the figure, its x and y domains (y on a log axis or not), and the SVG it has drawn.
  function Panel(out, clip, box, xd, yd, ylog) {
    this.out = out; this.clipId = clip; this.box = box; this.xd = xd; this.yd = yd; this.ylog = ylog;
    this.l0 = ylog ? Math.log10(yd[0]) : yd[0];
    this.l1 = ylog ? Math.log10(yd[1]) : yd[1];
  }
  Panel.prototype.px = function (v) { return this.box.x + (v - this.xd[0]) / (this.xd[1] - this.xd[0]) * this.box.w; };
  Panel.prototype.py = function (v) {
    var t = this.ylog ? Math.log10(v) : v;
    return this.box.y + this.box.h - (t - this.l0) / (this.l1 - this.l0) * this.box.h;
  };
  Panel.prototype.xv = function (px) { return this.xd[0] + (px - this.box.x) / this.box.w * (this.xd[1] - this.xd[0]); };
  Panel.prototype.open = function () {
    var b = this.box;
    this.out.push('<clipPath id="' + this.clipId + '"><rect x="' + b.x + '" y="' + b.y + '" width="' + b.w +
                  '" height="' + b.h + '"/></clipPath><g clip-path="url(#' + this.clipId + ')">');
  };
  Panel.prototype.close = function () { this.out.push("</g>"); };
  Panel.prototype.frame = function (title, xlabel, ylabel, subs) {
    var b = this.box, o = this.out, self = this, bottom = b.y + b.h;
    o.push('<rect x="' + b.x + '" y="' + b.y + '" width="' + b.w + '" height="' + b.h +
           '" fill="none" stroke="#333" stroke-width="1"/>');
    linTicks(this.xd[0], this.xd[1], Math.max(2, Math.floor(b.w / 70))).forEach(function (t) {
      var x = r1(self.px(t));
      o.push('<line x1="' + x + '" y1="' + bottom + '" x2="' + x + '" y2="' + (bottom + 4) + '" stroke="#333"/>' +
             '<text x="' + x + '" y="' + (bottom + 15) + '" font-size="11" text-anchor="middle">' + tickText(t) + "</text>");
    });
    o.push('<text x="' + (b.x + b.w / 2) + '" y="' + (bottom + 30) + '" font-size="11" text-anchor="middle">' +
           esc(xlabel) + "</text>");
    var yt = this.ylog ? logTicks(this.yd[0], this.yd[1], subs || [1]) : linTicks(this.yd[0], this.yd[1], 5);
    yt.forEach(function (t) {
      var y = r1(self.py(t));
      o.push('<line x1="' + (b.x - 4) + '" y1="' + y + '" x2="' + b.x + '" y2="' + y + '" stroke="#333"/>' +
             '<text x="' + (b.x - 6) + '" y="' + (y + 4) + '" font-size="11" text-anchor="end">' + tickText(t) + "</text>");
    });
    o.push('<text transform="translate(' + (b.x - 46) + "," + (b.y + b.h / 2) + ') rotate(-90)" font-size="11" ' +
           'text-anchor="middle">' + esc(ylabel) + "</text>");
    o.push('<text x="' + (b.x + b.w / 2) + '" y="' + (b.y - 6) + '" font-size="12" text-anchor="middle">' + esc(title) +
           "</text>");
  };
  Panel.prototype.vline = function (x, color, dash, width) {
    var px = r1(this.px(x)), b = this.box;
    this.out.push('<line x1="' + px + '" y1="' + b.y + '" x2="' + px + '" y2="' + (b.y + b.h) + '" stroke="' + color +
                  '" stroke-width="' + (width || 1.4) + '"' + (dash ? ' stroke-dasharray="' + dash + '"' : "") + "/>");
  };
  // Bins i cover [sign i w, sign (i + 1) w]; bins narrower than a pixel are merged per pixel column (the column's
  // highest count fills, its lowest non-zero to highest is outlined); empty bins are not drawn (log axis).
  Panel.prototype.steps = function (counts, width, sign, fill, line) {
    var segs = [], cur = null, n = counts.length, base = r1(this.py(this.yd[0]));
    for (var i = 0; i < n; i++) {
      var xa = this.px(sign * i * width), xb = this.px(sign * (i + 1) * width), v = counts[i];
      if (sign < 0) { var t = xa; xa = xb; xb = t; }
      var col = Math.floor(xa);
      if (cur && cur.col === col && xb - xa < 1) {
        if (v > cur.hi) cur.hi = v;
        if (v > 0 && (cur.lo === 0 || v < cur.lo)) cur.lo = v;
        if (sign > 0) cur.xb = xb; else cur.xa = xa;
      } else {
        if (cur) segs.push(cur);
        cur = {col: col, xa: xa, xb: xb, lo: v, hi: v};
      }
    }
    if (cur) segs.push(cur);
    if (sign < 0) segs.reverse();
    var d = ["M" + r1(segs[0].xa) + " " + base], s = [], pen = false, self = this;
    segs.forEach(function (g) {
      var y = g.hi > 0 ? r1(self.py(g.hi)) : base;
      d.push("L" + r1(g.xa) + " " + y + "L" + r1(g.xb) + " " + y);
      if (g.hi > 0) {
        s.push((pen ? "L" : "M") + r1(g.xa) + " " + y + "L" + r1(g.xb) + " " + y);
        if (g.lo > 0 && g.lo < g.hi) {
          var xm = r1((g.xa + g.xb) / 2);
          s.push("M" + xm + " " + r1(self.py(g.lo)) + "L" + xm + " " + y + "M" + r1(g.xb) + " " + y);
        }
        pen = true;
      } else pen = false;
    });
    d.push("L" + r1(segs[segs.length - 1].xb) + " " + base + "Z");
    this.out.push('<path d="' + d.join("") + '" fill="' + fill + '" stroke="none"/>');
    if (s.length) this.out.push('<path d="' + s.join("") + '" fill="none" stroke="' + line + '" stroke-width="0.8"/>');
  };
  // The finite points, joined (as the PNG renderer plots them: candidates with an infinite divergence are left out).
  Panel.prototype.curve = function (xs, ys, color, dash) {
    var d = [];
    for (var i = 0; i < xs.length; i++) {
      if (isFinite(ys[i]) && (!this.ylog || ys[i] > 0))
        d.push((d.length ? "L" : "M") + r1(this.px(xs[i])) + " " + r1(this.py(ys[i])));
    }
    if (d.length) this.out.push('<path d="' + d.join("") + '" fill="none" stroke="' + color + '" stroke-width="1.1"' +
                                (dash ? ' stroke-dasharray="' + dash + '"' : "") + "/>");
  };
  Panel.prototype.marker = function (x, y, color, square) {
    var px = r1(this.px(x)), py = r1(this.py(y));
    this.out.push(square ? '<rect x="' + (px - 4) + '" y="' + (py - 4) + '" width="8" height="8" fill="' + color + '"/>'
                         : '<circle cx="' + px + '" cy="' + py + '" r="4" fill="' + color + '"/>');
  };
  Panel.prototype.band = function (lo, hi, color, opacity) {
    var a = r1(this.px(lo)), b = r1(this.px(hi));
    this.out.push('<rect x="' + a + '" y="' + this.box.y + '" width="' + (b - a) + '" height="' + this.box.h +
                  '" fill="' + color + '" fill-opacity="' + opacity + '"/>');
  };
  Panel.prototype.text = function (s) {
    this.out.push('<text x="' + (this.box.x + this.box.w / 2) + '" y="' + (this.box.y + this.box.h / 2) +
                  '" font-size="11" text-anchor="middle" style="fill:#666">' + esc(s) + "</text>");
  };
  Panel.prototype.legend = function (items) {
    if (!items.length) return;
    var b = this.box, o = this.out, lh = 13, w = 0;
    items.forEach(function (it) { w = Math.max(w, textWidth(it.text, 10)); });
    w = Math.ceil(w) + 32;
    var x = b.x + b.w - w - 4, y = b.y + 4, h = items.length * lh + 6;
    o.push('<rect x="' + x + '" y="' + y + '" width="' + w + '" height="' + h +
           '" fill="#fff" fill-opacity="0.85" stroke="#ccc"/>');
    items.forEach(function (it, k) {
      var yy = y + 3 + k * lh + lh / 2;
      if (it.fill) o.push('<rect x="' + (x + 5) + '" y="' + (yy - 4) + '" width="18" height="8" fill="' + it.fill + '"/>');
      if (it.marker === "s") o.push('<rect x="' + (x + 10) + '" y="' + (yy - 3) + '" width="6" height="6" fill="' + it.color + '"/>');
      else if (it.marker) o.push('<circle cx="' + (x + 13) + '" cy="' + yy + '" r="3" fill="' + it.color + '"/>');
      else if (it.color) o.push('<line x1="' + (x + 5) + '" y1="' + yy + '" x2="' + (x + 23) + '" y2="' + yy + '" stroke="' +
                                it.color + '" stroke-width="1.4"' + (it.dash ? ' stroke-dasharray="' + it.dash + '"' : "") + "/>");
      o.push('<text x="' + (x + 27) + '" y="' + (yy + 3.5) + '" font-size="10">' + esc(it.text) + "</text>");
    });
  };

  function maxOf(a) { var m = 0; for (var i = 0; i < a.length; i++) if (a[i] > m) m = a[i]; return m; }

  function draw(f, d) {
    var panels = f.signed ? 3 : 2, o = [], layout = [];
    var cell = WIDTH / panels, top = 46, bottom = 40;
    function box(k) { return {x: Math.round(k * cell + 60), y: top, w: Math.round(cell - 60 - 12), h: HEIGHT - top - bottom}; }
    o.push('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ' + WIDTH + " " + HEIGHT + '" width="' + WIDTH +
           '" height="' + HEIGHT + '" role="img"><rect width="100%" height="100%" fill="#fff"/>');
    o.push('<text x="' + WIDTH / 2 + '" y="17" font-size="13" font-weight="bold" text-anchor="middle">' + esc(f.name) + "</text>");
    var w = f.width || 0, n = f.bins, counts = d.counts, peak = maxOf(counts);
    var extent = n * w;
    f.thresholds.forEach(function (t) { extent = Math.max(extent, t[1]); });
    if (f.tied && f.tied[1] !== null) extent = Math.max(extent, f.tied[1]);
    if (!(extent > 0)) extent = 1;
    var yd = [0.5, Math.max(peak, 1) * 2];

    // (1) |x| histogram with the thresholds
    var p = new Panel(o, f.id + "-c0", box(0), [0, extent * 1.02], yd, true), items = [];
    p.open();
    if (peak > 0 && w > 0) p.steps(counts, w, 1, "#c7c7c7", "#555555");
    else p.text("no finite values");
    f.thresholds.forEach(function (t) {
      var st = STYLE[t[0]];
      p.vline(t[1], st[0], st[1]);
      items.push({color: st[0], dash: st[1], text: st[2] + " " + fmt(t[1]) + (t[2] === null ? "" : ", " + fmt(t[2], 3) + "% clipped")});
    });
    if (f.tied && f.tied[1] !== null) {
      p.vline(f.tied[1], "#000", "", 1.0);
      items.push({color: "#000", text: "tied to " + f.tied[0] + " " + fmt(f.tied[1])});
    }
    p.legend(items);
    p.close();
    p.frame("|x| histogram (TensorRT's " + n + " bins)", "|x|", "count (log)");
    layout.push({kind: "abs", p: p});

    // (2) KL divergence over the candidates
    var k, xs = [], ys = d.kl, finite = [];
    for (k = 0; k < ys.length; k++) {
      xs.push((f.kl.first + k + 0.5) * w);
      if (isFinite(ys[k])) finite.push(ys[k]);
    }
    var sxs = [], sys = d.skl, q;
    if (sys) for (k = 0; k < sys.length; k++) {
      sxs.push((f.skl.first + k + 0.5) * w);
      if (isFinite(sys[k])) finite.push(sys[k]);
    }
    if (finite.length && w > 0 && xs.length > 1) {
      var lo = Math.min.apply(null, finite), hi = Math.max.apply(null, finite), logy = lo > 0;
      var kyd = logy ? [lo / 1.25, Math.max(hi, lo * 1.01) * 1.25] : [Math.min(0, lo), hi > lo ? hi + 0.05 * (hi - lo) : lo + 1];
      q = new Panel(o, f.id + "-c1", box(1), [xs[0], xs[xs.length - 1]], kyd, logy);
      q.open();
      q.curve(xs, ys, "#d62728");
      var items2 = [{color: "#d62728", text: "|x| (TensorRT)"}];
      var chosen = ys[f.kl.i - f.kl.first];
      if (isFinite(chosen)) {
        q.marker(f.kl.amax, chosen, "#d62728", false);
        items2.push({color: "#d62728", marker: "o", text: "i* = " + f.kl.i + ", amax " + fmt(f.kl.amax)});
      }
      if (sys) {
        q.curve(sxs, sys, "#9467bd", "5 3");
        items2.push({color: "#9467bd", dash: "5 3", text: "signed histogram"});
        var schosen = sys[f.skl.i - f.skl.first];
        if (isFinite(schosen)) {
          q.marker(f.skl.amax, schosen, "#9467bd", true);
          items2.push({color: "#9467bd", marker: "s", text: "signed i* = " + f.skl.i + ", amax " + fmt(f.skl.amax)});
        }
      }
      q.legend(items2);
      q.close();
    } else {
      q = new Panel(o, f.id + "-c1", box(1), [0, 1], [0, 1], false);
      q.text("no finite divergence");
    }
    q.frame("KL divergence over candidates i = " + f.kl.first + ".." + (f.kl.first + f.kl.n - 1),
            "candidate amax = (i + 0.5) w", "KL(P || Q)", [1, 2, 5]);
    layout.push({kind: "kl", p: q});

    // (3) the signed histogram, the int8 grid and the uint8 range
    var pos = null;
    if (f.signed) {
      var neg = d.negative, negPeak = maxOf(neg), amax = f.amax;
      pos = new Float64Array(n);
      for (k = 0; k < n; k++) pos[k] = counts[k] - neg[k];
      var left = negPeak > 0 ? -n * w : 0, right = n * w;
      if (amax !== null && amax > 0) { left = Math.min(left, -amax); right = Math.max(right, amax); }
      if (f.uint8 && f.uint8[0] !== null) { left = Math.min(left, f.uint8[0]); right = Math.max(right, f.uint8[1]); }
      var pad = 0.03 * ((right - left) || 1);
      var r = new Panel(o, f.id + "-c2", box(2), [left - pad, right + pad], yd, true), items3 = [];
      r.open();
      if (amax !== null && amax > 0) r.band(-amax, amax, "#d62728", 0.07);
      if (peak > 0 && w > 0) {
        if (negPeak > 0) { r.steps(neg, w, -1, "#9ecae1", "#3182bd"); items3.push({fill: "#9ecae1", text: "x < 0"}); }
        r.steps(pos, w, 1, "#fdae6b", "#e6550d");
        items3.push({fill: "#fdae6b", text: "x >= 0"});
      }
      if (amax !== null && amax > 0) {
        r.vline(-amax, "#d62728", "", 1.0); r.vline(amax, "#d62728", "", 1.0);
        items3.push({color: "#d62728", text: "int8 grid [-" + fmt(amax, 3) + ", " + fmt(amax, 3) + "]"});
      }
      if (f.uint8 && f.uint8[0] !== null && f.uint8[1] !== null) {
        r.vline(f.uint8[0], "#2ca02c", "5 3", 1.0); r.vline(f.uint8[1], "#2ca02c", "5 3", 1.0);
        items3.push({color: "#2ca02c", dash: "5 3", text: "uint8 range [" + fmt(f.uint8[0], 3) + ", " + fmt(f.uint8[1], 3) + "]"});
      }
      r.legend(items3);
      r.close();
      r.frame("signs: " + f.sign + ", " + fmt(f.negative_percent, 3) + "% negative", "x", "count (log)");
      layout.push({kind: "signed", p: r});
    }
    o.push("</svg>");
    return {svg: o.join(""), layout: layout, positive: pos};
  }

  function readout(f, d, fig, entry, x) {
    var p = entry.p, v = p.xv(x), w = f.width || 0, i;
    if (!(w > 0)) return "";
    if (entry.kind === "kl") {
      i = Math.round(v / w - 0.5) - f.kl.first;
      if (!(i >= 0 && i < d.kl.length)) return "";
      var s = "i = " + (i + f.kl.first) + ", amax " + fmt((i + f.kl.first + 0.5) * w) + ": KL " + fmt(d.kl[i]);
      if (d.skl && i < d.skl.length) s += ", signed KL " + fmt(d.skl[i]);
      return s;
    }
    i = Math.floor(Math.abs(v) / w);
    if (!(i >= 0 && i < f.bins)) return "";
    var range = "[" + fmt(i * w) + ", " + fmt((i + 1) * w) + ")";
    if (entry.kind === "abs") return "|x| in " + range + " (bin " + i + "): " + d.counts[i].toLocaleString() + " values";
    if (v < 0) return "|x| in " + range + ", x < 0 (bin " + i + "): " + d.negative[i].toLocaleString() + " values";
    return "x in " + range + " (bin " + i + "): " + fig.positive[i].toLocaleString() + " values >= 0";
  }

  function progress() {
    if (!status) return;
    status.textContent = done < FIGS.length
      ? "Drawing figures: " + done + " of " + FIGS.length + (failed ? " (" + failed + " failed)" : "") + "..."
      : FIGS.length + " figures drawn in this page from the data embedded in it" + (failed ? "; " + failed + " failed" : "") + ".";
    document.body.setAttribute("data-figures-drawn", String(done));
    if (done === FIGS.length) document.body.setAttribute("data-figures-done", failed ? "failed" : "ok");
  }

  function show(f, all) {
    var slot = document.getElementById(f.id);
    if (!slot) { done++; failed++; progress(); return; }
    try {
      var d = decode(f, all), fig = draw(f, d), line = document.createElement("div");
      slot.innerHTML = fig.svg;
      line.className = "readout";
      slot.appendChild(line);
      var svg = slot.firstChild;
      svg.addEventListener("mousemove", function (ev) {
        var rect = svg.getBoundingClientRect(), x = (ev.clientX - rect.left) * WIDTH / (rect.width || WIDTH);
        var hit = fig.layout.filter(function (e) { return x >= e.p.box.x && x <= e.p.box.x + e.p.box.w; })[0];
        line.textContent = hit ? readout(f, d, fig, hit, x) : "";
      });
      svg.addEventListener("mouseleave", function () { line.textContent = ""; });
      store[f.id] = {figure: f, data: d, width: WIDTH, height: HEIGHT, layout: fig.layout.map(function (e) {
        return {kind: e.kind, x: e.p.box.x, y: e.p.box.y, w: e.p.box.w, h: e.p.box.h, xd: e.p.xd, yd: e.p.yd, ylog: e.p.ylog};
      })};
      slot.setAttribute("data-state", "drawn");
      done++;
    } catch (err) {
      done++; failed++;
      slot.className += " failed";
      slot.setAttribute("data-state", "failed");
      slot.textContent = "figure not drawn: " + err.message;
    }
  }

  // Figures in view first, then the rest in page order, a few per task, so that the page stays responsive.
  var queue = FIGS.slice(), byId = {};
  FIGS.forEach(function (f) { byId[f.id] = f; });
  function pump(all) {
    var started = performance.now();
    while (queue.length && performance.now() - started < 40) show(queue.shift(), all);
    progress();
    if (queue.length) setTimeout(function () { pump(all); }, 0);
  }
  if ("IntersectionObserver" in window) {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (!e.isIntersecting) return;
        seen.unobserve(e.target);
        var at = queue.indexOf(byId[e.target.id]);
        if (at > 0) queue.unshift(queue.splice(at, 1)[0]);
      });
    }, {rootMargin: "400px"});
    FIGS.forEach(function (f) { var el = document.getElementById(f.id); if (el) seen.observe(el); });
  }
  progress();
  inflate(bytesOf(EMBEDDED.data)).then(pump, function (err) {
    FIGS.forEach(function (f) {
      var slot = document.getElementById(f.id);
      if (slot) { slot.className += " failed"; slot.textContent = "figure not drawn: " + err.message; }
    });
    done = failed = FIGS.length;
    progress();
  });
})();
"""
