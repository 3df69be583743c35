"""stability: every variant is TensorRT's algorithm on that batching (checked against independent calibrations on
the bundled LeNet), the results do not depend on the executor, the command's contract and the report section."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from trt_calib.cli import main
from trt_calib.core.cache import CalibrationCache
from trt_calib.core.thresholds import entropy_search
from trt_calib.errors import DataError
from trt_calib.ort.model import model_inputs
from trt_calib.ort.collect import calibrate, collect_histograms
from trt_calib.ort.data import open_source
from trt_calib.ort.executor import make_executor
from trt_calib.tools.stability import _settle, _spread, gather_samples, load_stability, plan_variants, run_stability

from conftest import LENET, LENET_BATCHES, TRT_TABLE
from test_report import check_folder

SPECS = model_inputs(LENET)


@pytest.fixture(scope="module")
def pool():
    """sampleINT8's 500 calibration images (50..549) as one array, and its batch size (50)."""
    return gather_samples(open_source(LENET_BATCHES, SPECS))


def _independent_amax(images: np.ndarray, batch_size: int) -> dict[str, float]:
    """entropy2 amax per tensor from batches cut here by hand, fed to calibrate() in that order."""
    batches = [{"data": images[i : i + batch_size]} for i in range(0, len(images) - batch_size + 1, batch_size)]
    result = calibrate(LENET, batches)
    return {name: entropy_search(h).amax for name, h in result.histograms.items()}


# ---------------------------------------------------------------------------------------------- the plan
def test_plan_lists_base_orders_batch_sizes_and_subsets_once_each():
    variants = plan_variants(500, 50, orders=2, batch_sizes=(25, 50, 100), fractions=(0.1, 0.5, 1.0), seed=7)
    assert [(v.kind, v.batch_size, v.seed, v.num_samples) for v in variants] == [
        ("base", 50, None, 500),
        ("order", 50, 7, 500), ("order", 50, 8, 500),
        ("batch_size", 25, None, 500), ("batch_size", 100, None, 500),  # 50 is the base already
        ("subset", 50, None, 50), ("subset", 50, None, 250),  # 1.0 is the base
    ]
    assert [v.id for v in variants] == list(range(len(variants)))


def test_a_subset_is_at_least_one_batch_and_drop_keeps_whole_batches():
    variants = plan_variants(130, 50, orders=0, batch_sizes=(), fractions=(0.01,))
    assert variants[1].num_samples == 50
    assert len(variants[0].indices(130, "drop")) == 100 and len(variants[0].indices(130, "keep")) == 130
    order = plan_variants(130, 50, orders=1, batch_sizes=(), fractions=())[1]
    assert sorted(order.indices(130, "keep")) == list(range(130))
    assert list(order.indices(130, "keep")) == list(np.random.default_rng(0).permutation(130))


def test_plan_refuses_data_without_a_whole_batch():
    with pytest.raises(DataError, match="no whole batch of 50"):
        plan_variants(30, 50)


def test_spread_is_measured_in_percent_of_the_base_and_in_base_bins():
    s = _spread([10.0, 10.5, 9.5], 10.0, 0.01, tolerance=5.0)
    assert s["min"] == 9.5 and s["max"] == 10.5
    assert math.isclose(s["range_percent"], 10.0) and math.isclose(s["range_bins"], 100.0) and s["unstable"]
    assert not _spread([10.0, 10.4], 10.0, 0.01, tolerance=5.0)["unstable"]
    assert _spread([0.0, 0.0], 0.0, 0.0, tolerance=5.0)["degenerate"]


def test_settle_is_the_smallest_subset_from_which_all_larger_ones_are_within_one_bin():
    sizes = [50, 100, 250, 500]
    assert _settle(sizes, [7.0, 10.2, 9.95, 10.0], 10.0, 0.1) == 250  # 100 is two bins away
    assert _settle(sizes, [7.0, 10.05, 9.95, 10.0], 10.0, 0.1) == 100
    assert _settle(sizes, [10.0, 10.3, 10.0, 10.0], 10.0, 0.1) == 250
    assert _settle(sizes, [10.0, 10.0, 10.3, 10.0], 10.0, 0.1) is None


