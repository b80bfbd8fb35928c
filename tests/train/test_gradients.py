"""Gradients of the training step's every piece.

- the step's fast paths (`vgg_np.train.fast`) against their definitions in
  `vgg_np.backward` and `vgg_np.layers.forward`;
- whole-network gradients of VGGs with heads of their own (global average and max
  pooling, Flatten, dense layers with ReLU, tanh and sigmoid, an activation layer,
  dropout with its mask, a batch norm in training mode) and of a VGG with batch norm,
  against central finite differences (float64) and PyTorch autograd (float64), through
  the GEMM and the Winograd paths.

The batch norms' running statistics are in test_batch_norm.py, one epoch against
PyTorch's in test_epoch.py, Winograd's kernels in test_winograd.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import (
    ENGINE_REL_TOL,
    GRADIENT_FD_REL_TOL,
    GRADIENT_TORCH_REL_TOL,
    relative_error,
)
from vgg_np import VGG, VGGConfig, backward, ops
from vgg_np.config import Layer
from vgg_np.layers import forward
from vgg_np.train import fast, loss_and_gradients, winograd

# VGG11's topology at reduced width; 64x32 inputs leave a 2x1 map, so a flatten in the
# wrong order (C, H, W against H, W, C) changes the numbers.
NARROW = VGGConfig("narrow", ((3,), (4,), (4, 4), (5, 5), (5, 5)), fc=(6,), default_size=32)
SIZE = (64, 32)
FD_STEP = 1e-6

HEADS = {
    "global average, dense relu": (
        Layer("gap", "global_avg"),
        Layer("hidden", "dense", 6, "relu"),
        Layer("out", "dense", 4),
    ),
    "global max, dense tanh": (
        Layer("gmp", "global_max"),
        Layer("hidden", "dense", 6, "tanh"),
        Layer("out", "dense", 4, "softmax"),
    ),
    "flatten, dense sigmoid, dropout": (
        Layer("flatten", "flatten"),
        Layer("hidden", "dense", 6, "sigmoid"),
        Layer("drop", "dropout", rate=0.4),
        Layer("out", "dense", 4),
    ),
    "flatten, batch norm, relu layer": (
        Layer("flatten", "flatten"),
        Layer("hidden", "dense", 6),
        Layer("bn", "batch_norm", eps=1e-5),
        Layer("act", "activation", activation="relu"),
        Layer("out", "dense", 4),
    ),
}


def with_statistics(model, seed: int):
    """Batch norms whose scales and statistics are not 1 and 0: a lost one shows."""
    rng = np.random.default_rng(seed)
    weights = model.weights
    for name, tensors in weights.items():
        if len(tensors) == 4:
            c = tensors[0].shape[0]
            drawn = (rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c),
                     rng.uniform(0.5, 2.0, c))  # fmt: skip
            weights[name] = tuple(a.astype(model.dtype) for a in drawn)
    model.set_weights(weights)
    return model


def narrow(head=None, batch_norm=False, dtype="float64", seed=1):
    extra = {"head": head} if head else {"classes": 4, "classifier_activation": None}
    model = VGG(NARROW, input_shape=(*SIZE, 3), dtype=dtype, seed=seed, batch_norm=batch_norm,
                **extra)  # fmt: skip
    return with_statistics(model, seed)


def batch(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *SIZE, 3)), rng.integers(0, 4, n)


def check_against_finite_differences(model, x, labels, names, coordinates=2) -> float:
    """Compare each named layer's gradients with central differences; return the worst."""

    def loss(weights) -> float:
        model.set_weights(weights)
        rng = np.random.default_rng(5)  # the same dropout mask every time
        return loss_and_gradients(model, x, labels, rng=rng, update_statistics=False)[0]

    original = model.weights
    _, grads, _ = loss_and_gradients(
        model, x, labels, rng=np.random.default_rng(5), update_statistics=False
    )
    rng, worst = np.random.default_rng(9), 0.0
    for name in names:
        # The size the layer's gradients reach: a dense bias before a batch norm in training
        # has a gradient of exactly 0 (the mean is subtracted), rounding aside.
        scale = max(np.max(np.abs(g)) for g in grads[name]) + 1e-12
        for part, analytic in enumerate(grads[name]):
            for _ in range(coordinates):
                index = tuple(int(rng.integers(0, s)) for s in analytic.shape)
                bumped = {k: tuple(a.copy() for a in t) for k, t in original.items()}
                bumped[name][part][index] += FD_STEP
                up = loss(bumped)
                bumped[name][part][index] -= 2 * FD_STEP
                numeric = (up - loss(bumped)) / (2 * FD_STEP)
                error = abs(numeric - analytic[index]) / scale
                worst = max(worst, error)
                assert error <= GRADIENT_FD_REL_TOL, (name, part, index, numeric, analytic[index])
    model.set_weights(original)
    return worst


