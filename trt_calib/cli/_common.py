"""What every trt-calib command shares: the data options, opening the data they describe, number formatting and
the comparison table. Command modules import from here, never from each other or from `cli.main`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "add_data_arguments",
    "open_data",
    "print_comparison",
    "fmt_float",
    "add_calibrator_dry_run",
    "calibrator_dry_run",
    "model_inputs_of",
]


def fmt_float(value: float) -> str:
    """A float for tables: 9 significant digits, nan and inf spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.9g}"


def add_data_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The data options shared by every command that reads calibration data."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        metavar="PATH",
        help=".npy (single input), .npz (keys = input names), a folder of images (see --preprocess), "
        "or a Python file with a generator of {input_name: batch} (FILE.py or FILE.py:function, default load_data)",
    )
    g.add_argument("--batch-size", type=int, default=None, help="samples per calibration batch (default: the "
                   "model's static batch dim, else 8). TensorRT updates histograms once per batch, so it matters")
    g.add_argument("--last-batch", choices=("drop", "keep", "pad"), default=None,
                   help="what to do with a short last batch (default drop, with a warning)")
    g.add_argument("--shuffle", action="store_true", help="shuffle samples before batching (seed recorded)")
    g.add_argument("--seed", type=int, default=None, help="seed for --shuffle")
    g.add_argument("--offset", type=int, default=None, help="skip this many samples first")
    g.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    g.add_argument("--preprocess", default=None, metavar="SPEC",
                   help="image preprocessing, e.g. size=224,resize=256,mean=0.485/0.456/0.406,"
                   "std=0.229/0.224/0.225,scale=1/255,layout=NCHW,order=RGB")


def open_data(args: argparse.Namespace, inputs: list) -> Any:
    """A `BatchSource` from the data options; only options the user gave are passed (data scripts refuse others)."""
    from ..ort.data import Preprocess, open_source

    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    elif not str(args.data).split(":")[0].endswith(".py"):
        first = inputs[0].shape[0] if inputs and inputs[0].shape else None
        kwargs["batch_size"] = first if isinstance(first, int) and first > 0 else 8
    for key in ("last_batch", "seed", "offset", "limit"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.shuffle:
        kwargs["shuffle"] = True
    if args.preprocess:
        kwargs["preprocess"] = Preprocess.parse(args.preprocess)
    return open_source(args.data, inputs, **kwargs)


def print_comparison(comparison: Any, *, ours_label: str = "ours", ref_label: str = "reference") -> None:
    """Our table next to a reference, one line per tensor, with the ULP difference and the verdict."""
    rows = comparison.rows
    width = max([len(r.name) for r in rows] + [6])
    print(f"{'tensor':<{width}}  {ref_label:>10}  {ours_label:>10}  {'ULP':>5}  {'index':>11}  verdict")
    from ..core.cache import amax_to_scale, scale_to_hex

    def hx(v: float | None) -> str:
        return "-" if v is None else scale_to_hex(amax_to_scale(v))

    for r in rows:
        ulps = "-" if r.ulps is None else str(r.ulps)
        if r.reference_index is not None and r.our_index is not None:
            index = f"{r.reference_index:.2f}/{r.our_index}"
        else:
            index = "-"
        print(f"{r.name:<{width}}  {hx(r.reference_amax):>10}  {hx(r.our_amax):>10}  {ulps:>5}  {index:>11}  {r.verdict}")
    print(comparison.summary())


def add_calibrator_dry_run(parser: argparse.ArgumentParser) -> None:
    """Add `--dry-run` to a command that reads a model and --data: check the data through the calibrator's contract."""
    parser.add_argument(
        "--dry-run", action="store_true",
        help="feed the data through the TensorRT calibrator's callbacks on the CPU (no TensorRT, no GPU) and "
        "report batches, shapes, dtypes and time per batch; writes nothing",
    )


def model_inputs_of(model: Path) -> list[Any]:
    """The model's inputs; ModelError names a missing or unreadable file."""
    from ..ort.collect import model_inputs

    return list(model_inputs(model))


def calibrator_dry_run(
    source: Any,
    inputs: Sequence[Any],
    *,
    algorithm: str = "entropy2",
    cache: str | None = None,
    max_batches: int | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Drive a calibrator over `source` on the CPU, print the summary with `out`, return the exit code (0)."""
    from ..trt.calibrator import CalibratorCore, dry_run

    core = CalibratorCore(source, cache, "host", algorithm=algorithm, input_specs=inputs)
    summary = dry_run(core, names=[s.name for s in inputs], max_batches=max_batches)
    out(str(summary))
    out("dry run: nothing was built or written")
    return 0
