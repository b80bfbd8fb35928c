"""Where the engine's numbers live: scratch buffers, padded inputs, output tiles.

A padded input is one "flat" array of image rows: each image owns ``tH * m + 2`` rows (a
zero row, its H rows, zeros), ``tH = ceil(H / m)`` tile rows of which row ``q`` reads rows
``q*m .. q*m + a - 1`` (``a = m + 2``), so a chunk of tile rows is a plain strided slice.
Output tiles are ``(m_j, m_i, rows, tW, O)`` until written out (`untile`); direct
convolution's are tiles of one pixel (``m = 1``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Scratch bytes each thread keeps between chunks and calls; arrays beyond it are
#: allocated per chunk and released.
SCRATCH_BYTES = 48 << 20


class Buffers:
    """Named scratch arrays, grow-only, handed out as views of the needed shape.

    With a `cap`, an array that would take the kept bytes over it is handed out but not
    kept (the next request allocates again).
    """

    def __init__(self, cap: int | None = None):
        self.storage: dict[str, np.ndarray] = {}
        self.cap = cap

    def get(self, name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """Return an array of `shape` and `dtype` named `name` (values left over)."""
        size = math.prod(shape)
        buf = self.storage.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            self.storage.pop(name, None)
            buf = np.empty(size, dtype)
            if self.cap is None or self.nbytes + buf.nbytes <= self.cap:
                self.storage[name] = buf
        return buf[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays kept."""
        return sum(buf.nbytes for buf in self.storage.values())


class _Workspace(Buffers, threading.local):
    """The scratch arrays of one thread, kept between chunks and calls up to a cap."""

    def __init__(self) -> None:
        super().__init__(SCRATCH_BYTES)


#: Each thread's scratch: one chunk at a time.
WORKSPACE = _Workspace()


@dataclass
class Padded:
    """A zero-padded batch in the flat row layout (see the module docstring)."""

    flat: np.ndarray  # (N * block, tW * m + 2, C)
    n: int
    h: int
    w: int
    m: int
    tiles_h: int
    tiles_w: int
    storage: str = ""  # which of the pass's arrays holds it

    @property
    def block(self) -> int:
        """Rows per image: a zero row, the image, zeros up to the last tile's a rows."""
        return self.tiles_h * self.m + 2

    def image(self, i: int) -> np.ndarray:
        """Return image `i`'s rows, padding included: ``(block, Wp, C)``."""
        return self.flat[i * self.block : (i + 1) * self.block]

    def interior(self) -> np.ndarray:
        """Return the ``(N, H, W, C)`` view that holds the layer's input."""
        images = self.flat.reshape(self.n, self.block, *self.flat.shape[1:])
        return images[:, 1 : 1 + self.h, 1 : 1 + self.w]


def padded(
    n: int,
    h: int,
    w: int,
    c: int,
    m: int,
    dtype: npt.DTypeLike,
    buffers: Buffers | None = None,
    storage: str = "in",
    tiles_h: int | None = None,
) -> Padded:
    """Lay out a padded batch; its array comes from `buffers` (reused) or is new.

    `tiles_h` (default ``ceil(h / m)``) tile rows are computed per image.
    """
    tiles_h, tiles_w = tiles_h or -(-h // m), -(-w // m)
    shape = (n * (tiles_h * m + 2), tiles_w * m + 2, c)
    if buffers is None:
        return Padded(np.zeros(shape, dtype), n, h, w, m, tiles_h, tiles_w)
    flat = buffers.get(storage, shape, dtype)
    result = Padded(flat, n, h, w, m, tiles_h, tiles_w, storage)
    # A reused array holds an earlier layer's values: zero every pixel but the interior.
    images = flat.reshape(n, result.block, *shape[1:])
    images[:, 0] = 0
    images[:, h + 1 :] = 0
    images[:, :, 0] = 0
    images[:, :, w + 1 :] = 0
    return result


def reshaped(array: np.ndarray, shape: tuple) -> np.ndarray:
    """``array.reshape(shape)``, a view: a write into a reshaped copy would be lost."""
    view = array.reshape(shape)
    assert np.may_share_memory(view, array), f"reshaping {array.shape} to {shape} copied"
    return view


def pool_tiles(y: np.ndarray, ws: Buffers) -> np.ndarray:
    """2x2 max-pool of output tiles ``(m_j, m_i, rows, tW, O)``, pools never crossing tiles.

    Winograd tiles (m even) pool within each tile: ``(m_j/2, m_i/2, rows, tW, O)``.
    One-pixel tiles (direct convolution) pool pairs of rows and of columns:
    ``(1, 1, rows/2, W//2, O)``.
    """
    mj, mi, rows, tw, o = y.shape
    if mj == 1:
        plane, half = y[0, 0], tw // 2
        pairs = ws.get("pool_rows", (rows // 2, tw, o), y.dtype)
        np.maximum(plane[0::2], plane[1::2], out=pairs)
        pooled = ws.get("pooled", (1, 1, rows // 2, half, o), y.dtype)
        np.maximum(pairs[:, 0 : 2 * half : 2], pairs[:, 1 : 2 * half : 2], out=pooled[0, 0])
        return pooled
    pairs = ws.get("pool_rows", (mj // 2, mi, rows, tw, o), y.dtype)
    np.maximum(y[0::2], y[1::2], out=pairs)
    pooled = ws.get("pooled", (mj // 2, mi // 2, rows, tw, o), y.dtype)
    np.maximum(pairs[:, 0::2], pairs[:, 1::2], out=pooled)
    return pooled


def untile(tiles: np.ndarray, dest: np.ndarray, r0: int, relu: bool = False) -> None:
    """Copy tiles ``(m_j, m_i, rows, tW, O)`` into image rows ``r0..`` of `dest` ``(H, W, O)``.

    Tile ``(q, t)``'s pixel ``(i, j)`` goes to ``(r0 + q*m_i + i, t*m_j + j)``; pixels
    past `dest`'s edges (computed from padding) are dropped. With `relu`, the values are
    rectified on the way (one pass over them instead of two).
    """
    mj, mi, rows, tw, _ = tiles.shape
    h, w = dest.shape[:2]
    if r0 + rows * mi <= h and tw * mj <= w:  # the whole block fits: one transposing copy
        target = reshaped(dest[r0 : r0 + rows * mi, : tw * mj], (rows, mi, tw, mj, -1))
        _store(target, tiles.transpose(2, 1, 3, 0, 4), relu)  # (rows, m_i, tW, m_j, O)
        return
    for i in range(mi):
        nr = min(rows, -(-(h - r0 - i) // mi))  # tile rows whose pixel row i is inside
        for j in range(mj):
            nc = min(tw, -(-(w - j) // mj))
            if nr > 0 and nc > 0:
                rows_ = slice(r0 + i, r0 + i + (nr - 1) * mi + 1, mi)
                _store(dest[rows_, j : j + (nc - 1) * mj + 1 : mj], tiles[j, i, :nr, :nc], relu)


def _store(target: np.ndarray, source: np.ndarray, relu: bool) -> None:
    if relu:
        np.maximum(source, 0, out=target)
    else:
        np.copyto(target, source)
