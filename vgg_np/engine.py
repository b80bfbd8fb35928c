"""The fast inference path: Winograd and chunked-GEMM convolutions on both cores.

Everything here computes what `vgg_np.ops` defines (and is tested against it); only the
arithmetic is reorganised for speed:

- **Winograd F(m x m, 3 x 3)** (Lavin and Gray, 2016) for 3x3 stride-1 "same"
  convolutions: each a x a input tile (a = m + 2) is transformed once (``B^T d B``), the
  kernels once at load (``G g G^T``), and an m x m output tile costs a*a multiplies per
  input-output channel pair instead of 9*m*m: 2.25x fewer for F(2x2), 4x fewer for
  F(4x4), at the price of larger rounding error (measured in the tests and docs).
  The transforms are written as small BLAS matrix products over whole chunks.
- **Chunked GEMM**: direct convolution, one im2col matrix per chunk of output rows, so the
  9x blow-up never exists for the whole image (the first layer, with 3 input channels,
  and ``conv_algorithm="gemm"``).
- Max-pooling is applied to the raw convolution before the bias and ReLU (exact: both are
  monotonic per channel), bias and ReLU in place; chunks run on two threads with BLAS at
  one thread each (NumPy releases the GIL), and buffers are kept between calls.

Data layout. A padded input is kept as one "flat" array of image rows so that every chunk
of tile rows is a plain strided slice, whatever image it falls in: each image owns
``(tH + 1) * m`` rows (a zero row, its H rows, zeros), where ``tH = ceil(H / m)``; tile row
``q`` reads rows ``q*m .. q*m + a - 1``. The last tile row of each image is padding whose
result is discarded (the price of the uniform stride: 1/(tH + 1) extra work).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from vgg_np import ops
from vgg_np.layers import ACTIVATIONS, KINDS

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

#: Below this many output tiles per thread, a layer's threads split its output channels
#: rather than its tiles, so that each GEMM keeps enough rows (the small deep layers).
MIN_TILES_PER_THREAD = 256

#: Bytes of transformed input a chunk aims at: large enough for efficient GEMMs, small
#: enough to stay in cache and to give both threads several chunks.
CHUNK_BYTES = 8 << 20


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


@dataclass
class _Padded:
    """A zero-padded batch in the flat row layout (see the module docstring)."""

    flat: np.ndarray  # (N * per_image * m + a - m, tW * m + 2, C)
    n: int
    h: int
    w: int
    m: int
    per_image: int  # tile rows per image: tH and one or two discarded
    tiles_w: int
    storage: str = ""  # which reused array holds it

    @property
    def tile_rows(self) -> int:
        """Tile rows over the batch, the discarded ones included."""
        return self.n * self.per_image

    @property
    def block(self) -> int:
        """Rows per image in the flat layout; even, so that 2x2 pools never straddle images."""
        return self.per_image * self.m

    def images(self, flat: np.ndarray, h: int, w: int, scale: int = 1) -> np.ndarray:
        """View rows of `flat` (this layout, or an output of it) as ``(N, h, w, C)``."""
        block = self.block // scale
        return flat[: self.n * block].reshape(self.n, block, *flat.shape[1:])[:, :h, :w]

    def interior(self) -> np.ndarray:
        """Return the (N, H, W, C) view that the layer's input is copied into."""
        block = self.block
        images = self.flat[: self.n * block].reshape(self.n, block, *self.flat.shape[1:])
        return images[:, 1 : self.h + 1, 1 : self.w + 1]


def _padded(
    n: int, h: int, w: int, c: int, m: int, dtype, buffers=None, storage: str = "in"
) -> _Padded:
    """Lay out a padded batch; its array comes from `buffers` (reused) or is new."""
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    per_image = tiles_h + 1 if (tiles_h + 1) * m % 2 == 0 else tiles_h + 2
    shape = (n * per_image * m + 2, tiles_w * m + 2, c)  # 2 = a - m rows read past the end
    if buffers is None:
        return _Padded(np.zeros(shape, dtype), n, h, w, m, per_image, tiles_w)
    padded = _Padded(buffers.get(storage, shape, dtype), n, h, w, m, per_image, tiles_w, storage)
    # A reused array holds an earlier layer's values: zero every pixel but the interior.
    images = padded.flat[: n * padded.block].reshape(n, padded.block, *shape[1:])
    images[:, 0] = 0
    images[:, h + 1 :] = 0
    images[:, :, 0] = 0
    images[:, :, w + 1 :] = 0
    padded.flat[n * padded.block :] = 0
    return padded


