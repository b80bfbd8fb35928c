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
# # Convolution: from loops to im2col to Winograd
#
# This notebook computes one convolution three ways, on a real picture with three colour
# channels: the loops that define it, one matrix product over the patch matrix
# (im2col), and Winograd's minimal filtering, which needs fewer multiplications. On the
# way: strides and padding, the receptive field of every VGG16 layer, and how few weights
# a convolution needs. Change any number and run it again.
#
# Layouts are Keras's: pictures `(N, H, W, C)`, kernels `(KH, KW, C, O)`.

# %%
import time
from importlib import resources

import matplotlib.pyplot as plt
import numpy as np

from vgg_np import ops
from vgg_np.config import CONFIGS, layer_table
from vgg_np.engine import winograd_conv3x3, winograd_matrices
from vgg_np.preprocess import load_image

picture = load_image(resources.files("vgg_np") / "data" / "demo.png", size=64)
x = picture[None].astype(np.float64) / 255  # (1, 64, 64, 3), values in [0, 1]
plt.imshow(picture)
plt.title("the input: 64x64, 3 channels")
plt.axis("off")
plt.show()

# %% [markdown]
# ## Three channels in, four filters out
#
# Each filter is a 3x3x3 block: it reads all three colour channels of each window. We
# write four by hand: a vertical edge and a horizontal edge detector (on the brightness,
# the sum of the channels), "red minus blue", and a 3x3 blur of the green channel.

# %%
kernel = np.zeros((3, 3, 3, 4))  # (KH, KW, C, O)
sobel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
kernel[:, :, :, 0] = sobel[:, :, None] / 3  # the same on every channel: brightness edges
kernel[:, :, :, 1] = sobel.T[:, :, None] / 3
kernel[1, 1, 0, 2], kernel[1, 1, 2, 2] = 1.0, -1.0  # red minus blue, at the centre pixel
kernel[:, :, 1, 3] = 1 / 9  # average of the green channel

start = time.perf_counter()
y_loops = ops.conv2d_naive(x, kernel)  # the definition: loops over n, i, j, o
t_loops = time.perf_counter() - start
start = time.perf_counter()
y_gemm = ops.conv2d(x, kernel)  # im2col + one matrix product
t_gemm = time.perf_counter() - start
print(f"loops {t_loops * 1e3:.0f} ms, im2col + GEMM {t_gemm * 1e3:.1f} ms, "
      f"max difference {np.abs(y_loops - y_gemm).max():.1e}")  # fmt: skip

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
titles = ["vertical edges", "horizontal edges", "red - blue", "green, blurred"]
for o, (ax, title) in enumerate(zip(axes, titles, strict=True)):
    ax.imshow(y_gemm[0, :, :, o], cmap="gray")
    ax.set_title(title)
    ax.axis("off")
plt.show()

# %% [markdown]
# One output value by hand: the window under output pixel (i, j) times the filter,
# summed over rows, columns *and* channels.

# %%
i, j, o = 20, 30, 0
padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # "same": one pixel of zeros all round
window = padded[0, i : i + 3, j : j + 3, :]  # (KH, KW, C)
print(np.sum(window * kernel[:, :, :, o]), y_gemm[0, i, j, o])

# %% [markdown]
# ## im2col: the whole layer as one matrix product
#
# Every window becomes one row of `3*3*3 = 27` values; the kernel becomes a 27 x 4
# matrix. The price is memory: each pixel is copied up to 9 times.

# %%
cols = ops.im2col(x, 3)  # (N*Ho*Wo, KH*KW*C)
print("patch matrix", cols.shape, f"{cols.nbytes / x.nbytes:.1f}x the input's memory")
y_matmul = (cols @ kernel.reshape(27, 4)).reshape(1, 64, 64, 4)  # (N*Ho*Wo, O) -> NHWC
print("equal to the loops:", np.allclose(y_matmul, y_loops, atol=1e-12))

# %% [markdown]
# ## Strides and padding
#
# The output size along an axis of n pixels, with a window K, stride s and padding p
# before and after, is `floor((n + p_before + p_after - K) / s) + 1`. "same" picks the
# padding so that the output has `ceil(n / s)` pixels. Try other sizes:

