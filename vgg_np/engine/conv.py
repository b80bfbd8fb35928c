"""One convolution layer of one call: chunks transformed, multiplied, pooled, written out.

Each chunk's output is max-pooled (before the bias and ReLU: exact, both are monotonic per
channel), biased and rectified while in cache, and written straight into the next layer's
padded input. Chunks never span two images and output channels are split in blocks fixed
per layer: an image meets the same BLAS calls whatever the batch and the threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from vgg_np.engine.direct import GemmSteps
from vgg_np.engine.layout import WORKSPACE, Buffers, Padded, padded, pool_tiles, untile
from vgg_np.engine.plan import ConvPlan
from vgg_np.engine.threads import Workers
from vgg_np.engine.winograd import WinogradSteps

#: Transformed input a group of chunks holds at once in the ``position`` order (the
#: weights of a position then serve the whole group): 4 images of VGG16's block 4.
POSITION_BYTES = 16 << 20


class Pass:
    """The state of one call: its activation buffers and the next layer's staged input."""

    def __init__(self, buffers: Buffers):
        self.buffers = buffers
        self.chunk_buffers: list[Buffers] = []  # transformed inputs, two-phase layers
        self.staged: tuple[int, Padded] | None = None
        self.meter: list[float] | None = None  # CPU seconds of each step's busiest thread


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
    """The tasks of one convolution over a slice of the batch, and how they are shared out.

    `destinations` are the ``(H, W, O)`` arrays (one per image) the outputs, pooled if
    `pool`, are written into. Whatever the order, every chunk meets the same BLAS calls.
    `tile_rows` limits each image to its first tile rows (the planner times a band of a
    large image; the rest of the output is left as it was).
    """

    def __init__(
        self,
        plan: ConvPlan,
        source: Padded,
        destinations: list,
        pool: bool,
        tile_rows: int | None = None,
    ):
        self.plan, self.source, self.destinations, self.pool = plan, source, destinations, pool
        c, o = source.flat.shape[2], plan.bias.shape[0]
        self.steps = (WinogradSteps if plan.m > 1 else GemmSteps)(source, c)
        self.macs = source.n * source.h * source.w * c * o * 9
        self.itemsize = plan.bias.itemsize
        step, rows = plan.rows_per_chunk, min(tile_rows or plan.tiles_h, plan.tiles_h)
        self.chunks = [
            (i, q, min(q + step, plan.tiles_h))
            for i in range(source.n)
            for q in range(0, rows, step)
        ]
        block = plan.channel_block
        self.blocks = [(o0, min(o0 + block, o)) for o0 in range(0, o, block)]

    def finish(self, y: np.ndarray, i: int, q0: int, b: int) -> None:
        """Pool, bias, rectify and store output tiles ``(m_j, m_i, rows, tW, O block)``."""
        plan, (o0, o1) = self.plan, self.blocks[b]
        if self.pool:
            y = pool_tiles(y, WORKSPACE)
        y += plan.bias[o0:o1]
        r0 = q0 * plan.m // 2 if self.pool else q0 * plan.m  # the chunk's first output row
        untile(y, self.destinations[i][..., o0:o1], r0, plan.relu)  # rectified as it is copied

    def product(self, v: np.ndarray, i: int, q0: int, b: int) -> None:
        """Output tiles of one chunk for channel block `b`: multiplied, then finished."""
        self.finish(self.steps.output(v, self.plan.blocks[b]), i, q0, b)

    def pieces(self, k: int, v: np.ndarray) -> list[tuple]:
        """List the input transforms of chunk `k` into `v`: fixed pieces of its tile rows."""
        i, q0, q1 = self.chunks[k]
        piece = self.plan.rows_per_part
        return [(v, i, q0, p, min(p + piece, q1)) for p in range(q0, q1, piece)]

    def whole_chunk(self, k: int) -> None:
        """Chunk `k` on this thread: its input transformed, then every channel block."""
        i, q0, q1 = self.chunks[k]
        v = WORKSPACE.get("v", self.steps.input_shape(q1 - q0), self.plan.bias.dtype)
        for args in self.pieces(k, v):
            self.steps.transform(*args)
        for b in range(len(self.blocks)):
            self.product(v, i, q0, b)

    def run(self, workers: Workers, state: Pass) -> None:
        """Compute every chunk, sharing the work between the `workers`.

        Order ``chunk``: with enough chunks each thread takes whole chunks; with few (a
        small layer, one chunk per image), the inputs are transformed first, then the
        channel blocks of every chunk are shared out. Order ``position``: see
        `by_position`.
        """
        if self.plan.order == "position":
            self.by_position(workers, state)
        elif len(self.blocks) == 1 or len(self.chunks) >= 2 * workers.threads:
            workers.map(
                self.whole_chunk, [(k,) for k in range(len(self.chunks))], self.macs, state.meter
            )
        else:
            vs = self.transform_all(workers, state)
            products = [
                (vs[k], *self.chunks[k][:2], b)
                for k in range(len(self.chunks))
                for b in range(len(self.blocks))
            ]
            workers.map(self.product, products, self.macs, state.meter)

    def transform_all(
        self, workers: Workers, state: Pass, ks: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """Transform chunks `ks` (default: all) into the call's chunk buffers; return them."""
        ks = range(len(self.chunks)) if ks is None else ks
        while len(state.chunk_buffers) < len(ks):
            state.chunk_buffers.append(Buffers())
        vs = [
            state.chunk_buffers[j].get("v", self.steps.input_shape(q1 - q0), self.plan.bias.dtype)
            for j, (_, q0, q1) in enumerate(self.chunks[k] for k in ks)
        ]
        transforms = [args for k, v in zip(ks, vs, strict=True) for args in self.pieces(k, v)]
        workers.map(self.steps.transform, transforms, self.macs, state.meter)
        return vs

    def by_position(self, workers: Workers, state: Pass) -> None:
        """Run the chunks in groups: transform a group's inputs, then its channel blocks.

        A task runs one channel block for part of the group, position by position, so
        that a position's weights (a contiguous ``C x O block``) serve every chunk of the
        part while they are in cache. A group holds at most `POSITION_BYTES` of
        transformed input (at least one chunk).
        """
        per_chunk = math.prod(self.steps.input_shape(self.plan.rows_per_chunk)) * self.itemsize
        size = max(1, min(len(self.chunks), POSITION_BYTES // per_chunk))
        for k0 in range(0, len(self.chunks), size):
            ks = range(k0, min(k0 + size, len(self.chunks)))
            vs = self.transform_all(workers, state, ks)
            parts = min(len(ks), -(-2 * workers.threads // len(self.blocks)))
            step = -(-len(ks) // parts)
            tasks = [
                (vs[j0 : j0 + step], ks[j0 : j0 + step], b)
                for j0 in range(0, len(ks), step)
                for b in range(len(self.blocks))
            ]
            workers.map(self.group_products, tasks, self.macs, state.meter)

    def group_products(self, vs: list, group: range, b: int) -> None:
        """Run channel block `b` of the chunks in `group` (inputs `vs`), position by position.

        Then each chunk's output transform and epilogue.
        """
        operands = [self.steps.operands(v, self.plan.blocks[b]) for v in vs]
        products = [
            WORKSPACE.get(f"product{j}", (*lhs.shape[:2], rhs.shape[2]), lhs.dtype)
            for j, (lhs, rhs) in enumerate(operands)
        ]
        for p in range(len(operands[0][1])):
            for (lhs, rhs), product in zip(operands, products, strict=True):
                np.matmul(lhs[p], rhs[p], out=product[p])  # (tiles, C) @ (C, O block)
        for k, product in zip(group, products, strict=True):
            i, q0, _ = self.chunks[k]
            self.finish(self.steps.finish(product), i, q0, b)
