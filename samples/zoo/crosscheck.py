#!/usr/bin/env python3
"""Check build.py's and metrics.py's re-writes against the packages' own code, on the built zoo.

    pip install opencv-python-headless      # only for this check; the zoo itself never needs OpenCV
    python3 samples/zoo/crosscheck.py [--zoo artifacts/zoo] [--cache artifacts/zoo/.wheels]

The packages' Python files are read from the pinned wheels in the build's cache (not installed: rapidocr's and
nudenet's dependencies are not needed), and compared with:
  resize_linear     cv2.resize(INTER_LINEAR) on 300 random images and sizes (1 and 3 channels, exact halves)
  YOLO input        nudenet's _read_image on square crops of a photo
  OCR input         rapidocr's DetPreProcess and resize_norm_img (rec, cls) on random images
  nms               cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45) on 500 random sets (ties, empty boxes)
  yolo_detections   nudenet's _postprocess on every held-out image of yolov8n_320
  ctc_text          rapidocr's CTCLabelDecode on the held-out lines of ppocr_rec
  text_mask         DBPostProcess's bitmap (pred > 0.3, cv2.dilate with a 2x2 kernel) on ppocr_det held-out crops
Exit 0 when every comparison is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ocr_preprocessing(root: Path, build: Any, rng: np.random.Generator) -> tuple[int, int]:
    """rapidocr's own DetPreProcess and resize_norm_img on BGR images against build.py's on the same RGB ones.
    Their modules import packages the check does not need (pyclipper, shapely, rapidocr's session helpers): those
    names are stubbed, the functions compared are pure OpenCV and numpy."""
    import types

    for name in ("pyclipper", "shapely", "shapely.geometry", "rapidocr_onnxruntime.utils"):
        stub = types.ModuleType(name)
        stub.Polygon = stub.OrtInferSession = stub.read_yaml = None  # type: ignore[attr-defined]
        sys.modules.setdefault(name, stub)
    package = types.ModuleType("rapidocr_onnxruntime")  # its __init__ would load the whole pipeline
    package.__path__ = [str(root / "rapidocr_onnxruntime")]  # type: ignore[attr-defined]
    sys.modules.setdefault("rapidocr_onnxruntime", package)
    det = load(root / "rapidocr_onnxruntime" / "ch_ppocr_det" / "utils.py", "_rapidocr_det_utils")
    rec_module = importlib.import_module("rapidocr_onnxruntime.ch_ppocr_rec.text_recognize")
    cls_module = importlib.import_module("rapidocr_onnxruntime.ch_ppocr_cls.text_cls")
    rec = types.SimpleNamespace(rec_image_shape=list(build.REC_SHAPE))
    cls = types.SimpleNamespace(cls_image_shape=list(build.CLS_SHAPE))
    differ = total = 0
    for _ in range(20):
        h, w = int(rng.integers(16, 80)), int(rng.integers(16, 400))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        ratio = max(build.REC_SHAPE[2] / build.REC_SHAPE[1], w / h)
        pairs = [
            (rec_module.TextRecognizer.resize_norm_img(rec, bgr, ratio), build.resize_norm_img(rgb, build.REC_SHAPE,
                                                                                                ratio)),
            (cls_module.TextClassifier.resize_norm_img(cls, bgr), build.resize_norm_img(rgb, build.CLS_SHAPE)),
        ]
        big = rng.integers(0, 256, (int(rng.integers(100, 900)), int(rng.integers(100, 900)), 3), dtype=np.uint8)
        theirs = det.DetPreProcess(build.DET_LIMIT_SIDE, "min", [0.5] * 3, [0.5] * 3)(np.ascontiguousarray(
            big[:, :, ::-1]))[0]
        pairs.append((theirs, build.det_preprocess(big)))
        for a, b in pairs:
            total += 1
            differ += a.dtype != b.dtype or not np.array_equal(a, b)
    return differ, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=HERE.parents[1] / "artifacts" / "zoo")
    parser.add_argument("--cache", type=Path, default=None, help="the build's wheel cache (default ZOO/.wheels)")
    args = parser.parse_args()
    try:
        import cv2
    except ImportError:
        print("needs OpenCV: pip install opencv-python-headless", file=sys.stderr)
        return 2
    import onnx
    import onnxruntime as ort

    build = load(HERE / "build.py", "_zoo_build")
    metrics = load(HERE / "metrics.py", "_zoo_metrics")
    zoo, cache = args.zoo, args.cache or args.zoo / ".wheels"
    failures = 0

    def report(what: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {what}: {detail}")

    def run(name: str, x: np.ndarray, batch: int) -> np.ndarray:
        session = ort.InferenceSession(str(zoo / name / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {feed: x[i:i + batch]})[0] for i in range(0, len(x), batch)])

    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(5, 900, 2))
        height, width = (int(v) for v in rng.integers(5, 800, 2))
        if rng.random() < 0.1:
            height, width, h, w = h // 2, w // 2, (h // 2) * 2, (w // 2) * 2
        shape = (h, w) if rng.random() < 0.5 else (h, w, 3)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        differ += not np.array_equal(cv2.resize(image, (width, height)), build.resize_linear(image, width, height))
    report("resize_linear vs cv2.resize", differ == 0, f"{differ} of 300 random cases differ")

    differ = 0
    for _ in range(500):
        n = int(rng.integers(1, 40))
        boxes = np.concatenate([rng.uniform(0, 300, (n, 2)), rng.uniform(0, 80, (n, 2))], axis=1)
        boxes[rng.random(n) < 0.1, 2:] = 0
        scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)
        ref = [int(i) for i in cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.25, 0.45)]
        differ += ref != metrics.nms(boxes, scores)
    report("nms vs cv2.dnn.NMSBoxes", differ == 0, f"{differ} of 500 random cases differ")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for wheel in build.WHEELS.values():
            with zipfile.ZipFile(cache / wheel.filename) as archive:
                archive.extractall(root, [m for m in archive.namelist() if m.endswith(".py")])
        sys.path.insert(0, str(root))  # nudenet imports cv2 and onnxruntime only
        nudenet = importlib.import_module("nudenet.nudenet")
        ctc = load(root / "rapidocr_onnxruntime" / "ch_ppocr_rec" / "utils.py", "_rapidocr_rec_utils")

        photo = build.load_photo("astronaut")
        differ = 0
        for side, x, y in ((300, 10, 20), (512, 0, 0), (173, 100, 50)):
            crop = np.ascontiguousarray(photo[y:y + side, x:x + side])
            blob = nudenet._read_image(np.ascontiguousarray(crop[:, :, ::-1]), 320)[0]  # cv2.imread's BGR
            mine = build.resize_linear(crop, 320, 320)[:, :, ::-1].astype(np.float32) * np.float32(1 / 255.0)
            differ += not np.array_equal(blob[0], mine.transpose(2, 0, 1))
        report("YOLO preprocessing vs nudenet._read_image", differ == 0, f"{differ} of 3 crops differ")

        differ, total = ocr_preprocessing(root, build, rng)
        report("OCR preprocessing vs rapidocr's DetPreProcess and resize_norm_img (rec, cls)", differ == 0,
               f"{differ} of {total} images differ")

        labels = vars(nudenet)["__labels"]
        out = run("yolov8n_320", np.load(zoo / "yolov8n_320" / "heldout.npz")["images"], 16)
        differ = total = 0
        for o in out:
            ref = [(d["class"], d["box"]) for d in nudenet._postprocess([o[None]], 0, 0, 1, 1, 320, 320, 320, 320)]
            got = [(labels[c], [int(v) for v in box]) for c, _, box in metrics.yolo_detections(o)]
            differ += ref != got
            total += len(ref)
        report("yolo_detections vs nudenet._postprocess", differ == 0,
               f"{differ} of {len(out)} images differ ({total} detections)")

        model = onnx.load(str(zoo / "ppocr_rec" / "model.onnx"), load_external_data=False)
        characters = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
        probs = run("ppocr_rec", np.load(zoo / "ppocr_rec" / "heldout.npz")["x"], 16)
        ref = [text for text, _ in ctc.CTCLabelDecode(character=list(characters))(probs)]
        got = metrics.ctc_text(probs, characters)
        report("ctc_text vs rapidocr CTCLabelDecode", ref == got,
               f"{sum(a != b for a, b in zip(ref, got))} of {len(ref)} lines differ")

    pred = run("ppocr_det", np.load(zoo / "ppocr_det" / "heldout.npz")["x"][:4], 2)
    kernel = np.ones((2, 2), dtype=np.uint8)
    differ = sum(not np.array_equal(cv2.dilate((p[0] > 0.3).astype(np.uint8), kernel).astype(bool),
                                    metrics.text_mask(p[None])[0]) for p in pred)
    report("text_mask vs DBPostProcess bitmap", differ == 0, f"{differ} of {len(pred)} maps differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
