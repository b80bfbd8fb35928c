"""Argument checks and window geometry shared by the kernels and their gradients.

An internal module of `vgg_np.ops`, documented so that its one other user can rely on it:
`vgg_np.backward` checks its arguments with these same functions, so that a kernel and its
gradient accept and refuse the same inputs with the same messages. Its names may change
between versions; only `resolve_padding`, `Padding` and `IntOrPair` are public, re-exported
by `vgg_np.ops`.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the argument,
what was expected and what was given. The ``*_args`` functions check all the arguments of
one kernel family at once and return them cast to one dtype, with the window geometry.
"""

from __future__ import annotations

import numbers
from typing import TypeGuard

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IntOrPair",
    "Padding",
    "channel_params",
    "check_eps",
    "check_ndim",
    "check_variance",
    "conv_args",
    "dense_args",
    "float_array",
    "is_int",
    "output_size",
    "pad_spatial",
    "pool_args",
    "positive_pair",
    "resolve_padding",
]


#: ``"same"``, ``"valid"``, one int for every side, or ``((top, bottom), (left, right))``.
Padding = str | int | tuple[tuple[int, int], tuple[int, int]]

#: One int for both spatial axes, or ``(height, width)``.
IntOrPair = int | tuple[int, int]

#: Resolved padding, before and after: ``((top, bottom), (left, right))``.
Pads = tuple[tuple[int, int], tuple[int, int]]
#: A checked floating-point array.
FloatArray = NDArray[np.floating]


# ---------------------------------------------------------------------------------------
# Types and ranks
# ---------------------------------------------------------------------------------------


def float_array(name: str, value: ArrayLike) -> NDArray[np.floating]:
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


def check_ndim(name: str, array: np.ndarray, letters: str) -> None:
    """Refuse `array` unless it has one axis per letter (e.g. ``"NHWC"``)."""
    if array.ndim != len(letters):
        axes = ", ".join(letters)
        raise ValueError(f"`{name}` must be {len(letters)}-D ({axes}), got shape {array.shape}")


def is_int(value: object) -> TypeGuard[int]:
    """Return whether `value` is an integer (a NumPy one too), and not a bool.

    To the type checker it is then an int: a NumPy integer behaves as one here.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_pair(name: str, value: IntOrPair) -> tuple[int, int]:
    """Turn an int or an ``(h, w)`` pair into a pair of positive ints."""
    if is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"`{name}` must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    return pair


# ---------------------------------------------------------------------------------------
# Window geometry: padding and output sizes
# ---------------------------------------------------------------------------------------


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
    kh, kw = positive_pair("kernel_size", kernel_size)
    sh, sw = positive_pair("strides", strides)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            return (_same_padding(input_size[0], kh, sh), _same_padding(input_size[1], kw, sw))
        raise ValueError(f"`padding` must be 'same' or 'valid' when a string, got {padding!r}")
    if is_int(padding):
        pads = ((int(padding), int(padding)), (int(padding), int(padding)))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)
        and all(is_int(v) for p in padding for v in p)
    ):
        (top, bottom), (left, right) = padding
        pads = ((int(top), int(bottom)), (int(left), int(right)))
    else:
        raise TypeError(
            "`padding` must be 'same', 'valid', an int or ((top, bottom), (left, right)), "
            f"got {padding!r}"
        )
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"`padding` must not be negative, got {padding!r}")
    return pads


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)  # ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def output_size(
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


def pad_spatial(
    x: NDArray[np.floating], pads: tuple[tuple[int, int], tuple[int, int]], value: float = 0.0
) -> NDArray[np.floating]:
    """Pad the H and W axes of an NHWC array with `value`; no copy when nothing is padded."""
    if pads == ((0, 0), (0, 0)):
        return x
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)  # (N, H+pt+pb, W+pl+pr, C)


# ---------------------------------------------------------------------------------------
# The arguments of each kernel family
# ---------------------------------------------------------------------------------------


def conv_args(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None,
    strides: IntOrPair,
    padding: Padding,
) -> tuple[FloatArray, FloatArray, FloatArray | None, tuple[int, int], Pads, tuple[int, int]]:
    """Check the arguments of a convolution; return them cast to one dtype, plus geometry."""
    x = float_array("x", x)
    kernel = float_array("kernel", kernel)
    check_ndim("x", x, "NHWC")
    if kernel.ndim != 4:
        raise ValueError(f"`kernel` must be 4-D (KH, KW, C, O), got shape {kernel.shape}")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(
            f"`x` has {x.shape[3]} channels but `kernel` expects {kernel.shape[2]}: "
            f"x shape {x.shape} (N, H, W, C), kernel shape {kernel.shape} (KH, KW, C, O)"
        )
    arrays = [x, kernel]
    if bias is not None:
        bias = float_array("bias", bias)
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
    stride_pair = positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], stride_pair)
    out_size = output_size(x.shape[1:3], kernel.shape[:2], stride_pair, pads)
    return x, kernel, bias, stride_pair, pads, out_size


def pool_args(
    x: ArrayLike, pool_size: IntOrPair, strides: IntOrPair | None, padding: Padding
) -> tuple[FloatArray, tuple[int, int], tuple[int, int], Pads, tuple[int, int]]:
    """Check the arguments of a pooling; return them with the output size."""
    x = float_array("x", x)
    check_ndim("x", x, "NHWC")
    window = positive_pair("pool_size", pool_size)
    step = window if strides is None else positive_pair("strides", strides)
    pads = resolve_padding(padding, x.shape[1:3], window, step)
    for (before, after), size in zip(pads, window, strict=True):
        # A window made only of padding would have no element to take the maximum of.
        if before >= size or after >= size:
            raise ValueError(
                f"`padding` {pads} must be smaller than `pool_size` {window} on every side"
            )
    out_size = output_size(x.shape[1:3], window, step, pads)
    return x, window, step, pads, out_size


def dense_args(
    x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Check the arguments of a dense layer; return them cast to one dtype."""
    x = float_array("x", x)
    kernel = float_array("kernel", kernel)
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
        bias = float_array("bias", bias)
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


def channel_params(n_chan: int, where: str, **params: ArrayLike) -> list[np.ndarray]:
    """Return the named per-channel arrays, each checked to be float with shape (n_chan,)."""
    arrays = []
    for name, value in params.items():
        array = float_array(name, value)
        if array.shape != (n_chan,):
            raise ValueError(
                f"`{name}` must have shape ({n_chan},), one value per {where}, got {array.shape}"
            )
        if name == "var":
            check_variance(array)
        arrays.append(array)
    return arrays


def check_eps(eps: float) -> None:
    """Refuse an `eps` that is not a finite number >= 0 (a bool is not a number here)."""
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not 0 <= eps < np.inf:
        raise ValueError(
            f"`eps` must be a finite number >= 0 (torch uses 1e-5, Keras 1e-3), got {eps!r}"
        )


def check_variance(var: np.ndarray) -> None:
    """Refuse negative or NaN variances: they would give NaN outputs without a word."""
    bad = ~(var >= 0)
    if bad.any():
        channel = int(np.argmax(bad))
        raise ValueError(
            f"`var` must be >= 0 in every channel, got {var[channel]} in channel {channel} "
            f"({int(bad.sum())} of {var.size} channels bad)"
        )
