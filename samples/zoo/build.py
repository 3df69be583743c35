#!/usr/bin/env python3
"""Build the zoo: six real ONNX models from pinned PyPI wheels, with calibration and held-out data, fully offline.

Models (extracted byte for byte from the wheels, sha256 checked):
  ppocr_det               rapidocr-onnxruntime 1.4.4: PP-OCRv4 det (DBNet), text probability map
  ppocr_rec               rapidocr-onnxruntime 1.4.4: PP-OCRv4 rec (SVTR-LCNet), (N, 40, 6625) CTC probabilities
  ppocr_cls               rapidocr-onnxruntime 1.4.4: PP-OCR mobile v2 cls (MobileNetV3), 0/180 degrees
  yolov8n_320             nudenet 3.4.2: 320n.onnx, YOLOv8n at 320x320, (N, 22, 2100)
  silero_vad_op15         silero-vad 6.2.3: silero_vad_16k_op15.onnx (LSTM inside an If)
  silero_vad_op18_ifless  silero-vad 6.2.3: silero_vad_op18_ifless.onnx (every Conv/Gemm inside one If)

Data, made here with fixed seeds (no overlap between calibration and held-out sets):
  OCR det, YOLO   square crops of the photographs bundled with scikit-image, calibration from one half of each photo
                  and held-out from the other (as samples/efficientnet_lite0/export.py does); the OCR det crops get
                  text lines rendered with Pillow's bundled font pasted on them, the YOLO crops faces from
                  scikit-image's LFW subset (calibration and held-out from different faces)
  OCR rec, cls    single text lines rendered with Pillow, on plain or photo backgrounds; the calibration and held-out
                  lines use disjoint vocabularies and photo halves; half of the cls lines are turned by 180 degrees
  VAD             a synthetic, speech-like signal (glottal pulses through moving formant filters, syllable
                  envelopes) mixed with silence, fricatives, tones and noise, cut into silero's 32 ms chunks; each
                  chunk carries the recurrent state FP32 reached streaming the audio up to it
The preprocessing is each package's own, re-written from its source in the wheel (rapidocr's DetPreProcess,
resize_norm_img; nudenet's _read_image); OpenCV's INTER_LINEAR resize is re-written with numpy (same fixed-point
arithmetic, bit for bit), so neither OpenCV nor the packages themselves are needed.

Outputs in --out (default artifacts/zoo/; never commit them): one folder per model with model.onnx, calib.npz,
heldout.npz (keys = input names), for the VAD models also data.py (the data script that feeds them: the `state`
input is (2, batch, 128) and `sr` a scalar, which an .npz of samples along axis 0 cannot express), and
manifest.json at the top: sources, sha256 and size of every file, preprocessing, seeds, FP32 checks, versions.

Usage: python3 samples/zoo/build.py [--out DIR] [--cache DIR] [--seed N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "zoo"


def _efficientnet_export() -> Any:
    """samples/efficientnet_lite0/export.py as a module: the photo loader, halves and deterministic npz writer."""
    spec = importlib.util.spec_from_file_location("_zoo_efficientnet_export", REPO_ROOT / "samples" /
                                                  "efficientnet_lite0" / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


EXPORT = _efficientnet_export()
sha256_of, write_bytes, split_regions = EXPORT.sha256_of, EXPORT._write_bytes, EXPORT.split_regions


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz with fixed zip timestamps (equal data, equal sha256), as the EfficientNet sample writes
    them, but keeping rank-0 arrays rank 0 (silero's `sr`; np.ascontiguousarray would make it shape (1,))."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Wheels and models


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    filename: str
    sha256: str


WHEELS: dict[str, Wheel] = {
    "rapidocr": Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                      "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"),
    "nudenet": Wheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                     "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"),
    "silero": Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
                    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
}


@dataclass(frozen=True)
class ZooModel:
    name: str
    wheel: str
    member: str
    sha256: str
    family: str  # which data builder and which metric (samples/zoo/metrics.py)
    description: str
    batch_size: int  # calibration / evaluation batch used by the benchmark and the README's commands


MODELS: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("ppocr_det", "rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "ocr_det",
             "PP-OCRv4 det (DBNet: Conv, Resize, ConvTranspose), paddle2onnx", 2),
    ZooModel("ppocr_rec", "rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "ocr_rec",
             "PP-OCRv4 rec (SVTR-LCNet: MatMul, decomposed LayerNorm, Softmax), paddle2onnx", 16),
    ZooModel("ppocr_cls", "rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "ocr_cls",
             "PP-OCR mobile v2 cls (MobileNetV3, HardSigmoid), paddle2onnx, input [-1, 3, '?', '?']", 32),
    ZooModel("yolov8n_320", "nudenet", "nudenet/320n.onnx",
             "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "yolo",
             "YOLOv8n at 320 (Concat, Split, Sigmoid, Resize, DFL), 18 classes", 16),
    ZooModel("silero_vad_op15", "silero", "silero_vad/data/silero_vad_16k_op15.onnx",
             "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", "vad",
             "silero VAD 16 kHz, opset 15 (LSTM inside an If)", 8),
    ZooModel("silero_vad_op18_ifless", "silero", "silero_vad/data/silero_vad_op18_ifless.onnx",
             "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", "vad",
             "silero VAD, opset 18 (every Conv/Gemm inside one If)", 8),
)}


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """The pinned wheel in `cache`, downloaded by pip (--no-deps, binary only) unless already there; its sha256
    must be the pinned one, so a changed upload or a corrupt cache is refused rather than built on."""
    path = cache / wheel.filename
    if not path.is_file() or sha256_of(path) != wheel.sha256:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache),
                   f"{wheel.package}=={wheel.version}"]
        print("  " + " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    got = sha256_of(path)
    if got != wheel.sha256:
        raise RuntimeError(f"{path}: sha256 {got} is not the pinned {wheel.sha256}")
    return path


def extract_model(wheel_path: Path, model: ZooModel, dest: Path) -> None:
    """Copy one .onnx member out of the wheel into dest, checking the pinned sha256 before it is written."""
    with zipfile.ZipFile(wheel_path) as archive:
        payload = archive.read(model.member)
    got = hashlib.sha256(payload).hexdigest()
    if got != model.sha256:
        raise RuntimeError(f"{wheel_path.name}:{model.member}: sha256 {got} is not the pinned {model.sha256}")
    write_bytes(dest, payload)


def describe_graph(path: Path) -> dict[str, Any]:
    """Inputs, outputs (with their symbolic dims), opsets and op counts, subgraph nodes included."""
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def dims(value: Any) -> list[Any]:
        return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                for d in value.type.tensor_type.shape.dim]

    def walk(graph: Any, counter: collections.Counter) -> None:
        for node in graph.node:
            counter[node.op_type] += 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    walk(sub, counter)

    top: collections.Counter = collections.Counter(n.op_type for n in model.graph.node)
    every: collections.Counter = collections.Counter()
    walk(model.graph, every)
    elem = onnx.helper.tensor_dtype_to_np_dtype
    return {
        "opset": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "inputs": [{"name": i.name, "shape": dims(i), "dtype": str(elem(i.type.tensor_type.elem_type))}
                   for i in model.graph.input if i.name not in initializers],
        "outputs": [{"name": o.name, "shape": dims(o), "dtype": str(elem(o.type.tensor_type.elem_type))}
                    for o in model.graph.output],
        "ops_main_graph": dict(sorted(top.items())),
        "ops_with_subgraphs": dict(sorted(every.items())),
    }


# ---------------------------------------------------------------------------------------------------------------
# Images: OpenCV's INTER_LINEAR resize, photos and crops

RESIZE_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: uint8 resizes use 11-bit fixed-point weights


def _linear_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis, as cv::resize computes them: the source position in float32
    ((d + 0.5) * src/dst - 0.5), its floor and fraction, each weight rounded to 11 bits on its own. Along x
    (`clamp`) a position outside the image takes the edge pixel with weight 1; along y the weights stay and only the
    row indices are clipped."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= src - 1
        i0[low], frac[low] = 0, 0
        i0[high], frac[high] = src - 1, 0
    i1, i0 = np.clip(i0 + 1, 0, src - 1), np.clip(i0, 0, src - 1)
    one = np.float32(1 << RESIZE_BITS)
    w0 = np.rint((np.float32(1) - frac) * one).astype(np.int64)  # saturate_cast<short>: round half to even
    w1 = np.rint(frac * one).astype(np.int64)
    return i0, i1, w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(image, (width, height)) with the default INTER_LINEAR on uint8 HxW[xC], bit for bit as OpenCV's
    SIMD path computes it: a horizontal pass with 11-bit weights into int32 rows, then a vertical pass on rows
    shifted right by 4, each product taken >> 16, summed, + 2, >> 2. An exact halving of both sides is INTER_AREA
    in OpenCV (2x2 means, rounded), and so here. No antialiasing when shrinking, as OpenCV. Checked against
    opencv-python-headless 5.1.0 on random images of many sizes: no pixel differs."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()
    img = image.astype(np.int64)
    if (h, w) == (2 * height, 2 * width):
        return ((img[0::2, 0::2] + img[0::2, 1::2] + img[1::2, 0::2] + img[1::2, 1::2] + 2) >> 2).astype(np.uint8)
    y0, y1, wy0, wy1 = _linear_taps(h, height, clamp=False)
    x0, x1, wx0, wx1 = _linear_taps(w, width, clamp=True)
    across = (1, -1) + (1,) * (image.ndim - 2)
    down = (-1, 1) + (1,) * (image.ndim - 2)
    rows = img[:, x0] * wx0.reshape(across) + img[:, x1] * wx1.reshape(across)
    out = ((rows[y0] >> 4) * wy0.reshape(down) >> 16) + ((rows[y1] >> 4) * wy1.reshape(down) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


# The EfficientNet sample's eight colour photos plus the camera man (grey, repeated to three channels): people and
# faces are what nudenet's detector finds, so it keeps the YOLO set from being all "nothing found".
PHOTOS: tuple[str, ...] = (*EXPORT.PHOTOS, "camera")
SPLITS = ("calib", "heldout")


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photo as uint8 RGB [H, W, 3]."""
    if name == "camera":
        from skimage import data

        grey = np.asarray(data.camera())
        return np.repeat(grey[:, :, None], 3, axis=2)
    return EXPORT.load_photo(name)


