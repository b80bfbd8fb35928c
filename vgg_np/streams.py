"""Image files in, preprocessed batches out, decoded on threads while the model computes.

`ImageStream` iterates over files, directories and globs and yields ``(paths, batch)``:
each batch already resized and preprocessed the way the weights were trained
(`vgg_np.formats.choose_preprocessing` reads it from the weights' provenance, and never
guesses), through `vgg_np.preprocess.load_image` and
`vgg_np.preprocess.preprocess_input`. A small thread pool decodes the next batches while
the caller runs the current one (Pillow and NumPy release the GIL while they work). A file
that cannot be used (not a regular file, not an image, damaged, too large) is skipped and
reported with its reason; it never stops the stream.

`decode_batches` is the layer underneath, for callers that must know where every input
went (`vgg_np.extract` writes one output row per input, good or bad).
"""

from __future__ import annotations

import collections
import concurrent.futures
import fnmatch
import functools
import glob
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vgg_np._files import open_regular
from vgg_np.formats import Preprocessing, choose_preprocessing
from vgg_np.preprocess import load_image, preprocess_input

if TYPE_CHECKING:
    from vgg_np.model import VGG

#: Height and width of the images: one side of a square, or (height, width).
Size = int | tuple[int, int]

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_WALK_ENTRIES",
    "Decoded",
    "ImageStream",
    "decode_batches",
    "file_identity",
    "image_paths",
    "input_size",
]

#: File names a directory is searched for (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: Batches decoded ahead of the one the caller holds: one to overlap with the model's
#: compute, one more to absorb a slow file.
PREFETCH = 2

#: Directory entries the walks of one `image_paths` call may look at: a photo collection
#: of a million files fits; a glob running through links or a whole disk stops with a
#: message instead of running for hours.
MAX_WALK_ENTRIES = 2_000_000


def image_paths(
    items: Iterable[str | os.PathLike], *, max_entries: int = MAX_WALK_ENTRIES
) -> list[str]:
    """Expand directories (their image files, recursively) and globs; keep the rest.

    A directory is searched as torchvision's ``ImageFolder`` and Keras's
    ``image_dataset_from_directory`` search one: its image files and those of every folder
    below it (class subfolders), followed through symbolic links. A glob matches as
    `glob.glob` with ``recursive=True`` does (``**`` crosses folders, ``*`` skips names
    starting with a dot), except that a final ``**`` matches files only. Either way the result
    is sorted, names starting with a dot are skipped in directories, and each item visits
    each real file and folder (device and inode) once, whatever links lead to it again: a
    link ``d/loop -> .`` neither repeats pictures nor loops (a file named by two items is
    kept twice, as asked). Names that match nothing are kept,
    so that the stream reports them as missing rather than silently dropping them.

    Parameters
    ----------
    items : iterable of str or os.PathLike
        Files, directories and globs.
    max_entries : int, default `MAX_WALK_ENTRIES`
        How many directory entries the walks of this call may look at, in all.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        If the walks would look at more than `max_entries` entries (named with the item).

    Examples
    --------
    >>> from importlib import resources
    >>> [os.path.basename(p) for p in image_paths([resources.files("vgg_np") / "data"])]
    ['demo.png']
    """
    walk = _Walk(max_entries)
    paths = []
    for item in (os.fspath(i) for i in items):
        if os.path.isdir(item):
            walk.start(item)
            paths += sorted(walk.folder_images(item))
        elif glob.has_magic(item):
            walk.start(item)
            parts = item.split(os.sep)
            static = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            root = os.sep.join(parts[:static]) or (os.sep if item.startswith(os.sep) else "")
            paths += sorted(walk.matches(root, parts[static:]))
        else:
            paths.append(item)
    return paths


