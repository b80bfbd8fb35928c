"""Training a VGG: the reference forward pass, backward with `vgg_np.backward`, SGD.

`loss_and_gradients` runs the network on a batch through `vgg_np.layers.forward`, keeping
exactly what the backward pass needs (`Tape`, as the layer tables say), computes the mean
softmax cross-entropy and every parameter's gradient, each layer's by its kind's backward
call; `SGD` applies PyTorch's momentum and weight decay. Dropout (inverted, with `rate`)
is applied after each hidden dense layer in training only, as in the original VGG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from vgg_np import backward
from vgg_np.layers import ACTIVATIONS, KINDS, Layer, forward
from vgg_np.model import VGG  # noqa: F401 (the examples build one)

__all__ = ["SGD", "Tape", "loss_and_gradients", "shapes_dataset"]


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

    Examples
    --------
    >>> Tape().nbytes()
    0
    """

    kept: dict[str, dict[str, np.ndarray | tuple]] = field(default_factory=dict)

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
) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]], Tape]:
    """Return the mean cross-entropy of `model` on a batch and the gradient of every weight.

    Parameters
    ----------
    model : VGG
        With the top; computed in its dtype (float64 for gradient checks).
    x : array_like, shape (N, H, W, C)
        Preprocessed images.
    labels : array_like of int, shape (N,)
    dropout : float, default 0.0
        Drop probability after each hidden dense layer. Batch normalisation uses the
        batch's statistics and `dropout` layers drop (training mode) either way.
    rng : numpy.random.Generator, optional
        Required when `dropout` > 0 or the model has `dropout` layers.
    trainable : set of str, optional
        Layers whose gradients to return (all by default); the backward pass stops below
        the lowest of them, so fine-tuning the top is cheap.

    Returns
    -------
    loss : float
    gradients : dict
        Layer name -> (dkernel, dbias).
    tape : Tape
        What the forward pass kept.

    Examples
    --------
    >>> from vgg_np.model import VGGConfig
    >>> tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(8,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0, classifier_activation=None)
    >>> loss, grads, tape = loss_and_gradients(model, np.ones((2, 32, 32, 3)), [0, 2])
    >>> grads["block1_conv1"][0].shape, grads["predictions"][1].shape
    ((3, 3, 3, 2), (3,))
    """
    if not model.include_top:
        raise ValueError("training needs the classifier: build the model with include_top=True")
    x = np.asarray(x, dtype=model.dtype)
    # The loss takes the logits: the classifier's softmax is part of softmax_cross_entropy.
    *base, last = model.layers
    layers = [*base, replace(last, activation=None)]
    names = [layer.name for layer in layers]
    trainable = (
        set(trainable) if trainable is not None else {n for n in names if n in model.weights}
    )
    lowest = min((names.index(n) for n in trainable), default=len(names))
    # Below the lowest trainable layer nothing flows back, and nothing is kept.
    stuck = [
        f"{layer.name} ({layer.kind}, {layer.activation})"
        for layer in layers[lowest:]
        if KINDS[layer.kind].backward is None or ACTIVATIONS[layer.activation].backward is None
    ]
    if stuck:
        raise ValueError(f"training through {', '.join(stuck)} is not supported: no backward")
    tape, recorded = Tape(), set(names[lowest:])

    def record(layer: Layer, values: dict) -> None:
        if layer.name in recorded:
            keeps = KINDS[layer.kind].keeps + ACTIVATIONS[layer.activation].keeps
            kept = {name: values[name] for name in (*keeps, "kept_scaled") if name in values}
            tape.kept[layer.name] = {**kept, "input_shape": values["input"].shape}

    logits = forward(layers, model.weights, x, dropout=dropout, training=True, rng=rng, hook=record)
    loss, grad = backward.softmax_cross_entropy(logits, labels)
    tape.kept["loss"] = {"logits": logits}
    gradients = {}
    for layer in reversed(layers[lowest:]):
        kept = tape.kept[layer.name]
        if "kept_scaled" in kept:  # dropout, with the forward's own mask
            grad = backward.dropout_backward(kept["output"], kept["kept_scaled"], grad)
        activation_backward = ACTIVATIONS[layer.activation].backward
        kind_backward = KINDS[layer.kind].backward
        assert activation_backward is not None and kind_backward is not None  # not `stuck`
        # No "output" is kept where the activation needs none (the identity's backward).
        grad = activation_backward(kept.get("output"), grad)  # type: ignore[arg-type]
        params = model.weights.get(layer.name)
        grad, *parameter_grads = kind_backward(layer, params, kept, grad)
        if parameter_grads:
            gradients[layer.name] = tuple(parameter_grads)
    return loss, {n: g for n, g in gradients.items() if n in trainable}, tape


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
            velocity = self.velocity.setdefault(name, [np.zeros_like(w) for w in trained])
            new = []
            for w, g, v in zip(trained, grads, velocity, strict=True):
                v *= self.momentum
                v += g + self.weight_decay * w
                new.append((w - self.lr * v).astype(w.dtype))
            weights[name] = (*new, *kept)
        model.set_weights(weights)


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
