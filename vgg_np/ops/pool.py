"""Pooling: max pooling (naive beside fast), torchvision's adaptive average, global pools.

Layouts and dimension letters are those of `vgg_np.ops`: ``x`` is NHWC.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import (
    IntOrPair,
    Padding,
    check_ndim,
    float_array,
    pad_spatial,
    pool_args,
    positive_pair,
)

__all__ = [
    "adaptive_avg_pool2d",
    "global_avg_pool2d",
    "global_avg_pool2d_naive",
    "global_max_pool2d",
    "global_max_pool2d_naive",
    "max_pool2d",
    "max_pool2d_naive",
]


# ---------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------


def max_pool2d_naive(
    x: ArrayLike,
    pool_size: IntOrPair = 2,
    *,
    strides: IntOrPair | None = None,
    padding: Padding = "valid",
) -> NDArray[np.floating]:
    """Max pooling by explicit loops: the definition `max_pool2d` is tested against.

    ``y[n, i, j, c] = max over (a, b) of xp[n, i*sh + a, j*sw + b, c]`` where ``xp`` is `x`
    padded with ``-inf``, so padding never wins the maximum.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Input activations, floating point.
    pool_size : int or (int, int), default 2
        Window ``(KH, KW)``.
    strides : int or (int, int), optional
        Step of the window; defaults to `pool_size` (non-overlapping windows).
    padding : {"valid", "same"} or int or ((int, int), (int, int)), default "valid"
        See `resolve_padding`. Each side must be smaller than the window.

    Returns
    -------
    ndarray, shape (N, Ho, Wo, C)
        Same dtype as `x`. A NaN in a window makes that output NaN.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        On a wrong rank, non-positive sizes, padding as large as the window, or a window
        larger than the padded input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    >>> max_pool2d_naive(x)[0, :, :, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    x, (kh, kw), (sh, sw), pads, (ho, wo) = pool_args(x, pool_size, strides, padding)
    xp = pad_spatial(x, pads, value=-np.inf)
    n_batch, _, _, n_chan = x.shape
    y = np.empty((n_batch, ho, wo, n_chan), dtype=x.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                for c in range(n_chan):
                    window = xp[n, i * sh : i * sh + kh, j * sw : j * sw + kw, c]  # (KH, KW)
                    # np.max, unlike Python's max, lets a NaN win, as IEEE max-pooling does.
                    y[n, i, j, c] = np.max(window)
    return y


def max_pool2d(
    x: ArrayLike,
    pool_size: IntOrPair = 2,
    *,
    strides: IntOrPair | None = None,
    padding: Padding = "valid",
) -> NDArray[np.floating]:
    """Max pooling as ``KH * KW`` strided `np.maximum` passes over the whole batch.

    Computes exactly the same as `max_pool2d_naive` (a maximum has no rounding), with the
    same parameters, return value and errors.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Input activations, floating point.
    pool_size : int or (int, int), default 2
        Window ``(KH, KW)``.
    strides : int or (int, int), optional
        Step of the window; defaults to `pool_size`.
    padding : {"valid", "same"} or int or ((int, int), (int, int)), default "valid"
        See `resolve_padding`; padded pixels are ``-inf``.

    Returns
    -------
    ndarray, shape (N, Ho, Wo, C)
        Same dtype as `x`.

    Raises
    ------
    TypeError, ValueError
        As for `max_pool2d_naive`.

    Notes
    -----
    Each pass reads a strided view ``xp[:, a::sh, b::sw, :]`` in which the channels stay
    contiguous, so in NHWC every pass is a fast vectorised loop over whole rows.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> max_pool2d(x, 3, strides=1, padding="same")[0, :, :, 0]
    array([[ 5.,  6.,  7.,  7.],
           [ 9., 10., 11., 11.],
           [13., 14., 15., 15.],
           [13., 14., 15., 15.]], dtype=float32)
    """
    x, (kh, kw), (sh, sw), pads, (ho, wo) = pool_args(x, pool_size, strides, padding)
    xp = pad_spatial(x, pads, value=-np.inf)  # (N, H+pt+pb, W+pl+pr, C)
    y = None
    for a in range(kh):
        for b in range(kw):
            view = xp[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw, :]
            # view: (N, Ho, Wo, C), element (a, b) of every window
            y = view.copy() if y is None else np.maximum(y, view, out=y)
    assert y is not None, "pool_args refuses an empty window"
    return y


# ---------------------------------------------------------------------------------------
# Average pooling to a fixed size (torchvision's VGG)
# ---------------------------------------------------------------------------------------


def adaptive_avg_pool2d(x: ArrayLike, output_size: IntOrPair) -> NDArray[np.floating]:
    """Average pooling to a fixed output size, as PyTorch's ``AdaptiveAvgPool2d``.

    Output cell ``i`` of an axis of size ``n`` averages input rows
    ``floor(i * n / out)`` to ``ceil((i + 1) * n / out)`` (exclusive), so windows may
    overlap or differ in size. When ``n == out`` it is the identity; torchvision's VGG
    uses it with ``(7, 7)`` so that its classifier accepts any input size.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Floating point.
    output_size : int or (int, int)
        ``(Ho, Wo)``.

    Returns
    -------
    ndarray, shape (N, Ho, Wo, C)
        Same dtype as `x`.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        On a wrong rank or a non-positive output size.

    Examples
    --------
    >>> x = np.arange(9.0).reshape(1, 3, 3, 1)
    >>> adaptive_avg_pool2d(x, 2)[0, :, :, 0]
    array([[2., 3.],
           [5., 6.]])
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    ho, wo = positive_pair("output_size", output_size)
    n, h, w, c = x.shape
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    for i in range(ho):
        top, bottom = (i * h) // ho, -(-((i + 1) * h) // ho)
        for j in range(wo):
            left, right = (j * w) // wo, -(-((j + 1) * w) // wo)
            y[:, i, j, :] = x[:, top:bottom, left:right, :].mean(axis=(1, 2))  # (N, C)
    return y


# ---------------------------------------------------------------------------------------
# Global pooling: the heads of transfer-learning models
# ---------------------------------------------------------------------------------------


def global_avg_pool2d_naive(x: ArrayLike) -> NDArray[np.floating]:
    """Average of each channel over the whole image, by loops: Keras's ``GlobalAveragePooling2D``.

    ``y[n, c] = sum over (i, j) of x[n, i, j, c] / (H * W)``.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Floating point.

    Returns
    -------
    ndarray, shape (N, C)
        Same dtype as `x`.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `x` is not 4-D.

    Examples
    --------
    >>> global_avg_pool2d_naive(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[3., 4.]])
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    n_batch, h, w, n_chan = x.shape
    y = np.zeros((n_batch, n_chan), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(n_chan):
            for i in range(h):
                for j in range(w):
                    y[n, c] += x[n, i, j, c]
    return y / np.asarray(h * w, dtype=x.dtype)


def global_avg_pool2d(x: ArrayLike) -> NDArray[np.floating]:
    """Average of each channel over the whole image, as one reduction over H and W.

    Computes the same as `global_avg_pool2d_naive` (up to summation order, here in
    float64), with the same parameters, return value and errors; it also equals
    ``adaptive_avg_pool2d(x, 1)[:, 0, 0, :]``.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Floating point.

    Returns
    -------
    ndarray, shape (N, C)
        Same dtype as `x`.

    Raises
    ------
    TypeError, ValueError
        As for `global_avg_pool2d_naive`.

    Notes
    -----
    The sum runs in float64 and is rounded once to the dtype of `x`: a float32
    reduction over the strided H and W axes adds ``H * W`` terms one after another.

    Examples
    --------
    >>> global_avg_pool2d(np.ones((2, 3, 5, 4), np.float32)).shape
    (2, 4)
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    return x.mean(axis=(1, 2), dtype=np.float64).astype(x.dtype)  # (N, C)


def global_max_pool2d_naive(x: ArrayLike) -> NDArray[np.floating]:
    """Maximum of each channel over the whole image, by loops: ``GlobalMaxPooling2D``.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Floating point.

    Returns
    -------
    ndarray, shape (N, C)
        Same dtype as `x`; a NaN anywhere in a channel makes its output NaN.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `x` is not 4-D.

    Examples
    --------
    >>> global_max_pool2d_naive(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[6., 7.]])
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    n_batch, _, _, n_chan = x.shape
    y = np.empty((n_batch, n_chan), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(n_chan):
            y[n, c] = np.max(x[n, :, :, c])  # np.max lets a NaN win, as max_pool2d does
    return y


def global_max_pool2d(x: ArrayLike) -> NDArray[np.floating]:
    """Maximum of each channel over the whole image, as one reduction over H and W.

    Computes exactly what `global_max_pool2d_naive` computes, with the same parameters,
    return value and errors: `max_pool2d` with a window the size of the image.

    Examples
    --------
    >>> global_max_pool2d(np.arange(8.0, dtype=np.float32).reshape(1, 2, 2, 2))
    array([[6., 7.]], dtype=float32)
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    return x.max(axis=(1, 2))  # (N, C)