class _Walk:
    """The walks of one `image_paths` call: one budget; each item's real files and folders once."""

    def __init__(self, max_entries: int):
        self.budget, self.max_entries = max_entries, max_entries
        self.start("")

    def start(self, item: str) -> None:
        """Walk `item` next: what it yields is apart from the other items' (asked twice, twice)."""
        self.item = item
        self.files: set[tuple[int, int]] = set()  # (device, inode) of every file yielded
        self.folders: set[tuple[int, int, int | None]] = (
            set()
        )  # (device, inode, what is left to match)

    def _enter(self, folder: str, state: int | None) -> tuple[int, list[os.DirEntry]] | None:
        """Return a folder's device and sorted entries; None if seen in `state` or unreadable."""
        try:
            status = os.stat(folder or ".")
            if (status.st_dev, status.st_ino, state) in self.folders:
                return None
            self.folders.add((status.st_dev, status.st_ino, state))
            with os.scandir(folder or ".") as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            return None  # as glob does: an unreadable folder holds nothing
        self.budget -= len(entries)
        if self.budget < 0:
            raise ValueError(
                f"{self.item}: more than {self.max_entries:,} directory entries to walk; "
                "give a smaller folder or a narrower glob"
            )
        return status.st_dev, entries

    def _new_file(self, device: int, entry: os.DirEntry) -> bool:
        """Whether `entry` is a file not yielded yet (a link is known by its target)."""
        try:
            if entry.is_symlink():
                status = entry.stat()
                key = (status.st_dev, status.st_ino)
            else:
                key = (device, entry.inode())
        except OSError:
            return True  # a dangling link: kept, to be reported as missing
        if key in self.files:
            return False
        self.files.add(key)
        return True

    def folder_images(self, folder: str) -> Iterator[str]:
        """Yield every image file under `folder`, depth first, each real file and folder once."""
        opened = self._enter(folder, None)
        if opened is None:
            return
        device, entries = opened
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            if _is_dir(entry):
                yield from self.folder_images(path)
            elif entry.name.lower().endswith(IMAGE_SUFFIXES) and self._new_file(device, entry):
                yield path

    def matches(self, folder: str, parts: list[str]) -> Iterator[str]:
        """Yield the files under `folder` whose path below it matches the glob `parts`."""
        if parts[0] == "**" and len(parts) > 1:
            yield from self.matches(folder, parts[1:])  # ** matches no folder too
        opened = self._enter(folder, len(parts))
        if opened is None:
            return
        device, entries = opened
        for entry in entries:
            hidden = entry.name.startswith(".") and not parts[0].startswith(".")
            if hidden or not (parts[0] == "**" or fnmatch.fnmatch(entry.name, parts[0])):
                continue
            path = os.path.join(folder, entry.name)
            if _is_dir(entry):
                if parts[0] == "**":
                    yield from self.matches(path, parts)
                elif len(parts) > 1:
                    yield from self.matches(path, parts[1:])
                else:
                    yield path  # named by the glob: reported as not an image, not dropped
            elif len(parts) == 1 and self._new_file(device, entry):
                yield path


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def input_size(model: VGG) -> Size:
    """Return the size images are resized to for `model`: its input size, else its default.

    The side of a square input; ``(height, width)`` of a fixed input that is not square
    (a head of one's own trained at 64x40). A free input (a torchvision state dict) takes
    the size its weights' provenance records (``vgg-np train`` records the size it
    trained at), else the configuration's default.

    Examples
    --------
    >>> from vgg_np import VGG16
    >>> input_size(VGG16(include_top=False, seed=0)), input_size(VGG16(seed=0))
    (224, 224)
    >>> input_size(VGG16(include_top=False, input_shape=(64, 40, 3), seed=0))
    (64, 40)
    """
    h, w, _ = model.input_shape
    recorded = getattr(getattr(model, "weights_provenance", None), "input_size", None)
    if not (h and w) and recorded:
        h, w = recorded
    if h and w and h != w:
        return (h, w)
    return h or model.config.default_size


def file_identity(path: str | os.PathLike) -> dict | None:
    """Size, modification time (ns) and SHA-256 of a regular file; None if it cannot be read.

    What `vgg_np.extract` records of each image, to recompute the rows of images that
    changed. The file is read in bounded pieces, never blocking on a FIFO.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b"abc"); f.flush()
    ...     identity = file_identity(f.name)
    >>> identity["size"], identity["sha256"][:12]
    (3, 'ba7816bf8f01')
    >>> file_identity("missing.png") is None
    True
    """
    digest = hashlib.sha256()
    try:
        with open_regular(path, "image") as file:
            status = os.fstat(file.fileno())
            while piece := file.read(1 << 20):
                digest.update(piece)
    except (OSError, ValueError):
        return None  # decoding says why, in the image's manifest entry
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": digest.hexdigest()}


def _decode(
    path: str,
    prep: Preprocessing,
    size: Size,
    identify: bool = False,
    transform: Callable[[str, NDArray[np.uint8]], NDArray[np.uint8]] | None = None,
) -> tuple[NDArray[np.float32] | None, str | None, dict | None]:
    """Decode one image: a preprocessed (size, size, 3) array, or None and the reason why.

    With `identify`, also the file's `file_identity`, taken before decoding; with
    `transform`, its pixels pass through ``transform(path, pixels)`` before preprocessing.
    """
    identity = file_identity(path) if identify else None
    pixels, reason = _load(path, prep, size, transform)
    return pixels, reason, identity


