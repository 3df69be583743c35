"""The second hostile pass (issue 23), one regression test per finding: nothing lost, nothing silent, no hang, no
traceback, in the commands added since the first pass (sensitivity, stability, qdq-to-cache, doctor, executors).
The first pass's tests are in test_hostile_use.py; the CLI contract itself is in test_cli_contract.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest


from conftest import LENET, LENET_BATCHES, LENET_IMAGES, TRT_TABLE, one_line, run


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_fifo()}


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def lenet_dir(tmp_path):
    """A folder with LeNet (weights in external data), 100 images as .npy, a data script and TensorRT 7's cache."""
    model = onnx.load(str(LENET))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=128)
    images = np.load(LENET_IMAGES)[:100].astype(np.float32).reshape(100, 1, 28, 28) / np.float32(255.0)
    np.save(tmp_path / "x.npy", images)
    shutil.copy(LENET_BATCHES, tmp_path / "d.py")
    shutil.copy(LENET_IMAGES, tmp_path / LENET_IMAGES.name)
    shutil.copy(TRT_TABLE, tmp_path / "r.cache")
    return tmp_path


# ---------------------------------------------------------------------------------------------- data loss (1-5)
# Every command that writes, with one output aimed at the model's external-data file: refused before any work.
EXTERNAL = {
    "sensitivity": ["sensitivity", "{m}", "--data", "{x}", "--batch-size", "50", "-o", "{ext}"],
    "stability": ["stability", "{m}", "--data", "{x}", "-o", "{ext}"],
    "calibrate": ["calibrate", "{m}", "--data", "{x}", "--cache", "{ext}"],
    "calibrate-json": ["calibrate", "{m}", "--data", "{x}", "--cache", "{tmp}/c.cache", "--json", "{ext}"],
    "quantize": ["quantize", "{m}", "--from-cache", "{r}", "-o", "{ext}"],
    "quantize-report": ["quantize", "{m}", "--from-cache", "{r}", "-o", "{tmp}/q.onnx", "--report", "{ext}"],
    "evaluate": ["evaluate", "{m}", "{m}", "--data", "{x}", "--json", "{ext}"],
    "build": ["build", "{m}", "--data", "{x}", "--engine", "{ext}"],
    "report": ["report", "{m}", "--data", "{x}", "-o", "{tmp}/r", "--save-histograms", "{ext}"],
    "qdq-to-cache": ["qdq-to-cache", "{m}", "--onnx", "{ext}", "--cache", "{tmp}/p.cache"],
}


@pytest.mark.parametrize("case", sorted(EXTERNAL))
def test_item1_no_command_overwrites_the_models_external_data(case, lenet_dir, capsys):
    before = snapshot(lenet_dir)
    argv = [a.format(m=lenet_dir / "m.onnx", x=lenet_dir / "x.npy", r=lenet_dir / "r.cache", tmp=lenet_dir,
                     ext=lenet_dir / "m.onnx.data") for a in EXTERNAL[case]]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "is the input" in one_line(err) and "m.onnx.data" in err
    assert snapshot(lenet_dir) == before
    assert onnx.load(str(lenet_dir / "m.onnx")).graph.initializer[0].raw_data  # still readable with its weights


@pytest.mark.parametrize("argv", [
    ["stability", "{m}", "--data", "{d}:load_data", "-o", "{d}"],
    ["stability", "{m}", "--data", "{x}", "--heldout", "{d}:load_data", "-o", "{d}"],
    ["sensitivity", "{m}", "--data", "{x}", "--batch-size", "50", "--eval-data", "{d}:load_data", "-o", "{d}"],
    ["sensitivity", "{m}", "--data", "{d}:load_data", "-o", "{d}"],
], ids=["stability-data", "stability-heldout", "sensitivity-eval-data", "sensitivity-data"])
def test_item2_a_data_script_named_with_its_function_is_an_input(argv, lenet_dir, capsys):
    before = snapshot(lenet_dir)
    code, _, err = run(capsys, *[a.format(m=lenet_dir / "m.onnx", x=lenet_dir / "x.npy", d=lenet_dir / "d.py")
                                 for a in argv])
    assert code == 2 and "is the input" in one_line(err) and "refusing to overwrite" in err
    assert snapshot(lenet_dir) == before


def _fifo(path):
    os.mkfifo(path)
    return path


SPECIAL_OUTPUTS = {
    "calibrate --cache": ["calibrate", LENET, "--data", "{x}", "--cache", "{out}"],
    "calibrate --json FILE": ["calibrate", LENET, "--data", "{x}", "--cache", "{tmp}/c.cache", "--json", "{out}"],
    "quantize -o": ["quantize", LENET, "--from-cache", TRT_TABLE, "-o", "{out}"],
    "convert -o": ["convert", TRT_TABLE, "--to", "json", "-o", "{out}"],
    "convert -o --force": ["convert", TRT_TABLE, "--to", "json", "-o", "{out}", "--force"],
    "sensitivity -o": ["sensitivity", LENET, "--data", "{x}", "--batch-size", "50", "-o", "{out}"],
    "stability -o": ["stability", LENET, "--data", "{x}", "-o", "{out}"],
    "evaluate --json FILE": ["evaluate", LENET, LENET, "--data", "{x}", "--json", "{out}", "--force"],
}


@pytest.mark.parametrize("case", sorted(SPECIAL_OUTPUTS))
def test_item3_an_output_that_is_a_fifo_is_never_replaced(case, lenet_dir, capsys):
    out = _fifo(lenet_dir / "out.fifo")
    with no_hang():
        code, _, err = run(capsys, *[str(a).format(x=lenet_dir / "x.npy", tmp=lenet_dir, out=out)
                                     for a in SPECIAL_OUTPUTS[case]])
    assert code == 2 and "is a FIFO (named pipe), not a regular file; refusing to replace it" in one_line(err)
    assert stat.S_ISFIFO(os.lstat(out).st_mode)
    assert not (lenet_dir / "c.cache").exists()


def test_item3_json_dev_null_is_refused_not_replaced(lenet_dir, capsys):
    code, out, err = run(capsys, "calibrate", LENET, "--data", lenet_dir / "x.npy", "--cache", lenet_dir / "c.cache",
                         "--json", "/dev/null", "--force")
    assert code == 2 and "/dev/null is a character device, not a regular file; refusing to replace it" in one_line(err)
    assert json.loads(out)["exit"] == 2
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not (lenet_dir / "c.cache").exists()


