"""Winograd F(2x2, 3x3) over a whole batch: a convolution, and the gradient of its kernel.

A training step of a 3x3 "same" convolution is three convolutions' worth of work: the
forward pass, the input's gradient (itself a convolution, `vgg_np.train.fast`) and the
kernel's. Winograd's F(2x2, 3x3) (`vgg_np.engine.winograd_matrices`: ``B^T``, ``G``,
``A^T``) does each in 2.25 times fewer multiplications, as 16 large GEMMs, one per
position of the transformed 4x4 tiles:

- forward: ``Y = A^T [(G K G^T) * (B^T d B)] A`` for each input tile ``d`` (4x4, stride
  2, the input padded by 1), summed over the input channels by the GEMMs;
- kernel gradient: the same trilinear form read the other way,
  ``dK = G^T [sum over tiles (A dy A^T) * (B^T d B)] G`` with ``dy`` the output
  gradient's 2x2 tiles: the sum over every tile of the batch is the GEMMs' inner
  dimension (``T = N * ceil(H/2) * ceil(W/2)``).

The transforms are sums of strided slices (the matrices hold 0, +-1 and +-1/2), done on
the step's threads a few images at a time (`IMAGES_PER_CHUNK`, `CHUNK_BYTES`: the
transformed tiles stay small) or a block of output channels at a time (the kernel's
transforms); the chunks' kernel gradients are added in chunk order, so nothing depends on
the number of threads. `conv2d` and `kernel_gradient` are tested against
`vgg_np.ops.conv2d` and `vgg_np.backward.conv2d_backward`; float32 results are within
1e-6 of the float64 ones (max error / max value).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from vgg_np.engine.threads import BLAS_SINGLE, Workers
from vgg_np.engine.winograd import winograd_matrices

__all__ = ["CHUNK_BYTES", "IMAGES_PER_CHUNK", "MIN_CHANNELS", "conv2d", "kernel_gradient"]

#: Images transformed at once, at most: 8 keep a 14x14x512 chunk's tiles at 12.8 MB ...
IMAGES_PER_CHUNK = 8
#: ... and fewer where an image's transformed tiles are larger (one at least).
CHUNK_BYTES = 32 << 20
#: Fewer channels than this (the first layer, narrow test models) run direct GEMMs:
#: the transforms would cost more than the products they save.
MIN_CHANNELS = 16
_BT, _G, _AT = winograd_matrices(2)  # (4, 4), (4, 3), (2, 4)


def _combine(coefficients: np.ndarray, arrays: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Write ``sum(c * a)`` into `out`: a row of a Winograd matrix applied to slices."""
    terms = [(float(c), a) for c, a in zip(coefficients, arrays, strict=True) if c != 0]
    (c0, a0), rest = terms[0], terms[1:]
    if c0 == 1:
        np.copyto(out, a0)
    elif c0 == -1:
        np.negative(a0, out=out)
    else:
        np.multiply(a0, out.dtype.type(c0), out=out)
    for c, a in rest:
        if c == 1:
            np.add(out, a, out=out)
        elif c == -1:
            np.subtract(out, a, out=out)
        else:
            out += out.dtype.type(c) * a
    return out


def _tiles(h: int, w: int) -> tuple[int, int]:
    return (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles covering H x W


def input_transform(x: np.ndarray) -> np.ndarray:
    """Return ``B^T d B`` of every 4x4 input tile: ``(16, N * tH * tW, C)``, row-major in ξ, η."""
    n, h, w, c = x.shape
    th, tw = _tiles(h, w)
    padded = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), x.dtype)  # (N, 2tH + 2, 2tW + 2, C)
    padded[:, 1 : h + 1, 1 : w + 1] = x
    rows = [padded[:, i : i + 2 * th : 2] for i in range(4)]  # tile row i: (N, tH, Wp, C)
    v = np.empty((4, 4, n, th, tw, c), x.dtype)
    for xi in range(4):
        t = _combine(_BT[xi], rows, np.empty(rows[0].shape, x.dtype))  # (N, tH, Wp, C)
        columns = [t[:, :, j : j + 2 * tw : 2] for j in range(4)]  # (N, tH, tW, C)
        for eta in range(4):
            _combine(_BT[eta], columns, v[xi, eta])
    return v.reshape(16, n * th * tw, c)


def gradient_transform(dy: np.ndarray) -> np.ndarray:
    """Return ``A dy A^T`` of every 2x2 tile of `dy`: ``(16, N * tH * tW, O)``."""
    n, h, w, o = dy.shape
    th, tw = _tiles(h, w)
    if (h, w) != (2 * th, 2 * tw):  # odd sizes: the missing outputs have no gradient
        padded = np.zeros((n, 2 * th, 2 * tw, o), dy.dtype)
        padded[:, :h, :w] = dy
        dy = padded
    rows = [dy[:, 0::2], dy[:, 1::2]]  # (N, tH, 2tW, O)
    g = np.empty((4, 4, n, th, tw, o), dy.dtype)
    for xi in range(4):
        t = _combine(_AT[:, xi], rows, np.empty(rows[0].shape, dy.dtype))
        columns = [t[:, :, 0::2], t[:, :, 1::2]]  # (N, tH, tW, O)
        for eta in range(4):
            _combine(_AT[:, eta], columns, g[xi, eta])
    return g.reshape(16, n * th * tw, o)


