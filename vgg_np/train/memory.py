"""Training steps reuse the memory they free: glibc's malloc asked to keep it between steps.

Every training step allocates and frees the same large arrays: a convolution's
transformed tiles and products (13 MB each at 14x14x512, batch 32), the tape, the
gradients. glibc's malloc hands a freed block above its thresholds back to the kernel
(``munmap``, or trimming the top of a thread's heap), so the next step gets fresh pages:
a page fault on first touch and the kernel zeroing each page, with the step's two threads
faulting at once. Measured on this 2-core machine (Zen 4, load 1): block 5's step
(batch 32 of 14x14x512, `benchmarks/train_step.py`'s) took 5,200-9,800 page faults and
1125-1297 ms; with the memory kept, none and 999-1093 ms. A convolution alone: 5,200
faults, 170 ms; none, 105 ms (docs/performance.md, "Training steps").

`kept` raises glibc's two thresholds for the duration of a block (`mallopt`): blocks up
to `MMAP_THRESHOLD` come from the heaps, and freed memory stays there for the next step.
When the outermost block ends, the trim threshold is glibc's default again and
``malloc_trim`` gives the free memory back, so a notebook's process shrinks after
training: `vgg_np.train.fit` holds one block over its epochs, validation and the model's
writing, and frees the run's arrays before it ends. The mmap threshold stays at
`MMAP_THRESHOLD`: glibc's own dynamic threshold climbs toward it as large arrays are
freed, but setting any threshold turns that climb (and the trim threshold's, kept at
twice it) off for the rest of the process, so later work frees the top of the heap at
128 KiB and maps it again (measured after one block: 0 to about 180 page faults per
``predict`` of a batch of 2 at 160x160, no change in time beyond the noise).

Memory is reused, never shared: what a step computes is the same either way (every
allocation still gets its own block). Other C libraries (musl, macOS, Windows) are left
as they are: `kept` does nothing there; nor where the user set malloc's thresholds
through the environment (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or those of ``GLIBC_TUNABLES``): mallopt
cannot read a threshold back, so `kept` could not give theirs back when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["DEFAULT_TRIM_THRESHOLD", "KEPT_TRIM_THRESHOLD", "MMAP_THRESHOLD", "kept"]

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit systems (4 * 1024 * 1024 * sizeof(long)).
MMAP_THRESHOLD = 32 << 20
#: Free memory at a heap's top kept while training: mallopt's largest value (a C int).
KEPT_TRIM_THRESHOLD = (1 << 31) - 1
#: glibc's default trim threshold, set again when the outermost `kept` block ends.
DEFAULT_TRIM_THRESHOLD = 128 << 10

#: What `kept` sets, by the names of their environment variables (``MALLOC_<NAME>_``)
#: and of their tunables (``glibc.malloc.<name>``); either set by the user: left alone.
_THRESHOLDS = ("trim_threshold", "mmap_threshold", "top_pad", "mmap_max")

_lock = threading.Lock()
_depth = 0


def _start_environment() -> dict[str, str]:
    """Return the environment the process started with, as glibc read it (/proc/self/environ).

    Not `os.environ`, which later code changes: Dask's nanny puts
    ``MALLOC_TRIM_THRESHOLD_`` there for the workers it starts, which does not change
    this process's malloc. `os.environ` where ``/proc`` cannot be read.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if entry)
    return {name: value for name, _, value in pairs}


def _set_by_user() -> bool:
    """Whether the process started with malloc thresholds of the user's own."""
    environment = _start_environment()
    tunables = environment.get("GLIBC_TUNABLES", "")
    return any(
        f"MALLOC_{name.upper()}_" in environment or f"glibc.malloc.{name}" in tunables
        for name in _THRESHOLDS
    )


def _glibc() -> ctypes.CDLL | None:
    """Return the process's C library where it is glibc (it has ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    names = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in names) else None


@contextlib.contextmanager
def kept() -> Iterator[bool]:
    """Inside the block, memory freed by NumPy stays in the process for the next step.

    Blocks nest (and may be entered from several threads): the outermost one sets the
    thresholds and, when it ends, gives the free memory back.

    Yields
    ------
    bool
        Whether malloc was told (glibc); False elsewhere, or where the environment sets
        malloc's thresholds, where nothing changes.

    Examples
    --------
    >>> import numpy as np
    >>> with kept():
    ...     for _ in range(3):
    ...         step = np.ones((1 << 20,)).sum()  # the same 8 MB block each time
    >>> float(step)
    1048576.0
    """
    global _depth
    libc = None if _set_by_user() else _glibc()
    if libc is None:
        yield False
        return
    counted = False
    try:
        with _lock:
            # No call between the two: a Ctrl-C lands in a call (the setting's), so the
            # block is counted only where its end will be too.
            _depth += 1
            counted = True
            if _depth == 1:
                libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD)
        yield True
    finally:
        if counted:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    libc.mallopt(_M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                    libc.malloc_trim(0)
