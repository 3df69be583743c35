"""`trt-calib stability MODEL.onnx --data D -o STAB.json`: how much TensorRT's entropy2 scales move with batch order,
batch size and the amount of data, and what that costs end to end. The logic lives in `tools.stability`."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Callable

from ..errors import UsageError
from ._common import (
    add_data_arguments,
    add_executor_arguments,
    add_json_flag,
    data_path,
    open_progress,
    json_text,
    print_json,
    finite_float,
    guard_paths,
    model_paths,
    non_negative_int,
    open_data,
    open_executor,
    positive_int,
    trt_version_arg,
    write_output,
)

__all__ = ["register", "run_stability_command"]

log = logging.getLogger("trt_calib")


def _list_of(parse: Callable[[str], Any]) -> Callable[[str], list]:
    """A comma-separated list, each item checked by `parse` (an argparse type)."""

    def parse_list(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return sorted(set(parse(t) for t in items))

    return parse_list


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib stability`; its handler is `run_stability_command`."""
    from ..core.cache import DEFAULT_TRT_VERSION

    p = sub.add_parser(
        "stability",
        help="how much TensorRT's scales move with batch order, batch size and data size (is the data enough?)",
        description="Calibrate MODEL with TensorRT's entropy2 again and again on the same data: in N random "
        "orders, at other batch sizes, and on growing subsets, each a whole calibration (the model rerun on those "
        "batches, so every amax is exactly what the algorithm gives for that batching). Per tensor: the spread of "
        "the amax (min, max, range in % and in KL bins), and the subset size from which it stays within one bin "
        "of the full data's. Per model: the tensors whose range exceeds --tolerance, and the output error (the "
        "metric of `evaluate`) of the most and least favourable order/batch size, measured on Q/DQ models. "
        "Exit 1 when a tensor is unstable. `report --stability STAB.json` draws it.",
    )
    p.add_argument("model", help="ONNX model")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="STAB.json", help="the results, as JSON")
    p.add_argument("--orders", type=non_negative_int, default=5,
                   help="random sample orders to calibrate at the base batch size (default 5)")
    p.add_argument("--order-seed", type=non_negative_int, default=0,
                   help="seed of the first random order; order i uses seed + i (default 0)")
    p.add_argument("--batch-sizes", type=_list_of(positive_int), default=[8, 16, 32], metavar="B1,B2,...",
                   help="other batch sizes to calibrate at, data in order (default 8,16,32)")
    p.add_argument("--fractions", type=_list_of(finite_float(0, 1, lo_open=True)), default=[0.25, 0.5, 1.0],
                   metavar="F1,F2,...", help="subsets (the first F of the samples) for the settle curve "
                   "(default 0.25,0.5,1)")
    p.add_argument("--tolerance", type=finite_float(0), default=5.0, metavar="PERCENT",
                   help="a tensor is unstable when max - min of its amax exceeds this %% of the base amax (default 5)")
    p.add_argument("--heldout", metavar="PATH", help="held-out data for the end-to-end error (same formats and "
                   "--preprocess as --data; default: the calibration data itself)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the Q/DQ evaluations")
    p.add_argument("--metric", metavar="FILE.py[:FUNCTION]", default=None,
                   help="a task metric for the end-to-end evaluations, which it then ranks: FUNCTION (default "
                   "`metric`) of (fp32_outputs, int8_outputs[, batch]) returning value or (value, higher_is_better"
                   "[, weight]); see docs/accuracy.md")
    p.add_argument("--trt-version", type=trt_version_arg, default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose scale ties to apply (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--max-activation-mb", type=finite_float(0, lo_open=True), default=256,
                   help="run a batch in equal parts when its activations exceed this, in the calibrations and the "
                   "end-to-end evaluations (default 256, as calibrate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_executor_arguments(p)
    add_json_flag(p)
    p.set_defaults(handler=run_stability_command)
    return p


def _samples_of(source: Any) -> tuple[dict, int]:
    from ..ort.data import held_batches
    from ..tools.stability import gather_samples

    return gather_samples(held_batches(source, origin=source.origin, purpose="stability (every variant draws from "
                                       "the samples)"))


def run_stability_command(args: argparse.Namespace) -> int:
    """Plan, calibrate every variant, evaluate, write STAB.json, print the summary; 1 when a tensor is unstable."""
    from ..ort.model import load_model, model_inputs
    from ..tools.provenance import file_sha256
    from ..ort.user_metric import load_metric
    from ..tools.stability import run_stability

    guard_paths(inputs={"MODEL": model_paths(args.model), "--data": args.data, "--heldout": args.heldout,
                        "--metric": data_path(args.metric)},
                outputs={"-o": args.output})
    if args.metric is not None:
        if args.no_end_to_end:
            raise UsageError("--metric scores the end-to-end evaluations, which --no-end-to-end skips. Hint: drop one")
        load_metric(args.metric)  # a bad script fails before any data is read (the workers load it again)
    model = load_model(args.model)
    inputs = model_inputs(model)
    is_script = str(args.data).split(":")[0].endswith(".py")
    last_batch = args.last_batch or "drop"
    if is_script:
        last_batch = "keep"  # a data script's batches are used as it yields them, a short last one included
    pool_args = argparse.Namespace(**vars(args))
    if not is_script:
        pool_args.last_batch = "keep"  # every sample joins the pool; each variant applies --last-batch itself
    source = open_data(pool_args, inputs)
    samples, first = _samples_of(source)
    base_batch_size = args.batch_size or first
    heldout = None
    if args.heldout is not None and not args.no_end_to_end:
        held_args = argparse.Namespace(**vars(args))
        held_args.data, held_args.shuffle, held_args.offset, held_args.limit = args.heldout, False, None, None
        if not str(args.heldout).split(":")[0].endswith(".py"):
            held_args.last_batch = "keep"
        heldout, _ = _samples_of(open_data(held_args, inputs))

    bars: list[Any] = []

    def progress(what: str, total: int) -> Callable[[int], None] | None:
        bar = open_progress(args, total=total, desc=what, unit="run")
        if bar is None:
            return None
        bars.append(bar)
        return bar.update

    meta = {"model": {"path": str(args.model), "sha256": file_sha256(args.model)},
            "data": source.manifest()}
    if args.heldout is not None:
        meta["heldout"] = str(args.heldout)
    try:
        with open_executor(args) as executor:
            result = run_stability(
                model, samples, batch_size=base_batch_size, orders=args.orders, batch_sizes=args.batch_sizes,
                fractions=args.fractions, seed=args.order_seed, tolerance=args.tolerance, last_batch=last_batch,
                trt_version=args.trt_version, heldout=heldout, end_to_end=not args.no_end_to_end,
                executor=executor, progress=progress, max_activation_mb=args.max_activation_mb, meta=meta,
                metric=args.metric,
            )
    finally:
        for bar in bars:
            bar.close()
    record = result.to_json()
    summary = None if args.json else format_summary(record)  # before writing: a summary that fails writes nothing
    write_output(args.output, json_text(record), what="stability results")
    code = 1 if record["summary"]["unstable"] else 0
    if args.json:
        print_json({**record, "output": str(args.output), "exit": code})
    else:
        print(summary)
        log.info("wrote %s", args.output)
    return code


def _pct(v: Any, fmt: str = ".2f") -> str:
    return "-" if not isinstance(v, (int, float)) or not math.isfinite(v) else format(v, fmt)


def _num(v: Any, fmt: str = ".5g") -> str:
    """A number of STAB.json for the table: JSON carries inf and nan as the strings "inf" and "nan"."""
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, fmt) if math.isfinite(v) else str(float(v))
    return str(v)


def format_summary(record: dict[str, Any], *, rows: int = 15) -> str:
    """The terminal view of a STAB.json: the least stable tensors, the count, the end-to-end effect."""
    variants = record["variants"]
    kinds = {k: sum(v["kind"] == k for v in variants) for k in ("order", "batch_size", "subset")}
    lines = [
        f"{len(variants)} calibrations of {record['num_samples']} samples (base batch {record['base_batch_size']}): "
        f"{kinds['order']} random orders, {kinds['batch_size']} other batch sizes, {kinds['subset']} subsets; "
        f"entropy2, TensorRT {record['trt_version']} ties",
    ]
    judged = [t for t in record["tensors"] if t["tied_to"] is None and not t["degenerate"]]
    judged.sort(key=lambda t: -t["range_percent"])
    shown = judged[: max(rows, record["summary"]["unstable"])]
    width = max([len(t["name"]) for t in shown] + [6])
    lines.append(f"{'tensor':<{width}}  {'base amax':>10}  {'min':>10}  {'max':>10}  {'range %':>8}  {'bins':>7}  "
                 f"{'Q/DQ':>4}  settled at")
    for t in shown:
        settled = t["settle"]["settled_at"]
        settle_text = "-" if not record["subset_variants"] else ("not settled" if settled is None else
                                                                  f"{settled} samples")
        flag = "  UNSTABLE" if t["unstable"] else ""
        lines.append(f"{t['name']:<{width}}  {_num(t['base_amax']):>10}  {_num(t['min']):>10}  {_num(t['max']):>10}  "
                     f"{_pct(t['range_percent']):>8}  {_pct(t['range_bins'], '.1f'):>7}  "
                     f"{ {True: 'yes', False: 'no', None: '?'}[t.get('quantized')]:>4}  {settle_text}{flag}")
    if len(judged) > len(shown):
        lines.append(f"... {len(judged) - len(shown)} more tensors, all within the tolerance")
    s = record["summary"]
    lines.append(f"{s['unstable']} of {s['judged']} tensors unstable (amax range > {record['tolerance_percent']:g}% "
                 f"of the base; tensors tied to another's scale and those with amax 0 or inf are not judged)"
                 + (f": {', '.join(s['unstable_tensors'][:10])}" if s["unstable"] else ""))
    if s.get("unstable_quantized") is not None:
        lines.append(f"{len(s['unstable_quantized'])} of them get a Q/DQ pair where quantize_model places them "
                     "(TensorRT's guidance); the others' scales matter only to an implicit-INT8 engine that runs "
                     "their consumers in INT8")
    e2e = record["end_to_end"]
    if "skipped" in e2e:
        lines.append(f"end to end: skipped ({e2e['skipped']})")
    else:
        metric = e2e["metric"]
        by_id = {r["variant"]: r for r in e2e["variants"]}

        def describe(i: int) -> str:
            r = by_id[i]
            extra = f", agreement {100 * r['agreement']:.1f}%" if r.get("agreement") is not None else ""
            return f"{r['label']}: {metric} {_num(r[metric], '.4g')}{extra}"

        task = (f"; ranked by the task metric {e2e['task_metric']}, "
                f"{'higher' if e2e['higher_is_better'] else 'lower'} is better") if e2e.get("task_metric") else ""
        lines.append(f"end to end ({e2e['output']}, {e2e['evaluations']} Q/DQ models on {e2e['on']}{task}):")
        lines.append(f"  most favourable   {describe(e2e['best'])}")
        lines.append(f"  least favourable  {describe(e2e['worst'])}")
        lines.append(f"  base              {describe(0)}")
    return "\n".join(lines)
