"""Gradients of the kernels in `vgg_np.ops`: each naive loop definition beside its fast form.

Every function takes what its forward kernel took, plus ``dy``, the gradient of a scalar
loss with respect to the forward output, and returns the gradients with respect to the
forward inputs (and weights). Shapes and dimension letters are those of `vgg_np.ops`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import ops
from vgg_np.ops import IntOrPair, Padding

__all__ = [
    "batch_norm_backward",
    "batch_norm_backward_naive",
    "col2im",
    "col2im_naive",
    "conv2d_backward",
    "conv2d_backward_naive",
    "dense_backward",
    "dense_backward_naive",
    "dropout_backward",
    "flatten_backward",
    "global_avg_pool2d_backward",
    "global_max_pool2d_backward",
    "max_pool2d_backward",
    "max_pool2d_backward_naive",
    "relu_backward",
    "sigmoid_backward",
    "softmax_cross_entropy",
    "tanh_backward",
]


def _geometry(x_shape, kernel_size, strides, padding):
    n, h, w, c = x_shape
    kh, kw = ops._positive_pair("kernel_size", kernel_size)
    sh, sw = ops._positive_pair("strides", strides)
    pads = ops.resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    ho, wo = ops._output_size((h, w), (kh, kw), (sh, sw), pads)
    return n, h, w, c, kh, kw, sh, sw, pads, ho, wo


def _check_dy(dy, expected: tuple, dtype, what: str = "the output's shape") -> np.ndarray:
    """Check the incoming gradient against the forward output's shape; cast it to `dtype`."""
    dy = ops._float_array("dy", dy)
    if dy.shape != expected:
        raise ValueError(f"`dy` must have {what} {expected}, got {dy.shape}")
    return dy.astype(dtype, copy=False)


def _check_cols(cols: np.ndarray, n, ho, wo, kh, kw, c) -> np.ndarray:
    cols = ops._float_array("cols", cols)
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
    x, kernel, _, (sh, sw), pads, (ho, wo) = ops._conv_args(x, kernel, None, strides, padding)
    kh, kw, _, n_out = kernel.shape
    dy = _check_dy(dy, (x.shape[0], ho, wo, n_out), x.dtype)
    xp = ops._pad_spatial(x, pads)
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
    x, kernel, _, stride_pair, pads, (ho, wo) = ops._conv_args(x, kernel, None, strides, padding)
    n = x.shape[0]
    kh, kw, c, o = kernel.shape
    dy = _check_dy(dy, (n, ho, wo, o), x.dtype)
    cols = ops.im2col(x, (kh, kw), strides=stride_pair, padding=pads)  # (N*Ho*Wo, KH*KW*C)
    dy2 = dy.reshape(n * ho * wo, o)  # (N*Ho*Wo, O)
    dkernel = (cols.T @ dy2).reshape(kh, kw, c, o)  # (KH*KW*C, O)
    dcols = dy2 @ kernel.reshape(kh * kw * c, o).T  # (N*Ho*Wo, KH*KW*C)
    dx = col2im(dcols, x.shape, (kh, kw), strides=stride_pair, padding=pads)
    return dx, dkernel, dy2.sum(axis=0)


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
    x, (kh, kw), (sh, sw), pads, (ho, wo) = ops._pool_args(x, pool_size, strides, padding)
    dy = _check_dy(dy, (x.shape[0], ho, wo, x.shape[3]), x.dtype)
    (pt, _), (pl, _) = pads
    xp = ops._pad_spatial(x, pads, value=-np.inf)
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
    x, (kh, kw), (sh, sw), pads, (ho, wo) = ops._pool_args(x, pool_size, strides, padding)
    dy = _check_dy(dy, (x.shape[0], ho, wo, x.shape[3]), x.dtype)
    # Windows of the input padded with -inf, as the forward pass pads: padding never wins.
    xp = ops._pad_spatial(x, pads, value=-np.inf)  # (N, H+pt+pb, W+pl+pr, C)
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
    x, kernel, _ = ops._dense_args(x, kernel, None)
    dy = _check_dy(dy, (x.shape[0], kernel.shape[1]), x.dtype, what="shape")
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
    x, kernel, _ = ops._dense_args(x, kernel, None)
    dy = _check_dy(dy, (x.shape[0], kernel.shape[1]), x.dtype, what="shape")
    return dy @ kernel.T, x.T @ dy, dy.sum(axis=0)  # (N, in), (in, out), (out,)


