"""Per-unit INT8 sensitivity: what it costs against plain inference on the models users bring, and whether the
screened ranking finds the units the exhaustive one finds.

    python3 benchmarks/bench_sensitivity.py                    # every part below
    python3 benchmarks/bench_sensitivity.py --only effnet      # EfficientNet-Lite0 only (about 10 min loaded)
    python3 benchmarks/bench_sensitivity.py --only yolo,ocr    # the zoo models only
    python3 benchmarks/bench_sensitivity.py --json out.json --markdown

Parts (issue 20's goals, printed with met / NOT met):

- ``effnet``: EfficientNet-Lite0 (`artifacts/efficientnet_lite0/`, made by `samples/efficientnet_lite0/export.py` if
  missing), TensorRT's entropy2 thresholds from its 128 calibration crops. The ranking (`sensitivity`, greedy up to
  k = 5, default screening) on the first `--rank-crops` held-out crops, on the serial and the local executor (the
  JSON must be identical), and the exhaustive ranking (`candidates="all"`: every unit measured); their top 10 side
  by side. Then, on the other held-out crops (never seen by either ranking), the mean KL(FP32 || INT8) with every
  unit INT8, with the top 1, 3, 5 units of the ranking kept in float, the exhaustive ranking's top 3, 5 random draws
  of as many units, and the first and last unit. Goal: the top 3 cut the KL by >= 50%.
- ``yolo``: YOLOv8n at 320 (`320n.onnx` of nudenet==3.4.2), 16 held-out images in batches of 8 (32 others
  calibrate), greedy to k = 3 (`--max-keep 3`), on the serial and the local executor, against one plain onnxruntime
  pass (default session options, all cores) over the same 16 images, timed before and after in this process.
  Goal: <= 40x.
- ``ocr``: PP-OCRv4 det (3x320x480) and rec (3x48x320) of rapidocr-onnxruntime==1.4.4 through the command line at
  its defaults (local executor, --max-keep 10, calibration on the first half of 32 samples in batches of 8, measured
  on the other half). Goal: each under 5 minutes on 2 cores.

Models are looked up by file name under `artifacts/zoo/` (`samples/zoo/`'s build), then `--models` (default
/work/zoo-raw/models). Their data is made here, deterministically: scikit-image's photographs when it is installed
(else smooth noise) for YOLO and det, text lines drawn with Pillow for det and rec, normalised as each package's own
preprocessing does. Timings depend on the machine's load; the load average and CPU are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import announce, machine_line  # noqa: E402  benchmarks/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "efficientnet_lite0"
ZOO = REPO / "artifacts" / "zoo"
RAW_MODELS = Path("/work/zoo-raw/models")
BATCH = 16
SIZES = (1, 3, 5)
DRAWS = 5
PARTS = ("effnet", "yolo", "ocr")

log = logging.getLogger("bench_sensitivity")


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _find(name: str, models: Path) -> Path:
    for root in (ZOO, models):
        if root.is_dir():
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0]
    raise SystemExit(f"{name}: not under {ZOO} or {models}. Hint: build the zoo (samples/zoo/) or give --models DIR")


# ---------------------------------------------------------------------------------------------- data
def _photos(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, height, width, 3) uint8 crops of scikit-image's photographs, or smooth noise without it."""
    rng = np.random.default_rng(seed)
    from PIL import Image

    sources = []
    try:
        import skimage.data as d

        for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                     "camera", "coins", "moon", "page", "text", "horse", "brick", "grass", "gravel", "clock"):
            try:
                image = np.asarray(getattr(d, name)())
            except Exception:  # an image that needs a download: skip it
                continue
            if image.dtype == bool:
                image = image.astype(np.uint8) * 255
            if image.ndim == 2:
                image = np.stack([image] * 3, -1)
            sources.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    except ImportError:
        log.info("scikit-image is not installed: smooth noise instead of photographs")
    out = []
    for i in range(count):
        if sources:
            image = sources[i % len(sources)]
            h, w = image.shape[:2]
            scale = rng.uniform(0.5, 1.0)
            ch, cw = int(min(h, w * height / width) * scale), int(min(w, h * width / height) * scale)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = Image.fromarray(image[y : y + ch, x : x + cw]).resize((width, height), Image.BILINEAR)
        else:
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            crop = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        out.append(np.asarray(crop))
    return np.stack(out)


