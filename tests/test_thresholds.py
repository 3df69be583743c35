"""Thresholds against real TensorRT values (golden), against a slow reference (property), and peer expectations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from golden import MNIST_PIXEL_COUNTS
from trt_calib.core.cache import scale_to_hex, amax_to_scale
from trt_calib.core.histogram import AbsHistogram
from trt_calib.core.thresholds import (
    compute_amax,
    entropy_amax,
    entropy_search,
    kl_divergence_curve,
    minmax_amax,
    mse_amax,
    percentile_amax,
)

F32_MAX = np.finfo(np.float32).max
REPO = Path(__file__).resolve().parents[1]


def cache_hex(amax: float) -> str:
    return scale_to_hex(amax_to_scale(amax))


def hist_of(*batches) -> AbsHistogram:
    h = AbsHistogram()
    for b in batches:
        h.update(np.asarray(b, dtype=np.float32))
    return h


def slow_kl(counts: np.ndarray, i: int, levels: int = 128) -> float:
    """KL(P||Q) for one candidate, written out plainly as in the GTC 2017 pseudocode (+ TensorRT's details)."""
    h = np.asarray(counts, dtype=np.float64)
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    mass = [0.0] * levels
    nonzero = [0] * levels
    for j in range(i):
        if h[j] != 0:
            mass[j * levels // i] += h[j]
            nonzero[j * levels // i] += 1
    q = np.zeros(i)
    for j in range(i):
        if h[j] != 0:
            q[j] = mass[j * levels // i] / nonzero[j * levels // i]
    if q.sum() == 0 or np.any((p > 0) & (q == 0)):
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def first_argmin(kls: np.ndarray) -> int:
    """First index within 1e-9 relative + 1e-12 absolute of the minimum (ties as in exact arithmetic)."""
    best = kls.min()
    if not np.isfinite(best):
        return kls.size - 1
    return int(np.flatnonzero(kls <= best + 1e-9 * abs(best) + 1e-12)[0])


def slow_index(counts: np.ndarray, *, levels: int = 128, first: int = 128) -> int:
    """The chosen i by the plain loop: bin 0 suppressed, KL for each candidate, first argmin."""
    h = np.asarray(counts, dtype=np.float64).copy()
    h[0] = h[1]
    kls = np.array([slow_kl(h, i, levels) for i in range(first, h.size + 1)])
    return first + first_argmin(kls)


# ------------------------------------------------------------------------------------------------ golden values
def test_mnist_pixels_give_tensorrt_sampleint8_data_entry():
    pixels = np.repeat(np.arange(256, dtype=np.float32) / np.float32(255), MNIST_PIXEL_COUNTS)
    rng = np.random.default_rng(0)
    rng.shuffle(pixels)  # every batch of 50 images holds a 255 pixel, so the range is 1.0 from the first batch
    h = hist_of(*np.array_split(pixels, 10))
    result = entropy_search(h)
    assert result.index == 2040
    assert result.amax == 0.996337890625
    assert cache_hex(result.amax) == "3c008912"
    assert result.divergence[2040 - 128] == pytest.approx(0.0327993, rel=1e-5)


def test_bundled_mnist_images_50_to_549_give_the_data_entry():
    images = np.load(REPO / "data" / "lenet" / "mnist_train_images_0_599.npy")[50:550]
    h = hist_of(*(images[k : k + 50].astype(np.float32) / np.float32(255) for k in range(0, 500, 50)))
    assert cache_hex(entropy_amax(h)) == "3c008912"


@pytest.mark.parametrize(
    "c, expected",
    [
        (1.0, "3c010a14"),
        (2.0, "3c810a14"),
        (8.0, "3d810a14"),
        (32.0, "3e810a14"),
        (64.0, "3f010a14"),
        (0.125, "3a810a14"),
        (0.25, "3b010a14"),
        (16.0, "3e010a14"),
        (159.5, "3fa0cb8f"),
        (1 / np.sqrt(8), "3b367d3d"),
        (np.sqrt(8), "3cb67d3d"),
        (1 / np.sqrt(32), "3ab67d3d"),
        (2.64, "3caa54fc"),
    ],
)
def test_constant_tensors_match_real_caches(c, expected):
    h = hist_of(np.full((4, 8), np.float32(c)), -np.full(5, np.float32(c)))
    result = entropy_search(h)
    assert result.index == 2048
    assert cache_hex(result.amax) == expected


def test_all_zero_tensor_gives_scale_zero():
    h = hist_of(np.zeros(100))
    assert entropy_amax(h) == 0.0 and minmax_amax(h) == 0.0
    assert cache_hex(entropy_amax(h)) == "0"


def test_flt_max_gives_infinite_scale():
    h = hist_of([0.5, -F32_MAX, 1.0])
    assert cache_hex(entropy_amax(h)) == "7f800000"


def test_infinity_gives_infinite_scale():
    h = hist_of([0.5, np.inf, 1.0])
    assert cache_hex(entropy_amax(h)) == "7f800000"
    assert cache_hex(minmax_amax(h)) == "7f800000"


def test_minmax_golden_values():
    assert cache_hex(minmax_amax(hist_of(np.ones(10)))) == "3c010204"
    assert cache_hex(minmax_amax(hist_of([-F32_MAX, 0.0]))) == "7c010204"
    cifar_max = np.float32((1 - 0.4465) / 0.2010)
    assert cache_hex(minmax_amax(hist_of([0.1, cifar_max], [-1.2]))) == "3cb1a063"


def test_minmax_is_the_exact_max_over_all_batches_not_the_grown_range():
    h = hist_of([1.0], [2.5])
    assert h.range == 4.0
    assert minmax_amax(h) == 2.5


# ------------------------------------------------------------------------------------------------ spec predictions
def test_synthetic_predictions_from_the_spec():
    rng = np.random.default_rng(0)
    x = rng.random(693, dtype=np.float32)
    x[100] = 10
    r = entropy_search(hist_of(x))
    assert (r.index, r.amax) == (205, pytest.approx(1.003418, abs=1e-6))
    normal = np.random.default_rng(1).standard_normal(100000).astype(np.float32)
    r = entropy_search(hist_of(normal))
    assert (r.index, r.amax) == (2048, pytest.approx(4.407429, abs=1e-6))
    r = entropy_search(hist_of(np.maximum(normal, 0)))
    assert (r.index, r.amax) == (1853, pytest.approx(3.987879, abs=1e-6))


def test_entropy_suppresses_outliers_like_pytorch_quantization_expects():
    x = np.random.default_rng(5).random((11, 7, 3, 3)).astype(np.float32)
    x[1, 1, 1, 1] = 10.0
    assert entropy_amax(hist_of(x)) < 1.1
    assert entropy_amax(hist_of(x, np.random.default_rng(6).random((11, 7, 3, 3)))) < 1.1


def test_search_does_not_modify_the_histogram():
    h = hist_of(np.maximum(np.random.default_rng(2).standard_normal(5000), 0))
    before = h.counts.copy()
    entropy_search(h)
    np.testing.assert_array_equal(h.counts, before)


# ------------------------------------------------------------------------------------------------ vectorised == slow
@settings(max_examples=40, deadline=None)
@given(
    arrays(np.int64, 256, elements=st.integers(0, 60)),
    st.floats(0.0, 0.97),
    st.integers(0, 2**32 - 1),
)
@example(np.r_[np.zeros(15, np.int64), 7, 2, np.zeros(239, np.int64)], 0.0, 0)  # all candidates tie at KL = 0
def test_vectorised_search_picks_the_same_index_as_the_slow_loop(counts, sparsity, seed):
    """256-bin histograms with 16 levels keep the loop affordable; the code paths are the same as 2048/128."""
    rng = np.random.default_rng(seed)
    counts = counts.copy()
    counts[rng.random(counts.size) < sparsity] = 0
    if counts[1:].sum() == 0:
        counts[-1] = 1
    h = counts.astype(np.float64)
    h[0] = h[1]
    fast = kl_divergence_curve(h, num_levels=16, first=16)
    assert 16 + first_argmin(fast) == slow_index(counts, levels=16, first=16)


def test_full_size_curve_equals_slow_kl_at_sampled_candidates():
    rng = np.random.default_rng(11)
    counts = rng.integers(0, 500, 2048)
    counts[rng.random(2048) < 0.4] = 0
    curve = kl_divergence_curve(counts)
    for i in (128, 129, 200, 777, 1023, 1024, 1500, 2047, 2048):
        expected = slow_kl(counts, i)
        if np.isinf(expected):
            assert np.isinf(curve[i - 128])
        else:
            assert curve[i - 128] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_full_size_search_matches_slow_index_on_a_relu_like_histogram():
    x = np.maximum(np.random.default_rng(4).standard_normal(20000), 0) ** 1.5
    h = hist_of(x)
    assert entropy_search(h).index == slow_index(h.counts)


# ------------------------------------------------------------------------------------------------ other algorithms
def test_percentile_follows_the_cdf():
    h = hist_of(np.arange(100))
    assert abs(percentile_amax(h, 90) - 89) < 100 / 1024
    assert percentile_amax(h, 100) == 99.0
    h2 = hist_of(np.arange(100), np.arange(0, 50, 0.5))
    assert abs(percentile_amax(h2, 99) - 97) < 100 / 1024 * 2
    with pytest.raises(ValueError, match="percentile"):
        percentile_amax(h, 0)


def test_mse_prefers_the_bulk_over_one_outlier():
    x = np.ones((11, 7, 3, 3), np.float32) * 255
    x[1, 1, 1, 1] = 256
    amax = mse_amax(hist_of(x))
    assert abs(amax - 255) < abs(amax - 256)


def test_mse_amax_is_near_the_best_threshold_measured_on_the_raw_values():
    x = np.concatenate([np.random.default_rng(9).standard_normal(100000), [12.0, -15.0]]).astype(np.float32)

    def raw_mse(amax: float) -> float:
        step = amax / 127
        return float(np.mean((x - np.clip(np.rint(x / step), -127, 127) * step) ** 2))

    grid = np.linspace(0.5, 15, 400)
    best = min(raw_mse(a) for a in grid)
    amax = mse_amax(hist_of(x))
    assert raw_mse(amax) <= best * 1.05


def test_compute_amax_dispatches_and_names_choices():
    h = hist_of(np.ones(4))
    assert compute_amax(h, "minmax") == 1.0
    assert compute_amax(h, "percentile", percentile=50) == 1.0
    with pytest.raises(ValueError, match="entropy2, minmax, percentile, mse"):
        compute_amax(h, "kl")
