"""Pictures of one's own for training: class folders, a validation split, seeded augmentation.

A folder with one subfolder per class, as torchvision's ``ImageFolder`` and Keras's
``image_dataset_from_directory`` read it: class names are the subfolders' names in sorted
order (label 0 is the first), each class's pictures are found by
`vgg_np.streams.image_paths` (recursively, names starting with a dot skipped, each real
file once). `image_folder` refuses what would train something else than asked: fewer than
two classes, an empty class folder; files lying beside the class folders belong to no
class and are listed in `ImageFolder.ignored`. Pictures that cannot be decoded are not
known here: the feature pass finds them (`vgg_np.train.features`).

`split` holds out a seeded fraction of each class (stratified, so that a small class is
in both parts); `Augment` is a seeded random crop and horizontal flip of a picture's
pixels, drawn from the seed, the epoch and the picture's index alone, so that an epoch
run again after a kill sees the same pictures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vgg_np.streams import IMAGE_SUFFIXES, image_paths

__all__ = [
    "Augment",
    "ImageFolder",
    "image_folder",
    "parse_augment",
    "split",
    "write_shapes_folder",
]


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """The pictures of a class-folder tree and their labels (build it with `image_folder`).

    Attributes
    ----------
    root : str
        The folder, as given.
    classes : tuple of str
        Class names (the subfolders' names), sorted; label ``i`` is ``classes[i]``.
    paths : tuple of str
        Every picture, absolute, class by class, each class's in sorted order.
    labels : ndarray of int64, shape (len(paths),)
    ignored : tuple of str
        Image files directly in `root`, in no class folder (not used).

    Examples
    --------
    >>> folder = ImageFolder("d", ("cat", "dog"), ("/d/cat/1.png", "/d/dog/2.png"),
    ...                      np.array([0, 1]))
    >>> folder.counts()
    {'cat': 1, 'dog': 1}
    """

    root: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: NDArray[np.int64]
    ignored: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        """Return the number of pictures of each class (see the class example)."""
        found = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, found, strict=True)}


def _class_folders(root: str, what: str) -> list[str]:
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except FileNotFoundError:
        raise ValueError(f"{what} {root}: no such folder") from None
    except NotADirectoryError:
        raise ValueError(f"{what} {root} is not a folder (one subfolder per class)") from None
    except OSError as error:
        raise ValueError(f"{what} {root}: {error.strerror}") from None
    folders = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows links, as ImageFolder does
        except OSError:
            is_dir = False
        if is_dir and not entry.name.startswith("."):
            folders.append(entry.name)
    return folders


def image_folder(
    root: str | os.PathLike, *, classes: tuple[str, ...] | None = None, what: str = "the images"
) -> ImageFolder:
    """Read a folder of class subfolders: its classes, pictures and labels.

    Parameters
    ----------
    root : str or os.PathLike
        One subfolder per class; pictures anywhere below each.
    classes : tuple of str, optional
        The classes a second folder must have (a validation folder must have the
        training folder's, each with the same label).
    what : str
        How to name `root` in messages (``"IMAGES_DIR"``, ``"--validation-dir"``).

    Returns
    -------
    ImageFolder

    Raises
    ------
    ValueError
        Naming `root` and the class: not a folder; no class folders; fewer than two
        classes; a class folder with no picture, or whose name cannot be a class name
        (blank, or more than one line); other classes than `classes`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / name)
    >>> folder = image_folder(root)
    >>> folder.classes, folder.labels.tolist()
    (('cat', 'dog'), [0, 0, 1])
    >>> (root / "bird").mkdir()
    >>> image_folder(root)
    Traceback (most recent call last):
    ...
    ValueError: the images .../bird holds no pictures (...): remove it or add some
    """
    root = os.fspath(root)
    names = _class_folders(root, what)
    if not names:
        raise ValueError(
            f"{what} {root} holds no class folders: put each class's pictures in a subfolder "
            "named after it (as Keras's image_dataset_from_directory and torchvision's "
            "ImageFolder read them)"
        )
    if len(names) < 2 and classes is None:
        raise ValueError(
            f"{what} {root} holds one class folder ({names[0]}): a classifier needs at "
            "least two classes"
        )
    unusable = [name for name in names if not name.strip() or "\n" in name]
    if unusable:  # a model file records each class name as one non-blank line
        raise ValueError(
            f"{what} {root}: the class folder {unusable[0]!r} cannot be a class name (one "
            "line, not blank): rename it"
        )
    if classes is not None and tuple(names) != tuple(classes):
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        raise ValueError(
            f"{what} {root} must hold the training classes' folders, {', '.join(classes)}; "
            f"missing: {', '.join(missing) or 'none'}; "
            f"not in training: {', '.join(extra) or 'none'}"
        )
    paths, labels = [], []
    for label, name in enumerate(names):
        found = [os.path.abspath(p) for p in image_paths([os.path.join(root, name)])]
        if not found:
            raise ValueError(
                f"{what} {os.path.join(root, name)} holds no pictures "
                f"(files ending in .png, .jpg, ...): remove it or add some"
            )
        paths += found
        labels += [label] * len(found)
    _refuse_pictures_in_two_classes(paths, labels, names, f"{what} {root}")
    ignored = _loose_files(root)
    return ImageFolder(root, tuple(names), tuple(paths), np.array(labels, np.int64), ignored)


def file_identity(path: str) -> tuple[int, int] | None:
    """Return the file `path` names, as (device, inode): links to one file share it.

    None if it is missing or unreadable (the feature pass says so, naming it).

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "a.png")
    >>> open(path, "wb").close(); os.link(path, os.path.join(folder, "b.png"))
    >>> file_identity(path) == file_identity(os.path.join(folder, "b.png"))
    True
    >>> file_identity(os.path.join(folder, "missing.png")) is None
    True
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _refuse_pictures_in_two_classes(
    paths: Sequence[str], labels: Sequence[int], names: Sequence[str], where: str
) -> None:
    """Refuse one file (by a link, or a hard link) filed under two classes: it has one class.

    Within a class each real file is listed once already (`image_paths`); across classes
    the same picture would be trained as both, and the split could hold it out under one
    name while training on it under the other.
    """
    seen: dict[tuple[int, int], tuple[str, int]] = {}
    for path, label in zip(paths, labels, strict=True):
        key = file_identity(path)
        if key is None:
            continue
        other = seen.setdefault(key, (path, label))
        if other[1] != label:
            raise ValueError(
                f"{where}: {other[0]} and {path} are the same picture in two classes "
                f"({names[other[1]]} and {names[label]}): a picture has one class; remove "
                "one (a link, or a copy by hard link)"
            )


