"""Task metrics for the zoo models, INT8 against FP32: `--metric samples/zoo/metrics.py:FUNCTION`.

Each function follows the contract of `trt_calib/ort/user_metric.py`: it gets the FP32 and the INT8 outputs of one
held-out batch ({output_name: array}) and returns (value, higher_is_better[, weight]); batches are averaged with the
weights (default: the batch's samples), so a returned weight makes the figure a pooled ratio over the whole set.

    ocr_rec   PP-OCR rec, (N, T, C) CTC probabilities: share of lines whose decoded text equals FP32's
    ocr_det   PP-OCR det (DBNet), (N, 1, H, W) text probability: IoU of the binarised text masks, pooled over pixels
    ocr_cls   PP-OCR cls, (N, 2) 0/180 degrees: top-1 agreement
    yolo      YOLOv8 (nudenet), (N, 4 + C, anchors): share of FP32 detections INT8 finds again after the package's
              own filtering and NMS (same class, IoU >= 0.5), pooled over the FP32 detections
    vad       silero VAD, `output` (N, 1) speech probability: share of chunks with the same speech decision (p >= 0.5)

The thresholds and the post-processing are those of the packages the models ship in (rapidocr-onnxruntime 1.4.4,
nudenet 3.4.2, silero-vad 6.2.3), re-written here with numpy from what their sources do; nothing is imported from
them. Only numpy is needed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "DET_THRESHOLD", "YOLO_CANDIDATE_SCORE", "YOLO_SCORE", "YOLO_NMS_IOU", "MATCH_IOU", "VAD_THRESHOLD",
    "ctc_decode", "ctc_text", "text_mask", "yolo_detections", "nms", "box_iou", "match_detections",
    "ocr_rec", "ocr_det", "ocr_cls", "yolo", "vad",
]

# rapidocr_onnxruntime/config.yaml, Det.thresh: DBPostProcess binarises the probability map at `pred > thresh`.
DET_THRESHOLD = 0.3
# nudenet/nudenet.py `_postprocess`: rows whose best class score is >= 0.2 become candidates, then
# `cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)` keeps scores > 0.25 and drops boxes overlapping a kept one by > 0.45.
YOLO_CANDIDATE_SCORE = 0.2
YOLO_SCORE = 0.25
YOLO_NMS_IOU = 0.45
# A detection "found again": same class and IoU >= 0.5 (the PASCAL VOC / mAP@0.5 rule).
MATCH_IOU = 0.5
# silero_vad/utils_vad.py `get_speech_timestamps(threshold=0.5)`: a chunk is speech when its probability >= 0.5.
VAD_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------- picking outputs
def _pick(outputs: Mapping[str, np.ndarray], what: str, *, ndim: int | None = None,
          name: str | None = None) -> np.ndarray:
    """The one output a metric reads: `name` if present, else the only output (of rank `ndim` if given)."""
    if name is not None and name in outputs:
        return np.asarray(outputs[name])
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if ndim is not None:
        arrays = {k: v for k, v in arrays.items() if v.ndim == ndim}
    if len(arrays) != 1:
        shapes = {k: tuple(np.shape(v)) for k, v in outputs.items()}
        raise ValueError(f"{what}: expected one output{'' if ndim is None else f' of rank {ndim}'}, got {shapes}")
    return next(iter(arrays.values()))


def _pair(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray], what: str, **how: object
          ) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pick(fp32, what, **how), _pick(int8, what, **how)  # type: ignore[arg-type]
    if a.shape != b.shape:
        raise ValueError(f"{what}: FP32 output is {a.shape} but INT8 output is {b.shape}")
    return a, b


# ---------------------------------------------------------------------------------------------- OCR recognition
def ctc_decode(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decode as rapidocr's `CTCLabelDecode` does it: argmax per position, repeats collapsed, blank (0)
    dropped. Returns the character indices of each row of a (N, T, C) array."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"CTC output must be (N, T, C), got {probs.shape}")
    index = probs.argmax(axis=2)
    keep = np.ones(index.shape, dtype=bool)
    keep[:, 1:] = index[:, 1:] != index[:, :-1]
    keep &= index != 0
    return [tuple(int(i) for i in row[k]) for row, k in zip(index, keep)]


def ctc_text(probs: np.ndarray, characters: Sequence[str]) -> list[str]:
    """Decoded text per row. `characters`: the model's dictionary (PP-OCR keeps it in the ONNX metadata key
    `character`, one per line); as rapidocr does, index 0 is the CTC blank and a space is appended at the end."""
    table = ["", *characters, " "]
    if np.shape(probs)[-1] != len(table):
        raise ValueError(f"dictionary of {len(characters)} characters (+ blank + space) does not match "
                         f"{np.shape(probs)[-1]} classes")
    return ["".join(table[i] for i in row) for row in ctc_decode(probs)]


def ocr_rec(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray]) -> tuple[float, bool]:
    """Share of text lines INT8 reads exactly as FP32 does.

    The decoded character indices are compared: PP-OCRv4's dictionary has no duplicate entry (samples/zoo/build.py
    checks it), so equal indices are equal text and the dictionary is not needed here.
    """
    a, b = _pair(fp32, int8, "ocr_rec", ndim=3)
    same = [x == y for x, y in zip(ctc_decode(a), ctc_decode(b))]
    return float(np.mean(same)), True


# ---------------------------------------------------------------------------------------------- OCR detection
def text_mask(prob: np.ndarray, threshold: float = DET_THRESHOLD, dilate: bool = True) -> np.ndarray:
    """DBPostProcess's bitmap: `prob > threshold`, then (use_dilation: true) cv2.dilate with a 2x2 kernel of ones,
    whose anchor (1, 1) makes each pixel the max of itself, its left, upper and upper-left neighbours.
    `prob`: (N, 1, H, W) or (N, H, W); returns a bool (N, H, W)."""
    prob = np.asarray(prob)
    if prob.ndim == 4:
        if prob.shape[1] != 1:
            raise ValueError(f"text probability map must have one channel, got {prob.shape}")
        prob = prob[:, 0]
    if prob.ndim != 3:
        raise ValueError(f"text probability map must be (N, 1, H, W) or (N, H, W), got {prob.shape}")
    mask = prob > threshold
    if dilate:
        out = mask.copy()
        out[:, 1:, :] |= mask[:, :-1, :]
        out[:, :, 1:] |= mask[:, :, :-1]
        out[:, 1:, 1:] |= mask[:, :-1, :-1]
        mask = out
    return mask


def ocr_det(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray]) -> tuple[float, bool, float]:
    """IoU of FP32's and INT8's text masks, pooled: intersection and union pixels summed over the batch, the union
    returned as the weight, so the average over batches is total intersection / total union. A batch where neither
    model sees any text has weight 0 (it says nothing about the masks)."""
    a, b = _pair(fp32, int8, "ocr_det")
    ma, mb = text_mask(a), text_mask(b)
    union = float(np.count_nonzero(ma | mb))
    inter = float(np.count_nonzero(ma & mb))
    return (inter / union if union else 1.0), True, union


# ---------------------------------------------------------------------------------------------- OCR angle classifier
def ocr_cls(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray]) -> tuple[float, bool]:
    """Share of lines whose 0/180 degree decision (rapidocr's `ClsPostProcess`: argmax) is FP32's."""
    a, b = _pair(fp32, int8, "ocr_cls", ndim=2)
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))), True


# ---------------------------------------------------------------------------------------------- YOLO
def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x, y, w, h) box with each row of `boxes` (areas w*h, as OpenCV's Rect2d)."""
    box, boxes = np.asarray(box, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float = YOLO_SCORE,
        iou_threshold: float = YOLO_NMS_IOU) -> list[int]:
    """cv2.dnn.NMSBoxes: candidates with score > score_threshold in descending score order (stable on ties), each
    kept unless it overlaps an already kept box by IoU > iou_threshold. Class-agnostic, as nudenet calls it. As in
    OpenCV's `rectOverlap` (1 - jaccardDistance), two boxes of zero area together overlap fully."""
    scores = np.asarray(scores, dtype=np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    kept: list[int] = []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = boxes[:, 2] * boxes[:, 3]
    for i in order:
        if kept:
            overlap = box_iou(boxes[i], boxes[kept])
            overlap[areas[i] + areas[kept] <= np.finfo(np.float64).eps] = 1.0
            if np.any(overlap > iou_threshold):
                continue
        kept.append(i)
    return kept


def yolo_detections(output: np.ndarray, size: tuple[float, float] = (320.0, 320.0)
                    ) -> list[tuple[int, float, np.ndarray]]:
    """nudenet's `_postprocess` for one image: `output` is (4 + C, anchors) with (cx, cy, w, h) in input pixels.
    Rows whose best class score is >= 0.2 become (top-left x, y, w, h) boxes clipped to the image (`size` = width,
    height of the model input: the zoo's crops are square, so nudenet's padding is zero and its rescaling to the
    original image is a common factor that changes no IoU), then NMS. Returns (class, score, box) per detection."""
    out = np.asarray(output, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] < 5:
        raise ValueError(f"YOLOv8 output for one image must be (4 + classes, anchors), got {out.shape}")
    rows = out.T
    scores_all = rows[:, 4:]
    best = scores_all.max(axis=1)
    cand = np.flatnonzero(best >= YOLO_CANDIDATE_SCORE)
    if not cand.size:
        return []
    width, height = size
    cx, cy, w, h = (rows[cand, k] for k in range(4))
    x = np.clip(cx - w / 2, 0, width)
    y = np.clip(cy - h / 2, 0, height)
    w = np.minimum(w, width - x)
    h = np.minimum(h, height - y)
    boxes = np.stack([x, y, w, h], axis=1)
    classes = scores_all[cand].argmax(axis=1)
    scores = best[cand]
    return [(int(classes[i]), float(scores[i]), boxes[i]) for i in nms(boxes, scores)]


def match_detections(reference: list[tuple[int, float, np.ndarray]], other: list[tuple[int, float, np.ndarray]],
                     iou: float = MATCH_IOU) -> int:
    """How many `reference` detections have a partner in `other`: greedy, highest reference score first, each
    taking the unused `other` detection of the same class with the highest IoU, if that IoU is >= `iou`."""
    used = [False] * len(other)
    matched = 0
    for cls, _, box in sorted(reference, key=lambda d: -d[1]):
        best, best_iou = -1, iou
        for j, (cls_j, _, box_j) in enumerate(other):
            if used[j] or cls_j != cls:
                continue
            value = float(box_iou(box, box_j)[0])
            if value >= best_iou:
                best, best_iou = j, value
        if best >= 0:
            used[best] = True
            matched += 1
    return matched


def yolo(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray],
         batch: Mapping[str, np.ndarray] | None = None) -> tuple[float, bool, float]:
    """Share of FP32's detections that INT8 also makes (same class, IoU >= 0.5), after nudenet's filtering and NMS
    on each model's own output. The weight is the number of FP32 detections, so the average over batches is
    matched / total detections; a batch with none has weight 0. The input size is read from `batch` when given."""
    a, b = _pair(fp32, int8, "yolo", ndim=3)
    size = (320.0, 320.0)
    if batch:
        image = next((np.asarray(v) for v in batch.values() if np.ndim(v) == 4), None)
        if image is not None:
            size = (float(image.shape[3]), float(image.shape[2]))
    total = matched = 0
    for x, y in zip(a, b):
        ref = yolo_detections(x, size)
        total += len(ref)
        matched += match_detections(ref, yolo_detections(y, size))
    return (matched / total if total else 1.0), True, float(total)


# ---------------------------------------------------------------------------------------------- VAD
def vad(fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray]) -> tuple[float, bool]:
    """Share of audio chunks where INT8 takes FP32's speech / no-speech decision (probability >= 0.5).
    Reads the output `output` (N, 1); silero's other output, the next recurrent state, is not a decision."""
    a, b = _pair(fp32, int8, "vad", name="output")
    return float(np.mean((a >= VAD_THRESHOLD) == (b >= VAD_THRESHOLD))), True
