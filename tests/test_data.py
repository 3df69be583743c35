"""Batch sources: every kind with real values, batching policies, reproducibility, provenance and every error path."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trt_calib.ort.data import (
    BatchSource,
    InputSpec,
    Preprocess,
    from_arrays,
    iter_batches,
    open_source,
)
from trt_calib.errors import DataError, TrtCalibError


def spec(name="x", shape=("N", 3), dtype=np.float32):
    return InputSpec(name, shape, dtype)


def numbered(n, *rest, dtype=np.float32):
    """Sample i is filled with the value i, so batches show which samples they hold."""
    return np.broadcast_to(np.arange(n, dtype=dtype).reshape((n,) + (1,) * len(rest)), (n, *rest)).copy()


def ids(source, name="x"):
    return [b[name].reshape(len(b[name]), -1)[:, 0].astype(int).tolist() for b in source]


def write_png(path, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------------------------------------------------
# InputSpec and Preprocess


def test_input_spec_normalises_dtype_and_shape():
    s = InputSpec("x", [np.int64(1), "N", None], "float16")
    assert s.dtype == np.dtype(np.float16)
    assert s.shape == (1, "N", None)
    assert s.static_dim(0) == 1 and s.static_dim(1) is None and s.static_dim(2) is None


def test_preprocess_parses_the_cli_form():
    p = Preprocess.parse("size=224,resize=256,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,scale=1/255,"
                         "layout=nhwc,order=bgr")
    assert p.size == (224, 224)
    assert p.resize == 256
    assert p.mean == (0.485, 0.456, 0.406)
    assert p.std == (0.229, 0.224, 0.225)
    assert p.scale == pytest.approx(1 / 255)
    assert (p.layout, p.channel_order) == ("NHWC", "BGR")
    assert Preprocess.parse("size=32x48,scale=1, channel_order=RGB").size == (32, 48)
    assert Preprocess.parse("") == Preprocess()


def test_preprocess_to_dict_is_json_ready():
    d = Preprocess(size=(2, 3), mean=(1, 2, 3)).to_dict()
    assert json.loads(json.dumps(d)) == {
        "size": [2, 3], "resize": None, "mean": [1.0, 2.0, 3.0], "std": [1.0], "scale": 1 / 255,
        "layout": "NCHW", "channel_order": "RGB",
    }


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("sise=224", "sise"),
        ("size=abc", "size"),
        ("mean=0.5/x", "mean"),
        ("scale=1/0", "scale"),
        ("resize", "resize"),
        ("std=0", "std"),
        ("layout=CHW", "layout"),
        ("order=RGBA", "order"),
        ("size=2,size=3", "size"),
    ],
)
def test_preprocess_parse_errors_name_the_key(text, culprit):
    with pytest.raises(DataError, match=culprit):
        Preprocess.parse(text)


# --------------------------------------------------------------------------------------------------------------------
# npy / npz / arrays


def test_npy_samples_along_axis_0(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    src = open_source(tmp_path / "d.npy", [spec()], batch_size=2)
    batches = list(src)
    assert len(src) == 3 and src.num_samples == 6 and src.num_dropped == 0
    for k, b in enumerate(batches):
        assert list(b) == ["x"]
        arr = b["x"]
        assert type(arr) is np.ndarray and arr.flags.c_contiguous and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, data[2 * k : 2 * k + 2])


def test_npy_needs_a_single_input_model(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match=r"d\.npy.*'a', 'b'"):
        open_source(tmp_path / "d.npy", [spec("a"), spec("b")])


def test_npy_float64_is_converted_to_the_declared_float32(tmp_path):
    np.save(tmp_path / "d.npy", np.full((2, 3), 0.1, np.float64))
    (batch,) = open_source(tmp_path / "d.npy", [spec()], batch_size=2)
    assert batch["x"].dtype == np.float32
    np.testing.assert_array_equal(batch["x"], np.float32(0.1))


def test_npz_keys_are_input_names(tmp_path):
    a, b = numbered(4, 3), numbered(4, 2, dtype=np.int64) * 10
    np.savez(tmp_path / "d.npz", b=b, a=a)
    src = open_source(tmp_path / "d.npz", [spec("a"), spec("b", ("N", 2), np.int64)], batch_size=2)
    batches = list(src)
    assert [list(x) for x in batches] == [["a", "b"], ["a", "b"]]
    np.testing.assert_array_equal(batches[1]["a"], a[2:])
    np.testing.assert_array_equal(batches[1]["b"], b[2:])
    assert batches[1]["b"].dtype == np.int64
    assert src.manifest()["keys"] == ["a", "b"]


def test_npz_missing_key_is_named_with_the_model_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match=r"missing 'b'.*model's inputs: 'a', 'b'") as e:
        open_source(tmp_path / "d.npz", [spec("a"), spec("b")])
    assert "d.npz" in str(e.value)


def test_npz_extra_key_is_named(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), np.float32), label=np.zeros(2))
    with pytest.raises(DataError, match=r"not model inputs: 'label'.*model's inputs: 'a'"):
        open_source(tmp_path / "d.npz", [spec("a")])


def test_npz_keys_must_hold_the_same_number_of_samples(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((3, 3), np.float32))
    with pytest.raises(DataError, match=r"different numbers of samples.*'a': 2.*'b': 3"):
        open_source(tmp_path / "d.npz", [spec("a"), spec("b")])


def test_compressed_npz_is_read(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", x=numbered(3, 3))
    assert ids(open_source(tmp_path / "d.npz", [spec()], batch_size=1)) == [[0], [1], [2]]


def test_from_arrays_accepts_a_bare_array_for_one_input():
    assert ids(from_arrays(numbered(4, 3), [spec()], batch_size=2)) == [[0, 1], [2, 3]]


def test_from_arrays_bare_array_needs_a_single_input_model():
    with pytest.raises(DataError, match=r"2 inputs \('a', 'b'\)"):
        from_arrays(numbered(4, 3), [spec("a"), spec("b")])


def test_from_arrays_key_errors_name_the_keys():
    with pytest.raises(DataError, match=r"missing \['b'\].*unexpected \['c'\]"):
        from_arrays({"a": numbered(2, 3), "c": numbered(2, 3)}, [spec("a"), spec("b")])


def test_sources_do_not_write_into_the_data():
    data = numbered(5, 3)
    before = data.copy()
    for batch in from_arrays(data, [spec()], batch_size=2, last_batch="pad", shuffle=True, seed=1):
        batch["x"][...] = -1
    np.testing.assert_array_equal(data, before)


# --------------------------------------------------------------------------------------------------------------------
# Batching: last batch, shuffle, offset/limit


def test_last_batch_drop_counts_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="trt_calib.ort.data"):
        src = from_arrays(numbered(10, 3), [spec()], batch_size=4)
    assert (len(src), src.num_samples, src.num_dropped, src.num_padded) == (2, 8, 2, 0)
    assert ids(src) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert "dropping the last 2 of 10 samples" in caplog.text


def test_last_batch_keep_gives_a_short_last_batch():
    src = from_arrays(numbered(10, 3), [spec()], batch_size=4, last_batch="keep")
    assert (len(src), src.num_samples, src.num_dropped, src.num_padded) == (3, 10, 0, 0)
    assert ids(src) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_last_batch_pad_repeats_the_last_sample():
    src = from_arrays(numbered(10, 3), [spec()], batch_size=4, last_batch="pad")
    assert (len(src), src.num_samples, src.num_dropped, src.num_padded) == (3, 10, 0, 2)
    assert ids(src) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert src.manifest()["num_padded"] == 2


def test_last_batch_drop_without_a_full_batch_is_an_error():
    with pytest.raises(DataError, match=r"3 samples but batch_size=4"):
        from_arrays(numbered(3, 3), [spec()], batch_size=4)


def test_exact_multiple_neither_drops_nor_pads():
    for policy in ("drop", "keep", "pad"):
        src = from_arrays(numbered(8, 3), [spec()], batch_size=4, last_batch=policy)
        assert (len(src), src.num_samples, src.num_dropped, src.num_padded) == (2, 8, 0, 0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40), bs=st.integers(1, 12), policy=st.sampled_from(["drop", "keep", "pad"]),
    offset=st.integers(0, 10), limit=st.one_of(st.none(), st.integers(1, 40)), seed=st.integers(0, 2**32 - 1),
)
def test_batching_uses_each_selected_sample_once(n, bs, policy, offset, limit, seed):
    if offset >= n:
        with pytest.raises(DataError, match=f"offset={offset}"):
            from_arrays(numbered(n, 1), [spec(shape=("N", 1))], offset=offset)
        return
    selected = list(range(offset, n if limit is None else min(n, offset + limit)))
    if policy == "drop" and len(selected) < bs:
        with pytest.raises(DataError, match=f"{len(selected)} samples but batch_size={bs}"):
            from_arrays(numbered(n, 1), [spec(shape=("N", 1))], batch_size=bs, offset=offset, limit=limit)
        return
    rest = len(selected) % bs
    if policy == "pad" and rest and bs - rest > len(selected):  # more copies than samples: refused (issue 12)
        with pytest.raises(DataError, match=f"would add {bs - rest} copies of one sample"):
            from_arrays(numbered(n, 1), [spec(shape=("N", 1))], batch_size=bs, last_batch="pad", offset=offset,
                        limit=limit)
        return
    src = from_arrays(
        numbered(n, 1), [spec(shape=("N", 1))], batch_size=bs, last_batch=policy, shuffle=True, seed=seed,
        offset=offset, limit=limit,
    )
    got = ids(src)
    flat = [i for b in got for i in b]
    assert len(got) == len(src)
    assert all(len(b) == bs for b in got[:-1])
    assert src.num_samples + src.num_dropped == len(selected)
    assert len(flat) == src.num_samples + src.num_padded
    assert set(flat) <= set(selected)
    assert len(set(flat)) == src.num_samples
    if policy != "drop":
        assert set(flat) == set(selected)


def test_shuffle_with_a_seed_is_reproducible_and_seed_dependent():
    data = numbered(32, 2)
    one = ids(from_arrays(data, [spec(shape=("N", 2))], batch_size=4, shuffle=True, seed=7))
    again = ids(from_arrays(data, [spec(shape=("N", 2))], batch_size=4, shuffle=True, seed=7))
    other = ids(from_arrays(data, [spec(shape=("N", 2))], batch_size=4, shuffle=True, seed=8))
    assert one == again
    assert one != other
    assert one != ids(from_arrays(data, [spec(shape=("N", 2))], batch_size=4))
    assert sorted(i for b in one for i in b) == list(range(32))


def test_shuffle_without_seed_records_one_that_repeats_the_order():
    data = numbered(32, 2)
    src = from_arrays(data, [spec(shape=("N", 2))], batch_size=4, shuffle=True)
    m = src.manifest()
    assert isinstance(m["seed"], int) and m["shuffle"] is True
    again = from_arrays(data, [spec(shape=("N", 2))], batch_size=4, shuffle=True, seed=m["seed"])
    assert ids(again) == ids(src)
    assert again.manifest()["order_sha256"] == m["order_sha256"]


def test_offset_and_limit_select_before_shuffling():
    # sampleINT8 calibrates on images 50..549
    src = from_arrays(numbered(600, 1), [spec(shape=("N", 1))], batch_size=50, offset=50, limit=500,
                      shuffle=True, seed=3)
    flat = sorted(i for b in ids(src) for i in b)
    assert flat == list(range(50, 550))
    assert len(src) == 10


def test_limit_past_the_end_takes_what_is_there(caplog):
    with caplog.at_level(logging.WARNING, logger="trt_calib.ort.data"):
        src = from_arrays(numbered(10, 1), [spec(shape=("N", 1))], offset=8, limit=5)
    assert ids(src) == [[8], [9]]
    assert "limit=5" in caplog.text


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"last_batch": "fill"}, "last_batch.*drop, keep, pad"),
        ({"offset": -1}, "offset"),
        ({"limit": 0}, "limit"),
        ({"offset": 10}, r"offset=10 but there are only 10"),
        ({"preprocess": Preprocess(scale=1.0)}, "image folders only"),
    ],
)
def test_bad_batching_arguments(kwargs, culprit):
    with pytest.raises(DataError, match=culprit):
        from_arrays(numbered(10, 3), [spec()], **kwargs)


def test_static_batch_dim_must_match_batch_size():
    with pytest.raises(DataError, match=r"fixed batch dim of 1"):
        from_arrays(numbered(4, 3), [spec(shape=(1, 3))], batch_size=2)
    with pytest.raises(DataError, match=r"fixed batch dim of 2; use that batch_size and last_batch="):
        from_arrays(numbered(5, 3), [spec(shape=(2, 3))], batch_size=2, last_batch="keep")
    assert len(from_arrays(numbered(5, 3), [spec(shape=(2, 3))], batch_size=2, last_batch="pad")) == 3


def test_sample_shape_must_match_the_model_at_open():
    with pytest.raises(DataError, match=r"'x' would be batched as \(2, 4\).*\(N, 3\)"):
        from_arrays(numbered(4, 4), [spec()], batch_size=2)


def test_float_data_for_an_integer_input_is_refused_at_open():
    with pytest.raises(DataError, match=r"'ids'.*float32.*int64"):
        from_arrays(numbered(4, 3), [spec("ids", dtype=np.int64)])


def test_nan_in_a_source_names_input_and_batch():
    data = numbered(6, 3)
    data[3, 1] = np.nan
    with pytest.raises(DataError, match=r"arrays, batch 1: input 'x' contains NaN at index \(1, 1\)"):
        list(from_arrays(data, [spec()], batch_size=2))


# --------------------------------------------------------------------------------------------------------------------
# Image folders


@pytest.fixture
def colour_folder(tmp_path):
    """Three 4x4 solid images with known RGB, named so sorting matters, plus files that are not images."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    colours = {"b.png": (10, 20, 30), "a.png": (255, 0, 51), "c.bmp": (0, 128, 255)}
    for name, rgb in colours.items():
        write_png(folder / name, np.broadcast_to(np.array(rgb, np.uint8), (4, 4, 3)))
    (folder / "labels.txt").write_text("not an image")
    (folder / "sub").mkdir()
    write_png(folder / "sub" / "0.png", np.zeros((4, 4, 3)))
    return folder, [colours[n] for n in ("a.png", "b.png", "c.bmp")]