def _loose_files(root: str) -> tuple[str, ...]:
    """Image files directly in `root`: in no class, so in no split (ImageFolder skips them)."""
    with os.scandir(root) as listing:
        names = [e.name for e in listing if e.name.lower().endswith(IMAGE_SUFFIXES)]
    return tuple(sorted(n for n in names if not n.startswith(".") and not _is_dir(root, n)))


def _is_dir(root: str, name: str) -> bool:
    return os.path.isdir(os.path.join(root, name))


def split(
    labels: NDArray[np.int64], validation_split: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Hold out a seeded fraction of each class: the training and validation indices.

    Each class of ``n`` pictures gives ``round(validation_split * n)`` of them, at
    least one and at most ``n - 1`` (a class of one picture trains only), picked by a
    generator seeded with `seed`; both index arrays are sorted.

    Parameters
    ----------
    labels : ndarray of int
    validation_split : float
        In ``[0, 1)``; 0 holds out nothing.
    seed : int

    Returns
    -------
    train, validation : ndarray of int

    Examples
    --------
    >>> train, val = split(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.25, seed=0)
    >>> len(train), len(val), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])[val].tolist())
    (7, 3, [0, 1, 1])
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"`validation_split` must be in [0, 1), got {validation_split!r}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        k = 0 if validation_split == 0 or n < 2 else min(max(round(validation_split * n), 1), n - 1)
        held += rng.permutation(members)[:k].tolist()
    validation = np.sort(np.array(held, np.intp))
    train = np.setdiff1d(np.arange(len(labels)), validation).astype(np.intp)
    return train, validation


