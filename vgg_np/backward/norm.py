"""Gradients of training-mode batch normalisation: the chain rule step by step, and collapsed."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import ops
from vgg_np.backward._checks import check_dy
from vgg_np.ops._checks import channel_params, check_eps, float_array

__all__ = ["batch_norm_backward", "batch_norm_backward_naive"]


def _bn_backward_args(
    x: ArrayLike, gamma: ArrayLike, dy: ArrayLike, eps: float
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    x = float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be (N, ..., C), got shape {x.shape}")
    where = f"channel of `x` (the last axis of shape {x.shape})"
    (gamma,) = channel_params(x.shape[-1], where, gamma=gamma)
    check_eps(eps)
    dtype = np.result_type(x, gamma)
    dy = check_dy(dy, x.shape, dtype, what="the shape of `x`")
    return x.astype(dtype, copy=False), gamma.astype(dtype, copy=False), dy


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