# -- the fast paths against their definitions ----------------------------------------------


@pytest.fixture(params=["gemm", "winograd"])
def conv_path(request, monkeypatch):
    """Run the step's convolutions by one GEMM (narrow layers) or by Winograd (wide ones)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 if request.param == "winograd" else 10**9)
    return request.param


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "shape", [(2, 14, 14, 16, 32), (3, 7, 5, 4, 6), (1, 28, 28, 8, 8), (9, 5, 3, 16, 16)]
)
def test_conv_gradients_equal_their_definition(dtype, shape, conv_path):
    n, h, w, c, o = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = (rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c)).astype(dtype)
    dy = rng.standard_normal((n, h, w, o)).astype(dtype)
    fast_grads = fast.conv_gradients(x, kernel, dy)
    exact = backward.conv2d_backward(*(a.astype(np.float64) for a in (x, kernel, dy)))
    tol = 1e-12 if dtype == "float64" else ENGINE_REL_TOL["auto"]
    for name, ours, expected in zip(("dx", "dkernel", "dbias"), fast_grads, exact, strict=True):
        assert ours.dtype == np.dtype(dtype) and ours.shape == expected.shape, name
        assert relative_error(ours, expected) < tol, (name, relative_error(ours, expected))
    skipped = fast.conv_gradients(x, kernel, dy, input_gradient=False)
    assert skipped[0] is None
    np.testing.assert_array_equal(skipped[1], fast_grads[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_fast_forward_keeps_what_the_reference_forward_keeps(dtype, conv_path):
    table = [
        Layer("c1", "conv", 8, "relu"), Layer("c2", "conv", 8), Layer("p", "pool"),
        Layer("f", "flatten"), Layer("d1", "dense", 6, "relu"), Layer("drop", "dropout", rate=0.5),
        Layer("d2", "dense", 3, "tanh"),
    ]  # fmt: skip
    rng = np.random.default_rng(3)
    weights = {
        "c1": (rng.standard_normal((3, 3, 4, 8)) / 6, rng.standard_normal(8)),
        "c2": (rng.standard_normal((3, 3, 8, 8)) / 8, rng.standard_normal(8)),
        "d1": (rng.standard_normal((280, 6)) / 16, rng.standard_normal(6)),
        "d2": (rng.standard_normal((6, 3)), rng.standard_normal(3)),
    }
    weights = {k: tuple(a.astype(dtype) for a in t) for k, t in weights.items()}
    x = rng.standard_normal((2, 14, 10, 4)).astype(dtype)
    ours, theirs = {}, {}
    # The same generator state: the same dropout masks, drawn in the same order.
    fast.forward_fast(table, weights, x, lambda layer, v: ours.setdefault(layer.name, v),
                      dropout=0.3, rng=np.random.default_rng(8))  # fmt: skip
    forward(table, weights, x, hook=lambda layer, v: theirs.setdefault(layer.name, v),
            dropout=0.3, training=True, rng=np.random.default_rng(8))  # fmt: skip
    tol = 1e-13 if dtype == "float64" else ENGINE_REL_TOL["auto"]
    assert list(ours) == list(theirs)
    for name in theirs:
        assert set(ours[name]) == set(theirs[name]), name  # kept_scaled after d1's ReLU
        for key in theirs[name]:
            assert ours[name][key].dtype == np.dtype(dtype), (name, key)
            assert relative_error(ours[name][key], theirs[name][key]) < tol, (name, key)
    convolutions = table[:3]
    last = fast.forward_fast(convolutions, weights, x)  # nothing kept: on the engine
    assert relative_error(last, theirs["p"]["output"]) < tol


def test_frozen_batch_norm_backward_is_the_constant_scale():
    rng = np.random.default_rng(4)
    params = (rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(1, 2, 3))
    x, r = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    dx = fast.frozen_batch_norm_backward(params, r, eps=1e-3)
    bumped = x.copy()
    bumped[2, 1] += FD_STEP
    up = np.sum(ops.batch_norm(bumped, *params, eps=1e-3) * r)
    bumped[2, 1] -= 2 * FD_STEP
    numeric = (up - np.sum(ops.batch_norm(bumped, *params, eps=1e-3) * r)) / (2 * FD_STEP)
    assert abs(numeric - dx[2, 1]) < GRADIENT_FD_REL_TOL * np.max(np.abs(dx))


# -- whole-network gradients: finite differences -------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_head_gradients_match_finite_differences(head, conv_path):
    model = narrow(HEADS[head])
    x, labels = batch()
    trained = [layer.name for layer in model.layers if layer.name in model.weights]
    worst = check_against_finite_differences(model, x, labels, ["block1_conv1", *trained[-4:]])
    print(f"\n{head}, {conv_path}: worst |numeric - analytic| / max |analytic| = {worst:.1e}")


def test_batch_norm_vgg_gradients_match_finite_differences(conv_path):
    model = narrow(batch_norm=True)
    x, labels = batch(4)
    names = ["block1_conv1", "block1_conv1_bn", "block3_conv2_bn", "block5_conv2", "fc1"]
    worst = check_against_finite_differences(model, x, labels, names)
    print(f"\nvgg with batch norm, {conv_path}: worst {worst:.1e}")


def test_a_trainable_subset_gives_the_same_gradients():
    model = narrow(HEADS["flatten, batch norm, relu layer"])
    x, labels = batch()
    _, every, _ = loss_and_gradients(model, x, labels, update_statistics=False)
    _, top, tape = loss_and_gradients(
        model, x, labels, trainable={"bn", "out"}, update_statistics=False
    )
    assert set(top) == {"bn", "out"} and "hidden" not in tape.kept
    for name in top:
        for a, b in zip(top[name], every[name], strict=True):
            np.testing.assert_array_equal(a, b)


# -- whole-network gradients: PyTorch autograd ---------------------------------------------


def torch_twin(torch, model, x, tape):
    """The same network in torch.nn, float64, its weights vgg_np's; dropout with our mask."""
    from tests.reference.torch_vgg import vgg_features
    from vgg_np.formats.torchvision import to_state_dict

    features = vgg_features(NARROW.blocks, batch_norm=model.batch_norm is not None).double()
    base = {k: v for k, v in model.weights.items() if k.startswith("block")}
    state = to_state_dict(base, NARROW.conv_names())
    features.load_state_dict(
        {
            k.removeprefix("features."): torch.from_numpy(np.ascontiguousarray(v))
            for k, v in state.items()
        }
    )
    modules = {}
    for layer in model.layers:
        if layer.kind == "dense":
            n_in, n_out = model.weights[layer.name][0].shape
            modules[layer.name] = torch.nn.Linear(n_in, n_out)
            modules[layer.name].weight.data = torch.from_numpy(
                model.weights[layer.name][0].T.copy()
            )
            modules[layer.name].bias.data = torch.from_numpy(model.weights[layer.name][1].copy())
        elif layer.kind == "batch_norm" and not layer.name.startswith("block"):
            bn = torch.nn.BatchNorm1d(model.weights[layer.name][0].shape[0], eps=layer.eps)
            for attr, value in zip(("weight", "bias", "running_mean", "running_var"),
                                   model.weights[layer.name], strict=True):  # fmt: skip
                getattr(bn, attr).data = torch.from_numpy(value.copy())
            modules[layer.name] = bn
    net = torch.nn.ModuleDict({"features": features, **modules}).double().train()

    names = [layer.name for layer in model.layers]
    head = model.layers[names.index("block5_pool") + 1 :]

    def run(images):
        y = net["features"](images)
        for layer in head:
            y = _torch_layer(torch, net, layer, y, tape)
        return y

    return net, run


