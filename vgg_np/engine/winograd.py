"""Winograd F(m x m, 3 x 3) (Lavin and Gray, 2016): the maths and the tile transforms.

For 3x3 stride-1 "same" convolutions each a x a input tile (a = m + 2) is transformed once
(``B^T d B``), the kernels once at load (``G g G^T``), and an m x m output tile costs
``a*a`` multiplies per input-output channel pair instead of ``9*m*m``: 2.25x fewer for
F(2x2), 4x fewer for F(4x4), at the price of larger rounding error (measured in the tests
and docs). The transforms are small BLAS matrix products over a chunk of about 1 MB, so
that they run in cache: columns first, rows straight from strided windows of the result.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from vgg_np.engine.layout import WORKSPACE, Buffers, Padded, padded, reshaped, untile

# Winograd F(m x m, 3 x 3) in Lavin and Gray's form: interpolation points 0, +-1, (+-2,) inf.
_WINOGRAD = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def winograd_matrices(
    m: int, dtype: npt.DTypeLike = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(B^T, G, A^T)`` of Winograd F(m x m, 3 x 3), m in {2, 4}.

    For one axis, an input tile ``d`` of a = m + 2 values and a 3-tap kernel ``g``, the m
    outputs of the cross-correlation are ``A^T [(G g) * (B^T d)]``; in 2-D the same is
    applied along both axes.

    Examples
    --------
    >>> bt, g, at = winograd_matrices(2)
    >>> d, k = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, -1.0])
    >>> at @ ((g @ k) * (bt @ d)), np.correlate(d, k, mode="valid")
    (array([-2., -2.]), array([-2., -2.]))
    """
    if m not in _WINOGRAD:
        raise ValueError(f"Winograd F(m x m, 3 x 3) is provided for m = 2 or 4, got {m}")
    bt, g, at = (np.array(matrix, dtype=dtype) for matrix in _WINOGRAD[m])
    return bt, g, at


def winograd_kernel(kernel: np.ndarray, m: int) -> np.ndarray:
    """Transform a ``(3, 3, C, O)`` kernel once: ``U[j*a + i] = (G g G^T)[i, j]``, ``(a*a, C, O)``.

    Computed in float64, stored in the kernel's dtype, by elementwise products and sums in
    a fixed order: a block of output channels transforms to exactly the values it has in
    the whole kernel (a BLAS product's rounding could depend on the shapes and threads).

    Examples
    --------
    >>> winograd_kernel(np.ones((3, 3, 2, 5)), 4).shape
    (36, 2, 5)
    """
    _, g, _ = winograd_matrices(m)
    a, k = m + 2, kernel.astype(np.float64).reshape(3, 3, -1)  # (3_r, 3_s, C*O)
    # rows[i, s] = sum_r g[i, r] k[r, s], then u[j, i] = sum_s g[j, s] rows[i, s], as
    # broadcast products and sums (the r = 0 term first): every element the same sequence.
    rows = _combine(g, k)  # (a_i, 3_s, C*O)
    u = _combine(g, rows.transpose(1, 0, 2))  # (a_j, a_i, C*O)
    return u.reshape(a * a, *kernel.shape[2:]).astype(kernel.dtype)


