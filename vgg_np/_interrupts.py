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
import time
from collections.abc import Iterator

__all__ = ["REDELIVERY_DELAY", "caused_by_interrupt", "redelivered"]

#: Seconds between a Ctrl-C dropped in a finalizer and its second delivery: long enough
#: for the hook that saw it dropped to have returned, short beside a person's wait.
REDELIVERY_DELAY = 0.01


def _interrupt_soon() -> None:
    time.sleep(REDELIVERY_DELAY)
    _thread.interrupt_main()


@contextlib.contextmanager
def redelivered() -> Iterator[None]:
    """Inside the block, a Ctrl-C dropped in a finalizer is raised again, 10 ms later.

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

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            previous(unraisable)
            return
        try:
            # The bare thread API: `threading.Thread.start` waits for the thread to run,
            # and on a loaded machine the interrupt then landed in that wait (measured).
            _thread.start_new_thread(_interrupt_soon, ())
        except KeyboardInterrupt:  # landed here all the same: once more
            _thread.start_new_thread(_interrupt_soon, ())

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether a Ctrl-C is behind `error`: in its chain of causes and contexts.

    Code between Python and C turns a `KeyboardInterrupt` that lands in it into another
    error with the interrupt as its cause (a ``SystemError`` from a Cython lock in h5py,
    a ``RuntimeError`` from a class's ``__set_name__``), which readers wrap again.

    Examples
    --------
    >>> lost = SystemError("<cyfunction FastRLock.__exit__> returned a result with an error set")
    >>> lost.__cause__ = KeyboardInterrupt()
    >>> wrapped = ValueError("weights.h5 is damaged")
    >>> wrapped.__cause__ = lost
    >>> caused_by_interrupt(wrapped), caused_by_interrupt(ValueError("weights.h5 is damaged"))
    (True, False)
    """
    todo: list[BaseException | None] = [error]
    seen: set[int] = set()
    while todo:
        link = todo.pop()
        if link is None or id(link) in seen:
            continue
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        todo += [link.__cause__, link.__context__]
    return False
