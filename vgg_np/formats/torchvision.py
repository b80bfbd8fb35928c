"""torchvision's VGG naming: state-dict keys to Keras layer names and back.

A torchvision VGG state dict names its layers by position in two ``nn.Sequential``:
``features.{i}.weight`` (convolutions, OIHW) and ``classifier.{0,3,6}.weight``
(``nn.Linear``, ``(out, in)``). This module maps those names; the layout conversions
themselves are in `vgg_np.formats.layouts`. It reads no file: the ``.pth`` and
``.safetensors`` readers hand it the flat mapping they read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from vgg_np.formats._common import SUFFIXES, FileFormatError, pair_flat
from vgg_np.formats.layouts import (
    dense_names,
    fc1_keras_to_torch,
    flattened_grid,
    hwio_to_oihw,
    lazy_hwc_rows,
    lazy_linear_to_dense,
    lazy_oihw_to_hwio,
)

_KEY = re.compile(r"(features|classifier)\.(\d+)\.(weight|bias)")


def flat_tensors(state: Mapping[str, object], where: str) -> tuple[dict, str]:
    """Map a flat mapping of tensors, in vgg_np's names or torchvision's; name the layout.

    Returns
    -------
    tensors : dict
        The canonical ``{Keras name: (kernel, bias)}``.
    layout : {"keras", "torchvision"}
    """
    if state and all(k.endswith(SUFFIXES) for k in state):
        return pair_flat(state, where), "keras"
    return from_state_dict(state, where), "torchvision"


#: How a file's description names each layout of flat tensors.
LAYOUT_NAMES = {"keras": "Keras layout", "torchvision": "torchvision layout"}


def _modules(state: Mapping[str, object], where: str) -> tuple[dict, dict]:
    """Group ``features.{i}`` and ``classifier.{i}`` tensors by module index."""
    modules: dict[str, dict[int, dict]] = {"features": {}, "classifier": {}}
    unknown = []
    for key, value in state.items():
        if m := _KEY.fullmatch(key):
            modules[m[1]].setdefault(int(m[2]), {})[m[3]] = value
        else:
            unknown.append(key)
    if unknown:
        hint = " (batch-norm VGG is not supported)" if any("running_" in k for k in unknown) else ""
        raise FileFormatError(
            f"{where}: not a torchvision VGG state dict; unexpected keys {unknown[:6]}{hint}"
        )
    if not modules["features"]:
        raise FileFormatError(f"{where}: no features.{{i}}.weight tensors: not a torchvision VGG")
    for prefix, indexed in modules.items():
        for index, pair in indexed.items():
            if set(pair) != {"weight", "bias"}:
                raise FileFormatError(
                    f"{where}: {prefix}.{index} has {sorted(pair)}, needs weight and bias"
                )
    return modules["features"], modules["classifier"]


def from_state_dict(state: Mapping[str, object], where: str) -> dict:
    """Map a torchvision VGG state dict to the canonical ``{Keras name: (kernel, bias)}``.

    Convolutions become ``blockB_convI`` (a pool sits wherever two convolutions are three
    modules apart: conv, ReLU, MaxPool), linear layers ``fc1``, ``fc2``, ...,
    ``predictions``. Arrays stay lazy; ``fc1`` is permuted to NHWC flatten order.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel
    convs, linears = _modules(state, where)
    tensors = {}
    block, conv, previous = 1, 0, None
    for index in sorted(convs):
        if previous is not None and index - previous > 2:  # a MaxPool in between
            block, conv = block + 1, 0
        conv, previous = conv + 1, index
        kernel = lazy_oihw_to_hwio(convs[index]["weight"], f"{where} features.{index}.weight")
        tensors[f"block{block}_conv{conv}"] = (kernel, convs[index]["bias"])
    last_channels = tensors[f"block{block}_conv{conv}"][0].shape[3]
    for name, index in zip(dense_names(len(linears)), sorted(linears), strict=True):
        weight = linears[index]["weight"]
        kernel = lazy_linear_to_dense(weight, f"{where} classifier.{index}.weight")
        if name == "fc1":
            kernel = lazy_hwc_rows(kernel, last_channels, where)
        tensors[name] = (kernel, linears[index]["bias"])
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


def conv_names(weights: Mapping[str, tuple]) -> list[str]:
    """List the convolutions of canonical weights in network order (block, then index).

    Examples
    --------
    >>> conv_names({"block2_conv1": 0, "fc1": 0, "block10_conv1": 0, "block1_conv2": 0})
    ['block1_conv2', 'block2_conv1', 'block10_conv1']
    """
    return sorted(
        (n for n in weights if n.startswith("block")),
        key=lambda n: tuple(int(p) for p in n.removeprefix("block").split("_conv")),
    )


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
            weight = np.asarray(kernel).T  # (in, out) -> (out, in)
        state[f"classifier.{3 * position}.weight"] = np.ascontiguousarray(weight)
        state[f"classifier.{3 * position}.bias"] = np.asarray(bias)
    return state
