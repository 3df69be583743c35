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
        (b"TRT-8601-EntropyCalibration2\n\xff: 0\n", "byte 29 is not UTF-8 text"),
        (b"\xef\xbb\xbfTRT-8601-EntropyCalibration2\na: 0\n", "UTF-8 byte-order mark"),
        (b"\xff\xfeT\x00R\x00", "UTF-16 little-endian byte-order mark"),
        ("\ufeffTRT-8601-EntropyCalibration2\na: 0\n", "UTF-8 byte-order mark"),
        ("TRT-8601-EntropyCalibration2\na: 3c01\r0a14\n", r":2: carriage return inside the line"),
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


# ---------------------------------------------------------------------------------------------- issue 12
def test_mixed_line_endings_split_every_line_and_validate_each():
    """Issue 12 item 7: CRLF and LF mixed; a bad hex after a CRLF line is found, names hold no line breaks."""
    text = "TRT-7000-EntropyCalibration2\r\ndata: 3c008912\nconv1: 3c88edfc\r\nip1: zzzz\nprob: 3c010a14\n"
    with pytest.raises(CacheFormatError, match=r"x.cache:4: tensor 'ip1' has scale 'zzzz'"):
        CalibrationCache.parse(text, source="x.cache")
    good = CalibrationCache.parse(text.replace("zzzz", "3db6bd6e"))
    assert [e.name for e in good.entries] == ["data", "conv1", "ip1", "prob"]
    assert [code for code, _ in good.notes] == ["mixed-line-endings"]
    assert "2 CRLF and 3 LF" in good.notes[0][1]
    assert CalibrationCache.parse(good.dumps()).entries == good.entries


def test_a_truncated_last_line_is_refused_not_read_as_a_denormal():
    """Issue 12 item 12: `conv1: 3c88e` at the end of a file without its newline."""
    with pytest.raises(CacheFormatError, match=r":3: the file ends without a newline inside tensor 'conv1'.*truncated"):
        CalibrationCache.parse("TRT-7000-EntropyCalibration2\ndata: 3c008912\nconv1: 3c88e")
    # a complete last line without a newline, and a zero scale, are still fine
    assert CalibrationCache.parse("TRT-7000-EntropyCalibration2\nconv1: 3c88edfc").entries[0].hex == "3c88edfc"
    assert CalibrationCache.parse("TRT-7000-EntropyCalibration2\nconv1: 0").entries[0].hex == "0"
    # a short hex in the middle of the file is a real (denormal) value
    assert CalibrationCache.parse("TRT-7000-EntropyCalibration2\na: 116c2\nb: 0\n").entries[0].hex == "116c2"


def test_header_and_value_whitespace_are_accepted_and_reported():
    """Issue 12 item 12: header whitespace is no longer stripped without a word."""
    cache = CalibrationCache.parse("TRT-8601-EntropyCalibration2 \na:  3c010a14\t\n")
    assert cache.header == "TRT-8601-EntropyCalibration2" and cache.entries[0].hex == "3c010a14"
    codes = dict(cache.notes)
    assert set(codes) == {"header-whitespace", "value-whitespace"}
    assert "'TRT-8601-EntropyCalibration2 '" in codes["header-whitespace"]
    assert "1 scale(s)" in codes["value-whitespace"]
    assert CalibrationCache.parse("TRT-8601-EntropyCalibration2\na: 3c010a14\n").notes == []


def test_a_huge_bad_line_is_cut_to_200_characters_in_the_message():
    """Issue 12 item 21: a 66 MB header line was echoed whole."""
    long = "x" * 5_000_000
    with pytest.raises(CacheFormatError) as info:
        CalibrationCache.parse(long + "\na: 0\n", source="big.cache")
    message = str(info.value)
    assert len(message) < 500 and "(5000000 characters)" in message
    with pytest.raises(CacheFormatError) as info:
        CalibrationCache.parse("TRT-8601-EntropyCalibration2\n" + long + ": zz\n", source="big.cache")
    assert len(str(info.value)) < 600


def test_names_tensorrt_cannot_write_are_refused_at_save_naming_the_tensor(tmp_path):
    """Issue 12 item 4: a newline in a name wrote a cache our own parser rejected."""
    out = tmp_path / "out.cache"
    for name in ("a\nb: 3c000000", "a\rb", ""):
        cache = CalibrationCache.from_amax({"ok": 1.0, name: 2.0})
        with pytest.raises(CacheFormatError, match=r"tensor .* cannot carry it, so the cache is not written"):
            cache.save(out)
        assert not out.exists()
    with pytest.raises(CacheFormatError, match=r"tensor '\\ud800x'"):
        CalibrationCache.from_amax({"\ud800x": 1.0}).save(out)