def flatten_backward(dy: ArrayLike, x_shape: tuple) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.flatten`: `dy` reshaped to the input's shape.

    Examples
    --------
    >>> flatten_backward(np.arange(8.0).reshape(1, 8), (1, 2, 2, 2))[0, 1, 0]
    array([4., 5.])
    """
    dy = ops._float_array("dy", dy)
    if dy.size != int(np.prod(x_shape)):
        raise ValueError(f"`dy` of shape {dy.shape} cannot come from flattening {tuple(x_shape)}")
    return dy.reshape(x_shape)


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
    x, y, dy = (ops._float_array(name, a) for name, a in (("x", x), ("y", y), ("dy", dy)))
    if not x.shape == y.shape == dy.shape:
        raise ValueError(
            f"`x`, `y` and `dy` must have one shape, got {x.shape}, {y.shape}, {dy.shape}"
        )
    scale = np.divide(y, x, out=np.zeros_like(y), where=x != 0)
    return dy * scale


def relu_backward(x: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.relu`: `dy` where ``x > 0``, else 0 (as PyTorch).

    Examples
    --------
    >>> relu_backward(np.array([-1.0, 0.0, 2.0]), np.array([5.0, 5.0, 5.0]))
    array([0., 0., 5.])
    """
    x = ops._float_array("x", x)
    dy = ops._float_array("dy", dy)
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
    logits = ops._float_array("logits", logits)
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


def batch_norm_backward_naive(
    x: ArrayLike, gamma: ArrayLike, dy: ArrayLike, *, eps: float
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of training-mode batch normalisation, by the chain rule step by step.

    The definition `batch_norm_backward` is tested against. In training the layer
    normalises with its batch's own statistics (`vgg_np.ops.batch_moments`): per channel,
    ``mu = mean(x)``, ``var = mean((x - mu)**2)``, ``xhat = (x - mu) / sqrt(var + eps)``,
    ``y = gamma * xhat + beta``. Every step is differentiated in turn, channel by channel,
    and ``mu`` and ``var`` carry gradient too: they depend on every ``x`` of the channel.

    Examples
    --------
    >>> x = np.array([[1.0], [3.0]])
    >>> dx, dgamma, dbeta = batch_norm_backward_naive(x, np.ones(1), np.array([[1.0], [0.0]]),
    ...                                               eps=0.0)
    >>> dx, dgamma, dbeta  # two values always normalise to -1, +1 (eps 0): dx is zero
    (array([[0.],
           [0.]]), array([-1.]), array([1.]))
    """
    x, gamma, dy = _bn_backward_args(x, gamma, dy, eps)
    m = x.size // x.shape[-1]  # values per channel
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    for c in range(x.shape[-1]):
        xc, dyc = x[..., c], dy[..., c]
        mu = np.sum(xc) / m
        var = np.sum((xc - mu) ** 2) / m
        inv = 1 / np.sqrt(var + eps)
        xhat = (xc - mu) * inv
        dbeta[c] = np.sum(dyc)
        dgamma[c] = np.sum(dyc * xhat)
        dxhat = dyc * gamma[c]
        dvar = np.sum(dxhat * (xc - mu)) * -0.5 * inv**3
        dmu = -np.sum(dxhat) * inv + dvar * np.sum(-2 * (xc - mu)) / m
        dx[..., c] = dxhat * inv + dvar * 2 * (xc - mu) / m + dmu / m
    return dx, dgamma, dbeta


