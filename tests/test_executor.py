"""The executor interface: the same results, in order, on this process, local worker processes and a real Dask cluster."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from trt_calib.core.histogram import AbsHistogram
from trt_calib.core.thresholds import entropy_search
from trt_calib.errors import UsageError
from trt_calib.ort.executor import (
    PARENT_POLL_S, DaskExecutor, LocalExecutor, SerialExecutor, make_executor, per_process,
)


def _histograms(n: int = 6) -> list[AbsHistogram]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        h = AbsHistogram()
        h.update(np.maximum(rng.normal(size=20_000), 0).astype(np.float32) * (i + 1))
        out.append(h)
    return out


def _search(h: AbsHistogram) -> tuple[float, int]:
    result = entropy_search(h)
    return result.amax, result.index


@pytest.fixture(scope="module")
def expected() -> list[tuple[float, int]]:
    return SerialExecutor().map(_search, _histograms())


def test_serial_executor_maps_in_order_with_progress(expected):
    ticks = []
    assert SerialExecutor().map(_search, _histograms(), progress=ticks.append) == expected
    assert ticks == [1] * len(expected)
    assert len({index for _, index in expected}) > 1  # the histograms differ, so order matters


def test_local_processes_give_the_serial_results_in_order(expected):
    ticks = []
    with LocalExecutor(2) as ex:
        got = ex.map(entropy_search, _histograms(), progress=ticks.append)
    assert [(r.amax, r.index) for r in got] == expected
    assert len(ticks) == len(expected)


def _slow_index(item: tuple[int, float]) -> int:
    time.sleep(item[1])
    return item[0]


@pytest.mark.parametrize("kind", ["serial", "local", "dask"])
def test_on_result_hands_each_result_over_as_it_finishes_with_its_index(kind):
    # item 0 sleeps longest: on two workers, items 1 and 2 finish (and are handed over) before it
    items = [(0, 1.0), (1, 0.0), (2, 0.0)]
    seen = []
    with make_executor(kind, workers=None if kind == "serial" else 2) as ex:
        ex.warm(["trt_calib.core.thresholds"])  # starts the workers early; never changes what a map returns
        got = ex.map(_slow_index, items, on_result=lambda i, r: seen.append((i, r)))
    assert got == [0, 1, 2]
    assert sorted(seen) == [(0, 0), (1, 1), (2, 2)]
    if kind != "dask":  # Dask may queue item 2 behind item 0 on one worker
        assert seen[-1] == ((2, 2) if kind == "serial" else (0, 0))


def test_a_failing_task_raises_its_own_exception():
    with LocalExecutor(2) as ex, pytest.raises(ValueError, match="math domain error"):
        ex.map(math.sqrt, [4.0, -1.0, 9.0])


@pytest.mark.slow
def test_a_real_dask_local_cluster_gives_the_serial_results_in_order(expected):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with make_executor("dask", address=cluster.scheduler_address) as ex:
            assert ex.workers == 2
            ticks = []
            got = ex.map(entropy_search, _histograms(), progress=ticks.append)
            assert [(r.amax, r.index) for r in got] == expected and len(ticks) == len(expected)
            with pytest.raises(ValueError, match="math domain error"):
                ex.map(math.sqrt, [-1.0])


def test_dask_without_an_address_starts_and_stops_its_own_cluster(expected):
    ex = DaskExecutor(workers=1)
    try:
        assert ex.address.startswith("tcp://127.0.0.1:")
        assert [(r.amax, r.index) for r in ex.map(entropy_search, _histograms()[:2])] == expected[:2]
    finally:
        ex.close()
    assert ex._cluster is None


def test_make_executor_checks_its_arguments():
    with pytest.raises(UsageError, match="unknown executor 'ray'"):
        make_executor("ray")
    with pytest.raises(UsageError, match="workers must be >= 1"):
        make_executor("local", workers=0)
    with pytest.raises(UsageError, match="--address is for --executor dask"):
        make_executor("local", address="tcp://127.0.0.1:1")
    assert make_executor("local", workers=3).workers == 3


def test_per_process_makes_each_object_once():
    made = []

    def factory():
        made.append(1)
        return object()

    first = per_process(("test", 1), factory)
    assert per_process(("test", 1), factory) is first and len(made) == 1
    assert per_process(("test", 2), factory) is not first and len(made) == 2


_KILLED_COMMAND = """
import multiprocessing, sys, threading, time
from trt_calib.ort.executor import LocalExecutor

if __name__ == "__main__":
    executor = LocalExecutor(workers=2)
    threading.Thread(target=executor.map, args=(time.sleep, [60, 60]), daemon=True).start()
    while len(multiprocessing.active_children()) < 2:
        time.sleep(0.05)
    time.sleep(1.0)  # both workers have taken a 60 s task
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended; only its entry is left
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_local_workers_end_when_the_command_is_killed(tmp_path):
    """SIGKILL (or an uncaught SIGTERM) runs none of the command's clean-up: its workers must not go on as orphans
    with their tasks (a report's figures, a sensitivity unit) for minutes."""
    script = tmp_path / "command.py"
    script.write_text(_KILLED_COMMAND)
    command = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in command.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    finally:
        command.kill()
        command.wait()
    deadline = time.monotonic() + 10 * PARENT_POLL_S + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived the killed command"
