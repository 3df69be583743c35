"""Per-unit INT8 sensitivity on EfficientNet-Lite0: what the ranking costs, serial against local processes, and what
keeping its top units in float buys, against random units and the first-and-last-layer rule of thumb.

    python3 benchmarks/bench_sensitivity.py                   # 9.5 min on 2 idle cores (serial ranking: 4)
    python3 benchmarks/bench_sensitivity.py --rank-crops 64   # a steadier ranking, twice the ranking time
    python3 benchmarks/bench_sensitivity.py --json out.json --markdown

In one run, with TensorRT's entropy2 thresholds (EntropyCalibration2 emulated, batches of 16) from the 128
calibration crops of `artifacts/efficientnet_lite0/` (made by `samples/efficientnet_lite0/export.py` if missing):

1. the full ranking (`qdq.sensitivity.sensitivity`: every unit alone, excluded, weights only, activations only, and
   the greedy curve up to k = 5) on the first `--rank-crops` held-out crops, once on the serial executor and once on
   the local one (all cores); the two results must be identical (checked), the wall times give the ratio and the
   seconds per unit;
2. on the other held-out crops (never seen by the ranking), the mean KL(FP32 || INT8) of the softmax with every unit
   INT8, then with the top 1, 3, 5 units of the ranking kept in float, with 5 random draws of as many units, and with
   the first and the last unit kept in float (`measure_kept`, local executor).

Goal (issue 13): keeping <= 3 units in float cuts the KL by at least half, and the ranking's reduction is at least
twice the random draws' (their mean). Every run is onnxruntime on the CPU with the Q/DQ graph as written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from machine import announce  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "efficientnet_lite0"
BATCH = 16
SIZES = (1, 3, 5)
DRAWS = 5

log = logging.getLogger("bench_sensitivity")


def _batches(x: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"input": np.ascontiguousarray(x[i : i + BATCH])} for i in range(0, len(x) - BATCH + 1, BATCH)]


def _artifacts(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    if not all((folder / f).is_file() for f in ("model.onnx", "calib.npz", "heldout.npz")):
        log.info("%s is incomplete: running samples/efficientnet_lite0/export.py", folder)
        subprocess.run([sys.executable, str(REPO / "samples" / "efficientnet_lite0" / "export.py"), "--out",
                        str(folder)], check=True)
    return folder / "model.onnx", np.load(folder / "calib.npz")["input"], np.load(folder / "heldout.npz")["input"]


def _ranking(model: Path, scales: Any, batches: list, kind: str, workers: int | None) -> tuple[Any, float]:
    from tqdm import tqdm

    from trt_calib.ort.executor import make_executor
    from trt_calib.qdq.sensitivity import sensitivity

    bar = tqdm(desc=f"ranking ({kind})", unit="run", leave=False, file=sys.stderr)
    started = time.perf_counter()
    with make_executor(kind, workers=workers if kind != "serial" else None) as ex:
        result = sensitivity(model, scales, batches, metric="kl", max_keep=max(SIZES), executor=ex,
                             progress=bar.update, total=lambda n: setattr(bar, "total", n))
    bar.close()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default=str(ARTIFACTS), help=f"EfficientNet-Lite0 folder (default {ARTIFACTS})")
    parser.add_argument("--rank-crops", type=int, default=32, help="held-out crops the ranking runs on (default 32, "
                        "a multiple of 16); the KL table uses the other held-out crops")
    parser.add_argument("--workers", type=int, default=None, help="local executor processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the numbers as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the KL table as Markdown")
    args = parser.parse_args()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    load_at_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("trt_calib").setLevel(logging.WARNING)

    import onnxruntime

    from trt_calib.ort.collect import calibrate
    from trt_calib.ort.executor import make_executor
    from trt_calib.qdq.sensitivity import measure_kept

    started = time.perf_counter()
    model, calib, held = _artifacts(Path(args.artifacts))
    rank_batches = _batches(held[: args.rank_crops])
    test_batches = _batches(held[args.rank_crops :])
    t0 = time.perf_counter()
    scales = calibrate(model, _batches(calib))
    log.info("entropy2 calibration on %d crops: %.1f s", len(calib), time.perf_counter() - t0)

    serial, serial_s = _ranking(model, scales, rank_batches, "serial", None)
    local, local_s = _ranking(model, scales, rank_batches, "local", args.workers)
    a, b = serial.to_json(), local.to_json()
    a.pop("run"), b.pop("run")
    identical = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    units = [u.node for u in serial.units]
    order = [u.node for u in sorted(serial.units, key=lambda u: u.index)]  # graph order

    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[str]] = {"every unit INT8": []}
    for k in SIZES:
        sets[f"top {k} (ranking)"] = units[:k]
        for d in range(DRAWS):
            sets[f"random {k} #{d + 1}"] = [str(n) for n in rng.choice(units, size=k, replace=False)]
    sets["first + last"] = [order[0], order[-1]]
    with make_executor("local", workers=args.workers) as ex:
        from tqdm import tqdm

        bar = tqdm(total=len(sets), desc="held-out KL", unit="run", leave=False, file=sys.stderr)
        t0 = time.perf_counter()
        _, errors = measure_kept(model, scales, test_batches, list(sets.values()), metric="kl", executor=ex,
                                 progress=bar.update)
        bar.close()
        eval_s = time.perf_counter() - t0
    kl = dict(zip(sets, errors))
    base = kl["every unit INT8"]

    n = len(units)
    print(f"EfficientNet-Lite0, entropy2 thresholds (TensorRT EntropyCalibration2 emulated), {n} units; onnxruntime "
          f"{onnxruntime.__version__} CPU, Q/DQ as written. Timings depend on the machine's load: "
          f"{load_at_start} at the start, {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end "
          f"({os.cpu_count()} CPUs).")
    print(f"\nranking on {len(rank_batches) * BATCH} held-out crops ({serial.run['runs']} runs, greedy up to k = "
          f"{max(SIZES)}):")
    print(f"  serial               {serial_s:7.1f} s   ranking {serial.run['ranking_seconds']:6.1f} s = "
          f"{serial.run['ranking_seconds'] / n:.2f} s/unit")
    print(f"  local ({local.run['workers']} workers)    {local_s:7.1f} s   ranking {local.run['ranking_seconds']:6.1f} s = "
          f"{local.run['ranking_seconds'] / n:.2f} s/unit")
    print(f"  local / serial: {serial.run['ranking_seconds'] / local.run['ranking_seconds']:.2f}x faster "
          f"(ranking); results identical: {identical}")
    print(f"  top 5: {', '.join(f'{u.node} ({u.op})' for u in serial.units[:5])}")

    print(f"\nmean KL(FP32 || INT8) on the other {len(test_batches) * BATCH} held-out crops ({eval_s:.0f} s):")
    rows = [("every unit INT8", 0, base, None)]
    for k in SIZES:
        ours = kl[f"top {k} (ranking)"]
        draws = [kl[f"random {k} #{d + 1}"] for d in range(DRAWS)]
        rows.append((f"top {k} by our ranking", k, ours, None))
        rows.append((f"{k} random units (mean of {DRAWS})", k, float(np.mean(draws)),
                     f"range {min(draws):.4f}-{max(draws):.4f}"))
    rows.append(("first + last unit", 2, kl["first + last"], f"{order[0]}, {order[-1]}"))
    print(f"  {'kept in float':<34} {'k':>2}  {'mean KL':>8}  {'vs all INT8':>11}")
    for label, k, value, note in rows:
        print(f"  {label:<34} {k:>2}  {value:8.4f}  {100 * (value / base - 1):+10.1f}%" + (f"  {note}" if note else ""))

    ours3 = kl["top 3 (ranking)"]
    rand3 = float(np.mean([kl[f"random 3 #{d + 1}"] for d in range(DRAWS)]))
    best_small = min(kl[f"top {k} (ranking)"] for k in SIZES if k <= 3)
    cut, ours_gain, rand_gain = 1 - best_small / base, base - ours3, base - rand3
    ratio = ours_gain / rand_gain if rand_gain > 0 else float("inf")
    print("\ngoals:")
    print(f"  keeping <= 3 units in float cuts the KL by >= 50%: {100 * cut:.1f}% -> "
          f"{'met' if cut >= 0.5 else 'NOT met'}")
    print(f"  ranking's reduction (k=3) >= 2x the random draws': {ours_gain:.4f} vs {rand_gain:.4f} = {ratio:.1f}x -> "
          f"{'met' if ratio >= 2 else 'NOT met'}")
    if args.markdown:
        print("\n| kept in float (EfficientNet-Lite0, entropy2) | k | mean KL | vs every unit INT8 |")
        print("|---|---|---|---|")
        for label, k, value, note in rows:
            print(f"| {label}{' (' + note + ')' if note else ''} | {k} | {value:.4f} | {100 * (value / base - 1):+.1f}% |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        from trt_calib._util import atomic_write

        payload = {"serial_seconds": serial_s, "local_seconds": local_s, "serial_run": serial.run,
                   "local_run": local.run, "identical": identical, "ranking": serial.to_json(), "kl": kl,
                   "rank_crops": len(rank_batches) * BATCH, "test_crops": len(test_batches) * BATCH}
        atomic_write(args.json, json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
