"""The CLI contract shared by every command: argument types, the output guard, JSON errors and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from trt_calib.cli import main
from trt_calib.cli._common import (
    finite_float,
    guard_paths,
    int_in,
    non_negative_int,
    positive_int,
    trt_version_arg,
    write_output,
)
from trt_calib.errors import UsageError

from conftest import LENET, LENET_BATCHES, TRT_TABLE


@pytest.mark.parametrize(
    "parse, text, ok",
    [
        (positive_int, "3", 3),
        (positive_int, "0", None),
        (positive_int, "x", None),
        (non_negative_int, "0", 0),
        (non_negative_int, "-1", None),
        (int_in(1, 64), "64", 64),
        (int_in(1, 64), "100000", None),
        (finite_float(0, 100, lo_open=True), "99.99", 99.99),
        (finite_float(0, 100, lo_open=True), "0", None),
        (finite_float(0, 100, lo_open=True), "101", None),
        (finite_float(0, 100, lo_open=True), "nan", None),
        (finite_float(0, lo_open=True), "inf", None),
        (trt_version_arg, "8.6.1", "8.6.1"),
        (trt_version_arg, "abc", None),
        (trt_version_arg, "", None),
        (trt_version_arg, "7.0.0rc1", None),
    ],
)
def test_argument_types_accept_good_values_and_refuse_bad_ones(parse, text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    else:
        assert parse(text) == ok


def test_guard_refuses_an_output_that_is_an_input_through_a_symlink(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    link = tmp_path / "link.cache"
    link.symlink_to(model)
    with pytest.raises(UsageError, match="--cache .* is the input MODEL"):
        guard_paths(inputs={"MODEL": model}, outputs={"--cache": link})
    assert model.read_bytes() == b"x"


def test_guard_refuses_two_outputs_on_one_path_and_bad_folders(tmp_path):
    out = tmp_path / "a.cache"
    with pytest.raises(UsageError, match="--cache and --json are the same file"):
        guard_paths(inputs={}, outputs={"--cache": out, "--json": tmp_path / "." / "a.cache"})
    with pytest.raises(UsageError, match="does not exist"):
        guard_paths(inputs={}, outputs={"--cache": tmp_path / "missing" / "a.cache"})
    with pytest.raises(UsageError, match="is a directory"):
        guard_paths(inputs={}, outputs={"--cache": tmp_path})
    with pytest.raises(UsageError, match="empty path"):
        guard_paths(inputs={}, outputs={"--cache": ""})
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UsageError, match="not writable"):
            guard_paths(inputs={}, outputs={"--cache": ro / "a.cache"})
    guard_paths(inputs={"MODEL": tmp_path / "m.onnx"}, outputs={"--cache": out, "--json": None})


def test_guard_refuses_an_output_folder_that_is_an_input_or_a_file(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    data = tmp_path / "images"
    data.mkdir()
    with pytest.raises(UsageError, match="is the input --data"):
        guard_paths(inputs={"--data": data}, outputs={}, folders={"-o": data})
    with pytest.raises(UsageError, match="is a file"):
        guard_paths(inputs={}, outputs={}, folders={"-o": model})
    # a folder that merely holds an input is fine: a report never deletes what it did not write
    guard_paths(inputs={"MODEL": model}, outputs={}, folders={"-o": tmp_path})


def test_write_output_failure_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(UsageError, match=r"cannot write the cache .*nope/a\.cache"):
        write_output(tmp_path / "nope" / "a.cache", "x", what="the cache")


def test_bad_argument_is_one_line_exit_2_and_json_on_stdout(capsys):
    assert main(["inspect", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": "the following arguments are required: cache", "exit": 2}
    assert err.count("\n") == 1 and err.startswith("trt-calib inspect: error:")


def test_quiet_and_debug_work_after_the_command(capsys):
    assert main(["inspect", str(TRT_TABLE), "-q", "--debug"]) == 0
    assert "TRT-7000-EntropyCalibration2" in capsys.readouterr().out


def test_an_unexpected_exception_is_exit_70_with_one_line(monkeypatch, capsys):
    import trt_calib.tools.entries as entries

    def boom(path):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(entries, "inspect_cache", boom)
    assert main(["inspect", str(TRT_TABLE), "--json"]) == 70
    out, err = capsys.readouterr()
    assert json.loads(out)["exit"] == 70
    assert err.count("\n") == 1 and "run with --debug for the traceback" in err
    with pytest.raises(ZeroDivisionError):
        main(["inspect", str(TRT_TABLE), "--debug"])


def test_a_broken_pipe_is_not_exit_0(tmp_path):
    # 20,000 entries print about 1.5 MB, far more than a pipe buffers, so the writer is still writing when the
    # reader goes away (a small table could be written in full before that, and exit 0 honestly).
    big = tmp_path / "big.cache"
    big.write_text("TRT-8601-EntropyCalibration2\n" + "".join(f"tensor_{i}: 3c010a14\n" for i in range(20_000)))
    code = (
        "import sys\n"
        "from trt_calib.cli import main\n"
        "sys.exit(main(['inspect', sys.argv[1]]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(big)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # the reader goes away after one byte, like `| head -c1`
    proc.wait(timeout=60)
    assert proc.returncode == 1, proc.stderr.read().decode()


# ---------------------------------------------------------------------------------------------- every command
# The README's contract, checked command by command: a bad argument is one line on stderr and exit 2 (with --json
# also {"error", "exit": 2} as the only thing on stdout); a good run with --json prints exactly one JSON object.
COMMANDS = (
    "calibrate", "inspect", "validate", "diff", "check", "convert", "build", "quantize", "qdq-to-cache", "evaluate",
    "sensitivity", "report", "stability", "doctor", "round-weights", "tune",
)

BAD_ARGUMENTS = {
    "calibrate": ["calibrate", LENET, "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache", "--percentile", "nan"],
    "inspect": ["inspect"],
    "validate": ["validate", TRT_TABLE, "--trt-version", "7.0.0rc1"],
    "diff": ["diff", TRT_TABLE, TRT_TABLE, "--top", "-1"],
    "check": ["check", TRT_TABLE, "--model", LENET, "--data", LENET_BATCHES, "--max-ulps", "x"],
    "convert": ["convert", TRT_TABLE, "--to", "xml"],
    "build": ["build", LENET, "--data", LENET_BATCHES, "--dry-run", "--workspace", "inf"],
    "quantize": ["quantize", LENET, "--from-cache", TRT_TABLE, "-o", "{tmp}/q.onnx", "--bias-correction-batches", "0"],
    "evaluate": ["evaluate", LENET, LENET, "--data", LENET_BATCHES, "--worst", "-1"],
    "report": ["report", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/r", "--max-tensors", "-1"],
    "qdq-to-cache": ["qdq-to-cache", LENET, "--onnx", "{tmp}/p.onnx", "--cache", "{tmp}/p.cache", "--samples", "0"],
    "doctor": ["doctor", "--device", "opencl"],
    "sensitivity": ["sensitivity", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/s.json", "--max-keep", "-1"],
    "stability": ["stability", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/s.json", "--fractions", "0,1"],
    "round-weights": ["round-weights", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/r.onnx", "--max-positions", "0"],
    "tune": ["tune", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/t", "--max-keep", "-1"],
}


def _argv(parts, tmp_path):
    return [str(p).format(tmp=tmp_path) for p in parts]


def test_every_command_is_covered_by_the_contract_tests():
    from trt_calib.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) == set(sub.choices) and set(BAD_ARGUMENTS) == set(COMMANDS)  # a new command joins


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_checks_its_arguments_at_parse_time(command):
    """No option is parsed with a bare int or float (which accept -1, nan, inf): every one has a checked type, and
    every command has --json."""
    from trt_calib.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    loose = [a.option_strings for a in parser._actions if a.type in (int, float)]
    assert loose == []
    assert any("--json" in a.option_strings for a in parser._actions)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("as_json", [False, True])
def test_every_command_a_bad_argument_is_one_line_exit_2_and_json_on_stdout(command, as_json, tmp_path, capsys):
    argv = _argv(BAD_ARGUMENTS[command], tmp_path) + (["--json"] if as_json else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"trt-calib {command}: error: ") and "Traceback" not in err
    if as_json:
        assert json.loads(out) == {"error": err.split(": error: ", 1)[1].strip(), "exit": 2}
    else:
        assert out == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Files the good runs below need: a Q/DQ LeNet, saved histograms, a JSON of amax values."""
    folder = tmp_path_factory.mktemp("made")
    assert main(["-q", "quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(folder / "q.onnx")]) == 0
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(folder / "l.cache"),
                 "--save-histograms", str(folder / "h.npz"), "--no-progress"]) == 0
    return folder


