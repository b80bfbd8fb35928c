# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tune VGG16 on your own pictures
#
# A folder with one subfolder per class, a pretrained VGG16 base, a new head, training
# with a validation split, checkpoints, and a model file `vgg-np predict` reads: what
# Keras's `image_dataset_from_directory` + `model.fit` and torchvision's `ImageFolder`
# do, with vgg_np's own backward pass. Everything here runs offline in well under a
# minute: the pictures are generated (stripes, checkerboards and discs at 48x48), and
# the "pretrained" base is VGG16 with seeded weights standing in for ImageNet's (with
# real ImageNet weights, pass `--weights imagenet`; see the page *Fine-tune VGG16 on your
# own pictures*).

# %%
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from vgg_np import VGG, VGG16
from vgg_np.streams import ImageStream
from vgg_np.train import fit
from vgg_np.train.data import write_shapes_folder

work = pathlib.Path(tempfile.mkdtemp())
folder = write_shapes_folder(work / "shapes", 40, size=48, seed=0)  # 4 classes x 40 pictures
print(folder.counts())

# %% [markdown]
# ## The pictures
#
# `shapes/` holds one subfolder per class, as you would lay out your own photos
# (`shapes/disc/00003.png` ...). Class names are the folder names, in sorted order.

# %%
fig, axes = plt.subplots(len(folder.classes), 6, figsize=(7, 5))
for row, name in enumerate(folder.classes):
    paths = [p for p, label in zip(folder.paths, folder.labels, strict=True) if label == row]
    for ax, path in zip(axes[row], paths, strict=False):
        ax.imshow(Image.open(path))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center")
fig.suptitle("one subfolder per class")
plt.show()

# %% [markdown]
# ## The base
#
# Any VGG weights file will do: Keras's or torchvision's ImageNet files, a `.keras` model,
# an ONNX graph... Only the convolutions are used. Ours is seeded: it records no
# preprocessing, so we say which (`preprocess="torch"`); an ImageNet file says it itself.

# %%
VGG16(include_top=False, input_shape=(48, 48, 3), seed=0).save_weights(work / "base.npz")

# %% [markdown]
# ## Training
#
# The same as
# `vgg-np train shapes/ --weights base.npz -o shapes.npz --head flatten --epochs 30
# --lr 0.01 --batch-size 16 --patience 5 --preprocess torch`. The base is frozen: its
# features of every picture are computed once, through the fast engine, into a resumable
# store (a second run, or another head, computes none). Then each epoch trains the head
# with vgg_np's backward pass, prints loss and accuracy on the training and validation
# pictures (20% of each class, seeded), and writes a checkpoint.

# %%
options = {
    "head": "flatten",
    "epochs": 30,
    "learning_rate": 0.01,
    "batch_size": 16,
    "patience": 5,
    "preprocess": "torch",
    "cache_dir": work / "cache",
}
history = fit(work / "shapes", work / "base.npz", work / "shapes.npz", verbose=1, **options)
best = history.best_epoch
print(f"kept epoch {best}: val_accuracy {history.history['val_accuracy'][best - 1]:.3f}")

# %% [markdown]
# ## The curves
#
# Loss and accuracy per epoch, training beside validation. The training numbers are those
# of each batch before its step, with dropout on, as Keras prints them; the validation
# numbers are the model's at the end of the epoch. The weights written are those of the
# epoch with the lowest validation loss (grey line).

# %%
epochs = history.epoch
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, metric in ((left, "loss"), (right, "accuracy")):
    ax.plot(epochs, history.history[metric], "o-", label="training")
    ax.plot(epochs, history.history[f"val_{metric}"], "o-", label="validation")
    ax.axvline(best, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_title(metric)
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# vgg_np drew the same curves and the validation confusion matrix itself, with Pillow,
# beside the model file (`shapes.curves.png`, `shapes.confusion.png`):

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.imshow(Image.open(history.files["confusion"]))
ax.axis("off")
plt.show()

# %% [markdown]
# ## The model file
#
# `shapes.npz` is a whole model: the base, the head, the class names, the preprocessing
# and where its base came from. `vgg-np predict`, `extract`, `compare` and `convert` read
# it like any other file.

# %%
model = VGG.from_file(work / "shapes.npz")
labels = model.weights_info["labels"]
print(model.head)
print(model.weights_provenance.preprocess, model.weights_provenance.input_size, labels)
disc = sorted((work / "shapes" / "disc").iterdir())[:4]
for paths, batch in ImageStream.for_model(disc, model):
    for path, row in zip(paths, model(batch), strict=True):
        print(path.rsplit("/", 1)[-1], labels[int(np.argmax(row))], f"{row.max():.3f}")

# %% [markdown]
# ## Resume, and another head for free
#
# Running the same call with more epochs resumes from the last checkpoint (after a kill
# too: every random choice comes from the seed and the epoch, so the weights end the same
# as a run never interrupted). A different head reuses the cached features: no picture
# goes through the base again.

# %%
more = fit(
    work / "shapes", work / "base.npz", work / "shapes.npz", verbose=0, **{**options, "epochs": 32}
)
print("resumed after epoch", more.resumed_from, "now", more.epoch[-1], "epochs")
other = fit(
    work / "shapes",
    work / "base.npz",
    work / "hidden.npz",
    verbose=0,
    **{**options, "head": "gap,dense:32,dropout:0.2", "epochs": 5},
)
print(other.feature_rows, [round(v, 3) for v in other.history["val_accuracy"]])
