"""Run many independent model runs (sensitivity sweeps, calibration shards, stability variants) on an existing engine.

One interface, `Executor.map(fn, items)`, three engines:

- ``serial``: in this process, one item after the other (the reference every other engine must match);
- ``local``: worker processes on this machine (`concurrent.futures.ProcessPoolExecutor`, started with ``spawn`` so
  no onnxruntime thread pool is forked);
- ``dask``: a Dask cluster (`distributed`, the ``[cluster]`` extra): a scheduler address (``tcp://host:8786``) or,
  without one, a loopback-only `LocalCluster` started for the run.

Dask rather than Ray, measured on the 2-core machine this project is built on (docs and README say more): +5 MB to
download against +83 MB, cluster start 0.9 s against 4.1 s, 200 MB idle memory against 700 MB, loopback-only when
told; Ray's edge on tiny tasks and shared objects does not matter for runs of seconds that return histograms.

`fn` must be a module-level function and items and results picklable. Results come back in the order of `items`
and are identical whatever the engine. Work that needs an expensive object per process (an onnxruntime session)
caches it with `per_process(key, factory)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import resource
import signal
import socket
import struct
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from ..errors import MissingDependencyError, UsageError, WorkerLostError

__all__ = [
    "EXECUTORS", "Executor", "SerialExecutor", "LocalExecutor", "DaskExecutor", "make_executor", "per_process",
    "ShippedModel", "check_address", "check_workers", "WORKER_BASE_MB", "CONNECT_TIMEOUT_S", "PARENT_POLL_S",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Engine names, as the CLI's --executor takes them.
EXECUTORS = ("serial", "local", "dask")

_PROCESS_CACHE: dict[Any, Any] = {}


def per_process(key: Any, factory: Callable[[], T]) -> T:
    """The object `factory()` made for `key` in this process, made once (an onnxruntime session per worker)."""
    try:
        return _PROCESS_CACHE[key]
    except KeyError:
        value = _PROCESS_CACHE[key] = factory()
        return value


@dataclass(frozen=True)
class ShippedModel:
    """An ONNX model sent to workers (other processes or machines) as bytes, parsed once per worker process.

    A model over protobuf's 2 GiB limit (weights in external data) cannot be one message: its large initializers
    travel beside the graph (`ort.model.split_weights`) and are put back in the worker."""

    data: bytes
    sha256: str  # the per-process cache key
    weights: tuple[tuple[str, bytes], ...] = ()  # (initializer, raw data) taken out of a model over the limit

    @classmethod
    def of(cls, model: Any) -> "ShippedModel":
        from .model import split_weights

        data, weights = split_weights(model)
        digest = hashlib.sha256(data)
        for name, raw in weights:
            digest.update(name.encode("utf-8", "surrogatepass"))
            digest.update(raw)
        return cls(data, digest.hexdigest(), weights)

    def parse(self) -> Any:
        """A new `onnx.ModelProto` of the shipped model (one the caller may change)."""
        from .model import join_weights

        return join_weights(self.data, self.weights)

    def load(self) -> Any:
        """The `onnx.ModelProto`, parsed at the first call in this process (shared: do not change it)."""
        return per_process(("trt-calib shipped model", self.sha256), self.parse)


#: Memory one local worker process takes besides the model: Python with numpy, onnx, onnxruntime and trt_calib
#: imported and a session open (about 95 MB measured with LeNet), plus room for the batches and results it holds.
WORKER_BASE_MB = 160
#: Seconds a scheduler at --address has to accept the connection and greet (a Dask scheduler greets at once).
CONNECT_TIMEOUT_S = 10.0
#: Seconds a worker gets to stop after SIGTERM (an interrupt, a failure) before it is killed.
_STOP_GRACE_S = 2.0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _available_mb() -> float | None:
    from .._util import available_memory_mb

    return available_memory_mb()


def check_workers(kind: str, workers: int | None, *, address: str | None = None, model_bytes: int = 0) -> int | None:
    """The worker count to use: `workers` when this machine can hold that many worker processes, else a one-line
    UsageError (the README's contract: capped by cores and by memory). None keeps the engine's default, lowered to
    what memory allows. A cluster (`address`) brings its own machines and is not capped here.

    Each worker is a process of its own running onnxruntime on its share of the cores: more workers than cores only
    add processes and memory (24 workers on 2 cores took 5 GB and ran no faster).
    """
    if kind == "serial":
        if workers is not None:
            raise UsageError(f"--workers {workers} is for --executor local or dask; --executor serial runs everything "
                             "in this process. Hint: drop --workers, or add --executor local")
        return None
    if kind == "dask" and address is not None:
        return workers
    cores = _cpu_count()
    if workers is not None and workers > cores:
        raise UsageError(f"--workers {workers}: this machine has {cores} core(s) for trt-calib, so at most {cores} "
                         "worker process(es); more only add processes and memory. Hint: --workers "
                         f"{cores}, or a cluster (--executor dask --address)")
    per_worker = WORKER_BASE_MB + 3 * model_bytes / 2**20  # the model's proto, its session and working copies
    available = _available_mb()
    wanted = workers if workers is not None else cores
    if available is None or wanted * per_worker <= available:
        return workers
    fit = int(available // per_worker)
    if workers is None and fit >= 1:
        log.info("%d worker(s) instead of one per core: each needs about %.0f MB and %.0f MB are available",
                 fit, per_worker, available)
        return fit
    raise UsageError(f"--workers {wanted}: each worker process needs about {per_worker:.0f} MB (Python, onnxruntime "
                     f"and the model), {wanted * per_worker:.0f} MB in all, but {available:.0f} MB of memory is "
                     f"available" + (f"; at most {fit} fit. Hint: --workers {fit}" if fit >= 1 else
                                     ". Hint: --executor serial runs in this process alone"))


_ADDRESS_RE = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
                         r":(?P<port>\d{1,5})")


def check_address(text: str) -> str:
    """A Dask scheduler address as `tcp://HOST:PORT` (a bare HOST:PORT is tcp, `tls://` is kept); ValueError with
    a one-line reason for anything else (an argparse type checks it before any work)."""
    match = _ADDRESS_RE.fullmatch(text.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"not a Dask scheduler address: {text!r} (expected tcp://HOST:PORT, e.g. "
                         "tcp://127.0.0.1:8786)")
    scheme = (match["scheme"] or "tcp").lower()
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"{text!r}: trt-calib reaches Dask schedulers over tcp:// or tls://, not {scheme}://")
    return f"{scheme}://{match['host']}:{match['port']}"


def _recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(min(count - len(data), 1 << 16))
        if not chunk:
            raise ConnectionError("it closed the connection without a Dask greeting")
        data += chunk
    return data


def _probe_scheduler(address: str, timeout: float) -> None:
    """Refuse, as one UsageError, an address where no Dask scheduler answers within `timeout` seconds.

    A Dask scheduler greets every connection at once with one message: an 8-byte length (native "Q", as
    `distributed.comm.tcp` frames it) and that many bytes. An HTTP server waits for its client to speak first (Dask's
    own client then waited forever), and a server with a text banner gives a length of exabytes (Dask's own client
    then tried to allocate it). Only tcp:// is probed; tls:// goes straight to Dask's client under its timeout.
    """
    if not address.startswith("tcp://"):
        return
    host, _, port = address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            head = _recv_exact(sock, 8, deadline)
            (size,) = struct.unpack("Q", head)
            if not 0 < size <= 1 << 20:
                raise UsageError(f"--address {address}: the server there is not a Dask scheduler (it greeted with "
                                 f"{head!r}, not a Dask message). Hint: the scheduler's address is printed by "
                                 "`dask scheduler` (default port 8786)")
            _recv_exact(sock, size, deadline)
    except TimeoutError:
        raise UsageError(f"--address {address}: no Dask scheduler answered within {timeout:g} s (a server that "
                         "waits for its client to speak, such as a web server, or packets dropped on the way). Hint: "
                         "the scheduler's address is printed by `dask scheduler` (default port 8786)") from None
    except ConnectionRefusedError:
        raise UsageError(f"--address {address}: connection refused: no Dask scheduler listens there. Hint: start "
                         "one with `dask scheduler`, or leave --address out for a local cluster") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"--address {address}: cannot reach a Dask scheduler there ({reason})") from None


@contextlib.contextmanager
def _workers_ignore_interrupts() -> Iterator[None]:
    """Start worker processes with SIGINT blocked: they inherit the mask through fork and exec (nothing in Python,
    concurrent.futures or Dask unblocks it), so a Ctrl-C at the terminal, which reaches the whole process group,
    interrupts only this process; it stops the workers itself and no worker prints a traceback. A SIGINT that
    arrives meanwhile is delivered to this thread when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # multiprocessing unblocks SIGINT in the thread that first starts its resource tracker (resource_tracker.py
    # blocks, spawns the tracker, unblocks): let that happen before the block, not inside it.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored process-wide (main thread only) while a run is being stopped: a worker that a Dask nanny
    restarts meanwhile is spawned from Dask's own threads, and an ignored SIGINT stays ignored in a child across
    exec (Python and asyncio then leave it alone), so a second Ctrl-C cannot make it print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _death(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code (a negative code is the signal that ended it)."""
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"killed by {name}, as the system's out-of-memory killer does"
        return f"killed by {name}"
    return f"exit status {exitcode}"


def _stop_processes(processes: Sequence[Any]) -> None:
    """SIGTERM, then after a grace period SIGKILL, to every process still alive; each is joined (no orphan)."""
    for p in processes:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(_STOP_GRACE_S)


@dataclass(frozen=True)
class _Measured:
    """`fn` run in a worker, returning its result with the worker's identity and peak memory (for the run's peak)."""

    fn: Callable[[Any], Any]

    def __call__(self, item: Any) -> tuple[Any, tuple[str, int], float]:
        result = self.fn(item)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
        return result, (socket.gethostname(), os.getpid()), peak_mb


class Executor:
    """Maps a function over items on some engine; a context manager that releases its workers."""

    name = "executor"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._peaks: dict[tuple[str, int], float] = {}

    @property
    def threads_per_worker(self) -> int:
        """Cores per worker on this machine, for onnxruntime's intra-op threads (1 for remote workers)."""
        return max(1, _cpu_count() // max(1, self.workers))

    @property
    def workers_peak_mb(self) -> float:
        """The sum of the peak memory of every worker process that ran a task (0 for the serial engine)."""
        return float(sum(self._peaks.values()))

    @property
    def worker_processes(self) -> int:
        """How many distinct worker processes ran tasks so far."""
        return len(self._peaks)

    def _unwrap(self, measured: tuple[Any, tuple[str, int], float]) -> Any:
        result, who, peak = measured
        self._peaks[who] = max(peak, self._peaks.get(who, 0.0))
        return result

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: Callable[[int], None] | None = None,
            on_result: Callable[[int, R], None] | None = None) -> list[R]:
        """`[fn(item) for item in items]`, run on this engine; `progress(1)` after each item completes, and
        `on_result(index, result)` as each item's result arrives (in the order they finish: a caller can keep what
        is finished before the rest is, and nothing waits for the slowest item of a batch)."""
        raise NotImplementedError

    def warm(self, modules: Sequence[str]) -> None:
        """Start the workers now and have each import `modules`, without waiting: work this process does meanwhile
        (a sweep's setup) overlaps their start. Nothing on engines whose workers are already running."""

    def close(self) -> None:
        """Release the workers (idempotent)."""

    def abort(self) -> None:
        """Stop the workers now, without waiting for running tasks (an interrupt, a failure); idempotent."""
        self.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or an interrupt: nothing more is wanted from the workers, running tasks included
            self.abort()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} workers={self.workers}>"


