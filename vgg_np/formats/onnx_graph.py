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

The model is what feeds the graph's one declared output, as onnxruntime runs it: nodes
that feed nothing declared (an unused ``Softmax``) are left out before the walk, and a
graph with several outputs, an output the input does not reach, or a cycle is refused
with the node named.

If the base is followed by anything else (a custom head), only the base is taken, and
loading into an ``include_top=True`` model fails naming those nodes. Any other node inside
the base is an error that names it. Needs the optional `onnx` package.

Nothing is evaluated unless it is a weight: tensors stay lazy, a ``ConstantOfShape`` is
computed only when its output is a layer's weight (at most `MAX_COMPUTED_BYTES` each, and
all the weights a file declares at most `vgg_np.formats._common.MAX_TOTAL_BYTES`, counted
by `vgg_np.formats.open_weights` before any is read or computed), and tensors kept in
external files are refused.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from vgg_np.formats import onnx_heads
from vgg_np.formats._common import (
    MAX_COMPUTED_BYTES,
    FileFormatError,
    LazyArray,
    open_regular,
)
from vgg_np.formats.contract import RECORD_PREFIX, Family, Provenance, WeightSource
from vgg_np.formats.layouts import (
    dense_names,
    lazy_hwc_rows,
    lazy_linear_to_dense,
    lazy_oihw_to_hwio,
)

if TYPE_CHECKING:
    # The optional onnx package is not type-checked here (pyproject.toml): its protos are
    # Any to the checker; the names say what is meant.
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto

SUPPORTED = (
    "Conv", "Relu", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Softmax",
    "Dropout", "Transpose", "Identity", "AveragePool", "GlobalAveragePool", "Constant",
    "ConstantOfShape",
)  # fmt: skip
CONSTANT_OPS = ("Constant", "ConstantOfShape")
#: Most axes a ``ConstantOfShape`` shape input may list (it is read to build the shape).
MAX_RANK = 8
_TYPED_FIELDS = ("float_data", "double_data", "int32_data", "int64_data", "uint64_data")


def _onnx() -> ModuleType:
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise ImportError(
            "reading ONNX models needs the `onnx` package (pip install onnx)"
        ) from None


def _attrs(node: NodeProto) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _lazy_tensor(proto: TensorProto, where: str) -> LazyArray:
    """Wrap a TensorProto as a lazy array, after checking its data is in the file and whole."""
    from onnx import TensorProto, helper, numpy_helper

    what = f"{where} tensor {proto.name!r}"
    if proto.data_location == TensorProto.EXTERNAL:
        raise FileFormatError(f"{what}: its data is in an external file; refused")
    shape = tuple(int(d) for d in proto.dims)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(proto.data_type))
    count = int(np.prod(shape, dtype=object))
    stored = (
        len(proto.raw_data) // max(dtype.itemsize, 1)
        if proto.raw_data
        else sum(len(getattr(proto, name)) for name in _TYPED_FIELDS)
    )
    if min(shape, default=0) < 0 or stored != count:
        raise FileFormatError(f"{what}: declares shape {shape} but holds {stored:,} values")
    return LazyArray(shape, dtype, lambda: numpy_helper.to_array(proto), what)


def _constant_of_shape(
    node: NodeProto, values: dict[str, LazyArray], where: str
) -> LazyArray | None:
    """Return the output of a ``ConstantOfShape`` of constant shape, computed only if read."""
    if node.input[0] not in values:
        return None
    given = values[node.input[0]]
    if given.ndim != 1 or given.shape[0] > MAX_RANK:  # read below: only a shape's few values
        return None  # not a constant vgg_np computes: refused if a weight needs it
    what = f"{where} ConstantOfShape {node.name!r}"
    attrs = _attrs(node)
    fill = (
        _lazy_tensor(attrs["value"], where)
        if "value" in attrs
        else LazyArray((1,), np.float32, lambda: np.zeros(1, np.float32))
    )
    shape = tuple(int(s) for s in np.asarray(given).reshape(-1))
    if min(shape, default=0) < 0:
        raise FileFormatError(f"{what}: negative shape {shape}")
    return LazyArray(
        shape, fill.dtype, lambda: np.full(shape, np.asarray(fill).reshape(-1)[0]), what
    )


