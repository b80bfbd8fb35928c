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
import platform
import time

import numpy as np


def cpu_model() -> str:
    """The first CPU's model name, vendor, family and model numbers, from /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU only
                name, _, value = (part.strip() for part in line.partition(":"))
                fields[name] = value
    except OSError:
        return platform.processor() or platform.machine()
    return (
        f"{fields.get('model name', '?')} ({fields.get('vendor_id', '?')} family "
        f"{fields.get('cpu family', '?')} model {fields.get('model', '?')})"
    )


def blas() -> str:
    """The BLAS libraries NumPy loaded, their versions and the kernels they chose."""
    from threadpoolctl import threadpool_info

    return ", ".join(
        f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')} kernels)"
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    )


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe() -> str:
    """One line: CPU, BLAS library and kernels, NumPy, CPUs, load average."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"CPU: {cpu_model()}, {cpus()} CPUs; BLAS: {blas() or 'none found'}; "
        f"NumPy {np.__version__}; load average {load}"
    )


def _best(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def sgemm_peak(threads: int = 1, n: int = 2048, repeats: int = 5, dtype=np.float32) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` product, `threads` BLAS threads, best of `repeats`."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b, c = a.copy(), np.empty_like(a)
    # One thread: its CPU time, which other processes' load does not inflate.
    clock = time.thread_time if threads == 1 else time.perf_counter
    with threadpool_limits(threads, "blas"):
        seconds = _best(lambda: np.matmul(a, b, out=c), repeats, clock)
    return 2 * n**3 / seconds / 1e9


def bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s moved by one large copy (bytes read plus bytes written; best of `repeats`)."""
    a = np.ones(megabytes << 18, np.float32)  # megabytes << 20 bytes
    b = np.empty_like(a)
    seconds = _best(lambda: np.copyto(b, a), repeats)
    return 2 * a.nbytes / seconds / 1e9


def peaks() -> str:
    """The machine's yardsticks as one line (takes a few seconds)."""
    one = sgemm_peak(1)
    every = sgemm_peak(cpus())
    d_one = sgemm_peak(1, n=1536, dtype=np.float64)
    return (
        f"sgemm peak {one:.0f} GFLOP/s on 1 thread, {every:.0f} on {cpus()}; dgemm "
        f"{d_one:.0f} on 1 thread; copy bandwidth {bandwidth():.1f} GB/s (read + write, 1 thread)"
    )


if __name__ == "__main__":
    print(describe())
    print(peaks())
