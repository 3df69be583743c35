"""The compiled binning kernel against the numpy code it replaces: identical counts, ranges and statistics.

The numpy path of `AbsHistogram` is the reference. Every test runs the kernel on one thread and on two (the split is
forced on small arrays), over random float32 data with NaN, infinities, denormals and FLT_MAX, over every bin edge of
ranges from the smallest denormal to FLT_MAX and the neighbours of each edge, and over whole histograms fed in
parts with and without a known batch max, growing and fixed.

A scan may differ from numpy in one thing only, the sign of a zero extremum: numpy's `a.min()` of {0.0, -0.0}
returns either one, depending on position and SIMD lanes, and the kernel orders -0.0 below 0.0. `AbsHistogram`
stores a zero extremum as +0.0 on both paths, so whole histograms are identical, down to the sign of their zeros.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trt_calib.core import kernel
from trt_calib.core.histogram import AbsHistogram, finite_abs_max
from trt_calib.core.signs import SignedHistogram

pytest.importorskip("numba")

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
TINY = np.finfo(np.float32).tiny  # the smallest normal
DENORM = F32(1e-45)  # the smallest denormal
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """Kernel threads per scan; with 2 even tiny arrays are split, so that the merge of per-thread counts runs."""
    monkeypatch.setattr(kernel, "_MIN_PER_THREAD", 1)
    with kernel.using_threads(request.param):
        yield request.param


def on(backend: str, fn):
    """fn() with the binning backend forced to `backend`."""
    kernel.set_backend(backend)
    try:
        with np.errstate(all="ignore"):
            return fn()
    finally:
        kernel.set_backend(None)


def numpy_scan(a: np.ndarray, width, limit, clip: int, slots: int):
    """What the kernel must return, computed the way AbsHistogram's numpy code does, op for op."""
    with np.errstate(all="ignore"):
        return _numpy_scan(np.asarray(a).astype(np.float32).reshape(-1), width, limit, clip, slots)


def _numpy_scan(a: np.ndarray, width, limit, clip: int, slots: int):
    finite = a[np.isfinite(a)]
    nan = int(np.count_nonzero(np.isnan(a)))
    stats = {"num_finite": finite.size, "num_nan": nan, "num_inf": a.size - nan - finite.size,
             "num_negative": int(np.count_nonzero(finite < 0)), "num_zero": int(np.count_nonzero(a == 0))}
    mag = np.abs(finite)
    inside = mag <= F32(limit)
    stats["num_above"] = int(np.count_nonzero(~inside))
    counts, negative = np.zeros(slots, np.int64), np.zeros(slots, np.int64)
    w = F32(width)
    for target, values in ((counts, mag[inside]), (negative, mag[inside & (finite < 0)])):
        if w == 0 or not np.isfinite(w):
            target[0] += values.size
        elif values.size:
            q = np.minimum(np.divide(values, w, dtype=np.float32), F32(clip))
            target += np.bincount(q.astype(np.intp), minlength=slots)
    return counts, negative, stats, (finite.min(), finite.max()) if finite.size else None


def check_scan(a, width, limit, clip: int, slots: int = 2049) -> None:
    compiled = on("numba", kernel.compiled)
    counts, negative, stats, extrema = numpy_scan(a, width, limit, clip, slots)
    got, got_negative = np.zeros(slots, np.int64), np.zeros(slots, np.int64)
    with np.errstate(all="ignore"):
        r = kernel.scan(compiled, np.asarray(a).astype(np.float32), width, limit, clip, got, got_negative)
        plain = kernel.scan(compiled, np.asarray(a).astype(np.float32), width, limit, clip, np.zeros(slots, np.int64))
        only_stats = kernel.scan(compiled, np.asarray(a).astype(np.float32))
    np.testing.assert_array_equal(got, counts)
    np.testing.assert_array_equal(got_negative, negative)
    assert r._replace(lo=0, hi=0)._asdict() == {**stats, "lo": 0, "hi": 0}
    assert plain == r and only_stats._replace(num_above=0) == r._replace(num_above=0)
    if extrema is None:
        assert (r.lo, r.hi) == (np.inf, -np.inf)
    else:
        assert (r.lo, r.hi) == extrema and r.lo.dtype == r.hi.dtype == np.float32
        for mine, theirs in zip((r.lo, r.hi), extrema):
            assert theirs == 0 or np.signbit(mine) == np.signbit(theirs)