def test_image_folder_preprocesses_to_exact_floats(colour_folder):
    folder, rgbs = colour_folder
    pre = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    src = open_source(folder, [spec(shape=("N", 3, 4, 4))], batch_size=3, preprocess=pre)
    (batch,) = src
    x = batch["x"]
    assert x.shape == (3, 3, 4, 4) and x.dtype == np.float32 and x.flags.c_contiguous
    for k, rgb in enumerate(rgbs):  # files in name order: a.png, b.png, c.bmp
        expected = (np.array(rgb, np.float32) * np.float32(1 / 255) - np.array(pre.mean, np.float32)) / np.array(
            pre.std, np.float32
        )
        np.testing.assert_allclose(x[k, :, 0, 0], expected, rtol=1e-6)
        assert np.all(x[k] == x[k, :, :1, :1])  # solid colour stays solid
    assert x[0, 0, 0, 0] == pytest.approx((1.0 - 0.5) / 0.5)  # a.png red = 255
    assert src.manifest()["files"] == ["a.png", "b.png", "c.bmp"]


def test_image_folder_bgr_nhwc(colour_folder):
    folder, rgbs = colour_folder
    pre = Preprocess(layout="NHWC", channel_order="BGR", scale=1.0, mean=(1.0, 2.0, 3.0))
    (batch,) = open_source(folder, [spec(shape=(3, 4, 4, 3))], batch_size=3, preprocess=pre)
    x = batch["x"]
    assert x.shape == (3, 4, 4, 3)
    for k, (r, g, b) in enumerate(rgbs):
        np.testing.assert_array_equal(x[k, 2, 3], [b - 1.0, g - 2.0, r - 3.0])  # mean is in BGR order


