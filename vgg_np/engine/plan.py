"""How each convolution runs: its algorithm, chunks of tile rows, blocks of channels, order.

A `Choice` is fixed per layer and input size, whatever the batch or the threads: that is
what makes an image's result bitwise the same in any batch (every BLAS call it meets has
the same shapes). Three of its fields decide the numbers (``algorithm``,
``rows_per_chunk``, ``channel_block``); ``order`` only decides in which order the same
BLAS calls run. The built-in rules (`default_choice`) were measured on this project's
machines; `variations` lists what the measuring planner (`vgg_np.engine.measure`) may
try instead, every one of them within its algorithm's documented tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import numpy.typing as npt

from vgg_np.engine.winograd import winograd_kernel

__all__ = [
    "ORDERS",
    "Choice",
    "ConvPlan",
    "allowed_algorithms",
    "check_choice",
    "choose_algorithm",
    "default_choice",
    "default_rows",
    "pack",
    "tile_size",
    "tiles_high",
    "transformed",
    "variations",
]

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

#: Layers whose packed kernel is this many times an image's transformed input (O >= this
#: times the tiles per image) run their products in the ``position`` order by default:
#: their weights, not their inputs, are what streams from memory (blocks 4 and 5 of
#: VGG16 at 224x224: 10 times). Measured on Zen 4, batch 8: the conv layers' busiest
#: thread 755 against 807 ms of CPU.
WEIGHTS_PER_INPUT = 2

#: The orders a layer's products may run in (`vgg_np.engine.conv.ConvRun`): ``chunk``,
#: each chunk through all its transformed positions; ``position``, every chunk of the
#: slice transformed first, then each weight block used by all of them while in cache.
ORDERS = ("chunk", "position")

#: The engine's algorithms by the ``conv_algorithm`` asked for, for float32 (float64
#: and float16 always run direct convolution: see `allowed_algorithms`).
_ALLOWED = {
    "auto": ("winograd-4", "winograd-2", "gemm"),
    "winograd": ("winograd-4", "winograd-2"),
    "gemm": ("gemm",),
}


@dataclass(frozen=True)
class Choice:
    """How one convolution runs for one input size (see the module docstring).

    Examples
    --------
    >>> choice = Choice("winograd-4", rows_per_chunk=7, channel_block=128)
    >>> choice.m, choice.rows_per_part(512), Choice.from_dict(choice.to_dict()) == choice
    (4, 4, True)
    """

    algorithm: str  # "winograd-2", "winograd-4", "gemm"
    rows_per_chunk: int  # tile rows per chunk (one image's)
    channel_block: int  # output channels per block
    order: str = "chunk"  # one of ORDERS: never changes the numbers

    @property
    def m(self) -> int:
        """Output tile size: 2 or 4 for Winograd, 1 (one pixel) for direct (class example)."""
        return tile_size(self.algorithm)

    def rows_per_part(self, o: int) -> int:
        """Tile rows per piece of a chunk's input transform, for `o` output channels.

        A layer split by channels shares its chunk's input transform between two threads,
        in two pieces whatever the threads (the same BLAS calls). See the class example.
        """
        blocks = -(-o // self.channel_block)
        return -(-self.rows_per_chunk // 2) if blocks > 1 else self.rows_per_chunk

    def to_dict(self) -> dict:
        """Return the fields as a JSON-ready dict (the plan cache's entries; class example)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: object) -> Choice:
        """Build a choice from `to_dict`'s output; ValueError if it is not one (class example)."""
        if not isinstance(fields, dict) or set(fields) != set(cls.__dataclass_fields__):
            raise ValueError(f"not a plan entry: {fields!r:.200}")
        choice = cls(**fields)
        ints = (choice.rows_per_chunk, choice.channel_block)
        if not all(type(v) is int and v > 0 for v in ints) or choice.order not in ORDERS:
            raise ValueError(f"not a plan entry: {fields!r:.200}")
        if choice.algorithm not in ("winograd-2", "winograd-4", "gemm"):
            raise ValueError(f"unknown algorithm in a plan entry: {choice.algorithm!r:.50}")
        return choice


@dataclass
class ConvPlan:
    """One convolution for one input size, ready to run: a `Choice` and its packed kernels.

    `blocks` holds the kernel packed for the algorithm, one contiguous array per block of
    output channels (``(a*a, C, B)`` for Winograd, ``(9 * C, B)`` for direct
    convolution), in the order the products read them. A ``naive`` plan has no choice
    and runs `vgg_np.ops.conv2d_naive` on `kernel`.

    Examples
    --------
    >>> kernel, bias = np.ones((3, 3, 8, 256), np.float32), np.zeros(256, np.float32)
    >>> choice = Choice("winograd-2", rows_per_chunk=7, channel_block=128)
    >>> plan = ConvPlan("conv", choice, kernel, bias, pool=False, relu=True,
    ...                 blocks=pack(kernel, "winograd-2", 128), tiles_h=7)
    >>> plan.m, plan.rows_per_part, [b.shape for b in plan.blocks]
    (2, 4, [(16, 8, 128), (16, 8, 128)])
    """

    name: str
    choice: Choice | None  # None: the naive loops
    kernel: np.ndarray  # (3, 3, C, O), as the layer holds it
    bias: np.ndarray
    pool: bool  # a 2x2 max-pool follows: apply it before the bias and ReLU
    relu: bool  # the epilogue rectifies (else the convolution is linear)
    blocks: list[np.ndarray] = field(default_factory=list)
    tiles_h: int = 0  # tile rows per image (for a fused pool after a direct conv: even)

    @property
    def algorithm(self) -> str:
        """``winograd-2``, ``winograd-4``, ``gemm`` or ``naive`` (see the class example)."""
        return "naive" if self.choice is None else self.choice.algorithm

    @property
    def m(self) -> int:
        """Output tile size (1 for direct convolution) (see the class example)."""
        return tile_size(self.algorithm)

    @property
    def _chosen(self) -> Choice:
        assert self.choice is not None, "the naive convolution is not tiled"
        return self.choice

    @property
    def rows_per_chunk(self) -> int:
        """Tile rows per chunk (see the class example)."""
        return self._chosen.rows_per_chunk

    @property
    def rows_per_part(self) -> int:
        """Tile rows per piece of a chunk's input transform (see the class example)."""
        return self._chosen.rows_per_part(self.bias.shape[0])

    @property
    def channel_block(self) -> int:
        """Output channels per block (see the class example)."""
        return self._chosen.channel_block

    @property
    def order(self) -> str:
        """The order the products run in (`ORDERS`) (see the class example)."""
        return self._chosen.order


def transformed(kernel: np.ndarray, algorithm: str) -> np.ndarray:
    """Return the ``(3, 3, C, O)`` kernel as `algorithm` multiplies it.

    ``(a*a, C, O)`` for Winograd (`winograd_kernel`), ``(9 * C, O)`` (a view) for direct
    convolution.

    Examples
    --------
    >>> kernel = np.ones((3, 3, 2, 5))
    >>> transformed(kernel, "winograd-2").shape, transformed(kernel, "gemm").shape
    ((16, 2, 5), (18, 5))
    """
    m = tile_size(algorithm)
    return winograd_kernel(kernel, m) if m > 1 else kernel.reshape(-1, kernel.shape[3])


def pack(kernel: np.ndarray, algorithm: str, channel_block: int) -> list[np.ndarray]:
    """Pack a ``(3, 3, C, O)`` kernel for `algorithm`, one contiguous array per channel block.

    Each block is transformed alone (the whole transformed kernel never exists twice), to
    the same values as in the whole (`winograd_kernel`).

    Examples
    --------
    >>> [b.shape for b in pack(np.ones((3, 3, 2, 5), np.float32), "winograd-4", 3)]
    [(36, 2, 3), (36, 2, 2)]
    """
    o = kernel.shape[3]
    return [
        np.ascontiguousarray(transformed(kernel[..., o0 : o0 + channel_block], algorithm))
        for o0 in range(0, o, channel_block)
    ]


def tile_size(algorithm: str) -> int:
    """Output tile size of an algorithm: ``winograd-m`` gives m, direct convolution 1.

    Examples
    --------
    >>> tile_size("winograd-4"), tile_size("gemm")
    (4, 1)
    """
    return int(algorithm[-1]) if algorithm.startswith("winograd") else 1


def tiles_high(algorithm: str, h: int, pool: bool) -> int:
    """Tile rows per image (for a fused pool after a direct convolution: even).

    Examples
    --------
    >>> tiles_high("winograd-4", 14, False), tiles_high("gemm", 7, True)
    (4, 8)
    """
    m = tile_size(algorithm)
    tiles = -(-h // m)
    return tiles + tiles % 2 if m == 1 and pool else tiles


def allowed_algorithms(requested: str, dtype: npt.DTypeLike) -> tuple[str, ...]:
    """List the algorithms a layer may run with `conv_algorithm` = `requested`, fastest first.

    float64, the oracle, may use F(2x2) besides direct convolution: measured on full-size
    VGG16, logits within 3.8e-15 of the reference forward against direct's 3.2e-15, per
    layer within `FLOAT64_WINOGRAD_REL_TOL`; not F(4x4), whose rounding is about 20 times
    F(2x2)'s. float16 stays direct (its Winograd rounding would be too large).

    Examples
    --------
    >>> allowed_algorithms("auto", np.float32), allowed_algorithms("auto", "float64")
    (('winograd-4', 'winograd-2', 'gemm'), ('winograd-2', 'gemm'))
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return tuple(a for a in _ALLOWED[requested] if a != "winograd-4")
    if dtype != np.float32:
        return ("gemm",)
    return _ALLOWED[requested]


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


def default_rows(algorithm: str, shape: tuple[int, int, int, int], itemsize: int) -> int:
    """Return the tile rows per chunk of the built-in rule.

    About `CHUNK_BYTES` of transformed input, at least ``C * O / KERNEL_VALUES_PER_TILE``
    tiles, the chunks of an image equal in size.

    Examples
    --------
    >>> default_rows("winograd-4", (224, 224, 64, 64), 4)
    2
    >>> default_rows("gemm", (14, 14, 512, 512), 8)  # at least C*O/256 tiles: the whole image
    14
    """
    h, w, c, o = shape
    m = tile_size(algorithm)
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    if m > 1:
        row_bytes = (m + 2) ** 2 * tiles_w * max(c, o) * itemsize
    else:
        row_bytes = w * max(9 * c, o) * itemsize
    rows = max(1, CHUNK_BYTES // row_bytes, -(-c * o // (KERNEL_VALUES_PER_TILE * tiles_w)))
    return -(-tiles_h // -(-tiles_h // rows))


def default_choice(
    algorithm: str, shape: tuple[int, int, int, int], itemsize: int, pool: bool
) -> Choice:
    """Return the built-in chunks and channel blocks of one layer run by `algorithm`.

    `shape` is ``(H, W, C, O)``. Chunks of whole tile rows of one image, about
    `CHUNK_BYTES` each and equal in size; output channels in blocks when an image has
    fewer than `MIN_TILES_PER_IMAGE` tiles, or is a single chunk of direct convolution
    (else one thread would do the whole layer); the ``position`` order where the packed
    kernel is `WEIGHTS_PER_INPUT` times an image's transformed input or more.

    Examples
    --------
    >>> default_choice("winograd-4", (28, 28, 512, 512), 4, False)
    Choice(algorithm='winograd-4', rows_per_chunk=7, channel_block=128, order='position')
    """
    h, w, _, o = shape
    m = tile_size(algorithm)
    tiles_h = tiles_high(algorithm, h, pool)
    rows = default_rows(algorithm, shape, itemsize)
    if m == 1 and pool:
        rows += rows % 2  # the pool takes whole pairs of rows
    tiles = tiles_h * -(-w // m)
    few = tiles < MIN_TILES_PER_IMAGE or (m == 1 and rows >= tiles_h)
    blocks = min(CHANNEL_BLOCKS, max(1, o // CHANNEL_BLOCK)) if few else 1
    order = "position" if o >= WEIGHTS_PER_INPUT * tiles else "chunk"
    return Choice(algorithm, min(rows, tiles_h), -(-o // blocks), order)


def check_choice(choice: Choice, shape: tuple[int, int, int, int], pool: bool) -> None:
    """Raise ValueError unless `choice` is a valid layout for a layer of `shape` ``(H, W, C, O)``.

    (Whether its algorithm is allowed is the caller's question: `allowed_algorithms`.)

    Examples
    --------
    >>> check_choice(Choice("gemm", 3, 64), (56, 56, 64, 64), pool=True)
    Traceback (most recent call last):
    ...
    ValueError: Choice(...): a fused pool needs an even number of rows per chunk
    """
    h, _, _, o = shape
    tiles_h = tiles_high(choice.algorithm, h, pool)
    if choice.rows_per_chunk > tiles_h or choice.channel_block > o:
        raise ValueError(f"{choice} does not fit a layer of shape {shape}")
    if choice.m == 1 and pool and choice.rows_per_chunk % 2:
        raise ValueError(f"{choice}: a fused pool needs an even number of rows per chunk")


def variations(choice: Choice, shape: tuple[int, int, int, int], pool: bool) -> dict[str, list]:
    """List what the measuring planner tries after choosing an algorithm, by stage.

    Stages, each starting from the best of the one before: ``rows``, the chunk (half and
    twice `choice`'s, a whole image unless that is over 4 times larger); ``blocks``, the
    channel blocks (one block, blocks of 256 and of `CHANNEL_BLOCK`); ``order``, the
    other order. Every variation is valid
    (`check_choice`) and differs from `choice` only in the stage's field; a stage's list
    may be empty.

    Examples
    --------
    >>> shape = (112, 112, 128, 128)
    >>> stages = variations(default_choice("winograd-4", shape, 4, True), shape, True)
    >>> {name: [(c.rows_per_chunk, c.channel_block, c.order) for c in stage]
    ...  for name, stage in stages.items()}
    {'rows': [(1, 128, 'chunk'), (6, 128, 'chunk')], 'blocks': [], 'order': [(3, 128, 'position')]}
    """
    tiles_h, o = tiles_high(choice.algorithm, shape[0], pool), shape[3]
    even = 2 if choice.m == 1 and pool else 1
    rows = [choice.rows_per_chunk // 2, choice.rows_per_chunk * 2]
    if tiles_h <= 4 * choice.rows_per_chunk:  # a whole image, unless far larger (slow)
        rows.append(tiles_h)
    rows = [min(tiles_h, max(even, r - r % even)) for r in rows]
    stages = {
        "rows": [replace(choice, rows_per_chunk=r) for r in rows],
        "blocks": [replace(choice, channel_block=min(b, o)) for b in (o, 256, CHANNEL_BLOCK)],
        "order": [replace(choice, order=order) for order in ORDERS],
    }
    for name, stage in stages.items():
        stages[name] = [c for c in dict.fromkeys(stage) if c != choice]
        for variation in stages[name]:
            check_choice(variation, shape, pool)
    return stages
