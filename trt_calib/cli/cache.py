"""`trt-calib inspect | validate | diff | check | convert`: the cache tools on the command line.

`register(subparsers)` adds the five commands; each handler parses nothing itself, calls one function of
`trt_calib.tools`, prints a table (or `--json`) and returns the exit status the command documents.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .._util import read_bounded
from ..errors import TrtCalibError, UsageError
from ._common import (
    add_data_arguments,
    add_json_flag,
    batch_count,
    calibrator_arg,
    fmt_float,
    guard_paths,
    model_paths,
    non_negative_int,
    open_data,
    print_comparison,
    print_json,
    progress_bar,
    threads_arg,
    trt_version_arg,
    write_output,
)

__all__ = ["register"]

_SHOW_PER_CODE = 8  # text output lists this many distinct findings per code unless --all
_SHOW_NAMES = 12  # and this many tensor names for a finding shared by many tensors


def _fmt(value: float | None, spec: str = ".6g") -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `inspect`, `validate`, `diff`, `check` and `convert` to the trt-calib parser."""
    _add_inspect(subparsers)
    _add_validate(subparsers)
    _add_diff(subparsers)
    _add_check(subparsers)
    _add_convert(subparsers)


# ---------------------------------------------------------------------------------------------- inspect
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a TensorRT calibration cache: header, version, algorithm, scales and amax, flags",
        description="Decode a TensorRT calibration cache (any version, 4 to 10.x) into a table of name / scale / amax "
        "and flag suspicious entries (zero, inf, NaN, denormal, duplicate names).",
    )
    p.add_argument("cache", help="calibration cache file (e.g. calibration.cache)")
    add_json_flag(p, help="print machine-readable JSON instead of a table (errors too)")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from ..tools.entries import inspect_cache

    guard_paths(inputs={"CACHE": args.cache}, outputs={})
    report = inspect_cache(args.cache)
    if args.json:
        print_json(report)
        return 0
    print(f"file:        {report['file']}")
    print(f"header:      {report['header']}")
    print(f"TensorRT:    {report['trt_version']}")
    print(f"algorithm:   {report['algorithm']}")
    print(f"entries:     {report['num_entries']}")
    width = max([len(e["name"]) for e in report["entries"]] + [6])
    print()
    print(f"{'tensor':<{width}}  {'hex':>8}  {'scale':>14}  {'amax':>14}  flags")
    for e in report["entries"]:
        flags = ",".join(e["flags"])
        print(f"{e['name']:<{width}}  {e['hex']:>8}  {fmt_float(float(e['scale'])):>14}  {fmt_float(float(e['amax'])):>14}  {flags}")
    counts = report["flag_counts"]
    if counts:
        print()
        print("flags: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    for note in report["notes"]:
        print(f"note: {note['message']}")
    return 0


# ---------------------------------------------------------------------------------------------- validate
def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check a cache against a model and a target TensorRT: header, coverage, suspicious values, provenance",
        description="Check that TensorRT will use CACHE for MODEL as intended: header version and calibrator against "
        "--trt-version/--algorithm (a mismatch makes TensorRT ignore the cache and recalibrate), model tensors "
        "without an entry, entries the model lacks (renumbered exports, TensorRT's unstable (Unnamed Layer* N) "
        "names), duplicates, zero/inf/NaN/denormal scales, outlier ranges, untied pool scales, and a model or "
        "data (--data) that changed since calibration (CACHE.json sidecar, which records the cache's and the "
        "batches' sha256). Exit status: 0 clean, 1 warnings, 3 errors (2: a usage or input error).",
    )
    p.add_argument("cache", help="calibration cache")
    p.add_argument("--model", help="the ONNX model the cache is meant for (coverage and graph checks need it)")
    p.add_argument("--trt-version", type=trt_version_arg, help="the TensorRT version that will read the cache, "
                   "e.g. 8.6.1")
    p.add_argument("--algorithm", type=calibrator_arg, help="the calibrator that will read it: entropy2 "
                   "(EntropyCalibration2, also trtexec --calib), minmax (MinMaxCalibration), entropy, legacy")
    add_json_flag(p, help="print the report as JSON (errors too)")
    p.add_argument("--all", action="store_true", help=f"list every finding (default: {_SHOW_PER_CODE} per kind)")
    p.add_argument("--dla", action="store_true", help="DLA readiness (needs --model): layers DLA cannot run in INT8 "
                   "and why, scales its eligible layers lack, from TensorRT's DLA documentation (docs/qdq.md)")
    add_data_arguments(p, required=False)
    p.set_defaults(handler=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from ..tools.validate import validate_cache

    guard_paths(inputs={"CACHE": args.cache, "--model": model_paths(args.model), "--data": args.data}, outputs={})
    manifest = None
    if args.data is not None:
        from ..ort.model import model_inputs

        if not args.model:
            raise UsageError("--data needs --model (the model's inputs decide how the data is read)")
        from ..ort.model import load_model

        manifest = open_data(args, model_inputs(load_model(args.model, weights=False))).manifest()
    report = validate_cache(args.cache, args.model, trt_version=args.trt_version, algorithm=args.algorithm,
                            data_manifest=manifest, dla=args.dla)
    if args.json:
        print_json(report.to_json())
        return report.exit_code
    print(f"cache:     {report.cache}")
    if report.header is not None:
        print(f"header:    {report.header} (TensorRT {report.trt_version}, {report.algorithm})")
    if report.model:
        print(f"model:     {report.model}")
    target = ", ".join(f"{label} {report.target[key]}" for key, label in (("trt_version", "TensorRT"), ("algorithm", "calibrator")) if report.target.get(key))
    if target:
        print(f"target:    {target}")
    cov = report.coverage
    if cov:
        body = (f" (+ {cov['body_covered']}/{cov['body_tensors']} inside If/Loop/Scan bodies)"
                if cov.get("body_tensors") else "")
        print(f"coverage:  {cov['covered']}/{cov['model_tensors']} model tensors have an entry{body}; "
              f"{cov['cache_entries']} entries: {cov['not_in_model']} not in the model, "
              f"{cov['uncalibrated_in_model']} on tensors TensorRT does not calibrate, {cov['unnamed']} unnamed, "
              f"{cov['internal']} parser-internal, {cov['duplicates']} duplicated")
    if report.dla is not None:
        print(f"DLA:       {report.dla['summary']}")
    print()
    # Findings with the same message (e.g. every missing entry) print once, with their tensors listed.
    groups: dict[tuple[str, str, str], list[str]] = {}
    for f in report.sorted_findings():
        groups.setdefault((f["severity"], f["code"], f["message"]), []).append(f.get("tensor", ""))
    shown: dict[tuple[str, str], int] = {}
    hidden: dict[tuple[str, str], int] = {}
    for (severity, code, message), tensors in groups.items():
        key = (severity, code)
        if not args.all and shown.get(key, 0) >= _SHOW_PER_CODE:
            hidden[key] = hidden.get(key, 0) + len(tensors)
            continue
        shown[key] = shown.get(key, 0) + 1
        named = [t for t in tensors if t]
        if len(named) == 1:
            print(f"{severity:<7} {code} {named[0]}: {message}")
            continue
        print(f"{severity:<7} {code}" + (f" ({len(named)} tensors)" if named else "") + f": {message}")
        if named:
            listed = named if args.all or len(named) <= _SHOW_NAMES else named[:_SHOW_NAMES]
            more = "" if len(listed) == len(named) else f", ... ({len(named) - len(listed)} more)"
            print("        " + ", ".join(listed) + more)
    for (severity, code), n in hidden.items():
        print(f"{severity:<7} {code}: ... and {n} more (--all or --json to list them)")
    counts = report.counts()
    print()
    print(f"{report.verdict}: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)")
    return report.exit_code


# ---------------------------------------------------------------------------------------------- diff
def _add_diff(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two caches tensor by tensor: ratio B/A, ULPs, histogram bins, entries only in one",
        description="Compare two calibration caches (two TensorRT versions, two algorithms, two datasets): per "
        "tensor the ratio B/A, the float32 ULP distance of the scales and the change in histogram bins, largest "
        "|log ratio| first; entries only in one file; header differences. Bins are exact with --histograms-a/-b "
        "(saved by `trt-calib calibrate --save-histograms`), else estimated with bin width A_amax/2048. "
        "Exit status: 0 identical, 1 different.",
    )
    p.add_argument("a", help="first cache (A)")
    p.add_argument("b", help="second cache (B)")
    p.add_argument("--top", type=non_negative_int, default=None, metavar="N", help="show the N largest changes "
                   "(default: all changed tensors in the table, all tensors in --json)")
    p.add_argument("--histograms-a", metavar="H.npz", help="A's saved histograms: exact bin differences")
    p.add_argument("--histograms-b", metavar="H.npz", help="B's saved histograms (used where A's are missing)")
    add_json_flag(p, help="print the comparison as JSON (errors too)")
    p.set_defaults(handler=_run_diff)


def _load_histograms(path: str | None) -> Any:
    if path is None:
        return None
    from ..core.histogram import load_histograms

    try:
        return load_histograms(path)
    except (OSError, ValueError, KeyError) as exc:
        raise TrtCalibError(f"{path}: not a histogram file saved by trt-calib ({exc})") from None


def _run_diff(args: argparse.Namespace) -> int:
    from ..tools.diff import diff_caches

    guard_paths(inputs={"A": args.a, "B": args.b, "--histograms-a": args.histograms_a,
                        "--histograms-b": args.histograms_b}, outputs={})
    diff = diff_caches(args.a, args.b, histograms_a=_load_histograms(args.histograms_a),
                       histograms_b=_load_histograms(args.histograms_b))
    status = 0 if diff.identical else 1
    if args.json:
        print_json(diff.to_json(args.top))
        return status
    print(f"A: {diff.a} ({diff.a_header})")
    print(f"B: {diff.b} ({diff.b_header})")
    for line in diff.header_differences:
        print(f"header differs: {line}")
    for line in diff.duplicate_notes():
        print(f"note: {line}")
    rows = diff.changed if args.top is None else diff.rows[: args.top]
    if rows:
        width = max([len(r.name) for r in rows] + [6])
        exact = any(r.bins_exact for r in rows)
        print()
        print(f"{'tensor':<{width}}  {'A amax':>11}  {'B amax':>11}  {'B/A':>8}  {'ULP':>9}  {'bins':>9}")
        for r in rows:
            ulps = "-" if r.ulps is None else str(r.ulps)
            bins = "-" if r.bins is None else f"{r.bins:+.1f}" + ("" if r.bins_exact else "~")
            print(f"{r.name:<{width}}  {_fmt(r.a_amax):>11}  {_fmt(r.b_amax):>11}  {_fmt(r.ratio, '.4g'):>8}  "
                  f"{ulps:>9}  {bins:>9}")
        if not all(r.bins_exact for r in rows if r.bins is not None):
            note = "; exact where A's histograms were given" if exact else ""
            print("~ estimated: bin width taken as A_amax/2048 (at most this many bins; pass --histograms-a for "
                  f"exact values){note}")
    for label, only in (("only in A", diff.only_a), ("only in B", diff.only_b)):
        if only:
            names = ", ".join(r.name for r in only[:10]) + (f", ... ({len(only)} in all)" if len(only) > 10 else "")
            print(f"{label}: {names}")
    print()
    print(diff.summary())
    return status


# ---------------------------------------------------------------------------------------------- check
def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="recompute a cache on the CPU from the same data and say, per tensor, whether it is consistent",
        description="Recalibrate MODEL on the CPU with the calibrator named in CACHE's header (EntropyCalibration2 "
        "or MinMaxCalibration), emulating the header's TensorRT version, and compare every entry with ours: "
        "exact, same KL bin (entropy2), within --max-ulps, or differs. Exit status: 0 consistent, 1 not.",
    )
    p.add_argument("cache", help="calibration cache to check (e.g. the one TensorRT wrote)")
    p.add_argument("--model", required=True, help="the ONNX model the cache was calibrated for")
    add_data_arguments(p)
    p.add_argument("--trt-version", type=trt_version_arg, default=None, help="TensorRT version to emulate "
                   "(default: the header's); <= 8.0 also ties Concat inputs")
    p.add_argument("--max-ulps", type=non_negative_int, default=None, help="float32 ULPs within which a value "
                   "counts as consistent when the KL bin cannot be compared (default 4)")
    p.add_argument("--threads", type=threads_arg, default=None, help="onnxruntime intra-op threads, 1 to 256 "
                   "(default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p, help="print the per-tensor agreement as JSON (errors too)")
    p.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from ..core.cache import CalibrationCache
    from ..tools.check import check_cache, check_recomputable
    from ._common import model_inputs_of

    guard_paths(inputs={"CACHE": args.cache, "--model": model_paths(args.model), "--data": args.data}, outputs={})
    cache = CalibrationCache.load(args.cache)
    check_recomputable(cache)  # before the data pass: a header-only or foreign cache has nothing to check
    source = open_data(args, model_inputs_of(args.model))
    with progress_bar(args, total=batch_count(source), desc="recomputing") as progress:
        report = check_cache(cache, args.model, source, trt_version=args.trt_version, max_ulps=args.max_ulps,
                             progress=progress, threads=args.threads)
    status = 0 if report.consistent else 1
    if args.json:
        print_json(report.to_json())
        return status
    print(f"{report.cache} ({report.header}) against trt-calib {report.algorithm}, TensorRT {report.trt_version} "
          f"emulated, {report.num_batches} batches" + (f", {report.made_with}" if report.made_with else "") + ":")
    if report.note:
        print(f"note: {report.note}")
    print_comparison(report.comparison, ours_label="recomputed", ref_label="cache")
    if report.not_recomputable:
        print(f"not checked (TensorRT-internal names): {', '.join(report.not_recomputable[:10])}"
              + (" ..." if len(report.not_recomputable) > 10 else ""))
    print("verdict: " + ("consistent" if report.consistent else "NOT consistent"))
    return status


# ---------------------------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="cache -> JSON {name: amax}, JSON -> cache, or rewrite a cache header (explicit flag only)",
        description="Convert between a TensorRT cache and JSON {tensor name: amax}. --to json reads a cache; "
        "--to cache reads JSON (or `calibrate --json` output) and needs --trt-version (default: the installed tensorrt's). A cache -> cache "
        "conversion only rewrites the header, and only with --rewrite-header: TensorRT then uses scales computed "
        "for another version or calibrator without recalibrating. Output is written atomically; the input is "
        "never overwritten without --force.",
    )
    p.add_argument("input", help="calibration cache or JSON file")
    p.add_argument("--to", choices=("json", "cache"), required=True, help="output format")
    p.add_argument("-o", "--output", metavar="OUT", help="file to write (default: standard output)")
    p.add_argument("--trt-version", type=trt_version_arg, help="TensorRT version for the new header (--to cache: "
                   "default the installed tensorrt's; without one it is needed, and --rewrite-header always needs it)")
    p.add_argument("--algorithm", type=calibrator_arg, help="calibrator for the new header: entropy2 (default for "
                   "JSON input), minmax, or a header name such as EntropyCalibration2; a rewrite keeps the cache's "
                   "unless given")
    p.add_argument("--rewrite-header", action="store_true", help="cache -> cache: replace the header, keep the "
                   "scales (read the printed warning)")
    p.add_argument("--force", action="store_true", help="allow OUT to be the input file")
    add_json_flag(p, help="print a JSON summary of what was done (errors too); needs -o")
    p.set_defaults(handler=_run_convert)