def test_image_folder_grayscale_for_one_channel(tmp_path):
    write_png(tmp_path / "g.png", np.full((4, 4, 3), 100))
    (batch,) = open_source(tmp_path, [spec(shape=(1, 1, 4, 4))], preprocess=Preprocess(scale=1.0))
    np.testing.assert_array_equal(batch["x"], np.full((1, 1, 4, 4), 100.0, np.float32))


def test_image_folder_feeds_raw_pixels_to_uint8_inputs(tmp_path):
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    write_png(tmp_path / "p.png", pixels)
    (batch,) = open_source(tmp_path, [spec(shape=(1, 4, 4, 3), dtype=np.uint8)],
                           preprocess=Preprocess(scale=1.0, layout="NHWC"))
    np.testing.assert_array_equal(batch["x"][0], pixels)
    with pytest.raises(DataError, match="scale, mean and std cannot apply"):
        open_source(tmp_path, [spec(shape=(1, 4, 4, 3), dtype=np.uint8)], preprocess=Preprocess(layout="NHWC"))


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # 4 high, 7 wide, column j has value 10*j: resize=4 keeps it 4x7, the 4x4 crop starts at round(1.5) = 2
    pixels = np.broadcast_to((np.arange(7, dtype=np.uint8) * 10)[None, :, None], (4, 7, 3))
    write_png(tmp_path / "wide.png", pixels)
    pre = Preprocess(size=(4, 4), resize=4, scale=1.0)
    (batch,) = open_source(tmp_path, [spec(shape=(1, 3, "H", "W"))], preprocess=pre)
    np.testing.assert_array_equal(batch["x"][0, 0, 0], [20, 30, 40, 50])
    # 7 high, 4 wide gets the same crop along rows
    write_png(tmp_path / "wide.png", pixels.transpose(1, 0, 2))
    (batch,) = open_source(tmp_path, [spec(shape=(1, 3, 4, 4))], preprocess=pre)
    np.testing.assert_array_equal(batch["x"][0, 0, :, 0], [20, 30, 40, 50])


