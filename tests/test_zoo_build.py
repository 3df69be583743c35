"""Pieces of samples/zoo/build.py that shape the zoo's data: OpenCV's resize re-written, the OCR packages'
preprocessing, the deterministic npz writer and the VAD data script. The build itself (wheels, photos) is not run."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ZOO = Path(__file__).resolve().parents[1] / "samples" / "zoo"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _load(ZOO / "build.py", "zoo_build_under_test")

# cv2.resize(SRC, (w, h)) (INTER_LINEAR) from opencv-python-headless 5.1.0 on x86-64
SRC = [[139, 74, 229, 241, 169, 65], [6, 160, 149, 106, 38, 175], [188, 205, 175, 229, 98, 249],
       [10, 148, 95, 86, 147, 198], [66, 39, 106, 213, 171, 45]]
OPENCV = {
    (9, 7): [[139, 106, 100, 203, 235, 229, 181, 117, 65], [63, 93, 133, 173, 173, 152, 106, 111, 128],
             [58, 115, 170, 159, 149, 127, 69, 126, 196], [188, 197, 200, 180, 202, 207, 120, 174, 249],
             [61, 112, 156, 125, 122, 128, 132, 173, 212], [34, 68, 101, 100, 120, 143, 154, 145, 132],
             [66, 52, 50, 95, 159, 206, 178, 108, 45]],
    (4, 3): [[97, 177, 178, 107], [192, 183, 196, 211], [54, 95, 169, 113]],
    (3, 5): [[107, 235, 117], [83, 128, 107], [197, 202, 174], [79, 91, 173], [53, 160, 108]],
    (2, 2): [[139, 71], [121, 153]],
}
HALF_SRC = [[69, 81, 55, 14, 153, 178], [215, 76, 52, 39, 250, 72], [215, 50, 161, 223, 112, 172],
            [161, 233, 38, 17, 89, 1]]
HALF = [[110, 40, 163], [165, 110, 94]]  # an exact halving is INTER_AREA inside OpenCV


@pytest.mark.parametrize("size", sorted(OPENCV))
def test_resize_linear_is_opencv_bit_for_bit(size):
    src = np.array(SRC, dtype=np.uint8)
    got = build.resize_linear(src, *size)
    assert got.tolist() == OPENCV[size]
    colour = build.resize_linear(np.stack([src, src[::-1], 255 - src], axis=2), *size)
    assert colour[:, :, 0].tolist() == OPENCV[size]  # channels are independent


def test_resize_linear_halving_is_area_mean():
    assert build.resize_linear(np.array(HALF_SRC, dtype=np.uint8), 3, 2).tolist() == HALF
    with pytest.raises(ValueError, match="uint8"):
        build.resize_linear(np.zeros((4, 4), np.float32), 2, 2)


def test_rec_preprocessing_pads_and_normalises_bgr():
    red = np.zeros((10, 40, 3), dtype=np.uint8)
    red[..., 0] = 255  # RGB red
    out = build.resize_norm_img(red, build.REC_SHAPE, build.REC_SHAPE[2] / build.REC_SHAPE[1])
    assert out.shape == (3, 48, 320) and out.dtype == np.float32
    width = 192  # ceil(48 * 40 / 10)
    assert np.all(out[0, :, :width] == -1) and np.all(out[2, :, :width] == 1)  # B = 0, R = 255 after RGB -> BGR
    assert np.all(out[:, :, width:] == 0)  # zero padding on the right
    wide = build.resize_norm_img(np.zeros((10, 100, 3), np.uint8), build.CLS_SHAPE)
    assert wide.shape == (3, 48, 192) and np.all(wide == -1)  # squeezed to 192, no padding left


def test_det_preprocessing_scales_the_short_side_to_736_in_steps_of_32():
    out = build.det_preprocess(np.full((100, 200, 3), 255, dtype=np.uint8))
    assert out.shape == (3, 736, 1472)
    assert np.all(out == 1.0)
    assert build.det_preprocess(np.zeros((800, 1000, 3), np.uint8)).shape == (3, 800, 992)  # 1000 -> 992


def test_save_npz_is_deterministic_and_keeps_scalars(tmp_path):
    arrays = {"input": np.arange(6, dtype=np.float32).reshape(3, 2), "sr": np.array(16000, dtype=np.int64)}
    build.save_npz(tmp_path / "a.npz", arrays)
    build.save_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as z:
        assert z["sr"].shape == () and int(z["sr"]) == 16000
        assert z["input"].tolist() == arrays["input"].tolist()


def test_vad_data_script_cuts_time_major_batches(tmp_path):
    n = 24
    build.save_npz(tmp_path / "calib.npz", {
        "input": np.arange(n * 576, dtype=np.float32).reshape(n, 576),
        "state": np.arange(2 * n * 128, dtype=np.float32).reshape(2, n, 128),
        "sr": np.array(16000, dtype=np.int64),
    })
    shutil.copy(ZOO / "vad_data.py", tmp_path / "data.py")
    data = _load(tmp_path / "data.py", "zoo_vad_data_under_test")
    batches = list(data.load_data())
    assert len(batches) == 3  # 24 chunks, 8 streams per step
    second = batches[1]
    assert second["input"].shape == (8, 576) and second["input"][0, 0] == 8 * 576
    assert second["state"].shape == (2, 8, 128) and second["state"].flags.c_contiguous
    assert second["state"][1, 0, 0] == (n + 8) * 128  # state row 8 of the second half
    assert second["sr"].shape == () and second["sr"].dtype == np.int64