@dataclass(frozen=True)
class Square:
    photo: str
    left: int
    top: int
    side: int


def sample_squares(family: int, split: str, count: int, seed: int, shapes: dict[str, tuple[int, int]],
                   min_fraction: float = 0.3) -> list[Square]:
    """`count` random squares spread round-robin over the photos, each inside its photo's `split` half (the halves
    of samples/efficientnet_lite0/export.py), from numpy.random.default_rng([seed, family, split, photo])."""
    split_id = SPLITS.index(split)
    per_photo = [count // len(PHOTOS) + (i < count % len(PHOTOS)) for i in range(len(PHOTOS))]
    out: list[Square] = []
    for index, (name, n) in enumerate(zip(PHOTOS, per_photo)):
        rng = np.random.default_rng([seed, family, split_id, index])
        left0, top0, width, height = split_regions(*shapes[name], index)[split]
        max_side = min(width, height)
        min_side = max(1, int(round(min_fraction * max_side)))
        for _ in range(n):
            side = int(rng.integers(min_side, max_side + 1))
            out.append(Square(name, left0 + int(rng.integers(0, width - side + 1)),
                              top0 + int(rng.integers(0, height - side + 1)), side))
    return out


def cut(photos: dict[str, np.ndarray], sq: Square) -> np.ndarray:
    return photos[sq.photo][sq.top: sq.top + sq.side, sq.left: sq.left + sq.side]


# ---------------------------------------------------------------------------------------------------------------
# Text rendering (Pillow's bundled font, so every machine draws the same pixels for the same Pillow version)

# Two disjoint vocabularies: calibration lines take words only from the first, held-out lines from the second.
WORDS = (
    "open street market coffee price total station north river garden bakery hotel museum exit entrance parking "
    "school library pharmacy bank office ticket platform train airport gate floor room table menu special today "
    "fresh daily sale discount street avenue road lane park square bridge tower center public private welcome "
    "closed monday friday sunday january march april june august october december morning evening night water "
    "bread cheese apple orange lemon tea milk sugar salt pepper rice noodle soup chicken beef fish salad pizza "
    "delivery service order number invoice receipt account balance amount payment cash card credit change "
    "phone email address city country postal code name date time hours minutes speed limit stop slow danger"
).split()
CALIB_WORDS, HELDOUT_WORDS = WORDS[0::2], WORDS[1::2]


def random_text(rng: np.random.Generator, words: tuple[str, ...] | list[str]) -> str:
    """A short sign-like line: 1-3 words in random case, sometimes with a number, price, date or time."""
    count = int(rng.integers(1, 4))
    picked = [str(words[int(rng.integers(len(words)))]) for _ in range(count)]
    style = int(rng.integers(3))
    picked = [w.upper() if style == 0 else (w.capitalize() if style == 1 else w) for w in picked]
    extra = int(rng.integers(6))
    if extra == 0:
        picked.append(str(int(rng.integers(1, 1000))))
    elif extra == 1:
        picked.append(f"{rng.integers(1, 100)}.{rng.integers(0, 100):02d}")
    elif extra == 2:
        picked.append(f"{rng.integers(2000, 2030)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}")
    elif extra == 3:
        picked.append(f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}")
    return " ".join(picked)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _contrasting(rng: np.random.Generator, background: float) -> tuple[int, int, int]:
    """A random colour far in luminance from `background` (0..255)."""
    base = rng.integers(0, 70, size=3) if background > 128 else rng.integers(185, 256, size=3)
    return tuple(int(v) for v in base)  # type: ignore[return-value]


def render_line(rng: np.random.Generator, text: str, size: int, background: np.ndarray | None) -> np.ndarray:
    """Text on a tight canvas with a few pixels of margin, uint8 RGB. `background`: a photo patch to draw on
    (resized to the canvas), else a plain colour with a little noise."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    margin_x, margin_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    width, height = right - left + 2 * margin_x, bottom - top + 2 * margin_y
    if background is None:
        colour = rng.integers(0, 256, size=3)
        canvas = np.clip(colour[None, None, :] + rng.normal(0, 6, size=(height, width, 3)), 0, 255).astype(np.uint8)
    else:
        canvas = resize_linear(background, width, height)
    image = Image.fromarray(canvas)
    ink = _contrasting(rng, float(canvas.mean()))
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=font, fill=ink)
    return np.asarray(image)


def line_texts(rng: np.random.Generator, words: list[str], count: int, taken: set[str]) -> list[str]:
    """`count` distinct lines not in `taken` (the other split's lines), added to `taken`."""
    out: list[str] = []
    while len(out) < count:
        text = random_text(rng, words)
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


# ---------------------------------------------------------------------------------------------------------------
# rapidocr's preprocessing (rapidocr_onnxruntime 1.4.4; its LoadImage hands the models BGR images)

OCR_MEAN = OCR_STD = 0.5  # config.yaml Det.mean/std, and resize_norm_img's `-= 0.5; /= 0.5`
DET_LIMIT_SIDE = 736  # config.yaml Det.limit_side_len with limit_type "min"
REC_SHAPE = (3, 48, 320)  # config.yaml Rec.rec_img_shape
CLS_SHAPE = (3, 48, 192)  # config.yaml Cls.cls_image_shape


def det_preprocess(rgb: np.ndarray) -> np.ndarray:
    """DetPreProcess(limit_side_len=736, limit_type='min'): scale so the shorter side is 736 when it is shorter,
    round each side to a multiple of 32, resize, (x/255 - 0.5)/0.5, CHW; BGR as rapidocr loads images."""
    h, w = rgb.shape[:2]
    ratio = DET_LIMIT_SIDE / min(h, w) if min(h, w) < DET_LIMIT_SIDE else 1.0
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    bgr = resize_linear(rgb, resize_w, resize_h)[:, :, ::-1]
    # as DetPreProcess.normalize computes it: x * (1/255) in float32, then the mean/std arrays make it float64
    scaled = bgr.astype(np.float32) * np.float32(1 / 255.0)
    normalised = (scaled - np.full(3, OCR_MEAN)) / np.full(3, OCR_STD)
    return normalised.transpose(2, 0, 1).astype(np.float32)


def resize_norm_img(rgb: np.ndarray, shape: tuple[int, int, int], max_wh_ratio: float | None = None) -> np.ndarray:
    """TextRecognizer/TextClassifier.resize_norm_img: height to 48, width ceil(48 * w/h) capped at the padded
    width (int(48 * max_wh_ratio) for rec, 192 for cls), x/255, -0.5, /0.5, zero padding on the right. BGR."""
    channels, height, width = shape
    if max_wh_ratio is not None:
        width = int(height * max_wh_ratio)
    h, w = rgb.shape[:2]
    ratio = w / float(h)
    resized_w = width if math.ceil(height * ratio) > width else int(math.ceil(height * ratio))
    resized = resize_linear(rgb, resized_w, height)[:, :, ::-1].astype(np.float32)
    resized = resized.transpose(2, 0, 1) / 255
    resized -= 0.5
    resized /= 0.5
    out = np.zeros((channels, height, width), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


# ---------------------------------------------------------------------------------------------------------------
# Data builders, one per family. Each returns {split: {input: array}}, a manifest entry and the FP32 checks.


@dataclass
class Built:
    arrays: dict[str, dict[str, np.ndarray]]
    data: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)


FAMILY_IDS = {"ocr_det": 1, "ocr_rec": 2, "ocr_cls": 3, "yolo": 4, "vad": 5}


def build_ocr_det(args: argparse.Namespace, photos: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]
                  ) -> Built:
    """Square photo crops resized to 736x736 (DetPreProcess of a square is 736x736), with 2-6 rendered text lines
    pasted on each; the line boxes (in input pixels) go into the manifest."""
    from PIL import Image, ImageDraw

    counts = {"calib": args.n_det_calib, "heldout": args.n_det_heldout}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    entries: dict[str, list[dict[str, Any]]] = {}
    taken: set[str] = set()
    for split in SPLITS:
        squares = sample_squares(FAMILY_IDS["ocr_det"], split, counts[split], args.seed, shapes)
        rng = np.random.default_rng([args.seed, FAMILY_IDS["ocr_det"], 100 + SPLITS.index(split)])
        words = CALIB_WORDS if split == "calib" else HELDOUT_WORDS
        out = np.empty((len(squares), 3, DET_LIMIT_SIDE, DET_LIMIT_SIDE), dtype=np.float32)
        items = []
        for i, sq in enumerate(squares):
            canvas = resize_linear(cut(photos, sq), DET_LIMIT_SIDE, DET_LIMIT_SIDE)
            image = Image.fromarray(canvas)
            draw = ImageDraw.Draw(image)
            boxes: list[list[int]] = []
            lines = []
            for text in line_texts(rng, words, int(rng.integers(2, 7)), taken):
                font = _font(int(rng.integers(20, 64)))
                l, t, r, b = font.getbbox(text)
                tw, th = r - l, b - t
                if tw >= DET_LIMIT_SIDE - 16:
                    continue
                for _ in range(30):  # a free spot, so lines never overlap
                    x = int(rng.integers(8, DET_LIMIT_SIDE - tw - 8))
                    y = int(rng.integers(8, DET_LIMIT_SIDE - th - 8))
                    box = [x - 4, y - 4, x + tw + 4, y + th + 4]
                    if all(box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3] for o in boxes):
                        break
                else:
                    continue
                region = canvas[box[1]:box[3], box[0]:box[2]]
                if rng.random() < 0.3:  # a sign: a plain plate behind the text
                    plate = tuple(int(v) for v in rng.integers(0, 256, size=3))
                    draw.rectangle(box, fill=plate)
                    luminance = float(np.mean(plate))
                else:
                    luminance = float(region.mean())
                draw.text((x - l, y - t), text, font=font, fill=_contrasting(rng, luminance))
                boxes.append(box)
                lines.append({"text": text, "box": box})
            out[i] = det_preprocess(np.asarray(image))
            items.append({"photo": sq.photo, "left": sq.left, "top": sq.top, "side": sq.side, "lines": lines})
        arrays[split] = {"x": out}
        entries[split] = items
    return Built(arrays, {"samples": entries},
                 {"source": "rapidocr_onnxruntime/ch_ppocr_det/utils.py DetPreProcess(736, 'min')",
                  "color": "BGR", "scale": "(x / 255 - 0.5) / 0.5", "resize": "OpenCV INTER_LINEAR (numpy)",
                  "shape": [3, DET_LIMIT_SIDE, DET_LIMIT_SIDE]})


