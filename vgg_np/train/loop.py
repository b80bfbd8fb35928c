"""One epoch of training on the cut layer's output, and evaluation: the core of `fit`.

`Top` holds the layers that train (unfrozen blocks, then the head) above the frozen
base whose output is cached; `train_epoch` takes one optimizer step per mini-batch with
`vgg_np.train.step.loss_and_gradients`, and `evaluate` runs the same layers in inference
mode (dropout off, batch norms on their running statistics) on the engine, as `predict`
runs the saved model. A PyTorch epoch fed the same features in the
same order takes the same steps (the cross-check lives in the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike, NDArray

from vgg_np import backward
from vgg_np.engine import Engine
from vgg_np.engine.lowering import lower
from vgg_np.layers import Layer, forward
from vgg_np.train import memory
from vgg_np.train.batch_norm import RunningStatistics
from vgg_np.train.fast import FAST_DTYPES
from vgg_np.train.optim import Adam
from vgg_np.train.step import SGD, loss_and_gradients

__all__ = ["Top", "evaluate", "train_epoch"]

#: A batch norm's tensors, in the order the layer table holds them.
_BATCH_NORM_TENSORS = ("gamma", "beta", "running mean", "running variance")


class Top:
    """The layers that train, from the cut on: what the step and the optimizers use of a model.

    `loss_and_gradients` and the optimizers read ``layers``, ``weights``, ``dtype`` and
    ``include_top`` and call ``set_weights``; a `VGG` holds the whole network, this the
    part above the cached features (``block5_conv1`` ... with unfrozen blocks, then the
    head). A batch norm's tensors are (gamma, beta, running mean, running variance):
    gamma and beta train by gradient, the running statistics move by the convention
    `statistics` gives it (`vgg_np.train.batch_norm`; `vgg_np.train.plan` chooses), and
    `evaluate` normalises with them.

    Examples
    --------
    >>> top = Top([Layer("predictions", "dense", 2, "softmax")],
    ...           {"predictions": (np.zeros((4, 2)), np.zeros(2))})
    >>> top.set_weights({"predictions": (np.ones((4, 2)), np.zeros(2))})
    >>> top.weights["predictions"][0].dtype, top.include_top
    (dtype('float32'), True)
    >>> top.set_weights({"predictions": (np.ones((3, 2)), np.zeros(2))})
    Traceback (most recent call last):
    ...
    ValueError: the weights do not fit the trained layers: predictions (3, 2) where (4, 2) is needed
    """

    include_top = True
    #: It holds copies of the arrays it is given, so `SGD` updates them in place
    #: (``weights`` returns them: copy to keep a snapshot).
    owns_weights = True

    def __init__(
        self,
        layers: Iterable[Layer],
        weights: Mapping[str, tuple[ArrayLike, ...]],
        dtype: npt.DTypeLike = "float32",
        statistics: Mapping[str, RunningStatistics] | None = None,
    ):
        self.layers = tuple(layers)
        self.dtype = np.dtype(dtype)
        #: Batch norm name -> whose running-statistics conventions it follows.
        self.statistics = dict(statistics or {})
        self.statistics_reason = "given by the caller" if statistics else "no batch norm"
        self._weights = {
            name: tuple(self._copy(a) for a in tensors)  # copies: see owns_weights
            for name, tensors in weights.items()
        }

    @property
    def weights(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Layer name -> tensors: a new dict, the arrays the model's (class example).

        `SGD` updates these arrays in place: copy them to keep a snapshot.
        """
        return dict(self._weights)

    def set_weights(
        self, weights: Mapping[str, tuple[ArrayLike, ...]], source: str = "the weights"
    ) -> None:
        """Replace every tensor, after checking names and shapes (see the class example)."""
        problems = [f"missing {name}" for name in self._weights if name not in weights]
        problems += [f"extra {name}" for name in weights if name not in self._weights]
        for name, tensors in self._weights.items():
            given = weights.get(name, tensors)
            if len(given) != len(tensors):
                problems.append(f"{name}: {len(given)} tensors where {len(tensors)} are needed")
            for new, old in zip(given, tensors, strict=False):
                if np.shape(new) != old.shape:
                    problems.append(f"{name} {np.shape(new)} where {old.shape} is needed")
        if problems:
            raise ValueError(f"{source} do not fit the trained layers: {'; '.join(problems)}")
        self._weights = {name: self._own(name, weights[name]) for name in self._weights}

    def _own(self, name: str, tensors: tuple[ArrayLike, ...]) -> tuple[np.ndarray, ...]:
        """`tensors` as arrays of its own: each one it holds in that very slot kept.

        Only in its own slot: an array held for gamma and given for beta too would be one
        array in two slots, which `SGD` would then update twice a step.
        """
        held = self._weights[name]
        return tuple(
            a if i < len(held) and a is held[i] else self._copy(a) for i, a in enumerate(tensors)
        )

    def _copy(self, a: ArrayLike) -> np.ndarray:
        # C order whatever the caller's (a transposed view): `SGD` then updates it in place.
        return np.array(a, self.dtype, order="C")

    def not_finite(self) -> list[str]:
        """Name the tensors holding a NaN or an infinity (a run that diverged).

        A layer's tensors by name; a batch norm's by what they are (its running variance
        overflows where its input grew past float32's range, though the loss stays finite).

        Examples
        --------
        >>> top = Top([Layer("predictions", "dense", 2, "softmax")],
        ...           {"predictions": (np.full((4, 2), np.nan), np.zeros(2))})
        >>> top.not_finite()
        ['predictions']
        >>> ones = np.ones(2)
        >>> Top([Layer("bn", "batch_norm")], {"bn": (ones, ones, ones, ones * np.inf)}).not_finite()
        ['bn (running variance)']
        """
        kinds = {layer.name: layer.kind for layer in self.layers}
        found = []
        for name, tensors in self._weights.items():
            bad = [i for i, t in enumerate(tensors) if not np.isfinite(t).all()]
            if bad and kinds.get(name) == "batch_norm":
                found.append(f"{name} ({', '.join(_BATCH_NORM_TENSORS[i] for i in bad)})")
            elif bad:
                found.append(name)
        return found


