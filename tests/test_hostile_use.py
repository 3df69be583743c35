"""What a hostile user did to every command (issue 12), one regression test per finding: nothing lost, nothing silent,
no hang, no traceback. The CLI contract itself (one line, exit codes, --json for every command) is in
test_cli_contract.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto, helper

from trt_calib.core.cache import CalibrationCache

from conftest import LENET, LENET_BATCHES, LENET_IMAGES, TRT_TABLE, one_line, run


@pytest.fixture
def lenet_dir(tmp_path):
    """A folder with a copy of LeNet, 100 of its images as .npy, a data script, and TensorRT 7's cache."""
    shutil.copy(LENET, tmp_path / "m.onnx")
    images = np.load(LENET_IMAGES)[:100].astype(np.float32).reshape(100, 1, 28, 28) / np.float32(255.0)
    np.save(tmp_path / "x.npy", images)
    shutil.copy(LENET_BATCHES, tmp_path / "d.py")
    shutil.copy(LENET_IMAGES, tmp_path / LENET_IMAGES.name)
    shutil.copy(TRT_TABLE, tmp_path / "r.cache")
    return tmp_path


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def save_model(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------- data loss (1-5)
@pytest.mark.parametrize("target", ["m.onnx", "x.npy", "r.cache"])
def test_item1_calibrate_refuses_a_cache_path_that_is_an_input(lenet_dir, capsys, target):
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "x.npy", "--batch-size", "50",
                       "--cache", lenet_dir / target, "--compare", lenet_dir / "r.cache")
    assert code == 2 and "refusing to overwrite the input" in one_line(err)
    assert snapshot(lenet_dir) == before


def test_item1_calibrate_refuses_to_overwrite_its_data_script_even_named_with_a_function(lenet_dir, capsys):
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, "calibrate", lenet_dir / "m.onnx", "--data", f"{lenet_dir / 'd.py'}:load_data",
                       "--cache", lenet_dir / "d.py")
    assert code == 2 and "is the input --data" in one_line(err)
    assert snapshot(lenet_dir) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--json", "{out}"], "--cache and --json are the same file"),
        (["--json", "{out}.json"], "the sidecar (--cache OUT.json) and --json are the same file"),
        (["--save-histograms", "{out}"], "--cache and --save-histograms are the same file"),
        (["--save-histograms", "{out}.json"], "the sidecar (--cache OUT.json) and --save-histograms are the same"),
    ],
)
def test_item2_calibrate_outputs_may_not_collide(lenet_dir, capsys, extra, message):
    out = lenet_dir / "out.cache"
    out.write_text("TRT-7000-EntropyCalibration2\nold: 0\n")
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "x.npy", "--batch-size", "50",
                       "--cache", out, *[e.format(out=out) for e in extra])
    assert code == 2 and message in one_line(err)
    assert snapshot(lenet_dir) == before


def test_item3_quantize_and_evaluate_refuse_outputs_onto_their_models(lenet_dir, capsys):
    model, ref = lenet_dir / "m.onnx", lenet_dir / "r.cache"
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, "quantize", model, "--from-cache", ref, "-o", model)
    assert code == 2 and "-o" in err and "is the input MODEL" in one_line(err)
    code, _, err = run(capsys, "quantize", model, "--from-cache", ref, "-o", lenet_dir / "q.onnx", "--report",
                       lenet_dir / "q.onnx")
    assert code == 2 and "-o and --report are the same file" in one_line(err)
    assert snapshot(lenet_dir) == before
    assert run(capsys, "quantize", model, "--from-cache", ref, "-o", lenet_dir / "q.onnx")[0] == 0
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, "evaluate", model, lenet_dir / "q.onnx", "--data", lenet_dir / "x.npy", "--json",
                       lenet_dir / "q.onnx")
    assert code == 2 and "--json" in err and "is the input QDQ_MODEL" in one_line(err)
    assert snapshot(lenet_dir) == before


