"""Device buffers: the host backend, backend selection and its reasons, and the pycuda call sequence.

CPU tests use a fake `pycuda` (defined here; it proves the calls we make, not that CUDA accepts them). The tests
marked `gpu` use the real libraries on a GPU machine: `python3 -m pytest -m gpu tests/test_device.py`.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from trt_calib.trt.device import (
    AUTO_ORDER,
    HostBuffers,
    PycudaBuffers,
    is_device_array,
    select_backend,
)
from trt_calib.errors import CalibrationError, MissingDependencyError


def read_host(pointer: int, like: np.ndarray) -> np.ndarray:
    return np.frombuffer(ctypes.string_at(pointer, like.nbytes), dtype=like.dtype).reshape(like.shape)


# ---------------------------------------------------------------------------------------------------- host


def test_host_upload_copies_the_bytes_and_reuses_the_buffer():
    buffers = HostBuffers()
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    p1 = buffers.upload("x", a)
    np.testing.assert_array_equal(read_host(p1, a), a)
    b = a[::-1].copy()
    p2 = buffers.upload("x", b)
    assert p2 == p1 and buffers.capacity("x") == 48
    np.testing.assert_array_equal(read_host(p2, b), b)
    a[0, 0] = 99  # the buffer holds a copy, not the caller's array
    assert read_host(p2, b)[0, 0] == b[0, 0]


def test_host_buffer_grows_for_a_larger_batch_and_keeps_inputs_apart():
    buffers = HostBuffers()
    buffers.upload("x", np.zeros(4, np.float32))
    big = np.arange(100, dtype=np.float32)
    p = buffers.upload("x", big)
    assert buffers.capacity("x") == 400
    np.testing.assert_array_equal(read_host(p, big), big)
    q = buffers.upload("y", np.ones(3, np.int32))
    assert q != p and buffers.capacity("y") == 12


def test_host_refuses_non_contiguous_arrays_naming_the_input():
    with pytest.raises(CalibrationError, match="input 'img' is not C-contiguous"):
        HostBuffers().upload("img", np.zeros((4, 4), np.float32)[:, ::2])


def test_free_is_idempotent_and_upload_after_free_is_an_error():
    buffers = HostBuffers()
    buffers.upload("x", np.zeros(2, np.float32))
    buffers.free()
    buffers.free()
    assert buffers.capacity("x") == 0
    with pytest.raises(CalibrationError, match="were freed"):
        buffers.upload("x", np.zeros(2, np.float32))


def test_host_copies_gpu_like_arrays_to_the_host():
    class FakeCupy:
        """Something with __cuda_array_interface__ and .get(), like a CuPy array."""

        def __init__(self, host):
            self.host = host
            self.__cuda_array_interface__ = {"shape": host.shape, "typestr": "<f4", "data": (1, False), "version": 3}

        def get(self):
            return self.host

    host = np.arange(6, dtype=np.float32)
    arr = FakeCupy(host)
    assert is_device_array(arr)
    p = HostBuffers().upload("x", arr)
    np.testing.assert_array_equal(read_host(p, host), host)


# ---------------------------------------------------------------------------------------------------- selection


@pytest.fixture
def no_gpu_libraries(monkeypatch):
    """Make every GPU library unimportable, and torch a CPU-only build (hermetic: same result on a GPU machine)."""
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cupy"):
        monkeypatch.setitem(sys.modules, name, None)
    torch = types.ModuleType("torch")
    torch.__version__ = "2.99.0+cpu"
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", torch)


def test_auto_without_gpu_libraries_lists_every_reason(no_gpu_libraries):
    with pytest.raises(MissingDependencyError) as info:
        select_backend("auto")
    message = str(info.value)
    for name in AUTO_ORDER:
        assert f"  - {name}: " in message
    assert 'pip install "trt-calib[gpu]"' in message  # pycuda's own hint
    assert "torch 2.99.0+cpu is installed but torch.cuda.is_available() is False" in message
    assert "'host' backend passes host pointers and is for dry runs only" in message
    assert message.index("pycuda:") < message.index("cuda-python:") < message.index("cupy:") < message.index("torch:")


def test_an_explicit_backend_that_is_missing_says_how_to_get_it(no_gpu_libraries):
    with pytest.raises(MissingDependencyError, match=r'pycuda.driver is needed for the pycuda device backend.*'
                                                     r'pip install "trt-calib\[gpu\]"'):
        select_backend("pycuda")
    with pytest.raises(CalibrationError, match=r"torch.cuda.is_available\(\) is False"):
        select_backend("torch")


def test_unknown_backend_lists_the_choices():
    with pytest.raises(CalibrationError, match="unknown device backend 'opencl'. Choices: auto, pycuda, cuda-python"):
        select_backend("opencl")


def test_host_is_chosen_only_by_name():
    backend = select_backend("host")
    assert isinstance(backend, HostBuffers) and backend.name == "host"
    assert "host" not in AUTO_ORDER


# ---------------------------------------------------------------------------------------------------- fake pycuda


class FakePycuda:
    """A fake pycuda.driver: host memory for device memory, and a log of calls (context pushes and pops included).

    Its errors derive from its own Error class, not from the builtin RuntimeError, as pycuda's do.
    """

    def __init__(self, init_error: str | None = None, devices: int = 1):
        self.log: list[str] = []
        self.stack: list[object] = []
        self.memory: dict[int, np.ndarray] = {}
        self.allocations: list = []
        self.init_error = init_error
        self.devices = devices
        self.detached = 0
        fake = self

        class Error(Exception):
            pass

        class RuntimeError_(Error):  # noqa: N801 - pycuda._driver.RuntimeError
            pass

        RuntimeError_.__name__ = "RuntimeError"
        self.Error, self.RuntimeError = Error, RuntimeError_

        class Context:
            handle = 0xC0FFEE

            def __init__(self, device=None):
                self.device = device

            @staticmethod
            def get_device():  # cuCtxGetDevice: the current context's device, an error when none is current
                if not fake.stack:
                    raise RuntimeError_("cuCtxGetDevice failed: invalid device context")
                return fake.stack[-1].device

            def push(self):
                fake.log.append("push")
                fake.stack.append(self)

            @staticmethod
            def pop():
                fake.log.append("pop")
                fake.stack.pop()

            @staticmethod
            def synchronize():
                fake.log.append("ctx.synchronize")

            @staticmethod
            def get_current():
                return fake.stack[-1] if fake.stack else None

            def detach(self):
                fake.detached += 1

        class Device:
            def __init__(self, index):
                if not 0 <= index < fake.devices:
                    raise RuntimeError_("cuDeviceGet failed: invalid device ordinal")
                self.index = index  # pycuda's Device has no ordinal attribute; only the fake reads it

            def __eq__(self, other):
                return isinstance(other, Device) and other.index == self.index

            __hash__ = None

            @staticmethod
            def count():
                return fake.devices

            def retain_primary_context(self):
                fake.log.append(f"retain_primary_context {self.index}")
                return Context(self)

        class Stream:
            def synchronize(self):
                fake.log.append("stream.synchronize")

        class Allocation:
            def __init__(self, nbytes):
                self.device = fake.stack[-1].device.index  # the device of the context current at allocation
                self.buf = np.zeros(nbytes, np.uint8)
                fake.memory[self.buf.ctypes.data] = self.buf
                self.freed = False

            def __int__(self):
                return self.buf.ctypes.data

            def free(self):
                fake.log.append("free")
                self.freed = True

        class Pinned:
            def __init__(self):
                self.freed = False

            def free(self):
                fake.log.append("free pinned")
                self.freed = True

        def init():
            fake.log.append("init")
            if fake.init_error:
                raise RuntimeError_(fake.init_error)

        def mem_alloc(nbytes):
            fake.require_context("mem_alloc")
            fake.log.append(f"mem_alloc {nbytes}")
            allocation = Allocation(nbytes)
            fake.allocations.append(allocation)
            return allocation

        def pagelocked_empty(shape, dtype):
            fake.log.append(f"pagelocked_empty {shape[0]}")
            holder = Pinned()
            arr = np.zeros(shape, dtype)
            fake.pinned = holder
            # numpy arrays cannot take a custom .base, so wrap: a view whose base we control
            return _PinnedArray(arr, holder)

        def memcpy_htod_async(dest, src, stream):
            fake.require_context("memcpy_htod_async")
            fake.log.append("memcpy_htod_async")
            assert isinstance(src, _PinnedArray), "copies must come from pinned staging memory"
            data = np.asarray(src).view(np.uint8).reshape(-1)
            fake.memory[int(dest)][: data.size] = data

        self.module = types.ModuleType("pycuda.driver")
        for name, value in dict(
            Error=Error, RuntimeError=RuntimeError_, Context=Context, Device=Device, Stream=Stream, init=init,
            mem_alloc=mem_alloc, pagelocked_empty=pagelocked_empty, memcpy_htod_async=memcpy_htod_async,
        ).items():
            setattr(self.module, name, value)

    def require_context(self, what):
        assert self.stack, f"{what} called with no context pushed"


class _PinnedArray(np.ndarray):
    """An ndarray whose `.base` is the fake page-locked allocation (like pycuda's pagelocked arrays)."""

    def __new__(cls, arr, holder):
        obj = arr.view(cls)
        obj._holder = holder
        return obj

    def __array_finalize__(self, obj):
        self._holder = getattr(obj, "_holder", None)

    @property
    def base(self):  # type: ignore[override]
        return self._holder


@pytest.fixture
def fake_pycuda(monkeypatch):
    fake = FakePycuda()
    package = types.ModuleType("pycuda")
    package.driver = fake.module
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake.module)
    return fake


