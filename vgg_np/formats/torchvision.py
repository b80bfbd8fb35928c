"""torchvision's VGG naming: state-dict keys to Keras layer names and back.

A torchvision VGG state dict names its layers by position in two ``nn.Sequential``:
``features.{i}.weight`` (convolutions, OIHW) and ``classifier.{0,3,6}.weight``
(``nn.Linear``, ``(out, in)``). This module maps those names; the layout conversions
themselves are in `vgg_np.formats.layouts`. It reads no file: the ``.pth`` and
``.safetensors`` readers hand it the flat mapping they read.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from vgg_np.formats._common import (
    BN_SUFFIXES,
    SUFFIXES,
    FileFormatError,
    LazyArray,
    pair_flat,
)
from vgg_np.formats.layouts import (
    dense_names,
    fc1_keras_to_torch,
    flattened_grid,
    hwio_to_oihw,
    lazy_hwc_rows,
    lazy_linear_to_dense,
    lazy_oihw_to_hwio,
)
from vgg_np.layers import Layer, shapes
from vgg_np.ops import BATCH_NORM_EPS

_KEY = re.compile(r"(features|classifier)\.(\d+)\.(weight|bias|running_mean|running_var)")
#: timm's VGG keeps torchvision's ``features`` but names its classifier differently: its
#: first two layers are convolutions (``pre_logits.fc1``, 7x7 valid, and ``fc2``, 1x1).
#: On a 7x7 feature map they are torchvision's ``classifier.0`` and ``classifier.3``
#: (timm's own ``_filter_fn`` converts that way), and ``head.fc`` is ``classifier.6``.
TIMM_KEYS = {"pre_logits.fc1": 0, "pre_logits.fc2": 3, "head.fc": 6}
#: The feature-map side timm's ``pre_logits.fc1`` covers; on larger maps it slides.
TIMM_SIDE = 7
#: PyTorch's ``BatchNorm2d`` epsilon (torchvision's ``vgg*_bn``).
TORCH_BN_EPS = BATCH_NORM_EPS["torch"]


def flat_tensors(state: Mapping[str, object], where: str) -> tuple[dict, str]:
    """Map a flat mapping of tensors, in vgg_np's names or torchvision's; name the layout.

    Returns
    -------
    tensors : dict
        The canonical ``{Keras name: (kernel, bias)}`` (batch norms:
        ``{"blockB_convI_bn": (gamma, beta, mean, var)}``).
    layout : {"keras", "torchvision", "timm"}
    """
    if state and all(k.endswith(SUFFIXES + BN_SUFFIXES) for k in state):
        return pair_flat(state, where), "keras"
    timm = any(k.removeprefix("module.").startswith("pre_logits.") for k in state)
    return from_state_dict(state, where), "timm" if timm else "torchvision"


#: How a file's description names each layout of flat tensors.
LAYOUT_NAMES = {"keras": "Keras layout", "torchvision": "torchvision layout", "timm": "timm layout"}


def _timm_to_torchvision(state: dict, where: str) -> dict:
    """Rename timm's classifier to torchvision's, its convolution weights as linear ones."""
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module not in TIMM_KEYS:
            renamed[key] = value
            continue
        if param == "weight" and len(value.shape) == 4:  # (O, C, KH, KW) -> (O, C*KH*KW)
            o, c, kh, kw = value.shape
            if module == "pre_logits.fc1" and (kh, kw) != (TIMM_SIDE, TIMM_SIDE):
                raise FileFormatError(
                    f"{where}: {key} has shape {value.shape}, timm's VGG has a "
                    f"{TIMM_SIDE}x{TIMM_SIDE} kernel there"
                )
            value = LazyArray((o, c * kh * kw), value.dtype, _reshaper(value, o), where)
        renamed[f"classifier.{TIMM_KEYS[module]}.{param}"] = value
    return renamed


def _reshaper(value: npt.ArrayLike, rows: int) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(value).reshape(rows, -1)  # C, KH, KW order: torch's flatten


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
        raise FileFormatError(
            f"{where}: not a torchvision or timm VGG state dict; unexpected keys {unknown[:6]}"
        )
    if not modules["features"]:
        raise FileFormatError(f"{where}: no features.{{i}}.weight tensors: not a torchvision VGG")
    for prefix, indexed in modules.items():
        for index, tensors in indexed.items():
            if set(tensors) not in ({"weight", "bias"}, set(BN_PARAMS)) or (
                prefix == "classifier" and "running_mean" in tensors
            ):
                raise FileFormatError(
                    f"{where}: {prefix}.{index} has {sorted(tensors)}; vgg_np reads "
                    "convolutions and linear layers (weight, bias) and, in features, batch "
                    f"norms ({', '.join(BN_PARAMS)})"
                )
    return modules["features"], modules["classifier"]


#: A batch norm's tensors in a state dict, in the order of `vgg_np.layers` (gamma, beta,
#: moving mean, moving variance).
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def from_state_dict(state: Mapping[str, object], where: str) -> dict:
    """Map a torchvision (or timm) VGG state dict to the canonical ``{Keras name: tensors}``.

    Convolutions become ``blockB_convI`` (a pool sits wherever two convolutions are one
    module further apart than conv, [BatchNorm2d,] ReLU), a batch norm right after a
    convolution ``blockB_convI_bn`` (gamma, beta, mean, var), linear layers ``fc1``,
    ``fc2``, ..., ``predictions``, however many a replaced classifier has (between two
    of them torchvision's ReLU, [Dropout]). Arrays stay lazy; ``fc1`` is permuted to
    NHWC flatten order.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel
    state = _timm_to_torchvision(state, where)
    features, linears = _modules(state, where)
    bn = {i for i, tensors in features.items() if "running_mean" in tensors}
    stray = sorted(i for i in bn if i - 1 not in features or i - 1 in bn)
    if stray:
        raise FileFormatError(f"{where}: features.{stray[0]} is a batch norm after no convolution")
    step = 3 if bn else 2  # conv, [BatchNorm2d,] ReLU
    tensors = {}
    block, conv, previous = 1, 0, None
    for index in sorted(set(features) - bn):
        if previous is not None and index - previous > step:  # a MaxPool in between
            block, conv = block + 1, 0
        conv, previous = conv + 1, index
        name = f"block{block}_conv{conv}"
        kernel = lazy_oihw_to_hwio(features[index]["weight"], f"{where} features.{index}.weight")
        tensors[name] = (kernel, features[index]["bias"])
        if index + 1 in bn:
            tensors[f"{name}_bn"] = tuple(features[index + 1][p] for p in BN_PARAMS)
    last_channels = tensors[f"block{block}_conv{conv}"][0].shape[3]
    names = dense_names(len(linears))
    for (before, index), name in zip(
        itertools.pairwise([None, *sorted(linears)]), names, strict=True
    ):
        if before is not None and index - before < 2:
            raise FileFormatError(
                f"{where}: classifier.{before} and classifier.{index} are adjacent linear "
                "layers; vgg_np reads torchvision's classifier, a ReLU between them"
            )
        weight = linears[index]["weight"]
        kernel = lazy_linear_to_dense(weight, f"{where} classifier.{index}.weight")
        if name == names[0]:  # the first takes the flattened map: C,H,W rows to H,W,C
            kernel = lazy_hwc_rows(kernel, last_channels, where)
        tensors[name] = (kernel, linears[index]["bias"])
    return tensors


def module_names(conv_names: list[str], n_dense: int, batch_norm: bool = False) -> dict[str, str]:
    """Map Keras layer names to the torchvision modules whose outputs equal them.

    A convolution's Keras output is after its ReLU, so it maps to the ReLU module
    (``block1_conv1`` -> ``features.1``); pools to their MaxPool, ``fc1`` to
    ``classifier.1`` (its ReLU), the last layer to its Linear (logits). With
    `batch_norm` (``vgg16_bn``: Conv2d, BatchNorm2d, ReLU), a convolution maps to its
    Conv2d and its ``_bn`` layer (the batch norm and its ReLU) to the ReLU.

    Examples
    --------
    >>> names = module_names(["block1_conv1", "block2_conv1"], 2)
    >>> names["block1_conv1"], names["block1_pool"], names["fc1"], names["predictions"]
    ('features.1', 'features.2', 'classifier.1', 'classifier.3')
    >>> names = module_names(["block1_conv1", "block2_conv1"], 2, batch_norm=True)
    >>> names["block1_conv1"], names["block1_conv1_bn"], names["block1_pool"]
    ('features.0', 'features.2', 'features.3')
    """
    names, index, block = {}, 0, None
    for name in conv_names:
        this_block = name.split("_")[0]
        if block is not None and this_block != block:
            names[f"{block}_pool"] = f"features.{index}"
            index += 1
        block = this_block
        if batch_norm:
            names[name], names[f"{name}_bn"] = f"features.{index}", f"features.{index + 2}"
        else:
            names[name] = f"features.{index + 1}"
        index += 3 if batch_norm else 2
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
    found = ((m, n) for n in weights if (m := re.fullmatch(r"block(\d+)_conv(\d+)", n)))
    return [n for m, n in sorted(found, key=lambda pair: (int(pair[0][1]), int(pair[0][2])))]


def _square_map(info: Mapping, path: str | os.PathLike) -> None:
    """Refuse a flatten over a feature map that is not square (torch's fc1 rows assume it).

    A state dict holds no input size: its reader finds fc1's grid as the square root of
    its rows per channel, so a 4x1 map would come back as 2x2, permuted wrongly.
    """
    table, input_shape = info.get("layers"), info.get("input_shape")
    if not table or input_shape is None:
        return
    for layer, shape, _ in shapes(table, tuple(input_shape)):
        if layer.kind == "flatten" and (shape[0] != shape[1] or shape[0] is None):
            raise ValueError(
                f"{os.fspath(path)!r}: torchvision's layout flattens a square feature map; "
                f"{layer.name!r} flattens a {shape[0]}x{shape[1]} map (an input of "
                f"{input_shape[0]}x{input_shape[1]}); write .npz, .keras or Keras-layout "
                ".safetensors"
            )


def _head_dense(head: tuple[Layer, ...], path: str | os.PathLike) -> list[str]:
    """Name the dense layers of a head torchvision's classifier holds; refuse others.

    torchvision's VGG pools the last map (adaptively, to fc1's grid), flattens it and runs
    Linear, ReLU, Dropout, ..., Linear: a head of ``flatten``, or ``global_avg`` (the
    pool to 1x1), then dense layers with ReLU, dropout between them, and a last dense
    layer without activation or with softmax (torch returns logits) fits.
    """
    first, *rest = head
    dense = [layer for layer in rest if layer.kind == "dense"]
    fits = (
        first.kind in ("flatten", "global_avg")
        and first.activation is None
        and bool(dense)
        and rest[-1] is dense[-1]
        and all(layer.kind in ("dense", "dropout") for layer in rest)
        and all(layer.activation is None for layer in rest if layer.kind == "dropout")
        and all(layer.activation == "relu" for layer in dense[:-1])
        and dense[-1].activation in (None, "softmax")
    )
    if not fits:
        described = ", ".join(f"{layer.name} ({layer.kind}, {layer.activation})" for layer in head)
        raise ValueError(
            f"{os.fspath(path)!r}: torchvision's layout cannot hold a head of {described}: its "
            "classifier is a Flatten (or global average pooling), Linear layers with ReLU "
            "(dropout between them) and a last Linear; write .npz, .keras or Keras-layout "
            ".safetensors"
        )
    return [layer.name for layer in dense]


def check_torchvision(info: Mapping, path: str | os.PathLike) -> list[str] | None:
    """Refuse to write what torchvision's layout cannot hold; name a head's dense layers.

    Returns
    -------
    list of str or None
        A head's dense layers in order, when it fits torchvision's classifier (see
        `_head_dense`); None for VGG's own top (``fc1``, ..., ``predictions``).

    Raises
    ------
    ValueError
        Naming the file, if `info` (a reader's, or a model's: ``layers``, ``input_shape``)
        holds a head torchvision's classifier does not fit, a batch norm epsilon other
        than PyTorch's, or a flatten of a feature map that is not square.
    """
    if info.get("batch_norm_eps", TORCH_BN_EPS) != TORCH_BN_EPS:
        raise ValueError(
            f"{os.fspath(path)!r}: torchvision's BatchNorm2d has epsilon {TORCH_BN_EPS}, "
            f"these batch norms {info['batch_norm_eps']}; write .npz or Keras-layout .safetensors"
        )
    dense = _head_dense(tuple(info["head"]), path) if info.get("head") else None
    _square_map(info, path)
    return dense


def to_state_dict(
    weights: Mapping[str, tuple], conv_names: list[str], dense: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Canonical weights -> a torchvision VGG state dict (the inverse of `from_state_dict`).

    `conv_names` lists the convolutions in order (``VGGConfig.conv_names()``): their block
    numbers place the pools. `dense` lists the classifier's dense layers in order (a
    head's, see `check_torchvision`); default ``fc1``, ``fc2``, ..., ``predictions``.
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
        if f"{name}_bn" in weights:  # BatchNorm2d right after the convolution
            index += 1
            for param, array in zip(BN_PARAMS, weights[f"{name}_bn"], strict=True):
                state[f"features.{index}.{param}"] = np.asarray(array)
        index += 2  # this conv (or batch norm) and its ReLU
    last_channels = np.shape(weights[conv_names[-1]][0])[-1]
    if dense is None:
        dense = [n for n in weights if n.startswith("fc")] + ["predictions"]
    for position, name in enumerate(n for n in dense if n in weights):
        kernel, bias = weights[name]
        if position == 0:  # fc1: its rows in torch's C, H, W flatten order
            c, h, w = flattened_grid(np.shape(kernel)[0], last_channels, "fc1")
            weight = fc1_keras_to_torch(kernel, (h, w, c))
        else:
            weight = np.asarray(kernel).T  # (in, out) -> (out, in)
        state[f"classifier.{3 * position}.weight"] = np.ascontiguousarray(weight)
        state[f"classifier.{3 * position}.bias"] = np.asarray(bias)
    return state
