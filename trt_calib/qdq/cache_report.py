"""What `qdq_to_cache` did, for people and for JSON: the cache entries and where each came from, the pairs removed,
conflicts, asymmetric conversions, dequantised weights, tensors left without a scale, and the onnxruntime checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.cache import CalibrationCache

__all__ = [
    "float32_hex",
    "PairScale",
    "CacheScale",
    "ScaleConflict",
    "AsymmetricConversion",
    "WeightFold",
    "MissingScale",
    "QdqToCacheReport",
    "QdqConversion",
]


def float32_hex(value: Any) -> str:
    """printf("%x") of a float32's bit pattern, read from the float32 itself (no float64 step)."""
    return format(int(np.asarray(value, dtype=np.float32).reshape(()).view(np.uint32)), "x")


@dataclass(frozen=True)
class PairScale:
    """One activation Q/DQ pair that was removed: the tensor it quantised and the scale it held."""

    tensor: str  # the name in the plain model
    node: str  # the QuantizeLinear
    scale_hex: str  # the pair's own scale, float32 bits
    dtype: str  # "int8" | "uint8"
    zero_point: int
    scale_dtype: str = "float32"  # the initializer's type (float16 and bfloat16 widen to float32 exactly)

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "hex": self.scale_hex, "dtype": self.dtype,
                "zero_point": self.zero_point, "scale_dtype": self.scale_dtype}


@dataclass(frozen=True)
class CacheScale:
    """One cache entry and where it came from: a pair, or a neighbour's scale across a pass-through op or a tie."""

    tensor: str
    scale: float
    origin: str  # "pair" | "recorded" (quantize's record_scales) | "pass-through" | "tie" | "concat"
    detail: str  # e.g. "QuantizeLinear 'x_q' (2 pairs)", "through MaxPool 'pool1' from 'conv1'"

    @property
    def hex(self) -> str:
        return float32_hex(self.scale)

    @property
    def amax(self) -> float:
        return float(np.float32(self.scale) * np.float32(127.0))

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "hex": self.hex, "scale": self.scale, "amax": self.amax,
                "origin": self.origin, "detail": self.detail}


@dataclass(frozen=True)
class ScaleConflict:
    """Pairs on one tensor with different scales; `written` is the largest, which clips none of them."""

    tensor: str
    scales: tuple[tuple[str, str], ...]  # (hex, node)
    written: str

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "written": self.written,
                "pairs": [{"hex": h, "node": n} for h, n in self.scales]}


@dataclass(frozen=True)
class AsymmetricConversion:
    """An asymmetric pair replaced by the symmetric range covering it, and the resolution that costs."""

    tensor: str
    node: str
    dtype: str
    zero_point: int
    scale: float  # the pair's step
    lo: float  # the range the pair represents
    hi: float
    symmetric_scale: float  # the step written to the cache (amax / 127, rounded up to cover)

    @property
    def step_ratio(self) -> float:
        return self.symmetric_scale / self.scale

    @property
    def bits_lost(self) -> float:
        return math.log2(self.step_ratio)

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "dtype": self.dtype, "zero_point": self.zero_point,
                "scale": self.scale, "lo": self.lo, "hi": self.hi, "symmetric_scale": self.symmetric_scale,
                "symmetric_hex": float32_hex(self.symmetric_scale), "step_ratio": self.step_ratio,
                "bits_lost": self.bits_lost, "max_rounding_error": self.symmetric_scale / 2}


