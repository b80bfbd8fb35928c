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
# # VGG16 layer by layer
#
# The per-layer table, computed from the network's own layer table; where the memory,
# the parameters and the work go; and what each block's feature maps look like on a
# picture. The weights are seeded random draws (nothing is downloaded): with ImageNet
# weights, pass `weights="vgg16_weights_tf_dim_ordering_tf_kernels.h5"` to `VGG16`.

# %%
from importlib import resources

import matplotlib.pyplot as plt
import numpy as np

from vgg_np import VGG16
from vgg_np.config import CONFIGS, layer_table
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.summary import Summary

summary = Summary.of(layer_table(CONFIGS["vgg16"]), (224, 224, 3), "vgg16")
print(summary)

# %% [markdown]
# ## Where memory, parameters and work go
#
# Activations are largest at the top of the network, where the pictures are large;
# parameters sit in fc1, which connects all 7 x 7 x 512 values of the last pool to 4096
# units; the work (multiply-adds) is in the convolutions, about the same for every
# convolution that keeps its width: halving the picture quarters the positions,
# doubling the channels quadruples the weights.

# %%
rows = [r for r in summary.rows if not r.is_view and r.name != "input"]
names = [r.name for r in rows]
columns = {
    "activation values": [r.activations for r in rows],
    "parameters": [r.weights + r.biases for r in rows],
    "multiply-adds": [r.macs for r in rows],
}
fig, axes = plt.subplots(1, 3, figsize=(14, 6), sharey=True)
for ax, (title, values) in zip(axes, columns.items(), strict=True):
    ax.barh(names, values)
    ax.set_xscale("log")
    ax.set_title(f"{title} (total {sum(values):.3g})")
axes[0].invert_yaxis()
plt.tight_layout()
plt.show()

# %%
for title, values in columns.items():
    conv = sum(v for n, v in zip(names, values, strict=True) if "_conv" in n)
    print(f"{title:18}: {conv / sum(values):6.1%} in the convolutions")

# %% [markdown]
# Memory for one image, forward only and in float32: every layer's output, and what a
# training step keeps for its backward pass (`kept`, see `vgg_np.train`).

# %%
forward = summary.activations * 4
kept = summary.kept * 4
print(f"forward activations: {forward / 1e6:.1f} MB; kept for the backward pass: "
      f"{kept / 1e6:.1f} MB; weights: {summary.parameters * 4 / 1e6:.0f} MB")  # fmt: skip
cumulative = np.cumsum([r.activations * 4 / 1e6 for r in rows])
plt.figure(figsize=(8, 3))
plt.plot(names, cumulative, marker="o")
plt.xticks(rotation=90)
plt.ylabel("MB, cumulative")
plt.title("activation memory of one image, layer after layer (float32)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Feature maps
#
# Run the convolutional base on the bundled picture and look at the first maps of a few
# layers: early layers respond to edges and colour, deep ones are coarse blobs (with
# random weights; trained weights give detectors).

# %%
model = VGG16(include_top=False, seed=0)
pixels = load_image(resources.files("vgg_np") / "data" / "demo.png")[None]  # (1, 224, 224, 3)
outputs = model.activations(preprocess_input(pixels))
for name in ("block1_conv2", "block3_conv3", "block5_conv3"):
    maps = outputs[name][0]  # (H, W, C)
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.4))
    for c, ax in enumerate(axes):
        ax.imshow(maps[:, :, c], cmap="viridis")
        ax.axis("off")
    fig.suptitle(f"{name}: {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}, first 6 maps")
    plt.show()

# %% [markdown]
# The shapes of every layer's output, checked against the table:

# %%
for row in summary.rows[1:19]:
    shape = outputs[row.name].shape[1:]
    print(f"{row.name:13} {shape!s:16} table: {row.output_shape}")
    assert shape == row.output_shape