# %%
for n in (64, 63, 10, 9):
    for stride in (1, 2, 3):
        same = ops.resolve_padding("same", (n, n), 3, stride)[0]
        y_same = ops.conv2d(x[:, :n, :n], kernel, strides=stride)
        y_valid = ops.conv2d(x[:, :n, :n], kernel, strides=stride, padding="valid")
        print(f"n={n:2} stride {stride}: 'same' pads {same} -> {y_same.shape[1]:2}, "
              f"'valid' -> {y_valid.shape[1]:2}")  # fmt: skip

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, stride in zip(axes, (1, 2, 3), strict=True):
    y = ops.conv2d(x, kernel, strides=stride)
    ax.imshow(y[0, :, :, 0], cmap="gray")
    ax.set_title(f"vertical edges, stride {stride}: {y.shape[1]}x{y.shape[2]}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The receptive field of each VGG16 layer
#
# A value after a 3x3 convolution sees 3x3 pixels; each further layer with kernel K adds
# (K - 1) times the *jump* (the distance in input pixels between neighbouring values),
# and each stride-2 pool doubles the jump.

# %%
field, jump, fields = 1, 1, {}
for layer in layer_table(CONFIGS["vgg16"], include_top=False):
    size, stride = (3, 1) if layer.kind == "conv" else (2, 2)
    field, jump = field + (size - 1) * jump, jump * stride
    fields[layer.name] = field
    print(f"{layer.name:13} {field:3}x{field:<3} jump {jump:2}")

# %%
big = load_image(resources.files("vgg_np") / "data" / "demo.png")  # 224x224, as VGG16 sees it
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(big)
for name in ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"):
    r = fields[name]
    ax.add_patch(plt.Rectangle((112 - r / 2, 112 - r / 2), r, r, fill=False, lw=2))
    ax.text(112 - r / 2 + 2, 112 - r / 2 + 8, name, fontsize=8, color="white")
ax.set_title("what one central value of each block sees")
ax.axis("off")
plt.show()

# %% [markdown]
# ## Weight sharing
#
# A convolution uses the same filter everywhere. Count the parameters of VGG16's
# convolutions, and what dense layers between the same shapes would need:

# %%
h = w = 224
channels = 3
conv_params = dense_params = 0
for layer in layer_table(CONFIGS["vgg16"], include_top=False):
    if layer.kind == "conv":
        conv_params += 3 * 3 * channels * layer.units + layer.units
        dense_params += (h * w * channels) * (h * w * layer.units)
        channels = layer.units
    else:
        h, w = h // 2, w // 2
print(f"convolutions: {conv_params:,} parameters; as dense layers: {dense_params:.2e}")

# %% [markdown]
# ## Winograd: fewer multiplications
#
# F(2, 3) gives 2 outputs of a 3-tap correlation from 4 inputs with 4 multiplications
# instead of 6: transform the inputs (`B^T d`) and the kernel (`G g`), multiply
# elementwise, transform back (`A^T`).

# %%
bt, g, at = winograd_matrices(2)
d, k = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, -1.0])
print(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, mode="valid"))

# %% [markdown]
# In 2-D, F(m x m, 3 x 3) computes an m x m output tile with (m + 2)^2 multiplications
# instead of 9 m^2. The transforms add rounding error: measure it in float32 against the
# float64 result.

# %%
rng = np.random.default_rng(0)
a = rng.standard_normal((1, 32, 32, 16))
kern = rng.standard_normal((3, 3, 16, 16)) * np.sqrt(2 / (9 * 16))
exact = ops.conv2d(a, kern)
scale = np.abs(exact).max()
direct = ops.conv2d(a.astype(np.float32), kern.astype(np.float32))
print(f"direct float32  : {np.abs(direct - exact).max() / scale:.1e} of max |y|")
for m in (2, 4):
    fast = winograd_conv3x3(a.astype(np.float32), kern.astype(np.float32), m=m)
    ratio = 9 * m * m / (m + 2) ** 2
    print(f"Winograd F({m}x{m}): {np.abs(fast - exact).max() / scale:.1e} of max |y|, "
          f"{ratio:.2f}x fewer multiplications")  # fmt: skip