def _line_background(rng: np.random.Generator, photos: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]],
                     split: str) -> np.ndarray | None:
    """Half the lines are drawn on a patch of a photo (from the split's half), half on a plain colour."""
    if rng.random() < 0.5:
        return None
    index = int(rng.integers(len(PHOTOS)))
    name = PHOTOS[index]
    left0, top0, width, height = split_regions(*shapes[name], index)[split]
    pw, ph = int(rng.integers(40, max(41, width // 2))), int(rng.integers(16, max(17, height // 4)))
    x, y = left0 + int(rng.integers(0, width - pw + 1)), top0 + int(rng.integers(0, height - ph + 1))
    return photos[name][y:y + ph, x:x + pw]


def _lines(args: argparse.Namespace, family: str, counts: dict[str, int], photos: dict[str, np.ndarray],
           shapes: dict[str, tuple[int, int]], max_ratio: float
           ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Rendered lines per split: distinct texts from the split's vocabulary, width/height at most `max_ratio`."""
    taken: set[str] = set()
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split in SPLITS:
        rng = np.random.default_rng([args.seed, FAMILY_IDS[family], SPLITS.index(split)])
        words = CALIB_WORDS if split == "calib" else HELDOUT_WORDS
        items: list[tuple[str, np.ndarray]] = []
        while len(items) < counts[split]:
            text = line_texts(rng, words, 1, taken)[0]
            image = render_line(rng, text, int(rng.integers(24, 44)), _line_background(rng, photos, shapes, split))
            if image.shape[1] / image.shape[0] <= max_ratio:
                items.append((text, image))
        out[split] = items
    return out


def build_ocr_rec(args: argparse.Namespace, photos: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]
                  ) -> Built:
    """Rendered lines no wider than 320/48, so rapidocr's batch width int(48 * max_wh_ratio) is 320 for all."""
    max_ratio = REC_SHAPE[2] / REC_SHAPE[1]
    lines = _lines(args, "ocr_rec", {"calib": args.n_rec_calib, "heldout": args.n_rec_heldout}, photos, shapes,
                   max_ratio)
    arrays = {split: {"x": np.stack([resize_norm_img(img, REC_SHAPE, max_ratio) for _, img in items])}
              for split, items in lines.items()}
    return Built(arrays, {"texts": {split: [t for t, _ in items] for split, items in lines.items()}},
                 {"source": "rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py resize_norm_img, "
                            "max_wh_ratio 320/48", "color": "BGR", "scale": "(x / 255 - 0.5) / 0.5",
                  "resize": "OpenCV INTER_LINEAR (numpy)", "shape": list(REC_SHAPE), "font": "Pillow default"})


def build_ocr_cls(args: argparse.Namespace, photos: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]
                  ) -> Built:
    """Rendered lines, every other one turned by 180 degrees (label 1, '180'); lines wider than 192/48 are
    squeezed to 192 as rapidocr does."""
    lines = _lines(args, "ocr_cls", {"calib": args.n_cls_calib, "heldout": args.n_cls_heldout}, photos, shapes,
                   REC_SHAPE[2] / REC_SHAPE[1])
    arrays, labels = {}, {}
    for split, items in lines.items():
        rng = np.random.default_rng([args.seed, FAMILY_IDS["ocr_cls"], 200 + SPLITS.index(split)])
        turned = rng.permutation(np.arange(len(items)) % 2).astype(np.int64)
        arrays[split] = {"x": np.stack([resize_norm_img(img[::-1, ::-1] if t else img, CLS_SHAPE)
                                        for (_, img), t in zip(items, turned)])}
        labels[split] = turned
    return Built(arrays, {"texts": {s: [t for t, _ in items] for s, items in lines.items()},
                          "labels": {s: v.tolist() for s, v in labels.items()}},
                 {"source": "rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py resize_norm_img", "color": "BGR",
                  "scale": "(x / 255 - 0.5) / 0.5", "resize": "OpenCV INTER_LINEAR (numpy)",
                  "shape": list(CLS_SHAPE), "labels": "0 upright, 1 turned by 180 degrees"})


YOLO_SIZE = 320


LFW_FACES = 100  # skimage.data.lfw_subset(): 200 grey 25x25 images, the first 100 of them faces


def build_yolo(args: argparse.Namespace, photos: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]
               ) -> Built:
    """Square photo crops resized to 320x320 with 1-4 faces of scikit-image's LFW subset pasted on each (64-160
    px; faces are what nudenet's detector finds in ordinary photos, so its detections are not all "nothing");
    calibration takes faces 0-49, held-out faces 50-99. Then nudenet's _read_image: no padding (already square),
    cv2.dnn.blobFromImage(1/255, (320, 320), swapRB=True), NCHW. The model gets BGR: _read_image first calls
    cv2.cvtColor(COLOR_RGBA2BGR) on the 3-channel BGR image cv2.imread gives, which swaps R and B, and
    swapRB swaps them back (crosscheck.py compares with _read_image itself)."""
    from skimage import data

    faces = np.rint(np.asarray(data.lfw_subset())[:LFW_FACES] * 255).astype(np.uint8)
    half = LFW_FACES // 2
    counts = {"calib": args.n_yolo_calib, "heldout": args.n_yolo_heldout}
    arrays, entries = {}, {}
    for split in SPLITS:
        squares = sample_squares(FAMILY_IDS["yolo"], split, counts[split], args.seed, shapes)
        rng = np.random.default_rng([args.seed, FAMILY_IDS["yolo"], 100 + SPLITS.index(split)])
        first = 0 if split == "calib" else half
        out = np.empty((len(squares), 3, YOLO_SIZE, YOLO_SIZE), dtype=np.float32)
        items = []
        for i, sq in enumerate(squares):
            rgb = resize_linear(cut(photos, sq), YOLO_SIZE, YOLO_SIZE)
            pasted = []
            for _ in range(int(rng.integers(1, 5))):
                face = first + int(rng.integers(half))
                size = int(rng.integers(64, 161))
                x, y = (int(v) for v in rng.integers(0, YOLO_SIZE - size + 1, size=2))
                grey = resize_linear(np.repeat(faces[face][:, :, None], 3, axis=2), size, size)
                rgb[y:y + size, x:x + size] = grey
                pasted.append({"lfw_index": face, "box": [x, y, size, size]})
            out[i] = (rgb[:, :, ::-1].astype(np.float32) * np.float32(1 / 255.0)).transpose(2, 0, 1)
            items.append({**vars(sq), "faces": pasted})
        arrays[split] = {"images": out}
        entries[split] = items
    return Built(arrays, {"crops": entries},
                 {"source": "nudenet/nudenet.py _read_image (cvtColor RGBA2BGR, then blobFromImage 1/255, 320x320, "
                            "swapRB)", "color": "BGR",
                  "scale": "x / 255", "resize": "OpenCV INTER_LINEAR (numpy)", "shape": [3, YOLO_SIZE, YOLO_SIZE]})


# ---------------------------------------------------------------------------------------------------------------
# Audio for the VAD

SAMPLE_RATE = 16000
CHUNK = 512  # silero's OnnxWrapper: 512 new samples per call at 16 kHz
CONTEXT = 64  # ... preceded by the last 64 samples of the previous call
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390),
          (440, 1020, 2240), (660, 1720, 2410), (490, 1350, 1690))  # F1-F3 of common vowels, Hz


