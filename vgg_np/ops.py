"""The kernels of VGG in NumPy: each naive loop definition sits right above its fast form.

Layouts follow Keras, so Keras weights load without a transpose:

- activations are NHWC, ``(N, H, W, C)``;
- convolution kernels are HWIO, ``(KH, KW, C, O)``;
- dense kernels are ``(in, out)``.

Dimension letters used in every shape comment of the package:

======  =====================================================
N       batch size
H, W    input height and width
C       input channels
KH, KW  kernel (or pool window) height and width
O       output channels (or dense outputs)
Ho, Wo  output height and width
======  =====================================================

Every kernel keeps the dtype it is given: float32 in, float32 out; float64 in, float64
out. Running in float64 is the "oracle" mode that measures how far a float32 result is
from exact. Integer, bool and complex inputs are refused with a `TypeError`.

The naive functions (``*_naive``) are the definitions, written as plain loops so they can
be read against a textbook; the fast ones are tested against them.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BATCH_NORM_EPS",
    "adaptive_avg_pool2d",
    "batch_moments",
    "batch_norm",
    "batch_norm_naive",
    "conv2d",
    "conv2d_naive",
    "dense",
    "dense_naive",
    "dropout",
    "flatten",
    "fold_batch_norm",
    "global_avg_pool2d",
    "global_avg_pool2d_naive",
    "global_max_pool2d",
    "global_max_pool2d_naive",
    "im2col",
    "max_pool2d",
    "max_pool2d_naive",
    "relu",
    "resolve_padding",
    "sigmoid",
    "sigmoid_naive",
    "softmax",
    "softmax_naive",
    "tanh",
]

#: ``"same"``, ``"valid"``, one int for every side, or ``((top, bottom), (left, right))``.
Padding = str | int | tuple[tuple[int, int], tuple[int, int]]

#: One int for both spatial axes, or ``(height, width)``.
IntOrPair = int | tuple[int, int]

# ---------------------------------------------------------------------------------------
# Argument checking shared by the kernels.
# ---------------------------------------------------------------------------------------


def _float_array(name: str, value: ArrayLike) -> NDArray[np.floating]:
    """Return `value` as an array, refusing dtypes that are not real floating point."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "iub":
        hint = f"convert it first, e.g. `{name}.astype(np.float32)`"
    elif array.dtype.kind == "c":
        hint = "complex values are not supported; pass the real part"
    else:
        hint = "pass a NumPy array of float16, float32 or float64"
    raise TypeError(f"`{name}` must be a floating-point array, got dtype {array.dtype}: {hint}")