def test_item3_the_atomic_write_itself_refuses_a_special_file(tmp_path):
    from trt_calib._util import atomic_write

    fifo = _fifo(tmp_path / "f")
    with pytest.raises(FileExistsError, match="is a FIFO .* refusing to replace it"):
        atomic_write(fifo, b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_item5_json_file_replaces_only_a_file_trt_calib_wrote(lenet_dir, capsys):
    precious = lenet_dir / "labels.npy"
    np.save(precious, np.arange(10))
    before = precious.read_bytes()
    base = ["calibrate", LENET, "--data", lenet_dir / "x.npy", "--batch-size", "50", "--cache", lenet_dir / "c.cache",
            "--no-progress", "-q"]
    code, _, err = run(capsys, *base, "--json", precious)
    assert code == 2 and "is not a --json file trt-calib wrote; refusing to replace it" in one_line(err)
    assert "--force" in err and precious.read_bytes() == before and not (lenet_dir / "c.cache").exists()
    # a JSON object of someone else's is not ours either
    foreign = lenet_dir / "settings.json"
    foreign.write_text('{"lr": 0.1}')
    assert run(capsys, *base, "--json", foreign)[0] == 2 and foreign.read_text() == '{"lr": 0.1}'
    # ours is replaced without asking, and says it is ours
    ours = lenet_dir / "details.json"
    assert run(capsys, *base, "--json", ours)[0] == 0
    assert json.loads(ours.read_text())["written_by"].startswith("trt-calib ")
    assert run(capsys, *base, "--json", ours)[0] == 0
    # --force replaces anything that is a regular file
    assert run(capsys, *base, "--json", precious, "--force")[0] == 0
    assert json.loads(precious.read_text())["written_by"] == "trt-calib 0.1.0 calibrate"


def test_item5_evaluate_json_file_follows_the_same_rule(lenet_dir, capsys):
    target = lenet_dir / "x_copy.npy"
    shutil.copy(lenet_dir / "x.npy", target)
    before = target.read_bytes()
    code, _, err = run(capsys, "evaluate", LENET, LENET, "--data", lenet_dir / "x.npy", "--json", target)
    assert code == 2 and "refusing to replace it" in one_line(err) and target.read_bytes() == before


# ---------------------------------------------------------------------------------------------- hangs (15)
SPECIAL_INPUTS = {
    "calibrate --data FIFO.npy": (["calibrate", LENET, "--data", "{fifo_npy}", "--cache", "{tmp}/c.cache"],
                                  "is a FIFO (named pipe), not a regular file"),
    "inspect FIFO": (["inspect", "{fifo}"], "is a FIFO (named pipe), not a regular file"),
    "validate FIFO": (["validate", "{fifo}"], "is a FIFO (named pipe), not a regular file"),
    "diff FIFO": (["diff", TRT_TABLE, "{fifo}"], "is a FIFO (named pipe), not a regular file"),
    "check FIFO": (["check", "{fifo}", "--model", LENET, "--data", LENET_BATCHES], "is a FIFO (named pipe)"),
    "calibrate --compare FIFO": (["calibrate", LENET, "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache", "--compare",
                                  "{fifo}"], "is a FIFO (named pipe), not a regular file"),
    "calibrate FIFO model": (["calibrate", "{fifo_onnx}", "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache"],
                             "is a FIFO (named pipe), not a regular file"),
    "calibrate /dev/zero model": (["calibrate", "/dev/zero", "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache"],
                                  "/dev/zero is a character device, not a regular file"),
    "evaluate /dev/zero model": (["evaluate", LENET, "/dev/zero", "--data", LENET_BATCHES],
                                 "/dev/zero is a character device"),
    "check --data FIFO.npy": (["check", TRT_TABLE, "--model", LENET, "--data", "{fifo_npy}"], "is a FIFO"),
}


@pytest.mark.parametrize("case", sorted(SPECIAL_INPUTS))
def test_item15_a_fifo_or_device_as_an_input_is_refused_not_waited_on(case, tmp_path, capsys):
    names = {"fifo": "c.cache", "fifo_npy": "x.npy", "fifo_onnx": "m.onnx"}
    paths = {key: _fifo(tmp_path / name) for key, name in names.items()}
    argv, message = SPECIAL_INPUTS[case]
    with no_hang():
        code, _, err = run(capsys, *[str(a).format(tmp=tmp_path, **paths) for a in argv])
    assert code == 2 and message in one_line(err)
    assert "no such" not in err


def test_item15_the_library_refuses_a_fifo_too(tmp_path):
    from trt_calib.core.cache import CalibrationCache
    from trt_calib.errors import CacheFormatError, DataError, ModelError
    from trt_calib.ort.data import open_source
    from trt_calib.ort.model import load_model, model_inputs

    fifo = _fifo(tmp_path / "x.npy")
    with no_hang():
        with pytest.raises(CacheFormatError, match="is a FIFO"):
            CalibrationCache.load(fifo)
        with pytest.raises(ModelError, match="is a FIFO"):
            load_model(fifo)
        with pytest.raises(DataError, match="is a FIFO"):
            open_source(fifo, model_inputs(LENET), batch_size=50)


# ---------------------------------------------------------------------------------------------- crashes (17, 24)
DEEP = {"array": "[" * 100_000 + "]" * 100_000, "object": '{"a":' * 100_000 + "1" + "}" * 100_000}
NESTED = {
    "quantize --exclude-nodes-from": (["quantize", LENET, "--from-cache", TRT_TABLE, "-o", "{tmp}/q.onnx",
                                       "--exclude-nodes-from", "{deep}"], "not a readable sensitivity JSON"),
    "build --keep-precision": (["build", LENET, "--data", LENET_BATCHES, "--dry-run", "--keep-precision", "{deep}"],
                               "not a readable sensitivity JSON"),
    "report --stability": (["report", LENET, "--stability", "{deep}", "-o", "{tmp}/r"],
                           "not a readable stability JSON"),
    "convert --to cache": (["convert", "{deep}", "--to", "cache", "--trt-version", "8.6.1", "-o", "{tmp}/c.cache"],
                           "not a readable {name: amax} JSON"),
}


@pytest.mark.parametrize("shape", sorted(DEEP))
@pytest.mark.parametrize("case", sorted(NESTED))
def test_item17_deeply_nested_json_is_one_line_exit_2(case, shape, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP[shape])
    argv, message = NESTED[case]
    code, out, err = run(capsys, *[str(a).format(tmp=tmp_path, deep=deep) for a in argv], "--json")
    assert code == 2 and message in one_line(err) and "nested too deeply" in err
    assert json.loads(out)["exit"] == 2


def test_item24_convert_refuses_a_repeated_name_instead_of_keeping_the_last(tmp_path, capsys):
    (tmp_path / "dup.json").write_text('{"conv1": 1.5, "conv1": 2.5}')
    code, _, err = run(capsys, "convert", tmp_path / "dup.json", "--to", "cache", "--trt-version", "8.6.1", "-o",
                       tmp_path / "out.cache")
    assert code == 2 and "the key 'conv1' appears more than once" in one_line(err)
    assert not (tmp_path / "out.cache").exists()


@pytest.mark.parametrize("hex_value", ["bf800000", "ffc00000"], ids=["negative", "nan"])
def test_item24_convert_writes_no_json_it_would_refuse_to_read(tmp_path, capsys, hex_value):
    (tmp_path / "c.cache").write_text(f"TRT-8601-EntropyCalibration2\nok: 3c010a14\nbad: {hex_value}\n")
    code, _, err = run(capsys, "convert", tmp_path / "c.cache", "--to", "json", "-o", tmp_path / "c.json")
    assert code == 2 and "tensor 'bad' has scale" in one_line(err) and "no amax describes" in err
    assert not (tmp_path / "c.json").exists()
    # what it does write, it reads back to the same bytes
    (tmp_path / "c.cache").write_text("TRT-8601-EntropyCalibration2\nok: 3c010a14\nzero: 0\nbig: 7f800000\n"
                                      "minus_zero: 80000000\n")
    assert run(capsys, "convert", tmp_path / "c.cache", "--to", "json", "-o", tmp_path / "c.json")[0] == 0
    assert run(capsys, "convert", tmp_path / "c.json", "--to", "cache", "--trt-version", "8.6.1", "-o",
               tmp_path / "back.cache")[0] == 0
    assert (tmp_path / "back.cache").read_bytes() == (tmp_path / "c.cache").read_bytes()


# ---------------------------------------------------------------------------------------------- silent results (6, 10)
def _calibrated(tmp_path, capsys, *extra) -> str:
    cache = tmp_path / "c.cache"
    assert run(capsys, "-q", "calibrate", LENET, "--data", LENET_BATCHES, "--cache", cache, "--no-progress",
               *extra)[0] == 0
    return cache


@pytest.mark.parametrize("data", [{}, {"num_batches": 10}], ids=["empty", "counts-only"])
def test_item6_validate_says_what_it_could_not_compare(tmp_path, capsys, data):
    cache = _calibrated(tmp_path, capsys)
    sidecar = tmp_path / "c.cache.json"
    record = json.loads(sidecar.read_text())
    record["data"] = data
    sidecar.write_text(json.dumps(record))
    code, out, _ = run(capsys, "validate", cache, "--model", LENET, "--data", LENET_BATCHES, "--json")
    findings = {f["code"]: f for f in json.loads(out)["findings"]}
    assert "match" not in findings.get("provenance-data", {"message": ""})["message"]
    unchecked = findings["provenance-data-unchecked"]
    assert unchecked["severity"] == "warning" and "batch content sha256" in unchecked["message"]
    assert code == 1
    # with every hash recorded, it says what it compared
    _calibrated(tmp_path, capsys)
    code, out, _ = run(capsys, "validate", cache, "--model", LENET, "--data", LENET_BATCHES, "--json")
    findings = {f["code"]: f for f in json.loads(out)["findings"]}
    assert code == 0 and "match" in findings["provenance-data"]["message"]
    assert "provenance-data-unchecked" not in findings


def test_item6_a_sidecar_of_null_is_malformed_not_missing(tmp_path, capsys):
    cache = _calibrated(tmp_path, capsys)
    (tmp_path / "c.cache.json").write_text("null")
    code, out, _ = run(capsys, "validate", cache, "--model", LENET, "--data", LENET_BATCHES, "--json")
    codes = {f["code"]: f for f in json.loads(out)["findings"]}
    assert "no-provenance" not in codes and codes["provenance-malformed"]["severity"] == "warning"
    assert "null" in codes["provenance-malformed"]["message"] and code == 1


@pytest.mark.parametrize("extra, made", [
    (["--range", "global"], "--range global"),
    (["--algorithm", "percentile", "--percentile", "99.9"], "percentile 99.9"),
    (["--algorithm", "mse"], "mse"),
], ids=["range-global", "percentile", "mse"])
def test_item10_check_recomputes_our_cache_the_way_it_was_made(tmp_path, capsys, extra, made):
    cache = _calibrated(tmp_path, capsys, *extra)
    code, out, err = run(capsys, "check", cache, "--model", LENET, "--data", LENET_BATCHES, "--json", "--no-progress")
    report = json.loads(out)
    assert code == 0 and report["consistent"], err
    assert made in report["made_with"] and report["note"] is None
    # a sidecar that belongs to another cache is not trusted: the header rules, and the report says why
    cache.write_text(cache.read_text() + "extra: 3c010a14\n")
    code, out, _ = run(capsys, "check", cache, "--model", LENET, "--data", LENET_BATCHES, "--json", "--no-progress")
    report = json.loads(out)
    assert report["made_with"] is None and "does not record this cache's sha256" in report["note"]


def test_item10_a_tensorrt_cache_is_still_checked_by_its_header(capsys):
    code, out, _ = run(capsys, "check", TRT_TABLE, "--model", LENET, "--data", LENET_BATCHES, "--json",
                       "--no-progress")
    report = json.loads(out)
    assert code == 0 and report["consistent"] and report["made_with"] is None and report["note"] is None


# ---------------------------------------------------------------------------------------------- hangs (14)
ENDLESS = """
import numpy as np

def load_data():
    i = 0
    while True:  # never ends: only --max-batches or a refusal stops it
        i += 1
        yield {"data": np.full((50, 1, 28, 28), (i % 7) / 7, np.float32)}
"""


@pytest.mark.parametrize("argv", [
    ["stability", LENET, "-o", "{tmp}/s.json", "--orders", "1", "--no-end-to-end", "--executor", "serial"],
    ["sensitivity", LENET, "-o", "{tmp}/s.json", "--from-cache", TRT_TABLE, "--executor", "serial"],
    ["calibrate", LENET, "--cache", "{tmp}/c.cache", "--executor", "local", "--workers", "1"],
    ["tune", LENET, "-o", "{tmp}/t", "--executor", "serial"],
    ["round-weights", LENET, "-o", "{tmp}/r.onnx"],
], ids=["stability", "sensitivity", "sharded-calibrate", "tune", "round-weights"])
def test_item14_no_command_holds_an_endless_source(tmp_path, capsys, monkeypatch, argv):
    import trt_calib.ort.data.source as source
    from trt_calib._util import available_memory_mb

    monkeypatch.setattr(source, "HOLD_FRACTION", 10.0 / available_memory_mb())  # a 10 MB share: 64 LeNet batches
    (tmp_path / "endless.py").write_text(ENDLESS)
    with no_hang(120):
        code, _, err = run(capsys, *[str(a).format(tmp=tmp_path) for a in argv], "--data", tmp_path / "endless.py",
                           "--no-progress")
    line = one_line(err)
    assert code == 2 and "read and the data has not ended" in line and "--max-batches" in line
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "c.cache").exists()
    assert not (tmp_path / "r.onnx").exists() and not list(tmp_path.glob("t/*"))


