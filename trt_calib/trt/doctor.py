"""`doctor`: what this machine has for TensorRT INT8, and whether trt-calib works on it, as a table for bug reports.

Every check ends `pass`, `fail` or `skip` with a reason. The CPU checks run on any machine: the bundled sampleINT8
LeNet calibrated with onnxruntime against the table TensorRT 7 published (`data/caches/sampleINT8_TRT-7000.cache`),
and the cache format's round trip. With TensorRT and a GPU, the same LeNet goes end to end through TensorRT: an
INT8 build with trt-calib's `EntropyCalibrator2` on sampleINT8's batches, the cache TensorRT wrote against our numpy
recomputation of the same batches and against the TRT-7000 table (per tensor: float32 ULPs and the KL index on our
histogram), a second build from that cache alone, and a build whose calibrated ranges are overridden with
`set_dynamic_range`. TensorRT 11 has no calibrator: it builds LeNet quantized to Q/DQ instead.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.cache import CalibrationCache
from ..core.compare import Comparison, compare, ulp_distance
from ..errors import TrtCalibError

__all__ = ["Check", "DoctorReport", "run_doctor", "STATUSES", "DATA_DIR"]

logger = logging.getLogger(__name__)

STATUSES = ("pass", "fail", "skip")
#: The bundled LeNet, its batches and TensorRT 7's table: package data (`trt_calib/bundled/`, which `data/` of a
#: source checkout links to), so the CPU checks run in a wheel install as well.
DATA_DIR = Path(__file__).resolve().parents[1] / "bundled"
_LENET_SHAPE = (50, 1, 28, 28)  # sampleINT8's batches
#: label, modules to try (the first that imports), distributions that may carry its version
_GPU_LIBRARIES = (
    ("pycuda", ("pycuda.driver",), ("pycuda",)),
    ("cuda-python", ("cuda.bindings.runtime", "cuda.cudart"), ("cuda-python", "cuda-bindings")),
    ("cupy", ("cupy",), ()),
    ("torch", ("torch",), ()),
)


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # pass | fail | skip
    detail: str


@dataclass
class DoctorReport:
    """The TensorRT version (None without TensorRT) and the checks, in the order they ran."""

    tensorrt: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """{"tensorrt": version or None, "checks": [{"name", "status", "detail"}]}, for `--json`."""
        return {"tensorrt": self.tensorrt, "checks": [asdict(c) for c in self.checks]}

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check':<{width}}  status  detail"]
        lines += [f"{c.name:<{width}}  {c.status:<6}  {c.detail}" for c in self.checks]
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
        return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}")


class _Doctor:
    def __init__(self, device: str, data_dir: Path, qdq_model: Callable[..., Path] | None, workdir: Path) -> None:
        self.device = device
        self.lenet = data_dir / "lenet" / "lenet.onnx"
        self.batches = data_dir / "lenet" / "sampleint8_batches.py"
        self.reference = data_dir / "caches" / "sampleINT8_TRT-7000.cache"
        self.qdq_model = qdq_model
        self.workdir = workdir
        self.report = DoctorReport(None)
        self.trt: Any = None
        self.gpu_reason = ""
        self.ours: Any = None  # our CPU calibration of LeNet (CalibrationResult)
        self.trt_cache: Path | None = None  # the cache TensorRT wrote in the INT8 build
        self.calibrator: Any = None  # the calibrator of that build

    def add(self, name: str, status: str, detail: str) -> None:
        self.report.checks.append(Check(name, status, _one_line(detail)))

    def run(self, name: str, check: Callable[[], tuple[str, str]]) -> bool:
        """Run one check; an exception is its failure. True when it passed."""
        try:
            status, detail = check()
        except Exception as exc:  # a check that breaks is a finding, not a crash of the doctor
            logger.debug("check %s failed", name, exc_info=True)
            status, detail = "fail", _error(exc)
        self.add(name, status, detail)
        return status == "pass"

    # ---------------------------------------------------------------------------------- the machine
    def versions(self) -> None:
        try:
            self.trt = importlib.import_module("tensorrt")
        except Exception as exc:  # ImportError, or a broken install raising anything
            self.add("tensorrt", "skip", f"not installed ({_error(exc)}); the TensorRT checks are skipped")
        else:
            version = str(getattr(self.trt, "__version__", "?"))
            self.report.tensorrt = version
            standin = " (stand-in, not TensorRT)" if getattr(self.trt, "__standin__", False) else ""
            self.add("tensorrt", "pass", f"{version}{standin}")
        found = [f"{label} {version}" for label, version in _gpu_libraries()]
        if found:
            self.add("gpu libraries", "pass", ", ".join(found))
        else:
            self.add("gpu libraries", "skip", 'none of pycuda, cuda-python, cupy, torch imports. Hint: pip install '
                     '"trt-calib[gpu]" (pycuda) or cuda-python, cupy or a CUDA build of torch')
        self.run("gpu", self._gpu)
        self.run("histogram kernel", self._kernel)

    def _kernel(self) -> tuple[str, str]:
        from ..core import kernel

        if kernel.backend() == "numpy":
            return "skip", "TRT_CALIB_KERNEL=numpy: histograms are binned with numpy (same results, 3-4x slower)"
        started = time.perf_counter()
        if not kernel.warm_up():
            return "skip", ("numba is not installed, or cannot cache its compiled code: histograms are binned with "
                            "numpy (same results, 3-4x slower). Hint: pip install numba (trt-calib installs it where numba has "
                            "wheels), and set "
                            "NUMBA_CACHE_DIR where the package folder and ~/.cache are read-only")
        from importlib.metadata import version

        return "pass", (f"numba {version('numba')}, {kernel.threads()} thread(s) per histogram, loaded in "
                        f"{time.perf_counter() - started:.1f} s (compiled and cached on first use)")

    def _gpu(self) -> tuple[str, str]:
        from ..errors import MissingDependencyError
        from .device import AUTO_ORDER, select_backend

        reasons = []
        for name in AUTO_ORDER if self.device == "auto" else (self.device,):
            try:
                backend = select_backend(name)
            except Exception as exc:  # each backend's reason goes into the report
                if isinstance(exc, MissingDependencyError):
                    why = "not installed"
                else:
                    why = (_one_line(exc) if isinstance(exc, TrtCalibError) else _error(exc)).split(" Hint:")[0]
                reasons.append(f"{name}: {why}")
                continue
            try:
                return "pass", f"{_gpu_details(backend)}; calibration buffers through {backend.name}"
            finally:
                backend.free()
        self.gpu_reason = f"no GPU: no device backend works ({self.device})"
        return ("skip" if self.device == "auto" else "fail"), f"no device backend works: {'; '.join(reasons)}"

    def capabilities(self) -> tuple[str, str]:
        from .build import make_logger
        from .calibrator import quiet_trt_deprecations

        builder = self.trt.Builder(make_logger(self.trt, False))
        if not hasattr(builder, "platform_has_fast_int8"):
            return "skip", (f"TensorRT {self.report.tensorrt} removed platform_has_fast_int8/fp16 (INT8 comes from "
                            "Q/DQ nodes; the GPU's compute capability is in the gpu line)")
        with quiet_trt_deprecations():
            int8, fp16 = bool(builder.platform_has_fast_int8), bool(builder.platform_has_fast_fp16)
        return "pass", f"fast INT8: {'yes' if int8 else 'no'}, fast FP16: {'yes' if fp16 else 'no'}"

    # ---------------------------------------------------------------------------------- CPU checks
    def lenet_inputs(self) -> tuple[Any, Any]:
        from ..ort.model import model_inputs
        from ..ort.data import open_source

        inputs = model_inputs(self.lenet)
        return inputs, open_source(str(self.batches), inputs)

    def reproduction(self) -> tuple[str, str]:
        from ..ort.collect import calibrate

        inputs, source = self.lenet_inputs()
        self.ours = calibrate(self.lenet, source, algorithm="entropy2", trt_version="7.0.0")
        comparison = compare(CalibrationCache.load(self.reference), self.ours)
        return ("pass" if comparison.consistent else "fail"), (
            f"LeNet on onnxruntime vs TensorRT 7's table: {comparison.summary()}{_differing(comparison)}")

    def round_trip(self) -> tuple[str, str]:
        texts = {"the TRT-7000 table": self.reference.read_bytes()}
        if self.ours is not None:
            texts["our LeNet cache"] = self.ours.cache.dumps().encode("ascii")
        entries = 0
        for what, data in texts.items():
            cache = CalibrationCache.parse(data, source=what)
            if cache.dumps().encode("ascii") != data:
                return "fail", f"{what} does not dump back to the same bytes"
            again = CalibrationCache.from_amax(cache.amaxes(), algorithm=cache.algorithm, trt_version=cache.trt_version)
            if [e.hex for e in again.entries] != [e.hex for e in cache.entries]:
                return "fail", f"{what}: scale -> amax -> scale does not give back the same hex"
            entries += len(cache)
        return "pass", (f"{len(texts)} cache(s) parse and dump back byte for byte; {entries} entries survive scale -> "
                        "amax -> scale bit for bit")

    # ---------------------------------------------------------------------------------- TensorRT checks
    def tensorrt_checks(self) -> None:
        names = ["lenet int8 build (EntropyCalibrator2)", "tensorrt cache vs numpy", "tensorrt cache vs TRT-7000 table",
                 "build from the cache", "set_dynamic_range overrides", "lenet q/dq build (TensorRT 11)"]
        reason = "TensorRT is not installed" if self.trt is None else self.gpu_reason
        if reason:
            for name in ["int8/fp16 support", *names]:
                self.add(name, "skip", reason)
            return
        self.run("int8/fp16 support", self.capabilities)
        calibrators = hasattr(self.trt, "IInt8Calibrator") and hasattr(getattr(self.trt, "BuilderFlag", None), "INT8")
        if not calibrators:
            for name in names[:-1]:
                self.add(name, "skip", f"TensorRT {self.report.tensorrt} has no calibrators (implicit INT8 was "
                                       "removed in 11); the Q/DQ build below replaces them")
            self.run(names[-1], self.qdq_build)
            return
        if self.run(names[0], self.int8_build):
            self.run(names[1], self.against_numpy)
            self.run(names[2], self.against_table)
            self.run(names[3], self.from_cache)
            self.run(names[4], self.overrides)
        else:
            for name in names[1:5]:
                self.add(name, "skip", "needs the INT8 build above")
        self.add(names[-1], "skip", f"TensorRT {self.report.tensorrt} calibrates (above); Q/DQ is TensorRT 11's path")

    def _shapes(self) -> dict[str, tuple]:
        return {"data": (_LENET_SHAPE,) * 3}

    def int8_build(self) -> tuple[str, str]:
        from .build import build_engine
        from .calibrator import make_calibrator

        inputs, source = self.lenet_inputs()
        self.trt_cache = self.workdir / "lenet.cache"
        self.calibrator = make_calibrator(source, "entropy2", cache_file=self.trt_cache, device=self.device,
                                          input_specs=inputs, cross_check=self.lenet)
        with self.calibrator:
            result = build_engine(self.lenet, calibrator=self.calibrator, shapes=self._shapes())
        cache = CalibrationCache.load(self.trt_cache)
        return "pass", (f"engine of {len(result.plan)} bytes from {result.batches_fed} batches; TensorRT wrote "
                        f"{cache.header} with {len(cache)} tensors")

    def against_numpy(self) -> tuple[str, str]:
        comparison = self.calibrator.cross_check_result
        if comparison is None:
            error = self.calibrator.cross_check_error
            return "fail", f"no cross-check: {_error(error) if error else 'TensorRT handed over no new cache'}"
        # TensorRT's internal tensors ("(Unnamed Layer* 3) [Constant]_output") are not counted against consistency.
        good = bool(comparison.shared) and comparison.consistent
        return ("pass" if good else "fail"), (
            f"the same 10 batches through numpy: {comparison.summary()}; {_per_tensor(comparison)}")

    def against_table(self) -> tuple[str, str]:
        ours = self.ours
        if ours is None:
            from ..ort.collect import calibrate

            ours = calibrate(self.lenet, self.lenet_inputs()[1], algorithm="entropy2", trt_version="7.0.0")
        rows = _cache_agreement(CalibrationCache.load(self.reference), CalibrationCache.load(self.trt_cache), ours)
        bad = [r for r in rows if r[1] == "differs" or r[1] == "missing"]
        counts: dict[str, int] = {}
        for _, verdict, _ in rows:
            counts[verdict] = counts.get(verdict, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        detail = "; ".join(f"{name} {text}" for name, _, text in rows)
        return ("fail" if bad else "pass"), f"TensorRT's cache vs TensorRT 7's table: {summary}; {detail}"

    def from_cache(self) -> tuple[str, str]:
        from .build import build_engine
        from .calibrator import make_calibrator

        inputs, _ = self.lenet_inputs()
        with make_calibrator([], "entropy2", cache_file=self.trt_cache, device=self.device,
                             input_specs=inputs) as calib:
            result = build_engine(self.lenet, calibrator=calib, shapes=self._shapes())
        if not result.cache_used or result.batches_fed:
            return "fail", f"TensorRT asked for batches although the cache was there ({result.batches_fed} fed)"
        return "pass", f"engine of {len(result.plan)} bytes from {self.trt_cache.name} alone, no batch asked for"

    def overrides(self) -> tuple[str, str]:
        from .build import build_engine
        from .calibrator import make_calibrator

        inputs, _ = self.lenet_inputs()
        table = CalibrationCache.load(self.reference)
        with make_calibrator([], "entropy2", cache_file=self.trt_cache, device=self.device,
                             input_specs=inputs) as calib:
            result = build_engine(self.lenet, calibrator=calib, ranges=table, shapes=self._shapes())
        applied = [d.name for d in result.ranges_report.applied]
        return "pass", (f"engine of {len(result.plan)} bytes with {len(applied)} calibrated ranges overridden by "
                        f"the TRT-7000 table ({', '.join(applied)})")

    def qdq_build(self) -> tuple[str, str]:
        from .build import build_qdq_engine

        if self.qdq_model is None:
            return "skip", "no Q/DQ writer was given (run it as `trt-calib doctor`)"
        if self.ours is None:
            return "skip", "needs the LeNet reproduction above"
        path = self.qdq_model(self.lenet, self.ours.cache, self.workdir / "lenet.qdq.onnx")
        result = build_qdq_engine(path, shapes={"data": _LENET_SHAPE})
        return "pass", f"strongly typed engine of {len(result.plan)} bytes from LeNet quantized to Q/DQ"


def _gpu_libraries() -> list[tuple[str, str]]:
    """(label, version) of each GPU library that imports."""
    from importlib import metadata

    found = []
    for label, modules, dists in _GPU_LIBRARIES:
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception:  # ImportError, or a broken install raising anything
                continue
            top = importlib.import_module(module.split(".")[0])
            version = getattr(top, "VERSION_TEXT", None) or getattr(top, "__version__", None)
            for dist in dists:
                if version is None:
                    try:
                        version = metadata.version(dist)
                    except metadata.PackageNotFoundError:
                        pass
            found.append((label, str(version or "installed")))
            break
    return found


def _differing(comparison: Comparison) -> str:
    bad = [r for r in comparison.shared if not r.consistent]
    if not bad:
        return ""
    return "; differs: " + ", ".join(f"{r.name} ({r.ulps} ULP)" for r in bad)


def _per_tensor(comparison: Comparison) -> str:
    """Per tensor: float32 ULPs between the scales, and the KL index TensorRT's amax lands on / ours."""
    parts = []
    for r in comparison.shared:
        index = "" if r.reference_index is None or r.our_index is None else \
            f", KL index {r.reference_index:.2f}/{r.our_index}"
        parts.append(f"{r.name} {r.ulps} ULP{index}")
    return "; ".join(parts)


