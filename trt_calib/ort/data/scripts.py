"""A Python file's generator as a batch source (like Polygraphy's data loader scripts): loaded in isolation, any
exit it makes a data error, its batches checked like every other source's."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, TrtCalibError
from .inputs import InputSpec
from .source import BatchSource, file_sha256


_DEFAULT_FUNCTION = "load_data"

# Calls into user code in progress in this process, whether this process was forked by user code, and the child
# processes user code started (which `end_user_processes` stops when the command ends).
_user_depth = [0]
_forked_by_user = [False]
_started_by_user_code: set[int] = set()


def _after_fork_in_child() -> None:
    _forked_by_user[0] = _user_depth[0] > 0
    _started_by_user_code.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _child_pids() -> set[int]:
    """This process's children (Linux: /proc/self/task/*/children); empty where that cannot be read."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except (OSError, ValueError):
        pass
    return pids


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """Around every call into a user's script. The child processes it starts are remembered (`end_user_processes`
    stops those still running when the command ends, so none is left an orphan), and a process the script forked
    (os.fork) that returns into trt-calib's code ends there, silently, instead of running the rest of the command a
    second time (writing outputs, printing JSON) as an orphan."""
    before = _child_pids()
    _user_depth[0] += 1
    try:
        yield
    finally:
        _user_depth[0] -= 1
        if _forked_by_user[0]:
            os._exit(0)
        _started_by_user_code.update(_child_pids() - before)


