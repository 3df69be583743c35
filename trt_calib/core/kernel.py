"""The compiled one-pass |x| binning kernel behind `AbsHistogram` (numba, optional); numpy stays the reference.

`scan(compiled(), values, width, limit, clip, counts)` reads each float32 value once and returns everything
`AbsHistogram.add_part` derives from a part, bit for bit what its numpy code computes:

- the number of NaNs, of +-infs and of finite values, of finite values < 0 (-0.0 is not negative) and of zeros;
- the signed finite extrema `lo`, `hi` (float32; +inf / -inf when there is no finite value);
- each finite value with |x| <= `limit` counted into `counts[min(trunc(float32(|x|) / float32(width)), clip)]`:
  an IEEE float32 division (no reciprocal, no fast-math, denormals kept) and the clip taken before the conversion;
  finite values above `limit` are only counted (`num_above`; the histogram holds them back until its range grows).
  A width of 0 or inf sends every binned value to bin 0. With `negative`, the negative values are also counted
  into `negative` at the same indices (what `SignedHistogram` needs), in the same pass.

Inside a call the data goes in blocks of 1024 values: a branch-free loop (vectorised: 8 float32 lanes with AVX2)
turns each value into a slot (its bin, its bin in the negative half, or one of three extra slots: NaN, inf, above
the limit); a second vectorised loop over the same block, still in L1, takes the extrema as monotone int32 keys of
the bit patterns and counts negatives and zeros; a scalar loop scatters the slots into four interleaved uint32
sub-histograms, so that runs of one bin (the exact zeros after a ReLU) do not serialise on one counter.

Large arrays are cut into one slice per thread (`set_threads`, default: the usable cores, at most 4); the kernel
releases the GIL, each slice counts into its own slots, and the slots are summed. numba's own `parallel=True` is
not used: its default threading layer (workqueue) aborts the process when two Python threads call such a function
at once.

numba is a dependency of trt-calib where numba publishes wheels (pyproject.toml); without it (another platform or
Python, or an install without dependencies), or when `TRT_CALIB_KERNEL=numpy`, the
numpy code in `histogram.py` runs instead, with identical results. Compiled code is cached on disk by numba (next
to this file, in `~/.cache/numba` when that is read-only, or in `NUMBA_CACHE_DIR`), so the ~2 s compile is paid
once per machine; where no cache folder is writable the numpy code runs, and a warning says so. Loading numba and
its cache still takes ~0.5 s per process, so `auto` mode loads the kernel only once a process is about to bin
`LOAD_AFTER` values, on a background thread (calibration announces them before its first model run, which then
overlaps the load); small runs never pay for it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import numpy as np

__all__ = ["ScanResult", "BACKENDS", "LOAD_AFTER", "backend", "set_backend", "compiled", "prefetch", "wait_loaded",
           "scan", "set_threads", "threads", "using_threads", "usable_cpus", "warm_up"]

log = logging.getLogger(__name__)

#: Binning backends: auto (the kernel when numba loads, after LOAD_AFTER values), numba (always; an error when it
#: cannot load), numpy (never). The environment variable TRT_CALIB_KERNEL sets the default.
BACKENDS = ("auto", "numba", "numpy")
#: Values a process must be about to bin before `auto` loads the kernel (0.1 s of numpy; loading costs ~0.5 s).
LOAD_AFTER = 1 << 25

_BLOCK = 1024  # values per block: the slot buffer (4 KiB) and the block stay in L1 beside the sub-histograms
_EXTRA = 3  # slots after the bins: NaN, inf, above the limit
_MAX_CALL = 1 << 31  # values per kernel call: a uint32 sub-count sees at most a quarter of them
_MIN_PER_THREAD = 1 << 17  # below this a second thread costs more (handing work over) than it saves
_I32_MAX = np.int32(2**31 - 1)
_I32_MIN = np.int32(-(2**31))
_I32 = struct.Struct("<i")
_F32 = struct.Struct("<f")


class ScanResult(NamedTuple):
    """What one call saw. `lo`/`hi` are float32 (inf / -inf when `num_finite` is 0)."""

    num_finite: int
    num_nan: int
    num_inf: int
    num_negative: int  # finite values < 0
    num_zero: int  # values == 0 (either sign)
    num_above: int  # finite values with |x| > limit: not binned
    lo: np.float32
    hi: np.float32


# ---------------------------------------------------------------------------------------------- the kernels
# Plain Python functions, compiled by `compiled()` (numba is imported lazily). Written for the compiler: the int32
# casts and masks keep the second loop in 32-bit lanes (numba would widen to int64 and halve the vector width).
def _scan_kernel(x, bits, w, limit, clip, neg_off, slots):  # pragma: no cover - runs compiled
    """Count x (float32, contiguous; bits = the same memory as int32) into slots; (negatives, zeros, kmin, kmax).

    slots: [0, clip] bins, clip + 1 NaN, clip + 2 inf, clip + 3 finite |x| > limit, then (when neg_off > 0) the
    negative values' bins again from neg_off. kmin/kmax are monotone int32 keys of the finite extrema.
    """
    n = x.size
    s_nan = np.int32(clip + 1)
    s_inf = np.int32(clip + 2)
    s_above = np.int32(clip + 3)
    off = np.int32(neg_off)
    nslots = slots.size
    idx = np.empty(_BLOCK, np.uint32)
    s0 = np.zeros(nslots, np.uint32)
    s1 = np.zeros(nslots, np.uint32)
    s2 = np.zeros(nslots, np.uint32)
    s3 = np.zeros(nslots, np.uint32)
    fclip = np.float32(clip)
    zero = np.float32(0.0)
    finf = np.float32(np.inf)
    n_neg = 0
    n_zero = 0
    kmin = _I32_MAX
    kmax = _I32_MIN
    for start in range(0, n, _BLOCK):
        blk = min(_BLOCK, n - start)
        xb = x[start : start + blk]
        bb = bits[start : start + blk]
        for j in range(blk):  # 1. slots
            v = xb[j]
            m = abs(v)
            q = m / w  # float32 / float32: the IEEE division np.divide(out=float32) does
            q = q if q < fclip else fclip  # the clip before the conversion, so that it cannot overflow
            ok = m <= limit
            i = np.int32(q if ok else zero)  # truncation, as astype(intp) for 0 <= q <= clip
            i = np.int32(i + off) if v < zero else i
            i = i if ok else s_above
            i = i if m != finf else s_inf
            i = i if v == v else s_nan
            idx[j] = np.uint32(i)
        g = np.int32(0)
        z = np.int32(0)
        for j in range(blk):  # 2. extrema, negatives and zeros on the bit patterns
            b = bb[j]
            ab = b & 0x7FFFFFFF
            nf = -np.int64(ab >= 0x7F800000)  # all ones when not finite
            key = b ^ ((b >> 31) & 0x7FFFFFFF)  # float order as signed int order (-0.0 just below +0.0)
            kl = np.int32((key & ~nf) | (nf & 0x7FFFFFFF))
            kh = np.int32((key & ~nf) | (nf & -0x80000000))
            kmin = kl if kl < kmin else kmin
            kmax = kh if kh > kmax else kmax
            # finite, sign set and not -0.0  <=>  0x80000001 <= bits <= 0xff7fffff (unsigned)
            g = np.int32(g + np.int32((np.uint32(b) - np.uint32(0x80000001)) < np.uint32(0x7F7FFFFF)))
            z = np.int32(z + np.int32(ab == 0))
        n_neg += g
        n_zero += z
        j = 0
        while j + 4 <= blk:  # 3. scatter into four interleaved sub-histograms
            s0[idx[j]] += np.uint32(1)
            s1[idx[j + 1]] += np.uint32(1)
            s2[idx[j + 2]] += np.uint32(1)
            s3[idx[j + 3]] += np.uint32(1)
            j += 4
        while j < blk:
            s0[idx[j]] += np.uint32(1)
            j += 1
    for k in range(nslots):
        slots[k] += np.int64(s0[k]) + np.int64(s1[k]) + np.int64(s2[k]) + np.int64(s3[k])
    return n_neg, n_zero, kmin, kmax


def _stats_kernel(bits):  # pragma: no cover - runs compiled
    """Statistics only, from the int32 bit patterns: (NaNs, infs, negatives, zeros, kmin, kmax)."""
    n = bits.size
    n_nan = 0
    n_inf = 0
    n_neg = 0
    n_zero = 0
    kmin = _I32_MAX
    kmax = _I32_MIN
    for start in range(0, n, _BLOCK):
        blk = min(_BLOCK, n - start)
        bb = bits[start : start + blk]
        g = np.int32(0)
        z = np.int32(0)
        cn = np.int32(0)
        ci = np.int32(0)
        for j in range(blk):
            b = bb[j]
            ab = b & 0x7FFFFFFF
            nf = -np.int64(ab >= 0x7F800000)
            key = b ^ ((b >> 31) & 0x7FFFFFFF)
            kl = np.int32((key & ~nf) | (nf & 0x7FFFFFFF))
            kh = np.int32((key & ~nf) | (nf & -0x80000000))
            kmin = kl if kl < kmin else kmin
            kmax = kh if kh > kmax else kmax
            g = np.int32(g + np.int32((np.uint32(b) - np.uint32(0x80000001)) < np.uint32(0x7F7FFFFF)))
            z = np.int32(z + np.int32(ab == 0))
            cn = np.int32(cn + np.int32(ab > 0x7F800000))
            ci = np.int32(ci + np.int32(ab == 0x7F800000))
        n_neg += g
        n_zero += z
        n_nan += cn
        n_inf += ci
    return n_nan, n_inf, n_neg, n_zero, kmin, kmax


_SIGNATURES = {
    "_scan_kernel": "UniTuple(int64, 4)(float32[::1], int32[::1], float32, float32, int64, int64, int64[::1])",
    "_stats_kernel": "UniTuple(int64, 6)(int32[::1])",
}


# ---------------------------------------------------------------------------------------------- loading
class _Compiled(NamedTuple):
    scan: Any
    stats: Any


_lock = threading.Lock()
_state: dict[str, Any] = {"backend": None, "compiled": None, "failed": None, "numpy_values": 0, "loader": None}


def backend() -> str:
    """The binning backend in use: set_backend's, else TRT_CALIB_KERNEL's, else auto."""
    chosen = _state["backend"] or os.environ.get("TRT_CALIB_KERNEL", "auto").strip().lower() or "auto"
    if chosen not in BACKENDS:
        from ..errors import UsageError

        raise UsageError(f"TRT_CALIB_KERNEL={chosen!r}: choose one of {', '.join(BACKENDS)}")
    return chosen


def set_backend(name: str | None) -> None:
    """Choose the binning backend for this process (None: back to TRT_CALIB_KERNEL or auto)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _state["backend"] = name