@dataclass
class WeightFold:
    """A quantised constant made a float initializer, and how it compares with its float original when known."""

    name: str  # the initializer in the plain model
    node: str  # the DequantizeLinear
    kind: str  # "int8 initializer + DequantizeLinear", "float + QuantizeLinear -> DequantizeLinear", ...
    dtype: str  # quantised type: int8 | uint8 | int32
    axis: int | None  # None: one scale
    shape: tuple[int, ...]
    consumers: list[str] = field(default_factory=list)
    nonzero_zero_points: int = 0
    channels_below_full_range: int | None = None  # int8 only: slices whose largest |code| is under 127
    original: str | None = None  # where the float original came from: "model" (the Q's input) or "original"
    original_name: str | None = None
    changed: int | None = None  # elements that differ from the original
    max_abs_diff: float | None = None
    max_abs_original: float | None = None

    def to_json(self) -> dict[str, Any]:
        row = {"name": self.name, "node": self.node, "kind": self.kind, "dtype": self.dtype, "axis": self.axis,
               "shape": list(self.shape), "consumers": self.consumers,
               "nonzero_zero_points": self.nonzero_zero_points,
               "channels_below_full_range": self.channels_below_full_range}
        if self.original is not None:
            row.update(original=self.original, original_name=self.original_name, changed=self.changed,
                       size=int(np.prod(self.shape, dtype=np.int64)), max_abs_diff=self.max_abs_diff,
                       max_abs_original=self.max_abs_original)
        return row


@dataclass(frozen=True)
class MissingScale:
    """A tensor TensorRT calibrates in the plain model that has no cache entry."""

    tensor: str
    producer: str  # op type ("input" for a graph input)
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "producer": self.producer, "note": self.note}


