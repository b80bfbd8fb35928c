"""Guessing a network's architecture from the tensors of a weights file."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from vgg_np.config import CONFIGS, VGGConfig

__all__ = ["infer_architecture"]


def infer_architecture(tensors: Mapping, info: Mapping, description: str) -> dict:
    """Guess `VGG`'s arguments from a canonical mapping of weights (see `VGG.from_file`).

    Parameters
    ----------
    tensors : mapping
        Keras layer name -> (kernel, bias) in Keras layout; only shapes are read.
    info : mapping
        What the file said about itself (input shape and layout, final activation).
    description : str
        The file's format, named in errors.

    Returns
    -------
    dict
        Keyword arguments of `vgg_np.model.VGG`.

    Raises
    ------
    ValueError
        If the tensors hold no VGG convolution blocks.

    Examples
    --------
    >>> import numpy as np
    >>> tensors = {"block1_conv1": (np.zeros((3, 3, 3, 8)), np.zeros(8))}
    >>> inferred = infer_architecture(tensors, {}, "npz")
    >>> inferred["config"].blocks, inferred["include_top"]
    (((8,),), False)
    """
    blocks: dict[int, list[int]] = {}
    for name, (kernel, _) in tensors.items():
        if name.startswith("block") and "_conv" in name:
            block = int(name.removeprefix("block").split("_")[0])
            blocks.setdefault(block, []).append(np.shape(kernel)[3])
    if sorted(blocks) != list(range(1, len(blocks) + 1)) or not blocks:
        raise ValueError(f"{description}: no VGG convolution blocks (block1_conv1 ...) found")
    names = [n for n in tensors if n.startswith("fc")]
    fc = tuple(np.shape(tensors[n][0])[1] for n in sorted(names, key=lambda n: int(n[2:])))
    known = {c.blocks: c.name for c in CONFIGS.values()}
    widths = tuple(tuple(blocks[b]) for b in sorted(blocks))
    config = VGGConfig(known.get(widths, "vgg-custom"), widths, fc=fc or (4096, 4096))
    inferred: dict = {"config": config, "include_top": "predictions" in tensors}
    if "predictions" in tensors:
        inferred["classes"] = int(np.shape(tensors["predictions"][0])[1])
    if "input_shape" in info:
        h, w, c = info["input_shape"]
        channels_first = info.get("input_layout") == "NCHW"
        inferred["data_format"] = "channels_first" if channels_first else "channels_last"
        if h and w:
            inferred["input_shape"] = (h, w, c)  # channels last; see VGG.from_file
        inferred["classifier_activation"] = info.get("classifier_activation")
    if inferred["include_top"] and fc:
        # fc1 takes the last feature map flattened: a square of this side.
        side = math.isqrt(np.shape(tensors["fc1"][0])[0] // widths[-1][-1])
        if "torchvision" in description:
            inferred["adaptive_pool"] = side  # torchvision pools to it: any input size
        elif "input_shape" not in inferred:
            inferred["input_shape"] = (side * 2 ** len(widths), side * 2 ** len(widths), 3)
    return inferred
