"""One convolution layer of one call: chunks transformed, multiplied, pooled, written out.

Each chunk's output is max-pooled (before the bias and ReLU: exact, both are monotonic per
channel), biased and rectified while in cache, and written straight into the next layer's
padded input. Chunks never span two images and output channels are split in blocks fixed
per layer: an image meets the same BLAS calls whatever the batch and the threads.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vgg_np.engine.direct import GemmSteps
from vgg_np.engine.layout import WORKSPACE, Buffers, Padded, padded, pool_tiles, untile
from vgg_np.engine.plan import ConvPlan
from vgg_np.engine.threads import Workers
from vgg_np.engine.winograd import WinogradSteps


class Pass:
    """The state of one call: its activation buffers and the next layer's staged input."""

    def __init__(self, buffers: Buffers):
        self.buffers = buffers
        self.chunk_buffers: list[Buffers] = []  # transformed inputs, two-phase layers
        self.staged: tuple[int, Padded] | None = None


def conv_input(state: Pass, index: int, x: np.ndarray, plan: ConvPlan) -> Padded:
    """Return layer `index`'s padded input: staged by the layer before, or laid out."""
    staged, state.staged = state.staged, None
    if staged is not None and staged[0] == index:
        return staged[1]
    n, h, w, c = x.shape
    source = padded(n, h, w, c, plan.m, x.dtype, state.buffers, "in_a", plan.tiles_h)
    source.interior()[...] = x
    return source


def conv_output(
    state: Pass, staging: Padded | None, shape: tuple[int, int, int, int], dtype: npt.DTypeLike
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the ``(N, H, W, O)`` output array and its per-image destinations.

    The output goes into the next convolution's padded input (`staging`) if there is
    one, else into a buffer of the pass.
    """
    n, h, w, _ = shape
    if staging is None:
        result = state.buffers.get("out", shape, dtype)
        return result, list(result)
    destinations = [staging.image(i)[1 : 1 + h, 1 : 1 + w] for i in range(n)]
    return staging.interior(), destinations


class ConvRun:
    """The tasks of one convolution over a batch, and how they are shared out.

    `destinations` are the ``(H, W, O)`` arrays (one per image) the outputs, pooled if
    `pool`, are written into.
    """

    def __init__(self, plan: ConvPlan, source: Padded, destinations: list, pool: bool):
        self.plan, self.source, self.destinations, self.pool = plan, source, destinations, pool
        c, o = source.flat.shape[2], plan.bias.shape[0]
        self.steps = (WinogradSteps if plan.m > 1 else GemmSteps)(source, c)
        self.macs = source.n * source.h * source.w * c * o * 9
        step = plan.rows_per_chunk
        self.chunks = [
            (i, q, min(q + step, plan.tiles_h))
            for i in range(source.n)
            for q in range(0, plan.tiles_h, step)
        ]
        block = plan.channel_block
        self.blocks = [(o0, min(o0 + block, o)) for o0 in range(0, o, block)]

    def product(self, v: np.ndarray, i: int, q0: int, o0: int, o1: int) -> None:
        """Output tiles of one channel block: pooled, biased, rectified, stored."""
        plan = self.plan
        y = self.steps.output(v, plan.kernel[..., o0:o1])  # (m_j, m_i, rows, tW, O block)
        if self.pool:
            y = pool_tiles(y, WORKSPACE)
        y += plan.bias[o0:o1]
        if plan.relu:
            np.maximum(y, 0, out=y)
        r0 = q0 * plan.m // 2 if self.pool else q0 * plan.m  # the chunk's first output row
        untile(y, self.destinations[i][..., o0:o1], r0)

    def pieces(self, k: int, v: np.ndarray) -> list[tuple]:
        """List the input transforms of chunk `k` into `v`: fixed pieces of its tile rows."""
        i, q0, q1 = self.chunks[k]
        piece = self.plan.rows_per_part
        return [(v, i, q0, p, min(p + piece, q1)) for p in range(q0, q1, piece)]

    def whole_chunk(self, k: int) -> None:
        """Chunk `k` on this thread: its input transformed, then every channel block."""
        i, q0, q1 = self.chunks[k]
        v = WORKSPACE.get("v", self.steps.input_shape(q1 - q0), self.plan.kernel.dtype)
        for args in self.pieces(k, v):
            self.steps.transform(*args)
        for o0, o1 in self.blocks:
            self.product(v, i, q0, o0, o1)

    def run(self, workers: Workers, state: Pass) -> None:
        """Compute every chunk, sharing the work between the `workers`.

        With enough chunks each thread takes whole chunks; with few (a small layer, one
        chunk per image), the inputs are transformed first, then the channel blocks
        of every chunk are shared out.
        """
        chunks, dtype = self.chunks, self.plan.kernel.dtype
        if len(self.blocks) == 1 or len(chunks) >= 2 * workers.threads:
            workers.map(self.whole_chunk, [(k,) for k in range(len(chunks))], self.macs)
            return
        while len(state.chunk_buffers) < len(chunks):
            state.chunk_buffers.append(Buffers())
        vs = [
            state.chunk_buffers[k].get("v", self.steps.input_shape(q1 - q0), dtype)
            for k, (_, q0, q1) in enumerate(chunks)
        ]
        transforms = [args for k, v in enumerate(vs) for args in self.pieces(k, v)]
        workers.map(self.steps.transform, transforms, self.macs)
        products = [(vs[k], *chunks[k][:2], *b) for k in range(len(chunks)) for b in self.blocks]
        workers.map(self.product, products, self.macs)
