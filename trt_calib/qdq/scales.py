"""Where each activation's scale comes from: amax, a TensorRT cache (bit for bit), or histograms (asymmetric pairs),
and the resolver that finds a scale for a tensor (directly or through pass-through ops)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.cache import CalibrationCache, amax_to_scale
from ..core.histogram import AbsHistogram
from ..core.result import CalibrationResult
from ..core.signs import Quantizer, SignedHistogram, asymmetric_params, asymmetric_quantizer
from .graph import PASS_THROUGH, Graph

log = logging.getLogger(__name__)


#: Activation types `quantize_model(asymmetric=...)` offers: (qmin, qmax, zero-point dtype).
ASYMMETRIC_DTYPES = {"uint8": (0, 255, np.uint8), "int8": (-128, 127, np.int8)}
#: The `metadata_props` key that marks a model with asymmetric activations.
ASYMMETRIC_METADATA_KEY = "trt_calib.asymmetric"
#: Where a model with zero points runs; in the metadata, the coverage report, the warning and the CLI help.
#: The `metadata_props` key under which `quantize_model` records every symmetric scale it was given (JSON), so that
#: `qdq_to_cache` gives back the cache's scales bit for bit, also those no pair can carry (see `record_scales`).
SCALES_METADATA_KEY = "trt_calib.scales"
ASYMMETRIC_NOTE = (
    "TensorRT on GPUs rejects it (zero points must be 0: only symmetric quantization is supported); DLA needs the "
    "ONNX parser flag kENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA (TensorRT 10.11+); onnxruntime runs it"
)


@dataclass(frozen=True)
class Affine:
    """An asymmetric activation grid: the quantizer and the range it was asked to cover (what Concat unions merge)."""

    quantizer: Quantizer
    lo: float
    hi: float
    problem: str = ""  # why the tensor cannot have a pair (no finite values, infinities, all zeros)

    @classmethod
    def of(cls, q: Quantizer) -> "Affine":
        return cls(q, q.lo, q.hi)


@dataclass
class Scales:
    """Per-tensor grids and how to merge them: float32 scales (symmetric) or `Affine` grids (asymmetric)."""

    table: dict[str, Any]  # name -> np.float32 scale, or Affine when asymmetric
    source: str  # "cache" | "amax" | "histograms"
    names: list[str]  # as given, in order (duplicates once)
    asymmetric: tuple[str, str] | None = None  # (method, dtype)

    def widest(self, grids: Sequence[Any]) -> Any:
        """One grid for tensors that must share one: the largest scale, or the pair covering every range.

        Asymmetric: a grid whose asked-for range already covers the others is returned as it is, so merging again
        never moves a shared pair; a grid with a problem other than all zeros wins (the group cannot be quantised).
        """
        if self.asymmetric is None:
            return max(grids, key=float)
        broken = [a for a in grids if a.problem and a.quantizer.scale != 0]
        if broken:
            return broken[0]
        live = [a for a in grids if not a.problem] or list(grids)
        lo, hi = min(a.lo for a in live), max(a.hi for a in live)
        for a in live:
            if a.lo == lo and a.hi == hi:
                return a
        qmin, qmax, _ = ASYMMETRIC_DTYPES[self.asymmetric[1]]
        return Affine(Quantizer(*asymmetric_params(lo, hi, qmin, qmax), qmin, qmax), lo, hi)


def scale_table(scales: Any, asymmetric: tuple[str, str] | None = None) -> Scales:
    if asymmetric is not None:
        return _affine_table(scales, *asymmetric)
    if isinstance(scales, CalibrationCache):
        # the cache's float32 itself: bit-exact, never amax/127 recomputed
        table = {e.name: np.float32(e.scale) for e in scales.entries}
        if scales.duplicates():
            log.warning("cache names %d tensor(s) twice (%s); the last line wins", len(scales.duplicates()),
                        ", ".join(scales.duplicates()[:5]))
        return Scales(table, "cache", list(table))
    if isinstance(scales, CalibrationResult):
        scales = scales.amax
    if not isinstance(scales, Mapping):
        raise TypeError(
            f"scales must be a mapping tensor -> amax, a CalibrationCache or a CalibrationResult, not {type(scales).__name__}"
        )
    table = {}
    for name, amax in scales.items():
        if isinstance(amax, (AbsHistogram, SignedHistogram)):
            raise TypeError(f"scales holds a histogram for {name!r}: histograms are for asymmetric='minmax'|'mse'; "
                            "symmetric scales need amax per tensor (or a CalibrationResult)")
        try:
            table[str(name)] = np.float32(amax_to_scale(float(amax)))
        except (TypeError, ValueError):
            raise TypeError(f"amax of tensor {name!r} is {amax!r}, not a number") from None
    return Scales(table, "amax", list(table))


def _affine_table(scales: Any, method: str, dtype: str) -> Scales:
    """One `Affine` per histogram: `asymmetric_quantizer` over the range `method` picks, on `dtype`'s codes."""
    if isinstance(scales, CalibrationCache):
        raise TypeError("asymmetric Q/DQ needs histograms, not a calibration cache: a cache holds one symmetric "
                        "threshold per tensor, not the signed ranges zero points come from")
    if isinstance(scales, CalibrationResult):
        scales = scales.histograms
    if not isinstance(scales, Mapping) or not all(isinstance(h, (AbsHistogram, SignedHistogram)) for h in scales.values()):
        raise TypeError(
            "asymmetric Q/DQ needs a mapping tensor -> SignedHistogram (ort.collect.collect_signed) or a CalibrationResult, "
            f"not {type(scales).__name__}" + (" of amax values" if isinstance(scales, Mapping) else "")
        )
    qmin, qmax, _ = ASYMMETRIC_DTYPES[dtype]
    table: dict[str, Any] = {}
    unsigned: list[str] = []
    nonfinite: list[str] = []
    for name, h in scales.items():
        if h.num_nan or h.num_inf:
            nonfinite.append(f"{name} ({h.num_nan} NaN, {h.num_inf} Inf)")
        if h.is_empty or h.num_inf:
            problem = "no finite values in calibration" if h.is_empty else f"{h.num_inf} infinite value(s) in calibration"
            table[str(name)] = Affine(Quantizer(float("inf"), 0, qmin, qmax), 0.0, 0.0, problem)
            continue
        if float(h.abs_max) == 0:
            table[str(name)] = Affine(Quantizer(0.0, 0, qmin, qmax), 0.0, 0.0,
                                       "zero range (the tensor was all zeros in calibration)")
            continue
        if method == "mse" and not isinstance(h, SignedHistogram) and h.num_negative not in (0, h.num_values):
            unsigned.append(str(name))
            continue
        table[str(name)] = Affine.of(asymmetric_quantizer(h, method, qmin=qmin, qmax=qmax))
    if unsigned:
        raise ValueError(
            f"asymmetric='mse' needs the signs of the values, and {len(unsigned)} |x| histogram(s) hold both signs "
            f"({', '.join(unsigned[:5])}{', ...' if len(unsigned) > 5 else ''}). Hint: collect them with "
            "trt_calib.ort.collect.collect_signed, or use asymmetric='minmax' (the signed extrema suffice)"
        )
    if nonfinite:
        log.warning("%d tensor(s) hold NaN or Inf values (NaN is ignored; a tensor with Inf gets no pair): %s",
                    len(nonfinite), ", ".join(nonfinite[:10]))
    return Scales(table, "histograms", list(table), (method, dtype))


