"""Training a VGG: a forward pass that keeps what backward needs, the gradients, SGD.

`loss_and_gradients` runs the network on a batch in training mode, keeping exactly what
the backward pass needs (`Tape`, as the layer tables say), computes the mean softmax
cross-entropy and every trained parameter's gradient, layer by layer from the top, and
updates the batch norms' running statistics as the weights' framework does
(`vgg_np.train.batch_norm`). The layers compute what `vgg_np.layers.forward` and each
kind's `vgg_np.backward` call define; convolutions and pools run on the inference engine
and their gradients by GEMMs and the engine (`vgg_np.train.fast`), both tested against
those definitions, and nothing is computed below the lowest trained layer but its
forward pass. `SGD` applies PyTorch's momentum and weight decay. Dropout (inverted, with
`rate`) follows each hidden dense layer in training only, as in the original VGG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from vgg_np import backward
from vgg_np.engine.threads import BLAS_SINGLE
from vgg_np.layers import ACTIVATIONS, KINDS, Layer, forward
from vgg_np.model import VGG  # noqa: F401 (the examples build one)
from vgg_np.train import fast
from vgg_np.train.batch_norm import RunningStatistics, choose_statistics

__all__ = ["SGD", "Tape", "loss_and_gradients", "shapes_dataset"]

#: Elements of a tensor `SGD` updates in one go (256 KiB of float32 per array: the chunk
#: of the weights, gradient, velocity and new weights together stay in a core's L2).
SGD_CHUNK = 1 << 16


class _Trainable(Protocol):
    """What training reads and writes of a model: a `VGG`, or `vgg_np.train.loop.Top`."""

    @property
    def layers(self) -> Sequence[Layer]: ...

    @property
    def weights(self) -> dict[str, tuple[np.ndarray, ...]]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def include_top(self) -> bool: ...

    def set_weights(self, weights: Mapping[str, tuple[ArrayLike, ...]]) -> None: ...


#: Classes of `shapes_dataset`.
SHAPES = ("horizontal stripes", "vertical stripes", "checkerboard", "disc")


@dataclass
class Tape:
    """What one forward pass kept for its backward pass, per layer name.

    Each layer keeps the arrays its kind and activation name in their ``keeps``
    (`vgg_np.layers.KINDS`, `vgg_np.layers.ACTIVATIONS`), its dropout output if any,
    and its ``"input_shape"`` (a tuple: no array memory).

    Attributes
    ----------
    kept : dict
        Layer name -> what it kept; ``"loss"`` -> ``{"logits": ...}``.
    running : dict
        Batch norm name -> its running (mean, variance) after this step, for every batch
        norm that ran on the batch's statistics.
    statistics : str
        Whose running-statistics conventions were followed, and why.

    Examples
    --------
    >>> Tape().nbytes()
    0
    """

    kept: dict[str, dict[str, np.ndarray | tuple]] = field(default_factory=dict)
    running: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    statistics: str = ""

    def nbytes(self, layer: str | None = None) -> int:
        """Return the array bytes kept by one layer (or all of them); see the class example."""
        layers = [layer] if layer else list(self.kept)
        return sum(
            a.nbytes
            for name in layers
            for a in self.kept.get(name, {}).values()
            if isinstance(a, np.ndarray)
        )


def loss_and_gradients(
    model: _Trainable,
    x: ArrayLike,
    labels: ArrayLike,
    *,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
    trainable: set[str] | None = None,
    statistics: str | RunningStatistics | Mapping[str, RunningStatistics] | None = None,
    update_statistics: bool = True,
) -> tuple[float, dict[str, tuple[np.ndarray, ...]], Tape]:
    """Return the mean cross-entropy of `model` on a batch and the gradient of every weight.

    Parameters
    ----------
    model : VGG
        With the top; computed in its dtype (float64 for gradient checks). Anything with
        a `VGG`'s ``layers``, ``weights``, ``dtype`` and ``set_weights`` will do (the
        layers above a cached base, `vgg_np.train`).
    x : array_like, shape (N, H, W, C)
        Preprocessed images (or the input of the model's first layer).
    labels : array_like of int, shape (N,)
    dropout : float, default 0.0
        Drop probability after each hidden dense layer. ``dropout`` layers drop
        (training mode) either way.
    rng : numpy.random.Generator, optional
        Required when `dropout` > 0 or the model has `dropout` layers.
    trainable : set of str, optional
        Layers whose gradients to return (all by default); the backward pass stops below
        the lowest of them, so fine-tuning the top is cheap.
    statistics : {"torch", "keras"}, RunningStatistics or dict, optional
        Whose conventions the batch norms follow (`vgg_np.train.batch_norm`; a dict
        gives each batch norm's by name): by default the weights' family's, else each
        one's epsilon's. Batch norms normalise with the batch's statistics, but under
        Keras's conventions those not in `trainable` run on their running statistics
        (Keras's ``trainable=False``).
    update_statistics : bool, default True
        Write the batch norms' new running statistics into `model` (``set_weights``),
        as a framework's training step does; ``Tape.running`` holds them either way.

    Returns
    -------
    loss : float
    gradients : dict
        Layer name -> the gradients of its trained tensors ((dkernel, dbias), or
        (dgamma, dbeta)).
    tape : Tape
        What the forward pass kept, the new running statistics, and whose conventions.

    Raises
    ------
    ValueError
        Without a classifier, through a layer with no backward, or when nothing tells
        the batch norms' conventions.

    Examples
    --------
    >>> from vgg_np.model import VGGConfig
    >>> tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(8,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0, classifier_activation=None)
    >>> loss, grads, tape = loss_and_gradients(model, np.ones((2, 32, 32, 3)), [0, 2])
    >>> grads["block1_conv1"][0].shape, grads["predictions"][1].shape
    ((3, 3, 3, 2), (3,))
    """
    if not getattr(model, "include_top", True):
        raise ValueError("training needs the classifier: build the model with include_top=True")
    # The loss takes the logits: the classifier's softmax is part of softmax_cross_entropy.
    *base, last = model.layers
    layers = [*base, replace(last, activation=None)]
    weights = model.weights
    names = [layer.name for layer in layers]
    trainable = set(trainable) if trainable is not None else {n for n in names if n in weights}
    lowest = min((names.index(n) for n in trainable), default=len(names))
    _check_backward(layers[lowest:])
    provenance = getattr(model, "weights_provenance", None)
    rules, why = choose_statistics(layers, provenance, statistics)
    frozen = {n for n, rule in rules.items() if rule.frozen_in_inference} - trainable
    tape = Tape(statistics=why)
    run = _Forward(weights, tape, set(names[lowest:]), frozen, rules)
    with BLAS_SINGLE:  # the GEMMs share our threads (vgg_np.train.fast), BLAS's stay idle
        logits = run(layers, np.asarray(x, dtype=model.dtype), dropout, rng)
        loss, grad = backward.softmax_cross_entropy(logits, labels)
        tape.kept["loss"] = {"logits": logits}
        gradients = _backward(layers, weights, tape, grad, lowest, frozen)
    if update_statistics and tape.running:
        model.set_weights(
            {**weights, **{n: (*weights[n][:2], *tape.running[n]) for n in tape.running}}
        )
    return loss, {n: g for n, g in gradients.items() if n in trainable}, tape


def _check_backward(layers: Sequence[Layer]) -> None:
    """Refuse to train through a layer (or activation) that has no backward."""
    stuck = [
        f"{layer.name} ({layer.kind}, {layer.activation})"
        for layer in layers
        if KINDS[layer.kind].backward is None or ACTIVATIONS[layer.activation].backward is None
    ]
    if stuck:
        raise ValueError(f"training through {', '.join(stuck)} is not supported: no backward")


class _Forward:
    """The training forward pass: runs of layers on the engine or the reference kernels.

    Convolutions, pools, flatten, dense and dropout rows run fast (`vgg_np.train.fast`);
    batch norms through `vgg_np.layers.forward` in training mode, but Keras's frozen ones
    in inference mode. Layers from the lowest trained one keep what their backward
    needs; every batch norm on the batch's statistics gets its new running statistics.
    """

    def __init__(self, weights: Mapping, tape: Tape, recorded: set, frozen: set, rules: dict):
        self.weights, self.tape, self.recorded = weights, tape, recorded
        self.frozen, self.rules = frozen, rules

    def record(self, layer: Layer, values: dict) -> None:
        if layer.kind == "batch_norm" and layer.name not in self.frozen:
            statistics = self.weights[layer.name][2:]
            self.tape.running[layer.name] = self.rules[layer.name].update(
                statistics, values["input"]
            )
        if layer.name in self.recorded:
            keeps = KINDS[layer.kind].keeps + ACTIVATIONS[layer.activation].keeps
            kept = {name: values[name] for name in (*keeps, "kept_scaled") if name in values}
            self.tape.kept[layer.name] = {**kept, "input_shape": values["input"].shape}

    def runs(self, layers: Sequence[Layer], dtype: np.dtype) -> list[tuple[str, list[Layer]]]:
        """Group consecutive layers by how they run: "fast", "train" or "frozen"."""
        groups: list[tuple[str, list[Layer]]] = []
        for layer in layers:
            how = "train"
            if fast.runs_fast(layer) and dtype in fast.FAST_DTYPES:
                how = "fast"
            elif layer.name in self.frozen:
                how = "frozen"
            if groups and groups[-1][0] == how:
                groups[-1][1].append(layer)
            else:
                groups.append((how, [layer]))
        return groups

    def __call__(
        self,
        layers: Sequence[Layer],
        x: np.ndarray,
        dropout: float,
        rng: np.random.Generator | None,
    ) -> np.ndarray:
        for how, run in self.runs(layers, x.dtype):
            keep = any(layer.name in self.recorded for layer in run)
            if how == "fast":
                hook = self.record if keep else None
                x = fast.forward_fast(run, self.weights, x, hook, dropout=dropout, rng=rng)
            else:
                x = forward(
                    run, self.weights, x, dropout=dropout, training=how == "train", rng=rng,
                    hook=self.record,
                )  # fmt: skip
        return x


def _layer_backward(
    layer: Layer,
    params: tuple | None,
    kept: dict,
    grad: np.ndarray,
    need_dx: bool,
    frozen: bool,
) -> tuple:
    """One layer's (dx, *parameter gradients); dx None where nothing below needs it."""
    if layer.kind not in ("conv", "dense") and not frozen:  # only batch norms are frozen
        kind_backward = KINDS[layer.kind].backward
        assert kind_backward is not None  # every trained kind has one
        return kind_backward(layer, params, kept, grad)
    assert params is not None, f"{layer.name} ({layer.kind}) has no tensors"
    if layer.kind == "conv":
        return fast.conv_gradients(kept["input"], params[0], grad, input_gradient=need_dx)
    if layer.kind == "dense":
        return fast.dense_gradients(kept["input"], params[0], grad, input_gradient=need_dx)
    # A frozen batch norm, on its running statistics: a constant scale, nothing trained.
    return (fast.frozen_batch_norm_backward(params, grad, eps=layer.eps),)


def _backward(
    layers: Sequence[Layer],
    weights: Mapping[str, tuple],
    tape: Tape,
    grad: np.ndarray,
    lowest: int,
    frozen: set[str],
) -> dict[str, tuple]:
    """Every layer's parameter gradients, from the loss's gradient down to `lowest`."""
    gradients: dict[str, tuple] = {}
    for index in range(len(layers) - 1, lowest - 1, -1):
        layer = layers[index]
        kept = tape.kept[layer.name]
        if "kept_scaled" in kept:  # dropout, with the forward's own mask
            grad = backward.dropout_backward(kept["output"], kept["kept_scaled"], grad)
        activation_backward = ACTIVATIONS[layer.activation].backward
        assert activation_backward is not None  # a `stuck` activation never trains
        # No "output" is kept where the activation needs none (the identity's backward).
        grad = activation_backward(kept.get("output"), grad)  # type: ignore[arg-type]
        params = weights.get(layer.name)
        need_dx = index > lowest
        grad, *parameter_grads = _layer_backward(
            layer, params, kept, grad, need_dx, layer.name in frozen
        )
        if parameter_grads:
            gradients[layer.name] = tuple(parameter_grads)
    return gradients


class SGD:
    """Stochastic gradient descent with momentum and weight decay, as PyTorch defines it.

    ``v = momentum * v + (g + weight_decay * w)``; ``w -= lr * v``, for kernels and biases.

    Examples
    --------
    >>> from vgg_np.model import VGGConfig
    >>> tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(8,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0, classifier_activation=None)
    >>> before = model.weights["predictions"][1].copy()
    >>> SGD(lr=0.1).step(model, {"predictions": (np.zeros((8, 3)), np.ones(3))})
    >>> model.weights["predictions"][1] - before
    array([-0.1, -0.1, -0.1], dtype=float32)
    """

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                "need lr > 0, 0 <= momentum < 1 and weight_decay >= 0, got "
                f"{lr}, {momentum}, {weight_decay}"
            )
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity: dict[str, list[np.ndarray]] = {}

    def step(self, model: _Trainable, gradients: dict) -> None:
        """Update the model's weights in place from `gradients` (see the class example)."""
        weights = model.weights
        for name, grads in gradients.items():
            # The first len(grads) tensors train; the rest (running statistics) stay.
            trained, kept = weights[name][: len(grads)], weights[name][len(grads) :]
            velocity = state_arrays(self.velocity, name, trained, 1)
            in_place = getattr(model, "owns_weights", False)
            new = [
                self._update(*t, in_place=in_place)
                for t in zip(trained, grads, velocity, strict=True)
            ]
            weights[name] = (*new, *kept)
        model.set_weights(weights)

    def _update(
        self, w: np.ndarray, g: np.ndarray, v: np.ndarray, *, in_place: bool = False
    ) -> np.ndarray:
        """Return the new `w` (see `update_in_chunks`) and update `v` in place.

        Per element: ``v = momentum * v + g (+ decay * w)``, ``w = w + (-lr * v)``: `w`, `g`
        and `v` read from memory once, `v` and the new `w` written once.
        """
        w_flat, g_flat = np.ravel(w), np.ravel(np.asarray(g, w.dtype))  # C order, as out
        assert v.flags.c_contiguous, "the velocity is updated through a flat view"
        v_flat = v.reshape(-1)  # a view
        momentum, decay, step = self.momentum, self.weight_decay, -self.lr

        def chunk(c: slice, out: np.ndarray, scratch: list[np.ndarray]) -> None:
            vs, ws, (ss,) = v_flat[c], w_flat[c], scratch
            vs *= momentum
            vs += g_flat[c]
            if decay:
                vs += np.multiply(ws, decay, out=ss)
            np.add(ws, np.multiply(vs, step, out=ss), out=out)  # w + (-lr * v)

        return update_in_chunks(w, chunk, in_place=in_place)


def state_arrays(
    state: dict[str, list[np.ndarray]], name: str, trained: Sequence[np.ndarray], per: int
) -> list[np.ndarray]:
    """Return an optimizer's arrays for layer `name`: `per` per trained tensor, zeros first.

    In C order whatever the weights' (a Fortran kernel, a transposed view) or the order
    they were given or loaded in: the update writes them through flat views
    (``a.reshape(-1)``), which of an array in another order would be a copy, and the
    update lost.

    Examples
    --------
    >>> state = {}
    >>> kernel = np.asfortranarray(np.ones((2, 3)))
    >>> [a.flags.c_contiguous for a in state_arrays(state, "fc", [kernel], 2)]
    [True, True]
    >>> state_arrays(state, "fc", [kernel], 2) is state["fc"]  # made once
    True
    """
    if name not in state:  # (setdefault would allocate them every step)
        state[name] = [np.zeros(w.shape, w.dtype) for w in trained for _ in range(per)]
    arrays = state[name]
    for i, a in enumerate(arrays):  # one set by the user in another order
        if not a.flags.c_contiguous:
            arrays[i] = np.array(a, order="C")
    return arrays


def update_in_chunks(
    w: np.ndarray,
    chunk: Callable[[slice, np.ndarray, list[np.ndarray]], None],
    *,
    in_place: bool = False,
    scratch: int = 1,
) -> np.ndarray:
    """Return the new `w` of an optimizer's elementwise update, on the step's threads.

    Each thread walks its slice of the flattened tensor in chunks of `SGD_CHUNK` elements
    and calls ``chunk(c, out, scratch)`` for each: `c` the chunk's slice of the flat
    tensors, `out` where the new values go, `scratch` that many arrays of the chunk's
    size. Every pass over a chunk is made before the next chunk: it stays in the core's
    cache, so each tensor is read from memory once and each result written once (not
    once per pass, 15 streams for SGD's whole-tensor passes). Each element is computed by
    the same operations in the same order whatever the chunking or the threads.

    `out` is `w` itself where `in_place` (a model that owns its arrays,
    `vgg_np.train.loop.Top`: no new 25 MB array for a head's kernel each step) and `w`
    is writeable and contiguous; else a new array (a `VGG`'s old arrays may be held
    elsewhere, and its engine is packed again from the new ones). `chunk` reads `w`
    before it writes `out` (they may be the same memory).

    Examples
    --------
    >>> w = np.arange(5.0)
    >>> def halve(c, out, scratch):
    ...     np.multiply(w[c], 0.5, out=out)
    >>> update_in_chunks(w, halve), w
    (array([0. , 0.5, 1. , 1.5, 2. ]), array([0., 1., 2., 3., 4.]))
    """
    in_place = in_place and w.flags.writeable and w.flags.c_contiguous
    # A new array in C order whatever `w`'s (a transposed view, a Fortran kernel): the
    # results are written through `out_flat`, which must be a view of `out`, not a copy;
    # the chunks of a flat tensor are `np.ravel`'s (C order) too.
    out = w if in_place else np.empty(w.shape, w.dtype)
    out_flat = out.reshape(-1)  # a view: out is C-contiguous

    def part(i0: int, i1: int) -> None:
        buffers = [np.empty(min(SGD_CHUNK, i1 - i0), w.dtype) for _ in range(scratch)]
        for c0 in range(i0, i1, SGD_CHUNK):
            c1 = min(c0 + SGD_CHUNK, i1)
            chunk(slice(c0, c1), out_flat[c0:c1], [b[: c1 - c0] for b in buffers])

    fast.map_slices(part, w.size)
    return out


def shapes_dataset(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` noisy RGB pictures of four classes (`SHAPES`), balanced.

    Stripes and checkerboards of random period and phase, discs of random centre and
    radius; each class draws its foreground colour around its own dominant channel (the
    disc class on a darker background); Gaussian noise. A small task, nothing downloaded.

    Returns
    -------
    images : ndarray of uint8, shape (n, size, size, 3)
    labels : ndarray of int64, shape (n,)

    Examples
    --------
    >>> images, labels = shapes_dataset(8, size=16)
    >>> images.shape, labels.tolist()
    ((8, 16, 16, 3), [0, 1, 2, 3, 0, 1, 2, 3])
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.arange(n) % len(SHAPES)
    for k, label in enumerate(labels):
        period, phase = rng.uniform(4, 10), rng.uniform(0, 2 * np.pi)
        if label == 0:
            pattern = np.sin(2 * np.pi * y / period + phase) > 0
        elif label == 1:
            pattern = np.sin(2 * np.pi * x / period + phase) > 0
        elif label == 2:
            pattern = (np.sin(2 * np.pi * x / period + phase) > 0) ^ (
                np.sin(2 * np.pi * y / period) > 0
            )
        else:
            cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
            r = rng.uniform(size * 0.15, size * 0.35)
            pattern = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        # Each class has its own palette (a dominant channel), so that even the random
        # features of an untrained convolutional base can tell the classes apart.
        fg = rng.uniform(0, 100, 3)
        fg[label % 3] += 155
        bg = rng.uniform(0, 255, 3) * (0.3 if label == 3 else 1.0)
        picture = np.where(pattern[..., None], fg, bg) + rng.normal(0, 20, (size, size, 3))
        images[k] = np.clip(picture, 0, 255).astype(np.uint8)
    return images, labels