@dataclass(frozen=True)
class Augment:
    """A seeded random crop and horizontal flip of a picture's pixels, as training sees them.

    Attributes
    ----------
    flip : bool
        Mirror left-right with probability 1/2 (Keras's ``RandomFlip("horizontal")``,
        torchvision's ``RandomHorizontalFlip``).
    crop : float
        The smallest crop, as a fraction of each side: a square-scaled window of sides
        ``s * H`` by ``s * W`` with ``s`` uniform in ``[crop, 1]``, at a uniform place,
        resized back to ``H x W`` (bilinear); 1 crops nothing.

    Examples
    --------
    >>> pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)  # (H, W, C)
    >>> out = Augment(flip=True)(pixels, np.random.default_rng(1))
    >>> out.shape, bool((out == pixels[:, ::-1]).all() or (out == pixels).all())
    ((4, 4, 3), True)
    >>> Augment().active
    False
    """

    flip: bool = False
    crop: float = 1.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.crop <= 1:
            raise ValueError(f"`crop` must be a fraction in [0.1, 1], got {self.crop!r}")

    @property
    def active(self) -> bool:
        """Whether it changes anything (see the class example)."""
        return self.flip or self.crop < 1

    def __call__(self, pixels: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
        """Return the augmented pixels, ``(H, W, 3)`` uint8 like `pixels`."""
        h, w, _ = pixels.shape
        # Both draws are made whatever they give, so one choice never shifts the other.
        scale, top, left, mirror = rng.uniform(self.crop, 1), *rng.uniform(0, 1, 2), rng.random()
        if self.crop < 1:
            ch, cw = max(1, round(scale * h)), max(1, round(scale * w))
            y, x = round(top * (h - ch)), round(left * (w - cw))
            from PIL import Image

            window = Image.fromarray(pixels[y : y + ch, x : x + cw])  # (ch, cw, 3)
            pixels = np.asarray(window.resize((w, h), Image.Resampling.BILINEAR))  # (H, W, 3)
        if self.flip and mirror < 0.5:
            pixels = pixels[:, ::-1]  # (H, W, 3), columns reversed
        return np.ascontiguousarray(pixels)

    def describe(self) -> str:
        """Return the spec `parse_augment` reads back (``"none"`` when inactive).

        Examples
        --------
        >>> Augment(flip=True, crop=0.8).describe()
        'flip,crop:0.8'
        """
        items = (["flip"] if self.flip else []) + ([f"crop:{self.crop:g}"] if self.crop < 1 else [])
        return ",".join(items) or "none"


def parse_augment(spec: str | None) -> Augment:
    """Read ``"flip,crop:0.8"`` (``"none"`` or None: no augmentation) as an `Augment`.

    ``crop`` alone is ``crop:0.8``.

    Examples
    --------
    >>> parse_augment("flip,crop:0.75")
    Augment(flip=True, crop=0.75)
    >>> parse_augment("crop"), parse_augment(None)
    (Augment(flip=False, crop=0.8), Augment(flip=False, crop=1.0))
    >>> parse_augment("rotate")
    Traceback (most recent call last):
    ...
    ValueError: `augment` 'rotate': 'rotate' is not flip, crop or crop:FRACTION \
(e.g. 'flip,crop:0.8')
    """
    if spec is None or spec.strip() in ("", "none"):
        return Augment()
    flip, crop = False, 1.0
    for item in (part.strip() for part in spec.split(",")):
        if item == "flip":
            flip = True
        elif item == "crop" or item.startswith("crop:"):
            try:
                crop = float(item.split(":", 1)[1]) if ":" in item else 0.8
            except ValueError:
                crop = -1.0
            if not 0.1 <= crop <= 1:
                raise ValueError(f"`augment` {spec!r}: {item!r} needs a fraction in [0.1, 1]")
        else:
            raise ValueError(
                f"`augment` {spec!r}: {item!r} is not flip, crop or crop:FRACTION "
                "(e.g. 'flip,crop:0.8')"
            )
    return Augment(flip=flip, crop=crop)


def write_shapes_folder(
    root: str | os.PathLike, per_class: int, *, size: int = 64, seed: int = 0
) -> ImageFolder:
    """Write `vgg_np.train.step.shapes_dataset`'s pictures as PNGs, one folder per class.

    A folder of one's own pictures for the tutorial and the tests, nothing downloaded:
    ``root/<class>/<i>.png`` for the four classes of `vgg_np.train.step.SHAPES`
    (``horizontal stripes``, ``vertical stripes``, ``checkerboard``, ``disc``).

    Examples
    --------
    >>> import tempfile
    >>> folder = write_shapes_folder(tempfile.mkdtemp(), 3, size=32)
    >>> folder.counts()
    {'checkerboard': 3, 'disc': 3, 'horizontal stripes': 3, 'vertical stripes': 3}
    """
    from PIL import Image

    from vgg_np.train.step import SHAPES, shapes_dataset

    images, labels = shapes_dataset(per_class * len(SHAPES), size=size, seed=seed)
    for name in SHAPES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels).save(os.path.join(root, SHAPES[label], f"{i:05d}.png"))
    return image_folder(root)
