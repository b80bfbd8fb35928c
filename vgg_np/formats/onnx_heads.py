"""The head of an ONNX VGG graph that is not VGG's own classifier, as layer-table rows.

Transfer-learning models exported to ONNX put a head of their own after ``block5_pool``;
this module reads it as `vgg_np.layers.Layer` rows. It follows the node chain from the
last max-pool (an NCHW map in both exporters: tf2onnx transposes Keras's NHWC input once,
at the start) and accepts:

- to features: ``Transpose(perm 0,2,3,1)`` then ``Flatten``/``Reshape`` (tf2onnx's Keras
  ``Flatten``, H, W, C order: its ``Reshape`` shape computed by ``Shape -> Gather -> Cast
  -> Slice -> Concat -> Cast`` from the map, checked to be a flatten), a plain ``Flatten``
  (torch.onnx: C, H, W order, so the next dense kernel's rows are permuted), or
  ``GlobalAveragePool``/``GlobalMaxPool`` (``ReduceMean``/``ReduceMax`` over H, W) with a
  ``Squeeze``, ``Flatten`` or ``Reshape`` after it;
- then ``Gemm`` or ``MatMul`` (+ ``Add``) as dense layers, ``BatchNormalization``
  (inference), tf2onnx's folded batch norm ``Mul`` (+ ``Add``) by per-channel constants
  (a batch norm with mean 0, variance 1, epsilon 0: exactly ``x * scale + offset``),
  ``Relu``, ``Sigmoid``, ``Tanh``, ``Softmax`` on the last axis, and ``Dropout`` or
  ``Identity`` (nothing at inference).

Layers are named as Keras would name them (``flatten``, ``dense``, ``dense_1``,
``batch_normalization`` ...). Any other node raises an error naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vgg_np.formats._common import FileFormatError, LazyArray
from vgg_np.formats.layouts import chw_rows_to_hwc, lazy_linear_to_dense
from vgg_np.layers import Layer
from vgg_np.ops import BATCH_NORM_EPS

if TYPE_CHECKING:
    # The optional onnx package is not type-checked here (pyproject.toml): its protos are
    # Any to the checker; the names say what is meant.
    from onnx import GraphProto, NodeProto

__all__ = ["read_head"]

_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
_GLOBAL = {
    "GlobalAveragePool": "global_avg",
    "ReduceMean": "global_avg",
    "GlobalMaxPool": "global_max",
    "ReduceMax": "global_max",
}
#: Keras's default name of each kind (a counter is appended from the second one on).
_KERAS_NAMES = {
    "flatten": "flatten",
    "global_avg": "global_average_pooling2d",
    "global_max": "global_max_pooling2d",
    "dense": "dense",
    "batch_norm": "batch_normalization",
}


def _attrs(node: NodeProto) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Walk(Protocol):
    """What the ONNX reader's walker (`vgg_np.formats.onnx_graph`) offers a head reader."""

    @property
    def values(self) -> Mapping[str, LazyArray]:
        """Return the constant tensors by name."""
        ...

    def next(self, tensor: str) -> NodeProto | None:
        """Return the one node that reads `tensor`, None if none does."""
        ...

    def weight(self, node: NodeProto, position: int, what: str) -> LazyArray | None:
        """Return the constant input of `node` at `position`, None if absent."""
        ...


class _Head:
    """The rows read so far, their tensors and output tensor names."""

    def __init__(self, walk: Walk, where: str):
        self.walk, self.where = walk, where
        self.layers: list[Layer] = []
        self.tensors: dict[str, tuple[LazyArray, ...]] = {}
        self.names: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def add(
        self,
        kind: str,
        output: str,
        tensors: tuple[LazyArray, ...] | None = None,
        *,
        units: int = 0,
        eps: float = 0.0,
    ) -> None:
        stem = _KERAS_NAMES[kind]
        count = self.counts[stem] = self.counts.get(stem, -1) + 1
        name = stem if count == 0 else f"{stem}_{count}"
        self.layers.append(Layer(name, kind, units=units, eps=eps))
        self.names[name] = output
        if tensors is not None:
            self.tensors[name] = tensors

    def activate(self, node: NodeProto, activation: str) -> None:
        if not self.layers or self.layers[-1].activation is not None:
            raise self.refuse(node, "an activation after a layer without one")
        last = self.layers[-1]
        self.layers[-1] = dataclasses.replace(last, activation=activation)
        self.names[last.name] = node.output[0]

    def refuse(self, node: NodeProto, expected: str) -> FileFormatError:
        return FileFormatError(
            f"{self.where}: node {node.op_type} {node.name!r} in the head, where {expected} "
            "was expected; vgg_np reads heads of Flatten/Reshape, global pools, Gemm or "
            "MatMul+Add, BatchNormalization or Mul+Add, Relu, Sigmoid, Tanh, Softmax, Dropout"
        )