def test_resize_keeps_aspect_ratio_before_the_crop(tmp_path):
    # 8x16 solid halves: left half 0, right half 200; resize=4 -> 4x8, crop 4x4 keeps columns 2..5 (0,0,200,200)
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, 8:] = 200
    write_png(tmp_path / "halves.png", pixels)
    (batch,) = open_source(tmp_path, [spec(shape=(1, 3, 4, 4))], preprocess=Preprocess(resize=4, scale=1.0))
    row = batch["x"][0, 0, 0]
    assert row[0] == 0 and row[-1] == 200


def test_resize_straight_to_the_input_size(tmp_path):
    write_png(tmp_path / "big.png", np.full((9, 5, 3), 77))
    (batch,) = open_source(tmp_path, [spec(shape=(1, 3, 4, 6))], preprocess=Preprocess(scale=1.0))
    np.testing.assert_array_equal(batch["x"], np.full((1, 3, 4, 6), 77.0, np.float32))


def test_image_batches_are_decoded_lazily(tmp_path):
    for i in range(4):
        write_png(tmp_path / f"{i}.png", np.full((4, 4, 3), i))
    (tmp_path / "3.png").write_bytes(b"broken")
    src = open_source(tmp_path, [spec(shape=("N", 3, 4, 4))], batch_size=2)
    it = iter(src)
    np.testing.assert_array_equal(next(it)["x"][:, 0, 0, 0], np.float32([0, 1]) / np.float32(255))
    with pytest.raises(DataError, match=r"3\.png: cannot decode"):
        next(it)


