r"""Features (or class scores) of many image files, written to disk, resumable, mappable.

An extraction is three steps, kept apart so that a distributed runner (Dask) can map the
middle one over a cluster and get the store a local run writes, byte for byte:

1. **Plan** (`create_store`, once, in one process): list the images, sort them (absolute
   paths, duplicates dropped), cut the rows into fixed partitions (`Partition`: rows
   ``[start, stop)``), preallocate the output and write the plan.
2. **Partitions** (`run_partition`, anywhere, in any order, in parallel): decode one
   partition's images, run the model, write rows ``[start, stop)`` of the output and the
   partition's manifest.
3. **Local run** (`extract`): plan (or reopen), then run the partitions that are not
   complete, in order, with a progress bar.

The store on disk, for ``-o OUT.npy`` (or ``OUT.zarr`` when `zarr` is installed):

- ``OUT.npy``: one row per image, shape ``(n_images, *layer output)``, model dtype,
  created by `numpy.lib.format.open_memmap` and written region by region; or ``OUT.zarr``,
  a Zarr array whose chunks never straddle two partitions. The row of an image that
  could not be used is NaN; rows not yet written are 0 (``.npy``) or NaN (``.zarr``):
  only the manifest says which rows are valid.
- ``OUT.manifest/plan.json``: the paths, layer, row shape, dtype, preprocessing,
  partition size and a digest of the weights. Reopening with different images, layer,
  preprocessing or weights is refused, never mixed.
- ``OUT.manifest/part-NNNNN.jsonl``: partition NNNNN's entries, one JSON object per row
  in row order: ``{"row", "path", "status": "ok"|"error", "reason"?, "top"?, "image",
  "digest"}``, where ``image`` is the file's size, modification time and SHA-256 when its
  row was computed (`vgg_np.streams.file_identity`; null if it could not be read) and
  ``digest`` a checksum of the row's bytes. Its presence marks the partition complete.
- ``OUT.manifest/part-NNNNN.journal.jsonl``: while a partition runs, its entries are
  appended batch by batch, each batch after its rows are written and flushed, so a
  killed run loses at most the batch in flight (a Ctrl-C waits until a batch being
  written is journaled) and a rerun computes only the rows the journal does not hold.

Reopening a store (`create_store`, hence every rerun) verifies it (`Store.verify`): a
``.npy`` whose size changed is restored to its size, and every row whose bytes no longer
match its checksum, or whose image changed, is made pending again and recomputed. Paths
are written to JSON with Python's escapes (a name that is not UTF-8 as ``\udcXX``) and read
back to the same bytes.

Contract of `run_partition` (what a distributed runner may rely on):

- it writes only rows ``[partition.start, partition.stop)`` and files named after
  ``partition.index``: partitions may run concurrently in different processes (and
  machines, for Zarr or a ``.npy`` on a shared filesystem with coherent memory maps);
- it is idempotent: the rows and the ``part-NNNNN.jsonl`` it writes depend only on the
  plan, the images and the weights (the model's results do not depend on batch
  composition), so running a partition twice, even concurrently, writes the same bytes;
  a complete partition is not run again;
- ``part-NNNNN.jsonl`` appears (by an atomic rename) only after every row of the
  partition is written and flushed; a partition without it is incomplete, whatever its
  rows hold;
- the model must be the one the plan was made with: it is checked (`Store.check_model`:
  layer, output shape, dtype and the digest of every weight) before anything is written.

`Store` pickles as its path (a worker reopens it), and `Partition` carries its own paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np._files import atomic_write, check_regular, open_regular, read_text
from vgg_np.formats import Preprocessing, choose_preprocessing
from vgg_np.preprocess import decode_predictions, imagenet_classes
from vgg_np.progress import Progress, show_progress
from vgg_np.streams import decode_batches, file_identity, image_paths, input_size

__all__ = [
    "ExtractResult",
    "Partition",
    "PartitionResult",
    "Store",
    "create_store",
    "extract",
    "interrupted_resumes",
    "open_store",
    "run_partition",
    "top_classes",
    "weights_digest",
]

PLAN_VERSION = "vgg_np extract 2"

#: Largest plan read back (it lists every path: a million of them fit in ~200 MB).
MAX_PLAN_BYTES = 1 << 30

#: Largest partition manifest or journal read back (256 rows with their top classes).
MAX_MANIFEST_BYTES = 256 << 20

#: The keys of a plan, each with the type its value must have.
PLAN_KEYS = {
    "version": str, "layer": str, "row_shape": list, "dtype": str, "top": int,
    "partition_size": int, "preprocessing": dict, "size": (int, list), "weights_digest": str,
    "paths": list,
}  # fmt: skip

#: Rows per partition: small enough that a partition is a few minutes of a 2-core
#: machine's work at full VGG16 (~3 images/s), large enough that a cluster's per-task
#: overhead (~ms) is lost in the noise.
DEFAULT_PARTITION_SIZE = 256

#: Upper bound on one Zarr chunk: a chunk holds a whole number of rows of one partition.
ZARR_CHUNK_BYTES = 16 << 20

#: Bytes of rows read at once when a store is checked (`Store.verify`).
CHECK_BYTES = 4 << 20

SUFFIXES = (".npy", ".zarr")


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of an extraction and the images they come from.

    Examples
    --------
    >>> Partition(2, 512, 515, ("a.jpg", "b.jpg", "c.jpg")).name
    'part-00002'
    """

    index: int
    start: int
    stop: int
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        """File stem of the partition's manifest (see the class example)."""
        return f"part-{self.index:05d}"