def _cache_agreement(reference: CalibrationCache, other: CalibrationCache, ours: Any) -> list[tuple[str, str, str]]:
    """(name, verdict, text) per tensor of `reference`: both caches' amax as a KL index on our histogram of it."""
    rows = []
    scales = other.scales
    for name, amax in reference.amaxes().items():
        if name not in scales:
            rows.append((name, "missing", "not in TensorRT's cache"))
            continue
        ulps = ulp_distance(reference.scales[name], scales[name])
        hist = ours.histograms.get(ours.source_of(name))
        index_text, same_bin = "", False
        if hist is not None and hist.bin_width > 0:
            a, b = amax / hist.bin_width - 0.5, other.amax(name) / hist.bin_width - 0.5
            index_text, same_bin = f", KL index {a:.2f}/{b:.2f}", abs(a - b) < 0.01
        if ulps == 0:
            verdict = "exact"
        elif same_bin:
            verdict = "same-bin"
        elif ulps is not None and ulps <= 4:
            verdict = "within-ulps"
        else:
            verdict = "differs"
        rows.append((name, verdict, f"{ulps} ULP{index_text}"))
    return rows


def _gpu_details(backend: Any) -> str:
    """'device 0: NAME, compute capability X.Y, driver X.Y', from the backend's own library."""
    index = backend.device_index
    try:
        name = capability = driver = None
        if backend.name == "cuda-python":
            rt = backend._rt
            _, props = rt.cudaGetDeviceProperties(index)
            name, capability = props.name, (props.major, props.minor)
            driver = rt.cudaDriverGetVersion()[1]
        elif backend.name == "pycuda":
            device = backend._cuda.Device(index)
            name, capability = device.name(), device.compute_capability()
            driver = backend._cuda.get_driver_version()
        elif backend.name == "cupy":
            runtime = backend._cp.cuda.runtime
            props = runtime.getDeviceProperties(index)
            name, capability = props["name"], (props["major"], props["minor"])
            driver = runtime.driverGetVersion()
        elif backend.name == "torch":
            name = backend._torch.cuda.get_device_name(index)
            capability = backend._torch.cuda.get_device_capability(index)
    except Exception as exc:  # details are a courtesy: the backend itself works
        return f"device {index} (details unavailable: {_error(exc)})"
    name = name.decode(errors="replace").rstrip("\0") if isinstance(name, bytes) else name
    parts = [f"device {index}: {name}"]
    if capability is not None:
        parts.append(f"compute capability {capability[0]}.{capability[1]}")
    if driver:
        parts.append(f"driver {int(driver) // 1000}.{int(driver) % 1000 // 10}")
    return ", ".join(parts)


