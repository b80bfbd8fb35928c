"""Threads: BLAS held at one thread during a pass, and the engine's workers sharing tasks.

Each layer is split between the engine's own threads (NumPy releases the GIL in BLAS and
in its array loops) while BLAS runs single-threaded: OpenBLAS's idle workers spin after
each call and would steal the cores our threads need (docs/performance.md).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController  # untyped: Any to the checker

T = TypeVar("T")

#: Most worker threads an engine starts by default (it takes the CPUs it may use, up to this).
MAX_THREADS = 8

#: Smaller layers (multiply-adds per slice) run on the calling thread: handing tasks to
#: the workers costs tens of microseconds each.
MIN_PARALLEL_MACS = 4_000_000


def cpu_count() -> int:
    """Count the CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def _controller() -> ThreadpoolController:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_libraries() -> list[dict]:
    """Describe the BLAS libraries NumPy loaded: threadpoolctl's info, one dict each.

    Each has ``internal_api`` (openblas, mkl, blis...), ``version``, ``architecture``
    (the kernel set chosen for this CPU, where the library says) and ``num_threads``.

    Examples
    --------
    >>> {"internal_api", "version"} <= set(blas_libraries()[0])
    True
    """
    return [dict(lib.info()) for lib in _controller().select(user_api="blas").lib_controllers]


class _SingleThreadedBlas:
    """BLAS at one thread while any pass of any engine runs; restored after the last.

    The setting is per process (OpenBLAS has no per-thread one), so passes running at
    once in several threads count themselves in and out under a lock. threadpoolctl's
    own `limit` would not do: each limit restores on exit what it found, out of order
    when passes overlap, and (3.8) while one thread is inside a limit, OpenBLAS limits
    asked for by other threads are silently ignored: their GEMMs then run on OpenBLAS's
    threads as well as on ours (measured: 30 times the CPU time per pass).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passes = 0
        self._saved: list[tuple[Callable[[int], object], int]] = []

    def __enter__(self) -> None:
        with self._lock:
            if self._passes == 0:
                for library in _controller().select(user_api="blas").lib_controllers:
                    # threadpoolctl's OpenBLAS controller guards its public setter by
                    # thread (see above); the process-wide setter underneath is what we need.
                    setter = getattr(library, "_real_set_num_threads", library.set_num_threads)
                    self._saved.append((setter, library.get_num_threads()))
                    setter(1)
            self._passes += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._passes -= 1
            if self._passes == 0:
                for setter, threads in self._saved:
                    setter(threads)
                self._saved.clear()


#: Enter around a pass: BLAS at one thread until the last pass of the process leaves.
BLAS_SINGLE = _SingleThreadedBlas()


class Workers:
    """`threads` - 1 worker threads (started on first use) and the calling thread.

    Shared by every call of an engine: concurrent calls queue their tasks on the same
    workers rather than oversubscribe the cores. A Ctrl-C (a `KeyboardInterrupt` in the
    calling thread) at any moment of a call ends it promptly: the workers finish the task
    they hold and take no other, and none is left for the interpreter to wait for at exit.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _submit(self, fn: Callable[..., object], *args: object) -> concurrent.futures.Future:
        with self._lock:  # `close` may not shut the pool down between these two lines
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "vgg_np")
            try:
                return self._pool.submit(fn, *args)
            except BaseException:
                # A Ctrl-C while `submit` starts a worker (`Thread.start` waits for the new
                # thread to run) leaves that thread waiting for work but unknown to
                # concurrent.futures' exit hook, which wakes only the threads it knows: the
                # interpreter then waited for it at exit, forever. Shutting the pool down
                # wakes every thread it started, known or not.
                pool, self._pool = self._pool, None
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def map(
        self, fn: Callable[..., T], args: list[tuple], macs: int, meter: list | None = None
    ) -> list[T]:
        """``[fn(*a) for a in args]``, shared by the calling thread and the workers.

        The calling thread takes tasks too, so work starts at once even when the workers
        have gone to sleep (waking one took 20 ms on these VMs after a 0.3 s pause).
        `macs`, the multiply-adds of all the tasks, decides whether to share at all:
        below `MIN_PARALLEL_MACS` handing tasks over costs more than it saves. Which
        thread runs a task changes nothing in its result. With a `meter` list, the CPU
        seconds of the thread that worked longest are appended to it.
        """
        if self.threads == 1 or len(args) == 1 or macs < MIN_PARALLEL_MACS:
            start = time.thread_time()
            alone = [fn(*a) for a in args]
            if meter is not None:
                meter.append(time.thread_time() - start)
            return alone
        results: list = [None] * len(args)
        todo, lock, spent = list(range(len(args)))[::-1], threading.Lock(), []

        def drain() -> None:
            start = time.thread_time()
            while True:
                with lock:
                    k = todo.pop() if todo else None
                if k is None:
                    spent.append(time.thread_time() - start)
                    return
                results[k] = fn(*args[k])

        helpers: list[concurrent.futures.Future] = []
        try:  # helpers submitted inside: a Ctrl-C among the submissions stops them too
            for _ in range(min(self.threads, len(args)) - 1):
                helpers.append(self._submit(drain))
            drain()
        finally:
            with lock:
                todo.clear()  # after an error (a Ctrl-C) the helpers stop at their next task
            for helper in helpers:
                helper.cancel()  # a helper still queued behind other calls is not needed
            concurrent.futures.wait(helpers)  # all finished before an error leaves the call
        for helper in helpers:
            if not helper.cancelled():
                helper.result()  # re-raises a helper's exception here
        if meter is not None:
            meter.append(max(spent))
        return results

    def close(self) -> None:
        """Stop the worker threads; they start again on the next `map` that shares."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
