"""AbsHistogram: TensorRT's first-batch range, power-of-two growth, non-finite values, merging and state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_calib.core.histogram import AbsHistogram, grown_ranges, load_histograms, save_histograms

F32_MAX = np.finfo(np.float32).max


def reference_counts(values: np.ndarray, rng: float, num_bins: int = 2048) -> np.ndarray:
    """bin = min(floor(|x| / w), num_bins - 1) with w = float32(rng / num_bins), one value at a time."""
    w = np.float32(np.float32(rng) / np.float32(num_bins))
    counts = np.zeros(num_bins, dtype=np.int64)
    if w == 0:  # a range below 2048 * the smallest denormal has no width: AbsHistogram counts it all in bin 0
        counts[0] = np.size(values)
        return counts
    for v in np.abs(np.asarray(values, dtype=np.float32)):
        counts[min(int(np.float32(v) / w), num_bins - 1)] += 1
    return counts


def test_first_batch_sets_range_to_its_float32_max_abs():
    h = AbsHistogram()
    x = np.array([0.5, -3.0, 1.25, 2.0], dtype=np.float32)
    h.update(x)
    assert h.range == 3.0
    assert h.bin_width == np.float32(3.0 / 2048)
    assert h.num_values == 4
    np.testing.assert_array_equal(h.counts, reference_counts(x, 3.0))
    assert h.counts[-1] == 1  # |x| == range clamps into the last bin


def test_smaller_later_batch_keeps_range():
    h = AbsHistogram()
    h.update(np.array([4.0, 1.0], np.float32))
    h.update(np.array([3.9, 0.1], np.float32))
    assert h.range == 4.0
    np.testing.assert_array_equal(h.counts, reference_counts([4.0, 1.0, 3.9, 0.1], 4.0))


def test_larger_batch_doubles_range_and_merges_bin_pairs():
    h = AbsHistogram(num_bins=8)
    h.update(np.array([0.0, 0.3, 0.55, 0.8, 1.0], np.float32))  # range 1, w = 0.125
    before = h.counts.copy()
    h.update(np.array([3.5], np.float32))  # needs range 4: two doublings
    assert h.range == 4.0
    once = before.reshape(-1, 2).sum(axis=1)
    twice = np.concatenate([once, np.zeros(4, np.int64)]).reshape(-1, 2).sum(axis=1)
    expected = np.concatenate([twice, np.zeros(4, np.int64)])
    expected[int(3.5 / 0.5)] += 1
    np.testing.assert_array_equal(h.counts, expected)
    assert h.counts.sum() == 6


def test_growth_is_a_power_of_two_of_the_first_max_not_the_new_max():
    h = AbsHistogram()
    h.update(np.array([1.5], np.float32))
    h.update(np.array([5.0], np.float32))
    assert h.range == 6.0  # 1.5 * 2**2, not 5.0
    assert h.abs_max == 5.0


def test_batch_order_changes_the_histogram_as_in_tensorrt():
    a, b = np.array([1.0, 0.9], np.float32), np.array([3.0, 0.2], np.float32)
    h1, h2 = AbsHistogram(), AbsHistogram()
    h1.update(a), h1.update(b)
    h2.update(b), h2.update(a)
    assert h1.range == 4.0 and h2.range == 3.0
    assert not np.array_equal(h1.counts, h2.counts)


def test_nan_and_inf_are_counted_not_binned():
    h = AbsHistogram()
    h.update(np.array([1.0, np.nan, np.inf, -np.inf, -2.0, np.nan], np.float32))
    assert (h.num_nan, h.num_inf, h.num_values) == (2, 2, 2)
    assert h.counts.sum() == 2
    assert h.range == 2.0


def test_all_zero_tensor_has_range_zero():
    h = AbsHistogram()
    h.update(np.zeros((3, 4), np.float32))
    assert h.range == 0.0 and h.bin_width == 0.0
    assert h.counts[0] == 12 and h.num_values == 12


def test_zero_batch_then_values_starts_the_range_at_the_first_non_zero_max():
    h = AbsHistogram()
    h.update(np.zeros(5, np.float32))
    h.update(np.array([0.5, 2.0], np.float32))
    assert h.range == 2.0
    assert h.counts[0] == 5 + 0  # the zeros stay in bin 0; 0.5 lands in bin 512
    assert h.counts[512] == 1 and h.counts[2047] == 1


def test_flt_max_makes_an_infinite_width_after_overflowing_growth():
    h = AbsHistogram()
    h.update(np.array([1.0], np.float32))
    h.update(np.array([-F32_MAX], np.float32))
    assert h.range == np.inf
    assert h.counts.sum() == 2 and h.counts[0] == 2


def test_update_accepts_float64_and_integers_and_leaves_input_untouched():
    x = np.array([[-1.5, 2.25], [0.0, 3.0]], dtype=np.float64)
    copy = x.copy()
    h = AbsHistogram()
    h.update(x)
    h.update(np.array([1, -2], dtype=np.int32))
    np.testing.assert_array_equal(x, copy)
    assert h.range == 3.0 and h.num_values == 6
    assert h.num_negative == 2
    assert (h.min, h.max) == (-2.0, 3.0)


def test_empty_batch_changes_nothing():
    h = AbsHistogram()
    h.update(np.array([], np.float32))
    assert h.is_empty and h.num_batches == 0 and h.range == 0.0


def test_non_numeric_input_is_refused():
    with pytest.raises(TypeError, match="numeric"):
        AbsHistogram().update(np.array(["a", "b"]))


@pytest.mark.parametrize("bins", [0, 3, 7])
def test_bad_bin_counts_are_refused(bins):
    with pytest.raises(ValueError, match="num_bins"):
        AbsHistogram(bins)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=40),
        min_size=1,
        max_size=5,
    )
)
def test_counts_match_a_value_by_value_reference(batches):
    """Blocked, vectorised binning equals binning one value at a time (single batch, no growth involved)."""
    x = np.concatenate([np.asarray(b, np.float32) for b in batches])
    h = AbsHistogram()
    h.update(x)
    if h.range == 0:
        assert h.counts[0] == x.size
    else:
        np.testing.assert_array_equal(h.counts, reference_counts(x, h.range))
    assert h.counts.sum() == x.size


def test_a_range_too_small_for_a_bin_width_counts_in_bin_0():
    """range = the smallest denormal: float32(range / 2048) is 0, and the reference divided by it (found by hypothesis)."""
    h = AbsHistogram()
    h.update(np.array([1e-45, 0.0, -1e-45], np.float32))
    assert h.bin_width == 0.0
    assert h.counts[0] == 3 and h.counts.sum() == 3
    np.testing.assert_array_equal(h.counts, reference_counts([1e-45, 0.0, -1e-45], h.range))


def test_large_batch_crosses_block_boundaries():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_003).astype(np.float32)
    h = AbsHistogram()
    h.update(x)
    w = np.float32(h.range / np.float32(2048))
    idx = np.minimum((np.abs(x) / w).astype(np.int64), 2047)
    np.testing.assert_array_equal(h.counts, np.bincount(idx, minlength=2048))


def test_fixed_range_histograms_merge_exactly():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, s, 1000).astype(np.float32) for s in (0.5, 1.0, 2.0)]
    whole = AbsHistogram(range=8.0)
    for p in parts:
        whole.update(p)
    shards = [AbsHistogram(range=8.0) for _ in parts]
    for s, p in zip(shards, parts):
        s.update(p)
    merged = shards[2].merge(shards[0]).merge(shards[1])
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.num_values == whole.num_values and merged.abs_max == whole.abs_max
    assert merged.range == 8.0


def test_fixed_range_clamps_values_above_the_range():
    h = AbsHistogram(range=1.0)
    h.update(np.array([0.5, 5.0], np.float32))
    assert h.range == 1.0 and h.counts[-1] == 1 and h.abs_max == 5.0


def test_merge_refuses_different_fixed_ranges():
    with pytest.raises(ValueError, match="fixed ranges differ"):
        AbsHistogram(range=1.0).merge(AbsHistogram(range=2.0))


def test_growing_histograms_merge_a_power_of_two_apart():
    a, b = AbsHistogram(), AbsHistogram()
    a.update(np.array([1.0, 0.3], np.float32))
    b.update(np.array([2.0, 0.7], np.float32))
    expected = AbsHistogram()
    expected.update(np.array([1.0, 0.3], np.float32))
    expected.update(np.array([2.0, 0.7], np.float32))
    a.merge(b)
    np.testing.assert_array_equal(a.counts, expected.counts)
    assert a.range == 2.0
    with pytest.raises(ValueError, match="power of two"):
        c = AbsHistogram()
        c.update(np.array([3.0], np.float32))
        a.merge(c)


def test_state_round_trips_through_dict_and_npz(tmp_path):
    h = AbsHistogram()
    h.update(np.array([1.0, -0.25, np.nan, np.inf], np.float32))
    h.update(np.array([3.0], np.float32))
    again = AbsHistogram.from_dict(h.to_dict())
    assert again == h
    again.update(np.array([0.1], np.float32))
    assert again != h  # independent copy
    path = tmp_path / "hists.npz"
    save_histograms(path, {"a": h, "b:0 (x)": again})
    loaded = load_histograms(path)
    assert list(loaded) == ["a", "b:0 (x)"]
    assert loaded["a"] == h and loaded["b:0 (x)"] == again


def test_from_dict_refuses_inconsistent_state():
    state = AbsHistogram().to_dict()
    state["counts"] = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="10 counts for 2048 bins"):
        AbsHistogram.from_dict(state)


def _parts(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    points = sorted({min(max(c, 0), x.size) for c in cuts})
    return np.split(x, points)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 3.0, 4.0, -4.0, 7.9, 8.0, 1e-3, 100.0]),
                     min_size=1, max_size=30),
            st.lists(st.integers(0, 30), max_size=4),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_batch_in_parts_equals_the_whole_batch(batches):
    """begin_batch/add_part/end_batch gives the same histogram as update(), growth and |x| == range included."""
    whole, parted = AbsHistogram(num_bins=16), AbsHistogram(num_bins=16)
    for values, cuts, tell_max in batches:
        x = np.asarray(values, np.float32)
        whole.update(x)
        parted.begin_batch(float(np.abs(x).max()) if tell_max else None)
        for part in _parts(x, cuts):
            parted.add_part(part)
        parted.end_batch()
    assert parted == whole


def test_parts_hold_back_only_values_above_the_range():
    h = AbsHistogram()
    h.update(np.array([1.0, 0.5], np.float32))
    h.begin_batch()
    h.add_part(np.array([0.25, 1.0], np.float32))
    assert h._held == [] or all(p.size == 0 for p in h._held)
    h.add_part(np.array([3.0, 0.75], np.float32))
    assert [p.tolist() for p in h._held if p.size] == [[3.0]]
    h.end_batch()
    assert h.range == 4.0 and h.counts.sum() == 6


def test_batch_protocol_misuse_is_an_error():
    h = AbsHistogram()
    with pytest.raises(RuntimeError, match="outside begin_batch"):
        h.add_part(np.ones(2))
    with pytest.raises(RuntimeError, match="without begin_batch"):
        h.end_batch()
    h.begin_batch()
    with pytest.raises(RuntimeError, match="before end_batch"):
        h.begin_batch()


batch_maxes = st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0, 7.9, 8.0, 100.0, 1e30, float(F32_MAX)]),
                       min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(maxes=batch_maxes, cut=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_a_resumed_histogram_merged_after_the_earlier_batches_equals_the_sequential_one(maxes, cut, seed):
    """The basis of sharded calibration: batches k.. started from the range batches ..k left, merged in order."""
    rng = np.random.default_rng(seed)
    batches = []
    for m in maxes:
        x = rng.uniform(-1, 1, 50).astype(np.float32) * np.float32(m)
        if m:
            x[rng.integers(50)] = np.float32(m) * rng.choice([-1, 1])
        batches.append(x)
    cut = min(cut, len(batches))
    sequential, earlier = AbsHistogram(), AbsHistogram()
    for x in batches:
        sequential.update(x)
    for x in batches[:cut]:
        earlier.update(x)
    later = AbsHistogram.resumed(earlier.range)
    for x in batches[cut:]:
        later.update(x)
    assert earlier.merge(later) == sequential


@given(maxes=st.lists(batch_maxes, min_size=1, max_size=3))
def test_grown_ranges_are_the_ranges_a_histogram_grows_through(maxes):
    width = max(len(m) for m in maxes)
    table = np.array([m + [0.0] * (width - len(m)) for m in maxes], np.float32).T  # batches x tensors
    expected = np.zeros_like(table)
    for t in range(table.shape[1]):
        h = AbsHistogram()
        for b, m in enumerate(table[:, t]):
            h.update(np.array([m, -m / 2], np.float32))
            expected[b, t] = h.range
    np.testing.assert_array_equal(grown_ranges(table), expected)


def test_growth_past_float32_ends_at_inf_and_still_merges():
    assert grown_ranges([[3e38], [F32_MAX]])[1, 0] == np.inf  # 3e38 doubled once overflows
    a, b = AbsHistogram(), AbsHistogram.resumed(3e38)
    a.update(np.array([3e38, 1.0], np.float32))
    b.update(np.array([F32_MAX], np.float32))
    whole = AbsHistogram()
    whole.update(np.array([3e38, 1.0], np.float32))
    whole.update(np.array([F32_MAX], np.float32))
    assert a.merge(b) == whole and whole.range == np.inf


def test_a_resumed_range_must_be_a_range():
    assert AbsHistogram.resumed(0.0).range == 0.0 and AbsHistogram.resumed(2.5).range == 2.5
    with pytest.raises(ValueError, match="resumed range"):
        AbsHistogram.resumed(float("nan"))