def _load(
    path: str,
    prep: Preprocessing,
    size: Size,
    transform: Callable[[str, NDArray[np.uint8]], NDArray[np.uint8]] | None = None,
) -> tuple[NDArray | None, str | None]:
    try:
        # load_image refuses, without reading, anything but a regular file (a FIFO would
        # block, a device never end).
        pixels = load_image(path, size=size, resize=prep.resize)
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except OSError as error:
        return None, f"{path}: {error.strerror or error}"
    except ValueError as error:
        return None, str(error)
    if transform is not None:
        pixels = transform(path, pixels)  # (H, W, 3) uint8 -> the same: augmentation
    return preprocess_input(pixels, mode=prep.mode), None


@dataclass
class Decoded:
    """One batch of inputs: every path of the batch, and the images that decoded.

    Attributes
    ----------
    paths : list of str
        The batch's paths in input order, good and bad.
    batch : ndarray, shape (n_ok, size, size, 3), float32
        The preprocessed images that decoded, in input order.
    ok : list of int
        For each row of `batch`, its position in `paths`.
    errors : dict of int to str
        Position in `paths` -> why that file was skipped (a line naming the file).
    identities : list of dict or None
        For each path, `file_identity` taken before decoding (``identify=True``), else None.

    Examples
    --------
    >>> decoded = next(decode_batches(["gone.png"], Preprocessing("tf", "keras", "doc"), size=32))
    >>> decoded.batch.shape, decoded.ok, decoded.errors
    ((0, 32, 32, 3), [], {0: 'gone.png: no such file'})
    """

    paths: list[str]
    batch: NDArray[np.float32]
    ok: list[int]
    errors: dict[int, str] = field(default_factory=dict)
    identities: list[dict | None] = field(default_factory=list)


def _assemble(
    paths: list[str],
    results: list[tuple[NDArray[np.float32] | None, str | None, dict | None]],
    size: Size,
) -> Decoded:
    ok = [i for i, (image, _, _) in enumerate(results) if image is not None]
    images = [image for image, _, _ in results if image is not None]
    errors = {i: reason for i, (_, reason, _) in enumerate(results) if reason is not None}
    if images:
        batch = np.stack(images)  # (n_ok, size, size, 3)
    else:
        h, w = (size, size) if isinstance(size, int) else size  # (height, width) if not square
        batch = np.empty((0, h, w, 3), np.float32)
    return Decoded(paths, batch, ok, errors, [identity for _, _, identity in results])