def edge_values(rng: float, num_bins: int = 2048) -> np.ndarray:
    """Every bin edge k * w in float32 (computed two ways), its two neighbours, the range and the special values."""
    w = F32(F32(rng) / F32(num_bins))
    k = np.arange(num_bins + 2, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        edges = k * w
        exact = (k.astype(np.float64) * float(w)).astype(np.float32)
        r = F32(rng)
        special = np.array([r, np.nextafter(r, F32(0)), np.nextafter(r, F32(np.inf)), 0.0, -0.0, DENORM, 3e-45,
                            TINY, np.nextafter(TINY, F32(0)), FLT_MAX, np.inf, -np.inf, np.nan, w,
                            np.nextafter(w, F32(0))], np.float32)
        values = np.concatenate([edges, exact, np.nextafter(edges, F32(np.inf)), np.nextafter(edges, F32(0)),
                                 special])
    return np.concatenate([values, -values]).astype(np.float32)


RANGES = [1.0, 3.0, 6.0, 0.1, 255.0, 1e-3, 7.3891, 1e30, float(FLT_MAX), float(TINY), 1e-40, 1e-44, 1e-45,
          2.0**-126 * 2048]


# ---------------------------------------------------------------------------------------------- one scan
@pytest.mark.parametrize("rng", RANGES)
def test_every_bin_edge_and_its_neighbours_land_in_numpys_bin(threads, rng):
    a = edge_values(rng)
    w = F32(F32(rng) / F32(2048))
    check_scan(a, w, F32(rng), 2048)  # growing: values above the range are held, not binned
    check_scan(a, w, np.inf, 2047)  # fixed: everything binned, clamped into the last bin


@pytest.mark.parametrize("width", [0.0, np.inf])
def test_a_zero_or_infinite_width_counts_everything_in_bin_0(threads, width):
    check_scan(edge_values(1.0), width, np.inf, 2048)
    check_scan(edge_values(1.0), width, 1.0, 2048)


any_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@SETTINGS
@given(
    a=hnp.arrays(np.float32, st.integers(0, 2000), elements=any_f32),
    rng=st.floats(width=32, min_value=float(DENORM), max_value=float(FLT_MAX)),
    limit_scale=st.sampled_from([0.25, 1.0, 2.0, np.inf]),
    num_bins=st.sampled_from([2, 8, 2048]),
)
def test_random_float32_with_nan_inf_and_denormals_scan_as_numpy_does(threads, a, rng, limit_scale, num_bins):
    w = F32(F32(rng) / F32(num_bins))
    with np.errstate(over="ignore"):
        limit = F32(np.float64(rng) * limit_scale) if np.isfinite(limit_scale) else F32(np.inf)
    clip = num_bins if np.isfinite(limit) else num_bins - 1
    check_scan(a, w, limit, clip, num_bins + 1)


def test_three_million_values_with_nan_and_inf_split_over_threads(threads):
    g = np.random.default_rng(7)
    a = g.standard_normal(3_000_001).astype(np.float32)
    a[g.random(a.size) < 0.5] = 0
    a[::1000], a[5::1001], a[7::1003] = np.nan, np.inf, -np.inf
    top = F32(np.abs(a[np.isfinite(a)]).max())
    check_scan(a, F32(top / F32(2048)), top, 2048)
    check_scan(a, F32(F32(0.5) / F32(2048)), F32(0.5), 2048)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_finite_abs_max_takes_numpys_min_max_and_skips_nan_and_inf_on_both_backends(backend):
    """Finite data takes numpy's vectorised min/max (it never waits for the kernel's load); NaN and inf go the
    slower way, on the kernel or on numpy; both give the largest finite |x|, in float32."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal(300_000).astype(np.float32)
    a[123] = F32(-7.25)
    cases = {
        "finite": (a, 7.25),
        "nan": (np.where(np.arange(a.size) % 1000 == 0, F32(np.nan), a), 7.25),
        "inf": (np.concatenate([a, [np.inf, -np.inf]]).astype(np.float32), 7.25),
        "nan and inf only": (np.array([np.nan, np.inf, -np.inf], np.float32), 0.0),
        "zeros": (np.zeros(10, np.float32), 0.0),
        "denormal": (np.array([0.0, -DENORM], np.float32), float(DENORM)),
        "FLT_MAX": (np.array([FLT_MAX, np.nan], np.float32), float(FLT_MAX)),
        "empty": (np.zeros(0, np.float32), 0.0),
    }
    for name, (values, expected) in cases.items():
        assert on(backend, lambda: finite_abs_max(values)) == expected, name


def test_two_python_threads_can_scan_at_once():
    compiled = on("numba", kernel.compiled)
    a = np.random.default_rng(1).standard_normal(1_000_000).astype(np.float32)
    w = F32(F32(5) / F32(2048))
    expected = np.zeros(2049, np.int64)
    kernel.scan(compiled, a, w, np.inf, 2048, expected)
    results = [np.zeros(2049, np.int64) for _ in range(4)]
    workers = [threading.Thread(target=kernel.scan, args=(compiled, a, w, np.inf, 2048, c)) for c in results]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for c in results:
        np.testing.assert_array_equal(c, expected)


# ---------------------------------------------------------------------------------------------- whole histograms
def assert_same(fast: AbsHistogram, reference: AbsHistogram) -> None:
    assert fast == reference, (fast, reference)
    np.testing.assert_array_equal(fast.counts, reference.counts)
    assert fast.range == reference.range and fast.abs_max == reference.abs_max
    for a, b in ((fast.abs_max, reference.abs_max), (fast.min, reference.min), (fast.max, reference.max)):
        assert np.signbit(a) == np.signbit(b)


batch_values = hnp.arrays(
    np.float32,
    st.integers(0, 300),
    elements=st.one_of(
        st.floats(width=32, min_value=-8, max_value=8),
        st.sampled_from([0.0, -0.0, 1e-45, -1e-45, float(FLT_MAX), float(-FLT_MAX), np.inf, -np.inf, np.nan, 1e-38]),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
)


@SETTINGS
@given(batches=st.lists(st.tuples(batch_values, st.integers(1, 4), st.booleans()), min_size=1, max_size=5),
       fixed=st.sampled_from([None, None, 1.0, 6.0, 1e-3]))
def test_histograms_fed_in_parts_equal_the_numpy_reference(threads, batches, fixed):
    """Growth, held values, |x| == range, fixed ranges (FLT_MAX clamps into the last bin) and statistics."""

    def feed() -> AbsHistogram:
        h = AbsHistogram(range=fixed)
        for values, parts, tell_max in batches:
            finite = values[np.isfinite(values)]
            h.begin_batch(float(np.abs(finite).max()) if tell_max and finite.size else None)
            for part in np.array_split(values, parts):
                h.add_part(part)
            h.end_batch()
        return h

    assert_same(on("numba", feed), on("numpy", feed))


@SETTINGS
@given(batches=st.lists(batch_values, min_size=1, max_size=4))
def test_signed_histograms_count_the_same_negatives_and_zeros(threads, batches):
    def feed() -> SignedHistogram:
        h = SignedHistogram(16)
        for values in batches:
            h.update(values)
        return h

    fast, reference = on("numba", feed), on("numpy", feed)
    assert_same(fast.abs, reference.abs)
    np.testing.assert_array_equal(fast.negative, reference.negative)
    assert fast.num_zero == reference.num_zero
    assert (fast.positive >= 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_realistic_batches_whose_range_doubles_agree(threads, seed):
    g = np.random.default_rng(seed)
    batches = []
    for i in range(5):
        n = int(g.integers(1, 300_000))
        a = (g.lognormal(0, 1, n) * (1 + i) ** 2).astype(np.float32)
        a[g.random(n) < 0.5] = 0
        a[g.random(n) < 0.05] *= -1
        batches.append(a.reshape(-1, 1) if i % 2 else a)

    def feed() -> AbsHistogram:
        h = AbsHistogram()
        for a in batches:
            h.update(a)
        return h

    fast, reference = on("numba", feed), on("numpy", feed)
    assert reference.range > F32(batches[0].max())  # the range grew
    assert_same(fast, reference)


@pytest.mark.parametrize(
    "make",
    [lambda a: a[::3], lambda a: a[::-1], lambda a: a.reshape(100, -1).T, lambda a: a.astype(np.float16),
     lambda a: a.astype(np.float64), lambda a: (a * 100).astype(np.int32), lambda a: a > 0,
     lambda a: np.asfortranarray(a.reshape(50, -1))],
    ids=["stride-3", "reversed", "transposed", "float16", "float64", "int32", "bool", "fortran"],
)
def test_any_layout_and_numeric_dtype_bins_as_numpy_does(threads, make):
    a = np.random.default_rng(3).standard_normal(20000).astype(np.float32)
    a[::97] = np.nan
    with np.errstate(invalid="ignore"):
        x = make(a)

    def feed() -> AbsHistogram:
        h = AbsHistogram()
        h.update(x)
        h.update(x * 3 if x.dtype != np.bool_ else x)
        return h

    assert_same(on("numba", feed), on("numpy", feed))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_fixed_range_clamps_values_beyond_the_integer_range_into_the_last_bin(backend):
    """|x| / w >= 2**63 once overflowed numpy's float->int conversion (and bincount raised); both paths clamp."""
    a = np.array([0.5, 1e16, -3e38, FLT_MAX], np.float32)

    def feed() -> AbsHistogram:
        h = AbsHistogram(range=1.0)
        h.update(a)
        return h

    h = on(backend, feed)
    assert h.counts[1024] == 1 and h.counts[-1] == 3 and h.counts.sum() == 4


# ---------------------------------------------------------------------------------------------- choosing the path
def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_without_numba_the_numpy_path_runs_silently():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from trt_calib.core import kernel\n"
        "from trt_calib.core.histogram import AbsHistogram\n"
        "h = AbsHistogram(); h.update(np.arange(kernel.LOAD_AFTER + 10, dtype=np.float32))\n"
        "print(kernel.wait_loaded() is None, kernel.compiled(1) is None, h.counts.sum())\n"
    )
    done = run_python(code, TRT_CALIB_KERNEL="auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", str((1 << 25) + 10)] and "Traceback" not in done.stderr


