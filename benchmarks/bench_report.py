"""`trt-calib report` at hundreds of tensors: the page with figures drawn by the browser against the PNG renderer.

    python benchmarks/bench_report.py                    # a synthetic CNN of 253 calibrated tensors (PP-OCR cls's
                                                         # count), 32 samples of 3x48x192 in batches of 8
    python benchmarks/bench_report.py --model M.onnx --data D.npz --batch-size 8   # a real model (PP-OCR cls)
    python benchmarks/bench_report.py --skip-png         # only (a): the PNG runs take minutes on 2 cores

Each run is the whole command in its own process (`python -m trt_calib report ... --no-progress`), timed by wall
clock and by CPU (user + system of the process and of the workers it waited for):
(a) the default, `--figures inline`: the page draws every figure from the numbers embedded in index.html;
(b) `--figures png --workers 1`: matplotlib draws every figure into a PNG file in the report's process, as every
    report did before (the old renderer, kept for image files);
(c) `--figures png`: the same PNG files, drawn by one worker process per core.
Issue 20's goal: PP-OCR cls (253 tensors) in under 60 s on 2 cores with every figure. A model whose input has
symbolic dimensions other than the batch gets them fixed from the data, in a temporary copy (`--model` only).
The load average is printed: on a shared machine the ratios, not the seconds, are what carries over.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import announce  # noqa: E402  benchmarks/machine.py, beside this script

GOAL_SECONDS = 60.0


def synthetic_model(path: Path, blocks: int = 83) -> None:
    """A CNN with a PP-OCR-cls-like tensor count: a strided stem, then `blocks` of Conv -> Relu -> Add (residual),
    downsampling every 21 blocks, and a pooled output: 4 + 3 * blocks calibrated tensors (253 for 83). Seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    channels = 16

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)) * 0.5).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        return name

    x = conv("stem", "x", 3, channels, 3, 2)
    nodes.append(helper.make_node("Relu", [x], ["stem_relu"]))
    x = "stem_relu"
    for i in range(blocks):
        stride = 2 if i and i % 21 == 0 else 1
        y = conv(f"b{i}_conv", x, channels, channels, 3, stride)
        nodes.append(helper.make_node("Relu", [y], [f"b{i}_relu"]))
        if stride == 1:
            nodes.append(helper.make_node("Add", [f"b{i}_relu", x], [f"b{i}_add"]))
            x = f"b{i}_add"
        else:
            x = conv(f"b{i}_down", f"b{i}_relu", channels, channels, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    graph = helper.make_graph(nodes, "synthetic_253", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              ["N", 3, 48, 192])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def fixed_shapes(model_path: Path, data: Path, folder: Path) -> Path:
    """The model with symbolic non-batch input dims set from the data's shapes (a temporary copy), or itself."""
    import onnx

    model = onnx.load(str(model_path))
    with np.load(data) as arrays:
        shapes = {k: arrays[k].shape for k in arrays.files}
    changed = False
    for inp in model.graph.input:
        shape = shapes.get(inp.name) or (next(iter(shapes.values())) if len(shapes) == 1 else None)
        dims = inp.type.tensor_type.shape.dim
        if shape is None or len(shape) != len(dims):
            continue
        for k, d in enumerate(dims):
            if k and not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = int(shape[k])
                changed = True
    if not changed:
        return model_path
    out = folder / model_path.name
    onnx.save(model, str(out))
    print(f"(fixed the symbolic input dims of {model_path.name} from the data, in a temporary copy)")
    return out


def run_report(model: Path, data: Path, batch_size: int, out: Path, *extra: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trt_calib", "report", str(model), "--data", str(data),
                           "--batch-size", str(batch_size), "-o", str(out), "--no-progress", "--json", *extra],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"report {' '.join(extra)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    import json

    printed = json.loads(done.stdout)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "tensors": printed["tensors"], "figures": printed["figures"], "mb": size / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model (default: the synthetic 253-tensor CNN)")
    parser.add_argument("--data", type=Path, help=".npz of calibration inputs (needed with --model; for the "
                        "synthetic model: 32 random 3x48x192 images)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-png", action="store_true", help="only the inline page (a)")
    args = parser.parse_args()
    if args.model is not None and args.data is None:
        parser.error("--model needs --data")

    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    with tempfile.TemporaryDirectory(prefix="bench_report.") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / "synthetic_253.onnx"
            synthetic_model(model)
        data = args.data
        if data is None:
            data = tmp / "calib.npz"
            x = np.random.default_rng(1).uniform(-1.0, 1.0, (32, 3, 48, 192)).astype(np.float32)
            np.savez(data, x=x)
        model = fixed_shapes(model, data, tmp) if args.model is not None else model
        print(f"model: {model.name}; data: {data.name}, batches of {args.batch_size}")
        runs = {"(a) --figures inline (default)": ()}
        if not args.skip_png:
            runs["(b) --figures png --workers 1 (the old renderer)"] = ("--figures", "png", "--workers", "1")
            runs["(c) --figures png (one worker per core)"] = ("--figures", "png")
        results = {}
        for k, (label, extra) in enumerate(runs.items()):
            results[label] = r = run_report(model, data, args.batch_size, tmp / f"r{k}", *extra)
            print(f"{label:52s} {r['wall']:7.1f} s wall {r['cpu']:7.1f} s CPU  {r['tensors']} tensors, "
                  f"{r['figures']} figures, {r['mb']:.1f} MB", flush=True)
        base = results["(a) --figures inline (default)"]
        for label, r in results.items():
            if r is not base:
                print(f"{label}: {r['wall'] / base['wall']:.1f}x the wall time of (a), "
                      f"{r['cpu'] / base['cpu']:.1f}x its CPU time")
        verdict = "met" if base["wall"] < GOAL_SECONDS else "NOT met"
        print(f"goal (issue 20): the whole page in under {GOAL_SECONDS:.0f} s on 2 cores: {verdict} "
              f"({base['wall']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