def weights_digest(model, layer: str | None = None) -> str:
    """Return a sha256 over `model`'s tensors (names, dtypes, shapes, bytes) and its layers.

    Every tensor each layer holds counts: kernels and biases, and a batch norm's gamma,
    beta and running statistics. So does the layer table (kinds, units, activations,
    epsilons) and the data format, with which the same tensors give other numbers: up to
    `layer` (a store's rows do not depend on what comes after it), else all of it.

    Examples
    --------
    >>> from vgg_np import VGG11
    >>> a, b = VGG11(include_top=False, seed=0), VGG11(include_top=False, seed=1)
    >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
    (True, False)
    """
    digest = hashlib.sha256()
    names = [each.name for each in model.layers]
    stop = names.index(layer) + 1 if layer in names else len(names)
    table = [dataclasses.astuple(each) for each in model.layers[:stop]]
    digest.update(repr((model.data_format, table)).encode())
    for name, tensors in model.weights.items():
        for array in tensors:
            digest.update(f"{name} {array.dtype.str} {array.shape};".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def top_classes(
    scores: NDArray, top: int, *, class_names: Sequence[str] | None = None
) -> list[tuple[str, str, float]]:
    """Name the `top` best classes of one row of scores: ImageNet names for 1000 classes.

    Returns ``(wnid, label, score)``; without 1000 classes the wnid is the class index
    and the label ``"class i"``. `class_names` (a head of one's own: ``--labels``, or
    ``class i`` for any number of classes) name them instead.

    Examples
    --------
    >>> top_classes(np.array([0.1, 0.7, 0.2]), 2)
    [('1', 'class 1', 0.7), ('2', 'class 2', 0.2)]
    >>> top_classes(np.array([0.1, 0.7, 0.2]), 1, class_names=["cat", "dog", "bird"])
    [('1', 'dog', 0.7)]
    """
    top = min(top, scores.shape[0])
    if class_names is not None:
        return decode_predictions(scores[None], top=top, class_names=class_names)[0]
    if scores.shape[0] == len(imagenet_classes()):
        return decode_predictions(scores[None], top=top)[0]
    order = np.argsort(-scores, kind="stable")[:top]  # lower index first among ties
    return [(str(i), f"class {i}", float(scores[i])) for i in order]


def _output_shape(model, layer: str, size: int | tuple[int, int]) -> tuple[int, ...]:
    """Per-image output shape of `layer` for a `size` input, in the model's layout."""
    h, w = (size, size) if isinstance(size, int) else size  # streams.input_size
    return model.network.output_shape(layer, (h, w, 3))  # the one shape walk


def _classifier(model) -> str | None:
    """Return the layer whose output ranks classes (``predictions``, a head's last), or None."""
    return None if model.output_kind == "features" else model.layers[-1].name


def _manifest_dir(out: str) -> str:
    return out + ".manifest"  # the whole name: f.npy and f.zarr never share a manifest


def _write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: all of it or nothing."""
    with atomic_write(path) as file:
        file.write(text.encode())
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename makes it count


def _row_digest(row: NDArray) -> str:
    """Return a checksum of one stored row's bytes: 64 bits of BLAKE2b, in hex."""
    return hashlib.blake2b(np.ascontiguousarray(row).data, digest_size=8).hexdigest()


def _damaged(path: str, why: str) -> ValueError:
    return ValueError(
        f"{path} is damaged ({why}): delete it to recompute its partition, or delete the "
        "whole store to start over"
    )


def _read_entries(path: str, partition: Partition, *, journal: bool) -> dict[int, dict]:
    """Row -> entry of a partition's manifest or journal, each entry checked.

    A journal's last line cut short by a kill is ignored; anything else that is not an
    entry of this partition (bad JSON, a row outside it, another path, no checksum), or a
    manifest without every row, is refused in one line naming the file.
    """
    try:
        text = read_text(path, MAX_MANIFEST_BYTES, "extraction manifest")
    except FileNotFoundError:
        return {}
    lines = text.split("\n")
    last = len(lines) - 1  # "" when the file ends in a newline
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line and number > last:
            break
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if journal and number > last:
                break  # the last line of a journal whose writer was killed
            raise _damaged(path, f"line {number} is not JSON") from None
        row = entry.get("row") if isinstance(entry, dict) else None
        if not (
            isinstance(row, int)
            and partition.start <= row < partition.stop
            and entry.get("path") == partition.paths[row - partition.start]
            and entry.get("status") in ("ok", "error")
            and isinstance(entry.get("digest"), str)
            and (entry.get("image") is None or isinstance(entry["image"], dict))
        ):
            raise _damaged(path, f"line {number} is not an entry of {partition.name}")
        entries[row] = entry
    if not journal and len(entries) != partition.stop - partition.start:
        count = partition.stop - partition.start
        raise _damaged(path, f"{len(entries)} entries for the {count} rows of {partition.name}")
    return entries


def _ends_cut(path: str) -> bool:
    """Whether the file at `path` ends in a line without its newline (a write cut short)."""
    try:
        with open_regular(path, "extraction journal") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return False
            file.seek(-1, os.SEEK_END)
            return file.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _read_plan(out: str) -> dict:
    """Read the plan of the store at `out`: one line naming the file if it is not one."""
    path = os.path.join(_manifest_dir(out), "plan.json")
    text = read_text(path, MAX_PLAN_BYTES, "extraction plan")
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is damaged ({'empty' if not text.strip() else error}): delete "
            f"{_manifest_dir(out)} and {out} to start over"
        ) from None
    if isinstance(plan, dict) and plan.get("version") not in (None, PLAN_VERSION):
        raise ValueError(
            f"{path} was written by another version of vgg_np ({plan['version']!r}, this one "
            f"reads {PLAN_VERSION!r}): delete {_manifest_dir(out)} and {out} to start over"
        )
    wrong = [k for k, kind in PLAN_KEYS.items() if not isinstance(plan.get(k), kind)]
    if isinstance(plan, dict) and not wrong and not all(isinstance(p, str) for p in plan["paths"]):
        wrong = ["paths"]
    if not isinstance(plan, dict) or wrong:
        what = "not a JSON object" if not isinstance(plan, dict) else f"bad {', '.join(wrong)}"
        raise ValueError(
            f"{path} is damaged ({what}): delete {_manifest_dir(out)} and {out} to start over"
        )
    return plan