def test_pycuda_uses_the_primary_context_and_leaves_the_context_stack_as_it_found_it(fake_pycuda):
    backend = select_backend("pycuda")
    assert backend.name == "pycuda"
    assert fake_pycuda.log[:2] == ["init", "retain_primary_context 0"]
    a = np.arange(6, dtype=np.float32)
    pointer = backend.upload("x", a)
    assert fake_pycuda.stack == []  # pushed for the operation, popped after
    assert fake_pycuda.log.count("push") == fake_pycuda.log.count("pop")
    np.testing.assert_array_equal(fake_pycuda.memory[pointer][: a.nbytes].view(np.float32), a)
    assert "pycuda.autoinit" not in sys.modules


def test_pycuda_synchronises_the_stream_before_returning_the_pointer(fake_pycuda):
    backend = select_backend("pycuda")
    fake_pycuda.log.clear()
    backend.upload("x", np.ones(4, np.float32))
    log = fake_pycuda.log
    assert log.index("memcpy_htod_async") < log.index("stream.synchronize") < len(log) - 1
    assert log[-1] == "pop"


def test_pycuda_reuses_buffers_and_grows_them(fake_pycuda):
    backend = select_backend("pycuda")
    p1 = backend.upload("x", np.zeros(8, np.float32))
    p2 = backend.upload("x", np.ones(8, np.float32))
    assert p1 == p2
    assert sum(1 for c in fake_pycuda.log if c.startswith("mem_alloc")) == 1
    assert sum(1 for c in fake_pycuda.log if c.startswith("pagelocked_empty")) == 1
    backend.upload("x", np.ones(16, np.float32))
    assert [c for c in fake_pycuda.log if c.startswith("mem_alloc")] == ["mem_alloc 32", "mem_alloc 64"]
    assert "free" in fake_pycuda.log and "free pinned" in fake_pycuda.log  # the smaller ones released
    assert backend.capacity("x") == 64


