"""What a benchmark ran on: the CPU, the BLAS kernels, the load; and the machine's own peaks.

    python benchmarks/machine.py            # the header every benchmark prints, and the peaks

Every benchmark here starts its report with `describe()` (CPU model, family and model
numbers, the BLAS library and the kernel set it chose for this CPU, NumPy, the load
average), because the machines change from day to day and a number without them cannot be
compared with anything. `sgemm_peak` and `bandwidth` measure what this machine can do at
best (one large float32 product, one large copy), the yardsticks of `roofline.py`.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def describe() -> str:
    """One line: CPU, BLAS library and kernels, NumPy, CPUs, load average."""
    from vgg_np.engine import cache, threads

    cpu = cache.cpu()
    blas = ", ".join(
        f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')} kernels)"
        for lib in threads.blas_libraries()
    )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"CPU: {cpu['model']} ({cpu['vendor']} family {cpu['family']} model {cpu['number']}), "
        f"{threads.cpu_count()} CPUs; BLAS: {blas or 'none found'}; NumPy {np.__version__}; "
        f"load average {load}"
    )


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sgemm_peak(threads: int = 1, n: int = 2048, repeats: int = 5, dtype=np.float32) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` product, `threads` BLAS threads, best of `repeats`."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b, c = a.copy(), np.empty_like(a)
    with threadpool_limits(threads, "blas"):
        seconds = _best(lambda: np.matmul(a, b, out=c), repeats)
    return 2 * n**3 / seconds / 1e9


def bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s moved by one large copy (bytes read plus bytes written; best of `repeats`)."""
    a = np.ones(megabytes << 18, np.float32)  # megabytes << 20 bytes
    b = np.empty_like(a)
    seconds = _best(lambda: np.copyto(b, a), repeats)
    return 2 * a.nbytes / seconds / 1e9


def peaks() -> str:
    """The machine's yardsticks as one line (takes a few seconds)."""
    from vgg_np.engine.threads import cpu_count

    one = sgemm_peak(1)
    every = sgemm_peak(cpu_count())
    d_one = sgemm_peak(1, n=1536, dtype=np.float64)
    return (
        f"sgemm peak {one:.0f} GFLOP/s on 1 thread, {every:.0f} on {cpu_count()}; dgemm "
        f"{d_one:.0f} on 1 thread; copy bandwidth {bandwidth():.1f} GB/s (read + write, 1 thread)"
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(describe())
    print(peaks())
