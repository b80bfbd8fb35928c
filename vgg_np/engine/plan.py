"""How each convolution runs: its algorithm, chunks of tile rows and blocks of channels.

A plan is fixed per layer and input size, whatever the batch or the threads: that is what
makes an image's result bitwise the same in any batch (every BLAS call it meets has the
same shapes). The built-in table (`choose_algorithm`, `default_layout`) was measured on
this project's machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: A layer with fewer output tiles per image splits its output channels into fixed
#: blocks of `CHANNEL_BLOCK` (up to `CHANNEL_BLOCKS` of them), so that one image still
#: feeds several threads; narrower GEMMs than that lose speed (measured: 256 -> 64
#: columns costs 20%).
MIN_TILES_PER_IMAGE = 256
CHANNEL_BLOCK = 128
CHANNEL_BLOCKS = 4

#: Bytes of transformed input (or im2col matrix) a chunk aims at, so that its transforms
#: run in cache (the sweep is in docs/performance.md)...
CHUNK_BYTES = 1 << 20
#: ...but a chunk has at least ``C * O / KERNEL_VALUES_PER_TILE`` tiles: each of its GEMMs
#: packs a C x O kernel, which must stay cheap beside the chunk's work (tiles * C * O).
KERNEL_VALUES_PER_TILE = 256


@dataclass
class ConvPlan:
    """How one convolution runs for one input size: fixed, whatever the batch or threads."""

    name: str
    algorithm: str  # "winograd-2", "winograd-4", "gemm", "naive"
    kernel: np.ndarray  # packed: (a*a, C, O) for Winograd, (9 * C, O) for GEMM
    bias: np.ndarray
    pool: bool  # a 2x2 max-pool follows: apply it before the bias and ReLU
    relu: bool  # the epilogue rectifies (else the convolution is linear)
    tiles_h: int = 0  # tile rows per image (for a fused pool after a direct conv: even)
    rows_per_chunk: int = 1  # tile rows per chunk
    rows_per_part: int = 1  # tile rows per piece of a chunk's input transform
    channel_block: int = 0  # output channels per block

    @property
    def m(self) -> int:
        """Output tile size: 2 or 4 for Winograd, 1 (one pixel) for direct convolution."""
        return tile_size(self.algorithm)


def tile_size(algorithm: str) -> int:
    """Output tile size of an algorithm: ``winograd-m`` gives m, direct convolution 1."""
    return int(algorithm[-1]) if algorithm.startswith("winograd") else 1


def choose_algorithm(requested: str, height: int, channels: int, dtype: npt.DTypeLike) -> str:
    """Pick the convolution algorithm of one layer from the built-in table measured here.

    ``auto``: direct GEMM for the first layer (3 input channels: transforms would cost
    more than the multiplies they save) and for float64 and float16 (the oracle stays
    exact-as-possible; float16 would lose too much); Winograd F(4x4) from 28x28 up;
    F(2x2) below, where 4x4 tiles waste too much padding.

    Examples
    --------
    >>> choose_algorithm("auto", 56, 256, np.float32), choose_algorithm("auto", 224, 3, "f4")
    ('winograd-4', 'gemm')
    """
    if requested in ("gemm", "naive"):
        return requested
    if requested == "winograd":
        return "winograd-4" if height >= 28 else "winograd-2"
    if channels <= 4 or np.dtype(dtype) != np.float32:
        return "gemm"
    return "winograd-4" if height >= 28 else "winograd-2"


def default_layout(
    algorithm: str, shape: tuple[int, int, int, int], itemsize: int, pool: bool
) -> dict[str, int]:
    """Chunks and channel blocks of one layer by the built-in rules.

    `shape` is ``(H, W, C, O)``. Chunks of whole tile rows of one image, about
    `CHUNK_BYTES` each and equal in size; output channels in blocks when an image has
    fewer than `MIN_TILES_PER_IMAGE` tiles. Returns the `ConvPlan` fields ``tiles_h``,
    ``rows_per_chunk``, ``rows_per_part`` and ``channel_block``.

    Examples
    --------
    >>> default_layout("winograd-4", (28, 28, 512, 512), 4, False)
    {'tiles_h': 7, 'rows_per_chunk': 7, 'rows_per_part': 4, 'channel_block': 128}
    """
    h, w, c, o = shape
    m = tile_size(algorithm)
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    if m == 1 and pool:
        tiles_h += tiles_h % 2  # the pool takes whole pairs of rows
    if m > 1:
        row_bytes = (m + 2) ** 2 * tiles_w * max(c, o) * itemsize
    else:
        row_bytes = w * max(9 * c, o) * itemsize
    rows = max(1, CHUNK_BYTES // row_bytes, -(-c * o // (KERNEL_VALUES_PER_TILE * tiles_w)))
    chunks = -(-tiles_h // rows)
    rows_per_chunk = -(-tiles_h // chunks)
    if m == 1 and pool:
        rows_per_chunk += rows_per_chunk % 2
    few = tiles_h * tiles_w < MIN_TILES_PER_IMAGE
    blocks = min(CHANNEL_BLOCKS, max(1, o // CHANNEL_BLOCK)) if few else 1
    # Layers split by channels have a chunk per image: two threads share its input
    # transform, in two pieces whatever the threads (the same BLAS calls).
    return {
        "tiles_h": tiles_h,
        "rows_per_chunk": rows_per_chunk,
        "rows_per_part": -(-rows_per_chunk // 2) if blocks > 1 else rows_per_chunk,
        "channel_block": -(-o // blocks),
    }