class _NoCache(Exception):
    """numba cannot cache the kernel here, so it would compile it (~2 s) in every process."""


def _jit(fn: Any) -> Any:
    import numba

    try:
        return numba.njit(_SIGNATURES[fn.__name__], cache=True, nogil=True, boundscheck=False,
                          error_model="numpy")(fn)
    except RuntimeError as exc:  # numba found no writable cache folder ("no locator available")
        raise _NoCache(str(exc)) from None


def _load(strict: bool) -> _Compiled | None:
    """Import numba and load (or compile and cache) the kernels, once per process; None when that fails.

    `strict` raises what went wrong instead of falling back to numpy.
    """
    with _lock:
        if _state["compiled"] is not None or (_state["failed"] is not None and not strict):
            return _state["compiled"]
        try:
            _state["compiled"] = _Compiled(_jit(_scan_kernel), _jit(_stats_kernel))
        except ImportError as exc:
            _state["failed"] = exc
            log.debug("numba does not import (%s): binning with numpy", exc)
            if strict:
                from ..errors import MissingDependencyError

                raise MissingDependencyError(
                    f"TRT_CALIB_KERNEL=numba, but numba does not import ({exc}). Hint: pip install numba"
                ) from None
        except _NoCache as exc:
            _state["failed"] = exc
            log.warning("numba cannot cache its compiled code here (%s); binning with numpy. "
                        "Hint: set NUMBA_CACHE_DIR to a writable folder", exc)
            if strict:
                raise RuntimeError(f"numba cannot cache the histogram kernel: {exc}") from None
        return _state["compiled"]


