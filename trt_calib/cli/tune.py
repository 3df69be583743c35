"""`trt-calib tune`: INT8 to an accuracy target, step by measured step, and the files both TensorRT paths need.

`register(subparsers)` adds the command (handler `run_tune`); the work is `tools.tune.tune`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from ..errors import TrtCalibError, UsageError
from ._common import (
    add_held_out_arguments,
    add_data_arguments,
    add_executor_arguments,
    add_json_flag,
    candidates_arg,
    data_path,
    finite_float,
    guard_paths,
    json_text,
    metric_arg,
    metric_path,
    model_paths,
    non_negative_int,
    open_data,
    open_executor,
    open_progress,
    positive_int,
    print_json,
    same_data,
    split_held_out,
    threads_arg,
    trt_version_arg,
    write_output,
)

__all__ = ["register", "run_tune"]

log = logging.getLogger(__name__)

#: What tune writes into -o DIR.
FILES = {
    "model": "model.rounded.onnx",
    "cache": "model.cache",
    "qdq": "model.qdq.onnx",
    "sensitivity": "sensitivity.json",
    "keep": "keep_precision.txt",
    "json": "tune.json",
    "report": "report.html",
}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib tune MODEL --data D [--eval-data E] [--metric M] [--target ERR] -o DIR`."""
    from ..core.cache import DEFAULT_TRT_VERSION

    p = subparsers.add_parser(
        "tune",
        help="INT8 to an accuracy target: thresholds, weight rounding, bias correction, then the fewest layers in "
        "float, each measured on held-out data",
        description="Try the INT8 improvements from the cheapest up, each a real run on held-out data, until "
        "--target is met: (1) every threshold rule and the best rule per tensor; (2) weight rounding (as "
        "`round-weights`); (3) bias correction against the float model, kept only where it helps; (4) the fewest "
        "units kept in float, ranked by `sensitivity`. Writes into DIR the float model to build "
        "(model.rounded.onnx, when rounding or bias correction is kept), its TensorRT cache (model.cache, "
        "8.6-10.x), the Q/DQ model (model.qdq.onnx, TensorRT 11), the units to keep in higher precision "
        "(sensitivity.json for `build --keep-precision` and `quantize --exclude-nodes-from`, keep_precision.txt, "
        "the trtexec flags), tune.json and report.html. Exit 1 when the target is not met.",
    )
    p.add_argument("model", help="ONNX model (float)")
    add_data_arguments(p)
    add_held_out_arguments(p, measured="every step is")
    m = p.add_argument_group("target")
    m.add_argument("--metric", type=metric_arg, default="auto", metavar="M",
                   help="auto (default: kl for a classifier output, else cosine), kl, cosine, sqnr (dB, higher is "
                   "better), or a metric script FILE.py[:FUNCTION] (docs/accuracy.md)")
    m.add_argument("--target", type=finite_float(), default=None, metavar="ERR",
                   help="stop at the first step that meets this error (<=; >= when higher is better); without it "
                   "every step runs and the best is kept")
    s = p.add_argument_group("steps")
    s.add_argument("--no-rounding", action="store_true", help="skip weight rounding")
    s.add_argument("--no-bias-correction", action="store_true", help="skip bias correction")
    s.add_argument("--max-keep", type=non_negative_int, default=5, metavar="K",
                   help="keep at most K units in float (default 5; 0 skips the step)")
    s.add_argument("--rank-batches", type=positive_int, default=2, metavar="N",
                   help="held-out batches the sensitivity ranking runs on (4 runs per unit; default 2)")
    s.add_argument("--candidates", type=candidates_arg, default="all", metavar="N|all",
                   help="units the ranking measures: all (default; the screen by local error missed the unit that "
                   "matters most on EfficientNet-Lite0, its stem) or N: screen every unit and measure the N largest")
    p.add_argument("--trt-version", type=trt_version_arg, default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose calibration to emulate and whose cache header to write "
                   f"(default {DEFAULT_TRT_VERSION})")
    p.add_argument("--keep-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="precision of the kept units in the printed trtexec flags (default fp16)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the results (made if missing)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads, 1 to 256")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(p, default="serial")
    add_json_flag(p, help="print tune.json on stdout (errors too)")
    p.set_defaults(handler=run_tune)
    return p


def run_tune(args: argparse.Namespace) -> int:
    """Tune, write DIR/*, print the steps; exit 1 if --target is not met."""
    from ..ort.data import held_batches
    from ..ort.model import load_model, model_inputs
    from ..tools.tune import STEPS, report_html, tune

    if args.calib_batches is not None and args.eval_data is not None:
        raise UsageError("--calib-batches splits --data into calibration and held-out batches; it does not go with "
                         "--eval-data")
    folder = Path(args.output)
    inputs = {"MODEL": model_paths(args.model), "--data": data_path(args.data),
              "--eval-data": data_path(args.eval_data), "--metric": metric_path(args.metric)}
    outputs = {f"-o {name}": str(folder / name) for name in FILES.values()} if folder.is_dir() else {}
    guard_paths(inputs=inputs, outputs=outputs, folders={"-o": folder})
    if args.eval_data is not None and same_data(args.data, args.eval_data):
        raise UsageError(f"--eval-data {args.eval_data} is --data {args.data}: every step would be chosen and scored on "
                         "the batches it was calibrated on, which hides what INT8 costs on new data. Hint: drop "
                         "--eval-data to hold out the later batches of --data, or give other data")
    model = load_model(args.model)
    specs = model_inputs(model)
    calib, held, padded, what = split_held_out(args, open_data(args, specs), specs, purpose="tune")
    if args.eval_data is not None:  # the calibration batches are still the source: tune keeps them too
        calib = list(held_batches(calib, origin=str(args.data), purpose="tune"))
    if args.eval_batches is not None and args.eval_batches < len(held):
        held, padded = held[: args.eval_batches], 0
        what["evaluation_data"] += f", first {args.eval_batches} used"
    steps = [s for s in STEPS if not (s == "weight rounding" and args.no_rounding)
             and not (s == "bias correction" and args.no_bias_correction)]

    bar = open_progress(args, total=None, desc="tune", unit="run") if not args.json else None

    def stage(text: str) -> None:
        if bar is not None:
            bar.set_description(text.split(":")[0])
        log.info("%s", text)

    with open_executor(args) as executor:
        try:
            result = tune(
                model, calib, held, metric=args.metric, target=args.target, steps=steps, max_keep=args.max_keep,
                rank_batches=args.rank_batches, candidates=args.candidates, trt_version=args.trt_version,
                padded=padded, executor=executor,
                threads=args.threads, progress=bar.update if bar is not None else None, stage=stage,
            )
        finally:
            if bar is not None:
                bar.close()

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    changed = result.rounded or result.bias_corrected or bool(result.kept and result.rounded)
    build_model = str(folder / FILES["model"]) if changed else str(args.model)
    if changed:
        _write_model(folder / FILES["model"], result.float_model, "the tuned float model")
        files[FILES["model"]] = ("the float model to build with model.cache: "
                                 + ", ".join(w for w, on in (("rounded weights", result.rounded),
                                                            ("corrected biases", result.bias_corrected)) if on))
    cache = result.cache(args.trt_version)
    write_output(folder / FILES["cache"], cache.to_bytes(), what="the cache")
    files[FILES["cache"]] = f"TensorRT {args.trt_version} calibration cache ({cache.header}) for {build_model}"
    _write_model(folder / FILES["qdq"], result.qdq_model(), "the Q/DQ model")
    files[FILES["qdq"]] = "Q/DQ model for TensorRT 11 (the kept units in float)"
    flags: list[str] = []
    if result.sensitivity is not None:
        ranking = result.sensitivity
        ranking.chosen_k = len(result.kept)
        ranking.chosen_reason = f"chosen by trt-calib tune ({len(result.kept)} unit(s) kept in float)"
        write_output(folder / FILES["sensitivity"], json_text(ranking.to_json()), what="the sensitivity ranking")
        files[FILES["sensitivity"]] = "the ranking, its chosen k the units tune keeps (build --keep-precision)"
    if result.kept:
        write_output(folder / FILES["keep"], ",".join(result.kept) + "\n", what="the kept units")
        files[FILES["keep"]] = "the units kept in float, comma-separated (build --keep-precision \"$(cat ...)\")"
        flags = result.trtexec_flags(args.keep_dtype)
    commands = _commands(args, folder, build_model, result, flags)
    document = result.to_json()
    document.update(model=str(args.model), output=str(folder), trt_version=args.trt_version, **what,
                    files={**files, FILES["json"]: "this file", FILES["report"]: "the report page"},
                    trtexec=" ".join(flags), commands=commands)
    if result.rounding is not None:
        document["rounding"] = result.rounding.to_json()
    write_output(folder / FILES["json"], json_text(document), what="tune.json")
    page = report_html(result, title=f"trt-calib tune {Path(args.model).name}", files=files, commands=commands)
    write_output(folder / FILES["report"], page, what="the report page")
    if args.json:
        print_json(document)
    elif not args.quiet:
        print(_table(result))
        print("\n" + "\n".join(commands))
    if args.target is not None and not result.target_met:
        log.warning("--target %g not met: the best reached is %.6g", args.target, result.error)
        return 1
    return 0


def _write_model(path: Path, model: Any, what: str) -> None:
    try:
        payload = model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise TrtCalibError(f"{path}: {what} cannot be serialised ({exc})") from None
    write_output(path, payload, what=what)


def _commands(args: argparse.Namespace, folder: Path, build_model: str, result: Any, flags: list[str]) -> list[str]:
    q = shlex.quote
    algorithm = "minmax" if result.algorithm == "minmax" else "entropy2"
    keep = f" --keep-precision {q(str(folder / FILES['sensitivity']))}" if result.kept else ""
    lines = [
        f"TensorRT 8.6-10.x: trt-calib build {q(build_model)} --cache {q(str(folder / FILES['cache']))} "
        f"--algorithm {algorithm}{keep} --engine model.plan",
        f"trtexec (8.6-10.x): trtexec --onnx={q(build_model)} --int8 --fp16 --calib={q(str(folder / FILES['cache']))}"
        + (" " + " ".join(flags) if flags else ""),
        f"TensorRT 11: trtexec --onnx={q(str(folder / FILES['qdq']))} --fp16",
    ]
    return lines


def _table(result: Any) -> str:
    lines = [f"metric: {result.metric_description} ({'higher' if result.higher_is_better else 'lower'} is better)"]
    for step in result.steps:
        err = "-" if step.error is None else f"{step.error:.5g}"
        lines.append(f"{step.name:<16} {err:>10}  {'kept' if step.kept else '    '}  {step.seconds:7.1f}s  {step.note}")
        for c in step.candidates:
            ce = "-" if c.get("error") is None else f"{c['error']:.5g}"
            lines.append(f"    {str(c['name']):<44} {ce:>10}")
    if result.target is None:
        lines.append(f"final: {result.error:.5g} (no target given)")
    else:
        lines.append(f"final: {result.error:.5g}, target {result.target:g} {'met' if result.target_met else 'NOT met'}")
    return "\n".join(lines)
