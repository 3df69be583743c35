"""Cache tools: validate, diff, check and convert, on the real corpus caches and models and on small built graphs."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trt_calib.core.cache import CalibrationCache, amax_to_scale, scale_to_hex
from trt_calib.tools import (
    cache_from_json,
    cache_to_json,
    check_cache,
    diff_caches,
    entry_kind,
    header_algorithm,
    rewrite_header,
    validate_cache,
)
from trt_calib.cli.cache import register
from trt_calib.errors import CalibrationError, TrtCalibError
from trt_calib.core.histogram import AbsHistogram, save_histograms
from trt_calib.tools.provenance import make_provenance, write_provenance

from conftest import CACHES, LENET, LENET_BATCHES, LENET_IMAGES, MODELS, TRT_TABLE, real_caches

LANNYYIP_MODEL = MODELS / "lannyyip__share__my_model.onnx"
LANNYYIP_CACHE = CACHES / "lannyyip__share__calibration.cache"
ZXM97_MODEL = MODELS / (
    "zxm97__Pytorch_Retina_License_Plate_trt__mobilenet0.25_epoch_100_ccpd_blue+green+yellow+white_20231108_reduced.onnx"
)
ZXM97_CACHE = CACHES / "zxm97__Pytorch_Retina_License_Plate_trt__calibration.cache"



def run(argv: list[str]) -> int:
    """The cache commands as `trt-calib` runs them: parse, call the handler, one-line user errors with exit 2."""
    parser = argparse.ArgumentParser(prog="trt-calib")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    args.quiet = True
    try:
        return args.handler(args)
    except TrtCalibError as exc:
        print(f"trt-calib {args.command}: error: {exc}", file=__import__("sys").stderr)
        return exc.exit_code


def codes(report, severity: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in report.findings:
        if severity is None or f["severity"] == severity:
            out[f["code"]] = out.get(f["code"], 0) + 1
    return out


def tensors(report, code: str) -> list[str]:
    return [f["tensor"] for f in report.findings if f["code"] == code]


def corpus(prefix: str) -> Path:
    return next(p for p in real_caches() if p.name.startswith(prefix))


def small_model(path: Path) -> Path:
    """x -> Conv -> Relu -> MaxPool -> (Mul by a constant, Concat); k*k is a float tensor made of constants only."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -2.0])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Mul", ["k", "k"], ["kk"]),
        helper.make_node("Add", ["pool", "kk"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["act"]),
        helper.make_node("Concat", ["pool", "act"], ["cat"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("cat", TensorProto.FLOAT, None)], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_cache(path: Path, header: str, amax: dict[str, float | str]) -> Path:
    """A cache with the given amax per tensor; a str value is written as the raw hex."""
    lines = [header] + [f"{n}: {v if isinstance(v, str) else scale_to_hex(amax_to_scale(v))}" for n, v in amax.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = {"x": 1.0, "conv": 2.0, "relu": 2.0, "pool": 2.0, "kk": 0.5, "shifted": 2.5, "act": 2.5, "cat": 2.5}


# ---------------------------------------------------------------------------------------------- validate
def test_validate_a_consistent_cache_is_clean_with_exit_0(tmp_path, capsys):
    model = small_model(tmp_path / "m.onnx")
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", GOOD)
    report = validate_cache(cache, model, trt_version="8.6.1", algorithm="entropy2")
    assert report.findings == [] and report.exit_code == 0
    assert report.coverage["model_tensors"] == 8 and report.coverage["covered"] == 8
    assert run(["validate", str(cache), "--model", str(model), "--trt-version", "8.6.1", "--algorithm", "entropy2"]) == 0
    assert "clean: 0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_validate_header_mismatch_with_the_target_is_an_error(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-MinMaxCalibration", GOOD)
    report = validate_cache(cache, model, trt_version="10.3.0", algorithm="entropy2")
    assert codes(report, "error") == {"header-version-mismatch": 1, "header-algorithm-mismatch": 1}
    assert report.exit_code == 3
    message = next(f["message"] for f in report.findings if f["code"] == "header-version-mismatch")
    assert "TensorRT will ignore this cache and recalibrate" in message and "8.6.1" in message and "10.3.0" in message
    # header names are accepted too, and match regardless of case
    assert validate_cache(cache, model, trt_version="8.6.1", algorithm="minmaxcalibration").exit_code == 0


def test_validate_without_target_only_notes_the_header(tmp_path):
    cache = write_cache(tmp_path / "c.cache", "TRT-8400-MinMaxCalibration", {"a": 1.0})
    report = validate_cache(cache)
    assert codes(report) == {"header-version": 1, "header-algorithm": 1, "no-model": 1}
    assert report.exit_code == 0


def test_validate_tensorrt_4_header(capsys):
    legacy = corpus("modricwang")
    report = validate_cache(legacy)
    assert codes(report, "warning") == {"legacy-header": 1} and report.exit_code == 1
    report = validate_cache(legacy, trt_version="8.6.1")
    assert codes(report, "error") == {"header-version-mismatch": 1}
    assert "TensorRT 4" in report.findings[0]["message"]


def test_validate_flags_suspicious_values_by_severity(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    values: dict[str, float | str] = dict(GOOD)
    values.update(conv=0.0, kk=0.0, relu="7fc00000", pool="1", shifted="bf800000", act="7f800000")
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", values)
    report = validate_cache(cache, model)
    by_tensor = {(f["code"], f["severity"], f.get("tensor")) for f in report.findings}
    assert ("zero-scale", "warning", "conv") in by_tensor  # an activation: not constant zero
    assert ("zero-scale", "info", "kk") in by_tensor  # computed from a Constant only
    assert ("nan-scale", "error", "relu") in by_tensor
    assert ("denormal-scale", "warning", "pool") in by_tensor
    assert ("negative-scale", "error", "shifted") in by_tensor
    assert ("inf-scale", "warning", "act") in by_tensor
    assert report.exit_code == 3


def test_validate_zero_network_input_points_at_the_data(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", {**GOOD, "x": 0.0})
    report = validate_cache(cache, model)
    (finding,) = [f for f in report.findings if f["severity"] != "info"]
    assert finding["tensor"] == "x" and finding["severity"] == "warning" and "calibration data" in finding["message"]


def test_validate_flags_an_amax_far_from_both_neighbours(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    # relu 500x its producer's input (conv) and its consumer's output (pool): flagged. 50x would not be.
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", {**GOOD, "relu": 1000.0, "pool": 1000.0})
    assert tensors(validate_cache(cache, model), "amax-outlier") == []  # pool agrees with relu: a real range
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", {**GOOD, "relu": 1000.0})
    report = validate_cache(cache, model)
    assert tensors(report, "amax-outlier") == ["relu"]
    cache = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", {**GOOD, "relu": 100.0})
    assert tensors(validate_cache(cache, model), "amax-outlier") == []


def test_validate_untied_pool_is_a_warning_except_where_a_concat_tie_explains_it(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    values = {**GOOD, "pool": 3.0}
    report = validate_cache(write_cache(tmp_path / "a.cache", "TRT-8601-EntropyCalibration2", values), model)
    (finding,) = [f for f in report.findings if f["code"] == "pool-untied"]
    assert finding["severity"] == "warning" and finding["tensor"] == "pool"
    # TensorRT 8.0: pool feeds the Concat, whose tie overwrote it after the pool took relu's scale
    report = validate_cache(write_cache(tmp_path / "b.cache", "TRT-8001-EntropyCalibration2", values), model)
    (finding,) = [f for f in report.findings if f["code"] == "pool-untied"]
    assert finding["severity"] == "info" and "TensorRT <= 8.0" in finding["message"]


def test_validate_duplicates_and_names_the_model_lacks(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    text = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", GOOD).read_text()
    text += ("conv: 3c010a14\nw: 3c010a14\nstale_tensor: 3c010a14\n(Unnamed Layer* 7) [Constant]_output: 3c010a14\n"
             "ONNXTRT_Broadcast_3_output: 3c010a14\nw_output: 3c010a14\n")
    (tmp_path / "c.cache").write_text(text)
    report = validate_cache(tmp_path / "c.cache", model)
    assert tensors(report, "duplicate") == ["conv"]
    assert tensors(report, "not-in-model") == ["stale_tensor"]
    assert tensors(report, "uncalibrated-entry") == ["w"]  # the Conv weight: TensorRT gives it no entry
    assert report.coverage["unnamed"] == 1 and report.coverage["internal"] == 2
    assert codes(report, "warning") == {"duplicate": 1, "not-in-model": 1, "uncalibrated-entry": 1}


def test_entry_kind():
    assert entry_kind("(Unnamed Layer* 34) [Fully Connected]_output") == "unnamed"
    assert entry_kind("(Unnamed Layer* 2) [TopK]_output_1") == "unnamed"
    assert entry_kind("ONNXTRT_flattenTensor_43_output") == "internal"
    assert entry_kind("onnx::MatMul_12_output", ["onnx::MatMul_12"]) == "internal"
    assert entry_kind("onnx::MatMul_12_output") == "named"
    assert entry_kind("ssd_300_vgg/Relu:0") == "named"


def test_validate_unparsable_cache_is_an_error_finding_with_json(tmp_path, capsys):
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-8601-EntropyCalibration2\nconv 3c010a14\n")
    report = validate_cache(bad)
    assert codes(report) == {"unparsable": 1} and report.exit_code == 3
    assert f"{bad}:2:" in report.findings[0]["message"]
    assert run(["validate", str(bad), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["findings"][0]["code"] == "unparsable"
    assert run(["validate", str(tmp_path / "missing.cache")]) == 2  # a user error: one line on stderr
    assert capsys.readouterr().err.strip().endswith("no such calibration cache")


def test_validate_rejects_percentile_as_a_header_algorithm():
    with pytest.raises(TrtCalibError, match="not a TensorRT calibrator"):
        header_algorithm("percentile")
    with pytest.raises(TrtCalibError, match="entropy2"):
        header_algorithm("kl")
    assert header_algorithm("minmax") == "MinMaxCalibration"


def test_validate_flags_a_model_that_changed_since_calibration(tmp_path):
    model = tmp_path / "lenet.onnx"
    shutil.copy(LENET, model)
    cache = tmp_path / "lenet.cache"
    shutil.copy(TRT_TABLE, cache)
    write_provenance(cache, make_provenance(model_path=model, inputs=[], data_manifest=None, algorithm="entropy2",
                                            header="TRT-7000-EntropyCalibration2", trt_version="7.0.0"))
    assert codes(validate_cache(cache, model), "info")["provenance"] == 1
    changed = onnx.load(str(model))
    changed.doc_string = "retrained"
    onnx.save(changed, str(model))
    report = validate_cache(cache, model)
    (finding,) = [f for f in report.findings if f["code"] == "model-changed"]
    assert finding["severity"] == "warning" and "recalibrate" in finding["message"]
    assert finding["recorded_sha256"] != finding["model_sha256"]
    cache.write_text(cache.read_text().replace("TRT-7000", "TRT-7103"))
    assert "provenance-header" in codes(validate_cache(cache, model), "warning")


def test_validate_with_data_flags_changed_batching_against_the_sidecar(tmp_path, capsys):
    from trt_calib.ort.model import model_inputs
    from trt_calib.ort.data import open_source

    images = np.load(LENET_IMAGES)[:100]
    np.save(tmp_path / "x.npy", images.astype(np.float32).reshape(100, 1, 28, 28) / np.float32(255.0))
    inputs = model_inputs(LENET)
    cache = tmp_path / "lenet.cache"
    shutil.copy(TRT_TABLE, cache)
    recorded = open_source(tmp_path / "x.npy", inputs, batch_size=50).manifest()
    write_provenance(cache, make_provenance(model_path=LENET, inputs=[], data_manifest=recorded, algorithm="entropy2",
                                            header="TRT-7000-EntropyCalibration2", trt_version="7.0.0"))
    same = validate_cache(cache, LENET, data_manifest=open_source(tmp_path / "x.npy", inputs, batch_size=50).manifest())
    assert "data-changed" not in codes(same) and codes(same, "info")["provenance-data"] == 1
    other = open_source(tmp_path / "x.npy", inputs, batch_size=25).manifest()
    (finding,) = [f for f in validate_cache(cache, LENET, data_manifest=other).findings if f["code"] == "data-changed"]
    assert finding["severity"] == "warning"
    assert "batch size 50 -> 25" in finding["changes"] and "batches 2 -> 4" in finding["changes"]
    argv = ["validate", str(cache), "--model", str(LENET), "--data", str(tmp_path / "x.npy"), "--batch-size", "25"]
    assert run(argv + ["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "warnings" and "data-changed" in [f["code"] for f in out["findings"]]
    assert run(["validate", str(cache), "--data", str(tmp_path / "x.npy")]) == 2
    assert "--data needs --model" in capsys.readouterr().err


def test_validate_lannyyip_reports_the_renumbered_export(capsys):
    report = validate_cache(LANNYYIP_CACHE, LANNYYIP_MODEL, trt_version="8.0.1", algorithm="entropy2")
    assert report.coverage == {
        "model_tensors": 76, "covered": 37, "missing": 39, "cache_entries": 108, "not_in_model": 17,
        "uncalibrated_in_model": 22, "unnamed": 32, "internal": 0, "duplicates": 0,
        "body_tensors": 0, "body_covered": 0,
    }
    assert codes(report, "error") == {"most-tensors-missing": 1} and report.exit_code == 3
    missing = tensors(report, "missing-entry")
    assert missing[0] == "93" and all(int(n) >= 93 for n in missing) and len(missing) == 39
    (shift,) = [f for f in report.findings if f["code"] == "renumbered"]
    assert shift["offset"] == 8 and shift["matches"] == 39 and "93 -> 101" in shift["message"]
    # "102" is a Conv output in the cache's model but an InstanceNormalization Constant here
    assert "102" in tensors(report, "uncalibrated-entry")
    assert run(["validate", str(LANNYYIP_CACHE), "--model", str(LANNYYIP_MODEL), "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "errors" and out["findings"][0]["severity"] == "error"


def test_validate_zxm97_reduced_model_finds_the_missing_fpn_level():
    report = validate_cache(ZXM97_CACHE, ZXM97_MODEL)
    assert report.exit_code == 1 and codes(report, "error") == {}
    assert report.coverage["model_tensors"] == 102 and report.coverage["covered"] == 100
    # the reduced model's two-level head Concats; the full model's Concats had other names
    assert tensors(report, "missing-entry") == ["440", "459"]
    extra = tensors(report, "not-in-model")
    assert len(extra) == 26
    assert all(any(k in n for k in ("output1", "Resize_1", "Add_1", "merge1", "ssh1", "Head.2")) for n in extra
               if not n.isdigit())
    assert sorted(n for n in extra if n.isdigit()) == ["532", "561"]


def test_validate_real_special_values_without_a_model():
    report = validate_cache(corpus("T-K-233"))
    assert len(tensors(report, "inf-scale")) == 7
    zeros = [f for f in report.findings if f["code"] == "zero-scale"]
    assert len(zeros) == 80
    assert sum(f["severity"] == "info" for f in zeros) == sum("[Constant]" in f["tensor"] for f in zeros) == 32
    assert {"sample", "timestep"} <= {f["tensor"] for f in zeros if f["severity"] == "warning"}


def test_validate_finds_no_value_problem_in_the_clean_real_caches():
    for path in real_caches():
        report = validate_cache(path)
        value_codes = {"nan-scale", "negative-scale", "denormal-scale", "duplicate", "unparsable"}
        assert not value_codes & set(codes(report)), (path.name, codes(report))


# ---------------------------------------------------------------------------------------------- diff
def test_diff_orders_by_log_ratio_and_estimates_bins(tmp_path, capsys):
    a = write_cache(tmp_path / "a.cache", "TRT-8601-EntropyCalibration2", {"x": 1.0, "y": 2.0, "z": 4.0, "gone": 1.0})
    b = write_cache(tmp_path / "b.cache", "TRT-100300-MinMaxCalibration", {"x": 1.0, "y": 1.0, "z": 16.0, "new": 1.0})
    diff = diff_caches(a, b)
    assert [r.name for r in diff.rows] == ["z", "y", "x"]
    z, y, x = diff.rows
    assert z.ratio == pytest.approx(4.0) and y.ratio == pytest.approx(0.5) and x.status == "same" and x.ulps == 0
    assert z.bins == pytest.approx((16.0 - 4.0) / (4.0 / 2048)) and not z.bins_exact
    assert y.ulps == 1 << 23  # one binade down: 2^23 float32 values in between
    assert [r.name for r in diff.only_a] == ["gone"] and [r.name for r in diff.only_b] == ["new"]
    assert diff.header_differences == ["TensorRT version: A 8.6.1, B 10.3.0",
                                       "calibrator: A EntropyCalibration2, B MinMaxCalibration"]
    assert run(["diff", str(a), str(b), "--top", "1", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in out["tensors"]] == ["z"] and out["only_b"][0]["name"] == "new"
    assert run(["diff", str(a), str(a)]) == 0


def test_diff_uses_saved_histograms_for_exact_bins(tmp_path, capsys):
    h = AbsHistogram()
    h.update(np.linspace(-8.0, 8.0, 1001, dtype=np.float32))  # range 8, bin width 8/2048
    save_histograms(tmp_path / "h.npz", {"t": h})
    a = write_cache(tmp_path / "a.cache", "TRT-8601-EntropyCalibration2", {"t": 4.0})
    b = write_cache(tmp_path / "b.cache", "TRT-8601-EntropyCalibration2", {"t": 5.0})
    from trt_calib.core.histogram import load_histograms

    (row,) = diff_caches(a, b, histograms_a=load_histograms(tmp_path / "h.npz")).rows
    assert row.bins_exact and row.bins == pytest.approx(1.0 / (8.0 / 2048))
    assert run(["diff", str(a), str(b), "--histograms-a", str(tmp_path / "h.npz")]) == 1
    out = capsys.readouterr().out
    assert "+256.0" in out and "estimated" not in out


def test_diff_two_tensorrt_versions_of_yolo(capsys):
    diff = diff_caches(corpus("Data-Prodigy"), corpus("GoldenTiger720"))
    assert diff.header_differences == ["TensorRT version: A 10.3.0, B 10.12.0"]
    assert len(diff.rows) == 331 and len(diff.only_a) == 12 and len(diff.only_b) == 100
    logs = [r.log_ratio for r in diff.rows]
    assert logs == sorted(logs, reverse=True) and diff.rows[0].name == "/model.23/Sigmoid_output_0"
    assert sum(r.status == "same" for r in diff.rows) == 10


# ---------------------------------------------------------------------------------------------- check
def test_check_lenet_against_tensorrts_published_table_is_consistent(capsys):
    argv = ["check", str(TRT_TABLE), "--model", str(LENET), "--data", str(LENET_BATCHES), "--trt-version", "7.0.0",
            "--no-progress"]
    assert run(argv) == 0
    text = capsys.readouterr().out
    assert "8/8 shared tensors consistent" in text and "verdict: consistent" in text
    assert run(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in out["tensors"]}
    assert out["consistent"] is True and out["algorithm"] == "entropy2" and out["num_batches"] == 10
    table = CalibrationCache.load(TRT_TABLE)
    assert all(rows[e.name]["verdict"] in ("exact", "same-bin") for e in table.entries)
    assert {n for n, t in rows.items() if t["verdict"] == "exact"} == {"data", "conv1", "pool1", "prob"}


def test_check_reports_a_tampered_entry_and_exits_1(tmp_path, capsys):
    text = TRT_TABLE.read_text().replace("conv1: 3c88edfc", f"conv1: {scale_to_hex(0.0167 * 1.05)}")
    tampered = tmp_path / "t.cache"
    tampered.write_text(text)
    report = check_cache(tampered, LENET, _lenet_batches(), trt_version="7.0.0")
    verdicts = {r.name: r.verdict for r in report.comparison.rows}
    assert verdicts["conv1"] == "differs" and verdicts["data"] == "exact" and not report.consistent
    args = ["check", str(tampered), "--model", str(LENET), "--data", str(LENET_BATCHES), "--no-progress"]
    assert run(args) == 1
    assert "NOT consistent" in capsys.readouterr().out


def test_check_recomputes_a_minmax_cache_with_minmax(tmp_path):
    from trt_calib.ort.collect import calibrate

    ours = calibrate(LENET, _lenet_batches(), algorithm="minmax", trt_version="8.6.1")
    path = tmp_path / "mm.cache"
    ours.cache.save(path)
    report = check_cache(path, LENET, _lenet_batches())
    assert report.algorithm == "minmax" and report.trt_version == "8.6.1"
    assert report.consistent and {r.verdict for r in report.comparison.rows} == {"exact"}


def test_check_refuses_a_calibrator_it_cannot_recompute(tmp_path, capsys):
    path = write_cache(tmp_path / "v1.cache", "TRT-8601-EntropyCalibration", {"data": 1.0})
    with pytest.raises(CalibrationError, match="cannot recompute"):
        check_cache(path, LENET, [])
    assert run(["check", str(path), "--model", str(LENET), "--data", str(LENET_BATCHES)]) == 2
    assert "validate" in capsys.readouterr().err


def _lenet_batches():
    images = np.load(LENET_IMAGES)
    for start in range(50, 550, 50):
        yield {"data": (images[start : start + 50].astype(np.float32) / np.float32(255.0)).reshape(50, 1, 28, 28)}


# ---------------------------------------------------------------------------------------------- convert
def test_cache_json_cache_round_trip_is_byte_exact_on_every_real_cache():
    for path in real_caches():
        cache = CalibrationCache.load(path)
        if cache.is_legacy:
            continue
        data = json.loads(json.dumps(cache_to_json(cache)))
        back = cache_from_json(data, algorithm=cache.algorithm, trt_version=cache.trt_version)
        assert back.dumps() == path.read_text(), path.name


def test_json_amax_is_scale_times_127_and_specials_are_strings(tmp_path):
    path = write_cache(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2", {"a": "3c008912", "b": "7f800000", "c": "0"})
    data = cache_to_json(path)
    assert data == {"a": pytest.approx(0.99633789, rel=1e-7), "b": "inf", "c": 0.0}
    assert data["a"] == float(np.float32(4081 / 4096 / 127)) * 127  # exact in float64
    assert cache_from_json(data, trt_version="8.6.1").dumps() == path.read_text()


def test_cli_convert_round_trip_and_overwrite_guard(tmp_path, capsys):
    src = tmp_path / "lenet.cache"
    shutil.copy(TRT_TABLE, src)
    js = tmp_path / "lenet.json"
    assert run(["convert", str(src), "--to", "json", "-o", str(js)]) == 0
    assert json.loads(js.read_text())["data"] == pytest.approx(4081 / 4096)
    back = tmp_path / "back.cache"
    assert run(["convert", str(js), "--to", "cache", "--trt-version", "7.0.0", "-o", str(back)]) == 0
    assert back.read_bytes() == TRT_TABLE.read_bytes()
    capsys.readouterr()
    assert run(["convert", str(js), "--to", "cache", "-o", str(back)]) == 2
    assert "--trt-version" in capsys.readouterr().err
    assert run(["convert", str(src), "--to", "cache", "--rewrite-header", "--trt-version", "8.6.1", "-o", str(src)]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err and src.read_bytes() == TRT_TABLE.read_bytes()
    assert run(["convert", str(src), "--to", "cache", "--trt-version", "8.6.1", "-o", str(back)]) == 2
    assert "--rewrite-header" in capsys.readouterr().err


def test_cli_rewrite_header_keeps_entries_and_warns(tmp_path, capsys):
    src = write_cache(tmp_path / "mm.cache", "TRT-8400-MinMaxCalibration", {"a": 1.0, "b": 2.5})
    out = tmp_path / "e2.cache"
    argv = ["convert", str(src), "--to", "cache", "--rewrite-header", "--trt-version", "10.3.0",
            "--algorithm", "entropy2", "-o", str(out)]
    assert run(argv) == 0
    err = capsys.readouterr().err
    assert "without recalibrating" in err and "MinMax scales" in err and "trtexec --calib" in err
    lines = out.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" and lines[1:] == src.read_text().splitlines()[1:]
    assert run(["convert", str(src), "--to", "cache", "--rewrite-header", "--trt-version", "8.4.0", "-o",
                str(src), "--force"]) == 0  # same header: allowed in place with --force
    assert "did not change" in capsys.readouterr().err


def test_convert_rejects_bad_json(tmp_path):
    with pytest.raises(TrtCalibError, match="negative amax"):
        cache_from_json({"a": -1.0}, trt_version="8.6.1")
    with pytest.raises(TrtCalibError, match="not a number"):
        cache_from_json({"a": [1.0]}, trt_version="8.6.1")
    with pytest.raises(TrtCalibError, match="one cache line"):
        cache_from_json({"a\nb": 1.0}, trt_version="8.6.1")
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(TrtCalibError, match="not valid JSON"):
        cache_from_json(bad, trt_version="8.6.1")


def test_convert_reads_calibrate_json_output():
    data = {"algorithm": "entropy2", "tensors": [{"name": "data", "amax": 4081 / 4096}, {"name": "p", "amax": 1.0}]}
    cache = cache_from_json(data, algorithm="minmax", trt_version="10.16.1")
    assert cache.header == "TRT-101601-MinMaxCalibration"
    assert [(e.name, e.hex) for e in cache.entries] == [("data", "3c008912"), ("p", "3c010204")]


def test_rewrite_header_defaults_to_the_cache_algorithm():
    cache = CalibrationCache.parse("TRT-7000-EntropyCalibration2\r\ndata: 3c008912\r\n")
    new = rewrite_header(cache, trt_version="8.6.1")
    assert new.dumps() == "TRT-8601-EntropyCalibration2\r\ndata: 3c008912\r\n"