def prefetch(num_values: int) -> None:
    """Say that `num_values` are about to be binned: in `auto` mode, once LOAD_AFTER values are announced the
    kernel starts loading on a background thread (binning waits for it; the results are the same either way)."""
    if _state["compiled"] is not None or _state["loader"] is not None or backend() != "auto":
        return
    _state["numpy_values"] += int(num_values)
    if _state["numpy_values"] >= LOAD_AFTER and _state["failed"] is None:
        _state["loader"] = threading.Thread(target=_load, args=(False,), name="trt-calib-kernel-load")
        _state["loader"].start()


def compiled(num_values: int = 0) -> _Compiled | None:
    """The compiled kernels if they are to bin `num_values` more values now; None means the numpy code.

    `numba` loads them at once and raises what goes wrong; `auto` counts the values (`prefetch`), loads the kernel in
    the background once there are LOAD_AFTER of them, and falls back to numpy for good when numba is missing or
    cannot cache; `numpy` never loads it. While a background load is under way, values wait for it rather than go
    to numpy: the load was started because many values are coming, numpy bins 3-4x slower, and binning numpy
    beside the load would slow the load down (it holds the GIL for numba's imports).
    """
    mode = backend()
    if mode == "numpy":
        return None
    if _state["compiled"] is not None:
        return _state["compiled"]
    if mode == "numba":
        return _load(True)
    loader = _state["loader"]
    if loader is not None and num_values > 0:
        loader.join()
        return _state["compiled"]
    prefetch(num_values)
    return None


