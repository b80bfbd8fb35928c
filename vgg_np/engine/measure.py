"""The measuring planner: each convolution's `Choice` timed on this machine once, then cached.

Like FFTW's planner or oneDNN's primitive selection, the fastest way to run a layer is
found by running it: the first time an engine meets a layer shape with
``plan="measure"``, it times the candidates on this machine and keeps the fastest in a
plan file (`vgg_np.engine.cache`), which later processes read instead of measuring.

The search (`search`) goes by stages, each timing a few candidates against the best so far:
the algorithm (every one the layer may use, with the built-in layout), then the chunk, the
channel blocks and the order (`vgg_np.engine.plan.variations`). Each stage times its
candidates in turns (A B C A B C), keeps the best time of each, drops those more than
`PRUNE` times slower than the best after each turn, and keeps the incumbent unless another
is faster by more than `MARGIN`. Every candidate computes the same convolution within its
algorithm's documented tolerance, so the choice changes speed, never what is computed
beyond that tolerance; for a given plan, results stay bitwise independent of the batch and
the threads.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

import numpy as np

from vgg_np.engine import cache
from vgg_np.engine.plan import Choice

__all__ = ["MODES", "Planner", "fastest", "layer_key", "resolve", "search"]

#: Timing turns per stage; the best of them counts (the first run of a candidate is
#: also its warm-up: its scratch arrays are allocated then).
REPEATS = 2
#: After each turn, candidates slower than this many times the best are dropped (first
#: runs included, so it is lenient).
PRUNE = 1.5
#: A challenger replaces the incumbent only if faster by more than this fraction
#: (noise must not flip a choice back and forth).
MARGIN = 0.05
#: Images a candidate runs on, by stage: one, except when the order is chosen (the
#: ``position`` order gains by using a block of weights for several images).
IMAGES = {"algorithm": 1, "rows": 1, "blocks": 1, "order": 2}
#: Measuring stops after this many seconds per engine; the layers left run the built-in
#: choice (not saved: a later process measures them).
BUDGET_SECONDS = 30.0

#: What ``plan`` accepts besides a path; ``VGG_NP_PLAN`` sets the default.
MODES = ("default", "measure")


def resolve(plan: str | os.PathLike | None) -> str | pathlib.Path:
    """Return ``"default"``, ``"measure"`` or the plan file a `plan` argument names.

    None reads ``$VGG_NP_PLAN`` (unset or empty: ``"default"``).

    Examples
    --------
    >>> resolve("measure"), resolve("plans.json")
    ('measure', PosixPath('plans.json'))
    """
    if plan is None:
        plan = os.environ.get("VGG_NP_PLAN") or "default"
        where = " (from $VGG_NP_PLAN)"
    else:
        where = ""
    if not isinstance(plan, (str, os.PathLike)):
        raise TypeError(
            f"`plan` must be 'default', 'measure' or the path of a plan file, got {plan!r}"
        )
    if plan in MODES:
        return plan
    path = pathlib.Path(plan)
    if path.suffix != ".json":
        raise ValueError(
            f"`plan` must be 'default', 'measure' or the path of a plan file (.json), "
            f"got {os.fspath(plan)!r}{where}"
        )
    return path


def layer_key(requested: str, dtype: str | np.dtype, shape: tuple, pool: bool) -> str:
    """Name a layer in a plan file: the algorithms allowed, dtype, ``H x W x C -> O``, pool.

    Examples
    --------
    >>> layer_key("auto", "float32", (56, 56, 128, 256), True)
    'auto float32 56x56x128->256 pool'
    """
    h, w, c, o = shape
    return f"{requested} {dtype} {h}x{w}x{c}->{o}{' pool' if pool else ''}"


def fastest(
    options: list[Choice], time_fn: Callable[[Choice], float], repeats: int = REPEATS
) -> tuple[Choice, dict[Choice, float]]:
    """Return the fastest of `options` (the first is the incumbent) and each one's best time.

    Examples
    --------
    >>> a, b = Choice("gemm", 2, 64), Choice("gemm", 4, 64)
    >>> fastest([a, b], {a: 1.0, b: 0.5}.get)
    (Choice(algorithm='gemm', rows_per_chunk=4, channel_block=64, order='chunk'), {...})
    """
    best: dict[Choice, float] = {}
    alive = list(options)
    if len(alive) == 1:  # nothing to compare (float64: direct convolution only)
        return alive[0], best
    for _ in range(repeats):
        for choice in alive:
            seconds = time_fn(choice)
            best[choice] = min(best.get(choice, seconds), seconds)
        quickest = min(best[c] for c in alive)
        alive = [c for c in alive if best[c] <= PRUNE * quickest]
        if len(alive) == 1:
            break
    incumbent = options[0]
    winner = min(alive, key=lambda c: (best[c], options.index(c)))
    if incumbent in alive and best[winner] > (1 - MARGIN) * best[incumbent]:
        winner = incumbent
    return winner, best


def search(
    first: list[Choice],
    vary: Callable[[Choice], dict[str, list[Choice]]],
    time_fn: Callable[[Choice, str], float],
) -> Choice:
    """Choose among `first` (one per algorithm), then refine the winner stage by stage.

    `vary(choice)` lists each stage's variations of `choice` (`plan.variations`);
    `time_fn(choice, stage)` times a candidate in a stage (``"algorithm"`` first).

    Examples
    --------
    >>> costs = {Choice("gemm", 2, 64): 3.0, Choice("winograd-4", 2, 64): 2.0,
    ...          Choice("winograd-4", 4, 64): 1.0}
    >>> def vary(choice):
    ...     return {"rows": [Choice(choice.algorithm, 4, 64)] if choice.rows_per_chunk == 2 else []}
    >>> search([Choice("gemm", 2, 64), Choice("winograd-4", 2, 64)], vary, lambda c, s: costs[c])
    Choice(algorithm='winograd-4', rows_per_chunk=4, channel_block=64, order='chunk')
    """
    best, _ = fastest(first, lambda c: time_fn(c, "algorithm"))
    for stage in vary(best):
        options = vary(best)[stage]
        if options:

            def timed(choice: Choice, stage: str = stage) -> float:
                return time_fn(choice, stage)

            best, _ = fastest([best, *options], timed)
    return best


class Planner:
    """An engine's choices: built-in (``"default"``), measured and cached, or from a file.

    Parameters
    ----------
    plan : "default", "measure", path or None
        See `resolve`. With a path, that file is the cache: its entries are used as they
        are, wherever they were measured (a way to pin choices), and the layers it lacks
        are measured and added to it.
    threads : int
        The engine's threads (part of what a measurement depends on).
    clock : callable, optional
        Returns seconds. Given, a candidate's time is the clock's advance over its run
        (tests pass a fake clock; `time.perf_counter` gives wall time). By default it is
        the CPU time of the run's busiest thread, which is what the wall time would be
        on an idle machine and is much less disturbed when other processes share the
        CPUs (wall times on a loaded 2-core machine varied 2x between runs).

    Examples
    --------
    >>> planner = Planner("measure", threads=2, clock=iter(range(100)).__next__)
    >>> a, b = Choice("gemm", 2, 64), Choice("gemm", 4, 64)
    >>> planner.measures, planner.lookup("layer", lambda c: True)  # nothing cached yet
    (True, None)
    >>> def prepare(choice, images):  # a candidate's run and its scale to whole images
    ...     return (lambda: None), (3.0 if choice == a else 1.0)
    >>> planner.measure("layer", [a, b], lambda c: {}, prepare)  # each run: 1 tick x scale
    Choice(algorithm='gemm', rows_per_chunk=4, channel_block=64, order='chunk')
    """

    def __init__(
        self,
        plan: str | os.PathLike | None,
        threads: int,
        clock: Callable[[], float] | None = None,
    ):
        self.mode = resolve(plan)
        # Where the file is, fixed now: it is read at the first call and written after,
        # and a relative path must not follow a `chdir` in between (another folder's file).
        self.folder = cache.cache_dir().absolute()
        if isinstance(self.mode, pathlib.Path):
            self.mode = self.mode.absolute()
        self.threads = threads
        self.clock = clock
        self.seconds = 0.0  # spent measuring, this engine's lifetime
        self._machine: dict | None = None
        self._entries: dict[str, Choice] | None = None
        self._new: dict[str, Choice] = {}

    @property
    def measures(self) -> bool:
        """Whether choices are measured (and cached) rather than built in (see the example)."""
        return self.mode != "default"

    def _machine_info(self) -> dict:
        """Describe the machine the measurements are for (found once)."""
        if self._machine is None:
            self._machine = cache.machine(self.threads)
        return self._machine

    def _path(self) -> pathlib.Path:
        if isinstance(self.mode, pathlib.Path):
            return self.mode
        return self.folder / cache.default_path(self._machine_info()).name

    def _loaded(self) -> dict[str, Choice]:
        """Return the plan file's entries (read once) and those measured since."""
        if self._entries is None:
            pinned = isinstance(self.mode, pathlib.Path)
            self._entries = cache.load(self._path(), None if pinned else self._machine_info())
        return self._entries

    def lookup(self, key: str, valid: Callable[[Choice], bool]) -> Choice | None:
        """Return the cached choice for `key` if there is one and `valid` accepts it.

        The plan file is read at the first look-up (see the class example).
        """
        choice = self._loaded().get(key)
        if choice is not None and not valid(choice):
            cache._warn(f"{os.fspath(self._path())!r}: {key!r}: {choice} does not fit the "
                        "layer; measuring it again")  # fmt: skip
            return None
        return choice

    def measure(
        self,
        key: str,
        first: list[Choice],
        vary: Callable[[Choice], dict[str, list[Choice]]],
        prepare: Callable[[Choice, int], tuple[Callable[[], float], float]],
    ) -> Choice | None:
        """Time the candidates; record and return the fastest (see the class example).

        `prepare(choice, images)` readies a candidate to run on that many images (its
        kernels packed; `IMAGES` of each stage) and returns the function to time, which
        returns the CPU seconds of its busiest thread, and the factor that scales that
        time to whole images (it may run a band of their rows). None when the budget is
        spent (the caller runs the built-in choice).
        """
        entries = self._loaded()
        if self.seconds >= BUDGET_SECONDS:
            return None
        start = time.perf_counter()  # the budget is in real seconds, whatever the clock
        runs: dict[tuple, tuple[Callable[[], float], float]] = {}

        def time_fn(choice: Choice, stage: str) -> float:
            images = IMAGES.get(stage, 1)
            if (choice, images) not in runs:
                runs[choice, images] = prepare(choice, images)
            run, scale = runs[choice, images]
            if self.clock is None:
                return run() * scale
            begin = self.clock()
            run()
            return (self.clock() - begin) * scale

        try:
            choice = search(first, vary, time_fn)
        finally:
            self.seconds += time.perf_counter() - start
        entries[key] = self._new[key] = choice
        return choice

    def save(self) -> None:
        """Write the choices measured since the last save to the plan file (class example)."""
        if self._new:
            new, self._new = self._new, {}
            pinned = isinstance(self.mode, pathlib.Path)
            cache.store(self._path(), self._machine_info(), new, pinned)