def _vector(head: _Head, node: NodeProto, position: int, what: str, size: int | None) -> LazyArray:
    """Return a per-channel constant input (shape (C,) or (1, C)) as a (C,) lazy array."""
    value = head.walk.weight(node, position, what)
    if (
        value is None
        or int(np.prod(value.shape)) != (size or value.shape[-1])
        or (value.ndim > 1 and set(value.shape[:-1]) != {1})
    ):
        raise head.refuse(node, f"a per-channel {what} of {size} values")
    if value.ndim == 1:
        return value
    return LazyArray(
        (value.shape[-1],), value.dtype, lambda: np.asarray(value).reshape(-1), value.where
    )


def _flatten_size(graph_nodes: Mapping[str, NodeProto], node: NodeProto, head: _Head) -> int | None:
    """Return the feature count a Reshape flattens to, checking its shape is (N, F)."""
    shape = node.input[1] if len(node.input) > 1 else ""
    if shape in head.walk.values:  # a constant shape: (0 or -1 or N, F or -1)
        values = np.asarray(head.walk.values[shape]).reshape(-1).tolist()
        if len(values) != 2:
            raise head.refuse(node, "a Reshape to (N, features)")
        return None if values[1] == -1 else int(values[1])
    # tf2onnx: Concat(Slice(Shape(map), [0:1]), [F]), maybe between Casts.
    producer = graph_nodes.get(shape)
    while producer is not None and producer.op_type == "Cast":
        producer = graph_nodes.get(producer.input[0])
    if producer is None or producer.op_type != "Concat" or len(producer.input) != 2:
        raise head.refuse(node, "a Reshape to (N, features)")
    last = head.walk.values.get(producer.input[1])
    first = graph_nodes.get(producer.input[0])
    while first is not None and first.op_type in ("Cast", "Slice", "Gather"):
        first = graph_nodes.get(first.input[0])
    if last is None or last.shape != (1,) or first is None or first.op_type != "Shape":
        raise head.refuse(node, "a Reshape whose shape is (batch size, features)")
    value = int(np.asarray(last).reshape(-1)[0])
    return None if value == -1 else value


def _global_pool(head: _Head, node: NodeProto) -> NodeProto | None:
    """Read a global pool of the NCHW map (and the Squeeze after it); return the next node."""
    attrs = _attrs(node)
    if node.op_type.startswith("Reduce") and sorted(attrs.get("axes", [])) != [2, 3]:
        raise head.refuse(node, "a reduction over H and W (axes 2, 3)")
    head.add(_GLOBAL[node.op_type], node.output[0])
    after = head.walk.next(node.output[0])
    keepdims = node.op_type.startswith("Global") or attrs.get("keepdims", 1)
    if keepdims and after is not None and after.op_type in ("Squeeze", "Flatten", "Reshape"):
        head.names[head.layers[-1].name] = after.output[0]
        after = head.walk.next(after.output[0])
    elif keepdims:
        raise head.refuse(after or node, "a Squeeze or Flatten after the global pool")
    return after


def _features(
    head: _Head,
    node: NodeProto | None,
    graph_nodes: Mapping[str, NodeProto],
    channels: int | None,
    side: tuple[int | None, int | None],
) -> tuple[NodeProto | None, bool]:
    """Read the step from the NCHW map to features; return (next node, rows in C,H,W)."""
    h, w = side
    expected = None  # features of the flattened map, where its size is known
    if channels is not None and h is not None and w is not None:
        expected = channels * h * w
    hwc = (
        node is not None
        and node.op_type == "Transpose"
        and list(_attrs(node).get("perm", [])) == [0, 2, 3, 1]
    )
    if node is not None and hwc:
        node = head.walk.next(node.output[0])
    if node is None:
        raise FileFormatError(f"{head.where}: the graph ends at the feature map")
    if node.op_type in _GLOBAL and not hwc:
        return _global_pool(head, node), False
    if node.op_type == "Flatten" and _attrs(node).get("axis", 1) == 1:
        size = expected
    elif node.op_type == "Reshape":
        size = _flatten_size(graph_nodes, node, head)
    else:
        raise head.refuse(node, "a Flatten, Reshape or global pool after the last max-pool")
    if size is not None and expected is not None and size != expected:
        raise head.refuse(node, f"a flatten of the {expected} features")
    head.add("flatten", node.output[0])
    return head.walk.next(node.output[0]), not hwc and side != (1, 1)


def _dense(
    head: _Head,
    node: NodeProto,
    chw_rows: bool,
    channels: int | None,
    side: tuple[int | None, int | None],
) -> NodeProto | None:
    """One Gemm, or MatMul + Add, as a dense layer; return the node after it."""
    attrs = _attrs(node)
    weight = head.walk.weight(node, 1, "the weight")
    if (
        weight is None
        or weight.ndim != 2
        or attrs.get("alpha", 1.0) != 1.0
        or attrs.get("transA", 0)
    ):
        raise head.refuse(node, "a dense layer (a constant 2-D weight)")
    kernel = lazy_linear_to_dense(weight, weight.where) if attrs.get("transB", 0) else weight
    if chw_rows:  # torch's Flatten of an NCHW map: rows in C, H, W order
        h, w = side
        if channels is None or h is None or w is None:
            raise head.refuse(node, "a dense layer after a Flatten of a map of known size")
        chw, rows = (channels, h, w), kernel
        kernel = LazyArray(
            rows.shape,
            rows.dtype,
            lambda: chw_rows_to_hwc(np.asarray(rows), chw),
            rows.where or head.where,
        )
    units = kernel.shape[1]
    output, after = node.output[0], head.walk.next(node.output[0])
    bias = None
    if node.op_type == "Gemm" and len(node.input) > 2:
        if attrs.get("beta", 1.0) != 1.0:
            raise head.refuse(node, "a Gemm with beta 1")
        bias = _vector(head, node, 2, "bias", units)
    elif node.op_type == "MatMul" and after is not None and after.op_type == "Add":
        bias = _vector(head, after, 1, "bias", units)
        output, after = after.output[0], head.walk.next(after.output[0])
    if bias is None:
        bias = LazyArray((units,), kernel.dtype, lambda: np.zeros(units, kernel.dtype))
    head.add("dense", output, (kernel, bias), units=units)
    return after


