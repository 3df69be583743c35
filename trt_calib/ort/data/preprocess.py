"""Image preprocessing, as the --preprocess SPEC describes it (size, resize, mean, std, scale, layout, order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DataError


#: Largest image side preprocessing may produce (resize=100000 took 22 GB before anything ran).
MAX_IMAGE_SIDE = 8192


_PREPROCESS_KEYS = ("size", "resize", "mean", "std", "scale", "layout", "order")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: (optional shorter-side resize + centre crop | resize) -> x*scale -> (x-mean)/std.

    `mean`/`std` hold one value or one per channel, in the model's channel order (after `channel_order` is applied).
    Resizing is bilinear (Pillow, antialiased when shrinking); the crop is centred, rounding like torchvision.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    layout: str = "NCHW"
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        size = self.size
        if size is not None:
            if isinstance(size, (int, np.integer)):
                size = (int(size), int(size))
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise DataError(f"preprocess: size must be (H, W) with positive values, got {self.size!r}")
            if max(size) > MAX_IMAGE_SIDE:
                raise DataError(f"preprocess: size {size[0]}x{size[1]} exceeds {MAX_IMAGE_SIDE} pixels a side")
        if self.resize is not None and int(self.resize) < 1:
            raise DataError(f"preprocess: resize must be a positive int, got {self.resize!r}")
        if self.resize is not None and int(self.resize) > MAX_IMAGE_SIDE:
            raise DataError(f"preprocess: resize={self.resize} exceeds {MAX_IMAGE_SIDE} pixels (the shorter side "
                            "after resizing; the longer one is larger still)")
        mean = tuple(float(v) for v in np.atleast_1d(self.mean))
        std = tuple(float(v) for v in np.atleast_1d(self.std))
        if not mean or not std:
            raise DataError("preprocess: mean and std need at least one value")
        if any(v == 0.0 or not np.isfinite(v) for v in std) or not all(np.isfinite(mean)):
            raise DataError(f"preprocess: std must be finite and non-zero and mean finite, got mean={mean} std={std}")
        scale = float(self.scale)
        if not np.isfinite(scale) or scale == 0.0:
            raise DataError(f"preprocess: scale must be finite and non-zero, got {self.scale!r}")
        layout = str(self.layout).upper()
        if layout not in ("NCHW", "NHWC"):
            raise DataError(f"preprocess: layout must be NCHW or NHWC, got {self.layout!r}")
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise DataError(f"preprocess: channel order must be RGB or BGR, got {self.channel_order!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "resize", None if self.resize is None else int(self.resize))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "channel_order", order)

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse the CLI form "size=224,resize=256,mean=0.485/0.456/0.406,std=...,scale=1/255,layout=NCHW,order=RGB".

        `size` is "224" or "HxW"; lists use "/"; `scale` may be a fraction; `channel_order` is accepted for `order`.
        """
        kwargs: dict[str, Any] = {}
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "channel_order":
                key = "order"
            if not sep or not key:
                raise DataError(
                    f"preprocess: {item!r} is not key=value. Hint: known keys: {', '.join(_PREPROCESS_KEYS)}"
                )
            if key not in _PREPROCESS_KEYS:
                raise DataError(f"preprocess: unknown key {key!r}. Hint: known keys: {', '.join(_PREPROCESS_KEYS)}")
            field = "channel_order" if key == "order" else key
            if field in kwargs:
                raise DataError(f"preprocess: key {key!r} given twice")
            try:
                kwargs[field] = _parse_preprocess_value(key, value)
            except (ValueError, ZeroDivisionError) as exc:
                raise DataError(f"preprocess: bad value for key {key!r}: {value!r} ({exc})") from None
        try:
            return cls(**kwargs)
        except DataError as exc:
            raise DataError(f"{exc} (in {text!r})") from None

    def to_dict(self) -> dict:
        """JSON-ready fields, for manifests and reports."""
        return {
            "size": None if self.size is None else list(self.size),
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "layout": self.layout,
            "channel_order": self.channel_order,
        }


def _parse_number(text: str) -> float:
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(text)


def _parse_preprocess_value(key: str, value: str) -> Any:
    if not value:
        raise ValueError("empty value")
    if key == "size":
        parts = value.lower().replace("/", "x").split("x")
        dims = [int(p) for p in parts]
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2:
            raise ValueError("expected N or HxW")
        return tuple(dims)
    if key == "resize":
        return int(value)
    if key in ("mean", "std"):
        return tuple(float(v) for v in value.split("/"))
    if key == "scale":
        return _parse_number(value)
    return value  # layout, order: checked by the constructor
