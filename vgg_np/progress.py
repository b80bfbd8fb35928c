"""A progress bar with rate and ETA on stderr, drawn from the first image (no dependency).

Used by `VGG.predict` (``verbose``), image extraction and weight downloads. It imports
nothing from vgg_np, so any module may use it. On a terminal it is one line redrawn in
place; in a Jupyter notebook with ipywidgets installed, a progress widget; elsewhere (a
log file, a CI job, a notebook without ipywidgets) whole lines, at most one every
`LINE_SECONDS` plus the first and the last, as tqdm and Keras do for logs. It
never writes to stdout: a program printing results while a bar is drawn prints them with
`write_line`, which lifts the bar off the terminal's line first (as ``tqdm.write`` does).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from typing import Self  # Python 3.11

__all__ = ["Progress", "show_progress", "write_line"]

#: Seconds between redraws on a terminal: often enough to look alive, rarely enough to
#: cost nothing.
REDRAW_SECONDS = 0.2
#: Seconds between lines elsewhere (a log): a bar's line every 0.2 s would flood it.
LINE_SECONDS = 10.0
#: The bars being drawn on a terminal now, which `write_line` lifts off their line.
_ACTIVE: list[Progress] = []


def write_line(text: str, file: TextIO | None = None) -> None:
    """Print `text` (a line) to `file` (default stdout) without mixing it into a bar.

    A bar drawn in place on a terminal is cleared from its line first and redrawn
    after, so that results and messages never share a line with it.

    Examples
    --------
    >>> write_line("cat.jpg: tabby")
    cat.jpg: tabby
    """
    file = file or sys.stdout
    for bar in _ACTIVE:
        bar.stream.write("\r\x1b[K")  # carriage return, erase to the end of the line
        bar.stream.flush()
    print(text, file=file, flush=True)
    for bar in _ACTIVE:
        bar.stream.write("\r" + bar.line(time.perf_counter() - bar.start))
        bar.stream.flush()


def show_progress(verbose: bool | int | str, steps: int) -> bool:
    """Decide whether to draw a bar, as Keras reads ``verbose``.

    Parameters
    ----------
    verbose : {"auto", 0, 1} or bool
        ``"auto"``: when there is more than one step (on a terminal a bar, elsewhere
        lines at a bounded rate).
    steps : int
        How many updates the bar would see (e.g. batches).

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
        return steps > 1
    if verbose in (0, 1):  # True and False included
        return bool(verbose)
    raise ValueError(f"`verbose` must be 'auto', 0 or 1, got {verbose!r}")


class Progress:
    """A bar such as ``[######........] 120/512 images 8.3 images/s ETA 0:00:47``.

    Drawn when it is made (``0/512``), before the first image is done; redrawn in place on
    a terminal, else written as whole lines at most every `LINE_SECONDS`.

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
    >>> print(out.getvalue().strip())  # not a terminal: whole lines, the first and last
    [..............................] 0/4 images 0.0 images/s ETA ?
    [##############################] 4/4 images ... images/s ETA 00:00:00
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
        self.in_place = enabled and _is_terminal(self.stream)
        self._widget = _notebook_widget(total, self.stream) if enabled else None
        self._drawn, self._drawn_done = 0.0, -1
        if enabled:
            if self.in_place:
                _ACTIVE.append(self)
            self._draw(0.0)  # from the first image, not after the first batch

    def _draw(self, now: float) -> None:
        self._drawn, self._drawn_done = now, self.done
        if self._widget is not None:
            bar, label = self._widget
            bar.value = min(self.done, bar.max)
            label.value = self.line(now).split("] ", 1)[1]  # the counts, rate and ETA
            return
        if self.in_place:
            self.stream.write("\r" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        """Count `n` more units done and redraw if it is time (see the class example)."""
        self.done += n
        now = time.perf_counter() - self.start
        interval = REDRAW_SECONDS if self.in_place or self._widget else LINE_SECONDS
        due = now - self._drawn >= interval or self.done >= self.total
        if self.enabled and due and self.done != self._drawn_done:
            self._draw(now)

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
        """End the bar: its last state drawn, its line ended (see the class example)."""
        if not self.enabled:
            return
        if self._drawn_done != self.done:  # a log's last line says where it stopped
            self._draw(time.perf_counter() - self.start)
        if self.in_place:
            _ACTIVE.remove(self)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _notebook_widget(total: int, stream: TextIO) -> tuple[Any, Any] | None:
    """Show a progress widget when `stream` is a Jupyter kernel's and ipywidgets is there.

    Returns the (bar, label) widgets, or None: then lines are written instead. (They are
    `Any` to the type checker: ipywidgets is optional and not checked, see pyproject.toml.)
    """
    if "ipykernel" not in sys.modules or not type(stream).__module__.startswith("ipykernel"):
        return None
    try:
        import ipywidgets
        from IPython.display import display
    except ImportError:
        return None
    bar, label = ipywidgets.IntProgress(min=0, max=max(total, 1)), ipywidgets.HTML()
    display(ipywidgets.HBox([bar, label]))
    return bar, label