def test_pycuda_free_releases_everything_and_the_context_hold(fake_pycuda):
    backend = select_backend("pycuda")
    backend.upload("x", np.zeros(8, np.float32))
    backend.upload("y", np.zeros(2, np.float32))
    fake_pycuda.log.clear()
    backend.free()
    assert fake_pycuda.log.count("free") == 2 and fake_pycuda.log.count("free pinned") == 1
    assert fake_pycuda.detached == 1 and fake_pycuda.stack == []
    backend.free()
    assert fake_pycuda.detached == 1


def test_a_pycuda_driver_error_is_caught_although_it_is_no_builtin_runtime_error(fake_pycuda):
    fake_pycuda.init_error = "cuInit failed: no CUDA-capable device is detected"
    assert not issubclass(fake_pycuda.RuntimeError, RuntimeError)
    with pytest.raises(CalibrationError, match="pycuda could not use the current CUDA device: RuntimeError: cuInit fail"):
        select_backend("pycuda")


def test_auto_goes_past_a_failing_pycuda_and_keeps_its_reason(fake_pycuda, monkeypatch):
    fake_pycuda.init_error = "cuInit failed: no CUDA-capable device is detected"
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cupy"):
        monkeypatch.setitem(sys.modules, name, None)
    torch = types.ModuleType("torch")
    torch.__version__ = "2.99.0+cpu"
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", torch)
    with pytest.raises(MissingDependencyError, match="pycuda: pycuda could not use the current CUDA device: Runtim"):
        select_backend("auto")


