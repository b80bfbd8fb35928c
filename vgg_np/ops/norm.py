"""Batch normalisation at inference (naive beside fast), training statistics, folding.

The ``eps`` of each framework is in `vgg_np.ops.frameworks` (`BATCH_NORM_EPS`); every
function here takes it as an argument with no default, so that a file is never normalised
with another framework's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import channel_params, check_eps, float_array

__all__ = ["batch_moments", "batch_norm", "batch_norm_naive", "fold_batch_norm"]


def _bn_args(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, mean: ArrayLike, var: ArrayLike, eps: float
) -> tuple[NDArray[np.floating], ...]:
    """Check a batch normalisation's arguments; return them cast to one dtype."""
    x = float_array("x", x)
    if x.ndim < 2:
        raise ValueError(
            f"`x` must have a batch axis and a channel axis last, (N, ..., C), got shape {x.shape}"
        )
    where = f"channel of `x` (the last axis of shape {x.shape})"
    params = channel_params(x.shape[-1], where, gamma=gamma, beta=beta, mean=mean, var=var)
    check_eps(eps)
    dtype = np.result_type(x, *params)
    return x.astype(dtype, copy=False), *(p.astype(dtype, copy=False) for p in params)


def batch_norm_naive(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    eps: float,
) -> NDArray[np.floating]:
    """Batch normalisation at inference, channel by channel: the definition of `batch_norm`.

    ``y[..., c] = (x[..., c] - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]``,
    PyTorch's ``BatchNorm2d`` in ``eval()`` and Keras's ``BatchNormalization`` at
    inference: `mean` and `var` are the running statistics stored with the weights.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C) or (N, C)
        Floating point; the channels are the last axis (NHWC, or dense features).
    gamma, beta : array_like, shape (C,)
        Scale and offset (PyTorch's ``weight`` and ``bias``). A Keras layer with
        ``scale=False`` or ``center=False`` has none: pass ones or zeros.
    mean, var : array_like, shape (C,)
        Running mean and (biased) running variance.
    eps : float
        Added to the variance. It differs by framework and has no default here, so that
        a file is never normalised with another framework's: PyTorch 1e-5, Keras 1e-3
        (`BATCH_NORM_EPS`), or the value stored in the layer's config.

    Returns
    -------
    ndarray
        The shape of `x`; the common dtype of all the arrays.

    Raises
    ------
    TypeError
        If an array is not floating point.
    ValueError
        If `x` has fewer than 2 axes, a parameter is not one value per channel, `eps` is
        negative or not finite, or a variance is negative or NaN.

    Examples
    --------
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> batch_norm_naive(x, np.ones(2), np.zeros(2), np.array([2.0, 20.0]),
    ...                  np.array([1.0, 100.0]), eps=0.0)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    x, gamma, beta, mean, var = _bn_args(x, gamma, beta, mean, var, eps)
    y = np.empty_like(x)
    for c in range(x.shape[-1]):
        y[..., c] = (x[..., c] - mean[c]) / np.sqrt(var[c] + eps) * gamma[c] + beta[c]
    return y


def batch_norm(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    eps: float,
) -> NDArray[np.floating]:
    """Batch normalisation at inference: ``(x - mean) * scale + beta`` over the last axis.

    Computes the same as `batch_norm_naive` (up to rounding), with the same parameters,
    return value and errors. ``scale = gamma / sqrt(var + eps)`` is worked out once per
    channel, as Keras does; subtracting the mean first keeps inputs close to the mean
    exact, which ``x * scale + (beta - mean * scale)`` would not.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C) or (N, C)
    gamma, beta, mean, var : array_like, shape (C,)
    eps : float
        See `batch_norm_naive`: PyTorch 1e-5, Keras 1e-3, no default.

    Returns
    -------
    ndarray
        The shape of `x`; the common dtype of all the arrays.

    Raises
    ------
    TypeError, ValueError
        As for `batch_norm_naive`.

    Examples
    --------
    >>> x = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> batch_norm(x, np.ones(2, np.float32), np.zeros(2, np.float32),
    ...            np.array([2.0, 3.0], np.float32), np.array([4.0, 16.0], np.float32),
    ...            eps=0.0)
    array([[-1. , -0.5],
           [ 0. ,  0. ],
           [ 1. ,  0.5]], dtype=float32)
    """
    x, gamma, beta, mean, var = _bn_args(x, gamma, beta, mean, var, eps)
    scale = gamma / np.sqrt(var + np.asarray(eps, x.dtype))  # (C,)
    y = x - mean  # (..., C), broadcast over the last axis
    y *= scale
    y += beta
    return y


def batch_moments(x: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Mean and biased variance of each channel over every other axis: training statistics.

    In training, PyTorch and Keras normalise with these batch statistics, the variance
    divided by the count ``M`` (not ``M - 1``): ``batch_norm(x, gamma, beta,
    *batch_moments(x), eps=eps)`` is batch normalisation in training mode.

    Parameters
    ----------
    x : array_like, shape (N, H, W, C) or (N, C)
        Floating point.

    Returns
    -------
    mean, var : ndarray, shape (C,)
        Same dtype as `x`; summed in float64 and rounded once.

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `x` has fewer than 2 axes.

    Examples
    --------
    >>> batch_moments(np.array([[1.0, 0.0], [3.0, 0.0]]))
    (array([2., 0.]), array([1., 0.]))
    """
    x = float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be (N, ..., C), got shape {x.shape}")
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)  # (C,)
    var = x.var(axis=axes, dtype=np.float64)  # (C,), two-pass: no cancellation
    return mean.astype(x.dtype), var.astype(x.dtype)


