"""Calibration cost against plain inference, binning speed, sharding, and ONNX Runtime's calibrator, in one run.

    python benchmarks/bench_calibrate.py            # EfficientNet-Lite0, 128 crops, batches of 16
    python benchmarks/bench_calibrate.py --skip-ort # without (f), which needs ~8 GB and a minute or two

Each contender runs in its own process (wall time and peak RSS of that process; for (e) also the largest worker's):
(a) plain onnxruntime inference of the same batches (the baseline: what the data costs to run at all);
(b) trt-calib `calibrate` (entropy2, the exact default: onnxruntime's basic optimisation, the compiled kernel);
(b') the same on the numpy binning path (TRT_CALIB_KERNEL=numpy), the reference the kernel must equal;
(b'') the same with every part run and binned in turn (`collect.pipelined` off): what running the next part while
    one is binned saves;
(c) `calibrate --optimization all` (faster onnxruntime arithmetic; entries move by a few ULP);
(d) binning alone: every activation of one part (4 crops) into its histogram at a known range, ns per value, on
    the kernel with 2 threads and 1 thread and on numpy;
(e) sharded `calibrate --executor local` with 1 and 2 worker processes (two passes: the speed-up of 2 over 1, whose
    worker has both cores, and over 1 restricted to one core, as each of the 2 is);
(g) onnxruntime alone as (b) runs it (the exact level, every calibrated tensor an output, (b)'s parts), nothing
    binned: with the CPU seconds every contender prints, what calibrating costs beyond running the model;
(f) ONNX Runtime's entropy calibrator with 2048 bins (`create_calibrator(..., CalibrationMethod.Entropy)`,
    `collect_data`, `compute_data`), which keeps every activation of every batch until the end.
Caches are compared by sha256: (b'), (c) and (e) against (b). The model and crops come from
`samples/efficientnet_lite0/export.py` (run it first; ~30 s). The load average is printed: on a shared machine
the ratios, not the seconds, are what carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from machine import announce, is_idle, machine_line, usable_cpus  # benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "efficientnet_lite0"

PRELUDE = """
import hashlib, json, resource, sys, time
import numpy as np
model, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(data)["input"]
batches = [{"input": np.ascontiguousarray(x[k:k + batch])} for k in range(0, len(x) - batch + 1, batch)]
out = {}
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
"""
EPILOGUE = """
out["seconds"] = time.perf_counter() - t0
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_seconds"] = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))
"""
CALIBRATE = """
from trt_calib.ort.collect import calibrate
result = calibrate(model, batches, optimization="{optimization}")
out["cache"] = hashlib.sha256(result.cache.to_bytes()).hexdigest()
"""
SHARDED = """
from trt_calib.ort.collect import calibrate
from trt_calib.ort.executor import make_executor
with make_executor("local", workers={workers}) as executor:
    result = calibrate(model, batches, executor=executor, threads={threads})
out["cache"] = hashlib.sha256(result.cache.to_bytes()).hexdigest()
"""
BINNING = """
from trt_calib.core import kernel
from trt_calib.core.histogram import AbsHistogram
from trt_calib.ort.runner import Runner
runner = Runner.open(model, None, threads=None, budget_bytes=1 << 40)
values = [v for v in runner.run({"input": batches[0]["input"][:4]}).values()]
tops = [float(np.abs(v[np.isfinite(v)]).max()) for v in values]
n = sum(v.size for v in values)

def bin_all():
    for v, top in zip(values, tops):
        AbsHistogram.resumed(top).update(v)  # the common case: the range is known, the batch fits it

def best(repeat=3):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        bin_all()
        times.append(time.perf_counter() - started)
    return min(times) / n * 1e9

kernel.set_backend("numba")
kernel.compiled()
for threads in (2, 1):
    kernel.set_threads(threads)
    out[f"kernel, {threads} thread{'s' if threads > 1 else ''}"] = best()