def kernel_transform(kernel: np.ndarray, workers: Workers | None = None) -> np.ndarray:
    """Return ``G K G^T``: ``(16, C, O)`` in the kernel's dtype, the output channels shared.

    In the kernel's dtype: one more rounding of float32 kernels than the engine's float64
    transform, far below the GEMMs' own (sums over C of products).
    """
    c, o = kernel.shape[2:]
    u = np.empty((4, 4, c, o), kernel.dtype)

    def columns(o0: int, o1: int) -> None:
        k = kernel[..., o0:o1]  # (3, 3, C, o1 - o0)
        for xi in range(4):
            row = _combine(_G[xi], list(k), np.empty(k.shape[1:], kernel.dtype))  # (3, C, .)
            for eta in range(4):
                _combine(_G[eta], list(row), u[xi, eta, :, o0:o1])

    _by_columns(columns, o, workers, kernel.size)
    return u.reshape(16, c, o)


def _by_columns(
    fn: Callable[[int, int], object], o: int, workers: Workers | None, size: int
) -> None:
    """Run ``fn(o0, o1)`` on blocks of the output channels, shared by `workers`."""
    parts = workers.threads if workers is not None and o >= 2 * workers.threads else 1
    bounds = [o * i // parts for i in range(parts + 1)]
    blocks = list(itertools.pairwise(bounds))
    if workers is None:
        fn(*blocks[0])
    else:
        workers.map(fn, blocks, size * 16)


def output_transform(m: np.ndarray, shape: tuple) -> np.ndarray:
    """Return ``A^T M A`` of every tile, laid out as the ``(N, H, W, O)`` output."""
    n, h, w = shape
    th, tw = _tiles(h, w)
    o = m.shape[-1]
    m = m.reshape(4, 4, n, th, tw, o)
    y = np.empty((n, 2 * th, 2 * tw, o), m.dtype)
    for p in range(2):
        t = [_combine(_AT[p], list(m[:, eta]), np.empty(m.shape[2:], m.dtype)) for eta in range(4)]
        for q in range(2):
            _combine(_AT[q], t, y[:, p::2, q::2])
    return y[:, :h, :w]


def _chunks(shape: tuple, channels: int, itemsize: int) -> list[tuple[int, int]]:
    """Image ranges transformed at once: the same for any number of threads."""
    n, h, w = shape[:3]
    th, tw = _tiles(h, w)
    per_image = 16 * th * tw * channels * itemsize  # its transformed tiles
    size = max(1, min(IMAGES_PER_CHUNK, CHUNK_BYTES // per_image))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def conv2d(
    x: NDArray[np.floating], kernel: NDArray[np.floating], workers: Workers
) -> NDArray[np.floating]:
    """Return the 3x3 "same" stride-1 convolution of `x` (no bias): `vgg_np.ops.conv2d`'s.

    Examples
    --------
    >>> from vgg_np import ops
    >>> rng = np.random.default_rng(0)
    >>> x, k = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 3, 3, 4))
    >>> bool(np.allclose(conv2d(x, k, Workers(1)), ops.conv2d(x, k, padding="same")))
    True
    """
    u = kernel_transform(kernel, workers)  # (16, C, O)
    y = np.empty((*x.shape[:3], kernel.shape[3]), np.result_type(x, kernel))

    def chunk(i0: int, i1: int) -> None:
        m = np.matmul(input_transform(x[i0:i1]), u)  # (16, T, C) @ (16, C, O)
        y[i0:i1] = output_transform(m, (i1 - i0, *x.shape[1:3]))

    with BLAS_SINGLE:
        chunks = _chunks(x.shape, max(x.shape[3], kernel.shape[3]), x.itemsize)
        workers.map(chunk, chunks, x.size * kernel.shape[3] * 4)
    return y


def kernel_gradient(
    x: NDArray[np.floating], dy: NDArray[np.floating], workers: Workers
) -> NDArray[np.floating]:
    """Return the gradient of a 3x3 "same" convolution's kernel: ``(3, 3, C, O)``.

    `vgg_np.backward.conv2d_backward`'s ``dkernel`` for input `x` and output gradient `dy`.

    Examples
    --------
    >>> from vgg_np import backward
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((2, 5, 6, 4))
    >>> expected = backward.conv2d_backward(x, np.zeros((3, 3, 3, 4)), dy)[1]
    >>> bool(np.allclose(kernel_gradient(x, dy, Workers(1)), expected))
    True
    """
    chunks = _chunks(x.shape, max(x.shape[3], dy.shape[3]), x.itemsize)

    def chunk(i0: int, i1: int) -> np.ndarray:
        v, g = input_transform(x[i0:i1]), gradient_transform(dy[i0:i1])
        return np.matmul(v.transpose(0, 2, 1), g)  # (16, C, T) @ (16, T, O): the sum over tiles

    with BLAS_SINGLE:
        parts = workers.map(chunk, chunks, x.size * dy.shape[3] * 4)
    c, o = x.shape[3], dy.shape[3]
    dk = np.empty((3, 3, c, o), np.result_type(x, dy))

    def columns(o0: int, o1: int) -> None:
        m = parts[0][..., o0:o1].copy()  # (16, C, .): the chunks added in order
        for part in parts[1:]:
            m += part[..., o0:o1]
        m = m.reshape(4, 4, c, o1 - o0)
        for r in range(3):  # G^T along xi, then along eta
            row = _combine(_G[:, r], list(m), np.empty(m.shape[1:], m.dtype))  # (4, C, .)
            for s in range(3):
                _combine(_G[:, s], list(row), dk[r, s, :, o0:o1])

    _by_columns(columns, o, workers, c * o)
    return dk