def fold_batch_norm(
    kernel: ArrayLike,
    bias: ArrayLike | None,
    gamma: ArrayLike,
    beta: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    eps: float,
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Fold an inference batch normalisation into the convolution or dense layer before it.

    With ``s = gamma / sqrt(var + eps)``, ``batch_norm(conv2d(x, K, b))`` equals
    ``conv2d(x, K * s, (b - mean) * s + beta)``: the normalisation costs nothing at run
    time. The product is formed in float64 and rounded once to the result's dtype.

    Parameters
    ----------
    kernel : array_like, shape (KH, KW, C, O) or (in, O)
        The layer's kernel (HWIO or dense); `O`, its last axis, is the normalised channel.
    bias : array_like, shape (O,), or None
        The layer's bias (None for ``use_bias=False``, as in most BN networks).
    gamma, beta, mean, var : array_like, shape (O,)
        As for `batch_norm`.
    eps : float
        As for `batch_norm`: PyTorch 1e-5, Keras 1e-3.

    Returns
    -------
    kernel, bias : ndarray
        The folded kernel (shape of `kernel`) and bias, shape (O,), in the common dtype of
        the inputs.

    Raises
    ------
    TypeError
        If an array is not floating point.
    ValueError
        On a size mismatch, a bad `eps` or a negative or NaN variance.

    Notes
    -----
    The folded layer rounds differently from conv + batch_norm; neither is exact.
    Measured in float32 against a float64 unfolded oracle (max error over max ``|y|``,
    3x3 convolutions 3->64, 64->64 and 256->256, running statistics near the outputs'):
    folded 2e-7..1.0e-6, unfolded 3e-7..1.0e-6. With a quarter of the channels nearly
    constant (variance ~5e-7, below torch's eps, so ``s`` ~ 300 magnifies rounding):
    folded 2.4e-6..6.4e-6, unfolded 4.1e-6..1.0e-5. Folding costs no accuracy
    (``tests/ops/test_kernels.py::test_fold_batch_norm_is_as_accurate_as_unfolded``).

    Examples
    --------
    >>> from vgg_np.ops import conv2d
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 5, 3))
    >>> k, b = np.ones((3, 3, 3, 2)), np.array([1.0, -1.0])
    >>> bn = np.array([2.0, 0.5]), np.zeros(2), np.array([3.0, 0.0]), np.array([4.0, 1.0])
    >>> kf, bf = fold_batch_norm(k, b, *bn, eps=1e-5)
    >>> unfolded = batch_norm(conv2d(x, k, b), *bn, eps=1e-5)
    >>> bool(np.allclose(conv2d(x, kf, bf), unfolded, rtol=1e-12, atol=1e-12))
    True
    """
    kernel = float_array("kernel", kernel)
    if kernel.ndim not in (2, 4):
        raise ValueError(f"`kernel` must be (KH, KW, C, O) or (in, O), got shape {kernel.shape}")
    n_out = kernel.shape[-1]
    bias = np.zeros(n_out, kernel.dtype) if bias is None else bias
    where = f"output channel of `kernel` (the last axis of shape {kernel.shape})"
    params = channel_params(n_out, where, bias=bias, gamma=gamma, beta=beta, mean=mean, var=var)
    check_eps(eps)
    dtype = np.result_type(kernel, *params)
    bias, gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + eps)  # (O,)
    folded_kernel = kernel.astype(np.float64) * scale  # (..., O): output channel o times s[o]
    folded_bias = (bias - mean) * scale + beta  # (O,)
    return folded_kernel.astype(dtype), folded_bias.astype(dtype)