def _check_ndim(name: str, array: np.ndarray, letters: str) -> None:
    """Refuse `array` unless it has one axis per letter (e.g. ``"NHWC"``)."""
    if array.ndim != len(letters):
        axes = ", ".join(letters)
        raise ValueError(f"`{name}` must be {len(letters)}-D ({axes}), got shape {array.shape}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_pair(name: str, value: IntOrPair) -> tuple[int, int]:
    """Turn an int or an ``(h, w)`` pair into a pair of positive ints."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"`{name}` must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    return pair


def resolve_padding(
    padding: Padding,
    input_size: tuple[int, int],
    kernel_size: IntOrPair,
    strides: IntOrPair = 1,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turn any accepted `padding` into explicit ``((top, bottom), (left, right))``.

    Parameters
    ----------
    padding : {"same", "valid"} or int or ((int, int), (int, int))
        ``"valid"`` pads nothing. ``"same"`` pads so that the output has
        ``ceil(size / stride)`` pixels per axis, with the odd pixel at the bottom/right
        (the TensorFlow and Keras rule). An int pads every side by that much.
    input_size : (int, int)
        ``(H, W)`` of the input.
    kernel_size, strides : int or (int, int)
        Window size and step.

    Returns
    -------
    ((int, int), (int, int))
        Padding before and after, for height then width.

    Raises
    ------
    ValueError
        If `padding` is an unknown string or a negative amount.
    TypeError
        If `padding` has none of the accepted forms.

    Notes
    -----
    With ``"same"`` the total padding of an axis of size ``n`` is
    ``max((ceil(n / s) - 1) * s + k - n, 0)``; it depends on the input size when the
    stride is above 1.

    Examples
    --------
    >>> resolve_padding("same", (224, 224), 3)
    ((1, 1), (1, 1))
    >>> resolve_padding("same", (5, 6), 3, strides=2)
    ((1, 1), (0, 1))
    >>> resolve_padding(2, (5, 5), 3)
    ((2, 2), (2, 2))
    """
    kh, kw = _positive_pair("kernel_size", kernel_size)
    sh, sw = _positive_pair("strides", strides)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            return (_same_padding(input_size[0], kh, sh), _same_padding(input_size[1], kw, sw))
        raise ValueError(f"`padding` must be 'same' or 'valid' when a string, got {padding!r}")
    if _is_int(padding):
        pads = ((int(padding), int(padding)), (int(padding), int(padding)))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)
        and all(_is_int(v) for p in padding for v in p)
    ):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)
    else:
        raise TypeError(
            "`padding` must be 'same', 'valid', an int or ((top, bottom), (left, right)), "
            f"got {padding!r}"
        )
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"`padding` must not be negative, got {padding!r}")
    return pads  # type: ignore[return-value]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)  # ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def _output_size(
    input_size: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> tuple[int, int]:
    """Return ``(Ho, Wo) = (padded - kernel) // stride + 1``, refusing too-large kernels."""
    sizes = []
    for axis, n, k, s, (before, after) in zip(
        ("height", "width"), input_size, kernel_size, strides, pads, strict=True
    ):
        padded = n + before + after
        if padded < k:
            raise ValueError(
                f"window {kernel_size} is larger than the padded input along {axis}: "
                f"input {tuple(input_size)}, padding {pads} gives {padded} < {k}"
            )
        sizes.append((padded - k) // s + 1)
    return sizes[0], sizes[1]


def _pad_spatial(
    x: NDArray[np.floating], pads: tuple[tuple[int, int], tuple[int, int]], value: float = 0.0
) -> NDArray[np.floating]:
    """Pad the H and W axes of an NHWC array with `value`; no copy when nothing is padded."""
    if pads == ((0, 0), (0, 0)):
        return x
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)  # (N, H+pt+pb, W+pl+pr, C)


def _conv_args(x, kernel, bias, strides, padding):
    """Check the arguments of a convolution; return them cast to one dtype, plus geometry."""
    x = _float_array("x", x)
    kernel = _float_array("kernel", kernel)
    _check_ndim("x", x, "NHWC")
    if kernel.ndim != 4:
        raise ValueError(f"`kernel` must be 4-D (KH, KW, C, O), got shape {kernel.shape}")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(
            f"`x` has {x.shape[3]} channels but `kernel` expects {kernel.shape[2]}: "
            f"x shape {x.shape} (N, H, W, C), kernel shape {kernel.shape} (KH, KW, C, O)"
        )
    arrays = [x, kernel]
    if bias is not None:
        bias = _float_array("bias", bias)
        if bias.shape != (kernel.shape[3],):
            raise ValueError(
                f"`bias` must have shape ({kernel.shape[3]},) to match kernel shape "
                f"{kernel.shape} (KH, KW, C, O), got {bias.shape}"
            )
        arrays.append(bias)
    dtype = np.result_type(*arrays)
    x, kernel = x.astype(dtype, copy=False), kernel.astype(dtype, copy=False)
    if bias is not None:
        bias = bias.astype(dtype, copy=False)
    stride_pair = _positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], stride_pair)
    out_size = _output_size(x.shape[1:3], kernel.shape[:2], stride_pair, pads)
    return x, kernel, bias, stride_pair, pads, out_size


