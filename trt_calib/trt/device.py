"""Device buffers for calibration batches behind one small interface, and the choice of GPU library.

TensorRT's calibrator asks for one device pointer per network input and batch. A `DeviceBuffers` keeps one
buffer per input, grown when a batch needs more bytes and reused otherwise, copies each host batch into it and
returns the pointer. The GPU libraries (pycuda, cuda-python, CuPy, PyTorch) are imported only when a backend
is created, never at module import.

Buffers are allocated on the *current* CUDA device unless a device index is given: TensorRT builds, and reads the
calibration buffers, on the device that is current when the build runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
from typing import Any, Callable, Iterator

import numpy as np

from .._util import require
from ..errors import CalibrationError, MissingDependencyError, TrtCalibError

__all__ = [
    "BACKENDS",
    "AUTO_ORDER",
    "DeviceBuffers",
    "HostBuffers",
    "PycudaBuffers",
    "CudaPythonBuffers",
    "CupyBuffers",
    "TorchBuffers",
    "select_backend",
    "is_device_array",
]

logger = logging.getLogger(__name__)

#: The order `select_backend("auto")` tries; `host` is never chosen automatically.
AUTO_ORDER = ("pycuda", "cuda-python", "cupy", "torch")


def is_device_array(value: Any) -> bool:
    """True for arrays that already live in GPU memory (torch CUDA tensors, CuPy arrays, anything with
    `__cuda_array_interface__`)."""
    return hasattr(value, "__cuda_array_interface__")


def _host_bytes(name: str, array: Any) -> np.ndarray:
    """A flat uint8 view of a host array, refusing what cannot be copied as-is."""
    if is_device_array(array):
        raise CalibrationError(
            f"input {name!r} is a GPU array but this backend copies host memory. "
            "Hint: pass host (numpy) arrays, or use the torch/cupy backend for GPU tensors."
        )
    if hasattr(array, "detach") and hasattr(array, "numpy"):  # a CPU torch tensor
        array = array.detach().numpy()
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        raise CalibrationError(
            f"input {name!r} is not C-contiguous (strides {array.strides}). Hint: np.ascontiguousarray(x)."
        )
    return array.reshape(-1).view(np.uint8)


def _cuda_array_pointer(name: str, array: Any) -> int:
    """The device pointer of an array that is already on the GPU, after checking it is contiguous."""
    iface = array.__cuda_array_interface__
    shape = tuple(iface["shape"])
    strides = iface.get("strides")
    if strides is not None:
        itemsize = np.dtype(iface["typestr"]).itemsize
        expected = []
        step = itemsize
        for dim in reversed(shape):
            expected.append(step)
            step *= max(int(dim), 1)
        if tuple(strides) != tuple(reversed(expected)) and int(np.prod(shape)) > 1:
            raise CalibrationError(
                f"input {name!r} is a GPU array that is not C-contiguous (strides {tuple(strides)}). "
                "Hint: call .contiguous() (torch) or cupy.ascontiguousarray(x)."
            )
    return int(iface["data"][0])


class DeviceBuffers:
    """One reusable device buffer per input: `upload(name, array)` copies a batch in and returns its pointer.

    Subclasses provide `_allocate`, `_release`, `_pointer`, `_copy` and `_synchronize`; growth, reuse and
    bookkeeping live here so every backend behaves the same.
    """

    name = "abstract"
    device_index: int | None = None  # the CUDA device the buffers live on (None: host memory)

    def __init__(self) -> None:
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._keep_alive: dict[str, Any] = {}
        self._freed = False

    # -- backend hooks ---------------------------------------------------------------------------------
    def _allocate(self, nbytes: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _release(self, handle: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pointer(self, handle: Any) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _copy(self, handle: Any, data: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _synchronize(self) -> None:
        """Wait until GPU arrays handed over zero-copy are ready to be read by TensorRT."""

    def _device_pointer(self, name: str, array: Any) -> int:
        """Pointer of an array already on the GPU (zero-copy); backends that cannot take one refuse."""
        raise CalibrationError(f"input {name!r} is a GPU array; the {self.name} backend takes host arrays only.")

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Make this backend's CUDA context current for the duration of an operation."""
        yield

    # -- interface -------------------------------------------------------------------------------------
    def upload(self, name: str, array: Any) -> int:
        """Copy `array` into the buffer of input `name` (growing it if needed) and return the device pointer.

        Arrays already on the GPU are not copied: their own pointer is returned and they are kept alive until
        the next upload for the same input.
        """
        if self._freed:
            raise CalibrationError(f"the {self.name} device buffers were freed; create a new calibrator.")
        with self._active():
            if is_device_array(array):
                pointer = self._device_pointer(name, array)
                self._synchronize()
                self._keep_alive[name] = array
                return pointer
            data = _host_bytes(name, array)
            self._keep_alive.pop(name, None)
            handle = self._buffer_for(name, max(int(data.nbytes), 1))
            self._copy(handle, data)
            return int(self._pointer(handle))

    def _buffer_for(self, name: str, nbytes: int) -> Any:
        current = self._buffers.get(name)
        if current is not None and current[1] >= nbytes:
            return current[0]
        if current is not None:
            self._release(current[0])
            del self._buffers[name]
            logger.debug("%s: growing the buffer of input %r from %d to %d bytes", self.name, name, current[1], nbytes)
        handle = self._allocate(nbytes)
        self._buffers[name] = (handle, nbytes)
        return handle

    def capacity(self, name: str) -> int:
        """Bytes allocated for input `name` (0 if none yet); lets tests check that buffers are reused."""
        current = self._buffers.get(name)
        return 0 if current is None else current[1]

    def free(self) -> None:
        """Release every buffer; safe to call twice."""
        if self._freed:
            return
        try:
            with self._active():
                for handle, _ in self._buffers.values():
                    self._release(handle)
                self._free_extra()
        finally:
            self._buffers.clear()
            self._keep_alive.clear()
            self._freed = True
            self._close()

    def _free_extra(self) -> None:
        """Release backend resources other than the per-input buffers (staging memory, streams)."""

    def _close(self) -> None:
        """Release the backend's hold on its context, after every buffer is freed."""

    def __enter__(self) -> "DeviceBuffers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.name!r} inputs={sorted(self._buffers)}>"


