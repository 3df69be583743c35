"""Dynamic ranges for TensorRT <= 10: `ITensor.set_dynamic_range` from a cache, a mapping or our CPU calibration.

Manually set ranges override the ones a calibrator computes (NVIDIA/TensorRT `samples/sampleINT8API/README.md`: "If
you want to provide the calibrator, manual dynamic range will override calibration generate dynamic range/scale"), so
"calibrate, then override these tensors" is `apply_dynamic_ranges(network, ranges, only=names)` next to a
calibrator. Without a calibrator, TensorRT-internal constant outputs (which no ONNX calibration sees) get their
range from their weights, max |w|, as sampleINT8API does (`sampleINT8API.cpp`, "Computing missing dynamic range
for tensor ... from weights").

TensorRT keeps only max(|min|, |max|) of a range: INT8 is symmetric, so the only choice is the amax. The
``sign-aware`` policy still looks at each tensor's sign structure (from the histograms of a CPU calibration) to
choose that amax and says per tensor what it chose and why. Note that the squared error of a symmetric quantiser
depends on |x| alone, so the |x| histogram gives it exactly (up to bin resolution) for signed data too.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .calibrator import quiet_trt_deprecations
from ..core.signs import classify_sign, expected_mse
from ..errors import CalibrationError, MissingDependencyError

__all__ = [
    "POLICIES",
    "RangeDecision",
    "DynamicRangeReport",
    "apply_dynamic_ranges",
    "range_names",
    "classify_sign",
    "expected_mse",
    "network_tensors",
]

logger = logging.getLogger(__name__)

#: Tensor types TensorRT never quantises: they need no range and are not reported as missing.
_UNQUANTISED_TYPES = frozenset({"INT32", "INT64", "BOOL"})


@dataclass(frozen=True)
class RangeDecision:
    """What was set on one tensor: set_dynamic_range(-amax, amax), and why."""

    name: str
    amax: float
    given: float  # the amax the ranges held for this tensor
    sign: str  # non-negative, non-positive, skewed, symmetric, unknown
    choice: str  # given, minmax, mse, or weights (a constant's max |w|)
    reason: str


@dataclass
class DynamicRangeReport:
    """The outcome of `apply_dynamic_ranges`: tensors set, tensors left without a range, entries not used."""

    policy: str
    applied: list[RangeDecision] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    invalid: list[tuple[str, float]] = field(default_factory=list)

    @property
    def changed(self) -> list[RangeDecision]:
        """Tensors where the policy set another amax than the one given."""
        return [d for d in self.applied if d.choice not in ("given", "weights")]

    @property
    def derived(self) -> list[RangeDecision]:
        """Constant-layer outputs whose range came from their weights (the ranges had none for them)."""
        return [d for d in self.applied if d.choice == "weights"]

    def summary(self) -> str:
        """A few lines for people: counts, then the tensors whose amax the policy changed, then what is missing."""
        lines = [
            f"dynamic ranges ({self.policy}): {len(self.applied)} tensor(s) set, {len(self.missing)} without a "
            f"range, {len(self.unused)} range entr{'y' if len(self.unused) == 1 else 'ies'} not in the network"
            + (f", {len(self.invalid)} invalid skipped" if self.invalid else "")
        ]
        if self.derived:
            shown = ", ".join(d.name for d in self.derived[:10]) + (" ..." if len(self.derived) > 10 else "")
            lines.append(f"  from constant weights (max |w|, as sampleINT8API does): {shown}")
        for d in self.changed:
            lines.append(f"  {d.name}: amax {d.given:.6g} -> {d.amax:.6g} ({d.sign}, {d.choice}): {d.reason}")
        if self.missing:
            shown = ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
            lines.append(f"  without a range (TensorRT runs them in higher precision): {shown}")
        if self.unused:
            shown = ", ".join(self.unused[:10]) + (" ..." if len(self.unused) > 10 else "")
            lines.append(f"  not in the network: {shown}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "applied": [asdict(d) for d in self.applied],
            "missing": list(self.missing),
            "unused": list(self.unused),
            "invalid": [list(x) for x in self.invalid],
        }


# ---------------------------------------------------------------------------------------------------------------------
# Sign structure and expected error


# ---------------------------------------------------------------------------------------------------------------------
# Policies: (name, given amax, histogram or None) -> (amax, sign, choice, reason)

Decision = tuple[float, str, str, str]


def _symmetric(name: str, given: float, hist: Any) -> Decision:
    return given, classify_sign(hist), "given", "symmetric policy: the given amax as is"


def _sign_aware(name: str, given: float, hist: Any) -> Decision:
    sign = classify_sign(hist)
    if sign == "unknown":
        why = "no histogram for this tensor" if hist is None else "no finite value was seen"
        return given, sign, "given", f"{why}: sign structure unknown, kept the given amax"
    lo, hi = float(hist.min), float(hist.max)
    if sign in ("non-negative", "non-positive"):
        side = ">= 0" if sign == "non-negative" else "<= 0"
        return given, sign, "given", (
            f"one-sided (all values {side}, range [{lo:.4g}, {hi:.4g}]): the |x| histogram is the populated side, "
            "so its amax already fits it; half of the INT8 codes stay unused (7 effective bits). "
            "Consider FP16 for this tensor if it is precision-sensitive"
        )
    if sign == "symmetric":
        return given, sign, "given", f"both signs with comparable extents [{lo:.4g}, {hi:.4g}]: the |x| amax serves both"
    from ..core.thresholds import mse_amax

    candidates = {"given": given, "minmax": float(np.float32(max(-lo, hi))), "mse": mse_amax(hist)}
    errors = {k: expected_mse(hist, v) for k, v in candidates.items()}
    choice = min(candidates, key=lambda k: (errors[k], k != "given"))  # ties keep the given amax
    amax = candidates[choice]
    small = min(-lo, hi)
    codes = small / (amax / 127.0) if amax > 0 else 0.0
    detail = ", ".join(f"{k} {candidates[k]:.4g} (mse {errors[k]:.3g})" for k in candidates)
    return amax, sign, choice, (
        f"skewed [{lo:.4g}, {hi:.4g}]: lowest expected quantisation error among {detail}; "
        f"the minor side spans {codes:.1f} INT8 codes"
    )


#: Policy name -> function choosing one tensor's amax.
POLICIES: dict[str, Callable[[str, float, Any], Decision]] = {
    "symmetric": _symmetric,
    "sign-aware": _sign_aware,
}


# ---------------------------------------------------------------------------------------------------------------------
# The network side


def _dtype_name(tensor: Any) -> str:
    dtype = tensor.dtype
    name = getattr(dtype, "name", None) or str(dtype).rpartition(".")[2]
    return str(name).upper()


def network_tensors(network: Any) -> Iterator[Any]:
    """The network's inputs, then every layer's outputs, each tensor once (TensorRT's INetworkDefinition API)."""
    seen: set[str] = set()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in seen:
            seen.add(tensor.name)
            yield tensor
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor is not None and tensor.name not in seen:
                seen.add(tensor.name)
                yield tensor


def _ranges_and_histograms(ranges: Any) -> tuple[dict[str, float], Mapping[str, Any]]:
    """(name -> amax, name -> AbsHistogram) from a CalibrationCache, a CalibrationResult or a mapping."""
    if hasattr(ranges, "amaxes") and hasattr(ranges, "header"):  # CalibrationCache
        return {str(k): float(v) for k, v in ranges.amaxes().items()}, {}
    if hasattr(ranges, "amax") and hasattr(ranges, "histograms"):  # collect.CalibrationResult
        return {str(k): float(v) for k, v in ranges.amax.items()}, dict(ranges.histograms)
    if isinstance(ranges, Mapping):
        try:
            return {str(k): float(v) for k, v in ranges.items()}, {}
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"ranges must map tensor names to amax numbers ({exc})") from None
    raise CalibrationError(
        f"ranges must be a CalibrationCache, a CalibrationResult or a mapping name -> amax, got {type(ranges).__name__}"
    )