def _scale_problem(scale: np.float32) -> str:
    if not np.isfinite(scale):
        return f"non-finite scale ({float(scale)})"
    if scale == 0:
        return "zero scale (the tensor was all zeros in calibration)"
    if scale < 0:
        return f"negative scale ({float(scale)})"
    return ""


def _grid_problem(grid: Any) -> str:
    if isinstance(grid, Affine):
        return grid.problem or _scale_problem(np.float32(grid.quantizer.scale))
    return _scale_problem(grid)


class Resolver:
    """Finds the grid of an activation tensor: its own, one inherited through reshapes/max-pool, or a Concat's.

    Symmetric, a tensor's own scale comes first (pools are already tied by calibration or by TensorRT's cache).
    Asymmetric, a pass-through output takes its source's pair whenever the source has one, so a Q can move back
    across the reshape or max-pool without a requantisation.
    """

    def __init__(self, g: Graph, scales: Scales) -> None:
        self.g = g
        self.scales = scales
        self.used: set[str] = set()  # table names whose grid ended up in a Q/DQ

    def own(self, name: str, _via: tuple[str, ...] = ()) -> tuple[Any, str, str] | None:
        """(grid, origin text, table name) for `name` without Concat sharing."""
        producer = self.g.producer.get(name)
        through = producer is not None and producer[1].op_type in PASS_THROUGH and bool(producer[1].input)
        if through and self.scales.asymmetric is not None:
            found = self.own(producer[1].input[0], (producer[1].op_type,) + _via)
            if found is not None:
                return found
        if name in self.scales.table:
            origin = {"cache": "cache", "amax": "calibration", "histograms": "histogram"}[self.scales.source]
            if _via:
                origin = f"{origin} entry of {name!r}, through {' -> '.join(_via)}"
            return self.scales.table[name], origin, name
        if through and self.scales.asymmetric is None:
            return self.own(producer[1].input[0], (producer[1].op_type,) + _via)
        return None

    def concat_leaves(self, name: str, _seen: frozenset[str] = frozenset()) -> list[tuple[int, int, str]] | None:
        """(node index, input index, tensor) of the activation inputs feeding `name` through (nested) Concats."""
        producer = self.g.producer.get(name)
        if producer is None or producer[1].op_type != "Concat" or name in _seen:
            return None
        index, node = producer
        leaves: list[tuple[int, int, str]] = []
        for j, t in enumerate(node.input):
            if not t or self.g.is_constant(t):
                continue
            nested = self.concat_leaves(t, _seen | {name})
            leaves.extend(nested if nested is not None else [(index, j, t)])
        return leaves

    def resolve(self, name: str) -> tuple[Any, str, list[tuple[int, int, str]] | None]:
        """(grid, origin or reason, concat leaves): grid None means unquantisable and the text says why."""
        leaves = self.concat_leaves(name)
        if leaves is not None:
            found = [(self.own(t), t) for _, _, t in leaves]
            known = [(r[0], t) for r, t in found if r is not None]
            if not known:
                own = self.own(name)
                if own is None:
                    return None, f"no scale for {name!r} or any input of the Concat producing it", None
                known = [(own[0], name)]
            grid = self.scales.widest([k[0] for k in known])
            src = next((t for g, t in known if g is grid), None)
            problem = _grid_problem(grid)
            if problem:
                return None, f"{problem} for {src!r} (Concat {name!r})", None
            if self.scales.asymmetric is None:
                return grid, f"shared by the inputs of Concat {name!r} (largest: {src!r})", leaves
            how = f"widest: {src!r}" if src is not None else "the union of their ranges"
            return grid, f"shared by the inputs of Concat {name!r} ({how})", leaves
        own = self.own(name)
        if own is None:
            return None, f"no scale for {name!r}", None
        problem = _grid_problem(own[0])
        if problem:
            return None, f"{problem} for {name!r}", None
        return own[0], own[1], None


