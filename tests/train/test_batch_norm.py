"""Batch norms in the training step: running statistics updated as PyTorch's ``BatchNorm1d``
and ``2d`` in training mode and Keras's ``BatchNormalization(training=True)`` update them,
the convention chosen from the weights' family or epsilon, each framework's frozen layers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from tests.conftest import GRADIENT_FD_REL_TOL, GRADIENT_TORCH_REL_TOL, relative_error
from tests.train.test_gradients import FD_STEP, HEADS, batch, narrow
from vgg_np import backward
from vgg_np.config import Layer
from vgg_np.formats.contract import Family, Provenance
from vgg_np.layers import forward
from vgg_np.train import loss_and_gradients
from vgg_np.train.batch_norm import STATISTICS, RunningStatistics, choose_statistics
from vgg_np.train.loop import Top


def test_choose_statistics_follows_the_weights_family_then_the_epsilon():
    torch_head = [Layer("bn", "batch_norm", eps=1e-5)]
    keras_head = [Layer("bn", "batch_norm", eps=1e-3)]
    keras_weights = Provenance("keras-h5", Family.KERAS)
    assert choose_statistics(torch_head, keras_weights)[0]["bn"] is STATISTICS["keras"]
    assert choose_statistics(keras_head, Provenance("pth", Family.TORCHVISION))[0]["bn"].unbiased
    assert choose_statistics(keras_head)[0]["bn"] is STATISTICS["keras"]
    assert choose_statistics(torch_head)[0]["bn"] is STATISTICS["torch"]
    assert choose_statistics([Layer("d", "dense", 3)]) == ({}, "no batch norm")
    # A torchvision base under a head built as Keras builds it: each keeps its own.
    mixed = [*torch_head, Layer("bn2", "batch_norm", eps=1e-3)]
    rules, why = choose_statistics(mixed, Provenance("npz", Family.VGG_NP))
    assert (rules["bn"], rules["bn2"]) == (STATISTICS["torch"], STATISTICS["keras"])
    assert why == (
        "torch's and keras's running statistics (bn: torch's default epsilon 1e-05; "
        "bn2: keras's default epsilon 0.001)"
    )
    odd = [Layer("odd", "batch_norm", eps=1e-4)]
    with pytest.raises(ValueError, match=r"batch norm 'odd' follows is unknown .*epsilon 0.0001"):
        choose_statistics(odd, Provenance("npz", Family.VGG_NP))
    assert choose_statistics(odd, statistics="keras")[0]["odd"] is STATISTICS["keras"]
    with pytest.raises(ValueError, match="`statistics` must be 'torch', 'keras'"):
        choose_statistics(mixed, statistics="caffe")
    own = RunningStatistics("mine", 0.5, False, False)
    assert choose_statistics(mixed, statistics=own) == (
        {"bn": own, "bn2": own},
        "mine's running statistics (given by the caller)",
    )


def test_a_step_updates_the_running_statistics_in_the_model():
    model = narrow(batch_norm=True)
    x, labels = batch(4)
    before = model.weights
    _, grads, tape = loss_and_gradients(model, x, labels, update_statistics=False)
    assert model.weights["block2_conv1_bn"][2] is before["block2_conv1_bn"][2]  # untouched
    assert tape.statistics.startswith("torch's running statistics (block1_conv1_bn, ")
    assert set(tape.running) == {n for n in before if n.endswith("_bn")}
    loss_and_gradients(model, x, labels)
    for name, (mean, var) in tape.running.items():
        gamma, _, new_mean, new_var = model.weights[name]
        np.testing.assert_array_equal(new_mean, mean)
        np.testing.assert_array_equal(new_var, var)
        np.testing.assert_array_equal(gamma, before[name][0])  # SGD trains these, not the step
        assert not np.array_equal(new_mean, before[name][2])
    assert len(grads["block2_conv1_bn"]) == 2  # gamma and beta: the statistics are not trained


def test_keras_frozen_batch_norms_run_on_their_running_statistics():
    head = HEADS["flatten, batch norm, relu layer"]
    head = tuple(dataclasses.replace(layer, eps=1e-3) if layer.kind == "batch_norm" else layer
                 for layer in head)  # fmt: skip
    model = narrow(head)
    x, labels = batch()
    before = model.weights
    loss, _, tape = loss_and_gradients(model, x, labels, trainable={"out"})
    assert tape.statistics.startswith("keras's") and tape.running == {}
    assert model.weights["bn"][2] is before["bn"][2]  # not updated
    inference = [*model.layers[:-1], dataclasses.replace(model.layers[-1], activation=None)]
    logits = forward(inference, before, x)
    assert loss == pytest.approx(backward.softmax_cross_entropy(logits, labels)[0], rel=1e-12)
    # Trained from below the frozen batch norm: its gradient is a constant scale.
    frozen = Top(model.layers[-5:], {k: before[k] for k in ("hidden", "bn", "out")}, "float64")
    features = forward(model.layers[:-5], before, x)
    _, part_grads, part_tape = loss_and_gradients(
        frozen, features, labels, trainable={"hidden", "out"}, statistics="keras"
    )
    assert part_tape.running == {} and set(part_grads) == {"hidden", "out"}
    worst = check_against_finite_differences_part(frozen, features, labels, "hidden")
    assert worst <= GRADIENT_FD_REL_TOL
    # Under PyTorch's conventions the same layer is in training mode and updated.
    _, _, torch_tape = loss_and_gradients(
        frozen, features, labels, trainable={"out"}, statistics="torch"
    )
    assert set(torch_tape.running) == {"bn"}


def check_against_finite_differences_part(part, x, labels, name) -> float:
    kwargs = {"trainable": {"hidden", "out"}, "statistics": "keras", "update_statistics": False}
    original = part.weights
    _, grads, _ = loss_and_gradients(part, x, labels, **kwargs)
    worst = 0.0
    for index in ((0, 0), (3, 2), (5, 5)):
        bumped = {k: tuple(a.copy() for a in t) for k, t in original.items()}
        bumped[name][0][index] += FD_STEP
        part.set_weights(bumped)
        up = loss_and_gradients(part, x, labels, **kwargs)[0]
        bumped[name][0][index] -= 2 * FD_STEP
        part.set_weights(bumped)
        numeric = (up - loss_and_gradients(part, x, labels, **kwargs)[0]) / (2 * FD_STEP)
        worst = max(worst, abs(numeric - grads[name][0][index]) / np.max(np.abs(grads[name][0])))
    part.set_weights(original)
    return worst


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5)])
def test_torch_running_statistics(shape):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape) * 3 + 1
    running = (rng.normal(size=5), rng.uniform(0.5, 2, 5))
    bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(5).double().train()
    bn.running_mean.data, bn.running_var.data = (torch.from_numpy(a.copy()) for a in running)
    bn(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))
    mean, var = STATISTICS["torch"].update(running, x)
    assert relative_error(mean, bn.running_mean.numpy()) < GRADIENT_TORCH_REL_TOL
    assert relative_error(var, bn.running_var.numpy()) < GRADIENT_TORCH_REL_TOL


@pytest.mark.keras
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5)])
def test_keras_moving_statistics(shape):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="needs the optional `keras` extra")
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    running = tuple(a.astype(np.float32) for a in (rng.normal(size=5), rng.uniform(0.5, 2, 5)))
    layer = keras.layers.BatchNormalization()
    layer.build(shape)
    layer.set_weights([np.ones(5, np.float32), np.zeros(5, np.float32), *running])
    layer(x, training=True)
    _, _, moving_mean, moving_var = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    mean, var = STATISTICS["keras"].update(running, x)
    # Keras computes in float32 (its moments and the update); vgg_np in float64.
    assert relative_error(mean, moving_mean) < 1e-6 and relative_error(var, moving_var) < 1e-6
