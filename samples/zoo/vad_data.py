"""Data script for the zoo's silero VAD models (copied beside their calib.npz and heldout.npz by build.py).

    trt-calib calibrate model.onnx --data data.py            # load_data: the calibration chunks
    trt-calib evaluate  model.onnx INT8.onnx --data data.py:heldout

silero takes `input` (batch, 576): 64 samples of context and 512 new ones at 16 kHz, `state` (2, batch, 128): the
recurrent state, batch on axis 1, and `sr`: the sample rate as an int64 scalar. An .npz of samples stacked along
axis 0 cannot say that, so this script cuts the arrays into batches itself: each batch is one 32 ms step of every
audio stream (the files are time-major), with the state FP32 reached streaming that audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
STREAMS = 8  # build.py --vad-streams (build.py writes the number it used here)


def batches(split: str, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """{input, state, sr} batches of `batch_size` chunks (default: the number of streams, one step of each)."""
    with np.load(HERE / f"{split}.npz", allow_pickle=False) as z:
        x, state, sr = z["input"], z["state"], z["sr"]
    if x.ndim != 2 or state.shape != (2, len(x), 128) or sr.shape != ():
        raise ValueError(f"{split}.npz: unexpected shapes input {x.shape}, state {state.shape}, sr {sr.shape}")
    size = batch_size or STREAMS
    for start in range(0, len(x) - size + 1, size):
        yield {"input": x[start:start + size], "state": np.ascontiguousarray(state[:, start:start + size]),
               "sr": sr}


def load_data() -> Iterator[dict[str, np.ndarray]]:
    """The calibration set."""
    return batches("calib")


def heldout() -> Iterator[dict[str, np.ndarray]]:
    """The held-out set (other audio, never calibrated on)."""
    return batches("heldout")
