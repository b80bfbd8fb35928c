"""The fast inference path: Winograd and chunked-GEMM convolutions on several threads.

Everything here computes what `vgg_np.ops` defines (and is tested against the reference
forward pass, `vgg_np.layers.forward`); only the arithmetic is reorganised for speed:

- **Winograd F(m x m, 3 x 3)** (Lavin and Gray, 2016) for 3x3 stride-1 "same"
  convolutions: each a x a input tile (a = m + 2) is transformed once (``B^T d B``), the
  kernels once at load (``G g G^T``), and an m x m output tile costs ``a*a`` multiplies per
  input-output channel pair instead of ``9*m*m``: 2.25x fewer for F(2x2), 4x fewer for
  F(4x4), at the price of larger rounding error (measured in the tests and docs).
  The transforms are small BLAS matrix products over a chunk of about 1 MB, so that
  they run in cache: columns first, rows straight from strided windows of the result.
- **Chunked GEMM**: direct convolution, one im2col matrix per chunk of output rows, so the
  9x blow-up never exists for the whole image (the first layer, with 3 input channels,
  float64, and ``conv_algorithm="gemm"``).
- Each chunk's output is max-pooled (before the bias and ReLU: exact, both are monotonic
  per channel), biased and rectified while in cache, and written straight into the next
  layer's padded input. Chunks run on `Engine.threads` worker threads with BLAS at one
  thread each (NumPy releases the GIL).

Three promises, each tested:

- **Safe sharing.** Any number of threads may call one engine at once. Every call has
  its own activation buffers; the worker threads are shared (calls queue their chunks on
  them), and each worker's scratch arrays serve one chunk at a time.
- **Batch invariance.** An image's outputs are bitwise the same whatever batch it is in
  and whatever `threads` is: a chunk never spans two images, its shapes (hence every
  BLAS call's shapes, hence the reduction order) depend only on the layer and the
  image size, output channels are split in blocks fixed per layer, and the dense layers
  multiply one image at a time in fixed blocks of input rows.
- **Bounded memory.** A batch runs in slices of at most `slice_images` images; between
  calls an engine keeps at most `KEEP_BYTES` of activation buffers and each thread that
  ran a chunk at most `SCRATCH_BYTES` of scratch.

Data layout. A padded input is one "flat" array of image rows: each image owns
``tH * m + 2`` rows (a zero row, its H rows, zeros), ``tH = ceil(H / m)`` tile rows of
which row ``q`` reads rows ``q*m .. q*m + a - 1``, so a chunk of tile rows is a plain
strided slice. Output tiles are ``(m_j, m_i, rows, tW, O)`` until written out.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from vgg_np import ops
from vgg_np.layers import ACTIVATIONS, KINDS, shapes
from vgg_np.lowering import CONV_EPILOGUE

__all__ = ["ALGORITHMS", "Engine", "winograd_conv3x3", "winograd_matrices"]

ALGORITHMS = ("auto", "gemm", "winograd", "naive")

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

#: Most worker threads an engine starts by default (it takes the CPUs it may use, up to this).
MAX_THREADS = 8

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

#: A batch runs in slices of at most this many activation values in the largest layer
#: output per slice: 8 images at 224x224 (64 channels), more for smaller images.
SLICE_VALUES = 8 * 224 * 224 * 64

#: Activation buffers an engine keeps after a call for the next one (enough for one
#: 224x224 image); larger sets are released when the call returns.
KEEP_BYTES = 64 << 20

#: Scratch bytes each thread keeps between chunks and calls; arrays beyond it are
#: allocated per chunk and released.
SCRATCH_BYTES = 48 << 20

#: Smaller layers (multiply-adds per slice) run on the calling thread: handing tasks to
#: the workers costs tens of microseconds each.
MIN_PARALLEL_MACS = 4_000_000

#: Calls with fewer multiply-adds per slice take turns rather than run at once.
SERIAL_MACS = 100_000_000

#: Dense layers multiply one image at a time, in blocks of this many input rows whose
#: partial sums are added in order: the same BLAS calls whatever the batch or threads.
#: A block of fc1 (4 MB) stays in cache for the next image: at batch 8 the dense layers
#: cost about what one GEMM over the batch did (measured 87 against 83 ms of CPU).
DENSE_ROWS = 256


def winograd_matrices(m: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return tuple(np.array(matrix, dtype=dtype) for matrix in _WINOGRAD[m])


def winograd_kernel(kernel: np.ndarray, m: int) -> np.ndarray:
    """Transform a ``(3, 3, C, O)`` kernel once: ``U[j*a + i] = (G g G^T)[i, j]``, ``(a*a, C, O)``.

    Computed in float64, stored in the kernel's dtype.
    """
    _, g, _ = winograd_matrices(m)
    a = m + 2
    u = np.einsum("ir,rsco,js->jico", g, kernel.astype(np.float64), g)  # (a_j, a_i, C, O)
    return np.ascontiguousarray(u.reshape(a * a, *kernel.shape[2:]), dtype=kernel.dtype)


def _cpu_count() -> int:
    """Count the CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Buffers:
    """Named scratch arrays, grow-only, handed out as views of the needed shape.

    With a `cap`, an array that would take the kept bytes over it is handed out but not
    kept (the next request allocates again).
    """

    def __init__(self, cap: int | None = None):
        self.storage: dict[str, np.ndarray] = {}
        self.cap = cap

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
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
        return sum(buf.nbytes for buf in self.storage.values())


