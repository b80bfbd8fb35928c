"""The frozen base's features of every picture, computed once in `vgg_np.extract`'s store.

A frozen base gives the same features every epoch, so they are computed once, through
the engine, by `vgg_np.extract.extract`, and kept in its resumable store: a run killed
during the pass loses at most a batch, a second run (another head, more epochs) reads
them back, and a picture that changed since is noticed by the store (its size,
modification time and SHA-256 are in the manifest) and computed again. The store's name
is a digest of what its rows depend on (the base's weights up to the cut, the cut, the
input size, the preprocessing: its *family*), then of the list of pictures, so different
runs share a store exactly when they would compute the same rows.

A list that changed (a picture added or removed, another validation folder) is another
store, seeded from the stores of its family (`vgg_np.extract.seeding`, most recently used
first): the rows they hold of the same pictures, computed the same way, checked and
unchanged, are copied; only the others go through the base (``Features.result.reused``).

The older stores do not pile up: once a store is ready, the other stores of its family
whose pictures it all holds are removed (nothing is lost: it holds their rows), and of
the rest only the `KEEP_EARLIER` most recently used are kept (so that alternating
between two folders does not recompute either). A run holds a shared lock on
``CACHE/.lock`` while it makes and opens its store; stores are removed only under the
exclusive lock, taken without waiting: while another run is in its feature pass nothing
is removed (the next run does it), and a run's store cannot go away under it (once
opened, it is mapped: a later removal does not change what it reads). Where `fcntl` is
missing (Windows), nothing is removed.

Where stores live: `cache_dir`, by default ``$VGG_NP_CACHE``, else
``$XDG_CACHE_HOME/vgg_np/features``, else ``~/.cache/vgg_np/features``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vgg_np.extract import ExtractResult, extract, open_store, remove_store, weights_digest
from vgg_np.formats import Preprocessing
from vgg_np.streams import input_size

try:
    import fcntl
except ImportError:  # Windows: no locks, so nothing is removed (module docstring)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from vgg_np.model import VGG

__all__ = ["KEEP_EARLIER", "Features", "cache_root", "cached_features"]

#: Stores of a family kept besides the one in use, most recently used first (those whose
#: pictures the one in use all holds are removed whatever their rank).
KEEP_EARLIER = 2

#: The lock file in the cache folder (module docstring).
LOCK_NAME = ".lock"


def cache_root() -> str:
    """Return the folder feature stores go to by default (module docstring).

    Examples
    --------
    >>> import os
    >>> os.environ["VGG_NP_CACHE"] = "/tmp/vgg_np_doc_cache"
    >>> cache_root()
    '/tmp/vgg_np_doc_cache'
    >>> del os.environ["VGG_NP_CACHE"]
    """
    if os.environ.get("VGG_NP_CACHE"):
        return os.environ["VGG_NP_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vgg_np", "features")


@dataclass
class Features:
    """The rows of a feature store, in the order of the paths asked for.

    Attributes
    ----------
    array : ndarray
        The store's array, ``(rows, *shape)``, read-only (a memory map).
    rows : ndarray of int
        For each path asked for, its row in `array`.
    failed : dict of int to str
        Position in the paths asked for -> why that picture could not be used.
    digests : list of str
        For each path, the checksum of its row (the manifest's): what a checkpoint
        compares to know it was trained on the same features.
    result : ExtractResult
        What the pass did: ``written`` rows computed (0 when every row came from the
        store), ``reused`` rows copied from an earlier store of other pictures.

    Examples
    --------
    See `cached_features`, which returns it.

    >>> rows = np.arange(12.0).reshape(4, 3)
    >>> Features(rows, np.array([2, 0]), {}, ["a", "b"], None).take([1, 0])
    array([[0., 1., 2.],
           [6., 7., 8.]])
    """

    array: NDArray
    rows: NDArray[np.intp]
    failed: dict[int, str]
    digests: list[str]
    result: ExtractResult

    def take(self, indices: Sequence[int] | NDArray[np.integer]) -> NDArray:
        """Return the rows of the paths at `indices` (positions in the paths asked for).

        Rows are read in increasing order from the memory map, then put in the order asked
        (see the class example).
        """
        rows = self.rows[np.asarray(indices, np.intp)]
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        block[order] = self.array[rows[order]]  # (n, *shape)
        return block


def _family(base: VGG, layer: str, prep: Preprocessing) -> str:
    """Return the start of a store's name: the cut, and a digest of what its rows depend on."""
    key = json.dumps([weights_digest(base, layer), layer, input_size(base), prep.mode, prep.resize])
    return f"{layer}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _store_name(family: str, paths: Sequence[str]) -> str:
    key = json.dumps([family, sorted(set(paths))])
    return f"{family}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def _family_stores(folder: str, family: str, out: str) -> list[str]:
    """Return the other stores of `family` in `folder`, most recently used first."""
    found = []
    for other in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(family)}-*.npy")):
        try:  # the manifest folder is touched at each use (`cached_features`)
            found.append((os.stat(other + ".manifest").st_mtime_ns, other))
        except OSError:
            continue  # not a store, or being removed
    return [other for _, other in sorted(found, reverse=True) if other != out]