def wait_loaded() -> _Compiled | None:
    """Wait for a background load `prefetch` started; the kernels, or None (not loaded, or numpy)."""
    loader = _state["loader"]
    if loader is not None:
        loader.join()
    return _state["compiled"] if backend() != "numpy" else None


def warm_up() -> bool:
    """Load (the first time on a machine: compile and cache) the kernel now; False when numba cannot run it."""
    if backend() == "numpy":
        return False
    try:
        k = _load(True)
    except Exception as exc:  # noqa: BLE001 - reported as unavailable
        log.debug("kernel warm-up failed: %s", exc)
        return False
    data = np.zeros(4, np.float32)
    k.scan(data, data.view(np.int32), np.float32(1), np.float32(np.inf), 1, 0, np.zeros(5, np.int64))
    k.stats(data.view(np.int32))
    return True


# ---------------------------------------------------------------------------------------------- threads
def usable_cpus() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_threads = {"n": max(1, min(4, usable_cpus()))}
_pool: dict[str, Any] = {"pool": None, "size": 0}


def threads() -> int:
    """Threads one scan uses (the calling thread included)."""
    return _threads["n"]


def set_threads(n: int) -> None:
    """Threads per scan: 1 keeps the work on the calling thread. Default: the usable cores, at most 4."""
    if int(n) != n or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    _threads["n"] = int(n)


@contextmanager
def using_threads(n: int | None) -> Iterator[None]:
    """`set_threads(n)` for the duration of a block (None: leave the setting alone)."""
    if n is None:
        yield
        return
    before = _threads["n"]
    set_threads(n)
    try:
        yield
    finally:
        _threads["n"] = before


