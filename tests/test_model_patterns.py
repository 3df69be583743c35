"""Patterns of the models users bring (issue 19), each on a toy model built here:

- paddle2onnx's unknown dims ([-1, 3, '?', '?']) are not one shared name;
- an input whose batch axis is not the first (silero's state (2, batch, 128)), found from the dim names or given
  with --batch-axis, in batching, splitting, the manifest and the TensorRT calibrator;
- already-quantized models (Q/DQ, QOperator, ConvInteger) refused in one line.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_calib.cli import main
from trt_calib.errors import DataError, ModelError
from trt_calib.ort.collect import calibrate
from trt_calib.ort.data import InputSpec, from_arrays, open_source
from trt_calib.ort.model import model_inputs
from trt_calib.ort.runner import split_batch
from trt_calib.qdq import quantize_model

RNG = np.random.default_rng(3)


def paddle_cls(path) -> None:
    """Conv -> HardSigmoid -> GlobalAveragePool -> Flatten -> MatMul, input declared [-1, 3, '?', '?'] as
    paddle2onnx writes it (PaddleOCR's cls model: 48 x 192 images)."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(RNG.standard_normal((4, 2)).astype(np.float32), "fc")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    x.type.tensor_type.shape.dim[0].dim_value = -1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("HardSigmoid", ["c"], ["hs"]),
         helper.make_node("GlobalAveragePool", ["hs"], ["gap"]),
         helper.make_node("Flatten", ["gap"], ["flat"]),
         helper.make_node("MatMul", ["flat", "fc"], ["logits"])],
        "cls", [x], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 2])], [w, fc],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_question_mark_and_empty_dim_names_are_unknown_dims_not_one_shared_name(tmp_path):
    paddle_cls(tmp_path / "cls.onnx")
    (spec,) = model_inputs(onnx.load(str(tmp_path / "cls.onnx")))
    assert spec.shape == (None, 3, None, None)
    assert InputSpec("x", ("", "?", " ? ", "batch"), np.float32).shape == (None, None, None, "batch")


