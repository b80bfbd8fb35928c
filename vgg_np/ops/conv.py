"""Convolution: `conv2d_naive`, the loops that define it, beside `im2col` and `conv2d`.

`conv2d` is `im2col` and one matrix product; it is tested against `conv2d_naive`. Layouts
and dimension letters are those of `vgg_np.ops`: ``x`` is NHWC, kernels are HWIO.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import (
    IntOrPair,
    Padding,
    check_ndim,
    conv_args,
    float_array,
    output_size,
    pad_spatial,
    positive_pair,
    resolve_padding,
)

__all__ = ["conv2d", "conv2d_naive", "im2col"]


def conv2d_naive(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> NDArray[np.floating]:
    """2-D cross-correlation by explicit loops: the definition `conv2d` is tested against.

    ``y[n, i, j, o] = bias[o] + sum over (kh, kw, c) of
    xp[n, i*sh + kh, j*sw + kw, c] * kernel[kh, kw, c, o]``, where ``xp`` is `x` padded
    with zeros. Like Keras and PyTorch this is cross-correlation: the kernel is not flipped.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Input activations, floating point.
    kernel : array_like, shape (KH, KW, C, O)
        Filters in HWIO layout.
    bias : array_like, shape (O,), optional
        Added to every output pixel.
    strides : int or (int, int), default 1
        Step of the window along height and width.
    padding : {"same", "valid"} or int or ((int, int), (int, int)), default "same"
        See `resolve_padding`.

    Returns
    -------
    ndarray, shape (N, Ho, Wo, O)
        ``Ho = (H + top + bottom - KH) // sh + 1`` and likewise ``Wo``. The dtype is the
        common dtype of `x`, `kernel` and `bias`.

    Raises
    ------
    TypeError
        If an array is not floating point, or `strides`/`padding` have the wrong type.
    ValueError
        On a wrong rank, a channel or bias mismatch, non-positive strides, or a kernel
        larger than the padded input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    >>> conv2d_naive(x, np.ones((3, 3, 1, 1)), padding="valid")[0, :, :, 0]
    array([[45., 54.],
           [81., 90.]])
    """
    x, kernel, bias, (sh, sw), pads, (ho, wo) = conv_args(x, kernel, bias, strides, padding)
    xp = pad_spatial(x, pads)
    n_batch = x.shape[0]
    kh, kw, _, n_out = kernel.shape
    y = np.zeros((n_batch, ho, wo, n_out), dtype=x.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                window = xp[n, i * sh : i * sh + kh, j * sw : j * sw + kw, :]  # (KH, KW, C)
                for o in range(n_out):
                    y[n, i, j, o] = np.sum(window * kernel[:, :, :, o])
    if bias is not None:
        y += bias
    return y


def im2col(
    x: ArrayLike,
    kernel_size: IntOrPair,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> NDArray[np.floating]:
    """Gather every convolution window of `x` into one row of a matrix.

    Row ``(n * Ho + i) * Wo + j`` holds the window under output pixel ``(n, i, j)``,
    flattened in ``(KH, KW, C)`` order, the same order as
    ``kernel.reshape(KH * KW * C, O)``. So ``im2col(x, (KH, KW)) @ kernel.reshape(-1, O)``
    is the convolution, as one matrix product.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Input activations, floating point.
    kernel_size : int or (int, int)
        ``(KH, KW)``.
    strides : int or (int, int), default 1
        Step of the window along height and width.
    padding : {"same", "valid"} or int or ((int, int), (int, int)), default "same"
        See `resolve_padding`; padded pixels are zeros.

    Returns
    -------
    ndarray, shape (N * Ho * Wo, KH * KW * C)
        Same dtype as `x`.

    Raises
    ------
    TypeError, ValueError
        As for `conv2d`.

    Notes
    -----
    The matrix repeats each input value up to ``KH * KW`` times: for a 3x3 kernel at stride
    1 it is 9 times the size of `x`. For VGG16's first block at 224x224 that is
    ``224 * 224 * 9 * 64 * 4`` bytes = 116 MB per image in float32. The fast engine
    avoids building it whole.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> im2col(x, 3, padding="valid")
    array([[ 0.,  1.,  2.,  4.,  5.,  6.,  8.,  9., 10.],
           [ 1.,  2.,  3.,  5.,  6.,  7.,  9., 10., 11.],
           [ 4.,  5.,  6.,  8.,  9., 10., 12., 13., 14.],
           [ 5.,  6.,  7.,  9., 10., 11., 13., 14., 15.]], dtype=float32)
    """
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    kh, kw = positive_pair("kernel_size", kernel_size)
    sh, sw = positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
    ho, wo = output_size(x.shape[1:3], (kh, kw), (sh, sw), pads)
    xp = pad_spatial(x, pads)  # (N, H+pt+pb, W+pl+pr, C)
    n, _, _, c = xp.shape
    stride_n, stride_h, stride_w, stride_c = xp.strides
    windows = np.lib.stride_tricks.as_strided(
        xp,
        shape=(n, ho, wo, kh, kw, c),
        strides=(stride_n, stride_h * sh, stride_w * sw, stride_h, stride_w, stride_c),
        writeable=False,
    )  # (N, Ho, Wo, KH, KW, C), a view
    return windows.reshape(n * ho * wo, kh * kw * c)  # (N*Ho*Wo, KH*KW*C), a copy


def conv2d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> NDArray[np.floating]:
    """2-D cross-correlation as one matrix product: `im2col` times the reshaped kernel.

    Computes the same as `conv2d_naive` (up to floating-point summation order), with the
    same parameters, return value and errors.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
        Input activations, floating point.
    kernel : array_like, shape (KH, KW, C, O)
        Filters in HWIO layout (Keras's layout).
    bias : array_like, shape (O,), optional
        Added to every output pixel.
    strides : int or (int, int), default 1
        Step of the window along height and width.
    padding : {"same", "valid"} or int or ((int, int), (int, int)), default "same"
        See `resolve_padding`.

    Returns
    -------
    ndarray, shape (N, Ho, Wo, O)
        The dtype is the common dtype of `x`, `kernel` and `bias`.

    Raises
    ------
    TypeError
        If an array is not floating point, or `strides`/`padding` have the wrong type.
    ValueError
        On a wrong rank, a channel or bias mismatch, non-positive strides, or a kernel
        larger than the padded input.

    Notes
    -----
    Memory: the `im2col` matrix, ``KH * KW`` times the size of the (padded) input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> y = conv2d(x, np.ones((3, 3, 1, 1), np.float32), np.array([1.0], np.float32))
    >>> y[0, :, :, 0]
    array([[11., 19., 25., 19.],
           [28., 46., 55., 40.],
           [52., 82., 91., 64.],
           [43., 67., 73., 51.]], dtype=float32)
    """
    x, kernel, bias, stride_pair, pads, (ho, wo) = conv_args(x, kernel, bias, strides, padding)
    n = x.shape[0]
    kh, kw, c, o = kernel.shape
    cols = im2col(x, (kh, kw), strides=stride_pair, padding=pads)  # (N*Ho*Wo, KH*KW*C)
    y = cols @ kernel.reshape(kh * kw * c, o)  # (N*Ho*Wo, O)
    if bias is not None:
        y += bias
    return y.reshape(n, ho, wo, o)  # (N, Ho, Wo, O)
