"""ONNX models of the VGG family: recognise the graph, take its weights into Keras layout.

Handles graphs exported by ``torch.onnx.export`` (NCHW input) and by tf2onnx from Keras
(NHWC input followed by a Transpose), and ONNX's own ``light_vgg19.onnx`` whose weights
are the outputs of ``ConstantOfShape`` nodes. The reader walks the graph from its input:

- the convolutional base: ``Conv`` (3x3, stride 1, padding 1) + ``Relu`` ... ``MaxPool``
  (2x2, stride 2), five blocks;
- the head: an optional ``Transpose`` back to NHWC, an average pool that is the identity at
  that size (torch's AdaptiveAvgPool2d((7, 7)) on a 7x7 map), ``Flatten`` or ``Reshape``,
  then ``Gemm`` or ``MatMul`` + ``Add`` layers with ``Relu`` and ``Dropout`` between them,
  and an optional final ``Softmax``.

If the base is followed by anything else (a custom head), only the base is taken, and
loading into an ``include_top=True`` model fails naming those nodes. Any other node inside
the base is an error that names it. Needs the optional `onnx` package.
"""

from __future__ import annotations

import os

import numpy as np

from vgg_np.formats._common import LazyArray
from vgg_np.formats.torchvision import dense_names, lazy_hwc_rows, linear_to_dense, oihw_to_hwio

SUPPORTED = (
    "Conv", "Relu", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Softmax",
    "Dropout", "Transpose", "Identity", "AveragePool", "GlobalAveragePool", "Constant",
    "ConstantOfShape",
)  # fmt: skip


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph) -> dict[str, np.ndarray]:
    """Collect initializers and the outputs of Constant / ConstantOfShape nodes, by name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        attrs = _attrs(node)
        if node.op_type == "Constant" and "value" in attrs:
            values[node.output[0]] = numpy_helper.to_array(attrs["value"])
        elif node.op_type == "ConstantOfShape" and node.input[0] in values:
            fill = (
                numpy_helper.to_array(attrs["value"])
                if "value" in attrs
                else np.zeros(1, np.float32)
            )
            shape = tuple(int(s) for s in values[node.input[0]])
            values[node.output[0]] = np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)
    return values


class _Walker:
    """Follow the single chain of nodes from the graph's input."""

    def __init__(self, graph, values, where):
        self.where = where
        self.values = values
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            if node.op_type in ("Constant", "ConstantOfShape"):
                continue
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def next(self, tensor: str):
        nodes = self.consumers.get(tensor, [])
        if len(nodes) > 1:
            ops = ", ".join(f"{n.op_type} {n.name!r}" for n in nodes)
            raise ValueError(
                f"{self.where}: tensor {tensor!r} feeds several nodes ({ops}): not a chain"
            )
        return nodes[0] if nodes else None

    def weight(self, node, position: int, what: str) -> np.ndarray:
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.values:
            raise ValueError(
                f"{self.where}: {what} of {node.op_type} {node.name!r} is computed, not a constant"
            )
        return self.values[name]


def _unsupported(node, where: str, expected: str) -> ValueError:
    return ValueError(
        f"{where}: unsupported node {node.op_type} {node.name!r} where {expected} was expected; "
        f"vgg_np reads VGG graphs made of {', '.join(SUPPORTED)} with 3x3 'same' convolutions "
        "and 2x2 max-pools"
    )


