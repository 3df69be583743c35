"""What every benchmark prints first and last: the CPU model, its SIMD level, the cores, and the load.

Timings only carry over between runs on the same CPU and an idle machine: another CPU model changes the speed, and
its float kernels (onnxruntime's convolutions, numpy's sums pick AVX-512, AVX2 or NEON code by CPU) can change the
last bits of activations, so `--optimization all` moves other entries on another CPU. Docs quote timings from idle
runs only. Idle is judged by what *other* processes use: the load average also counts the benchmark's own workers and,
for a minute, the run before it, so it is printed but not the verdict. At the start a one-second sample of the CPU
time every process used (/proc/stat); at the end that time over the whole run less this process's and its children's
own (getrusage): above `OTHERS_IDLE` cores on average, the figures are not idle figures.

    from machine import machine_line        # benchmarks/ is the script's folder, so this imports as is
    print(machine_line("start"))
    ...
    print(machine_line("end"))
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

__all__ = ["cpu_model", "simd_level", "usable_cpus", "idle_load", "load_average", "busy_seconds", "own_seconds",
           "CpuWindow", "OTHERS_IDLE", "is_idle", "machine_line", "announce", "start_line"]

OTHERS_IDLE = 0.25
"""Cores other processes may use on average, through a run, for its timings to count as idle figures."""

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
    """The 1-minute load average up to which a machine counts as idle where /proc/stat is missing: 1 plus a quarter
    per core (this project's 2-core virtual machine sits at about 1 with nothing running)."""
    return 1.0 + 0.25 * (cpus or usable_cpus())


IDLE_LOAD = idle_load()


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def busy_seconds() -> float | None:
    """CPU seconds every process has used since boot (user, nice, system, irq; not the hypervisor's steal), from
    /proc/stat; None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_seconds() -> float:
    """CPU seconds this process and the children it has waited for have used."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class CpuWindow:
    """From its creation on: how many cores, on average, processes other than this one and its children used."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.monotonic(), busy_seconds(), own_seconds()

    def others(self) -> float | None:
        """Average cores used by other processes since creation; None without /proc/stat or time passed."""
        busy, wall = busy_seconds(), time.monotonic() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy) - (own_seconds() - self.own)) / wall


_RUN: dict[str, object] = {}  # set by announce(): the run's window and whether it started idle


def _sample(seconds: float = 1.0) -> float | None:
    window = CpuWindow()
    time.sleep(seconds)
    return window.others()


def is_idle() -> bool:
    """Whether other processes left this machine idle: through the run since `announce()` (and at its start), else
    over a one-second sample now."""
    window = _RUN.get("window")
    if isinstance(window, CpuWindow):
        others = window.others()
        return bool(_RUN.get("start_idle", True)) and (others is None or others <= OTHERS_IDLE)
    others = _sample()
    return load_average()[0] <= IDLE_LOAD if others is None else others <= OTHERS_IDLE


def machine_line(when: str = "start") -> str:
    """One line: CPU model, SIMD level, cores, load averages, what other processes used, and whether the figures
    are idle figures."""
    load = " ".join(f"{v:.2f}" for v in load_average())
    window = _RUN.get("window")
    if when == "start" or not isinstance(window, CpuWindow):
        others, span = _sample(), "in the last second"
    else:
        others, span = window.others(), "through the run"
    if others is None:  # no /proc/stat: the load average is all there is
        idle = load_average()[0] <= IDLE_LOAD
        use = f"load average {load}"
    else:
        idle = others <= OTHERS_IDLE and (when == "start" or bool(_RUN.get("start_idle", True)))
        use = f"load average {load}, other processes {others:.2f} cores {span}"
    verdict = "idle" if idle else f"BUSY (other processes above {OTHERS_IDLE} cores): timings are not idle figures, " \
        "ratios at best"
    return f"machine at {when}: {cpu_model()} ({simd_level()}), {usable_cpus()} usable CPUs, {use}: {verdict}"


def announce() -> None:
    """Print `machine_line("start")` now and `machine_line("end")` when the benchmark exits, the end judged by what
    other processes used through the whole run."""
    import atexit

    line = machine_line("start")
    print(line, flush=True)
    _RUN.update(window=CpuWindow(), start_idle=line.endswith(": idle"), start=line)
    atexit.register(lambda: print(machine_line("end"), flush=True))


def start_line() -> str:
    """The line `announce()` printed at the start (its one-second sample is not taken again)."""
    return str(_RUN.get("start") or machine_line("start"))
