"""What onnxruntime's graph optimisation level changes in a calibration: entries, ULPs, TensorRT's LeNet table, time.

    python benchmarks/bench_optimization.py            # LeNet (bundled) and EfficientNet-Lite0 (if built)

For each model, `calibrate` runs at every level of `OPTIMIZATION_LEVELS` on the same batches; each level's cache is
compared with the exact default ("basic"): how many entries moved and by how many float32 ULP of the stored scale,
how many moved to another KL index, and for LeNet whether the table still lands on TensorRT 7's published KL index
for all 8 shared tensors. Then onnxruntime alone on EfficientNet-Lite0: plain inference and inference with every
calibrated tensor exposed as an output, at both levels (where the time of the exact path goes).
EfficientNet-Lite0 comes from `samples/efficientnet_lite0/export.py` (run it first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from machine import announce  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trt_calib.core.cache import CalibrationCache  # noqa: E402
from trt_calib.core.compare import compare, ulp_distance  # noqa: E402
from trt_calib.ort.model import OPTIMIZATION_LEVELS, model_inputs  # noqa: E402
from trt_calib.ort.collect import calibrate  # noqa: E402
from trt_calib.ort.data import open_source  # noqa: E402

LENET = REPO / "data" / "lenet" / "lenet.onnx"
LENET_BATCHES = REPO / "data" / "lenet" / "sampleint8_batches.py"
TRT_TABLE = REPO / "data" / "caches" / "sampleINT8_TRT-7000.cache"
EFFNET = REPO / "artifacts" / "efficientnet_lite0"


def lenet_batches() -> list[dict[str, np.ndarray]]:
    return list(open_source(LENET_BATCHES, model_inputs(LENET)))


def effnet_batches(batch: int) -> list[dict[str, np.ndarray]]:
    x = np.load(EFFNET / "calib.npz")["input"]
    return [{"input": np.ascontiguousarray(x[k : k + batch])} for k in range(0, len(x) - batch + 1, batch)]


def measure(label: str, model: Path, batches: list, trt_version: str, reference: CalibrationCache | None) -> None:
    results = {}
    for level in OPTIMIZATION_LEVELS:
        started = time.perf_counter()
        results[level] = calibrate(model, batches, trt_version=trt_version, optimization=level)
        results[level].seconds = time.perf_counter() - started
    base = results["basic"]
    print(f"{label}: {len(base.amax)} entries, {len(batches)} batches")
    for level, result in results.items():
        ulps = [ulp_distance(*(np.float32(r.amax[n]) / np.float32(127) for r in (base, result))) for n in base.amax]
        moved = [u for u in ulps if u]
        index_moved = sum(base.entropy_index.get(n) != result.entropy_index.get(n) for n in base.entropy_index)
        line = (f"  {level:<8} {result.seconds:6.2f} s   entries moved {len(moved):3d}/{len(ulps)}"
                f"   max ULP {max(moved, default=0):>6}   median ULP of the moved {int(np.median(moved)) if moved else 0:>5}"
                f"   KL index moved {index_moved}")
        if reference is not None:
            c = compare(reference, result)
            counts = c.counts()
            line += (f"   vs TensorRT: {counts.get('exact', 0) + counts.get('same-bin', 0)}/{len(c.shared)} on its KL index"
                     f" ({c.summary()})")
        same_bytes = result.cache.to_bytes() == base.cache.to_bytes()
        print(line + ("   (same cache bytes)" if same_bytes else ""))


def onnxruntime_alone(model: Path, batches: list, repeat: int = 3) -> None:
    """onnxruntime by itself: plain inference and with every calibrated tensor exposed, at basic and all."""
    import onnxruntime as ort

    from trt_calib.ort.model import calibrated_tensors, load_model, ort_session

    proto = load_model(model)
    exposed = [n for n in calibrated_tensors(proto) if n not in {i.name for i in proto.graph.input}]
    times = {}
    for level in ("basic", "all"):
        for label, outputs in (("plain", ()), ("every tensor exposed", exposed)):
            session = ort_session(proto, outputs, optimization=level)
            names = [o.name for o in session.get_outputs()]
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                for batch in batches:
                    session.run(names, batch)
                best = min(best, time.perf_counter() - started)
            times[level, label] = best
    reference = times["all", "plain"]
    print(f"onnxruntime {ort.__version__} alone, best of {repeat} (x plain inference at all):")
    for (level, label), seconds in times.items():
        print(f"  {level:<6} {label:<22} {seconds:6.2f} s  {seconds / reference:4.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="EfficientNet-Lite0 batch size (default 16)")
    args = parser.parse_args()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    measure("LeNet (sampleINT8 batches, TensorRT 7.0 table)", LENET, lenet_batches(), "7.0.0",
            CalibrationCache.load(TRT_TABLE))
    if (EFFNET / "model.onnx").is_file():
        batches = effnet_batches(args.batch_size)
        measure(f"EfficientNet-Lite0 (128 crops, batches of {args.batch_size})", EFFNET / "model.onnx", batches,
                "8.6.1", None)
        onnxruntime_alone(EFFNET / "model.onnx", batches)
    else:
        print(f"{EFFNET} missing: run python samples/efficientnet_lite0/export.py for the EfficientNet-Lite0 rows")


if __name__ == "__main__":
    main()
