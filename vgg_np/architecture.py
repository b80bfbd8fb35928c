"""Guessing a network's architecture from the tensors of a weights file."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vgg_np.config import CONFIGS, VGGConfig
from vgg_np.formats.contract import Family, Provenance, WeightSource
from vgg_np.formats.torchvision import TORCH_BN_EPS
from vgg_np.layers import Layer
from vgg_np.network import Network, channels_last, describe

__all__ = ["TORCH_FAMILIES", "describe_source", "infer_architecture"]

#: Families whose VGG ends in a linear layer: a file of theirs gives logits.
TORCH_FAMILIES = (Family.TORCHVISION, Family.TIMM)

_CONV = re.compile(r"block(\d+)_conv(\d+)")
_FC = re.compile(r"fc(\d+)")


def _shape(tensors: Mapping, name: str, rank: int, where: str) -> tuple[int, ...]:
    shape = tuple(np.shape(tensors[name][0]))
    if len(shape) != rank or 0 in shape:
        kind = "convolution" if rank == 4 else "dense"
        raise ValueError(
            f"{where}: {name} should hold a non-empty {rank}-D {kind} kernel, got shape {shape}"
        )
    return shape


def _conv_widths(tensors: Mapping, where: str) -> tuple[tuple[int, ...], ...]:
    """Output channels of every convolution, block by block, in index order."""
    found = sorted((int(m[1]), int(m[2]), name) for name in tensors if (m := _CONV.fullmatch(name)))
    blocks: dict[int, list[tuple[int, int]]] = {}
    for block, index, name in found:
        blocks.setdefault(block, []).append((index, _shape(tensors, name, 4, where)[3]))
    if not blocks or sorted(blocks) != list(range(1, len(blocks) + 1)):
        raise ValueError(f"{where}: no VGG convolution blocks (block1_conv1 ...) found")
    for block, convs in blocks.items():
        if [index for index, _ in convs] != list(range(1, len(convs) + 1)):
            raise ValueError(
                f"{where}: the convolutions of block {block} are not numbered 1, 2, ..."
            )
    return tuple(tuple(width for _, width in blocks[b]) for b in sorted(blocks))


def _dense_widths(tensors: Mapping, where: str) -> tuple[int, ...]:
    """Output widths of fc1, fc2, ... (the hidden dense layers), in order."""
    found = sorted((int(m[1]), name) for name in tensors if (m := _FC.fullmatch(name)))
    if [index for index, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"{where}: the dense layers are not numbered fc1, fc2, ...")
    return tuple(_shape(tensors, name, 2, where)[1] for _, name in found)


def _family(provenance: Provenance | Family | str | None) -> Family:
    if isinstance(provenance, Provenance):
        return provenance.family
    return Family(provenance or Family.UNKNOWN)


def _batch_norm_eps(
    info: Mapping, provenance: Provenance | Family | str | None, layout: str, where: str
) -> float:
    """Return the epsilon of the convolutions' batch norms: the file's, or its family's."""
    if "batch_norm_eps" in info:
        return float(info["batch_norm_eps"])
    if {Family.TORCHVISION, Family.TIMM} & {_family(provenance), layout}:
        return TORCH_BN_EPS  # BatchNorm2d's default, torchvision's and timm's vgg*_bn
    raise ValueError(
        f"{where}: its convolutions have batch norms (block1_conv1_bn ...) but nothing says "
        "their epsilon (PyTorch's 1e-5, Keras's 1e-3): pass batch_norm=EPS"
    )


def _from_info(info: Mapping) -> dict:
    """Read what a graph (ONNX) says about its input and final activation."""
    h, w, c = info["input_shape"]  # channels last
    layout = "channels_first" if info.get("input_layout") == "NCHW" else "channels_last"
    inferred = {
        "data_format": layout,
        "classifier_activation": info.get("classifier_activation"),
    }
    if h and w:
        inferred["input_shape"] = channels_last((h, w, c), layout, inverse=True)  # as given
    return inferred


def _classifier(tensors: Mapping, head: tuple[Layer, ...] | None, where: str) -> dict:
    """Return the top's arguments: a head of its own, or the standard top's classes."""
    inferred: dict = {"include_top": "predictions" in tensors}
    if head:
        inferred["head"] = head  # a classifier of its own: widths and kinds from the file
    elif "predictions" in tensors:
        inferred["classes"] = _shape(tensors, "predictions", 2, where)[1]
    return inferred


