"""Gradients of the activations and dropout; the softmax cross-entropy loss and its gradient."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.backward._checks import check_dy
from vgg_np.ops._checks import float_array

__all__ = [
    "dropout_backward",
    "relu_backward",
    "sigmoid_backward",
    "softmax_cross_entropy",
    "tanh_backward",
]


def relu_backward(x: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.relu`: `dy` where ``x > 0``, else 0 (as PyTorch).

    Examples
    --------
    >>> relu_backward(np.array([-1.0, 0.0, 2.0]), np.array([5.0, 5.0, 5.0]))
    array([0., 0., 5.])
    """
    x = float_array("x", x)
    dy = float_array("dy", dy)
    if dy.shape != x.shape:
        raise ValueError(f"`dy` must have the shape of `x` {x.shape}, got {dy.shape}")
    return np.where(x > 0, dy, 0).astype(np.result_type(x, dy))


def softmax_cross_entropy(
    logits: ArrayLike, labels: ArrayLike
) -> tuple[float, NDArray[np.floating]]:
    """Return the mean cross-entropy of softmax(logits) against labels, and its gradient.

    Computed from ``log_softmax = x - max - log(sum(exp(x - max)))``, so logits of any size
    give a finite loss; the gradient is ``(softmax(x) - onehot(labels)) / N``.

    Parameters
    ----------
    logits : array_like, shape (N, K)
    labels : array_like of int, shape (N,)
        Class indices in ``[0, K)``.

    Returns
    -------
    loss : float
    dlogits : ndarray, shape (N, K)

    Raises
    ------
    ValueError
        On shapes that do not match or labels out of range.

    Examples
    --------
    >>> loss, grad = softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    >>> loss, grad
    (1000.0, array([[ 1., -1.]]))
    """
    logits = float_array("logits", logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"`logits` must be (N, K) and `labels` (N,) integers, got {logits.shape} and "
            f"{labels.shape} of {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        k = logits.shape[1]
        raise ValueError(f"`labels` must be in [0, {k}), got {labels.min()}..{labels.max()}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(logits.shape[0])
    loss = float(-log_probs[rows, labels].mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return loss, grad / logits.shape[0]


def sigmoid_backward(y: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.sigmoid` from its output ``y``: ``dy * y * (1 - y)``.

    Examples
    --------
    >>> from vgg_np import ops
    >>> y = ops.sigmoid(np.array([0.0, 1000.0]))
    >>> sigmoid_backward(y, np.ones(2))
    array([0.25, 0.  ])
    """
    y = float_array("y", y)
    dy = check_dy(dy, y.shape, y.dtype, what="the shape of `y`")
    return dy * y * (1 - y)


def tanh_backward(y: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.tanh` from its output ``y``: ``dy * (1 - y**2)``.

    Examples
    --------
    >>> from vgg_np import ops
    >>> y = ops.tanh(np.array([0.0, 1000.0]))
    >>> tanh_backward(y, np.ones(2))
    array([1., 0.])
    """
    y = float_array("y", y)
    dy = check_dy(dy, y.shape, y.dtype, what="the shape of `y`")
    return dy * (1 - y * y)


def dropout_backward(x: ArrayLike, y: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.dropout` in training, with the forward's mask.

    The forward pass multiplied each value by 0 or ``1 / (1 - rate)``; that factor is
    ``y / x`` wherever ``x != 0`` (where ``x == 0`` the value carries no gradient to tell:
    ReLU outputs of 0 get none anyway). So ``dx = dy * y / x``.

    Examples
    --------
    >>> x = np.array([1.0, 2.0, 3.0, 0.0])
    >>> y = np.array([2.0, 0.0, 6.0, 0.0])   # rate 0.5: the second value dropped
    >>> dropout_backward(x, y, np.ones(4))
    array([2., 0., 2., 0.])
    """
    x, y, dy = (float_array(name, a) for name, a in (("x", x), ("y", y), ("dy", dy)))
    if not x.shape == y.shape == dy.shape:
        raise ValueError(
            f"`x`, `y` and `dy` must have one shape, got {x.shape}, {y.shape}, {dy.shape}"
        )
    scale = np.divide(y, x, out=np.zeros_like(y), where=x != 0)
    return dy * scale
