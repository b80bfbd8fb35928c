"""Ctrl-C that always stops a command: one that lands in a finalizer is delivered again.

Python raises the `KeyboardInterrupt` of a Ctrl-C in whatever code the main thread runs
when the signal arrives, finalizers included (``__del__``, a weakref callback: NumPy,
concurrent.futures and the weakref module run them all the time). An exception raised
there is printed ("Exception ignored in ...") and dropped, and the command ran on to its
end as if no Ctrl-C had come. `redelivered` raises such an interrupt again.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["REDELIVERY_DELAY", "redelivered"]

#: Seconds between a Ctrl-C dropped in a finalizer and its second delivery.
REDELIVERY_DELAY = 1e-3


def _interrupt_soon() -> None:
    time.sleep(REDELIVERY_DELAY)
    _thread.interrupt_main()


@contextlib.contextmanager
def redelivered() -> Iterator[None]:
    """Inside the block, a Ctrl-C dropped in a finalizer is raised again, 1 ms later.

    From another thread: raised from the hook that sees it dropped, it would land in the
    hook and be dropped again. One that lands in another finalizer is redelivered again.

    Examples
    --------
    >>> class Finalized:
    ...     def __del__(self):
    ...         raise KeyboardInterrupt  # as a Ctrl-C arriving while a finalizer runs
    >>> try:
    ...     with redelivered():
    ...         finalized = Finalized()
    ...         del finalized  # finalized here: its interrupt is dropped, then raised again
    ...         time.sleep(1)
    ...     print("dropped")
    ... except KeyboardInterrupt:
    ...     print("interrupted")
    interrupted
    """
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            threading.Thread(target=_interrupt_soon, name="vgg_np-interrupt", daemon=True).start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