class HostBuffers(DeviceBuffers):
    """Host memory posing as device memory: pointers to numpy buffers kept alive. For dry runs and tests only;
    TensorRT would read these addresses as device addresses. GPU arrays are copied to the host first."""

    name = "host"

    def upload(self, name: str, array: Any) -> int:
        if is_device_array(array):
            if hasattr(array, "detach"):  # torch
                array = array.detach().cpu().numpy()
            elif hasattr(array, "get"):  # CuPy
                array = array.get()
            else:
                raise CalibrationError(f"input {name!r}: cannot copy a {type(array).__name__} to the host")
        return super().upload(name, array)

    def _allocate(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def _release(self, handle: np.ndarray) -> None:
        pass

    def _pointer(self, handle: np.ndarray) -> int:
        return int(handle.ctypes.data)

    def _copy(self, handle: np.ndarray, data: np.ndarray) -> None:
        handle[: data.nbytes] = data


class PycudaBuffers(DeviceBuffers):
    """pycuda: the device's primary context (the one TensorRT, PyTorch and CuPy use), pinned host staging and
    asynchronous copies on one stream, synchronised before the pointer is returned.

    The primary context is pushed only for the duration of each operation, so the calling thread's context
    stack is left as it was found. `pycuda.autoinit` is never imported: it creates a second context.
    """

    name = "pycuda"

    def __init__(self, device_index: int | None = None) -> None:
        super().__init__()
        self._cuda = require("pycuda.driver", extra="gpu", purpose="the pycuda device backend")
        cuda = self._cuda
        self._context = None
        try:
            cuda.init()
            count = cuda.Device.count()
            if device_index is None:
                device_index = _pycuda_current_device(cuda, count)
            if device_index >= count:
                raise CalibrationError(
                    f"pycuda sees {count} CUDA device(s); device index {device_index} does not exist. "
                    "Hint: check CUDA_VISIBLE_DEVICES."
                )
            self._context = cuda.Device(device_index).retain_primary_context()
            self._context.push()
            try:
                self._stream = cuda.Stream()
            finally:
                cuda.Context.pop()
        except cuda.Error as exc:  # pycuda._driver.Error subclasses are not builtin RuntimeError
            if self._context is not None:
                self._context.detach()
            raise CalibrationError(
                f"pycuda could not use {'the current CUDA device' if device_index is None else f'CUDA device {device_index}'}"
                f": {type(exc).__name__}: {exc}. "
                "Hint: check the NVIDIA driver with nvidia-smi."
            ) from exc
        self.device_index = device_index
        self._staging: dict[str, Any] = {}

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        except self._cuda.Error as exc:
            raise CalibrationError(f"pycuda error: {type(exc).__name__}: {exc}") from exc
        finally:
            self._cuda.Context.pop()

    def _allocate(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(nbytes)

    def _release(self, handle: Any) -> None:
        handle.free()

    def _pointer(self, handle: Any) -> int:
        return int(handle)

    def _copy(self, handle: Any, data: np.ndarray) -> None:
        staging = self._staging_for(data.nbytes)
        staging[: data.nbytes] = data
        self._cuda.memcpy_htod_async(handle, staging[: data.nbytes], self._stream)
        self._stream.synchronize()

    def _staging_for(self, nbytes: int) -> np.ndarray:
        staging = self._staging.get("host")
        if staging is None or staging.nbytes < nbytes:
            if staging is not None:
                staging.base.free()
            staging = self._cuda.pagelocked_empty((nbytes,), np.uint8)
            self._staging["host"] = staging
        return staging

    def _device_pointer(self, name: str, array: Any) -> int:
        return _cuda_array_pointer(name, array)

    def _synchronize(self) -> None:
        self._cuda.Context.synchronize()

    def _free_extra(self) -> None:
        for staging in self._staging.values():
            staging.base.free()
        self._staging.clear()

    def _close(self) -> None:
        if self._context is not None:
            self._context.detach()
            self._context = None


def _pycuda_current_device(cuda: Any, count: int) -> int:
    """The ordinal of the current context's device (cuCtxGetDevice), or 0, the CUDA runtime's default device, when
    no context is current. pycuda's Device has no ordinal, so it is found by comparing with each Device(i)."""
    try:
        current = cuda.Context.get_device()
    except cuda.Error:  # CUDA_ERROR_INVALID_CONTEXT: nothing is current on this thread
        return 0
    return next((i for i in range(count) if cuda.Device(i) == current), 0)


def _import_cuda_runtime() -> Any:
    """cuda-python's runtime: `cuda.bindings.runtime` (cuda-python >= 12.6.1), else the older `cuda.cudart`.

    cuda-python 12.6.1 moved `cuda.cudart` to `cuda.bindings.runtime` and 13.0 removed the old name (its release
    notes); NVIDIA's samples used `from cuda import cudart` up to TensorRT 10.12 (`samples/python/common_runtime.py`).
    """
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError as new:
        try:
            return importlib.import_module("cuda.cudart")
        except ImportError as old:
            raise MissingDependencyError(
                f"cuda-python is needed for the cuda-python device backend but neither cuda.bindings.runtime "
                f"({new}) nor cuda.cudart ({old}) imports. Hint: pip install cuda-python"
            ) from new


def _check_cuda_python(runtime: Any, result: tuple, what: str) -> Any:
    """Unpack a cuda-python `(error, *values)` result, raising CalibrationError on a CUDA error."""
    err, *values = result
    if err != runtime.cudaError_t.cudaSuccess:
        _, text = runtime.cudaGetErrorString(err)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise CalibrationError(f"cuda-python: {what} failed: {err!r} ({text}).")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class CudaPythonBuffers(DeviceBuffers):
    """cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6.1): cudaMalloc buffers, pinned staging
    from cudaMallocHost and cudaMemcpyAsync on one stream, synchronised before the pointer is returned."""

    name = "cuda-python"

    def __init__(self, device_index: int | None = None) -> None:
        super().__init__()
        self._rt = _import_cuda_runtime()
        self._staging: tuple[int, int] | None = None
        self._stream = None
        if device_index is None:
            device_index = _check_cuda_python(self._rt, self._rt.cudaGetDevice(), "cudaGetDevice")
        self.device_index = int(device_index)
        count = _check_cuda_python(self._rt, self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device_index >= count:
            raise CalibrationError(
                f"cuda-python sees {count} CUDA device(s); device index {device_index} does not exist."
            )
        with self._active():
            self._stream = _check_cuda_python(self._rt, self._rt.cudaStreamCreate(), "cudaStreamCreate")

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        rt = self._rt
        previous = _check_cuda_python(rt, rt.cudaGetDevice(), "cudaGetDevice")
        if previous != self.device_index:
            _check_cuda_python(rt, rt.cudaSetDevice(self.device_index), "cudaSetDevice")
        try:
            yield
        finally:
            if previous != self.device_index:
                rt.cudaSetDevice(previous)

    def _allocate(self, nbytes: int) -> int:
        return int(_check_cuda_python(self._rt, self._rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def _release(self, handle: int) -> None:
        _check_cuda_python(self._rt, self._rt.cudaFree(handle), "cudaFree")

    def _pointer(self, handle: int) -> int:
        return int(handle)

    def _copy(self, handle: int, data: np.ndarray) -> None:
        rt = self._rt
        staging = self._staging_for(data.nbytes)
        ctypes.memmove(staging, data.ctypes.data, data.nbytes)
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check_cuda_python(rt, rt.cudaMemcpyAsync(handle, staging, data.nbytes, kind, self._stream), "cudaMemcpyAsync")
        _check_cuda_python(rt, rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def _staging_for(self, nbytes: int) -> int:
        if self._staging is None or self._staging[1] < nbytes:
            if self._staging is not None:
                _check_cuda_python(self._rt, self._rt.cudaFreeHost(self._staging[0]), "cudaFreeHost")
                self._staging = None
            pointer = _check_cuda_python(self._rt, self._rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})")
            self._staging = (int(pointer), nbytes)
        return self._staging[0]

    def _device_pointer(self, name: str, array: Any) -> int:
        return _cuda_array_pointer(name, array)

    def _synchronize(self) -> None:
        _check_cuda_python(self._rt, self._rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def _free_extra(self) -> None:
        if self._staging is not None:
            _check_cuda_python(self._rt, self._rt.cudaFreeHost(self._staging[0]), "cudaFreeHost")
            self._staging = None
        if self._stream is not None:
            _check_cuda_python(self._rt, self._rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class CupyBuffers(DeviceBuffers):
    """CuPy: uint8 device arrays as buffers, pinned staging, copies on one non-blocking stream; CuPy arrays are
    passed zero-copy."""

    name = "cupy"

    def __init__(self, device_index: int | None = None) -> None:
        super().__init__()
        self._cp = require("cupy", purpose="the cupy device backend")
        cp = self._cp
        try:
            if device_index is None:
                device_index = int(cp.cuda.runtime.getDevice())
            self.device_index = device_index
            count = cp.cuda.runtime.getDeviceCount()
            if device_index >= count:
                raise CalibrationError(f"CuPy sees {count} CUDA device(s); device index {device_index} does not exist.")
            self._device = cp.cuda.Device(device_index)
            with self._device:
                self._stream = cp.cuda.Stream(non_blocking=True)
        except cp.cuda.runtime.CUDARuntimeError as exc:
            raise CalibrationError(f"CuPy could not use CUDA device {device_index}: {exc}.") from exc
        self._staging: np.ndarray | None = None

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        with self._device:
            yield

    def _allocate(self, nbytes: int) -> Any:
        return self._cp.empty((nbytes,), dtype=self._cp.uint8)

    def _release(self, handle: Any) -> None:
        pass  # CuPy's memory pool takes the block back when the array is dropped

    def _pointer(self, handle: Any) -> int:
        return int(handle.data.ptr)

    def _copy(self, handle: Any, data: np.ndarray) -> None:
        import cupyx  # part of CuPy

        if self._staging is None or self._staging.nbytes < data.nbytes:
            self._staging = cupyx.empty_pinned((data.nbytes,), dtype=np.uint8)
        staging = self._staging[: data.nbytes]
        staging[...] = data
        handle[: data.nbytes].set(staging, stream=self._stream)
        self._stream.synchronize()

    def _device_pointer(self, name: str, array: Any) -> int:
        return _cuda_array_pointer(name, array)

    def _synchronize(self) -> None:
        self._device.synchronize()

    def _free_extra(self) -> None:
        self._staging = None


class TorchBuffers(DeviceBuffers):
    """PyTorch: CUDA tensors are passed zero-copy through `data_ptr()`; host arrays are copied through a pinned
    staging tensor into a reused CUDA uint8 tensor on one side stream."""

    name = "torch"

    def __init__(self, device_index: int | None = None) -> None:
        super().__init__()
        self._torch = require("torch", purpose="the torch device backend")
        torch = self._torch
        if not torch.cuda.is_available():
            raise CalibrationError(
                f"torch {torch.__version__} is installed but torch.cuda.is_available() is False "
                "(a CPU-only build, or no GPU/driver visible)."
            )
        if device_index is None:
            device_index = int(torch.cuda.current_device())
        count = torch.cuda.device_count()
        if device_index >= count:
            raise CalibrationError(f"torch sees {count} CUDA device(s); device index {device_index} does not exist.")
        self.device_index = device_index
        self._device = torch.device("cuda", device_index)
        self._stream = torch.cuda.Stream(device=self._device)
        self._staging = None

    def _allocate(self, nbytes: int) -> Any:
        return self._torch.empty(nbytes, dtype=self._torch.uint8, device=self._device)

    def _release(self, handle: Any) -> None:
        pass  # the caching allocator takes the block back when the tensor is dropped

    def _pointer(self, handle: Any) -> int:
        return int(handle.data_ptr())

    def _copy(self, handle: Any, data: np.ndarray) -> None:
        torch = self._torch
        if self._staging is None or self._staging.numel() < data.nbytes:
            self._staging = torch.empty(data.nbytes, dtype=torch.uint8, pin_memory=True)
        staging = self._staging[: data.nbytes]
        staging.numpy()[...] = data
        with torch.cuda.stream(self._stream):
            handle[: data.nbytes].copy_(staging, non_blocking=True)
        self._stream.synchronize()

    def _device_pointer(self, name: str, array: Any) -> int:
        torch = self._torch
        if isinstance(array, torch.Tensor):
            if array.device != self._device:
                raise CalibrationError(
                    f"input {name!r} is on {array.device} but calibration runs on {self._device}. "
                    f"Hint: move it with .to('{self._device}')."
                )
            if not array.is_contiguous():
                raise CalibrationError(f"input {name!r} is not contiguous. Hint: call .contiguous().")
            return int(array.data_ptr())
        return _cuda_array_pointer(name, array)

    def _synchronize(self) -> None:
        self._torch.cuda.synchronize(self._device)

    def _free_extra(self) -> None:
        self._staging = None


#: Backend name -> class; `select_backend` accepts these names and "auto".
BACKENDS: dict[str, Callable[..., DeviceBuffers]] = {
    "pycuda": PycudaBuffers,
    "cuda-python": CudaPythonBuffers,
    "cupy": CupyBuffers,
    "torch": TorchBuffers,
    "host": HostBuffers,
}


def _create(name: str, device_index: int | None) -> DeviceBuffers:
    if name == "host":
        return HostBuffers()
    return BACKENDS[name](device_index)


def select_backend(name: str = "auto", *, device_index: int | None = None) -> DeviceBuffers:
    """Create the device backend `name`, or with "auto" the first of pycuda, cuda-python, cupy, torch that works.

    `device_index` None (the default) means the current CUDA device, the one TensorRT builds on.

    An explicit backend that fails raises with its reason; "auto" raises listing every backend's reason.
    `host` is never picked automatically: it hands host pointers to TensorRT and exists for dry runs.
    """
    if name != "auto" and name not in BACKENDS:
        raise CalibrationError(f"unknown device backend {name!r}. Choices: auto, {', '.join(BACKENDS)}.")
    if name != "auto":
        try:
            backend = _create(name, device_index)
        except TrtCalibError:
            raise
        except Exception as exc:  # a GPU library failing in a way we did not anticipate
            raise CalibrationError(f"the {name} device backend failed to start: {type(exc).__name__}: {exc}") from exc
        logger.info("device backend: %s (device %s)", backend.name, backend.device_index)
        return backend
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        try:
            backend = _create(candidate, device_index)
        except Exception as exc:  # each failure is a reason to report, not an error yet
            reasons.append(f"{candidate}: {exc}")
            logger.debug("device backend %s unavailable: %s", candidate, exc)
            continue
        logger.info("device backend: %s (device %s; auto)", backend.name, backend.device_index)
        return backend
    raise MissingDependencyError(
        "no GPU device backend works; tried, in order:\n  - "
        + "\n  - ".join(reasons)
        + '\nHint: pip install "trt-calib[gpu]" (pycuda) or cuda-python, cupy or a CUDA build of torch. '
        "The 'host' backend passes host pointers and is for dry runs only."
    )
