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

from .._util import atomic_write, read_bounded
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
    "version_number_problem",
    "make_header",
    "entry_kind",
    "UNNAMED_RE",
    "MAX_CACHE_BYTES",
]

# Header names of TensorRT's calibrators. The first two are seen in real caches; the others are presumed.
TRT_ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = "10.16.1"
LEGACY_HEADER = "1"

_HEADER_RE = re.compile(r"TRT-(\d+)-([A-Za-z0-9_]+)")
_HEX_RE = re.compile(r"[0-9a-fA-F]{1,8}")
_LINE_END = re.compile(r"(\r\n|\n)")
_BOMS = ((b"\xef\xbb\xbf", "UTF-8"), (b"\xff\xfe", "UTF-16 little-endian"), (b"\xfe\xff", "UTF-16 big-endian"))
#: No calibration cache comes near this (one short line per tensor); reading stops here (`inspect /dev/zero`).
MAX_CACHE_BYTES = 64 << 20
_CLIP = 200


def _clip(text: str) -> str:
    """repr() of a line for a message, cut to 200 characters (a bad line may be megabytes long)."""
    shown = repr(text)
    return shown if len(shown) <= _CLIP else f"{shown[:_CLIP]}... ({len(text)} characters)"


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


def version_number_problem(digits: str) -> str | None:
    """Why the digits of a `TRT-<digits>-` header are not a number TensorRT writes, or None when they are.

    TensorRT writes getInferLibVersion() in decimal, without leading zeros: MAJOR*1000 + MINOR*100 + PATCH up to
    8.x (at most 4 digits, 9999), (MAJOR*100 + MINOR)*100 + PATCH from 10.0 (6 digits). "08601" is not 8601 as
    text, and 10101 decodes to 10.1.1, whose header is 100101: neither is what a TensorRT writes.
    """
    if not digits.isdigit():
        return f"{digits!r} is not a decimal number"
    if len(digits) > 1 and digits.startswith("0"):
        return f"{digits} has a leading zero (TensorRT writes {int(digits)})"
    number = int(digits)
    try:
        again = encode_version(decode_version(number))
    except ValueError:
        again = None
    if again != number:
        major, minor, patch = decode_version(number)
        return (f"{digits} is no TensorRT's version number (read as {major}.{minor}.{patch}, whose header number is "
                f"{again}; TensorRT <= 8.x writes up to 4 digits, 10.x and later 6)")
    return None


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
        notes: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.header = header
        self.entries: list[CacheEntry] = [e if isinstance(e, CacheEntry) else CacheEntry(*e) for e in entries]
        self.newline = newline
        self.final_newline = final_newline
        self.source = source
        self.notes: list[tuple[str, str]] = list(notes)  # (code, message): what parsing accepted but noticed

    # ------------------------------------------------------------------ reading
    @classmethod
    def parse(cls, text: str | bytes, source: str | os.PathLike | None = None) -> "CalibrationCache":
        """Parse cache text; malformed input raises `CacheFormatError` naming the source and line.

        Lines end with LF or CRLF (a file may mix both; each line is split and checked on its own). Names are
        UTF-8 text. What TensorRT may read differently from us (whitespace around the header or a scale, mixed line
        endings) is accepted and recorded in `notes` as (code, message) pairs.
        """
        where = str(source) if source is not None else "<cache>"
        if isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
            for bom, name in _BOMS:
                if data.startswith(bom):
                    raise CacheFormatError(
                        f"{where}: starts with a {name} byte-order mark (BOM), which TensorRT never writes and would "
                        "read as part of the header. Hint: save the file without a BOM (plain ASCII/UTF-8)"
                    )
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CacheFormatError(
                    f"{where}: not a text calibration cache (byte {exc.start} is not UTF-8 text)"
                ) from None
        elif text.startswith("\ufeff"):
            raise CacheFormatError(
                f"{where}: starts with a UTF-8 byte-order mark (BOM), which TensorRT never writes and would read as part "
                "of the header. Hint: save the file without a BOM"
            )
        if not text:
            raise CacheFormatError(f"{where}: empty file, expected a header such as TRT-8601-EntropyCalibration2")
        pieces = _LINE_END.split(text)
        lines, ends = pieces[0::2], pieces[1::2]
        final_newline = len(ends) == len(lines) - 1 and lines[-1] == ""
        if final_newline:
            lines.pop()
        crlf = ends.count("\r\n")
        newline = "\r\n" if crlf > len(ends) - crlf else "\n"
        notes: list[tuple[str, str]] = []
        if crlf and crlf != len(ends):
            notes.append(("mixed-line-endings", f"mixed line endings: {crlf} CRLF and {len(ends) - crlf} LF (each "
                          "line is read on its own; a rewrite uses " + ("CRLF" if newline == "\r\n" else "LF") + ")"))
        for number, line in enumerate(lines, start=1):
            if "\r" in line:
                raise CacheFormatError(
                    f"{where}:{number}: carriage return inside the line {_clip(line)} (lines end with LF or CRLF)"
                )
        header = lines[0].strip()
        if header != LEGACY_HEADER and not _HEADER_RE.fullmatch(header):
            raise CacheFormatError(
                f"{where}:1: header {_clip(lines[0])} is not a TensorRT calibration header "
                "(expected TRT-<version>-<Algorithm>, e.g. TRT-8601-EntropyCalibration2, or 1 for TensorRT 4)"
            )
        if header != lines[0]:
            notes.append(("header-whitespace", f"the header line {_clip(lines[0])} has whitespace around "
                          f"{header!r}; TensorRT may compare the line as written, not match it and recalibrate. "
                          "Hint: remove the whitespace"))
        entries = []
        padded = 0
        last = len(lines)
        for number, line in enumerate(lines[1:], start=2):
            name, sep, raw = line.rpartition(": ")
            if not sep or not name:
                raise CacheFormatError(f"{where}:{number}: expected '<tensor name>: <hex scale>', got {_clip(line)}")
            value = raw.strip(" \t")
            if not _HEX_RE.fullmatch(value):
                raise CacheFormatError(
                    f"{where}:{number}: tensor {_clip(name)} has scale {_clip(raw)}, not 1-8 hex digits of a float32"
                )
            if number == last and not final_newline and value != "0" and len(value) < 8:
                raise CacheFormatError(
                    f"{where}:{number}: the file ends without a newline inside tensor {_clip(name)}'s scale "
                    f"{value!r} ({len(value)} of 8 hex digits): it looks truncated. Hint: TensorRT ends every line "
                    "with a newline; rewrite or recalibrate the cache"
                )
            padded += value != raw
            entries.append(CacheEntry(name, value))
        if padded:
            notes.append(("value-whitespace", f"{padded} scale(s) have spaces or tabs around the hex digits "
                          "(ignored; a rewrite drops them)"))
        return cls(header, entries, newline=newline, final_newline=final_newline, source=where, notes=notes)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationCache":
        """Read and parse a cache file; a missing, unreadable or oversized file is a `CacheFormatError` naming it."""
        data = read_bounded(path, MAX_CACHE_BYTES + 1, kind="calibration cache", error=CacheFormatError)
        if len(data) > MAX_CACHE_BYTES:
            raise CacheFormatError(
                f"{path}: more than {MAX_CACHE_BYTES >> 20} MiB, far larger than any calibration cache (one short "
                "line per tensor); not read further"
            )
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
    def check_writable(self) -> None:
        """Refuse (CacheFormatError naming the tensor) what TensorRT's one-line-per-tensor format cannot carry."""
        where = self.source or "cache"
        if self.header != LEGACY_HEADER and not _HEADER_RE.fullmatch(self.header):
            raise CacheFormatError(f"{where}: header {_clip(self.header)} is not a TensorRT calibration header")
        for e in self.entries:
            bad = None
            if not e.name:
                bad = "an empty name"
            elif "\n" in e.name or "\r" in e.name:
                bad = "a line break in its name"
            elif not _HEX_RE.fullmatch(e.hex):
                bad = f"the scale {_clip(e.hex)}, not 1-8 hex digits"
            else:
                try:
                    e.name.encode("utf-8")
                except UnicodeEncodeError:
                    bad = "a name that is not valid Unicode text (a lone surrogate)"
            if bad:
                raise CacheFormatError(
                    f"{where}: tensor {_clip(e.name)} has {bad}: TensorRT's cache format (one '<name>: <hex>' line "
                    "per tensor) cannot carry it, so the cache is not written. Hint: rename the tensor in the model"
                )

    def dumps(self) -> str:
        """The cache text, byte for byte what was parsed (or TensorRT's layout for a new cache)."""
        self.check_writable()
        lines = [self.header] + [f"{e.name}: {e.hex}" for e in self.entries]
        return self.newline.join(lines) + (self.newline if self.final_newline else "")

    def to_bytes(self) -> bytes:
        """The file's bytes: `dumps()` as UTF-8 (TensorRT writes names as the bytes it was given)."""
        return self.dumps().encode("utf-8")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file renamed into place, so a failure never leaves half a cache."""
        return atomic_write(path, self.to_bytes())

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
        match = _HEADER_RE.fullmatch(self.header)
        return match.group(2) if match else ""

    @property
    def version_number(self) -> int | None:
        """The raw number in the header (e.g. 8601), None for TensorRT 4's header."""
        match = _HEADER_RE.fullmatch(self.header)
        return int(match.group(1)) if match else None

    @property
    def version_problem(self) -> str | None:
        """Why the header's version number is not one TensorRT writes (`version_number_problem`), or None."""
        match = _HEADER_RE.fullmatch(self.header)
        return None if match is None else version_number_problem(match.group(1))

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
