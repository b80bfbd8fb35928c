"""A one-line progress bar with rate and ETA, on stderr (no dependency).

Used by `VGG.predict` (``verbose``), image extraction and weight downloads. It imports
nothing from vgg_np, so any module may use it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "show_progress"]

#: Seconds between redraws: often enough to look alive, rarely enough to cost nothing.
REDRAW_SECONDS = 0.2


def show_progress(verbose: bool | int | str, steps: int, stream: TextIO | None = None) -> bool:
    """Decide whether to draw a bar, as Keras reads ``verbose``.

    Parameters
    ----------
    verbose : {"auto", 0, 1} or bool
        ``"auto"``: when there is more than one step and `stream` is a terminal.
    steps : int
        How many updates the bar would see (e.g. batches).
    stream : file, optional
        Where the bar would go; default `sys.stderr`.

    Raises
    ------
    ValueError
        On any other `verbose`.

    Examples
    --------
    >>> show_progress(0, 100), show_progress(True, 1)
    (False, True)
    """
    if verbose == "auto":
        stream = stream or sys.stderr
        return steps > 1 and stream.isatty()
    if verbose in (0, 1):  # True and False included
        return bool(verbose)
    raise ValueError(f"`verbose` must be 'auto', 0 or 1, got {verbose!r}")


class Progress:
    """A bar such as ``[######........] 120/512 images 8.3 images/s ETA 0:00:47``.

    Parameters
    ----------
    total : int
        The count at which the work is done.
    unit : str, default "images"
        What is counted, shown after the counts and in the rate.
    scale : float, default 1
        Counts are divided by it for display (``1e6`` with ``unit="MB"`` for bytes).
    enabled : bool, default True
        False makes every method a no-op.
    stream : file, optional
        Default `sys.stderr`.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(4, stream=out) as bar:
    ...     bar.update(4)
    >>> out.getvalue().strip().split()[:2]
    ['[##############################]', '4/4']
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "images",
        scale: float = 1,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.total, self.unit, self.scale, self.enabled = total, unit, scale, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = -REDRAW_SECONDS

    def update(self, n: int = 1) -> None:
        """Count `n` more units done and redraw if it is time (see the class example)."""
        self.done += n
        now = time.perf_counter() - self.start
        if self.enabled and (now - self._drawn >= REDRAW_SECONDS or self.done >= self.total):
            self._drawn = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, elapsed: float) -> str:
        """Return the bar's text after `elapsed` seconds (see the class example)."""
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(30 * fraction)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        fmt = (lambda v: f"{v / self.scale:.1f}") if self.scale != 1 else str
        return (
            f"[{'#' * filled}{'.' * (30 - filled)}] {fmt(self.done)}/{fmt(self.total)} "
            f"{self.unit} {rate / self.scale:.1f} {self.unit}/s ETA {eta}"
        )

    def close(self) -> None:
        """End the bar's line (see the class example)."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