def test_paddle_cls_calibrates_quantizes_and_evaluates_with_height_unlike_width(tmp_path, capsys):
    """Before: "height 48 must equal width 192" from every command reading data."""
    model = tmp_path / "cls.onnx"
    paddle_cls(model)
    np.save(tmp_path / "x.npy", RNG.random((8, 3, 6, 24)).astype(np.float32))
    data = ["--data", str(tmp_path / "x.npy"), "--batch-size", "4"]
    assert main(["calibrate", str(model), *data, "--cache", str(tmp_path / "c.cache")]) == 0
    assert main(["quantize", str(model), *data, "-o", str(tmp_path / "q.onnx"), "-q"]) == 0
    assert main(["evaluate", str(model), str(tmp_path / "q.onnx"), *data, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_samples"] == 8 if "num_samples" in doc else True


def test_a_real_shared_dim_name_keeps_its_check():
    specs = [InputSpec("a", ("batch", "seq"), np.float32), InputSpec("b", ("batch", "seq"), np.float32)]
    with pytest.raises(DataError, match=r"'b' has seq=3 .* 'a' has seq=5"):
        from_arrays({"a": np.zeros((4, 5), np.float32), "b": np.zeros((4, 3), np.float32)}, specs, batch_size=2)
    assert len(from_arrays({"a": np.zeros((4, 5), np.float32), "b": np.zeros((4, 5), np.float32)}, specs,
                           batch_size=2)) == 2
    unknown = [InputSpec("a", ("batch", "?"), np.float32), InputSpec("b", ("batch", "?"), np.float32)]
    assert len(from_arrays({"a": np.zeros((4, 5), np.float32), "b": np.zeros((4, 3), np.float32)}, unknown,
                           batch_size=2)) == 2


# ------------------------------------------------------------------------------------------------ batch axis
def state_model(path, state_dim: str = "batch") -> None:
    """x (batch, 4), state (2, `state_dim`, 4): y = Relu(x @ w) + state[0], stateN = state * 2."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0), helper.make_node("Add", ["r", "s0"], ["y"]),
         helper.make_node("Mul", ["state", "two"], ["stateN"])],
        "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, state_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, state_dim, 4])],
        [w, zero, two],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def state_data(path, n: int = 12) -> dict[str, np.ndarray]:
    """Samples stacked along each input's batch axis: x (n, 4), state (2, n, 4); sample i is filled with i."""
    arrays = {"x": np.repeat(np.arange(n, dtype=np.float32)[:, None], 4, 1),
              "state": np.repeat(np.arange(n, dtype=np.float32)[None, :, None], 2, 0).repeat(4, 2)}
    np.savez(path, **arrays)
    return arrays


def test_the_batch_axis_is_found_from_the_dim_name_the_inputs_share(tmp_path):
    state_model(tmp_path / "m.onnx")
    specs = {s.name: s for s in model_inputs(onnx.load(str(tmp_path / "m.onnx")))}
    assert specs["x"].batch_axis == 0 and specs["state"].batch_axis == 1


def test_batches_are_cut_and_split_along_each_inputs_batch_axis(tmp_path):
    state_model(tmp_path / "m.onnx")
    state_data(tmp_path / "d.npz")
    specs = model_inputs(onnx.load(str(tmp_path / "m.onnx")))
    source = open_source(tmp_path / "d.npz", specs, batch_size=4, shuffle=True, seed=1)
    for b in source:
        assert b["x"].shape == (4, 4) and b["state"].shape == (2, 4, 4)
        assert np.array_equal(b["x"][:, 0], b["state"][0, :, 0])  # the same samples, in the same order
    manifest = source.manifest()
    assert [i["batch_shape"] for i in manifest["inputs"]] == [[4, 4], [2, 4, 4]]
    assert [i["batch_axis"] for i in manifest["inputs"]] == [0, 1]
    batch = next(iter(source))
    parts = split_batch(batch, specs, 3)
    assert [(p["x"].shape[0], p["state"].shape[1]) for p in parts] == [(2, 2), (2, 2)]
    assert np.array_equal(np.concatenate([p["state"] for p in parts], axis=1), batch["state"])


def test_calibration_in_parts_equals_whole_batches_with_the_batch_axis_inside(tmp_path):
    state_model(tmp_path / "m.onnx")
    state_data(tmp_path / "d.npz")
    specs = model_inputs(onnx.load(str(tmp_path / "m.onnx")))
    whole = calibrate(tmp_path / "m.onnx", open_source(tmp_path / "d.npz", specs, batch_size=6), algorithm="minmax")
    parts = calibrate(tmp_path / "m.onnx", open_source(tmp_path / "d.npz", specs, batch_size=6), algorithm="minmax",
                      max_activation_mb=1e-4)
    assert parts.cache.to_bytes() == whole.cache.to_bytes()
    assert whole.amax["state"] == 11.0 and whole.amax["stateN"] == 22.0
    entropy = [calibrate(tmp_path / "m.onnx", open_source(tmp_path / "d.npz", specs, batch_size=6), **kw)
               for kw in ({}, {"max_activation_mb": 1e-4})]
    assert entropy[0].cache.to_bytes() == entropy[1].cache.to_bytes()


def test_wrong_hint_is_gone_and_batch_axis_option_says_where_the_samples_are(tmp_path, capsys):
    """state (2, n, 4) with a dim name no other input shares: the axis cannot be inferred. The hint used to say
    "use batch size 2" (the static first dim); now it names --batch-axis, which fixes it."""
    state_model(tmp_path / "m.onnx", state_dim="n")
    state_data(tmp_path / "d.npz")
    cmd = ["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--cache",
           str(tmp_path / "c.cache"), "--batch-size", "4"]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "--batch-axis state:1" in err and "batch size 2" not in err and "batch_size" not in err
    assert main([*cmd, "--batch-axis", "state:1"]) == 0
    sidecar = json.loads((tmp_path / "c.cache.json").read_text())
    assert [i["batch_axis"] for i in sidecar["model"]["inputs"]] == [0, 1]
    assert [i["batch_axis"] for i in sidecar["data"]["inputs"]] == [0, 1]
    assert main([*cmd, "--batch-axis", "nope:1"]) == 2
    assert "no input called" in capsys.readouterr().err
    assert main([*cmd, "--batch-axis", "state:3"]) == 2
    assert "rank 3" in capsys.readouterr().err
    assert main([*cmd, "--batch-axis", "state"]) == 2  # refused by the parser
    assert "INPUT:AXIS" in capsys.readouterr().err


def test_the_tensorrt_calibrator_takes_the_batch_size_from_the_batch_axis(tmp_path):
    from trt_calib.trt.batches import leading_dim
    from trt_calib.trt.calibrator import CalibratorCore

    state_model(tmp_path / "m.onnx")
    specs = model_inputs(onnx.load(str(tmp_path / "m.onnx")))
    batch = {"state": np.zeros((2, 5, 4), np.float32), "x": np.zeros((5, 4), np.float32)}
    assert leading_dim(batch, {s.name: s for s in specs}) == 5
    assert leading_dim(batch) == 2  # without the specs: the first dim of the first array, as before
    sr = InputSpec("sr", (), np.int64)
    assert leading_dim({"sr": np.array(16000), **batch}, {"sr": sr, **{s.name: s for s in specs}}) == 5
    core = CalibratorCore([batch], None, "host", input_specs=specs)
    assert core.get_batch_size() == 5


def test_rank0_inputs_are_fed_whole_to_every_batch_from_an_npz(tmp_path):
    specs = [InputSpec("x", ("batch", 4), np.float32), InputSpec("sr", (), np.int64)]
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 4), np.float32), sr=np.array(16000, np.int64))
    batches = list(open_source(tmp_path / "d.npz", specs, batch_size=3))
    assert [(b["x"].shape, b["sr"].shape, int(b["sr"])) for b in batches] == [((3, 4), (), 16000)] * 2