def range_names(ranges: Any) -> list[str]:
    """The tensor names `ranges` (a cache, a CalibrationResult or a mapping) holds a range for."""
    return list(_ranges_and_histograms(ranges)[0])


def _layer_type_name(layer: Any) -> str:
    kind = getattr(layer, "type", None)
    return str(getattr(kind, "name", None) or str(kind).rpartition(".")[2]).upper()


def _constant_weights(layer: Any) -> np.ndarray | None:
    """A constant layer's weights as numpy. TensorRT's `network.get_layer` gives an ILayer; its IConstantLayer
    attributes need the cast Polygraphy does (`layer.__class__ = trt.IConstantLayer`, `backend/trt/util.py`)."""
    if not hasattr(layer, "weights"):
        cls = getattr(sys.modules.get("tensorrt"), "IConstantLayer", None)
        if cls is None:
            return None
        try:
            layer.__class__ = cls
        except TypeError:
            return None
    weights = getattr(layer, "weights", None)
    if weights is not None and not isinstance(weights, np.ndarray) and hasattr(weights, "numpy"):
        weights = weights.numpy()  # trt.Weights of a type numpy cannot hold are returned as Weights
    if weights is None:
        return None
    try:
        return np.asarray(weights)
    except (TypeError, ValueError):
        return None


