"""`trt-calib doctor`: what this machine has for TensorRT INT8 (versions, GPU, INT8/FP16) and whether trt-calib works
on it, end to end on the bundled LeNet when TensorRT and a GPU are there. Made for pasting into bug reports.

`register(subparsers)` adds the command (handler `run_doctor_command`); the checks live in `trt_calib.trt.doctor`.
Exit 0 when no check failed, 1 when one did (skips are no failure).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_device_argument, add_json_flag, print_json, write_output

__all__ = ["register", "run_doctor_command"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trt-calib doctor [--device D] [--json]`; its handler is `run_doctor_command`."""
    p = subparsers.add_parser(
        "doctor",
        help="check this machine: TensorRT, GPU libraries, GPU, INT8/FP16, and trt-calib end to end on LeNet",
        description="Versions and capabilities, the CPU checks (the bundled sampleINT8 LeNet against the table "
        "TensorRT 7 published; the cache format's round trip) and, with TensorRT and a GPU, LeNet built in INT8 "
        "with trt-calib's EntropyCalibrator2, its cache compared with our recomputation and with TensorRT 7's "
        "table, rebuilt from the cache and with set_dynamic_range overrides (TensorRT 11: the Q/DQ build). "
        "Each check is pass, fail or skip with a reason; include the output in bug reports. Writes nothing.",
    )
    add_device_argument(p)
    add_json_flag(p, help='print {"tensorrt": version or null, "checks": [{"name", "status", "detail"}]} on stdout')
    p.set_defaults(handler=run_doctor_command)
    return p


def _qdq_model(model: Path, cache: Any, out: Path) -> Path:
    """LeNet quantized to Q/DQ from `cache`, saved to `out` (the TensorRT 11 build of the doctor)."""
    from ..ort.model import serialize_model
    from ..qdq import quantize_model

    qdq, _ = quantize_model(str(model), cache)
    return write_output(out, serialize_model(qdq, role="the Q/DQ LeNet"), what="Q/DQ model")


def run_doctor_command(args: argparse.Namespace) -> int:
    """The `doctor` command: print the table (or JSON); 1 when a check failed."""
    from ..trt.doctor import run_doctor

    report = run_doctor(device=args.device, qdq_model=_qdq_model)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.table())
    return 1 if report.failed else 0