def test_image_folder_errors(tmp_path, colour_folder):
    folder, _ = colour_folder
    with pytest.raises(DataError, match=r"'a', 'b'"):
        open_source(folder, [spec("a", ("N", 3, 4, 4)), spec("b", ("N", 3, 4, 4))])
    with pytest.raises(DataError, match=r"224 channels in layout NCHW.*NHWC"):
        open_source(folder, [spec(shape=(1, 224, 224, 3))])
    with pytest.raises(DataError, match=r"dynamic height or width.*size="):
        open_source(folder, [spec(shape=("N", 3, "H", "W"))])
    with pytest.raises(DataError, match=r"size=8x8 does not match"):
        open_source(folder, [spec(shape=("N", 3, 4, 4))], preprocess=Preprocess(size=(8, 8)))
    with pytest.raises(DataError, match=r"resize=2 is smaller"):
        open_source(folder, [spec(shape=("N", 3, 4, 4))], preprocess=Preprocess(resize=2))
    with pytest.raises(DataError, match=r"mean has 2 values.*3 channel"):
        open_source(folder, [spec(shape=("N", 3, 4, 4))], preprocess=Preprocess(mean=(0.1, 0.2)))
    with pytest.raises(DataError, match=r"rank-4"):
        open_source(folder, [spec(shape=("N", 48))])
    empty = tmp_path / "empty"
    (empty / "class0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images.*class0.*not searched"):
        open_source(empty, [spec(shape=("N", 3, 4, 4))])


