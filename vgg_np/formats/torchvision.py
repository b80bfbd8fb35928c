"""torchvision's VGG layout, and the layout conversions between PyTorch and Keras.

A torchvision VGG state dict names its layers by position in two ``nn.Sequential``:
``features.{i}.weight`` (convolutions, OIHW) and ``classifier.{0,3,6}.weight``
(``nn.Linear``, ``(out, in)``). Both frameworks compute cross-correlation, so kernels are
only transposed, never flipped. Flatten order differs: PyTorch flattens NCHW (C, then H,
then W), Keras NHWC (H, W, C), so ``fc1``'s input axis is permuted.

The conversions are small named functions, tested on their own; they are applied once,
here at the loader boundary, lazily (see `LazyArray`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from vgg_np.formats._common import LazyArray

_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias)")
_CLASSIFIER = re.compile(r"classifier\.(\d+)\.(weight|bias)")


def oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
    """PyTorch/ONNX conv weight ``(O, C, KH, KW)`` -> Keras kernel ``(KH, KW, C, O)``.

    Examples
    --------
    >>> oihw_to_hwio(np.zeros((64, 3, 3, 5))).shape
    (3, 5, 3, 64)
    """
    return np.asarray(weight).transpose(2, 3, 1, 0)  # (O, C, KH, KW) -> (KH, KW, C, O)


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Keras kernel ``(KH, KW, C, O)`` -> PyTorch/ONNX conv weight ``(O, C, KH, KW)``.

    Examples
    --------
    >>> hwio_to_oihw(np.zeros((3, 5, 3, 64))).shape
    (64, 3, 3, 5)
    """
    return np.asarray(kernel).transpose(3, 2, 0, 1)  # (KH, KW, C, O) -> (O, C, KH, KW)


def linear_to_dense(weight: np.ndarray) -> np.ndarray:
    """``nn.Linear.weight`` ``(out, in)`` -> Keras dense kernel ``(in, out)``."""
    return np.asarray(weight).T  # (out, in) -> (in, out)