def end_user_processes(grace: float = 2.0) -> list[int]:
    """Stop the processes data scripts started that are still running (SIGTERM, SIGKILL after `grace` seconds) and
    reap them; returns the pids that were still running. main() calls it when a command ends."""
    import signal
    import time

    children = _child_pids()
    alive = []
    for pid in sorted(_started_by_user_code & children):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            state = "?"
        if state != "Z":
            alive.append(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in sorted(_started_by_user_code & children):
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                break
            time.sleep(0.02)
    _started_by_user_code.clear()
    return alive


def split_script(text: str) -> tuple[Path, str]:
    """"data.py" or "data.py:func"; a drive letter ("C:\\...") is not taken for a function name."""
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith(".py") and tail.isidentifier():
        return Path(head), tail
    return Path(text), _DEFAULT_FUNCTION


def data_file(path: str | os.PathLike) -> Path:
    """The file or folder a --data value reads: a data script's FILE.py of FILE.py:function, else the path itself."""
    script, _ = split_script(os.fspath(path))
    return script if script.suffix.lower() == ".py" else Path(path)


def load_script_function(path: Path, name: str, *, what: str = "data script",
                         arguments: Sequence[str] | None = ()) -> Callable[..., Any]:
    """`name` from the Python file `path`, imported in isolation; any exit or failure is a `DataError` naming the
    file. `arguments`: the positional arguments it must accept (none for a data script); None skips the check."""
    digest = hashlib.sha256(f"{what}:{path.resolve()}".encode()).hexdigest()[:16]
    module_name = f"_trt_calib_{what.replace(' ', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with user_code():
            spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(module_name, None)
        raise DataError(
            f"{path}: the {what} called sys.exit({exc.code!r}) while being imported; it must define a "
            "function, not exit. Hint: guard script code with `if __name__ == '__main__':`"
        ) from None
    except KeyboardInterrupt:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise DataError(f"{path}: importing the {what} failed ({type(exc).__name__}: {exc})") from exc
    except BaseException as exc:  # GeneratorExit, a script's own BaseException subclass: still the script's error
        sys.modules.pop(module_name, None)
        raise DataError(f"{path}: importing the {what} raised {type(exc).__name__} ({exc}); a script reports "
                        "failures with Exception subclasses") from None
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise DataError(
            f"{path}: has no function {name!r}. Note: it defines {', '.join(found) or 'no functions'}. "
            f"Hint: name it with {path}:FUNCTION"
        )
    if arguments is not None:
        try:
            inspect.signature(fn).bind(*arguments)
        except TypeError:
            wanted = f"with ({', '.join(arguments)})" if arguments else "without arguments"
            raise DataError(f"{path}: {name}{inspect.signature(fn)} must be callable {wanted}") from None
        except ValueError:
            pass  # no signature available (builtins); try calling it
    return fn


class GeneratorSource(BatchSource):
    """Batches exactly as a user's data script yields them (Polygraphy-style `load_data()`)."""

    kind = "generator"

    def __init__(
        self, path: Path, function: str, inputs: Sequence[InputSpec], max_batches: int | None = None
    ) -> None:
        super().__init__(inputs, f"{path}:{function}", str(path))
        self.max_batches = max_batches
        self._file = path
        self.function = function
        self._fn = load_script_function(path, function)
        self._stats: dict | None = None

    def _raw_batches(self) -> Iterator[Any]:
        try:
            with user_code():
                items = self._fn()
                it = iter(items)
        except TrtCalibError:
            raise
        except SystemExit as exc:
            raise DataError(
                f"{self.origin}: called sys.exit({exc.code!r}) instead of returning batches; no batch was made. "
                "Hint: a data script ends its data by returning, never by exiting"
            ) from None
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise DataError(
                f"{self.origin}: calling it failed ({type(exc).__name__}: {exc}). "
                "Hint: it must return an iterable of dicts {input_name: array}"
            ) from exc
        except BaseException as exc:  # GeneratorExit, a custom BaseException: the script's failure, one line
            raise DataError(
                f"{self.origin}: raised {type(exc).__name__} ({exc}) instead of returning batches; a script reports "
                "failures with Exception subclasses"
            ) from None
        index = 0
        while True:
            try:
                with user_code():
                    item = next(it)
            except StopIteration:
                return
            except TrtCalibError:
                raise
            except SystemExit as exc:
                raise DataError(
                    f"{self.origin}: called sys.exit({exc.code!r}) while making batch {index}, after {index} "
                    "batch(es); calibrating on part of the data would give other scales. Hint: a data script ends "
                    "its data by returning, never by exiting"
                ) from None
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise DataError(
                    f"{self.origin}: raised {type(exc).__name__} while making batch {index}: {exc}"
                ) from exc
            except BaseException as exc:  # GeneratorExit raised by the script itself, a custom BaseException
                raise DataError(
                    f"{self.origin}: raised {type(exc).__name__} ({exc}) while making batch {index}, after {index} "
                    "batch(es); a script reports failures with Exception subclasses"
                ) from None
            yield item
            index += 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        batches = samples = 0
        shapes: dict[str, list[int]] = {}
        counted = next((s for s in self.inputs if s.batch_axis is not None), None)
        for batch in super().__iter__():
            if not shapes:
                shapes = {n: list(a.shape) for n, a in batch.items()}
            samples += 1 if counted is None else int(counted.count(batch[counted.name].shape) or 0)
            batches += 1
            yield batch
        self._stats = {"batches": batches, "samples": samples, "shapes": shapes}

    def _scan(self) -> dict:
        """Counts need one pass through the user's generator; it is made once, on demand."""
        if self._stats is None:
            for _ in self:
                pass
        assert self._stats is not None
        return self._stats

    def __len__(self) -> int:
        return self._scan()["batches"]

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self._scan()["samples"]

    @num_samples.setter
    def num_samples(self, value: int) -> None:
        pass  # counted from the batches the script yields, never set

    def _batch_shapes(self) -> dict[str, list[int]]:
        return self._scan()["shapes"]

    def _digest(self) -> str:
        return file_sha256(self._file)

    def _extra_manifest(self) -> dict:
        shapes = self._scan()["shapes"]
        counted = next((s for s in self.inputs if s.batch_axis is not None), None)
        first = shapes.get(counted.name) if counted is not None else None
        return {
            "function": self.function,
            "batch_size": counted.count(first) if counted is not None and first else None,
            "shuffle": False,
            "seed": None,
            "last_batch": "as yielded",
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.origin}>"