_WORDS = ("INT8", "TensorRT", "calibration", "entropy", "histogram", "threshold", "scale", "layer", "tensor",
          "Shanghai", "2024-05-17", "invoice", "total 128.40", "No. 5521", "quantization", "model", "receipt")


def _text_lines(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, height, width, 3) uint8 lines of dark text on light paper, drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        paper = int(rng.integers(200, 256))
        image = Image.new("RGB", (width, height), (paper, paper, int(rng.integers(180, 256))))
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=int(height * rng.uniform(0.55, 0.75)))
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 4))))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        draw.text((int(rng.integers(2, 12)), int(height * 0.1)), words, fill=ink, font=font)
        out.append(np.asarray(image))
    return np.stack(out)


def _text_pages(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Photographs with lines of text drawn over them: what a text detector is fed."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = []
    for photo in _photos(count, height, width, seed):
        image = Image.fromarray(photo)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 7))):
            font = ImageFont.load_default(size=int(rng.integers(14, 32)))
            xy = (int(rng.integers(0, width // 2)), int(rng.integers(0, height - 32)))
            draw.text(xy, " ".join(rng.choice(_WORDS, size=2)), fill=(20, 20, 20), font=font)
        out.append(np.asarray(image))
    return np.stack(out)


def _nchw(images: np.ndarray, mean: float | tuple = 0.0, std: float | tuple = 1.0) -> np.ndarray:
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0
def _batches(x: np.ndarray, size: int = BATCH, name: str = "input") -> list[dict[str, np.ndarray]]:
    return [{name: np.ascontiguousarray(x[i : i + size])} for i in range(0, len(x) - size + 1, size)]


def _artifacts(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    if not all((folder / f).is_file() for f in ("model.onnx", "calib.npz", "heldout.npz")):
        log.info("%s is incomplete: running samples/efficientnet_lite0/export.py", folder)
        subprocess.run([sys.executable, str(REPO / "samples" / "efficientnet_lite0" / "export.py"), "--out",
                        str(folder)], check=True)
    return folder / "model.onnx", np.load(folder / "calib.npz")["input"], np.load(folder / "heldout.npz")["input"]


def _ranking(model: Any, scales: Any, batches: list, kind: str, workers: int | None, desc: str,
             **kwargs: Any) -> tuple[Any, float]:
    from tqdm import tqdm

    from trt_calib.ort.executor import make_executor
    from trt_calib.qdq.sensitivity import sensitivity

    bar = tqdm(desc=desc, unit="run", leave=False, file=sys.stderr)
    started = time.perf_counter()
    with make_executor(kind, workers=workers if kind != "serial" else None) as ex:
        result = sensitivity(model, scales, batches, executor=ex, progress=bar.update,
                             total=lambda n: setattr(bar, "total", n), **kwargs)
    bar.close()
    return result, time.perf_counter() - started


def bench_effnet(args: argparse.Namespace, report: dict[str, Any]) -> list[tuple[str, bool]]:
    from trt_calib.ort.collect import calibrate
    from trt_calib.ort.executor import make_executor
    from trt_calib.qdq.sensitivity import measure_kept

    model, calib, held = _artifacts(Path(args.artifacts))
    rank_batches, test_batches = _batches(held[: args.rank_crops]), _batches(held[args.rank_crops :])
    scales = calibrate(model, _batches(calib))
    common = dict(metric="kl", max_keep=max(SIZES))
    serial, serial_s = _ranking(model, scales, rank_batches, "serial", None, "ranking (serial)", **common)
    local, local_s = _ranking(model, scales, rank_batches, "local", args.workers, "ranking (local)", **common)
    a, b = serial.to_json(), local.to_json()
    a.pop("run"), b.pop("run")
    identical = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    exhaustive = None
    if not args.no_exhaustive:
        exhaustive, exhaustive_s = _ranking(model, scales, rank_batches, "local", args.workers,
                                            "exhaustive ranking (local)", candidates="all", **common)
    units = [u.node for u in serial.units]
    every = units + [u["node"] for u in serial.screened_out]
    order = sorted(every, key=lambda n: [i for i, node in enumerate(_node_names(model)) if node == n][0])

    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[str]] = {"every unit INT8": []}
    for k in SIZES:
        sets[f"top {k} (ranking)"] = units[:k]
        for d in range(DRAWS):
            sets[f"random {k} #{d + 1}"] = [str(n) for n in rng.choice(every, size=k, replace=False)]
    if exhaustive is not None:
        sets["top 3 (exhaustive ranking)"] = [u.node for u in exhaustive.units[:3]]
    sets["first + last"] = [order[0], order[-1]]
    from tqdm import tqdm

    with make_executor("local", workers=args.workers) as ex:
        bar = tqdm(total=len(sets), desc="held-out KL", unit="run", leave=False, file=sys.stderr)
        _, errors = measure_kept(model, scales, test_batches, list(sets.values()), metric="kl", executor=ex,
                                 progress=bar.update)
        bar.close()
    kl = dict(zip(sets, errors))
    base = kl["every unit INT8"]

    print(f"\n== EfficientNet-Lite0, entropy2 thresholds, {len(every)} units, ranking on {args.rank_crops} held-out "
          f"crops ({serial.screening['measured']} measured after screening, greedy up to k = {max(SIZES)})")
    print(f"  serial  {serial_s:7.1f} s  ({serial.run['runs']} runs; phases {serial.run['phase_seconds']})")
    print(f"  local   {local_s:7.1f} s  ({local.run['workers']} workers); results identical: {identical}")
    if exhaustive is not None:
        print(f"  exhaustive (every unit measured, local) {exhaustive_s:7.1f} s = {exhaustive_s / local_s:.1f}x the "
              "screened ranking")
        print(f"\n  {'rank':>4}  {'screened ranking':<40} {'exhaustive ranking':<40}")
        for i in range(10):
            ours = f"{units[i]} ({serial.units[i].excluded:.4f})" if i < len(units) else "-"
            theirs = exhaustive.units[i]
            print(f"  {i + 1:>4}  {ours:<40} {theirs.node} ({theirs.excluded:.4f})")
    print(f"\n  mean KL(FP32 || INT8) on the other {len(test_batches) * BATCH} held-out crops:")
    rows = [("every unit INT8", 0, base, None)]
    for k in SIZES:
        draws = [kl[f"random {k} #{d + 1}"] for d in range(DRAWS)]
        rows.append((f"top {k} by the ranking", k, kl[f"top {k} (ranking)"], None))
        rows.append((f"{k} random units (mean of {DRAWS})", k, float(np.mean(draws)),
                     f"range {min(draws):.4f}-{max(draws):.4f}"))
    if exhaustive is not None:
        rows.append(("top 3 by the exhaustive ranking", 3, kl["top 3 (exhaustive ranking)"], None))
    rows.append(("first + last unit", 2, kl["first + last"], f"{order[0]}, {order[-1]}"))
    print(f"    {'kept in float':<34} {'k':>2}  {'mean KL':>8}  {'vs all INT8':>11}")
    for label, k, value, note in rows:
        print(f"    {label:<34} {k:>2}  {value:8.4f}  {100 * (value / base - 1):+10.1f}%" + (f"  {note}" if note else ""))
    if args.markdown:
        print("\n| kept in float (EfficientNet-Lite0, entropy2) | k | mean KL | vs every unit INT8 |")
        print("|---|---|---|---|")
        for label, k, value, note in rows:
            print(f"| {label}{' (' + note + ')' if note else ''} | {k} | {value:.4f} | {100 * (value / base - 1):+.1f}% |")
    cut = 1 - kl["top 3 (ranking)"] / base
    random3 = float(np.mean([kl[f"random 3 #{d + 1}"] for d in range(DRAWS)]))
    gain_ratio = (base - kl["top 3 (ranking)"]) / max(base - random3, 1e-12)
    report["effnet"] = {"serial_seconds": serial_s, "local_seconds": local_s, "identical": identical,
                        "exhaustive_seconds": None if exhaustive is None else exhaustive_s, "kl": kl,
                        "ranking": serial.to_json(), "exhaustive_top10": None if exhaustive is None else
                        [u.node for u in exhaustive.units[:10]]}
    return [(f"EfficientNet-Lite0: top 3 kept in float cut the held-out KL by >= 50% ({base:.4f} -> "
             f"{kl['top 3 (ranking)']:.4f}, {100 * cut:.0f}%)", cut >= 0.5),
            (f"EfficientNet-Lite0: the ranking's reduction (k=3) >= 2x the random draws' ({gain_ratio:.1f}x)",
             gain_ratio >= 2),
            ("EfficientNet-Lite0: serial and local results identical", identical)]


def _node_names(model: Path) -> list[str]:
    import onnx

    from trt_calib.qdq.graph import node_label

    return [node_label(n, i) for i, n in enumerate(onnx.load(str(model), load_external_data=False).graph.node)]


# ---------------------------------------------------------------------------------------------- YOLOv8n
def bench_yolo(args: argparse.Namespace, report: dict[str, Any]) -> list[tuple[str, bool]]:
    import onnxruntime as ort

    from trt_calib.ort.collect import calibrate

    model = _find("320n.onnx", Path(args.models))
    x = _nchw(_photos(48, 320, 320, seed=20))
    held, calib = _batches(x[:16], 8, "images"), _batches(x[16:], 8, "images")
    scales = calibrate(model, calib)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def plain() -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for batch in held:
                session.run(None, batch)
            best = min(best, time.perf_counter() - started)
        return best

    plain()  # warm-up
    before = plain()
    runs = {}
    for kind in ("serial", "local"):
        result, seconds = _ranking(model, scales, held, kind, args.workers, f"YOLOv8n ({kind})", max_keep=3)
        runs[kind] = (result, seconds)
    after = plain()
    one = (before + after) / 2
    print(f"\n== YOLOv8n (320n.onnx), 16 held-out images in batches of 8, greedy to k = 3, "
          f"{runs['serial'][0].screening['measured']} of {runs['serial'][0].screening['units']} units measured")
    print(f"  one plain onnxruntime pass over the 16 images: {before:.3f} s before, {after:.3f} s after")
    verdicts = []
    for kind, (result, seconds) in runs.items():
        ratio = seconds / one
        print(f"  {kind:<7} {seconds:7.1f} s = {ratio:5.1f}x one plain pass  ({result.run['runs']} runs; phases "
              f"{result.run['phase_seconds']}; parts of {result.run['part_samples']} samples)")
        verdicts.append((f"YOLOv8n, {kind}: <= 40x one plain onnxruntime pass ({ratio:.1f}x)", ratio <= 40))
    result = runs["serial"][0]
    print("  top 3: " + ", ".join(f"{u.node} ({u.excluded:.4g})" for u in result.units[:3]) +
          f"; every unit INT8 {result.baseline_error:.4g}, k=3 {result.greedy[-1].error:.4g} ({result.metric.name})")
    report["yolo"] = {"plain_seconds": [before, after], **{k: {"seconds": s, "run": r.run} for k, (r, s) in runs.items()}}
    return verdicts


# ---------------------------------------------------------------------------------------------- PP-OCRv4
def bench_ocr(args: argparse.Namespace, report: dict[str, Any]) -> list[tuple[str, bool]]:
    from trt_calib.cli import main as cli

    cases = {
        "det": ("ch_PP-OCRv4_det_infer.onnx",
                lambda: _nchw(_text_pages(32, 320, 480, seed=30), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
        "rec": ("ch_PP-OCRv4_rec_infer.onnx", lambda: _nchw(_text_lines(32, 48, 320, seed=31), 0.5, 0.5)),
    }
    verdicts = []
    report["ocr"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sens-") as folder:
        for name, (file, make) in cases.items():
            model = _find(file, Path(args.models))
            data = Path(folder) / f"{name}.npy"
            np.save(data, make())
            out = Path(folder) / f"{name}.sens.json"
            started = time.perf_counter()
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the command's own table
                code = cli(["sensitivity", str(model), "--data", str(data), "-o", str(out), "-q", "--no-progress"]
                           + (["--workers", str(args.workers)] if args.workers else []))
            seconds = time.perf_counter() - started
            doc = json.loads(out.read_text()) if out.exists() else {}
            run = doc.get("run", {})
            print(f"\n== PP-OCRv4 {name} ({file}) at the defaults: {seconds:.1f} s, exit {code}; "
                  f"{doc.get('screening', {}).get('measured')} of {doc.get('screening', {}).get('units')} units "
                  f"measured, {run.get('runs')} runs, phases {run.get('phase_seconds')}, parts of "
                  f"{run.get('part_samples')} samples; chosen k = {doc.get('chosen', {}).get('k')} "
                  f"({doc.get('metric')} {doc.get('baseline_error')} -> "
                  f"{next((p['error'] for p in doc.get('greedy', []) if p['k'] == doc.get('chosen', {}).get('k')), None)})")
            report["ocr"][name] = {"seconds": seconds, "exit": code, "run": run}
            verdicts.append((f"PP-OCRv4 {name} at the defaults under 5 minutes ({seconds:.0f} s)",
                             code in (0, 1) and seconds < 300))
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {', '.join(PARTS)} (default all)")
    parser.add_argument("--artifacts", default=str(ARTIFACTS), help=f"EfficientNet-Lite0 folder (default {ARTIFACTS})")
    parser.add_argument("--models", default=str(RAW_MODELS), help="where the zoo's ONNX files are when artifacts/zoo "
                        f"has none (default {RAW_MODELS})")
    parser.add_argument("--rank-crops", type=int, default=32, help="held-out crops the EfficientNet ranking runs on "
                        "(default 32, a multiple of 16); its KL table uses the other held-out crops")
    parser.add_argument("--no-exhaustive", action="store_true", help="skip EfficientNet's exhaustive ranking")
    parser.add_argument("--workers", type=int, default=None, help="local executor processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the numbers as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the KL table as Markdown")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("trt_calib").setLevel(logging.WARNING)
    import onnxruntime

    started = time.perf_counter()
    announce()  # CPU model, SIMD level, cores and load, at the start and at the end
    print(f"bench_sensitivity: onnxruntime {onnxruntime.__version__} CPU, Q/DQ graphs as written")
    report: dict[str, Any] = {}
    verdicts: list[tuple[str, bool]] = []
    for part in parts:
        verdicts += {"effnet": bench_effnet, "yolo": bench_yolo, "ocr": bench_ocr}[part](args, report)
    print(f"\ngoals ({machine_line('the end')}; peak RSS {_peak_mb():.0f} MB):")
    for text, ok in verdicts:
        print(f"  {text}: {_verdict(ok)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        from trt_calib._util import atomic_write

        report["goals"] = [{"goal": text, "met": ok} for text, ok in verdicts]
        atomic_write(args.json, json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