def decode_batches(
    paths: list[str],
    prep: Preprocessing,
    *,
    size: Size = 224,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = PREFETCH,
    identify: bool = False,
    transform: Callable[[str, NDArray[np.uint8]], NDArray[np.uint8]] | None = None,
) -> Iterator[Decoded]:
    """Yield `Decoded` batches of `batch_size` consecutive paths, decoded ahead on threads.

    Parameters
    ----------
    paths : list of str
    prep : vgg_np.formats.Preprocessing
        The mode of `vgg_np.preprocess_input` and the resize of `vgg_np.load_image`.
    size : int or (int, int), default 224
        Height and width of the images.
    batch_size : int, default 32
        Paths per batch (the last may be shorter); bad files leave a batch shorter.
    workers : int, default 2
        Decoding threads; 0 decodes in the caller's thread, when it asks (no overlap).
    prefetch : int, default `PREFETCH`
        Batches decoded ahead of the one being used.
    identify : bool, default False
        Also record each file's `file_identity` (it reads the file once more).
    transform : callable, optional
        ``transform(path, pixels) -> pixels`` on each image's uint8 ``(H, W, 3)`` pixels,
        after resizing and before preprocessing, in a decoding thread: training's seeded
        augmentation (`vgg_np.train.data.Augment`).

    Examples
    --------
    >>> from importlib import resources
    >>> demo = str(resources.files("vgg_np") / "data" / "demo.png")
    >>> prep = Preprocessing("caffe", "keras", "an example")
    >>> batches = decode_batches([demo, "nope.jpg"], prep, size=32)
    >>> [(d.batch.shape, d.ok, list(d.errors)) for d in batches]
    [((1, 32, 32, 3), [0], [1])]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"`workers` must be an int >= 0, got {workers!r}")
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    return _decoded(
        chunks,
        functools.partial(_decode, prep=prep, size=size, identify=identify, transform=transform),
        size,
        workers,
        prefetch,
    )


def _decoded(
    chunks: list[list[str]],
    decode: Callable[[str], tuple[NDArray[np.float32] | None, str | None, dict | None]],
    size: Size,
    workers: int,
    prefetch: int,
) -> Iterator[Decoded]:
    if workers == 0:
        for chunk in chunks:
            yield _assemble(chunk, [decode(p) for p in chunk], size)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, "vgg_np-decode")
    pending: collections.deque = collections.deque()
    upcoming = iter(chunks)

    def submit() -> None:
        chunk = next(upcoming, None)
        if chunk is not None:
            pending.append((chunk, [pool.submit(decode, p) for p in chunk]))

    try:
        for _ in range(1 + prefetch):
            submit()
        while pending:
            chunk, futures = pending.popleft()
            results = [future.result() for future in futures]
            submit()
            yield _assemble(chunk, results, size)
    finally:
        # A caller that stops early (or fails) leaves no decoding behind.
        pool.shutdown(wait=True, cancel_futures=True)


class ImageStream:
    """Iterate over images as ``(paths, batch)``, preprocessed, decoded ahead on threads.

    Parameters
    ----------
    images : iterable of str or os.PathLike
        Files, directories (their image files, recursively) and globs (`image_paths`).
    prep : vgg_np.formats.Preprocessing
        What to do to each image; `ImageStream.for_model` asks the weights
        (`vgg_np.formats.choose_preprocessing`).
    size : int or (int, int), default 224
        Height and width of the images.
    batch_size : int, default 32
        Paths per batch; a batch holds fewer images when some are skipped, and none is
        yielded empty.
    workers : int, default 2
        Decoding threads (0: decode in the caller's thread, no overlap).
    on_skip : callable, optional
        Called as ``on_skip(path, reason)`` for each skipped file, as it happens.
    expand : bool, default True
        False: `images` are paths already (from `image_paths`), taken as they are.

    Attributes
    ----------
    paths : list of str
        Every path the stream will try, in order.
    skipped : list of (str, str)
        The files skipped so far and why.

    Examples
    --------
    >>> from importlib import resources
    >>> demo = resources.files("vgg_np") / "data" / "demo.png"
    >>> prep = Preprocessing("caffe", "keras", "an example")
    >>> stream = ImageStream([demo, "missing.jpg"], prep, size=64)
    >>> [(len(paths), batch.shape) for paths, batch in stream]
    [(1, (1, 64, 64, 3))]
    >>> stream.skipped
    [('missing.jpg', 'missing.jpg: no such file')]
    """

    def __init__(
        self,
        images: Iterable[str | os.PathLike],
        prep: Preprocessing,
        *,
        size: Size = 224,
        batch_size: int = 32,
        workers: int = 2,
        on_skip: Callable[[str, str], None] | None = None,
        expand: bool = True,
    ):
        self.paths = image_paths(images) if expand else [os.fspath(i) for i in images]
        decode_batches([], prep, batch_size=batch_size, workers=workers)  # checks them
        self.prep, self.size, self.batch_size, self.workers = prep, size, batch_size, workers
        self.on_skip = on_skip
        self.skipped: list[tuple[str, str]] = []

    @classmethod
    def for_model(
        cls,
        images: Iterable[str | os.PathLike],
        model: VGG,
        *,
        preprocess: str | None = None,
        resize: str | None = None,
        **kwargs: Any,
    ) -> ImageStream:
        """Stream `images` preprocessed and sized as `model`'s weights expect.

        `preprocess` and `resize` override what the weights' provenance says
        (`vgg_np.formats.choose_preprocessing`, which raises rather than guess); `kwargs`
        are the other arguments of `ImageStream`.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> stream = ImageStream.for_model([], VGG16(include_top=False, seed=0), preprocess="tf")
        >>> stream.prep.mode, stream.prep.resize, stream.size
        ('tf', 'keras', 224)
        """
        prep = choose_preprocessing(model.weights_provenance, preprocess=preprocess, resize=resize)
        return cls(images, prep, size=input_size(model), **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[list[str], NDArray[np.float32]]]:
        batches = decode_batches(
            self.paths, self.prep, size=self.size, batch_size=self.batch_size, workers=self.workers
        )
        for decoded in batches:
            for i, reason in decoded.errors.items():
                self.skipped.append((decoded.paths[i], reason))
                if self.on_skip is not None:
                    self.on_skip(decoded.paths[i], reason)
            if decoded.ok:
                yield [decoded.paths[i] for i in decoded.ok], decoded.batch