def _torch_layer(torch, net, layer, y, tape):
    activation = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    if layer.kind == "flatten":
        y = y.permute(0, 2, 3, 1).flatten(1)  # H, W, C order, as Keras and vgg_np flatten
    elif layer.kind == "global_avg":
        y = y.mean(dim=(2, 3))
    elif layer.kind == "global_max":
        y = y.amax(dim=(2, 3))
    elif layer.kind in ("dense", "batch_norm"):
        y = net[layer.name](y)
    elif layer.kind == "dropout":
        kept = tape.kept[layer.name]
        scale = np.divide(kept["output"], kept["input"], out=np.zeros_like(kept["input"]),
                          where=kept["input"] != 0)  # fmt: skip
        y = y * torch.from_numpy(scale)  # the mask vgg_np drew, scaled by 1 / (1 - rate)
    if layer.activation in activation:
        y = activation[layer.activation](y)
    return y  # a last softmax is the loss's


def _torch_gradient(params, name):
    """A head layer's gradients from torch, in vgg_np's layout (dense kernels (in, out))."""
    weight, bias = params[f"{name}.weight"].grad.numpy(), params[f"{name}.bias"].grad.numpy()
    return (weight.T if weight.ndim == 2 else weight), bias  # Linear or BatchNorm1d


@pytest.mark.torch
@pytest.mark.parametrize("head", [*HEADS, "vgg with batch norm"])
def test_every_gradient_and_running_statistic_matches_pytorch(head, conv_path):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    from vgg_np.formats.torchvision import to_state_dict

    model = narrow(batch_norm=True) if head == "vgg with batch norm" else narrow(HEADS[head])
    x, labels = batch(4)
    loss, grads, tape = loss_and_gradients(
        model, x, labels, rng=np.random.default_rng(5), statistics="torch",
        update_statistics=False,
    )  # fmt: skip
    net, run = torch_twin(torch, model, x, tape)
    logits = run(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    theirs_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    theirs_loss.backward()
    assert abs(loss - theirs_loss.item()) < 1e-12 * abs(loss)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    # The base: vgg_np's gradients laid out as a state dict, against torch's .grad.
    base_grads = {k: v for k, v in grads.items() if k.startswith("block")}
    ours_state = to_state_dict(
        {**{k: model.weights[k] for k in model.weights if k.startswith("block")},
         **{k: (*g, *model.weights[k][2:]) for k, g in base_grads.items()}},
        NARROW.conv_names(),
    )  # fmt: skip
    worst, compared = 0.0, 0
    for key, value in ours_state.items():
        if key.endswith(("running_mean", "running_var")):
            continue
        module = key.rsplit(".", 1)[0]  # scaled by the module's largest gradient (see below)
        scale = max(
            np.max(np.abs(params[f"{module}.{p}"].grad.numpy())) for p in ("weight", "bias")
        )
        worst = max(worst, np.max(np.abs(value - params[key].grad.numpy())) / scale)
        compared += 1
    for name in (k for k in grads if not k.startswith("block")):
        theirs = _torch_gradient(params, name)
        # Relative to the layer's largest gradient: a dense bias before a batch norm has a
        # gradient of exactly 0 (rounding aside) on both sides.
        scale = max(np.max(np.abs(b)) for b in theirs)
        for a, b in zip(grads[name], theirs, strict=True):
            worst = max(worst, np.max(np.abs(a - b)) / scale)
            compared += 1
    assert compared == sum(len(g) for g in grads.values())  # every gradient compared
    # Running statistics after the step: torch's BatchNorm in training mode.
    for name, (mean, var) in tape.running.items():
        prefix = _bn_module(name)
        worst_stat = max(
            relative_error(mean, buffers[f"{prefix}.running_mean"].numpy()),
            relative_error(var, buffers[f"{prefix}.running_var"].numpy()),
        )
        assert worst_stat < GRADIENT_TORCH_REL_TOL, (name, worst_stat)
    print(f"\n{head}, {conv_path}: {compared} gradients, worst against torch {worst:.1e}")
    assert worst < GRADIENT_TORCH_REL_TOL


def _bn_module(name: str) -> str:
    """The torch module of a batch norm: a head's by name, the base's after its Conv2d."""
    if not name.startswith("block"):
        return name
    from vgg_np.formats.torchvision import module_names

    conv = module_names(NARROW.conv_names(), 2, batch_norm=True)[name.removesuffix("_bn")]
    return f"features.{int(conv.split('.')[1]) + 1}"
