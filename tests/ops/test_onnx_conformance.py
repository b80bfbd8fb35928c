"""Conformance of vgg_np.ops against ONNX's backend test data, which nobody here wrote.

The `onnx` package ships, for each case, a one- or two-node model (NCHW, OIHW) with inputs
and the outputs PyTorch produced. Each applicable case is run through vgg_np's kernels,
converting NCHW/OIHW to NHWC/HWIO at the boundary, and compared at the suite's own
tolerances (rtol 1e-3, atol 1e-7 unless the case's data.json says otherwise). Cases that
need what vgg_np does not offer (groups, dilation, 1-D pooling, ceil mode) are skipped
with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vgg_np import ops

pytestmark = pytest.mark.onnx

_SPEC = importlib.util.find_spec("onnx")
DATA = Path(_SPEC.origin).parent / "backend" / "test" / "data" if _SPEC else None
KINDS = ("pytorch-converted", "pytorch-operator")
APPLICABLE = re.compile(
    r"test_(Conv2d.*|MaxPool2d.*|Linear.*|ReLU|Softmax|softmax_.*"
    r"|operator_(conv|maxpool|flatten|mm|addmm))"
)


def _cases() -> list:
    if DATA is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="needs the `onnx` package"))]
    return [
        pytest.param(case, id=f"{kind}/{case.name}")
        for kind in KINDS
        for case in sorted((DATA / kind).iterdir())
        if APPLICABLE.fullmatch(case.name)
    ]


class Unsupported(Exception):
    """The case needs a feature vgg_np deliberately does not offer."""


def _nchw(y):
    return y.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def _nhwc(x):
    return x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)


def _spatial_2d(op: str, attrs: dict) -> tuple:
    """Return vgg_np's (strides, padding) for an ONNX Conv/MaxPool, or raise Unsupported."""
    kernel_shape = attrs.get("kernel_shape")
    if kernel_shape is not None and len(kernel_shape) != 2:
        raise Unsupported(f"{op} over {len(kernel_shape)}-D input: vgg_np is 2-D only")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise Unsupported(f"{op} with dilations {attrs['dilations']}: vgg_np has no dilation")
    if attrs.get("ceil_mode", 0):
        raise Unsupported(f"{op} with ceil_mode: vgg_np floors the output size, like Keras")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise Unsupported(f"{op} with auto_pad={attrs['auto_pad']}")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    return tuple(attrs.get("strides", [1, 1])), ((top, bottom), (left, right))


def _run_node(op: str, attrs: dict, args: list, opset: int):
    """Evaluate one ONNX node with vgg_np's kernels; layout changes stay at this boundary."""
    if op == "Conv":
        if attrs.get("group", 1) != 1:
            raise Unsupported(f"grouped convolution (group={attrs['group']}): not in VGG")
        strides, padding = _spatial_2d(op, attrs)
        x, w, *b = args
        hwio = w.transpose(2, 3, 1, 0)  # (O, C, KH, KW) -> (KH, KW, C, O)
        return _nchw(ops.conv2d(_nhwc(x), hwio, *b, strides=strides, padding=padding))
    if op == "MaxPool":
        strides, padding = _spatial_2d(op, attrs)
        pooled = ops.max_pool2d(
            _nhwc(args[0]), tuple(attrs["kernel_shape"]), strides=strides, padding=padding
        )
        return _nchw(pooled)
    if op == "Gemm":
        a, b = args[0], args[1]
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if attrs.get("transB", 0) else b
        y = attrs.get("alpha", 1.0) * ops.dense(a, b)
        return y + attrs.get("beta", 1.0) * args[2] if len(args) > 2 else y
    if op == "MatMul":
        return ops.dense(*args)
    if op == "Relu":
        return ops.relu(args[0])
    if op == "Softmax":
        x, axis = args[0], attrs.get("axis", 1 if opset < 13 else -1)
        if opset < 13:  # before opset 13 the input is coerced to 2-D at `axis`
            rows = int(np.prod(x.shape[:axis]))
            return ops.softmax(x.reshape(rows, -1)).reshape(x.shape)
        return ops.softmax(x, axis=axis)
    if op == "Flatten":
        if attrs.get("axis", 1) != 1:
            raise Unsupported(f"Flatten at axis {attrs['axis']}: vgg_np keeps the batch axis")
        return ops.flatten(args[0])
    if op == "Transpose":
        return np.transpose(args[0], attrs.get("perm"))
    if op == "Constant":
        from onnx import numpy_helper

        return numpy_helper.to_array(attrs["value"])
    raise Unsupported(f"ONNX op {op} is not one of vgg_np's kernels")


def _load(case: Path):
    onnx = pytest.importorskip("onnx", reason="needs the `onnx` package")
    from onnx import helper, numpy_helper

    model = onnx.load(case / "model.onnx")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    env = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = [i.name for i in model.graph.input if i.name not in env]
    data_dir = case / "test_data_set_0"

    def read(path):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        return numpy_helper.to_array(tensor)

    for k, name in enumerate(feeds):
        env[name] = read(data_dir / f"input_{k}.pb")
    expected = [read(data_dir / f"output_{k}.pb") for k in range(len(model.graph.output))]
    nodes = [
        (n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute}, n)
        for n in model.graph.node
    ]
    return model, opset, env, nodes, expected


@pytest.mark.parametrize("case", _cases())
def test_onnx_backend_case(case: Path):
    model, opset, env, nodes, expected = _load(case)
    tolerances = {"rtol": 1e-3, "atol": 1e-7}
    if (case / "data.json").exists():
        data = json.loads((case / "data.json").read_text())
        tolerances.update({k: data[k] for k in tolerances if k in data})
    try:
        for op, attrs, node in nodes:
            outputs = _run_node(op, attrs, [env[i] for i in node.input if i], opset)
            env[node.output[0]] = outputs
    except Unsupported as why:
        pytest.skip(f"{case.name}: {why}")
    for out, ref in zip(model.graph.output, expected, strict=True):
        got = env[out.name]
        assert got.dtype == ref.dtype, (case.name, got.dtype, ref.dtype)
        err = np.max(np.abs(got - ref)) if ref.size else 0.0
        np.testing.assert_allclose(
            got, ref, **tolerances, err_msg=f"{case.name}: shape {ref.shape}, max |err| {err:.3g}"
        )
