"""Pictures of what VGG computes: feature maps and first-layer filters as image grids.

Pure functions from arrays to ``uint8`` images; saving them (with Pillow) is the caller's.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["feature_map_grid", "filter_grid"]


def _tile(tiles: np.ndarray, columns: int, pad: int, background: int) -> NDArray[np.uint8]:
    """Lay ``(K, h, w, ...)`` tiles out in a grid with `pad` pixels between them."""
    k, h, w = tiles.shape[:3]
    rows = math.ceil(k / columns)
    canvas = np.full(
        (rows * (h + pad) + pad, columns * (w + pad) + pad, *tiles.shape[3:]),
        background,
        dtype=np.uint8,
    )
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = tile
    return canvas


def _to_uint8(values: np.ndarray, axes: tuple) -> np.ndarray:
    """Stretch each tile to 0..255 on its own (a constant tile becomes black)."""
    low = values.min(axis=axes, keepdims=True)
    span = values.max(axis=axes, keepdims=True) - low
    scaled: np.ndarray = np.divide(
        values - low, span, out=np.zeros_like(values, dtype=np.float64), where=span > 0
    )
    return np.round(scaled * 255).astype(np.uint8)


def feature_map_grid(
    activation: ArrayLike, *, columns: int | None = None, scale: int = 1, pad: int = 2
) -> NDArray[np.uint8]:
    """Arrange the channels of one image's activation ``(H, W, C)`` as a grayscale grid.

    Each channel is stretched to 0..255 on its own, so weak and strong channels are both
    visible (compare brightness within a tile, not between tiles).

    Parameters
    ----------
    activation : array_like, shape (H, W, C)
        One layer's output for one image (NHWC without N).
    columns : int, optional
        Tiles per row; about the square root of C by default.
    scale : int, default 1
        Enlarge each pixel to ``scale`` x ``scale`` (for the small deep layers).
    pad : int, default 2
        White pixels between tiles.

    Returns
    -------
    ndarray of uint8, shape (rows * (H*scale + pad) + pad, columns * (W*scale + pad) + pad)

    Raises
    ------
    ValueError
        If `activation` is not 3-D.

    Examples
    --------
    >>> feature_map_grid(np.arange(2 * 3 * 4.0).reshape(2, 3, 4), columns=2).shape
    (10, 12)
    """
    a = np.asarray(activation, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"`activation` must be 3-D (H, W, C) for one image, got shape {a.shape}")
    tiles = _to_uint8(a.transpose(2, 0, 1), axes=(1, 2))  # (C, H, W)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    columns = columns or math.ceil(math.sqrt(tiles.shape[0]))
    return _tile(tiles, columns, pad, background=255)


def filter_grid(
    kernel: ArrayLike, *, scale: int = 12, columns: int = 8, pad: int = 2
) -> NDArray[np.uint8]:
    """Show first-layer filters ``(KH, KW, 3, O)`` as colour patches.

    Each filter is stretched to 0..255 over its three channels together, so its colour
    shows which input colours excite it. With Keras's caffe preprocessing the input
    channels are B, G, R: they are reversed here to display as RGB.

    Parameters
    ----------
    kernel : array_like, shape (KH, KW, 3, O)
        The kernel of ``block1_conv1``.
    scale : int, default 12
        Pixels per kernel tap.
    columns : int, default 8
    pad : int, default 2

    Returns
    -------
    ndarray of uint8, shape (rows * (KH*scale + pad) + pad, columns * (KW*scale + pad) + pad, 3)

    Raises
    ------
    ValueError
        If `kernel` does not take 3 input channels.

    Examples
    --------
    >>> filter_grid(np.ones((3, 3, 3, 64)), scale=4).shape
    (114, 114, 3)
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 4 or k.shape[2] != 3:
        raise ValueError(f"`kernel` must be (KH, KW, 3, O), a first layer's, got shape {k.shape}")
    tiles = _to_uint8(k.transpose(3, 0, 1, 2)[..., ::-1], axes=(1, 2, 3))  # (O, KH, KW, RGB)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    return _tile(tiles, columns, pad, background=255)
