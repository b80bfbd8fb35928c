"""Helpers shared by the readers of weight files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import numpy as np


def split_kernel_bias(layer: str, arrays: list) -> tuple:
    """Tell a layer's kernel (2-D or more) from its bias (1-D) by their ranks."""
    kernels = [a for a in arrays if len(a.shape) >= 2]
    biases = [a for a in arrays if len(a.shape) == 1]
    if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
        shapes = [tuple(a.shape) for a in arrays]
        raise ValueError(f"layer {layer!r} should hold a kernel and a bias, got shapes {shapes}")
    return kernels[0], biases[0]


#: How vgg_np names a layer's two tensors in flat files (npz, Keras-layout safetensors).
SUFFIXES = ("/kernel", "/bias")


def flatten_pairs(weights: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """``{layer: (kernel, bias)}`` -> ``{"layer/kernel": kernel, "layer/bias": bias}``."""
    return {
        f"{layer}{suffix}": np.asarray(array)
        for layer, pair in weights.items()
        for suffix, array in zip(SUFFIXES, pair, strict=True)
    }


def pair_flat(arrays: Mapping[str, object], where: str) -> dict[str, tuple]:
    """Group flat tensors back by layer (the inverse of `flatten_pairs`), strictly."""
    bad = sorted(k for k in arrays if not k.endswith(SUFFIXES))
    if bad:
        raise ValueError(f"{where}: keys must be '<layer>/kernel' or '<layer>/bias', got {bad}")
    pairs = []
    for layer in dict.fromkeys(k.rsplit("/", 1)[0] for k in arrays):
        missing = [s for s in SUFFIXES if f"{layer}{s}" not in arrays]
        if missing:
            raise ValueError(f"{where}: layer {layer!r} has no {' or '.join(missing)}")
        pairs.append((layer, tuple(arrays[f"{layer}{s}"] for s in SUFFIXES)))
    return check_unique(pairs, where)


def check_unique(pairs: list[tuple[str, object]], where: str) -> Mapping:
    """Build a dict from (name, value) pairs, refusing a layer name seen twice."""
    result: dict = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"{where}: layer {name!r} appears twice")
        result[name] = value
    return result


class LazyArray:
    """An array known by shape and dtype, computed only when NumPy asks for it.

    Readers return these so that a model can check every shape before any tensor is
    read, converted or allocated.
    """

    def __init__(self, shape: tuple, dtype, read):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def __array__(self, dtype=None, copy=None):
        array = np.asarray(self._read())
        if array.shape != self.shape:  # a reader bug, not a user error
            raise AssertionError(f"lazy array read {array.shape}, declared {self.shape}")
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a file beside `path`, renamed over it only once complete.

    An existing file is never left half-written, whatever fails while writing.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".vgg_np-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
