"""TensorRT's calibration cache text format: parse, write, versions and algorithms.

```
TRT-<version>-<Algorithm>
<tensor name>: <hex of the float32 bits of scale = amax / 127>
```
The hex is printf("%x") of the bit pattern: lowercase, no padding, `0` for a zero scale. Names may hold colons,
spaces and brackets, so a line splits at its last ": ". TensorRT 4 wrote the bare header `1`.
Versions: TensorRT <= 8.x writes MAJOR*1000 + MINOR*100 + PATCH, 10.x writes (MAJOR*100 + MINOR)*100 + PATCH.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .._util import atomic_write
from ..errors import CacheFormatError

__all__ = [
    "CalibrationCache",
    "CacheEntry",
    "TRT_ALGORITHMS",
    "DEFAULT_TRT_VERSION",
    "scale_to_hex",
    "hex_to_scale",
    "amax_to_scale",
    "scale_to_amax",
    "encode_version",
    "decode_version",
    "make_header",
    "entry_kind",
    "UNNAMED_RE",
]

# Header names of TensorRT's calibrators. The first two are seen in real caches; the others are presumed.
TRT_ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = "10.16.1"
LEGACY_HEADER = "1"

_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{1,8}$")


def scale_to_hex(scale: float) -> str:
    """printf("%x") of the float32 bit pattern, as TensorRT writes it."""
    return format(struct.unpack(">I", struct.pack(">f", np.float32(scale)))[0], "x")


def hex_to_scale(text: str) -> float:
    """The float32 scale a hex field encodes (1 to 8 hex digits)."""
    return struct.unpack(">f", bytes.fromhex(text.zfill(8)))[0]


def amax_to_scale(amax: float) -> float:
    """scale = float32(amax) / 127 in float32, TensorRT's rounding."""
    with np.errstate(over="ignore"):
        return float(np.float32(amax) / np.float32(127.0))


def scale_to_amax(scale: float) -> float:
    """amax = scale * 127 in float32 (how TensorRT and ONNX Runtime's TensorRT EP read a cache)."""
    with np.errstate(over="ignore"):
        return float(np.float32(scale) * np.float32(127.0))


def encode_version(version: str | tuple[int, ...]) -> int:
    """'10.16.1' -> 101601, '8.6.1' -> 8601: the number TensorRT puts in the header (getInferLibVersion)."""
    try:
        parts = tuple(int(p) for p in version.split(".")) if isinstance(version, str) else tuple(map(int, version))
    except ValueError:
        parts = ()
    if not 1 <= len(parts) <= 4 or any(p < 0 for p in parts):
        raise ValueError(f"not a TensorRT version: {version!r} (expected MAJOR.MINOR.PATCH)")
    major, minor, patch = (list(parts[:3]) + [0, 0])[:3]
    if major >= 10:
        return (major * 100 + minor) * 100 + patch
    if minor > 9:
        raise ValueError(f"TensorRT {major}.x headers cannot encode minor version {minor}")
    return major * 1000 + minor * 100 + patch


def decode_version(number: int) -> tuple[int, int, int]:
    """101601 -> (10, 16, 1), 8601 -> (8, 6, 1)."""
    if number >= 100000:
        return number // 10000, number // 100 % 100, number % 100
    return number // 1000, number // 100 % 10, number % 100


