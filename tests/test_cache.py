"""The calibration cache format: real caches round-trip byte for byte; values, versions and errors."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from trt_calib.core.cache import (
    CalibrationCache,
    amax_to_scale,
    decode_version,
    encode_version,
    hex_to_scale,
    make_header,
    scale_to_hex,
)
from trt_calib.errors import CacheFormatError


def test_every_real_cache_parses_and_round_trips_byte_for_byte(corpus_caches):
    assert len(corpus_caches) == 14
    for path in corpus_caches:
        data = path.read_bytes()
        cache = CalibrationCache.load(path)
        assert cache.dumps().encode("ascii") == data, path.name
        assert len(cache) == data.count(b"\n") - 1


def test_real_headers_decode_to_versions_and_algorithms(corpus_caches):
    by_name = {p.name.split("__")[0]: CalibrationCache.load(p) for p in corpus_caches}
    assert by_name["NVIDIA"].trt_version == "7.0.0"
    assert by_name["T-K-233"].trt_version == "8.6.1"
    assert by_name["Data-Prodigy"].trt_version == "10.3.0"
    assert by_name["GoldenTiger720"].trt_version == "10.12.0"
    assert by_name["nt4sth"].algorithm == "MinMaxCalibration"
    legacy = by_name["modricwang"]
    assert legacy.is_legacy and legacy.header == "1" and legacy.algorithm == "EntropyCalibration"
    assert legacy.version_number is None


def test_sampleint8_values(corpus_caches):
    cache = CalibrationCache.load(next(p for p in corpus_caches if p.name.startswith("NVIDIA")))
    assert cache.amax("data") == 0.996337890625
    assert cache.amax("prob") == np.float32(np.float32(2048.5 / 2048) / np.float32(127)) * np.float32(127)
    assert list(cache.scales) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]


def test_special_values_in_a_real_cache(corpus_caches):
    cache = CalibrationCache.load(next(p for p in corpus_caches if p.name.startswith("T-K-233")))
    hexes = [e.hex for e in cache.entries]
    assert hexes.count("0") == 80
    assert hexes.count("7f800000") == 7
    zero = next(e for e in cache.entries if e.hex == "0")
    assert zero.scale == 0.0
    assert np.isinf(next(e for e in cache.entries if e.hex == "7f800000").amax)


def test_names_with_colons_split_at_the_last_colon_space(corpus_caches):
    cache = CalibrationCache.load(next(p for p in corpus_caches if p.name.startswith("LTyanghuang")))
    assert any(":0" in name for name in cache.scales)
    text = "TRT-8601-EntropyCalibration2\nssd/Relu:0: 3c010a14\n(Unnamed Layer* 3) [Constant]_output: 0\n"
    c = CalibrationCache.parse(text)
    assert list(c.scales) == ["ssd/Relu:0", "(Unnamed Layer* 3) [Constant]_output"]
    assert c.dumps() == text


@pytest.mark.parametrize(
    "version, number",
    [("10.16.1", 101601), ("10.3.0", 100300), ("8.6.1", 8601), ("7.0.0", 7000), ("8.5.10", 8510), ((10, 12), 101200)],
)
def test_version_encoding(version, number):
    assert encode_version(version) == number
    parts = tuple(int(p) for p in version.split(".")) if isinstance(version, str) else version + (0,)
    assert decode_version(number) == parts


def test_version_encoding_refuses_nonsense():
    with pytest.raises(ValueError, match="not a TensorRT version"):
        encode_version("ten")
    with pytest.raises(ValueError, match="minor version 12"):
        encode_version("8.12.0")


def test_hex_encoding_is_printf_x_of_the_float32_bits():
    assert scale_to_hex(0.0) == "0"
    assert scale_to_hex(amax_to_scale(1.0)) == "3c010204"
    assert scale_to_hex(amax_to_scale(np.inf)) == "7f800000"
    assert scale_to_hex(1e-40) == "116c2"  # denormal: short hex, no padding
    assert hex_to_scale("116c2") == np.float32(1e-40)
    assert hex_to_scale("3c010204") == np.float32(1.0) / np.float32(127)


def test_from_amax_writes_tensorrts_layout(tmp_path):
    cache = CalibrationCache.from_amax({"data": 0.996337890625, "x:0": 0.0}, trt_version="8.6.1")
    assert cache.dumps() == "TRT-8601-EntropyCalibration2\ndata: 3c008912\nx:0: 0\n"
    minmax = CalibrationCache.from_amax({"a": 1.0}, algorithm="MinMaxCalibration", trt_version="10.3.0")
    assert minmax.header == "TRT-100300-MinMaxCalibration"
    assert make_header("EntropyCalibration2", "10.16.1") == "TRT-101601-EntropyCalibration2"


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "out.cache"
    cache = CalibrationCache.from_amax({"a": 2.0})
    old = os.umask(0o022)
    try:
        cache.save(path)
    finally:
        os.umask(old)
    assert CalibrationCache.load(path) == cache
    assert sorted(os.listdir(tmp_path)) == ["out.cache"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_crlf_and_missing_final_newline_round_trip():
    for text in ("TRT-8601-EntropyCalibration2\r\na: 3c010a14\r\n", "TRT-8601-EntropyCalibration2\na: 3c010a14"):
        assert CalibrationCache.parse(text).dumps() == text


def test_duplicates_are_reported_and_the_last_value_wins():
    c = CalibrationCache.parse("TRT-8601-EntropyCalibration2\na: 3c010a14\nb: 0\na: 3c010204\n")
    assert c.duplicates() == ["a"]
    assert c.scales["a"] == hex_to_scale("3c010204")
    assert c.amax("a") == 1.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("hello\na: 1\n", r":1: header 'hello'"),
        ("TRT-8601-EntropyCalibration2\na 3c010a14\n", r":2: expected '<tensor name>: <hex scale>'"),
        ("TRT-8601-EntropyCalibration2\na: 3c010a14\nb: xyz\n", r":3: tensor 'b' has scale 'xyz'"),
        ("TRT-8601-EntropyCalibration2\na: 123456789\n", r":2: tensor 'a'"),
        ("TRT-8601-EntropyCalibration2\n\n", r":2: expected"),
        (b"TRT-8601-EntropyCalibration2\n\xff: 0\n", "not ASCII"),
    ],
)
def test_malformed_caches_name_file_and_line(text, message):
    with pytest.raises(CacheFormatError, match=message) as info:
        CalibrationCache.parse(text, source="my.cache")
    assert str(info.value).startswith("my.cache")


def test_missing_file_is_a_cache_format_error(tmp_path):
    with pytest.raises(CacheFormatError, match="no such calibration cache"):
        CalibrationCache.load(tmp_path / "nope.cache")


def test_amax_of_an_absent_tensor_names_it():
    with pytest.raises(KeyError, match="'missing'"):
        CalibrationCache.from_amax({"a": 1.0}).amax("missing")
