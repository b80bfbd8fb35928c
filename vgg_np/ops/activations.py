"""Activations, elementwise or along an axis: relu, softmax, sigmoid, tanh, and dropout.

Where the textbook formula overflows (`softmax_naive`, `sigmoid_naive`) it is kept beside
the form that does not, to show why.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import float_array, is_int

__all__ = [
    "dropout",
    "relu",
    "sigmoid",
    "sigmoid_naive",
    "softmax",
    "softmax_naive",
    "tanh",
]


def relu(x: ArrayLike) -> NDArray[np.floating]:
    """Rectified linear unit, ``max(x, 0)`` elementwise, in a new array.

    Parameters
    ----------
    x : array_like
        Floating point, any shape.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`; NaN stays NaN.

    Raises
    ------
    TypeError
        If `x` is not floating point.

    Examples
    --------
    >>> relu(np.array([-2.0, 0.0, 3.0, np.nan]))
    array([ 0.,  0.,  3., nan])
    """
    x = float_array("x", x)
    return np.maximum(x, 0)


def _check_axis(x: np.ndarray, axis: int) -> None:
    """Refuse an `axis` that is not an int naming an axis of `x`."""
    if not is_int(axis) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis` must be an int in [{-x.ndim}, {x.ndim}), got {axis!r}")


def softmax_naive(x: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    """Softmax straight from the textbook, ``exp(x) / sum(exp(x))``: it overflows.

    Kept to show why `softmax` shifts its input: ``exp(89)`` is already ``inf`` in
    float32, so logits of a few hundred give ``inf / inf = nan``.

    Parameters
    ----------
    x : array_like
        Floating point logits.
    axis : int, default -1
        The axis that sums to one.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `axis` is out of range.

    Examples
    --------
    >>> softmax_naive(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    >>> with np.errstate(over="ignore", invalid="ignore"):
    ...     softmax_naive(np.array([1000.0, 0.0]))
    array([nan,  0.])
    """
    x = float_array("x", x)
    _check_axis(x, axis)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def softmax(x: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    """Softmax that never overflows: ``exp(x - max(x)) / sum(exp(x - max(x)))``.

    Subtracting the maximum leaves the result unchanged mathematically and makes the
    largest exponent ``exp(0) = 1``, so finite logits of any size give finite rows that
    sum to one.

    Parameters
    ----------
    x : array_like
        Floating point logits.
    axis : int, default -1
        The axis that sums to one.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`. A row containing NaN or ``+inf`` is NaN, as in
        PyTorch and ONNX Runtime.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `axis` is out of range.

    Examples
    --------
    >>> softmax(np.array([[1000.0, 0.0], [0.0, np.log(3.0)]]))
    array([[1.  , 0.  ],
           [0.25, 0.75]])
    """
    x = float_array("x", x)
    _check_axis(x, axis)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def sigmoid_naive(x: ArrayLike) -> NDArray[np.floating]:
    """Return the logistic function straight from the textbook, ``1 / (1 + exp(-x))``.

    Kept to show why `sigmoid` splits by sign: for ``x < -88`` in float32 (``-709`` in
    float64) ``exp(-x)`` overflows, with a warning, and the result is 0 where the true
    value is a tiny positive number.

    Parameters
    ----------
    x : array_like
        Floating point, any shape.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`.

    Raises
    ------
    TypeError
        If `x` is not floating point.

    Examples
    --------
    >>> sigmoid_naive(np.array([0.0, np.log(3.0)]))
    array([0.5 , 0.75])
    """
    x = float_array("x", x)
    return 1 / (1 + np.exp(-x))


def sigmoid(x: ArrayLike) -> NDArray[np.floating]:
    """Return the logistic function without overflow: ``exp`` only ever sees ``-|x|``.

    With ``e = exp(-|x|)`` in ``(0, 1]``: ``1 / (1 + e)`` where ``x >= 0`` and
    ``e / (1 + e)`` where ``x < 0``, both exactly the logistic function, so every finite
    input gives a finite result with full relative accuracy on both sides (Keras's
    ``sigmoid`` activation, PyTorch's ``torch.sigmoid``).

    Parameters
    ----------
    x : array_like
        Floating point, any shape.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`, in ``[0, 1]``; NaN stays NaN.

    Raises
    ------
    TypeError
        If `x` is not floating point.

    Examples
    --------
    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    >>> bool(sigmoid(np.float32(-95.0)) > 0)  # the naive form: 0 and an overflow warning
    True
    """
    x = float_array("x", x)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def tanh(x: ArrayLike) -> NDArray[np.floating]:
    """Hyperbolic tangent, elementwise: Keras's ``tanh`` activation.

    Parameters
    ----------
    x : array_like
        Floating point, any shape.

    Returns
    -------
    ndarray
        Same shape and dtype as `x`, in ``[-1, 1]``.

    Raises
    ------
    TypeError
        If `x` is not floating point.

    Examples
    --------
    >>> tanh(np.array([-1000.0, 0.0, 1000.0]))
    array([-1.,  0.,  1.])
    """
    x = float_array("x", x)
    return np.tanh(x)


def dropout(
    x: ArrayLike,
    rate: float,
    *,
    training: bool = False,
    rng: np.random.Generator | None = None,
) -> NDArray[np.floating]:
    """Inverted dropout: drop each value with probability `rate`, scale the rest up.

    In training each value is kept with probability ``1 - rate`` and divided by
    ``1 - rate``, so the expected output equals `x` and inference needs no rescaling.
    At inference (the default) it is the identity.

    Parameters
    ----------
    x : array_like
        Floating point activations.
    rate : float
        Probability of dropping a value, in ``[0, 1)``: the meaning of Keras's ``rate``
        and PyTorch's ``p`` (not the keep probability of the original paper).
    training : bool, default False
        Drop only when True.
    rng : numpy.random.Generator
        Required when `training`: the source of the random mask, so runs are repeatable.

    Returns
    -------
    ndarray
        `x` itself when not training; otherwise a new array of the same shape and dtype
        whose values are 0 or ``x / (1 - rate)``. A dropped NaN stays NaN (it is
        multiplied by 0), as in PyTorch.

    Raises
    ------
    TypeError
        If `x` is not floating point or `rng` is not a ``numpy.random.Generator``.
    ValueError
        If `rate` is outside ``[0, 1)`` or `training` is True without `rng`.

    Examples
    --------
    >>> x = np.ones((2, 4), np.float32)
    >>> dropout(x, 0.5) is x
    True
    >>> dropout(x, 0.5, training=True, rng=np.random.default_rng(0))
    array([[2., 0., 0., 0.],
           [2., 2., 2., 2.]], dtype=float32)
    """
    x = float_array("x", x)
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ValueError(f"`rate` must be a number in [0, 1), got {rate!r}")
    if not training:
        return x
    if rng is None:
        raise ValueError("`rng` is required when `training=True`: pass np.random.default_rng(seed)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}")
    keep = rng.random(x.shape) >= rate
    scale = np.asarray(1.0 / (1.0 - rate), dtype=x.dtype)
    return x * (keep * scale)