def _batch_norm(head: _Head, node: NodeProto, width: int | None) -> NodeProto | None:
    """Read a BatchNormalization node, or Mul (+ Add) by constants, as a batch norm row."""
    if node.op_type == "BatchNormalization":
        attrs = _attrs(node)
        if attrs.get("training_mode", 0):
            raise head.refuse(node, "a BatchNormalization in inference mode")
        params = tuple(
            _vector(head, node, i, what, width)
            for i, what in enumerate(("scale", "B", "input_mean", "input_var"), start=1)
        )
        eps = float(attrs.get("epsilon", BATCH_NORM_EPS["onnx"]))  # the attribute's default
        head.add("batch_norm", node.output[0], params, eps=eps)
        return head.walk.next(node.output[0])
    scale = _vector(head, node, 1, "scale", width) if node.op_type == "Mul" else None
    output, after = node.output[0], head.walk.next(node.output[0])
    add = node if node.op_type == "Add" else after
    offset = None
    if add is not None and add.op_type == "Add":
        offset = _vector(head, add, 1, "offset", width)
        output, after = add.output[0], head.walk.next(add.output[0])
    like = scale if scale is not None else offset
    assert like is not None, "a Mul has a scale, an Add an offset"  # read_head calls for those
    c, dtype = like.shape[0], like.dtype

    def constant(value: float) -> LazyArray:
        return LazyArray((c,), dtype, lambda: np.full(c, value, dtype))

    scale = scale if scale is not None else constant(1.0)
    offset = offset if offset is not None else constant(0.0)
    # x * scale + offset, exactly: (x - 0) / sqrt(1 + 0) * scale + offset.
    head.add("batch_norm", output, (scale, offset, constant(0.0), constant(1.0)), eps=0.0)
    return after


def read_head(
    walk: Walk,
    graph: GraphProto,
    node: NodeProto | None,
    *,
    channels: int | None,
    side: tuple[int | None, int | None],
    where: str,
) -> tuple[list[Layer], dict[str, tuple[LazyArray, ...]], dict[str, str], str | None]:
    """Read the head after ``block5_pool``, starting at `node`.

    Parameters
    ----------
    walk : Walk
        The ONNX reader's walker (``next(tensor)``, ``weight(node, position, what)``,
        ``values``).
    graph : onnx.GraphProto
    node : onnx.NodeProto or None
        The first node after the last max-pool (None: the graph ends there).
    channels : int or None
        Channels of the last feature map (None: unknown, without a convolution and with a
        dynamic input).
    side : tuple
        ``(H, W)`` of the last feature map, None where dynamic.
    where : str
        The file, named in errors.

    Returns
    -------
    layers : list of Layer
    tensors : dict
        Layer name -> its tensors, lazy, in Keras layout.
    names : dict
        Layer name -> the ONNX tensor holding its output.
    activation : str or None
        The last layer's activation.

    Raises
    ------
    FileFormatError
        Naming the first node that does not fit.
    """
    graph_nodes = {out: n for n in graph.node for out in n.output}
    head = _Head(walk, where)
    node, chw_rows = _features(head, node, graph_nodes, channels, side)
    width = channels if head.layers[-1].kind != "flatten" else None
    while node is not None:
        if node.op_type in ("Gemm", "MatMul"):
            node = _dense(head, node, chw_rows, channels, side)
            chw_rows, width = False, head.layers[-1].units
        elif node.op_type in ("BatchNormalization", "Mul", "Add"):
            node = _batch_norm(head, node, width)
        elif node.op_type in _ACTIVATIONS:
            if node.op_type == "Softmax" and _attrs(node).get("axis", -1) not in (-1, 1):
                raise head.refuse(node, "a Softmax over the classes (last axis)")
            head.activate(node, _ACTIVATIONS[node.op_type])
            node = head.walk.next(node.output[0])
        elif node.op_type in ("Dropout", "Identity"):
            node = head.walk.next(node.output[0])
        else:
            raise head.refuse(node, "a head layer")
    if not any(layer.kind == "dense" for layer in head.layers):
        raise FileFormatError(f"{where}: the head has no dense layer")
    return head.layers, head.tensors, head.names, head.layers[-1].activation
