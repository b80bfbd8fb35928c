"""From pixels to network inputs and from class scores to ImageNet labels.

`preprocess_input` follows Keras Applications' three modes but never modifies the
caller's array (Keras changes a float input in place). `decode_predictions` reads the
1000 ImageNet classes shipped inside the package: nothing is downloaded; `top_classes`
names the best classes of one row of scores (ImageNet's, a head's own, or ``class i``).

The class list (``data/imagenet_class_index.json``, Keras's layout
``{"0": ["n01440764", "tench"], ...}``) holds the ImageNet-1k WordNet ids in their
standard order, each with the first lemma of its synset, spaces as underscores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import _files

if TYPE_CHECKING:  # Pillow is imported where an image is read: `import vgg_np` stays light
    from PIL import Image

__all__ = [
    "CAFFE_BGR_MEAN",
    "decode_predictions",
    "imagenet_classes",
    "load_image",
    "preprocess_input",
    "read_class_names",
    "top_classes",
]

#: Largest labels file read (16 MiB): ImageNet-21k's 21,841 names take about 0.5 MB.
MAX_LABELS_BYTES = 1 << 24

#: How images are brought to the network's size: Keras's ``load_img(target_size=...)``
#: (straight to the size, nearest neighbour) or torchvision's ``Resize(256)`` +
#: ``CenterCrop(224)`` (bilinear, antialiased, shorter side first).
RESIZE_MODES = ("keras", "torchvision")

#: Images above this many pixels are refused as decompression bombs (Pillow's own limit),
#: and so is a resize whose intermediate image would exceed it.
MAX_PIXELS = 89_478_485

#: Images whose long side is more than this many times the short side are refused before
#: decoding: squeezed into a square they are no picture, and torchvision's shorter side
#: first resize of a 1x4000 strip alone would make 256 x 1,024,000 pixels (0.8 GB).
MAX_ASPECT_RATIO = 100

#: Pillow modes of unsigned 16-bit grey samples, scaled to 8 bits by ``round(v / 257)``
#: (Pillow's own conversion to RGB clips them at 255 instead).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

#: File formats whose mode ``"I"`` images hold 16-bit samples: PGM/PPM (Pillow scales any
#: maxval to 0..65535) and PNG (16-bit grey opens as ``"I"`` before Pillow 10).
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")

#: Mean pixel of ImageNet in B, G, R order, subtracted by the "caffe" mode.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
#: Mean and standard deviation in R, G, B order (of pixels scaled to [0, 1]), "torch" mode.
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)

MODES = ("caffe", "torch", "tf")


def preprocess_input(
    x: ArrayLike, mode: str = "caffe", data_format: str = "channels_last"
) -> NDArray[np.floating]:
    """Turn RGB pixels in [0, 255] into the inputs a VGG network was trained on.

    Parameters
    ----------
    x : array_like, shape (..., H, W, 3) or (..., 3, H, W)
        RGB images. Integers (e.g. uint8) become float32; float16/32/64 keep their dtype.
    mode : {"caffe", "torch", "tf"}, default "caffe"
        ``"caffe"`` (Keras's VGG16 weights): RGB to BGR, then subtract `CAFFE_BGR_MEAN`,
        no scaling. ``"torch"`` (torchvision weights): scale to [0, 1], subtract
        `TORCH_RGB_MEAN`, divide by `TORCH_RGB_STD`. ``"tf"``: scale to [-1, 1].
    data_format : {"channels_last", "channels_first"}
        Where the channel axis is.

    Returns
    -------
    ndarray
        A new array; `x` is never modified.

    Raises
    ------
    ValueError
        On an unknown mode or data format, or a channel axis that is not 3 long.
    TypeError
        On bool or complex input.

    Examples
    --------
    >>> pixel = np.array([[[[255, 0, 0]]]], np.uint8)  # one red pixel
    >>> preprocess_input(pixel)  # BGR minus the mean
    array([[[[-103.939, -116.779,  131.32 ]]]], dtype=float32)
    >>> preprocess_input(pixel, mode="tf")
    array([[[[ 1., -1., -1.]]]], dtype=float32)
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"`x` must hold pixel values (integers or floats), got dtype {x.dtype}")
    axis = -1 if data_format == "channels_last" else -3
    if x.ndim < 3 or x.shape[axis] != 3:
        raise ValueError(
            f"`x` must have 3 RGB channels on axis {axis} ({data_format}), got shape {x.shape}"
        )
    # A copy in every case: the caller's array is never touched.
    x = x.astype(np.float32) if x.dtype.kind in "iu" else x.astype(x.dtype, copy=True)
    shape = [1] * x.ndim
    shape[axis] = 3
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        x -= np.reshape(np.array(TORCH_RGB_MEAN, x.dtype), shape)
        x /= np.reshape(np.array(TORCH_RGB_STD, x.dtype), shape)
        return x
    x = np.flip(x, axis=axis)  # RGB -> BGR, a view of our own copy
    centred: NDArray[np.floating] = x - np.reshape(np.array(CAFFE_BGR_MEAN, x.dtype), shape)
    return centred


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """Return the 1000 ImageNet classes as (WordNet id, name), in class-index order.

    Examples
    --------
    >>> imagenet_classes()[0]
    ('n01440764', 'tench')
    >>> len(imagenet_classes())
    1000
    """
    text = resources.files("vgg_np").joinpath("data/imagenet_class_index.json").read_text()
    index = json.loads(text)
    return tuple((index[str(i)][0], index[str(i)][1]) for i in range(len(index)))


