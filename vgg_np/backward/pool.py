"""Gradients of pooling: max pooling (naive beside fast) and the global pools."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import ops
from vgg_np.backward._checks import check_dy
from vgg_np.backward.conv import col2im
from vgg_np.ops._checks import IntOrPair, Padding, check_ndim, float_array, pad_spatial, pool_args

__all__ = [
    "global_avg_pool2d_backward",
    "global_max_pool2d_backward",
    "max_pool2d_backward",
    "max_pool2d_backward_naive",
]


def max_pool2d_backward_naive(
    x: ArrayLike,
    dy: ArrayLike,
    pool_size: IntOrPair = 2,
    *,
    strides: IntOrPair | None = None,
    padding: Padding = "valid",
) -> NDArray[np.floating]:
    """Return the gradient of max-pooling, by loops: each window's goes to its maximum.

    Ties: the first maximum in row-major window order takes all of it (as PyTorch does).
    Overlapping windows add up.

    Examples
    --------
    >>> x = np.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    >>> max_pool2d_backward_naive(x, np.ones((1, 1, 1, 1)))[0, :, :, 0]  # a tie: the first 3
    array([[0., 1.],
           [0., 0.]])
    """
    x, (kh, kw), (sh, sw), pads, (ho, wo) = pool_args(x, pool_size, strides, padding)
    dy = check_dy(dy, (x.shape[0], ho, wo, x.shape[3]), x.dtype)
    (pt, _), (pl, _) = pads
    xp = pad_spatial(x, pads, value=-np.inf)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    for n, i, j, c in np.ndindex(dy.shape):
        window = xp[n, i * sh : i * sh + kh, j * sw : j * sw + kw, c]  # (KH, KW)
        a, b = np.unravel_index(np.argmax(window), window.shape)
        dxp[n, i * sh + a, j * sw + b, c] += dy[n, i, j, c]
    return dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]


def max_pool2d_backward(
    x: ArrayLike,
    dy: ArrayLike,
    pool_size: IntOrPair = 2,
    *,
    strides: IntOrPair | None = None,
    padding: Padding = "valid",
) -> NDArray[np.floating]:
    """Return the gradient of max-pooling, vectorised over the windows.

    Computes exactly what `max_pool2d_backward_naive` computes, ties included.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 7, 3))
    >>> dy = np.ones((2, 3, 3, 3))
    >>> np.array_equal(max_pool2d_backward(x, dy), max_pool2d_backward_naive(x, dy))
    True
    """
    x, (kh, kw), (sh, sw), pads, (ho, wo) = pool_args(x, pool_size, strides, padding)
    dy = check_dy(dy, (x.shape[0], ho, wo, x.shape[3]), x.dtype)
    # Windows of the input padded with -inf, as the forward pass pads: padding never wins.
    xp = pad_spatial(x, pads, value=-np.inf)  # (N, H+pt+pb, W+pl+pr, C)
    n, c = x.shape[0], x.shape[3]
    cols = ops.im2col(xp, (kh, kw), strides=(sh, sw), padding="valid")
    windows = cols.reshape(n * ho * wo, kh * kw, c)  # (N*Ho*Wo, KH*KW, C)
    first = np.argmax(windows, axis=1)  # (N*Ho*Wo, C): the first maximum of each window
    dcols = np.zeros(windows.shape, dtype=x.dtype)  # (N*Ho*Wo, KH*KW, C)
    np.put_along_axis(dcols, first[:, None, :], dy.reshape(-1, 1, c), axis=1)
    dxp = col2im(
        dcols.reshape(-1, kh * kw * c), xp.shape, (kh, kw), strides=(sh, sw), padding="valid"
    )
    (pt, _), (pl, _) = pads
    return dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]


def global_avg_pool2d_backward(dy: ArrayLike, x_shape: tuple) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.global_avg_pool2d`: ``dy / (H * W)`` on every pixel.

    Examples
    --------
    >>> global_avg_pool2d_backward(np.array([[4.0, 8.0]]), (1, 2, 2, 2))[0, :, :, 1]
    array([[2., 2.],
           [2., 2.]])
    """
    n, h, w, c = x_shape
    dy = check_dy(dy, (n, c), float_array("dy", dy).dtype, what="shape (N, C)")
    share = dy / np.asarray(h * w, dtype=dy.dtype)  # (N, C)
    return np.broadcast_to(share[:, None, None, :], x_shape).copy()  # (N, H, W, C)


def global_max_pool2d_backward(x: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.global_max_pool2d`: each channel's to its maximum.

    It is `max_pool2d_backward` with one window the size of the image, ties included
    (the first maximum in row-major order takes all of it).

    Examples
    --------
    >>> x = np.array([[1.0, 5.0], [5.0, 0.0]]).reshape(1, 2, 2, 1)
    >>> global_max_pool2d_backward(x, np.array([[3.0]]))[0, :, :, 0]
    array([[0., 3.],
           [0., 0.]])
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    n, h, w, c = x.shape
    dy = check_dy(dy, (n, c), x.dtype, what="shape (N, C)")
    return max_pool2d_backward(x, dy[:, None, None, :], (h, w))  # dy as (N, 1, 1, C)