def _logits_layers(layers: Sequence[Layer]) -> tuple[Layer, ...]:
    *hidden, last = layers
    return (*hidden, dataclasses.replace(last, activation=None))


def train_epoch(
    top: Top,
    batches: Iterator[tuple[NDArray, NDArray]],
    optimizer: SGD | Adam,
    rng: np.random.Generator,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """Take one optimizer step per batch; return the epoch's mean loss and accuracy.

    The loss and accuracy are those of each batch before its step, in training mode
    (dropout on, batch norms on the batch's statistics, their running statistics
    updated by ``top.statistics``), averaged over pictures: what Keras prints during
    ``fit``.

    Parameters
    ----------
    top : Top
    batches : iterator of (x, labels)
        ``x`` the cut layer's output ``(n, ...)``, ``labels`` int ``(n,)``.
    optimizer : vgg_np.train.step.SGD or vgg_np.train.optim.Adam
    rng : numpy.random.Generator
        Dropout masks.
    on_batch : callable, optional
        Called with each batch's size (a progress bar).

    Examples
    --------
    >>> from vgg_np.train.optim import Adam
    >>> top = Top([Layer("predictions", "dense", 2, "softmax")],
    ...           {"predictions": (np.zeros((3, 2)), np.zeros(2))})
    >>> x, y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], np.array([0, 1, 1, 0])
    >>> train_epoch(top, iter([(x, y)]), Adam(0.1), np.random.default_rng(0))
    (0.6931471824645996, 0.5)
    """
    total, correct, seen = 0.0, 0, 0
    with memory.kept():  # each step reuses the blocks the last one freed
        for x, labels in batches:
            loss, gradients, tape = loss_and_gradients(
                top, x, labels, rng=rng, statistics=top.statistics or None
            )
            optimizer.step(top, gradients)
            logits = tape.kept["loss"]["logits"]  # (n, classes), before the step
            total += loss * len(labels)
            correct += int((np.argmax(logits, axis=1) == labels).sum())
            seen += len(labels)
            if on_batch is not None:
                on_batch(len(labels))
    if not seen:
        raise ValueError("an epoch without pictures: every training picture was skipped")
    return total / seen, correct / seen


def evaluate(
    top: Top, x: Callable[[NDArray], NDArray], labels: NDArray, batch_size: int
) -> tuple[float, float, NDArray]:
    """Mean loss, accuracy and predicted classes in inference mode (dropout off).

    `x` returns the cut layer's output of the pictures at the positions it is given
    (`vgg_np.train.features.Features.take`).

    Examples
    --------
    >>> top = Top([Layer("predictions", "dense", 2, "softmax")],
    ...           {"predictions": (np.eye(2), np.zeros(2))})
    >>> features = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], np.float32)
    >>> loss, accuracy, predicted = evaluate(top, lambda i: features[i], np.array([0, 1, 1]), 2)
    >>> round(loss, 4), accuracy, predicted.tolist()
    (0.7936, 0.6666666666666666, [0, 1, 0])
    """
    run, close = _inference(_logits_layers(top.layers), top.weights, top.dtype)
    total, predicted = 0.0, []
    positions = np.arange(len(labels))
    try:
        for start in range(0, len(labels), batch_size):
            chunk = positions[start : start + batch_size]
            logits = run(np.asarray(x(chunk), top.dtype))  # (n, classes)
            total += backward.softmax_cross_entropy(logits, labels[chunk])[0] * len(chunk)
            predicted.append(np.argmax(logits, axis=1))
    finally:
        close()
    classes = np.concatenate(predicted) if predicted else np.zeros(0, np.intp)
    n = max(len(labels), 1)
    return total / n, float((classes == labels).sum() / n), classes


def _inference(
    layers: Sequence[Layer], weights: Mapping[str, tuple], dtype: np.dtype
) -> tuple[Callable[[NDArray], NDArray], Callable[[], None]]:
    """Return (run, close): with unfrozen blocks, the engine that `predict` runs.

    Unfrozen blocks are convolutions: on the engine (the lowered layers, Winograd, both
    cores) a validation batch of block 5 took 1.4 s, 3.9 s by the reference forward
    (batch 32 of 14x14x512, load 3.9). A head alone (dense layers on cached features,
    cheap either way) and dtypes the engine does not compute in (float16) run the
    reference forward.
    """
    if np.dtype(dtype) not in FAST_DTYPES or not any(layer.kind == "conv" for layer in layers):
        return (lambda x: forward(layers, weights, x)), (lambda: None)
    lowered = lower(layers, weights)
    engine = Engine(lowered.steps, lowered.weights)
    return engine.predict, engine.close
