#!/usr/bin/env python3
"""Convert TensorRT sampleINT8's Caffe LeNet (mnist_lenet.caffemodel + deploy.prototxt) to ONNX, without Caffe.

The caffemodel is decoded straight from the protobuf wire format and the layer parameters come from a small
parser of the prototxt text format. Weights are copied byte for byte (float32 little-endian), and every tensor
keeps the name TensorRT's calibration cache gives it (data, conv1, pool1, conv2, pool2, ip1, ip2, prob), so that
caches computed on the ONNX model compare line by line with sampleINT8's.

Usage: python3 samples/sampleint8_lenet/convert_caffe.py [--caffemodel F] [--prototxt F] [--output F]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_calib._util import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "tests" / "data" / "lenet_caffe"  # sampleINT8's Caffe files, with their provenance
DEFAULT_CAFFEMODEL = CORPUS / "mnist_lenet.caffemodel"
DEFAULT_PROTOTXT = CORPUS / "deploy.prototxt"
DEFAULT_OUTPUT = REPO_ROOT / "data" / "lenet" / "lenet.onnx"

OPSET = 13
IR_VERSION = 7  # the IR version that introduced opset 13; pinned so the bytes do not depend on the onnx release
PRODUCER = "trt_calib samples/sampleint8_lenet/convert_caffe.py"
PRODUCER_VERSION = "1"


class ConversionError(Exception):
    """The input is not a Caffe model this converter can map exactly onto ONNX."""


# ---------------------------------------------------------------------------------------------------------------
# Protobuf wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at `pos`; return (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ConversionError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise ConversionError("varint longer than 10 bytes")


def iter_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Split one protobuf message into (field number, wire type, value) in file order.

    Varints come back as int, fixed32/fixed64 as raw 4/8-byte bytes, length-delimited fields as bytes (a
    sub-message, a string or a packed array: the schema decides, so the caller does).
    """
    fields: list[tuple[int, int, Any]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ConversionError(f"unsupported wire type {wire} for field {number}")
        if pos > end:
            raise ConversionError(f"field {number} runs past the end of its message")
        fields.append((number, wire, value))
    return fields


def _packed_varints(buf: bytes) -> list[int]:
    """Decode a packed repeated varint field (BlobShape.dim is int64, never negative here)."""
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


@dataclass
class CaffeLayer:
    """One LayerParameter from a caffemodel: name, type, bottoms, tops and weight blobs (float32, as stored)."""

    name: str
    type: str
    bottom: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)
    blobs: list[np.ndarray] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)


# caffe.proto field numbers of the stored layer parameters that are cross-checked against the prototxt:
# LayerParameter field -> {sub-message field: name}. All are (repeated) uint32 or enum varints.
_STORED_PARAMS = {
    106: {1: "num_output", 3: "pad", 4: "kernel_size", 5: "group", 6: "stride"},  # ConvolutionParameter
    117: {1: "num_output"},  # InnerProductParameter
    121: {1: "pool", 2: "kernel_size", 3: "stride", 4: "pad"},  # PoolingParameter (pool: MAX=0, AVE=1, ...)
}


def _decode_params(number: int, buf: bytes, where: str) -> dict[str, int]:
    """Decode the scalar parameters listed in _STORED_PARAMS from one *_param sub-message."""
    out: dict[str, int] = {}
    names = _STORED_PARAMS[number]
    for n, w, v in iter_fields(buf):
        if n not in names:
            continue
        values = _packed_varints(v) if w == 2 else [v]
        if names[n] in out or len(values) != 1:
            raise ConversionError(f"{where}: per-axis {names[n]} is not supported")
        out[names[n]] = values[0]
    return out


