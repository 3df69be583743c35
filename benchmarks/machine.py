"""What every benchmark prints first and last: the CPU model, its SIMD level, the cores, and the load.

Timings only carry over between runs on the same CPU and an idle machine: another CPU model changes the speed, and
its float kernels (onnxruntime's convolutions, numpy's sums pick AVX-512, AVX2 or NEON code by CPU) can change the
last bits of activations, so `--optimization all` moves other entries on another CPU. A run whose load average
exceeds `IDLE_LOAD` says that its figures are not idle figures; docs quote timings from idle runs only.

    from machine import machine_line        # benchmarks/ is the script's folder, so this imports as is
    print(machine_line("start"))
    ...
    print(machine_line("end"))
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "simd_level", "usable_cpus", "idle_load", "load_average", "is_idle", "machine_line", "announce"]

_SIMD = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Processor", "cpu model") and value.strip():
            return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def simd_level() -> str:
    """The widest SIMD extension the CPU reports (what numpy's and onnxruntime's kernels dispatch on)."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((f for f in _SIMD if f in flags), "unknown")


def usable_cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_load(cpus: int | None = None) -> float:
    """The 1-minute load average up to which a machine counts as idle: 1 plus a quarter per core (this project's
    2-core virtual machine sits at about 1 with nothing running)."""
    return 1.0 + 0.25 * (cpus or usable_cpus())


IDLE_LOAD = idle_load()


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def is_idle() -> bool:
    """Whether the 1-minute load average is at most `IDLE_LOAD`."""
    return load_average()[0] <= IDLE_LOAD


def machine_line(when: str = "start") -> str:
    """One line: CPU model, SIMD level, cores, load averages, and whether the figures are idle figures."""
    load = " ".join(f"{v:.2f}" for v in load_average())
    verdict = "idle" if is_idle() else f"BUSY (above {IDLE_LOAD:.2f}): timings are not idle figures, ratios at best"
    return (f"machine at {when}: {cpu_model()} ({simd_level()}), {usable_cpus()} usable CPUs, load average {load}: "
            f"{verdict}")


def announce() -> None:
    """Print `machine_line("start")` now and `machine_line("end")` when the benchmark exits."""
    import atexit

    print(machine_line("start"), flush=True)
    atexit.register(lambda: print(machine_line("end"), flush=True))