def batch_norm_backward(
    x: ArrayLike, gamma: ArrayLike, dy: ArrayLike, *, eps: float
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of training-mode batch normalisation for x, gamma and beta.

    The steps of `batch_norm_backward_naive` collapse to, with ``M`` values per channel
    and sums over every axis but the last: ``dbeta = sum(dy)``,
    ``dgamma = sum(dy * xhat)`` and
    ``dx = gamma / sqrt(var + eps) / M * (M * dy - dbeta - xhat * dgamma)``.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C) or (N, C)
        The forward input; its batch statistics are recomputed here.
    gamma : array_like, shape (C,)
    dy : array_like, shape of `x`
        Gradient of the loss with respect to the normalised output.
    eps : float
        As in the forward pass (PyTorch 1e-5, Keras 1e-3).

    Returns
    -------
    dx : ndarray, shape of `x`
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError
        If an array is not floating point.
    ValueError
        If `gamma` is not one value per channel, `dy` has another shape than `x`, or
        `eps` is negative or not finite.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5, 2))
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> dx, _, _ = batch_norm_backward(x, np.ones(2), dy, eps=1e-5)
    >>> bool(np.allclose(dx.sum(axis=(0, 1, 2)), 0))  # the mean is subtracted: no net shift
    True
    """
    x, gamma, dy = _bn_backward_args(x, gamma, dy, eps)
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    mean, var = ops.batch_moments(x)  # (C,), (C,)
    inv = 1 / np.sqrt(var + np.asarray(eps, x.dtype))  # (C,)
    xhat = (x - mean) * inv  # (..., C)
    dbeta = dy.sum(axis=axes)  # (C,)
    dgamma = (dy * xhat).sum(axis=axes)  # (C,)
    dx = (gamma * inv / m) * (m * dy - dbeta - xhat * dgamma)  # (..., C)
    return dx, dgamma, dbeta


def _bn_backward_args(x, gamma, dy, eps):
    x = ops._float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be (N, ..., C), got shape {x.shape}")
    where = f"channel of `x` (the last axis of shape {x.shape})"
    (gamma,) = ops._channel_params(x.shape[-1], where, gamma=gamma)
    ops._check_eps(eps)
    dtype = np.result_type(x, gamma)
    dy = _check_dy(dy, x.shape, dtype, what="the shape of `x`")
    return x.astype(dtype, copy=False), gamma.astype(dtype, copy=False), dy


def global_avg_pool2d_backward(dy: ArrayLike, x_shape: tuple) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.global_avg_pool2d`: ``dy / (H * W)`` on every pixel.

    Examples
    --------
    >>> global_avg_pool2d_backward(np.array([[4.0, 8.0]]), (1, 2, 2, 2))[0, :, :, 1]
    array([[2., 2.],
           [2., 2.]])
    """
    n, h, w, c = x_shape
    dy = _check_dy(dy, (n, c), ops._float_array("dy", dy).dtype, what="shape (N, C)")
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
    x = ops._float_array("x", x)
    ops._check_ndim("x", x, "NHWC")
    n, h, w, c = x.shape
    dy = _check_dy(dy, (n, c), x.dtype, what="shape (N, C)")
    return max_pool2d_backward(x, dy[:, None, None, :], (h, w))  # dy as (N, 1, 1, C)


def sigmoid_backward(y: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.sigmoid` from its output ``y``: ``dy * y * (1 - y)``.

    Examples
    --------
    >>> y = ops.sigmoid(np.array([0.0, 1000.0]))
    >>> sigmoid_backward(y, np.ones(2))
    array([0.25, 0.  ])
    """
    y = ops._float_array("y", y)
    dy = _check_dy(dy, y.shape, y.dtype, what="the shape of `y`")
    return dy * y * (1 - y)


def tanh_backward(y: ArrayLike, dy: ArrayLike) -> NDArray[np.floating]:
    """Return the gradient of `vgg_np.ops.tanh` from its output ``y``: ``dy * (1 - y**2)``.

    Examples
    --------
    >>> y = ops.tanh(np.array([0.0, 1000.0]))
    >>> tanh_backward(y, np.ones(2))
    array([1., 0.])
    """
    y = ops._float_array("y", y)
    dy = _check_dy(dy, y.shape, y.dtype, what="the shape of `y`")
    return dy * (1 - y * y)