def test_pycuda_device_index_out_of_range(fake_pycuda):
    with pytest.raises(CalibrationError, match="pycuda sees 1 CUDA device\\(s\\); device index 3 does not exist"):
        PycudaBuffers(3)


# ---------------------------------------------------------------------------------------------------- GPU
# Run on a GPU machine: python3 -m pytest -m gpu tests/test_device.py -v


class _CudaArray:
    """A zero-copy view of raw device memory for torch/CuPy (__cuda_array_interface__ v3)."""

    def __init__(self, pointer: int, shape: tuple[int, ...], typestr: str = "<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (pointer, False),
                                         "strides": None, "version": 3}


def _torch_sum_of(pointer: int, n: int) -> float | None:
    """Sum of n float32 at `pointer`, computed by a torch kernel (None without a CUDA torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    t = torch.as_tensor(_CudaArray(pointer, (n,)), device="cuda")
    value = float(t.sum().item())
    torch.cuda.synchronize()
    return value


@pytest.mark.gpu
def test_gpu_pycuda_upload_read_back_reuse_and_primary_context():
    cuda = pytest.importorskip("pycuda.driver")
    backend = select_backend("pycuda")
    try:
        a = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
        p1 = backend.upload("x", a)
        back = np.empty_like(a)
        primary = cuda.Device(0).retain_primary_context()
        primary.push()
        try:
            cuda.memcpy_dtoh(back, p1)
            assert cuda.Context.get_current().handle == backend._context.handle  # the one primary context
        finally:
            cuda.Context.pop()
            primary.detach()
        np.testing.assert_array_equal(back, a)
        b = a * 2
        p2 = backend.upload("x", b)
        assert p2 == p1 and backend.capacity("x") == a.nbytes  # reused across batches
        torch_sum = _torch_sum_of(p2, b.size)  # a torch kernel reads pycuda's memory: same context
        if torch_sum is not None:
            assert torch_sum == pytest.approx(float(b.sum(dtype=np.float64)), rel=1e-4)
        assert "pycuda.autoinit" not in sys.modules
    finally:
        backend.free()


@pytest.mark.gpu
def test_gpu_cuda_python_upload_read_back_and_reuse():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    backend = select_backend("cuda-python")
    try:
        a = np.arange(1000, dtype=np.float32)
        p1 = backend.upload("x", a)
        back = np.empty_like(a)
        err, = runtime.cudaMemcpy(back.ctypes.data, p1, a.nbytes, runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        assert err == runtime.cudaError_t.cudaSuccess
        np.testing.assert_array_equal(back, a)
        p2 = backend.upload("x", a[::-1].copy())
        assert p2 == p1
        torch_sum = _torch_sum_of(p2, a.size)
        if torch_sum is not None:
            assert torch_sum == pytest.approx(float(a.sum()), rel=1e-6)
    finally:
        backend.free()


@pytest.mark.gpu
def test_gpu_cupy_upload_read_back_reuse_and_zero_copy():
    cp = pytest.importorskip("cupy")
    backend = select_backend("cupy")
    try:
        a = np.arange(512, dtype=np.float32).reshape(8, 64)
        p1 = backend.upload("x", a)
        back = cp.asarray(_CudaArray(p1, a.shape)).get()
        np.testing.assert_array_equal(back, a)
        p2 = backend.upload("x", a + 1)
        assert p2 == p1
        np.testing.assert_array_equal(cp.asarray(_CudaArray(p2, a.shape)).get(), a + 1)
        on_gpu = cp.asarray(a)
        assert backend.upload("y", on_gpu) == on_gpu.data.ptr  # CuPy arrays pass zero-copy
    finally:
        backend.free()


@pytest.mark.gpu
def test_gpu_torch_host_copy_and_zero_copy_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    backend = select_backend("torch")
    try:
        a = np.linspace(-1, 1, 300, dtype=np.float32)
        p = backend.upload("x", a)
        back = torch.as_tensor(_CudaArray(p, a.shape), device="cuda").cpu().numpy()
        np.testing.assert_array_equal(back, a)
        t = torch.ones(10, device="cuda")
        assert backend.upload("y", t) == t.data_ptr()
    finally:
        backend.free()


@pytest.mark.gpu
def test_gpu_calibrator_with_pycuda_fed_by_the_standin_driver(monkeypatch):
    cuda = pytest.importorskip("pycuda.driver")
    import trt_standin
    from trt_calib.trt.calibrator import make_calibrator

    trt_standin.install(monkeypatch, "10.3.0", cuda_python="keep")
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(2, 3, 4)).astype(np.float32)} for _ in range(3)]
    with make_calibrator(batches, device="pycuda") as calib:
        result = trt_standin.drive(calib, {"x": ((2, 3, 4), np.float32)}, memory="real-gpu")
        assert len(result.pointers) == 3 and len(set(p[0] for p in result.pointers)) == 1
        back = np.empty_like(batches[-1]["x"])
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
        try:
            cuda.memcpy_dtoh(back, result.pointers[-1][0])
        finally:
            cuda.Context.pop()
            ctx.detach()
        np.testing.assert_array_equal(back, batches[-1]["x"])
        assert calib.backend.name == "pycuda"


def _current_device(backend: str) -> int:
    """The current CUDA device as the backend's own library sees it."""
    if backend == "pycuda":
        return 0  # no context is current in a fresh test: the CUDA runtime's default device
    if backend == "cuda-python":
        from cuda.bindings import runtime

        err, device = runtime.cudaGetDevice()
        assert err == runtime.cudaError_t.cudaSuccess
        return device
    if backend == "cupy":
        import cupy

        return int(cupy.cuda.runtime.getDevice())
    import torch

    return int(torch.cuda.current_device())