def _decode_blob(buf: bytes, where: str) -> np.ndarray:
    """Decode a BlobProto into a read-only float32 array holding exactly the file's bytes."""
    chunks: list[bytes] = []
    dims: list[int] | None = None
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    seen_legacy = False
    for number, wire, value in iter_fields(buf):
        if number == 5 and wire == 2:  # packed float32 data
            chunks.append(value)
        elif number == 5 and wire == 5:  # unpacked float32 data
            chunks.append(value)
        elif number == 7 and wire == 2:  # BlobShape
            dims = []
            for n, w, v in iter_fields(value):
                if n == 1:
                    dims.extend(_packed_varints(v) if w == 2 else [v])
        elif number in legacy and wire == 0:  # num, channels, height, width
            legacy[number] = value
            seen_legacy = True
        elif number in (8, 9):  # double_data, double_diff
            raise ConversionError(f"{where}: double-precision blobs are not supported")
    if dims is None:
        if not seen_legacy:
            raise ConversionError(f"{where}: blob has neither shape nor num/channels/height/width")
        dims = [legacy[1], legacy[2], legacy[3], legacy[4]]
    raw = b"".join(chunks)
    if len(raw) != 4 * int(np.prod(dims, dtype=np.int64)):
        raise ConversionError(f"{where}: {len(raw) // 4} floats stored for shape {dims}")
    return np.frombuffer(raw, dtype="<f4").reshape(dims)


def read_caffemodel(data: bytes) -> tuple[str, list[CaffeLayer]]:
    """Decode a NetParameter (non-V1 layer format); return the net name and its layers in file order."""
    name = ""
    layers: list[CaffeLayer] = []
    for number, wire, value in iter_fields(data):
        if number == 1 and wire == 2:
            name = value.decode("utf-8")
        elif number == 2 and wire == 2:
            raise ConversionError("V1 'layers' (field 2) are not supported; upgrade the model with Caffe first")
        elif number == 100 and wire == 2:
            layer = CaffeLayer(name="", type="")
            blob_bufs = []
            for n, w, v in iter_fields(value):
                if w != 2:
                    continue
                if n == 1:
                    layer.name = v.decode("utf-8")
                elif n == 2:
                    layer.type = v.decode("utf-8")
                elif n == 3:
                    layer.bottom.append(v.decode("utf-8"))
                elif n == 4:
                    layer.top.append(v.decode("utf-8"))
                elif n == 7:
                    blob_bufs.append(v)
                elif n in _STORED_PARAMS:
                    layer.params.update(_decode_params(n, v, f"layer {layer.name!r}"))
            layer.blobs = [_decode_blob(b, f"layer {layer.name!r} blob {i}") for i, b in enumerate(blob_bufs)]
            layers.append(layer)
    return name, layers


