"""The store on disk: the output array (``.npy`` or ``.zarr``), its manifest and journals.

`create_store` plans an extraction (`vgg_np.extract.plan`) and preallocates its output, or
reopens and verifies the same one; `Store` reads and writes rows and manifest entries, and
checks every written row against its checksum (`Store.verify`). The layout of the files is
in the `vgg_np.extract` docstring.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vgg_np._files import check_regular, open_regular
from vgg_np.extract.manifest import (
    _read_entries,
    _recheck_image,
    _row_digest,
    _write_atomically,
)
from vgg_np.extract.plan import (
    DEFAULT_PARTITION_SIZE,
    PLANS_FILE,
    Partition,
    _classifier,
    _convolutions_differ,
    _differences,
    _manifest_dir,
    _output_shape,
    _pin_hint,
    _plan,
    _read_plan,
    convolutions,
    plan_file,
    weights_digest,
)
from vgg_np.formats import Preprocessing

if TYPE_CHECKING:
    import zarr  # optional, not type-checked here: Any to the checker

    from vgg_np.model import VGG

__all__ = ["SUFFIXES", "Store", "create_store", "open_store"]

#: Upper bound on one Zarr chunk: a chunk holds a whole number of rows of one partition.
ZARR_CHUNK_BYTES = 16 << 20

#: Bytes of rows read at once when a store is checked (`Store.verify`).
CHECK_BYTES = 4 << 20

SUFFIXES = (".npy", ".zarr")
#: Beside ``OUT`` while `create_store` makes its array: renamed to ``OUT`` after the plan.
CREATING_SUFFIX = ".vgg-np-creating"


def _reserve(path: str, size: int, name: str) -> None:
    """Allocate the blocks of `path`'s `size` bytes now, or raise OSError naming `name`.

    A full disk then fails here, not in a memory-mapped write (SIGBUS). Filesystems that
    cannot reserve blocks are left sparse.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return  # macOS, Windows: no reservation (documented)
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        raise OSError(
            error.errno, f"cannot reserve the store's {size:,} bytes ({error.strerror})", name
        ) from None
    finally:
        os.close(fd)


def _npy_layout(out: str) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """Shape, dtype and data offset of the ``.npy`` header at `out`, None if unreadable."""
    with open_regular(out, "extraction store") as file:
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        try:
            shape, _, dtype = readers[np.lib.format.read_magic(file)](file)
        except (ValueError, KeyError, EOFError):
            return None
        return shape, dtype, file.tell()


