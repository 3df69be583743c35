"""The zoo's task metrics (samples/zoo/metrics.py) on small hand-made outputs whose answers are worked out by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_calib.ort.user_metric import MetricAccumulator, load_metric

METRICS_FILE = Path(__file__).resolve().parents[1] / "samples" / "zoo" / "metrics.py"


def _load():
    spec = importlib.util.spec_from_file_location("zoo_metrics_under_test", METRICS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


zm = _load()


def one_hot_sequence(indices: list[int], classes: int, peak: float = 0.9) -> np.ndarray:
    """(T, C) probabilities whose argmax per position is `indices`."""
    out = np.full((len(indices), classes), (1 - peak) / (classes - 1), dtype=np.float32)
    out[np.arange(len(indices)), indices] = peak
    return out


# ---------------------------------------------------------------------------------------------- OCR rec
def test_ctc_decode_collapses_repeats_and_drops_blanks():
    probs = one_hot_sequence([0, 5, 5, 0, 5, 3, 3, 0], 8)[None]
    assert zm.ctc_decode(probs) == [(5, 5, 3)]  # the blank between the two 5s keeps both


def test_ctc_text_uses_blank_first_and_space_last():
    characters = ["a", "b", "c"]  # classes: blank, a, b, c, space
    probs = np.stack([one_hot_sequence([1, 1, 4, 0, 2, 3], 5), one_hot_sequence([0, 0, 0, 0, 0, 0], 5)])
    assert zm.ctc_text(probs, characters) == ["a bc", ""]
    with pytest.raises(ValueError, match="does not match"):
        zm.ctc_text(probs, ["a", "b"])


def test_ocr_rec_compares_decoded_text_not_positions():
    fp32 = np.stack([one_hot_sequence([5, 5, 0, 3], 8), one_hot_sequence([2, 0, 2, 0], 8),
                     one_hot_sequence([1, 0, 0, 0], 8), one_hot_sequence([4, 4, 4, 4], 8)])
    int8 = np.stack([one_hot_sequence([5, 0, 3, 3], 8),  # same text "5 3", other positions
                     one_hot_sequence([2, 2, 2, 0], 8),  # "2" instead of "2 2": different text
                     one_hot_sequence([0, 0, 0, 0], 8),  # blank output: different
                     one_hot_sequence([4, 0, 0, 4], 8)])  # "4 4" instead of "4": different
    value, higher = zm.ocr_rec({"out": fp32}, {"out": int8})
    assert (value, higher) == (0.25, True)


# ---------------------------------------------------------------------------------------------- OCR det
def test_text_mask_thresholds_and_dilates_like_the_package():
    prob = np.zeros((1, 1, 5, 5), dtype=np.float32)
    prob[0, 0, 1, 1] = 0.31
    prob[0, 0, 3, 3] = 0.3  # not above the 0.3 threshold
    mask = zm.text_mask(prob)
    assert mask.shape == (1, 5, 5)
    assert sorted(zip(*np.nonzero(mask[0]))) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert zm.text_mask(prob, dilate=False)[0].sum() == 1


def test_ocr_det_pools_intersection_over_union():
    a = np.zeros((1, 1, 10, 10), dtype=np.float32)
    b = np.zeros_like(a)
    a[0, 0, 2:5, 2:6] = 0.9  # 3x4, dilated to rows 2..5, cols 2..6: 4x5
    b[0, 0, 2:5, 3:7] = 0.9  # shifted right by one: rows 2..5, cols 3..7
    value, higher, weight = zm.ocr_det({"map": a}, {"map": b})
    assert higher is True
    assert weight == 24.0  # union 4 x 6
    assert value == pytest.approx(16 / 24)  # intersection 4 x 4
    assert zm.ocr_det({"map": np.zeros_like(a)}, {"map": np.zeros_like(a)}) == (1.0, True, 0.0)


# ---------------------------------------------------------------------------------------------- OCR cls
def test_ocr_cls_top1_agreement():
    fp32 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    int8 = np.array([[0.8, 0.2], [0.7, 0.3], [0.4, 0.6]], dtype=np.float32)
    assert zm.ocr_cls({"p": fp32}, {"p": int8}) == (pytest.approx(1 / 3), True)


# ---------------------------------------------------------------------------------------------- YOLO
def test_nms_is_class_agnostic_with_strict_score_threshold():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 5, 5], [40, 40, 5, 5], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.3, 0.25, 0.9])
    # box 1 overlaps box 0 by 81/119 > 0.45; box 3 is not > 0.25; box 4 ties box 0 and comes later, IoU 1
    assert zm.nms(boxes, scores) == [0, 2]
    assert zm.box_iou(boxes[0], boxes[1:2])[0] == pytest.approx(81 / 119)
    flat = np.array([[320, 10, 0, 5], [320, 50, 0, 9], [5, 5, 4, 4]], float)  # clipped away at the image's edge
    assert zm.nms(flat, np.array([0.9, 0.8, 0.7])) == [0, 2]  # OpenCV: two empty boxes overlap fully


def yolo_output(rows: list[tuple[float, float, float, float, int, float]], classes: int = 3,
                anchors: int = 8) -> np.ndarray:
    """(4 + classes, anchors) with one anchor per row (cx, cy, w, h, class, score); other anchors score 0.01."""
    out = np.full((4 + classes, anchors), 0.01, dtype=np.float32)
    out[:4] = 1.0
    for k, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[:4, k] = (cx, cy, w, h)
        out[4 + cls, k] = score
    return out


def test_yolo_detections_follow_nudenet_postprocess():
    out = yolo_output([
        (50, 50, 20, 20, 0, 0.9),
        (200, 200, 20, 20, 2, 0.21),  # a candidate (>= 0.2) that NMS's score threshold (> 0.25) drops
        (51, 51, 20, 20, 1, 0.5),  # another class on the same spot: class-agnostic NMS removes it
        (310, 150, 40, 10, 1, 0.6),  # sticks out on the right: clipped to the 320-pixel image
    ])
    found = zm.yolo_detections(out)
    assert [(c, round(s, 2)) for c, s, _ in found] == [(0, 0.9), (1, 0.6)]
    np.testing.assert_allclose(found[0][2], [40, 40, 20, 20])
    np.testing.assert_allclose(found[1][2], [290, 145, 30, 10])


def test_match_detections_needs_same_class_and_iou():
    ref = [(0, 0.9, np.array([0, 0, 10, 10.0])), (1, 0.8, np.array([50, 50, 10, 10.0]))]
    assert zm.match_detections(ref, ref) == 2
    shifted = [(0, 0.9, np.array([4, 0, 10, 10.0]))]  # IoU 60/140 < 0.5
    assert zm.match_detections(ref, shifted) == 0
    other_class = [(1, 0.9, np.array([0, 0, 10, 10.0]))]
    assert zm.match_detections(ref, other_class) == 0
    one = [(0, 0.5, np.array([1, 0, 10, 10.0]))]  # IoU 90/110
    assert zm.match_detections(ref, one) == 1
    assert zm.match_detections(ref + ref, one) == 1  # a partner is used once


def test_yolo_metric_pools_over_fp32_detections():
    a = np.stack([yolo_output([(50, 50, 20, 20, 0, 0.9), (200, 200, 30, 30, 1, 0.7)]),
                  yolo_output([])])
    b = np.stack([yolo_output([(50, 50, 20, 20, 0, 0.6), (200, 200, 30, 30, 2, 0.7)]),  # 2nd: wrong class
                  yolo_output([(100, 100, 20, 20, 0, 0.9)])])  # INT8 invents one: not counted (recall)
    assert zm.yolo({"output0": a}, {"output0": b}) == (0.5, True, 2.0)
    nothing = np.stack([yolo_output([])])
    assert zm.yolo({"o": nothing}, {"o": nothing}) == (1.0, True, 0.0)

    metric = load_metric(f"{METRICS_FILE}:yolo")
    assert metric.takes_batch
    acc = MetricAccumulator(metric)
    acc.add({"output0": a}, {"output0": b}, {"images": np.zeros((2, 3, 320, 320), np.float32)}, samples=2)
    c = np.stack([yolo_output([(50, 50, 20, 20, 0, 0.9), (150, 150, 20, 20, 1, 0.8), (250, 60, 20, 20, 2, 0.8)])])
    acc.add({"output0": c}, {"output0": c}, None, samples=1)
    acc.add({"output0": nothing}, {"output0": nothing}, None, samples=1)  # weight 0: no say
    assert acc.result() == pytest.approx((1 + 3) / (2 + 3))
    assert acc.higher_is_better is True


def test_yolo_reads_the_input_size_from_the_batch():
    big = {"images": np.zeros((1, 3, 640, 640), np.float32)}
    a = yolo_output([(630, 50, 40, 20, 0, 0.9)])[None]  # x 610..650: clipped to 610..640 at 640 wide
    same = yolo_output([(630, 50, 40, 20, 0, 0.5)])[None]
    shifted = yolo_output([(640, 50, 20, 20, 0, 0.9)])[None]  # clipped to 630..640: IoU 10/30 with a's box
    assert zm.yolo({"o": a}, {"o": same}, big) == (1.0, True, 1.0)
    assert zm.yolo({"o": a}, {"o": shifted}, big) == (0.0, True, 1.0)
    # at the default 320 both boxes are clipped to nothing, and empty boxes never match
    assert zm.yolo({"o": a}, {"o": same}) == (0.0, True, 1.0)


# ---------------------------------------------------------------------------------------------- VAD
def test_vad_decision_agreement_reads_output_not_state():
    fp32 = {"output": np.array([[0.6], [0.4], [0.5], [0.49]], np.float32), "stateN": np.zeros((2, 4, 128))}
    int8 = {"output": np.array([[0.7], [0.6], [0.49], [0.2]], np.float32), "stateN": np.ones((2, 4, 128))}
    assert zm.vad(fp32, int8) == (0.5, True)  # agree, disagree, disagree (0.5 is speech), agree


# ---------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", ["ocr_rec", "ocr_det", "ocr_cls", "yolo", "vad"])
def test_every_metric_loads_through_the_metric_option(name):
    metric = load_metric(f"{METRICS_FILE}:{name}")
    assert metric.name == f"metrics.py:{name}"


def test_mismatched_outputs_are_refused():
    with pytest.raises(ValueError, match="FP32 output is"):
        zm.ocr_cls({"p": np.zeros((2, 2))}, {"p": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="expected one output of rank 3"):
        zm.ocr_rec({"a": np.zeros((1, 2, 3)), "b": np.zeros((1, 2, 3))}, {"a": np.zeros((1, 2, 3))})
