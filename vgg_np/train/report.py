"""Pictures of a training run, drawn with Pillow: the curves and the confusion matrix.

The learner wants to look, not read: `curves_picture` draws the loss and the accuracy per
epoch, training beside validation, the best epoch marked; `confusion_picture` draws the
validation confusion matrix (rows: the true class, columns: the predicted one), each
cell shaded by its share of its row and labelled with its count. Both return an RGB
``uint8`` array; `save_png` writes one atomically. matplotlib is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vgg_np import _files

if TYPE_CHECKING:  # Pillow is imported where a picture is drawn
    from PIL import ImageDraw, ImageFont

__all__ = ["confusion_matrix", "confusion_picture", "curves_picture", "save_png"]

#: Colours of the training and validation curves (matplotlib's first two).
TRAIN_COLOUR, VALIDATION_COLOUR = (31, 119, 180), (255, 127, 14)
_GREY, _BLACK, _WHITE = (200, 200, 200), (0, 0, 0), (255, 255, 255)


def _font(size: int = 13) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (accented names), else Pillow's own font."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)  # a scalable font where FreeType is there
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def confusion_matrix(
    labels: Sequence[int] | NDArray[np.integer],
    predicted: Sequence[int] | NDArray[np.integer],
    classes: int,
) -> NDArray:
    """Count, for each true class (row), the pictures predicted as each class (column).

    Examples
    --------
    >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3)
    array([[1, 1, 0],
           [0, 1, 0],
           [0, 0, 1]])
    """
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.intp), np.asarray(predicted, np.intp)), 1)
    return matrix


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: Mapping[str, Sequence[float]],
    title: str,
    best: int | None,
) -> None:
    """One plot: `series` (name -> value per epoch) in `box` (left, top, right, bottom)."""
    left, top, right, bottom = box
    font = _font()
    values = [v for ys in series.values() for v in ys if np.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    margin = 0.05 * (high - low)  # no point on the frame
    low, high = low - margin, high + margin
    epochs = max((len(ys) for ys in series.values()), default=1)
    x0, x1, y0, y1 = left + 52, right - 10, top + 24, bottom - 30

    def at(epoch: int, value: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * ((epoch - 1) / max(epochs - 1, 1))
        return x, y1 - (y1 - y0) * (value - low) / (high - low)

    draw.text((x0, top + 4), title, fill=_BLACK, font=font)
    draw.rectangle((x0, y0, x1, y1), outline=_BLACK)
    for k in range(5):  # y ticks
        value = low + (high - low) * k / 4
        y = at(1, value)[1]
        draw.line((x0 - 4, y, x0, y), fill=_BLACK)
        draw.text((left + 2, y - 7), f"{value:.3g}", fill=_BLACK, font=font)
    step = max(1, round(epochs / 8))
    for epoch in range(1, epochs + 1, step):  # x ticks
        x = at(epoch, low)[0]
        draw.line((x, y1, x, y1 + 4), fill=_BLACK)
        draw.text((x - 4, y1 + 6), str(epoch), fill=_BLACK, font=font)
    draw.text(((x0 + x1) / 2 - 16, y1 + 16), "epoch", fill=_BLACK, font=font)
    if best is not None:
        x = at(best, low)[0]
        draw.line((x, y0, x, y1), fill=_GREY, width=1)
        draw.text((x + 3, y0 + 2), "kept", fill=_GREY, font=font)
    legend: float = x1
    for k, (name, ys) in reversed(list(enumerate(series.items()))):
        colour = TRAIN_COLOUR if k == 0 else VALIDATION_COLOUR
        points = [at(e, v) for e, v in enumerate(ys, start=1) if np.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        # The legend above the frame, right-aligned: it never hides a point.
        legend -= font.getlength(name) + 34
        draw.line((legend, top + 12, legend + 20, top + 12), fill=colour, width=3)
        draw.text((legend + 24, top + 4), name, fill=_BLACK, font=font)


def curves_picture(history: Mapping[str, Sequence[float]], best: int | None = None) -> NDArray:
    """Draw loss and accuracy per epoch (training and, if present, validation).

    Parameters
    ----------
    history : mapping
        ``loss``, ``accuracy`` and optionally ``val_loss``, ``val_accuracy``: one value
        per epoch (Keras's ``History.history``).
    best : int, optional
        The epoch to mark (1-based): the one whose weights were kept.

    Returns
    -------
    ndarray of uint8, shape (340, 900, 3)

    Examples
    --------
    >>> picture = curves_picture({"loss": [1.0, 0.5], "accuracy": [0.5, 0.8],
    ...                           "val_loss": [1.1, 0.7], "val_accuracy": [0.4, 0.7]}, best=2)
    >>> picture.shape, picture.dtype
    ((340, 900, 3), dtype('uint8'))
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (900, 340), _WHITE)
    draw = ImageDraw.Draw(image)
    for k, metric in enumerate(("loss", "accuracy")):
        series = {"training": list(history.get(metric, []))}
        if history.get(f"val_{metric}"):
            series["validation"] = list(history[f"val_{metric}"])
        box = (10 + 445 * k, 10, 440 + 445 * k, 330)
        _panel(draw, box, series, metric, best)
    return np.asarray(image)


def confusion_picture(matrix: NDArray, classes: Sequence[str], title: str = "") -> NDArray:
    """Draw a confusion matrix: rows true classes, columns predictions, counts in the cells.

    Examples
    --------
    >>> picture = confusion_picture(np.array([[3, 1], [0, 4]]), ["cat", "dog"], "validation")
    >>> picture.ndim, picture.dtype
    (3, dtype('uint8'))
    """
    from PIL import Image, ImageDraw

    font = _font()
    names = [name if len(name) <= 24 else name[:23] + "…" for name in classes]
    label = max((font.getlength(n) for n in names), default=0)
    n = len(names)
    cell = max(28, min(64, 640 // max(n, 1)))
    left, top = int(label) + 24, int(label) + 48
    footer = "predicted (columns) / true (rows)"
    width = max(left + n * cell + 20, left + int(font.getlength(footer)) + 10)
    image = Image.new("RGB", (width, top + n * cell + 40), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=_BLACK, font=font)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    for i in range(n):
        draw.text((8, top + i * cell + cell / 2 - 7), names[i], fill=_BLACK, font=font)
        column = Image.new("RGB", (int(label) + 8, 16), _WHITE)
        ImageDraw.Draw(column).text((0, 0), names[i], fill=_BLACK, font=font)
        image.paste(column.rotate(90, expand=True), (left + i * cell + cell // 2 - 8, 32))
        for j in range(n):
            shade = int(255 - 200 * share[i, j])
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline=_GREY)
            text = str(int(matrix[i, j]))
            draw.text((box[0] + cell / 2 - font.getlength(text) / 2, box[1] + cell / 2 - 7),
                      text, fill=_BLACK, font=font)  # fmt: skip
    draw.text((left, top + n * cell + 8), footer, fill=_BLACK, font=font)
    return np.asarray(image)


def save_png(path: str | os.PathLike, picture: NDArray) -> None:
    """Write an RGB picture as a PNG, atomically.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> save_png(path, np.zeros((4, 4, 3), np.uint8))
    >>> os.path.getsize(path) > 0
    True
    """
    from PIL import Image

    with _files.atomic_write(path) as f:
        Image.fromarray(picture).save(f, format="PNG")
