"""Entropy search and histogram throughput, each against a baseline measured in the same run.

    python benchmarks/bench_thresholds.py

(a) `entropy_amax` on 2048-bin histograms against a plain one-loop reference (one candidate at a time, numpy
inside the loop; the shape of most peer implementations). Goal: >= 50x faster and < 2 ms per tensor.
(b) `AbsHistogram.update` against `np.histogram(np.abs(x), 2048, range=(0, max))` on the same data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from machine import announce  # benchmarks/machine.py, beside this script

from trt_calib.core.histogram import AbsHistogram
from trt_calib.core.thresholds import entropy_search


def loop_entropy_index(counts: np.ndarray) -> int:
    """Plain reference: for each candidate build P and Q and take the KL, as the GTC 2017 pseudocode reads."""
    h = counts.astype(np.float64).copy()
    h[0] = h[1]
    best, best_i = np.inf, h.size
    for i in range(128, h.size + 1):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        level = np.arange(i) * 128 // i
        nz = h[:i] != 0
        mass = np.bincount(level, weights=h[:i], minlength=128)
        n = np.bincount(level, weights=nz, minlength=128)
        q = np.where(nz, mass[level] / np.maximum(n[level], 1), 0.0)
        if np.any((p > 0) & (q == 0)):
            continue
        p, q = p / p.sum(), q / q.sum()
        keep = p > 0
        kl = float(np.sum(p[keep] * np.log(p[keep] / q[keep])))
        if kl < best - 1e-12:
            best, best_i = kl, i
    return best_i


def timed(fn, repeat: int) -> tuple[float, object]:
    best = np.inf
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=6, help="number of synthetic tensors (default 6)")
    parser.add_argument("--values", type=int, default=4_000_000, help="values per histogram update (default 4M)")
    args = parser.parse_args()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end

    rng = np.random.default_rng(0)
    kinds = [
        lambda n: rng.standard_normal(n),
        lambda n: np.maximum(rng.standard_normal(n), 0),
        lambda n: rng.laplace(size=n) ** 3,
        lambda n: rng.random(n),
    ]
    hists = []
    for t in range(args.tensors):
        h = AbsHistogram()
        h.update(kinds[t % len(kinds)](200_000).astype(np.float32))
        hists.append(h)

    print("(a) entropy search per 2048-bin tensor")
    ours_total = loop_total = 0.0
    for h in hists:
        t_ours, ours = timed(lambda: entropy_search(h), 7)
        t_loop, idx = timed(lambda: loop_entropy_index(h.counts), 1)
        assert ours.index == idx, (ours.index, idx)
        ours_total += t_ours
        loop_total += t_loop
    n = len(hists)
    print(f"    trt_calib.entropy_search  {ours_total / n * 1e3:8.2f} ms/tensor")
    print(f"    plain loop reference      {loop_total / n * 1e3:8.2f} ms/tensor   (same index on all {n} tensors)")
    print(f"    ratio: {loop_total / ours_total:.0f}x faster (goal >= 50x, < 2 ms/tensor)")

    print(f"(b) histogram update, {args.values / 1e6:.0f}M float32 values per call")
    x = rng.standard_normal(args.values).astype(np.float32)

    def ours_update():
        h = AbsHistogram()
        h.update(x)
        return h

    def numpy_hist():
        a = np.abs(x)
        return np.histogram(a, bins=2048, range=(0.0, float(a.max())))

    t_ours, h = timed(ours_update, 3)
    t_np, _ = timed(numpy_hist, 3)
    print(f"    AbsHistogram.update       {args.values / t_ours / 1e6:8.1f} M values/s")
    print(f"    np.histogram(|x|)         {args.values / t_np / 1e6:8.1f} M values/s")
    print(f"    ratio: {t_np / t_ours:.2f}x np.histogram's throughput")


if __name__ == "__main__":
    main()