def test_image_folder_manifest_tracks_file_contents(colour_folder):
    folder, _ = colour_folder
    inputs = [spec(shape=("N", 3, 4, 4))]
    before = open_source(folder, inputs).manifest()
    assert before["kind"] == "images"
    assert before["preprocess"]["layout"] == "NCHW"
    json.dumps(before)
    write_png(folder / "b.png", np.full((4, 4, 3), 1))
    after = open_source(folder, inputs).manifest()
    assert after["sha256"] != before["sha256"]
    assert after["batches_sha256"] != before["batches_sha256"]  # the pixels fed changed too
    content = ("sha256", "batches_sha256")
    assert {k: v for k, v in after.items() if k not in content} == {k: v for k, v in before.items() if k not in content}


# --------------------------------------------------------------------------------------------------------------------
# Generator scripts


def write_script(path, body):
    path.write_text(textwrap.dedent(body))
    return path


def test_generator_script_yields_ready_batches(tmp_path):
    script = write_script(tmp_path / "data.py", """
        import numpy as np
        def load_data():
            for i in range(3):
                yield {"x": np.full((2 if i < 2 else 1, 3), i, dtype=np.float64)}
    """)
    src = open_source(script, [spec()])
    assert ids(src) == [[0, 0], [1, 1], [2]]
    assert len(src) == 3 and src.num_samples == 5 and src.num_dropped == 0
    m = src.manifest()
    assert m["kind"] == "generator" and m["function"] == "load_data" and m["batch_size"] == 2
    assert m["inputs"][0]["batch_shape"] == [2, 3]


def test_generator_script_custom_function_and_bare_arrays(tmp_path):
    script = write_script(tmp_path / "gen.py", """
        import numpy as np
        def load_data():
            raise AssertionError("not this one")
        def batches():
            return [np.full((1, 3), 5, dtype=np.float32)]
    """)
    src = open_source(f"{script}:batches", [spec()])
    assert ids(src) == [[5]] and ids(src) == [[5]]


def test_generator_script_refuses_batching_options(tmp_path):
    script = write_script(tmp_path / "data.py", "def load_data():\n    return []\n")
    with pytest.raises(DataError, match=r"data\.py: .*batch_size, shuffle cannot apply"):
        open_source(script, [spec()], batch_size=4, shuffle=True)


def test_generator_script_errors(tmp_path):
    script = write_script(tmp_path / "data.py", """
        import numpy as np
        def load_data(n):
            yield {}
        def empty():
            return iter(())
        def broken():
            yield {"x": np.zeros((1, 3), np.float32)}
            raise RuntimeError("disk gone")
        def wrong():
            yield {"y": np.zeros((1, 3), np.float32)}
    """)
    with pytest.raises(DataError, match=r"load_data\(n\) must be callable without arguments"):
        open_source(script, [spec()])
    with pytest.raises(DataError, match=r"no function 'nope'.*broken"):
        open_source(f"{script}:nope", [spec()])
    with pytest.raises(DataError, match=r"data\.py:empty: no batches"):
        list(open_source(f"{script}:empty", [spec()]))
    with pytest.raises(DataError, match=r"data\.py:broken: raised RuntimeError while making batch 1: disk gone"):
        list(open_source(f"{script}:broken", [spec()]))
    with pytest.raises(DataError, match=r"data\.py:wrong, batch 0: missing 'x'; unexpected 'y'"):
        len(open_source(f"{script}:wrong", [spec()]))
    bad = write_script(tmp_path / "bad.py", "import no_such_module_for_trt_calib\n")
    with pytest.raises(DataError, match=r"bad\.py: importing the data script failed"):
        open_source(bad, [spec()])
    with pytest.raises(DataError, match=r"missing\.py: no such data script"):
        open_source(tmp_path / "missing.py", [spec()])


# --------------------------------------------------------------------------------------------------------------------
# Every source: iterating twice, provenance