def test_forcing_numba_without_it_is_a_named_error():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from trt_calib.core import kernel\n"
        "from trt_calib.errors import MissingDependencyError\n"
        "try:\n    kernel.compiled()\nexcept MissingDependencyError as exc:\n    print(exc)\n"
    )
    done = run_python(code, TRT_CALIB_KERNEL="numba")
    assert "Hint: pip install numba" in done.stdout, done.stderr


@pytest.fixture
def fresh_kernel(monkeypatch):
    """The kernel module as a new process has it: nothing loaded, nothing counted, auto mode."""
    for key, value in {"compiled": None, "failed": None, "numpy_values": 0, "loader": None, "backend": "auto"}.items():
        monkeypatch.setitem(kernel._state, key, value)


def test_auto_loads_the_kernel_in_the_background_once_enough_values_come(fresh_kernel):
    assert kernel.compiled(kernel.LOAD_AFTER - 1) is None and kernel._state["loader"] is None
    assert kernel.compiled(1) is None and kernel._state["loader"] is not None  # enough announced: loading starts
    # the next part waits for the load rather than binning with numpy beside it (3-4x slower, and it slows the load)
    assert kernel.compiled(1) is not None
    assert kernel.compiled(1) is kernel.wait_loaded()


def test_no_writable_cache_falls_back_to_numpy_with_a_hint(fresh_kernel, monkeypatch, caplog):
    import numba

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot cache function '_scan_kernel': no locator available for file 'kernel.py'")

    monkeypatch.setattr(numba, "njit", refuse)
    kernel.prefetch(kernel.LOAD_AFTER)
    assert kernel.wait_loaded() is None and kernel.compiled(1) is None
    assert "NUMBA_CACHE_DIR" in caplog.text
    h = AbsHistogram()
    h.update(np.array([1.0, -2.0], np.float32))
    assert h.counts.sum() == 2


def test_the_environment_chooses_the_backend_and_a_typo_is_refused():
    done = run_python("from trt_calib.core import kernel; print(kernel.backend())", TRT_CALIB_KERNEL="numpy")
    assert done.stdout.strip() == "numpy"
    done = run_python("from trt_calib.core import kernel; kernel.backend()", TRT_CALIB_KERNEL="nunba")
    assert "TRT_CALIB_KERNEL='nunba'" in done.stderr and "auto, numba, numpy" in done.stderr