# ---------------------------------------------------------------------------------------------------------------
# Protobuf text format (prototxt)

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<tok>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:;,<>\[\]]|[^\s{}:;,<>\[\]"\'#]+)')

Message = dict[str, list[Any]]


def parse_prototxt(text: str) -> Message:
    """Parse protobuf text format into nested dicts: each key maps to the list of its values (in order).

    Scalars stay strings unless quoted (then unquoted): the caller knows each field's type.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConversionError(f"prototxt: cannot read at offset {pos}: {text[pos:pos + 20]!r}")
        if m.group("tok") is not None:
            tokens.append(m.group("tok"))
        pos = m.end()

    def message(i: int, closing: str | None) -> tuple[Message, int]:
        msg: Message = {}
        while i < len(tokens):
            tok = tokens[i]
            if tok in ("}", ">"):
                if closing is None:
                    raise ConversionError(f"prototxt: unexpected {tok!r}")
                return msg, i + 1
            if tok in (";", ","):
                i += 1
                continue
            key, i = tok, i + 1
            if i < len(tokens) and tokens[i] == ":":
                i += 1
            if i >= len(tokens):
                raise ConversionError(f"prototxt: field {key!r} has no value")
            if tokens[i] in ("{", "<"):
                value, i = message(i + 1, "}" if tokens[i] == "{" else ">")
            else:
                value = tokens[i]
                if value[:1] in ("'", '"'):
                    value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
                i += 1
            msg.setdefault(key, []).append(value)
        if closing is not None:
            raise ConversionError("prototxt: missing closing brace")
        return msg, i

    return message(0, None)[0]


def _one(msg: Message, key: str, default: Any = None, cast: type = str) -> Any:
    """The single value of a non-repeated field, cast, or `default` when absent."""
    values = msg.get(key, [])
    if len(values) > 1:
        raise ConversionError(f"prototxt: field {key!r} given {len(values)} times")
    return cast(values[0]) if values else default


def _bool(token: str) -> bool:
    """A text-format boolean; anything else is an error rather than a silent False."""
    if token not in ("true", "false", "True", "False", "1", "0"):
        raise ConversionError(f"prototxt: {token!r} is not a boolean")
    return token in ("true", "True", "1")


# ---------------------------------------------------------------------------------------------------------------
# Caffe -> ONNX


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Caffe's pooled size: ceil mode, minus one if the last window would start inside the padding."""
    pooled = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def onnx_pool_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """ONNX MaxPool's output size with ceil_mode=0 (floor)."""
    return (size + 2 * pad - kernel) // stride + 1


def _kernel_stride_pad(p: Message, layer: str) -> tuple[int, int, int]:
    """Square kernel, stride and pad of a convolution/pooling parameter; anything else is rejected."""
    for key in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
        if key in p:
            raise ConversionError(f"layer {layer!r}: {key} is not supported (square parameters only)")
    for key in ("kernel_size", "stride", "pad"):
        if len(p.get(key, [])) > 1:
            raise ConversionError(f"layer {layer!r}: per-axis {key} is not supported")
    kernel = _one(p, "kernel_size", None, int)
    if kernel is None:
        raise ConversionError(f"layer {layer!r}: kernel_size is missing")
    return kernel, _one(p, "stride", 1, int), _one(p, "pad", 0, int)


def _check_stored(layer: CaffeLayer | None, deploy: dict[str, int]) -> None:
    """Fail if the parameters stored in the caffemodel disagree with the prototxt's (or Caffe's defaults)."""
    if layer is None:
        return
    defaults = {"pad": 0, "stride": 1, "group": 1, "pool": 0}
    for key, value in deploy.items():
        stored = layer.params.get(key, defaults.get(key))
        if stored is not None and stored != value:
            raise ConversionError(f"layer {layer.name!r}: {key} is {value} in the prototxt but {stored} in the "
                                  f"caffemodel")


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    """A float32 initializer whose raw_data are exactly the array's little-endian bytes."""
    return helper.make_tensor(name, TensorProto.FLOAT, list(array.shape), array.astype("<f4", copy=False).tobytes(),
                              raw=True)


def _sha256(data: bytes) -> str:
    """Hex sha256, as quoted in the model's doc_string and the data README."""
    return hashlib.sha256(data).hexdigest()


def convert(caffemodel: bytes, prototxt: str,
            names: tuple[str, str] = ("mnist_lenet.caffemodel", "deploy.prototxt")) -> onnx.ModelProto:
    """Build the checked ONNX model for a trained caffemodel (bytes) and its deploy prototxt (text).

    `names` are the two files' base names, quoted in the model's doc_string next to their sha256.
    """
    net_name, trained = read_caffemodel(caffemodel)
    weights = {layer.name: layer for layer in trained}
    deploy = parse_prototxt(prototxt)
    if "layers" in deploy:
        raise ConversionError("prototxt: V1 'layers' are not supported")
    name = _one(deploy, "name", net_name) or "net"

    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    value_info: list[onnx.ValueInfoProto] = []
    shapes: dict[str, list[Any]] = {}  # current Caffe blob name -> ONNX shape (batch dim symbolic)
    onnx_name: dict[str, str] = {}  # current Caffe blob name -> the ONNX tensor that holds it now
    graph_inputs: list[onnx.ValueInfoProto] = []

    def record(tensor: str, shape: list[Any]) -> None:
        value_info.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape))

    def blobs_of(layer: str, count: int) -> list[np.ndarray]:
        if layer not in weights:
            raise ConversionError(f"layer {layer!r} has no trained weights in the caffemodel")
        blobs = weights[layer].blobs
        if len(blobs) != count:
            raise ConversionError(f"layer {layer!r}: expected {count} blobs, the caffemodel has {len(blobs)}")
        return blobs

    for lp in deploy.get("layer", []):
        lname, ltype = _one(lp, "name"), _one(lp, "type")
        bottoms, tops = lp.get("bottom", []), lp.get("top", [])
        if ltype == "Input":
            dims = [int(d) for d in _one(_one(lp, "input_param", {}, dict), "shape", {}, dict).get("dim", [])]
            if len(tops) != 1 or len(dims) != 4:
                raise ConversionError(f"layer {lname!r}: one 4-D input expected, got tops {tops} dims {dims}")
            shape = ["N", *dims[1:]]
            graph_inputs.append(helper.make_tensor_value_info(tops[0], TensorProto.FLOAT, shape))
            shapes[tops[0]], onnx_name[tops[0]] = shape, tops[0]
            continue
        if len(bottoms) != 1 or len(tops) != 1:
            raise ConversionError(f"layer {lname!r}: exactly one bottom and one top are supported")
        bottom, top = bottoms[0], tops[0]
        if bottom not in onnx_name:
            raise ConversionError(f"layer {lname!r}: bottom {bottom!r} is not produced by an earlier layer")
        src, in_shape = onnx_name[bottom], shapes[bottom]
        in_place = bottom == top

        if ltype == "Convolution":
            p = _one(lp, "convolution_param", {}, dict)
            kernel, stride, pad = _kernel_stride_pad(p, lname)
            num_output = _one(p, "num_output", None, int)
            plain = _one(p, "group", 1, int) == 1 and _one(p, "dilation", 1, int) == 1
            if not plain or not _bool(_one(p, "bias_term", "true")):
                raise ConversionError(f"layer {lname!r}: group, dilation and bias_term=false are not supported")
            w, b = blobs_of(lname, 2)
            if w.shape != (num_output, in_shape[1], kernel, kernel) or b.shape != (num_output,):
                raise ConversionError(f"layer {lname!r}: blobs {w.shape} + {b.shape} do not fit num_output "
                                      f"{num_output}, {in_shape[1]} input channels, kernel {kernel}")
            _check_stored(weights.get(lname), {"num_output": num_output, "kernel_size": kernel, "stride": stride,
                                               "pad": pad, "group": 1})
            out_hw = [(s + 2 * pad - kernel) // stride + 1 for s in in_shape[2:]]
            inits += [_initializer(f"{lname}_w", w), _initializer(f"{lname}_b", b)]
            nodes.append(helper.make_node("Conv", [src, f"{lname}_w", f"{lname}_b"], [top], name=lname,
                                          kernel_shape=[kernel, kernel], strides=[stride, stride],
                                          pads=[pad] * 4, dilations=[1, 1], group=1))
            out_shape = [in_shape[0], num_output, *out_hw]
        elif ltype == "Pooling":
            p = _one(lp, "pooling_param", {}, dict)
            if _one(p, "pool", "MAX") != "MAX" or _bool(_one(p, "global_pooling", "false")):
                raise ConversionError(f"layer {lname!r}: only non-global MAX pooling is supported")
            kernel, stride, pad = _kernel_stride_pad(p, lname)
            _check_stored(weights.get(lname), {"pool": 0, "kernel_size": kernel, "stride": stride, "pad": pad})
            out_hw = []
            for s in in_shape[2:]:
                caffe, floor = caffe_pool_size(s, kernel, stride, pad), onnx_pool_size(s, kernel, stride, pad)
                if caffe != floor:
                    raise ConversionError(f"layer {lname!r}: Caffe pools {s} to {caffe} (ceil mode) but ONNX "
                                          f"floor mode gives {floor}")
                out_hw.append(caffe)
            nodes.append(helper.make_node("MaxPool", [src], [top], name=lname, kernel_shape=[kernel, kernel],
                                          strides=[stride, stride], pads=[pad] * 4))
            out_shape = [in_shape[0], in_shape[1], *out_hw]
        elif ltype == "InnerProduct":
            p = _one(lp, "inner_product_param", {}, dict)
            num_output = _one(p, "num_output", None, int)
            plain = _one(p, "axis", 1, int) == 1 and not _bool(_one(p, "transpose", "false"))
            if not plain or not _bool(_one(p, "bias_term", "true")):
                raise ConversionError(f"layer {lname!r}: axis != 1, transpose and bias_term=false are not supported")
            w, b = blobs_of(lname, 2)
            features = int(np.prod(in_shape[1:]))
            if w.shape != (num_output, features) or b.shape != (num_output,):
                raise ConversionError(f"layer {lname!r}: blobs {w.shape} + {b.shape} do not fit num_output "
                                      f"{num_output} and {features} input features")
            _check_stored(weights.get(lname), {"num_output": num_output})
            if len(in_shape) > 2:  # Caffe flattens C,H,W in row-major order, as ONNX Flatten(axis=1) does
                flat = f"{bottom}_flat"
                nodes.append(helper.make_node("Flatten", [src], [flat], name=f"{lname}_flatten", axis=1))
                record(flat, [in_shape[0], features])
                src = flat
            inits += [_initializer(f"{lname}_w", w), _initializer(f"{lname}_b", b)]
            nodes.append(helper.make_node("Gemm", [src, f"{lname}_w", f"{lname}_b"], [top], name=lname,
                                          alpha=1.0, beta=1.0, transA=0, transB=1))
            out_shape = [in_shape[0], num_output]
        elif ltype == "ReLU":
            p = _one(lp, "relu_param", {}, dict)
            if float(_one(p, "negative_slope", "0")) != 0.0:
                raise ConversionError(f"layer {lname!r}: leaky ReLU is not supported")
            if in_place:  # the pre-ReLU tensor gets a new name; the Caffe name now means the ReLU output
                if any(vi.name == src for vi in graph_inputs):
                    raise ConversionError(f"layer {lname!r}: an in-place ReLU on a graph input is not supported")
                renamed = f"{bottom}_prerelu"
                for node in nodes:
                    node.output[:] = [renamed if o == src else o for o in node.output]
                    node.input[:] = [renamed if i == src else i for i in node.input]
                for vi in value_info:
                    if vi.name == src:
                        vi.name = renamed
                src = renamed
            nodes.append(helper.make_node("Relu", [src], [top], name=lname))
            out_shape = in_shape
        elif ltype == "Softmax":
            p = _one(lp, "softmax_param", {}, dict)
            axis = _one(p, "axis", 1, int)
            if axis != 1 or len(in_shape) != 2:
                raise ConversionError(f"layer {lname!r}: only softmax over axis 1 of a 2-D blob is supported")
            nodes.append(helper.make_node("Softmax", [src], [top], name=lname, axis=1))
            out_shape = in_shape
        else:
            raise ConversionError(f"layer {lname!r}: type {ltype!r} is not supported")

        record(top, out_shape)
        shapes[top], onnx_name[top] = out_shape, top

    if not nodes:
        raise ConversionError("prototxt: no layers to convert")
    output = nodes[-1].output[0]
    graph_output = helper.make_tensor_value_info(output, TensorProto.FLOAT, shapes[output])
    value_info = [vi for vi in value_info if vi.name != output]

    proto_sha = _sha256(prototxt.encode("utf-8"))
    doc = (f"TensorRT sampleINT8's Caffe model '{net_name}', converted from {names[0]} "
           f"(sha256 {_sha256(caffemodel)}) and {names[1]} (sha256 {proto_sha}) by {PRODUCER}. "
           f"Weights are the caffemodel's float32 bytes, unchanged. Tensor names follow the TensorRT calibration "
           f"cache; the in-place relu1 output keeps the name ip1.")
    graph = helper.make_graph(nodes, name, graph_inputs, [graph_output], initializer=inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version=PRODUCER_VERSION, doc_string=doc)
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    """Serialize deterministically (map fields in sorted order), so reruns give identical bytes."""
    return model.SerializeToString(deterministic=True)


def convert_files(caffemodel: Path, prototxt: Path, output: Path) -> bytes:
    """Convert the two Caffe files and write the ONNX model to `output`; return the bytes written."""
    caffemodel, prototxt = Path(caffemodel), Path(prototxt)
    text = prototxt.read_bytes().decode("utf-8")  # not read_text: keep line endings, so the sha256 is the file's
    model = convert(caffemodel.read_bytes(), text, (caffemodel.name, prototxt.name))
    data = serialize(model)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, data)
    return data


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caffemodel", type=Path, default=DEFAULT_CAFFEMODEL, help="trained weights (.caffemodel)")
    parser.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT, help="deploy network definition")
    parser.add_argument("--output", "-o", type=Path, default=DEFAULT_OUTPUT, help="ONNX file to write")
    args = parser.parse_args(argv)
    try:
        data = convert_files(args.caffemodel, args.prototxt, args.output)
    except (ConversionError, OSError, UnicodeDecodeError) as exc:
        print(f"convert_caffe: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(data)} bytes, sha256 {_sha256(data)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
