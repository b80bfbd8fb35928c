"""Earlier stores: seeding a new store from them (`seed_store`), removing them (`remove_store`).

A store is named by everything its rows depend on, its list of images included; a list
that grew by one image is another store. `seed_store` fills the new store's pending rows from
earlier stores (its *donors*) wherever that gives the very bytes a pass would compute,
and leaves the others to `run_partition`, as a resume would:

- a donor counts only if its plan computes the same rows (`plan._row_differences`:
  layer, input size, dtype, row shape, preprocessing, the weights' digest, and the
  convolutions, which a donor must have recorded); its name proves nothing;
- a row is copied only if the donor's manifest (or journal: a pass killed midway keeps
  the rows it journaled) vouches for it with status ``ok``, its bytes as read match the
  entry's checksum and its image is unchanged since (`Store._check_rows`, the very check
  `Store.verify` repairs a store with). The bytes checked are the bytes copied;
- the donor is only read: a file whose size is not its header's, a damaged plan, manifest
  or journal costs its rows (or that partition's), never an error, and is left as found;
- the copied rows are written, flushed, then journaled with their entries (the donor's,
  renumbered): a kill while seeding leaves rows that the next run seeds or computes again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from vgg_np.extract.manifest import _journal_entries
from vgg_np.extract.plan import _manifest_dir, _row_differences
from vgg_np.extract.store import CHECK_BYTES, CREATING_SUFFIX, Store, _remove, open_store

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["remove_store", "seed_store"]


def seed_store(store: Store, donors: Iterable[str | os.PathLike]) -> int:
    """Copy into `store` the rows of its pending images that `donors` hold; return how many.

    Parameters
    ----------
    store : Store
        The store to fill (made by `create_store`); only its rows without an entry yet
        are written.
    donors : iterable of str or os.PathLike
        Earlier stores (``.npy`` or ``.zarr``), tried in this order: an image's row comes
        from the first that holds it, checked (module docstring). One that is missing,
        damaged or planned otherwise gives nothing.

    Returns
    -------
    int
        Rows copied (journaled in `store`: `run_partition` computes only the others).

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> from vgg_np.extract import create_store, extract
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = str(resources.files("vgg_np") / "data" / "demo.png")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = extract([demo], f"{tmp}/one.npy", model, preprocess="caffe", verbose=0)
    ...     store = create_store(f"{tmp}/two.npy", [demo, f"{tmp}/gone.png"], model,
    ...                          preprocess="caffe")
    ...     seed_store(store, [f"{tmp}/one.npy", f"{tmp}/nowhere.npy"]), len(store.manifest())
    (1, 1)
    """
    wanted = _wanted(store)
    taken = 0
    for donor in donors:
        if not wanted:
            break
        taken += _seed_from(store, os.fspath(donor), wanted)
    return taken


def _wanted(store: Store) -> dict[str, int]:
    """Path -> row of the images whose row `store` has no entry for yet."""
    wanted = {}
    for partition in store.pending():
        entries = store._entries(partition)[0]
        for row, path in enumerate(partition.paths, partition.start):
            if row not in entries:
                wanted[path] = row
    return wanted


def _donor(out: str, store: Store) -> tuple[Store, Callable[[int, int], NDArray]] | None:
    """Return the store at `out` and its row reader if its rows are `store`'s; else None.

    Read only: nothing of the donor is repaired or changed.
    """
    if os.path.abspath(out) == os.path.abspath(store.out):
        return None
    try:
        donor = open_store(out)
        if donor.plan.get("convolutions") is None or _row_differences(donor.plan, store.plan):
            return None  # other rows, or unknown how its convolutions ran
        if not donor.out.endswith(".zarr"):
            size, expected = donor._npy_sizes()  # refuses another array
            if size != expected:
                return None  # truncated or regrown since: its owner's verify repairs it
        elif not os.path.isdir(donor.out):
            return None
        return donor, donor._row_reader()
    except (OSError, ValueError):
        return None  # no store there, or a damaged one: nothing to trust


def _seed_from(store: Store, out: str, wanted: dict[str, int]) -> int:
    """Copy the rows of `wanted` images the store at `out` holds, checked; drop them from it.

    Written in blocks of about `CHECK_BYTES`: memory stays bounded whatever the rows' size.
    """
    found = _donor(out, store)
    if found is None:
        return 0
    row_bytes = math.prod(store.plan["row_shape"]) * np.dtype(store.plan["dtype"]).itemsize
    copies: dict[int, tuple[NDArray, dict]] = {}  # row of `store` -> its bytes, entry
    taken = 0
    for target, data, entry in _checked_copies(*found, wanted):
        copies[target] = data, entry
        if len(copies) * row_bytes >= CHECK_BYTES:
            taken += _flush(store, copies, wanted)
    return taken + _flush(store, copies, wanted)


def _checked_copies(
    donor: Store, read_rows: Callable[[int, int], NDArray], wanted: dict[str, int]
) -> Iterator[tuple[int, NDArray, dict]]:
    """Yield ``(row of the new store, bytes, entry)`` for each row of `donor` that may be copied."""
    seen: set[str] = set()  # a plan naming a picture twice: its first row is enough
    for partition in donor.partitions:
        mine = {r for r, p in enumerate(partition.paths, partition.start) if p in wanted}
        if not mine:
            continue
        try:
            entries = donor._entries(partition)[0]
            for row, state, data, identity in donor._check_rows(
                partition, entries, read_rows, mine
            ):
                entry = entries[row]
                if state != "ok" or entry["status"] != "ok" or data is None:
                    continue  # a failed picture is tried again, as a fresh pass would
                if not isinstance(entry["image"], dict):
                    continue  # no identity recorded: nothing says the image is the same
                if entry["path"] in seen:
                    continue
                seen.add(entry["path"])
                target = wanted[entry["path"]]
                image = identity if identity is not None else entry["image"]
                yield target, np.array(data), {**entry, "row": target, "image": image}
        except (OSError, ValueError):
            continue  # this partition's manifest or rows cannot be read: none of the others


def _flush(store: Store, copies: dict[int, tuple[NDArray, dict]], wanted: dict[str, int]) -> int:
    """Write `copies` into `store` (`_write`), take them off `wanted`; return how many."""
    _write(store, copies)
    for _, entry in copies.values():
        wanted.pop(entry["path"], None)
    count = len(copies)
    copies.clear()
    return count


def _write(store: Store, copies: dict[int, tuple[NDArray, dict]]) -> None:
    """Write copied rows into `store`, then journal them, partition by partition."""
    for partition in store.partitions:
        rows = [r for r in range(partition.start, partition.stop) if r in copies]
        if not rows:
            continue
        journal = store._path(partition, "journal.jsonl")
        journaled = _journal_entries(journal, partition)  # a line cut by a kill dropped first
        rows = [r for r in rows if r not in journaled]  # a concurrent run was quicker
        if not rows:
            continue
        store._write_rows(rows, np.stack([copies[r][0] for r in rows]))  # flushed
        with open(journal, "a") as log:
            log.write("".join(json.dumps(copies[r][1]) + "\n" for r in rows))
            log.flush()  # only after the rows are flushed
            os.fsync(log.fileno())


def remove_store(out: str | os.PathLike) -> None:
    """Remove the store at `out` (its array and manifest) so that a kill never leaves half of it.

    The array is first renamed to the name `create_store` makes arrays under, then the
    manifest goes, its plan last: killed before the plan went, the next `create_store`
    reopens the whole array and recomputes the rows whose entries went; after, it starts
    afresh. A process that maps the array keeps reading it (POSIX).

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> from vgg_np.extract import extract
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = str(resources.files("vgg_np") / "data" / "demo.png")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = extract([demo], f"{tmp}/f.npy", model, preprocess="caffe", verbose=0)
    ...     remove_store(f"{tmp}/f.npy")
    ...     os.listdir(tmp)
    []
    """
    out = os.fspath(out)
    creating = out + CREATING_SUFFIX
    if os.path.lexists(out):
        os.replace(out, creating)
    manifest_dir = _manifest_dir(out)
    if os.path.isdir(manifest_dir) and not os.path.islink(manifest_dir):
        names = sorted(os.listdir(manifest_dir), key=lambda name: name == "plan.json")
        for name in names:  # the plan last
            _remove(os.path.join(manifest_dir, name))
        os.rmdir(manifest_dir)
    _remove(creating)