def test_item4_a_tensor_name_the_cache_format_cannot_carry_is_refused_naming_it(tmp_path, capsys):
    bad = "a\nb: 3c000000"
    model = save_model(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], [bad]), helper.make_node("Neg", [bad],
                       ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    np.save(tmp_path / "x.npy", np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4))
    code, _, err = run(capsys, "calibrate", model, "--data", tmp_path / "x.npy", "--cache", tmp_path / "c.cache")
    assert code == 2
    assert "tensor 'a\\nb: 3c000000' has a line break in its name" in one_line(err)
    assert not (tmp_path / "c.cache").exists() and not (tmp_path / "c.cache.json").exists()


def test_item4_non_ascii_tensor_names_calibrate_and_save(tmp_path, capsys):
    model = save_model(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["conv/é"]), helper.make_node(
                       "Neg", ["conv/é"], ["层"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("层", TensorProto.FLOAT, ["N", 4])])
    np.save(tmp_path / "x.npy", np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4))
    code, _, err = run(capsys, "-q", "calibrate", model, "--data", tmp_path / "x.npy", "--cache",
                       tmp_path / "c.cache")
    assert code == 0, err
    cache = CalibrationCache.load(tmp_path / "c.cache")
    assert list(cache.scales) == ["x", "conv/é", "层"]
    assert cache.amax("conv/é") == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------- silent wrong results
EXIT_MIDWAY = """
import numpy as np

def load_data():
    yield {"data": np.full((2, 1, 28, 28), 0.5, np.float32)}
    raise SystemExit(0)
"""


@pytest.mark.parametrize("script, where", [(EXIT_MIDWAY, "called sys.exit(0) while making batch 1"),
                                           ("import sys\nsys.exit(3)\n", "called sys.exit(3) while being imported")])
@pytest.mark.parametrize("dry_run", [False, True])
def test_item6_a_data_script_that_exits_is_a_data_error(tmp_path, capsys, script, where, dry_run):
    (tmp_path / "d.py").write_text(script)
    argv = ["calibrate", LENET, "--data", tmp_path / "d.py", "--cache", tmp_path / "c.cache"]
    code, _, err = run(capsys, *argv, *(["--dry-run"] if dry_run else []))
    assert code == 2 and where in one_line(err)
    assert not (tmp_path / "c.cache").exists()


def test_item8_sidecar_records_the_cache_and_a_mismatched_pair_is_stale(lenet_dir, capsys):
    a, b = lenet_dir / "a.cache", lenet_dir / "b.cache"
    for out, version in ((a, "7.0.0"), (b, "8.6.1")):
        assert run(capsys, "-q", "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "x.npy", "--batch-size",
                   "50", "--cache", out, "--trt-version", version)[0] == 0
    sidecar = json.loads((lenet_dir / "a.cache.json").read_text())
    assert sidecar["cache"]["sha256"] == __import__("hashlib").sha256(a.read_bytes()).hexdigest()
    code, out, _ = run(capsys, "validate", a, "--model", lenet_dir / "m.onnx", "--json")
    assert code == 0 and "provenance" in [f["code"] for f in json.loads(out)["findings"]]
    # two runs on one path interleaved: b's sidecar beside a's cache
    shutil.copy(lenet_dir / "b.cache.json", lenet_dir / "a.cache.json")
    code, out, _ = run(capsys, "validate", a, "--model", lenet_dir / "m.onnx", "--json")
    findings = {f["code"]: f for f in json.loads(out)["findings"]}
    assert code == 1 and findings["provenance-stale"]["severity"] == "warning"
    assert "written for another cache" in findings["provenance-stale"]["message"]
    assert "provenance" not in findings and "provenance-header" not in findings  # the stale record is not used


def test_item8_an_interrupt_after_the_cache_is_written_says_what_was_written(lenet_dir, capsys, monkeypatch):
    import trt_calib.tools.provenance as provenance

    def interrupted(record):
        raise KeyboardInterrupt

    monkeypatch.setattr(provenance, "provenance_text", interrupted)
    out = lenet_dir / "c.cache"
    code, _, err = run(capsys, "-q", "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "x.npy",
                       "--batch-size", "50", "--cache", out)
    assert code == 130
    assert f"interrupted (already written before this: {out})" in one_line(err)
    assert out.exists() and not (lenet_dir / "c.cache.json").exists()
    code, _, err = run(capsys, "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "missing.npy", "--cache",
                       lenet_dir / "d.cache")
    assert code == 2 and "already written" not in err  # nothing carried over from the run before