def _is_json_file(path: str) -> bool:
    """Whether `path` holds JSON (an object or an array; an array is refused later with a clear message)."""
    return read_bounded(path, 4096).lstrip().startswith((b"{", b"["))


def _run_convert(args: argparse.Namespace) -> int:
    from ..core.cache import CalibrationCache
    from ..tools.convert import cache_from_json, cache_to_json, header_rewrite_warning, rewrite_header

    try:
        guard_paths(inputs={} if args.force else {"INPUT": args.input}, outputs={"-o": args.output})
    except UsageError as exc:
        if "is the input" not in str(exc):
            raise
        raise UsageError(f"{exc} (or --force to replace it)") from None
    if args.json and not args.output:
        raise UsageError("--json prints a summary of the conversion; give -o OUT for the converted file")
    from_json = _is_json_file(args.input)
    warning = None
    trt_source = "--trt-version" if args.trt_version else None
    if args.to == "json":
        if from_json:
            raise TrtCalibError(f"{args.input} is already JSON. Hint: --to cache converts it to a cache")
        if args.rewrite_header or args.trt_version or args.algorithm:
            raise TrtCalibError("--to json writes no header; --rewrite-header, --trt-version and --algorithm "
                                "apply to --to cache")
        cache = CalibrationCache.load(args.input)
        if cache.duplicates():
            warning = (f"{args.input}: duplicated names {', '.join(cache.duplicates()[:5])}: JSON keeps the last "
                       "value of each")
        converted = cache_to_json(cache)
        payload = json.dumps(converted, indent=2, allow_nan=False) + "\n"
        header, entries = cache.header, len(converted)
    elif from_json:
        if args.rewrite_header:
            raise TrtCalibError("--rewrite-header applies to a cache input; JSON -> cache writes a new header "
                                "from --trt-version and --algorithm")
        if not args.trt_version:
            from ..trt.version import installed_tensorrt

            found = installed_tensorrt()
            if found is None or found.version is None:
                why = "no TensorRT is installed here" if found is None else f"found {found.found}"
                raise TrtCalibError("JSON -> cache needs --trt-version: TensorRT ignores a cache whose header names "
                                    f"another version ({why}). Hint: --trt-version 8.6.1 (the TensorRT that will "
                                    "read it)")
            args.trt_version, trt_source = found.version, f"installed {found.found}"
            print(f"the header names TensorRT {found.version}, the installed one ({found.found}); --trt-version "
                  "X.Y.Z for another", file=sys.stderr)
        cache = cache_from_json(args.input, algorithm=args.algorithm or "EntropyCalibration2",
                                trt_version=args.trt_version)
        payload, header, entries = cache.dumps(), cache.header, len(cache)
    else:
        if not args.rewrite_header:
            raise TrtCalibError(f"{args.input} is already a cache; cache -> cache only rewrites its header. Hint: "
                                "--rewrite-header --trt-version X.Y.Z [--algorithm A], and read what that means")
        if not args.trt_version:
            raise TrtCalibError("--rewrite-header needs --trt-version (the TensorRT that will read the cache)")
        old = CalibrationCache.load(args.input)
        cache = rewrite_header(old, trt_version=args.trt_version, algorithm=args.algorithm)
        warning = "WARNING: " + header_rewrite_warning(old, cache)
        payload, header, entries = cache.dumps(), cache.header, len(cache)
    if warning:
        print(warning, file=sys.stderr)
    if args.output:
        write_output(args.output, payload.encode("utf-8"), what="the converted file")
    if args.json:
        print_json({"input": args.input, "output": args.output, "to": args.to, "header": header,
                     "entries": entries, "warning": warning, "trt_version": args.trt_version,
                     "trt_version_source": trt_source})
    elif not args.output:
        sys.stdout.write(payload)
    return 0