kernel.set_backend("numpy")
out["numpy"] = best(2)
out["values"] = n
"""
ORT_CALIBRATOR = """
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
"""
INFERENCE = """
import onnxruntime as ort
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
for b in batches:
    sess.run(None, b)
"""
RUNS_ONLY = """
from trt_calib.ort.collect import pipelined
from trt_calib.ort.runner import Runner
runner = Runner.open(model, None, threads=None, budget_bytes=(256 << 20) // (2 if pipelined(None) else 1))
runner.size_parts(batches[0])
for b in batches:
    for values in runner.parts(b):
        del values
"""
SEQUENTIAL = """
import trt_calib.ort.collect as collect
collect.pipelined = lambda threads: False  # every part runs, then is binned, as before issue 22
""" + CALIBRATE
CONTENDERS = {
    "(a) onnxruntime inference": (INFERENCE, {}),
    "(b) trt-calib calibrate (entropy2)": (CALIBRATE.format(optimization="basic"), {}),
    "(b') the same, numpy binning": (CALIBRATE.format(optimization="basic"), {"TRT_CALIB_KERNEL": "numpy"}),
    "(b'') the same, parts not overlapped": (SEQUENTIAL.format(optimization="basic"), {}),
    "(c) calibrate --optimization all": (CALIBRATE.format(optimization="all"), {}),
    "(g) onnxruntime alone, as (b) runs it": (RUNS_ONLY, {}),
    "(d) binning one part (4 crops)": (BINNING, {}),
    "(e) sharded, 1 local worker": (SHARDED.format(workers=1, threads=None), {}),
    "(e) sharded, 1 local worker, 1 thread": (SHARDED.format(workers=1, threads=1), {}),
    "(e) sharded, 2 local workers": (SHARDED.format(workers=2, threads=None), {}),
    "(f) onnxruntime entropy calibrator, 2048 bins": (ORT_CALIBRATOR, {}),
}


def run(code: str, env: dict, model: Path, data: Path, batch: int) -> dict:
    # A file run as __main__ (spawned workers re-import it, and must not rerun it), so everything is guarded.
    script = 'if __name__ == "__main__":\n' + textwrap.indent(PRELUDE + textwrap.dedent(code) + EPILOGUE, "    ")
    path = REPO / "artifacts" / "_bench_child.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path), str(model), str(data), str(batch)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, **env})
    path.unlink()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def import_line() -> str:
    """What importing onnx costs a fresh process (every command pays it; ml_dtypes 0.7.0 made it 0.56 s), fastest of 3."""
    code = ("import time, numpy; t = time.perf_counter(); import onnx, ml_dtypes; "
            "print(time.perf_counter() - t, ml_dtypes.__version__)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    return f"importing onnx after numpy: {min(float(r[0]) for r in runs):.3f} s (ml_dtypes {runs[0][1]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ARTIFACTS / "model.onnx")
    parser.add_argument("--data", type=Path, default=ARTIFACTS / "calib.npz", help=".npz with key 'input'")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-ort", action="store_true", help="skip (f): it needs ~8 GB and a minute or two")
    parser.add_argument("--only", default="abcdefg", metavar="LETTERS",
                        help="run only these contenders, e.g. 'ad' (default: all; (a) and (b) are always run)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the contenders N times, interleaved, and keep each one's fastest run (default 1)")
    args = parser.parse_args()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    if not args.model.is_file() or not args.data.is_file():
        raise SystemExit(f"{args.model} or {args.data} missing: run python samples/efficientnet_lite0/export.py")

    print(import_line())
    chosen = {name: spec for name, spec in CONTENDERS.items()
              if not (args.skip_ort and name[1] == "f") and (name.startswith(("(a)", "(b)")) or name[1] in args.only)}
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    for _ in range(max(1, args.repeat)):
        for name, (code, env) in chosen.items():
            runs[name].append(run(code, env, args.model, args.data, args.batch_size))
    results = {}
    for name, done in runs.items():
        if name.startswith("(d)"):
            r = results[name] = {k: min(d[k] for d in done) for k in done[0]}
            print(f"{name:<48} " + "   ".join(f"{k} {v:.2f} ns/value" for k, v in r.items()
                                               if k not in ("values", "seconds", "peak_rss_mb", "worker_rss_mb")))
            continue
        r = results[name] = min(done, key=lambda d: d["seconds"])
        spread = f"   (of {len(done)}: {min(d['seconds'] for d in done):.2f}-{max(d['seconds'] for d in done):.2f} s)" \
            if len(done) > 1 else ""
        workers = f"   largest worker {r['worker_rss_mb']:5.0f} MB" if name.startswith("(e)") else ""
        cpu = f"   CPU {r['cpu_seconds']:5.2f} s ({r['cpu_seconds'] / r['seconds']:.2f} cores)"
        print(f"{name:<48} {r['seconds']:8.2f} s{cpu}   peak RSS {r['peak_rss_mb']:7.0f} MB{workers}{spread}",
              flush=True)
    print(machine_line("end of the runs"))

    base = results["(a) onnxruntime inference"]
    ours = results["(b) trt-calib calibrate (entropy2)"]
    print()
    for name, r in results.items():
        if name.startswith("(d)"):
            continue
        same = ""
        if "cache" in r and r is not ours:
            same = "   same cache bytes as (b)" if r["cache"] == ours["cache"] else "   cache differs from (b)"
        print(f"{name:<48} {r['seconds'] / base['seconds']:7.1f}x inference time   "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:5.1f}x inference memory{same}")
    ratio = ours["seconds"] / base["seconds"]
    print(f"\ngoal of issue 22: (b), the plain install, at most 4x inference on an idle 2-core machine: {ratio:.1f}x, "
          f"{'met' if ratio <= 4 else 'NOT met'}" + ("" if is_idle() else " (this machine is busy: not an idle figure)"))
    cores = usable_cpus()
    floor = ours["cpu_seconds"] / cores
    print(f"(b) did {ours['cpu_seconds']:.2f} CPU-s of work: spread perfectly over the {cores} usable cores that is "
          f"{floor:.2f} s = {floor / base['seconds']:.1f}x inference, the least any schedule of this work can take")
    alone = results.get("(g) onnxruntime alone, as (b) runs it")
    if alone:
        print(f"(g) onnxruntime alone: {alone['seconds'] / base['seconds']:.1f}x inference, "
              f"{alone['cpu_seconds'] / alone['seconds']:.2f} of {cores} cores busy; (b) adds "
              f"{ours['cpu_seconds'] - alone['cpu_seconds']:.2f} CPU-s to it (binning, setup, the kernel's load, the "
              f"first batch's second runs, the KL searches)")
    seq = results.get("(b'') the same, parts not overlapped")
    if seq:
        print(f"running the next part while one is binned: (b) takes {ours['seconds'] / seq['seconds']:.2f}x the "
              f"time of (b'')")
    one, single, two = (results.get(f"(e) sharded, {w}") for w in
                        ("1 local worker", "1 local worker, 1 thread", "2 local workers"))
    if one and single and two:
        print(f"\nsharded: 2 local workers {one['seconds'] / two['seconds']:.2f}x the speed of 1 (which has both "
              f"cores), {single['seconds'] / two['seconds']:.2f}x the speed of 1 on one core (each of the 2 has "
              f"one); {ours['seconds'] / two['seconds']:.2f}x the speed of (b) in one process")
    binning = results.get("(d) binning one part (4 crops)")
    if binning:
        print(f"binning: {binning['kernel, 2 threads']:.2f} ns/value on 2 threads (goal <= 0.8), "
              f"{binning['numpy'] / binning['kernel, 2 threads']:.1f}x numpy's {binning['numpy']:.2f}")


if __name__ == "__main__":
    main()
