"""Draw the figures of docs/ (PNG, with Pillow only) from vgg_np's own code.

    python docs/make_figures.py        # rewrites docs/figures/*.png

- ``im2col.png``: the 4x4 example of convolution.md, the 3x3 windows and the patch matrix;
- ``vgg16_layers.png``: activation values and weights per layer of VGG16 (vgg16.md), from
  ``model.summary()``;
- ``demo_block1_conv2.png``, ``demo_block5_conv3.png``: feature maps of the bundled picture
  (``vgg-np show``, seeded weights), and ``demo.png``, the picture itself;
- ``fine_tune_curves.png``, ``fine_tune_confusion.png``: what ``vgg-np train`` draws beside
  its model, for the run of fine-tune.md (generated pictures, a seeded VGG16 base).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vgg_np import ops
from vgg_np.model import CONFIGS, Summary, layer_table

OUT = pathlib.Path(__file__).resolve().parent / "figures"
WHITE, BLACK, GREY = (255, 255, 255), (30, 30, 30), (200, 200, 200)
COLOURS = [(230, 97, 1), (94, 60, 153), (27, 158, 119), (231, 41, 138)]


def font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def im2col_figure() -> Image.Image:
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    cols = ops.im2col(x, 3, padding="valid")
    cell, gap = 34, 60
    width = 4 * cell + gap + 9 * cell + 40
    image = Image.new("RGB", (width, 5 * cell + 60), WHITE)
    draw, f = ImageDraw.Draw(image), font(14)
    draw.text((10, 8), "input 4x4, windows 3x3", fill=BLACK, font=f)
    draw.text(
        (4 * cell + gap + 10, 8), "patch matrix (Ho*Wo, KH*KW*C) = (4, 9)", fill=BLACK, font=f
    )
    top = 40
    for i in range(4):
        for j in range(4):
            box = (10 + j * cell, top + i * cell, 10 + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, outline=GREY)
            draw.text((box[0] + 8, box[1] + 9), f"{int(x[0, i, j, 0])}", fill=BLACK, font=f)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        colour, inset = COLOURS[k], 2 + k
        box = (
            10 + j * cell + inset,
            top + i * cell + inset,
            10 + (j + 3) * cell - inset,
            top + (i + 3) * cell - inset,
        )
        draw.rectangle(box, outline=colour, width=2)
        left = 4 * cell + gap + 10
        for c in range(9):
            cbox = (left + c * cell, top + k * cell, left + (c + 1) * cell, top + (k + 1) * cell)
            draw.rectangle(cbox, outline=colour, width=2)
            draw.text((cbox[0] + 7, cbox[1] + 9), f"{int(cols[k, c])}", fill=BLACK, font=f)
    return image


def layers_figure() -> Image.Image:
    summary = Summary.of(layer_table(CONFIGS["vgg16"]), (224, 224, 3), "vgg16")
    rows = [r for r in summary.rows if not r.is_view]
    width, bar_area, row_h = 980, 300, 22
    image = Image.new("RGB", (width, 60 + row_h * len(rows)), WHITE)
    draw, f = ImageDraw.Draw(image), font(13)
    draw.text(
        (10, 8),
        "VGG16 per layer, log scale: activation values (orange), weights (purple)",
        fill=BLACK,
        font=f,
    )
    top_a = max(r.activations for r in rows)
    top_w = max(r.weights for r in rows)
    for k, r in enumerate(rows):
        y = 40 + k * row_h
        draw.text((10, y + 4), r.name, fill=BLACK, font=f)
        for column, (value, peak, colour) in enumerate(
            ((r.activations, top_a, COLOURS[0]), (r.weights, top_w, COLOURS[1]))
        ):
            left = 150 + column * (bar_area + 70)
            length = 0 if value == 0 else bar_area * np.log10(value) / np.log10(peak)
            draw.rectangle((left, y + 3, left + max(length, 1), y + row_h - 5), fill=colour)
            draw.text((left + length + 4, y + 4), f"{value:,}", fill=BLACK, font=f)
    return image


def fine_tune_figures() -> None:
    """Run fine-tune.md's ``vgg-np train`` in a temporary folder; keep its two pictures."""
    import shutil
    import tempfile

    from vgg_np import VGG16
    from vgg_np.train.data import write_shapes_folder

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        write_shapes_folder(work / "shapes", 40, size=48, seed=0)
        VGG16(include_top=False, input_shape=(48, 48, 3), seed=0).save_weights(work / "base.npz")
        subprocess.run(
            [sys.executable, "-m", "vgg_np", "train", str(work / "shapes"), "--weights",
             str(work / "base.npz"), "-o", str(work / "shapes.npz"), "--head", "flatten",
             "--epochs", "30", "--lr", "0.01", "--batch-size", "16", "--patience", "5",
             "--preprocess", "torch", "--cache", str(work / "cache")],
            check=True,
        )  # fmt: skip
        for kind in ("curves", "confusion"):
            shutil.copy(work / f"shapes.{kind}.png", OUT / f"fine_tune_{kind}.png")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    im2col_figure().save(OUT / "im2col.png", optimize=True)
    layers_figure().save(OUT / "vgg16_layers.png", optimize=True)
    picture = resources.files("vgg_np") / "data" / "demo.png"
    Image.open(picture).save(OUT / "demo.png")
    for layer in ("block1_conv2", "block5_conv3"):
        subprocess.run(
            [sys.executable, "-m", "vgg_np", "show", str(picture), "--layer", layer,
             "-o", str(OUT / f"demo_{layer}.png")],
            check=True,
        )  # fmt: skip
    fine_tune_figures()
    # Full-size maps are large: keep the first 16 of block1_conv2 readable on a page.
    with Image.open(OUT / "demo_block1_conv2.png") as grid:
        grid.crop((0, 0, 4 * 226 + 2, 4 * 226 + 2)).save(
            OUT / "demo_block1_conv2.png", optimize=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