def read_onnx(path: str | os.PathLike) -> tuple[dict, dict]:
    """Return (canonical lazy tensors, info) of a VGG ONNX model.

    ``info`` holds ``input_shape`` (H, W, C, None where dynamic), ``input_layout``
    ("NCHW" or "NHWC"), ``classifier_activation`` ("softmax" or None), ``tensor_names``
    (Keras layer name -> ONNX tensor name of that layer's output) and ``note``.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError(
            f"reading the ONNX model {os.fspath(path)!r} needs the `onnx` package "
            "(pip install onnx)"
        ) from None
    where = repr(os.fspath(path))
    try:
        model = onnx.load(os.fspath(path))
    except Exception as error:  # protobuf raises its own DecodeError and friends
        raise ValueError(f"{where}: not a readable ONNX model: {error}") from None
    graph = model.graph
    values = _constants(graph)
    inputs = [i for i in graph.input if i.name not in values]
    if len(inputs) != 1:
        raise ValueError(f"{where}: expected one data input, got {[i.name for i in inputs]}")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    walk = _Walker(graph, values, where)
    tensors: dict = {}
    names: dict[str, str] = {}
    current, layout = inputs[0].name, "NCHW"
    node = walk.next(current)
    if (
        node is not None
        and node.op_type == "Transpose"
        and list(_attrs(node)["perm"]) == [0, 3, 1, 2]
    ):
        layout, current = "NHWC", node.output[0]  # tf2onnx: NHWC input, NCHW inside
        node = walk.next(current)
    if len(dims) != 4:
        raise ValueError(f"{where}: the input must be 4-D images, got {len(dims)}-D")
    h, w, c = (dims[1], dims[2], dims[3]) if layout == "NHWC" else (dims[2], dims[3], dims[1])

    block, index, pools, channels = 1, 0, 0, c
    while pools < 5:
        if node is None or node.op_type not in ("Conv", "MaxPool"):
            expected = "a 3x3 Conv or a 2x2 MaxPool"
            if node is None:
                raise ValueError(f"{where}: the graph ends after {pools} of 5 VGG blocks")
            raise _unsupported(node, where, expected)
        attrs = _attrs(node)
        if node.op_type == "Conv":
            weight = walk.weight(node, 1, "the weight")
            bias = walk.weight(node, 2, "the bias")
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            same = pads == [1, 1, 1, 1] or attrs.get("auto_pad", b"") in (
                b"SAME_UPPER",
                b"SAME_LOWER",
            )
            plain = (
                weight is not None and weight.ndim == 4 and weight.shape[2:] == (3, 3)
                and attrs.get("group", 1) == 1 and list(attrs.get("strides", [1, 1])) == [1, 1]
                and list(attrs.get("dilations", [1, 1])) == [1, 1] and same
            )  # fmt: skip
            if not plain:
                raise _unsupported(node, where, "a 3x3, stride 1, 'same' Conv")
            index += 1
            name = f"block{block}_conv{index}"
            if bias is None:
                bias = np.zeros(weight.shape[0], weight.dtype)
            o, ci, kh, kw = weight.shape
            channels = o
            tensors[name] = (
                LazyArray((kh, kw, ci, o), weight.dtype, lambda w=weight: oihw_to_hwio(w)),
                bias,
            )
            relu = walk.next(node.output[0])
            if relu is None or relu.op_type != "Relu":
                raise _unsupported(relu or node, where, f"a Relu after {name}")
            names[name] = relu.output[0]
            current = relu.output[0]
        else:
            if list(attrs.get("kernel_shape", [])) != [2, 2] or list(
                attrs.get("strides", [1, 1])
            ) != [2, 2]:
                raise _unsupported(node, where, "a 2x2, stride 2 MaxPool")
            if any(attrs.get("pads", [0, 0, 0, 0])) or attrs.get("ceil_mode", 0):
                raise _unsupported(node, where, "a MaxPool without padding")
            names[f"block{block}_pool"] = current = node.output[0]
            block, index, pools = block + 1, 0, pools + 1
        node = walk.next(current)

    side = (None if h is None else h // 32, None if w is None else w // 32)
    info = {
        "input_shape": (h, w, c),
        "input_layout": layout,
        "classifier_activation": None,
        "tensor_names": names,
        "note": "",
    }
    head_start = node
    try:
        head, activation = _read_head(walk, node, channels, side, names, where)
        tensors.update(head)
        info["classifier_activation"] = activation
    except _NotAHead as why:
        remaining = []
        while head_start is not None and len(remaining) < 6:
            remaining.append(head_start.op_type)
            head_start = walk.next(head_start.output[0]) if head_start.output else None
        info["note"] = (
            f"convolutional base only; the head is not VGG's ({why}: {', '.join(remaining)})"
        )
    return tensors, info


class _NotAHead(Exception):
    """What follows block5_pool is not VGG's classifier."""


def _read_head(walk, node, channels, side, names, where):
    """Parse flatten and dense layers after the base; raise _NotAHead on anything else."""
    hwc_order = False
    if (
        node is not None
        and node.op_type == "Transpose"
        and list(_attrs(node)["perm"]) == [0, 2, 3, 1]
    ):
        hwc_order, node = True, walk.next(node.output[0])  # tf2onnx: back to NHWC before Flatten
    while node is not None and node.op_type in ("AveragePool", "GlobalAveragePool", "Identity"):
        attrs = _attrs(node)
        identity = (
            node.op_type == "Identity"
            or (
                node.op_type == "AveragePool"
                and list(attrs.get("kernel_shape", [])) == [1, 1]
                and list(attrs.get("strides", [1, 1])) == [1, 1]
                and not any(attrs.get("pads", [0, 0, 0, 0]))
            )
            or (node.op_type == "GlobalAveragePool" and side == (1, 1))
        )
        if not identity:
            raise _NotAHead(f"{node.op_type} changes the feature map")
        node = walk.next(node.output[0])
    if node is None or node.op_type not in ("Flatten", "Reshape"):
        raise _NotAHead("no Flatten")
    names["flatten"] = node.output[0]
    node = walk.next(node.output[0])
    tensors, dense = {}, []
    activation = None
    while node is not None:
        if node.op_type in ("Gemm", "MatMul"):
            attrs = _attrs(node)
            weight = walk.weight(node, 1, "the weight")
            if weight is None or weight.ndim != 2 or attrs.get("alpha", 1.0) != 1.0:
                raise _NotAHead(f"{node.op_type} is not a plain dense layer")
            kernel = linear_to_dense(weight) if attrs.get("transB", 0) else weight
            bias = walk.weight(node, 2, "the bias") if node.op_type == "Gemm" else None
            output = node.output[0]
            nxt = walk.next(output)
            if node.op_type == "MatMul" and nxt is not None and nxt.op_type == "Add":
                bias = walk.weight(nxt, 1, "the bias")
                output, nxt = nxt.output[0], walk.next(nxt.output[0])
            if bias is None:
                bias = np.zeros(kernel.shape[1], kernel.dtype)
            dense.append([np.asarray(kernel), np.asarray(bias).reshape(-1), output])
            node = nxt
        elif node.op_type == "Relu" and dense:
            dense[-1][2] = node.output[0]
            node = walk.next(node.output[0])
        elif node.op_type in ("Dropout", "Identity"):
            node = walk.next(node.output[0])
        elif node.op_type == "Softmax" and dense and walk.next(node.output[0]) is None:
            activation, dense[-1][2], node = "softmax", node.output[0], None
        else:
            raise _NotAHead(f"{node.op_type} in the classifier")
    if not dense:
        raise _NotAHead("no dense layer")
    for name, (kernel, bias, output) in zip(dense_names(len(dense)), dense, strict=True):
        if name == "fc1" and not hwc_order:
            kernel = lazy_hwc_rows(kernel, channels, where)
        tensors[name] = (kernel, bias)
        names[name] = output
    return tensors, activation