class SerialExecutor(Executor):
    """Everything in this process, in order."""

    name = "serial"

    def __init__(self) -> None:
        super().__init__(1)

    @property
    def threads_per_worker(self) -> int:
        return _cpu_count()

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: Callable[[int], None] | None = None,
            on_result: Callable[[int, R], None] | None = None) -> list[R]:
        out = []
        for index, item in enumerate(items):
            out.append(fn(item))
            if on_result is not None:
                on_result(index, out[-1])
            if progress is not None:
                progress(1)
        return out


def _in_order(futures: Sequence[Any], wait_any: Callable[[set], tuple[set, set]],
              progress: Callable[[int], None] | None, on_result: Callable[[int, Any], None] | None = None) -> None:
    """Wait for every future, calling `on_result(index, its result)` and `progress(1)` as each finishes; the first
    failure is raised at once."""
    index = {f: i for i, f in enumerate(futures)}
    pending = set(futures)
    while pending:
        done, pending = wait_any(pending)
        for future in sorted(done, key=lambda f: index[f]):
            result = future.result()  # raise the task's exception here, not after the rest have run
            if on_result is not None:
                on_result(index[future], result)
            if progress is not None:
                progress(1)


PARENT_POLL_S = 0.5
"""How often a local worker checks that the command that started it is still alive."""