def _constants(graph: GraphProto, where: str) -> dict[str, LazyArray]:
    """Collect initializers and the outputs of Constant / ConstantOfShape nodes, lazily."""
    values = {t.name: _lazy_tensor(t, where) for t in graph.initializer}
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == "Constant" else {}
        if "value" in attrs:
            values[node.output[0]] = _lazy_tensor(attrs["value"], where)
        elif node.op_type == "ConstantOfShape":
            computed = _constant_of_shape(node, values, where)
            if computed is not None:
                values[node.output[0]] = computed
    return values


def _node_name(node: NodeProto) -> str:
    return f"{node.op_type} {node.name!r}"


def _live_nodes(graph: GraphProto, source: str, where: str) -> list[NodeProto]:
    """Return the nodes the graph's declared output depends on, in the graph's order.

    The output is what the graph declares (as onnxruntime returns it): a node that feeds
    no declared output (an unused Softmax) is not part of the model. Refused, naming the
    node or tensor: several outputs (vgg_np returns one), an output no node computes from
    the input `source`, and a cycle (which ONNX forbids, and a walk would follow forever).
    """
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1:
        raise FileFormatError(
            f"{where}: the graph declares {len(outputs)} outputs {outputs}; vgg_np runs "
            "models with one"
        )
    producer = {out: node for node in graph.node for out in node.output if out}
    live: set[int] = set()
    pending = list(outputs)
    while pending:  # each node is entered once: bounded by the graph's size
        node = producer.get(pending.pop())
        if node is not None and id(node) not in live:
            live.add(id(node))
            pending.extend(node.input)
    order = [node for node in graph.node if id(node) in live]
    if outputs[0] not in _reached(order, producer, source, where):
        node = producer.get(outputs[0])
        what = f"node {_node_name(node)}" if node is not None else "no node"
        raise FileFormatError(
            f"{where}: the declared output {outputs[0]!r} (made by {what}) cannot be reached "
            f"from the input {source!r}"
        )
    return order


def _reached(
    order: list[NodeProto], producer: dict[str, NodeProto], source: str, where: str
) -> set[str]:
    """Return the tensors computed from `source`, refusing a cycle by a node on it.

    Kahn's algorithm, linear in the graph's size whatever its node order: a node runs
    once every input another node makes has been made; one that never can is on (or
    after) a cycle.
    """
    waiting: dict[int, int] = {}  # node -> inputs made by nodes not run yet
    consumers: dict[str, list[NodeProto]] = {}
    for node in order:
        inputs = [name for name in node.input if name in producer]
        waiting[id(node)] = len(inputs)
        for name in inputs:
            consumers.setdefault(name, []).append(node)
    ready = collections.deque(node for node in order if not waiting[id(node)])
    reached, made = {source}, set[str]()
    while ready:
        node = ready.popleft()
        if reached.intersection(node.input):
            reached.update(node.output)
        for name in set(node.output) - made:
            made.add(name)
            for consumer in consumers.get(name, []):
                waiting[id(consumer)] -= 1
                if not waiting[id(consumer)]:
                    ready.append(consumer)
    stuck = next((node for node in order if waiting[id(node)]), None)
    if stuck is not None:
        raise FileFormatError(
            f"{where}: node {_node_name(stuck)} is on a cycle (or waits on one); an ONNX "
            "graph must not have any"
        )
    return reached


class _Walker:
    """Follow the single chain of nodes from the graph's input, through the live nodes."""

    def __init__(self, live: list[NodeProto], values: dict[str, LazyArray], where: str):
        self.where = where
        self.values = values
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in live:
            # A Shape reads a tensor's shape, not its values (tf2onnx's Flatten computes
            # its Reshape target from the map): not a branch of the chain.
            if node.op_type in (*CONSTANT_OPS, "Shape"):
                continue
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def next(self, tensor: str) -> NodeProto | None:
        nodes = self.consumers.get(tensor, [])
        if len(nodes) > 1:
            ops = ", ".join(f"{n.op_type} {n.name!r}" for n in nodes)
            raise FileFormatError(
                f"{self.where}: tensor {tensor!r} feeds several nodes ({ops}): not a chain"
            )
        return nodes[0] if nodes else None

    def weight(self, node: NodeProto, position: int, what: str) -> LazyArray | None:
        """Return a constant input of `node` used as a weight (None if absent), size-capped."""
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.values:
            raise FileFormatError(
                f"{self.where}: {what} of {node.op_type} {node.name!r} is computed, not a constant"
            )
        value = self.values[name]
        if value.nbytes > MAX_COMPUTED_BYTES:
            raise FileFormatError(
                f"{self.where}: {what} of {node.op_type} {node.name!r} declares "
                f"{value.nbytes:,} bytes, more than any VGG weight ({MAX_COMPUTED_BYTES:,})"
            )
        return value


