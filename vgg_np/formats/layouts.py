"""Layout conversions between frameworks, applied once, at the loader boundary.

vgg_np's canonical layout is Keras's: convolution kernels HWIO ``(KH, KW, C, O)``, dense
kernels ``(in, out)``, and a flatten in H, W, C order. PyTorch, ONNX and Theano store
convolution weights OIHW ``(O, C, KH, KW)`` and linear weights ``(out, in)``, and flatten
NCHW maps in C, H, W order, so ``fc1``'s input axis is permuted. Both PyTorch and Keras
compute cross-correlation, so kernels are only transposed, never flipped (Theano's are:
see `vgg_np.formats.theano`).

Each conversion is a small named function with its own tests; readers apply them lazily
(see `LazyArray`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from vgg_np.formats._common import FileFormatError, LazyArray


def oihw_to_hwio(weight: npt.ArrayLike) -> np.ndarray:
    """PyTorch/ONNX conv weight ``(O, C, KH, KW)`` -> Keras kernel ``(KH, KW, C, O)``.

    Examples
    --------
    >>> oihw_to_hwio(np.zeros((64, 3, 3, 5))).shape
    (3, 5, 3, 64)
    """
    return np.asarray(weight).transpose(2, 3, 1, 0)  # (O, C, KH, KW) -> (KH, KW, C, O)


def hwio_to_oihw(kernel: npt.ArrayLike) -> np.ndarray:
    """Keras kernel ``(KH, KW, C, O)`` -> PyTorch/ONNX conv weight ``(O, C, KH, KW)``.

    Examples
    --------
    >>> hwio_to_oihw(np.zeros((3, 5, 3, 64))).shape
    (64, 3, 3, 5)
    """
    return np.asarray(kernel).transpose(3, 2, 0, 1)  # (KH, KW, C, O) -> (O, C, KH, KW)


def linear_to_dense(weight: npt.ArrayLike) -> np.ndarray:
    """``nn.Linear.weight`` ``(out, in)`` -> Keras dense kernel ``(in, out)``."""
    return np.asarray(weight).T  # (out, in) -> (in, out)


def chw_rows_to_hwc(kernel: npt.ArrayLike, chw: tuple[int, int, int]) -> np.ndarray:
    """Reorder the rows of a dense kernel ``(C*H*W, out)`` from C,H,W to H,W,C order.

    A dense layer after an NCHW flatten (PyTorch, Theano) sees its inputs in C, H, W
    order; after Keras's NHWC flatten the same values arrive in H, W, C order.

    Examples
    --------
    >>> k = np.arange(8).reshape(8, 1)  # rows numbered in C, H, W order, C=2, H=2, W=2
    >>> chw_rows_to_hwc(k, (2, 2, 2)).ravel()
    array([0, 4, 1, 5, 2, 6, 3, 7])
    """
    c, h, w = chw
    array = np.asarray(kernel)
    out = array.shape[1]
    return array.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(h * w * c, out)


def hwc_rows_to_chw(kernel: npt.ArrayLike, hwc: tuple[int, int, int]) -> np.ndarray:
    """Reorder the rows of a dense kernel ``(H*W*C, out)`` from H,W,C to C,H,W order.

    The inverse of `chw_rows_to_hwc`.

    Examples
    --------
    >>> k = np.arange(8).reshape(8, 1)
    >>> hwc_rows_to_chw(chw_rows_to_hwc(k, (2, 2, 2)), (2, 2, 2)).ravel()
    array([0, 1, 2, 3, 4, 5, 6, 7])
    """
    h, w, c = hwc
    array = np.asarray(kernel)
    out = array.shape[1]
    return array.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(c * h * w, out)


def fc1_torch_to_keras(weight: npt.ArrayLike, chw: tuple[int, int, int]) -> np.ndarray:
    """Convert torchvision's fc1 weight ``(out, C*H*W)`` to a Keras kernel ``(H*W*C, out)``.

    Examples
    --------
    >>> fc1_torch_to_keras(np.zeros((4096, 25088)), (512, 7, 7)).shape
    (25088, 4096)
    """
    return chw_rows_to_hwc(linear_to_dense(weight), chw)


def fc1_keras_to_torch(kernel: npt.ArrayLike, hwc: tuple[int, int, int]) -> np.ndarray:
    """Convert a Keras fc1 kernel ``(H*W*C, out)`` to torchvision's weight ``(out, C*H*W)``."""
    return hwc_rows_to_chw(kernel, hwc).T


def flattened_grid(features: int, channels: int, where: str) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` such that a C-channel map of H x W flattens to `features` values.

    VGG's last feature map is square, so ``H = W = sqrt(features / C)``.

    Examples
    --------
    >>> flattened_grid(25088, 512, "fc1")
    (512, 7, 7)
    """
    side = math.isqrt(features // channels) if channels else 0
    if channels == 0 or side * side * channels != features:
        raise FileFormatError(
            f"{where}: fc1 takes {features} inputs, not {channels} channels on a square grid"
        )
    return channels, side, side


def lazy_hwc_rows(kernel: np.ndarray | LazyArray, channels: int, where: str) -> LazyArray:
    """Lazily reorder a dense kernel's rows from C,H,W to H,W,C order (see `chw_rows_to_hwc`)."""
    chw = flattened_grid(kernel.shape[0], channels, where)
    return LazyArray(
        kernel.shape,
        kernel.dtype,
        lambda: chw_rows_to_hwc(np.asarray(kernel), chw),
        getattr(kernel, "where", where),
    )


def dense_names(count: int) -> list[str]:
    """Keras names of a classifier's `count` dense layers: fc1, fc2, ..., predictions."""
    if count == 0:  # a convolutional base alone (a notop file): no classifier
        return []
    return [f"fc{i}" for i in range(1, count)] + ["predictions"]


def lazy_oihw_to_hwio(weight: np.ndarray | LazyArray, where: str) -> LazyArray:
    """Lazily convert an OIHW convolution weight to an HWIO kernel (see `oihw_to_hwio`)."""
    if len(weight.shape) != 4:
        raise FileFormatError(f"{where}: a convolution weight must be 4-D, got {weight.shape}")
    o, c, kh, kw = weight.shape
    return LazyArray((kh, kw, c, o), weight.dtype, lambda: oihw_to_hwio(weight), where)


def lazy_linear_to_dense(weight: np.ndarray | LazyArray, where: str) -> LazyArray:
    """Lazily convert an ``(out, in)`` linear weight to a dense kernel (see `linear_to_dense`)."""
    if len(weight.shape) != 2:
        raise FileFormatError(f"{where}: a linear weight must be 2-D (out, in), got {weight.shape}")
    out, features = weight.shape
    return LazyArray((features, out), weight.dtype, lambda: linear_to_dense(weight), where)