# ---------------------------------------------------------------------------------------------- crashes (18-21)
def _exp_model(tmp_path):
    """x (N, 2, 2) -> MatMul -> Exp -> y, with x[..., 1] = 100: exp(100) is inf in float32, so every output holds inf
    in FP32 and INT8 alike, and the end-to-end error (mean |FP32 - INT8| of a non-classifier output) is nan."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Exp", ["m"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "exp.onnx"))
    x = np.random.default_rng(0).uniform(0, 1, size=(64, 2, 2)).astype(np.float32)
    x[:, :, 1] = 100.0
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "exp.onnx"


def test_item18_stability_prints_a_nan_error_instead_of_crashing(tmp_path, capsys):
    model = _exp_model(tmp_path)
    code, out, err = run(capsys, "stability", model, "--data", tmp_path / "x.npy", "--batch-size", "8", "-o",
                         tmp_path / "s.json", "--orders", "2", "--batch-sizes", "16", "--fractions", "0.5,1",
                         "--executor", "serial", "--no-progress")
    assert code in (0, 1), err
    assert "Traceback" not in err and "unexpected" not in err
    e2e = json.loads((tmp_path / "s.json").read_text())["end_to_end"]
    assert e2e["base"]["mean_abs_error"] == "nan"  # JSON's spelling, which the summary printed with :g
    assert "  base              data order, batch 8: mean_abs_error nan" in out.splitlines()


BASE_EXCEPTIONS = {
    "GeneratorExit in the generator": "def load_data():\n    yield {'data': ok()}\n    raise GeneratorExit('made up')\n",
    "custom BaseException in the generator": ("class Stop(BaseException):\n    pass\n\ndef load_data():\n"
                                              "    yield {'data': ok()}\n    raise Stop('mine')\n"),
    "custom BaseException at import": "class Stop(BaseException):\n    pass\n\nraise Stop('at import')\n",
    "GeneratorExit when called": "def load_data():\n    raise GeneratorExit('called')\n",
}


@pytest.mark.parametrize("case", sorted(BASE_EXCEPTIONS))
def test_item19_a_scripts_base_exception_is_a_data_error(tmp_path, capsys, case):
    script = tmp_path / "d.py"
    script.write_text("import numpy as np\n\ndef ok():\n    return np.full((2, 1, 28, 28), 0.5, np.float32)\n\n"
                      + BASE_EXCEPTIONS[case])
    code, out, err = run(capsys, "calibrate", LENET, "--data", script, "--cache", tmp_path / "c.cache", "--json",
                         "--no-progress")
    line = one_line(err)
    assert code == 2 and str(script) in line and ("GeneratorExit" in line or "Stop" in line)
    assert json.loads(out) == {"error": line.split(": error: ", 1)[1], "exit": 2}
    assert not (tmp_path / "c.cache").exists()


def test_item19_ctrl_c_in_a_script_is_still_an_interrupt(tmp_path, capsys):
    script = tmp_path / "d.py"
    script.write_text("def load_data():\n    raise KeyboardInterrupt\n    yield\n")
    code, out, err = run(capsys, "calibrate", LENET, "--data", script, "--cache", tmp_path / "c.cache", "--json")
    assert code == 130 and "interrupted" in one_line(err) and json.loads(out)["exit"] == 130


FD_WRITER = """
import os
import subprocess