# ---------------------------------------------------------------------------------------------- the way back
def _hex(scale: Any) -> str:
    return format(int(np.asarray(scale, dtype=np.float32).reshape(()).view(np.uint32)), "x")


def record_scales(model: Any, table: Scales, pairs: Mapping[str, Any], header: str | None = None) -> None:
    """Record in `model`'s metadata_props (`SCALES_METADATA_KEY`) every symmetric scale of `table` and the scale each
    activation pair was given, as float32 hex.

    A Q/DQ graph cannot carry every scale of a cache: tensors no quantised op reads get no pair (a network's
    output, a Gemm before its fused ReLU), and a pair placed after a pass-through op (Flatten after a tied MaxPool)
    or shared by a Concat's inputs holds another tensor's scale. `qdq_to_cache` reads the record back, after
    checking that every pair still holds the scale recorded for it (a model edited since is not trusted), so a
    cache -> Q/DQ -> cache round trip returns every scale the cache had. Asymmetric grids are not recorded (a cache
    holds symmetric scales only). TensorRT and onnxruntime ignore metadata_props.
    """
    if table.asymmetric is not None:
        return
    value = json.dumps({
        "format": 1,
        "source": table.source,
        "header": header,
        "scales": {name: _hex(table.table[name]) for name in table.names},
        "pairs": {name: _hex(grid) for name, grid in pairs.items()},
    }, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == SCALES_METADATA_KEY:
            prop.value = value
            return
    model.metadata_props.add(key=SCALES_METADATA_KEY, value=value)


@dataclass(frozen=True)
class RecordedScales:
    """What `record_scales` wrote into a Q/DQ model: the scales (name -> float32 hex) and the pairs' scales."""

    scales: dict[str, str]
    pairs: dict[str, str]
    source: str
    header: str | None


def read_recorded_scales(model: Any) -> tuple[RecordedScales | None, str]:
    """The record `record_scales` left in `model` and "" , or (None, why it cannot be read); (None, "") without one."""
    values = [p.value for p in model.metadata_props if p.key == SCALES_METADATA_KEY]
    if not values:
        return None, ""
    try:
        doc = json.loads(values[-1])
        scales, pairs = doc["scales"], doc["pairs"]
        ok = (isinstance(scales, dict) and isinstance(pairs, dict)
              and all(isinstance(k, str) and isinstance(v, str) and 1 <= len(v) <= 8 and int(v, 16) >= 0
                      for table in (scales, pairs) for k, v in table.items()))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        return None, f"metadata_props {SCALES_METADATA_KEY!r} is not the record quantize writes"
    source = doc.get("source") if isinstance(doc.get("source"), str) else "?"
    header = doc.get("header") if isinstance(doc.get("header"), str) else None
    return RecordedScales({k: v.lower() for k, v in scales.items()}, {k: v.lower() for k, v in pairs.items()},
                          source, header), ""