# ---------------------------------------------------------------------------------------------- exactness
def test_every_variant_is_tensorrts_algorithm_on_that_batching(pool):
    """Each variant's amax equals an independent calibration on the same samples, batched and ordered by hand."""
    samples, base = pool
    images = samples["data"]
    result = run_stability(LENET, samples, batch_size=base, orders=2, batch_sizes=(20, 100), fractions=(0.2,),
                           seed=3, end_to_end=False)
    record = result.to_json()
    variants = record["variants"]
    assert [v["kind"] for v in variants] == ["base", "order", "order", "batch_size", "batch_size", "subset"]
    for v, outcome in zip(variants, result.outcomes):
        n = len(images)
        order = np.arange(n) if v["seed"] is None else np.random.default_rng(v["seed"]).permutation(n)
        expected = _independent_amax(images[order[: v["num_samples"]]], v["batch_size"])
        assert outcome.amax == expected, v["label"]
    # the base variant is sampleINT8's calibration: on the KL index of TensorRT 7's published table, entry for entry
    base = result.outcomes[0]
    table = CalibrationCache.load(TRT_TABLE).amaxes()
    for name in ("data", "conv1", "conv2", "ip1", "ip2", "prob"):  # the others are pool outputs, tied to these
        assert abs(table[name] / base.bin_width[name] - 0.5 - base.index[name]) < 0.01, name
    # and the variants really differ: order and batch size move some amax (what the command is for)
    assert record["summary"]["largest_range_percent"] > 1.0


def test_results_are_identical_whatever_the_executor(pool):
    samples, base = pool
    options = dict(batch_size=base, orders=1, batch_sizes=(100,), fractions=(0.5,), seed=1)
    serial = run_stability(LENET, samples, **options).to_json()
    with make_executor("local", workers=2) as local:
        parallel = run_stability(LENET, samples, executor=local, **options).to_json()

    def strip(record):
        record = json.loads(json.dumps(record))
        record.pop("seconds"), record.pop("executor")
        for v in record["variants"]:
            v.pop("seconds")
        return record

    assert strip(serial) == strip(parallel)
    assert serial["executor"] == "serial" and parallel["executor"] == "local"
    e2e = serial["end_to_end"]
    assert e2e["metric"] == "mean_kl" and e2e["output"] == "prob"
    assert {r["variant"] for r in e2e["variants"]} == set(serial["spread_variants"])
    # Q/DQ pairs go on the inputs of LeNet's Conv and Gemm nodes only; one model per distinct set of their scales
    quantized = {t["name"] for t in serial["tensors"] if t["quantized"]}
    assert quantized == {"data", "pool1", "pool2_flat", "ip1"}
    by_name = {t["name"]: t for t in serial["tensors"]}
    scale_of = [by_name[t["tied_to"] or t["name"]] for t in serial["tensors"] if t["quantized"]]  # after the ties
    distinct = {tuple(t["amax"][i] for t in scale_of) for i in serial["spread_variants"]}
    assert e2e["evaluations"] == len(distinct)
    kl = {r["variant"]: r["mean_kl"] for r in e2e["variants"]}
    assert kl[e2e["best"]] == min(kl.values()) and kl[e2e["worst"]] == max(kl.values())


def test_a_model_with_a_fixed_batch_dim_refuses_other_batch_sizes(tmp_path, pool):
    model = onnx.load(str(LENET))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 50
    samples, _ = pool
    with pytest.raises(DataError, match="batch dim is fixed at 50"):
        run_stability(model, samples, batch_size=50, batch_sizes=(25,), end_to_end=False)