def _combine(weights: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``sum_t weights[:, t] * terms[t]`` for each row of `weights`, ``t`` in order."""
    total = weights[:, 0, None, None] * terms[0]
    for t in range(1, weights.shape[1]):
        total += weights[:, t, None, None] * terms[t]
    return total


@functools.cache
def matrices(m: int, dtype: npt.DTypeLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`winograd_matrices` in `dtype`, made once."""
    bt, g, at = (t.astype(dtype) for t in winograd_matrices(m))
    return bt, g, at


def transform_input(source: Padded, i: int, q0: int, q1: int, ws: Buffers, out: np.ndarray) -> None:
    """Transform the input tiles of tile rows [q0, q1) of image `i` into `out`.

    `out` is ``(a_j, a_i, rows, tW, C)``. Columns first: one strided copy per column of
    the a x a tile gathers every tile's column, one matrix product transforms them
    (``d B``); the rows are then transformed straight from that array by a product over
    overlapping strided windows (``B^T (d B)``), written in the order the GEMMs need.
    Scratch comes from `ws`.
    """
    m, tw, rows = source.m, source.tiles_w, q1 - q0
    rows_read = source.image(i)[q0 * m : q1 * m + 2]  # (rows*m + 2, Wp, C): what tiles read
    a, (nr, _, c), dtype = m + 2, rows_read.shape, rows_read.dtype
    bt, _, _ = matrices(m, dtype)
    gathered = ws.get("gathered", (a, nr, tw, c), dtype)
    for s in range(a):
        gathered[s] = rows_read[:, s : s + tw * m : m]  # column s of every tile: (nr, tW, C)
    cols = ws.get("cols", (a, nr, tw * c), dtype)
    np.matmul(bt, gathered.reshape(a, -1), out=cols.reshape(a, -1))  # (a_j, nr, tW*C)
    windows = np.lib.stride_tricks.sliding_window_view(cols, a, axis=1)[:, ::m]
    # windows: (a_j, rows, tW*C, a_r), a view
    v_rows = reshaped(out, (a, a, rows, tw * c)).transpose(0, 2, 1, 3)  # (a_j, rows, a_i, .)
    np.matmul(bt, windows.transpose(0, 1, 3, 2), out=v_rows)


def untransform(product: np.ndarray, m: int, tw: int, ws: Buffers) -> np.ndarray:
    """Output tiles ``A^T M A`` of the products ``(a*a, tiles, O)``: ``(m_j, m_i, rows, tW, O)``."""
    a, tiles, o = m + 2, product.shape[1], product.shape[2]
    _, _, at = matrices(m, product.dtype)
    p = ws.get("p", (m, a, tiles * o), product.dtype)
    np.matmul(at, product.reshape(a, -1), out=p.reshape(m, -1))  # over j: (m_j, a_i, ...)
    y = ws.get("y", (m, m, tiles // tw, tw, o), product.dtype)
    np.matmul(at, p, out=y.reshape(m, m, -1))  # over i, batched on j: (m_j, m_i, ...)
    return y


def transform_output(v: np.ndarray, u: np.ndarray, m: int, tw: int, ws: Buffers) -> np.ndarray:
    """Multiply transformed tiles by packed kernels; return the output tiles ``A^T M A``.

    `u` may be a block of the output channels. Returns ``(m_j, m_i, rows, tW, O)``.
    """
    product = ws.get("product", (v.shape[0], v.shape[1], u.shape[2]), u.dtype)
    np.matmul(v, u, out=product)  # one GEMM per transformed position: (tiles, C) @ (C, O)
    return untransform(product, m, tw, ws)


class WinogradSteps:
    """A Winograd chunk's steps: input tiles transformed, GEMMs and output transform."""

    def __init__(self, source: Padded, c: int):
        self.source, self.c, self.a = source, c, source.m + 2

    def input_shape(self, rows: int) -> tuple:
        """Shape of a chunk's transformed input: ``(a_j, a_i, rows, tW, C)``."""
        return (self.a, self.a, rows, self.source.tiles_w, self.c)

    def transform(self, v: np.ndarray, i: int, q0: int, p0: int, p1: int) -> None:
        """Transform tile rows [p0, p1) of the chunk of image `i` that starts at `q0`."""
        transform_input(self.source, i, p0, p1, WORKSPACE, v[:, :, p0 - q0 : p1 - q0])

    def operands(self, v: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the products' operands: ``(a*a, tiles, C)`` and ``(a*a, C, O block)``."""
        return v.reshape(self.a * self.a, -1, self.c), kernel

    def finish(self, product: np.ndarray) -> np.ndarray:
        """Output tiles ``(m_j, m_i, rows, tW, O)`` from the products ``(a*a, tiles, O)``."""
        return untransform(product, self.source.m, self.source.tiles_w, WORKSPACE)

    def output(self, v: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Output tiles ``(m_j, m_i, rows, tW, O)`` of a chunk for a kernel block."""
        matrix = v.reshape(self.a * self.a, -1, self.c)  # (a*a, tiles, C)
        return transform_output(matrix, kernel, self.source.m, self.source.tiles_w, WORKSPACE)


def winograd_conv3x3(x: np.ndarray, kernel: np.ndarray, m: int = 4) -> np.ndarray:
    """3x3 stride-1 "same" convolution of an NHWC batch by Winograd F(m x m, 3 x 3).

    The same as ``ops.conv2d(x, kernel, padding="same")`` up to rounding, which is larger
    than the direct method's: measured max error / max |y| of about 6e-7 (m = 2) and
    1.5e-6 (m = 4) against float64 on VGG16's layers, versus 2-4e-7 direct.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    kernel : ndarray, shape (3, 3, C, O)
    m : {2, 4}
        Output tile size.

    Returns
    -------
    ndarray, shape (N, H, W, O)

    Examples
    --------
    >>> from vgg_np import ops
    >>> rng = np.random.default_rng(0)
    >>> x, k = rng.standard_normal((1, 9, 10, 3)), rng.standard_normal((3, 3, 3, 4))
    >>> bool(np.allclose(winograd_conv3x3(x, k), ops.conv2d(x, k), atol=1e-12))
    True
    """
    n, h, w, c = x.shape
    source = padded(n, h, w, c, m, x.dtype)
    source.interior()[...] = x
    u, ws, (th, tw) = winograd_kernel(kernel, m), Buffers(), (source.tiles_h, source.tiles_w)
    out, v = (
        np.empty((n, h, w, kernel.shape[3]), x.dtype),
        np.empty((m + 2, m + 2, th, tw, c), x.dtype),
    )
    for i in range(n):
        transform_input(source, i, 0, th, ws, v)
        y = transform_output(v.reshape((m + 2) ** 2, th * tw, c), u, m, tw, ws)
        untile(y, out[i], 0)
    return out