# ---------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------


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
    x, kernel, bias, (sh, sw), pads, (ho, wo) = _conv_args(x, kernel, bias, strides, padding)
    xp = _pad_spatial(x, pads)
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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
    kh, kw = _positive_pair("kernel_size", kernel_size)
    sh, sw = _positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
    ho, wo = _output_size(x.shape[1:3], (kh, kw), (sh, sw), pads)
    xp = _pad_spatial(x, pads)  # (N, H+pt+pb, W+pl+pr, C)
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
    x, kernel, bias, stride_pair, pads, (ho, wo) = _conv_args(x, kernel, bias, strides, padding)
    n = x.shape[0]
    kh, kw, c, o = kernel.shape
    cols = im2col(x, (kh, kw), strides=stride_pair, padding=pads)  # (N*Ho*Wo, KH*KW*C)
    y = cols @ kernel.reshape(kh * kw * c, o)  # (N*Ho*Wo, O)
    if bias is not None:
        y += bias
    return y.reshape(n, ho, wo, o)  # (N, Ho, Wo, O)


# ---------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------


def _pool_args(x, pool_size, strides, padding):
    """Check the arguments of a pooling; return them with the output size."""
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
    window = _positive_pair("pool_size", pool_size)
    step = window if strides is None else _positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], window, step)
    for (before, after), size in zip(pads, window, strict=True):
        # A window made only of padding would have no element to take the maximum of.
        if before >= size or after >= size:
            raise ValueError(
                f"`padding` {pads} must be smaller than `pool_size` {window} on every side"
            )
    out_size = _output_size(x.shape[1:3], window, step, pads)
    return x, window, step, pads, out_size


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
    x, (kh, kw), (sh, sw), pads, (ho, wo) = _pool_args(x, pool_size, strides, padding)
    xp = _pad_spatial(x, pads, value=-np.inf)
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
    x, (kh, kw), (sh, sw), pads, (ho, wo) = _pool_args(x, pool_size, strides, padding)
    xp = _pad_spatial(x, pads, value=-np.inf)  # (N, H+pt+pb, W+pl+pr, C)
    y = None
    for a in range(kh):
        for b in range(kw):
            view = xp[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw, :]
            # view: (N, Ho, Wo, C), element (a, b) of every window
            y = view.copy() if y is None else np.maximum(y, view, out=y)
    return y


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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
    ho, wo = _positive_pair("output_size", output_size)
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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
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
    x = _float_array("x", x)
    _check_ndim("x", x, "NHWC")
    return x.max(axis=(1, 2))  # (N, C)


# ---------------------------------------------------------------------------------------
# Batch normalisation
# ---------------------------------------------------------------------------------------

BATCH_NORM_EPS = {"torch": 1e-5, "keras": 1e-3, "onnx": 1e-5}
"""The ``eps`` each framework adds to the variance by default.

A file read from one of them must be normalised with its own: PyTorch's
``BatchNorm2d(eps=1e-5)``, Keras's ``BatchNormalization(epsilon=1e-3)``, ONNX's
``BatchNormalization`` attribute ``epsilon`` (default 1e-5). A layer's saved config wins
over these defaults.
"""


def _bn_args(x, gamma, beta, mean, var, eps):
    """Check a batch normalisation's arguments; return them cast to one dtype."""
    x = _float_array("x", x)
    if x.ndim < 2:
        raise ValueError(
            f"`x` must have a batch axis and a channel axis last, (N, ..., C), got shape {x.shape}"
        )
    where = f"channel of `x` (the last axis of shape {x.shape})"
    params = _channel_params(x.shape[-1], where, gamma=gamma, beta=beta, mean=mean, var=var)
    _check_eps(eps)
    dtype = np.result_type(x, *params)
    return x.astype(dtype, copy=False), *(p.astype(dtype, copy=False) for p in params)


def _channel_params(n_chan: int, where: str, **params: ArrayLike) -> list[np.ndarray]:
    """Return the named per-channel arrays, each checked to be float with shape (n_chan,)."""
    arrays = []
    for name, value in params.items():
        array = _float_array(name, value)
        if array.shape != (n_chan,):
            raise ValueError(
                f"`{name}` must have shape ({n_chan},), one value per {where}, got {array.shape}"
            )
        if name == "var":
            _check_variance(array)
        arrays.append(array)
    return arrays


def _check_eps(eps: float) -> None:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not 0 <= eps < np.inf:
        raise ValueError(
            f"`eps` must be a finite number >= 0 (torch uses 1e-5, Keras 1e-3), got {eps!r}"
        )