def _executor(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if _pool["pool"] is None or _pool["size"] < workers:
            _pool["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trt-calib-bin")
            _pool["size"] = workers
        return _pool["pool"]


def _slices(n: int) -> list[tuple[int, int]]:
    count = max(1, min(_threads["n"], n // _MIN_PER_THREAD))
    step = max(1, min(_MAX_CALL, -(-n // count)))
    return [(s, min(n, s + step)) for s in range(0, n, step)] or [(0, 0)]


def _run(fn: Any, calls: list[tuple]) -> list[Any]:
    """fn(*args) for each call: the first on this thread, the others on the pool (the kernel drops the GIL)."""
    if len(calls) == 1:
        return [fn(*calls[0])]
    pool = _executor(len(calls) - 1)
    futures = [pool.submit(fn, *args) for args in calls[1:]]
    first = fn(*calls[0])
    return [first] + [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------- the entry point
def _key_to_f32(key: int) -> np.float32:
    """Inverse of the monotone key bits ^ ((bits >> 31) & 0x7fffffff)."""
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return np.float32(_F32.unpack(_I32.pack(bits))[0])  # exact: a float32 widened to double and back


def scan(
    k: _Compiled,
    values: np.ndarray,
    width: float | None = None,
    limit: float = np.inf,
    clip: int = 0,
    counts: np.ndarray | None = None,
    negative: np.ndarray | None = None,
) -> ScanResult:
    """Statistics of `values` (float32, 1-D) and, when `width` is given, its |x| counts added into `counts`.

    `k` is what `compiled()` returned. Bins are min(trunc(|x| / width), clip) for finite |x| <= limit; `counts` and
    `negative` (optional: the negative values alone, same bins) are int64 arrays of at least clip + 1 slots.
    """
    a = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    bits = a.view(np.int32)
    slices = _slices(a.size)
    if width is None:
        res = _run(k.stats, [(bits[s:e],) for s, e in slices])
        n_nan, n_inf = sum(r[0] for r in res), sum(r[1] for r in res)
        n_neg, n_zero = sum(r[2] for r in res), sum(r[3] for r in res)
        kmin, kmax = min(r[4] for r in res), max(r[5] for r in res)
        n_above = 0
    else:
        if counts is None or counts.dtype != np.int64 or counts.size <= clip or clip < 0:
            raise ValueError(f"counts must be an int64 array of more than clip = {clip} slots")
        w = np.float32(width)
        if w == 0:
            w = np.float32(np.inf)  # |x| / inf == 0: everything in bin 0, as for a zero width in numpy
        if not w > 0:
            raise ValueError(f"width must be >= 0, got {width!r}")
        neg_off = clip + 1 + _EXTRA if negative is not None else 0
        size = neg_off + clip + 1 if negative is not None else clip + 1 + _EXTRA
        parts = [np.zeros(size, np.int64) for _ in slices]
        res = _run(k.scan, [(a[s:e], bits[s:e], w, np.float32(limit), clip, neg_off, parts[i])
                            for i, (s, e) in enumerate(slices)])
        slots = parts[0]
        for p in parts[1:]:
            slots += p
        counts[: clip + 1] += slots[: clip + 1]
        if negative is not None:
            neg = slots[neg_off:]
            counts[: clip + 1] += neg
            negative[: clip + 1] += neg
        n_nan, n_inf, n_above = (int(v) for v in slots[clip + 1 : clip + 1 + _EXTRA])
        n_neg, n_zero = sum(r[0] for r in res), sum(r[1] for r in res)
        kmin, kmax = min(r[2] for r in res), max(r[3] for r in res)
    n_fin = a.size - n_nan - n_inf
    if n_fin:
        lo, hi = _key_to_f32(int(kmin)), _key_to_f32(int(kmax))
    else:
        lo, hi = np.float32(np.inf), np.float32(-np.inf)
    return ScanResult(int(n_fin), int(n_nan), int(n_inf), int(n_neg), int(n_zero), int(n_above), lo, hi)
