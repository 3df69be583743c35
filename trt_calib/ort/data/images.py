"""A folder of images as a batch source, decoded batch by batch and preprocessed per `Preprocess`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import require
from ...errors import DataError
from .inputs import InputSpec, input_names_of
from .preprocess import Preprocess
from .source import SampleSource, file_sha256

logger = logging.getLogger("trt_calib.ort.data")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".webp", ".tif", ".tiff", ".gif"}
)


def _list_images(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc})") from None
    images = [
        p for p in entries
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not images:
        subdirs = [p.name for p in entries if p.is_dir()]
        hint = (
            f" Note: subfolders ({', '.join(subdirs[:3])}{', ...' if len(subdirs) > 3 else ''}) are not searched. "
            "Hint: point at a folder that holds the images"
            if subdirs
            else f" Hint: supported extensions are {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
        raise DataError(f"{folder}: no images in this folder.{hint}")
    return images


class ImageSource(SampleSource):
    """A folder of images, decoded with Pillow one batch at a time."""

    kind = "images"

    def __init__(
        self, folder: Path, inputs: Sequence[InputSpec], preprocess: Preprocess | None, **batching: Any
    ) -> None:
        origin = str(folder)
        if len(inputs) != 1:
            raise DataError(
                f"{origin}: an image folder feeds one input but the model has {len(inputs)} "
                f"({input_names_of(inputs)}). Hint: prepare an .npz with one key per input"
            )
        pre = preprocess or Preprocess()
        spec = inputs[0]
        if spec.rank == 4 and spec.batch_axis != 0:
            raise DataError(
                f"{origin}: input {spec.name!r} {spec.shape_text()} has its batch axis at {spec.batch_axis}; image "
                "folders feed NCHW or NHWC batches (batch axis 0). Hint: prepare an .npz or a data script"
            )
        if spec.rank != 4:
            raise DataError(
                f"{origin}: input {spec.name!r} has shape {spec.shape_text()}, not an image batch "
                f"({pre.layout}). Hint: images need a rank-4 input"
            )
        c_axis, h_axis, w_axis = (1, 2, 3) if pre.layout == "NCHW" else (3, 1, 2)
        channels = spec.static_dim(c_axis)
        if channels is None:
            channels = 3
            logger.info("%s: input %r has a dynamic channel dim; feeding 3 channels", origin, spec.name)
        if channels not in (1, 3):
            other = "NHWC" if pre.layout == "NCHW" else "NCHW"
            raise DataError(
                f"{origin}: input {spec.name!r} {spec.shape_text()} has {channels} channels in layout {pre.layout}; "
                f"images give 1 (grayscale) or 3. Hint: is the layout {other}? (preprocess layout={other})"
            )
        size = pre.size
        declared = (spec.static_dim(h_axis), spec.static_dim(w_axis))
        if size is None:
            if None in declared:
                raise DataError(
                    f"{origin}: input {spec.name!r} {spec.shape_text()} has a dynamic height or width. "
                    "Hint: give the image size, e.g. preprocess size=224 or size=HxW"
                )
            size = declared
        elif any(d is not None and d != s for d, s in zip(declared, size)):
            raise DataError(
                f"{origin}: preprocess size={size[0]}x{size[1]} does not match input {spec.name!r} "
                f"{spec.shape_text()}"
            )
        if pre.resize is not None and pre.resize < min(size):
            raise DataError(
                f"{origin}: preprocess resize={pre.resize} is smaller than the crop size {size[0]}x{size[1]}. "
                "Hint: resize is the shorter side before the centre crop and must be at least the crop size"
            )
        for key in ("mean", "std"):
            if len(getattr(pre, key)) not in (1, channels):
                raise DataError(
                    f"{origin}: preprocess {key} has {len(getattr(pre, key))} values but the input has "
                    f"{channels} channel(s)"
                )
        if spec.dtype.kind in "iu":
            if pre.scale != 1.0 or any(pre.mean) or any(v != 1.0 for v in pre.std):
                raise DataError(
                    f"{origin}: input {spec.name!r} is {spec.dtype}, so pixels are fed as they are; "
                    "scale, mean and std cannot apply. Hint: preprocess scale=1 (and no mean/std)"
                )
        elif spec.dtype.kind != "f":
            raise DataError(f"{origin}: input {spec.name!r} is {spec.dtype}; images feed float or integer inputs")
        self._files = _list_images(folder)
        super().__init__(inputs, origin, str(folder), len(self._files), **batching)
        self.preprocess = pre
        self.channels = channels
        self.size = size
        self._check_plan_shapes({spec.name: tuple(self._batch_shapes()[spec.name][1:])}, None)
        self._mode = "L" if channels == 1 else "RGB"
        self._work = np.dtype(np.float64 if spec.dtype == np.float64 else np.float32)

    def _selected(self) -> list[Path]:
        rows = sorted({int(i) for b in self._plan.batches for i in b})
        return [self._files[i] for i in rows]

    def _decode(self, path: Path) -> np.ndarray:
        """One image as (H, W, C) uint8 in the model's channel order, resized and cropped."""
        image_mod = require("PIL.Image", purpose="reading image folders")
        resampling = getattr(image_mod, "Resampling", image_mod).BILINEAR
        pre, (h, w) = self.preprocess, self.size
        try:
            # From bytes, not the path: Pillow memory-maps some formats, and a file that shrinks while mapped
            # ends the process with SIGBUS.
            with image_mod.open(io.BytesIO(path.read_bytes())) as im:
                im = im.convert(self._mode)
                if pre.resize is None:
                    im = im.resize((w, h), resampling)
                else:
                    iw, ih = im.size
                    short, long = (iw, ih) if iw <= ih else (ih, iw)
                    new_long = int(pre.resize * long / short)
                    nw, nh = (pre.resize, new_long) if iw <= ih else (new_long, pre.resize)
                    if (nw, nh) != (iw, ih):
                        im = im.resize((nw, nh), resampling)
                    if nh < h or nw < w:
                        raise DataError(
                            f"{path}: {iw}x{ih} resized to {nw}x{nh} is smaller than the crop {w}x{h}. "
                            "Hint: raise preprocess resize"
                        )
                    top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
                    im = im.crop((left, top, left + w, top + h))
                pixels = np.asarray(im, dtype=np.uint8)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode the image ({exc})") from None
        except Exception as exc:  # Pillow raises its own types, e.g. DecompressionBombError
            raise DataError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        elif pre.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        return pixels

    def _raw_batches(self) -> Iterator[dict[str, np.ndarray]]:
        spec, pre = self.inputs[0], self.preprocess
        h, w = self.size
        mean = np.asarray(pre.mean, dtype=self._work)
        std = np.asarray(pre.std, dtype=self._work)
        for rows in self._plan.batches:
            decoded: dict[int, np.ndarray] = {}
            pixels = np.empty((len(rows), h, w, self.channels), dtype=np.uint8)
            for k, i in enumerate(rows):
                i = int(i)
                if i not in decoded:
                    decoded[i] = self._decode(self._files[i])
                pixels[k] = decoded[i]
            if spec.dtype.kind == "f":
                x = pixels.astype(self._work)
                x *= self._work.type(pre.scale)
                x -= mean
                x /= std
            else:
                x = pixels
            if pre.layout == "NCHW":
                x = x.transpose(0, 3, 1, 2)
            yield {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}

    def _batch_shapes(self) -> dict[str, list[int]]:
        h, w = self.size
        dims = [h, w, self.channels] if self.preprocess.layout == "NHWC" else [self.channels, h, w]
        return {self.inputs[0].name: [self.batch_size, *dims]}

    def _digest(self) -> str:
        h = hashlib.sha256()
        for path in self._selected():
            entry = [path.name, path.stat().st_size, file_sha256(path)]
            h.update(json.dumps(entry).encode() + b"\n")
        return h.hexdigest()

    def _extra_manifest(self) -> dict:
        return {
            **super()._extra_manifest(),
            "preprocess": self.preprocess.to_dict(),
            "image_size": list(self.size),
            "image_mode": self._mode,
            "interpolation": "bilinear",
            "files": [p.name for p in self._selected()],
        }