class _Buffers:
    """Named scratch arrays, grow-only, handed out as views of the needed shape."""

    def __init__(self):
        self.storage: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        size = math.prod(shape)
        buf = self.storage.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self.storage[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


class _Workspace(_Buffers, threading.local):
    """The scratch arrays of one worker thread, kept between chunks and calls."""


_WORKSPACE = _Workspace()


def _winograd_input(padded: _Padded, q0: int, q1: int, dtype) -> np.ndarray:
    """Transform the input tiles of tile rows [q0, q1): ``B^T d B``, ``(a*a, tiles, C)``."""
    m, tw, flat, ws = padded.m, padded.tiles_w, padded.flat, _WORKSPACE
    a, rows, (_, wp, c) = m + 2, q1 - q0, flat.shape
    bt, _, _ = _matrices(m, dtype)
    x = ws.get("x", (a, rows, wp, c), dtype)
    for r in range(a):
        x[r] = flat[q0 * m + r : q0 * m + r + rows * m : m]  # (rows, Wp, C)
    xr = ws.get("xr", (a, rows, wp, c), dtype)
    np.matmul(bt, x.reshape(a, -1), out=xr.reshape(a, -1))  # rows transformed
    cols = ws.get("cols", (a, a, rows, tw, c), dtype)
    for s in range(a):
        cols[s] = xr[:, :, s : s + tw * m : m]  # (a_i, rows, tW, C)
    v = ws.get("v", (a * a, rows * tw, c), dtype)
    np.matmul(bt, cols.reshape(a, -1), out=v.reshape(a, -1))  # (a_j * a_i, tiles, C)
    return v


def _winograd_output(
    v: np.ndarray, u: np.ndarray, padded: _Padded, q0: int, q1: int, out: np.ndarray
) -> None:
    """Multiply transformed tiles by packed kernels, write the output tiles ``A^T M A``.

    `u` may be a slice of the output channels; `out` is then the matching slice.
    """
    m, tw, ws, dtype = padded.m, padded.tiles_w, _WORKSPACE, u.dtype
    a, rows, o = m + 2, q1 - q0, u.shape[2]
    _, _, at = _matrices(m, dtype)
    product = ws.get("product", (a * a, rows * tw, o), dtype)
    np.matmul(v, u, out=product)  # one GEMM per transformed position: (tiles, C) @ (C, O)
    p = ws.get("p", (m, a, rows * tw * o), dtype)
    np.matmul(at, product.reshape(a, -1), out=p.reshape(m, -1))  # over j: (m_j, a_i, ...)
    y = ws.get("y", (m, m, rows, tw, o), dtype)
    np.matmul(at, p, out=y.reshape(m, m, -1))  # over i, batched on j: (m_j, m_i, rows, tW, O)
    target = out[q0 * m : q1 * m].reshape(rows, m, tw, m, o)  # (rows, m_i, tW, m_j, O)
    np.copyto(target, y.transpose(2, 1, 3, 0, 4))


def _gemm_input(padded: _Padded, q0: int, q1: int, dtype) -> np.ndarray:
    """Gather the im2col matrix of output rows [q0, q1) (m = 1): ``(rows * W, 9 * C)``."""
    flat = padded.flat
    rows, w, c = q1 - q0, padded.w, flat.shape[2]
    s_row, s_col, s_chan = flat.strides
    windows = np.lib.stride_tricks.as_strided(
        flat[q0:],
        shape=(rows, w, 3, 3, c),
        strides=(s_row, s_col, s_row, s_col, s_chan),
        writeable=False,
    )  # (rows, W, KH, KW, C), a view
    cols = _WORKSPACE.get("im2col", (rows, w, 3, 3, c), dtype)
    np.copyto(cols, windows)
    return cols.reshape(rows * w, 9 * c)


def _gemm_output(
    cols: np.ndarray, kernel: np.ndarray, padded: _Padded, q0: int, q1: int, out: np.ndarray
) -> None:
    """``cols @ kernel`` (a ``(9 * C, O)`` slice) into output rows [q0, q1) of `out`."""
    y = _WORKSPACE.get("gemm", (cols.shape[0], kernel.shape[1]), kernel.dtype)
    np.matmul(cols, kernel, out=y)  # (rows*W, 9*C) @ (9*C, O) -> (rows*W, O)
    out[q0:q1, : padded.w] = y.reshape(q1 - q0, padded.w, -1)  # (rows, W, O)


def _stage(rows, r0: int, block: int, h: int, w: int, target: _Padded, o0: int, o1: int) -> None:
    """Copy finished rows into the interior of the next layer's padded input.

    `rows` are flat rows ``r0..`` of a layout with `block` rows per image, of which the
    first `h` are real.
    """
    r1 = r0 + rows.shape[0]
    for image in range(r0 // block, min(-(-r1 // block), target.n)):
        first, last = max(r0, image * block), min(r1, image * block + h)
        if last <= first:
            continue
        start = image * target.block + 1 + first - image * block
        destination = target.flat[start : start + last - first, 1 : w + 1, o0:o1]
        np.copyto(destination, rows[first - r0 : last - r0, :w])


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
    out = np.empty((padded.tile_rows * m, padded.tiles_w * m, kernel.shape[3]), x.dtype)
    v = _winograd_input(padded, 0, padded.tile_rows, x.dtype)
    _winograd_output(v, winograd_kernel(kernel, m), padded, 0, padded.tile_rows, out)
    return padded.images(out, h, w).copy()


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _blas_threads(limit: int):
    """Limit BLAS to `limit` threads inside a ``with`` block; restored after it."""
    return _controller().limit(limits=limit, user_api="blas")


@dataclass
class _ConvPlan:
    name: str
    algorithm: str  # "winograd-2", "winograd-4", "gemm", "naive"
    kernel: np.ndarray  # packed: (a*a, C, O) for Winograd, (3, 3, C, O) otherwise
    bias: np.ndarray
    pool: bool  # a 2x2 max-pool follows: apply it before the bias and ReLU

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


class Engine:
    """Runs a `vgg_np.model.VGG` layer table fast; built by the model, not by users.

    One engine runs one pass at a time (its buffers are shared between layers and calls);
    use one model per thread to run passes concurrently.

    Parameters
    ----------
    layers : list of Layer
    weights : dict
        Keras layer name -> (kernel, bias), already in the model dtype (not copied).
    conv_algorithm : {"auto", "gemm", "winograd", "naive"}
    threads : int, optional
        Worker threads for the convolutions; defaults to the CPUs available (at most 2
        is what was measured to help on this project's machines, more is allowed).

    Examples
    --------
    >>> from vgg_np import VGG, VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0)
    >>> engine = Engine(model.layers, model.weights, "gemm", threads=2)
    >>> timings = []
    >>> *_, (name, y) = engine.run(np.ones((1, 32, 32, 3), np.float32), timings=timings)
    >>> name, y.shape, timings[1][:2]
    ('predictions', (1, 3), ('block2_conv1', 'gemm + pool'))
    >>> engine.close()
    """

    def __init__(self, layers, weights, conv_algorithm="auto", threads=None):
        if conv_algorithm not in ALGORITHMS:
            raise ValueError(
                f"`conv_algorithm` must be one of {ALGORITHMS}, got {conv_algorithm!r}"
            )
        self.layers = layers
        self.weights = weights
        self.conv_algorithm = conv_algorithm
        self.threads = threads or max(1, min(len(os.sched_getaffinity(0)), 8))
        self._plans: dict[tuple, _ConvPlan] = {}
        self._buffers = _Buffers()
        self._pool = None
        self._staged: tuple[int, _Padded] | None = None

    # -- planning ---------------------------------------------------------------------

    def _plan(self, index: int, height: int, channels: int) -> _ConvPlan:
        layer = self.layers[index]
        key = (layer.name, height)
        if key not in self._plans:
            kernel, bias = self.weights[layer.name]
            algorithm = choose_algorithm(self.conv_algorithm, height, channels, kernel.dtype)
            following = self.layers[index + 1] if index + 1 < len(self.layers) else None
            pool = following is not None and following.kind == "pool" and algorithm != "naive"
            packed = (
                winograd_kernel(kernel, int(algorithm[-1]))
                if algorithm.startswith("winograd")
                else kernel
            )
            self._plans[key] = _ConvPlan(layer.name, algorithm, packed, bias, pool)
        return self._plans[key]

    def algorithms(self, input_shape: tuple) -> dict[str, str]:
        """Return which algorithm each convolution uses for a per-image input ``(H, W, C)``.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> VGG16(include_top=False, seed=0).engine.algorithms((224, 224, 3))["block5_conv1"]
        'winograd-2'
        """
        shape, chosen = tuple(input_shape), {}
        for layer in self.layers:
            if layer.kind == "conv":
                chosen[layer.name] = choose_algorithm(
                    self.conv_algorithm, shape[0], shape[2], self.weights[layer.name][0].dtype
                )
            shape = KINDS[layer.kind].output_shape(layer, shape)
        return chosen

    # -- running ----------------------------------------------------------------------

    @staticmethod
    def _wait(futures) -> None:
        for future in futures:
            future.result()  # re-raises a worker's exception here

    def _executor(self):
        if self._pool is None and self.threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "vgg_np")
        return self._pool

    def conv(self, index: int, x: np.ndarray, fuse_pool: bool) -> np.ndarray:
        """Compute convolution + bias + ReLU of layer `index` (and the next pool if fused).

        Used by `run`; see the class example.
        """
        n, h, w, c = x.shape
        plan = self._plan(index, h, c)
        if plan.algorithm == "naive":
            return ops.relu(ops.conv2d_naive(x, plan.kernel, plan.bias))
        m, o = plan.m, plan.bias.shape[0]
        # A few arrays serve every layer in turn: two padded inputs (this layer's and the
        # next one's, which this layer fills as its rows complete), the convolution's
        # output and the pooled output.
        staged, self._staged = self._staged, None
        if staged is not None and staged[0] == index and staged[1].n == n:
            padded = staged[1]
        else:
            padded = _padded(n, h, w, c, m, x.dtype, self._buffers, "in_a")
            padded.interior()[...] = x
        rows_out, cols_out = padded.tile_rows * m, padded.tiles_w * m
        out = self._buffers.get("out", (rows_out, cols_out, o), x.dtype)
        pool = fuse_pool and plan.pool
        pooled = None
        if pool:
            pooled = self._buffers.get("pool", (rows_out // 2, cols_out // 2, o), x.dtype)
        h_out, w_out = (h // 2, w // 2) if pool else (h, w)
        following = index + (2 if pool else 1)
        staging = self._next_input(following, padded, n, h_out, w_out, o, x.dtype)
        if m > 1:
            make_input, make_output, kernel = _winograd_input, _winograd_output, plan.kernel
        else:
            make_input, make_output = _gemm_input, _gemm_output
            kernel = plan.kernel.reshape(9 * c, o)  # (KH*KW*C, O)
        a = m + 2
        tile_bytes = a * a * max(padded.tiles_w, 1) * max(c, o) * x.dtype.itemsize
        per_chunk = max(2, CHUNK_BYTES // tile_bytes)
        per_chunk -= per_chunk % 2  # whole pairs of rows for the 2x2 pool when m = 1
        total = padded.tile_rows
        half = cols_out // 2

        def finish(q0: int, q1: int, o0: int, o1: int) -> None:
            """Pool (if fused), add the bias and apply ReLU, in place, on one block."""
            rows = out[q0 * m : q1 * m, :, o0:o1]  # (rows, cols_out, O slice)
            if pool:
                target = pooled[q0 * m // 2 : q1 * m // 2, :, o0:o1]
                np.maximum(rows[0::2, 0 : 2 * half : 2], rows[0::2, 1 : 2 * half : 2], out=target)
                np.maximum(target, rows[1::2, 0 : 2 * half : 2], out=target)
                np.maximum(target, rows[1::2, 1 : 2 * half : 2], out=target)
                rows = target
            rows += plan.bias[o0:o1]
            np.maximum(rows, 0, out=rows)
            if staging is not None:
                scale = 2 if pool else 1
                _stage(rows, q0 * m // scale, padded.block // scale, h_out, w_out, staging, o0, o1)

        def by_rows(q0: int, q1: int) -> None:
            make_output(make_input(padded, q0, q1, x.dtype), kernel, padded, q0, q1, out)
            finish(q0, q1, 0, o)

        def by_channels(v, q0: int, q1: int, o0: int, o1: int) -> None:
            make_output(v, kernel[..., o0:o1], padded, q0, q1, out[..., o0:o1])
            finish(q0, q1, o0, o1)

        chunks = [(q, min(q + per_chunk, total)) for q in range(0, total, per_chunk)]
        # Many tiles: chunks of tile rows go to the threads. Few (the small deep layers):
        # each chunk's input transform is done once, its output channels are split.
        many = total * padded.tiles_w >= MIN_TILES_PER_THREAD * self.threads
        if self.threads == 1:
            for q0, q1 in chunks:
                by_rows(q0, q1)
        elif many:
            self._wait([self._executor().submit(by_rows, q0, q1) for q0, q1 in chunks])
        else:
            step = -(-o // self.threads)
            for q0, q1 in chunks:
                v = make_input(padded, q0, q1, x.dtype)
                self._wait(
                    [
                        self._executor().submit(by_channels, v, q0, q1, o0, min(o0 + step, o))
                        for o0 in range(0, o, step)
                    ]
                )
        if staging is not None:
            self._staged = (following, staging)
        if pool:
            return padded.images(pooled, h // 2, w // 2, scale=2)
        return padded.images(out, h, w)

    def _next_input(self, index: int, current: _Padded, n, h, w, c, dtype) -> _Padded | None:
        """Lay out the padded input of layer `index` if it is a convolution to fill."""
        if index >= len(self.layers) or self.layers[index].kind != "conv":
            return None
        plan = self._plan(index, h, c)
        if plan.algorithm == "naive":
            return None
        storage = "in_b" if current.storage == "in_a" else "in_a"
        return _padded(n, h, w, c, plan.m, dtype, self._buffers, storage)

    def run(self, x: np.ndarray, keep: bool = False, timings: list | None = None):
        """Yield (layer name, output) layer after layer.

        With ``keep=False`` a 2x2 pool that follows a convolution runs inside it, and the
        pair is yielded once under the pool's name; ``keep=True`` yields every layer, and
        a set of names yields those layers unfused, the others fused. A caller may stop
        early (``close()`` the generator): the next run starts afresh. Yielded arrays may
        be views of internal buffers, valid until the next call. `timings`, if given,
        receives ``(layer, algorithm, seconds)`` per step. See the class example.
        """
        self._staged = None  # nothing left over from an unfinished earlier pass
        # BLAS stays single-threaded for the whole pass, every layer being split between
        # our threads: idle OpenBLAS workers would spin and steal our cores.
        with _blas_threads(1):
            yield from self._run(x, keep, timings)

    def _run(self, x, keep, timings):
        index = 0
        while index < len(self.layers):
            layer, start = self.layers[index], time.perf_counter()
            if layer.kind == "conv":
                plan = self._plan(index, x.shape[1], x.shape[3])
                fused = plan.pool and not (keep is True or (keep and layer.name in keep))
                x = self.conv(index, x, fuse_pool=fused)
                label = plan.algorithm + (" + pool" if fused else "")
                index += 2 if fused else 1
            else:
                x = self.other(layer, x)
                label = layer.kind
                index += 1
            if timings is not None:
                timings.append((layer.name, label, time.perf_counter() - start))
            yield self.layers[index - 1].name, x

    def other(self, layer, x: np.ndarray) -> np.ndarray:
        """Compute a layer that is not a convolution; see the class example.

        Dense layers split their output columns over the threads (at batch 1 they are
        bound by memory bandwidth); any other kind (pools, flatten, global pools) is its
        forward call in `vgg_np.layers.KINDS`, then its activation.
        """
        if layer.kind == "dense":
            kernel, bias = self.weights[layer.name]
            x = np.ascontiguousarray(x)
            y = np.empty((x.shape[0], kernel.shape[1]), dtype=np.result_type(x, kernel))
            step = -(-kernel.shape[1] // self.threads)

            def part(o0: int) -> None:  # (N, in) @ (in, out slice)
                np.matmul(x, kernel[:, o0 : o0 + step], out=y[:, o0 : o0 + step])

            if self.threads == 1:
                part(0)
            else:
                columns = range(0, kernel.shape[1], step)
                self._wait([self._executor().submit(part, o0) for o0 in columns])
            y += bias
            if layer.activation == "relu":
                np.maximum(y, 0, out=y)  # in place
            else:
                y = ACTIVATIONS[layer.activation].forward(y)
            return y
        y = KINDS[layer.kind].forward(layer, self.weights.get(layer.name), x)
        return ACTIVATIONS[layer.activation].forward(y)

    def close(self) -> None:
        """Stop the worker threads (see the class example); the engine restarts them on use."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
