"""`--metric FILE.py[:FUNCTION]`: a user's task metric, loaded like a data script, averaged over batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trt_calib.errors import DataError
from trt_calib.ort.user_metric import MetricAccumulator, load_metric

AGREE = """
import numpy as np

def metric(fp32, int8):
    a, b = fp32["y"].argmax(1), int8["y"].argmax(1)
    return float((a == b).mean()), True

def pooled(fp32, int8, batch):
    hits = int((fp32["y"].argmax(1) == int8["y"].argmax(1)).sum())
    return hits / max(1, len(batch["x"])), True, len(batch["x"])

def declared(fp32, int8):
    return float(np.abs(fp32["y"] - int8["y"]).max())
declared.higher_is_better = False

def undecided(fp32, int8):
    return 1.0

def broken(fp32, int8):
    return "high"

def one_arg(fp32):
    return 1.0
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(AGREE)
    return path


def _outputs(rows):
    return {"y": np.asarray(rows, dtype=np.float32)}


def test_the_default_function_is_metric_and_batches_average_by_samples(script):
    acc = MetricAccumulator(load_metric(script))
    acc.add(_outputs([[1, 0], [0, 1]]), _outputs([[1, 0], [1, 0]]), samples=2)  # 1 of 2 agree
    acc.add(_outputs([[1, 0]] * 6), _outputs([[1, 0]] * 6), samples=6)  # 6 of 6
    assert acc.higher_is_better is True
    assert acc.result() == pytest.approx((0.5 * 2 + 1.0 * 6) / 8)


def test_a_returned_weight_pools_the_ratio_over_all_batches(script):
    acc = MetricAccumulator(load_metric(f"{script}:pooled"))
    assert acc.metric.takes_batch
    acc.add(_outputs([[1, 0], [0, 1]]), _outputs([[1, 0], [1, 0]]), {"x": np.zeros(2)}, samples=2)
    acc.add(_outputs([[1, 0]]), _outputs([[0, 1]]), {"x": np.zeros(1)}, samples=1)
    assert acc.result() == pytest.approx(1 / 3)


def test_a_function_attribute_can_say_which_way_is_better(script):
    acc = MetricAccumulator(load_metric(f"{script}:declared"))
    acc.add(_outputs([[1.0, 0.0]]), _outputs([[0.5, 0.0]]), samples=1)
    assert acc.higher_is_better is False and acc.result() == 0.5


@pytest.mark.parametrize("function, message", [
    ("undecided", "never said whether higher is better"),
    ("broken", "must be one number"),
])
def test_an_answer_that_cannot_be_used_is_a_data_error_naming_the_script(script, function, message):
    acc = MetricAccumulator(load_metric(f"{script}:{function}"))
    with pytest.raises(DataError, match=message) as info:
        acc.add(_outputs([[1.0]]), _outputs([[1.0]]), samples=1)
        acc.result()
    assert f"task.py:{function}" in str(info.value)


def test_bad_scripts_are_refused_before_any_model_runs(script, tmp_path):
    with pytest.raises(DataError, match=r"must take \(fp32_outputs, int8_outputs\[, batch\]\)"):
        load_metric(f"{script}:one_arg")
    with pytest.raises(DataError, match="has no function 'nope'"):
        load_metric(f"{script}:nope")
    with pytest.raises(DataError, match="no such metric script"):
        load_metric(tmp_path / "missing.py")
    with pytest.raises(DataError, match="a metric is a Python file"):
        load_metric(tmp_path / "metric.txt")


def test_every_weight_zero_gives_nan_not_a_division_error(script):
    acc = MetricAccumulator(load_metric(f"{script}:pooled"))
    acc.add(_outputs([[1, 0]]), _outputs([[1, 0]]), {"x": np.zeros(0)}, samples=0)
    assert math.isnan(acc.result())