GOOD_RUNS = {
    "calibrate": (["calibrate", LENET, "--data", LENET_BATCHES, "--cache", "{tmp}/c.cache", "--no-progress"], 0),
    "inspect": (["inspect", TRT_TABLE], 0),
    "validate": (["validate", TRT_TABLE, "--model", LENET, "--trt-version", "7.0.0"], 1),
    "diff": (["diff", TRT_TABLE, "{made}/l.cache"], 1),
    "check": (["check", TRT_TABLE, "--model", LENET, "--data", LENET_BATCHES, "--no-progress"], 0),
    "convert": (["convert", TRT_TABLE, "--to", "json", "-o", "{tmp}/t.json"], 0),
    "build": (["build", LENET, "--data", LENET_BATCHES, "--dry-run"], 0),
    "quantize": (["quantize", LENET, "--from-cache", TRT_TABLE, "-o", "{tmp}/q.onnx"], 0),
    "evaluate": (["evaluate", LENET, "{made}/q.onnx", "--data", LENET_BATCHES, "--worst", "2", "--no-progress"], 0),
    "report": (["report", LENET, "--histograms", "{made}/h.npz", "-o", "{tmp}/r", "--max-tensors", "1",
                "--no-progress"], 0),
    "qdq-to-cache": (["qdq-to-cache", "{made}/q.onnx", "--onnx", "{tmp}/p.onnx", "--cache", "{tmp}/p.cache"], 0),
    "doctor": (["doctor"], 0),
    "sensitivity": (["sensitivity", LENET, "--data", LENET_BATCHES, "--from-cache", TRT_TABLE, "-o", "{tmp}/s.json",
                     "--eval-batches", "1", "--max-keep", "1", "--executor", "serial", "--no-progress"], 0),
    "stability": (["stability", LENET, "--data", LENET_BATCHES, "-o", "{tmp}/s.json", "--orders", "1",
                   "--batch-sizes", "50", "--fractions", "1", "--no-end-to-end", "--executor", "serial",
                   "--no-progress"], 1),  # LeNet's ip2 moves 8% with the batch order: a finding
    "round-weights": (["round-weights", LENET, "--data", LENET_BATCHES, "--max-batches", "2", "-o", "{tmp}/r.onnx",
                       "--no-progress"], 0),
    "tune": (["tune", LENET, "--data", LENET_BATCHES, "--max-batches", "2", "--no-rounding", "--max-keep", "0",
              "-o", "{tmp}/t", "--no-progress"], 0),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_json_prints_exactly_one_object_on_stdout(command, made, tmp_path, capsys):
    parts, status = GOOD_RUNS[command]
    argv = [str(p).format(tmp=tmp_path, made=made) for p in parts] + ["--json"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == status, err
    result = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(result, dict) and "error" not in result


# Every command that writes, with one output aimed at one of its inputs: refused before any work, input unchanged.
GUARDED = {
    "calibrate": (["calibrate", "{m}", "--data", "{d}", "--cache", "{d}"], "{d}"),
    "calibrate-compare": (["calibrate", "{m}", "--data", "{d}", "--cache", "{r}", "--compare", "{r}"], "{r}"),
    "convert": (["convert", "{r}", "--to", "cache", "--rewrite-header", "--trt-version", "8.6.1", "-o", "{r}"], "{r}"),
    "build": (["build", "{m}", "--data", "{d}", "--engine", "{m}"], "{m}"),
    "build-cache": (["build", "{m}", "--data", "{d}", "--engine", "{tmp}/e.plan", "--cache", "{d}"], "{d}"),
    "quantize": (["quantize", "{m}", "--from-cache", "{r}", "-o", "{r}"], "{r}"),
    "quantize-report": (["quantize", "{m}", "--data", "{d}", "-o", "{tmp}/q.onnx", "--report", "{d}"], "{d}"),
    "evaluate": (["evaluate", "{m}", "{m}", "--data", "{d}", "--json", "{d}"], "{d}"),
    "evaluate-labels": (["evaluate", "{m}", "{m}", "--data", "{d}", "--labels", "{tmp}/l.npy", "--json",
                         "{tmp}/l.npy"], "{tmp}/l.npy"),
    "report": (["report", "{m}", "--data", "{d}", "-o", "{tmp}/r", "--save-histograms", "{m}"], "{m}"),
    "report-folder": (["report", "{m}", "--data", "{tmp}/images", "-o", "{tmp}/images"], "{tmp}/images"),
    "qdq-to-cache": (["qdq-to-cache", "{m}", "--onnx", "{m}", "--cache", "{tmp}/p.cache"], "{m}"),
    "stability": (["stability", "{m}", "--data", "{d}", "-o", "{d}"], "{d}"),
    "sensitivity": (["sensitivity", "{m}", "--data", "{d}", "-o", "{m}"], "{m}"),
    "qdq-to-cache-cache": (["qdq-to-cache", "{m}", "--onnx", "{tmp}/p.onnx", "--cache", "{m}"], "{m}"),
    "round-weights": (["round-weights", "{m}", "--data", "{d}", "-o", "{m}"], "{m}"),
    "round-weights-report": (["round-weights", "{m}", "--data", "{d}", "-o", "{tmp}/r.onnx", "--report", "{d}"], "{d}"),
}


@pytest.mark.parametrize("case", sorted(GUARDED))
def test_every_writing_command_refuses_an_output_that_is_an_input(case, tmp_path, capsys):
    import shutil

    m, d, r = tmp_path / "m.onnx", tmp_path / "d.py", tmp_path / "r.cache"
    shutil.copy(LENET, m)
    d.write_text("raise RuntimeError('the data must not be read')\n")
    shutil.copy(TRT_TABLE, r)
    (tmp_path / "l.npy").write_bytes(b"labels")
    (tmp_path / "images").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    parts, target = GUARDED[case]
    argv = [str(p).format(m=m, d=d, r=r, tmp=tmp_path) for p in parts]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err
    assert str(target).format(m=m, d=d, r=r, tmp=tmp_path) in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["images"]


def test_validate_exits_3_for_error_findings_and_1_for_warnings(capsys):
    from conftest import CACHES, MODELS

    assert main(["validate", str(TRT_TABLE), "--model", str(LENET), "--trt-version", "8.6.1"]) == 3
    assert "errors: 1 error(s)" in capsys.readouterr().out
    assert main(["validate", str(TRT_TABLE), "--model", str(LENET), "--trt-version", "7.0.0"]) == 1
    capsys.readouterr()
    assert main(["validate", str(CACHES / "lannyyip__share__calibration.cache"), "--model",
                 str(MODELS / "lannyyip__share__my_model.onnx"), "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["exit_code"] == 3 and report["verdict"] == "errors"


def test_a_write_that_fails_after_the_guard_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import trt_calib.cli._common as common

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common, "atomic_write", full)
    out = tmp_path / "c.cache"
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write the cache {out}: No space left on device" in err