def _read_back(backend: str, pointer: int, like: np.ndarray) -> np.ndarray:
    """`like.nbytes` bytes of device memory at `pointer`, copied to the host with the backend's own library."""
    out = np.empty_like(like)
    if backend == "pycuda":
        import pycuda.driver as cuda

        context = cuda.Device(0).retain_primary_context()
        context.push()
        try:
            cuda.memcpy_dtoh(out, pointer)
        finally:
            cuda.Context.pop()
            context.detach()
    elif backend == "cuda-python":
        from cuda.bindings import runtime

        err, = runtime.cudaMemcpy(out.ctypes.data, pointer, out.nbytes, runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        assert err == runtime.cudaError_t.cudaSuccess
    elif backend == "cupy":
        import cupy

        out = cupy.asarray(_CudaArray(pointer, like.shape)).get()
    else:
        import torch

        out = torch.as_tensor(_CudaArray(pointer, like.shape), device="cuda").cpu().numpy()
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend, module", [("pycuda", "pycuda.driver"), ("cuda-python", "cuda.bindings.runtime"),
                                             ("cupy", "cupy"), ("torch", "torch")])
def test_gpu_calibrator_fed_through_each_backend_on_the_current_device(monkeypatch, backend, module):
    """float16 batches reach TensorRT as float32 device buffers of the current device, through every backend."""
    pytest.importorskip(module)
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("torch without CUDA")
    import trt_standin
    from trt_calib.trt.calibrator import make_calibrator

    trt_standin.install(monkeypatch, "10.3.0", cuda_python="keep")  # the real GPU libraries
    rng = np.random.default_rng(2)
    batches = [{"x": rng.normal(size=(2, 3, 4)).astype(np.float16)} for _ in range(3)]
    with make_calibrator(batches, device=backend) as calib:
        result = trt_standin.drive(calib, {"x": ((2, 3, 4), np.float16)}, memory="real-gpu")
        assert len(result.pointers) == 3 and calib.backend.name == backend
        assert calib.backend.device_index == _current_device(backend)
        assert calib.backend.capacity("x") == 2 * 3 * 4 * 4  # float32: what TensorRT reads
        back = _read_back(backend, result.pointers[-1][0], batches[-1]["x"].astype(np.float32))
        np.testing.assert_array_equal(back, batches[-1]["x"].astype(np.float32))
