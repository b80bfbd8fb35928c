"""The fast inference path: Winograd and chunked-GEMM convolutions on several threads.

Everything here computes what `vgg_np.ops` defines (and is tested against the reference
forward pass, `vgg_np.layers.forward`); only the arithmetic is reorganised for speed:

- **Winograd F(m x m, 3 x 3)** (`winograd`) for 3x3 stride-1 "same" convolutions: 2.25x
  (F(2x2)) or 4x (F(4x4)) fewer multiplications, transforms done as small BLAS products
  over chunks that fit in cache.
- **Chunked GEMM** (`direct`): direct convolution, one im2col matrix per chunk of output
  rows (the first layer, with 3 input channels, float64, and ``conv_algorithm="gemm"``).
- Each chunk's output is max-pooled, biased and rectified while in cache and written
  straight into the next layer's padded input (`conv`, `layout`); chunks run on
  `Engine.threads` threads with BLAS at one thread each (`threads`).

How each convolution runs (algorithm, chunks, channel blocks, order) is a `plan.Choice`:
built in (``plan="default"``), or measured on this machine at first use and cached on
disk (``plan="measure"``, `measure` and `cache`).

The modules, each using only those above it: `lowering` (the user's layer table to the
engine's steps), `layout` (buffers, padded inputs, tiles), `winograd` (the maths and the
tile transforms), `direct` (chunked GEMM), `threads` (BLAS thread control, work sharing),
`plan` (the choices and their built-in rules), `cache` (plan files), `measure` (the
measuring planner), `conv` (one layer of one call), `runner` (`Engine`: the run loop,
slices, dense layers).
"""

from __future__ import annotations

import sys
import types

# The submodules, and every name the engine module had before it became a package
# (``import X as X``: re-exported on purpose).
from vgg_np.engine import cache as cache
from vgg_np.engine import conv as conv
from vgg_np.engine import direct as direct
from vgg_np.engine import layout, plan, runner, threads
from vgg_np.engine import lowering as lowering
from vgg_np.engine import measure as measure
from vgg_np.engine import winograd as winograd
from vgg_np.engine.layout import SCRATCH_BYTES as SCRATCH_BYTES
from vgg_np.engine.plan import CHANNEL_BLOCK as CHANNEL_BLOCK
from vgg_np.engine.plan import CHANNEL_BLOCKS as CHANNEL_BLOCKS
from vgg_np.engine.plan import CHUNK_BYTES as CHUNK_BYTES
from vgg_np.engine.plan import KERNEL_VALUES_PER_TILE as KERNEL_VALUES_PER_TILE
from vgg_np.engine.plan import MIN_TILES_PER_IMAGE as MIN_TILES_PER_IMAGE
from vgg_np.engine.plan import choose_algorithm as choose_algorithm
from vgg_np.engine.runner import ALGORITHMS, Engine
from vgg_np.engine.runner import DENSE_ROWS as DENSE_ROWS
from vgg_np.engine.runner import KEEP_BYTES as KEEP_BYTES
from vgg_np.engine.runner import SERIAL_MACS as SERIAL_MACS
from vgg_np.engine.runner import SLICE_VALUES as SLICE_VALUES
from vgg_np.engine.threads import MAX_THREADS as MAX_THREADS
from vgg_np.engine.threads import MIN_PARALLEL_MACS as MIN_PARALLEL_MACS
from vgg_np.engine.winograd import winograd_conv3x3, winograd_matrices
from vgg_np.engine.winograd import winograd_kernel as winograd_kernel

__all__ = ["ALGORITHMS", "Engine", "winograd_conv3x3", "winograd_matrices"]

# The old module's tuning constants, by the module that reads them now.
_TUNABLE = {
    "SCRATCH_BYTES": layout,
    "CHANNEL_BLOCK": plan,
    "CHANNEL_BLOCKS": plan,
    "CHUNK_BYTES": plan,
    "KERNEL_VALUES_PER_TILE": plan,
    "MIN_TILES_PER_IMAGE": plan,
    "DENSE_ROWS": runner,
    "KEEP_BYTES": runner,
    "SERIAL_MACS": runner,
    "SLICE_VALUES": runner,
    "MAX_THREADS": threads,
    "MIN_PARALLEL_MACS": threads,
}


class _Package(types.ModuleType):
    """``vgg_np.engine.CHUNK_BYTES = n`` sets the constant where the engine reads it.

    The constants lived in one module before the engine became a package; a setting made
    through the old name must not be silently ignored.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _TUNABLE:
            setattr(_TUNABLE[name], name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

del sys, types