def read_class_names(path: str | os.PathLike, classes: int) -> list[str]:
    r"""Read a labels file: one non-empty class name per line, `classes` of them.

    The file must be a regular UTF-8 text file of at most `MAX_LABELS_BYTES` (a FIFO or
    ``/dev/zero`` is refused at once); trailing empty lines are ignored.

    Raises
    ------
    ValueError
        If the file is not a regular file, too large, not UTF-8, or does not hold one
        non-empty name per class; the message names the file.
    OSError
        If it cannot be opened.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
    ...     _ = f.write("cat\ndog\n\n"); f.flush()
    ...     read_class_names(f.name, 2)
    ['cat', 'dog']
    >>> read_class_names("/dev/zero", 2)
    Traceback (most recent call last):
    ...
    vgg_np._files.NotARegularFile: '/dev/zero' is a character device, not a regular labels file
    """
    text = _files.read_text(path, MAX_LABELS_BYTES, "labels file")
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if len(names) != classes or not all(names):
        empty = names.count("")
        found = f"{len(names) - empty} names" + (f" and {empty} empty lines" if empty else "")
        raise ValueError(
            f"{os.fspath(path)}: {found}, but the classifier has {classes} outputs: give one "
            "non-empty name per line"
        )
    return names


def decode_predictions(
    preds: ArrayLike, top: int = 5, *, class_names: Sequence[str] | None = None
) -> list[list[tuple[str, str, float]]]:
    """Name the `top` most likely classes of each row of `preds` (ImageNet's by default).

    Parameters
    ----------
    preds : array_like, shape (N, classes)
        Class probabilities (or logits: the order is the same).
    top : int, default 5
        How many classes per image, 1 to the number of classes.
    class_names : sequence of str, optional
        The names of a classifier of one's own, in output order; its classes are then
        ``(str(index), name, score)``. Without it `preds` must be ImageNet's 1000 classes.

    Returns
    -------
    list of list of (str, str, float)
        Per image, ``(wnid, class name, score)`` from the highest score down.

    Raises
    ------
    ValueError
        If `preds` is not (N, 1000) (or (N, len(class_names))) or `top` is out of range.

    Examples
    --------
    >>> preds = np.zeros((1, 1000)); preds[0, 281] = 0.9; preds[0, 285] = 0.1
    >>> decode_predictions(preds, top=2)
    [[('n02123045', 'tabby', 0.9), ('n02124075', 'Egyptian_cat', 0.1)]]
    >>> decode_predictions([[0.2, 0.8]], top=1, class_names=["cat", "dog"])
    [[('1', 'dog', 0.8)]]
    """
    preds = np.asarray(preds)
    if class_names is None:
        classes, what = imagenet_classes(), "ImageNet scores"
    else:
        classes, what = tuple((str(i), n) for i, n in enumerate(class_names)), "class scores"
    if preds.ndim != 2 or preds.shape[1] != len(classes):
        raise ValueError(
            f"`preds` must have shape (N, {len(classes)}) (one row of {what} per "
            f"image), got {preds.shape}"
        )
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= len(classes):
        raise ValueError(f"`top` must be an int from 1 to {len(classes)}, got {top!r}")
    results = []
    for row in preds:
        # A stable sort keeps the lower class index first among equal scores.
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results


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


