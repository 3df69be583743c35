"""signs: signed histograms, the error model, effective bits, signed KL, asymmetric Q/DQ parameters."""

from __future__ import annotations

import runpy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_calib.core.histogram import AbsHistogram, load_histograms
from trt_calib.core.signs import (
    Quantizer,
    SignedHistogram,
    as_signed,
    asymmetric_params,
    asymmetric_quantizer,
    compare_choices,
    effective_bits,
    load_any_histograms,
    quantization_error,
    save_signed_histograms,
    signed_entropy_search,
    signed_kl_curve,
    symmetric_quantizer,
)
from trt_calib.ort.collect import collect_signed
from trt_calib.core.thresholds import entropy_search

from conftest import LENET, LENET_BATCHES


def batches_with_growth(seed: int = 0) -> list[np.ndarray]:
    """Signed batches whose max|x| grows (so the histogram doubles its range), with zeros, NaN and -inf."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in (1.0, 0.7, 3.1, 2.0, 9.5):
        x = (rng.standard_normal(4000) * scale).astype(np.float32)
        x[:300] = 0.0
        x[300:310] = -0.0
        out.append(x)
    out[2][400] = np.nan
    out[3][407] = -np.inf
    return out


# ---------------------------------------------------------------------------------------------- SignedHistogram
def test_signed_histogram_keeps_tensorrts_abs_histogram_bit_for_bit():
    sh, ref = SignedHistogram(), AbsHistogram()
    for x in batches_with_growth():
        sh.update(x)
        ref.update(x)
    assert sh.abs == ref
    assert sh.range > 3 * 2.0  # it grew
    np.testing.assert_array_equal(sh.positive + sh.negative, ref.counts)
    assert (sh.negative >= 0).all() and (sh.positive >= 0).all()
    assert sh.negative.sum() == ref.num_negative


def test_negative_counts_equal_binning_the_negatives_at_the_final_range():
    # Doubling the range merges bin pairs; binning at width w then merging equals binning at width 2w exactly
    # (power-of-two scaling), so the negatives must match a fixed-range histogram of the negatives alone.
    sh = SignedHistogram()
    data = batches_with_growth(1)
    for x in data:
        sh.update(x)
    neg = np.concatenate(data)
    neg = neg[np.isfinite(neg) & (neg < 0)]
    alone = AbsHistogram(range=sh.range)
    alone.update(neg)
    np.testing.assert_array_equal(sh.negative, alone.counts)


def test_exact_zeros_are_counted_negative_zero_included():
    sh = SignedHistogram()
    for x in batches_with_growth(2):
        sh.update(x)
    assert sh.num_zero == 5 * 310


def test_from_abs_is_exact_for_one_sided_tensors_and_refuses_mixed_ones():
    pos = AbsHistogram()
    pos.update(np.abs(np.random.default_rng(3).standard_normal(1000)).astype(np.float32))
    sh = SignedHistogram.from_abs(pos)
    assert sh is not None and sh.num_zero is None
    np.testing.assert_array_equal(sh.positive, pos.counts)
    assert not sh.negative.any()
    neg = AbsHistogram()
    neg.update(-np.arange(1, 50, dtype=np.float32))
    sn = SignedHistogram.from_abs(neg)
    np.testing.assert_array_equal(sn.negative, neg.counts)
    assert sn.num_zero == 0
    mixed = AbsHistogram()
    mixed.update(np.array([-1.0, 2.0], np.float32))
    assert SignedHistogram.from_abs(mixed) is None and as_signed(mixed) is None


def test_signed_histograms_round_trip_and_stay_readable_as_plain_histograms(tmp_path):
    hs = {}
    for i, name in enumerate(["a", "b/with:odd name"]):
        hs[name] = SignedHistogram()
        for x in batches_with_growth(10 + i):
            hs[name].update(x)
    path = save_signed_histograms(tmp_path / "h.npz", hs)
    back = load_any_histograms(path)
    assert list(back) == list(hs)
    for name, h in hs.items():
        assert isinstance(back[name], SignedHistogram)
        assert back[name].abs == h.abs
        np.testing.assert_array_equal(back[name].negative, h.negative)
        assert back[name].num_zero == h.num_zero
    plain = load_histograms(path)
    assert all(plain[n] == hs[n].abs for n in hs)


def test_load_any_names_the_file_it_cannot_read(tmp_path):
    from trt_calib.errors import DataError

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_any_histograms(bad)


# ---------------------------------------------------------------------------------------------- asymmetric params
def test_asymmetric_params_examples():
    assert asymmetric_params(0.0, 2.55) == (pytest.approx(0.01, rel=1e-7), 0)
    scale, zp = asymmetric_params(-1.0, 1.0)
    assert scale == np.float32(2.0 / 255) and zp == 127  # 1 / float32(2/255) = 127.49999...
    scale, zp = asymmetric_params(0.0, 6.0, -128, 127)
    assert zp == -128 and scale == np.float32(6.0 / 255)
    # a range that excludes 0 is widened to contain it
    assert asymmetric_params(2.0, 5.1) == asymmetric_params(0.0, 5.1)
    assert asymmetric_params(-3.0, -1.0)[1] == 255
    assert asymmetric_params(0.0, 0.0) == (1.0, 0)


@pytest.mark.parametrize("args", [(1.0, 0.0), (float("nan"), 1.0), (0.0, float("inf")), (0.0, 1.0, 5, 5)])
def test_asymmetric_params_rejects_bad_ranges(args):
    with pytest.raises(ValueError):
        asymmetric_params(*args)


@settings(max_examples=200, deadline=None)
@given(
    lo=st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False),
    width=st.floats(1e-3, 2e4, allow_nan=False),
    signed=st.booleans(),
)
def test_asymmetric_params_keep_zero_exact_and_cover_the_range_within_half_a_step(lo, width, signed):
    hi = lo + width
    qmin, qmax = (-128, 127) if signed else (0, 255)
    scale, zp = asymmetric_params(lo, hi, qmin, qmax)
    q = Quantizer(scale, zp, qmin, qmax)
    assert np.float32(scale) == scale and qmin <= zp <= qmax
    assert q.quantize(0.0) == zp and q.dequantize(q.quantize(0.0)) == 0.0
    x = np.linspace(lo, hi, 101)
    err = np.abs(q.dequantize(q.quantize(x)) - x)
    assert err.max() <= scale / 2 * (1 + 1e-5) + 1e-12 * max(abs(lo), abs(hi))


def test_asymmetric_quantizer_from_histograms():
    pos = AbsHistogram()
    pos.update(np.linspace(0, 5.1, 1000, dtype=np.float32))
    q = asymmetric_quantizer(pos)  # minmax: only the extrema are needed
    assert (q.zero_point, q.qmin, q.qmax) == (0, 0, 255) and q.scale == np.float32(5.1 / 255)
    mixed = AbsHistogram()
    mixed.update(np.array([-1.0, 3.0, 0.5], np.float32))
    assert asymmetric_quantizer(mixed).zero_point == 64  # rint(255 * 1/4) = 64
    with pytest.raises(ValueError, match="signs"):
        asymmetric_quantizer(mixed, "mse")
    with pytest.raises(ValueError, match="unknown asymmetric method"):
        asymmetric_quantizer(pos, "kl")


# ---------------------------------------------------------------------------------------------- error model
def true_error(x: np.ndarray, q: Quantizer) -> tuple[float, float]:
    """MSE and SQNR of `q` on the values themselves."""
    x = x.astype(np.float64)
    mse = float(np.mean((q.dequantize(q.quantize(x)) - x) ** 2))
    return mse, 10 * np.log10(np.mean(x * x) / mse)


def test_error_estimate_matches_fake_quantisation_of_the_values():
    x = np.random.default_rng(4).laplace(size=200_000).astype(np.float32)
    sh = SignedHistogram()
    sh.update(x)
    for amax in (2.0, 5.0, float(np.abs(x).max())):
        q = symmetric_quantizer(amax)
        est = quantization_error(sh, q)
        mse, sqnr = true_error(x, q)
        assert est.mse == pytest.approx(mse, rel=0.02)
        assert est.sqnr_db == pytest.approx(sqnr, abs=0.1)
        assert est.clipped == pytest.approx(np.mean(np.abs(x) > amax), abs=2e-4)
    q = asymmetric_quantizer(sh, "minmax")
    assert quantization_error(sh, q).sqnr_db == pytest.approx(true_error(x, q)[1], abs=0.1)


def test_symmetric_error_needs_only_abs_values_asymmetric_needs_signs():
    x = np.random.default_rng(5).standard_normal(50_000).astype(np.float32)  # no exact zeros
    sh = SignedHistogram()
    sh.update(x)
    q = symmetric_quantizer(3.0)
    # equal up to where the top bins are cut off: at max|x| for |x|, at each side's own extreme for signs
    assert quantization_error(sh.abs, q).mse == pytest.approx(quantization_error(sh, q).mse, rel=1e-5)
    with pytest.raises(ValueError, match="signs"):
        quantization_error(sh.abs, asymmetric_quantizer(sh))


def test_exact_zeros_cost_nothing():
    x = np.zeros(10_000, np.float32)
    x[:100] = np.linspace(0.01, 1.0, 100)
    sh = SignedHistogram()
    sh.update(x)
    q = symmetric_quantizer(1.0)
    with_zeros = quantization_error(sh, q)
    assert with_zeros.mse == pytest.approx(true_error(x, q)[0], rel=0.05)
    unknown = quantization_error(sh.abs, q)  # zeros unknown: bin 0 is spread over [0, w)
    assert unknown.mse > with_zeros.mse


def test_one_sided_tensor_loses_one_bit_to_the_symmetric_grid():
    x = np.abs(np.random.default_rng(6).standard_normal(100_000)).astype(np.float32)
    h = AbsHistogram()
    h.update(x)
    sym = symmetric_quantizer(float(h.abs_max))
    uint8 = asymmetric_quantizer(h, "minmax")
    gain = quantization_error(h, uint8).sqnr_db - quantization_error(h, sym).sqnr_db
    assert gain == pytest.approx(20 * np.log10(2), abs=0.15)  # half the step: +6.02 dB
    assert effective_bits(h, sym) == pytest.approx(np.log2(1 + round(np.percentile(x, 99.9) / sym.scale)), abs=0.02)
    assert effective_bits(h, sym) <= 7.0 < effective_bits(h, uint8) <= 8.0


def test_effective_bits_of_symmetric_tensor_and_of_a_too_large_amax():
    x = np.random.default_rng(7).uniform(-1, 1, 100_000).astype(np.float32)
    h = AbsHistogram()
    h.update(x)
    assert effective_bits(h, symmetric_quantizer(1.0)) == pytest.approx(np.log2(255), abs=1e-9)
    # p99.9 of |x| is ~0.999: rint(0.999 * 127 / 8) = 16 codes each side, plus zero
    assert effective_bits(h, symmetric_quantizer(8.0)) == pytest.approx(np.log2(33), abs=1e-9)


# ---------------------------------------------------------------------------------------------- signed KL
def brute_signed_kl(pos: np.ndarray, neg: np.ndarray, i: int, levels: int = 128) -> float:
    """KL of the signed candidate i, built explicitly: per side P with outliers folded, Q expanded over non-zero bins."""
    ps, qs = [], []
    for side in (pos, neg):
        h = side.astype(np.float64).copy()
        h[0] = h[1]
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        q = np.zeros(i)
        level = np.arange(i) * levels // i
        for lv in range(levels):
            bins = np.flatnonzero((level == lv) & (h[:i] > 0))
            if bins.size:
                q[bins] = h[:i][bins].sum() / bins.size
        ps.append(p)
        qs.append(q)
    p, q = np.concatenate(ps), np.concatenate(qs)
    p, q = p / p.sum(), q / q.sum()
    if ((p > 0) & (q == 0)).any():
        return float("inf")
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def test_signed_kl_equals_an_explicit_construction():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.gamma(2.0, 1.0, 30_000), -rng.gamma(1.5, 0.4, 12_000)]).astype(np.float32)
    sh = SignedHistogram()
    sh.update(x)
    curve = signed_kl_curve(sh)
    for i in (128, 300, 777, 1500, 2048):
        assert curve[i - 128] == pytest.approx(brute_signed_kl(sh.positive, sh.negative, i), rel=1e-9, abs=1e-12)


def test_signed_kl_of_a_one_sided_tensor_is_tensorrts_search():
    x = np.maximum(np.random.default_rng(9).standard_normal(40_000), 0).astype(np.float32)  # post-ReLU
    sh = SignedHistogram()
    sh.update(x)
    ours, trt = signed_entropy_search(sh), entropy_search(sh.abs)
    assert ours.index == trt.index and ours.amax == trt.amax
    np.testing.assert_allclose(ours.divergence, trt.divergence, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- choices
def test_compare_choices_offers_sign_aware_options_only_where_signs_are_known():
    x = np.random.default_rng(10).standard_normal(20_000).astype(np.float32)
    x[x < 0] *= 0.1  # skewed
    sh = SignedHistogram()
    sh.update(x)
    names = [c.name for c in compare_choices(sh)]
    assert names == ["entropy2", "minmax", "percentile", "mse", "signed-kl", "uint8-minmax", "uint8-mse"]
    abs_names = [c.name for c in compare_choices(sh.abs)]
    assert abs_names == ["entropy2", "minmax", "percentile", "mse"]
    choices = {c.name: c for c in compare_choices(sh)}
    assert choices["entropy2"].amax == entropy_search(sh.abs).amax and choices["entropy2"].tensorrt
    assert not choices["uint8-minmax"].tensorrt and choices["uint8-minmax"].amax is None
    assert choices["minmax"].error.clipped == 0.0
    assert choices["uint8-mse"].error.mse <= choices["uint8-minmax"].error.mse


# ---------------------------------------------------------------------------------------------- LeNet
@pytest.fixture(scope="module")
def lenet_signed():
    batches = list(runpy.run_path(str(LENET_BATCHES))["load_data"]())
    return collect_signed(LENET, batches)[0], batches


def test_collect_signed_builds_calibrations_histograms(lenet_signed):
    from trt_calib.ort.collect import collect_histograms

    signed, batches = lenet_signed
    plain, count = collect_histograms(LENET, batches)
    assert count == 10 and list(signed) == list(plain)
    assert all(signed[n].abs == plain[n] for n in plain)
    assert signed["ip1"].num_negative == 0 and signed["ip1_prerelu"].num_negative > 0
    # ip1 = relu(ip1_prerelu): its exact zeros are the pre-activation's non-positive values
    assert signed["ip1"].num_zero == signed["ip1_prerelu"].num_negative + signed["ip1_prerelu"].num_zero


def test_error_estimate_matches_lenets_real_activations(lenet_signed):
    from trt_calib.ort.model import load_model, ort_session

    signed, batches = lenet_signed
    names = ["conv2", "ip1", "ip2"]
    model = load_model(LENET)
    session = ort_session(model, names)
    values = {n: [] for n in names}
    for batch in batches:
        for n, v in zip(names, session.run(names, batch)):
            values[n].append(v.ravel())
    for n in names:
        x = np.concatenate(values[n])
        for choice in compare_choices(signed[n]):
            _, sqnr = true_error(x, choice.quantizer)
            assert choice.error.sqnr_db == pytest.approx(sqnr, abs=0.2), (n, choice.name)
    ip1 = {c.name: c for c in compare_choices(signed["ip1"])}
    # the post-ReLU tensor: TensorRT's grid leaves half its codes unused; uint8 at the same range gains ~6 dB
    assert ip1["uint8-minmax"].error.sqnr_db - ip1["minmax"].error.sqnr_db == pytest.approx(6.0, abs=0.3)
