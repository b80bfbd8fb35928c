"""Where VGG16's time goes, layer by layer: the GEMMs at their measured speed, the bytes the
transforms move and the bandwidth they reach, against the measured time of each layer.

    python benchmarks/roofline.py                  # 224x224, batch 1, every layer
    python benchmarks/roofline.py --batch 8 --passes 5

For each layer of the default engine path this prints:

- the multiplications the layer's algorithm does (GFLOP: Winograd's a*a GEMMs per tile,
  direct convolution's im2col GEMM, a dense layer's matrix-vector products);
- the time those GEMMs take alone: the engine's exact GEMM shapes (its chunks and channel
  blocks) timed on one thread with BLAS at one thread, divided by the engine's threads
  (a perfect split), and the GFLOP/s they reach per thread;
- the bytes everything else moves (transforms, pooling, bias and ReLU, copies between
  layers), counted from the array sizes each step reads and writes, and the bandwidth
  that traffic reaches in the time the GEMMs leave; for a dense layer, the weights each
  image streams and the rate the layer streams them at;
- the measured time of the layer (median over passes, in one process).

A layer whose time is close to its GEMM time is bound by the multiplications; one whose
remaining time moves its bytes at a low rate is bound by Python overhead and small
passes rather than by memory bandwidth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


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
    """Seconds one thread takes for these products (best of `repeats`)."""
    rng = np.random.default_rng(0)
    arrays = []
    for count, m, k, n in shapes:
        a = rng.standard_normal((count, m, k)).astype(dtype)
        b = rng.standard_normal((count, k, n)).astype(dtype)
        arrays.append((a, b, np.empty((count, m, n), dtype)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b, out in arrays:
            np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--passes", type=int, default=7, help="timed passes (7)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    import vgg_np

    model = vgg_np.VGG16(seed=0, classifier_activation=None)
    engine = model.engine
    x = np.random.default_rng(0).standard_normal((args.batch, 224, 224, 3), dtype=np.float32)
    model(x)  # warm-up: kernels packed, threads started
    per_layer: dict[str, list[float]] = {}
    labels = {}
    for _ in range(args.passes):
        timings: list = []
        list(engine.run(x, timings=timings))
        for name, label, seconds in timings:
            per_layer.setdefault(name, []).append(seconds)
            labels[name] = label
    rows = []
    shape, index = (224, 224, 3), 0
    with threadpool_limits(1, "blas"):
        while index < len(engine.layers):
            layer = engine.layers[index]
            if layer.kind == "conv":
                h, w, c = shape
                plan = engine._plan(index, h, w, c)
                pooled = plan.pool
                shapes = gemm_shapes(plan, h, w, c)
                flop = 2 * sum(n * m * k * o for n, m, k, o in shapes) * args.batch
                gemm = time_gemms(shapes, np.float32, 3) * args.batch / engine.threads
                moved = transform_bytes(plan, h, w, c, pooled) * args.batch
                name = layer.name  # a fused pool is timed with its convolution
                shape = (h // 2, w // 2, layer.units) if pooled else (h, w, layer.units)
                index += 2 if pooled else 1
            elif layer.kind == "dense":
                kernel, _ = model.weights[layer.name]
                flop = 2 * kernel.size * args.batch
                moved = kernel.nbytes * args.batch  # each image streams the weights
                start = time.perf_counter()
                for _ in range(3):
                    np.matmul(np.ones(kernel.shape[0], np.float32), kernel)
                gemm = (time.perf_counter() - start) / 3 * args.batch / engine.threads
                name, shape, index = layer.name, (layer.units,), index + 1
                measured = statistics.median(per_layer[name])
                per_thread = flop / (gemm * engine.threads) / 1e9
                rate = moved / measured / 1e9  # the products are the memory traffic here
                rows.append((name, "dense", flop / 1e9, gemm, per_thread, moved, rate, measured))
                continue
            else:
                name, index = layer.name, index + 1
                shape = (int(np.prod(shape)),) if layer.kind == "flatten" else shape
                continue
            measured = statistics.median(per_layer[name])
            spare = measured - gemm
            rate = moved / spare / 1e9 if spare > 0 else float("inf")
            per_thread = flop / (gemm * engine.threads) / 1e9
            rows.append((name, labels[name], flop / 1e9, gemm, per_thread, moved, rate, measured))
    print(
        f"VGG16 224x224, batch {args.batch}, {engine.threads} threads, medians of "
        f"{args.passes} passes\n\n| layer | algorithm | GEMM GFLOP | GEMMs alone (ms) | "
        "GEMM GFLOP/s per thread | other bytes (MB) | their bandwidth (GB/s) | measured (ms) "
        "| GEMM share |\n|---|---|---|---|---|---|---|---|---|"
    )
    for name, label, gflop, gemm, per_thread, moved, rate, measured in rows:
        print(
            f"| {name} | {label} | {gflop:.2f} | {gemm * 1e3:.1f} | {per_thread:.0f} | "
            f"{moved / 1e6:.0f} | {rate:.1f} | {measured * 1e3:.1f} | {gemm / measured:.0%} |"
        )
    total = sum(r[7] for r in rows)
    print(
        f"| total | | {sum(r[2] for r in rows):.2f} | {sum(r[3] for r in rows) * 1e3:.1f} | | "
        f"{sum(r[5] for r in rows) / 1e6:.0f} | | {total * 1e3:.1f} | "
        f"{sum(r[3] for r in rows) / total:.0%} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