class _Workspace(_Buffers, threading.local):
    """The scratch arrays of one thread, kept between chunks and calls up to a cap."""


_WORKSPACE = _Workspace(SCRATCH_BYTES)


@dataclass
class _Padded:
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


def _padded(
    n: int, h: int, w: int, c: int, m: int, dtype, buffers=None, storage="in", tiles_h=None
) -> _Padded:
    """Lay out a padded batch; its array comes from `buffers` (reused) or is new.

    `tiles_h` (default ``ceil(h / m)``) tile rows are computed per image.
    """
    tiles_h, tiles_w = tiles_h or -(-h // m), -(-w // m)
    shape = (n * (tiles_h * m + 2), tiles_w * m + 2, c)
    if buffers is None:
        return _Padded(np.zeros(shape, dtype), n, h, w, m, tiles_h, tiles_w)
    flat = buffers.get(storage, shape, dtype)
    padded = _Padded(flat, n, h, w, m, tiles_h, tiles_w, storage)
    # A reused array holds an earlier layer's values: zero every pixel but the interior.
    images = flat.reshape(n, padded.block, *shape[1:])
    images[:, 0] = 0
    images[:, h + 1 :] = 0
    images[:, :, 0] = 0
    images[:, :, w + 1 :] = 0
    return padded


def _winograd_input(padded: _Padded, i: int, q0: int, q1: int, ws: _Buffers, out) -> None:
    """Transform the input tiles of tile rows [q0, q1) of image `i` into `out`.

    `out` is ``(a_j, a_i, rows, tW, C)``. Columns first: one strided copy per column of
    the a x a tile gathers every tile's column, one matrix product transforms them
    (``d B``); the rows are then transformed straight from that array by a product over
    overlapping strided windows (``B^T (d B)``), written in the order the GEMMs need.
    Scratch comes from `ws`.
    """
    m, tw, rows = padded.m, padded.tiles_w, q1 - q0
    source = padded.image(i)[q0 * m : q1 * m + 2]  # (rows*m + 2, Wp, C): rows the tiles read
    a, (nr, _, c), dtype = m + 2, source.shape, source.dtype
    bt, _, _ = _matrices(m, dtype)
    gathered = ws.get("gathered", (a, nr, tw, c), dtype)
    for s in range(a):
        gathered[s] = source[:, s : s + tw * m : m]  # column s of every tile: (nr, tW, C)
    cols = ws.get("cols", (a, nr, tw * c), dtype)
    np.matmul(bt, gathered.reshape(a, -1), out=cols.reshape(a, -1))  # (a_j, nr, tW*C)
    windows = np.lib.stride_tricks.sliding_window_view(cols, a, axis=1)[:, ::m]
    # windows: (a_j, rows, tW*C, a_r), a view
    v_rows = _reshaped(out, (a, a, rows, tw * c)).transpose(0, 2, 1, 3)  # (a_j, rows, a_i, .)
    np.matmul(bt, windows.transpose(0, 1, 3, 2), out=v_rows)


def _winograd_output(v: np.ndarray, u: np.ndarray, m: int, tw: int, ws: _Buffers) -> np.ndarray:
    """Multiply transformed tiles by packed kernels; return the output tiles ``A^T M A``.

    `u` may be a slice of the output channels. Returns ``(m_j, m_i, rows, tW, O)``.
    """
    a, tiles, o, dtype = m + 2, v.shape[1], u.shape[2], u.dtype
    _, _, at = _matrices(m, dtype)
    product = ws.get("product", (a * a, tiles, o), dtype)
    np.matmul(v, u, out=product)  # one GEMM per transformed position: (tiles, C) @ (C, O)
    p = ws.get("p", (m, a, tiles * o), dtype)
    np.matmul(at, product.reshape(a, -1), out=p.reshape(m, -1))  # over j: (m_j, a_i, ...)
    y = ws.get("y", (m, m, tiles // tw, tw, o), dtype)
    np.matmul(at, p, out=y.reshape(m, m, -1))  # over i, batched on j: (m_j, m_i, ...)
    return y


def _gemm_input(padded: _Padded, i: int, q0: int, q1: int, ws: _Buffers, out) -> None:
    """Gather the im2col rows of output rows [q0, q1) of image `i` (m = 1) into `out`.

    `out` is ``(rows, W, KH, KW*C)``, one copy per kernel row, runs of KW*C values.
    """
    source = padded.image(i)[q0 : q1 + 2]  # (rows + 2, Wp, C)
    rows, w, c = q1 - q0, padded.w, source.shape[2]
    s_row, s_col, s_chan = source.strides
    for kh in range(3):
        out[:, :, kh] = np.lib.stride_tricks.as_strided(
            source[kh:], shape=(rows, w, 3 * c), strides=(s_row, s_col, s_chan), writeable=False
        )  # (rows, W, KW*C), a view


def _gemm_output(cols: np.ndarray, kernel: np.ndarray, w: int, ws: _Buffers) -> np.ndarray:
    """``cols @ kernel`` (a ``(9 * C, O)`` slice) as tiles of one pixel: ``(1, 1, rows, W, O)``."""
    y = ws.get("gemm", (cols.shape[0], kernel.shape[1]), kernel.dtype)
    np.matmul(cols, kernel, out=y)  # (rows*W, 9*C) @ (9*C, O) -> (rows*W, O)
    return y.reshape(1, 1, -1, w, kernel.shape[1])


def _pool_tiles(y: np.ndarray, ws: _Buffers) -> np.ndarray:
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


def _reshaped(array: np.ndarray, shape: tuple) -> np.ndarray:
    """``array.reshape(shape)``, a view: a write into a reshaped copy would be lost."""
    view = array.reshape(shape)
    assert np.may_share_memory(view, array), f"reshaping {array.shape} to {shape} copied"
    return view


def _untile(tiles: np.ndarray, dest: np.ndarray, r0: int) -> None:
    """Copy tiles ``(m_j, m_i, rows, tW, O)`` into image rows ``r0..`` of `dest` ``(H, W, O)``.

    Tile ``(q, t)``'s pixel ``(i, j)`` goes to ``(r0 + q*m_i + i, t*m_j + j)``; pixels
    past `dest`'s edges (computed from padding) are dropped.
    """
    mj, mi, rows, tw, _ = tiles.shape
    h, w = dest.shape[:2]
    if r0 + rows * mi <= h and tw * mj <= w:  # the whole block fits: one transposing copy
        target = _reshaped(dest[r0 : r0 + rows * mi, : tw * mj], (rows, mi, tw, mj, -1))
        np.copyto(target, tiles.transpose(2, 1, 3, 0, 4))  # (rows, m_i, tW, m_j, O)
        return
    for i in range(mi):
        nr = min(rows, -(-(h - r0 - i) // mi))  # tile rows whose pixel row i is inside
        for j in range(mj):
            nc = min(tw, -(-(w - j) // mj))
            if nr > 0 and nc > 0:
                rows_ = slice(r0 + i, r0 + i + (nr - 1) * mi + 1, mi)
                dest[rows_, j : j + (nc - 1) * mj + 1 : mj] = tiles[j, i, :nr, :nc]


@functools.cache
def _matrices(m: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(t.astype(dtype) for t in winograd_matrices(m))


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
    >>> rng = np.random.default_rng(0)
    >>> x, k = rng.standard_normal((1, 9, 10, 3)), rng.standard_normal((3, 3, 3, 4))
    >>> bool(np.allclose(winograd_conv3x3(x, k), ops.conv2d(x, k), atol=1e-12))
    True
    """
    n, h, w, c = x.shape
    padded = _padded(n, h, w, c, m, x.dtype)
    padded.interior()[...] = x
    u, ws, (th, tw) = winograd_kernel(kernel, m), _Buffers(), (padded.tiles_h, padded.tiles_w)
    out, v = (
        np.empty((n, h, w, kernel.shape[3]), x.dtype),
        np.empty((m + 2, m + 2, th, tw, c), x.dtype),
    )
    for i in range(n):
        _winograd_input(padded, i, 0, th, ws, v)
        y = _winograd_output(v.reshape((m + 2) ** 2, th * tw, c), u, m, tw, ws)
        _untile(y, out[i], 0)
    return out


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class _SingleThreadedBlas:
    """BLAS at one thread while any pass of any engine runs; restored after the last.

    The setting is per process (OpenBLAS has no per-thread one), so passes running at
    once in several threads count themselves in and out under a lock. threadpoolctl's
    own `limit` would not do: each limit restores on exit what it found, out of order
    when passes overlap, and (3.8) while one thread is inside a limit, OpenBLAS limits
    asked for by other threads are silently ignored: their GEMMs then run on OpenBLAS's
    threads as well as on ours (measured: 30 times the CPU time per pass).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._passes = 0
        self._saved: list[tuple] = []

    def __enter__(self):
        with self._lock:
            if self._passes == 0:
                for library in _controller().select(user_api="blas").lib_controllers:
                    # threadpoolctl's OpenBLAS controller guards its public setter by
                    # thread (see above); the process-wide setter underneath is what we need.
                    setter = getattr(library, "_real_set_num_threads", library.set_num_threads)
                    self._saved.append((setter, library.get_num_threads()))
                    setter(1)
            self._passes += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._passes -= 1
            if self._passes == 0:
                for setter, threads in self._saved:
                    setter(threads)
                self._saved.clear()


_BLAS_SINGLE = _SingleThreadedBlas()


@dataclass
class _ConvPlan:
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
        return int(self.algorithm[-1]) if self.algorithm.startswith("winograd") else 1


def choose_algorithm(requested: str, height: int, channels: int, dtype) -> str:
    """Pick the convolution algorithm of one layer from the built-in table measured here.

    ``auto``: direct GEMM for the first layer (3 input channels: transforms would cost
    more than the multiplies they save) and for float64 and float16 (the oracle stays
    exact-as-possible; float16 would lose too much); Winograd F(4x4) from 28x28 up;
    F(2x2) below, where 4x4 tiles waste too much padding.
    """
    if requested in ("gemm", "naive"):
        return requested
    if requested == "winograd":
        return "winograd-4" if height >= 28 else "winograd-2"
    if channels <= 4 or np.dtype(dtype) != np.float32:
        return "gemm"
    return "winograd-4" if height >= 28 else "winograd-2"


class _Pass:
    """The state of one call: its activation buffers and the next layer's staged input."""

    def __init__(self, buffers: _Buffers):
        self.buffers = buffers
        self.chunk_buffers: list[_Buffers] = []  # transformed inputs, two-phase layers
        self.staged: tuple[int, _Padded] | None = None


class _WinogradSteps:
    """A Winograd chunk's steps: input tiles transformed, GEMMs and output transform."""

    def __init__(self, padded: _Padded, c: int):
        self.padded, self.c, self.a = padded, c, padded.m + 2

    def input_shape(self, rows: int) -> tuple:
        """Shape of a chunk's transformed input: ``(a_j, a_i, rows, tW, C)``."""
        return (self.a, self.a, rows, self.padded.tiles_w, self.c)

    def transform(self, v: np.ndarray, i: int, q0: int, p0: int, p1: int) -> None:
        """Transform tile rows [p0, p1) of the chunk of image `i` that starts at `q0`."""
        _winograd_input(self.padded, i, p0, p1, _WORKSPACE, v[:, :, p0 - q0 : p1 - q0])

    def output(self, v: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Output tiles ``(m_j, m_i, rows, tW, O)`` of a chunk for a kernel block."""
        matrix = v.reshape(self.a * self.a, -1, self.c)  # (a*a, tiles, C)
        return _winograd_output(matrix, kernel, self.padded.m, self.padded.tiles_w, _WORKSPACE)


class _GemmSteps:
    """A direct (im2col + GEMM) chunk's steps, with one-pixel tiles."""

    def __init__(self, padded: _Padded, c: int):
        self.padded, self.c = padded, c

    def input_shape(self, rows: int) -> tuple:
        """Shape of a chunk's im2col rows: ``(rows, W, KH, KW*C)``."""
        return (rows, self.padded.w, 3, 3 * self.c)

    def transform(self, v: np.ndarray, i: int, q0: int, p0: int, p1: int) -> None:
        """Gather rows [p0, p1) of the chunk of image `i` that starts at `q0`."""
        _gemm_input(self.padded, i, p0, p1, _WORKSPACE, v[p0 - q0 : p1 - q0])

    def output(self, v: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Output pixels ``(1, 1, rows, W, O)`` of a chunk for a kernel block."""
        return _gemm_output(v.reshape(-1, 9 * self.c), kernel, self.padded.w, _WORKSPACE)


class Engine:
    """Runs the steps of a lowered network fast; built by the model, not by users.

    Safe to share: any number of threads may call one engine (hence one model) at once,
    and each gets exactly, bitwise, the result it would get alone. Every call has its own
    activation buffers; the worker threads are shared, so concurrent calls queue their
    chunks on them rather than oversubscribing the cores (four callers get about the
    throughput of one, measured in docs/performance.md), and calls too small to gain
    from running at once (`SERIAL_MACS`) take turns.

    Parameters
    ----------
    layers : list of Layer
        The steps of a `vgg_np.lowering.Plan` (any layer table whose convolutions end in
        ReLU or nothing runs as it is).
    weights : dict
        Step name -> (kernel, bias), already in the model dtype (not copied).
    conv_algorithm : {"auto", "gemm", "winograd", "naive"}
    threads : int, optional
        Threads that share a call's work: the calling thread and ``threads - 1`` workers;
        default: the CPUs this process may use, at most `MAX_THREADS`. Results do not
        depend on it.

    Examples
    --------
    >>> from vgg_np import VGG, VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0)
    >>> engine = Engine(model.layers, model.weights, "gemm", threads=2)
    >>> x = np.ones((1, 32, 32, 3), np.float32)
    >>> engine.predict(x).shape
    (1, 3)
    >>> timings = []
    >>> *_, (name, y) = engine.run(x, timings=timings)
    >>> name, bool((y == engine.predict(x)).all()), timings[1][:2]
    ('predictions', True, ('block2_conv1', 'gemm + pool'))
    >>> engine.close()
    """

    def __init__(self, layers, weights, conv_algorithm="auto", threads=None):
        if conv_algorithm not in ALGORITHMS:
            raise ValueError(
                f"`conv_algorithm` must be one of {ALGORITHMS}, got {conv_algorithm!r}"
            )
        unfused = [
            f"{layer.name} ({layer.activation})"
            for layer in layers
            if layer.kind == "conv" and layer.activation not in CONV_EPILOGUE
        ]
        if unfused:
            raise ValueError(
                f"the engine's convolutions end in ReLU or nothing, got {', '.join(unfused)}: "
                "lower the table first (vgg_np.lowering.lower)"
            )
        self.layers = layers
        self.weights = weights
        self.conv_algorithm = conv_algorithm
        self.threads = threads or min(_cpu_count(), MAX_THREADS)
        self._plans: dict[tuple, _ConvPlan] = {}
        self._packed: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()  # guards the plans, the worker pool, the spare buffers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._spare: _Buffers | None = None  # one call's buffers, kept up to KEEP_BYTES
        self._turns = threading.Lock()  # small calls take turns (see `_call`)

    # -- planning ---------------------------------------------------------------------

    def _plan(self, index: int, h: int, w: int, c: int) -> _ConvPlan:
        key = (index, h, w)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key) or self._make_plan(index, h, w, c)
                self._plans[key] = plan
        return plan

    def _make_plan(self, index: int, h: int, w: int, c: int) -> _ConvPlan:
        layer = self.layers[index]
        kernel, bias = self.weights[layer.name]
        o = kernel.shape[3]
        algorithm = choose_algorithm(self.conv_algorithm, h, c, kernel.dtype)
        following = self.layers[index + 1] if index + 1 < len(self.layers) else None
        pool = following is not None and following.kind == "pool" and algorithm != "naive"
        plan = _ConvPlan(layer.name, algorithm, kernel, bias, pool, layer.activation == "relu")
        if algorithm == "naive":
            return plan
        m = plan.m
        if (layer.name, algorithm) not in self._packed:
            self._packed[layer.name, algorithm] = (
                winograd_kernel(kernel, m) if m > 1 else kernel.reshape(9 * c, o)  # (9*C, O)
            )
        plan.kernel = self._packed[layer.name, algorithm]
        # Chunks of whole tile rows of one image, sized by CHUNK_BYTES, equal in size.
        tiles_h, tiles_w = -(-h // m), -(-w // m)
        if m == 1 and pool:
            tiles_h += tiles_h % 2  # the pool takes whole pairs of rows
        if m > 1:
            row_bytes = (m + 2) ** 2 * tiles_w * max(c, o) * kernel.itemsize
        else:
            row_bytes = w * max(9 * c, o) * kernel.itemsize
        rows = max(1, CHUNK_BYTES // row_bytes, -(-c * o // (KERNEL_VALUES_PER_TILE * tiles_w)))
        chunks = -(-tiles_h // rows)
        plan.tiles_h, plan.rows_per_chunk = tiles_h, -(-tiles_h // chunks)
        if m == 1 and pool:
            plan.rows_per_chunk += plan.rows_per_chunk % 2
        few = tiles_h * tiles_w < MIN_TILES_PER_IMAGE
        blocks = min(CHANNEL_BLOCKS, max(1, o // CHANNEL_BLOCK)) if few else 1
        plan.channel_block = -(-o // blocks)
        # Layers split by channels have a chunk per image: two threads share its input
        # transform, in two pieces whatever the threads (the same BLAS calls).
        plan.rows_per_part = -(-plan.rows_per_chunk // 2) if blocks > 1 else plan.rows_per_chunk
        return plan

    def algorithms(self, input_shape: tuple) -> dict[str, str]:
        """Return which algorithm each convolution uses for a per-image input ``(H, W, C)``.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> VGG16(include_top=False, seed=0).engine.algorithms((224, 224, 3))["block5_conv1"]
        'winograd-2'
        """
        return {
            layer.name: choose_algorithm(
                self.conv_algorithm, shape[0], shape[2], self.weights[layer.name][0].dtype
            )
            for layer, shape, _ in shapes(self.layers, input_shape)
            if layer.kind == "conv"
        }

    def slice_images(self, input_shape: tuple) -> int:
        """Images per slice for a per-image input ``(H, W, C)``; large batches run in slices.

        At most `SLICE_VALUES` values in the largest convolution output of a slice, so a
        call's activation buffers stay the size of about 8 images at 224x224 whatever
        the batch.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> engine = VGG16(include_top=False, seed=0).engine
        >>> engine.slice_images((224, 224, 3)), engine.slice_images((32, 32, 3))
        (8, 392)
        """
        outputs = [math.prod(s.output) for s in shapes(self.layers, input_shape)]
        convs = [
            size for size, layer in zip(outputs, self.layers, strict=True) if layer.kind == "conv"
        ]
        return max(1, SLICE_VALUES // max(convs, default=1))

    # -- threads and buffers ----------------------------------------------------------

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        with self._lock:  # `close` may not shut the pool down between these two lines
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "vgg_np")
            return self._pool.submit(fn, *args)

    def _map(self, fn, args: list, macs: int) -> list:
        """``[fn(*a) for a in args]``, shared by the calling thread and `threads` - 1 workers.

        The calling thread takes tasks too, so work starts at once even when the workers
        have gone to sleep (waking one took 20 ms on these VMs after a 0.3 s pause).
        `macs`, the multiply-adds of all the tasks, decides whether to share at all:
        below `MIN_PARALLEL_MACS` handing tasks over costs more than it saves. Which
        thread runs a task changes nothing in its result.
        """
        if self.threads == 1 or len(args) == 1 or macs < MIN_PARALLEL_MACS:
            return [fn(*a) for a in args]
        results: list = [None] * len(args)
        order, lock = iter(range(len(args))), threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    k = next(order, None)
                if k is None:
                    return
                results[k] = fn(*args[k])

        helpers = [self._submit(drain) for _ in range(min(self.threads, len(args)) - 1)]
        try:
            drain()
        finally:
            for helper in helpers:
                helper.cancel()  # a helper still queued behind other calls is not needed
            concurrent.futures.wait(helpers)  # all finished before an error leaves the call
        for helper in helpers:
            if not helper.cancelled():
                helper.result()  # re-raises a helper's exception here
        return results

    def _acquire(self) -> _Pass:
        with self._lock:
            buffers, self._spare = self._spare, None
        return _Pass(buffers or _Buffers())

    def _release(self, state: _Pass) -> None:
        if state.buffers.nbytes <= KEEP_BYTES:
            with self._lock:
                self._spare = state.buffers

    def close(self) -> None:
        """Stop the worker threads and drop the kept buffers (see the class example).

        The engine starts them again on its next call.
        """
        with self._lock:
            pool, self._pool, self._spare = self._pool, None, None
        if pool is not None:
            pool.shutdown()

    # -- running ----------------------------------------------------------------------

    @staticmethod
    def _check_batch(x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"`x` must be a non-empty batch (N, H, W, C), got shape {x.shape}")

    @contextlib.contextmanager
    def _call(self, x: np.ndarray):
        """One call's state and slice size; BLAS at one thread; a turn if the call is small.

        Concurrent calls each have their own buffers and run at once, except calls under
        `SERIAL_MACS` per slice, which take turns: their time goes to Python and tiny
        NumPy calls, and threads that interleave those wait on each other for the GIL
        (measured: 4 threads sharing a small model got half one thread's throughput,
        taking turns 0.94 of it).
        """
        self._check_batch(x)
        step = self.slice_images(x.shape[1:])
        small = self._macs(x.shape[1:]) * min(step, len(x)) < SERIAL_MACS
        state = self._acquire()
        try:
            with self._turns if small else contextlib.nullcontext(), _BLAS_SINGLE:
                yield state, step
        finally:
            self._release(state)

    def _macs(self, input_shape: tuple) -> int:
        """Multiply-adds of the convolutions and dense layers for one image."""
        macs = 0
        for layer, shape, _ in shapes(self.layers, input_shape):
            if layer.kind == "conv":
                macs += math.prod(shape[:2]) * shape[2] * layer.units * 9
            elif layer.kind == "dense":
                macs += self.weights[layer.name][0].size
        return macs

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the last layer's output for an NHWC batch (a new array).

        The batch runs in slices of `slice_images` images. See the class example.
        """
        result = None
        with self._call(x) as (state, step):
            for s in range(0, len(x), step):
                ((_, y),) = collections.deque(self._run(state, x[s : s + step]), maxlen=1)
                if result is None:
                    result = np.empty((len(x), *y.shape[1:]), y.dtype)
                result[s : s + len(y)] = y
        return result

    def outputs(self, x: np.ndarray, names: set[str] | None = None) -> dict[str, np.ndarray]:
        """Return the outputs of `names` (default: every layer) for an NHWC batch.

        The pass stops after the deepest layer named; the outputs are new arrays, in layer
        order. A convolution named is run unfused from the pool after it.

        Examples
        --------
        >>> from vgg_np import VGG, VGGConfig
        >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
        >>> outputs = VGG(tiny, classes=3, seed=0).engine.outputs(np.ones((2, 32, 32, 3)))
        >>> list(outputs)[:3], outputs["block1_pool"].shape
        (['block1_conv1', 'block1_pool', 'block2_conv1'], (2, 16, 16, 4))
        """
        order = [layer.name for layer in self.layers]
        keep = True if names is None else set(names)
        last = order[-1] if keep is True else max(keep, key=order.index)
        result = {}
        with self._call(x) as (state, step):
            for s in range(0, len(x), step):
                with contextlib.closing(self._run(state, x[s : s + step], keep)) as run:
                    for name, y in run:
                        if keep is True or name in keep:
                            if name not in result:
                                result[name] = np.empty((len(x), *y.shape[1:]), y.dtype)
                            result[name][s : s + len(y)] = y
                        if name == last:
                            break
        return result

    def run(self, x: np.ndarray, keep: bool = False, timings: list | None = None):
        """Yield (layer name, output) layer after layer, the whole batch at once.

        With ``keep=False`` a 2x2 pool that follows a convolution runs inside it, and the
        pair is yielded once under the pool's name; ``keep=True`` yields every layer, and
        a set of names yields those layers unfused, the others fused. A caller may stop
        early (``close()`` the generator). Yielded arrays may be views of this call's
        buffers, which later layers overwrite: copy what you keep (`predict` and
        `outputs` do, and bound the memory by slicing the batch). `timings`, if given,
        receives ``(layer, algorithm, seconds)`` per step. See the class example.
        """
        self._check_batch(x)
        with _BLAS_SINGLE:  # never recycled: the last yielded view stays valid
            yield from self._run(_Pass(_Buffers()), x, keep, timings)

    def _run(self, state: _Pass, x, keep=False, timings=None):
        # BLAS stays single-threaded for the whole pass (the caller holds _BLAS_SINGLE),
        # every layer being split between our threads: idle OpenBLAS workers would spin
        # and steal our cores.
        state.staged = None
        index = 0
        while index < len(self.layers):
            layer, start = self.layers[index], time.perf_counter()
            if layer.kind == "conv":
                plan = self._plan(index, *x.shape[1:])
                fused = plan.pool and not (keep is True or (keep and layer.name in keep))
                x = self._conv(state, index, x, fuse_pool=fused)
                label = plan.algorithm + (" + pool" if fused else "")
                index += 2 if fused else 1
            else:
                x = self.other(layer, x)
                label = layer.kind
                index += 1
            if timings is not None:
                timings.append((layer.name, label, time.perf_counter() - start))
            yield self.layers[index - 1].name, x

    def _conv(self, state: _Pass, index: int, x: np.ndarray, fuse_pool: bool) -> np.ndarray:
        """Convolution + bias (+ ReLU) of layer `index` (and the next pool if fused).

        Each chunk's output goes, pooled, biased and rectified while in cache, straight
        into the next layer's padded input when that is a convolution, else into an
        ``(N, H, W, O)`` buffer. Returns the layer's output as an ``(N, H, W, O)`` view.
        """
        n, h, w, c = x.shape
        plan = self._plan(index, h, w, c)
        if plan.algorithm == "naive":
            y = ops.conv2d_naive(x, plan.kernel, plan.bias)
            return ACTIVATIONS[self.layers[index].activation].forward(y)
        m, o = plan.m, plan.bias.shape[0]
        padded = self._conv_input(state, index, x, plan)
        pool = fuse_pool and plan.pool
        h_out, w_out = (h // 2, w // 2) if pool else (h, w)
        following = index + (2 if pool else 1)
        staging = self._next_input(state, following, padded, h_out, w_out, o, x.dtype)
        result, destinations = self._conv_output(state, staging, (n, h_out, w_out, o), x.dtype)
        steps = (_WinogradSteps if m > 1 else _GemmSteps)(padded, c)
        # Chunks of tile rows within one image, channel blocks fixed per layer: the same
        # BLAS calls for an image whatever the batch and the threads.
        step, piece = plan.rows_per_chunk, plan.rows_per_part
        chunks = [
            (i, q, min(q + step, plan.tiles_h))
            for i in range(n)
            for q in range(0, plan.tiles_h, step)
        ]
        blocks = [(o0, min(o0 + plan.channel_block, o)) for o0 in range(0, o, plan.channel_block)]

        def product(v: np.ndarray, i: int, q0: int, o0: int, o1: int) -> None:
            """Output tiles of one channel block: pooled, biased, rectified, stored."""
            y = steps.output(v, plan.kernel[..., o0:o1])  # (m_j, m_i, rows, tW, O block)
            if pool:
                y = _pool_tiles(y, _WORKSPACE)
            y += plan.bias[o0:o1]
            if plan.relu:
                np.maximum(y, 0, out=y)
            r0 = q0 * m // 2 if pool else q0 * m  # the chunk's first output row
            _untile(y, destinations[i][..., o0:o1], r0)

        def pieces(k: int, v: np.ndarray) -> list[tuple]:
            i, q0, q1 = chunks[k]
            return [(v, i, q0, p, min(p + piece, q1)) for p in range(q0, q1, piece)]

        def whole_chunk(k: int) -> None:
            i, q0, q1 = chunks[k]
            v = _WORKSPACE.get("v", steps.input_shape(q1 - q0), x.dtype)
            for args in pieces(k, v):
                steps.transform(*args)
            for o0, o1 in blocks:
                product(v, i, q0, o0, o1)

        macs = n * h * w * c * o * 9
        if len(blocks) == 1 or len(chunks) >= 2 * self.threads:
            self._map(whole_chunk, [(k,) for k in range(len(chunks))], macs)
        else:  # few chunks: transform their inputs, then share their channel blocks out
            while len(state.chunk_buffers) < len(chunks):
                state.chunk_buffers.append(_Buffers())
            vs = [
                state.chunk_buffers[k].get("v", steps.input_shape(q1 - q0), x.dtype)
                for k, (_, q0, q1) in enumerate(chunks)
            ]
            transforms = [args for k, v in enumerate(vs) for args in pieces(k, v)]
            self._map(steps.transform, transforms, macs)
            products = [(vs[k], *chunks[k][:2], *b) for k in range(len(chunks)) for b in blocks]
            self._map(product, products, macs)
        if staging is not None:
            state.staged = (following, staging)
        return result

    @staticmethod
    def _conv_input(state: _Pass, index: int, x: np.ndarray, plan: _ConvPlan) -> _Padded:
        """Return layer `index`'s padded input: staged by the layer before, or laid out."""
        staged, state.staged = state.staged, None
        if staged is not None and staged[0] == index:
            return staged[1]
        n, h, w, c = x.shape
        padded = _padded(n, h, w, c, plan.m, x.dtype, state.buffers, "in_a", plan.tiles_h)
        padded.interior()[...] = x
        return padded

    @staticmethod
    def _conv_output(state: _Pass, staging: _Padded | None, shape: tuple, dtype):
        """Return the ``(N, H, W, O)`` output array and its per-image destinations.

        The output goes into the next convolution's padded input (`staging`) if there
        is one, else into a buffer of the pass.
        """
        n, h, w, _ = shape
        if staging is None:
            result = state.buffers.get("out", shape, dtype)
            return result, list(result)
        destinations = [staging.image(i)[1 : 1 + h, 1 : 1 + w] for i in range(n)]
        return staging.interior(), destinations

    def _next_input(self, state: _Pass, index: int, current: _Padded, h, w, c, dtype):
        """Lay out the padded input of layer `index` if it is a convolution to fill."""
        if index >= len(self.layers) or self.layers[index].kind != "conv":
            return None
        plan = self._plan(index, h, w, c)
        if plan.algorithm == "naive":
            return None
        storage = "in_b" if current.storage == "in_a" else "in_a"
        return _padded(current.n, h, w, c, plan.m, dtype, state.buffers, storage, plan.tiles_h)

    def other(self, layer, x: np.ndarray) -> np.ndarray:
        """Compute a layer that is not a convolution; see the class example.

        Dense layers multiply each image alone, in fixed blocks of input rows shared by
        the threads (`_dense`: batch-invariant; at batch 1 bound by memory bandwidth);
        any other kind (pools, flatten, global pools) is its forward call in
        `vgg_np.layers.KINDS`, then its activation.
        """
        if layer.kind == "dense":
            kernel, bias = self.weights[layer.name]
            y = self._dense(x, kernel)
            y += bias
            if layer.activation == "relu":
                np.maximum(y, 0, out=y)  # in place
            else:
                y = ACTIVATIONS[layer.activation].forward(y)
            return y
        y = KINDS[layer.kind].forward(layer, self.weights.get(layer.name), x)
        return ACTIVATIONS[layer.activation].forward(y)

    def _dense(self, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """``x @ kernel``, each image alone, as partial sums over fixed blocks of rows.

        One image at a time: NumPy multiplies a single row with BLAS's gemv, several rows
        with gemm, and the two round differently. The blocks of `DENSE_ROWS` rows of the
        kernel go to the threads; their partial sums are added in order.
        """
        x = np.ascontiguousarray(x)  # (N, in)
        starts = range(0, x.shape[1], DENSE_ROWS)
        partial = np.empty((len(starts), x.shape[0], kernel.shape[1]), np.result_type(x, kernel))

        def rows(b: int, r0: int) -> None:
            block = kernel[r0 : r0 + DENSE_ROWS]  # (rows, out)
            for i, image in enumerate(x):
                np.matmul(image[r0 : r0 + DENSE_ROWS], block, out=partial[b, i])  # (out,)

        self._map(rows, list(enumerate(starts)), x.shape[0] * kernel.size)
        y = partial[0]
        for part in partial[1:]:
            y += part  # (N, out), in block order
        return y
