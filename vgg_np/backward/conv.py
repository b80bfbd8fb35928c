"""Gradients of convolution, naive beside fast: `col2im` (im2col's adjoint), `conv2d_backward`."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import ops
from vgg_np.backward._checks import check_dy
from vgg_np.ops._checks import (
    IntOrPair,
    Padding,
    Pads,
    conv_args,
    float_array,
    output_size,
    pad_spatial,
    positive_pair,
)

__all__ = ["col2im", "col2im_naive", "conv2d_backward", "conv2d_backward_naive"]


def _geometry(
    x_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    strides: IntOrPair,
    padding: Padding,
) -> tuple[int, int, int, int, int, int, int, int, Pads, int, int]:
    n, h, w, c = x_shape
    kh, kw = positive_pair("kernel_size", kernel_size)
    sh, sw = positive_pair("strides", strides)
    pads = ops.resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    ho, wo = output_size((h, w), (kh, kw), (sh, sw), pads)
    return n, h, w, c, kh, kw, sh, sw, pads, ho, wo


def _check_cols(
    cols: ArrayLike, n: int, ho: int, wo: int, kh: int, kw: int, c: int
) -> NDArray[np.floating]:
    cols = float_array("cols", cols)
    if cols.shape != (n * ho * wo, kh * kw * c):
        raise ValueError(
            f"`cols` must have shape (N*Ho*Wo, KH*KW*C) = {(n * ho * wo, kh * kw * c)} for "
            f"these arguments, got {cols.shape}"
        )
    return cols


def col2im_naive(
    cols: ArrayLike,
    x_shape: tuple,
    kernel_size: IntOrPair,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> NDArray[np.floating]:
    """Add every row of a patch matrix back onto the pixels it came from, by loops.

    The adjoint of `vgg_np.ops.im2col`: ``<im2col(x), y> == <x, col2im(y)>`` for all x, y.
    A pixel that belongs to several windows receives the sum of all its copies.

    Parameters
    ----------
    cols : array_like, shape (N * Ho * Wo, KH * KW * C)
    x_shape : tuple
        ``(N, H, W, C)`` of the image the patches came from.
    kernel_size, strides, padding
        As given to `im2col`.

    Returns
    -------
    ndarray, shape x_shape

    Raises
    ------
    ValueError
        If `cols` does not have the shape `im2col` gives for these arguments.

    Examples
    --------
    >>> x = np.arange(9.0).reshape(1, 3, 3, 1)
    >>> col2im_naive(np.ones((4, 4)), x.shape, 2, padding="valid")[0, :, :, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    n, h, w, c, kh, kw, sh, sw, pads, ho, wo = _geometry(x_shape, kernel_size, strides, padding)
    cols = _check_cols(cols, n, ho, wo, kh, kw, c)
    (pt, pb), (pl, pr) = pads
    xp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=cols.dtype)
    row = 0
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                window = cols[row].reshape(kh, kw, c)  # (KH, KW, C)
                xp[b, i * sh : i * sh + kh, j * sw : j * sw + kw, :] += window
                row += 1
    return xp[:, pt : pt + h, pl : pl + w, :]


def col2im(
    cols: ArrayLike,
    x_shape: tuple,
    kernel_size: IntOrPair,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> NDArray[np.floating]:
    """Apply the adjoint of `vgg_np.ops.im2col` in ``KH * KW`` strided additions.

    Computes the same as `col2im_naive` (up to summation order), with the same
    parameters, return value and errors.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 6, 3))
    >>> y = np.random.default_rng(1).standard_normal(ops.im2col(x, 3).shape)
    >>> bool(np.isclose(np.vdot(ops.im2col(x, 3), y), np.vdot(x, col2im(y, x.shape, 3))))
    True
    """
    n, h, w, c, kh, kw, sh, sw, pads, ho, wo = _geometry(x_shape, kernel_size, strides, padding)
    cols = _check_cols(cols, n, ho, wo, kh, kw, c)
    (pt, pb), (pl, pr) = pads
    xp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=cols.dtype)
    patches = cols.reshape(n, ho, wo, kh, kw, c)  # (N, Ho, Wo, KH, KW, C)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + sh * (ho - 1) + 1, sh)
            columns = slice(b, b + sw * (wo - 1) + 1, sw)
            xp[:, rows, columns, :] += patches[:, :, :, a, b, :]  # (N, Ho, Wo, C)
    return xp[:, pt : pt + h, pl : pl + w, :]


