"""Direct convolution by chunked GEMM: one im2col matrix per chunk of output rows.

The 9x blow-up of im2col never exists for the whole image, only for a chunk of rows (the
first layer, with 3 input channels, float64, and ``conv_algorithm="gemm"`` run this way).
Its output tiles are one pixel (``m = 1`` in `vgg_np.engine.layout`).
"""

from __future__ import annotations

import numpy as np

from vgg_np.engine.layout import WORKSPACE, Buffers, Padded


def gather_rows(source: Padded, i: int, q0: int, q1: int, out: np.ndarray) -> None:
    """Gather the im2col rows of output rows [q0, q1) of image `i` (m = 1) into `out`.

    `out` is ``(rows, W, KH, KW*C)``, one copy per kernel row, runs of KW*C values.
    """
    rows_read = source.image(i)[q0 : q1 + 2]  # (rows + 2, Wp, C)
    rows, w, c = q1 - q0, source.w, rows_read.shape[2]
    s_row, s_col, s_chan = rows_read.strides
    for kh in range(3):
        out[:, :, kh] = np.lib.stride_tricks.as_strided(
            rows_read[kh:], shape=(rows, w, 3 * c), strides=(s_row, s_col, s_chan), writeable=False
        )  # (rows, W, KW*C), a view


def multiply(cols: np.ndarray, kernel: np.ndarray, w: int, ws: Buffers) -> np.ndarray:
    """``cols @ kernel`` (a ``(9 * C, O)`` slice) as tiles of one pixel: ``(1, 1, rows, W, O)``."""
    y = ws.get("gemm", (cols.shape[0], kernel.shape[1]), kernel.dtype)
    np.matmul(cols, kernel, out=y)  # (rows*W, 9*C) @ (9*C, O) -> (rows*W, O)
    return y.reshape(1, 1, -1, w, kernel.shape[1])


class GemmSteps:
    """A direct (im2col + GEMM) chunk's steps, with one-pixel tiles."""

    def __init__(self, source: Padded, c: int):
        self.source, self.c = source, c

    def input_shape(self, rows: int) -> tuple:
        """Shape of a chunk's im2col rows: ``(rows, W, KH, KW*C)``."""
        return (rows, self.source.w, 3, 3 * self.c)

    def transform(self, v: np.ndarray, i: int, q0: int, p0: int, p1: int) -> None:
        """Gather rows [p0, p1) of the chunk of image `i` that starts at `q0`."""
        gather_rows(self.source, i, p0, p1, v[p0 - q0 : p1 - q0])

    def operands(self, v: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the operands as one position: ``(1, rows*W, 9*C)``, ``(1, 9*C, O block)``."""
        return v.reshape(1, -1, 9 * self.c), kernel[np.newaxis]

    def finish(self, product: np.ndarray) -> np.ndarray:
        """Output pixels ``(1, 1, rows, W, O)`` from the product ``(1, rows*W, O)``."""
        return product.reshape(1, 1, -1, self.source.w, product.shape[2])

    def output(self, v: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Output pixels ``(1, 1, rows, W, O)`` of a chunk for a kernel block."""
        return multiply(v.reshape(-1, 9 * self.c), kernel, self.source.w, WORKSPACE)
