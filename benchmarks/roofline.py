"""Where VGG16's time goes, layer by layer: the GEMMs at the speed they reach inside the engine
and alone, against the machine's sgemm peak; the bytes the rest moves and its bandwidth.

    python benchmarks/roofline.py                  # 224x224, batch 1, measured plan
    python benchmarks/roofline.py --batch 8 --passes 5 --plan default

The header names the CPU, the BLAS kernels and the load, and measures the machine's
yardsticks: the sgemm peak of one thread (one 2048^3 product) and the copy bandwidth.
For each layer of the engine's plan this prints:

- the plan: algorithm, tile rows per chunk, output channels per block, order;
- the multiplications the layer's GEMMs do (GFLOP: Winograd's a*a GEMMs per tile,
  direct convolution's im2col GEMM, a dense layer's matrix-vector products);
- **in the engine**: the CPU seconds spent inside the layer's GEMM calls during the
  passes (every thread's, each call timed with its thread's CPU clock), and the GFLOP/s
  per thread that gives; and that rate as a share of the sgemm peak;
- **alone**: the engine's exact GEMM shapes repeated on one thread (BLAS at one thread),
  their GFLOP/s, i.e. what the same products reach when their operands are hot;
- the bytes everything else moves (transforms, pooling, bias and ReLU, copies between
  layers), counted from the array sizes each step reads and writes, and the bandwidth that
  traffic reaches in the time the GEMMs leave; for a dense layer, the weights each image
  streams and the rate the layer streams them at;
- the measured time of the layer (median over passes, in one process).

The gap between "in the engine" and "alone" is what feeding BLAS costs (cold weight
matrices, strided operands); the gap between "alone" and the peak is the shapes' own.
The script runs against any vgg_np checkout with the same module names for its kernels
(``PYTHONPATH=/path/to/other/checkout python benchmarks/roofline.py``), so the same table
can be made before and after a change.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import pathlib
import pkgutil
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))


class TimedNumpy:
    """NumPy for the engine's modules, with the GEMM calls of `np.matmul` timed per layer.

    The Winograd transforms are matmuls too, by a small constant matrix (at most 6 x 6)
    on the left: those are not GEMMs of the layer and are not counted.
    """

    def __init__(self):
        self.layer = ""
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.flop: dict[str, float] = collections.defaultdict(float)
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, *args, **kwargs):
        if a.ndim < 2 or (a.ndim == 2 and a.shape[0] <= 6 and a.shape[1] <= 6):
            return np.matmul(a, b, *args, **kwargs)  # a dense layer's row, or a transform
        start = time.thread_time()
        result = np.matmul(a, b, *args, **kwargs)
        seconds = time.thread_time() - start
        count = a.shape[0] if a.ndim == 3 else 1
        flop = 2 * count * a.shape[-2] * a.shape[-1] * b.shape[-1]
        with self._lock:
            self.seconds[self.layer] += seconds
            self.flop[self.layer] += flop
        return result


def instrument(engine_class) -> TimedNumpy:
    """Time the GEMMs of every engine module; name the layer each `_conv` call runs."""
    timed = TimedNumpy()
    package = importlib.import_module("vgg_np.engine")
    modules = [package]
    if hasattr(package, "__path__"):
        modules += [
            importlib.import_module(f"vgg_np.engine.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)
        ]
    for module in modules:
        if getattr(module, "np", None) is np:
            module.np = timed
    conv = engine_class._conv

    def named_conv(self, state, index, x, fuse_pool):
        timed.layer = self.layers[index].name
        return conv(self, state, index, x, fuse_pool)

    engine_class._conv = named_conv
    return timed


def gemm_shapes(plan, h: int, w: int, c: int) -> list[tuple]:
    """The BLAS products one image of a convolution runs: ``(count, M, K, N)`` each."""
    o = plan.bias.shape[0]
    blocks = [min(plan.channel_block, o - o0) for o0 in range(0, o, plan.channel_block)]
    shapes = []
    for q in range(0, plan.tiles_h, plan.rows_per_chunk):
        rows = min(plan.rows_per_chunk, plan.tiles_h - q)
        for block in blocks:
            if plan.m > 1:  # one GEMM per transformed position
                shapes.append(((plan.m + 2) ** 2, rows * -(-w // plan.m), c, block))
            else:
                shapes.append((1, rows * w, 9 * c, block))
    return shapes


def transform_bytes(plan, h: int, w: int, c: int, pooled: bool) -> float:
    """Bytes read and written per image by everything but the GEMMs (see the docstring)."""
    o, m, item = plan.bias.shape[0], plan.m, plan.bias.itemsize
    if m == 1:
        cols = h * w * 9 * c  # im2col: written once, read by the GEMM (counted there)
        moved = h * w * c * 3 + cols  # three strided reads of the input, one write
        out = h * w * o
    else:
        a, tw = m + 2, -(-w // m)
        chunks = -(-plan.tiles_h // plan.rows_per_chunk)
        rows_read = plan.tiles_h * m + 2 * chunks  # each chunk reads 2 extra rows
        gathered = a * rows_read * tw * c
        v = a * a * plan.tiles_h * tw * c
        p = m * a * plan.tiles_h * tw * o
        out = m * m * plan.tiles_h * tw * o
        product = a * a * plan.tiles_h * tw * o
        # gather (read + write), column transform (read + write), row transform (read
        # the windows, write V), output transforms (read the products, write p, read p,
        # write the tiles)
        moved = 2 * gathered + 2 * gathered + (gathered + v) + (product + p) + (p + out)
    if pooled:  # two maxima passes: read all, write half; read half, write a quarter
        moved += out + out / 2 + out / 2 + out / 4
        out /= 4
    moved += 2 * out + 2 * out + 2 * out  # bias, ReLU, copy into the next layer's input
    return moved * item


def time_gemms(shapes: list[tuple], dtype, repeats: int) -> float:
    """CPU seconds one thread takes for these products (best of `repeats`)."""
    rng = np.random.default_rng(0)
    arrays = []
    for count, m, k, n in shapes:
        a = rng.standard_normal((count, m, k)).astype(dtype)
        b = rng.standard_normal((count, k, n)).astype(dtype)
        arrays.append((a, b, np.empty((count, m, n), dtype)))
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()  # CPU time: other processes' load does not count
        for a, b, out in arrays:
            np.matmul(a, b, out=out)
        best = min(best, time.thread_time() - start)
    return best


def describe_plan(plan) -> str:
    choice = getattr(plan, "choice", None)
    if choice is None and plan.algorithm == "naive":
        return "naive"
    order = getattr(plan, "order", "chunk")
    return f"{plan.algorithm} {plan.rows_per_chunk}r {plan.channel_block}c {order}"


def conv_row(engine, index, shape, args, timed, per_layer) -> tuple:
    """One convolution's row (see the docstring); returns it and the next input shape."""
    layer = engine.layers[index]
    h, w, c = shape
    plan = engine._plan(index, h, w, c)
    shapes = gemm_shapes(plan, h, w, c)
    flop = 2 * sum(n * m * k * o for n, m, k, o in shapes) * args.batch
    alone = time_gemms(shapes, plan.bias.dtype, 3) * args.batch  # one thread
    inside = timed.seconds[layer.name] / args.passes  # CPU seconds, all threads
    moved = transform_bytes(plan, h, w, c, plan.pool) * args.batch
    measured = statistics.median(per_layer[layer.name])
    gemm_wall = alone / engine.threads  # a perfect split
    spare = measured - gemm_wall
    row = (
        layer.name, describe_plan(plan), flop / 1e9, timed.flop[layer.name] / args.passes / inside
        / 1e9 if inside else 0.0, flop / alone / 1e9, moved,
        moved / spare / 1e9 if spare > 0 else float("inf"), measured, gemm_wall,
    )  # fmt: skip
    following = (h // 2, w // 2, layer.units) if plan.pool else (h, w, layer.units)
    return row, following, 2 if plan.pool else 1


def dense_row(engine, layer, args, per_layer) -> tuple:
    """A dense layer's row: its matrix-vector products, the weights each image streams."""
    kernel, _ = engine.weights[layer.name]
    alone = time_gemms([(1, 1, *kernel.shape)], kernel.dtype, 3)  # one image, one thread
    flop, moved = 2 * kernel.size * args.batch, kernel.nbytes * args.batch
    measured = statistics.median(per_layer[layer.name])
    rate = moved / measured / 1e9  # the products are the memory traffic here
    gemm_wall = alone * args.batch / engine.threads
    return (layer.name, "dense", flop / 1e9, 0.0, flop / args.batch / alone / 1e9, moved,
            rate, measured, gemm_wall)  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--passes", type=int, default=5, help="timed passes (5)")
    parser.add_argument("--plan", default="measure", help="measure (default), default, FILE")
    args = parser.parse_args(argv)
    import machine
    from threadpoolctl import threadpool_limits

    import vgg_np
    from vgg_np.engine import Engine

    header = [machine.describe()]
    peak = machine.sgemm_peak(1)
    header.append(f"sgemm peak {peak:.0f} GFLOP/s per thread; copy {machine.bandwidth():.1f} GB/s")
    timed = instrument(Engine)
    options = {} if "plan" not in vgg_np.VGG.__init__.__code__.co_varnames else {"plan": args.plan}
    model = vgg_np.VGG16(seed=0, classifier_activation=None, **options)
    engine = model.engine
    x = np.random.default_rng(0).standard_normal((args.batch, 224, 224, 3), dtype=np.float32)
    model(x)  # warm-up: plans measured or read, kernels packed, threads started
    timed.seconds.clear()
    timed.flop.clear()
    per_layer: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.passes):
        timings: list = []
        list(engine.run(x, timings=timings))
        for name, _, seconds in timings:
            per_layer[name].append(seconds)
    rows, shape, index = [], (224, 224, 3), 0
    with threadpool_limits(1, "blas"):
        while index < len(engine.layers):
            layer = engine.layers[index]
            if layer.kind == "conv":
                row, shape, step = conv_row(engine, index, shape, args, timed, per_layer)
                rows.append(row)
                index += step
                continue
            if layer.kind == "dense":
                rows.append(dense_row(engine, layer, args, per_layer))
                shape = (layer.units,)
            elif layer.kind == "flatten":
                shape = (int(np.prod(shape)),)
            index += 1
    print("\n".join(header))
    print(
        f"\nVGG16 224x224, batch {args.batch}, {engine.threads} threads, medians of "
        f"{args.passes} passes\n\n| layer | plan | GEMM GFLOP | GEMM GFLOP/s per thread, in "
        "the engine | share of the sgemm peak | alone (repeated) | other bytes (MB) | their "
        "bandwidth (GB/s) | measured (ms) | GEMM share |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for name, plan, gflop, inside, alone, moved, rate, measured, gemm in rows:
        in_engine = f"{inside:.0f}" if inside else ""
        share = f"{inside / peak:.0%}" if inside else ""
        print(
            f"| {name} | {plan} | {gflop:.2f} | {in_engine} | {share} | {alone:.0f} | "
            f"{moved / 1e6:.0f} | {rate:.1f} | {measured * 1e3:.1f} | {gemm / measured:.0%} |"
        )
    convs = [r for r in rows if r[3]]
    total_flop = sum(r[2] for r in convs)
    inside_seconds = sum(r[2] / r[3] for r in convs)
    print(
        f"| total | | {sum(r[2] for r in rows):.2f} | {total_flop / inside_seconds:.0f} (convs) | "
        f"{total_flop / inside_seconds / peak:.0%} | | {sum(r[5] for r in rows) / 1e6:.0f} | | "
        f"{sum(r[7] for r in rows) * 1e3:.1f} | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