def conv2d_backward_naive(
    x: ArrayLike,
    kernel: ArrayLike,
    dy: ArrayLike,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of a convolution by loops: the definition of `conv2d_backward`.

    Each output ``y[n, i, j, o]`` added ``window * kernel[..., o]``; so its gradient adds
    ``dy[n, i, j, o] * window`` to ``dkernel[..., o]`` and ``dy[n, i, j, o] * kernel[..., o]``
    to the input window.

    Examples
    --------
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> ones = np.ones((3, 3, 1, 1)), np.ones((1, 2, 2, 1))
    >>> _, dk, _ = conv2d_backward_naive(x, *ones, padding="valid")
    >>> dk[0, :, 0, 0]
    array([10., 14., 18.])
    """
    x, kernel, _, (sh, sw), pads, (ho, wo) = conv_args(x, kernel, None, strides, padding)
    kh, kw, _, n_out = kernel.shape
    dy = check_dy(dy, (x.shape[0], ho, wo, n_out), x.dtype)
    xp = pad_spatial(x, pads)
    dxp, dkernel = np.zeros_like(xp), np.zeros_like(kernel)
    for n in range(x.shape[0]):
        for i in range(ho):
            for j in range(wo):
                rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
                for o in range(n_out):
                    dkernel[:, :, :, o] += dy[n, i, j, o] * xp[n, rows, cols, :]
                    dxp[n, rows, cols, :] += dy[n, i, j, o] * kernel[:, :, :, o]
    (pt, _), (pl, _) = pads
    dx = dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]
    return dx, dkernel, dy.sum(axis=(0, 1, 2))


def conv2d_backward(
    x: ArrayLike,
    kernel: ArrayLike,
    dy: ArrayLike,
    *,
    strides: IntOrPair = 1,
    padding: Padding = "same",
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of `vgg_np.ops.conv2d` for x, the kernel and the bias.

    With ``cols = im2col(x)`` the forward pass is ``y = cols @ K + b``, so
    ``dK = cols^T @ dy``, ``db = sum(dy)`` and ``dx = col2im(dy @ K^T)``.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C)
    kernel : array_like, shape (KH, KW, C, O)
    dy : array_like, shape (N, Ho, Wo, O)
        Gradient of the loss with respect to the convolution's output.
    strides, padding
        As given to `conv2d`.

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dkernel : ndarray, shape (KH, KW, C, O)
    dbias : ndarray, shape (O,)

    Raises
    ------
    ValueError
        If `dy` does not have the forward output's shape.

    Examples
    --------
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> ones = np.ones((3, 3, 1, 1)), np.ones((1, 2, 2, 1))
    >>> dx, dk, db = conv2d_backward(x, *ones, padding="valid")
    >>> dk[:, :, 0, 0]  # each tap saw four pixels
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]])
    >>> db
    array([4.])
    """
    x, kernel, _, stride_pair, pads, (ho, wo) = conv_args(x, kernel, None, strides, padding)
    n = x.shape[0]
    kh, kw, c, o = kernel.shape
    dy = check_dy(dy, (n, ho, wo, o), x.dtype)
    cols = ops.im2col(x, (kh, kw), strides=stride_pair, padding=pads)  # (N*Ho*Wo, KH*KW*C)
    dy2 = dy.reshape(n * ho * wo, o)  # (N*Ho*Wo, O)
    dkernel = (cols.T @ dy2).reshape(kh, kw, c, o)  # (KH*KW*C, O)
    dcols = dy2 @ kernel.reshape(kh * kw * c, o).T  # (N*Ho*Wo, KH*KW*C)
    dx = col2im(dcols, x.shape, (kh, kw), strides=stride_pair, padding=pads)
    return dx, dkernel, dy2.sum(axis=0)