@dataclass
class QdqToCacheReport:
    """Everything `qdq_to_cache` did, for people (`table()`) and for JSON (`to_json()`)."""

    header: str
    pairs: list[PairScale]
    entries: list[CacheScale]
    conflicts: list[ScaleConflict]
    asymmetric: list[AsymmetricConversion]
    weights: list[WeightFold]
    missing: list[MissingScale]
    removed_nodes: int
    calibrated: int  # tensors TensorRT calibrates in the plain model
    opset: int
    propagate: bool = True
    checker: str = "passed"
    comparison: dict[str, Any] | None = None  # FP32 vs plain (compare_with_original), added by the caller
    run: dict[str, Any] | None = None  # the plain model's onnxruntime run (run_plain), added by the caller
    recorded: str = ""  # what became of the scales quantize recorded in the model ("" when it holds none)

    @property
    def exit_code(self) -> int:
        """1 when pairs on one tensor disagree (a finding), else 0."""
        return 1 if self.conflicts else 0

    def counts(self) -> dict[str, int]:
        by_origin: dict[str, int] = {}
        for e in self.entries:
            by_origin[e.origin] = by_origin.get(e.origin, 0) + 1
        return {
            "entries": len(self.entries),
            "pairs": len(self.pairs),
            "from_pairs": by_origin.get("pair", 0),
            "recorded": by_origin.get("recorded", 0),
            "propagated": len(self.entries) - by_origin.get("pair", 0) - by_origin.get("recorded", 0),
            "conflicts": len(self.conflicts),
            "asymmetric": len(self.asymmetric),
            "weights": len(self.weights),
            "weights_changed": sum(1 for w in self.weights if w.changed),
            "calibrated": self.calibrated,
            "missing": len(self.missing),
            "removed_nodes": self.removed_nodes,
        }

    def summary(self) -> str:
        c = self.counts()
        recorded = f"{c['recorded']} as quantize recorded them, " if c["recorded"] else ""
        text = (f"{c['entries']} cache entries ({c['from_pairs']} from {c['pairs']} Q/DQ pairs, {recorded}"
                f"{c['propagated']} through pass-through ops and ties), {c['weights']} weights dequantised, {c['missing']} of "
                f"{c['calibrated']} calibrated tensors without a scale, {c['conflicts']} conflicts")
        if self.asymmetric:
            text += f", {c['asymmetric']} asymmetric pairs made symmetric"
        return text

    def table(self) -> str:
        """The report as text lines for a terminal."""
        width = max([len(e.tensor) for e in self.entries] + [6])
        lines = [f"cache header: {self.header}", ""]
        if self.recorded:
            lines[1:1] = [f"scales recorded by quantize: {self.recorded}"]
        lines.append(f"{'tensor':<{width}}  {'hex':>8}  {'amax':>11}  from")
        for e in self.entries:
            lines.append(f"{e.tensor:<{width}}  {e.hex:>8}  {e.amax:11.6g}  {e.detail}")
        for c in self.conflicts:
            pairs = ", ".join(f"{h} ({n})" for h, n in c.scales)
            lines.append(f"CONFLICT {c.tensor}: pairs with different scales {pairs}; wrote the largest, {c.written}")
        for a in self.asymmetric:
            lines.append(
                f"asymmetric {a.tensor} ({a.node}): {a.dtype} zero point {a.zero_point}, range [{a.lo:.6g}, "
                f"{a.hi:.6g}] -> symmetric step {a.symmetric_scale:.6g} ({float32_hex(a.symmetric_scale)}), "
                f"{a.step_ratio:.3g}x the pair's step ({a.bits_lost:.2f} bits lost; max rounding error "
                f"{a.symmetric_scale / 2:.3g} instead of {a.scale / 2:.3g})"
            )
        if self.weights:
            lines += ["", f"weights dequantised to float ({len(self.weights)}):"]
            for w in self.weights:
                axis = "per-tensor" if w.axis is None else f"axis {w.axis}"
                text = f"  {w.name}: {w.kind}, {w.dtype} {axis}, shape {'x'.join(map(str, w.shape)) or 'scalar'}"
                if w.nonzero_zero_points:
                    text += f", {w.nonzero_zero_points} non-zero zero point(s)"
                if w.original is not None:
                    size = int(np.prod(w.shape, dtype=np.int64))
                    where = "the FP32 model" if w.original == "original" else "the QuantizeLinear's input"
                    text += (f"; vs {w.original_name!r} of {where}: {w.changed}/{size} values changed, max |diff| "
                             f"{w.max_abs_diff:.3g} (max |w| {w.max_abs_original:.3g})")
                lines.append(text)
        if self.missing:
            lines += ["", f"calibrated by TensorRT but without a scale ({len(self.missing)}; these run in higher "
                      "precision unless fused):"]
            lines += [f"  {m.tensor} ({m.producer}): {m.note}" for m in self.missing]
        if self.run is not None:
            lines += ["", f"plain model runs in onnxruntime ({self.run['inputs']}): outputs "
                      + ", ".join(f"{o['name']} {o['shape']}" for o in self.run["outputs"])]
        if self.comparison is not None:
            lines += ["", f"FP32 original vs plain model on {self.comparison['inputs']}:"]
            for o in self.comparison["outputs"]:
                agree = "" if o.get("agreement") is None else (
                    f"top-1 agreement {100 * o['agreement']:.2f}% ({o['num_agree']}/{o['num_samples']}), ")
                lines.append(f"  {o['name']}: {agree}max |diff| {o['max_abs_error']:.4g}, mean |diff| "
                             f"{o['mean_abs_error']:.4g}")
        lines += ["", self.summary()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "summary": self.summary(),
            "counts": self.counts(),
            "exit_code": self.exit_code,
            "opset": self.opset,
            "propagate": self.propagate,
            "checker": self.checker,
            "recorded": self.recorded,
            "entries": [e.to_json() for e in self.entries],
            "pairs": [p.to_json() for p in self.pairs],
            "conflicts": [c.to_json() for c in self.conflicts],
            "asymmetric": [a.to_json() for a in self.asymmetric],
            "weights": [w.to_json() for w in self.weights],
            "missing": [m.to_json() for m in self.missing],
            "run": self.run,
            "comparison": self.comparison,
        }


@dataclass
class QdqConversion:
    """What `qdq_to_cache` returns: the plain model, the cache, and the report."""

    model: Any
    cache: CalibrationCache
    report: QdqToCacheReport