@contextlib.contextmanager
def _locked(folder: str, exclusive: bool = False) -> Iterator[bool]:
    """Hold the cache's lock, shared (waiting) or exclusive (not waiting); yield if held.

    Without locks (no `fcntl`, a folder one cannot write, a filesystem without them) a
    shared lock is taken as held and an exclusive one as not: nothing is then removed.
    """
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        fd = None
    try:
        if fd is None or fcntl is None:
            yield not exclusive
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except OSError:  # held by another run (BlockingIOError), or no locks here
            yield not exclusive
            return
        yield True
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _prune(folder: str, family: str, out: str, paths: Sequence[str]) -> list[str]:
    """Remove the stores of `family` that `out` supersedes or that exceed `KEEP_EARLIER`.

    Returns the stores removed (none when another run holds the lock).
    """
    removed: list[str] = []
    with _locked(folder, exclusive=True) as held:
        if not held:
            return removed
        mine, kept = set(paths), 0
        for other in _family_stores(folder, family, out):
            try:
                superseded = set(open_store(other).plan["paths"]) <= mine
            except (OSError, ValueError):
                superseded = False  # unreadable: kept or removed by its rank
            if not superseded and kept < KEEP_EARLIER:
                kept += 1
                continue
            try:
                remove_store(other)
            except OSError:
                continue  # another time: the features of this run are ready anyway
            removed.append(other)
    return removed


def cached_features(
    paths: Sequence[str],
    base: VGG,
    layer: str,
    prep: Preprocessing,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    verbose: bool | int | str = "auto",
    on_skip: Callable[[str, str], None] | None = None,
) -> Features:
    """Return `layer`'s output of every picture in `paths`, from the store or computed.

    Parameters
    ----------
    paths : sequence of str
        Absolute paths of pictures (no globs, no folders).
    base : vgg_np.VGG
        The frozen base; its layer `layer` is the cut.
    layer : str
        The last frozen layer (``block5_pool``, or ``block4_pool`` with one block
        unfrozen ...).
    prep : vgg_np.formats.Preprocessing
        How pictures are resized and preprocessed (the base's weights decide).
    cache_dir : str or os.PathLike, optional
        Where stores live (`cache_root` by default).
    batch_size : int, default 32
    verbose : {"auto", 0, 1}
        The feature pass's progress bar.
    on_skip : callable, optional
        Called as ``on_skip(path, reason)`` for each picture that cannot be used, when
        the pass meets it (earlier runs' failures are in `Features.failed`).

    Returns
    -------
    Features

    Examples
    --------
    >>> import shutil
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> base = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = str(resources.files("vgg_np") / "data" / "demo.png")
    >>> prep = Preprocessing("caffe", "keras", "an example")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = cached_features([demo], base, "block5_pool", prep, cache_dir=tmp, verbose=0)
    ...     again = cached_features([demo], base, "block5_pool", prep, cache_dir=tmp, verbose=0)
    ...     copy = shutil.copy(demo, tmp)  # one picture more: another store, seeded
    ...     grown = cached_features([demo, copy], base, "block5_pool", prep, cache_dir=tmp,
    ...                             verbose=0)
    ...     (first.result.written, again.result.written), again.take([0]).shape
    ((1, 0), (1, 1, 1, 512))
    >>> grown.result.written, grown.result.reused  # the first store, superseded, is removed
    (1, 1)
    """
    folder = os.fspath(cache_dir) if cache_dir is not None else cache_root()
    os.makedirs(folder, exist_ok=True)
    family = _family(base, layer, prep)
    out = os.path.join(folder, _store_name(family, paths))
    with _locked(folder):  # no store of this cache is removed until ours is open
        result = extract(
            list(paths), out, base, layer=layer, batch_size=batch_size, preprocess=prep.mode,
            resize=prep.resize, verbose=verbose, on_skip=on_skip,
            seed_from=_family_stores(folder, family, out),
        )  # fmt: skip
        store = open_store(out)
        entries = {entry["path"]: entry for entry in store.manifest()}
        array = store.read()  # mapped: a removal from now on does not change it
        with contextlib.suppress(OSError):  # a cache one cannot write is still read
            os.utime(store.manifest_dir)  # used now (`_family_stores` ranks by it)
    _prune(folder, family, out, paths)
    rows = np.array([entries[p]["row"] for p in paths], np.intp)
    failed = {
        i: entries[p].get("reason", "unusable")
        for i, p in enumerate(paths)
        if entries[p]["status"] != "ok"
    }
    digests = [entries[p]["digest"] for p in paths]
    return Features(array, rows, failed, digests, result)
