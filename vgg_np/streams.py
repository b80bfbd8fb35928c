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
import functools
import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np.formats import Preprocessing, choose_preprocessing
from vgg_np.preprocess import load_image, preprocess_input

__all__ = [
    "IMAGE_SUFFIXES",
    "Decoded",
    "ImageStream",
    "decode_batches",
    "image_paths",
    "input_size",
]

#: File names a directory is searched for (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: Batches decoded ahead of the one the caller holds: one to overlap with the model's
#: compute, one more to absorb a slow file.
PREFETCH = 2


def image_paths(items: Iterable[str | os.PathLike]) -> list[str]:
    """Expand directories (their image files, sorted) and globs (sorted); keep the rest.

    A directory is not searched recursively; a glob with ``**`` is. Names that match
    nothing are kept, so that the stream reports them as missing rather than silently
    dropping them.

    Examples
    --------
    >>> from importlib import resources
    >>> [os.path.basename(p) for p in image_paths([resources.files("vgg_np") / "data"])]
    ['demo.png']
    """
    paths = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
        elif glob.has_magic(item):
            paths += sorted(glob.glob(item, recursive=True))
        else:
            paths.append(item)
    return paths


def input_size(model) -> int | tuple[int, int]:
    """Return the size images are resized to for `model`: its input size, else its default.

    The side of a square (or free) input; ``(height, width)`` of a fixed input that is
    not square (a head of one's own trained at 64x40).

    Examples
    --------
    >>> from vgg_np import VGG16
    >>> input_size(VGG16(include_top=False, seed=0)), input_size(VGG16(seed=0))
    (224, 224)
    >>> input_size(VGG16(include_top=False, input_shape=(64, 40, 3), seed=0))
    (64, 40)
    """
    h, w, _ = model.input_shape
    if h and w and h != w:
        return (h, w)
    return h or model.config.default_size


def _decode(
    path: str, prep: Preprocessing, size: int
) -> tuple[NDArray[np.float32] | None, str | None]:
    """One image as a preprocessed (size, size, 3) array, or None and the reason why not."""
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


def _assemble(paths: list[str], results, size: int) -> Decoded:
    ok = [i for i, (image, _) in enumerate(results) if image is not None]
    errors = {i: reason for i, (_, reason) in enumerate(results) if reason is not None}
    if ok:
        batch = np.stack([results[i][0] for i in ok])  # (n_ok, size, size, 3)
    else:
        h, w = (size, size) if isinstance(size, int) else size  # (height, width) if not square
        batch = np.empty((0, h, w, 3), np.float32)
    return Decoded(paths, batch, ok, errors)


def decode_batches(
    paths: list[str],
    prep: Preprocessing,
    *,
    size: int = 224,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = PREFETCH,
) -> Iterator[Decoded]:
    """Yield `Decoded` batches of `batch_size` consecutive paths, decoded ahead on threads.

    Parameters
    ----------
    paths : list of str
    prep : vgg_np.formats.Preprocessing
        The mode of `vgg_np.preprocess_input` and the resize of `vgg_np.load_image`.
    size : int, default 224
        Height and width of the images.
    batch_size : int, default 32
        Paths per batch (the last may be shorter); bad files leave a batch shorter.
    workers : int, default 2
        Decoding threads; 0 decodes in the caller's thread, when it asks (no overlap).
    prefetch : int, default `PREFETCH`
        Batches decoded ahead of the one being used.

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
        chunks, functools.partial(_decode, prep=prep, size=size), size, workers, prefetch
    )


def _decoded(chunks: list[list[str]], decode, size: int, workers: int, prefetch: int):
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
        Files, directories (their image files, sorted) and globs (``**`` recurses).
    prep : vgg_np.formats.Preprocessing
        What to do to each image; `ImageStream.for_model` asks the weights
        (`vgg_np.formats.choose_preprocessing`).
    size : int, default 224
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
        size: int = 224,
        batch_size: int = 32,
        workers: int = 2,
        on_skip: Callable[[str, str], None] | None = None,
        expand: bool = True,
    ):
        self.paths = image_paths(images) if expand else list(map(os.fspath, images))
        decode_batches([], prep, batch_size=batch_size, workers=workers)  # checks them
        self.prep, self.size, self.batch_size, self.workers = prep, size, batch_size, workers
        self.on_skip = on_skip
        self.skipped: list[tuple[str, str]] = []

    @classmethod
    def for_model(
        cls,
        images: Iterable[str | os.PathLike],
        model,
        *,
        preprocess: str | None = None,
        resize: str | None = None,
        **kwargs,
    ) -> ImageStream:
        """Stream `images` preprocessed and sized as `model`'s weights expect.

        `preprocess` and `resize` override what the weights' provenance says
        (`vgg_np.formats.choose_preprocessing`, which raises rather than guess).

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
