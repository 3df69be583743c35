"""Calibration cost against plain inference, and against ONNX Runtime's entropy calibrator, in one run.

    python benchmarks/bench_calibrate.py            # EfficientNet-Lite0, 128 crops, batches of 16

Each contender runs in its own process (wall time and peak RSS of that process):
(a) plain onnxruntime inference of the same batches (the baseline: what the data costs to run at all);
(b) trt-calib `calibrate` (entropy2: every activation histogrammed, TensorRT's KL search, cache built);
(c) ONNX Runtime's entropy calibrator with 2048 bins (`create_calibrator(..., CalibrationMethod.Entropy)`,
    `collect_data`, `compute_data`), which keeps every activation of every batch until the end.
The model and crops come from `samples/efficientnet_lite0/export.py` (run it first; ~30 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "efficientnet_lite0"

PRELUDE = """
import json, resource, sys, time
import numpy as np
model, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(data)["input"]
batches = [{"input": np.ascontiguousarray(x[k:k + batch])} for k in range(0, len(x) - batch + 1, batch)]
t0 = time.perf_counter()
"""
EPILOGUE = """
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
CONTENDERS = {
    "(a) onnxruntime inference": """
import onnxruntime as ort
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
for b in batches:
    sess.run(None, b)
""",
    "(b) trt-calib calibrate (entropy2)": """
from trt_calib.ort.collect import calibrate
result = calibrate(model, batches)
result.cache.dumps()
""",
    "(c) onnxruntime entropy calibrator, 2048 bins": """
import tempfile
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(batches)
    def get_next(self):
        return next(self.it, None)
with tempfile.TemporaryDirectory() as tmp:
    calib = create_calibrator(model, op_types_to_calibrate=None, augmented_model_path=tmp + "/aug.onnx",
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128, "symmetric": True})
    calib.collect_data(Reader())
    calib.compute_data()
""",
}


def run(code: str, model: Path, data: Path, batch: int) -> dict:
    script = PRELUDE + textwrap.dedent(code) + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", script, str(model), str(data), str(batch)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ARTIFACTS / "model.onnx")
    parser.add_argument("--data", type=Path, default=ARTIFACTS / "calib.npz", help=".npz with key 'input'")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-ort", action="store_true", help="skip (c): it needs ~8 GB and about a minute")
    args = parser.parse_args()
    if not args.model.is_file() or not args.data.is_file():
        raise SystemExit(f"{args.model} or {args.data} missing: run python samples/efficientnet_lite0/export.py")

    results = {}
    for name, code in CONTENDERS.items():
        if args.skip_ort and name.startswith("(c)"):
            continue
        results[name] = run(code, args.model, args.data, args.batch_size)
        r = results[name]
        print(f"{name:<48} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    base = results["(a) onnxruntime inference"]
    print()
    for name, r in results.items():
        print(f"{name:<48} {r['seconds'] / base['seconds']:7.1f}x inference time   "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:5.1f}x inference memory")


if __name__ == "__main__":
    main()