def _resonator(freq: float, bandwidth: float) -> tuple[list[float], list[float]]:
    r = math.exp(-math.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * math.pi * freq / SAMPLE_RATE
    return [1 - r], [1.0, -2 * r * math.cos(theta), r * r]


def _voiced(n: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like: a glottal pulse train (F0 90-240 Hz with vibrato and drift) through three formant resonators
    whose vowel changes every 100-250 ms, each syllable under a rise-fall envelope."""
    from scipy.signal import lfilter

    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
    f0 = f0 * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
    source = np.diff(np.floor(np.cumsum(f0 / SAMPLE_RATE)), prepend=0.0)
    source = lfilter([1.0], [1.0, -0.97], source) + rng.normal(0, 0.02, n)
    out = np.zeros(n)
    pos = 0
    while pos < n:
        m = int(rng.uniform(0.10, 0.25) * SAMPLE_RATE)
        segment = source[pos:pos + m]
        vowel = VOWELS[int(rng.integers(len(VOWELS)))]
        acc = np.zeros_like(segment)
        for freq, bandwidth in zip(vowel, (80, 100, 140)):
            b, a = _resonator(freq * rng.uniform(0.9, 1.1), bandwidth)
            acc += lfilter(b, a, segment)
        out[pos:pos + m] = acc * np.sin(np.pi * np.linspace(0, 1, len(segment))) ** 0.6
        pos += m
    return out / (np.abs(out).max() + 1e-9)


def _fricative(n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, lfilter

    b, a = butter(4, rng.uniform(2500, 5000) / (SAMPLE_RATE / 2), "high")
    x = lfilter(b, a, rng.normal(0, 1, n))
    return x / (np.abs(x).max() + 1e-9)


def _tone(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    f = rng.uniform(200, 900)
    x = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 5))
    return x / (np.abs(x).max() + 1e-9)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, lfilter

    b, a = butter(2, 0.02, "high")
    x = lfilter(b, a, np.cumsum(rng.normal(0, 1, n)))
    return x / (np.abs(x).max() + 1e-9)


SEGMENTS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "silence": lambda n, rng: np.zeros(n), "speech": _voiced, "fricative": _fricative, "tone": _tone,
    "noise": _noise,
}
SEGMENT_KINDS = ("silence", "speech", "speech", "fricative", "tone", "noise")  # speech drawn twice as often


def synth_audio(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One stream: segments of 0.3-1.5 s of random kind and level, over a noise floor of -70 to -40 dBFS."""
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    segments = []
    pos = 0
    while pos < n:
        kind = SEGMENT_KINDS[int(rng.integers(len(SEGMENT_KINDS)))]
        m = min(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), n - pos)
        level = float(rng.uniform(0.05, 0.5))
        out[pos:pos + m] = SEGMENTS[kind](m, rng) * level
        segments.append({"kind": kind, "start": pos, "samples": m, "level": round(level, 4)})
        pos += m
    out += rng.normal(0, 10 ** rng.uniform(-3.5, -2), n)
    return out.astype(np.float32), segments


def stream_vad(model_path: Path, audio: np.ndarray) -> dict[str, np.ndarray]:
    """Run the FP32 model over `audio` (streams x samples) as silero's OnnxWrapper does, all streams in one batch:
    per step the 64 context samples + 512 new ones, the state the previous step returned, sr = 16000. Returns
    the model inputs of every step, time-major (step 0 of every stream, then step 1, ...), and the probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    streams, length = audio.shape
    steps = length // CHUNK
    state = np.zeros((2, streams, 128), dtype=np.float32)
    context = np.zeros((streams, CONTEXT), dtype=np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    inputs = np.empty((steps * streams, CONTEXT + CHUNK), dtype=np.float32)
    states = np.empty((2, steps * streams, 128), dtype=np.float32)
    probs = np.empty((steps * streams,), dtype=np.float32)
    for step in range(steps):
        x = np.concatenate([context, audio[:, step * CHUNK:(step + 1) * CHUNK]], axis=1)
        rows = slice(step * streams, (step + 1) * streams)
        inputs[rows], states[:, rows] = x, state
        p, state = session.run(["output", "stateN"], {"input": x, "state": state, "sr": sr})
        probs[rows] = p[:, 0]
        context = x[:, -CONTEXT:]
    return {"input": inputs, "state": states, "sr": sr, "probs": probs}


STREAMS_LINE = "STREAMS = {}  # build.py --vad-streams (build.py writes the number it used here)"


def vad_data_script(streams: int) -> str:
    """samples/zoo/vad_data.py with its STREAMS set to the number of streams built (its batch size)."""
    text = (HERE / "vad_data.py").read_text(encoding="utf-8")
    line = STREAMS_LINE.format(8)
    if text.count(line) != 1:
        raise RuntimeError(f"vad_data.py: expected one line {line!r}")
    return text.replace(line, STREAMS_LINE.format(streams))


def build_vad(args: argparse.Namespace, model_path: Path) -> Built:
    """Synthetic audio, `--vad-streams` streams per split, streamed through the FP32 model for the states."""
    seconds = {"calib": args.vad_calib_seconds, "heldout": args.vad_heldout_seconds}
    arrays, entries, probs = {}, {}, {}
    for split in SPLITS:
        rng = np.random.default_rng([args.seed, FAMILY_IDS["vad"], SPLITS.index(split)])
        streams = [synth_audio(seconds[split], rng) for _ in range(args.vad_streams)]
        audio = np.stack([a for a, _ in streams])
        got = stream_vad(model_path, audio)
        probs[split] = got.pop("probs")
        arrays[split] = got
        entries[split] = [s for _, s in streams]
    return Built(arrays, {"streams": args.vad_streams, "segments": entries, "fp32_probs": probs},
                 {"source": "silero_vad/utils_vad.py OnnxWrapper.__call__ (64 context + 512 samples, sr 16000)",
                  "sample_rate": SAMPLE_RATE, "layout": "time-major: rows t*streams .. t*streams+streams-1 are "
                  "step t of every stream; `state` is (2, N, 128) as the model takes it, `sr` a scalar"})


# ---------------------------------------------------------------------------------------------------------------
# FP32 checks: the preprocessing is right when FP32 does its job on the data


def run_model(path: Path, arrays: dict[str, np.ndarray], batch: int, output: str | None = None) -> np.ndarray:
    """The first (or the named) output of `path` on `arrays`, in batches along axis 0 (scalars passed whole)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = output or session.get_outputs()[0].name
    count = next(len(a) for a in arrays.values() if a.ndim)
    parts = [session.run([name], {k: (v[i:i + batch] if v.ndim else v) for k, v in arrays.items()})[0]
             for i in range(0, count, batch)]
    return np.concatenate(parts)


def load_metrics() -> Any:
    spec = importlib.util.spec_from_file_location("_zoo_metrics", HERE / "metrics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_fp32(model: ZooModel, path: Path, built: Built) -> dict[str, Any]:
    """What FP32 makes of the held-out data: OCR against the rendered ground truth, detections counted, speech
    share; printed, and kept in the manifest."""
    import onnx

    metrics = load_metrics()
    held = built.arrays["heldout"]
    if model.family == "ocr_rec":
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        characters = meta["character"].splitlines()
        if len(set(characters)) != len(characters) or " " in characters:
            raise RuntimeError("PP-OCR dictionary has duplicates: metrics.ocr_rec's index comparison is not text")
        texts = metrics.ctc_text(run_model(path, held, 16), characters)
        truth = built.data["texts"]["heldout"]
        exact = float(np.mean([a == b for a, b in zip(texts, truth)]))
        fold = lambda text: text.replace(" ", "").lower()  # noqa: E731
        folded = float(np.mean([fold(a) == fold(b) for a, b in zip(texts, truth)]))
        return {"text_exact": exact, "text_ignoring_case_and_spaces": folded,
                "examples": [[t, r] for t, r in zip(truth[:8], texts[:8])]}
    if model.family == "ocr_cls":
        pred = run_model(path, held, 32).argmax(axis=1)
        truth = np.asarray(built.data["labels"]["heldout"])
        return {"accuracy": float(np.mean(pred == truth))}
    if model.family == "ocr_det":
        masks = metrics.text_mask(run_model(path, held, 2))
        inside = outside = hit = lines = 0
        covered = np.zeros(masks.shape, dtype=bool)
        for k, item in enumerate(built.data["samples"]["heldout"]):
            for line in item["lines"]:
                x0, y0, x1, y1 = line["box"]
                share = float(masks[k, y0:y1, x0:x1].mean())
                hit += share > 0.3
                lines += 1
                covered[k, y0:y1, x0:x1] = True
            inside += int(masks[k][covered[k]].sum())
            outside += int(masks[k][~covered[k]].sum())
        return {"lines_found": f"{hit} of {lines}", "mask_share_inside_line_boxes": inside / max(1, inside + outside)}
    if model.family == "yolo":
        out = run_model(path, held, 16)
        per_image = [len(metrics.yolo_detections(o)) for o in out]
        return {"detections": int(sum(per_image)), "images_with_detections": int(sum(n > 0 for n in per_image)),
                "images": len(per_image)}
    probs = built.data["fp32_probs"]
    return {split: {"chunks": int(p.size), "speech_share": float(np.mean(p >= metrics.VAD_THRESHOLD)),
                    "share_within_0.1_of_threshold": float(np.mean(np.abs(p - metrics.VAD_THRESHOLD) < 0.1))}
            for split, p in probs.items()}


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the zoo (PP-OCR det/rec/cls, YOLOv8n, silero VAD) from pinned PyPI wheels, with "
        "calibration and held-out data. Needs pip (for the wheels), scikit-image, scipy, onnx, onnxruntime, Pillow.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where pip downloads the wheels (default: OUT/.wheels); a wheel already there with "
                        "the pinned sha256 is not downloaded again")
    parser.add_argument("--seed", type=int, default=0, help="seed of every sampler (default: 0)")
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), help="build these models only")
    counts = parser.add_argument_group("sample counts")
    for flag, default in (("det-calib", 16), ("det-heldout", 16), ("rec-calib", 128), ("rec-heldout", 256),
                          ("cls-calib", 128), ("cls-heldout", 256), ("yolo-calib", 64), ("yolo-heldout", 128)):
        counts.add_argument(f"--n-{flag}", type=int, default=default, help=f"(default: {default})")
    counts.add_argument("--vad-streams", type=int, default=8, help="audio streams per split, the batch (default: 8)")
    counts.add_argument("--vad-calib-seconds", type=float, default=12.0, help="seconds per stream (default: 12)")
    counts.add_argument("--vad-heldout-seconds", type=float, default=24.0, help="seconds per stream (default: 24)")
    args = parser.parse_args(argv)
    numbers = [v for k, v in vars(args).items() if k.startswith(("n_", "vad_"))]
    if any(v <= 0 for v in numbers):
        parser.error("sample counts, streams and seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out.resolve()
    cache: Path = (args.cache or out / ".wheels").resolve()
    names = args.only or list(MODELS)
    out.mkdir(parents=True, exist_ok=True)

    print("wheels:")
    wheels = {key: fetch_wheel(WHEELS[key], cache) for key in sorted({MODELS[n].wheel for n in names})}
    photos = {name: load_photo(name) for name in PHOTOS}
    shapes = {name: (int(img.shape[0]), int(img.shape[1])) for name, img in photos.items()}
    builders = {"ocr_det": build_ocr_det, "ocr_rec": build_ocr_rec, "ocr_cls": build_ocr_cls, "yolo": build_yolo}

    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = {"models": {}}
    if manifest_path.is_file() and args.only:  # a partial rebuild keeps the other models' entries
        manifest = json.loads(manifest_path.read_text())
    for name in names:
        model = MODELS[name]
        t0 = time.perf_counter()
        folder = out / name
        folder.mkdir(exist_ok=True)
        extract_model(wheels[model.wheel], model, folder / "model.onnx")
        if model.family == "vad":
            built = build_vad(args, folder / "model.onnx")
            write_bytes(folder / "data.py", vad_data_script(args.vad_streams).encode("utf-8"))
        else:
            built = builders[model.family](args, photos, shapes)
        for split in SPLITS:
            save_npz(folder / f"{split}.npz", built.arrays[split])
        checks = check_fp32(model, folder / "model.onnx", built)
        built.data.pop("fp32_probs", None)
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        wheel = WHEELS[model.wheel]
        manifest["models"][name] = {
            "description": model.description,
            "source": {"wheel": wheel.filename, "package": f"{wheel.package}=={wheel.version}",
                       "wheel_sha256": wheel.sha256, "member": model.member},
            "graph": describe_graph(folder / "model.onnx"),
            "family": model.family,
            "metric": f"samples/zoo/metrics.py:{model.family}",
            "batch_size": model.batch_size,
            "data": {"calib": "data.py:load_data" if model.family == "vad" else "calib.npz",
                     "heldout": "data.py:heldout" if model.family == "vad" else "heldout.npz",
                     "samples": {s: int(next(a for a in built.arrays[s].values() if a.ndim).shape[0])
                                 for s in SPLITS}},
            "preprocessing": built.preprocessing,
            "fp32_checks": checks,
            "content": built.data,
            "files": {f: {"sha256": sha256_of(folder / f), "bytes": (folder / f).stat().st_size} for f in files},
        }
        print(f"{name}: {json.dumps(checks)[:300]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    manifest["seed"] = args.seed
    manifest["counts"] = {k: v for k, v in vars(args).items() if k.startswith(("n_", "vad_"))}
    manifest["versions"] = _versions()
    write_bytes(manifest_path, (json.dumps(manifest, indent=1, default=_json_default) + "\n").encode("utf-8"))
    for name in names:
        for f, info in manifest["models"][name]["files"].items():
            print(f"  {name}/{f}  {info['bytes'] / 2**20:8.2f} MiB  sha256 {info['sha256'][:16]}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in ("numpy", "onnx", "onnxruntime", "Pillow", "scikit-image", "scipy", "pip"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


if __name__ == "__main__":
    sys.exit(main())
