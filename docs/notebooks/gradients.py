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
# # Gradients by hand
#
# One backward pass through a convolution, ReLU, a max-pool, flatten, a dense layer and
# the softmax cross-entropy, each step written out with `vgg_np.backward`, then every
# gradient checked against central finite differences. Everything is float64, so the
# check is tight. Change the shapes, the stride or the label and run it again.

# %%
import matplotlib.pyplot as plt
import numpy as np

from vgg_np import backward, ops
from vgg_np.config import VGGConfig
from vgg_np.model import VGG
from vgg_np.train import loss_and_gradients

rng = np.random.default_rng(0)
H, W, C, FILTERS, CLASSES = 6, 6, 2, 3, 4
x = rng.standard_normal((2, H, W, C))  # (N, H, W, C): two pictures
label = np.array([1, 3])
params = {
    "k": rng.standard_normal((3, 3, C, FILTERS)) * 0.5,  # (KH, KW, C, O)
    "b": rng.standard_normal(FILTERS) * 0.1,
    "w": rng.standard_normal((H // 2 * W // 2 * FILTERS, CLASSES)) * 0.3,  # (in, out)
    "c": rng.standard_normal(CLASSES) * 0.1,
}


def forward(x, p):
    """Return every intermediate value: the backward pass needs them."""
    y = ops.conv2d(x, p["k"], p["b"])  # (N, H, W, O)
    a = ops.relu(y)
    q = ops.max_pool2d(a)  # (N, H/2, W/2, O)
    f = ops.flatten(q)  # (N, H/2 * W/2 * O)
    z = ops.dense(f, p["w"], p["c"])  # (N, CLASSES) logits
    return {"y": y, "a": a, "q": q, "f": f, "z": z}


def loss_of(x, p):
    return backward.softmax_cross_entropy(forward(x, p)["z"], label)[0]


v = forward(x, params)
loss, dz = backward.softmax_cross_entropy(v["z"], label)
print(f"loss {loss:.4f}")

# %% [markdown]
# ## Backward, step by step
#
# Each step is the transpose of its forward step. The loss gradient is
# `(softmax(z) - onehot(label)) / N`; a dense layer sends `dz @ W.T` back and keeps
# `f.T @ dz` for its kernel; flatten only reshapes; max-pooling routes each window's
# gradient to its maximum; ReLU blocks it where its input was negative; the convolution
# is `im2col(x).T @ dy` for its kernel and `col2im(dy @ K.T)` for its input.

# %%
df, dw, dc = backward.dense_backward(v["f"], params["w"], dz)
dq = backward.flatten_backward(df, v["q"].shape)
da = backward.max_pool2d_backward(v["a"], dq)
dy = backward.relu_backward(v["y"], da)
dx, dk, db = backward.conv2d_backward(x, params["k"], dy)
grads = {"k": dk, "b": db, "w": dw, "c": dc}
for name, g in {"dz": dz, "dq": dq, "da": da, "dy": dy, "dx": dx, **grads}.items():
    print(f"{name:3} shape {g.shape!s:14} nonzero {np.count_nonzero(g):4} of {g.size}")

# %% [markdown]
# Max-pooling's gradient on one channel of the first picture: the activation, the
# gradient arriving at the pooled values, and where it lands: one position per 2x2
# window, its maximum.

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
for ax, (title, image) in zip(
    axes,
    {"ReLU output a": v["a"][0, :, :, 0], "dL/dq (pooled)": dq[0, :, :, 0],
     "dL/da": da[0, :, :, 0]}.items(),
    strict=True,
):  # fmt: skip
    shown = ax.imshow(image, cmap="coolwarm" if "dL" in title else "viridis")
    ax.set_title(title)
    plt.colorbar(shown, ax=ax, fraction=0.046)
plt.show()

# %% [markdown]
# ## Checked against finite differences
#
# For each parameter and for the input, nudge one value by plus and minus `eps` and
# compare `(L(p + eps) - L(p - eps)) / (2 eps)` with the backward pass. The difference is
# the finite difference's own error, about `eps**2` times the third derivative, plus
# rounding of about `1e-16 / eps`.


# %%
def numeric_gradient(f, array, eps=1e-6):
    out = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        keep = array[i]
        array[i] = keep + eps
        up = f()
        array[i] = keep - eps
        down = f()
        array[i] = keep
        out[i] = (up - down) / (2 * eps)
    return out


for name in params:
    numeric = numeric_gradient(lambda: loss_of(x, params), params[name])
    error = np.abs(numeric - grads[name]).max() / np.abs(numeric).max()
    print(f"{name}: max |backward - numeric| / max |numeric| = {error:.1e}")
    assert error < 1e-6
numeric_x = numeric_gradient(lambda: loss_of(x, params), x)
print(f"x: {np.abs(numeric_x - dx).max() / np.abs(numeric_x).max():.1e}")

# %% [markdown]
# The gradient with respect to the input shows which pixels would change the loss most:

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for n, ax in enumerate(axes):
    ax.imshow(np.abs(dx[n]).sum(axis=-1), cmap="magma")
    ax.set_title(f"|dL/dx|, picture {n}, label {label[n]}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The same for a whole (narrow) VGG16
#
# `vgg_np.train.loss_and_gradients` chains these steps through all 16 layers. Check a
# few weights of a VGG16 at 1/16 of its widths, in float64:

# %%
narrow = VGGConfig("vgg16-tiny", ((4, 4), (8, 8), (8,) * 3, (8,) * 3, (8,) * 3), fc=(16, 16))
model = VGG(narrow, input_shape=(32, 32, 3), classes=3, seed=0, dtype="float64",
            classifier_activation=None)  # fmt: skip
images, targets = rng.standard_normal((2, 32, 32, 3)), np.array([0, 2])
loss, gradients, _ = loss_and_gradients(model, images, targets)
weights = model.weights
for layer in ("block1_conv1", "block4_conv2", "fc1", "predictions"):
    # The weight with the largest gradient: many are exactly 0 behind dead ReLUs.
    index = np.unravel_index(np.argmax(np.abs(gradients[layer][0])), weights[layer][0].shape)
    kernel = weights[layer][0].copy()
    eps = 1e-6
    values = []
    for sign in (1, -1):
        kernel[index] += sign * eps
        model.set_weights({**weights, layer: (kernel, weights[layer][1])})
        values.append(loss_and_gradients(model, images, targets)[0])
        kernel[index] -= sign * eps
    model.set_weights(weights)
    numeric = (values[0] - values[1]) / (2 * eps)
    index = tuple(int(i) for i in index)
    print(f"{layer:12} {index!s:14} backward {gradients[layer][0][index]: .8f} "
          f"numeric {numeric: .8f}")  # fmt: skip