def _watch_parent(parent: int) -> None:
    """A local worker's initializer: end this worker as soon as the command that started it is gone. A command
    ended by SIGTERM or SIGKILL runs none of its clean-up, and a worker would otherwise go on with its task (a page
    of figures, a sensitivity unit) for minutes as an orphan, holding a core and memory."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # orphaned: nobody reads what this worker would return

    threading.Thread(target=watch, name="trt-calib-parent-watch", daemon=True).start()


def _import_modules(modules: Sequence[str]) -> None:
    """A local worker's warm-up task (`Executor.warm`); an import that fails here fails again, loudly, in a task."""
    import importlib

    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class LocalExecutor(Executor):
    """Worker processes on this machine (spawned, so each starts clean; SIGINT blocked, see
    `_workers_ignore_interrupts`; each ends itself when the command is gone, see `_watch_parent`). A worker that dies
    (killed by the system) is a `WorkerLostError` naming it."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers or _cpu_count())
        self._pool: Any = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_watch_parent, initargs=(os.getpid(),))
        return self._pool

    def warm(self, modules: Sequence[str]) -> None:
        pool = self._get_pool()
        with _workers_ignore_interrupts():  # each submit to an idle pool spawns a worker (spawn start method)
            for _ in range(self.workers):
                pool.submit(_import_modules, tuple(modules))

    def _processes(self) -> list[Any]:
        """The pool's worker processes (concurrent.futures keeps them in `_processes`; empty if that changes)."""
        return list((getattr(self._pool, "_processes", None) or {}).values())

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: Callable[[int], None] | None = None,
            on_result: Callable[[int, R], None] | None = None) -> list[R]:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._get_pool()
        with _workers_ignore_interrupts():  # the pool spawns its workers while tasks are submitted
            futures = [pool.submit(_Measured(fn), item) for item in items]
        seen = self._processes()
        try:
            _in_order(futures, lambda p: wait(p, return_when=FIRST_COMPLETED), progress,
                      None if on_result is None else lambda i, r: on_result(i, self._unwrap(r)))
        except BrokenProcessPool:
            seen = list({id(p): p for p in seen + self._processes()}.values())
            self.abort()
            # The pool's own thread may be reaping a worker just now: our poll then finds no child (ECHILD) and reads
            # None until that thread has stored the code, and the one killed by the system would go unnamed.
            deadline = time.monotonic() + 2.0
            while any(p.exitcode is None for p in seen) and time.monotonic() < deadline:
                time.sleep(0.02)
            dead = [(p.pid, p.exitcode) for p in seen if p.exitcode not in (None, 0)]
            # the pool ends the healthy workers with SIGTERM once one died: name the others first
            first = [d for d in dead if d[1] != -signal.SIGTERM] or dead
            who = ", ".join(f"{pid} ({_death(code)})" for pid, code in first) or f"? ({_death(None)})"
            raise WorkerLostError(
                f"a worker process died before finishing its part: {who}; the run stopped. Hint: fewer --workers or "
                "more memory, or --executor serial (this process only)"
            ) from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [self._unwrap(f.result()) for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        if self._pool is None:
            return
        processes = self._processes()
        pool, self._pool = self._pool, None
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_processes(processes)


class DaskExecutor(Executor):
    """A Dask cluster: connect to `address`, or start a loopback-only LocalCluster of `workers` processes.

    The address is probed first (`_probe_scheduler`: bounded, one line when nothing Dask answers). Dask's INFO logs
    are kept out of the command's output (warnings and errors still show). A task whose workers keep dying
    (Dask's KilledWorker, after its retries on other workers) is a `WorkerLostError`.
    """

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise MissingDependencyError(
                f"--executor dask needs Dask's distributed scheduler ({exc}). Hint: pip install \"trt-calib[cluster]\""
            ) from None
        _quiet_dask_logs()
        self._cluster = None
        if address is None:
            import multiprocessing

            try:
                with _workers_ignore_interrupts():
                    self._cluster = LocalCluster(
                        n_workers=workers or _cpu_count(), threads_per_worker=1, processes=True,
                        # the scheduler's HTTP server on a free loopback port: with dashboard_address=None it
                        # still tries 8787 and warns when another cluster has it
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.WARNING,
                    )
            except BaseException:  # interrupted or failed while starting: no worker process outlives it
                with _interrupts_ignored():
                    _stop_processes(multiprocessing.active_children())
                raise
            address = self._cluster.scheduler_address
        else:
            try:
                address = check_address(address)
            except ValueError as exc:
                raise UsageError(f"--address: {exc}") from None
            _probe_scheduler(address, CONNECT_TIMEOUT_S)
        try:
            self.client = Client(address, timeout=f"{CONNECT_TIMEOUT_S:g}s")
        except Exception as exc:  # OSError, TimeoutError, or whatever a half-working server makes Dask raise
            self._close_cluster()
            raise UsageError(f"--address {address}: cannot reach a Dask scheduler there ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from None
        self.address = address
        super().__init__(max(1, len(self.client.scheduler_info().get("workers", {}))) if workers is None else workers)

    @property
    def threads_per_worker(self) -> int:
        return 1 if self._cluster is None else max(1, _cpu_count() // max(1, self.workers))

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: Callable[[int], None] | None = None,
            on_result: Callable[[int, R], None] | None = None) -> list[R]:
        from distributed import wait as dask_wait

        futures = self.client.map(_Measured(fn), list(items), pure=False)  # pure=False: equal items are separate runs
        try:
            _in_order(futures, lambda p: tuple(dask_wait(list(p), return_when="FIRST_COMPLETED")), progress,
                      None if on_result is None else lambda i, r: on_result(i, self._unwrap(r)))
        except BaseException as exc:
            if type(exc).__name__ == "KilledWorker":  # distributed.scheduler.KilledWorker
                raise WorkerLostError(
                    f"Dask workers kept dying while running a task ({' '.join(str(exc).split())[:200]}); the run "
                    "stopped. Hint: more memory per worker, or fewer workers per machine"
                ) from None
            if not isinstance(exc, KeyboardInterrupt):
                with contextlib.suppress(Exception):
                    self.client.cancel(futures)
            raise
        return [self._unwrap(r) for r in self.client.gather(futures)]

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            cluster.close()

    def close(self) -> None:
        client = self.__dict__.pop("client", None)
        if client is not None:
            client.close()
        self._close_cluster()

    def abort(self) -> None:
        """Stop fast and quietly: the local cluster's worker processes (this process's children) are ended first, so
        no worker logs its cancelled tasks, then the client and the cluster close under timeouts, and any worker
        process still alive (one a nanny restarted meanwhile) is ended too: nothing outlives the command."""
        import multiprocessing

        for name in ("distributed", "dask"):  # the run is over: what closing says is noise
            logging.getLogger(name).setLevel(logging.CRITICAL)
        local = self._cluster is not None
        with _interrupts_ignored():  # a worker a nanny restarts meanwhile is born deaf to a second Ctrl-C
            if local:
                for nanny in list(getattr(self._cluster, "workers", {}).values()):
                    with contextlib.suppress(Exception):
                        nanny.autorestart = False  # Nanny(autorestart=...): no new worker for the ones ended here
                for process in multiprocessing.active_children():  # ended, and left to Dask's nannies to reap
                    with contextlib.suppress(Exception):
                        process.terminate()
            client = self.__dict__.pop("client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=_STOP_GRACE_S)
            cluster, self._cluster = self._cluster, None
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=2 * _STOP_GRACE_S)
            if local:
                _stop_processes(multiprocessing.active_children())

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.address} workers={self.workers}>"


def _quiet_dask_logs() -> None:
    """Keep Dask's INFO lines (cluster start, worker registration: ~33 of them) out of a command's output unless
    debugging; its warnings and errors still show."""
    level = logging.getLogger().getEffectiveLevel()
    for name in ("distributed", "dask"):
        logger = logging.getLogger(name)
        if level > logging.DEBUG and logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def make_executor(kind: str = "local", *, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor `kind` (``serial``, ``local``, ``dask``) with `workers` processes (default: all cores)."""
    if kind not in EXECUTORS:
        raise UsageError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if address is not None and kind != "dask":
        raise UsageError(f"--address is for --executor dask, not {kind}")
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        return LocalExecutor(workers)
    return DaskExecutor(address, workers)