import numpy as np

os.write(1, b"written to fd 1 at import\\n")


def load_data():
    os.write(1, b"written to fd 1 by the generator\\n")
    subprocess.run(["echo", "echo from a subprocess"], check=True)
    for i in range(2):
        yield {"data": np.full((50, 1, 28, 28), 0.25 * (i + 1), np.float32)}
"""


def _cli(*argv):
    """`trt-calib ARGV` in a process of its own (what it writes to file descriptors 1 and 2 is captured)."""
    import subprocess
    import sys

    code = "import sys\nfrom trt_calib.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, timeout=300)


FD_COMMANDS = {
    "calibrate": ["calibrate", LENET, "--data", "{d}", "--cache", "{tmp}/c.cache", "--no-progress"],
    "calibrate --dry-run": ["calibrate", LENET, "--data", "{d}", "--cache", "{tmp}/c.cache", "--dry-run"],
    "build --dry-run": ["build", LENET, "--data", "{d}", "--dry-run"],
    "check": ["check", TRT_TABLE, "--model", LENET, "--data", "{d}", "--no-progress"],
    "validate": ["validate", TRT_TABLE, "--model", LENET, "--data", "{d}"],
    "quantize": ["quantize", LENET, "--data", "{d}", "-o", "{tmp}/q.onnx"],
    "evaluate": ["evaluate", LENET, LENET, "--data", "{d}", "--no-progress", "--worst", "0"],
    "report": ["report", LENET, "--data", "{d}", "-o", "{tmp}/r", "--max-tensors", "0", "--no-progress"],
    "sensitivity": ["sensitivity", LENET, "--data", "{d}", "--from-cache", TRT_TABLE, "-o", "{tmp}/s.json",
                    "--executor", "serial", "--max-keep", "0", "--no-progress"],
    "stability": ["stability", LENET, "--data", "{d}", "-o", "{tmp}/st.json", "--orders", "1", "--batch-sizes", "50",
                  "--fractions", "1", "--no-end-to-end", "--executor", "serial", "--no-progress"],
    "qdq-to-cache": ["qdq-to-cache", "{tmp}/q0.onnx", "--onnx", "{tmp}/p.onnx", "--cache", "{tmp}/p.cache",
                     "--data", "{d}"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(FD_COMMANDS))
def test_item20_under_json_fd1_writes_of_a_script_go_to_stderr(tmp_path, capsys, command):
    (tmp_path / "d.py").write_text(FD_WRITER)
    if command == "qdq-to-cache":
        assert run(capsys, "-q", "quantize", LENET, "--from-cache", TRT_TABLE, "-o", tmp_path / "q0.onnx")[0] == 0
    argv = [str(a).format(d=tmp_path / "d.py", tmp=tmp_path) for a in FD_COMMANDS[command]]
    proc = _cli(*argv, "--json")
    assert proc.returncode in (0, 1), proc.stderr.decode()[-2000:]
    result = json.loads(proc.stdout)  # stdout is the one JSON object and nothing else
    assert isinstance(result, dict) and "error" not in result
    err = proc.stderr.decode()
    assert "written to fd 1 at import" in err and "echo from a subprocess" in err


def test_item21_a_reader_that_goes_away_is_not_exit_0(tmp_path):
    """`inspect --json | head -c 10`: all of it fits in the pipe, so every write succeeds; the reader closing the pipe
    before the command ends still means the output was cut."""
    import subprocess
    import sys

    code = ("import sys, time\n"
            "import trt_calib.cli._common as common\n"
            "real = common.print_json\n"
            "def slow(obj):\n"
            "    real(obj)\n"
            "    time.sleep(1.0)  # the reader reads 10 bytes and leaves meanwhile\n"
            "import trt_calib.cli.cache as cache\n"
            "cache.print_json = slow\n"
            "from trt_calib.cli import main\n"
            "sys.exit(main(['inspect', '--json', sys.argv[1]]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(TRT_TABLE)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b'{\n  "file"'
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1, proc.stderr.read().decode()
    # and a reader that reads everything: 0
    whole = subprocess.run([sys.executable, "-c", code, str(TRT_TABLE)], capture_output=True, timeout=60)
    assert whole.returncode == 0 and json.loads(whole.stdout)["num_entries"] == 8


@pytest.mark.parametrize("argv", [["inspect", TRT_TABLE], ["inspect", TRT_TABLE, "--json"],
                                  ["diff", TRT_TABLE, TRT_TABLE], ["diff", TRT_TABLE, TRT_TABLE, "--json"]],
                         ids=["inspect", "inspect-json", "diff", "diff-json"])
def test_item21_a_full_stdout_is_one_line_exit_2(argv):
    import subprocess
    import sys

    code = "import sys\nfrom trt_calib.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], stdout=full, stderr=subprocess.PIPE,
                              timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert one_line(err).endswith("cannot write to standard output: No space left on device")


# ---------------------------------------------------------------------------------------------- contract (24)
@pytest.mark.parametrize("digits, problem", [("10101", "is no TensorRT's version number"),
                                             ("08601", "has a leading zero")])
def test_item24_validate_refuses_version_numbers_no_tensorrt_writes(tmp_path, capsys, digits, problem):
    cache = tmp_path / "c.cache"
    cache.write_text(TRT_TABLE.read_text().replace("TRT-7000-", f"TRT-{digits}-"))
    target = "10.1.1" if digits == "10101" else "8.6.1"
    code, out, _ = run(capsys, "validate", cache, "--trt-version", target, "--json")
    findings = {f["code"]: f for f in json.loads(out)["findings"]}
    assert code == 3 and problem in findings["header-version-invalid"]["message"]
    assert findings["header-version-mismatch"]["severity"] == "error"
    # the numbers TensorRT does write pass
    for header, version in (("TRT-8601-", "8.6.1"), ("TRT-100101-", "10.1.1")):
        cache.write_text(TRT_TABLE.read_text().replace("TRT-7000-", header))
        code, out, _ = run(capsys, "validate", cache, "--trt-version", version, "--json")
        codes = {f["code"] for f in json.loads(out)["findings"]}
        assert "header-version-invalid" not in codes and "header-version-mismatch" not in codes


def test_item24_qdq_to_cache_refusals_use_the_error_shape(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="x_DQ")]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(3, np.int8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "q.onnx"))
    code, out, _ = run(capsys, "qdq-to-cache", tmp_path / "q.onnx", "--onnx", tmp_path / "p.onnx", "--cache",
                       tmp_path / "p.cache", "--json")
    doc = json.loads(out)
    assert code == 3 and doc["exit"] == 3 and "exit_code" not in doc and doc["error"]
    assert not (tmp_path / "p.cache").exists()


@pytest.mark.parametrize("argv, message", [
    (["calibrate", LENET, "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache", "--executor", "serial", "--workers",
      "8"], "--workers 8 is for --executor local or dask"),
    (["sensitivity", LENET, "--data", "{tmp}/x.npy", "--eval-data", "{tmp}/./x.npy", "-o", "{tmp}/s.json"],
     "--eval-data {tmp}/./x.npy is --data"),
    (["sensitivity", LENET, "--data", LENET_BATCHES, "--eval-data", f"{LENET_BATCHES}:load_data", "-o",
      "{tmp}/s.json"], "is --data"),
], ids=["serial-workers", "eval-data-is-data", "eval-data-is-data-script"])
def test_item24_arguments_that_would_be_ignored_or_misleading_are_refused(tmp_path, capsys, argv, message):
    np.save(tmp_path / "x.npy", np.zeros((100, 1, 28, 28), np.float32))
    (tmp_path / "d.py").write_text("open(__file__ + '.read', 'w').close()\n")
    code, _, err = run(capsys, *[str(a).format(tmp=tmp_path) for a in argv])
    assert code == 2 and message.format(tmp=tmp_path) in one_line(err)
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "c.cache").exists()


# ---------------------------------------------------------------------------------------------- executors (11-13, 16)
@contextlib.contextmanager
def _server(greeting: bytes | None):
    """A TCP server on a free loopback port that sends `greeting` to each connection (None: nothing, like a web
    server waiting for its request), then keeps the connection open."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            if greeting:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("address, message", [
    ("notaurl", "argument --address: not a Dask scheduler address: 'notaurl'"),
    ("tcp://127.0.0.1:99999", "not a Dask scheduler address"),
    ("ws://127.0.0.1:8786", "over tcp:// or tls://, not ws://"),
])
def test_item11_a_malformed_address_is_refused_at_parse_time(tmp_path, capsys, address, message):
    (tmp_path / "d.py").write_text("open(__file__ + '.read', 'w').close()\n")
    code, _, err = run(capsys, "calibrate", LENET, "--data", tmp_path / "d.py", "--cache", tmp_path / "c.cache",
                       "--executor", "dask", "--address", address)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "d.py.read").exists()


