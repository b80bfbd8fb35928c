"""Throughput of one model shared by several threads, against one thread, in one process.

    python benchmarks/threads.py                   # VGG16 224x224 and a small model, batch 1
    python benchmarks/threads.py --calls 24 --callers 4 --rounds 3

Modes, alternating over several rounds: ``1 thread`` makes all the calls itself;
``N threads`` share one model, each making its part of the calls at once; ``N threads,
serialised`` do the same behind one lock (what serialising per model would give).
Reported: images per second (median over rounds) and each mode's ratio to one thread.
The engine's own worker threads (`threads`, default the CPUs) serve every caller.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import threading
import time

import numpy as np
from machine import describe  # benchmarks/machine.py: the script's folder


def throughput(model, x: np.ndarray, calls: int, callers: int, lock=None) -> float:
    """Images per second for `calls` calls of `model(x)` spread over `callers` threads."""

    def caller(count: int) -> None:
        for _ in range(count):
            if lock is None:
                model(x)
            else:
                with lock:
                    model(x)

    shares = [calls // callers + (k < calls % callers) for k in range(callers)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, shares))
    return calls * len(x) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=16, help="calls per mode and round")
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import vgg_np

    small = vgg_np.VGGConfig(
        "small", ((16,), (32,), (32, 32), (64, 64), (64, 64)), fc=(64,), default_size=64
    )
    models = {
        "VGG16 224x224": (vgg_np.VGG16(seed=0), (224, 224, 3), args.calls),
        "small VGG 64x64": (vgg_np.VGG(small, seed=0, classes=10), (64, 64, 3), 8 * args.calls),
    }
    modes = {
        "1 thread": (1, None),
        f"{args.callers} threads": (args.callers, None),
        f"{args.callers} threads, serialised": (args.callers, threading.Lock()),
    }
    print(describe())
    print(f"batch 1, {os.cpu_count()} CPUs, medians of {args.rounds} rounds\n")
    print("| model | mode | images / s | vs 1 thread |\n|---|---|---|---|")
    for label, (model, shape, calls) in models.items():
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        model(x)  # warm-up: kernels packed, worker threads started
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, (callers, lock) in modes.items():
                rates[mode].append(throughput(model, x, calls, callers, lock))
        base = statistics.median(rates["1 thread"])
        for mode, values in rates.items():
            rate = statistics.median(values)
            print(f"| {label} | {mode} | {rate:.2f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
