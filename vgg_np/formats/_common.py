"""Helpers shared by the readers of weight files."""

from __future__ import annotations

from collections.abc import Mapping


def split_kernel_bias(layer: str, arrays: list) -> tuple:
    """Tell a layer's kernel (2-D or more) from its bias (1-D) by their ranks."""
    kernels = [a for a in arrays if len(a.shape) >= 2]
    biases = [a for a in arrays if len(a.shape) == 1]
    if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
        shapes = [tuple(a.shape) for a in arrays]
        raise ValueError(f"layer {layer!r} should hold a kernel and a bias, got shapes {shapes}")
    return kernels[0], biases[0]


def check_unique(pairs: list[tuple[str, object]], where: str) -> Mapping:
    """Build a dict from (name, value) pairs, refusing a layer name seen twice."""
    result: dict = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"{where}: layer {name!r} appears twice")
        result[name] = value
    return result