@pytest.fixture(params=["npy", "npz", "images", "script", "arrays"])
def any_source(request, tmp_path):
    rng = np.random.default_rng(5)
    if request.param == "images":
        for i in range(5):
            write_png(tmp_path / f"{i}.png", rng.integers(0, 256, (6, 5, 3)))
        return open_source(tmp_path, [spec(shape=("N", 3, 4, 4))], batch_size=2, shuffle=True, seed=1)
    data = rng.standard_normal((5, 3)).astype(np.float32)
    if request.param == "npy":
        np.save(tmp_path / "d.npy", data)
        return open_source(tmp_path / "d.npy", [spec()], batch_size=2, shuffle=True, seed=1, last_batch="keep")
    if request.param == "npz":
        np.savez(tmp_path / "d.npz", x=data)
        return open_source(tmp_path / "d.npz", [spec()], batch_size=2, last_batch="pad")
    if request.param == "script":
        np.save(tmp_path / "d.npy", data)
        script = write_script(tmp_path / "s.py", f"""
            import numpy as np
            def load_data():
                d = np.load({str(tmp_path / "d.npy")!r})
                yield from ({{"x": d[i:i + 2]}} for i in range(0, 5, 2))
        """)
        return open_source(script, [spec()])
    return from_arrays(data, [spec()], batch_size=2, shuffle=True, seed=1)


def test_iterating_twice_gives_identical_batches(any_source):
    first, second = list(any_source), list(any_source)
    assert len(first) == len(any_source) > 0
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])


def test_manifest_is_complete_json(any_source):
    m = json.loads(json.dumps(any_source.manifest()))
    for key in ("kind", "path", "sha256", "batch_size", "shuffle", "seed", "last_batch", "num_samples",
                "num_dropped", "inputs"):
        assert key in m, key
    assert len(m["sha256"]) == 64
    assert m["inputs"][0]["name"] == "x" and m["inputs"][0]["batch_shape"][0] == 2
    assert m["num_batches"] == len(any_source)


def test_manifest_changes_when_the_file_changes(tmp_path):
    data = numbered(4, 3)
    np.save(tmp_path / "d.npy", data)
    before = open_source(tmp_path / "d.npy", [spec()]).manifest()
    data[2, 1] = 0.5
    np.save(tmp_path / "d.npy", data)
    after = open_source(tmp_path / "d.npy", [spec()]).manifest()
    assert before["sha256"] != after["sha256"]
    assert from_arrays(data, [spec()]).manifest()["sha256"] != from_arrays(data + 1, [spec()]).manifest()["sha256"]


# --------------------------------------------------------------------------------------------------------------------
# open_source errors


def test_open_source_path_errors(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.npz: no such file"):
        open_source(tmp_path / "nothing.npz", [spec()])
    with pytest.raises(DataError, match=r"no calibration data given"):
        open_source(None, [spec()])
    (tmp_path / "d.bin").write_bytes(b"\0" * 12)
    with pytest.raises(DataError, match=r"d\.bin: unsupported.*'\.bin'"):
        open_source(tmp_path / "d.bin", [spec()])
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match=r"empty\.npy: no samples"):
        open_source(tmp_path / "empty.npy", [spec()])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        open_source(tmp_path / "junk.npz", [spec()])
    (tmp_path / "junk.npy").write_bytes(b"not an npy")
    with pytest.raises(DataError, match=r"junk\.npy: not a readable \.npy"):
        open_source(tmp_path / "junk.npy", [spec()])
    np.save(tmp_path / "scalar.npy", np.float32(1))
    with pytest.raises(DataError, match=r"scalar\.npy: 'x' is a scalar"):
        open_source(tmp_path / "scalar.npy", [spec()])
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: holds Python objects \(dtype object\), not numbers"):
        open_source(tmp_path / "obj.npy", [spec(shape=("N", 2))])


def test_errors_are_trt_calib_errors():
    assert issubclass(DataError, TrtCalibError)


# --------------------------------------------------------------------------------------------------------------------
# iter_batches: validation of what Python callers pass


def test_iter_batches_converts_and_makes_contiguous():
    user = np.arange(12, dtype=np.float64).reshape(3, 4)[:, :3]  # not contiguous
    (out,) = iter_batches([{"x": user}], [spec()])
    assert out["x"].dtype == np.float32 and out["x"].flags.c_contiguous
    np.testing.assert_array_equal(out["x"], user)
    (out,) = iter_batches([np.array([[1, 2, 3]], np.int32)], [spec()])  # bare array, int -> float allowed
    np.testing.assert_array_equal(out["x"], [[1.0, 2.0, 3.0]])
    (out,) = iter_batches([{"ids": np.array([[1, 2, 3]], np.int64)}], [spec("ids", dtype=np.int32)])
    assert out["ids"].dtype == np.int32


