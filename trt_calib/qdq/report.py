"""What `quantize_model` did, for people and for JSON: per-node coverage and per-activation scales."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.cache import scale_to_hex
from .graph import WEIGHTED_OPS
from .scales import ASYMMETRIC_DTYPES


@dataclass(frozen=True)
class ActivationScale:
    """The Q/DQ pair on one activation tensor: its float32 scale, zero point and type, and where they came from."""

    tensor: str
    scale: float
    origin: str  # e.g. "cache", "calibration", "inherited from pool2 through Flatten", "shared by Concat 'cat'"
    zero_point: int = 0
    dtype: str = "int8"  # the zero point's type, which is the quantised type: "int8" or "uint8"
    asymmetric: bool = False  # True when it came from an asymmetric range (its zero point may still be 0)

    @property
    def hex(self) -> str:
        return scale_to_hex(self.scale)

    @property
    def amax(self) -> float:
        """The symmetric threshold scale * 127; for an asymmetric pair, the largest |x| it represents."""
        if not self.asymmetric:
            return float(np.float32(self.scale) * np.float32(127.0))
        return max(-self.lo, self.hi)

    @property
    def lo(self) -> float:
        """The most negative value the pair represents ((qmin - zero point) * scale)."""
        qmin = ASYMMETRIC_DTYPES[self.dtype][0] if self.asymmetric else -127
        return (qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        """The most positive value the pair represents ((qmax - zero point) * scale)."""
        qmax = ASYMMETRIC_DTYPES[self.dtype][1] if self.asymmetric else 127
        return (qmax - self.zero_point) * self.scale

    def to_json(self) -> dict[str, Any]:
        """JSON-able values; zero point, type and represented range only for asymmetric pairs."""
        row: dict[str, Any] = {"tensor": self.tensor, "scale": self.scale, "hex": self.hex, "amax": self.amax,
                               "origin": self.origin}
        if self.asymmetric:
            row.update(zero_point=self.zero_point, dtype=self.dtype, lo=self.lo, hi=self.hi)
        return row


@dataclass
class NodeCoverage:
    """What happened to one node: which inputs and weight got Q/DQ, or why it stays in float."""

    node: str
    op_type: str
    quantized: bool
    inputs: list[str] = field(default_factory=list)  # activation tensors read through a Q/DQ pair
    weight: str | None = None
    weight_axis: int | None = None  # None: one scale for the whole weight
    reason: str = ""  # why it stays in float (or a note on how it was quantised)
    bias_shift: float | None = None  # bias correction: the largest per-channel shift folded into the bias
    body: str = ""  # the If branch or Loop/Scan body holding the node ("" for the main graph)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"node": self.node, "op_type": self.op_type, "quantized": self.quantized}
        if self.body:
            row["body"] = self.body
        if self.inputs:
            row["inputs"] = list(self.inputs)
        if self.weight is not None:
            row["weight"] = self.weight
            row["weight_axis"] = self.weight_axis
        if self.reason:
            row["reason"] = self.reason
        if self.bias_shift is not None:
            row["bias_shift"] = self.bias_shift
        return row


@dataclass
class CoverageReport:
    """Which nodes `quantize_model` quantised, which stay in float and why, and how the scales were mapped."""

    nodes: list[NodeCoverage]
    activations: dict[str, ActivationScale]  # tensor -> its Q/DQ scale
    unquantized_tensors: dict[str, str]  # activation inputs of weighted ops left in float -> why
    scale_source: str  # "cache" or "amax"
    unmapped_entries: list[str] = field(default_factory=list)  # cache/amax names that are no tensor of the model
    unnamed_entries: list[str] = field(default_factory=list)  # "(Unnamed Layer* N) ..." entries: unmappable by nature
    unused_entries: list[str] = field(default_factory=list)  # named a tensor, but no Q/DQ needed that scale
    opset: tuple[int, int] = (0, 0)  # (before, after)
    per_channel: bool = True
    placement: str = "trt"
    bias_correction: dict[str, Any] | None = None
    asymmetric: dict[str, str] | None = None  # {"method", "dtype", "note"} when activations have zero points
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it was left in float on request
    # Conv/Gemm/MatMul inside If/Loop/Scan bodies left in float for want of any scale (a branch the calibration
    # data never took, a Loop body): "node (where): why"
    body_gaps: list[str] = field(default_factory=list)

    @property
    def quantized_nodes(self) -> list[NodeCoverage]:
        return [n for n in self.nodes if n.quantized]

    @property
    def float_weighted_nodes(self) -> list[NodeCoverage]:
        """Conv/ConvTranspose/Gemm/MatMul nodes left in float: the coverage gaps that cost speed."""
        return [n for n in self.nodes if n.op_type in WEIGHTED_OPS and not n.quantized]

    def summary(self) -> str:
        weighted = [n for n in self.nodes if n.op_type in WEIGHTED_OPS]
        adds = [n for n in self.nodes if n.op_type == "Add" and n.quantized]
        text = (
            f"{sum(n.quantized for n in weighted)}/{len(weighted)} Conv/ConvTranspose/Gemm/MatMul nodes quantised, "
            f"{len(adds)} Add residual(s), {len(self.activations)} activation Q/DQ pair(s)"
        )
        if self.scale_source == "cache":
            text += (
                f"; cache entries: {len(self.unmapped_entries)} unmapped, {len(self.unnamed_entries)} unnamed, "
                f"{len(self.unused_entries)} not needed"
            )
        left_out = sum(n.reason.startswith("excluded: ") for n in self.nodes)
        if left_out:
            text += f"; {left_out} node(s) excluded on request"
        if self.body_gaps:
            text += f"; {len(self.body_gaps)} inside If/Loop/Scan bodies without a scale"
        if self.asymmetric:
            text += f"; ASYMMETRIC {self.asymmetric['dtype']} activations ({self.asymmetric['method']} ranges)"
        return text

    def table(self) -> str:
        """One line per node that Q/DQ placement considers (weighted ops, Add, Concat), then the summary."""
        rows = [n for n in self.nodes if n.op_type in WEIGHTED_OPS + ("Add", "Concat")]
        width = max([len(n.node) for n in rows] + [4])
        header = "input scale:zp" if self.asymmetric else "input scales"
        lines = [f"{'node':<{width}}  {'op':<13}  {'int8':<4}  {header:<24}  {'weight':<10}  note"]
        for n in rows:
            pairs = [self.activations[t] for t in n.inputs if t in self.activations]
            if self.asymmetric:
                scales = ",".join(f"{a.hex}:{a.zero_point}" for a in pairs) or "-"
            else:
                scales = ",".join(a.hex for a in pairs) or "-"
            if n.weight is None:
                weight = "-"
            else:
                weight = "per-tensor" if n.weight_axis is None else f"axis {n.weight_axis}"
            note = n.reason
            if n.body and not note.startswith("inside the "):
                note = f"[in {n.body}] " + note
            if n.bias_shift is not None:
                note = (note + "; " if note else "") + f"bias shifted by up to {n.bias_shift:.3g}"
            lines.append(
                f"{n.node:<{width}}  {n.op_type:<13}  {'yes' if n.quantized else 'no':<4}  {scales:<24}  {weight:<10}  {note}"
            )
        lines.append("")
        for title, names in (
            ("unmapped entries (no such tensor)", self.unmapped_entries),
            ("unnamed entries (TensorRT-internal names, unmappable)", self.unnamed_entries),
            ("entries not needed by the placement", self.unused_entries),
        ):
            if names:
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                lines.append(f"{title}: {shown}")
        if self.excluded:
            lines.append("excluded on request (left in float):")
            lines.extend(f"  {n}: {why}" for n, why in self.excluded.items())
        if self.unquantized_tensors:
            lines.append("activations left in float:")
            lines.extend(f"  {t}: {why}" for t, why in self.unquantized_tensors.items())
        if self.asymmetric:
            lines.append(
                f"ASYMMETRIC: {self.asymmetric['dtype']} activations with zero points ({self.asymmetric['method']} "
                f"ranges). {self.asymmetric['note']}"
            )
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "per_channel_weights": self.per_channel,
            "scale_source": self.scale_source,
            "opset": {"before": self.opset[0], "after": self.opset[1]},
            "summary": self.summary(),
            "nodes": [n.to_json() for n in self.nodes],
            "activations": [a.to_json() for a in self.activations.values()],
            "unquantized_tensors": dict(self.unquantized_tensors),
            "unmapped_entries": list(self.unmapped_entries),
            "unnamed_entries": list(self.unnamed_entries),
            "unused_entries": list(self.unused_entries),
            "bias_correction": self.bias_correction,
            "asymmetric": self.asymmetric,
            "excluded": dict(self.excluded),
            "body_gaps": list(self.body_gaps),
        }
