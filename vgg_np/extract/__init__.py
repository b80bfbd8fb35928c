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
  partition size, a digest of the weights and how each convolution runs
  (`vgg_np.extract.plan.convolutions`: ``conv_algorithm`` and each layer's algorithm,
  chunk and channel blocks, which may change a row's last bits). Reopening with different
  images, layer, preprocessing, weights or convolutions (another ``conv_algorithm``,
  another ``plan``, a plan measured otherwise) is refused, never mixed.
- ``OUT.manifest/conv-plans.json``: those choices as a plan file: ``plan=`` that file
  (``VGG_NP_PLAN`` for the commands) makes any model compute them, on any machine.
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
  layer, output shape, dtype, the digest of every weight and how each convolution runs)
  before anything is written. A measured plan (``plan="measure"``) differs between
  machines and thread counts: workers that measure otherwise are refused; give them the
  store's ``conv-plans.json`` as ``plan``.

`Store` pickles as its path (a worker reopens it), and `Partition` carries its own paths.

Seeding (`seed_store`, ``extract(..., seed_from=[...])``): a new store's pending rows are
copied from earlier stores of the same images wherever they are the rows a pass would
compute (same layer, size, dtype, preprocessing, weights and convolutions, by their plans)
and pass the checks above (checksum, image unchanged); the earlier stores are only read.
"""

# `NAME as NAME`: the constants keep their address `vgg_np.extract.NAME` (the CLI reads two).
from vgg_np.extract.manifest import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from vgg_np.extract.plan import DEFAULT_PARTITION_SIZE as DEFAULT_PARTITION_SIZE
from vgg_np.extract.plan import MAX_PLAN_BYTES as MAX_PLAN_BYTES
from vgg_np.extract.plan import PLAN_KEYS as PLAN_KEYS
from vgg_np.extract.plan import PLAN_VERSION as PLAN_VERSION
from vgg_np.extract.plan import Partition, weights_digest
from vgg_np.extract.run import (
    ExtractResult,
    PartitionResult,
    extract,
    interrupted_resumes,
    run_partition,
)
from vgg_np.extract.seeding import remove_store, seed_store
from vgg_np.extract.store import CHECK_BYTES as CHECK_BYTES
from vgg_np.extract.store import SUFFIXES as SUFFIXES
from vgg_np.extract.store import ZARR_CHUNK_BYTES as ZARR_CHUNK_BYTES
from vgg_np.extract.store import Store, create_store, open_store
from vgg_np.preprocess import top_classes  # predict's labels, named here before the split

__all__ = [
    "ExtractResult",
    "Partition",
    "PartitionResult",
    "Store",
    "create_store",
    "extract",
    "interrupted_resumes",
    "open_store",
    "remove_store",
    "run_partition",
    "seed_store",
    "top_classes",
    "weights_digest",
]