def _constant_ranges(network: Any) -> dict[str, tuple[float, str]]:
    """Output name -> (max |w|, why) for each constant layer whose weights numpy can read."""
    out: dict[str, tuple[float, str]] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if _layer_type_name(layer) != "CONSTANT" or layer.num_outputs != 1:
            continue
        weights = _constant_weights(layer)
        if weights is None or weights.dtype.kind not in "biuf" or weights.size == 0:
            continue
        amax = float(np.abs(weights.astype(np.float64)).max())
        if np.isfinite(amax) and amax > 0:
            name = getattr(layer, "name", "") or "?"
            out[layer.get_output(0).name] = (amax, f"constant layer {name!r}: max |w| of its {weights.size} weights")
    return out


def apply_dynamic_ranges(
    network: Any,
    ranges: Any,
    policy: str = "symmetric",
    *,
    skip_invalid: bool = False,
    only: Iterable[str] | None = None,
) -> DynamicRangeReport:
    """Set `tensor.set_dynamic_range(-amax, amax)` on every network tensor that has a range (TensorRT <= 10).

    `ranges` is a CalibrationCache, a mapping name -> amax, or a `collect.CalibrationResult` (whose histograms
    let the ``sign-aware`` policy see each tensor's sign structure). Non-finite or non-positive amaxes raise
    CalibrationError unless `skip_invalid`. Returns the report of what was set, missing and unused.

    `only`: set ranges on these tensors alone and report no other tensor as missing: the pattern "calibrate, then
    override these tensors" (manual ranges override a calibrator's, sampleINT8API README). Without `only`, constant
    layer outputs the ranges do not name get max |w| of their weights, as sampleINT8API does (`report.derived`).
    """
    if policy not in POLICIES:
        raise CalibrationError(f"unknown range policy {policy!r}. Choices: {', '.join(POLICIES)}")
    choose = POLICIES[policy]
    amaxes, histograms = _ranges_and_histograms(ranges)
    selected = None if only is None else {str(n) for n in only}
    if policy == "sign-aware" and not histograms:
        logger.warning(
            "sign-aware ranges need histograms (a CalibrationResult from trt_calib.collect.calibrate); "
            "with a cache or a mapping every tensor keeps its given amax"
        )
    report = DynamicRangeReport(policy=policy)
    invalid = [(n, a) for n, a in amaxes.items() if not (np.isfinite(a) and a > 0)]
    if invalid and not skip_invalid:
        shown = ", ".join(f"{n!r}={a}" for n, a in invalid[:8])
        raise CalibrationError(
            f"{len(invalid)} range(s) are not finite and positive ({shown}); TensorRT needs min < max, finite. "
            "Hint: fix the cache, or pass skip_invalid=True to leave those tensors without a range"
        )
    bad = {n for n, _ in invalid}
    report.invalid = invalid
    used: set[str] = set()
    tensors = list(network_tensors(network))
    if tensors and not hasattr(tensors[0], "set_dynamic_range"):
        raise MissingDependencyError(
            "this TensorRT has no ITensor.set_dynamic_range: TensorRT 11 removed dynamic ranges. "
            "Hint: run `trt-calib quantize` to write a Q/DQ ONNX model instead"
        )
    constants = _constant_ranges(network) if selected is None else {}
    for tensor in tensors:
        name = tensor.name
        if selected is not None and name not in selected:
            continue
        if (name not in amaxes or name in bad) and name in constants:
            amax, why = constants[name]
            amax = float(np.float32(amax))
            with quiet_trt_deprecations():
                ok = tensor.set_dynamic_range(-amax, amax)
            if ok is False:
                raise CalibrationError(f"TensorRT refused set_dynamic_range({-amax}, {amax}) for constant {name!r}")
            report.applied.append(RangeDecision(name, amax, amax, "unknown", "weights", why))
            continue
        if name not in amaxes or name in bad:
            if _dtype_name(tensor) not in _UNQUANTISED_TYPES and name not in bad:
                report.missing.append(name)
            continue
        used.add(name)
        given = amaxes[name]
        amax, sign, choice, reason = choose(name, given, histograms.get(name))
        amax = float(np.float32(amax))
        with quiet_trt_deprecations():
            ok = tensor.set_dynamic_range(-amax, amax)
        if ok is False:
            raise CalibrationError(
                f"TensorRT refused set_dynamic_range({-amax}, {amax}) for tensor {name!r} ({sign}, {choice})"
            )
        report.applied.append(RangeDecision(name, amax, given, sign, choice, reason))
    report.unused = [n for n in amaxes if n not in used and n not in bad]
    if not used:
        names = ", ".join(list(amaxes)[:5])
        raise CalibrationError(
            f"none of the {len(amaxes)} range entries names a tensor of this network (entries: {names} ...). "
            "Hint: the cache must come from this model; TensorRT-internal names such as '(Unnamed Layer* 3)' "
            "change when the model is re-exported"
        )
    logger.info("%s", report.summary())
    return report
