"""The dense (fully connected) layer, naive beside fast, and the `flatten` before it.

Named ``linear`` rather than ``dense`` so that no module shadows the function `dense`
in `vgg_np.ops`. Dense kernels are ``(in, out)``, Keras's layout.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import dense_args, float_array

__all__ = ["dense", "dense_naive", "flatten"]


def dense_naive(
    x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None
) -> NDArray[np.floating]:
    """Fully connected layer by explicit loops: the definition `dense` is tested against.

    ``y[n, o] = bias[o] + sum over i of x[n, i] * kernel[i, o]``.

    Parameters
    ----------
    x : array_like, shape (N, in)
        Input features, floating point.
    kernel : array_like, shape (in, out)
        Weights in Keras layout (PyTorch's ``Linear.weight`` is the transpose).
    bias : array_like, shape (out,), optional

    Returns
    -------
    ndarray, shape (N, out)
        The common dtype of the inputs.

    Raises
    ------
    TypeError
        If an array is not floating point.
    ValueError
        On a wrong rank or a size mismatch.

    Examples
    --------
    >>> dense_naive(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    array([[1., 2., 3.]])
    """
    x, kernel, bias = dense_args(x, kernel, bias)
    y = np.zeros((x.shape[0], kernel.shape[1]), dtype=x.dtype)
    for n in range(x.shape[0]):
        for o in range(kernel.shape[1]):
            y[n, o] = np.sum(x[n, :] * kernel[:, o])
    if bias is not None:
        y += bias
    return y


def dense(x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None) -> NDArray[np.floating]:
    """Fully connected layer as one matrix product, ``x @ kernel + bias``.

    Computes the same as `dense_naive` (up to summation order), with the same parameters,
    return value and errors.

    Parameters
    ----------
    x : array_like, shape (N, in)
        Input features, floating point.
    kernel : array_like, shape (in, out)
        Weights in Keras layout.
    bias : array_like, shape (out,), optional

    Returns
    -------
    ndarray, shape (N, out)

    Raises
    ------
    TypeError, ValueError
        As for `dense_naive`.

    Examples
    --------
    >>> dense(np.ones((1, 3), np.float32), np.full((3, 2), 0.5, np.float32), np.ones(2, np.float32))
    array([[2.5, 2.5]], dtype=float32)
    """
    x, kernel, bias = dense_args(x, kernel, bias)
    y = x @ kernel  # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias
    return y


def flatten(x: ArrayLike) -> NDArray[np.floating]:
    """Flatten every axis but the first, in C order (for NHWC: H, then W, then C).

    This is Keras's ``Flatten`` on NHWC input, the order `fc1`'s rows follow in Keras
    weights. PyTorch flattens NCHW (C, then H, then W): its ``fc1`` needs a permutation.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Floating point, at least 2-D.

    Returns
    -------
    ndarray, shape (N, prod(x.shape[1:]))
        A view of `x` when it is contiguous.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `x` has fewer than 2 axes.

    Examples
    --------
    >>> flatten(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[0., 1., 2., 3., 4., 5., 6., 7.]])
    """
    x = float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"`x` must have a batch axis and at least one more, got shape {x.shape}")
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (N, H*W*C)
