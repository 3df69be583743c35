"""The calibration batches of NVIDIA's sampleINT8, as a trt-calib data script (`--data THIS_FILE`).

sampleINT8 (TensorRT 7.x) calibrates with 10 batches of 50 MNIST training images scaled by 1/255 (BatchStream.h,
`float(u8) / 255.f`, no mean subtraction). Its getBatch() advances the stream before reading, so the batches are
images 50..549, not 0..499.
"""

from pathlib import Path

import numpy as np

IMAGES = Path(__file__).with_name("mnist_train_images_0_599.npy")
BATCH_SIZE = 50
FIRST, COUNT = 50, 500


def load_data():
    """Yield {'data': float32 (50, 1, 28, 28)} for images 50..549, in sampleINT8's order."""
    images = np.load(IMAGES)
    for start in range(FIRST, FIRST + COUNT, BATCH_SIZE):
        batch = images[start : start + BATCH_SIZE].astype(np.float32) / np.float32(255.0)
        yield {"data": batch.reshape(BATCH_SIZE, 1, 28, 28)}