def make_header(algorithm: str, trt_version: str | tuple[int, ...] = DEFAULT_TRT_VERSION) -> str:
    """The header TensorRT `trt_version` writes for `algorithm`, e.g. TRT-101601-EntropyCalibration2."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", algorithm):
        raise ValueError(f"not a calibration algorithm name: {algorithm!r}")
    return f"TRT-{encode_version(trt_version)}-{algorithm}"


@dataclass(frozen=True)
class CacheEntry:
    """One line of a cache: the tensor name and the hex text exactly as written."""

    name: str
    hex: str

    @property
    def scale(self) -> float:
        return hex_to_scale(self.hex)

    @property
    def amax(self) -> float:
        return scale_to_amax(self.scale)


class CalibrationCache:
    """A TensorRT calibration cache: header plus ordered entries. Parsing then dumping gives the same bytes."""

    def __init__(
        self,
        header: str,
        entries: Iterable[CacheEntry | tuple[str, str]] = (),
        *,
        newline: str = "\n",
        final_newline: bool = True,
        source: str | None = None,
    ) -> None:
        self.header = header
        self.entries: list[CacheEntry] = [e if isinstance(e, CacheEntry) else CacheEntry(*e) for e in entries]
        self.newline = newline
        self.final_newline = final_newline
        self.source = source

    # ------------------------------------------------------------------ reading
    @classmethod
    def parse(cls, text: str | bytes, source: str | os.PathLike | None = None) -> "CalibrationCache":
        """Parse cache text; malformed input raises `CacheFormatError` naming the source and line."""
        where = str(source) if source is not None else "<cache>"
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("ascii")
            except UnicodeDecodeError as exc:
                raise CacheFormatError(f"{where}: not a text calibration cache (byte {exc.start} is not ASCII)") from None
        if not text:
            raise CacheFormatError(f"{where}: empty file, expected a header such as TRT-8601-EntropyCalibration2")
        newline = "\r\n" if "\r\n" in text else "\n"
        final_newline = text.endswith(newline)
        body = text[: -len(newline)] if final_newline else text
        lines = body.split(newline)
        header = lines[0].strip()
        if header != LEGACY_HEADER and not _HEADER_RE.match(header):
            raise CacheFormatError(
                f"{where}:1: header {lines[0]!r} is not a TensorRT calibration header "
                "(expected TRT-<version>-<Algorithm>, e.g. TRT-8601-EntropyCalibration2, or 1 for TensorRT 4)"
            )
        entries = []
        for number, line in enumerate(lines[1:], start=2):
            name, sep, value = line.rpartition(": ")
            value = value.strip()
            if not sep or not name:
                raise CacheFormatError(f"{where}:{number}: expected '<tensor name>: <hex scale>', got {line!r}")
            if not _HEX_RE.match(value):
                raise CacheFormatError(
                    f"{where}:{number}: tensor {name!r} has scale {value!r}, not 1-8 hex digits of a float32"
                )
            entries.append(CacheEntry(name, value))
        return cls(header, entries, newline=newline, final_newline=final_newline, source=where)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationCache":
        """Read and parse a cache file; a missing file is a `CacheFormatError` naming it."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise CacheFormatError(f"{path}: no such calibration cache") from None
        except IsADirectoryError:
            raise CacheFormatError(f"{path}: is a directory, not a calibration cache") from None
        return cls.parse(data, source=path)

    @classmethod
    def from_amax(
        cls,
        amax: Mapping[str, float],
        *,
        algorithm: str = "EntropyCalibration2",
        trt_version: str | tuple[int, ...] = DEFAULT_TRT_VERSION,
    ) -> "CalibrationCache":
        """A cache for the given thresholds, written as TensorRT `trt_version` writes it for `algorithm`."""
        entries = [CacheEntry(name, scale_to_hex(amax_to_scale(value))) for name, value in amax.items()]
        return cls(make_header(algorithm, trt_version), entries)

    # ------------------------------------------------------------------ writing
    def dumps(self) -> str:
        """The cache text, byte for byte what was parsed (or TensorRT's layout for a new cache)."""
        lines = [self.header] + [f"{e.name}: {e.hex}" for e in self.entries]
        return self.newline.join(lines) + (self.newline if self.final_newline else "")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file renamed into place, so a failure never leaves half a cache."""
        return atomic_write(path, self.dumps().encode("ascii"))

    # ------------------------------------------------------------------ header
    @property
    def is_legacy(self) -> bool:
        """True for TensorRT 4's bare `1` header."""
        return self.header == LEGACY_HEADER

    @property
    def algorithm(self) -> str:
        """Calibrator name from the header; TensorRT 4's `1` header came from its (v1) EntropyCalibrator."""
        if self.is_legacy:
            return "EntropyCalibration"
        match = _HEADER_RE.match(self.header)
        return match.group(2) if match else ""

    @property
    def version_number(self) -> int | None:
        """The raw number in the header (e.g. 8601), None for TensorRT 4's header."""
        match = _HEADER_RE.match(self.header)
        return int(match.group(1)) if match else None

    @property
    def trt_version(self) -> str:
        """TensorRT version that wrote the cache, e.g. '8.6.1', '10.3.0', or '4 (legacy header)'."""
        number = self.version_number
        if number is None:
            return "4 (legacy header)"
        return ".".join(str(p) for p in decode_version(number))

    # ------------------------------------------------------------------ values
    @property
    def scales(self) -> dict[str, float]:
        """Ordered mapping tensor name -> float32 scale (for a duplicated name, the last line wins)."""
        return {e.name: e.scale for e in self.entries}

    def amax(self, name: str) -> float:
        """scale * 127 for `name` (KeyError naming the tensor if absent)."""
        for entry in reversed(self.entries):
            if entry.name == name:
                return entry.amax
        raise KeyError(f"tensor {name!r} is not in the cache {self.source or ''}".rstrip())

    def amaxes(self) -> dict[str, float]:
        """Ordered mapping tensor name -> amax."""
        return {e.name: e.amax for e in self.entries}

    def duplicates(self) -> list[str]:
        """Names that appear on more than one line, in first-seen order."""
        seen: dict[str, int] = {}
        for e in self.entries:
            seen[e.name] = seen.get(e.name, 0) + 1
        return [n for n, c in seen.items() if c > 1]

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def __repr__(self) -> str:
        return f"CalibrationCache({self.header!r}, {len(self.entries)} entries)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalibrationCache):
            return NotImplemented
        return self.dumps() == other.dumps()


# A tensor name TensorRT made up (numbered per build, so it moves whenever the network changes), and the ONNX parser's
# helper tensors: entries a recomputation from the ONNX graph cannot have.
UNNAMED_RE = re.compile(r"^\(Unnamed Layer\* (\d+)\) \[[^\]]+\]_output(?:_\d+)?$")
ONNXTRT_RE = re.compile(r"^ONNXTRT_")


def entry_kind(name: str, initializers: Iterable[str] = ()) -> str:
    """'unnamed' for TensorRT's (Unnamed Layer* N) names, 'internal' for parser helpers, else 'named'.

    Internal names are ONNXTRT_* helpers of the ONNX parser and TensorRT 10's `<initializer>_output` tensors of
    initializers that became constant layers (only recognised when the model's initializer names are given).
    """
    if UNNAMED_RE.match(name):
        return "unnamed"
    if ONNXTRT_RE.match(name):
        return "internal"
    if name.endswith("_output") and name[: -len("_output")] in set(initializers):
        return "internal"
    return "named"