def run_doctor(
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    qdq_model: Callable[[Path, CalibrationCache, Path], Path] | None = None,
) -> DoctorReport:
    """Run every check and return the report (nothing is written outside a temporary folder).

    `device`: the device backend for calibration buffers (``auto`` tries each). `data_dir`: the folder holding
    `lenet/` and `caches/` (default: the package's own, `DATA_DIR`). `qdq_model(model, cache, out)`: writes LeNet
    quantized to Q/DQ for the TensorRT 11 build; the CLI passes `trt_calib.qdq.quantize_model` (`trt` sits beside
    `qdq` in the layers, not above it).
    """
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    with tempfile.TemporaryDirectory(prefix="trt-calib-doctor-") as tmp:
        doctor = _Doctor(device, data, qdq_model, Path(tmp))
        doctor.versions()
        missing = [p for p in (doctor.lenet, doctor.batches, doctor.reference) if not p.is_file()]
        if missing:
            reason = (f"the bundled LeNet is not here ({', '.join(str(p) for p in missing)}): the package was installed "
                      "without its data. Hint: reinstall trt-calib from its wheel or a source checkout")
            doctor.add("lenet reproduction (cpu)", "skip", reason)
            doctor.add("cache round trip (cpu)", "skip", reason)
            if doctor.trt is not None:
                doctor.add("tensorrt end to end", "skip", reason)
            return doctor.report
        doctor.run("lenet reproduction (cpu)", doctor.reproduction)
        doctor.run("cache round trip (cpu)", doctor.round_trip)
        doctor.tensorrt_checks()
        return doctor.report
