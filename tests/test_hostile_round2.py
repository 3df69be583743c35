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

import numpy as np
import onnx
import pytest

from trt_calib.cli import main

from conftest import LENET, LENET_BATCHES, LENET_IMAGES, TRT_TABLE


def run(capsys, *argv) -> tuple[int, str, str]:
    """`trt-calib ARGV` in process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single error line a failing command prints (and check that there is exactly one)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


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