class Store:
    """An extraction on disk: its plan, output array and manifest (`vgg_np.extract`).

    Made by `create_store` or `open_store`, not directly.

    Attributes
    ----------
    out : str
        The ``.npy`` file or ``.zarr`` directory.
    manifest_dir : str
        ``OUT.manifest`` beside it (``f.npy.manifest`` for ``f.npy``).
    plan : dict
        The content of ``plan.json``.
    partitions : list of Partition

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> from vgg_np.extract import run_partition
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = resources.files("vgg_np") / "data" / "demo.png"
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = create_store(
    ...         f"{tmp}/f.npy", [demo] * 3, model, layer="block1_pool", preprocess="caffe"
    ...     )  # seeded weights: no preprocessing is known, so it is given
    ...     _ = run_partition(store, store.pending()[0], model)
    ...     again = open_store(f"{tmp}/f.npy")  # in another process, say
    ...     again.layer, again.shape, again.pending(), bool(np.isfinite(again.read()).all())
    ('block1_pool', (1, 16, 16, 64), [], True)
    """

    def __init__(self, out: str, plan: dict):
        self.out, self.plan = out, plan
        self.manifest_dir = _manifest_dir(out)
        paths, size = plan["paths"], plan["partition_size"]
        self.partitions = [
            Partition(i, start, min(start + size, len(paths)), tuple(paths[start : start + size]))
            for i, start in enumerate(range(0, len(paths), size))
        ]
        self.prep = Preprocessing(**plan["preprocessing"])
        self.size = plan["size"]
        self._array: np.memmap | zarr.Array | None = None  # opened on first write, here
        self.recomputed = (0, 0)  # rows found damaged, images found changed (`verify`)

    def __reduce__(self) -> tuple[Callable[[str], Store], tuple[str]]:
        return open_store, (self.out,)  # a worker rereads the plan, never a copy of it

    @property
    def layer(self) -> str:
        """The layer whose output the rows hold (see the class example)."""
        layer: str = self.plan["layer"]  # checked when the plan was read
        return layer

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the whole output, ``(n_images, *row shape)`` (see the class example)."""
        return (len(self.plan["paths"]), *self.plan["row_shape"])

    def _path(self, partition: Partition, kind: str) -> str:
        return os.path.join(self.manifest_dir, f"{partition.name}.{kind}")

    def is_complete(self, partition: Partition) -> bool:
        """Whether the partition's rows and manifest are all written (class example)."""
        return os.path.exists(self._path(partition, "jsonl"))

    def pending(self) -> list[Partition]:
        """Return the partitions not complete yet, in order (see the class example)."""
        return [p for p in self.partitions if not self.is_complete(p)]

    def _entries(self, partition: Partition) -> tuple[dict[int, dict], bool]:
        """Return the partition's entries so far and whether it is complete."""
        if self.is_complete(partition):
            return _read_entries(self._path(partition, "jsonl"), partition, journal=False), True
        return _read_entries(self._path(partition, "journal.jsonl"), partition, journal=True), False

    def manifest(self) -> list[dict]:
        """Return every entry so far (complete partitions, journals) in row order.

        See `run_partition` for an example.
        """
        entries: dict[int, dict] = {}
        for partition in self.partitions:
            entries.update(self._entries(partition)[0])
        return [entries[row] for row in sorted(entries)]

    def _check_file(self) -> None:
        """Refuse a store file that is not the plan's array; restore a size that changed.

        Rows lost or added by a change of size are found by their checksums (`verify`).
        """
        if self.out.endswith(".zarr"):
            if not os.path.isdir(self.out):
                raise ValueError(f"{self.out} is not a Zarr store: delete it and its manifest")
            return
        size, expected = self._npy_sizes()
        if size != expected:
            os.truncate(self.out, expected)
            _reserve(self.out, expected, self.out)

    def _npy_sizes(self) -> tuple[int, int]:
        """Return the ``.npy`` file's size and the size its header says; refuse another array."""
        layout = _npy_layout(self.out)
        if layout is None or layout[:2] != (self.shape, np.dtype(self.plan["dtype"])):
            raise ValueError(
                f"{self.out} does not hold the {self.plan['dtype']} array of shape {self.shape} "
                f"its plan describes: delete it and {self.manifest_dir} to start over"
            )
        expected = layout[2] + math.prod(self.shape) * layout[1].itemsize
        return check_regular(self.out, "extraction store").st_size, expected

    def verify(self) -> tuple[int, int]:
        """Check every written row against its checksum and every image against its identity.

        The rows that do not match (a store truncated, overwritten or regrown; an image
        changed since) become pending again: their partition's entries that still hold
        are kept in its journal, and the next run computes the others. Called by
        `create_store` on every store it reopens.

        Returns
        -------
        tuple of int
            ``(damaged, changed)``: rows whose bytes no longer match their checksum, and
            rows whose image changed.

        Raises
        ------
        ValueError
            If the store file is not the plan's array, or a manifest or journal is
            damaged (one line naming the file).

        Examples
        --------
        See `create_store`.
        """
        self._check_file()
        read_rows = self._row_reader()
        damaged = changed = 0
        for partition in self.partitions:
            entries, complete = self._entries(partition)
            bad, moved = set(), set()  # rows whose bytes do not match; whose image changed
            refreshed = False  # an image touched or copied, its bytes the same
            for row, state, _, identity in self._check_rows(partition, entries, read_rows):
                if state == "damaged":
                    bad.add(row)
                elif state == "changed":
                    moved.add(row)
                elif identity is not None:  # recorded anew: not hashed again next time
                    entries[row] = {**entries[row], "image": identity}
                    refreshed = True
            damaged, changed = damaged + len(bad), changed + len(moved)
            if bad or moved or refreshed:
                self._rewrite(partition, entries, bad | moved, complete)
        return damaged, changed

    def _check_rows(
        self,
        partition: Partition,
        entries: dict[int, dict],
        read_rows: Callable[[int, int], NDArray],
        wanted: Container[int] | None = None,
    ) -> Iterator[tuple[int, str, NDArray | None, dict | None]]:
        """Yield ``(row, state, data, identity)`` for the partition's entries (`wanted` ones).

        `state`: ``"damaged"`` (the bytes read do not match the checksum; `data` None),
        ``"changed"`` (the image changed since) or ``"ok"``; `data` the bytes checked; `identity`
        the image's to record anew (`_recheck_image`). The one check of a written row:
        `verify` repairs by it, `vgg_np.extract.seeding` copies by it.
        """
        row_bytes = math.prod(self.plan["row_shape"]) * np.dtype(self.plan["dtype"]).itemsize
        step = max(1, CHECK_BYTES // max(1, row_bytes))  # rows read at once: bounded memory
        for start in range(partition.start, partition.stop, step):
            stop = min(start + step, partition.stop)
            rows = [
                r for r in range(start, stop) if r in entries and (wanted is None or r in wanted)
            ]
            if not rows:
                continue  # nothing to check here: not even read
            block = read_rows(start, rows[-1] + 1)  # (rows, *row shape)
            for row in rows:
                data = block[row - start] if row - start < len(block) else None  # cut short
                if data is None or _row_digest(data) != entries[row]["digest"]:
                    yield row, "damaged", None, None
                    continue
                is_changed, identity = _recheck_image(entries[row])
                yield row, "changed" if is_changed else "ok", data, identity

    def _row_reader(self) -> Callable[[int, int], NDArray]:
        """Return ``read(start, stop)`` giving rows ``[start, stop)`` as an array.

        A ``.npy`` is read with plain reads, not mapped: checking a large store keeps one
        block in memory, not every page of the file.
        """
        if self.out.endswith(".zarr"):
            array = self.read()
            return lambda start, stop: np.asarray(array[start:stop])
        layout = _npy_layout(self.out)
        assert layout is not None  # checked by _check_file just before
        _, dtype, offset = layout
        row_shape = tuple(self.plan["row_shape"])
        row_bytes = math.prod(row_shape) * dtype.itemsize

        def read(start: int, stop: int) -> NDArray:
            with open_regular(self.out, "extraction store") as file:
                file.seek(offset + start * row_bytes)
                data = file.read((stop - start) * row_bytes)
            return np.frombuffer(data, dtype).reshape(-1, *row_shape)  # (rows, *row shape)

        return read

    def _rewrite(
        self, partition: Partition, entries: dict[int, dict], stale: set[int], complete: bool
    ) -> None:
        """Keep a partition's entries but `stale` (the next run computes those rows).

        They go to its journal, or to its manifest if it is complete and nothing is stale.
        """
        kept = "".join(json.dumps(entries[r]) + "\n" for r in sorted(entries) if r not in stale)
        if complete and not stale:
            _write_atomically(self._path(partition, "jsonl"), kept)
            return
        _write_atomically(self._path(partition, "journal.jsonl"), kept)
        if complete:
            os.unlink(self._path(partition, "jsonl"))

    def read(self) -> np.ndarray | zarr.Array:
        """Return the output array, read-only: a memory map or a Zarr array (class example)."""
        if self.out.endswith(".zarr"):
            import zarr

            return zarr.open_array(self.out, mode="r")
        return np.load(self.out, mmap_mode="r")

    def check_model(self, model: VGG) -> None:
        """Raise ValueError unless `model` makes the outputs the plan was made with.

        See the class example (`run_partition` calls it).
        """
        plan = self.plan
        row_shape = _output_shape(model, plan["layer"], self.size)
        problems = []
        if list(row_shape) != plan["row_shape"] or model.dtype.name != plan["dtype"]:
            problems.append(
                f"{plan['layer']} gives {model.dtype.name} rows of shape {row_shape}, the store "
                f"holds {plan['dtype']} rows of shape {tuple(plan['row_shape'])}"
            )
        if plan["top"] and _classifier(model) is None:
            problems.append("top classes need a model with its classifier")
        last = None if plan["top"] else plan["layer"]  # --top reads the classifier's output
        if not problems and weights_digest(model, last) != plan["weights_digest"]:
            problems.append(
                "its weights (or its layers) are not the ones the store was started with"
            )
        if not problems:
            otherwise = _convolutions_differ(plan.get("convolutions"), convolutions(model))
            problems += [otherwise] if otherwise else []
        if problems:
            raise ValueError(
                f"this model does not fit {self.out}: "
                + "; ".join(problems)
                + _pin_hint(self.manifest_dir, problems, plan.get("convolutions"))
            )

    def _open(self) -> np.memmap | zarr.Array:
        if self._array is None:
            if self.out.endswith(".zarr"):
                import zarr

                self._array = zarr.open_array(self.out, mode="r+")
            else:
                # numpy would silently regrow a truncated file with zeros: refuse instead.
                size, expected = self._npy_sizes()
                if size != expected:
                    raise ValueError(
                        f"{self.out} holds {size:,} bytes where its header says {expected:,} "
                        "(truncated or replaced): run the extraction again to check and repair it"
                    )
                self._array = np.lib.format.open_memmap(self.out, mode="r+")
        return self._array

    def _write_rows(self, rows: list[int], block: NDArray) -> None:
        array = self._open()
        for _, group in itertools.groupby(enumerate(rows), lambda pair: pair[1] - pair[0]):
            run = list(group)  # consecutive rows: [(i, row), ...]
            array[run[0][1] : run[-1][1] + 1] = block[run[0][0] : run[-1][0] + 1]
        if isinstance(array, np.memmap):
            array.flush()  # msync: the rows are on disk before the journal says so


def create_store(
    out: str | os.PathLike,
    images: Iterable[str | os.PathLike],
    model: VGG,
    *,
    layer: str | None = None,
    top: int = 0,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    preprocess: str | None = None,
    resize: str | None = None,
) -> Store:
    """Plan an extraction and preallocate its output, or reopen the same one to resume.

    Parameters
    ----------
    out : str or os.PathLike
        ``.npy`` (written through `numpy.lib.format.open_memmap`) or ``.zarr`` (needs
        `zarr`); the manifest goes to ``OUT.manifest`` beside it.
    images : iterable of str or os.PathLike
        Files, directories and globs (`vgg_np.streams.image_paths`).
    model : vgg_np.VGG
    layer : str, optional
        Whose output to store; default the model's last layer.
    top : int, default 0
        Also name the `top` best classes of each image in its manifest entry.
    partition_size : int, default `DEFAULT_PARTITION_SIZE`
    preprocess, resize : str, optional
        Override what the weights' provenance says (`vgg_np.formats.choose_preprocessing`,
        which raises rather than guess for weights of unknown origin).

    Returns
    -------
    Store

    Raises
    ------
    ValueError
        On an unknown layer or suffix, no images, or an existing store made with other
        images, layer, preprocessing, partitions or weights (each difference named).
    FileExistsError
        If `out` exists but is not an extraction.
    ImportError
        For ``.zarr`` without `zarr`.

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = resources.files("vgg_np") / "data" / "demo.png"
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = create_store(
    ...         f"{tmp}/f.npy", [demo], model, layer="block5_pool", preprocess="caffe"
    ...     )
    ...     store.shape, [p.name for p in store.pending()]
    ((1, 1, 1, 512), ['part-00000'])
    """
    out = os.fspath(out)
    if not out.endswith(SUFFIXES):
        raise ValueError(f"`out` must end in .npy or .zarr, got {out!r}")
    plan = _plan(images, model, layer, top, partition_size, preprocess, resize)
    manifest_dir = _manifest_dir(out)
    plan_path = os.path.join(manifest_dir, "plan.json")
    if os.path.lexists(plan_path):
        return _reopen(out, plan)
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists and is not an extraction (no {plan_path})")
    # The array is made under another name and renamed into place after its plan: a kill
    # at any moment leaves no array that a second run would take for someone else's file.
    creating = out + CREATING_SUFFIX
    _remove(creating)  # the start of a run killed before its plan was written
    _preallocate(out, creating, plan, partition_size)
    os.makedirs(manifest_dir, exist_ok=True)
    pinned = plan_file(model)
    if pinned is not None:
        _write_atomically(os.path.join(manifest_dir, PLANS_FILE), pinned)
    _write_atomically(plan_path, json.dumps(plan, indent=1) + "\n")
    os.replace(creating, out)
    return Store(out, plan)


def _reopen(out: str, plan: dict) -> Store:
    """Reopen the store at `out` planned as `plan`, verified; refuse one planned otherwise."""
    manifest_dir = _manifest_dir(out)
    plan_path = os.path.join(manifest_dir, "plan.json")
    creating = out + CREATING_SUFFIX
    if not os.path.exists(out) and os.path.exists(creating):
        os.replace(creating, out)  # a run killed between the plan and the rename
    if not os.path.exists(out):
        raise ValueError(
            f"{plan_path} exists but {out} does not: delete {manifest_dir} to start over"
        )
    old = _read_plan(out)
    differences = _differences(old, plan)
    if differences:
        raise ValueError(
            f"{out} was started with other settings: {'; '.join(differences)}; "
            f"choose another output, or delete {out} and {manifest_dir} to start over"
            + _pin_hint(manifest_dir, differences, old.get("convolutions"))
        )
    store = Store(out, old)
    store.recomputed = store.verify()
    return store


def _preallocate(out: str, creating: str, plan: dict, partition_size: int) -> None:
    """Make the store's array, every row unwritten, at `creating` (`out`'s name says its kind)."""
    shape = (len(plan["paths"]), *plan["row_shape"])
    if out.endswith(".zarr"):
        try:
            import zarr
        except ImportError:
            raise ImportError(
                f"{out}: writing Zarr needs the optional `zarr` package (pip install zarr)"
            ) from None
        # Whole rows per chunk, and a whole number of chunks per partition: partitions
        # never share a chunk, so their writers never touch the same file.
        row_bytes = math.prod(plan["row_shape"]) * np.dtype(plan["dtype"]).itemsize
        fit = max(1, ZARR_CHUNK_BYTES // row_bytes)
        rows = max(d for d in range(1, partition_size + 1) if partition_size % d == 0 and d <= fit)
        zarr.open_array(
            creating, mode="w-", shape=shape, chunks=(rows, *plan["row_shape"]),
            dtype=plan["dtype"], fill_value=np.nan,
        )  # fmt: skip
    else:
        np.lib.format.open_memmap(creating, mode="w+", dtype=plan["dtype"], shape=shape).flush()
        try:
            _reserve(creating, os.path.getsize(creating), out)
        except OSError:
            os.remove(creating)  # nothing half made: the same command works once there is room
            raise


def _remove(path: str) -> None:
    """Remove a file or a folder (a Zarr array) if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def open_store(out: str | os.PathLike) -> Store:
    """Open an extraction made by `create_store` (in a worker, say) from its plan.

    Raises
    ------
    FileNotFoundError
        If `out` has no plan.

    Examples
    --------
    See `Store`.
    >>> open_store("nowhere.npy")
    Traceback (most recent call last):
    ...
    FileNotFoundError: [Errno 2] No such file or directory: 'nowhere.npy.manifest/plan.json'
    """
    return Store(os.fspath(out), _read_plan(os.fspath(out)))
