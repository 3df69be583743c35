#!/usr/bin/env python3
"""Build an INT8 TensorRT engine (TensorRT 8.6 to 10.x) with trt-calib's calibrator.

    python samples/build_int8_engine.py model.onnx --data calib.npz --engine model.plan --cache model.cache
    python samples/build_int8_engine.py model.onnx --data images/ --batch-size 8 --dry-run

The pieces, in order: the model's inputs, a batch source over your data (trt_calib.ort.data), an
EntropyCalibrator2 (or MinMax, ...) that fails loudly, and build_engine, which checks the first batch
before the long build and re-raises any calibration failure before writing the engine. --dry-run feeds
the data through the calibrator's callbacks on the CPU (no TensorRT, no GPU) to find loader bugs first.
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
    parser.add_argument("--data", required=True, help=".npy, .npz keyed by input name, a folder of images, or a "
                        "data script.py[:function]")
    parser.add_argument("--engine", help="output engine (required unless --dry-run)")
    parser.add_argument("--cache", help="calibration cache to reuse (if it matches) or write")
    parser.add_argument("--algorithm", default="entropy2", choices=["entropy2", "minmax", "entropy", "legacy"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=["auto", "pycuda", "cuda-python", "cupy", "torch"])
    parser.add_argument("--shapes", help="dynamic inputs: NAME:MIN,OPT,MAX with dims joined by x, e.g. "
                        "images:1x3x640x640,8x3x640x640,8x3x640x640 (calibration runs at OPT)")
    parser.add_argument("--dry-run", action="store_true", help="check the data on the CPU only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help works without TensorRT, a GPU, or even trt-calib installed.
    from trt_calib.trt.build import build_engine, parse_shapes
    from trt_calib.trt.calibrator import CalibratorCore, dry_run, make_calibrator
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.data import open_source
    from trt_calib.errors import TrtCalibError

    try:
        inputs = model_inputs(args.model)
        source = open_source(args.data, inputs, batch_size=args.batch_size)
        if args.dry_run:
            core = CalibratorCore(source, args.cache, "host", algorithm=args.algorithm, input_specs=inputs)
            print(dry_run(core, names=[s.name for s in inputs]))
            return 0
        if not args.engine:
            print("error: --engine is required unless --dry-run", file=sys.stderr)
            return 2
        calibrator = make_calibrator(source, args.algorithm, cache_file=args.cache, device=args.device,
                                     input_specs=inputs)
        with calibrator:  # frees the device buffers
            result = build_engine(args.model, calibrator=calibrator, engine_path=args.engine,
                                  shapes=parse_shapes(args.shapes) if args.shapes else None)
        print(f"wrote {result.engine_path}: {len(result.plan)} bytes, TensorRT {result.trt_version}, "
              f"{result.batches_fed} calibration batch(es)")
        return 0
    except TrtCalibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