def _reserve(path: str, size: int) -> None:
    """Allocate the blocks of `path`'s `size` bytes now, or raise OSError naming `path`.

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
            error.errno, f"cannot reserve the store's {size:,} bytes ({error.strerror})", path
        ) from None
    finally:
        os.close(fd)


def _recheck_image(entry: dict) -> tuple[bool, dict | None]:
    """Tell whether an entry's image changed since its row was computed, and its new identity.

    The new identity (to be recorded) is given when only the size or time changed. Size
    and modification time alike: the same file. Otherwise its content hash decides
    (a file only touched, or copied with its bytes, keeps its row).
    """
    recorded = entry.get("image")
    try:
        status = os.stat(entry["path"])
    except OSError:
        return recorded is not None, None  # gone since (or still missing: unchanged)
    if recorded is None:
        return True, None  # missing or unreadable then, there now
    if (status.st_size, status.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
        return False, None
    now = file_identity(entry["path"])
    if now is None or now["sha256"] != recorded.get("sha256"):
        return True, None
    return False, now


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


@contextlib.contextmanager
def _interrupt_after():
    """Hold a Ctrl-C back until the block is done (rows written and journaled together).

    Only in the main thread, where Python receives signals.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


class Store:
    """An extraction on disk: its plan, output array and manifest (module docstring).

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
        self._array = None  # opened on first write, in the process that writes
        self.recomputed = (0, 0)  # rows found damaged, images found changed (`verify`)

    def __reduce__(self):
        return open_store, (self.out,)  # a worker rereads the plan, never a copy of it

    @property
    def layer(self) -> str:
        """The layer whose output the rows hold (see the class example)."""
        return self.plan["layer"]

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
            _reserve(self.out, expected)

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
        row_bytes = math.prod(self.plan["row_shape"]) * np.dtype(self.plan["dtype"]).itemsize
        step = max(1, CHECK_BYTES // max(1, row_bytes))  # rows read at once: bounded memory
        damaged = changed = 0
        for partition in self.partitions:
            entries, complete = self._entries(partition)
            bad, moved = set(), set()  # rows whose bytes do not match; whose image changed
            refreshed = False  # an image touched or copied, its bytes the same
            for start in range(partition.start, partition.stop, step):
                block = read_rows(start, min(start + step, partition.stop))
                for row in set(range(start, start + len(block))) & set(entries):
                    if _row_digest(block[row - start]) != entries[row]["digest"]:
                        bad.add(row)
                        continue
                    is_changed, identity = _recheck_image(entries[row])
                    if is_changed:
                        moved.add(row)
                    elif identity is not None:  # recorded anew: not hashed again next time
                        entries[row] = {**entries[row], "image": identity}
                        refreshed = True
            damaged, changed = damaged + len(bad), changed + len(moved)
            if bad or moved or refreshed:
                self._rewrite(partition, entries, bad | moved, complete)
        return damaged, changed

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

    def _rewrite(self, partition: Partition, entries: dict, stale: set, complete: bool):
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

    def read(self):
        """Return the output array, read-only: a memory map or a Zarr array (class example)."""
        if self.out.endswith(".zarr"):
            import zarr

            return zarr.open_array(self.out, mode="r")
        return np.load(self.out, mmap_mode="r")

    def check_model(self, model) -> None:
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
        if problems:
            raise ValueError(f"this model does not fit {self.out}: " + "; ".join(problems))

    def _open(self):
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


def _plan(images, model, layer, top, partition_size, preprocess, resize) -> dict:
    paths = sorted({os.path.abspath(p) for p in image_paths(images)})
    if not paths:
        raise ValueError(f"no images found in {' '.join(map(os.fspath, images))}")
    if not isinstance(partition_size, int) or partition_size < 1:
        raise ValueError(f"`partition_size` must be a positive int, got {partition_size!r}")
    if not isinstance(top, int) or top < 0:
        raise ValueError(f"`top` must be an int >= 0, got {top!r}")
    layer = layer or model.layers[-1].name
    size = input_size(model)
    return {
        "version": PLAN_VERSION,
        "layer": layer,
        "row_shape": list(_output_shape(model, layer, size)),
        "dtype": model.dtype.name,
        "top": top,
        "partition_size": partition_size,
        "preprocessing": asdict(
            choose_preprocessing(model.weights_provenance, preprocess=preprocess, resize=resize)
        ),
        "size": size if isinstance(size, int) else list(size),  # as JSON reads it back
        "model": repr(model),
        "weights_format": model.weights_format,
        "weights_digest": weights_digest(model, None if top else layer),
        "paths": paths,
    }


def _differences(old: dict, new: dict) -> list[str]:
    differences = []
    for key in ("layer", "top", "partition_size", "size", "dtype"):
        if old[key] != new[key]:
            differences.append(f"{key} {old[key]!r} (now {new[key]!r})")
    for key in ("mode", "resize"):  # not the reason: the same choice may be put otherwise
        if old["preprocessing"][key] != new["preprocessing"][key]:
            was, now = old["preprocessing"][key], new["preprocessing"][key]
            differences.append(f"preprocessing {key} {was!r} (now {now!r})")
    if old["weights_digest"] != new["weights_digest"]:
        differences.append("other weights or layers")
    added = len(set(new["paths"]) - set(old["paths"]))
    removed = len(set(old["paths"]) - set(new["paths"]))
    if added or removed:
        differences.append(f"other images ({added} added, {removed} removed)")
    return differences


def create_store(
    out: str | os.PathLike,
    images: Iterable[str | os.PathLike],
    model,
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
            )
        store = Store(out, old)
        store.recomputed = store.verify()
        return store
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists and is not an extraction (no {plan_path})")
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
            out, mode="w-", shape=shape, chunks=(rows, *plan["row_shape"]),
            dtype=plan["dtype"], fill_value=np.nan,
        )  # fmt: skip
    else:
        np.lib.format.open_memmap(out, mode="w+", dtype=plan["dtype"], shape=shape).flush()
        try:
            _reserve(out, os.path.getsize(out))
        except OSError:
            os.remove(out)  # nothing half made: the same command works once there is room
            raise
    os.makedirs(manifest_dir, exist_ok=True)
    _write_atomically(plan_path, json.dumps(plan, indent=1) + "\n")
    return Store(out, plan)


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


@dataclass
class PartitionResult:
    """What `run_partition` did: rows written now, of which failed, rows already done.

    Examples
    --------
    >>> PartitionResult(3, written=250, failed=2, already_done=6)
    PartitionResult(index=3, written=250, failed=2, already_done=6)
    """

    index: int
    written: int = 0
    failed: int = 0
    already_done: int = 0


def run_partition(
    store: Store,
    partition: Partition,
    model,
    *,
    batch_size: int = 32,
    workers: int = 2,
    on_batch: Callable[[int, list[tuple[str, str]]], None] | None = None,
) -> PartitionResult:
    """Compute and write one partition's rows and manifest (contract: module docstring).

    Parameters
    ----------
    store : Store
    partition : Partition
        One of ``store.partitions``.
    model : vgg_np.VGG
        The model the store was planned with (checked).
    batch_size : int, default 32
        Images per forward pass, and per journal step.
    workers : int, default 2
        Decoding threads (`vgg_np.streams.decode_batches`).
    on_batch : callable, optional
        Called after each batch as ``on_batch(n_rows, [(path, reason), ...])``.

    Returns
    -------
    PartitionResult

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> demo = resources.files("vgg_np") / "data" / "demo.png"
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     images = [demo, f"{tmp}/gone.png"]
    ...     store = create_store(f"{tmp}/f.npy", images, model, preprocess="caffe")
    ...     run_partition(store, store.partitions[0], model)
    ...     sorted((e["path"][-8:], e["status"]) for e in store.manifest()), store.pending()
    PartitionResult(index=0, written=2, failed=1, already_done=0)
    ([('demo.png', 'ok'), ('gone.png', 'error')], [])
    """
    result = PartitionResult(partition.index)
    if store.is_complete(partition):
        result.already_done = partition.stop - partition.start
        return result
    store.check_model(model)
    journal = store._path(partition, "journal.jsonl")
    entries = _read_entries(journal, partition, journal=True)
    if _ends_cut(journal):  # a line cut by a kill: appending after it would damage it
        _write_atomically(journal, "".join(json.dumps(entries[r]) + "\n" for r in entries))
    todo = [r for r in range(partition.start, partition.stop) if r not in entries]
    result.already_done = partition.stop - partition.start - len(todo)
    if todo:
        paths = [partition.paths[r - partition.start] for r in todo]
        batches = decode_batches(
            paths, store.prep, size=store.size, batch_size=batch_size, workers=workers,
            identify=True,
        )  # fmt: skip
        with open(journal, "a") as log:
            for decoded in batches:
                rows, todo = todo[: len(decoded.paths)], todo[len(decoded.paths) :]
                block, batch_entries = _compute(store, model, decoded, rows)
                with _interrupt_after():  # a Ctrl-C here waits for the journal line
                    store._write_rows(rows, block)
                    log.write("".join(json.dumps(e) + "\n" for e in batch_entries))
                    log.flush()  # only after the rows are flushed
                    os.fsync(log.fileno())
                entries.update(zip(rows, batch_entries, strict=True))
                result.written += len(decoded.paths)
                result.failed += len(decoded.errors)
                if on_batch is not None:
                    skipped = [(decoded.paths[i], reason) for i, reason in decoded.errors.items()]
                    on_batch(len(decoded.paths), skipped)
    text = "".join(json.dumps(entries[r]) + "\n" for r in range(partition.start, partition.stop))
    _write_atomically(store._path(partition, "jsonl"), text)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    return result


def _compute(store: Store, model, decoded, rows: list[int]) -> tuple[NDArray, list[dict]]:
    """One decoded batch's rows (NaN for a bad image) and manifest entries."""
    dtype, row_shape = np.dtype(store.plan["dtype"]), tuple(store.plan["row_shape"])
    block = np.full((len(decoded.paths), *row_shape), np.nan, dtype)
    classifier = _classifier(model)
    if decoded.ok:
        wanted = [store.layer] + ([classifier] if store.plan["top"] else [])
        batch = decoded.batch  # (N, H, W, C) as decoded
        if model.data_format == "channels_first":  # e.g. a torch ONNX graph's
            batch = batch.transpose(0, 3, 1, 2)  # (N, C, H, W)
        outputs = model.activations(batch, layers=wanted)
        block[decoded.ok] = outputs[store.layer]
    entries = []
    for i, path in enumerate(decoded.paths):
        entry = {"row": rows[i], "path": path}
        if i in decoded.errors:
            entry.update(status="error", reason=decoded.errors[i])
        else:
            entry["status"] = "ok"
            if store.plan["top"]:
                scores = outputs[classifier][decoded.ok.index(i)]
                entry["top"] = top_classes(scores, store.plan["top"])
        entry.update(image=decoded.identities[i], digest=_row_digest(block[i]))
        entries.append(entry)
    return block, entries


