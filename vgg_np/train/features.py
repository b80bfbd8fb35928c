"""The frozen base's features of every picture, computed once in `vgg_np.extract`'s store.

A frozen base gives the same features every epoch, so they are computed once, through
the engine, by `vgg_np.extract.extract`, and kept in its resumable store: a run killed
during the pass loses at most a batch, a second run (another head, more epochs) reads
them back, and a picture that changed since is noticed by the store (its size,
modification time and SHA-256 are in the manifest) and computed again. The store's name
is a digest of what its rows depend on (the base's weights up to the cut, the cut, the
input size, the preprocessing, the list of pictures), so different runs share a store
exactly when they would compute the same rows.

Where stores live: `cache_dir`, by default ``$VGG_NP_CACHE``, else
``$XDG_CACHE_HOME/vgg_np/features``, else ``~/.cache/vgg_np/features``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vgg_np.extract import ExtractResult, extract, open_store, weights_digest
from vgg_np.formats import Preprocessing
from vgg_np.streams import input_size

if TYPE_CHECKING:
    from vgg_np.model import VGG

__all__ = ["Features", "cache_root", "cached_features"]


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
        What the pass did (``written`` 0 when every row came from the store).

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


def _store_name(base: VGG, layer: str, prep: Preprocessing, paths: Sequence[str]) -> str:
    size = input_size(base)
    key = json.dumps(
        [weights_digest(base, layer), layer, size, prep.mode, prep.resize, sorted(set(paths))]
    )
    return f"{layer}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"


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
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> base = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = str(resources.files("vgg_np") / "data" / "demo.png")
    >>> prep = Preprocessing("caffe", "keras", "an example")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = cached_features([demo], base, "block5_pool", prep, cache_dir=tmp, verbose=0)
    ...     again = cached_features([demo], base, "block5_pool", prep, cache_dir=tmp, verbose=0)
    ...     (first.result.written, again.result.written), again.take([0]).shape
    ((1, 0), (1, 1, 1, 512))
    """
    folder = os.fspath(cache_dir) if cache_dir is not None else cache_root()
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, _store_name(base, layer, prep, paths))
    result = extract(
        list(paths), out, base, layer=layer, batch_size=batch_size, preprocess=prep.mode,
        resize=prep.resize, verbose=verbose, on_skip=on_skip,
    )  # fmt: skip
    store = open_store(out)
    entries = {entry["path"]: entry for entry in store.manifest()}
    rows = np.array([entries[p]["row"] for p in paths], np.intp)
    failed = {
        i: entries[p].get("reason", "unusable")
        for i, p in enumerate(paths)
        if entries[p]["status"] != "ok"
    }
    digests = [entries[p]["digest"] for p in paths]
    return Features(store.read(), rows, failed, digests, result)