def _check_variance(var: np.ndarray) -> None:
    """Refuse negative or NaN variances: they would give NaN outputs without a word."""
    bad = ~(var >= 0)
    if bad.any():
        channel = int(np.argmax(bad))
        raise ValueError(
            f"`var` must be >= 0 in every channel, got {var[channel]} in channel {channel} "
            f"({int(bad.sum())} of {var.size} channels bad)"
        )


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
    x = _float_array("x", x)
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
    (``tests/test_ops.py::test_fold_batch_norm_is_as_accurate_as_unfolded``).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 5, 3))
    >>> k, b = np.ones((3, 3, 3, 2)), np.array([1.0, -1.0])
    >>> bn = np.array([2.0, 0.5]), np.zeros(2), np.array([3.0, 0.0]), np.array([4.0, 1.0])
    >>> kf, bf = fold_batch_norm(k, b, *bn, eps=1e-5)
    >>> unfolded = batch_norm(conv2d(x, k, b), *bn, eps=1e-5)
    >>> bool(np.allclose(conv2d(x, kf, bf), unfolded, rtol=1e-12, atol=1e-12))
    True
    """
    kernel = _float_array("kernel", kernel)
    if kernel.ndim not in (2, 4):
        raise ValueError(f"`kernel` must be (KH, KW, C, O) or (in, O), got shape {kernel.shape}")
    n_out = kernel.shape[-1]
    bias = np.zeros(n_out, kernel.dtype) if bias is None else bias
    where = f"output channel of `kernel` (the last axis of shape {kernel.shape})"
    params = _channel_params(n_out, where, bias=bias, gamma=gamma, beta=beta, mean=mean, var=var)
    _check_eps(eps)
    dtype = np.result_type(kernel, *params)
    bias, gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + eps)  # (O,)
    folded_kernel = kernel.astype(np.float64) * scale  # (..., O): output channel o times s[o]
    folded_bias = (bias - mean) * scale + beta  # (O,)
    return folded_kernel.astype(dtype), folded_bias.astype(dtype)


# ---------------------------------------------------------------------------------------
# Dense, activations, flatten, dropout
# ---------------------------------------------------------------------------------------


def _dense_args(x, kernel, bias):
    x = _float_array("x", x)
    kernel = _float_array("kernel", kernel)
    if x.ndim != 2:
        raise ValueError(f"`x` must be 2-D (N, in), got shape {x.shape}; flatten it first")
    if kernel.ndim != 2:
        raise ValueError(f"`kernel` must be 2-D (in, out), got shape {kernel.shape}")
    if x.shape[1] != kernel.shape[0]:
        raise ValueError(
            f"`x` has {x.shape[1]} features but `kernel` expects {kernel.shape[0]}: "
            f"x shape {x.shape} (N, in), kernel shape {kernel.shape} (in, out)"
        )
    arrays = [x, kernel]
    if bias is not None:
        bias = _float_array("bias", bias)
        if bias.shape != (kernel.shape[1],):
            raise ValueError(
                f"`bias` must have shape ({kernel.shape[1]},) to match kernel shape "
                f"{kernel.shape} (in, out), got {bias.shape}"
            )
        arrays.append(bias)
    dtype = np.result_type(*arrays)
    if bias is not None:
        bias = bias.astype(dtype, copy=False)
    return x.astype(dtype, copy=False), kernel.astype(dtype, copy=False), bias


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
    x, kernel, bias = _dense_args(x, kernel, bias)
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
    x, kernel, bias = _dense_args(x, kernel, bias)
    y = x @ kernel  # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias
    return y


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
    x = _float_array("x", x)
    return np.maximum(x, 0)


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
    x = _float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"`x` must have a batch axis and at least one more, got shape {x.shape}")
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (N, H*W*C)


def _check_axis(x: np.ndarray, axis: int) -> None:
    if not _is_int(axis) or not -x.ndim <= axis < x.ndim:
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
    x = _float_array("x", x)
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
    x = _float_array("x", x)
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
    x = _float_array("x", x)
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
    x = _float_array("x", x)
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
    x = _float_array("x", x)
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
    x = _float_array("x", x)
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
