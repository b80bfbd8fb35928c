"""Gradients of the dense layer (naive beside fast) and of `flatten`."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.backward._checks import check_dy
from vgg_np.ops._checks import dense_args, float_array

__all__ = ["dense_backward", "dense_backward_naive", "flatten_backward"]


def dense_backward_naive(
    x: ArrayLike, kernel: ArrayLike, dy: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of a dense layer by loops: the definition of `dense_backward`.

    ``y[n, o] = b[o] + sum_i x[n, i] k[i, o]``, so ``dk[i, o] = sum_n x[n, i] dy[n, o]``,
    ``dx[n, i] = sum_o k[i, o] dy[n, o]``, ``db[o] = sum_n dy[n, o]``.

    Examples
    --------
    >>> dx, dk, db = dense_backward_naive(np.array([[1.0, 2.0]]), np.eye(2), np.array([[3.0, 4.0]]))
    >>> dk
    array([[3., 4.],
           [6., 8.]])
    """
    x, kernel, _ = dense_args(x, kernel, None)
    dy = check_dy(dy, (x.shape[0], kernel.shape[1]), x.dtype, what="shape")
    dx, dk = np.zeros_like(x), np.zeros_like(kernel)
    for n in range(x.shape[0]):
        for o in range(kernel.shape[1]):
            dk[:, o] += x[n, :] * dy[n, o]
            dx[n, :] += kernel[:, o] * dy[n, o]
    return dx, dk, dy.sum(axis=0)


def dense_backward(
    x: ArrayLike, kernel: ArrayLike, dy: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of `vgg_np.ops.dense`: ``dy @ K^T``, ``x^T @ dy``, ``sum(dy)``.

    Examples
    --------
    >>> dx, dk, db = dense_backward(np.array([[1.0, 2.0]]), np.eye(2), np.array([[3.0, 4.0]]))
    >>> dx, dk, db
    (array([[3., 4.]]), array([[3., 4.],
           [6., 8.]]), array([3., 4.]))
    """
    x, kernel, _ = dense_args(x, kernel, None)
    dy = check_dy(dy, (x.shape[0], kernel.shape[1]), x.dtype, what="shape")
    return dy @ kernel.T, x.T @ dy, dy.sum(axis=0)  # (N, in), (in, out), (out,)


def flatten_backward(dy: ArrayLike, x_shape: tuple) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.flatten`: `dy` reshaped to the input's shape.

    Examples
    --------
    >>> flatten_backward(np.arange(8.0).reshape(1, 8), (1, 2, 2, 2))[0, 1, 0]
    array([4., 5.])
    """
    dy = float_array("dy", dy)
    if dy.size != int(np.prod(x_shape)):
        raise ValueError(f"`dy` of shape {dy.shape} cannot come from flattening {tuple(x_shape)}")
    return dy.reshape(x_shape)
