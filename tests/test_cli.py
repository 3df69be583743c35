"""The command line: inspect on real caches, one-line errors and exit codes, `python -m trt_calib`."""

from __future__ import annotations

import json
import subprocess
import sys

from trt_calib.cli import main


def test_inspect_prints_the_table(corpus_caches, capsys):
    path = next(p for p in corpus_caches if p.name.startswith("NVIDIA"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "TRT-7000-EntropyCalibration2" in out and "7.0.0" in out
    assert "data" in out and "3c008912" in out and "0.996337891" in out


def test_inspect_json_flags_special_values(corpus_caches, capsys):
    path = next(p for p in corpus_caches if p.name.startswith("T-K-233"))
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trt_version"] == "8.6.1"
    assert report["flag_counts"] == {"zero": 80, "inf": 7}
    inf_entry = next(e for e in report["entries"] if e["hex"] == "7f800000")
    assert inf_entry["amax"] == "inf" and inf_entry["flags"] == ["inf"]


def test_inspect_flags_duplicates(tmp_path, capsys):
    path = tmp_path / "dup.cache"
    path.write_text("TRT-8601-EntropyCalibration2\na: 3c010a14\na: 0\n")
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["duplicates"] == ["a"]
    assert report["entries"][1]["flags"] == ["zero", "duplicate"]


def test_malformed_cache_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.cache"
    path.write_text("TRT-8601-EntropyCalibration2\nno separator here\n")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{path}:2:" in err and "Traceback" not in err


def test_python_dash_m_runs_the_same_cli(corpus_caches):
    path = next(p for p in corpus_caches if p.name.startswith("nt4sth"))
    run = subprocess.run([sys.executable, "-m", "trt_calib", "inspect", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "MinMaxCalibration" in run.stdout and "input_0" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "trt_calib", "inspect", "/no/such.cache"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such calibration cache" in bad.stderr