def test_non_ascii_names_save_as_utf8_and_load_back(tmp_path):
    """Issue 12 item 4: non-ASCII names crashed `save` with UnicodeEncodeError after a whole calibration."""
    cache = CalibrationCache.from_amax({"conv/é": 1.0, "层1": 2.0, "a\u2028b": 3.0})
    path = cache.save(tmp_path / "u.cache")
    back = CalibrationCache.load(path)
    assert back.entries == cache.entries
    assert path.read_bytes() == cache.dumps().encode("utf-8")


def test_load_stops_at_the_size_limit(tmp_path, monkeypatch):
    """Issue 12 item 14: `inspect /dev/zero` ended in MemoryError."""
    import trt_calib.core.cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_CACHE_BYTES", 1 << 16)
    with pytest.raises(CacheFormatError, match=r"/dev/zero is a character device, not a regular file"):
        CalibrationCache.load("/dev/zero")  # not read at all since issue 23 item 15; a big file is cut below
    big = tmp_path / "big.cache"
    big.write_text("TRT-8601-EntropyCalibration2\n" + "a: 0\n" * 20000)
    with pytest.raises(CacheFormatError, match="far larger than any calibration cache"):
        CalibrationCache.load(big)


def test_hypothesis_parse_raises_only_cache_format_errors_and_what_parses_round_trips():
    """Issue 12: parse never raises anything but CacheFormatError; whatever parses either saves and re-parses to the
    same entries or is refused at save with CacheFormatError."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    header = st.sampled_from(["TRT-8601-EntropyCalibration2", "TRT-101601-MinMaxCalibration", "1", " TRT-7000-X\t",
                              "TRT--x", ""])
    plain = list("ab:[] ()*_/.é\t\x85\u2028") + [": "]
    name = st.lists(st.sampled_from(plain + ["\ud800"]), min_size=1, max_size=8).map("".join)
    odd_name = st.lists(st.sampled_from(plain + ["\ud800", "\r", "\n", "\x00"]), max_size=8).map("".join)
    value = st.sampled_from(["0", "3c010a14", "7f800000", "116c2", "3c88e", " 3c010204\t", "3C010A14", "zz", "",
                             "123456789"])
    good_line = st.builds(lambda n, v: f"{n}: {v}", name, value)
    odd_line = st.one_of(st.builds(lambda n, v: f"{n}: {v}", odd_name, value), odd_name)
    line = st.one_of(good_line, good_line, good_line, odd_line)
    newline = st.sampled_from(["\n", "\n", "\r\n", "\r\n", "\r", "\r\r\n"])
    text = st.builds(
        lambda h, body, nls, end: h + "".join(nl + ln for nl, ln in zip(nls, body)) + end,
        header, st.lists(line, max_size=6), st.lists(newline, min_size=6, max_size=6),
        st.sampled_from(["", "\n", "\r\n"]),
    )
    clean = st.builds(lambda body: "TRT-8601-EntropyCalibration2\n" + "".join(f"{ln}\n" for ln in body),
                      st.lists(st.builds(lambda n, v: f"{n}: {v}", name, st.sampled_from(["0", "3c010a14"])),
                               max_size=4))
    raw_bytes = st.binary(max_size=64).map(lambda b: b"TRT-8601-EntropyCalibration2\n" + b)
    outcomes = {"parse refused": 0, "save refused": 0, "round trip": 0}

    @settings(max_examples=800, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(text, text.map(lambda t: t.encode("utf-8", "surrogatepass")), raw_bytes, clean))
    def fuzz(data):
        try:
            cache = CalibrationCache.parse(data, source="fuzz")
        except CacheFormatError:
            outcomes["parse refused"] += 1
            return
        try:
            written = cache.to_bytes()
        except CacheFormatError:
            outcomes["save refused"] += 1
            return
        again = CalibrationCache.parse(written, source="again")
        assert (again.header, again.entries) == (cache.header, cache.entries)
        outcomes["round trip"] += len(cache.entries) > 0

    fuzz()
    # every branch was exercised (derandomized, so this is the same run every time)
    assert min(outcomes.values()) >= 5, outcomes