@contextlib.contextmanager
def interrupted_resumes(store: Store):
    """Turn a Ctrl-C into a `KeyboardInterrupt` saying what is kept and that a rerun resumes.

    Examples
    --------
    >>> with interrupted_resumes(store):  # doctest: +SKIP
    ...     raise KeyboardInterrupt
    Traceback (most recent call last):
    ...
    KeyboardInterrupt: the rows of 64 of 300 images are kept in f.npy: run the same command...
    """
    try:
        yield
    except KeyboardInterrupt:
        kept = len(store.manifest())
        raise KeyboardInterrupt(
            f"the rows of {kept} of {store.shape[0]} images are kept in {store.out}: run the "
            "same command again to resume"
        ) from None


@dataclass
class ExtractResult:
    """The summary of `extract` (what ``vgg-np extract --json`` prints).

    Examples
    --------
    ``damaged`` and ``changed`` count the rows recomputed because their bytes no longer
    matched their checksum, or their image changed since it was computed (`Store.verify`);
    they are part of ``written``.

    >>> r = ExtractResult("f.npy", "f.npy.manifest", "fc2", (512, 4096), 512, written=500,
    ...                   failed=3, already_done=12, failed_total=4, seconds=250.0)
    >>> r.images_per_second, r.to_dict()["images_per_second"]
    (2.0, 2.0)
    """

    out: str
    manifest: str
    layer: str
    shape: tuple[int, ...]
    images: int
    written: int
    failed: int
    already_done: int
    failed_total: int
    seconds: float
    preprocessing: dict = field(default_factory=dict)  # mode, resize, reason, size
    damaged: int = 0
    changed: int = 0

    @classmethod
    def collect(cls, store: Store, results: list[PartitionResult], seconds: float):
        """Summarise a run of `results` (one per partition run) over `store`.

        Partitions without a result count as done before the run. See `extract` for an
        example.
        """
        ran = {r.index for r in results}
        before = sum(p.stop - p.start for p in store.partitions if p.index not in ran)
        failed_total = sum(entry["status"] == "error" for entry in store.manifest())
        return cls(
            store.out, store.manifest_dir, store.layer, store.shape, store.shape[0],
            written=sum(r.written for r in results), failed=sum(r.failed for r in results),
            already_done=before + sum(r.already_done for r in results),
            failed_total=failed_total, seconds=seconds,
            preprocessing={**store.plan["preprocessing"], "size": store.size},
            damaged=store.recomputed[0], changed=store.recomputed[1],
        )  # fmt: skip

    @property
    def images_per_second(self) -> float:
        """Rows written per second in this run (see `extract` for an example)."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """Return the summary as plain JSON types (see the class example)."""
        return {**asdict(self), "images_per_second": round(self.images_per_second, 3)}


def extract(
    images: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model,
    *,
    layer: str | None = None,
    top: int = 0,
    batch_size: int = 32,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    workers: int = 2,
    preprocess: str | None = None,
    resize: str | None = None,
    verbose: bool | int | str = "auto",
    on_skip: Callable[[str, str], None] | None = None,
) -> ExtractResult:
    """Write the `layer` output of every image to `out`, resuming what a previous run left.

    Plans (or reopens) the store with `create_store`, then runs its incomplete partitions
    in order with `run_partition`; parameters are theirs, plus:

    Parameters
    ----------
    verbose : {"auto", 0, 1}
        A progress bar with rate and ETA on stderr (`vgg_np.progress.show_progress`).
    on_skip : callable, optional
        Called as ``on_skip(path, reason)`` for each image that could not be used (its
        row is NaN and its manifest entry says why).

    Returns
    -------
    ExtractResult

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C, once the rows of every image computed so far are written and journaled;
        its message says how many are kept and that the same call resumes.

    Examples
    --------
    >>> import tempfile
    >>> from importlib import resources
    >>> from vgg_np import VGG11
    >>> model = VGG11(include_top=False, input_shape=(32, 32, 3), pooling="avg", seed=0)
    >>> demo = resources.files("vgg_np") / "data" / "demo.png"
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = extract([demo], f"{tmp}/f.npy", model, preprocess="caffe", verbose=0)
    ...     again = extract([demo], f"{tmp}/f.npy", model, preprocess="caffe", verbose=0)
    ...     np.load(f"{tmp}/f.npy").shape
    (1, 512)
    >>> (first.written, again.written, again.already_done)
    (1, 0, 1)
    """
    start = time.perf_counter()
    store = create_store(
        out,
        images,
        model,
        layer=layer,
        top=top,
        partition_size=partition_size,
        preprocess=preprocess,
        resize=resize,
    )
    pending = store.pending()
    remaining = sum(p.stop - p.start for p in pending)
    results = []
    enabled = show_progress(verbose, -(-remaining // batch_size))
    with interrupted_resumes(store), Progress(remaining, enabled=enabled) as bar:

        def on_batch(rows: int, skipped: list[tuple[str, str]]) -> None:
            bar.update(rows)
            for path, reason in skipped:
                if on_skip is not None:
                    on_skip(path, reason)

        for partition in pending:
            results.append(
                run_partition(
                    store, partition, model, batch_size=batch_size, workers=workers,
                    on_batch=on_batch,
                )
            )  # fmt: skip
            bar.update(results[-1].already_done)  # journaled by a run that was killed
    return ExtractResult.collect(store, results, time.perf_counter() - start)
