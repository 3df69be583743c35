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

from conftest import TRT_TABLE


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
    code = (
        "import sys\n"
        "from trt_calib.cli import main\n"
        "sys.exit(main(['inspect', sys.argv[1]]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(TRT_TABLE)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # the reader goes away after one byte, like `| head -c1`
    proc.wait(timeout=60)
    assert proc.returncode == 1, proc.stderr.read().decode()
