"""apply_dynamic_ranges against a stand-in network (tests/trt_standin.py; not TensorRT): which tensors get which
range, what is reported missing or unused, and what the sign-aware policy chooses and why."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from trt_standin import DataType, FakeLayer, FakeNetwork, FakeTensor, NoRangeTensor
from trt_calib.core.cache import CalibrationCache
from trt_calib.errors import CalibrationError, MissingDependencyError
from trt_calib.core.histogram import AbsHistogram
from trt_calib.trt.ranges import apply_dynamic_ranges, classify_sign, expected_mse
from trt_calib.core.thresholds import mse_amax


def network(deprecated: bool = False) -> FakeNetwork:
    def t(name, dtype=DataType.FLOAT):
        return FakeTensor(name, (1, 4), dtype, deprecated=deprecated)

    return FakeNetwork(
        inputs=[t("x"), t("ids", DataType.INT32)],
        layers=[
            FakeLayer("conv", [t("c")]),
            FakeLayer("shape", [t("s", DataType.INT32)]),
            FakeLayer("relu", [t("r")]),
            FakeLayer("mask", [t("m", DataType.BOOL)]),
        ],
    )


def hist_of(values) -> AbsHistogram:
    h = AbsHistogram()
    h.update(np.asarray(values, np.float32))
    return h


def test_symmetric_sets_minus_amax_to_amax_and_reports_missing_and_unused():
    net = network()
    report = apply_dynamic_ranges(net, {"x": 2.0, "c": 4.5, "extra": 1.0})
    assert net.tensor("x").range_calls == [(-2.0, 2.0)]
    assert net.tensor("c").range_calls == [(-4.5, 4.5)]
    assert [d.name for d in report.applied] == ["x", "c"]
    assert report.missing == ["r"]  # INT32 and BOOL tensors need no range
    assert report.unused == ["extra"]
    assert all(d.choice == "given" for d in report.applied)
    assert "2 tensor(s) set, 1 without a range, 1 range entry not in the network" in report.summary()


def test_a_cache_gives_its_float32_amax():
    cache = CalibrationCache.from_amax({"x": 1.0002, "r": 6.25}, algorithm="EntropyCalibration2")
    net = network()
    report = apply_dynamic_ranges(net, cache)
    assert net.tensor("x").dynamic_range == (-cache.amax("x"), cache.amax("x"))
    assert net.tensor("r").dynamic_range[1] == pytest.approx(6.25, rel=1e-6)
    assert report.missing == ["c"]


def test_invalid_ranges_are_refused_unless_skipped():
    with pytest.raises(CalibrationError, match=r"2 range\(s\) are not finite and positive \('c'=nan, 'r'=0.0\)"):
        apply_dynamic_ranges(network(), {"x": 1.0, "c": float("nan"), "r": 0.0})
    net = network()
    report = apply_dynamic_ranges(net, {"x": 1.0, "c": float("nan"), "r": 0.0}, skip_invalid=True)
    assert [d.name for d in report.applied] == ["x"]
    assert net.tensor("c").range_calls == [] and net.tensor("r").range_calls == []
    assert [n for n, _ in report.invalid] == ["c", "r"]


def test_ranges_for_another_model_are_an_error():
    with pytest.raises(CalibrationError, match="none of the 2 range entries names a tensor of this network"):
        apply_dynamic_ranges(network(), {"(Unnamed Layer* 3) [Convolution]_output": 1.0, "y": 2.0})


def test_tensorrt_11_networks_have_no_dynamic_ranges():
    net = FakeNetwork(inputs=[NoRangeTensor("x", (1,))])
    with pytest.raises(MissingDependencyError, match="TensorRT 11 removed dynamic ranges.*trt-calib quantize"):
        apply_dynamic_ranges(net, {"x": 1.0})


def test_tensorrt_10_1_deprecation_warnings_stay_inside():
    net = network(deprecated=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        apply_dynamic_ranges(net, {"x": 1.0})
    assert net.tensor("x").range_calls == [(-1.0, 1.0)]


def test_unknown_policy_lists_the_choices():
    with pytest.raises(CalibrationError, match="unknown range policy 'asymmetric'. Choices: symmetric, sign-aware"):
        apply_dynamic_ranges(network(), {"x": 1.0}, policy="asymmetric")


# ---------------------------------------------------------------------------------------------------- sign structure


def test_classify_sign():
    rng = np.random.default_rng(0)
    z = rng.normal(size=10_000)
    assert classify_sign(hist_of(np.abs(z))) == "non-negative"
    assert classify_sign(hist_of(-np.abs(z))) == "non-positive"
    assert classify_sign(hist_of(z)) == "symmetric"
    assert classify_sign(hist_of(z * (1 / (1 + np.exp(-z))))) == "skewed"  # SiLU: min -0.28, max ~4
    assert classify_sign(AbsHistogram()) == "unknown"
    assert classify_sign(None) == "unknown"


def test_expected_mse_of_uniform_data_is_step_squared_over_twelve():
    x = np.random.default_rng(1).uniform(0, 1, 200_000)
    h = hist_of(x)
    step = 1.0 / 127
    assert expected_mse(h, 1.0) == pytest.approx(step**2 / 12, rel=0.05)
    assert expected_mse(h, 0.5) > 100 * expected_mse(h, 1.0)  # clipping half the data costs far more


def calibration_result(**tensors):
    """Something shaped like collect.CalibrationResult: amax and histograms per tensor."""
    return types.SimpleNamespace(
        amax={name: amax for name, (amax, _) in tensors.items()},
        histograms={name: h for name, (_, h) in tensors.items() if h is not None},
    )


def test_sign_aware_keeps_one_sided_and_symmetric_amaxes_and_says_why():
    rng = np.random.default_rng(2)
    z = rng.normal(size=20_000)
    result = calibration_result(r=(3.0, hist_of(np.maximum(z, 0))), c=(3.5, hist_of(z)), x=(1.0, None))
    net = network()
    report = apply_dynamic_ranges(net, result, policy="sign-aware")
    by_name = {d.name: d for d in report.applied}
    assert by_name["r"].sign == "non-negative" and by_name["r"].amax == 3.0 and by_name["r"].choice == "given"
    assert "one-sided" in by_name["r"].reason and "7 effective bits" in by_name["r"].reason
    assert by_name["c"].sign == "symmetric" and by_name["c"].amax == 3.5
    assert by_name["x"].sign == "unknown" and "no histogram" in by_name["x"].reason
    assert report.changed == []


def test_sign_aware_picks_the_lowest_error_amax_for_a_skewed_tensor():
    z = np.random.default_rng(3).normal(size=50_000)
    silu = z / (1 + np.exp(-z))
    h = hist_of(silu)
    given = float(np.float32(0.3))  # a poor amax: clips most of the positive side
    net = network()
    report = apply_dynamic_ranges(net, calibration_result(c=(given, h)), policy="sign-aware")
    decision = report.applied[0]
    assert decision.sign == "skewed" and decision.choice == "mse"
    assert decision.amax == pytest.approx(mse_amax(h), rel=1e-6)
    assert expected_mse(h, decision.amax) < expected_mse(h, given)
    assert expected_mse(h, decision.amax) <= expected_mse(h, float(h.abs_max))
    assert net.tensor("c").dynamic_range == (-decision.amax, decision.amax)
    assert "skewed" in decision.reason and "INT8 codes" in decision.reason
    assert report.changed == [decision]


def test_sign_aware_on_a_cache_keeps_every_amax():
    net = network()
    report = apply_dynamic_ranges(net, {"x": 1.0, "c": 2.0}, policy="sign-aware")
    assert [(d.amax, d.sign, d.choice) for d in report.applied] == [(1.0, "unknown", "given"), (2.0, "unknown", "given")]
