"""One epoch of head training on cached features, step for step against PyTorch: the same
batches in the same order, the same initial weights, SGD with momentum and weight decay, a
batch norm in training mode; float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import EPOCH_FLOAT32_REL_TOL, GRADIENT_TORCH_REL_TOL, relative_error
from vgg_np.config import Layer
from vgg_np.train import SGD, loss_and_gradients
from vgg_np.train.loop import Top


def epoch_setup(dtype):
    rng = np.random.default_rng(11)
    features = rng.standard_normal((64, 3, 2, 16)).astype(dtype)  # block5_pool-like, 3x2
    labels = rng.integers(0, 5, 64)
    head = (
        Layer("flatten", "flatten"),
        Layer("hidden", "dense", 12),
        Layer("bn", "batch_norm", activation="relu", eps=1e-5),
        Layer("out", "dense", 5),
    )
    weights = {
        "hidden": (rng.standard_normal((96, 12)) * 0.15, rng.normal(0, 0.1, 12)),
        "bn": (rng.uniform(0.5, 1.5, 12), rng.normal(0, 0.1, 12), np.zeros(12), np.ones(12)),
        "out": (rng.standard_normal((12, 5)) * 0.4, rng.normal(0, 0.1, 5)),
    }
    return features, labels, head, weights


def vgg_np_epoch(dtype):
    features, labels, head, weights = epoch_setup(dtype)
    part = Top(head, weights, dtype)
    sgd = SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    losses = []
    for start in range(0, len(labels), 16):  # the same order, no shuffling
        loss, grads, _ = loss_and_gradients(
            part, features[start : start + 16], labels[start : start + 16], statistics="torch"
        )
        sgd.step(part, grads)
        losses.append(loss)
    return part.weights, losses


def torch_epoch(torch, dtype):
    features, labels, _, weights = epoch_setup(dtype)
    tdtype = getattr(torch, dtype)
    linear1, linear2 = torch.nn.Linear(96, 12), torch.nn.Linear(12, 5)
    bn = torch.nn.BatchNorm1d(12, eps=1e-5)
    for module, (kernel, bias) in ((linear1, weights["hidden"]), (linear2, weights["out"])):
        module.weight.data = torch.tensor(kernel.T.copy(), dtype=tdtype)
        module.bias.data = torch.tensor(bias, dtype=tdtype)
    for attr, value in zip(("weight", "bias", "running_mean", "running_var"), weights["bn"],
                           strict=True):  # fmt: skip
        getattr(bn, attr).data = torch.tensor(value, dtype=tdtype)
    net = torch.nn.Sequential(linear1, bn, torch.nn.ReLU(), linear2).to(tdtype).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    losses = []
    for start in range(0, len(labels), 16):
        optimizer.zero_grad()
        x = torch.from_numpy(features[start : start + 16].reshape(16, -1))  # H, W, C order
        loss = torch.nn.functional.cross_entropy(
            net(x), torch.from_numpy(labels[start : start + 16])
        )
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    statistics = ("weight", "bias", "running_mean", "running_var")
    result = {
        "hidden": (linear1.weight.detach().numpy().T, linear1.bias.detach().numpy()),
        "bn": tuple(getattr(bn, a).detach().numpy() for a in statistics),
        "out": (linear2.weight.detach().numpy().T, linear2.bias.detach().numpy()),
    }
    return result, losses


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_epoch_of_head_training_matches_pytorch_step_for_step(dtype):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    torch.set_num_threads(1)  # the same summation order on every run
    ours, our_losses = vgg_np_epoch(dtype)
    theirs, their_losses = torch_epoch(torch, dtype)
    tol = GRADIENT_TORCH_REL_TOL if dtype == "float64" else EPOCH_FLOAT32_REL_TOL
    worst = max(
        relative_error(a, b) for name in ours for a, b in zip(ours[name], theirs[name], strict=True)
    )
    loss_error = relative_error(our_losses, their_losses)
    print(
        f"\none epoch, {dtype}: weights and running statistics {worst:.1e}, losses {loss_error:.1e}"
    )
    assert worst < tol and loss_error < tol
    initial = epoch_setup(dtype)[3]
    assert relative_error(ours["hidden"][0], initial["hidden"][0]) > 1e3 * tol  # it moved
