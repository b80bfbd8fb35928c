"""The layer kinds as one table, and the reference forward pass that runs it.

A network is a list of `Layer` rows (`vgg_np.config.layer_table` builds VGG's). What a
row *does* is looked up by its kind in `KINDS`: its output shape, its parameters, its
forward pass (the `vgg_np.ops` call) and backward pass (the `vgg_np.backward` call), and
what a training pass keeps for that backward pass. Activations, applied after a layer,
have their own table, `ACTIVATIONS`. The summary, the weight checks, `forward`, the
engine's non-convolution layers and training all read these two tables, so a new kind
of layer is one entry here plus its kernels.

`forward` composes the teaching kernels: it is the definition of the network that the
fast engine (`vgg_np.engine`) and every other implementation are checked against.
Like the kernels, this module needs NumPy alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import backward, ops

__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "OUTPUT_KINDS",
    "Activation",
    "Kind",
    "Layer",
    "LayerShape",
    "forward",
    "output_kind",
    "shapes",
]


@dataclass(frozen=True)
class Layer:
    """One row of a layer table.

    Attributes
    ----------
    name : str
        Keras layer name.
    kind : str
        A key of `KINDS`: ``"conv"``, ``"pool"``, ``"adaptive_avg"``, ``"flatten"``,
        ``"dense"``, ``"global_avg"``, ``"global_max"``, ``"batch_norm"``, ``"dropout"``,
        ``"activation"``.
    units : int
        Output channels of a convolution, outputs of a dense layer, output size of an
        adaptive pool; 0 otherwise.
    activation : {"relu", "softmax", "sigmoid", "tanh", None}
        A key of `ACTIVATIONS`, applied after the layer.
    eps : float
        Batch normalisation only: the epsilon of its framework (PyTorch 1e-5, Keras 1e-3),
        carried per layer because a file may mix them.
    rate : float
        Dropout only: the drop probability in training (identity at inference).

    Examples
    --------
    >>> Layer("block1_conv1", "conv", 64, "relu")
    Layer(name='block1_conv1', kind='conv', units=64, activation='relu')
    >>> Layer("bn", "batch_norm", eps=1e-3)
    Layer(name='bn', kind='batch_norm', eps=0.001)
    """

    name: str
    kind: str
    units: int = 0
    activation: str | None = None
    eps: float = 0.0
    rate: float = 0.0

    def __repr__(self) -> str:
        # The fields that say something about this kind: a conv row reads as it always did.
        fields = {"name": self.name, "kind": self.kind, "units": self.units}
        fields |= {"activation": self.activation, "eps": self.eps, "rate": self.rate}
        shown = [f"{k}={v!r}" for k, v in fields.items() if v or k in ("name", "kind")]
        return f"Layer({', '.join(shown)})"


@dataclass(frozen=True)
class Kind:
    """Everything that depends on a layer's kind: one entry of `KINDS`.

    Shapes are per image, without N (``(H, W, C)`` or ``(units,)``); None stands for a
    size that is not known before the input is seen.

    Attributes
    ----------
    output_shape : callable
        ``(layer, input shape) -> output shape``.
    forward : callable
        ``(layer, params, x) -> y``: the `vgg_np.ops` call, before the layer's
        activation; `params` is the layer's tuple of tensors (None without parameters).
    train_forward : callable or None
        ``(layer, params, x, rng) -> y`` in training, where a kind behaves differently
        (batch statistics, dropout); None: as `forward`.
    backward : callable or None
        ``(layer, params, kept, dy) -> (dx, *parameter gradients)``: the
        `vgg_np.backward` call. `kept` holds what the forward pass kept (`keeps`) and
        ``"input_shape"``. None: the kind cannot be trained through (yet).
    parameters : tuple of str
        Names of the layer's tensors, in the order they are stored (``weights[name]``).
    trained : int or None
        How many of the first `parameters` `backward` returns gradients for (batch
        normalisation: gamma and beta, not its running statistics); None: all of them.
    parameter_shapes : callable or None
        ``(layer, input shape) -> one shape per name in parameters``; None without
        parameters.
    initial : callable or None
        ``(shapes, rng) -> tensors``: seeded initial values, in float32
        (`vgg_np.model.VGG.he_normal`).
    keeps : tuple of str
        What a training pass keeps for `backward`: ``"input"`` (the layer's input),
        ``"output"`` (its output, after the activation).
    view : bool
        Its output is a view of its input, with no memory of its own.
    dropout_after : bool
        In training, dropout may follow its ReLU (the classifier's hidden layers, as
        in the original VGG).

    Examples
    --------
    >>> conv = KINDS["conv"]
    >>> conv.output_shape(Layer("c", "conv", 64), (224, 224, 3))
    (224, 224, 64)
    >>> dict(zip(conv.parameters, conv.parameter_shapes(Layer("c", "conv", 64), (224, 224, 3))))
    {'kernel': (3, 3, 3, 64), 'bias': (64,)}
    """

    output_shape: Callable[[Layer, tuple], tuple]
    forward: Callable[[Layer, tuple | None, np.ndarray], np.ndarray]
    train_forward: Callable | None = None
    backward: Callable[[Layer, tuple | None, dict, np.ndarray], tuple] | None = None
    parameters: tuple[str, ...] = ()
    trained: int | None = None
    parameter_shapes: Callable[[Layer, tuple], tuple[tuple, ...]] | None = None
    initial: Callable[[tuple[tuple, ...], np.random.Generator], tuple] | None = None
    keeps: tuple[str, ...] = ()
    view: bool = False
    dropout_after: bool = False


def _tensors(params: tuple | None) -> tuple:
    """Return a kind's tensors: `forward` passes None only to kinds without `parameters`."""
    assert params is not None, "a kind with parameters was called without its tensors"
    return params


def _halve(size: int | None) -> int | None:
    return None if size is None else size // 2


def _he_normal(shapes: tuple[tuple, ...], rng: np.random.Generator) -> tuple:
    """Draw a He-normal kernel, ``N(0, 2 / fan_in)``, then an ``N(0, 0.1**2)`` bias (float32).

    ``fan_in`` is every kernel axis but the last (``KH * KW * C``, or ``in``), so ReLU
    activations keep their scale through the network.
    """
    kernel_shape, bias_shape = shapes
    kernel = rng.standard_normal(kernel_shape, dtype=np.float32)
    kernel *= np.float32(math.sqrt(2.0 / math.prod(kernel_shape[:-1])))
    bias = rng.standard_normal(bias_shape, dtype=np.float32) * np.float32(0.1)
    return kernel, bias


#: The layer kinds, keyed by `Layer.kind`. Shapes in the comments are of the batch.
KINDS: dict[str, Kind] = {
    # 3x3 "same" convolution, stride 1, as im2col + one GEMM: (N, H, W, C) -> (N, H, W, O)
    "conv": Kind(
        output_shape=lambda layer, shape: (shape[0], shape[1], layer.units),
        forward=lambda layer, params, x: ops.conv2d(x, *_tensors(params), padding="same"),
        backward=lambda layer, params, kept, dy: backward.conv2d_backward(
            kept["input"], _tensors(params)[0], dy, padding="same"
        ),  # dx, dkernel, dbias
        parameters=("kernel", "bias"),
        parameter_shapes=lambda layer, shape: ((3, 3, shape[2], layer.units), (layer.units,)),
        initial=_he_normal,
        keeps=("input",),
    ),
    # 2x2 max-pool, stride 2: (N, H, W, C) -> (N, H // 2, W // 2, C)
    "pool": Kind(
        output_shape=lambda layer, shape: (_halve(shape[0]), _halve(shape[1]), shape[2]),
        forward=lambda layer, params, x: ops.max_pool2d(x, 2),
        backward=lambda layer, params, kept, dy: (
            backward.max_pool2d_backward(kept["input"], dy, 2),
        ),
        keeps=("input",),
    ),
    # torchvision's AdaptiveAvgPool2d((n, n)), n = units: (N, H, W, C) -> (N, n, n, C)
    "adaptive_avg": Kind(
        output_shape=lambda layer, shape: (layer.units, layer.units, shape[2]),
        forward=lambda layer, params, x: ops.adaptive_avg_pool2d(x, layer.units),
    ),
    # Keras's Flatten, H then W then C: (N, H, W, C) -> (N, H*W*C)
    "flatten": Kind(
        output_shape=lambda layer, shape: (None if None in shape else math.prod(shape),),
        forward=lambda layer, params, x: ops.flatten(x),
        backward=lambda layer, params, kept, dy: (
            backward.flatten_backward(dy, kept["input_shape"]),
        ),
        view=True,
    ),
    # x @ kernel + bias: (N, in) @ (in, units) -> (N, units)
    "dense": Kind(
        output_shape=lambda layer, shape: (layer.units,),
        forward=lambda layer, params, x: ops.dense(x, *_tensors(params)),
        backward=lambda layer, params, kept, dy: backward.dense_backward(
            kept["input"], _tensors(params)[0], dy
        ),  # dx, dkernel, dbias
        parameters=("kernel", "bias"),
        parameter_shapes=lambda layer, shape: ((shape[-1], layer.units), (layer.units,)),
        initial=_he_normal,
        keeps=("input",),
        dropout_after=True,
    ),
    # Keras's GlobalAveragePooling2D: (N, H, W, C) -> (N, C)
    "global_avg": Kind(
        output_shape=lambda layer, shape: (shape[2],),
        forward=lambda layer, params, x: ops.global_avg_pool2d(x),
        backward=lambda layer, params, kept, dy: (
            backward.global_avg_pool2d_backward(dy, kept["input_shape"]),
        ),
    ),
    # Keras's GlobalMaxPooling2D: (N, H, W, C) -> (N, C)
    "global_max": Kind(
        output_shape=lambda layer, shape: (shape[2],),
        forward=lambda layer, params, x: ops.global_max_pool2d(x),
        backward=lambda layer, params, kept, dy: (
            backward.global_max_pool2d_backward(kept["input"], dy),
        ),
        keeps=("input",),
    ),
    # Batch normalisation with running statistics (inference): (N, H, W, C) or (N, C), same
    # shape; in training, the batch's own statistics. Backward gives d(gamma), d(beta):
    # the running statistics are data, not trained (and not updated by vgg_np.train).
    "batch_norm": Kind(
        output_shape=lambda layer, shape: shape,
        forward=lambda layer, params, x: ops.batch_norm(x, *_tensors(params), eps=layer.eps),
        train_forward=lambda layer, params, x, rng: ops.batch_norm(
            x, _tensors(params)[0], _tensors(params)[1], *ops.batch_moments(x), eps=layer.eps
        ),  # gamma and beta with the batch's statistics, not the running ones
        backward=lambda layer, params, kept, dy: backward.batch_norm_backward(
            kept["input"], _tensors(params)[0], dy, eps=layer.eps
        ),  # dx, dgamma, dbeta
        parameters=("gamma", "beta", "moving_mean", "moving_variance"),
        trained=2,
        parameter_shapes=lambda layer, shape: ((shape[-1],),) * 4,
        initial=lambda shapes, rng: tuple(
            np.full(s, v, np.float32) for s, v in zip(shapes, (1, 0, 0, 1), strict=True)
        ),
        keeps=("input",),
    ),
    # An activation as a layer of its own (Keras's ``Activation``): the identity, then
    # `layer.activation`, which trains through its own backward.
    "activation": Kind(
        output_shape=lambda layer, shape: shape,
        forward=lambda layer, params, x: x,
        backward=lambda layer, params, kept, dy: (dy,),
    ),
    # Dropout: the identity at inference; in training, inverted dropout at `layer.rate`.
    "dropout": Kind(
        output_shape=lambda layer, shape: shape,
        forward=lambda layer, params, x: x,
        train_forward=lambda layer, params, x, rng: ops.dropout(
            x, layer.rate, training=True, rng=rng
        ),
        backward=lambda layer, params, kept, dy: (
            backward.dropout_backward(kept["input"], kept["output"], dy),
        ),
        keeps=("input", "output"),
        view=True,
    ),
}


@dataclass(frozen=True)
class Activation:
    """An activation applied after a layer: one entry of `ACTIVATIONS`.

    Attributes
    ----------
    forward : callable
        ``z -> y``, the `vgg_np.ops` call.
    backward : callable or None
        ``(y, dy) -> dz`` from the activation's output `y`; None where training folds
        it into the loss (softmax, in `vgg_np.backward.softmax_cross_entropy`).
    keeps : tuple of str
        What a training pass keeps for `backward`: ``"output"``.

    Examples
    --------
    >>> relu = ACTIVATIONS["relu"]
    >>> relu.forward(np.array([-1.0, 2.0])), relu.backward(np.array([0.0, 2.0]), np.ones(2))
    (array([0., 2.]), array([0., 1.]))
    """

    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    keeps: tuple[str, ...] = ()


#: The activations, keyed by `Layer.activation`.
ACTIVATIONS: dict[str | None, Activation] = {
    None: Activation(forward=lambda z: z, backward=lambda y, dy: dy),
    # ReLU's mask from its output: y > 0 exactly where z > 0.
    "relu": Activation(forward=ops.relu, backward=backward.relu_backward, keeps=("output",)),
    "softmax": Activation(forward=ops.softmax),
    # Their derivatives from the output: s * (1 - s) and 1 - t**2.
    "sigmoid": Activation(
        forward=ops.sigmoid, backward=backward.sigmoid_backward, keeps=("output",)
    ),
    "tanh": Activation(forward=ops.tanh, backward=backward.tanh_backward, keeps=("output",)),
}


def _check_table(layers: Sequence[Layer], weights: Mapping) -> None:
    unknown = [f"{layer.name} ({layer.kind!r})" for layer in layers if layer.kind not in KINDS]
    if unknown:
        raise ValueError(f"`layers` has kinds not in {sorted(KINDS)}: {', '.join(unknown)}")
    unknown = [
        f"{layer.name} ({layer.activation!r})"
        for layer in layers
        if layer.activation not in ACTIVATIONS
    ]
    if unknown:
        raise ValueError(f"`layers` has activations not in ACTIVATIONS: {', '.join(unknown)}")
    missing = [
        layer.name for layer in layers if KINDS[layer.kind].parameters and layer.name not in weights
    ]
    if missing:
        raise ValueError(f"`weights` has no tensors for the layers {', '.join(missing)}")


def forward(
    layers: Sequence[Layer],
    weights: Mapping[str, tuple[ArrayLike, ...]],
    x: ArrayLike,
    *,
    dropout: float = 0.0,
    training: bool = False,
    rng: np.random.Generator | None = None,
    hook: Callable[[Layer, dict[str, np.ndarray]], None] | None = None,
) -> NDArray[np.floating]:
    """Run a layer table on a batch with the teaching kernels: the reference forward pass.

    Each layer is its kind's `vgg_np.ops` call (`KINDS`: ``conv2d`` as im2col and one
    GEMM, ``max_pool2d``, ``flatten``, ``dense``, ...) followed by its activation
    (`ACTIVATIONS`: ``relu``, ``softmax``); in training, ``dropout`` after each hidden
    dense layer. Nothing is fused or reordered: this is the network's definition, slow
    and plain, which `vgg_np.engine` is tested against. ``VGG(conv_algorithm="reference")``
    runs it.

    Parameters
    ----------
    layers : sequence of Layer
        The layer table, e.g. ``model.layers``.
    weights : mapping
        Layer name -> tuple of tensors in the order of the kind's ``parameters``
        (``(kernel, bias)``, Keras layout), e.g. ``model.weights``.
    x : array_like, shape (N, H, W, C)
        Preprocessed images; the dtype of `x` and the weights is the compute dtype.
    dropout : float, default 0.0
        Training only: the rate of inverted dropout after each hidden dense layer's
        ReLU (`vgg_np.ops.dropout`). 0 is inference.
    training : bool, default False
        Run the kinds that train differently in training mode (their ``train_forward``:
        batch normalisation with the batch's statistics, ``dropout`` layers dropping).
    rng : numpy.random.Generator, optional
        The dropout masks' source; required when `dropout` > 0 or a ``dropout`` layer
        trains.
    hook : callable, optional
        Called after each layer as ``hook(layer, values)``, `values` holding the
        layer's ``"input"``, its ``"output"`` (after the activation) and, with
        dropout, ``"kept_scaled"`` (after dropout, the next layer's input).
        `vgg_np.train` records its tape this way.

    Returns
    -------
    ndarray
        The output of the last layer.

    Raises
    ------
    ValueError
        On a kind or activation that is not in the tables, a layer without weights,
        or shapes that do not fit (named by the kernel that meets them).

    Examples
    --------
    >>> from vgg_np.config import VGGConfig, layer_table
    >>> tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(8,), default_size=32)
    >>> table = layer_table(tiny, classes=3)
    >>> weights = {"block1_conv1": (np.ones((3, 3, 3, 2)), np.zeros(2))}
    >>> x = np.ones((1, 32, 32, 3))
    >>> def show(layer, values):
    ...     print(layer.name, values["output"].shape)
    >>> y = forward(table[:2], weights, x, hook=show)
    block1_conv1 (1, 32, 32, 2)
    block1_pool (1, 16, 16, 2)
    >>> float(y.max())  # 27 ones under the kernel, ReLU, max
    27.0
    """
    _check_table(layers, weights)
    h = np.asarray(x)  # (N, H, W, C): each layer's input in turn
    for layer in layers:
        kind = KINDS[layer.kind]
        params = weights.get(layer.name)
        if training and kind.train_forward is not None:
            y = kind.train_forward(layer, params, h, rng)  # batch statistics, dropout
        else:
            y = kind.forward(layer, params, h)  # conv2d, max_pool2d, dense, batch_norm, ...
        y = ACTIVATIONS[layer.activation].forward(y)  # relu, softmax or the identity
        values = {"input": h, "output": y}
        if dropout and kind.dropout_after and layer.activation == "relu":
            y = values["kept_scaled"] = ops.dropout(y, dropout, training=True, rng=rng)
        if hook is not None:
            hook(layer, values)
        h = y  # (N, H, W, C) in the convolutional base, (N, units) in the classifier
    return h


class LayerShape(NamedTuple):
    """One layer of `shapes`: the layer and its per-image input and output shapes.

    Examples
    --------
    >>> shapes([Layer("p", "pool")], (9, 10, 3))[0].output
    (4, 5, 3)
    """

    layer: Layer
    input: tuple
    output: tuple


@runtime_checkable
class _HasLayers(Protocol):
    """Anything with a layer table: a `vgg_np.network.Network`, a `vgg_np.VGG`."""

    @property
    def layers(self) -> Sequence[Layer]:
        """The layer table."""
        ...


def shapes(layers: Sequence[Layer] | _HasLayers, input_shape: tuple) -> list[LayerShape]:
    """Walk a layer table's per-image shapes: the one place that computes them.

    The summary, the weight checks, the engine's planning, `predict`'s output array and
    the extraction stores' layout all read this walk.

    Parameters
    ----------
    layers : sequence of Layer, or anything with a ``layers`` attribute
        A layer table, or a `vgg_np.network.Network`.
    input_shape : tuple
        Per image, ``(H, W, C)``; H and W may be None (not known before the input).

    Returns
    -------
    list of LayerShape
        ``(layer, input shape, output shape)`` per layer, in order; None where a size
        depends on an unknown one.

    Examples
    --------
    >>> table = [Layer("c", "conv", 4, "relu"), Layer("p", "pool"), Layer("f", "flatten")]
    >>> [s.output for s in shapes(table, (32, 30, 3))]
    [(32, 30, 4), (16, 15, 4), (960,)]
    >>> [s.output for s in shapes(table, (None, None, 3))]
    [(None, None, 4), (None, None, 4), (None,)]
    """
    walk, shape = [], tuple(input_shape)
    for layer in layers.layers if isinstance(layers, _HasLayers) else layers:
        out = KINDS[layer.kind].output_shape(layer, shape)
        walk.append(LayerShape(layer, shape, out))
        shape = out
    return walk


#: What a network's output is, by how it ends (`output_kind`).
OUTPUT_KINDS = ("probabilities", "logits", "scores", "features")


def output_kind(layers: Sequence[Layer]) -> str:
    """Say what a layer table outputs: one of `OUTPUT_KINDS`.

    ``"probabilities"`` when the last activation is a softmax; ``"logits"`` when a
    classifier (a ``dense`` layer) ends with no activation; ``"scores"`` when it ends in
    another activation (sigmoid, tanh, relu: not a distribution); ``"features"``
    without a dense layer. Dropout rows are the identity at inference and are looked
    through, as is a linear ``activation`` row (Keras's ``Activation("linear")``), but an
    activation they carry counts.

    Examples
    --------
    >>> dense = Layer("out", "dense", 3)
    >>> output_kind([Layer("flatten", "flatten"), dense])
    'logits'
    >>> output_kind([dense, Layer("drop", "dropout", activation="softmax", rate=0.5)])
    'probabilities'
    >>> output_kind([Layer("out", "dense", 1, "sigmoid")]), output_kind([Layer("p", "pool")])
    ('scores', 'features')
    """
    if not any(layer.kind == "dense" for layer in layers):
        return "features"
    last = next(
        (
            layer
            for layer in reversed(layers)
            if layer.kind not in ("dropout", "activation") or layer.activation
        ),
        layers[-1],
    )
    if last.activation == "softmax":
        return "probabilities"
    return "logits" if last.activation is None else "scores"