def _unsupported(node: NodeProto, where: str, expected: str) -> FileFormatError:
    return FileFormatError(
        f"{where}: unsupported node {node.op_type} {node.name!r} where {expected} was expected; "
        f"vgg_np reads VGG graphs made of {', '.join(SUPPORTED)} with 3x3 'same' convolutions "
        "and 2x2 max-pools"
    )


@dataclass
class _Graph:
    """What the walk found: canonical tensors and each layer's output tensor name."""

    walk: _Walker
    where: str
    tensors: dict[str, tuple[LazyArray | np.ndarray, ...]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    channels: int | None = None


def _is_transpose(node: NodeProto | None, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and list(_attrs(node)["perm"]) == perm


def _same_conv(node: NodeProto, weight: LazyArray) -> bool:
    """Tell a 3x3, stride 1, dilation 1, ungrouped convolution with 'same' padding."""
    attrs = _attrs(node)
    same = list(attrs.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1] or attrs.get("auto_pad", b"") in (
        b"SAME_UPPER",
        b"SAME_LOWER",
    )
    return bool(
        weight.ndim == 4 and weight.shape[2:] == (3, 3)
        and attrs.get("group", 1) == 1 and list(attrs.get("strides", [1, 1])) == [1, 1]
        and list(attrs.get("dilations", [1, 1])) == [1, 1] and same
    )  # fmt: skip


def _conv(g: _Graph, node: NodeProto, name: str) -> str:
    """Take one Conv + Relu as layer `name`; return the Relu's output tensor."""
    weight = g.walk.weight(node, 1, "the weight")
    if weight is None or not _same_conv(node, weight):
        raise _unsupported(node, g.where, "a 3x3, stride 1, 'same' Conv")
    bias = g.walk.weight(node, 2, "the bias")
    g.tensors[name] = (
        lazy_oihw_to_hwio(weight, weight.where),
        bias if bias is not None else np.zeros(weight.shape[0], weight.dtype),
    )
    g.channels = weight.shape[0]
    relu = g.walk.next(node.output[0])
    if relu is None or relu.op_type != "Relu":
        raise _unsupported(relu or node, g.where, f"a Relu after {name}")
    output: str = relu.output[0]
    g.names[name] = output
    return output


def _check_pool(node: NodeProto, where: str) -> None:
    attrs = _attrs(node)
    if list(attrs.get("kernel_shape", [])) != [2, 2] or list(attrs.get("strides", [1, 1])) != [
        2,
        2,
    ]:
        raise _unsupported(node, where, "a 2x2, stride 2 MaxPool")
    if any(attrs.get("pads", [0, 0, 0, 0])) or attrs.get("ceil_mode", 0):
        raise _unsupported(node, where, "a MaxPool without padding")


def _read_base(g: _Graph, current: str) -> NodeProto | None:
    """Walk the five VGG blocks from tensor `current`; return the first node after them."""
    block, index = 1, 0
    node = g.walk.next(current)
    while block <= 5:
        if node is None:
            raise FileFormatError(f"{g.where}: the graph ends after {block - 1} of 5 VGG blocks")
        if node.op_type == "Conv":
            index += 1
            current = _conv(g, node, f"block{block}_conv{index}")
        elif node.op_type == "MaxPool":
            _check_pool(node, g.where)
            g.names[f"block{block}_pool"] = current = node.output[0]
            block, index = block + 1, 0
        else:
            raise _unsupported(node, g.where, "a 3x3 Conv or a 2x2 MaxPool")
        node = g.walk.next(current)
    return node


class _NotAHead(Exception):
    """What follows block5_pool is not VGG's classifier."""


def _is_identity_pool(node: NodeProto, side: tuple[int | None, int | None]) -> bool:
    attrs = _attrs(node)
    if node.op_type == "AveragePool":
        return bool(
            list(attrs.get("kernel_shape", [])) == [1, 1]
            and list(attrs.get("strides", [1, 1])) == [1, 1]
            and not any(attrs.get("pads", [0, 0, 0, 0]))
        )
    return node.op_type == "Identity" or (node.op_type == "GlobalAveragePool" and side == (1, 1))


def _to_flatten(
    g: _Graph, node: NodeProto | None, side: tuple[int | None, int | None]
) -> tuple[NodeProto | None, bool]:
    """Skip identity pools up to the Flatten; return the node after it and the row order."""
    hwc_order = _is_transpose(node, [0, 2, 3, 1])  # tf2onnx: back to NHWC before Flatten
    if node is not None and hwc_order:
        node = g.walk.next(node.output[0])
    while node is not None and node.op_type in ("AveragePool", "GlobalAveragePool", "Identity"):
        if not _is_identity_pool(node, side):
            raise _NotAHead(f"{node.op_type} changes the feature map")
        node = g.walk.next(node.output[0])
    if node is None or node.op_type not in ("Flatten", "Reshape"):
        raise _NotAHead("no Flatten")
    g.names["flatten"] = node.output[0]
    return g.walk.next(node.output[0]), hwc_order


def _dense(g: _Graph, node: NodeProto) -> tuple[list, NodeProto | None]:
    """One Gemm (or MatMul + Add): ([kernel, bias, output name], the node after it)."""
    attrs = _attrs(node)
    weight = g.walk.weight(node, 1, "the weight")
    if weight is None or weight.ndim != 2 or attrs.get("alpha", 1.0) != 1.0:
        raise _NotAHead(f"{node.op_type} is not a plain dense layer")
    kernel = lazy_linear_to_dense(weight, weight.where) if attrs.get("transB", 0) else weight
    bias = g.walk.weight(node, 2, "the bias") if node.op_type == "Gemm" else None
    output = node.output[0]
    after = g.walk.next(output)
    if node.op_type == "MatMul" and after is not None and after.op_type == "Add":
        bias = g.walk.weight(after, 1, "the bias")
        output, after = after.output[0], g.walk.next(after.output[0])
    if bias is None:
        return [kernel, np.zeros(kernel.shape[1], kernel.dtype), output], after
    if bias.ndim != 1:  # an Add's bias may be (1, out)
        size, row = int(np.prod(bias.shape)), bias
        bias = LazyArray((size,), row.dtype, lambda: np.asarray(row).reshape(-1), row.where)
    return [kernel, bias, output], after


def _read_head(
    g: _Graph, node: NodeProto | None, side: tuple[int | None, int | None]
) -> str | None:
    """Parse flatten and dense layers after the base; raise _NotAHead on anything else."""
    node, hwc_order = _to_flatten(g, node, side)
    dense: list[list] = []  # [kernel, bias, output tensor name] per layer
    activation: str | None = None
    while node is not None:
        if node.op_type in ("Gemm", "MatMul"):
            layer, node = _dense(g, node)
            dense.append(layer)
        elif node.op_type == "Relu" and dense:
            dense[-1][2] = node.output[0]
            node = g.walk.next(node.output[0])
        elif node.op_type in ("Dropout", "Identity"):
            node = g.walk.next(node.output[0])
        elif node.op_type == "Softmax" and dense and g.walk.next(node.output[0]) is None:
            activation, dense[-1][2], node = "softmax", node.output[0], None
        else:
            raise _NotAHead(f"{node.op_type} in the classifier")
    if not dense:
        raise _NotAHead("no dense layer")
    for name, (kernel, bias, output) in zip(dense_names(len(dense)), dense, strict=True):
        if name == "fc1" and not hwc_order:
            if g.channels is None:  # no convolution, and the input's channels are dynamic
                raise FileFormatError(
                    f"{g.where}: fc1's rows cannot be put in H, W, C order: no convolution "
                    "and a dynamic input say how many channels the feature map has"
                )
            kernel = lazy_hwc_rows(kernel, g.channels, g.where)
        g.tensors[name] = (kernel, bias)
        g.names[name] = output
    return activation


def _remaining(walk: _Walker, node: NodeProto | None, count: int = 6) -> list[str]:
    ops: list[str] = []
    while node is not None and len(ops) < count:
        ops.append(node.op_type)
        node = walk.next(node.output[0]) if node.output else None
    return ops


def _input(
    graph: GraphProto, values: dict[str, LazyArray], where: str
) -> tuple[str, list[int | None]]:
    inputs = [i for i in graph.input if i.name not in values]
    if len(inputs) != 1:
        raise FileFormatError(f"{where}: expected one data input, got {[i.name for i in inputs]}")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise FileFormatError(f"{where}: the input must be 4-D images, got {len(dims)}-D")
    name: str = inputs[0].name
    return name, dims


def _provenance(
    model: ModelProto,
    description: str,
    layout: str,
    input_size: tuple[int, int] | None,
    where: str,
) -> Provenance:
    """Return the recorded provenance, or what the exporter and the input layout imply."""
    record = {p.key: p.value for p in model.metadata_props if p.key.startswith(RECORD_PREFIX)}
    recorded = Provenance.from_record(record, description, where)
    if recorded is not None:
        return recorded
    family = Family.ONNX_NHWC if layout == "NHWC" else Family.ONNX_NCHW
    producer = model.producer_name.lower()
    conventions: tuple[str | None, str | None]
    if producer == "pytorch":
        conventions, evidence = ("torch", "torchvision"), "exported by PyTorch (producer_name)"
    elif producer in ("tf2onnx", "keras2onnx") or layout == "NHWC":
        conventions = ("caffe", "keras")
        evidence = f"exported from TensorFlow/Keras ({producer or 'NHWC input'})"
    else:
        conventions, evidence = (None, None), f"exporter {producer or 'unnamed'}: no convention"
    preprocess, resize = conventions
    return Provenance(description, family, preprocess, resize, input_size, evidence)


def _load(path: str | os.PathLike, where: str) -> ModelProto:
    onnx = _onnx()
    with open_regular(path) as f:
        data = f.read()
    try:
        return onnx.load_model_from_string(data)
    except Exception as error:  # protobuf raises its own DecodeError and friends
        raise FileFormatError(f"{where}: not a readable ONNX model: {error}") from None


def read_onnx(path: str | os.PathLike, where: str | None = None) -> WeightSource:
    """Read a VGG ONNX model: its lazy canonical tensors, provenance and facts.

    ``info`` holds ``input_shape`` (H, W, C, None where dynamic), ``input_layout``
    ("NCHW" or "NHWC"), ``classifier_activation`` ("softmax" or None), ``tensor_names``
    (Keras layer name -> ONNX tensor name of that layer's output) and ``note``.
    """
    where = where or repr(os.fspath(path))
    model = _load(path, where)
    values = _constants(model.graph, where)
    current, dims = _input(model.graph, values, where)
    live = _live_nodes(model.graph, current, where)  # what feeds the declared output
    g = _Graph(_Walker(live, values, where), where)
    layout, (h, w, c) = "NCHW", (dims[2], dims[3], dims[1])
    first = g.walk.next(current)
    if first is not None and _is_transpose(first, [0, 3, 1, 2]):
        layout, (h, w, c) = "NHWC", (dims[1], dims[2], dims[3])  # tf2onnx: NHWC input
        current = first.output[0]
    g.channels = c
    node = _read_base(g, current)
    side = (None if h is None else h // 32, None if w is None else w // 32)
    info: dict[str, object] = {
        "input_shape": (h, w, c),
        "input_layout": layout,
        "classifier_activation": None,
        "tensor_names": g.names,
        "note": "",
    }
    try:
        info["classifier_activation"] = _read_head(g, node, side)
    except _NotAHead as why:
        g.names.pop("flatten", None)
        try:  # a head of its own (transfer learning)
            layers, tensors, names, activation = onnx_heads.read_head(
                g.walk, model.graph, node, channels=g.channels, side=side, where=where
            )
        except FileFormatError as error:
            # The nodes after the base that nothing read: compare refuses to check a subset.
            info["unread_ops"] = unread = _remaining(g.walk, node)
            ops = ", ".join(unread)
            info["note"] = (
                f"convolutional base only; the head is not VGG's ({why}: {ops}) "
                f"nor one vgg_np reads ({str(error).removeprefix(where + ': ')})"
            )
        else:
            g.tensors.update(tensors)
            g.names.update(names)
            info.update(head=tuple(layers), classifier_activation=activation)
    note = f"; {info['note']}" if info["note"] else ""
    description = f"onnx ({layout} input{note})"
    provenance = _provenance(model, description, layout, (h, w) if h and w else None, where)
    return WeightSource(g.tensors, provenance, info, where, "onnx")


@contextlib.contextmanager
def open_onnx(path: str | os.PathLike, where: str | None = None) -> Iterator[WeightSource]:
    """Open an ONNX model (read whole: the tensors live in the parsed model)."""
    yield read_onnx(path, where)