# ------------------------------------------------------------------------------------------------ quantized models
def quantized_models(tmp_path) -> dict[str, str]:
    """A Q/DQ model, a ConvInteger model and a QLinearConv model, all tiny."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    zpu = numpy_helper.from_array(np.array(0, np.uint8), "zpu")
    wq = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.int8), "wq")
    wqu = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.uint8), "wqu")
    paths = {}
    qdq = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
         helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x"),
         helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], name="dq_w"),
         helper.make_node("Conv", ["xd", "wd"], ["y"])], "qdq", [x], [y], [scale, zp, wq])
    integer = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zpu"], ["xq"], name="q_x"),
         helper.make_node("ConvInteger", ["xq", "wqu", "zpu", "zpu"], ["acc"], name="conv_int"),
         helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)], "int", [x], [y], [scale, zpu, wqu])
    qlinear = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zpu"], ["xq"], name="q_x"),
         helper.make_node("QLinearConv", ["xq", "s", "zpu", "wqu", "s", "zpu", "s", "zpu"], ["yq"], name="qconv"),
         helper.make_node("DequantizeLinear", ["yq", "s", "zpu"], ["y"], name="dq_y")], "ql", [x], [y],
        [scale, zpu, wqu])
    for name, graph in (("qdq", qdq), ("convinteger", integer), ("qlinear", qlinear)):
        paths[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), paths[name])
    np.save(tmp_path / "x.npy", np.ones((4, 1, 4, 4), np.float32))
    return paths


@pytest.mark.parametrize("kind", ["qdq", "convinteger", "qlinear"])
@pytest.mark.parametrize("command", ["calibrate", "quantize"])
def test_already_quantized_models_are_refused_in_one_line(tmp_path, capsys, kind, command):
    """Before: the ConvInteger model calibrated into entries and quantize then blamed tensor naming."""
    path = quantized_models(tmp_path)[kind]
    out = ["--cache", str(tmp_path / "c.cache")] if command == "calibrate" else ["-o", str(tmp_path / "o.onnx")]
    assert main([command, path, "--data", str(tmp_path / "x.npy"), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is already quantized" in err
    assert not (tmp_path / "c.cache").exists() and not (tmp_path / "o.onnx").exists()
    if kind == "qdq":
        assert "QuantizeLinear" in err and "q_x (QuantizeLinear)" in err and "trt-calib qdq-to-cache" in err
    else:
        assert ("conv_int (ConvInteger)" if kind == "convinteger" else "qconv (QLinearConv)") in err
        assert "qdq-to-cache" not in err


def test_the_library_refuses_quantized_models_too(tmp_path):
    path = quantized_models(tmp_path)["convinteger"]
    with pytest.raises(ModelError, match=r"already quantized .*ConvInteger"):
        calibrate(path, [{"x": np.ones((1, 1, 4, 4), np.float32)}])
    with pytest.raises(ModelError, match=r"already quantized"):
        quantize_model(path, {"x": 1.0})


# ------------------------------------------------------------------------------------------------ validate on YOLO
def yolo_head(path) -> None:
    """YOLOv8's head at toy size: pixel boxes (Conv, Reshape, Mul by the stride) and class scores (Conv, Reshape,
    Sigmoid) concatenated into one output."""
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "wb"),
             numpy_helper.from_array(RNG.standard_normal((2, 3, 1, 1)).astype(np.float32), "wc"),
             numpy_helper.from_array(np.array([1, 4, 64], np.int64), "shape_b"),
             numpy_helper.from_array(np.array([1, 2, 64], np.int64), "shape_c"),
             numpy_helper.from_array(np.array(16.0, np.float32), "stride")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wb"], ["box"]), helper.make_node("Reshape", ["box", "shape_b"], ["boxr"]),
         helper.make_node("Mul", ["boxr", "stride"], ["pix"]),
         helper.make_node("Conv", ["x", "wc"], ["logits"]), helper.make_node("Reshape", ["logits", "shape_c"], ["logr"]),
         helper.make_node("Sigmoid", ["logr"], ["scores"]),
         helper.make_node("Concat", ["pix", "scores"], ["out"], axis=1)],
        "yolo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 64])], inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def yolo_cache(path, **changed: float):
    from trt_calib.core.cache import amax_to_scale, scale_to_hex

    amax = {"x": 1.0, "box": 20.0, "boxr": 20.0, "pix": 320.0, "logits": 8.0, "logr": 8.0, "scores": 0.004,
            "out": 320.0, **changed}
    path.write_text("TRT-8601-EntropyCalibration2\n" + "".join(f"{n}: {scale_to_hex(amax_to_scale(v))}\n"
                                                               for n, v in amax.items()))
    return path


def test_validate_is_clean_on_a_correct_yolo_cache_and_keeps_its_real_catches(tmp_path):
    """The class-score Sigmoid is small by nature and its Concat carries pixel boxes: that is no outlier (it was
    a warning, exit 1, on every correct YOLOv8 cache). A stale entry still is."""
    from trt_calib.tools.validate import validate_cache

    model = tmp_path / "yolo.onnx"
    yolo_head(model)

    def outliers(**changed):
        report = validate_cache(yolo_cache(tmp_path / "c.cache", **changed), model)
        return [f["tensor"] for f in report.findings if f["code"] == "amax-outlier"], report

    found, report = outliers()
    assert found == [] and report.exit_code == 0
    assert outliers(boxr=1e5)[0] == ["boxr"]  # far off the Conv before it and the Mul after it
    assert outliers(pix=1e6)[0] == ["pix"]  # a Concat input far above the Concat: impossible
    assert outliers(scores=3.0)[0] == ["scores"]  # a Sigmoid output above 2: another tensor's entry
    assert outliers(scores=1.2)[0] == []  # entropy thresholds of a Sigmoid reach up to its histogram range, < 2
    assert outliers(scores=1e-5)[0] == []  # small scores are no outlier, however small


def test_stability_gathers_and_rebatches_along_the_batch_axis_with_a_rank0_input(tmp_path):
    """silero's shape: state (2, batch, 4) and a rank-0 sr. stability used to crash concatenating sr."""
    from trt_calib.tools.stability import gather_samples, run_stability

    w = numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
         helper.make_node("Add", ["h", "s0"], ["y"]), helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["y", "srf"], ["out"])],
        "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [w, numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    arrays = state_data(tmp_path / "d.npz", n=16)
    np.savez(tmp_path / "d.npz", **arrays, sr=np.array(2, np.int64))
    source = open_source(tmp_path / "d.npz", model_inputs(model), batch_size=4)
    samples, first = gather_samples(source)
    assert first == 4 and samples["state"].shape == (2, 16, 4) and samples["sr"].shape == ()
    assert np.array_equal(samples["state"][0, :, 0], np.arange(16))
    result = run_stability(model, samples, batch_size=4, orders=1, batch_sizes=(8,), fractions=(0.5,),
                           end_to_end=False).to_json()
    assert result["num_samples"] == 16 and result["base_batch_size"] == 4
    assert len(result["variants"]) == 4  # base, one order, batch 8, half the samples


def test_a_rank0_input_stored_per_sample_takes_each_batchs_one_value(tmp_path):
    """Mixed-rate VAD data in one .npz: sr per sample, each batch of one rate; a batch mixing rates is refused."""
    specs = [InputSpec("x", ("batch", 4), np.float32), InputSpec("sr", (), np.int64)]
    np.savez(tmp_path / "d.npz", x=np.arange(32, dtype=np.float32).reshape(8, 4),
             sr=np.array([16000] * 4 + [8000] * 4, np.int64))
    batches = list(open_source(tmp_path / "d.npz", specs, batch_size=4))
    assert [(b["sr"].shape, int(b["sr"])) for b in batches] == [((), 16000), ((), 8000)]
    assert batches[1]["x"][0, 0] == 16.0
    with pytest.raises(DataError, match=r"batch 1: input 'sr' \(\) takes one value per batch, but the batch's "
                                        r"samples hold 8000, 16000"):
        list(open_source(tmp_path / "d.npz", specs, batch_size=3, last_batch="keep"))