def test_iter_batches_passes_a_matching_source_through():
    src = from_arrays(numbered(4, 3), [spec()], batch_size=2)
    assert [b["x"].tolist() for b in iter_batches(src, [spec()])] == [b["x"].tolist() for b in src]


def test_iter_batches_allows_only_the_last_batch_short():
    inputs = [spec()]
    batches = [np.zeros((4, 3), np.float32), np.zeros((2, 3), np.float32)]
    assert [b["x"].shape for b in iter_batches(batches, inputs)] == [(4, 3), (2, 3)]
    with pytest.raises(DataError, match=r"batch 2: comes after the shorter batch 1"):
        list(iter_batches(batches + batches[:1], inputs))


def test_iter_batches_converts_into_a_new_array():
    user = np.full((2, 3), 1.5, np.float64)
    (out,) = iter_batches([{"x": user}], [spec()])
    out["x"][...] = 0
    assert np.all(user == 1.5) and user.dtype == np.float64


@pytest.mark.parametrize(
    "batches, inputs, culprit",
    [
        ([{"x": np.zeros((1, 3)), "y": np.zeros((1, 3))}], [spec()], r"batch 0: unexpected 'y'.*inputs are 'x'"),
        ([{"x": np.zeros((1, 3))}], [spec("x"), spec("z")], r"batch 0: missing 'z'"),
        ([{"x": np.array([["a", "b", "c"]])}], [spec()], r"input 'x' has non-numeric dtype"),
        ([{"x": np.zeros((1, 3), complex)}], [spec()], r"non-numeric dtype complex128"),
        ([{"x": np.zeros(3)}], [spec()], r"rank 1\) but the model declares \(N, 3\)"),
        ([{"x": np.zeros((1, 4))}], [spec()], r"dim 1 must be 3"),
        ([{"x": np.zeros((1, 3))}], [spec(dtype=np.int32)], r"refusing to truncate floats"),
        ([{"x": np.zeros((1, 3), np.int32)}], [spec(dtype=bool)], r"wants bool"),
        ([{"x": np.array([[1, 2, 2**40]])}], [spec(dtype=np.int32)], r"\[1, 1099511627776\].*int32"),
        ([{"x": np.array([[1, -1, 2]])}], [spec(dtype=np.uint8)], r"do not fit the declared uint8"),
        ([np.zeros((1, 3)), np.array([[0, np.nan, 1]])], [spec()], r"batch 1: input 'x' contains NaN at index \(0, 1\)"),
        ([{"x": np.array([[1e6, 0, 0]])}], [spec(dtype=np.float16)], r"infinite\) after conversion to float16"),
        ([{"x": np.zeros((2, 3))}, {"x": np.zeros((3, 3))}], [spec()], r"batch 1: input 'x' has shape \(3, 3\)"),
        ([{"x": np.zeros((2, 3, 1))}, {"x": np.zeros((2, 3, 2))}], [spec(shape=("N", 3, None))], r"batch 0 had"),
        ([{"x": np.zeros((0, 3))}], [spec()], r"empty batch"),
        ([np.zeros((1, 3))], [spec("a"), spec("b")], r"bare array but the model has 2 inputs"),
        (["x"], [spec()], r"expected a dict"),
        ([], [spec()], r"no batches"),
        (np.zeros((4, 3)), [spec()], r"from_arrays"),
        ({"x": np.zeros((4, 3))}, [spec()], r"one dict"),
        (3, [spec()], r"int is not iterable"),
    ],
)
def test_iter_batches_errors(batches, inputs, culprit):
    with pytest.raises(DataError, match=culprit):
        list(iter_batches(batches, inputs))


def test_module_imports_without_pillow():
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "import trt_calib.ort.data as d, numpy as np\n"
        "list(d.from_arrays(np.zeros((2, 3), np.float32), [d.InputSpec('x', ('N', 3), np.float32)]))\n"
        "assert 'PIL.Image' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batch_source_is_the_public_base():
    assert isinstance(from_arrays(numbered(2, 3), [spec()]), BatchSource)
