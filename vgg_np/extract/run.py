"""Running an extraction: one partition anywhere (`run_partition`), or all of them here.

`run_partition` is what a distributed runner maps over a cluster (its contract is in the
`vgg_np.extract` docstring); `extract` plans (or reopens) a store and runs its incomplete
partitions in order, with a progress bar, holding a Ctrl-C until a batch is journaled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vgg_np.extract.manifest import _journal_entries, _row_digest, _write_atomically
from vgg_np.extract.plan import DEFAULT_PARTITION_SIZE, Partition, _classifier
from vgg_np.extract.seeding import seed_store
from vgg_np.extract.store import Store, create_store
from vgg_np.preprocess import top_classes
from vgg_np.progress import Progress, show_progress
from vgg_np.streams import Decoded, decode_batches

if TYPE_CHECKING:
    from vgg_np.model import VGG

__all__ = ["ExtractResult", "PartitionResult", "extract", "interrupted_resumes", "run_partition"]


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
    model: VGG,
    *,
    batch_size: int = 32,
    workers: int = 2,
    on_batch: Callable[[int, list[tuple[str, str]]], None] | None = None,
) -> PartitionResult:
    """Compute and write one partition's rows and manifest (contract: `vgg_np.extract`).

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
    entries = _journal_entries(journal, partition)
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


def _compute(
    store: Store, model: VGG, decoded: Decoded, rows: list[int]
) -> tuple[NDArray, list[dict]]:
    """One decoded batch's rows (NaN for a bad image) and manifest entries."""
    dtype, row_shape = np.dtype(store.plan["dtype"]), tuple(store.plan["row_shape"])
    block = np.full((len(decoded.paths), *row_shape), np.nan, dtype)
    top_layer = _classifier(model) if store.plan["top"] else None
    assert top_layer is not None or not store.plan["top"], "Store.check_model refuses that"
    outputs: dict[str, np.ndarray] = {}  # read for the images that decoded
    if decoded.ok:
        wanted = [store.layer] + ([top_layer] if top_layer is not None else [])
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
            if top_layer is not None:
                scores = outputs[top_layer][decoded.ok.index(i)]
                # a model of one's own names its classes (``vgg-np train`` records them)
                names = model.weights_info.get("labels")
                entry["top"] = top_classes(scores, store.plan["top"], class_names=names)
        entry.update(image=decoded.identities[i], digest=_row_digest(block[i]))
        entries.append(entry)
    return block, entries


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
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


@contextlib.contextmanager
def interrupted_resumes(store: Store) -> Iterator[None]:
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
    they are part of ``written``. ``reused`` counts the rows copied from earlier stores
    (``seed_from``); ``images`` is ``written + reused + already_done``.

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
    reused: int = 0

    @classmethod
    def collect(
        cls, store: Store, results: list[PartitionResult], seconds: float, reused: int = 0
    ) -> ExtractResult:
        """Summarise a run of `results` (one per partition run) over `store`.

        Partitions without a result count as done before the run; `reused` rows were
        copied from earlier stores by this run (`vgg_np.extract.seeding`), not done before
        it. See `extract` for an example.
        """
        ran = {r.index for r in results}
        before = sum(p.stop - p.start for p in store.partitions if p.index not in ran)
        failed_total = sum(entry["status"] == "error" for entry in store.manifest())
        return cls(
            store.out, store.manifest_dir, store.layer, store.shape, store.shape[0],
            written=sum(r.written for r in results), failed=sum(r.failed for r in results),
            already_done=before + sum(r.already_done for r in results) - reused,
            failed_total=failed_total, seconds=seconds,
            preprocessing={**store.plan["preprocessing"], "size": store.size},
            damaged=store.recomputed[0], changed=store.recomputed[1], reused=reused,
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
    model: VGG,
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
    seed_from: Iterable[str | os.PathLike] = (),
) -> ExtractResult:
    """Write the `layer` output of every image to `out`, resuming what a previous run left.

    Plans (or reopens) the store with `create_store`, then runs its incomplete partitions
    in order with `run_partition`; parameters are theirs, plus:

    Parameters
    ----------
    seed_from : iterable of str or os.PathLike, optional
        Earlier stores: the rows they hold of the same images, computed the same way,
        checked and unchanged, are copied rather than computed
        (`vgg_np.extract.seeding.seed_store`; ``reused`` in the result).
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
    reused = seed_store(store, seed_from) if seed_from else 0
    pending = store.pending()
    # The bar counts the rows this run computes: not those journaled (seeded, or by a kill).
    journaled = {p.index: len(store._entries(p)[0]) for p in pending}
    remaining = sum(p.stop - p.start - journaled[p.index] for p in pending)
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
            done = results[-1].already_done - journaled[partition.index]  # by a concurrent run
            bar.update(max(0, done))
    return ExtractResult.collect(store, results, time.perf_counter() - start, reused)
