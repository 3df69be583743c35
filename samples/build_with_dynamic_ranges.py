#!/usr/bin/env python3
"""Build an INT8 TensorRT engine (TensorRT 8.6 to 10.x) from dynamic ranges instead of a calibrator.

    python samples/build_with_dynamic_ranges.py model.onnx --cache model.cache --engine model.plan
    python samples/build_with_dynamic_ranges.py model.onnx --data calib.npz --policy sign-aware --engine model.plan

The ranges come from an existing calibration cache, or from trt-calib's CPU calibration of your data
(onnxruntime, no GPU needed for that step). Each tensor gets set_dynamic_range(-amax, amax): TensorRT keeps
only max(|min|, |max|). --policy sign-aware looks at each tensor's sign structure (one-sided, skewed,
symmetric; needs --data) to choose that amax and reports why. The report lists the tensors left without a
range, which TensorRT runs in higher precision.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="ONNX model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", help="a TensorRT calibration cache to take the ranges from")
    source.add_argument("--data", help="calibration data for a CPU calibration (.npy, .npz, image folder, script)")
    parser.add_argument("--engine", required=True, help="output engine")
    parser.add_argument("--algorithm", default="entropy2", choices=["entropy2", "minmax", "percentile", "mse"],
                        help="CPU calibration algorithm with --data (default: entropy2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--policy", default="symmetric", choices=["symmetric", "sign-aware"])
    parser.add_argument("--shapes", help="dynamic inputs: NAME:MIN,OPT,MAX with dims joined by x")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help works without TensorRT or a GPU.
    from trt_calib.trt.build import build_engine, parse_shapes
    from trt_calib.core.cache import CalibrationCache
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.collect import calibrate
    from trt_calib.ort.data import open_source
    from trt_calib.errors import TrtCalibError

    try:
        if args.cache:
            ranges = CalibrationCache.load(args.cache)
        else:
            source = open_source(args.data, model_inputs(args.model), batch_size=args.batch_size)
            ranges = calibrate(args.model, source, algorithm=args.algorithm)  # CPU, keeps the histograms
        result = build_engine(args.model, ranges=ranges, engine_path=args.engine, range_policy=args.policy,
                              shapes=parse_shapes(args.shapes) if args.shapes else None)
        print(result.ranges_report.summary())
        print(f"wrote {result.engine_path}: {len(result.plan)} bytes, TensorRT {result.trt_version}")
        return 0
    except TrtCalibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