def load_image(
    path: str | os.PathLike, *, size: int | tuple[int, int] = 224, resize: str = "keras"
) -> NDArray[np.uint8]:
    """Read an image file as RGB pixels of the network's input size.

    EXIF orientation is applied (a photo taken upright stays upright). Every mode a file
    can hold becomes 8-bit RGB: by Pillow's own conversion (grey, palette, CMYK, YCbCr,
    LAB; alpha is dropped, as Keras does), and 16-bit grey samples `v` as
    ``round(v / 257)`` (Pillow would clip them at 255). 32-bit integer and floating
    point pixels have no agreed range and are refused.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file; FIFOs, devices and directories are refused without being read.
    size : int or (int, int), default 224
        Output height and width, or ``(height, width)`` (Keras's ``target_size``; for
        ``"torchvision"`` the shorter side goes to ``max(height, width) * 256 / 224``
        before the central ``height`` x ``width`` crop).
    resize : {"keras", "torchvision"}, default "keras"
        ``"keras"``: straight to ``size`` x ``size`` with nearest-neighbour sampling, as
        ``keras.utils.load_img(path, target_size=(size, size))``. ``"torchvision"``: the
        shorter side to ``size * 256 / 224`` (bilinear, antialiased), then the central
        ``size`` x ``size`` crop, as torchvision's ImageNet evaluation transform.

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
        Pass it (with a batch axis) to `preprocess_input`.

    Raises
    ------
    ValueError
        Naming the file: if it is not a regular file or not an image, is truncated or
        damaged, holds more than `MAX_PIXELS` pixels (a possible decompression bomb) or
        a long side more than `MAX_ASPECT_RATIO` times its short side, or has pixels
        without a defined range. Also on an unknown `resize` or a bad `size`.
    OSError
        If the file cannot be opened (missing, no permission).

    Notes
    -----
    The size checks read only the image header, so a hostile file is refused before
    any pixel is decoded; the torchvision resize is also checked against `MAX_PIXELS`
    before it allocates its intermediate image.

    Examples
    --------
    >>> from importlib import resources
    >>> load_image(resources.files("vgg_np") / "data" / "demo.png").shape
    (224, 224, 3)
    """
    from PIL import Image, ImageOps

    if resize not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {RESIZE_MODES}, got {resize!r}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in (h, w)) or not (
        1 <= h * w <= MAX_PIXELS and min(h, w) >= 1
    ):
        raise ValueError(
            f"`size` must be an int from 1 to {int(MAX_PIXELS**0.5)} or (height, width) of "
            f"at most {MAX_PIXELS:,} pixels, got {size!r}"
        )
    where = os.fspath(path)
    with _open_regular(where) as file, _pillow_errors(where), Image.open(file) as image:
        _check_dimensions(image.size, where)
        kind = image.format  # lost by exif_transpose's copy
        rgb = _to_rgb(ImageOps.exif_transpose(image), kind, where)
    if resize == "keras":
        return np.asarray(rgb.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
    return _torchvision_resize(rgb, h, w, where)


class _Refused(ValueError):
    """An image vgg_np refuses on its own checks (as opposed to one Pillow cannot read)."""


@contextlib.contextmanager
def _open_regular(where: str) -> Iterator:
    """Open `where` for reading only if it is a regular file; a FIFO is never waited on.

    The type is checked on the open descriptor (O_NONBLOCK makes opening a FIFO return at
    once), so the file cannot be swapped between the check and the read.
    """
    try:
        file = _files.open_regular(where, "image")
    except _files.NotARegularFile as error:
        raise _Refused(f"{where}: not a regular file ({error.kind}), not read") from None
    with file:
        yield file


@contextlib.contextmanager
def _pillow_errors(where: str) -> Iterator[None]:
    """Turn whatever Pillow raises on a bad file into one ValueError naming `where`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except _Refused:
        raise
    except UnidentifiedImageError:
        raise ValueError(f"{where}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"{where}: more than {MAX_PIXELS:,} pixels, refused as a possible decompression bomb"
        ) from None
    except Exception as error:
        # Pillow reports damaged data as OSError, SyntaxError, ValueError, struct.error,
        # MemoryError ... depending on the format: none of them may stop a batch of images.
        detail = str(error) or type(error).__name__
        raise ValueError(f"{where}: damaged or truncated image ({detail})") from None


def _check_dimensions(dimensions: tuple[int, int], where: str) -> None:
    """Refuse, from the header alone, sizes whose decoding or resizing costs too much."""
    width, height = dimensions
    if width * height > MAX_PIXELS:
        raise _Refused(
            f"{where}: {width}x{height} is more than {MAX_PIXELS:,} pixels, refused as a "
            "possible decompression bomb"
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise _Refused(
            f"{where}: {width}x{height} pixels, an aspect ratio beyond {MAX_ASPECT_RATIO}:1; "
            "refused (no resize to a square input makes a picture of it)"
        )


def _to_rgb(image: Image.Image, kind: str | None, where: str) -> Image.Image:
    """8-bit RGB from any Pillow mode; `kind` is the file format Pillow detected."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and kind in SIXTEEN_BIT_I_FORMATS):
        samples = np.asarray(image, dtype=np.int64)  # (H, W), 0..65535
        # round(v * 255 / 65535) in integers: 257 * k gives k back exactly.
        grey = ((samples * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("I", "F"):
        what = "32-bit integer" if image.mode == "I" else "floating point"
        raise _Refused(
            f"{where}: {what} pixels (Pillow mode {image.mode!r}) have no agreed range; "
            "save the image with 8 or 16 bits per channel"
        )
    return image.convert("RGB")


def _torchvision_resize(image: Image.Image, h: int, w: int, where: str) -> NDArray[np.uint8]:
    """Resize and crop as torchvision's ``Resize(max(h, w) * 256 / 224)``, ``CenterCrop``."""
    from PIL import Image

    # torchvision's rounding: the long side truncated, the crop offset rounded.
    short = round(max(h, w) * 256 / 224)
    if image.width <= image.height:
        width, height = short, int(short * image.height / image.width)
    else:
        width, height = int(short * image.width / image.height), short
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{where}: resizing to {width}x{height} for a {h}x{w} crop would exceed "
            f"{MAX_PIXELS:,} pixels"
        )
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = round((width - w) / 2), round((height - h) / 2)
    return np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.uint8)