# ---------------------------------------------------------------------------------------------- the command
def test_cli_writes_stab_json_exits_1_on_unstable_tensors_and_the_report_draws_it(tmp_path, capsys):
    out = tmp_path / "stab.json"
    code = main(["stability", str(LENET), "--data", str(LENET_BATCHES), "-o", str(out), "--orders", "2",
                 "--batch-sizes", "25,100", "--fractions", "0.2,0.5,1", "--executor", "serial", "--tolerance", "1",
                 "--no-end-to-end", "-q"])
    record = load_stability(out)
    assert code == 1 and record["summary"]["unstable"] >= 1
    text = capsys.readouterr().out
    assert "UNSTABLE" in text and "tensors unstable" in text and "end to end: skipped" in text
    assert record["model"]["path"] == str(LENET) and record["data"]["kind"] == "generator"
    assert all(len(t["amax"]) == len(record["variants"]) for t in record["tensors"])

    assert main(["stability", str(LENET), "--data", str(LENET_BATCHES), "-o", str(tmp_path / "one.json"),
                 "--orders", "0", "--batch-sizes", "50", "--fractions", "1", "--executor", "serial", "--no-end-to-end", "--json",
                 "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["exit"] == 0 and printed["summary"]["unstable"] == 0 and len(printed["variants"]) == 1

    report = tmp_path / "report"
    assert main(["report", str(LENET), "--stability", str(tmp_path / "stab.json"), "-o", str(report), "-q"]) == 0
    meta, page = check_folder(report)  # parses, every image a PNG in the folder, nothing fetched from outside
    assert sorted(page.images) == ["figures/stability_settle.png", "figures/stability_spread.png"]
    assert meta["stability"]["unstable"] == record["summary"]["unstable"] >= 1
    assert "Stability: batch order, batch size" in (report / "index.html").read_text()


def test_cli_refuses_an_output_that_is_the_model_and_a_bad_list_before_reading_data(tmp_path, capsys):
    assert main(["stability", str(LENET), "--data", str(LENET_BATCHES), "-o", str(LENET), "-q"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["stability", str(LENET), "--data", "missing.py", "-o", str(tmp_path / "s.json"),
                 "--fractions", "0.5,2"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err


def test_report_refuses_a_file_that_is_not_a_stab_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="not a trt-calib stability file"):
        load_stability(bad)


def test_the_order_reaches_the_histogram_only_through_its_final_range(pool):
    """docs/stability.md's claim: TensorRT's histogram after all batches is all the data binned at the final range,
    except values equal to the range when their batch was binned (the first batch's max), one bin lower."""
    from trt_calib.core.histogram import AbsHistogram
    from trt_calib.ort.model import calibrated_tensors, ort_session

    samples, _ = pool
    images = samples["data"][np.random.default_rng(3).permutation(500)]
    batches = [{"data": images[i : i + 8]} for i in range(0, 496, 8)]
    grown, _ = collect_histograms(LENET, batches)
    names = [n for n in calibrated_tensors(onnx.load(str(LENET))) if n != "data"]
    session = ort_session(onnx.load(str(LENET)), names)
    direct = {n: AbsHistogram(range=grown[n].range) for n in names}
    for batch in batches:
        for name, value in zip(names, session.run(names, batch)):
            direct[name].update(value)
    moved = 0
    for name in names:
        diff = grown[name].counts - direct[name].counts
        for j in np.flatnonzero(diff < 0):  # a value at 2048 / 2**d bins of the final width, held one bin lower
            assert j & (j - 1) == 0 and diff[j - 1] == -diff[j], name
            moved += 1
        assert diff.sum() == 0 and np.count_nonzero(diff) == 2 * np.count_nonzero(diff < 0), name
    assert moved >= 1


# ---------------------------------------------------------------------------------------------- task metric, memory
AGREE = """
def metric(fp32, int8):
    return float((fp32["prob"].argmax(1) == int8["prob"].argmax(1)).mean()), True
"""


def test_a_task_metric_ranks_the_end_to_end_variants(pool, tmp_path):
    samples, base = pool
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    task = run_stability(LENET, samples, metric=str(script), batch_size=base, orders=2, batch_sizes=(100,),
                         fractions=(), seed=1).to_json()["end_to_end"]
    assert task["metric"] == "task_metric" and task["task_metric"] == str(script) and task["higher_is_better"] is True
    rows = {r["variant"]: r for r in task["variants"]}
    for r in rows.values():
        assert r["task_metric"] == pytest.approx(r["agreement"], rel=1e-12)  # the script computes the agreement
    best = max(rows.values(), key=lambda r: (r["task_metric"], -r["variant"]))
    assert task["best"] == best["variant"]
    assert rows[task["worst"]]["task_metric"] == min(r["task_metric"] for r in rows.values())


def test_end_to_end_evaluations_run_in_parts_within_the_budget(pool, tmp_path):
    """The evaluation of one set of scales, in parts of two samples and in whole batches: the same row.
    (Not parts of one: onnxruntime's Gemm takes another kernel for one row when its weights are not constant, as
    behind a DequantizeLinear, which moves the activations by a few float32 ULPs; docs/accuracy.md.)"""
    from trt_calib.ort.executor import ShippedModel
    from trt_calib.tools.stability import _EvaluationJob, _evaluate_scales

    samples, _ = pool
    amax = calibrate(LENET, [{"data": samples["data"][:100]}]).amax
    held = {"data": samples["data"][:60]}
    job = dict(model=ShippedModel.of(onnx.load(str(LENET))), specs=tuple(SPECS), amax=amax, samples=held,
               batch_size=20, threads=1)
    whole = _evaluate_scales(_EvaluationJob(**job, max_activation_mb=256))
    parts = _evaluate_scales(_EvaluationJob(**job, max_activation_mb=0.4))  # LeNet: 84 kB of tensors per sample
    assert whole.keys() == parts.keys() and whole["num_samples"] == 60
    assert whole.pop("num_parts") == 1 and parts.pop("num_parts") == 10
    for key, value in whole.items():
        assert parts[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_cli_checks_the_metric_before_reading_data(tmp_path, capsys):
    marker = tmp_path / "read"
    data = tmp_path / "data.py"
    data.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                    "def load_data():\n    yield {'data': __import__('numpy').zeros((2, 1, 28, 28), 'f4')}\n")
    out = str(tmp_path / "s.json")
    assert main(["stability", str(LENET), "--data", str(data), "-o", out, "--metric", str(tmp_path / "no.py")]) == 2
    assert "no such metric script" in capsys.readouterr().err
    (tmp_path / "agree.py").write_text(AGREE)
    assert main(["stability", str(LENET), "--data", str(data), "-o", out, "--metric", str(tmp_path / "agree.py"),
                 "--no-end-to-end"]) == 2
    assert "--no-end-to-end" in capsys.readouterr().err
    assert not marker.exists()