@pytest.mark.parametrize("greeting, message", [
    (None, "no Dask scheduler answered within 1 s"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "the server there is not a Dask scheduler"),
    (b"", "no Dask scheduler answered"),
], ids=["silent-http-like", "banner", "accepts-then-waits"])
def test_item11_a_server_that_is_not_dask_is_one_line_exit_2_in_bounded_time(tmp_path, capsys, monkeypatch,
                                                                             greeting, message):
    import time

    import trt_calib.ort.executor as executor

    monkeypatch.setattr(executor, "CONNECT_TIMEOUT_S", 1.0)
    with _server(greeting) as port, no_hang(30):
        started = time.monotonic()
        code, _, err = run(capsys, "-q", "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "c.cache",
                           "--executor", "dask", "--address", f"tcp://127.0.0.1:{port}", "--no-progress")
        assert time.monotonic() - started < 20
    assert code == 2 and message in one_line(err) and "MemoryError" not in err
    assert not (tmp_path / "c.cache").exists()


def test_item11_nothing_listening_is_one_line_exit_2(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, _, err = run(capsys, "-q", "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "c.cache",
                       "--executor", "dask", "--address", f"127.0.0.1:{port}", "--no-progress")
    assert code == 2 and "connection refused: no Dask scheduler listens there" in one_line(err)


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found |= {int(p) for p in f.read().split()}
    except OSError:
        pass
    for child in list(found):
        found |= _descendants(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _all_gone(pids, timeout: float = 10.0) -> list[int]:
    """The pids still running after `timeout` seconds (multiprocessing's resource tracker leaves a moment after its
    parent)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _long_stability(tmp_path, executor: str) -> list[str]:
    import sys

    code = "import sys\nfrom trt_calib.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, "-q", "stability", str(LENET), "--data", str(LENET_BATCHES), "-o",
            str(tmp_path / "st.json"), "--orders", "200", "--batch-sizes", "50", "--fractions", "1",
            "--no-end-to-end", "--executor", executor, "--workers", "2", "--no-progress"]


def _wait_for_workers(proc, count: int, timeout: float = 60) -> set[int]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = {k for k in _descendants(proc.pid) if _running(k)}
        if len(kids) >= count + 1:  # the workers and multiprocessing's resource tracker
            time.sleep(2.0)  # let them take their first tasks
            return {k for k in _descendants(proc.pid) if _running(k)}
        time.sleep(0.2)
    raise AssertionError(f"the workers did not start: {_descendants(proc.pid)}")


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "dask"])
@pytest.mark.parametrize("interrupts", [1, 2], ids=["one-ctrl-c", "two-ctrl-c"])
def test_item12_ctrl_c_is_one_line_exit_130_and_leaves_no_worker(tmp_path, executor, interrupts):
    import subprocess
    import time

    proc = subprocess.Popen(_long_stability(tmp_path, executor), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, as a terminal's job is
    try:
        kids = _wait_for_workers(proc, 2)
        for _ in range(interrupts):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group, workers included
            time.sleep(0.2)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["trt-calib stability: error: interrupted; no output was written"]
    assert _all_gone(kids) == []
    assert not (tmp_path / "st.json").exists()


@pytest.mark.slow
def test_item16_a_local_worker_killed_by_the_system_is_one_line_exit_75(tmp_path):
    import subprocess

    proc = subprocess.Popen(_long_stability(tmp_path, "local"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        kids = _wait_for_workers(proc, 2)
        workers = [k for k in kids if b"resource_tracker" not in open(f"/proc/{k}/cmdline", "rb").read()
                   and b"spawn_main" in open(f"/proc/{k}/cmdline", "rb").read()]
        os.kill(workers[0], signal.SIGKILL)  # what the out-of-memory killer does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.decode().splitlines()
    assert proc.returncode == 75 and len(lines) == 1, lines
    assert f"a worker process died before finishing its part: {workers[0]} (killed by SIGKILL" in lines[0]
    assert not (tmp_path / "st.json").exists() and _all_gone(kids) == []


def _die_once(item: int) -> int:
    """Kill this worker process the first time item 2 runs (a marker file remembers), as the system would."""
    marker = os.environ["TRT_CALIB_TEST_MARKER"]
    if item == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return item * item


def test_item16_the_executor_names_the_dead_worker(tmp_path, monkeypatch):
    from trt_calib.errors import EXIT_WORKER_LOST, WorkerLostError
    from trt_calib.ort.executor import LocalExecutor

    monkeypatch.setenv("TRT_CALIB_TEST_MARKER", str(tmp_path / "died"))
    with LocalExecutor(2) as ex, pytest.raises(WorkerLostError, match=r"\d+ \(killed by SIGKILL") as caught:
        ex.map(_die_once, range(6))
    assert caught.value.exit_code == EXIT_WORKER_LOST == 75


@pytest.mark.slow
def test_item16_dask_reruns_a_killed_workers_task_with_the_same_results(tmp_path, monkeypatch):
    """What the hostile pass found good and must stay: a Dask worker that dies is replaced and its task rerun."""
    from trt_calib.ort.executor import DaskExecutor

    monkeypatch.setenv("TRT_CALIB_TEST_MARKER", str(tmp_path / "died"))
    with DaskExecutor(workers=2) as ex:
        assert ex.map(_die_once, range(6)) == [i * i for i in range(6)]
    assert (tmp_path / "died").exists()


@pytest.mark.parametrize("workers", ["4096", str(os.cpu_count() + 1)])
def test_item13_workers_are_capped_by_cores(tmp_path, capsys, workers):
    (tmp_path / "d.py").write_text("open(__file__ + '.read', 'w').close()\n")
    code, _, err = run(capsys, "calibrate", LENET, "--data", tmp_path / "d.py", "--cache", tmp_path / "c.cache",
                       "--executor", "local", "--workers", workers)
    assert code == 2 and f"--workers {workers}: this machine has" in one_line(err) and "core(s)" in err
    assert not (tmp_path / "d.py.read").exists()


def test_item13_workers_are_capped_by_memory(tmp_path, capsys, monkeypatch):
    import trt_calib._util as util

    monkeypatch.setattr(util, "available_memory_mb", lambda: 300.0)
    code, _, err = run(capsys, "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "c.cache",
                       "--executor", "local", "--workers", "2")
    assert code == 2 and "300 MB of memory is available; at most 1 fit. Hint: --workers 1" in one_line(err)
    from trt_calib.ort.executor import check_workers

    assert check_workers("local", None, model_bytes=0) == 1  # the default is lowered, not refused


def test_item13_the_peak_memory_includes_the_workers(tmp_path, capsys, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="trt_calib"):
        code, out, err = run(capsys, "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "c.cache",
                             "--executor", "local", "--workers", "2", "--json", "--no-progress")
    details = json.loads(out)
    assert code == 0 and details["worker_processes"] == 2 and details["workers_peak_rss_mb"] > 50
    assert "MB in its 2 worker process(es)" in caplog.text


@pytest.mark.slow
def test_item24_quiet_dask_runs_print_nothing(tmp_path):
    # --trt-version: without it the one line naming the default version is a warning -q keeps (issue 22)
    proc = _cli("-q", "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "c.cache", "--executor",
                "dask", "--workers", "2", "--no-progress", "--trt-version", "10.16.1")
    assert proc.returncode == 0 and proc.stderr.decode() == "" and proc.stdout.decode() == ""
    serial = _cli("-q", "calibrate", LENET, "--data", LENET_BATCHES, "--cache", tmp_path / "s.cache", "--no-progress",
                  "--trt-version", "10.16.1")
    assert serial.returncode == 0
    assert (tmp_path / "c.cache").read_bytes() == (tmp_path / "s.cache").read_bytes()


FORKING = """
import os
import subprocess
import time

import numpy as np

PIDS = {pids!r}


def load_data():
    child = subprocess.Popen(["sleep", "300"])  # started and forgotten
    forked = os.fork()
    if forked == 0:  # the forked copy returns into the caller's code: it must not run the command a second time
        with open(PIDS, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
    else:
        with open(PIDS, "a") as f:
            f.write(f"{{child.pid}}\\n")
    for i in range(2):
        yield {{"data": np.full((50, 1, 28, 28), 0.25 * (i + 1), np.float32)}}
"""


@pytest.mark.slow
def test_item24_a_forking_data_script_leaves_no_orphan(tmp_path):
    import time

    pids = tmp_path / "pids.txt"
    (tmp_path / "d.py").write_text(FORKING.format(pids=str(pids)))
    proc = _cli("calibrate", LENET, "--data", tmp_path / "d.py", "--cache", tmp_path / "c.cache", "--json",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads(proc.stdout)["num_batches"] == 2  # one JSON object: the fork did not print a second one
    assert "the data script left 1 process(es) running" in proc.stderr.decode()
    time.sleep(1.0)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 and [p for p in started if _running(p)] == []


# ---------------------------------------------------------------------------------------------- models over 2 GB (22)
def test_item22_protobufs_own_failure_to_measure_a_model_means_over_the_limit():
    """Over 2 GiB, protobuf's ByteSize() itself raises EncodeError ("Failed to serialize proto"): the size test that
    called it crashed before it could choose the file path."""
    from google.protobuf.message import EncodeError

    from trt_calib.errors import ModelError
    from trt_calib.ort.model import over_proto_limit, serialize_model

    class Huge:
        def ByteSize(self):
            raise EncodeError("Failed to serialize proto")

        def SerializeToString(self):
            raise AssertionError("protobuf would fail: never called")

    assert over_proto_limit(Huge())
    with pytest.raises(ModelError, match="over protobuf's 2 GiB limit"):
        serialize_model(Huge(), role="big.onnx")
    assert not over_proto_limit(onnx.load(str(LENET)))


def test_item22_serialized_is_the_size_test_and_the_bytes_in_one_pass(monkeypatch):
    """`serialized` (what each session is built from) answers None where `over_proto_limit` says over, and otherwise
    the very bytes SerializeToString gives, having serialised the model once."""
    from google.protobuf.message import EncodeError

    import trt_calib.ort.model as model_module

    class Huge:
        def SerializeToString(self):
            raise EncodeError("Failed to serialize proto")

    assert model_module.serialized(Huge()) is None
    lenet = onnx.load(str(LENET))
    data = model_module.serialized(lenet)
    assert data == lenet.SerializeToString()
    monkeypatch.setattr(model_module, "PROTO_LIMIT", len(data) - 1)
    assert model_module.serialized(lenet) is None and model_module.over_proto_limit(lenet)
    monkeypatch.setattr(model_module, "PROTO_LIMIT", len(data))
    assert model_module.serialized(lenet) == data and not model_module.over_proto_limit(lenet)


_SERIALISING = {"SerializeToString", "SerializePartialToString", "ByteSize"}


@contextlib.contextmanager
def _as_if_over_2gb(monkeypatch, limit: int = 100_000):
    """Every model over `limit` bytes is treated as over protobuf's 2 GiB: PROTO_LIMIT is lowered, and each call that
    serialises or measures such a ModelProto outside `over_proto_limit` or `serialized` (what protobuf would fail) is
    recorded."""
    import sys
    import threading

    import trt_calib.ort.model as model_module

    monkeypatch.setattr(model_module, "PROTO_LIMIT", limit)
    failed: list[str] = []

    def watch(frame, event, arg):
        if event != "c_call" or getattr(arg, "__name__", None) not in _SERIALISING:
            return
        message = getattr(arg, "__self__", None)
        if type(message).__name__ != "ModelProto" or frame.f_code.co_name in ("over_proto_limit", "serialized"):
            return
        if message.ByteSize() > limit:
            failed.append(f"{arg.__name__} of a {message.ByteSize()}-byte model in {frame.f_code.co_name} "
                          f"({frame.f_code.co_filename}:{frame.f_lineno})")

    sys.setprofile(watch)
    threading.setprofile(watch)
    try:
        yield failed
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


BIG_RUNS = {
    "calibrate": (["calibrate", "{m}", "--data", LENET_BATCHES, "--cache", "{out}/c.cache", "--no-progress"], 0),
    "calibrate-local": (["calibrate", "{m}", "--data", LENET_BATCHES, "--cache", "{out}/c.cache", "--executor",
                         "local", "--workers", "2", "--no-progress"], 0),
    "stability": (["stability", "{m}", "--data", LENET_BATCHES, "-o", "{out}/s.json", "--orders", "1",
                   "--batch-sizes", "100", "--fractions", "0.5,1", "--executor", "serial", "--no-progress"], 1),
    "report": (["report", "{m}", "--data", LENET_BATCHES, "-o", "{out}/r", "--max-tensors", "1", "--no-progress"], 0),
    "sensitivity": (["sensitivity", "{m}", "--data", LENET_BATCHES, "--from-cache", TRT_TABLE, "-o", "{out}/s.json",
                     "--eval-batches", "2", "--max-keep", "1", "--executor", "serial", "--no-progress"], 0),
    "validate --dla": (["validate", TRT_TABLE, "--model", "{m}", "--dla", "--trt-version", "7.0.0"], 1),
}


def _result_of(case: str, out) -> object:
    if case.startswith("calibrate"):
        return (out / "c.cache").read_bytes()
    if case == "stability":
        return [(t["name"], t["base_amax"], t["min"], t["max"]) for t in json.loads((out / "s.json").read_text())[
            "tensors"]]
    if case == "sensitivity":
        return [(u["node"], u["rank"]) for u in json.loads((out / "s.json").read_text())["units"]]
    if case == "report":
        return [(t["name"], t["amax"]) for t in json.loads((out / "r" / "report.json").read_text())["tensors"]]
    return None


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BIG_RUNS))
def test_item22_a_model_over_2gb_with_external_data_runs_through_files(case, tmp_path, capsys, monkeypatch):
    model = onnx.load(str(LENET))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=1024)
    argv, status = BIG_RUNS[case]
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir(), big.mkdir()
    code, _, err = run(capsys, *[str(a).format(m=tmp_path / "m.onnx", out=small) for a in argv])
    assert code == status, err
    with _as_if_over_2gb(monkeypatch) as failed:
        code, out, err = run(capsys, *[str(a).format(m=tmp_path / "m.onnx", out=big) for a in argv])
    assert failed == [] and code == status, (failed, err)
    assert _result_of(case, big) == _result_of(case, small)


def test_item22_quantize_of_a_model_over_2gb_is_one_line_not_exit_70(tmp_path, capsys, monkeypatch):
    with _as_if_over_2gb(monkeypatch) as failed:
        code, _, err = run(capsys, "quantize", LENET, "--from-cache", TRT_TABLE, "-o", tmp_path / "q.onnx")
    assert failed == []
    assert code == 2 and "over protobuf's 2 GiB limit" in one_line(err) and not (tmp_path / "q.onnx").exists()


def test_item22_a_shipped_model_over_the_limit_travels_with_its_weights_apart(monkeypatch):
    import trt_calib.ort.model as model_module
    from trt_calib.ort.executor import ShippedModel

    model = onnx.load(str(LENET))
    whole = ShippedModel.of(model)
    monkeypatch.setattr(model_module, "PROTO_LIMIT", 100_000)
    apart = ShippedModel.of(model)
    assert whole.weights == () and len(apart.weights) >= 2 and len(apart.data) < 100_000
    assert apart.parse().SerializeToString() == model.SerializeToString()


# ---------------------------------------------------------------------------------------------- a wheel install (23)
@pytest.mark.slow
def test_item23_doctor_runs_its_cpu_checks_from_a_wheel_install(tmp_path):
    """Build the wheel from a copy of the sources, install it (no editable link, no checkout on sys.path) into a new
    virtual environment that borrows this one's dependencies, and run `doctor` there from another folder."""
    import subprocess
    import sys
    import sysconfig

    from conftest import REPO

    source = tmp_path / "src"
    source.mkdir()
    shutil.copytree(REPO / "trt_calib", source / "trt_calib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # built the way `pip install .` builds it (an isolated build with setuptools from the index CI installs from)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "wheel"),
                            str(source)], capture_output=True, timeout=600)
    assert built.returncode == 0, built.stderr.decode()[-3000:]
    wheel = next((tmp_path / "wheel").glob("trt_calib-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "trt_calib/bundled/lenet/lenet.onnx" in names and "trt_calib/bundled/caches/sampleINT8_TRT-7000.cache" \
        in names and "trt_calib/bundled/lenet/sampleint8_batches.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site,
                                str(wheel)], capture_output=True, timeout=600)
    assert installed.returncode == 0, installed.stderr.decode()[-3000:]
    # numpy, onnx, onnxruntime, ... from this environment: a .pth line adds the folder, not the editable link in it
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import trt_calib; print(trt_calib.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(site), where.stdout + where.stderr
    doctor = subprocess.run([str(python), "-m", "trt_calib", "doctor", "--json"], cwd=elsewhere, capture_output=True,
                            timeout=600)
    report = json.loads(doctor.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["lenet reproduction (cpu)"]["status"] == "pass", checks
    assert "8/8 shared tensors consistent" in checks["lenet reproduction (cpu)"]["detail"]
    assert checks["cache round trip (cpu)"]["status"] == "pass"
    assert doctor.returncode == 0


# ---------------------------------------------------------------------------------------------- the stand-in (25)
def _drive_lenet(monkeypatch, trt_version: str = "7.0.0"):
    """sampleINT8's batches through trt-calib's EntropyCalibrator2 into the stand-in "TensorRT", with the
    cross-check against trt-calib's CPU calibration; returns (the stand-in's cache, the calibrator)."""
    import trt_standin
    from trt_calib.core.cache import CalibrationCache
    from trt_calib.ort.data import open_source
    from trt_calib.ort.model import model_inputs
    from trt_calib.trt.calibrator import make_calibrator

    trt_standin.install(monkeypatch, "10.3.0")
    inputs = model_inputs(LENET)
    calib = make_calibrator(open_source(LENET_BATCHES, inputs), device="cuda-python", input_specs=inputs,
                            cross_check=LENET)
    result = trt_standin.drive(calib, {"data": ((50, 1, 28, 28), np.float32)}, model=LENET, trt_version=trt_version)
    return CalibrationCache.parse(result.cache_written), calib


def test_item25_the_standins_own_calibration_matches_tensorrts_published_table(monkeypatch):
    """The stand-in's reference (no trt-calib code) lands every entry of TensorRT 7's sampleINT8 table on the same
    KL index, as the spec's verified reconstruction does: it is an independent, correct second computation."""
    from trt_calib.core.cache import CalibrationCache

    standin, calib = _drive_lenet(monkeypatch)
    table = CalibrationCache.load(TRT_TABLE)
    assert standin.header == "TRT-7000-EntropyCalibration2"
    for name, amax in table.amaxes().items():
        ours = standin.amax(name)
        assert abs(ours - amax) <= 4 * np.spacing(np.float32(amax)) * 127 or name, (name, ours, amax)
    exact = [n for n in table.amaxes() if standin.scales[n] == table.scales[n]]
    assert {"data", "conv1", "pool1", "prob"} <= set(exact)  # the spec's acceptance: these four bit for bit
    assert calib.cross_check_result.consistent  # and trt-calib's CPU calibration agrees with it


def test_item25_an_algorithm_bug_in_trt_calib_fails_the_cross_check(monkeypatch):
    """trt-calib's KL search broken (its curve shifted by 7 candidates): the stand-in, which shares no code with it,
    no longer agrees. Before, the stand-in wrote trt-calib's own calibration and agreed by construction."""
    import trt_calib.core.thresholds as thresholds

    real = thresholds.kl_divergence_curve
    monkeypatch.setattr(thresholds, "kl_divergence_curve", lambda counts, **kw: np.roll(real(counts, **kw), 7))
    _, calib = _drive_lenet(monkeypatch)
    comparison = calib.cross_check_result
    assert not comparison.consistent and comparison.counts().get("differs", 0) >= 5


def test_item25_a_wrong_amax_after_a_right_search_is_not_same_bin(monkeypatch):
    """A bug after the search (amax one bin too high) used to pass as "same-bin": compare took our KL index on
    trust instead of locating our amax on our histogram."""
    import trt_calib.core.result as result
    import trt_calib.core.thresholds as thresholds

    real = thresholds.entropy_search

    def one_bin_high(hist):
        found = real(hist)
        return thresholds.EntropySearch(float(np.float32(found.amax + found.bin_width)), found.index,
                                        found.candidates, found.divergence, found.bin_width)

    monkeypatch.setattr(result, "entropy_search", one_bin_high)  # where calibrate's results take it from
    _, calib = _drive_lenet(monkeypatch)
    counts = calib.cross_check_result.counts()
    assert counts.get("same-bin", 0) == 0 and counts.get("differs", 0) >= 8


# ---------------------------------------------------------------------------------------------- tests that guard (26)
def test_item26_cluster_tests_cannot_be_skipped_and_raises_name_the_error_type():
    """The real-cluster tests import Dask plainly (a broken [test] extra fails them instead of skipping them), and no
    test accepts any Exception where the project raises its own type."""
    from conftest import REPO

    needles = ["importorskip(" + '"distributed")', "importorskip(" + '"dask")', "pytest.raises(" + "Exception,"]
    found = [f"{path.name}:{number}" for path in sorted((REPO / "tests").glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if any(n in line for n in needles)]
    assert found == []


def _branches_into_concats():
    """x -> Conv a (amax 7), Conv b (1), Conv c (3); Concat(b, c) -> bc; Concat(a, bc) -> cat (amax 9) -> Conv y.
    The widest input is the first of the outer Concat and the nested Concat's inputs must follow it too."""
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, cout, cin, k, seed):
        weights = np.random.default_rng(seed).normal(scale=0.3, size=(cout, cin, k, k)).astype(np.float32)
        return numpy_helper.from_array(weights, name)

    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["b", "c"], ["bc"], axis=1),
        helper.make_node("Concat", ["a", "bc"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wy"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [conv("wa", 2, 3, 3, 0), conv("wb", 2, 3, 3, 1), conv("wc", 2, 3, 3, 2),
                               conv("wy", 2, 6, 1, 3)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_item26_nested_concat_inputs_all_take_the_widest_scale_even_when_it_comes_first():
    """A second case of the Concat rule (test_qdq has the first): order, nesting and a larger output scale must not
    change which scale the inputs share."""
    from trt_calib.core.cache import amax_to_scale
    from trt_calib.qdq import quantize_model

    amax = {"x": 1.0, "a": 7.0, "b": 1.0, "c": 3.0, "bc": 2.0, "cat": 9.0}
    qdq, report = quantize_model(_branches_into_concats(), amax)
    onnx.checker.check_model(qdq, full_check=True)
    for name in ("a", "b", "c"):
        assert report.activations[name].scale == amax_to_scale(7.0), name
        assert "largest: 'a'" in report.activations[name].origin
    producers = {o: n for n in qdq.graph.node for o in n.output}
    for concat in (n for n in qdq.graph.node if n.op_type == "Concat"):
        for name in concat.input:
            source = producers[name]
            if source.op_type == "DequantizeLinear":
                scale = next(t for t in qdq.graph.initializer if t.name == source.input[1])
                assert onnx.numpy_helper.to_array(scale).item() == np.float32(amax_to_scale(7.0))


def _two_concats():
    """a = x * 1.5, b = x * 0.5, c = x * 5; cat1 = Concat(a, b) and, later in the graph, cat2 = Concat(c, a): a feeds
    both Concats."""
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("k1", 1.5), ("k2", 0.5), ("k5", 5.0))]
    nodes = [
        helper.make_node("Mul", ["x", "k1"], ["a"]),
        helper.make_node("Mul", ["x", "k2"], ["b"]),
        helper.make_node("Mul", ["x", "k5"], ["c"]),
        helper.make_node("Concat", ["a", "b"], ["cat1"], axis=1),
        helper.make_node("Concat", ["c", "a"], ["cat2"], axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("cat1", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("cat2", TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("version, tied", [("7.0.0", True), ("8.0.3", True), ("8.2.1", False), ("10.3.0", False)])
def test_item26_concat_ties_up_to_tensorrt_8_0_through_calibrate(version, tied):
    """A second case of the TensorRT <= 8.0 rule (test_collect has the first, on tie_scales): end to end through
    calibrate's cache, the boundary on both sides, and a tensor feeding two Concats ending with the later one."""
    from trt_calib.ort.collect import calibrate

    rng = np.random.default_rng(3)
    batches = [{"x": rng.normal(size=(16, 4)).astype(np.float32)} for _ in range(4)]
    result = calibrate(_two_concats(), batches, trt_version=version)
    own = calibrate(_two_concats(), batches, trt_version="10.3.0").cache.amaxes()
    got = result.cache.amaxes()
    # untied, each input differs from the Concat it would take its scale from, so a tie shows
    assert own["b"] != own["cat1"] and own["c"] != own["cat2"] and own["a"] not in (own["cat1"], own["cat2"])
    if tied:
        assert got["b"] == own["cat1"] and got["c"] == own["cat2"]
        assert got["a"] == own["cat2"]  # both Concats tie a: the later one wins
        assert got["cat1"] == own["cat1"] and got["cat2"] == own["cat2"] and got["x"] == own["x"]
    else:
        assert got == own


def test_item1_the_guard_itself_expands_a_models_external_data_and_a_scripts_function(lenet_dir):
    """The safety net under every command: given a bare .onnx path or S.py:fn, guard_paths finds what they read."""
    from trt_calib.cli._common import guard_paths
    from trt_calib.errors import UsageError

    with pytest.raises(UsageError, match="-o .*m.onnx.data is the input MODEL"):
        guard_paths(inputs={"MODEL": str(lenet_dir / "m.onnx")}, outputs={"-o": lenet_dir / "m.onnx.data"})
    with pytest.raises(UsageError, match="-o .*d.py is the input --data"):
        guard_paths(inputs={"--data": f"{lenet_dir / 'd.py'}:load_data"}, outputs={"-o": lenet_dir / "d.py"})
    guard_paths(inputs={"MODEL": str(lenet_dir / "m.onnx")}, outputs={"-o": lenet_dir / "other.json"})