def chw_rows_to_hwc(kernel: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
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
    kernel = np.asarray(kernel)
    out = kernel.shape[1]
    return kernel.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(h * w * c, out)


def hwc_rows_to_chw(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Reorder the rows of a dense kernel ``(H*W*C, out)`` from H,W,C to C,H,W order.

    The inverse of `chw_rows_to_hwc`.

    Examples
    --------
    >>> k = np.arange(8).reshape(8, 1)
    >>> hwc_rows_to_chw(chw_rows_to_hwc(k, (2, 2, 2)), (2, 2, 2)).ravel()
    array([0, 1, 2, 3, 4, 5, 6, 7])
    """
    h, w, c = hwc
    kernel = np.asarray(kernel)
    out = kernel.shape[1]
    return kernel.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(c * h * w, out)


def fc1_torch_to_keras(weight: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Convert torchvision's fc1 weight ``(out, C*H*W)`` to a Keras kernel ``(H*W*C, out)``.

    Examples
    --------
    >>> fc1_torch_to_keras(np.zeros((4096, 25088)), (512, 7, 7)).shape
    (25088, 4096)
    """
    return chw_rows_to_hwc(linear_to_dense(weight), chw)


def fc1_keras_to_torch(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
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
        raise ValueError(
            f"{where}: fc1 takes {features} inputs, not {channels} channels on a square grid"
        )
    return channels, side, side


def lazy_hwc_rows(kernel, channels: int, where: str) -> LazyArray:
    """Lazily reorder a dense kernel's rows from C,H,W to H,W,C order (see `chw_rows_to_hwc`)."""
    chw = flattened_grid(kernel.shape[0], channels, where)
    return LazyArray(kernel.shape, kernel.dtype, lambda: chw_rows_to_hwc(np.asarray(kernel), chw))


def dense_names(count: int) -> list[str]:
    """Keras names of a classifier's `count` dense layers: fc1, fc2, ..., predictions."""
    return [f"fc{i}" for i in range(1, count)] + ["predictions"]


def from_state_dict(state: Mapping[str, np.ndarray], where: str) -> dict:
    """Map a torchvision VGG state dict to the canonical ``{Keras name: (kernel, bias)}``.

    Convolutions become ``blockB_convI`` (a pool sits wherever two convolutions are three
    modules apart: conv, ReLU, MaxPool), linear layers ``fc1``, ``fc2``, ...,
    ``predictions``. Arrays stay lazy; ``fc1`` is permuted to NHWC flatten order.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel
    convs: dict[int, dict] = {}
    linears: dict[int, dict] = {}
    unknown = []
    for key, value in state.items():
        if m := _FEATURE.fullmatch(key):
            convs.setdefault(int(m[1]), {})[m[2]] = value
        elif m := _CLASSIFIER.fullmatch(key):
            linears.setdefault(int(m[1]), {})[m[2]] = value
        else:
            unknown.append(key)
    if unknown:
        hint = " (batch-norm VGG is not supported)" if any("running_" in k for k in unknown) else ""
        raise ValueError(
            f"{where}: not a torchvision VGG state dict; unexpected keys {unknown[:6]}{hint}"
        )
    if not convs:
        raise ValueError(f"{where}: no features.{{i}}.weight tensors: not a torchvision VGG")
    for prefix, modules in (("features", convs), ("classifier", linears)):
        for index, pair in modules.items():
            if set(pair) != {"weight", "bias"}:
                raise ValueError(
                    f"{where}: {prefix}.{index} has {sorted(pair)}, needs weight and bias"
                )
    tensors = {}
    block, conv = 1, 0
    previous = None
    for index in sorted(convs):
        if previous is not None and index - previous > 2:  # a MaxPool in between
            block, conv = block + 1, 0
        conv, previous = conv + 1, index
        weight, bias = convs[index]["weight"], convs[index]["bias"]
        if len(weight.shape) != 4:
            raise ValueError(f"{where}: features.{index}.weight must be 4-D (O, C, KH, KW)")
        kh, kw, c, o = (weight.shape[2], weight.shape[3], weight.shape[1], weight.shape[0])
        tensors[f"block{block}_conv{conv}"] = (
            LazyArray((kh, kw, c, o), weight.dtype, lambda w=weight: oihw_to_hwio(w)),
            bias,
        )
    last_channels = convs[max(convs)]["weight"].shape[0]
    for name, index in zip(dense_names(len(linears)), sorted(linears), strict=True):
        weight, bias = linears[index]["weight"], linears[index]["bias"]
        if len(weight.shape) != 2:
            raise ValueError(f"{where}: classifier.{index}.weight must be 2-D (out, in)")
        out, features = weight.shape
        kernel = LazyArray((features, out), weight.dtype, lambda w_=weight: linear_to_dense(w_))
        if name == "fc1":
            kernel = lazy_hwc_rows(kernel, last_channels, where)
        tensors[name] = (kernel, bias)
    return tensors


def module_names(conv_names: list[str], n_dense: int) -> dict[str, str]:
    """Map Keras layer names to the torchvision modules whose outputs equal them.

    A convolution's Keras output is after its ReLU, so it maps to the ReLU module
    (``block1_conv1`` -> ``features.1``); pools to their MaxPool, ``fc1`` to
    ``classifier.1`` (its ReLU), the last layer to its Linear (logits).

    Examples
    --------
    >>> names = module_names(["block1_conv1", "block2_conv1"], 2)
    >>> names["block1_conv1"], names["block1_pool"], names["fc1"], names["predictions"]
    ('features.1', 'features.2', 'classifier.1', 'classifier.3')
    """
    names, index, block = {}, 0, None
    for name in conv_names:
        this_block = name.split("_")[0]
        if block is not None and this_block != block:
            names[f"{block}_pool"] = f"features.{index}"
            index += 1
        block = this_block
        names[name] = f"features.{index + 1}"
        index += 2
    names[f"{block}_pool"] = f"features.{index}"
    names["avgpool"] = "avgpool"
    for position, name in enumerate(dense_names(n_dense)):
        last = position == n_dense - 1
        names[name] = f"classifier.{3 * position + (0 if last else 1)}"
    return names


def to_state_dict(weights: Mapping[str, tuple], conv_names: list[str]) -> dict[str, np.ndarray]:
    """Canonical weights -> a torchvision VGG state dict (the inverse of `from_state_dict`).

    `conv_names` lists the convolutions in order (``VGGConfig.conv_names()``): their block
    numbers place the pools.
    """
    state, index, previous_block = {}, 0, 1
    for name in conv_names:
        block = int(name.removeprefix("block").split("_")[0])
        if block != previous_block:
            index += 1  # the MaxPool closing the previous block
            previous_block = block
        kernel, bias = weights[name]
        state[f"features.{index}.weight"] = np.ascontiguousarray(hwio_to_oihw(kernel))
        state[f"features.{index}.bias"] = np.asarray(bias)
        index += 2  # this conv and its ReLU
    last_channels = np.shape(weights[conv_names[-1]][0])[-1]
    dense = [n for n in weights if n.startswith("fc")] + ["predictions"]
    for position, name in enumerate(n for n in dense if n in weights):
        kernel, bias = weights[name]
        if name == "fc1":
            c, h, w = flattened_grid(np.shape(kernel)[0], last_channels, "fc1")
            weight = fc1_keras_to_torch(kernel, (h, w, c))
        else:
            weight = np.asarray(kernel).T
        state[f"classifier.{3 * position}.weight"] = np.ascontiguousarray(weight)
        state[f"classifier.{3 * position}.bias"] = np.asarray(bias)
    return state