def _input_size(
    tensors: Mapping,
    widths: tuple[tuple[int, ...], ...],
    provenance: Provenance | Family | str | None,
    layout: str,
    where: str,
    known: bool,
    recorded: tuple[int, int] | None,
) -> dict:
    """fc1 takes the last feature map flattened: a square of this side fixes the input.

    A file that gives its own input size (`known`: a whole model's config, an ONNX
    graph) is taken as it says. Otherwise torchvision's and timm's layouts pool to that
    side (any input size); others need the input size that gives it: the size
    `recorded` with the weights (which may not be square), else the square fc1's rows
    imply.
    """
    if known:
        return {}
    first = "fc1" if "fc1" in tensors else "predictions"  # a classifier of one layer
    rows = _shape(tensors, first, 2, where)[0]
    side = math.isqrt(rows // widths[-1][-1])
    if side < 1:
        raise ValueError(
            f"{where}: {first} takes {rows} inputs, fewer than block{len(widths)}'s "
            f"{widths[-1][-1]} channels"
        )
    if {Family.TORCHVISION, Family.TIMM} & {_family(provenance), layout}:
        return {"adaptive_pool": side}  # torchvision pools to it: any input size
    size = side * 2 ** len(widths)
    return {"input_shape": (*(recorded or (size, size)), 3)}


def infer_architecture(
    tensors: Mapping,
    info: Mapping | None = None,
    provenance: Provenance | Family | str | None = None,
    *,
    where: str | None = None,
    layout: str = "keras",
) -> Network:
    """Describe the network a canonical mapping of weights belongs to (see `VGG.from_file`).

    Parameters
    ----------
    tensors : mapping
        Keras layer name -> (kernel, bias) in Keras layout; only shapes are read.
    info : mapping, optional
        What the file said about itself (input shape and layout, final activation).
    provenance : Provenance or Family, optional
        Where the weights came from: torchvision's get its adaptive average pool.
    where : str, optional
        The file, named in errors; default: the provenance's description.
    layout : str, default "keras"
        How the file laid its tensors out (`WeightSource.layout`): a torchvision state
        dict is meant for torchvision's VGG, adaptive average pool included.

    Returns
    -------
    Network
        Built by `vgg_np.network.describe`; ``network.arguments()`` are the keyword
        arguments of `vgg_np.model.VGG` that build it.

    Raises
    ------
    ValueError
        If the tensors hold no VGG convolution blocks, or misnumbered or misshaped ones.

    Examples
    --------
    >>> import numpy as np
    >>> tensors = {"block1_conv1": (np.zeros((3, 3, 3, 8)), np.zeros(8))}
    >>> network = infer_architecture(tensors, {}, "keras")
    >>> network.config.blocks, network.include_top
    (((8,),), False)
    """
    info = info or {}
    where = where or getattr(provenance, "description", None) or "the weights"
    widths = _conv_widths(tensors, where)
    head = info.get("head")
    fc = () if head else _dense_widths(tensors, where)
    known = {c.blocks: c.name for c in CONFIGS.values()}
    # A classifier of `predictions` alone has no hidden layer; no classifier, VGG's widths.
    top = fc or ("predictions" in tensors and not head)
    config = VGGConfig(known.get(widths, "vgg-custom"), widths, fc=fc if top else (4096, 4096))
    inferred: dict = {"config": config, **_classifier(tensors, head, where)}
    if any(_CONV.fullmatch(name.removesuffix("_bn")) for name in tensors if name.endswith("_bn")):
        inferred["batch_norm"] = _batch_norm_eps(info, provenance, layout, where)
    if "input_shape" in info:
        inferred.update(_from_info(info))
    size = getattr(provenance, "input_size", None)
    if head and "input_shape" not in inferred and size:  # recorded with the weights
        inferred["input_shape"] = (*size, 3)
    if inferred["include_top"] and not head:
        inferred.update(
            _input_size(tensors, widths, provenance, layout, where, "input_shape" in inferred, size)
        )
    recorded = provenance if isinstance(provenance, Provenance) else None
    return describe(**inferred, provenance=recorded)


def describe_source(source: WeightSource, **overrides: Any) -> Network:
    """Describe the network an open weights file holds, as `VGG.from_file` builds it.

    `infer_architecture` on the file's tensors, what it says of itself and its
    provenance; the output is what the file's own framework gives: logits for
    torchvision's and timm's weights (`TORCH_FAMILIES`) unless the file declares its last
    activation (an ONNX graph, a Keras config).

    Parameters
    ----------
    source : WeightSource
        An open file (`vgg_np.formats.open_weights`).
    **overrides
        Arguments of `vgg_np.network.describe` that replace what was inferred.

    Returns
    -------
    Network

    Raises
    ------
    ValueError
        If the tensors do not make a VGG (see `infer_architecture`).

    Examples
    --------
    >>> import numpy as np
    >>> tensors = {"block1_conv1": (np.zeros((3, 3, 3, 8)), np.zeros(8))}
    >>> describe_source(WeightSource(tensors, Provenance("npz", Family.UNKNOWN))).layers[0]
    Layer(name='block1_conv1', kind='conv', units=8, activation='relu')
    """
    network = infer_architecture(
        source.tensors, source.info, source.provenance, where=source.path, layout=source.layout
    )
    declared = "classifier_activation" in source.info  # an ONNX graph's own, a Keras config's
    if source.provenance.family in TORCH_FAMILIES and not declared:
        overrides.setdefault("classifier_activation", None)  # logits, as torch returns
    return network.replace(**overrides)