def test_item9_validate_data_hashes_the_batches_so_files_behind_a_script_are_compared(lenet_dir, capsys):
    cache = lenet_dir / "c.cache"
    assert run(capsys, "-q", "calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "d.py", "--cache", cache)[0] == 0
    code, out, _ = run(capsys, "validate", cache, "--model", lenet_dir / "m.onnx", "--data", lenet_dir / "d.py",
                       "--json")
    assert code == 0 and "data-changed" not in [f["code"] for f in json.loads(out)["findings"]]
    images = lenet_dir / LENET_IMAGES.name
    np.save(images, 255 - np.load(images))  # inverted images behind an unchanged script
    code, out, _ = run(capsys, "validate", cache, "--model", lenet_dir / "m.onnx", "--data", lenet_dir / "d.py",
                       "--json")
    (changed,) = [f for f in json.loads(out)["findings"] if f["code"] == "data-changed"]
    assert code == 1 and any(c.startswith("batch content sha256") for c in changed["changes"])
    assert not any(c.startswith("content sha256") for c in changed["changes"])  # the script itself is the same


def test_item10_padding_more_copies_than_samples_is_refused_and_padding_is_counted(lenet_dir, capsys, caplog):
    argv = ["calibrate", lenet_dir / "m.onnx", "--data", lenet_dir / "x.npy", "--cache", lenet_dir / "c.cache",
            "--last-batch", "pad"]
    code, _, err = run(capsys, *argv, "--batch-size", "2000")
    assert code == 2 and "batch_size=2000 but only 100 samples: last_batch='pad' would add 1900 copies" in one_line(err)
    assert not (lenet_dir / "c.cache").exists()
    code, _, err = run(capsys, *argv, "--batch-size", "64")
    assert code == 0
    assert "padding the last batch with 28 copies of sample 99 (36 real samples in it, 100 in all)" in caplog.text


SHARED_DIM = """
import numpy as np

def load_data():
    yield {{"a": np.ones(({a}, 4), np.float32), "b": np.ones(({b}, 4), np.float32)}}
"""


@pytest.mark.parametrize("b_rows", [1, 2])
def test_item11_inputs_sharing_a_named_dim_are_checked_against_each_other(tmp_path, capsys, b_rows):
    model = save_model(tmp_path / "m.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    (tmp_path / "d.py").write_text(SHARED_DIM.format(a=4, b=b_rows))
    code, _, err = run(capsys, "calibrate", model, "--data", tmp_path / "d.py", "--cache", tmp_path / "c.cache")
    line = one_line(err)
    assert code == 2 and f"input 'b' has N={b_rows}" in line and "input 'a' has N=4" in line
    # the same check at open for samples trt-calib batches itself (a dim after the batch dim)
    model2 = save_model(tmp_path / "m2.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "K"]) for n in "ab"],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "K"])])
    np.savez(tmp_path / "d.npz", a=np.ones((8, 4), np.float32), b=np.ones((8, 3), np.float32))
    code, _, err = run(capsys, "calibrate", model2, "--data", tmp_path / "d.npz", "--cache", tmp_path / "c.cache")
    assert code == 2 and "input 'b' has K=3" in one_line(err)


def test_item12_check_refuses_a_header_only_cache_before_reading_data(tmp_path, capsys):
    (tmp_path / "h.cache").write_text("TRT-7000-EntropyCalibration2\n")
    (tmp_path / "d.py").write_text("open(__file__ + '.read', 'w').close()\n")  # a marker if the data were opened
    code, _, err = run(capsys, "check", tmp_path / "h.cache", "--model", LENET, "--data", tmp_path / "d.py")
    assert code == 2 and "no entries, so there is nothing to check" in one_line(err)
    assert not (tmp_path / "d.py.read").exists()


def test_item12_a_model_without_float_tensors_writes_no_empty_cache(tmp_path, capsys):
    model = save_model(tmp_path / "m.onnx", [helper.make_node("Neg", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])])
    np.save(tmp_path / "x.npy", np.arange(32, dtype=np.int32).reshape(8, 4))
    code, _, err = run(capsys, "calibrate", model, "--data", tmp_path / "x.npy", "--cache", tmp_path / "c.cache")
    assert code == 2 and "has no float tensor TensorRT would calibrate" in one_line(err)
    assert not (tmp_path / "c.cache").exists()


@pytest.mark.parametrize(
    "amax, message",
    [("NaN", "has amax NaN"), ("1e-45", "below the smallest float32 scale"), ("1e39", "beyond float32's largest"),
     ('"nan"', "has amax NaN")],
)
def test_item12_convert_refuses_amax_values_it_would_change(tmp_path, capsys, amax, message):
    (tmp_path / "a.json").write_text(f'{{"t": {amax}}}')
    code, _, err = run(capsys, "convert", tmp_path / "a.json", "--to", "cache", "--trt-version", "8.6.1", "-o",
                       tmp_path / "a.cache")
    assert code == 2 and message in one_line(err) and not (tmp_path / "a.cache").exists()
    # what round-trips stays accepted: "inf", 0, and a denormal scale's amax
    (tmp_path / "b.json").write_text('{"i": "inf", "z": 0, "d": 1.78e-43}')
    assert run(capsys, "convert", tmp_path / "b.json", "--to", "cache", "--trt-version", "8.6.1")[0] == 0


def test_item12_diff_says_when_a_cache_repeats_names(tmp_path, capsys):
    (tmp_path / "a.cache").write_text("TRT-7000-EntropyCalibration2\ndata: 3c008912\ndata: 3c88edfc\n")
    code, out, _ = run(capsys, "diff", tmp_path / "a.cache", TRT_TABLE)
    assert code == 1 and "A repeats 1 name(s) (data); the diff compares the last value of each" in out
    code, out, _ = run(capsys, "diff", tmp_path / "a.cache", TRT_TABLE, "--json")
    assert json.loads(out)["duplicates_a"] == ["data"]


def test_item12_header_whitespace_is_reported_by_inspect_and_validate(tmp_path, capsys):
    (tmp_path / "w.cache").write_text("TRT-7000-EntropyCalibration2 \ndata: 3c008912\n")
    code, out, _ = run(capsys, "inspect", tmp_path / "w.cache")
    assert code == 0 and "note: the header line 'TRT-7000-EntropyCalibration2 ' has whitespace" in out
    code, out, _ = run(capsys, "validate", tmp_path / "w.cache", "--json")
    assert code == 1 and "header-whitespace" in [f["code"] for f in json.loads(out)["findings"]]


@pytest.fixture
def external_lenet(tmp_path):
    """LeNet saved with its weights in external data (the layout of a model over 2 GB)."""
    model = onnx.load(str(LENET))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=128)
    return path


def test_item12_validate_reads_a_big_models_graph_without_its_weights(external_lenet, capsys):
    os.unlink(external_lenet.parent / "ext.onnx.data")  # validate needs the graph, not the 2 GB of weights
    code, out, _ = run(capsys, "validate", TRT_TABLE, "--model", external_lenet, "--json")
    assert json.loads(out)["coverage"]["covered"] == 8 and json.loads(out)["coverage"]["model_tensors"] == 10


def test_item12_tensor_types_of_a_model_over_the_protobuf_limit(monkeypatch):
    import trt_calib.ort.model as collect

    model = onnx.load(str(LENET))
    expected = collect.calibrated_tensors(model)
    monkeypatch.setattr(collect, "PROTO_LIMIT", 10_000)  # LeNet is 1.7 MB: treated as over the limit
    assert collect.calibrated_tensors(model) == expected
    assert all(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer)  # the model keeps its weights


# ---------------------------------------------------------------------------------------------- hangs (13, 14)
ENDLESS = """
import numpy as np

count = 0

def load_data():
    global count
    while True:
        count += 1
        if count > 20:  # stands for "forever": a test that fails must not hang
            raise RuntimeError("asked for more than 20 batches")
        yield {"data": np.random.default_rng(count).random((2, 1, 28, 28), np.float32)}
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", LENET, "--cache", "{tmp}/c.cache"],
        ["calibrate", LENET, "--cache", "{tmp}/c.cache", "--dry-run"],
        ["build", LENET, "--dry-run"],
        ["validate", TRT_TABLE, "--model", LENET],
        ["check", TRT_TABLE, "--model", LENET],
        ["quantize", LENET, "-o", "{tmp}/q.onnx"],
        ["report", LENET, "-o", "{tmp}/r", "--max-tensors", "0"],
    ],
    ids=lambda a: " ".join(str(x) for x in a[:1] + a[-1:]),
)
def test_item13_max_batches_stops_an_endless_generator_in_every_command(tmp_path, capsys, argv):
    (tmp_path / "endless.py").write_text(ENDLESS)
    code, _, err = run(capsys, "-q", *[str(a).format(tmp=tmp_path) for a in argv], "--data", tmp_path / "endless.py",
                       "--max-batches", "3")
    assert code in (0, 1), err  # 1: check and validate find the data differs from TensorRT 7's
    assert "more than 20 batches" not in err


def test_item13_evaluate_takes_max_batches_too(tmp_path, capsys):
    (tmp_path / "endless.py").write_text(ENDLESS)
    assert run(capsys, "quantize", LENET, "--from-cache", TRT_TABLE, "-o", tmp_path / "q.onnx")[0] == 0
    code, out, err = run(capsys, "evaluate", LENET, tmp_path / "q.onnx", "--data", tmp_path / "endless.py",
                         "--max-batches", "3", "--json", "--worst", "0")
    assert code == 0, err
    assert json.loads(out)["num_samples"] == 6


@pytest.mark.parametrize("argv, message", [
    (["--threads", "100000"], "argument --threads: must be between 1 and 256"),
    (["--preprocess", "resize=100000"], "resize=100000 exceeds 8192 pixels"),
    (["--preprocess", "size=50000"], "size 50000x50000 exceeds 8192 pixels"),
])
def test_item14_resource_arguments_are_bounded_at_parse_time(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "calibrate", LENET, "--data", tmp_path, "--cache", tmp_path / "c.cache", *argv)
    assert code == 2 and message in one_line(err)


def test_item14_inspect_stops_reading_an_endless_file(tmp_path, capsys, monkeypatch):
    import trt_calib.core.cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_CACHE_BYTES", 1 << 20)
    (tmp_path / "huge.cache").write_bytes(b"TRT-8601-EntropyCalibration2\n" + b"x" * (2 << 20))
    code, _, err = run(capsys, "inspect", tmp_path / "huge.cache", "--json")
    assert code == 2 and "huge.cache: more than 1 MiB" in one_line(err)
    # a device is not read at all (issue 23 item 15): /dev/zero would never end
    code, _, err = run(capsys, "inspect", "/dev/zero", "--json")
    assert code == 2 and "/dev/zero is a character device, not a regular file" in one_line(err)


def test_item14_a_truncated_npy_is_a_data_error_at_open_and_while_read(lenet_dir, capsys):
    from trt_calib.errors import DataError
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.data import open_source

    data = lenet_dir / "x.npy"
    whole = data.read_bytes()
    (lenet_dir / "cut.npy").write_bytes(whole[: len(whole) // 2])
    code, _, err = run(capsys, "calibrate", LENET, "--data", lenet_dir / "cut.npy", "--cache", lenet_dir / "c.cache")
    assert code == 2 and "cut.npy: truncated: the header declares (100, 1, 28, 28) float32" in one_line(err)
    # shrunk after opening, while the batches are read: a DataError, not SIGBUS
    source = open_source(data, model_inputs(LENET), batch_size=50)
    batches = iter(source)
    first = next(batches)
    assert first["data"].shape == (50, 1, 28, 28)
    with open(data, "r+b") as f:
        f.truncate(len(whole) - 1000)
    with pytest.raises(DataError, match=r"x.npy: ended 1000 bytes early while reading sample 50"):
        next(batches)


# ---------------------------------------------------------------------------------------------- tracebacks (15-18)
@pytest.mark.parametrize("argv, message", [
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--percentile", "0"], "--percentile: must be in (0, 100]"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--percentile", "-1"], "--percentile: must be in (0, 100]"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--percentile", "101"], "--percentile: must be in (0, 100]"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--percentile", "nan"], "--percentile: must be a finite"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--trt-version", "abc"], "--trt-version: not a TensorRT version"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--trt-version", ""], "--trt-version: not a TensorRT version"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--trt-version", "7.0.0rc1"], "--trt-version: not a TensorRT"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--max-activation-mb", "nan"], "--max-activation-mb: must be a "
     "finite"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--max-activation-mb", "inf"], "--max-activation-mb: must be a "
     "finite"),
    (["calibrate", LENET, "--cache", "{tmp}/c.cache", "--seed", "-1"], "--seed: must be >= 0"),
    (["evaluate", LENET, LENET, "--worst", "-1"], "--worst: must be >= 0"),
    (["check", TRT_TABLE, "--model", LENET, "--trt-version", "abc"], "--trt-version: not a TensorRT version"),
    (["quantize", LENET, "-o", "{tmp}/q.onnx", "--percentile", "nan"], "--percentile: must be a finite"),
    (["report", LENET, "-o", "{tmp}/r", "--percentile", "0"], "--percentile: must be in (0, 100]"),
])
def test_item15_arguments_are_checked_before_the_data_is_read(tmp_path, capsys, argv, message):
    (tmp_path / "d.py").write_text("open(__file__ + '.read', 'w').close()\n")  # a marker if the data were opened
    code, _, err = run(capsys, *[str(a).format(tmp=tmp_path) for a in argv], "--data", tmp_path / "d.py")
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "d.py.read").exists()


def test_item16_report_shows_inf_for_a_tensor_reaching_flt_max(tmp_path):
    from trt_calib.core.signs import SignedHistogram
    from trt_calib.tools.report import analyse, write_report

    h = SignedHistogram()
    h.update(np.array([1.0, -np.finfo(np.float32).max, 3.0], np.float32))  # an attention mask's finfo.min
    summaries = analyse({"mask": h})
    write_report(tmp_path / "r", summaries, {"mask": h}, meta={})
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["tensors"][0]["amax"] == "inf"
    assert "entropy2" not in [c["name"] for c in report["tensors"][0]["choices"]]  # no grid for an inf threshold
    assert ">inf<" in (tmp_path / "r" / "index.html").read_text()


def test_item16_report_on_a_model_whose_tensors_overflow_to_inf(tmp_path, capsys):
    model = save_model(tmp_path / "exp.onnx", [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Neg", ["e"],
                       ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    np.save(tmp_path / "x.npy", np.full((8, 4), 100.0, np.float32))  # exp(100) is inf in float32
    code, out, err = run(capsys, "-q", "report", model, "--data", tmp_path / "x.npy", "-o", tmp_path / "r",
                         "--max-tensors", "0", "--json")
    assert code == 0, err
    amax = {t["name"]: t["amax"] for t in json.loads((tmp_path / "r" / "report.json").read_text())["tensors"]}
    assert amax["e"] == "inf" and amax["y"] == "inf" and amax["x"] == pytest.approx(100.0, rel=1e-3)


@pytest.mark.parametrize("sidecar", ['[1]', '"str"', '{"model": {"sha256": 5}}', '{"model": "x"}',
                                     '{"cache": {"sha256": []}}', "{not json"])
def test_item17_a_malformed_sidecar_is_a_finding_not_a_crash(tmp_path, capsys, sidecar):
    shutil.copy(TRT_TABLE, tmp_path / "c.cache")
    (tmp_path / "c.cache.json").write_text(sidecar)
    code, out, err = run(capsys, "validate", tmp_path / "c.cache", "--model", LENET, "--json")
    codes = {f["code"]: f["severity"] for f in json.loads(out)["findings"]}
    assert code == 1, err
    assert codes.get("provenance-malformed", codes.get("provenance-unreadable")) == "warning"


def test_item18_a_model_over_2gb_goes_to_onnxruntime_as_a_file_with_external_data(external_lenet, capsys,
                                                                                   monkeypatch):
    import trt_calib.ort.model as collect

    out = external_lenet.parent
    assert run(capsys, "-q", "calibrate", external_lenet, "--data", LENET_BATCHES, "--cache", out / "small.cache")[0] == 0
    roles = []
    real = collect._session_from_file

    def spy(model, options, role):
        roles.append(role)
        return real(model, options, role)

    monkeypatch.setattr(collect, "PROTO_LIMIT", 100_000)  # LeNet (1.7 MB) now counts as over the limit
    monkeypatch.setattr(collect, "_session_from_file", spy)
    assert run(capsys, "-q", "calibrate", external_lenet, "--data", LENET_BATCHES, "--cache", out / "big.cache")[0] == 0
    assert roles == [str(external_lenet)]  # the session came from a file, and the model is named in its errors
    assert (out / "big.cache").read_bytes() == (out / "small.cache").read_bytes()
    # the external data file is an input too
    code, _, err = run(capsys, "calibrate", external_lenet, "--data", LENET_BATCHES, "--cache", out / "ext.onnx.data")
    assert code == 2 and "is the input MODEL" in one_line(err)


# ---------------------------------------------------------------------------------------------- messages (19, 21)
NOISY = """
import numpy as np

print("importing the noisy script")

def load_data():
    print("making batches")
    yield {"data": np.full((2, 1, 28, 28), 0.5, np.float32)}
"""


def test_item19_a_data_scripts_prints_go_to_stderr_with_json(tmp_path, capsys):
    (tmp_path / "noisy.py").write_text(NOISY)
    code, out, err = run(capsys, "calibrate", LENET, "--data", tmp_path / "noisy.py", "--cache",
                         tmp_path / "c.cache", "--json", "--no-progress")
    assert code == 0 and json.loads(out)["num_batches"] == 1
    assert "importing the noisy script" in err and "making batches" in err


def test_item21_empty_model_file_says_empty_file(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    code, _, err = run(capsys, "calibrate", tmp_path / "m.onnx", "--data", LENET_BATCHES, "--cache",
                       tmp_path / "c.cache")
    assert code == 2 and f"{tmp_path / 'm.onnx'}: empty file, not an ONNX model" in one_line(err)


def test_item21_a_model_onnxruntime_cannot_load_is_named(tmp_path, capsys):
    model = save_model(tmp_path / "odd.onnx", [helper.make_node("Relu", ["x"], ["h"]),
                                                helper.make_node("NoSuchOp", ["h"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))
    code, _, err = run(capsys, "calibrate", model, "--data", tmp_path / "x.npy", "--cache", tmp_path / "c.cache")
    assert code == 2 and f"{model}: onnxruntime cannot load it" in one_line(err)


def test_item21_a_json_array_is_not_a_name_amax_mapping(tmp_path, capsys):
    (tmp_path / "a.json").write_text("[1, 2]")
    code, _, err = run(capsys, "convert", tmp_path / "a.json", "--to", "cache", "--trt-version", "8.6.1")
    assert code == 2 and "holds a JSON list ([1, 2]), not a {name: amax} mapping" in one_line(err)


def test_item21_bad_lines_are_cut_and_a_bom_is_named(tmp_path, capsys):
    (tmp_path / "big.cache").write_text("x" * 3_000_000 + "\n")
    code, _, err = run(capsys, "inspect", tmp_path / "big.cache")
    assert code == 2 and len(one_line(err)) < 500 and "(3000000 characters)" in err
    (tmp_path / "bom.cache").write_bytes(b"\xef\xbb\xbfTRT-7000-EntropyCalibration2\ndata: 3c008912\n")
    code, _, err = run(capsys, "inspect", tmp_path / "bom.cache")
    assert code == 2 and "starts with a UTF-8 byte-order mark (BOM)" in one_line(err)
